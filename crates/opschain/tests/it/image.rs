//! Build contexts and step images, for real.
//!
//! The build-context tests run everywhere (git and tar only). The image test needs a Docker engine
//! and a client that builds with BuildKit ([`Docker::detect`]): it is ignored unless asked for
//! (`--ignored`; scripts/test asks where it finds an engine), and then fails without one. It builds the static agent, the FROM-scratch test base
//! (runner-image/test/Dockerfile), then step images from generated build contexts, checks what
//! opschain-exec wrote, that the build secret is in no layer, and runs a step in the image.

use crate::common;
use crate::common::git;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;
use opschain::image::docker::{Docker, DockerError};
use opschain_runner::step_image::{self, BuildContextSpec, SecretSource};
use serde_json::{json, Value};

/// A build secret value: lower case, so that the upper-cased copy the build writes differs from it.
const SECRET: &str = "s3cr3t-build-token-9f2c7d";

const CUSTOM_DOCKERFILE: &str = r#"ARG OPSCHAIN_BASE_RUNNER
FROM ${OPSCHAIN_BASE_RUNNER}
ADD repo.tar /opt/opschain/
ARG GIT_REV
ARG GIT_SHA
RUN --mount=type=secret,id=step_context_env,target=/opt/opschain/.opschain/step_context_env.json \
    --mount=type=secret,id=opschain-build-secrets \
    opschain-exec /bin/sh -c 'echo "greeting=$GREETING rev=$GIT_REV sha=$GIT_SHA token=$(printf %s "$BUILD_TOKEN" | tr a-z A-Z)" > /opt/opschain/built.txt'
"#;

const SETUP_HOOK: &str = "#!/bin/sh\necho \"setup greeting=$GREETING default-secret-length=${#DEFAULT_SECRET}\" > /opt/opschain/setup.txt\n";

/// A fixture repo: commit 1 (tag `v1`) has a custom Dockerfile, commit 2 (HEAD) replaces it with a
/// setup hook for the default Dockerfile.
fn fixture_repo(dir: &Path) -> PathBuf {
    let repo = dir.join("project");
    std::fs::create_dir_all(repo.join(".opschain")).unwrap();
    git(&repo, &["init", "-q"]);
    std::fs::write(repo.join("VERSION"), "v1\n").unwrap();
    std::fs::write(repo.join(".opschain/Dockerfile"), CUSTOM_DOCKERFILE).unwrap();
    std::fs::write(
        repo.join(".opschain/actions.toml"),
        "[actions.hello]\nrun = 'cat /opt/opschain/built.txt; echo \"action-token=$BUILD_TOKEN\"; opschain-exec /bin/sh -c \"echo exec-token=\\$BUILD_TOKEN\"; opschain-runner property set --environment greeted \"$GREETING\"'\n",
    )
    .unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "one"]);
    git(&repo, &["tag", "v1"]);
    std::fs::write(repo.join("VERSION"), "v2\n").unwrap();
    std::fs::remove_file(repo.join(".opschain/Dockerfile")).unwrap();
    std::fs::write(repo.join(".opschain/setup"), SETUP_HOOK).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(repo.join(".opschain/setup"), std::fs::Permissions::from_mode(0o755)).unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "two"]);
    // An uncommitted change must not reach the image.
    std::fs::write(repo.join("VERSION"), "dirty\n").unwrap();
    repo
}

/// The step context the change would have: env properties, a build secret list, other properties.
fn change_context() -> Value {
    json!({
        "context": {"project": {"code": "demo"}, "environment": {"code": "dev"}, "step": {"action": "hello"}},
        "project": {"properties": {
            "db": {"password": "not-for-the-build"},
            "opschain": {"env": {"GREETING": "hello-from-property", "BUILD_TOKEN": "prop-token-value"},
                         "config": {"build_secrets": ["team-secrets", "absent-set"]}}
        }},
        "environment": {"properties": {"opschain": {"env": {"LEVEL": "dev"}}}}
    })
}

/// The host's build secret sets.
fn secrets_dir(dir: &Path) -> PathBuf {
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("team-secrets"), serde_json::to_vec(&json!({"BUILD_TOKEN": SECRET})).unwrap()).unwrap();
    std::fs::write(secrets.join("opschain-build-env"), serde_json::to_vec(&json!({"DEFAULT_SECRET": "twelve-chars"})).unwrap()).unwrap();
    secrets
}

fn tar_list(tar: &Path) -> Vec<String> {
    let output = Command::new("tar").arg("-tf").arg(tar).output().unwrap();
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout).lines().map(str::to_string).collect()
}

fn tar_extract(tar: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    let status = Command::new("tar").args(["--no-same-owner", "-xf"]).arg(tar).arg("-C").arg(to).status().unwrap();
    assert!(status.success());
}

#[test]
fn build_context_cli_writes_the_repo_at_the_commit_the_env_context_and_the_args() {
    let dir = tempfile::tempdir().unwrap();
    let repo = fixture_repo(dir.path());
    let secrets = secrets_dir(dir.path());
    let context_file = dir.path().join("step_context.json");
    std::fs::write(&context_file, serde_json::to_vec(&change_context()).unwrap()).unwrap();
    let out = dir.path().join("ctx");
    let output = runner()
        .arg("--repo")
        .arg(&repo)
        .args(["build-context", "--git-rev", "v1", "--base-runner", "base:1", "--opschain-version", "9.9.9"])
        .arg("--out")
        .arg(&out)
        .arg("--context")
        .arg(&context_file)
        .arg("--secrets-dir")
        .arg(&secrets)
        .env_remove("OPSCHAIN_REPO_FOLDER")
        .env_remove("OPSCHAIN_BASE_RUNNER")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    let sha = git(&repo, &["rev-parse", "v1^{commit}"]);
    assert_eq!(printed["git_sha"], sha);
    assert_eq!(printed["custom_dockerfile"], true);
    let out = std::fs::canonicalize(&out).unwrap();
    let digest = Command::new("git").arg("hash-object").arg(out.join("step_context_env.json")).output().unwrap();
    let digest = String::from_utf8_lossy(&digest.stdout).trim().to_string();
    // The build secrets digest: without the controller's key, of the sets' names only.
    let sets_digest = step_image::secrets_digest(&[step_image::SecretSet { name: "team-secrets".into(), values: Vec::new() }], None);
    assert!(sets_digest.starts_with("names-sha256:"));
    assert_eq!(
        printed["build_args"],
        json!([
            ["GIT_REV", "v1"],
            ["GIT_SHA", sha],
            ["OPSCHAIN_BASE_RUNNER", "base:1"],
            ["OPSCHAIN_VERSION", "9.9.9"],
            ["OPSCHAIN_CONTEXT_DIGEST", digest],
            ["OPSCHAIN_BUILD_SECRETS_DIGEST", sets_digest]
        ])
    );
    let bundle = dir.path().join("ctx.build-secrets.json");
    assert_eq!(printed["secrets"], json!([{"id": "step_context_env", "src": out.join("step_context_env.json")}, {"id": "opschain-build-secrets", "src": bundle}]));
    // The bundle: the sets that apply and exist, merged (absent-set is skipped), readable by
    // this user only, outside the build context.
    assert_eq!(printed["secret_sets"], json!(["team-secrets"]));
    assert_eq!(serde_json::from_slice::<Value>(&std::fs::read(&bundle).unwrap()).unwrap(), json!({"BUILD_TOKEN": SECRET}));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&bundle).unwrap().permissions().mode() & 0o777, 0o600);

    // The directory holds exactly the three files.
    let mut names: Vec<String> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["Dockerfile", "repo.tar", "step_context_env.json"]);
    assert_eq!(std::fs::read_to_string(out.join("Dockerfile")).unwrap(), CUSTOM_DOCKERFILE);
    let env_context: Value = serde_json::from_slice(&std::fs::read(out.join("step_context_env.json")).unwrap()).unwrap();
    // Only the project and environment context values and the env properties: what the seed says.
    assert_eq!(env_context["context"], json!({"project": {"code": "demo"}, "environment": {"code": "dev"}}));
    assert_eq!(env_context["project"]["properties"], json!({"opschain": {"env": {"GREETING": "hello-from-property", "BUILD_TOKEN": "prop-token-value"}}}));
    assert!(!String::from_utf8_lossy(&std::fs::read(out.join("step_context_env.json")).unwrap()).contains("not-for-the-build"));

    // repo.tar: the work tree at v1, with a .git whose HEAD is that commit.
    let list = tar_list(&out.join("repo.tar"));
    assert!(list.contains(&"./.git/HEAD".to_string()) && list.contains(&"./VERSION".to_string()), "{list:?}");
    assert!(!list.iter().any(|p| p.ends_with(".opschain/setup")), "a later commit's file: {list:?}");
    let unpacked = dir.path().join("unpacked");
    tar_extract(&out.join("repo.tar"), &unpacked);
    assert_eq!(std::fs::read_to_string(unpacked.join("VERSION")).unwrap(), "v1\n");
    assert_eq!(git(&unpacked, &["rev-parse", "HEAD"]), sha);
    assert_eq!(git(&unpacked, &["log", "--format=%s", "-1", "main"]), "two", "all commit info is there");
    assert_eq!(git(&unpacked, &["status", "--porcelain"]), "", "the work tree matches the index");
    let owners = Command::new("tar").args(["--numeric-owner", "-tvf"]).arg(out.join("repo.tar")).output().unwrap();
    assert!(String::from_utf8_lossy(&owners.stdout).lines().all(|l| l.contains(" 10001/10001 ")));
}

#[test]
fn build_context_uses_the_default_dockerfile_without_a_custom_one_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let repo = fixture_repo(dir.path());
    let default = runner().arg("create-dockerfile").output().unwrap();
    assert_eq!(default.status.code(), Some(0));
    assert_eq!(String::from_utf8(default.stdout).unwrap(), step_image::default_dockerfile(".opschain"));

    let context = step_image::write_context(&BuildContextSpec::new(&repo, dir.path().join("head"))).unwrap();
    assert!(!context.custom_dockerfile);
    assert_eq!(std::fs::read_to_string(&context.dockerfile).unwrap(), step_image::default_dockerfile(".opschain"));
    assert_eq!(context.secrets.len(), 2, "the context and the (empty) bundle");
    assert!(context.secret_sets.is_empty());
    // Nothing configured: the default set applies, and the build-env context is empty of properties.
    let env_context: Value = serde_json::from_slice(&std::fs::read(context.dir.join("step_context_env.json")).unwrap()).unwrap();
    assert_eq!(env_context, json!({"project": {"properties": {}}, "environment": {"properties": {}}}));

    // The same commit gives the same repo.tar, byte for byte (the build cache holds across steps);
    // another commit does not.
    let again = step_image::write_context(&BuildContextSpec::new(&repo, dir.path().join("head-again"))).unwrap();
    let tar = |c: &step_image::BuildContext| std::fs::read(c.dir.join("repo.tar")).unwrap();
    assert!(tar(&context) == tar(&again), "repo.tar differs between two builds of one commit");
    let v1 = step_image::write_context(&BuildContextSpec { git_rev: "v1".into(), ..BuildContextSpec::new(&repo, dir.path().join("v1")) }).unwrap();
    assert!(tar(&context) != tar(&v1));
    // With a cache, a commit is archived once and linked into each context: the same bytes.
    let cache = dir.path().join("tars");
    let cached =
        |out: &str| step_image::write_context(&BuildContextSpec { repo_tar_cache: Some(cache.clone()), ..BuildContextSpec::new(&repo, dir.path().join(out)) }).unwrap();
    let (first, second) = (cached("cached-1"), cached("cached-2"));
    assert!(tar(&first) == tar(&context) && tar(&second) == tar(&context));
    let kept: Vec<_> = std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(kept, [BuildContextSpec::new(&repo, "unused").repo_tar_name(&first.git_sha)], "one archive, no leftovers");
    // The image key: the same inputs give the same key; a changed env property another one, but
    // not a changed step, user or other property.
    let key = |context: Value| {
        step_image::plan(&BuildContextSpec { context: context.as_object().unwrap().clone(), ..BuildContextSpec::new(&repo, dir.path().join("unused")) }).unwrap().key
    };
    let with = |greeting: &str, step: i64, other: i64| json!({"context": {"project": {"code": "p"}, "step": {"id": step}}, "project": {"properties": {"other": other, "opschain": {"env": {"GREETING": greeting}}}}});
    assert_eq!(key(with("a", 1, 1)), key(with("a", 2, 2)));
    assert_ne!(key(with("a", 1, 1)), key(with("b", 1, 1)));
    assert_eq!(key(with("a", 1, 1)).len(), 40);

    let cli = |args: &[&str], out: &Path| {
        runner().arg("--repo").arg(&repo).arg("build-context").arg("--out").arg(out).args(args).env_remove("OPSCHAIN_REPO_FOLDER").output().unwrap()
    };
    let output = cli(&["--git-rev", "no-such-rev"], &dir.path().join("bad-rev"));
    assert_eq!(output.status.code(), Some(66), "{:?}", stderr_lines(&output));
    assert!(stderr_lines(&output)[0].contains("no-such-rev"));
    let output = cli(&[], &context.dir);
    assert_eq!(output.status.code(), Some(73), "not empty: {:?}", stderr_lines(&output));
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"project": {"properties": {"opschain": {"config": {"build_secrets": ["../etc"]}}}}}"#).unwrap();
    let output = cli(&["--context", bad.to_str().unwrap()], &dir.path().join("bad-sets"));
    assert_eq!(output.status.code(), Some(65), "{:?}", stderr_lines(&output));
    assert!(stderr_lines(&output)[0].contains("/project/properties/opschain/config/build_secrets/0"), "{:?}", stderr_lines(&output));

    // A bad build secret set on the host fails before any build, without printing its values.
    let bad_secrets = dir.path().join("bad-secrets");
    std::fs::create_dir_all(&bad_secrets).unwrap();
    std::fs::write(bad_secrets.join("opschain-build-env"), r#"{"OK": "value-one", "not ok": "value-two"}"#).unwrap();
    let output = cli(&["--secrets-dir", bad_secrets.to_str().unwrap()], &dir.path().join("bad-secret-values"));
    assert_eq!(output.status.code(), Some(65), "{:?}", stderr_lines(&output));
    let line = &stderr_lines(&output)[0];
    assert!(line.contains("opschain-build-env: at /not ok") && !line.contains("value-"), "{line}");

    // A committed Dockerfile that is a symlink (here to a host file) is refused, and the failed
    // attempt leaves no checkout behind.
    std::os::unix::fs::symlink("/etc/hostname", repo.join(".opschain/Dockerfile")).unwrap();
    git(&repo, &["add", ".opschain/Dockerfile"]);
    git(&repo, &["commit", "-q", "-m", "symlinked Dockerfile"]);
    let out = dir.path().join("symlinked");
    let output = cli(&[], &out);
    assert_eq!(output.status.code(), Some(65), "{:?}", stderr_lines(&output));
    assert!(stderr_lines(&output)[0].contains("not a regular file"), "{:?}", stderr_lines(&output));
    assert!(!out.join(".checkout").exists());
}

/// Removes the images it holds when dropped, also when a test fails.
struct Images<'a> {
    docker: &'a Docker,
    tags: Vec<String>,
}

impl Drop for Images<'_> {
    fn drop(&mut self) {
        for tag in &self.tags {
            let _ = self.docker.run(["rmi", "--force", tag.as_str()]);
        }
    }
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Every file of `docker save`, and every file of every layer in it, scanned for `needle`; returns
/// the names of the places it was found.
fn saved_image_mentions(docker: &Docker, tag: &str, dir: &Path, needle: &[u8]) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    let saved = dir.join("saved.tar");
    docker.run(["save".into(), "--output".into(), saved.clone().into_os_string(), tag.into()]).unwrap();
    let unpacked = dir.join("saved");
    tar_extract(&saved, &unpacked);
    let mut found = Vec::new();
    let mut stack = vec![unpacked.clone()];
    let mut layers = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                if path.file_name().is_some_and(|n| n == "layer.tar") {
                    layers += 1;
                }
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(path.strip_prefix(&unpacked).unwrap().display().to_string());
                }
            }
        }
    }
    assert!(layers > 1, "docker save held {layers} layers");
    found
}

/// The Dockerfile steps a plain BuildKit log reports as taken from the cache.
fn cached_steps(log: &str) -> Vec<String> {
    crate::docker_base::cached_steps(log.lines())
}

#[test]
#[ignore = "needs a Docker engine with a BuildKit client: scripts/test runs it where it finds one"]
fn step_images_build_with_secrets_that_reach_no_layer_and_run_a_step() {
    let docker = common::required("a Docker engine with a BuildKit client", Docker::detect());
    let agent = match common::static_agent() {
        Ok(agent) => agent,
        Err(e) => panic!("{e}"),
    };
    let dir = tempfile::tempdir().unwrap();
    let unique = format!("{}-{}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    let mut images = Images { docker: &docker, tags: Vec::new() };

    // The test base: busybox and the static agent, FROM scratch.
    let base_dir = dir.path().join("base");
    std::fs::create_dir_all(&base_dir).unwrap();
    std::fs::copy("/bin/busybox", base_dir.join("busybox")).unwrap();
    std::fs::copy(agent, base_dir.join("opschain-runner")).unwrap();
    let base = format!("opschain-test-base:{unique}");
    images.tags.push(base.clone());
    let dockerfile = common::repo_root().join("runner-image/test/Dockerfile");
    docker
        .run(["build".into(), "--file".into(), dockerfile.into_os_string(), "--tag".into(), base.clone().into(), base_dir.into_os_string()])
        .unwrap_or_else(|e| panic!("the test base did not build: {e}"));

    // A step image from the repo's custom Dockerfile at v1.
    let repo = fixture_repo(dir.path());
    let secrets = secrets_dir(dir.path());
    let mut spec = BuildContextSpec::new(&repo, dir.path().join("ctx-v1"));
    spec.git_rev = "v1".into();
    spec.base_runner = base.clone();
    spec.context = change_context().as_object().unwrap().clone();
    spec.secrets = SecretSource::Dir(secrets.clone());
    let context = step_image::write_context(&spec).unwrap();
    assert!(context.custom_dockerfile);
    let step = format!("opschain-test-step:{unique}");
    images.tags.push(step.clone());
    docker.build(&context, &step).unwrap_or_else(|e| panic!("the step image did not build: {e}"));

    let cat = |tag: &str, path: &str| text(&docker.run(["run", "--rm", "--entrypoint", "/bin/cat", tag, path]).unwrap());
    let expected = format!("greeting=hello-from-property rev=v1 sha={} token={}\n", context.git_sha, SECRET.to_uppercase());
    assert_eq!(cat(&step, "/opt/opschain/built.txt"), expected, "the secret wins over the property of the same name");
    assert_eq!(cat(&step, "/opt/opschain/VERSION"), "v1\n");
    assert_eq!(cat(&step, "/opt/opschain/.git/HEAD").trim(), context.git_sha);
    let owners = text(&docker.run(["run", "--rm", "--entrypoint", "/bin/stat", step.as_str(), "-c", "%u:%g", "/opt/opschain/VERSION", "/opt/opschain/.git/HEAD"]).unwrap());
    assert_eq!(owners, "10001:10001\n10001:10001\n", "ADD keeps repo.tar's owner, the runner user");

    // The secret and the context file are in no layer, no history entry, no config.
    let history = text(&docker.run(["history", "--no-trunc", step.as_str()]).unwrap());
    assert!(history.contains("opschain-exec"), "{history}");
    assert!(!history.contains(SECRET));
    let scan = dir.path().join("scan");
    assert!(saved_image_mentions(&docker, &step, &scan, SECRET.as_bytes()).is_empty(), "the build secret is in the image");
    let upper = saved_image_mentions(&docker, &step, &dir.path().join("scan-upper"), SECRET.to_uppercase().as_bytes());
    assert!(upper.iter().any(|p| p.ends_with("layer.tar")), "the scan finds what the build wrote: {upper:?}");
    let leftover = docker.run([
        "run",
        "--rm",
        "--entrypoint",
        "/bin/sh",
        step.as_str(),
        "-c",
        "test ! -s /opt/opschain/.opschain/step_context_env.json && test ! -s /run/secrets/opschain-build-secrets",
    ]);
    assert!(leftover.is_ok(), "a mounted secret left content in the image: {leftover:?}");

    // Run a step: the agent is the ENTRYPOINT; the context goes in and the result comes out by
    // docker cp.
    let container = format!("opschain-test-run-{unique}");
    let step_context = dir.path().join("step_context.json");
    std::fs::write(&step_context, serde_json::to_vec(&change_context()).unwrap()).unwrap();
    docker.run(["create", "--name", container.as_str(), step.as_str()]).unwrap();
    let run = (|| {
        docker.run(["cp".into(), step_context.clone().into_os_string(), format!("{container}:/opt/opschain/.opschain/step_context.json").into()])?;
        let started = docker.command().args(["start", "--attach", container.as_str()]).output().unwrap();
        docker.run(["cp".into(), format!("{container}:/opt/opschain/.opschain/step_result.json").into(), dir.path().join("step_result.json").into_os_string()])?;
        Ok::<Output, DockerError>(started)
    })();
    let _ = docker.run(["rm", "--force", container.as_str()]);
    let started = run.unwrap();
    assert_eq!(started.status.code(), Some(0), "{}", String::from_utf8_lossy(&started.stderr));
    assert!(text(&started).contains("greeting=hello-from-property"), "{}", text(&started));
    // The build secret never reaches the action, not even through opschain-exec: the property does
    // (BUILD_TOKEN matches *_TOKEN, so the agent masks its value; the build secret, which the agent
    // does not know, would show in clear).
    assert!(text(&started).contains(" hello stdout| action-token=****\n"), "{}", text(&started));
    assert!(text(&started).contains(" hello stdout| exec-token=****\n"), "{}", text(&started));
    assert!(!text(&started).contains(SECRET) && !String::from_utf8_lossy(&started.stderr).contains(SECRET));
    let result: Value = serde_json::from_slice(&std::fs::read(dir.path().join("step_result.json")).unwrap()).unwrap();
    common::schema::assert_valid("step_result", &result, "the step image's step_result.json");
    assert_eq!(result["environment"]["properties_diff"], json!([{"op": "add", "path": "/greeted", "value": "hello-from-property"}]));
    assert_eq!(result["runner"]["exit_status"], 0);

    // The default Dockerfile at HEAD: the setup hook runs through opschain-exec with the default set.
    let context = step_image::write_context(&BuildContextSpec {
        base_runner: base.clone(),
        secrets: SecretSource::Dir(secrets),
        ..BuildContextSpec::new(&repo, dir.path().join("ctx-head"))
    })
    .unwrap();
    assert!(!context.custom_dockerfile);
    let default_step = format!("opschain-test-default:{unique}");
    images.tags.push(default_step.clone());
    docker.build(&context, &default_step).unwrap_or_else(|e| panic!("the default Dockerfile did not build: {e}"));
    assert_eq!(cat(&default_step, "/opt/opschain/setup.txt"), "setup greeting= default-secret-length=12\n");
    assert_eq!(cat(&default_step, "/opt/opschain/VERSION"), "v2\n", "the commit, not the dirty work tree");
    assert!(saved_image_mentions(&docker, &default_step, &dir.path().join("scan-default"), b"twelve-chars").is_empty());

    // Another step of the same commit and properties: every layer from the cache. Changed env
    // properties: the RUN line runs again (the context digest build arg), the repo layer stays.
    let head_spec = |out: &str, greeting: Option<&str>| {
        let mut spec =
            BuildContextSpec { base_runner: base.clone(), secrets: SecretSource::Dir(dir.path().join("secrets")), ..BuildContextSpec::new(&repo, dir.path().join(out)) };
        if let Some(greeting) = greeting {
            spec.context = json!({"project": {"properties": {"opschain": {"env": {"GREETING": greeting}}}}}).as_object().unwrap().clone();
        }
        step_image::write_context(&spec).unwrap()
    };
    let cached = docker.build(&head_spec("ctx-head-2", None), &default_step).unwrap();
    let steps = cached_steps(&String::from_utf8_lossy(&cached.stderr));
    assert!(steps.iter().any(|s| s.starts_with("ADD repo.tar")) && steps.iter().any(|s| s.starts_with("RUN --mount")), "{steps:?}");
    let changed = format!("opschain-test-changed:{unique}");
    images.tags.push(changed.clone());
    let rebuilt = docker.build(&head_spec("ctx-head-3", Some("changed")), &changed).unwrap();
    let steps = cached_steps(&String::from_utf8_lossy(&rebuilt.stderr));
    assert!(steps.iter().any(|s| s.starts_with("ADD repo.tar")) && !steps.iter().any(|s| s.starts_with("RUN")), "{steps:?}");
    assert_eq!(cat(&changed, "/opt/opschain/setup.txt"), "setup greeting=changed default-secret-length=12\n");
}
