//! The step transport for engines that share no filesystem with the controller (a Kubernetes
//! cluster; the Docker backend's `--transport stream`): the step context goes in through what the
//! engine offers (a mounted Secret, the container's standard input) and `step_result.json` comes
//! back in the step's own output, framed so that the controller can take it out of the log lines.
//!
//! The agent's side ([`receive_context`], [`send_result`]) is in the static agent; the
//! controller's side ([`Decoder`]) is here beside it, one format in one file, and the static
//! agent's link leaves it out as it never calls it. `docs/transport.md` shows the
//! manifests and the sequence of calls.
//!
//! # The frame
//!
//! After the step, when `step --result-frame NONCE` is given, the agent prints the bytes of
//! `step_result.json` on its standard output as lines of this shape (`NONCE` chosen by the
//! controller for the step, [`check_nonce`]):
//!
//! ```text
//! opschain-result NONCE begin <length in bytes>
//! opschain-result NONCE data <base64 of up to 3072 bytes: 4096 characters>
//! ...
//! opschain-result NONCE end <length in bytes> <FNV-1a 64 of the bytes, 16 hex digits>
//! ```
//!
//! Why this shape:
//! * **Any size.** Kubernetes' termination message holds 4 KB; a result holds the merged
//!   properties and can be megabytes. A log carries any amount.
//! * **Lines a log keeps whole.** Container runtimes split log lines longer than 16 KiB into
//!   partial records; a frame line is at most 4,140 bytes, plain ASCII, so no log pipeline
//!   re-encodes or splits it.
//! * **Every line names its frame.** Kubernetes merges a pod's stdout and stderr into one log: a
//!   line of the agent's stderr may fall between two frame lines. Each frame line carries the
//!   prefix and the nonce, so the decoder takes exactly its lines and passes every other line on
//!   to the change log.
//! * **A damaged frame is refused, never half read.** The `end` line repeats the length and adds
//!   a checksum of the bytes: a truncated or altered frame (a log stream that broke, a rotated
//!   log) fails the step with a message rather than recording a wrong result.
//! * **The last complete frame wins.** The agent prints its frame after the action and every
//!   process it started have ended, so nothing follows it; a frame-shaped line an action prints
//!   (a log of another step, say) has another nonce, and one with this nonce would come before the
//!   agent's own. The agent removes the nonce from its environment before the action starts.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::atomic::{self, AtomicError, Durability};
use crate::exit::{ExitStatus, Sysexit};
use crate::layout::Layout;

/// The first word of every frame line.
pub const FRAME_PREFIX: &str = "opschain-result";

/// The bytes of the result one `data` line carries (3072, so 4096 base64 characters without
/// padding in every line but the last).
pub const CHUNK_BYTES: usize = 3072;

/// Where `step --context-from` reads the step context: `-` is standard input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextSource {
    /// Standard input, read to its end (`docker run -i`).
    Stdin,
    /// A file (a mounted Kubernetes Secret's key).
    File(PathBuf),
}

impl ContextSource {
    /// `-` is standard input; anything else a file.
    pub fn parse(arg: &Path) -> ContextSource {
        if arg == Path::new("-") {
            ContextSource::Stdin
        } else {
            ContextSource::File(arg.to_path_buf())
        }
    }

    /// The source as messages name it.
    pub fn name(&self) -> String {
        match self {
            ContextSource::Stdin => "standard input".into(),
            ContextSource::File(path) => path.display().to_string(),
        }
    }
}

/// Why the transport failed on the agent's side.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The step context cannot be read from its source.
    #[error("cannot read the step context from {from}")]
    ReadContext {
        /// The source.
        from: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The step context is larger than the input limit.
    #[error("the step context from {from} is larger than {limit} bytes")]
    ContextTooLarge {
        /// The source.
        from: String,
        /// The limit.
        limit: u64,
    },
    /// The step context cannot be written where the step reads it.
    #[error("cannot write the step context")]
    WriteContext(#[source] AtomicError),
    /// The step result cannot be read to be sent.
    #[error("cannot read the step result {} to send it", path.display())]
    ReadResult {
        /// The result file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The frame cannot be written to standard output.
    #[error("cannot write the step result frame to standard output")]
    WriteFrame(#[source] std::io::Error),
    /// The nonce is not one a frame can carry.
    #[error("invalid result frame nonce {0:?}: 8 to 64 ASCII letters, digits, '-' or '_'")]
    Nonce(String),
}

impl TransportError {
    /// The agent's exit status for this error: a missing context file 66, one too large 65, a
    /// bad nonce 64, a context that cannot be written 73, other I/O 74.
    pub fn exit_status(&self) -> ExitStatus {
        let sysexit = match self {
            TransportError::ReadContext { source, .. } if source.kind() == std::io::ErrorKind::NotFound => Sysexit::NoInput,
            TransportError::ReadContext { .. } | TransportError::ReadResult { .. } | TransportError::WriteFrame(_) => Sysexit::IoErr,
            TransportError::ContextTooLarge { .. } => Sysexit::DataErr,
            TransportError::WriteContext(_) => Sysexit::CantCreat,
            TransportError::Nonce(_) => Sysexit::Usage,
        };
        sysexit.into()
    }
}

/// Checks a frame nonce: 8 to 64 ASCII letters, digits, `-` or `_` (one word of a frame line).
pub fn check_nonce(nonce: &str) -> Result<(), TransportError> {
    let ok = (8..=64).contains(&nonce.len()) && nonce.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(TransportError::Nonce(nonce.to_string()))
    }
}

/// FNV-1a (64 bits) of `bytes`: the frame's checksum. Not a defence against a forger (the nonce
/// and the frame's position are), a check that the bytes arrived as they left.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Reads the step context from `from` (at most `limit` bytes when given) and writes it to
/// `<repo>/<folder>/step_context.json` (mode 0600, atomically), creating the folder when the
/// image has none. The agent then reads it from there as in every other run: the action finds it
/// in `OPSCHAIN_STEP_CONTEXT`, and `step_result.json` is written beside it.
pub fn receive_context(from: &ContextSource, layout: &Layout, limit: Option<u64>) -> Result<(), TransportError> {
    let read_err = |source| TransportError::ReadContext { from: from.name(), source };
    let mut bytes = Vec::new();
    let reader: Box<dyn Read> = match from {
        ContextSource::Stdin => Box::new(std::io::stdin().lock()),
        ContextSource::File(path) => Box::new(std::fs::File::open(path).map_err(read_err)?),
    };
    let cap = limit.map_or(u64::MAX, |l| l.saturating_add(1));
    reader.take(cap).read_to_end(&mut bytes).map_err(read_err)?;
    if let Some(limit) = limit.filter(|&l| bytes.len() as u64 > l) {
        return Err(TransportError::ContextTooLarge { from: from.name(), limit });
    }
    let folder = layout.folder_dir();
    if !folder.is_dir() {
        std::fs::create_dir_all(&folder).map_err(|source| TransportError::WriteContext(AtomicError { op: "create directory", path: folder.clone(), source }))?;
    }
    atomic::write(&layout.step_context(), &bytes, 0o600, Durability::Rename).map_err(TransportError::WriteContext)
}

/// Prints the result file at `path` as a frame marked `nonce` on `out` (see the module's doc).
/// Returns false, printing nothing, when there is no result file (the agent failed before the
/// action ran: its stderr line says why).
pub fn send_result(nonce: &str, path: &Path, out: &mut dyn Write) -> Result<bool, TransportError> {
    check_nonce(nonce)?;
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(source) => return Err(TransportError::ReadResult { path: path.to_path_buf(), source }),
    };
    write_frame(nonce, &bytes, out).map_err(TransportError::WriteFrame)?;
    Ok(true)
}

/// Writes `bytes` as a frame marked `nonce`.
pub fn write_frame(nonce: &str, bytes: &[u8], out: &mut dyn Write) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    writeln!(out, "{FRAME_PREFIX} {nonce} begin {}", bytes.len())?;
    let mut line = String::with_capacity(FRAME_PREFIX.len() + nonce.len() + 8 + CHUNK_BYTES / 3 * 4 + 1);
    for chunk in bytes.chunks(CHUNK_BYTES) {
        line.clear();
        line.push_str(FRAME_PREFIX);
        line.push(' ');
        line.push_str(nonce);
        line.push_str(" data ");
        base64::engine::general_purpose::STANDARD.encode_string(chunk, &mut line);
        line.push('\n');
        out.write_all(line.as_bytes())?;
    }
    writeln!(out, "{FRAME_PREFIX} {nonce} end {} {:016x}", bytes.len(), fnv1a64(bytes))?;
    out.flush()
}

/// Why no result could be taken out of a step's output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// No frame line of this step's nonce came.
    #[error("the step's output held no result frame")]
    Missing,
    /// A frame began but its `end` line never came (the output stream ended or broke).
    #[error("the result frame ended early: {received} of {length} bytes came, and no end line")]
    Unfinished {
        /// Bytes received.
        received: usize,
        /// Bytes announced by the `begin` line.
        length: usize,
    },
    /// A frame line is malformed.
    #[error("malformed result frame line {line}: {reason}")]
    Malformed {
        /// The line's number among the frame's lines (1 is `begin`).
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The frame holds, or announces, more bytes than the reader takes.
    #[error("the result frame is larger than {max} bytes (the largest step result the controller reads: --max-result-bytes)")]
    TooLarge {
        /// The limit.
        max: u64,
    },
    /// The bytes received are not what the `end` line announces.
    #[error("the result frame is damaged: {received} bytes with checksum {got:016x} came, the end line announces {length} with {expected:016x}")]
    Damaged {
        /// Bytes received.
        received: usize,
        /// Their checksum.
        got: u64,
        /// Bytes announced.
        length: usize,
        /// Checksum announced.
        expected: u64,
    },
}

/// Takes a step's result frame out of its output lines, on the controller's side: feed it every
/// line ([`Decoder::feed`] says whether the line was a frame line, consumed, or a log line to pass
/// on), then [`Decoder::finish`]. Holds the decoded bytes only, never the base64 text; the last
/// complete frame wins (see the module's doc).
#[derive(Debug)]
pub struct Decoder {
    /// `opschain-result NONCE ` (with the trailing space).
    prefix: String,
    /// The frame being read, if one has begun and not ended.
    open: Option<OpenFrame>,
    /// The outcome of the last frame that ended, if any.
    last: Option<Result<Vec<u8>, FrameError>>,
    /// The most bytes a frame may hold: past it, its data is no longer kept.
    max: u64,
}

/// A frame whose `begin` line came and whose `end` line has not.
#[derive(Debug)]
struct OpenFrame {
    /// Bytes announced.
    length: usize,
    /// Bytes decoded so far.
    bytes: Vec<u8>,
    /// Frame lines read so far (`begin` included).
    lines: usize,
    /// The first malformed line, if any: the frame is then refused at its end.
    error: Option<FrameError>,
}

impl Decoder {
    /// A decoder of the frame marked `nonce`, of any size.
    pub fn new(nonce: &str) -> Decoder {
        Decoder::with_limit(nonce, u64::MAX)
    }

    /// A decoder of the frame marked `nonce` that refuses a frame of more than `max` bytes,
    /// keeping no more than that in memory, whatever a step prints.
    pub fn with_limit(nonce: &str, max: u64) -> Decoder {
        Decoder { prefix: format!("{FRAME_PREFIX} {nonce} "), open: None, last: None, max }
    }

    /// Reads one output line (without its line end). Returns true when it is a line of this
    /// decoder's frame (consumed), false when it is a log line.
    pub fn feed(&mut self, line: &str) -> bool {
        let Some(rest) = line.strip_prefix(self.prefix.as_str()) else { return false };
        let rest = rest.trim_end_matches('\r');
        let (kind, arg) = rest.split_once(' ').unwrap_or((rest, ""));
        match kind {
            "begin" => {
                // A new frame replaces one left unfinished.
                let length = arg.parse::<usize>();
                let error = length.is_err().then(|| FrameError::Malformed { line: 1, reason: format!("bad length {arg:?}") });
                let length = length.unwrap_or(0);
                let error = error.or_else(|| (length as u64 > self.max).then_some(FrameError::TooLarge { max: self.max }));
                // The announced length is a capacity hint only, bounded so that a bad line
                // cannot reserve memory up front.
                let capacity = if error.is_some() { 0 } else { length.min(64 << 20) };
                self.open = Some(OpenFrame { length, bytes: Vec::with_capacity(capacity), lines: 1, error });
            }
            "data" => match &mut self.open {
                Some(frame) => {
                    frame.lines += 1;
                    if frame.error.is_none() {
                        if let Err(e) = base64::engine::general_purpose::STANDARD.decode_vec(arg, &mut frame.bytes) {
                            frame.error = Some(FrameError::Malformed { line: frame.lines, reason: format!("bad base64: {e}") });
                        } else if frame.bytes.len() as u64 > self.max {
                            frame.error = Some(FrameError::TooLarge { max: self.max });
                            frame.bytes = Vec::new();
                        }
                    }
                }
                None => self.last = Some(Err(FrameError::Malformed { line: 0, reason: "a data line before any begin line".into() })),
            },
            "end" => {
                let Some(frame) = self.open.take() else {
                    self.last = Some(Err(FrameError::Malformed { line: 0, reason: "an end line before any begin line".into() }));
                    return true;
                };
                self.last = Some(Self::close(frame, arg));
            }
            other => {
                let line = self.open.as_ref().map_or(0, |f| f.lines + 1);
                let error = FrameError::Malformed { line, reason: format!("unknown line kind {other:?}") };
                match &mut self.open {
                    Some(frame) if frame.error.is_none() => frame.error = Some(error),
                    Some(_) => {}
                    None => self.last = Some(Err(error)),
                }
            }
        }
        true
    }

    /// Checks an ended frame against its `end` line's `<length> <checksum>`.
    fn close(frame: OpenFrame, arg: &str) -> Result<Vec<u8>, FrameError> {
        let lines = frame.lines + 1;
        if let Some(e) = frame.error {
            return Err(e);
        }
        let malformed = || FrameError::Malformed { line: lines, reason: format!("bad end line {arg:?}") };
        let (length, checksum) = arg.split_once(' ').ok_or_else(malformed)?;
        let length: usize = length.parse().map_err(|_| malformed())?;
        let expected = u64::from_str_radix(checksum, 16).map_err(|_| malformed())?;
        let got = fnv1a64(&frame.bytes);
        if length != frame.length || length != frame.bytes.len() || got != expected {
            return Err(FrameError::Damaged { received: frame.bytes.len(), got, length, expected });
        }
        Ok(frame.bytes)
    }

    /// The result's bytes: those of the last frame that ended; an error when none ended, or the
    /// last one is damaged, or one began after it and never ended.
    pub fn finish(self) -> Result<Vec<u8>, FrameError> {
        if let Some(frame) = self.open {
            return Err(frame.error.unwrap_or(FrameError::Unfinished { received: frame.bytes.len(), length: frame.length }));
        }
        self.last.unwrap_or(Err(FrameError::Missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(nonce: &str, bytes: &[u8]) -> String {
        let mut out = Vec::new();
        write_frame(nonce, bytes, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn nonces_are_one_safe_word() {
        assert!(check_nonce("abcdEFGH-12_x").is_ok());
        for bad in ["short", "has space in it", "tab\there-xx", &"x".repeat(65), "ünïcode-nonce"] {
            assert!(check_nonce(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn frame_lines_are_short_ascii_and_carry_the_nonce() {
        let bytes: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let text = frame("nonce-1234", &bytes);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2 + bytes.len().div_ceil(CHUNK_BYTES));
        assert!(lines.iter().all(|l| l.starts_with("opschain-result nonce-1234 ") && l.len() <= 4140 && l.is_ascii()));
        assert_eq!(lines[0], "opschain-result nonce-1234 begin 20000");
        assert!(lines.last().unwrap().starts_with("opschain-result nonce-1234 end 20000 "));
    }

    fn decode(nonce: &str, text: &str) -> (Result<Vec<u8>, FrameError>, Vec<String>) {
        let mut decoder = Decoder::new(nonce);
        let passed = text.lines().filter(|l| !decoder.feed(l)).map(str::to_string).collect();
        (decoder.finish(), passed)
    }

    #[test]
    fn a_frame_past_the_limit_is_refused_without_keeping_its_bytes() {
        let bytes = vec![7u8; 3 * CHUNK_BYTES];
        let text = frame("n0nce-abc", &bytes);
        for max in [0, 100, 3 * CHUNK_BYTES as u64 - 1] {
            let mut decoder = Decoder::with_limit("n0nce-abc", max);
            for line in text.lines() {
                assert!(decoder.feed(line));
                assert!(decoder.open.as_ref().is_none_or(|f| f.bytes.len() as u64 <= max.max(CHUNK_BYTES as u64)), "no more kept than the limit and one line");
            }
            assert!(matches!(decoder.finish(), Err(FrameError::TooLarge { max: m }) if m == max), "limit {max}");
        }
        // A begin line announcing more than the limit is refused at once: no data is kept.
        let mut decoder = Decoder::with_limit("n0nce-abc", 10);
        assert!(decoder.feed(text.lines().next().unwrap()));
        assert!(decoder.open.as_ref().is_some_and(|f| f.bytes.capacity() == 0 && f.error.is_some()));
        let mut exact = Decoder::with_limit("n0nce-abc", bytes.len() as u64);
        text.lines().for_each(|l| assert!(exact.feed(l)));
        assert_eq!(exact.finish().unwrap(), bytes);
    }

    #[test]
    fn every_size_round_trips_through_lines_interleaved_with_log_lines() {
        for size in [0, 1, 2, 3, CHUNK_BYTES - 1, CHUNK_BYTES, CHUNK_BYTES + 1, 5 << 20] {
            let bytes: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            let text = frame("n0nce-abc", &bytes);
            // A merged stdout/stderr: a log line between every two frame lines, and frame lines of
            // another nonce, which are log lines to this decoder.
            let mut merged = String::from("before\n");
            for (i, line) in text.lines().enumerate() {
                merged += line;
                merged += &format!("\nlog {i}\n");
            }
            merged += &frame("other-nonce", b"{}");
            let (result, passed) = decode("n0nce-abc", &merged);
            assert_eq!(result.unwrap(), bytes, "size {size}");
            assert_eq!(passed.len(), 1 + text.lines().count() + 3, "size {size}");
            assert!(passed.iter().any(|l| l.starts_with("opschain-result other-nonce begin")));
        }
    }

    #[test]
    fn the_last_complete_frame_wins() {
        let text = frame("n0nce-abc", b"{\"forged\":1}") + &frame("n0nce-abc", b"{\"real\":1}");
        assert_eq!(decode("n0nce-abc", &text).0.unwrap(), b"{\"real\":1}");
        // A frame begun again after an unfinished one replaces it.
        let first = frame("n0nce-abc", &[7u8; 10_000]);
        let cut: String = first.lines().take(2).map(|l| format!("{l}\n")).collect();
        assert_eq!(decode("n0nce-abc", &(cut + &frame("n0nce-abc", b"ok"))).0.unwrap(), b"ok");
    }

    #[test]
    fn a_missing_cut_or_altered_frame_is_refused() {
        assert_eq!(decode("n0nce-abc", "just a log\n").0, Err(FrameError::Missing));
        let bytes = vec![42u8; 10_000];
        let text = frame("n0nce-abc", &bytes);
        let lines: Vec<&str> = text.lines().collect();
        // The stream broke before the end line.
        let cut = lines[..lines.len() - 1].join("\n");
        assert_eq!(decode("n0nce-abc", &cut).0, Err(FrameError::Unfinished { received: 10_000, length: 10_000 }));
        // A data line lost (a rotated log): the length and checksum disagree.
        let mut lost = lines.clone();
        lost.remove(2);
        assert!(matches!(decode("n0nce-abc", &lost.join("\n")).0, Err(FrameError::Damaged { received: 6928, .. })));
        // One character changed in a data line (valid base64 still).
        let altered = text.replacen("KioqKioq", "KioqKioR", 1);
        assert_ne!(altered, text);
        assert!(matches!(decode("n0nce-abc", &altered).0, Err(FrameError::Damaged { .. })));
        // Not base64.
        let bad = text.replacen(" data ", " data !", 1);
        assert!(matches!(decode("n0nce-abc", &bad).0, Err(FrameError::Malformed { line: 2, .. })));
        // An unknown kind.
        assert!(matches!(decode("n0nce-abc", "opschain-result n0nce-abc middle 3").0, Err(FrameError::Malformed { .. })));
    }

    #[test]
    fn the_context_is_read_within_the_limit_and_written_where_the_step_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().join("repo"), ".opschain").unwrap();
        let source = dir.path().join("secret-step_context.json");
        std::fs::write(&source, br#"{"project": {"properties": {}}}"#).unwrap();
        receive_context(&ContextSource::File(source.clone()), &layout, Some(1000)).unwrap();
        assert_eq!(std::fs::read(layout.step_context()).unwrap(), std::fs::read(&source).unwrap());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(layout.step_context()).unwrap().permissions().mode() & 0o777, 0o600);
        let e = receive_context(&ContextSource::File(source.clone()), &layout, Some(10)).unwrap_err();
        assert!(matches!(e, TransportError::ContextTooLarge { limit: 10, .. }), "{e}");
        let e = receive_context(&ContextSource::File(dir.path().join("absent")), &layout, None).unwrap_err();
        assert!(matches!(e, TransportError::ReadContext { .. }), "{e}");
        assert_eq!(ContextSource::parse(Path::new("-")), ContextSource::Stdin);
    }

    #[test]
    fn no_result_file_sends_no_frame() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        assert!(!send_result("n0nce-abc", &dir.path().join("step_result.json"), &mut out).unwrap());
        assert!(out.is_empty());
        std::fs::write(dir.path().join("step_result.json"), b"{}").unwrap();
        assert!(send_result("n0nce-abc", &dir.path().join("step_result.json"), &mut out).unwrap());
        assert!(matches!(send_result("bad nonce", &dir.path().join("step_result.json"), &mut out), Err(TransportError::Nonce(_))));
    }
}
