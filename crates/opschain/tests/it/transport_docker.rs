//! The stream transport on the real Docker engine (`opschain change run --backend docker
//! --transport stream`): the step context goes in on the container's standard input, the result
//! comes back framed in its output, and no directory of the host is mounted into any container.
//! Ignored unless asked for (`--ignored`; scripts/test asks where it finds an engine), and then
//! each needs one.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::docker_base::{engine_runs, BASE, DOCKER};

fn build_base_image() {
    crate::docker_base::build_base_image(crate::common::runner_bin());
}

fn opschain(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_opschain"));
    c.env("OPSCHAIN_STATE_DIR", state).env("OPSCHAIN_RUNNER_BIN", crate::common::runner_bin());
    c
}

/// Runs `change run` on the Docker backend with the stream transport; returns its output (stdout
/// and stderr) and whether it succeeded.
fn run_change(state: &Path, repo: &Path, action: &str, extra: &[&str]) -> (bool, String) {
    common::make_target(state, "demo", "dev");
    let out = opschain(state)
        .args(["change", "run", "--verbose", "--repo", repo.to_str().unwrap(), "--project", "demo", "--environment", "dev", "--action", action])
        .args(["--backend", "docker", "--docker-bin", DOCKER, "--docker-base-image", BASE, "--transport", "stream"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (out.status.success(), format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn show(state: &Path, args: &[&str]) -> Value {
    let out = opschain(state).args(args).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// The names of the containers whose mounts include a directory of `root`.
fn containers_mounting(root: &Path) -> Vec<String> {
    let ps = Command::new(DOCKER).args(["ps", "-aq"]).output().unwrap();
    let ids: Vec<String> = String::from_utf8_lossy(&ps.stdout).lines().map(str::to_string).collect();
    if ids.is_empty() {
        return Vec::new();
    }
    let out = Command::new(DOCKER).args(["inspect", "--format", "{{.Name}} {{range .Mounts}}{{.Source}} {{end}}"]).args(&ids).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(root.to_str().unwrap())).map(str::to_string).collect()
}

#[test]
#[ignore = "needs a Docker engine: scripts/test runs it where it finds one"]
fn the_demo_change_runs_with_the_stream_transport_and_no_mount() {
    common::required("a Docker engine", engine_runs());
    build_base_image();
    let state = tempfile::tempdir().unwrap();
    let secrets = state.path().join("s.json");
    std::fs::write(&secrets, r#"{"API_TOKEN": "tok-stream"}"#).unwrap();
    assert!(opschain(state.path()).args(["secrets", "set", "demo", "--file", secrets.to_str().unwrap()]).status().unwrap().success());
    // Watch for bind mounts of the state directory while the change runs: with the stream
    // transport no container may mount anything of this host's.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = std::thread::spawn({
        let (done, root) = (done.clone(), state.path().to_path_buf());
        move || {
            let mut seen = Vec::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                seen.extend(containers_mounting(&root));
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            seen
        }
    });
    let (ok, shown) = run_change(state.path(), &common::fixture("demo"), "deploy", &["--secrets", "demo"]);
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let mounted = watcher.join().unwrap();
    assert!(ok, "{shown}");
    assert!(mounted.is_empty(), "containers mounted the state directory: {mounted:?}");
    assert!(shown.contains("demo-app is managed by opschain"), "{shown}");
    assert_eq!(show(state.path(), &["properties", "show", "--project", "demo"]), json!({"deploy_count": 1}));
    assert_eq!(
        show(state.path(), &["properties", "show", "--project", "demo", "--environment", "dev"]),
        json!({"web": {"version": "2.4.1"}, "worker": {"version": "2.4.1"}, "last_verified": "2.4.1"})
    );
    // The frames were taken out of the log: no line of one reached the terminal or the store.
    assert!(!shown.contains("opschain-result"), "{shown}");
    let logs = opschain(state.path()).args(["change", "logs", "1"]).output().unwrap();
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert!(logs.contains("deploying demo-app"), "{logs}");
    assert!(!logs.contains("opschain-result"), "{logs}");
}

/// A repository whose action writes an environment property of `bytes` bytes, then a log line.
fn big_result_repo(dir: &Path, bytes: usize) -> PathBuf {
    let repo = dir.join("big");
    std::fs::create_dir_all(repo.join(".opschain")).unwrap();
    std::fs::write(
        repo.join(".opschain/actions.toml"),
        format!(
            "[actions.big]\nrun = '''\n{{ printf '{{\"big\": \"'; yes 0123456789abcdef | tr -d '\\n' | head -c {bytes}; printf '\"}}'; }} > big.json\n\
             mv big.json \"$OPSCHAIN_ENVIRONMENT_PROPERTIES\"\necho wrote the big property\n'''\n"
        ),
    )
    .unwrap();
    repo
}

#[test]
#[ignore = "needs a Docker engine: scripts/test runs it where it finds one"]
fn a_result_of_megabytes_comes_back_whole_and_a_failed_step_still_reports() {
    common::required("a Docker engine", engine_runs());
    build_base_image();
    let state = tempfile::tempdir().unwrap();
    let size = 5 << 20;
    let repo = big_result_repo(state.path(), size);
    let (ok, shown) = run_change(state.path(), &repo, "big", &[]);
    assert!(ok, "{}", &shown[..shown.len().min(4000)]);
    assert!(shown.contains("wrote the big property"), "{}", &shown[..shown.len().min(4000)]);
    let props = show(state.path(), &["properties", "show", "--project", "demo", "--environment", "dev"]);
    let big = props["big"].as_str().unwrap();
    assert_eq!(big.len(), size);
    assert!(big.starts_with("0123456789abcdef0123"));
    assert!(!shown.contains("opschain-result"));

    // A step whose agent fails before its action runs (an unknown action) writes no result: the
    // change fails with the agent's own line, and the missing frame is named.
    let (ok, shown) = run_change(state.path(), &repo, "no-such-action", &[]);
    assert!(!ok, "{shown}");
    assert!(shown.contains("no-such-action"), "{shown}");
}
