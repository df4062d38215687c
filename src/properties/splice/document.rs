//! A properties document kept as text with its top-level members found, and patched by splicing.

use std::ops::Range;
use std::sync::Arc;

use json_patch::jsonptr::Pointer;
use json_patch::{Patch, PatchOperation};

use super::edit::{insertion, new_member, removal, replacement, walk, Walk};
use super::scan::{self, member_cut, root, Member, Scan, Span};
use super::SpliceError;

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
        let members = object.members.iter().map(Member::to_span).collect();
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
            let at = members.iter().position(|m| m.key == *first);
            // The text to replace and what replaces it.
            let (span, with) = match (at, rest.is_empty(), edit) {
                (Some(i), true, Edit::Add | Edit::Replace) => (members[i].value.clone(), value?),
                (Some(i), true, Edit::Remove) => (member_cut(&members, i, |m| (m.key_start, m.value.clone())), String::new()),
                (None, true, Edit::Add) => {
                    let splice = new_member(text.len() - 1, members.is_empty(), first, &[], &value?);
                    (splice.range, splice.with)
                }
                (None, _, _) => return None,
                (Some(i), false, _) => {
                    let range = members[i].value.clone();
                    let sub = &text[range.clone()];
                    if !sub.starts_with('{') {
                        return None;
                    }
                    // The document's own text, checked when it was parsed: its members are skimmed.
                    let object = scan::object(sub, 0, Scan::Skim).ok()?;
                    let splice = match (edit, walk(sub, object, rest, Scan::Skim).ok()?) {
                        (Edit::Add | Edit::Replace, Walk::Found { parent, at }) => replacement(&parent, at, &value?),
                        // RFC 6902's `add` makes no parent: only the last key may be missing.
                        (Edit::Add, Walk::Missing { parent, depth }) if depth + 1 == rest.len() => insertion(&parent, &rest[depth], &[], &value?),
                        (Edit::Remove, Walk::Found { parent, at }) => removal(&parent, at),
                        _ => return None,
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
                        m.shift(shift);
                    }
                    // The first member lost the comma before it: its key starts where the cut did.
                    if i == 0 {
                        if let Some(first) = members.first_mut() {
                            first.key_start = span.start;
                        }
                    }
                }
                (Some(i), _, _) => {
                    members[i].value.end = shift(members[i].value.end);
                    for m in &mut members[i + 1..] {
                        m.shift(shift);
                    }
                }
                (None, _, _) => {
                    let key_start = span.start + usize::from(!members.is_empty());
                    let value_end = span.start + with.len();
                    let value_len = value_end - (key_start + serde_json::to_string(first).expect("a string serialises").len() + 1);
                    members.push(Span { key: first.clone(), key_start, value: value_end - value_len..value_end });
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

impl Span {
    /// Moves the member's offsets as `shift` says (an edit before it changed the text's length).
    fn shift(&mut self, shift: impl Fn(usize) -> usize) {
        self.key_start = shift(self.key_start);
        self.value = shift(self.value.start)..shift(self.value.end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Xorshift;
    use serde_json::{json, Value};

    #[test]
    fn patch_agrees_with_json_patch_on_random_member_edits() {
        // A seeded xorshift: random documents and patches of adds, replaces and removes at
        // random paths, valid or not; a patch the splice takes must give json_patch's result,
        // and one json_patch refuses must be declined.
        let mut rng = Xorshift::new(0x9E37_79B9_7F4A_7C15u64);
        let mut next = move |n: u64| rng.below(n);
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
