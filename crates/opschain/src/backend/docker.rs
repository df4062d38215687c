//! The Docker backend: per step, the step image ([`crate::image::build`]: built from the change's commit
//! by the one build pipeline, or reused), then one `docker run --rm` of it, the agent its
//! ENTRYPOINT, with the repository's OpsChain folder (exported from the commit, the step context
//! written into it) bind-mounted over `/opt/opschain/<folder>`, so that the agent's
//! step_result.json lands on this side. The rest of `/opt/opschain`, `.git` included, is the
//! image's: `repo.tar` of the commit. The folder (`.opschain`, or `.mintpress`) is also given to
//! the agent as `OPSCHAIN_REPO_FOLDER`.
//!
//! With `--transport stream` nothing is mounted: the step context goes in on the container's
//! standard input and the result comes back in its output ([`super::stream`]). With `--registry`
//! the step image goes through the registry ([`crate::image::registry`]).
//!
//! Nothing is pulled: the base runner image (`--docker-base-image`, default
//! `opschain-runner:latest`) must exist locally.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::engine::EngineTimeouts;
use super::sandbox::{SandboxDir, SandboxFileError};
use super::{read_result, run_streamed, status_code, Backend, BackendError, LogSink, RemoveOnDrop, StepJob, StepOutput, CONTEXT_FILE};
use crate::image::build::{ImageOutcome, ImageSettings, StepImages};
use crate::image::docker::Docker;
use crate::repo;

/// How the Docker backend runs.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// The docker CLI (default `/usr/bin/docker`, Debian's client, which builds with BuildKit).
    pub docker: PathBuf,
    /// The base runner image (`OPSCHAIN_BASE_RUNNER`; default `opschain-runner:latest`).
    pub base_image: String,
    /// The agent's TERM-to-KILL grace when a step is cancelled (default 10 s), given to it as
    /// `--grace-secs`; the controller kills the run [`super::KILL_AFTER_GRACE`] after it (and a
    /// cancelled image build is killed the grace itself after its SIGTERM).
    pub grace: std::time::Duration,
    /// How the step context goes in and the result comes out (default: a bind mount).
    pub transport: super::stream::Transport,
    /// The registry step images go through (default: none, the engine's local images).
    pub registry: Option<crate::image::registry::Registry>,
    /// The largest step result read, from the bind-mounted folder or a result frame (default
    /// [`super::sandbox::DEFAULT_MAX_RESULT_BYTES`]): a larger one fails the step.
    pub max_result_bytes: u64,
    /// The time limits of the calls to the engine (default [`EngineTimeouts::DEFAULT`]).
    pub timeouts: EngineTimeouts,
}

/// The Docker backend.
#[derive(Debug)]
pub struct DockerBackend {
    images: StepImages,
    sandbox_root: PathBuf,
    transport: super::stream::Transport,
    max_result_bytes: u64,
}

impl DockerBackend {
    /// A backend for repositories whose OpsChain folder is `folder`; step sandboxes go under
    /// `sandbox_root`. The agent binary is the base image's.
    pub fn new(config: DockerConfig, folder: String, sandbox_root: PathBuf) -> DockerBackend {
        let repo_tar_cache = Some(sandbox_root.join("repo-tars"));
        let settings = ImageSettings {
            docker: Docker { program: config.docker },
            base_image: config.base_image,
            folder,
            grace: config.grace,
            repo_tar_cache,
            registry: config.registry,
            timeouts: config.timeouts,
            registry_records: None,
            secrets_key: None,
        };
        DockerBackend { images: StepImages::new(settings), sandbox_root, transport: config.transport, max_result_bytes: config.max_result_bytes }
    }

    /// This backend with the controller's state: `key` as the key of the build secrets digest
    /// ([`ImageSettings::secrets_key`]) and `registry_records` as where the digests of the images
    /// it pushes are recorded ([`ImageSettings::registry_records`]).
    pub fn with_state(self, key: opschain_runner::step_image::SecretsKey, registry_records: PathBuf) -> DockerBackend {
        let mut settings = self.images.settings().clone();
        settings.secrets_key = Some(key);
        settings.registry_records = Some(registry_records);
        DockerBackend { images: StepImages::new(settings), ..self }
    }

    /// A new private sandbox directory (mode 0700) for one run of `job`.
    fn private_dir(&self, job: &StepJob) -> Result<PathBuf, BackendError> {
        let dir = super::sandbox_dir(&self.sandbox_root, job.change_id, job.step_id);
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(io(&dir))?;
        Ok(dir)
    }

    /// The step image of `job` (built by the one pipeline unless an image of the same inputs
    /// exists; through the registry when one is set), built in a private sandbox directory
    /// (removed after). Returns the reference to run, or the step's output when the build
    /// failed. For the Kubernetes backend, which runs the image elsewhere.
    pub fn image_for(&self, job: &StepJob, sink: &dyn LogSink, cancel: &Arc<AtomicBool>) -> Result<Result<String, StepOutput>, BackendError> {
        let dir = self.private_dir(job)?;
        let _sandbox = RemoveOnDrop(dir.clone());
        Ok(match self.images.build_step_image(job, &dir, sink, cancel)? {
            ImageOutcome::Ready(image) => Ok(image.tag),
            ImageOutcome::Failed { tag, status } => Err(build_failed(&tag, status)),
        })
    }

    /// The largest step result read.
    pub fn max_result_bytes(&self) -> u64 {
        self.max_result_bytes
    }

    /// Whether a Docker engine answers (`docker info`, within the quick calls' limit).
    pub fn engine_runs(&self) -> bool {
        self.images.docker("info", &["info", "--format", "{{.ServerVersion}}"], &AtomicBool::new(false)).is_ok()
    }

    /// Runs `docker run` (`command`) of a step's agent, its output streamed to `sink`, stopped by
    /// `cancel` (killed [`super::KILL_AFTER_GRACE`] after the agent's grace), and failed when the
    /// container prints nothing within the start limit (`what` names it).
    fn streamed(&self, mut command: Command, what: String, sink: &dyn LogSink, cancel: &Arc<AtomicBool>) -> Result<i32, BackendError> {
        let settings = self.images.settings();
        command.stdin(Stdio::null());
        let bound = settings.timeouts.start_bound(what);
        let status = run_streamed(command, settings.docker.program.display().to_string(), sink, cancel, super::agent_kill_after(settings.grace), Some(&bound))?;
        Ok(status_code(status))
    }

    /// Removes the container `name` (`docker rm -f`), within the quick calls' limit. Not stopped
    /// by a cancel: it is what a cancel leaves to do.
    pub(crate) fn remove_container(&self, name: &str) {
        let _ = self.images.docker("rm", &["rm", "-f", name], &AtomicBool::new(false));
    }
}

/// The output of a step whose image did not build.
fn build_failed(tag: &str, status: i32) -> StepOutput {
    StepOutput { exit_status: status, result: None, result_error: Some(format!("the build of the step image {tag} failed with status {status}")) }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackendError + '_ {
    move |source| BackendError::Sandbox { path: path.to_path_buf(), source }
}

impl DockerBackend {
    /// The repository folder `folder` at the step's commit, exported once (`git archive`) into
    /// `<sandbox root>/folders/<commit>/<folder>` and kept there: a commit's files never change,
    /// and a step copies the few files of the folder faster than git and tar export them. An empty
    /// directory when the commit has no such folder. Made in a temporary directory and renamed
    /// into place, so that concurrent steps and controllers see it whole or not at all.
    fn exported_folder(&self, job: &StepJob, folder: &str) -> Result<PathBuf, BackendError> {
        let root = self.sandbox_root.join("folders");
        let cached = root.join(&job.commit);
        // Never through a link: a commit whose folder is a link (`.opschain -> /etc`) would
        // have the host directory it names copied into the container.
        let is_dir = |path: &Path| std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
        if !is_dir(&cached.join(folder)) && !std::fs::symlink_metadata(cached.join(folder)).is_ok_and(|m| m.file_type().is_symlink()) {
            let checkout = |source| BackendError::Checkout { step: job.step_id, source };
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
            let tmp = root.join(format!(".tmp-{}-{}-{nanos}", std::process::id(), job.step_id));
            std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
            let _tmp = RemoveOnDrop(tmp.clone());
            if !repo::export(&job.repo, &job.commit, Some(folder), &tmp).map_err(checkout)? {
                std::fs::create_dir_all(tmp.join(folder)).map_err(io(&tmp))?;
            }
            if std::fs::rename(&tmp, &cached).is_err() && !is_dir(&cached.join(folder)) {
                // Not renamed and no one else's either: a commit seen before with another folder.
                let from = tmp.join(folder);
                if let Err(e) = std::fs::rename(&from, cached.join(folder)) {
                    // Another step may have put it there in the meantime: then it is whole.
                    if !is_dir(&cached.join(folder)) {
                        return Err(io(&from)(e));
                    }
                }
            }
        }
        if !is_dir(&cached.join(folder)) {
            return Err(BackendError::SandboxFile {
                step: job.step_id,
                source: SandboxFileError::NotADirectory { path: PathBuf::from(format!("{}:{folder}", &job.commit[..12.min(job.commit.len())])) },
            });
        }
        Ok(cached.join(folder))
    }
}

impl Backend for DockerBackend {
    fn builds_images(&self) -> bool {
        true
    }

    fn run(&self, job: &StepJob, sink: &dyn LogSink, cancel: &Arc<AtomicBool>) -> Result<StepOutput, BackendError> {
        cancelled_as_output(self.run_step(job, sink, cancel), cancel)
    }
}

/// A step's outcome, with a failure that a cancel caused (an engine call it stopped) given as a
/// cancelled step's output rather than as a backend failure.
pub(crate) fn cancelled_as_output(outcome: Result<StepOutput, BackendError>, cancel: &AtomicBool) -> Result<StepOutput, BackendError> {
    match outcome {
        Err(e) if cancel.load(std::sync::atomic::Ordering::SeqCst) => {
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                why.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            Ok(StepOutput { exit_status: 128 + libc::SIGTERM, result: None, result_error: Some(format!("cancelled: {why}")) })
        }
        other => other,
    }
}

impl DockerBackend {
    /// [`Backend::run`] of this backend.
    fn run_step(&self, job: &StepJob, sink: &dyn LogSink, cancel: &Arc<AtomicBool>) -> Result<StepOutput, BackendError> {
        // Private to this user: the build secret bundle is written in it, the folder inside it is
        // bind-mounted world-writable (see below), and what it holds becomes the step's result.
        // Removed however the step ends.
        let dir = self.private_dir(job)?;
        let _sandbox = RemoveOnDrop(dir.clone());
        let tag = match self.images.build_step_image(job, &dir, sink, cancel)? {
            ImageOutcome::Ready(image) => image.tag,
            ImageOutcome::Failed { tag, status } => return Ok(build_failed(&tag, status)),
        };
        let settings = self.images.settings();
        let folder_name = settings.folder.as_str();
        let name = format!("opschain-step-{}-{}-{}", job.change_id, job.step_id, std::process::id());
        if self.transport == super::stream::Transport::Stream {
            let limits = super::stream::StreamLimits { max_result_bytes: self.max_result_bytes, timeouts: settings.timeouts, grace: settings.grace };
            return super::stream::docker_step(&settings.docker, &tag, &name, folder_name, &job.context, &limits, sink, cancel);
        }

        // The repository folder goes into the container as a bind mount, with the step context in
        // it: the agent reads its inputs and writes its runtime files and step_result.json
        // straight to this side, so one `docker run --rm` is the whole run (no `create`, `cp` or
        // `rm` calls, each ~30 ms of client start-up and more of engine work). The folder is
        // world-writable so that an image with a non-root USER can write there (its parent, the
        // step's sandbox, is not).
        let folder = dir.join(folder_name);
        let cached = self.exported_folder(job, folder_name)?;
        repo::copy_checkout(&cached, &folder).map_err(|source| BackendError::Checkout { step: job.step_id, source })?;
        // The folder is this side of the container: what the commit brought (a link in the
        // context file's place) and what the container makes in it are followed nowhere.
        let refused = |source| BackendError::SandboxFile { step: job.step_id, source };
        let mounted = SandboxDir::open(&dir, folder_name, Some(0o777)).map_err(refused)?;
        mounted.set_mode(0o777).map_err(refused)?;
        mounted.write_new(CONTEXT_FILE, 0o644, |out| job.context.write_to(out)).map_err(refused)?;
        let mount = format!("type=bind,source={},target=/opt/opschain/{folder_name}", folder.display());
        let mut run = settings.docker.command();
        let folder_env = format!("OPSCHAIN_REPO_FOLDER={folder_name}");
        // The agent gets its grace explicitly; `docker run` passes a cancel's SIGTERM on to it, and
        // is killed only `KILL_AFTER_GRACE` after that grace, once the agent wrote its result.
        let grace_secs = super::agent_grace_secs(settings.grace).to_string();
        run.args(["run", "--rm", "--name", &name, "--mount", &mount, "--env", &folder_env, &tag, "step", "--grace-secs", &grace_secs]);
        let status = self.streamed(run, format!("docker run {tag} (container {name})"), sink, cancel);
        // `docker run` exits 125-127 for its own failures too (the container may not have run), and
        // a cancelled run leaves its container behind: only then is the engine asked again.
        let exit_status = match status {
            Ok(code @ 125..=127) | Ok(code @ 128..) => {
                self.remove_container(&name);
                code
            }
            Ok(code) => code,
            Err(e) => {
                self.remove_container(&name);
                return Err(e);
            }
        };
        let (result, result_error) = read_result(&dir, folder_name, self.max_result_bytes);
        Ok(StepOutput { exit_status, result, result_error })
    }
}
