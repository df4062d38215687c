//! Changes: their rows, creating, starting, claiming, cancelling and resetting them for a retry.

use std::path::{Path, PathBuf};

use rusqlite::params;

use super::steps::{step_row, STEP_COLUMNS};
use super::{q, Store, StoreError};
use crate::liveness::{self, ChangeLock};
use crate::status::{BackendKind, ChangeStatus, StepStatus};

/// A change row.
#[derive(Debug, Clone)]
pub struct ChangeRow {
    /// The change id.
    pub id: i64,
    /// The project code.
    pub project: String,
    /// The project id.
    pub project_id: i64,
    /// The environment code.
    pub environment: String,
    /// The environment id.
    pub environment_id: i64,
    /// The action of the root step.
    pub action: String,
    /// The git repository the steps are checked out from.
    pub repo: PathBuf,
    /// The revision as given.
    pub git_rev: String,
    /// The commit the revision resolved to.
    pub commit: String,
    /// Where its steps run.
    pub backend: BackendKind,
    /// The secret set the steps get, if any.
    pub secret_set: Option<String>,
    /// The OpsChain folder of the repository the change was created with (`.opschain`,
    /// `.mintpress`); `None` for a change created before the folder was stored.
    pub folder: Option<String>,
    /// Its metadata, a JSON object's text (`change create --metadata-path`), if any.
    pub metadata: Option<String>,
    /// The versions of the project's and the environment's properties when it first started.
    pub starting_versions: Option<(i64, i64)>,
    /// The change status.
    pub status: ChangeStatus,
    /// Whether `change cancel` was asked for.
    pub cancel_requested: bool,
    /// The process id of the controller that ran it last (for people: whether that controller
    /// still runs is [`Store::controller_alive`]).
    pub controller_pid: Option<i64>,
    /// Why it ended as it did, when its steps do not say it (its controller was lost).
    pub reason: Option<String>,
    /// When it was created.
    pub created_at: String,
    /// When it finished.
    pub finished_at: Option<String>,
}

/// What [`Store::claim_change`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The change is now this controller's.
    Claimed,
    /// It succeeded: nothing to retry.
    Succeeded,
}

/// What [`Store::record_lost`] found of a change whose controller is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// It had ended: nothing was recorded.
    Ended,
    /// Its end is now recorded with this status (`error`, or `cancelled` when a cancel had
    /// been asked for), and the reason.
    Recorded(ChangeStatus),
}

/// The reason recorded for a change whose controller is gone.
pub const LOST_REASON: &str = "the controller running it was lost (killed, or its machine stopped) before it recorded the change's end";

/// The message of a step left running by a lost controller.
pub const LOST_STEP: &str = "its controller was lost while it ran (killed, or its machine stopped); its sandbox was removed";

/// What [`Store::try_start_change`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The change is now `running` under this controller.
    Started,
    /// Another change runs in the same environment (its id); nothing was changed.
    Blocked(i64),
    /// A cancel was asked for before the change started: it is recorded `cancelled`, its steps
    /// too, and must not run.
    Cancelled,
}

/// What [`Store::create_change`] stores of a new change.
#[derive(Debug, Clone, Copy)]
pub struct NewChangeRow<'a> {
    /// The project id.
    pub project_id: i64,
    /// The environment id.
    pub environment_id: i64,
    /// The action of the root step.
    pub action: &'a str,
    /// The git repository the steps are checked out from.
    pub repo: &'a Path,
    /// The revision as given.
    pub git_rev: &'a str,
    /// The commit the revision resolved to.
    pub commit: &'a str,
    /// Where its steps run.
    pub backend: BackendKind,
    /// The secret set the steps get, if any.
    pub secret_set: Option<&'a str>,
    /// The OpsChain folder of the repository (`.opschain`, `.mintpress`): a retry runs with it.
    pub folder: &'a str,
    /// The change's metadata, a JSON object's text (`change create --metadata-path`).
    pub metadata: Option<&'a str>,
}

/// Adds the columns a database from before them lacks to its `changes`: `folder` (its changes
/// keep `NULL`: their retry takes the command line's folder, as it did), `metadata`, the
/// starting properties' versions (`NULL`: none recorded) and `reason`. Run when the store opens,
/// in its set-up transaction; does nothing to a database that has the columns.
pub(super) fn migrate_changes(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    for (column, kind) in [("folder", "TEXT"), ("metadata", "TEXT"), ("project_version", "INTEGER"), ("environment_version", "INTEGER"), ("reason", "TEXT")] {
        let has: bool = conn.query_row("SELECT count(*) FROM pragma_table_info('changes') WHERE name = ?1", [column], |r| r.get(0))?;
        if !has {
            conn.execute_batch(&format!("ALTER TABLE changes ADD COLUMN {column} {kind}"))?;
        }
    }
    Ok(())
}

impl Store {
    /// Creates a change (status `pending`) with its root step; returns the change id and its lock,
    /// taken before the change is committed: no other command ever sees the new change without
    /// a live controller.
    pub fn create_change(&self, new: &NewChangeRow<'_>) -> Result<(i64, ChangeLock), StoreError> {
        let locks = self.locks.clone();
        let NewChangeRow { project_id, environment_id, backend, .. } = *new;
        let (action, repo, git_rev) = (new.action.to_string(), new.repo.to_string_lossy().into_owned(), new.git_rev.to_string());
        let (commit, secret_set, folder) = (new.commit.to_string(), new.secret_set.map(str::to_string), new.folder.to_string());
        let metadata = new.metadata.map(str::to_string);
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO changes (project_id, environment_id, action, repo, git_rev, commit_sha, backend, secret_set, status, folder, metadata)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![project_id, environment_id, action, repo, git_rev, commit, backend, secret_set, ChangeStatus::Pending, folder, metadata],
            )
            .map_err(q("create change"))?;
            let id = tx.last_insert_rowid();
            tx.execute("INSERT INTO steps (change_id, parent_id, position, action, status) VALUES (?1, NULL, 0, ?2, ?3)", params![id, action, StepStatus::Pending])
                .map_err(q("create root step"))?;
            let lock = ChangeLock::take(&locks, id)?.ok_or(StoreError::Locked(id))?;
            Ok((id, lock))
        })
    }

    /// Makes this process the change's controller and marks it `running` (the caller holds the
    /// change's lock), unless another live controller (one that holds its change's lock, see
    /// [`crate::liveness`]) runs a change in the same environment and the project does not allow
    /// parallel changes (then returns the blocking change's id and changes nothing), or a cancel
    /// was asked for since the change was created or reset for a retry (then the change and its
    /// waiting steps are recorded `cancelled`). Starting never clears the cancel flag: a `change cancel` that
    /// lands between create and start is kept, not undone.
    pub fn try_start_change(&self, change_id: i64, pid: i64) -> Result<Start, StoreError> {
        let locks = self.locks.clone();
        self.write(move |tx| {
            let (env, allow, cancel): (i64, bool, bool) = tx
                .query_row(
                    "SELECT c.environment_id, p.allow_parallel_changes, c.cancel_requested OR c.status = ?2 FROM changes c JOIN projects p ON p.id = c.project_id WHERE c.id = ?1",
                    params![change_id, ChangeStatus::Cancelled],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .map_err(q("read change"))?;
            if cancel {
                cancel_steps_and_change(tx, change_id)?;
                return Ok(Start::Cancelled);
            }
            if !allow {
                let mut stmt = tx
                    .prepare("SELECT id FROM changes WHERE environment_id = ?1 AND id != ?2 AND status = ?3 AND controller_pid IS NOT NULL")
                    .map_err(q("find running changes"))?;
                let running = stmt
                    .query_map(params![env, change_id, ChangeStatus::Running], |r| r.get::<_, i64>(0))
                    .map_err(q("find running changes"))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(q("find running changes"))?;
                drop(stmt);
                for blocking in running {
                    if liveness::held(&locks, blocking)? {
                        return Ok(Start::Blocked(blocking));
                    }
                }
            }
            tx.execute(
                "UPDATE changes SET status = ?3, controller_pid = ?2, started_at = strftime('%Y-%m-%dT%H:%M:%fZ','now'), finished_at = NULL WHERE id = ?1",
                params![change_id, pid, ChangeStatus::Running],
            )
            .map_err(q("start change"))?;
            // The properties it starts with, the first time it starts (a retry keeps them).
            tx.execute(
                "UPDATE changes SET
                   project_version = COALESCE(project_version, (SELECT max(version) FROM properties WHERE level = ?2 AND owner_id = changes.project_id)),
                   environment_version = COALESCE(environment_version, (SELECT max(version) FROM properties WHERE level = ?3 AND owner_id = changes.environment_id))
                 WHERE id = ?1",
                params![change_id, super::Level::Project, super::Level::Environment],
            )
            .map_err(q("start change"))?;
            Ok(Start::Started)
        })
    }

    /// Claims a change for a retry by the controller `pid`, which holds the change's lock (so no
    /// other live controller runs it), in one write: refused when it succeeded. A claimed change
    /// is `queued` under `pid` until [`Store::try_start_change`].
    pub fn claim_change(&self, change_id: i64, pid: i64) -> Result<Claim, StoreError> {
        self.write(move |tx| {
            let status: ChangeStatus = tx.query_row("SELECT status FROM changes WHERE id = ?1", [change_id], |r| r.get(0)).map_err(q("read change"))?;
            if status == ChangeStatus::Success {
                return Ok(Claim::Succeeded);
            }
            tx.execute("UPDATE changes SET status = ?3, controller_pid = ?2, reason = NULL WHERE id = ?1", params![change_id, pid, ChangeStatus::Queued])
                .map_err(q("claim change"))?;
            Ok(Claim::Claimed)
        })
    }

    /// Whether a live controller runs the change (holds its lock).
    pub fn controller_alive(&self, change_id: i64) -> Result<bool, StoreError> {
        Ok(liveness::held(&self.locks, change_id)?)
    }

    /// Takes the lock of a change (see [`ChangeLock::take`]): `None` while its live controller
    /// holds it.
    pub fn lock_change(&self, change_id: i64) -> Result<Option<ChangeLock>, StoreError> {
        Ok(ChangeLock::take(&self.locks, change_id)?)
    }

    /// Records the end of a change whose controller is gone (the caller holds its lock, so none
    /// runs it), in one write, unless it had ended: its running steps `error` ([`LOST_STEP`]),
    /// its pending and queued steps `cancelled`, and the change `error`, or `cancelled` when a
    /// cancel had been asked for, with [`LOST_REASON`].
    pub fn record_lost(&self, lock: &ChangeLock) -> Result<Lost, StoreError> {
        let change_id = lock.change_id();
        self.write(move |tx| {
            let (status, cancel): (ChangeStatus, bool) =
                tx.query_row("SELECT status, cancel_requested FROM changes WHERE id = ?1", [change_id], |r| Ok((r.get(0)?, r.get(1)?))).map_err(q("read change"))?;
            if status.is_final() {
                return Ok(Lost::Ended);
            }
            let now = "strftime('%Y-%m-%dT%H:%M:%fZ','now')";
            tx.execute(
                &format!("UPDATE steps SET status = ?2, message = ?3, finished_at = {now} WHERE change_id = ?1 AND status = ?4"),
                params![change_id, StepStatus::Error, LOST_STEP, StepStatus::Running],
            )
            .map_err(q("record lost steps"))?;
            tx.execute(
                &format!("UPDATE steps SET status = ?2, finished_at = {now} WHERE change_id = ?1 AND status IN (?3, ?4)"),
                params![change_id, StepStatus::Cancelled, StepStatus::Pending, StepStatus::Queued],
            )
            .map_err(q("record lost steps"))?;
            let ended = if cancel { ChangeStatus::Cancelled } else { ChangeStatus::Error };
            tx.execute(&format!("UPDATE changes SET status = ?2, reason = ?3, finished_at = {now} WHERE id = ?1"), params![change_id, ended, LOST_REASON])
                .map_err(q("record lost change"))?;
            Ok(Lost::Recorded(ended))
        })
    }

    /// Marks a change `queued` (waiting for its environment).
    pub fn set_change_status(&self, change_id: i64, status: ChangeStatus) -> Result<(), StoreError> {
        let finished = status.is_final();
        self.write(move |tx| {
            tx.execute(
                "UPDATE changes SET status = ?2, finished_at = CASE WHEN ?3 THEN strftime('%Y-%m-%dT%H:%M:%fZ','now') ELSE NULL END WHERE id = ?1",
                params![change_id, status, finished],
            )
            .map_err(q("update change status"))?;
            Ok(())
        })
    }

    /// Asks for a change's cancellation (its controller sees the flag).
    pub fn request_cancel(&self, change_id: i64) -> Result<(), StoreError> {
        self.write(move |tx| {
            tx.execute("UPDATE changes SET cancel_requested = 1 WHERE id = ?1", [change_id]).map_err(q("request cancel"))?;
            Ok(())
        })
    }

    /// Whether cancellation of the change was asked for.
    pub fn cancel_requested(&self, change_id: i64) -> Result<bool, StoreError> {
        self.conn().query_row("SELECT cancel_requested FROM changes WHERE id = ?1", [change_id], |r| r.get(0)).map_err(q("read cancel flag"))
    }

    /// A change by id.
    pub fn change(&self, change_id: i64) -> Result<ChangeRow, StoreError> {
        self.changes(Some(change_id))?.pop().ok_or_else(|| StoreError::NotFound(format!("change {change_id}")))
    }

    /// Every change (or one), newest last.
    pub fn changes(&self, only: Option<i64>) -> Result<Vec<ChangeRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT c.id, p.code, p.id, e.code, e.id, c.action, c.repo, c.git_rev, c.commit_sha, c.backend, c.secret_set, c.status,
                        c.cancel_requested, c.controller_pid, c.created_at, c.finished_at, c.folder, c.metadata, c.project_version, c.environment_version, c.reason
                 FROM changes c JOIN projects p ON p.id = c.project_id JOIN environments e ON e.id = c.environment_id
                 WHERE ?1 IS NULL OR c.id = ?1 ORDER BY c.id",
            )
            .map_err(q("list changes"))?;
        let rows = stmt
            .query_map([only], |r| {
                Ok(ChangeRow {
                    id: r.get(0)?,
                    project: r.get(1)?,
                    project_id: r.get(2)?,
                    environment: r.get(3)?,
                    environment_id: r.get(4)?,
                    action: r.get(5)?,
                    repo: PathBuf::from(r.get::<_, String>(6)?),
                    git_rev: r.get(7)?,
                    commit: r.get(8)?,
                    backend: r.get(9)?,
                    secret_set: r.get(10)?,
                    status: r.get(11)?,
                    cancel_requested: r.get(12)?,
                    controller_pid: r.get(13)?,
                    created_at: r.get(14)?,
                    finished_at: r.get(15)?,
                    folder: r.get(16)?,
                    metadata: r.get(17)?,
                    starting_versions: match (r.get::<_, Option<i64>>(18)?, r.get::<_, Option<i64>>(19)?) {
                        (Some(p), Some(e)) => Some((p, e)),
                        _ => None,
                    },
                    reason: r.get(20)?,
                })
            })
            .map_err(q("list changes"))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(q("list changes"))
    }

    /// Prepares a change for `retry`, in one transaction: every step that did not succeed goes back
    /// to `pending` and loses its descendants (it reports its children again when it runs); the
    /// successful steps and their successful subtrees are kept. Returns how many steps will re-run.
    pub fn reset_for_retry(&self, change_id: i64) -> Result<usize, StoreError> {
        self.write(move |tx| {
            let steps = {
                let mut stmt = tx.prepare_cached(&format!("SELECT {STEP_COLUMNS} FROM steps WHERE change_id = ?1 ORDER BY id")).map_err(q("list steps"))?;
                let rows = stmt.query_map([change_id], step_row).map_err(q("list steps"))?;
                rows.collect::<Result<Vec<_>, _>>().map_err(q("list steps"))?
            };
            let mut reset = 0;
            let mut stack: Vec<i64> = steps.iter().filter(|s| s.parent_id.is_none()).map(|s| s.id).collect();
            while let Some(id) = stack.pop() {
                let step = steps.iter().find(|s| s.id == id).expect("listed");
                if step.status == StepStatus::Success {
                    stack.extend(steps.iter().filter(|s| s.parent_id == Some(id)).map(|s| s.id));
                    continue;
                }
                reset += 1;
                let mut doomed: Vec<i64> = Vec::new();
                let mut frontier = vec![id];
                while let Some(p) = frontier.pop() {
                    for c in steps.iter().filter(|s| s.parent_id == Some(p)) {
                        doomed.push(c.id);
                        frontier.push(c.id);
                    }
                }
                for d in doomed.iter().rev() {
                    tx.execute("DELETE FROM step_log_chunks WHERE step_id = ?1", [d]).map_err(q("drop step logs"))?;
                    tx.execute("UPDATE properties SET step_id = NULL WHERE step_id = ?1", [d]).map_err(q("detach properties"))?;
                    tx.execute("DELETE FROM steps WHERE id = ?1", [d]).map_err(q("drop step"))?;
                }
                tx.execute(
                    "UPDATE steps SET status = ?2, exit_status = NULL, message = NULL, child_strategy = NULL, started_at = NULL, finished_at = NULL WHERE id = ?1",
                    params![id, StepStatus::Pending],
                )
                .map_err(q("reset step"))?;
            }
            tx.execute("UPDATE changes SET status = ?2, cancel_requested = 0, reason = NULL, finished_at = NULL WHERE id = ?1", params![change_id, ChangeStatus::Pending])
                .map_err(q("reset change"))?;
            Ok(reset)
        })
    }

    /// Ends a change whose controller is gone: pending, queued and running steps become
    /// `cancelled`, and so does the change.
    pub fn cancel_orphaned(&self, change_id: i64) -> Result<(), StoreError> {
        self.write(move |tx| cancel_steps_and_change(tx, change_id))
    }
}

/// Turns a change's pending, queued and running steps `cancelled`, and the change.
fn cancel_steps_and_change(tx: &rusqlite::Connection, change_id: i64) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE steps SET status = ?2, finished_at = strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE change_id = ?1 AND status IN (?3, ?4, ?5)",
        params![change_id, StepStatus::Cancelled, StepStatus::Pending, StepStatus::Queued, StepStatus::Running],
    )
    .map_err(q("cancel steps"))?;
    tx.execute("UPDATE changes SET status = ?2, finished_at = strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE id = ?1", params![change_id, ChangeStatus::Cancelled])
        .map_err(q("cancel change"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{end, setup};
    use super::*;
    use serde_json::json;

    #[test]
    fn retry_resets_what_did_not_succeed_and_drops_its_descendants() {
        let (_dir, store, p, e, c) = setup();
        let root = store.steps(c).unwrap()[0].id;
        store.start_step(root, p, e).unwrap();
        store.finish_step(root, p, e, end(json!([]), json!([]), &["ok", "bad"])).unwrap();
        let steps = store.steps(c).unwrap();
        let (ok, bad) = (steps[1].id, steps[2].id);
        store.start_step(ok, p, e).unwrap();
        store.finish_step(ok, p, e, end(json!([]), json!([]), &[])).unwrap();
        store.start_step(bad, p, e).unwrap();
        store.finish_step(bad, p, e, end(json!([]), json!([]), &["grandchild"])).unwrap();
        store.set_step_status(bad, StepStatus::Running, None).unwrap();
        assert_eq!(store.reset_for_retry(c).unwrap(), 1);
        let steps = store.steps(c).unwrap();
        assert_eq!(steps.len(), 3, "the grandchild of the reset step is gone");
        assert_eq!(steps.iter().find(|s| s.id == ok).unwrap().status, StepStatus::Success);
        assert_eq!(steps.iter().find(|s| s.id == bad).unwrap().status, StepStatus::Pending);
        assert_eq!(store.change(c).unwrap().status, ChangeStatus::Pending);
    }

    #[test]
    fn a_change_is_alive_while_its_lock_is_held_and_a_lost_one_is_recorded_once() {
        let (dir, store, p, e, _) = setup();
        let new = NewChangeRow {
            project_id: p,
            environment_id: e,
            action: "root",
            repo: dir.path(),
            git_rev: "HEAD",
            commit: "0000",
            backend: BackendKind::Process,
            secret_set: None,
            folder: ".opschain",
            metadata: None,
        };
        let (id, lock) = store.create_change(&new).unwrap();
        assert!(store.controller_alive(id).unwrap(), "the creator holds the new change's lock");
        assert!(store.lock_change(id).unwrap().is_none());
        assert_eq!(store.try_start_change(id, 1).unwrap(), Start::Started);
        let root = store.steps(id).unwrap()[0].id;
        store.start_step(root, p, e).unwrap();
        drop(lock);
        // Its controller is gone (PID 1 is alive, but liveness never looks at the process id).
        assert!(!store.controller_alive(id).unwrap());
        let lock = store.lock_change(id).unwrap().unwrap();
        assert_eq!(store.record_lost(&lock).unwrap(), Lost::Recorded(ChangeStatus::Error));
        assert_eq!(store.record_lost(&lock).unwrap(), Lost::Ended);
        let change = store.change(id).unwrap();
        assert_eq!((change.status, change.reason.as_deref()), (ChangeStatus::Error, Some(LOST_REASON)));
        let step = &store.steps(id).unwrap()[0];
        assert_eq!((step.status, step.message.as_deref()), (StepStatus::Error, Some(LOST_STEP)));
    }

    #[test]
    fn a_cancel_between_create_and_start_is_kept_and_the_change_does_not_start() {
        let (_dir, store, _p, _e, c) = setup();
        store.request_cancel(c).unwrap();
        assert_eq!(store.try_start_change(c, 4242).unwrap(), Start::Cancelled);
        let change = store.change(c).unwrap();
        assert!(change.cancel_requested, "the cancel flag survives the start");
        assert_eq!(change.status, ChangeStatus::Cancelled);
        assert!(store.steps(c).unwrap().iter().all(|s| s.status == StepStatus::Cancelled));
        // A change already recorded cancelled (no controller was there to ask) does not start either.
        let (_dir, store, _p, _e, c) = setup();
        store.cancel_orphaned(c).unwrap();
        assert_eq!(store.try_start_change(c, 4242).unwrap(), Start::Cancelled);
        assert_eq!(store.change(c).unwrap().status, ChangeStatus::Cancelled);
    }
}
