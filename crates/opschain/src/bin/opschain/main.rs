//! `opschain`: the host-side companion controller. Runs changes (an action of a project's
//! repository, at a commit, in an environment) as trees of steps, each step one run of the
//! `opschain-runner` agent, and keeps projects, environments, properties (every version), changes,
//! steps, logs and secret sets in one SQLite file under the state directory.

// The doc comments of the command-line types are the `--help` texts, where `<repo>` and the like
// are placeholders the user reads, not HTML.
#![allow(rustdoc::invalid_html_tags)]

mod remote;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::{Map, Value};

use opschain::backend::docker::DockerConfig;
use opschain::change::{self, ChangeError, ControllerConfig, NewChange};
use opschain::cli::{
    ChangeCommand, Cli, Command, DevCommand, EnvironmentCode, EnvironmentCommand, NewProperties, ProjectCode, ProjectCommand, PropertiesCommand, RunSettings,
    SecretsCommand, ServerArgs, UserCommand,
};
use opschain::output;
use opschain::rc::{Code, Defaults, RcError, Source, Which};
use opschain::remote::{ApiConfig, RemoteError};
use opschain::repo;
use opschain::scheduler::{default_workers, SchedulerConfig};
use opschain::server::accounts::{self, AccountError};
use opschain::server::{ServerError, ServerSettings};
use opschain::status::{BackendKind, ChangeStatus, StepStatus};
use opschain::store::{pid_alive, ChangeRow, Level, Role, StepRow, Store, StoreError};
use opschain_runner::atomic::{self, Durability};
use opschain_runner::exec::ExecError;
use opschain_runner::exit::{ExitStatus, Sysexit};
use opschain_runner::layout::{Layout, DEFAULT_REPO_FOLDER};
use opschain_runner::step_image;

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

/// The controller's own failures that are not a library error: each names its exit status.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// A project or environment code is needed and no source gives one.
    #[error("no {noun} code: give --{flag} CODE, set ${var}, or put {key} in .opschainrc")]
    NoCode {
        /// "project" or "environment".
        noun: &'static str,
        /// The flag.
        flag: &'static str,
        /// The variable.
        var: &'static str,
        /// The key of `.opschainrc`.
        key: &'static str,
    },
    /// A project or environment that does not exist.
    #[error("{0}")]
    Unknown(String),
    /// An input file that cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A secret set file that cannot be read or is not `{"NAME": "value"}`.
    #[error("cannot read the secret set file {}", path.display())]
    SecretFile {
        /// The file.
        path: PathBuf,
        /// The cause: the file is missing or unreadable, or its content is not a secret set.
        #[source]
        source: opschain_runner::exec::ExecError,
    },
    /// The Dockerfile cannot be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `change create` without `--repo` in a directory that is no project repository.
    #[error("the working directory {} has no {folder} folder: run from the project's repository or give --repo DIR", dir.display())]
    NotARepo {
        /// The working directory.
        dir: PathBuf,
        /// The OpsChain folder looked for.
        folder: String,
    },
    /// `dev create-dockerfile` found a Dockerfile already.
    #[error("{} exists: keeping it (give --force to replace it)", path.display())]
    Exists {
        /// The Dockerfile.
        path: PathBuf,
    },
}

impl Failure {
    fn status(&self) -> ExitStatus {
        let sysexit = match self {
            Failure::NoCode { .. } => Sysexit::Usage,
            Failure::Unknown(_) | Failure::NotARepo { .. } => Sysexit::NoInput,
            Failure::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => Sysexit::NoInput,
            Failure::SecretFile { source: ExecError::SecretSet(e), .. } => return e.exit_status(),
            Failure::SecretFile { .. } => Sysexit::DataErr,
            Failure::Read { .. } | Failure::Write { .. } => Sysexit::IoErr,
            Failure::Exists { .. } => Sysexit::CantCreat,
        };
        sysexit.into()
    }
}

fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("opschain");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/state/opschain"),
        None => PathBuf::from(".opschain-state"),
    }
}

fn config(state_dir: &Path, s: &RunSettings) -> Result<ControllerConfig> {
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
        scheduler: SchedulerConfig { workers, cancel_poll: Duration::from_millis(250), user: std::env::var("USER").unwrap_or_else(|_| "opschain".into()) },
        grace: Duration::from_secs(s.grace_secs),
        keep_sandboxes: s.keep_sandboxes,
        queue_poll: Duration::from_millis(500),
        docker: DockerConfig {
            docker: s.docker_bin.clone(),
            base_image: s.docker_base_image.clone(),
            grace: Duration::from_secs(s.grace_secs),
            transport: s.transport.parse().map_err(anyhow::Error::msg)?,
            registry: s.registry.as_deref().map(str::parse).transpose()?,
        },
        #[cfg(feature = "kubernetes")]
        kubernetes: kube_config(s)?,
        folder: checked_folder(&s.folder)?,
    })
}

/// The OpsChain folder, checked to be one plain directory name (it is joined to the repository
/// and to `/opt/opschain` in the container).
fn checked_folder(folder: &str) -> Result<String> {
    let plain = !folder.is_empty() && folder != "." && folder != ".." && !folder.contains(['/', '\0', ',', '=']);
    if !plain {
        bail!("--folder {folder:?}: expected one directory name, like .opschain or .mintpress");
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
    println!("==> the agent {} is missing: building it (cargo build --bin opschain-runner)", agent.display());
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
    println!("==> agent built in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn exit_of(status: ChangeStatus) -> ExitCode {
    match status {
        ChangeStatus::Success => ExitCode::SUCCESS,
        ChangeStatus::Cancelled => ExitCode::from(2),
        _ => ExitCode::from(1),
    }
}

/// The exit status of a failure of the controller itself (never 1 or 2: those say how a change
/// ended). The first cause in the chain that has a status of its own decides; else 70.
fn failure_status(e: &anyhow::Error) -> ExitStatus {
    for cause in e.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return f.status();
        }
        if let Some(e) = cause.downcast_ref::<opschain_runner::json::JsonError>() {
            return e.exit_status();
        }
        if cause.downcast_ref::<RcError>().is_some() {
            return Sysexit::DataErr.into();
        }
        if let Some(e) = cause.downcast_ref::<RemoteError>() {
            return e.exit_status();
        }
        if let Some(e) = cause.downcast_ref::<AccountError>() {
            return e.exit_status();
        }
        if let Some(e) = cause.downcast_ref::<ServerError>() {
            return e.exit_status();
        }
        match cause.downcast_ref::<StoreError>() {
            Some(StoreError::NotFound(_)) => return Sysexit::NoInput.into(),
            Some(_) => return Sysexit::Software.into(),
            None => {}
        }
        // `ChangeError::Store` is transparent: the store error itself is not in the chain.
        match cause.downcast_ref::<ChangeError>() {
            Some(ChangeError::NoSecretSet(_) | ChangeError::Store(StoreError::NotFound(_))) => return Sysexit::NoInput.into(),
            Some(_) => return Sysexit::Software.into(),
            None => {}
        }
    }
    Sysexit::Software.into()
}

/// The code `which`, from its flag or a default (see [`Defaults`]); says on stderr where a default came
/// from. Without any: a usage error naming every source.
fn code(defaults: &Defaults, which: Which, flag: Option<&str>) -> Result<String> {
    match defaults.resolve(which, flag)? {
        Some(Code { value, source: Source::Flag }) => Ok(value),
        Some(Code { value, source }) => {
            eprintln!("opschain: {} code {value:?} from {source}", which.noun());
            Ok(value)
        }
        None => Err(no_code(which)),
    }
}

/// The usage error of a command that needs code `which` and has none.
fn no_code(which: Which) -> anyhow::Error {
    let flag = match which {
        Which::Project => "project-code",
        Which::Environment => "environment-code",
    };
    Failure::NoCode { noun: which.noun(), flag, var: which.var(), key: which.key() }.into()
}

/// The id of an existing project; an unknown code is an error that lists the known ones.
fn find_project(store: &Store, code: &str) -> Result<i64> {
    match store.project_id(code) {
        Err(StoreError::NotFound(_)) => {
            let known: Vec<String> = store.projects()?.into_iter().map(|p| p.code).collect();
            Err(Failure::Unknown(format!("project {code:?} does not exist ({}); create it with `opschain project create --code {code}`", known_list(&known))).into())
        }
        other => Ok(other?),
    }
}

/// The id of an existing environment of a project; an unknown code is an error that lists the
/// project's environments.
fn find_environment(store: &Store, project: &str, project_id: i64, code: &str) -> Result<i64> {
    match store.environment_id(project_id, code) {
        Err(StoreError::NotFound(_)) => {
            let known: Vec<String> = store.environments(project_id)?.into_iter().map(|e| e.code).collect();
            Err(Failure::Unknown(format!(
                "environment {code:?} of project {project:?} does not exist ({}); create it with `opschain environment create -p {project} --code {code}`",
                known_list(&known)
            ))
            .into())
        }
        other => Ok(other?),
    }
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        "there are none".into()
    } else {
        format!("known: {}", known.join(", "))
    }
}

/// The id of project `code`, creating it (and saying so on stderr) when new.
fn ensure_project(store: &Store, code: &str) -> Result<i64> {
    match store.project_id(code) {
        Err(StoreError::NotFound(_)) => {
            let id = store.ensure_project(code)?;
            eprintln!("opschain: project {code:?} created");
            Ok(id)
        }
        other => Ok(other?),
    }
}

/// The id of environment `code` of a project, creating it (and saying so on stderr) when new.
fn ensure_environment(store: &Store, project_id: i64, code: &str) -> Result<i64> {
    match store.environment_id(project_id, code) {
        Err(StoreError::NotFound(_)) => {
            let id = store.ensure_environment(project_id, code)?;
            eprintln!("opschain: environment {code:?} created");
            Ok(id)
        }
        other => Ok(other?),
    }
}

/// Whether a command may create the project or environment it names: only writes may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// Reads: an unknown code is an error.
    Existing,
    /// Writes: an unknown code is created.
    CreateWhenNew,
}

/// The properties level and owner id of a project (`environment` None) or an environment.
fn owner_id(store: &Store, project: &str, environment: Option<&str>, lookup: Lookup) -> Result<(Level, i64)> {
    let project_id = match lookup {
        Lookup::Existing => find_project(store, project)?,
        Lookup::CreateWhenNew => ensure_project(store, project)?,
    };
    Ok(match environment {
        Some(env) => (
            Level::Environment,
            match lookup {
                Lookup::Existing => find_environment(store, project, project_id, env)?,
                Lookup::CreateWhenNew => ensure_environment(store, project_id, env)?,
            },
        ),
        None => (Level::Project, project_id),
    })
}

/// Reads user-given properties with the crate's strict reader: an object, no duplicate key at any
/// depth, errors naming the JSON pointer and line (as every input of the agent).
fn parse_object(text: &str, what: &str) -> Result<Map<String, Value>> {
    let opschain_runner::json::StrictObject(map) = opschain_runner::json::parse(Path::new(what), text.as_bytes())?;
    Ok(map)
}

/// The JSON object `set-properties` is given.
fn read_new_properties(new: NewProperties) -> Result<Map<String, Value>> {
    match (new.file.or(new.file_path), new.json) {
        (_, Some(text)) => parse_object(&text, "--json"),
        (Some(path), None) if path == Path::new("-") => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(|source| Failure::Read { path: "stdin".into(), source })?;
            parse_object(&text, "stdin")
        }
        (Some(path), None) => {
            let text = std::fs::read_to_string(&path).map_err(|source| Failure::Read { path: path.clone(), source })?;
            parse_object(&text, &path.display().to_string())
        }
        (None, None) => unreachable!("clap requires FILE, --file-path or --json"),
    }
}

fn show_properties(store: &Store, project: &str, environment: Option<&str>, version: Option<i64>) -> Result<ExitCode> {
    let (level, id) = owner_id(store, project, environment, Lookup::Existing)?;
    let json = match version {
        Some(v) => store.properties_version(level, id, v)?,
        None => store.properties(level, id)?.json,
    };
    println!("{}", serde_json::to_string_pretty(&Value::Object(json))?);
    Ok(ExitCode::SUCCESS)
}

fn set_properties(store: &Store, project: &str, environment: Option<&str>, new: NewProperties) -> Result<ExitCode> {
    let map = read_new_properties(new)?;
    let (level, id) = owner_id(store, project, environment, Lookup::CreateWhenNew)?;
    let version = store.set_properties(level, id, &map)?;
    println!("{} properties saved as version {version}", level.as_str());
    Ok(ExitCode::SUCCESS)
}

fn edit_properties(store: &Store, project: &str, environment: Option<&str>) -> Result<ExitCode> {
    let (level, id) = owner_id(store, project, environment, Lookup::Existing)?;
    let current = store.properties(level, id)?;
    let before = serde_json::to_string_pretty(&Value::Object(current.json.clone()))? + "\n";
    let after = edit(&before)?;
    let map = parse_object(&after, "the edited properties")?;
    if map == current.json {
        println!("{} properties unchanged (version {})", level.as_str(), current.version);
    } else {
        let version = store.set_properties(level, id, &map)?;
        println!("{} properties saved as version {version}", level.as_str());
    }
    Ok(ExitCode::SUCCESS)
}

fn properties_history(store: &Store, project: &str, environment: Option<&str>) -> Result<ExitCode> {
    let (level, id) = owner_id(store, project, environment, Lookup::Existing)?;
    store.properties_history_each(level, id, |v| {
        let by = v.step_id.map(|s| format!("step {s}")).unwrap_or_else(|| "user".into());
        println!("v{:<4} {} {:<10} {}", v.version, v.created_at, by, Value::Object(v.json));
    })?;
    Ok(ExitCode::SUCCESS)
}

fn print_tree(steps: &[StepRow], parent: Option<i64>, depth: usize) {
    let mut children: Vec<&StepRow> = steps.iter().filter(|s| s.parent_id == parent).collect();
    children.sort_by_key(|s| s.position);
    for s in children {
        let strategy = s.child_strategy.as_deref().map(|c| format!(" (children: {c})")).unwrap_or_default();
        let took = s.duration_secs.map(|d| format!(" {d:.2}s")).unwrap_or_default();
        let exit = s.exit_status.map(|e| format!(" exit {e}")).unwrap_or_default();
        println!("{}{} [{}] {}{took}{exit}{strategy}", "  ".repeat(depth), s.id, s.action, s.status.as_str());
        if s.status == StepStatus::Error {
            for line in s.message.as_deref().unwrap_or_default().lines() {
                println!("{}  | {line}", "  ".repeat(depth));
            }
        }
        print_tree(steps, Some(s.id), depth + 1);
    }
}

/// A private temporary directory (mkdtemp(3): a new, unpredictable name, mode 0700), removed
/// with everything in it when dropped.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn new(prefix: &str) -> Result<PrivateDir> {
        let template = std::env::temp_dir().join(format!("{prefix}XXXXXX"));
        let dir = nix::unistd::mkdtemp(&template).with_context(|| format!("cannot create a private temporary directory like {}", template.display()))?;
        Ok(PrivateDir(dir))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Lets the user edit `initial` in $VISUAL / $EDITOR (default vi); returns the saved text. The
/// file is `properties.json` in a private temporary directory, created new (never through a
/// symlink, readable by its owner only).
fn edit(initial: &str) -> Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = PrivateDir::new("opschain-edit-")?;
    let path = dir.0.join("properties.json");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(initial.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    drop(file);
    let editor = std::env::var("VISUAL").or_else(|_| std::env::var("EDITOR")).unwrap_or_else(|_| "vi".into());
    let status = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("editor")
        .arg(&path)
        .status()
        .with_context(|| format!("cannot run the editor {editor:?}"))?;
    if !status.success() {
        bail!("the editor {editor:?} failed ({status}): nothing saved");
    }
    std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
}

/// Writes the default step Dockerfile to `<repo>/<folder>/Dockerfile`: as a new file (never over
/// an existing file or through a symlink) unless `force`, then atomically over whatever is there.
fn create_dockerfile(repo: &Path, folder: &str, force: bool) -> Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let layout = Layout::new(repo, folder).with_context(|| format!("cannot resolve {}", repo.display()))?;
    let path = layout.dockerfile();
    let dir = layout.folder_dir();
    std::fs::create_dir_all(&dir).map_err(|source| Failure::Write { path: dir.clone(), source })?;
    let dockerfile = step_image::default_dockerfile(folder);
    let contents = dockerfile.as_bytes();
    if force {
        atomic::write(&path, contents, 0o644, Durability::Durable).map_err(|e| Failure::Write { path: path.clone(), source: e.source })?;
        return Ok(path);
    }
    let mut file = match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(Failure::Exists { path }.into()),
        other => other.map_err(|source| Failure::Write { path: path.clone(), source })?,
    };
    file.write_all(contents).and_then(|()| file.sync_all()).map_err(|source| Failure::Write { path: path.clone(), source })?;
    Ok(path)
}

/// The repository of `change create`: `--repo`, else the working directory when it holds the
/// OpsChain folder (a directory run from by mistake, such as a home directory, would otherwise be
/// snapshotted whole).
fn repo_or_working_directory(repo: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(repo) = repo {
        return Ok(repo);
    }
    let cwd = std::env::current_dir().context("cannot find the working directory")?;
    let folder = std::env::var("OPSCHAIN_REPO_FOLDER").ok().filter(|f| !f.is_empty()).unwrap_or_else(|| DEFAULT_REPO_FOLDER.into());
    if !cwd.join(&folder).is_dir() {
        return Err(Failure::NotARepo { dir: cwd, folder }.into());
    }
    Ok(cwd)
}

/// `rev` read against the git remote `remote` of the work tree `repo`, as OpsChain reads
/// `--git-rev` with `--git-remote-name`: the remote is fetched, then a branch of it is
/// `<remote>/<rev>`; any other revision (a tag, a commit) is `rev` itself.
fn remote_rev(repo: &Path, remote: &str, rev: &str) -> Result<String> {
    if !repo::is_repo_top(repo) {
        return Err(Failure::Unknown(format!("{} is not the top of a git work tree: it has no git remote {remote:?}", repo.display())).into());
    }
    if repo::git(repo, &["remote", "get-url", remote]).is_err() {
        let known = repo::git(repo, &["remote"]).unwrap_or_default();
        let known: Vec<String> = known.lines().map(String::from).collect();
        return Err(Failure::Unknown(format!("git remote {remote:?} of {} does not exist ({})", repo.display(), known_list(&known))).into());
    }
    repo::git(repo, &["fetch", "--quiet", "--tags", remote]).with_context(|| format!("cannot fetch the git remote {remote:?} of {}", repo.display()))?;
    let tracking = format!("{remote}/{rev}");
    match repo::git(repo, &["rev-parse", "--verify", "--quiet", &format!("refs/remotes/{tracking}^{{commit}}")]) {
        Ok(_) => Ok(tracking),
        Err(_) => Ok(rev.to_string()),
    }
}

/// Creates and runs a change; `change create` and `demo`.
fn run_change(store: &Store, config: &ControllerConfig, new: NewChange) -> Result<(i64, ChangeStatus)> {
    let project_is_new = matches!(store.project_id(&new.project), Err(StoreError::NotFound(_)));
    let environment_is_new =
        project_is_new || matches!(store.project_id(&new.project).and_then(|p| store.environment_id(p, &new.environment)), Err(StoreError::NotFound(_)));
    let id = change::create(store, config, &new)?;
    if project_is_new {
        eprintln!("opschain: project {:?} created", new.project);
    }
    if environment_is_new {
        eprintln!("opschain: environment {:?} created", new.environment);
    }
    println!("==> change {id} created (state: {})", store.path().display());
    Ok((id, change::execute(store, config, id)?))
}

fn run(cli: Cli) -> Result<ExitCode> {
    let defaults = Defaults::from_process();
    let project = |flag: &ProjectCode| code(&defaults, Which::Project, flag.project_code.as_deref());
    let environment = |flag: &EnvironmentCode| code(&defaults, Which::Environment, flag.environment_code.as_deref());
    // Commands that need no store.
    if let Command::Dev(DevCommand::CreateDockerfile { repo, folder, force }) = &cli.command {
        let path = create_dockerfile(repo, folder, *force)?;
        println!("{} written: the default step runner Dockerfile, to customise and commit", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    // Through a server when one is named; `server` and `user` always work on the local store.
    if !matches!(cli.command, Command::Server(_) | Command::User(_)) {
        if let Some(api) = ApiConfig::resolve(cli.api_url.as_deref(), defaults.rc_path())? {
            return remote::run(cli.command, &api, &defaults);
        }
    }
    // Absolute, because steps run with their sandbox (under it) as working directory.
    let state_dir = cli.state_dir.clone().unwrap_or_else(default_state_dir);
    let state_dir = std::path::absolute(&state_dir).with_context(|| format!("cannot resolve the state directory {}", state_dir.display()))?;
    let store = Store::open(&state_dir)?;
    match cli.command {
        Command::Change(ChangeCommand::Create(args)) => {
            let repo = repo_or_working_directory(args.repo)?;
            let git_rev = match &args.git_remote_name {
                Some(remote) => remote_rev(&repo, remote, &args.git_rev)?,
                None => args.git_rev,
            };
            let new = NewChange {
                project: project(&args.project)?,
                environment: environment(&args.environment)?,
                repo,
                action: if args.action.is_empty() { "default".into() } else { args.action },
                git_rev,
                backend: args.backend,
                secret_set: args.secrets,
            };
            let config = config(&state_dir, &args.settings)?;
            let (_, status) = run_change(&store, &config, new)?;
            Ok(exit_of(status))
        }
        Command::Demo(args) => {
            let config = config(&state_dir, &args.settings)?;
            if store.secrets("demo")?.is_none() {
                let mut set = Map::new();
                set.insert("API_TOKEN".into(), Value::String("demo-token-5f1c9e".into()));
                store.set_secrets("demo", &set)?;
                println!("==> secret set demo created (API_TOKEN)");
            }
            let new = NewChange {
                repo: args.repo,
                project: "demo".into(),
                environment: "dev".into(),
                action: "deploy".into(),
                git_rev: "HEAD".into(),
                backend: BackendKind::Process,
                secret_set: Some("demo".into()),
            };
            let (id, status) = run_change(&store, &config, new)?;
            println!("\n==> step tree of change {id}");
            print_tree(&store.steps(id)?, None, 1);
            let project = store.project_id("demo")?;
            let env = store.environment_id(project, "dev")?;
            let p = store.properties(Level::Project, project)?;
            let e = store.properties(Level::Environment, env)?;
            println!("==> project demo properties (v{}): {}", p.version, Value::Object(p.json));
            println!("==> environment dev properties (v{}): {}", e.version, Value::Object(e.json));
            Ok(exit_of(status))
        }
        Command::Change(ChangeCommand::List { project: p, environment: e }) => {
            // Filters: the codes given or defaulting; an unknown one is an error, not an empty list.
            let project_code = defaults.resolve(Which::Project, p.project_code.as_deref())?;
            let environment_code = defaults.resolve(Which::Environment, e.environment_code.as_deref())?;
            for (which, code) in [(Which::Project, &project_code), (Which::Environment, &environment_code)] {
                if let Some(Code { value, source: source @ (Source::Variable(_) | Source::File(_)) }) = code {
                    eprintln!("opschain: {} code {value:?} from {source}", which.noun());
                }
            }
            let project_code = project_code.map(|c| c.value);
            let environment_code = environment_code.map(|c| c.value);
            match (&project_code, &environment_code) {
                (Some(p), Some(e)) => {
                    let id = find_project(&store, p)?;
                    find_environment(&store, p, id, e)?;
                }
                (Some(p), None) => {
                    find_project(&store, p)?;
                }
                (None, Some(_)) => return Err(no_code(Which::Project)),
                (None, None) => {}
            }
            println!("{:>4}  {:<10} {:<12} {:<12} {:<20} {:<12} {:<8} created", "id", "status", "project", "environment", "action", "commit", "backend");
            let changes = store
                .changes(None)?
                .into_iter()
                .filter(|c| project_code.as_ref().is_none_or(|p| &c.project == p) && environment_code.as_ref().is_none_or(|e| &c.environment == e));
            for c in changes {
                println!(
                    "{:>4}  {:<10} {:<12} {:<12} {:<20} {:<12} {:<8} {}",
                    c.id,
                    c.status.as_str(),
                    c.project,
                    c.environment,
                    c.action,
                    &c.commit[..c.commit.len().min(12)],
                    c.backend,
                    c.created_at
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Change(ChangeCommand::Show { id }) => {
            let c = store.change(id.get())?;
            println!("change {} {}", c.id, c.status.as_str());
            println!("  project {}, environment {}, action {}", c.project, c.environment, c.action);
            println!("  commit {} ({}) from {}", c.commit, c.git_rev, c.repo.display());
            println!("  backend {}, created {}, finished {}", c.backend, c.created_at, c.finished_at.as_deref().unwrap_or("-"));
            println!("steps:");
            let mask = output::change_masker(&store, &c)?;
            let mut steps = store.steps(c.id)?;
            for s in &mut steps {
                s.message = s.message.as_deref().map(|m| mask.mask(m).into_owned());
            }
            print_tree(&steps, None, 1);
            Ok(ExitCode::SUCCESS)
        }
        Command::Change(ChangeCommand::Logs { id, follow }) => {
            print_logs(&store, id.get(), follow)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Change(ChangeCommand::Retry { id, settings }) => {
            // An unknown id is "not found", before anything else is looked at.
            let id = store.change(id.get())?.id;
            let config = config(&state_dir, &settings)?;
            Ok(exit_of(change::retry(&store, &config, id)?))
        }
        Command::Change(ChangeCommand::Cancel { id }) => {
            let id = id.get();
            match change::cancel(&store, id)? {
                ChangeStatus::Running => {
                    println!("change {id}: cancel requested; its controller stops it")
                }
                status => println!("change {id} {}", status.as_str()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Project(ProjectCommand::List) => {
            println!("{:<20} {:>12} {:>8} {:<9} created", "code", "environments", "changes", "parallel");
            for p in store.projects()? {
                println!("{:<20} {:>12} {:>8} {:<9} {}", p.code, p.environments, p.changes, if p.allow_parallel_changes { "yes" } else { "no" }, p.created_at);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Project(ProjectCommand::Create { code, .. }) => {
            if store.project_id(&code).is_ok() {
                println!("project {code} exists");
            } else {
                store.ensure_project(&code)?;
                println!("project {code} created");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Project(ProjectCommand::ShowProperties { project: p, version }) => show_properties(&store, &project(&p)?, None, version.version),
        Command::Project(ProjectCommand::SetProperties { project: p, new, .. }) => set_properties(&store, &project(&p)?, None, new),
        Command::Project(ProjectCommand::EditProperties { project: p }) => edit_properties(&store, &project(&p)?, None),
        Command::Project(ProjectCommand::AllowParallelChanges { project, allow }) => {
            let id = ensure_project(&store, &project)?;
            store.set_allow_parallel_changes(id, allow)?;
            println!("project {project}: parallel changes {}", if allow { "allowed" } else { "not allowed" });
            Ok(ExitCode::SUCCESS)
        }
        Command::Environment(EnvironmentCommand::List { project: p }) => {
            let code = project(&p)?;
            let id = find_project(&store, &code)?;
            println!("{:<20} {:>8} created", "code", "changes");
            for e in store.environments(id)? {
                println!("{:<20} {:>8} {}", e.code, e.changes, e.created_at);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Environment(EnvironmentCommand::Create { project: p, code, .. }) => {
            let project = project(&p)?;
            let id = find_project(&store, &project)?;
            if store.environment_id(id, &code).is_ok() {
                println!("environment {code} of project {project} exists");
            } else {
                store.ensure_environment(id, &code)?;
                println!("environment {code} of project {project} created");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Environment(EnvironmentCommand::ShowProperties { project: p, environment: e, version }) => {
            show_properties(&store, &project(&p)?, Some(&environment(&e)?), version.version)
        }
        Command::Environment(EnvironmentCommand::SetProperties { project: p, environment: e, new, .. }) => {
            set_properties(&store, &project(&p)?, Some(&environment(&e)?), new)
        }
        Command::Environment(EnvironmentCommand::EditProperties { project: p, environment: e }) => edit_properties(&store, &project(&p)?, Some(&environment(&e)?)),
        Command::Properties(PropertiesCommand::Show { owner, version }) => {
            show_properties(&store, &project(&owner.project)?, owner.environment.as_deref(), version.version)
        }
        Command::Properties(PropertiesCommand::Set { owner, new, .. }) => set_properties(&store, &project(&owner.project)?, owner.environment.as_deref(), new),
        Command::Properties(PropertiesCommand::Edit { owner }) => edit_properties(&store, &project(&owner.project)?, owner.environment.as_deref()),
        Command::Properties(PropertiesCommand::History { owner }) => properties_history(&store, &project(&owner.project)?, owner.environment.as_deref()),
        Command::Secrets(SecretsCommand::Set { name, file }) => {
            let set = change::read_secret_file(&file).map_err(|source| Failure::SecretFile { path: file.clone(), source })?;
            store.set_secrets(&name, &set)?;
            println!("secret set {name} saved ({} secrets: {})", set.len(), set.keys().cloned().collect::<Vec<_>>().join(", "));
            Ok(ExitCode::SUCCESS)
        }
        Command::Secrets(SecretsCommand::List) => {
            for name in store.secret_set_names()? {
                println!("{name}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Server(args) => serve(&state_dir, args),
        Command::User(command) => user(&store, command),
        Command::Dev(DevCommand::CreateDockerfile { .. }) => {
            unreachable!("handled before the store is opened")
        }
    }
}

fn main() -> ExitCode {
    opschain::bound_allocator();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print to stdout and succeed; a wrong command line is a usage
        // error, 64 (clap's own 2 would read as "the change was cancelled").
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(Sysexit::Usage as u8) } else { ExitCode::SUCCESS };
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("opschain: error: {e:#}");
            ExitCode::from(failure_status(&e))
        }
    }
}

/// How often `change logs --follow` looks for new lines (200 ms).
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// Prints the log lines of change `id`; with `follow`, keeps printing new ones until the change
/// has ended and its last lines are printed. A reader that goes away (a closed pipe) ends it
/// quietly.
fn print_logs(store: &Store, id: i64, follow: bool) -> anyhow::Result<()> {
    let mask = output::change_masker(store, &store.change(id)?)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let mut failed: Option<std::io::Error> = None;
    let mut after = 0;
    loop {
        // Whether the change had ended before this read: then the read has its last lines.
        let ended = !follow || is_ended(&store.change(id)?);
        after = store.logs_after(id, after, |l| {
            if failed.is_none() {
                let mark = if l.stream == "stderr" { "!" } else { " " };
                if let Err(e) = writeln!(out, "{} [{} {}]{mark} {}", l.at, l.step_id, l.action, mask.mask(&l.line)) {
                    failed = Some(e);
                }
            }
        })?;
        if let Some(e) = failed.take().or_else(|| out.flush().err()) {
            return if e.kind() == std::io::ErrorKind::BrokenPipe { Ok(()) } else { Err(e.into()) };
        }
        if ended {
            return Ok(());
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}

/// Whether no more lines will come to `change`: it has ended, or the controller running it is
/// gone (killed: `change retry` runs it again, and `change logs --follow` follows that run).
fn is_ended(change: &ChangeRow) -> bool {
    let running = matches!(change.status, ChangeStatus::Pending | ChangeStatus::Queued | ChangeStatus::Running);
    !running || change.controller_pid.is_some_and(|pid| !pid_alive(pid))
}

/// `opschain server`: serves until SIGTERM or SIGINT.
fn serve(state_dir: &Path, args: ServerArgs) -> Result<ExitCode> {
    let controller = config(state_dir, &args.settings)?;
    let backend = BackendKind::from_name(&args.backend).filter(|b| b.is_available());
    let Some(backend) = backend else { bail!("--backend {:?}: expected one of {}", args.backend, BackendKind::available_names()) };
    let settings = ServerSettings {
        tls: args.tls_cert.zip(args.tls_key),
        max_running_changes: args.max_running_changes,
        shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
        failed_login_delay: Duration::from_millis(args.failed_login_delay_ms),
        request_timeout: Duration::from_secs(args.request_timeout_secs),
        body_limit: args.body_limit,
        backend,
        ..ServerSettings::new(args.listen)
    };
    opschain::server::run(settings, controller)?;
    Ok(ExitCode::SUCCESS)
}

/// `opschain user`.
fn user(store: &Store, command: UserCommand) -> Result<ExitCode> {
    let role = |name: &str| Role::from_name(name).expect("clap allows only role names");
    match command {
        UserCommand::Add { name, role: r, .. } => {
            let password = accounts::read_password(&mut std::io::stdin().lock())?;
            accounts::add(store, &name, role(&r), &password)?;
            println!("user {name} added ({r})");
        }
        UserCommand::List => {
            println!("{:<24} {:<9} {:<24} UPDATED", "NAME", "ROLE", "CREATED");
            for u in accounts::list(store)? {
                println!("{:<24} {:<9} {:<24} {}", u.name, u.role, u.created_at, u.updated_at);
            }
        }
        UserCommand::Remove { name } => {
            accounts::remove(store, &name)?;
            println!("user {name} removed");
        }
        UserCommand::Passwd { name, role: r, .. } => {
            let password = accounts::read_password(&mut std::io::stdin().lock())?;
            accounts::set_password(store, &name, &password, r.as_deref().map(role))?;
            println!("password of user {name} set");
        }
    }
    Ok(ExitCode::SUCCESS)
}
