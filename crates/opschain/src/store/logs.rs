//! Step logs: lines gathered in memory and stored in chunks, nobody waiting for them (see the
//! store's documentation).

use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::params;

use super::writer::Write;
use super::{chain, q, Store, StoreError};

/// Moves the log lines of a store written by an older controller (`step_logs`, a row per line)
/// into chunks of one line each, in their order, and drops the old table. Run once, when the
/// store is opened; a no-op on a store without `step_logs`.
pub(super) const MIGRATE_LOG_ROWS: &str = r#"
INSERT INTO step_log_chunks (step_id, lines, data, at)
    SELECT step_id, 1, CAST(stream || char(9) || line || char(10) AS BLOB), at FROM step_logs ORDER BY id;
DROP TABLE step_logs;
"#;

/// How many bytes of log lines may wait for the store's writer (16 MiB, over every step): once
/// that many are queued, [`Store::append_log`] waits for the writer to take them, so a log that
/// comes faster than the disk takes it slows its step down (back to the agent, which stops
/// reading its action's output) instead of growing the controller's memory or losing lines.
pub const LOG_BACKLOG: usize = 16 << 20;

/// Log lines gathered for [`Store::append_logs`], encoded as they are stored.
#[derive(Debug, Default)]
pub struct LogLines {
    /// `<stream>\t<line>\n` each.
    data: Vec<u8>,
    /// How many lines `data` holds.
    count: i64,
}

impl LogLines {
    /// Adds one line (without its newline) from `stream`.
    pub fn push(&mut self, stream: &str, line: &str) {
        self.data.reserve(stream.len() + line.len() + 2);
        self.data.extend_from_slice(stream.as_bytes());
        self.data.push(b'\t');
        self.data.extend_from_slice(line.as_bytes());
        self.data.push(b'\n');
        self.count += 1;
    }

    /// True when no line is gathered.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// One line of a step's log.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// The step.
    pub step_id: i64,
    /// The step's action.
    pub action: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// When it was recorded.
    pub at: String,
    /// The line.
    pub line: String,
}

/// Log lines gathered for the writer: each step's lines not yet taken, and the room left.
#[derive(Default)]
pub(super) struct LogBacklog {
    /// Per step, its encoded lines (`<stream>\t<line>\n` each) and how many there are. A step
    /// is present exactly while a write that will take its lines is queued.
    state: Mutex<Gathered>,
    /// Wakes [`Store::append_log`] callers waiting for room.
    room: std::sync::Condvar,
}

/// The moving state of a [`LogBacklog`].
#[derive(Default)]
struct Gathered {
    /// Per step: the encoded lines and their count.
    steps: std::collections::HashMap<i64, (Vec<u8>, i64)>,
    /// The bytes of every step's lines. Invariant: the sum of the steps' buffer lengths.
    bytes: usize,
}

impl LogBacklog {
    /// The state, locked.
    fn lock(&self) -> MutexGuard<'_, Gathered> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the lines gathered for `step_id`, making room.
    fn take(&self, step_id: i64) -> Option<(Vec<u8>, i64)> {
        let mut state = self.lock();
        let taken = state.steps.remove(&step_id);
        if let Some((data, _)) = &taken {
            state.bytes -= data.len();
        }
        drop(state);
        self.room.notify_all();
        taken
    }
}

impl Store {
    /// Adds one line of a step's log (from `stream`, e.g. `stdout`) and returns at once: the line
    /// is committed, in its step's next chunk, with the next group (see the module
    /// documentation), before any later write of the same thread. Waits only while
    /// [`LOG_BACKLOG`] bytes of lines are already waiting for the writer. A line that cannot be
    /// stored is reported on stderr (nobody waits for it).
    pub fn append_log(&self, step_id: i64, stream: &str, line: &str) {
        let mut encoded = LogLines::default();
        encoded.push(stream, line);
        self.append_logs(step_id, &mut encoded);
    }

    /// [`append_log`](Self::append_log) for many lines at once (one lock for all), gathered in
    /// `lines`, which is left empty.
    pub fn append_logs(&self, step_id: i64, lines: &mut LogLines) {
        if lines.count == 0 {
            return;
        }
        let mut state = self.logs.lock();
        while state.bytes >= LOG_BACKLOG {
            state = self.logs.room.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        let size = lines.data.len();
        let first = !state.steps.contains_key(&step_id);
        let (data, count) = state.steps.entry(step_id).or_default();
        if data.is_empty() {
            std::mem::swap(data, &mut lines.data);
        } else {
            data.extend_from_slice(&lines.data);
        }
        *count += lines.count;
        state.bytes += size;
        drop(state);
        lines.data.clear();
        lines.count = 0;
        if first {
            self.queue_log_chunk(step_id);
        }
    }

    /// Queues the write that stores the lines gathered for `step_id` as one chunk.
    fn queue_log_chunk(&self, step_id: i64) {
        let failed: Arc<Mutex<Option<(StoreError, i64)>>> = Arc::new(Mutex::new(None));
        let noted = Arc::clone(&failed);
        let backlog = Arc::clone(&self.logs);
        let write = Write {
            run: Box::new(move |conn| {
                let Some((data, lines)) = backlog.take(step_id) else { return true };
                let (data, deflated) = deflate(data);
                let inserted = super::line_ids::insert_chunk(conn, step_id, lines, &data, deflated);
                let ok = inserted.is_ok();
                *noted.lock().unwrap_or_else(|e| e.into_inner()) = inserted.err().map(|e| (e, lines));
                ok
            }),
            one_statement: true,
            done: Box::new(move |group| {
                let own = failed.lock().unwrap_or_else(|e| e.into_inner()).take();
                let error = own.map(|(e, _)| e).or_else(|| group.err().map(|source| StoreError::Group { source }));
                if let Some(e) = error {
                    eprintln!("opschain: warning: log lines of step {step_id} were not stored: {}", chain(&e));
                }
            }),
        };
        let sent = self.writer.send(write).is_ok();
        if !sent {
            if let Some((_, lines)) = self.logs.take(step_id) {
                eprintln!("opschain: warning: {lines} log lines of step {step_id} were not stored: {}", StoreError::WriterGone);
            }
        }
    }

    /// Every log line of a change, in order.
    pub fn logs(&self, change_id: i64) -> Result<Vec<LogLine>, StoreError> {
        let mut lines = Vec::new();
        self.logs_after(change_id, 0, |line| lines.push(line.clone()))?;
        Ok(lines)
    }

    /// Calls `each` with every log line of a change stored in a chunk after chunk `after` (0: from
    /// the start), in order, and returns the last chunk read (`after` when there is none): pass
    /// it back to follow the log as it grows. A chunk is read whole or not at all (each is one
    /// committed row), so following never splits or repeats a line.
    pub fn logs_after(&self, change_id: i64, after: i64, mut each: impl FnMut(&LogLine)) -> Result<i64, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT c.id, c.step_id, s.action, c.at, c.data, c.deflated FROM step_log_chunks c JOIN steps s ON s.id = c.step_id
                 WHERE s.change_id = ?1 AND c.id > ?2 ORDER BY c.id",
            )
            .map_err(q("read logs"))?;
        let mut rows = stmt.query(params![change_id, after]).map_err(q("read logs"))?;
        let mut last = after;
        let mut line = LogLine { step_id: 0, action: String::new(), stream: String::new(), at: String::new(), line: String::new() };
        while let Some(row) = rows.next().map_err(q("read logs"))? {
            last = row.get(0).map_err(q("read logs"))?;
            line.step_id = row.get(1).map_err(q("read logs"))?;
            line.action = row.get(2).map_err(q("read logs"))?;
            line.at = row.get(3).map_err(q("read logs"))?;
            let data = row.get_ref(4).and_then(|v| v.as_blob_or_null().map_err(Into::into)).map_err(q("read logs"))?.unwrap_or_default();
            let deflated: bool = row.get(5).map_err(q("read logs"))?;
            each_line(last, data, deflated, &mut |stream, text| {
                line.stream.clear();
                line.stream.push_str(stream);
                line.line.clear();
                line.line.push_str(text);
                each(&line);
            })?;
        }
        Ok(last)
    }
}

/// Calls `each` with the stream and text of every line of the stored chunk `chunk` (its `data`,
/// `deflated` or not), in order.
pub(super) fn each_line(chunk: i64, data: &[u8], deflated: bool, each: &mut dyn FnMut(&str, &str)) -> Result<(), StoreError> {
    let inflated;
    let data = if deflated {
        inflated = inflate(data).map_err(|source| StoreError::LogChunk { chunk, source })?;
        &inflated[..]
    } else {
        data
    };
    for encoded in data.split(|&b| b == b'\n') {
        if encoded.is_empty() {
            continue; // after the last line
        }
        let (stream, text) = match encoded.iter().position(|&b| b == b'\t') {
            Some(tab) => (&encoded[..tab], &encoded[tab + 1..]),
            None => (&b""[..], encoded),
        };
        each(&String::from_utf8_lossy(stream), &String::from_utf8_lossy(text));
    }
    Ok(())
}

/// `data` deflated, and true, when that is smaller (a chunk of more than a few lines); else
/// `data` as it is, and false.
fn deflate(data: Vec<u8>) -> (Vec<u8>, bool) {
    use std::io::Write as _;
    if data.len() < 512 {
        return (data, false);
    }
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::with_capacity(data.len() / 4), flate2::Compression::fast());
    match encoder.write_all(&data).and_then(|()| encoder.finish()) {
        Ok(deflated) if deflated.len() < data.len() => (deflated, true),
        _ => (data, false),
    }
}

/// The lines of a chunk stored deflated.
pub(super) fn inflate(data: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut lines = Vec::with_capacity(data.len() * 4);
    flate2::read::DeflateDecoder::new(data).read_to_end(&mut lines)?;
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::setup;
    use super::super::DB_FILE;
    use super::*;
    use rusqlite::Connection;

    #[test]
    fn a_flood_of_lines_is_stored_in_few_chunks_each_line_once_in_order_and_followable() {
        let (_dir, store, _p, _e, c) = setup();
        let step = store.steps(c).unwrap()[0].id;
        let mut seen = Vec::new();
        let mut after = 0;
        for batch in 0..4 {
            for n in 0..50_000 {
                let stream = if n % 7 == 0 { "stderr" } else { "stdout" };
                store.append_log(step, stream, &format!("{batch} {n}\twith a tab"));
            }
            // A write others wait for commits every line queued before it.
            store.mark_queued(&[]).unwrap();
            after = store.logs_after(c, after, |l| seen.push((l.stream.clone(), l.line.clone()))).unwrap();
            assert_eq!(seen.len(), (batch + 1) * 50_000, "a follower sees every line committed, once");
        }
        let expected: Vec<(String, String)> =
            (0..4).flat_map(|b| (0..50_000).map(move |n| ((if n % 7 == 0 { "stderr" } else { "stdout" }).to_string(), format!("{b} {n}\twith a tab")))).collect();
        assert!(seen == expected, "lines lost, repeated or out of order");
        let chunks: i64 = store.conn().query_row("SELECT count(*) FROM step_log_chunks", [], |r| r.get(0)).unwrap();
        assert!(chunks < 1000, "{chunks} chunks for 200,000 lines");
        assert_eq!(store.logs_after(c, after, |_| panic!("nothing new")).unwrap(), after);
    }

    #[test]
    fn the_line_per_row_logs_of_an_older_store_are_kept_in_order() {
        let (dir, store, _p, _e, c) = setup();
        let step = store.steps(c).unwrap()[0].id;
        drop(store);
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.execute_batch(
            "CREATE TABLE step_logs (id INTEGER PRIMARY KEY, step_id INTEGER NOT NULL REFERENCES steps(id), stream TEXT NOT NULL,
                 line TEXT NOT NULL, at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')));",
        )
        .unwrap();
        for (stream, line) in [("stdout", "one"), ("stderr", "two"), ("stdout", ""), ("stdout", "four")] {
            conn.execute("INSERT INTO step_logs (step_id, stream, line) VALUES (?1, ?2, ?3)", params![step, stream, line]).unwrap();
        }
        drop(conn);
        let store = Store::open(dir.path()).unwrap();
        store.append_log(step, "stdout", "five");
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let lines: Vec<(String, String)> = store.logs(c).unwrap().into_iter().map(|l| (l.stream, l.line)).collect();
        let expected = [("stdout", "one"), ("stderr", "two"), ("stdout", ""), ("stdout", "four"), ("stdout", "five")];
        assert_eq!(lines, expected.map(|(s, l)| (s.to_string(), l.to_string())));
        let old: i64 = store.conn().query_row("SELECT count(*) FROM sqlite_master WHERE name = 'step_logs'", [], |r| r.get(0)).unwrap();
        assert_eq!(old, 0);
    }
}
