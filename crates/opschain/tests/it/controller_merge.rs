//! Parallel steps that change the same properties, through the real `opschain` binary on the
//! process backend: each step's diff is applied as the step meant it (merged three ways with
//! what changed while it ran), or the step fails with a conflict that names the paths.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};

fn opschain(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_opschain"))
        .env("OPSCHAIN_STATE_DIR", state)
        .env("OPSCHAIN_RUNNER_BIN", crate::common::runner_bin())
        .env_remove("OPSCHAIN_REPO_FOLDER")
        .env_remove("OPSCHAIN_BACKEND")
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("--- stdout\n{}\n--- stderr\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A git repository whose `.opschain/actions.toml` is `actions`.
fn project(actions: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(".opschain")).unwrap();
    std::fs::write(dir.path().join(".opschain/actions.toml"), actions).unwrap();
    for args in [&["init", "-q"][..], &["add", "-A"], &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init"]] {
        assert!(Command::new("git").arg("-C").arg(dir.path()).args(args).status().unwrap().success());
    }
    dir
}

/// Runs `action` of `repo` in environment `dev` of project `p`, whose properties are `props`.
fn run_with(state: &Path, repo: &Path, props: Value, action: &str) -> Output {
    let out = opschain(state, &["properties", "set", "-p", "p", "-e", "dev", "--json", &props.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    opschain(state, &["change", "create", "--repo", repo.to_str().unwrap(), "-p", "p", "-e", "dev", "-a", action])
}

fn env_props(state: &Path) -> Value {
    let out = opschain(state, &["properties", "show", "-p", "p", "-e", "dev"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Two parallel children: one sets `servers` to `first`, the other, a second later (both started
/// from the same version), to `second`.
fn two_children(first: &str, second: &str) -> String {
    format!(
        r#"
[actions.root]
steps = ["one", "two"]
run_as = "parallel"

[actions.one]
run = '''opschain-runner property set --environment --json servers '{first}' '''

[actions.two]
run = '''sleep 1; opschain-runner property set --environment --json servers '{second}' '''
"#
    )
}

#[test]
fn independent_edits_of_one_array_by_parallel_children_are_both_kept() {
    let state = tempfile::tempdir().unwrap();
    let repo = project(&two_children(r#"["b", "c"]"#, r#"["a", "c"]"#));
    let out = run_with(state.path(), repo.path(), json!({"servers": ["a", "b", "c"], "other": 1}), "root");
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("change 1 success"), "{}", text(&out));
    // Applied by index, the second diff (`remove /servers/1`) would have left ["b"].
    assert_eq!(env_props(state.path()), json!({"servers": ["c"], "other": 1}));
}

#[test]
fn overlapping_edits_by_parallel_children_fail_the_later_step_naming_the_path() {
    let state = tempfile::tempdir().unwrap();
    let repo = project(&two_children(r#"["a", "x", "c"]"#, r#"["a", "y", "c"]"#));
    let out = run_with(state.path(), repo.path(), json!({"servers": ["a", "b", "c"]}), "root");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let show = opschain(state.path(), &["change", "show", "1"]);
    let show = String::from_utf8_lossy(&show.stdout);
    for needle in [
        "changed by both, differently: /servers/1.",
        "Original environment properties",
        "Patched original properties",
        "Current environment properties",
        "opschain change retry 1",
    ] {
        assert!(show.contains(needle), "missing {needle:?} in\n{show}");
    }
    // The first step's edit stands; the second left no trace.
    assert_eq!(env_props(state.path()), json!({"servers": ["a", "x", "c"]}));
}
