//! `opschain`: the host-side companion controller. Runs changes (an action of a project's
//! repository, at a commit, in an environment) as trees of steps, each step one run of the
//! `opschain-runner` agent, and keeps projects, environments, properties (every version), changes,
//! steps, logs and secret sets in one SQLite file under the state directory.

// The doc comments of the command-line types are the `--help` texts, where `<repo>` and the like
// are placeholders the user reads, not HTML.
#![allow(rustdoc::invalid_html_tags)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::{Map, Value};

use opschain_runner::controller::backend::docker::DockerConfig;
use opschain_runner::controller::change::{self, ControllerConfig, NewChange};
use opschain_runner::controller::scheduler::{default_workers, SchedulerConfig};
use opschain_runner::controller::status::{ChangeStatus, StepStatus};
use opschain_runner::controller::store::{Level, StepRow, Store};

/// The OpsChain-compatible controller: runs changes as step trees, keeps properties and history.
///
/// A change runs an action of a project's repository at one commit in one environment. Each step
/// runs the agent (`opschain-runner`) in a fresh checkout; the children a step reports run after
/// it, in sequence or in parallel; each step's property diffs are applied to the stored
/// properties when it ends.
///
/// Examples:
///
///   opschain demo                                      # the demo change, end to end
///
///   opschain change run --repo . --project web --environment dev --action deploy
///
///   opschain change show 3 ; opschain change logs 3 ; opschain change retry 3
///
///   opschain properties set --project web --environment dev --json '{"replicas": 2}'
#[derive(Debug, Parser)]
#[command(name = "opschain", version, verbatim_doc_comment)]
struct Cli {
    /// State directory: the database (opschain.db), repository snapshots and step sandboxes.
    /// Default: $XDG_STATE_HOME/opschain, else ~/.local/state/opschain, else ./.opschain-state.
    #[arg(long, global = true, env = "OPSCHAIN_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run, list, show, print the logs of, retry and cancel changes.
    #[command(subcommand)]
    Change(ChangeCommand),
    /// Show, set, edit and list the versions of project or environment properties.
    #[command(subcommand)]
    Properties(PropertiesCommand),
    /// Manage secret sets (build secrets; runner secrets for the process backend).
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Project settings.
    #[command(subcommand)]
    Project(ProjectCommand),
    /// Run the demo change (fixtures/demo: project demo, environment dev, action deploy) on the
    /// process backend, with its secret set `demo` created when missing.
    Demo(DemoArgs),
}

/// How steps run: shared by `change run`, `change retry` and `demo`.
#[derive(Debug, Args)]
struct RunSettings {
    /// How many steps run at once (parallel children beyond it wait). Default: 8 per CPU (steps
    /// mostly wait on I/O, see `scheduler::default_workers`).
    #[arg(long, env = "OPSCHAIN_WORKERS", value_name = "N")]
    workers: Option<usize>,
    /// The agent binary. Default: `opschain-runner` next to this binary.
    #[arg(long, env = "OPSCHAIN_RUNNER_BIN", value_name = "PATH")]
    runner_bin: Option<PathBuf>,
    /// Seconds between SIGTERM and SIGKILL when a step is cancelled.
    #[arg(long, env = "OPSCHAIN_GRACE_SECS", default_value_t = 10, value_name = "SECS")]
    grace_secs: u64,
    /// Keep each step's sandbox (under <state dir>/sandboxes) for debugging.
    #[arg(long, env = "OPSCHAIN_KEEP_SANDBOXES")]
    keep_sandboxes: bool,
    /// The docker CLI of the Docker backend (Debian's client builds with BuildKit).
    #[arg(long, env = "OPSCHAIN_DOCKER_BIN", default_value = "/usr/bin/docker", value_name = "PATH")]
    docker_bin: PathBuf,
    /// The base runner image of the Docker backend's default Dockerfile (must exist locally).
    #[arg(long, env = "OPSCHAIN_DOCKER_BASE_IMAGE", default_value = "opschain-runner:latest", value_name = "IMAGE")]
    docker_base_image: String,
    /// How the Docker backend passes the step context in and gets step_result.json back:
    /// `bind-mount` (the repository folder mounted from this host) or `stream` (the context on the
    /// container's stdin, the result framed in its output: nothing shared with the host; see
    /// docs/transport.md). The Kubernetes backend always streams.
    #[arg(long, env = "OPSCHAIN_TRANSPORT", default_value = "bind-mount", value_parser = ["bind-mount", "stream"], value_name = "NAME")]
    transport: String,
    /// A registry (HOST:PORT) to push each step image built to; steps run the registry's copy
    /// and an image the registry has is pulled, not rebuilt. Default: none (local images only).
    #[arg(long, env = "OPSCHAIN_REGISTRY", value_name = "HOST:PORT")]
    registry: Option<String>,
    /// The Kubernetes backend's settings.
    #[cfg(feature = "kubernetes")]
    #[command(flatten)]
    kube: KubeSettings,
}

/// The backends this build offers to `--backend`.
fn backends() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(change::KNOWN_BACKENDS.split(", "))
}

/// The Kubernetes backend's settings (`--backend kubernetes`).
#[cfg(feature = "kubernetes")]
#[derive(Debug, Args)]
struct KubeSettings {
    /// The namespace of the steps' Jobs and Secrets.
    #[arg(long, env = "OPSCHAIN_KUBE_NAMESPACE", default_value = "default", value_name = "NAME")]
    kube_namespace: String,
    /// A Secret (of type kubernetes.io/dockerconfigjson) the pods pull the step images with.
    #[arg(long, env = "OPSCHAIN_KUBE_IMAGE_PULL_SECRET", value_name = "NAME")]
    kube_image_pull_secret: Option<String>,
    /// The step container's resource requests, e.g. cpu=500m,memory=256Mi. Default: none.
    #[arg(long, env = "OPSCHAIN_KUBE_REQUESTS", default_value = "", value_name = "K=V,...")]
    kube_requests: String,
    /// The step container's resource limits, e.g. memory=1Gi. Default: none.
    #[arg(long, env = "OPSCHAIN_KUBE_LIMITS", default_value = "", value_name = "K=V,...")]
    kube_limits: String,
    /// The pods' node selector, e.g. pool=steps. Default: none.
    #[arg(long, env = "OPSCHAIN_KUBE_NODE_SELECTOR", default_value = "", value_name = "K=V,...")]
    kube_node_selector: String,
    /// Seconds a finished Job and its Secret are kept (for kubectl logs) before the cluster
    /// removes them.
    #[arg(long, env = "OPSCHAIN_KUBE_TTL_SECS", default_value_t = 600, value_name = "SECS")]
    kube_ttl_secs: i32,
    /// Seconds a pod may take to start (scheduling, image pull) before the step fails; also
    /// added to the action's timeouts in the Job's activeDeadlineSeconds.
    #[arg(long, env = "OPSCHAIN_KUBE_START_SECS", default_value_t = 300, value_name = "SECS")]
    kube_start_secs: u64,
}

#[cfg(feature = "kubernetes")]
fn kube_config(s: &RunSettings) -> Result<opschain_runner::controller::backend::kubernetes::KubernetesConfig> {
    use opschain_runner::controller::backend::kubernetes::{parse_map, KubernetesConfig};
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
    })
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The project's repository: a git work tree, or a plain directory (snapshotted into a git
    /// repository under the state directory, then run from that commit).
    #[arg(long, value_name = "DIR")]
    repo: PathBuf,
    /// The project code (created when new).
    #[arg(long, value_name = "CODE")]
    project: String,
    /// The environment code (created when new).
    #[arg(long, value_name = "CODE")]
    environment: String,
    /// The action of the change's root step.
    #[arg(long, value_name = "NAME")]
    action: String,
    /// The git revision to run (resolved to a commit when the change is created).
    #[arg(long, default_value = "HEAD", value_name = "REV")]
    git_rev: String,
    /// Where steps run: `process` (a checkout and a child process), `docker` (an image and a
    /// container per step), or, in a build with the `kubernetes` feature, `kubernetes` (a Job per
    /// step in the cluster of the kubeconfig; needs --registry).
    #[arg(long, env = "OPSCHAIN_BACKEND", default_value = "process", value_parser = backends(), value_name = "NAME")]
    backend: String,
    /// The secret set the steps get (see `opschain secrets set`).
    #[arg(long, value_name = "NAME")]
    secrets: Option<String>,
    #[command(flatten)]
    settings: RunSettings,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// The demo project directory.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/demo"), value_name = "DIR")]
    repo: PathBuf,
    #[command(flatten)]
    settings: RunSettings,
}

#[derive(Debug, Subcommand)]
enum ChangeCommand {
    /// Create a change at a commit and run it; streams step logs and phase messages, exits 0 when
    /// the change succeeds, 1 when it errors, 2 when it is cancelled.
    Run(RunArgs),
    /// List the changes.
    List,
    /// Show a change and its step tree with statuses.
    Show {
        /// The change id.
        id: i64,
    },
    /// Print a change's step logs.
    Logs {
        /// The change id.
        id: i64,
    },
    /// Re-run what did not succeed in a change, from the same commit.
    Retry {
        /// The change id.
        id: i64,
        #[command(flatten)]
        settings: RunSettings,
    },
    /// Cancel a change: pending, queued and running steps become cancelled.
    Cancel {
        /// The change id.
        id: i64,
    },
}

/// Which properties: a project's, or with `--environment` one of its environments'.
#[derive(Debug, Args)]
struct Owner {
    /// The project code.
    #[arg(long, value_name = "CODE")]
    project: String,
    /// The environment code; without it, the project's properties.
    #[arg(long, value_name = "CODE")]
    environment: Option<String>,
}

#[derive(Debug, Subcommand)]
enum PropertiesCommand {
    /// Print the current properties (or `--version N`).
    Show {
        #[command(flatten)]
        owner: Owner,
        /// A stored version instead of the current one.
        #[arg(long, value_name = "N")]
        version: Option<i64>,
    },
    /// Replace the properties with a JSON object from FILE (`-` for stdin) or `--json`.
    Set {
        #[command(flatten)]
        owner: Owner,
        /// The JSON file.
        #[arg(value_name = "FILE", required_unless_present = "json", conflicts_with = "json")]
        file: Option<PathBuf>,
        /// The JSON object itself.
        #[arg(long, value_name = "JSON")]
        json: Option<String>,
    },
    /// Edit the properties in $VISUAL / $EDITOR (default vi); saved as a new version when changed.
    Edit {
        #[command(flatten)]
        owner: Owner,
    },
    /// List every stored version: number, time, and the step that wrote it.
    History {
        #[command(flatten)]
        owner: Owner,
    },
}

#[derive(Debug, Subcommand)]
enum SecretsCommand {
    /// Create or replace secret set NAME from a JSON file `{"NAME": "value"}`.
    Set {
        /// The set's name.
        name: String,
        /// The JSON file.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
    /// List the secret sets (names only).
    List,
}

#[derive(Debug, Subcommand)]
enum ProjectCommand {
    /// Let (or stop letting) several changes of a project run at once in one environment.
    /// Default: one change at a time per environment; the others wait, `queued`.
    AllowParallelChanges {
        /// The project code.
        project: String,
        /// true or false.
        #[arg(action = clap::ArgAction::Set)]
        allow: bool,
    },
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
        docker: DockerConfig { docker: s.docker_bin.clone(), base_image: s.docker_base_image.clone(), grace: Duration::from_secs(s.grace_secs), transport: s.transport.parse().map_err(anyhow::Error::msg)?,
            registry: s.registry.as_deref().map(str::parse).transpose()?,
        },
        #[cfg(feature = "kubernetes")]
        kubernetes: kube_config(s)?,
    })
}

/// `cargo run --bin opschain` builds only this binary: when it runs from its cargo target
/// directory and the agent is missing beside it, build the agent with the same profile (so that
/// `cargo run --release --bin opschain -- demo` works from a fresh clone).
fn build_agent(agent: &Path) -> Result<()> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
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

fn owner_id(store: &Store, owner: &Owner) -> Result<(Level, i64)> {
    let project = store.ensure_project(&owner.project)?;
    Ok(match &owner.environment {
        Some(env) => (Level::Environment, store.ensure_environment(project, env)?),
        None => (Level::Project, project),
    })
}

fn parse_object(text: &str, what: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str::<Value>(text).with_context(|| format!("{what} is not valid JSON"))? {
        Value::Object(map) => Ok(map),
        _ => bail!("{what} is not a JSON object"),
    }
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

fn edit(initial: &str) -> Result<String> {
    let dir = tempfile_dir()?;
    let path = dir.join("properties.json");
    std::fs::write(&path, initial).with_context(|| format!("cannot write {}", path.display()))?;
    let editor = std::env::var("VISUAL").or_else(|_| std::env::var("EDITOR")).unwrap_or_else(|_| "vi".into());
    let status = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("editor")
        .arg(&path)
        .status()
        .with_context(|| format!("cannot run the editor {editor:?}"))?;
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()));
    let _ = std::fs::remove_dir_all(&dir);
    if !status.success() {
        bail!("the editor {editor:?} failed ({status}): nothing saved");
    }
    text
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("opschain-edit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

fn run() -> Result<ExitCode> {
    let cli = Cli::parse();
    // Absolute, because steps run with their sandbox (under it) as working directory.
    let state_dir = cli.state_dir.clone().unwrap_or_else(default_state_dir);
    let state_dir = std::path::absolute(&state_dir).with_context(|| format!("cannot resolve the state directory {}", state_dir.display()))?;
    let store = Store::open(&state_dir)?;
    match cli.command {
        Command::Change(ChangeCommand::Run(args)) => {
            let config = config(&state_dir, &args.settings)?;
            let new = NewChange {
                repo: args.repo,
                project: args.project,
                environment: args.environment,
                action: args.action,
                git_rev: args.git_rev,
                backend: args.backend,
                secret_set: args.secrets,
            };
            let id = change::create(&store, &config, &new)?;
            println!("==> change {id} created (state: {})", store.path().display());
            Ok(exit_of(change::execute(&store, &config, id)?))
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
                backend: "process".into(),
                secret_set: Some("demo".into()),
            };
            let id = change::create(&store, &config, &new)?;
            println!("==> change {id} created (state: {})", store.path().display());
            let status = change::execute(&store, &config, id)?;
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
        Command::Change(ChangeCommand::List) => {
            println!("{:>4}  {:<10} {:<12} {:<12} {:<20} {:<12} {:<8} created", "id", "status", "project", "environment", "action", "commit", "backend");
            for c in store.changes(None)? {
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
            let c = store.change(id)?;
            println!("change {} {}", c.id, c.status.as_str());
            println!("  project {}, environment {}, action {}", c.project, c.environment, c.action);
            println!("  commit {} ({}) from {}", c.commit, c.git_rev, c.repo.display());
            println!("  backend {}, created {}, finished {}", c.backend, c.created_at, c.finished_at.as_deref().unwrap_or("-"));
            println!("steps:");
            print_tree(&store.steps(id)?, None, 1);
            Ok(ExitCode::SUCCESS)
        }
        Command::Change(ChangeCommand::Logs { id }) => {
            store.change(id)?;
            let mut out = std::io::stdout().lock();
            for l in store.logs(id)? {
                let mark = if l.stream == "stderr" { "!" } else { " " };
                writeln!(out, "{} [{} {}]{mark} {}", l.at, l.step_id, l.action, l.line)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Change(ChangeCommand::Retry { id, settings }) => {
            let config = config(&state_dir, &settings)?;
            Ok(exit_of(change::retry(&store, &config, id)?))
        }
        Command::Change(ChangeCommand::Cancel { id }) => {
            match change::cancel(&store, id)? {
                ChangeStatus::Running => println!("change {id}: cancel requested; its controller stops it"),
                status => println!("change {id} {}", status.as_str()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Properties(PropertiesCommand::Show { owner, version }) => {
            let (level, id) = owner_id(&store, &owner)?;
            let json = match version {
                Some(v) => store.properties_version(level, id, v)?,
                None => store.properties(level, id)?.json,
            };
            println!("{}", serde_json::to_string_pretty(&Value::Object(json))?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Properties(PropertiesCommand::Set { owner, file, json }) => {
            let (level, id) = owner_id(&store, &owner)?;
            let map = match (file, json) {
                (_, Some(text)) => parse_object(&text, "--json")?,
                (Some(path), None) if path == Path::new("-") => {
                    let mut text = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("cannot read stdin")?;
                    parse_object(&text, "stdin")?
                }
                (Some(path), None) => {
                    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
                    parse_object(&text, &path.display().to_string())?
                }
                (None, None) => bail!("give a FILE or --json"),
            };
            let version = store.set_properties(level, id, &map)?;
            println!("{} properties saved as version {version}", level.as_str());
            Ok(ExitCode::SUCCESS)
        }
        Command::Properties(PropertiesCommand::Edit { owner }) => {
            let (level, id) = owner_id(&store, &owner)?;
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
        Command::Properties(PropertiesCommand::History { owner }) => {
            let (level, id) = owner_id(&store, &owner)?;
            for v in store.properties_history(level, id)? {
                let by = v.step_id.map(|s| format!("step {s}")).unwrap_or_else(|| "user".into());
                println!("v{:<4} {} {:<10} {}", v.version, v.created_at, by, Value::Object(v.json));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Secrets(SecretsCommand::Set { name, file }) => {
            let set = change::read_secret_file(&file).with_context(|| format!("cannot read the secret set file {}", file.display()))?;
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
        Command::Project(ProjectCommand::AllowParallelChanges { project, allow }) => {
            let id = store.ensure_project(&project)?;
            store.set_allow_parallel_changes(id, allow)?;
            println!("project {project}: parallel changes {}", if allow { "allowed" } else { "not allowed" });
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("opschain: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
