//! What changes leave in the state directory, and when it goes.
//!
//! A change leaves, beside its rows in the store:
//!
//! * its sandboxes, `sandboxes/change-<id>/` (a step's private checkout, its step context with the
//!   runner secrets): removed by the backend as each step ends, and by [`after_change`] when the
//!   change ends; a controller killed with SIGKILL leaves them, and the next change to end (or
//!   `opschain gc`) removes those of every change no controller runs any longer. `--keep-sandboxes`
//!   keeps a change's own until `opschain gc`;
//! * the snapshot of a plain `--repo` directory, `repos/<name>-<commit>/`: shared by every change
//!   of the same content. A `change retry` needs it (it runs the same commit), so it is kept while
//!   a change that can be retried (`error`, `cancelled`, or left `running` by a killed controller)
//!   uses it and is within the retention ([`Retention`]: one of the last
//!   [`Retention::keep_changes`] changes, or younger than [`Retention::keep_days`] days). When a
//!   change succeeds, [`after_change`] removes its snapshot at once unless such a change, or a
//!   running one, uses it too;
//! * the Docker backend's caches: `sandboxes/repo-tars/<commit>-<scope>.tar` (the `repo.tar` of a
//!   project's commit) and `sandboxes/folders/<commit>/` (the commit's OpsChain folder), kept
//!   while a change of the commit is running or within the retention, whatever its status.
//!
//! [`collect`] (`opschain gc`) applies the whole rule; [`after_change`] is its cheap part, run as
//! every change ends. Neither touches what a change whose controller is alive uses, nor anything
//! but these directories.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::repo::SNAPSHOTS;
use super::status::ChangeStatus;
use super::store::{ChangeRow, Store, StoreError};

/// The state directory's directory of step sandboxes and image caches.
pub const SANDBOXES: &str = "sandboxes";

/// The Docker backend's cache of `repo.tar` archives, under [`SANDBOXES`].
pub const REPO_TARS: &str = "repo-tars";

/// The Docker backend's cache of OpsChain folders by commit, under [`SANDBOXES`].
pub const FOLDERS: &str = "folders";

/// How old a leftover temporary entry (a name starting with `.`: a snapshot or archive being
/// made) must be before it is taken for the remains of a killed controller.
const STALE_TEMPORARY: Duration = Duration::from_secs(24 * 3600);

/// Why a collection failed.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The store could not list the changes.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The snapshot lock could not be taken.
    #[error("cannot lock {}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A directory of the state directory could not be listed.
    #[error("cannot list {}", path.display())]
    Scan {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Something could not be removed.
    #[error("cannot remove {}", path.display())]
    Remove {
        /// What.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// How long what a retry needs is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// A change among the last this many (by id) is retained. Default: 20.
    pub keep_changes: usize,
    /// A change created less than this many days ago is retained. Default: 14.
    pub keep_days: u64,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention { keep_changes: Retention::DEFAULT_KEEP_CHANGES, keep_days: Retention::DEFAULT_KEEP_DAYS }
    }
}

impl Retention {
    /// The default of [`Retention::keep_changes`].
    pub const DEFAULT_KEEP_CHANGES: usize = 20;
    /// The default of [`Retention::keep_days`].
    pub const DEFAULT_KEEP_DAYS: u64 = 14;
}

/// One thing removed (or, in a dry run, to be removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    /// Its path.
    pub path: PathBuf,
    /// The bytes of the regular files in it.
    pub bytes: u64,
    /// Why it goes, in the user's terms.
    pub why: String,
}

/// An exclusive lock on the snapshots (`locks/snapshots.lock`), held while a change is created (from its
/// snapshot to its row in the store) and while snapshots are collected, so that a collection never
/// removes a snapshot a change is being created from. Released when dropped.
#[derive(Debug)]
pub struct SnapshotLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl SnapshotLock {
    /// Takes the lock of `state_dir`'s snapshots, waiting for another holder.
    pub fn take(state_dir: &Path) -> Result<SnapshotLock, GcError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        // Beside the per-change locks, not among the snapshots it guards: `repos/` holds
        // snapshots only.
        let dir = state_dir.join("locks");
        let path = dir.join("snapshots.lock");
        let fail = |source| GcError::Lock { path: path.clone(), source };
        std::fs::DirBuilder::new().recursive(true).mode(super::private::DIR_MODE).create(&dir).map_err(fail)?;
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).mode(super::private::FILE_MODE).open(&path).map_err(fail)?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, errno)| fail(errno.into()))?;
        Ok(SnapshotLock { _lock: lock })
    }
}

/// Whether a controller runs `change` now: its status is not final and its controller is alive
/// (holds the change's lock, see [`crate::liveness`]). The one place gc asks about liveness.
fn is_live(store: &Store, change: &ChangeRow) -> Result<bool, GcError> {
    Ok(!change.status.is_final() && store.controller_alive(change.id)?)
}

/// The changes of `changes` a controller runs now ([`is_live`]).
fn live_changes(store: &Store, changes: &[ChangeRow]) -> Result<HashSet<i64>, GcError> {
    let mut live = HashSet::new();
    for change in changes {
        if is_live(store, change)? {
            live.insert(change.id);
        }
    }
    Ok(live)
}

/// Whether `change retry` can run `change` again (it did not succeed).
fn is_retryable(change: &ChangeRow) -> bool {
    change.status != ChangeStatus::Success
}

/// What the changes of the store keep, by the rule of the module docs.
struct Kept {
    /// Changes a live controller runs.
    live: HashSet<i64>,
    /// The snapshot directory names kept.
    snapshots: HashSet<String>,
    /// The commits whose caches are kept.
    commits: HashSet<String>,
}

impl Kept {
    /// What `changes` keep under `retention` at `now`, those of `live` run by a controller now;
    /// `None` as the retention keeps what a retry may need of every change (the cheap
    /// collection, which applies no retention).
    fn of(changes: &[ChangeRow], live: &HashSet<i64>, repos: &Path, retention: Option<Retention>, now: SystemTime) -> Kept {
        let mut ids: Vec<i64> = changes.iter().map(|c| c.id).collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        let recent: HashSet<i64> = match retention {
            Some(r) => ids.into_iter().take(r.keep_changes).collect(),
            None => ids.into_iter().collect(),
        };
        let young = |change: &ChangeRow| match retention {
            Some(r) => created_secs(&change.created_at).is_none_or(|created| {
                let now = now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                now.saturating_sub(created) < r.keep_days.saturating_mul(24 * 3600)
            }),
            None => true,
        };
        let mut kept = Kept { live: HashSet::new(), snapshots: HashSet::new(), commits: HashSet::new() };
        for change in changes {
            let live = live.contains(&change.id);
            let retained = recent.contains(&change.id) || young(change);
            if live {
                kept.live.insert(change.id);
            }
            if live || retained {
                kept.commits.insert(change.commit.clone());
            }
            if live || (retained && is_retryable(change)) {
                kept.snapshots.extend(snapshot_name(&change.repo, repos));
            }
        }
        kept
    }
}

/// The name of the snapshot directory `repo` is, when it is one under `repos`.
fn snapshot_name(repo: &Path, repos: &Path) -> Option<String> {
    let parent = repo.parent()?;
    let same = parent == repos || parent.canonicalize().ok().zip(repos.canonicalize().ok()).is_some_and(|(a, b)| a == b);
    same.then(|| repo.file_name().map(|n| n.to_string_lossy().into_owned())).flatten()
}

/// Seconds since the epoch of a store time (`YYYY-MM-DDTHH:MM:SS[.fff]Z`, UTC); `None` when it is
/// not one.
fn created_secs(at: &str) -> Option<u64> {
    let b = at.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| at.get(range)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from the civil date (Howard Hinnant's algorithm), for the proleptic Gregorian calendar.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// The entries of `dir` (none when it does not exist).
fn entries(dir: &Path) -> Result<Vec<(String, PathBuf)>, GcError> {
    match std::fs::read_dir(dir) {
        Ok(read) => read
            .map(|entry| entry.map(|e| (e.file_name().to_string_lossy().into_owned(), e.path())).map_err(|source| GcError::Scan { path: dir.to_path_buf(), source }))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(GcError::Scan { path: dir.to_path_buf(), source }),
    }
}

/// The bytes of the regular files under `path` (symlinks not followed).
fn size_of(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    if !meta.is_dir() {
        return if meta.is_file() { meta.len() } else { 0 };
    }
    std::fs::read_dir(path).map(|read| read.filter_map(Result::ok).map(|e| size_of(&e.path())).sum()).unwrap_or(0)
}

/// Whether the temporary entry `path` is older than [`STALE_TEMPORARY`].
fn is_stale(path: &Path, now: SystemTime) -> bool {
    std::fs::symlink_metadata(path).and_then(|m| m.modified()).is_ok_and(|at| now.duration_since(at).is_ok_and(|age| age > STALE_TEMPORARY))
}

/// Collects what the state directory holds for changes: the list, and (unless `dry_run`) its
/// removal.
struct Collection<'a> {
    dry_run: bool,
    removed: &'a mut Vec<Removal>,
}

impl Collection<'_> {
    fn remove(&mut self, path: PathBuf, why: String) -> Result<(), GcError> {
        let bytes = size_of(&path);
        if !self.dry_run {
            let meta = std::fs::symlink_metadata(&path);
            let removed = match meta {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path),
                Ok(_) => std::fs::remove_file(&path),
                Err(e) => Err(e),
            };
            match removed {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(source) => return Err(GcError::Remove { path, source }),
                Ok(()) => {}
            }
        }
        self.removed.push(Removal { path, bytes, why });
        Ok(())
    }

    /// The sandboxes of changes that no controller runs (`all_final`: also those of changes
    /// that ended, kept by `--keep-sandboxes`; else only those of changes left unfinished).
    fn sandboxes(&mut self, sandboxes: &Path, changes: &[ChangeRow], kept: &Kept, all_final: bool) -> Result<(), GcError> {
        for (name, path) in entries(sandboxes)? {
            let Some(id) = name.strip_prefix("change-").and_then(|id| id.parse::<i64>().ok()) else { continue };
            if kept.live.contains(&id) {
                continue;
            }
            let why = match changes.iter().find(|c| c.id == id) {
                None => format!("sandbox of change {id}, which the store does not have"),
                Some(c) if c.status.is_final() && all_final => format!("sandbox of change {id}, which ended {}", c.status.as_str()),
                Some(c) if c.status.is_final() => continue,
                Some(c) => format!("sandbox of change {id}, left {} by a controller that is gone", c.status.as_str()),
            };
            self.remove(path, why)?;
        }
        Ok(())
    }

    /// The Docker backend's caches of commits no kept change has.
    fn caches(&mut self, sandboxes: &Path, kept: &Kept, now: SystemTime) -> Result<(), GcError> {
        for (cache, what) in [(REPO_TARS, "repository archive"), (FOLDERS, "OpsChain folder")] {
            for (name, path) in entries(&sandboxes.join(cache))? {
                if name.starts_with('.') {
                    if is_stale(&path, now) {
                        self.remove(path, format!("unfinished {what} of a controller that is gone"))?;
                    }
                    continue;
                }
                let commit = name.split(['-', '.']).next().unwrap_or_default();
                if !kept.commits.contains(commit) {
                    self.remove(path, format!("{what} of commit {commit}, which no retained change has"))?;
                }
            }
        }
        Ok(())
    }

    /// The snapshots no kept change uses (the caller holds the [`SnapshotLock`]).
    fn snapshots(&mut self, repos: &Path, kept: &Kept, now: SystemTime) -> Result<(), GcError> {
        for (name, path) in entries(repos)? {
            if name.starts_with('.') {
                if is_stale(&path, now) {
                    self.remove(path, "unfinished snapshot of a controller that is gone".into())?;
                }
                continue;
            }
            if !kept.snapshots.contains(&name) {
                self.remove(path, "repository snapshot that no running or retryable retained change uses".into())?;
            }
        }
        Ok(())
    }
}

/// `opschain gc`: removes from `state_dir` the sandboxes of every change no controller runs, the
/// snapshots and caches that no change within `retention` needs (see the module docs), and the
/// temporary remains of killed controllers; with `dry_run`, only says what it would remove.
pub fn collect(store: &Store, state_dir: &Path, retention: Retention, dry_run: bool) -> Result<Vec<Removal>, GcError> {
    let mut removed = Vec::new();
    let _lock = SnapshotLock::take(state_dir)?;
    let changes = store.changes(None)?;
    let repos = state_dir.join(SNAPSHOTS);
    let sandboxes = state_dir.join(SANDBOXES);
    let now = SystemTime::now();
    let kept = Kept::of(&changes, &live_changes(store, &changes)?, &repos, Some(retention), now);
    let mut collection = Collection { dry_run, removed: &mut removed };
    collection.sandboxes(&sandboxes, &changes, &kept, true)?;
    collection.caches(&sandboxes, &kept, now)?;
    collection.snapshots(&repos, &kept, now)?;
    Ok(removed)
}

/// The cheap part of [`collect`], run as the change `change_id` ends: its sandbox directory
/// (unless `keep_sandboxes`), the sandboxes of changes whose controller was killed, and its
/// snapshot when it succeeded and no running or retryable change uses it. No retention applies
/// here: what a retry may need stays for `opschain gc`.
pub fn after_change(store: &Store, state_dir: &Path, change_id: i64, keep_sandboxes: bool) -> Result<Vec<Removal>, GcError> {
    let mut removed = Vec::new();
    let changes = store.changes(None)?;
    let sandboxes = state_dir.join(SANDBOXES);
    let repos = state_dir.join(SNAPSHOTS);
    let now = SystemTime::now();
    let kept = Kept::of(&changes, &live_changes(store, &changes)?, &repos, None, now);
    let mut collection = Collection { dry_run: false, removed: &mut removed };
    let Some(change) = changes.iter().find(|c| c.id == change_id) else { return Ok(removed) };
    if !keep_sandboxes && !kept.live.contains(&change_id) {
        collection.remove(sandboxes.join(format!("change-{change_id}")), format!("sandbox of change {change_id}, which ended"))?;
    }
    collection.sandboxes(&sandboxes, &changes, &kept, false)?;
    if change.status == ChangeStatus::Success {
        if let Some(name) = snapshot_name(&change.repo, &repos) {
            let _lock = SnapshotLock::take(state_dir)?;
            // Read again under the lock: a change created meanwhile from the same snapshot keeps it.
            let changes = store.changes(None)?;
            if !Kept::of(&changes, &live_changes(store, &changes)?, &repos, None, now).snapshots.contains(&name) {
                collection.remove(repos.join(&name), format!("repository snapshot of change {change_id}, which succeeded"))?;
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_times_are_read_as_utc_seconds() {
        assert_eq!(created_secs("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(created_secs("2000-03-01T00:00:01.500Z"), Some(951_868_801));
        assert_eq!(created_secs("2026-12-08T00:03:41.264Z"), Some(1_796_688_221));
        assert_eq!(created_secs("yesterday"), None);
    }

    #[test]
    fn the_retention_keeps_the_last_changes_and_the_young_ones() {
        let repos = Path::new("/state/repos");
        let row = |id: i64, status: ChangeStatus, created: &str, snapshot: &str| ChangeRow {
            id,
            project: "p".into(),
            project_id: 1,
            environment: "e".into(),
            environment_id: 1,
            action: "a".into(),
            repo: repos.join(snapshot),
            git_rev: "HEAD".into(),
            commit: format!("c{id}"),
            backend: super::super::status::BackendKind::Process,
            secret_set: None,
            folder: None,
            status,
            cancel_requested: false,
            controller_pid: None,
            created_at: created.into(),
            finished_at: None,
            metadata: None,
            starting_versions: None,
            reason: None,
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(created_secs("2026-12-08T00:00:00Z").unwrap());
        let changes = [
            row(1, ChangeStatus::Error, "2026-01-01T00:00:00Z", "old-failed"),
            row(2, ChangeStatus::Error, "2026-12-07T00:00:00Z", "young-failed"),
            row(3, ChangeStatus::Success, "2026-12-07T00:00:00Z", "succeeded"),
            row(4, ChangeStatus::Cancelled, "2026-01-01T00:00:00Z", "last-cancelled"),
            // Left running by a controller that is gone: a retry can run it.
            row(5, ChangeStatus::Running, "2026-01-01T00:00:00Z", "killed"),
        ];
        let none = HashSet::new();
        let kept = Kept::of(&changes, &none, repos, Some(Retention { keep_changes: 2, keep_days: 7 }), now);
        let mut snapshots: Vec<_> = kept.snapshots.iter().cloned().collect();
        snapshots.sort();
        assert_eq!(snapshots, ["killed", "last-cancelled", "young-failed"]);
        assert!(kept.commits.contains("c3") && !kept.commits.contains("c1"));
        assert!(kept.live.is_empty());
        let all = Kept::of(&changes, &none, repos, None, now);
        let running = Kept::of(&changes, &HashSet::from([3]), repos, Some(Retention { keep_changes: 0, keep_days: 0 }), now);
        assert_eq!(running.snapshots.iter().collect::<Vec<_>>(), ["succeeded"], "a live change keeps its snapshot whatever the retention");
        assert_eq!(all.snapshots.len(), 4, "without a retention, every retryable change's");
    }
}
