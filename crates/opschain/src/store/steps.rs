//! Steps: their rows, their status transitions, and a step's start and end (its properties
//! diffs applied as new versions, its children added) each as one write.

use std::sync::Arc;

use rusqlite::{params, OptionalExtension};
use serde_json::{Map, Value};

use super::properties::{apply, apply_merged, current, declaring, insert_version, load, Level, PropertiesBase, Unapplied};
use super::{exec_cached, json_of, q, Store, StoreError};
use crate::patch::{self, Conflict};
use crate::status::StepStatus;
use opschain_runner::mask::Masker;

/// A step row.
#[derive(Debug, Clone)]
pub struct StepRow {
    /// The step id.
    pub id: i64,
    /// The parent step; `None` for the root.
    pub parent_id: Option<i64>,
    /// The position among its siblings.
    pub position: i64,
    /// The action.
    pub action: String,
    /// The status.
    pub status: StepStatus,
    /// How its children run (`sequential`, `parallel`), when it has some.
    pub child_strategy: Option<String>,
    /// The agent's exit status.
    pub exit_status: Option<i64>,
    /// Why it failed, when it did.
    pub message: Option<String>,
    /// When it started running.
    pub started_at: Option<String>,
    /// When it ended.
    pub finished_at: Option<String>,
    /// Its run time in seconds, when it ended.
    pub duration_secs: Option<f64>,
}

/// The properties a step starts with, as the store's shared text of their current versions.
#[derive(Debug, Clone)]
pub struct StartingProperties {
    /// The project's current properties (a JSON object's text).
    pub project: Arc<str>,
    /// The environment's current properties (a JSON object's text).
    pub environment: Arc<str>,
    /// Of the project's properties, only the members that can hold declarations
    /// ([`opschain_runner::properties::declarations::MEMBERS`]), parsed: what the build-secret rule and
    /// the image build read. Found from the store's index of the document's members, so the rest
    /// of the document (which may be megabytes) is never parsed for them.
    pub project_declaring: Map<String, Value>,
    /// The same of the environment's properties.
    pub environment_declaring: Map<String, Value>,
    /// The project's version the step starts from: hand it back in [`StepEnd::project_base`].
    pub project_base: PropertiesBase,
    /// The environment's version the step starts from: hand it back in
    /// [`StepEnd::environment_base`].
    pub environment_base: PropertiesBase,
}

/// What a step's end records, in one transaction.
#[derive(Debug, Clone)]
pub struct StepEnd {
    /// The status the step's own run earned (`success` or `error`); a conflicting diff turns
    /// `success` into `error`.
    pub status: StepStatus,
    /// The agent's exit status.
    pub exit_status: Option<i32>,
    /// Why it failed.
    pub message: Option<String>,
    /// The project diff to apply.
    pub project_diff: json_patch::Patch,
    /// The environment diff to apply.
    pub environment_diff: json_patch::Patch,
    /// The child actions to add (only when the step succeeded).
    pub children: Vec<String>,
    /// Their strategy.
    pub child_strategy: Option<String>,
    /// The change's secrets: the message (the agent's failure, a properties conflict, which
    /// shows whole property documents) is stored masked with it.
    pub mask: Masker,
    /// The project version the step started from ([`StartingProperties::project_base`]), if the
    /// caller kept it; otherwise it is read from the database when the diff must be merged.
    pub project_base: Option<PropertiesBase>,
    /// The same of the environment.
    pub environment_base: Option<PropertiesBase>,
}

impl Store {
    /// The steps of a change, parents before children, siblings in order.
    pub fn steps(&self, change_id: i64) -> Result<Vec<StepRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!("SELECT {STEP_COLUMNS} FROM steps WHERE change_id = ?1 ORDER BY id")).map_err(q("list steps"))?;
        let rows = stmt.query_map([change_id], step_row).map_err(q("list steps"))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(q("list steps"))
    }

    /// The children of step `parent_id` of a change, in order, and how they run (the parent's
    /// `child_strategy`). One indexed lookup: the scheduler asks this for every step it runs, so
    /// it must not read the whole change.
    pub fn child_steps(&self, change_id: i64, parent_id: i64) -> Result<(Vec<StepRow>, Option<String>), StoreError> {
        let conn = self.conn();
        let strategy: Option<String> = conn
            .prepare_cached("SELECT child_strategy FROM steps WHERE id = ?1")
            .and_then(|mut s| s.query_row([parent_id], |r| r.get(0)).optional())
            .map_err(q("read child strategy"))?
            .flatten();
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {STEP_COLUMNS} FROM steps WHERE change_id = ?1 AND parent_id = ?2 ORDER BY position")).map_err(q("list child steps"))?;
        let rows = stmt.query_map([change_id, parent_id], step_row).map_err(q("list child steps"))?;
        Ok((rows.collect::<Result<Vec<_>, _>>().map_err(q("list child steps"))?, strategy))
    }

    /// Moves a step to `queued`, `aborted` or `cancelled` (no timing change).
    pub fn set_step_status(&self, step_id: i64, status: StepStatus, message: Option<&str>) -> Result<(), StoreError> {
        let message = message.map(str::to_string);
        self.write(move |tx| {
            exec_cached(
                tx,
                "UPDATE steps SET status = ?2, message = COALESCE(?3, message),
                    finished_at = CASE WHEN ?4 THEN strftime('%Y-%m-%dT%H:%M:%fZ','now') ELSE finished_at END WHERE id = ?1",
                params![step_id, status, message, status.is_final()],
            )
            .map_err(q("update step status"))?;
            Ok(())
        })
    }

    /// Marks a step `running` and returns the properties it starts with (project, environment),
    /// recording their versions on the step.
    pub fn start_step(&self, step_id: i64, project_id: i64, environment_id: i64) -> Result<StartingProperties, StoreError> {
        self.write_properties(move |tx, cache, staged| {
            let project = current(tx, cache, Some(staged), Level::Project, project_id)?;
            let environment = current(tx, cache, Some(staged), Level::Environment, environment_id)?;
            exec_cached(
                tx,
                "UPDATE steps SET status = ?4, project_version = ?2, environment_version = ?3, exit_status = NULL, message = NULL,
                    started_at = strftime('%Y-%m-%dT%H:%M:%fZ','now'), finished_at = NULL WHERE id = ?1",
                params![step_id, project.version, environment.version, StepStatus::Running],
            )
            .map_err(q("start step"))?;
            Ok(StartingProperties {
                project: Arc::clone(project.doc.text()),
                environment: Arc::clone(environment.doc.text()),
                project_declaring: declaring(&project.doc),
                environment_declaring: declaring(&environment.doc),
                project_base: PropertiesBase(project),
                environment_base: PropertiesBase(environment),
            })
        })
    }

    /// Ends a step in ONE transaction: applies its diffs to the current properties (new versions),
    /// records its status, and adds its children as `pending`. A diff is applied as the step meant
    /// it: as it is when the properties are still the version the step started from, else merged
    /// three ways with what changed since ([`crate::merge`], of the top-level members
    /// the diff touches). A diff that does not apply, or conflicts with a change made since, rolls
    /// the diffs back and ends the step `error` with the conflict explained. Returns the final
    /// status and the message, if any.
    pub fn finish_step(&self, step_id: i64, project_id: i64, environment_id: i64, end: StepEnd) -> Result<(StepStatus, Option<String>), StoreError> {
        self.write_properties(move |tx, cache, staged| {
            let (change_id, project_version, environment_version, action): (i64, Option<i64>, Option<i64>, String) = tx
                .query_row("SELECT change_id, project_version, environment_version, action FROM steps WHERE id = ?1", [step_id], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .map_err(q("read step"))?;
            let mut status = end.status;
            let mut message = end.message.clone();
            let mut updates = Vec::new();
            for (level, owner, started, diff, base) in [
                (Level::Project, project_id, project_version, &end.project_diff, &end.project_base),
                (Level::Environment, environment_id, environment_version, &end.environment_diff, &end.environment_base),
            ] {
                if diff.0.is_empty() {
                    continue;
                }
                let current = current(tx, cache, Some(staged), level, owner)?;
                let applied = match started {
                    // The fast path: nothing changed since the step started.
                    Some(v) if v != current.version => {
                        let base = match base.as_ref().filter(|b| b.version() == v) {
                            Some(base) => std::borrow::Cow::Borrowed(&base.0.doc),
                            None => std::borrow::Cow::Owned(load(tx, &cache.seal, level, owner, v)?.doc),
                        };
                        apply_merged(&base, &current.doc, diff)
                    }
                    _ => apply(&current.doc, diff).map(|doc| (doc, diff.clone())).map_err(Unapplied::Invalid),
                };
                match applied {
                    Ok((doc, patch)) => updates.push((level, owner, current, doc, patch)),
                    Err(unapplied) => {
                        let what = || format!("{} properties", level.as_str());
                        let original = match started {
                            Some(v) => json_of(load(tx, &cache.seal, level, owner, v)?.doc.text(), what)?,
                            None => Map::new(),
                        };
                        let (project, environment): (String, String) = tx
                            .query_row(
                                "SELECT p.code, e.code FROM changes c JOIN projects p ON p.id = c.project_id JOIN environments e ON e.id = c.environment_id WHERE c.id = ?1",
                                [change_id],
                                |r| Ok((r.get(0)?, r.get(1)?)),
                            )
                            .map_err(q("read change codes"))?;
                        let (error, paths) = match unapplied {
                            Unapplied::Invalid(error) => (error, Vec::new()),
                            Unapplied::Conflict(conflict) => ("they conflict with changes made while it ran".to_string(), conflict.paths),
                        };
                        let conflict = Conflict {
                            project,
                            environment,
                            level: level.as_str(),
                            step_id,
                            action: action.clone(),
                            change_id,
                            error,
                            paths,
                            original,
                            patch: diff.clone(),
                            current: json_of(current.doc.text(), what)?,
                        };
                        let text = patch::explain(&conflict);
                        message = Some(match message {
                            Some(m) => format!("{m}\n{text}"),
                            None => text,
                        });
                        status = StepStatus::Error;
                        updates.clear();
                        break;
                    }
                }
            }
            for (level, owner, prev, doc, patch) in updates {
                let patch = serde_json::to_string(&patch).expect("a patch serialises");
                insert_version(tx, cache, staged, level, owner, &prev, doc, Some(patch), Some(step_id))?;
            }
            let message = message.map(|m| end.mask.mask(&m).into_owned());
            exec_cached(
                tx,
                "UPDATE steps SET status = ?2, exit_status = ?3, message = ?4, child_strategy = ?5,
                    finished_at = strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE id = ?1",
                params![step_id, status, end.exit_status, message, if status == StepStatus::Success { end.child_strategy.clone() } else { None }],
            )
            .map_err(q("finish step"))?;
            if status == StepStatus::Success {
                for (position, child) in end.children.iter().enumerate() {
                    exec_cached(
                        tx,
                        "INSERT INTO steps (change_id, parent_id, position, action, status) VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![change_id, step_id, position as i64, child, StepStatus::Pending],
                    )
                    .map_err(q("add child step"))?;
                }
            }
            Ok((status, message))
        })
    }

    /// Marks steps `queued` (waiting for a worker), all in one write.
    pub fn mark_queued(&self, step_ids: &[i64]) -> Result<(), StoreError> {
        let ids = step_ids.to_vec();
        self.write(move |tx| {
            let mut stmt = tx.prepare_cached("UPDATE steps SET status = ?2 WHERE id = ?1").map_err(q("queue steps"))?;
            for id in ids {
                stmt.execute(params![id, StepStatus::Queued]).map_err(q("queue steps"))?;
            }
            Ok(())
        })
    }
}

/// The columns [`step_row`] reads, in its order.
pub(super) const STEP_COLUMNS: &str = "id, parent_id, position, action, status, child_strategy, exit_status, message, started_at, finished_at,
    (julianday(finished_at) - julianday(started_at)) * 86400.0";

/// A step row from a query that selects [`STEP_COLUMNS`].
pub(super) fn step_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StepRow> {
    Ok(StepRow {
        id: r.get(0)?,
        parent_id: r.get(1)?,
        position: r.get(2)?,
        action: r.get(3)?,
        status: r.get(4)?,
        child_strategy: r.get(5)?,
        exit_status: r.get(6)?,
        message: r.get(7)?,
        started_at: r.get(8)?,
        finished_at: r.get(9)?,
        duration_secs: r.get(10)?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{end, obj, setup};
    use super::*;
    use serde_json::json;

    #[test]
    fn a_step_end_applies_both_diffs_as_new_versions_and_adds_its_children() {
        let (_dir, store, p, e, c) = setup();
        let root = store.steps(c).unwrap()[0].id;
        store.start_step(root, p, e).unwrap();
        let (status, message) =
            store.finish_step(root, p, e, end(json!([{"op": "add", "path": "/a", "value": 1}]), json!([{"op": "add", "path": "/b", "value": 2}]), &["x", "y"])).unwrap();
        assert_eq!((status, message), (StepStatus::Success, None));
        assert_eq!(store.properties(Level::Project, p).unwrap().json, obj(json!({"a": 1})));
        assert_eq!(store.properties(Level::Environment, e).unwrap().version, 1);
        let steps = store.steps(c).unwrap();
        assert_eq!(steps.iter().filter(|s| s.parent_id == Some(root)).map(|s| s.action.as_str()).collect::<Vec<_>>(), ["x", "y"]);
        assert_eq!(steps[0].child_strategy.as_deref(), Some("parallel"));
    }

    #[test]
    fn a_conflict_in_the_second_level_applies_nothing_and_adds_no_children() {
        let (_dir, store, p, e, c) = setup();
        let root = store.steps(c).unwrap()[0].id;
        store.set_properties(Level::Environment, e, &obj(json!({"cfg": {"a": 1}}))).unwrap();
        store.start_step(root, p, e).unwrap();
        // Another writer removes /cfg while the step runs.
        store.set_properties(Level::Environment, e, &obj(json!({}))).unwrap();
        let (status, message) =
            store.finish_step(root, p, e, end(json!([{"op": "add", "path": "/a", "value": 1}]), json!([{"op": "add", "path": "/cfg/b", "value": 2}]), &["x"])).unwrap();
        assert_eq!(status, StepStatus::Error);
        let message = message.unwrap();
        assert!(message.contains("environment properties changes of step"), "{message}");
        assert!(message.contains("\"cfg\""), "the original is shown: {message}");
        assert_eq!(store.properties(Level::Project, p).unwrap().version, 0, "the project diff was not half-applied");
        assert_eq!(store.properties(Level::Environment, e).unwrap().json, Map::new());
        assert_eq!(store.steps(c).unwrap().len(), 1, "no children of a failed step");
    }

    /// Two steps that start from the same version and end one after the other.
    fn two_parallel_steps(store: &Store, p: i64, e: i64, c: i64) -> (i64, i64) {
        let root = store.steps(c).unwrap()[0].id;
        store.start_step(root, p, e).unwrap();
        store.finish_step(root, p, e, end(json!([]), json!([]), &["one", "two"])).unwrap();
        let steps = store.steps(c).unwrap();
        store.start_step(steps[1].id, p, e).unwrap();
        store.start_step(steps[2].id, p, e).unwrap();
        (steps[1].id, steps[2].id)
    }

    #[test]
    fn a_diff_made_on_an_older_version_is_merged_as_the_step_meant_it() {
        let (dir, store, p, e, c) = setup();
        store.set_properties(Level::Environment, e, &obj(json!({"servers": ["a", "b", "c"], "app": {"v": 1}}))).unwrap();
        let (one, two) = two_parallel_steps(&store, p, e, c);
        // The first drops "a"; the second, from the same version, drops "b" (`remove /servers/1`,
        // which by index would now drop "c") and changes another member.
        let first = store.finish_step(one, p, e, end(json!([]), json!([{"op": "remove", "path": "/servers/0"}]), &[])).unwrap();
        assert_eq!(first, (StepStatus::Success, None));
        let second = end(json!([]), json!([{"op": "remove", "path": "/servers/1"}, {"op": "replace", "path": "/app/v", "value": 2}]), &[]);
        assert_eq!(store.finish_step(two, p, e, second).unwrap(), (StepStatus::Success, None));
        let expected = obj(json!({"servers": ["c"], "app": {"v": 2}}));
        assert_eq!(store.properties(Level::Environment, e).unwrap().json, expected);
        // What is stored for the version is its patch from the version before it: read afresh.
        let again = Store::open(dir.path()).unwrap();
        assert_eq!(again.properties(Level::Environment, e).unwrap().json, expected);
        assert_eq!(again.properties_history(Level::Environment, e).unwrap().last().unwrap().json, expected);
    }

    #[test]
    fn a_diff_that_conflicts_with_a_change_made_since_fails_the_step_naming_the_paths() {
        let (_dir, store, p, e, c) = setup();
        store.set_properties(Level::Environment, e, &obj(json!({"servers": ["a", "b", "c"], "other": 1}))).unwrap();
        let (one, two) = two_parallel_steps(&store, p, e, c);
        store.finish_step(one, p, e, end(json!([]), json!([{"op": "replace", "path": "/servers/1", "value": "x"}]), &[])).unwrap();
        let second =
            end(json!([{"op": "add", "path": "/p", "value": 1}]), json!([{"op": "replace", "path": "/servers/1", "value": "y"}, {"op": "remove", "path": "/other"}]), &[]);
        let (status, message) = store.finish_step(two, p, e, second).unwrap();
        assert_eq!(status, StepStatus::Error);
        let message = message.unwrap();
        assert!(message.contains("changed by both, differently: /servers/1."), "{message}");
        assert!(message.contains("Patched original properties"), "{message}");
        assert!(message.contains("opschain change retry"), "{message}");
        // Nothing of the step was applied, at either level.
        assert_eq!(store.properties(Level::Environment, e).unwrap().json, obj(json!({"servers": ["a", "x", "c"], "other": 1})));
        assert_eq!(store.properties(Level::Project, p).unwrap().version, 0);
    }

    #[test]
    fn a_diff_of_members_nobody_else_changed_applies_as_it_is() {
        let (_dir, store, p, e, c) = setup();
        store.set_properties(Level::Project, p, &obj(json!({"servers": ["a", "b"]}))).unwrap();
        let (one, two) = two_parallel_steps(&store, p, e, c);
        store.finish_step(one, p, e, end(json!([{"op": "add", "path": "/step_1", "value": "done"}]), json!([]), &[])).unwrap();
        // Stale base, but its members untouched since: applied without a merge, the step's own
        // patch stored.
        store
            .finish_step(two, p, e, end(json!([{"op": "add", "path": "/step_2", "value": "done"}, {"op": "add", "path": "/servers/-", "value": "c"}]), json!([]), &[]))
            .unwrap();
        assert_eq!(store.properties(Level::Project, p).unwrap().json, obj(json!({"servers": ["a", "b", "c"], "step_1": "done", "step_2": "done"})));
    }
}
