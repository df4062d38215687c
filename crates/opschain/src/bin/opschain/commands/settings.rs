//! How steps run (`change create`, `change retry`, `demo`): the flags, and the library's
//! [`ControllerConfig`] made from them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use opschain::backend::docker::DockerConfig;
use opschain::backend::engine::EngineTimeouts;
use opschain::change::ControllerConfig;
use opschain::output::View;
use opschain::scheduler::{default_workers, SchedulerConfig};
use opschain::status::BackendKind;

use super::Failure;

/// How steps run: shared by `change create`, `change retry` and `demo`.
#[derive(Debug, Args)]
pub struct RunSettings {
    /// How many steps run at once (parallel children beyond it wait). Default: 8 per CPU (steps
    /// mostly wait on I/O, see `scheduler::default_workers`).
    #[arg(long, env = "OPSCHAIN_WORKERS", value_name = "N")]
    pub workers: Option<usize>,
    /// The agent binary. Default: `opschain-runner` next to this binary.
    #[arg(long, env = "OPSCHAIN_RUNNER_BIN", value_name = "PATH")]
    pub runner_bin: Option<PathBuf>,
    /// Seconds between SIGTERM and SIGKILL when a step is cancelled.
    #[arg(long, env = "OPSCHAIN_GRACE_SECS", default_value_t = 10, value_name = "SECS")]
    pub grace_secs: u64,
    /// The largest step_result.json (or result frame) read from a step, in bytes: a larger one
    /// fails the step. Default: 64 MiB, the agent's own input limit.
    #[arg(long, env = "OPSCHAIN_MAX_RESULT_BYTES", default_value_t = opschain::backend::sandbox::DEFAULT_MAX_RESULT_BYTES, value_name = "BYTES")]
    pub max_result_bytes: u64,
    /// Keep each step's sandbox (under <state dir>/sandboxes) for debugging.
    #[arg(long, env = "OPSCHAIN_KEEP_SANDBOXES")]
    pub keep_sandboxes: bool,
    /// The docker CLI of the Docker backend (Debian's client builds with BuildKit).
    #[arg(long, env = "OPSCHAIN_DOCKER_BIN", default_value = "/usr/bin/docker", value_name = "PATH")]
    pub docker_bin: PathBuf,
    /// The base runner image of the Docker backend (the OPSCHAIN_BASE_RUNNER build arg). It must
    /// exist on the Docker engine: build it from runner-image/ (see runner-image/README.md).
    #[arg(long, env = "OPSCHAIN_DOCKER_BASE_IMAGE", default_value = opschain_runner::step_image::DEFAULT_BASE_RUNNER, value_name = "IMAGE")]
    pub docker_base_image: String,
    /// Seconds a quick call to the Docker engine (image inspect, tag, rm -f, info) may take
    /// before the step fails saying which call did not answer.
    #[arg(long, env = "OPSCHAIN_DOCKER_TIMEOUT_SECS", default_value_t = 30, value_name = "SECS")]
    pub docker_timeout_secs: u64,
    /// Seconds `docker run` may take to start a step's container (until its first line of
    /// output). A started container is bounded by its action's time limits and by cancel.
    #[arg(long, env = "OPSCHAIN_DOCKER_START_SECS", default_value_t = 300, value_name = "SECS")]
    pub docker_start_secs: u64,
    /// Seconds a push or pull of a step image (--registry) may take.
    #[arg(long, env = "OPSCHAIN_DOCKER_TRANSFER_TIMEOUT_SECS", default_value_t = 1800, value_name = "SECS")]
    pub docker_transfer_timeout_secs: u64,
    /// Seconds a step image's build may take.
    #[arg(long, env = "OPSCHAIN_DOCKER_BUILD_TIMEOUT_SECS", default_value_t = 3600, value_name = "SECS")]
    pub docker_build_timeout_secs: u64,
    /// The OpsChain folder of the repository: .opschain, or .mintpress for MintPress (its
    /// <folder>/Dockerfile, actions.toml and properties; the step image's env context is
    /// step_context.json.zip for .mintpress). A change keeps the folder it was created with:
    /// its retry runs with that one, whatever this says.
    #[arg(long, env = "OPSCHAIN_REPO_FOLDER", default_value = ".opschain", value_name = "NAME")]
    pub folder: String,
    /// How the Docker backend passes the step context in and gets step_result.json back:
    /// `bind-mount` (the repository folder mounted from this host) or `stream` (the context on the
    /// container's stdin, the result framed in its output: nothing shared with the host; see
    /// docs/transport.md). The Kubernetes backend always streams.
    #[arg(long, env = "OPSCHAIN_TRANSPORT", default_value = "bind-mount", value_parser = ["bind-mount", "stream"], value_name = "NAME")]
    pub transport: String,
    /// A registry (HOST:PORT) to push each step image built to; steps run the registry's copy
    /// and an image the registry has is pulled, not rebuilt. Default: none (local images only).
    #[arg(long, env = "OPSCHAIN_REGISTRY", value_name = "HOST:PORT")]
    pub registry: Option<String>,
    /// The Kubernetes backend's settings.
    #[cfg(feature = "kubernetes")]
    #[command(flatten)]
    pub kube: KubeSettings,
}

/// The backends this build offers to `--backend`, read as their [`BackendKind`].
pub fn backends() -> impl clap::builder::TypedValueParser<Value = BackendKind> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(BackendKind::AVAILABLE.iter().map(|kind| kind.as_str()))
        .map(|name| BackendKind::from_name(&name).expect("clap offers only the kinds' names"))
}

/// The Kubernetes backend's settings (`--backend kubernetes`).
#[cfg(feature = "kubernetes")]
#[derive(Debug, Args)]
pub struct KubeSettings {
    /// The namespace of the steps' Jobs and Secrets.
    #[arg(long, env = "OPSCHAIN_KUBE_NAMESPACE", default_value = "default", value_name = "NAME")]
    pub kube_namespace: String,
    /// A Secret (of type kubernetes.io/dockerconfigjson) the pods pull the step images with.
    #[arg(long, env = "OPSCHAIN_KUBE_IMAGE_PULL_SECRET", value_name = "NAME")]
    pub kube_image_pull_secret: Option<String>,
    /// The step container's resource requests, e.g. cpu=500m,memory=256Mi. Default: none.
    #[arg(long, env = "OPSCHAIN_KUBE_REQUESTS", default_value = "", value_name = "K=V,...")]
    pub kube_requests: String,
    /// The step container's resource limits, e.g. memory=1Gi. Default: none.
    #[arg(long, env = "OPSCHAIN_KUBE_LIMITS", default_value = "", value_name = "K=V,...")]
    pub kube_limits: String,
    /// The pods' node selector, e.g. pool=steps. Default: none.
    #[arg(long, env = "OPSCHAIN_KUBE_NODE_SELECTOR", default_value = "", value_name = "K=V,...")]
    pub kube_node_selector: String,
    /// Seconds a finished Job and its Secret are kept (for kubectl logs) before the cluster
    /// removes them.
    #[arg(long, env = "OPSCHAIN_KUBE_TTL_SECS", default_value_t = 600, value_name = "SECS")]
    pub kube_ttl_secs: i32,
    /// Seconds a pod may take to start (scheduling, image pull) before the step fails; also
    /// added to the action's timeouts in the Job's activeDeadlineSeconds.
    #[arg(long, env = "OPSCHAIN_KUBE_START_SECS", default_value_t = 300, value_name = "SECS")]
    pub kube_start_secs: u64,
}

#[cfg(feature = "kubernetes")]
fn kube_config(s: &RunSettings) -> Result<opschain::backend::kubernetes::KubernetesConfig> {
    use opschain::backend::kubernetes::{parse_map, KubernetesConfig};
    let k = &s.kube;
    Ok(KubernetesConfig {
        namespace: k.kube_namespace.clone(),
        image_pull_secret: k.kube_image_pull_secret.clone(),
        requests: parse_map("--kube-requests", &k.kube_requests)?,
        limits: parse_map("--kube-limits", &k.kube_limits)?,
        node_selector: parse_map("--kube-node-selector", &k.kube_node_selector)?,
        ttl_after_finished: k.kube_ttl_secs,
        start_allowance: Duration::from_secs(k.kube_start_secs),
        grace: Duration::from_secs(s.grace_secs),
        folder: checked_folder(&s.folder)?,
    })
}

/// The library's configuration of a run with settings `s`, its state in `state_dir`. The agent
/// is built first when this binary runs from its cargo target directory without one beside it.
pub fn config(state_dir: &Path, s: &RunSettings, view: View) -> Result<ControllerConfig> {
    let agent = match &s.runner_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("cannot find this binary's path")?.with_file_name("opschain-runner"),
    };
    if !agent.is_file() && s.runner_bin.is_none() {
        build_agent(&agent)?;
    }
    if !agent.is_file() {
        bail!("the agent {} does not exist: build it (cargo build --bin opschain-runner) or set OPSCHAIN_RUNNER_BIN", agent.display());
    }
    let workers = s.workers.unwrap_or_else(default_workers);
    Ok(ControllerConfig {
        state_dir: state_dir.to_path_buf(),
        agent,
        scheduler: SchedulerConfig { workers, cancel_poll: Duration::from_millis(250), user: std::env::var("USER").unwrap_or_else(|_| "opschain".into()), view },
        grace: Duration::from_secs(s.grace_secs),
        keep_sandboxes: s.keep_sandboxes,
        max_result_bytes: s.max_result_bytes,
        queue_poll: Duration::from_millis(500),
        docker: DockerConfig {
            docker: s.docker_bin.clone(),
            base_image: s.docker_base_image.clone(),
            grace: Duration::from_secs(s.grace_secs),
            transport: s.transport.parse().map_err(anyhow::Error::msg)?,
            registry: s.registry.as_deref().map(str::parse).transpose()?,
            max_result_bytes: s.max_result_bytes,
            timeouts: EngineTimeouts {
                call: Duration::from_secs(s.docker_timeout_secs),
                start: Duration::from_secs(s.docker_start_secs),
                transfer: Duration::from_secs(s.docker_transfer_timeout_secs),
                build: Duration::from_secs(s.docker_build_timeout_secs),
            },
        },
        #[cfg(feature = "kubernetes")]
        kubernetes: kube_config(s)?,
        folder: checked_folder(&s.folder)?,
    })
}

/// The OpsChain folder, checked to be one plain directory name (it is joined to the repository
/// and to `/opt/opschain` in the container).
pub fn checked_folder(folder: &str) -> Result<String> {
    let plain = !folder.is_empty() && folder != "." && folder != ".." && !folder.contains(['/', '\0', ',', '=']);
    if !plain {
        return Err(Failure::Usage(format!("--folder {folder:?}: expected one directory name, like .opschain or .mintpress")).into());
    }
    Ok(folder.to_string())
}

/// `cargo run --bin opschain` builds only this binary: when it runs from its cargo target
/// directory and the agent is missing beside it, build the agent with the same profile (so that
/// `cargo run --release --bin opschain -- demo` works from a fresh clone).
fn build_agent(agent: &Path) -> Result<()> {
    let manifest = Path::new(env!("OPSCHAIN_WORKSPACE_DIR")).join("Cargo.toml");
    let profile_dir = agent.parent().and_then(Path::file_name).and_then(|n| n.to_str()).unwrap_or_default();
    if !manifest.is_file() || !matches!(profile_dir, "debug" | "release") {
        return Ok(());
    }
    eprintln!("==> the agent {} is missing: building it (cargo build --bin opschain-runner)", agent.display());
    let started = std::time::Instant::now();
    let mut cargo = std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo.args(["build", "--bin", "opschain-runner", "--manifest-path"]).arg(&manifest);
    if profile_dir == "release" {
        cargo.arg("--release");
    }
    let status = cargo.status().context("cannot run cargo to build the agent")?;
    if !status.success() {
        bail!("building the agent failed ({status})");
    }
    eprintln!("==> agent built in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}
