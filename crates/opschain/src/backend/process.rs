//! The process backend (the default): each step in a fresh, private copy of the change's commit
//! under `<sandbox root>/change-<id>/step-<id>-<pid>-<time>` (the commit is checked out once per
//! change run, next to the step sandboxes, and copied for each step, `.git` included: see
//! [`repo::Checkouts`]), the agent as a child process with `--repo SANDBOX --files-root
//! SANDBOX/root` so nothing is written outside the sandbox (absolute `opschain.files` paths land
//! under `SANDBOX/root`; the action finds that directory in `OPSCHAIN_FILES_ROOT`). The agent's
//! directory is first on the action's PATH (for `opschain-runner property set` and co.), and
//! `TMPDIR` is `SANDBOX/tmp`. The agent is started without forking the controller
//! ([`super::spawn`]), leads its own session and dies with the thread that started it. The
//! sandbox is removed when the step ends. It is its owner's only: the sandbox and the directories
//! above it are `0700` and the step context (the runner secrets) `0600`, from their creation
//! (see [`crate::private`]).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use super::sandbox::SandboxDir;
use super::spawn::Spawn;
use super::{agent_grace_secs, agent_kill_after, read_result, run_spawned, status_code, Backend, BackendError, LogSink, StepJob, StepOutput, CONTEXT_FILE};
use crate::repo;

/// How the process backend runs.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// The agent binary (`opschain-runner`).
    pub agent: PathBuf,
    /// Where the step sandboxes go (default `<state dir>/sandboxes`).
    pub sandbox_root: PathBuf,
    /// The agent's TERM-to-KILL grace when a step is cancelled (default 10 s), given to it as
    /// `--grace-secs`; the controller kills the agent [`super::KILL_AFTER_GRACE`] after it.
    pub grace: Duration,
    /// Keep the sandboxes after the steps (for debugging; default false).
    pub keep_sandboxes: bool,
    /// The OpsChain folder of the repositories (default `.opschain`; MintPress `.mintpress`),
    /// given to the agent as `--folder` and to the action as `OPSCHAIN_REPO_FOLDER`.
    pub folder: String,
    /// The largest step_result.json read (default
    /// [`super::sandbox::DEFAULT_MAX_RESULT_BYTES`]): a larger one fails the step.
    pub max_result_bytes: u64,
}

/// The process backend.
#[derive(Debug)]
pub struct ProcessBackend {
    config: ProcessConfig,
    checkouts: repo::Checkouts,
}

impl ProcessBackend {
    /// A backend with this configuration.
    pub fn new(config: ProcessConfig) -> ProcessBackend {
        let checkouts = repo::Checkouts::new(config.keep_sandboxes);
        ProcessBackend { config, checkouts }
    }

    /// A new sandbox directory for one run of a step ([`super::sandbox_dir`] under the sandbox
    /// root).
    pub fn sandbox(&self, change_id: i64, step_id: i64) -> PathBuf {
        super::sandbox_dir(&self.config.sandbox_root, change_id, step_id)
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackendError + '_ {
    move |source| BackendError::Sandbox { path: path.to_path_buf(), source }
}

impl Backend for ProcessBackend {
    fn run(&self, job: &StepJob, sink: &dyn LogSink, cancel: &Arc<AtomicBool>) -> Result<StepOutput, BackendError> {
        let sandbox = self.sandbox(job.change_id, job.step_id);
        let started = std::time::Instant::now();
        self.checkouts.copy_to(&job.repo, &job.commit, &sandbox).map_err(|source| BackendError::Checkout { step: job.step_id, source })?;
        // Removed however the step ends (a refused sandbox too), unless kept for debugging.
        let _sandbox = (!self.config.keep_sandboxes).then(|| super::RemoveOnDrop(sandbox.clone()));
        sink.line("stderr", &format!("opschain: checked out {} in {:.3}s", &job.commit[..job.commit.len().min(12)], started.elapsed().as_secs_f64()));
        // The folder may be a link the commit brought (`.opschain -> /etc`), and the context
        // file one (`step_context.json -> ~/.ssh/authorized_keys`): neither is followed. The
        // context holds the runner secrets: 0600 from its creation, never a file the commit
        // brought rewritten in place.
        let refused = |source| BackendError::SandboxFile { step: job.step_id, source };
        let folder = SandboxDir::open(&sandbox, &self.config.folder, Some(0o700)).map_err(refused)?;
        folder.write_new(CONTEXT_FILE, 0o600, |out| job.context.write_to(out)).map_err(refused)?;
        let files_root = sandbox.join("root");
        std::fs::create_dir_all(&files_root).map_err(io(&files_root))?;
        let tmp = sandbox.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;

        let agent_dir = self.config.agent.parent().map(Path::to_path_buf).unwrap_or_default();
        let path = format!("{}:{}", agent_dir.display(), std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()));
        let os = |s: &str| OsString::from(s);
        // The agent leads its own session (so that the step's leftovers can be found and killed),
        // and dies with the thread that started it: a controller killed with -9 leaves no agent
        // behind to race a retry. `spawn` does both without forking the controller.
        let spec = Spawn {
            program: self.config.agent.clone(),
            // The agent's grace is given, never left to the environment: the controller's kill
            // comes `KILL_AFTER_GRACE` after it.
            args: vec![
                os("--repo"),
                sandbox.clone().into(),
                os("--folder"),
                os(&self.config.folder),
                os("step"),
                os("--files-root"),
                files_root.clone().into(),
                os("--grace-secs"),
                os(&agent_grace_secs(self.config.grace).to_string()),
            ],
            env: vec![
                (os("PATH"), Some(path.into())),
                (os("OPSCHAIN_FILES_ROOT"), Some(files_root.clone().into())),
                (os("TMPDIR"), Some(tmp.into())),
                (os("OPSCHAIN_REPO_DIR"), None),
                (os("OPSCHAIN_REPO_FOLDER"), Some(os(&self.config.folder))),
            ],
            cwd: sandbox.clone(),
        };
        // What the action left running would hold the pipes open: `run_spawned` ends it with the
        // step.
        let status = run_spawned(&spec, sink, cancel, agent_kill_after(self.config.grace))?;
        let (result, result_error) = read_result(&sandbox, &self.config.folder, self.config.max_result_bytes);
        Ok(StepOutput { exit_status: status_code(status), result, result_error })
    }
}
