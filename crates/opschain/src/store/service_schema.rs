//! The columns the server added to tables older than it, added in place to a database from
//! before them (run when the store opens, in its set-up transaction; a no-op once they exist):
//! * `projects.name`, `environments.name`: display names (`NULL`: the code is shown);
//! * `changes.created_by`, `changes.git_remote_name`: who created a change, and the git remote it
//!   came from (its metadata is the `metadata` column `change create --metadata-path` fills);
//! * `changes.log_lines`, `step_log_chunks.change_id` and `step_log_chunks.first_line`: each log
//!   line's id in its change (see `line_ids`); the lines already stored are numbered in their
//!   order when the columns are added.
//!
//! And the indexes the API's filters and pages use.

use rusqlite::Connection;

/// Each added column: its table, name and declaration.
const COLUMNS: &[(&str, &str, &str)] = &[
    ("projects", "name", "TEXT"),
    ("environments", "name", "TEXT"),
    ("changes", "created_by", "TEXT"),
    ("changes", "git_remote_name", "TEXT"),
    ("changes", "log_lines", "INTEGER NOT NULL DEFAULT 0"),
    ("step_log_chunks", "change_id", "INTEGER"),
    ("step_log_chunks", "first_line", "INTEGER"),
];

/// Numbers the stored log lines of every change, in chunk order, from 1; and sets each change's
/// count. Run when the line-id columns were just added (every chunk is then unnumbered).
const NUMBER_LINES: &str = r#"
WITH numbered AS (
    SELECT c.id, s.change_id AS change_id, SUM(c.lines) OVER (PARTITION BY s.change_id ORDER BY c.id) - c.lines + 1 AS first
    FROM step_log_chunks c JOIN steps s ON s.id = c.step_id
)
UPDATE step_log_chunks SET change_id = numbered.change_id, first_line = numbered.first FROM numbered WHERE numbered.id = step_log_chunks.id;
UPDATE changes SET log_lines = COALESCE((SELECT MAX(first_line + lines - 1) FROM step_log_chunks WHERE change_id = changes.id), 0);
"#;

/// The indexes of the added columns and the API's filters.
const INDEXES: &str = r#"
CREATE INDEX IF NOT EXISTS log_chunks_by_line ON step_log_chunks (change_id, first_line);
CREATE INDEX IF NOT EXISTS changes_by_status ON changes (status, id);
CREATE INDEX IF NOT EXISTS changes_by_project ON changes (project_id, id);
CREATE INDEX IF NOT EXISTS changes_by_environment ON changes (environment_id, id);
CREATE INDEX IF NOT EXISTS events_by_kind ON events (kind, id);
CREATE INDEX IF NOT EXISTS events_by_user ON events (username, id);
"#;

/// Adds what is missing (see the module documentation).
pub(super) fn migrate_service(conn: &Connection) -> rusqlite::Result<()> {
    let mut numbered_now = false;
    for (table, column, declaration) in COLUMNS {
        let has: bool = conn.query_row(&format!("SELECT count(*) FROM pragma_table_info('{table}') WHERE name = ?1"), [column], |r| r.get(0))?;
        if !has {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {declaration}"))?;
            numbered_now |= *column == "first_line";
        }
    }
    // Lines moved from an older store's row-per-line table are unnumbered too.
    let unnumbered: bool = conn.query_row("SELECT EXISTS (SELECT 1 FROM step_log_chunks WHERE first_line IS NULL)", [], |r| r.get(0))?;
    if numbered_now || unnumbered {
        conn.execute_batch(NUMBER_LINES)?;
    }
    conn.execute_batch(INDEXES)
}
