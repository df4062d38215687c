//! What every request handler shares: the store, the password checker, the change workers and
//! the server's settings ([`AppState`], cheap to clone), and [`ServerSettings`] with their
//! defaults.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::change::ControllerConfig;
use crate::status::BackendKind;
use crate::store::{Store, StoreError};

use super::jsonapi::ApiError;
use super::log_feed::Feeds;
use super::passwords::Passwords;
use super::workers::Workers;

/// The address the server listens on unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3000";

/// How the server serves (configuration, not state). [`ServerSettings::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Where to listen (default [`DEFAULT_LISTEN`]).
    pub listen: SocketAddr,
    /// The TLS certificate chain and private key (PEM files); `None`: plain HTTP.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The largest request body (default 4 MiB), but for properties documents.
    pub body_limit: usize,
    /// The largest properties document a PUT may carry (default 64 MiB, the agent's input limit).
    pub properties_limit: usize,
    /// How long a request may take to be answered (default 30 s; a log stream's answer starts at
    /// once and then runs as long as its change).
    pub request_timeout: Duration,
    /// How long a client may take to send a request's headers (default 10 s).
    pub header_timeout: Duration,
    /// How many connections are served at once (default 1,024); more wait to be accepted.
    pub max_connections: usize,
    /// How long a session lasts (default 12 hours).
    pub session_ttl: Duration,
    /// The delay after a failed login (default 1 s), doubling with each failure in a row.
    pub failed_login_delay: Duration,
    /// How long a shutdown lets running changes go on before cancelling them (default 30 s).
    pub shutdown_grace: Duration,
    /// How many changes run at once, each in its own environment (default 4).
    pub max_running_changes: usize,
    /// Where the steps of the changes created through the API run (default `process`).
    pub backend: BackendKind,
}

impl ServerSettings {
    /// The defaults, listening on `listen`.
    pub fn new(listen: SocketAddr) -> ServerSettings {
        ServerSettings {
            listen,
            tls: None,
            body_limit: 4 << 20,
            properties_limit: 64 << 20,
            request_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            max_connections: 1024,
            session_ttl: Duration::from_secs(12 * 3600),
            failed_login_delay: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(30),
            max_running_changes: 4,
            backend: BackendKind::Process,
        }
    }
}

/// What every handler shares. Cloning is cheap (shared pointers).
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: Arc<Store>,
    /// Checks users' passwords.
    pub passwords: Arc<Passwords>,
    /// Runs the changes.
    pub workers: Arc<Workers>,
    /// The server's settings.
    pub settings: Arc<ServerSettings>,
    /// How changes run (state directory, agent, backends).
    pub controller: Arc<ControllerConfig>,
    /// The live log feeds, one per followed change.
    pub feeds: Arc<Feeds>,
    /// One lock per git remote clone, so that two changes created at once do not fetch into the
    /// same clone together.
    pub remote_locks: Arc<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>>,
}

impl AppState {
    /// Runs `f` on the store on a blocking thread (a write waits for its commit's fsync; a read
    /// for the reading connection): a store error becomes the [`ApiError`] it maps to.
    pub async fn db<T: Send + 'static>(&self, f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static) -> Result<T, ApiError> {
        let store = Arc::clone(&self.store);
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(result) => result.map_err(ApiError::from),
            Err(e) => Err(ApiError::internal(&e)),
        }
    }

    /// Whether the server speaks TLS (session cookies are then `Secure`).
    pub fn tls(&self) -> bool {
        self.settings.tls.is_some()
    }
}
