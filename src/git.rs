//! The one way the crate runs git: [`command`] names the program and the repository, [`run`]
//! runs it and turns a failure into a [`GitError`] naming the arguments and git's stderr.
//!
//! Host-side only (the step image's build context, the controller): the in-container agent never
//! runs git.

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The git program, found on `PATH`.
pub const PROGRAM: &str = "git";

/// Why a git command failed.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// git could not be started (not installed, not on `PATH`).
    #[error("cannot run git {args}")]
    Spawn {
        /// The git arguments, space-separated.
        args: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// git ran and exited unsuccessfully.
    #[error("git {args} failed: {stderr}")]
    Failed {
        /// The git arguments, space-separated.
        args: String,
        /// git's stderr, trimmed (empty when git said nothing, e.g. `rev-parse -q` of a missing object).
        stderr: String,
    },
}

/// A git command working in `dir` (`git -C DIR`) when given, else in the current directory, with
/// its stdin closed (a git that asks for credentials fails instead of waiting). Callers add the
/// arguments and may replace stdin.
pub fn command(dir: Option<&Path>) -> Command {
    let mut command = Command::new(PROGRAM);
    if let Some(dir) = dir {
        command.arg("-C").arg(dir);
    }
    command.stdin(Stdio::null());
    command
}

/// Runs `git [-C dir] ARGS` to completion and returns its output when it succeeds.
pub fn run(dir: Option<&Path>, args: &[&str]) -> Result<Output, GitError> {
    let shown = args.join(" ");
    let output = command(dir).args(args).output().map_err(|source| GitError::Spawn { args: shown.clone(), source })?;
    if !output.status.success() {
        return Err(GitError::Failed { args: shown, stderr: String::from_utf8_lossy(&output.stderr).trim().to_string() });
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_names_git_and_the_repository() {
        let command = command(Some(Path::new("/some/repo")));
        assert_eq!(command.get_program(), PROGRAM);
        assert_eq!(command.get_args().collect::<Vec<_>>(), ["-C", "/some/repo"]);
        assert_eq!(super::command(None).get_args().count(), 0);
    }

    #[test]
    fn run_returns_the_output_of_a_successful_command() {
        let dir = tempfile::tempdir().unwrap();
        run(Some(dir.path()), &["init", "-q"]).unwrap();
        let out = run(Some(dir.path()), &["rev-parse", "--is-inside-work-tree"]).unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "true");
    }

    #[test]
    fn a_failing_command_names_its_arguments_and_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let err = run(Some(dir.path()), &["rev-parse", "HEAD"]).unwrap_err();
        match &err {
            GitError::Failed { args, stderr } => {
                assert_eq!(args, "rev-parse HEAD");
                assert!(stderr.contains("not a git repository"), "{stderr}");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
        assert!(err.to_string().starts_with("git rev-parse HEAD failed: "), "{err}");
    }

    #[test]
    fn a_quiet_miss_has_an_empty_stderr() {
        let dir = tempfile::tempdir().unwrap();
        run(Some(dir.path()), &["init", "-q"]).unwrap();
        let err = run(Some(dir.path()), &["rev-parse", "--verify", "-q", "HEAD"]).unwrap_err();
        assert!(matches!(err, GitError::Failed { ref stderr, .. } if stderr.is_empty()), "{err:?}");
    }
}
