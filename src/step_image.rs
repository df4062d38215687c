//! Step images: the default step Dockerfile and the build context of a step image. One pipeline for
//! every builder: `opschain-runner build-context` and the controller's image backends call the same
//! [`plan`] and [`write_planned`] (or [`write_context`], both at once).
//!
//! A step image is built `FROM ${OPSCHAIN_BASE_RUNNER}` out of a build context directory holding:
//!
//! * `repo.tar` — the whole project repo at the change's commit, `.git` included;
//! * the env context — the env-var properties of the project and environment and the project and
//!   environment context values, for `opschain-exec`: `step_context_env.json` for the `.opschain`
//!   folder, `step_context.json.zip` (a zip holding `step_context.json`) for MintPress's
//!   `.mintpress` ([`EnvContextForm`]). It reaches `RUN` lines as a BuildKit secret, never a layer;
//! * `Dockerfile` — the repo's `<folder>/Dockerfile` at that commit, else [`default_dockerfile`];
//!
//! with the build args `GIT_REV`, `GIT_SHA`, `OPSCHAIN_BASE_RUNNER`, `OPSCHAIN_VERSION` (and this
//! runner's `OPSCHAIN_CONTEXT_DIGEST` and `OPSCHAIN_BUILD_SECRETS_DIGEST`), and two secrets: the env context, and the build secret
//! bundle [`BUILD_SECRETS_ID`] — every build secret set that applies
//! ([`crate::exec::build_secret_sets`]), merged in order into one JSON object, so that one mount
//! gives `opschain-exec` all of them whatever the project lists.
//!
//! Everything but the default Dockerfile and the names runs on the host (git and tar, through
//! `std::process`): the static agent's binary never calls it, so its link leaves it out. The
//! docker client that builds the image is the controller's (`opschain::image::docker`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};

use serde_json::{Map, Value};

use crate::context::{Level, StepContext};
use crate::exec;
use crate::json::{JsonError, PointerError, StrictObject};
use crate::layout::DEFAULT_REPO_FOLDER;

/// The base runner image's one name (`OPSCHAIN_BASE_RUNNER`'s default): `opschain-runner:latest`,
/// the tag `runner-image/README.md` builds.
pub const DEFAULT_BASE_RUNNER: &str = "opschain-runner:latest";

/// MintPress's OpsChain folder: its image builds get the env context as `step_context.json.zip`.
pub const MINTPRESS_FOLDER: &str = ".mintpress";

/// The name of the repo archive in a build context.
pub const REPO_TAR: &str = "repo.tar";

/// The name of the env context file in a build context of the `.opschain` folder (and inside the
/// repo when mounted).
pub const CONTEXT_FILE: &str = "step_context_env.json";

/// The BuildKit secret id of [`CONTEXT_FILE`].
pub const CONTEXT_SECRET_ID: &str = "step_context_env";

/// The name of the env context file in a build context of the `.mintpress` folder: a zip holding
/// [`crate::exec::ZIP_ENTRY`].
pub const CONTEXT_ZIP_FILE: &str = "step_context.json.zip";

/// The BuildKit secret id of [`CONTEXT_ZIP_FILE`].
pub const CONTEXT_ZIP_SECRET_ID: &str = "step_context_zip";

/// The BuildKit secret id of the build secret bundle: the build secret sets that apply, merged in
/// order (later wins) into one JSON object `{"NAME": "value"}`. `RUN
/// --mount=type=secret,id=opschain-build-secrets` puts it at `/run/secrets/opschain-build-secrets`,
/// where `opschain-exec` reads it ([`crate::exec::env_for`]).
pub const BUILD_SECRETS_ID: &str = crate::exec::BUILD_SECRETS_BUNDLE;

/// The build arg of the build secrets digest ([`ImagePlan`]'s `secrets_digest`): a Dockerfile
/// declares it before the `RUN` lines that mount the build secrets, so that their cache follows
/// the secrets.
pub const SECRETS_DIGEST_ARG: &str = "OPSCHAIN_BUILD_SECRETS_DIGEST";

/// Whether `dockerfile` has an `ARG name` (or `ARG name=default`) instruction, in any case, with
/// any indentation.
pub fn declares_arg(dockerfile: &str, name: &str) -> bool {
    dockerfile.lines().any(|line| {
        let mut words = line.split_whitespace();
        words.next().is_some_and(|w| w.eq_ignore_ascii_case("ARG")) && words.next().is_some_and(|w| w.split('=').next() == Some(name))
    })
}

/// The owner (uid and gid) of every file in `repo.tar`: the runner user of the runner image, so
/// that the agent can write `step_result.json` under `/opt/opschain` once `ADD` unpacked it.
pub const REPO_OWNER: u32 = 10001;

/// How the env context reaches a build: its file name in the build context and in the repo
/// folder, and its BuildKit secret id. Chosen by the folder, as each seed says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvContextForm {
    /// OpsChain (`.opschain`, and any folder but `.mintpress`): `step_context_env.json`.
    Json,
    /// MintPress (`.mintpress`): `step_context.json.zip`, a zip holding `step_context.json`.
    Zip,
}

impl EnvContextForm {
    /// The form the seed of `folder` describes: [`EnvContextForm::Zip`] for `.mintpress`, else
    /// [`EnvContextForm::Json`].
    pub fn of_folder(folder: &str) -> EnvContextForm {
        if folder == MINTPRESS_FOLDER {
            EnvContextForm::Zip
        } else {
            EnvContextForm::Json
        }
    }

    /// The file name (in the build context, and where the `RUN` line mounts it in the folder).
    pub fn file(self) -> &'static str {
        match self {
            EnvContextForm::Json => CONTEXT_FILE,
            EnvContextForm::Zip => CONTEXT_ZIP_FILE,
        }
    }

    /// The BuildKit secret id.
    pub fn secret_id(self) -> &'static str {
        match self {
            EnvContextForm::Json => CONTEXT_SECRET_ID,
            EnvContextForm::Zip => CONTEXT_ZIP_SECRET_ID,
        }
    }
}

/// The default step Dockerfile of the OpsChain folder `folder`, as `opschain-runner [--folder F]
/// create-dockerfile` prints it. No `# syntax=` line: the engine's built-in Dockerfile frontend
/// handles `RUN --mount=type=secret`, and pulling a frontend image would need a registry.
///
/// Its `RUN` line mounts the env context where `opschain-exec` finds it and the build secret
/// bundle at `/run/secrets/opschain-build-secrets`, both readable by the runner user (uid 10001)
/// and by root, then runs the repo's optional setup hook, `<folder>/setup`, through
/// `opschain-exec`. A folder other than `.opschain` is also set as `OPSCHAIN_REPO_FOLDER`, so that
/// `opschain-exec` and the agent look there.
pub fn default_dockerfile(folder: &str) -> String {
    let form = EnvContextForm::of_folder(folder);
    let (file, id) = (form.file(), form.secret_id());
    let folder_env = if folder == DEFAULT_REPO_FOLDER { String::new() } else { format!("ENV OPSCHAIN_REPO_FOLDER={folder}\n") };
    format!(
        r#"# The default OpsChain step runner Dockerfile (opschain-runner create-dockerfile).
# Copy it to {folder}/Dockerfile in your repository to customise the step image.
# Build context: repo.tar (the repository at the commit, .git included) and {file}
# (the env properties and context values; mounted as a secret below, never copied into a layer).
# Build args: OPSCHAIN_BASE_RUNNER, OPSCHAIN_VERSION, GIT_REV, GIT_SHA, OPSCHAIN_CONTEXT_DIGEST,
# OPSCHAIN_BUILD_SECRETS_DIGEST.
ARG OPSCHAIN_BASE_RUNNER
FROM ${{OPSCHAIN_BASE_RUNNER}}
{folder_env}
ARG OPSCHAIN_VERSION
ADD repo.tar /opt/opschain/
WORKDIR /opt/opschain

ARG GIT_REV
ARG GIT_SHA
# The digest of {file}: declared before the RUN lines that read it, so that a change of the env
# properties reruns them (a secret mount is not part of the build cache key). Keep it.
ARG OPSCHAIN_CONTEXT_DIGEST
# A keyed digest of the build secret sets that apply (their names and values; the key is the
# controller's, so the digest tells nothing of a value): a changed list or a rotated value reruns
# the RUN lines. Keep it.
ARG OPSCHAIN_BUILD_SECRETS_DIGEST

# Commands run through opschain-exec see the project's and environment's env properties and the
# build secrets: every set that applies (opschain.config.build_secrets of the project, then of the
# environment; else opschain-build-env), merged into the one opschain-build-secrets mount. Neither
# is stored in the image. Give each RUN line that uses opschain-exec these two --mount options.
RUN --mount=type=secret,id={id},target=/opt/opschain/{folder}/{file},uid=10001,gid=10001 \
    --mount=type=secret,id={BUILD_SECRETS_ID},uid=10001,gid=10001 \
    opschain-exec /bin/sh -c 'if [ -x {folder}/setup ]; then exec {folder}/setup; fi'
"#
    )
}

/// Why a build context could not be written or an image built. [`BuildError::exit_status`] maps
/// each to an exit status.
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
    /// A build secret set file on this host is unreadable or invalid (names the file and the
    /// pointer, never a value).
    #[error("build secret set {source}")]
    SecretSet {
        /// What is wrong with it.
        #[source]
        source: exec::ExecError,
    },
    /// A build secret set given by the caller (the controller's store) has an invalid name or value
    /// (names the set and the pointer, never a value).
    #[error("build secret set {set}: {source}")]
    SecretValues {
        /// The set.
        set: String,
        /// Where and what.
        #[source]
        source: PointerError,
    },
    /// An env-var property of the step context is invalid (a bad name, a value that is not a
    /// string): `opschain-exec` would refuse it in the build's first `RUN` line.
    #[error("the step context's env properties: {source}")]
    EnvProperties {
        /// Where (a pointer into the step context) and what.
        #[source]
        source: PointerError,
    },
    /// A build secret set that applies does not exist (in the controller's store).
    #[error("build secret set {name:?} does not exist: create it with `opschain secrets set {name} --file FILE.json`")]
    NoSecretSet {
        /// The set.
        name: String,
    },
    /// A build secret set could not be read from the controller's store.
    #[error("cannot read build secret set {name:?}")]
    SecretStore {
        /// The set.
        name: String,
        /// What the store said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
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
    /// The repo's `<folder>/Dockerfile` at the commit cannot be used: not a regular file (a
    /// symlink, a submodule) or unreadable.
    #[error("{path} at {commit}: cannot use as the step Dockerfile: {source}")]
    Dockerfile {
        /// The Dockerfile's path in the repo.
        path: String,
        /// The commit.
        commit: String,
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
}

impl BuildError {
    /// The exit status of this failure: 65 invalid input (the step context, a build secret list or
    /// set, the repo's Dockerfile), 74 an unreadable secret set, 66 a revision that names no
    /// commit, 73 a context directory or file that cannot be written, 70 when git, tar or docker
    /// cannot be run or fail.
    pub fn exit_status(&self) -> crate::exit::ExitStatus {
        use crate::exit::Sysexit;
        let sysexit = match self {
            BuildError::Context(e) => return e.exit_status(),
            BuildError::SecretSets { .. }
            | BuildError::EnvProperties { .. }
            | BuildError::SecretValues { .. }
            | BuildError::NoSecretSet { .. }
            | BuildError::Dockerfile { .. } => Sysexit::DataErr,
            BuildError::SecretStore { .. } => Sysexit::IoErr,
            // A secret set is read, never executed: its failure is the input's.
            BuildError::SecretSet { source: exec::ExecError::Exec { .. } } => Sysexit::Software,
            BuildError::SecretSet { source } => return source.exit_status(),
            BuildError::Revision { .. } => Sysexit::NoInput,
            BuildError::OutDir { .. } | BuildError::Write { .. } => Sysexit::CantCreat,
            BuildError::Spawn { .. } | BuildError::Tool { .. } => Sysexit::Software,
        };
        sysexit.into()
    }
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
    /// The failure of a command that ended with `output`: its status and its stderr's last 2000
    /// bytes, cut at a character boundary.
    pub fn of(output: &Output) -> ToolFailure {
        let text = String::from_utf8_lossy(&output.stderr);
        let text = text.trim();
        let start = text.len().saturating_sub(2000);
        let start = (start..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
        ToolFailure { status: output.status, stderr: text[start..].to_string() }
    }
}

/// One build secret set: its name and its `{"NAME": "value"}` pairs, in the set's order. Its
/// `Debug` shows the names only, never a value.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretSet {
    /// The set's name (`opschain-build-env`, or a name `opschain.config.build_secrets` lists).
    pub name: String,
    /// Its secrets.
    pub values: Vec<(String, String)>,
}

impl std::fmt::Debug for SecretSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSet").field("name", &self.name).field("names", &self.values.iter().map(|(n, _)| n).collect::<Vec<_>>()).finish()
    }
}

impl SecretSet {
    /// A set from a JSON object of strings (the controller's stored form), every name checked to
    /// be POSIX-portable and every value a string without NUL; errors name the set and the
    /// pointer, never a value.
    pub fn from_map(name: &str, map: &Map<String, Value>) -> Result<SecretSet, BuildError> {
        let values = map
            .iter()
            .map(|(key, value)| {
                let mut pointer = "/".to_string();
                crate::json::push_escaped(&mut pointer, key);
                let fail = |message: &str| BuildError::SecretValues { set: name.to_string(), source: PointerError { pointer: pointer.clone(), message: message.into() } };
                crate::env::check_name(key).map_err(fail)?;
                let Value::String(value) = value else { return Err(fail("a build secret value must be a string")) };
                crate::env::check_value(value).map_err(fail)?;
                Ok((key.clone(), value.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SecretSet { name: name.to_string(), values })
    }
}

/// Where a build's secret sets come from.
#[derive(Debug, Clone, Default)]
pub enum SecretSource {
    /// None: the bundle is empty. The default.
    #[default]
    None,
    /// A host directory of set files, one JSON object per set, named like the set
    /// (`build-context --secrets-dir`); a set that applies but has no file is skipped.
    Dir(PathBuf),
    /// The sets that apply, already resolved, in order (the controller reads them from its store).
    Sets(Vec<SecretSet>),
}

/// The key of the build secrets' keyed digest (HMAC-SHA256): 32 random bytes the controller keeps
/// in its private state directory. Its `Debug` shows no byte of it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretsKey(pub [u8; 32]);

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(..)")
    }
}

/// What to build a step image of.
#[derive(Debug, Clone)]
pub struct BuildContextSpec {
    /// The project's Git repository on this host (a work tree or a bare repo).
    pub repo: PathBuf,
    /// The OpsChain folder in the repo. Default: `.opschain`.
    pub folder: String,
    /// The revision of the change (`GIT_REV`): a branch, tag or SHA. Default: `HEAD`.
    pub git_rev: String,
    /// The commit `git_rev` resolved to, when the caller resolved it already (the controller, at
    /// the change's creation). Default: none, `git_rev` is resolved.
    pub commit: Option<String>,
    /// The step context document (`{"context", "project", "environment"}`); only its project and
    /// environment context values and env-var properties reach the build ([`env_context`]), and
    /// its `opschain.config.build_secrets` picks the secret sets. Default: `{}`.
    pub context: Map<String, Value>,
    /// The base runner image (`OPSCHAIN_BASE_RUNNER`). Default: [`DEFAULT_BASE_RUNNER`].
    pub base_runner: String,
    /// The base runner image's id, when known: part of the image key ([`ImagePlan::key`]), so
    /// that a rebuilt base image gives a new step image. Default: none (the name stands for it).
    pub base_runner_id: Option<String>,
    /// The OpsChain version (`OPSCHAIN_VERSION`). Default: this crate's version.
    pub opschain_version: String,
    /// Where the build secret sets come from. Default: [`SecretSource::None`].
    pub secrets: SecretSource,
    /// The key of the build secrets' keyed digest ([`ImagePlan::secrets_digest`]): with one, the
    /// digest covers the sets' values too, so that a rotated value rebuilds the image. Default:
    /// none, the digest covers the sets' names only (a digest of the values without a key would
    /// let anyone who sees the image guess a weak value offline).
    pub secrets_key: Option<SecretsKey>,
    /// Where to write the build secret bundle (mode 0600): outside the build context directory,
    /// so that no `COPY .` can take it. Default: none, `<out>.build-secrets.json` beside `out`.
    pub secrets_file: Option<PathBuf>,
    /// The build context directory to write; created, and must be empty if it exists.
    pub out: PathBuf,
    /// A directory where `repo.tar` of each project, repository and commit is kept
    /// ([`BuildContextSpec::repo_tar_name`]) and hard-linked from (copied across file systems), so
    /// that a commit is archived once per project, not for every build of it. Its `.git` then holds
    /// that project's repository's refs as they were when the commit was first archived there (HEAD
    /// is the commit either way); another project with the same commit (a fork) gets an archive of
    /// its own. Default: none, archived anew for every build.
    pub repo_tar_cache: Option<PathBuf>,
    /// The project the image is built for (its code): with [`BuildContextSpec::repo_tar_cache`],
    /// part of the archive's key, so that two projects sharing a commit never share a `repo.tar`
    /// (its `.git` holds the project's refs and remote). Default: none (the repository alone).
    pub project: Option<String>,
}

impl BuildContextSpec {
    /// A spec with the defaults for `repo`, written to `out`.
    pub fn new(repo: impl Into<PathBuf>, out: impl Into<PathBuf>) -> BuildContextSpec {
        let version = env!("CARGO_PKG_VERSION").to_string();
        BuildContextSpec {
            repo: repo.into(),
            folder: DEFAULT_REPO_FOLDER.into(),
            git_rev: "HEAD".into(),
            commit: None,
            context: Map::new(),
            base_runner: DEFAULT_BASE_RUNNER.to_string(),
            base_runner_id: None,
            opschain_version: version,
            secrets: SecretSource::None,
            secrets_key: None,
            secrets_file: None,
            out: out.into(),
            repo_tar_cache: None,
            project: None,
        }
    }

    /// The file name of `commit`'s archive in [`BuildContextSpec::repo_tar_cache`]:
    /// `<commit>-<scope>.tar`, the scope the first 16 hex digits of the SHA-256 of the project
    /// code and the repository's canonical path. The commit alone would hand one project's refs
    /// (and the path of its repository) to every project that shares the commit.
    pub fn repo_tar_name(&self, commit: &str) -> String {
        use sha2::Digest;
        let repo = std::fs::canonicalize(&self.repo).unwrap_or_else(|_| self.repo.clone());
        let mut hasher = sha2::Sha256::new();
        hasher.update(b"opschain-repo-tar 1\0project\0");
        hasher.update(self.project.as_deref().unwrap_or_default().as_bytes());
        hasher.update(b"\0repo\0");
        hasher.update(repo.as_os_str().as_encoded_bytes());
        let scope: String = hasher.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("{commit}-{scope}.tar")
    }

    /// Where the build secret bundle goes: [`BuildContextSpec::secrets_file`], else
    /// `<out>.build-secrets.json`.
    pub fn secrets_path(&self) -> PathBuf {
        self.secrets_file.clone().unwrap_or_else(|| {
            let mut name = self.out.file_name().map(OsString::from).unwrap_or_else(|| "context".into());
            name.push(".build-secrets.json");
            self.out.with_file_name(name)
        })
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

/// The Dockerfile of a build: the repo's own or the default one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerfileSource {
    /// The repo has no `<folder>/Dockerfile` at the commit: [`default_dockerfile`].
    Default,
    /// The repo's `<folder>/Dockerfile` at the commit: its git blob id.
    Repo {
        /// The blob's object id.
        blob: String,
    },
}

/// What a step image is built from, known without writing anything: the commit, the Dockerfile,
/// the env context and its digest, and the key that names the image ([`plan`]).
#[derive(Debug, Clone)]
pub struct ImagePlan {
    /// The commit (`GIT_SHA`).
    pub git_sha: String,
    /// Where the Dockerfile comes from.
    pub dockerfile: DockerfileSource,
    /// The env context's form (by the folder).
    pub form: EnvContextForm,
    /// The env context file's bytes (JSON, or the zip holding it).
    pub env_context: Vec<u8>,
    /// The git blob id of the env context's JSON (`OPSCHAIN_CONTEXT_DIGEST`).
    pub context_digest: String,
    /// The build secret sets that apply, resolved, in order (merged into the bundle).
    pub secret_sets: Vec<SecretSet>,
    /// The digest of the build secret sets (`OPSCHAIN_BUILD_SECRETS_DIGEST`):
    /// `hmac-sha256:<hex>` of their names and merged bundle, keyed by
    /// [`BuildContextSpec::secrets_key`], else `names-sha256:<hex>` of their names alone. A
    /// changed list of sets, or (with a key) a rotated value, changes it; the value never shows.
    pub secrets_digest: String,
    /// The image key: the git object id of a manifest of every input that can change what the
    /// build gives — this runner's version, the folder, the commit, the Dockerfile (blob id, or
    /// the default's version and folder), the base runner image (id when known, else name), the
    /// env context digest and the build secrets digest. Equal keys build equal images.
    pub key: String,
}

impl ImagePlan {
    /// The step image's tag: `opschain-step:<key>`.
    pub fn tag(&self) -> String {
        format!("opschain-step:{}", self.key)
    }
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
    /// The image key ([`ImagePlan::key`]); the controller tags the image `opschain-step:<key>`.
    pub key: String,
    /// The build args, in order: `GIT_REV`, `GIT_SHA`, `OPSCHAIN_BASE_RUNNER`, `OPSCHAIN_VERSION`,
    /// `OPSCHAIN_CONTEXT_DIGEST` (the git blob id of the env context JSON: declared before a `RUN`
    /// line, it makes a change of the env properties rerun it; secret mounts are not part of
    /// BuildKit's cache key) and `OPSCHAIN_BUILD_SECRETS_DIGEST` ([`ImagePlan::secrets_digest`]:
    /// the same for the build secret sets).
    pub build_args: Vec<(String, String)>,
    /// Whether the Dockerfile declares `ARG OPSCHAIN_BUILD_SECRETS_DIGEST` (the default one does).
    /// When it does not, nothing ties its `RUN` lines' cache to the build secrets, and
    /// [`BuildContext::docker_build_args`] builds without the cache rather than reuse a layer
    /// built with other secrets.
    pub secrets_digest_declared: bool,
    /// The secrets: the env context, then the build secret bundle ([`BUILD_SECRETS_ID`]).
    pub secrets: Vec<BuildSecret>,
    /// The build secret sets merged into the bundle, in order (names only).
    pub secret_sets: Vec<String>,
}

impl BuildContext {
    /// The arguments of `docker build` for this context, tagging the image `tag`: `--progress=plain`
    /// (a log a person can read), `--no-cache` when the Dockerfile does not declare the build
    /// secrets digest ([`BuildContext::secrets_digest_declared`]), `--file`, `--build-arg` each,
    /// `--secret` each, `--tag`, and the directory last.
    pub fn docker_build_args(&self, tag: &str) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["build".into(), "--progress=plain".into()];
        if !self.secrets_digest_declared {
            args.push("--no-cache".into());
        }
        args.extend(["--file".into(), self.dockerfile.clone().into()]);
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

/// The env context of a step context, as the seeds say: the project and environment context
/// values (`context.project`, `context.environment`) and, of each level's properties, only the
/// env-var ones (`opschain.env`, and the seed layout's top-level `env` when it is a declaration, an
/// object: see `properties::declarations`). Nothing else: step, change and user values, other
/// properties and runner secrets would change it on every step (and the `RUN` lines' cache with
/// it) or leak into the build.
pub fn env_context(context: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    if let Some(values) = context.get("context").and_then(Value::as_object) {
        let kept: Map<String, Value> = ["project", "environment"].iter().filter_map(|k| values.get(*k).map(|v| (k.to_string(), v.clone()))).collect();
        out.insert("context".into(), Value::Object(kept));
    }
    for level in ["project", "environment"] {
        let props = context.get(level).and_then(|l| l.get("properties")).and_then(Value::as_object);
        let mut kept = Map::new();
        if let Some(env) = props.and_then(|p| p.get("opschain")).and_then(|o| o.get("env")) {
            kept.insert("opschain".into(), serde_json::json!({ "env": env }));
        }
        if let Some(env) = props.and_then(|p| p.get("env")).filter(|env| env.is_object()) {
            kept.insert("env".into(), env.clone());
        }
        out.insert(level.into(), serde_json::json!({ "properties": kept }));
    }
    out
}

/// The names of the build secret sets that apply to a step context, in order
/// ([`crate::exec::build_secret_sets`]: the project's `opschain.config.build_secrets`, then the
/// environment's, else `opschain-build-env`). A bad list is an error at its pointer.
pub fn applicable_secret_sets(context: &Map<String, Value>) -> Result<Vec<String>, BuildError> {
    let level =
        |name: &str| Level { properties: StrictObject(context.get(name).and_then(|l| l.get("properties")).and_then(Value::as_object).cloned().unwrap_or_default()) };
    let parsed = StepContext { context: None, project: level("project"), environment: level("environment"), secrets: Default::default() };
    exec::build_secret_sets(&parsed).map_err(|source| BuildError::SecretSets { source })
}

/// The build secret bundle of `sets`: one JSON object, each set's secrets over the ones before it.
pub fn secret_bundle(sets: &[SecretSet]) -> Vec<u8> {
    let mut merged = Map::new();
    for set in sets {
        for (name, value) in &set.values {
            merged.insert(name.clone(), Value::String(value.clone()));
        }
    }
    let mut bytes = serde_json::to_vec(&Value::Object(merged)).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// The build secret sets of `spec` that apply, in order: the caller's, or those of the sets
/// directory that exist (each checked, so that a bad set fails before the build rather than in a
/// `RUN` line).
fn resolve_secret_sets(spec: &BuildContextSpec) -> Result<Vec<SecretSet>, BuildError> {
    let names = applicable_secret_sets(&spec.context)?;
    match &spec.secrets {
        SecretSource::None => Ok(Vec::new()),
        SecretSource::Sets(sets) => Ok(sets.clone()),
        SecretSource::Dir(dir) => {
            let mut sets = Vec::new();
            for name in &names {
                let read = exec::read_secret_set(&dir.join(name), crate::json::SizeLimit::DEFAULT).map_err(|source| BuildError::SecretSet { source })?;
                if let Some(values) = read {
                    sets.push(SecretSet { name: name.clone(), values });
                }
            }
            Ok(sets)
        }
    }
}

/// [`ImagePlan::secrets_digest`] of `sets`: their names, one a line, then (with a key only) the
/// merged bundle, under HMAC-SHA256 with `key`, else SHA-256 of the names alone.
pub fn secrets_digest(sets: &[SecretSet], key: Option<&SecretsKey>) -> String {
    use hmac::Mac;
    use sha2::Digest;
    let mut names = b"opschain-build-secrets 1\n".to_vec();
    for set in sets {
        names.extend_from_slice(set.name.as_bytes());
        names.push(b'\n');
    }
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    match key {
        Some(SecretsKey(key)) => {
            let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("HMAC takes a key of any length");
            mac.update(&names);
            mac.update(b"\n");
            mac.update(&secret_bundle(sets));
            format!("hmac-sha256:{}", hex(&mac.finalize().into_bytes()))
        }
        None => format!("names-sha256:{}", hex(&sha2::Sha256::digest(&names))),
    }
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

/// The git object id `git hash-object --stdin` gives `bytes` (a blob's id).
fn hash_object(bytes: &[u8]) -> Result<String, BuildError> {
    use std::io::Write;
    let spawn = |source| BuildError::Spawn { program: crate::git::PROGRAM.into(), source };
    let mut child =
        crate::git::command(None).args(["hash-object", "--stdin"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(spawn)?;
    let written = child.stdin.take().map(|mut stdin| stdin.write_all(bytes)).unwrap_or(Ok(()));
    let output = child.wait_with_output().map_err(spawn)?;
    if !output.status.success() || written.is_err() {
        return Err(BuildError::Tool { command: "git hash-object --stdin".into(), source: ToolFailure::of(&output) });
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Resolves `rev` to the full SHA of a commit of `repo` (`git rev-parse --verify REV^{commit}`).
pub fn resolve_revision(repo: &Path, rev: &str) -> Result<String, BuildError> {
    let output = crate::git::command(Some(repo))
        .args(["rev-parse", "--verify", "--quiet", "--end-of-options"])
        .arg(format!("{rev}^{{commit}}"))
        .output()
        .map_err(|source| BuildError::Spawn { program: crate::git::PROGRAM.into(), source })?;
    if !output.status.success() {
        let mut source = ToolFailure::of(&output);
        if source.stderr.is_empty() {
            source.stderr = "not a commit of this repository".into();
        }
        return Err(BuildError::Revision { repo: repo.to_path_buf(), rev: rev.to_string(), source });
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// The env context file of `context` in `form`: pretty JSON, or a zip holding it as
/// `step_context.json` (stored with a fixed time, so the same JSON gives the same bytes).
fn env_context_bytes(json: &[u8], form: EnvContextForm) -> Result<Vec<u8>, BuildError> {
    match form {
        EnvContextForm::Json => Ok(json.to_vec()),
        EnvContextForm::Zip => {
            use std::io::Write;
            let fail = |e: std::io::Error| BuildError::Write { path: PathBuf::from(CONTEXT_ZIP_FILE), source: e };
            let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
            let options = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated)
                .last_modified_time(zip::DateTime::default())
                .unix_permissions(0o644);
            writer.start_file(exec::ZIP_ENTRY, options).map_err(|e| fail(std::io::Error::other(e)))?;
            writer.write_all(json).map_err(fail)?;
            Ok(writer.finish().map_err(|e| fail(std::io::Error::other(e)))?.into_inner())
        }
    }
}

/// Works out what the step image of `spec` is built from, without writing anything or touching a
/// work tree: resolves the commit (unless given), looks the Dockerfile up in the commit's tree
/// (`git ls-tree`: a regular file is used, a symlink or a submodule refused, none means the
/// default), makes the env context and computes the image key. Cheap enough to run before every
/// step: the controller reuses an image of the same key without building.
pub fn plan(spec: &BuildContextSpec) -> Result<ImagePlan, BuildError> {
    let env_doc = env_context(&spec.context);
    let mut json = serde_json::to_vec_pretty(&env_doc).unwrap_or_default();
    json.push(b'\n');
    // Validated as opschain-exec will read it, so that a bad context fails before any build.
    crate::json::parse::<StepContext>(Path::new(CONTEXT_FILE), &json).map_err(BuildError::Context)?;
    for level in ["project", "environment"] {
        if let Some(props) = env_doc.get(level).and_then(|l| l.get("properties")).and_then(Value::as_object) {
            crate::env::parse(props)
                .map_err(|e| BuildError::EnvProperties { source: PointerError { pointer: format!("/{level}/properties{}", e.pointer), message: e.message } })?;
        }
    }
    let form = EnvContextForm::of_folder(&spec.folder);
    let env_context = env_context_bytes(&json, form)?;
    let git_sha = match &spec.commit {
        Some(sha) => sha.clone(),
        None => resolve_revision(&spec.repo, &spec.git_rev)?,
    };
    let path = format!("{}/Dockerfile", spec.folder.trim_end_matches('/'));
    let listed = run_tool(crate::git::command(Some(&spec.repo)).args(["ls-tree", "--full-tree", &git_sha, "--", &path]))?;
    let listed = String::from_utf8_lossy(&listed.stdout).trim().to_string();
    let dockerfile = match listed.split_once('\t').map(|(meta, _)| meta.split_whitespace().collect::<Vec<_>>()) {
        None => DockerfileSource::Default,
        Some(fields) if fields.len() == 3 && fields[1] == "blob" && (fields[0] == "100644" || fields[0] == "100755") => {
            DockerfileSource::Repo { blob: fields[2].to_string() }
        }
        Some(fields) => {
            let what = if fields.first() == Some(&"120000") { "a symlink, not a regular file" } else { "not a regular file" };
            return Err(BuildError::Dockerfile { path, commit: git_sha, source: std::io::Error::new(std::io::ErrorKind::InvalidData, what) });
        }
    };
    let secret_sets = resolve_secret_sets(spec)?;
    let secrets_digest = secrets_digest(&secret_sets, spec.secrets_key.as_ref());
    let context_digest = hash_object(&json)?;
    let dockerfile_line = match &dockerfile {
        DockerfileSource::Default => format!("default {} {}", env!("CARGO_PKG_VERSION"), spec.folder),
        DockerfileSource::Repo { blob } => format!("repo {blob}"),
    };
    let manifest = format!(
        "opschain-step-image 1\nrunner {}\nopschain-version {}\nfolder {}\ncommit {git_sha}\ngit-rev {}\ndockerfile {dockerfile_line}\nbase {}\nenv-context {context_digest}\nbuild-secrets {secrets_digest}\n",
        env!("CARGO_PKG_VERSION"),
        spec.opschain_version,
        spec.folder,
        spec.git_rev,
        spec.base_runner_id.as_deref().unwrap_or(&spec.base_runner),
    );
    let key = hash_object(manifest.as_bytes())?;
    Ok(ImagePlan { git_sha, dockerfile, form, env_context, context_digest, secret_sets, secrets_digest, key })
}

/// Writes the build context of `spec` (see the module docs) and says how to build it:
/// [`plan`], then [`write_planned`].
pub fn write_context(spec: &BuildContextSpec) -> Result<BuildContext, BuildError> {
    let plan = plan(spec)?;
    write_planned(spec, &plan)
}

/// Writes the build context that `plan` (of `spec`) describes into `spec.out`, and the build
/// secret bundle to [`BuildContextSpec::secrets_path`].
///
/// `repo.tar` is a local clone of the repo checked out (detached) at the commit, archived whole by
/// the system `tar` with every entry owned by [`REPO_OWNER`] and in name order: a clone, because
/// `git archive` leaves `.git` out and the repo's own work tree may be dirty or at another commit; a
/// local clone shares the object store, so any commit of the repo, reachable or not, checks out.
/// The archive is byte for byte the same for the same commit while the repo's refs are unchanged
/// (index without stat data, no reflogs, every mtime the commit's), so the image build cache holds
/// from one step to the next.
pub fn write_planned(spec: &BuildContextSpec, plan: &ImagePlan) -> Result<BuildContext, BuildError> {
    let sets = &plan.secret_sets;
    let out = &spec.out;
    let out_dir = |source| BuildError::OutDir { path: out.clone(), source };
    std::fs::create_dir_all(out).map_err(out_dir)?;
    if std::fs::read_dir(out).map_err(out_dir)?.next().is_some() {
        return Err(out_dir(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "not empty")));
    }
    let out = std::fs::canonicalize(out).map_err(out_dir)?;

    let repo_tar = out.join(REPO_TAR);
    match &spec.repo_tar_cache {
        None => archive_commit(spec, &plan.git_sha, &out.join(".checkout"), &repo_tar)?,
        Some(cache) => {
            let cached = cache.join(spec.repo_tar_name(&plan.git_sha));
            if !cached.is_file() {
                // Made under a name of its own and renamed into place: concurrent builds of one
                // commit each see the whole archive or none.
                std::fs::create_dir_all(cache).map_err(|source| BuildError::Write { path: cache.clone(), source })?;
                let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
                let tmp = cache.join(format!(".{}-{}-{nanos}", plan.git_sha, std::process::id()));
                let made = archive_commit(spec, &plan.git_sha, &tmp.with_extension("checkout"), &tmp)
                    .and_then(|()| std::fs::rename(&tmp, &cached).map_err(|source| BuildError::Write { path: cached.clone(), source }));
                let _ = std::fs::remove_file(&tmp);
                made?;
            }
            if std::fs::hard_link(&cached, &repo_tar).is_err() {
                std::fs::copy(&cached, &repo_tar).map_err(|source| BuildError::Write { path: repo_tar.clone(), source })?;
            }
        }
    }
    let dockerfile_text = match &plan.dockerfile {
        DockerfileSource::Default => default_dockerfile(&spec.folder).into_bytes(),
        DockerfileSource::Repo { blob } => run_tool(crate::git::command(Some(&spec.repo)).args(["cat-file", "blob", blob]))?.stdout,
    };
    let dockerfile = out.join("Dockerfile");
    let write = |path: &Path, bytes: &[u8]| std::fs::write(path, bytes).map_err(|source| BuildError::Write { path: path.to_path_buf(), source });
    write(&dockerfile, &dockerfile_text)?;
    let context_path = out.join(plan.form.file());
    write(&context_path, &plan.env_context)?;

    let secrets_path = spec.secrets_path();
    write_private(&secrets_path, &secret_bundle(sets))?;
    Ok(BuildContext {
        dir: out,
        dockerfile,
        custom_dockerfile: plan.dockerfile != DockerfileSource::Default,
        secrets_digest_declared: declares_arg(&String::from_utf8_lossy(&dockerfile_text), SECRETS_DIGEST_ARG),
        key: plan.key.clone(),
        build_args: vec![
            ("GIT_REV".into(), spec.git_rev.clone()),
            ("GIT_SHA".into(), plan.git_sha.clone()),
            ("OPSCHAIN_BASE_RUNNER".into(), spec.base_runner.clone()),
            ("OPSCHAIN_VERSION".into(), spec.opschain_version.clone()),
            ("OPSCHAIN_CONTEXT_DIGEST".into(), plan.context_digest.clone()),
            (SECRETS_DIGEST_ARG.into(), plan.secrets_digest.clone()),
        ],
        git_sha: plan.git_sha.clone(),
        secrets: vec![BuildSecret { id: plan.form.secret_id().into(), src: context_path }, BuildSecret { id: BUILD_SECRETS_ID.into(), src: secrets_path }],
        secret_sets: sets.iter().map(|s| s.name.clone()).collect(),
    })
}

/// Writes `bytes` to `path` readable by this user only (mode 0600 from creation; an existing file
/// is replaced).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |source| BuildError::Write { path: path.to_path_buf(), source };
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(fail(e)),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(fail)?;
    file.write_all(bytes).map_err(fail)
}

/// Clones the repo into `checkout` at `sha` and archives it to `repo_tar` (see [`write_planned`]);
/// the checkout is removed however that went.
fn archive_commit(spec: &BuildContextSpec, sha: &str, checkout: &Path, repo_tar: &Path) -> Result<(), BuildError> {
    let archived = archive_checkout(spec, sha, checkout, repo_tar);
    let removed = std::fs::remove_dir_all(checkout);
    archived?;
    removed.map_err(|source| BuildError::Write { path: checkout.to_path_buf(), source })
}

fn archive_checkout(spec: &BuildContextSpec, sha: &str, checkout: &Path, repo_tar: &Path) -> Result<(), BuildError> {
    run_tool(crate::git::command(None).args(["clone", "--quiet", "--no-checkout"]).arg(&spec.repo).arg(checkout))?;
    let git = |args: &[&str]| run_tool(crate::git::command(Some(checkout)).args(args));
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_context_keeps_only_env_properties_and_the_project_and_environment_values() {
        use serde_json::json;
        let doc = json!({
            "context": {"project": {"code": "p"}, "environment": {"code": "e"}, "change": {"id": 7}, "step": {"id": 9}, "user": {"name": "u"}},
            "project": {"properties": {"db": {"password": "x"}, "env": {"SEED": "1"}, "opschain": {"env": {"A": "1"}, "files": {"f": {}}, "config": {"build_secrets": ["s"], "other": 1}}}},
            "environment": {"properties": {"opschain": {"files": {}}}},
            "secrets": {"RUNNER": "never-in-a-build"}
        });
        let out = Value::Object(env_context(doc.as_object().unwrap()));
        assert_eq!(
            out,
            json!({
                "context": {"project": {"code": "p"}, "environment": {"code": "e"}},
                "project": {"properties": {"opschain": {"env": {"A": "1"}}, "env": {"SEED": "1"}}},
                "environment": {"properties": {}}
            })
        );
        // The sets still come from the whole context.
        assert_eq!(applicable_secret_sets(doc.as_object().unwrap()).unwrap(), ["s"]);
        assert_eq!(applicable_secret_sets(&Map::new()).unwrap(), ["opschain-build-env"]);
        // The seed layout: a top-level `env` object is env-relevant, one that is data is not.
        let doc = json!({
            "project": {"properties": {"env": {"A": "1"}, "files": {"f": {}}, "name": "x"}},
            "environment": {"properties": {"env": "production"}}
        });
        let out = Value::Object(env_context(doc.as_object().unwrap()));
        assert_eq!(out, json!({"project": {"properties": {"env": {"A": "1"}}}, "environment": {"properties": {}}}));
    }

    #[test]
    fn the_bundle_merges_the_sets_in_order_and_bad_values_name_no_value() {
        let set = |name: &str, pairs: &[(&str, &str)]| SecretSet { name: name.into(), values: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() };
        let bundle = secret_bundle(&[set("a", &[("X", "1"), ("Y", "1")]), set("b", &[("Y", "2")]), set("c", &[("X", "3")])]);
        assert_eq!(serde_json::from_slice::<Value>(&bundle).unwrap(), serde_json::json!({"X": "3", "Y": "2"}));
        let bad = serde_json::json!({"OK": "v1", "not ok": "hidden-value"});
        let err = SecretSet::from_map("team", bad.as_object().unwrap()).unwrap_err().to_string();
        assert!(err.contains("team") && err.contains("/not ok") && !err.contains("hidden-value"), "{err}");
        let set = SecretSet::from_map("team", serde_json::json!({"TOKEN": "hidden-value"}).as_object().unwrap()).unwrap();
        assert!(!format!("{set:?}").contains("hidden-value") && format!("{set:?}").contains("TOKEN"));
    }

    #[test]
    fn default_dockerfile_has_the_documented_lines() {
        let text = default_dockerfile(".opschain");
        let lines: Vec<&str> = text.lines().collect();
        for line in [
            "ARG OPSCHAIN_BASE_RUNNER",
            "FROM ${OPSCHAIN_BASE_RUNNER}",
            "ADD repo.tar /opt/opschain/",
            "ARG GIT_REV",
            "ARG GIT_SHA",
            "ARG OPSCHAIN_VERSION",
            "ARG OPSCHAIN_CONTEXT_DIGEST",
            "ARG OPSCHAIN_BUILD_SECRETS_DIGEST",
        ] {
            assert!(lines.contains(&line), "{line}");
        }
        assert!(text.contains("RUN --mount=type=secret,id=step_context_env,target=/opt/opschain/.opschain/step_context_env.json,"));
        assert!(text.contains("--mount=type=secret,id=opschain-build-secrets,"));
        assert!(text.contains("opschain-exec ") && !text.contains("OPSCHAIN_REPO_FOLDER") && !text.contains("syntax="));
        let mintpress = default_dockerfile(".mintpress");
        assert!(mintpress.contains("ENV OPSCHAIN_REPO_FOLDER=.mintpress\n"));
        assert!(mintpress.contains("--mount=type=secret,id=step_context_zip,target=/opt/opschain/.mintpress/step_context.json.zip,"));
        assert!(mintpress.contains("[ -x .mintpress/setup ]"));
        assert!(declares_arg(&text, SECRETS_DIGEST_ARG) && declares_arg("  arg OPSCHAIN_BUILD_SECRETS_DIGEST=x\n", SECRETS_DIGEST_ARG));
        assert!(!declares_arg("ARG OPSCHAIN_BUILD_SECRETS_DIGESTS\n# ARG OPSCHAIN_BUILD_SECRETS_DIGEST\n", SECRETS_DIGEST_ARG));
    }

    #[test]
    fn the_secrets_digest_follows_the_list_and_with_a_key_the_values_without_showing_them() {
        let set = |name: &str, value: &str| SecretSet { name: name.into(), values: vec![("TOKEN".into(), value.into())] };
        let key = SecretsKey([7; 32]);
        let digest = |sets: &[SecretSet], key: Option<&SecretsKey>| secrets_digest(sets, key);
        let base = digest(&[set("a", "one")], Some(&key));
        assert!(base.starts_with("hmac-sha256:") && base.len() == "hmac-sha256:".len() + 64, "{base}");
        assert_eq!(base, digest(&[set("a", "one")], Some(&key)));
        assert_ne!(base, digest(&[set("b", "one")], Some(&key)), "another list");
        assert_ne!(base, digest(&[set("a", "two")], Some(&key)), "a rotated value");
        assert_ne!(base, digest(&[set("a", "one")], Some(&SecretsKey([8; 32]))), "another controller's key");
        // Without a key, the values are not digested at all.
        assert_eq!(digest(&[set("a", "one")], None), digest(&[set("a", "two")], None));
        assert_ne!(digest(&[set("a", "one")], None), digest(&[set("b", "one")], None));
        assert_eq!(format!("{key:?}"), "SecretsKey(..)");
    }

    #[test]
    fn a_dockerfile_without_the_secrets_digest_builds_without_the_cache() {
        let mut context = BuildContext {
            dir: "/ctx".into(),
            dockerfile: "/ctx/Dockerfile".into(),
            custom_dockerfile: true,
            git_sha: "0".repeat(40),
            key: "k".into(),
            build_args: vec![(SECRETS_DIGEST_ARG.into(), "hmac-sha256:00".into())],
            secrets_digest_declared: true,
            secrets: Vec::new(),
            secret_sets: Vec::new(),
        };
        assert!(!context.docker_build_args("t").contains(&"--no-cache".into()));
        context.secrets_digest_declared = false;
        assert_eq!(context.docker_build_args("t")[..3], ["build".into(), "--progress=plain".into(), OsString::from("--no-cache")]);
    }
}
