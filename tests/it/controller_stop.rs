//! How a change stops, through the real `opschain` binary on the process backend: a cancelled
//! step that ignores SIGTERM keeps the property changes it recorded; a controller killed with -9
//! is recognised as lost by the next command that looks; SIGINT, SIGTERM and SIGHUP of a
//! foreground `change create` cancel its change.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn opschain(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_opschain"));
    c.env("OPSCHAIN_STATE_DIR", state)
        .env("OPSCHAIN_RUNNER_BIN", env!("CARGO_BIN_EXE_opschain-runner"))
        .env("OPSCHAIN_GRACE_SECS", "2")
        .env_remove("OPSCHAIN_REPO_FOLDER")
        .env_remove("OPSCHAIN_BACKEND");
    c
}

fn run(state: &Path, args: &[&str]) -> Output {
    opschain(state).args(args).output().unwrap()
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

/// `change create` of `action` in environment `dev` of project `p`, in the background.
fn spawn_change(state: &Path, repo: &Path, action: &str) -> Child {
    opschain(state)
        .args(["change", "create", "--repo", repo.to_str().unwrap(), "-p", "p", "-e", "dev", "-a", action])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the stored log of change `id` has a line containing `marker`.
fn wait_for_log(state: &Path, id: u32, marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if state.join("opschain.db").exists() {
            let out = run(state, &["change", "logs", &id.to_string()]);
            if String::from_utf8_lossy(&out.stdout).contains(marker) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "no {marker:?} in the log of change {id}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn env_props(state: &Path) -> Value {
    let out = run(state, &["properties", "show", "-p", "p", "-e", "dev"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The status column of `change ls` for change `id`.
fn listed_status(state: &Path, id: u32) -> String {
    let out = run(state, &["change", "ls"]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(&id.to_string())).then(|| words.next().unwrap_or_default().to_string())
        })
        .unwrap_or_else(|| panic!("change {id} is not listed"))
}

const STUBBORN: &str = r#"
[actions.stubborn]
run = "trap '' TERM; opschain-runner property set --environment kept yes; echo recorded; sleep 30"
"#;

#[test]
fn a_cancelled_step_that_ignores_sigterm_keeps_the_properties_it_recorded() {
    let state = tempfile::tempdir().unwrap();
    let repo = project(STUBBORN);
    // Properties of a few MB: writing the result after the grace takes the agent a while, so a
    // controller that killed it at the end of the same grace would cut it short every time.
    let servers: serde_json::Map<String, Value> =
        (0..40_000).map(|i| (format!("srv-{i:05}"), json!({"ip": format!("10.0.{}.{}", i / 256, i % 256), "roles": ["web", "db"]}))).collect();
    let file = state.path().join("props.json");
    std::fs::write(&file, json!({"servers": servers}).to_string()).unwrap();
    let out = run(state.path(), &["properties", "set", "-p", "p", "-e", "dev", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let controller = spawn_change(state.path(), repo.path(), "stubborn");
    wait_for_log(state.path(), 1, "recorded");
    let out = run(state.path(), &["change", "cancel", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = controller.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    // The agent killed the action after its grace and wrote its result before the controller's
    // kill: the step's recorded change is applied.
    let props = env_props(state.path());
    assert_eq!(props["kept"], json!("yes"), "{}", text(&out));
    assert_eq!(props["servers"].as_object().map(|s| s.len()), Some(40_000));
}
