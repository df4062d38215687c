//! A new user's first hour with `opschain`, through the real binary: a failure names its cause,
//! a typo creates nothing, a closed pipe is no crash, user errors exit 64/65/66 and leave
//! nothing behind, the output is quiet, uncommitted edits are named, OpsChain's CLI parts
//! (`--metadata-path`, `-o json`, `show-properties --change-id`, `.opschainrc` in INI) work, and
//! the Docker backend's missing base image says how to build it.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::common;

/// A state directory, a working directory and a home directory of one test, and `opschain`
/// run with them and none of the machine's own defaults.
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
        let mut c = Command::new(env!("CARGO_BIN_EXE_opschain"));
        c.current_dir(self.cwd.path())
            .env("HOME", self.home.path())
            .env("OPSCHAIN_STATE_DIR", self.state.path())
            .env("OPSCHAIN_RUNNER_BIN", common::runner_bin())
            .env("OPSCHAIN_GRACE_SECS", "2")
            .env_remove("opschain_projectCode")
            .env_remove("opschain_environmentCode")
            .env_remove("OPSCHAIN_REPO_FOLDER")
            .env_remove("OPSCHAIN_BACKEND")
            .env_remove("OPSCHAIN_DOCKER_BASE_IMAGE")
            .env_remove("VISUAL")
            .env_remove("EDITOR");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Runs `args`, which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "opschain {args:?}: {}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Project `p` with environment `dev`.
    fn project(&self) {
        self.ok(&["project", "create", "--code", "p"]);
        self.ok(&["environment", "create", "-p", "p", "--code", "dev"]);
    }

    /// Whether the state directory holds a file or directory whose path contains `part`.
    fn state_has(&self, part: &str) -> Vec<String> {
        let mut found = Vec::new();
        let mut dirs = vec![self.state.path().to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.to_string_lossy().contains(part) {
                    found.push(path.display().to_string());
                }
                if entry.file_type().is_ok_and(|t| t.is_dir()) && !path.ends_with(".git") {
                    dirs.push(path);
                }
            }
        }
        found
    }
}

fn text(o: &Output) -> String {
    format!("{}\n--- stdout\n{}\n--- stderr\n{}", o.status, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git").arg("-C").arg(dir).args(["-c", "user.name=t", "-c", "user.email=t@t"]).args(args).status().unwrap().success();
    assert!(ok, "git {args:?}");
}

/// A git repository with `.opschain/actions.toml` = `actions` (and the other files given),
/// committed.
fn repo(actions: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(".opschain")).unwrap();
    std::fs::write(dir.path().join(".opschain/actions.toml"), actions).unwrap();
    for (path, content) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    git(dir.path(), &["init", "-q"]);
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-q", "-m", "init"]);
    dir
}

const ACTIONS: &str = r#"
[actions.hello]
run = "echo hello from the action"

[actions.fail]
run = "echo working; echo the disk is full >&2; exit 3"
"#;

#[test]
fn a_failure_names_its_cause_at_the_end_in_change_show_and_in_change_ls() {
    let w = World::new();
    w.project();
    let r = repo(ACTIONS, &[]);
    let dir = r.path().to_str().unwrap();
    let typo = w.run(&["change", "create", "-p", "p", "-e", "dev", "-a", "helo", "--repo", dir]);
    assert_eq!(typo.status.code(), Some(1), "{}", text(&typo));
    let cause = r#"no action named "helo" (defined: hello, fail)"#;
    let last = stdout(&typo).lines().last().unwrap_or_default().to_string();
    assert!(last.contains("error") && last.contains(cause), "the last line names the cause: {}", text(&typo));
    assert!(!last.contains("no step result"), "{last}");

    let failed = w.run(&["change", "create", "-p", "p", "-e", "dev", "-a", "fail", "--repo", dir]);
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    assert!(stdout(&failed).lines().last().unwrap().contains("the disk is full"), "{}", text(&failed));

    let show = w.ok(&["change", "show", "1"]);
    assert!(show.lines().next().unwrap().contains(cause), "change show's first line: {show}");
    assert!(w.ok(&["change", "show", "2"]).lines().next().unwrap().contains("the disk is full"));
    let ls = w.ok(&["change", "ls"]);
    let row = |id: &str| ls.lines().find(|l| l.split_whitespace().next() == Some(id)).unwrap_or_default().to_string();
    assert!(row("1").contains(cause), "{ls}");
    assert!(row("2").contains("the disk is full"), "{ls}");

    // A property the agent refuses is named the same way.
    let props = repo(ACTIONS, &[(".opschain/properties.json", r#"{"opschain": {"env": {"PORT": 8080}}}"#)]);
    let refused = w.run(&["change", "create", "-p", "p", "-e", "dev", "-a", "hello", "--repo", props.path().to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(w.ok(&["change", "show", "3"]).lines().next().unwrap().contains("value of PORT must be a string, not a number"));
}

#[test]
fn a_typo_in_a_code_creates_nothing_and_suggests_the_code_meant() {
    let w = World::new();
    w.ok(&["project", "create", "--code", "mine"]);
    w.ok(&["environment", "create", "-p", "mine", "--code", "dev"]);
    let r = repo(ACTIONS, &[]);
    let dir = r.path().to_str().unwrap();

    let out = w.run(&["change", "create", "-p", "mnie", "-e", "dev", "-a", "hello", "--repo", dir, "-y"]);
    assert_eq!(out.status.code(), Some(66), "{}", text(&out));
    let err = stderr(&out);
    for part in [r#"project "mnie" does not exist"#, "known: mine", "did you mean mine?", "opschain project create --code mnie"] {
        assert!(err.contains(part), "{part:?} in {err}");
    }
    let out = w.run(&["change", "create", "-p", "mine", "-e", "dve", "-a", "hello", "--repo", dir]);
    assert_eq!(out.status.code(), Some(66), "{}", text(&out));
    assert!(stderr(&out).contains("did you mean dev?"), "{}", text(&out));
    assert!(stderr(&out).contains("opschain environment create -p mine --code dve"), "{}", text(&out));
    let projects = w.ok(&["project", "ls"]);
    assert!(!projects.contains("mnie"), "{projects}");
    assert!(w.ok(&["change", "ls"]).lines().count() == 1, "no change was made");
    assert!(w.state_has("repos/").is_empty(), "nothing was snapshotted: {:?}", w.state_has("repos/"));

    // An archived project or environment takes no change; restored, it does.
    w.ok(&["environment", "archive", "-p", "mine", "--code", "dev"]);
    let out = w.run(&["change", "create", "-p", "mine", "-e", "dev", "-a", "hello", "--repo", dir]);
    assert_eq!(out.status.code(), Some(65), "{}", text(&out));
    assert!(stderr(&out).contains("opschain environment unarchive -p mine --code dev"), "{}", text(&out));
    w.ok(&["environment", "unarchive", "-p", "mine", "--code", "dev"]);
    w.ok(&["project", "archive", "--code", "mine"]);
    assert_eq!(w.run(&["change", "create", "-p", "mine", "-e", "dev", "-a", "hello", "--repo", dir]).status.code(), Some(65));
    assert!(w.ok(&["project", "ls"]).lines().any(|l| l.starts_with("mine") && l.contains("yes")));
    w.ok(&["project", "unarchive", "--code", "mine"]);
    w.ok(&["change", "create", "-p", "mine", "-e", "dev", "-a", "hello", "--repo", dir]);

    // What had changes can only be archived; what had none is deleted, properties and all.
    let out = w.run(&["environment", "delete", "-p", "mine", "--code", "dev"]);
    assert_eq!(out.status.code(), Some(65), "{}", text(&out));
    assert!(stderr(&out).contains("archive"), "{}", text(&out));
    w.ok(&["environment", "set-properties", "-p", "mine", "-e", "staging", "--json", r#"{"a": 1}"#]);
    w.ok(&["environment", "delete", "-p", "mine", "--code", "staging"]);
    assert_eq!(w.run(&["environment", "show-properties", "-p", "mine", "-e", "staging"]).status.code(), Some(66));
    w.ok(&["project", "set-properties", "-p", "spare", "--json", "{}"]);
    w.ok(&["project", "delete", "--code", "spare"]);
    assert!(!w.ok(&["project", "ls"]).contains("spare"));
    assert_eq!(w.run(&["project", "delete", "--code", "mine"]).status.code(), Some(65));
}

/// Runs `opschain args` with its stdout a pipe whose reading end is already closed (as after
/// `| head -1` has read its line); returns how it ended.
fn closed_pipe(w: &World, args: &[&str]) -> Output {
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    w.cmd().args(args).env("EDITOR", "true").stdout(Stdio::from(write)).stderr(Stdio::piped()).output().unwrap()
}

#[test]
fn no_command_panics_on_a_closed_pipe() {
    let w = World::new();
    w.project();
    let r = repo(ACTIONS, &[]);
    let dir = r.path().to_str().unwrap();
    // Enough history that every list has more lines than one write.
    for i in 0..3 {
        w.ok(&["project", "set-properties", "-p", "p", "--json", &format!(r#"{{"v": {i}}}"#)]);
        w.ok(&["change", "create", "-p", "p", "-e", "dev", "-a", "hello", "--repo", dir]);
    }
    w.run(&["change", "create", "-p", "p", "-e", "dev", "-a", "fail", "--repo", dir]);
    let secrets = w.cwd.path().join("s.json");
    std::fs::write(&secrets, r#"{"TOKEN": "a-long-enough-secret"}"#).unwrap();
    let secrets = secrets.to_str().unwrap();
    let fixture = common_fixture_demo();
    // Every subcommand, and the exit status it has when its output is read.
    let commands: &[(&[&str], i32)] = &[
        (&["--help"], 0),
        (&["--version"], 0),
        (&["change", "--help"], 0),
        (&["change", "create", "-p", "p", "-e", "dev", "-a", "hello", "--repo", dir], 0),
        (&["change", "ls"], 0),
        (&["change", "show", "1"], 0),
        (&["change", "show-logs", "1"], 0),
        (&["change", "show-logs", "1", "--follow"], 0),
        (&["change", "retry", "4"], 1),
        (&["change", "cancel", "1"], 0),
        (&["change", "show-properties", "1"], 0),
        (&["change", "ls", "-o", "json"], 0),
        (&["change", "show", "1", "-o", "json"], 0),
        (&["change", "show-logs", "1", "-o", "json"], 0),
        (&["project", "ls"], 0),
        (&["project", "create", "--code", "q"], 0),
        (&["project", "show-properties", "-p", "p"], 0),
        (&["project", "set-properties", "-p", "p", "--json", "{}"], 0),
        (&["project", "edit-properties", "-p", "p"], 0),
        (&["project", "allow-parallel-changes", "p", "true"], 0),
        (&["project", "archive", "--code", "q"], 0),
        (&["project", "unarchive", "--code", "q"], 0),
        (&["environment", "ls", "-p", "p"], 0),
        (&["environment", "create", "-p", "q", "--code", "dev"], 0),
        (&["environment", "show-properties", "-p", "p", "-e", "dev"], 0),
        (&["environment", "set-properties", "-p", "p", "-e", "dev", "--json", "{}"], 0),
        (&["environment", "edit-properties", "-p", "p", "-e", "dev"], 0),
        (&["environment", "archive", "-p", "q", "--code", "dev"], 0),
        (&["environment", "unarchive", "-p", "q", "--code", "dev"], 0),
        (&["environment", "delete", "-p", "q", "--code", "dev"], 0),
        (&["project", "delete", "--code", "q"], 0),
        (&["properties", "show", "-p", "p"], 0),
        (&["properties", "set", "-p", "p", "--json", "{}"], 0),
        (&["properties", "edit", "-p", "p"], 0),
        (&["properties", "history", "-p", "p"], 0),
        (&["secrets", "set", "s", "--file", secrets], 0),
        (&["secrets", "list"], 0),
        (&["secrets", "list", "-o", "json"], 0),
        (&["project", "ls", "-o", "json"], 0),
        (&["environment", "ls", "-p", "p", "-o", "json"], 0),
        (&["properties", "history", "-p", "p", "-o", "json"], 0),
        (&["dev", "create-dockerfile", "--repo", dir], 0),
        (&["demo", "--repo", &fixture], 0),
    ];
    for (args, code) in commands {
        let out = closed_pipe(&w, args);
        assert_eq!(out.status.code(), Some(*code), "opschain {args:?} through a closed pipe: {}", text(&out));
        assert!(!stderr(&out).contains("panicked") && !stderr(&out).contains("Broken pipe"), "opschain {args:?}: {}", text(&out));
    }
    // The change created through the closed pipe ran to its end all the same.
    assert!(w.ok(&["change", "show", "5"]).starts_with("change 5 success"));
}

/// The demo project's directory.
fn common_fixture_demo() -> String {
    common::fixture("demo").to_str().unwrap().to_string()
}

#[test]
fn user_errors_exit_64_65_66_saying_what_was_wrong_and_leave_nothing_behind() {
    let w = World::new();
    w.project();
    let create = |repo: &Path, extra: &[&str]| {
        let mut args = vec!["change", "create", "-p", "p", "-e", "dev", "-a", "hello", "--repo", repo.to_str().unwrap()];
        args.extend(extra);
        w.run(&args)
    };
    let expect = |out: Output, code: i32, says: &[&str]| {
        assert_eq!(out.status.code(), Some(code), "{}", text(&out));
        for part in says {
            assert!(stderr(&out).contains(part), "{part:?} in {}", text(&out));
        }
        assert!(!stderr(&out).contains("failed: \n") && !stderr(&out).trim_end().ends_with("failed:"), "an empty cause: {}", text(&out));
    };
    // A plain directory without the OpsChain folder, and one that does not exist.
    let plain = tempfile::tempdir().unwrap();
    std::fs::write(plain.path().join("README"), "not a project").unwrap();
    expect(create(plain.path(), &[]), 66, &["has no .opschain folder"]);
    expect(create(&plain.path().join("missing"), &[]), 66, &["does not exist"]);
    // A plain project directory at a revision its snapshot does not have.
    std::fs::create_dir(plain.path().join(".opschain")).unwrap();
    std::fs::write(plain.path().join(".opschain/actions.toml"), ACTIONS).unwrap();
    expect(create(plain.path(), &["--git-rev", "v9"]), 66, &[r#"the git revision "v9" does not exist"#]);
    // A work tree: a revision that does not exist, with the branch it may have meant; a commit
    // without the folder.
    let r = repo(ACTIONS, &[]);
    git(r.path(), &["branch", "-q", "-m", "main"]);
    expect(create(r.path(), &["--git-rev", "mian"]), 66, &[r#"the git revision "mian" does not exist"#, "did you mean main?"]);
    let bare = tempfile::tempdir().unwrap();
    std::fs::write(bare.path().join("README"), "x").unwrap();
    git(bare.path(), &["init", "-q"]);
    git(bare.path(), &["add", "-A"]);
    git(bare.path(), &["commit", "-q", "-m", "no folder"]);
    std::fs::create_dir(bare.path().join(".opschain")).unwrap();
    expect(create(bare.path(), &[]), 66, &["has no .opschain folder"]);
    // None of them made a change or left a snapshot.
    assert_eq!(w.ok(&["change", "ls"]).lines().count(), 1, "{}", w.ok(&["change", "ls"]));
    assert!(w.state_has("repos/").is_empty(), "left behind: {:?}", w.state_has("repos/"));

    // A change that succeeded has nothing to retry: the user's error, not the controller's.
    w.ok(&["change", "create", "-p", "p", "-e", "dev", "-a", "hello", "--repo", r.path().to_str().unwrap()]);
    expect(w.run(&["change", "retry", "1"]), 65, &["change 1 succeeded: nothing to retry"]);
}

/// How many RFC 3339 times `line` holds.
fn times(line: &str) -> usize {
    line.as_bytes().windows(11).filter(|w| w[..4].iter().all(u8::is_ascii_digit) && w[4] == b'-' && w[7] == b'-' && w[10] == b'T').count()
}

#[test]
fn a_change_prints_its_actions_lines_and_a_status_line_per_step_and_more_when_asked() {
    let w = World::new();
    w.project();
    let r = repo(ACTIONS, &[]);
    let dir = r.path().to_str().unwrap();
    let quiet = w.ok(&["change", "create", "-p", "p", "-e", "dev", "-a", "hello", "--repo", dir]);
    let lines: Vec<&str> = quiet.lines().collect();
    assert!(lines.len() <= 4, "a one-line echo: {quiet}");
    assert!(lines.contains(&"[1 hello]  hello from the action"), "{quiet}");
    let status = lines.iter().find(|l| l.starts_with("==> step 1 [hello] success in ")).unwrap_or_else(|| panic!("a status line: {quiet}"));
    assert!(status.contains(" to "), "start and end: {status}");
    assert!(lines.last().unwrap().starts_with("==> change 1 success in "), "{quiet}");
    assert!(!quiet.contains("INFO") && lines.iter().all(|l| times(l) == 0), "{quiet}");

    // --timestamps: one time on every line; -v: the agent's records, durations rounded.
    let stamped = w.ok(&["change", "create", "-p", "p", "-e", "dev", "-a", "hello", "--repo", dir, "--timestamps"]);
    assert!(stamped.lines().all(|l| times(l) == 1 && times(&l[..11]) == 1), "{stamped}");
    let verbose = w.ok(&["change", "create", "-p", "p", "-e", "dev", "-a", "hello", "--repo", dir, "-v"]);
    assert!(verbose.contains("INFO phase started") && verbose.contains("[3 hello]  hello from the action"), "{verbose}");
    for ms in verbose.split("duration_ms=").skip(1) {
        let number = ms.split_whitespace().next().unwrap();
        assert!(number.split_once('.').is_none_or(|(_, d)| d.len() <= 1), "rounded: {number} in {verbose}");
    }
    assert!(verbose.lines().all(|l| times(l) == 0), "{verbose}");

    // show-logs: the same view of the stored lines.
    let logs = w.ok(&["change", "show-logs", "1"]);
    assert_eq!(logs, "[1 hello]  hello from the action\n");
    let logs = w.ok(&["change", "show-logs", "1", "--timestamps"]);
    assert!(logs.lines().all(|l| times(l) == 1) && logs.ends_with(" [1 hello]  hello from the action\n"), "{logs}");
    let logs = w.ok(&["change", "show-logs", "1", "-v"]);
    assert!(logs.contains("INFO phase finished") && logs.lines().all(|l| times(l) == 0), "{logs}");
    let failed = w.run(&["change", "create", "-p", "p", "-e", "dev", "-a", "fail", "--repo", dir]);
    assert!(stdout(&failed).contains("[4 fail]! the disk is full"), "stderr marked: {}", text(&failed));

    // Every marker is explained in --help.
    let help = w.ok(&["change", "create", "--help"]);
    for marker in ["[4 deploy]  text", "[4 deploy]! text", "==> step 4 [deploy] success in", "--verbose", "--timestamps"] {
        assert!(help.contains(marker), "{marker:?} in {help}");
    }
}

#[test]
fn uncommitted_files_under_the_opschain_folder_are_named_with_the_commit_that_runs() {
    let w = World::new();
    w.project();
    let r = repo(ACTIONS, &[("README.md", "readme")]);
    let dir = r.path().to_str().unwrap();
    let head = String::from_utf8(Command::new("git").arg("-C").arg(r.path()).args(["rev-parse", "HEAD"]).output().unwrap().stdout).unwrap();
    std::fs::write(r.path().join(".opschain/actions.toml"), format!("{ACTIONS}\n[actions.new]\nrun = 'echo new'\n")).unwrap();
    std::fs::write(r.path().join(".opschain/extra.sh"), "echo extra").unwrap();
    std::fs::write(r.path().join("README.md"), "edited outside the folder").unwrap();
    let out = w.run(&["change", "create", "-p", "p", "-e", "dev", "-a", "new", "--repo", dir]);
    assert_eq!(out.status.code(), Some(1), "the commit has no action `new`: {}", text(&out));
    let warning = stderr(&out).lines().find(|l| l.contains("warning")).unwrap_or_default().to_string();
    for part in [".opschain/actions.toml", ".opschain/extra.sh", &format!("commit that runs (HEAD = {})", &head[..12]), "Commit them"] {
        assert!(warning.contains(part), "{part:?} in {}", text(&out));
    }
    assert!(!warning.contains("README.md"), "{warning}");
    git(r.path(), &["add", "-A"]);
    git(r.path(), &["commit", "-q", "-m", "new action"]);
    let out = w.run(&["change", "create", "-p", "p", "-e", "dev", "-a", "new", "--repo", dir]);
    assert!(out.status.success() && !stderr(&out).contains("warning"), "{}", text(&out));
}

#[test]
fn opschains_cli_parts_metadata_json_output_change_properties_default_action_and_opschainrc() {
    let w = World::new();
    w.project();
    let actions = r#"
[actions.default]
run = "grep -o 'OPS-[0-9]*' .opschain/step_context.json; opschain-runner property set --project --json a 2"

[actions.other]
run = "true"
"#;
    let r = repo(actions, &[]);
    let dir = r.path().to_str().unwrap();
    w.ok(&["project", "set-properties", "-p", "p", "--json", r#"{"a": 1}"#]);

    // --metadata-path: stored, in the step context, shown; no --action: the `default` one.
    let metadata = w.cwd.path().join("meta.json");
    std::fs::write(&metadata, r#"{"ticket": "OPS-42"}"#).unwrap();
    let out = w.ok(&["change", "create", "-p", "p", "-e", "dev", "--repo", dir, "-m", metadata.to_str().unwrap(), "--follow-logs"]);
    assert!(out.contains("[1 default]  OPS-42"), "the step saw its metadata: {out}");
    assert!(w.ok(&["change", "show", "1"]).contains(r#"metadata {"ticket":"OPS-42"}"#));
    std::fs::write(&metadata, "[1]").unwrap();
    assert_eq!(w.run(&["change", "create", "-p", "p", "-e", "dev", "--repo", dir, "-m", metadata.to_str().unwrap()]).status.code(), Some(65));
    assert_eq!(w.run(&["change", "create", "-p", "p", "-e", "dev", "--repo", dir, "-m", "/nonexistent.json"]).status.code(), Some(66));

    // show-properties --change-id: what the change started with, not what it left.
    let at_start: Value = serde_json::from_str(&w.ok(&["change", "show-properties", "--change-id", "1"])).unwrap();
    assert_eq!(at_start["project"]["properties"], serde_json::json!({"a": 1}), "{at_start}");
    assert_eq!(at_start["environment"]["properties"], serde_json::json!({}), "{at_start}");
    let now: Value = serde_json::from_str(&w.ok(&["project", "show-properties", "-p", "p"])).unwrap();
    assert_eq!(now, serde_json::json!({"a": 2}));

    // -o json on every list and show command, with the documented fields.
    let json = |args: &[&str]| -> Value {
        let out = w.ok(&[args, &["-o", "json"]].concat());
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("opschain {args:?} -o json: {e}: {out}"))
    };
    let changes = json(&["change", "ls"]);
    assert_eq!(changes[0]["id"], 1);
    assert_eq!(changes[0]["metadata"]["ticket"], "OPS-42");
    for field in ["status", "project", "environment", "action", "git_rev", "commit", "repo", "backend", "created_at", "finished_at", "failure"] {
        assert!(changes[0].get(field).is_some(), "{field} in {changes}");
    }
    let change = json(&["change", "show", "1"]);
    assert_eq!((change["status"].as_str(), change["steps"][0]["action"].as_str()), (Some("success"), Some("default")), "{change}");
    assert_eq!(json(&["project", "ls"])[0]["code"], "p");
    assert_eq!(json(&["environment", "ls", "-p", "p"])[0]["archived"], false);
    assert_eq!(json(&["properties", "history", "-p", "p"])[1]["properties"], serde_json::json!({"a": 1}));
    assert_eq!(json(&["secrets", "list"])[0]["name"], "opschain-build-env");
    let logs = w.ok(&["change", "show-logs", "1", "-o", "json"]);
    let first: Value = serde_json::from_str(logs.lines().next().unwrap()).unwrap();
    assert_eq!((first["step_id"].as_i64(), first["action"].as_str()), (Some(1), Some("default")), "{first}");

    // No --action and no `default` action, with no terminal to ask on: a usage error listing them.
    let r2 = repo(ACTIONS, &[]);
    let out = w.cmd().args(["change", "create", "-p", "p", "-e", "dev", "--repo", r2.path().to_str().unwrap()]).stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(stderr(&out).contains("its actions: hello, fail"), "{}", text(&out));

    // OpsChain's .opschainrc, INI with comments: codes and the editor read, the rest reported.
    std::fs::write(
        w.cwd.path().join(".opschainrc"),
        "; OpsChain CLI configuration\napiBaseUrl = http://localhost:3000\nusername = opschain\npassword = secret\nrequestTimeout = 30000\neditor = sed -i s/2/3/\nprojectCode = p\n",
    )
    .unwrap();
    let out = w.run(&["project", "edit-properties"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(stderr(&out).contains("apiBaseUrl, password, requestTimeout, username not used yet"), "{}", text(&out));
    assert_eq!(serde_json::from_str::<Value>(&w.ok(&["project", "show-properties"])).unwrap(), serde_json::json!({"a": 3}));
    std::fs::write(w.cwd.path().join(".opschainrc"), "; JSON too\n{\n  ; with comments\n  \"projectCode\": \"p\", \"apiBaseUrl\": \"http://x\"\n}\n").unwrap();
    assert_eq!(serde_json::from_str::<Value>(&w.ok(&["project", "show-properties"])).unwrap(), serde_json::json!({"a": 3}));
}

#[test]
#[ignore = "needs a Docker engine: scripts/test runs it where it finds one"]
fn a_missing_base_image_says_how_to_build_or_choose_one() {
    let w = World::new();
    w.project();
    let r = repo(ACTIONS, &[]);
    let out = w.run(&[
        "change",
        "create",
        "-p",
        "p",
        "-e",
        "dev",
        "-a",
        "hello",
        "--repo",
        r.path().to_str().unwrap(),
        "--backend",
        "docker",
        "--docker-bin",
        crate::docker_base::DOCKER,
        "--docker-base-image",
        "firsthour-no-such-base:none",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let show = w.ok(&["change", "show", "1"]);
    let first = show.lines().next().unwrap();
    for part in ["the base runner image firsthour-no-such-base:none does not exist", "runner-image/README.md", "--docker-base-image"] {
        assert!(first.contains(part), "{part:?} in {show}");
    }
    // One name: the default is the tag runner-image/README.md builds.
    let help = w.ok(&["change", "create", "--help"]);
    assert!(help.contains("[default: opschain-runner:latest]"), "{help}");
    let readme = std::fs::read_to_string(common::repo_root().join("runner-image/README.md")).unwrap();
    assert!(readme.contains("-t opschain-runner:latest runner-image"), "runner-image/README.md builds the default");
}

/// Runs `opschain args` on a terminal (a pty, through util-linux's `script`); what it printed.
fn on_a_terminal(w: &World, args: &[&str]) -> String {
    let quoted: Vec<String> = std::iter::once(env!("CARGO_BIN_EXE_opschain")).chain(args.iter().copied()).map(|a| format!("'{a}'")).collect();
    let mut script = Command::new("script");
    script.args(["-qec", &quoted.join(" "), "/dev/null"]).current_dir(w.cwd.path());
    for (k, v) in w.cmd().get_envs() {
        match v {
            Some(v) => script.env(k, v),
            None => script.env_remove(k),
        };
    }
    let out = script.stdin(Stdio::null()).output().unwrap();
    String::from_utf8_lossy(&out.stdout).replace('\r', "")
}

#[test]
fn on_a_terminal_change_create_draws_a_live_step_tree_and_follow_logs_streams_instead() {
    let w = World::new();
    w.project();
    let r = repo(&format!("{ACTIONS}\n[actions.both]\nsteps = [\"hello\", \"hello\"]\n"), &[]);
    let dir = r.path().to_str().unwrap();
    let tree = on_a_terminal(&w, &["change", "create", "-p", "p", "-e", "dev", "-a", "both", "--repo", dir]);
    assert!(tree.contains("\x1b[") && tree.contains("F\x1b[J"), "redrawn in place: {tree:?}");
    let last_frame = tree.rsplit("\x1b[J").next().unwrap();
    for line in
        ["change 1 success: project p, environment dev, action both", "  1 [both] success", "    2 [hello] success", "    3 [hello] success", "==> change 1 success"]
    {
        assert!(last_frame.contains(line), "{line:?} in the last drawing: {last_frame}");
    }
    assert!(!tree.contains("hello from the action"), "no logs in the tree view: {tree}");
    let logs = on_a_terminal(&w, &["change", "create", "-p", "p", "-e", "dev", "-a", "hello", "--repo", dir, "--follow-logs"]);
    assert!(logs.contains("[4 hello]  hello from the action") && !logs.contains("\x1b["), "{logs:?}");
}
