//! Projects and environments: the owners of properties and changes.

use rusqlite::{params, OptionalExtension};

use super::{q, Level, Store, StoreError};

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

impl Store {
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
                    tx.execute("INSERT INTO properties (level, owner_id, version, json) VALUES (?2, ?1, 0, '{}')", params![id, Level::Project])
                        .map_err(q("create project properties"))?;
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
                    tx.execute("INSERT INTO properties (level, owner_id, version, json) VALUES (?2, ?1, 0, '{}')", params![id, Level::Environment])
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
            tx.execute("UPDATE projects SET allow_parallel_changes = ?2 WHERE id = ?1", params![project_id, allow]).map_err(q("update project settings"))?;
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
        let rows = stmt.query_map([project_id], |r| Ok(EnvironmentRow { code: r.get(0)?, changes: r.get(1)?, created_at: r.get(2)? })).map_err(q("list environments"))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(q("list environments"))
    }
}
