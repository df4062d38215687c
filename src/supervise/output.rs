//! The job's output, from pipe to log record: read, mask, cut into lines, stamp, format, queue.
//!
//! One [`pump`] task per pipe. Masking comes first, on the raw byte stream, so that a secret split
//! across two reads is still one secret to the masker; only what the masker releases is cut into
//! lines. Every buffer on the way is bounded: one read ([`READ_CHUNK`]), what the masker holds
//! back, one partial line (`max_line`), and the queue (its [`LogBuffer`](super::LogBuffer)
//! policy).

use std::fmt;
use std::io::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::io::AsyncReadExt as _;
use tokio::net::unix::pipe;
use tokio::sync::watch;
use tokio::time::Instant;

use super::logq::LogQueue;
use super::LineFormat;
use crate::lines::{Arrival, LineSplitter};
use crate::mask::MaskStream;

/// How much one read from a pipe takes at most (128 KiB): half of [`PIPE_SIZE`], so a flood takes
/// few reads, while the buffer stays below the size at which the allocator maps memory of its own
/// (a map and an unmap for every pump of every job, a quiet one too).
pub(crate) const READ_CHUNK: usize = 128 * 1024;

/// The buffer size the supervisor asks for each of the job's pipes (`F_SETPIPE_SZ`; Linux's
/// default is 64 KiB): a job printing a flood then fills it four times less often, so the two
/// sides switch four times less. Unprivileged processes may ask up to
/// `/proc/sys/fs/pipe-max-size` (1 MiB by default); when refused, the pipe keeps its size.
pub(crate) const PIPE_SIZE: usize = 256 * 1024;

/// How many bytes of formatted records a [`Sink`] gathers before it queues them (128 KiB): one
/// lock of the queue for thousands of short lines, and a batch small enough to stay in cache.
const BATCH: usize = 128 * 1024;

/// Where a record comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    /// The job's standard output.
    Stdout,
    /// The job's standard error.
    Stderr,
    /// The supervisor itself: what it did to the job (timeout, signals, leftovers) and what it
    /// could not log.
    Runner,
}

impl Stream {
    /// Its name in the records.
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::Runner => "runner",
        }
    }
}

/// A point in time written as RFC 3339 in UTC with microseconds, e.g.
/// `2026-11-23T10:00:00.123456Z`.
///
/// Written by hand (the civil-from-days algorithm of Howard Hinnant,
/// <https://howardhinnant.github.io/date_algorithms.html#civil_from_days>) rather than with a date
/// crate: it is the only date format the agent writes. Times before 1970 are written as 1970.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rfc3339(pub(crate) SystemTime);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let since = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let (year, month, day) = civil_from_days(secs / 86_400);
        let in_day = secs % 86_400;
        write!(f, "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z", in_day / 3600, in_day / 60 % 60, in_day % 60, since.subsec_micros())
    }
}

impl Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// (year, month 1-12, day 1-31) of the day `days` after 1970-01-01 (days >= 0 only, so the era
/// arithmetic needs no negative case).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// The length of an [`Rfc3339`] time: `2026-11-23T10:00:00.123456Z`.
const STAMP_LEN: usize = 27;

/// The last time formatted as RFC 3339 (UTC, microseconds: the agent's and the controller's line
/// times), kept to format the next one cheaply: the same instant
/// costs nothing, the same second six digits.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    /// The second since the epoch that `text` holds; `u64::MAX` before the first.
    secs: u64,
    /// The microseconds that `text` holds.
    micros: u32,
    /// The formatted time.
    text: [u8; STAMP_LEN],
}

impl Default for Stamp {
    fn default() -> Stamp {
        Stamp { secs: u64::MAX, micros: 0, text: [b'0'; STAMP_LEN] }
    }
}

impl Stamp {
    /// `ts` formatted as RFC 3339 (`2026-11-23T10:00:00.123456Z`).
    pub fn format(&mut self, ts: SystemTime) -> &[u8; STAMP_LEN] {
        let since = ts.duration_since(UNIX_EPOCH).unwrap_or_default();
        let (secs, micros) = (since.as_secs(), since.subsec_micros());
        if secs != self.secs {
            let mut cursor = io::Cursor::new(&mut self.text[..]);
            // 27 bytes for any year up to 9999; a later one is cut (never written).
            let _ = write!(cursor, "{}", Rfc3339(ts));
            self.secs = secs;
            self.micros = micros;
        } else if micros != self.micros {
            let mut left = micros;
            for digit in self.text[20..26].iter_mut().rev() {
                *digit = b'0' + (left % 10) as u8;
                left /= 10;
            }
            self.micros = micros;
        }
        &self.text
    }
}

/// How records are written: the [`LineFormat`] and the job's label, prepared once per job.
#[derive(Debug)]
pub(crate) struct RecordFormat {
    /// Text or JSON.
    format: LineFormat,
    /// The job's label; in [`LineFormat::Text`], with whitespace replaced by `_` so that the
    /// fields stay space-separated.
    label: String,
}

/// One record in [`LineFormat::Json`].
#[derive(Serialize)]
struct JsonRecord<'a> {
    /// When the record's first byte was read.
    ts: Rfc3339,
    /// The job's label.
    action: &'a str,
    /// `stdout`, `stderr` or `runner`.
    stream: &'static str,
    /// True when the record continues the previous one of its stream.
    cont: bool,
    /// The text, not UTF-8 bytes replaced by U+FFFD.
    line: &'a str,
}

impl RecordFormat {
    /// The format for one job.
    pub(crate) fn new(format: LineFormat, label: &str) -> RecordFormat {
        let label = match format {
            LineFormat::Text if label.is_empty() => "-".to_string(),
            LineFormat::Text => label.chars().map(|c| if c.is_whitespace() { '_' } else { c }).collect(),
            LineFormat::Json => label.to_string(),
        };
        RecordFormat { format, label }
    }

    /// Appends one record to `out`: `text` (without its newline) from `stream`, whose first byte
    /// arrived at `ts`; `cont` when it continues the previous record of the same stream.
    pub(crate) fn write(&self, out: &mut Vec<u8>, ts: SystemTime, stream: Stream, cont: bool, text: &[u8]) {
        self.write_stamped(out, &mut Stamp::default(), ts, stream, cont, text);
    }

    /// [`write`](Self::write), with the time formatted through `stamp`, which keeps the last time
    /// it formatted: the lines of one read share theirs, and those of one second share all but
    /// the microseconds.
    fn write_stamped(&self, out: &mut Vec<u8>, stamp: &mut Stamp, ts: SystemTime, stream: Stream, cont: bool, text: &[u8]) {
        // Writing into a Vec cannot fail.
        let _ = match self.format {
            LineFormat::Text => {
                out.reserve(STAMP_LEN + self.label.len() + 10 + text.len());
                out.extend_from_slice(stamp.format(ts));
                out.push(b' ');
                out.extend_from_slice(self.label.as_bytes());
                out.push(b' ');
                out.extend_from_slice(stream.name().as_bytes());
                out.extend_from_slice(if cont { b"+ " } else { b"| " });
                out.extend_from_slice(text);
                Ok(())
            }
            LineFormat::Json => {
                let line = String::from_utf8_lossy(text);
                let record = JsonRecord { ts: Rfc3339(ts), action: &self.label, stream: stream.name(), cont, line: &line };
                serde_json::to_writer(&mut *out, &record).map_err(io::Error::from)
            }
        };
        out.push(b'\n');
    }
}

/// A producer's handle on the log: formats records and queues them. One per pump task and one for
/// the supervisor's notices; each gathers its records in a batch of its own, queued whole (one
/// lock of the queue for many records) when it is [`BATCH`] bytes long, at the end of each read
/// ([`commit`](Self::commit)), and before a notice.
#[derive(Debug)]
pub(crate) struct Sink {
    /// Where records go.
    queue: Arc<LogQueue>,
    /// How they look.
    format: Arc<RecordFormat>,
    /// The records formatted and not yet queued; reused, so formatting allocates nothing in the
    /// steady state.
    batch: Vec<u8>,
    /// How many records `batch` holds.
    records: u64,
    /// The last time formatted.
    stamp: Stamp,
    /// In [`LineFormat::Text`], the start of a record (time, label, stream, separator) for the
    /// time, stream and continuation in `prefix_of`.
    prefix: Vec<u8>,
    /// What `prefix` was formatted for; `None` before the first record.
    prefix_of: Option<(SystemTime, Stream, bool)>,
}

impl Clone for Sink {
    fn clone(&self) -> Sink {
        Sink::shared(Arc::clone(&self.queue), Arc::clone(&self.format))
    }
}

/// Appends `src` to `out`. A record is a handful of short copies, and the static agent's libc
/// (musl) copies with `rep movs`, whose start-up cost dominates a copy of a few dozen bytes: up to
/// 256 bytes are copied here, inline, 16 at a time (the last 16 overlapping the one before).
#[inline(always)]
fn append(out: &mut Vec<u8>, src: &[u8]) {
    let len = src.len();
    if !(16..=256).contains(&len) {
        out.extend_from_slice(src);
        return;
    }
    out.reserve(len);
    let start = out.len();
    // SAFETY: `reserve` made room for `len` more bytes after `start`; every read is within `src`
    // (the chunks at 0, 16, ... below `len - 16`, and the one at `len - 16`) and every write is
    // within `start..start + len` of the spare capacity, which is all written before `set_len`.
    unsafe {
        let dst = out.as_mut_ptr().add(start);
        let from = src.as_ptr();
        let mut at = 0;
        while at + 16 < len {
            let chunk = std::ptr::read_unaligned(from.add(at).cast::<u128>());
            std::ptr::write_unaligned(dst.add(at).cast::<u128>(), chunk);
            at += 16;
        }
        let last = std::ptr::read_unaligned(from.add(len - 16).cast::<u128>());
        std::ptr::write_unaligned(dst.add(len - 16).cast::<u128>(), last);
        out.set_len(start + len);
    }
}

impl Sink {
    /// A sink writing records in `format` to `queue`.
    pub(crate) fn new(queue: Arc<LogQueue>, format: RecordFormat) -> Sink {
        Sink::shared(queue, Arc::new(format))
    }

    /// A sink with nothing gathered yet.
    fn shared(queue: Arc<LogQueue>, format: Arc<RecordFormat>) -> Sink {
        Sink { queue, format, batch: Vec::new(), records: 0, stamp: Stamp::default(), prefix: Vec::new(), prefix_of: None }
    }

    /// Adds one line (or piece of a line) of the job's output to the batch; see
    /// [`RecordFormat::write`].
    pub(crate) fn line(&mut self, stream: Stream, text: &[u8], cont: bool, ts: SystemTime) {
        match self.format.format {
            LineFormat::Text => {
                // Every record of one read has the same prefix (time, label, stream, separator):
                // it is formatted once, and a record costs two copies.
                let key = (ts, stream, cont);
                if self.prefix_of != Some(key) {
                    self.prefix.clear();
                    self.format.write_stamped(&mut self.prefix, &mut self.stamp, ts, stream, cont, b"");
                    self.prefix.pop(); // the newline
                    self.prefix_of = Some(key);
                }
                append(&mut self.batch, &self.prefix);
                append(&mut self.batch, text);
                self.batch.push(b'\n');
            }
            LineFormat::Json => {
                self.format.write_stamped(&mut self.batch, &mut self.stamp, ts, stream, cont, text);
            }
        }
        self.records += 1;
        if self.batch.len() >= BATCH {
            self.commit();
        }
    }

    /// Queues the batch.
    pub(crate) fn commit(&mut self) {
        if self.records == 0 {
            return;
        }
        let format = &self.format;
        self.queue.push(&mut self.batch, self.records, |count, buf| drop_notice(format, count, buf));
        self.records = 0;
    }

    /// Queues a notice of the supervisor's own, stamped now (after the batch, if any).
    pub(crate) fn notice(&mut self, text: &str) {
        self.commit();
        self.format.write(&mut self.batch, SystemTime::now(), Stream::Runner, false, text.as_bytes());
        self.queue.push_notice(&self.batch);
        self.batch.clear();
    }

    /// Queues the notice for records dropped and not yet reported, if any.
    pub(crate) fn report_drops(&self) {
        let format = &self.format;
        self.queue.report_drops(|count, buf| drop_notice(format, count, buf));
    }

    /// True when the pump may read more; see [`LogQueue::has_room`].
    pub(crate) fn has_room(&self) -> bool {
        self.queue.has_room()
    }
}

/// Appends the `runner` record saying that `count` records were dropped just before it.
fn drop_notice(format: &RecordFormat, count: u64, out: &mut Vec<u8>) {
    let text = format!("{count} records dropped here: the log writer fell behind");
    format.write(out, SystemTime::now(), Stream::Runner, false, text.as_bytes());
}

/// What a pump needs besides its pipe.
#[derive(Debug)]
pub(crate) struct PumpConfig {
    /// Which stream the pipe carries.
    pub(crate) stream: Stream,
    /// See [`SupervisePolicy::max_line`](super::SupervisePolicy::max_line).
    pub(crate) max_line: usize,
    /// See [`SupervisePolicy::idle_flush`](super::SupervisePolicy::idle_flush).
    pub(crate) idle_flush: Duration,
}

/// Reads one of the job's pipes to its end and logs every byte: masked by `mask`, cut into lines,
/// sent to `sink`.
///
/// What is held back is released on time: the masker's carry (the tail that may be the start of
/// a secret) once the pipe has been idle for `idle_flush`, and a partial line once its first byte
/// is `idle_flush` old even while more keeps coming (a progress bar that prints dots). The masker
/// is flushed only when idle, never on a timer during a burst, since flushing cuts a secret that
/// straddles two reads.
///
/// When `stop` changes (the supervisor gave up waiting for the pipe's end: a process it could
/// not kill still holds it), takes what the pipe holds at that moment without waiting for more
/// or for room in the queue, releases everything held, and returns.
///
/// Every read adds its byte count to `progress`, so that the supervisor can tell a pipe still
/// being emptied from one that is idle.
pub(crate) async fn pump(
    mut pipe: pipe::Receiver,
    config: PumpConfig,
    mask: MaskStream,
    sink: Sink,
    mut stop: watch::Receiver<bool>,
    progress: Arc<AtomicU64>,
) -> io::Result<()> {
    let idle_flush = config.idle_flush;
    let mut record = Recorder { stream: config.stream, mask, masked: Vec::new(), split: LineSplitter::new(config.max_line), sink };
    // Not zeroed: `read_buf` fills the spare capacity, so only the pages a read reaches are ever
    // touched (a quiet job's pump costs no page faults for the whole buffer).
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut last_read: Arrival = (SystemTime::now(), Instant::now());
    let mut stopped = false;
    'reading: loop {
        if !record.sink.has_room() {
            tokio::select! {
                biased;
                _ = stop.changed() => { stopped = true; break 'reading; }
                () = record.sink.queue.room() => {}
            }
        }
        let masker_due = (record.mask.pending() > 0).then(|| last_read.1 + idle_flush);
        let line_due = record.split.held_since().map(|since| since + idle_flush);
        let due = masker_due.into_iter().chain(line_due).min();
        tokio::select! {
            biased;
            _ = stop.changed() => { stopped = true; break 'reading; }
            read = pipe.read_buf(&mut buf) => {
                let n = match read {
                    Ok(0) => break 'reading,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                progress.fetch_add(n as u64, Ordering::Relaxed);
                last_read = (SystemTime::now(), Instant::now());
                record.push(&buf[..n], last_read);
                buf.clear();
            }
            () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                let now = Instant::now();
                let idle = now >= last_read.1 + idle_flush;
                if idle {
                    record.flush_mask(last_read);
                }
                let line_due = record.split.held_since().is_some_and(|t| now >= t + idle_flush);
                if idle || line_due {
                    record.release();
                }
            }
        }
    }
    if stopped {
        // What the pipe holds now was written before we stopped: keep it.
        loop {
            match pipe.try_read_buf(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    last_read = (SystemTime::now(), Instant::now());
                    record.push(&buf[..n], last_read);
                    buf.clear();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
    record.finish(last_read);
    Ok(())
}

/// One stream's way from raw bytes to queued records: masker, line splitter, sink.
struct Recorder {
    /// Which stream this is.
    stream: Stream,
    /// Masks the raw bytes; may hold back a tail that could be the start of a secret.
    mask: MaskStream,
    /// What the masker released, on its way to `split`; empty between calls.
    masked: Vec<u8>,
    /// Cuts the masked bytes into records.
    split: LineSplitter,
    /// Where the records go.
    sink: Sink,
}

impl Recorder {
    /// Bytes read at `at`: masked, then cut into records, queued.
    fn push(&mut self, bytes: &[u8], at: Arrival) {
        self.mask.push(bytes, &mut self.masked);
        self.feed_masked(at);
        self.sink.commit();
    }

    /// Releases what the masker holds back, into the line splitter.
    fn flush_mask(&mut self, at: Arrival) {
        self.mask.flush(&mut self.masked);
        self.feed_masked(at);
        self.sink.commit();
    }

    /// Emits the partial line held by the splitter.
    fn release(&mut self) {
        let (stream, sink) = (self.stream, &mut self.sink);
        self.split.release(&mut |text, cont, ts| sink.line(stream, text, cont, ts));
        self.sink.commit();
    }

    /// End of the stream: everything held goes out.
    fn finish(&mut self, at: Arrival) {
        self.flush_mask(at);
        let (stream, sink) = (self.stream, &mut self.sink);
        self.split.finish(&mut |text, cont, ts| sink.line(stream, text, cont, ts));
        self.sink.commit();
    }

    /// Cuts what the masker released into records, and empties `masked`.
    fn feed_masked(&mut self, at: Arrival) {
        let (stream, sink) = (self.stream, &mut self.sink);
        self.split.feed(&self.masked, at, &mut |text, cont, ts| sink.line(stream, text, cont, ts));
        self.masked.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        let at = |secs: u64, micros: u64| Rfc3339(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros)).to_string();
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        // `date -u -d 2000-02-29T23:59:59 +%s` = 951868799: a leap day in a century leap year.
        assert_eq!(at(951_868_799, 1), "2000-02-29T23:59:59.000001Z");
        // `date -u -d 2026-11-23T10:00:00 +%s` = 1795428000.
        assert_eq!(at(1_795_428_000, 123_456), "2026-11-23T10:00:00.123456Z");
        // 2100 is not a leap year: `date -u -d 2100-03-01 +%s` = 4107542400, one day after 02-28.
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000Z");
        assert_eq!(at(4_107_542_399, 0), "2100-02-28T23:59:59.000000Z");
    }

    #[test]
    fn the_cached_stamp_formats_every_instant_as_rfc3339_does() {
        let mut stamp = Stamp::default();
        // Same instant, same second, next second, next day, back in time.
        for (secs, micros) in [(1_795_428_000, 123_456), (1_795_428_000, 123_456), (1_795_428_000, 7), (1_795_428_001, 999_999), (1_795_514_401, 0), (951_868_799, 1)] {
            let ts = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros);
            assert_eq!(stamp.format(ts).as_slice(), Rfc3339(ts).to_string().as_bytes());
        }
    }

    #[test]
    fn append_copies_every_length_exactly() {
        let src: Vec<u8> = (0..=255u8).cycle().take(600).collect();
        for len in 0..600 {
            let mut out = b"head".to_vec();
            append(&mut out, &src[..len]);
            assert_eq!(&out[..4], b"head");
            assert_eq!(&out[4..], &src[..len], "length {len}");
        }
    }

    #[test]
    fn records_of_one_read_share_a_prefix_and_come_out_as_formatted_one_by_one() {
        let queue = Arc::new(LogQueue::new(crate::supervise::LogBuffer::default()));
        let format = RecordFormat::new(LineFormat::Text, "act");
        let ts = UNIX_EPOCH + Duration::from_micros(1_795_428_000_123_456);
        let mut sink = Sink::new(Arc::clone(&queue), RecordFormat::new(LineFormat::Text, "act"));
        let mut expected = Vec::new();
        for (i, (stream, cont, text)) in
            [(Stream::Stdout, false, "a"), (Stream::Stdout, false, "a line longer than sixteen bytes"), (Stream::Stderr, true, ""), (Stream::Stdout, false, "b")]
                .into_iter()
                .enumerate()
        {
            let at = ts + Duration::from_micros(i as u64 / 2);
            sink.line(stream, text.as_bytes(), cont, at);
            format.write(&mut expected, at, stream, cont, text.as_bytes());
        }
        sink.commit();
        assert_eq!(String::from_utf8_lossy(&queue.take_queued()), String::from_utf8_lossy(&expected));
    }

    #[test]
    fn text_and_json_records() {
        let ts = UNIX_EPOCH + Duration::from_micros(1_795_428_000_123_456);
        let mut out = Vec::new();
        RecordFormat::new(LineFormat::Text, "my action").write(&mut out, ts, Stream::Stderr, true, b"x y");
        assert_eq!(out, b"2026-11-23T10:00:00.123456Z my_action stderr+ x y\n");
        out.clear();
        RecordFormat::new(LineFormat::Json, "my action").write(&mut out, ts, Stream::Stdout, false, b"a\"\xff");
        assert_eq!(
            String::from_utf8_lossy(&out),
            "{\"ts\":\"2026-11-23T10:00:00.123456Z\",\"action\":\"my action\",\"stream\":\"stdout\",\
             \"cont\":false,\"line\":\"a\\\"\u{fffd}\"}\n"
        );
    }
}
