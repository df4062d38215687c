//! Process supervision (interim: spawn and wait; the full supervisor replaces this module).

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::mask::Masker;

/// Supervision settings.
#[derive(Debug, Clone, Default)]
pub struct SupervisePolicy {
    /// TERM to KILL grace.
    pub grace: Duration,
    /// Default time limit.
    pub default_timeout: Option<Duration>,
}

/// A command to run.
#[derive(Debug, Clone)]
pub struct Job {
    /// The action name.
    pub label: String,
    /// The command.
    pub argv: Vec<OsString>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Complete environment.
    pub env: Vec<(OsString, OsString)>,
    /// Time limit.
    pub timeout: Option<Duration>,
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// It exited.
    Exited,
    /// A signal ended it.
    Signalled,
    /// Its time limit ended it.
    TimedOut,
    /// The agent was told to stop.
    Cancelled,
}

/// The outcome of a job.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// How it ended.
    pub reason: Reason,
    /// Exit code.
    pub code: Option<i32>,
    /// Signal.
    pub signal: Option<i32>,
    /// Agent exit status.
    pub exit_status: i32,
    /// Duration.
    pub duration: Duration,
}

/// Supervision errors.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// Spawning failed.
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        /// The program.
        program: OsString,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Runs jobs.
pub struct Supervisor {
    _policy: SupervisePolicy,
}

impl Supervisor {
    /// New supervisor.
    pub fn new(policy: SupervisePolicy, _masker: Masker, _out: Box<dyn std::io::Write + Send>) -> Result<Supervisor, SuperviseError> {
        Ok(Supervisor { _policy: policy })
    }

    /// Runs one job.
    pub fn run(&mut self, job: &Job) -> Result<Outcome, SuperviseError> {
        let start = Instant::now();
        let spawn_err = |source| SuperviseError::Spawn { program: job.argv[0].clone(), source };
        let status = std::process::Command::new(&job.argv[0])
            .args(&job.argv[1..])
            .env_clear()
            .envs(job.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&job.cwd)
            .process_group(0)
            .status()
            .map_err(spawn_err)?;
        let (reason, exit_status) = match (status.code(), status.signal()) {
            (Some(c), _) => (Reason::Exited, c),
            (None, Some(s)) => (Reason::Signalled, 128 + s),
            _ => (Reason::Exited, 70),
        };
        Ok(Outcome { reason, code: status.code(), signal: status.signal(), exit_status, duration: start.elapsed() })
    }

    /// The signal that cancelled the run.
    pub fn cancelled(&self) -> Option<i32> {
        None
    }
}
