//! Two versions of a document compared as text: the RFC 6902 patch between them, where members
//! whose text is the same are skipped and only what differs is parsed (strictly) and diffed by
//! [`crate::diff`].

use std::borrow::Cow;

use json_patch::jsonptr::{Pointer, PointerBuf, Token};
use json_patch::PatchOperation;
use serde_json::Value;

use super::scan::{member_at, object, root, syntax, ws, Member, Object, Scan, Span};
use super::SpliceError;
use crate::diff::same_bytes;
use crate::json::StrictValue;

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
    let first = members.iter().position(|m| m.value.end > prefix).unwrap_or(members.len());
    Some(match first.checked_sub(1) {
        Some(last) => members[last].value.end,
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
    let first = members.iter().position(|m| m.value.end > prefix).unwrap_or(members.len());
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
                if let Some(k) = members[first..].iter().position(|m| m.key_start == at) {
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
        if changed[..n].iter().any(|o| o.key == m.key) || kept().any(|k| k.key == m.key) {
            return Err(SpliceError::DuplicateKey { key: m.key.to_string(), at: m.key_start });
        }
    }
    let old: Vec<Member<'_>> = members[first..resync].iter().map(|m| Member { key: Cow::Borrowed(&m.key), key_start: m.key_start, value: m.value.clone() }).collect();
    diff_members(before, &Object { members: old, end: 0 }, after, &Object { members: changed, end: 0 }, &mut PointerBuf::new(), ops)
}

/// The length, up to `limit`, of the run of equal bytes that `same(at, len)` (whether the `len`
/// bytes at `at` of the run are equal) finds: compared a page at a time, then byte by byte within
/// the first page that differs. The callers compare with [`same_bytes`], a word at a time: the
/// static agent's libc (musl) compares byte by byte.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::properties::splice::Document;
    use serde_json::json;

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
        let spans = Document::parse(before).unwrap().members().to_vec();
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
}
