//! What the command line prints about stored changes: a change's step tree (`change show`, the
//! end of `demo`) and its logs (`change show-logs`). Each writes to the writer it is given, so a
//! reader that goes away (a closed pipe) is an [`std::io::Error`] for the caller to end on, never
//! a panic.

use std::io::Write;
use std::time::Duration;

use super::output::{change_masker, View};
use super::status::{ChangeStatus, StepStatus};
use super::store::{ChangeRow, Level, StepRow, Store, StoreError};

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The output cannot be written (a closed pipe, a full disk).
    #[error("cannot write the output")]
    Write(#[from] std::io::Error),
    /// A change that never started has no point-in-time properties.
    #[error("change {0} has not started: it has no properties of its own yet")]
    NotStarted(i64),
}

/// The point-in-time copy of the properties change `id` ran with: the project's and the
/// environment's versions current when it first started (its own steps' changes are not in it),
/// as `{"project": {"version": N, "properties": {...}}, "environment": {...}}`.
pub fn change_properties(store: &Store, id: i64) -> Result<serde_json::Value, ReportError> {
    let change = store.change(id)?;
    let (project, environment) = change.starting_versions.ok_or(ReportError::NotStarted(id))?;
    let level = |level, owner, version| -> Result<serde_json::Value, StoreError> {
        Ok(serde_json::json!({"version": version, "properties": store.properties_version(level, owner, version)?}))
    };
    Ok(serde_json::json!({
        "project": level(Level::Project, change.project_id, project)?,
        "environment": level(Level::Environment, change.environment_id, environment)?,
    }))
}

/// How often a followed log looks for new lines (200 ms).
pub const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Writes the subtree of `steps` under `parent` (`None`: the whole tree), indented from `depth`:
/// a line per step (`id [action] status duration exit N (children: how)`), and under a failed
/// step its message, each line marked `|`.
pub fn write_step_tree(out: &mut dyn Write, steps: &[StepRow], parent: Option<i64>, depth: usize) -> std::io::Result<()> {
    let mut children: Vec<&StepRow> = steps.iter().filter(|s| s.parent_id == parent).collect();
    children.sort_by_key(|s| s.position);
    for s in children {
        let strategy = s.child_strategy.as_deref().map(|c| format!(" (children: {c})")).unwrap_or_default();
        let took = s.duration_secs.map(|d| format!(" {d:.2}s")).unwrap_or_default();
        let exit = s.exit_status.map(|e| format!(" exit {e}")).unwrap_or_default();
        writeln!(out, "{}{} [{}] {}{took}{exit}{strategy}", "  ".repeat(depth), s.id, s.action, s.status.as_str())?;
        if s.status == StepStatus::Error {
            for line in s.message.as_deref().unwrap_or_default().lines() {
                writeln!(out, "{}  | {line}", "  ".repeat(depth))?;
            }
        }
        write_step_tree(out, steps, Some(s.id), depth + 1)?;
    }
    Ok(())
}

/// Why a change failed, in one line: the first failed step (`step 7 [helo]`) and the first line
/// of its message (the agent's own error, see [`crate::scheduler::failure_message`]).
/// `None` when no step failed with a message.
pub fn failure_summary(steps: &[StepRow]) -> Option<String> {
    let step = steps.iter().filter(|s| s.status == StepStatus::Error && s.message.is_some()).min_by_key(|s| s.id)?;
    let first = step.message.as_deref()?.lines().next().unwrap_or_default();
    Some(format!("step {} [{}]: {first}", step.id, step.action))
}

/// How `change show-logs` prints.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogOptions {
    /// Keep printing lines as they are stored until the change has ended.
    pub follow: bool,
    /// Which lines, and whether with their time (as a running change prints them).
    pub view: View,
    /// Every stored line as a JSON object, one a line ([`json::Log`]), instead of the view.
    pub json: bool,
}

/// Writes the log lines of change `id`, masked with its secrets; with `options.follow`, keeps
/// writing new ones until the change has ended and its last lines are written.
pub fn write_logs(store: &Store, id: i64, options: LogOptions, out: &mut dyn Write) -> Result<(), ReportError> {
    let mask = change_masker(store, &store.change(id)?)?;
    let mut failed: Option<std::io::Error> = None;
    let mut after = 0;
    loop {
        // Whether the change had ended before this read: then the read has its last lines.
        let ended = !options.follow || is_ended(store, &store.change(id)?)?;
        after = store.logs_after(id, after, |l| {
            if failed.is_none() {
                let masked = mask.mask(&l.line);
                let line = if options.json {
                    serde_json::to_string(&json::Log::new(l, &masked)).ok()
                } else {
                    options.view.show(&format!("[{} {}]", l.step_id, l.action), &masked, Some(&l.at))
                };
                if let Some(line) = line {
                    if let Err(e) = writeln!(out, "{line}") {
                        failed = Some(e);
                    }
                }
            }
        })?;
        if let Some(e) = failed.take() {
            return Err(e.into());
        }
        out.flush()?;
        if ended {
            return Ok(());
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}

/// Whether no more lines will come to `change`: it has ended, or the controller running it is
/// gone (killed: `change retry` runs it again, and `change logs --follow` follows that run).
pub fn is_ended(store: &Store, change: &ChangeRow) -> Result<bool, StoreError> {
    let running = matches!(change.status, ChangeStatus::Pending | ChangeStatus::Queued | ChangeStatus::Running);
    Ok(!running || !store.controller_alive(change.id)?)
}

/// How often the live step tree is redrawn (200 ms).
pub const TREE_REDRAW: Duration = Duration::from_millis(200);

/// Draws change `id`'s step tree on the terminal `out` and redraws it in place (ANSI cursor
/// movement) every [`TREE_REDRAW`] until `done` is set, then once more: OpsChain's
/// `--show-steps` view. Each step is a line, `ID [ACTION] STATUS TIME` (the time a step has run
/// so far, or how long it ran), its children indented under it; a failed step's reason follows it,
/// marked `|`. Lines are cut to the terminal's width (`width`), so that a wrapped line never
/// throws the redraw off. Returns when the last drawing is written.
pub fn live_tree(store: &Store, id: i64, width: usize, done: &std::sync::atomic::AtomicBool, out: &mut dyn Write) -> Result<(), ReportError> {
    let mut drawn = 0;
    let mut seen_running: std::collections::HashMap<i64, std::time::Instant> = std::collections::HashMap::new();
    loop {
        let last = done.load(std::sync::atomic::Ordering::SeqCst);
        let change = store.change(id)?;
        let mask = change_masker(store, &change)?;
        let steps = store.steps(id)?;
        let now = std::time::Instant::now();
        for s in &steps {
            if s.status == StepStatus::Running {
                seen_running.entry(s.id).or_insert(now);
            }
        }
        let mut lines = vec![format!(
            "change {} {}: project {}, environment {}, action {}, commit {}",
            change.id,
            change.status.as_str(),
            change.project,
            change.environment,
            change.action,
            &change.commit[..change.commit.len().min(12)]
        )];
        tree_lines(
            &steps,
            None,
            1,
            &|s: &StepRow| match (s.status, s.duration_secs, seen_running.get(&s.id)) {
                (StepStatus::Running, _, Some(since)) => format!(" {:.1}s", since.elapsed().as_secs_f64()),
                (_, Some(d), _) => format!(" {d:.2}s"),
                _ => String::new(),
            },
            &mut lines,
        );
        let mut frame = String::new();
        if drawn > 0 {
            // Back to the first line drawn, and clear everything below it.
            frame.push_str(&format!("\x1b[{drawn}F\x1b[J"));
        }
        for line in &lines {
            let line = mask.mask(line);
            let cut: String = line.chars().take(width.max(20) - 1).collect();
            frame.push_str(&cut);
            frame.push('\n');
        }
        out.write_all(frame.as_bytes())?;
        out.flush()?;
        drawn = lines.len();
        if last {
            return Ok(());
        }
        std::thread::sleep(TREE_REDRAW);
    }
}

/// The lines of the subtree under `parent`, as [`write_step_tree`] draws it, each step's time
/// from `time`.
fn tree_lines(steps: &[StepRow], parent: Option<i64>, depth: usize, time: &dyn Fn(&StepRow) -> String, lines: &mut Vec<String>) {
    let mut children: Vec<&StepRow> = steps.iter().filter(|s| s.parent_id == parent).collect();
    children.sort_by_key(|s| s.position);
    for s in children {
        lines.push(format!("{}{} [{}] {}{}", "  ".repeat(depth), s.id, s.action, s.status.as_str(), time(s)));
        if s.status == StepStatus::Error {
            for line in s.message.as_deref().unwrap_or_default().lines() {
                lines.push(format!("{}  | {line}", "  ".repeat(depth)));
            }
        }
        tree_lines(steps, Some(s.id), depth + 1, time, lines);
    }
}

/// The JSON forms of what `-o json` prints: stable field names (documented in
/// `docs/cli-json.md`); a field is added, never renamed or removed.
pub mod json {
    use serde::Serialize;
    use serde_json::{Map, Value};

    use crate::store::{ChangeRow, EnvironmentRow, LogLine, ProjectRow, PropertiesVersion, StepRow};

    /// A change (`change ls`, and `change show` with its `steps`).
    #[derive(Debug, Serialize)]
    pub struct Change {
        /// The change id.
        pub id: i64,
        /// pending, queued, running, success, error or cancelled.
        pub status: &'static str,
        /// The project code.
        pub project: String,
        /// The environment code.
        pub environment: String,
        /// The root step's action.
        pub action: String,
        /// The git revision as given.
        pub git_rev: String,
        /// The commit it resolved to.
        pub commit: String,
        /// The repository the steps are checked out from.
        pub repo: String,
        /// process, docker or kubernetes.
        pub backend: &'static str,
        /// Its metadata (`--metadata-path`), or null.
        pub metadata: Option<Value>,
        /// When it was created (RFC 3339, UTC).
        pub created_at: String,
        /// When it ended, or null.
        pub finished_at: Option<String>,
        /// Why it failed (the first failed step and its cause), or null.
        pub failure: Option<String>,
        /// Its steps (`change show` only).
        #[serde(skip_serializing_if = "Option::is_none")]
        pub steps: Option<Vec<Step>>,
    }

    impl Change {
        /// The JSON form of `c`, whose failure summary is `failure`; with its `steps` when given.
        pub fn new(c: &ChangeRow, failure: Option<String>, steps: Option<&[StepRow]>) -> Change {
            Change {
                id: c.id,
                status: c.status.as_str(),
                project: c.project.clone(),
                environment: c.environment.clone(),
                action: c.action.clone(),
                git_rev: c.git_rev.clone(),
                commit: c.commit.clone(),
                repo: c.repo.display().to_string(),
                backend: c.backend.as_str(),
                metadata: c.metadata.as_deref().and_then(|m| serde_json::from_str(m).ok()),
                created_at: c.created_at.clone(),
                finished_at: c.finished_at.clone(),
                failure,
                steps: steps.map(|steps| steps.iter().map(Step::new).collect()),
            }
        }
    }

    /// A step of a change.
    #[derive(Debug, Serialize)]
    pub struct Step {
        /// The step id.
        pub id: i64,
        /// Its parent step's id; null for the root.
        pub parent_id: Option<i64>,
        /// Its position among its siblings (from 0).
        pub position: i64,
        /// Its action.
        pub action: String,
        /// pending, queued, running, success, error, aborted or cancelled.
        pub status: &'static str,
        /// How its children run (sequential, parallel), or null.
        pub child_strategy: Option<String>,
        /// The agent's exit status, or null.
        pub exit_status: Option<i64>,
        /// Why it failed (first line: the cause), or null.
        pub message: Option<String>,
        /// When it started, or null.
        pub started_at: Option<String>,
        /// When it ended, or null.
        pub finished_at: Option<String>,
        /// How long it ran, in seconds (rounded to milliseconds), or null.
        pub duration_secs: Option<f64>,
    }

    impl Step {
        /// The JSON form of `s`.
        pub fn new(s: &StepRow) -> Step {
            Step {
                id: s.id,
                parent_id: s.parent_id,
                position: s.position,
                action: s.action.clone(),
                status: s.status.as_str(),
                child_strategy: s.child_strategy.clone(),
                exit_status: s.exit_status,
                message: s.message.clone(),
                started_at: s.started_at.clone(),
                finished_at: s.finished_at.clone(),
                duration_secs: s.duration_secs.map(|d| (d * 1000.0).round() / 1000.0),
            }
        }
    }

    /// A project (`project ls`).
    #[derive(Debug, Serialize)]
    pub struct Project {
        /// The project code.
        pub code: String,
        /// How many environments it has.
        pub environments: i64,
        /// How many changes it has had.
        pub changes: i64,
        /// Whether several of its changes may run at once in one environment.
        pub allow_parallel_changes: bool,
        /// Whether it is archived.
        pub archived: bool,
        /// When it was created.
        pub created_at: String,
    }

    impl From<&ProjectRow> for Project {
        fn from(p: &ProjectRow) -> Project {
            Project {
                code: p.code.clone(),
                environments: p.environments,
                changes: p.changes,
                allow_parallel_changes: p.allow_parallel_changes,
                archived: p.archived,
                created_at: p.created_at.clone(),
            }
        }
    }

    /// An environment (`environment ls`).
    #[derive(Debug, Serialize)]
    pub struct Environment {
        /// The environment code.
        pub code: String,
        /// How many changes it has had.
        pub changes: i64,
        /// Whether it is archived.
        pub archived: bool,
        /// When it was created.
        pub created_at: String,
    }

    impl From<&EnvironmentRow> for Environment {
        fn from(e: &EnvironmentRow) -> Environment {
            Environment { code: e.code.clone(), changes: e.changes, archived: e.archived, created_at: e.created_at.clone() }
        }
    }

    /// A stored version of properties (`properties history`).
    #[derive(Debug, Serialize)]
    pub struct PropertiesVersionJson {
        /// The version number (0: the empty first one).
        pub version: i64,
        /// When it was stored.
        pub created_at: String,
        /// The step that wrote it; null when a user did.
        pub step_id: Option<i64>,
        /// The properties.
        pub properties: Map<String, Value>,
    }

    impl From<PropertiesVersion> for PropertiesVersionJson {
        fn from(v: PropertiesVersion) -> PropertiesVersionJson {
            PropertiesVersionJson { version: v.version, created_at: v.created_at, step_id: v.step_id, properties: v.json }
        }
    }

    /// A stored log line (`change show-logs -o json`, one object a line).
    #[derive(Debug, Serialize)]
    pub struct Log<'a> {
        /// The step.
        pub step_id: i64,
        /// The step's action.
        pub action: &'a str,
        /// The agent's stream: stdout or stderr.
        pub stream: &'a str,
        /// When the controller stored it.
        pub at: &'a str,
        /// The line as stored (masked), in the agent's format.
        pub line: &'a str,
    }

    impl<'a> Log<'a> {
        /// The JSON form of `l`, its text `masked`.
        pub fn new(l: &'a LogLine, masked: &'a str) -> Log<'a> {
            Log { step_id: l.step_id, action: &l.action, stream: &l.stream, at: &l.at, line: masked }
        }
    }
}
