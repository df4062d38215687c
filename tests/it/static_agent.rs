//! The static agent as it ships in runner images: within its 1.5 MB budget, without the unwind
//! tables that scripts/no-unwind-tables.ld drops, and still a working agent and opschain-exec.

use crate::common;

use std::process::Command;

/// The static agent's size budget (BENCHMARKS.md).
const BUDGET_BYTES: u64 = 1_500_000;

#[test]
fn the_static_agent_fits_its_budget_without_unwind_tables_and_still_runs_a_step() {
    let agent = common::static_agent().as_ref().unwrap_or_else(|e| panic!("{e}"));
    let size = std::fs::metadata(agent).unwrap().len();
    assert!(size <= BUDGET_BYTES, "the static agent is {size} bytes, over its {BUDGET_BYTES}-byte budget");

    let sections = Command::new("readelf").args(["-SW"]).arg(agent).output().expect("readelf (binutils) runs");
    assert!(sections.status.success());
    let sections = String::from_utf8_lossy(&sections.stdout);
    assert!(sections.contains(" .text "), "readelf lists the sections: {sections}");
    for dropped in [".eh_frame", ".gcc_except_table"] {
        assert!(!sections.contains(dropped), "{dropped} is still linked in:\n{sections}");
    }

    // A whole step with the static binary, and opschain-exec through its argv[0] name.
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join(".opschain")).unwrap();
    std::fs::write(repo.join(".opschain/actions.toml"), "[actions.hello]\ncommand = [\"sh\", \"-c\", \"echo \\\"$GREETING\\\" > out.txt\"]\n").unwrap();
    std::fs::write(
        repo.join(".opschain/step_context.json"),
        r#"{"context": {"step": {"action": "hello"}}, "project": {"properties": {"opschain": {"env": {"GREETING": "hi"}}}}}"#,
    )
    .unwrap();
    let step = Command::new(agent).arg("--repo").arg(&repo).arg("step").env_remove("OPSCHAIN_REPO_FOLDER").output().unwrap();
    assert!(step.status.success(), "{}", String::from_utf8_lossy(&step.stderr));
    assert_eq!(std::fs::read_to_string(repo.join("out.txt")).unwrap(), "hi\n");
    let result: serde_json::Value = serde_json::from_slice(&std::fs::read(repo.join(".opschain/step_result.json")).unwrap()).unwrap();
    common::schema::assert_valid("step_result", &result, "the static agent's step_result.json");
    assert_eq!(result["step"]["properties"]["opschain"]["env"]["GREETING"], "hi");

    let exec = dir.path().join("opschain-exec");
    std::os::unix::fs::symlink(agent, &exec).unwrap();
    let out = Command::new(&exec).current_dir(&repo).args(["sh", "-c", "echo $GREETING"]).env("OPSCHAIN_REPO_DIR", &repo).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
}
