//! The command line of `opschain-runner` (and of `opschain-exec`, the same binary by another name).
//! The binary parses it and calls the library: `step`, `exec`, `helper` and `plan` do the work; nothing here does any work.

// The doc comments of the command-line types are the `--help` texts, where `<repo>` and the like
// are placeholders the user reads, not HTML.
#![allow(rustdoc::invalid_html_tags)]

#[cfg(feature = "controller")]
pub mod controller;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::layout::{DEFAULT_REPO_DIR, DEFAULT_REPO_FOLDER};
use crate::logging::LogFormat;

/// OpsChain step runner: the agent that runs one step of a change inside its runner container.
///
/// With no command it runs the step (`opschain-runner step`): it reads
/// <repo>/<folder>/step_context.json, merges the repository, project and environment properties,
/// writes the files and exports the env vars they declare (opschain.files, opschain.env), runs the
/// action from <repo>/<folder>/actions.toml, and writes <repo>/<folder>/step_result.json with the
/// RFC 6902 diffs of the project and environment properties and the child steps.
///
/// Exit status: the action's own; 128+N when signal N ended it; 124 on timeout; for the agent's own
/// failures 64 usage, 65 bad input, 66 input missing, 70 internal, 73 cannot create, 74 I/O.
#[derive(Debug, Parser)]
#[command(name = "opschain-runner", version, max_term_width = 100)]
pub struct Cli {
    /// Where things are and how to log.
    #[command(flatten)]
    pub global: Global,
    /// The step options, when no command is given.
    #[command(flatten)]
    pub step: StepArgs,
    /// What to do (default: step).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Options every command takes.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// The repo directory: the action's working directory and HOME.
    #[arg(long, global = true, env = "OPSCHAIN_REPO_DIR", default_value = DEFAULT_REPO_DIR, value_name = "DIR")]
    pub repo: PathBuf,
    /// The OpsChain folder inside the repo (MintPress uses .mintpress).
    #[arg(long, global = true, env = "OPSCHAIN_REPO_FOLDER", default_value = DEFAULT_REPO_FOLDER, value_name = "NAME")]
    pub folder: String,
    /// Log format of the agent's own messages (on stderr).
    #[arg(long, global = true, env = "OPSCHAIN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the step: the default when no command is given.
    Step(StepArgs),
    /// Print the resolved plan (action, prerequisites, children, files with modes, env names)
    /// without writing or running anything.
    Validate(ValidateArgs),
    /// List the actions of actions.toml with their descriptions.
    Actions,
    /// For action scripts: read or change a property without hand-editing JSON.
    #[command(subcommand)]
    Property(PropertyCommand),
    /// For action scripts: add child steps to run after this step.
    #[command(subcommand)]
    Child(ChildCommand),
    /// Run COMMAND with the step's env vars and the build secrets loaded, as `opschain-exec`
    /// does (for Dockerfile RUN lines): `opschain-runner exec -- COMMAND [ARGS...]`.
    Exec(ExecArgs),
    /// Print the default step Dockerfile of the folder (copy it to <folder>/Dockerfile to
    /// customise it; `--folder .mintpress` gives MintPress's).
    CreateDockerfile,
    /// Write the build context of a step image (repo.tar, the env context, the Dockerfile) and
    /// the build secret bundle, and print, as JSON, the build args and secrets to build it with.
    #[cfg(feature = "controller")]
    BuildContext(BuildContextArgs),
}

/// `exec` options.
#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    /// The directory of the build secrets: the bundle opschain-build-secrets (every set that
    /// applies, merged) when it is there, else one JSON file per set, named like the set.
    #[arg(long, env = "OPSCHAIN_BUILD_SECRETS_DIR", default_value = crate::exec::DEFAULT_BUILD_SECRETS_DIR, value_name = "DIR")]
    pub secrets_dir: PathBuf,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "COMMAND")]
    pub command: Vec<std::ffi::OsString>,
}

/// `build-context` options. The repo is --repo (a Git repository on this host).
#[derive(Debug, Clone, Args)]
pub struct BuildContextArgs {
    /// The build context directory to write (created; must be empty).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The revision to build (GIT_REV): a branch, tag or SHA.
    #[arg(long, default_value = "HEAD", value_name = "REV")]
    pub git_rev: String,
    /// The base runner image (OPSCHAIN_BASE_RUNNER). Default: opschain-runner:VERSION.
    #[arg(long, env = "OPSCHAIN_BASE_RUNNER", value_name = "IMAGE")]
    pub base_runner: Option<String>,
    /// The OpsChain version (OPSCHAIN_VERSION). Default: this runner's version.
    #[arg(long, value_name = "VERSION")]
    pub opschain_version: Option<String>,
    /// The step context: its project and environment context values and env properties go into
    /// the env context; its opschain.config.build_secrets picks the secret sets. Default: none
    /// (no env vars, the default build secret set).
    #[arg(long, value_name = "FILE")]
    pub context: Option<PathBuf>,
    /// The host directory of the build secret sets (one JSON object per set, named like the set):
    /// each set that applies and exists here is merged, in order, into the build secret bundle.
    /// Default: none (an empty bundle).
    #[arg(long, value_name = "DIR")]
    pub secrets_dir: Option<PathBuf>,
    /// Where to write the build secret bundle (mode 0600), passed as the BuildKit secret
    /// opschain-build-secrets. Default: OUT.build-secrets.json, beside the build context (never
    /// in it, so that no COPY can take it).
    #[arg(long, value_name = "FILE")]
    pub secrets_file: Option<PathBuf>,
}

/// `step` options.
#[derive(Debug, Clone, Default, Args)]
pub struct StepArgs {
    /// Run this action instead of context.step.action.
    #[arg(long, value_name = "NAME")]
    pub action: Option<String>,
    /// Validate and print the plan only, like `validate`.
    #[arg(long)]
    pub dry_run: bool,
    /// Write absolute opschain.files paths under DIR instead of /. The controller's process
    /// backend sets it to the step's sandbox; the action finds it in OPSCHAIN_FILES_ROOT.
    #[arg(long, env = "OPSCHAIN_FILES_ROOT", value_name = "DIR")]
    pub files_root: Option<PathBuf>,
    /// Seconds between TERM and KILL when the action is cancelled or times out.
    #[arg(long, env = "OPSCHAIN_GRACE_SECS", default_value_t = 10, value_name = "SECS")]
    pub grace_secs: u64,
    /// Time limit of each command whose action sets no timeout_secs (default: none).
    #[arg(long, env = "OPSCHAIN_TIMEOUT_SECS", value_name = "SECS")]
    pub timeout_secs: Option<u64>,
    /// Comma-separated glob patterns of the opschain.env names whose values are secrets to mask
    /// in all output (the runner secrets are always masked).
    #[arg(long, env = "OPSCHAIN_SECRET_PATTERNS", default_value = crate::mask::DEFAULT_SECRET_PATTERNS, value_name = "GLOBS")]
    pub secret_patterns: String,
    /// Largest step context or properties file read, in bytes.
    #[arg(long, env = "OPSCHAIN_MAX_INPUT_BYTES", default_value_t = 64 << 20, value_name = "BYTES")]
    pub max_input_bytes: u64,
    /// What happens when the action prints faster than the log is read: `blocking` (the
    /// default) stops reading the action's output until the log catches up, so the action waits
    /// and no line is lost; `non-blocking` drops the lines that do not fit in the 4 MiB buffer
    /// and logs how many were dropped where, so the action never waits for the log.
    #[arg(long, env = "OPSCHAIN_LOG_MODE", value_enum, default_value_t = LogMode::Blocking, value_name = "MODE")]
    pub log_mode: LogMode,
    /// Read the step context from FILE ('-': standard input) and write it to
    /// <repo>/<folder>/step_context.json first: for engines that share no disk with the
    /// controller (a mounted Kubernetes Secret, `docker run -i`). Default: the file is there.
    #[arg(long, env = "OPSCHAIN_CONTEXT_FROM", value_name = "FILE")]
    pub context_from: Option<PathBuf>,
    /// After the step, print step_result.json on stdout as a frame marked NONCE (base64 lines
    /// between a begin and an end line with its length and checksum) for a controller that reads
    /// it from the container's log. Default: no frame (the controller reads the file).
    #[arg(long, env = "OPSCHAIN_RESULT_FRAME", value_name = "NONCE")]
    pub result_frame: Option<String>,
}

/// What the agent does when the action's output comes faster than the log is read (`step
/// --log-mode`), as Docker's `--log-opt mode=` does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogMode {
    /// Stop reading the action's output until the log catches up: nothing is lost. The default.
    #[default]
    Blocking,
    /// Drop what does not fit in the buffer, with a record saying how many lines were dropped.
    NonBlocking,
}

/// `validate` options.
#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    /// Validate this action instead of context.step.action.
    #[arg(long, value_name = "NAME")]
    pub action: Option<String>,
    /// Write absolute opschain.files paths under DIR (as `step --files-root`).
    #[arg(long, env = "OPSCHAIN_FILES_ROOT", value_name = "DIR")]
    pub files_root: Option<PathBuf>,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Which writable level a property edit goes to.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct LevelArg {
    /// The project properties ($OPSCHAIN_PROJECT_PROPERTIES).
    #[arg(long)]
    pub project: bool,
    /// The environment properties ($OPSCHAIN_ENVIRONMENT_PROPERTIES).
    #[arg(long)]
    pub environment: bool,
}

/// `property` commands. PATH is dotted (opschain.env.A) or a JSON pointer (/opschain/env/A).
#[derive(Debug, Subcommand)]
pub enum PropertyCommand {
    /// Print a property of the merged properties ($OPSCHAIN_PROPERTIES): strings as they are,
    /// anything else as JSON. Exit 1 when it is not set.
    Get {
        /// The property path.
        path: String,
    },
    /// Set a property of the project or environment properties.
    Set {
        /// The level to change.
        #[command(flatten)]
        level: LevelArg,
        /// The property path.
        path: String,
        /// The value: a string, or JSON with --json.
        value: String,
        /// Parse VALUE as JSON (numbers, booleans, objects, arrays).
        #[arg(long)]
        json: bool,
    },
    /// Remove a property of the project or environment properties.
    Remove {
        /// The level to change.
        #[command(flatten)]
        level: LevelArg,
        /// The property path.
        path: String,
    },
}

/// `child` commands.
#[derive(Debug, Subcommand)]
pub enum ChildCommand {
    /// Append actions to $OPSCHAIN_CHILD_STEPS: each runs as a child step after this step.
    Add {
        /// The actions, in order.
        #[arg(required = true)]
        actions: Vec<String>,
    },
}
