//! `opschain-exec` through the real binary, called by that name (a symlink) and as
//! `opschain-runner exec --`: context sources, precedence, build secrets, errors, and that the
//! command replaces the process (its status, its signal, its pid).

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;
use serde_json::{json, Value};

/// A scratch repo with an `opschain-exec` link to the agent and a secrets directory.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("repo/.opschain")).unwrap();
        std::fs::create_dir_all(dir.path().join("secrets")).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_opschain-runner"), dir.path().join("opschain-exec")).unwrap();
        Scratch { dir }
    }

    fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    fn folder(&self, name: &str) -> PathBuf {
        self.repo().join(".opschain").join(name)
    }

    fn write_json(&self, path: &Path, value: &Value) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, serde_json::to_vec(value).unwrap()).unwrap();
    }

    fn secret_set(&self, name: &str, value: &Value) {
        self.write_json(&self.dir.path().join("secrets").join(name), value);
    }

    /// `opschain-exec ARGS...` with the scratch repo and secrets directory.
    fn exec(&self) -> Command {
        let mut command = Command::new(self.dir.path().join("opschain-exec"));
        command
            .env("OPSCHAIN_REPO_DIR", self.repo())
            .env("OPSCHAIN_BUILD_SECRETS_DIR", self.dir.path().join("secrets"))
            .env_remove("OPSCHAIN_REPO_FOLDER")
            .env("PATH", "/usr/bin:/bin");
        command
    }

    /// Runs `/bin/sh -c SCRIPT` through opschain-exec.
    fn sh(&self, script: &str) -> Output {
        self.exec().args(["/bin/sh", "-c", script]).output().unwrap()
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn step_context(project_env: Value, environment_env: Value) -> Value {
    json!({
        "context": {"project": {"code": "demo"}, "environment": {"code": "dev"}},
        "project": {"properties": {"opschain": {"env": project_env}}},
        "environment": {"properties": {"opschain": {"env": environment_env}}}
    })
}

#[test]
fn step_context_json_sets_the_merged_env_as_the_agent_does() {
    let s = Scratch::new();
    s.write_json(&s.folder("properties.json"), &json!({"opschain": {"env": {"FROM_REPO": "r", "LEVEL": "repo"}}}));
    s.write_json(&s.folder("environments/dev.json"), &json!({"opschain": {"env": {"LEVEL": "repo-dev", "REPO_DEV": "rd"}}}));
    s.write_json(&s.folder("step_context.json"), &step_context(json!({"LEVEL": "project", "P": "p"}), json!({"LEVEL": "environment"})));
    let output = s.sh("echo \"$FROM_REPO $REPO_DEV $P $LEVEL\"");
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    assert_eq!(stdout(&output), "r rd p environment\n");
    assert!(output.stderr.is_empty(), "exec prints nothing on success: {:?}", stderr_lines(&output));
}

#[test]
fn build_env_context_is_used_when_there_is_no_step_context_and_loses_to_it() {
    let s = Scratch::new();
    s.write_json(&s.folder("step_context_env.json"), &step_context(json!({"WHICH": "build-env"}), json!({})));
    assert_eq!(stdout(&s.sh("echo $WHICH")), "build-env\n");
    s.write_json(&s.folder("step_context.json"), &step_context(json!({"WHICH": "step"}), json!({})));
    assert_eq!(stdout(&s.sh("echo $WHICH")), "step\n");
}

fn write_zip(path: &Path, entry: &str, body: &[u8]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    zip.start_file(entry, options).unwrap();
    zip.write_all(body).unwrap();
    zip.finish().unwrap();
}

#[test]
fn zipped_context_is_read_last_and_errors_name_the_entry() {
    let s = Scratch::new();
    let context = serde_json::to_vec(&step_context(json!({"ZIPPED": "yes"}), json!({}))).unwrap();
    write_zip(&s.folder("step_context.json.zip"), "step_context.json", &context);
    let output = s.sh("echo $ZIPPED");
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    assert_eq!(stdout(&output), "yes\n");

    // A zip without the entry, and one with an invalid env name, stop before the command.
    write_zip(&s.folder("step_context.json.zip"), "other.json", &context);
    let output = s.sh("touch ran");
    assert_eq!(output.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&output.stderr).contains("holds no step_context.json"), "{:?}", stderr_lines(&output));
    let bad = serde_json::to_vec(&step_context(json!({"1BAD": "x"}), json!({}))).unwrap();
    write_zip(&s.folder("step_context.json.zip"), "step_context.json", &bad);
    let output = s.sh("touch ran");
    assert_eq!(output.status.code(), Some(65));
    let lines = stderr_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("step_context.json.zip/step_context.json") && lines[0].contains("/project/properties/opschain/env/1BAD"), "{lines:?}");
    std::fs::write(s.folder("step_context.json.zip"), b"not a zip").unwrap();
    assert_eq!(s.sh("touch ran").status.code(), Some(65));
    assert!(!s.repo().join("ran").exists() && !Path::new("ran").exists());
}

#[test]
fn invalid_env_name_exits_65_with_file_and_pointer_and_does_not_run_the_command() {
    let s = Scratch::new();
    s.write_json(&s.folder("step_context.json"), &step_context(json!({"OK": "1"}), json!({"NOT-PORTABLE": "x"})));
    let marker = s.dir.path().join("ran");
    let output = s.exec().arg("/usr/bin/touch").arg(&marker).output().unwrap();
    assert_eq!(output.status.code(), Some(65));
    let lines = stderr_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("opschain-exec: "), "{lines:?}");
    assert!(lines[0].contains("step_context.json") && lines[0].contains("at /environment/properties/opschain/env/NOT-PORTABLE"), "{lines:?}");
    assert!(!marker.exists(), "the command ran");

    // A repository properties file is checked the same way and named.
    std::fs::remove_file(s.folder("step_context.json")).unwrap();
    s.write_json(&s.folder("properties.json"), &json!({"opschain": {"env": {"A": 1}}}));
    s.write_json(&s.folder("step_context_env.json"), &json!({}));
    let output = s.exec().arg("/usr/bin/touch").arg(&marker).output().unwrap();
    assert_eq!(output.status.code(), Some(65));
    assert!(stderr_lines(&output)[0].contains("properties.json: at /opschain/env/A"), "{:?}", stderr_lines(&output));
    assert!(!marker.exists(), "the command ran");
}

#[test]
fn malformed_context_exits_65_naming_the_line() {
    let s = Scratch::new();
    std::fs::write(s.folder("step_context.json"), "{\"project\": {\"properties\": {}},\n \"project\": {}}").unwrap();
    let output = s.sh("echo ran");
    assert_eq!(output.status.code(), Some(65));
    assert!(stdout(&output).is_empty());
    let line = &stderr_lines(&output)[0];
    assert!(line.contains("duplicate field `project`") && line.contains("line 2"), "{line}");
}

#[test]
fn secrets_win_over_properties_and_sets_apply_in_order() {
    let s = Scratch::new();
    let mut context = step_context(json!({"TOKEN": "property", "KEEP": "property"}), json!({}));
    context["project"]["properties"]["opschain"]["config"] = json!({"build_secrets": ["p1", "p2"]});
    context["environment"]["properties"]["opschain"]["config"] = json!({"build_secrets": ["e1"]});
    s.write_json(&s.folder("step_context_env.json"), &context);
    s.secret_set("p1", &json!({"TOKEN": "p1", "FROM_P1": "p1", "SHARED": "p1"}));
    s.secret_set("p2", &json!({"SHARED": "p2", "ONLY_P2": "p2"}));
    s.secret_set("e1", &json!({"SHARED": "e1"}));
    s.secret_set("opschain-build-env", &json!({"DEFAULT": "should-not-apply"}));
    let output = s.sh("echo \"$TOKEN $KEEP $FROM_P1 $ONLY_P2 $SHARED [$DEFAULT]\"");
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    assert_eq!(stdout(&output), "p1 property p1 p2 e1 []\n");

    // A missing set is skipped; naming the default set brings it back, in its place.
    context["environment"]["properties"]["opschain"]["config"] = json!({"build_secrets": ["missing", "opschain-build-env", "e1"]});
    s.write_json(&s.folder("step_context_env.json"), &context);
    assert_eq!(stdout(&s.sh("echo \"$SHARED [$DEFAULT]\"")), "e1 [should-not-apply]\n");
}

#[test]
fn the_bundle_is_the_build_secrets_when_mounted() {
    // The builder merges every set that applies into one `opschain-build-secrets` file; when it is
    // there, opschain-exec takes it (over the properties and runner secrets) and reads no set by
    // name, whatever the context lists.
    let s = Scratch::new();
    let mut context = step_context(json!({"A": "property", "B": "property"}), json!({}));
    context["project"]["properties"]["opschain"]["config"] = json!({"build_secrets": ["p1"]});
    s.write_json(&s.folder("step_context_env.json"), &context);
    s.secret_set("p1", &json!({"A": "p1-by-name"}));
    s.secret_set("opschain-build-secrets", &json!({"B": "from-bundle", "C": "from-bundle"}));
    assert_eq!(stdout(&s.sh("echo \"$A $B $C\"")), "property from-bundle from-bundle\n");
    // A bad bundle stops before the command, naming the file and the pointer, never a value.
    s.secret_set("opschain-build-secrets", &json!({"bad name": "hidden-value"}));
    let output = s.sh("echo ran");
    assert_eq!(output.status.code(), Some(65));
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("opschain-build-secrets: at /bad name") && !text.contains("hidden-value"), "{text}");
}

#[test]
fn default_set_applies_when_nothing_is_configured_and_runner_secrets_sit_between() {
    let s = Scratch::new();
    let mut context = step_context(json!({"A": "property", "B": "property", "C": "property"}), json!({}));
    context["secrets"] = json!({"B": "runner-secret", "C": "runner-secret"});
    s.write_json(&s.folder("step_context.json"), &context);
    s.secret_set("opschain-build-env", &json!({"C": "build-secret"}));
    assert_eq!(stdout(&s.sh("echo \"$A $B $C\"")), "property runner-secret build-secret\n");
}

#[test]
fn a_bad_secret_set_exits_65_without_printing_its_values() {
    let s = Scratch::new();
    s.write_json(&s.folder("step_context.json"), &step_context(json!({}), json!({})));
    s.secret_set("opschain-build-env", &json!({"GOOD": "hunter2-value", "bad name": "other-value"}));
    let output = s.sh("echo ran");
    assert_eq!(output.status.code(), Some(65));
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("opschain-build-env: at /bad name"), "{text}");
    assert!(!text.contains("hunter2") && !text.contains("other-value"), "{text}");
    s.secret_set("opschain-build-env", &json!({"NUM": 123456789}));
    let output = s.sh("echo ran");
    assert_eq!(output.status.code(), Some(65));
    assert!(!String::from_utf8_lossy(&output.stderr).contains("123456789"));
}

#[test]
fn no_context_runs_the_command_unchanged() {
    let s = Scratch::new();
    s.secret_set("opschain-build-env", &json!({"SECRET": "s"}));
    let output = s.exec().env("INHERITED", "kept").args(["/bin/sh", "-c", "echo \"$INHERITED [$SECRET] $0 $1\"", "zero", "a b"]).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    assert_eq!(stdout(&output), "kept [] zero a b\n");
    // Compare the whole environment with the one a direct exec gets.
    let direct = Command::new("/usr/bin/env").env_clear().env("X", "1").output().unwrap();
    let wrapped = s.exec().env_clear().env("X", "1").env("OPSCHAIN_REPO_DIR", s.repo()).arg("/usr/bin/env").output().unwrap();
    let wrapped = stdout(&wrapped).lines().filter(|l| !l.starts_with("OPSCHAIN_REPO_DIR=")).collect::<Vec<_>>().join("\n") + "\n";
    assert_eq!(stdout(&direct), wrapped);
}

#[test]
fn the_command_replaces_the_process_status_signal_and_pid_are_its_own() {
    let s = Scratch::new();
    s.write_json(&s.folder("step_context.json"), &step_context(json!({"A": "1"}), json!({})));
    assert_eq!(s.sh("exit 7").status.code(), Some(7));
    let output = s.sh("kill -TERM $$");
    assert_eq!(output.status.signal(), Some(15), "{:?}", output.status);
    assert_eq!(output.status.code(), None);
    let child = s.exec().args(["/bin/sh", "-c", "echo $$"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    assert_eq!(stdout(&output).trim(), pid.to_string(), "the command runs in opschain-exec's own process");
}

#[test]
fn not_found_is_127_and_no_command_is_usage() {
    let s = Scratch::new();
    let output = s.exec().arg("no-such-command-xyz").output().unwrap();
    assert_eq!(output.status.code(), Some(127));
    assert!(stderr_lines(&output)[0].contains("no-such-command-xyz"));
    assert_eq!(s.exec().output().unwrap().status.code(), Some(64));
    // Arguments are the command's, never options of opschain-exec.
    assert_eq!(stdout(&s.exec().args(["/bin/echo", "--help", "-x"]).output().unwrap()), "--help -x\n");
}

#[test]
fn runner_exec_subcommand_is_the_same_wrapper() {
    let s = Scratch::new();
    s.write_json(&s.folder("step_context.json"), &step_context(json!({"VIA": "subcommand"}), json!({})));
    s.secret_set("opschain-build-env", &json!({"SECRET": "from-set"}));
    let output = runner()
        .arg("--repo")
        .arg(s.repo())
        .arg("exec")
        .arg("--secrets-dir")
        .arg(s.dir.path().join("secrets"))
        .args(["--", "/bin/sh", "-c", "echo \"$VIA $SECRET\"; exit 3"])
        .env_remove("OPSCHAIN_REPO_FOLDER")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "{:?}", stderr_lines(&output));
    assert_eq!(stdout(&output), "subcommand from-set\n");
    assert!(output.stderr.is_empty(), "no log lines: {:?}", stderr_lines(&output));
}

#[test]
fn repo_folder_comes_from_the_environment() {
    let s = Scratch::new();
    s.write_json(&s.repo().join(".mintpress/step_context.json"), &step_context(json!({"FOLDER": "mintpress"}), json!({})));
    assert_eq!(stdout(&s.exec().env("OPSCHAIN_REPO_FOLDER", ".mintpress").args(["/bin/sh", "-c", "echo $FOLDER"]).output().unwrap()), "mintpress\n");
    assert_eq!(stdout(&s.sh("echo [$FOLDER]")), "[]\n");
}

#[test]
fn exec_reads_the_context_as_strictly_as_the_agent_does() {
    let s = Scratch::new();
    std::fs::write(s.folder("actions.toml"), "[actions.show]\nrun = 'true'\n").unwrap();
    let servers: Vec<Value> = (0..2000).map(|i| json!({"name": format!("server-{i}"), "roles": ["web"], "tier": i % 3})).collect();
    let mut context = step_context(json!({"BIG": "yes"}), json!({}));
    context["project"]["properties"]["servers"] = json!(servers);
    s.write_json(&s.folder("step_context.json"), &context);
    let output = s.sh("echo $BIG");
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    assert_eq!(stdout(&output), "yes\n");

    // Each of these the agent refuses; so does opschain-exec, with the same pointer, running nothing.
    let good = serde_json::to_string(&context).unwrap();
    for (bad, pointer) in [
        (good.replacen("\"server-1999\"", "\"server-1999\" oops", 1), "at /project/properties/servers/1999/"),
        (good.replacen("\"environment\":{\"code\":\"dev\"}", "\"environment\":{\"code\":\"dev\"},\"step\":{\"action\":5}", 1), "at /context/step/action: "),
        (good.replacen("\"project\":{\"code\":\"demo\"}", "\"project\":{\"code\":7}", 1), "at /context/project/code: "),
        (good.replacen("\"environment\":{\"properties\":{", "\"environment\":{\"propertys\":{},\"properties\":{", 1), "at /environment/propertys: "),
        (good.replacen("\"tier\":2}", "\"tier\":2,\"tier\":3}", 1), "at /project/properties/servers/2: duplicate key"),
        (good.replacen("\"BIG\":\"yes\"", "\"BIG\":\"yes\",\"BIG\":\"no\"", 1), "at /project/properties/opschain/env: duplicate key"),
    ] {
        assert_ne!(bad, good, "the edit for {pointer} applies");
        std::fs::write(s.folder("step_context.json"), &bad).unwrap();
        let output = s.sh("echo ran");
        assert_eq!(output.status.code(), Some(65), "{pointer}: {:?}", stderr_lines(&output));
        assert!(stdout(&output).is_empty());
        let line = &stderr_lines(&output)[0];
        assert!(line.contains("step_context.json") && line.contains(pointer) && line.contains("line 1, column"), "{line}");
        let agent = run_step(&s.repo(), &["step", "--action", "show"]);
        assert_eq!(agent.status.code(), Some(65), "{pointer}: {:?}", stderr_lines(&agent));
        let agent_line = stderr_lines(&agent).join("\n");
        assert!(agent_line.contains(pointer), "{agent_line}");
    }
}
