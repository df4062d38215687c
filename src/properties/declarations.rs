//! Where a properties document declares the files to write and the env vars to export: two
//! layouts, both read.
//!
//! * `opschain.files` / `opschain.env`, the layout of later OpsChain versions:
//!   `{"opschain": {"files": {...}, "env": {...}}}`.
//! * The seed layout (the step runner page's "Step context JSON" sample): `files` and `env`
//!   directly under the properties, in the same shapes: `{"files": {...}, "env": {...}}`.
//!
//! The rules, for one document (a repository properties file, or a level of the step context):
//!
//! * `opschain.files` and `opschain.env` are declarations whatever their type: one that is not an
//!   object is an error at its pointer (`/opschain/env`).
//! * A top-level `files` or `env` that is an object is a declaration, checked exactly as its
//!   `opschain` counterpart (errors name `/files/<path>` or `/env/<NAME>`). One that is not an
//!   object (`"env": "production"`) is ordinary data: it declares nothing and stays in the merged
//!   properties as it is. A property named `env` or `files` that holds other data as an object is
//!   therefore refused with the pointer of its first entry that is no declaration; such data
//!   belongs under another name.
//! * A document holding both layouts declares the union: the top-level object first, the
//!   `opschain` one merged over it as properties merge (objects key by key), so for the same file
//!   path or variable name the `opschain` entry wins.
//!
//! Across documents the merge order decides first (environment over project over repository),
//! whichever layout each document uses: each document's declarations are put in the `opschain`
//! layout ([`declared`]), then merged in merge order.

use std::path::Path;

use serde_json::{Map, Value};

use crate::json::PointerError;
use crate::{env, files};

/// The top-level members of a properties document that can hold declarations: `opschain` and the
/// seed layout's `files` and `env`. Reading these members is enough to know every declaration.
pub const MEMBERS: [&str; 3] = ["opschain", "files", "env"];

/// The declarations the seed layout puts at the top level, each under the same name in `opschain`.
pub const SEED_MEMBERS: [&str; 2] = ["files", "env"];

/// The seed-layout members of `properties` that are present but are not objects, so ordinary data
/// rather than declarations (see the module docs); for a caller that says so.
pub fn data_members(properties: &Map<String, Value>) -> impl Iterator<Item = &'static str> + '_ {
    SEED_MEMBERS.into_iter().filter(|name| properties.get(*name).is_some_and(|v| !v.is_object()))
}

/// The seed layout's top-level declaration `name` (`files` or `env`) of `properties`: the member
/// when it is an object, else none.
fn seed<'a>(properties: &'a Map<String, Value>, name: &str) -> Option<&'a Map<String, Value>> {
    properties.get(name).and_then(Value::as_object)
}

/// The `opschain` layout's declaration `name` of `properties`, when `opschain` is an object that
/// has it (of any type).
fn opschain<'a>(properties: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    properties.get("opschain").and_then(Value::as_object).and_then(|o| o.get(name))
}

/// Checks the env vars `properties` declares, in both layouts, each entry where it is declared.
pub fn check_env(properties: &Map<String, Value>) -> Result<(), PointerError> {
    if let Some(env) = seed(properties, "env") {
        env::parse_object(&Value::Object(env.clone()), "/env")?;
    }
    env::parse(properties).map(drop)
}

/// Checks the files `properties` declares, in both layouts, each entry where it is declared
/// (`repo` and `files_root` as [`files::parse`] takes them).
pub fn check_files(properties: &Map<String, Value>, repo: &Path, files_root: Option<&Path>) -> Result<(), PointerError> {
    if let Some(declared) = seed(properties, "files") {
        files::parse_object(&Value::Object(declared.clone()), "/files", repo, files_root)?;
    }
    files::parse(properties, repo, files_root).map(drop)
}

/// The declaration `name` (`files` or `env`) of one document with both layouts combined: the
/// top-level object, with `opschain.<name>` merged over it. `None` when the document declares no
/// such thing. An `opschain.<name>` that is not an object (refused by the checks) counts as absent.
pub fn declared(properties: &Map<String, Value>, name: &str) -> Option<Map<String, Value>> {
    let top = seed(properties, name);
    let nested = opschain(properties, name).and_then(Value::as_object);
    match (top, nested) {
        (None, None) => None,
        (Some(one), None) | (None, Some(one)) => Some(one.clone()),
        (Some(top), Some(nested)) => {
            let mut both = top.clone();
            super::merge_objects(&mut both, nested.clone());
            Some(both)
        }
    }
}

/// Merges the declarations of `properties` (both layouts, see [`declared`]) into `into`, in the
/// `opschain` layout: `{"opschain": {"files": {...}, "env": {...}}}`, which is what
/// [`files::parse`] and [`env::parse`] read. Call it for each document in merge order.
pub fn merge_into(into: &mut Map<String, Value>, properties: &Map<String, Value>, names: &[&str]) {
    let mut opschain = Map::new();
    for name in names {
        if let Some(declaration) = declared(properties, name) {
            opschain.insert((*name).to_string(), Value::Object(declaration));
        }
    }
    if !opschain.is_empty() {
        super::merge_objects(into, Map::from_iter([("opschain".to_string(), Value::Object(opschain))]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn the_seed_layout_declares_as_the_opschain_layout_does() {
        let seed = map(json!({"env": {"A": "1"}, "files": {"~/f": {"content": "x", "mode": "0600"}}}));
        let nested = map(json!({"opschain": {"env": {"A": "1"}, "files": {"~/f": {"content": "x", "mode": "0600"}}}}));
        let (mut a, mut b) = (Map::new(), Map::new());
        merge_into(&mut a, &seed, &SEED_MEMBERS);
        merge_into(&mut b, &nested, &SEED_MEMBERS);
        assert_eq!(a, b);
        assert_eq!(env::parse(&a).unwrap(), [("A".to_string(), "1".to_string())]);
    }

    #[test]
    fn both_layouts_in_one_document_merge_with_opschain_winning() {
        let both = map(json!({
            "env": {"A": "top", "B": "top"},
            "opschain": {"env": {"B": "nested", "C": "nested"}},
            "files": {"~/f": {"content": "top", "mode": "0600"}},
        }));
        let mut merged = Map::new();
        merge_into(&mut merged, &both, &SEED_MEMBERS);
        let vars = env::parse(&merged).unwrap();
        assert_eq!(vars, [("A".into(), "top".into()), ("B".into(), "nested".into()), ("C".into(), "nested".into())]);
        assert_eq!(merged["opschain"]["files"]["~/f"]["mode"], "0600");
    }

    #[test]
    fn a_later_document_wins_whichever_layout_it_uses() {
        let project = map(json!({"opschain": {"env": {"A": "project"}}}));
        let environment = map(json!({"env": {"A": "environment"}}));
        let mut merged = Map::new();
        merge_into(&mut merged, &project, &["env"]);
        merge_into(&mut merged, &environment, &["env"]);
        assert_eq!(env::parse(&merged).unwrap(), [("A".to_string(), "environment".to_string())]);
    }

    #[test]
    fn a_top_level_member_that_is_no_object_is_data() {
        let props = map(json!({"env": "production", "files": ["a"]}));
        check_env(&props).unwrap();
        check_files(&props, Path::new("/opt/opschain"), None).unwrap();
        assert_eq!(data_members(&props).collect::<Vec<_>>(), ["files", "env"]);
        let mut merged = Map::new();
        merge_into(&mut merged, &props, &SEED_MEMBERS);
        assert!(merged.is_empty());
    }

    #[test]
    fn a_wrong_entry_of_a_top_level_object_is_refused_at_its_pointer() {
        let err = check_env(&map(json!({"env": {"OK": "1", "replicas": 3}}))).unwrap_err();
        assert_eq!(err.pointer, "/env/replicas");
        let err = check_env(&map(json!({"env": {"bad-name": "1"}}))).unwrap_err();
        assert_eq!(err.pointer, "/env/bad-name");
        let err = check_files(&map(json!({"files": {"/a~b": "content"}})), Path::new("/opt/opschain"), None).unwrap_err();
        assert_eq!(err.pointer, "/files/~1a~0b");
        let err = check_files(&map(json!({"files": {"x": {"mode": "9"}}})), Path::new("/opt/opschain"), None).unwrap_err();
        assert_eq!(err.pointer, "/files/x/mode");
        // The opschain layout keeps its own rule: not an object is an error.
        assert_eq!(check_env(&map(json!({"opschain": {"env": "x"}}))).unwrap_err().pointer, "/opschain/env");
    }
}
