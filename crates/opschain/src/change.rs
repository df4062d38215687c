//! A change's life: create it at a commit, wait for its environment, run it, retry it, cancel it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use opschain_runner::exec::{self, ExecError};
use opschain_runner::json::{JsonError, SizeLimit};

use super::backend::docker::{DockerBackend, DockerConfig};
use super::backend::process::{ProcessBackend, ProcessConfig};
use super::backend::Backend;
use super::repo::{self, RepoError};
use super::scheduler::{Scheduler, SchedulerConfig};
use super::status::{BackendKind, ChangeStatus};
use super::store::{pid_alive, Claim, NewChangeRow, Store, StoreError};

/// Why a change operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Preparing the repository or resolving the revision failed.
    #[error("cannot use {} at {rev}", repo.display())]
    Repo {
        /// The repository.
        repo: PathBuf,
        /// The revision.
        rev: String,
        /// The cause.
        #[source]
        source: RepoError,
    },
    /// The change's secret set does not exist.
    #[error("secret set {0:?} does not exist: create it with `opschain secrets set {0} --file FILE`")]
    NoSecretSet(String),
    /// A change that succeeded has nothing to retry.
    #[error("change {0} succeeded: nothing to retry")]
    NothingToRetry(i64),
    /// Another live controller runs the change.
    #[error("change {id} is being run by controller process {pid}: cancel it first or wait")]
    Running {
        /// The change.
        id: i64,
        /// The controller's process id.
        pid: i64,
    },
    /// The backend is not one this build can run.
    #[error("unknown backend {:?} (known: {})", .0.as_str(), BackendKind::available_names())]
    Backend(BackendKind),
    /// The Kubernetes backend cannot be set up.
    #[cfg(feature = "kubernetes")]
    #[error("cannot set up the Kubernetes backend")]
    Kubernetes(#[source] super::backend::kubernetes::KubernetesError),
}

/// What `change run` needs to create a change.
#[derive(Debug, Clone)]
pub struct NewChange {
    /// The repository directory (a git work tree, or any directory to snapshot).
    pub repo: PathBuf,
    /// The project code.
    pub project: String,
    /// The environment code.
    pub environment: String,
    /// The root step's action.
    pub action: String,
    /// The git revision (default `HEAD`).
    pub git_rev: String,
    /// Where its steps run.
    pub backend: BackendKind,
    /// The secret set the steps get.
    pub secret_set: Option<String>,
}

/// How changes run (configuration, not state).
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// The state directory (database, repository snapshots, sandboxes).
    pub state_dir: PathBuf,
    /// The agent binary.
    pub agent: PathBuf,
    /// The scheduler's settings.
    pub scheduler: SchedulerConfig,
    /// TERM-to-KILL grace when cancelling a step.
    pub grace: Duration,
    /// Keep step sandboxes after the steps.
    pub keep_sandboxes: bool,
    /// How often a queued change looks whether its environment is free (default 500 ms).
    pub queue_poll: Duration,
    /// The Docker backend's settings.
    pub docker: DockerConfig,
    /// The Kubernetes backend's settings.
    #[cfg(feature = "kubernetes")]
    pub kubernetes: super::backend::kubernetes::KubernetesConfig,
    /// The OpsChain folder of the repositories: `.opschain` (the default), or MintPress's
    /// `.mintpress`. It picks the Dockerfile (`<folder>/Dockerfile`), the env context's form and
    /// where the step context goes.
    pub folder: String,
}

/// Creates a change (status `pending`) at the commit `git_rev` names; returns its id.
pub fn create(store: &Store, config: &ControllerConfig, new: &NewChange) -> Result<i64, ChangeError> {
    if !new.backend.is_available() {
        return Err(ChangeError::Backend(new.backend));
    }
    #[cfg(feature = "kubernetes")]
    if new.backend == BackendKind::Kubernetes && config.docker.registry.is_none() {
        return Err(ChangeError::Kubernetes(super::backend::kubernetes::KubernetesError::NoRegistry));
    }
    if let Some(set) = &new.secret_set {
        store.secrets(set)?.ok_or_else(|| ChangeError::NoSecretSet(set.clone()))?;
    }
    let repo_err = |source| ChangeError::Repo { repo: new.repo.clone(), rev: new.git_rev.clone(), source };
    let repo_dir = repo::prepare(&new.repo, &config.state_dir).map_err(repo_err)?;
    let commit = repo::resolve(&repo_dir, &new.git_rev).map_err(repo_err)?;
    let project = store.ensure_project(&new.project)?;
    let environment = store.ensure_environment(project, &new.environment)?;
    Ok(store.create_change(&NewChangeRow {
        project_id: project,
        environment_id: environment,
        action: &new.action,
        repo: &repo_dir,
        git_rev: &new.git_rev,
        commit: &commit,
        backend: new.backend,
        secret_set: new.secret_set.as_deref(),
        folder: &config.folder,
    })?)
}

/// The backend of `kind`, reading the repository's OpsChain folder `folder`.
fn backend(config: &ControllerConfig, kind: BackendKind, folder: &str) -> Result<Box<dyn Backend>, ChangeError> {
    match kind {
        BackendKind::Process => Ok(Box::new(ProcessBackend::new(ProcessConfig {
            agent: config.agent.clone(),
            sandbox_root: config.state_dir.join("sandboxes"),
            grace: config.grace,
            keep_sandboxes: config.keep_sandboxes,
            folder: folder.to_string(),
        }))),
        BackendKind::Docker => Ok(Box::new(DockerBackend::new(config.docker.clone(), folder.to_string(), config.state_dir.join("sandboxes")))),
        #[cfg(feature = "kubernetes")]
        BackendKind::Kubernetes => {
            use super::backend::kubernetes::KubernetesBackend;
            let images = DockerBackend::new(config.docker.clone(), folder.to_string(), config.state_dir.join("sandboxes"));
            let kubernetes = super::backend::kubernetes::KubernetesConfig { folder: folder.to_string(), ..config.kubernetes.clone() };
            let backend = KubernetesBackend::new(kubernetes, images, config.docker.registry.is_some()).map_err(ChangeError::Kubernetes)?;
            Ok(Box::new(backend))
        }
        #[cfg(not(feature = "kubernetes"))]
        BackendKind::Kubernetes => Err(ChangeError::Backend(kind)),
    }
}

/// Runs a created (or reset) change to its end: waits (`queued`) while another change runs in its
/// environment (unless its project allows parallel changes), then runs its step tree.
pub fn execute(store: &Store, config: &ControllerConfig, change_id: i64) -> Result<ChangeStatus, ChangeError> {
    let pid = i64::from(std::process::id());
    let mut said = false;
    while let Some(blocking) = store.try_start_change(change_id, pid)? {
        if !said {
            println!("==> change {change_id} queued: change {blocking} is running in the same environment");
            store.set_change_status(change_id, ChangeStatus::Queued)?;
            said = true;
        }
        if store.cancel_requested(change_id)? {
            store.cancel_orphaned(change_id)?;
            return Ok(ChangeStatus::Cancelled);
        }
        std::thread::sleep(config.queue_poll);
    }
    run_started(store, config, change_id)
}

/// Runs the step tree of a change this process has started ([`Store::try_start_change`]) to its
/// end. What [`execute`] does once the environment is free, and what the server's workers do.
pub fn run_started(store: &Store, config: &ControllerConfig, change_id: i64) -> Result<ChangeStatus, ChangeError> {
    let change = store.change(change_id)?;
    let secrets = match &change.secret_set {
        Some(set) => store.secrets(set)?.ok_or_else(|| ChangeError::NoSecretSet(set.clone()))?,
        None => Map::new(),
    };
    println!(
        "==> change {} running: project {}, environment {}, action {}, commit {} ({}), backend {}",
        change.id,
        change.project,
        change.environment,
        change.action,
        &change.commit[..change.commit.len().min(12)],
        change.git_rev,
        change.backend
    );
    // A backend that cannot be set up (a cluster that cannot be reached, say) ends the change in
    // error rather than leaving it running with no controller.
    // The folder the change was created with (a retry runs with it); a change from before the
    // folder was stored takes the command line's.
    let folder = change.folder.as_deref().unwrap_or(&config.folder);
    let backend = match backend(config, change.backend, folder) {
        Ok(backend) => backend,
        Err(e) => {
            store.set_change_status(change_id, ChangeStatus::Error)?;
            return Err(e);
        }
    };
    let scheduler = Scheduler::new(store, backend.as_ref(), change, secrets, config.scheduler.clone());
    Ok(scheduler.run()?)
}

/// Re-runs what did not succeed in a change, from the same commit.
pub fn retry(store: &Store, config: &ControllerConfig, change_id: i64) -> Result<ChangeStatus, ChangeError> {
    // Claimed atomically before anything is reset or removed: of two retries at once, the second
    // is refused here rather than resetting the steps (and removing the sandboxes) of the first.
    match store.claim_change(change_id, i64::from(std::process::id()))? {
        Claim::Claimed => {}
        Claim::Taken { pid } => return Err(ChangeError::Running { id: change_id, pid }),
        Claim::Succeeded => return Err(ChangeError::NothingToRetry(change_id)),
    }
    let stale = config.state_dir.join("sandboxes").join(format!("change-{change_id}"));
    let _ = std::fs::remove_dir_all(&stale);
    let reset = store.reset_for_retry(change_id)?;
    println!("==> change {change_id}: retrying {reset} step(s) that did not succeed");
    execute(store, config, change_id)
}

/// Cancels a change: asks its controller to stop it, or, when no controller runs it, turns its
/// pending, queued and running steps `cancelled` directly.
pub fn cancel(store: &Store, change_id: i64) -> Result<ChangeStatus, ChangeError> {
    let change = store.change(change_id)?;
    if change.status.is_final() {
        return Ok(change.status);
    }
    store.request_cancel(change_id)?;
    match change.controller_pid {
        Some(pid) if pid_alive(pid) => Ok(ChangeStatus::Running),
        _ => {
            store.cancel_orphaned(change_id)?;
            Ok(ChangeStatus::Cancelled)
        }
    }
}

/// Reads a secret set file as every secret set is read ([`opschain_runner::exec::read_secret_set`]): a JSON
/// object of `{"NAME": "value"}`, strictly (duplicate keys refused), names POSIX-portable, values
/// strings; errors name the pointer and never quote a value. A missing file is an error here.
pub fn read_secret_file(path: &Path) -> Result<Map<String, Value>, ExecError> {
    match exec::read_secret_set(path, SizeLimit::DEFAULT)? {
        Some(set) => Ok(set.into_iter().map(|(name, value)| (name, Value::String(value))).collect()),
        None => Err(ExecError::SecretSet(JsonError::Missing { path: path.to_path_buf() })),
    }
}
