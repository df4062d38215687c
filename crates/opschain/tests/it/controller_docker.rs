//! Changes on the Docker backend, where a Docker engine runs: a base runner image is built
//! `FROM scratch` (nothing can be pulled) from the test-built agent, its shared libraries, a static
//! busybox and the `opschain-exec` link; then `opschain change run --backend docker` builds each
//! step's image through the one build pipeline and runs a container per step. Ignored unless asked
//! for (`--ignored`; scripts/test asks where it finds an engine), and then each needs one.
//!
//! Checked: the demo change as on the process backend; a seed-style custom Dockerfile (the output
//! of `opschain-runner create-dockerfile` plus a `RUN` line through `opschain-exec` with the same
//! mounts) gets `.git`, the four build args, the env properties and the default build secret set;
//! the image is reused for the same inputs and rebuilt (from the first line reading the env
//! context) when an env property changes; a `build_secrets` list replaces the default set, in
//! order; no secret value is in `docker history` or any layer of `docker save`; no container is
//! left behind; and a MintPress (`.mintpress`) repository end to end.

use crate::common;
use crate::common::git;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::docker_base::{build_image_as, engine_runs, DOCKER};

/// A build secret value: lower case, so that the upper-cased copy a build writes differs from it.
const SECRET: &str = "s3cr3t-default-set-4b1d9e";

/// A name unique to this run of this test.
pub(crate) fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{what}-{}-{nanos}", std::process::id())
}

/// Images removed when dropped, also when a test fails.
pub(crate) struct Images(pub(crate) Vec<String>);

impl Drop for Images {
    fn drop(&mut self) {
        for tag in &self.0 {
            let _ = Command::new(DOCKER).args(["rmi", "--force", tag]).output();
        }
    }
}

/// Builds a base runner image from the test-built agent (with its libraries), busybox and the
/// `opschain-exec` link; returns its tag (unique to this test, removed with `images`).
pub(crate) fn build_base_image(images: &mut Images) -> String {
    let tag = format!("opschain-test-base:{}", unique("ctl"));
    build_image_as(crate::common::runner_bin(), &tag, "");
    images.0.push(tag.clone());
    tag
}

pub(crate) fn opschain(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_opschain"));
    c.env("OPSCHAIN_STATE_DIR", state).env("OPSCHAIN_RUNNER_BIN", crate::common::runner_bin()).env_remove("OPSCHAIN_REPO_FOLDER");
    c
}

/// Runs `opschain ARGS` and asserts it succeeded.
pub(crate) fn ok(state: &Path, args: &[&str]) {
    let out = opschain(state).args(args).output().unwrap();
    assert!(out.status.success(), "opschain {args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// Stores a secret set.
pub(crate) fn secret_set(state: &Path, name: &str, set: Value) {
    let file = state.join(format!("{name}.json"));
    std::fs::write(&file, set.to_string()).unwrap();
    ok(state, &["secrets", "set", name, "--file", file.to_str().unwrap()]);
}

/// One `opschain change run --backend docker`: its exit status, what it printed, and the step
/// images it built (added to `images`). Checks that it left no container behind.
pub(crate) fn change_run(state: &Path, base: &str, images: &mut Images, args: &[&str]) -> (i32, String) {
    common::make_target_of(state, &[&["change", "run"][..], args].concat());
    let controller = opschain(state)
        .args(["change", "run", "--verbose", "--backend", "docker", "--docker-bin", DOCKER, "--docker-base-image", base])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = controller.id();
    let out = controller.wait_with_output().unwrap();
    let shown = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    for line in shown.lines() {
        if let Some((_, tag)) = line.split_once(": built image ") {
            images.0.push(tag.trim().to_string());
        }
    }
    let ps = Command::new(DOCKER).args(["ps", "-a", "--format", "{{.Names}}"]).output().unwrap();
    let left: Vec<String> =
        String::from_utf8_lossy(&ps.stdout).lines().filter(|n| n.starts_with("opschain-step-") && n.ends_with(&format!("-{pid}"))).map(str::to_string).collect();
    assert!(left.is_empty(), "containers left behind: {left:?}");
    (out.status.code().unwrap_or(-1), shown)
}

/// The tags of the step images a change's output says it built and reused.
pub(crate) fn image_lines(shown: &str) -> (Vec<String>, Vec<String>) {
    let tag_after = |marker: &str| {
        shown.lines().filter_map(|l| l.split_once(marker)).map(|(_, rest)| rest.split_whitespace().next().unwrap_or_default().to_string()).collect::<Vec<_>>()
    };
    (tag_after(": built image "), tag_after(": reused image "))
}

/// A git repository with the given files (path, content, executable) committed on `main`.
pub(crate) fn repo_with(dir: &Path, files: &[(&str, &str, bool)]) -> PathBuf {
    let repo = dir.join("project");
    for (path, content, executable) in files {
        let path = repo.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        if *executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "one"]);
    repo
}

/// `create-dockerfile`'s output for `folder`, as a user would start a custom Dockerfile.
fn created_dockerfile(folder: &str) -> String {
    let out = common::runner().args(["--folder", folder, "create-dockerfile"]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// Every file of `docker save TAG`, and every file in every layer of it, scanned for `needle`;
/// returns where it was found.
pub(crate) fn saved_image_mentions(tag: &str, needle: &[u8]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("saved.tar");
    let out = Command::new(DOCKER).args(["save", "--output"]).arg(&saved).arg(tag).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let unpacked = dir.path().join("saved");
    std::fs::create_dir_all(&unpacked).unwrap();
    assert!(Command::new("tar").arg("-xf").arg(&saved).arg("-C").arg(&unpacked).status().unwrap().success());
    let mut found = Vec::new();
    let mut layers = 0;
    let mut stack = vec![unpacked.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                layers += usize::from(path.file_name().is_some_and(|n| n == "layer.tar"));
                if std::fs::read(&path).unwrap().windows(needle.len()).any(|w| w == needle) {
                    found.push(path.strip_prefix(&unpacked).unwrap().display().to_string());
                }
            }
        }
    }
    assert!(layers > 1, "docker save held {layers} layers");
    found
}

/// The Dockerfile steps a plain BuildKit log (as the change printed it with -v, each line behind
/// its step prefix and two spaces) reports as cached.
pub(crate) fn cached_steps(shown: &str) -> Vec<String> {
    crate::docker_base::cached_steps(shown.lines().filter_map(|line| line.split_once("]  ").map(|(_, rest)| rest)))
}

#[test]
#[ignore = "needs a Docker engine: scripts/test runs it where it finds one"]
fn the_demo_change_runs_on_the_docker_backend_as_on_the_process_backend() {
    common::required("a Docker engine", engine_runs());
    let mut images = Images(Vec::new());
    let base = build_base_image(&mut images);
    let state = tempfile::tempdir().unwrap();
    secret_set(state.path(), "demo", json!({"API_TOKEN": "tok-docker"}));
    let demo = common::fixture("demo");
    let (status, shown) = change_run(
        state.path(),
        &base,
        &mut images,
        &["--repo", demo.to_str().unwrap(), "--project", "demo", "--environment", "dev", "--action", "deploy", "--secrets", "demo"],
    );
    assert_eq!(status, 0, "{shown}");
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
    // Six steps, each with its build phase, all of one step image: the first step's properties
    // hold no env property, and the steps' own property changes are not env properties.
    assert_eq!(shown.matches("opschain: phase build started").count(), 6, "{shown}");
    let (built, reused) = image_lines(&shown);
    assert!(built.len() <= 1 && built.len() + reused.len() == 6, "built {built:?}, reused {reused:?}: {shown}");
    let mut tags: Vec<&String> = built.iter().chain(&reused).collect();
    tags.dedup();
    assert_eq!(tags.len(), 1, "{tags:?}");
}

#[test]
#[ignore = "needs a Docker engine: scripts/test runs it where it finds one"]
fn a_seed_style_dockerfile_gets_git_the_build_args_env_properties_and_the_default_secret_set() {
    common::required("a Docker engine", engine_runs());
    let mut images = Images(Vec::new());
    let base = build_base_image(&mut images);
    let dir = tempfile::tempdir().unwrap();
    // The seeds' way: the default Dockerfile, plus a RUN line through opschain-exec with the same
    // two secret mounts.
    let dockerfile = created_dockerfile(".opschain")
        + "\nARG OPSCHAIN_BASE_RUNNER\n\
           RUN --mount=type=secret,id=step_context_env,target=/opt/opschain/.opschain/step_context_env.json,uid=10001,gid=10001 \\\n    \
           --mount=type=secret,id=opschain-build-secrets,uid=10001,gid=10001 \\\n    \
           opschain-exec /bin/sh -c 'echo \"rev=$GIT_REV sha=$GIT_SHA base=$OPSCHAIN_BASE_RUNNER version=$OPSCHAIN_VERSION greeting=$GREETING token=$(printf %s \"$BUILD_TOKEN\" | tr a-z A-Z)\" > /opt/opschain/built.txt'\n";
    let actions =
        "[actions.show]\nrun = 'cat /opt/opschain/built.txt; echo \"head=$(cat /opt/opschain/.git/HEAD)\"; test -d /opt/opschain/.git/objects && echo git-objects-present'\n";
    let repo = repo_with(dir.path(), &[(".opschain/Dockerfile", &dockerfile, false), (".opschain/actions.toml", actions, false), ("VERSION", "1\n", false)]);
    let sha = git(&repo, &["rev-parse", "HEAD"]);
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    // The default build secret set exists from the start, empty.
    let listed = opschain(&state).args(["secrets", "list"]).output().unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).lines().any(|l| l == "opschain-build-env"), "{listed:?}");
    secret_set(&state, "opschain-build-env", json!({"BUILD_TOKEN": SECRET}));
    ok(&state, &["properties", "set", "--project", "web", "--json", r#"{"opschain": {"env": {"GREETING": "hello-1"}}, "other": 1}"#]);
    let run = |images: &mut Images| {
        change_run(&state, &base, images, &["--repo", repo.to_str().unwrap(), "--project", "web", "--environment", "dev", "--action", "show", "--git-rev", "main"])
    };

    let (status, shown) = run(&mut images);
    assert_eq!(status, 0, "{shown}");
    let expected = format!("rev=main sha={sha} base={base} version={} greeting=hello-1 token={}", env!("CARGO_PKG_VERSION"), SECRET.to_uppercase());
    assert!(shown.contains(&expected), "{expected}\n{shown}");
    assert!(shown.contains(&format!("head={sha}")) && shown.contains("git-objects-present"), "{shown}");
    assert!(shown.contains("opschain: phase build started") && shown.contains("opschain: phase build finished in "), "{shown}");
    assert!(shown.contains("build secret sets: opschain-build-env"), "{shown}");
    // The build's own output is in the change log, as the step's is.
    let logs = opschain(&state).args(["change", "logs", "1", "--verbose"]).output().unwrap();
    let logs = String::from_utf8_lossy(&logs.stdout).to_string();
    assert!(logs.contains("opschain-exec /bin/sh -c") && logs.contains("phase build finished in ") && logs.contains(&expected), "{logs}");
    let (built, reused) = image_lines(&shown);
    assert_eq!((built.len(), reused.len()), (1, 0), "{shown}");
    let first = built[0].clone();

    // The build secret is in no history entry and no layer (the scan does find what the build
    // wrote from it).
    let history = Command::new(DOCKER).args(["history", "--no-trunc", &first]).output().unwrap();
    let history = String::from_utf8_lossy(&history.stdout).to_string();
    assert!(history.contains("opschain-exec") && !history.contains(SECRET), "{history}");
    assert!(saved_image_mentions(&first, SECRET.as_bytes()).is_empty(), "the build secret is in the image");
    assert!(saved_image_mentions(&first, SECRET.to_uppercase().as_bytes()).iter().any(|p| p.ends_with("layer.tar")));

    // The same commit and env properties: the image is reused, whatever else changed.
    ok(&state, &["properties", "set", "--project", "web", "--json", r#"{"opschain": {"env": {"GREETING": "hello-1"}}, "other": 2}"#]);
    let (status, shown) = run(&mut images);
    assert_eq!(status, 0, "{shown}");
    assert_eq!(image_lines(&shown), (vec![], vec![first.clone()]), "{shown}");

    // A changed env property at the same commit reaches the next build: a new image, built from
    // the repository layer on.
    ok(&state, &["properties", "set", "--project", "web", "--json", r#"{"opschain": {"env": {"GREETING": "hello-2"}}}"#]);
    let (status, shown) = run(&mut images);
    assert_eq!(status, 0, "{shown}");
    assert!(shown.contains(&expected.replace("hello-1", "hello-2")), "{shown}");
    let (built, _) = image_lines(&shown);
    assert!(built.len() == 1 && built[0] != first, "{shown}");
    let cached = cached_steps(&shown);
    assert!(cached.iter().any(|s| s.starts_with("ADD repo.tar")), "{cached:?}\n{shown}");
    assert!(!cached.iter().any(|s| s.starts_with("RUN --mount")), "{cached:?}\n{shown}");
}

#[test]
#[ignore = "needs a Docker engine: scripts/test runs it where it finds one"]
fn a_build_secrets_list_replaces_the_default_set_in_order() {
    common::required("a Docker engine", engine_runs());
    let mut images = Images(Vec::new());
    let base = build_base_image(&mut images);
    let dir = tempfile::tempdir().unwrap();
    // The default Dockerfile unchanged: its setup hook runs through opschain-exec.
    // It writes the values upper-cased: the lower-case originals must be in no layer.
    let setup = "#!/bin/sh\necho \"X=$X Y=$Y Z=$Z DEF=${DEF:-unset}\" | tr a-z A-Z > /opt/opschain/sets.txt\n";
    let actions = "[actions.show]\nrun = 'cat /opt/opschain/sets.txt; echo \"action-sees-X=${X:-unset}\"'\n";
    let repo = repo_with(dir.path(), &[(".opschain/setup", setup, true), (".opschain/actions.toml", actions, false)]);
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    secret_set(&state, "opschain-build-env", json!({"DEF": "default-value", "X": "from-default"}));
    secret_set(&state, "p1", json!({"X": "x-p1", "Y": "y-p1", "Z": "z-p1"}));
    secret_set(&state, "p2", json!({"Y": "y-p2", "Z": "z-p2"}));
    secret_set(&state, "e1", json!({"Z": "z-e1"}));
    ok(&state, &["properties", "set", "--project", "web", "--json", r#"{"opschain": {"config": {"build_secrets": ["p1", "p2"]}}}"#]);
    ok(&state, &["properties", "set", "--project", "web", "--environment", "dev", "--json", r#"{"opschain": {"config": {"build_secrets": ["e1"]}}}"#]);
    let args = ["--repo", repo.to_str().unwrap(), "--project", "web", "--environment", "dev", "--action", "show"];
    let (status, shown) = change_run(&state, &base, &mut images, &args);
    assert_eq!(status, 0, "{shown}");
    assert!(shown.contains("X=X-P1 Y=Y-P2 Z=Z-E1 DEF=UNSET"), "{shown}");
    assert!(shown.contains("build secret sets: p1, p2, e1"), "{shown}");
    assert!(shown.contains("action-sees-X=unset"), "build secrets never reach the action: {shown}");
    let (built, _) = image_lines(&shown);
    assert_eq!(built.len(), 1, "{shown}");
    let history = Command::new(DOCKER).args(["history", "--no-trunc", &built[0]]).output().unwrap();
    let history = String::from_utf8_lossy(&history.stdout).to_string();
    for value in ["x-p1", "y-p2", "z-e1", "y-p1", "z-p2", "default-value", "from-default"] {
        assert!(!history.contains(value), "{value} in {history}");
        assert!(saved_image_mentions(&built[0], value.as_bytes()).is_empty(), "{value} is in the image");
    }

    // A listed set that does not exist fails the step before any build, saying how to make it.
    ok(&state, &["properties", "set", "--project", "web", "--environment", "dev", "--json", r#"{"opschain": {"config": {"build_secrets": ["absent"]}}}"#]);
    let (status, shown) = change_run(&state, &base, &mut images, &args);
    assert_eq!(status, 1, "{shown}");
    assert!(shown.contains("build secret set \"absent\" does not exist: create it with `opschain secrets set absent --file FILE.json`"), "{shown}");

    // An invalid env property fails the build phase before docker runs, naming where it is.
    ok(&state, &["properties", "set", "--project", "web", "--environment", "dev", "--json", r#"{"opschain": {"env": {"bad name": "v"}}}"#]);
    let (status, shown) = change_run(&state, &base, &mut images, &args);
    assert_eq!(status, 1, "{shown}");
    assert!(shown.contains("opschain: phase build failed in ") && shown.contains("at /environment/properties/opschain/env/bad name"), "{shown}");
    assert!(!shown.contains("opschain: building image"), "{shown}");
}

#[test]
#[ignore = "needs a Docker engine: scripts/test runs it where it finds one"]
fn a_mintpress_repository_runs_end_to_end() {
    common::required("a Docker engine", engine_runs());
    let mut images = Images(Vec::new());
    let base = build_base_image(&mut images);
    let dir = tempfile::tempdir().unwrap();
    // The default MintPress Dockerfile: the env context as step_context.json.zip, the setup hook
    // in .mintpress.
    let setup = "#!/bin/sh\necho \"setup greeting=$GREETING token-length=${#BUILD_TOKEN} folder=$OPSCHAIN_REPO_FOLDER\" > /opt/opschain/setup.txt\n";
    let actions = "[actions.deploy]\nrun = 'cat /opt/opschain/setup.txt; test -f .mintpress/step_context.json && echo context-in-mintpress; echo \"head=$(cat .git/HEAD)\"; opschain-runner property set --environment deployed \"$GREETING\"'\n";
    let repo = repo_with(
        dir.path(),
        &[
            (".mintpress/setup", setup, true),
            (".mintpress/actions.toml", actions, false),
            (".mintpress/properties.json", r#"{"opschain": {"env": {"GREETING": "from-repo"}}}"#, false),
        ],
    );
    let sha = git(&repo, &["rev-parse", "HEAD"]);
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    secret_set(&state, "opschain-build-env", json!({"BUILD_TOKEN": "twelve-chars"}));
    ok(&state, &["properties", "set", "--project", "mp", "--environment", "prod", "--json", r#"{"opschain": {"env": {"GREETING": "hello-mintpress"}}}"#]);
    let (status, shown) = change_run(
        &state,
        &base,
        &mut images,
        &["--repo", repo.to_str().unwrap(), "--project", "mp", "--environment", "prod", "--action", "deploy", "--folder", ".mintpress"],
    );
    assert_eq!(status, 0, "{shown}");
    assert!(shown.contains("setup greeting=hello-mintpress token-length=12 folder=.mintpress"), "{shown}");
    assert!(shown.contains("context-in-mintpress") && shown.contains(&format!("head={sha}")), "{shown}");
    let props = opschain(&state).args(["properties", "show", "--project", "mp", "--environment", "prod"]).output().unwrap();
    let props: Value = serde_json::from_slice(&props.stdout).unwrap();
    assert_eq!(props["deployed"], "hello-mintpress", "{props}");
    let (built, _) = image_lines(&shown);
    assert_eq!(built.len(), 1, "{shown}");
    assert!(saved_image_mentions(&built[0], b"twelve-chars").is_empty());

    // A base image rebuilt under the same name rebuilds the step image (same tag, new base).
    build_image_as(crate::common::runner_bin(), &base, "rebuilt");
    let args = ["--repo", repo.to_str().unwrap(), "--project", "mp", "--environment", "prod", "--action", "deploy", "--folder", ".mintpress"];
    let (status, shown) = change_run(&state, &base, &mut images, &args);
    assert_eq!(status, 0, "{shown}");
    assert_eq!(image_lines(&shown), (built.clone(), vec![]), "{shown}");
    let (status, shown) = change_run(&state, &base, &mut images, &args);
    assert_eq!(status, 0, "{shown}");
    assert_eq!(image_lines(&shown), (vec![], built), "{shown}");
}

#[test]
#[ignore = "needs a Docker engine: scripts/test runs it where it finds one"]
fn a_build_secret_a_run_line_prints_reaches_neither_the_terminal_nor_the_store() {
    common::required("a Docker engine", engine_runs());
    let mut images = Images(Vec::new());
    let base = build_base_image(&mut images);
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    secret_set(&state, "opschain-build-env", json!({"BUILD_TOKEN": "docker-build-secret-4242"}));
    // A repository whose Dockerfile prints the build secrets, raw and through opschain-exec, in a
    // RUN line never cached before (the nonce).
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(repo.join(".opschain")).unwrap();
    std::fs::write(repo.join(".opschain/actions.toml"), "[actions.noop]\nrun = \"true\"\n").unwrap();
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    std::fs::write(
        repo.join(".opschain/Dockerfile"),
        format!(
            "ARG OPSCHAIN_BASE_RUNNER\nFROM ${{OPSCHAIN_BASE_RUNNER}}\nADD repo.tar /opt/opschain/\n\
             RUN --mount=type=secret,id=step_context_env,target=/opt/opschain/.opschain/step_context_env.json \
             --mount=type=secret,id=opschain-build-secrets \
             cat /run/secrets/opschain-build-secrets; echo; opschain-exec /bin/sh -c 'echo token=$BUILD_TOKEN'; echo nonce-{nonce}\n"
        ),
    )
    .unwrap();
    let (status, terminal) = change_run(&state, &base, &mut images, &["--repo", repo.to_str().unwrap(), "--project", "p", "--environment", "e", "--action", "noop"]);
    assert_eq!(status, 0, "{terminal}");
    let logs = opschain(&state).args(["change", "logs", "1", "--verbose"]).output().unwrap();
    let logs = String::from_utf8_lossy(&logs.stdout).to_string();
    for (what, shown) in [("terminal", &terminal), ("store", &logs)] {
        assert!(shown.contains(&format!("nonce-{nonce}")), "the RUN line ran, its output in the {what}:\n{shown}");
        assert!(shown.contains("token=****"), "the secret's line, masked, in the {what}:\n{shown}");
        assert!(!shown.contains("docker-build-secret-4242"), "the build secret in the {what}:\n{shown}");
    }
}
