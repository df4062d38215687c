//! The audit trail: who did what, when (a change created, cancelled or retried, properties
//! changed, a login and a failed login). Kept for good; read newest first.

use rusqlite::{params, Connection};
use serde_json::Value;

use super::{q, Store, StoreError};

/// An event to record.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    /// The user who acted (`None` when no user could be named: a login with an unknown name
    /// records the name given in `detail` instead).
    pub username: Option<&'a str>,
    /// What happened, e.g. `change.create`, `login.failed`.
    pub kind: &'a str,
    /// What it happened to, e.g. `change/12`, `project/web/properties`.
    pub target: Option<&'a str>,
    /// More about it, a JSON object (never a secret or a password).
    pub detail: Value,
}

/// A recorded event.
#[derive(Debug, Clone)]
pub struct EventRow {
    /// The event id (increasing).
    pub id: i64,
    /// When it was recorded.
    pub at: String,
    /// The user who acted.
    pub username: Option<String>,
    /// What happened.
    pub kind: String,
    /// What it happened to.
    pub target: Option<String>,
    /// More about it.
    pub detail: Value,
}

/// Which events [`Store::events`] returns.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this user's.
    pub username: Option<String>,
    /// Only events older than this id (the next page after a page whose last id this is).
    pub before_id: Option<i64>,
    /// Only events recorded after this time (ISO 8601).
    pub after: Option<String>,
}

/// Records `event` with the connection of a write in progress: an action and its event commit
/// together.
pub(super) fn record(tx: &Connection, event: &NewEvent<'_>) -> Result<(), StoreError> {
    tx.prepare_cached("INSERT INTO events (username, kind, target, detail) VALUES (?1, ?2, ?3, ?4)")
        .and_then(|mut s| s.execute(params![event.username, event.kind, event.target, event.detail.to_string()]))
        .map_err(q("record event"))?;
    Ok(())
}

impl Store {
    /// Records an event on its own.
    pub fn record_event(&self, event: &NewEvent<'_>) -> Result<(), StoreError> {
        let (username, kind, target, detail) = (event.username.map(str::to_string), event.kind.to_string(), event.target.map(str::to_string), event.detail.clone());
        self.write(move |tx| record(tx, &NewEvent { username: username.as_deref(), kind: &kind, target: target.as_deref(), detail }))
    }

    /// Up to `limit` events matching `filter`, newest first.
    pub fn events(&self, filter: &EventFilter, limit: usize) -> Result<Vec<EventRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, at, username, kind, target, detail FROM events
                 WHERE (?1 IS NULL OR kind = ?1) AND (?2 IS NULL OR username = ?2) AND (?3 IS NULL OR id < ?3) AND (?4 IS NULL OR at > ?4)
                 ORDER BY id DESC LIMIT ?5",
            )
            .map_err(q("list events"))?;
        let rows = stmt
            .query_map(params![filter.kind, filter.username, filter.before_id, filter.after, limit as i64], |r| {
                let detail: String = r.get(5)?;
                Ok(EventRow {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    username: r.get(2)?,
                    kind: r.get(3)?,
                    target: r.get(4)?,
                    detail: serde_json::from_str(&detail).unwrap_or(Value::String(detail)),
                })
            })
            .map_err(q("list events"))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(q("list events"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::setup;
    use super::*;
    use serde_json::json;

    #[test]
    fn events_are_listed_newest_first_and_filtered() {
        let (_dir, store, ..) = setup();
        for (user, kind) in [("ann", "login"), ("bob", "login.failed"), ("ann", "change.create")] {
            store.record_event(&NewEvent { username: Some(user), kind, target: None, detail: json!({"n": 1}) }).unwrap();
        }
        let all = store.events(&EventFilter::default(), 10).unwrap();
        assert_eq!(all.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(), ["change.create", "login.failed", "login"]);
        let ann = store.events(&EventFilter { username: Some("ann".into()), ..Default::default() }, 10).unwrap();
        assert_eq!(ann.len(), 2);
        let older = store.events(&EventFilter { before_id: Some(all[0].id), ..Default::default() }, 1).unwrap();
        assert_eq!(older[0].kind, "login.failed");
        assert_eq!(older[0].detail, json!({"n": 1}));
    }
}
