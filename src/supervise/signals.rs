//! The signals the agent catches: which came, and a wake-up for the event loop.
//!
//! Our handler does two async-signal-safe things: set the signal's bit in an atomic mask, then
//! write one byte to a non-blocking pipe that the event loop reads. The bit is the truth, the byte
//! only a wake-up, and the bit is set first, so a wake-up never comes before its signal is
//! visible. A mask we own has a property that tokio's signal streams lack: signals that came
//! between two jobs can be discarded before the next job starts (tokio would deliver a signal that
//! arrived while no runtime ran to the first stream polled afterwards, even one created later), so
//! a stray SIGHUP is not forwarded to a job that never saw its cause.
//!
//! The handler is installed with `sigaction` by hand rather than through `signal-hook-registry`:
//! the registry copies its whole table on every registration and removal (a large share of an
//! empty step's cost: BENCHMARKS.md, "design figures"), to offer chaining with other handlers of the same signals, and the
//! agent has none. Its state is therefore the process's, in statics: one [`Inbox`] at a time (as
//! one [`Supervisor`](super::Supervisor) at a time reaps this process's children), each new one
//! starting from a clean slate. The wake-up pipe is created once and never closed, so a handler
//! that runs while an inbox is dropped never writes into a descriptor closed (or reused) under it.

use std::io;
use std::os::fd::{AsFd as _, IntoRawFd as _, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::OnceLock;

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

/// Bit `1 << N` is set when signal N came and the current inbox has not taken it yet.
static PENDING: AtomicU64 = AtomicU64::new(0);
/// The signal that cancelled the current inbox's run (SIGTERM), or 0; reset by each new inbox.
static CANCELLED: AtomicI32 = AtomicI32::new(0);
/// The write end of the wake-up pipe (non-blocking: a full pipe already means "wake up"), or -1
/// before the first inbox. Never closed once set.
static WAKE: AtomicI32 = AtomicI32::new(-1);
/// The read end of the wake-up pipe, kept open for the life of the process; each inbox reads a
/// duplicate of it. Set, with `WAKE` and the handlers, by the first inbox.
static WOKEN: OnceLock<Result<OwnedFd, nix::Error>> = OnceLock::new();

/// The handler of every caught signal: async-signal-safe (atomics and `write(2)`, no allocation,
/// no lock), and it keeps `errno` as it found it for the code it interrupted.
extern "C" fn on_signal(signal: libc::c_int) {
    // SAFETY: `__errno_location` returns this thread's errno, valid for the thread's life.
    let errno = unsafe { *libc::__errno_location() };
    PENDING.fetch_or(1 << signal, Ordering::SeqCst);
    if signal == libc::SIGTERM {
        CANCELLED.store(signal, Ordering::SeqCst);
    }
    let wake = WAKE.load(Ordering::SeqCst);
    if wake >= 0 {
        // Full pipe (EAGAIN) or anything else: a wake-up is already pending or moot.
        // SAFETY: `wake` is the pipe's write end, never closed; the buffer is one valid byte.
        unsafe { libc::write(wake, [0u8].as_ptr().cast(), 1) };
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Creates the wake-up pipe and installs the handler of every caught signal, once for the process.
fn install_handlers() -> Result<&'static OwnedFd, SuperviseError> {
    let woken = WOKEN.get_or_init(|| {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        WAKE.store(write.into_raw_fd(), Ordering::SeqCst);
        Ok(read)
    });
    let woken = woken.as_ref().map_err(|errno| SuperviseError::SignalPipe((*errno).into()))?;
    static INSTALLED: OnceLock<Result<(), (Signal, nix::Error)>> = OnceLock::new();
    let installed = INSTALLED.get_or_init(|| {
        for signal in caught() {
            // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler is
            // an `extern "C" fn(c_int)` that is async-signal-safe (see `on_signal`).
            let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            // SAFETY: `action` is fully initialised; no old action is asked for.
            if unsafe { libc::sigaction(signal as libc::c_int, &action, std::ptr::null_mut()) } != 0 {
                return Err((signal, nix::Error::last()));
            }
        }
        Ok(())
    });
    (*installed).map_err(|(signal, errno)| SuperviseError::SignalSetup { signal, source: errno.into() })?;
    Ok(woken)
}

/// The caught signals of one [`Supervisor`](super::Supervisor): the handlers, installed by the
/// first inbox of the process, stay for its life; once the last inbox is dropped, the signals
/// they catch are ignored.
#[derive(Debug)]
pub(crate) struct Inbox {
    /// A duplicate of the wake-up pipe's read end, registered with the supervisor's runtime.
    woken: pipe::Receiver,
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
    /// Installs the handlers of every caught signal (the first time in the process), forgets the
    /// signals and the cancellation of any earlier inbox, and unblocks the caught signals in the
    /// calling thread, in case the agent inherited them blocked. Must be called within the
    /// supervisor's runtime (the pipe registers with it).
    pub(crate) fn install() -> Result<Inbox, SuperviseError> {
        let woken = install_handlers()?;
        let read = woken.as_fd().try_clone_to_owned().map_err(SuperviseError::SignalPipe)?;
        // Unchecked: the duplicate of a pipe we made non-blocking and for reading.
        let mut inbox = Inbox { woken: pipe::Receiver::from_owned_fd_unchecked(read).map_err(SuperviseError::SignalPipe)? };
        inbox.drain_wake_ups().map_err(SuperviseError::SignalPipe)?;
        PENDING.store(0, Ordering::SeqCst);
        CANCELLED.store(0, Ordering::SeqCst);
        let mut unblock = SigSet::empty();
        for signal in caught() {
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
        Taken(PENDING.swap(0, Ordering::SeqCst))
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
                Ok(0) => return Ok(()), // cannot happen while the write end is open (always)
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The signal that cancelled the run, if one came.
    pub(crate) fn cancelled(&self) -> Option<i32> {
        match CANCELLED.load(Ordering::SeqCst) {
            0 => None,
            signal => Some(signal),
        }
    }
}
