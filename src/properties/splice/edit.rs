//! Edits of one property in a document's text: [`set`] and [`remove`] (the action scripts'
//! `property set` and `property remove`), and the pieces [`super::Document::patch`] makes its
//! edits of, all on one walk down a key path ([`walk`]).
//!
//! Only the objects on the property's path are split into members (their keys checked, no key
//! twice); the rest of the text is copied as it is.

use std::ops::Range;

use super::scan::{member_cut, object, root, skip_value, Object, Scan};
use super::SpliceError;

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
        let mut out = String::with_capacity(text.len() - self.range.len() + self.with.len());
        out.push_str(&text[..self.range.start]);
        out.push_str(&self.with);
        out.push_str(&text[self.range.end..]);
        out
    }
}

/// Where a walk down a key path ([`walk`]) ended.
pub(super) enum Walk<'a> {
    /// The path's last key is the member `at` of `parent`.
    Found {
        /// The object holding the member.
        parent: Object<'a>,
        /// The member's index in `parent.members`.
        at: usize,
    },
    /// The key at `depth` of the path is not a member of `parent`; every key before it is, with
    /// an object for its value.
    Missing {
        /// The last object reached.
        parent: Object<'a>,
        /// The index in the path of the key `parent` lacks.
        depth: usize,
    },
    /// The value of the key at `depth` of the path (not its last key) is not an object.
    NotAnObject {
        /// The index in the path of the key whose value is not an object.
        depth: usize,
    },
}

/// Walks `keys` (at least one) down from `object`, found in `text`: each object on the path is
/// split into its members, their values read as `scan` says, until the last key is found, one is
/// missing, or a value on the way is not an object. The one walk that set, remove and patch share.
pub(super) fn walk<'a>(text: &'a str, mut object: Object<'a>, keys: &[String], scan: Scan) -> Result<Walk<'a>, SpliceError> {
    debug_assert!(!keys.is_empty(), "a property path has at least one key");
    let mut depth = 0;
    loop {
        let Some(at) = object.members.iter().position(|m| m.key == keys[depth].as_str()) else {
            return Ok(Walk::Missing { parent: object, depth });
        };
        if depth + 1 == keys.len() {
            return Ok(Walk::Found { parent: object, at });
        }
        let start = object.members[at].value.start;
        if text.as_bytes()[start] != b'{' {
            return Ok(Walk::NotAnObject { depth });
        }
        object = self::object(text, start, scan)?;
        depth += 1;
    }
}

/// The edit that gives the member `at` of `parent` the value `value` (JSON text).
pub(super) fn replacement(parent: &Object<'_>, at: usize, value: &str) -> Splice {
    Splice { range: parent.members[at].value.clone(), with: value.to_string() }
}

/// The edit that adds the member `key` to `parent`, last, holding an object for each of `rest`
/// around `value` (JSON text).
pub(super) fn insertion(parent: &Object<'_>, key: &str, rest: &[String], value: &str) -> Splice {
    new_member(parent.end - 1, parent.members.is_empty(), key, rest, value)
}

/// The edit that removes the member `at` of `parent` and one comma.
pub(super) fn removal(parent: &Object<'_>, at: usize) -> Splice {
    Splice { range: member_cut(&parent.members, at, |m| (m.key_start, m.value.clone())), with: String::new() }
}

/// The edit that adds `"key":value` (an object for each of `rest` around the value) just before
/// the closing brace at `close` of an object, after a comma unless the object is `empty`.
/// Whitespace before the brace stays before the new member.
pub(super) fn new_member(close: usize, empty: bool, key: &str, rest: &[String], value: &str) -> Splice {
    let mut with = String::new();
    if !empty {
        with.push(',');
    }
    with.push_str(&serde_json::to_string(key).expect("a string serialises"));
    with.push(':');
    for k in rest {
        with.push('{');
        with.push_str(&serde_json::to_string(k).expect("a string serialises"));
        with.push(':');
    }
    with.push_str(value);
    with.extend(std::iter::repeat_n('}', rest.len()));
    Splice { range: close..close, with }
}

/// Sets the property at `keys` of the document `text` to `value` (JSON text), creating objects on
/// the way, as [`crate::properties::set`] does to a tree: an existing member keeps its place, a
/// new one goes last. The rest of the text is kept byte for byte.
pub fn set(text: &str, keys: &[String], value: &str) -> Result<String, SpliceError> {
    set_splice(text, keys, value).map(|splice| splice.apply(text))
}

/// [`set`], as the edit to make. Only the objects on the property's path are split into members
/// (their keys checked, no key twice); the other values are skimmed (`Scan::Skim`), not
/// checked: the document is the action's copy, and the agent checks strictly every byte of it
/// that differs from what it wrote when the action ends ([`super::diff_known`]).
pub fn set_splice(text: &str, keys: &[String], value: &str) -> Result<Splice, SpliceError> {
    let vb = value.as_bytes();
    if skip_value(vb, 0).ok() != Some(vb.len()) {
        return Err(SpliceError::Value);
    }
    let document = root(text, Scan::Skim)?;
    if keys.is_empty() {
        return Err(SpliceError::NotAnObjectOnPath { depth: 0 });
    }
    match walk(text, document, keys, Scan::Skim)? {
        Walk::Found { parent, at } => Ok(replacement(&parent, at, value)),
        Walk::Missing { parent, depth } => Ok(insertion(&parent, &keys[depth], &keys[depth + 1..], value)),
        Walk::NotAnObject { depth } => Err(SpliceError::NotAnObjectOnPath { depth }),
    }
}

/// Removes the property at `keys` of the document `text`, as [`crate::properties::remove`] does
/// to a tree; `None` when it is not there (the text is unchanged).
pub fn remove(text: &str, keys: &[String]) -> Result<Option<String>, SpliceError> {
    Ok(remove_splice(text, keys)?.map(|splice| splice.apply(text)))
}

/// [`remove`], as the edit to make; the document is read as [`set_splice`] reads it.
pub fn remove_splice(text: &str, keys: &[String]) -> Result<Option<Splice>, SpliceError> {
    let document = root(text, Scan::Skim)?;
    if keys.is_empty() {
        return Ok(None);
    }
    Ok(match walk(text, document, keys, Scan::Skim)? {
        Walk::Found { parent, at } => Some(removal(&parent, at)),
        Walk::Missing { .. } | Walk::NotAnObject { .. } => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(path: &str) -> Vec<String> {
        crate::properties::parse_path(path).unwrap()
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
}
