//! `opschain-runner`: the in-container step agent. Thin: parses the command line, calls the
//! library, maps errors to exit statuses (see `opschain_runner::exit`).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use opschain_runner::actions::Actions;
use opschain_runner::cli::{ChildCommand, Cli, Command, Global, PropertyCommand, StepArgs, ValidateArgs};
use opschain_runner::exit::{self, Sysexit};
use opschain_runner::helper::{self, HelperError, Level};
use opschain_runner::json::SizeLimit;
use opschain_runner::layout::Layout;
use opschain_runner::plan::Plan;
use opschain_runner::step::{self, StepError, StepOptions};
use opschain_runner::supervise::{LineFormat, SupervisePolicy, Supervisor};
use opschain_runner::logging;
use opschain_runner::mask::SecretNames;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { Sysexit::Usage as u8 } else { 0 });
        }
    };
    let status = run(cli);
    ExitCode::from(u8::try_from(status).unwrap_or(Sysexit::Software as u8))
}

fn fail(message: impl std::fmt::Display, status: i32) -> i32 {
    eprintln!("opschain-runner: {message}");
    status
}

fn layout(global: &Global) -> Result<Layout, i32> {
    Layout::new(&global.repo, global.folder.clone()).map_err(|e| fail(format_args!("cannot resolve the repo directory: {e}"), Sysexit::IoErr as i32))
}

fn run(cli: Cli) -> i32 {
    let quiet = matches!(cli.command, Some(Command::Property(_) | Command::Child(_) | Command::Actions | Command::Validate(_)));
    logging::init(cli.global.log_format, quiet);
    let layout = match layout(&cli.global) {
        Ok(layout) => layout,
        Err(status) => return status,
    };
    match cli.command.unwrap_or(Command::Step(cli.step)) {
        Command::Step(args) if args.dry_run => {
            validate(&layout, &ValidateArgs { action: args.action, files_root: args.files_root, json: false })
        }
        Command::Step(args) => run_step(&layout, args, cli.global.log_format),
        Command::Validate(args) => validate(&layout, &args),
        Command::Actions => list_actions(&layout),
        Command::Property(command) => property(command),
        Command::Child(ChildCommand::Add { actions }) => helper_status(helper::add_children(&actions)),
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
            ..SupervisePolicy::default()
        },
        secret_names: SecretNames::parse(&args.secret_patterns),
    }
}

fn step_failure(e: &StepError) -> i32 {
    fail(e, exit::status_of(e))
}

fn run_step(layout: &Layout, args: StepArgs, log_format: logging::LogFormat) -> i32 {
    let start = std::time::Instant::now();
    tracing::info!(phase = "start", repo = %layout.repo.display(), version = step::VERSION, "phase started");
    let options = options(&args, log_format);
    let prepared = match step::prepare(layout, &options) {
        Ok(p) => p,
        Err(e) => return step_failure(&e),
    };
    let masker = step::masker_for(&prepared, &options);
    let mut supervisor = match Supervisor::new(options.supervise.clone(), masker, Box::new(std::io::stdout())) {
        Ok(s) => s,
        Err(e) => return step_failure(&e.into()),
    };
    let status = match step::run(&prepared, &options, &mut supervisor) {
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
        text += &format!("{name:width$}  {description}\n").trim_end().to_string();
        text.push('\n');
    }
    print_or_fail(&text)
}

fn property(command: PropertyCommand) -> i32 {
    let level = |l: &opschain_runner::cli::LevelArg| if l.project { Level::Project } else { Level::Environment };
    match command {
        PropertyCommand::Get { path } => match helper::get(&path) {
            Ok(serde_json::Value::String(s)) => print_or_fail(&format!("{s}\n")),
            Ok(v) => print_or_fail(&format!("{v}\n")),
            Err(HelperError::NotSet(p)) => fail(format_args!("property {p:?} is not set"), 1),
            Err(e) => helper_status(Err(e)),
        },
        PropertyCommand::Set { level: l, path, value, json } => helper_status(helper::set(level(&l), &path, &value, json)),
        PropertyCommand::Remove { level: l, path } => helper_status(helper::remove(level(&l), &path)),
    }
}

fn helper_status(result: Result<(), HelperError>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            let status = exit::of_helper(&e) as i32;
            fail(e, status)
        }
    }
}
