//! The demo change on the Docker backend, where a Docker engine runs: a base runner image is built
//! `FROM scratch` (nothing can be pulled) from the test-built agent, its shared libraries and a
//! static busybox; then the same demo change as on the process backend, a container per step. Ignored
//! unless asked for (`--ignored`; scripts/test asks where it finds an engine), and then it needs one.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

const DOCKER: &str = "/usr/bin/docker";
const BASE: &str = "opschain-runner-test-base:latest";

/// Whether the engine answers `docker info`; why not, when it does not.
fn engine_runs() -> Result<(), String> {
    match Command::new(DOCKER).args(["info", "--format", "{{.ServerVersion}}"]).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!("`{DOCKER} info` failed: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Err(format!("cannot run {DOCKER}: {e}")),
    }
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
#[ignore = "needs a Docker engine: scripts/test runs it where it finds one"]
fn the_demo_change_runs_on_the_docker_backend_as_on_the_process_backend() {
    common::required("a Docker engine", engine_runs());
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
