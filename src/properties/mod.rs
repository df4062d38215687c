//! Properties: the four sources, their deep merge, and edits by path.
//!
//! The merged view an action sees is the deep merge, in this order (later wins), of:
//! 1. the repository properties, `<repo>/<folder>/properties.json`;
//! 2. the repository's environment properties, `<repo>/<folder>/environments/<code>.json`;
//! 3. the project properties of the step context;
//! 4. the environment properties of the step context.
//!
//! Objects merge key by key; arrays and scalars are replaced whole. Only the project and environment
//! levels are writable by an action. The files and env vars the merged properties declare, in
//! either of their two layouts, are read by [`declarations`].

pub mod declarations;
mod keys;
pub mod splice;
pub mod text;

use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use self::text::PropertiesText;

use crate::exit::{ExitStatus, Sysexit};
use crate::json::{self, JsonError, SizeLimit, StrictObject};
use crate::layout::Layout;

/// Why properties could not be loaded or edited.
#[derive(Debug, thiserror::Error)]
pub enum PropertiesError {
    /// A repository properties file is not a valid JSON object.
    #[error(transparent)]
    Read(#[from] JsonError),
    /// An edit named a path that is not a valid property path.
    #[error("invalid property path {path:?}: {reason}")]
    Path {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An edit would descend through a value that is not an object.
    #[error("cannot set {path:?}: {at:?} is not an object")]
    NotAnObject {
        /// The path as given.
        path: String,
        /// The prefix of the path that is not an object.
        at: String,
    },
}

impl PropertiesError {
    /// The exit status of this failure: the file's own (see [`JsonError::exit_status`]) for an
    /// unreadable file, 65 for an invalid edit.
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            PropertiesError::Read(e) => e.exit_status(),
            PropertiesError::Path { .. } | PropertiesError::NotAnObject { .. } => Sysexit::DataErr.into(),
        }
    }
}

/// Deep-merges `overlay` into `base`: objects key by key, anything else replaced whole. A key new
/// to `base` is added after its existing keys; an existing key keeps its place.
pub fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => merge_objects(base, overlay),
        (base, overlay) => *base = overlay,
    }
}

/// Deep-merges the object `overlay` into `base` (see [`merge`]), moving its values: a caller that
/// keeps its overlay passes a clone, which costs no more than copying each value on its way in.
pub fn merge_objects(base: &mut Map<String, Value>, overlay: Map<String, Value>) {
    for (key, value) in overlay {
        match base.get_mut(&key) {
            Some(existing) => merge(existing, value),
            None => {
                base.insert(key, value);
            }
        }
    }
}

/// Properties sources, each with the file it was read from, in merge order.
pub type Sources<T> = Vec<(PathBuf, T)>;

/// Reads the repository properties sources that exist: `properties.json`, then
/// `environments/<code>.json` when an environment code is known, each with its path, in merge order.
pub fn read_repository(layout: &Layout, environment: Option<&str>, limit: SizeLimit) -> Result<Sources<Map<String, Value>>, PropertiesError> {
    let sources = read_sources::<StrictObject>(layout, environment, limit)?;
    Ok(sources.into_iter().map(|(path, StrictObject(map))| (path, map)).collect())
}

/// As [`read_repository`], each source kept as JSON text (see [`text`]): what the agent's step merges.
pub fn read_repository_text(layout: &Layout, environment: Option<&str>, limit: SizeLimit) -> Result<Sources<PropertiesText>, PropertiesError> {
    read_sources::<PropertiesText>(layout, environment, limit)
}

/// The repository sources that exist, each read as a `T`; an invalid one is explained as a
/// [`StrictObject`] would be (see [`json::parse_or_explain`]).
fn read_sources<T: DeserializeOwned>(layout: &Layout, environment: Option<&str>, limit: SizeLimit) -> Result<Sources<T>, PropertiesError> {
    let mut paths = vec![layout.repo_properties()];
    paths.extend(environment.map(|code| layout.repo_environment_properties(code)));
    let mut sources = Vec::new();
    for path in paths {
        match json::read_bytes(&path, limit).and_then(|bytes| json::parse_or_explain::<T, StrictObject>(&path, &bytes)) {
            Ok(source) => sources.push((path, source)),
            Err(JsonError::Missing { .. }) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(sources)
}

/// Splits a property path into keys. A path starting with `/` is an RFC 6901 JSON pointer
/// (`/opschain/env/A`); any other is dotted (`opschain.env.A`).
pub fn parse_path(path: &str) -> Result<Vec<String>, PropertiesError> {
    let bad = |reason| PropertiesError::Path { path: path.to_string(), reason };
    if let Some(pointer) = path.strip_prefix('/') {
        pointer
            .split('/')
            .map(|token| {
                if token.contains('~') && !valid_escapes(token) {
                    return Err(bad("a `~` must be followed by 0 or 1"));
                }
                Ok(token.replace("~1", "/").replace("~0", "~"))
            })
            .collect()
    } else if path.is_empty() {
        Err(bad("empty"))
    } else {
        let keys: Vec<String> = path.split('.').map(str::to_string).collect();
        if keys.iter().any(String::is_empty) {
            return Err(bad("empty key between dots"));
        }
        Ok(keys)
    }
}

fn valid_escapes(token: &str) -> bool {
    let bytes = token.as_bytes();
    bytes.iter().enumerate().all(|(i, &b)| b != b'~' || matches!(bytes.get(i + 1), Some(b'0' | b'1')))
}

/// Sets the property at `keys` to `value`, creating objects on the way.
pub fn set(doc: &mut Map<String, Value>, keys: &[String], value: Value, path: &str) -> Result<(), PropertiesError> {
    let Some((last, parents)) = keys.split_last() else {
        return Err(PropertiesError::Path { path: path.to_string(), reason: "empty" });
    };
    let mut current = doc;
    for (i, key) in parents.iter().enumerate() {
        let entry = current.entry(key.clone()).or_insert_with(|| Value::Object(Map::new()));
        current = match entry {
            Value::Object(map) => map,
            _ => return Err(PropertiesError::NotAnObject { path: path.to_string(), at: keys[..=i].join(".") }),
        };
    }
    current.insert(last.clone(), value);
    Ok(())
}

/// Removes the property at `keys`; returns whether it was there.
pub fn remove(doc: &mut Map<String, Value>, keys: &[String]) -> bool {
    let Some((last, parents)) = keys.split_last() else { return false };
    let mut current = doc;
    for key in parents {
        current = match current.get_mut(key) {
            Some(Value::Object(map)) => map,
            _ => return false,
        };
    }
    current.shift_remove(last).is_some()
}

/// Returns the property at `keys`, if any.
pub fn get<'a>(doc: &'a Map<String, Value>, keys: &[String]) -> Option<&'a Value> {
    let (first, rest) = keys.split_first()?;
    rest.iter().try_fold(doc.get(first)?, |value, key| value.as_object()?.get(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_is_deep_for_objects_and_replaces_arrays_and_scalars() {
        let mut base = json!({"a": {"x": 1, "y": [1, 2]}, "b": 1, "c": {"k": 1}});
        merge(&mut base, json!({"a": {"y": [3], "z": 2}, "b": {"n": 1}, "c": 5}));
        assert_eq!(base, json!({"a": {"x": 1, "y": [3], "z": 2}, "b": {"n": 1}, "c": 5}));
    }

    #[test]
    fn paths_dotted_and_pointer() {
        assert_eq!(parse_path("a.b").unwrap(), vec!["a", "b"]);
        assert_eq!(parse_path("/a~1b/c~0").unwrap(), vec!["a/b", "c~"]);
        assert!(parse_path("a..b").is_err());
        assert!(parse_path("/a~2").is_err());
    }

    #[test]
    fn set_get_remove() {
        let mut doc = Map::new();
        let keys = parse_path("a.b.c").unwrap();
        set(&mut doc, &keys, json!(1), "a.b.c").unwrap();
        assert_eq!(get(&doc, &keys), Some(&json!(1)));
        assert!(set(&mut doc, &parse_path("a.b.c.d").unwrap(), json!(2), "a.b.c.d").is_err());
        assert!(remove(&mut doc, &keys));
        assert!(!remove(&mut doc, &keys));
        assert_eq!(Value::Object(doc), json!({"a": {"b": {}}}));
    }
}
