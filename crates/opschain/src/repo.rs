//! The git side of a change: which repository, which commit, and a fresh copy of its checkout
//! per step.
//!
//! A `--repo` directory that is not the top of a git work tree (e.g. `fixtures/demo`, inside this
//! project's own repository) is snapshotted: copied (without `.git` and `target`) under
//! `<state dir>/repos/<name>-<time>`, `git init`ed and committed there, and the change runs from
//! that commit. A retry uses the same snapshot, so it runs the same commit.
//!
//! Steps do not check out the commit themselves: a change's [`Checkouts`] checks it out once (a
//! shared clone, so its `.git` is complete but small) and gives every step a private copy of that
//! tree ([`copy_checkout`]). The copy is byte for byte what a fresh checkout would give, `.git`
//! included, but costs a few file copies instead of two git processes creating and indexing it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use super::private;
use opschain_runner::git::GitError;

/// Why a git operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// A git command failed.
    #[error(transparent)]
    Git(#[from] GitError),
    /// tar could not be started to extract a `git archive`.
    #[error("cannot run tar -x")]
    SpawnTar {
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// tar failed to extract a `git archive`.
    #[error("git {args} | tar -x failed: {stderr}")]
    Extract {
        /// The git arguments.
        args: String,
        /// tar's stderr.
        stderr: String,
    },
    /// A directory could not be created.
    #[error("cannot create the directory {}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A fresh checkout's `.git` could not be trimmed to what a step needs.
    #[error("cannot trim {} to what a step needs", path.display())]
    TrimGit {
        /// The `.git` directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
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

/// Runs git with `args` in `dir`, with the identity and defaults a snapshot commit needs, and
/// returns its trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> Result<String, RepoError> {
    let config = ["-c", "user.name=opschain", "-c", "user.email=opschain@localhost", "-c", "init.defaultBranch=main", "-c", "advice.detachedHead=false"];
    let args: Vec<&str> = config.iter().chain(args).copied().collect();
    let out = opschain_runner::git::run(Some(dir), &args).map_err(|e| match e {
        // Name only the caller's arguments, not the fixed configuration.
        GitError::Spawn { source, .. } => GitError::Spawn { args: args[config.len()..].join(" "), source },
        GitError::Failed { stderr, .. } => GitError::Failed { args: args[config.len()..].join(" "), stderr },
    })?;
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
    let repos = state_dir.join("repos");
    private_dirs(&repos)?;
    let dest = repos.join(format!("{name}-{nanos}"));
    copy_dir(dir, &dest, &[".git", "target"], private::DIR_MODE)?;
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
/// written to `repo`). The clone takes no git template (`--template=`): no sample hooks, no
/// `description`, no `info/exclude`, none of which a step uses, and each would be one more file to
/// copy for every step.
pub fn checkout(repo: &Path, commit: &str, dest: &Path) -> Result<(), RepoError> {
    let parent = dest.parent().unwrap_or(Path::new("/"));
    private_dirs(parent)?;
    git(parent, &["clone", "-q", "--shared", "--no-checkout", "--template=", &repo.to_string_lossy(), &dest.to_string_lossy()])?;
    git(dest, &["checkout", "-q", "--detach", commit])?;
    Ok(())
}

/// Copies the checkout at `from` to `to` (which must not exist), everything included (`.git`,
/// ignored files): directories are made anew, symlinks recreated with the same target, regular
/// files copied with their permission bits (`std::fs::copy`, which lets the kernel copy the data,
/// and reflinks it on filesystems that can). Nothing is hard-linked: an action may rewrite any
/// file of its repo in place (or `chmod` it, which a hard link would share), and no step may
/// change a file another step, or the source, sees.
pub fn copy_checkout(from: &Path, to: &Path) -> Result<(), RepoError> {
    copy_dir(from, to, &[], private::DIR_MODE)
}

/// Creates `dir` and its missing parents `0700` (see [`private`]): snapshots, sandboxes and the
/// directories above them are their owner's only.
fn private_dirs(dir: &Path) -> Result<(), RepoError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(private::DIR_MODE).create(dir).map_err(|source| RepoError::CreateDir { path: dir.to_path_buf(), source })
}

/// Copies the directory `from` to `to` (which must not exist; its parent must), leaving out every
/// entry, at any depth, named in `skip`: directories made anew, symlinks recreated with the same
/// target, regular files copied with their permission bits. `to` itself is made with `mode`
/// (`0700` for the top of a copy: the copy is private; `0o777` less the umask below it). The one
/// copy behind a step's private checkout ([`copy_checkout`]) and a `--repo` snapshot
/// ([`prepare`], which skips `.git` and `target`).
fn copy_dir(from: &Path, to: &Path, skip: &[&str], mode: u32) -> Result<(), RepoError> {
    use std::os::unix::fs::DirBuilderExt;
    let err = |source| RepoError::Copy { from: from.to_path_buf(), to: to.to_path_buf(), source };
    std::fs::DirBuilder::new().mode(mode).create(to).map_err(err)?;
    for entry in std::fs::read_dir(from).map_err(err)? {
        let entry = entry.map_err(err)?;
        let name = entry.file_name();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        let kind = entry.file_type().map_err(err)?;
        if kind.is_symlink() {
            let target = std::fs::read_link(&src).map_err(err)?;
            std::os::unix::fs::symlink(target, &dst).map_err(err)?;
        } else if kind.is_dir() {
            copy_dir(&src, &dst, skip, 0o777)?;
        } else {
            std::fs::copy(&src, &dst).map_err(err)?;
        }
    }
    Ok(())
}

/// The checkouts of one change's run: one per commit, made on first use next to the step
/// sandboxes (in the parent directory of the first step's sandbox, i.e. the change's sandbox
/// directory), only ever read afterwards, and copied for each step ([`copy_checkout`]). Removed
/// when dropped unless `keep` is set. A controller killed with -9 leaves them behind; `change
/// retry` removes the change's whole sandbox directory before it runs again.
#[derive(Debug)]
pub struct Checkouts {
    keep: bool,
    made: Mutex<HashMap<(PathBuf, String, PathBuf), PathBuf>>,
}

impl Checkouts {
    /// No checkout yet. `keep` leaves them on disk when dropped (default: removed).
    pub fn new(keep: bool) -> Checkouts {
        Checkouts { keep, made: Mutex::new(HashMap::new()) }
    }

    /// Puts a private copy of `commit` of `repo` at `dest` (which must not exist; its parent is
    /// created), checking the commit out into `dest`'s parent first when this is its first use
    /// there. Concurrent callers wait for that one checkout rather than each making their own.
    pub fn copy_to(&self, repo: &Path, commit: &str, dest: &Path) -> Result<(), RepoError> {
        let parent = dest.parent().unwrap_or(Path::new("/")).to_path_buf();
        let source = {
            let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
            let key = (repo.to_path_buf(), commit.to_string(), parent.clone());
            match made.get(&key) {
                Some(path) => path.clone(),
                None => {
                    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
                    let path = parent.join(format!("checkout-{}-{}-{nanos}", &commit[..commit.len().min(12)], std::process::id()));
                    private_dirs(&parent)?;
                    spread_subdirectories(&parent);
                    // A checkout that fails half way is removed, not left for nobody to find.
                    let made_one = checkout(repo, commit, &path)
                        .and_then(|()| trim_git_dir(&path.join(".git")).map_err(|source| RepoError::TrimGit { path: path.join(".git"), source }));
                    if let Err(e) = made_one {
                        let _ = std::fs::remove_dir_all(&path);
                        return Err(e);
                    }
                    made.insert(key, path.clone());
                    path
                }
            }
        };
        copy_checkout(&source, dest)
    }
}

/// Leaves in the `.git` of a fresh checkout only what a detached checkout needs: `HEAD` (the
/// commit), `config`, `index`, `packed-refs` (the source's branches as `origin/*`, and its
/// tags), `objects/info/alternates` (the borrowed objects) and the `refs` directory. Gone are
/// the reflogs (`logs/`), the local branch the clone made and left (HEAD is detached), the
/// `origin/HEAD` symref and empty directories, which git recreates when it needs them. `git
/// status`, `log`, `describe`, `diff`, `branch -a` and commits on a new branch work as before;
/// each step copies 9 entries of `.git` instead of 24 (see [`spread_subdirectories`] for why
/// every file a step creates counts).
fn trim_git_dir(git_dir: &Path) -> std::io::Result<()> {
    let gone = |r: std::io::Result<()>| match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    };
    gone(std::fs::remove_dir_all(git_dir.join("logs")))?;
    gone(std::fs::remove_dir_all(git_dir.join("refs/heads")))?;
    gone(std::fs::remove_dir_all(git_dir.join("refs/remotes")))?;
    gone(std::fs::remove_dir(git_dir.join("refs/tags")))?;
    gone(std::fs::remove_dir(git_dir.join("objects/pack")))?;
    Ok(())
}

/// Marks `dir` (a change's sandbox directory) as the top of directory hierarchies for ext4's
/// Orlov allocator (`chattr +T`, `FS_TOPDIR_FL`), so that each step sandbox made in it starts in
/// its own block group instead of the group of `dir`. On an ext4 without a journal (this
/// project's benchmark machine) every inode allocation skips the inodes of its group freed in the
/// last 60 to 360 seconds, one by one; a thousand sandboxes created and removed in one group make
/// each new file scan thousands of them (three quarters of the controller's CPU time in a
/// profile of 200 parallel steps), while spread over the groups they cost nothing. A hint only:
/// on another filesystem, or when the flag cannot be set, nothing changes.
pub fn spread_subdirectories(dir: &Path) {
    use std::os::fd::AsRawFd;
    const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;
    let Ok(file) = std::fs::File::open(dir) else { return };
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS/SETFLAGS read and write one int through the pointer we pass.
    unsafe {
        if libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) != 0 || flags & FS_TOPDIR_FL != 0 {
            return;
        }
        flags |= FS_TOPDIR_FL;
        libc::ioctl(file.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags);
    }
}

/// Removes the change's checkouts (unless they are kept for debugging).
impl Drop for Checkouts {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let made = self.made.get_mut().unwrap_or_else(|e| e.into_inner());
        for path in made.values() {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

/// Writes the files of `commit` under `path` (a directory of the repository; the whole tree when
/// `None`) into `dest`, with no `.git`: `git archive` piped into `tar -x`, one pass and no clone.
/// Returns false, writing nothing, when the commit has no such path.
pub fn export(repo: &Path, commit: &str, path: Option<&str>, dest: &Path) -> Result<bool, RepoError> {
    let object = match path {
        Some(path) => format!("{commit}:{path}"),
        None => commit.to_string(),
    };
    match git(repo, &["rev-parse", "--verify", "-q", &object]) {
        Ok(_) => {}
        // With -q, a missing object is an exit with nothing said; anything else (no repository,
        // a bad commit) says why, and is an error.
        Err(RepoError::Git(GitError::Failed { stderr, .. })) if stderr.is_empty() => return Ok(false),
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(dest).map_err(|source| RepoError::CreateDir { path: dest.to_path_buf(), source })?;
    let mut args = vec!["archive", "--format=tar", commit];
    if let Some(path) = path {
        args.extend(["--", path]);
    }
    let shown = args.join(" ");
    let spawn = |source| RepoError::Git(GitError::Spawn { args: shown.clone(), source });
    let mut archive = opschain_runner::git::command(Some(repo)).args(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(spawn)?;
    let tar_input = archive.stdout.take().map(Stdio::from).unwrap_or_else(Stdio::null);
    let tar = Command::new("tar").arg("-x").arg("-C").arg(dest).stdin(tar_input).stderr(Stdio::piped()).output();
    let archived = archive.wait_with_output().map_err(spawn)?;
    // tar first: when it cannot run or write, git only sees its pipe close (SIGPIPE).
    let tar = tar.map_err(|source| RepoError::SpawnTar { source })?;
    if !tar.status.success() {
        return Err(RepoError::Extract { args: shown, stderr: String::from_utf8_lossy(&tar.stderr).trim().to_string() });
    }
    if !archived.status.success() {
        return Err(RepoError::Git(GitError::Failed { args: shown, stderr: String::from_utf8_lossy(&archived.stderr).trim().to_string() }));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn committed_repo() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/script.sh"), "#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(dir.path().join("sub/script.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("sub/script.sh", dir.path().join("link")).unwrap();
        git(dir.path(), &["init", "-q"]).unwrap();
        git(dir.path(), &["add", "-A"]).unwrap();
        git(dir.path(), &["commit", "-q", "-m", "one"]).unwrap();
        dir
    }

    #[test]
    fn each_copy_is_private_and_a_working_detached_checkout() {
        let repo = committed_repo();
        let commit = resolve(repo.path(), "HEAD").unwrap();
        let sandboxes = tempfile::tempdir().unwrap();
        let checkouts = Checkouts::new(false);
        let (a, b) = (sandboxes.path().join("change/a"), sandboxes.path().join("change/b"));
        checkouts.copy_to(repo.path(), &commit, &a).unwrap();
        checkouts.copy_to(repo.path(), &commit, &b).unwrap();
        // One checkout for both copies, next to them.
        let made: Vec<_> = std::fs::read_dir(sandboxes.path().join("change")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(made.iter().filter(|n| n.starts_with("checkout-")).count(), 1, "{made:?}");
        let (sa, sb) = (std::fs::metadata(a.join("sub/script.sh")).unwrap(), std::fs::metadata(b.join("sub/script.sh")).unwrap());
        assert_ne!(sa.ino(), sb.ino(), "copies, not hard links");
        assert_eq!(sa.nlink(), 1);
        assert_eq!(sa.mode() & 0o777, 0o755);
        assert_eq!(std::fs::read_link(a.join("link")).unwrap(), Path::new("sub/script.sh"));
        std::fs::write(a.join("sub/script.sh"), "changed").unwrap();
        assert_eq!(std::fs::read_to_string(b.join("sub/script.sh")).unwrap(), "#!/bin/sh\necho hi\n");
        // The trimmed .git still answers what a step asks of it.
        assert_eq!(git(&b, &["rev-parse", "HEAD"]).unwrap(), commit);
        assert_eq!(git(&b, &["status", "--porcelain"]).unwrap(), "");
        assert_eq!(git(&a, &["status", "--porcelain"]).unwrap(), "M sub/script.sh");
        git(&a, &["commit", "-q", "-am", "two"]).unwrap();
        assert_eq!(git(&b, &["rev-parse", "HEAD"]).unwrap(), commit, "a commit in one copy is not seen in another");
        assert!(!b.join(".git/logs").exists(), "no reflogs copied");
        drop(checkouts);
        let left: Vec<_> = std::fs::read_dir(sandboxes.path().join("change")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 2, "only the step copies are left once the checkouts are dropped: {left:?}");
    }
}
