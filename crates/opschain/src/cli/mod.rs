//! The command line of `opschain`, the host controller: its commands, flags and help texts. The
//! binary parses it and calls the library (`change`, `store`, ...); nothing here does any work.

// The doc comments of the command-line types are the `--help` texts, where `<repo>` and the like
// are placeholders the user reads, not HTML.
#![allow(rustdoc::invalid_html_tags)]

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::status::BackendKind;
use opschain_runner::layout::DEFAULT_REPO_FOLDER;

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
    /// Work through this OpsChain server (its API's base URL, e.g. http://localhost:3000) rather
    /// than on the local store. Default: $opschain_apiBaseUrl, else apiBaseUrl of .opschainrc,
    /// else none: the local store. The user: $opschain_username or username; the password:
    /// $opschain_password, password or passwordCommand of .opschainrc.
    #[arg(long, global = true, value_name = "URL")]
    pub api_url: Option<String>,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The end of `opschain --help`: where default codes come from, and the exit statuses.
pub const AFTER_HELP: &str = "\
Project and environment codes: a command that needs one and is not given its flag takes it from
$opschain_projectCode / $opschain_environmentCode, else from the projectCode / environmentCode keys
of the .opschainrc JSON file of the working directory, else of the home directory (it says so on
stderr). `properties ...` takes only the project code that way: there, no --environment-code means
the project's own properties.

Exit status:
   0  success (for a change: it succeeded)
   1  the change ended in error
   2  the change was cancelled
  64  the command line is wrong (unknown command or flag, no project or environment code)
  65  invalid input: a properties or secret set file that is not the right JSON, a bad .opschainrc
  66  not found: the project, environment, change, secret set or input file named does not exist
  70  the controller itself failed (store, git, docker, the agent missing) or refused the command
  73  cannot create: `dev create-dockerfile` found a Dockerfile there already
  74  an input file or the Dockerfile cannot be read or written";

/// The commands of `opschain`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create (and run), list, show, print the logs of, retry and cancel changes.
    #[command(subcommand)]
    Change(ChangeCommand),
    /// List and create projects; show, set and edit a project's properties.
    #[command(subcommand)]
    Project(ProjectCommand),
    /// List and create environments; show, set and edit an environment's properties.
    #[command(subcommand)]
    Environment(EnvironmentCommand),
    /// Show, set, edit and list the versions of project or environment properties (the same
    /// commands as `project`/`environment show-properties`, `set-properties` and
    /// `edit-properties`, plus `history`).
    #[command(subcommand)]
    Properties(PropertiesCommand),
    /// Manage secret sets: runner secrets (change run --secrets) and the image builds' secret sets
    /// (those opschain.config.build_secrets lists, else opschain-build-env, which always exists).
    /// Values are never printed: every line a change prints or stores has them masked as `****`.
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Tools for a project's repository.
    #[command(subcommand)]
    Dev(DevCommand),
    /// Run the demo change (fixtures/demo: project demo, environment dev, action deploy) on the
    /// process backend, with its secret set `demo` created when missing.
    Demo(DemoArgs),
    /// Serve OpsChain's JSON:API over HTTP (or HTTPS): the controller as a team's shared
    /// service, its changes run by the server's workers. Stops on SIGTERM or SIGINT.
    Server(ServerArgs),
    /// Manage the server's users (HTTP Basic and session logins).
    #[command(subcommand)]
    User(UserCommand),
}

/// How steps run: shared by `change create`, `change retry` and `demo`.
#[derive(Debug, Args)]
pub struct RunSettings {
    /// How many steps run at once (parallel children beyond it wait). Default: 8 per CPU (steps
    /// mostly wait on I/O, see `scheduler::default_workers`).
    #[arg(long, env = "OPSCHAIN_WORKERS", value_name = "N")]
    pub workers: Option<usize>,
    /// The agent binary. Default: `opschain-runner` next to this binary.
    #[arg(long, env = "OPSCHAIN_RUNNER_BIN", value_name = "PATH")]
    pub runner_bin: Option<PathBuf>,
    /// Seconds between SIGTERM and SIGKILL when a step is cancelled.
    #[arg(long, env = "OPSCHAIN_GRACE_SECS", default_value_t = 10, value_name = "SECS")]
    pub grace_secs: u64,
    /// Keep each step's sandbox (under <state dir>/sandboxes) for debugging.
    #[arg(long, env = "OPSCHAIN_KEEP_SANDBOXES")]
    pub keep_sandboxes: bool,
    /// The docker CLI of the Docker backend (Debian's client builds with BuildKit).
    #[arg(long, env = "OPSCHAIN_DOCKER_BIN", default_value = "/usr/bin/docker", value_name = "PATH")]
    pub docker_bin: PathBuf,
    /// The base runner image of the Docker backend (the OPSCHAIN_BASE_RUNNER build arg; must
    /// exist locally).
    #[arg(long, env = "OPSCHAIN_DOCKER_BASE_IMAGE", default_value = "opschain-runner:latest", value_name = "IMAGE")]
    pub docker_base_image: String,
    /// The OpsChain folder of the repository: .opschain, or .mintpress for MintPress (its
    /// <folder>/Dockerfile, actions.toml and properties; the step image's env context is
    /// step_context.json.zip for .mintpress). A change keeps the folder it was created with:
    /// its retry runs with that one, whatever this says.
    #[arg(long, env = "OPSCHAIN_REPO_FOLDER", default_value = ".opschain", value_name = "NAME")]
    pub folder: String,
    /// How the Docker backend passes the step context in and gets step_result.json back:
    /// `bind-mount` (the repository folder mounted from this host) or `stream` (the context on the
    /// container's stdin, the result framed in its output: nothing shared with the host; see
    /// docs/transport.md). The Kubernetes backend always streams.
    #[arg(long, env = "OPSCHAIN_TRANSPORT", default_value = "bind-mount", value_parser = ["bind-mount", "stream"], value_name = "NAME")]
    pub transport: String,
    /// A registry (HOST:PORT) to push each step image built to; steps run the registry's copy
    /// and an image the registry has is pulled, not rebuilt. Default: none (local images only).
    #[arg(long, env = "OPSCHAIN_REGISTRY", value_name = "HOST:PORT")]
    pub registry: Option<String>,
    /// The Kubernetes backend's settings.
    #[cfg(feature = "kubernetes")]
    #[command(flatten)]
    pub kube: KubeSettings,
}

/// The backends this build offers to `--backend`, read as their [`BackendKind`].
pub fn backends() -> impl clap::builder::TypedValueParser<Value = BackendKind> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(BackendKind::AVAILABLE.iter().map(|kind| kind.as_str()))
        .map(|name| BackendKind::from_name(&name).expect("clap offers only the kinds' names"))
}

/// The Kubernetes backend's settings (`--backend kubernetes`).
#[cfg(feature = "kubernetes")]
#[derive(Debug, Args)]
pub struct KubeSettings {
    /// The namespace of the steps' Jobs and Secrets.
    #[arg(long, env = "OPSCHAIN_KUBE_NAMESPACE", default_value = "default", value_name = "NAME")]
    pub kube_namespace: String,
    /// A Secret (of type kubernetes.io/dockerconfigjson) the pods pull the step images with.
    #[arg(long, env = "OPSCHAIN_KUBE_IMAGE_PULL_SECRET", value_name = "NAME")]
    pub kube_image_pull_secret: Option<String>,
    /// The step container's resource requests, e.g. cpu=500m,memory=256Mi. Default: none.
    #[arg(long, env = "OPSCHAIN_KUBE_REQUESTS", default_value = "", value_name = "K=V,...")]
    pub kube_requests: String,
    /// The step container's resource limits, e.g. memory=1Gi. Default: none.
    #[arg(long, env = "OPSCHAIN_KUBE_LIMITS", default_value = "", value_name = "K=V,...")]
    pub kube_limits: String,
    /// The pods' node selector, e.g. pool=steps. Default: none.
    #[arg(long, env = "OPSCHAIN_KUBE_NODE_SELECTOR", default_value = "", value_name = "K=V,...")]
    pub kube_node_selector: String,
    /// Seconds a finished Job and its Secret are kept (for kubectl logs) before the cluster
    /// removes them.
    #[arg(long, env = "OPSCHAIN_KUBE_TTL_SECS", default_value_t = 600, value_name = "SECS")]
    pub kube_ttl_secs: i32,
    /// Seconds a pod may take to start (scheduling, image pull) before the step fails; also
    /// added to the action's timeouts in the Job's activeDeadlineSeconds.
    #[arg(long, env = "OPSCHAIN_KUBE_START_SECS", default_value_t = 300, value_name = "SECS")]
    pub kube_start_secs: u64,
}

/// `-p`: the project code, defaulting from $opschain_projectCode or `.opschainrc`.
#[derive(Debug, Args)]
pub struct ProjectCode {
    /// The project code. Default: $opschain_projectCode, else projectCode of .opschainrc.
    #[arg(short = 'p', long = "project-code", visible_alias = "project", value_name = "CODE")]
    pub project_code: Option<String>,
}

/// `-e`: the environment code, defaulting from $opschain_environmentCode or `.opschainrc`.
#[derive(Debug, Args)]
pub struct EnvironmentCode {
    /// The environment code. Default: $opschain_environmentCode, else environmentCode of
    /// .opschainrc.
    #[arg(short = 'e', long = "environment-code", visible_alias = "environment", value_name = "CODE")]
    pub environment_code: Option<String>,
}

/// `-y`: OpsChain's CLI asks before it writes unless given `--confirm`; this one never asks.
#[derive(Debug, Args)]
pub struct Confirm {
    /// Accepted as OpsChain's CLI takes it; this controller never asks for confirmation.
    #[arg(short = 'y', long = "confirm")]
    pub confirm: bool,
}

/// What `change create` (and `run`) runs: the action, the repository and commit, the project and environment, how.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The project code.
    #[command(flatten)]
    pub project: ProjectCode,
    /// The environment code.
    #[command(flatten)]
    pub environment: EnvironmentCode,
    /// The action of the change's root step (an empty name means `default`, as in OpsChain).
    #[arg(short = 'a', long, value_name = "NAME")]
    pub action: String,
    /// The git revision to run (resolved to a commit when the change is created).
    #[arg(short = 'g', long, default_value = "HEAD", value_name = "REV")]
    pub git_rev: String,
    /// Read --git-rev against this git remote of the repository, as OpsChain does: the remote is
    /// fetched first, and a branch of it is taken as `<remote>/<rev>` (a tag or a commit as is).
    #[arg(short = 'G', long, value_name = "NAME")]
    pub git_remote_name: Option<String>,
    /// Accepted as OpsChain's CLI takes it: `change create` always streams the step logs.
    #[arg(long)]
    pub follow_logs: bool,
    /// The project's repository: a git work tree, or a plain directory (snapshotted into a git
    /// repository under the state directory, then run from that commit). Default: the working
    /// directory, which must then hold the OpsChain folder (.opschain).
    #[arg(long, value_name = "DIR")]
    pub repo: Option<PathBuf>,
    /// Where steps run: `process` (a checkout and a child process), `docker` (an image and a
    /// container per step), or, in a build with the `kubernetes` feature, `kubernetes` (a Job per
    /// step in the cluster of the kubeconfig; needs --registry).
    #[arg(long, env = "OPSCHAIN_BACKEND", default_value = "process", value_parser = backends(), value_name = "NAME")]
    pub backend: BackendKind,
    /// The secret set the steps get as runner secrets (see `opschain secrets set`). Image builds
    /// get the build secret sets instead: those opschain.config.build_secrets lists, else
    /// opschain-build-env.
    #[arg(long, value_name = "NAME")]
    pub secrets: Option<String>,
    /// The confirmation a destructive command needs.
    #[command(flatten)]
    pub confirm: Confirm,
    /// How the steps run: backend, workers, limits.
    #[command(flatten)]
    pub settings: RunSettings,
}

/// What `opschain demo` runs the demo change with.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The demo project directory.
    #[arg(long, default_value = concat!(env!("OPSCHAIN_WORKSPACE_DIR"), "/fixtures/demo"), value_name = "DIR")]
    pub repo: PathBuf,
    /// How the steps run: backend, workers, limits.
    #[command(flatten)]
    pub settings: RunSettings,
}

/// Which change: `ID`, or `-c ID` as OpsChain's CLI takes it.
#[derive(Debug, Args)]
pub struct ChangeId {
    /// The change id.
    #[arg(value_name = "ID", required_unless_present = "change_id", conflicts_with = "change_id")]
    pub id: Option<i64>,
    /// The change id (the same as ID).
    #[arg(short = 'c', long = "change-id", value_name = "ID")]
    pub change_id: Option<i64>,
}

impl ChangeId {
    /// The change id, given as ID or with `--change-id`.
    pub fn get(&self) -> i64 {
        self.id.or(self.change_id).expect("clap requires ID or --change-id")
    }
}

/// The `opschain change` commands.
#[derive(Debug, Subcommand)]
pub enum ChangeCommand {
    /// Create a change at a commit and run it; streams step logs and phase messages, exits 0 when
    /// the change succeeds, 1 when it errors, 2 when it is cancelled. The project and environment
    /// are created when new.
    #[command(visible_alias = "run")]
    Create(RunArgs),
    /// List the changes (of a project, and of an environment, when codes are given or default).
    #[command(visible_alias = "ls")]
    List {
        /// The project code.
        #[command(flatten)]
        project: ProjectCode,
        /// The environment code.
        #[command(flatten)]
        environment: EnvironmentCode,
    },
    /// Show a change and its step tree with statuses.
    Show {
        /// The change.
        #[command(flatten)]
        id: ChangeId,
    },
    /// Print a change's step logs, every line of every step, in order.
    #[command(name = "show-logs", visible_alias = "logs")]
    Logs {
        /// The change.
        #[command(flatten)]
        id: ChangeId,
        /// Keep printing lines as they are stored, until the change has ended (as `kubectl
        /// logs -f` does); Ctrl-C stops following.
        #[arg(short, long)]
        follow: bool,
    },
    /// Re-run what did not succeed in a change, from the same commit.
    Retry {
        /// The change.
        #[command(flatten)]
        id: ChangeId,
        /// How the steps run: backend, workers, limits.
        #[command(flatten)]
        settings: RunSettings,
    },
    /// Cancel a change: pending, queued and running steps become cancelled.
    Cancel {
        /// The change.
        #[command(flatten)]
        id: ChangeId,
    },
}

/// The new properties of `set-properties`: a JSON object from a file, stdin or the command line.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct NewProperties {
    /// The JSON file (`-` for stdin).
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// The JSON file (the same as FILE).
    #[arg(short = 'f', long = "file-path", value_name = "FILE")]
    pub file_path: Option<PathBuf>,
    /// The JSON object itself.
    #[arg(long, value_name = "JSON")]
    pub json: Option<String>,
}

/// `--version N` of `show-properties`.
#[derive(Debug, Args)]
pub struct PropertiesVersion {
    /// A stored version instead of the current one (see `properties history`).
    #[arg(long, value_name = "N")]
    pub version: Option<i64>,
}

/// The `opschain project` commands.
#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// List the projects.
    #[command(visible_alias = "ls")]
    List,
    /// Create a project (`change create` and `set-properties` also create the project they name).
    Create {
        /// The new project's code.
        #[arg(long, value_name = "CODE")]
        code: String,
        /// The confirmation a destructive command needs.
        #[command(flatten)]
        confirm: Confirm,
    },
    /// Print the project's current properties (or `--version N`) as JSON.
    ShowProperties {
        /// The project code.
        #[command(flatten)]
        project: ProjectCode,
        /// Which version of the properties.
        #[command(flatten)]
        version: PropertiesVersion,
    },
    /// Replace the project's properties with a JSON object; creates the project when new.
    SetProperties {
        /// The project code.
        #[command(flatten)]
        project: ProjectCode,
        /// The new properties.
        #[command(flatten)]
        new: NewProperties,
        /// The confirmation a destructive command needs.
        #[command(flatten)]
        confirm: Confirm,
    },
    /// Edit the project's properties in $VISUAL / $EDITOR (default vi); saved as a new version
    /// when changed.
    EditProperties {
        /// The project code.
        #[command(flatten)]
        project: ProjectCode,
    },
    /// Let (or stop letting) several changes of a project run at once in one environment.
    /// Default: one change at a time per environment; the others wait, `queued`.
    AllowParallelChanges {
        /// The project code.
        project: String,
        /// true or false.
        #[arg(action = clap::ArgAction::Set)]
        allow: bool,
    },
}

/// The `opschain environment` commands.
#[derive(Debug, Subcommand)]
pub enum EnvironmentCommand {
    /// List a project's environments.
    #[command(visible_alias = "ls")]
    List {
        /// The project code.
        #[command(flatten)]
        project: ProjectCode,
    },
    /// Create an environment of a project (`change create` and `set-properties` also create the
    /// environment they name).
    Create {
        /// The project code.
        #[command(flatten)]
        project: ProjectCode,
        /// The new environment's code.
        #[arg(long, value_name = "CODE")]
        code: String,
        /// The confirmation a destructive command needs.
        #[command(flatten)]
        confirm: Confirm,
    },
    /// Print the environment's current properties (or `--version N`) as JSON.
    ShowProperties {
        /// The project code.
        #[command(flatten)]
        project: ProjectCode,
        /// The environment code.
        #[command(flatten)]
        environment: EnvironmentCode,
        /// Which version of the properties.
        #[command(flatten)]
        version: PropertiesVersion,
    },
    /// Replace the environment's properties with a JSON object; creates the project and the
    /// environment when new.
    SetProperties {
        /// The project code.
        #[command(flatten)]
        project: ProjectCode,
        /// The environment code.
        #[command(flatten)]
        environment: EnvironmentCode,
        /// The new properties.
        #[command(flatten)]
        new: NewProperties,
        /// The confirmation a destructive command needs.
        #[command(flatten)]
        confirm: Confirm,
    },
    /// Edit the environment's properties in $VISUAL / $EDITOR (default vi); saved as a new
    /// version when changed.
    EditProperties {
        /// The project code.
        #[command(flatten)]
        project: ProjectCode,
        /// The environment code.
        #[command(flatten)]
        environment: EnvironmentCode,
    },
}

/// Which properties: a project's, or with `--environment-code` one of its environments'.
#[derive(Debug, Args)]
pub struct Owner {
    /// The project code.
    #[command(flatten)]
    pub project: ProjectCode,
    /// The environment code; without it, the project's properties (no default applies here).
    #[arg(short = 'e', long = "environment-code", visible_alias = "environment", value_name = "CODE")]
    pub environment: Option<String>,
}

/// The `opschain properties` commands.
#[derive(Debug, Subcommand)]
pub enum PropertiesCommand {
    /// Print the current properties (or `--version N`) as JSON: `project show-properties`,
    /// `environment show-properties`.
    Show {
        /// Whose properties: a project, or an environment of one.
        #[command(flatten)]
        owner: Owner,
        /// Which version of the properties.
        #[command(flatten)]
        version: PropertiesVersion,
    },
    /// Replace the properties with a JSON object from FILE (`-` for stdin) or `--json`:
    /// `project set-properties`, `environment set-properties`.
    Set {
        /// Whose properties: a project, or an environment of one.
        #[command(flatten)]
        owner: Owner,
        /// The new properties.
        #[command(flatten)]
        new: NewProperties,
        /// The confirmation a destructive command needs.
        #[command(flatten)]
        confirm: Confirm,
    },
    /// Edit the properties in $VISUAL / $EDITOR (default vi); saved as a new version when changed:
    /// `project edit-properties`, `environment edit-properties`.
    Edit {
        /// Whose properties: a project, or an environment of one.
        #[command(flatten)]
        owner: Owner,
    },
    /// List every stored version: number, time, and the step that wrote it.
    History {
        /// Whose properties: a project, or an environment of one.
        #[command(flatten)]
        owner: Owner,
    },
}

/// The `opschain secrets` commands.
#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Create or replace (rotate) secret set NAME from a JSON file `{"NAME": "value"}`.
    Set {
        /// The set's name.
        name: String,
        /// The JSON file.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
    /// List the secret sets (names only).
    List,
}

/// The `opschain dev` commands.
#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Write the default step runner Dockerfile to <repo>/<folder>/Dockerfile, to customise it
    /// (the folder is created when missing). An existing Dockerfile is kept unless `--force`.
    CreateDockerfile {
        /// The project's repository.
        #[arg(long, default_value = ".", value_name = "DIR")]
        repo: PathBuf,
        /// The OpsChain folder inside the repository (MintPress uses .mintpress).
        #[arg(long, env = "OPSCHAIN_REPO_FOLDER", default_value = DEFAULT_REPO_FOLDER, value_name = "NAME")]
        folder: String,
        /// Replace an existing Dockerfile.
        #[arg(long)]
        force: bool,
    },
}

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

/// The `opschain user` commands.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user; the password is read from standard input (its first line).
    Add {
        /// The login name.
        name: String,
        /// Read the password from standard input (the only way: never on the command line).
        #[arg(long, required = true)]
        password_stdin: bool,
        /// What the user may do: viewer (reads), operator (also creates and runs changes, edits
        /// properties), admin.
        #[arg(long, default_value = "viewer", value_parser = ["viewer", "operator", "admin"])]
        role: String,
    },
    /// List the users and their roles.
    List,
    /// Remove a user (their sessions end).
    Remove {
        /// The login name.
        name: String,
    },
    /// Set a user's password from standard input (their sessions end); --role changes the role.
    Passwd {
        /// The login name.
        name: String,
        /// Read the password from standard input.
        #[arg(long, required = true)]
        password_stdin: bool,
        /// A new role.
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: Option<String>,
    },
}
