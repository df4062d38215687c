//! Step images through a real registry on loopback (`opschain change run --registry HOST:PORT`):
//! Debian's `docker-registry` (the CNCF distribution registry, no image pull needed) started by
//! the test on a free port with its storage in a temporary directory, stopped at the end. Ignored
//! unless asked for (`--ignored`; scripts/test asks where it finds an engine, and installs the
//! registry), and then each needs both.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common;

use crate::docker_base::{engine_runs, BASE, DOCKER};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A registry server of this test, stopped (and its storage removed) when dropped.
struct RegistryServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RegistryServer {
    /// Starts `docker-registry serve` on 127.0.0.1 at a free port, storage in a temporary
    /// directory, and waits until it answers `GET /v2/`.
    fn start() -> RegistryServer {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("storage").display()
            ),
        )
        .unwrap();
        let child = Command::new(REGISTRY_BIN).arg("serve").arg(&config).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let server = RegistryServer { child, port, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while server.get("/v2/").is_none() {
            assert!(Instant::now() < deadline, "the registry did not answer on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `GET path` over plain HTTP/1.0: the body of a 200 answer, else `None`.
    fn get(&self, path: &str) -> Option<String> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        let (head, body) = answer.split_once("\r\n\r\n")?;
        (head.split(' ').nth(1) == Some("200")).then(|| body.to_string())
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Checks that the test's tools are here (a missing one fails the test: it runs only where
/// scripts/test found or installed them) and builds the base image.
fn ready() {
    common::required("a Docker engine", engine_runs());
    common::required(
        "Debian's docker-registry",
        if Path::new(REGISTRY_BIN).exists() { Ok(()) } else { Err(format!("{REGISTRY_BIN} is not installed (apt-get install docker-registry)")) },
    );
    crate::docker_base::build_base_image(crate::common::runner_bin());
}

fn opschain(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_opschain"));
    c.env("OPSCHAIN_STATE_DIR", state).env("OPSCHAIN_RUNNER_BIN", crate::common::runner_bin());
    c
}

/// A git repository with a fixed commit (fixed dates and author): the same commit, so the same
/// step image tag, in every state directory.
fn fixed_repo(dir: &Path) -> PathBuf {
    let repo = dir.join("repo");
    std::fs::create_dir_all(repo.join(".opschain")).unwrap();
    // A unique file keeps this run's commit, and so its image, apart from other runs'.
    std::fs::write(repo.join("RUN_ID"), format!("{}-{:?}", std::process::id(), Instant::now())).unwrap();
    std::fs::write(
        repo.join(".opschain/actions.toml"),
        "[actions.hello]\nrun = '''\necho hello from the registry image\nopschain-runner property set --environment greeted yes\n'''\n",
    )
    .unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .current_dir(&repo)
            .args(args)
            .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
            .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "fixed"]);
    repo
}

fn run_change(state: &Path, repo: &Path, registry: &str, transport: &str) -> (bool, String) {
    run_change_on(state, repo, registry, transport, BASE)
}

/// [`run_change`] with the base runner image `base`.
fn run_change_on(state: &Path, repo: &Path, registry: &str, transport: &str, base: &str) -> (bool, String) {
    common::make_target(state, "p", "e");
    let out = opschain(state)
        .args(["change", "run", "--verbose", "--repo", repo.to_str().unwrap(), "--project", "p", "--environment", "e", "--action", "hello"])
        .args(["--backend", "docker", "--docker-bin", DOCKER, "--docker-base-image", base, "--registry", registry, "--transport", transport])
        .output()
        .unwrap();
    (out.status.success(), format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The local images whose reference contains `text`.
fn images_named(text: &str) -> Vec<String> {
    let out = Command::new(DOCKER).args(["images", "--format", "{{.Repository}}:{{.Tag}}"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(text)).map(str::to_string).collect()
}

#[test]
#[ignore = "needs a Docker engine: scripts/test runs it where it finds one"]
fn a_built_step_image_is_pushed_and_a_later_change_pulls_it_instead_of_building() {
    ready();
    let registry = RegistryServer::start();
    let dir = tempfile::tempdir().unwrap();
    let repo = fixed_repo(dir.path());

    // First change: the image is built, pushed, and the step runs the registry's reference.
    let state = dir.path().join("state1");
    let (ok, shown) = run_change(&state, &repo, &registry.host(), "bind-mount");
    assert!(ok, "{shown}");
    assert!(shown.contains("building image opschain-step:"), "{shown}");
    assert!(shown.contains(&format!("pushed the step image {}/opschain-step:", registry.host())), "{shown}");
    assert!(shown.contains("hello from the registry image"), "{shown}");
    let catalog: Value = serde_json::from_str(&registry.get("/v2/_catalog").unwrap()).unwrap();
    assert_eq!(catalog, json!({"repositories": ["opschain-step"]}));
    let tags: Value = serde_json::from_str(&registry.get("/v2/opschain-step/tags/list").unwrap()).unwrap();
    let tag = tags["tags"][0].as_str().unwrap().to_string();
    assert_eq!(tags["tags"].as_array().unwrap().len(), 1, "{tags}");

    // Every local copy of the image removed: the next change pulls it from the registry, by the
    // digest its push gave, and builds nothing; this time through the stream transport.
    let ours = images_named(&tag);
    assert_eq!(ours.len(), 2, "the local tag and the registry reference: {ours:?}");
    let rmi = Command::new(DOCKER).arg("rmi").args(&ours).output().unwrap();
    assert!(rmi.status.success(), "{}", String::from_utf8_lossy(&rmi.stderr));
    let (ok, shown) = run_change(&state, &repo, &registry.host(), "stream");
    assert!(ok, "{shown}");
    assert!(!shown.contains("building image"), "{shown}");
    let pulled = format!("pulled the step image {}/opschain-step@sha256:", registry.host());
    assert!(shown.contains(&pulled), "{shown}");
    assert!(shown.contains("hello from the registry image"), "{shown}");
    let props = opschain(&state).args(["properties", "show", "--project", "p", "--environment", "e"]).output().unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&props.stdout).unwrap(), json!({"greeted": "yes"}));

    // Another state directory has no record of the push: it builds (from the engine's cache)
    // rather than trust what the registry holds under the name.
    let (ok, shown) = run_change(&dir.path().join("state2"), &repo, &registry.host(), "bind-mount");
    assert!(ok, "{shown}");
    assert!(shown.contains("building image opschain-step:") && !shown.contains("pulled the step image"), "{shown}");

    remove_images(&registry, &tag);
}

/// Removes every local image tagged `tag` (the step image's key, unique to a test run) or of
/// `registry`'s repositories (its port is this test's own), pulled by digest (untagged) included.
fn remove_images(registry: &RegistryServer, tag: &str) {
    let out = Command::new(DOCKER).args(["images", "--format", "{{.ID}} {{.Repository}}:{{.Tag}}"]).output().unwrap();
    let ours = format!(" {}/", registry.host());
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(tag) || l.contains(&ours))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    let _ = Command::new(DOCKER).args(["rmi", "--force"]).args(&ids).output();
}

/// The tag (the key) of the one step image in `registry`'s `opschain-step` repository.
fn only_tag(registry: &RegistryServer) -> String {
    let tags: Value = serde_json::from_str(&registry.get("/v2/opschain-step/tags/list").unwrap()).unwrap();
    assert_eq!(tags["tags"].as_array().map(Vec::len), Some(1), "{tags}");
    tags["tags"][0].as_str().unwrap().to_string()
}

/// The id of the local image `reference`.
fn image_id(reference: &str) -> String {
    let out = Command::new(DOCKER).args(["image", "inspect", "--format", "{{.Id}}", reference]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
#[ignore = "needs a Docker engine: scripts/test runs it where it finds one"]
fn a_registry_image_of_a_rebuilt_base_image_is_rebuilt_not_reused() {
    ready();
    let registry = RegistryServer::start();
    let dir = tempfile::tempdir().unwrap();
    let repo = fixed_repo(dir.path());
    let state = dir.path().join("state");
    // A base image of this test's own, rebuilt below under the same name.
    let base = format!("fix-images-registry-base:{}", std::process::id());
    let agent = crate::common::runner_bin();
    crate::docker_base::build_image_as(agent, &base, "first base");
    let (ok, shown) = run_change_on(&state, &repo, &registry.host(), "bind-mount", &base);
    assert!(ok && shown.contains("building image opschain-step:"), "{shown}");
    let tag = only_tag(&registry);

    // The base rebuilt under its name: the step image in the registry (and the local one) was
    // built from the old one, so the next change builds anew rather than reuse either.
    crate::docker_base::build_image_as(agent, &base, "second base");
    let (ok, shown) = run_change_on(&state, &repo, &registry.host(), "bind-mount", &base);
    let _ = Command::new(DOCKER).args(["rmi", "--force", &base]).output();
    remove_images(&registry, &tag);
    assert!(ok, "{shown}");
    assert!(shown.contains("built from another base image") && shown.contains("building image opschain-step:"), "{shown}");
    assert!(!shown.contains("from the registry, as") && !shown.contains("reused image") && !shown.contains("pulled the step image"), "{shown}");
    assert!(shown.contains("hello from the registry image"), "{shown}");
}

#[test]
#[ignore = "needs a Docker engine: scripts/test runs it where it finds one"]
fn an_image_someone_else_pushed_under_the_step_images_name_never_runs() {
    ready();
    let registry = RegistryServer::start();
    let dir = tempfile::tempdir().unwrap();
    let repo = fixed_repo(dir.path());
    let state = dir.path().join("state");
    let (ok, shown) = run_change(&state, &repo, &registry.host(), "bind-mount");
    assert!(ok, "{shown}");
    let tag = only_tag(&registry);
    let reference = format!("{}/opschain-step:{tag}", registry.host());

    // Someone with push rights replaces the image under its name: FROM the same base, with the
    // base image label a step image carries, and an entrypoint of its own.
    let foreign = tempfile::tempdir().unwrap();
    let label = format!("org.opschain.base-image-id={}", image_id(BASE));
    std::fs::write(foreign.path().join("Dockerfile"), format!("FROM {BASE}\nLABEL {label}\nENTRYPOINT [\"/bin/sh\", \"-c\", \"echo FOREIGN-IMAGE-RAN; exit 0\"]\n"))
        .unwrap();
    let built = Command::new(DOCKER).env("DOCKER_BUILDKIT", "1").args(["build", "-q", "-t", &reference]).arg(foreign.path()).output().unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let pushed = Command::new(DOCKER).args(["push", "--quiet", &reference]).output().unwrap();
    assert!(pushed.status.success(), "{}", String::from_utf8_lossy(&pushed.stderr));
    remove_images(&registry, &tag);

    // This controller pulls by the digest it pushed: its own image runs, not the one under the name.
    let (ok, shown) = run_change(&state, &repo, &registry.host(), "bind-mount");
    assert!(ok, "{shown}");
    assert!(!shown.contains("FOREIGN-IMAGE-RAN"), "the foreign image ran: {shown}");
    assert!(shown.contains(&format!("pulled the step image {}/opschain-step@sha256:", registry.host())), "{shown}");
    assert!(shown.contains("hello from the registry image"), "{shown}");
    // A controller without a record of its own builds rather than pull the name.
    remove_images(&registry, &tag);
    let (ok, shown) = run_change(&dir.path().join("state2"), &repo, &registry.host(), "bind-mount");
    remove_images(&registry, &tag);
    assert!(ok, "{shown}");
    assert!(!shown.contains("FOREIGN-IMAGE-RAN") && shown.contains("building image opschain-step:"), "{shown}");
}

#[test]
#[ignore = "needs a Docker engine: scripts/test runs it where it finds one"]
fn an_unreachable_registry_fails_the_step_with_a_clear_error() {
    ready();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let repo = fixed_repo(dir.path());
    let (ok, shown) = run_change(&dir.path().join("state"), &repo, &format!("127.0.0.1:{port}"), "bind-mount");
    assert!(!ok, "{shown}");
    assert!(shown.contains("through the registry"), "{shown}");
    assert!(shown.contains(&format!("127.0.0.1:{port}")), "{shown}");
    // A bad registry value is refused before anything runs.
    let (ok, shown) = run_change(&dir.path().join("state"), &repo, "http://127.0.0.1:5000", "bind-mount");
    assert!(!ok && shown.contains("invalid registry"), "{shown}");
}
