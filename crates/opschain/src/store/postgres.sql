-- The PostgreSQL store's schema, version 1 (see postgres.rs: migrations are run in order when a
-- store connects, each once, recorded in schema_migrations). Timestamps are UTC ISO 8601 text,
-- as the SQLite store writes them, so both read the same. Sealed values are BYTEA (seal.rs).
CREATE TABLE projects (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code TEXT NOT NULL UNIQUE,
    allow_parallel_changes BOOLEAN NOT NULL DEFAULT FALSE,
    archived BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TEXT NOT NULL DEFAULT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
);
CREATE TABLE environments (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id BIGINT NOT NULL REFERENCES projects(id),
    code TEXT NOT NULL,
    archived BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TEXT NOT NULL DEFAULT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
    UNIQUE (project_id, code)
);
CREATE TABLE properties (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    level TEXT NOT NULL CHECK (level IN ('project', 'environment')),
    owner_id BIGINT NOT NULL,
    version BIGINT NOT NULL,
    json BYTEA,
    patch BYTEA,
    step_id BIGINT,
    created_at TEXT NOT NULL DEFAULT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
    CHECK (json IS NOT NULL OR patch IS NOT NULL),
    UNIQUE (level, owner_id, version)
);
CREATE TABLE secret_sets (
    name TEXT PRIMARY KEY,
    json BYTEA NOT NULL,
    updated_at TEXT NOT NULL DEFAULT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
);
CREATE TABLE store_meta (
    name TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
CREATE TABLE changes (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id BIGINT NOT NULL REFERENCES projects(id),
    environment_id BIGINT NOT NULL REFERENCES environments(id),
    action TEXT NOT NULL,
    repo TEXT NOT NULL,
    git_rev TEXT NOT NULL,
    commit_sha TEXT NOT NULL,
    backend TEXT NOT NULL,
    secret_set TEXT,
    folder TEXT,
    status TEXT NOT NULL,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    controller_pid BIGINT,
    created_at TEXT NOT NULL DEFAULT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
    started_at TEXT,
    finished_at TEXT
);
