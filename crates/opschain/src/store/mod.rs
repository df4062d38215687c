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
//! Tables: `store_meta` (the key check), `projects`, `environments`, `properties` (every version of every level kept: level,
//! owner, version, the step that wrote it, created_at, and what the version is: see below),
//! `secret_sets`, `changes`, `steps` (a
//! tree through `parent_id`, with status, timings, exit status and the property versions the step
//! started from) and `step_log_chunks` (a step's log lines, each `<stream>\t<line>\n`, in chunks;
//! deflated when that makes them smaller; each line has an id in its change: `line_ids`). The
//! server adds `users`, `sessions`, `events` (the audit trail) and `git_remotes`, and a few
//! columns to the older tables (`service_schema`).
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
//! opened: its rows are kept as they are, snapshots all. A database from before the repository's folder was
//! stored with each change gains the `changes.folder` column, `NULL` in its old changes.
//!
//! The current version of each level is also kept in memory, as text shared by every step that
//! starts on it ([`splice::Document`]); a step's patch is spliced into it
//! ([`splice::Document::patch`]) rather than applied to a parsed tree. The writer thread stages
//! the versions it writes and publishes them once their group has committed; every use checks the
//! cached version against the database's latest, so another process's write is never missed.
//!
//! Encrypted at rest (`seal`, `keys`): every properties version's `json` and `patch` and every
//! secret set's `json` is sealed with XChaCha20-Poly1305 under a key file kept outside the database
//! ([`StoreOptions::key_file`]), bound to its row; `store_meta.key_check` makes a wrong key fail
//! on open. The in-memory cache holds the plaintext, so only writes and cold reads pay.
//!
//! Two stores implement the [`Catalog`] (projects, environments, properties, secret sets): this
//! embedded one, and [`PgStore`] (`postgres`), a PostgreSQL database shared by several
//! controllers. Changes, steps and logs are in the embedded store only.
//!
//! One file per concept: this one holds the [`Store`] itself, [`Store::open`] and [`StoreError`];
//! `writer` the group-commit writer thread; `schema.sql` the schema; `projects`, `changes`,
//! `steps`, `properties` (versions, patches, snapshots and the in-memory cache), `logs` (chunks)
//! and `secrets` what the store keeps of each; `seal` the cipher and key file, `keys` the
//! database's key (check, first encryption, rotation); `postgres` the PostgreSQL store.

mod writer;
mod projects;
mod changes;
mod steps;
mod properties;
mod logs;
mod secrets;
mod seal;
mod keys;
mod postgres;
/// The test PostgreSQL server, shared with the integration tests.
#[cfg(test)]
#[path = "../../tests/it/common/postgres.rs"]
pub(crate) mod pg_server;
mod users;
mod events;
mod remotes;
mod service_schema;
mod line_ids;
mod change_pages;
mod property_edits;
mod log_pages;
mod page_reads;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::Connection;
use serde_json::{Map, Value};

use super::permissions;
use opschain_runner::properties::splice;

pub use change_pages::{ChangeAuthor, ChangeFilter, ChangeSort, ChangeSummary};
pub use changes::{ChangeRow, Claim, Lost, NewChangeRow, Start, LOST_REASON, LOST_STEP};
pub use events::{EventFilter, EventRow, NewEvent};
pub use line_ids::NumberedLine;
pub use log_pages::LogQuery;
pub use logs::{LogLine, LogLines, LOG_BACKLOG};
pub use page_reads::StepOrigin;
pub use postgres::{PgStore, PostgresError, MIGRATIONS, POOL_SIZE};
pub use projects::{EnvironmentRow, ProjectRow, Removal};
pub use properties::{Level, PropertiesBase, PropertiesVersion, SNAPSHOT_EVERY, SNAPSHOT_FRACTION};
pub use property_edits::{PropertiesEdit, VersionRow};
pub use remotes::{GitRemoteRow, NamedRow};
pub use seal::{Seal, SealError, KEY_FILE};
pub use steps::{StartingProperties, StepEnd, StepRow};
pub use users::{Role, UserRow};
pub use writer::MAX_GROUP;

use changes::migrate_changes;
use keys::seal_database;
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
    /// A user, project, environment or git remote of that name exists already.
    #[error("{0} exists already")]
    Exists(String),
    /// A properties edit was made on a version that is no longer the current one.
    #[error("the properties were edited since version {expected}: the current version is {current}")]
    VersionConflict {
        /// The version the edit was made on.
        expected: i64,
        /// The current version.
        current: i64,
    },
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
    Private(#[from] permissions::PrivateError),
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
    /// The key file cannot be read or made, is not the database's key, or a stored value does
    /// not decrypt.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The PostgreSQL store failed (see [`PostgresError`]).
    #[error(transparent)]
    Postgres(#[from] PostgresError),
    /// A change's lock (its controller's liveness) cannot be used.
    #[error(transparent)]
    Liveness(#[from] crate::liveness::LivenessError),
    /// A new change's lock is held by another process (a state directory whose database was
    /// replaced while a controller of the old one runs).
    #[error("the lock of the new change {0} is held by another process")]
    Locked(i64),
}

/// The store's catalogue: what users read and edit (projects, environments, properties with every
/// version, secret sets), with the same behaviour in every store: the embedded SQLite [`Store`]
/// and the shared PostgreSQL [`PgStore`]. The methods are [`Store`]'s own, documented there.
pub trait Catalog {
    /// See [`Store::ensure_project`].
    fn ensure_project(&self, code: &str) -> Result<i64, StoreError>;
    /// See [`Store::ensure_environment`].
    fn ensure_environment(&self, project_id: i64, code: &str) -> Result<i64, StoreError>;
    /// See [`Store::set_allow_parallel_changes`].
    fn set_allow_parallel_changes(&self, project_id: i64, allow: bool) -> Result<(), StoreError>;
    /// See [`Store::project_id`].
    fn project_id(&self, code: &str) -> Result<i64, StoreError>;
    /// See [`Store::environment_id`].
    fn environment_id(&self, project_id: i64, code: &str) -> Result<i64, StoreError>;
    /// See [`Store::projects`].
    fn projects(&self) -> Result<Vec<ProjectRow>, StoreError>;
    /// See [`Store::environments`].
    fn environments(&self, project_id: i64) -> Result<Vec<EnvironmentRow>, StoreError>;
    /// See [`Store::project_archived`].
    fn project_archived(&self, project_id: i64) -> Result<bool, StoreError>;
    /// See [`Store::environment_archived`].
    fn environment_archived(&self, environment_id: i64) -> Result<bool, StoreError>;
    /// See [`Store::set_project_archived`].
    fn set_project_archived(&self, project_id: i64, archived: bool) -> Result<(), StoreError>;
    /// See [`Store::set_environment_archived`].
    fn set_environment_archived(&self, environment_id: i64, archived: bool) -> Result<(), StoreError>;
    /// See [`Store::delete_project`].
    fn delete_project(&self, project_id: i64) -> Result<Removal, StoreError>;
    /// See [`Store::delete_environment`].
    fn delete_environment(&self, environment_id: i64) -> Result<Removal, StoreError>;
    /// See [`Store::properties`].
    fn properties(&self, level: Level, owner: i64) -> Result<PropertiesVersion, StoreError>;
    /// See [`Store::declaring_properties`].
    fn declaring_properties(&self, level: Level, owner: i64) -> Result<Map<String, Value>, StoreError>;
    /// See [`Store::properties_version`].
    fn properties_version(&self, level: Level, owner: i64, version: i64) -> Result<Map<String, Value>, StoreError>;
    /// See [`Store::properties_history_each`].
    fn properties_history_each(&self, level: Level, owner: i64, each: &mut dyn FnMut(PropertiesVersion)) -> Result<(), StoreError>;
    /// Every version of a level's properties, oldest first (see [`Catalog::properties_history_each`]).
    fn properties_history(&self, level: Level, owner: i64) -> Result<Vec<PropertiesVersion>, StoreError> {
        let mut out = Vec::new();
        self.properties_history_each(level, owner, &mut |v| out.push(v))?;
        Ok(out)
    }
    /// See [`Store::set_properties`].
    fn set_properties(&self, level: Level, owner: i64, json: &Map<String, Value>) -> Result<i64, StoreError>;
    /// See [`Store::set_secrets`].
    fn set_secrets(&self, name: &str, secrets: &Map<String, Value>) -> Result<(), StoreError>;
    /// See [`Store::secrets`].
    fn secrets(&self, name: &str) -> Result<Option<Map<String, Value>>, StoreError>;
    /// See [`Store::secret_set_names`].
    fn secret_set_names(&self) -> Result<Vec<String>, StoreError>;
}

impl Catalog for Store {
    fn ensure_project(&self, code: &str) -> Result<i64, StoreError> {
        Store::ensure_project(self, code)
    }
    fn ensure_environment(&self, project_id: i64, code: &str) -> Result<i64, StoreError> {
        Store::ensure_environment(self, project_id, code)
    }
    fn set_allow_parallel_changes(&self, project_id: i64, allow: bool) -> Result<(), StoreError> {
        Store::set_allow_parallel_changes(self, project_id, allow)
    }
    fn project_id(&self, code: &str) -> Result<i64, StoreError> {
        Store::project_id(self, code)
    }
    fn environment_id(&self, project_id: i64, code: &str) -> Result<i64, StoreError> {
        Store::environment_id(self, project_id, code)
    }
    fn projects(&self) -> Result<Vec<ProjectRow>, StoreError> {
        Store::projects(self)
    }
    fn environments(&self, project_id: i64) -> Result<Vec<EnvironmentRow>, StoreError> {
        Store::environments(self, project_id)
    }
    fn project_archived(&self, project_id: i64) -> Result<bool, StoreError> {
        Store::project_archived(self, project_id)
    }
    fn environment_archived(&self, environment_id: i64) -> Result<bool, StoreError> {
        Store::environment_archived(self, environment_id)
    }
    fn set_project_archived(&self, project_id: i64, archived: bool) -> Result<(), StoreError> {
        Store::set_project_archived(self, project_id, archived)
    }
    fn set_environment_archived(&self, environment_id: i64, archived: bool) -> Result<(), StoreError> {
        Store::set_environment_archived(self, environment_id, archived)
    }
    fn delete_project(&self, project_id: i64) -> Result<Removal, StoreError> {
        Store::delete_project(self, project_id)
    }
    fn delete_environment(&self, environment_id: i64) -> Result<Removal, StoreError> {
        Store::delete_environment(self, environment_id)
    }
    fn properties(&self, level: Level, owner: i64) -> Result<PropertiesVersion, StoreError> {
        Store::properties(self, level, owner)
    }
    fn declaring_properties(&self, level: Level, owner: i64) -> Result<Map<String, Value>, StoreError> {
        Store::declaring_properties(self, level, owner)
    }
    fn properties_version(&self, level: Level, owner: i64, version: i64) -> Result<Map<String, Value>, StoreError> {
        Store::properties_version(self, level, owner, version)
    }
    fn properties_history_each(&self, level: Level, owner: i64, each: &mut dyn FnMut(PropertiesVersion)) -> Result<(), StoreError> {
        Store::properties_history_each(self, level, owner, each)
    }
    fn set_properties(&self, level: Level, owner: i64, json: &Map<String, Value>) -> Result<i64, StoreError> {
        Store::set_properties(self, level, owner, json)
    }
    fn set_secrets(&self, name: &str, secrets: &Map<String, Value>) -> Result<(), StoreError> {
        Store::set_secrets(self, name, secrets)
    }
    fn secrets(&self, name: &str) -> Result<Option<Map<String, Value>>, StoreError> {
        Store::secrets(self, name)
    }
    fn secret_set_names(&self) -> Result<Vec<String>, StoreError> {
        Store::secret_set_names(self)
    }
}

/// Maps a failed query of the operation `op` to [`StoreError::Query`].
fn q(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Query { op, source }
}

/// The store, shared by the scheduler's threads: a reading connection, and the queue of the
/// writer thread that owns the writing connection (see the module documentation).
pub struct Store {
    read: Mutex<Connection>,
    /// The key every sealed value is sealed with.
    seal: Arc<Seal>,
    cache: Arc<PropertiesCache>,
    writer: Writer,
    path: PathBuf,
    /// Log lines waiting for the writer, per step.
    logs: Arc<LogBacklog>,
    /// The directory of the changes' locks (`<state dir>/locks`, see [`crate::liveness`]).
    locks: PathBuf,
}

/// Parses a stored JSON object; `what` names it in the error.
fn json_of(text: &str, what: impl FnOnce() -> String) -> Result<Map<String, Value>, StoreError> {
    serde_json::from_str(text).map_err(|source| StoreError::Json { what: what(), source })
}

/// How a store is opened, apart from where: its configuration.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// The key file properties and secret sets are encrypted with (see `seal`). Default:
    /// [`KEY_FILE`] beside the database in the state directory.
    pub key_file: Option<PathBuf>,
}

impl Store {
    /// Opens (creating when needed) `<state_dir>/opschain.db`, with the default options (the key
    /// file beside it).
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(state_dir, &StoreOptions::default())
    }

    /// Opens (creating when needed) `<state_dir>/opschain.db` with `options`: its schema made or
    /// brought up to date, then its key checked (or, for a database never encrypted, made and
    /// every value encrypted with it).
    pub fn open_with(state_dir: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        let path = state_dir.join(DB_FILE);
        // Private from the moment they exist: the directory 0700, the database 0600 before SQLite
        // opens it (its -wal and -shm files take the database's mode).
        permissions::state_dir(state_dir, &path)?;
        permissions::private_file(&path)?;
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
            migrate_changes(&conn)?;
            service_schema::migrate_service(&conn)?;
            projects::migrate_projects(&conn)?;
            conn.execute_batch("COMMIT")?;
            migrate_properties(&conn)?;
            Ok(conn)
        })
        .map_err(open_err)?;
        let key_file = options.key_file.clone().unwrap_or_else(|| state_dir.join(KEY_FILE));
        let seal = Arc::new(seal_database(&conn, &key_file)?);
        // The reading connection finds the database set up (WAL is a property of the file).
        let read = retry_busy(|| {
            let read = Connection::open(&path)?;
            read.busy_timeout(BUSY_TIMEOUT)?;
            Ok(read)
        })
        .map_err(open_err)?;
        let writer = Writer::start(conn).map_err(|source| StoreError::Writer { source })?;
        let cache = Arc::new(PropertiesCache::new(Arc::clone(&seal)));
        Ok(Store { read: Mutex::new(read), seal, cache, writer, path, logs: Arc::default(), locks: state_dir.join("locks") })
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

    /// A receiver that wakes after each commit of this store's writer (log lines, status
    /// changes): what the server's log streams wait on rather than polling the database.
    pub fn subscribe_commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.writer.subscribe()
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

/// The stores and step ends the unit tests of the store's files start from.
#[cfg(test)]
mod fixtures {
    use super::*;
    use crate::status::{BackendKind, StepStatus};
    use opschain_runner::mask::Masker;

    pub(super) fn patch(v: Value) -> json_patch::Patch {
        serde_json::from_value(v).unwrap()
    }

    pub(super) fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    pub(super) fn setup() -> (tempfile::TempDir, Store, i64, i64, i64) {
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
                folder: ".opschain",
                metadata: None,
            })
            .unwrap()
            .0;
        (dir, store, p, e, c)
    }

    pub(super) fn end(project: Value, environment: Value, children: &[&str]) -> StepEnd {
        StepEnd {
            status: StepStatus::Success,
            exit_status: Some(0),
            message: None,
            project_diff: patch(project),
            environment_diff: patch(environment),
            children: children.iter().map(|c| c.to_string()).collect(),
            child_strategy: Some("parallel".into()),
            mask: Masker::default(),
            project_base: None,
            environment_base: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{end, setup};
    use super::*;
    use crate::status::StepStatus;
    use serde_json::json;

    #[test]
    fn a_database_from_before_the_folder_was_stored_gains_it_and_keeps_its_changes() {
        let (dir, store, p, e, old) = setup();
        assert_eq!(store.change(old).unwrap().folder.as_deref(), Some(".opschain"));
        drop(store);
        // The `changes` table as it was before the folder was stored.
        rusqlite::Connection::open(dir.path().join("opschain.db")).unwrap().execute_batch("ALTER TABLE changes DROP COLUMN folder").unwrap();
        let store = Store::open(dir.path()).unwrap();
        let row = store.change(old).unwrap();
        assert_eq!((row.action.as_str(), row.folder), ("root", None), "the old change is kept, its folder unknown");
        let new = NewChangeRow {
            project_id: p,
            environment_id: e,
            action: "mp",
            repo: dir.path(),
            git_rev: "HEAD",
            commit: "0000",
            backend: crate::status::BackendKind::Process,
            secret_set: None,
            folder: ".mintpress",
            metadata: None,
        };
        let id = store.create_change(&new).unwrap().0;
        assert_eq!(store.change(id).unwrap().folder.as_deref(), Some(".mintpress"));
        drop(store);
        // Opened again: nothing more to migrate.
        assert_eq!(Store::open(dir.path()).unwrap().change(id).unwrap().folder.as_deref(), Some(".mintpress"));
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
}
