//! Each log line's id: its sequence number in its change, from 1, stable for good. A chunk holds
//! the id of its first line (`first_line`); its lines follow on. The change keeps the count of
//! lines ever numbered (`changes.log_lines`), which a chunk's write takes its ids from, so an id
//! is never given twice, even after a retry removes the lines of the steps it re-runs. So a
//! reader that has seen every line up to id N asks for the lines after N, and a follower that
//! lost its connection resumes where it stopped (`Last-Event-ID`), with no line lost or repeated.

use rusqlite::{params, Connection};

use super::{q, Store, StoreError};

/// A log line with its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberedLine {
    /// The line's sequence number in its change (from 1).
    pub id: i64,
    /// The step that printed it.
    pub step_id: i64,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// When it was stored.
    pub created_at: String,
    /// The line, masked.
    pub message: String,
}

/// Stores one chunk of `lines` lines of `step_id` (encoded as `logs` stores them), taking their
/// ids from the step's change's count. Run by the store's writer, inside its group.
pub(super) fn insert_chunk(conn: &Connection, step_id: i64, lines: i64, data: &[u8], deflated: bool) -> Result<(), StoreError> {
    let (change_id, first): (i64, i64) = conn
        .prepare_cached("UPDATE changes SET log_lines = log_lines + ?2 WHERE id = (SELECT change_id FROM steps WHERE id = ?1) RETURNING id, log_lines - ?2 + 1")
        .and_then(|mut stmt| stmt.query_row(params![step_id, lines], |r| Ok((r.get(0)?, r.get(1)?))))
        .map_err(q("number log lines"))?;
    conn.prepare_cached("INSERT INTO step_log_chunks (step_id, lines, data, deflated, change_id, first_line) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
        .and_then(|mut stmt| stmt.execute(params![step_id, lines, data, deflated, change_id, first]))
        .map_err(q("append step log"))?;
    Ok(())
}

impl Store {
    /// Up to `limit` lines of a change whose id is above `after` (0: from the first), in order.
    /// Reads only the chunks that hold them.
    pub fn log_lines_after(&self, change_id: i64, after: i64, limit: usize) -> Result<Vec<NumberedLine>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                // The chunk that holds line `after` (its lines after it are taken), then the
                // chunks after it: both ranges of the (change_id, first_line) index.
                "SELECT * FROM (SELECT id, step_id, first_line, at, data, deflated FROM step_log_chunks
                     WHERE change_id = ?1 AND first_line <= ?2 ORDER BY first_line DESC LIMIT 1)
                 UNION ALL
                 SELECT * FROM (SELECT id, step_id, first_line, at, data, deflated FROM step_log_chunks
                     WHERE change_id = ?1 AND first_line > ?2 ORDER BY first_line)",
            )
            .map_err(q("read log lines"))?;
        let mut rows = stmt.query(params![change_id, after]).map_err(q("read log lines"))?;
        let mut out = Vec::with_capacity(limit.min(4096));
        while out.len() < limit {
            let Some(row) = rows.next().map_err(q("read log lines"))? else { break };
            let chunk: i64 = row.get(0).map_err(q("read log lines"))?;
            let step_id: i64 = row.get(1).map_err(q("read log lines"))?;
            let mut id: i64 = row.get(2).map_err(q("read log lines"))?;
            let at: String = row.get(3).map_err(q("read log lines"))?;
            let data = row.get_ref(4).and_then(|v| v.as_blob_or_null().map_err(Into::into)).map_err(q("read log lines"))?.unwrap_or_default();
            let deflated: bool = row.get(5).map_err(q("read log lines"))?;
            let mut each = |stream: &str, text: &str| {
                if id > after && out.len() < limit {
                    out.push(NumberedLine { id, step_id, stream: stream.to_string(), created_at: at.clone(), message: text.to_string() });
                }
                id += 1;
            };
            super::logs::each_line(chunk, data, deflated, &mut each)?;
        }
        Ok(out)
    }

    /// How many log lines the change has had numbered (the id of its last line; 0 when none);
    /// [`StoreError::NotFound`] when there is no such change.
    pub fn log_line_count(&self, change_id: i64) -> Result<i64, StoreError> {
        match self.conn().query_row("SELECT log_lines FROM changes WHERE id = ?1", [change_id], |r| r.get(0)) {
            Err(rusqlite::Error::QueryReturnedNoRows) => Err(StoreError::NotFound(format!("change {change_id}"))),
            other => other.map_err(q("count log lines")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::setup;

    #[test]
    fn line_ids_count_from_one_are_never_reused_and_pages_split_chunks() {
        let (_dir, store, _p, _e, c) = setup();
        let step = store.steps(c).unwrap()[0].id;
        for n in 1..=10 {
            store.append_log(step, "stdout", &format!("line {n}"));
            if n % 3 == 0 {
                store.mark_queued(&[]).unwrap(); // commits what is gathered: several chunks
            }
        }
        store.mark_queued(&[]).unwrap();
        let all = store.log_lines_after(c, 0, 100).unwrap();
        assert_eq!(all.iter().map(|l| l.id).collect::<Vec<_>>(), (1..=10).collect::<Vec<_>>());
        assert!(all.iter().all(|l| l.message == format!("line {}", l.id)));
        let page = store.log_lines_after(c, 4, 3).unwrap();
        assert_eq!(page.iter().map(|l| l.id).collect::<Vec<_>>(), [5, 6, 7]);
        assert_eq!(store.log_line_count(c).unwrap(), 10);
        // A retry removes the lines of the steps it re-runs; new lines get new ids.
        store.reset_for_retry(c).unwrap();
        store.append_log(step, "stderr", "again");
        store.mark_queued(&[]).unwrap();
        let after = store.log_lines_after(c, 10, 100).unwrap();
        assert_eq!((after[0].id, after[0].stream.as_str(), after[0].message.as_str()), (11, "stderr", "again"));
    }

    #[test]
    fn the_lines_of_a_store_from_before_line_ids_are_numbered_in_their_order() {
        let (dir, store, _p, _e, c) = setup();
        let step = store.steps(c).unwrap()[0].id;
        for n in 1..=5 {
            store.append_log(step, "stdout", &format!("line {n}"));
            store.mark_queued(&[]).unwrap();
        }
        drop(store);
        // The store as it was before line ids.
        let conn = rusqlite::Connection::open(dir.path().join(super::super::DB_FILE)).unwrap();
        conn.execute_batch(
            "DROP INDEX log_chunks_by_line; ALTER TABLE step_log_chunks DROP COLUMN first_line; ALTER TABLE step_log_chunks DROP COLUMN change_id;
             ALTER TABLE changes DROP COLUMN log_lines;",
        )
        .unwrap();
        drop(conn);
        let store = super::super::Store::open(dir.path()).unwrap();
        let lines = store.log_lines_after(c, 0, 100).unwrap();
        assert_eq!(
            lines.iter().map(|l| (l.id, l.message.as_str())).collect::<Vec<_>>(),
            (1..=5).map(|n| (n, format!("line {n}"))).collect::<Vec<_>>().iter().map(|(n, m)| (*n, m.as_str())).collect::<Vec<_>>()
        );
        store.append_log(step, "stdout", "six");
        store.mark_queued(&[]).unwrap();
        assert_eq!(store.log_lines_after(c, 5, 10).unwrap()[0].id, 6, "new lines follow on");
    }
}
