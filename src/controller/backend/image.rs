//! The step image pipeline of the controller's image backends (Docker; any backend that runs a
//! step in an image can call it): [`StepImages::build_step_image`] works out a step's image with
//! [`build::plan`], reuses an image of the same key, and otherwise writes the build context with
//! [`build::write_planned`] (the very code `opschain-runner build-context` runs) and builds it with
//! BuildKit, its output streamed into the step's log as the agent's is, between the build phase's
//! start and finish lines.
//!
//! The image is tagged `opschain-step:<key>`, the key naming every input that can change what the
//! build gives: the commit, the Dockerfile, the base runner image (by id) and the env context (the
//! env properties and the project and environment context values). Two steps of a change, or two
//! changes with the same env properties, share one image; a changed env property gives a new key,
//! and the build reruns only the layers from the first line that reads the context (the
//! `OPSCHAIN_CONTEXT_DIGEST` build arg). Build secrets are not in the key: a rotated secret reaches
//! a build only when something else reruns its `RUN` lines (the README says how to force it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{run_streamed, status_code, BackendError, LogSink, StepJob};
use crate::build::{self, BuildContextSpec, SecretSource};
use crate::controller::registry;

/// How step images are built.
#[derive(Debug, Clone)]
pub struct ImageSettings {
    /// The docker CLI (a client that builds with BuildKit: Debian's `/usr/bin/docker`).
    pub docker: PathBuf,
    /// The base runner image (`OPSCHAIN_BASE_RUNNER`); it must exist locally.
    pub base_image: String,
    /// The OpsChain folder of the repositories (`.opschain`, or `.mintpress`).
    pub folder: String,
    /// TERM-to-KILL grace of a cancelled build.
    pub grace: Duration,
    /// The registry the images go through (default: none): an image of the same key there is
    /// pulled rather than built, and a built (or locally reused) one is pushed there; the
    /// reference to run is then the registry's ([`crate::controller::registry`]).
    pub registry: Option<crate::controller::registry::Registry>,
}

/// A step image ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Its tag, `opschain-step:<key>`.
    pub tag: String,
    /// Its key ([`build::ImagePlan::key`]).
    pub key: String,
    /// Whether this call built it (false: an image of the same key was reused).
    pub built: bool,
}

/// What [`StepImages::build_step_image`] gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageOutcome {
    /// The image exists: built now or reused.
    Ready(ImageRef),
    /// `docker build` failed (or was cancelled) with this exit status; its output is in the log.
    Failed {
        /// The tag it was building.
        tag: String,
        /// The exit status of `docker build` (128+N for a signal).
        status: i32,
    },
}

/// Builds and reuses step images; shared by the steps of a change (it serialises the builds of
/// one key, so that parallel steps wait for one build rather than race several).
#[derive(Debug)]
pub struct StepImages {
    settings: ImageSettings,
    /// The base image's id, looked up once.
    base_id: Mutex<Option<String>>,
    /// One lock per image key being built or checked.
    keys: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

/// The name of the build context directory inside a step's work directory.
const CONTEXT_DIR: &str = "context";

/// The name of the build secret bundle inside a step's work directory (outside the context).
const SECRETS_FILE: &str = "build-secrets.json";

impl StepImages {
    /// A builder with `settings`.
    pub fn new(settings: ImageSettings) -> StepImages {
        StepImages { settings, base_id: Mutex::new(None), keys: Mutex::new(HashMap::new()) }
    }

    /// The settings.
    pub fn settings(&self) -> &ImageSettings {
        &self.settings
    }

    /// Runs `docker ARGS` and returns its trimmed stdout; a failure is [`BackendError::Docker`].
    pub fn docker(&self, op: &'static str, args: &[&str]) -> Result<String, BackendError> {
        let out = Command::new(&self.settings.docker)
            .args(args)
            .env("DOCKER_BUILDKIT", "1")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| BackendError::Spawn { program: self.settings.docker.display().to_string(), source })?;
        if !out.status.success() {
            return Err(BackendError::Docker { op, stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The base image's id (looked up once per builder: a change runs against one base image).
    fn base_id(&self) -> Result<String, BackendError> {
        let mut memo = self.base_id.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = memo.as_ref() {
            return Ok(id.clone());
        }
        let id = self.docker("inspect the base image", &["image", "inspect", "--format", "{{.Id}}", &self.settings.base_image])?;
        *memo = Some(id.clone());
        Ok(id)
    }

    /// The build spec of `job`'s image, its context written under `work`.
    fn spec(&self, job: &StepJob, work: &Path, base_id: String) -> BuildContextSpec {
        let mut spec = BuildContextSpec::new(&job.repo, work.join(CONTEXT_DIR));
        spec.folder = self.settings.folder.clone();
        spec.git_rev = job.git_rev.clone();
        spec.commit = Some(job.commit.clone());
        spec.context = job.context.as_object().cloned().unwrap_or_default();
        spec.base_runner = self.settings.base_image.clone();
        spec.base_runner_id = Some(base_id);
        spec.secrets = SecretSource::Sets(job.build_secret_sets.clone());
        spec.secrets_file = Some(work.join(SECRETS_FILE));
        spec
    }

    /// Gives the step image of `job`: an existing image of the same key, or one built now from a
    /// build context written under `work` (a private directory of the step; the context and the
    /// secret bundle are removed once the build ends). Logs the build phase's start and finish,
    /// with its duration, and streams `docker build`'s output to `sink`; `cancel` stops the build.
    pub fn build_step_image(&self, job: &StepJob, work: &Path, sink: &dyn LogSink, cancel: &AtomicBool) -> Result<ImageOutcome, BackendError> {
        let started = Instant::now();
        let short = &job.commit[..job.commit.len().min(12)];
        sink.line("stderr", &format!("opschain: phase build started: the step image of commit {short} ({}), FROM {}", self.settings.folder, self.settings.base_image));
        let spec = self.spec(job, work, self.base_id()?);
        let image_err = |source| BackendError::Image { step: job.step_id, source };
        let plan = build::plan(&spec).map_err(image_err)?;
        let tag = plan.tag();
        let lock = Arc::clone(self.keys.lock().unwrap_or_else(|e| e.into_inner()).entry(plan.key.clone()).or_default());
        let _building = lock.lock().unwrap_or_else(|e| e.into_inner());
        let finished = |what: &str| sink.line("stderr", &format!("opschain: phase build finished in {:.2}s: {what}", started.elapsed().as_secs_f64()));
        let registry_err = |source| BackendError::Registry { step: job.step_id, source };
        if let Some(registry) = &self.settings.registry {
            let remote = registry.reference(&tag);
            if registry::fetch(&self.settings.docker, &remote, sink).map_err(registry_err)? {
                finished(&format!("image {remote} from the registry (same commit, Dockerfile, base image and env properties)"));
                return Ok(ImageOutcome::Ready(ImageRef { tag: remote, key: plan.key, built: false }));
            }
        }
        // With a registry, the image goes there before any step runs it: a step may run on a
        // machine that has only the registry.
        let publish = |tag: String| match &self.settings.registry {
            Some(registry) => registry::publish(&self.settings.docker, &tag, registry, sink).map_err(registry_err),
            None => Ok(tag),
        };
        if self.docker("inspect the step image", &["image", "inspect", "--format", "{{.Id}}", &tag]).is_ok() {
            let tag = publish(tag)?;
            finished(&format!("reused image {tag} (same commit, Dockerfile, base image and env properties)"));
            return Ok(ImageOutcome::Ready(ImageRef { tag, key: plan.key, built: false }));
        }
        let written = build::write_planned(&spec, &plan);
        let outcome = written.map_err(image_err).and_then(|context| {
            let sets = if context.secret_sets.is_empty() { "none".to_string() } else { context.secret_sets.join(", ") };
            let dockerfile = if context.custom_dockerfile { format!("{}/Dockerfile", self.settings.folder) } else { "the default Dockerfile".into() };
            sink.line("stderr", &format!("opschain: building image {tag} with {dockerfile}; build secret sets: {sets}"));
            let mut command = Command::new(&self.settings.docker);
            command.env("DOCKER_BUILDKIT", "1").stdin(Stdio::null()).args(context.docker_build_args(&tag));
            run_streamed(command, self.settings.docker.display().to_string(), sink, cancel, self.settings.grace).map(status_code)
        });
        // The secrets and the context go as soon as the build ends, however it ended.
        let _ = std::fs::remove_file(work.join(SECRETS_FILE));
        let _ = std::fs::remove_dir_all(work.join(CONTEXT_DIR));
        match outcome? {
            0 => {
                let tag = publish(tag)?;
                finished(&format!("built image {tag}"));
                Ok(ImageOutcome::Ready(ImageRef { tag, key: plan.key, built: true }))
            }
            status => {
                sink.line("stderr", &format!("opschain: phase build failed in {:.2}s: docker build exited with status {status}", started.elapsed().as_secs_f64()));
                Ok(ImageOutcome::Failed { tag, status })
            }
        }
    }
}
