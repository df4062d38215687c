//! `/api/projects/{code}/properties`, `/api/projects/{code}/environments/{env}/properties` and
//! `/api/properties_versions`.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde_json::{json, Map, Value};

use super::auth::{CurrentUser, Operator};
use super::jsonapi::{self, read_document, resource, ApiError, Request};
use super::paging::{page_size, Params};
use super::projects::project_id;
use super::state::AppState;
use crate::store::{Level, PropertiesEdit};

/// The attributes of a properties document.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Properties {
    data: Map<String, Value>,
    version: Option<i64>,
}

/// The level and owner a properties path names, and its name in the audit trail; 404 when the
/// project or environment does not exist.
async fn owner(state: &AppState, project: &str, environment: Option<&str>) -> Result<(Level, i64, String), ApiError> {
    let project_id = project_id(state, project).await?;
    match environment {
        None => Ok((Level::Project, project_id, format!("project/{project}/properties"))),
        Some(env) => {
            let code = env.to_string();
            let id = state.db(move |s| s.environment_id(project_id, &code)).await?;
            Ok((Level::Environment, id, format!("project/{project}/environment/{env}/properties")))
        }
    }
}

/// A properties resource (its id names the level and owner).
fn properties_resource(target: &str, data: Map<String, Value>, version: i64) -> Value {
    resource("properties", target, json!({"data": data, "version": version}))
}

/// `GET` of a level's current properties.
async fn get(state: AppState, project: String, environment: Option<String>) -> Result<Response, ApiError> {
    let (level, owner, target) = owner(&state, &project, environment.as_deref()).await?;
    let current = state.db(move |s| s.properties(level, owner)).await?;
    Ok(jsonapi::ok(properties_resource(&target, current.json, current.version)))
}

/// `PUT` of a level's properties: a new version; 409 when `version` is given and is not the
/// current one.
async fn put(state: AppState, user: String, project: String, environment: Option<String>, body: Body) -> Result<Response, ApiError> {
    let request: Request<Properties> = read_document(body, state.settings.properties_limit).await?;
    let new = request.data.expect_type("properties")?;
    let (level, owner, target) = owner(&state, &project, environment.as_deref()).await?;
    let edit_target = target.clone();
    let data = new.data;
    let expected = new.version;
    let version = state
        .db(move |s| s.set_properties_checked(level, owner, &data, PropertiesEdit { expected_version: expected, by: &user, target: &edit_target }).map(|v| (v, data)))
        .await?;
    Ok(jsonapi::ok(properties_resource(&target, version.1, version.0)))
}

/// `GET /api/projects/{code}/properties`.
pub async fn get_project(State(state): State<AppState>, _user: CurrentUser, Path(code): Path<String>) -> Result<Response, ApiError> {
    get(state, code, None).await
}

/// `PUT /api/projects/{code}/properties`.
pub async fn put_project(State(state): State<AppState>, Operator(user): Operator, Path(code): Path<String>, body: Body) -> Result<Response, ApiError> {
    put(state, user.name, code, None, body).await
}

/// `GET /api/projects/{code}/environments/{env}/properties`.
pub async fn get_environment(State(state): State<AppState>, _user: CurrentUser, Path((code, env)): Path<(String, String)>) -> Result<Response, ApiError> {
    get(state, code, Some(env)).await
}

/// `PUT /api/projects/{code}/environments/{env}/properties`.
pub async fn put_environment(State(state): State<AppState>, Operator(user): Operator, Path((code, env)): Path<(String, String)>, body: Body) -> Result<Response, ApiError> {
    put(state, user.name, code, Some(env), body).await
}

/// `GET /api/properties_versions`: `filter[project_code_eq]`, `filter[environment_code_eq]`,
/// `page[size]` (default 10, at most 1,000); newest first.
pub async fn versions(State(state): State<AppState>, _user: CurrentUser, Query(params): Query<HashMap<String, String>>) -> Result<Response, ApiError> {
    let params = Params::new(params, &["filter[project_code_eq]", "filter[environment_code_eq]", "page[size]"])?;
    let size = page_size(&params, 10)?;
    let project = params.get("filter[project_code_eq]").map(str::to_string);
    let environment = params.get("filter[environment_code_eq]").map(str::to_string);
    let rows = state.db(move |s| s.properties_versions(project.as_deref(), environment.as_deref(), size)).await?;
    let data: Vec<Value> = rows
        .iter()
        .map(|v| {
            let owner = match &v.environment_code {
                Some(env) => format!("{}/{env}", v.project_code),
                None => v.project_code.clone(),
            };
            resource(
                "properties_versions",
                format!("{}/{owner}/{}", v.level.as_str(), v.version),
                json!({"level": v.level.as_str(), "project_code": v.project_code, "environment_code": v.environment_code, "version": v.version, "step_id": v.step_id, "created_at": v.created_at}),
            )
        })
        .collect();
    Ok(jsonapi::ok(Value::Array(data)))
}
