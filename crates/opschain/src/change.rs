//! A change's life: create it at a commit, wait for its environment, run it, retry it, cancel it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use opschain_runner::exec::{self, ExecError};
use opschain_runner::json::{JsonError, SizeLimit};

use super::backend::docker::{DockerBackend, DockerConfig};
use super::backend::process::{ProcessBackend, ProcessConfig};
use super::backend::Backend;
use super::catalog::{self, CatalogError};
use super::liveness::ChangeLock;
use super::repo::{self, RepoError};
use super::scheduler::{Scheduler, SchedulerConfig};
use super::status::{BackendKind, ChangeStatus};
use super::store::{Claim, Lost, NewChangeRow, Start, Store, StoreError};

/// Why a change operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The project or environment named does not exist or is archived.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
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
    /// Another live controller runs the change (it holds the change's lock).
    #[error("change {id} is being run by another live controller{}: cancel it first or wait", pid.map(|p| format!(" (process {p})")).unwrap_or_default())]
    Running {
        /// The change.
        id: i64,
        /// The process id it was last run by, when known.
        pid: Option<i64>,
    },
    /// The lock of the state directory's snapshots cannot be taken.
    #[error(transparent)]
    Gc(#[from] super::gc::GcError),
    /// The key of the build secrets digest in the state directory cannot be made or read.
    #[error("cannot use the build secrets digest key")]
    SecretsKey(#[from] super::private::KeyError),
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
    /// The change's metadata (`--metadata-path`): stored with it, given to every step in its
    /// change context (`context.change.metadata`), shown by `change show`. Default: none.
    pub metadata: Option<Map<String, Value>>,
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
    /// The largest step result read from a step on the process backend (the Docker backend's
    /// is [`DockerConfig::max_result_bytes`]).
    pub max_result_bytes: u64,
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

/// Creates a change (status `pending`) at the commit `git_rev` names; returns its id and its lock,
/// which [`execute`] takes: this process is the change's controller from its creation on. Its
/// project and environment must exist and not be archived (a typo creates nothing).
pub fn create(store: &Store, config: &ControllerConfig, new: &NewChange) -> Result<(i64, ChangeLock), ChangeError> {
    if !new.backend.is_available() {
        return Err(ChangeError::Backend(new.backend));
    }
    #[cfg(feature = "kubernetes")]
    if new.backend == BackendKind::Kubernetes && config.docker.registry.is_none() {
        return Err(ChangeError::Kubernetes(super::backend::kubernetes::KubernetesError::NoRegistry));
    }
    // What the user named is checked before anything is made for it.
    let (project, environment) = catalog::change_target(store, &new.project, &new.environment)?;
    if let Some(set) = &new.secret_set {
        store.secrets(set)?.ok_or_else(|| ChangeError::NoSecretSet(set.clone()))?;
    }
    let repo_err = |source| ChangeError::Repo { repo: new.repo.clone(), rev: new.git_rev.clone(), source };
    repo::check_repo(&new.repo, &config.folder).map_err(repo_err)?;
    // Held until the change is in the store: a collection meanwhile would take its snapshot for
    // one no change uses.
    let _snapshots = super::gc::SnapshotLock::take(&config.state_dir)?;
    let repo_dir = repo::prepare(&new.repo, &config.state_dir).map_err(repo_err)?;
    let commit = repo::resolve(&repo_dir, &new.git_rev)
        .and_then(|commit| repo::check_folder_at(&repo_dir, &commit, &config.folder).map(|()| commit))
        .and_then(|commit| repo::keep(&config.state_dir, &repo_dir, &commit, true).map(|_| commit));
    let commit = match commit {
        Ok(commit) => commit,
        Err(e) => {
            // A snapshot made for a change that is not created is removed with it, unless it is
            // one an earlier change of the same content uses (snapshots are shared).
            let snapshot = repo_dir != new.repo.canonicalize().unwrap_or_default();
            if snapshot && !store.changes(None)?.iter().any(|c| c.repo == repo_dir) {
                let _ = std::fs::remove_dir_all(&repo_dir);
            }
            return Err(repo_err(e));
        }
    };
    let metadata = new.metadata.as_ref().map(|m| Value::Object(m.clone()).to_string());
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
        metadata: metadata.as_deref(),
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
            max_result_bytes: config.max_result_bytes,
        }))),
        BackendKind::Docker => Ok(Box::new(images_backend(config, folder)?)),
        #[cfg(feature = "kubernetes")]
        BackendKind::Kubernetes => {
            use super::backend::kubernetes::KubernetesBackend;
            let images = images_backend(config, folder)?;
            let kubernetes = super::backend::kubernetes::KubernetesConfig { folder: folder.to_string(), ..config.kubernetes.clone() };
            let backend = KubernetesBackend::new(kubernetes, images, config.docker.registry.is_some()).map_err(ChangeError::Kubernetes)?;
            Ok(Box::new(backend))
        }
        #[cfg(not(feature = "kubernetes"))]
        BackendKind::Kubernetes => Err(ChangeError::Backend(kind)),
    }
}

/// The Docker backend of `config`, which also builds the images of the backends that run them
/// elsewhere, with the state directory's build secrets digest key and its records of the images
/// pushed to a registry (`<state dir>/registry`).
fn images_backend(config: &ControllerConfig, folder: &str) -> Result<DockerBackend, ChangeError> {
    let key = super::private::secrets_key(&config.state_dir)?;
    let backend = DockerBackend::new(config.docker.clone(), folder.to_string(), config.state_dir.join("sandboxes"));
    Ok(backend.with_state(key, config.state_dir.join(REGISTRY_RECORDS)))
}

/// The directory of the state directory where the digests of pushed step images are recorded.
pub const REGISTRY_RECORDS: &str = "registry";

/// Runs a created (or reset) change to its end, holding its lock until its end is recorded: waits
/// (`queued`) while another change runs in its environment (unless its project allows parallel
/// changes), then runs its step tree. A cancel asked for before it starts ends it `cancelled`.
pub fn execute(store: &Store, config: &ControllerConfig, lock: ChangeLock) -> Result<ChangeStatus, ChangeError> {
    let change_id = lock.change_id();
    let pid = i64::from(std::process::id());
    let mut said = false;
    loop {
        match store.try_start_change(change_id, pid)? {
            Start::Started => break,
            Start::Cancelled => {
                say(config.scheduler.view, format_args!("==> change {change_id} cancelled before it started"));
                return Ok(ChangeStatus::Cancelled);
            }
            Start::Blocked(blocking) => {
                if !said {
                    say(config.scheduler.view, format_args!("==> change {change_id} queued: change {blocking} is running in the same environment"));
                    store.set_change_status(change_id, ChangeStatus::Queued)?;
                    said = true;
                }
                if store.cancel_requested(change_id)? {
                    store.cancel_orphaned(change_id)?;
                    return Ok(ChangeStatus::Cancelled);
                }
                std::thread::sleep(config.queue_poll);
            }
        }
    }
    run_started(store, config, change_id)
}

/// Runs the step tree of a change this process has started ([`Store::try_start_change`]) to its
/// end. What [`execute`] does once the environment is free, and what the server's workers do.
pub fn run_started(store: &Store, config: &ControllerConfig, change_id: i64) -> Result<ChangeStatus, ChangeError> {
    let mut change = store.change(change_id)?;
    // Steps and retries read the commit from the change's own copy of it, not from the user's
    // repository, whose history may have moved on and been pruned since.
    match repo::keep(&config.state_dir, &change.repo, &change.commit, false) {
        Ok(kept) => change.repo = kept,
        Err(source) => {
            store.set_change_status(change_id, ChangeStatus::Error)?;
            return Err(ChangeError::Repo { repo: change.repo.clone(), rev: change.git_rev.clone(), source });
        }
    }
    let secrets = match &change.secret_set {
        Some(set) => store.secrets(set)?.ok_or_else(|| ChangeError::NoSecretSet(set.clone()))?,
        None => Map::new(),
    };
    say(
        config.scheduler.view,
        format_args!(
            "==> change {} running: project {}, environment {}, action {}, commit {} ({}), backend {}",
            change.id,
            change.project,
            change.environment,
            change.action,
            &change.commit[..change.commit.len().min(12)],
            change.git_rev,
            change.backend
        ),
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
    let status = scheduler.run()?;
    drop(backend);
    // What the change no longer needs goes now; a failure to remove it fails nothing.
    if let Err(e) = super::gc::after_change(store, &config.state_dir, change_id, config.keep_sandboxes) {
        let mut why = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            why.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        eprintln!("opschain: warning: change {change_id} ended, but what it left could not be removed: {why} (`opschain gc` tries again)");
    }
    Ok(status)
}

/// Prints one of the change's own lines on stdout. A reader that went away (a closed pipe) does
/// not stop the change: the line is dropped, as the steps' lines are ([`super::output`]).
fn say(view: super::output::View, line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if view.silent {
        return;
    }
    let time = if view.timestamps { super::output::now() + " " } else { String::new() };
    let _ = writeln!(std::io::stdout(), "{time}{line}");
}

/// Re-runs what did not succeed in a change, from the same commit.
pub fn retry(store: &Store, config: &ControllerConfig, change_id: i64) -> Result<ChangeStatus, ChangeError> {
    // The change's lock is taken before anything is reset or removed: of two retries at once, or
    // a retry of a change whose controller still runs, the other is refused here rather than
    // resetting the steps (and removing the sandboxes) of the one that runs.
    let Some(lock) = store.lock_change(change_id)? else {
        return Err(ChangeError::Running { id: change_id, pid: store.change(change_id)?.controller_pid });
    };
    match store.claim_change(change_id, i64::from(std::process::id()))? {
        Claim::Claimed => {}
        Claim::Succeeded => return Err(ChangeError::NothingToRetry(change_id)),
    }
    remove_sandboxes(&config.state_dir, change_id);
    let reset = store.reset_for_retry(change_id)?;
    say(config.scheduler.view, format_args!("==> change {change_id}: retrying {reset} step(s) that did not succeed"));
    execute(store, config, lock)
}

/// Removes the step sandboxes of a change from the state directory `state_dir` (they hold step
/// contexts, runner secrets included).
fn remove_sandboxes(state_dir: &Path, change_id: i64) {
    let _ = std::fs::remove_dir_all(state_dir.join("sandboxes").join(format!("change-{change_id}")));
}

/// Cancels a change: asks its controller to stop it, or, when no live controller runs it, turns
/// its pending, queued and running steps `cancelled` directly (a change whose controller was lost
/// while it ran is recorded as [`recognise_lost`] does, `cancelled`) and removes its sandboxes.
pub fn cancel(store: &Store, state_dir: &Path, change_id: i64) -> Result<ChangeStatus, ChangeError> {
    let change = store.change(change_id)?;
    if change.status.is_final() {
        return Ok(change.status);
    }
    store.request_cancel(change_id)?;
    let Some(lock) = store.lock_change(change_id)? else { return Ok(ChangeStatus::Running) };
    let status = match change.status {
        ChangeStatus::Running => match store.record_lost(&lock)? {
            Lost::Recorded(status) => status,
            Lost::Ended => store.change(change_id)?.status,
        },
        _ => {
            store.cancel_orphaned(change_id)?;
            ChangeStatus::Cancelled
        }
    };
    remove_sandboxes(state_dir, change_id);
    Ok(status)
}

/// A change whose controller was found gone by [`recognise_lost`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LostChange {
    /// The change.
    pub id: i64,
    /// The status its end was recorded with.
    pub status: ChangeStatus,
}

/// Finds the changes that have not ended but whose controller is gone (no live process holds
/// their lock: it was killed, or its machine stopped), records their end (see
/// [`Store::record_lost`]) and removes their sandboxes from the state directory `state_dir`. Run by the commands that look at
/// changes, so that a lost controller never leaves its change `running` for ever. Returns what
/// it recorded.
pub fn recognise_lost(store: &Store, state_dir: &Path) -> Result<Vec<LostChange>, ChangeError> {
    let mut lost = Vec::new();
    for change in store.changes(None)?.into_iter().filter(|c| !c.status.is_final()) {
        if store.controller_alive(change.id)? {
            continue;
        }
        // Held while the end is recorded: a controller that takes the change meanwhile (a retry)
        // waits for it, and finds the change ended.
        let Some(lock) = store.lock_change(change.id)? else { continue };
        if let Lost::Recorded(status) = store.record_lost(&lock)? {
            remove_sandboxes(state_dir, change.id);
            lost.push(LostChange { id: change.id, status });
        }
    }
    Ok(lost)
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
