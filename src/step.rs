//! One step, end to end: read and validate the inputs ([`prepare`]), then write the files, run the
//! action under supervision, diff the writable levels and write the result ([`run`]).
//!
//! Phases, each logged when it starts and finishes with its duration: `start` (the agent begins),
//! `initialise` (inputs read, files and runtime copies written), the action, `completing` (read
//! back, diff, result written) and `finish`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tracing::{info, warn};

use crate::actions::{Action, Actions, ActionsError, RunAs};
use crate::atomic::{self, AtomicError, Durability};
use crate::context::StepContext;
use crate::diff::diff;
use crate::env::{self, EnvBuilder};
use crate::exit::{ExitStatus, Sysexit};
use crate::files::{self, FileSpec, WriteError};
use crate::json::{self, JsonError, PointerError, SizeLimit, StrictObject};
use crate::layout::Layout;
use crate::mask::{Masker, SecretNames};
use crate::properties::splice;
use crate::properties::text::PropertiesText;
use crate::properties::{self, declarations, PropertiesError};
use crate::result::{self, Children, JobFacts, LevelDiff, Phases, RunnerFacts, StepProperties, StepResult};
use crate::supervise::{Job, Outcome, SuperviseError, SupervisePolicy, Supervisor};

/// This agent's version, recorded in every result.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What a step is asked to do beyond what its inputs say.
#[derive(Debug, Clone, Default)]
pub struct StepOptions {
    /// Runs this action instead of `context.step.action` (`--action`). Default: none.
    pub action: Option<String>,
    /// Writes absolute `opschain.files` paths under this directory (`--files-root`; the process
    /// backend's sandbox). Default: none, absolute paths are written where they say.
    pub files_root: Option<PathBuf>,
    /// The largest step context or properties document read. Default: [`SizeLimit::DEFAULT`].
    pub limit: SizeLimit,
    /// How commands are supervised.
    pub supervise: SupervisePolicy,
    /// Which `opschain.env` names hold secrets to mask. Default: [`SecretNames::default`].
    pub secret_names: SecretNames,
}

/// Why a step could not be prepared or completed. [`StepError::exit_status`] maps each to an exit status.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// step_context.json is missing, unreadable or invalid.
    #[error(transparent)]
    Context(JsonError),
    /// actions.toml is missing, unreadable or invalid, or names an unknown action.
    #[error(transparent)]
    Actions(#[from] ActionsError),
    /// Neither `--action` nor `context.step.action` names the action.
    #[error("{}: no action to run: neither --action nor context.step.action names one", context.display())]
    NoAction {
        /// The step context consulted.
        context: PathBuf,
    },
    /// `--action` names an action actions.toml does not define.
    #[error("--action {action:?}: {source}")]
    UnknownActionFlag {
        /// The name given.
        action: String,
        /// The lookup failure.
        #[source]
        source: ActionsError,
    },
    /// A repository properties file is invalid.
    #[error(transparent)]
    Properties(#[from] PropertiesError),
    /// An `opschain.files` or `opschain.env` declaration (or a secret) is invalid.
    #[error("{}: {source}", file.display())]
    Declaration {
        /// The file the declaration was read from.
        file: PathBuf,
        /// Where in it and what is wrong.
        #[source]
        source: PointerError,
    },
    /// A declared file could not be written.
    #[error(transparent)]
    WriteFile(#[from] WriteError),
    /// A runtime file handed to the action could not be created.
    #[error(transparent)]
    Runtime(AtomicError),
    /// The runtime directory could not be created.
    #[error("{}: cannot create the runtime directory: {source}", path.display())]
    RuntimeDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The supervisor failed (not the action: the agent itself).
    #[error(transparent)]
    Supervise(#[from] SuperviseError),
    /// The action left a properties copy that is not a valid JSON object.
    #[error("the action left invalid properties: {source}")]
    PropertiesCopy {
        /// What is wrong with it.
        #[source]
        source: JsonError,
    },
    /// step_result.json could not be written.
    #[error(transparent)]
    Result(AtomicError),
}

impl StepError {
    /// The exit status of this failure: the input's own for an unreadable or invalid file, 64 an
    /// unknown `--action`, 65 an invalid declaration, 73 a file or the result that cannot be
    /// written, 70 a supervision failure.
    pub fn exit_status(&self) -> ExitStatus {
        let sysexit = match self {
            StepError::Context(e) => return e.exit_status(),
            StepError::Actions(e) => return e.exit_status(),
            StepError::Properties(e) => return e.exit_status(),
            StepError::NoAction { .. } | StepError::Declaration { .. } | StepError::PropertiesCopy { .. } => Sysexit::DataErr,
            StepError::UnknownActionFlag { .. } => Sysexit::Usage,
            StepError::WriteFile(_) | StepError::Runtime(_) | StepError::RuntimeDir { .. } | StepError::Result(_) => Sysexit::CantCreat,
            StepError::Supervise(_) => Sysexit::Software,
        };
        sysexit.into()
    }
}

/// Everything a step needs, read and validated; nothing written yet.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Where things are.
    pub layout: Layout,
    /// The step context as read, but for the project and environment properties: those are in
    /// `merged_json`, `project_json` and `environment_json` (its two levels are left empty).
    pub context: StepContext<PropertiesText>,
    /// The action the step runs.
    pub action: String,
    /// The commands to run: the prerequisites, depth first, then the action itself.
    pub plan: Vec<(String, Action)>,
    /// The merged properties as JSON text, spliced from the sources' top-level members (see
    /// [`properties::text`]), without a final newline; `None` when the project's properties are
    /// the only properties (no other source has a member): the merged text is then
    /// `project_json`'s, byte for byte, and is not made a second time (on a document of a few MB,
    /// a copy costs a millisecond, most of it the kernel's faulting in its pages).
    pub merged_json: Option<String>,
    /// The project properties' text (each top-level member's value as the context gives it) and a
    /// final newline: the project copy the action is handed, and the base of the project diff.
    pub project_json: String,
    /// The environment properties as given (see `project_json`).
    pub environment_json: String,
    /// The top-level members' places in `project_json` (for its diff).
    pub project_spans: Vec<splice::Span>,
    /// The top-level members' places in `environment_json`.
    pub environment_spans: Vec<splice::Span>,
    /// The files the merged properties declare (`opschain.files` and the seed layout's `files`),
    /// validated.
    pub files: Vec<FileSpec>,
    /// The env vars the merged properties declare (`opschain.env` and the seed layout's `env`),
    /// validated, in order.
    pub env: Vec<(String, String)>,
    /// Children declared by the action in actions.toml.
    pub declared_children: Vec<String>,
    /// How the children run.
    pub run_as: RunAs,
}

/// What a finished step reports to the binary.
#[derive(Debug)]
pub struct StepReport {
    /// The result as written.
    pub result: StepResult,
    /// The agent's exit status.
    pub exit_status: i32,
    /// An error found after the action ran (recorded in the result too).
    pub error: Option<StepError>,
}

/// A phase of the step, timed from its start; logs its start and its end.
struct Phase {
    name: &'static str,
    start: Instant,
}

impl Phase {
    fn start(name: &'static str) -> Phase {
        info!(phase = name, "phase started");
        Phase { name, start: Instant::now() }
    }

    fn finish(self) -> f64 {
        let ms = millis(self.start.elapsed());
        info!(phase = self.name, duration_ms = ms, "phase finished");
        ms
    }
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Reads and validates every input of the step. Writes nothing.
pub fn prepare(layout: &Layout, options: &StepOptions) -> Result<Prepared, StepError> {
    let context_path = layout.step_context();
    let mut context = StepContext::read_text(&context_path, options.limit).map_err(StepError::Context)?;
    let actions_path = layout.actions();
    let (action, from_flag) = match (&options.action, context.action()) {
        (Some(a), _) => (a.clone(), true),
        (None, Some(a)) => (a.to_string(), false),
        (None, None) => return Err(StepError::NoAction { context: context_path }),
    };
    let actions = Actions::read(&actions_path)?;
    let plan = actions.plan(&action).map_err(|source| match source {
        ActionsError::Unknown { .. } if from_flag => StepError::UnknownActionFlag { action: action.clone(), source },
        other => StepError::Actions(other),
    })?;
    let own = plan.last().map(|(_, a)| a.clone()).unwrap_or_default();

    let repo_sources = properties::read_repository_text(layout, context.environment_code(), options.limit)?;
    // Validate each source on its own first, so that an error names the file it is in. Only the
    // declaring members (`opschain`, and the seed layout's top-level `files` and `env`) are
    // parsed; the merged declarations are the merge of each source's, in merge order (see
    // `properties::declarations`).
    let mut sources: Vec<(&Path, &str, &PropertiesText)> = repo_sources.iter().map(|(p, t)| (p.as_path(), "", t)).collect();
    sources.push((&context_path, "/project/properties", &context.project.properties));
    sources.push((&context_path, "/environment/properties", &context.environment.properties));
    let mut declared = Map::new();
    for (file, prefix, props) in &sources {
        let declaration =
            |e: PointerError| StepError::Declaration { file: file.to_path_buf(), source: PointerError { pointer: format!("{prefix}{}", e.pointer), message: e.message } };
        let own = props.subset(&declarations::MEMBERS);
        declarations::check_files(&own, &layout.repo, options.files_root.as_deref()).map_err(declaration)?;
        declarations::check_env(&own).map_err(declaration)?;
        // The image build reads the levels' build secret lists; a bad one is refused here too.
        if !prefix.is_empty() {
            crate::exec::configured_sets(&own, "").map_err(declaration)?;
        }
        for name in declarations::data_members(&own) {
            info!(file = %file.display(), pointer = %format!("{prefix}/{name}"), "not an object: ordinary data, not a declaration of {name}");
        }
        declarations::merge_into(&mut declared, &own, &declarations::SEED_MEMBERS);
    }
    env::check_secrets(&context.secrets).map_err(|source| StepError::Declaration { file: context_path.clone(), source })?;

    // The merged view and the level copies as the action will find them (the copies are also the
    // base of their diffs), all as text: see `properties::text`.
    let texts: Vec<&PropertiesText> = sources.iter().map(|(_, _, t)| *t).collect();
    // The project level is the one before last; when it is the only source with members, its text
    // is the merge's (`properties::text::merge` spells a lone source's members as it does).
    let project_only = texts.iter().enumerate().all(|(n, t)| n + 2 == texts.len() || t.is_empty());
    let merged_json = (!project_only).then(|| properties::text::merge(&texts));
    drop((texts, sources));
    let (project_spans, environment_spans) = (context.project.properties.spans(), context.environment.properties.spans());
    let project_json = text_bytes(std::mem::take(&mut context.project.properties).into_text());
    let environment_json = text_bytes(std::mem::take(&mut context.environment.properties).into_text());
    let merged_error = |source: PointerError| StepError::Declaration {
        file: context_path.clone(),
        source: PointerError { pointer: format!("(merged declarations) {}", source.pointer), message: source.message },
    };
    let files = files::parse(&declared, &layout.repo, options.files_root.as_deref()).map_err(merged_error)?;
    let env = env::parse(&declared).map_err(merged_error)?;
    for spec in &files {
        files::check_no_symlinks(spec).map_err(|message| {
            let mut pointer = "/opschain/files/".to_string();
            crate::json::push_escaped(&mut pointer, &spec.declared);
            merged_error(PointerError { pointer, message })
        })?;
    }

    Ok(Prepared {
        layout: layout.clone(),
        declared_children: own.steps.clone(),
        run_as: own.run_as.unwrap_or_default(),
        context,
        action,
        plan,
        merged_json,
        project_json,
        environment_json,
        project_spans,
        environment_spans,
        files,
        env,
    })
}

/// The runtime files handed to the action.
struct RuntimeFiles {
    merged: PathBuf,
    project: PathBuf,
    environment: PathBuf,
    children: PathBuf,
    /// The merged properties as written to `merged`, kept for the result's `step.properties`
    /// (copied in verbatim rather than serialised twice); `None` when they are the project copy's
    /// text (see [`Prepared::merged_json`]).
    merged_json: Option<String>,
}

impl RuntimeFiles {
    /// Writes the runtime files: the merged properties (read-only), the two writable level copies
    /// and an empty child steps file. Takes the merged properties' text, for the result.
    fn write(layout: &Layout, prepared: &Prepared, mut merged_json: Option<String>) -> Result<RuntimeFiles, StepError> {
        let dir = layout.runtime_dir();
        std::fs::create_dir_all(&dir).map_err(|source| StepError::RuntimeDir { path: dir.clone(), source })?;
        if let Some(text) = merged_json.as_mut() {
            text.push('\n');
        }
        // One descriptor of the directory for the four files.
        let dirfd = atomic::open_dir(&dir).map_err(StepError::Runtime)?;
        let write = |name: &str, bytes: &[u8], mode| {
            atomic::write_at(&dirfd, &dir, Path::new(name), bytes, mode, Durability::Rename).map_err(StepError::Runtime)?;
            Ok::<PathBuf, StepError>(dir.join(name))
        };
        let merged = write("properties.json", merged_json.as_ref().unwrap_or(&prepared.project_json).as_bytes(), 0o444)?;
        let project = write("project_properties.json", prepared.project_json.as_bytes(), 0o644)?;
        let environment = write("environment_properties.json", prepared.environment_json.as_bytes(), 0o644)?;
        let children = write("child_steps", b"", 0o644)?;
        if let Some(text) = merged_json.as_mut() {
            text.pop(); // the final newline
        }
        Ok(RuntimeFiles { merged, project, environment, children, merged_json })
    }
}

/// `text` and a final newline, as the runtime copies are written (in `text`'s own buffer: a
/// document of a few MB is not copied).
fn text_bytes(mut text: String) -> String {
    text.push('\n');
    text
}

/// The merged properties' text for the result: `merged`, or when it is `None` the project copy's
/// text as written (`project_json`, taken: its diff is done), without its final newline.
fn merged_properties(merged: Option<String>, project_json: &mut String) -> String {
    merged.unwrap_or_else(|| {
        let mut text = std::mem::take(project_json);
        text.pop();
        text
    })
}

/// The environment of the action's commands.
fn action_env(prepared: &Prepared, runtime: &RuntimeFiles, options: &StepOptions) -> Vec<(OsString, OsString)> {
    let layout = &prepared.layout;
    let mut env = EnvBuilder::inherit();
    for (name, value) in &prepared.env {
        env.set(name, value);
    }
    for (name, value) in &prepared.context.secrets {
        env.set(name, value);
    }
    env.set("HOME", &layout.repo)
        .set("OPSCHAIN_REPO_DIR", &layout.repo)
        .set("OPSCHAIN_REPO_FOLDER", &layout.folder)
        .set("OPSCHAIN_ACTION", &prepared.action)
        .set("OPSCHAIN_PROPERTIES", &runtime.merged)
        .set("OPSCHAIN_PROJECT_PROPERTIES", &runtime.project)
        .set("OPSCHAIN_ENVIRONMENT_PROPERTIES", &runtime.environment)
        .set("OPSCHAIN_CHILD_STEPS", &runtime.children)
        .set("OPSCHAIN_STEP_CONTEXT", layout.step_context());
    if let Some(root) = &options.files_root {
        env.set("OPSCHAIN_FILES_ROOT", root);
    }
    if env.size() > env::ENV_SIZE_WARNING {
        warn!(bytes = env.size(), limit = env::ENV_SIZE_WARNING, "the action's environment is large; exec may fail with E2BIG");
    }
    env.build()
}

/// The secret values to mask in everything printed: the runner secrets, and the `opschain.env`
/// values whose names `options.secret_names` calls secret. A secret too short to mask safely is
/// reported by name (never by value) and left unmasked.
pub fn masker_for(prepared: &Prepared, options: &StepOptions) -> Masker {
    let from_env = prepared.env.iter().filter(|(name, _)| options.secret_names.is_secret(name));
    let named = prepared.context.secrets.iter().chain(from_env.map(|(n, v)| (n, v))).map(|(n, v)| (n.clone(), v.clone()));
    let (masker, short) = Masker::from_named(named);
    for secret in short {
        warn!(name = %secret.name, "{secret}");
    }
    masker
}

/// Runs a prepared step: writes the files and runtime copies, runs the plan under `supervisor`,
/// diffs the writable levels and writes step_result.json. Once the action has run, the result is
/// written whatever happened, so that no recorded change is lost.
///
/// Takes the prepared step whole: its properties move into the diff and the result rather than
/// being copied. Three phases, each timed and logged: `initialise`, `run_plan`, then the
/// completion (`level_diff` of each writable level, `children`, `exit_status`, the result).
pub fn run(mut prepared: Prepared, options: &StepOptions, supervisor: &mut Supervisor) -> Result<StepReport, StepError> {
    let phase = Phase::start("initialise");
    let (runtime, env) = initialise(&mut prepared, options)?;
    let initialise_ms = phase.finish();

    let phase = Phase::start("action");
    let Ran { jobs, last } = run_plan(&prepared, &env, options, supervisor)?;
    let action_ms = phase.finish();

    let completing = Phase::start("completing");
    let mut error = None;
    let project_diff = recorded(level_diff(&runtime.project, &prepared.project_json, &prepared.project_spans, options.limit), &mut error);
    let environment_diff = recorded(level_diff(&runtime.environment, &prepared.environment_json, &prepared.environment_spans, options.limit), &mut error);
    let children = children(std::mem::take(&mut prepared.declared_children), &runtime.children);
    let exit_status = exit_status(error.as_ref(), last.as_ref());
    let mut result = StepResult {
        project: LevelDiff { properties_diff: project_diff },
        environment: LevelDiff { properties_diff: environment_diff },
        step: StepProperties { properties: merged_properties(runtime.merged_json, &mut prepared.project_json) },
        steps: Children::new(children, prepared.run_as),
        runner: Some(RunnerFacts {
            version: VERSION.to_string(),
            action: std::mem::take(&mut prepared.action),
            reason: last.as_ref().map(|o| o.reason),
            exit_status,
            code: last.as_ref().and_then(|o| o.code),
            signal: last.as_ref().and_then(|o| o.signal),
            phases: Phases { initialise_ms, action_ms, completing_ms: 0.0 },
            jobs,
            error: error.as_ref().map(|e| e.to_string()),
        }),
    };
    let completing_ms = millis(completing.start.elapsed());
    if let Some(runner) = result.runner.as_mut() {
        runner.phases.completing_ms = completing_ms;
    }
    result.write(&prepared.layout.step_result()).map_err(StepError::Result)?;
    completing.finish();
    Ok(StepReport { result, exit_status, error })
}

/// The step's first phase. Leaves behind: the runtime files written ([`RuntimeFiles::write`]:
/// the merged properties read-only, the two writable level copies, an empty child steps file),
/// with `prepared.merged_json` moved into the returned [`RuntimeFiles`]; every file of
/// `prepared.files` written, with its mode; and the environment the action's commands get.
fn initialise(prepared: &mut Prepared, options: &StepOptions) -> Result<(RuntimeFiles, ActionEnv), StepError> {
    let merged_json = std::mem::take(&mut prepared.merged_json);
    let runtime = RuntimeFiles::write(&prepared.layout, prepared, merged_json)?;
    let mut writer = files::Writer::default();
    for spec in &prepared.files {
        writer.write(spec)?;
        info!(file = %spec.target.full_path().display(), mode = format_args!("{:04o}", spec.mode), "file written");
    }
    writer.finish()?;
    let env = action_env(prepared, &runtime, options).into();
    Ok((runtime, env))
}

/// The environment of the action's commands, shared by their jobs.
type ActionEnv = Arc<[(OsString, OsString)]>;

/// What running the plan left: a fact per command run, in order, and the last one's outcome
/// (`None` when none ran).
struct Ran {
    /// One per command run.
    jobs: Vec<JobFacts>,
    /// How the last command run ended.
    last: Option<Outcome>,
}

/// The step's second phase: runs the plan's commands in order, each as a job of `supervisor`
/// in the repository with `env`, until one fails or the run is cancelled. Leaves behind: no
/// process of any job ([`Supervisor::run`] returns once its job's last descendant is gone) and
/// their output logged; a command that cannot be started counts as one that failed
/// ([`unstartable`]). An error means supervision itself broke down.
fn run_plan(prepared: &Prepared, env: &ActionEnv, options: &StepOptions, supervisor: &mut Supervisor) -> Result<Ran, StepError> {
    let mut ran = Ran { jobs: Vec::new(), last: None };
    for (name, action) in &prepared.plan {
        let Some(argv) = action.argv() else { continue };
        if supervisor.cancelled().is_some() {
            break;
        }
        let job = Job {
            label: name.clone(),
            argv: argv.into_iter().map(OsString::from).collect(),
            cwd: prepared.layout.repo.clone(),
            env: env.clone(),
            timeout: action.timeout().or(options.supervise.default_timeout),
        };
        info!(action = %name, "running");
        let outcome = match supervisor.run(&job) {
            Ok(outcome) => outcome,
            Err(SuperviseError::Spawn { source, program, .. }) => unstartable(name, &program, &source),
            Err(e) => return Err(e.into()),
        };
        info!(action = %name, reason = ?outcome.reason, exit_status = outcome.exit_status, duration_ms = millis(outcome.duration), "ended");
        ran.jobs.push(JobFacts { action: name.clone(), reason: outcome.reason, exit_status: outcome.exit_status, duration_ms: millis(outcome.duration) });
        let failed = outcome.exit_status != 0;
        ran.last = Some(outcome);
        if failed {
            break;
        }
    }
    Ok(ran)
}

/// The outcome of the action `name`'s command `program` that could not be started: the action's
/// failure, as in a shell (127 when it is not found, 126 when it cannot be executed), so that
/// the result is still written.
fn unstartable(name: &str, program: &std::ffi::OsStr, source: &std::io::Error) -> Outcome {
    let status = if source.kind() == std::io::ErrorKind::NotFound { crate::exit::NOT_FOUND } else { crate::exit::CANNOT_EXECUTE }.code();
    warn!(action = %name, program = %program.to_string_lossy(), error = %source, "cannot start the command");
    Outcome {
        reason: crate::supervise::Reason::Exited,
        code: Some(status),
        signal: None,
        exit_status: status,
        duration: Duration::ZERO,
        orphans_reaped: 0,
        lines_dropped: 0,
        survivors: 0,
    }
}

/// The RFC 6902 patch from `before` (the text the agent wrote to the writable level copy at
/// `path`; `spans`, its top-level members) to what the copy holds now; `None` when the copy is
/// byte for byte as written (most steps change no properties), found without parsing it.
///
/// Else the two texts are diffed where they differ ([`splice::diff_known_rest`]: the copy is
/// compared with what was written as it is read, and only what follows the first difference is
/// kept; of that, only the bytes before the common suffix are parsed, so an unchanged member of
/// any size costs a comparison of its bytes). When that declines (a difference at the root's
/// brace) or finds the copy invalid, the copy is read whole: diffed as text, or parsed whole,
/// for the error.
fn level_diff(path: &Path, before: &str, spans: &[splice::Span], limit: SizeLimit) -> Result<Option<json_patch::Patch>, JsonError> {
    let json::Differing::From { at, rest } = json::read_differing(path, limit, before.as_bytes())? else { return Ok(None) };
    let mut ops = Vec::new();
    if std::str::from_utf8(&rest).ok().is_some_and(|rest| splice::diff_known_rest(before, spans, at, rest, &mut ops) == Ok(true)) {
        return Ok(Some(json_patch::Patch(ops)));
    }
    let bytes = json::read_bytes(path, limit)?;
    ops.clear();
    if std::str::from_utf8(&bytes).ok().is_some_and(|after| splice::diff_known(before, spans, after, &mut ops).is_ok()) {
        return Ok(Some(json_patch::Patch(ops)));
    }
    let StrictObject(after) = json::parse::<StrictObject>(path, &bytes)?;
    let before: Value = serde_json::from_str(before).expect("the agent's own JSON parses");
    Ok(Some(diff(&before, &Value::Object(after))))
}

/// The patch of a level's diff as the result records it: empty when the copy is unchanged, and
/// when it cannot be read or is invalid, in which case the failure is kept in `error` (the first
/// one found stays) and the step's other changes are still recorded.
fn recorded(diff: Result<Option<json_patch::Patch>, JsonError>, error: &mut Option<StepError>) -> json_patch::Patch {
    match diff {
        Ok(patch) => patch.unwrap_or(json_patch::Patch(Vec::new())),
        Err(source) => {
            warn!(error = %source, "the action left invalid properties; that level's changes are not recorded");
            error.get_or_insert(StepError::PropertiesCopy { source });
            json_patch::Patch(Vec::new())
        }
    }
}

/// The step's children: `declared` (by actions.toml), then those the action added to the child
/// steps file `file`; a file that cannot be read adds none, with a warning.
fn children(mut declared: Vec<String>, file: &Path) -> Vec<String> {
    match std::fs::read_to_string(file) {
        Ok(text) => declared.extend(result::parse_child_steps(&text)),
        Err(e) => warn!(file = %file.display(), error = %e, "cannot read the child steps file"),
    }
    declared
}

/// The agent's exit status: the last command's (0 when none ran), unless that is 0 and an
/// `error` was found after it, whose status it then is.
fn exit_status(error: Option<&StepError>, last: Option<&Outcome>) -> i32 {
    match (error, last.map_or(0, |o| o.exit_status)) {
        (Some(e), 0) => e.exit_status().code(),
        (_, status) => status,
    }
}
