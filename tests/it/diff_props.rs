//! Property tests of `opschain_runner::diff`: the patch applied to `before` gives `after`, under
//! json-patch and under Python's `jsonpatch` (an independent implementation), and it is minimal
//! where the module promises it is.

use std::io::Write;
use std::process::Command;

use json_patch::jsonptr::PointerBuf;
use json_patch::{Patch, PatchOperation};
use opschain_runner::diff::{diff, Differ};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{TestCaseError, TestRunner};
use serde_json::{json, Map, Value};

/// Scalars from small sets, so that unrelated documents still share values and keys: equal
/// elements are what make array alignment interesting. Floats are multiples of 1/4, exact in
/// binary and in decimal, so they survive the trip through Python unchanged.
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..4).prop_map(Value::from),
        (-8i32..8).prop_map(|q| json!(f64::from(q) / 4.0)),
        Just(json!(-0.0)),
        "[ab~/]{0,3}".prop_map(Value::String),
    ]
}

/// Object keys, including the two characters a JSON pointer escapes, and the empty key.
fn key() -> impl Strategy<Value = String> {
    "[ab~/]{0,2}"
}

/// A JSON document of nested objects and arrays, a few levels deep.
fn document() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..7).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..5).prop_map(|members| Value::Object(members.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// One random edit of a document, at a node reached by following `route` from the root.
#[derive(Clone, Debug)]
enum Edit {
    /// Inserts the value into the array (at `at`) or object (under the key) there, or replaces a
    /// scalar there.
    Insert(Vec<Index>, Index, String, Value),
    /// Removes an element or member (the `at`th) there, if any.
    Remove(Vec<Index>, Index),
    /// Replaces the node there.
    Replace(Vec<Index>, Value),
    /// Moves an array element there from one index to another: a shift of everything between.
    Move(Vec<Index>, Index, Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    let route = || prop::collection::vec(any::<Index>(), 0..4);
    prop_oneof![
        (route(), any::<Index>(), key(), document()).prop_map(|(r, at, k, v)| Edit::Insert(r, at, k, v)),
        (route(), any::<Index>()).prop_map(|(r, at)| Edit::Remove(r, at)),
        (route(), document()).prop_map(|(r, v)| Edit::Replace(r, v)),
        (route(), any::<Index>(), any::<Index>()).prop_map(|(r, from, to)| Edit::Move(r, from, to)),
    ]
}

/// Follows `route` from `doc` as far as it goes (each step picks a child of a non-empty container)
/// and returns the node reached with its JSON pointer.
fn follow<'d>(doc: &'d mut Value, route: &[Index]) -> (&'d mut Value, PointerBuf) {
    let mut pointer = PointerBuf::root();
    let mut node: &Value = doc;
    for step in route {
        node = match node {
            Value::Array(items) if !items.is_empty() => {
                let at = step.index(items.len());
                pointer.push_back(at);
                &items[at]
            }
            Value::Object(members) if !members.is_empty() => {
                let (key, member) = members.iter().nth(step.index(members.len())).expect("the index is within the object");
                pointer.push_back(key.as_str());
                member
            }
            _ => break,
        };
    }
    // serde_json resolves the pointer on its own, which checks the escaping too.
    let node = doc.pointer_mut(pointer.as_str()).expect("the pointer of a node just visited resolves");
    (node, pointer)
}

fn apply_edit(doc: &mut Value, edit: &Edit) {
    match edit {
        Edit::Insert(route, at, key, value) => match follow(doc, route).0 {
            Value::Array(items) => items.insert(at.index(items.len() + 1), value.clone()),
            Value::Object(members) => {
                members.insert(key.clone(), value.clone());
            }
            node => *node = value.clone(),
        },
        Edit::Remove(route, at) => match follow(doc, route).0 {
            Value::Array(items) if !items.is_empty() => {
                items.remove(at.index(items.len()));
            }
            Value::Object(members) if !members.is_empty() => {
                let key = members.keys().nth(at.index(members.len())).cloned();
                if let Some(key) = key {
                    members.remove(&key);
                }
            }
            _ => {}
        },
        Edit::Replace(route, value) => *follow(doc, route).0 = value.clone(),
        Edit::Move(route, from, to) => {
            if let Value::Array(items) = follow(doc, route).0 {
                if !items.is_empty() {
                    let item = items.remove(from.index(items.len()));
                    items.insert(to.index(items.len() + 1), item);
                }
            }
        }
    }
}

/// A document and the same document after a few random edits.
fn edited_pair() -> impl Strategy<Value = (Value, Value)> {
    (document(), prop::collection::vec(edit(), 1..6)).prop_map(|(before, edits)| {
        let mut after = before.clone();
        for edit in &edits {
            apply_edit(&mut after, edit);
        }
        (before, after)
    })
}

/// Either an edited pair or two unrelated documents.
fn any_pair() -> impl Strategy<Value = (Value, Value)> {
    prop_oneof![edited_pair(), (document(), document())]
}

/// Applies `patch` to a copy of `before` with json-patch.
fn apply(before: &Value, patch: &Patch) -> Result<Value, TestCaseError> {
    let mut doc = before.clone();
    json_patch::patch(&mut doc, patch).map_err(|err| TestCaseError::fail(format!("{err} (patch {patch:?})")))?;
    Ok(doc)
}

/// The same document with the members of every object in reverse order.
fn reorder(doc: &Value) -> Value {
    match doc {
        Value::Array(items) => Value::Array(items.iter().map(reorder).collect()),
        Value::Object(members) => Value::Object(members.iter().rev().map(|(k, v)| (k.clone(), reorder(v))).collect()),
        scalar => scalar.clone(),
    }
}

proptest! {
    #![proptest_config(crate::common::proptest_config(512))]

    #[test]
    fn patch_turns_before_into_after((before, after) in any_pair()) {
        let patch = diff(&before, &after);
        prop_assert_eq!(apply(&before, &patch)?, after);
    }

    #[test]
    fn patch_is_correct_at_every_alignment_limit(
        (before, after) in any_pair(),
        limit in prop_oneof![Just(0usize), Just(1), Just(2), Just(5), Just(usize::MAX)],
    ) {
        let patch = Differ::new().max_align_edits(limit).diff(&before, &after);
        prop_assert_eq!(apply(&before, &patch)?, after);
    }

    #[test]
    fn unchanged_document_gives_no_op(doc in document()) {
        prop_assert!(diff(&doc, &doc.clone()).0.is_empty());
        prop_assert!(diff(&doc, &reorder(&doc)).0.is_empty());
    }

    #[test]
    fn one_insertion_is_one_add(
        items in prop::collection::vec(document(), 0..12),
        at in any::<Index>(),
        new in document(),
    ) {
        let before = json!({"props": {"arr": items}});
        let mut after = before.clone();
        let at = at.index(items.len() + 1);
        if let Some(Value::Array(arr)) = after.pointer_mut("/props/arr") {
            arr.insert(at, new.clone());
        }
        let patch = diff(&before, &after);
        prop_assert_eq!(patch.0.len(), 1, "{:?}", patch);
        match &patch.0[0] {
            // Among equal neighbours, any of their indices is right.
            PatchOperation::Add(op) => prop_assert_eq!(&op.value, &new),
            op => prop_assert!(false, "not an add: {:?}", op),
        }
        prop_assert_eq!(apply(&before, &patch)?, after);
    }

    #[test]
    fn one_removal_is_one_remove(
        items in prop::collection::vec(document(), 1..12),
        at in any::<Index>(),
    ) {
        let before = json!({"arr": items});
        let mut after = before.clone();
        if let Some(Value::Array(arr)) = after.pointer_mut("/arr") {
            arr.remove(at.index(items.len()));
        }
        let patch = diff(&before, &after);
        prop_assert_eq!(patch.0.len(), 1, "{:?}", patch);
        prop_assert!(matches!(patch.0[0], PatchOperation::Remove(_)), "{:?}", patch);
        prop_assert_eq!(apply(&before, &patch)?, after);
    }

    #[test]
    fn one_changed_node_is_one_replace_at_its_path(
        before in document(),
        route in prop::collection::vec(any::<Index>(), 0..5),
    ) {
        let mut after = before.clone();
        // No scalar of the generator has this value, so the node really changes.
        let (node, pointer) = follow(&mut after, &route);
        *node = json!("changed!");
        let patch = diff(&before, &after);
        prop_assert_eq!(patch.0.len(), 1, "{:?}", patch);
        match &patch.0[0] {
            PatchOperation::Replace(op) => prop_assert_eq!(&op.path, &pointer),
            op => prop_assert!(false, "not a replace: {:?}", op),
        }
        prop_assert_eq!(apply(&before, &patch)?, after);
    }
}

/// The example of the module documentation: prepending one object to 10,000.
#[test]
fn prepending_to_ten_thousand_objects_is_one_add() {
    let objects = |range: std::ops::Range<i64>| -> Vec<Value> { range.map(|i| json!({"id": i, "name": format!("host-{i}"), "port": 8000 + i})).collect() };
    let before = json!({"arr": objects(0..10_000)});
    let after = json!({"arr": objects(-1..10_000)});
    let patch = diff(&before, &after);
    let expected = json!([{"op": "add", "path": "/arr/0", "value": {"id": -1, "name": "host--1", "port": 7999}}]);
    assert_eq!(serde_json::to_value(&patch).ok(), Some(expected));
    // What json-patch's index-by-index diff makes of it, as the module documentation says.
    assert_eq!(json_patch::diff(&before, &after).0.len(), 30_001);
}

/// Applies the patches of a batch of generated pairs with Python's `jsonpatch`, in one subprocess,
/// and checks each result against `after`. Skipped, with the reason printed, where python3 or its
/// `jsonpatch` package is missing.
#[test]
fn python_jsonpatch_agrees() {
    const SCRIPT: &str = r#"
import json, sys
import jsonpatch
with open(sys.argv[1]) as f:
    cases = json.load(f)
results = [jsonpatch.apply_patch(case["before"], case["patch"]) for case in cases]
with open(sys.argv[2], "w") as f:
    json.dump(results, f)
"#;
    match Command::new("python3").args(["-c", "import jsonpatch"]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            eprintln!("skipped: python3 cannot import jsonpatch: {}", String::from_utf8_lossy(&out.stderr).trim());
            return;
        }
        Err(err) => {
            eprintln!("skipped: python3 does not run: {err}");
            return;
        }
    }

    let mut runner = TestRunner::deterministic();
    let strategy = any_pair();
    let mut pairs = Vec::new();
    let mut cases = Vec::new();
    for _ in 0..600 {
        let (before, after) = strategy.new_tree(&mut runner).expect("the generator never rejects").current();
        let patch = diff(&before, &after);
        cases.push(json!({"before": before, "patch": patch}));
        pairs.push((before, after, patch));
    }
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = dir.path().join("cases.json");
    let output = dir.path().join("results.json");
    let mut file = std::fs::File::create(&input).expect("the cases file");
    serde_json::to_writer(&mut file, &cases).expect("the cases are written");
    file.flush().expect("the cases are written");

    let run = Command::new("python3").arg("-c").arg(SCRIPT).arg(&input).arg(&output).output().expect("python3 runs");
    assert!(run.status.success(), "python3 failed: {}", String::from_utf8_lossy(&run.stderr));
    let results: Vec<Value> = serde_json::from_slice(&std::fs::read(&output).expect("the results file")).expect("JSON");
    assert_eq!(results.len(), pairs.len());
    let mut ops = 0;
    for ((before, after, patch), result) in pairs.iter().zip(&results) {
        ops += patch.0.len();
        assert_eq!(result, after, "jsonpatch applied {} to {before}", serde_json::to_string(patch).unwrap_or_default());
    }
    // The batch must exercise something: most pairs differ.
    assert!(ops > pairs.len(), "only {ops} ops in {} pairs", pairs.len());
}
