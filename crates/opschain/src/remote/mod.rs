//! The CLI as a client of `opschain server`: where the server is ([`config`]) and a blocking
//! JSON:API client ([`Client`]) whose failures map to the local mode's exit statuses.

pub mod config;

use std::io::{BufRead, BufReader};
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;

pub use config::ApiConfig;

use opschain_runner::exit::{ExitStatus, Sysexit};

/// How long a request may take (60 s; a log stream's events may be as far apart as its change's
/// lines).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request to the server failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The `.opschainrc` cannot be read.
    #[error("{0}")]
    Rc(String),
    /// The base URL is not an `http://` or `https://` URL.
    #[error("the API base URL {0:?} is not an http:// or https:// URL")]
    BadUrl(String),
    /// `passwordCommand` failed.
    #[error("the passwordCommand of .opschainrc failed: {0}")]
    PasswordCommand(String),
    /// The server cannot be reached.
    #[error("cannot reach the OpsChain server at {url}: {reason}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server refused the request: its JSON:API error.
    #[error("{detail}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The error's detail.
        detail: String,
    },
    /// The server's answer is not the document expected.
    #[error("the OpsChain server's answer to {what} is not a JSON:API document: {reason}")]
    Answer {
        /// The request.
        what: String,
        /// Why.
        reason: String,
    },
}

impl RemoteError {
    /// The exit status, as the local mode's for the same failure: 66 for what does not exist,
    /// 65 for what the server found invalid, 64 for a bad base URL, 77 for a user refused, 69
    /// when the server cannot be reached or fails, 70 for a refusal of the command (a conflict).
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            RemoteError::Rc(_) | RemoteError::PasswordCommand(_) => Sysexit::DataErr.into(),
            RemoteError::BadUrl(_) => Sysexit::Usage.into(),
            RemoteError::Unreachable { .. } | RemoteError::Answer { .. } => Sysexit::Unavailable.into(),
            RemoteError::Refused { status: 404, .. } => Sysexit::NoInput.into(),
            RemoteError::Refused { status: 400 | 413 | 422, .. } => Sysexit::DataErr.into(),
            RemoteError::Refused { status: 401 | 403, .. } => Sysexit::NoPerm.into(),
            RemoteError::Refused { status, .. } if *status >= 500 => Sysexit::Unavailable.into(),
            RemoteError::Refused { .. } => Sysexit::Software.into(),
        }
    }
}

/// A blocking client of the server's API.
pub struct Client {
    agent: ureq::Agent,
    base: String,
    authorization: Option<String>,
}

impl Client {
    /// A client of the server `config` names.
    pub fn new(config: &ApiConfig) -> Client {
        let agent = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(REQUEST_TIMEOUT)).build().into();
        let authorization = config.username.as_ref().map(|user| {
            let password = config.password.as_deref().unwrap_or_default();
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
        });
        Client { agent, base: config.base_url.clone(), authorization }
    }

    /// `GET path`: the document.
    pub fn get(&self, path: &str) -> Result<Value, RemoteError> {
        self.send("GET", path, None)
    }

    /// `POST path` with `body`: the document.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value, RemoteError> {
        self.send("POST", path, Some(body))
    }

    /// `PUT path` with `body`: the document.
    pub fn put(&self, path: &str, body: &Value) -> Result<Value, RemoteError> {
        self.send("PUT", path, Some(body))
    }

    /// Sends a request; the answer's document, or the server's error.
    fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, RemoteError> {
        let url = format!("{}{path}", self.base);
        let unreachable = |e: ureq::Error| RemoteError::Unreachable { url: url.clone(), reason: e.to_string() };
        let response = match method {
            "GET" => self.with_auth_get(self.agent.get(&url)).call().map_err(unreachable)?,
            _ => {
                let request = if method == "POST" { self.agent.post(&url) } else { self.agent.put(&url) };
                let request = request.header("Content-Type", "application/vnd.api+json");
                let request = match &self.authorization {
                    Some(a) => request.header("Authorization", a),
                    None => request,
                };
                request.send(body.map(Value::to_string).unwrap_or_default()).map_err(unreachable)?
            }
        };
        document(response, &format!("{method} {path}"))
    }

    fn with_auth_get(&self, request: ureq::RequestBuilder<ureq::typestate::WithoutBody>) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        match &self.authorization {
            Some(a) => request.header("Authorization", a),
            None => request,
        }
    }

    /// Follows `GET path` (server-sent events) from the line after `after`, calling `each` with
    /// each line's `data`; returns the change's final status from the `end` event.
    pub fn follow(&self, path: &str, after: i64, mut each: impl FnMut(&Value)) -> Result<String, RemoteError> {
        let url = format!("{}{path}", self.base);
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(None).build().into();
        let request = self.with_auth_get(agent.get(&url)).header("Last-Event-ID", after.to_string());
        let response = request.call().map_err(|e| RemoteError::Unreachable { url: url.clone(), reason: e.to_string() })?;
        if response.status().as_u16() != 200 {
            return document(response, &format!("GET {path}")).map(|_| String::new());
        }
        let mut reader = BufReader::new(response.into_body().into_reader());
        let (mut kind, mut line) = (String::from("message"), String::new());
        loop {
            line.clear();
            let read = reader.read_line(&mut line).map_err(|e| RemoteError::Unreachable { url: url.clone(), reason: e.to_string() })?;
            if read == 0 {
                return Err(RemoteError::Unreachable { url, reason: "the log stream ended before the change".into() });
            }
            let text = line.trim_end_matches(['\n', '\r']);
            if let Some(k) = text.strip_prefix("event: ") {
                kind = k.to_string();
            } else if let Some(data) = text.strip_prefix("data: ") {
                let value: Value = serde_json::from_str(data).map_err(|e| RemoteError::Answer { what: format!("GET {path}"), reason: e.to_string() })?;
                if kind == "end" {
                    return Ok(value["status"].as_str().unwrap_or_default().to_string());
                }
                each(&value);
            } else if text.is_empty() {
                kind = "message".into();
            }
        }
    }
}

/// The document of `response`, or the server's error.
fn document(mut response: ureq::http::Response<ureq::Body>, what: &str) -> Result<Value, RemoteError> {
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().map_err(|e| RemoteError::Answer { what: what.to_string(), reason: e.to_string() })?;
    let doc: Value =
        if text.is_empty() { Value::Null } else { serde_json::from_str(&text).map_err(|e| RemoteError::Answer { what: what.to_string(), reason: e.to_string() })? };
    if status >= 400 {
        let detail = doc["errors"][0]["detail"].as_str().map(str::to_string).unwrap_or_else(|| format!("the server answered {status}"));
        return Err(RemoteError::Refused { status, detail });
    }
    Ok(doc)
}
