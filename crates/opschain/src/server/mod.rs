//! `opschain server`: the controller as a shared service. The same store and scheduler as the
//! local mode, behind OpsChain's JSON:API over HTTP (or HTTPS), with users, an audit trail and
//! live logs; changes run in the server's workers, not in the requests.
//!
//! One file per concept:
//! * [`state`]: [`AppState`] (what handlers share) and [`ServerSettings`] (with defaults);
//! * [`mod@router`]: the routes ([`router::api`]) and the layers ([`router::finish`]), composed by
//!   [`router::router`];
//! * [`auth`]: HTTP Basic and session cookies, the [`auth::CurrentUser`] and [`auth::Operator`]
//!   extractors, [`auth::login`];
//! * [`passwords`]: Argon2 hashes, the bounded and slowed-down checks;
//! * [`accounts`]: what `opschain user` does;
//! * [`jsonapi`]: documents, errors, reading a request's document;
//! * [`paging`]: query parameters and pages;
//! * [`projects`], [`properties`], [`changes`], [`logs`], [`events`], [`secrets`]: the
//!   endpoints;
//! * [`clones`]: the server's clones of git remotes;
//! * [`log_feed`]: live log lines fanned out to followers;
//! * [`workers`]: the change workers, restart recovery and graceful stop;
//! * [`listen`]: connections, TLS, limits and draining.

pub mod accounts;
pub mod auth;
pub mod changes;
pub mod clones;
pub mod events;
pub mod jsonapi;
pub mod listen;
pub mod log_feed;
pub mod logs;
pub mod paging;
pub mod passwords;
pub mod projects;
pub mod properties;
pub mod router;
pub mod secrets;
pub mod state;
pub mod workers;

use std::sync::Arc;

pub use router::router;
pub use state::{AppState, ServerSettings, DEFAULT_LISTEN};

use super::change::ControllerConfig;
use super::store::{Store, StoreError};

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store cannot be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The async runtime cannot be started.
    #[error("cannot start the server's runtime")]
    Runtime(#[source] std::io::Error),
    /// The address cannot be listened on.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// TLS cannot be set up.
    #[error(transparent)]
    Tls(#[from] listen::TlsError),
    /// The password checker cannot be set up.
    #[error(transparent)]
    Passwords(#[from] passwords::PasswordError),
    /// The workers cannot be started.
    #[error(transparent)]
    Workers(#[from] workers::WorkersError),
    /// The signal handlers cannot be installed.
    #[error("cannot handle SIGTERM")]
    Signals(#[source] std::io::Error),
}

impl ServerError {
    /// The exit status: 69 (unavailable) when the address cannot be listened on, 66 (no input)
    /// when a TLS file cannot be read, 65 (data error) when TLS refuses the pair, 70 otherwise.
    pub fn exit_status(&self) -> opschain_runner::exit::ExitStatus {
        use opschain_runner::exit::Sysexit;
        match self {
            ServerError::Listen { .. } => Sysexit::Unavailable.into(),
            ServerError::Tls(listen::TlsError::Certificate { .. } | listen::TlsError::Key { .. }) => Sysexit::NoInput.into(),
            ServerError::Tls(listen::TlsError::Config(_)) => Sysexit::DataErr.into(),
            _ => Sysexit::Software.into(),
        }
    }
}

/// Serves the API and `pages` (routes served beside it, such as `crate::page::routes()`; an empty
/// `axum::Router` for the API alone) until SIGTERM or SIGINT, then stops: the listener closes,
/// requests in flight are answered, running changes get `settings.shutdown_grace` to end before
/// they are cancelled.
pub fn run(settings: ServerSettings, controller: ControllerConfig, pages: axum::Router<AppState>) -> Result<(), ServerError> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("opschain-http").build().map_err(ServerError::Runtime)?;
    runtime.block_on(serve(settings, controller, pages))
}

/// [`run`]'s body, on the runtime.
async fn serve(settings: ServerSettings, controller: ControllerConfig, pages: axum::Router<AppState>) -> Result<(), ServerError> {
    let tls = match &settings.tls {
        Some((cert, key)) => Some(listen::tls_acceptor(cert, key)?),
        None => None,
    };
    let state_dir = controller.state_dir.clone();
    let store = Arc::new(tokio::task::spawn_blocking(move || Store::open(&state_dir)).await.map_err(|e| ServerError::Runtime(std::io::Error::other(e)))??);
    let controller = Arc::new(controller);
    let passwords = passwords::Passwords::new(settings.failed_login_delay)?;
    let listener = tokio::net::TcpListener::bind(settings.listen).await.map_err(|source| ServerError::Listen { addr: settings.listen, source })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Listen { addr: settings.listen, source })?;
    if tls.is_none() && !addr.ip().is_loopback() {
        eprintln!("opschain server: warning: listening on {addr} without TLS: passwords and session cookies cross the network in clear (give --tls-cert and --tls-key)");
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("opschain server: listening on {scheme}://{addr} (state {})", controller.state_dir.display());
    // Started once the address is ours: a second server on the same address fails above
    // without touching the changes of the first.
    let workers = workers::Workers::start(Arc::clone(&store), Arc::clone(&controller), settings.max_running_changes)?;
    let settings = Arc::new(settings);
    let state = AppState {
        store,
        passwords: Arc::new(passwords),
        workers: Arc::clone(&workers),
        settings: Arc::clone(&settings),
        controller,
        feeds: Arc::default(),
        remote_locks: Arc::default(),
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(ServerError::Signals)?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).map_err(ServerError::Signals)?;
    let grace = settings.shutdown_grace;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        println!("opschain server: stopping: no new connections or changes; running changes have {} s to end", grace.as_secs());
    };
    let app = router::finish(pages.merge(router::api()), state);
    listen::serve(listener, app, tls, &settings, stop).await;
    let _ = tokio::task::spawn_blocking(move || workers.shutdown(grace)).await;
    println!("opschain server: stopped");
    Ok(())
}
