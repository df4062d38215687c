//! Output cut into lines: [`LineSplitter`] cuts a stream of bytes into records of a bounded
//! length, never inside a UTF-8 sequence ([`utf8_cut`]). Used by the agent for its jobs' output;
//! the controller cuts its agents' output at the same place.

use std::time::SystemTime;

use tokio::time::Instant;

/// When something arrived: wall clock for the record, monotonic clock for the hold deadlines.
pub type Arrival = (SystemTime, Instant);

/// Cuts one stream of (masked) bytes into records of at most `max_line` bytes.
#[derive(Debug)]
pub struct LineSplitter {
    /// The longest record, in bytes of text. Invariant: >= 1.
    max_line: usize,
    /// The current line's bytes not yet emitted. Invariant after each call: shorter than
    /// `max_line`, and holds no `\n`.
    partial: Vec<u8>,
    /// When the first byte of `partial` arrived. Invariant: `Some` exactly when `partial` is not
    /// empty.
    since: Option<Arrival>,
    /// The next record continues a line of which a piece was already emitted (cut at `max_line`,
    /// or released because it was held too long).
    continues: bool,
}

impl LineSplitter {
    /// A splitter with nothing held, cutting at `max_line` (at least 1).
    pub fn new(max_line: usize) -> LineSplitter {
        LineSplitter { max_line: max_line.max(1), partial: Vec::new(), since: None, continues: false }
    }

    /// Feeds `bytes` that arrived at `at`; `emit(text, cont, ts)` gets every record completed.
    pub fn feed(&mut self, mut bytes: &[u8], at: Arrival, emit: &mut impl FnMut(&[u8], bool, SystemTime)) {
        while !bytes.is_empty() {
            let since = *self.since.get_or_insert(at);
            let room = self.max_line - self.partial.len();
            // A newline right after `room` bytes still ends a line of exactly max_line bytes.
            let window = &bytes[..bytes.len().min(room + 1)];
            if let Some(newline) = memchr::memchr(b'\n', window) {
                if self.partial.is_empty() {
                    emit(&bytes[..newline], self.continues, since.0);
                } else {
                    self.partial.extend_from_slice(&bytes[..newline]);
                    emit(&self.partial, self.continues, since.0);
                    self.partial.clear();
                }
                self.since = None;
                self.continues = false;
                bytes = &bytes[newline + 1..];
            } else if bytes.len() > room {
                self.partial.extend_from_slice(&bytes[..room]);
                bytes = &bytes[room..];
                // Cut before a UTF-8 sequence the limit would split; keep its first bytes.
                let cut = utf8_cut(&self.partial);
                emit(&self.partial[..cut], self.continues, since.0);
                self.partial.drain(..cut);
                self.continues = true;
                self.since = if self.partial.is_empty() { None } else { Some(at) };
            } else {
                self.partial.extend_from_slice(bytes);
                bytes = &[];
            }
        }
    }

    /// Since when the oldest byte not yet emitted has been held.
    pub fn held_since(&self) -> Option<Instant> {
        self.since.map(|(_, instant)| instant)
    }

    /// Emits the partial line now (it was held long enough); the rest of the line, when it comes,
    /// is a continuation.
    pub fn release(&mut self, emit: &mut impl FnMut(&[u8], bool, SystemTime)) {
        if let Some((wall, _)) = self.since.take() {
            emit(&self.partial, self.continues, wall);
            self.partial.clear();
            self.continues = true;
        }
    }

    /// End of stream: emits what is left as a last line.
    pub fn finish(&mut self, emit: &mut impl FnMut(&[u8], bool, SystemTime)) {
        self.release(emit);
        self.continues = false;
    }
}

/// Where to cut `buf` (full to a line limit) so that no UTF-8 sequence is split: before a lead
/// byte whose sequence `buf` does not complete; `buf.len()` when nothing is split, or when cutting
/// would leave nothing (the bytes are then not UTF-8 worth keeping together). Lead bytes are
/// those RFC 3629 allows (`C2..=DF`, `E0..=EF`, `F0..=F4`); any other byte (`C0`, `C1`, `F5..`)
/// can begin no sequence, so nothing is held back for it. The one cut the agent's and the
/// controller's line splitters share.
pub fn utf8_cut(buf: &[u8]) -> usize {
    let len = buf.len();
    for back in 1..=len.min(3) {
        let byte = buf[len - back];
        if byte & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back for its lead byte
        }
        let needed = match byte {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => 1,
        };
        return if needed > back && back < len { len - back } else { len };
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(max_line: usize, chunks: &[&[u8]]) -> Vec<(Vec<u8>, bool)> {
        let mut split = LineSplitter::new(max_line);
        let mut records = Vec::new();
        let at = (SystemTime::now(), Instant::now());
        let mut emit = |t: &[u8], c: bool, _: SystemTime| records.push((t.to_vec(), c));
        for chunk in chunks {
            split.feed(chunk, at, &mut emit);
        }
        split.finish(&mut emit);
        records
    }

    fn rec(text: &str, cont: bool) -> (Vec<u8>, bool) {
        (text.as_bytes().to_vec(), cont)
    }

    #[test]
    fn lines_across_chunks_are_joined_and_long_ones_cut_with_continuations() {
        assert_eq!(
            split_all(4, &[b"ab", b"c\nabcd\nabcdefghij", b"\n\n"]),
            vec![rec("abc", false), rec("abcd", false), rec("abcd", false), rec("efgh", true), rec("ij", true), rec("", false),]
        );
    }

    #[test]
    fn a_cut_never_splits_a_utf8_sequence() {
        // "aé€" is 61 C3A9 E282AC: a cut after 4 bytes would split the euro sign.
        let records = split_all(4, &["aé€\n".as_bytes()]);
        assert_eq!(records, vec![rec("aé", false), rec("€", true)]);
    }

    #[test]
    fn release_emits_the_partial_line_and_marks_the_rest_as_continuation() {
        let mut split = LineSplitter::new(100);
        let mut records = Vec::new();
        let at = (SystemTime::now(), Instant::now());
        let mut emit = |t: &[u8], c: bool, _: SystemTime| records.push((t.to_vec(), c));
        split.feed(b"progress ...", at, &mut emit);
        assert!(split.held_since().is_some());
        split.release(&mut emit);
        assert!(split.held_since().is_none());
        split.feed(b" done\nnext\n", at, &mut emit);
        assert_eq!(records, vec![rec("progress ...", false), rec(" done", true), rec("next", false)]);
    }

    #[test]
    fn the_cut_holds_back_only_a_sequence_a_valid_lead_byte_begins() {
        assert_eq!(utf8_cut(b"abc"), 3);
        assert_eq!(utf8_cut("a\u{e9}".as_bytes()), 3);
        assert_eq!(utf8_cut(&"a\u{e9}".as_bytes()[..2]), 1);
        assert_eq!(utf8_cut(&"a\u{1F600}".as_bytes()[..4]), 1);
        assert_eq!(utf8_cut(&"a\u{1F600}".as_bytes()[..2]), 1);
        assert_eq!(utf8_cut("\u{1F600}".as_bytes()), 4);
        assert_eq!(utf8_cut(b"a\xff"), 2);
        assert_eq!(utf8_cut(b""), 0);
        // Cutting would leave nothing: the bytes stay together.
        assert_eq!(utf8_cut(&"\u{e9}".as_bytes()[..1]), 1);
        // C0, C1 and F5..FF begin no sequence in UTF-8 (RFC 3629): nothing is held back for them.
        for lead in [0xC0u8, 0xC1, 0xF5, 0xF7, 0xFF] {
            assert_eq!(utf8_cut(&[b'a', b'b', lead]), 3, "{lead:#x}");
            assert_eq!(utf8_cut(&[b'a', b'b', lead, 0x80]), 4, "{lead:#x}");
        }
    }
}
