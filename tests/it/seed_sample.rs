//! The seed's own step context sample (`fixtures/seed_sample`, copied as written) through the real
//! binaries: the agent writes its files and exports its env vars, `opschain-exec` exports them, and
//! a build context keeps them for the image build. Then the rules of the two property layouts:
//! both in one level, a later level winning across layouts, data that is no declaration, and a
//! wrong shape refused with its pointer, alike in the agent and `opschain-exec`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;
use serde_json::{json, Value};

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A repo whose only action prints the sample's variable.
fn repo_with_context(context: &str) -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(repo.path().join(".opschain")).unwrap();
    std::fs::write(repo.path().join(".opschain/actions.toml"), "[actions.show]\nrun = 'echo \"VARIABLE_NAME=$VARIABLE_NAME\"'\n").unwrap();
    std::fs::write(repo.path().join(".opschain/step_context.json"), context).unwrap();
    repo
}

/// `opschain-exec /bin/sh -c SCRIPT` (a symlink named so) with `repo` as its repo.
fn exec_sh(repo: &Path, script: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("opschain-exec");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_opschain-runner"), &link).unwrap();
    Command::new(&link)
        .args(["/bin/sh", "-c", script])
        .env("OPSCHAIN_REPO_DIR", repo)
        .env("OPSCHAIN_BUILD_SECRETS_DIR", dir.path().join("no-secrets"))
        .env_remove("OPSCHAIN_REPO_FOLDER")
        .output()
        .unwrap()
}

#[test]
fn the_filled_sample_differs_from_the_verbatim_one_at_its_elisions_only() {
    let sample = seed_sample_verbatim();
    assert!(sample.contains("\"files\": {\n        \"/path/to/file.txt\""), "the fixture is the seed's sample");
    let kept: Vec<&str> = sample.lines().filter(|l| l.trim() != "...").collect();
    let filled = fill_elisions(&sample);
    let filled: Vec<&str> = filled.lines().collect();
    assert_eq!(kept.len(), filled.len());
    let changed: Vec<(&str, &str)> = kept.iter().zip(&filled).filter(|(a, b)| a != b).map(|(a, b)| (*a, *b)).collect();
    assert_eq!(changed.len(), 5, "{changed:?}");
    for (was, now) in changed {
        assert!(was.contains("...") || was == format!("{now},"), "{was:?} became {now:?}");
    }
    serde_json::from_str::<Value>(&filled.join("\n")).expect("the filled sample is JSON");
}

#[test]
fn the_agent_writes_the_samples_files_and_exports_its_env() {
    let repo = repo_with_context(&seed_sample_filled());
    let root = repo.path().join("root");
    let output = run_step(repo.path(), &["step", "--action", "show", "--files-root", root.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    assert!(stdout(&output).contains("VARIABLE_NAME=variable value"), "{}", stdout(&output));
    for file in ["path/to/file.txt", "path/to/another_file.txt"] {
        let path = root.join(file);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "contents of the file", "{file}");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "{file}");
    }
    let result: Value = serde_json::from_slice(&std::fs::read(repo.path().join(".opschain/step_result.json")).unwrap()).unwrap();
    let merged = &result["step"]["properties"];
    assert_eq!(merged["project_property"], "value");
    assert_eq!(merged["environment_property"], "value");
    assert_eq!(merged["env"], json!({"VARIABLE_NAME": "variable value"}));
    assert_eq!(merged["files"].as_object().unwrap().len(), 2, "both levels' files, merged: {merged}");
    assert_eq!(result["project"]["properties_diff"], json!([]));
}

#[test]
fn the_verbatim_sample_is_refused_where_it_is_not_json() {
    let repo = repo_with_context(&seed_sample_verbatim());
    let output = run_step(repo.path(), &["step", "--action", "show"]);
    assert_eq!(output.status.code(), Some(65), "{:?}", stderr_lines(&output));
    let line = stderr_lines(&output).join("\n");
    assert!(line.contains("step_context.json") && line.contains("line 6"), "{line}");
}

#[test]
fn opschain_exec_exports_the_samples_env() {
    let repo = repo_with_context(&seed_sample_filled());
    let output = exec_sh(repo.path(), "printf %s \"$VARIABLE_NAME\"");
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(stdout(&output), "variable value");
}

fn git(repo: &Path, args: &[&str]) {
    let output = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"])
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn a_build_context_of_the_sample_gives_opschain_exec_its_env() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(project.join("VERSION"), "1\n").unwrap();
    git(&project, &["init", "-q"]);
    git(&project, &["add", "-A"]);
    git(&project, &["commit", "-q", "-m", "one"]);
    let context = dir.path().join("step_context.json");
    std::fs::write(&context, seed_sample_filled()).unwrap();
    let out = dir.path().join("out");
    let output = runner()
        .arg("--repo")
        .arg(&project)
        .arg("build-context")
        .arg("--out")
        .arg(&out)
        .arg("--context")
        .arg(&context)
        .env_remove("OPSCHAIN_REPO_FOLDER")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    let env_context: Value = serde_json::from_slice(&std::fs::read(out.join("step_context_env.json")).unwrap()).unwrap();
    for level in ["project", "environment"] {
        assert_eq!(env_context[level]["properties"], json!({"env": {"VARIABLE_NAME": "variable value"}}), "{level}");
    }
    // Inside the image build, opschain-exec finds it as step_context_env.json.
    let image_repo: PathBuf = dir.path().join("opt-opschain");
    std::fs::create_dir_all(image_repo.join(".opschain")).unwrap();
    std::fs::copy(out.join("step_context_env.json"), image_repo.join(".opschain/step_context_env.json")).unwrap();
    let output = exec_sh(&image_repo, "printf %s \"$VARIABLE_NAME\"");
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(stdout(&output), "variable value");
}

/// A context of two levels' properties.
fn levels(project: Value, environment: Value) -> String {
    json!({"project": {"properties": project}, "environment": {"properties": environment}}).to_string()
}

#[test]
fn both_layouts_merge_and_a_later_level_wins_in_the_agent_and_opschain_exec() {
    let context = levels(
        json!({"env": {"A": "project-top", "B": "project-top", "C": "project-top"}, "opschain": {"env": {"B": "project-nested"}},
               "files": {"~/f": {"content": "top", "mode": "0600"}}, "opschain_unrelated": 1}),
        json!({"env": {"C": "environment-top"}, "opschain": {"files": {"~/f": {"content": "nested"}}}}),
    );
    let repo = repo_with_context(&context);
    std::fs::write(repo.path().join(".opschain/actions.toml"), "[actions.show]\nrun = 'echo \"A=$A B=$B C=$C\"'\n").unwrap();
    let expected = "A=project-top B=project-nested C=environment-top";
    let output = run_step(repo.path(), &["step", "--action", "show"]);
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    assert!(stdout(&output).contains(expected), "{}", stdout(&output));
    // The file: the environment's content over the project's mode.
    let f = repo.path().join("f");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "nested");
    assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
    let output = exec_sh(repo.path(), "echo \"A=$A B=$B C=$C\"");
    assert_eq!(stdout(&output).trim(), expected);
}

#[test]
fn a_top_level_env_that_is_no_object_is_data_and_runs() {
    let repo = repo_with_context(&levels(json!({"env": "production", "files": 3}), json!({})));
    std::fs::write(repo.path().join(".opschain/actions.toml"), "[actions.show]\nrun = 'echo \"env=${env-unset}\"; cat \"$OPSCHAIN_PROPERTIES\"'\n").unwrap();
    let output = run_step(repo.path(), &["step", "--action", "show"]);
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    let out = stdout(&output);
    assert!(out.contains("env=unset") && out.contains(r#""env":"production""#), "{out}");
    let said = stderr_lines(&output).join("\n");
    assert!(said.contains("/project/properties/env") && said.contains("not a declaration"), "{said}");
    assert_eq!(exec_sh(repo.path(), "true").status.code(), Some(0));
}

#[test]
fn a_wrong_entry_of_a_top_level_declaration_is_refused_with_its_pointer_alike() {
    for (properties, pointer) in [
        (json!({"env": {"OK": "1", "replicas": 3}}), "/environment/properties/env/replicas"),
        (json!({"env": {"not-portable": "1"}}), "/environment/properties/env/not-portable"),
    ] {
        let repo = repo_with_context(&levels(json!({}), properties));
        let agent = run_step(repo.path(), &["step", "--action", "show"]);
        assert_eq!(agent.status.code(), Some(65), "{:?}", stderr_lines(&agent));
        assert!(stderr_lines(&agent).join("\n").contains(pointer), "{:?}", stderr_lines(&agent));
        let exec = exec_sh(repo.path(), "true");
        assert_eq!(exec.status.code(), Some(65));
        assert!(String::from_utf8_lossy(&exec.stderr).contains(pointer), "{}", String::from_utf8_lossy(&exec.stderr));
    }
    // A files entry is checked by the agent (opschain-exec reads env declarations only).
    let repo = repo_with_context(&levels(json!({"files": {"~/x": {"mode": "rw"}}}), json!({})));
    let agent = run_step(repo.path(), &["step", "--action", "show"]);
    assert_eq!(agent.status.code(), Some(65));
    assert!(stderr_lines(&agent).join("\n").contains("/project/properties/files/~0~1x/mode"), "{:?}", stderr_lines(&agent));
    assert!(!repo.path().join("x").exists());
}
