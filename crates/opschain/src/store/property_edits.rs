//! A user's edit of properties through the API: written only when the version it was made on is
//! still the current one (an optimistic lock: two users editing at once cannot overwrite each
//! other's edit unseen), recorded in the audit trail in the same write; and the list of versions.

use rusqlite::params;
use serde_json::{Map, Value};

use super::events::{record, NewEvent};
use super::properties::{current, insert_version, Level};
use super::{q, Store, StoreError};
use opschain_runner::properties::splice;

/// One stored properties version, without its document.
#[derive(Debug, Clone)]
pub struct VersionRow {
    /// `project` or `environment`.
    pub level: Level,
    /// The project code.
    pub project_code: String,
    /// The environment code, for an environment's version.
    pub environment_code: Option<String>,
    /// The version number.
    pub version: i64,
    /// The step whose diff made it (`None`: a user's edit or the first version).
    pub step_id: Option<i64>,
    /// When it was stored.
    pub created_at: String,
}

/// What a user's properties edit records.
#[derive(Debug, Clone, Copy)]
pub struct PropertiesEdit<'a> {
    /// The version the edit was made on (`None`: whatever is current).
    pub expected_version: Option<i64>,
    /// The user.
    pub by: &'a str,
    /// What the audit trail names as the target, e.g. `project/web/properties`.
    pub target: &'a str,
}

impl Store {
    /// Writes `json` as the next version of a level's properties, unless the current version is
    /// not `edit.expected_version` ([`StoreError::VersionConflict`]); returns the new version.
    pub fn set_properties_checked(&self, level: Level, owner: i64, json: &Map<String, Value>, edit: PropertiesEdit<'_>) -> Result<i64, StoreError> {
        let json = Value::Object(json.clone());
        let (expected, by, target) = (edit.expected_version, edit.by.to_string(), edit.target.to_string());
        self.write_properties(move |tx, cache, staged| {
            let prev = current(tx, cache, Some(staged), level, owner)?;
            if let Some(expected) = expected.filter(|&v| v != prev.version) {
                return Err(StoreError::VersionConflict { expected, current: prev.version });
            }
            let before: Value = serde_json::from_str(prev.doc.text()).map_err(|source| StoreError::Json { what: format!("{} properties", level.as_str()), source })?;
            let patch = serde_json::to_string(&opschain_runner::diff::diff(&before, &json)).expect("a patch serialises");
            let doc = splice::Document::parse(&json.to_string()).expect("a JSON object's text is a document");
            let version = insert_version(tx, cache, staged, level, owner, &prev, doc, Some(patch), None)?;
            record(tx, &NewEvent { username: Some(&by), kind: "properties.update", target: Some(&target), detail: serde_json::json!({"version": version}) })?;
            Ok(version)
        })
    }

    /// Up to `limit` properties versions, newest first, of one project's levels (its own and its
    /// environments') or of every project, optionally only one environment's, and only those
    /// older than `before` (id order: the cursor of the next page).
    pub fn properties_versions(&self, project_code: Option<&str>, environment_code: Option<&str>, limit: usize) -> Result<Vec<VersionRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT v.level, p.code, e.code, v.version, v.step_id, v.created_at FROM properties v
                 LEFT JOIN environments e ON v.level = 'environment' AND e.id = v.owner_id
                 JOIN projects p ON p.id = CASE v.level WHEN 'project' THEN v.owner_id ELSE e.project_id END
                 WHERE (?1 IS NULL OR p.code = ?1) AND (?2 IS NULL OR e.code = ?2)
                 ORDER BY v.id DESC LIMIT ?3",
            )
            .map_err(q("list properties versions"))?;
        let rows = stmt
            .query_map(params![project_code, environment_code, limit as i64], |r| {
                let level: String = r.get(0)?;
                Ok(VersionRow {
                    level: if level == "project" { Level::Project } else { Level::Environment },
                    project_code: r.get(1)?,
                    environment_code: r.get(2)?,
                    version: r.get(3)?,
                    step_id: r.get(4)?,
                    created_at: r.get(5)?,
                })
            })
            .map_err(q("list properties versions"))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(q("list properties versions"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{obj, setup};
    use super::*;
    use serde_json::json;

    #[test]
    fn an_edit_made_on_an_old_version_is_refused_and_the_current_one_kept() {
        let (_dir, store, p, ..) = setup();
        let edit = |v| PropertiesEdit { expected_version: v, by: "ann", target: "project/p/properties" };
        assert_eq!(store.set_properties_checked(Level::Project, p, &obj(json!({"a": 1})), edit(Some(0))).unwrap(), 1);
        let late = store.set_properties_checked(Level::Project, p, &obj(json!({"b": 2})), edit(Some(0))).unwrap_err();
        assert!(matches!(late, StoreError::VersionConflict { expected: 0, current: 1 }), "{late:?}");
        assert_eq!(store.properties(Level::Project, p).unwrap().json, obj(json!({"a": 1})));
        assert_eq!(store.set_properties_checked(Level::Project, p, &obj(json!({"b": 2})), edit(None)).unwrap(), 2);
        let versions = store.properties_versions(Some("p"), None, 10).unwrap();
        assert_eq!(versions.iter().map(|v| (v.level, v.version)).collect::<Vec<_>>()[..3], [(Level::Project, 2), (Level::Project, 1), (Level::Environment, 0)]);
        assert_eq!(store.events(&Default::default(), 10).unwrap().len(), 2);
    }
}
