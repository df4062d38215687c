//! The page's stylesheet and script, embedded in the binary. Their paths carry a digest of their
//! content (`/assets/page.css?v=...`), so a browser may keep them for good: a new build has new
//! paths.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use blake2::Digest as _;

/// The stylesheet.
pub const CSS: &str = include_str!("assets/page.css");

/// The script.
pub const JS: &str = include_str!("assets/page.js");

/// `/assets/<name>?v=<digest of content>`.
fn versioned(name: &str, content: &str) -> String {
    let digest = blake2::Blake2b::<blake2::digest::consts::U32>::digest(content.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("/assets/{name}?v={hex}")
}

static CSS_PATH: LazyLock<String> = LazyLock::new(|| versioned("page.css", CSS));
static JS_PATH: LazyLock<String> = LazyLock::new(|| versioned("page.js", JS));

/// The stylesheet's versioned path.
pub fn css_path() -> &'static str {
    &CSS_PATH
}

/// The script's versioned path.
pub fn js_path() -> &'static str {
    &JS_PATH
}

/// `GET /assets/{name}`: `page.css` or `page.js` (no user needed: they hold no data); 404 for
/// anything else.
pub async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "page.css" => (CSS, "text/css; charset=utf-8"),
        "page.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}
