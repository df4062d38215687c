//! The controller reads the user's JSON (`properties set`, `secrets set`) with the crate's strict
//! readers, as the agent reads its inputs: a duplicate key, a non-object, an invalid variable name
//! or a value that is no string is refused with its pointer, and nothing is saved.

use std::path::Path;
use std::process::{Command, Output};

/// `opschain ARGS` with its state in `state`.
fn run(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_opschain")).env("OPSCHAIN_STATE_DIR", state).args(args).output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn properties_set_refuses_what_the_strict_reader_refuses_and_saves_nothing() {
    let state = tempfile::tempdir().unwrap();
    let saved = run(state.path(), &["properties", "set", "--project", "p", "--json", r#"{"a": {"b": 1}}"#]);
    assert!(saved.status.success(), "{}", stderr(&saved));
    for (bad, expected) in [
        (r#"{"a": {"b": 1, "b": 2}}"#, "at /a: duplicate key \"b\""),
        (r#"{"a": 1, "a": 2}"#, "duplicate key \"a\""),
        (r#"[1]"#, "--json: "),
        (r#"{"a": 1e999}"#, "at /a: "),
    ] {
        let output = run(state.path(), &["properties", "set", "--project", "p", "--json", bad]);
        assert!(!output.status.success(), "{bad} was accepted");
        assert!(stderr(&output).contains(expected) && stderr(&output).contains("line 1, column"), "{bad}: {}", stderr(&output));
    }
    let file = state.path().join("props.json");
    std::fs::write(&file, "{\n  \"x\": 1,\n  \"x\": 2\n}\n").unwrap();
    let output = run(state.path(), &["properties", "set", "--project", "p", file.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("props.json") && stderr(&output).contains("line 3"), "{}", stderr(&output));
    let history = run(state.path(), &["properties", "history", "--project", "p"]);
    assert_eq!(String::from_utf8_lossy(&history.stdout).lines().count(), 2, "the empty first version and the good one only");
}

#[test]
fn secrets_set_reads_a_set_as_opschain_exec_does() {
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("set.json");
    for (bad, expected) in [
        (r#"{"TOKEN": "a", "TOKEN": "b"}"#, "duplicate key"),
        (r#"{"not-portable": "a"}"#, "/not-portable"),
        (r#"{"NUMBER": 424242}"#, "/NUMBER"),
        (r#"["TOKEN"]"#, "set.json"),
    ] {
        std::fs::write(&file, bad).unwrap();
        let output = run(state.path(), &["secrets", "set", "s", "--file", file.to_str().unwrap()]);
        assert!(!output.status.success(), "{bad} was accepted");
        assert!(stderr(&output).contains(expected), "{bad}: {}", stderr(&output));
        assert!(!stderr(&output).contains("424242"), "a value is never quoted: {}", stderr(&output));
    }
    let listed = run(state.path(), &["secrets", "list"]);
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(!listed.lines().any(|line| line.split_whitespace().next() == Some("s")), "nothing was saved: {listed}");
    std::fs::write(&file, r#"{"TOKEN": "a"}"#).unwrap();
    let output = run(state.path(), &["secrets", "set", "s", "--file", file.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let missing = run(state.path(), &["secrets", "set", "s", "--file", state.path().join("absent.json").to_str().unwrap()]);
    assert!(!missing.status.success() && stderr(&missing).contains("absent.json: not found"), "{}", stderr(&missing));
}
