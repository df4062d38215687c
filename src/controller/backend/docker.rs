//! The Docker backend: per step, a container of the step image running the agent (the image's
//! ENTRYPOINT), with the repository folder bind-mounted at `/opt/opschain/.opschain` and the step
//! context written into it, so that the agent's step_result.json lands on this side; one
//! `docker run --rm` per step.
//!
//! The step image is built from the change's commit (exported with `git archive`) with
//! `<repo>/.opschain/Dockerfile` when the repository has one, otherwise with the default Dockerfile
//! below, `FROM` the base runner image (`--docker-base-image`, default `opschain-runner:latest`;
//! nothing can be pulled, so it must exist locally: build it from the project's runner image).
//! It is tagged by commit, base image and controller version ([`step_image_tag`]) and built once:
//! the other steps of the change, and later changes of the same commit, reuse it. `docker build`
//! runs with BuildKit (`DOCKER_BUILDKIT=1`) and its layer cache; the change's secret set is passed
//! as build secrets (`--secret id=NAME,env=NAME`, reachable in `RUN --mount=type=secret,id=NAME`),
//! never to the action's environment. Build args: `OPSCHAIN_BASE_IMAGE`, `GIT_SHA`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::{read_result, run_streamed, status_code, Backend, BackendError, LogSink, StepJob, StepOutput};
use crate::controller::repo;

/// The Dockerfile used when the repository has none.
pub const DEFAULT_DOCKERFILE: &str = "\
ARG OPSCHAIN_BASE_IMAGE\n\
FROM ${OPSCHAIN_BASE_IMAGE}\n\
COPY --chown=10001:10001 . /opt/opschain\n\
WORKDIR /opt/opschain\n";

/// How the Docker backend runs.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// The docker CLI (default `/usr/bin/docker`, Debian's client, which builds with BuildKit).
    pub docker: PathBuf,
    /// The base runner image of the default Dockerfile (default `opschain-runner:latest`).
    pub base_image: String,
    /// TERM-to-KILL grace when a step is cancelled (default 10 s).
    pub grace: std::time::Duration,
    /// How the step context goes in and the result comes out (default: a bind mount).
    pub transport: super::stream::Transport,
    /// The registry step images go through (default: none, the engine's local images).
    pub registry: Option<crate::controller::registry::Registry>,
}

/// The Docker backend.
#[derive(Debug, Clone)]
pub struct DockerBackend {
    config: DockerConfig,
    sandbox_root: PathBuf,
}

impl DockerBackend {
    /// A backend; build contexts go under `sandbox_root`. The agent binary is the base image's.
    pub fn new(config: DockerConfig, sandbox_root: PathBuf, _agent: PathBuf) -> DockerBackend {
        DockerBackend { config, sandbox_root }
    }

    fn docker(&self, op: &'static str, args: &[&str]) -> Result<String, BackendError> {
        let out = Command::new(&self.config.docker)
            .args(args)
            .env("DOCKER_BUILDKIT", "1")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| BackendError::Spawn { program: self.config.docker.display().to_string(), source })?;
        if !out.status.success() {
            return Err(BackendError::Docker { op, stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Whether a Docker engine answers (`docker info`).
    pub fn engine_runs(&self) -> bool {
        self.docker("info", &["info", "--format", "{{.ServerVersion}}"]).is_ok()
    }

    fn streamed(&self, mut command: Command, sink: &dyn LogSink, cancel: &Arc<AtomicBool>) -> Result<i32, BackendError> {
        let program = self.config.docker.display().to_string();
        command.stdin(Stdio::null());
        let status = run_streamed(command, program, sink, cancel, self.config.grace)?;
        Ok(status_code(status))
    }

    /// The step image of `job`, built in `dir` (a private directory of the step) unless an
    /// image of the same inputs exists (locally, or in the registry: then pulled), and pushed
    /// to the registry when one is set. Returns the reference to run, or the step's output when
    /// the build failed.
    fn step_image(&self, job: &StepJob, dir: &Path, sink: &dyn LogSink, cancel: &Arc<AtomicBool>) -> Result<Result<String, StepOutput>, BackendError> {
        let checkout = |path: Option<&str>, dest: &Path| {
            repo::export(&job.repo, &job.commit, path, dest).map_err(|source| BackendError::Checkout { step: job.step_id, source })
        };
        let base_id = self.docker("inspect the base image", &["image", "inspect", "--format", "{{.Id}}", &self.config.base_image])?;
        let tag = step_image_tag(&job.commit, &base_id);
        let registry_error = |source| BackendError::Registry { step: job.step_id, source };
        let remote = self.config.registry.as_ref().map(|r| r.reference(&tag));
        let pulled = match &remote {
            Some(remote) => crate::controller::registry::fetch(&self.config.docker, remote, sink).map_err(registry_error)?,
            None => false,
        };
        if pulled {
            sink.line("stderr", &format!("image {} is in the registry: not rebuilding", remote.as_deref().unwrap_or_default()));
        } else if self.docker("inspect", &["image", "inspect", "--format", "{{.Id}}", &tag]).is_ok() {
            sink.line("stderr", &format!("image {tag} is already built from this commit and base image: not rebuilding"));
        } else {
            let context_dir = dir.join("context");
            if !checkout(None, &context_dir)? {
                let source = repo::RepoError::Git { args: format!("archive {}", job.commit), stderr: "no such commit".into() };
                return Err(BackendError::Checkout { step: job.step_id, source });
            }
            let custom = context_dir.join(".opschain/Dockerfile");
            let dockerfile = if custom.is_file() {
                custom
            } else {
                let path = dir.join("Dockerfile");
                std::fs::write(&path, DEFAULT_DOCKERFILE).map_err(io(&path))?;
                path
            };
            sink.line("stderr", &format!("building image {tag}"));
            let mut build = Command::new(&self.config.docker);
            build.env("DOCKER_BUILDKIT", "1").args(["build", "--progress", "plain", "-t", &tag, "-f"]).arg(&dockerfile);
            build.args(["--build-arg", &format!("OPSCHAIN_BASE_IMAGE={}", self.config.base_image), "--build-arg", &format!("GIT_SHA={}", job.commit)]);
            for (name, value) in &job.build_secrets {
                build.args(["--secret", &format!("id={name},env={name}")]);
                build.env(name, value.as_str().unwrap_or_default());
            }
            build.arg(&context_dir);
            let built = self.streamed(build, sink, cancel)?;
            let _ = std::fs::remove_dir_all(&context_dir);
            if built != 0 {
                return Ok(Err(StepOutput { exit_status: built, result: None, result_error: Some(format!("docker build failed with status {built}")) }));
            }
        }

        Ok(Ok(match (&self.config.registry, pulled) {
            (Some(registry), false) => crate::controller::registry::publish(&self.config.docker, &tag, registry, sink).map_err(registry_error)?,
            (_, true) => remote.unwrap_or(tag),
            (None, false) => tag,
        }))
    }

    /// The step image of `job` (built unless an image of the same inputs exists; pushed to the
    /// registry when one is set), built in a sandbox directory of its own (removed after): for a backend that runs the image elsewhere (the
    /// Kubernetes backend, through the registry).
    pub fn image_for(&self, job: &StepJob, sink: &dyn LogSink, cancel: &Arc<AtomicBool>) -> Result<Result<String, StepOutput>, BackendError> {
        let dir = self.private_dir(job)?;
        let _sandbox = RemoveOnDrop(dir.clone());
        self.step_image(job, &dir, sink, cancel)
    }

    /// A new private sandbox directory (mode 0700) for one run of `job`.
    fn private_dir(&self, job: &StepJob) -> Result<PathBuf, BackendError> {
        let dir = super::sandbox_dir(&self.sandbox_root, job.change_id, job.step_id);
        let parent = dir.parent().unwrap_or(&dir);
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(io(&dir))?;
        Ok(dir)
    }
}


/// The step image's tag: one image per commit, base image and controller version. The build's
/// inputs are the commit's tree (its Dockerfile included), the default Dockerfile (fixed per
/// version), the base image and the build args (`GIT_SHA`, the base image's name): an image with
/// this tag is what building again would give, so it is reused without calling `docker build`
/// (whose client and BuildKit session cost ~0.4 s even when every layer is cached). Build secrets
/// are not in the tag, as BuildKit keeps them out of its own cache keys: a warm BuildKit cache
/// reuses `RUN --mount=type=secret` layers across secret changes in just the same way.
pub fn step_image_tag(commit: &str, base_id: &str) -> String {
    let base = base_id.trim_start_matches("sha256:");
    format!("opschain-step:{commit}-{}-{}", &base[..base.len().min(12)], env!("CARGO_PKG_VERSION"))
}

/// Removes a step's sandbox directory when the step ends, on every path out of it.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackendError + '_ {
    move |source| BackendError::Sandbox { path: path.to_path_buf(), source }
}

impl Backend for DockerBackend {
    fn run(&self, job: &StepJob, sink: &dyn LogSink, cancel: &Arc<AtomicBool>) -> Result<StepOutput, BackendError> {
        // Private to this user: the folder inside it is bind-mounted world-writable (see below),
        // and what it holds becomes the step's result. Removed however the step ends.
        let dir = self.private_dir(job)?;
        let _sandbox = RemoveOnDrop(dir.clone());
        let tag = match self.step_image(job, &dir, sink, cancel)? {
            Ok(tag) => tag,
            Err(failed) => return Ok(failed),
        };
        let checkout = |path: Option<&str>, dest: &Path| {
            repo::export(&job.repo, &job.commit, path, dest).map_err(|source| BackendError::Checkout { step: job.step_id, source })
        };
        let name = format!("opschain-step-{}-{}-{}", job.change_id, job.step_id, std::process::id());
        if self.config.transport == super::stream::Transport::Stream {
            return super::stream::docker_step(&self.config.docker, &tag, &name, &job.context, sink, cancel, self.config.grace);
        }
        // The repository folder goes into the container as a bind mount, with the step context in
        // it: the agent reads its inputs and writes its runtime files and step_result.json
        // straight to this side, so one `docker run --rm` is the whole run (no `create`, `cp` or
        // `rm` calls, each ~30 ms of client start-up and more of engine work). The folder is
        // world-writable so that an image with a non-root USER can write there (its parent, the
        // step's sandbox, is not).
        let folder = dir.join(".opschain");
        if !checkout(Some(".opschain"), &dir)? {
            std::fs::create_dir_all(&folder).map_err(io(&folder))?;
        }
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o777)).map_err(io(&folder))?;
        }
        let step_context = folder.join("step_context.json");
        std::fs::write(&step_context, serde_json::to_vec_pretty(&job.context).expect("a JSON value serialises")).map_err(io(&step_context))?;
        let mount = format!("type=bind,source={},target=/opt/opschain/.opschain", folder.display());
        let mut run = Command::new(&self.config.docker);
        run.args(["run", "--rm", "--name", &name, "--mount", &mount, &tag, "step"]);
        let status = self.streamed(run, sink, cancel);
        // `docker run` exits 125-127 for its own failures too (the container may not have run), and
        // a cancelled run leaves its container behind: only then is the engine asked again.
        let exit_status = match status {
            Ok(code @ 125..=127) | Ok(code @ 128..) => {
                let _ = self.docker("rm", &["rm", "-f", &name]);
                code
            }
            Ok(code) => code,
            Err(e) => {
                let _ = self.docker("rm", &["rm", "-f", &name]);
                return Err(e);
            }
        };
        let (result, result_error) = read_result(&folder.join("step_result.json"));
        Ok(StepOutput { exit_status, result, result_error })
    }
}
