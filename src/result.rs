//! The step output: `<repo>/<folder>/step_result.json`, in the seeds' shape exactly, plus one added
//! top-level key, `runner`, for the facts the agent adds (exit status, signal, phase timings,
//! versions).
//!
//! ```json
//! {"project": {"properties_diff": [...]}, "environment": {"properties_diff": [...]},
//!  "step": {"properties": {...}},
//!  "steps": {"children": [{"action": "..."}], "child_execution_strategy": null},
//!  "runner": {...}}
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::actions::RunAs;
use crate::atomic::{self, AtomicError, Durability};
use crate::supervise::Reason;

/// Mode of step_result.json.
pub const RESULT_MODE: u32 = 0o644;

/// The whole step_result.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    /// The project level's diff.
    pub project: LevelDiff,
    /// The environment level's diff.
    pub environment: LevelDiff,
    /// The merged properties the action used.
    pub step: StepProperties,
    /// The child steps and how they run.
    pub steps: Children,
    /// What the agent adds: how the action ended, timings, versions. Absent in results written by
    /// other runners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<RunnerFacts>,
}

/// One writable level's change, as an RFC 6902 patch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LevelDiff {
    /// The patch that turns the level's original properties into the changed ones.
    pub properties_diff: json_patch::Patch,
}

/// `step.properties`.
#[derive(Debug, Clone, Deserialize)]
pub struct StepProperties {
    /// The merged properties the action used, as JSON text of one value: the agent writes the
    /// runtime copy's text here verbatim instead of serialising the document a second time, and
    /// [`StepResult::write`] copies it into the result as it is (the agent made it from documents
    /// it has checked). Read from a result, it is checked as JSON.
    #[serde(deserialize_with = "raw_text")]
    pub properties: String,
}

/// Reads a JSON value as its text, checked and kept byte for byte.
fn raw_text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let raw = Box::<RawValue>::deserialize(deserializer)?;
    Ok(Box::<str>::from(raw).into_string())
}

/// Serialised as the text it holds, once that text is checked to be JSON (so a value built with
/// text that is not JSON fails to serialise rather than writing it).
impl Serialize for StepProperties {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let raw = RawValue::from_string(self.properties.clone()).map_err(serde::ser::Error::custom)?;
        let mut out = serializer.serialize_struct("StepProperties", 1)?;
        out.serialize_field("properties", &raw)?;
        out.end()
    }
}

impl StepProperties {
    /// The merged properties, parsed (empty when the text is not a JSON object).
    pub fn parsed(&self) -> Map<String, Value> {
        serde_json::from_str(&self.properties).unwrap_or_default()
    }
}

/// Equal when the documents are equal, whatever their formatting.
impl PartialEq for StepProperties {
    fn eq(&self, other: &StepProperties) -> bool {
        self.properties == other.properties || self.parsed() == other.parsed()
    }
}

/// `steps`: the children to run after this step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Children {
    /// The child steps, in order.
    pub children: Vec<Child>,
    /// `null` with no children, else how they run.
    pub child_execution_strategy: Option<RunAs>,
}

/// One child step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Child {
    /// The action the child step runs.
    pub action: String,
}

/// The `runner` key: facts of this agent's run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunnerFacts {
    /// This agent's version.
    pub version: String,
    /// The action the step ran.
    pub action: String,
    /// How the step's command ended; `null` when the action runs no command.
    pub reason: Option<Reason>,
    /// The agent's exit status.
    pub exit_status: i32,
    /// The exit code of the last command, when it exited.
    pub code: Option<i32>,
    /// The signal that ended the last command, when one did.
    pub signal: Option<i32>,
    /// Phase durations.
    pub phases: Phases,
    /// Every command run, prerequisites first.
    pub jobs: Vec<JobFacts>,
    /// What went wrong after the action ran (e.g. it left invalid JSON in a properties copy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Durations of the step's phases, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Phases {
    /// Reading the inputs, writing the files and the runtime copies.
    pub initialise_ms: f64,
    /// Running the prerequisites and the action.
    pub action_ms: f64,
    /// Reading back, diffing and writing the result.
    pub completing_ms: f64,
}

/// One command run by the step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobFacts {
    /// The action whose command it was.
    pub action: String,
    /// How it ended.
    pub reason: Reason,
    /// The status it maps to.
    pub exit_status: i32,
    /// Its duration in milliseconds.
    pub duration_ms: f64,
}

impl Children {
    /// Children with their strategy: `null` when there are none.
    pub fn new(children: Vec<String>, run_as: RunAs) -> Children {
        let strategy = (!children.is_empty()).then_some(run_as);
        Children { children: children.into_iter().map(|action| Child { action }).collect(), child_execution_strategy: strategy }
    }
}

impl StepResult {
    /// Writes the result atomically (temp file, rename), without fsync: the controller reads it on
    /// the same host once the agent has exited, and its own store is what is durable; a step whose
    /// machine loses power before that is run again.
    ///
    /// Written member by member, in the order and form the derived `Serialize` gives, with
    /// `step.properties` copied in as it is rather than checked again: for a few MB of properties
    /// that check would be a large share of the agent's step.
    pub fn write(&self, path: &Path) -> Result<(), AtomicError> {
        atomic::write_with(path, RESULT_MODE, Durability::Rename, |out| {
            out.write_all(b"{\"project\":")?;
            serde_json::to_writer(&mut *out, &self.project)?;
            out.write_all(b",\"environment\":")?;
            serde_json::to_writer(&mut *out, &self.environment)?;
            out.write_all(b",\"step\":{\"properties\":")?;
            out.write_all(self.step.properties.as_bytes())?;
            out.write_all(b"},\"steps\":")?;
            serde_json::to_writer(&mut *out, &self.steps)?;
            if let Some(runner) = &self.runner {
                out.write_all(b",\"runner\":")?;
                serde_json::to_writer(&mut *out, runner)?;
            }
            out.write_all(b"}\n")
        })
    }
}

/// Parses the child steps file: one action name a line; blank lines and `#` comments skipped.
pub fn parse_child_steps(text: &str) -> Vec<String> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_shape_round_trips() {
        let seed = r#"{"project": {"properties_diff": [{"op": "add", "path": "/new_element", "value": "test_value"}]},
            "environment": {"properties_diff": []}, "step": {"properties": {"opschain": {}}},
            "steps": {"children": [{"action": "sample:hello_world_1:run"}], "child_execution_strategy": null}}"#;
        let parsed: StepResult = serde_json::from_str(seed).unwrap();
        let back = serde_json::to_value(&parsed).unwrap();
        assert_eq!(back, serde_json::from_str::<Value>(seed).unwrap());
    }

    #[test]
    fn write_gives_what_serde_gives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("step_result.json");
        let mut result: StepResult = serde_json::from_str(
            r#"{"project": {"properties_diff": [{"op": "add", "path": "/a", "value": 1}]}, "environment": {"properties_diff": []},
                "step": {"properties": {"b": [1, {"c": "d\\u0041"}]}}, "steps": {"children": [{"action": "x"}], "child_execution_strategy": "parallel"}}"#,
        )
        .unwrap();
        for runner in [None, Some(RunnerFacts { version: "1".into(), action: "x".into(), exit_status: 3, ..RunnerFacts::default() })] {
            result.runner = runner;
            result.write(&path).unwrap();
            let written = std::fs::read_to_string(&path).unwrap();
            assert_eq!(written, serde_json::to_string(&result).unwrap() + "\n");
            assert_eq!(serde_json::from_str::<StepResult>(&written).unwrap(), result);
        }
    }

    #[test]
    fn properties_that_are_not_json_do_not_serialise() {
        let properties = StepProperties { properties: "{\"a\": ".into() };
        assert!(serde_json::to_string(&properties).is_err());
    }

    #[test]
    fn strategy_is_null_without_children() {
        assert_eq!(Children::new(vec![], RunAs::Parallel).child_execution_strategy, None);
        assert_eq!(Children::new(vec!["a".into()], RunAs::Parallel).child_execution_strategy, Some(RunAs::Parallel));
    }
}
