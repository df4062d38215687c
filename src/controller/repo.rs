//! The git side of a change: which repository, which commit, and a fresh checkout per step.
//!
//! A `--repo` directory that is not the top of a git work tree (e.g. `fixtures/demo`, inside this
//! project's own repository) is snapshotted: copied (without `.git` and `target`) under
//! `<state dir>/repos/<name>-<time>`, `git init`ed and committed there, and the change runs from
//! that commit. A retry uses the same snapshot, so it runs the same commit.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why a git operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// git could not be started.
    #[error("cannot run git {args}")]
    Spawn {
        /// The git arguments.
        args: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// git failed.
    #[error("git {args} failed: {stderr}")]
    Git {
        /// The git arguments.
        args: String,
        /// git's stderr.
        stderr: String,
    },
    /// Copying a directory for a snapshot failed.
    #[error("cannot copy {} to {}", from.display(), to.display())]
    Copy {
        /// The source.
        from: PathBuf,
        /// The destination.
        to: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Runs git with `args` in `dir` and returns its trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> Result<String, RepoError> {
    let shown = args.join(" ");
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=opschain", "-c", "user.email=opschain@localhost", "-c", "init.defaultBranch=main", "-c", "advice.detachedHead=false"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| RepoError::Spawn { args: shown.clone(), source })?;
    if !out.status.success() {
        return Err(RepoError::Git { args: shown, stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Whether `dir` is the top of a git work tree.
pub fn is_repo_top(dir: &Path) -> bool {
    match (git(dir, &["rev-parse", "--show-toplevel"]), dir.canonicalize()) {
        (Ok(top), Ok(canon)) => Path::new(&top).canonicalize().map(|t| t == canon).unwrap_or(false),
        _ => false,
    }
}

/// The repository a change uses for `dir`: `dir` itself when it is a git work tree's top,
/// otherwise a committed snapshot under `<state_dir>/repos`.
pub fn prepare(dir: &Path, state_dir: &Path) -> Result<PathBuf, RepoError> {
    if is_repo_top(dir) {
        return dir.canonicalize().map_err(|source| RepoError::Copy { from: dir.to_path_buf(), to: dir.to_path_buf(), source });
    }
    let name = dir.canonicalize().ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).unwrap_or_else(|| "repo".into());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let dest = state_dir.join("repos").join(format!("{name}-{nanos}"));
    copy_tree(dir, &dest)?;
    git(&dest, &["init", "-q"])?;
    git(&dest, &["add", "-A"])?;
    git(&dest, &["commit", "-q", "-m", "opschain snapshot"])?;
    Ok(dest)
}

/// The commit `rev` names in `repo`.
pub fn resolve(repo: &Path, rev: &str) -> Result<String, RepoError> {
    git(repo, &["rev-parse", "--verify", "--quiet", &format!("{rev}^{{commit}}")])
}

/// A fresh checkout of `commit` at `dest` (a shared clone: objects are borrowed, nothing is
/// written to `repo`).
pub fn checkout(repo: &Path, commit: &str, dest: &Path) -> Result<(), RepoError> {
    let parent = dest.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent).map_err(|source| RepoError::Copy { from: repo.to_path_buf(), to: dest.to_path_buf(), source })?;
    git(parent, &["clone", "-q", "--shared", "--no-checkout", &repo.to_string_lossy(), &dest.to_string_lossy()])?;
    git(dest, &["checkout", "-q", "--detach", commit])?;
    Ok(())
}

/// Writes the files of `commit` under `path` (a directory of the repository; the whole tree when
/// `None`) into `dest`, with no `.git`: `git archive` piped into `tar -x`, one pass and no clone.
/// Returns false, writing nothing, when the commit has no such path.
pub fn export(repo: &Path, commit: &str, path: Option<&str>, dest: &Path) -> Result<bool, RepoError> {
    let object = match path {
        Some(path) => format!("{commit}:{path}"),
        None => commit.to_string(),
    };
    if git(repo, &["rev-parse", "--verify", "-q", &object]).is_err() {
        return Ok(false);
    }
    std::fs::create_dir_all(dest).map_err(|source| RepoError::Copy { from: repo.to_path_buf(), to: dest.to_path_buf(), source })?;
    let mut args = vec!["archive", "--format=tar", commit];
    if let Some(path) = path {
        args.extend(["--", path]);
    }
    let shown = args.join(" ");
    let spawn = |what: &str, source| RepoError::Spawn { args: what.to_string(), source };
    let mut archive = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn(&shown, e))?;
    let tar_input = archive.stdout.take().map(Stdio::from).unwrap_or_else(Stdio::null);
    let tar = Command::new("tar").arg("-x").arg("-C").arg(dest).stdin(tar_input).stderr(Stdio::piped()).output();
    let archived = archive.wait_with_output().map_err(|e| spawn(&shown, e))?;
    if !archived.status.success() {
        return Err(RepoError::Git { args: shown, stderr: String::from_utf8_lossy(&archived.stderr).trim().to_string() });
    }
    let tar = tar.map_err(|e| spawn("(tar -x)", e))?;
    if !tar.status.success() {
        return Err(RepoError::Git { args: format!("{shown} | tar -x"), stderr: String::from_utf8_lossy(&tar.stderr).trim().to_string() });
    }
    Ok(true)
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), RepoError> {
    let err = |source| RepoError::Copy { from: from.to_path_buf(), to: to.to_path_buf(), source };
    std::fs::create_dir_all(to).map_err(err)?;
    for entry in std::fs::read_dir(from).map_err(err)? {
        let entry = entry.map_err(err)?;
        let name = entry.file_name();
        if name == ".git" || name == "target" {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        let kind = entry.file_type().map_err(err)?;
        if kind.is_symlink() {
            let target = std::fs::read_link(&src).map_err(err)?;
            std::os::unix::fs::symlink(target, &dst).map_err(err)?;
        } else if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).map_err(err)?;
        }
    }
    Ok(())
}
