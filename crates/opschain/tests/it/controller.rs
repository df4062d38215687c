//! End-to-end tests of the `opschain` controller: the real binaries, a state directory per test.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// `opschain` with its state in `state` and the test-built agent.
fn opschain(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_opschain"));
    c.env("OPSCHAIN_STATE_DIR", state)
        .env("OPSCHAIN_RUNNER_BIN", crate::common::runner_bin())
        .env("OPSCHAIN_GRACE_SECS", "2")
        .env_remove("OPSCHAIN_REPO_FOLDER")
        .env_remove("OPSCHAIN_BACKEND");
    c
}

fn run(state: &Path, args: &[&str]) -> Output {
    common::make_target_of(state, args);
    opschain(state).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("--- stdout\n{}\n--- stderr\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A git repository whose `.opschain/actions.toml` is `actions` (and properties.json `props`).
fn project(actions: &str, props: Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(".opschain")).unwrap();
    std::fs::write(dir.path().join(".opschain/actions.toml"), actions).unwrap();
    std::fs::write(dir.path().join(".opschain/properties.json"), props.to_string()).unwrap();
    for args in [&["init", "-q"][..], &["add", "-A"], &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init"]] {
        assert!(Command::new("git").arg("-C").arg(dir.path()).args(args).status().unwrap().success());
    }
    dir
}

fn change_run(state: &Path, repo: &Path, env: &str, action: &str) -> Output {
    run(state, &["change", "run", "--repo", repo.to_str().unwrap(), "--project", "p", "--environment", env, "--action", action])
}

/// The properties of project `p` (and environment `env`).
fn props(state: &Path, project: &str, env: Option<&str>) -> Value {
    let mut args = vec!["properties", "show", "--project", project];
    if let Some(env) = env {
        args.extend(["--environment", env]);
    }
    let out = run(state, &args);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// (depth, action, status) of every step of `change show`, in tree order.
fn steps(state: &Path, id: u32) -> Vec<(usize, String, String)> {
    let out = run(state, &["change", "show", &id.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    try_steps(state, id)
}

/// The steps of `change show` for polling: none while the change does not exist yet.
fn try_steps(state: &Path, id: u32) -> Vec<(usize, String, String)> {
    let out = run(state, &["change", "show", &id.to_string()]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let trimmed = l.trim_start();
            let depth = (l.len() - trimmed.len()) / 2;
            let (_, rest) = trimmed.split_once(" [")?;
            let (action, rest) = rest.split_once("] ")?;
            Some((depth, action.to_string(), rest.split_whitespace().next()?.to_string()))
        })
        .collect()
}

fn status_of(steps: &[(usize, String, String)], action: &str) -> String {
    steps.iter().find(|s| s.1 == action).unwrap_or_else(|| panic!("no step {action} in {steps:?}")).2.clone()
}

#[test]
fn demo_change_runs_three_levels_with_files_env_secret_and_both_levels_of_properties() {
    let state = tempfile::tempdir().unwrap();
    let before = common::snapshot(&common::fixture("demo"));
    let secrets = state.path().join("secrets.json");
    std::fs::write(&secrets, r#"{"API_TOKEN": "tok-123"}"#).unwrap();
    let out = run(state.path(), &["secrets", "set", "demo", "--file", secrets.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    // The worker sleeps, so the two parallel children overlap and both patch the environment.
    common::make_target(state.path(), "demo", "dev");
    let out = opschain(state.path())
        .args([
            "change",
            "run",
            "--repo",
            common::fixture("demo").to_str().unwrap(),
            "--project",
            "demo",
            "--environment",
            "dev",
            "--action",
            "deploy",
            "--secrets",
            "demo",
        ])
        .env("DEMO_WORKER_SLEEP", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("change 1 success"), "{}", text(&out));
    assert!(stdout.contains("prepare]  log level debug; API token ****"), "the secret is masked: {}", text(&out));
    assert!(!stdout.contains("tok-123"), "{}", text(&out));

    let tree = steps(state.path(), 1);
    let shape: Vec<(usize, &str)> = tree.iter().map(|(d, a, _)| (*d, a.as_str())).collect();
    assert_eq!(shape, [(1, "deploy"), (2, "prepare"), (2, "release"), (3, "release:web"), (3, "release:worker"), (2, "verify")]);
    assert!(tree.iter().all(|s| s.2 == "success"), "{tree:?}");

    assert_eq!(props(state.path(), "demo", None), json!({"deploy_count": 1}));
    assert_eq!(props(state.path(), "demo", Some("dev")), json!({"web": {"version": "2.4.1"}, "worker": {"version": "2.4.1"}, "last_verified": "2.4.1"}));
    let logs = run(state.path(), &["change", "logs", "1"]);
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert!(logs.contains("demo-app is managed by opschain"), "{logs}");
    assert!(logs.contains("\"replicas\": 2"), "{logs}");
    // The absolute opschain.files path landed in the sandbox, not on the host.
    assert!(!Path::new("/etc/demo/motd").exists());
    // The fixture itself was snapshotted, not written to; the sandboxes are gone.
    assert_eq!(common::snapshot(&common::fixture("demo")), before);
    assert!(!state.path().join("sandboxes/change-1").exists(), "the change's sandbox directory is removed when it ends");
}

const CONFLICT: &str = r#"
[actions.root]
run = '''opschain-runner property set --environment --json cfg '{"a": 1}' '''
steps = ["drop", "add"]
run_as = "parallel"

[actions.drop]
run = "opschain-runner property remove --environment cfg"

[actions.add]
run = "sleep 1; opschain-runner property set --environment cfg.b 2"
"#;

#[test]
fn parallel_children_whose_patches_conflict_fail_with_the_explained_conflict_and_nothing_half_applied() {
    let state = tempfile::tempdir().unwrap();
    let repo = project(CONFLICT, json!({}));
    let out = change_run(state.path(), repo.path(), "dev", "root");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let tree = steps(state.path(), 1);
    assert_eq!(status_of(&tree, "drop"), "success");
    assert_eq!(status_of(&tree, "add"), "error");
    let show = String::from_utf8_lossy(&run(state.path(), &["change", "show", "1"]).stdout).to_string();
    for needle in [
        "environment properties changes of step",
        "could not be applied",
        "Original environment properties",
        "Patch (RFC 6902)",
        "\"path\": \"/cfg/b\"",
        "Current environment properties",
        "To resolve",
        "opschain properties edit --project p --environment dev",
        "opschain change retry 1",
    ] {
        assert!(show.contains(needle), "missing {needle:?} in\n{show}");
    }
    // drop's removal landed, add's patch left no trace.
    assert_eq!(props(state.path(), "p", Some("dev")), json!({}));
    let history = String::from_utf8_lossy(&run(state.path(), &["properties", "history", "--project", "p", "--environment", "dev"]).stdout).to_string();
    assert_eq!(history.lines().count(), 3, "v0, root's cfg, drop's removal:\n{history}");
}

const FAILURES: &str = r#"
[actions.seq]
steps = ["ok", "fail", "after"]

[actions.par]
steps = ["fail", "slow"]
run_as = "parallel"

[actions.ok]
run = "opschain-runner property set --environment --json ok true"

[actions.fail]
run = "echo failing >&2; exit 3"

[actions.after]
run = "opschain-runner property set --environment --json after true"

[actions.slow]
run = "sleep 1; opschain-runner property set --environment --json slow true"
"#;

#[test]
fn a_failed_sequential_child_aborts_the_rest_and_a_failed_parallel_child_lets_siblings_finish() {
    let state = tempfile::tempdir().unwrap();
    let repo = project(FAILURES, json!({}));

    let out = change_run(state.path(), repo.path(), "seq-env", "seq");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let tree = steps(state.path(), 1);
    assert_eq!(status_of(&tree, "ok"), "success");
    assert_eq!(status_of(&tree, "fail"), "error");
    assert_eq!(status_of(&tree, "after"), "aborted");
    assert_eq!(props(state.path(), "p", Some("seq-env")), json!({"ok": true}));

    let out = change_run(state.path(), repo.path(), "par-env", "par");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let tree = steps(state.path(), 2);
    assert_eq!(status_of(&tree, "fail"), "error");
    assert_eq!(status_of(&tree, "slow"), "success");
    assert_eq!(props(state.path(), "p", Some("par-env")), json!({"slow": true}));
    let list = String::from_utf8_lossy(&run(state.path(), &["change", "list"]).stdout).to_string();
    assert_eq!(list.lines().filter(|l| l.contains(" error ")).count(), 2, "{list}");
}

const RETRY: &str = r#"
[actions.root]
steps = ["count", "slow", "last"]

[actions.count]
run = '''opschain-runner property set --environment --json count "$(( $(opschain-runner property get count) + 1 ))"'''

[actions.slow]
run = "sleep 3; opschain-runner property set --project slow done"

[actions.last]
run = "opschain-runner property set --project --json last '[1, 2]'"
"#;

#[test]
fn retry_after_kill_9_mid_change_completes_with_the_properties_of_an_uninterrupted_run() {
    let repo = project(RETRY, json!({"count": 0}));

    let whole = tempfile::tempdir().unwrap();
    let out = change_run(whole.path(), repo.path(), "dev", "root");
    assert!(out.status.success(), "{}", text(&out));

    let state = tempfile::tempdir().unwrap();
    common::make_target(state.path(), "p", "dev");
    let mut controller = opschain(state.path())
        .args(["change", "run", "--repo", repo.path().to_str().unwrap(), "--project", "p", "--environment", "dev", "--action", "root"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "the slow step never ran");
        let db = state.path().join("opschain.db");
        if db.exists() && try_steps(state.path(), 1).iter().any(|s| s.1 == "slow" && s.2 == "running") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(controller.id() as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    controller.wait().unwrap();
    let tree = steps(state.path(), 1);
    assert_eq!(status_of(&tree, "count"), "success");
    // The controller's loss is recorded by the first command that looks (`change show`).
    assert_eq!(status_of(&tree, "slow"), "error");

    let out = run(state.path(), &["change", "retry", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(steps(state.path(), 1).iter().all(|s| s.2 == "success"));
    assert_eq!(props(state.path(), "p", Some("dev")), props(whole.path(), "p", Some("dev")));
    assert_eq!(props(state.path(), "p", None), props(whole.path(), "p", None));
    assert_eq!(props(state.path(), "p", Some("dev")), json!({"count": 1}));
    assert_eq!(props(state.path(), "p", None), json!({"slow": "done", "last": [1, 2]}));
    // A change that succeeded has nothing to retry.
    let out = run(state.path(), &["change", "retry", "1"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("nothing to retry"), "{}", text(&out));
}

#[test]
fn cancel_stops_the_running_step_and_the_change() {
    let repo = project("[actions.root]\nsteps = [\"long\", \"never\"]\n[actions.long]\nrun = \"sleep 30\"\n[actions.never]\nrun = \"true\"\n", json!({}));
    let state = tempfile::tempdir().unwrap();
    common::make_target(state.path(), "p", "dev");
    let controller = opschain(state.path())
        .args(["change", "run", "--repo", repo.path().to_str().unwrap(), "--project", "p", "--environment", "dev", "--action", "root"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(state.path().join("opschain.db").exists() && try_steps(state.path(), 1).iter().any(|s| s.1 == "long" && s.2 == "running")) {
        assert!(Instant::now() < deadline, "the long step never ran");
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = Instant::now();
    let out = run(state.path(), &["change", "cancel", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = controller.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(started.elapsed() < Duration::from_secs(20), "cancel took {:?}", started.elapsed());
    let tree = steps(state.path(), 1);
    assert_eq!(status_of(&tree, "long"), "cancelled", "{tree:?}");
    assert!(!tree.iter().any(|s| s.1 == "never" && s.2 != "cancelled"), "{tree:?}");
}

#[test]
fn properties_keep_every_version_and_set_edit_show_them() {
    let state = tempfile::tempdir().unwrap();
    let out = run(state.path(), &["properties", "set", "--project", "p", "--json", r#"{"a": 1}"#]);
    assert!(out.status.success(), "{}", text(&out));
    let file: PathBuf = state.path().join("p.json");
    std::fs::write(&file, r#"{"a": 2, "b": [1]}"#).unwrap();
    let out = run(state.path(), &["properties", "set", "--project", "p", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let out = opschain(state.path()).args(["properties", "edit", "--project", "p"]).env("EDITOR", "sed -i s/2/3/").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(props(state.path(), "p", None), json!({"a": 3, "b": [1]}));
    let out = run(state.path(), &["properties", "show", "--project", "p", "--version", "1"]);
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), json!({"a": 1}));
    let history = String::from_utf8_lossy(&run(state.path(), &["properties", "history", "--project", "p"]).stdout).to_string();
    let versions: Vec<&str> = history.lines().map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(versions, ["v0", "v1", "v2", "v3"]);
    let out = run(state.path(), &["properties", "set", "--project", "p", "--json", "[1]"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("expected a JSON object"), "{}", text(&out));
}

#[test]
fn one_change_at_a_time_per_environment_unless_the_project_allows_parallel_changes() {
    let repo = project("[actions.long]\nrun = \"sleep 2\"\n", json!({}));
    let state = tempfile::tempdir().unwrap();
    let start = |project: &str| {
        common::make_target(state.path(), project, "dev");
        opschain(state.path())
            .args(["change", "run", "--repo", repo.path().to_str().unwrap(), "--project", project, "--environment", "dev", "--action", "long"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let wait_running = |id: u32| {
        let deadline = Instant::now() + Duration::from_secs(60);
        let running = || {
            let out = run(state.path(), &["change", "show", &id.to_string()]);
            let shown = String::from_utf8_lossy(&out.stdout);
            out.status.success() && (shown.contains("] running") || shown.lines().next() == Some(format!("change {id} running").as_str()))
        };
        while !running() {
            assert!(Instant::now() < deadline, "change {id} never ran");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let first = start("p");
    wait_running(1);
    let second = start("p");
    let (first, second) = (first.wait_with_output().unwrap(), second.wait_with_output().unwrap());
    assert!(first.status.success() && second.status.success(), "{}\n{}", text(&first), text(&second));
    assert!(String::from_utf8_lossy(&second.stdout).contains("change 2 queued: change 1 is running in the same environment"), "{}", text(&second));

    common::make_target(state.path(), "q", "dev");
    let out = run(state.path(), &["project", "allow-parallel-changes", "q", "true"]);
    assert!(out.status.success(), "{}", text(&out));
    let third = start("q");
    wait_running(3);
    let fourth = start("q");
    let (third, fourth) = (third.wait_with_output().unwrap(), fourth.wait_with_output().unwrap());
    assert!(third.status.success() && fourth.status.success());
    assert!(!String::from_utf8_lossy(&fourth.stdout).contains("queued"), "{}", text(&fourth));
}

#[test]
fn parallel_children_are_bounded_by_the_worker_count() {
    let repo = project(
        "[actions.root]\nsteps = [\"a\", \"b\"]\nrun_as = \"parallel\"\n[actions.a]\nrun = \"echo start; sleep 1; echo end\"\n[actions.b]\nrun = \"echo start; sleep 1; echo end\"\n",
        json!({}),
    );
    let marks = |workers: &str| -> Vec<String> {
        let state = tempfile::tempdir().unwrap();
        common::make_target(state.path(), "p", "dev");
        let out = opschain(state.path())
            .args(["change", "run", "--repo", repo.path().to_str().unwrap(), "--project", "p", "--environment", "dev", "--action", "root", "--workers", workers])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let logs = String::from_utf8_lossy(&run(state.path(), &["change", "logs", "1"]).stdout).to_string();
        logs.lines().filter_map(|l| l.rsplit_once("]  ").map(|(_, m)| m.trim().to_string())).filter(|m| m == "start" || m == "end").collect()
    };
    assert_eq!(marks("1"), ["start", "end", "start", "end"], "one worker: one step at a time");
    assert_eq!(marks("2"), ["start", "start", "end", "end"], "two workers: both at once");
}

#[test]
fn a_change_runs_the_commit_its_git_rev_names_and_retry_keeps_that_commit() {
    let repo = project("[actions.say]\nrun = \"echo first commit; exit 1\"\n", json!({}));
    std::fs::write(repo.path().join(".opschain/actions.toml"), "[actions.say]\nrun = \"echo second commit\"\n").unwrap();
    let git = |args: &[&str]| assert!(Command::new("git").arg("-C").arg(repo.path()).args(args).status().unwrap().success());
    git(&["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-am", "second"]);
    let state = tempfile::tempdir().unwrap();
    let out =
        run(state.path(), &["change", "run", "--repo", repo.path().to_str().unwrap(), "--project", "p", "--environment", "dev", "--action", "say", "--git-rev", "HEAD~1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("say]  first commit"), "{}", text(&out));
    let out = run(state.path(), &["change", "retry", "1"]);
    assert_eq!(out.status.code(), Some(1), "the retry runs the same (failing) commit: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("say]  first commit"), "{}", text(&out));
    let out = change_run(state.path(), repo.path(), "dev", "say");
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("second commit"), "{}", text(&out));
}

#[test]
fn each_step_works_in_a_private_copy_of_the_commit_with_a_working_git() {
    // `mutate` rewrites a tracked file in place, changes its mode and commits on a branch; the
    // steps after it (and its parallel sibling) must still see the commit as checked out.
    let actions = r#"
[actions.root]
steps = ["mutate", "siblings", "check"]

[actions.mutate]
run = '''
set -e
echo changed >> data.txt
chmod 600 data.txt
test "$(git status --porcelain --untracked-files=no)" = " M data.txt"
git -c user.name=t -c user.email=t@t commit -qam mutated
echo mutated > link-target.txt
'''

[actions.siblings]
steps = ["check", "check", "check"]
run_as = "parallel"

[actions.check]
run = '''
set -e
test "$(cat data.txt)" = original
test "$(stat -c %a data.txt)" = 644
test "$(cat link-target.txt)" = target
test "$(readlink link)" = link-target.txt
test -z "$(git status --porcelain --untracked-files=no)"
test "$(git describe --tags)" = v1
test "$(git log --format=%s)" = init
git rev-parse --verify -q origin/HEAD >/dev/null || git branch -a | grep -q origin/
echo checked
'''
"#;
    let repo = project(actions, json!({}));
    std::fs::write(repo.path().join("data.txt"), "original\n").unwrap();
    std::fs::write(repo.path().join("link-target.txt"), "target\n").unwrap();
    std::os::unix::fs::symlink("link-target.txt", repo.path().join("link")).unwrap();
    let git = |args: &[&str]| assert!(Command::new("git").arg("-C").arg(repo.path()).args(args).status().unwrap().success());
    git(&["add", "-A"]);
    git(&["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--amend", "-m", "init"]);
    git(&["tag", "v1"]);
    let head = String::from_utf8(Command::new("git").arg("-C").arg(repo.path()).args(["rev-parse", "HEAD"]).output().unwrap().stdout).unwrap();

    let state = tempfile::tempdir().unwrap();
    let out = change_run(state.path(), repo.path(), "dev", "root");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).matches("check]  checked").count(), 4, "{}", text(&out));
    // The source repository was not written to, and nothing is left of the sandboxes or the
    // change's checkout.
    assert_eq!(std::fs::read_to_string(repo.path().join("data.txt")).unwrap(), "original\n");
    let now = String::from_utf8(Command::new("git").arg("-C").arg(repo.path()).args(["rev-parse", "HEAD"]).output().unwrap().stdout).unwrap();
    assert_eq!(now, head);
    assert!(!state.path().join("sandboxes/change-1").exists(), "the change's sandbox directory is removed when it ends");
}

#[test]
fn every_log_line_of_a_finished_step_is_in_the_store_in_order() {
    let repo = project(
        "[actions.root]\nsteps = [\"talk\", \"talk\", \"talk\"]\nrun_as = \"parallel\"\n[actions.talk]\nrun = 'for i in $(seq 1500); do echo \"out $i\"; echo \"err $i\" >&2; done'\n",
        json!({}),
    );
    let state = tempfile::tempdir().unwrap();
    let out = change_run(state.path(), repo.path(), "dev", "root");
    assert!(out.status.success(), "{}", text(&out));
    let logs = run(state.path(), &["change", "logs", "1"]);
    assert!(logs.status.success(), "{}", text(&logs));
    let logs = String::from_utf8_lossy(&logs.stdout);
    for step in 2..=4 {
        for stream in ["out", "err"] {
            let lines: Vec<u32> = logs
                .lines()
                .filter(|l| l.contains(&format!("[{step} talk]")))
                .filter_map(|l| l.rsplit_once(&format!(" {stream} ")).and_then(|(_, n)| n.trim().parse().ok()))
                .collect();
            assert_eq!(lines, (1..=1500).collect::<Vec<u32>>(), "step {step} {stream}");
        }
    }
}

#[test]
fn of_two_retries_at_once_only_one_runs_the_change() {
    // The action fails until a file exists; the change fails once, then two retries start at the
    // same moment. Exactly one may run it: the other is refused (the first holds it) or, coming
    // after it, finds nothing to retry.
    let state = tempfile::tempdir().unwrap();
    let ok = state.path().join("ok");
    let runs = state.path().join("runs");
    let actions = format!("[actions.slow]\nrun = 'echo run >> {}; sleep 1; test -f {}'\n", runs.display(), ok.display());
    let repo = project(&actions, json!({}));
    let out = change_run(state.path(), repo.path(), "dev", "slow");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    std::fs::write(&ok, "").unwrap();

    let retry = || opschain(state.path()).args(["change", "retry", "1"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (a, b) = (retry(), retry());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let ran: Vec<&Output> = [&a, &b].into_iter().filter(|o| o.status.success()).collect();
    assert_eq!(ran.len(), 1, "exactly one retry runs the change:\n{}\n{}", text(&a), text(&b));
    let other = if a.status.success() { &b } else { &a };
    let said = text(other);
    assert!(said.contains("is being run by another live controller") || said.contains("nothing to retry"), "{said}");
    let count = std::fs::read_to_string(&runs).unwrap().lines().count();
    assert_eq!(count, 2, "the action ran once for the change and once for the retry, not {count} times");
}

#[test]
fn a_mintpress_repository_runs_on_the_process_backend_with_its_folder() {
    // `.mintpress` holds the actions and properties; the agent reads the step context there and
    // the action finds the folder in OPSCHAIN_REPO_FOLDER (for opschain-exec and the helpers).
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join(".mintpress");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(
        folder.join("actions.toml"),
        "[actions.deploy]\nrun = 'test -f .mintpress/step_context.json && echo \"folder=$OPSCHAIN_REPO_FOLDER greeting=$GREETING\"; opschain-runner property set --environment deployed yes'\n",
    )
    .unwrap();
    std::fs::write(folder.join("properties.json"), r#"{"opschain": {"env": {"GREETING": "from-mintpress"}}}"#).unwrap();
    for args in [&["init", "-q"][..], &["add", "-A"], &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init"]] {
        assert!(Command::new("git").arg("-C").arg(dir.path()).args(args).status().unwrap().success());
    }
    let state = tempfile::tempdir().unwrap();
    let args = ["change", "run", "--repo", dir.path().to_str().unwrap(), "--project", "p", "--environment", "e", "--action", "deploy"];
    common::make_target(state.path(), "p", "e");
    let out = opschain(state.path()).args(args).args(["--folder", ".mintpress"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("folder=.mintpress greeting=from-mintpress"), "{}", text(&out));
    assert_eq!(props(state.path(), "p", Some("e")), json!({"deployed": "yes"}));
    // Without the folder the same repository has no actions: the step fails, saying so.
    let out = opschain(state.path()).args(args).output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    let out = run(state.path(), &["change", "run", "--repo", ".", "--project", "p", "--environment", "e", "--action", "x", "--folder", "../x"]);
    assert!(!out.status.success() && text(&out).contains("expected one directory name"), "{}", text(&out));
}

#[test]
fn a_retry_runs_with_the_folder_its_change_was_created_with() {
    // A MintPress change fails its first run (no marker file yet); its retry, given no --folder,
    // still reads `.mintpress` (the folder is stored with the change) and succeeds.
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let folder = dir.path().join("repo/.mintpress");
    std::fs::create_dir_all(&folder).unwrap();
    let action = format!("[actions.deploy]\nrun = 'test -f {0} || {{ touch {0}; exit 3; }}; echo folder=$OPSCHAIN_REPO_FOLDER'\n", marker.display());
    std::fs::write(folder.join("actions.toml"), action).unwrap();
    let repo = dir.path().join("repo");
    for args in [&["init", "-q"][..], &["add", "-A"], &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init"]] {
        assert!(Command::new("git").arg("-C").arg(&repo).args(args).status().unwrap().success());
    }
    let state = tempfile::tempdir().unwrap();
    let out =
        run(state.path(), &["change", "run", "--repo", repo.to_str().unwrap(), "--project", "p", "--environment", "e", "--action", "deploy", "--folder", ".mintpress"]);
    assert!(!out.status.success() && marker.exists(), "the first run fails after making the marker: {}", text(&out));
    let out = run(state.path(), &["change", "retry", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("folder=.mintpress"), "{}", text(&out));
}

/// The numbers after `]  ` (a line on stdout) on the lines of `text` that contain `marker`, in order.
fn numbered(text: &str, marker: &str) -> Vec<u64> {
    text.lines().filter(|l| l.contains(marker)).filter_map(|l| l.rsplit_once("]  ")?.1.trim().parse().ok()).collect()
}

/// The first place where `lines` is not 1, 2, 3 ... `n`, if any.
fn first_gap(lines: &[u64], n: u64) -> Option<(usize, Option<u64>)> {
    if lines.len() as u64 != n {
        return Some((lines.len(), None));
    }
    lines.iter().enumerate().find(|(i, l)| **l != *i as u64 + 1).map(|(i, l)| (i, Some(*l)))
}

/// A step printing a million numbered lines, through the agent and the controller, while whoever
/// reads `change run` stalls for two seconds: every line reaches `change run`'s output, the store
/// (`change logs`) and a `change logs --follow` started while the change runs, each once and in
/// order. Nothing is dropped anywhere: the step waits instead.
#[test]
fn a_million_lines_through_a_stalling_reader_are_all_kept_in_order() {
    use std::io::Read;
    let repo = project("[actions.flood]\nrun = 'seq 1 1000000'\n", json!({}));
    let state = tempfile::tempdir().unwrap();
    common::make_target(state.path(), "p", "dev");
    let mut run_child = opschain(state.path())
        .args(["change", "run", "--repo", repo.path().to_str().unwrap(), "--project", "p", "--environment", "dev", "--action", "flood"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Follow the change once it exists.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !run(state.path(), &["change", "show", "1"]).status.success() {
        assert!(Instant::now() < deadline, "the change was never created");
        std::thread::sleep(Duration::from_millis(20));
    }
    let follow = opschain(state.path()).args(["change", "logs", "1", "--follow"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let follower = std::thread::spawn(move || follow.wait_with_output().unwrap());
    // The stalling reader: nothing read for two seconds, then everything.
    std::thread::sleep(Duration::from_secs(2));
    let mut printed = String::new();
    run_child.stdout.take().unwrap().read_to_string(&mut printed).unwrap();
    let ran = run_child.wait_with_output().unwrap();
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
    assert!(!printed.contains("dropped"), "a drop notice in the output");
    assert_eq!(first_gap(&numbered(&printed, "[1 flood]"), 1_000_000), None, "change run's output");

    let followed = follower.join().unwrap();
    assert!(followed.status.success(), "{}", text(&followed));
    assert_eq!(first_gap(&numbered(&String::from_utf8_lossy(&followed.stdout), "[1 flood]"), 1_000_000), None, "change logs --follow");

    let stored = run(state.path(), &["change", "logs", "1"]);
    assert!(stored.status.success(), "{}", text(&stored));
    assert_eq!(first_gap(&numbered(&String::from_utf8_lossy(&stored.stdout), "[1 flood]"), 1_000_000), None, "change logs");
}
