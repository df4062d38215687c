//! Process supervision: runs an action's commands one after another, each as a [`Job`],
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
mod event_loop;
mod spawn;

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use self::event_loop::{Started, Watch};
use self::logq::LogWriter;
pub use self::output::Stamp;
use self::output::{PumpConfig, RecordFormat, Sink, Stream};
use self::signals::Inbox;
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
        let (out_read, out_write) = spawn::output_pipe().map_err(|source| SuperviseError::CreatePipes { label: label(), source })?;
        let (err_read, err_write) = spawn::output_pipe().map_err(|source| SuperviseError::CreatePipes { label: label(), source })?;
        // Orphans that came between jobs (normally none: each job is cleaned up).
        let early = procs::reap(None).map_err(|source| SuperviseError::Wait { label: label(), source })?;

        let pid = spawn::spawn(program, args, job, out_write, err_write).map_err(|source| SuperviseError::Spawn { label: label(), program: program.clone(), source })?;

        let (stop, stopped) = watch::channel(false);
        let progress = Arc::new(AtomicU64::new(0));
        let mut pumps = JoinSet::new();
        for (stream, read, mask) in [(Stream::Stdout, out_read, self.masker.stream()), (Stream::Stderr, err_read, self.masker.stream())] {
            let config = PumpConfig { stream, max_line: self.policy.max_line, idle_flush: self.policy.idle_flush };
            pumps.spawn(output::pump(read, config, mask, sink.clone(), stopped.clone(), Arc::clone(&progress)));
        }

        let mut watch = Watch::new(&self.policy, job, self.me, Started { pid, at: started, orphans_reaped: early.others }, sink, progress);
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
