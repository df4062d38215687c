//! Keeping the controller's state private to the user who runs it.
//!
//! The state directory holds the secret sets (in `opschain.db`), repository snapshots and, while
//! a step runs, its sandbox with the step context (the runner secrets in it). As `~/.ssh`,
//! `~/.docker/config.json`, kubeconfig and the GitHub CLI do with credentials, everything the
//! controller makes there is readable by its owner only, from the moment it exists:
//!
//! * the state directory is `0700` ([`state_dir`]); one that exists with looser modes (made by an
//!   older controller, or by hand) is tightened to `0700`, with a warning on stderr, and so are
//!   the database files and the `repos` and `sandboxes` directories in it. A state directory that
//!   is not a directory, or is owned by another user, is refused (tightening another user's
//!   directory would lock them out, and they could read what this controller writes);
//! * the database is created `0600` before SQLite opens it ([`private_file`]); SQLite creates its
//!   `-wal` and `-shm` files with the database's own mode, so they are `0600` from creation too;
//! * snapshots, sandboxes and their parents are made `0700` ([`private_dir_all`]), and every file
//!   that holds a secret is created `0600` ([`write_private`]).
//!
//! Modes are given to `open(2)` and `mkdir(2)` themselves (never set with a later `chmod`), so
//! there is no moment when a file is more open than its final mode; the process umask can only
//! remove bits. The umask itself is left alone: it is process-wide, and changing it around one
//! `open` would race with every other thread creating files.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The mode of every directory the controller makes under its state directory (`0700`).
pub const DIR_MODE: u32 = 0o700;

/// The mode of every file holding a secret (`0600`).
pub const FILE_MODE: u32 = 0o600;

/// The database files whose modes [`state_dir`] tightens, beside the database itself.
const DB_SUFFIXES: [&str; 3] = ["", "-wal", "-shm"];

/// The subdirectories of the state directory whose modes [`state_dir`] tightens.
const STATE_SUBDIRS: [&str; 2] = ["repos", "sandboxes"];

/// Why the state directory or a private file could not be made private.
#[derive(Debug, thiserror::Error)]
pub enum PrivateError {
    /// A directory cannot be created.
    #[error("cannot create the private directory {}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The mode or owner of a path cannot be read.
    #[error("cannot read the mode of {}", path.display())]
    Inspect {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The state directory exists and is not a directory.
    #[error("the state directory {} is not a directory: remove it or choose another one with --state-dir", path.display())]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// The state directory belongs to another user.
    #[error(
        "the state directory {} belongs to uid {owner}, not to this user (uid {me}): run opschain as its owner, \
         or give it a state directory of your own with --state-dir (or OPSCHAIN_STATE_DIR)",
        path.display()
    )]
    ForeignOwner {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's effective uid.
        me: u32,
    },
    /// A path's mode cannot be tightened.
    #[error("cannot make {} private (chmod {mode:o}): fix it with `chmod {mode:o} {}`", path.display(), path.display())]
    Tighten {
        /// The path.
        path: PathBuf,
        /// The mode it was to get.
        mode: u32,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A private file cannot be created or written.
    #[error("cannot write the private file {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// What [`state_dir`] had to tighten: each path and the mode it had (empty when everything was
/// already private).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tightened(pub Vec<(PathBuf, u32)>);

/// Makes `dir` (the state directory) exist and be private, and `db` (the database in it) private
/// when it exists: creates `dir` (and its missing parents) `0700`; of an
/// existing `dir`, checks that it is a directory owned by this user and tightens it, the database
/// files `db`, `db-wal`, `db-shm` and the `repos` and `sandboxes` subdirectories to `0700`/`0600`
/// when other users could read them. What was tightened is returned and told on stderr with the
/// advice to rotate the secret sets (other users may have read them already).
pub fn state_dir(dir: &Path, db: &Path) -> Result<Tightened, PrivateError> {
    let meta = match std::fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            private_dir_all(dir)?;
            return Ok(Tightened::default());
        }
        Err(source) => return Err(PrivateError::Inspect { path: dir.to_path_buf(), source }),
    };
    if !meta.is_dir() {
        return Err(PrivateError::NotADirectory { path: dir.to_path_buf() });
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(PrivateError::ForeignOwner { path: dir.to_path_buf(), owner: meta.uid(), me });
    }
    let mut tightened = Tightened::default();
    tighten(dir, DIR_MODE, &mut tightened)?;
    for suffix in DB_SUFFIXES {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        tighten(Path::new(&name), FILE_MODE, &mut tightened)?;
    }
    for sub in STATE_SUBDIRS {
        tighten(&dir.join(sub), DIR_MODE, &mut tightened)?;
    }
    if !tightened.0.is_empty() {
        let list: Vec<String> = tightened.0.iter().map(|(p, m)| format!("{} ({:04o})", p.display(), m)).collect();
        eprintln!(
            "opschain: warning: other users of this machine could read the state directory: made private (0700 directories, \
             0600 database files): {}. The secret sets stored there may have been read: rotate them (see \"Rotating a secret set\" \
             in the README).",
            list.join(", ")
        );
    }
    Ok(tightened)
}

/// Sets `path` to `mode` when its group or other bits grant more (a missing path is skipped; a
/// symlink is not followed, since the controller makes none of these as symlinks).
fn tighten(path: &Path, mode: u32, tightened: &mut Tightened) -> Result<(), PrivateError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(PrivateError::Inspect { path: path.to_path_buf(), source }),
    };
    let current = meta.mode() & 0o7777;
    if meta.file_type().is_symlink() || current & 0o077 == 0 {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| PrivateError::Tighten { path: path.to_path_buf(), mode, source })?;
    tightened.0.push((path.to_path_buf(), current));
    Ok(())
}

/// Creates `dir` and its missing parents, each `0700` from its creation (existing ones are left
/// as they are).
pub fn private_dir_all(dir: &Path) -> Result<(), PrivateError> {
    std::fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir).map_err(|source| PrivateError::CreateDir { path: dir.to_path_buf(), source })
}

/// Creates the empty file `path` `0600` when it does not exist (`O_CREAT` with that mode, so it is
/// never more open); an existing one is left as it is.
pub fn private_file(path: &Path) -> Result<(), PrivateError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)
        .map(drop)
        .map_err(|source| PrivateError::Write { path: path.to_path_buf(), source })
}

/// Writes `bytes` to the new file `path` (which must not exist: `O_EXCL`, so no file planted
/// there beforehand, nor a symlink, is written through), `0600` from its creation.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::OpenOptions::new().write(true).create_new(true).mode(FILE_MODE).open(path)?.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_new_state_directory_is_private_and_its_parents_are_made() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b/state");
        assert_eq!(state_dir(&dir, &dir.join("x.db")).unwrap(), Tightened::default());
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn a_loose_state_directory_its_database_files_and_subdirectories_are_tightened() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let db = dir.join("x.db");
        for (path, m) in [(db.clone(), 0o644), (dir.join("x.db-wal"), 0o664)] {
            std::fs::write(&path, "").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m)).unwrap();
        }
        std::fs::create_dir(dir.join("sandboxes")).unwrap();
        std::fs::set_permissions(dir.join("sandboxes"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let tightened = state_dir(&dir, &db).unwrap();
        assert_eq!(tightened.0.len(), 4, "{tightened:?}");
        assert_eq!([mode(&dir), mode(&db), mode(&dir.join("x.db-wal")), mode(&dir.join("sandboxes"))], [0o700, 0o600, 0o600, 0o700]);
        assert_eq!(state_dir(&dir, &db).unwrap(), Tightened::default(), "nothing left to tighten");
    }

    #[test]
    fn a_state_path_that_is_a_file_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("state");
        std::fs::write(&file, "").unwrap();
        let e = state_dir(&file, &file.join("x.db")).unwrap_err();
        assert!(matches!(e, PrivateError::NotADirectory { .. }), "{e}");
    }

    #[test]
    fn private_files_are_created_0600_and_never_overwritten() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("secret.json");
        write_private(&path, b"{}").unwrap();
        assert_eq!(mode(&path), 0o600);
        assert!(write_private(&path, b"again").is_err(), "O_EXCL");
        let db = root.path().join("x.db");
        private_file(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
    }
}
