//! Every step result of a change the controller runs matches `schemas/step_result.schema.json`
//! (checked with a standard validator, see `common::schema`; the agent's own results are checked by
//! the agent's tests).

use std::path::{Path, PathBuf};

use crate::common::schema;
use crate::common::*;

/// Every file under `dir`, recursively; symlinks are not followed.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if entry.file_type().unwrap().is_symlink() {
            continue;
        }
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn every_result_of_a_change_run_by_the_controller_matches_the_schema() {
    let state = tempfile::tempdir().unwrap();
    let opschain = || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_opschain"));
        command.env("OPSCHAIN_STATE_DIR", state.path()).env("OPSCHAIN_RUNNER_BIN", crate::common::runner_bin()).env_remove("OPSCHAIN_BACKEND");
        command
    };
    let secrets = state.path().join("demo.json");
    std::fs::write(&secrets, r#"{"API_TOKEN": "demo-token-value"}"#).unwrap();
    assert!(opschain().args(["secrets", "set", "demo", "--file", secrets.to_str().unwrap()]).output().unwrap().status.success());
    let demo = fixture("demo");
    crate::common::make_target(state.path(), "demo", "dev");
    let output = opschain()
        .args([
            "change",
            "run",
            "--keep-sandboxes",
            "--repo",
            demo.to_str().unwrap(),
            "--project",
            "demo",
            "--environment",
            "dev",
            "--action",
            "deploy",
            "--secrets",
            "demo",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let results: Vec<PathBuf> = files_under(&state.path().join("sandboxes")).into_iter().filter(|p| p.ends_with(".opschain/step_result.json")).collect();
    assert!(results.len() >= 5, "{results:?}");
    for path in results {
        schema::check_result_file(&path);
    }
}
