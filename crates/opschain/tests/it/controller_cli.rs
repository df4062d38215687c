//! The `opschain` command line as OpsChain's users type it: each command the seeds and OpsChain's
//! CLI reference name, run through the real binary and compared with the same query made this
//! controller's other way; `.opschainrc` and `opschain_*` defaults; reads that never create; the
//! private directory of `edit-properties`; `dev create-dockerfile`; the exit statuses.

use std::os::unix::fs::PermissionsExt;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};

use crate::common;

/// `opschain` with its state in `state`, run in `cwd` with `home` as HOME and no `opschain_*`
/// variables (the machine's own defaults must not leak in).
fn opschain_in(state: &Path, cwd: &Path, home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_opschain"));
    c.current_dir(cwd)
        .env("HOME", home)
        .env("OPSCHAIN_STATE_DIR", state)
        .env("OPSCHAIN_RUNNER_BIN", crate::common::runner_bin())
        .env("OPSCHAIN_GRACE_SECS", "2")
        .env_remove("opschain_projectCode")
        .env_remove("opschain_environmentCode")
        .env_remove("OPSCHAIN_REPO_FOLDER")
        .env_remove("OPSCHAIN_BACKEND")
        .env_remove("VISUAL");
    c
}

/// A state directory, a working directory and a home directory of one test.
struct World {
    state: tempfile::TempDir,
    cwd: tempfile::TempDir,
    home: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        World { state: tempfile::tempdir().unwrap(), cwd: tempfile::tempdir().unwrap(), home: tempfile::tempdir().unwrap() }
    }

    fn cmd(&self) -> Command {
        opschain_in(self.state.path(), self.cwd.path(), self.home.path())
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Runs `args`, which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "opschain {args:?}: {}", common::status_and_streams(&out));
        String::from_utf8(out.stdout).unwrap()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `s` with every run of ASCII digits replaced by `#`: ids, times and durations differ between
/// two runs of the same change, nothing else may.
fn shape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_digits = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

#[test]
fn show_properties_of_the_seeds_prints_what_properties_show_prints() {
    let w = World::new();
    w.ok(&["properties", "set", "--project", "p", "--json", r#"{"app": {"replicas": 2}, "list": [1, 2]}"#]);
    w.ok(&["properties", "set", "--project", "p", "--json", r#"{"app": {"replicas": 3}}"#]);
    w.ok(&["properties", "set", "--project", "p", "--environment", "dev", "--json", r#"{"opschain": {"env": {"X": "1"}}}"#]);

    let ours = w.ok(&["properties", "show", "--project", "p"]);
    assert_eq!(serde_json::from_str::<Value>(&ours).unwrap(), json!({"app": {"replicas": 3}}));
    assert_eq!(w.ok(&["project", "show-properties", "--project-code", "p"]), ours);
    assert_eq!(w.ok(&["project", "show-properties", "-p", "p"]), ours);

    let ours = w.ok(&["properties", "show", "--project", "p", "--environment", "dev"]);
    assert_eq!(serde_json::from_str::<Value>(&ours).unwrap(), json!({"opschain": {"env": {"X": "1"}}}));
    assert_eq!(w.ok(&["environment", "show-properties", "--project-code", "p", "--environment-code", "dev"]), ours);
    assert_eq!(w.ok(&["environment", "show-properties", "-p", "p", "-e", "dev"]), ours);

    let ours = w.ok(&["properties", "show", "--project", "p", "--version", "1"]);
    assert_eq!(serde_json::from_str::<Value>(&ours).unwrap(), json!({"app": {"replicas": 2}, "list": [1, 2]}));
    assert_eq!(w.ok(&["project", "show-properties", "-p", "p", "--version", "1"]), ours);
}

#[test]
fn set_and_edit_properties_of_opschain_store_what_ours_store() {
    let w = World::new();
    let file = w.cwd.path().join("props.json");
    std::fs::write(&file, r#"{"basic_prop": "some value", "parent_prop": {"nested_prop": "x"}}"#).unwrap();
    let file = file.to_str().unwrap();

    // The OpsChain way on project a, ours on project b: same documents, same versions.
    w.ok(&["project", "set-properties", "--project-code", "a", "--file-path", file, "--confirm"]);
    w.ok(&["properties", "set", "--project", "b", file]);
    w.ok(&["environment", "set-properties", "-p", "a", "-e", "dev", "-f", file, "-y"]);
    w.ok(&["properties", "set", "--project", "b", "--environment", "dev", file]);
    let edit = |args: &[&str]| {
        let out = w.cmd().args(args).env("EDITOR", "sed -i s/some/edited/").output().unwrap();
        assert!(out.status.success(), "{}", common::status_and_streams(&out));
    };
    edit(&["project", "edit-properties", "-p", "a"]);
    edit(&["properties", "edit", "--project", "b"]);
    edit(&["environment", "edit-properties", "--project-code", "a", "--environment-code", "dev"]);
    edit(&["properties", "edit", "--project", "b", "--environment", "dev"]);

    let a = w.ok(&["project", "show-properties", "-p", "a"]);
    assert_eq!(serde_json::from_str::<Value>(&a).unwrap(), json!({"basic_prop": "edited value", "parent_prop": {"nested_prop": "x"}}));
    assert_eq!(a, w.ok(&["properties", "show", "--project", "b"]));
    assert_eq!(w.ok(&["environment", "show-properties", "-p", "a", "-e", "dev"]), w.ok(&["properties", "show", "--project", "b", "--environment", "dev"]));
    let versions = |p: &str| {
        w.ok(&["properties", "history", "--project", p, "--environment", "dev"]).lines().map(|l| l.split_whitespace().next().unwrap().to_string()).collect::<Vec<_>>()
    };
    assert_eq!(versions("a"), ["v0", "v1", "v2"]);
    assert_eq!(versions("a"), versions("b"));
}

const HELLO: &str = r#"
[actions.hello]
steps = ["world"]

[actions.world]
run = "echo hello from $OPSCHAIN_REPO_FOLDER; opschain-runner property set --environment --json greeted true"
"#;

#[test]
fn change_create_runs_what_change_run_runs_and_the_change_commands_take_both_spellings() {
    let w = World::new();
    let project = common::action_repo(HELLO);
    for env in ["ours", "theirs"] {
        common::make_target(w.state.path(), "p", env);
    }
    // Ours: --repo, --project, --environment. OpsChain's: the working directory, -p, -e, -a,
    // --git-rev, --confirm.
    let run = w.run(&["change", "run", "--repo", project.path().to_str().unwrap(), "--project", "p", "--environment", "ours", "--action", "hello"]);
    assert!(run.status.success(), "{}", common::status_and_streams(&run));
    let create = opschain_in(w.state.path(), project.path(), w.home.path())
        .args(["change", "create", "--project-code", "p", "--environment-code", "theirs", "--action", "hello", "--git-rev", "HEAD", "--confirm"])
        .output()
        .unwrap();
    assert!(create.status.success(), "{}", common::status_and_streams(&create));
    // The same lines; the agent's stdout and stderr are two pipes, so their lines may interleave
    // differently from one run to the next.
    let lines = |out: &[u8]| {
        let mut lines: Vec<String> = shape(&String::from_utf8_lossy(out)).replace("theirs", "ours").lines().map(String::from).collect();
        lines.sort();
        lines
    };
    assert_eq!(lines(&create.stdout), lines(&run.stdout));

    // The same change, shown and logged both ways.
    let show = w.ok(&["change", "show", "2"]);
    assert_eq!(w.ok(&["change", "show", "--change-id", "2"]), show);
    assert_eq!(w.ok(&["change", "show", "-c", "2"]), show);
    assert!(show.contains("environment theirs, action hello") && show.contains("[world] success"), "{show}");
    assert_eq!(shape(&show).replace("theirs", "ours"), shape(&w.ok(&["change", "show", "1"])));
    let logs = w.ok(&["change", "show-logs", "-c", "2"]);
    assert_eq!(w.ok(&["change", "logs", "2"]), logs);
    assert!(logs.contains("hello from"), "{logs}");
    assert_eq!(lines(logs.as_bytes()), lines(w.ok(&["change", "logs", "1"]).as_bytes()));
    let env = |e: &str| serde_json::from_str::<Value>(&w.ok(&["environment", "show-properties", "-p", "p", "-e", e])).unwrap();
    assert_eq!(env("theirs"), json!({"greeted": true}));
    assert_eq!(env("theirs"), env("ours"));

    // Lists: `ls` is `list`; codes filter.
    let all = w.ok(&["change", "ls"]);
    assert_eq!(w.ok(&["change", "list"]), all);
    assert_eq!(all.lines().count(), 3, "{all}");
    let theirs = w.ok(&["change", "ls", "-p", "p", "-e", "theirs"]);
    assert_eq!(theirs.lines().count(), 2, "{theirs}");
    assert!(theirs.lines().nth(1).unwrap().trim_start().starts_with("2 "), "{theirs}");
    let envs = w.ok(&["environment", "ls", "--project-code", "p"]);
    assert_eq!(w.ok(&["environment", "list", "-p", "p"]), envs);
    let codes: Vec<&str> = envs.lines().skip(1).map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(codes, ["ours", "theirs"]);
    let projects = w.ok(&["project", "ls"]);
    assert_eq!(w.ok(&["project", "list"]), projects);
    let row: Vec<&str> = projects.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..4], ["p", "2", "2", "no"], "{projects}");

    // Without --repo, the working directory must be a project's repository.
    let out = w.run(&["change", "create", "-p", "p", "-e", "ours", "-a", "hello"]);
    assert_eq!(out.status.code(), Some(66), "{}", common::status_and_streams(&out));
    assert!(stderr(&out).contains("has no .opschain folder"), "{}", common::status_and_streams(&out));

    // `-a ''` is OpsChain's `default` action.
    let out = w.run(&["change", "create", "--repo", project.path().to_str().unwrap(), "-p", "p", "-e", "ours", "-a", ""]);
    assert_eq!(out.status.code(), Some(1), "no action `default` here: the change errors\n{}", common::status_and_streams(&out));
    assert!(w.ok(&["change", "show", "3"]).contains("[default] error"));
}

#[test]
fn opschainrc_and_variables_supply_the_codes_and_flags_win() {
    let w = World::new();
    w.ok(&["properties", "set", "--project", "p", "--json", r#"{"from": "p"}"#]);
    w.ok(&["properties", "set", "--project", "q", "--json", r#"{"from": "q"}"#]);
    w.ok(&["properties", "set", "--project", "p", "--environment", "dev", "--json", r#"{"from": "p/dev"}"#]);
    w.ok(&["properties", "set", "--project", "q", "--environment", "dev", "--json", r#"{"from": "q/dev"}"#]);
    w.ok(&["properties", "set", "--project", "q", "--environment", "prod", "--json", r#"{"from": "q/prod"}"#]);
    let from = |o: &Output| {
        assert!(o.status.success(), "{}", common::status_and_streams(o));
        serde_json::from_slice::<Value>(&o.stdout).unwrap()["from"].as_str().unwrap().to_string()
    };

    // The home directory's file, with keys of OpsChain's API client beside the codes.
    let home_rc = w.home.path().join(".opschainrc");
    std::fs::write(&home_rc, r#"{"apiBaseUrl": "http://localhost:3000", "username": "u", "password": "p", "projectCode": "p", "environmentCode": "dev"}"#).unwrap();
    let out = w.run(&["environment", "show-properties"]);
    assert_eq!(from(&out), "p/dev");
    let said = stderr(&out);
    assert!(said.contains(&format!("project code \"p\" from {}", home_rc.display())), "{said}");
    assert!(said.contains(&format!("environment code \"dev\" from {}", home_rc.display())), "{said}");
    assert_eq!(w.ok(&["environment", "show-properties"]), w.ok(&["environment", "show-properties", "-p", "p", "-e", "dev"]));

    // The working directory's file wins over the home directory's, whole.
    let cwd_rc = w.cwd.path().join(".opschainrc");
    std::fs::write(&cwd_rc, r#"{"projectCode": "q"}"#).unwrap();
    let out = w.run(&["project", "show-properties"]);
    assert_eq!(from(&out), "q");
    assert!(stderr(&out).contains(&format!("project code \"q\" from {}", cwd_rc.display())), "{}", common::status_and_streams(&out));
    let out = w.run(&["environment", "show-properties"]);
    assert_eq!(out.status.code(), Some(64), "the working directory's file has no environmentCode: {}", common::status_and_streams(&out));
    assert!(stderr(&out).contains("no environment code") && stderr(&out).contains("opschain_environmentCode"), "{}", common::status_and_streams(&out));
    let out = w.run(&["environment", "ls"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().skip(1).map(|l| l.split_whitespace().next().unwrap()).collect::<Vec<_>>(), ["dev", "prod"]);

    // The variables win over the file; flags win over both.
    let with_vars = |args: &[&str]| w.cmd().args(args).env("opschain_projectCode", "q").env("opschain_environmentCode", "prod").output().unwrap();
    std::fs::write(&cwd_rc, r#"{"projectCode": "p", "environmentCode": "dev"}"#).unwrap();
    let out = with_vars(&["environment", "show-properties"]);
    assert_eq!(from(&out), "q/prod");
    assert!(stderr(&out).contains("project code \"q\" from $opschain_projectCode"), "{}", common::status_and_streams(&out));
    assert_eq!(from(&with_vars(&["environment", "show-properties", "-e", "dev"])), "q/dev");
    let out = with_vars(&["environment", "show-properties", "--project-code", "p", "--environment-code", "dev"]);
    assert_eq!(from(&out), "p/dev");
    assert!(stderr(&out).is_empty(), "no default was used: {}", common::status_and_streams(&out));

    // `properties` takes the project code by default but never the environment's: its absence
    // selects the project's own properties.
    assert_eq!(from(&w.run(&["properties", "show"])), "p");

    // A bad file is refused, naming the file and the key, only when a code is needed from it.
    std::fs::write(&cwd_rc, r#"{"projectCode": 7}"#).unwrap();
    let out = w.run(&["project", "show-properties"]);
    assert_eq!(out.status.code(), Some(65), "{}", common::status_and_streams(&out));
    assert!(stderr(&out).contains(".opschainrc") && stderr(&out).contains("/projectCode"), "{}", common::status_and_streams(&out));
    assert_eq!(from(&w.run(&["project", "show-properties", "-p", "q"])), "q");
}

#[test]
fn reads_never_create_a_project_or_environment_and_unknown_codes_are_errors() {
    let w = World::new();
    let no_editor = w.cwd.path().join("editor-ran");
    for args in [
        &["properties", "show", "--project", "typo"][..],
        &["properties", "history", "--project", "typo"],
        &["properties", "show", "--project", "typo", "--environment", "dev"],
        &["project", "show-properties", "--project-code", "typo"],
        &["environment", "show-properties", "-p", "typo", "-e", "dev"],
        &["project", "edit-properties", "-p", "typo"],
        &["environment", "ls", "-p", "typo"],
        &["change", "ls", "-p", "typo"],
    ] {
        let out = w.cmd().args(args).env("EDITOR", format!("touch {}", no_editor.display())).output().unwrap();
        assert_eq!(out.status.code(), Some(66), "{args:?}: {}", common::status_and_streams(&out));
        assert!(stderr(&out).contains("project \"typo\" does not exist"), "{args:?}: {}", common::status_and_streams(&out));
    }
    assert!(!no_editor.exists(), "the editor ran for a project that does not exist");
    assert_eq!(w.ok(&["project", "ls"]).lines().count(), 1, "a read created a project");

    w.ok(&["project", "create", "--code", "p"]);
    for args in [
        &["properties", "show", "--project", "p", "--environment", "typo"][..],
        &["properties", "history", "--project", "p", "--environment", "typo"],
        &["environment", "show-properties", "--project-code", "p", "--environment-code", "typo"],
        &["environment", "edit-properties", "-p", "p", "-e", "typo"],
        &["change", "ls", "-p", "p", "-e", "typo"],
    ] {
        let out = w.cmd().args(args).env("EDITOR", format!("touch {}", no_editor.display())).output().unwrap();
        assert_eq!(out.status.code(), Some(66), "{args:?}: {}", common::status_and_streams(&out));
        assert!(stderr(&out).contains("environment \"typo\" of project \"p\" does not exist"), "{args:?}: {}", common::status_and_streams(&out));
    }
    assert!(!no_editor.exists());
    assert_eq!(w.ok(&["environment", "ls", "-p", "p"]).lines().count(), 1, "a read created an environment");
    assert_eq!(w.ok(&["project", "show-properties", "-p", "p"]).trim(), "{}");

    // Writes create what they name, and say so.
    let out = w.run(&["environment", "set-properties", "-p", "p", "-e", "dev", "--json", "{}"]);
    assert!(out.status.success() && stderr(&out).contains("environment \"dev\" created"), "{}", common::status_and_streams(&out));
    w.ok(&["environment", "create", "-p", "p", "--code", "prod"]);
    let envs: Vec<String> = w.ok(&["environment", "ls", "-p", "p"]).lines().skip(1).map(|l| l.split_whitespace().next().unwrap().to_string()).collect();
    assert_eq!(envs, ["dev", "prod"]);
}

#[test]
fn edit_properties_works_in_a_private_temporary_directory() {
    let w = World::new();
    let tmp = tempfile::tempdir().unwrap();
    let seen = w.cwd.path().join("seen");
    // The editor records the directory it was given and its mode, the file's mode and whether it
    // is a symlink, then edits the file.
    let editor = w.cwd.path().join("editor.sh");
    std::fs::write(
        &editor,
        format!(
            "#!/bin/sh\nd=$(dirname \"$1\")\n{{ echo \"$d\"; stat -c %a \"$d\"; stat -c %a \"$1\"; test -L \"$1\" && echo link || echo file; }} > {}\nsed -i s/1/2/ \"$1\"\n",
            seen.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&editor, std::fs::Permissions::from_mode(0o755)).unwrap();
    w.ok(&["properties", "set", "--project", "p", "--json", r#"{"a": 1}"#]);

    for _ in 0..2 {
        let out = w.cmd().args(["properties", "edit", "--project", "p"]).env("EDITOR", &editor).env("TMPDIR", tmp.path()).output().unwrap();
        assert!(out.status.success(), "{}", common::status_and_streams(&out));
    }
    let seen = std::fs::read_to_string(&seen).unwrap();
    let lines: Vec<&str> = seen.lines().collect();
    let dir = Path::new(lines[0]);
    assert_eq!(dir.parent(), Some(tmp.path()), "{seen}");
    let name = dir.file_name().unwrap().to_str().unwrap();
    let suffix = name.strip_prefix("opschain-edit-").unwrap_or_else(|| panic!("{name}"));
    assert!(suffix.len() >= 6 && suffix.parse::<u32>().is_err(), "a predictable name (a pid?): {name}");
    assert_eq!(&lines[1..], ["700", "600", "file"], "{seen}");
    assert!(!dir.exists(), "the directory is removed after the edit");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    assert_eq!(serde_json::from_str::<Value>(&w.ok(&["properties", "show", "--project", "p"])).unwrap(), json!({"a": 2}));
}

#[test]
fn dev_create_dockerfile_writes_the_default_dockerfile_and_keeps_an_existing_one() {
    let w = World::new();
    let project = common::action_repo(HELLO);
    let default = Command::new(crate::common::runner_bin()).arg("create-dockerfile").output().unwrap();
    assert!(default.status.success());
    let dockerfile = project.path().join(".opschain/Dockerfile");
    let create = |args: &[&str]| opschain_in(w.state.path(), project.path(), w.home.path()).args(["dev", "create-dockerfile"]).args(args).output().unwrap();

    let out = create(&[]);
    assert!(out.status.success(), "{}", common::status_and_streams(&out));
    assert_eq!(std::fs::read(&dockerfile).unwrap(), default.stdout, "the Dockerfile is the default one opschain-runner prints");
    assert!(!w.state.path().join("opschain.db").exists(), "dev create-dockerfile touches no state");

    std::fs::write(&dockerfile, "FROM custom\n").unwrap();
    let out = create(&[]);
    assert_eq!(out.status.code(), Some(73), "{}", common::status_and_streams(&out));
    assert!(stderr(&out).contains("--force"), "{}", common::status_and_streams(&out));
    assert_eq!(std::fs::read_to_string(&dockerfile).unwrap(), "FROM custom\n");
    let out = create(&["--force"]);
    assert!(out.status.success(), "{}", common::status_and_streams(&out));
    assert_eq!(std::fs::read(&dockerfile).unwrap(), default.stdout);

    // A symlink in its place is never written through.
    let target = w.cwd.path().join("elsewhere");
    std::fs::write(&target, "untouched").unwrap();
    std::fs::remove_file(&dockerfile).unwrap();
    std::os::unix::fs::symlink(&target, &dockerfile).unwrap();
    assert_eq!(create(&[]).status.code(), Some(73));
    assert!(create(&["--force"]).status.success());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
    assert!(!std::fs::symlink_metadata(&dockerfile).unwrap().file_type().is_symlink());

    // The folder in use: --folder, or OPSCHAIN_REPO_FOLDER; created when missing.
    let out = opschain_in(w.state.path(), w.cwd.path(), w.home.path())
        .args(["dev", "create-dockerfile", "--repo", project.path().to_str().unwrap()])
        .env("OPSCHAIN_REPO_FOLDER", ".mintpress")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::status_and_streams(&out));
    let mintpress = Command::new(crate::common::runner_bin()).args(["--folder", ".mintpress", "create-dockerfile"]).output().unwrap();
    assert!(mintpress.status.success());
    assert_eq!(std::fs::read(project.path().join(".mintpress/Dockerfile")).unwrap(), mintpress.stdout, "the MintPress form of the default Dockerfile");
}

#[test]
fn exit_statuses_tell_the_controllers_own_failures_from_a_changes_end() {
    let w = World::new();
    let status = |o: Output| (o.status.code(), common::status_and_streams(&o));
    // 64: the command line.
    assert_eq!(status(w.run(&["change", "frobnicate"])).0, Some(64));
    assert_eq!(status(w.run(&["project", "show-properties"])).0, Some(64));
    assert_eq!(status(w.run(&["change", "show"])).0, Some(64));
    assert_eq!(status(w.run(&["--help"])).0, Some(0));
    // 65: invalid input.
    w.ok(&["project", "create", "--code", "p"]);
    w.ok(&["environment", "create", "-p", "p", "--code", "dev"]);
    assert_eq!(status(w.run(&["project", "set-properties", "-p", "p", "--json", "[1]"])).0, Some(65));
    assert_eq!(status(w.run(&["project", "set-properties", "-p", "p", "--json", "{"])).0, Some(65));
    let bad = w.cwd.path().join("bad.json");
    std::fs::write(&bad, r#"{"A": 1}"#).unwrap();
    assert_eq!(status(w.run(&["secrets", "set", "s", "--file", bad.to_str().unwrap()])).0, Some(65));
    // 66: what is named does not exist.
    assert_eq!(status(w.run(&["change", "show", "9"])).0, Some(66));
    assert_eq!(status(w.run(&["change", "retry", "9"])).0, Some(66));
    assert_eq!(status(w.run(&["project", "set-properties", "-p", "p", "-f", "/nonexistent.json"])).0, Some(66));
    assert_eq!(status(w.run(&["secrets", "set", "s", "--file", "/nonexistent.json"])).0, Some(66));
    let project = common::action_repo(HELLO);
    let repo_arg = project.path().to_str().unwrap();
    assert_eq!(status(w.run(&["change", "create", "--repo", repo_arg, "-p", "p", "-e", "dev", "-a", "hello", "--secrets", "none"])).0, Some(66));
    // 70: the controller itself failed: no agent, or a state directory that is a file.
    let (code, out) =
        status(w.cmd().args(["change", "create", "--repo", repo_arg, "-p", "p", "-e", "dev", "-a", "hello"]).env("OPSCHAIN_RUNNER_BIN", "/nonexistent").output().unwrap());
    assert_eq!(code, Some(70), "{out}");
    let file = w.cwd.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let (code, out) = status(w.cmd().args(["project", "ls"]).env("OPSCHAIN_STATE_DIR", &file).output().unwrap());
    assert_eq!(code, Some(70), "{out}");
    // 0, 1: how the change ended (2, cancelled, is tests/it/controller.rs's cancel test).
    let failing = common::action_repo("[actions.fail]\nrun = \"exit 3\"\n");
    assert_eq!(status(w.run(&["change", "create", "--repo", repo_arg, "-p", "p", "-e", "dev", "-a", "hello"])).0, Some(0));
    assert_eq!(status(w.run(&["change", "create", "--repo", failing.path().to_str().unwrap(), "-p", "p", "-e", "dev", "-a", "fail"])).0, Some(1));
}

#[test]
fn help_shows_opschain_names_with_ours_as_aliases() {
    let w = World::new();
    let help = |args: &[&str]| w.ok(&[args, &["--help"]].concat());
    let change = help(&["change"]);
    for (name, alias) in [("create", "[alias: run]"), ("list", "[alias: ls]"), ("show-logs", "[alias: logs]")] {
        let line = change.lines().find(|l| l.trim_start().starts_with(name)).unwrap_or_else(|| panic!("no {name} in\n{change}"));
        assert!(line.ends_with(alias), "{line}");
    }
    let create = help(&["change", "create"]);
    for flag in ["-p, --project-code", "[alias: --project]", "-e, --environment-code", "[alias: --environment]", "-a, --action", "-g, --git-rev", "-y, --confirm"] {
        assert!(create.contains(flag), "no {flag} in\n{create}");
    }
    assert!(help(&["environment", "show-properties"]).contains("opschain_environmentCode"));
    assert!(help(&[]).contains("70  the controller itself failed"));
    for group in [&["project"][..], &["environment"]] {
        let text = help(group);
        for cmd in ["show-properties", "set-properties", "edit-properties", "list", "create"] {
            assert!(text.contains(cmd), "no {cmd} in\n{text}");
        }
    }
    assert!(help(&["dev"]).contains("create-dockerfile"));
}

#[test]
fn git_remote_name_runs_the_remote_branch_as_fetched_not_the_stale_local_one() {
    let w = World::new();
    let upstream = common::action_repo(HELLO);
    let git = |dir: &Path, args: &[&str]| {
        let out = Command::new("git").arg("-C").arg(dir).args(["-c", "user.name=t", "-c", "user.email=t@t"]).args(args).output().unwrap();
        assert!(out.status.success(), "git {args:?}: {}", common::status_and_streams(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let branch = git(upstream.path(), &["rev-parse", "--abbrev-ref", "HEAD"]);
    let clone = tempfile::tempdir().unwrap();
    let local = clone.path().join("local");
    git(clone.path(), &["clone", "-q", upstream.path().to_str().unwrap(), "local"]);
    let old = git(&local, &["rev-parse", "HEAD"]);
    // A commit the local clone has not fetched yet.
    std::fs::write(upstream.path().join(".opschain/actions.toml"), HELLO.replace("greeted", "greeted_again")).unwrap();
    git(upstream.path(), &["commit", "-q", "-am", "again"]);
    let new = git(upstream.path(), &["rev-parse", "HEAD"]);
    assert_ne!(old, new);

    // OpsChain's documented form, run as written from the repository.
    common::make_target(w.state.path(), "p", "dev");
    let out = opschain_in(w.state.path(), &local, w.home.path())
        .args(["change", "create", "--project-code", "p", "--environment-code", "dev", "--git-remote-name", "origin", "--git-rev", &branch])
        .args(["--action", "hello", "--follow-logs", "--confirm"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::status_and_streams(&out));
    let show = w.ok(&["change", "show", "1"]);
    assert!(show.contains(&format!("commit {new} (origin/{branch})")), "the fetched commit {new} runs:\n{show}");
    assert_eq!(serde_json::from_str::<Value>(&w.ok(&["environment", "show-properties", "-p", "p", "-e", "dev"])).unwrap(), json!({"greeted_again": true}));
    // Without the remote, the local branch (not fetched into) is what runs.
    w.ok(&["change", "create", "--repo", local.to_str().unwrap(), "-p", "p", "-e", "dev", "-g", &branch, "-a", "hello"]);
    assert!(w.ok(&["change", "show", "2"]).contains(&format!("commit {old} ({branch})")));

    // A commit is taken as it is; an unknown remote is an error naming the known ones.
    let out = w.run(&["change", "create", "--repo", local.to_str().unwrap(), "-p", "p", "-e", "dev", "-G", "origin", "-g", &old, "-a", "hello"]);
    assert!(out.status.success(), "{}", common::status_and_streams(&out));
    assert!(w.ok(&["change", "show", "3"]).contains(&format!("commit {old} ({old})")));
    let out = w.run(&["change", "create", "--repo", local.to_str().unwrap(), "-p", "p", "-e", "dev", "-G", "upstream", "-a", "hello"]);
    assert_eq!(out.status.code(), Some(66), "{}", common::status_and_streams(&out));
    assert!(stderr(&out).contains("git remote \"upstream\"") && stderr(&out).contains("known: origin"), "{}", common::status_and_streams(&out));
}
