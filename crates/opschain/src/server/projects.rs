//! `/api/projects`, their environments and their git remotes.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::json;

use super::auth::{CurrentUser, Operator};
use super::jsonapi::{self, check_code, read_document, resource, ApiError, Request};
use super::state::AppState;
use crate::store::{GitRemoteRow, NamedRow};

/// The attributes a project or environment is created with.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewNamed {
    code: String,
    name: Option<String>,
}

/// The attributes a git remote is added with.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRemote {
    name: String,
    url: String,
}

/// A project or environment resource.
fn named(kind: &str, row: &NamedRow) -> serde_json::Value {
    resource(kind, &row.code, json!({"code": row.code, "name": row.name, "created_at": row.created_at}))
}

/// A git remote resource (its id is its name: unique in its project).
fn remote(row: &GitRemoteRow) -> serde_json::Value {
    resource("git_remotes", &row.name, json!({"name": row.name, "url": row.url, "created_at": row.created_at}))
}

/// The id of project `code`, 404 when there is none.
pub(super) async fn project_id(state: &AppState, code: &str) -> Result<i64, ApiError> {
    let code = code.to_string();
    state.db(move |s| s.project_id(&code)).await
}

/// `GET /api/projects`.
pub async fn list_projects(State(state): State<AppState>, _user: CurrentUser) -> Result<Response, ApiError> {
    let rows = state.db(|s| s.named_projects()).await?;
    Ok(jsonapi::ok(rows.iter().map(|r| named("projects", r)).collect()))
}

/// `POST /api/projects`: 201 with the project; 409 when the code is taken.
pub async fn create_project(State(state): State<AppState>, Operator(user): Operator, body: Body) -> Result<Response, ApiError> {
    let request: Request<NewNamed> = read_document(body, state.settings.body_limit).await?;
    let new = request.data.expect_type("projects")?;
    check_code(&new.code, "/data/attributes/code")?;
    let name = new.name.unwrap_or_else(|| new.code.clone());
    let row = state.db(move |s| s.create_project(&new.code, &name, &user.name)).await?;
    Ok(jsonapi::created(named("projects", &row)))
}

/// `GET /api/projects/{code}/environments`.
pub async fn list_environments(State(state): State<AppState>, _user: CurrentUser, Path(code): Path<String>) -> Result<Response, ApiError> {
    let project = project_id(&state, &code).await?;
    let rows = state.db(move |s| s.named_environments(project)).await?;
    Ok(jsonapi::ok(rows.iter().map(|r| named("environments", r)).collect()))
}

/// `POST /api/projects/{code}/environments`: 201 with the environment.
pub async fn create_environment(State(state): State<AppState>, Operator(user): Operator, Path(code): Path<String>, body: Body) -> Result<Response, ApiError> {
    let request: Request<NewNamed> = read_document(body, state.settings.body_limit).await?;
    let new = request.data.expect_type("environments")?;
    check_code(&new.code, "/data/attributes/code")?;
    let project = project_id(&state, &code).await?;
    let name = new.name.unwrap_or_else(|| new.code.clone());
    let row = state.db(move |s| s.create_environment(project, &code, &new.code, &name, &user.name)).await?;
    Ok(jsonapi::created(named("environments", &row)))
}

/// `GET /api/projects/{code}/git_remotes`.
pub async fn list_remotes(State(state): State<AppState>, _user: CurrentUser, Path(code): Path<String>) -> Result<Response, ApiError> {
    let project = project_id(&state, &code).await?;
    let rows = state.db(move |s| s.git_remotes(project)).await?;
    Ok(jsonapi::ok(rows.iter().map(remote).collect()))
}

/// `POST /api/projects/{code}/git_remotes`: 201 with the remote. The URL is cloned when a change
/// first uses it.
pub async fn create_remote(State(state): State<AppState>, Operator(user): Operator, Path(code): Path<String>, body: Body) -> Result<Response, ApiError> {
    let request: Request<NewRemote> = read_document(body, state.settings.body_limit).await?;
    let new = request.data.expect_type("git_remotes")?;
    check_code(&new.name, "/data/attributes/name")?;
    if new.url.trim().is_empty() || new.url.starts_with('-') {
        return Err(ApiError::invalid("/data/attributes/url", "the URL must be a path or a URL git takes"));
    }
    let project = project_id(&state, &code).await?;
    let row = state.db(move |s| s.add_git_remote(project, &new.name, &new.url, &user.name)).await?;
    Ok(jsonapi::created(remote(&row)))
}
