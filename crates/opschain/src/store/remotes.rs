//! What the server adds to projects and environments: their display names, and a project's git
//! remotes (the repositories the server clones for its changes).

use rusqlite::{params, OptionalExtension};

use super::events::{record, NewEvent};
use super::properties::insert_first_version;
use super::{q, Level, Store, StoreError};

/// A project's git remote.
#[derive(Debug, Clone)]
pub struct GitRemoteRow {
    /// The remote's name, unique in its project.
    pub name: String,
    /// What `git clone` is given: a local path or any URL git takes.
    pub url: String,
    /// When it was added.
    pub created_at: String,
}

/// A project or environment as the API shows it.
#[derive(Debug, Clone)]
pub struct NamedRow {
    /// The code.
    pub code: String,
    /// The display name (the code when none was given).
    pub name: String,
    /// When it was created.
    pub created_at: String,
}

impl Store {
    /// Creates project `code` named `name` (with empty properties, version 0), recording who did
    /// it; fails with [`StoreError::Exists`] when the code is taken.
    pub fn create_project(&self, code: &str, name: &str, by: &str) -> Result<NamedRow, StoreError> {
        let (code, name, by) = (code.to_string(), name.to_string(), by.to_string());
        let seal = std::sync::Arc::clone(&self.seal);
        self.write(move |tx| {
            let taken: bool = tx.query_row("SELECT count(*) FROM projects WHERE code = ?1", [&code], |r| r.get(0)).map_err(q("find project"))?;
            if taken {
                return Err(StoreError::Exists(format!("project {code:?}")));
            }
            tx.execute("INSERT INTO projects (code, name) VALUES (?1, ?2)", params![code, name]).map_err(q("create project"))?;
            let id = tx.last_insert_rowid();
            insert_first_version(tx, &seal, Level::Project, id)?;
            record(tx, &NewEvent { username: Some(&by), kind: "project.create", target: Some(&format!("project/{code}")), detail: serde_json::json!({"name": name}) })?;
            let created_at = tx.query_row("SELECT created_at FROM projects WHERE id = ?1", [id], |r| r.get(0)).map_err(q("read project"))?;
            Ok(NamedRow { code, name, created_at })
        })
    }

    /// Creates environment `code` named `name` in the project `project_id` (its code
    /// `project_code`), recording who did it; fails with [`StoreError::Exists`] when the code is
    /// taken in the project.
    pub fn create_environment(&self, project_id: i64, project_code: &str, code: &str, name: &str, by: &str) -> Result<NamedRow, StoreError> {
        let (project_code, code, name, by) = (project_code.to_string(), code.to_string(), name.to_string(), by.to_string());
        let seal = std::sync::Arc::clone(&self.seal);
        self.write(move |tx| {
            let taken: bool = tx
                .query_row("SELECT count(*) FROM environments WHERE project_id = ?1 AND code = ?2", params![project_id, code], |r| r.get(0))
                .map_err(q("find environment"))?;
            if taken {
                return Err(StoreError::Exists(format!("environment {code:?} of project {project_code:?}")));
            }
            tx.execute("INSERT INTO environments (project_id, code, name) VALUES (?1, ?2, ?3)", params![project_id, code, name]).map_err(q("create environment"))?;
            let id = tx.last_insert_rowid();
            insert_first_version(tx, &seal, Level::Environment, id)?;
            let target = format!("project/{project_code}/environment/{code}");
            record(tx, &NewEvent { username: Some(&by), kind: "environment.create", target: Some(&target), detail: serde_json::json!({"name": name}) })?;
            let created_at = tx.query_row("SELECT created_at FROM environments WHERE id = ?1", [id], |r| r.get(0)).map_err(q("read environment"))?;
            Ok(NamedRow { code, name, created_at })
        })
    }

    /// Every project with its name, by code.
    pub fn named_projects(&self) -> Result<Vec<NamedRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT code, COALESCE(name, code), created_at FROM projects ORDER BY code").map_err(q("list projects"))?;
        let rows = stmt.query_map([], |r| Ok(NamedRow { code: r.get(0)?, name: r.get(1)?, created_at: r.get(2)? })).map_err(q("list projects"))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(q("list projects"))
    }

    /// Every environment of a project with its name, by code.
    pub fn named_environments(&self, project_id: i64) -> Result<Vec<NamedRow>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT code, COALESCE(name, code), created_at FROM environments WHERE project_id = ?1 ORDER BY code").map_err(q("list environments"))?;
        let rows = stmt.query_map([project_id], |r| Ok(NamedRow { code: r.get(0)?, name: r.get(1)?, created_at: r.get(2)? })).map_err(q("list environments"))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(q("list environments"))
    }

    /// Adds a git remote to a project; fails with [`StoreError::Exists`] when the name is taken.
    pub fn add_git_remote(&self, project_id: i64, name: &str, url: &str, by: &str) -> Result<GitRemoteRow, StoreError> {
        let (name, url, by) = (name.to_string(), url.to_string(), by.to_string());
        self.write(move |tx| {
            let taken: bool = tx
                .query_row("SELECT count(*) FROM git_remotes WHERE project_id = ?1 AND name = ?2", params![project_id, name], |r| r.get(0))
                .map_err(q("find git remote"))?;
            if taken {
                return Err(StoreError::Exists(format!("git remote {name:?}")));
            }
            tx.execute("INSERT INTO git_remotes (project_id, name, url) VALUES (?1, ?2, ?3)", params![project_id, name, url]).map_err(q("add git remote"))?;
            let created_at = tx.query_row("SELECT created_at FROM git_remotes WHERE id = ?1", [tx.last_insert_rowid()], |r| r.get(0)).map_err(q("read git remote"))?;
            record(tx, &NewEvent { username: Some(&by), kind: "git_remote.create", target: Some(&format!("git_remote/{name}")), detail: serde_json::json!({"url": url}) })?;
            Ok(GitRemoteRow { name, url, created_at })
        })
    }

    /// Every git remote of a project, by name.
    pub fn git_remotes(&self, project_id: i64) -> Result<Vec<GitRemoteRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT name, url, created_at FROM git_remotes WHERE project_id = ?1 ORDER BY name").map_err(q("list git remotes"))?;
        let rows = stmt.query_map([project_id], |r| Ok(GitRemoteRow { name: r.get(0)?, url: r.get(1)?, created_at: r.get(2)? })).map_err(q("list git remotes"))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(q("list git remotes"))
    }

    /// A project's git remote by name, if any.
    pub fn git_remote(&self, project_id: i64, name: &str) -> Result<Option<GitRemoteRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT name, url, created_at FROM git_remotes WHERE project_id = ?1 AND name = ?2").map_err(q("find git remote"))?;
        stmt.query_row(params![project_id, name], |r| Ok(GitRemoteRow { name: r.get(0)?, url: r.get(1)?, created_at: r.get(2)? })).optional().map_err(q("find git remote"))
    }
}
