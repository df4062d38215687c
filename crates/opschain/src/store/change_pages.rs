//! What the API reads and writes of changes beyond the controller's own use: a change created by
//! a user (who, with what metadata, from which git remote), pages of changes filtered and sorted
//! in SQL (never the whole table read), and their cancel and retry recorded in the audit trail.

use std::path::PathBuf;

use rusqlite::params;
use serde_json::{Map, Value};

use super::events::{record, NewEvent};
use super::{q, NewChangeRow, Store, StoreError};
use crate::liveness::ChangeLock;
use crate::status::{BackendKind, ChangeStatus, StepStatus};

/// A change as the API shows it.
#[derive(Debug, Clone)]
pub struct ChangeSummary {
    /// The change id.
    pub id: i64,
    /// The project code.
    pub project_code: String,
    /// The environment code.
    pub environment_code: String,
    /// The root step's action.
    pub action: String,
    /// The git remote it was created from (`None`: created from a directory by the CLI).
    pub git_remote_name: Option<String>,
    /// The revision as given.
    pub git_rev: String,
    /// The commit the revision resolved to.
    pub commit_sha: String,
    /// What its creator said of it (a JSON object; empty when nothing).
    pub metadata: Map<String, Value>,
    /// The status.
    pub status: ChangeStatus,
    /// The user who created it (`None`: created by the CLI in local mode).
    pub created_by: Option<String>,
    /// When it was created.
    pub created_at: String,
    /// When it last started running.
    pub started_at: Option<String>,
    /// When it ended.
    pub finished_at: Option<String>,
    /// Where its steps run.
    pub backend: BackendKind,
    /// The repository its steps are checked out from.
    pub repo: PathBuf,
}

/// How [`Store::change_page`] sorts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChangeSort {
    /// Oldest first (by id).
    #[default]
    Oldest,
    /// Newest first (by id).
    Newest,
}

/// Which changes [`Store::change_page`] returns.
#[derive(Debug, Clone, Default)]
pub struct ChangeFilter {
    /// Only this status.
    pub status: Option<ChangeStatus>,
    /// Only this project's.
    pub project_code: Option<String>,
    /// Only this environment's (of any project unless `project_code` is given).
    pub environment_code: Option<String>,
    /// Only changes after this id in the sort order (the cursor of the next page).
    pub cursor: Option<i64>,
    /// Only changes whose id, action, creator, revision, commit, metadata, project or
    /// environment contains this text, in any case (`None`: every change).
    pub text: Option<String>,
}

/// What a user's change records beyond [`NewChangeRow`].
#[derive(Debug, Clone, Copy)]
pub struct ChangeAuthor<'a> {
    /// The user.
    pub created_by: &'a str,
    /// What they said of it.
    pub metadata: &'a Map<String, Value>,
    /// The git remote it comes from.
    pub git_remote_name: Option<&'a str>,
}

/// The columns [`summary_row`] reads.
const SUMMARY_COLUMNS: &str = "c.id, p.code, e.code, c.action, c.git_remote_name, c.git_rev, c.commit_sha, c.metadata, c.status, c.created_by, c.created_at,
    c.started_at, c.finished_at, c.backend, c.repo";

/// Reads a [`SUMMARY_COLUMNS`] row.
fn summary_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ChangeSummary> {
    let metadata: Option<String> = r.get(7)?;
    Ok(ChangeSummary {
        id: r.get(0)?,
        project_code: r.get(1)?,
        environment_code: r.get(2)?,
        action: r.get(3)?,
        git_remote_name: r.get(4)?,
        git_rev: r.get(5)?,
        commit_sha: r.get(6)?,
        metadata: metadata.and_then(|m| serde_json::from_str(&m).ok()).unwrap_or_default(),
        status: r.get(8)?,
        created_by: r.get(9)?,
        created_at: r.get(10)?,
        started_at: r.get(11)?,
        finished_at: r.get(12)?,
        backend: r.get(13)?,
        repo: PathBuf::from(r.get::<_, String>(14)?),
    })
}

impl Store {
    /// Creates a change (status `pending`) with its root step for a user, and records the event,
    /// in one write; returns the change id.
    pub fn create_change_by(&self, new: &NewChangeRow<'_>, author: ChangeAuthor<'_>) -> Result<(i64, ChangeLock), StoreError> {
        let locks = self.locks.clone();
        let NewChangeRow { project_id, environment_id, backend, .. } = *new;
        let (action, repo, git_rev) = (new.action.to_string(), new.repo.to_string_lossy().into_owned(), new.git_rev.to_string());
        let (commit, secret_set, folder) = (new.commit.to_string(), new.secret_set.map(str::to_string), new.folder.to_string());
        let (by, metadata, remote) = (author.created_by.to_string(), Value::Object(author.metadata.clone()).to_string(), author.git_remote_name.map(str::to_string));
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO changes (project_id, environment_id, action, repo, git_rev, commit_sha, backend, secret_set, status, folder, created_by, metadata, git_remote_name)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                params![project_id, environment_id, action, repo, git_rev, commit, backend, secret_set, ChangeStatus::Pending, folder, by, metadata, remote],
            )
            .map_err(q("create change"))?;
            let id = tx.last_insert_rowid();
            tx.execute("INSERT INTO steps (change_id, parent_id, position, action, status) VALUES (?1, NULL, 0, ?2, ?3)", params![id, action, StepStatus::Pending])
                .map_err(q("create root step"))?;
            let detail = serde_json::json!({"action": action, "git_rev": git_rev, "commit_sha": commit});
            record(tx, &NewEvent { username: Some(&by), kind: "change.create", target: Some(&format!("change/{id}")), detail })?;
            // Taken before the change is committed, as `create_change` does: no other command
            // ever sees the new change without a live controller.
            let lock = ChangeLock::take(&locks, id)?.ok_or(StoreError::Locked(id))?;
            Ok((id, lock))
        })
    }

    /// A change as the API shows it.
    pub fn change_summary(&self, change_id: i64) -> Result<ChangeSummary, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {SUMMARY_COLUMNS} FROM changes c JOIN projects p ON p.id = c.project_id JOIN environments e ON e.id = c.environment_id WHERE c.id = ?1"
            ))
            .map_err(q("read change"))?;
        match stmt.query_row([change_id], summary_row) {
            Err(rusqlite::Error::QueryReturnedNoRows) => Err(StoreError::NotFound(format!("change {change_id}"))),
            other => other.map_err(q("read change")),
        }
    }

    /// Up to `limit` changes matching `filter`, in `sort` order, after skipping `offset` of them.
    /// (No total is counted: on a large store, counting every match would cost more than the
    /// page; the cursor of the next page is the last id of this one.)
    pub fn change_page(&self, filter: &ChangeFilter, sort: ChangeSort, limit: usize, offset: usize) -> Result<Vec<ChangeSummary>, StoreError> {
        let conn = self.conn();
        let (cursor_op, order) = match sort {
            ChangeSort::Oldest => (">", "ASC"),
            ChangeSort::Newest => ("<", "DESC"),
        };
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {SUMMARY_COLUMNS} FROM changes c JOIN projects p ON p.id = c.project_id JOIN environments e ON e.id = c.environment_id
                 WHERE (?1 IS NULL OR c.status = ?1) AND (?2 IS NULL OR p.code = ?2) AND (?3 IS NULL OR e.code = ?3) AND (?4 IS NULL OR c.id {cursor_op} ?4)
                 AND (?7 IS NULL OR instr(lower(c.id || ' ' || c.action || ' ' || ifnull(c.created_by, '') || ' ' || c.git_rev || ' ' || c.commit_sha || ' '
                     || ifnull(c.metadata, '') || ' ' || p.code || ' ' || e.code), lower(?7)) > 0)
                 ORDER BY c.id {order} LIMIT ?5 OFFSET ?6"
            ))
            .map_err(q("list changes"))?;
        let status = filter.status.map(ChangeStatus::as_str);
        let rows = stmt
            .query_map(params![status, filter.project_code, filter.environment_code, filter.cursor, limit as i64, offset as i64, filter.text], summary_row)
            .map_err(q("list changes"))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(q("list changes"))
    }

    /// Records that `by` asked for something of change `change_id` (`kind`: `change.cancel`,
    /// `change.retry`).
    pub fn record_change_event(&self, change_id: i64, kind: &str, by: &str) -> Result<(), StoreError> {
        self.record_event(&NewEvent { username: Some(by), kind, target: Some(&format!("change/{change_id}")), detail: serde_json::json!({}) })
    }

    /// The changes a server must pick up when it starts or is told of new work: `pending` and
    /// `queued` ones, oldest first, with their environment's id.
    pub fn waiting_changes(&self) -> Result<Vec<(i64, i64)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT id, environment_id FROM changes WHERE status IN (?1, ?2) ORDER BY id").map_err(q("list waiting changes"))?;
        let rows = stmt.query_map(params![ChangeStatus::Pending, ChangeStatus::Queued], |r| Ok((r.get(0)?, r.get(1)?))).map_err(q("list waiting changes"))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(q("list waiting changes"))
    }

    /// The changes recorded `running`, with the process id of their controller.
    pub fn running_changes(&self) -> Result<Vec<(i64, Option<i64>)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT id, controller_pid FROM changes WHERE status = ?1 ORDER BY id").map_err(q("list running changes"))?;
        let rows = stmt.query_map([ChangeStatus::Running], |r| Ok((r.get(0)?, r.get(1)?))).map_err(q("list running changes"))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(q("list running changes"))
    }
}
