//! Calls to the Docker engine, each bounded in time and cancel-aware: a daemon that does not
//! answer fails the step with an error naming the call that hung (`docker image inspect X did
//! not answer within 30s`), never wedges it, and `change cancel` stops any call at once.
//!
//! Each kind of call has its own limit ([`EngineTimeouts`]): the quick ones (image inspect, tag,
//! `rm -f`, info), the container's start (`docker run` until its first line of output: the agent
//! prints one as it starts), a push or pull, and a build. A container that has started is bounded
//! by its action's own time limits, which the agent enforces, and by cancel.

use std::ffi::OsStr;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::Duration;

use super::{run_streamed, Bound, LogSink};
use crate::image::docker::Docker;

/// How long each kind of engine call may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineTimeouts {
    /// A call that answers at once: image inspect (CLI or socket), tag, `rm -f`, info
    /// (`--docker-timeout-secs`, default 30 s).
    pub call: Duration,
    /// `docker run` until the container's first line of output (`--docker-start-secs`, default
    /// 300 s: an image may have to be unpacked first).
    pub start: Duration,
    /// A push or pull of a step image (`--docker-transfer-timeout-secs`, default 1800 s).
    pub transfer: Duration,
    /// A step image's build (`--docker-build-timeout-secs`, default 3600 s).
    pub build: Duration,
}

impl EngineTimeouts {
    /// The defaults: 30 s, 300 s, 1800 s, 3600 s.
    pub const DEFAULT: EngineTimeouts =
        EngineTimeouts { call: Duration::from_secs(30), start: Duration::from_secs(300), transfer: Duration::from_secs(1800), build: Duration::from_secs(3600) };

    /// The bound of a quick call described by `what`.
    pub fn call_bound(&self, what: String) -> Bound {
        Bound { what, first_output: None, total: Some(self.call), setting: "--docker-timeout-secs" }
    }

    /// The bound of a push or pull described by `what`.
    pub fn transfer_bound(&self, what: String) -> Bound {
        Bound { what, first_output: None, total: Some(self.transfer), setting: "--docker-transfer-timeout-secs" }
    }

    /// The bound of a build described by `what`.
    pub fn build_bound(&self, what: String) -> Bound {
        Bound { what, first_output: None, total: Some(self.build), setting: "--docker-build-timeout-secs" }
    }

    /// The bound of a `docker run` described by `what`: its first line of output.
    pub fn start_bound(&self, what: String) -> Bound {
        Bound { what, first_output: Some(self.start), total: None, setting: "--docker-start-secs" }
    }
}

impl Default for EngineTimeouts {
    fn default() -> EngineTimeouts {
        EngineTimeouts::DEFAULT
    }
}

/// Why an engine call failed to give an answer.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The call did not end within its limit (the engine hangs, or is far slower than expected).
    #[error("{what} did not answer within {}s (the limit is {setting})", within.as_secs())]
    NoAnswer {
        /// The call, as a command line (`docker image inspect X`).
        what: String,
        /// Its limit.
        within: Duration,
        /// The setting that sets the limit.
        setting: &'static str,
    },
    /// The step was cancelled while the call ran: it was stopped.
    #[error("{what} was stopped: the step was cancelled")]
    Cancelled {
        /// The call.
        what: String,
    },
    /// The docker CLI could not be started or waited for.
    #[error("cannot run {what}")]
    Run {
        /// The call.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// What a finished call printed, and how it ended.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Whether it exited 0.
    pub success: bool,
    /// Its stdout, line by line.
    pub stdout: String,
    /// Its stderr, line by line.
    pub stderr: String,
}

/// A [`LogSink`] that keeps the lines of each stream.
#[derive(Default)]
struct Collect {
    stdout: Mutex<String>,
    stderr: Mutex<String>,
}

impl LogSink for Collect {
    fn line(&self, stream: &'static str, line: &str) {
        let text = if stream == "stdout" { &self.stdout } else { &self.stderr };
        let mut text = text.lock().unwrap_or_else(|e| e.into_inner());
        text.push_str(line);
        text.push('\n');
    }
}

/// The command line of `docker ARGS` as errors show it: `docker` and the arguments.
pub fn shown<S: AsRef<OsStr>>(args: &[S]) -> String {
    let mut what = String::from("docker");
    for arg in args {
        what.push(' ');
        what.push_str(&arg.as_ref().to_string_lossy());
    }
    what
}

/// Runs `docker ARGS` within `bound` (from [`EngineTimeouts`]), stopped when `cancel` turns true;
/// returns what it printed and whether it succeeded.
pub fn call<S: AsRef<OsStr>>(docker: &Docker, args: &[S], bound: &Bound, cancel: &AtomicBool) -> Result<Answer, EngineError> {
    let mut command = docker.command();
    command.args(args).stdin(std::process::Stdio::null());
    let collect = Collect::default();
    // A quick call has nothing to finish: a cancel stops it at once (no grace).
    let status = run_streamed(command, docker.program.display().to_string(), &collect, cancel, Duration::ZERO, Some(bound));
    let status = match status {
        Ok(status) => status,
        Err(super::BackendError::Engine(e)) => return Err(e),
        Err(super::BackendError::Spawn { source, .. } | super::BackendError::Wait { source, .. }) => return Err(EngineError::Run { what: bound.what.clone(), source }),
        Err(other) => return Err(EngineError::Run { what: bound.what.clone(), source: std::io::Error::other(other.to_string()) }),
    };
    if !status.success() && cancel.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(EngineError::Cancelled { what: bound.what.clone() });
    }
    let take = |m: Mutex<String>| m.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(Answer { success: status.success(), stdout: take(collect.stdout), stderr: take(collect.stderr) })
}
