//! The embedded store: one SQLite file (`opschain.db`) under the state directory, in WAL mode with
//! `synchronous = FULL`, so that every committed transaction survives a kill -9 of the controller
//! (and a power loss: each commit fsyncs the WAL).
//!
//! Group commit. Every write goes to one writer thread, which owns the writing connection: it
//! takes every write queued since its last commit (up to [`MAX_GROUP`]), runs each in its own
//! savepoint of ONE transaction, commits it (one fsync for the whole group), and only then
//! answers each waiting caller. A write that fails rolls back its own savepoint only; its caller
//! gets the error, the others of the group are committed. So a write has exactly the durability
//! it had as its own transaction (a call that returned has been committed and fsynced), while a
//! thousand parallel steps share fsyncs instead of queueing one behind the other for each state
//! change and log line. Reads use a second connection (WAL readers see the last commit and never
//! wait for a writer's fsync).
//!
//! Log lines ([`Store::append_log`]) are the one write nobody waits for, and they are stored in
//! chunks, not a row per line (a row per line cannot keep up with a step printing a million
//! lines): a step's lines gather in memory until the writer takes them, all at once, as one
//! `step_log_chunks` row, with the next group, which starts as soon as the previous commit ends
//! (no timer). So a quiet step gets a chunk per line, and a flood a chunk per commit. A step's
//! lines are queued before its end ([`Store::finish_step`]), and a group commits its writes in
//! queue order, so a finished step's lines are committed no later than its end state. A kill -9
//! of the controller loses, of a step still running, only the lines gathered after the last
//! commit began (the lines of at most one commit's fsync, a few milliseconds), as it always lost
//! the output the agent had written but the controller not yet read. At most [`LOG_BACKLOG`]
//! bytes wait: beyond, the step's output waits for the disk; no line is ever dropped.
//!
//! Tables: `projects`, `environments`, `properties` (every version of every level kept: level,
//! owner, version, the step that wrote it, created_at, and what the version is: see below),
//! `secret_sets`, `changes`, `steps` (a
//! tree through `parent_id`, with status, timings, exit status and the property versions the step
//! started from) and `step_log_chunks` (a step's log lines, each `<stream>\t<line>\n`, in chunks;
//! deflated when that makes them smaller).
//! Timestamps are UTC ISO 8601 strings made by SQLite itself.
//!
//! Every step status transition is its own write (savepoint); the end of a step (its property
//! diffs, its status and its children) is ONE write, so a diff is applied exactly once or not at all.
//!
//! Properties versions are stored as what changed. A version's row holds `patch`, the RFC 6902
//! patch from the version before it (a step's diff as applied, or the diff of a user's edit), and
//! some rows also hold `json`, the whole document: a snapshot. Version 0 is one, and a new version
//! is one when [`SNAPSHOT_EVERY`] patches have been stored since the last, or when those patches
//! add up to more than half the document's size ([`SNAPSHOT_FRACTION`]): so a change of 200 steps
//! on a 1.3 MB document stores about the sum of its patches and two snapshots, not 200 copies, and
//! reading any version is one snapshot and at most [`SNAPSHOT_EVERY`] patches away. A database
//! from before patches (its `properties.json` NOT NULL, no `patch`) is migrated in place when
//! opened: its rows are kept as they are, snapshots all.
//!
//! The current version of each level is also kept in memory, as text shared by every step that
//! starts on it ([`crate::properties::splice::Document`]); a step's patch is spliced into it
//! ([`crate::properties::splice::Document::patch`]) rather than applied to a parsed tree. The writer thread stages
//! the versions it writes and publishes them once their group has committed; every use checks the
//! cached version against the database's latest, so another process's write is never missed.

//!
//! One file per concept: this one holds the [`Store`] itself, [`Store::open`] and [`StoreError`];
//! `writer` the group-commit writer thread; `schema.sql` the schema; `projects`, `changes`,
//! `steps`, `properties` (versions, patches, snapshots and the in-memory cache), `logs` (chunks)
//! and `secrets` what the store keeps of each.

mod writer;
mod projects;
mod changes;
mod steps;
mod properties;
mod logs;
mod secrets;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::Connection;
use serde_json::{Map, Value};

use super::private;
use crate::properties::splice;

pub use changes::{pid_alive, ChangeRow, Claim, NewChangeRow};
pub use logs::{LogLine, LogLines, LOG_BACKLOG};
pub use projects::{EnvironmentRow, ProjectRow};
pub use properties::{Level, PropertiesVersion, SNAPSHOT_EVERY, SNAPSHOT_FRACTION};
pub use steps::{StartingProperties, StepEnd, StepRow};
pub use writer::MAX_GROUP;

use logs::{LogBacklog, MIGRATE_LOG_ROWS};
use properties::{migrate_properties, PropertiesCache};
use writer::Writer;

/// The file name of the database inside the state directory.
pub const DB_FILE: &str = "opschain.db";

/// How long a writer waits for another process's lock before failing (default 30 s).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The schema, created when absent.
const SCHEMA: &str = include_str!("schema.sql");

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be opened or its schema created.
    #[error("cannot open the store {}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// A query failed.
    #[error("store operation {op:?} failed")]
    Query {
        /// The operation.
        op: &'static str,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// A stored JSON document is not valid (the database was edited by hand).
    #[error("stored JSON of {what} is invalid")]
    Json {
        /// What the document is.
        what: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A stored properties patch does not apply to the version before it (the database was
    /// edited by hand).
    #[error("stored patch of {what} does not apply")]
    StoredPatch {
        /// The version.
        what: String,
        /// The cause.
        #[source]
        source: json_patch::PatchError,
    },
    /// A stored properties document is not a JSON object (the database was edited by hand).
    #[error("stored {what} is not a properties document")]
    StoredDocument {
        /// The version.
        what: String,
        /// The cause.
        #[source]
        source: splice::SpliceError,
    },
    /// A stored log chunk cannot be inflated (the database was edited by hand or damaged).
    #[error("stored log chunk {chunk} is damaged")]
    LogChunk {
        /// The chunk's id.
        chunk: i64,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No such project, environment, change or secret set.
    #[error("{0} not found")]
    NotFound(String),
    /// The group of writes this write was committed with could not be begun or committed (or a
    /// failure of another write of the group rolled the whole transaction back): nothing of the
    /// group was stored.
    #[error("store commit of a group of writes failed")]
    Group {
        /// The cause, shared by every write of the group.
        #[source]
        source: Arc<rusqlite::Error>,
    },
    /// The state directory or the database cannot be made private to this user.
    #[error(transparent)]
    Private(#[from] private::PrivateError),
    /// The writer thread cannot be started.
    #[error("cannot start the store's writer thread")]
    Writer {
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The writer thread is gone (it panicked): nothing can be written.
    #[error("the store's writer thread is gone")]
    WriterGone,
}

fn q(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Query { op, source }
}

/// The store, shared by the scheduler's threads: a reading connection, and the queue of the
/// writer thread that owns the writing connection (see the module documentation).
pub struct Store {
    read: Mutex<Connection>,
    cache: Arc<PropertiesCache>,
    writer: Writer,
    path: PathBuf,
    /// Log lines waiting for the writer, per step.
    logs: Arc<LogBacklog>,
}

fn json_of(text: &str, what: impl FnOnce() -> String) -> Result<Map<String, Value>, StoreError> {
    serde_json::from_str(text).map_err(|source| StoreError::Json { what: what(), source })
}

impl Store {
    /// Opens (creating when needed) `<state_dir>/opschain.db`.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join(DB_FILE);
        // Private from the moment they exist: the directory 0700, the database 0600 before SQLite
        // opens it (its -wal and -shm files take the database's mode).
        private::state_dir(state_dir, &path)?;
        private::private_file(&path)?;
        let open_err = |source| StoreError::Open { path: path.clone(), source };
        // The writing connection sets the database up. Another process may be doing the same
        // (a `change show` polling a change that is being created): switching a new database to
        // WAL, or a schema statement upgrading its read to a write, can then fail with
        // SQLITE_BUSY without SQLite's busy handler ever waiting, so the whole setup is retried,
        // and the schema is created in an IMMEDIATE transaction (which does wait).
        let conn = retry_busy(|| {
            let conn = Connection::open(&path)?;
            conn.busy_timeout(BUSY_TIMEOUT)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.pragma_update(None, "foreign_keys", "ON")?;
            conn.execute_batch(&format!("BEGIN IMMEDIATE; {SCHEMA}"))?;
            let old_logs: bool = conn.query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'step_logs'", [], |r| r.get(0))?;
            if old_logs {
                conn.execute_batch(MIGRATE_LOG_ROWS)?;
            }
            conn.execute_batch("COMMIT")?;
            migrate_properties(&conn)?;
            Ok(conn)
        })
        .map_err(open_err)?;
        // The reading connection finds the database set up (WAL is a property of the file).
        let read = retry_busy(|| {
            let read = Connection::open(&path)?;
            read.busy_timeout(BUSY_TIMEOUT)?;
            Ok(read)
        })
        .map_err(open_err)?;
        let writer = Writer::start(conn).map_err(|source| StoreError::Writer { source })?;
        Ok(Store { read: Mutex::new(read), cache: Arc::default(), writer, path, logs: Arc::default() })
    }

    /// Queues `f` for the writer thread and waits until the group it joined has committed:
    /// returns `f`'s result once it is durable, `f`'s own error (its savepoint rolled back), or
    /// the group's error (nothing of the group was stored).
    fn write<T: Send + 'static>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static) -> Result<T, StoreError> {
        self.write_then(f, |_| ())
    }

    /// [`Store::write`], and `then`, on the writer thread once the group's fate is known and
    /// before the next group runs: with true when `f` succeeded and its group committed.
    fn write_then<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        then: impl FnOnce(bool) + Send + 'static,
    ) -> Result<T, StoreError> {
        self.writer.write_then(f, then)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The reading connection.
    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.read.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs `sql` with `params` through the connection's statement cache (the statements of every
/// step's start and end are parsed once, not once a step).
fn exec_cached(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// Runs `f` again while it fails with SQLITE_BUSY, for up to [`BUSY_TIMEOUT`], 10 ms apart.
fn retry_busy<T>(mut f: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match f() {
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DatabaseBusy && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// `e` and its causes, joined with ": ".
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::status::{BackendKind, ChangeStatus, StepStatus};
    use crate::mask::Masker;
    use rusqlite::params;
    use serde_json::json;

    fn patch(v: Value) -> json_patch::Patch {
        serde_json::from_value(v).unwrap()
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn setup() -> (tempfile::TempDir, Store, i64, i64, i64) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let p = store.ensure_project("p").unwrap();
        let e = store.ensure_environment(p, "dev").unwrap();
        let c = store
            .create_change(&NewChangeRow {
                project_id: p,
                environment_id: e,
                action: "root",
                repo: dir.path(),
                git_rev: "HEAD",
                commit: "0000",
                backend: BackendKind::Process,
                secret_set: None,
            })
            .unwrap();
        (dir, store, p, e, c)
    }

    fn end(project: Value, environment: Value, children: &[&str]) -> StepEnd {
        StepEnd {
            status: StepStatus::Success,
            exit_status: Some(0),
            message: None,
            project_diff: patch(project),
            environment_diff: patch(environment),
            children: children.iter().map(|c| c.to_string()).collect(),
            child_strategy: Some("parallel".into()),
            mask: Masker::default(),
        }
    }

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

    /// The number of rows of a level's versions that hold the whole document, and the bytes of
    /// the documents and patches stored.
    fn stored(store: &Store, level: Level, owner: i64) -> (i64, i64, i64) {
        store
            .conn()
            .query_row(
                "SELECT COUNT(json), COALESCE(SUM(LENGTH(json)), 0), COALESCE(SUM(LENGTH(patch)), 0) FROM properties WHERE level = ?1 AND owner_id = ?2",
                params![level, owner],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap()
    }

    #[test]
    fn versions_are_stored_as_patches_with_a_few_snapshots_and_every_version_reads_back() {
        let (_dir, store, p, e, c) = setup();
        let servers: Map<String, Value> = (0..2000).map(|i| (format!("srv-{i:05}"), json!({"ip": format!("10.0.{}.{}", i / 256, i % 256), "roles": ["web"]}))).collect();
        let mut expected = vec![Map::new(), obj(json!({"servers": servers, "deployed": {}}))];
        store.set_properties(Level::Project, p, &expected[1]).unwrap();
        let document = Value::Object(expected[1].clone()).to_string().len() as i64;
        let root = store.steps(c).unwrap()[0].id;
        store.start_step(root, p, e).unwrap();
        let children: Vec<String> = (0..250).map(|i| format!("set{i}")).collect();
        let names: Vec<&str> = children.iter().map(String::as_str).collect();
        store.finish_step(root, p, e, end(json!([]), json!([]), &names)).unwrap();
        let steps = store.steps(c).unwrap();
        for (i, step) in steps.iter().skip(1).enumerate() {
            store.start_step(step.id, p, e).unwrap();
            // Most add a key; some replace one, remove one, or touch the large member.
            let diff = match i % 10 {
                3 if i > 10 => json!([{"op": "replace", "path": format!("/deployed/k{}", i - 1), "value": {"again": i}}]),
                7 if i > 10 => json!([{"op": "remove", "path": format!("/deployed/k{}", i - 3)}]),
                9 => json!([{"op": "replace", "path": format!("/servers/srv-{i:05}/roles/0"), "value": "db"}]),
                _ => json!([{"op": "add", "path": format!("/deployed/k{i}"), "value": i}]),
            };
            let mut next = Value::Object(expected.last().unwrap().clone());
            json_patch::patch(&mut next, &patch(diff.clone())).unwrap();
            expected.push(next.as_object().unwrap().clone());
            assert_eq!(store.finish_step(step.id, p, e, end(diff, json!([]), &[])).unwrap().0, StepStatus::Success);
        }
        let latest = store.properties(Level::Project, p).unwrap();
        assert_eq!(latest.version, 251);
        assert_eq!(&latest.json, expected.last().unwrap());
        // Every version reads back, one by one and as the history.
        for v in [0, 1, 2, 57, 99, 100, 101, 150, 199, 200, 201, 251] {
            assert_eq!(store.properties_version(Level::Project, p, v).unwrap(), expected[v as usize], "version {v}");
        }
        let history = store.properties_history(Level::Project, p).unwrap();
        assert_eq!(history.len(), expected.len());
        for (got, want) in history.iter().zip(&expected) {
            assert_eq!(&got.json, want, "version {}", got.version);
        }
        // Stored: version 0, the user's document and a snapshot each 100 patches, the rest patches.
        let (snapshots, snapshot_bytes, patch_bytes) = stored(&store, Level::Project, p);
        assert!(snapshots <= 5, "{snapshots} snapshots");
        assert!(snapshot_bytes < 5 * document, "{snapshot_bytes} bytes of snapshots for a {document}-byte document");
        assert!(patch_bytes < 250 * 120, "{patch_bytes} bytes of patches");
        // A store opened afresh (nothing cached) reads the same.
        let again = Store::open(_dir.path()).unwrap();
        assert_eq!(&again.properties(Level::Project, p).unwrap().json, expected.last().unwrap());
    }

    #[test]
    fn a_version_written_by_another_process_is_seen_and_built_on() {
        let (dir, store, p, e, c) = setup();
        let root = store.steps(c).unwrap()[0].id;
        store.set_properties(Level::Project, p, &obj(json!({"a": 1}))).unwrap();
        let start = store.start_step(root, p, e).unwrap();
        assert_eq!(&*start.project, r#"{"a":1}"#);
        // Another store on the same database (another `opschain` process) writes a version.
        let other = Store::open(dir.path()).unwrap();
        other.set_properties(Level::Project, p, &obj(json!({"a": 1, "b": 2}))).unwrap();
        assert_eq!(store.properties(Level::Project, p).unwrap().json, obj(json!({"a": 1, "b": 2})));
        store.finish_step(root, p, e, end(json!([{"op": "add", "path": "/c", "value": 3}]), json!([]), &[])).unwrap();
        assert_eq!(other.properties(Level::Project, p).unwrap().json, obj(json!({"a": 1, "b": 2, "c": 3})));
        assert_eq!(other.properties(Level::Project, p).unwrap().version, 3);
    }

    #[test]
    fn a_database_from_before_patches_is_migrated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
            let old = SCHEMA.replace("    json TEXT,\n    patch TEXT,", "    json TEXT NOT NULL,").replace("    CHECK (json IS NOT NULL OR patch IS NOT NULL),\n", "");
            assert!(!old.contains("patch"), "the old schema has no patch column");
            conn.execute_batch(&old).unwrap();
            conn.execute_batch(
                "INSERT INTO projects (code) VALUES ('p');
                 INSERT INTO properties (level, owner_id, version, json) VALUES ('project', 1, 0, '{}'), ('project', 1, 1, '{\"a\":1}');",
            )
            .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let p = store.ensure_project("p").unwrap();
        assert_eq!(store.properties(Level::Project, p).unwrap().json, obj(json!({"a": 1})));
        store.set_properties(Level::Project, p, &obj(json!({"a": 1, "b": 2}))).unwrap();
        assert_eq!(store.properties_version(Level::Project, p, 1).unwrap(), obj(json!({"a": 1})));
        assert_eq!(store.properties_history(Level::Project, p).unwrap().len(), 3);
        drop(store);
        // Opening it again finds it migrated.
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.properties(Level::Project, p).unwrap().json, obj(json!({"a": 1, "b": 2})));
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
    fn concurrent_writers_share_commits_and_lose_nothing() {
        let (_dir, store, p, e, c) = setup();
        let root = store.steps(c).unwrap()[0].id;
        store.start_step(root, p, e).unwrap();
        let children: Vec<String> = (0..40).map(|i| format!("child{i}")).collect();
        let children: Vec<&str> = children.iter().map(String::as_str).collect();
        store.finish_step(root, p, e, end(json!([]), json!([]), &children)).unwrap();
        let ids: Vec<i64> = store.steps(c).unwrap().iter().skip(1).map(|s| s.id).collect();
        store.mark_queued(&ids).unwrap();
        std::thread::scope(|s| {
            for (n, id) in ids.iter().enumerate() {
                let store = &store;
                s.spawn(move || {
                    store.start_step(*id, p, e).unwrap();
                    for line in 0..50 {
                        store.append_log(*id, "stdout", &format!("line {line}"));
                    }
                    let diff = json!([{"op": "add", "path": format!("/k{n}"), "value": n}]);
                    assert_eq!(store.finish_step(*id, p, e, end(diff, json!([]), &[])).unwrap().0, StepStatus::Success);
                });
            }
        });
        // Every diff applied once, on top of the others (a version per step), and every line of
        // every finished step stored, in its order.
        let project = store.properties(Level::Project, p).unwrap();
        assert_eq!(project.version, 40);
        assert_eq!(project.json.len(), 40);
        let logs = store.logs(c).unwrap();
        assert_eq!(logs.len(), 40 * 50);
        for id in &ids {
            let mine: Vec<String> = logs.iter().filter(|l| l.step_id == *id).map(|l| l.line.clone()).collect();
            assert_eq!(mine, (0..50).map(|i| format!("line {i}")).collect::<Vec<_>>());
        }
        assert!(store.steps(c).unwrap().iter().all(|s| s.status == StepStatus::Success));
    }

    #[test]
    fn a_flood_of_lines_is_stored_in_few_chunks_each_line_once_in_order_and_followable() {
        let (_dir, store, _p, _e, c) = setup();
        let step = store.steps(c).unwrap()[0].id;
        let mut seen = Vec::new();
        let mut after = 0;
        for batch in 0..4 {
            for n in 0..50_000 {
                let stream = if n % 7 == 0 { "stderr" } else { "stdout" };
                store.append_log(step, stream, &format!("{batch} {n}\twith a tab"));
            }
            // A write others wait for commits every line queued before it.
            store.mark_queued(&[]).unwrap();
            after = store.logs_after(c, after, |l| seen.push((l.stream.clone(), l.line.clone()))).unwrap();
            assert_eq!(seen.len(), (batch + 1) * 50_000, "a follower sees every line committed, once");
        }
        let expected: Vec<(String, String)> =
            (0..4).flat_map(|b| (0..50_000).map(move |n| ((if n % 7 == 0 { "stderr" } else { "stdout" }).to_string(), format!("{b} {n}\twith a tab")))).collect();
        assert!(seen == expected, "lines lost, repeated or out of order");
        let chunks: i64 = store.conn().query_row("SELECT count(*) FROM step_log_chunks", [], |r| r.get(0)).unwrap();
        assert!(chunks < 1000, "{chunks} chunks for 200,000 lines");
        assert_eq!(store.logs_after(c, after, |_| panic!("nothing new")).unwrap(), after);
    }

    #[test]
    fn the_line_per_row_logs_of_an_older_store_are_kept_in_order() {
        let (dir, store, _p, _e, c) = setup();
        let step = store.steps(c).unwrap()[0].id;
        drop(store);
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.execute_batch(
            "CREATE TABLE step_logs (id INTEGER PRIMARY KEY, step_id INTEGER NOT NULL REFERENCES steps(id), stream TEXT NOT NULL,
                 line TEXT NOT NULL, at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')));",
        )
        .unwrap();
        for (stream, line) in [("stdout", "one"), ("stderr", "two"), ("stdout", ""), ("stdout", "four")] {
            conn.execute("INSERT INTO step_logs (step_id, stream, line) VALUES (?1, ?2, ?3)", params![step, stream, line]).unwrap();
        }
        drop(conn);
        let store = Store::open(dir.path()).unwrap();
        store.append_log(step, "stdout", "five");
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let lines: Vec<(String, String)> = store.logs(c).unwrap().into_iter().map(|l| (l.stream, l.line)).collect();
        let expected = [("stdout", "one"), ("stderr", "two"), ("stdout", ""), ("stdout", "four"), ("stdout", "five")];
        assert_eq!(lines, expected.map(|(s, l)| (s.to_string(), l.to_string())));
        let old: i64 = store.conn().query_row("SELECT count(*) FROM sqlite_master WHERE name = 'step_logs'", [], |r| r.get(0)).unwrap();
        assert_eq!(old, 0);
    }
}
