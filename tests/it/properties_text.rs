//! Property tests of `opschain_runner::properties::text`: merging documents by splicing their text
//! gives the document the tree merge (`properties::merge_objects`) gives, member for member and in
//! the same order; and the text form accepts exactly the documents strict parsing accepts.

use std::path::Path;

use opschain_runner::json::{self, StrictObject};
use opschain_runner::properties::merge_objects;
use opschain_runner::properties::text::{self, PropertiesText};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Scalars from small sets, with number spellings that parse to the same value.
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![Just(Value::Null), any::<bool>().prop_map(Value::Bool), (-3i64..4).prop_map(Value::from), Just(json!(1.5)), "[ab\"\\\\é]{0,3}".prop_map(Value::String),]
}

/// Keys from a small set, so that the sources share members at every depth; one needs escaping.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![Just("a".to_string()), Just("b".to_string()), Just("opschain".to_string()), Just("q\"/".to_string())]
}

/// A value of nested objects and arrays, a few levels deep.
fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A properties document: an object.
fn document() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::vec((key(), value()), 0..5).prop_map(|m| m.into_iter().collect())
}

/// `doc` as JSON text, compact or pretty.
fn spelled(doc: &Map<String, Value>, pretty: bool) -> String {
    if pretty {
        serde_json::to_string_pretty(doc).unwrap()
    } else {
        serde_json::to_string(doc).unwrap()
    }
}

proptest! {
    #![proptest_config(crate::common::proptest_config(512))]

    #[test]
    fn splicing_merges_as_the_tree_merge_does(docs in prop::collection::vec((document(), any::<bool>()), 0..4)) {
        let texts: Vec<PropertiesText> = docs.iter().map(|(d, pretty)| PropertiesText::parse(&spelled(d, *pretty)).unwrap()).collect();
        let refs: Vec<&PropertiesText> = texts.iter().collect();
        let mut expected = Map::new();
        for (doc, _) in &docs {
            merge_objects(&mut expected, doc.clone());
        }
        let spliced: Map<String, Value> = serde_json::from_str(&text::merge(&refs)).unwrap();
        // Compared as compact text: equal members in the same order.
        prop_assert_eq!(serde_json::to_string(&spliced).unwrap(), serde_json::to_string(&expected).unwrap());
        for (text, (doc, _)) in texts.iter().zip(&docs) {
            prop_assert_eq!(&text.to_map(), doc);
        }
    }

    #[test]
    fn the_text_form_accepts_what_strict_parsing_accepts(
        members in prop::collection::vec((key(), value(), 0..3usize), 0..6),
        nested_dup in any::<bool>(),
    ) {
        // Objects written by hand, so that keys can repeat: at the top, or one level down.
        let mut text = String::from("{");
        for (i, (key, value, copies)) in members.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            let value = if nested_dup && *copies == 2 {
                format!("{{{k}: 1, {k}: 2}}", k = serde_json::to_string(key).unwrap())
            } else {
                value.to_string()
            };
            text.push_str(&format!("{}: {}", serde_json::to_string(key).unwrap(), value));
        }
        text.push('}');
        let strict = json::parse::<StrictObject>(Path::new("p.json"), text.as_bytes());
        let spliced = PropertiesText::parse(&text);
        prop_assert_eq!(strict.is_ok(), spliced.is_ok(), "{}", text);
        if let (Ok(StrictObject(tree)), Ok(spliced)) = (strict, spliced) {
            prop_assert_eq!(spliced.to_map(), tree);
        }
    }
}

proptest! {
    #![proptest_config(crate::common::proptest_config(512))]

    /// The agent diffs a copy it reads back in pieces (`splice::diff_known_rest`: only the part
    /// after the first differing byte held) as it diffs the whole text (`splice::diff_known`).
    #[test]
    fn diffing_from_the_first_difference_agrees_with_diffing_the_whole(before in document(), after in document(), pretty in any::<bool>()) {
        use opschain_runner::properties::splice;
        let before = PropertiesText::parse(&spelled(&before, false)).unwrap();
        let (spans, before) = (before.spans(), format!("{}\n", before.text()));
        let after = format!("{}\n", spelled(&after, pretty));
        let mut prefix = before.bytes().zip(after.bytes()).take_while(|(b, a)| b == a).count();
        while !before.is_char_boundary(prefix) {
            prefix -= 1;
        }
        let mut whole = Vec::new();
        splice::diff_known(&before, &spans, &after, &mut whole).unwrap();
        if prefix < before.len() || prefix < after.len() {
            let mut rest = Vec::new();
            if splice::diff_known_rest(&before, &spans, prefix, &after[prefix..], &mut rest).unwrap() {
                prop_assert_eq!(rest, whole);
            } else {
                prop_assert_eq!(prefix, 0);
            }
        } else {
            prop_assert!(whole.is_empty());
        }
    }
}

proptest! {
    #![proptest_config(crate::common::proptest_config(512))]

    /// The agent spells its project properties over the step context's own text
    /// (`PropertiesText::from_members_in`); the document is the one `from_members` makes in a copy.
    #[test]
    fn spelling_in_place_makes_the_document_a_copy_makes(doc in document(), pretty in any::<bool>(), pad in 0..3usize) {
        use opschain_runner::properties::splice;
        use std::borrow::Cow;
        let context = format!("{{\"project\": {{{}\"properties\":{}{}}}}}", " ".repeat(pad), " ".repeat(pad), spelled(&doc, pretty));
        let found = splice::check_members(&context, 3).unwrap();
        let members: Vec<(String, std::ops::Range<usize>)> = found.iter().filter(|f| f.depth == 3).map(|f| (f.key.to_string(), f.value.clone())).collect();
        let copied = PropertiesText::from_members(&context, members.iter().map(|(k, r)| (Cow::Borrowed(k.as_str()), r.clone())));
        let in_place = PropertiesText::from_members_in(context.clone().into_bytes(), members).unwrap();
        prop_assert_eq!(in_place.text(), copied.text());
        prop_assert_eq!(in_place.spans(), copied.spans());
        prop_assert_eq!(in_place.to_map(), doc);
    }
}
