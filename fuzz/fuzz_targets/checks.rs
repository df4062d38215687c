//! The properties each fuzz target checks, shared with `tests/it/fuzz_corpus.rs`, which replays the
//! committed corpus through the same checks in the ordinary test suite.

use std::path::Path;

use arbitrary::Unstructured;
use opschain_runner::actions::Actions;
use opschain_runner::context::StepContext;
use opschain_runner::properties::declarations;
use opschain_runner::properties::text::{Declaring, PropertiesText};
use opschain_runner::{diff, env, files, json, properties};
use serde_json::{Map, Value};

/// The step context parser and every validation the agent runs on it: never a panic; what it
/// accepts, the declarations' validators accept or refuse with a pointer into the document.
///
/// The agent's own reading, which keeps the properties as text (`properties::text`), accepts
/// exactly the same contexts, refuses the others with the same error, and merges to the same
/// document, member for member and in order; the declaring members it parses
/// (`properties::declarations`) are the tree's own.
pub fn step_context(data: &[u8]) {
    let path = Path::new("step_context.json");
    let trees = json::parse::<StepContext>(path, data);
    let texts = json::parse_or_explain::<StepContext<PropertiesText>, StepContext>(path, data);
    // opschain-exec's one-pass reading accepts and refuses exactly as the agent's, and keeps the
    // declaring members the agent parses.
    let declaring = json::parse_or_explain::<StepContext<Declaring>, StepContext>(path, data);
    match (&texts, &declaring) {
        (Ok(texts), Ok(declaring)) => {
            assert_eq!(declaring.project.properties.0, texts.project.properties.subset(&declarations::MEMBERS));
            assert_eq!(declaring.environment.properties.0, texts.environment.properties.subset(&declarations::MEMBERS));
        }
        (Err(texts), Err(declaring)) => assert_eq!(texts.to_string(), declaring.to_string()),
        (texts, declaring) => panic!("the agent's and opschain-exec's readings disagree: {:?}, {:?}", texts.as_ref().err(), declaring.as_ref().err()),
    }
    let (ctx, texts) = match (trees, texts) {
        (Ok(trees), Ok(texts)) => {
            assert_eq!(texts.project.properties.to_map(), trees.project.properties.0);
            assert_eq!(texts.environment.properties.to_map(), trees.environment.properties.0);
            let spliced = properties::text::merge(&[&texts.project.properties, &texts.environment.properties]);
            let mut merged = trees.project.properties.0.clone();
            properties::merge_objects(&mut merged, trees.environment.properties.0.clone());
            let spliced: Map<String, Value> = serde_json::from_str(&spliced).expect("the splice is JSON");
            assert_eq!(serde_json::to_string(&spliced).unwrap(), serde_json::to_string(&merged).unwrap());
            (trees, texts)
        }
        (Err(trees), Err(texts)) => {
            assert_eq!(texts.to_string(), trees.to_string());
            return;
        }
        (trees, texts) => panic!("the readings disagree: trees {:?}, texts {:?}", trees.err(), texts.err()),
    };
    let mut merged = Map::new();
    for (level, text) in [(&ctx.project.properties.0, &texts.project.properties), (&ctx.environment.properties.0, &texts.environment.properties)] {
        // The agent reads the declarations from the declaring members alone.
        let own = text.subset(&declarations::MEMBERS);
        let expected: Map<String, Value> = level.iter().filter(|(k, _)| declarations::MEMBERS.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(own, expected);
        if let Err(e) = declarations::check_files(&own, Path::new("/opt/opschain"), None) {
            assert!(e.pointer.starts_with("/opschain/files") || e.pointer.starts_with("/files"), "{e:?}");
        }
        if let Err(e) = declarations::check_env(&own) {
            assert!(e.pointer.starts_with("/opschain/env") || e.pointer.starts_with("/env"), "{e:?}");
        }
        declarations::merge_into(&mut merged, &own, &declarations::SEED_MEMBERS);
    }
    if let Ok(specs) = files::parse(&merged, Path::new("/opt/opschain"), None) {
        for spec in specs {
            // Paths under the repo never climb out of it.
            if let files::Target::Beneath { path, .. } = &spec.target {
                assert!(path.components().all(|c| matches!(c, std::path::Component::Normal(_))), "{spec:?}");
            }
            assert!(spec.mode <= 0o7777);
        }
    }
    let _ = env::parse(&merged);
}

/// The actions.toml parser: never a panic; a file it accepts plans every action it defines.
pub fn actions_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(actions) = Actions::parse(Path::new("actions.toml"), text) else { return };
    for (name, _) in &actions.actions {
        let plan = actions.plan(name).expect("an accepted file plans each of its actions");
        assert_eq!(plan.last().map(|(n, _)| n.as_str()), Some(name.as_str()));
    }
}

/// diff then apply: for any two documents, applying diff(a, b) to a gives b exactly.
pub fn diff_apply(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let (Ok(a), Ok(b)) = (value(&mut u, 0), value(&mut u, 0)) else { return };
    // Half the time, make b an edit of a: the realistic case, where structure is shared.
    let b = if u.arbitrary::<bool>().unwrap_or(false) { edit(a.clone(), &mut u) } else { b };
    let patch = diff::diff(&a, &b);
    let mut patched = a.clone();
    json_patch::patch(&mut patched, &patch).unwrap_or_else(|e| panic!("patch does not apply: {e}\n{a}\n{b}\n{patch:?}"));
    assert_eq!(patched, b, "diff of {a} -> {b} gave {patch:?}");
    if a == b {
        assert!(patch.0.is_empty(), "equal documents gave {patch:?}");
    }
}

const KEYS: [&str; 6] = ["a", "b", "c", "~", "/", "a/b~c"];

fn value(u: &mut Unstructured, depth: usize) -> arbitrary::Result<Value> {
    let kind = if depth >= 4 { u.int_in_range(0..=3)? } else { u.int_in_range(0..=5)? };
    Ok(match kind {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => Value::from(u.int_in_range(-3i64..=3)?),
        3 => Value::String(KEYS[u.choose_index(KEYS.len())?].to_string()),
        4 => {
            let n = u.int_in_range(0..=6)?;
            Value::Array((0..n).map(|_| value(u, depth + 1)).collect::<arbitrary::Result<_>>()?)
        }
        _ => {
            let n = u.int_in_range(0..=4)?;
            let mut map = Map::new();
            for _ in 0..n {
                map.insert(KEYS[u.choose_index(KEYS.len())?].to_string(), value(u, depth + 1)?);
            }
            Value::Object(map)
        }
    })
}

fn edit(mut doc: Value, u: &mut Unstructured) -> Value {
    let Ok(edits) = u.int_in_range(0..=3u8) else { return doc };
    for _ in 0..edits {
        let Ok(replacement) = value(u, 3) else { break };
        match &mut doc {
            Value::Array(items) if !items.is_empty() => {
                let i = u.choose_index(items.len()).unwrap_or(0);
                match u.int_in_range(0..=2u8).unwrap_or(0) {
                    0 => items.insert(i, replacement),
                    1 => {
                        items.remove(i);
                    }
                    _ => items[i] = replacement,
                }
            }
            Value::Object(map) => {
                let key = KEYS[u.choose_index(KEYS.len()).unwrap_or(0)].to_string();
                if u.arbitrary::<bool>().unwrap_or(false) {
                    map.shift_remove(&key);
                } else {
                    map.insert(key, replacement);
                }
            }
            other => *other = replacement,
        }
    }
    doc
}
