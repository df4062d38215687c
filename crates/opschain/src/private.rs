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

use std::io::{Read, Write};
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

/// The file in the state directory holding the key of the build secrets digest
/// ([`secrets_key`]).
pub const SECRETS_KEY_FILE: &str = "build-secrets.key";

/// Why the build secrets digest key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The kernel's random source failed.
    #[error("cannot draw a random key")]
    Random(#[source] std::io::Error),
    /// The key file cannot be made or read.
    #[error("cannot use the key file {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The key file is not a private regular file of 32 bytes owned by this user.
    #[error("the key file {} is not this user's private 32-byte file ({why}): remove it, and a new key is made (every step image is then rebuilt once)", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

/// The key of the build secrets digest (see [`opschain_runner::step_image::SecretsKey`]): 32 random bytes
/// from the kernel (`getrandom(2)`) kept in `<state_dir>/build-secrets.key`, `0600`, made on first
/// use. Concurrent first uses agree on one key: each writes its own file and links it into place
/// (`link(2)` fails when the name exists), then every one reads what is there. The file is
/// refused unless it is a regular file (not followed as a symlink) of this user, private, 32
/// bytes long.
pub fn secrets_key(state_dir: &Path) -> Result<opschain_runner::step_image::SecretsKey, KeyError> {
    let path = state_dir.join(SECRETS_KEY_FILE);
    let io = |source| KeyError::Io { path: path.clone(), source };
    if std::fs::symlink_metadata(&path).is_err() {
        let mut key = [0u8; 32];
        random_bytes(&mut key).map_err(KeyError::Random)?;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let tmp = state_dir.join(format!(".{SECRETS_KEY_FILE}.{}-{nanos}", std::process::id()));
        write_private(&tmp, &key).map_err(io)?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(io(e)),
            _ => {}
        }
    }
    let invalid = |why: String| KeyError::Invalid { path: path.clone(), why };
    let mut file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => invalid("a symlink".into()),
        _ => io(e),
    })?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(invalid("not a regular file".into()));
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o077 != 0 {
        return Err(invalid(format!("owner uid {}, mode {:04o}", meta.uid(), meta.mode() & 0o7777)));
    }
    let mut key = [0u8; 32];
    let mut bytes = Vec::with_capacity(33);
    std::io::Read::by_ref(&mut file).take(33).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() != key.len() {
        return Err(invalid(format!("{} bytes", bytes.len())));
    }
    key.copy_from_slice(&bytes);
    Ok(opschain_runner::step_image::SecretsKey(key))
}

/// Fills `buf` from the kernel's random source (`getrandom(2)`, blocking until it is seeded).
fn random_bytes(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: writing at most the rest of a buffer we own.
        let n = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        } else {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
    Ok(())
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
    fn the_secrets_key_is_made_once_private_and_refused_when_tampered_with() {
        let root = tempfile::tempdir().unwrap();
        let key = secrets_key(root.path()).unwrap();
        let path = root.path().join(SECRETS_KEY_FILE);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(secrets_key(root.path()).unwrap(), key, "kept");
        assert_ne!(key.0, [0; 32]);
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1, "no temporary file left");
        let other = tempfile::tempdir().unwrap();
        assert_ne!(secrets_key(other.path()).unwrap(), key, "random per state directory");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(secrets_key(root.path()), Err(KeyError::Invalid { .. })));
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(other.path().join(SECRETS_KEY_FILE), &path).unwrap();
        let err = secrets_key(root.path()).unwrap_err();
        assert!(err.to_string().contains("a symlink"), "{err}");
        std::fs::remove_file(&path).unwrap();
        write_private(&path, b"short").unwrap();
        assert!(secrets_key(root.path()).unwrap_err().to_string().contains("5 bytes"));
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
