//! `opschain.files`: the files the properties declare, written before the action starts.
//!
//! ```json
//! {"opschain": {"files": {"~/.ssh/id_rsa": {"mode": "0600", "content": "...", "format": "raw"}}}}
//! ```
//! Every key of an entry is optional. Paths expand like Ruby's `File.expand_path` with HOME at the
//! repo: `~/x` and `x` are under the repo, `/x` is absolute (or under the `--files-root` when the
//! controller runs steps as local processes). `.` and `..` are resolved lexically; a path under the
//! repo that climbs out of it is refused.
//!
//! Writing is atomic (see [`crate::atomic`]), with the file's mode from its creation, and, for paths
//! under the repo or the files root, no symlink is followed on the way: a symlink at a parent or at
//! the file itself that points out of place is refused (parents) or replaced (the file), never
//! written through.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::Ordering;

use base64::Engine as _;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{mkdirat, Mode};
use serde_json::{Map, Value};

use crate::atomic::{self, AtomicError, Durability};
use crate::json::{push_escaped, PointerError};

/// Mode of a file whose entry gives none: `0644`, as Ruby's `File.write` with the usual umask.
pub const DEFAULT_MODE: u32 = 0o644;
/// Mode of the directories created on the way to a file.
pub const DIR_MODE: u32 = 0o755;

/// How an entry's `content` is turned into bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The content string as it is (the default).
    Raw,
    /// The content string is base64 (standard alphabet, padding optional) of the bytes.
    Base64,
    /// The content (any JSON value) written as pretty JSON.
    Json,
}

/// One validated `opschain.files` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    /// The path as declared (the key).
    pub declared: String,
    /// Where it goes, resolved.
    pub target: Target,
    /// Permission bits, at most `0o7777`.
    pub mode: u32,
    /// How the content was given.
    pub format: Format,
    /// The decoded bytes to write.
    pub content: Vec<u8>,
}

/// Where a declared file goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Under `base` (the repo dir, or the files root), at the normalised relative `path`; no
    /// component of it is a symlink when written.
    Beneath {
        /// The directory the file must stay under.
        base: PathBuf,
        /// Normal components only (no `.`, `..` or root).
        path: PathBuf,
    },
    /// An absolute path outside the repo, normalised; its parents are system places and are
    /// resolved by the OS as they are.
    Absolute(PathBuf),
}

impl Target {
    /// The full path of the file.
    pub fn full_path(&self) -> PathBuf {
        match self {
            Target::Beneath { base, path } => base.join(path),
            Target::Absolute(path) => path.clone(),
        }
    }
}

/// Why a file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A parent on the way is a symlink or not a directory.
    #[error("{}: refusing to write {declared:?}: {} is a symlink or not a directory", at.display(), at.display())]
    NotADirectory {
        /// The path as declared.
        declared: String,
        /// The offending parent.
        at: PathBuf,
    },
    /// Creating or opening a parent directory failed.
    #[error("{}: cannot create directory: {source}", at.display())]
    CreateDir {
        /// The directory.
        at: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The atomic write itself failed.
    #[error(transparent)]
    Write(#[from] AtomicError),
}

/// Parses and validates the `opschain.files` object of a properties document. Entries come out
/// in declaration order.
pub fn parse(properties: &Map<String, Value>, repo: &Path, files_root: Option<&Path>) -> Result<Vec<FileSpec>, PointerError> {
    match properties.get("opschain").and_then(|o| o.as_object()).and_then(|o| o.get("files")) {
        Some(files) => parse_object(files, "/opschain/files", repo, files_root),
        None => Ok(Vec::new()),
    }
}

/// Parses and validates a files declaration (an object of `path: entry`) found at `base`, the
/// JSON pointer errors are reported under. Entries come out in declaration order.
pub fn parse_object(files: &Value, base: &str, repo: &Path, files_root: Option<&Path>) -> Result<Vec<FileSpec>, PointerError> {
    let files = files.as_object().ok_or_else(|| PointerError { pointer: base.to_string(), message: "expected an object of path: entry".into() })?;
    files
        .iter()
        .map(|(declared, entry)| {
            // The entry's pointer is built only for an error: escaping every key of a valid
            // declaration cost more than parsing it.
            parse_entry(declared, entry, repo, files_root).map_err(|(suffix, message)| {
                let mut pointer = base.to_string();
                pointer.push('/');
                push_escaped(&mut pointer, declared);
                PointerError { pointer: pointer + suffix, message }
            })
        })
        .collect()
}

fn parse_entry(declared: &str, entry: &Value, repo: &Path, files_root: Option<&Path>) -> Result<FileSpec, (&'static str, String)> {
    let entry = entry.as_object().ok_or(("", "expected an object with mode, content and format".to_string()))?;
    for key in entry.keys() {
        if !matches!(key.as_str(), "mode" | "content" | "format") {
            return Err(("", format!("unknown key {key:?} (expected mode, content, format)")));
        }
    }
    let target = resolve(declared, repo, files_root).map_err(|m| ("", m))?;
    let mode = match entry.get("mode") {
        None | Some(Value::Null) => DEFAULT_MODE,
        Some(Value::String(s)) => parse_mode(s).ok_or(("/mode", format!("invalid mode {s:?}: expected an octal string like \"0600\"")))?,
        Some(_) => return Err(("/mode", "invalid mode: expected an octal string like \"0600\"".into())),
    };
    let format = match entry.get("format") {
        None | Some(Value::Null) => Format::Raw,
        Some(Value::String(s)) => match s.as_str() {
            "raw" => Format::Raw,
            "base64" => Format::Base64,
            "json" => Format::Json,
            other => return Err(("/format", format!("unknown format {other:?} (expected raw, base64 or json)"))),
        },
        Some(_) => return Err(("/format", "invalid format: expected \"raw\", \"base64\" or \"json\"".into())),
    };
    let content = match (format, entry.get("content")) {
        (Format::Json, Some(value)) => {
            let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| ("/content", e.to_string()))?;
            bytes.push(b'\n');
            bytes
        }
        (_, None | Some(Value::Null)) => Vec::new(),
        (Format::Raw, Some(Value::String(s))) => s.as_bytes().to_vec(),
        (Format::Base64, Some(Value::String(s))) => decode_base64(s).map_err(|e| ("/content", format!("invalid base64: {e}")))?,
        (_, Some(_)) => return Err(("/content", "content must be a string unless format is \"json\"".into())),
    };
    Ok(FileSpec { declared: declared.to_string(), target, mode, format, content })
}

/// Decodes standard base64, with or without padding, ignoring line breaks (as `base64 -w76` writes).
fn decode_base64(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent));
    let compact: String = s.chars().filter(|c| !matches!(c, '\n' | '\r')).collect();
    LENIENT.decode(compact)
}

/// Parses an octal mode string (`"0600"`, `"600"`, `"0o600"`) of at most `0o7777`.
pub fn parse_mode(s: &str) -> Option<u32> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o7777)
}

/// Resolves a declared path: `~`/`~/x` and relative paths under `repo`, absolute paths as they are
/// (or under `files_root`). Lexical normalisation; a path that climbs out of the repo is refused.
pub fn resolve(declared: &str, repo: &Path, files_root: Option<&Path>) -> Result<Target, String> {
    if declared.contains('\0') {
        return Err("path contains a NUL byte".into());
    }
    if declared.is_empty() {
        return Err("empty path".into());
    }
    if declared.ends_with('/') {
        return Err("path names a directory (ends with /)".into());
    }
    let (beneath, rest): (bool, &str) = if declared == "~" {
        return Err("path names the home directory itself".into());
    } else if let Some(rest) = declared.strip_prefix("~/") {
        (true, rest)
    } else if declared.starts_with('~') {
        return Err("`~user` paths are not supported (only `~/`)".into());
    } else if declared.starts_with('/') {
        (false, declared)
    } else {
        (true, declared)
    };
    if beneath {
        let path = normalise_beneath(Path::new(rest)).ok_or("path climbs out of the repo with `..`")?;
        return Ok(Target::Beneath { base: repo.to_path_buf(), path });
    }
    let absolute = normalise_absolute(Path::new(rest));
    if let Ok(inside) = absolute.strip_prefix(repo) {
        if inside.as_os_str().is_empty() {
            return Err("path names the repo directory itself".into());
        }
        return Ok(Target::Beneath { base: repo.to_path_buf(), path: inside.to_path_buf() });
    }
    match files_root {
        Some(root) => {
            let relative = absolute.strip_prefix("/").map_err(|_| "path is not absolute")?;
            Ok(Target::Beneath { base: root.to_path_buf(), path: relative.to_path_buf() })
        }
        None => Ok(Target::Absolute(absolute)),
    }
}

/// `.` dropped, `..` pops; `None` when `..` would climb above the start or nothing is left.
fn normalise_beneath(path: &Path) -> Option<PathBuf> {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.iter().collect())
}

/// Like `File.expand_path` on an absolute path: `..` above `/` stays at `/`.
fn normalise_absolute(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// Checks, before anything is written, that no existing component of a path under the repo (or the
/// files root) is a symlink: a link there could point out of place. Missing components are fine
/// (they will be created). [`write()`] enforces the same again with `O_NOFOLLOW`, so a link created
/// in between is refused too.
pub fn check_no_symlinks(spec: &FileSpec) -> Result<(), String> {
    let Target::Beneath { base, path } = &spec.target else { return Ok(()) };
    let mut at = base.clone();
    for component in path.components() {
        at.push(component);
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(format!("{} is a symlink; refusing to write through it", at.display()));
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    Ok(())
}

/// Writes one file atomically, with its mode from creation, creating its parents.
pub fn write(spec: &FileSpec) -> Result<(), WriteError> {
    let mut writer = Writer::default();
    writer.write(spec)?;
    writer.finish()
}

/// Writes declared files one after the other, as [`write()`] does, then [`finish`](Self::finish)
/// puts them in place. Meant for one batch, written before the action starts: a directory swapped
/// for a symlink between two writes would not be noticed.
///
/// Two things make a batch cheaper than its files one by one:
/// * it keeps the last parent directory it opened: the files of a step mostly share a directory,
///   and walking to it again costs a `mkdir`, a `stat` and an `openat` and `close` per component;
/// * a directory that does not exist yet is **staged**: created under a temporary name beside
///   its place, filled with the batch's files written straight in (no temporary file and rename
///   each: a rename is a directory update as costly as a creation on ext4), and renamed into
///   place whole by `finish`. A reader sees no directory, then the directory with every file
///   complete: the atomicity of a file's own temporary and rename, for all of them at once.
///   Files that go into directories that already exist are written atomically each.
#[derive(Default)]
pub struct Writer {
    /// The last directory walked to. Default: none.
    last: Option<Walked>,
    /// The directories staged so far, in the order they were created; `finish` moves them into
    /// place. Default: none.
    staged: Vec<Staged>,
}

/// A directory a [`Writer`] walked to.
struct Walked {
    /// The base it was reached from.
    base: PathBuf,
    /// Its path relative to `base`.
    rel: PathBuf,
    /// Its descriptor.
    fd: OwnedFd,
    /// Its path as it will be once in place, for errors.
    path: PathBuf,
    /// It is in a staged directory (or is one): the batch created it, so a file goes straight
    /// in under its own name.
    fresh: bool,
}

/// A directory staged by a [`Writer`]: created under a temporary name, moved into place by
/// [`Writer::finish`].
struct Staged {
    /// The base it is under.
    base: PathBuf,
    /// Its path relative to `base`, as it will be once in place.
    rel: PathBuf,
    /// The directory that holds it.
    parent: OwnedFd,
    /// Its temporary name in `parent`.
    tmp: std::ffi::OsString,
    /// Its final name in `parent`.
    name: std::ffi::OsString,
    /// The staged directory itself.
    fd: OwnedFd,
    /// Its final full path, for errors.
    path: PathBuf,
}

/// Distinguishes the temporary names of the directories one process stages.
static STAGED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many temporary names a process tries in all before a staged directory's creation fails:
/// enough to pass the leftovers of a few killed runs with the same pid.
const STAGED_TRIES: u64 = 64;

impl Writer {
    /// Writes `spec` (see [`Writer`]); it is in place once [`finish`](Self::finish) returns.
    pub fn write(&mut self, spec: &FileSpec) -> Result<(), WriteError> {
        match &spec.target {
            Target::Beneath { base, path } => {
                let parent = path.parent().unwrap_or(Path::new(""));
                let reuse = matches!(&self.last, Some(last) if &last.base == base && last.rel == parent);
                if !reuse {
                    let walked = self.walk(base, parent, &spec.declared)?;
                    self.last = Some(walked);
                }
                let last = self.last.as_ref().expect("set above");
                let name = path.file_name().map(Path::new).unwrap_or(path);
                if last.fresh {
                    match create_new_at(&last.fd, name, &spec.content, spec.mode) {
                        Ok(()) => return Ok(()),
                        // Declared twice (`a/b` and `a/./b`): the later one replaces it, as ever.
                        Err(e) if e.source.raw_os_error() == Some(libc::EEXIST) => {}
                        Err(e) => return Err(AtomicError { path: last.path.join(name), ..e }.into()),
                    }
                }
                atomic::write_at(&last.fd, &last.path, name, &spec.content, spec.mode, Durability::Rename)?;
            }
            Target::Absolute(path) => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|source| WriteError::CreateDir { at: parent.to_path_buf(), source })?;
                }
                atomic::write(path, &spec.content, spec.mode, Durability::Rename)?;
            }
        }
        Ok(())
    }

    /// Moves every staged directory into place, in the order they were staged. One whose place
    /// was taken meanwhile by a directory (another base reaching the same place, or another
    /// writer) is merged into it entry by entry, each entry renamed in (atomic each); what cannot
    /// be moved is an error, and the staged directories left are removed.
    pub fn finish(mut self) -> Result<(), WriteError> {
        self.last = None;
        let mut staged = std::mem::take(&mut self.staged).into_iter();
        while let Some(dir) = staged.next() {
            let (parent, fd) = (dir.parent.as_raw_fd(), dir.fd.as_raw_fd());
            let result = match nix::fcntl::renameat(Some(parent), dir.tmp.as_os_str(), Some(parent), dir.name.as_os_str()) {
                Err(Errno::ENOTEMPTY | Errno::EEXIST) => merge_into(fd, parent, dir.name.as_os_str(), 0).and_then(|()| unlinkat_tree(parent, &dir.tmp, 0)),
                other => other,
            };
            if let Err(e) = result {
                let at = dir.path.clone();
                for left in std::iter::once(dir).chain(staged) {
                    // Best effort: what was staged is not declared anywhere any more.
                    let _ = unlinkat_tree(left.parent.as_raw_fd(), &left.tmp, 0);
                }
                return Err(WriteError::CreateDir { at, source: e.into() });
            }
        }
        Ok(())
    }

    /// Opens the directory `rel` under `base` (see [`Walked`]): inside a directory staged
    /// before, from it; else from `base`, staging the first missing component.
    fn walk(&mut self, base: &Path, rel: &Path, declared: &str) -> Result<Walked, WriteError> {
        for staged in &self.staged {
            if staged.base == base {
                if let Ok(inside) = rel.strip_prefix(&staged.rel) {
                    let fd = staged.fd.try_clone().map_err(|source| WriteError::CreateDir { at: staged.path.clone(), source })?;
                    let (fd, path, _) = descend(fd, staged.path.clone(), inside, declared, true)?;
                    return Ok(Walked { base: base.to_path_buf(), rel: rel.to_path_buf(), fd, path, fresh: true });
                }
            }
        }
        std::fs::create_dir_all(base).map_err(|source| WriteError::CreateDir { at: base.to_path_buf(), source })?;
        let (fd, path, staged) = descend(atomic::open_dir(base)?, base.to_path_buf(), rel, declared, false)?;
        let fresh = staged.is_some();
        if let Some(mut staged) = staged {
            staged.base = base.to_path_buf();
            staged.rel = staged.path.strip_prefix(base).map(Path::to_path_buf).unwrap_or_default();
            self.staged.push(staged);
        }
        Ok(Walked { base: base.to_path_buf(), rel: rel.to_path_buf(), fd, path, fresh })
    }
}

/// Writes `contents` to the new file `name` in the directory `dirfd`, created with exactly `mode`
/// (`O_EXCL`: it must not exist). Not atomic by itself: only for a directory no one else sees yet
/// (a staged one).
fn create_new_at(dirfd: &OwnedFd, name: &Path, contents: &[u8], mode: u32) -> Result<(), AtomicError> {
    use std::io::Write as _;
    let err = |op: &'static str, source: std::io::Error| AtomicError { op, path: name.to_path_buf(), source };
    let mode_bits = Mode::from_bits_truncate(mode as libc::mode_t);
    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut file = std::fs::File::from(atomic::open_at(dirfd, name, flags, mode_bits).map_err(|e| err("create", e.into()))?);
    // As atomic writes do: the umask may have narrowed the mode; set it exactly when it could.
    if mode & 0o7000 != 0 || atomic::umask().is_none_or(|umask| mode & umask != 0) {
        nix::sys::stat::fchmod(file.as_raw_fd(), mode_bits).map_err(|e| err("set the mode of", e.into()))?;
    }
    file.write_all(contents).map_err(|e| err("write", e))
}

/// Moves every entry of the staged directory `from` into `name` in `parent` (a directory that took
/// the staged one's place), each by one rename: a file replaces its namesake atomically, a
/// directory is renamed in whole or, when one is there already, merged the same way. `depth`
/// bounds the recursion.
fn merge_into(from: RawFd, parent: RawFd, name: &std::ffi::OsStr, depth: usize) -> nix::Result<()> {
    const MAX_DEPTH: usize = 64;
    let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
    let into = atomic::open_at(&borrowed(parent), name, flags, Mode::empty())?;
    let mut entries = nix::dir::Dir::openat(Some(from), ".", flags, Mode::empty())?;
    for entry in entries.iter() {
        let entry = entry?;
        let entry_name = entry.file_name();
        if entry_name.to_bytes() == b"." || entry_name.to_bytes() == b".." {
            continue;
        }
        match nix::fcntl::renameat(Some(from), entry_name, Some(into.as_raw_fd()), entry_name) {
            Err(Errno::ENOTEMPTY | Errno::EEXIST | Errno::EISDIR) if depth < MAX_DEPTH => {
                let sub = atomic::open_at(&borrowed(from), entry_name, flags, Mode::empty())?;
                let entry_name = std::ffi::OsStr::from_bytes(entry_name.to_bytes());
                merge_into(sub.as_raw_fd(), into.as_raw_fd(), entry_name, depth + 1)?;
            }
            other => other?,
        }
    }
    Ok(())
}

/// `fd` as a borrowed descriptor, for the helpers that take one.
fn borrowed(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: every caller passes a descriptor it holds open for the whole call it makes with it.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

/// Removes `name` in the directory `parent` and, for a directory, everything in it, without
/// following a symlink; best effort, for staged directories given up on.
fn unlinkat_tree(parent: RawFd, name: &std::ffi::OsStr, depth: usize) -> nix::Result<()> {
    use nix::unistd::{unlinkat, UnlinkatFlags};
    match unlinkat(Some(parent), name, UnlinkatFlags::NoRemoveDir) {
        Err(Errno::EISDIR) if depth < 64 => {}
        other => return other,
    }
    let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
    let dir = atomic::open_at(&borrowed(parent), name, flags, Mode::empty())?;
    let mut entries = nix::dir::Dir::openat(Some(dir.as_raw_fd()), ".", flags, Mode::empty())?;
    let names: Vec<std::ffi::OsString> =
        entries.iter().filter_map(Result::ok).map(|e| std::ffi::OsStr::from_bytes(e.file_name().to_bytes()).to_os_string()).filter(|n| n != "." && n != "..").collect();
    for entry in names {
        let _ = unlinkat_tree(dir.as_raw_fd(), &entry, depth + 1);
    }
    unlinkat(Some(parent), name, UnlinkatFlags::RemoveDir)
}

/// Walks `rel`'s components down from the directory `fd` (which is `at`), one at a time, never
/// following a symlink (`O_NOFOLLOW`), creating what is missing. Written by hand because
/// `openat2(RESOLVE_BENEATH)` is not in every kernel a runner image meets, and no maintained crate
/// does this walk on its own. Outside a staged directory (`fresh` false), the first missing
/// component is staged: created under a temporary name, returned (its `base` and `rel` for the
/// caller to fill), and the walk goes on inside it. Returns the directory reached, its path once
/// in place, and the directory staged, if any.
fn descend(mut fd: OwnedFd, mut at: PathBuf, rel: &Path, declared: &str, fresh: bool) -> Result<(OwnedFd, PathBuf, Option<Staged>), WriteError> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
    let dir_mode = Mode::from_bits_truncate(DIR_MODE as libc::mode_t);
    let mut staged: Option<Staged> = None;
    for component in rel.components() {
        at.push(component);
        let name = component.as_os_str();
        if fresh || staged.is_some() {
            // Inside a directory the batch created: nothing is there but what it made.
            match mkdirat(Some(fd.as_raw_fd()), name, dir_mode) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(WriteError::CreateDir { at, source: e.into() }),
            }
            fd = atomic::open_at(&fd, name, flags, Mode::empty()).map_err(|e| not_a_dir(e, declared, &at))?;
            continue;
        }
        fd = match atomic::open_at(&fd, name, flags, Mode::empty()) {
            Ok(next) => next,
            Err(Errno::ENOENT) => {
                // A name left by an earlier run of the same pid (a restarted container's agent is
                // PID 1 again) is skipped for the next one.
                let tmp = loop {
                    let tmp = format!(".{}.tmp-{}-{}", name.to_string_lossy(), std::process::id(), STAGED.fetch_add(1, Ordering::Relaxed));
                    match mkdirat(Some(fd.as_raw_fd()), tmp.as_str(), dir_mode) {
                        Ok(()) => break tmp,
                        Err(Errno::EEXIST) if STAGED.load(Ordering::Relaxed) < STAGED_TRIES => continue,
                        Err(e) => return Err(WriteError::CreateDir { at, source: e.into() }),
                    }
                };
                let inside = atomic::open_at(&fd, tmp.as_str(), flags, Mode::empty()).map_err(|e| WriteError::CreateDir { at: at.clone(), source: e.into() })?;
                let keep = inside.try_clone().map_err(|source| WriteError::CreateDir { at: at.clone(), source })?;
                staged = Some(Staged { base: PathBuf::new(), rel: PathBuf::new(), parent: fd, tmp: tmp.into(), name: name.to_os_string(), fd: keep, path: at.clone() });
                inside
            }
            Err(e) => return Err(not_a_dir(e, declared, &at)),
        };
    }
    Ok((fd, at, staged))
}

fn not_a_dir(e: Errno, declared: &str, at: &Path) -> WriteError {
    match e {
        Errno::ELOOP | Errno::ENOTDIR => WriteError::NotADirectory { declared: declared.to_string(), at: at.to_path_buf() },
        e => WriteError::CreateDir { at: at.to_path_buf(), source: e.into() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn specs(files: Value) -> Result<Vec<FileSpec>, PointerError> {
        let props = json!({"opschain": {"files": files}});
        parse(props.as_object().unwrap(), Path::new("/opt/opschain"), None)
    }

    #[test]
    fn a_writer_writes_each_file_where_declared_as_it_moves_between_directories() {
        let repo = tempfile::tempdir().unwrap();
        let declared = json!({"opschain": {"files": {
            "~/a/one": {"content": "1"}, "~/a/two": {"content": "2", "mode": "0600"},
            "~/b/c/three": {"content": "3"}, "~/a/four": {"content": "4"}, "~/top": {"content": "5"},
        }}});
        let specs = parse(declared.as_object().unwrap(), repo.path(), None).unwrap();
        let mut writer = Writer::default();
        for spec in &specs {
            writer.write(spec).unwrap();
        }
        // `a` and `b` did not exist: they are staged, and nothing of them shows before `finish`;
        // `top` goes into the repo, which exists, atomically on its own.
        assert!(!repo.path().join("a").exists() && !repo.path().join("b").exists());
        assert_eq!(std::fs::read_to_string(repo.path().join("top")).unwrap(), "5");
        writer.finish().unwrap();
        let mut names: Vec<_> = std::fs::read_dir(repo.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["a", "b", "top"], "no staged directory left behind");
        for (path, content) in [("a/one", "1"), ("a/two", "2"), ("b/c/three", "3"), ("a/four", "4"), ("top", "5")] {
            assert_eq!(std::fs::read_to_string(repo.path().join(path)).unwrap(), content, "{path}");
        }
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(repo.path().join("a/two")).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(repo.path().join("a")).unwrap().count(), 3, "no temporary left behind");
    }

    #[test]
    fn a_staged_directory_whose_place_was_taken_is_merged_into_it() {
        let repo = tempfile::tempdir().unwrap();
        let declared = json!({"opschain": {"files": {
            "~/d/new": {"content": "n", "mode": "0640"}, "~/d/sub/deep": {"content": "s"}, "~/d/same": {"content": "mine"},
            "~/d/./same": {"content": "declared twice: the later wins"},
        }}});
        let specs = parse(declared.as_object().unwrap(), repo.path(), None).unwrap();
        let mut writer = Writer::default();
        for spec in &specs {
            writer.write(spec).unwrap();
        }
        // Someone else creates the directory, with files of its own, before the batch finishes.
        std::fs::create_dir_all(repo.path().join("d/sub")).unwrap();
        std::fs::write(repo.path().join("d/theirs"), "t").unwrap();
        std::fs::write(repo.path().join("d/sub/deep"), "old").unwrap();
        writer.finish().unwrap();
        let read = |p: &str| std::fs::read_to_string(repo.path().join(p)).unwrap();
        assert_eq!((read("d/new"), read("d/sub/deep"), read("d/theirs"), read("d/same")), ("n".into(), "s".into(), "t".into(), "declared twice: the later wins".into()));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(repo.path().join("d/new")).unwrap().permissions().mode() & 0o777, 0o640);
        assert_eq!(std::fs::read_dir(repo.path()).unwrap().count(), 1, "no staged directory left behind");
    }

    #[test]
    fn a_staging_name_left_by_an_earlier_run_is_passed_over() {
        let repo = tempfile::tempdir().unwrap();
        // What a run with this pid killed mid-batch would have left, at the next names in line.
        let next = STAGED.load(Ordering::Relaxed);
        for n in next..next + 3 {
            std::fs::create_dir(repo.path().join(format!(".left.tmp-{}-{n}", std::process::id()))).unwrap();
        }
        let declared = json!({"opschain": {"files": {"~/left/x": {"content": "x"}}}});
        let specs = parse(declared.as_object().unwrap(), repo.path(), None).unwrap();
        let mut writer = Writer::default();
        writer.write(&specs[0]).unwrap();
        writer.finish().unwrap();
        assert_eq!(std::fs::read_to_string(repo.path().join("left/x")).unwrap(), "x");
    }

    #[test]
    fn a_staged_directory_that_cannot_be_put_in_place_is_an_error_and_removed() {
        let repo = tempfile::tempdir().unwrap();
        let declared = json!({"opschain": {"files": {"~/d/x": {"content": "x"}}}});
        let specs = parse(declared.as_object().unwrap(), repo.path(), None).unwrap();
        let mut writer = Writer::default();
        writer.write(&specs[0]).unwrap();
        std::fs::write(repo.path().join("d"), "a file took its place").unwrap();
        let err = writer.finish().unwrap_err();
        assert!(matches!(&err, WriteError::CreateDir { at, .. } if at == &repo.path().join("d")), "{err}");
        assert_eq!(std::fs::read_dir(repo.path()).unwrap().count(), 1, "the staged directory is removed");
    }

    #[test]
    fn resolves_home_relative_and_absolute() {
        let repo = Path::new("/opt/opschain");
        let beneath = |p: &str| Target::Beneath { base: repo.into(), path: p.into() };
        assert_eq!(resolve("~/a/b", repo, None).unwrap(), beneath("a/b"));
        assert_eq!(resolve("a/./b", repo, None).unwrap(), beneath("a/b"));
        assert_eq!(resolve("/opt/opschain/x", repo, None).unwrap(), beneath("x"));
        assert_eq!(resolve("/etc/../tmp/x", repo, None).unwrap(), Target::Absolute("/tmp/x".into()));
        assert_eq!(resolve("/etc/x", repo, Some(Path::new("/sandbox"))).unwrap(), Target::Beneath { base: "/sandbox".into(), path: "etc/x".into() });
        assert!(resolve("~/../x", repo, None).is_err());
        assert!(resolve("a/../../x", repo, None).is_err());
        assert!(resolve("~root/x", repo, None).is_err());
        assert!(resolve("a\0b", repo, None).is_err());
    }

    #[test]
    fn formats_and_modes() {
        let got = specs(json!({
            "a": {"content": "hi"},
            "b": {"mode": "0600", "format": "base64", "content": "aGk="},
            "c": {"format": "json", "content": {"k": [1]}},
        }))
        .unwrap();
        assert_eq!(got[0].content, b"hi");
        assert_eq!(got[0].mode, DEFAULT_MODE);
        assert_eq!((got[1].mode, got[1].content.as_slice()), (0o600, &b"hi"[..]));
        assert_eq!(serde_json::from_slice::<Value>(&got[2].content).unwrap(), json!({"k": [1]}));
    }

    #[test]
    fn invalid_entries_name_their_pointer() {
        let err = specs(json!({"/x/y": {"mode": "999"}})).unwrap_err();
        assert_eq!(err.pointer, "/opschain/files/~1x~1y/mode");
        assert_eq!(specs(json!({"x": {"format": "yaml"}})).unwrap_err().pointer, "/opschain/files/x/format");
        assert_eq!(specs(json!({"x": {"format": "base64", "content": "@@"}})).unwrap_err().pointer, "/opschain/files/x/content");
        assert_eq!(specs(json!({"x": {"content": 5}})).unwrap_err().pointer, "/opschain/files/x/content");
        assert_eq!(specs(json!({"x": {"mdoe": "0600"}})).unwrap_err().pointer, "/opschain/files/x");
        assert!(specs(json!([1])).is_err());
    }
}
