//! The demo change on the Docker backend, where a Docker engine runs: a base runner image is built
//! `FROM scratch` (nothing can be pulled) from the test-built agent, its shared libraries and a
//! static busybox; then the same demo change as on the process backend, a container per step.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

const DOCKER: &str = "/usr/bin/docker";
const BASE: &str = "opschain-runner-test-base:latest";

fn engine_runs() -> bool {
    Command::new(DOCKER).args(["info", "--format", "{{.ServerVersion}}"]).output().map(|o| o.status.success()).unwrap_or(false)
}

/// The shared libraries the agent needs (from ldd), as absolute paths.
fn libraries(binary: &str) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

fn build_base_image() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path();
    let agent = env!("CARGO_BIN_EXE_opschain-runner");
    std::fs::create_dir_all(ctx.join("rootfs/usr/local/bin")).unwrap();
    std::fs::create_dir_all(ctx.join("rootfs/bin")).unwrap();
    std::fs::copy(agent, ctx.join("rootfs/usr/local/bin/opschain-runner")).unwrap();
    std::fs::copy("/bin/busybox", ctx.join("rootfs/bin/busybox")).unwrap();
    for lib in libraries(agent) {
        let dest = ctx.join("rootfs").join(lib.strip_prefix("/").unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&lib, &dest).unwrap();
    }
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY rootfs/ /\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nRUN mkdir -p -m 1777 /tmp && mkdir -p /opt/opschain\n\
         ENV PATH=/usr/local/bin:/bin\nWORKDIR /opt/opschain\nENTRYPOINT [\"/usr/local/bin/opschain-runner\"]\n",
    )
    .unwrap();
    let out = Command::new(DOCKER).env("DOCKER_BUILDKIT", "1").args(["build", "-q", "-t", BASE]).arg(ctx).output().unwrap();
    assert!(out.status.success(), "base image build failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn opschain(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_opschain"));
    c.env("OPSCHAIN_STATE_DIR", state).env("OPSCHAIN_RUNNER_BIN", env!("CARGO_BIN_EXE_opschain-runner"));
    c
}

#[test]
fn the_demo_change_runs_on_the_docker_backend_as_on_the_process_backend() {
    if !engine_runs() {
        eprintln!("skipped: no Docker engine answers `{DOCKER} info`");
        return;
    }
    build_base_image();
    let state = tempfile::tempdir().unwrap();
    let secrets = state.path().join("s.json");
    std::fs::write(&secrets, r#"{"API_TOKEN": "tok-docker"}"#).unwrap();
    assert!(opschain(state.path()).args(["secrets", "set", "demo", "--file", secrets.to_str().unwrap()]).status().unwrap().success());
    let controller = opschain(state.path())
        .args(["change", "run", "--repo", common::fixture("demo").to_str().unwrap(), "--project", "demo", "--environment", "dev", "--action", "deploy"])
        .args(["--secrets", "demo", "--backend", "docker", "--docker-bin", DOCKER, "--docker-base-image", BASE])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let controller_pid = controller.id();
    let out = controller.wait_with_output().unwrap();
    let shown = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("demo-app is managed by opschain"), "{shown}");
    let show = |args: &[&str]| -> Value {
        let out = opschain(state.path()).args(args).output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(show(&["properties", "show", "--project", "demo"]), json!({"deploy_count": 1}));
    assert_eq!(
        show(&["properties", "show", "--project", "demo", "--environment", "dev"]),
        json!({"web": {"version": "2.4.1"}, "worker": {"version": "2.4.1"}, "last_verified": "2.4.1"})
    );
    // Six steps ran in containers of one step image, built at most once (none when an earlier
    // run built it from the same commit and base image), and every container was removed.
    let built = shown.matches("building image opschain-step:").count();
    let reused = shown.matches("is already built from this commit and base image").count();
    assert!(built <= 1 && built + reused == 6, "built {built}, reused {reused}: {shown}");
    let ps = Command::new(DOCKER).args(["ps", "-a", "--filter", "name=opschain-step-", "--format", "{{.Names}}"]).output().unwrap();
    let left = String::from_utf8_lossy(&ps.stdout).to_string();
    let ours: Vec<&str> = left.lines().filter(|n| n.ends_with(&format!("-{controller_pid}"))).collect();
    assert!(ours.is_empty(), "{ours:?}");
}

#[test]
fn a_build_secret_a_run_line_prints_reaches_neither_the_terminal_nor_the_store() {
    if !engine_runs() {
        eprintln!("skipped: no Docker engine answers `{DOCKER} info`");
        return;
    }
    build_base_image();
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let set = tmp.path().join("build.json");
    std::fs::write(&set, r#"{"BUILD_TOKEN": "docker-build-secret-4242"}"#).unwrap();
    assert!(opschain(&state).args(["secrets", "set", "opschain-build-env", "--file", set.to_str().unwrap()]).status().unwrap().success());
    // A repository whose Dockerfile prints the build secret, however it is mounted (by variable
    // name or as the whole set), in a RUN line never cached before (the nonce).
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(repo.join(".opschain")).unwrap();
    std::fs::write(repo.join(".opschain/actions.toml"), "[actions.noop]\nrun = \"true\"\n").unwrap();
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    std::fs::write(
        repo.join(".opschain/Dockerfile"),
        format!(
            "FROM {BASE}\nCOPY . /opt/opschain\n\
             RUN --mount=type=secret,id=BUILD_TOKEN --mount=type=secret,id=opschain-build-env \
             cat /run/secrets/BUILD_TOKEN /run/secrets/opschain-build-env 2>/dev/null; echo; echo nonce-{nonce}\n"
        ),
    )
    .unwrap();
    let out = opschain(&state)
        .args(["change", "run", "--repo", repo.to_str().unwrap(), "--project", "p", "--environment", "e", "--action", "noop"])
        .args(["--secrets", "opschain-build-env", "--backend", "docker", "--docker-bin", DOCKER, "--docker-base-image", BASE])
        .output()
        .unwrap();
    let terminal = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{terminal}");
    let logs = opschain(&state).args(["change", "logs", "1"]).output().unwrap();
    let logs = String::from_utf8_lossy(&logs.stdout).to_string();
    for (what, shown) in [("terminal", &terminal), ("store", &logs)] {
        assert!(shown.contains(&format!("nonce-{nonce}")), "the RUN line ran, its output in the {what}:\n{shown}");
        assert!(shown.contains("****"), "the secret's line, masked, in the {what}:\n{shown}");
        assert!(!shown.contains("docker-build-secret-4242"), "the build secret in the {what}:\n{shown}");
    }
    // The step image of this test's commit goes.
    let show = opschain(&state).args(["change", "show", "1"]).output().unwrap();
    let show = String::from_utf8_lossy(&show.stdout).to_string();
    let commit = show.lines().find_map(|l| l.trim().strip_prefix("commit ")).and_then(|r| r.split_whitespace().next()).unwrap_or_else(|| panic!("{show}"));
    let images = Command::new(DOCKER).args(["images", "--format", "{{.Repository}}:{{.Tag}}", "opschain-step"]).output().unwrap();
    for tag in String::from_utf8_lossy(&images.stdout).lines().filter(|t| t.starts_with(&format!("opschain-step:{commit}"))) {
        let _ = Command::new(DOCKER).args(["rmi", "-f", tag]).output();
    }
}
