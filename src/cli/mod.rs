//! The command line of `opschain-runner` (and of `opschain-exec`, the same binary by another name).
//! The binary parses it and calls the library: `step`, `exec`, `script_commands` and `plan` do the work; nothing here does any work.

// The doc comments of the command-line types are the `--help` texts, where `<repo>` and the like
// are placeholders the user reads, not HTML.
#![allow(rustdoc::invalid_html_tags)]

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::layout::{DEFAULT_REPO_DIR, DEFAULT_REPO_FOLDER};
use crate::logging::LogFormat;

/// Seconds between TERM and KILL when an action is cancelled or times out (`--grace-secs`'s
/// default; clap's and the `step` fast path's).
pub const DEFAULT_GRACE_SECS: u64 = 10;

/// The largest step context or properties file read, in bytes (`--max-input-bytes`'s default,
/// 64 MiB; clap's and the `step` fast path's).
pub const DEFAULT_MAX_INPUT_BYTES: u64 = 64 << 20;

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
    #[cfg(feature = "build-context")]
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
    /// The base runner image (OPSCHAIN_BASE_RUNNER). Default: opschain-runner:latest (built from
    /// runner-image/, see its README).
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
    #[arg(long, env = "OPSCHAIN_GRACE_SECS", default_value_t = DEFAULT_GRACE_SECS, value_name = "SECS")]
    pub grace_secs: u64,
    /// Time limit of each command whose action sets no timeout_secs (default: none).
    #[arg(long, env = "OPSCHAIN_TIMEOUT_SECS", value_name = "SECS")]
    pub timeout_secs: Option<u64>,
    /// Comma-separated glob patterns of the opschain.env names whose values are secrets to mask
    /// in all output (the runner secrets are always masked).
    #[arg(long, env = "OPSCHAIN_SECRET_PATTERNS", default_value = crate::mask::DEFAULT_SECRET_PATTERNS, value_name = "GLOBS")]
    pub secret_patterns: String,
    /// Largest step context or properties file read, in bytes.
    #[arg(long, env = "OPSCHAIN_MAX_INPUT_BYTES", default_value_t = DEFAULT_MAX_INPUT_BYTES, value_name = "BYTES")]
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

/// The `step` command line, parsed by hand: the agent's hot path, which clap makes costly (it builds
/// the whole command tree, with every help text, to parse two words; BENCHMARKS.md has the
/// share). [`Cli::parse_step_fast`] recognises only what a `step` invocation is made of: the
/// global options, the word `step`, and the step options, each once, as `--name VALUE` or
/// `--name=VALUE`, and their environment variables. Anything else (another command, `--help`,
/// `--version`, a short or unknown option, a value it does not read exactly as clap would, an
/// option given twice, a step option not after `step`) gives `None`, and clap parses the whole line,
/// with its own errors. So it is never the one that refuses a command line, and what
/// it accepts it reads as clap does (`tests/cli_fast.rs` compares the two).
mod fast {
    use std::ffi::OsString;
    use std::path::PathBuf;

    use super::{Cli, Command, Global, LogMode, StepArgs};
    use crate::layout::{DEFAULT_REPO_DIR, DEFAULT_REPO_FOLDER};
    use crate::logging::LogFormat;

    /// The options of the command line, by name, as given (`None`: not given).
    #[derive(Default)]
    struct Given<'a> {
        repo: Option<&'a str>,
        folder: Option<&'a str>,
        log_format: Option<&'a str>,
        action: Option<&'a str>,
        dry_run: bool,
        files_root: Option<&'a str>,
        grace_secs: Option<&'a str>,
        timeout_secs: Option<&'a str>,
        secret_patterns: Option<&'a str>,
        max_input_bytes: Option<&'a str>,
        log_mode: Option<&'a str>,
        context_from: Option<&'a str>,
        result_frame: Option<&'a str>,
    }

    /// A value as clap takes it without question: not empty, and not what clap could read as
    /// an option (a lone `-` is a value).
    fn plain(value: &str) -> bool {
        !value.is_empty() && (value == "-" || !value.starts_with('-'))
    }

    /// A count of seconds or bytes: decimal digits only, as clap's `u64` parser reads them.
    fn number(value: &str) -> Option<u64> {
        if value.is_empty() || value.len() > 19 || !value.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        value.parse().ok()
    }

    /// The value of an option: given on the line, else its environment variable (`None` when set
    /// but empty or not UTF-8: left to clap), else absent (`Some(None)`).
    fn value(given: Option<&str>, var: &str, env: &dyn Fn(&str) -> Option<OsString>) -> Option<Option<String>> {
        match given {
            Some(value) => Some(Some(value.to_string())),
            None => match env(var) {
                None => Some(None),
                Some(value) => {
                    let value = value.into_string().ok()?;
                    (!value.is_empty()).then_some(Some(value))
                }
            },
        }
    }

    /// `env`, each variable looked up once: the step options are read twice when `step` is given
    /// (the top level's and the command's), and each lookup scans the whole environment.
    fn memo(env: &dyn Fn(&str) -> Option<OsString>) -> impl Fn(&str) -> Option<OsString> + '_ {
        let seen: std::cell::RefCell<Vec<(String, Option<OsString>)>> = std::cell::RefCell::new(Vec::new());
        move |name| {
            if let Some((_, value)) = seen.borrow().iter().find(|(n, _)| n == name) {
                return value.clone();
            }
            let value = env(name);
            seen.borrow_mut().push((name.to_string(), value.clone()));
            value
        }
    }

    /// The step options from what was given and the environment.
    fn step_args(given: &Given<'_>, env: &dyn Fn(&str) -> Option<OsString>) -> Option<StepArgs> {
        let log_mode = match value(given.log_mode, "OPSCHAIN_LOG_MODE", env)?.as_deref() {
            None | Some("blocking") => LogMode::Blocking,
            Some("non-blocking") => LogMode::NonBlocking,
            Some(_) => return None,
        };
        let timeout_secs = match value(given.timeout_secs, "OPSCHAIN_TIMEOUT_SECS", env)? {
            None => None,
            Some(secs) => Some(number(&secs)?),
        };
        Some(StepArgs {
            action: given.action.map(str::to_string),
            dry_run: given.dry_run,
            files_root: value(given.files_root, "OPSCHAIN_FILES_ROOT", env)?.map(PathBuf::from),
            grace_secs: value(given.grace_secs, "OPSCHAIN_GRACE_SECS", env)?.map_or(Some(super::DEFAULT_GRACE_SECS), |s| number(&s))?,
            timeout_secs,
            secret_patterns: value(given.secret_patterns, "OPSCHAIN_SECRET_PATTERNS", env)?.unwrap_or_else(|| crate::mask::DEFAULT_SECRET_PATTERNS.to_string()),
            max_input_bytes: value(given.max_input_bytes, "OPSCHAIN_MAX_INPUT_BYTES", env)?.map_or(Some(super::DEFAULT_MAX_INPUT_BYTES), |s| number(&s))?,
            log_mode,
            context_from: value(given.context_from, "OPSCHAIN_CONTEXT_FROM", env)?.map(PathBuf::from),
            result_frame: value(given.result_frame, "OPSCHAIN_RESULT_FRAME", env)?,
        })
    }

    /// See the module documentation. `args` includes the program name; `env` reads a variable.
    pub(super) fn parse(args: &[OsString], env: &dyn Fn(&str) -> Option<OsString>) -> Option<Cli> {
        let memo = memo(env);
        let env: &dyn Fn(&str) -> Option<OsString> = &memo;
        let mut given = Given::default();
        let mut subcommand = false;
        let mut rest = args.iter().skip(1).map(|arg| arg.to_str());
        while let Some(arg) = rest.next() {
            let arg = arg?;
            if arg == "step" && !subcommand {
                subcommand = true;
                continue;
            }
            let (name, inline) = match arg.strip_prefix("--")?.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (arg.strip_prefix("--")?, None),
            };
            if name == "dry-run" {
                if inline.is_some() || given.dry_run || !subcommand {
                    return None;
                }
                given.dry_run = true;
                continue;
            }
            let (slot, global) = match name {
                "repo" => (&mut given.repo, true),
                "folder" => (&mut given.folder, true),
                "log-format" => (&mut given.log_format, true),
                "action" => (&mut given.action, false),
                "files-root" => (&mut given.files_root, false),
                "grace-secs" => (&mut given.grace_secs, false),
                "timeout-secs" => (&mut given.timeout_secs, false),
                "secret-patterns" => (&mut given.secret_patterns, false),
                "max-input-bytes" => (&mut given.max_input_bytes, false),
                "log-mode" => (&mut given.log_mode, false),
                "context-from" => (&mut given.context_from, false),
                "result-frame" => (&mut given.result_frame, false),
                _ => return None,
            };
            // A step option before `step` is the top level's, which `step` then ignores: clap's.
            if slot.is_some() || !(global || subcommand) {
                return None;
            }
            let value = match inline {
                Some(value) => value,
                None => rest.next()??,
            };
            if !plain(value) {
                return None;
            }
            *slot = Some(value);
        }
        let log_format = match value(given.log_format, "OPSCHAIN_LOG_FORMAT", env)?.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(_) => return None,
        };
        let global = Global {
            repo: PathBuf::from(value(given.repo, "OPSCHAIN_REPO_DIR", env)?.unwrap_or_else(|| DEFAULT_REPO_DIR.to_string())),
            folder: value(given.folder, "OPSCHAIN_REPO_FOLDER", env)?.unwrap_or_else(|| DEFAULT_REPO_FOLDER.to_string()),
            log_format,
        };
        // Without `step` the step options are the top level's; with it, the top level's are
        // still filled from the environment, as clap fills them.
        let step = step_args(&given, env)?;
        let (top, command) = if subcommand { (step_args(&Given::default(), env)?, Some(Command::Step(step))) } else { (step, None) };
        Some(Cli { global, step: top, command })
    }
}

impl Cli {
    /// The command line of this process: a `step` invocation read by hand (see the `fast` module's
    /// documentation: the agent's hot path), anything else by clap.
    pub fn parse_args() -> Result<Cli, clap::Error> {
        let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        match fast::parse(&args, &|name| std::env::var_os(name)) {
            Some(cli) => Ok(cli),
            None => Cli::try_parse_from(args),
        }
    }

    /// `args` (the program name first) as [`parse_args`](Self::parse_args) reads them, with `env`
    /// for the environment: `None` where clap must parse them. For the tests that compare the two.
    pub fn parse_step_fast(args: &[std::ffi::OsString], env: &dyn Fn(&str) -> Option<std::ffi::OsString>) -> Option<Cli> {
        fast::parse(args, env)
    }
}
