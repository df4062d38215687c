//! `GET /api/events`: the audit trail, newest first.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::response::Response;
use serde_json::json;

use super::auth::CurrentUser;
use super::jsonapi::{self, resource, ApiError};
use super::paging::{page_size, Params};
use super::state::AppState;
use crate::store::EventFilter;

/// `GET /api/events`: `filter[kind_eq]`, `filter[username_eq]`, `filter[created_at_gt]`,
/// `page[size]` (default 10, at most 1,000), `page[before]` (the last id of the page before;
/// `links.next` carries it).
pub async fn list(State(state): State<AppState>, _user: CurrentUser, Query(params): Query<HashMap<String, String>>) -> Result<Response, ApiError> {
    let params = Params::new(params, &["filter[kind_eq]", "filter[username_eq]", "filter[created_at_gt]", "page[size]", "page[before]"])?;
    let size = page_size(&params, 10)?;
    let filter = EventFilter {
        kind: params.get("filter[kind_eq]").map(str::to_string),
        username: params.get("filter[username_eq]").map(str::to_string),
        before_id: params.number("page[before]")?,
        after: params.get("filter[created_at_gt]").map(str::to_string),
    };
    let rows = state.db(move |s| s.events(&filter, size)).await?;
    let data: Vec<_> = rows
        .iter()
        .map(|e| resource("events", e.id, json!({"kind": e.kind, "username": e.username, "target": e.target, "detail": e.detail, "created_at": e.at})))
        .collect();
    let mut document = json!({"data": data});
    if let Some(last) = rows.last().filter(|_| rows.len() == size) {
        document["links"] = json!({"next": params.link("/api/events", &[("page[before]", last.id.to_string())], &[])});
    }
    Ok(jsonapi::document_response(axum::http::StatusCode::OK, &document))
}
