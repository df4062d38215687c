//! The page: `opschain server`'s HTML for people, beside its JSON:API. Server-rendered (askama
//! templates compiled into the binary, every value escaped), with a small amount of plain
//! JavaScript for what is live (the change list and a change's steps polled from the API, log
//! lines followed through the API's server-sent events, paged and searched through its
//! `log_lines` endpoint, so that a log of a million lines never sits whole in the browser). The
//! stylesheet and script are embedded in the binary: nothing is fetched from elsewhere and
//! nothing needs building.
//!
//! The paths (the interface):
//! * `/login` (a form: `username`, `password`) and `/logout`; every other page answers a browser
//!   without a session with a redirect to `/login`;
//! * `/`: the changes, filtered by the query (`project`, `environment`, `status`, `q`);
//! * `/changes/{id}`: a change's header, step tree, Cancel and Retry;
//! * `/changes/{id}/logs`, `/changes/{id}/steps/{step}/logs` (`?children=1`: with its
//!   descendants' lines), and their raw text (`/changes/{id}/logs.txt`, same parameters);
//! * `/projects/{code}/properties`, `/projects/{code}/environments/{env}/properties`: the
//!   current properties, their versions, the difference between two (`?from=N&to=M`).
//!
//! One file per concept: [`session`] (who is asking, the login form, CSRF tokens), [`assets`]
//! (the embedded stylesheet and script), [`changes`] (the list and a change, Cancel and Retry),
//! [`logs`] (the log viewer and raw logs), [`properties`] (properties, versions, diffs), [`view`]
//! (what the templates share: the layout's data, times, statuses).

pub mod assets;
pub mod changes;
pub mod logs;
pub mod properties;
pub mod session;
pub mod view;

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::server::jsonapi::ApiError;
use crate::server::AppState;

/// Every page route (to be merged with the API's and finished:
/// `finish(page::routes().merge(api()), state)`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/login", get(session::login_form).post(session::login_submit))
        .route("/logout", post(session::logout))
        .route("/", get(changes::list))
        .route("/changes/{id}", get(changes::show))
        .route("/changes/{id}/cancel", post(changes::cancel))
        .route("/changes/{id}/retry", post(changes::retry))
        .route("/changes/{id}/logs", get(logs::change_logs))
        .route("/changes/{id}/steps/{step}/logs", get(logs::step_logs))
        .route("/changes/{id}/logs.txt", get(logs::raw))
        .route("/projects/{code}/properties", get(properties::project))
        .route("/projects/{code}/environments/{env}/properties", get(properties::environment))
        .route("/assets/{name}", get(assets::asset))
        .layer(axum::middleware::map_response(page_headers))
}

/// What a page allows the browser (a Content Security Policy): its own scripts, styles,
/// connections and forms only, no framing by another site.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Adds the page's security headers to each of its responses.
async fn page_headers(mut response: Response) -> Response {
    use axum::http::{header, HeaderValue};
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// Why a page cannot be shown.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// What the page reads from the API's layer failed (not found, refused, the store).
    #[error("{}", .0.detail)]
    Api(ApiError),
    /// A template failed to render.
    #[error("cannot render the page")]
    Render(#[from] askama::Error),
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> PageError {
        PageError::Api(e)
    }
}

impl PageError {
    /// The HTTP status: the API's for its failures, 500 for a template's.
    pub fn status(&self) -> StatusCode {
        match self {
            PageError::Api(e) => e.status,
            PageError::Render(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for PageError {
    /// A small HTML page saying what was wrong (no layout: it needs no user).
    fn into_response(self) -> Response {
        if let PageError::Render(e) = &self {
            eprintln!("opschain server: error: cannot render a page: {e}");
        }
        let status = self.status();
        let title = status.canonical_reason().unwrap_or("Error");
        let body = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{title}</title><link rel=\"icon\" href=\"data:,\"><link rel=\"stylesheet\" href=\"{css}\"></head><body><main class=\"error-page\"><h1>{code} {title}</h1><p>{detail}</p>\
             <p><a href=\"/\">Back to the changes</a></p></main></body></html>",
            css = assets::css_path(),
            code = status.as_u16(),
            detail = view::escape(&self.to_string()),
        );
        (status, Html(body)).into_response()
    }
}

/// A rendered template as a response.
pub fn render(template: &impl askama::Template) -> Result<Response, PageError> {
    Ok(Html(template.render()?).into_response())
}
