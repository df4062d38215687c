//! The routes: [`api`] (every `/api` route, without state) and [`finish`] (the layers every
//! route gets: a time limit, JSON:API errors for what the framework refuses itself, the
//! state), composed by [`router`]. A page adds its own routes to [`api`] before [`finish`]:
//! `finish(page_routes().merge(api()), state)`; its handlers take the same extractors
//! ([`super::auth::CurrentUser`], [`super::auth::Operator`]).

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;

use super::jsonapi::{ApiError, MEDIA_TYPE};
use super::state::AppState;
use super::{auth, changes, events, logs, projects, properties, secrets};

/// Every `/api` route.
pub fn api() -> Router<AppState> {
    Router::new()
        .route("/api/healthcheck", get(healthcheck))
        .route("/api/login", post(auth::login_route))
        .route("/api/logout", post(auth::logout_route))
        .route("/api/session", get(auth::session_route))
        .route("/api/projects", get(projects::list_projects).post(projects::create_project))
        .route("/api/projects/{code}/environments", get(projects::list_environments).post(projects::create_environment))
        .route("/api/projects/{code}/git_remotes", get(projects::list_remotes).post(projects::create_remote))
        .route("/api/projects/{code}/properties", get(properties::get_project).put(properties::put_project))
        .route("/api/projects/{code}/environments/{env}/properties", get(properties::get_environment).put(properties::put_environment))
        .route("/api/properties_versions", get(properties::versions))
        .route("/api/changes", get(changes::list).post(changes::create))
        .route("/api/changes/{id}", get(changes::show))
        .route("/api/changes/{id}/cancel", post(changes::cancel))
        .route("/api/changes/{id}/retry", post(changes::retry))
        .route("/api/changes/{id}/log_lines", get(logs::list))
        .route("/api/changes/{id}/log_lines/stream", get(logs::stream))
        .route("/api/events", get(events::list))
        .route("/api/secret_sets", get(secrets::list))
        .route("/api/secret_sets/{name}", put(secrets::put))
}

/// `routes` with the layers every route gets, and the state.
pub fn finish(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(middleware::from_fn(errors_as_documents))
        .layer(middleware::from_fn_with_state(state.clone(), time_limit))
        .with_state(state)
}

/// The server's router: [`api`], [`finish`]ed.
pub fn router(state: AppState) -> Router {
    finish(api(), state)
}

/// `GET /api/healthcheck`: 200, no user needed.
async fn healthcheck() -> Response {
    super::jsonapi::ok(serde_json::json!({"type": "healthcheck", "id": "server", "attributes": {"status": "ok"}}))
}

/// Answers 408 when a request is not answered within the time limit (a log stream is answered
/// at once: its events then flow as long as its change runs).
async fn time_limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(state.settings.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(StatusCode::REQUEST_TIMEOUT, "Request timeout", format!("the request took longer than {} s", state.settings.request_timeout.as_secs()))
            .into_response(),
    }
}

/// Turns the framework's own refusals (a path parameter or query string it cannot parse, a
/// method a route does not take) into JSON:API `errors` documents, their text as the detail.
async fn errors_as_documents(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_document = response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(MEDIA_TYPE.as_bytes()));
    // A page's own error pages are HTML, for people.
    let is_html = response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    if !(status.is_client_error() || status.is_server_error()) || is_document || is_html {
        return response;
    }
    let body = axum::body::to_bytes(response.into_body(), 64 << 10).await.unwrap_or_default();
    let detail = String::from_utf8_lossy(&body).trim().to_string();
    let title = status.canonical_reason().unwrap_or("Error");
    let detail = if detail.is_empty() { title.to_string() } else { detail };
    let mut error = ApiError::new(status, "Request refused", detail);
    error.title = match status {
        StatusCode::METHOD_NOT_ALLOWED => "Method not allowed",
        StatusCode::BAD_REQUEST => "Bad request",
        StatusCode::NOT_FOUND => "Not found",
        _ => "Request refused",
    };
    error.into_response()
}
