//! Pages of a change's log for a reader who moves through it, as a log viewer does: between two
//! line ids, forwards or backwards (the last screen of a long log without reading the rest),
//! only some steps' lines, and only the lines that contain a text (a search).
//!
//! Only the chunks that can hold the page are read (the `(change_id, first_line)` index); a
//! chunk of a step that is not asked for is skipped unread, and a chunk whose text does not
//! contain the searched text is skipped after one scan of its bytes, without splitting it into
//! lines. So a search through a million lines costs their inflating and one scan.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder};
use rusqlite::params;

use super::line_ids::NumberedLine;
use super::{q, Store, StoreError};

/// Which lines of a change a [`Store::log_lines_page`] reads.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// Only lines whose id is above this (0: from the first).
    pub after: i64,
    /// Only lines whose id is below this (`None`: up to the last).
    pub before: Option<i64>,
    /// Newest first (the page ends at `before` rather than starting at `after`).
    pub descending: bool,
    /// Only the lines of these steps (`None`: every step's).
    pub steps: Option<Vec<i64>>,
    /// Only the lines whose message contains this text, ASCII letters in either case (`None` or
    /// empty: every line).
    pub contains: Option<String>,
}

/// How many chunks a search reads from the store at once, to scan them on several threads
/// (32).
pub const SEARCH_BATCH: usize = 32;

/// At most how many threads scan a search's chunks at once (4; fewer on fewer CPUs): inflating
/// the chunks is nearly all of a search's cost, and each chunk inflates on its own.
pub const SEARCH_THREADS: usize = 4;

/// One stored chunk, read for a page.
struct Chunk {
    chunk: i64,
    step_id: i64,
    first: i64,
    at: String,
    data: Vec<u8>,
    deflated: bool,
}

impl Chunk {
    /// The chunk of a row of the page's query.
    fn of(row: &rusqlite::Row<'_>) -> rusqlite::Result<Chunk> {
        Ok(Chunk { chunk: row.get(0)?, step_id: row.get(1)?, first: row.get(2)?, at: row.get(3)?, data: row.get(4)?, deflated: row.get(5)? })
    }
}

impl Store {
    /// Up to `limit` lines of change `change_id` matching `query`, in id order (newest first
    /// when `query.descending`).
    pub fn log_lines_page(&self, change_id: i64, query: &LogQuery, limit: usize) -> Result<Vec<NumberedLine>, StoreError> {
        let matcher = match query.contains.as_deref().filter(|t| !t.is_empty()) {
            Some(text) => Some(
                AhoCorasickBuilder::new()
                    .ascii_case_insensitive(true)
                    .build([text])
                    .map_err(|e| StoreError::Query { op: "search log lines", source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)) })?,
            ),
            None => None,
        };
        let before = query.before.unwrap_or(i64::MAX);
        let sql = if query.descending {
            "SELECT id, step_id, first_line, at, data, deflated FROM step_log_chunks
             WHERE change_id = ?1 AND first_line < ?3 AND first_line + lines > ?2 ORDER BY first_line DESC"
        } else {
            // The chunk that holds line `after` (chunks never overlap), then the chunks after it:
            // both ranges of the (change_id, first_line) index.
            "SELECT * FROM (SELECT id, step_id, first_line, at, data, deflated FROM step_log_chunks
                 WHERE change_id = ?1 AND first_line <= ?2 ORDER BY first_line DESC LIMIT 1)
             UNION ALL
             SELECT * FROM (SELECT id, step_id, first_line, at, data, deflated FROM step_log_chunks
                 WHERE change_id = ?1 AND first_line > ?2 AND first_line < ?3 ORDER BY first_line)"
        };
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(sql).map_err(q("read log lines"))?;
        let mut rows = stmt.query(params![change_id, query.after, before]).map_err(q("read log lines"))?;
        let mut out = Vec::with_capacity(limit.min(4096));
        let wanted = |step_id: i64| query.steps.as_ref().is_none_or(|steps| steps.contains(&step_id));
        let Some(matcher) = matcher else {
            while out.len() < limit {
                let Some(row) = rows.next().map_err(q("read log lines"))? else { break };
                let chunk = Chunk::of(row).map_err(q("read log lines"))?;
                if wanted(chunk.step_id) {
                    read_chunk(&chunk, query.after, before, query.descending, None, limit, &mut out)?;
                }
            }
            return Ok(out);
        };
        let mut batch = Vec::with_capacity(SEARCH_BATCH);
        while out.len() < limit {
            batch.clear();
            while batch.len() < SEARCH_BATCH {
                let Some(row) = rows.next().map_err(q("read log lines"))? else { break };
                let chunk = Chunk::of(row).map_err(q("read log lines"))?;
                if wanted(chunk.step_id) {
                    batch.push(chunk);
                }
            }
            if batch.is_empty() {
                break;
            }
            for found in search_batch(&batch, query, before, &matcher, limit) {
                let room = limit.saturating_sub(out.len());
                out.extend(found?.into_iter().take(room));
            }
        }
        Ok(out)
    }
}

/// The matches of `matcher` in each chunk of `batch` (at most `limit` each), in the batch's
/// order, the chunks inflated and scanned on up to [`SEARCH_THREADS`] threads.
fn search_batch(batch: &[Chunk], query: &LogQuery, before: i64, matcher: &AhoCorasick, limit: usize) -> Vec<Result<Vec<NumberedLine>, StoreError>> {
    let scan = |chunk: &Chunk| {
        let mut found = Vec::new();
        read_chunk(chunk, query.after, before, query.descending, Some(matcher), limit, &mut found).map(|()| found)
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(SEARCH_THREADS).min(batch.len());
    if threads <= 1 {
        return batch.iter().map(scan).collect();
    }
    let mut results: Vec<Option<Result<Vec<NumberedLine>, StoreError>>> = (0..batch.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let scan = &scan;
                scope.spawn(move || batch.iter().enumerate().skip(t).step_by(threads).map(|(i, chunk)| (i, scan(chunk))).collect::<Vec<_>>())
            })
            .collect();
        for worker in workers {
            // A scan that panicked is a bug; its chunks are answered as unreadable.
            for (i, found) in worker.join().unwrap_or_default() {
                results[i] = Some(found);
            }
        }
    });
    results
        .into_iter()
        .zip(batch)
        .map(|(found, chunk)| found.unwrap_or_else(|| Err(StoreError::LogChunk { chunk: chunk.chunk, source: std::io::Error::other("its search failed") })))
        .collect()
}

/// Adds the lines of `chunk` whose id is between `after` and `before` (and that `matcher`
/// finds, if given) to `out`, in the page's order, until it holds `limit`.
fn read_chunk(
    chunk: &Chunk,
    after: i64,
    before: i64,
    descending: bool,
    matcher: Option<&AhoCorasick>,
    limit: usize,
    out: &mut Vec<NumberedLine>,
) -> Result<(), StoreError> {
    let inflated;
    let bytes = if chunk.deflated {
        inflated = super::logs::inflate(&chunk.data).map_err(|source| StoreError::LogChunk { chunk: chunk.chunk, source })?;
        &inflated[..]
    } else {
        &chunk.data[..]
    };
    if matcher.is_some_and(|m| !m.is_match(bytes)) {
        return Ok(());
    }
    let mut lines = Vec::new();
    let mut id = chunk.first;
    for encoded in bytes.split(|&b| b == b'\n') {
        if encoded.is_empty() {
            continue; // after the last line
        }
        let this = id;
        id += 1;
        if this <= after || this >= before {
            continue;
        }
        let (stream, text) = match memchr::memchr(b'\t', encoded) {
            Some(tab) => (&encoded[..tab], &encoded[tab + 1..]),
            None => (&b""[..], encoded),
        };
        if matcher.is_some_and(|m| !m.is_match(text)) {
            continue;
        }
        lines.push((this, stream, text));
    }
    let line = |(id, stream, text): (i64, &[u8], &[u8])| NumberedLine {
        id,
        step_id: chunk.step_id,
        stream: String::from_utf8_lossy(stream).into_owned(),
        created_at: chunk.at.to_string(),
        message: String::from_utf8_lossy(text).into_owned(),
    };
    let room = limit.saturating_sub(out.len());
    if descending {
        out.extend(lines.into_iter().rev().take(room).map(line));
    } else {
        out.extend(lines.into_iter().take(room).map(line));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{end, setup};
    use super::*;

    /// A change of two steps whose 3,000 lines alternate between them 250 at a time, a chunk
    /// each (line `n` has id `n`; step 2's are 251-500, 751-1000, ...).
    fn two_step_log() -> (tempfile::TempDir, Store, i64, i64, i64) {
        let (dir, store, p, e, c) = setup();
        let first = store.steps(c).unwrap()[0].id;
        store.finish_step(first, p, e, end(serde_json::json!([]), serde_json::json!([]), &["child"])).unwrap();
        let second = store.steps(c).unwrap()[1].id;
        for n in 1..=3000 {
            let step = if ((n - 1) / 250) % 2 == 1 { second } else { first };
            store.append_log(step, "stdout", &format!("line {n} {}", if n == 2999 { "NEEDLE" } else { "hay" }));
            if n % 250 == 0 {
                store.mark_queued(&[]).unwrap();
            }
        }
        store.mark_queued(&[]).unwrap();
        (dir, store, c, first, second)
    }

    fn ids(lines: &[NumberedLine]) -> Vec<i64> {
        lines.iter().map(|l| l.id).collect()
    }

    #[test]
    fn pages_run_forwards_or_backwards_between_bounds_and_keep_ids() {
        let (_dir, store, c, ..) = two_step_log();
        let all = store.log_lines_page(c, &LogQuery::default(), 10_000).unwrap();
        assert_eq!(ids(&all), (1..=3000).collect::<Vec<_>>());
        assert!(all.iter().all(|l| l.message.starts_with(&format!("line {} ", l.id))));
        let tail = store.log_lines_page(c, &LogQuery { descending: true, ..LogQuery::default() }, 3).unwrap();
        assert_eq!(ids(&tail), [3000, 2999, 2998]);
        let before = store.log_lines_page(c, &LogQuery { descending: true, before: Some(1002), ..LogQuery::default() }, 4).unwrap();
        assert_eq!(ids(&before), [1001, 1000, 999, 998]);
        let between = store.log_lines_page(c, &LogQuery { after: 248, before: Some(253), ..LogQuery::default() }, 100).unwrap();
        assert_eq!(ids(&between), [249, 250, 251, 252], "a page across two chunks");
    }

    #[test]
    fn a_step_filter_and_a_search_find_only_their_lines() {
        let (_dir, store, c, first, second) = two_step_log();
        let second_only = store.log_lines_page(c, &LogQuery { steps: Some(vec![second]), ..LogQuery::default() }, 5).unwrap();
        assert_eq!(ids(&second_only), [251, 252, 253, 254, 255]);
        assert!(second_only.iter().all(|l| l.step_id == second));
        let both = store.log_lines_page(c, &LogQuery { steps: Some(vec![first, second]), ..LogQuery::default() }, 3).unwrap();
        assert_eq!(ids(&both), [1, 2, 3]);
        let search =
            |text: &str, steps: Option<Vec<i64>>| ids(&store.log_lines_page(c, &LogQuery { contains: Some(text.into()), steps, ..LogQuery::default() }, 1000).unwrap());
        assert_eq!(search("needle", None), [2999], "ASCII case does not matter");
        assert_eq!(search("NEEDLE", Some(vec![first])), Vec::<i64>::new(), "line 2999 is the second step's");
        assert_eq!(search("NEEDLE", Some(vec![second])), [2999]);
        assert_eq!(search("stdout", None), Vec::<i64>::new(), "the stream is not part of the message");
        let expected: Vec<i64> = [29].into_iter().chain(290..300).chain(2900..3000).collect();
        assert_eq!(search("line 29", None), expected);
        let previous = store.log_lines_page(c, &LogQuery { contains: Some("line 29".into()), before: Some(2905), descending: true, ..LogQuery::default() }, 2).unwrap();
        assert_eq!(ids(&previous), [2904, 2903]);
    }
}
