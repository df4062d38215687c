//! Atomic file replacement: write a temporary file beside the target, fsync it, rename it over the
//! target. A reader (or a crash, or a SIGKILL) sees the old file or the new one, never half of one.
//!
//! Files are created with their final mode from the first moment they exist (never a looser one),
//! and the target's own name is never followed if it is a symlink: `rename` replaces the link.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::{fchmod, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};

/// Whether a replacement must survive a power loss, or only a crash of the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync the file before the rename and the directory after it: for a file that must survive
    /// a power loss on its own. The agent has none (the step result is read on the same host
    /// right after the agent exits, and the controller's store is what is durable).
    Durable,
    /// No fsync: atomic for every reader (rename), not across a power loss. For everything the
    /// agent writes (the step result, the files an action reads right away, the runtime copies):
    /// a step whose machine loses power is re-run whole, and an fsync costs more than the rest of
    /// the agent's start.
    Rename,
}

/// Why an atomic write failed: the operation, the path, and the cause.
#[derive(Debug, thiserror::Error)]
#[error("{}: cannot {op}: {source}", path.display())]
pub struct AtomicError {
    /// The operation that failed (create, write, fsync, rename, open directory).
    pub op: &'static str,
    /// The file or directory it failed on.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// This process's umask, read once from `/proc/self/status` (Linux 4.7 and later); `None` where it
/// cannot be read, and then every file's mode is set explicitly. Read rather than set and restored
/// with umask(2): that would change it for a moment under every other thread.
pub(crate) fn umask() -> Option<u32> {
    static UMASK: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        // The `Umask:` line is the second; the first 512 bytes hold it in one read (growing a
        // buffer from empty took eight reads of this file).
        let mut head = [0u8; 512];
        let n = std::io::Read::read(&mut File::open("/proc/self/status").ok()?, &mut head).ok()?;
        let status = std::str::from_utf8(&head[..n]).ok()?;
        let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
        u32::from_str_radix(line.trim(), 8).ok()
    })
}

/// Replaces `path` atomically with `contents`, created with `mode`.
pub fn write(path: &Path, contents: &[u8], mode: u32, durability: Durability) -> Result<(), AtomicError> {
    write_with(path, mode, durability, |out| out.write_all(contents))
}

/// As [`write()`], with the contents streamed by `fill` into a buffered writer over the temporary
/// file: a large document (the step result, the runtime copies) is serialised straight to disk,
/// never held whole in memory. An error from `fill` is reported as a failed `write`.
pub fn write_with(path: &Path, mode: u32, durability: Durability, fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<(), AtomicError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| AtomicError {
        op: "write (the path names no file)",
        path: path.to_path_buf(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    let dirfd = open_dir(dir)?;
    write_at_with(&dirfd, dir, Path::new(name), mode, durability, fill)
}

/// Opens `dir` as a directory file descriptor.
pub fn open_dir(dir: &Path) -> Result<OwnedFd, AtomicError> {
    use std::os::unix::fs::OpenOptionsExt;
    // std opens close-on-exec; O_DIRECTORY refuses anything but a directory.
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY).open(dir).map_err(|source| AtomicError {
        op: "open directory",
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(file.into())
}

/// `openat(2)` of `name` relative to the directory `dirfd`, as an owned descriptor (nix's
/// `openat` returns a bare `RawFd`): the crate's one place that takes ownership of a descriptor
/// it opened by number.
pub(crate) fn open_at<P: ?Sized + nix::NixPath>(dirfd: &impl AsFd, name: &P, flags: OFlag, mode: Mode) -> nix::Result<OwnedFd> {
    let raw = openat(Some(dirfd.as_fd().as_raw_fd()), name, flags, mode)?;
    // SAFETY: openat just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Replaces `name` inside the directory `dirfd` (which is `dir`, named in errors) atomically.
pub fn write_at(dirfd: &OwnedFd, dir: &Path, name: &Path, contents: &[u8], mode: u32, durability: Durability) -> Result<(), AtomicError> {
    write_at_with(dirfd, dir, name, mode, durability, |out| out.write_all(contents))
}

/// Writes `value` as compact JSON and a final newline: the `fill` of the agent's JSON files.
/// Compact, not pretty: the files are read by programs (`jq .` shows them to a person), and
/// indenting a large document cost the agent more time than writing it. Generic over the writer:
/// serialising a large document into a `Vec` directly, rather than through `dyn Write`, saves a
/// virtual call for every string and punctuation mark.
pub fn json<W: Write + ?Sized>(out: &mut W, value: &impl serde::Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

/// The capacity of the buffer [`write_with`] streams through: large enough that a typical
/// document takes a few `write` calls, small enough not to matter to the agent's peak memory.
const STREAM_BUFFER: usize = 64 * 1024;

/// As [`write_at`], with the contents streamed by `fill` (see [`write_with`]).
pub fn write_at_with(
    dirfd: &OwnedFd,
    dir: &Path,
    name: &Path,
    mode: u32,
    durability: Durability,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), AtomicError> {
    let target = dir.join(name);
    let tmp_name = format!(".{}.tmp-{}-{}", name.to_string_lossy(), std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    let tmp = Path::new(&tmp_name);
    let err = |op: &'static str, source: std::io::Error| AtomicError { op, path: target.clone(), source };
    let mode_bits = Mode::from_bits_truncate(mode as libc::mode_t);
    let file = File::from(
        open_at(dirfd, tmp, OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, mode_bits)
            .map_err(|e| err("create a temporary file for", e.into()))?,
    );
    let written = (|| -> Result<(), AtomicError> {
        // The umask may have narrowed the creation mode; set it exactly (never wider than asked).
        // Skipped when the umask cannot have changed it and no special bit (which creation may
        // drop) is asked for: an fchmod is an inode update, which waits on a busy disk.
        if mode & 0o7000 != 0 || umask().is_none_or(|umask| mode & umask != 0) {
            fchmod(file.as_raw_fd(), mode_bits).map_err(|e| err("set the mode of", e.into()))?;
        }
        let mut out = std::io::BufWriter::with_capacity(STREAM_BUFFER, file);
        fill(&mut out).map_err(|e| err("write", e))?;
        let file = out.into_inner().map_err(|e| err("write", e.into_error()))?;
        if durability == Durability::Durable {
            file.sync_all().map_err(|e| err("fsync", e))?;
        }
        renameat(Some(dirfd.as_raw_fd()), tmp, Some(dirfd.as_raw_fd()), name).map_err(|e| err("rename into place", e.into()))
    })();
    if let Err(e) = written {
        let _ = unlinkat(Some(dirfd.as_raw_fd()), tmp, UnlinkatFlags::NoRemoveDir);
        return Err(e);
    }
    if durability == Durability::Durable {
        nix::unistd::fsync(dirfd.as_raw_fd()).or_else(|e| if e == Errno::EINVAL { Ok(()) } else { Err(e) }).map_err(|e| AtomicError {
            op: "fsync directory",
            path: dir.to_path_buf(),
            source: e.into(),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn open_dir_opens_directories_only_and_close_on_exec() {
        let dir = tempfile::tempdir().unwrap();
        let fd = open_dir(dir.path()).unwrap();
        let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let e = open_dir(&file).unwrap_err();
        assert_eq!((e.op, e.source.raw_os_error()), ("open directory", Some(libc::ENOTDIR)));
        let e = open_dir(&dir.path().join("missing")).unwrap_err();
        assert_eq!(e.source.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn replaces_with_exact_mode_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "old").unwrap();
        write(&path, b"new", 0o640, Durability::Durable).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o640);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn modes_the_umask_would_narrow_are_still_exact() {
        let mask = umask().expect("Linux reports the umask in /proc/self/status");
        assert!(mask <= 0o777, "{mask:o}");
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o666, 0o777, 0o600, 0o444] {
            let path = dir.path().join(format!("f{mode:o}"));
            write(&path, b"x", mode, Durability::Rename).unwrap();
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777, mode, "umask {mask:o}");
        }
    }

    #[test]
    fn replaces_a_symlink_instead_of_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, "keep").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        write(&link, b"x", 0o600, Durability::Rename).unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        assert!(!std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    }
}
