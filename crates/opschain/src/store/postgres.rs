//! The PostgreSQL store (`--database-url postgres://...`): the store's catalogue ([`Catalog`]:
//! projects, environments, properties with every version, secret sets) in a PostgreSQL database
//! that several controllers can share.
//!
//! Values are sealed as in the SQLite store (`seal`: properties versions and secret sets are
//! BYTEA, each bound to its row), under the same kind of key file, and the database's
//! `store_meta.key_check` refuses a wrong key when the store connects. Properties versions are
//! stored as in SQLite too (a patch each, a snapshot now and then) and read with the same code
//! (`properties::assemble`).
//!
//! Migrations ([`MIGRATIONS`]) are embedded in the binary and run when a store connects, each once
//! and in order, under a transaction-scoped advisory lock, so that controllers starting together
//! never run one twice. Calls are synchronous, as the SQLite store's: each runs on the store's own
//! runtime (two worker threads) with a connection from its pool ([`POOL_SIZE`]), so they can be
//! made from any thread, inside another runtime or not.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use deadpool_postgres::GenericClient;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde_json::{Map, Value};
use tokio_postgres::NoTls;

use super::properties::{apply_stored, assemble, declaring, stored_form, Current, StoredVersion};
use super::seal::{properties_aad, secret_set_aad, Seal, SealError};
use super::{json_of, Catalog, EnvironmentRow, Level, ProjectRow, PropertiesVersion, Removal, StoreError, StoreOptions, KEY_FILE};

/// The schema migrations, in order: (version, SQL). A store connecting to a database runs those
/// it has not run yet.
pub const MIGRATIONS: &[(i64, &str)] = &[(1, include_str!("postgres.sql"))];

/// The most connections one store holds open (8).
pub const POOL_SIZE: usize = 8;

/// The advisory lock key taken while migrating (any constant shared by every controller).
const MIGRATION_LOCK: i64 = 0x6f70_7363_6861_696e;

/// Why the PostgreSQL store failed.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// The database URL cannot be read.
    #[error("the database URL is not a PostgreSQL URL (postgres://USER@HOST:PORT/DB?host=/socket/dir)")]
    Url(#[source] tokio_postgres::Error),
    /// The pool or its runtime cannot be built.
    #[error("cannot set up the PostgreSQL connection pool")]
    Pool(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// No connection could be had from the pool (the server is down or refuses it).
    #[error("cannot connect to PostgreSQL")]
    Connect(#[source] deadpool_postgres::PoolError),
    /// A statement failed.
    #[error("PostgreSQL operation {op:?} failed")]
    Query {
        /// The operation.
        op: &'static str,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
}

/// Maps a failed statement of the operation `op` to [`StoreError::Postgres`].
fn pq(op: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |source| StoreError::Postgres(PostgresError::Query { op, source })
}

/// The PostgreSQL store: a pool on a runtime of its own, and the key.
pub struct PgStore {
    pool: Pool,
    seal: Arc<Seal>,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("seal", &self.seal).finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to the database of `url` (a `postgres://` URL, or key=value connection string),
    /// runs the migrations it lacks, and checks the key of `options` (default: [`KEY_FILE`] in
    /// `state_dir`) as the SQLite store does: a database never sealed gets the key's check (the
    /// key file made when missing), one sealed must open under it.
    pub fn connect(url: &str, state_dir: &Path, options: &StoreOptions) -> Result<PgStore, StoreError> {
        let config: tokio_postgres::Config = url.parse().map_err(|e| StoreError::Postgres(PostgresError::Url(e)))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("opschain-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Postgres(PostgresError::Pool(Box::new(e))))?;
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = {
            let _entered = runtime.enter();
            Pool::builder(manager)
                .max_size(POOL_SIZE)
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .build()
                .map_err(|e| StoreError::Postgres(PostgresError::Pool(Box::new(e))))?
        };
        let key_file = match &options.key_file {
            Some(file) => file.clone(),
            None => {
                // The default key file is made in the state directory, private as it always is.
                super::private::private_dir_all(state_dir)?;
                state_dir.join(KEY_FILE)
            }
        };
        let setup = {
            let pool = pool.clone();
            let key_file = key_file.clone();
            run_on(&runtime, async move {
                migrate(&pool).await?;
                check_key(&pool, &key_file).await
            })
        };
        let seal = Arc::new(setup?);
        Ok(PgStore { pool, seal, runtime })
    }

    /// Runs `f` with a connection of the pool on the store's runtime and waits for its answer.
    fn with<T: Send + 'static, F>(&self, f: impl FnOnce(deadpool_postgres::Object, Arc<Seal>) -> F + Send + 'static) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let (pool, seal) = (self.pool.clone(), Arc::clone(&self.seal));
        run_on(&self.runtime, async move {
            let client = pool.get().await.map_err(|e| StoreError::Postgres(PostgresError::Connect(e)))?;
            f(client, seal).await
        })
    }

    /// Re-encrypts every value under the key of `new_key_file` in one transaction and installs
    /// that key in the store's key file, as [`super::Store::rotate_key`] does.
    pub fn rotate_key(self, new_key_file: &Path) -> Result<usize, StoreError> {
        let new = Seal::load_or_create(new_key_file)?;
        let old_file = self.seal.key_file().to_path_buf();
        if std::fs::canonicalize(new_key_file).ok() == std::fs::canonicalize(&old_file).ok() {
            return Err(SealError::SameKey { path: old_file }.into());
        }
        let count = self.with(move |mut client, old| async move {
            let tx = client.transaction().await.map_err(pq("begin key rotation"))?;
            let mut count = 0;
            for row in tx.query("SELECT id, level, owner_id, version, json, patch FROM properties ORDER BY id FOR UPDATE", &[]).await.map_err(pq("read properties"))? {
                let (id, level, owner, version): (i64, String, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
                let reseal = |column: &str, value: Option<Vec<u8>>| -> Result<Option<Vec<u8>>, StoreError> {
                    let aad = properties_aad(&level, owner, version, column);
                    value.map(|sealed| Ok(new.seal(&aad, &old.open(&aad, &sealed)?))).transpose()
                };
                let json = reseal("json", row.get(4))?;
                let patch = reseal("patch", row.get(5))?;
                count += usize::from(json.is_some()) + usize::from(patch.is_some());
                tx.execute("UPDATE properties SET json = $2, patch = $3 WHERE id = $1", &[&id, &json, &patch]).await.map_err(pq("store re-encrypted properties"))?;
            }
            for row in tx.query("SELECT name, json FROM secret_sets ORDER BY name FOR UPDATE", &[]).await.map_err(pq("read secret sets"))? {
                let (name, sealed): (String, Vec<u8>) = (row.get(0), row.get(1));
                let aad = secret_set_aad(&name);
                let json = new.seal(&aad, &old.open(&aad, &sealed)?);
                tx.execute("UPDATE secret_sets SET json = $2 WHERE name = $1", &[&name, &json]).await.map_err(pq("store re-encrypted secret set"))?;
                count += 1;
            }
            tx.execute("UPDATE store_meta SET value = $1 WHERE name = 'key_check'", &[&new.key_check()]).await.map_err(pq("store key check"))?;
            tx.commit().await.map_err(pq("commit key rotation"))?;
            Ok(count)
        })?;
        drop(self);
        super::seal::install_key_file(new_key_file, &old_file)?;
        Ok(count)
    }

    /// The latest version of a level's properties, read from the database.
    fn current(&self, level: Level, owner: i64) -> Result<(Current, Option<i64>, String), StoreError> {
        self.with(move |client, seal| async move {
            let row = client
                .query_opt("SELECT MAX(version) FROM properties WHERE level = $1 AND owner_id = $2", &[&level.as_str(), &owner])
                .await
                .map_err(pq("read properties version"))?;
            let version: Option<i64> = row.and_then(|r| r.get(0));
            let version = version.ok_or_else(|| StoreError::NotFound(format!("{} {owner} properties", level.as_str())))?;
            let current = load(&client, &seal, level, owner, version).await?;
            let row = client
                .query_one("SELECT step_id, created_at FROM properties WHERE level = $1 AND owner_id = $2 AND version = $3", &[&level.as_str(), &owner, &version])
                .await
                .map_err(pq("read properties"))?;
            Ok((current, row.get(0), row.get(1)))
        })
    }
}

/// Runs `future` on `runtime` and waits for it from this thread, whatever runtime this thread is
/// in (a `block_on` would panic inside another runtime).
fn run_on<T: Send + 'static>(runtime: &tokio::runtime::Runtime, future: impl Future<Output = T> + Send + 'static) -> T {
    let (answer, answered) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = answer.send(future.await);
    });
    answered.recv().expect("the store's runtime runs every task it is given to its end")
}

/// Runs the migrations the database lacks, in one transaction under [`MIGRATION_LOCK`].
async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut client = pool.get().await.map_err(|e| StoreError::Postgres(PostgresError::Connect(e)))?;
    let tx = client.transaction().await.map_err(pq("begin migrations"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(pq("lock migrations"))?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY)").await.map_err(pq("create schema_migrations"))?;
    for (version, sql) in MIGRATIONS {
        let done = tx.query_opt("SELECT 1 FROM schema_migrations WHERE version = $1", &[version]).await.map_err(pq("read schema_migrations"))?;
        if done.is_none() {
            tx.batch_execute(sql).await.map_err(pq("run migration"))?;
            tx.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[version]).await.map_err(pq("record migration"))?;
        }
    }
    tx.commit().await.map_err(pq("commit migrations"))
}

/// Checks (or, for a database never sealed, records) the key of `key_file`, and makes the
/// default build secret set, empty and sealed, when missing.
async fn check_key(pool: &Pool, key_file: &Path) -> Result<Seal, StoreError> {
    let mut client = pool.get().await.map_err(|e| StoreError::Postgres(PostgresError::Connect(e)))?;
    let tx = client.transaction().await.map_err(pq("begin key check"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(pq("lock key check"))?;
    let check = tx.query_opt("SELECT value FROM store_meta WHERE name = 'key_check'", &[]).await.map_err(pq("read key check"))?;
    let seal = match check {
        Some(row) => {
            let seal = Seal::load(key_file)?;
            seal.verify(row.get::<_, &[u8]>(0))?;
            seal
        }
        None => {
            let seal = Seal::load_or_create(key_file)?;
            tx.execute("INSERT INTO store_meta (name, value) VALUES ('key_check', $1)", &[&seal.key_check()]).await.map_err(pq("store key check"))?;
            seal
        }
    };
    let build = opschain_runner::exec::DEFAULT_BUILD_SECRET_SET;
    tx.execute("INSERT INTO secret_sets (name, json) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING", &[&build, &seal.seal(&secret_set_aad(build), b"{}")])
        .await
        .map_err(pq("create the default build secret set"))?;
    tx.commit().await.map_err(pq("commit key check"))?;
    Ok(seal)
}

/// Version `version` of a level's properties: its last snapshot and the patches after it.
async fn load(client: &impl GenericClient, seal: &Seal, level: Level, owner: i64, version: i64) -> Result<Current, StoreError> {
    let what = || format!("{} properties v{version}", level.as_str());
    let snapshot = client
        .query_opt(
            "SELECT version, json FROM properties WHERE level = $1 AND owner_id = $2 AND version <= $3 AND json IS NOT NULL ORDER BY version DESC LIMIT 1",
            &[&level.as_str(), &owner, &version],
        )
        .await
        .map_err(pq("read properties snapshot"))?
        .ok_or_else(|| StoreError::NotFound(what()))?;
    let base: i64 = snapshot.get(0);
    let json = seal.open_text(&properties_aad(level.as_str(), owner, base, "json"), snapshot.get::<_, &[u8]>(1))?;
    let rows = client
        .query(
            "SELECT version, patch FROM properties WHERE level = $1 AND owner_id = $2 AND version > $3 AND version <= $4 ORDER BY version",
            &[&level.as_str(), &owner, &base, &version],
        )
        .await
        .map_err(pq("read properties patches"))?;
    let patches =
        rows.iter().map(|r| seal.open_text(&properties_aad(level.as_str(), owner, r.get(0), "patch"), r.get::<_, &[u8]>(1))).collect::<Result<Vec<String>, _>>()?;
    assemble(level, version, base, json, &patches)
}

/// The id of the row `code` of `table` (`projects` or `environments`, of `project` for the
/// latter), made with its empty properties (version 0) when absent, in one transaction.
async fn ensure_owner(mut client: deadpool_postgres::Object, seal: Arc<Seal>, level: Level, project: Option<i64>, code: String) -> Result<i64, StoreError> {
    let tx = client.transaction().await.map_err(pq("begin create owner"))?;
    let found = match project {
        None => tx.query_opt("SELECT id FROM projects WHERE code = $1", &[&code]).await,
        Some(p) => tx.query_opt("SELECT id FROM environments WHERE project_id = $1 AND code = $2", &[&p, &code]).await,
    }
    .map_err(pq("find owner"))?;
    if let Some(row) = found {
        return Ok(row.get(0));
    }
    // Another controller may be making the same owner: the insert waits for its unique key, and
    // then finds it made.
    let inserted = match project {
        None => tx.query_opt("INSERT INTO projects (code) VALUES ($1) ON CONFLICT (code) DO NOTHING RETURNING id", &[&code]).await,
        Some(p) => tx.query_opt("INSERT INTO environments (project_id, code) VALUES ($1, $2) ON CONFLICT (project_id, code) DO NOTHING RETURNING id", &[&p, &code]).await,
    }
    .map_err(pq("create owner"))?;
    let Some(row) = inserted else {
        // The other controller's insert has committed (ON CONFLICT waited for it), and this
        // statement's snapshot, taken after, sees it.
        let found = match project {
            None => tx.query_one("SELECT id FROM projects WHERE code = $1", &[&code]).await,
            Some(p) => tx.query_one("SELECT id FROM environments WHERE project_id = $1 AND code = $2", &[&p, &code]).await,
        }
        .map_err(pq("find owner"))?;
        return Ok(found.get(0));
    };
    let id: i64 = row.get(0);
    tx.execute(
        "INSERT INTO properties (level, owner_id, version, json) VALUES ($1, $2, 0, $3)",
        &[&level.as_str(), &id, &seal.seal(&properties_aad(level.as_str(), id, 0, "json"), b"{}")],
    )
    .await
    .map_err(pq("create owner properties"))?;
    tx.commit().await.map_err(pq("commit create owner"))?;
    Ok(id)
}

impl Catalog for PgStore {
    fn ensure_project(&self, code: &str) -> Result<i64, StoreError> {
        let code = code.to_string();
        self.with(move |client, seal| ensure_owner(client, seal, Level::Project, None, code))
    }

    fn ensure_environment(&self, project_id: i64, code: &str) -> Result<i64, StoreError> {
        let code = code.to_string();
        self.with(move |client, seal| ensure_owner(client, seal, Level::Environment, Some(project_id), code))
    }

    fn set_allow_parallel_changes(&self, project_id: i64, allow: bool) -> Result<(), StoreError> {
        self.with(move |client, _| async move {
            client.execute("UPDATE projects SET allow_parallel_changes = $2 WHERE id = $1", &[&project_id, &allow]).await.map_err(pq("update project settings"))?;
            Ok(())
        })
    }

    fn project_id(&self, code: &str) -> Result<i64, StoreError> {
        let code = code.to_string();
        self.with(move |client, _| async move {
            let row = client.query_opt("SELECT id FROM projects WHERE code = $1", &[&code]).await.map_err(pq("find project"))?;
            row.map(|r| r.get(0)).ok_or_else(|| StoreError::NotFound(format!("project {code:?}")))
        })
    }

    fn environment_id(&self, project_id: i64, code: &str) -> Result<i64, StoreError> {
        let code = code.to_string();
        self.with(move |client, _| async move {
            let row = client.query_opt("SELECT id FROM environments WHERE project_id = $1 AND code = $2", &[&project_id, &code]).await.map_err(pq("find environment"))?;
            row.map(|r| r.get(0)).ok_or_else(|| StoreError::NotFound(format!("environment {code:?}")))
        })
    }

    fn projects(&self) -> Result<Vec<ProjectRow>, StoreError> {
        self.with(move |client, _| async move {
            let rows = client
                .query(
                    "SELECT p.code, (SELECT COUNT(*) FROM environments e WHERE e.project_id = p.id),
                            (SELECT COUNT(*) FROM changes c WHERE c.project_id = p.id), p.allow_parallel_changes, p.created_at, p.archived
                     FROM projects p ORDER BY p.code",
                    &[],
                )
                .await
                .map_err(pq("list projects"))?;
            Ok(rows
                .iter()
                .map(|r| ProjectRow {
                    code: r.get(0),
                    environments: r.get(1),
                    changes: r.get(2),
                    allow_parallel_changes: r.get(3),
                    created_at: r.get(4),
                    archived: r.get(5),
                })
                .collect())
        })
    }

    fn environments(&self, project_id: i64) -> Result<Vec<EnvironmentRow>, StoreError> {
        self.with(move |client, _| async move {
            let rows = client
                .query("SELECT e.code, (SELECT COUNT(*) FROM changes c WHERE c.environment_id = e.id), e.created_at, e.archived FROM environments e WHERE e.project_id = $1 ORDER BY e.code", &[&project_id])
                .await
                .map_err(pq("list environments"))?;
            Ok(rows.iter().map(|r| EnvironmentRow { code: r.get(0), changes: r.get(1), created_at: r.get(2), archived: r.get(3) }).collect())
        })
    }

    fn project_archived(&self, project_id: i64) -> Result<bool, StoreError> {
        self.with(move |client, _| async move {
            let row = client.query_opt("SELECT archived FROM projects WHERE id = $1", &[&project_id]).await.map_err(pq("find project"))?;
            row.map(|r| r.get(0)).ok_or_else(|| StoreError::NotFound(format!("project {project_id}")))
        })
    }

    fn environment_archived(&self, environment_id: i64) -> Result<bool, StoreError> {
        self.with(move |client, _| async move {
            let row = client.query_opt("SELECT archived FROM environments WHERE id = $1", &[&environment_id]).await.map_err(pq("find environment"))?;
            row.map(|r| r.get(0)).ok_or_else(|| StoreError::NotFound(format!("environment {environment_id}")))
        })
    }

    fn set_project_archived(&self, project_id: i64, archived: bool) -> Result<(), StoreError> {
        self.with(move |client, _| async move {
            client.execute("UPDATE projects SET archived = $2 WHERE id = $1", &[&project_id, &archived]).await.map_err(pq("archive project"))?;
            Ok(())
        })
    }

    fn set_environment_archived(&self, environment_id: i64, archived: bool) -> Result<(), StoreError> {
        self.with(move |client, _| async move {
            client.execute("UPDATE environments SET archived = $2 WHERE id = $1", &[&environment_id, &archived]).await.map_err(pq("archive environment"))?;
            Ok(())
        })
    }

    fn delete_project(&self, project_id: i64) -> Result<Removal, StoreError> {
        self.with(move |mut client, _| async move {
            let tx = client.transaction().await.map_err(pq("begin delete project"))?;
            // The project's row locked first: a change being created in it waits, then fails.
            tx.execute("SELECT 1 FROM projects WHERE id = $1 FOR UPDATE", &[&project_id]).await.map_err(pq("delete project"))?;
            let changes: i64 = tx.query_one("SELECT count(*) FROM changes WHERE project_id = $1", &[&project_id]).await.map_err(pq("delete project"))?.get(0);
            if changes > 0 {
                return Ok(Removal::HasChanges(changes));
            }
            let env = Level::Environment.as_str();
            tx.execute("DELETE FROM properties WHERE level = $2 AND owner_id IN (SELECT id FROM environments WHERE project_id = $1)", &[&project_id, &env])
                .await
                .map_err(pq("delete project"))?;
            tx.execute("DELETE FROM environments WHERE project_id = $1", &[&project_id]).await.map_err(pq("delete project"))?;
            tx.execute("DELETE FROM properties WHERE level = $2 AND owner_id = $1", &[&project_id, &Level::Project.as_str()]).await.map_err(pq("delete project"))?;
            tx.execute("DELETE FROM projects WHERE id = $1", &[&project_id]).await.map_err(pq("delete project"))?;
            tx.commit().await.map_err(pq("commit delete project"))?;
            Ok(Removal::Removed)
        })
    }

    fn delete_environment(&self, environment_id: i64) -> Result<Removal, StoreError> {
        self.with(move |mut client, _| async move {
            let tx = client.transaction().await.map_err(pq("begin delete environment"))?;
            tx.execute("SELECT 1 FROM environments WHERE id = $1 FOR UPDATE", &[&environment_id]).await.map_err(pq("delete environment"))?;
            let changes: i64 = tx.query_one("SELECT count(*) FROM changes WHERE environment_id = $1", &[&environment_id]).await.map_err(pq("delete environment"))?.get(0);
            if changes > 0 {
                return Ok(Removal::HasChanges(changes));
            }
            tx.execute("DELETE FROM properties WHERE level = $2 AND owner_id = $1", &[&environment_id, &Level::Environment.as_str()])
                .await
                .map_err(pq("delete environment"))?;
            tx.execute("DELETE FROM environments WHERE id = $1", &[&environment_id]).await.map_err(pq("delete environment"))?;
            tx.commit().await.map_err(pq("commit delete environment"))?;
            Ok(Removal::Removed)
        })
    }

    fn properties(&self, level: Level, owner: i64) -> Result<PropertiesVersion, StoreError> {
        let (current, step_id, created_at) = self.current(level, owner)?;
        let json = json_of(current.doc.text(), || format!("{} properties v{}", level.as_str(), current.version))?;
        Ok(PropertiesVersion { version: current.version, json, step_id, created_at })
    }

    fn declaring_properties(&self, level: Level, owner: i64) -> Result<Map<String, Value>, StoreError> {
        Ok(declaring(&self.current(level, owner)?.0.doc))
    }

    fn properties_version(&self, level: Level, owner: i64, version: i64) -> Result<Map<String, Value>, StoreError> {
        let current = self.with(move |client, seal| async move { load(&client, &seal, level, owner, version).await })?;
        json_of(current.doc.text(), || format!("{} properties v{version}", level.as_str()))
    }

    fn properties_history_each(&self, level: Level, owner: i64, each: &mut dyn FnMut(PropertiesVersion)) -> Result<(), StoreError> {
        let rows = self.with(move |client, _| async move {
            let rows = client
                .query("SELECT version, json, patch, step_id, created_at FROM properties WHERE level = $1 AND owner_id = $2 ORDER BY version", &[&level.as_str(), &owner])
                .await
                .map_err(pq("list properties versions"))?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))).collect::<Vec<StoredVersion>>())
        })?;
        let mut doc = Map::new();
        for (version, json, patch, step_id, created_at) in rows {
            let what = || format!("{} properties v{version}", level.as_str());
            doc = match (json, patch) {
                (Some(json), _) => json_of(&self.seal.open_text(&properties_aad(level.as_str(), owner, version, "json"), &json)?, what)?,
                (None, Some(patch)) => apply_stored(doc, &self.seal.open_text(&properties_aad(level.as_str(), owner, version, "patch"), &patch)?, what)?,
                (None, None) => unreachable!("the schema's CHECK keeps a document or a patch"),
            };
            each(PropertiesVersion { version, json: doc.clone(), step_id, created_at });
        }
        Ok(())
    }

    fn set_properties(&self, level: Level, owner: i64, json: &Map<String, Value>) -> Result<i64, StoreError> {
        let json = Value::Object(json.clone());
        self.with(move |mut client, seal| async move {
            let tx = client.transaction().await.map_err(pq("begin set properties"))?;
            // One writer of a level's versions at a time, across controllers: the next version's
            // number and its patch are made from the version this transaction read.
            tx.execute("SELECT pg_advisory_xact_lock(hashtext($1), $2::INTEGER)", &[&level.as_str(), &(owner as i32)]).await.map_err(pq("lock properties"))?;
            let version: i64 = tx
                .query_one("SELECT MAX(version) FROM properties WHERE level = $1 AND owner_id = $2", &[&level.as_str(), &owner])
                .await
                .map_err(pq("read properties version"))?
                .get::<_, Option<i64>>(0)
                .ok_or_else(|| StoreError::NotFound(format!("{} {owner} properties", level.as_str())))?;
            let prev = load(&tx, &seal, level, owner, version).await?;
            let before: Value = serde_json::from_str(prev.doc.text()).map_err(|source| StoreError::Json { what: format!("{} properties", level.as_str()), source })?;
            let patch = serde_json::to_string(&opschain_runner::diff::diff(&before, &json)).expect("a patch serialises");
            let doc = opschain_runner::properties::splice::Document::parse(&json.to_string()).expect("a JSON object's text is a document");
            let (snapshot, _) = stored_form(&prev, &doc, Some(&patch));
            let next = version + 1;
            let (json, patch) = if snapshot {
                (Some(seal.seal(&properties_aad(level.as_str(), owner, next, "json"), doc.text().as_bytes())), None)
            } else {
                (None, Some(seal.seal(&properties_aad(level.as_str(), owner, next, "patch"), patch.as_bytes())))
            };
            tx.execute("INSERT INTO properties (level, owner_id, version, json, patch) VALUES ($1, $2, $3, $4, $5)", &[&level.as_str(), &owner, &next, &json, &patch])
                .await
                .map_err(pq("store properties version"))?;
            tx.commit().await.map_err(pq("commit set properties"))?;
            Ok(next)
        })
    }

    fn set_secrets(&self, name: &str, secrets: &Map<String, Value>) -> Result<(), StoreError> {
        let json = self.seal.seal(&secret_set_aad(name), Value::Object(secrets.clone()).to_string().as_bytes());
        let name = name.to_string();
        self.with(move |client, _| async move {
            client
                .execute(
                    "INSERT INTO secret_sets (name, json) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET json = excluded.json,
                     updated_at = to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')",
                    &[&name, &json],
                )
                .await
                .map_err(pq("store secret set"))?;
            Ok(())
        })
    }

    fn secrets(&self, name: &str) -> Result<Option<Map<String, Value>>, StoreError> {
        let owned = name.to_string();
        let sealed: Option<Vec<u8>> = self.with(move |client, _| async move {
            Ok(client.query_opt("SELECT json FROM secret_sets WHERE name = $1", &[&owned]).await.map_err(pq("read secret set"))?.map(|r| r.get(0)))
        })?;
        let Some(sealed) = sealed else { return Ok(None) };
        let json = self.seal.open_text(&secret_set_aad(name), &sealed)?;
        json_of(&json, || format!("secret set {name}")).map(Some)
    }

    fn secret_set_names(&self) -> Result<Vec<String>, StoreError> {
        self.with(move |client, _| async move {
            let rows = client.query("SELECT name FROM secret_sets ORDER BY name", &[]).await.map_err(pq("list secret sets"))?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::obj;
    use super::super::{pg_server, Store};
    use super::*;
    use serde_json::json;

    /// A PostgreSQL store on a new database of the test server, its key in `dir`.
    fn pg(dir: &Path) -> (String, PgStore) {
        let url = pg_server::database();
        let store = PgStore::connect(&url, dir, &StoreOptions::default()).unwrap();
        (url, store)
    }

    /// The catalogue's behaviour, run against each store.
    fn behaves(store: &dyn Catalog) {
        let p = store.ensure_project("web").unwrap();
        assert_eq!(store.ensure_project("web").unwrap(), p, "an existing project is found");
        let q = store.ensure_project("api").unwrap();
        assert_ne!(p, q);
        let dev = store.ensure_environment(p, "dev").unwrap();
        assert_eq!(store.ensure_environment(p, "dev").unwrap(), dev);
        let api_dev = store.ensure_environment(q, "dev").unwrap();
        assert_ne!(dev, api_dev, "environments are per project");
        assert_eq!(store.project_id("web").unwrap(), p);
        assert_eq!(store.environment_id(p, "dev").unwrap(), dev);
        assert!(matches!(store.project_id("nope"), Err(StoreError::NotFound(_))));
        assert!(matches!(store.environment_id(p, "nope"), Err(StoreError::NotFound(_))));
        store.set_allow_parallel_changes(q, true).unwrap();
        let projects = store.projects().unwrap();
        assert_eq!(
            projects.iter().map(|r| (r.code.as_str(), r.environments, r.changes, r.allow_parallel_changes)).collect::<Vec<_>>(),
            [("api", 1, 0, true), ("web", 1, 0, false)]
        );
        assert!(projects[0].created_at.ends_with('Z') && projects[0].created_at.contains('T'), "{}", projects[0].created_at);
        assert_eq!(store.environments(p).unwrap().iter().map(|e| e.code.as_str()).collect::<Vec<_>>(), ["dev"]);

        // Properties: 0 is empty; 120 versions cross a snapshot; every version reads back.
        assert_eq!(store.properties(Level::Project, p).unwrap().version, 0);
        let mut expected = vec![Map::new()];
        for i in 1..=120 {
            let mut doc = expected.last().unwrap().clone();
            doc.insert(format!("k{}", i % 7), json!({"i": i, "env": if i % 5 == 0 { json!({"A": i}) } else { json!(null) }}));
            if i % 11 == 0 {
                doc.remove(&format!("k{}", (i + 1) % 7));
            }
            assert_eq!(store.set_properties(Level::Project, p, &doc).unwrap(), i);
            expected.push(doc);
        }
        store.set_properties(Level::Environment, dev, &obj(json!({"opschain": {"env": {"X": "1"}}, "other": 2}))).unwrap();
        let latest = store.properties(Level::Project, p).unwrap();
        assert_eq!((latest.version, &latest.json, latest.step_id), (120, expected.last().unwrap(), None));
        for v in [0, 1, 57, 99, 100, 101, 120] {
            assert_eq!(&store.properties_version(Level::Project, p, v as i64).unwrap(), &expected[v], "version {v}");
        }
        let mut history = Vec::new();
        store.properties_history_each(Level::Project, p, &mut |v| history.push(v.json)).unwrap();
        assert_eq!(history, expected);
        assert_eq!(store.declaring_properties(Level::Environment, dev).unwrap(), obj(json!({"opschain": {"env": {"X": "1"}}})));
        assert!(matches!(store.properties_version(Level::Project, p, 121), Err(StoreError::NotFound(_))));

        // Archive and restore; delete what had no change, with its properties.
        store.set_environment_archived(dev, true).unwrap();
        assert!(store.environment_archived(dev).unwrap() && !store.project_archived(p).unwrap());
        store.set_project_archived(p, true).unwrap();
        assert!(store.projects().unwrap().iter().any(|r| r.code == "web" && r.archived));
        store.set_project_archived(p, false).unwrap();
        assert!(!store.project_archived(p).unwrap());
        assert!(matches!(store.delete_environment(api_dev).unwrap(), Removal::Removed));
        assert!(matches!(store.environment_id(q, "dev"), Err(StoreError::NotFound(_))));
        assert!(matches!(store.delete_project(q).unwrap(), Removal::Removed));
        assert!(matches!(store.project_id("api"), Err(StoreError::NotFound(_))));
        assert_eq!(store.projects().unwrap().len(), 1);

        // Secret sets: the default build set exists, empty; a set is replaced whole.
        assert_eq!(store.secrets(opschain_runner::exec::DEFAULT_BUILD_SECRET_SET).unwrap(), Some(Map::new()));
        store.set_secrets("s", &obj(json!({"A": "1", "B": "2"}))).unwrap();
        store.set_secrets("s", &obj(json!({"A": "3"}))).unwrap();
        assert_eq!(store.secrets("s").unwrap(), Some(obj(json!({"A": "3"}))));
        assert_eq!(store.secrets("none").unwrap(), None);
        assert_eq!(store.secret_set_names().unwrap(), [opschain_runner::exec::DEFAULT_BUILD_SECRET_SET, "s"]);
    }

    #[test]
    fn the_catalogue_behaves_the_same_on_sqlite_and_postgresql() {
        let dir = tempfile::tempdir().unwrap();
        behaves(&Store::open(&dir.path().join("sqlite")).unwrap());
        let (_, store) = pg(dir.path());
        behaves(&store);
    }

    #[test]
    fn pg_dump_holds_no_value_in_clear_and_the_key_is_checked_and_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let (url, store) = pg(dir.path());
        let p = store.ensure_project("p").unwrap();
        store.set_properties(Level::Project, p, &obj(json!({"db": {"password": "pg-prop-0c4e1f"}}))).unwrap();
        store.set_properties(Level::Project, p, &obj(json!({"db": {"password": "pg-prop-0c4e1f", "user": "pg-patch-a7d2"}}))).unwrap();
        store.set_secrets("s", &obj(json!({"TOKEN": "pg-secret-93b8"}))).unwrap();
        let dump = pg_server::dump(&url);
        assert!(dump.windows(b"CREATE TABLE public.properties".len()).any(|w| w == b"CREATE TABLE public.properties"), "the control: it is a dump");
        for value in ["pg-prop-0c4e1f", "pg-patch-a7d2", "pg-secret-93b8", "password"] {
            assert!(!dump.windows(value.len()).any(|w| w == value.as_bytes()), "{value} in clear in pg_dump");
        }
        drop(store);

        // A second controller with another key is refused by name; a missing key is not made.
        let other = dir.path().join("other.key");
        let e = PgStore::connect(&url, dir.path(), &StoreOptions { key_file: Some(other.clone()) }).unwrap_err();
        assert!(matches!(e, StoreError::Seal(SealError::MissingKey { .. })) && !other.exists(), "{e}");
        Seal::load_or_create(&other).unwrap();
        let e = PgStore::connect(&url, dir.path(), &StoreOptions { key_file: Some(other.clone()) }).unwrap_err();
        assert!(matches!(e, StoreError::Seal(SealError::WrongKey { .. })), "{e}");
        assert!(e.to_string().contains(&other.display().to_string()), "{e}");

        // Rotation: versions 0..2 of p, the build set and s.
        let store = PgStore::connect(&url, dir.path(), &StoreOptions::default()).unwrap();
        assert_eq!(store.rotate_key(&other).unwrap(), 5);
        let store = PgStore::connect(&url, dir.path(), &StoreOptions::default()).unwrap();
        assert_eq!(store.properties(Level::Project, p).unwrap().json, obj(json!({"db": {"password": "pg-prop-0c4e1f", "user": "pg-patch-a7d2"}})));
        assert_eq!(store.properties_version(Level::Project, p, 1).unwrap(), obj(json!({"db": {"password": "pg-prop-0c4e1f"}})));
        assert_eq!(store.secrets("s").unwrap(), Some(obj(json!({"TOKEN": "pg-secret-93b8"}))));
    }

    #[test]
    fn controllers_sharing_a_database_lose_no_version_and_make_each_owner_once() {
        let dir = tempfile::tempdir().unwrap();
        let (url, first) = pg(dir.path());
        let second = PgStore::connect(&url, dir.path(), &StoreOptions::default()).unwrap();
        let stores = [&first, &second];
        let ids: Vec<i64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let store = stores[i % 2];
                    s.spawn(move || {
                        let p = store.ensure_project("shared").unwrap();
                        for j in 0..10 {
                            let mut doc = store.properties(Level::Project, p).unwrap().json;
                            doc.insert(format!("w{i}_{j}"), json!(j));
                            store.set_properties(Level::Project, p, &doc).unwrap();
                        }
                        p
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "one project: {ids:?}");
        let mut versions = Vec::new();
        first.properties_history_each(Level::Project, ids[0], &mut |v| versions.push(v.version)).unwrap();
        assert_eq!(versions, (0..=80).collect::<Vec<i64>>(), "every write a version of its own, none lost");
    }
}
