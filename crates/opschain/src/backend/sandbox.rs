//! The files the controller itself writes into and reads from a step's sandbox (the step context
//! in, `step_result.json` out), on every backend that shares a disk with the step. A sandbox
//! holds what the commit brought and what the step (a container, an action) made, so any name in
//! it may be a symbolic link, a FIFO or a device: the controller opens each name relative to a
//! directory it opened itself, with `O_NOFOLLOW` at every step (`openat(2)`), so that neither the
//! file nor a directory on the way (`.opschain -> /etc`) can lead it elsewhere on the host; it
//! writes only new files (`O_EXCL`, after removing a regular file of the same name), and reads
//! only a regular file (`O_NONBLOCK` first, so that opening a FIFO cannot hang; `fstat` after),
//! at most a size limit of it.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The largest `step_result.json` the controller reads by default (64 MiB): the agent's own
/// input limit ([`opschain_runner::json::SizeLimit::DEFAULT`]), since a result holds the merged
/// properties the step started from.
pub const DEFAULT_MAX_RESULT_BYTES: u64 = opschain_runner::json::SizeLimit::DEFAULT.max_bytes();

/// Why a sandbox file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SandboxFileError {
    /// A name on the way to the file is a symbolic link or no directory.
    #[error("{} is a symbolic link or not a directory: the controller follows no link in a step's sandbox", path.display())]
    NotADirectory {
        /// The name.
        path: PathBuf,
    },
    /// The file is a symbolic link, a FIFO, a device, a socket or a directory.
    #[error("{} is {kind}, not a regular file: the controller reads and writes only regular files in a step's sandbox", path.display())]
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What it is instead ("a symbolic link", "a FIFO", ...).
        kind: &'static str,
    },
    /// The file is larger than the limit.
    #[error("{} is larger than {max} bytes (the largest step result the controller reads: --max-result-bytes)", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        max: u64,
    },
    /// A system call on the file or a directory failed.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was done (`open`, `create`, `read`, `write`, `remove`, `inspect`).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A directory of a sandbox, opened without following links, and the path it was reached by
/// (for messages only: every use goes through the descriptor).
#[derive(Debug)]
pub struct SandboxDir {
    fd: OwnedFd,
    path: PathBuf,
}

/// What a file of mode `mode` is, in words.
fn kind_of(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "a regular file",
        libc::S_IFDIR => "a directory",
        libc::S_IFLNK => "a symbolic link",
        libc::S_IFIFO => "a FIFO",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFSOCK => "a socket",
        _ => "of an unknown kind",
    }
}

/// `openat(dir, name, flags, mode)` with `O_CLOEXEC`; `dir` `None` is the working directory.
fn openat(dir: Option<&OwnedFd>, name: &Path, flags: libc::c_int, mode: libc::mode_t) -> std::io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::CString::new(name.as_os_str().as_bytes()).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    loop {
        // SAFETY: a valid C string and directory descriptor; the result is a new descriptor or -1.
        let fd = unsafe { libc::openat(dirfd, name.as_ptr(), flags | libc::O_CLOEXEC, libc::c_uint::from(mode)) };
        if fd >= 0 {
            // SAFETY: a new descriptor that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`: `None` when there is no such name.
fn lstatat(dir: &OwnedFd, name: &str) -> std::io::Result<Option<libc::stat>> {
    let cname = std::ffi::CString::new(name).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: zeroed memory is a valid `stat` to be filled in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor, C string and out pointer.
    if unsafe { libc::fstatat(dir.as_raw_fd(), cname.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } == 0 {
        return Ok(Some(st));
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(None)
    } else {
        Err(e)
    }
}

/// `fstat(fd)`.
fn fstat(fd: &impl AsFd) -> std::io::Result<libc::stat> {
    // SAFETY: zeroed memory is a valid `stat` to be filled in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and out pointer.
    if unsafe { libc::fstat(fd.as_fd().as_raw_fd(), &mut st) } == 0 {
        Ok(st)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl SandboxDir {
    /// Opens `top` (a directory the controller made: a step's sandbox) and, below it, `rel`'s
    /// components one by one, none followed if it is a link. With `create`, a missing component
    /// is made with that mode.
    pub fn open(top: &Path, rel: &str, create: Option<libc::mode_t>) -> Result<SandboxDir, SandboxFileError> {
        let dir_flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        let not_dir = |path: PathBuf| {
            move |e: std::io::Error| match e.raw_os_error() {
                Some(libc::ELOOP) | Some(libc::ENOTDIR) => SandboxFileError::NotADirectory { path },
                _ => SandboxFileError::Io { op: "open", path, source: e },
            }
        };
        let mut fd = openat(None, top, dir_flags, 0).map_err(not_dir(top.to_path_buf()))?;
        let mut path = top.to_path_buf();
        for part in Path::new(rel).components() {
            let std::path::Component::Normal(name) = part else { return Err(SandboxFileError::NotADirectory { path: path.join(part) }) };
            path.push(name);
            let opened = match (openat(Some(&fd), Path::new(name), dir_flags, 0), create) {
                (Err(e), Some(mode)) if e.kind() == std::io::ErrorKind::NotFound => {
                    let cname = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(name)).map_err(|_| SandboxFileError::NotADirectory { path: path.clone() })?;
                    // SAFETY: a valid descriptor and C string.
                    if unsafe { libc::mkdirat(fd.as_raw_fd(), cname.as_ptr(), mode) } != 0 {
                        let e = std::io::Error::last_os_error();
                        if e.kind() != std::io::ErrorKind::AlreadyExists {
                            return Err(SandboxFileError::Io { op: "create", path, source: e });
                        }
                    }
                    openat(Some(&fd), Path::new(name), dir_flags, 0)
                }
                (opened, _) => opened,
            };
            fd = opened.map_err(not_dir(path.clone()))?;
        }
        Ok(SandboxDir { fd, path })
    }

    /// The path this directory was reached by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the directory's own permission bits (`fchmod`).
    pub fn set_mode(&self, mode: libc::mode_t) -> Result<(), SandboxFileError> {
        // SAFETY: a valid descriptor.
        if unsafe { libc::fchmod(self.fd.as_raw_fd(), mode) } != 0 {
            return Err(SandboxFileError::Io { op: "change the mode of", path: self.path.clone(), source: std::io::Error::last_os_error() });
        }
        Ok(())
    }

    /// Writes a new file `name` in this directory with `mode` from its creation, its bytes
    /// written by `write`. A regular file of that name (one the commit brought) is removed first;
    /// anything else there (a link, a FIFO, a directory) is refused, and never written through.
    pub fn write_new(&self, name: &str, mode: libc::mode_t, write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<(), SandboxFileError> {
        let path = self.path.join(name);
        let io = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| SandboxFileError::Io { op, path, source }
        };
        if let Some(st) = lstatat(&self.fd, name).map_err(io("inspect", &path))? {
            if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                return Err(SandboxFileError::NotRegular { path, kind: kind_of(st.st_mode) });
            }
            let cname = std::ffi::CString::new(name).map_err(|_| SandboxFileError::NotRegular { path: path.clone(), kind: "of an unknown kind" })?;
            // SAFETY: a valid descriptor and C string.
            if unsafe { libc::unlinkat(self.fd.as_raw_fd(), cname.as_ptr(), 0) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(io("remove", &path)(e));
                }
            }
        }
        // O_EXCL: whatever appeared there since, it is not opened, let alone followed.
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
        let fd = openat(Some(&self.fd), Path::new(name), flags, mode).map_err(io("create", &path))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 16, File::from(fd));
        write(&mut out).map_err(io("write", &path))?;
        out.into_inner().map_err(|e| io("write", &path)(e.into_error()))?;
        Ok(())
    }

    /// Reads the regular file `name` of this directory, at most `max` bytes of it: a link, a FIFO
    /// (opened without waiting for a writer), a device or a directory there is refused, as is a
    /// file that is or grows larger than `max`.
    pub fn read_regular(&self, name: &str, max: u64) -> Result<Vec<u8>, SandboxFileError> {
        let path = self.path.join(name);
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;
        let fd = openat(Some(&self.fd), Path::new(name), flags, 0).map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => SandboxFileError::NotRegular { path: path.clone(), kind: "a symbolic link" },
            _ => SandboxFileError::Io { op: "open", path: path.clone(), source: e },
        })?;
        let st = fstat(&fd).map_err(|source| SandboxFileError::Io { op: "inspect", path: path.clone(), source })?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(SandboxFileError::NotRegular { path, kind: kind_of(st.st_mode) });
        }
        if st.st_size as u64 > max {
            return Err(SandboxFileError::TooLarge { path, max });
        }
        let mut bytes = Vec::with_capacity(st.st_size as usize);
        // One byte more than the limit: a file that grew past it since the fstat is refused too.
        File::from(fd).take(max.saturating_add(1)).read_to_end(&mut bytes).map_err(|source| SandboxFileError::Io { op: "read", path: path.clone(), source })?;
        if bytes.len() as u64 > max {
            return Err(SandboxFileError::TooLarge { path, max });
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_link_is_followed_and_only_regular_files_are_read_within_the_limit() {
        let top = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let host_file = outside.path().join("host");
        std::fs::write(&host_file, "host data").unwrap();
        // A linked folder is refused, whether to a directory or further down.
        std::os::unix::fs::symlink(outside.path(), top.path().join("linked")).unwrap();
        assert!(matches!(SandboxDir::open(top.path(), "linked", Some(0o700)), Err(SandboxFileError::NotADirectory { .. })));
        assert!(matches!(SandboxDir::open(top.path(), "linked/below", Some(0o700)), Err(SandboxFileError::NotADirectory { .. })));
        assert!(matches!(SandboxDir::open(top.path(), "../x", Some(0o700)), Err(SandboxFileError::NotADirectory { .. })));
        // A missing folder is made.
        let dir = SandboxDir::open(top.path(), "made/here", Some(0o700)).unwrap();
        assert!(top.path().join("made/here").is_dir());
        // A link in the file's place is refused, never written through.
        std::os::unix::fs::symlink(&host_file, top.path().join("made/here/ctx")).unwrap();
        let refused = dir.write_new("ctx", 0o600, |out: &mut dyn Write| out.write_all(b"secret")).unwrap_err();
        assert!(matches!(refused, SandboxFileError::NotRegular { kind: "a symbolic link", .. }), "{refused}");
        assert_eq!(std::fs::read_to_string(&host_file).unwrap(), "host data");
        // A regular file is replaced by a new one with the mode asked.
        std::fs::remove_file(top.path().join("made/here/ctx")).unwrap();
        std::fs::write(top.path().join("made/here/ctx"), "old").unwrap();
        dir.write_new("ctx", 0o600, |out: &mut dyn Write| out.write_all(b"new")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(top.path().join("made/here/ctx")).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(dir.read_regular("ctx", 3).unwrap(), b"new");
        assert!(matches!(dir.read_regular("ctx", 2), Err(SandboxFileError::TooLarge { max: 2, .. })));
        // A FIFO is refused at once, a device and a link too.
        nix::unistd::mkfifo(&top.path().join("made/here/fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(matches!(dir.read_regular("fifo", 100), Err(SandboxFileError::NotRegular { kind: "a FIFO", .. })));
        std::os::unix::fs::symlink("/dev/zero", top.path().join("made/here/zero")).unwrap();
        assert!(matches!(dir.read_regular("zero", 100), Err(SandboxFileError::NotRegular { kind: "a symbolic link", .. })));
        assert!(matches!(
            SandboxDir::open(Path::new("/dev"), "", None).unwrap().read_regular("zero", 100),
            Err(SandboxFileError::NotRegular { kind: "a character device", .. })
        ));
        assert!(matches!(dir.read_regular("missing", 100), Err(SandboxFileError::Io { op: "open", .. })));
    }
}
