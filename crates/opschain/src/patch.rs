//! The message of a properties diff that does not apply, or conflicts with changes made while its
//! step ran, in the spirit of OpsChain's: the paths both changed, the properties the step started
//! from, its patch, the patched original, the current properties, and how to resolve it.

use serde_json::{Map, Value};

/// A diff that did not apply to the current properties.
#[derive(Debug, Clone)]
pub struct Conflict {
    /// `project` or `environment`.
    pub level: &'static str,
    /// The step whose diff it is.
    pub step_id: i64,
    /// The step's action.
    pub action: String,
    /// The change of the step.
    pub change_id: i64,
    /// The project's code.
    pub project: String,
    /// The environment's code.
    pub environment: String,
    /// Why it could not be applied: json_patch's reason, or the conflict.
    pub error: String,
    /// The JSON pointers that both the step and, since it started, another step or a user
    /// changed differently (empty when the diff itself does not apply).
    pub paths: Vec<String>,
    /// The properties the step started with.
    pub original: Map<String, Value>,
    /// The step's RFC 6902 patch.
    pub patch: json_patch::Patch,
    /// The properties when the step ended.
    pub current: Map<String, Value>,
}

/// Why the diff did not apply, and who else changed the properties: one line or two.
fn cause(c: &Conflict) -> String {
    if c.paths.is_empty() {
        format!("{error}.\nThe {level} properties were changed by another step or a user while this step ran.", error = c.error, level = c.level)
    } else {
        format!(
            "{error}.\nThe step's changes were merged with those another step or a user made while it ran; these paths were changed by both, differently: {paths}. None of the step's changes is applied.",
            error = c.error,
            paths = c.paths.join(", ")
        )
    }
}

fn pretty<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("<unprintable: {e}>"))
}

/// Explains a conflict, multi-line.
pub fn explain(c: &Conflict) -> String {
    let mut patched = Value::Object(c.original.clone());
    let patched = match json_patch::patch(&mut patched, &c.patch) {
        Ok(()) => pretty(&patched),
        Err(e) => format!("<the patch does not apply to the original either: {e}>"),
    };
    format!(
        "The {level} properties changes of step {step} ({action}) could not be applied: {cause}\n\
         Original {level} properties (when the step started):\n{original}\n\
         Patch (RFC 6902) made by the step:\n{patch}\n\
         Patched original properties (what the step meant to leave):\n{patched}\n\
         Current {level} properties:\n{current}\n\
         To resolve: edit the current {level} properties so that they hold what the step meant to leave \
         (`opschain properties edit --project {project}{env_hint}`), or make the steps that change the same keys run \
         sequentially, then re-run the step with `opschain change retry {change}`.",
        level = c.level,
        step = c.step_id,
        action = c.action,
        cause = cause(c),
        original = pretty(&c.original),
        patch = pretty(&c.patch),
        current = pretty(&c.current),
        project = c.project,
        env_hint = if c.level == "environment" { format!(" --environment {}", c.environment) } else { String::new() },
        change = c.change_id,
    )
}
