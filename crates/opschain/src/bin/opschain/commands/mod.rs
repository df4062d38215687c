//! The subcommands of `opschain`, one file each (as cargo's own are): its clap definition and
//! an `exec` that calls the library and prints what it returns. The arguments several commands
//! share are in [`args`]; how steps run, from the command line to the library's configuration, in
//! [`settings`].

pub mod args;
pub mod change;
pub mod demo;
pub mod dev;
pub mod environment;
pub mod gc;
pub mod project;
pub mod properties;
pub mod secrets;
pub mod server;
pub mod settings;
pub mod store;
pub mod user;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;

use opschain::rc::{Code, Defaults, Source, Which};
use opschain::status::ChangeStatus;
use opschain::store::{Catalog, PgStore, Store, StoreOptions, KEY_FILE};
use opschain_runner::exec::ExecError;
use opschain_runner::exit::{ExitStatus, Sysexit};

/// The commands of `opschain`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create (and run), list, show, print the logs of, retry and cancel changes.
    #[command(subcommand)]
    Change(change::ChangeCommand),
    /// List and create projects; show, set and edit a project's properties.
    #[command(subcommand)]
    Project(project::ProjectCommand),
    /// List and create environments; show, set and edit an environment's properties.
    #[command(subcommand)]
    Environment(environment::EnvironmentCommand),
    /// Show, set, edit and list the versions of project or environment properties (the same
    /// commands as `project`/`environment show-properties`, `set-properties` and
    /// `edit-properties`, plus `history`).
    #[command(subcommand)]
    Properties(properties::PropertiesCommand),
    /// Manage secret sets: runner secrets (change run --secrets) and the image builds' secret sets
    /// (those opschain.config.build_secrets lists, else opschain-build-env, which always exists).
    /// Values are never printed: every line a change prints or stores has them masked as `****`.
    #[command(subcommand)]
    Secrets(secrets::SecretsCommand),
    /// Tools for a project's repository.
    #[command(subcommand)]
    Dev(dev::DevCommand),
    /// Maintain the store itself (its encryption key).
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// Run the demo change (fixtures/demo: project demo, environment dev, action deploy) on the
    /// process backend, with its secret set `demo` created when missing.
    Demo(demo::DemoArgs),
    /// Serve OpsChain's JSON:API over HTTP (or HTTPS): the controller as a team's shared
    /// service, its changes run by the server's workers. Stops on SIGTERM or SIGINT.
    Server(server::ServerArgs),
    /// Manage the server's users (HTTP Basic and session logins).
    #[command(subcommand)]
    User(user::UserCommand),
    /// Remove what changes left in the state directory and no longer need.
    ///
    /// Removed: the sandboxes (<state dir>/sandboxes/change-ID: step checkouts and step contexts,
    /// runner secrets included) of every change no controller runs, including those a killed
    /// controller left and those --keep-sandboxes kept; the repository snapshots of plain
    /// directories (<state dir>/repos) that no change still needs for a retry; the Docker
    /// backend's caches (<state dir>/sandboxes/repo-tars, sandboxes/folders) of commits no
    /// retained change has; and the temporary remains of killed controllers.
    ///
    /// Kept: everything a change whose controller is alive uses, and the snapshot of every change
    /// `change retry` can run (error, cancelled, or left running by a killed controller) that is
    /// one of the last --keep-changes changes or younger than --keep-days days. A retry of an
    /// older change fails once its snapshot is gone. The store (changes, logs, properties) is
    /// not touched.
    ///
    /// Each change runs the cheap part as it ends: its own sandboxes, those of changes whose
    /// controller was killed, and its snapshot when it succeeded and no retryable change uses it.
    Gc(gc::GcArgs),
}

impl Command {
    /// Runs the command, printing to `out`.
    pub fn exec(self, ctx: &Ctx, out: &mut dyn Write) -> Result<ExitCode> {
        match self {
            Command::Change(c) => change::exec(c, ctx, out),
            Command::Project(c) => project::exec(c, ctx, out),
            Command::Environment(c) => environment::exec(c, ctx, out),
            Command::Properties(c) => properties::exec(c, ctx, out),
            Command::Secrets(c) => secrets::exec(c, ctx, out),
            Command::Dev(c) => dev::exec(c, out),
            Command::Store(c) => store::exec(c, ctx, out),
            Command::Demo(a) => demo::exec(a, ctx, out),
            Command::Server(a) => server::exec(a, ctx, out),
            Command::User(c) => user::exec(c, ctx, out),
            Command::Gc(a) => gc::exec(a, ctx, out),
        }
    }
}

/// What every command may use: the default codes and the state directory (its store opened on
/// first use, so that commands that need none never create one).
pub struct Ctx {
    /// Where default project and environment codes come from.
    pub defaults: Defaults,
    /// The state directory (absolute).
    pub state_dir: PathBuf,
    /// How the store is opened (its key file).
    pub store_options: StoreOptions,
    /// The PostgreSQL database of the catalogue (`--database-url`), if any.
    pub database_url: Option<String>,
    store: std::cell::OnceCell<Store>,
    postgres: std::cell::OnceCell<PgStore>,
    rc_noted: std::cell::Cell<bool>,
}

impl Ctx {
    /// The context of a command run with `--state-dir state_dir` (default: [`default_state_dir`])
    /// and `--key-file key_file` (default: [`KEY_FILE`] in the state directory).
    pub fn new(state_dir: Option<PathBuf>, key_file: Option<PathBuf>, database_url: Option<String>) -> Result<Ctx> {
        // Absolute, because steps run with their sandbox (under it) as working directory.
        let state_dir = state_dir.unwrap_or_else(default_state_dir);
        let state_dir = std::path::absolute(&state_dir).with_context(|| format!("cannot resolve the state directory {}", state_dir.display()))?;
        Ok(Ctx {
            defaults: Defaults::from_process(),
            state_dir,
            store_options: StoreOptions { key_file },
            database_url,
            store: std::cell::OnceCell::new(),
            postgres: std::cell::OnceCell::new(),
            rc_noted: std::cell::Cell::new(false),
        })
    }

    /// The embedded store, opened (and created) on first use: what runs changes. With
    /// `--database-url`, a usage error (the PostgreSQL store holds no change yet).
    pub fn store(&self) -> Result<&Store> {
        if self.database_url.is_some() {
            return Err(Failure::Usage(
                "this command needs changes, which the PostgreSQL store (--database-url) does not hold yet: it holds projects, \
                 environments, properties and secret sets; run changes with the embedded store (no --database-url)"
                    .into(),
            )
            .into());
        }
        if let Some(store) = self.store.get() {
            return Ok(store);
        }
        let store = Store::open_with(&self.state_dir, &self.store_options)?;
        Ok(self.store.get_or_init(|| store))
    }

    /// The store's catalogue (projects, environments, properties, secret sets): the PostgreSQL
    /// store's with `--database-url`, else the embedded store's. Opened on first use.
    pub fn catalog(&self) -> Result<&dyn Catalog> {
        let Some(url) = &self.database_url else { return Ok(self.store()?) };
        if let Some(store) = self.postgres.get() {
            return Ok(store);
        }
        let store = PgStore::connect(url, &self.state_dir, &self.store_options)?;
        Ok(self.postgres.get_or_init(|| store))
    }

    /// The key file the store is opened with.
    pub fn key_file(&self) -> PathBuf {
        self.store_options.key_file.clone().unwrap_or_else(|| self.state_dir.join(KEY_FILE))
    }

    /// The code `which`, from its flag or a default (see [`Defaults`]); says on stderr where a
    /// default came from. Without any: a usage error naming every source.
    pub fn code(&self, which: Which, flag: Option<&str>) -> Result<String> {
        match self.defaults.resolve(which, flag)? {
            Some(Code { value, source: Source::Flag }) => Ok(value),
            Some(Code { value, source }) => {
                eprintln!("opschain: {} code {value:?} from {source}", which.noun());
                if matches!(source, Source::File(_)) {
                    self.rc_notes();
                }
                Ok(value)
            }
            None => Err(no_code(which)),
        }
    }

    /// Tells, once, what of `.opschainrc` is not used (OpsChain's API client settings, unknown
    /// keys).
    pub fn rc_notes(&self) {
        if self.rc_noted.replace(true) {
            return;
        }
        for note in self.defaults.notes().unwrap_or_default() {
            eprintln!("opschain: note: {note}");
        }
    }

    /// The editor of `edit-properties`: $VISUAL, $EDITOR, `editor` of `.opschainrc`, else vi.
    pub fn editor(&self) -> Result<String> {
        let from_rc = self.defaults.editor()?;
        if from_rc.is_some() {
            self.rc_notes();
        }
        Ok(opschain::edit::editor(from_rc.as_deref()))
    }

    /// The project code of `-p`, or its default.
    pub fn project(&self, flag: &args::ProjectCode) -> Result<String> {
        self.code(Which::Project, flag.project_code.as_deref())
    }

    /// The environment code of `-e`, or its default.
    pub fn environment(&self, flag: &args::EnvironmentCode) -> Result<String> {
        self.code(Which::Environment, flag.environment_code.as_deref())
    }
}

/// The state directory when none is given: $XDG_STATE_HOME/opschain, else
/// ~/.local/state/opschain, else ./.opschain-state.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("opschain");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/state/opschain"),
        None => PathBuf::from(".opschain-state"),
    }
}

/// The usage error of a command that needs code `which` and has none.
pub fn no_code(which: Which) -> anyhow::Error {
    let flag = match which {
        Which::Project => "project-code",
        Which::Environment => "environment-code",
    };
    Failure::NoCode { noun: which.noun(), flag, var: which.var(), key: which.key() }.into()
}

/// The exit status of a command that ran a change: 0 when it succeeded, 2 when it was cancelled,
/// else 1.
pub fn exit_of(status: ChangeStatus) -> ExitCode {
    match status {
        ChangeStatus::Success => ExitCode::SUCCESS,
        ChangeStatus::Cancelled => ExitCode::from(2),
        _ => ExitCode::from(1),
    }
}

/// The command line's own failures, that are no library error: each names its exit status.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// A project or environment code is needed and no source gives one.
    #[error("no {noun} code: give --{flag} CODE, set ${var}, or put {key} in .opschainrc")]
    NoCode {
        /// "project" or "environment".
        noun: &'static str,
        /// The flag.
        flag: &'static str,
        /// The variable.
        var: &'static str,
        /// The key of `.opschainrc`.
        key: &'static str,
    },
    /// An input file that cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A secret set file that cannot be read or is not `{"NAME": "value"}`.
    #[error("cannot read the secret set file {}", path.display())]
    SecretFile {
        /// The file.
        path: PathBuf,
        /// The cause: the file is missing or unreadable, or its content is not a secret set.
        #[source]
        source: ExecError,
    },
    /// A command-line value that is not valid.
    #[error("{0}")]
    Usage(String),
}

impl Failure {
    /// Its exit status.
    pub fn status(&self) -> ExitStatus {
        let sysexit = match self {
            Failure::NoCode { .. } | Failure::Usage(_) => Sysexit::Usage,
            Failure::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => Sysexit::NoInput,
            Failure::SecretFile { source: ExecError::SecretSet(e), .. } => return e.exit_status(),
            Failure::SecretFile { .. } => Sysexit::DataErr,
            Failure::Read { .. } => Sysexit::IoErr,
        };
        sysexit.into()
    }
}

/// Reads a file the user named (`-` for stdin).
pub fn read_input(path: &Path) -> Result<String> {
    let mut text = String::new();
    if path == Path::new("-") {
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(|source| Failure::Read { path: "stdin".into(), source })?;
    } else {
        text = std::fs::read_to_string(path).map_err(|source| Failure::Read { path: path.to_path_buf(), source })?;
    }
    Ok(text)
}
