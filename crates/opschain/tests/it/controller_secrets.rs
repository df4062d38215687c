//! Secrets stay secret on the host: the controller's state, sandboxes and step contexts are
//! unreadable by other local users (checked as `nobody`, through `setpriv`), and no secret value
//! of the sets a change uses reaches the terminal or the store unmasked.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common;

/// `opschain` with its state in `state` and the test-built agent.
fn opschain(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_opschain"));
    c.env("OPSCHAIN_STATE_DIR", state)
        .env("OPSCHAIN_RUNNER_BIN", crate::common::runner_bin())
        .env("OPSCHAIN_GRACE_SECS", "2")
        .env_remove("OPSCHAIN_REPO_FOLDER")
        .env_remove("OPSCHAIN_BACKEND");
    c
}

/// `opschain` run with umask 000: every mode it ends up with is its own choice.
fn opschain_umask0(state: &Path) -> Command {
    let mut c = Command::new("/bin/sh");
    c.args(["-c", "umask 000; exec \"$0\" \"$@\"", env!("CARGO_BIN_EXE_opschain")])
        .env("OPSCHAIN_STATE_DIR", state)
        .env("OPSCHAIN_RUNNER_BIN", crate::common::runner_bin())
        .env("OPSCHAIN_GRACE_SECS", "2");
    c
}

fn run(state: &Path, args: &[&str]) -> Output {
    common::make_target_of(state, args);
    opschain(state).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `args` run as the unprivileged user `nobody`.
fn as_nobody(args: &[&std::ffi::OsStr]) -> Output {
    Command::new("setpriv").args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"]).args(args).output().unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o7777
}

/// A temporary directory any user may enter (tempfile makes them 0700, which would hide what is
/// inside from `nobody` whatever the controller did).
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A secret set file `{"NAME": "value"}` in `dir`.
fn set_file(dir: &Path, name: &str, set: Value) -> PathBuf {
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, set.to_string()).unwrap();
    path
}

/// The first path matching `dir/*/rel` (one level of wildcard).
fn find_below(dir: &Path, rel: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir).ok()?.flatten().map(|e| e.path().join(rel)).find(|p| p.exists())
}

#[test]
fn the_database_a_running_steps_sandbox_and_its_context_are_unreadable_by_other_users() {
    let tmp = open_dir();
    let probe = tmp.path().join("probe");
    std::fs::write(&probe, "readable").unwrap();
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o644)).unwrap();
    let control = as_nobody(&["cat".as_ref(), probe.as_os_str()]);
    assert!(control.status.success(), "nobody reads an open file (else this test proves nothing): {}", text(&control));

    // A plain directory (snapshotted under the state directory) whose one step waits.
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(repo.join(".opschain")).unwrap();
    std::fs::write(repo.join(".opschain/actions.toml"), "[actions.wait]\nrun = \"echo started; sleep 30\"\n").unwrap();
    let state = tmp.path().join("state");
    let set = set_file(tmp.path(), "s", json!({"API_TOKEN": "private-token-31337"}));
    let saved = opschain_umask0(&state).args(["secrets", "set", "s", "--file"]).arg(&set).output().unwrap();
    assert!(saved.status.success(), "{}", text(&saved));

    common::make_target(&state, "p", "e");
    let mut controller = opschain_umask0(&state)
        .args(["change", "run", "--project", "p", "--environment", "e", "--action", "wait", "--secrets", "s", "--repo"])
        .arg(&repo)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let change_dir = state.join("sandboxes/change-1");
    let deadline = Instant::now() + Duration::from_secs(30);
    let context = loop {
        if let Some(c) = find_below(&change_dir, ".opschain/step_context.json") {
            break c;
        }
        assert!(Instant::now() < deadline, "the step never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    let sandbox = context.parent().unwrap().parent().unwrap().to_path_buf();
    let db = state.join("opschain.db");
    // The snapshot (and, under `locks/`, the lock that keeps a collection from removing it while a
    // change is created from it, and the change's own lock, which its controller holds).
    let snapshot = std::fs::read_dir(state.join("repos")).unwrap().map(|e| e.unwrap()).find(|e| !e.file_name().to_string_lossy().starts_with('.')).unwrap().path();
    let expected = [
        (state.clone(), 0o700),
        (db.clone(), 0o600),
        (state.join("opschain.db-wal"), 0o600),
        (state.join("opschain.db-shm"), 0o600),
        (state.join("repos"), 0o700),
        (snapshot.clone(), 0o700),
        (state.join("locks"), 0o700),
        (state.join("locks/snapshots.lock"), 0o600),
        (state.join("locks/change-1.lock"), 0o600),
        (state.join("sandboxes"), 0o700),
        (change_dir.clone(), 0o700),
        (sandbox.clone(), 0o700),
        (context.clone(), 0o600),
    ];
    let modes: Vec<(PathBuf, u32)> = expected.iter().map(|(p, _)| (p.clone(), mode(p))).collect();
    assert_eq!(modes, expected, "under umask 000, every mode is the controller's own");
    assert!(std::fs::read_to_string(&context).unwrap().contains("private-token-31337"), "the context holds the runner secret");
    for path in [&db, &context, &snapshot.join(".opschain/actions.toml")] {
        let read = as_nobody(&["cat".as_ref(), path.as_os_str()]);
        assert!(!read.status.success(), "nobody read {}: {}", path.display(), text(&read));
    }
    let listed = as_nobody(&["ls".as_ref(), sandbox.as_os_str()]);
    assert!(!listed.status.success(), "nobody listed the sandbox: {}", text(&listed));

    let cancelled = run(&state, &["change", "cancel", "1"]);
    assert!(cancelled.status.success(), "{}", text(&cancelled));
    assert_eq!(controller.wait().unwrap().code(), Some(2));
}

#[test]
fn a_loose_state_directory_is_tightened_with_a_warning_and_another_users_is_refused() {
    let tmp = open_dir();
    let state = tmp.path().join("state");
    let set = set_file(tmp.path(), "s", json!({"K": "value-of-k-123"}));
    assert!(run(&state, &["secrets", "set", "s", "--file", set.to_str().unwrap()]).status.success());
    // As an older controller (or a hand-made directory) would have left it.
    let db = state.join("opschain.db");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(as_nobody(&["cat".as_ref(), db.as_os_str()]).status.success(), "loose: nobody can read it");

    let out = run(&state, &["secrets", "list"]);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("made private") && stderr.contains("rotate them"), "{stderr}");
    assert!(stderr.contains(&format!("{} (0755)", state.display())) && stderr.contains(&format!("{} (0644)", db.display())), "{stderr}");
    assert_eq!((mode(&state), mode(&db)), (0o700, 0o600));
    assert!(!as_nobody(&["cat".as_ref(), db.as_os_str()]).status.success());
    let again = run(&state, &["secrets", "list"]);
    assert!(again.stderr.is_empty(), "nothing left to tighten: {}", text(&again));

    // A state directory of another user is not taken over.
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
    let refused = run(&state, &["secrets", "list"]);
    assert_eq!(refused.status.code(), Some(70), "{}", text(&refused));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("belongs to uid 65534") && said.contains("--state-dir"), "{said}");
}

const CONFLICT: &str = r#"
[actions.root]
run = '''echo "root prints build-only-value-77"; opschain-runner property set --environment --json cfg '{"a": 1}' '''
steps = ["drop", "add"]
run_as = "parallel"

[actions.drop]
run = "opschain-runner property remove --environment cfg"

[actions.add]
run = "sleep 1; opschain-runner property set --environment cfg.b 2"
"#;

/// Every text and blob of every table of the store but the secret sets and the properties (which
/// hold what the user put there), one string per value.
fn stored_values(db: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT IN ('secret_sets', 'properties')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(tables.iter().any(|t| t == "steps"), "{tables:?}");
    let mut values = Vec::new();
    for table in tables {
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
        let columns = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            for i in 0..columns {
                match row.get_ref(i).unwrap() {
                    rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => values.push(String::from_utf8_lossy(t).into_owned()),
                    _ => {}
                }
            }
        }
    }
    values
}

#[test]
fn secrets_in_a_conflict_message_and_in_step_lines_reach_neither_the_terminal_nor_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let runner = set_file(tmp.path(), "db", json!({"DB_PASSWORD": "s3cret-db-pass-9"}));
    let build = set_file(tmp.path(), "build", json!({"BUILD_TOKEN": "build-only-value-77"}));
    assert!(run(&state, &["secrets", "set", "db", "--file", runner.to_str().unwrap()]).status.success());
    assert!(run(&state, &["secrets", "set", "opschain-build-env", "--file", build.to_str().unwrap()]).status.success());
    // The environment's properties hold the password too, as `opschain.env` often does: the
    // conflict explanation prints them whole.
    let props = json!({"opschain": {"env": {"DB_PASSWORD": "s3cret-db-pass-9"}}}).to_string();
    assert!(run(&state, &["properties", "set", "--project", "p", "--environment", "dev", "--json", &props]).status.success());
    let repo = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(repo.path().join(".opschain")).unwrap();
    std::fs::write(repo.path().join(".opschain/actions.toml"), CONFLICT).unwrap();
    for args in [&["init", "-q"][..], &["add", "-A"], &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init"]] {
        assert!(Command::new("git").arg("-C").arg(repo.path()).args(args).status().unwrap().success());
    }

    let out = run(&state, &["change", "run", "--repo", repo.path().to_str().unwrap(), "--project", "p", "--environment", "dev", "--action", "root", "--secrets", "db"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let terminal = text(&out);
    let show = text(&run(&state, &["change", "show", "1"]));
    let logs = text(&run(&state, &["change", "logs", "1"]));
    let list = text(&run(&state, &["secrets", "list"]));
    // The conflict was explained, with the documents in it, and the build secret's line logged.
    for (what, shown) in [("terminal", &terminal), ("change show", &show)] {
        assert!(shown.contains("Original environment properties") && shown.contains("\"DB_PASSWORD\": \"****\""), "{what}:\n{shown}");
    }
    assert!(terminal.contains("root prints ****") && logs.contains("root prints ****"), "{terminal}\n{logs}");
    assert_eq!(list.lines().collect::<Vec<_>>(), ["db", "opschain-build-env"]);
    let stored = stored_values(&state.join("opschain.db"));
    assert!(stored.iter().any(|v| v.contains("Current environment properties")), "the explanation is stored");
    for secret in ["s3cret-db-pass-9", "build-only-value-77"] {
        for (what, shown) in [("terminal", &terminal), ("change show", &show), ("change logs", &logs), ("secrets list", &list)] {
            assert!(!shown.contains(secret), "{secret} in the {what}:\n{shown}");
        }
        assert!(!stored.iter().any(|v| v.contains(secret)), "{secret} stored unmasked");
    }
}
