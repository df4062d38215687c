//! Kill -9 of the controller at spread-out moments of the demo change: each time, `change retry`
//! (repeated if need be) completes the change, and the final properties equal an uninterrupted
//! run's: no applied diff is lost, none is applied twice.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

fn opschain(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_opschain"));
    c.env("OPSCHAIN_STATE_DIR", state)
        .env("OPSCHAIN_RUNNER_BIN", env!("CARGO_BIN_EXE_opschain-runner"))
        .env("DEMO_WORKER_SLEEP", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

fn props(state: &Path, args: &[&str]) -> Value {
    let out = opschain(state).args(["properties", "show"]).args(args).stdout(Stdio::piped()).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn kill_9_at_any_moment_then_retry_gives_the_uninterrupted_result() {
    let expected_env = json!({"web": {"version": "2.4.1"}, "worker": {"version": "2.4.1"}, "last_verified": "2.4.1"});
    let demo = common::fixture("demo");
    let mut interrupted = 0;
    for delay_ms in [150u64, 400, 700, 1000, 1300, 1700, 2200] {
        let state = tempfile::tempdir().unwrap();
        let secrets = state.path().join("s.json");
        std::fs::write(&secrets, r#"{"API_TOKEN": "t"}"#).unwrap();
        assert!(opschain(state.path()).args(["secrets", "set", "demo", "--file", secrets.to_str().unwrap()]).status().unwrap().success());
        let mut controller = opschain(state.path())
            .args(["change", "run", "--repo", demo.to_str().unwrap(), "--project", "demo", "--environment", "dev", "--action", "deploy", "--secrets", "demo"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(controller.id() as i32), nix::sys::signal::Signal::SIGKILL);
        let status = controller.wait().unwrap();
        if status.success() {
            // Finished before the kill: nothing to retry.
        } else {
            interrupted += 1;
            let exists = opschain(state.path()).args(["change", "show", "1"]).status().unwrap().success();
            if !exists {
                continue; // killed before the change was recorded
            }
            let retried = opschain(state.path()).args(["change", "retry", "1"]).stdout(Stdio::piped()).stderr(Stdio::piped()).output().unwrap();
            assert!(
                retried.status.success(),
                "retry after a kill at {delay_ms} ms failed:\n{}\n{}",
                String::from_utf8_lossy(&retried.stdout),
                String::from_utf8_lossy(&retried.stderr)
            );
        }
        assert_eq!(props(state.path(), &["--project", "demo"]), json!({"deploy_count": 1}), "kill at {delay_ms} ms");
        assert_eq!(props(state.path(), &["--project", "demo", "--environment", "dev"]), expected_env, "kill at {delay_ms} ms");
    }
    assert!(interrupted >= 3, "only {interrupted} runs were interrupted: the delays no longer fall inside a run");
}
