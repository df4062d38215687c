//! The public JSON Patch test suite (json-patch/json-patch-tests), kept in this repository at
//! `tests/data/json-patch-tests` with its notice and licence (Apache-2.0 test data):
//!
//! * every patch is applied with `json_patch::patch`, which must give `expected`, or refuse the
//!   patch where the record has `error`;
//! * for every record with `expected`, `diff(doc, expected)` applied to `doc` must give `expected`.
//!
//! Records with `disabled: true`, and notes with only a `comment`, are skipped.

use std::cell::Cell;
use std::path::PathBuf;

use json_patch::Patch;
use opschain_runner::diff::diff;
use serde_json::Value;

/// The suite's directory, in this repository.
fn suite_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/json-patch-tests")
}

/// The records of one file of the suite. Panics, saying what is missing, if it can't be read.
fn records(file: &str) -> Vec<Value> {
    let path = suite_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("cannot read the JSON Patch suite's {}: {err}", path.display()));
    match serde_json::from_str(&text) {
        Ok(Value::Array(records)) => records,
        Ok(_) => panic!("{} is not an array of records", path.display()),
        Err(err) => panic!("{} is not JSON: {err}", path.display()),
    }
}

/// What one record asks for.
enum Outcome<'r> {
    /// The patch applies and gives this document.
    Expected(&'r Value),
    /// The patch is refused.
    Error(&'r str),
}

/// Runs `check` on every enabled record of both files that has a `doc`, a `patch` and an outcome,
/// and panics listing every failure. Returns how many records were checked.
fn each_record(check: impl Fn(&Value, &Value, Outcome) -> Result<(), String>) -> usize {
    let mut checked = 0;
    let mut failures = Vec::new();
    for file in ["tests.json", "spec_tests.json"] {
        for (i, record) in records(file).iter().enumerate() {
            if record.get("disabled") == Some(&Value::Bool(true)) {
                continue;
            }
            let (Some(doc), Some(patch)) = (record.get("doc"), record.get("patch")) else {
                continue;
            };
            let outcome = match (record.get("expected"), record.get("error")) {
                (Some(expected), _) => Outcome::Expected(expected),
                (None, Some(error)) => Outcome::Error(error.as_str().unwrap_or("")),
                (None, None) => continue,
            };
            checked += 1;
            if let Err(failure) = check(doc, patch, outcome) {
                let comment = record.get("comment").and_then(Value::as_str).unwrap_or("");
                failures.push(format!("{file} record {i} ({comment}): {failure}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    checked
}

#[test]
fn json_patch_applies_as_the_suite_says() {
    let checked = each_record(|doc, patch, outcome| {
        let parsed = serde_json::from_value::<Patch>(patch.clone());
        let mut result = doc.clone();
        let applied = match &parsed {
            Ok(patch) => json_patch::patch(&mut result, patch).map_err(|err| err.to_string()),
            Err(err) => Err(format!("patch does not parse: {err}")),
        };
        match (outcome, applied) {
            (Outcome::Expected(expected), Ok(())) if result == *expected => Ok(()),
            (Outcome::Expected(expected), Ok(())) => Err(format!("gave {result}, not {expected}")),
            (Outcome::Expected(_), Err(err)) => Err(format!("refused: {err}")),
            (Outcome::Error(_), Err(_)) => Ok(()),
            (Outcome::Error(error), Ok(())) => Err(format!("applied, giving {result}, but should fail: {error}")),
        }
    });
    assert!(checked > 100, "only {checked} records checked");
}

#[test]
fn diff_of_doc_and_expected_applies_back() {
    let diffed = Cell::new(0);
    each_record(|doc, _, outcome| {
        let Outcome::Expected(expected) = outcome else {
            return Ok(());
        };
        diffed.set(diffed.get() + 1);
        let patch = diff(doc, expected);
        let mut result = doc.clone();
        json_patch::patch(&mut result, &patch).map_err(|err| format!("diff {patch:?} does not apply: {err}"))?;
        if result == *expected {
            Ok(())
        } else {
            Err(format!("diff {patch:?} gave {result}, not {expected}"))
        }
    });
    assert!(diffed.get() > 60, "only {} records diffed", diffed.get());
}
