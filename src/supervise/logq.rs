//! The bounded queue between the job's pipes and the (blocking, possibly slow) log writer.
//!
//! The pipe readers run on the supervisor's async runtime and must never wait on `out`; `out` is a
//! plain `std::io::Write` that may block for as long as whoever reads the log pleases. So `out` is
//! owned by one writer thread, and the two meet in a [`LogQueue`]: the readers append formatted
//! records to a byte buffer under a short lock, the writer swaps the whole buffer out and writes it
//! with the lock released. What happens when the buffer is full is the [`LogBuffer`] policy.
//! The writer thread starts with the first record: a job that prints nothing costs no thread.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use super::LogBuffer;

/// The queue shared by the record producers (pipe readers, supervisor notices) and the writer
/// thread.
#[derive(Debug)]
pub(crate) struct LogQueue {
    /// What to do when `max_bytes` is reached.
    policy: LogBuffer,
    /// The moving state; never held while writing to `out`.
    state: Mutex<QueueState>,
    /// Wakes the writer thread: records queued, or the queue closed.
    queued: Condvar,
    /// Wakes threads waiting for the queue to be written out.
    written: Condvar,
    /// Wakes async producers waiting for room ([`LogBuffer::Backpressure`]).
    room: tokio::sync::Notify,
    /// The writer thread, or the output it is to own until the first record starts it.
    writer: Mutex<Writer>,
    /// True once `writer` left [`Writer::Idle`]: the check each record makes without a lock.
    started: AtomicBool,
    /// The queue itself, for the writer thread to hold.
    this: Weak<LogQueue>,
}

/// The writer thread of a [`LogQueue`], by its stage.
enum Writer {
    /// Not started: no record yet. Holds the output the thread is to own.
    Idle(Box<dyn Write + Send>),
    /// Started; joined when the [`LogWriter`] is dropped.
    Running(JoinHandle<()>),
    /// Joined, given up on, never to start (no output), or failed to start.
    Gone,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Writer::Idle(_) => "Idle",
            Writer::Running(_) => "Running",
            Writer::Gone => "Gone",
        })
    }
}

/// The moving state of a [`LogQueue`], under its lock.
#[derive(Debug, Default)]
struct QueueState {
    /// Formatted records waiting for the writer, back to back.
    /// Invariant: `queued.len() + in_flight <= max_bytes`, except that a record is always admitted
    /// into an empty queue (so one longer than `max_bytes` cannot stall forever), that drop notices
    /// bypass the limit (at most one per run of drops), and that under `Backpressure` a reader may
    /// overshoot by the records of one pipe read.
    queued: Vec<u8>,
    /// How many records `queued` holds.
    queued_records: u64,
    /// Bytes the writer has taken out of `queued` and not finished writing (they are still in
    /// memory, so they count against the bound).
    in_flight: usize,
    /// Records dropped since the last drop notice was queued.
    unreported: u64,
    /// Records dropped over the queue's life: for lack of room, or because `out` failed.
    dropped: u64,
    /// No more records will come: the writer thread ends once `queued` is empty.
    closed: bool,
    /// Writing to `out` failed once; from then on records are counted as dropped, not queued.
    failed: bool,
}

impl QueueState {
    /// Bytes not yet written: queued, or being written.
    fn pending(&self) -> usize {
        self.queued.len() + self.in_flight
    }
}

impl LogQueue {
    /// An empty queue under `policy`, without a writer (records stay queued until taken).
    #[cfg(test)]
    pub(crate) fn new(policy: LogBuffer) -> LogQueue {
        LogQueue::with_writer(policy, Writer::Gone, Weak::new())
    }

    /// An empty queue under `policy` whose writer thread, started by the first record, writes
    /// to `out`.
    fn writing_to(policy: LogBuffer, out: Box<dyn Write + Send>) -> Arc<LogQueue> {
        Arc::new_cyclic(|this| LogQueue::with_writer(policy, Writer::Idle(out), this.clone()))
    }

    /// An empty queue under `policy` with `writer`; `this` is the queue's own `Arc`.
    fn with_writer(policy: LogBuffer, writer: Writer, this: Weak<LogQueue>) -> LogQueue {
        LogQueue {
            policy,
            state: Mutex::new(QueueState::default()),
            queued: Condvar::new(),
            written: Condvar::new(),
            room: tokio::sync::Notify::new(),
            started: AtomicBool::new(!matches!(writer, Writer::Idle(_))),
            writer: Mutex::new(writer),
            this,
        }
    }

    /// Wakes the writer thread for what was just queued, starting it first if this is the first
    /// record. When the thread cannot be started, the log is lost as when `out` fails: what is
    /// queued is counted as dropped, with a warning.
    fn wake_writer(&self) {
        if !self.started.load(Ordering::Acquire) {
            let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
            if let (Writer::Idle(_), Some(queue)) = (&*writer, self.this.upgrade()) {
                let Writer::Idle(out) = std::mem::replace(&mut *writer, Writer::Gone) else { unreachable!("matched just above") };
                let spawned = std::thread::Builder::new().name("supervise-log".into()).spawn(move || write_loop(&queue, out));
                match spawned {
                    Ok(thread) => *writer = Writer::Running(thread),
                    Err(error) => {
                        tracing::warn!(%error, "cannot start the log writer thread; dropping the job output");
                        let mut state = self.lock();
                        state.failed = true;
                        state.dropped += std::mem::take(&mut state.queued_records);
                        state.queued.clear();
                        drop(state);
                        self.written.notify_all();
                        self.room.notify_waiters();
                    }
                }
            }
            self.started.store(true, Ordering::Release);
        }
        self.queued.notify_one();
    }

    /// The state, locked.
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Nothing panics while holding the lock; if something ever did, the state is still a
        // consistent byte buffer and counters, so carry on with it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `records` formatted records, back to back in `batch`, or drops them all (counted)
    /// when the queue is full under [`LogBuffer::DropNewest`]. When records were dropped before
    /// and these fit, the notice `notice(count, buffer)` formats is queued first, so the log shows
    /// where the gap is.
    ///
    /// `batch` is left empty; into an empty queue it is moved rather than copied (the two buffers
    /// trade places).
    pub(crate) fn push(&self, batch: &mut Vec<u8>, records: u64, notice: impl FnOnce(u64, &mut Vec<u8>)) {
        let mut state = self.lock();
        if state.failed {
            state.dropped += records;
            batch.clear();
            return;
        }
        let full = state.pending() > 0 && state.pending() + batch.len() > self.policy.max_bytes();
        if full && matches!(self.policy, LogBuffer::DropNewest { .. }) {
            state.unreported += records;
            state.dropped += records;
            batch.clear();
            return;
        }
        Self::append_drop_notice(&mut state, notice);
        if state.queued.is_empty() {
            std::mem::swap(&mut state.queued, batch);
        } else {
            state.queued.extend_from_slice(batch);
        }
        state.queued_records += records;
        drop(state);
        batch.clear();
        self.wake_writer();
    }

    /// Queues the notice for records dropped and not yet reported, if any, whatever the room: the
    /// end of a job must not hide its gap.
    pub(crate) fn report_drops(&self, notice: impl FnOnce(u64, &mut Vec<u8>)) {
        let mut state = self.lock();
        if !state.failed && Self::append_drop_notice(&mut state, notice) {
            drop(state);
            self.wake_writer();
        }
    }

    /// Queues a record of the supervisor's own (what it did to the job) whatever the room: there
    /// are only a handful per job.
    pub(crate) fn push_notice(&self, record: &[u8]) {
        let mut state = self.lock();
        if state.failed {
            state.dropped += 1;
            return;
        }
        Self::append(&mut state, record);
        drop(state);
        self.wake_writer();
    }

    /// Appends one record, whatever the room.
    fn append(state: &mut QueueState, record: &[u8]) {
        state.queued.extend_from_slice(record);
        state.queued_records += 1;
    }

    /// Appends the notice of the unreported drops, if any; true when it did.
    fn append_drop_notice(state: &mut QueueState, notice: impl FnOnce(u64, &mut Vec<u8>)) -> bool {
        if state.unreported == 0 {
            return false;
        }
        let count = std::mem::take(&mut state.unreported);
        notice(count, &mut state.queued);
        state.queued_records += 1;
        true
    }

    /// Takes what is queued, as the writer would (for tests).
    #[cfg(test)]
    pub(crate) fn take_queued(&self) -> Vec<u8> {
        let mut state = self.lock();
        state.queued_records = 0;
        std::mem::take(&mut state.queued)
    }

    /// Records dropped over the queue's life.
    pub(crate) fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// True when a producer may go on reading: always under `DropNewest`; under `Backpressure`,
    /// when the queue is below its limit.
    pub(crate) fn has_room(&self) -> bool {
        match self.policy {
            LogBuffer::DropNewest { .. } => true,
            LogBuffer::Backpressure { max_bytes } => {
                let state = self.lock();
                state.failed || state.pending() < max_bytes
            }
        }
    }

    /// Waits until [`has_room`](Self::has_room).
    pub(crate) async fn room(&self) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            // Register before checking, so a wake-up between the check and the await is not lost.
            notified.as_mut().enable();
            if self.has_room() {
                return;
            }
            notified.await;
        }
    }

    /// Blocks until everything queued has been written and flushed, or `timeout` passed
    /// (`Duration::MAX`: no limit); true when written.
    pub(crate) fn wait_written(&self, timeout: Duration) -> bool {
        let state = self.lock();
        let state = if timeout == Duration::MAX {
            self.written.wait_while(state, |state| state.pending() > 0).unwrap_or_else(PoisonError::into_inner)
        } else {
            self.written.wait_timeout_while(state, timeout, |state| state.pending() > 0).unwrap_or_else(PoisonError::into_inner).0
        };
        state.pending() == 0
    }

    /// No more records will come: the writer ends once the queue is written.
    fn close(&self) {
        self.lock().closed = true;
        self.queued.notify_one();
    }
}

/// The writer thread and its queue: lives as long as the [`Supervisor`](super::Supervisor), so
/// that a writer stuck on a slow reader delays nothing but the log itself.
#[derive(Debug)]
pub(crate) struct LogWriter {
    /// The queue records go into; it holds the writer thread, started by the first record.
    pub(crate) queue: Arc<LogQueue>,
    /// How long dropping waits for the queue to be written out before leaving the thread behind.
    drain_wait: Duration,
}

impl LogWriter {
    /// A writer on `out`, its thread started by the first record.
    pub(crate) fn start(policy: LogBuffer, drain_wait: Duration, out: Box<dyn Write + Send>) -> LogWriter {
        LogWriter { queue: LogQueue::writing_to(policy, out), drain_wait }
    }
}

impl Drop for LogWriter {
    /// Closes the queue and waits for the writer to write it out: without limit under
    /// [`LogBuffer::Backpressure`] (nothing is lost), at most `drain_wait` under
    /// [`LogBuffer::DropNewest`].
    fn drop(&mut self) {
        self.queue.close();
        let wait = match self.queue.policy {
            LogBuffer::Backpressure { .. } => Duration::MAX,
            LogBuffer::DropNewest { .. } => self.drain_wait,
        };
        if self.queue.wait_written(wait) {
            let mut writer = self.queue.writer.lock().unwrap_or_else(PoisonError::into_inner);
            if let Writer::Running(thread) = std::mem::replace(&mut *writer, Writer::Gone) {
                // The queue is empty and closed: the thread is leaving its loop, with no I/O left.
                let _ = thread.join();
            }
        } else {
            tracing::warn!("the log writer is stuck; leaving the rest of the job output unwritten");
        }
    }
}

/// The writer thread: takes everything queued at once, writes and flushes it, repeats. Flushing
/// after every batch keeps the log live; under load the batches grow, so the flushes stay few.
fn write_loop(queue: &LogQueue, mut out: Box<dyn Write + Send>) {
    let mut batch: Vec<u8> = Vec::new();
    loop {
        let records = {
            let mut state = queue.lock();
            while state.queued.is_empty() && !state.closed {
                state = queue.queued.wait(state).unwrap_or_else(PoisonError::into_inner);
            }
            if state.queued.is_empty() {
                return;
            }
            // Swap rather than copy: the two buffers trade places and keep their capacity.
            std::mem::swap(&mut batch, &mut state.queued);
            state.in_flight = batch.len();
            std::mem::take(&mut state.queued_records)
        };
        let result = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        {
            let mut state = queue.lock();
            state.in_flight = 0;
            if let Err(error) = result {
                if !state.failed {
                    tracing::warn!(%error, "cannot write the job output; dropping the rest");
                }
                state.failed = true;
                state.dropped += records + state.queued_records;
                state.queued.clear();
                state.queued_records = 0;
            }
        }
        queue.written.notify_all();
        queue.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_notice(_: u64, _: &mut Vec<u8>) {}

    #[test]
    fn drop_newest_counts_drops_and_reports_them_before_the_next_record() {
        let queue = LogQueue::new(LogBuffer::DropNewest { max_bytes: 10 });
        queue.push(&mut b"12345678\n".to_vec(), 1, no_notice);
        queue.push(&mut b"abc\n".to_vec(), 1, no_notice);
        queue.push(&mut b"def\n".to_vec(), 1, no_notice);
        assert_eq!(queue.dropped(), 2);
        // Make room as the writer would, then the next record brings the notice with it.
        queue.lock().queued.clear();
        queue.push(&mut b"x\n".to_vec(), 1, |n, buf| buf.extend_from_slice(format!("dropped {n}\n").as_bytes()));
        assert_eq!(queue.lock().queued, b"dropped 2\nx\n");
        assert_eq!(queue.lock().unreported, 0);
    }

    #[test]
    fn a_record_longer_than_the_limit_enters_an_empty_queue() {
        let queue = LogQueue::new(LogBuffer::DropNewest { max_bytes: 4 });
        queue.push(&mut b"0123456789\n".to_vec(), 1, no_notice);
        assert_eq!(queue.dropped(), 0);
        assert_eq!(queue.lock().queued.len(), 11);
    }

    #[test]
    fn backpressure_never_drops_and_reports_no_room_when_full() {
        let queue = LogQueue::new(LogBuffer::Backpressure { max_bytes: 4 });
        assert!(queue.has_room());
        queue.push(&mut b"0123\n".to_vec(), 1, no_notice);
        queue.push(&mut b"4567\n".to_vec(), 1, no_notice);
        assert_eq!(queue.dropped(), 0);
        assert!(!queue.has_room());
    }
}
