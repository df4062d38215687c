//! Who is asking: HTTP Basic (what OpsChain's CLI sends) or a session cookie (what a page uses),
//! as request extractors ([`CurrentUser`] for any user, [`Operator`] for a user who may write),
//! and sessions: [`login`] checks a password and opens one, [`session_cookie`] makes its
//! `Set-Cookie`, the routes `POST /api/login`, `POST /api/logout` and `GET /api/session`.
//!
//! The session cookie is `HttpOnly` (no script reads it), `SameSite=Strict` (no other site's page
//! sends it, so no cross-site request forgery) and `Secure` under TLS. Its token is 32 random
//! bytes; the store keeps only its digest, so a copy of the database opens no session.

use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use blake2::Digest as _;
use serde_json::json;

use argon2::password_hash::rand_core::{OsRng, RngCore};

use super::jsonapi::{self, read_document, resource, ApiError, Request};
use super::passwords::Checked;
use super::state::AppState;
use crate::store::{NewEvent, UserRow};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "opschain_session";

/// The user a request is made by (any role). Refuses the request with 401 and
/// `WWW-Authenticate: Basic` when there is none or the credentials are wrong.
#[derive(Debug, Clone)]
pub struct CurrentUser(pub UserRow);

/// The user a request that changes something is made by: as [`CurrentUser`], and 403 for a
/// viewer.
#[derive(Debug, Clone)]
pub struct Operator(pub UserRow);

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        authenticate(&parts.headers, state).await.map(CurrentUser)
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let user = authenticate(&parts.headers, state).await?;
        if !user.role.can_write() {
            return Err(ApiError::forbidden(format!("user {:?} is a {}: a viewer reads only", user.name, user.role)));
        }
        Ok(Operator(user))
    }
}

/// The user of a request: its session cookie's when it has a live one, else its HTTP Basic
/// credentials'.
pub async fn authenticate(headers: &HeaderMap, state: &AppState) -> Result<UserRow, ApiError> {
    if let Some(token) = cookie(headers, SESSION_COOKIE) {
        let digest = token_digest(&token);
        if let Some(user) = state.db(move |s| s.session_user(&digest)).await? {
            return Ok(user);
        }
    }
    let Some((name, password)) = basic_credentials(headers)? else {
        return Err(ApiError::unauthenticated("this needs a user: send HTTP Basic credentials or log in (POST /api/login)"));
    };
    check_password(state, &name, &password, false).await
}

/// Checks `name`'s password, recording a failed login, and a login when the password was
/// verified now or `session` (a session is opened: always a login).
async fn check_password(state: &AppState, name: &str, password: &str, session: bool) -> Result<UserRow, ApiError> {
    let checked = state.passwords.check(&state.store, name, password).await.map_err(|e| ApiError::internal(&e))?;
    let (kind, user) = match checked {
        Checked::Remembered(user) if !session => return Ok(user),
        Checked::Remembered(user) => ("login", Some(user)),
        Checked::Verified(user) => ("login", Some(user)),
        Checked::Refused => ("login.failed", None),
    };
    let event_name = name.to_string();
    state.db(move |s| s.record_event(&NewEvent { username: Some(&event_name), kind, target: None, detail: json!({}) })).await?;
    user.ok_or_else(|| ApiError::unauthenticated("unknown user or wrong password"))
}

/// The name and password of an `Authorization: Basic` header; `None` without one; 401 for one
/// that cannot be decoded.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else { return Ok(None) };
    let bad = || ApiError::unauthenticated("the Authorization header is not HTTP Basic credentials (base64 of NAME:PASSWORD)");
    let value = value.to_str().map_err(|_| bad())?;
    let Some(encoded) = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic ")) else { return Err(bad()) };
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (name, password) = decoded.split_once(':').ok_or_else(bad)?;
    Ok(Some((name.to_string(), password.to_string())))
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// The digest a session is kept by: hex BLAKE2b-256 of its token.
fn token_digest(token: &str) -> String {
    let digest = blake2::Blake2b::<blake2::digest::consts::U32>::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Opens a session for `user`; returns the `Set-Cookie` value that hands it to the client.
pub async fn open_session(state: &AppState, user: &UserRow) -> Result<HeaderValue, ApiError> {
    let mut token = [0u8; 32];
    OsRng.fill_bytes(&mut token);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token);
    let (digest, id, ttl) = (token_digest(&token), user.id, state.settings.session_ttl.as_secs());
    state.db(move |s| s.open_session(id, &digest, ttl)).await?;
    Ok(session_cookie(&token, ttl, state.tls()))
}

/// The `Set-Cookie` value of session `token` lasting `max_age` seconds (0: removes it).
pub fn session_cookie(token: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{SESSION_COOKIE}={token}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}")).expect("a cookie of URL-safe characters")
}

/// Checks `name`'s password (slowed down when wrong, recorded either way) and opens a session:
/// the user and the `Set-Cookie` value. What a login page calls.
pub async fn login(state: &AppState, name: &str, password: &str) -> Result<(UserRow, HeaderValue), ApiError> {
    let user = check_password(state, name, password, true).await?;
    let cookie = open_session(state, &user).await?;
    Ok((user, cookie))
}

/// The attributes of `POST /api/login`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    username: String,
    password: String,
}

/// The resource of a user's session.
fn session_resource(user: &UserRow) -> serde_json::Value {
    resource("sessions", "current", json!({"username": user.name, "role": user.role.as_str()}))
}

/// `POST /api/login`: `{"data": {"type": "sessions", "attributes": {"username", "password"}}}`;
/// 201 with the session and its cookie.
pub async fn login_route(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let request: Request<Credentials> = read_document(body, state.settings.body_limit).await?;
    let credentials = request.data.expect_type("sessions")?;
    let (user, cookie) = login(&state, &credentials.username, &credentials.password).await?;
    let mut response = jsonapi::created(session_resource(&user));
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(response)
}

/// `POST /api/logout`: ends the request's session; 204 with a cookie that removes it.
pub async fn logout_route(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(token) = cookie(&headers, SESSION_COOKIE) {
        let digest = token_digest(&token);
        state.db(move |s| s.close_session(&digest)).await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(header::SET_COOKIE, session_cookie("", 0, state.tls()));
    Ok(response)
}

/// `GET /api/session`: who the request is made by.
pub async fn session_route(CurrentUser(user): CurrentUser) -> Response {
    jsonapi::ok(session_resource(&user))
}
