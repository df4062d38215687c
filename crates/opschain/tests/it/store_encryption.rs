//! Encryption at rest, through the real `opschain` binary: after a change has written
//! properties and a secret set has been stored, no file of the state directory (the database, its
//! WAL) holds a property or secret value in clear; a wrong or missing key file is refused with
//! exit status 78 naming the file; `store rotate-key` re-encrypts under a new key. The same
//! catalogue commands against a real PostgreSQL (`--database-url`), two controllers sharing it.

use crate::common;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

/// `opschain` with its state in `state` and the test-built agent.
fn opschain(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_opschain"));
    c.env("OPSCHAIN_STATE_DIR", state)
        .env("OPSCHAIN_RUNNER_BIN", crate::common::runner_bin())
        .env_remove("OPSCHAIN_KEY_FILE")
        .env_remove("OPSCHAIN_REPO_FOLDER")
        .env_remove("OPSCHAIN_BACKEND");
    c
}

fn ok(state: &Path, args: &[&str]) -> String {
    let out = opschain(state).args(args).output().unwrap();
    assert!(out.status.success(), "opschain {args:?}: {}", common::all_output(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// A git repository whose action `put` stores `value` in the environment's properties.
fn repo(value: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(".opschain")).unwrap();
    let actions = format!("[actions.put]\nrun = \"opschain-runner property set --environment --json db '{{\\\"secret_key_9d2\\\": \\\"{value}\\\"}}'\"\n");
    std::fs::write(dir.path().join(".opschain/actions.toml"), actions).unwrap();
    for args in [&["init", "-q"][..], &["add", "-A"], &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init"]] {
        assert!(Command::new("git").arg("-C").arg(dir.path()).args(args).status().unwrap().success());
    }
    dir
}

/// The files of `dir` (not below it) that contain `needle`.
fn files_holding(dir: &Path, needle: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_file())
        .filter(|e| std::fs::read(e.path()).unwrap().windows(needle.len()).any(|w| w == needle.as_bytes()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn no_property_or_secret_value_is_in_the_state_directory_in_clear_and_the_key_is_checked_and_rotated() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let secrets = tmp.path().join("set.json");
    std::fs::write(&secrets, json!({"API_TOKEN": "tok-7c1d0e9b44"}).to_string()).unwrap();
    ok(&state, &["secrets", "set", "s1", "--file", secrets.to_str().unwrap()]);
    ok(&state, &["properties", "set", "--project", "p", "--json", r#"{"vault": {"root": "prop-a93f51e2"}}"#]);
    ok(&state, &["environment", "create", "-p", "p", "--code", "dev"]);
    ok(&state, &["environment", "create", "-p", "p", "--code", "prod"]);
    let project = repo("step-5be2c07d");
    ok(&state, &["change", "run", "--repo", project.path().to_str().unwrap(), "--project", "p", "--environment", "dev", "--action", "put", "--secrets", "s1"]);

    // Every value reads back through the controller...
    let env: Value = serde_json::from_str(&ok(&state, &["properties", "show", "--project", "p", "--environment", "dev"])).unwrap();
    assert_eq!(env, json!({"db": {"secret_key_9d2": "step-5be2c07d"}}));
    let proj: Value = serde_json::from_str(&ok(&state, &["properties", "show", "--project", "p"])).unwrap();
    assert_eq!(proj, json!({"vault": {"root": "prop-a93f51e2"}}));
    // ... and none is in any file of the state directory (the database, its WAL and index).
    let key = state.join("opschain.key");
    assert!(key.exists(), "the default key file is made beside the database");
    // The key too: a property's name can say as much as its value (a name the schema itself does
    // not use, as `users.password_hash`).
    for value in ["tok-7c1d0e9b44", "prop-a93f51e2", "step-5be2c07d", "secret_key_9d2"] {
        assert_eq!(files_holding(&state, value), Vec::<String>::new(), "{value} in clear");
    }
    // A control: the files do hold what is not encrypted (the project's code, the action).
    assert!(!files_holding(&state, "put").is_empty(), "the scan reads the database");

    // A wrong key: refused by name, exit 78, the database untouched.
    let wrong = tmp.path().join("wrong.key");
    std::fs::write(&wrong, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n").unwrap();
    let out = opschain(&state).args(["--key-file", wrong.to_str().unwrap(), "properties", "show", "--project", "p"]).output().unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", common::all_output(&out));
    assert!(
        common::all_output(&out).contains(&format!("the key file {} is not the key this database was encrypted with", wrong.display())),
        "{}",
        common::all_output(&out)
    );
    // A missing key file is refused too, and not made.
    let missing = tmp.path().join("missing.key");
    let out = opschain(&state).env("OPSCHAIN_KEY_FILE", &missing).args(["secrets", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", common::all_output(&out));
    assert!(common::all_output(&out).contains(&missing.display().to_string()) && !missing.exists(), "{}", common::all_output(&out));

    // Rotation: every value re-encrypted under the new key, installed in the key file.
    let old = std::fs::read_to_string(&key).unwrap();
    let new = tmp.path().join("new.key");
    let out = ok(&state, &["store", "rotate-key", "--new-key-file", new.to_str().unwrap()]);
    assert!(out.contains("values re-encrypted"), "{out}");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), std::fs::read_to_string(&new).unwrap(), "the new key is in the key file");
    assert_ne!(std::fs::read_to_string(&key).unwrap(), old);
    let env: Value = serde_json::from_str(&ok(&state, &["properties", "show", "--project", "p", "--environment", "dev"])).unwrap();
    assert_eq!(env, json!({"db": {"secret_key_9d2": "step-5be2c07d"}}));
    let history = ok(&state, &["properties", "history", "--project", "p"]);
    assert!(history.contains("prop-a93f51e2"), "every version reads under the new key: {history}");
    // The old key is refused now.
    let old_copy = tmp.path().join("old.key");
    std::fs::write(&old_copy, &old).unwrap();
    let out = opschain(&state).args(["--key-file", old_copy.to_str().unwrap(), "secrets", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", common::all_output(&out));
    // The secret set is still the change's: a change using it runs and masks its value.
    ok(&state, &["change", "run", "--repo", project.path().to_str().unwrap(), "--project", "p", "--environment", "prod", "--action", "put", "--secrets", "s1"]);
    for value in ["tok-7c1d0e9b44", "prop-a93f51e2", "step-5be2c07d"] {
        assert_eq!(files_holding(&state, value), Vec::<String>::new(), "{value} in clear after rotation");
    }
}

#[test]
fn the_catalogue_commands_run_on_postgresql_encrypted_and_change_commands_are_refused_there() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let url = crate::common::postgres::database();
    let pg = |args: &[&str]| {
        let out = opschain(&state).env("OPSCHAIN_DATABASE_URL", &url).args(args).output().unwrap();
        assert!(out.status.success(), "opschain {args:?}: {}", common::all_output(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let secrets = tmp.path().join("set.json");
    std::fs::write(&secrets, json!({"API_TOKEN": "pgcli-tok-51aa"}).to_string()).unwrap();
    pg(&["secrets", "set", "s1", "--file", secrets.to_str().unwrap()]);
    pg(&["project", "create", "--code", "web"]);
    pg(&["environment", "create", "-p", "web", "--code", "dev"]);
    pg(&["properties", "set", "--project", "web", "--json", r#"{"db": {"password": "pgcli-prop-e3"}}"#]);
    pg(&["properties", "set", "--project", "web", "--environment", "dev", "--json", r#"{"replicas": 3}"#]);
    pg(&["properties", "set", "--project", "web", "--json", r#"{"db": {"password": "pgcli-prop-e3", "user": "pgcli-user-7f"}}"#]);
    // A second controller (another state directory, the same key file) sees what the first wrote.
    let other_state = tmp.path().join("other");
    let key = state.join("opschain.key");
    let second = |args: &[&str]| {
        let out = opschain(&other_state).env("OPSCHAIN_DATABASE_URL", &url).env("OPSCHAIN_KEY_FILE", &key).args(args).output().unwrap();
        assert!(out.status.success(), "opschain {args:?}: {}", common::all_output(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let shown: Value = serde_json::from_str(&second(&["project", "show-properties", "-p", "web"])).unwrap();
    assert_eq!(shown, json!({"db": {"password": "pgcli-prop-e3", "user": "pgcli-user-7f"}}));
    assert_eq!(second(&["properties", "history", "--project", "web"]).lines().count(), 3);
    assert!(second(&["project", "list"]).contains("web"));
    assert_eq!(second(&["secrets", "list"]), "opschain-build-env\ns1\n");
    // Nothing in clear in a dump of the database.
    let dump = crate::common::postgres::dump(&url);
    for value in ["pgcli-tok-51aa", "pgcli-prop-e3", "pgcli-user-7f", "replicas"] {
        assert!(!dump.windows(value.len()).any(|w| w == value.as_bytes()), "{value} in clear in pg_dump");
    }
    // Another key is refused by name.
    let wrong = tmp.path().join("wrong.key");
    std::fs::write(&wrong, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n").unwrap();
    let out = opschain(&state).env("OPSCHAIN_DATABASE_URL", &url).args(["--key-file", wrong.to_str().unwrap(), "secrets", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", common::all_output(&out));
    assert!(common::all_output(&out).contains(&wrong.display().to_string()), "{}", common::all_output(&out));
    // Rotation there too.
    let new = tmp.path().join("new.key");
    assert!(pg(&["store", "rotate-key", "--new-key-file", new.to_str().unwrap()]).contains("7 values re-encrypted"), "web v0-v2, dev v0-v1, two secret sets");
    let env: Value = serde_json::from_str(&pg(&["properties", "show", "--project", "web", "--environment", "dev"])).unwrap();
    assert_eq!(env, json!({"replicas": 3}));
    // Changes run on the embedded store only, so far: refused as a usage error.
    let out = opschain(&state).env("OPSCHAIN_DATABASE_URL", &url).args(["change", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", common::all_output(&out));
    assert!(common::all_output(&out).contains("PostgreSQL store (--database-url) does not hold yet"), "{}", common::all_output(&out));
}
