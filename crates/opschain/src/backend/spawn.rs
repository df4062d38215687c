//! Starting an agent without copying the controller.
//!
//! `std::process::Command` forks when it must run code in the child before `exec` (here: start a
//! new session and ask for a parent-death signal), and a fork of the controller copies the page
//! tables of every thread and heap it has, then makes each of its later writes to memory fault
//! and copy a page while the child still shares it. With a thousand steps that was the
//! controller's largest cost (a tenth of the whole machine's CPU time in a profile of 1,000
//! parallel steps). [`spawn`] does what glibc's `posix_spawn` does instead, `clone(CLONE_VM |
//! CLONE_VFORK)`: the child borrows the controller's memory (the calling thread waits, suspended,
//! until the child has called `exec`), and runs only async-signal-safe system calls on its own
//! small stack: reset the signal mask and handlers, `setsid`, `prctl(PR_SET_PDEATHSIG)`, `dup2`
//! of its stdin/stdout/stderr, `chdir`, `execve`. Everything they need (C strings, pointer
//! arrays) is built before the clone.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;

/// Why an agent could not be started: the step that failed and, for a system call, its errno
/// (as the `io::Error` source; see [`SpawnError::errno`]).
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The program's path cannot be made absolute (the working directory is gone).
    #[error("cannot make {} absolute", path.display())]
    Absolute {
        /// The program as given.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The program, an argument, an environment entry or the directory holds a NUL byte, which a
    /// C string cannot carry.
    #[error("{value:?} holds a NUL byte")]
    Nul {
        /// The value.
        value: OsString,
    },
    /// `/dev/null`, the child's stdin, cannot be opened.
    #[error("cannot open /dev/null")]
    DevNull(#[source] io::Error),
    /// A pipe for the child's stdout or stderr cannot be made.
    #[error("cannot make a pipe for the output")]
    Pipe(#[source] io::Error),
    /// `clone(2)` failed: there is no child.
    #[error("cannot clone the process")]
    Clone(#[source] io::Error),
    /// A call of the child between clone and exec failed; the child has exited and is reaped.
    #[error("cannot {stage}")]
    Child {
        /// The call that failed.
        stage: Stage,
        /// Its errno.
        #[source]
        source: io::Error,
    },
}

impl SpawnError {
    /// The errno of the system call that failed; `None` for a value with a NUL byte.
    pub fn errno(&self) -> Option<i32> {
        match self {
            SpawnError::Nul { .. } => None,
            SpawnError::Absolute { source, .. } | SpawnError::DevNull(source) | SpawnError::Pipe(source) | SpawnError::Clone(source) | SpawnError::Child { source, .. } => {
                source.raw_os_error()
            }
        }
    }
}

/// A spawn failure as an `io::Error` of the errno's kind (`InvalidInput` for a NUL byte) that
/// keeps the [`SpawnError`] as its message and cause: what `std::process::Command::spawn` gives.
impl From<SpawnError> for io::Error {
    fn from(e: SpawnError) -> io::Error {
        let kind = match &e {
            SpawnError::Nul { .. } => io::ErrorKind::InvalidInput,
            SpawnError::Absolute { source, .. } | SpawnError::DevNull(source) | SpawnError::Pipe(source) | SpawnError::Clone(source) | SpawnError::Child { source, .. } => {
                source.kind()
            }
        };
        io::Error::new(kind, e)
    }
}

/// The calls the child makes between clone and exec, as a failure names them. The child stores
/// the failing one for the parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    /// `sigprocmask`: emptying the signal mask.
    Signals,
    /// `setsid`: leading a new session.
    Setsid,
    /// `prctl(PR_SET_PDEATHSIG)`: the parent-death signal.
    Pdeathsig,
    /// `dup2`: stdin, stdout and stderr.
    Dup,
    /// `chdir`: the working directory.
    Chdir,
    /// `execve`: the program.
    Exec,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Signals => "reset the signal mask",
            Stage::Setsid => "setsid",
            Stage::Pdeathsig => "set the parent-death signal",
            Stage::Dup => "redirect stdin, stdout and stderr",
            Stage::Chdir => "change to the sandbox directory",
            Stage::Exec => "exec",
        })
    }
}

/// What to start: the program, its arguments, its whole environment and working directory.
#[derive(Debug, Clone)]
pub struct Spawn {
    /// The program (made absolute against the controller's working directory, since the child
    /// changes directory before `exec`).
    pub program: PathBuf,
    /// Its arguments, without the program name.
    pub args: Vec<OsString>,
    /// The controller's environment with these set (`Some`) or removed (`None`).
    pub env: Vec<(OsString, Option<OsString>)>,
    /// The working directory.
    pub cwd: PathBuf,
}

/// A started child: its pid and the read ends of its stdout and stderr pipes. Its stdin is
/// `/dev/null`. It leads its own session, and gets SIGTERM when the thread that started it ends
/// (`PR_SET_PDEATHSIG`): a controller killed with -9 leaves no agent behind to race a retry.
#[derive(Debug)]
pub struct AgentProcess {
    /// The child's process id (it leads a session of the same id).
    pid: libc::pid_t,
    /// How it ended, once reaped; `None` while it runs (dropping it then kills and reaps it, see
    /// the `Drop` impl).
    status: Option<ExitStatus>,
    /// The read end of the child's stdout.
    pub stdout: Option<OwnedFd>,
    /// The read end of the child's stderr.
    pub stderr: Option<OwnedFd>,
}

impl AgentProcess {
    /// The child's pid (also its session and process group id).
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Reaps the child if it has exited; `None` while it runs.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        let mut raw = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        match unsafe { libc::waitpid(self.pid, &mut raw, libc::WNOHANG) } {
            0 => Ok(None),
            -1 => Err(io::Error::last_os_error()),
            _ => {
                self.status = Some(ExitStatus::from_raw(raw));
                Ok(self.status)
            }
        }
    }

    /// Sends SIGKILL, unless the child was already reaped (its pid may be reused then).
    pub fn kill(&mut self) {
        if self.status.is_none() {
            // An unreaped child keeps its pid: the signal cannot reach another process. Its only
            // failure, ESRCH, cannot happen before the reap.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// A child still running (or ended but unreaped) when it is dropped, as on an early return of the
/// code waiting for it, is killed with its whole session and reaped: no agent, and no action it
/// started, outlives its `AgentProcess`, and no zombie is left. The order is the one
/// `super::stream_and_wait` keeps: SIGKILL, the end seen without reaping (the zombie keeps the
/// session's id from reuse while the session is swept), the sweep, then the reap.
impl Drop for AgentProcess {
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        self.kill();
        let pid = nix::unistd::Pid::from_raw(self.pid);
        let ended = nix::sys::wait::WaitPidFlag::WEXITED | nix::sys::wait::WaitPidFlag::WNOWAIT;
        while let Err(nix::errno::Errno::EINTR) = nix::sys::wait::waitid(nix::sys::wait::Id::Pid(pid), ended) {}
        super::kill_session(self.pid);
        let mut raw = 0;
        // SAFETY: reaping our own child, which has ended; EINTR retries.
        while unsafe { libc::waitpid(self.pid, &mut raw, 0) } == -1 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {}
        self.status = Some(ExitStatus::from_raw(raw));
    }
}

/// Everything the child reads, prepared before the clone; `errno` and `stage` are its only writes.
#[repr(C)]
struct ChildArgs {
    /// The program to exec (a path).
    program: *const libc::c_char,
    /// Its arguments, NULL-terminated.
    argv: *const *const libc::c_char,
    /// Its environment, NULL-terminated.
    envp: *const *const libc::c_char,
    /// The directory it starts in.
    cwd: *const libc::c_char,
    /// The fds that become its stdin, stdout and stderr (each >= 3).
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    /// The controller's pid: the child checks, once its parent-death signal is set, that its
    /// parent is still this process (a controller killed in between would leave it running).
    parent: libc::pid_t,
    /// The errno of the call that failed, for the parent; 0 while none has.
    errno: libc::c_int,
    /// Which call failed, for the parent's error.
    stage: Stage,
}

/// The child's exit status when a call before exec fails (the shell's "not found").
const CHILD_FAILED: libc::c_int = opschain_runner::exit::NOT_FOUND.code();

/// The child, between clone and exec: system calls only (no allocation, no lock, no Rust
/// runtime). Any failure stores errno and the stage for the parent and exits [`CHILD_FAILED`].
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the ChildArgs the parent passed, alive while the parent waits (vfork).
    unsafe {
        let a = &mut *(arg as *mut ChildArgs);
        let fail = |a: &mut ChildArgs, stage: Stage| -> ! {
            a.errno = *libc::__errno_location();
            a.stage = stage;
            libc::_exit(CHILD_FAILED)
        };
        // Handlers are the parent's (copied, not shared: no CLONE_SIGHAND); the new program must
        // start with default ones and an empty mask, as std's Command gives (SIGPIPE included,
        // which the Rust runtime ignores).
        for sig in 1..=libc::SIGRTMAX() {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && (old.sa_sigaction != libc::SIG_DFL) && (sig == libc::SIGPIPE || old.sa_sigaction != libc::SIG_IGN) {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
            fail(a, Stage::Signals);
        }
        if libc::setsid() < 0 {
            fail(a, Stage::Setsid);
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
            fail(a, Stage::Pdeathsig);
        }
        if libc::getppid() != a.parent {
            // The controller died before the signal was set: nobody would end this agent.
            libc::_exit(CHILD_FAILED);
        }
        // The three fds are >= 3 (see `spawn`), so no dup2 can overwrite another's source.
        for (from, to) in [(a.stdin, 0), (a.stdout, 1), (a.stderr, 2)] {
            if libc::dup2(from, to) < 0 {
                fail(a, Stage::Dup);
            }
        }
        if libc::chdir(a.cwd) != 0 {
            fail(a, Stage::Chdir);
        }
        libc::execve(a.program, a.argv, a.envp);
        fail(a, Stage::Exec)
    }
}

/// `s` as a C string for the child, refused when it holds a NUL byte.
fn cstring(s: &OsStr) -> Result<CString, SpawnError> {
    CString::new(s.as_bytes()).map_err(|_| SpawnError::Nul { value: s.to_owned() })
}

/// A new pipe (both ends close-on-exec, both >= 3): (read, write).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    Ok((above_stdio(r)?, above_stdio(w)?))
}

/// `fd` itself when it is >= 3, else a close-on-exec duplicate that is (a controller started
/// with a standard stream closed gets low fds from `pipe2`; the child's `dup2`s must not
/// overwrite a source before using it).
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() >= 3 {
        return Ok(fd);
    }
    let dup = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))?;
    // SAFETY: F_DUPFD_CLOEXEC just returned this new fd, which nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// The child's stack size: it runs a few system call wrappers only (no allocation, no formatting,
/// no recursion), whose frames take a few hundred bytes; 64 KiB leaves two orders of magnitude.
const CHILD_STACK: usize = 64 * 1024;

/// Starts `spec` (see the module documentation): the child leads a new session, gets SIGTERM
/// when the calling thread ends, reads `/dev/null` and writes into two new pipes.
pub fn spawn(spec: &Spawn) -> Result<AgentProcess, SpawnError> {
    let program = std::path::absolute(&spec.program).map_err(|source| SpawnError::Absolute { path: spec.program.clone(), source })?;
    let program_c = cstring(program.as_os_str())?;
    let mut argv_c = vec![program_c.clone()];
    for a in &spec.args {
        argv_c.push(cstring(a)?);
    }
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os().filter(|(k, _)| !spec.env.iter().any(|(name, _)| name == k)).collect();
    env.extend(spec.env.iter().filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v))));
    let mut envp_c = Vec::with_capacity(env.len());
    for (k, v) in &env {
        let mut kv = k.clone();
        kv.push("=");
        kv.push(v);
        envp_c.push(cstring(&kv)?);
    }
    let cwd_c = cstring(spec.cwd.as_os_str())?;
    let argv: Vec<*const libc::c_char> = argv_c.iter().map(|c| c.as_ptr()).chain([std::ptr::null()]).collect();
    let envp: Vec<*const libc::c_char> = envp_c.iter().map(|c| c.as_ptr()).chain([std::ptr::null()]).collect();

    let devnull = std::fs::File::open("/dev/null").and_then(|f| above_stdio(f.into())).map_err(SpawnError::DevNull)?;
    let (out_r, out_w) = pipe().map_err(SpawnError::Pipe)?;
    let (err_r, err_w) = pipe().map_err(SpawnError::Pipe)?;
    let mut args = ChildArgs {
        program: program_c.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: cwd_c.as_ptr(),
        stdin: devnull.as_raw_fd(),
        stdout: out_w.as_raw_fd(),
        stderr: err_w.as_raw_fd(),
        parent: nix::unistd::getpid().as_raw(),
        errno: 0,
        stage: Stage::Exec,
    };
    let mut stack = vec![0u8; CHILD_STACK];
    // The stack grows down from its 16-byte aligned top.
    let top = ((stack.as_mut_ptr() as usize + CHILD_STACK) & !15) as *mut libc::c_void;
    // Block every signal around the clone, so that no handler of the controller runs in the
    // child on the borrowed memory before it has reset them (glibc's posix_spawn does the same).
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
    let mut old = SigSet::empty();
    // Setting the mask of the calling thread with valid sets cannot fail.
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), Some(&mut old));
    // SAFETY: clone with a valid stack, function and argument that outlive the child's use of
    // them (CLONE_VFORK suspends this thread until the child execs or exits).
    let pid = unsafe { libc::clone(child_main, top, libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD, &mut args as *mut ChildArgs as *mut libc::c_void) };
    let clone_error = io::Error::last_os_error();
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    if pid < 0 {
        return Err(SpawnError::Clone(clone_error));
    }
    drop((out_w, err_w, devnull));
    // SAFETY: the child has exec'd or exited: it no longer reads `args`; a volatile read because
    // it wrote the field behind the compiler's back.
    let errno = unsafe { std::ptr::read_volatile(&args.errno) };
    if errno != 0 {
        let mut raw = 0;
        // SAFETY: reaping our own child, which has exited.
        unsafe { libc::waitpid(pid, &mut raw, 0) };
        // SAFETY: as for `errno`; the child stores a valid `Stage` with it.
        let stage = unsafe { std::ptr::read_volatile(&args.stage) };
        return Err(SpawnError::Child { stage, source: io::Error::from_raw_os_error(errno) });
    }
    Ok(AgentProcess { pid, status: None, stdout: Some(out_r), stderr: Some(err_r) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    /// Whether `pid` is gone or a zombie (killed, and reaped or about to be by whoever adopted it).
    fn ended(pid: i32) -> bool {
        !matches!(opschain_runner::procfs::stat(pid), Ok(Some(stat)) if !stat.is_zombie())
    }

    #[test]
    fn dropping_a_running_child_kills_its_session_and_reaps_it() {
        let spec = Spawn { program: "/bin/sh".into(), args: vec!["-c".into(), "sleep 300 & echo $!; exec sleep 300".into()], env: Vec::new(), cwd: std::env::temp_dir() };
        let mut child = spawn(&spec).unwrap();
        let mut line = String::new();
        BufReader::new(std::fs::File::from(child.stdout.take().unwrap())).read_line(&mut line).unwrap();
        let (pid, left_behind) = (child.pid, line.trim().parse::<i32>().unwrap());
        assert!(!ended(pid) && !ended(left_behind));
        drop(child);
        let mut raw = 0;
        // SAFETY: asking about our own (former) child: it is reaped, so there is none.
        assert_eq!(unsafe { libc::waitpid(pid, &mut raw, libc::WNOHANG) }, -1, "the agent was reaped");
        assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::ECHILD));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !ended(left_behind) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(ended(left_behind), "the process left in its session was killed");
    }

    fn sh(script: &str) -> Spawn {
        Spawn { program: "/bin/sh".into(), args: vec!["-c".into(), script.into()], env: Vec::new(), cwd: std::env::temp_dir() }
    }

    fn wait(child: &mut AgentProcess) -> ExitStatus {
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn read_all(fd: Option<OwnedFd>) -> String {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(fd.unwrap()), &mut text).unwrap();
        text
    }

    #[test]
    fn the_child_writes_to_its_pipes_reads_dev_null_and_leads_its_session_in_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = sh("cat; echo \"out $GREETING $(pwd)\"; echo err >&2; exit 3");
        spec.env = vec![("GREETING".into(), Some("hello".into())), ("HOME".into(), None)];
        spec.cwd = dir.path().to_path_buf();
        let mut child = spawn(&spec).unwrap();
        let stat = opschain_runner::procfs::stat(child.pid).unwrap().unwrap();
        assert_eq!(stat.session, child.pid, "its session id is its pid");
        let out = read_all(child.stdout.take());
        let err = read_all(child.stderr.take());
        assert_eq!(out, format!("out hello {}\n", dir.path().canonicalize().unwrap().display()));
        assert_eq!(err, "err\n");
        assert_eq!(wait(&mut child).code(), Some(3));
    }

    #[test]
    fn a_missing_program_fails_at_exec_with_its_errno() {
        let spec = Spawn { program: "/nonexistent/agent".into(), args: Vec::new(), env: Vec::new(), cwd: std::env::temp_dir() };
        let e = spawn(&spec).unwrap_err();
        assert!(matches!(e, SpawnError::Child { stage: Stage::Exec, .. }), "{e:?}");
        assert_eq!(e.errno(), Some(libc::ENOENT));
        assert_eq!(e.to_string(), "cannot exec");
        let io = io::Error::from(e);
        assert_eq!(io.kind(), io::ErrorKind::NotFound);
        assert_eq!(io.to_string(), "cannot exec");
    }

    #[test]
    fn a_missing_directory_fails_at_chdir_before_exec() {
        let mut spec = sh("exit 0");
        spec.cwd = "/nonexistent/sandbox".into();
        let e = spawn(&spec).unwrap_err();
        assert!(matches!(e, SpawnError::Child { stage: Stage::Chdir, .. }), "{e:?}");
        assert_eq!(e.errno(), Some(libc::ENOENT));
        assert_eq!(e.to_string(), "cannot change to the sandbox directory");
    }

    #[test]
    fn a_program_that_is_not_executable_fails_at_exec_with_eacces() {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("agent");
        std::fs::write(&program, "#!/bin/sh\n").unwrap();
        let spec = Spawn { program, args: Vec::new(), env: Vec::new(), cwd: std::env::temp_dir() };
        let e = spawn(&spec).unwrap_err();
        assert!(matches!(e, SpawnError::Child { stage: Stage::Exec, .. }), "{e:?}");
        assert_eq!(e.errno(), Some(libc::EACCES));
    }

    #[test]
    fn a_nul_byte_is_refused_before_any_process_starts() {
        let mut spec = sh("exit 0");
        spec.args.push("a\0b".into());
        let e = spawn(&spec).unwrap_err();
        assert!(matches!(&e, SpawnError::Nul { value } if value == "a\0b"), "{e:?}");
        assert_eq!(e.errno(), None);
        assert_eq!(io::Error::from(e).kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn pipes_are_above_the_standard_streams_and_close_on_exec() {
        let (r, w) = pipe().unwrap();
        for fd in [&r, &w] {
            assert!(fd.as_raw_fd() >= 3);
            let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
            assert_ne!(flags & libc::FD_CLOEXEC, 0);
        }
    }

    #[test]
    fn dropping_a_reaped_child_does_nothing_more() {
        let spec = Spawn { program: "/bin/true".into(), args: Vec::new(), env: Vec::new(), cwd: std::env::temp_dir() };
        let mut child = spawn(&spec).unwrap();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert!(status.success());
        drop(child);
    }
}
