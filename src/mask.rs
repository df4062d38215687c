//! Secret masking of everything the agent prints.
//!
//! A [`Masker`] is built once per step from the secret values (with [`Masker::new`],
//! [`Masker::from_named`] or a [`MaskerBuilder`]) and shared by every output stream. Each stream
//! gets its own [`MaskStream`], which masks bytes fed in chunks of any size, as they arrive.
//! [`SecretNames`] is the policy that decides which `opschain.env` variables hold secrets.
//!
//! # What is masked
//!
//! Every secret at least [`MIN_SECRET_LEN`] bytes long is hidden, together with the forms it takes
//! when a program re-encodes it before printing: standard and URL-safe base64 (padded and
//! unpadded), its escape inside a JSON string, and its percent-encoding. Each occurrence of any of
//! these *patterns* becomes [`MASK`]. Where occurrences overlap, the one starting first wins, and
//! of those starting at the same byte the longest: with the secrets `abcd` and `abcdefgh`,
//! `abcdefgh` becomes `****`, never `****efgh`.
//!
//! Known limits, both inherent to matching fixed patterns:
//!
//! * The base64 of a secret is caught only when it is encoded alone. Inside a longer encoding (as
//!   `user:secret` in an HTTP Basic header) the secret's characters depend on its offset modulo 3
//!   and on its neighbours, so no fixed pattern matches it reliably.
//! * Two patterns that overlap without one being a prefix of the other (`abcd` and `cdef` in
//!   `abcdef`) print as `****ef`: the leftmost match wins and matching resumes after it.
//!
//! # Streaming
//!
//! Output arrives in chunks cut anywhere, so a secret may be split across chunks. A [`MaskStream`]
//! holds back only the tail of what it was given that could still grow into a match (a *carry*
//! shorter than the longest pattern) and writes out everything before it at once, so ordinary
//! output is not delayed. The streamed output equals [`Masker::mask_bytes`] of the whole stream.
//!
//! The cost on output with no secret in it is one prefiltered aho-corasick search of each chunk
//! and a walk of at most a few dozen bytes at its end; with no secrets at all, a plain copy.
//!
//! aho-corasick's own stream replacement is not used: it supports only the standard match
//! semantics, where `abcd` would be reported before `abcdefgh` could be seen (leaking `efgh`), and it
//! holds output back in its own buffer with no way to release it on an idle timeout.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::nfa::contiguous;
use aho_corasick::{Anchored, BuildError, Input, MatchError, MatchKind};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;

/// What each occurrence of a secret, or of one of its encodings, is replaced by.
pub const MASK: &str = "****";

/// The shortest secret, in bytes, that is masked by default.
///
/// Masking a shorter value would destroy ordinary output (a secret `a` or `no` occurs in nearly
/// every line) while hiding little: such a secret can be guessed anyway. Shorter secrets are left
/// unmasked and reported as [`ShortSecret`]s so the user can fix them. Change it with
/// [`MaskerBuilder::min_secret_len`].
pub const MIN_SECRET_LEN: usize = 4;

/// The environment variable from which the agent reads the [`SecretNames`] patterns.
pub const SECRET_PATTERNS_ENV: &str = "OPSCHAIN_SECRET_PATTERNS";

/// The [`SecretNames`] patterns used when [`SECRET_PATTERNS_ENV`] is not set.
pub const DEFAULT_SECRET_PATTERNS: &str = "*_PASSWORD,*_TOKEN,*_SECRET,*_KEY,PASSWORD,TOKEN,SECRET";

/// Masks secrets in text: the compiled set of secret values and their encodings.
///
/// Build it once per step and share it: cloning is cheap (the automata sit behind an [`Arc`]).
/// The default value masks nothing, as does a masker built from no secrets; its operations are then
/// plain copies.
///
/// Its `Debug` output shows counts only, never a secret.
#[derive(Clone, Default)]
pub struct Masker {
    /// `None` when there is nothing to mask.
    engine: Option<Arc<Engine>>,
}

/// The error of [`MaskerBuilder::build`]: the automata that find the secrets could not be built.
///
/// This happens only past aho-corasick's size limits (around 2³¹ automaton states), far beyond
/// any real set of secrets.
#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    /// An automaton exceeded aho-corasick's limits.
    #[error("cannot build the secret-masking automaton: {0}")]
    Build(#[from] BuildError),
    /// The automaton cannot run the unanchored search masking needs.
    #[error("the secret-masking automaton cannot search: {0}")]
    Search(#[from] MatchError),
}

/// A secret left unmasked because it is shorter than the minimum length (by default
/// [`MIN_SECRET_LEN`]). It names the secret, never shows its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShortSecret {
    /// The name the secret was given, e.g. its environment variable.
    pub name: String,
    /// Its length in bytes.
    pub len: usize,
    /// The minimum length it fell short of.
    pub min_len: usize,
}

impl fmt::Display for ShortSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "secret {} is not masked in the output: it is {} bytes long, shorter than the {} bytes \
             needed to mask it without destroying ordinary output",
            self.name, self.len, self.min_len
        )
    }
}

/// Builds a [`Masker`] with a non-default policy, and reports a build failure as an error
/// instead of failing closed as [`Masker::new`] does.
#[derive(Clone, Debug)]
pub struct MaskerBuilder {
    /// Secrets shorter than this many bytes are not masked. Invariant: at least 1.
    min_secret_len: usize,
}

impl Default for MaskerBuilder {
    fn default() -> MaskerBuilder {
        MaskerBuilder::new()
    }
}

impl MaskerBuilder {
    /// A builder with the default policy: secrets of at least [`MIN_SECRET_LEN`] bytes are masked.
    pub fn new() -> MaskerBuilder {
        MaskerBuilder { min_secret_len: MIN_SECRET_LEN }
    }

    /// Sets the shortest secret, in bytes, that is masked; shorter ones are reported as
    /// [`ShortSecret`]s. Default [`MIN_SECRET_LEN`]; 0 is taken as 1.
    pub fn min_secret_len(&mut self, len: usize) -> &mut MaskerBuilder {
        self.min_secret_len = len.max(1);
        self
    }

    /// Builds a masker for these secret values. Empty and too-short values are skipped; use
    /// [`MaskerBuilder::build_named`] to learn which.
    pub fn build<I, S>(&self, secrets: I) -> Result<Masker, MaskError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let (values, _) = self.partition(secrets.into_iter().map(|value| (String::new(), value)));
        Masker::compile(values)
    }

    /// Builds a masker for these `(name, value)` secrets, and lists those too short to be
    /// masked by name. Empty values are skipped silently: they have nothing to hide.
    pub fn build_named<I, N, S>(&self, secrets: I) -> Result<(Masker, Vec<ShortSecret>), MaskError>
    where
        I: IntoIterator<Item = (N, S)>,
        N: Into<String>,
        S: Into<String>,
    {
        let (values, short) = self.partition(secrets);
        Ok((Masker::compile(values)?, short))
    }

    /// Splits secrets into the values to mask and the ones too short to.
    fn partition<I, N, S>(&self, secrets: I) -> (Vec<String>, Vec<ShortSecret>)
    where
        I: IntoIterator<Item = (N, S)>,
        N: Into<String>,
        S: Into<String>,
    {
        let mut values = Vec::new();
        let mut short = Vec::new();
        for (name, value) in secrets {
            let value = value.into();
            if value.is_empty() {
                continue;
            }
            if value.len() < self.min_secret_len {
                short.push(ShortSecret { name: name.into(), len: value.len(), min_len: self.min_secret_len });
            } else {
                values.push(value);
            }
        }
        (values, short)
    }
}

impl Masker {
    /// Builds a masker for these secret values with the default policy ([`MaskerBuilder::new`]).
    /// Empty values and values shorter than [`MIN_SECRET_LEN`] are skipped; use
    /// [`Masker::from_named`] to report the latter.
    ///
    /// Should the automata fail to build (see [`MaskError`]), the masker fails closed: it
    /// replaces all output by [`MASK`] rather than print it unmasked.
    pub fn new<I, S>(secrets: I) -> Masker
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        MaskerBuilder::new().build(secrets).unwrap_or_else(|_| Masker::withholding())
    }

    /// Builds a masker for these `(name, value)` secrets with the default policy, and returns
    /// the secrets too short to mask, by name, for the caller to warn about. Fails closed like
    /// [`Masker::new`].
    pub fn from_named<I, N, S>(secrets: I) -> (Masker, Vec<ShortSecret>)
    where
        I: IntoIterator<Item = (N, S)>,
        N: Into<String>,
        S: Into<String>,
    {
        let (values, short) = MaskerBuilder::new().partition(secrets);
        (Masker::compile(values).unwrap_or_else(|_| Masker::withholding()), short)
    }

    /// A builder, to change the policy (see [`MaskerBuilder`]).
    pub fn builder() -> MaskerBuilder {
        MaskerBuilder::new()
    }

    /// True when there is nothing to mask: masking then returns its input unchanged.
    pub fn is_empty(&self) -> bool {
        self.engine.is_none()
    }

    /// How many distinct secret values are masked (each with its encodings).
    pub fn secret_count(&self) -> usize {
        match self.engine.as_deref() {
            Some(Engine::Patterns(patterns)) => patterns.secret_count,
            Some(Engine::Withhold) | None => 0,
        }
    }

    /// Masks every secret in `text`; borrows it when there is none.
    pub fn mask<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.mask_bytes(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            // Patterns are UTF-8 (secrets are `String`s, their encodings ASCII), so a match in
            // UTF-8 text starts and ends on character boundaries and the result is UTF-8. The lossy
            // conversion is only there so that no input can make this panic.
            Cow::Owned(bytes) => Cow::Owned(String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())),
        }
    }

    /// Masks every secret in `bytes`, which need not be UTF-8; borrows them when there is none.
    ///
    /// This is what a [`MaskStream`] writes when fed `bytes` in any chunks and then flushed.
    pub fn mask_bytes<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        let Some(engine) = self.engine.as_deref() else {
            return Cow::Borrowed(bytes);
        };
        if !engine.is_match(bytes) {
            return Cow::Borrowed(bytes);
        }
        let mut out = Vec::with_capacity(bytes.len());
        engine.mask_into(bytes, 0, Hold::Nothing, &mut out);
        Cow::Owned(out)
    }

    /// A streaming masker for one output stream, sharing this masker's automata.
    pub fn stream(&self) -> MaskStream {
        MaskStream { masker: self.clone(), carry: Vec::new(), released: 0 }
    }

    /// Compiles the secret values, already filtered by policy, into a masker.
    fn compile(mut values: Vec<String>) -> Result<Masker, MaskError> {
        values.sort_unstable();
        values.dedup();
        if values.is_empty() {
            return Ok(Masker::default());
        }
        let patterns = Patterns::build(&values)?;
        Ok(Masker { engine: Some(Arc::new(Engine::Patterns(patterns))) })
    }

    /// The fail-closed masker, used when the automata cannot be built.
    fn withholding() -> Masker {
        Masker { engine: Some(Arc::new(Engine::Withhold)) }
    }
}

impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hand-written: the automata's own Debug output would spell out the secrets.
        let mut s = f.debug_struct("Masker");
        match self.engine.as_deref() {
            None => s.field("secrets", &0),
            Some(Engine::Patterns(p)) => s.field("secrets", &p.secret_count).field("patterns", &p.pattern_count),
            Some(Engine::Withhold) => s.field("withholding_all_output", &true),
        };
        s.finish()
    }
}

/// Masks one byte stream fed in chunks of any size (see the [module docs](self) for how).
///
/// Call [`MaskStream::push`] with each chunk read, and [`MaskStream::flush`] at end of stream and
/// when the stream has been idle for a moment, so that a held-back tail is not stuck.
pub struct MaskStream {
    /// The masker whose automata this stream shares.
    masker: Masker,
    /// The undecided tail of the stream: bytes that could still be the start of a pattern, and
    /// after a flush, the ones `flush` wrote out while they could. Invariant: shorter than the
    /// longest pattern; empty when the masker is empty.
    carry: Vec<u8>,
    /// How many leading bytes of `carry` were already written out by [`MaskStream::flush`].
    /// They are kept so that the rest of a secret split by a flush is still masked. Invariant:
    /// `released <= carry.len()`.
    released: usize,
}

impl MaskStream {
    /// Feeds `input`, the next bytes of the stream, and appends to `out` everything that can be
    /// released now, masked.
    ///
    /// Only a tail that could still be the start of a secret is held back (see
    /// [`MaskStream::pending`]); with an empty masker this is a plain copy.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let Some(engine) = self.masker.engine.as_deref() else {
            out.extend_from_slice(input);
            return;
        };
        if self.carry.is_empty() {
            // The common case: search the input where it lies instead of copying it first.
            let cut = engine.mask_into(input, 0, Hold::Prefix, out);
            self.carry.extend_from_slice(input.get(cut.held..).unwrap_or_default());
            self.released = 0;
        } else {
            self.carry.extend_from_slice(input);
            let cut = engine.mask_into(&self.carry, self.released, Hold::Prefix, out);
            self.released = self.released.saturating_sub(cut.held);
            self.carry.drain(..cut.held.min(self.carry.len()));
        }
    }

    /// Releases everything held back, masked, appending it to `out`.
    ///
    /// Call it at end of stream, and when no input came for a short while (the supervisor uses
    /// about 50 ms) so a prompt is not stuck waiting for a secret that will not come. A secret
    /// split exactly by an idle flush cannot be wholly hidden, since its start was written; the
    /// stream remembers that start so the rest is still masked: `hunt`, flush, `er2` prints
    /// `hunt****` for a secret `hunter2`.
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        if self.pending() == 0 {
            return;
        }
        let Some(engine) = self.masker.engine.as_deref() else {
            return;
        };
        let cut = engine.mask_into(&self.carry, self.released, Hold::Nothing, out);
        let keep = engine.hold_start(&self.carry, cut.matched_to);
        self.carry.drain(..keep.min(self.carry.len()));
        self.released = self.carry.len();
    }

    /// How many bytes are held back, waiting for more input or a [`MaskStream::flush`]: at most
    /// the longest pattern's length minus one, and 0 when the stream's end cannot start a secret.
    pub fn pending(&self) -> usize {
        self.carry.len().saturating_sub(self.released)
    }
}

impl fmt::Debug for MaskStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hand-written: the carry may hold the start of a secret.
        f.debug_struct("MaskStream").field("masker", &self.masker).field("pending", &self.pending()).finish()
    }
}

/// How a compiled masker finds secrets.
// One value per masker, behind an `Arc`: the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Engine {
    /// The normal case.
    Patterns(Patterns),
    /// Fail-closed: the automata could not be built (see [`MaskError`]), so all output is
    /// replaced by [`MASK`], never printed unmasked.
    Withhold,
}

/// What [`Engine::mask_into`] may leave undecided at the end of its buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hold {
    /// The tail that could still be the start of a pattern: more input is coming.
    Prefix,
    /// Nothing: this is all the input there is for now.
    Nothing,
}

/// How far [`Engine::mask_into`] got in its buffer.
#[derive(Clone, Copy, Debug)]
struct Cut {
    /// End of the last match written as [`MASK`], or 0: matching resumes here.
    matched_to: usize,
    /// Start of the held-back tail: everything before it was decided (and written, apart from
    /// the already released bytes). Invariant: `matched_to <= held <= buffer length`.
    held: usize,
}

impl Engine {
    /// Whether `bytes` hold anything to mask.
    fn is_match(&self, bytes: &[u8]) -> bool {
        match self {
            // A search error cannot happen (unanchored search is what the matcher is built for);
            // if it did, claiming a match makes `mask_into` fail closed.
            Engine::Patterns(p) => !matches!(p.matcher.try_find(&Input::new(bytes)), Ok(None)),
            Engine::Withhold => !bytes.is_empty(),
        }
    }

    /// Writes to `out` the masked form of `buf` up to the held-back tail, leaving out its first
    /// `released` bytes (already written by a flush), and returns where it stopped.
    fn mask_into(&self, buf: &[u8], released: usize, hold: Hold, out: &mut Vec<u8>) -> Cut {
        match self {
            Engine::Patterns(p) => p.mask_into(buf, released, hold, out),
            Engine::Withhold => {
                if buf.len() > released {
                    out.extend_from_slice(MASK.as_bytes());
                }
                Cut { matched_to: buf.len(), held: buf.len() }
            }
        }
    }

    /// See [`Patterns::hold_start`]; the fail-closed engine holds nothing.
    fn hold_start(&self, buf: &[u8], from: usize) -> usize {
        match self {
            Engine::Patterns(p) => p.hold_start(buf, from),
            Engine::Withhold => buf.len(),
        }
    }
}

/// The compiled patterns: every secret and its encodings.
struct Patterns {
    /// Finds the patterns, leftmost-longest. A contiguous NFA used directly, not `AhoCorasick`:
    /// that type links in every engine it might pick (the DFA among them) into a static binary
    /// with a size budget, for no gain at the handful of patterns a step has.
    matcher: contiguous::NFA,
    /// The same patterns under standard semantics, stepped by hand: after reading some bytes its
    /// state is the longest suffix of them that is a prefix of a pattern. That tells how much
    /// of a stream's end must be held back, in one pass over at most the longest pattern's length.
    prefixes: contiguous::NFA,
    /// The unanchored start state of `prefixes`.
    prefix_start: StateID,
    /// The first [`HEAD_LEN`] bytes of each pattern longer than that, found leftmost. A suffix
    /// of the stream at least `HEAD_LEN` long can begin a pattern only where one of these
    /// occurs, so `hold_start` finds the first occurrence (a prefiltered search) and steps
    /// `prefixes` from there rather than across the whole window a long secret (a PEM key, say)
    /// would otherwise mean on every push. `None` when no pattern is longer than `HEAD_LEN`.
    heads: Option<contiguous::NFA>,
    /// The trie node each state of `prefixes` stands for. Invariant: holds every state but the
    /// start state, that is, one entry per distinct non-empty prefix of a pattern.
    nodes: HashMap<StateID, Node>,
    /// The longest pattern's length. Invariant: at least 1.
    max_len: usize,
    /// How many distinct secret values the patterns come from.
    secret_count: usize,
    /// How many distinct patterns there are, secrets and encodings together.
    pattern_count: usize,
}

/// How many leading bytes of a long pattern [`Patterns::heads`] looks for: long enough to be rare
/// in ordinary output, short enough that stepping that many bytes per push costs nothing.
const HEAD_LEN: usize = 16;

/// A non-empty prefix of one or more patterns, as a state of [`Patterns::prefixes`].
#[derive(Clone, Copy, Debug)]
struct Node {
    /// The prefix's length in bytes.
    depth: usize,
    /// True when some pattern is longer than this prefix, so that more bytes could still make a
    /// match; false when the prefix is a whole pattern that no other pattern extends.
    open: bool,
}

impl Patterns {
    /// Compiles the secret values, each with its encodings. `secrets` are distinct and non-empty.
    fn build(secrets: &[String]) -> Result<Patterns, MaskError> {
        let mut patterns: Vec<Vec<u8>> = secrets.iter().flat_map(|s| encoded_forms(s)).collect();
        patterns.sort_unstable();
        patterns.dedup();
        let matcher = contiguous::NFA::builder().match_kind(MatchKind::LeftmostLongest).build(&patterns)?;
        let prefixes = contiguous::NFA::builder().match_kind(MatchKind::Standard).prefilter(false).build(&patterns)?;
        let prefix_start = prefixes.start_state(Anchored::No)?;
        let heads: Vec<&[u8]> = patterns.iter().filter_map(|p| p.get(..HEAD_LEN).filter(|_| p.len() > HEAD_LEN)).collect();
        let heads = if heads.is_empty() { None } else { Some(contiguous::NFA::builder().match_kind(MatchKind::LeftmostFirst).build(heads)?) };
        // Reading a pattern's first k bytes leads to the state of exactly that prefix: it is its
        // own longest suffix that is a prefix of a pattern.
        let mut nodes = HashMap::new();
        for pattern in &patterns {
            let mut sid = prefix_start;
            for (i, &byte) in pattern.iter().enumerate() {
                sid = prefixes.next_state(Anchored::No, sid, byte);
                let node = nodes.entry(sid).or_insert(Node { depth: i + 1, open: false });
                node.open |= i + 1 < pattern.len();
            }
        }
        Ok(Patterns {
            matcher,
            prefixes,
            prefix_start,
            heads,
            nodes,
            max_len: patterns.iter().map(Vec::len).max().unwrap_or(1).max(1),
            secret_count: secrets.len(),
            pattern_count: patterns.len(),
        })
    }

    /// See [`Engine::mask_into`].
    ///
    /// A leftmost-longest match found in `buf` is final unless a pattern could begin at or
    /// before its start and end beyond `buf`, i.e. unless it starts at or after the held-back
    /// tail. So matches before the tail are masked, the bytes between them copied, and the tail
    /// kept for the next call. Once a match runs past the tail's start, the tail is recomputed
    /// from the match's end, as matching resumes there.
    fn mask_into(&self, buf: &[u8], released: usize, hold: Hold, out: &mut Vec<u8>) -> Cut {
        let hold_from = |from: usize| match hold {
            Hold::Prefix => self.hold_start(buf, from),
            Hold::Nothing => buf.len(),
        };
        let Ok(matches) = self.matcher.try_find_iter(Input::new(buf)) else {
            // Cannot happen (see `Engine::is_match`); fail closed.
            return Engine::Withhold.mask_into(buf, released, hold, out);
        };
        let mut pos = 0;
        let mut held = hold_from(0);
        for m in matches {
            if pos > held {
                held = hold_from(pos);
            }
            if m.start() >= held {
                break;
            }
            write_plain(buf, pos.max(released), m.start(), out);
            // The released bytes hold no whole match (a flush keeps only bytes after its last
            // match), so this one ends past them: if it starts among them, it is a secret whose
            // start the flush wrote out, masked from there on.
            out.extend_from_slice(MASK.as_bytes());
            pos = m.end();
        }
        if pos > held {
            held = hold_from(pos);
        }
        write_plain(buf, pos.max(released), held, out);
        Cut { matched_to: pos, held }
    }

    /// Where the tail of `buf` that must be held back starts: the earliest `q >= from` such that
    /// `buf[q..]` is a proper prefix of a pattern (more input could make it a match), or
    /// `buf.len()` when there is none.
    fn hold_start(&self, buf: &[u8], from: usize) -> usize {
        let len = buf.len();
        // Only a suffix shorter than the longest pattern can be a proper prefix of one.
        let mut start = from.max(len.saturating_sub(self.max_len - 1));
        while start < len {
            let Some(suffix) = buf.get(self.step_from(buf, start)..) else {
                return len;
            };
            let sid = suffix.iter().fold(self.prefix_start, |sid, &b| self.prefixes.next_state(Anchored::No, sid, b));
            // No node: the start state, no suffix of `buf[start..]` begins a pattern.
            let Some(node) = self.nodes.get(&sid) else {
                return len;
            };
            let q = len.saturating_sub(node.depth).max(start);
            if node.open {
                return q;
            }
            // `buf[q..]` is a whole pattern nothing extends (the matcher deals with it); a
            // shorter suffix may still be an open prefix.
            start = q + 1;
        }
        len
    }

    /// Where stepping `prefixes` must begin to find the longest suffix of `buf[start..]` that is
    /// a prefix of a pattern: the first occurrence of a head at or after `start`, or failing
    /// that, `HEAD_LEN - 1` bytes from the end, as a shorter suffix needs no head.
    fn step_from(&self, buf: &[u8], start: usize) -> usize {
        let Some(heads) = &self.heads else {
            return start;
        };
        let headless = buf.len().saturating_sub(HEAD_LEN - 1).max(start);
        if start >= buf.len() {
            return start;
        }
        match heads.try_find(&Input::new(buf).range(start..)) {
            Ok(Some(head)) => head.start().clamp(start, headless),
            Ok(None) => headless,
            // Cannot happen (unanchored search is what `heads` is built for); step it all.
            Err(_) => start,
        }
    }
}

/// Appends `buf[from..to]` to `out`, or nothing when that range is empty.
fn write_plain(buf: &[u8], from: usize, to: usize, out: &mut Vec<u8>) {
    if let Some(plain) = buf.get(from..to) {
        out.extend_from_slice(plain);
    }
}

/// The byte strings under which `secret` may be printed: the secret itself; its base64, standard
/// and URL-safe, padded and unpadded; its escape inside a JSON string as serde_json writes it,
/// without the quotes; and its percent-encoding. Duplicates are removed by the caller.
fn encoded_forms(secret: &str) -> Vec<Vec<u8>> {
    let raw = secret.as_bytes();
    let mut forms = vec![raw.to_vec()];
    for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
        forms.push(engine.encode(raw).into_bytes());
    }
    if let Some(json) = json_escaped(secret) {
        forms.push(json);
    }
    forms.push(percent_encoded(raw));
    forms
}

/// `text` as serde_json writes it inside a JSON string, without the quotes.
fn json_escaped(text: &str) -> Option<Vec<u8>> {
    let quoted = serde_json::to_string(text).ok()?;
    let escaped = quoted.strip_prefix('"')?.strip_suffix('"')?;
    Some(escaped.as_bytes().to_vec())
}

/// `bytes` percent-encoded as RFC 3986 prescribes: unreserved characters (ASCII letters and
/// digits, `-`, `.`, `_`, `~`) kept, every other byte written `%XX` in upper-case hex.
///
/// Written by hand: it is a few lines, and fixing the kept set here spares the agent a crate
/// whose default set (which characters it escapes) is another policy to track.
fn percent_encoded(bytes: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xF)]]);
        }
    }
    out
}

/// Which `opschain.env` variable names hold secrets, so that their values get masked.
///
/// A list of glob patterns where `*` matches any run of characters (also none) and every other
/// character matches itself, ignoring ASCII case; a name is a secret when any pattern matches
/// it whole. The default is [`DEFAULT_SECRET_PATTERNS`]: names ending in `_PASSWORD`, `_TOKEN`,
/// `_SECRET` or `_KEY`, and `PASSWORD`, `TOKEN` and `SECRET` alone. The agent reads a replacement
/// list from [`SECRET_PATTERNS_ENV`] with [`SecretNames::parse`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretNames {
    /// The patterns, trimmed. Invariant: none is empty.
    globs: Vec<String>,
}

impl Default for SecretNames {
    fn default() -> SecretNames {
        SecretNames::parse(DEFAULT_SECRET_PATTERNS)
    }
}

impl SecretNames {
    /// Reads a comma-separated list of patterns, e.g. `*_PASSWORD, API_*`. Whitespace around a
    /// pattern and empty entries are ignored, so an empty string matches no name.
    pub fn parse(spec: &str) -> SecretNames {
        let globs = spec.split(',').map(str::trim).filter(|glob| !glob.is_empty()).map(str::to_owned).collect();
        SecretNames { globs }
    }

    /// Whether the variable `name` holds a secret.
    pub fn is_secret(&self, name: &str) -> bool {
        self.globs.iter().any(|glob| glob_matches(glob.as_bytes(), name.as_bytes()))
    }

    /// The patterns, in the order given.
    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.globs.iter().map(String::as_str)
    }
}

/// Whether `name` matches `glob` whole, where `*` matches any run of bytes and every other byte
/// matches itself, ignoring ASCII case.
///
/// Written by hand rather than taken from a glob crate: names are short and `*` is the only
/// wildcard, so the classic match-and-backtrack-to-the-last-star loop below (O(glob × name) at
/// worst) is all it takes, whereas glob crates bring path separators, classes and escapes that
/// variable names have no use for.
fn glob_matches(glob: &[u8], name: &[u8]) -> bool {
    let (mut g, mut n) = (0, 0);
    // After the last `*` seen: where the glob resumes, and the name position that `*` has
    // swallowed up to.
    let mut star: Option<(usize, usize)> = None;
    while let Some(&c) = name.get(n) {
        match glob.get(g) {
            Some(b'*') => {
                star = Some((g + 1, n));
                g += 1;
            }
            Some(p) if p.eq_ignore_ascii_case(&c) => {
                g += 1;
                n += 1;
            }
            _ => match star {
                // Let the last `*` swallow one more byte and retry from there.
                Some((resume, swallowed)) => {
                    g = resume;
                    n = swallowed + 1;
                    star = Some((resume, swallowed + 1));
                }
                None => return false,
            },
        }
    }
    glob.get(g..).is_some_and(|rest| rest.iter().all(|&p| p == b'*'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(masker: &Masker) -> Option<&Patterns> {
        match masker.engine.as_deref() {
            Some(Engine::Patterns(p)) => Some(p),
            _ => None,
        }
    }

    #[test]
    fn encodings_equal_to_the_secret_or_each_other_are_one_pattern() {
        // Length divisible by 3: no padding; no `+`/`/`: the URL-safe alphabet changes nothing;
        // nothing to escape in JSON or a URL. So: the secret and "YWJjZGVm".
        let masker = Masker::new(["abcdef"]);
        assert_eq!(patterns(&masker).map(|p| p.pattern_count), Some(2));
        assert_eq!(patterns(&masker).map(|p| p.max_len), Some(8));
    }

    #[test]
    fn hold_start_skips_a_whole_pattern_nothing_extends() {
        // The longest suffix of "zabcd" that begins a pattern is "abcd", a whole pattern; the
        // shorter "bcd" could still grow into "bcdefg".
        let masker = Masker::new(["abcd", "bcdefg"]);
        let p = patterns(&masker).expect("compiled");
        assert_eq!(p.hold_start(b"zabcd", 0), 2);
        assert_eq!(p.hold_start(b"zabcd", 2), 2);
        assert_eq!(p.hold_start(b"zabcd", 3), 5);
        assert_eq!(p.hold_start(b"zabcd", 5), 5);
        assert_eq!(p.hold_start(b"zabcdx", 0), 6);
        // So the stream masks "abcd" at once, and holds nothing after it.
        let mut stream = masker.stream();
        let mut out = Vec::new();
        stream.push(b"zabcd", &mut out);
        assert_eq!((out.as_slice(), stream.pending()), (&b"z****"[..], 0));
    }

    #[test]
    fn withholding_masker_never_prints_its_input() {
        let masker = Masker::withholding();
        assert!(!masker.is_empty());
        assert_eq!(masker.mask("anything at all"), MASK);
        assert_eq!(masker.mask(""), "");
        let mut stream = masker.stream();
        let mut out = Vec::new();
        stream.push(b"line one\n", &mut out);
        stream.push(b"", &mut out);
        stream.flush(&mut out);
        assert_eq!((out.as_slice(), stream.pending()), (MASK.as_bytes(), 0));
    }

    #[test]
    fn json_escape_matches_serde_json() {
        assert_eq!(json_escaped("plain").as_deref(), Some(&b"plain"[..]));
        assert_eq!(json_escaped("q\"b\\n\n\t\u{1f}/é").as_deref(), Some(&b"q\\\"b\\\\n\\n\\t\\u001f/\xc3\xa9"[..]));
    }

    #[test]
    fn percent_encoding_keeps_only_unreserved_characters() {
        assert_eq!(percent_encoded(b"AZaz09-._~"), b"AZaz09-._~");
        assert_eq!(percent_encoded(b" !*+/:@%\xff\x00"), b"%20%21%2A%2B%2F%3A%40%25%FF%00");
    }

    #[test]
    fn glob_star_matches_any_run_including_none() {
        assert!(glob_matches(b"*_KEY", b"api_key"));
        assert!(glob_matches(b"*_KEY", b"_KEY"));
        assert!(glob_matches(b"A*B*C", b"aXXbYYc"));
        assert!(glob_matches(b"A*B*C", b"ABC"));
        assert!(glob_matches(b"**", b""));
        assert!(glob_matches(b"*AB", b"AAB"));
        assert!(!glob_matches(b"A*B*C", b"ACB"));
        assert!(!glob_matches(b"*_KEY", b"KEY"));
        assert!(!glob_matches(b"KEY", b"KEYS"));
        assert!(!glob_matches(b"", b"X"));
        assert!(glob_matches(b"", b""));
    }
}
