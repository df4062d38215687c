//! Every case of fixtures/malformed through the real agent: the expected exit status, one stderr
//! line naming the file and where in it, and nothing written.

use std::path::Path;

use crate::common::*;

#[derive(serde::Deserialize)]
struct Expect {
    exit: i32,
    stderr_contains: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
}

fn check_case(case: &Path) -> Result<(), String> {
    let expect: Expect = serde_json::from_slice(&std::fs::read(case.join("expect.json")).unwrap()).unwrap();
    let repo = tempfile::tempdir().unwrap();
    copy_tree(case, repo.path());
    let before = snapshot(repo.path());
    let args: Vec<&str> = std::iter::once("step").chain(expect.args.iter().map(String::as_str)).collect();
    let output = run_step(repo.path(), &args);
    let lines = stderr_lines(&output);
    let status = output.status.code();
    if status != Some(expect.exit) {
        return Err(format!("exit {status:?}, expected {}; stderr: {lines:?}", expect.exit));
    }
    let errors: Vec<&String> = lines.iter().filter(|l| l.starts_with("opschain-runner:")).collect();
    if errors.len() != 1 {
        return Err(format!("expected exactly one error line, got {lines:?}"));
    }
    for fragment in &expect.stderr_contains {
        if !errors[0].contains(fragment.as_str()) {
            return Err(format!("error line {:?} lacks {fragment:?}", errors[0]));
        }
    }
    if snapshot(repo.path()) != before {
        return Err("the agent wrote into the repo".into());
    }
    if !output.stdout.is_empty() {
        return Err(format!("unexpected stdout {:?}", String::from_utf8_lossy(&output.stdout)));
    }
    Ok(())
}

#[test]
fn every_malformed_case_is_refused_with_one_clear_line_and_nothing_written() {
    let mut failures = Vec::new();
    let mut count = 0;
    let mut cases: Vec<_> = std::fs::read_dir(fixture("malformed")).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    cases.sort();
    for case in cases {
        count += 1;
        if let Err(e) = check_case(&case) {
            failures.push(format!("{}: {e}", case.file_name().unwrap().to_string_lossy()));
        }
    }
    assert!(count >= 40, "only {count} cases found");
    assert!(!Path::new("/tmp/opschain-should-not-exist").exists(), "a symlinked file was written through");
    assert!(failures.is_empty(), "{} of {count} cases failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn a_context_over_the_size_limit_is_refused_before_parsing() {
    let repo = tempfile::tempdir().unwrap();
    copy_tree(&fixture("malformed/mode_invalid"), repo.path());
    // 100 MB of file content: over the default 64 MiB limit.
    let big = "x".repeat(100 << 20);
    let context =
        format!(r#"{{"context": {{"step": {{"action": "deploy"}}}}, "project": {{"properties": {{"opschain": {{"files": {{"big": {{"content": "{big}"}}}}}}}}}}}}"#);
    std::fs::write(repo.path().join(".opschain/step_context.json"), context).unwrap();
    let before = snapshot(repo.path());
    let output = run_step(repo.path(), &["step"]);
    assert_eq!(output.status.code(), Some(65), "{:?}", stderr_lines(&output));
    let lines = stderr_lines(&output);
    assert!(lines.iter().any(|l| l.contains("step_context.json") && l.contains("larger than the limit")), "{lines:?}");
    assert_eq!(snapshot(repo.path()), before);
}
