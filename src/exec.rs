//! `opschain-exec`: runs one command with the step's env vars, and during an image build the build
//! secrets, loaded; for Dockerfile `RUN` lines (`RUN opschain-exec bundle install`).
//!
//! The context is the first that exists of `<repo>/<folder>/step_context.json` (a step),
//! `<repo>/<folder>/step_context_env.json` (an image build, see [`crate::step_image`]) and
//! `<repo>/<folder>/step_context.json.zip` (a MintPress image build: a zip holding
//! `step_context.json`). The command's environment is, lowest first:
//!
//! 1. the environment `opschain-exec` was started with;
//! 2. the env vars the merged properties declare (`opschain.env` and the seed layout's top-level
//!    `env`, see [`crate::properties::declarations`]), exactly as the agent computes them
//!    (repository `properties.json`, repository `environments/<code>.json`, project, environment);
//! 3. the runner secrets of the context (`secrets`, this runner's extension);
//! 4. the build secrets, from the build secrets directory (`/run/secrets` unless
//!    `OPSCHAIN_BUILD_SECRETS_DIR` says otherwise): the bundle [`BUILD_SECRETS_BUNDLE`] (every set
//!    that applies, merged in order by the builder) when it is there, else each set that applies
//!    ([`build_secret_sets`]) and exists as a file there, in order, later winning.
//!
//! Then the command replaces this process (`execvp`), so its exit status and signals are its own.
//! With no context the command runs unchanged. A bad context, properties file, secret set or env name
//! stops before the command runs, with one line on stderr naming the file and the JSON pointer (exit
//! 65). Nothing else is printed, and never a value.
//!
//! This path stays small on purpose (it runs once per `RUN` line): no async runtime and no log
//! subscriber, just reads, a merge and `execvp`.

use std::convert::Infallible;
use std::ffi::{CString, OsString};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::context::{LevelProperties, StepContext};
use crate::env;
use crate::exit::{ExitStatus, Sysexit};
use crate::json::{self, push_escaped, JsonError, PointerError, SizeLimit, StrictObject};
use crate::layout::{Layout, DEFAULT_REPO_DIR, DEFAULT_REPO_FOLDER};
use crate::properties::text::Declaring;
use crate::properties::{self, declarations, PropertiesError};

/// Where the build secret sets are looked for when `OPSCHAIN_BUILD_SECRETS_DIR` is not set: the
/// directory where BuildKit mounts `RUN --mount=type=secret,id=<set>` by default.
pub const DEFAULT_BUILD_SECRETS_DIR: &str = "/run/secrets";

/// The environment variable that overrides [`DEFAULT_BUILD_SECRETS_DIR`].
pub const BUILD_SECRETS_DIR_ENV: &str = "OPSCHAIN_BUILD_SECRETS_DIR";

/// The build secret set supplied when neither the project nor the environment configures
/// `opschain.config.build_secrets` (OpsChain's `opschain-build-env` Kubernetes secret).
pub const DEFAULT_BUILD_SECRET_SET: &str = "opschain-build-env";

/// The build secret bundle's file name in the build secrets directory: the BuildKit secret id
/// `opschain-build-secrets`, holding every build secret set that applies, merged in order by the
/// builder (the same format as one set). When it is there, it is the build secrets; only without
/// it are the sets read one file each.
pub const BUILD_SECRETS_BUNDLE: &str = "opschain-build-secrets";

/// The name of the step context inside `step_context.json.zip`.
pub const ZIP_ENTRY: &str = "step_context.json";

/// Why `opschain-exec` did not run its command. [`ExecError::exit_status`] maps each to an exit status.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// No command was given.
    #[error("no command given (usage: opschain-exec COMMAND [ARGS...])")]
    NoCommand,
    /// The step context (plain or build) is unreadable or invalid.
    #[error(transparent)]
    Context(JsonError),
    /// `step_context.json.zip` cannot be opened or read as a zip archive.
    #[error("{}: cannot read the zip archive: {source}", path.display())]
    Zip {
        /// The archive.
        path: PathBuf,
        /// The cause.
        #[source]
        source: zip::result::ZipError,
    },
    /// `step_context.json.zip` does not hold `step_context.json`.
    #[error("{}: holds no {ZIP_ENTRY}", path.display())]
    ZipEntryMissing {
        /// The archive.
        path: PathBuf,
    },
    /// A repository properties file is unreadable or invalid.
    #[error(transparent)]
    Properties(#[from] PropertiesError),
    /// An `opschain.env` entry, a runner secret, a `build_secrets` list or a build secret is
    /// invalid (a bad name, a value that is not a string).
    #[error("{}: {source}", file.display())]
    Declaration {
        /// The file the declaration was read from.
        file: PathBuf,
        /// Where in it and what is wrong.
        #[source]
        source: PointerError,
    },
    /// A build secret set file is unreadable or not a JSON object.
    #[error(transparent)]
    SecretSet(JsonError),
    /// The command could not be executed (not found, not executable, ...).
    #[error("cannot execute {command:?}: {source}")]
    Exec {
        /// The command as given.
        command: String,
        /// The cause.
        #[source]
        source: nix::Error,
    },
}

impl ExecError {
    /// The exit status of this failure: sysexits for `opschain-exec`'s own failures (64 no
    /// command, 65 a bad context, properties or secret set, 66/74 unreadable input), 127 when the
    /// command is not found and 126 when it cannot be executed.
    pub fn exit_status(&self) -> ExitStatus {
        let sysexit = match self {
            ExecError::Exec { source: nix::Error::ENOENT, .. } => return crate::exit::NOT_FOUND,
            ExecError::Exec { .. } => return crate::exit::CANNOT_EXECUTE,
            ExecError::NoCommand => Sysexit::Usage,
            ExecError::Context(e) | ExecError::SecretSet(e) => return e.exit_status(),
            ExecError::Zip { source: zip::result::ZipError::Io(_), .. } => Sysexit::IoErr,
            ExecError::Zip { .. } | ExecError::ZipEntryMissing { .. } | ExecError::Declaration { .. } => Sysexit::DataErr,
            ExecError::Properties(e) => return e.exit_status(),
        };
        sysexit.into()
    }
}

/// Where a context was found, and in which form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextSource {
    /// `<repo>/<folder>/step_context.json`: a step's full context.
    Step(PathBuf),
    /// `<repo>/<folder>/step_context_env.json`: an image build's env-only context.
    BuildEnv(PathBuf),
    /// `<repo>/<folder>/step_context.json.zip`: a zip holding `step_context.json`.
    Zip(PathBuf),
}

impl ContextSource {
    /// The file found.
    pub fn path(&self) -> &Path {
        match self {
            ContextSource::Step(p) | ContextSource::BuildEnv(p) | ContextSource::Zip(p) => p,
        }
    }

    /// The name errors give the context document: the file, or `<archive>/step_context.json`.
    pub fn document(&self) -> PathBuf {
        match self {
            ContextSource::Step(p) | ContextSource::BuildEnv(p) => p.clone(),
            ContextSource::Zip(p) => p.join(ZIP_ENTRY),
        }
    }
}

/// What `opschain-exec` needs besides the command: where the repo and the secrets are.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// The repo and its OpsChain folder.
    pub layout: Layout,
    /// The directory of the build secret sets, one file per set named like the set.
    /// Default: [`DEFAULT_BUILD_SECRETS_DIR`].
    pub secrets_dir: PathBuf,
    /// The largest context, properties or secret set document read. Default: [`SizeLimit::DEFAULT`].
    pub limit: SizeLimit,
}

impl ExecOptions {
    /// The options as the process environment gives them: `OPSCHAIN_REPO_DIR` (default
    /// `/opt/opschain`), `OPSCHAIN_REPO_FOLDER` (default `.opschain`) and
    /// `OPSCHAIN_BUILD_SECRETS_DIR` (default `/run/secrets`); empty values count as unset.
    pub fn from_env() -> std::io::Result<ExecOptions> {
        let var = |name: &str, default: &str| std::env::var_os(name).filter(|v| !v.is_empty()).unwrap_or_else(|| default.into());
        let folder = var("OPSCHAIN_REPO_FOLDER", DEFAULT_REPO_FOLDER).to_string_lossy().into_owned();
        Ok(ExecOptions {
            layout: Layout::new(PathBuf::from(var("OPSCHAIN_REPO_DIR", DEFAULT_REPO_DIR)), folder)?,
            secrets_dir: PathBuf::from(var(BUILD_SECRETS_DIR_ENV, DEFAULT_BUILD_SECRETS_DIR)),
            limit: SizeLimit::DEFAULT,
        })
    }
}

/// Finds the context: the first of `step_context.json`, `step_context_env.json` and
/// `step_context.json.zip` in the OpsChain folder that exists. `None` when there is none.
pub fn find_context(layout: &Layout) -> Option<ContextSource> {
    [ContextSource::Step(layout.step_context()), ContextSource::BuildEnv(layout.step_context_env()), ContextSource::Zip(layout.step_context_zip())]
        .into_iter()
        .find(|source| source.path().exists())
}

/// Parses a context read from `path` as strictly as the agent's step reads one
/// ([`StepContext::read_text`]: every member typed, unknown level members and duplicate keys at any
/// depth refused, the same errors naming the JSON pointer), so that `opschain-exec` accepts and
/// refuses the same documents. Of each level's properties only the declaring members
/// ([`declarations::MEMBERS`]) are built ([`Declaring`]): a large context costs one validating pass.
fn parse_context(path: &Path, bytes: &[u8]) -> Result<StepContext, ExecError> {
    let context = json::parse_or_explain::<StepContext<Declaring>, StepContext>(path, bytes).map_err(ExecError::Context)?;
    let level = |level: LevelProperties<Declaring>| LevelProperties { properties: StrictObject(level.properties.0) };
    Ok(StepContext { context: context.context, project: level(context.project), environment: level(context.environment), secrets: context.secrets })
}

/// Reads and validates the context at `source` as the agent does (`StepContext::read_text`); of each
/// level's properties only the declaring members are kept. For a zip, errors name the file as
/// `<archive>/step_context.json`.
pub fn read_context(source: &ContextSource, limit: SizeLimit) -> Result<StepContext, ExecError> {
    match source {
        ContextSource::Step(path) | ContextSource::BuildEnv(path) => parse_context(path, &json::read_bytes(path, limit).map_err(ExecError::Context)?),
        ContextSource::Zip(path) => {
            let zip_error = |source| ExecError::Zip { path: path.clone(), source };
            let file = std::fs::File::open(path).map_err(|e| zip_error(e.into()))?;
            let mut archive = zip::ZipArchive::new(file).map_err(zip_error)?;
            let mut entry = match archive.by_name(ZIP_ENTRY) {
                Ok(entry) => entry,
                Err(zip::result::ZipError::FileNotFound) => return Err(ExecError::ZipEntryMissing { path: path.clone() }),
                Err(e) => return Err(zip_error(e)),
            };
            let inner = source.document();
            let max = limit.max_bytes();
            let mut bytes = Vec::new();
            (&mut entry).take(max.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| zip_error(e.into()))?;
            if bytes.len() as u64 > max {
                return Err(ExecError::Context(JsonError::TooLarge { path: inner, limit: max }));
            }
            parse_context(&inner, &bytes)
        }
    }
}

/// The names of the build secret sets that apply to a context, in the order they are loaded (later
/// wins): the project's `opschain.config.build_secrets`, then the environment's. When neither level
/// configures a list, the default set [`DEFAULT_BUILD_SECRET_SET`] alone; a configured list (even an
/// empty one) replaces it unless it names it.
///
/// A list that is not an array of set names is an error at its pointer in the context
/// (`/project/properties/opschain/config/build_secrets/1`). A set name must be usable as a file
/// name: not empty, not `.` or `..`, no `/` and no NUL.
pub fn build_secret_sets(context: &StepContext) -> Result<Vec<String>, PointerError> {
    let levels = [("/project/properties", &context.project.properties.0), ("/environment/properties", &context.environment.properties.0)];
    let mut configured = false;
    let mut sets = Vec::new();
    for (prefix, props) in levels {
        if let Some(list) = configured_sets(props, prefix)? {
            configured = true;
            sets.extend(list);
        }
    }
    if !configured {
        sets.push(DEFAULT_BUILD_SECRET_SET.to_string());
    }
    Ok(sets)
}

/// The build secret sets one level's properties configure (`opschain.config.build_secrets`),
/// checked; `None` when it configures none. `prefix` is the level's pointer, for errors. The agent's
/// step checks each level with it too, so that it refuses the contexts `opschain-exec` refuses.
pub fn configured_sets(properties: &Map<String, Value>, prefix: &str) -> Result<Option<Vec<String>>, PointerError> {
    let Some(list) = properties.get("opschain").and_then(Value::as_object).and_then(|o| o.get("config")).and_then(Value::as_object).and_then(|c| c.get("build_secrets"))
    else {
        return Ok(None);
    };
    let pointer = format!("{prefix}/opschain/config/build_secrets");
    let list = list.as_array().ok_or_else(|| PointerError { pointer: pointer.clone(), message: "expected an array of build secret set names".into() })?;
    let mut sets = Vec::with_capacity(list.len());
    for (i, name) in list.iter().enumerate() {
        let fail = |message: &str| PointerError { pointer: format!("{pointer}/{i}"), message: message.into() };
        let name = name.as_str().ok_or_else(|| fail("a build secret set name must be a string"))?;
        check_set_name(name).map_err(fail)?;
        sets.push(name.to_string());
    }
    Ok(Some(sets))
}

/// Checks that a build secret set name can name a file in the secrets directory.
pub fn check_set_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name == "." || name == ".." {
        return Err("a build secret set name must not be empty, `.` or `..`");
    }
    if name.contains('/') || name.contains('\0') {
        return Err("a build secret set name must not contain `/` or a NUL byte");
    }
    Ok(())
}

/// Reads one build secret set: a JSON object of `{"NAME": "value"}`, strictly (duplicate keys
/// refused), every name POSIX-portable and every value a string. `Ok(None)` when the file does not
/// exist (the set was not supplied to this build). Errors never quote a value.
pub fn read_secret_set(path: &Path, limit: SizeLimit) -> Result<Option<Vec<(String, String)>>, ExecError> {
    let StrictObject(map) = match json::read_file::<StrictObject>(path, limit) {
        Ok(object) => object,
        Err(JsonError::Missing { .. }) => return Ok(None),
        Err(e) => return Err(ExecError::SecretSet(e)),
    };
    map.into_iter()
        .map(|(name, value)| {
            let mut pointer = "/".to_string();
            push_escaped(&mut pointer, &name);
            let fail = |message: &str| ExecError::Declaration { file: path.to_path_buf(), source: PointerError { pointer: pointer.clone(), message: message.into() } };
            env::check_name(&name).map_err(fail)?;
            let Value::String(value) = value else { return Err(fail("a build secret value must be a string")) };
            env::check_value(&value).map_err(fail)?;
            Ok((name, value))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The variables `opschain-exec` sets over its own environment for `context` found at `source`, in
/// the order they are applied (a later one of the same name wins): `opschain.env` of the merged
/// properties, the runner secrets, then each existing build secret set.
pub fn env_for(options: &ExecOptions, source: &ContextSource, context: &StepContext) -> Result<Vec<(String, String)>, ExecError> {
    let layout = &options.layout;
    let context_file = source.document();
    let repo_sources = properties::read_repository(layout, context.environment_code(), options.limit)?;
    let mut sources: Vec<(&Path, &str, &Map<String, Value>)> = repo_sources.iter().map(|(p, m)| (p.as_path(), "", m)).collect();
    sources.push((&context_file, "/project/properties", &context.project.properties.0));
    sources.push((&context_file, "/environment/properties", &context.environment.properties.0));
    // Validate each source on its own first, so that an error names the file it is in.
    for (file, prefix, props) in &sources {
        declarations::check_env(props)
            .map_err(|e| ExecError::Declaration { file: file.to_path_buf(), source: PointerError { pointer: format!("{prefix}{}", e.pointer), message: e.message } })?;
    }
    let declaration = |source| ExecError::Declaration { file: context_file.clone(), source };
    env::check_secrets(&context.secrets).map_err(declaration)?;
    let sets = build_secret_sets(context).map_err(declaration)?;

    // Only the env declarations matter here: merge just those, in the agent's order.
    let mut merged = Map::new();
    for (_, _, props) in &sources {
        declarations::merge_into(&mut merged, props, &["env"]);
    }
    let mut vars = env::parse(&merged).map_err(|e| declaration(PointerError { pointer: format!("(merged declarations) {}", e.pointer), message: e.message }))?;
    vars.extend(context.secrets.iter().map(|(n, v)| (n.clone(), v.clone())));
    // The bundle holds every set that applies, merged by the builder; without one (a build whose
    // Dockerfile mounts sets by name), each set that applies is read from its own file.
    match read_secret_set(&options.secrets_dir.join(BUILD_SECRETS_BUNDLE), options.limit)? {
        Some(bundle) => vars.extend(bundle),
        None => {
            for set in sets {
                if let Some(secrets) = read_secret_set(&options.secrets_dir.join(&set), options.limit)? {
                    vars.extend(secrets);
                }
            }
        }
    }
    Ok(vars)
}

/// Runs `command` with the context's variables set: finds and reads the context, computes the
/// variables ([`env_for`]) and replaces this process with the command (`execvp`, searching `PATH`).
/// With no context the command runs unchanged. Returns only on failure, before anything ran.
pub fn exec(options: &ExecOptions, command: &[OsString]) -> Result<Infallible, ExecError> {
    let (program, _) = command.split_first().ok_or(ExecError::NoCommand)?;
    let vars = match find_context(&options.layout) {
        Some(source) => {
            let context = read_context(&source, options.limit)?;
            env_for(options, &source, &context)?
        }
        None => Vec::new(),
    };
    let exec_error = |source| ExecError::Exec { command: program.to_string_lossy().into_owned(), source };
    let args = command.iter().map(|arg| CString::new(arg.as_bytes()).map_err(|_| exec_error(nix::Error::EINVAL))).collect::<Result<Vec<CString>, ExecError>>()?;
    for (name, value) in &vars {
        // Single-threaded here (no runtime was started): setting the environment is sound.
        std::env::set_var(name, value);
    }
    nix::unistd::execvp(&args[0], &args).map_err(exec_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(s: &str) -> StepContext {
        json::parse(Path::new("c.json"), s.as_bytes()).unwrap()
    }

    #[test]
    fn default_set_when_nothing_is_configured() {
        assert_eq!(build_secret_sets(&context("{}")).unwrap(), ["opschain-build-env"]);
    }

    #[test]
    fn project_then_environment_and_a_list_replaces_the_default() {
        let ctx = context(
            r#"{"project": {"properties": {"opschain": {"config": {"build_secrets": ["p1", "p2"]}}}},
                "environment": {"properties": {"opschain": {"config": {"build_secrets": ["e1"]}}}}}"#,
        );
        assert_eq!(build_secret_sets(&ctx).unwrap(), ["p1", "p2", "e1"]);
        let ctx = context(r#"{"environment": {"properties": {"opschain": {"config": {"build_secrets": []}}}}}"#);
        assert!(build_secret_sets(&ctx).unwrap().is_empty());
        let ctx = context(r#"{"environment": {"properties": {"opschain": {"config": {"build_secrets": ["e", "opschain-build-env"]}}}}}"#);
        assert_eq!(build_secret_sets(&ctx).unwrap(), ["e", "opschain-build-env"]);
    }

    #[test]
    fn bad_lists_point_at_the_entry() {
        let ctx = context(r#"{"project": {"properties": {"opschain": {"config": {"build_secrets": ["ok", "../x"]}}}}}"#);
        assert_eq!(build_secret_sets(&ctx).unwrap_err().pointer, "/project/properties/opschain/config/build_secrets/1");
        let ctx = context(r#"{"environment": {"properties": {"opschain": {"config": {"build_secrets": "x"}}}}}"#);
        assert_eq!(build_secret_sets(&ctx).unwrap_err().pointer, "/environment/properties/opschain/config/build_secrets");
    }

    #[test]
    fn secret_set_errors_never_quote_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("set");
        std::fs::write(&path, r#"{"GOOD": "x", "BAD": 424242}"#).unwrap();
        let err = read_secret_set(&path, SizeLimit::DEFAULT).unwrap_err().to_string();
        assert!(err.contains("/BAD") && !err.contains("424242"), "{err}");
        assert!(read_secret_set(&dir.path().join("absent"), SizeLimit::DEFAULT).unwrap().is_none());
    }
}
