//! Where things are: the repo directory, its OpsChain folder, and every file path derived from them.
//!
//! The repo is `/opt/opschain` unless `--repo DIR` or `OPSCHAIN_REPO_DIR` says otherwise; the folder
//! is `.opschain` unless `OPSCHAIN_REPO_FOLDER` says otherwise (MintPress uses `.mintpress`).

use std::path::PathBuf;

/// The repo directory inside a runner container.
pub const DEFAULT_REPO_DIR: &str = "/opt/opschain";
/// The OpsChain folder inside the repo.
pub const DEFAULT_REPO_FOLDER: &str = ".opschain";
/// Name of the step runtime directory inside the OpsChain folder, where the agent puts the files it
/// hands to the action (merged properties, writable copies, the child steps file).
pub const RUNTIME_DIR: &str = "step";

/// The resolved places of one step. Immutable once built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The repo directory: the action's working directory and HOME. Absolute.
    pub repo: PathBuf,
    /// The OpsChain folder's name, relative to `repo` (default `.opschain`).
    pub folder: String,
}

impl Layout {
    /// Builds a layout; a relative `repo` is made absolute against the current directory so that
    /// every path handed to the action is absolute.
    pub fn new(repo: impl Into<PathBuf>, folder: impl Into<String>) -> std::io::Result<Layout> {
        let repo = repo.into();
        let repo = if repo.is_absolute() { repo } else { std::env::current_dir()?.join(repo) };
        Ok(Layout { repo, folder: folder.into() })
    }

    /// `<repo>/<folder>`.
    pub fn folder_dir(&self) -> PathBuf {
        self.repo.join(&self.folder)
    }

    /// `<repo>/<folder>/step_context.json`: the step input.
    pub fn step_context(&self) -> PathBuf {
        self.folder_dir().join("step_context.json")
    }

    /// `<repo>/<folder>/step_context_env.json`: the env-only context of an image build.
    pub fn step_context_env(&self) -> PathBuf {
        self.folder_dir().join("step_context_env.json")
    }

    /// `<repo>/<folder>/step_context.json.zip`: the zipped context of a MintPress image build.
    pub fn step_context_zip(&self) -> PathBuf {
        self.folder_dir().join("step_context.json.zip")
    }

    /// `<repo>/<folder>/step_result.json`: the step output.
    pub fn step_result(&self) -> PathBuf {
        self.folder_dir().join("step_result.json")
    }

    /// `<repo>/<folder>/actions.toml`: the action definitions.
    pub fn actions(&self) -> PathBuf {
        self.folder_dir().join("actions.toml")
    }

    /// `<repo>/<folder>/properties.json`: the repository properties.
    pub fn repo_properties(&self) -> PathBuf {
        self.folder_dir().join("properties.json")
    }

    /// `<repo>/<folder>/environments/<code>.json`: the repository's properties for one environment.
    pub fn repo_environment_properties(&self, code: &str) -> PathBuf {
        self.folder_dir().join("environments").join(format!("{code}.json"))
    }

    /// `<repo>/<folder>/Dockerfile`: the custom step Dockerfile, when the repo has one.
    pub fn dockerfile(&self) -> PathBuf {
        self.folder_dir().join("Dockerfile")
    }

    /// `<repo>/<folder>/step`: the runtime directory of the files the agent hands to the action.
    pub fn runtime_dir(&self) -> PathBuf {
        self.folder_dir().join(RUNTIME_DIR)
    }
}
