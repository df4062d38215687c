//! The step agent end to end through the real binary: inputs in, action run, result out.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::common::*;
use serde_json::{json, Value};

/// The step result, which must match `schemas/step_result.schema.json`.
fn result(repo: &Path) -> Value {
    let result = serde_json::from_slice(&std::fs::read(repo.join(".opschain/step_result.json")).unwrap()).unwrap();
    schema::assert_valid("step_result", &result, "step_result.json");
    result
}

fn write_context(repo: &Path, context: &Value) {
    std::fs::write(repo.join(".opschain/step_context.json"), serde_json::to_vec(context).unwrap()).unwrap();
}

fn write_actions(repo: &Path, toml: &str) {
    std::fs::create_dir_all(repo.join(".opschain")).unwrap();
    std::fs::write(repo.join(".opschain/actions.toml"), toml).unwrap();
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn sample_project_runs_and_reports_diffs_children_and_facts() {
    let repo = fixture_copy("hello");
    let output = run_step(repo.path(), &[]);
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    let out = stdout(&output);
    assert!(out.contains("configured"), "{out}");
    assert!(out.contains("deploying hello to deploy"), "{out}");
    let r = result(repo.path());
    assert_eq!(r["project"]["properties_diff"], json!([{"op": "replace", "path": "/deploy_count", "value": 1}]));
    assert_eq!(r["environment"]["properties_diff"], json!([{"op": "add", "path": "/deployed_version", "value": "1.4.2"}]));
    // Merge order: repository, repository environment, project, environment.
    assert_eq!(r["step"]["properties"]["app"], json!({"name": "hello", "replicas": 2}));
    assert_eq!(r["step"]["properties"]["opschain"]["env"]["APP_NAME"], "hello");
    assert_eq!(r["steps"], json!({"children": [{"action": "release:web"}, {"action": "release:worker"}], "child_execution_strategy": "parallel"}));
    let runner = &r["runner"];
    assert_eq!(runner["reason"], "exited");
    assert_eq!(runner["exit_status"], 0);
    assert_eq!(runner["jobs"].as_array().unwrap().len(), 2);
    assert_eq!(runner["jobs"][0]["action"], "configure");
    assert!(runner["phases"]["action_ms"].as_f64().unwrap() > 0.0);
    // The seeds' keys, plus exactly one added key.
    let keys: Vec<&String> = r.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["project", "environment", "step", "steps", "runner"]);
    // Files with their modes.
    let key = repo.path().join(".ssh/deploy_key");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(&key).unwrap().contains("not-a-real-key"));
    let config: Value = serde_json::from_slice(&std::fs::read(repo.path().join("config/app.json")).unwrap()).unwrap();
    assert_eq!(config["replicas"], 2);
}

#[test]
fn action_sees_the_contract_environment() {
    let repo = tempfile::tempdir().unwrap();
    write_actions(repo.path(), "[actions.show]\nrun = 'env | sort; pwd'\n");
    write_context(
        repo.path(),
        &json!({
            "context": {"step": {"action": "show"}, "environment": {"code": "dev"}},
            "project": {"properties": {"opschain": {"env": {"SHARED": "project", "ONLY_PROJECT": "p"}}}},
            "environment": {"properties": {"opschain": {"env": {"SHARED": "environment", "API_TOKEN": "from-property"}}}},
            "secrets": {"API_TOKEN": "from-secret-1234"}
        }),
    );
    std::fs::write(repo.path().join(".opschain/properties.json"), r#"{"opschain": {"env": {"SHARED": "repo", "ONLY_REPO": "r"}}}"#).unwrap();
    let output = run_step(repo.path(), &[]);
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    let out = stdout(&output);
    let folder = repo.path().join(".opschain");
    for expected in [
        "SHARED=environment".to_string(),
        "ONLY_PROJECT=p".into(),
        "ONLY_REPO=r".into(),
        format!("HOME={}", repo.path().display()),
        format!("OPSCHAIN_PROPERTIES={}", folder.join("step/properties.json").display()),
        format!("OPSCHAIN_PROJECT_PROPERTIES={}", folder.join("step/project_properties.json").display()),
        format!("OPSCHAIN_ENVIRONMENT_PROPERTIES={}", folder.join("step/environment_properties.json").display()),
        format!("OPSCHAIN_CHILD_STEPS={}", folder.join("step/child_steps").display()),
        format!("OPSCHAIN_STEP_CONTEXT={}", folder.join("step_context.json").display()),
    ] {
        assert!(out.contains(&expected), "missing {expected} in:\n{out}");
    }
    // A secret wins over a property of the same name (its value is masked in the output).
    assert!(!out.contains("API_TOKEN=from-property"), "{out}");
    assert!(out.contains(&repo.path().display().to_string()), "working directory is the repo: {out}");
    // The merged properties copy is read-only.
    let merged = folder.join("step/properties.json");
    assert_eq!(std::fs::metadata(merged).unwrap().permissions().mode() & 0o222, 0);
}

#[test]
fn failed_action_keeps_its_status_and_its_recorded_changes() {
    let repo = tempfile::tempdir().unwrap();
    write_actions(
        repo.path(),
        "[actions.fail]\nrun = 'opschain-runner property set --project a.b 1 --json && opschain-runner child add next && exit 3'\n[actions.next]\nrun = 'true'\n",
    );
    write_context(repo.path(), &json!({"context": {"step": {"action": "fail"}}, "project": {"properties": {"a": {"c": 0}}}}));
    let output = run_step(repo.path(), &[]);
    assert_eq!(output.status.code(), Some(3), "{:?}", stderr_lines(&output));
    let r = result(repo.path());
    assert_eq!(r["project"]["properties_diff"], json!([{"op": "add", "path": "/a/b", "value": 1}]));
    assert_eq!(r["steps"]["children"], json!([{"action": "next"}]));
    assert_eq!(r["steps"]["child_execution_strategy"], "sequential");
    assert_eq!(r["runner"]["exit_status"], 3);
    assert_eq!(r["runner"]["code"], 3);
}

#[test]
fn a_failed_prerequisite_stops_the_step() {
    let repo = tempfile::tempdir().unwrap();
    write_actions(repo.path(), "[actions.a]\nrequires = ['b']\nrun = 'touch ran-a'\n[actions.b]\ncommand = ['sh', '-c', 'exit 7']\n");
    write_context(repo.path(), &json!({"context": {"step": {"action": "a"}}}));
    let output = run_step(repo.path(), &[]);
    assert_eq!(output.status.code(), Some(7));
    assert!(!repo.path().join("ran-a").exists());
    assert_eq!(result(repo.path())["runner"]["jobs"].as_array().unwrap().len(), 1);
}

#[test]
fn action_flag_overrides_the_context_and_children_only_actions_run_nothing() {
    let repo = fixture_copy("hello");
    let output = run_step(repo.path(), &["step", "--action", "release:web"]);
    assert_eq!(output.status.code(), Some(0));
    assert!(stdout(&output).contains("releasing web"));
    assert_eq!(result(repo.path())["runner"]["action"], "release:web");

    let repo = tempfile::tempdir().unwrap();
    write_actions(repo.path(), "[actions.parent]\nsteps = ['c']\n[actions.c]\nrun = 'true'\n");
    write_context(repo.path(), &json!({"context": {"step": {"action": "parent"}}}));
    let output = run_step(repo.path(), &[]);
    assert_eq!(output.status.code(), Some(0));
    let r = result(repo.path());
    assert_eq!(r["steps"]["children"], json!([{"action": "c"}]));
    assert_eq!(r["runner"]["reason"], Value::Null);
    assert_eq!(r["project"]["properties_diff"], json!([]));
}

#[test]
fn invalid_json_left_by_the_action_fails_the_step_but_keeps_the_other_level() {
    let repo = tempfile::tempdir().unwrap();
    write_actions(repo.path(), "[actions.a]\nrun = 'opschain-runner property set --environment x 1 && echo \"{broken\" > \"$OPSCHAIN_PROJECT_PROPERTIES\"'\n");
    write_context(repo.path(), &json!({"context": {"step": {"action": "a"}}, "project": {"properties": {"keep": 1}}}));
    let output = run_step(repo.path(), &[]);
    assert_eq!(output.status.code(), Some(65), "{:?}", stderr_lines(&output));
    let lines = stderr_lines(&output);
    assert!(lines.iter().any(|l| l.starts_with("opschain-runner:") && l.contains("project_properties.json")), "{lines:?}");
    let r = result(repo.path());
    assert_eq!(r["environment"]["properties_diff"], json!([{"op": "add", "path": "/x", "value": "1"}]));
    assert_eq!(r["project"]["properties_diff"], json!([]));
    assert!(r["runner"]["error"].as_str().unwrap().contains("project_properties.json"));
}

#[test]
fn a_copy_corrupted_where_the_helper_only_skims_is_refused_when_the_action_ends() {
    // `property set` splits only the objects on its path and skims the rest of the copy: a copy
    // the action corrupted deep inside is edited and written back as it is, and the agent, which
    // checks strictly every byte of a copy that differs from what it wrote, refuses it at the end
    // of the step with the file's name and the problem; the other level's changes are kept.
    for (corrupt, problem) in [(r#"{"servers": {"a": {"n": tru}}, "keep": 1}"#, "expected"), (r#"{"servers": {"a": {"n": 1, "n": 2}}, "keep": 1}"#, "duplicate")] {
        let repo = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(repo.path().join(".opschain")).unwrap();
        std::fs::write(repo.path().join("corrupt.json"), corrupt).unwrap();
        write_actions(
            repo.path(),
            "[actions.a]\nrun = 'cat corrupt.json > \"$OPSCHAIN_PROJECT_PROPERTIES\" && opschain-runner property set --project step done && opschain-runner property set --environment x 1'\n",
        );
        write_context(repo.path(), &json!({"context": {"step": {"action": "a"}}, "project": {"properties": {"servers": {"a": {"n": 1}}, "keep": 1}}}));
        let output = run_step(repo.path(), &[]);
        assert_eq!(output.status.code(), Some(65), "{corrupt}: {:?}", stderr_lines(&output));
        let lines = stderr_lines(&output);
        assert!(lines.iter().any(|l| l.starts_with("opschain-runner:") && l.contains("project_properties.json") && l.contains(problem)), "{corrupt}: {lines:?}");
        let copy = std::fs::read_to_string(repo.path().join(".opschain/step/project_properties.json")).unwrap();
        assert!(copy.contains("\"step\":\"done\""), "the helper edited the copy: {copy}");
        let r = result(repo.path());
        assert_eq!(r["project"]["properties_diff"], json!([]));
        assert_eq!(r["environment"]["properties_diff"], json!([{"op": "add", "path": "/x", "value": "1"}]));
        assert!(r["runner"]["error"].as_str().unwrap().contains("project_properties.json"));
    }
}

#[test]
fn project_properties_alone_are_the_merged_properties_as_written() {
    // With no other source of properties, the merged view is the project copy's text: written
    // read-only as the merged properties, and recorded as the result's `step.properties` (the
    // properties as the action found them, not as it left them).
    let repo = tempfile::tempdir().unwrap();
    write_actions(repo.path(), "[actions.a]\nrun = 'cp \"$OPSCHAIN_PROPERTIES\" seen.json && opschain-runner property set --project step done'\n");
    let props = json!({"servers": {"a": {"ip": "10.0.0.1", "roles": ["web"]}}, "n": 1.5});
    write_context(repo.path(), &json!({"context": {"step": {"action": "a"}}, "project": {"properties": props}}));
    let output = run_step(repo.path(), &[]);
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    let seen = std::fs::read_to_string(repo.path().join("seen.json")).unwrap();
    assert_eq!(seen, format!("{}\n", serde_json::to_string(&props).unwrap()));
    let merged = repo.path().join(".opschain/step/properties.json");
    assert_eq!(std::fs::metadata(&merged).unwrap().permissions().mode() & 0o777, 0o444);
    let r = result(repo.path());
    assert_eq!(r["step"]["properties"], props);
    assert_eq!(r["project"]["properties_diff"], json!([{"op": "add", "path": "/step", "value": "done"}]));
    assert_eq!(std::fs::read_to_string(&merged).unwrap(), seen, "the merged file is left as written");
}

#[test]
fn a_copy_changed_from_its_first_byte_or_cut_short_is_diffed_whole() {
    // The agent reads a copy back comparing it with what it wrote, and keeps what follows the
    // first difference: a copy that differs from its first byte, or that is a prefix of what was
    // written, is diffed (or refused) as a whole copy is.
    let repo = tempfile::tempdir().unwrap();
    write_actions(
        repo.path(),
        "[actions.a]\nrun = 'printf \" {\\\"keep\\\": 2}\" > \"$OPSCHAIN_PROJECT_PROPERTIES\" && head -c 5 \"$OPSCHAIN_ENVIRONMENT_PROPERTIES\" > e && cat e > \"$OPSCHAIN_ENVIRONMENT_PROPERTIES\"'\n",
    );
    write_context(repo.path(), &json!({"context": {"step": {"action": "a"}}, "project": {"properties": {"keep": 1}}, "environment": {"properties": {"n": 1}}}));
    let output = run_step(repo.path(), &[]);
    assert_eq!(output.status.code(), Some(65), "{:?}", stderr_lines(&output));
    let r = result(repo.path());
    assert_eq!(r["project"]["properties_diff"], json!([{"op": "replace", "path": "/keep", "value": 2}]));
    assert_eq!(r["environment"]["properties_diff"], json!([]));
    assert!(r["runner"]["error"].as_str().unwrap().contains("environment_properties.json"), "{r}");
}

#[test]
fn a_copy_rewritten_with_the_same_properties_has_an_empty_diff_and_a_changed_one_its_own() {
    // The agent compares each level copy with the bytes it wrote before parsing it again: a copy
    // that differs only in formatting must still parse to an empty diff, and a changed one diff.
    let repo = tempfile::tempdir().unwrap();
    write_actions(
        repo.path(),
        "[actions.a]\nrun = 'printf \"\\n  \" >> \"$OPSCHAIN_PROJECT_PROPERTIES\" && printf \"{\\\"n\\\": 2, \\\"keep\\\": [1]}\" > \"$OPSCHAIN_ENVIRONMENT_PROPERTIES\"'\n",
    );
    write_context(
        repo.path(),
        &json!({"context": {"step": {"action": "a"}}, "project": {"properties": {"keep": 1}}, "environment": {"properties": {"n": 1, "keep": [1]}}}),
    );
    let output = run_step(repo.path(), &[]);
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    let r = result(repo.path());
    assert_eq!(r["project"]["properties_diff"], json!([]));
    assert_eq!(r["environment"]["properties_diff"], json!([{"op": "replace", "path": "/n", "value": 2}]));
}

#[test]
fn repo_folder_can_be_mintpress() {
    let repo = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(repo.path().join(".mintpress")).unwrap();
    std::fs::write(repo.path().join(".mintpress/actions.toml"), "[actions.a]\nrun = 'echo mint'\n").unwrap();
    std::fs::write(repo.path().join(".mintpress/step_context.json"), r#"{"context": {"step": {"action": "a"}}}"#).unwrap();
    let output = runner().arg("--repo").arg(repo.path()).env("OPSCHAIN_REPO_FOLDER", ".mintpress").output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    assert!(repo.path().join(".mintpress/step_result.json").exists());
    assert!(!repo.path().join(".opschain").exists());
}

#[test]
fn repo_dir_comes_from_the_environment_too() {
    let repo = fixture_copy("hello");
    let output = runner()
        .env("OPSCHAIN_REPO_DIR", repo.path())
        .env("PATH", format!("{}:/usr/bin:/bin", bin_dir().display()))
        .args(["step", "--action", "release:worker"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    assert!(repo.path().join(".opschain/step_result.json").exists());
}

#[test]
fn validate_prints_the_plan_and_writes_nothing() {
    let repo = fixture_copy("hello");
    let before = snapshot(repo.path());
    let output = runner().arg("--repo").arg(repo.path()).arg("validate").output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    let text = stdout(&output);
    for expected in
        ["action: deploy", "prerequisites: configure", "children (parallel): release:web, release:worker", "0600", ".ssh/deploy_key", "env: APP_NAME", "secrets: API_TOKEN"]
    {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    assert!(!text.contains("s3cr3t"), "a secret value was printed");
    let output = runner().arg("--repo").arg(repo.path()).args(["step", "--dry-run"]).output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let output = runner().arg("--repo").arg(repo.path()).args(["validate", "--json"]).output().unwrap();
    let plan: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(plan["files"][0]["mode"], "0600");
    assert_eq!(plan["commands"][1]["argv"][0], "/bin/sh");
    assert_eq!(snapshot(repo.path()), before, "validate wrote something");
}

#[test]
fn actions_lists_names_and_descriptions() {
    let output = runner().arg("--repo").arg(fixture("hello")).arg("actions").output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let text = stdout(&output);
    assert!(text.lines().any(|l| l.starts_with("deploy") && l.contains("Configure, then release")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("release:web")), "{text}");
}

#[test]
fn property_helper_edits_and_reports_errors() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("p.json");
    let merged = dir.path().join("m.json");
    std::fs::write(&project, r#"{"a": {"b": 1}}"#).unwrap();
    std::fs::write(&merged, r#"{"a": {"b": 1}, "s": "text"}"#).unwrap();
    let helper = |args: &[&str]| {
        runner().args(args).env("OPSCHAIN_PROJECT_PROPERTIES", &project).env("OPSCHAIN_PROPERTIES", &merged).env_remove("OPSCHAIN_ENVIRONMENT_PROPERTIES").output().unwrap()
    };
    assert_eq!(helper(&["property", "set", "--project", "/x~1y", "[1,2]", "--json"]).status.code(), Some(0));
    assert_eq!(helper(&["property", "remove", "--project", "a.b"]).status.code(), Some(0));
    let doc: Value = serde_json::from_slice(&std::fs::read(&project).unwrap()).unwrap();
    assert_eq!(doc, json!({"a": {}, "x/y": [1, 2]}));
    assert_eq!(stdout(&helper(&["property", "get", "s"])), "text\n");
    assert_eq!(stdout(&helper(&["property", "get", "a"])), "{\"b\":1}\n");
    assert_eq!(helper(&["property", "get", "nope"]).status.code(), Some(1));
    let out = helper(&["property", "set", "--environment", "a", "1"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr_lines(&out)[0].contains("OPSCHAIN_ENVIRONMENT_PROPERTIES"));
    assert_eq!(helper(&["property", "set", "--project", "a.b.c", "x", "--json"]).status.code(), Some(64));
    assert_eq!(helper(&["property", "set", "a", "1"]).status.code(), Some(64), "a level is required");
    // A copy whose top level (where the helper looks) is not JSON is refused with the problem's
    // place, and left as it is.
    std::fs::write(&project, r#"{"a": {"b": 1},}"#).unwrap();
    let out = helper(&["property", "set", "--project", "c", "1"]);
    assert_eq!(out.status.code(), Some(65), "{:?}", stderr_lines(&out));
    assert!(stderr_lines(&out)[0].contains("p.json"), "{:?}", stderr_lines(&out));
    assert_eq!(std::fs::read_to_string(&project).unwrap(), r#"{"a": {"b": 1},}"#);
}

#[test]
fn json_logs_on_request() {
    let repo = fixture_copy("hello");
    let output = runner().arg("--repo").arg(repo.path()).args(["--log-format", "json", "step", "--action", "release:web"]).output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let phases: Vec<Value> = stderr_lines(&output).iter().map(|l| serde_json::from_str::<Value>(l).unwrap()).collect();
    let finished: Vec<&str> = phases.iter().filter(|v| v["message"] == "phase finished").filter_map(|v| v["phase"].as_str()).collect();
    assert_eq!(finished, ["initialise", "action", "completing", "finish"]);
    assert!(phases.iter().all(|v| v["duration_ms"].is_number() || v["message"] != "phase finished"));
}

#[test]
fn usage_errors_exit_64_and_help_teaches() {
    let output = runner().arg("--no-such-flag").output().unwrap();
    assert_eq!(output.status.code(), Some(64));
    let output = runner().arg("--help").output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let help = stdout(&output);
    for word in ["step_context.json", "validate", "OPSCHAIN_REPO_DIR", "124"] {
        assert!(help.contains(word), "help lacks {word}:\n{help}");
    }
}

#[test]
fn secrets_are_masked_in_the_streamed_output_and_lines_carry_stamps() {
    let repo = tempfile::tempdir().unwrap();
    write_actions(repo.path(), "[actions.a]\nrun = 'printf \"tok=%s pw=%s\\n\" \"$RUNNER_SECRET\" \"$DB_PASSWORD\"; printf \"%s\" \"$RUNNER_SECRET\" | base64'\n");
    write_context(
        repo.path(),
        &json!({"context": {"step": {"action": "a"}},
                "project": {"properties": {"opschain": {"env": {"DB_PASSWORD": "hunter2-db-pass", "PLAIN": "visible"}}}},
                "secrets": {"RUNNER_SECRET": "runner-secret-value"}}),
    );
    let output = run_step(repo.path(), &[]);
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    let out = stdout(&output);
    assert!(out.contains("tok=**** pw=****"), "{out}");
    for leaked in ["runner-secret-value", "hunter2-db-pass", "cnVubmVyLXNlY3JldC12YWx1ZQ"] {
        assert!(!out.contains(leaked), "{leaked} leaked: {out}");
    }
    let line = out.lines().find(|l| l.contains("tok=")).unwrap();
    assert!(line.contains(" a stdout| "), "{line}");
    assert!(line.starts_with("20") && line.as_bytes()[10] == b'T', "{line}");
}

#[test]
fn a_command_that_cannot_start_exits_127_with_the_result_written() {
    let repo = tempfile::tempdir().unwrap();
    write_actions(repo.path(), "[actions.a]\ncommand = ['/no/such/program']\n");
    write_context(repo.path(), &json!({"context": {"step": {"action": "a"}}}));
    let output = run_step(repo.path(), &[]);
    assert_eq!(output.status.code(), Some(127), "{:?}", stderr_lines(&output));
    assert_eq!(result(repo.path())["runner"]["exit_status"], 127);
}

#[test]
fn timeout_ends_the_action_with_124_and_the_result_records_it() {
    let repo = tempfile::tempdir().unwrap();
    write_actions(repo.path(), "[actions.a]\nrun = 'opschain-runner property set --project started yes; trap \"\" TERM; sleep 30'\ntimeout_secs = 1\n");
    write_context(repo.path(), &json!({"context": {"step": {"action": "a"}}}));
    let start = std::time::Instant::now();
    let output = run_step(repo.path(), &["step", "--grace-secs", "1"]);
    assert_eq!(output.status.code(), Some(124), "{:?}", stderr_lines(&output));
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
    let r = result(repo.path());
    assert_eq!(r["runner"]["reason"], "timed_out");
    assert_eq!(r["project"]["properties_diff"], json!([{"op": "add", "path": "/started", "value": "yes"}]));
}

#[test]
fn sigterm_to_the_agent_cancels_the_action_exits_143_and_writes_the_result() {
    let repo = tempfile::tempdir().unwrap();
    write_actions(repo.path(), "[actions.a]\nrun = 'opschain-runner property set --environment phase running; touch started; sleep 30'\n");
    write_context(repo.path(), &json!({"context": {"step": {"action": "a"}}}));
    let mut child = runner()
        .arg("--repo")
        .arg(repo.path())
        .args(["step", "--grace-secs", "2"])
        .env("PATH", format!("{}:/usr/bin:/bin", bin_dir().display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = repo.path().join("started");
    for _ in 0..200 {
        if started.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    assert!(started.exists(), "the action never started");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
    let r = result(repo.path());
    assert_eq!(r["runner"]["reason"], "cancelled");
    assert_eq!(r["environment"]["properties_diff"], json!([{"op": "add", "path": "/phase", "value": "running"}]));
}

/// Runs the step of `repo` with its stdout read by a reader that stalls for `stall` first, with
/// `mode` in OPSCHAIN_LOG_MODE (unset: the default); returns what the agent printed and its exit.
fn step_through_stalling_reader(repo: &Path, mode: Option<&str>, stall: std::time::Duration) -> (String, std::process::ExitStatus) {
    use std::io::Read;
    let mut command = runner();
    command.args(["--repo", repo.to_str().unwrap(), "step"]).env_remove("OPSCHAIN_LOG_MODE");
    if let Some(mode) = mode {
        command.env("OPSCHAIN_LOG_MODE", mode);
    }
    let mut child = command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null()).spawn().unwrap();
    std::thread::sleep(stall);
    let mut printed = String::new();
    child.stdout.take().unwrap().read_to_string(&mut printed).unwrap();
    (printed, child.wait().unwrap())
}

/// The agent alone, by default: a million numbered lines through a reader of its stdout that
/// stalls for two seconds all come out, each once, in order. `--log-mode non-blocking`
/// (OPSCHAIN_LOG_MODE) drops instead, and says how many records it dropped where.
#[test]
fn a_stalling_reader_loses_no_line_unless_non_blocking_is_asked_for() {
    let repo = tempfile::tempdir().unwrap();
    write_actions(repo.path(), "[actions.flood]\nrun = 'seq 1 1000000'\n");
    write_context(repo.path(), &json!({"context": {"step": {"action": "flood"}}}));
    let stall = std::time::Duration::from_secs(2);

    let (printed, status) = step_through_stalling_reader(repo.path(), None, stall);
    assert!(status.success(), "{status:?}");
    let numbers: Vec<u64> = printed.lines().filter_map(|l| l.split_once(" stdout| ")?.1.parse().ok()).collect();
    assert_eq!(numbers.len(), 1_000_000, "every line once");
    assert!(numbers.iter().enumerate().all(|(i, n)| *n == i as u64 + 1), "in order, none lost");
    assert!(!printed.contains("dropped"));

    let (printed, status) = step_through_stalling_reader(repo.path(), Some("non-blocking"), stall);
    assert!(status.success(), "{status:?}");
    let kept = printed.lines().filter(|l| l.contains(" stdout| ")).count() as u64;
    let noticed: u64 =
        printed.lines().filter_map(|l| l.split_once(" runner| ")?.1.strip_suffix(" records dropped here: the log writer fell behind")?.parse::<u64>().ok()).sum();
    assert!(noticed > 0, "nothing dropped with a stalled reader");
    assert_eq!(kept + noticed, 1_000_000, "every line kept or counted as dropped");
}
