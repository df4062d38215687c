//! Properties documents edited, patched and compared as JSON text, by splicing: the cost of an
//! edit follows the part of the document it touches, not the document's size.
//!
//! A properties document of a few MB (an inventory of servers) is the common case, and most steps
//! change one key of it. Parsing it into a `serde_json::Value` tree costs about ten times its size
//! in memory and tens of milliseconds; serialising it again as much. Here a document stays text:
//!
//! * [`set`] and [`remove`] edit one property in place (the `property set` and `property remove`
//!   helpers). The document is scanned once, and its grammar checked, by a byte scanner that builds
//!   nothing; only the objects on the property's path are split into members, and only their keys
//!   are checked for duplicates. The rest of the text is copied as it is.
//! * [`diff`] turns two versions of a document into the RFC 6902 patch between them. Members whose
//!   text is byte for byte the same are equal and skipped (the unchanged inventory); objects whose
//!   text differs are split and compared member by member; what is left, small, is parsed strictly
//!   and diffed by [`crate::diff`]. So every byte of `after` is either the same as a byte of
//!   `before` (which is valid) or checked strictly: an invalid `after` is refused as
//!   [`crate::json::StrictValue`] would refuse it.
//! * [`diff_known`] does the same for a `before` whose top-level members are known, parsing only
//!   the bytes between the two texts' common prefix and suffix.
//! * [`Document::patch`] applies an RFC 6902 patch whose operations add, replace or remove object
//!   members (what steps' diffs are) to the text of the controller's current properties; it
//!   declines (`None`) anything else, and any operation that would fail, so that the caller
//!   applies `json_patch::patch` to a tree instead and gets its exact result or error.
//! * [`check_strict`] and [`check_members`] check a document as strictly as the strict parser,
//!   in one pass and building nothing: what the agent reads its step context with.
//!
//! The scanner accepts what RFC 8259 accepts; it does not refuse numbers too large for an `f64`
//! (the strict parser does) in the parts it only skips.

use std::borrow::Cow;
use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;

use json_patch::jsonptr::{Pointer, PointerBuf, Token};
use json_patch::{Patch, PatchOperation};
use serde_json::Value;

use super::text::Keys;
use crate::diff::same_bytes;
use crate::json::StrictValue;

/// Why a document could not be scanned or edited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpliceError {
    /// The text is not JSON.
    #[error("invalid JSON at byte {at}: expected {expected}")]
    Syntax {
        /// The byte offset of the problem.
        at: usize,
        /// What the scanner expected there.
        expected: &'static str,
    },
    /// An object on the edited path has the same key twice.
    #[error("duplicate key {key:?} in the object at byte {at}")]
    DuplicateKey {
        /// The key.
        key: String,
        /// The byte offset of the object.
        at: usize,
    },
    /// The document is valid JSON but not an object.
    #[error("the document is not a JSON object")]
    NotAnObject,
    /// A value on the path of an edit is not an object: `depth` counts the path's keys, from 0,
    /// up to and including the one whose value it is.
    #[error("the value of key {depth} of the path is not an object")]
    NotAnObjectOnPath {
        /// The index of the key whose value is not an object.
        depth: usize,
    },
    /// A parent of the property is missing (an RFC 6902 `add` does not create parents).
    #[error("a parent of the property is missing")]
    MissingParent,
    /// The document is not UTF-8 text.
    #[error("the document is not UTF-8 text")]
    Utf8 {
        /// The cause.
        #[source]
        source: std::str::Utf8Error,
    },
    /// A value to insert is not valid JSON (a caller's bug: values are serialised by serde_json).
    #[error("the value is not valid JSON")]
    Value,
}

/// One member of an object, found in its text.
#[derive(Debug, Clone)]
struct Member<'a> {
    /// The key, unescaped.
    key: Cow<'a, str>,
    /// Where the key's opening quote is.
    key_start: usize,
    /// The value's text.
    value: Range<usize>,
}

/// An object's members, in order, and the offset just past its closing brace.
struct Object<'a> {
    members: Vec<Member<'a>>,
    end: usize,
}

fn syntax(at: usize, expected: &'static str) -> SpliceError {
    SpliceError::Syntax { at, expected }
}

/// The offset of the first byte at or after `i` that is not JSON whitespace.
#[inline(always)]
fn ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// Whether the 8 bytes of `w` hold a quote, a backslash or a control character (below 0x20): exact, no
/// false negatives (the usual "has a zero byte" test, on `w` and on `w` xor each byte sought).
#[cfg(test)]
fn special(w: u64) -> bool {
    special_mask(w) != 0
}

/// The word test (`special`) as a mask: the high bit of a byte is set for each special byte, and
/// may be set for a byte above (later in the text than) a special one, never below: so the lowest
/// set bit is in the first special byte (a borrow only runs upwards, from a byte that is itself
/// flagged).
#[inline(always)]
fn special_mask(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    zero(w ^ (ONES * b'"' as u64)) | zero(w ^ (ONES * b'\\' as u64)) | (w.wrapping_sub(ONES * 0x20) & !w & HIGH)
}

/// Skips the string whose opening quote is at `i`; returns the offset past its closing quote.
#[inline(always)]
fn skip_string(b: &[u8], i: usize) -> Result<usize, SpliceError> {
    string_end(b, i).map(|(end, _)| end)
}

/// Skips the string whose opening quote is at `i`; returns the offset past its closing quote and
/// whether the string holds an escape (so that a key without one is borrowed as it is, without a
/// second pass over it). Runs of 8 plain bytes are skipped a word at a time, and the word that
/// holds a special byte (the closing quote, mostly) goes straight to it.
#[inline(always)]
fn string_end(b: &[u8], mut i: usize) -> Result<(usize, bool), SpliceError> {
    let mut escaped = false;
    i += 1;
    loop {
        while let Some(chunk) = b.get(i..i + 8) {
            let mask = special_mask(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
            if mask != 0 {
                i += (mask.trailing_zeros() / 8) as usize;
                break;
            }
            i += 8;
        }
        match b.get(i) {
            Some(b'"') => return Ok((i + 1, escaped)),
            Some(b'\\') => {
                escaped = true;
                match b.get(i + 1) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                    Some(b'u') => {
                        if !b.get(i + 2..i + 6).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                            return Err(syntax(i, "four hex digits after \\u"));
                        }
                        i += 6;
                    }
                    _ => return Err(syntax(i, "a valid escape")),
                }
                continue;
            }
            Some(&c) if c < 0x20 => return Err(syntax(i, "no control character in a string")),
            Some(_) => i += 1,
            None => return Err(syntax(i, "the end of a string")),
        }
    }
}

/// Skips the number at `i`; returns the offset past it.
#[inline(always)]
fn skip_number(b: &[u8], i: usize) -> Result<usize, SpliceError> {
    number_end(b, i).map(|(end, _)| end)
}

/// Skips the number at `i`; returns the offset past it and whether it is an integer (no fraction
/// and no exponent), so that the strict check knows without a second pass over it.
#[inline(always)]
fn number_end(b: &[u8], mut i: usize) -> Result<(usize, bool), SpliceError> {
    let mut integer = true;
    let digits = |b: &[u8], mut i: usize| {
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i, i > start)
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(b, i).0,
        _ => return Err(syntax(i, "a digit")),
    }
    if b.get(i) == Some(&b'.') {
        integer = false;
        let (end, any) = digits(b, i + 1);
        if !any {
            return Err(syntax(end, "a digit after the decimal point"));
        }
        i = end;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        integer = false;
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let (end, any) = digits(b, i);
        if !any {
            return Err(syntax(end, "a digit in the exponent"));
        }
        i = end;
    }
    Ok((i, integer))
}

/// Skips `word` (`true`, `false`, `null`) at `i`.
#[inline(always)]
fn literal(b: &[u8], i: usize, word: &'static [u8]) -> Result<usize, SpliceError> {
    if b.get(i..i + word.len()) == Some(word) {
        Ok(i + word.len())
    } else {
        Err(syntax(i, "a value"))
    }
}

/// Skips a key (a string at `i`), the colon and the whitespace after it; returns where the value
/// starts.
#[inline(always)]
fn key_colon(b: &[u8], i: usize) -> Result<usize, SpliceError> {
    if b.get(i) != Some(&b'"') {
        return Err(syntax(i, "a key"));
    }
    let i = ws(b, skip_string(b, i)?);
    if b.get(i) != Some(&b':') {
        return Err(syntax(i, "':'"));
    }
    Ok(ws(b, i + 1))
}

/// Skips the value that starts at `start` (no whitespace before it), checking its grammar;
/// returns the offset just past it. Iterative: nesting depth costs heap, not stack.
fn skip_value(b: &[u8], start: usize) -> Result<usize, SpliceError> {
    let mut closers: Vec<u8> = Vec::new();
    let mut i = start;
    loop {
        // A value starts at `i`.
        i = match b.get(i) {
            Some(b'{') => {
                i = ws(b, i + 1);
                if b.get(i) == Some(&b'}') {
                    i + 1
                } else {
                    closers.push(b'}');
                    i = key_colon(b, i)?;
                    continue;
                }
            }
            Some(b'[') => {
                i = ws(b, i + 1);
                if b.get(i) == Some(&b']') {
                    i + 1
                } else {
                    closers.push(b']');
                    continue;
                }
            }
            Some(b'"') => skip_string(b, i)?,
            Some(b't') => literal(b, i, b"true")?,
            Some(b'f') => literal(b, i, b"false")?,
            Some(b'n') => literal(b, i, b"null")?,
            Some(b'-' | b'0'..=b'9') => skip_number(b, i)?,
            _ => return Err(syntax(i, "a value")),
        };
        // A value ended at `i`: close containers until one goes on with a comma.
        loop {
            let Some(&closer) = closers.last() else { return Ok(i) };
            i = ws(b, i);
            match b.get(i) {
                Some(b',') => {
                    i = ws(b, i + 1);
                    if closer == b'}' {
                        i = key_colon(b, i)?;
                    }
                    break;
                }
                Some(&c) if c == closer => {
                    closers.pop();
                    i += 1;
                }
                _ => return Err(syntax(i, "',' or the end of a container")),
            }
        }
    }
}

/// Finds the end of the value that starts at `start` without checking a container's contents: a
/// string is skipped as [`skip_string`] does and a scalar is checked; a container ends at the
/// bracket that brings the count of brackets outside strings back to zero (which kind of bracket
/// is not checked). What [`Scan::Skim`] reads values with. About five times fewer instructions
/// than [`skip_value`] on a document of many small objects: a container is classified 64 bytes at
/// a time ([`Block`]) and only its brackets are visited, one at a time.
fn skim_value(b: &[u8], start: usize) -> Result<usize, SpliceError> {
    match b.get(start) {
        Some(b'{' | b'[') => {}
        _ => return skip_value(b, start),
    }
    let mut depth = 0usize;
    // All ones when the block begins inside a string; whether its first byte is escaped.
    let (mut in_string, mut escaped_first) = (0u64, false);
    let mut at = start;
    while at < b.len() {
        let block = Block::at(b, at);
        let mut quotes = block.quotes;
        if block.backslashes != 0 || escaped_first {
            let (escaped, carry) = escapes(block.backslashes, escaped_first);
            quotes &= !escaped;
            escaped_first = carry;
        }
        let inside = prefix_xor(quotes) ^ in_string;
        in_string = 0u64.wrapping_sub(inside >> 63);
        let mut brackets = (block.opens | block.closes) & !inside;
        while brackets != 0 {
            let bit = brackets & brackets.wrapping_neg();
            if block.opens & bit != 0 {
                depth += 1;
            } else {
                depth -= 1;
                if depth == 0 {
                    return Ok(at + bit.trailing_zeros() as usize + 1);
                }
            }
            brackets ^= bit;
        }
        at += 64;
    }
    Err(syntax(b.len(), "the end of a container"))
}

/// The bytes of interest in 64 bytes of text, one bit each (bit `n` for the `n`th byte).
struct Block {
    /// `"`.
    quotes: u64,
    /// `\`.
    backslashes: u64,
    /// `{` and `[`.
    opens: u64,
    /// `}` and `]`.
    closes: u64,
}

impl Block {
    /// The block of the 64 bytes of `b` from `at`; past the end of `b`, as if it went on with
    /// spaces.
    #[inline(always)]
    fn at(b: &[u8], at: usize) -> Block {
        match b.get(at..at + 64) {
            Some(bytes) => Block::of(bytes.try_into().expect("64 bytes")),
            None => {
                let mut padded = [b' '; 64];
                padded[..b.len() - at].copy_from_slice(&b[at..]);
                Block::of(&padded)
            }
        }
    }

    /// Classifies 64 bytes: with SSE2 (always there on x86_64), 16 bytes an instruction; else a
    /// byte at a time. `x | 0x20` folds `[` into `{` and `]` into `}`, and no other byte onto
    /// either.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn of(bytes: &[u8; 64]) -> Block {
        use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8};
        let mut block = Block { quotes: 0, backslashes: 0, opens: 0, closes: 0 };
        // SAFETY: SSE2 is part of the x86_64 baseline; each unaligned load reads 16 of the 64
        // bytes of `bytes`.
        unsafe {
            let (quote, backslash, fold) = (_mm_set1_epi8(b'"' as i8), _mm_set1_epi8(b'\\' as i8), _mm_set1_epi8(0x20));
            let (open, close) = (_mm_set1_epi8(b'{' as i8), _mm_set1_epi8(b'}' as i8));
            for k in 0..4 {
                let v = _mm_loadu_si128(bytes.as_ptr().add(16 * k).cast());
                let folded = _mm_or_si128(v, fold);
                let bits = |m| u64::from(_mm_movemask_epi8(m) as u16) << (16 * k);
                block.quotes |= bits(_mm_cmpeq_epi8(v, quote));
                block.backslashes |= bits(_mm_cmpeq_epi8(v, backslash));
                block.opens |= bits(_mm_cmpeq_epi8(folded, open));
                block.closes |= bits(_mm_cmpeq_epi8(folded, close));
            }
        }
        block
    }

    #[cfg(not(target_arch = "x86_64"))]
    #[inline(always)]
    fn of(bytes: &[u8; 64]) -> Block {
        let mut block = Block { quotes: 0, backslashes: 0, opens: 0, closes: 0 };
        for (n, &c) in bytes.iter().enumerate() {
            let bit = 1u64 << n;
            match c | 0x20 {
                _ if c == b'"' => block.quotes |= bit,
                _ if c == b'\\' => block.backslashes |= bit,
                b'{' => block.opens |= bit,
                b'}' => block.closes |= bit,
                _ => {}
            }
        }
        block
    }
}

/// The bytes of a block escaped by a backslash (`backslashes`: the block's backslashes;
/// `escaped_first`: the previous block ended with a backslash that escapes this one's first
/// byte), and whether this block's last byte escapes the next one's first. A backslash escaped
/// by the one before it escapes nothing. A loop over the backslashes: blocks that have any are
/// few.
#[inline(always)]
fn escapes(backslashes: u64, escaped_first: bool) -> (u64, bool) {
    let mut escaped = u64::from(escaped_first);
    let mut pending = backslashes & !escaped;
    while pending != 0 {
        let n = pending.trailing_zeros();
        if n == 63 {
            return (escaped, true);
        }
        escaped |= 2 << n;
        pending &= !(3 << n);
    }
    (escaped, false)
}

/// Bit `n` of the result is the parity of bits `0..=n` of `x`: of the quotes, whether byte `n` is
/// inside a string (the opening quote counts as inside, the closing one not).
#[inline(always)]
fn prefix_xor(mut x: u64) -> u64 {
    // Unrolled by hand: the agent is built for size, and a loop here is a fifth of a skim.
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    x
}

/// Where the value of the member `key` of the object `b` holds is, found by skimming: `b` is an
/// object (whitespace around it allowed) whose members before that one are walked with their keys'
/// strings checked and their values skimmed (`skim_value`: a container's brackets outside strings
/// counted, its contents not checked); the walk stops at the first member whose key is spelled
/// `key` with no escape, and nothing after it is read. `Ok(None)` when the object ends without
/// one. What the controller finds a result's `step.properties` with, to leave it out of what it
/// parses (the text around it is then parsed strictly, which also refuses a key given twice).
pub fn skim_member(b: &[u8], key: &str) -> Result<Option<Range<usize>>, SpliceError> {
    let start = ws(b, 0);
    if b.get(start) != Some(&b'{') {
        return Err(syntax(start, "an object"));
    }
    let mut i = ws(b, start + 1);
    if b.get(i) == Some(&b'}') {
        return Ok(None);
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return Err(syntax(i, "a key"));
        }
        let (key_end, escaped) = string_end(b, i)?;
        let colon = ws(b, key_end);
        if b.get(colon) != Some(&b':') {
            return Err(syntax(colon, "':'"));
        }
        let value_start = ws(b, colon + 1);
        let value_end = skim_value(b, value_start)?;
        if !escaped && &b[i + 1..key_end - 1] == key.as_bytes() {
            return Ok(Some(value_start..value_end));
        }
        let next = ws(b, value_end);
        match b.get(next) {
            Some(b',') => i = ws(b, next + 1),
            Some(b'}') => return Ok(None),
            _ => return Err(syntax(next, "',' or '}'")),
        }
    }
}

/// Checks that `text` is one JSON value, as strictly as [`crate::json::StrictValue`] reads one:
/// no object has a key twice (at any depth), and every number is a finite `f64`. Builds nothing:
/// the keys of the objects being walked are kept on one stack (`Keys`, shared with `properties::text`), borrowed from the text.
pub fn check_strict(text: &str) -> Result<(), SpliceError> {
    check(text, 0).map(drop)
}

/// A member found by [`check_members`]: its depth (1 for a member of the root object), its key,
/// and its value's range.
pub type Found<'a> = (usize, Cow<'a, str>, Range<usize>);

/// [`check_strict`], also returning every object member at a depth of at most `depth`, in the
/// order their values end (a member after the members inside it).
pub fn check_members(text: &str, depth: usize) -> Result<Vec<Found<'_>>, SpliceError> {
    check(text, depth)
}

/// How deep [`check_strict`] lets containers nest (100): below serde_json's recursion limit
/// (128), so that a document the scanner takes, the strict parser takes too (deeper ones are left
/// to the parser, which refuses them with its own error).
const MAX_NESTING: usize = 100;

/// [`check_strict`] and [`check_members`].
fn check(text: &str, depth: usize) -> Result<Vec<Found<'_>>, SpliceError> {
    let mut found = Vec::new();
    // The members being read at a depth of at most `depth`: depth, key, where the value starts.
    let mut pending: Vec<(usize, Cow<'_, str>, usize)> = Vec::new();
    let b = text.as_bytes();
    let mut keys = Keys::default();
    // The open containers: each closer, for an object where its keys begin on `keys`, and where
    // it opened.
    let mut open: Vec<(u8, usize, usize)> = Vec::new();
    let mut i = ws(b, 0);
    loop {
        // A value starts at `i`.
        if open.len() >= MAX_NESTING {
            return Err(syntax(i, "less nesting"));
        }
        i = match b.get(i) {
            Some(b'{') => {
                let brace = i;
                i = ws(b, i + 1);
                if b.get(i) == Some(&b'}') {
                    i + 1
                } else {
                    let start = keys.open();
                    open.push((b'}', start, brace));
                    i = strict_key(text, i, &mut keys, start, (open.len() <= depth).then_some((open.len(), &mut pending)))?;
                    continue;
                }
            }
            Some(b'[') => {
                i = ws(b, i + 1);
                if b.get(i) == Some(&b']') {
                    i + 1
                } else {
                    open.push((b']', 0, i));
                    continue;
                }
            }
            Some(b'"') => skip_string(b, i)?,
            Some(b't') => literal(b, i, b"true")?,
            Some(b'f') => literal(b, i, b"false")?,
            Some(b'n') => literal(b, i, b"null")?,
            Some(b'-' | b'0'..=b'9') => {
                let (end, integer) = number_end(b, i)?;
                // Up to 15 digits without a fraction or exponent is an integer that fits; the rest
                // is read as serde_json reads it, and refused when it is not finite.
                if (end - i > 15 || !integer) && !text[i..end].parse::<f64>().is_ok_and(f64::is_finite) {
                    return Err(syntax(i, "a number in range"));
                }
                end
            }
            _ => return Err(syntax(i, "a value")),
        };
        // A value ended at `i`: close containers until one goes on with a comma.
        loop {
            if pending.last().is_some_and(|p| p.0 == open.len()) {
                let (d, key, value) = pending.pop().expect("checked");
                found.push((d, key, value..i));
            }
            let Some(&(closer, start, opened)) = open.last() else {
                let end = ws(b, i);
                return if end == b.len() { Ok(found) } else { Err(syntax(end, "the end of the value")) };
            };
            i = ws(b, i);
            match b.get(i) {
                Some(b',') => {
                    i = ws(b, i + 1);
                    if closer == b'}' {
                        i = strict_key(text, i, &mut keys, start, (open.len() <= depth).then_some((open.len(), &mut pending)))?;
                    }
                    break;
                }
                Some(&c) if c == closer => {
                    if closer == b'}' {
                        // An object's first keys were checked as they came; a large one's are now.
                        keys.close(start).map_err(|key| SpliceError::DuplicateKey { key, at: opened })?;
                    }
                    open.pop();
                    i += 1;
                }
                _ => return Err(syntax(i, "',' or the end of a container")),
            }
        }
    }
}

/// Reads the key at `i` of the object whose keys begin at `start` on `keys`, refusing one it
/// already has, and the colon after it; returns where the value starts. `record`: the object's
/// depth and the list to note the member on, when its members are wanted.
#[allow(clippy::type_complexity)]
fn strict_key<'a>(
    text: &'a str,
    i: usize,
    keys: &mut Keys<'a>,
    start: usize,
    record: Option<(usize, &mut Vec<(usize, Cow<'a, str>, usize)>)>,
) -> Result<usize, SpliceError> {
    let b = text.as_bytes();
    let (key, end) = key_at(text, i)?;
    let noted = record.as_ref().map(|_| key.clone());
    if !keys.insert(start, key) {
        return Err(SpliceError::DuplicateKey { key: text[i + 1..end - 1].to_string(), at: i });
    }
    let colon = ws(b, end);
    if b.get(colon) != Some(&b':') {
        return Err(syntax(colon, "':'"));
    }
    let value = ws(b, colon + 1);
    if let (Some((depth, pending)), Some(key)) = (record, noted) {
        pending.push((depth, key, value));
    }
    Ok(value)
}

/// The key whose opening quote is at `i` in `text`, unescaped (borrowed when it has no escape),
/// and where it ends (after its closing quote). Always inlined: it is on the strict check's path for
/// every key, and the agent is built for size.
#[inline(always)]
fn key_at(text: &str, i: usize) -> Result<(Cow<'_, str>, usize), SpliceError> {
    let b = text.as_bytes();
    if b.get(i) != Some(&b'"') {
        return Err(syntax(i, "a key"));
    }
    let (end, escaped) = string_end(b, i)?;
    let key = if escaped {
        Cow::Owned(serde_json::from_str::<String>(&text[i..end]).map_err(|_| syntax(i, "a valid key"))?)
    } else {
        // SAFETY: bytes `i` and `end - 1` are the key's quotes (ASCII), so `i + 1` and `end - 1`
        // are character boundaries of `text`, within it. Unchecked: the boundary checks of a
        // `str` slice were a tenth of the strict check's cost per key (callgrind).
        Cow::Borrowed(unsafe { text.get_unchecked(i + 1..end - 1) })
    };
    Ok((key, end))
}

/// How the values of an object's members are read when the object is split: each value's grammar
/// checked ([`skip_value`]), or only its extent found ([`skim_value`]: a container's brackets
/// outside strings counted, a block of 64 bytes at a time), for text known to be valid or checked
/// later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Check every value's grammar.
    Check,
    /// Find where each value ends; a container's contents are not checked.
    Skim,
}

/// The member whose key's opening quote is at `i` in `text`: its key, the `:` and its value (its
/// grammar checked, or with [`Scan::Skim`] only its extent found).
fn member_at(text: &str, i: usize, scan: Scan) -> Result<Member<'_>, SpliceError> {
    let b = text.as_bytes();
    let (key, key_end) = key_at(text, i)?;
    let colon = ws(b, key_end);
    if b.get(colon) != Some(&b':') {
        return Err(syntax(colon, "':'"));
    }
    let value_start = ws(b, colon + 1);
    let value_end = match scan {
        Scan::Check => skip_value(b, value_start)?,
        Scan::Skim => skim_value(b, value_start)?,
    };
    Ok(Member { key, key_start: i, value: value_start..value_end })
}

/// The members of the object whose `{` is at `start`, each value read as `scan` says, and no key
/// twice.
fn object(text: &str, start: usize, scan: Scan) -> Result<Object<'_>, SpliceError> {
    let b = text.as_bytes();
    debug_assert_eq!(b.get(start), Some(&b'{'));
    let mut members = Vec::new();
    let mut i = ws(b, start + 1);
    if b.get(i) == Some(&b'}') {
        return Ok(Object { members, end: i + 1 });
    }
    loop {
        let member = member_at(text, i, scan)?;
        let next = ws(b, member.value.end);
        members.push(member);
        match b.get(next) {
            Some(b',') => i = ws(b, next + 1),
            Some(b'}') => {
                check_keys(&members, start)?;
                return Ok(Object { members, end: next + 1 });
            }
            _ => return Err(syntax(next, "',' or '}'")),
        }
    }
}

/// Refuses an object (at `at`) that has a key twice.
fn check_keys(members: &[Member<'_>], at: usize) -> Result<(), SpliceError> {
    let duplicate = |key: &str| SpliceError::DuplicateKey { key: key.to_string(), at };
    if members.len() <= 16 {
        for (n, m) in members.iter().enumerate() {
            if members[..n].iter().any(|o| o.key == m.key) {
                return Err(duplicate(&m.key));
            }
        }
    } else {
        let mut seen = HashSet::with_capacity(members.len());
        for m in members {
            if !seen.insert(m.key.as_ref()) {
                return Err(duplicate(&m.key));
            }
        }
    }
    Ok(())
}

/// The root object of a document: its `{` is the first byte that is not whitespace, and nothing
/// but whitespace follows it. Its members' values are read as `scan` says.
fn root(text: &str, scan: Scan) -> Result<Object<'_>, SpliceError> {
    let b = text.as_bytes();
    let start = ws(b, 0);
    match b.get(start) {
        Some(b'{') => {}
        Some(_) => {
            // Valid JSON of another type, or not JSON at all.
            let end = skip_value(b, start)?;
            return Err(if ws(b, end) == b.len() { SpliceError::NotAnObject } else { syntax(ws(b, end), "the end of the document") });
        }
        None => return Err(syntax(start, "a value")),
    }
    let object = object(text, start, scan)?;
    let end = ws(b, object.end);
    if end != b.len() {
        return Err(syntax(end, "the end of the document"));
    }
    Ok(object)
}

/// `text` with `range` replaced by `with`.
fn replace(text: &str, range: Range<usize>, with: &str) -> String {
    let mut out = String::with_capacity(text.len() - range.len() + with.len());
    out.push_str(&text[..range.start]);
    out.push_str(with);
    out.push_str(&text[range.end..]);
    out
}

/// `"key":value`, and around the value an object for each of `rest`, innermost last.
fn member_text(key: &str, rest: &[String], value: &str) -> String {
    let mut out = serde_json::to_string(key).expect("a string serialises");
    out.push(':');
    for k in rest {
        out.push('{');
        out.push_str(&serde_json::to_string(k).expect("a string serialises"));
        out.push(':');
    }
    out.push_str(value);
    out.extend(std::iter::repeat_n('}', rest.len()));
    out
}

/// An edit of a document's text: `with` in place of the bytes `range`, the rest kept byte for
/// byte. What [`set_splice`] and [`remove_splice`] return, so that a caller can write the edited
/// document from the text it has (the part before, `with`, the part after) without copying it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Splice {
    /// The bytes replaced. Invariant: within the text the splice was made for, on character
    /// boundaries.
    pub range: Range<usize>,
    /// What replaces them.
    pub with: String,
}

impl Splice {
    /// The edited text (`text` is the document the splice was made for).
    pub fn apply(&self, text: &str) -> String {
        replace(text, self.range.clone(), &self.with)
    }
}

/// Sets the property at `keys` of the document `text` to `value` (JSON text), creating objects on
/// the way, as [`super::set`] does to a tree: an existing member keeps its place, a new one goes
/// last. The rest of the text is kept byte for byte.
pub fn set(text: &str, keys: &[String], value: &str) -> Result<String, SpliceError> {
    set_splice(text, keys, value).map(|splice| splice.apply(text))
}

/// [`set`], as the edit to make. Only the objects on the property's path are split into members
/// (their keys checked, no key twice); the other values are skimmed (`Scan::Skim`), not
/// checked: the document is the action's copy, and the agent checks strictly every byte of it
/// that differs from what it wrote when the action ends ([`diff_known`]).
pub fn set_splice(text: &str, keys: &[String], value: &str) -> Result<Splice, SpliceError> {
    let vb = value.as_bytes();
    if skip_value(vb, 0).ok() != Some(vb.len()) {
        return Err(SpliceError::Value);
    }
    set_at(text, root(text, Scan::Skim)?, keys, value, true, Scan::Skim)
}

/// [`set_splice`] in the object `object` found in `text`, nested objects read as `scan` says; with
/// `create` false, a missing parent is [`SpliceError::MissingParent`] rather than made (RFC 6902's
/// `add`).
fn set_at<'a>(text: &'a str, mut object: Object<'a>, keys: &[String], value: &str, create: bool, scan: Scan) -> Result<Splice, SpliceError> {
    let b = text.as_bytes();
    for (depth, key) in keys.iter().enumerate() {
        let last = depth + 1 == keys.len();
        match object.members.iter().find(|m| m.key == key.as_str()) {
            Some(m) if last => return Ok(Splice { range: m.value.clone(), with: value.to_string() }),
            Some(m) if b[m.value.start] == b'{' => {
                let start = m.value.start;
                object = self::object(text, start, scan)?;
            }
            Some(_) => return Err(SpliceError::NotAnObjectOnPath { depth }),
            None if !create && !last => return Err(SpliceError::MissingParent),
            None => {
                let mut member = member_text(key, &keys[depth + 1..], value);
                if !object.members.is_empty() {
                    member.insert(0, ',');
                }
                // Before the closing brace (whitespace before it stays before the new member).
                let at = object.end - 1;
                return Ok(Splice { range: at..at, with: member });
            }
        }
    }
    Err(SpliceError::NotAnObjectOnPath { depth: 0 })
}

/// Removes the property at `keys` of the document `text`, as [`super::remove`] does to a tree;
/// `None` when it is not there (the text is unchanged).
pub fn remove(text: &str, keys: &[String]) -> Result<Option<String>, SpliceError> {
    Ok(remove_splice(text, keys)?.map(|splice| splice.apply(text)))
}

/// [`remove`], as the edit to make; the document is read as [`set_splice`] reads it.
pub fn remove_splice(text: &str, keys: &[String]) -> Result<Option<Splice>, SpliceError> {
    remove_at(text, root(text, Scan::Skim)?, keys, Scan::Skim)
}

/// [`remove_splice`] in the object `object` found in `text`, nested objects read as `scan` says.
fn remove_at<'a>(text: &'a str, mut object: Object<'a>, keys: &[String], scan: Scan) -> Result<Option<Splice>, SpliceError> {
    let b = text.as_bytes();
    for (depth, key) in keys.iter().enumerate() {
        let Some(at) = object.members.iter().position(|m| m.key == key.as_str()) else { return Ok(None) };
        let m = &object.members[at];
        if depth + 1 == keys.len() {
            return Ok(Some(Splice { range: member_span(&object.members, at), with: String::new() }));
        }
        if b[m.value.start] != b'{' {
            return Ok(None);
        }
        let start = m.value.start;
        object = self::object(text, start, scan)?;
    }
    Ok(None)
}

/// Whether the object `object` found in `text` has a member at `keys`, every parent an object;
/// `None` when a parent is missing or not an object. Nested objects are read as `scan` says.
fn has_at<'a>(text: &'a str, mut object: Object<'a>, keys: &[String], scan: Scan) -> Option<bool> {
    for (depth, key) in keys.iter().enumerate() {
        let Some(m) = object.members.iter().find(|m| m.key == key.as_str()) else {
            return (depth + 1 == keys.len()).then_some(false);
        };
        if depth + 1 == keys.len() {
            return Some(true);
        }
        let start = m.value.start;
        if text.as_bytes()[start] != b'{' {
            return None;
        }
        object = self::object(text, start, scan).ok()?;
    }
    None
}

/// The text to cut to remove member `at` with one comma: from the end of the previous value, or
/// for the first member up to the next member's key.
fn member_span(members: &[Member<'_>], at: usize) -> Range<usize> {
    let m = &members[at];
    match (at.checked_sub(1).map(|p| &members[p]), members.get(at + 1)) {
        (Some(prev), _) => prev.value.end..m.value.end,
        (None, Some(next)) => m.key_start..next.key_start,
        (None, None) => m.key_start..m.value.end,
    }
}

/// Values smaller than this (both sides together, in bytes) are parsed and diffed as trees rather
/// than split further (4 KiB): the tree diff is cheap at that size and its patch the same.
const SMALL: usize = 4096;

/// Appends to `ops` the RFC 6902 patch that turns the document `before` into `after`, as
/// [`crate::diff::diff`] of their trees would (the same operations on the parts that differ).
/// `before` must be valid (it is the agent's own copy); `after` is checked: an error means it is
/// not a valid, strict JSON object, and the caller explains it with the strict parser.
pub fn diff(before: &str, after: &str, ops: &mut Vec<PatchOperation>) -> Result<(), SpliceError> {
    let (b, a) = (root(before, Scan::Check)?, root(after, Scan::Check)?);
    diff_members(before, &b, after, &a, &mut PointerBuf::new(), ops)
}

/// A top-level member's place in a document's text: its key (unescaped), the offset of the key's
/// opening quote, and the range of its value.
pub type Span = (String, usize, Range<usize>);

/// [`diff`], for a `before` whose top-level members are known (`members`, in order): only the
/// part of `after` that differs from `before` is scanned. The two texts' common prefix and suffix
/// are found by comparing bytes; the members of `before` that lie wholly in the prefix are in
/// `after` at the same offsets, and `after` is parsed from the end of the last of them until it
/// reaches, inside the common suffix, the start of a member of `before`: from there on the two
/// are the same text. So adding a key to a document of any size scans a few bytes.
pub fn diff_known(before: &str, members: &[Span], after: &str, ops: &mut Vec<PatchOperation>) -> Result<(), SpliceError> {
    let (bb, ab) = (before.as_bytes(), after.as_bytes());
    let prefix = common(bb.len().min(ab.len()), |at, len| same_bytes(&bb[at..at + len], &ab[at..at + len]));
    if prefix == bb.len() && prefix == ab.len() {
        return Ok(());
    }
    let Some(from) = known_window(before, members, prefix) else { return diff(before, after, ops) };
    let suffix = common_suffix(bb, prefix, ab, prefix);
    diff_window(before, members, Window { text: after, at: 0, len: ab.len(), prefix, suffix }, from, ops)
}

/// [`diff_known`] for an `after` known only from where it first differs from `before`: its first
/// `prefix` bytes are `before`'s, and `rest` is what follows them (a copy read back in pieces and
/// compared with what was written, so that only the part that differs is held: see the agent's
/// end of step). `prefix` must be on a character boundary of `before`. `Ok(false)`: the
/// difference starts too early for the known members to help (at the root's brace), and the
/// caller diffs the whole texts instead.
pub fn diff_known_rest(before: &str, members: &[Span], prefix: usize, rest: &str, ops: &mut Vec<PatchOperation>) -> Result<bool, SpliceError> {
    let Some(from) = known_window(before, members, prefix) else { return Ok(false) };
    let suffix = common_suffix(before.as_bytes(), prefix, rest.as_bytes(), 0);
    // `after` from `from` on: the part of the common prefix after the last unchanged member, then
    // the rest (in the usual case, a member added or changed near the end: a few bytes).
    let mut text = String::with_capacity(prefix - from + rest.len());
    text.push_str(&before[from..prefix]);
    text.push_str(rest);
    diff_window(before, members, Window { text: &text, at: from, len: prefix + rest.len(), prefix, suffix }, from, ops)?;
    Ok(true)
}

/// Where [`diff_known`] starts parsing `after` when the two texts first differ at `prefix`: the
/// end of the last member of `before` wholly in the common prefix, or just inside the root's
/// brace; `None` when the difference starts at or before that brace.
fn known_window(before: &str, members: &[Span], prefix: usize) -> Option<usize> {
    let bb = before.as_bytes();
    let open = ws(bb, 0);
    if bb.get(open) != Some(&b'{') || prefix <= open {
        return None;
    }
    let first = members.iter().position(|m| m.2.end > prefix).unwrap_or(members.len());
    Some(match first.checked_sub(1) {
        Some(last) => members[last].2.end,
        None => open + 1,
    })
}

/// The length of the common suffix of `a[a_from..]` and `b[b_from..]`.
fn common_suffix(a: &[u8], a_from: usize, b: &[u8], b_from: usize) -> usize {
    let room = (a.len() - a_from).min(b.len() - b_from);
    common(room, |at, len| same_bytes(&a[a.len() - at - len..a.len() - at], &b[b.len() - at - len..b.len() - at]))
}

/// The part of `after` that [`diff_window`] reads: `text` is `after[at..]`; `after` is `len`
/// bytes long, and has `prefix` bytes in common with `before` at its start and `suffix` at its
/// end (not overlapping the prefix).
struct Window<'a> {
    text: &'a str,
    at: usize,
    len: usize,
    prefix: usize,
    suffix: usize,
}

/// [`diff_known`] on `after` as `window` holds it, parsed from `from` (an offset in `after`, given
/// by [`known_window`]; at or after `window.at`). Offsets into `after` are `window.at` more than
/// the same offsets into `window.text`.
fn diff_window(before: &str, members: &[Span], window: Window<'_>, from: usize, ops: &mut Vec<PatchOperation>) -> Result<(), SpliceError> {
    let (bb, ab) = (before.as_bytes(), window.text.as_bytes());
    let (after, base) = (window.text, window.at);
    let prefix = window.prefix;
    let tail = window.len - window.suffix;
    let delta = window.len as isize - bb.len() as isize;
    // The first member the difference may touch.
    let first = members.iter().position(|m| m.2.end > prefix).unwrap_or(members.len());
    // Parse `after` from the end of member `first - 1` (or just inside the root's brace); `i` is
    // an offset into the window.
    let (mut i, mut expect_key) = (from - base, first == 0);
    let mut changed: Vec<Member<'_>> = Vec::new();
    let mut resync = members.len();
    loop {
        if expect_key {
            i = ws(ab, i);
            if first == 0 && changed.is_empty() && ab.get(i) == Some(&b'}') {
                i += 1;
                break;
            }
            // In the common suffix, at the start of a member of `before`: the rest is the same.
            if i + base >= tail {
                let at = ((i + base) as isize - delta) as usize;
                if let Some(k) = members[first..].iter().position(|m| m.1 == at) {
                    resync = first + k;
                    i = usize::MAX;
                    break;
                }
            }
            let member = member_at(after, i, Scan::Check)?;
            i = member.value.end;
            changed.push(member);
            expect_key = false;
        } else {
            i = ws(ab, i);
            match ab.get(i) {
                Some(b',') => {
                    i += 1;
                    expect_key = true;
                }
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return Err(syntax(i, "',' or '}'")),
            }
        }
    }
    if i != usize::MAX && ws(ab, i) != ab.len() {
        return Err(syntax(ws(ab, i), "the end of the document"));
    }
    // No key twice: the parsed members among themselves and against the unchanged ones.
    let kept = || members[..first].iter().chain(&members[resync..]);
    for (n, m) in changed.iter().enumerate() {
        if changed[..n].iter().any(|o| o.key == m.key) || kept().any(|k| k.0 == m.key) {
            return Err(SpliceError::DuplicateKey { key: m.key.to_string(), at: m.key_start });
        }
    }
    let old: Vec<Member<'_>> = members[first..resync].iter().map(|(k, s, v)| Member { key: Cow::Borrowed(k), key_start: *s, value: v.clone() }).collect();
    diff_members(before, &Object { members: old, end: 0 }, after, &Object { members: changed, end: 0 }, &mut PointerBuf::new(), ops)
}

/// The length, up to `limit`, of the run of equal bytes that `same(at, len)` (whether the `len`
/// bytes at `at` of the run are equal) finds: compared a page at a time, then byte by byte within
/// the first page that differs. The callers compare with [`same_bytes`], a word at a time: the
/// static agent's libc (musl) compares byte by byte, seven instructions a byte.
fn common(limit: usize, same: impl Fn(usize, usize) -> bool) -> usize {
    const PAGE: usize = 4096;
    let mut at = 0;
    while at + PAGE <= limit && same(at, PAGE) {
        at += PAGE;
    }
    while at < limit && same(at, 1) {
        at += 1;
    }
    at
}

/// Diffs two objects' members (found in `before` and `after`) under `path`.
fn diff_members(before: &str, b: &Object<'_>, after: &str, a: &Object<'_>, path: &mut PointerBuf, ops: &mut Vec<PatchOperation>) -> Result<(), SpliceError> {
    for old in &b.members {
        if !a.members.iter().any(|m| m.key == old.key) {
            let mut at = path.clone();
            at.push_back(Token::new(old.key.as_ref()));
            ops.push(PatchOperation::Remove(json_patch::RemoveOperation { path: at }));
        }
    }
    // Members are paired in order while the keys match (an edited copy keeps its order).
    let mut cursor = 0;
    for new in &a.members {
        let partner = match b.members.get(cursor) {
            Some(m) if m.key == new.key => Some(m),
            _ => b.members.iter().find(|m| m.key == new.key),
        };
        path.push_back(Token::new(new.key.as_ref()));
        match partner {
            Some(old) => {
                cursor = b.members.iter().position(|m| std::ptr::eq(m, old)).map_or(cursor, |p| p + 1);
                diff_value(&before[old.value.clone()], &after[new.value.clone()], path, ops)?;
            }
            None => ops.push(PatchOperation::Add(json_patch::AddOperation { path: path.clone(), value: strict(&after[new.value.clone()], new.value.start)? })),
        }
        path.pop_back();
    }
    Ok(())
}

/// Diffs two values' texts under `path`.
fn diff_value(before: &str, after: &str, path: &mut PointerBuf, ops: &mut Vec<PatchOperation>) -> Result<(), SpliceError> {
    if before == after {
        return Ok(());
    }
    if before.len() + after.len() >= SMALL && before.starts_with('{') && after.starts_with('{') {
        let (b, a) = (object(before, 0, Scan::Check)?, object(after, 0, Scan::Check)?);
        return diff_members(before, &b, after, &a, path, ops);
    }
    let old: Value = serde_json::from_str(before).map_err(|_| syntax(0, "a valid before document"))?;
    let new = strict(after, 0)?;
    let start = ops.len();
    crate::diff::diff_into(&old, &new, ops);
    if !path.is_root() {
        for op in &mut ops[start..] {
            prefix(op, path);
        }
    }
    Ok(())
}

/// Parses a value strictly (as [`StrictValue`]: no duplicate key, finite numbers).
fn strict(text: &str, at: usize) -> Result<Value, SpliceError> {
    serde_json::from_str::<StrictValue>(text).map(|v| v.0).map_err(|_| syntax(at, "a valid value"))
}

/// Puts `prefix` before an operation's paths.
fn prefix(op: &mut PatchOperation, prefix: &Pointer) {
    let join = |p: &mut PointerBuf| *p = prefix.concat(p);
    match op {
        PatchOperation::Add(o) => join(&mut o.path),
        PatchOperation::Remove(o) => join(&mut o.path),
        PatchOperation::Replace(o) => join(&mut o.path),
        PatchOperation::Move(o) => {
            join(&mut o.path);
            join(&mut o.from);
        }
        PatchOperation::Copy(o) => {
            join(&mut o.path);
            join(&mut o.from);
        }
        PatchOperation::Test(o) => join(&mut o.path),
    }
}

/// A properties document kept as text, with its top-level members found: what the controller
/// holds of each level's current properties, shared by every step that starts on it.
/// [`Document::patch`] applies a step's patch by splicing: an operation under one top-level
/// member scans only that member's text.
#[derive(Debug, Clone)]
pub struct Document {
    /// The text, compact or not, with nothing after the closing brace.
    text: Arc<str>,
    /// Each top-level member's place.
    members: Vec<Span>,
}

/// What a patch operation does, for [`Document::patch`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Edit {
    Add,
    Replace,
    Remove,
}

impl Document {
    /// Finds the members of a document (an object, with nothing but whitespace around it; the
    /// whitespace is dropped).
    pub fn parse(text: &str) -> Result<Document, SpliceError> {
        let trimmed = text.trim_matches([' ', '\t', '\n', '\r']);
        let object = root(trimmed, Scan::Check)?;
        let members = object.members.iter().map(|m| (m.key.clone().into_owned(), m.key_start, m.value.clone())).collect();
        Ok(Document { text: Arc::from(trimmed), members })
    }

    /// The document's text.
    pub fn text(&self) -> &Arc<str> {
        &self.text
    }

    /// Its top-level members' places in the text.
    pub fn members(&self) -> &[Span] {
        &self.members
    }

    /// The document after `patch`, when every operation adds, replaces or removes an object
    /// member whose parents are objects, as `json_patch::patch` would leave it; `None` when an
    /// operation is of another kind or would fail (the caller then applies the patch to a tree,
    /// for its result or its error).
    pub fn patch(&self, patch: &Patch) -> Option<Document> {
        // Each operation's text is made once, at its size, from the text before it (no copy of
        // the document to edit in place, no growth, no copy into the `Arc` after).
        let mut text = self.text.clone();
        let mut members = self.members.clone();
        for op in &patch.0 {
            let (path, value, edit) = match op {
                PatchOperation::Add(o) => (&o.path, Some(&o.value), Edit::Add),
                PatchOperation::Replace(o) => (&o.path, Some(&o.value), Edit::Replace),
                PatchOperation::Remove(o) => (&o.path, None, Edit::Remove),
                _ => return None,
            };
            let keys = keys_of(path)?;
            let value = value.map(|v| serde_json::to_string(v).expect("a JSON value serialises"));
            let (first, rest) = keys.split_first()?;
            let at = members.iter().position(|(k, _, _)| k == first);
            // The text to replace and what replaces it; `new_member`: a member added at the end.
            let (span, with) = match (at, rest.is_empty(), edit) {
                (Some(i), true, Edit::Add | Edit::Replace) => (members[i].2.clone(), value?),
                (Some(i), true, Edit::Remove) => {
                    let span = match (i.checked_sub(1).map(|p| &members[p]), members.get(i + 1)) {
                        (Some(prev), _) => prev.2.end..members[i].2.end,
                        (None, Some(next)) => members[i].1..next.1,
                        (None, None) => members[i].1..members[i].2.end,
                    };
                    (span, String::new())
                }
                (None, true, Edit::Add) => {
                    let mut member = member_text(first, &[], &value?);
                    if !members.is_empty() {
                        member.insert(0, ',');
                    }
                    let close = text.len() - 1;
                    (close..close, member)
                }
                (None, _, _) => return None,
                (Some(i), false, _) => {
                    let range = members[i].2.clone();
                    let sub = &text[range.clone()];
                    if !sub.starts_with('{') {
                        return None;
                    }
                    // The document's own text, checked when it was parsed: its members are skimmed.
                    let object = self::object(sub, 0, Scan::Skim).ok()?;
                    let splice = match edit {
                        Edit::Add => set_at(sub, object, rest, &value?, false, Scan::Skim).ok()?,
                        Edit::Replace => {
                            if !has_at(sub, self::object(sub, 0, Scan::Skim).ok()?, rest, Scan::Skim)? {
                                return None;
                            }
                            set_at(sub, object, rest, &value?, false, Scan::Skim).ok()?
                        }
                        Edit::Remove => remove_at(sub, object, rest, Scan::Skim).ok()??,
                    };
                    // The edit, placed in the document: the member's text is not copied whole.
                    (range.start + splice.range.start..range.start + splice.range.end, splice.with)
                }
            };
            text = spliced(&text, span.clone(), &with);
            let delta = with.len() as isize - span.len() as isize;
            let shift = |n: usize| (n as isize + delta) as usize;
            match (at, rest.is_empty(), edit) {
                (Some(i), true, Edit::Remove) => {
                    members.remove(i);
                    for m in &mut members[i..] {
                        *m = (std::mem::take(&mut m.0), shift(m.1), shift(m.2.start)..shift(m.2.end));
                    }
                    // The first member lost the comma before it: its key starts where the cut did.
                    if i == 0 {
                        if let Some(first) = members.first_mut() {
                            first.1 = span.start;
                        }
                    }
                }
                (Some(i), _, _) => {
                    members[i].2 = members[i].2.start..shift(members[i].2.end);
                    for m in &mut members[i + 1..] {
                        *m = (std::mem::take(&mut m.0), shift(m.1), shift(m.2.start)..shift(m.2.end));
                    }
                }
                (None, _, _) => {
                    let key_start = span.start + usize::from(!members.is_empty());
                    let value_end = span.start + with.len();
                    let value_len = value_end - (key_start + serde_json::to_string(first).expect("a string serialises").len() + 1);
                    members.push((first.clone(), key_start, value_end - value_len..value_end));
                }
            }
        }
        Some(Document { text, members })
    }
}

/// `text` with `range` replaced by `with`, made in its `Arc` at its size: the document is copied
/// once (`Arc::from` a `String` would copy it a second time, into the `Arc`'s allocation).
fn spliced(text: &str, range: Range<usize>, with: &str) -> Arc<str> {
    let pieces = [&text[..range.start], with, &text[range.end..]];
    let len = pieces.iter().map(|p| p.len()).sum();
    let mut bytes = Arc::<[u8]>::new_uninit_slice(len);
    let out = Arc::get_mut(&mut bytes).expect("a new Arc is not shared");
    let mut at = 0;
    for piece in pieces {
        let dst = out[at..at + piece.len()].as_mut_ptr().cast::<u8>();
        // SAFETY: `dst` is `piece.len()` writable bytes of the new allocation, apart from `piece`.
        unsafe { std::ptr::copy_nonoverlapping(piece.as_ptr(), dst, piece.len()) };
        at += piece.len();
    }
    debug_assert_eq!(at, len);
    // SAFETY: every byte was written just above (the pieces' lengths sum to `len`).
    let bytes = unsafe { bytes.assume_init() };
    // SAFETY: the bytes are three `str`s end to end, cut on character boundaries (slicing `text`
    // checks that), so UTF-8; `str` has the layout of `[u8]`.
    unsafe { Arc::from_raw(Arc::into_raw(bytes) as *const str) }
}

/// The keys of a pointer with at least one token.
fn keys_of(path: &Pointer) -> Option<Vec<String>> {
    let keys: Vec<String> = path.tokens().map(|t| t.decoded().into_owned()).collect();
    (!keys.is_empty()).then_some(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(path: &str) -> Vec<String> {
        super::super::parse_path(path).unwrap()
    }

    #[test]
    fn set_edits_in_place_and_keeps_the_rest_of_the_text() {
        let doc = "{\"a\": {\"x\": 1,  \"y\": [1, 2]}, \"b\": \"s\"}";
        assert_eq!(set(doc, &keys("a.x"), "2").unwrap(), "{\"a\": {\"x\": 2,  \"y\": [1, 2]}, \"b\": \"s\"}");
        assert_eq!(set(doc, &keys("a.z.q"), "true").unwrap(), "{\"a\": {\"x\": 1,  \"y\": [1, 2],\"z\":{\"q\":true}}, \"b\": \"s\"}");
        assert_eq!(set("{ }", &keys("/k~1"), "\"v\"").unwrap(), "{ \"k/\":\"v\"}");
        assert_eq!(set(doc, &keys("b.c"), "1"), Err(SpliceError::NotAnObjectOnPath { depth: 0 }));
        assert_eq!(set(doc, &keys("a.y.c"), "1"), Err(SpliceError::NotAnObjectOnPath { depth: 1 }));
        assert_eq!(set("[1]", &keys("a"), "1"), Err(SpliceError::NotAnObject));
    }

    #[test]
    fn remove_cuts_one_member_and_one_comma() {
        let doc = r#"{"a": 1, "b": {"c": 2, "d": 3}, "e": 4}"#;
        assert_eq!(remove(doc, &keys("a")).unwrap().unwrap(), r#"{"b": {"c": 2, "d": 3}, "e": 4}"#);
        assert_eq!(remove(doc, &keys("b.d")).unwrap().unwrap(), r#"{"a": 1, "b": {"c": 2}, "e": 4}"#);
        assert_eq!(remove(doc, &keys("e")).unwrap().unwrap(), r#"{"a": 1, "b": {"c": 2, "d": 3}}"#);
        assert_eq!(remove(r#"{"only": 1}"#, &keys("only")).unwrap().unwrap(), "{}");
        assert_eq!(remove(doc, &keys("a.x")).unwrap(), None);
        assert_eq!(remove(doc, &keys("zz")).unwrap(), None);
    }

    #[test]
    fn check_members_finds_the_members_down_to_a_depth() {
        let text = r#" {"a": {"b": [1, {"c": 2}], "d\u0041": "x"}, "e": 3} "#;
        let found: Vec<(usize, String, &str)> = check_members(text, 2).unwrap().into_iter().map(|(d, k, r)| (d, k.into_owned(), &text[r])).collect();
        assert_eq!(
            found,
            [(2, "b".into(), "[1, {\"c\": 2}]"), (2, "dA".into(), "\"x\""), (1, "a".into(), r#"{"b": [1, {"c": 2}], "d\u0041": "x"}"#), (1, "e".into(), "3")]
        );
        assert!(check_members(r#"{"a": {"b": 1, "b": 2}}"#, 1).is_err());
        assert!(check_strict("[1e400]").is_err());
        assert!(check_strict("[1e300, 12345678901234567890123]").is_ok());
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(check_strict(&deep(MAX_NESTING)).is_ok());
        assert!(check_strict(&deep(MAX_NESTING + 1)).is_err());
    }

    #[test]
    fn the_word_test_finds_every_special_byte() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for n in 0..200_000u32 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Mostly plain bytes, with a special one (or a near miss) put in at random.
            let mut bytes = state.to_le_bytes().map(|b| 0x20 + b % 0x5f);
            let put = [b'"', b'\\', 0x1f, 0x00, 0x21, 0x5d, 0x80, 0xff][(n % 8) as usize];
            bytes[(state >> 60) as usize % 8] = put;
            let naive = bytes.iter().any(|&b| b == b'"' || b == b'\\' || b < 0x20);
            assert_eq!(special(u64::from_le_bytes(bytes)), naive, "{bytes:?}");
            let first = bytes.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
            let mask = special_mask(u64::from_le_bytes(bytes));
            assert_eq!(first, (mask != 0).then(|| (mask.trailing_zeros() / 8) as usize), "{bytes:?}");
        }
    }

    #[test]
    fn the_scanner_refuses_what_is_not_json() {
        for bad in [
            "",
            "{",
            "{\"a\" 1}",
            "{\"a\": 1,}",
            "{\"a\": [1,,2]}",
            "{\"a\": 01}",
            "{\"a\": 1.}",
            "{\"a\": 1e}",
            "{\"a\": tru}",
            "{\"a\": \"\\x\"}",
            "{\"a\": \"\u{1}\"}",
            "{\"a\": 1} x",
            "{\"a\": 1, \"a\": 2}",
            "{\"a\": [1}",
            "{\"a\": {\"b\": 1]}",
            "{\"a\": \"\\u12\"}",
        ] {
            assert!(root(bad, Scan::Check).is_err(), "{bad:?} was accepted");
        }
        assert!(root("{\"a\": [1, {\"b\": [-0.5e+3, null, false, \"\\u00e9\\n\"]}]}", Scan::Check).is_ok());
        // Deep nesting costs no stack, checked or skimmed.
        let deep = format!("{{\"a\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(root(&deep, Scan::Check).is_ok());
        assert!(set(&deep, &keys("z"), "1").is_ok());
    }

    #[test]
    fn diff_skips_equal_text_and_matches_the_tree_diff() {
        let big: serde_json::Map<String, Value> = (0..300).map(|i| (format!("srv-{i}"), json!({"ip": format!("10.0.0.{i}"), "n": i}))).collect();
        let before = json!({"servers": big, "keep": 1, "gone": {"x": 1}, "nested": {"servers": big, "v": 1}});
        let mut after = before.clone();
        after["servers"]["srv-7"]["n"] = json!(70);
        after["nested"]["v"] = json!(2);
        after["added"] = json!({"k": [1, 2]});
        after.as_object_mut().unwrap().shift_remove("gone");
        let (bt, at) = (before.to_string(), serde_json::to_string_pretty(&after).unwrap());
        let mut ops = Vec::new();
        diff(&bt, &bt, &mut ops).unwrap();
        assert!(ops.is_empty());
        diff(&bt, &at, &mut ops).unwrap();
        let mut applied = before.clone();
        json_patch::patch(&mut applied, &ops).unwrap();
        assert_eq!(applied, after);
        assert_eq!(ops.len(), 4, "{ops:?}");
        // Same value, other spelling: no operation.
        let mut none = Vec::new();
        diff(r#"{"a": 1.50, "b": {"c": [1]}}"#, r#"{"a":1.5,"b":{"c":[ 1 ]}}"#, &mut none).unwrap();
        assert!(none.is_empty(), "{none:?}");
        // An invalid `after` is refused, in a changed member too deep for the scanner's own check.
        let dup = bt.replacen("\"n\":7}", "\"n\":7,\"n\":8}", 1);
        assert_ne!(dup, bt);
        assert!(diff(&bt, &dup, &mut Vec::new()).is_err());
    }

    #[test]
    fn diff_known_scans_only_what_differs_and_agrees_with_diff() {
        let before = "{\"servers\":{\"a\":{\"ip\":1},\"b\":[1,2]},\"x\":1,\"y\":{\"z\":2}}\n";
        let spans = Document::parse(before).unwrap().members;
        for after in [
            before.to_string(),
            before.replace("}\n", ",\"new\":\"v\"}\n"),
            before.replace("\"x\":1,", ""),
            before.replace(",\"y\":{\"z\":2}", ""),
            before.replace("\"x\":1", "\"x\":[1]"),
            before.replace("\"z\":2", "\"z\":3,\"w\":4"),
            before.replace("{\"servers\"", "{\"first\":0,\"servers\""),
            before.replace("\"ip\":1", "\"ip\":2"),
            "{}".to_string(),
            "  {\"x\": 1.0}  ".to_string(),
        ] {
            let (mut known, mut plain) = (Vec::new(), Vec::new());
            diff_known(before, &spans, &after, &mut known).unwrap();
            diff(before, &after, &mut plain).unwrap();
            let mut a: Value = serde_json::from_str(before).unwrap();
            json_patch::patch(&mut a, &known).unwrap();
            assert_eq!(a, serde_json::from_str::<Value>(&after).unwrap(), "{after}: {known:?}");
            assert_eq!(known.len(), plain.len(), "{after}: {known:?} vs {plain:?}");
            // Known only from where it differs: the same patch, or "diff it whole".
            let prefix = before.bytes().zip(after.bytes()).take_while(|(b, a)| b == a).count();
            if prefix < after.len() || prefix < before.len() {
                let mut rest = Vec::new();
                if diff_known_rest(before, &spans, prefix, &after[prefix..], &mut rest).unwrap() {
                    assert_eq!(rest, known, "{after}");
                } else {
                    assert!(prefix <= ws(before.as_bytes(), 0), "{after}: declined at {prefix}");
                }
            }
        }
        for bad in [
            before.replace("}\n", ",\"x\":2}\n"),
            before.replace("}\n", ",\"servers\":2}\n"),
            before.replace("}\n", ",}\n"),
            before.replace("}\n", "} x\n"),
            before.replace("\"x\":1", "\"x\":01"),
            before.replace("\"z\":2", "\"z\":2,\"z\":3"),
            before.replace("\"x\":1,", "\"x\":1,,"),
        ] {
            assert!(diff_known(before, &spans, &bad, &mut Vec::new()).is_err(), "{bad} was accepted");
            let prefix = before.bytes().zip(bad.bytes()).take_while(|(b, a)| b == a).count();
            assert!(diff_known_rest(before, &spans, prefix, &bad[prefix..], &mut Vec::new()).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn the_strict_check_finds_a_duplicate_key_in_an_object_of_any_size() {
        // Up to 16 keys an object's keys are checked as they come; past that, all at once when it
        // closes: either way a duplicate anywhere is refused, naming the key and where its object
        // opened, and objects nested in a large one (before and after it grew past 16) keep their
        // own keys.
        for size in [2, 15, 16, 17, 40, 5000] {
            let members: Vec<String> = (0..size).map(|n| format!("\"k{n}\": {{\"k{n}\": [{{\"k0\": 1, \"k1\": 2}}]}}")).collect();
            let doc = format!("{{\"o\": {{{}}}}}", members.join(", "));
            assert_eq!(check_strict(&doc), Ok(()), "{size}");
            for (first, second) in [(0, size - 1), (size / 2, size - 1), (0, 1), (size - 2, size - 1)] {
                if first == second {
                    continue;
                }
                let mut members = members.clone();
                members[second] = members[first].clone();
                let doc = format!("{{\"o\": {{{}}}}}", members.join(", "));
                match check_strict(&doc) {
                    Err(SpliceError::DuplicateKey { key, at }) => {
                        assert_eq!(key, format!("k{first}"), "{size}");
                        assert!(at == 6 || second < 16, "{size}: the object at byte 6, not {at}");
                    }
                    other => panic!("{size} {first} {second}: {other:?}"),
                }
            }
        }
        // Escaped and plain spellings of one key are the same key, in a large object too.
        let members: Vec<String> = (0..30).map(|n| format!("\"k{n}\": {n}")).collect();
        assert!(matches!(check_strict(&format!("{{{}, \"k\\u0031\": 0}}", members.join(","))), Err(SpliceError::DuplicateKey { .. })));
    }

    #[test]
    fn skimming_ends_every_value_where_checking_does() {
        // A seeded xorshift: random values whose strings hold quotes, backslashes (runs of them
        // too), brackets and multi-byte characters, compact or pretty, at every offset of a
        // 64-byte block, so that strings, escapes and brackets straddle the blocks' edges.
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let pieces = ["a", "\\", "\"", "\\\\", "{", "}", "[", "]", "é", "\\\"", ",", ":", " ", "\u{1F600}", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"];
        fn value(next: &mut dyn FnMut(u64) -> u64, pieces: &[&str], depth: u32) -> Value {
            match next(if depth > 3 { 3 } else { 6 }) {
                0 => json!(next(1000)),
                1 => Value::String((0..next(12)).map(|_| pieces[next(pieces.len() as u64) as usize]).collect()),
                2 => json!(null),
                3 => Value::Array((0..next(4)).map(|_| value(next, pieces, depth + 1)).collect()),
                _ => Value::Object((0..next(4)).map(|_| (value(next, pieces, 9).to_string(), value(next, pieces, depth + 1))).collect()),
            }
        }
        for round in 0..3000 {
            let v = value(&mut next, &pieces, 0);
            let text = if round % 2 == 0 { v.to_string() } else { serde_json::to_string_pretty(&v).unwrap() };
            let pad = next(130) as usize;
            let doc = format!("{}{text} ,]", " ".repeat(pad));
            let b = doc.as_bytes();
            assert_eq!(skim_value(b, pad), Ok(pad + text.len()), "{doc}");
            assert_eq!(skim_value(b, pad), skip_value(b, pad));
            // Cut short, a container has no end: refused, never a panic.
            if text.starts_with(['{', '[']) {
                assert!(skim_value(&b[..pad + text.len() - 1], pad).is_err(), "{doc}");
            }
        }
        // A backslash that ends a block escapes the first byte of the next one.
        for at in 0..70 {
            let text = format!("[\"{}\\\"]\", \"]\"]", "x".repeat(at));
            assert_eq!(skim_value(text.as_bytes(), 0), Ok(text.len()), "{text}");
        }
    }

    #[test]
    fn the_helpers_splice_skims_what_is_off_the_path_and_checks_the_path() {
        // Off the path, a value is only skimmed: an invalid one is kept as it is (the agent's
        // end-of-step diff refuses it); on the path, keys, colons and commas are checked.
        let doc = r#"{"big": {"x": tru, "x": 2}, "k": 1}"#;
        assert_eq!(set(doc, &keys("k"), "2").unwrap(), r#"{"big": {"x": tru, "x": 2}, "k": 2}"#);
        assert!(set(doc, &keys("big.y"), "2").is_err(), "the path's object is split, its values checked");
        for bad in [r#"{"a": 1,}"#, r#"{"a" 1}"#, r#"{"a": 1, "a": 2}"#, r#"{"a": [1}"#, r#"{"a": {"b": 1}"#, r#"{"a": 1} x"#, r#"["a"]"#] {
            assert!(set(bad, &keys("z"), "1").is_err(), "{bad}");
            assert!(remove(bad, &keys("z")).is_err(), "{bad}");
        }
        let splice = set_splice(r#"{"a": {"b": 1}, "c": [2]}"#, &keys("a.b"), "[3]").unwrap();
        assert_eq!(splice, Splice { range: 12..13, with: "[3]".to_string() });
    }

    #[test]
    fn patch_agrees_with_json_patch_on_random_member_edits() {
        // A seeded xorshift: random documents and patches of adds, replaces and removes at
        // random paths, valid or not; a patch the splice takes must give json_patch's result,
        // and one json_patch refuses must be declined.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let names = ["a", "b", "c~1", "d/e", "é"];
        for _ in 0..2000 {
            let mut doc = json!({});
            for _ in 0..next(6) {
                let (k, j) = (names[next(5) as usize], names[next(5) as usize]);
                doc[k] = match next(4) {
                    0 => json!(next(100)),
                    1 => json!({j: [1, {"x": 2}]}),
                    2 => json!({j: {"y": null}}),
                    _ => json!("s"),
                };
            }
            let ops: Vec<Value> = (0..1 + next(3))
                .map(|_| {
                    let depth = 1 + next(3) as usize;
                    let path: String = (0..depth).map(|_| format!("/{}", names[next(5) as usize].replace('~', "~0").replace('/', "~1"))).collect();
                    match next(3) {
                        0 => json!({"op": "add", "path": path, "value": {"n": next(9)}}),
                        1 => json!({"op": "replace", "path": path, "value": [next(9)]}),
                        _ => json!({"op": "remove", "path": path}),
                    }
                })
                .collect();
            let p: Patch = serde_json::from_value(Value::Array(ops.clone())).unwrap();
            let text = serde_json::to_string_pretty(&doc).unwrap();
            let mut tree = doc.clone();
            let applied = json_patch::patch(&mut tree, &p);
            match Document::parse(&text).unwrap().patch(&p) {
                Some(spliced) => {
                    assert!(applied.is_ok(), "{doc} {ops:?}: json_patch refused what the splice took");
                    assert_eq!(serde_json::from_str::<Value>(spliced.text()).unwrap(), tree, "{doc} {ops:?}");
                    assert_eq!(spliced.members, Document::parse(spliced.text()).unwrap().members);
                }
                None => assert!(applied.is_err() || p.0.iter().any(|op| op.path().tokens().count() > 1), "{doc} {ops:?}: declined a top-level edit"),
            }
        }
    }

    #[test]
    fn patch_applies_member_edits_as_json_patch_does_and_declines_the_rest() {
        let doc = json!({"a": {"b": 1, "c": [1, 2]}, "d": "x"});
        let text = doc.to_string();
        for ops in [
            json!([{"op": "add", "path": "/a/e", "value": {"f": 1}}, {"op": "remove", "path": "/d"}]),
            json!([{"op": "replace", "path": "/a/b", "value": 2}, {"op": "add", "path": "/a/b", "value": 3}]),
            json!([{"op": "add", "path": "/n", "value": null}]),
        ] {
            let p: Patch = serde_json::from_value(ops).unwrap();
            let mut tree = doc.clone();
            json_patch::patch(&mut tree, &p).unwrap();
            let patched = Document::parse(&text).unwrap().patch(&p).unwrap();
            let spliced: Value = serde_json::from_str(patched.text()).unwrap();
            assert_eq!(spliced, tree);
            // The members found by splicing are the ones a fresh scan finds.
            assert_eq!(patched.members, Document::parse(patched.text()).unwrap().members);
        }
        for ops in [
            json!([{"op": "add", "path": "/a/c/0", "value": 0}]),
            json!([{"op": "replace", "path": "/zz", "value": 2}]),
            json!([{"op": "remove", "path": "/zz"}]),
            json!([{"op": "add", "path": "/zz/y", "value": 1}]),
            json!([{"op": "add", "path": "/d/y", "value": 1}]),
            json!([{"op": "test", "path": "/d", "value": "x"}]),
            json!([{"op": "add", "path": "", "value": {}}]),
        ] {
            let p: Patch = serde_json::from_value(ops.clone()).unwrap();
            assert!(Document::parse(&text).unwrap().patch(&p).is_none(), "{ops}");
        }
    }
}
