//! Starting a job: its output pipes, its program found on its own `PATH`, and the process
//! started in a process group of its own with `posix_spawn(3)` (or std's `Command` when the
//! child must search `PATH` itself). Nothing here waits: [`super::procs::reap`] reaps the job.

use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt as _;
use std::process::Stdio;

use nix::fcntl::OFlag;
use nix::unistd::Pid;
use tokio::net::unix::pipe;

use super::Job;

/// Starts `program` with `args` in `job`'s directory and environment, in a process group of its
/// own, its stdout and stderr on the write ends given (closed here, once the child has its copies,
/// so that the pipes end when the job's processes are gone). Returns its pid; it is reaped by
/// [`super::procs::reap`], never through std's handle.
pub(super) fn spawn(program: &OsString, args: &[OsString], job: &Job, stdout: OwnedFd, stderr: OwnedFd) -> io::Result<Pid> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = on_path(program, &job.env, &job.cwd);
    if path.as_bytes().contains(&b'/') {
        return posix_spawn(&path, program, args, job, &stdout, &stderr);
    }
    // A program left to the child's own `PATH` search (see `on_path`): std's `Command` searches
    // it as `execvp` does.
    let mut command = std::process::Command::new(path);
    command
        .arg0(program) // argv[0] as written, as execvp would pass it (busybox applets read it)
        .args(args)
        .env_clear()
        .envs(job.env.iter().map(|(name, value)| (name, value)))
        .current_dir(&job.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .process_group(0);
    #[allow(clippy::zombie_processes)] // reaped by `procs::reap`
    let child = command.spawn()?;
    Ok(Pid::from_raw(child.id() as i32))
}

/// Starts the program at `path` (it has a `/`) as [`spawn`] says, with `posix_spawn(3)`: what
/// std's `Command` calls for such a program, with the same set-up (standard input on
/// `/dev/null`, the two pipes as stdout and stderr, the job's directory, a process group of its
/// own, no blocked signal, SIGPIPE back to its default), called directly because `Command` copies
/// the environment three times on the way (a sorted map of clones, then C strings, then drops
/// them all), a cost that grows with the action's variables (BENCHMARKS.md). Here
/// each variable is copied once, into one buffer of C strings; a name given twice keeps its last
/// value, as with `Command::envs`.
fn posix_spawn(path: &std::ffi::OsStr, argv0: &std::ffi::OsStr, args: &[OsString], job: &Job, stdout: &OwnedFd, stderr: &OwnedFd) -> io::Result<Pid> {
    use std::ffi::CString;
    use std::os::fd::AsRawFd as _;
    use std::os::unix::ffi::OsStrExt as _;
    let c_string = |bytes: &[u8]| CString::new(bytes).map_err(|_| nul_error());
    let path = c_string(path.as_bytes())?;
    let cwd = c_string(job.cwd.as_os_str().as_bytes())?;
    let mut argv = CStrings::default();
    for arg in std::iter::once(argv0).chain(args.iter().map(OsString::as_os_str)) {
        argv.push(&[arg.as_bytes()])?;
    }
    // The last value of each name: an entry whose name comes again later is left out. Compared
    // pairwise, lengths first: for the few dozen short names of an action, cheaper than hashing
    // each.
    let env = &job.env[..];
    let mut envp = CStrings::with_capacity(env.iter().map(|(name, value)| name.len() + value.len() + 2).sum());
    for (at, (name, value)) in env.iter().enumerate() {
        let again = env[at + 1..].iter().any(|(later, _)| later.len() == name.len() && later == name);
        if !again {
            envp.push(&[name.as_bytes(), b"=", value.as_bytes()])?;
        }
    }
    let (argv_ptrs, envp_ptrs) = (argv.pointers(), envp.pointers());
    // openat, not open: musl's open(2) wrapper follows every O_CLOEXEC open with an fcntl.
    let null = nix::fcntl::openat(None, "/dev/null", OFlag::O_RDONLY | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())?;
    // SAFETY: openat just returned this descriptor and nothing else owns it.
    let null = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(null) };

    /// Calls a posix_spawn set-up function, its error number (0 for success) as an error.
    fn check(code: libc::c_int) -> io::Result<()> {
        if code == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(code))
        }
    }
    // SAFETY: the attribute and file-action objects are initialised before use and destroyed
    // once (by the guards below) after the last use; every pointer handed over (paths, argv,
    // envp and their NUL-terminated arrays) points into values that outlive the call, and the
    // descriptors are open for its whole length.
    unsafe {
        let mut actions = std::mem::MaybeUninit::<libc::posix_spawn_file_actions_t>::uninit();
        check(libc::posix_spawn_file_actions_init(actions.as_mut_ptr()))?;
        struct Actions(*mut libc::posix_spawn_file_actions_t);
        impl Drop for Actions {
            fn drop(&mut self) {
                // SAFETY: initialised above, destroyed only here.
                unsafe { libc::posix_spawn_file_actions_destroy(self.0) };
            }
        }
        let actions = Actions(actions.as_mut_ptr());
        let mut attrs = std::mem::MaybeUninit::<libc::posix_spawnattr_t>::uninit();
        check(libc::posix_spawnattr_init(attrs.as_mut_ptr()))?;
        struct Attrs(*mut libc::posix_spawnattr_t);
        impl Drop for Attrs {
            fn drop(&mut self) {
                // SAFETY: initialised above, destroyed only here.
                unsafe { libc::posix_spawnattr_destroy(self.0) };
            }
        }
        let attrs = Attrs(attrs.as_mut_ptr());

        check(libc::posix_spawn_file_actions_adddup2(actions.0, null.as_raw_fd(), libc::STDIN_FILENO))?;
        check(libc::posix_spawn_file_actions_adddup2(actions.0, stdout.as_raw_fd(), libc::STDOUT_FILENO))?;
        check(libc::posix_spawn_file_actions_adddup2(actions.0, stderr.as_raw_fd(), libc::STDERR_FILENO))?;
        check(libc::posix_spawn_file_actions_addchdir_np(actions.0, cwd.as_ptr()))?;

        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        check(libc::posix_spawnattr_setsigmask(attrs.0, &none))?;
        // The agent ignores SIGPIPE (Rust's runtime does); the job gets it back, as from std.
        let mut default: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut default);
        libc::sigaddset(&mut default, libc::SIGPIPE);
        check(libc::posix_spawnattr_setsigdefault(attrs.0, &default))?;
        check(libc::posix_spawnattr_setpgroup(attrs.0, 0))?;
        let flags = libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF | libc::POSIX_SPAWN_SETPGROUP;
        check(libc::posix_spawnattr_setflags(attrs.0, flags as libc::c_short))?;

        let mut pid: libc::pid_t = 0;
        check(libc::posix_spawn(&mut pid, path.as_ptr(), actions.0, attrs.0, argv_ptrs.as_ptr().cast(), envp_ptrs.as_ptr().cast()))?;
        Ok(Pid::from_raw(pid))
    }
}

/// The error of a string that holds a NUL byte, which exec cannot pass (std's words for it).
fn nul_error() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "nul byte found in provided data")
}

/// C strings back to back in one buffer (one allocation for a whole argv or envp rather than one
/// a string), and the NULL-terminated array of pointers to them that exec takes.
#[derive(Default)]
struct CStrings {
    /// The strings, each NUL-terminated.
    buf: Vec<u8>,
    /// Where each string starts in `buf`.
    starts: Vec<usize>,
}

impl CStrings {
    /// Empty, with room for `bytes` of strings (NULs included).
    fn with_capacity(bytes: usize) -> CStrings {
        CStrings { buf: Vec::with_capacity(bytes), starts: Vec::new() }
    }

    /// Appends the string made of `parts` one after the other; fails when one holds a NUL.
    fn push(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        if parts.iter().any(|part| memchr::memchr(0, part).is_some()) {
            return Err(nul_error());
        }
        self.starts.push(self.buf.len());
        for part in parts {
            self.buf.extend_from_slice(part);
        }
        self.buf.push(0);
        Ok(())
    }

    /// The pointers to each string, then NULL; valid while `self` is neither changed nor dropped.
    fn pointers(&self) -> Vec<*const libc::c_char> {
        self.starts.iter().map(|&start| self.buf[start..].as_ptr().cast()).chain(std::iter::once(std::ptr::null())).collect()
    }
}

/// `program` as `execvp` would find it on the job's `PATH` (the default search path when the job
/// has none): the first regular file in those directories that we may execute, a relative
/// directory (or an empty entry: the current one) taken from the job's `cwd`; `program` itself when
/// it names a path (has a `/`) or no directory holds it, and then starting it fails as
/// exec's own search would.
///
/// Found here rather than by the child because std starts a child with `posix_spawn` (a vfork:
/// no copy of the agent's page tables, no error pipe to wait on) only when
/// the program is a path or the child searches the agent's own `PATH`. No crate is needed for a
/// search this small, and it must use the child's environment, not ours.
fn on_path(program: &OsString, env: &[(OsString, OsString)], cwd: &std::path::Path) -> OsString {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    if program.as_bytes().contains(&b'/') || program.is_empty() {
        return program.clone();
    }
    // musl's and glibc's default search path.
    let path = env.iter().rev().find(|(name, _)| name == "PATH").map_or(OsStr::new("/usr/local/bin:/bin:/usr/bin"), |(_, value)| value.as_os_str());
    // One buffer for every candidate: joining two paths anew for each directory of a long PATH
    // allocated twice a directory.
    let mut candidate = std::path::PathBuf::new();
    for dir in std::env::split_paths(path) {
        candidate.clear();
        candidate.push(cwd);
        candidate.push(dir);
        candidate.push(program);
        if candidate.is_relative() {
            // A relative directory under a relative `cwd`: the child resolves it only after
            // changing directory; leave the whole search to it (execvp).
            return program.clone();
        }
        let executable = std::fs::metadata(&candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        if executable && nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok() {
            return candidate.into_os_string();
        }
    }
    program.clone()
}

/// A pipe for one of the job's output streams, of [`super::output::PIPE_SIZE`] bytes where the system
/// allows: our read end (non-blocking, registered with the runtime) and the job's write end
/// (blocking, as programs expect of their stdout). Both are close-on-exec, so no other process we
/// start inherits them.
pub(super) fn output_pipe() -> io::Result<(pipe::Receiver, OwnedFd)> {
    use std::os::fd::AsRawFd as _;
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    // A larger buffer where allowed; the default one otherwise (see `PIPE_SIZE`).
    // SAFETY: F_SETPIPE_SZ on a pipe we own takes an int and changes nothing else.
    unsafe { libc::fcntl(read.as_raw_fd(), libc::F_SETPIPE_SZ, super::output::PIPE_SIZE as libc::c_int) };
    // Our end only is non-blocking (the flag is the open file's, and the job's end is another).
    // Set here, so that tokio need not check what we just made (a pipe, open for reading).
    nix::fcntl::fcntl(read.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    Ok((pipe::Receiver::from_owned_fd_unchecked(read)?, write))
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::os::unix::fs::PermissionsExt;

    use super::on_path;

    #[test]
    fn programs_are_found_on_the_jobs_path_as_execvp_finds_them() {
        let root = tempfile::tempdir().unwrap();
        let make = |dir: &str, mode: u32| {
            let dir = root.path().join(dir);
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join("tool");
            std::fs::write(&file, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            file
        };
        make("plain", 0o644); // not executable: skipped
        let found = make("bin", 0o755);
        let local = make("cwd/rel", 0o755);
        std::fs::create_dir_all(root.path().join("tool-dir/tool")).unwrap(); // a directory: skipped
        let path = |dirs: &[&str]| {
            let dirs: Vec<String> =
                dirs.iter().map(|d| if d.is_empty() || !d.starts_with('/') { d.to_string() } else { format!("{}{d}", root.path().display()) }).collect();
            vec![(OsString::from("HOME"), OsString::from("/x")), (OsString::from("PATH"), OsString::from(dirs.join(":")))]
        };
        let cwd = root.path().join("cwd");
        let tool = OsString::from("tool");
        assert_eq!(on_path(&tool, &path(&["/missing", "/plain", "/tool-dir", "/bin"]), &cwd), found.into_os_string());
        assert_eq!(on_path(&tool, &path(&["/plain", "rel"]), &cwd), local.clone().into_os_string());
        assert_eq!(on_path(&tool, &path(&["/plain"]), &cwd), tool, "not found: left to fail when started");
        assert_eq!(on_path(&OsString::from("./tool"), &path(&["/bin"]), &cwd), OsString::from("./tool"), "a path is used as it is");
        // No PATH at all: the default search path, where `sh` is.
        assert!(std::path::Path::new(&on_path(&OsString::from("sh"), &[], &cwd)).is_absolute());
        // An empty entry is the job's directory.
        std::fs::copy(&local, cwd.join("tool")).unwrap();
        assert_eq!(on_path(&tool, &path(&["/plain", ""]), &cwd), cwd.join("tool").into_os_string());
        // A relative entry under a relative directory is left to the child's own search.
        assert_eq!(on_path(&tool, &path(&["rel"]), std::path::Path::new("cwd")), tool);
    }
}
