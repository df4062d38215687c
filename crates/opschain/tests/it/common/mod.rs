//! Helpers shared by the controller's integration tests: the real binaries, copies of fixtures, tree
//! snapshots. The agent's tests have their own (`tests/it/common` at the repository's root); these
//! differ in where they find the agent, which is another package's binary here.
#![allow(dead_code)]

pub mod postgres;
pub mod schema;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace's root: the agent's package, where `fixtures/`, `schemas/` and `runner-image/` are.
pub fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// The agent binary (`opschain-runner`, the root package's), beside the `opschain` binary cargo
/// built for these tests. Cargo gives a test the path of its own package's binaries only, so the
/// agent is built here, once per test binary, with the same profile (a no-op when `cargo test
/// --workspace` has built it already).
pub fn runner_bin() -> &'static str {
    static AGENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    AGENT.get_or_init(|| {
        let dir = Path::new(env!("CARGO_BIN_EXE_opschain")).parent().unwrap();
        let mut build = Command::new(env!("CARGO"));
        build.current_dir(repo_root()).args(["build", "-q", "-p", "opschain-runner", "--bin", "opschain-runner"]);
        if dir.file_name().is_some_and(|profile| profile == "release") {
            build.arg("--release");
        }
        let output = build.output().unwrap_or_else(|e| panic!("cannot run cargo: {e}"));
        assert!(output.status.success(), "the agent did not build: {}", String::from_utf8_lossy(&output.stderr));
        dir.join("opschain-runner").to_str().unwrap().to_string()
    })
}

/// The agent binary, as a command.
pub fn runner() -> Command {
    Command::new(runner_bin())
}

/// The directory of the agent binary (to put on an action's PATH).
pub fn bin_dir() -> PathBuf {
    Path::new(runner_bin()).parent().unwrap().to_path_buf()
}

/// `fixtures/<name>` of this repo.
pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("fixtures").join(name)
}

/// Copies a directory tree, keeping symlinks as symlinks.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dst).unwrap();
        } else if kind.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// A temporary copy of `fixtures/<name>`.
pub fn fixture_copy(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&fixture(name), dir.path());
    dir
}

/// Every path under `root` with its kind, size and mode: compare two to see that nothing changed.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, (char, u64, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let kind = if meta.file_type().is_symlink() {
                'l'
            } else if meta.is_dir() {
                'd'
            } else {
                'f'
            };
            if kind == 'd' {
                stack.push(path.clone());
            }
            out.insert(path.strip_prefix(root).unwrap().to_path_buf(), (kind, meta.len(), meta.mode()));
        }
    }
    out
}

/// Runs the agent's `step` on `repo` with `args`, the agent's directory first on PATH; the result
/// it wrote, if any, must match `schemas/step_result.schema.json`.
pub fn run_step(repo: &Path, args: &[&str]) -> Output {
    let output =
        runner().arg("--repo").arg(repo).args(args).env("PATH", format!("{}:/usr/bin:/bin", bin_dir().display())).env_remove("OPSCHAIN_REPO_FOLDER").output().unwrap();
    for folder in [".opschain", ".mintpress"] {
        schema::check_result_file(&repo.join(folder).join("step_result.json"));
    }
    output
}

/// The stderr lines of an output.
pub fn stderr_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr).lines().map(str::to_string).collect()
}

/// The static agent, built once per test binary (scripts/test has usually built it already).
pub fn static_agent() -> &'static Result<PathBuf, String> {
    static AGENT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    AGENT.get_or_init(|| {
        let root = repo_root();
        let output = Command::new(env!("CARGO"))
            .current_dir(root)
            .args(["build", "--release", "--target", "x86_64-unknown-linux-musl", "-p", "opschain-runner", "--no-default-features", "--bin", "opschain-runner"])
            .output()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !output.status.success() {
            return Err(format!("the static agent did not build: {}", String::from_utf8_lossy(&output.stderr)));
        }
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
        Ok(target.join("x86_64-unknown-linux-musl/release/opschain-runner"))
    })
}

/// What a test that needs a tool the machine may lack (a Docker engine, cargo-fuzz) gets, or the
/// failure that says it is missing. Such a test is `#[ignore]`d, so a plain `cargo test` reports
/// it as ignored (a skip that shows) rather than as a pass; `scripts/test` runs it with
/// `--ignored` where it installed or found the tool, and there a missing tool fails it.
pub fn required<T, E: std::fmt::Display>(what: &str, found: Result<T, E>) -> T {
    found.unwrap_or_else(|why| panic!("this test needs {what}, which is missing: {why} (run it only where {what} is, as scripts/test does)"))
}

/// The last `max` bytes of `text` at most, cut at a character boundary (for a failure message
/// quoting the end of a long log).
pub fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// The seed's step context sample exactly as the seed page writes it, with its `...` elisions
/// (`fixtures/seed_sample/step_context.sample.txt`).
pub fn seed_sample_verbatim() -> String {
    std::fs::read_to_string(fixture("seed_sample/step_context.sample.txt")).unwrap()
}

/// The seed's sample made a JSON document ([`fill_elisions`]).
pub fn seed_sample_filled() -> String {
    fill_elisions(&seed_sample_verbatim())
}

/// Makes a sample JSON by touching its elisions only (see `fixtures/seed_sample/README.md`): a
/// `...` standing for a value becomes `null`, a `...` line standing for further members goes, and
/// the commas JSON needs go in.
pub fn fill_elisions(sample: &str) -> String {
    let lines: Vec<&str> = sample.lines().collect();
    let mut out: Vec<String> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() == "..." {
            let previous = out.last_mut().expect("an elided member follows another");
            assert_eq!(previous.pop(), Some(','), "the members before an elision end with a comma");
            continue;
        }
        if let Some(head) = line.strip_suffix("...,").or_else(|| line.strip_suffix("...")) {
            let next = lines[i + 1..].iter().map(|l| l.trim()).find(|l| !l.is_empty()).unwrap_or("}");
            out.push(format!("{head}null{}", if next.starts_with('}') { "" } else { "," }));
            continue;
        }
        out.push(line.to_string());
    }
    out.join("\n") + "\n"
}

/// The proptest configuration of these tests: `cases` cases, and the regression seeds in
/// `<test file>.proptest-regressions` beside the test's source file. (Proptest's default would
/// look beside the directory holding `main.rs`, in `tests/proptest-regressions/`.)
pub fn proptest_config(cases: u32) -> proptest::test_runner::Config {
    use proptest::test_runner::{Config, FileFailurePersistence};
    Config { failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))), ..Config::with_cases(cases) }
}

/// Runs `git ARGS` in `repo` as a test user (no signing, `main` as the default branch); asserts it
/// succeeded and returns its trimmed stdout.
pub fn git(repo: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com", "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false"])
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Makes project `project` and its environment `environment` in the state directory `state`
/// (each is kept when it exists): a change names a project and environment that exist.
pub fn make_target(state: &Path, project: &str, environment: &str) {
    for args in [&["project", "create", "--code", project][..], &["environment", "create", "--project-code", project, "--code", environment]] {
        let out = Command::new(env!("CARGO_BIN_EXE_opschain")).env("OPSCHAIN_STATE_DIR", state).args(args).output().unwrap();
        assert!(out.status.success(), "opschain {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// For `args` of `opschain change run` / `change create`: makes the project and environment
/// they name (`--project`/`-p`, `--environment`/`-e` and OpsChain's spellings), as
/// [`make_target`].
pub fn make_target_of(state: &Path, args: &[&str]) {
    if args.len() < 2 || args[0] != "change" || !matches!(args[1], "run" | "create") {
        return;
    }
    let value = |flags: &[&str]| args.windows(2).find(|w| flags.contains(&w[0])).map(|w| w[1]);
    if let (Some(p), Some(e)) = (value(&["--project", "--project-code", "-p"]), value(&["--environment", "--environment-code", "-e"])) {
        make_target(state, p, e);
    }
}
