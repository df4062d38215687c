//! `opschain server`: serve OpsChain's JSON:API (the library's [`opschain::server`]) until SIGTERM
//! or SIGINT.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;

use opschain::output::View;
use opschain::server::ServerSettings;
use opschain::status::BackendKind;

use super::settings::{config, RunSettings};
use super::Ctx;

/// What `opschain server` serves with.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The address to listen on (a non-loopback one without TLS prints a warning).
    #[arg(long, env = "OPSCHAIN_LISTEN", default_value = "127.0.0.1:3000", value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
    /// The TLS certificate chain (PEM): the server speaks HTTPS (needs --tls-key).
    #[arg(long, env = "OPSCHAIN_TLS_CERT", requires = "tls_key", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM) of --tls-cert.
    #[arg(long, env = "OPSCHAIN_TLS_KEY", requires = "tls_cert", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// How many changes run at once (each in its own environment).
    #[arg(long, env = "OPSCHAIN_MAX_RUNNING_CHANGES", default_value_t = 4, value_name = "N")]
    pub max_running_changes: usize,
    /// Seconds a stopping server lets running changes go on before cancelling them.
    #[arg(long, env = "OPSCHAIN_SHUTDOWN_GRACE_SECS", default_value_t = 30, value_name = "SECS")]
    pub shutdown_grace_secs: u64,
    /// Milliseconds a failed login waits before its answer (doubling with each failure in a row
    /// for the same name, up to 8 times).
    #[arg(long, env = "OPSCHAIN_FAILED_LOGIN_DELAY_MS", default_value_t = 1000, value_name = "MS")]
    pub failed_login_delay_ms: u64,
    /// Seconds a request may take to be answered.
    #[arg(long, env = "OPSCHAIN_REQUEST_TIMEOUT_SECS", default_value_t = 30, value_name = "SECS")]
    pub request_timeout_secs: u64,
    /// The largest request body in bytes (properties documents may be as large as the agent's
    /// input limit, 64 MiB).
    #[arg(long, env = "OPSCHAIN_BODY_LIMIT", default_value_t = 4 << 20, value_name = "BYTES")]
    pub body_limit: usize,
    /// Where the steps of the changes created through the API run.
    #[arg(long, env = "OPSCHAIN_BACKEND", default_value = "process", value_name = "NAME")]
    pub backend: String,
    /// How steps run: workers, agent, Docker settings.
    #[command(flatten)]
    pub settings: RunSettings,
}

/// Runs `opschain server`.
pub fn exec(args: ServerArgs, ctx: &Ctx, _out: &mut dyn Write) -> Result<ExitCode> {
    let controller = config(&ctx.state_dir, &args.settings, View::default())?;
    let backend = BackendKind::from_name(&args.backend).filter(|b| b.is_available());
    let Some(backend) = backend else { bail!("--backend {:?}: expected one of {}", args.backend, BackendKind::available_names()) };
    let settings = ServerSettings {
        tls: args.tls_cert.zip(args.tls_key),
        max_running_changes: args.max_running_changes,
        shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
        failed_login_delay: Duration::from_millis(args.failed_login_delay_ms),
        request_timeout: Duration::from_secs(args.request_timeout_secs),
        body_limit: args.body_limit,
        backend,
        ..ServerSettings::new(args.listen)
    };
    // The page is served beside the API: the binary composes them, the server knows no page.
    opschain::server::run(settings, controller, opschain::page::routes())?;
    Ok(ExitCode::SUCCESS)
}
