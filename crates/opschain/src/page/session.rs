//! Who is looking at a page, and the forms that change something.
//!
//! A page needs a session (the API's session cookie: `HttpOnly`, `SameSite=Strict`); a browser
//! without one is redirected to `/login`, which comes back to the page asked for. Every form that
//! changes something (log out, Cancel, Retry) carries the session's CSRF token ([`csrf_token`]:
//! a digest of the session's secret token, so only a page served to that session has it, and
//! nothing needs storing), checked before anything is done. The login form, made before there is
//! a session, is protected the same way by a random value in a short-lived cookie of its own
//! that the form must repeat (a double submit).

use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use base64::Engine as _;
use blake2::Digest as _;
use subtle::ConstantTimeEq as _;

use argon2::password_hash::rand_core::{OsRng, RngCore};

use super::view::Layout;
use super::{render, PageError};
use crate::server::auth::{self, SESSION_COOKIE};
use crate::server::jsonapi::ApiError;
use crate::server::AppState;
use crate::store::UserRow;

/// The cookie that carries the login form's own CSRF value.
pub const LOGIN_COOKIE: &str = "opschain_login";

/// How long a login form's CSRF value lasts (1 hour).
pub const LOGIN_FORM_TTL_SECS: u64 = 3600;

/// The user of a page request, with the session's CSRF token. A request without a live session
/// is answered with a redirect to `/login?next=<the page>`.
#[derive(Debug, Clone)]
pub struct PageUser {
    /// The user.
    pub user: UserRow,
    /// The session's CSRF token, which forms carry in their `csrf` field.
    pub csrf: String,
}

impl PageUser {
    /// The layout's data for this user (`title`: the page's title).
    pub fn layout(&self, title: impl Into<String>) -> Layout {
        Layout::new(title, &self.user, &self.csrf)
    }

    /// Checks a form's CSRF token: 403 when it is not this session's.
    pub fn check_csrf(&self, token: &str) -> Result<(), PageError> {
        if !equal(token, &self.csrf) {
            return Err(ApiError::forbidden("the form's CSRF token is missing or belongs to another session: reload the page and try again").into());
        }
        Ok(())
    }
}

impl FromRequestParts<AppState> for PageUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let to_login = || Redirect::to(&format!("/login?next={}", encode(&parts.uri))).into_response();
        let Some(token) = auth::cookie(&parts.headers, SESSION_COOKIE) else { return Err(to_login()) };
        let mut only_session = HeaderMap::new();
        if let Some(cookie) = parts.headers.get(header::COOKIE) {
            only_session.insert(header::COOKIE, cookie.clone());
        }
        match auth::authenticate(&only_session, state).await {
            Ok(user) => Ok(PageUser { user, csrf: csrf_token(&token) }),
            Err(e) if e.status == StatusCode::UNAUTHORIZED => Err(to_login()),
            Err(e) => Err(PageError::from(e).into_response()),
        }
    }
}

/// The CSRF token of the session whose secret token is `session_token`: hex BLAKE2b-256 of it
/// under a label of its own (so it is not the digest the store keeps of the session).
pub fn csrf_token(session_token: &str) -> String {
    let digest = blake2::Blake2b::<blake2::digest::consts::U32>::new().chain_update(b"opschain page csrf\0").chain_update(session_token.as_bytes()).finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether two tokens are equal, compared in constant time.
fn equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// `uri`'s path and query, percent-encoded for a query parameter.
fn encode(uri: &Uri) -> String {
    let target = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut out = String::with_capacity(target.len());
    for b in target.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where a login goes back to: `next` when it is a path of this server (not `//host`, which a
/// browser takes as another site), else `/`.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.starts_with("/\\") && !n.contains(['\r', '\n']) => n.to_string(),
        _ => "/".to_string(),
    }
}

/// The login page.
#[derive(askama::Template)]
#[template(path = "login.html")]
struct LoginPage {
    css: &'static str,
    next: String,
    form_token: String,
    username: String,
    error: Option<String>,
}

/// The query of `/login`.
#[derive(Debug, serde::Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

/// The login form's fields.
#[derive(Debug, serde::Deserialize)]
pub struct LoginFields {
    username: String,
    password: String,
    #[serde(default)]
    form_token: String,
    #[serde(default)]
    next: Option<String>,
}

/// Renders the login form with a fresh CSRF value (and its cookie).
fn login_page(next: String, username: String, error: Option<String>, status: StatusCode, secure: bool) -> Result<Response, PageError> {
    let mut value = [0u8; 24];
    OsRng.fill_bytes(&mut value);
    let form_token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value);
    let page = LoginPage { css: super::assets::css_path(), next, form_token: form_token.clone(), username, error };
    let mut response = render(&page)?;
    *response.status_mut() = status;
    let secure = if secure { "; Secure" } else { "" };
    let cookie = format!("{LOGIN_COOKIE}={form_token}; Path=/login; Max-Age={LOGIN_FORM_TTL_SECS}; HttpOnly; SameSite=Strict{secure}");
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("a cookie of URL-safe characters"));
    Ok(response)
}

/// `GET /login`: the form (`?next=` the page to go back to).
pub async fn login_form(State(state): State<AppState>, Query(query): Query<LoginQuery>) -> Result<Response, PageError> {
    login_page(safe_next(query.next.as_deref()), String::new(), None, StatusCode::OK, state.tls())
}

/// `POST /login`: checks the form's CSRF value and the password (a wrong one is slowed down
/// and recorded, as the API's login is), opens a session and goes back to `next`.
pub async fn login_submit(State(state): State<AppState>, headers: HeaderMap, Form(fields): Form<LoginFields>) -> Result<Response, PageError> {
    let next = safe_next(fields.next.as_deref());
    let expected = auth::cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !equal(&fields.form_token, &expected) {
        let why = "The login form expired or came from another page: try again.".to_string();
        return login_page(next, fields.username, Some(why), StatusCode::FORBIDDEN, state.tls());
    }
    match auth::login(&state, &fields.username, &fields.password).await {
        Ok((_user, cookie)) => {
            let mut response = Redirect::to(&next).into_response();
            response.headers_mut().append(header::SET_COOKIE, cookie);
            let spent = format!("{LOGIN_COOKIE}=; Path=/login; Max-Age=0; HttpOnly; SameSite=Strict");
            response.headers_mut().append(header::SET_COOKIE, HeaderValue::from_str(&spent).expect("a fixed cookie"));
            Ok(response)
        }
        Err(e) if e.status == StatusCode::UNAUTHORIZED => {
            login_page(next, fields.username, Some("Unknown user or wrong password.".into()), StatusCode::UNAUTHORIZED, state.tls())
        }
        Err(e) => Err(e.into()),
    }
}

/// A form that carries only the CSRF token.
#[derive(Debug, serde::Deserialize)]
pub struct CsrfForm {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
}

/// `POST /logout`: ends the session and goes to `/login`.
pub async fn logout(State(state): State<AppState>, user: PageUser, headers: HeaderMap, Form(form): Form<CsrfForm>) -> Result<Response, PageError> {
    user.check_csrf(&form.csrf)?;
    let ended = auth::logout_route(State(state), headers).await?;
    let mut response = Redirect::to("/login").into_response();
    if let Some(cookie) = ended.headers().get(header::SET_COOKIE) {
        response.headers_mut().insert(header::SET_COOKIE, cookie.clone());
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_this_server() {
        assert_eq!(safe_next(Some("/changes/3?x=1#L2")), "/changes/3?x=1#L2");
        for bad in ["//evil.example/", "https://evil.example/", "/\\evil.example", "changes", ""] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn csrf_tokens_differ_by_session_and_from_the_stored_digest() {
        let (a, b) = (csrf_token("session-a"), csrf_token("session-b"));
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_eq!(a, csrf_token("session-a"));
        let stored = blake2::Blake2b::<blake2::digest::consts::U32>::digest(b"session-a");
        assert_ne!(a, stored.iter().map(|b| format!("{b:02x}")).collect::<String>());
        assert!(equal(&a, &csrf_token("session-a")) && !equal(&a, &b) && !equal(&a, ""));
    }
}
