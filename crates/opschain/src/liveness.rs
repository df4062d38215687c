//! Whether a change's controller still runs: an OS lock that the running controller holds.
//!
//! The controller that runs a change holds an exclusive `flock(2)` on the change's lock file,
//! `<state dir>/locks/change-<id>.lock`, from the moment the change exists (or a retry claims it)
//! until its end is recorded. The kernel drops the lock when the process ends, however it ends
//! (SIGKILL, a crash, the machine stopping: the lock is not on disk), so the lock cannot lie as a
//! process id can: a reused number, or PID 1 of every container's own namespace. The lock file's
//! descriptor is close-on-exec, so no agent or tool the controller starts holds it on.
//!
//! The lock files stay (empty files, one per change): removing one while another process may be
//! about to lock it would let two processes lock two different files of the same name.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How many times [`ChangeLock::take`] tries a lock that is busy, [`TAKE_PAUSE`] apart: another
/// command may hold it for a moment to look (a few milliseconds), which is no live controller.
pub const TAKE_TRIES: u32 = 20;

/// The pause between two tries of [`ChangeLock::take`] (10 ms).
pub const TAKE_PAUSE: Duration = Duration::from_millis(10);

/// Why a change's lock could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LivenessError {
    /// The lock directory or file cannot be made or opened.
    #[error("cannot open the change lock {}", path.display())]
    Open {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `flock` failed for another reason than the lock being held.
    #[error("cannot lock {}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The lock file of change `id` in the lock directory `locks`.
pub fn lock_path(locks: &Path, id: i64) -> PathBuf {
    locks.join(format!("change-{id}.lock"))
}

/// A change's lock, held: the holder is the change's live controller (or a command recording
/// that its controller was lost). Dropping it releases the lock.
#[derive(Debug)]
pub struct ChangeLock {
    /// The open lock file, locked.
    _file: File,
    /// The change.
    id: i64,
}

impl ChangeLock {
    /// Takes the lock of change `id` once, without waiting: `None` when another process holds it.
    pub fn try_take(locks: &Path, id: i64) -> Result<Option<ChangeLock>, LivenessError> {
        let path = lock_path(locks, id);
        let file = open(locks, &path, true)?.expect("created when missing");
        Ok(flock(&file, &path, libc::LOCK_EX)?.then_some(ChangeLock { _file: file, id }))
    }

    /// Takes the lock of change `id`, trying [`TAKE_TRIES`] times while it is busy: `None` when
    /// another process holds it all that time (the change's live controller).
    pub fn take(locks: &Path, id: i64) -> Result<Option<ChangeLock>, LivenessError> {
        for _ in 1..TAKE_TRIES {
            if let Some(lock) = ChangeLock::try_take(locks, id)? {
                return Ok(Some(lock));
            }
            std::thread::sleep(TAKE_PAUSE);
        }
        ChangeLock::try_take(locks, id)
    }

    /// The change whose lock this is.
    pub fn change_id(&self) -> i64 {
        self.id
    }
}

/// Whether a live process holds the lock of change `id` (its controller). A change with no lock
/// file (made by a controller from before the locks, or never started) has none.
pub fn held(locks: &Path, id: i64) -> Result<bool, LivenessError> {
    let path = lock_path(locks, id);
    let Some(file) = open(locks, &path, false)? else { return Ok(false) };
    // A shared lock, so that two commands looking at once do not see each other as the
    // controller; released when `file` closes.
    Ok(!flock(&file, &path, libc::LOCK_SH)?)
}

/// Opens a lock file for locking, creating it (mode 0600, its directory 0700) with `create`;
/// `None` when it does not exist and is not to be created.
fn open(locks: &Path, path: &Path, create: bool) -> Result<Option<File>, LivenessError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if create {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(locks).map_err(|source| LivenessError::Open { path: locks.to_path_buf(), source })?;
    }
    let opened = std::fs::OpenOptions::new().read(true).write(create).create(create).mode(0o600).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(path);
    match opened {
        Ok(file) => Ok(Some(file)),
        Err(e) if !create && e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(LivenessError::Open { path: path.to_path_buf(), source }),
    }
}

/// `flock(file, how | LOCK_NB)`: true when taken, false when another process holds a
/// conflicting lock.
fn flock(file: &File, path: &Path, how: libc::c_int) -> Result<bool, LivenessError> {
    loop {
        // SAFETY: flock on a descriptor this function borrows for the call.
        if unsafe { libc::flock(file.as_raw_fd(), how | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(LivenessError::Lock { path: path.to_path_buf(), source: e }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_is_held_while_its_holder_lives_and_free_once_it_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("locks");
        assert!(!held(&locks, 1).unwrap(), "no lock file: no controller");
        let lock = ChangeLock::try_take(&locks, 1).unwrap().unwrap();
        assert_eq!(lock.change_id(), 1);
        // flock locks belong to the open file: another open of it, as another process makes, is
        // refused while this one holds it.
        assert!(held(&locks, 1).unwrap());
        assert!(ChangeLock::try_take(&locks, 1).unwrap().is_none());
        drop(lock);
        assert!(!held(&locks, 1).unwrap());
        // Taking waits out a lock held for a moment, and gives up on one that stays held.
        let held_long = ChangeLock::try_take(&locks, 2).unwrap().unwrap();
        assert!(ChangeLock::take(&locks, 2).unwrap().is_none());
        let brief = std::thread::spawn(move || {
            std::thread::sleep(TAKE_PAUSE * 3);
            drop(held_long);
        });
        assert!(ChangeLock::take(&locks, 2).unwrap().is_some());
        brief.join().unwrap();
    }
}
