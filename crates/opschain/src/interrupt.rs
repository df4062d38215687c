//! SIGINT, SIGTERM and SIGHUP of a controller that runs a change in the foreground (`change
//! create`, `change retry`, `demo`): the change is cancelled as `change cancel` cancels it (its
//! running steps get SIGTERM and their grace, their results are recorded), and ends `cancelled`,
//! rather than the controller dying and leaving the change for the next command to find lost.
//!
//! The handler only stores the signal's number (all a handler may safely do); a watcher thread
//! turns it into the change's cancel flag in the store, which the scheduler polls.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

use super::store::{Store, StoreError};

/// The signals that cancel a foreground change.
pub const SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

/// How often the watcher looks whether a signal came (50 ms).
pub const WATCH: Duration = Duration::from_millis(50);

/// The first of [`SIGNALS`] received since [`install`], as its number; 0 for none.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// Why the handlers could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the handler of {signal}")]
pub struct InterruptError {
    /// The signal.
    signal: Signal,
    /// The cause.
    #[source]
    source: nix::Error,
}

extern "C" fn on_signal(signal: libc::c_int) {
    let _ = RECEIVED.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
}

/// Installs the handler of [`SIGNALS`] for the rest of the process (`SA_RESTART`: system calls
/// they interrupt go on). Processes the controller starts get the default handling back at
/// `exec`, as every handled signal does.
pub fn install() -> Result<(), InterruptError> {
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::SA_RESTART, SigSet::empty());
    for signal in SIGNALS {
        // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }.map_err(|source| InterruptError { signal, source })?;
    }
    Ok(())
}

/// The first of [`SIGNALS`] received since [`install`], if any.
pub fn received() -> Option<Signal> {
    Signal::try_from(RECEIVED.load(Ordering::SeqCst)).ok()
}

/// Runs `run` (which runs change `change_id`) while a watcher asks for the change's cancel in
/// `store` as soon as one of [`SIGNALS`] is received (at once if one came before), and again
/// whenever the flag reads unset until `run` returns (a retry resets it when it starts). Returns
/// what `run` returned, and the signal, if one came. A cancel that cannot be asked for (the store
/// failed) is said on stderr; the change then runs on.
pub fn cancel_on_signal<T>(store: &Store, change_id: i64, run: impl FnOnce() -> T) -> (T, Option<Signal>) {
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                if let Some(signal) = received() {
                    let requested = store.cancel_requested(change_id).and_then(|asked| if asked { Ok(()) } else { store.request_cancel(change_id) });
                    if let Err(e) = requested {
                        eprintln!("opschain: error: {signal} received, but change {change_id} cannot be cancelled: {}", chain(&e));
                        return;
                    }
                }
                std::thread::sleep(WATCH);
            }
        });
        let out = run();
        done.store(true, Ordering::SeqCst);
        (out, received())
    })
}

/// An error and its causes, on one line.
fn chain(e: &StoreError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}
