//! Validation against the repository's JSON Schemas (`schemas/`) with a standard validator:
//! Python's `jsonschema` (scripts/test installs it), one process per test binary, run by
//! `tests/validate_json.py`.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use serde_json::Value;

/// The validator process and its two pipes.
struct Validator {
    _child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

fn validator() -> &'static Mutex<Validator> {
    static VALIDATOR: OnceLock<Mutex<Validator>> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let script = super::repo_root().join("tests/validate_json.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run python3 {}: {e}", script.display()));
        let input = child.stdin.take().unwrap();
        let output = BufReader::new(child.stdout.take().unwrap());
        Mutex::new(Validator { _child: child, input, output })
    })
}

/// Validates `document` against the schema `schema` (`step_context`, `step_result`,
/// `build_secret_set`, or `properties`): `Err` with every error found.
pub fn check(schema: &str, document: &Value) -> Result<(), String> {
    let mut v = validator().lock().unwrap_or_else(|e| e.into_inner());
    let request = serde_json::json!({"schema": schema, "document": document});
    let mut answer = String::new();
    let asked = writeln!(v.input, "{request}").and_then(|()| v.input.flush()).and_then(|()| v.output.read_line(&mut answer));
    match asked {
        Ok(n) if n > 0 => {}
        _ => panic!("the schema validator (tests/validate_json.py, which needs Python's jsonschema: scripts/test installs it) did not answer"),
    }
    let answer: String = serde_json::from_str(&answer).expect("the validator answers a JSON string");
    if answer == "ok" {
        Ok(())
    } else {
        Err(answer)
    }
}

/// Panics unless `document` (read from `what`) is valid against `schema`.
pub fn assert_valid(schema: &str, document: &Value, what: &str) {
    if let Err(errors) = check(schema, document) {
        panic!("{what} does not match schemas/{schema}.schema.json: {errors}\n{document}");
    }
}

/// Validates the step result at `path` against `step_result.schema.json` when there is one.
pub fn check_result_file(path: &Path) {
    if let Ok(bytes) = std::fs::read(path) {
        let document: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        assert_valid("step_result", &document, &path.display().to_string());
    }
}
