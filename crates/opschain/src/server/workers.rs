//! The server's change workers. A change created through the API is `pending` until a worker
//! takes it; a dispatcher thread takes the waiting changes oldest first, at most one per
//! environment and [`Workers::max_running`] at once, each run to its end on its own thread by the
//! synchronous scheduler ([`change::run_started`]); a change whose environment is held by a
//! change this server does not run (a local `opschain change run` on the same store) is `queued`
//! until it is free.
//!
//! When the server starts, a change recorded `running` under a controller that is gone (this
//! server before a restart, killed) is recorded as interrupted: its unfinished steps and the
//! change `cancelled`, an `change.interrupted` event with the reason, and its sandboxes (which
//! hold step contexts with secrets) removed; it can be retried. Changes still `pending` or
//! `queued` are simply taken again.
//!
//! On shutdown ([`Workers::shutdown`]) the dispatcher takes no more changes, running ones go on
//! for a grace period, and are then cancelled as `change cancel` does.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::change::{self, ControllerConfig};
use crate::liveness::ChangeLock;
use crate::status::ChangeStatus;
use crate::store::{Lost, NewEvent, Start, Store, StoreError};

/// How often the dispatcher looks for waiting changes when nobody wakes it (a change queued behind
/// another controller's, or created by another process on the same store).
pub const DISPATCH_POLL: Duration = Duration::from_millis(500);

/// Why the workers cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WorkersError {
    /// Recording the interrupted changes failed.
    #[error("cannot record the changes interrupted by the last stop")]
    Recover(#[source] StoreError),
    /// The dispatcher thread cannot be started.
    #[error("cannot start the change dispatcher thread")]
    Thread(#[source] std::io::Error),
}

/// The moving state of the workers.
#[derive(Default)]
struct Board {
    /// The changes running, with their environment.
    running: HashMap<i64, i64>,
    /// Set by [`Workers::shutdown`]: take no more changes.
    stopping: bool,
    /// The threads of the running changes (joined at shutdown).
    threads: Vec<JoinHandle<()>>,
    /// The locks of the changes this server runs or will run (its queue): held from a change's
    /// creation (or retry) to its recorded end, so that no other command takes a waiting change
    /// of a live server for one whose controller is gone.
    locks: HashMap<i64, ChangeLock>,
}

/// Runs the server's changes (see the module documentation).
pub struct Workers {
    store: Arc<Store>,
    config: Arc<ControllerConfig>,
    max_running: usize,
    pid: i64,
    board: Mutex<Board>,
    /// Wakes the dispatcher (new work, a change ended, shutdown) and [`Workers::shutdown`].
    wake: Condvar,
    dispatcher: Mutex<Option<JoinHandle<()>>>,
}

impl Workers {
    /// Records the changes the last stop interrupted, then starts the dispatcher.
    pub fn start(store: Arc<Store>, config: Arc<ControllerConfig>, max_running: usize) -> Result<Arc<Workers>, WorkersError> {
        let pid = i64::from(std::process::id());
        let mut board = Board::default();
        recover(&store, &config, &mut board).map_err(WorkersError::Recover)?;
        let workers =
            Arc::new(Workers { store, config, max_running: max_running.max(1), pid, board: Mutex::new(board), wake: Condvar::new(), dispatcher: Mutex::new(None) });
        let dispatching = Arc::clone(&workers);
        let thread = std::thread::Builder::new().name("opschain-dispatch".into()).spawn(move || dispatching.dispatch()).map_err(WorkersError::Thread)?;
        *workers.dispatcher.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread);
        Ok(workers)
    }

    /// How many changes run at once at most.
    pub fn max_running(&self) -> usize {
        self.max_running
    }

    /// The board, locked.
    fn board(&self) -> MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells the dispatcher there may be work (a change created or reset for retry).
    pub fn wake(&self) {
        let _board = self.board();
        self.wake.notify_all();
    }

    /// Keeps the lock of a change this server is to run (created or reset for retry through the
    /// API) until the change's end is recorded.
    pub fn adopt(&self, lock: ChangeLock) {
        self.board().locks.insert(lock.change_id(), lock);
    }

    /// The ids of the changes running now.
    pub fn running(&self) -> Vec<i64> {
        self.board().running.keys().copied().collect()
    }

    /// Cancels a change: a running one is asked to stop (its scheduler cancels its steps); one
    /// waiting for a worker is cancelled at once. Returns its status after the request.
    pub fn cancel(&self, change_id: i64) -> Result<ChangeStatus, StoreError> {
        // Under the board's lock: the dispatcher cannot start the change between the look and
        // the cancel.
        let board = self.board();
        let status = self.store.change(change_id)?.status;
        if status.is_final() {
            return Ok(status);
        }
        if board.running.contains_key(&change_id) {
            self.store.request_cancel(change_id)?;
            return Ok(ChangeStatus::Running);
        }
        if matches!(status, ChangeStatus::Pending | ChangeStatus::Queued) {
            self.store.cancel_orphaned(change_id)?;
            return Ok(ChangeStatus::Cancelled);
        }
        // Running under another controller (a local `change run` on the same store): it sees
        // the request; one that is gone is cancelled here.
        drop(board);
        change::cancel(&self.store, &self.config.state_dir, change_id).map_err(|e| match e {
            change::ChangeError::Store(e) => e,
            other => StoreError::NotFound(other.to_string()),
        })
    }

    /// The dispatcher's loop: starts waiting changes until shutdown.
    fn dispatch(self: Arc<Self>) {
        loop {
            let waiting = match self.store.waiting_changes() {
                Ok(waiting) => waiting,
                Err(e) => {
                    eprintln!("opschain server: error: cannot list the waiting changes: {}", super::jsonapi::error_chain(&e));
                    Vec::new()
                }
            };
            let mut board = self.board();
            if board.stopping {
                return;
            }
            for (change_id, environment) in waiting {
                if board.running.len() >= self.max_running {
                    break;
                }
                if board.running.contains_key(&change_id) || board.running.values().any(|&e| e == environment) {
                    continue;
                }
                // A waiting change is this server's when it holds its lock, or can take it (its
                // controller is gone); one another live controller holds is left to it.
                if let std::collections::hash_map::Entry::Vacant(entry) = board.locks.entry(change_id) {
                    match self.store.lock_change(change_id) {
                        Ok(Some(lock)) => {
                            entry.insert(lock);
                        }
                        Ok(None) => continue,
                        Err(e) => {
                            eprintln!("opschain server: error: cannot take the lock of change {change_id}: {}", super::jsonapi::error_chain(&e));
                            continue;
                        }
                    }
                }
                match self.try_start(change_id) {
                    Ok(true) => {
                        board.running.insert(change_id, environment);
                        match self.spawn_worker(change_id) {
                            Ok(thread) => board.threads.push(thread),
                            Err(e) => {
                                board.running.remove(&change_id);
                                eprintln!("opschain server: error: cannot start a worker for change {change_id}: {e}");
                                let _ = self.store.set_change_status(change_id, ChangeStatus::Pending);
                            }
                        }
                    }
                    Ok(false) => {
                        // Ended without running (cancelled before it started): its lock goes.
                        if self.store.change(change_id).is_ok_and(|c| c.status.is_final()) {
                            board.locks.remove(&change_id);
                        }
                    }
                    Err(e) => eprintln!("opschain server: error: cannot start change {change_id}: {}", super::jsonapi::error_chain(&e)),
                }
            }
            board.threads.retain(|t| !t.is_finished());
            drop(self.wake.wait_timeout(board, DISPATCH_POLL).unwrap_or_else(|e| e.into_inner()));
        }
    }

    /// Starts a waiting change unless another controller holds its environment (then it is
    /// `queued`); true when started. Called with the board locked.
    fn try_start(&self, change_id: i64) -> Result<bool, StoreError> {
        // Cancelled (or started) since it was listed: not to be started.
        let status = self.store.change(change_id)?.status;
        if !matches!(status, ChangeStatus::Pending | ChangeStatus::Queued) {
            return Ok(false);
        }
        match self.store.try_start_change(change_id, self.pid)? {
            Start::Started => Ok(true),
            Start::Blocked(_) if status == ChangeStatus::Pending => self.store.set_change_status(change_id, ChangeStatus::Queued).map(|()| false),
            Start::Blocked(_) | Start::Cancelled => Ok(false),
        }
    }

    /// Runs a started change to its end on a thread of its own.
    fn spawn_worker(self: &Arc<Self>, change_id: i64) -> std::io::Result<JoinHandle<()>> {
        let workers = Arc::clone(self);
        std::thread::Builder::new().name(format!("opschain-change-{change_id}")).spawn(move || {
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| change::run_started(&workers.store, &workers.config, change_id)));
            let failure = match outcome {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(super::jsonapi::error_chain(&e)),
                Err(_) => Some("its worker panicked".to_string()),
            };
            if let Some(why) = failure {
                eprintln!("opschain server: error: change {change_id} failed: {why}");
                // A change that could not run to its end is not left `running`.
                if workers.store.change(change_id).is_ok_and(|c| !c.status.is_final()) {
                    let _ = workers.store.cancel_orphaned(change_id);
                    let _ = workers.store.set_change_status(change_id, ChangeStatus::Error);
                }
            }
            let mut board = workers.board();
            board.running.remove(&change_id);
            board.locks.remove(&change_id);
            workers.wake.notify_all();
        })
    }

    /// Stops: no more changes are taken; running ones have `grace` to end, then are cancelled
    /// and waited for.
    pub fn shutdown(&self, grace: Duration) {
        let mut board = self.board();
        board.stopping = true;
        self.wake.notify_all();
        let deadline = Instant::now() + grace;
        while !board.running.is_empty() && Instant::now() < deadline {
            board = self.wake.wait_timeout(board, deadline.saturating_duration_since(Instant::now())).unwrap_or_else(|e| e.into_inner()).0;
        }
        for &change_id in board.running.keys() {
            eprintln!("opschain server: cancelling change {change_id}: the server is stopping");
            let _ = self.store.request_cancel(change_id);
        }
        while !board.running.is_empty() {
            board = self.wake.wait(board).unwrap_or_else(|e| e.into_inner());
        }
        let threads = std::mem::take(&mut board.threads);
        drop(board);
        for thread in threads {
            let _ = thread.join();
        }
        if let Some(dispatcher) = self.dispatcher.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = dispatcher.join();
        }
    }
}

/// Records the end of the changes left running by a controller that is gone (a killed server,
/// a local `change run`), with the reason, and removes their sandboxes (they hold step contexts
/// with secrets); the waiting changes no live controller holds are taken as this server's and
/// run again. A change whose lock a live process holds is its controller's and is left alone.
fn recover(store: &Store, config: &ControllerConfig, board: &mut Board) -> Result<(), StoreError> {
    for change in store.changes(None)?.into_iter().filter(|c| !c.status.is_final()) {
        let Some(lock) = store.lock_change(change.id)? else { continue };
        if matches!(change.status, ChangeStatus::Pending | ChangeStatus::Queued) {
            board.locks.insert(change.id, lock);
            continue;
        }
        if let Lost::Recorded(status) = store.record_lost(&lock)? {
            let reason = crate::store::LOST_REASON;
            eprintln!("opschain server: change {} was interrupted: {reason}; recorded {} (retry it to run the rest)", change.id, status.as_str());
            let _ = std::fs::remove_dir_all(config.state_dir.join("sandboxes").join(format!("change-{}", change.id)));
            let target = format!("change/{}", change.id);
            store.record_event(&NewEvent { username: None, kind: "change.interrupted", target: Some(&target), detail: json!({"reason": reason}) })?;
        }
    }
    Ok(())
}
