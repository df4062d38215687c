//! The byte scanner: finds where JSON values, keys and object members are in a document's text,
//! checking their grammar as it goes ([`Scan::Check`]) or only counting brackets ([`Scan::Skim`]),
//! and building nothing but the list of an object's members.

use std::borrow::Cow;
use std::collections::HashSet;
use std::ops::Range;

use super::SpliceError;

/// One member of an object, found in its text.
#[derive(Debug, Clone)]
pub(super) struct Member<'a> {
    /// The key, unescaped.
    pub(super) key: Cow<'a, str>,
    /// Where the key's opening quote is.
    pub(super) key_start: usize,
    /// The value's text.
    pub(super) value: Range<usize>,
}

/// An object's members, in order, and the offset just past its closing brace.
pub(super) struct Object<'a> {
    /// The members, in the order the text lists them.
    pub(super) members: Vec<Member<'a>>,
    /// The offset just past the closing brace.
    pub(super) end: usize,
}

/// A top-level member's place in a document's text, owned: what a caller keeps of a document it
/// has scanned, to diff or patch it later without scanning it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// The key, unescaped.
    pub key: String,
    /// The offset of the key's opening quote.
    pub key_start: usize,
    /// The range of the value's text.
    pub value: Range<usize>,
}

impl Member<'_> {
    /// This member's place, owned.
    pub(super) fn to_span(&self) -> Span {
        Span { key: self.key.clone().into_owned(), key_start: self.key_start, value: self.value.clone() }
    }
}

/// The text to cut to remove the member at `at` of `members` (each given by `place` as its key's
/// start and its value's range) with one comma: from the end of the previous value, or for the
/// first member up to the next member's key.
pub(super) fn member_cut<T>(members: &[T], at: usize, place: impl Fn(&T) -> (usize, Range<usize>)) -> Range<usize> {
    let (key_start, value) = place(&members[at]);
    match (at.checked_sub(1).map(|p| place(&members[p])), members.get(at + 1).map(&place)) {
        (Some((_, prev)), _) => prev.end..value.end,
        (None, Some((next, _))) => key_start..next,
        (None, None) => key_start..value.end,
    }
}

pub(super) fn syntax(at: usize, expected: &'static str) -> SpliceError {
    SpliceError::Syntax { at, expected }
}

/// The offset of the first byte at or after `i` that is not JSON whitespace.
#[inline(always)]
pub(super) fn ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// Whether the 8 bytes of `w` hold a quote, a backslash or a control character (below 0x20): exact, no
/// false negatives (the usual "has a zero byte" test, on `w` and on `w` xor each byte sought).
#[cfg(test)]
pub(super) fn special(w: u64) -> bool {
    special_mask(w) != 0
}

/// The word test (`special`) as a mask: the high bit of a byte is set for each special byte, and
/// may be set for a byte above (later in the text than) a special one, never below: so the lowest
/// set bit is in the first special byte (a borrow only runs upwards, from a byte that is itself
/// flagged).
#[inline(always)]
pub(super) fn special_mask(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    zero(w ^ (ONES * b'"' as u64)) | zero(w ^ (ONES * b'\\' as u64)) | (w.wrapping_sub(ONES * 0x20) & !w & HIGH)
}

/// Skips the string whose opening quote is at `i`; returns the offset past its closing quote.
#[inline(always)]
pub(super) fn skip_string(b: &[u8], i: usize) -> Result<usize, SpliceError> {
    string_end(b, i).map(|(end, _)| end)
}

/// Skips the string whose opening quote is at `i`; returns the offset past its closing quote and
/// whether the string holds an escape (so that a key without one is borrowed as it is, without a
/// second pass over it). Runs of 8 plain bytes are skipped a word at a time, and the word that
/// holds a special byte (the closing quote, mostly) goes straight to it.
#[inline(always)]
pub(super) fn string_end(b: &[u8], mut i: usize) -> Result<(usize, bool), SpliceError> {
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
pub(super) fn skip_number(b: &[u8], i: usize) -> Result<usize, SpliceError> {
    number_end(b, i).map(|(end, _)| end)
}

/// Skips the number at `i`; returns the offset past it and whether it is an integer (no fraction
/// and no exponent), so that the strict check knows without a second pass over it.
#[inline(always)]
pub(super) fn number_end(b: &[u8], mut i: usize) -> Result<(usize, bool), SpliceError> {
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
pub(super) fn literal(b: &[u8], i: usize, word: &'static [u8]) -> Result<usize, SpliceError> {
    if b.get(i..i + word.len()) == Some(word) {
        Ok(i + word.len())
    } else {
        Err(syntax(i, "a value"))
    }
}

/// Skips a key (a string at `i`), the colon and the whitespace after it; returns where the value
/// starts.
#[inline(always)]
pub(super) fn key_colon(b: &[u8], i: usize) -> Result<usize, SpliceError> {
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
pub(super) fn skip_value(b: &[u8], start: usize) -> Result<usize, SpliceError> {
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
/// is not checked). What [`Scan::Skim`] reads values with. Cheaper than [`skip_value`] on a
/// document of many small objects: a container is classified 64 bytes at a time ([`Block`]) and
/// only its brackets are visited, one at a time.
pub(super) fn skim_value(b: &[u8], start: usize) -> Result<usize, SpliceError> {
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
    // Unrolled by hand: built for size, the compiler would keep a loop here, on a skim's hottest
    // path.
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

/// The key whose opening quote is at `i` in `text`, unescaped (borrowed when it has no escape),
/// and where it ends (after its closing quote). Always inlined: it is on the strict check's path for
/// every key, and the agent is built for size.
#[inline(always)]
pub(super) fn key_at(text: &str, i: usize) -> Result<(Cow<'_, str>, usize), SpliceError> {
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
        // `str` slice are a measurable share of the strict check's cost per key.
        Cow::Borrowed(unsafe { text.get_unchecked(i + 1..end - 1) })
    };
    Ok((key, end))
}

/// How the values of an object's members are read when the object is split: each value's grammar
/// checked ([`skip_value`]), or only its extent found ([`skim_value`]: a container's brackets
/// outside strings counted, a block of 64 bytes at a time), for text known to be valid or checked
/// later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scan {
    /// Check every value's grammar.
    Check,
    /// Find where each value ends; a container's contents are not checked.
    Skim,
}

/// The member whose key's opening quote is at `i` in `text`: its key, the `:` and its value (its
/// grammar checked, or with [`Scan::Skim`] only its extent found).
pub(super) fn member_at(text: &str, i: usize, scan: Scan) -> Result<Member<'_>, SpliceError> {
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
pub(super) fn object(text: &str, start: usize, scan: Scan) -> Result<Object<'_>, SpliceError> {
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
pub(super) fn check_keys(members: &[Member<'_>], at: usize) -> Result<(), SpliceError> {
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
pub(super) fn root(text: &str, scan: Scan) -> Result<Object<'_>, SpliceError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Xorshift;
    use serde_json::{json, Value};

    fn keys(path: &str) -> Vec<String> {
        crate::properties::parse_path(path).unwrap()
    }

    #[test]
    fn the_word_test_finds_every_special_byte() {
        let mut rng = Xorshift::new(0x2545_F491_4F6C_DD1D);
        for n in 0..200_000u32 {
            let state = rng.next_u64();
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
        assert!(super::super::set(&deep, &keys("z"), "1").is_ok());
    }

    #[test]
    fn skimming_ends_every_value_where_checking_does() {
        // A seeded xorshift: random values whose strings hold quotes, backslashes (runs of them
        // too), brackets and multi-byte characters, compact or pretty, at every offset of a
        // 64-byte block, so that strings, escapes and brackets straddle the blocks' edges.
        let mut rng = Xorshift::new(0x2545_F491_4F6C_DD1Du64);
        let mut next = move |n: u64| rng.below(n);
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
}
