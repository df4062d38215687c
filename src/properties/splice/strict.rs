//! The strict checker: a document checked as strictly as [`crate::json::StrictValue`] reads one,
//! in one pass and building nothing; what the agent reads its step context with.

use std::borrow::Cow;
use std::ops::Range;

use super::scan::{key_at, literal, number_end, skip_string, syntax, ws};
use super::SpliceError;
use crate::properties::keys::Keys;

/// Checks that `text` is one JSON value, as strictly as [`crate::json::StrictValue`] reads one:
/// no object has a key twice (at any depth), and every number is a finite `f64`. Builds nothing:
/// the keys of the objects being walked are kept on one stack (`properties::keys::Keys`), borrowed from the text.
pub fn check_strict(text: &str) -> Result<(), SpliceError> {
    check(text, 0).map(drop)
}

/// A member found by [`check_members`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found<'a> {
    /// How deep its object is: 1 for a member of the root object.
    pub depth: usize,
    /// The key, unescaped (borrowed from the text when it has no escape).
    pub key: Cow<'a, str>,
    /// The range of its value's text.
    pub value: Range<usize>,
}

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
                found.push(Found { depth: d, key, value: value..i });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_members_finds_the_members_down_to_a_depth() {
        let text = r#" {"a": {"b": [1, {"c": 2}], "d\u0041": "x"}, "e": 3} "#;
        let found: Vec<(usize, String, &str)> = check_members(text, 2).unwrap().into_iter().map(|f| (f.depth, f.key.into_owned(), &text[f.value])).collect();
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
}
