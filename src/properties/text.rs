//! Properties documents kept as JSON text: validated strictly without building a tree, split into
//! their top-level members, and merged by splicing those members' text.
//!
//! The agent hands the action the merged properties and a copy of each writable level as JSON
//! files. Parsing a context into `serde_json::Value` trees, merging the trees, serialising them
//! twice and freeing them would be most of a step's cost (BENCHMARKS.md, "design figures"). Most top-level
//! members come from one source only, and their text can be copied as it is: only a member that
//! several sources hold as objects is parsed, deep-merged by [`super::merge_objects`] and written
//! again. The result is the same document [`super::merge`] gives, member for member and in the
//! same order (a property test holds the two to it).
//!
//! Validation is as strict as [`crate::json::StrictValue`]: a duplicate key at any depth is
//! refused ([`super::splice::check_strict`], a byte scanner that builds nothing). What this module does not do is say *where* a document is invalid: a caller that gets
//! an error parses the same bytes with the tree-building types for the message
//! ([`crate::json::parse_or_explain`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::keys::Keys;

/// A properties document (a JSON object) as JSON text, validated, with its top-level members found.
#[derive(Debug, Clone)]
pub struct PropertiesText {
    /// The document's JSON text: `{`, each member's key (re-escaped) and the text of its value as
    /// given (inner whitespace and number spellings kept), `}`.
    text: String,
    /// The top-level members in document order: the key (unescaped) and the byte range of the
    /// member's value in `text`. Invariant: the keys are distinct, and each range holds one JSON
    /// value that passed the strict check.
    members: Vec<(String, Range<usize>)>,
}

impl PropertiesText {
    /// Validates `text` as a properties document (an object, with no duplicate key at any depth)
    /// and finds its top-level members.
    pub fn parse(text: &str) -> Result<PropertiesText, serde_json::Error> {
        // The byte scanner checks and splits the document in one pass; serde reads what it
        // refuses (or what is not an object), for its error.
        if text.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{') {
            if let Ok(found) = super::splice::check_members(text, 1) {
                return Ok(PropertiesText::from_members(text, found.into_iter().map(|f| (f.key, f.value))));
            }
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let document = PropertiesText::deserialize(&mut de)?;
        de.end()?;
        Ok(document)
    }

    /// The document whose top-level members are `members` (each key and its value's range in
    /// `text`, in order), found in `text` by [`super::splice::check_members`], which has checked
    /// them strictly: spelled as [`PropertiesText::parse`] spells it.
    pub fn from_members<'a>(text: &str, members: impl IntoIterator<Item = (Cow<'a, str>, Range<usize>)>) -> PropertiesText {
        let members: Vec<(Cow<'a, str>, Range<usize>)> = members.into_iter().collect();
        // Room for the members, the braces and the newline the runtime copy ends with.
        let size = members.iter().map(|(key, range)| key.len() + 4 + range.len()).sum::<usize>() + 3;
        let mut document = PropertiesText { text: String::with_capacity(size), members: Vec::with_capacity(members.len()) };
        document.text.push('{');
        for (key, range) in members {
            if !document.members.is_empty() {
                document.text.push(',');
            }
            document.text.push_str(&serde_json::to_string(key.as_ref()).expect("a string serialises"));
            document.text.push(':');
            let start = document.text.len();
            document.text.push_str(&text[range]);
            document.members.push((key.into_owned(), start..document.text.len()));
        }
        document.text.push('}');
        document
    }

    /// The document's JSON text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// [`PropertiesText::from_members`], spelled in `buffer` over the text the members were found
    /// in (`buffer` holds that text, and `members` are ranges of it, in order): each member moves
    /// towards the start, never over bytes not yet moved, because its spelling here is never
    /// longer than it was (serde_json escapes a key no longer than JSON lets it be written, and
    /// no whitespace is kept). So a document of a few MB is neither copied nor given new pages
    /// (the agent's project properties, in the buffer its step context was read into). The same
    /// document as `from_members` makes; `Err` with `buffer` and `members` given back untouched
    /// should a member not fit.
    #[allow(clippy::type_complexity)]
    pub fn from_members_in(mut buffer: Vec<u8>, members: Vec<(String, Range<usize>)>) -> Result<PropertiesText, (Vec<u8>, Vec<(String, Range<usize>)>)> {
        let keys: Vec<String> = members.iter().map(|(key, _)| serde_json::to_string(key).expect("a string serialises")).collect();
        // Where each value goes: it must not start after where it is (a copy of it moves it left).
        let mut at = 1;
        for (n, ((_, range), key)) in members.iter().zip(&keys).enumerate() {
            at += usize::from(n > 0) + key.len() + 1;
            if at > range.start {
                return Err((buffer, members));
            }
            at += range.len();
        }
        if at + 1 > buffer.len() {
            return Err((buffer, members));
        }
        let mut spans = Vec::with_capacity(members.len());
        let mut at = 0;
        let put = |buffer: &mut Vec<u8>, at: &mut usize, bytes: &[u8]| {
            buffer[*at..*at + bytes.len()].copy_from_slice(bytes);
            *at += bytes.len();
        };
        put(&mut buffer, &mut at, b"{");
        for (n, ((key, range), quoted)) in members.into_iter().zip(&keys).enumerate() {
            if n > 0 {
                put(&mut buffer, &mut at, b",");
            }
            put(&mut buffer, &mut at, quoted.as_bytes());
            put(&mut buffer, &mut at, b":");
            let start = at;
            buffer.copy_within(range.clone(), start);
            at += range.len();
            spans.push((key, start..at));
        }
        put(&mut buffer, &mut at, b"}");
        buffer.truncate(at);
        let text = String::from_utf8(buffer).expect("whole values of UTF-8 text and serde_json's keys");
        Ok(PropertiesText { text, members: spans })
    }

    /// Whether the document has no member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The document's JSON text, moved out.
    pub fn into_text(self) -> String {
        self.text
    }

    /// The JSON text of the value of the top-level member `key`, if the document has it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.members.iter().find(|(k, _)| k == key).map(|(_, range)| &self.text[range.clone()])
    }

    /// The top-level members in document order: each key and the JSON text of its value.
    pub fn members(&self) -> impl Iterator<Item = (&str, &str)> {
        self.members.iter().map(|(key, range)| (key.as_str(), &self.text[range.clone()]))
    }

    /// The object holding only the members named in `keys` that the document has, parsed, in
    /// document order: what reads the declarations (`opschain`, and the seed layout's `files` and
    /// `env`: [`super::declarations::MEMBERS`]) without parsing the rest.
    pub fn subset(&self, keys: &[&str]) -> Map<String, Value> {
        self.members.iter().filter(|(key, _)| keys.contains(&key.as_str())).map(|(key, range)| (key.clone(), parse_valid(&self.text[range.clone()]))).collect()
    }

    /// Each top-level member's place in [`PropertiesText::text`]: its key, where the key's quote
    /// is, and its value's range (what [`super::splice::diff_known`] takes).
    pub fn spans(&self) -> Vec<super::splice::Span> {
        self.members
            .iter()
            .map(|(key, range)| {
                // The text spells each member `"key":value`, the key as serde_json escapes it.
                let quoted = serde_json::to_string(key).expect("a string serialises").len();
                super::splice::Span { key: key.clone(), key_start: range.start - 1 - quoted, value: range.clone() }
            })
            .collect()
    }

    /// The whole document as a tree (for callers that need one; the agent's step does not).
    pub fn to_map(&self) -> Map<String, Value> {
        match parse_valid(&self.text) {
            Value::Object(map) => map,
            _ => unreachable!("a PropertiesText is an object"),
        }
    }
}

impl Default for PropertiesText {
    /// The empty document, `{}`.
    fn default() -> PropertiesText {
        PropertiesText { text: "{}".to_string(), members: Vec::new() }
    }
}

/// Reads the document's members straight from the deserializer, each value's text borrowed from
/// the input: so the deserializer must read from memory (`from_slice`, `from_str`), as every
/// caller here does; one reading from a stream fails with serde_json's "invalid type" error.
impl<'de> Deserialize<'de> for PropertiesText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<PropertiesText, D::Error> {
        deserializer.deserialize_map(TopLevel)
    }
}

/// A properties document validated exactly as [`PropertiesText`] validates one, of which only the
/// declaring members ([`super::declarations::MEMBERS`]) are kept, parsed: what `opschain-exec`
/// reads. One pass over the text, which is neither kept nor copied (a [`PropertiesText`] scans each
/// member twice and copies it), so a large document costs its validation only.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Declaring(pub Map<String, Value>);

impl<'de> Deserialize<'de> for Declaring {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Declaring, D::Error> {
        deserializer.deserialize_map(DeclaringMembers)
    }
}

/// Keeps a document's declaring members and checks the others strictly without building them.
struct DeclaringMembers;

impl<'de> Visitor<'de> for DeclaringMembers {
    type Value = Declaring;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Declaring, A::Error> {
        let mut kept = Map::new();
        let mut top = Keys::default();
        while let Some(key) = map.next_key::<String>()? {
            if !top.insert(0, Cow::Owned(key.clone())) {
                return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
            }
            if super::declarations::MEMBERS.contains(&key.as_str()) {
                let crate::json::StrictValue(value) = map.next_value()?;
                kept.insert(key, value);
            } else {
                // Checked as `TopLevel` checks a member, by the byte scanner, never built.
                let value: &'de RawValue = map.next_value()?;
                super::splice::check_strict(value.get()).map_err(de::Error::custom)?;
            }
        }
        top.close(0).map_err(|key| de::Error::custom(format_args!("duplicate key {key:?}")))?;
        Ok(Declaring(kept))
    }
}

/// Parses text this module has validated.
fn parse_valid(text: &str) -> Value {
    serde_json::from_str(text).expect("validated JSON parses")
}

/// The merge of `sources` (in merge order: later wins) by [`super::merge`]'s rules, as JSON text:
/// `{`, each member in the order the merged tree would list it, `}`. Keys are written by
/// serde_json; a value that wins whole is its source's text as it is, a merged one is compact.
pub fn merge(sources: &[&PropertiesText]) -> String {
    let mut order: Vec<(&str, Vec<&str>)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for source in sources {
        for (key, value) in source.members() {
            let at = *index.entry(key).or_insert_with(|| {
                order.push((key, Vec::new()));
                order.len() - 1
            });
            order[at].1.push(value);
        }
    }
    let mut out = Vec::with_capacity(sources.iter().map(|s| s.text().len()).sum::<usize>() + 2);
    out.push(b'{');
    for (i, (key, values)) in order.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, key).expect("writing to memory cannot fail");
        out.push(b':');
        match member(values) {
            Member::Text(text) => out.extend_from_slice(text.as_bytes()),
            Member::Merged(value) => serde_json::to_writer(&mut out, &value).expect("writing to memory cannot fail"),
        }
    }
    out.push(b'}');
    String::from_utf8(out).expect("spliced from UTF-8 text and serde_json's output")
}

/// One merged member: the text of the value that wins whole, or the deep merge of several objects.
enum Member<'a> {
    Text(&'a str),
    Merged(Value),
}

/// Merges one member's values, given in merge order. Applied one after the other, an object
/// merged into an object merges and anything else replaces: so the result is the merge of the
/// trailing run of objects when the last value is an object and an earlier one is too, and the
/// last value's text otherwise.
fn member<'a>(values: &[&'a str]) -> Member<'a> {
    let objects = values.iter().rev().take_while(|v| v.starts_with('{')).count();
    if objects <= 1 {
        return Member::Text(values.last().copied().expect("a merged key has a value in some source"));
    }
    let mut merged = Map::new();
    for text in &values[values.len() - objects..] {
        match parse_valid(text) {
            Value::Object(map) => super::merge_objects(&mut merged, map),
            _ => unreachable!("the run holds objects only"),
        }
    }
    Member::Merged(Value::Object(merged))
}

/// Finds the top-level members of a document, checking each value strictly.
struct TopLevel;

impl<'de> Visitor<'de> for TopLevel {
    type Value = PropertiesText;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PropertiesText, A::Error> {
        let mut document = PropertiesText { text: String::from("{"), members: Vec::new() };
        let mut top = Keys::default();
        while let Some(key) = map.next_key::<String>()? {
            if !top.insert(0, Cow::Owned(key.clone())) {
                return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
            }
            let value: &'de RawValue = map.next_value()?;
            super::splice::check_strict(value.get()).map_err(de::Error::custom)?;
            if !document.members.is_empty() {
                document.text.push(',');
            }
            document.text.push_str(&serde_json::to_string(&key).expect("a string serialises"));
            document.text.push(':');
            let start = document.text.len();
            document.text.push_str(value.get());
            document.members.push((key, start..document.text.len()));
        }
        top.close(0).map_err(|key| de::Error::custom(format_args!("duplicate key {key:?}")))?;
        document.text.push('}');
        Ok(document)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> PropertiesText {
        PropertiesText::parse(s).unwrap()
    }

    #[test]
    fn finds_the_top_level_members_and_keeps_the_text_as_given() {
        let doc = text("{ \"a\" : [1, 2] ,\n \"b\\u0041\": {\"x\": \"y\"}, \"c\": 1.50 }");
        for span in doc.spans() {
            assert_eq!(&doc.text()[span.key_start..span.value.start], format!("{}:", serde_json::to_string(&span.key).unwrap()));
        }
        let members: Vec<(&str, &str)> = doc.members().collect();
        assert_eq!(members, [("a", "[1, 2]"), ("bA", "{\"x\": \"y\"}"), ("c", "1.50")]);
        assert_eq!(doc.get("c"), Some("1.50"));
        assert_eq!(doc.get("d"), None);
        assert_eq!(doc.text(), "{\"a\":[1, 2],\"bA\":{\"x\": \"y\"},\"c\":1.50}");
        assert_eq!(doc.subset(&["bA"]), serde_json::json!({"bA": {"x": "y"}}).as_object().unwrap().clone());
        assert_eq!(doc.subset(&["c", "a", "d"]), serde_json::json!({"a": [1, 2], "c": 1.50}).as_object().unwrap().clone());
    }

    #[test]
    fn spelled_in_place_as_from_members_spells_it() {
        for doc in [
            r#"{"project": {"properties": { "a" : [1, 2] ,
                "b\u0041": {"x": "y"}, "\u00e9\n": 1.50, "q\/": "é" } }}"#,
            r#"{"project": {"properties": {}}}"#,
            r#"{"project":{"properties":{"a":1}}}"#,
        ] {
            let found = super::super::splice::check_members(doc, 3).unwrap();
            let members: Vec<(String, Range<usize>)> = found.iter().filter(|f| f.depth == 3).map(|f| (f.key.to_string(), f.value.clone())).collect();
            let copied = PropertiesText::from_members(doc, members.iter().map(|(k, r)| (Cow::Borrowed(k.as_str()), r.clone())));
            let in_place = PropertiesText::from_members_in(doc.as_bytes().to_vec(), members).unwrap();
            assert_eq!(in_place.text, copied.text);
            assert_eq!(in_place.members, copied.members);
        }
        // A member that would have to move right is refused, the buffer untouched.
        let buffer = b"{\"a\":1}".to_vec();
        assert_eq!(PropertiesText::from_members_in(buffer.clone(), vec![("long key".into(), 5..6)]).unwrap_err().0, buffer);
    }

    #[test]
    fn refuses_what_strict_parsing_refuses() {
        for bad in [
            r#"[1]"#,
            r#""x""#,
            r#"{"a": 1, "a": 2}"#,
            r#"{"a": {"b": 1, "b": 2}}"#,
            r#"{"a": [{"k": 1, "k": 1}]}"#,
            r#"{"a": {"\u0062": 1, "b": 2}}"#,
            r#"{"a": 1e400}"#,
            r#"{"a": 1,}"#,
            r#"{"a": 1} x"#,
        ] {
            assert!(PropertiesText::parse(bad).is_err(), "{bad} was accepted");
        }
        // Many keys: past the list, into the hash set, a duplicate is still found.
        let keys: Vec<String> = (0..40).map(|i| format!("\"k{i}\": {i}")).collect();
        assert!(PropertiesText::parse(&format!("{{\"o\": {{{}}}}}", keys.join(","))).is_ok());
        assert!(PropertiesText::parse(&format!("{{\"o\": {{{}, \"k3\": 0}}}}", keys.join(","))).is_err());
        assert!(PropertiesText::parse(&format!("{{{}, \"k39\": 0}}", keys.join(","))).is_err());
        // Objects inside a large one, before and after it outgrows the list, have keys of their own.
        let doc = format!("{{\"o\": {{\"in\": {{\"k0\": 1}}, {}, \"inner\": {{\"k0\": 1, \"k1\": [{{\"k0\": 2}}]}}}}}}", keys.join(","));
        PropertiesText::parse(&doc).unwrap();
        let doc = format!("{{\"o\": {{{}, \"inner\": {{\"k0\": 1, \"k0\": 2}}}}}}", keys.join(","));
        assert!(PropertiesText::parse(&doc).is_err());
    }

    #[test]
    fn declaring_keeps_the_declaring_members_and_refuses_what_the_text_reading_refuses() {
        let doc = r#"{"app": {"x": [1, {"y": 2}]}, "env": {"A": "1"}, "opschain": {"files": {}}, "files": "data"}"#;
        let Declaring(kept) = serde_json::from_str(doc).unwrap();
        assert_eq!(kept, text(doc).subset(&super::super::declarations::MEMBERS));
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["env", "opschain", "files"]);
        for bad in [r#"{"app": {"x": [{"k": 1, "k": 2}]}}"#, r#"{"a": 1, "a": 1}"#, r#"{"env": {"A": "1", "A": "2"}}"#, r#"{"a": 1e400}"#, "[]"] {
            assert!(PropertiesText::parse(bad).is_err() && serde_json::from_str::<Declaring>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn merges_as_the_tree_merge_does() {
        let repo = text(r#"{"a": {"x": 1, "y": [1]}, "keep": "r", "s": {"o": 1}}"#);
        let project = text(r#"{"a": {"y": [2], "z": {"q": 1}}, "s": 5, "p": true}"#);
        let environment = text(r#"{"a": {"z": {"r": 2}}, "s": {"n": 2}, "e": null}"#);
        let sources = [&repo, &project, &environment];
        let merged: Value = serde_json::from_str(&merge(&sources)).unwrap();
        let mut expected = Map::new();
        for source in sources {
            super::super::merge_objects(&mut expected, source.to_map());
        }
        assert_eq!(merged, Value::Object(expected.clone()));
        // Same order of members, too.
        let order: Vec<&String> = merged.as_object().unwrap().keys().collect();
        assert_eq!(order, expected.keys().collect::<Vec<_>>());
        assert_eq!(merge(&[]), "{}");
        // A lone source with members merges to its own text, byte for byte (the agent writes the
        // project copy's text as the merged properties when the project is the only source).
        let empty = text("{}");
        for lone in [&repo, &project, &text("{ \"k\\u0041\" : [1, 2.50] ,\n \"b\": {} }")] {
            assert_eq!(merge(&[&empty, lone, &empty]), lone.text());
        }
    }
}
