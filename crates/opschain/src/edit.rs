//! Editing a document in the user's editor (`edit-properties`): the text is written to a file
//! in a private temporary directory, the editor runs on it, and the saved text is read back.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why a document could not be edited.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The private temporary directory cannot be created.
    #[error("cannot create a private temporary directory like {}", template.display())]
    TempDir {
        /// The mkdtemp(3) template.
        template: PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// The file to edit cannot be written or read back.
    #[error("cannot {op} {}", path.display())]
    File {
        /// "create", "write" or "read".
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The editor cannot be started.
    #[error("cannot run the editor {editor:?}")]
    Spawn {
        /// The editor's command.
        editor: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The editor exited with a failure.
    #[error("the editor {editor:?} failed ({status}): nothing saved")]
    Failed {
        /// The editor's command.
        editor: String,
        /// How it exited.
        status: std::process::ExitStatus,
    },
}

/// A private temporary directory (mkdtemp(3): a new, unpredictable name, mode 0700), removed
/// with everything in it when dropped.
#[derive(Debug)]
pub struct PrivateDir(PathBuf);

impl PrivateDir {
    /// A new directory `<temp dir>/<prefix>XXXXXX`.
    pub fn new(prefix: &str) -> Result<PrivateDir, EditError> {
        let template = std::env::temp_dir().join(format!("{prefix}XXXXXX"));
        let dir = nix::unistd::mkdtemp(&template).map_err(|source| EditError::TempDir { template, source })?;
        Ok(PrivateDir(dir))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The editor command of this process: `$VISUAL`, else `$EDITOR`, else `fallback` (from
/// `.opschainrc`), else `vi`.
pub fn editor(fallback: Option<&str>) -> String {
    let var = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
    var("VISUAL").or_else(|| var("EDITOR")).or_else(|| fallback.map(str::to_string)).unwrap_or_else(|| "vi".into())
}

/// Lets the user edit `initial` with `editor` (a shell command, given the file as its last
/// argument); returns the saved text. The file is `name` in a private temporary directory,
/// created new (never through a symlink, readable by its owner only).
pub fn edit(initial: &str, name: &str, editor: &str) -> Result<String, EditError> {
    let dir = PrivateDir::new("opschain-edit-")?;
    let path = dir.path().join(name);
    let file_err = |op, source| EditError::File { op, path: path.clone(), source };
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(&path).map_err(|e| file_err("create", e))?;
    file.write_all(initial.as_bytes()).map_err(|e| file_err("write", e))?;
    drop(file);
    let status = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("editor")
        .arg(&path)
        .status()
        .map_err(|source| EditError::Spawn { editor: editor.to_string(), source })?;
    if !status.success() {
        return Err(EditError::Failed { editor: editor.to_string(), status });
    }
    std::fs::read_to_string(&path).map_err(|e| file_err("read", e))
}
