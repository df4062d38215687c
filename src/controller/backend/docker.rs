//! The Docker backend: per step, an image built from a fresh checkout of the change's commit, then
//! a container running the agent (the image's ENTRYPOINT) with the step context bind-mounted at
//! `/opt/opschain/.opschain/step_context.json`; the result is copied out and the container removed.
//!
//! The image comes from `<repo>/.opschain/Dockerfile` when the repository has one, otherwise from
//! the default Dockerfile below, `FROM` the base runner image (`--docker-base-image`, default
//! `opschain-runner:latest`; nothing can be pulled, so it must exist locally: build it from the
//! project's runner image). `docker build` runs with BuildKit (`DOCKER_BUILDKIT=1`) and relies on
//! its layer cache; the change's secret set is passed as build secrets (`--secret id=NAME,env=NAME`,
//! reachable in `RUN --mount=type=secret,id=NAME`), never to the action's environment.
//! Build args: `OPSCHAIN_BASE_IMAGE`, `GIT_SHA`.

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
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackendError + '_ {
    move |source| BackendError::Sandbox { path: path.to_path_buf(), source }
}

impl Backend for DockerBackend {
    fn run(&self, job: &StepJob, sink: &dyn LogSink, cancel: &Arc<AtomicBool>) -> Result<StepOutput, BackendError> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let dir = self.sandbox_root.join(format!("change-{}", job.change_id)).join(format!("step-{}-{}-{nanos}", job.step_id, std::process::id()));
        let context_dir = dir.join("context");
        repo::checkout(&job.repo, &job.commit, &context_dir).map_err(|source| BackendError::Checkout { step: job.step_id, source })?;
        let git_dir = context_dir.join(".git");
        std::fs::remove_dir_all(&git_dir).map_err(io(&git_dir))?;
        let custom = context_dir.join(".opschain/Dockerfile");
        let dockerfile = if custom.is_file() {
            custom
        } else {
            let path = dir.join("Dockerfile");
            std::fs::write(&path, DEFAULT_DOCKERFILE).map_err(io(&path))?;
            path
        };
        let step_context = dir.join("step_context.json");
        std::fs::write(&step_context, serde_json::to_vec_pretty(&job.context).expect("a JSON value serialises")).map_err(io(&step_context))?;

        let tag = format!("opschain-step:{}-{}", job.change_id, job.step_id);
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
        if built != 0 {
            let _ = std::fs::remove_dir_all(&dir);
            return Ok(StepOutput { exit_status: built, result: None, result_error: Some(format!("docker build failed with status {built}")) });
        }
        let name = format!("opschain-step-{}-{}-{}", job.change_id, job.step_id, std::process::id());
        let _ = self.docker("rm", &["rm", "-f", &name]);
        let mount = format!("type=bind,source={},target=/opt/opschain/.opschain/step_context.json,readonly", step_context.display());
        self.docker("create", &["create", "--name", &name, "--mount", &mount, &tag, "step"])?;
        let mut start = Command::new(&self.config.docker);
        start.args(["start", "--attach", &name]);
        let status = self.streamed(start, sink, cancel);
        let result_path = dir.join("step_result.json");
        let copied = self.docker("cp", &["cp", &format!("{name}:/opt/opschain/.opschain/step_result.json"), &result_path.to_string_lossy()]);
        let exit = self.docker("inspect", &["inspect", "--format", "{{.State.ExitCode}}", &name]);
        let _ = self.docker("rm", &["rm", "-f", &name]);
        status?;
        let exit_status = exit.ok().and_then(|s| s.parse().ok()).unwrap_or(70);
        let (result, mut result_error) = read_result(&result_path);
        if let Err(e) = copied {
            result_error = Some(e.to_string());
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(StepOutput { exit_status, result, result_error })
    }
}
