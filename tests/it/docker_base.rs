//! A base runner image for tests on the real Docker engine, and the engine check.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// The docker CLI the tests use (Debian's, which builds with BuildKit).
pub const DOCKER: &str = "/usr/bin/docker";
/// The tests' base runner image (the branch name keeps it apart from other suites' images).
pub const BASE: &str = "k8s-transport-test-base:latest";

/// Whether the engine answers `docker info`; why not, when it does not.
pub fn engine_runs() -> Result<(), String> {
    match Command::new(DOCKER).args(["info", "--format", "{{.ServerVersion}}"]).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!("`{DOCKER} info` failed: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Err(format!("cannot run {DOCKER}: {e}")),
    }
}

/// The shared libraries the agent needs (from ldd), as absolute paths.
fn libraries(binary: &str) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().filter(|w| w.starts_with('/')).map(PathBuf::from).collect()
}

/// Builds [`BASE`] `FROM scratch` (nothing can be pulled): the test-built agent `agent` (and
/// `opschain-exec`, a link to it, which the default step Dockerfile runs), its libraries and a
/// static busybox; once per test binary.
pub fn build_base_image(agent: &'static str) {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path();
        std::fs::create_dir_all(ctx.join("rootfs/usr/local/bin")).unwrap();
        std::fs::create_dir_all(ctx.join("rootfs/bin")).unwrap();
        std::fs::copy(agent, ctx.join("rootfs/usr/local/bin/opschain-runner")).unwrap();
        std::os::unix::fs::symlink("opschain-runner", ctx.join("rootfs/usr/local/bin/opschain-exec")).unwrap();
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
    });
}
