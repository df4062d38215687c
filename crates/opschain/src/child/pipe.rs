//! One output pipe of a child process cut into lines ([`OutputPipe`]): complete lines go to the
//! sink from where they lie in the read buffer, UTF-8 checked once a read; a line longer than
//! [`LINE_LIMIT`] goes in pieces cut at a character boundary ([`opschain_runner::lines::utf8_cut`]).

use super::LogSink;

/// One output pipe of a running step: its fd and the bytes of its current, unfinished line.
pub(super) struct OutputPipe {
    /// The read end; `None` once closed.
    pub(super) pipe: Option<std::os::fd::OwnedFd>,
    /// The stream's name in the log (`stdout`, `stderr`).
    name: &'static str,
    /// The line read so far, without its end. Invariant: at most [`LINE_LIMIT`] bytes between
    /// reads (a longer line is sent in pieces of that size).
    partial: Vec<u8>,
    /// Whether any byte was read from the pipe.
    pub(super) seen: bool,
}

/// The longest line the controller keeps before sending it on (1 MiB): a longer one is sent in
/// pieces of this size, so that a program writing without newlines cannot grow the controller's
/// memory without bound. The agent's own lines are far shorter (it cuts its action's at 64 KiB).
pub(crate) const LINE_LIMIT: usize = 1 << 20;

impl OutputPipe {
    /// A stream over `pipe` (none: already closed), its lines logged under `name`.
    pub(super) fn new(pipe: Option<std::os::fd::OwnedFd>, name: &'static str) -> OutputPipe {
        OutputPipe { pipe, name, partial: Vec::new(), seen: false }
    }

    /// Reads what the pipe holds (one `read`), hands every complete line to `sink`, and closes
    /// the pipe at end of file or on a read error (the unfinished line, if any, is sent first).
    pub(super) fn drain(&mut self, sink: &dyn LogSink, buf: &mut [u8]) {
        use std::os::fd::AsRawFd;
        let Some(fd) = &self.pipe else { return };
        // SAFETY: reading into a buffer we own from a pipe fd we own.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            return;
        }
        if n <= 0 {
            self.close(sink);
            return;
        }
        self.seen = true;
        let read = &buf[..n as usize];
        // UTF-8 is checked once for the whole read: a line that lies wholly in its valid prefix
        // is sent as it is, without a check of its own.
        let valid = match std::str::from_utf8(read) {
            Ok(_) => read.len(),
            Err(e) => e.valid_up_to(),
        };
        let mut data = read;
        loop {
            // A line may take up to `room` more bytes; its newline may come right after them.
            let room = LINE_LIMIT - self.partial.len();
            match memchr::memchr(b'\n', &data[..data.len().min(room + 1)]) {
                Some(at) if self.partial.is_empty() => {
                    // The whole line is in this read: sent from where it lies.
                    let start = read.len() - data.len();
                    if start + at <= valid {
                        // SAFETY: `read[..valid]` is UTF-8 and a newline is a character
                        // boundary, so this slice of it, from a line's start, is UTF-8 too.
                        let line = unsafe { std::str::from_utf8_unchecked(&data[..at]) };
                        sink.line(self.name, line.trim_end_matches('\r'));
                    } else {
                        send(sink, self.name, &data[..at]);
                    }
                    data = &data[at + 1..];
                }
                Some(at) => {
                    self.partial.extend_from_slice(&data[..at]);
                    self.emit(sink, true);
                    data = &data[at + 1..];
                }
                None if data.len() > room => {
                    self.partial.extend_from_slice(&data[..room]);
                    self.emit(sink, false);
                    data = &data[room..];
                }
                None => break,
            }
        }
        self.partial.extend_from_slice(data);
    }

    /// Sends what `partial` holds and empties it: a whole line (`whole`, without its line
    /// ending), or a piece of one that goes on. A piece ends at a character boundary: the first
    /// bytes of a UTF-8 sequence cut by the limit stay in `partial` for the next piece.
    fn emit(&mut self, sink: &dyn LogSink, whole: bool) {
        if whole {
            send(sink, self.name, &self.partial);
            self.partial.clear();
        } else {
            let cut = opschain_runner::lines::utf8_cut(&self.partial);
            sink.piece(self.name, &String::from_utf8_lossy(&self.partial[..cut]));
            self.partial.drain(..cut);
        }
    }

    /// Sends an unfinished last line, if any, ends the stream and closes the pipe.
    pub(super) fn close(&mut self, sink: &dyn LogSink) {
        if self.pipe.is_none() {
            return;
        }
        if !self.partial.is_empty() {
            self.emit(sink, true);
        }
        sink.end(self.name);
        self.pipe = None;
    }
}

/// How much one read of an output pipe takes at most (256 KiB): several pipe buffers' worth, so
/// that a flood of output costs few reads and each batch of lines is large.
pub(crate) const READ_SIZE: usize = 256 * 1024;

/// Sends one line of stream `name` (without its newline; a `\r` before it is dropped too) to
/// `sink`, bytes that are not UTF-8 replaced by U+FFFD.
fn send(sink: &dyn LogSink, name: &'static str, line: &[u8]) {
    let line = String::from_utf8_lossy(line);
    sink.line(name, line.trim_end_matches(['\n', '\r']));
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Mutex;

    use super::{OutputPipe, LINE_LIMIT};
    use crate::child::LogSink;

    /// The lines a stream sent.
    #[derive(Default)]
    struct Lines(Mutex<Vec<String>>);

    impl LogSink for Lines {
        fn line(&self, _stream: &'static str, line: &str) {
            self.0.lock().unwrap().push(line.to_string());
        }
    }

    #[test]
    fn lines_longer_than_the_limit_are_sent_in_pieces_and_nothing_is_lost() {
        // Through a real pipe: a line of exactly the limit, one 2.5 times as long without a
        // newline until its end, short lines, and an unfinished last line.
        let long = "y".repeat(LINE_LIMIT * 5 / 2);
        let exact = "x".repeat(LINE_LIMIT);
        let input = format!("a\n{exact}\n{long}\nb\nlast");
        let (read, write) = nix::unistd::pipe().unwrap();
        let writer = std::thread::spawn({
            let input = input.clone();
            move || std::fs::File::from(write).write_all(input.as_bytes()).unwrap()
        });
        let sink = Lines::default();
        let mut stream = OutputPipe::new(Some(read), "stdout");
        let mut buf = vec![0u8; 64 * 1024];
        while stream.pipe.is_some() {
            stream.drain(&sink, &mut buf);
            assert!(stream.partial.len() <= LINE_LIMIT);
        }
        writer.join().unwrap();
        let lines = sink.0.into_inner().unwrap();
        let lengths: Vec<usize> = lines.iter().map(String::len).collect();
        assert_eq!(lengths, [1, LINE_LIMIT, LINE_LIMIT, LINE_LIMIT, LINE_LIMIT / 2, 1, 4]);
        assert_eq!(lines.concat(), input.replace('\n', ""), "every byte, in order");
    }
    #[test]
    fn pieces_end_at_character_boundaries() {
        // One ASCII byte, then two- and four-byte characters without a newline for 2.5 times
        // the limit: the limit falls inside a character, which must reach the sink whole.
        for ch in ["é", "😀"] {
            let input = format!("a{}\nend\n", ch.repeat(LINE_LIMIT * 5 / 2 / ch.len()));
            let (read, write) = nix::unistd::pipe().unwrap();
            let writer = std::thread::spawn({
                let input = input.clone();
                move || std::fs::File::from(write).write_all(input.as_bytes()).unwrap()
            });
            let sink = Lines::default();
            let mut stream = OutputPipe::new(Some(read), "stdout");
            let mut buf = vec![0u8; 64 * 1024];
            while stream.pipe.is_some() {
                stream.drain(&sink, &mut buf);
                assert!(stream.partial.len() <= LINE_LIMIT);
            }
            writer.join().unwrap();
            let lines = sink.0.into_inner().unwrap();
            assert!(lines.len() > 2, "the long line went in pieces");
            assert!(!lines.iter().any(|l| l.contains('\u{FFFD}')), "no character cut in two");
            assert_eq!(lines.concat(), input.replace('\n', ""), "every character, in order");
        }
    }
}
