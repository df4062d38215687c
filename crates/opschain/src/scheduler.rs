//! Runs a change's step tree as OpsChain does: a step's reported children run after it,
//! sequentially or in parallel; a parallel group is bounded by the worker count (a step holds a
//! worker only while its agent runs, never while it waits for its children). A failed sequential
//! child stops the rest (they become `aborted`); a failed parallel child lets its siblings finish,
//! then the change errors. `change cancel` (a flag in the store, polled) stops running agents and
//! turns the pending, queued and running steps `cancelled`.
//!
//! Steps already `success` (a retried change) are not run again: the scheduler descends into their
//! recorded children instead.
//!
//! Threads: a parallel group is run by at most `workers` threads that take its children in turn
//! (a step's agent is started, streamed and waited for by the thread that runs the step, with no
//! helper thread), so a change of a thousand parallel steps runs on a few dozen threads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::backend::{Backend, BackendError, ContextDocument, StepJob};
use super::output::{change_secrets, Cause, ChangeOutput, View};
use super::status::{ChangeStatus, StepStatus};
use super::store::{ChangeRow, Level, StepEnd, StepRow, Store, StoreError};
use opschain_runner::step_image::{self, BuildError, SecretSet};

/// How the scheduler runs a change.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// How many agents run at once (default: [`default_workers`], 8 per CPU).
    pub workers: usize,
    /// How often the cancel flag is polled (default 250 ms).
    pub cancel_poll: Duration,
    /// The user named in the step context (default `$USER`).
    pub user: String,
    /// What the change prints on the terminal (default: the action's lines and a status line
    /// per step).
    pub view: View,
}

/// How many steps run at once unless told otherwise: 8 per CPU (16 on a 2-CPU machine). A step's
/// agent spends most of its time waiting, not computing: for its fsyncs (the result, the
/// runtime copies), for the store's commits of its start and end, for its action's own I/O.
/// Measured on 2 CPUs with 1,000 trivial parallel steps: 2 workers (one per CPU) ran ~90
/// steps/s with both CPUs mostly idle, 8 ran ~260/s, 16 ran ~350/s with the CPUs ~90% busy, and
/// 32 no more than 16. Steps that compute (or Docker builds) want fewer: `--workers`.
pub fn default_workers() -> usize {
    8 * std::thread::available_parallelism().map(usize::from).unwrap_or(2)
}

/// A counting semaphore: the worker slots.
struct Workers {
    free: Mutex<usize>,
    freed: Condvar,
}

impl Workers {
    fn acquire(&self) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
    }

    fn release(&self) {
        *self.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.freed.notify_one();
    }
}

/// The moving state of one change's run.
pub struct Scheduler<'a> {
    store: &'a Store,
    backend: &'a dyn Backend,
    change: ChangeRow,
    secrets: Map<String, Value>,
    config: SchedulerConfig,
    workers: Workers,
    cancel: Arc<AtomicBool>,
    /// Where every line about the change goes, masked with its secrets.
    output: ChangeOutput<'a>,
    started: Instant,
}

/// Why a step failed, its first line the cause in the user's terms (what `change show` and
/// `change ls` summarise it with): the agent's own error when it gave one, else what the step
/// result says went wrong, else the action's last line on stderr; then how the agent exited, and
/// what the controller found of its result.
pub fn failure_message(cause: &Cause, exit_status: i32, result_error: Option<&str>, runner_error: Option<&str>) -> String {
    let mut lines: Vec<String> = Vec::new();
    if let Some(e) = &cause.agent_error {
        lines.push(e.clone());
        lines.push(format!("the agent exited with status {exit_status}"));
    } else if let Some(e) = runner_error {
        lines.push(e.to_string());
        lines.push(format!("the agent exited with status {exit_status}"));
    } else if let Some(last) = cause.last_stderr.as_deref().filter(|_| exit_status != 0) {
        lines.push(format!("the action exited with status {exit_status}; its last line on stderr: {last}"));
    } else {
        lines.push(format!("the agent exited with status {exit_status}"));
    }
    // A missing step result is the consequence of an error the agent already named; a refused
    // one is not.
    let consequence = |e: &&str| cause.agent_error.is_some() && !e.starts_with(crate::backend::REFUSED_RESULT);
    if let Some(e) = result_error.filter(|e| !consequence(e)) {
        lines.push(e.to_string());
    }
    lines.join("\n")
}

/// Formats a duration as seconds with two decimals.
pub fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

impl<'a> Scheduler<'a> {
    /// A scheduler for `change`, whose steps get `secrets` (runner secrets in their context).
    pub fn new(store: &'a Store, backend: &'a dyn Backend, change: ChangeRow, secrets: Map<String, Value>, config: SchedulerConfig) -> Scheduler<'a> {
        let workers = Workers { free: Mutex::new(config.workers.max(1)), freed: Condvar::new() };
        let output = ChangeOutput::new(store).with_view(config.view);
        Scheduler { store, backend, change, secrets, config, workers, cancel: Arc::new(AtomicBool::new(false)), output, started: Instant::now() }
    }

    fn say(&self, text: &str) {
        self.output.say(text);
    }

    /// A progress message, shown only in the verbose view.
    fn detail(&self, text: &str) {
        self.output.detail(text);
    }

    /// Masks, from now on, the secrets of the sets the change uses with these properties (its
    /// runner set, and the build sets they name), and warns of those too short to be masked.
    fn mask_secrets(&self, project: &Map<String, Value>, environment: &Map<String, Value>) -> Result<(), StoreError> {
        let secrets = change_secrets(self.store, self.change.secret_set.as_deref(), project, environment)?;
        for short in self.output.add_secrets(secrets) {
            self.say(&format!("warning: {short}"));
        }
        Ok(())
    }

    /// Runs the change's steps to the end and records the change's final status.
    pub fn run(&self) -> Result<ChangeStatus, StoreError> {
        // The secret rule reads only `opschain`: the rest of the properties is not parsed.
        let project = self.store.declaring_properties(Level::Project, self.change.project_id)?;
        let environment = self.store.declaring_properties(Level::Environment, self.change.environment_id)?;
        self.mask_secrets(&project, &environment)?;
        // The cancel watcher sleeps on `done` so that the end of the tree wakes it at once (a plain
        // sleep would hold the change's end back by up to a whole poll interval).
        let done = (Mutex::new(false), Condvar::new());
        let outcome = std::thread::scope(|s| {
            s.spawn(|| {
                let mut finished = done.0.lock().unwrap_or_else(|e| e.into_inner());
                while !*finished {
                    if self.store.cancel_requested(self.change.id).unwrap_or(false) {
                        if !self.cancel.swap(true, Ordering::SeqCst) {
                            self.say("cancel requested: stopping the running steps");
                        }
                        break;
                    }
                    finished = done.1.wait_timeout(finished, self.config.cancel_poll).unwrap_or_else(|e| e.into_inner()).0;
                }
            });
            let result = self.run_tree();
            *done.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
            done.1.notify_all();
            result
        });
        let ok = outcome?;
        let status = if self.cancel.load(Ordering::SeqCst) {
            self.store.cancel_orphaned(self.change.id)?;
            ChangeStatus::Cancelled
        } else if ok {
            ChangeStatus::Success
        } else {
            ChangeStatus::Error
        };
        self.store.set_change_status(self.change.id, status)?;
        let why = match status {
            ChangeStatus::Error => super::report::failure_summary(&self.store.steps(self.change.id)?).map(|w| format!(": {w}")).unwrap_or_default(),
            _ => String::new(),
        };
        self.say(&format!("change {} {} in {}{why}", self.change.id, status.as_str(), secs(self.started.elapsed())));
        Ok(status)
    }

    fn run_tree(&self) -> Result<bool, StoreError> {
        let steps = self.store.steps(self.change.id)?;
        let root = steps.into_iter().find(|s| s.parent_id.is_none()).ok_or_else(|| StoreError::NotFound(format!("root step of change {}", self.change.id)))?;
        self.run_node(root, 0)
    }

    /// Runs a step (unless it already succeeded), then its children; true when the whole subtree
    /// succeeded.
    fn run_node(&self, step: StepRow, depth: usize) -> Result<bool, StoreError> {
        self.run_node_queued(step, depth, false)
    }

    /// [`Self::run_node`]; `queued`: the step is already marked `queued` (by its parallel group).
    fn run_node_queued(&self, step: StepRow, depth: usize, queued: bool) -> Result<bool, StoreError> {
        if step.status != StepStatus::Success && !self.execute(&step, depth, queued)? {
            return Ok(false);
        }
        let (children, strategy) = self.store.child_steps(self.change.id, step.id)?;
        if children.is_empty() {
            return Ok(true);
        }
        if strategy.as_deref() == Some("parallel") {
            self.detail(&format!("step {} [{}]: {} children in parallel", step.id, step.action, children.len()));
            // Every child that will run waits for a worker from now on: `queued`, in one write.
            let waiting: Vec<i64> = children.iter().filter(|c| c.status != StepStatus::Success).map(|c| c.id).collect();
            if !self.cancel.load(Ordering::SeqCst) {
                self.store.mark_queued(&waiting)?;
            }
            // At most `workers` threads take the children in turn. More could not run more agents
            // at once: a child's subtree in progress always has a step running or waiting for a
            // worker slot, so `workers` subtrees in progress keep every slot busy. A thread per
            // child would cost a thousand thread stacks for nothing.
            let threads = children.len().min(self.config.workers.max(1));
            let next = Mutex::new(children.into_iter());
            let results: Vec<Result<bool, StoreError>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|_| {
                        s.spawn(|| {
                            let mut out = Vec::new();
                            loop {
                                let child = next.lock().unwrap_or_else(|e| e.into_inner()).next();
                                match child {
                                    Some(c) => out.push(self.run_node_queued(c, depth + 1, true)),
                                    None => return out,
                                }
                            }
                        })
                    })
                    .collect();
                handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|_| vec![Ok(false)])).collect()
            });
            let mut ok = true;
            for r in results {
                ok &= r?;
            }
            Ok(ok)
        } else {
            self.detail(&format!("step {} [{}]: {} children in sequence", step.id, step.action, children.len()));
            let mut ok = true;
            for child in children {
                if ok {
                    ok = self.run_node(child, depth + 1)?;
                } else if child.status != StepStatus::Success {
                    let status = if self.cancel.load(Ordering::SeqCst) { StepStatus::Cancelled } else { StepStatus::Aborted };
                    self.store.set_step_status(child.id, status, Some("not run: an earlier step failed"))?;
                    self.say(&format!("step {} [{}] {}", child.id, child.action, status.as_str()));
                }
            }
            Ok(ok)
        }
    }

    /// The build secret sets of a step's image, from this controller's secret sets: those the
    /// step context's `opschain.config.build_secrets` lists (project, then environment), else the
    /// default set `opschain-build-env`. A listed set that does not exist is an error that says
    /// how to create it.
    fn build_secret_sets(&self, job: &StepJob) -> Result<Vec<SecretSet>, BuildError> {
        step_image::applicable_secret_sets(&job.context.declaring_tree())?
            .into_iter()
            .map(|name| match self.store.secrets(&name) {
                Ok(Some(map)) => SecretSet::from_map(&name, &map),
                Ok(None) => Err(BuildError::NoSecretSet { name }),
                Err(e) => Err(BuildError::SecretStore { name, source: Box::new(e) }),
            })
            .collect()
    }

    /// Runs one step's agent and records its end; true on success. `queued`: the step is already
    /// marked `queued` (its parallel group marked them all at once).
    fn execute(&self, step: &StepRow, depth: usize, queued: bool) -> Result<bool, StoreError> {
        if self.cancel.load(Ordering::SeqCst) {
            self.store.set_step_status(step.id, StepStatus::Cancelled, None)?;
            return Ok(false);
        }
        if !queued {
            self.store.set_step_status(step.id, StepStatus::Queued, None)?;
        }
        self.workers.acquire();
        let result = self.execute_with_worker(step, depth);
        self.workers.release();
        result
    }

    fn execute_with_worker(&self, step: &StepRow, depth: usize) -> Result<bool, StoreError> {
        if self.cancel.load(Ordering::SeqCst) {
            self.store.set_step_status(step.id, StepStatus::Cancelled, None)?;
            return Ok(false);
        }
        let start = self.store.start_step(step.id, self.change.project_id, self.change.environment_id)?;
        // The secret rule reads only `opschain.config.build_secrets`: the declaring members the
        // store found without parsing the rest of the properties.
        self.mask_secrets(&start.project_declaring, &start.environment_declaring)?;
        let began = Instant::now();
        self.detail(&format!("step {} [{}] running (level {})", step.id, step.action, depth + 1));
        // The context is spliced around the properties' shared text, never built as a tree.
        // The versions the step starts from: its diffs are merged against them if the properties
        // change while it runs.
        let bases = (start.project_base.clone(), start.environment_base.clone());
        let mut change = json!({"id": self.change.id, "action": self.change.action, "commit": self.change.commit});
        if let Some(metadata) = self.change.metadata.as_deref().and_then(|m| serde_json::from_str::<Value>(m).ok()) {
            change["metadata"] = metadata;
        }
        let context = ContextDocument {
            context: json!({
                "project": {"code": self.change.project},
                "environment": {"code": self.change.environment},
                "change": change,
                "step": {"id": step.id, "action": step.action},
                "user": {"name": self.config.user},
            }),
            project: start.project,
            environment: start.environment,
            project_declaring: start.project_declaring,
            environment_declaring: start.environment_declaring,
            secrets: (!self.secrets.is_empty()).then(|| self.secrets.clone()),
        };
        let mut job = StepJob {
            change_id: self.change.id,
            step_id: step.id,
            action: step.action.clone(),
            repo: self.change.repo.clone(),
            git_rev: self.change.git_rev.clone(),
            commit: self.change.commit.clone(),
            context,
            build_secret_sets: Vec::new(),
        };
        let sink = self.output.step_sink(step.id, &step.action);
        let ran = if self.backend.builds_images() {
            self.build_secret_sets(&job).map_err(|source| BackendError::BuildSecrets { step: step.id, source }).and_then(|sets| {
                job.build_secret_sets = sets;
                self.backend.run(&job, &sink, &self.cancel)
            })
        } else {
            self.backend.run(&job, &sink, &self.cancel)
        };
        let end = match ran {
            Ok(output) => {
                let cancelled = self.cancel.load(Ordering::SeqCst) && output.exit_status != 0;
                let succeeded = output.exit_status == 0 && output.result.is_some();
                let mut message = None;
                if !succeeded {
                    let runner_error = output.result.as_ref().and_then(|r| r.runner.as_ref()).and_then(|r| r.error.as_deref());
                    message = Some(failure_message(&sink.cause(), output.exit_status, output.result_error.as_deref(), runner_error));
                }
                let (project_diff, environment_diff, children, strategy) = match output.result {
                    Some(r) => (
                        r.project.properties_diff,
                        r.environment.properties_diff,
                        r.steps.children.into_iter().map(|c| c.action).collect(),
                        r.steps.child_execution_strategy.and_then(|s| serde_json::to_value(s).ok()).and_then(|v| v.as_str().map(str::to_string)),
                    ),
                    None => (json_patch::Patch(vec![]), json_patch::Patch(vec![]), vec![], None),
                };
                StepEnd {
                    status: if cancelled {
                        StepStatus::Cancelled
                    } else if succeeded {
                        StepStatus::Success
                    } else {
                        StepStatus::Error
                    },
                    exit_status: Some(output.exit_status),
                    message,
                    project_diff,
                    environment_diff,
                    children,
                    child_strategy: strategy,
                    mask: self.output.masker(),
                    project_base: Some(bases.0.clone()),
                    environment_base: Some(bases.1.clone()),
                }
            }
            Err(e) => {
                let mut m = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    m.push_str(&format!(": {s}"));
                    source = s.source();
                }
                StepEnd {
                    status: StepStatus::Error,
                    exit_status: None,
                    message: Some(m),
                    project_diff: json_patch::Patch(vec![]),
                    environment_diff: json_patch::Patch(vec![]),
                    children: vec![],
                    child_strategy: None,
                    mask: self.output.masker(),
                    project_base: None,
                    environment_base: None,
                }
            }
        };
        let (status, message) = self.store.finish_step(step.id, self.change.project_id, self.change.environment_id, end)?;
        let (from, to) = (began.duration_since(self.started), self.started.elapsed());
        self.say(&format!("step {} [{}] {} in {} ({} to {})", step.id, step.action, status.as_str(), secs(to - from), secs(from), secs(to)));
        if let Some(m) = message {
            for line in m.lines() {
                self.say(&format!("step {} [{}]: {line}", step.id, step.action));
            }
        }
        Ok(status == StepStatus::Success)
    }
}
