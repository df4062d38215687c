//! `opschain-runner`: the in-container step agent. Thin: parses the command line, calls the
//! library, maps errors to exit statuses (see `opschain_runner::exit`).
//!
//! Called as `opschain-exec` (a link to this binary, by the basename of argv[0]) it is the build-time
//! env wrapper: every argument is the command to run, nothing is parsed as an option, and no log
//! subscriber or runtime is started (see `opschain_runner::exec`).

use std::ffi::OsString;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use opschain_runner::actions::Actions;
#[cfg(feature = "build-context")]
use opschain_runner::cli::BuildContextArgs;
use opschain_runner::cli::{ChildCommand, Cli, Command, ExecArgs, Global, LogMode, PropertyCommand, StepArgs, ValidateArgs};
use opschain_runner::exec::{self, ExecOptions};
use opschain_runner::exit::Sysexit;
use opschain_runner::json::SizeLimit;
use opschain_runner::layout::Layout;
use opschain_runner::logging;
use opschain_runner::mask::SecretNames;
use opschain_runner::plan::Plan;
use opschain_runner::script_commands::{self, CopyLevel, ScriptCommandError};
use opschain_runner::step::{self, StepError, StepOptions};
use opschain_runner::step_image;
#[cfg(feature = "build-context")]
use opschain_runner::step_image::BuildContextSpec;
use opschain_runner::supervise::{LineFormat, LogBuffer, SupervisePolicy, Supervisor};
use opschain_runner::transport::{self, ContextSource, TransportError};

/// The static (musl) build's allocator: dlmalloc, not musl's own (see `allocator` for why).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: opschain_runner::allocator::Allocator = opschain_runner::allocator::Allocator::new();

/// The name this binary answers to as the build-time env wrapper.
const EXEC_NAME: &str = "opschain-exec";

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    if args.next().as_deref().map(Path::new).and_then(Path::file_name).is_some_and(|name| name == EXEC_NAME) {
        let mut command: Vec<OsString> = args.collect();
        if command.first().is_some_and(|a| a == "--") {
            command.remove(0);
        }
        let status = match ExecOptions::from_env() {
            Ok(options) => exec_command(EXEC_NAME, &options, &command),
            Err(e) => exec_failure(EXEC_NAME, format_args!("cannot resolve the repo directory: {e}"), Sysexit::IoErr as i32),
        };
        return exit_code(status);
    }
    let cli = match Cli::parse_args() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { Sysexit::Usage as u8 } else { 0 });
        }
    };
    let status = run(cli);
    exit_code(status)
}

fn exit_code(status: i32) -> ExitCode {
    ExitCode::from(u8::try_from(status).unwrap_or(Sysexit::Software as u8))
}

fn exec_failure(name: &str, message: impl std::fmt::Display, status: i32) -> i32 {
    eprintln!("{name}: {message}");
    status
}

/// Runs `command` through `opschain_runner::exec`; returns only when it could not be run.
fn exec_command(name: &str, options: &ExecOptions, command: &[OsString]) -> i32 {
    match exec::exec(options, command) {
        Ok(never) => match never {},
        Err(e) => exec_failure(name, &e, e.exit_status().code()),
    }
}

fn fail(message: impl std::fmt::Display, status: i32) -> i32 {
    eprintln!("opschain-runner: {message}");
    status
}

fn layout(global: &Global) -> Result<Layout, i32> {
    Layout::new(&global.repo, global.folder.clone()).map_err(|e| fail(format_args!("cannot resolve the repo directory: {e}"), Sysexit::IoErr as i32))
}

fn run(cli: Cli) -> i32 {
    // The wrapper and the build helpers print nothing of their own but errors: no log subscriber.
    match cli.command {
        Some(Command::Exec(args)) => return exec_subcommand(&cli.global, args),
        Some(Command::CreateDockerfile) => return print_or_fail(&step_image::default_dockerfile(&cli.global.folder)),
        #[cfg(feature = "build-context")]
        Some(Command::BuildContext(args)) => return build_context(&cli.global, args),
        _ => {}
    }
    let quiet = matches!(cli.command, Some(Command::Property(_) | Command::Child(_) | Command::Actions | Command::Validate(_)));
    logging::init(cli.global.log_format, quiet);
    let layout = match layout(&cli.global) {
        Ok(layout) => layout,
        Err(status) => return status,
    };
    match cli.command.unwrap_or(Command::Step(cli.step)) {
        Command::Step(args) if args.dry_run => validate(&layout, &ValidateArgs { action: args.action, files_root: args.files_root, json: false }),
        Command::Step(args) => run_step(&layout, args, cli.global.log_format),
        Command::Validate(args) => validate(&layout, &args),
        Command::Actions => list_actions(&layout),
        Command::Property(command) => property(command),
        Command::Child(ChildCommand::Add { actions }) => script_command_status(script_commands::add_children(&actions)),
        Command::Exec(_) | Command::CreateDockerfile => unreachable!("handled before logging starts"),
        #[cfg(feature = "build-context")]
        Command::BuildContext(_) => unreachable!("handled before logging starts"),
    }
}

fn exec_subcommand(global: &Global, args: ExecArgs) -> i32 {
    let name = "opschain-runner exec";
    match Layout::new(&global.repo, global.folder.clone()) {
        Ok(layout) => exec_command(name, &ExecOptions { layout, secrets_dir: args.secrets_dir, limit: SizeLimit::DEFAULT }, &args.command),
        Err(e) => exec_failure(name, format_args!("cannot resolve the repo directory: {e}"), Sysexit::IoErr as i32),
    }
}

#[cfg(feature = "build-context")]
fn build_context(global: &Global, args: BuildContextArgs) -> i32 {
    let mut spec = BuildContextSpec::new(&global.repo, &args.out);
    spec.folder = global.folder.clone();
    spec.git_rev = args.git_rev;
    if let Some(dir) = args.secrets_dir {
        spec.secrets = step_image::SecretSource::Dir(dir);
    }
    spec.secrets_file = args.secrets_file;
    if let Some(version) = args.opschain_version {
        spec.base_runner = format!("opschain-runner:{version}");
        spec.opschain_version = version;
    }
    if let Some(image) = args.base_runner {
        spec.base_runner = image;
    }
    if let Some(path) = &args.context {
        match opschain_runner::json::read_file::<opschain_runner::json::StrictObject>(path, SizeLimit::DEFAULT) {
            Ok(doc) => spec.context = doc.0,
            Err(e) => {
                let e = step_image::BuildError::Context(e);
                return fail(&e, e.exit_status().code());
            }
        }
    }
    match step_image::write_context(&spec) {
        Ok(context) => print_or_fail(&(serde_json::to_string_pretty(&context).unwrap_or_default() + "\n")),
        Err(e) => fail(&e, e.exit_status().code()),
    }
}

fn options(args: &StepArgs, log_format: logging::LogFormat) -> StepOptions {
    StepOptions {
        action: args.action.clone(),
        files_root: args.files_root.clone(),
        limit: SizeLimit::Error(args.max_input_bytes),
        supervise: SupervisePolicy {
            grace: Duration::from_secs(args.grace_secs),
            default_timeout: args.timeout_secs.map(Duration::from_secs),
            format: match log_format {
                logging::LogFormat::Text => LineFormat::Text,
                logging::LogFormat::Json => LineFormat::Json,
            },
            log_buffer: match args.log_mode {
                LogMode::Blocking => LogBuffer::default(),
                LogMode::NonBlocking => LogBuffer::DropNewest { max_bytes: LogBuffer::default().max_bytes() },
            },
            ..SupervisePolicy::default()
        },
        secret_names: SecretNames::parse(&args.secret_patterns),
    }
}

fn step_failure(e: &StepError) -> i32 {
    fail(e, e.exit_status().code())
}

fn transport_failure(e: &TransportError) -> i32 {
    fail(e, e.exit_status().code())
}

fn run_step(layout: &Layout, args: StepArgs, log_format: logging::LogFormat) -> i32 {
    let start = std::time::Instant::now();
    tracing::info!(phase = "start", repo = %layout.repo.display(), version = step::VERSION, "phase started");
    if let Some(Err(e)) = args.result_frame.as_deref().map(transport::check_nonce) {
        return transport_failure(&e);
    }
    // The transport's settings are the agent's, not the action's: the nonce, above all, stays out
    // of the action's environment (see `transport`). Nothing else runs in this process yet.
    std::env::remove_var("OPSCHAIN_RESULT_FRAME");
    std::env::remove_var("OPSCHAIN_CONTEXT_FROM");
    if args.result_frame.is_some() {
        // A result file that came with the image is not this step's: were the step to fail before
        // writing its own, that one must not be sent.
        let _ = std::fs::remove_file(layout.step_result());
    }
    if let Some(from) = &args.context_from {
        if let Err(e) = transport::receive_context(&ContextSource::parse(from), layout, Some(args.max_input_bytes)) {
            return transport_failure(&e);
        }
    }
    let status = step_status(layout, &args, log_format, start);
    match &args.result_frame {
        Some(nonce) => {
            let mut out = std::io::stdout().lock();
            match transport::send_result(nonce, &layout.step_result(), &mut out) {
                Ok(_) => status,
                // The frame is how the result gets back: without it the step's changes are lost,
                // so a step that succeeded fails.
                Err(e) => {
                    let failed = transport_failure(&e);
                    if status == 0 {
                        failed
                    } else {
                        status
                    }
                }
            }
        }
        None => status,
    }
}

/// Runs the step whose context is in place, and logs its end; returns its exit status.
fn step_status(layout: &Layout, args: &StepArgs, log_format: logging::LogFormat, start: std::time::Instant) -> i32 {
    let options = options(args, log_format);
    let prepared = match step::prepare(layout, &options) {
        Ok(p) => p,
        Err(e) => return step_failure(&e),
    };
    let masker = step::masker_for(&prepared, &options);
    let mut supervisor = match Supervisor::new(options.supervise.clone(), masker, Box::new(std::io::stdout())) {
        Ok(s) => s,
        Err(e) => return step_failure(&e.into()),
    };
    let status = match step::run(prepared, &options, &mut supervisor) {
        Ok(report) => {
            if let Some(e) = &report.error {
                eprintln!("opschain-runner: {e}");
            }
            report.exit_status
        }
        Err(e) => step_failure(&e),
    };
    tracing::info!(phase = "finish", exit_status = status, duration_ms = start.elapsed().as_secs_f64() * 1e3, "phase finished");
    status
}

fn validate(layout: &Layout, args: &ValidateArgs) -> i32 {
    let options = StepOptions { action: args.action.clone(), files_root: args.files_root.clone(), ..StepOptions::default() };
    match step::prepare(layout, &options) {
        Ok(prepared) => {
            let plan = Plan::of(&prepared);
            let text = if args.json { serde_json::to_string_pretty(&plan).unwrap_or_default() + "\n" } else { plan.to_text() };
            print_or_fail(&text)
        }
        Err(e) => step_failure(&e),
    }
}

fn print_or_fail(text: &str) -> i32 {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => fail(format_args!("cannot write to stdout: {e}"), Sysexit::IoErr as i32),
    }
}

fn list_actions(layout: &Layout) -> i32 {
    let actions = match Actions::read(&layout.actions()) {
        Ok(a) => a,
        Err(e) => return step_failure(&StepError::Actions(e)),
    };
    let width = actions.actions.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    let mut text = String::new();
    for (name, action) in &actions.actions {
        let description = action.description.as_deref().unwrap_or("");
        text += format!("{name:width$}  {description}\n").trim_end();
        text.push('\n');
    }
    print_or_fail(&text)
}

fn property(command: PropertyCommand) -> i32 {
    let level = |l: &opschain_runner::cli::LevelArg| if l.project { CopyLevel::Project } else { CopyLevel::Environment };
    match command {
        PropertyCommand::Get { path } => match script_commands::get(&path) {
            Ok(serde_json::Value::String(s)) => print_or_fail(&format!("{s}\n")),
            Ok(v) => print_or_fail(&format!("{v}\n")),
            Err(ScriptCommandError::NotSet(p)) => fail(format_args!("property {p:?} is not set"), 1),
            Err(e) => script_command_status(Err(e)),
        },
        PropertyCommand::Set { level: l, path, value, json } => script_command_status(script_commands::set(level(&l), &path, &value, json)),
        PropertyCommand::Remove { level: l, path } => script_command_status(script_commands::remove(level(&l), &path)),
    }
}

fn script_command_status(result: Result<(), ScriptCommandError>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            let status = e.exit_status().code();
            fail(e, status)
        }
    }
}
