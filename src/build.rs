//! Step images: the default step Dockerfile, the build context of a step image, and the Docker
//! client that builds it.
//!
//! A step image is built `FROM ${OPSCHAIN_BASE_RUNNER}` out of a build context directory that
//! [`write_context`] writes:
//!
//! * `repo.tar` — the whole project repo at the change's commit, `.git` included;
//! * `step_context_env.json` — the env-relevant properties (`opschain.env`,
//!   `opschain.config.build_secrets`) of the project and environment, and the context values, for
//!   `opschain-exec`. It reaches `RUN` lines as a BuildKit secret, never as a layer;
//! * `Dockerfile` — the repo's `<folder>/Dockerfile` at that commit, else [`DEFAULT_DOCKERFILE`];
//!
//! with the build args `GIT_REV`, `GIT_SHA`, `OPSCHAIN_BASE_RUNNER` and `OPSCHAIN_VERSION`, and the
//! secrets to pass (`--secret id=...,src=...`): the context and each build secret set that applies
//! ([`crate::exec::build_secret_sets`]) and exists in the host's secrets directory.
//!
//! `RUN --mount=type=secret` needs BuildKit. [`Docker::detect`] is the one place that picks a docker
//! client able to drive it; it shells out to the docker CLI with `std::process` only, and nothing in
//! the in-container agent's step or `opschain-exec` paths calls it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};

use serde_json::{Map, Value};

use crate::context::StepContext;
use crate::exec;
use crate::json::{self, JsonError, PointerError};
use crate::layout::DEFAULT_REPO_FOLDER;

/// The default step Dockerfile, as `opschain-runner create-dockerfile` prints it. No `# syntax=`
/// line: the engine's built-in Dockerfile frontend handles `RUN --mount=type=secret`, and pulling a
/// frontend image would need a registry.
///
/// The `RUN` line mounts the build context file where `opschain-exec` finds it and the default
/// build secret set under `/run/secrets`, both readable by the runner user (uid 10001) and by root,
/// then runs the repo's optional setup hook, `.opschain/setup`, through `opschain-exec`.
pub const DEFAULT_DOCKERFILE: &str = r#"# The default OpsChain step runner Dockerfile (opschain-runner create-dockerfile).
# Copy it to .opschain/Dockerfile in your repository to customise the step image.
# Build context: repo.tar (the repository with .git), step_context_env.json (mounted as a secret).
# Build args: OPSCHAIN_BASE_RUNNER, OPSCHAIN_VERSION, GIT_REV, GIT_SHA.
ARG OPSCHAIN_BASE_RUNNER
FROM ${OPSCHAIN_BASE_RUNNER}

ARG OPSCHAIN_VERSION
ADD repo.tar /opt/opschain/
WORKDIR /opt/opschain

ARG GIT_REV
ARG GIT_SHA
# The digest of step_context_env.json: a change of the env properties reruns the RUN line below
# (a secret mount alone is not part of the build cache key).
ARG OPSCHAIN_CONTEXT_DIGEST

# Commands run through opschain-exec see the project's and environment's opschain.env variables and
# the build secrets; neither is stored in the image. Add a --mount line for each build secret set
# your project or environment lists in opschain.config.build_secrets.
RUN --mount=type=secret,id=step_context_env,target=/opt/opschain/.opschain/step_context_env.json,uid=10001,gid=10001 \
    --mount=type=secret,id=opschain-build-env,uid=10001,gid=10001 \
    opschain-exec /bin/sh -c 'if [ -x .opschain/setup ]; then exec .opschain/setup; fi'
"#;

/// The name of the repo archive in a build context.
pub const REPO_TAR: &str = "repo.tar";

/// The name of the context file in a build context (and inside the repo when mounted).
pub const CONTEXT_FILE: &str = "step_context_env.json";

/// The BuildKit secret id of the context file.
pub const CONTEXT_SECRET_ID: &str = "step_context_env";

/// The owner (uid and gid) of every file in `repo.tar`: the runner user of the runner image, so
/// that the agent can write `step_result.json` under `/opt/opschain` once `ADD` unpacked it.
pub const REPO_OWNER: u32 = 10001;

/// Why a build context could not be written or an image built. [`crate::exit::of_build`] maps each
/// to an exit status.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The step context given for the build is unreadable or invalid.
    #[error(transparent)]
    Context(JsonError),
    /// The step context's `opschain.config.build_secrets` is invalid.
    #[error("the step context's build secrets: {source}")]
    SecretSets {
        /// Where and what.
        #[source]
        source: PointerError,
    },
    /// A build secret set on this host is unreadable or invalid (names the file and the pointer,
    /// never a value).
    #[error("build secret set {source}")]
    SecretSet {
        /// What is wrong with it.
        #[source]
        source: exec::ExecError,
    },
    /// The revision does not name a commit of the repo.
    #[error("{}: cannot resolve revision {rev:?}: {source}", repo.display())]
    Revision {
        /// The repo.
        repo: PathBuf,
        /// The revision as given.
        rev: String,
        /// What git said.
        #[source]
        source: ToolFailure,
    },
    /// The output directory cannot be created, or is not empty.
    #[error("{}: cannot use as the build context directory: {source}", path.display())]
    OutDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The repo's `<folder>/Dockerfile` cannot be used: unreadable, not a regular file, or reached
    /// through a symlink out of the repository.
    #[error("{}: cannot use as the step Dockerfile: {source}", path.display())]
    Dockerfile {
        /// The Dockerfile in the checkout.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file of the build context cannot be written.
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A tool (git, tar) could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A tool (git, tar) failed.
    #[error("{command} failed: {source}")]
    Tool {
        /// The command line, for the reader.
        command: String,
        /// Its status and what it said.
        #[source]
        source: ToolFailure,
    },
    /// The docker client failed.
    #[error(transparent)]
    Docker(#[from] DockerError),
}

/// A command that ran and failed: its status and the end of its stderr.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {stderr}")]
pub struct ToolFailure {
    /// How it ended.
    pub status: ExitStatus,
    /// Its stderr, trimmed (the last 2000 bytes).
    pub stderr: String,
}

impl ToolFailure {
    fn of(output: &Output) -> ToolFailure {
        let text = String::from_utf8_lossy(&output.stderr);
        let text = text.trim();
        let start = text.len().saturating_sub(2000);
        let start = (start..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
        ToolFailure { status: output.status, stderr: text[start..].to_string() }
    }
}

/// What to build a context of.
#[derive(Debug, Clone)]
pub struct BuildContextSpec {
    /// The project's Git repository on this host (a work tree or a bare repo).
    pub repo: PathBuf,
    /// The OpsChain folder in the repo. Default: `.opschain`.
    pub folder: String,
    /// The revision of the change (`GIT_REV`): a branch, tag or SHA. Default: `HEAD`.
    pub git_rev: String,
    /// The step context document (`{"context", "project", "environment"}`); only its context values
    /// and env-relevant properties reach the build. Default: `{}`.
    pub context: Map<String, Value>,
    /// The base runner image (`OPSCHAIN_BASE_RUNNER`). Default: `opschain-runner:<version>`.
    pub base_runner: String,
    /// The OpsChain version (`OPSCHAIN_VERSION`). Default: this crate's version.
    pub opschain_version: String,
    /// The host directory of the build secret sets, one JSON file per set named like the set.
    /// Default: none, no build secrets.
    pub secrets_dir: Option<PathBuf>,
    /// The build context directory to write; created, and must be empty if it exists.
    pub out: PathBuf,
}

impl BuildContextSpec {
    /// A spec with the defaults for `repo`, written to `out`.
    pub fn new(repo: impl Into<PathBuf>, out: impl Into<PathBuf>) -> BuildContextSpec {
        let version = env!("CARGO_PKG_VERSION").to_string();
        BuildContextSpec {
            repo: repo.into(),
            folder: DEFAULT_REPO_FOLDER.into(),
            git_rev: "HEAD".into(),
            context: Map::new(),
            base_runner: format!("opschain-runner:{version}"),
            opschain_version: version,
            secrets_dir: None,
            out: out.into(),
        }
    }
}

/// A build secret to pass to the build: `--secret id=<id>,src=<src>`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BuildSecret {
    /// The secret id a `RUN --mount=type=secret,id=<id>` names.
    pub id: String,
    /// The file holding it.
    pub src: PathBuf,
}

/// A written build context: what to hand to the builder.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildContext {
    /// The build context directory.
    pub dir: PathBuf,
    /// Its Dockerfile.
    pub dockerfile: PathBuf,
    /// Whether the Dockerfile is the repo's own (`<folder>/Dockerfile`) rather than the default.
    pub custom_dockerfile: bool,
    /// The commit `git_rev` resolved to (`GIT_SHA`).
    pub git_sha: String,
    /// The build args, in order: `GIT_REV`, `GIT_SHA`, `OPSCHAIN_BASE_RUNNER`, `OPSCHAIN_VERSION`,
    /// and `OPSCHAIN_CONTEXT_DIGEST` (the git blob id of `step_context_env.json`: declared before a
    /// `RUN` line, it makes a change of the env properties rerun it; secret mounts are not part of
    /// BuildKit's cache key).
    pub build_args: Vec<(String, String)>,
    /// The secrets: the context file first, then each build secret set that applies and exists.
    pub secrets: Vec<BuildSecret>,
}

impl BuildContext {
    /// The arguments of `docker build` for this context, tagging the image `tag`: `--progress=plain`
    /// (a log a person can read), `--file`,
    /// `--build-arg` each, `--secret` each, `--tag`, and the directory last.
    pub fn docker_build_args(&self, tag: &str) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["build".into(), "--progress=plain".into(), "--file".into(), self.dockerfile.clone().into()];
        for (name, value) in &self.build_args {
            args.push("--build-arg".into());
            args.push(format!("{name}={value}").into());
        }
        for secret in &self.secrets {
            let mut spec = OsString::from(format!("id={},src=", secret.id));
            spec.push(&secret.src);
            args.push("--secret".into());
            args.push(spec);
        }
        args.extend(["--tag".into(), tag.into(), self.dir.clone().into()]);
        args
    }
}

/// The env-relevant part of a step context: the context values as they are, and of the project
/// and environment properties only `opschain.env`, `opschain.config.build_secrets` and the seed
/// layout's top-level `env` when it is an object.
pub fn env_context(context: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    if let Some(values) = context.get("context") {
        out.insert("context".into(), values.clone());
    }
    for level in ["project", "environment"] {
        let props = context.get(level).and_then(|l| l.get("properties")).and_then(Value::as_object);
        let opschain = props.and_then(|p| p.get("opschain")).and_then(Value::as_object);
        let mut kept = Map::new();
        if let Some(env) = opschain.and_then(|o| o.get("env")) {
            kept.insert("env".into(), env.clone());
        }
        if let Some(sets) = opschain.and_then(|o| o.get("config")).and_then(|c| c.get("build_secrets")) {
            kept.insert("config".into(), serde_json::json!({ "build_secrets": sets }));
        }
        let mut properties = if kept.is_empty() { Map::new() } else { Map::from_iter([("opschain".to_string(), Value::Object(kept))]) };
        // The seed layout's top-level `env`, when it is a declaration (an object): see
        // `properties::declarations`.
        if let Some(env) = props.and_then(|p| p.get("env")).filter(|env| env.is_object()) {
            properties.insert("env".into(), env.clone());
        }
        out.insert(level.into(), serde_json::json!({ "properties": properties }));
    }
    out
}

fn run_tool(command: &mut Command) -> Result<Output, BuildError> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command.output().map_err(|source| BuildError::Spawn { program, source })?;
    if output.status.success() {
        Ok(output)
    } else {
        let line = std::iter::once(command.get_program()).chain(command.get_args()).map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ");
        Err(BuildError::Tool { command: line, source: ToolFailure::of(&output) })
    }
}

/// Resolves `rev` to the full SHA of a commit of `repo` (`git rev-parse --verify REV^{commit}`).
pub fn resolve_revision(repo: &Path, rev: &str) -> Result<String, BuildError> {
    let output = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["rev-parse", "--verify", "--quiet", "--end-of-options"])
        .arg(format!("{rev}^{{commit}}"))
        .output()
        .map_err(|source| BuildError::Spawn { program: "git".into(), source })?;
    if !output.status.success() {
        let mut source = ToolFailure::of(&output);
        if source.stderr.is_empty() {
            source.stderr = "not a commit of this repository".into();
        }
        return Err(BuildError::Revision { repo: repo.to_path_buf(), rev: rev.to_string(), source });
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Writes the build context of `spec` (see the module docs) and says how to build it.
///
/// `repo.tar` is a local clone of the repo checked out (detached) at the commit, archived whole by
/// the system `tar` with every entry owned by [`REPO_OWNER`] and in name order: a clone, because
/// `git archive` leaves `.git` out and the repo's own work tree may be dirty or at another commit; a
/// local clone shares the object store, so any commit of the repo, reachable or not, checks out.
/// The archive is byte for byte the same for the same commit while the repo's refs are unchanged
/// (index without stat data, no reflogs, every mtime the commit's), so the image build cache holds
/// from one step to the next.
pub fn write_context(spec: &BuildContextSpec) -> Result<BuildContext, BuildError> {
    let out = &spec.out;
    let out_dir = |source| BuildError::OutDir { path: out.clone(), source };
    std::fs::create_dir_all(out).map_err(out_dir)?;
    if std::fs::read_dir(out).map_err(out_dir)?.next().is_some() {
        return Err(out_dir(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "not empty")));
    }
    let out = std::fs::canonicalize(out).map_err(out_dir)?;

    // The context first: a bad one stops before any copying.
    let env_doc = env_context(&spec.context);
    let context_path = out.join(CONTEXT_FILE);
    let mut bytes = serde_json::to_vec_pretty(&env_doc).unwrap_or_default();
    bytes.push(b'\n');
    let parsed: StepContext = json::parse(&context_path, &bytes).map_err(BuildError::Context)?;
    let sets = exec::build_secret_sets(&parsed).map_err(|source| BuildError::SecretSets { source })?;

    let git_sha = resolve_revision(&spec.repo, &spec.git_rev)?;
    let checkout = out.join(".checkout");
    let archived = archive_commit(spec, &git_sha, &checkout, &out.join(REPO_TAR));
    // The checkout goes whatever happened: the directory is left with the context files only.
    let removed = std::fs::remove_dir_all(&checkout);
    let (dockerfile_text, custom_dockerfile) = archived?;
    removed.map_err(|source| BuildError::Write { path: checkout.clone(), source })?;
    let dockerfile = out.join("Dockerfile");
    let write = |path: &Path, bytes: &[u8]| std::fs::write(path, bytes).map_err(|source| BuildError::Write { path: path.to_path_buf(), source });
    write(&dockerfile, &dockerfile_text)?;
    write(&context_path, &bytes)?;
    let digest = run_tool(Command::new("git").arg("hash-object").arg(&context_path))?;
    let digest = String::from_utf8_lossy(&digest.stdout).trim().to_string();

    let mut secrets = vec![BuildSecret { id: CONTEXT_SECRET_ID.into(), src: context_path }];
    if let Some(dir) = &spec.secrets_dir {
        for set in sets {
            let src = dir.join(&set);
            // Checked here too, so that a bad set fails before the build rather than in a RUN line.
            if exec::read_secret_set(&src, crate::json::SizeLimit::DEFAULT).map_err(|source| BuildError::SecretSet { source })?.is_some()
                && !secrets.iter().any(|s| s.id == set)
            {
                secrets.push(BuildSecret { id: set, src });
            }
        }
    }
    Ok(BuildContext {
        dir: out,
        dockerfile,
        custom_dockerfile,
        build_args: vec![
            ("GIT_REV".into(), spec.git_rev.clone()),
            ("GIT_SHA".into(), git_sha.clone()),
            ("OPSCHAIN_BASE_RUNNER".into(), spec.base_runner.clone()),
            ("OPSCHAIN_VERSION".into(), spec.opschain_version.clone()),
            ("OPSCHAIN_CONTEXT_DIGEST".into(), digest),
        ],
        git_sha,
        secrets,
    })
}

/// Clones the repo into `checkout` at `sha`, archives it to `repo_tar` (see [`write_context`]) and
/// returns the Dockerfile to use: the repo's `<folder>/Dockerfile` at that commit (a regular file
/// inside the checkout; a symlink is refused, so a repo cannot pull a host file into the context),
/// else the default one, and whether it is the repo's.
fn archive_commit(spec: &BuildContextSpec, sha: &str, checkout: &Path, repo_tar: &Path) -> Result<(Vec<u8>, bool), BuildError> {
    run_tool(Command::new("git").args(["clone", "--quiet", "--no-checkout"]).arg(&spec.repo).arg(checkout))?;
    let git = |args: &[&str]| run_tool(Command::new("git").arg("-C").arg(checkout).args(args));
    git(&["-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", sha])?;
    // Make the archive a function of the commit and the repo's refs only: an index without the
    // checkout's stat data (git refreshes it on first use), no reflogs (timestamps of this clone),
    // every mtime the commit's.
    git(&["read-tree", sha])?;
    let logs = checkout.join(".git/logs");
    std::fs::remove_dir_all(&logs).map_err(|source| BuildError::Write { path: logs, source })?;
    let commit_time = String::from_utf8_lossy(&git(&["show", "--no-patch", "--format=%ct", sha])?.stdout).trim().to_string();
    let owner = REPO_OWNER.to_string();
    run_tool(
        Command::new("tar")
            .args(["--format=gnu", "--sort=name", "--numeric-owner", "--hard-dereference"])
            .arg(format!("--owner={owner}"))
            .arg(format!("--group={owner}"))
            .arg(format!("--mtime=@{commit_time}"))
            .arg("-C")
            .arg(checkout)
            .arg("-cf")
            .arg(repo_tar)
            .arg("."),
    )?;

    let custom = checkout.join(&spec.folder).join("Dockerfile");
    let refuse = |message: &str| BuildError::Dockerfile { path: custom.clone(), source: std::io::Error::new(std::io::ErrorKind::InvalidData, message) };
    match std::fs::symlink_metadata(&custom) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((DEFAULT_DOCKERFILE.as_bytes().to_vec(), false)),
        Err(source) => return Err(BuildError::Dockerfile { path: custom, source }),
        Ok(meta) if !meta.is_file() => return Err(refuse("not a regular file (a symlink or a directory)")),
        Ok(_) => {}
    }
    let inside = |path: &Path| std::fs::canonicalize(path).ok();
    if inside(custom.parent().unwrap_or(checkout)).zip(inside(checkout)).is_none_or(|(dir, root)| !dir.starts_with(root)) {
        return Err(refuse("its folder leads out of the repository"));
    }
    let text = std::fs::read(&custom).map_err(|source| BuildError::Dockerfile { path: custom.clone(), source })?;
    Ok((text, true))
}

/// Why the docker client could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// No candidate client reaches an engine and builds with BuildKit.
    #[error("no docker client able to build with BuildKit (needed for RUN --mount=type=secret): {}", reasons.join("; "))]
    NoBuilder {
        /// Each candidate tried and why it was passed over.
        reasons: Vec<String>,
    },
    /// The client could not be started.
    #[error("cannot run {}: {source}", program.display())]
    Spawn {
        /// The client.
        program: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A docker command failed.
    #[error("docker {command} failed: {source}")]
    Failed {
        /// The docker subcommand and its first arguments.
        command: String,
        /// Its status and what it said.
        #[source]
        source: ToolFailure,
    },
}

/// A docker CLI that reaches the engine and builds with BuildKit (`DOCKER_BUILDKIT=1`), so that
/// `--secret` and `RUN --mount=type=secret` work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Docker {
    /// The client program.
    pub program: PathBuf,
}

impl Docker {
    /// The clients tried, in order, after `OPSCHAIN_DOCKER` when that is set: Debian's
    /// `/usr/bin/docker` (the engine's own package; its classic CLI drives BuildKit itself), then
    /// `docker` on `PATH` (a newer CLI drives BuildKit only through the buildx plugin).
    pub const CANDIDATES: [&'static str; 2] = ["/usr/bin/docker", "docker"];

    /// Picks the first client that reaches the engine (`docker version`) and whose `build` takes
    /// `--secret` with `DOCKER_BUILDKIT=1`, of `$OPSCHAIN_DOCKER` (when set) and
    /// [`Docker::CANDIDATES`]. The error lists every candidate and why it failed.
    pub fn detect() -> Result<Docker, DockerError> {
        let mut candidates: Vec<PathBuf> = std::env::var_os("OPSCHAIN_DOCKER").filter(|v| !v.is_empty()).map(PathBuf::from).into_iter().collect();
        candidates.extend(Docker::CANDIDATES.iter().map(PathBuf::from));
        Docker::detect_from(candidates)
    }

    /// [`Docker::detect`] over the given candidate programs, in order.
    pub fn detect_from(candidates: impl IntoIterator<Item = PathBuf>) -> Result<Docker, DockerError> {
        let mut reasons = Vec::new();
        for program in candidates {
            let docker = Docker { program };
            match docker.check() {
                Ok(()) => return Ok(docker),
                Err(reason) => reasons.push(format!("{}: {reason}", docker.program.display())),
            }
        }
        Err(DockerError::NoBuilder { reasons })
    }

    fn check(&self) -> Result<(), String> {
        let version = self.command().args(["version", "--format", "{{.Server.APIVersion}}"]).output().map_err(|e| e.to_string())?;
        if !version.status.success() {
            return Err(format!("no engine: {}", ToolFailure::of(&version)));
        }
        let help = self.command().args(["build", "--help"]).output().map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&help.stdout);
        if !help.status.success() || !text.contains("--secret") {
            return Err(format!("no BuildKit builds (`build --secret` unsupported): {}", ToolFailure::of(&help)));
        }
        Ok(())
    }

    /// A command of this client, with `DOCKER_BUILDKIT=1`.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.env("DOCKER_BUILDKIT", "1");
        command
    }

    /// Runs `docker ARGS...` and returns its output; a failure is an error with its stderr.
    pub fn run<I, S>(&self, args: I) -> Result<Output, DockerError>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let output = self.command().args(&args).output().map_err(|source| DockerError::Spawn { program: self.program.clone(), source })?;
        if output.status.success() {
            Ok(output)
        } else {
            let command = args.iter().take(3).map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ");
            Err(DockerError::Failed { command, source: ToolFailure::of(&output) })
        }
    }

    /// Builds the step image of `context`, tagged `tag`, with its build args and secrets.
    pub fn build(&self, context: &BuildContext, tag: &str) -> Result<Output, DockerError> {
        self.run(context.docker_build_args(tag))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn env_context_keeps_only_env_relevant_properties() {
        let doc = json!({
            "context": {"project": {"code": "p"}, "environment": {"code": "e"}},
            "project": {"properties": {"db": {"password": "x"}, "opschain": {"env": {"A": "1"}, "files": {"f": {}}, "config": {"build_secrets": ["s"], "other": 1}}}},
            "environment": {"properties": {"opschain": {"files": {}}}},
            "secrets": {"RUNNER": "never-in-a-build"}
        });
        let out = Value::Object(env_context(doc.as_object().unwrap()));
        assert_eq!(
            out,
            json!({
                "context": {"project": {"code": "p"}, "environment": {"code": "e"}},
                "project": {"properties": {"opschain": {"env": {"A": "1"}, "config": {"build_secrets": ["s"]}}}},
                "environment": {"properties": {}}
            })
        );
        // The seed layout: a top-level `env` object is env-relevant, one that is data is not.
        let doc = json!({
            "project": {"properties": {"env": {"A": "1"}, "files": {"f": {}}, "name": "x"}},
            "environment": {"properties": {"env": "production"}}
        });
        let out = Value::Object(env_context(doc.as_object().unwrap()));
        assert_eq!(out, json!({"project": {"properties": {"env": {"A": "1"}}}, "environment": {"properties": {}}}));
    }

    #[test]
    fn detect_says_why_each_candidate_was_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        // A "docker" that reaches no engine, and one whose build has no --secret (a CLI without buildx).
        let script = |name: &str, body: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
            path
        };
        let no_engine = script("no-engine", "echo 'Cannot connect to the Docker daemon' >&2; exit 1");
        let no_buildkit = script("no-buildkit", "[ \"$1\" = version ] && exit 0; echo 'ERROR: BuildKit is enabled but the buildx component is missing' >&2; exit 1");
        let good = script("good", "[ \"$1\" = version ] && exit 0; echo '      --secret stringArray   Secret file to expose to the build'");
        let missing = dir.path().join("missing");
        let err = Docker::detect_from([missing.clone(), no_engine, no_buildkit]).unwrap_err().to_string();
        assert!(err.contains("missing: No such file") && err.contains("no engine: exit status: 1: Cannot connect"), "{err}");
        assert!(err.contains("no BuildKit builds") && err.contains("buildx component is missing"), "{err}");
        assert_eq!(Docker::detect_from([missing, good.clone()]).unwrap(), Docker { program: good });
    }

    #[test]
    fn default_dockerfile_has_the_documented_lines() {
        let lines: Vec<&str> = DEFAULT_DOCKERFILE.lines().collect();
        for line in ["ARG OPSCHAIN_BASE_RUNNER", "FROM ${OPSCHAIN_BASE_RUNNER}", "ADD repo.tar /opt/opschain/", "ARG GIT_REV", "ARG GIT_SHA", "ARG OPSCHAIN_CONTEXT_DIGEST"] {
            assert!(lines.contains(&line), "{line}");
        }
        assert!(DEFAULT_DOCKERFILE.contains("RUN --mount=type=secret,id=step_context_env,"));
        assert!(DEFAULT_DOCKERFILE.contains("--mount=type=secret,id=opschain-build-env"));
        assert!(DEFAULT_DOCKERFILE.contains("opschain-exec "));
        assert!(!DEFAULT_DOCKERFILE.contains("syntax="));
    }
}
