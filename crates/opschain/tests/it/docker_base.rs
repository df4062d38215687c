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

/// Builds [`BASE`] `FROM scratch` (nothing can be pulled) from the test-built agent `agent`; once
/// per test binary (see [`build_image_as`]).
pub fn build_base_image(agent: &'static str) {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| build_image_as(agent, BASE, ""));
}

/// Builds a base runner image `tag` `FROM scratch`: the agent `agent` (and `opschain-exec`, a link
/// to it, which the default step Dockerfile runs), its libraries, a static busybox, and `marker`
/// in `/etc/marker` (another marker, another image id).
pub fn build_image_as(agent: &str, tag: &str, marker: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path();
    std::fs::create_dir_all(ctx.join("rootfs/usr/local/bin")).unwrap();
    std::fs::create_dir_all(ctx.join("rootfs/bin")).unwrap();
    std::fs::create_dir_all(ctx.join("rootfs/etc")).unwrap();
    std::fs::copy(agent, ctx.join("rootfs/usr/local/bin/opschain-runner")).unwrap();
    std::os::unix::fs::symlink("opschain-runner", ctx.join("rootfs/usr/local/bin/opschain-exec")).unwrap();
    std::fs::copy("/bin/busybox", ctx.join("rootfs/bin/busybox")).unwrap();
    std::fs::write(ctx.join("rootfs/etc/marker"), marker).unwrap();
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
    let out = Command::new(DOCKER).env("DOCKER_BUILDKIT", "1").args(["build", "-q", "-t", tag]).arg(ctx).output().unwrap();
    assert!(out.status.success(), "base image build failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// The Dockerfile steps (`ADD repo.tar /opt/opschain/`, ...) a plain BuildKit log reports as taken
/// from the cache; each line of `log` is BuildKit's own (`#7 CACHED`), without any prefix.
pub fn cached_steps<'a>(log: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut titles = std::collections::HashMap::new();
    let mut cached = Vec::new();
    for line in log {
        let Some((id, rest)) = line.split_once(' ') else { continue };
        if let Some(title) = rest.strip_prefix('[').and_then(|r| r.split_once("] ")).map(|(_, t)| t.to_string()) {
            titles.insert(id.to_string(), title);
        } else if rest == "CACHED" {
            cached.extend(titles.get(id).cloned());
        }
    }
    cached
}
