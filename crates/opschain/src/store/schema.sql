CREATE TABLE IF NOT EXISTS projects (
    id INTEGER PRIMARY KEY,
    code TEXT NOT NULL UNIQUE,
    allow_parallel_changes INTEGER NOT NULL DEFAULT 0,
    -- An archived project takes no new change; its history stays.
    archived INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);
CREATE TABLE IF NOT EXISTS environments (
    id INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL REFERENCES projects(id),
    code TEXT NOT NULL,
    -- An archived environment takes no new change; its history stays.
    archived INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    UNIQUE (project_id, code)
);
CREATE TABLE IF NOT EXISTS properties (
    id INTEGER PRIMARY KEY,
    level TEXT NOT NULL CHECK (level IN ('project', 'environment')),
    owner_id INTEGER NOT NULL,
    version INTEGER NOT NULL,
    -- The document (a snapshot) and the diff from the version before, each encrypted (a BLOB,
    -- see seal.rs); TEXT only in a database from before encryption, encrypted when opened.
    json TEXT,
    patch TEXT,
    step_id INTEGER REFERENCES steps(id),
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    CHECK (json IS NOT NULL OR patch IS NOT NULL),
    UNIQUE (level, owner_id, version)
);
CREATE TABLE IF NOT EXISTS secret_sets (
    name TEXT PRIMARY KEY,
    -- The set's JSON object, encrypted as the properties are.
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
    -- The OpsChain folder of the repository (.opschain, .mintpress); NULL in a change from before
    -- it was stored (its retry takes the command line's).
    folder TEXT,
    -- The change's metadata (`change create --metadata-path`), a JSON object's text; NULL: none.
    metadata TEXT,
    -- The versions of the project's and the environment's properties when the change first
    -- started: the point-in-time copy `change show-properties` shows. NULL until it starts.
    project_version INTEGER,
    environment_version INTEGER,
    status TEXT NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    controller_pid INTEGER,
    -- Why the change ended as it did, when the steps do not say it (its controller was lost).
    reason TEXT,
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
-- What the store keeps about itself: `key_check`, a known value encrypted with the database's key
-- (see seal.rs), by which a wrong key file is refused on open.
CREATE TABLE IF NOT EXISTS store_meta (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
-- The server's users (`opschain user`), their sessions (kept by their token's digest), the audit
-- trail, and each project's git remotes.
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    password_hash TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);
CREATE TABLE IF NOT EXISTS sessions (
    token_digest TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    expires_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    username TEXT,
    kind TEXT NOT NULL,
    target TEXT,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS git_remotes (
    id INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    UNIQUE (project_id, name)
);
