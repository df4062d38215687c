//! The step input: `<repo>/<folder>/step_context.json`, in the seeds' layout.
//!
//! ```text
//! {"context": {"project", "environment", "change", "step", "user"},   // optional (local runs)
//!  "project": {"properties": {...}},
//!  "environment": {"properties": {...}},
//!  "secrets": {"NAME": "value"}}                                        // extension, optional
//! ```
//! Known members are strictly typed (a record is an object, never an array of its fields: see
//! [`json::Object`]); unknown members of `context` are kept as they are (OpsChain
//! adds context values over time). `secrets` is this runner's extension: runner secrets exported to
//! the action over any `opschain.env` property of the same name, and masked in all output.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::json::{self, JsonError, SizeLimit, StrictObject};
use crate::properties::splice;
use crate::properties::text::PropertiesText;

/// The parsed `step_context.json`.
///
/// `P` is how each level's properties are held: parsed into a tree (the default), or kept as JSON
/// text ([`PropertiesText`]), as the agent's step does: it splices them rather than re-serialising.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(bound(deserialize = "P: Deserialize<'de> + Default"))]
pub struct StepContext<P = StrictObject> {
    /// The step's context values; absent in local runs.
    #[serde(default, deserialize_with = "json::optional_object")]
    pub context: Option<ContextValues>,
    /// The project level, whose properties an action may change.
    #[serde(default, deserialize_with = "json::object")]
    pub project: Level<P>,
    /// The environment level, whose properties an action may change.
    #[serde(default, deserialize_with = "json::object")]
    pub environment: Level<P>,
    /// Runner secrets (extension): exported to the action and masked. Empty by default.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
}

/// One writable level of properties (project or environment).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, bound(deserialize = "P: Deserialize<'de> + Default"))]
pub struct Level<P = StrictObject> {
    /// The level's properties: a JSON object, `{}` when absent.
    #[serde(default)]
    pub properties: P,
}

/// The `context` member: what OpsChain knows of the step.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ContextValues {
    /// The project the change belongs to.
    #[serde(default, deserialize_with = "json::optional_object")]
    pub project: Option<Named>,
    /// The environment the change runs in; its `code` picks the repository environment file.
    #[serde(default, deserialize_with = "json::optional_object")]
    pub environment: Option<Named>,
    /// The change; kept as given.
    #[serde(default)]
    pub change: Option<StrictObject>,
    /// The step; its `action` names the action to run.
    #[serde(default, deserialize_with = "json::optional_object")]
    pub step: Option<StepValues>,
    /// The user who started the change; kept as given.
    #[serde(default)]
    pub user: Option<StrictObject>,
    /// Any other context values, kept as given.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// A project or environment in the context: its code and whatever else OpsChain puts there.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Named {
    /// The code (e.g. `dev`); required.
    pub code: String,
    /// The display name.
    #[serde(default)]
    pub name: Option<String>,
    /// Other values, kept as given.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// The step in the context.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StepValues {
    /// The action this step runs; `--action` overrides it.
    #[serde(default)]
    pub action: Option<String>,
    /// Other values, kept as given.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl StepContext {
    /// Reads and validates the step context at `path`.
    pub fn read(path: &Path, limit: SizeLimit) -> Result<StepContext, JsonError> {
        json::read_file(path, limit)
    }
}

impl StepContext<PropertiesText> {
    /// Reads and validates the step context at `path`, keeping each level's properties as JSON
    /// text. Accepts and refuses the same documents as [`StepContext::read`], with the same errors.
    pub fn read_text(path: &Path, limit: SizeLimit) -> Result<StepContext<PropertiesText>, JsonError> {
        StepContext::read_text_with(path, limit, &mut Vec::new())
    }

    /// [`StepContext::read_text`], reading the file into `bytes` (see [`json::read_bytes_into`]).
    /// The project properties are spelled over the file's text in that buffer
    /// ([`PropertiesText::from_members_in`]) and take it: a context of a few MB of project
    /// properties is not copied. `bytes` is left empty then, else holding the file's bytes.
    pub fn read_text_with(path: &Path, limit: SizeLimit, bytes: &mut Vec<u8>) -> Result<StepContext<PropertiesText>, JsonError> {
        json::read_bytes_into(path, limit, bytes)?;
        if let Some((mut context, project)) = std::str::from_utf8(bytes).ok().and_then(read_spliced) {
            if let Some(members) = project {
                context.project.properties = match PropertiesText::from_members_in(std::mem::take(bytes), members) {
                    Ok(properties) => properties,
                    // Should a member not fit in place after all: spelled in a copy.
                    Err((kept, members)) => {
                        *bytes = kept;
                        let members = members.into_iter().map(|(k, r)| (Cow::Owned(k), r));
                        PropertiesText::from_members(std::str::from_utf8(bytes).expect("checked above"), members)
                    }
                };
            }
            return Ok(context);
        }
        json::parse_or_explain::<StepContext<PropertiesText>, StepContext>(path, bytes)
    }
}

/// Reads a step context of the usual shape with the byte scanner: one strict pass over the whole
/// document ([`splice::check_members`]) finds the members down to each level's properties'
/// top-level members, whose text is then spliced as it is; only `context` and `secrets`, small,
/// go through serde. So a context of a few MB of properties is read in one pass rather than
/// serde's and the strict check's. `None` for anything else (invalid, or of an unusual shape):
/// serde then reads it, or explains what is wrong with it. The project properties are left empty
/// and their top-level members returned instead (each key and its value's range in `text`), for
/// the caller to spell in `text`'s own buffer; `None` when the context has none.
#[allow(clippy::type_complexity)]
fn read_spliced(text: &str) -> Option<(StepContext<PropertiesText>, Option<Vec<(String, Range<usize>)>>)> {
    if !text.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{') {
        return None;
    }
    let found = splice::check_members(text, 3).ok()?;
    let inside = |depth: usize, outer: &std::ops::Range<usize>| {
        let outer = outer.clone();
        found.iter().filter(move |f| f.depth == depth && f.value.start >= outer.start && f.value.end <= outer.end)
    };
    let mut context = StepContext::<PropertiesText>::default();
    let mut project = None;
    for member in found.iter().filter(|f| f.depth == 1) {
        let (key, range) = (&member.key, &member.value);
        let value = &text[range.clone()];
        match key.as_ref() {
            "context" => context.context = serde_json::from_str(value).ok()?,
            "secrets" => context.secrets = serde_json::from_str(value).ok()?,
            "project" | "environment" => {
                if !value.starts_with('{') {
                    return None;
                }
                for properties in inside(2, range) {
                    let within = &properties.value;
                    if properties.key != "properties" || !text[within.clone()].starts_with('{') {
                        return None;
                    }
                    let members = inside(3, within).map(|f| (f.key.clone(), f.value.clone()));
                    if key == "project" {
                        project = Some(members.map(|(k, r)| (k.into_owned(), r)).collect());
                    } else {
                        context.environment.properties = PropertiesText::from_members(text, members);
                    }
                }
            }
            _ => {}
        }
    }
    Some((context, project))
}

impl<P> StepContext<P> {
    /// The action named by `context.step.action`, if any.
    pub fn action(&self) -> Option<&str> {
        self.context.as_ref()?.step.as_ref()?.action.as_deref()
    }

    /// The environment code (`context.environment.code`), if any.
    pub fn environment_code(&self) -> Option<&str> {
        Some(self.context.as_ref()?.environment.as_ref()?.code.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<StepContext, JsonError> {
        json::parse(Path::new("step_context.json"), s.as_bytes())
    }

    #[test]
    fn reads_the_seed_layout() {
        let ctx = parse(
            r#"{"context": {"project": {"code": "demo", "name": "Demo"}, "environment": {"code": "dev"},
                "step": {"action": "deploy", "id": 3}, "change": {"id": 1}, "user": {"name": "u"}},
               "project": {"properties": {"a": 1}}, "environment": {"properties": {"b": [1]}}}"#,
        )
        .unwrap();
        assert_eq!(ctx.action(), Some("deploy"));
        assert_eq!(ctx.environment_code(), Some("dev"));
        assert_eq!(ctx.project.properties.0["a"], 1);
    }

    #[test]
    fn the_usual_shape_is_read_by_the_scanner_as_serde_reads_it() {
        let text = r#"{"context": {"project": {"code": "demo"}, "environment": {"code": "dev"}, "step": {"action": "deploy", "id": 3}, "extra": [1]},
               "project": {"properties": {"a": 1, "o": {"k": [true, null]}}}, "environment": {"properties": {}}, "secrets": {"S": "v"}, "other": {"x": 1}}"#;
        assert!(read_spliced(text).expect("the scanner reads the usual shape").1.is_some());
        // Read from a file, the project properties spelled in the file's buffer.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("step_context.json");
        std::fs::write(&path, text).unwrap();
        let mut bytes = Vec::new();
        let fast = StepContext::read_text_with(&path, SizeLimit::DEFAULT, &mut bytes).unwrap();
        assert!(bytes.is_empty(), "the buffer went to the project properties");
        let slow: StepContext<PropertiesText> = json::parse(Path::new("step_context.json"), text.as_bytes()).unwrap();
        assert_eq!(fast.project.properties.text(), slow.project.properties.text());
        assert_eq!(fast.project.properties.spans(), slow.project.properties.spans());
        assert_eq!(fast.environment.properties.text(), "{}");
        assert_eq!(fast.project.properties.text(), r#"{"a":1,"o":{"k": [true, null]}}"#);
        assert_eq!((fast.action(), fast.environment_code()), (Some("deploy"), Some("dev")));
        assert_eq!(fast.secrets, slow.secrets);
        // Anything unusual is left to serde: a level with another member, a level that is not an
        // object, properties that are not an object, a duplicate member.
        for odd in [
            r#"{"project": {"properties": {}, "x": 1}}"#,
            r#"{"project": [{"properties": {}}]}"#,
            r#"{"project": {"properties": []}}"#,
            r#"{"project": {"properties": {}}, "project": {"properties": {}}}"#,
            r#"{"secrets": {"S": 1}}"#,
        ] {
            assert!(read_spliced(odd).is_none(), "{odd}");
        }
    }

    #[test]
    fn context_is_optional() {
        let ctx = parse(r#"{"project": {"properties": {}}, "environment": {"properties": {}}}"#).unwrap();
        assert!(ctx.context.is_none());
        assert_eq!(ctx.action(), None);
    }

    #[test]
    fn wrong_types_name_their_path() {
        let err = parse(r#"{"project": {"properties": []}}"#).unwrap_err().to_string();
        assert!(err.contains("at /project/properties"), "{err}");
        let err = parse(r#"{"context": {"step": {"action": 5}}}"#).unwrap_err().to_string();
        assert!(err.contains("/context/step/action"), "{err}");
        let err = parse(r#"{"secrets": {"A": 1}}"#).unwrap_err().to_string();
        assert!(err.contains("/secrets/A"), "{err}");
    }

    #[test]
    fn records_are_objects_never_arrays_of_their_fields() {
        for (bad, pointer) in [
            ("[]", ""),
            (r#"{"project": []}"#, "at /project: "),
            (r#"{"project": [{}]}"#, "at /project: "),
            (r#"{"context": []}"#, "at /context: "),
            (r#"{"context": {"environment": ["dev"]}}"#, "at /context/environment: "),
            (r#"{"context": {"step": ["deploy"]}}"#, "at /context/step: "),
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(pointer) && err.contains("expected a JSON object"), "{bad}: {err}");
            let text = json::parse_or_explain::<StepContext<PropertiesText>, StepContext>(Path::new("step_context.json"), bad.as_bytes());
            assert_eq!(text.unwrap_err().to_string(), err);
        }
    }
}
