//! The JSON Schemas of `schemas/` against the code, with a standard validator (Python's
//! `jsonschema`, see `common::schema`), so that the two cannot drift apart:
//!
//! * every fixture validates (step contexts, properties documents, the seeds' samples), and so
//!   does every step result the suite produces (`common::run_step` and the tests that read one
//!   check each against `step_result.schema.json`);
//! * a table of documents gets the same verdict from the schema and from the code (the agent's
//!   `validate`, `opschain-exec`'s secret set reader);
//! * every step context of the fuzz corpus the agent's reading and checks accept, the schema
//!   accepts (the schema cannot say everything the agent refuses: duplicate keys, sizes, paths
//!   that climb out of the repo, so the other direction is the table's).

use std::path::{Path, PathBuf};

use crate::common::schema::{assert_valid, check};
use crate::common::*;
use opschain_runner::context::StepContext;
use opschain_runner::json::{self, SizeLimit};
use opschain_runner::properties::declarations;
use opschain_runner::properties::text::PropertiesText;
use opschain_runner::{env, exec};
use serde_json::{json, Value};

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

/// The schema a fixture file is an instance of, by its name and place; `None` for other files.
fn schema_of(path: &Path) -> Option<&'static str> {
    let name = path.file_name()?.to_str()?;
    let parent = path.parent()?.file_name()?.to_str()?;
    match name {
        "step_context.json" | "step_context_env.json" => Some("step_context"),
        "properties.json" => Some("properties"),
        _ if parent == "environments" && name.ends_with(".json") => Some("properties"),
        "step_result.json" | "step_result.sample.json" => Some("step_result"),
        _ => None,
    }
}

#[test]
fn every_fixture_matches_its_schema() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut checked = Vec::new();
    for path in files_under(&root) {
        // fixtures/malformed holds bad inputs on purpose (the table below covers refusals).
        if path.starts_with(root.join("malformed")) {
            continue;
        }
        let Some(schema) = schema_of(&path) else { continue };
        let document: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_valid(schema, &document, &path.display().to_string());
        checked.push(path.strip_prefix(&root).unwrap().display().to_string());
    }
    // The seed's step context sample, made JSON at its elisions only.
    assert_valid("step_context", &serde_json::from_str(&seed_sample_filled()).unwrap(), "the seed's step context sample");
    checked.push("seed_sample/step_context.sample.txt".into());
    for expected in ["hello/.opschain/step_context.json", "hello/.opschain/properties.json", "demo/.opschain/properties.json", "seed_sample/step_result.sample.json"] {
        assert!(checked.iter().any(|c| c == expected), "{expected} not checked: {checked:?}");
    }
}

/// Whether the agent accepts `context` (its `validate` command: reads and checks everything,
/// writes and runs nothing): exit 0, or 65 with one line.
fn agent_accepts(context: &Value) -> bool {
    let repo = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(repo.path().join(".opschain")).unwrap();
    std::fs::write(repo.path().join(".opschain/actions.toml"), "[actions.a]\nrun = 'true'\n").unwrap();
    std::fs::write(repo.path().join(".opschain/step_context.json"), context.to_string()).unwrap();
    let output = runner().arg("--repo").arg(repo.path()).args(["validate", "--action", "a"]).env_remove("OPSCHAIN_REPO_FOLDER").output().unwrap();
    match output.status.code() {
        Some(0) => true,
        Some(65) => false,
        other => panic!("validate exited {other:?}: {}", String::from_utf8_lossy(&output.stderr)),
    }
}

#[test]
fn the_step_context_schema_and_the_agent_agree() {
    let level = |properties: Value| json!({"project": {"properties": properties}});
    let cases = [
        json!({}),
        json!({"context": null}),
        json!({"context": {"project": {"code": "p", "name": "P", "extra": 1}, "environment": null, "step": {"action": "a"}, "custom": [1]}}),
        json!({"context": {"environment": {"name": "no code"}}}),
        json!({"context": {"step": {"action": 5}}}),
        json!({"project": {"properties": []}}),
        json!({"project": {"properties": {}, "other": 1}}),
        json!({"project": null}),
        json!({"secrets": {"TOKEN": "x"}}),
        json!({"secrets": {"TOKEN": 1}}),
        json!({"secrets": {"BAD-NAME": "x"}}),
        level(json!({"opschain": {"env": {"A": "1"}, "files": {"~/f": {"mode": "0600", "content": "x"}}}})),
        level(json!({"opschain": {"env": {"A": 1}}})),
        level(json!({"opschain": {"env": {"1A": "x"}}})),
        level(json!({"opschain": {"env": "x"}})),
        level(json!({"opschain": {"files": {"~/f": {"mode": "0800"}}}})),
        level(json!({"opschain": {"files": {"~/f": {"mode": "07777"}}}})),
        level(json!({"opschain": {"files": {"~/f": {"mode": "17777"}}}})),
        level(json!({"opschain": {"files": {"~/f": {"format": "yaml"}}}})),
        level(json!({"opschain": {"files": {"~/f": {"format": "json", "content": {"a": [1]}}}}})),
        level(json!({"opschain": {"files": {"~/f": {"content": {"a": 1}}}}})),
        level(json!({"opschain": {"files": {"~/f": {"owner": "root"}}}})),
        level(json!({"opschain": {"files": {"~/dir/": {}}}})),
        level(json!({"opschain": {"files": {"~": {}}}})),
        level(json!({"opschain": {"config": {"build_secrets": ["a", "b"]}}})),
        level(json!({"opschain": {"config": {"build_secrets": ["../x"]}}})),
        level(json!({"opschain": {"config": {"build_secrets": ".."}}})),
        // The seed layout.
        level(json!({"env": {"A": "1"}, "files": {"/path/to/file.txt": {"mode": "0600", "content": "c"}}})),
        level(json!({"env": "production", "files": ["not", "a", "declaration"]})),
        level(json!({"env": {"replicas": 3}})),
        level(json!({"files": {"x": "content"}})),
        level(json!({"files": {"x": {"mode": 600}}})),
    ];
    for case in cases {
        let agent = agent_accepts(&case);
        let schema = check("step_context", &case);
        assert_eq!(agent, schema.is_ok(), "the agent {} {case} but the schema says {schema:?}", if agent { "accepts" } else { "refuses" });
    }
}

#[test]
fn the_build_secret_set_schema_and_opschain_exec_agree() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("set");
    for case in [json!({}), json!({"TOKEN": "x", "_B2": ""}), json!({"TOKEN": 1}), json!({"bad-name": "x"}), json!({"A": null}), json!(["A"]), json!("A=1")] {
        std::fs::write(&path, case.to_string()).unwrap();
        let code = exec::read_secret_set(&path, SizeLimit::DEFAULT);
        let schema = check("build_secret_set", &case);
        assert_eq!(code.is_ok(), schema.is_ok(), "{case}: opschain-exec {:?}, the schema {schema:?}", code.err().map(|e| e.to_string()));
    }
}

#[test]
fn the_step_result_schema_refuses_what_no_runner_writes() {
    let good = json!({
        "project": {"properties_diff": [{"op": "add", "path": "/a~1b", "value": 1}, {"op": "move", "from": "/x", "path": "/y"}, {"op": "remove", "path": "/z"}]},
        "environment": {"properties_diff": []},
        "step": {"properties": {}},
        "steps": {"children": [], "child_execution_strategy": null}
    });
    assert_valid("step_result", &good, "a result without the runner key");
    let mut bad = Vec::new();
    let mut edit = |f: &dyn Fn(&mut Value)| {
        let mut doc = good.clone();
        f(&mut doc);
        bad.push(doc);
    };
    edit(&|d| d["extra"] = json!(1));
    edit(&|d| d["project"]["properties_diff"][0]["op"] = json!("merge"));
    edit(&|d| d["project"]["properties_diff"][0]["path"] = json!("a"));
    edit(&|d| d["project"]["properties_diff"][0].as_object_mut().unwrap().remove("value").map(drop).unwrap_or(()));
    edit(&|d| d["steps"]["child_execution_strategy"] = json!("parallel"));
    edit(&|d| d["steps"]["children"] = json!([{"action": 1}]));
    edit(&|d| d.as_object_mut().unwrap().remove("steps").map(drop).unwrap_or(()));
    edit(&|d| d["runner"] = json!({"version": "1"}));
    for doc in bad {
        assert!(check("step_result", &doc).is_err(), "accepted: {doc}");
    }
}

/// Whether the agent's reading and checks accept `data` as a step context (what `prepare` checks
/// of it, without the repository files).
fn accepted(data: &[u8]) -> bool {
    let Ok(context) = json::parse_or_explain::<StepContext<PropertiesText>, StepContext>(Path::new("step_context.json"), data) else { return false };
    let mut tree: StepContext = StepContext { context: context.context.clone(), secrets: context.secrets.clone(), ..StepContext::default() };
    for (text, level) in [(&context.project.properties, &mut tree.project), (&context.environment.properties, &mut tree.environment)] {
        let own = text.subset(&declarations::MEMBERS);
        if declarations::check_files(&own, Path::new("/opt/opschain"), None).is_err() || declarations::check_env(&own).is_err() {
            return false;
        }
        level.properties.0 = own;
    }
    env::check_secrets(&context.secrets).is_ok() && exec::build_secret_sets(&tree).is_ok()
}

#[test]
fn every_step_context_of_the_fuzz_corpus_the_agent_accepts_the_schema_accepts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/step_context");
    let mut accepted_count = 0;
    for path in files_under(&dir) {
        let data = std::fs::read(&path).unwrap();
        if !accepted(&data) {
            continue;
        }
        // An unknown top-level member is skipped unread, so it may hold a lone surrogate escape,
        // which a `Value` cannot: such inputs are left out (the schema says nothing of them).
        let Ok(document) = serde_json::from_slice::<Value>(&data) else { continue };
        accepted_count += 1;
        if let Err(errors) = check("step_context", &document) {
            panic!("the agent accepts {} but the schema refuses it: {errors}", path.display());
        }
    }
    assert!(accepted_count >= 50, "only {accepted_count} accepted inputs in the corpus");
}
