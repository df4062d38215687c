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
//! starts on it ([`splice::Document`]); a step's patch is spliced into it
//! ([`splice::Document::patch`]) rather than applied to a parsed tree. The writer thread stages
//! the versions it writes and publishes them once their group has committed; every use checks the
//! cached version against the database's latest, so another process's write is never missed.

use std::path::{Path, PathBuf};
use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{Map, Value};

use super::patch::{self, Conflict};
use super::private;
use crate::mask::Masker;
use crate::properties::splice;
use super::status::{ChangeStatus, StepStatus};

/// The file name of the database inside the state directory.
pub const DB_FILE: &str = "opschain.db";

/// How long a writer waits for another process's lock before failing (default 30 s).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// A properties version is stored whole (a snapshot) when this many patches (100) have been
/// stored since the last snapshot: reading a version applies at most this many patches.
pub const SNAPSHOT_EVERY: usize = 100;

/// A properties version is stored whole when the patches since the last snapshot, its own
/// included, add up to more than the document's size divided by this (2): the snapshots then
/// take at most twice the space of the patches.
pub const SNAPSHOT_FRACTION: usize = 2;

/// The most writes one group commit takes (4096): bounds how long the writer holds SQLite's write
/// lock against other processes (a `change cancel`, another controller).
pub const MAX_GROUP: usize = 4096;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS projects (
    id INTEGER PRIMARY KEY,
    code TEXT NOT NULL UNIQUE,
    allow_parallel_changes INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);
CREATE TABLE IF NOT EXISTS environments (
    id INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL REFERENCES projects(id),
    code TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    UNIQUE (project_id, code)
);
CREATE TABLE IF NOT EXISTS properties (
    id INTEGER PRIMARY KEY,
    level TEXT NOT NULL CHECK (level IN ('project', 'environment')),
    owner_id INTEGER NOT NULL,
    version INTEGER NOT NULL,
    json TEXT,
    patch TEXT,
    step_id INTEGER REFERENCES steps(id),
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    CHECK (json IS NOT NULL OR patch IS NOT NULL),
    UNIQUE (level, owner_id, version)
);
CREATE TABLE IF NOT EXISTS secret_sets (
    name TEXT PRIMARY KEY,
    json TEXT NOT NULL,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);
-- The default build secret set exists from the start, empty, as OpsChain creates it at deployment.
INSERT OR IGNORE INTO secret_sets (name, json) VALUES ('opschain-build-env', '{}');
CREATE TABLE IF NOT EXISTS changes (
    id INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL REFERENCES projects(id),
    environment_id INTEGER NOT NULL REFERENCES environments(id),
    action TEXT NOT NULL,
    repo TEXT NOT NULL,
    git_rev TEXT NOT NULL,
    commit_sha TEXT NOT NULL,
    backend TEXT NOT NULL,
    secret_set TEXT,
    status TEXT NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    controller_pid INTEGER,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    started_at TEXT,
    finished_at TEXT
);
CREATE TABLE IF NOT EXISTS steps (
    id INTEGER PRIMARY KEY,
    change_id INTEGER NOT NULL REFERENCES changes(id),
    parent_id INTEGER REFERENCES steps(id),
    position INTEGER NOT NULL,
    action TEXT NOT NULL,
    status TEXT NOT NULL,
    child_strategy TEXT,
    exit_status INTEGER,
    message TEXT,
    project_version INTEGER,
    environment_version INTEGER,
    started_at TEXT,
    finished_at TEXT
);
CREATE INDEX IF NOT EXISTS steps_by_change ON steps (change_id, parent_id, position);
CREATE TABLE IF NOT EXISTS step_log_chunks (
    id INTEGER PRIMARY KEY,
    step_id INTEGER NOT NULL REFERENCES steps(id),
    lines INTEGER NOT NULL,
    data BLOB NOT NULL,
    deflated INTEGER NOT NULL DEFAULT 0,
    at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);
CREATE INDEX IF NOT EXISTS log_chunks_by_step ON step_log_chunks (step_id, id);
"#;

/// Moves the log lines of a store written by an older controller (`step_logs`, a row per line)
/// into chunks of one line each, in their order, and drops the old table. Run once, when the
/// store is opened; a no-op on a store without `step_logs`.
const MIGRATE_LOG_ROWS: &str = r#"
INSERT INTO step_log_chunks (step_id, lines, data, at)
    SELECT step_id, 1, CAST(stream || char(9) || line || char(10) AS BLOB), at FROM step_logs ORDER BY id;
DROP TABLE step_logs;
"#;

/// How many bytes of log lines may wait for the store's writer (16 MiB, over every step): once
/// that many are queued, [`Store::append_log`] waits for the writer to take them, so a log that
/// comes faster than the disk takes it slows its step down (back to the agent, which stops
/// reading its action's output) instead of growing the controller's memory or losing lines.
pub const LOG_BACKLOG: usize = 16 << 20;

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

/// A writable properties level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    /// A project's properties.
    Project,
    /// An environment's properties.
    Environment,
}

impl Level {
    /// The name stored in `properties.level`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Project => "project",
            Level::Environment => "environment",
        }
    }
}

/// One stored version of a level's properties.
#[derive(Debug, Clone)]
pub struct PropertiesVersion {
    /// The version number, 0 for the empty document made with the owner.
    pub version: i64,
    /// The document.
    pub json: Map<String, Value>,
    /// The step whose diff made this version; `None` for a user edit.
    pub step_id: Option<i64>,
    /// When it was written.
    pub created_at: String,
}

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
    /// The backend name.
    pub backend: String,
    /// The secret set the steps get, if any.
    pub secret_set: Option<String>,
    /// The change status.
    pub status: ChangeStatus,
    /// Whether `change cancel` was asked for.
    pub cancel_requested: bool,
    /// The process id of the controller running it.
    pub controller_pid: Option<i64>,
    /// When it was created.
    pub created_at: String,
    /// When it finished.
    pub finished_at: Option<String>,
}

/// A project, as `project list` shows it.
#[derive(Debug, Clone)]
pub struct ProjectRow {
    /// The project code.
    pub code: String,
    /// How many environments it has.
    pub environments: i64,
    /// How many changes it has had.
    pub changes: i64,
    /// Whether several of its changes may run at once in one environment.
    pub allow_parallel_changes: bool,
    /// When it was created.
    pub created_at: String,
}

/// An environment, as `environment list` shows it.
#[derive(Debug, Clone)]
pub struct EnvironmentRow {
    /// The environment code.
    pub code: String,
    /// How many changes it has had.
    pub changes: i64,
    /// When it was created.
    pub created_at: String,
}

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
}

/// Log lines gathered for [`Store::append_logs`], encoded as they are stored.
#[derive(Debug, Default)]
pub struct LogLines {
    /// `<stream>\t<line>\n` each.
    data: Vec<u8>,
    /// How many lines `data` holds.
    count: i64,
}

impl LogLines {
    /// Adds one line (without its newline) from `stream`.
    pub fn push(&mut self, stream: &str, line: &str) {
        self.data.reserve(stream.len() + line.len() + 2);
        self.data.extend_from_slice(stream.as_bytes());
        self.data.push(b'\t');
        self.data.extend_from_slice(line.as_bytes());
        self.data.push(b'\n');
        self.count += 1;
    }

    /// True when no line is gathered.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// One line of a step's log.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// The step.
    pub step_id: i64,
    /// The step's action.
    pub action: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// When it was recorded.
    pub at: String,
    /// The line.
    pub line: String,
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
}

/// The store, shared by the scheduler's threads: a reading connection, and the queue of the
/// writer thread that owns the writing connection (see the module documentation).
pub struct Store {
    read: Mutex<Connection>,
    cache: Arc<PropertiesCache>,
    writes: Option<Sender<Write>>,
    writer: Option<JoinHandle<()>>,
    path: PathBuf,
    /// Log lines waiting for the writer, per step.
    logs: Arc<LogBacklog>,
}

/// Log lines gathered for the writer: each step's lines not yet taken, and the room left.
#[derive(Default)]
struct LogBacklog {
    /// Per step, its encoded lines (`<stream>\t<line>\n` each) and how many there are. A step
    /// is present exactly while a write that will take its lines is queued.
    state: Mutex<Gathered>,
    /// Wakes [`Store::append_log`] callers waiting for room.
    room: std::sync::Condvar,
}

/// The moving state of a [`LogBacklog`].
#[derive(Default)]
struct Gathered {
    /// Per step: the encoded lines and their count.
    steps: std::collections::HashMap<i64, (Vec<u8>, i64)>,
    /// The bytes of every step's lines. Invariant: the sum of the steps' buffer lengths.
    bytes: usize,
}

impl LogBacklog {
    /// The state, locked.
    fn lock(&self) -> MutexGuard<'_, Gathered> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the lines gathered for `step_id`, making room.
    fn take(&self, step_id: i64) -> Option<(Vec<u8>, i64)> {
        let mut state = self.lock();
        let taken = state.steps.remove(&step_id);
        if let Some((data, _)) = &taken {
            state.bytes -= data.len();
        }
        drop(state);
        self.room.notify_all();
        taken
    }
}

/// What a write does once its group's transaction has committed (`Ok`) or failed (`Err`).
type Completion = Box<dyn FnOnce(Result<(), Arc<rusqlite::Error>>) + Send>;

/// One queued write. `run` executes it inside the group's transaction (in its own savepoint,
/// unless `one_statement`: a single SQL statement is atomic by itself) and says whether it
/// succeeded (its savepoint is rolled back when not); `done` answers its caller once the group's
/// fate is known. A write whose group failed before it ran is never run: only its `done` is
/// called, with the group's error.
struct Write {
    run: Box<dyn FnOnce(&Connection) -> bool + Send>,
    one_statement: bool,
    done: Completion,
}

/// What the writer thread runs of a [`Write`].
type Run = (Box<dyn FnOnce(&Connection) -> bool + Send>, bool);

/// The writer thread: group commits until the queue closes (the store is dropped).
fn write_groups(conn: Connection, queue: Receiver<Write>) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(w) => group.push(w),
                Err(_) => break,
            }
        }
        let (runs, dones): (Vec<Run>, Vec<Completion>) = group.into_iter().map(|w| ((w.run, w.one_statement), w.done)).unzip();
        let outcome = run_group(&conn, runs).map_err(Arc::new);
        for done in dones {
            done(outcome.clone());
        }
    }
}

/// Runs `runs` in one transaction, each in its own savepoint (but single statements), and
/// commits it.
fn run_group(conn: &Connection, runs: Vec<Run>) -> rusqlite::Result<()> {
    let exec = |sql: &str| conn.prepare_cached(sql).and_then(|mut s| s.execute([])).map(|_| ());
    exec("BEGIN IMMEDIATE")?;
    let result = (|| {
        for (run, one_statement) in runs {
            if one_statement {
                run(conn);
                if conn.is_autocommit() {
                    return Err(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                        Some("a write's failure rolled back its group's transaction".into()),
                    ));
                }
                continue;
            }
            exec("SAVEPOINT write")?;
            let ok = run(conn);
            if conn.is_autocommit() {
                // SQLite rolled the whole transaction back (a full disk, an I/O error): the writes
                // before this one are gone too, and the rest must not run outside a transaction.
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                    Some("a write's failure rolled back its group's transaction".into()),
                ));
            }
            if !ok {
                exec("ROLLBACK TO write")?;
            }
            exec("RELEASE write")?;
        }
        exec("COMMIT")
    })();
    if result.is_err() && !conn.is_autocommit() {
        let _ = exec("ROLLBACK");
    }
    result
}

fn json_of(text: &str, what: impl FnOnce() -> String) -> Result<Map<String, Value>, StoreError> {
    serde_json::from_str(text).map_err(|source| StoreError::Json { what: what(), source })
}

/// What [`Store::claim_change`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The change is now this controller's.
    Claimed,
    /// Another live controller runs it.
    Taken {
        /// That controller's process id.
        pid: i64,
    },
    /// It succeeded: nothing to retry.
    Succeeded,
}

/// Whether a process with this id runs (a controller that died leaves its id behind).
pub fn pid_alive(pid: i64) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => !is_zombie(pid),
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

fn is_zombie(pid: i32) -> bool {
    matches!(crate::procfs::stat(pid), Ok(Some(stat)) if stat.is_zombie())
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
        let (writes, queue) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("opschain-store".into())
            .spawn(move || write_groups(conn, queue))
            .map_err(|source| StoreError::Writer { source })?;
        Ok(Store { read: Mutex::new(read), cache: Arc::default(), writes: Some(writes), writer: Some(writer), path, logs: Arc::default() })
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
        let (answer, answered) = mpsc::sync_channel::<Result<T, StoreError>>(1);
        let slot: Arc<Mutex<Option<Result<T, StoreError>>>> = Arc::new(Mutex::new(None));
        let filled = Arc::clone(&slot);
        let write = Write {
            run: Box::new(move |conn| {
                let result = f(conn);
                let ok = result.is_ok();
                *filled.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
                ok
            }),
            one_statement: false,
            done: Box::new(move |group| {
                let own = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
                then(matches!((&own, &group), (Some(Ok(_)), Ok(()))));
                let _ = answer.send(match (own, group) {
                    (Some(Err(e)), _) => Err(e),
                    (_, Err(source)) => Err(StoreError::Group { source }),
                    (Some(Ok(v)), Ok(())) => Ok(v),
                    (None, Ok(())) => Err(StoreError::WriterGone),
                });
            }),
        };
        self.writes.as_ref().ok_or(StoreError::WriterGone)?.send(write).map_err(|_| StoreError::WriterGone)?;
        answered.recv().map_err(|_| StoreError::WriterGone)?
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The reading connection.
    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.read.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The id of project `code`, creating it (with empty properties, version 0) when absent.
    pub fn ensure_project(&self, code: &str) -> Result<i64, StoreError> {
        let code = code.to_string();
        self.write(move |tx| {
            let id = tx.query_row("SELECT id FROM projects WHERE code = ?1", [&code], |r| r.get(0)).optional().map_err(q("find project"))?;
            let id = match id {
                Some(id) => id,
                None => {
                    tx.execute("INSERT INTO projects (code) VALUES (?1)", [&code]).map_err(q("create project"))?;
                    let id = tx.last_insert_rowid();
                    tx.execute("INSERT INTO properties (level, owner_id, version, json) VALUES ('project', ?1, 0, '{}')", [id]).map_err(q("create project properties"))?;
                    id
                }
            };
            Ok(id)
        })
    }

    /// The id of environment `code` of a project, creating it when absent.
    pub fn ensure_environment(&self, project_id: i64, code: &str) -> Result<i64, StoreError> {
        let code = code.to_string();
        self.write(move |tx| {
            let id = tx
                .query_row("SELECT id FROM environments WHERE project_id = ?1 AND code = ?2", params![project_id, code], |r| r.get(0))
                .optional()
                .map_err(q("find environment"))?;
            let id = match id {
                Some(id) => id,
                None => {
                    tx.execute("INSERT INTO environments (project_id, code) VALUES (?1, ?2)", params![project_id, code]).map_err(q("create environment"))?;
                    let id = tx.last_insert_rowid();
                    tx.execute("INSERT INTO properties (level, owner_id, version, json) VALUES ('environment', ?1, 0, '{}')", [id])
                        .map_err(q("create environment properties"))?;
                    id
                }
            };
            Ok(id)
        })
    }

    /// Sets whether a project lets several changes run at once in one environment (default: no).
    pub fn set_allow_parallel_changes(&self, project_id: i64, allow: bool) -> Result<(), StoreError> {
        self.write(move |tx| {
            tx.execute("UPDATE projects SET allow_parallel_changes = ?2 WHERE id = ?1", params![project_id, allow])
                .map_err(q("update project settings"))?;
            Ok(())
        })
    }

    /// The latest version of a level's properties.
    pub fn properties(&self, level: Level, owner: i64) -> Result<PropertiesVersion, StoreError> {
        let conn = self.conn();
        let current = current(&conn, &self.cache, None, level, owner)?;
        let (step_id, created_at) = conn
            .prepare_cached("SELECT step_id, created_at FROM properties WHERE level = ?1 AND owner_id = ?2 AND version = ?3")
            .and_then(|mut stmt| stmt.query_row(params![level.as_str(), owner, current.version], |r| Ok((r.get(0)?, r.get(1)?))))
            .map_err(q("read properties"))?;
        let json = json_of(current.doc.text(), || format!("{} properties v{}", level.as_str(), current.version))?;
        Ok(PropertiesVersion { version: current.version, json, step_id, created_at })
    }

    /// Calls `each` with every version of a level's properties, oldest first: each snapshot is
    /// parsed once and the patches after it applied in turn, so listing the versions costs one
    /// tree, not one per version.
    pub fn properties_history_each(&self, level: Level, owner: i64, mut each: impl FnMut(PropertiesVersion)) -> Result<(), StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT version, json, patch, step_id, created_at FROM properties WHERE level = ?1 AND owner_id = ?2 ORDER BY version")
            .map_err(q("list properties versions"))?;
        let mut rows = stmt.query(params![level.as_str(), owner]).map_err(q("list properties versions"))?;
        let mut doc = Map::new();
        while let Some(r) = rows.next().map_err(q("list properties versions"))? {
            let (version, json, patch, step_id, created_at): (i64, Option<String>, Option<String>, Option<i64>, String) =
                (|| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))().map_err(q("list properties versions"))?;
            let what = || format!("{} properties v{version}", level.as_str());
            doc = match (json, patch) {
                (Some(json), _) => json_of(&json, what)?,
                (None, Some(patch)) => apply_stored(doc, &patch, what)?,
                (None, None) => unreachable!("the schema's CHECK keeps a document or a patch"),
            };
            each(PropertiesVersion { version, json: doc.clone(), step_id, created_at });
        }
        Ok(())
    }

    /// Every version of a level's properties, oldest first (see [`Store::properties_history_each`]).
    pub fn properties_history(&self, level: Level, owner: i64) -> Result<Vec<PropertiesVersion>, StoreError> {
        let mut out = Vec::new();
        self.properties_history_each(level, owner, |v| out.push(v))?;
        Ok(out)
    }

    /// Stores a new version of a level's properties (a user's `set` or `edit`); returns its number.
    /// Stored as its diff from the current version, or whole when a snapshot is due.
    pub fn set_properties(&self, level: Level, owner: i64, json: &Map<String, Value>) -> Result<i64, StoreError> {
        let json = Value::Object(json.clone());
        self.write_properties(move |tx, cache, staged| {
            let prev = current(tx, cache, Some(staged), level, owner)?;
            let before: Value = serde_json::from_str(prev.doc.text()).map_err(|source| StoreError::Json { what: format!("{} properties", level.as_str()), source })?;
            let patch = serde_json::to_string(&crate::diff::diff(&before, &json)).expect("a patch serialises");
            let doc = splice::Document::parse(&json.to_string()).expect("a JSON object's text is a document");
            insert_version(tx, cache, staged, level, owner, &prev, doc, Some(patch), None)
        })
    }

    /// The version `version` of a level's properties.
    pub fn properties_version(&self, level: Level, owner: i64, version: i64) -> Result<Map<String, Value>, StoreError> {
        let conn = self.conn();
        let doc = load(&conn, level, owner, version)?.doc;
        json_of(doc.text(), || format!("{} properties v{version}", level.as_str()))
    }

    /// [`Store::write`] for a write that reads or stores properties versions: it gets the cache
    /// and a list to stage the versions it reads or writes in, published once its group commits.
    fn write_properties<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &PropertiesCache, &mut Vec<Staged>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (cache, settle) = (Arc::clone(&self.cache), Arc::clone(&self.cache));
        let mine: Arc<Mutex<Vec<Staged>>> = Arc::default();
        let published = Arc::clone(&mine);
        self.write_then(
            move |tx| {
                let mut staged = Vec::new();
                let result = f(tx, &cache, &mut staged);
                *mine.lock().unwrap_or_else(|e| e.into_inner()) = staged;
                result
            },
            move |committed| settle.settle(std::mem::take(&mut *published.lock().unwrap_or_else(|e| e.into_inner())), committed),
        )
    }

    /// Creates or replaces a secret set (`{"NAME": "value"}`).
    pub fn set_secrets(&self, name: &str, secrets: &Map<String, Value>) -> Result<(), StoreError> {
        let json = Value::Object(secrets.clone()).to_string();
        let name = name.to_string();
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO secret_sets (name, json) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET json = excluded.json, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ','now')",
                params![name, json],
            )
            .map_err(q("store secret set"))?;
            Ok(())
        })
    }

    /// A secret set, or `None` when it does not exist.
    pub fn secrets(&self, name: &str) -> Result<Option<Map<String, Value>>, StoreError> {
        let json: Option<String> =
            self.conn().query_row("SELECT json FROM secret_sets WHERE name = ?1", [name], |r| r.get(0)).optional().map_err(q("read secret set"))?;
        json.map(|j| json_of(&j, || format!("secret set {name}"))).transpose()
    }

    /// The names of the secret sets.
    pub fn secret_set_names(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT name FROM secret_sets ORDER BY name").map_err(q("list secret sets"))?;
        let names = stmt.query_map([], |r| r.get(0)).map_err(q("list secret sets"))?.collect::<Result<Vec<String>, _>>().map_err(q("list secret sets"))?;
        Ok(names)
    }

    /// Creates a change (status `pending`) with its root step; returns the change id.
    #[allow(clippy::too_many_arguments)]
    pub fn create_change(
        &self,
        project_id: i64,
        environment_id: i64,
        action: &str,
        repo: &Path,
        git_rev: &str,
        commit: &str,
        backend: &str,
        secret_set: Option<&str>,
    ) -> Result<i64, StoreError> {
        let (action, repo, git_rev) = (action.to_string(), repo.to_string_lossy().into_owned(), git_rev.to_string());
        let (commit, backend, secret_set) = (commit.to_string(), backend.to_string(), secret_set.map(str::to_string));
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO changes (project_id, environment_id, action, repo, git_rev, commit_sha, backend, secret_set, status) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending')",
                params![project_id, environment_id, action, repo, git_rev, commit, backend, secret_set],
            )
            .map_err(q("create change"))?;
            let id = tx.last_insert_rowid();
            tx.execute("INSERT INTO steps (change_id, parent_id, position, action, status) VALUES (?1, NULL, 0, ?2, 'pending')", params![id, action])
                .map_err(q("create root step"))?;
            Ok(id)
        })
    }

    /// Makes this process the change's controller and marks it `running`, unless another live
    /// controller runs a change in the same environment and the project does not allow parallel
    /// changes: then returns the blocking change's id and changes nothing.
    pub fn try_start_change(&self, change_id: i64, pid: i64) -> Result<Option<i64>, StoreError> {
        self.write(move |tx| {
            let (env, allow): (i64, bool) = tx
                .query_row(
                    "SELECT c.environment_id, p.allow_parallel_changes FROM changes c JOIN projects p ON p.id = c.project_id WHERE c.id = ?1",
                    [change_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(q("read change"))?;
            if !allow {
                let mut stmt = tx
                    .prepare("SELECT id, controller_pid FROM changes WHERE environment_id = ?1 AND id != ?2 AND status = 'running' AND controller_pid IS NOT NULL")
                    .map_err(q("find running changes"))?;
                let running = stmt
                    .query_map(params![env, change_id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
                    .map_err(q("find running changes"))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(q("find running changes"))?;
                drop(stmt);
                if let Some((blocking, _)) = running.into_iter().find(|&(_, pid)| pid_alive(pid)) {
                    return Ok(Some(blocking));
                }
            }
            tx.execute(
                "UPDATE changes SET status = 'running', controller_pid = ?2, cancel_requested = 0, started_at = strftime('%Y-%m-%dT%H:%M:%fZ','now'), finished_at = NULL WHERE id = ?1",
                params![change_id, pid],
            )
            .map_err(q("start change"))?;
            Ok(None)
        })
    }

    /// Claims a change for a retry by the controller `pid`, in one write: refused when another live
    /// controller runs it (two `change retry` at once: only one may reset and run it) or when it
    /// succeeded. A claimed change is `queued` under `pid` until [`Store::try_start_change`].
    pub fn claim_change(&self, change_id: i64, pid: i64) -> Result<Claim, StoreError> {
        self.write(move |tx| {
            let (status, owner): (String, Option<i64>) = tx
                .query_row("SELECT status, controller_pid FROM changes WHERE id = ?1", [change_id], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(q("read change"))?;
            let status = ChangeStatus::parse(&status);
            if status == ChangeStatus::Success {
                return Ok(Claim::Succeeded);
            }
            if let Some(owner) = owner.filter(|&owner| !status.is_final() && owner != pid && pid_alive(owner)) {
                return Ok(Claim::Taken { pid: owner });
            }
            tx.execute("UPDATE changes SET status = 'queued', controller_pid = ?2 WHERE id = ?1", params![change_id, pid])
                .map_err(q("claim change"))?;
            Ok(Claim::Claimed)
        })
    }

    /// Marks a change `queued` (waiting for its environment).
    pub fn set_change_status(&self, change_id: i64, status: ChangeStatus) -> Result<(), StoreError> {
        let finished = status.is_final();
        self.write(move |tx| {
            tx.execute(
                "UPDATE changes SET status = ?2, finished_at = CASE WHEN ?3 THEN strftime('%Y-%m-%dT%H:%M:%fZ','now') ELSE NULL END WHERE id = ?1",
                params![change_id, status.as_str(), finished],
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
                        c.cancel_requested, c.controller_pid, c.created_at, c.finished_at
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
                    status: ChangeStatus::parse(&r.get::<_, String>(11)?),
                    cancel_requested: r.get(12)?,
                    controller_pid: r.get(13)?,
                    created_at: r.get(14)?,
                    finished_at: r.get(15)?,
                })
            })
            .map_err(q("list changes"))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(q("list changes"))
    }

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
        let mut stmt = conn
            .prepare_cached(&format!("SELECT {STEP_COLUMNS} FROM steps WHERE change_id = ?1 AND parent_id = ?2 ORDER BY position"))
            .map_err(q("list child steps"))?;
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
                params![step_id, status.as_str(), message, status.is_final()],
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
                "UPDATE steps SET status = 'running', project_version = ?2, environment_version = ?3, exit_status = NULL, message = NULL,
                    started_at = strftime('%Y-%m-%dT%H:%M:%fZ','now'), finished_at = NULL WHERE id = ?1",
                params![step_id, project.version, environment.version],
            )
            .map_err(q("start step"))?;
            Ok(StartingProperties { project: Arc::clone(project.doc.text()), environment: Arc::clone(environment.doc.text()) })
        })
    }

    /// Ends a step in ONE transaction: applies its diffs to the current properties (new versions),
    /// records its status, and adds its children as `pending`. A diff that does not apply rolls
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
            for (level, owner, started, diff) in [
                (Level::Project, project_id, project_version, &end.project_diff),
                (Level::Environment, environment_id, environment_version, &end.environment_diff),
            ] {
                if diff.0.is_empty() {
                    continue;
                }
                let current = current(tx, cache, Some(staged), level, owner)?;
                match apply(&current.doc, diff) {
                    Ok(doc) => updates.push((level, owner, current, doc, diff)),
                    Err(error) => {
                        let what = || format!("{} properties", level.as_str());
                        let original = match started {
                            Some(v) => json_of(load(tx, level, owner, v)?.doc.text(), what)?,
                            None => Map::new(),
                        };
                        let (project, environment): (String, String) = tx
                            .query_row(
                                "SELECT p.code, e.code FROM changes c JOIN projects p ON p.id = c.project_id JOIN environments e ON e.id = c.environment_id WHERE c.id = ?1",
                                [change_id],
                                |r| Ok((r.get(0)?, r.get(1)?)),
                            )
                            .map_err(q("read change codes"))?;
                        let conflict = Conflict {
                            project,
                            environment,
                            level: level.as_str(),
                            step_id,
                            action: action.clone(),
                            change_id,
                            error,
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
            for (level, owner, prev, doc, diff) in updates {
                let patch = serde_json::to_string(diff).expect("a patch serialises");
                insert_version(tx, cache, staged, level, owner, &prev, doc, Some(patch), Some(step_id))?;
            }
            let message = message.map(|m| end.mask.mask(&m).into_owned());
            exec_cached(
                tx,
                "UPDATE steps SET status = ?2, exit_status = ?3, message = ?4, child_strategy = ?5,
                    finished_at = strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE id = ?1",
                params![step_id, status.as_str(), end.exit_status, message, if status == StepStatus::Success { end.child_strategy.clone() } else { None }],
            )
            .map_err(q("finish step"))?;
            if status == StepStatus::Success {
                for (position, child) in end.children.iter().enumerate() {
                    exec_cached(
                        tx,
                        "INSERT INTO steps (change_id, parent_id, position, action, status) VALUES (?1, ?2, ?3, ?4, 'pending')",
                        params![change_id, step_id, position as i64, child],
                    )
                    .map_err(q("add child step"))?;
                }
            }
            Ok((status, message))
        })
    }

    /// Adds one line of a step's log (from `stream`, e.g. `stdout`) and returns at once: the line
    /// is committed, in its step's next chunk, with the next group (see the module
    /// documentation), before any later write of the same thread. Waits only while
    /// [`LOG_BACKLOG`] bytes of lines are already waiting for the writer. A line that cannot be
    /// stored is reported on stderr (nobody waits for it).
    pub fn append_log(&self, step_id: i64, stream: &str, line: &str) {
        let mut encoded = LogLines::default();
        encoded.push(stream, line);
        self.append_logs(step_id, &mut encoded);
    }

    /// [`append_log`](Self::append_log) for many lines at once (one lock for all), gathered in
    /// `lines`, which is left empty.
    pub fn append_logs(&self, step_id: i64, lines: &mut LogLines) {
        if lines.count == 0 {
            return;
        }
        let mut state = self.logs.lock();
        while state.bytes >= LOG_BACKLOG && self.writes.is_some() {
            state = self.logs.room.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        let size = lines.data.len();
        let first = !state.steps.contains_key(&step_id);
        let (data, count) = state.steps.entry(step_id).or_default();
        if data.is_empty() {
            std::mem::swap(data, &mut lines.data);
        } else {
            data.extend_from_slice(&lines.data);
        }
        *count += lines.count;
        state.bytes += size;
        drop(state);
        lines.data.clear();
        lines.count = 0;
        if first {
            self.queue_log_chunk(step_id);
        }
    }

    /// Queues the write that stores the lines gathered for `step_id` as one chunk.
    fn queue_log_chunk(&self, step_id: i64) {
        let failed: Arc<Mutex<Option<(StoreError, i64)>>> = Arc::new(Mutex::new(None));
        let noted = Arc::clone(&failed);
        let backlog = Arc::clone(&self.logs);
        let write = Write {
            run: Box::new(move |conn| {
                let Some((data, lines)) = backlog.take(step_id) else { return true };
                let (data, deflated) = deflate(data);
                let inserted = conn
                    .prepare_cached("INSERT INTO step_log_chunks (step_id, lines, data, deflated) VALUES (?1, ?2, ?3, ?4)")
                    .and_then(|mut stmt| stmt.execute(params![step_id, lines, data, deflated]))
                    .map_err(q("append step log"));
                let ok = inserted.is_ok();
                *noted.lock().unwrap_or_else(|e| e.into_inner()) = inserted.err().map(|e| (e, lines));
                ok
            }),
            one_statement: true,
            done: Box::new(move |group| {
                let own = failed.lock().unwrap_or_else(|e| e.into_inner()).take();
                let error = own.map(|(e, _)| e).or_else(|| group.err().map(|source| StoreError::Group { source }));
                if let Some(e) = error {
                    eprintln!("opschain: warning: log lines of step {step_id} were not stored: {}", chain(&e));
                }
            }),
        };
        let sent = self.writes.as_ref().is_some_and(|writes| writes.send(write).is_ok());
        if !sent {
            if let Some((_, lines)) = self.logs.take(step_id) {
                eprintln!("opschain: warning: {lines} log lines of step {step_id} were not stored: {}", StoreError::WriterGone);
            }
        }
    }

    /// Marks steps `queued` (waiting for a worker), all in one write.
    pub fn mark_queued(&self, step_ids: &[i64]) -> Result<(), StoreError> {
        let ids = step_ids.to_vec();
        self.write(move |tx| {
            let mut stmt = tx.prepare_cached("UPDATE steps SET status = 'queued' WHERE id = ?1").map_err(q("queue steps"))?;
            for id in ids {
                stmt.execute([id]).map_err(q("queue steps"))?;
            }
            Ok(())
        })
    }

    /// Every log line of a change, in order.
    pub fn logs(&self, change_id: i64) -> Result<Vec<LogLine>, StoreError> {
        let mut lines = Vec::new();
        self.logs_after(change_id, 0, |line| lines.push(line.clone()))?;
        Ok(lines)
    }

    /// Calls `each` with every log line of a change stored in a chunk after chunk `after` (0: from
    /// the start), in order, and returns the last chunk read (`after` when there is none): pass
    /// it back to follow the log as it grows. A chunk is read whole or not at all (each is one
    /// committed row), so following never splits or repeats a line.
    pub fn logs_after(&self, change_id: i64, after: i64, mut each: impl FnMut(&LogLine)) -> Result<i64, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT c.id, c.step_id, s.action, c.at, c.data, c.deflated FROM step_log_chunks c JOIN steps s ON s.id = c.step_id
                 WHERE s.change_id = ?1 AND c.id > ?2 ORDER BY c.id",
            )
            .map_err(q("read logs"))?;
        let mut rows = stmt.query(params![change_id, after]).map_err(q("read logs"))?;
        let mut last = after;
        let mut line = LogLine { step_id: 0, action: String::new(), stream: String::new(), at: String::new(), line: String::new() };
        while let Some(row) = rows.next().map_err(q("read logs"))? {
            last = row.get(0).map_err(q("read logs"))?;
            line.step_id = row.get(1).map_err(q("read logs"))?;
            line.action = row.get(2).map_err(q("read logs"))?;
            line.at = row.get(3).map_err(q("read logs"))?;
            let data = row.get_ref(4).and_then(|v| v.as_blob_or_null().map_err(Into::into)).map_err(q("read logs"))?.unwrap_or_default();
            let deflated: bool = row.get(5).map_err(q("read logs"))?;
            let inflated;
            let data = if deflated {
                inflated = inflate(data).map_err(|source| StoreError::LogChunk { chunk: last, source })?;
                &inflated[..]
            } else {
                data
            };
            for encoded in data.split(|&b| b == b'\n') {
                if encoded.is_empty() {
                    continue; // after the last line
                }
                let (stream, text) = match encoded.iter().position(|&b| b == b'\t') {
                    Some(tab) => (&encoded[..tab], &encoded[tab + 1..]),
                    None => (&b""[..], encoded),
                };
                line.stream.clear();
                line.stream.push_str(&String::from_utf8_lossy(stream));
                line.line.clear();
                line.line.push_str(&String::from_utf8_lossy(text));
                each(&line);
            }
        }
        Ok(last)
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
                    "UPDATE steps SET status = 'pending', exit_status = NULL, message = NULL, child_strategy = NULL, started_at = NULL, finished_at = NULL WHERE id = ?1",
                    [id],
                )
                .map_err(q("reset step"))?;
            }
            tx.execute("UPDATE changes SET status = 'pending', cancel_requested = 0, finished_at = NULL WHERE id = ?1", [change_id])
                .map_err(q("reset change"))?;
            Ok(reset)
        })
    }

    /// Ends a change whose controller is gone: pending, queued and running steps become
    /// `cancelled`, and so does the change.
    pub fn cancel_orphaned(&self, change_id: i64) -> Result<(), StoreError> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE steps SET status = 'cancelled', finished_at = strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE change_id = ?1 AND status IN ('pending','queued','running')",
                [change_id],
            )
            .map_err(q("cancel steps"))?;
            tx.execute("UPDATE changes SET status = 'cancelled', finished_at = strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE id = ?1", [change_id])
                .map_err(q("cancel change"))?;
            Ok(())
        })
    }

    /// The id of a project by code.
    pub fn project_id(&self, code: &str) -> Result<i64, StoreError> {
        self.conn()
            .query_row("SELECT id FROM projects WHERE code = ?1", [&code], |r| r.get(0))
            .optional()
            .map_err(q("find project"))?
            .ok_or_else(|| StoreError::NotFound(format!("project {code:?}")))
    }

    /// The id of an environment of a project by code.
    pub fn environment_id(&self, project_id: i64, code: &str) -> Result<i64, StoreError> {
        self.conn()
            .query_row("SELECT id FROM environments WHERE project_id = ?1 AND code = ?2", params![project_id, code], |r| r.get(0))
            .optional()
            .map_err(q("find environment"))?
            .ok_or_else(|| StoreError::NotFound(format!("environment {code:?}")))
    }

    /// Every project, by code.
    pub fn projects(&self) -> Result<Vec<ProjectRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT p.code, (SELECT COUNT(*) FROM environments e WHERE e.project_id = p.id),
                        (SELECT COUNT(*) FROM changes c WHERE c.project_id = p.id), p.allow_parallel_changes, p.created_at
                 FROM projects p ORDER BY p.code",
            )
            .map_err(q("list projects"))?;
        let rows = stmt
            .query_map([], |r| Ok(ProjectRow { code: r.get(0)?, environments: r.get(1)?, changes: r.get(2)?, allow_parallel_changes: r.get(3)?, created_at: r.get(4)? }))
            .map_err(q("list projects"))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(q("list projects"))
    }

    /// Every environment of a project, by code.
    pub fn environments(&self, project_id: i64) -> Result<Vec<EnvironmentRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT e.code, (SELECT COUNT(*) FROM changes c WHERE c.environment_id = e.id), e.created_at
                 FROM environments e WHERE e.project_id = ?1 ORDER BY e.code",
            )
            .map_err(q("list environments"))?;
        let rows = stmt
            .query_map([project_id], |r| Ok(EnvironmentRow { code: r.get(0)?, changes: r.get(1)?, created_at: r.get(2)? }))
            .map_err(q("list environments"))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(q("list environments"))
    }
}

/// `data` deflated, and true, when that is smaller (a chunk of more than a few lines); else
/// `data` as it is, and false.
fn deflate(data: Vec<u8>) -> (Vec<u8>, bool) {
    use std::io::Write as _;
    if data.len() < 512 {
        return (data, false);
    }
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::with_capacity(data.len() / 4), flate2::Compression::fast());
    match encoder.write_all(&data).and_then(|()| encoder.finish()) {
        Ok(deflated) if deflated.len() < data.len() => (deflated, true),
        _ => (data, false),
    }
}

/// The lines of a chunk stored deflated.
fn inflate(data: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut lines = Vec::with_capacity(data.len() * 4);
    flate2::read::DeflateDecoder::new(data).read_to_end(&mut lines)?;
    Ok(lines)
}

/// The columns [`step_row`] reads, in its order.
const STEP_COLUMNS: &str = "id, parent_id, position, action, status, child_strategy, exit_status, message, started_at, finished_at,
    (julianday(finished_at) - julianday(started_at)) * 86400.0";

/// A step row from a query that selects [`STEP_COLUMNS`].
fn step_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StepRow> {
    Ok(StepRow {
        id: r.get(0)?,
        parent_id: r.get(1)?,
        position: r.get(2)?,
        action: r.get(3)?,
        status: StepStatus::parse(&r.get::<_, String>(4)?),
        child_strategy: r.get(5)?,
        exit_status: r.get(6)?,
        message: r.get(7)?,
        started_at: r.get(8)?,
        finished_at: r.get(9)?,
        duration_secs: r.get(10)?,
    })
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

/// The current version of one level's properties, as held in memory: the document's text,
/// shared with every step that starts on it, and what has been stored since the last snapshot.
#[derive(Debug)]
struct Current {
    /// The version number.
    version: i64,
    /// The document.
    doc: splice::Document,
    /// How many patches were stored since the last snapshot (0 when this version is one).
    patches: usize,
    /// Their size in bytes.
    patch_bytes: usize,
}

/// A version staged by a write: the level and owner, and the version.
type Staged = ((Level, i64), Arc<Current>);

/// The current properties versions in memory (see the module documentation).
#[derive(Debug, Default)]
struct PropertiesCache {
    /// Committed versions, by level and owner: each the latest this process has seen.
    committed: Mutex<HashMap<(Level, i64), Arc<Current>>>,
    /// The versions the writer's current group has read or written, not yet committed: what a
    /// later write of the same group builds on.
    staged: Mutex<HashMap<(Level, i64), Arc<Current>>>,
}

impl PropertiesCache {
    /// Ends a write's staging: the group's staged versions are dropped, and the write's own
    /// published when it committed (a later version is never replaced by an earlier one).
    fn settle(&self, mine: Vec<Staged>, committed: bool) {
        self.staged.lock().unwrap_or_else(|e| e.into_inner()).clear();
        if committed {
            for (key, current) in mine {
                self.publish(key, current);
            }
        }
    }

    /// Records a committed version, unless a later one is known.
    fn publish(&self, key: (Level, i64), current: Arc<Current>) {
        let mut committed = self.committed.lock().unwrap_or_else(|e| e.into_inner());
        if committed.get(&key).is_none_or(|known| known.version <= current.version) {
            committed.insert(key, current);
        }
    }
}

/// The latest version of a level's properties: from the cache when it holds that version, else
/// loaded from the database. `staged`: the writer's staging list, when called inside a write
/// (the version is then staged, as it may come from the write's own transaction); a reader's
/// connection sees only committed versions, which are published at once.
fn current(conn: &Connection, cache: &PropertiesCache, staged: Option<&mut Vec<Staged>>, level: Level, owner: i64) -> Result<Arc<Current>, StoreError> {
    let version: Option<i64> = conn
        .prepare_cached("SELECT MAX(version) FROM properties WHERE level = ?1 AND owner_id = ?2")
        .and_then(|mut stmt| stmt.query_row(params![level.as_str(), owner], |r| r.get(0)))
        .map_err(q("read properties version"))?;
    let version = version.ok_or_else(|| StoreError::NotFound(format!("{} {owner} properties", level.as_str())))?;
    let key = (level, owner);
    if staged.is_some() {
        if let Some(c) = cache.staged.lock().unwrap_or_else(|e| e.into_inner()).get(&key).filter(|c| c.version == version) {
            return Ok(Arc::clone(c));
        }
    }
    if let Some(c) = cache.committed.lock().unwrap_or_else(|e| e.into_inner()).get(&key).filter(|c| c.version == version) {
        return Ok(Arc::clone(c));
    }
    let loaded = Arc::new(load(conn, level, owner, version)?);
    match staged {
        Some(staged) => stage(cache, staged, key, Arc::clone(&loaded)),
        None => cache.publish(key, Arc::clone(&loaded)),
    }
    Ok(loaded)
}

/// Stages a version for the rest of the writer's group and for publication at its commit.
fn stage(cache: &PropertiesCache, staged: &mut Vec<Staged>, key: (Level, i64), current: Arc<Current>) {
    cache.staged.lock().unwrap_or_else(|e| e.into_inner()).insert(key, Arc::clone(&current));
    staged.push((key, current));
}

/// Reads version `version` of a level's properties from the database: the last snapshot at or
/// before it, and the patches after that applied to its tree in turn.
fn load(conn: &Connection, level: Level, owner: i64, version: i64) -> Result<Current, StoreError> {
    let what = || format!("{} properties v{version}", level.as_str());
    let (base, json): (i64, String) = conn
        .prepare_cached(
            "SELECT version, json FROM properties WHERE level = ?1 AND owner_id = ?2 AND version <= ?3 AND json IS NOT NULL ORDER BY version DESC LIMIT 1",
        )
        .and_then(|mut stmt| stmt.query_row(params![level.as_str(), owner, version], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(q("read properties snapshot"))?
        .ok_or_else(|| StoreError::NotFound(what()))?;
    let patches: Vec<String> = conn
        .prepare_cached("SELECT patch FROM properties WHERE level = ?1 AND owner_id = ?2 AND version > ?3 AND version <= ?4 ORDER BY version")
        .and_then(|mut stmt| stmt.query_map(params![level.as_str(), owner, base, version], |r| r.get(0))?.collect())
        .map_err(q("read properties patches"))?;
    let patch_bytes = patches.iter().map(String::len).sum();
    let text = if patches.is_empty() {
        json
    } else {
        let mut doc = json_of(&json, what)?;
        for patch in &patches {
            doc = apply_stored(doc, patch, what)?;
        }
        Value::Object(doc).to_string()
    };
    let doc = splice::Document::parse(&text).map_err(|source| StoreError::StoredDocument { what: what(), source })?;
    Ok(Current { version, doc, patches: patches.len(), patch_bytes })
}

/// `doc` after the stored patch `patch` (JSON text) of version `what`.
fn apply_stored(doc: Map<String, Value>, patch: &str, what: impl Fn() -> String) -> Result<Map<String, Value>, StoreError> {
    let patch: json_patch::Patch = serde_json::from_str(patch).map_err(|source| StoreError::Json { what: format!("the patch of {}", what()), source })?;
    let mut doc = Value::Object(doc);
    json_patch::patch(&mut doc, &patch).map_err(|source| StoreError::StoredPatch { what: what(), source })?;
    match doc {
        Value::Object(map) => Ok(map),
        _ => Err(StoreError::StoredDocument { what: what(), source: splice::SpliceError::NotAnObject }),
    }
}

/// `doc` after a step's `patch`: spliced into its text when the patch only adds, replaces and
/// removes object members ([`splice::Document::patch`]), else applied to its tree by
/// `json_patch::patch`, whose error (the patch does not apply) is returned as text.
fn apply(doc: &splice::Document, patch: &json_patch::Patch) -> Result<splice::Document, String> {
    if let Some(patched) = doc.patch(patch) {
        return Ok(patched);
    }
    let mut tree: Value = serde_json::from_str(doc.text()).map_err(|e| format!("the current properties are not valid JSON: {e}"))?;
    json_patch::patch(&mut tree, patch).map_err(|e| e.to_string())?;
    splice::Document::parse(&tree.to_string()).map_err(|_| "the patch replaces the properties with a value that is not an object".to_string())
}

/// Stores the version after `prev` of a level's properties: `doc`, made from `prev` by `patch`
/// (JSON text; `None`: store it whole). The row holds the patch, or the whole document when a
/// snapshot is due (see the module documentation). Stages the new version; returns its number.
#[allow(clippy::too_many_arguments)]
fn insert_version(
    conn: &Connection,
    cache: &PropertiesCache,
    staged: &mut Vec<Staged>,
    level: Level,
    owner: i64,
    prev: &Current,
    doc: splice::Document,
    patch: Option<String>,
    step_id: Option<i64>,
) -> Result<i64, StoreError> {
    let version = prev.version + 1;
    let (patches, patch_bytes) = match &patch {
        Some(p) => (prev.patches + 1, prev.patch_bytes + p.len()),
        None => (0, 0),
    };
    let snapshot = patch.is_none() || patches >= SNAPSHOT_EVERY || patch_bytes * SNAPSHOT_FRACTION > doc.text().len();
    let (json, patch) = if snapshot { (Some(&**doc.text()), None) } else { (None, patch) };
    exec_cached(
        conn,
        "INSERT INTO properties (level, owner_id, version, json, patch, step_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![level.as_str(), owner, version, json, patch, step_id],
    )
    .map_err(q("store properties version"))?;
    let (patches, patch_bytes) = if snapshot { (0, 0) } else { (patches, patch_bytes) };
    stage(cache, staged, (level, owner), Arc::new(Current { version, doc, patches, patch_bytes }));
    Ok(version)
}

/// Brings a database made before properties patches to the current `properties` table, in place
/// and in one transaction: `json` may now be NULL and `patch` is added; the rows are kept as they
/// are (each a snapshot).
fn migrate_properties(conn: &Connection) -> rusqlite::Result<()> {
    let has_patch = |conn: &Connection| conn.prepare("SELECT 1 FROM pragma_table_info('properties') WHERE name = 'patch'")?.exists([]);
    if has_patch(conn)? {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| {
        if has_patch(conn)? {
            return Ok(());
        }
        conn.execute_batch(
            "CREATE TABLE properties_migrated (
                id INTEGER PRIMARY KEY,
                level TEXT NOT NULL CHECK (level IN ('project', 'environment')),
                owner_id INTEGER NOT NULL,
                version INTEGER NOT NULL,
                json TEXT,
                patch TEXT,
                step_id INTEGER REFERENCES steps(id),
                created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
                CHECK (json IS NOT NULL OR patch IS NOT NULL),
                UNIQUE (level, owner_id, version)
            );
            INSERT INTO properties_migrated (id, level, owner_id, version, json, step_id, created_at)
                SELECT id, level, owner_id, version, json, step_id, created_at FROM properties;
            DROP TABLE properties;
            ALTER TABLE properties_migrated RENAME TO properties;",
        )
    })();
    match result {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

impl Drop for Store {
    /// Closes the writer's queue and waits for it to commit what is queued (log lines nobody
    /// waited for).
    fn drop(&mut self) {
        drop(self.writes.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let c = store.create_change(p, e, "root", dir.path(), "HEAD", "0000", "process", None).unwrap();
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
        let (status, message) = store
            .finish_step(root, p, e, end(json!([{"op": "add", "path": "/a", "value": 1}]), json!([{"op": "add", "path": "/b", "value": 2}]), &["x", "y"]))
            .unwrap();
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
                params![level.as_str(), owner],
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
        let (status, message) = store
            .finish_step(root, p, e, end(json!([{"op": "add", "path": "/a", "value": 1}]), json!([{"op": "add", "path": "/cfg/b", "value": 2}]), &["x"]))
            .unwrap();
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
    fn a_failed_write_of_a_group_rolls_back_alone_and_the_others_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        drop(store);
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        let insert = |code: &'static str, ok: bool| -> Run {
            (
                Box::new(move |c: &Connection| {
                    c.execute("INSERT INTO projects (code) VALUES (?1)", [code]).unwrap();
                    ok
                }),
                false,
            )
        };
        run_group(&conn, vec![insert("a", true), insert("b", false), insert("c", true)]).unwrap();
        let codes: Vec<String> = conn.prepare("SELECT code FROM projects ORDER BY code").unwrap().query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
        assert_eq!(codes, ["a", "c"]);
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
        let expected: Vec<(String, String)> = (0..4)
            .flat_map(|b| (0..50_000).map(move |n| ((if n % 7 == 0 { "stderr" } else { "stdout" }).to_string(), format!("{b} {n}\twith a tab"))))
            .collect();
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
