//! The git side of a change: which repository, which commit, and a fresh copy of its checkout
//! per step.
//!
//! A `--repo` directory that is not the top of a git work tree (e.g. `fixtures/demo`, inside this
//! project's own repository) is snapshotted: copied (without `.git` and `target`) under
//! `<state dir>/repos/<name>-<commit>`, `git init`ed and committed there, and the change runs from
//! that commit. The commit is a function of the content, so an unchanged directory is one
//! snapshot however many changes run it. A retry uses the same snapshot, so it runs the same
//! commit; [`crate::gc`] says how long a snapshot is kept.
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
    /// `--git-remote-name` given for a directory that is not the top of a git work tree.
    #[error("{} is not the top of a git work tree: it has no git remote {remote:?}", dir.display())]
    NotAWorkTree {
        /// The directory.
        dir: PathBuf,
        /// The remote named.
        remote: String,
    },
    /// The work tree has no git remote of that name.
    #[error("git remote {remote:?} of {} does not exist ({known})", dir.display())]
    NoRemote {
        /// The work tree.
        dir: PathBuf,
        /// The remote named.
        remote: String,
        /// The remotes it has.
        known: Box<super::catalog::Known>,
    },
    /// Fetching the remote failed.
    #[error("cannot fetch the git remote {remote:?} of {}", dir.display())]
    Fetch {
        /// The work tree.
        dir: PathBuf,
        /// The remote.
        remote: String,
        /// The cause.
        #[source]
        source: Box<GitError>,
    },
    /// The repository directory does not exist.
    #[error("the repository {} does not exist", dir.display())]
    NoRepo {
        /// The directory.
        dir: PathBuf,
    },
    /// The repository (or the commit that runs) has no OpsChain folder.
    #[error(
        "{where_} has no {folder} folder: it is not an OpsChain project (`opschain dev create-dockerfile --repo DIR` starts one; its actions go in {folder}/actions.toml)"
    )]
    NoFolder {
        /// The directory, or `commit C of DIR`.
        where_: String,
        /// The OpsChain folder looked for.
        folder: String,
    },
    /// The revision names no commit of the repository.
    #[error("the git revision {rev:?} does not exist ({known})")]
    UnknownRevision {
        /// The repository.
        repo: PathBuf,
        /// The revision given.
        rev: String,
        /// Its branches and tags.
        known: Box<super::catalog::Known>,
    },
    /// No `--repo`, and the working directory holds no OpsChain folder.
    #[error("the working directory {} has no {folder} folder: run from the project's repository or give --repo DIR", dir.display())]
    NotARepo {
        /// The working directory.
        dir: PathBuf,
        /// The OpsChain folder looked for.
        folder: String,
    },
    /// The working directory cannot be found.
    #[error("cannot find the working directory")]
    WorkingDirectory(#[source] std::io::Error),
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
/// otherwise a committed snapshot under `<state_dir>/repos` ([`snapshot`]).
pub fn prepare(dir: &Path, state_dir: &Path) -> Result<PathBuf, RepoError> {
    if is_repo_top(dir) {
        return dir.canonicalize().map_err(|source| RepoError::Copy { from: dir.to_path_buf(), to: dir.to_path_buf(), source });
    }
    snapshot(dir, &state_dir.join(SNAPSHOTS))
}

/// The directory of the state directory that holds the snapshots of plain directories.
pub const SNAPSHOTS: &str = "repos";

/// The fixed date of every snapshot commit: with the fixed identity and message, the same
/// content gives the same commit, so that snapshots of an unchanged directory are one.
const SNAPSHOT_DATE: &str = "2000-01-01T00:00:00Z";

/// Snapshots the plain directory `dir` into `repos`: copied (without `.git` and `target`) aside,
/// `git init`ed and committed there with a fixed identity, date and message, then renamed to
/// `<name>-<first 16 digits of the commit>`. The same content gives the same commit and so the
/// same snapshot: when it exists already (an earlier change of the same content, e.g. every
/// `opschain demo`), the copy is dropped and the existing one used. The caller holds
/// [`crate::gc::SnapshotLock`], so that no collection removes a snapshot between
/// here and the change that records it.
pub fn snapshot(dir: &Path, repos: &Path) -> Result<PathBuf, RepoError> {
    let name = dir.canonicalize().ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).unwrap_or_else(|| "repo".into());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    private_dirs(repos)?;
    let tmp = repos.join(format!(".{name}-{}-{nanos}", std::process::id()));
    let committed = copy_dir(dir, &tmp, &[".git", "target"], private::DIR_MODE).and_then(|()| commit_snapshot(&tmp));
    let commit = match committed {
        Ok(commit) => commit,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    let dest = repos.join(format!("{name}-{}", &commit[..commit.len().min(16)]));
    if dest.join(".git").is_dir() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Ok(dest);
    }
    std::fs::rename(&tmp, &dest).map_err(|source| {
        let _ = std::fs::remove_dir_all(&tmp);
        RepoError::Copy { from: tmp.clone(), to: dest.clone(), source }
    })?;
    Ok(dest)
}

/// `git init`, `add -A` and `commit` in `dir` with the fixed date [`SNAPSHOT_DATE`]; returns the
/// commit.
fn commit_snapshot(dir: &Path) -> Result<String, RepoError> {
    git(dir, &["init", "-q"])?;
    git(dir, &["add", "-A"])?;
    let args =
        ["-c", "user.name=opschain", "-c", "user.email=opschain@localhost", "-c", "commit.gpgsign=false", "commit", "-q", "--allow-empty", "-m", "opschain snapshot"];
    let out = opschain_runner::git::command(Some(dir))
        .env("GIT_AUTHOR_DATE", SNAPSHOT_DATE)
        .env("GIT_COMMITTER_DATE", SNAPSHOT_DATE)
        .args(args)
        .output()
        .map_err(|source| GitError::Spawn { args: "commit".into(), source })?;
    if !out.status.success() {
        return Err(GitError::Failed { args: "commit -m 'opschain snapshot'".into(), stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() }.into());
    }
    git(dir, &["rev-parse", "HEAD"])
}

/// Checks, before anything is made for it, that `dir` can be a change's repository with the
/// OpsChain folder `folder`: it exists, and when it is no git work tree (it will be
/// snapshotted) holds the folder. A work tree's folder is checked in the commit that runs
/// ([`check_folder_at`]).
pub fn check_repo(dir: &Path, folder: &str) -> Result<(), RepoError> {
    if !dir.is_dir() {
        return Err(RepoError::NoRepo { dir: dir.to_path_buf() });
    }
    if !is_repo_top(dir) && !dir.join(folder).is_dir() {
        return Err(RepoError::NoFolder { where_: dir.display().to_string(), folder: folder.to_string() });
    }
    Ok(())
}

/// Checks that `commit` of `repo` has the OpsChain folder `folder`.
pub fn check_folder_at(repo: &Path, commit: &str, folder: &str) -> Result<(), RepoError> {
    match git(repo, &["cat-file", "-e", &format!("{commit}:{folder}")]) {
        Ok(_) => Ok(()),
        Err(_) => Err(RepoError::NoFolder { where_: format!("commit {} of {}", &commit[..commit.len().min(12)], repo.display()), folder: folder.to_string() }),
    }
}

/// The names of the actions `<folder>/actions.toml` defines at revision `rev` of `repo` (a work
/// tree's commit; a plain directory's file as it is), in file order. Empty when there is no such
/// file or it does not parse (the step then says why).
pub fn action_names(repo: &Path, rev: &str, folder: &str) -> Vec<String> {
    let path = format!("{folder}/actions.toml");
    let text = if is_repo_top(repo) { git(repo, &["show", &format!("{rev}:{path}")]).ok() } else { std::fs::read_to_string(repo.join(&path)).ok() };
    text.and_then(|t| opschain_runner::actions::Actions::parse(Path::new(&path), &t).ok())
        .map(|a| a.actions.into_iter().map(|(name, _)| name).collect())
        .unwrap_or_default()
}

/// The files under the OpsChain folder `folder` of the work tree `repo` that differ from its
/// `HEAD` commit or are not tracked (and not ignored): a change runs a commit, so these edits
/// are not in it. Empty for a directory that is not a work tree's top (it is snapshotted whole).
pub fn uncommitted(repo: &Path, folder: &str) -> Result<Vec<String>, RepoError> {
    if !is_repo_top(repo) {
        return Ok(Vec::new());
    }
    let changed = git(repo, &["diff", "--name-only", "HEAD", "--", folder])?;
    let untracked = git(repo, &["ls-files", "--others", "--exclude-standard", "--", folder])?;
    let mut files: Vec<String> = changed.lines().chain(untracked.lines()).map(str::to_string).collect();
    files.sort();
    Ok(files)
}

/// The repository of `change create`: `repo` when given, else the working directory when it
/// holds the OpsChain folder `folder` (a directory run from by mistake, such as a home
/// directory, would otherwise be snapshotted whole).
pub fn repo_or_working_directory(repo: Option<PathBuf>, folder: &str) -> Result<PathBuf, RepoError> {
    if let Some(repo) = repo {
        return Ok(repo);
    }
    let cwd = std::env::current_dir().map_err(RepoError::WorkingDirectory)?;
    if !cwd.join(folder).is_dir() {
        return Err(RepoError::NotARepo { dir: cwd, folder: folder.to_string() });
    }
    Ok(cwd)
}

/// `rev` read against the git remote `remote` of the work tree `repo`, as OpsChain reads
/// `--git-rev` with `--git-remote-name`: the remote is fetched, then a branch of it is
/// `<remote>/<rev>`; any other revision (a tag, a commit) is `rev` itself.
pub fn remote_rev(repo: &Path, remote: &str, rev: &str) -> Result<String, RepoError> {
    if !is_repo_top(repo) {
        return Err(RepoError::NotAWorkTree { dir: repo.to_path_buf(), remote: remote.to_string() });
    }
    if git(repo, &["remote", "get-url", remote]).is_err() {
        let known: Vec<String> = git(repo, &["remote"]).unwrap_or_default().lines().map(String::from).collect();
        return Err(RepoError::NoRemote { dir: repo.to_path_buf(), remote: remote.to_string(), known: Box::new(super::catalog::Known::new(remote, known)) });
    }
    git(repo, &["fetch", "--quiet", "--tags", remote]).map_err(|e| match e {
        RepoError::Git(source) => RepoError::Fetch { dir: repo.to_path_buf(), remote: remote.to_string(), source: Box::new(source) },
        other => other,
    })?;
    let tracking = format!("{remote}/{rev}");
    match git(repo, &["rev-parse", "--verify", "--quiet", &format!("refs/remotes/{tracking}^{{commit}}")]) {
        Ok(_) => Ok(tracking),
        Err(_) => Ok(rev.to_string()),
    }
}

/// The directory of the repositories the changes keep their commits in: `<state_dir>/mirrors`.
pub fn mirrors_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("mirrors")
}

/// The ref a mirror keeps a change's commit under: `refs/opschain/kept/<commit>`. Outside
/// `refs/heads` and `refs/tags`, so a clone of the mirror (a step's checkout, `repo.tar`) does
/// not carry it; removing the last change of a commit may remove it.
pub fn kept_ref(commit: &str) -> String {
    format!("refs/opschain/kept/{commit}")
}

/// The bare repository that keeps, for the changes made from `repo`, the objects they need:
/// `<state_dir>/mirrors/<name>-<hash of repo's path>.git`. `None` for a snapshot of a plain
/// directory (under `<state_dir>/repos`), which is the change's own already.
pub fn mirror_of(state_dir: &Path, repo: &Path) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    if repo.starts_with(state_dir.join("repos")) || state_dir.canonicalize().is_ok_and(|s| repo.starts_with(s.join("repos"))) {
        return None;
    }
    let name = repo.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "repo".into());
    let hash = opschain_runner::transport::fnv1a64(repo.as_os_str().as_bytes());
    Some(mirrors_dir(state_dir).join(format!("{name}-{hash:016x}.git")))
}

/// Keeps the objects a change needs of `repo` (its `commit` and everything it reaches) in the
/// state directory, and returns the repository its steps and retries read from instead of `repo`:
/// the mirror ([`mirror_of`]), so that a `git gc --prune=now` in the user's repository after the
/// commit left its history breaks neither a running step nor a retry. The mirror is made once per
/// repository by a local bare clone (objects hard-linked where the filesystem allows, copied
/// otherwise); afterwards, with `refresh` (a new change), its branches and tags are fetched from
/// `repo` (only the objects it lacks), and the commit is fetched unless the mirror has it; the
/// commit is held by [`kept_ref`]. Without `refresh` (a change run again), `repo` is read only
/// when the mirror lacks the commit (a change made before mirrors). Concurrent controllers take
/// turns on a lock file beside the mirror. A snapshot (`None` from [`mirror_of`]) is returned as
/// it is.
pub fn keep(state_dir: &Path, repo: &Path, commit: &str, refresh: bool) -> Result<PathBuf, RepoError> {
    let Some(mirror) = mirror_of(state_dir, repo) else { return Ok(repo.to_path_buf()) };
    let has_commit = |dir: &Path| git(dir, &["cat-file", "-e", &format!("{commit}^{{commit}}")]).is_ok();
    if !refresh && has_commit(&mirror) {
        return Ok(mirror);
    }
    let parent = mirrors_dir(state_dir);
    private_dirs(&parent)?;
    let lock_path = mirror.with_extension("lock");
    let lock =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(|source| RepoError::CreateDir { path: lock_path.clone(), source })?;
    nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| RepoError::CreateDir { path: lock_path.clone(), source: errno.into() })
        .and_then(|_locked| {
            let source = repo.to_string_lossy();
            if !mirror.join("HEAD").is_file() {
                let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
                let tmp = parent.join(format!(".tmp-{}-{nanos}", std::process::id()));
                let cloned = git(&parent, &["clone", "-q", "--bare", "--template=", &source, &tmp.to_string_lossy()])
                    .and_then(|_| std::fs::rename(&tmp, &mirror).map_err(|e| RepoError::Copy { from: tmp.clone(), to: mirror.clone(), source: e }));
                if let Err(e) = cloned {
                    let _ = std::fs::remove_dir_all(&tmp);
                    return Err(e);
                }
            } else if refresh {
                git(&mirror, &["fetch", "-q", "--prune", &source, "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"])?;
            }
            if !has_commit(&mirror) {
                git(&mirror, &["fetch", "-q", &source, &format!("+{commit}:{}", kept_ref(commit))])?;
            }
            git(&mirror, &["update-ref", &kept_ref(commit), commit])?;
            Ok(mirror)
        })
}

/// The commit `rev` names in `repo`; a revision that names none is
/// [`RepoError::UnknownRevision`], with the branches and tags it could have meant.
pub fn resolve(repo: &Path, rev: &str) -> Result<String, RepoError> {
    match git(repo, &["rev-parse", "--verify", "--quiet", &format!("{rev}^{{commit}}")]) {
        Err(RepoError::Git(GitError::Failed { .. })) => {
            let refs = git(repo, &["for-each-ref", "--format=%(refname:short)", "refs/heads", "refs/tags", "refs/remotes"]).unwrap_or_default();
            let known = refs.lines().map(str::to_string).collect();
            Err(RepoError::UnknownRevision { repo: repo.to_path_buf(), rev: rev.to_string(), known: Box::new(super::catalog::Known::new(rev, known)) })
        }
        other => other,
    }
}

/// A fresh checkout of `commit` at `dest` (a shared clone: objects are borrowed, nothing is
/// written to `repo`; a change's `repo` is its mirror, see [`keep`]). The clone takes no git template (`--template=`): no sample hooks, no
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
