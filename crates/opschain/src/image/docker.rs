//! The docker client of the step image pipeline: [`Docker::detect`] is the one place that picks a
//! docker client able to drive BuildKit (`RUN --mount=type=secret` needs it); every docker command
//! is made by [`Docker::command`], shelling out to the docker CLI with `std::process` only.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Output};

use opschain_runner::step_image::{BuildContext, ToolFailure};

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
///
/// The crate's one docker client: every docker command (builds, `run`, `rm`, `image inspect`,
/// registry `tag`/`push`/`pull`) is made by [`Docker::command`].
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
    fn a_docker_command_runs_the_client_with_buildkit() {
        let docker = Docker { program: PathBuf::from("/opt/docker") };
        let command = docker.command();
        assert_eq!(command.get_program(), "/opt/docker");
        let envs: Vec<_> = command.get_envs().collect();
        assert_eq!(envs, [(std::ffi::OsStr::new("DOCKER_BUILDKIT"), Some(std::ffi::OsStr::new("1")))]);
    }
}
