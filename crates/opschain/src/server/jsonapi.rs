//! JSON:API documents: the media type, resources and the `errors` document every failure is
//! answered with ([`ApiError`]), and reading a request's document within a size limit.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::store::StoreError;

/// The JSON:API media type, of every document the API answers with.
pub const MEDIA_TYPE: &str = "application/vnd.api+json";

/// A failure answered as a JSON:API `errors` document with one error.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A short, fixed summary of the kind of failure.
    pub title: &'static str,
    /// What was wrong, in the user's terms.
    pub detail: String,
    /// The JSON pointer of the field of the request's document that was wrong, if one was.
    pub pointer: Option<String>,
}

impl ApiError {
    /// A failure of `status` with `title` and `detail`.
    pub fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError { status, title, detail: detail.into(), pointer: None }
    }

    /// 400: the request's document is not JSON, or not a JSON:API document.
    pub fn malformed(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "Malformed document", detail)
    }

    /// 401: no user, an unknown user or a wrong password.
    pub fn unauthenticated(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", detail)
    }

    /// 403: the user's role does not allow it.
    pub fn forbidden(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "Forbidden", detail)
    }

    /// 404: no such resource.
    pub fn not_found(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "Not found", detail)
    }

    /// 409: the resource exists already, or changed since the request's version of it.
    pub fn conflict(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "Conflict", detail)
    }

    /// 422: an attribute is missing or invalid; `pointer` names it.
    pub fn invalid(pointer: impl Into<String>, detail: impl Into<String>) -> ApiError {
        ApiError { pointer: Some(pointer.into()), ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid attribute", detail) }
    }

    /// 400: a query parameter is invalid; `parameter` names it.
    pub fn bad_parameter(parameter: &str, detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "Invalid query parameter", format!("{parameter}: {}", detail.into()))
    }

    /// 500: the server failed (the store); the cause is logged, not shown.
    pub fn internal(cause: &dyn std::error::Error) -> ApiError {
        eprintln!("opschain server: error: {}", error_chain(cause));
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal error", "the server failed: see its log")
    }

    /// The `errors` document.
    pub fn document(&self) -> Value {
        let mut error = json!({"status": self.status.as_u16().to_string(), "title": self.title, "detail": self.detail});
        if let Some(pointer) = &self.pointer {
            error["source"] = json!({"pointer": pointer});
        }
        json!({"errors": [error]})
    }
}

impl From<StoreError> for ApiError {
    /// Not found -> 404, exists -> 409, an edit on an old version -> 409, anything else -> 500.
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            StoreError::Exists(what) => ApiError::conflict(format!("{what} exists already")),
            e @ StoreError::VersionConflict { .. } => ApiError { pointer: Some("/data/attributes/version".into()), ..ApiError::conflict(e.to_string()) },
            e => ApiError::internal(&e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = document_response(self.status, &self.document());
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"opschain\", charset=\"UTF-8\""));
        }
        response
    }
}

/// A response of `status` carrying `document` as JSON:API.
pub fn document_response(status: StatusCode, document: &Value) -> Response {
    let mut response = (status, document.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE));
    response
}

/// A resource object: `{"type", "id", "attributes"}` (the id as a string, as JSON:API wants).
pub fn resource(kind: &str, id: impl ToString, attributes: Value) -> Value {
    json!({"type": kind, "id": id.to_string(), "attributes": attributes})
}

/// 200 with `{"data": data}`.
pub fn ok(data: Value) -> Response {
    document_response(StatusCode::OK, &json!({"data": data}))
}

/// 201 with `{"data": data}`.
pub fn created(data: Value) -> Response {
    document_response(StatusCode::CREATED, &json!({"data": data}))
}

/// Reads a request body of at most `limit` bytes (413 beyond it, before more is read) and parses
/// it as `T` (400 when it is not JSON; 422 naming the field's pointer when a field is missing or
/// of the wrong type).
pub async fn read_document<T: DeserializeOwned>(body: Body, limit: usize) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        // The limit's error (http-body-util's LengthLimitError) is only reachable by its text.
        let too_large = error_chain(&e).contains("length limit exceeded");
        if too_large {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "Request too large", format!("the request's body is larger than {limit} bytes"))
        } else {
            ApiError::malformed(format!("cannot read the request's body: {e}"))
        }
    })?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| ApiError::malformed(format!("the body is not JSON: {e}")))?;
    if !value.get("data").is_some_and(Value::is_object) {
        return Err(ApiError::malformed("the body is not a JSON:API document: it needs a \"data\" object"));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let pointer = pointer_of(e.path());
        ApiError::invalid(pointer, e.inner().to_string())
    })
}

/// `e` and its causes, joined with ": ".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// The JSON pointer of a serde path (`data.attributes.code` -> `/data/attributes/code`).
fn pointer_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut pointer = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => pointer.push_str(&format!("/{index}")),
            Segment::Map { key } | Segment::Enum { variant: key } => pointer.push_str(&format!("/{}", key.replace('~', "~0").replace('/', "~1"))),
            Segment::Unknown => pointer.push_str("/?"),
        }
    }
    pointer
}

/// A request document `{"data": {"type": ..., "attributes": A}}`.
#[derive(Debug, serde::Deserialize)]
pub struct Request<A> {
    /// The primary data.
    pub data: RequestData<A>,
}

/// The primary data of a [`Request`].
#[derive(Debug, serde::Deserialize)]
pub struct RequestData<A> {
    /// The resource type (checked by [`RequestData::expect_type`]).
    #[serde(rename = "type")]
    pub kind: String,
    /// The attributes.
    pub attributes: A,
}

impl<A> RequestData<A> {
    /// The attributes, when the resource type is `kind` (else 422 on `/data/type`; a wrong
    /// type would be 409 in JSON:API, but a client that sends one has the document wrong).
    pub fn expect_type(self, kind: &str) -> Result<A, ApiError> {
        if self.kind != kind {
            return Err(ApiError::invalid("/data/type", format!("expected type {kind:?}, got {:?}", self.kind)));
        }
        Ok(self.attributes)
    }
}

/// Checks a code (project, environment, git remote name): 1 to 64 characters of letters,
/// digits, `-` and `_`, as the local CLI takes them; else 422 on `pointer`.
pub fn check_code(code: &str, pointer: &str) -> Result<(), ApiError> {
    let ok = !code.is_empty() && code.len() <= 64 && code.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        return Err(ApiError::invalid(pointer, format!("{code:?} is not a code: 1 to 64 letters, digits, '-' or '_'")));
    }
    Ok(())
}
