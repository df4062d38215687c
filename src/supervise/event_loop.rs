//! The event loop of one job's supervision: signals, reaping, the timeout and the staged end
//! (SIGTERM, grace, SIGKILL, drain), until the job's last process is gone and its pipes are read.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

use super::output::Sink;
use super::procs::{self, Descendant, Ended, Reaped};
use super::signals::{Inbox, Taken, FORWARDED};
use super::{Job, Outcome, Reason, SuperviseError, SupervisePolicy, POLL};

/// Why we ended a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cause {
    /// Its timeout ran out.
    TimedOut,
    /// The agent got this signal.
    Cancelled(Signal),
}

/// Where a job's supervision stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
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
pub(super) struct Watch<'a> {
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
    pub(super) notices: Sink,
    /// The first failure of an output reader; reported after supervision completed.
    pub(super) failure: Option<SuperviseError>,
    /// Bytes read from the job's pipes so far (the pumps add to it).
    progress: Arc<AtomicU64>,
    /// `progress` when the supervisor last considered giving up on the pipes.
    progress_seen: u64,
}

/// A job just started, as its supervision begins.
pub(super) struct Started {
    /// Its main process; also its process group id.
    pub(super) pid: Pid,
    /// When it started.
    pub(super) at: Instant,
    /// Orphans reaped just before it started.
    pub(super) orphans_reaped: u64,
}

impl<'a> Watch<'a> {
    /// The supervision of `job`, just `started`, in the `Running` phase (its timeout: the job's,
    /// else the policy's default); `me` is this process, and `notices` and `progress` are shared
    /// with the job's output pumps.
    pub(super) fn new(policy: &'a SupervisePolicy, job: &'a Job, me: Pid, started: Started, notices: Sink, progress: Arc<AtomicU64>) -> Watch<'a> {
        let timeout = job.timeout.or(policy.default_timeout);
        Watch {
            policy,
            label: &job.label,
            me,
            job: started.pid,
            timeout: timeout.unwrap_or_default(),
            phase: Phase::Running { timeout_at: timeout.map(|timeout| started.at + timeout) },
            ended: None,
            cause: None,
            orphans_reaped: started.orphans_reaped,
            childless: false,
            survivors: 0,
            notices,
            failure: None,
            progress,
            progress_seen: 0,
        }
    }
}

impl Watch<'_> {
    /// The event loop of one job: until the main process is reaped, no descendant is left and both
    /// pipes are at their end, or `reap_wait` gave out.
    pub(super) async fn supervise(&mut self, inbox: &mut Inbox, pumps: &mut JoinSet<io::Result<()>>, stop: &watch::Sender<bool>) -> Result<(), SuperviseError> {
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
    pub(super) fn outcome(&self, duration: Duration, lines_dropped: u64) -> Outcome {
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
    pub(super) fn signal_job(&self, signal: Signal, left: &[Descendant]) {
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
