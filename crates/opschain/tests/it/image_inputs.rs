//! What a step image is built from, on the real Docker engine through `opschain change run
//! --backend docker`: every input that changes what the build gives must change the image. Checked:
//! two projects that share a commit (a fork under another branch name) each get a `repo.tar` with
//! their own repository's refs; a changed `opschain.config.build_secrets` list and a rotated build
//! secret value rebuild the image (the `RUN` lines rerun), while no secret value reaches the
//! image's history or layers. Ignored unless asked for (`--ignored`; scripts/test asks where it
//! finds an engine), and then each needs one.

use serde_json::json;

use crate::common;
use crate::common::git;
use crate::controller_docker::{build_base_image, cached_steps, change_run, image_lines, ok, repo_with, saved_image_mentions, secret_set, Images};
use crate::docker_base::{engine_runs, DOCKER};

/// An action that prints the refs and the remote of the step image's `.git` (the image's
/// `repo.tar`, not the sandbox: the Docker backend mounts only the OpsChain folder).
const SHOW_REFS: &str =
    "[actions.refs]\nrun = '''\ncd /opt/opschain\necho refs-begin\ncat .git/packed-refs 2>/dev/null\nfind .git/refs -type f\ngrep url .git/config\necho refs-end\n'''\n";

/// What the action printed between its markers.
fn refs_shown(shown: &str) -> String {
    let begin = shown.find("refs-begin").unwrap_or_else(|| panic!("no refs printed: {shown}"));
    let end = shown[begin..].find("refs-end").map(|e| begin + e).unwrap_or(shown.len());
    shown[begin..end].to_string()
}

#[test]
#[ignore = "needs a Docker engine: scripts/test runs it where it finds one"]
fn two_projects_sharing_a_commit_each_get_their_own_refs_in_repo_tar() {
    common::required("a Docker engine", engine_runs());
    let mut images = Images(Vec::new());
    let base = build_base_image(&mut images);
    let dir = tempfile::tempdir().unwrap();
    let upstream = repo_with(dir.path(), &[(".opschain/actions.toml", SHOW_REFS, false)]);
    git(&upstream, &["branch", "-m", "alpha-upstream-branch"]);
    // The fork: the same commit, under another branch name, with no trace of the upstream's refs.
    let fork = dir.path().join("fork");
    git(dir.path(), &["clone", "-q", upstream.to_str().unwrap(), fork.to_str().unwrap()]);
    git(&fork, &["checkout", "-q", "-b", "beta-fork-branch"]);
    git(&fork, &["branch", "-D", "alpha-upstream-branch"]);
    git(&fork, &["remote", "remove", "origin"]);
    assert_eq!(git(&upstream, &["rev-parse", "HEAD"]), git(&fork, &["rev-parse", "HEAD"]));

    // One state directory, so one archive cache, for both projects.
    let state = dir.path().join("state");
    let run = |repo: &std::path::Path, project: &str, images: &mut Images| {
        let (status, shown) = change_run(&state, &base, images, &["--repo", repo.to_str().unwrap(), "--project", project, "--environment", "e", "--action", "refs"]);
        assert_eq!(status, 0, "{shown}");
        refs_shown(&shown)
    };
    let first = run(&upstream, "upstream", &mut images);
    assert!(first.contains("alpha-upstream-branch") && !first.contains("beta-fork-branch"), "{first}");
    let second = run(&fork, "fork", &mut images);
    assert!(second.contains("beta-fork-branch"), "the fork's image has the fork's refs: {second}");
    assert!(!second.contains("alpha-upstream-branch"), "the upstream's refs leaked into the fork's image: {second}");
    assert!(!second.contains(upstream.to_str().unwrap()), "the upstream's path leaked into the fork's image: {second}");
}

#[test]
#[ignore = "needs a Docker engine: scripts/test runs it where it finds one"]
fn a_changed_build_secrets_list_or_a_rotated_value_rebuilds_and_no_value_reaches_the_image() {
    common::required("a Docker engine", engine_runs());
    let mut images = Images(Vec::new());
    let base = build_base_image(&mut images);
    let dir = tempfile::tempdir().unwrap();
    // The default Dockerfile's setup hook writes what the build saw, upper-cased: the lower-case
    // originals must be in no layer and no history entry.
    let setup = "#!/bin/sh\necho \"TOKEN=$TOKEN\" | tr a-z A-Z > /opt/opschain/token.txt\n";
    let actions = "[actions.show]\nrun = 'cat /opt/opschain/token.txt'\n";
    let repo = repo_with(dir.path(), &[(".opschain/setup", setup, true), (".opschain/actions.toml", actions, false)]);
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let values = ["first-value-7c1a", "second-value-9d2b", "rotated-value-4e8c"];
    secret_set(&state, "first", json!({"TOKEN": values[0]}));
    secret_set(&state, "second", json!({"TOKEN": values[1]}));
    let list = |sets: &str| ok(&state, &["properties", "set", "--project", "web", "--json", &format!(r#"{{"opschain": {{"config": {{"build_secrets": {sets}}}}}}}"#)]);
    let args = ["--repo", repo.to_str().unwrap(), "--project", "web", "--environment", "dev", "--action", "show"];
    let run = |images: &mut Images| {
        let (status, shown) = change_run(&state, &base, images, &args);
        assert_eq!(status, 0, "{shown}");
        shown
    };

    list(r#"["first"]"#);
    let shown = run(&mut images);
    assert!(shown.contains("TOKEN=FIRST-VALUE-7C1A"), "{shown}");
    assert_eq!(image_lines(&shown).0.len(), 1, "built: {shown}");

    // Another list, all else equal: a new image whose build saw the new set.
    list(r#"["second"]"#);
    let shown = run(&mut images);
    assert!(shown.contains("TOKEN=SECOND-VALUE-9D2B"), "the build saw the old list's secrets: {shown}");
    let (built, reused) = image_lines(&shown);
    assert!(built.len() == 1 && reused.is_empty(), "{shown}");
    let cached = cached_steps(&shown);
    assert!(cached.iter().any(|s| s.starts_with("ADD repo.tar")) && !cached.iter().any(|s| s.starts_with("RUN")), "{cached:?}");

    // The same set with a rotated value: rebuilt, the RUN line rerun with the new value.
    secret_set(&state, "second", json!({"TOKEN": values[2]}));
    let shown = run(&mut images);
    assert!(shown.contains("TOKEN=ROTATED-VALUE-4E8C"), "the build reused the old value: {shown}");
    let (built, _) = image_lines(&shown);
    assert_eq!(built.len(), 1, "{shown}");
    // Nothing changed: reused.
    let shown = run(&mut images);
    let (built, reused) = image_lines(&shown);
    assert!(built.is_empty() && reused.len() == 1, "{shown}");

    for tag in images.0.iter().filter(|t| t.starts_with("opschain-step:")) {
        let history = std::process::Command::new(DOCKER).args(["history", "--no-trunc", tag]).output().unwrap();
        let history = String::from_utf8_lossy(&history.stdout).to_string();
        assert!(history.contains("OPSCHAIN_BUILD_SECRETS_DIGEST=hmac-sha256:"), "{history}");
        for value in values {
            assert!(!history.contains(value), "{value} in {history}");
            assert!(saved_image_mentions(tag, value.as_bytes()).is_empty(), "{value} is in {tag}");
        }
    }
}
