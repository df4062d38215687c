//! Process supervision (issue 3): runs an action's commands one after another, each as a [`Job`],
//! and sees each one through to the end of its last descendant.
//!
//! The agent is often PID 1 of a container that `docker stop`, Kubernetes or a controller's cancel
//! will signal. A [`Supervisor`] lives for the whole agent run and, for every job:
//!
//! * **reaps** every process that ends below it. As PID 1 orphans come to us anyway; otherwise we
//!   make ourselves a child subreaper (`PR_SET_CHILD_SUBREAPER`) so that they do.
//! * runs the job in **its own process group**, forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1
//!   and SIGUSR2 to that group, and treats SIGTERM as **cancellation**: no further job starts.
//! * **ends it in stages** on cancellation or timeout: SIGTERM (and SIGCONT, for stopped processes)
//!   to the group and to every descendant outside it, then, after [`SupervisePolicy::grace`],
//!   SIGKILL to the group and to every descendant left, then waits (at most
//!   [`SupervisePolicy::reap_wait`]) until none remains. The same stages clean up what a job that
//!   ended normally left running, so nothing outlives it.
//! * **streams** the job's stdout and stderr live to the log, masked, line by line, stamped, with
//!   bounded memory and without losing a line: a slow log reader makes the job wait (unless asked
//!   to drop instead, see [`LogBuffer`]); once the job's processes are gone its pipes are read to
//!   their end.
//!
//! # Reaping: all of it ourselves, no `tokio::process`
//!
//! tokio's process support reaps its own children, and a blanket `waitpid(-1)` beside it steals
//! their statuses (ECHILD). We need the blanket reaper (orphans re-parented to us have no owner),
//! so the job is started with `std::process::Command` (which never waits on its own), and one loop
//! reaps every child with `waitpid(-1, WNOHANG)` on each SIGCHLD, recognising the job by its pid.
//! The alternative, `tokio::process` plus `waitid(WNOWAIT)` peeks to skip tokio's children, would
//! race with tokio's own reaper for nothing. Consequence: while [`Supervisor::run`] runs, every
//! child of this process is the supervisor's; the caller must not have children of its own then
//! (none it has not waited for at any time).
//!
//! # Signals
//!
//! Our handlers set a bit per signal and wake the event loop through a pipe (see
//! `supervise/signals.rs` for why not tokio's signal streams). Signals that come between jobs are
//! discarded, except that SIGTERM cancels the run whenever it comes. The handlers stay installed
//! for the life of the process: once the [`Supervisor`] is dropped, the signals it caught are
//! ignored, so drop it only on the way out.
//!
//! # Output
//!
//! Each job stream is a pipe read by its own task on the supervisor's single-threaded tokio
//! runtime (musl's allocator is slow under threads): bytes go through the job stream's
//! [`MaskStream`](crate::mask::MaskStream) first, then are cut into lines and formatted (see
//! [`LineFormat`]), then queued for the one thread that writes to `out`. Records of the two streams
//! are queued in the order the reads completed.

mod logq;
mod output;
mod procs;
mod signals;

use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::net::unix::pipe;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

use self::logq::LogWriter;
pub use self::output::Stamp;
use self::output::{PumpConfig, RecordFormat, Sink, Stream};
use self::procs::{Descendant, Ended, Reaped};
use self::signals::{Inbox, Taken, FORWARDED};
use crate::mask::Masker;

/// How often the supervisor looks at the process table while it waits for a job's descendants to
/// be gone (only after the job's main process ended: descendants that are not our children end
/// without telling us).
const POLL: Duration = Duration::from_millis(20);

/// How jobs are supervised: configuration, set once for the agent run. The moving state of a job
/// is in [`Supervisor::run`].
#[derive(Debug, Clone)]
pub struct SupervisePolicy {
    /// How long a job (and, after it, what it left running) has between SIGTERM and SIGKILL.
    /// Default 10 s, like `docker stop`.
    pub grace: Duration,
    /// The timeout of a job that has none of its own ([`Job::timeout`]). Default `None`: no limit.
    pub default_timeout: Option<Duration>,
    /// How long to wait, after SIGKILL (or after a clean end), for the last descendants to be gone
    /// and the job's pipes to close. What is still alive then (a process in uninterruptible sleep)
    /// is counted in [`Outcome::survivors`] and left behind, and what its pipes hold at that
    /// moment is logged. Once no descendant is left, the pipes are read to their end however long
    /// that takes, as long as they keep giving output (or wait for the log writer); only a pipe
    /// idle this long with no process of the job left (something outside the job holds it) is
    /// abandoned. Default 5 s.
    pub reap_wait: Duration,
    /// How long output may be held back: the masker's carry (the tail that may be the start of a
    /// secret) is released once a stream has been silent this long, and a partial line (no newline
    /// yet) once its first byte is this old. Output is never held longer while the job runs. A
    /// secret written in two pieces further apart than this is not caught. Default 50 ms.
    pub idle_flush: Duration,
    /// The longest log record, in bytes of the job's output: a longer line is cut into records of
    /// at most this many bytes (never inside a UTF-8 sequence), each after the first marked as a
    /// continuation. Bounds the memory of a line without newline. Default 64 KiB; 0 is taken as 1.
    pub max_line: usize,
    /// How much formatted output may wait for `out`, and what happens when that is full.
    /// Default [`LogBuffer::Backpressure`] with 4 MiB: nothing is lost.
    pub log_buffer: LogBuffer,
    /// How long [`Supervisor::run`] waits, at the end of a job, for its output to be written to
    /// `out`. A writer stuck longer does not keep the run waiting; what it has not written yet is
    /// written later, before the next job's output. Dropping the [`Supervisor`] waits this long
    /// for the rest under [`LogBuffer::DropNewest`], and until everything is written under
    /// [`LogBuffer::Backpressure`] (nothing is lost). Default 5 s.
    pub drain_wait: Duration,
    /// How each record looks. Default [`LineFormat::Text`].
    pub format: LineFormat,
}

impl Default for SupervisePolicy {
    fn default() -> SupervisePolicy {
        SupervisePolicy {
            grace: Duration::from_secs(10),
            default_timeout: None,
            reap_wait: Duration::from_secs(5),
            idle_flush: Duration::from_millis(50),
            max_line: 64 * 1024,
            log_buffer: LogBuffer::default(),
            drain_wait: Duration::from_secs(5),
            format: LineFormat::Text,
        }
    }
}

/// The bound on output waiting for `out`, and what happens when it is reached.
///
/// The bytes counted are those of formatted records. Memory for the queue is at most about twice
/// `max_bytes` (records waiting plus the batch being written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogBuffer {
    /// When `max_bytes` are waiting, stop reading the job's pipes until the writer catches up:
    /// nothing is lost, but once the pipes' own buffers are full too, the job blocks on its
    /// writes (as Docker's default `blocking` log mode does). Once the job's processes are all
    /// gone, every pipe is still read to its end, however long the writer takes. The default,
    /// with 4 MiB.
    Backpressure {
        /// The bound, in bytes of formatted records (overshot by at most what one read of a pipe
        /// formats into).
        max_bytes: usize,
    },
    /// When `max_bytes` are waiting, drop further records and count them; once there is room
    /// again, a `runner` record says how many were dropped there. The job never waits for the
    /// log. Only on request (`step --log-mode non-blocking`): it loses output.
    DropNewest {
        /// The bound, in bytes of formatted records.
        max_bytes: usize,
    },
}

impl LogBuffer {
    /// The byte bound of either policy.
    pub fn max_bytes(&self) -> usize {
        match *self {
            LogBuffer::DropNewest { max_bytes } | LogBuffer::Backpressure { max_bytes } => max_bytes,
        }
    }
}

impl Default for LogBuffer {
    fn default() -> LogBuffer {
        LogBuffer::Backpressure { max_bytes: 4 * 1024 * 1024 }
    }
}

/// How each record of a job's output is written to `out`: one record per line of `out`.
///
/// A record is one line of the job's output (without its newline), or a piece of one: a line
/// longer than [`SupervisePolicy::max_line`] is cut, and a partial line is released after
/// [`SupervisePolicy::idle_flush`]; the pieces after the first are continuations. Besides `stdout`
/// and `stderr`, the stream `runner` carries the supervisor's own notices (timeout, signals sent,
/// records dropped).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LineFormat {
    /// `2026-11-23T10:00:00.123456Z <label> <stream><sep> <text>`: the time the record's first
    /// byte was read (RFC 3339, UTC, microseconds), the job's label (whitespace written as `_`),
    /// the stream, then `|` for a record that starts a line or `+` for a continuation, one space,
    /// and the text as the job wrote it (masked). `grep ' stdout[|+] '` finds a stream. The
    /// default.
    #[default]
    Text,
    /// One JSON object per record:
    /// `{"ts":"2026-11-23T10:00:00.123456Z","action":"<label>","stream":"stdout","cont":false,"line":"<text>"}`;
    /// `cont` is true for a continuation; bytes that are not UTF-8 become U+FFFD.
    Json,
}

/// One command to run: an action's prerequisite, or the action itself.
///
/// It starts in a process group of its own, with its standard input on `/dev/null` and its
/// standard output and error on pipes to the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// What the job is, for the log (the action name).
    pub label: String,
    /// The program and its arguments, e.g. `["/bin/sh", "-c", RUN]`. A program without a `/` is
    /// looked up in the `PATH` of [`env`](Self::env).
    pub argv: Vec<OsString>,
    /// The working directory.
    pub cwd: PathBuf,
    /// The complete environment: the job sees these variables and no others (of a name given
    /// twice, the last value). Shared, not owned: an action's jobs all run with the same one,
    /// and copying its ~60 variables for each cost more than starting the job.
    pub env: Arc<[(OsString, OsString)]>,
    /// How long the job may run; `None` takes [`SupervisePolicy::default_timeout`].
    pub timeout: Option<Duration>,
}

/// Why a job ended, as the `runner` section of `step_result.json` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Its main process exited by itself; [`Outcome::code`] says how.
    Exited,
    /// A signal ended its main process (one it got from elsewhere or forwarded by us).
    Signalled,
    /// Its timeout ran out; we ended it.
    TimedOut,
    /// The agent was told to stop (SIGTERM) and ended it; or the job never started because the
    /// agent had been told to stop before.
    Cancelled,
}

/// How a job ended, and what its supervision saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Why it ended. When both happen, the first of timeout and cancellation wins.
    pub reason: Reason,
    /// Its main process's exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that killed its main process, when one did (whoever sent it).
    pub signal: Option<i32>,
    /// What the agent exits with for this job: 124 when timed out; 128+N when cancelled by signal
    /// N; otherwise the exit code, or 128+N when signal N killed it.
    pub exit_status: i32,
    /// From start to the last descendant gone (or given up on).
    pub duration: Duration,
    /// Processes reaped other than the job's main process: orphans re-parented to us, whether they
    /// ended by themselves or were killed as leftovers.
    pub orphans_reaped: u64,
    /// Records of the job's output dropped because the log writer fell behind
    /// ([`LogBuffer::DropNewest`]) or failed.
    pub lines_dropped: u64,
    /// Descendants still alive when [`SupervisePolicy::reap_wait`] ran out (normally 0).
    pub survivors: u64,
}

impl Outcome {
    /// True when the job exited by itself with code 0.
    pub fn succeeded(&self) -> bool {
        self.reason == Reason::Exited && self.exit_status == 0
    }

    /// The outcome of a job not started because the run was already cancelled by `signal`.
    fn not_started(signal: i32) -> Outcome {
        Outcome {
            reason: Reason::Cancelled,
            code: None,
            signal: None,
            exit_status: 128 + signal,
            duration: Duration::ZERO,
            orphans_reaped: 0,
            lines_dropped: 0,
            survivors: 0,
        }
    }
}

/// What went wrong supervising; each variant names the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// Building the single-threaded tokio runtime failed.
    #[error("cannot build the supervisor's async runtime")]
    Runtime(#[source] io::Error),
    /// Installing the handler of a signal we catch failed.
    #[error("cannot install a handler for {signal}")]
    SignalSetup {
        /// The signal.
        signal: Signal,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Creating or reading the pipe through which our signal handlers wake the supervisor failed.
    #[error("cannot use the pipe through which signal handlers wake the supervisor")]
    SignalPipe(#[source] io::Error),
    /// Unblocking the signals we catch in the supervising thread failed.
    #[error("cannot unblock the signals the supervisor catches")]
    UnblockSignals(#[source] Errno),
    /// `prctl(PR_SET_CHILD_SUBREAPER)` failed, so orphans would escape us.
    #[error("cannot become a child subreaper (PR_SET_CHILD_SUBREAPER)")]
    Subreaper(#[source] Errno),
    /// Reading the process table in `/proc` failed (is `/proc` mounted?).
    #[error("cannot list the processes in /proc")]
    ListProcesses(#[source] io::Error),
    /// The job has an empty argv.
    #[error("action {label}: no command to run (empty argv)")]
    EmptyCommand {
        /// The job's label.
        label: String,
    },
    /// Creating the pipes for the job's output failed.
    #[error("action {label}: cannot create the pipes for its output")]
    CreatePipes {
        /// The job's label.
        label: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Starting the job's program failed (not found, not executable, bad working directory...).
    #[error("action {label}: cannot start {program:?}")]
    Spawn {
        /// The job's label.
        label: String,
        /// The program, `argv[0]`.
        program: OsString,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `waitpid` failed other than with "no child".
    #[error("action {label}: cannot wait for its processes")]
    Wait {
        /// The job's label.
        label: String,
        /// Why.
        #[source]
        source: Errno,
    },
    /// Reading one of the job's output pipes failed.
    #[error("action {label}: cannot read its output")]
    ReadOutput {
        /// The job's label.
        label: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A task reading the job's output panicked.
    #[error("action {label}: the task reading its output failed")]
    OutputTask {
        /// The job's label.
        label: String,
        /// Why.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// Runs jobs one after another and supervises each: see the [module documentation](self).
///
/// Create one for the agent run: it installs signal handlers that stay for the life of the
/// process, makes the process a child subreaper, and owns the thread that writes the log.
pub struct Supervisor {
    /// The configuration.
    policy: SupervisePolicy,
    /// Masks every job's output; one [`MaskStream`](crate::mask::MaskStream) per job stream.
    masker: Masker,
    /// The signals caught, and cancellation (set by the SIGTERM handler itself, so that it is
    /// true at once, between jobs too). Declared before `runtime` so that its pipe, registered
    /// with the runtime, is dropped first.
    inbox: Inbox,
    /// Single-threaded: runs the pipe readers and the supervision loop of the current job.
    runtime: tokio::runtime::Runtime,
    /// Writes the log to `out`; dropping it waits (at most `drain_wait`) for the log to be written.
    log: LogWriter,
    /// This process: the root of the process tree we watch.
    me: Pid,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor").field("policy", &self.policy).field("cancelled", &self.cancelled()).field("me", &self.me).finish_non_exhaustive()
    }
}

impl Supervisor {
    /// Sets up supervision for the agent run: the async runtime, the signal handlers, child
    /// subreaping (unless we are PID 1, which reaps orphans anyway), and the thread writing the
    /// log of every job to `out`. Checks that `/proc` can be read, so that a missing `/proc` stops
    /// the agent before any job runs.
    pub fn new(policy: SupervisePolicy, masker: Masker, out: Box<dyn std::io::Write + Send>) -> Result<Supervisor, SuperviseError> {
        let me = nix::unistd::getpid();
        if me.as_raw() != 1 {
            nix::sys::prctl::set_child_subreaper(true).map_err(SuperviseError::Subreaper)?;
        }
        procs::check_readable(me).map_err(SuperviseError::ListProcesses)?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build().map_err(SuperviseError::Runtime)?;
        let inbox = {
            let _runtime = runtime.enter();
            Inbox::install()?
        };
        let log = LogWriter::start(policy.log_buffer, policy.drain_wait, out);
        Ok(Supervisor { policy, masker, inbox, runtime, log, me })
    }

    /// The signal that cancelled the run (SIGTERM), if one came, during a job or between jobs.
    /// The caller then starts no further job; [`run`](Self::run) would not start it anyway.
    pub fn cancelled(&self) -> Option<i32> {
        self.inbox.cancelled()
    }

    /// Runs `job` and blocks until it and all its descendants are gone (or given up on after
    /// [`SupervisePolicy::reap_wait`]) and its output is written (or
    /// [`SupervisePolicy::drain_wait`] passed).
    ///
    /// When the run was cancelled before, returns a [`Reason::Cancelled`] outcome without starting
    /// the job. An error means the job could not be started (nothing was left running), or its
    /// supervision broke down: then SIGKILL went to its group and to every descendant still
    /// found, without waiting for them.
    pub fn run(&mut self, job: &Job) -> Result<Outcome, SuperviseError> {
        // Signals that came since the last job have no job to go to; a SIGTERM among them is
        // still in `cancelled`, and any later one will be taken by the event loop.
        self.inbox.discard().map_err(SuperviseError::SignalPipe)?;
        if let Some(signal) = self.cancelled() {
            return Ok(Outcome::not_started(signal));
        }
        let started = Instant::now();
        let dropped_before = self.log.queue.dropped();
        let label = || job.label.clone();
        let Some((program, args)) = job.argv.split_first() else {
            return Err(SuperviseError::EmptyCommand { label: label() });
        };
        let format = RecordFormat::new(self.policy.format, &job.label);
        let sink = Sink::new(Arc::clone(&self.log.queue), format);

        // Everything fallible is set up before the job starts, so that an error never leaves it
        // running unsupervised.
        let _runtime = self.runtime.enter();
        let (out_read, out_write) = output_pipe().map_err(|source| SuperviseError::CreatePipes { label: label(), source })?;
        let (err_read, err_write) = output_pipe().map_err(|source| SuperviseError::CreatePipes { label: label(), source })?;
        // Orphans that came between jobs (normally none: each job is cleaned up).
        let early = procs::reap(None).map_err(|source| SuperviseError::Wait { label: label(), source })?;

        let pid = spawn(program, args, job, out_write, err_write).map_err(|source| SuperviseError::Spawn { label: label(), program: program.clone(), source })?;

        let (stop, stopped) = watch::channel(false);
        let progress = Arc::new(AtomicU64::new(0));
        let mut pumps = JoinSet::new();
        for (stream, read, mask) in [(Stream::Stdout, out_read, self.masker.stream()), (Stream::Stderr, err_read, self.masker.stream())] {
            let config = PumpConfig { stream, max_line: self.policy.max_line, idle_flush: self.policy.idle_flush };
            pumps.spawn(output::pump(read, config, mask, sink.clone(), stopped.clone(), Arc::clone(&progress)));
        }

        let timeout = job.timeout.or(self.policy.default_timeout);
        let mut watch = Watch {
            policy: &self.policy,
            label: &job.label,
            me: self.me,
            job: pid,
            timeout: timeout.unwrap_or_default(),
            phase: Phase::Running { timeout_at: timeout.map(|timeout| started + timeout) },
            ended: None,
            cause: None,
            orphans_reaped: early.others,
            childless: false,
            survivors: 0,
            notices: sink,
            failure: None,
            progress,
            progress_seen: 0,
        };
        let result = self.runtime.block_on(watch.supervise(&mut self.inbox, &mut pumps, &stop));
        if result.is_err() {
            // Supervision broke down: leave nothing running that we can still reach.
            watch.signal_job(Signal::SIGKILL, &procs::descendants(self.me).unwrap_or_default());
        }
        watch.notices.report_drops();
        self.log.queue.wait_written(self.policy.drain_wait);
        result?;
        if let Some(failure) = watch.failure {
            return Err(failure);
        }

        Ok(watch.outcome(started.elapsed(), self.log.queue.dropped() - dropped_before))
    }
}

/// Starts `program` with `args` in `job`'s directory and environment, in a process group of its
/// own, its stdout and stderr on the write ends given (closed here, once the child has its copies,
/// so that the pipes end when the job's processes are gone). Returns its pid; it is reaped by
/// [`procs::reap`], never through std's handle.
fn spawn(program: &OsString, args: &[OsString], job: &Job, stdout: OwnedFd, stderr: OwnedFd) -> io::Result<Pid> {
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
/// them all): a tenth of an empty step's instructions for the ~60 variables of an action. Here
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
    // each (a set cost 30 K instructions).
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
/// it names a path (has a `/`) or no directory holds it, and then starting it fails as before.
///
/// Found here rather than by the child because std starts a child with `posix_spawn` (a vfork:
/// no copy of the agent's page tables, no error pipe to wait on, 0.2 ms less a step) only when
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
            // changing directory; leave the whole search to it (execvp), as before.
            return program.clone();
        }
        let executable = std::fs::metadata(&candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        if executable && nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok() {
            return candidate.into_os_string();
        }
    }
    program.clone()
}

/// A pipe for one of the job's output streams, of [`output::PIPE_SIZE`] bytes where the system
/// allows: our read end (non-blocking, registered with the runtime) and the job's write end
/// (blocking, as programs expect of their stdout). Both are close-on-exec, so no other process we
/// start inherits them.
fn output_pipe() -> io::Result<(pipe::Receiver, OwnedFd)> {
    use std::os::fd::AsRawFd as _;
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    // A larger buffer where allowed; the default one otherwise (see `PIPE_SIZE`).
    // SAFETY: F_SETPIPE_SZ on a pipe we own takes an int and changes nothing else.
    unsafe { libc::fcntl(read.as_raw_fd(), libc::F_SETPIPE_SZ, output::PIPE_SIZE as libc::c_int) };
    // Our end only is non-blocking (the flag is the open file's, and the job's end is another).
    // Set here, so that tokio need not check what we just made (a pipe, open for reading).
    nix::fcntl::fcntl(read.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    Ok((pipe::Receiver::from_owned_fd_unchecked(read)?, write))
}

/// Why we ended a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// Its timeout ran out.
    TimedOut,
    /// The agent got this signal.
    Cancelled(Signal),
}

/// Where a job's supervision stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The main process runs; `timeout_at` ends it.
    Running {
        /// When the timeout runs out, if there is one.
        timeout_at: Option<Instant>,
    },
    /// SIGTERM went out (to the job, or to what it left behind); what remains at `kill_at` gets
    /// SIGKILL.
    Terminating {
        /// The end of the grace period.
        kill_at: Instant,
    },
    /// The main process ended and SIGKILL went out, or nothing was left to kill: wait for the last
    /// descendants and the pipes' end until `give_up_at`; anything found meanwhile gets SIGKILL.
    Draining {
        /// When to stop waiting.
        give_up_at: Instant,
    },
}

/// The moving state of one job's supervision.
struct Watch<'a> {
    /// The configuration.
    policy: &'a SupervisePolicy,
    /// The job's label, for errors.
    label: &'a str,
    /// This process.
    me: Pid,
    /// The job's main process; also its process group id.
    job: Pid,
    /// The job's timeout, for the notice when it runs out.
    timeout: Duration,
    /// Where supervision stands.
    phase: Phase,
    /// How the main process ended, once reaped.
    ended: Option<Ended>,
    /// Why we ended the job, if we did; the first cause stays.
    cause: Option<Cause>,
    /// Processes reaped other than the main one.
    orphans_reaped: u64,
    /// The last reaping found no child left (see [`Reaped::childless`]): nothing is below us,
    /// nor can anything come before the next job starts, so [`descendants`](Self::descendants)
    /// need not walk `/proc`. The common end of a job costs no walk at all.
    childless: bool,
    /// Descendants alive when we gave up waiting.
    survivors: u64,
    /// For the supervisor's notices in the log.
    notices: Sink,
    /// The first failure of an output reader; reported after supervision completed.
    failure: Option<SuperviseError>,
    /// Bytes read from the job's pipes so far (the pumps add to it).
    progress: Arc<AtomicU64>,
    /// `progress` when the supervisor last considered giving up on the pipes.
    progress_seen: u64,
}

impl Watch<'_> {
    /// The event loop of one job: until the main process is reaped, no descendant is left and both
    /// pipes are at their end, or `reap_wait` gave out.
    async fn supervise(&mut self, inbox: &mut Inbox, pumps: &mut JoinSet<io::Result<()>>, stop: &watch::Sender<bool>) -> Result<(), SuperviseError> {
        loop {
            if self.ended.is_some() && pumps.is_empty() && self.descendants()?.is_empty() {
                return Ok(());
            }
            let wake_at = match self.phase {
                Phase::Running { timeout_at } => timeout_at,
                Phase::Terminating { kill_at: until } | Phase::Draining { give_up_at: until } => Some(until.min(Instant::now() + POLL)),
            };
            tokio::select! {
                biased;
                taken = inbox.next() => {
                    self.on_signals(taken.map_err(SuperviseError::SignalPipe)?)?;
                }
                Some(done) = pumps.join_next(), if !pumps.is_empty() => self.on_pump_done(done),
                () = sleep_until(wake_at.unwrap_or_else(Instant::now)), if wake_at.is_some() => {
                    if self.on_tick()? {
                        break;
                    }
                }
            }
        }
        // Gave up: the pipes may still be held by what survived; take what they have and stop.
        let _ = stop.send(true);
        while let Some(done) = pumps.join_next().await {
            self.on_pump_done(done);
        }
        Ok(())
    }

    /// How the job ended, once supervision is over.
    fn outcome(&self, duration: Duration, lines_dropped: u64) -> Outcome {
        let (code, signal) = match self.ended {
            Some(Ended::Exited(code)) => (Some(code), None),
            Some(Ended::Signalled(signal)) => (None, Some(signal)),
            None => (None, None),
        };
        let (reason, exit_status) = match (self.cause, code, signal) {
            (Some(Cause::TimedOut), ..) => (Reason::TimedOut, 124),
            (Some(Cause::Cancelled(by)), ..) => (Reason::Cancelled, 128 + by as i32),
            (None, Some(code), _) => (Reason::Exited, code),
            (None, None, Some(signal)) => (Reason::Signalled, 128 + signal),
            // The main process was never reaped: that happens only after SIGKILL and reap_wait,
            // which need a cause; were there none, report it as killed.
            (None, None, None) => (Reason::Signalled, 128 + Signal::SIGKILL as i32),
        };
        Outcome { reason, code, signal, exit_status, duration, orphans_reaped: self.orphans_reaped, lines_dropped, survivors: self.survivors }
    }

    /// Signals that came: reap first (the main process may be among the ended), then cancel or
    /// forward.
    fn on_signals(&mut self, taken: Taken) -> Result<(), SuperviseError> {
        if taken.contains(Signal::SIGCHLD) {
            self.reap()?;
        }
        if taken.contains(Signal::SIGTERM) {
            self.on_sigterm()?;
        }
        let forwarded: Vec<Signal> = FORWARDED.into_iter().filter(|signal| taken.contains(*signal)).collect();
        if !forwarded.is_empty() {
            // While the main process is unreaped its group is reached whole; after, by pid.
            let left = if self.ended.is_some() { self.descendants()? } else { Vec::new() };
            for signal in forwarded {
                self.signal_job(signal, &left);
            }
        }
        Ok(())
    }

    /// Sends `signal` to the job: to its process group, and by pid to each of `left` (processes
    /// below us) outside the group.
    ///
    /// The group is signalled by its id, the main process's pid, only while the main process is
    /// unreaped: until then that pid is ours (a zombie keeps it). Once it is reaped the number is
    /// free, and could name another process group anywhere on the host; every one of `left` is then
    /// signalled by pid instead. Those are safe: each is below us, and one that ends stays a zombie
    /// until its parent reaps it (we do, in this thread, for the orphans).
    fn signal_job(&self, signal: Signal, left: &[Descendant]) {
        let group_reachable = self.ended.is_none();
        if group_reachable {
            procs::signal_group(self.job, signal);
        }
        for process in left.iter().filter(|process| !group_reachable || process.pgid != self.job) {
            procs::signal_process(process.pid, signal);
        }
    }

    /// Every process below us, now.
    fn descendants(&self) -> Result<Vec<Descendant>, SuperviseError> {
        if self.childless {
            return Ok(Vec::new());
        }
        procs::descendants(self.me).map_err(SuperviseError::ListProcesses)
    }

    /// Reaps; when the main process is among the reaped and we had not started ending
    /// the job, end what it left behind.
    fn reap(&mut self) -> Result<(), SuperviseError> {
        let Reaped { watched, others, childless } = procs::reap(Some(self.job)).map_err(|source| SuperviseError::Wait { label: self.label.to_string(), source })?;
        self.orphans_reaped += others;
        self.childless = childless;
        if let Some(ended) = watched {
            self.ended = Some(ended);
            if let Phase::Running { .. } = self.phase {
                let left = self.descendants()?;
                if left.is_empty() {
                    self.phase = Phase::Draining { give_up_at: Instant::now() + self.policy.reap_wait };
                } else {
                    self.notices.notice(&format!("the job ended and left {} processes running: SIGTERM to them", left.len()));
                    self.terminate(&left);
                }
            }
        }
        Ok(())
    }

    /// SIGTERM to the agent: cancels the job if it still runs, else just forwards.
    fn on_sigterm(&mut self) -> Result<(), SuperviseError> {
        if let Phase::Running { .. } = self.phase {
            self.cause = Some(Cause::Cancelled(Signal::SIGTERM));
            self.notices.notice("cancelled (SIGTERM): SIGTERM to the job");
            let left = self.descendants()?;
            self.terminate(&left);
        } else {
            let left = if self.ended.is_some() { self.descendants()? } else { Vec::new() };
            self.signal_job(Signal::SIGTERM, &left);
        }
        Ok(())
    }

    /// Sends SIGTERM to the job's group and to each of `left` outside it (each process gets it
    /// once), then SIGCONT the same way, so that a stopped process gets to handle its SIGTERM
    /// within the grace period (as systemd does); and starts the grace period.
    fn terminate(&mut self, left: &[Descendant]) {
        for signal in [Signal::SIGTERM, Signal::SIGCONT] {
            self.signal_job(signal, left);
        }
        self.phase = Phase::Terminating { kill_at: Instant::now() + self.policy.grace };
    }

    /// Sends SIGKILL to the job's group and to every descendant.
    fn kill_all(&self) -> Result<usize, SuperviseError> {
        // The group first (while it can be reached: see `signal_job`), then every descendant by
        // pid, in the group or not.
        self.signal_job(Signal::SIGKILL, &[]);
        let left = self.descendants()?;
        for process in &left {
            procs::signal_process(process.pid, Signal::SIGKILL);
        }
        Ok(left.len())
    }

    /// The timer: the timeout, the end of the grace period, the polling while draining. True when
    /// it is time to give up waiting.
    fn on_tick(&mut self) -> Result<bool, SuperviseError> {
        let now = Instant::now();
        match self.phase {
            Phase::Running { timeout_at: Some(at) } if now >= at => {
                self.cause = Some(Cause::TimedOut);
                self.notices.notice(&format!("timed out after {:?}: SIGTERM to the job", self.timeout));
                let left = self.descendants()?;
                self.terminate(&left);
            }
            Phase::Running { .. } => {}
            Phase::Terminating { kill_at } if now >= kill_at => {
                let killed = self.kill_all()?;
                self.notices.notice(&format!("grace period of {:?} over: SIGKILL to the job's group and {killed} processes", self.policy.grace));
                self.phase = Phase::Draining { give_up_at: now + self.policy.reap_wait };
            }
            Phase::Terminating { .. } => {}
            Phase::Draining { give_up_at } => {
                if now >= give_up_at {
                    self.survivors = self.descendants()?.len() as u64;
                    let read = self.progress.load(AtomicOrdering::Relaxed);
                    let moving = read != std::mem::replace(&mut self.progress_seen, read);
                    if self.survivors == 0 && (moving || !self.notices.has_room()) {
                        // The job's processes are gone and its pipes are still being emptied
                        // (or wait for the log writer): they end once read, so keep reading.
                        // Only a pipe that stays idle this long is held by something else.
                        self.phase = Phase::Draining { give_up_at: now + self.policy.reap_wait };
                        return Ok(false);
                    }
                    if self.survivors > 0 {
                        self.notices.notice(&format!("{} processes still alive {:?} after SIGKILL: leaving them", self.survivors, self.policy.reap_wait));
                    }
                    return Ok(true);
                }
                // Stragglers forked while we were killing.
                self.kill_all()?;
            }
        }
        Ok(false)
    }

    /// A pump ended; keeps its failure, if any, for after supervision.
    fn on_pump_done(&mut self, done: Result<io::Result<()>, tokio::task::JoinError>) {
        let failure = match done {
            Ok(Ok(())) => return,
            Ok(Err(source)) => SuperviseError::ReadOutput { label: self.label.to_string(), source },
            Err(source) => SuperviseError::OutputTask { label: self.label.to_string(), source },
        };
        self.failure.get_or_insert(failure);
    }
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
