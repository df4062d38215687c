//! A change keeps the objects it needs: its commit rewritten out of the user's repository and
//! pruned (`git gc --prune=now`) while a step runs breaks neither that step's git history nor
//! the change's retry (process backend; the real binaries).

use crate::common::git;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn opschain(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_opschain"));
    c.env("OPSCHAIN_STATE_DIR", state)
        .env("OPSCHAIN_RUNNER_BIN", crate::common::runner_bin())
        .env("OPSCHAIN_GRACE_SECS", "2")
        .env_remove("OPSCHAIN_REPO_FOLDER")
        .env_remove("OPSCHAIN_BACKEND");
    c
}

/// Waits until `done` holds, failing after 60 s with `what`.
fn wait_for(what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_pruned_commit_breaks_neither_a_running_step_nor_the_retry() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, state, marks) = (dir.path().join("repo"), dir.path().join("state"), dir.path().join("marks"));
    std::fs::create_dir_all(repo.join(".opschain")).unwrap();
    std::fs::create_dir_all(&marks).unwrap();
    // The step says it started, waits until the test has pruned its commit from the user's
    // repository, reads its own history, and succeeds only once `go` exists (so that the first
    // run fails and the change is retried).
    let marks_dir = marks.display();
    std::fs::write(
        repo.join(".opschain/actions.toml"),
        format!(
            r#"[actions.deploy]
run = '''
touch {marks_dir}/started
while [ ! -e {marks_dir}/pruned ]; do sleep 0.05; done
git log --format=%s HEAD | grep -q first && git show --stat HEAD > /dev/null && echo "history readable"
test -e {marks_dir}/go
'''
"#
        ),
    )
    .unwrap();
    std::fs::write(repo.join("payload.txt"), "first\n").unwrap();
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "first"]);
    let commit = git(&repo, &["rev-parse", "HEAD"]).trim().to_string();

    crate::common::make_target(&state, "p", "e");
    let controller = opschain(&state)
        .args(["change", "create", "-p", "p", "-e", "e", "-a", "deploy", "--repo"])
        .arg(&repo)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the step to start", || marks.join("started").exists());

    // The user rewrites the commit away and prunes it.
    std::fs::write(repo.join("payload.txt"), "rewritten\n").unwrap();
    git(&repo, &["commit", "-q", "-a", "--amend", "-m", "rewritten"]);
    git(&repo, &["reflog", "expire", "--expire=now", "--all"]);
    git(&repo, &["gc", "-q", "--prune=now"]);
    let gone = Command::new("git").arg("-C").arg(&repo).args(["cat-file", "-e", &format!("{commit}^{{commit}}")]).stderr(Stdio::null()).status().unwrap();
    assert!(!gone.success(), "the commit is gone from the user's repository");
    std::fs::write(marks.join("pruned"), "").unwrap();

    let out = controller.wait_with_output().unwrap();
    let shown = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "the first run fails on its own test: {shown}");
    assert!(shown.contains("history readable"), "the running step still reads its commit's history: {shown}");

    // The retry runs the same commit, from what the change kept.
    std::fs::remove_file(marks.join("started")).unwrap();
    std::fs::write(marks.join("go"), "").unwrap();
    let out = opschain(&state).args(["change", "retry", "1"]).output().unwrap();
    let shown = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "the retry succeeds: {shown}");
    assert!(shown.contains("history readable"), "{shown}");
    assert!(shown.contains(&commit[..12]), "the same commit: {shown}");
}
