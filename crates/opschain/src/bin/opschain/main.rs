//! `opschain`: the host-side companion controller. Runs changes (an action of a project's
//! repository, at a commit, in an environment) as trees of steps, each step one run of the
//! `opschain-runner` agent, and keeps projects, environments, properties (every version), changes,
//! steps, logs and secret sets in one SQLite file under the state directory.
//!
//! One file per subcommand under [`commands`], each its clap definition and a thin `exec` over
//! the library (`opschain_runner::controller`); this file parses the command line, runs the
//! command and turns its failure into an exit status.

// The doc comments of the command-line types are the `--help` texts, where `<repo>` and the like
// are placeholders the user reads, not HTML.
#![allow(rustdoc::invalid_html_tags)]

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use opschain::catalog::CatalogError;
use opschain::change::ChangeError;
use opschain::dev::DevError;
use opschain::rc::RcError;
use opschain::repo::RepoError;
use opschain::report::ReportError;
use opschain::server::accounts::AccountError;
use opschain::server::ServerError;
use opschain::store::{SealError, StoreError};
use opschain_runner::exit::{ExitStatus, Sysexit};

use commands::{Command, Ctx, Failure};

/// The OpsChain-compatible controller: runs changes as step trees, keeps properties and history.
///
/// A change runs an action of a project's repository at one commit in one environment. Each step
/// runs the agent (`opschain-runner`) in a fresh checkout; the children a step reports run after
/// it, in sequence or in parallel; each step's property diffs are applied to the stored
/// properties when it ends.
///
/// The commands and flags are OpsChain's CLI's (`change create`, `project show-properties
/// --project-code`, ...); this controller's own earlier names are kept as aliases (`change run`,
/// `change logs`, `--project`, ...), so both spellings work.
///
/// Examples:
///
///   opschain demo                                      # the demo change, end to end
///
///   opschain change create -p web -e dev --action deploy --git-rev main
///
///   opschain change show 3 ; opschain change show-logs 3 ; opschain change retry 3
///
///   opschain environment show-properties --project-code web --environment-code dev
///
///   opschain project set-properties -p web --file-path props.json
///
///   opschain dev create-dockerfile                     # writes .opschain/Dockerfile
#[derive(Debug, Parser)]
#[command(name = "opschain", version, verbatim_doc_comment, max_term_width = 100, after_help = AFTER_HELP)]
pub struct Cli {
    /// State directory: the database (opschain.db), repository snapshots and step sandboxes,
    /// readable by its owner only (0700, the database 0600; a looser one is tightened).
    /// Default: $XDG_STATE_HOME/opschain, else ~/.local/state/opschain, else ./.opschain-state.
    #[arg(long, global = true, env = "OPSCHAIN_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The key file properties and secret sets are encrypted with in the database
    /// (XChaCha20-Poly1305; 32 bytes in base64). Made 0600 with a new random key when missing and
    /// the database has never been encrypted; a database from before encryption is encrypted
    /// when opened. Every process of one database must be given the same file; keep a copy: the
    /// database cannot be read without it. Default: opschain.key in the state directory.
    #[arg(long, global = true, env = "OPSCHAIN_KEY_FILE", value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// A PostgreSQL database to keep the store's catalogue in (projects, environments,
    /// properties, secret sets), shared by every controller given it and encrypted as the
    /// embedded store is: postgres://USER:PASSWORD@HOST:PORT/DB (the password and port
    /// optional), or `host=/socket/dir port=5432 user=U dbname=DB`. Its schema is made or brought
    /// up to date on connect. Changes run on the embedded store only: a command that runs or reads
    /// changes is refused with it (64). Default: the embedded SQLite store.
    #[arg(long, global = true, env = "OPSCHAIN_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The end of `opschain --help`: where default codes come from, and the exit statuses.
const AFTER_HELP: &str = "\
Project and environment codes: a command that needs one and is not given its flag takes it from
$opschain_projectCode / $opschain_environmentCode, else from the projectCode / environmentCode keys
of the .opschainrc file of the working directory, else of the home directory (it says so on
stderr). `properties ...` takes only the project code that way: there, no --environment-code means
the project's own properties.

.opschainrc is OpsChain's CLI configuration, JSON or INI (`key = value`), `;` starting a comment
line. Read: projectCode, environmentCode, editor (of edit-properties, after $VISUAL and $EDITOR).
Accepted and reported as not used yet: apiBaseUrl, username, password, passwordCommand,
requestTimeout, stepEmoji (this controller keeps its state locally; it has no API client).

Exit status:
   0  success (for a change: it succeeded)
   1  the change ended in error
   2  the change was cancelled
  64  the command line is wrong (unknown command or flag, no project or environment code, a
      change command given --database-url)
  65  invalid input: a properties or secret set file that is not the right JSON, a bad .opschainrc;
      a change on an archived project or environment; deleting one that had changes; retrying a
      change that succeeded
  66  not found: the project, environment, change, secret set, input file, repository, its
      OpsChain folder (in the commit that runs), git revision or git remote named does not exist
  67  `user`: no such user
  69  `server`: the address cannot be listened on
  70  the controller itself failed (store, git, docker, the agent missing)
  73  cannot create: `dev create-dockerfile` found a Dockerfile there already
  74  an input file or the Dockerfile cannot be read or written
  75  another controller runs the change (retry later, or cancel it)
  78  the key file is missing, holds no key, or is not the key the database is encrypted with";

/// The exit status of a failure of the controller itself (never 1 or 2: those say how a change
/// ended). The first cause in the chain that has a status of its own decides; else 70.
fn failure_status(e: &anyhow::Error) -> ExitStatus {
    for cause in e.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return f.status();
        }
        if let Some(e) = cause.downcast_ref::<opschain_runner::json::JsonError>() {
            return e.exit_status();
        }
        if cause.downcast_ref::<RcError>().is_some() {
            return Sysexit::DataErr.into();
        }
        if let Some(e) = cause.downcast_ref::<CatalogError>().or(match cause.downcast_ref::<ChangeError>() {
            Some(ChangeError::Catalog(e)) => Some(e),
            _ => None,
        }) {
            return catalog_status(e);
        }
        match cause.downcast_ref::<ReportError>() {
            Some(ReportError::Store(StoreError::NotFound(_)) | ReportError::NotStarted(_)) => return Sysexit::NoInput.into(),
            Some(ReportError::Store(_)) => return Sysexit::Software.into(),
            Some(ReportError::Write(_)) => return Sysexit::IoErr.into(),
            None => {}
        }
        if let Some(e) = cause.downcast_ref::<RepoError>() {
            return repo_status(e);
        }
        match cause.downcast_ref::<DevError>() {
            Some(DevError::Exists { .. }) => return Sysexit::CantCreat.into(),
            Some(DevError::Write { .. }) => return Sysexit::IoErr.into(),
            Some(DevError::Resolve { .. }) => return Sysexit::Software.into(),
            None => {}
        }
        if let Some(e) = cause.downcast_ref::<AccountError>() {
            return e.exit_status();
        }
        if let Some(e) = cause.downcast_ref::<ServerError>() {
            return e.exit_status();
        }
        match cause.downcast_ref::<StoreError>() {
            Some(StoreError::NotFound(_)) => return Sysexit::NoInput.into(),
            Some(StoreError::Seal(SealError::Damaged { .. })) => return Sysexit::DataErr.into(),
            Some(StoreError::Seal(_)) => return Sysexit::Config.into(),
            Some(_) => return Sysexit::Software.into(),
            None => {}
        }
        // `ChangeError::Store` is transparent: the store error itself is not in the chain.
        match cause.downcast_ref::<ChangeError>() {
            Some(ChangeError::NoSecretSet(_) | ChangeError::Store(StoreError::NotFound(_))) => return Sysexit::NoInput.into(),
            Some(ChangeError::Repo { source, .. }) => return repo_status(source),
            Some(ChangeError::NothingToRetry(_)) => return Sysexit::DataErr.into(),
            Some(ChangeError::Running { .. }) => return Sysexit::TempFail.into(),
            Some(_) => return Sysexit::Software.into(),
            None => {}
        }
    }
    Sysexit::Software.into()
}

/// The exit status of a repository or revision that cannot be used: 66 for what the user named
/// and is not there, else 70.
fn repo_status(e: &RepoError) -> ExitStatus {
    match e {
        RepoError::NotARepo { .. }
        | RepoError::NotAWorkTree { .. }
        | RepoError::NoRemote { .. }
        | RepoError::NoRepo { .. }
        | RepoError::NoFolder { .. }
        | RepoError::UnknownRevision { .. } => Sysexit::NoInput.into(),
        _ => Sysexit::Software.into(),
    }
}

/// The exit status of a project or environment that cannot be used.
fn catalog_status(e: &CatalogError) -> ExitStatus {
    match e {
        CatalogError::UnknownProject { .. } | CatalogError::UnknownEnvironment { .. } => Sysexit::NoInput.into(),
        CatalogError::Archived { .. } | CatalogError::HasChanges { .. } => Sysexit::DataErr.into(),
        CatalogError::Store(StoreError::NotFound(_)) => Sysexit::NoInput.into(),
        CatalogError::Store(_) => Sysexit::Software.into(),
    }
}

/// Whether `e` is a write to a reader that went away (`opschain change ls | head -1`).
fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

fn main() -> ExitCode {
    opschain::bound_allocator();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print to stdout and succeed; a wrong command line is a usage
        // error, 64 (clap's own 2 would read as "the change was cancelled").
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(Sysexit::Usage as u8) } else { ExitCode::SUCCESS };
        }
    };
    let mut out = std::io::stdout();
    match Ctx::new(cli.state_dir, cli.key_file, cli.database_url).and_then(|ctx| cli.command.exec(&ctx, &mut out)) {
        Ok(code) => code,
        // The reader has what it wanted (`| head -1`): nothing is wrong, and nothing is said.
        Err(e) if is_closed_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("opschain: error: {e:#}");
            ExitCode::from(failure_status(&e))
        }
    }
}
