//! The group-commit writer thread (see the store's documentation): it owns the writing
//! connection, takes every write queued since its last commit, runs each in its own savepoint of
//! one transaction, commits once, and only then answers each write's caller.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rusqlite::Connection;

use super::StoreError;

/// The writer thread and its queue. Dropping it closes the queue and waits for the thread to
/// commit what is queued (log lines nobody waited for).
pub(super) struct Writer {
    /// The queue; `None` once closed.
    queue: Option<Sender<Write>>,
    /// Counts the groups committed, for those who follow the store as it grows (the server's log
    /// streams): a receiver wakes after each commit.
    commits: Arc<tokio::sync::watch::Sender<u64>>,
    /// The thread; `None` once joined.
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer thread (`opschain-store`) on the writing connection `conn`.
    pub(super) fn start(conn: Connection) -> std::io::Result<Writer> {
        let (queue, writes) = mpsc::channel();
        let commits = Arc::new(tokio::sync::watch::Sender::new(0));
        let counted = Arc::clone(&commits);
        let thread = std::thread::Builder::new().name("opschain-store".into()).spawn(move || write_groups(conn, writes, &counted))?;
        Ok(Writer { queue: Some(queue), commits, thread: Some(thread) })
    }

    /// Queues `write`; fails when the thread is gone.
    /// A receiver that wakes after each committed group.
    pub(super) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.commits.subscribe()
    }

    pub(super) fn send(&self, write: Write) -> Result<(), StoreError> {
        self.queue.as_ref().ok_or(StoreError::WriterGone)?.send(write).map_err(|_| StoreError::WriterGone)
    }

    /// Queues `f` and waits until the group it joined has committed: returns `f`'s result once
    /// it is durable, `f`'s own error (its savepoint rolled back), or the group's error (nothing
    /// of the group was stored). `then` runs on the writer thread once the group's fate is known
    /// and before the next group runs: with true when `f` succeeded and its group committed.
    pub(super) fn write_then<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        then: impl FnOnce(bool) + Send + 'static,
    ) -> Result<T, StoreError> {
        let (answer, answered) = mpsc::sync_channel::<Result<T, StoreError>>(1);
        let slot: Arc<Mutex<Option<Result<T, StoreError>>>> = Arc::new(Mutex::new(None));
        let filled = Arc::clone(&slot);
        let write = Write {
            run: Box::new(move |conn| {
                let result = f(conn);
                let ok = result.is_ok();
                *filled.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
                ok
            }),
            one_statement: false,
            done: Box::new(move |group| {
                let own = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
                then(matches!((&own, &group), (Some(Ok(_)), Ok(()))));
                let _ = answer.send(match (own, group) {
                    (Some(Err(e)), _) => Err(e),
                    (_, Err(source)) => Err(StoreError::Group { source }),
                    (Some(Ok(v)), Ok(())) => Ok(v),
                    (None, Ok(())) => Err(StoreError::WriterGone),
                });
            }),
        };
        self.send(write)?;
        answered.recv().map_err(|_| StoreError::WriterGone)?
    }
}

impl Drop for Writer {
    /// Closes the queue and waits for the thread to commit what is queued.
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The most writes one group commit takes (4096): bounds how long the writer holds SQLite's write
/// lock against other processes (a `change cancel`, another controller).
pub const MAX_GROUP: usize = 4096;

/// What a write does once its group's transaction has committed (`Ok`) or failed (`Err`).
pub(super) type Completion = Box<dyn FnOnce(Result<(), Arc<rusqlite::Error>>) + Send>;

/// One queued write. `run` executes it inside the group's transaction (in its own savepoint,
/// unless `one_statement`: a single SQL statement is atomic by itself) and says whether it
/// succeeded (its savepoint is rolled back when not); `done` answers its caller once the group's
/// fate is known. A write whose group failed before it ran is never run: only its `done` is
/// called, with the group's error.
pub(super) struct Write {
    /// Runs it; true when it succeeded.
    pub(super) run: Box<dyn FnOnce(&Connection) -> bool + Send>,
    /// Whether it is one SQL statement (run without a savepoint).
    pub(super) one_statement: bool,
    /// Answers its caller.
    pub(super) done: Completion,
}

/// What the writer thread runs of a [`Write`].
type Run = (Box<dyn FnOnce(&Connection) -> bool + Send>, bool);

/// The writer thread: group commits until the queue closes (the store is dropped).
fn write_groups(conn: Connection, queue: Receiver<Write>, commits: &tokio::sync::watch::Sender<u64>) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(w) => group.push(w),
                Err(_) => break,
            }
        }
        let (runs, dones): (Vec<Run>, Vec<Completion>) = group.into_iter().map(|w| ((w.run, w.one_statement), w.done)).unzip();
        let outcome = run_group(&conn, runs).map_err(Arc::new);
        for done in dones {
            done(outcome.clone());
        }
        commits.send_modify(|n| *n += 1);
    }
}

/// Runs `runs` in one transaction, each in its own savepoint (but single statements), and
/// commits it.
fn run_group(conn: &Connection, runs: Vec<Run>) -> rusqlite::Result<()> {
    let exec = |sql: &str| conn.prepare_cached(sql).and_then(|mut s| s.execute([])).map(|_| ());
    exec("BEGIN IMMEDIATE")?;
    let result = (|| {
        for (run, one_statement) in runs {
            if one_statement {
                run(conn);
                if conn.is_autocommit() {
                    return Err(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                        Some("a write's failure rolled back its group's transaction".into()),
                    ));
                }
                continue;
            }
            exec("SAVEPOINT write")?;
            let ok = run(conn);
            if conn.is_autocommit() {
                // SQLite rolled the whole transaction back (a full disk, an I/O error): the writes
                // before this one are gone too, and the rest must not run outside a transaction.
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                    Some("a write's failure rolled back its group's transaction".into()),
                ));
            }
            if !ok {
                exec("ROLLBACK TO write")?;
            }
            exec("RELEASE write")?;
        }
        exec("COMMIT")
    })();
    if result.is_err() && !conn.is_autocommit() {
        let _ = exec("ROLLBACK");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writing connection to a fresh database holding one table, `t (v TEXT UNIQUE)`.
    fn database() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("w.db")).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (v TEXT UNIQUE);").unwrap();
        (dir, conn)
    }

    /// The values of `t` as another connection sees them (committed only), in order.
    fn committed(dir: &tempfile::TempDir) -> Vec<String> {
        let conn = Connection::open(dir.path().join("w.db")).unwrap();
        let mut stmt = conn.prepare("SELECT v FROM t ORDER BY v").unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    }

    fn query(source: rusqlite::Error) -> StoreError {
        StoreError::Query { op: "insert", source }
    }

    #[test]
    fn a_failed_write_of_a_group_rolls_back_alone_and_the_others_commit() {
        let (dir, conn) = database();
        let insert = |v: &'static str, ok: bool| -> Run {
            (
                Box::new(move |c: &Connection| {
                    c.execute("INSERT INTO t (v) VALUES (?1)", [v]).unwrap();
                    ok
                }),
                false,
            )
        };
        run_group(&conn, vec![insert("a", true), insert("b", false), insert("c", true)]).unwrap();
        assert_eq!(committed(&dir), ["a", "c"]);
    }

    #[test]
    fn a_failing_single_statement_leaves_the_group_to_commit() {
        let (dir, conn) = database();
        let insert = |v: &'static str| -> Run { (Box::new(move |c: &Connection| c.execute("INSERT INTO t (v) VALUES (?1)", [v]).is_ok()), true) };
        // The second "a" breaks the UNIQUE constraint: its statement alone is undone.
        run_group(&conn, vec![insert("a"), insert("a"), insert("b")]).unwrap();
        assert_eq!(committed(&dir), ["a", "b"]);
    }

    #[test]
    fn each_caller_gets_its_own_answer_once_its_group_committed() {
        let (dir, conn) = database();
        conn.execute("INSERT INTO t (v) VALUES ('taken')", []).unwrap();
        let writer = Writer::start(conn).unwrap();
        let outcomes: Vec<(usize, Result<usize, String>, bool)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..64)
                .map(|i| {
                    let writer = &writer;
                    s.spawn(move || {
                        // Every eighth write inserts a value already there: it fails alone.
                        let v = if i % 8 == 7 { "taken".to_string() } else { format!("{i:03}") };
                        let (told, then) = mpsc::channel();
                        let result = writer.write_then(move |c| c.execute("INSERT INTO t (v) VALUES (?1)", [&v]).map_err(query), move |ok| told.send(ok).unwrap());
                        (i, result.map_err(|e| e.to_string()), then.recv().unwrap())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (i, result, committed) in outcomes {
            if i % 8 == 7 {
                assert_eq!(result, Err("store operation \"insert\" failed".to_string()), "write {i}");
                assert!(!committed, "write {i}");
            } else {
                assert_eq!(result, Ok(1), "write {i}");
                assert!(committed, "write {i}");
            }
        }
        // Every answered write is durable: another connection sees it.
        let mut expected: Vec<String> = (0..64).filter(|i| i % 8 != 7).map(|i| format!("{i:03}")).collect();
        expected.push("taken".into());
        assert_eq!(committed(&dir), expected);
    }

    #[test]
    fn dropping_the_writer_commits_what_is_queued() {
        let (dir, conn) = database();
        let writer = Writer::start(conn).unwrap();
        let (done, finished) = mpsc::channel();
        for i in 0..100 {
            let done = done.clone();
            writer
                .send(Write {
                    run: Box::new(move |c| c.execute("INSERT INTO t (v) VALUES (?1)", [format!("{i:03}")]).is_ok()),
                    one_statement: true,
                    done: Box::new(move |group| done.send(group.is_ok()).unwrap()),
                })
                .unwrap();
        }
        drop(done);
        drop(writer);
        assert_eq!(finished.iter().filter(|&ok| ok).count(), 100);
        assert_eq!(committed(&dir).len(), 100);
    }
}
