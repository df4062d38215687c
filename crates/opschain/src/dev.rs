//! Tools for a project's repository (`opschain dev`): writing the default step runner
//! Dockerfile to customise.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use opschain_runner::atomic::{self, Durability};
use opschain_runner::layout::Layout;
use opschain_runner::step_image;

/// Why the Dockerfile could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// The repository's path cannot be resolved.
    #[error("cannot resolve {}", repo.display())]
    Resolve {
        /// The repository.
        repo: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A Dockerfile is there already (and `--force` was not given).
    #[error("{} exists: keeping it (give --force to replace it)", path.display())]
    Exists {
        /// The Dockerfile.
        path: PathBuf,
    },
    /// The folder or the Dockerfile cannot be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Writes the default step Dockerfile to `<repo>/<folder>/Dockerfile` and returns its path: as a
/// new file (never over an existing file or through a symlink) unless `force`, then atomically
/// over whatever is there.
pub fn create_dockerfile(repo: &Path, folder: &str, force: bool) -> Result<PathBuf, DevError> {
    let layout = Layout::new(repo, folder).map_err(|source| DevError::Resolve { repo: repo.to_path_buf(), source })?;
    let path = layout.dockerfile();
    let dir = layout.folder_dir();
    std::fs::create_dir_all(&dir).map_err(|source| DevError::Write { path: dir.clone(), source })?;
    let dockerfile = step_image::default_dockerfile(folder);
    let contents = dockerfile.as_bytes();
    if force {
        atomic::write(&path, contents, 0o644, Durability::Durable).map_err(|e| DevError::Write { path: path.clone(), source: e.source })?;
        return Ok(path);
    }
    let mut file = match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(DevError::Exists { path }),
        other => other.map_err(|source| DevError::Write { path: path.clone(), source })?,
    };
    file.write_all(contents).and_then(|()| file.sync_all()).map_err(|source| DevError::Write { path: path.clone(), source })?;
    Ok(path)
}
