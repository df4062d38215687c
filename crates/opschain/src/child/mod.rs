//! A child process's output and its end: the controller starts the agent (the process backend)
//! and `docker` commands, streams their stdout and stderr line by line to a [`LogSink`], and waits
//! for them, cancellable and, for a call to the Docker engine, bounded in time ([`Bound`]). One
//! `poll(2)` loop on the calling thread (`stream_and_wait`); the `pipe` module cuts the output into lines.
//!
//! Below both the backends and the image pipeline: it knows nothing of steps or images.

pub mod spawn;

mod pipe;

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use pipe::{OutputPipe, READ_SIZE};

/// Why a child process could not be run or waited for (its own failure is its exit status).
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// The program cannot be started.
    #[error("cannot run {program}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The program was started, but whether it has ended cannot be learnt.
    #[error("cannot wait for {program}")]
    Wait {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The program went past its [`Bound`] and was killed.
    #[error("{what} did not answer within {}s (the limit is {setting})", within.as_secs())]
    NoAnswer {
        /// The command ([`Bound::what`]).
        what: String,
        /// The limit it went past.
        within: Duration,
        /// The setting that sets the limit.
        setting: &'static str,
    },
}

/// Where a child process's output lines go (a backend's agent, a `docker` command).
pub trait LogSink: Sync {
    /// One line of the agent's `stdout` or `stderr` (`stream`), without its line ending.
    fn line(&self, stream: &'static str, line: &str);

    /// One piece of a line too long to keep whole (over 1 MiB): the line goes on in the next
    /// `piece` or `line` of the same stream, or ends with the stream ([`LogSink::end`]). A sink
    /// that masks secrets masks the pieces as one text. By default, a line of its own.
    fn piece(&self, stream: &'static str, piece: &str) {
        self.line(stream, piece);
    }

    /// The end of `stream`: a sink that held back the end of a piece sends it now. By default,
    /// nothing.
    fn end(&self, _stream: &'static str) {}

    /// The lines given so far should be shown now: called after each batch of lines read at
    /// once, so that a sink may buffer within a batch. Does nothing by default.
    fn flush(&self) {}
}

/// How often a running step looks at the cancel flag (50 ms). The agent's exit and its output
/// are seen at once (the wait sleeps in `poll(2)` on its pipes and a pidfd), not at the next look.
pub(crate) const CANCEL_CHECK: std::time::Duration = Duration::from_millis(50);

/// How long the output pipes may stay open after the agent exited before the step's session is
/// swept ([`kill_session`]), and again after the sweep before the controller stops reading them
/// (200 ms). Only a process the agent left behind holds them that long.
pub(crate) const LEFTOVER_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// A pidfd of `pid` (a child of ours not yet reaped, so the pid cannot have been reused), or
/// `None` on a kernel without `pidfd_open` (before Linux 5.3).
fn pidfd_open(pid: u32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: a non-negative result is a new file descriptor that nothing else owns.
    (fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// A started process [`stream_and_wait`] can wait for and stop.
pub(crate) trait Running {
    /// Its pid.
    fn id(&self) -> u32;
    /// Reaps it if it has exited.
    fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>>;
    /// Sends it SIGKILL.
    fn kill(&mut self);
}

impl Running for std::process::Child {
    fn id(&self) -> u32 {
        std::process::Child::id(self)
    }
    fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        std::process::Child::try_wait(self)
    }
    fn kill(&mut self) {
        let _ = std::process::Child::kill(self);
    }
}

impl Running for spawn::AgentProcess {
    fn id(&self) -> u32 {
        spawn::AgentProcess::id(self)
    }
    fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        spawn::AgentProcess::try_wait(self)
    }
    fn kill(&mut self) {
        spawn::AgentProcess::kill(self)
    }
}

/// A time limit on a command the controller waits for (a call to the Docker engine): the command
/// is killed, and the wait fails with [`ChildError::NoAnswer`], when it has printed
/// nothing `first_output` after it started, or has not ended `total` after it started.
#[derive(Debug, Clone)]
pub struct Bound {
    /// The command, as the error names it (`docker image inspect X`).
    pub what: String,
    /// How long it may run without printing anything; `None`: no such limit.
    pub first_output: Option<std::time::Duration>,
    /// How long it may run; `None`: no such limit.
    pub total: Option<std::time::Duration>,
    /// The setting that sets the limit, for the error (`--docker-timeout-secs`).
    pub setting: &'static str,
}

/// Spawns `command` (with `std::process`) with its output piped and runs [`stream_and_wait`] on
/// it without ending its session (the Docker backend's `docker` commands). `program` names the
/// command in errors.
pub(crate) fn run_streamed(
    mut command: std::process::Command,
    program: String,
    sink: &dyn LogSink,
    cancel: &AtomicBool,
    grace: std::time::Duration,
    bound: Option<&Bound>,
) -> Result<std::process::ExitStatus, ChildError> {
    use std::process::Stdio;
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|source| ChildError::Spawn { program: program.clone(), source })?;
    let (stdout, stderr) = (child.stdout.take().map(Into::into), child.stderr.take().map(Into::into));
    stream_and_wait(&mut child, stdout, stderr, program, sink, cancel, grace, false, bound)
}

/// Starts `spec` as a session leader ([`spawn::spawn`]) and runs [`stream_and_wait`] on it,
/// ending its session (the process backend's agent).
pub(crate) fn run_spawned(spec: &spawn::Spawn, sink: &dyn LogSink, cancel: &AtomicBool, grace: std::time::Duration) -> Result<std::process::ExitStatus, ChildError> {
    let program = spec.program.display().to_string();
    let mut child = spawn::spawn(spec).map_err(|e| ChildError::Spawn { program: program.clone(), source: e.into() })?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    stream_and_wait(&mut child, stdout, stderr, program, sink, cancel, grace, true, None)
}

/// Streams a started child's stdout and stderr into `sink` line by line, and waits for it
/// (cancellable: SIGTERM when `cancel` turns true, SIGKILL `grace` later), all from the calling
/// thread: one `poll(2)` loop over the two pipes and a pidfd of the child, so a step costs no
/// extra threads and its end is seen the moment it happens.
///
/// With `end_session` (the process backend, whose agent leads its own session) the child's
/// session is swept with [`kill_session`] when the agent did not end by itself (it was killed by
/// a signal, or the step was cancelled), or when its pipes stay open [`LEFTOVER_WAIT`] after it
/// exited: only a leftover process holds them then. An agent that exited by itself with its pipes
/// closed has ended its action's processes itself (its contract), and the sweep, a walk over
/// every process of the machine, is skipped. Pipes still open [`LEFTOVER_WAIT`] after the sweep
/// (held by a process outside the session) are abandoned with a line saying so, rather than
/// stalling the step forever. `program` names the command in errors. With a `bound`, a command
/// past it is killed and reaped, and the wait fails naming it ([`Bound`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn stream_and_wait(
    child: &mut dyn Running,
    stdout: Option<std::os::fd::OwnedFd>,
    stderr: Option<std::os::fd::OwnedFd>,
    program: String,
    sink: &dyn LogSink,
    cancel: &AtomicBool,
    grace: std::time::Duration,
    end_session: bool,
    bound: Option<&Bound>,
) -> Result<std::process::ExitStatus, ChildError> {
    use std::sync::atomic::Ordering;
    use std::time::Instant;
    let pid = child.id();
    let mut streams = [OutputPipe::new(stdout, "stdout"), OutputPipe::new(stderr, "stderr")];
    let pidfd = pidfd_open(pid);
    let mut buf = vec![0u8; READ_SIZE];
    let mut status: Option<std::process::ExitStatus> = None;
    let mut term_sent: Option<Instant> = None;
    // When the agent was seen to exit, and when the session was swept.
    let mut exited_at: Option<Instant> = None;
    let mut swept_at: Option<Instant> = None;
    let started = Instant::now();
    loop {
        if let (None, Some(bound)) = (status, bound) {
            if let Some(within) = bound.overrun(started, streams.iter().any(|s| s.seen)) {
                kill_and_reap(child);
                sink.flush();
                return Err(ChildError::NoAnswer { what: bound.what.clone(), within, setting: bound.setting });
            }
        }
        if status.is_none() {
            if let Some((s, swept)) = reap_if_ended(child, end_session, cancel, &program)? {
                if swept {
                    swept_at = Some(Instant::now());
                }
                status = Some(s);
                exited_at = Some(Instant::now());
            }
        }
        let open = streams.iter().filter(|s| s.pipe.is_some()).count();
        let mut timeout = CANCEL_CHECK;
        if let (Some(s), Some(exited)) = (status, exited_at) {
            if open == 0 {
                return Ok(s);
            }
            match swept_at {
                Some(swept) if swept.elapsed() >= LEFTOVER_WAIT => {
                    for stream in &mut streams {
                        stream.close(sink);
                    }
                    sink.line("stderr", "opschain: a process left behind by the step holds its output open: stopped reading it");
                    sink.flush();
                    return Ok(s);
                }
                Some(swept) => timeout = LEFTOVER_WAIT - swept.elapsed(),
                None if exited.elapsed() >= LEFTOVER_WAIT => {
                    if end_session {
                        // The agent is reaped by now, but the session's id stays taken while
                        // processes are left in it (Linux frees a pid number only once no process
                        // uses it as pid, group or session id). Only if the session emptied, and
                        // the pids wrapped around to this number within LEFTOVER_WAIT, could the
                        // sweep reach a stranger.
                        kill_session(pid as i32);
                    }
                    swept_at = Some(Instant::now());
                    continue;
                }
                None => timeout = LEFTOVER_WAIT - exited.elapsed(),
            }
        } else if cancel.load(Ordering::SeqCst) {
            stop_cancelled(child, &mut term_sent, grace);
        }
        let exit_fd = pidfd.as_ref().filter(|_| status.is_none());
        if status.is_none() && pidfd.is_none() && streams.iter().all(|s| s.pipe.is_none()) {
            // No pidfd and no pipe to wake us: look again after a while.
            std::thread::sleep(CANCEL_CHECK);
            continue;
        }
        if wait_and_drain(&mut streams, exit_fd, timeout, sink, &mut buf) {
            sink.flush();
        }
    }
}

/// Whether `child` has ended; if so, its session swept first with `end_session` when it did not
/// end by itself (a signal ended it, or `cancel` is set), then reaped: its status and whether the
/// session was swept. Seen ended but not yet reaped, the zombie keeps its pid, the session's id,
/// so the sweep cannot reach another session that reused the number.
fn reap_if_ended(child: &mut dyn Running, end_session: bool, cancel: &AtomicBool, program: &str) -> Result<Option<(std::process::ExitStatus, bool)>, ChildError> {
    let wait_err = |source| ChildError::Wait { program: program.to_string(), source };
    let pid = child.id();
    let Some(signalled) = ended_unreaped(pid).map_err(wait_err)? else { return Ok(None) };
    let sweep = end_session && (signalled || cancel.load(std::sync::atomic::Ordering::SeqCst));
    if sweep {
        kill_session(pid as i32);
    }
    let status = child.try_wait().map_err(wait_err)?.ok_or_else(|| wait_err(std::io::Error::other("the process ended but could not be reaped")))?;
    Ok(Some((status, sweep)))
}

impl Bound {
    /// The limit a command started at `started` is past, if any: its total time, or, while it
    /// has printed nothing (`printed` false), its time to a first output.
    fn overrun(&self, started: std::time::Instant, printed: bool) -> Option<Duration> {
        let past = |limit: Option<Duration>| limit.filter(|l| started.elapsed() >= *l);
        past(self.total).or_else(|| past(self.first_output.filter(|_| !printed)))
    }
}

/// Kills `child` and reaps it (SIGKILL ends it at once; waited for up to 5 s), so that no
/// zombie is left.
fn kill_and_reap(child: &mut dyn Running) {
    child.kill();
    let reaping = std::time::Instant::now();
    while matches!(child.try_wait(), Ok(None)) && reaping.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One look at a cancelled `child`: SIGTERM the first time (`term_sent` then records when), and
/// once `grace` has passed since, SIGKILL to it and its session.
fn stop_cancelled(child: &mut dyn Running, term_sent: &mut Option<std::time::Instant>, grace: Duration) {
    let pid = child.id();
    match term_sent {
        None => {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
            *term_sent = Some(std::time::Instant::now());
        }
        Some(at) if at.elapsed() > grace => {
            child.kill();
            kill_session(pid as i32);
        }
        Some(_) => {}
    }
}

/// Sleeps in `poll(2)` until a pipe of `streams` has something, `exit_fd` (the child's pidfd,
/// while it runs) is readable, or `timeout` passes, then drains each ready pipe into `sink`.
/// Whether anything was ready (EINTR and a timeout: nothing).
fn wait_and_drain(streams: &mut [OutputPipe], exit_fd: Option<&std::os::fd::OwnedFd>, timeout: Duration, sink: &dyn LogSink, buf: &mut [u8]) -> bool {
    use std::os::fd::AsRawFd;
    let mut fds: Vec<libc::pollfd> = streams.iter().filter_map(|s| s.pipe.as_ref()).map(|p| libc::pollfd { fd: p.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
    if let Some(p) = exit_fd {
        fds.push(libc::pollfd { fd: p.as_raw_fd(), events: libc::POLLIN, revents: 0 });
    }
    // SAFETY: a valid array of pollfds of fds we own; EINTR and timeouts just loop.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout.as_millis().max(1) as libc::c_int) };
    if ready <= 0 {
        return false;
    }
    for pfd in &fds {
        if pfd.revents == 0 {
            continue;
        }
        if let Some(stream) = streams.iter_mut().find(|s| s.pipe.as_ref().is_some_and(|p| p.as_raw_fd() == pfd.fd)) {
            stream.drain(sink, buf);
        }
    }
    true
}

/// Whether the child `pid` has ended, without reaping it (`waitid` with `WNOWAIT`): `None` while it
/// runs, else whether a signal ended it.
fn ended_unreaped(pid: u32) -> std::io::Result<Option<bool>> {
    use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    loop {
        return match waitid(Id::Pid(nix::unistd::Pid::from_raw(pid as i32)), flags) {
            Ok(WaitStatus::Exited(..)) => Ok(Some(false)),
            Ok(WaitStatus::Signaled(..)) => Ok(Some(true)),
            Ok(_) => Ok(None),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => Err(e.into()),
        };
    }
}

/// Sends SIGKILL to every process of session `sid` (the agent is started as a session leader, so
/// this reaches the action and whatever it left behind, which would otherwise hold the log pipes
/// open). Does nothing when no process is in that session.
pub(crate) fn kill_session(sid: i32) {
    let Ok(pids) = opschain_runner::procfs::pids() else { return };
    for pid in pids.flatten() {
        if matches!(opschain_runner::procfs::stat(pid), Ok(Some(stat)) if stat.session == sid) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// The exit status of a process, 128+N for signal N.
pub(crate) fn status_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}
