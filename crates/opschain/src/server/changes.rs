//! `/api/changes`: create (queued for the workers), list (filtered, sorted, paged in SQL), show
//! (with its steps), cancel and retry.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde_json::{json, Map, Value};

use super::auth::{CurrentUser, Operator};
use super::clones::fetch_and_resolve;
use super::jsonapi::{self, read_document, resource, ApiError, Request};
use super::paging::{page_size, Params};
use super::state::AppState;
use crate::status::ChangeStatus;
use crate::store::{ChangeAuthor, ChangeFilter, ChangeSort, ChangeSummary, Claim, NewChangeRow, StepRow, StoreError};

/// The attributes a change is created with.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewChange {
    project_code: String,
    environment_code: String,
    action: String,
    git_remote_name: String,
    #[serde(default = "head")]
    git_rev: String,
    #[serde(default)]
    metadata: Map<String, Value>,
}

/// The default revision.
fn head() -> String {
    "HEAD".into()
}

/// A change resource.
pub fn change_resource(c: &ChangeSummary) -> Value {
    let mut r = resource(
        "changes",
        c.id,
        json!({
            "project_code": c.project_code,
            "environment_code": c.environment_code,
            "action": c.action,
            "git_remote_name": c.git_remote_name,
            "git_rev": c.git_rev,
            "metadata": c.metadata,
            "status": c.status.as_str(),
            "commit_sha": c.commit_sha,
            "created_by": c.created_by,
            "created_at": c.created_at,
            "started_at": c.started_at,
            "finished_at": c.finished_at,
            "backend": c.backend.as_str(),
        }),
    );
    r["links"] = json!({"self": format!("/api/changes/{}", c.id), "log_lines": format!("/api/changes/{}/log_lines", c.id)});
    r
}

/// A step resource.
fn step_resource(change_id: i64, s: &StepRow) -> Value {
    let mut r = resource(
        "steps",
        s.id,
        json!({
            "action": s.action,
            "status": s.status.as_str(),
            "position": s.position,
            "parent_id": s.parent_id,
            "child_execution_strategy": s.child_strategy,
            "exit_status": s.exit_status,
            "message": s.message,
            "started_at": s.started_at,
            "finished_at": s.finished_at,
            "duration_secs": s.duration_secs,
        }),
    );
    let parent = s.parent_id.map(|p| json!({"type": "steps", "id": p.to_string()}));
    r["relationships"] = json!({"parent": {"data": parent}, "change": {"data": {"type": "changes", "id": change_id.to_string()}}});
    r
}

/// `POST /api/changes`: 201 with the change, `pending` until a worker takes it.
pub async fn create(State(state): State<AppState>, Operator(user): Operator, body: Body) -> Result<Response, ApiError> {
    let request: Request<NewChange> = read_document(body, state.settings.body_limit).await?;
    let new = request.data.expect_type("changes")?;
    if new.action.trim().is_empty() {
        return Err(ApiError::invalid("/data/attributes/action", "the action is empty"));
    }
    let missing = |field: &str, e: StoreError| match e {
        StoreError::NotFound(what) => ApiError::invalid(format!("/data/attributes/{field}"), format!("{what} does not exist")),
        e => ApiError::from(e),
    };
    let code = new.project_code.clone();
    let project = state.db(move |s| Ok(s.project_id(&code))).await?.map_err(|e| missing("project_code", e))?;
    let code = new.environment_code.clone();
    let environment = state.db(move |s| Ok(s.environment_id(project, &code))).await?.map_err(|e| missing("environment_code", e))?;
    let name = new.git_remote_name.clone();
    let remote = state
        .db(move |s| s.git_remote(project, &name))
        .await?
        .ok_or_else(|| ApiError::invalid("/data/attributes/git_remote_name", format!("project {:?} has no git remote {:?}", new.project_code, new.git_remote_name)))?;
    let (repo, commit) = fetch_and_resolve(&state, &new.project_code, &remote.name, &remote.url, &new.git_rev).await?;
    let (backend, folder) = (state.settings.backend, state.controller.folder.clone());
    let workers = std::sync::Arc::clone(&state.workers);
    let id = state
        .db(move |s| {
            let row = NewChangeRow {
                project_id: project,
                environment_id: environment,
                action: &new.action,
                repo: &repo,
                git_rev: &new.git_rev,
                commit: &commit,
                backend,
                secret_set: None,
                folder: &folder,
                metadata: None,
            };
            let (id, lock) = s.create_change_by(&row, ChangeAuthor { created_by: &user.name, metadata: &new.metadata, git_remote_name: Some(&new.git_remote_name) })?;
            workers.adopt(lock);
            Ok(id)
        })
        .await?;
    state.workers.wake();
    let change = state.db(move |s| s.change_summary(id)).await?;
    Ok(jsonapi::created(change_resource(&change)))
}

/// `GET /api/changes`: `filter[status_eq]`, `filter[project_code_eq]`,
/// `filter[environment_code_eq]`, `filter[text_cont]` (the id, action, creator, revision,
/// commit, metadata, project or environment contains it, in any case); `sort` (`created_at`, `-created_at`: the default, newest
/// first); `page[size]` (default 10, at most 1,000) with `page[number]` (from 1) or the cursor
/// `page[after]` (the last id of the page before; `links.next` carries it).
pub async fn list(State(state): State<AppState>, _user: CurrentUser, Query(params): Query<HashMap<String, String>>) -> Result<Response, ApiError> {
    let params = Params::new(
        params,
        &["filter[status_eq]", "filter[project_code_eq]", "filter[environment_code_eq]", "filter[text_cont]", "sort", "page[size]", "page[number]", "page[after]"],
    )?;
    let status = match params.get("filter[status_eq]") {
        Some(s) => {
            let status = ChangeStatus::parse(s);
            if status.as_str() != s {
                return Err(ApiError::bad_parameter("filter[status_eq]", format!("{s:?} is not a status (pending, queued, running, success, error, cancelled)")));
            }
            Some(status)
        }
        None => None,
    };
    let sort = match params.get("sort").unwrap_or("-created_at") {
        "created_at" | "id" => ChangeSort::Oldest,
        "-created_at" | "-id" => ChangeSort::Newest,
        other => return Err(ApiError::bad_parameter("sort", format!("{other:?}: sort by created_at or -created_at"))),
    };
    let size = page_size(&params, 10)?;
    let number = params.number("page[number]")?.unwrap_or(1).max(1);
    let cursor = params.number("page[after]")?;
    if cursor.is_some() && params.get("page[number]").is_some() {
        return Err(ApiError::bad_parameter("page[after]", "give page[after] or page[number], not both"));
    }
    let filter = ChangeFilter {
        status,
        project_code: params.get("filter[project_code_eq]").map(str::to_string),
        environment_code: params.get("filter[environment_code_eq]").map(str::to_string),
        cursor,
        text: params.get("filter[text_cont]").filter(|t| !t.is_empty()).map(str::to_string),
    };
    let offset = if cursor.is_some() { 0 } else { (number as usize - 1) * size };
    let query_filter = filter.clone();
    let rows = state.db(move |s| s.change_page(&query_filter, sort, size, offset)).await?;
    let mut document = json!({"data": rows.iter().map(change_resource).collect::<Vec<_>>()});
    if rows.len() == size {
        let last = rows.last().map(|c| c.id).unwrap_or_default();
        document["links"] = json!({"next": params.link("/api/changes", &[("page[after]", last.to_string())], &["page[number]", "page[after]"])});
    }
    Ok(jsonapi::document_response(axum::http::StatusCode::OK, &document))
}

/// `GET /api/changes/{id}` (`?include=steps` adds its steps in `included`).
pub async fn show(State(state): State<AppState>, _user: CurrentUser, Path(id): Path<i64>, Query(params): Query<HashMap<String, String>>) -> Result<Response, ApiError> {
    let params = Params::new(params, &["include"])?;
    let include_steps = match params.get("include") {
        None | Some("") => false,
        Some("steps") => true,
        Some(other) => return Err(ApiError::bad_parameter("include", format!("{other:?}: only steps can be included"))),
    };
    let change = state.db(move |s| s.change_summary(id)).await?;
    let steps = state.db(move |s| s.steps(id)).await?;
    let mut data = change_resource(&change);
    data["relationships"] = json!({"steps": {"data": steps.iter().map(|s| json!({"type": "steps", "id": s.id.to_string()})).collect::<Vec<_>>()}});
    let mut document = json!({"data": data});
    if include_steps {
        document["included"] = steps.iter().map(|s| step_resource(id, s)).collect();
    }
    Ok(jsonapi::document_response(axum::http::StatusCode::OK, &document))
}

/// `POST /api/changes/{id}/cancel`: a running change is asked to stop, a waiting one is
/// cancelled at once; 409 for a change that has ended.
pub async fn cancel(State(state): State<AppState>, Operator(user): Operator, Path(id): Path<i64>) -> Result<Response, ApiError> {
    let change = state.db(move |s| s.change_summary(id)).await?;
    if change.status.is_final() {
        return Err(ApiError::conflict(format!("change {id} is {}: nothing to cancel", change.status.as_str())));
    }
    let workers = std::sync::Arc::clone(&state.workers);
    state.db(move |_| workers.cancel(id)).await?;
    state.db(move |s| s.record_change_event(id, "change.cancel", &user.name)).await?;
    let change = state.db(move |s| s.change_summary(id)).await?;
    Ok(jsonapi::ok(change_resource(&change)))
}

/// `POST /api/changes/{id}/retry`: what did not succeed runs again from the same commit (the
/// change is `pending` until a worker takes it); 409 for a change that succeeded or still runs.
pub async fn retry(State(state): State<AppState>, Operator(user): Operator, Path(id): Path<i64>) -> Result<Response, ApiError> {
    let change = state.db(move |s| s.change_summary(id)).await?;
    if !change.status.is_final() || state.workers.running().contains(&id) {
        return Err(ApiError::conflict(format!("change {id} is {}: cancel it or wait for its end before retrying", change.status.as_str())));
    }
    let pid = i64::from(std::process::id());
    // The change's lock first: a change another live controller holds (a local `change run` on
    // the same store) is not reset under it.
    let Some(lock) = state.db(move |s| s.lock_change(id)).await? else {
        return Err(ApiError::conflict(format!("change {id} is being run by another controller: cancel it first or wait")));
    };
    match state.db(move |s| s.claim_change(id, pid)).await? {
        Claim::Claimed => state.workers.adopt(lock),
        Claim::Succeeded => return Err(ApiError::conflict(format!("change {id} succeeded: nothing to retry"))),
    }
    let sandboxes = state.controller.state_dir.join("sandboxes").join(format!("change-{id}"));
    state
        .db(move |s| {
            // The sandboxes of the last run hold step contexts (secrets): none is kept for the next.
            let _ = std::fs::remove_dir_all(&sandboxes);
            s.reset_for_retry(id)?;
            s.record_change_event(id, "change.retry", &user.name)
        })
        .await?;
    state.workers.wake();
    let change = state.db(move |s| s.change_summary(id)).await?;
    Ok(jsonapi::ok(change_resource(&change)))
}
