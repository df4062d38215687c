//! Where a step runs. A backend takes one step (its action, the change's commit, its step
//! context), runs the agent on it, streams the agent's output line by line to a [`LogSink`], and
//! returns the agent's exit status with the parsed `step_result.json`.
//!
//! * [`process`] (the default): a fresh checkout in a temporary sandbox, the agent as a child
//!   process. No Docker needed.
//! * [`docker`]: an image built per step from the checkout, a container per step.

pub mod docker;
pub mod process;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde_json::Value;

use crate::result::StepResult;

/// Why a backend could not run a step (the step's own failure is a [`StepOutput`] instead).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The checkout of the change's commit failed.
    #[error("cannot check out the change's commit for step {step}")]
    Checkout {
        /// The step.
        step: i64,
        /// The cause.
        #[source]
        source: super::repo::RepoError,
    },
    /// A sandbox file or directory cannot be made or removed.
    #[error("cannot prepare the sandbox {}", path.display())]
    Sandbox {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The agent or docker cannot be started or waited for.
    #[error("cannot run {program}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A docker command failed.
    #[error("docker {op} failed: {stderr}")]
    Docker {
        /// The docker operation.
        op: &'static str,
        /// Its stderr.
        stderr: String,
    },
}

/// Where a backend sends the agent's output lines.
pub trait LogSink: Sync {
    /// One line of the agent's `stdout` or `stderr` (`stream`).
    fn line(&self, stream: &'static str, line: &str);
}

/// One step to run.
#[derive(Debug, Clone)]
pub struct StepJob {
    /// The change.
    pub change_id: i64,
    /// The step.
    pub step_id: i64,
    /// The action.
    pub action: String,
    /// The git repository.
    pub repo: PathBuf,
    /// The commit.
    pub commit: String,
    /// The whole step_context.json.
    pub context: Value,
    /// Build secrets (Docker backend): `{"NAME": "value"}`.
    pub build_secrets: serde_json::Map<String, Value>,
}

/// How the agent ended.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// The agent's exit status (128+N for a signal).
    pub exit_status: i32,
    /// The parsed step_result.json, when the agent wrote one.
    pub result: Option<StepResult>,
    /// Why the result is missing or unreadable, when it is.
    pub result_error: Option<String>,
}

/// Runs steps.
pub trait Backend: Send + Sync {
    /// Runs one step; `cancel` turning true asks it to stop the agent (TERM, then KILL).
    fn run(&self, job: &StepJob, sink: &dyn LogSink, cancel: &Arc<AtomicBool>) -> Result<StepOutput, BackendError>;
}

/// Reads `step_result.json` at `path` into the output's result fields.
pub fn read_result(path: &std::path::Path) -> (Option<StepResult>, Option<String>) {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice::<StepResult>(&bytes) {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(format!("{}: invalid step result: {e}", path.display()))),
        },
        Err(e) => (None, Some(format!("{}: no step result: {e}", path.display()))),
    }
}

/// Streams a child's pipe line by line into `sink`.
pub(crate) fn pump(pipe: impl std::io::Read, stream: &'static str, sink: &dyn LogSink) {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                sink.line(stream, line.trim_end_matches(['\n', '\r']));
            }
        }
    }
}


/// Spawns `command` with its output piped, streams stdout and stderr into `sink` line by line,
/// and waits for it (cancellable, with `grace` between TERM and KILL). `after_wait` runs with the
/// child's pid once it has exited, before the pumps are joined (the process backend ends the
/// child's session there, so that leftovers holding the pipes open cannot stall the join).
/// `program` names the command in errors.
pub(crate) fn run_streamed(
    mut command: std::process::Command,
    program: String,
    sink: &dyn LogSink,
    cancel: &AtomicBool,
    grace: std::time::Duration,
    after_wait: impl FnOnce(u32) + Send,
) -> Result<std::process::ExitStatus, BackendError> {
    use std::process::Stdio;
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|source| BackendError::Spawn { program: program.clone(), source })?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    std::thread::scope(|s| {
        s.spawn(|| pump(stdout, "stdout", sink));
        s.spawn(|| pump(stderr, "stderr", sink));
        let status = wait_cancellable(&mut child, cancel, grace);
        after_wait(child.id());
        status
    })
    .map_err(|source| BackendError::Spawn { program, source })
}

/// Waits for `child`, polling `cancel`: on cancel sends SIGTERM, then SIGKILL after `grace`.
pub(crate) fn wait_cancellable(child: &mut std::process::Child, cancel: &AtomicBool, grace: std::time::Duration) -> std::io::Result<std::process::ExitStatus> {
    use std::sync::atomic::Ordering;
    let mut term_sent: Option<std::time::Instant> = None;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if cancel.load(Ordering::SeqCst) {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            match term_sent {
                None => {
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                    term_sent = Some(std::time::Instant::now());
                }
                Some(at) if at.elapsed() > grace => {
                    let _ = child.kill();
                    kill_session(child.id() as i32);
                }
                Some(_) => {}
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Sends SIGKILL to every process of session `sid` (the agent is started as a session leader, so
/// this reaches the action and whatever it left behind, which would otherwise hold the log pipes
/// open). Does nothing when no process is in that session.
pub(crate) fn kill_session(sid: i32) {
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // Fields after the command name: state, ppid, pgrp, session.
        let session = stat.rsplit_once(") ").and_then(|(_, rest)| rest.split_whitespace().nth(3)).and_then(|s| s.parse::<i32>().ok());
        if session == Some(sid) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// The exit status of a process, 128+N for signal N.
pub(crate) fn status_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}
