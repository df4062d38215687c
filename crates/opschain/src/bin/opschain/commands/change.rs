//! `opschain change`: create (and run), list, show, print the logs of, retry and cancel changes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};

use opschain::catalog;
use opschain::change::{self, ChangeError, ControllerConfig, NewChange};
use opschain::liveness::ChangeLock;
use opschain::rc::{Code, Source, Which};
use opschain::repo;
use opschain::report::{self, LogOptions};
use opschain::status::{BackendKind, ChangeStatus};
use opschain::store::Store;
use opschain::{interrupt, output};

use super::args::{print_json, ChangeId, Confirm, EnvironmentCode, OutputArg, ProjectCode, ViewArgs};
use super::settings::{backends, checked_folder, config, RunSettings};
use super::{exit_of, no_code, read_input, Ctx, Failure};

/// The `opschain change` commands.
#[derive(Debug, Subcommand)]
pub enum ChangeCommand {
    /// Create a change at a commit and run it.
    ///
    /// Exits 0 when the change succeeds, 1 when it errors, 2 when it is cancelled. The project
    /// and environment must exist (`project create`, `environment create`) and not be archived:
    /// an unknown code exits 66 and lists the known ones.
    ///
    /// What it prints, line by line:
    ///
    ///   ==> change 3 running: ..., commit 753ca6d47fef (HEAD), ...   the change and the commit that runs
    ///
    ///   [4 deploy]  text        a line step 4 (action deploy) printed on stdout
    ///
    ///   [4 deploy]! text        ... on stderr
    ///
    ///   ==> step 4 [deploy] success in 0.04s (0.01s to 0.05s)
    ///                           a step's status line: its result, how long it ran, and when it
    ///                           started and ended (seconds since the change started)
    ///
    ///   ==> step 4 [deploy]: why     under a failed step, why (the agent's own error first)
    ///
    ///   ==> change 3 error in 0.20s: step 4 [deploy]: why    how the change ended, and why
    ///
    /// -v adds the agent's phase records and the controller's progress; --timestamps puts the time
    /// first on every line.
    ///
    /// On a terminal, unless --follow-logs, -v or --timestamps, it draws the step tree instead and
    /// redraws it in place as the steps run (`ID [ACTION] STATUS TIME`, children indented, a
    /// failed step's reason under it marked `|`), then prints how the change ended.
    #[command(visible_alias = "run", verbatim_doc_comment)]
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
        /// Text or JSON.
        #[command(flatten)]
        output: OutputArg,
    },
    /// Show a change and its step tree with statuses: `ID [ACTION] STATUS DURATION exit N`, a
    /// failed step's reason under it marked `|`.
    Show {
        /// The change.
        #[command(flatten)]
        id: ChangeId,
        /// Text or JSON.
        #[command(flatten)]
        output: OutputArg,
    },
    /// Print a change's step logs, in order: `[ID ACTION]  line` for a line step ID's action
    /// printed on stdout, `[ID ACTION]! line` on stderr; with -v, the agent's phase records and
    /// the backend's lines too.
    #[command(name = "show-logs", visible_alias = "logs")]
    Logs {
        /// The change.
        #[command(flatten)]
        id: ChangeId,
        /// Which lines, and their times.
        #[command(flatten)]
        view: ViewArgs,
        /// Text, or JSON: every stored line as an object, one a line.
        #[command(flatten)]
        output: OutputArg,
        /// Keep printing lines as they are stored, until the change has ended (as `kubectl
        /// logs -f` does); Ctrl-C stops following.
        #[arg(short, long)]
        follow: bool,
    },
    /// Print, as JSON, the point-in-time copy of the properties a change ran with: the project's
    /// and the environment's versions current when it first started (`{"project": {"version":
    /// N, "properties": {...}}, "environment": {...}}`); what its own steps changed is not in it.
    ShowProperties {
        /// The change.
        #[command(flatten)]
        id: ChangeId,
    },
    /// Re-run what did not succeed in a change, from the same commit.
    Retry {
        /// The change.
        #[command(flatten)]
        id: ChangeId,
        /// What the run prints.
        #[command(flatten)]
        view: ViewArgs,
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
    /// Without it: the repository's `default` action when it has one, else, on a terminal, the
    /// action asked for from the list; else a usage error (64) listing the actions.
    #[arg(short = 'a', long, value_name = "NAME")]
    pub action: Option<String>,
    /// The git revision to run (resolved to a commit when the change is created).
    #[arg(short = 'g', long, default_value = "HEAD", value_name = "REV")]
    pub git_rev: String,
    /// Read --git-rev against this git remote of the repository, as OpsChain does: the remote is
    /// fetched first, and a branch of it is taken as `<remote>/<rev>` (a tag or a commit as is).
    #[arg(short = 'G', long, value_name = "NAME")]
    pub git_remote_name: Option<String>,
    /// Stream the step logs and status lines (the line view below) even on a terminal, where the
    /// default is the live step tree (each step's status and time, redrawn in place). Off a
    /// terminal, and with -v or --timestamps, the line view is the only one.
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
    /// A JSON object file of the change's metadata: stored with the change, given to every
    /// step as context.change.metadata of its step context, shown by `change show`.
    #[arg(short = 'm', long, value_name = "FILE")]
    pub metadata_path: Option<PathBuf>,
    /// The secret set the steps get as runner secrets (see `opschain secrets set`). Image builds
    /// get the build secret sets instead: those opschain.config.build_secrets lists, else
    /// opschain-build-env.
    #[arg(long, value_name = "NAME")]
    pub secrets: Option<String>,
    /// The confirmation a destructive command needs.
    #[command(flatten)]
    pub confirm: Confirm,
    /// What the run prints.
    #[command(flatten)]
    pub view: ViewArgs,
    /// How the steps run: backend, workers, limits.
    #[command(flatten)]
    pub settings: RunSettings,
}

/// Runs an `opschain change` command.
pub fn exec(command: ChangeCommand, ctx: &Ctx, out: &mut dyn Write) -> Result<ExitCode> {
    match command {
        ChangeCommand::Create(args) => create(args, ctx, out),
        ChangeCommand::List { project, environment, output } => {
            recognise_lost(ctx.store()?, &ctx.state_dir)?;
            list(&project, &environment, output.json(), ctx, out)
        }
        ChangeCommand::Show { id, output } => {
            recognise_lost(ctx.store()?, &ctx.state_dir)?;
            show(id.get(), output.json(), ctx, out)
        }
        ChangeCommand::Logs { id, view, output, follow } => {
            report::write_logs(ctx.store()?, id.get(), LogOptions { follow, view: view.view(), json: output.json() }, out)?;
            Ok(ExitCode::SUCCESS)
        }
        ChangeCommand::ShowProperties { id } => {
            writeln!(out, "{}", serde_json::to_string_pretty(&report::change_properties(ctx.store()?, id.get())?)?)?;
            Ok(ExitCode::SUCCESS)
        }
        ChangeCommand::Retry { id, view, settings } => {
            let store = ctx.store()?;
            // An unknown id is "not found", before anything else is looked at.
            let id = store.change(id.get())?.id;
            let config = config(&ctx.state_dir, &settings, view.view())?;
            in_the_foreground(store, &ctx.state_dir)?;
            Ok(exit_of(foreground(store, id, || change::retry(store, &config, id))?))
        }
        ChangeCommand::Cancel { id } => {
            let id = id.get();
            let status = change::cancel(ctx.store()?, &ctx.state_dir, id)?;
            recognise_lost(ctx.store()?, &ctx.state_dir)?;
            match status {
                ChangeStatus::Running => writeln!(out, "change {id}: cancel requested; its controller stops it")?,
                status => writeln!(out, "change {id} {}", status.as_str())?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn create(args: RunArgs, ctx: &Ctx, out: &mut dyn Write) -> Result<ExitCode> {
    let folder = checked_folder(&args.settings.folder)?;
    let repo = repo::repo_or_working_directory(args.repo, &folder)?;
    let git_rev = match &args.git_remote_name {
        Some(remote) => repo::remote_rev(&repo, remote, &args.git_rev)?,
        None => args.git_rev,
    };
    let action = match args.action {
        // An empty name is OpsChain's `default`.
        Some(action) if action.is_empty() => "default".to_string(),
        Some(action) => action,
        None => default_action(&repo, &git_rev, &folder)?,
    };
    let new = NewChange {
        project: ctx.project(&args.project)?,
        environment: ctx.environment(&args.environment)?,
        repo,
        action,
        git_rev,
        backend: args.backend,
        secret_set: args.secrets,
        metadata: args.metadata_path.as_deref().map(read_metadata).transpose()?,
    };
    // The live tree owns the terminal: nothing else of the run is printed on it.
    let tree = std::io::IsTerminal::is_terminal(&std::io::stdout()) && !args.follow_logs && !args.view.verbose && !args.view.timestamps;
    let mut view = args.view.view();
    view.silent = tree;
    let config = config(&ctx.state_dir, &args.settings, view)?;
    // A change runs a commit: edits not committed are not in it.
    let uncommitted = repo::uncommitted(&new.repo, &folder).unwrap_or_default();
    let store = ctx.store()?;
    in_the_foreground(store, &ctx.state_dir)?;
    let (id, lock) = change::create(store, &config, &new)?;
    if !uncommitted.is_empty() {
        let c = store.change(id)?;
        eprintln!(
            "opschain: warning: {} file(s) under {folder} differ from the commit that runs ({} = {}): {}. Commit them to run them.",
            uncommitted.len(),
            c.git_rev,
            &c.commit[..c.commit.len().min(12)],
            uncommitted.join(", ")
        );
    }
    if tree {
        return Ok(exit_of(execute_with_tree(store, &config, lock, out)?));
    }
    Ok(exit_of(execute(store, &config, lock, out)?))
}

/// Prepares a command that runs a change in the foreground: SIGINT, SIGTERM and SIGHUP will cancel
/// it (the handlers are in place before the change exists, so a signal during its creation cancels
/// it too), and the changes whose controller is gone are recorded first.
fn in_the_foreground(store: &Store, state_dir: &Path) -> Result<()> {
    interrupt::install()?;
    recognise_lost(store, state_dir)
}

/// Runs change `id` in the foreground with `run`: SIGINT, SIGTERM or SIGHUP cancels it as `change
/// cancel` does (see [`interrupt`]), and one line then says so and how to run it again.
fn foreground(store: &Store, id: i64, run: impl FnOnce() -> Result<ChangeStatus, ChangeError>) -> Result<ChangeStatus> {
    let (status, signal) = interrupt::cancel_on_signal(store, id, run);
    let status = status?;
    if let (Some(signal), ChangeStatus::Cancelled) = (signal, status) {
        eprintln!("opschain: change {id} cancelled on {signal}: its steps were stopped; run it again with `opschain change retry {id}`");
    }
    Ok(status)
}

/// Records the end of every change whose controller is gone ([`change::recognise_lost`]), with a
/// line on stderr for each: the commands that look at changes run it first.
fn recognise_lost(store: &Store, state_dir: &Path) -> Result<()> {
    for lost in change::recognise_lost(store, state_dir)? {
        eprintln!(
            "opschain: change {} was left unfinished by a controller that is gone (killed, or its machine stopped): recorded {}, its sandboxes removed; `opschain change retry {}` runs it again",
            lost.id,
            lost.status.as_str(),
            lost.id
        );
    }
    Ok(())
}

/// Runs the created change whose lock is `lock` to its end while the live step tree is drawn on
/// the terminal, then prints how it ended.
fn execute_with_tree(store: &Store, config: &ControllerConfig, lock: ChangeLock, out: &mut dyn Write) -> Result<ChangeStatus> {
    let id = lock.change_id();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (status, drawn) = std::thread::scope(|scope| {
        let drawer = scope.spawn(|| report::live_tree(store, id, terminal_width(), &done, &mut std::io::stdout()));
        let status = foreground(store, id, || change::execute(store, config, lock));
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (status, drawer.join())
    });
    let status = status?;
    // A tree that could not be drawn (the terminal went away) does not change how the change ended.
    if let Ok(Ok(())) = drawn {
        let steps = store.steps(id)?;
        let why = report::failure_summary(&steps).map(|w| format!(": {w}")).unwrap_or_default();
        let mask = output::change_masker(store, &store.change(id)?)?;
        let _ = writeln!(out, "==> change {id} {}{}", status.as_str(), mask.mask(&why));
    }
    Ok(status)
}

/// The terminal's width in columns (stdout's), else `$COLUMNS`, else 80.
fn terminal_width() -> usize {
    let mut size = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ only writes the winsize it is given, which lives across the call.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    if ok && size.ws_col > 0 {
        return usize::from(size.ws_col);
    }
    std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()).unwrap_or(80)
}

/// The action of a change created without `--action`: `default` when the repository has it at
/// `rev`, else the one the user picks on a terminal; else a usage error listing the actions.
fn default_action(repo: &std::path::Path, rev: &str, folder: &str) -> Result<String> {
    use std::io::{BufRead, IsTerminal};
    let names = repo::action_names(repo, rev, folder);
    if names.is_empty() || names.iter().any(|n| n == "default") {
        // No list to choose from: `default`, which the step explains when it is missing.
        return Ok("default".into());
    }
    let list = names.join(", ");
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        return Err(Failure::Usage(format!("no --action, and the repository has no `default` action: give -a NAME (its actions: {list})")).into());
    }
    for (n, name) in names.iter().enumerate() {
        eprintln!("  {}) {name}", n + 1);
    }
    eprint!("opschain: which action (number or name)? ");
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).map_err(|source| Failure::Read { path: "stdin".into(), source })?;
    let answer = answer.trim();
    let picked = answer.parse::<usize>().ok().and_then(|n| names.get(n.wrapping_sub(1))).or_else(|| names.iter().find(|n| *n == answer));
    picked.cloned().ok_or_else(|| Failure::Usage(format!("{answer:?} is none of the actions ({list})")).into())
}

/// The JSON object of a metadata file, read strictly (as every input is).
fn read_metadata(path: &std::path::Path) -> Result<serde_json::Map<String, serde_json::Value>> {
    let what = if path == std::path::Path::new("-") { PathBuf::from("stdin") } else { path.to_path_buf() };
    let opschain_runner::json::StrictObject(map) = opschain_runner::json::parse(&what, read_input(path)?.as_bytes())?;
    Ok(map)
}

/// Creates and runs a change in the foreground; `demo`.
pub fn run_change(store: &Store, config: &ControllerConfig, new: NewChange, out: &mut dyn Write) -> Result<(i64, ChangeStatus)> {
    in_the_foreground(store, &config.state_dir)?;
    let (id, lock) = change::create(store, config, &new)?;
    Ok((id, execute(store, config, lock, out)?))
}

/// Runs the created change whose lock is `lock` to its end, in the foreground.
fn execute(store: &Store, config: &ControllerConfig, lock: ChangeLock, out: &mut dyn Write) -> Result<ChangeStatus> {
    let id = lock.change_id();
    // The change runs whatever happens to the output: a reader that went away does not stop it.
    if config.scheduler.view.verbose {
        let _ = writeln!(out, "==> change {id} created (state: {})", store.path().display());
    }
    foreground(store, id, || change::execute(store, config, lock))
}

fn list(p: &ProjectCode, e: &EnvironmentCode, json: bool, ctx: &Ctx, out: &mut dyn Write) -> Result<ExitCode> {
    let store = ctx.store()?;
    // Filters: the codes given or defaulting; an unknown one is an error, not an empty list.
    let project_code = ctx.defaults.resolve(Which::Project, p.project_code.as_deref())?;
    let environment_code = ctx.defaults.resolve(Which::Environment, e.environment_code.as_deref())?;
    for (which, code) in [(Which::Project, &project_code), (Which::Environment, &environment_code)] {
        if let Some(Code { value, source: source @ (Source::Variable(_) | Source::File(_)) }) = code {
            eprintln!("opschain: {} code {value:?} from {source}", which.noun());
            if matches!(source, Source::File(_)) {
                ctx.rc_notes();
            }
        }
    }
    let project_code = project_code.map(|c| c.value);
    let environment_code = environment_code.map(|c| c.value);
    match (&project_code, &environment_code) {
        (Some(p), Some(e)) => {
            let id = catalog::find_project(store, p)?;
            catalog::find_environment(store, p, id, e)?;
        }
        (Some(p), None) => {
            catalog::find_project(store, p)?;
        }
        (None, Some(_)) => return Err(no_code(Which::Project)),
        (None, None) => {}
    }
    let changes =
        store.changes(None)?.into_iter().filter(|c| project_code.as_ref().is_none_or(|p| &c.project == p) && environment_code.as_ref().is_none_or(|e| &c.environment == e));
    let failure = |c: &opschain::store::ChangeRow| -> Result<Option<String>> {
        Ok(match c.status {
            ChangeStatus::Error => report::failure_summary(&store.steps(c.id)?).map(|w| output::change_masker(store, c).map(|m| m.mask(&w).into_owned())).transpose()?,
            _ => None,
        })
    };
    if json {
        let all = changes.map(|c| Ok(report::json::Change::new(&c, failure(&c)?, None))).collect::<Result<Vec<_>>>()?;
        print_json(out, &all)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(out, "{:>4}  {:<10} {:<12} {:<12} {:<20} {:<12} {:<8} {:<24} why", "id", "status", "project", "environment", "action", "commit", "backend", "created")?;
    for c in changes {
        let why = failure(&c)?.unwrap_or_default();
        let line = format!(
            "{:>4}  {:<10} {:<12} {:<12} {:<20} {:<12} {:<8} {:<24} {why}",
            c.id,
            c.status.as_str(),
            c.project,
            c.environment,
            c.action,
            &c.commit[..c.commit.len().min(12)],
            c.backend,
            c.created_at
        );
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn show(id: i64, json: bool, ctx: &Ctx, out: &mut dyn Write) -> Result<ExitCode> {
    let store = ctx.store()?;
    let c = store.change(id)?;
    let mask = output::change_masker(store, &c)?;
    let mut steps = store.steps(c.id)?;
    for s in &mut steps {
        s.message = s.message.as_deref().map(|m| mask.mask(m).into_owned());
    }
    if json {
        let failure = report::failure_summary(&steps);
        let mut c = c.clone();
        c.metadata = c.metadata.as_deref().map(|m| mask.mask(m).into_owned());
        print_json(out, &report::json::Change::new(&c, failure, Some(&steps)))?;
        return Ok(ExitCode::SUCCESS);
    }
    let why = report::failure_summary(&steps).map(|w| format!(": {w}")).unwrap_or_default();
    writeln!(out, "change {} {}{why}", c.id, c.status.as_str())?;
    writeln!(out, "  project {}, environment {}, action {}", c.project, c.environment, c.action)?;
    writeln!(out, "  commit {} ({}) from {}", c.commit, c.git_rev, c.repo.display())?;
    writeln!(out, "  backend {}, created {}, finished {}", c.backend, c.created_at, c.finished_at.as_deref().unwrap_or("-"))?;
    if let Some(metadata) = &c.metadata {
        writeln!(out, "  metadata {}", mask.mask(metadata))?;
    }
    if let Some(reason) = &c.reason {
        writeln!(out, "  reason: {reason}")?;
    }
    writeln!(out, "steps:")?;
    report::write_step_tree(out, &steps, None, 1)?;
    Ok(ExitCode::SUCCESS)
}
