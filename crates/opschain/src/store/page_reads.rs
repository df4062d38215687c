//! What the page shows that the API's resources do not carry: where a step is (its change and
//! action), and who made each properties version (a user's edit is recorded in the audit trail
//! with the version it made).

use std::collections::HashMap;

use rusqlite::params;

use super::{q, Store, StoreError};

/// Where a step is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOrigin {
    /// The step's change.
    pub change_id: i64,
    /// The step's action.
    pub action: String,
}

impl Store {
    /// The change and action of each of `step_ids` that exists.
    pub fn step_origins(&self, step_ids: &[i64]) -> Result<HashMap<i64, StepOrigin>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT change_id, action FROM steps WHERE id = ?1").map_err(q("read step"))?;
        let mut origins = HashMap::new();
        for &id in step_ids {
            let mut rows = stmt.query([id]).map_err(q("read step"))?;
            if let Some(row) = rows.next().map_err(q("read step"))? {
                origins.insert(id, StepOrigin { change_id: row.get(0).map_err(q("read step"))?, action: row.get(1).map_err(q("read step"))? });
            }
        }
        Ok(origins)
    }

    /// Who made each version of the properties the audit trail names `target` (e.g.
    /// `project/web/properties`) by editing them: version -> user.
    pub fn property_editors(&self, target: &str) -> Result<HashMap<i64, String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT json_extract(detail, '$.version'), username FROM events WHERE kind = 'properties.update' AND target = ?1 AND username IS NOT NULL")
            .map_err(q("read property editors"))?;
        let rows = stmt.query_map(params![target], |r| Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, String>(1)?))).map_err(q("read property editors"))?;
        let mut editors = HashMap::new();
        for row in rows {
            if let (Some(version), user) = row.map_err(q("read property editors"))? {
                editors.insert(version, user);
            }
        }
        Ok(editors)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::setup;
    use super::super::{Level, PropertiesEdit};
    use super::*;

    #[test]
    fn a_step_is_found_by_id_and_an_edit_names_its_user() {
        let (_dir, store, p, _e, c) = setup();
        let root = store.steps(c).unwrap()[0].id;
        let origins = store.step_origins(&[root, root + 100]).unwrap();
        assert_eq!(origins.len(), 1);
        assert_eq!(origins[&root], StepOrigin { change_id: c, action: "root".into() });
        let doc = serde_json::json!({"a": 1}).as_object().unwrap().clone();
        let version = store.set_properties_checked(Level::Project, p, &doc, PropertiesEdit { expected_version: None, by: "ann", target: "project/p/properties" }).unwrap();
        let editors = store.property_editors("project/p/properties").unwrap();
        assert_eq!(editors.get(&version).map(String::as_str), Some("ann"));
        assert!(store.property_editors("project/q/properties").unwrap().is_empty());
    }
}
