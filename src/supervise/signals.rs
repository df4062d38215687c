//! The signals the agent catches: which came, and a wake-up for the event loop.
//!
//! Our handlers (registered through `signal-hook-registry`, which chains them with any other) do
//! two async-signal-safe things: set the signal's bit in an atomic mask, then write one byte to a
//! non-blocking pipe that the event loop reads. The bit is the truth, the byte only a wake-up, and
//! the bit is set first, so a wake-up never comes before its signal is visible. A mask we own has
//! a property that tokio's signal streams lack: signals that came between two jobs can be
//! discarded before the next job starts (tokio would deliver a signal that arrived while no
//! runtime ran to the first stream polled afterwards, even one created later), so a stray SIGHUP
//! is not forwarded to a job that never saw its cause.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;

use nix::fcntl::OFlag;
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
use tokio::net::unix::pipe;

use super::SuperviseError;

/// The signals forwarded to the job's process group, apart from SIGTERM (forwarded too, and also
/// the cancellation signal).
pub(crate) const FORWARDED: [Signal; 5] = [Signal::SIGINT, Signal::SIGHUP, Signal::SIGQUIT, Signal::SIGUSR1, Signal::SIGUSR2];

/// Every signal we catch: the forwarded ones, SIGTERM, and SIGCHLD (a child ended).
fn caught() -> impl Iterator<Item = Signal> {
    FORWARDED.into_iter().chain([Signal::SIGTERM, Signal::SIGCHLD])
}

/// What the handlers write into; shared between them and the [`Inbox`].
#[derive(Debug)]
struct Shared {
    /// Bit `1 << N` is set when signal N came and the event loop has not taken it yet.
    pending: AtomicU64,
    /// The signal that cancelled the run (SIGTERM), or 0. Never reset.
    cancelled: AtomicI32,
    /// The write end of the wake-up pipe (non-blocking: a full pipe already means "wake up").
    wake: OwnedFd,
}

/// The caught signals of one [`Supervisor`](super::Supervisor): handlers installed on creation,
/// removed on drop.
#[derive(Debug)]
pub(crate) struct Inbox {
    /// What the handlers write into.
    shared: Arc<Shared>,
    /// The read end of the wake-up pipe, registered with the supervisor's runtime.
    woken: pipe::Receiver,
    /// The handler registrations, to remove on drop.
    handlers: Vec<signal_hook_registry::SigId>,
}

/// A set of signals taken from the inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Taken(u64);

impl Taken {
    /// True when `signal` is in the set.
    pub(crate) fn contains(self, signal: Signal) -> bool {
        self.0 & bit(signal) != 0
    }
}

/// The bit of `signal` in the mask (every caught signal is below 32).
fn bit(signal: Signal) -> u64 {
    1 << (signal as i32)
}

impl Inbox {
    /// Installs the handlers of every caught signal (they stay installed while the inbox lives)
    /// and unblocks those signals in the calling thread, in case the agent inherited them blocked.
    /// Must be called within the supervisor's runtime (the pipe registers with it).
    pub(crate) fn install() -> Result<Inbox, SuperviseError> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(|errno| SuperviseError::SignalPipe(errno.into()))?;
        let woken = pipe::Receiver::from_owned_fd(read).map_err(SuperviseError::SignalPipe)?;
        let shared = Arc::new(Shared { pending: AtomicU64::new(0), cancelled: AtomicI32::new(0), wake: write });
        let mut inbox = Inbox { shared, woken, handlers: Vec::new() };
        let mut unblock = SigSet::empty();
        for signal in caught() {
            let shared = Arc::clone(&inbox.shared);
            let action = move || {
                shared.pending.fetch_or(bit(signal), Ordering::SeqCst);
                if signal == Signal::SIGTERM {
                    shared.cancelled.store(signal as i32, Ordering::SeqCst);
                }
                // Full pipe (EAGAIN) or anything else: a wake-up is already pending or moot.
                let _ = nix::unistd::write(&shared.wake, &[0]);
            };
            // SAFETY: the action runs in signal-handler context and does only async-signal-safe
            // things: atomic operations and write(2); it neither allocates nor locks (the Arc is
            // only read, and is dropped with the registration, outside the handler).
            let id = unsafe { signal_hook_registry::register(signal as i32, action) }.map_err(|source| SuperviseError::SignalSetup { signal, source })?;
            // Dropping `inbox` on a later failure unregisters what was registered so far.
            inbox.handlers.push(id);
            unblock.add(signal);
        }
        pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&unblock), None).map_err(SuperviseError::UnblockSignals)?;
        Ok(inbox)
    }

    /// Waits until a signal came (or may have: a wake-up can be stale), then takes the signals
    /// that came since the last take.
    pub(crate) async fn next(&mut self) -> io::Result<Taken> {
        self.woken.readable().await?;
        self.drain_wake_ups()?;
        Ok(self.take())
    }

    /// Takes the signals that came since the last take, without waiting; clears them.
    pub(crate) fn take(&self) -> Taken {
        Taken(self.shared.pending.swap(0, Ordering::SeqCst))
    }

    /// Forgets the signals that came since the last take, and their wake-ups: they came between
    /// jobs, so there is no job to forward them to. Cancellation is not forgotten.
    pub(crate) fn discard(&mut self) -> io::Result<()> {
        self.drain_wake_ups()?;
        self.take();
        Ok(())
    }

    /// Reads every pending wake-up byte, so that the pipe reads as empty again.
    fn drain_wake_ups(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 64];
        loop {
            match self.woken.try_read(&mut buf) {
                Ok(0) => return Ok(()), // cannot happen while we hold the write end
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The signal that cancelled the run, if one came.
    pub(crate) fn cancelled(&self) -> Option<i32> {
        match self.shared.cancelled.load(Ordering::SeqCst) {
            0 => None,
            signal => Some(signal),
        }
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        for id in self.handlers.drain(..) {
            signal_hook_registry::unregister(id);
        }
    }
}
