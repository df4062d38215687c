//! Projects and environments: the owners of properties and changes.

use rusqlite::{params, OptionalExtension};

use super::properties::insert_first_version;
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
    /// Whether it is archived (takes no new change).
    pub archived: bool,
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
    /// Whether it is archived (takes no new change).
    pub archived: bool,
    /// When it was created.
    pub created_at: String,
}

/// What [`Store::delete_project`] and [`Store::delete_environment`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// It is gone, with its properties (and a project's environments).
    Removed,
    /// Nothing was removed: changes ran in it (their history would lose its owner); archive it
    /// instead.
    HasChanges(i64),
}

/// Adds the `archived` columns to a database made before they existed.
pub(super) fn migrate_projects(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    for table in ["projects", "environments"] {
        let has: bool = conn.query_row(&format!("SELECT count(*) FROM pragma_table_info('{table}') WHERE name = 'archived'"), [], |r| r.get(0))?;
        if !has {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN archived INTEGER NOT NULL DEFAULT 0"))?;
        }
    }
    Ok(())
}

impl Store {
    /// The id of project `code`, creating it (with empty properties, version 0) when absent.
    pub fn ensure_project(&self, code: &str) -> Result<i64, StoreError> {
        let code = code.to_string();
        let seal = std::sync::Arc::clone(&self.seal);
        self.write(move |tx| {
            let id = tx.query_row("SELECT id FROM projects WHERE code = ?1", [&code], |r| r.get(0)).optional().map_err(q("find project"))?;
            let id = match id {
                Some(id) => id,
                None => {
                    tx.execute("INSERT INTO projects (code) VALUES (?1)", [&code]).map_err(q("create project"))?;
                    let id = tx.last_insert_rowid();
                    insert_first_version(tx, &seal, Level::Project, id)?;
                    id
                }
            };
            Ok(id)
        })
    }

    /// The id of environment `code` of a project, creating it when absent.
    pub fn ensure_environment(&self, project_id: i64, code: &str) -> Result<i64, StoreError> {
        let code = code.to_string();
        let seal = std::sync::Arc::clone(&self.seal);
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
                    insert_first_version(tx, &seal, Level::Environment, id)?;
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

    /// Archives (or, with `archived` false, restores) a project: an archived one takes no new
    /// change.
    pub fn set_project_archived(&self, project_id: i64, archived: bool) -> Result<(), StoreError> {
        self.write(move |tx| {
            tx.execute("UPDATE projects SET archived = ?2 WHERE id = ?1", params![project_id, archived]).map_err(q("archive project"))?;
            Ok(())
        })
    }

    /// Archives (or restores) an environment.
    pub fn set_environment_archived(&self, environment_id: i64, archived: bool) -> Result<(), StoreError> {
        self.write(move |tx| {
            tx.execute("UPDATE environments SET archived = ?2 WHERE id = ?1", params![environment_id, archived]).map_err(q("archive environment"))?;
            Ok(())
        })
    }

    /// Whether a project is archived.
    pub fn project_archived(&self, project_id: i64) -> Result<bool, StoreError> {
        self.conn().query_row("SELECT archived FROM projects WHERE id = ?1", [project_id], |r| r.get(0)).map_err(q("find project"))
    }

    /// Whether an environment is archived.
    pub fn environment_archived(&self, environment_id: i64) -> Result<bool, StoreError> {
        self.conn().query_row("SELECT archived FROM environments WHERE id = ?1", [environment_id], |r| r.get(0)).map_err(q("find environment"))
    }

    /// Deletes a project that never had a change, with its environments and every version of
    /// their properties, in one transaction; one that had changes is left whole.
    pub fn delete_project(&self, project_id: i64) -> Result<Removal, StoreError> {
        self.write(move |tx| {
            let changes: i64 = tx.query_row("SELECT count(*) FROM changes WHERE project_id = ?1", [project_id], |r| r.get(0)).map_err(q("delete project"))?;
            if changes > 0 {
                return Ok(Removal::HasChanges(changes));
            }
            tx.execute(
                "DELETE FROM properties WHERE level = ?2 AND owner_id IN (SELECT id FROM environments WHERE project_id = ?1)",
                params![project_id, Level::Environment],
            )
            .map_err(q("delete project"))?;
            tx.execute("DELETE FROM environments WHERE project_id = ?1", [project_id]).map_err(q("delete project"))?;
            tx.execute("DELETE FROM properties WHERE level = ?2 AND owner_id = ?1", params![project_id, Level::Project]).map_err(q("delete project"))?;
            tx.execute("DELETE FROM projects WHERE id = ?1", [project_id]).map_err(q("delete project"))?;
            Ok(Removal::Removed)
        })
    }

    /// Deletes an environment that never had a change, with every version of its properties;
    /// one that had changes is left whole.
    pub fn delete_environment(&self, environment_id: i64) -> Result<Removal, StoreError> {
        self.write(move |tx| {
            let changes: i64 = tx.query_row("SELECT count(*) FROM changes WHERE environment_id = ?1", [environment_id], |r| r.get(0)).map_err(q("delete environment"))?;
            if changes > 0 {
                return Ok(Removal::HasChanges(changes));
            }
            tx.execute("DELETE FROM properties WHERE level = ?2 AND owner_id = ?1", params![environment_id, Level::Environment]).map_err(q("delete environment"))?;
            tx.execute("DELETE FROM environments WHERE id = ?1", [environment_id]).map_err(q("delete environment"))?;
            Ok(Removal::Removed)
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
                        (SELECT COUNT(*) FROM changes c WHERE c.project_id = p.id), p.allow_parallel_changes, p.archived, p.created_at
                 FROM projects p ORDER BY p.code",
            )
            .map_err(q("list projects"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(ProjectRow {
                    code: r.get(0)?,
                    environments: r.get(1)?,
                    changes: r.get(2)?,
                    allow_parallel_changes: r.get(3)?,
                    archived: r.get(4)?,
                    created_at: r.get(5)?,
                })
            })
            .map_err(q("list projects"))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(q("list projects"))
    }

    /// Every environment of a project, by code.
    pub fn environments(&self, project_id: i64) -> Result<Vec<EnvironmentRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT e.code, (SELECT COUNT(*) FROM changes c WHERE c.environment_id = e.id), e.archived, e.created_at
                 FROM environments e WHERE e.project_id = ?1 ORDER BY e.code",
            )
            .map_err(q("list environments"))?;
        let rows = stmt
            .query_map([project_id], |r| Ok(EnvironmentRow { code: r.get(0)?, changes: r.get(1)?, archived: r.get(2)?, created_at: r.get(3)? }))
            .map_err(q("list environments"))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(q("list environments"))
    }
}
