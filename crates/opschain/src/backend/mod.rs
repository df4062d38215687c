//! Where a step runs. A backend takes one step (its action, the change's commit, its step
//! context), runs the agent on it, streams the agent's output line by line to a [`LogSink`], and
//! returns the agent's exit status with the parsed `step_result.json`.
//!
//! * [`process`] (the default): a fresh copy of the change's checkout in a temporary sandbox, the
//!   agent as a child process ([`crate::child::spawn`]: no fork of the controller). No Docker
//!   needed.
//! * [`docker`]: a container per step, of the step image [`crate::image::build`] builds (or reuses).
//! * `kubernetes` (cargo feature `kubernetes`): a Job per step in a cluster, the image through
//!   the registry.
//!
//! [`stream`] is the transport for engines that share no disk with the controller. Starting,
//! streaming and waiting for the agent or a `docker` command is [`crate::child`]'s; this module
//! holds the [`Backend`] trait and what it passes: the [`StepJob`] in, the [`StepOutput`] and
//! [`StepResultFields`] out.

pub mod docker;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod process;
pub mod sandbox;
pub mod stream;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde_json::Value;

use crate::child::LogSink;
use crate::image::build::ImageRequest;
use opschain_runner::result::{Children, LevelDiff, RunnerFacts};

/// Why a backend could not run a step (the step's own failure is a [`StepOutput`] instead).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The checkout of the change's commit failed.
    #[error("cannot check out the change's commit for step {step}")]
    Checkout {
        /// The step.
        step: i64,
        /// The cause.
        #[source]
        source: super::repo::RepoError,
    },
    /// A sandbox file or directory cannot be made or removed.
    #[error("cannot prepare the sandbox {}", path.display())]
    Sandbox {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The agent or a docker command cannot be started or waited for, or went past its bound.
    #[error(transparent)]
    Child(#[from] crate::child::ChildError),
    /// The step's build secret sets cannot be given: the `build_secrets` list is invalid, a set it
    /// names does not exist, or a set holds an invalid name or value (never quoted).
    #[error("cannot give step {step} its build secrets")]
    BuildSecrets {
        /// The step.
        step: i64,
        /// The cause.
        #[source]
        source: opschain_runner::step_image::BuildError,
    },
    /// The step's image cannot be built, reused or fetched.
    #[error(transparent)]
    StepImage(#[from] crate::image::build::ImageError),
    /// The Kubernetes backend could not run the step.
    #[cfg(feature = "kubernetes")]
    #[error("cannot run step {step} on Kubernetes")]
    Kubernetes {
        /// The step.
        step: i64,
        /// The cause (boxed: the Kubernetes client's errors are large, and every step's result
        /// carries this type).
        #[source]
        source: Box<kubernetes::KubernetesError>,
    },
    /// A file of the step's sandbox cannot be written or read as the controller must: a link or
    /// another kind of file where the step context goes, a linked repository folder.
    #[error("refused the sandbox of step {step}")]
    SandboxFile {
        /// The step.
        step: i64,
        /// The cause.
        #[source]
        source: sandbox::SandboxFileError,
    },
    /// A call to the Docker engine gave no answer in time, or was stopped by a cancel.
    #[error(transparent)]
    Engine(#[from] crate::image::engine::EngineError),
}

/// One step to run.
#[derive(Debug, Clone)]
pub struct StepJob {
    /// The change.
    pub change_id: i64,
    /// The step.
    pub step_id: i64,
    /// The action.
    pub action: String,
    /// The git repository.
    pub repo: PathBuf,
    /// The revision the change was created with (`GIT_REV`).
    pub git_rev: String,
    /// The commit it resolved to (`GIT_SHA`).
    pub commit: String,
    /// The whole step_context.json.
    pub context: ContextDocument,
    /// The build secret sets that apply to the step's image, in order (filled only for a backend
    /// whose [`Backend::builds_images`] is true; empty otherwise). Never the action's.
    pub build_secret_sets: Vec<opschain_runner::step_image::SecretSet>,
}

impl StepJob {
    /// What the step's image is made of, for [`crate::image::build::StepImages`].
    pub fn image_request(&self) -> ImageRequest<'_> {
        ImageRequest {
            step_id: self.step_id,
            repo: &self.repo,
            git_rev: &self.git_rev,
            commit: &self.commit,
            env_context: self.context.declaring_tree(),
            project: self.context.context.pointer("/project/code").and_then(Value::as_str).map(str::to_string),
            build_secret_sets: &self.build_secret_sets,
        }
    }
}

/// A step's `step_context.json`, kept as the parts it is spliced from: the small `context`
/// values, and the project and environment properties as the store's shared text (one copy per
/// version, however many steps run on it). [`ContextDocument::write_to`] writes the document
/// without building it as a tree or a string first.
#[derive(Debug, Clone)]
pub struct ContextDocument {
    /// The `context` member (project, environment, change, step, user).
    pub context: Value,
    /// The project properties, a JSON object's text.
    pub project: Arc<str>,
    /// The environment properties, a JSON object's text.
    pub environment: Arc<str>,
    /// Of the project properties, only their members that can hold declarations
    /// ([`opschain_runner::properties::declarations::MEMBERS`]), parsed (the store's
    /// [`super::store::StartingProperties::project_declaring`]): what
    /// [`ContextDocument::declaring_tree`] gives, without parsing `project`. Invariant: these
    /// members of `project`, as [`ContextDocument::from_texts`] finds them.
    pub project_declaring: serde_json::Map<String, Value>,
    /// The same of the environment properties.
    pub environment_declaring: serde_json::Map<String, Value>,
    /// The runner secrets (`secrets`), when there are any.
    pub secrets: Option<serde_json::Map<String, Value>>,
}

impl ContextDocument {
    /// The document of these parts, the declaring members found by parsing the properties'
    /// texts (the scheduler has them from the store instead). A properties text that is not a
    /// JSON object has no declaring members.
    pub fn from_texts(context: Value, project: Arc<str>, environment: Arc<str>, secrets: Option<serde_json::Map<String, Value>>) -> ContextDocument {
        let declaring = |text: &str| {
            opschain_runner::properties::text::PropertiesText::parse(text).map(|p| p.subset(&opschain_runner::properties::declarations::MEMBERS)).unwrap_or_default()
        };
        ContextDocument { project_declaring: declaring(&project), environment_declaring: declaring(&environment), context, project, environment, secrets }
    }

    /// Writes the document, compact: `{"context":..,"project":{"properties":..},
    /// "environment":{"properties":..},"secrets":..}`.
    pub fn write_to(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        out.write_all(b"{\"context\":")?;
        serde_json::to_writer(&mut *out, &self.context)?;
        out.write_all(b",\"project\":{\"properties\":")?;
        out.write_all(self.project.as_bytes())?;
        out.write_all(b"},\"environment\":{\"properties\":")?;
        out.write_all(self.environment.as_bytes())?;
        out.write_all(b"}")?;
        if let Some(secrets) = &self.secrets {
            out.write_all(b",\"secrets\":")?;
            serde_json::to_writer(&mut *out, secrets)?;
        }
        out.write_all(b"}")
    }

    /// Writes the document to a file at `path` (see [`ContextDocument::write_to`]), created with
    /// the default mode (the Docker backend's: the container's user reads it through a bind mount).
    pub fn write_file(&self, path: &std::path::Path) -> std::io::Result<()> {
        self.write_into(std::fs::File::create(path)?)
    }

    /// Writes the document to a new file at `path`, readable by its owner only from its creation
    /// (`O_EXCL`, mode 0600): the document holds the runner secrets.
    pub fn write_private_file(&self, path: &std::path::Path) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        self.write_into(std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?)
    }

    fn write_into(&self, file: std::fs::File) -> std::io::Result<()> {
        let mut out = std::io::BufWriter::with_capacity(1 << 16, file);
        self.write_to(&mut out)?;
        out.into_inner().map_err(|e| e.into_error())?;
        Ok(())
    }

    /// The document as a tree with, of each level's properties, only the declaring members
    /// (`opschain`, and the seed layout's `env` and `files`): what the image build and the build
    /// secret rule read. The rest of the properties is never built as a tree.
    pub fn declaring_tree(&self) -> serde_json::Map<String, Value> {
        let level = |kept: &serde_json::Map<String, Value>| serde_json::json!({ "properties": kept });
        let mut tree = serde_json::Map::new();
        tree.insert("context".into(), self.context.clone());
        tree.insert("project".into(), level(&self.project_declaring));
        tree.insert("environment".into(), level(&self.environment_declaring));
        if let Some(secrets) = &self.secrets {
            tree.insert("secrets".into(), Value::Object(secrets.clone()));
        }
        tree
    }
}

/// How the agent ended.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// The agent's exit status (128+N for a signal).
    pub exit_status: i32,
    /// What the controller reads of the step_result.json, when the agent wrote one.
    pub result: Option<StepResultFields>,
    /// Why the result is missing or unreadable, when it is.
    pub result_error: Option<String>,
}

/// Runs steps.
pub trait Backend: Send + Sync {
    /// Runs one step; `cancel` turning true asks it to stop the agent (TERM, then KILL).
    fn run(&self, job: &StepJob, sink: &dyn LogSink, cancel: &Arc<AtomicBool>) -> Result<StepOutput, BackendError>;

    /// Whether the backend builds step images, and so needs [`StepJob::build_secret_sets`].
    /// Default: false.
    fn builds_images(&self) -> bool {
        false
    }
}

/// What the controller reads of a `step_result.json` ([`opschain_runner::result::StepResult`]'s shape):
/// the diffs, the children and the agent's facts, each checked strictly as it is read.
/// `step.properties`, the merged properties the action used (as large as the properties:
/// megabytes), is required but only skimmed ([`StepResultFields::from_slice`]): the controller has no
/// use for it, and the agent wrote it from text it had checked strictly.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct StepResultFields {
    /// The project level's diff.
    pub project: LevelDiff,
    /// The environment level's diff.
    pub environment: LevelDiff,
    /// `step`, skipped.
    #[serde(rename = "step")]
    _step: SkippedStep,
    /// The child steps and how they run.
    pub steps: Children,
    /// What the agent adds; absent in results written by other runners.
    #[serde(default)]
    pub runner: Option<RunnerFacts>,
}

/// `step` of a result, read for its shape only: `properties` must be there.
#[derive(Debug, Clone, serde::Deserialize)]
struct SkippedStep {
    #[serde(rename = "properties")]
    _properties: serde::de::IgnoredAny,
}

impl StepResultFields {
    /// Reads a result's bytes. `step.properties` is found by skimming
    /// ([`opschain_runner::properties::splice::skim_member`]: the members before it walked, values' brackets
    /// outside strings counted, not checked) and left out: the rest of the text, with `0` in its
    /// place, is parsed strictly, as it was written. So a result whose `step.properties` is
    /// missing, or is not one value whose brackets balance, is refused, but the inside of a
    /// balanced `step.properties` is not checked: validating megabytes the controller never uses
    /// would be most of its time a step on large properties. A result laid out otherwise (no
    /// `step` object found by skimming) is parsed whole, `step.properties` checked as JSON.
    pub fn from_slice(bytes: &[u8]) -> serde_json::Result<StepResultFields> {
        let Some(skipped) = step_properties(bytes) else { return serde_json::from_slice(bytes) };
        let mut rest = Vec::with_capacity(bytes.len() - skipped.len() + 1);
        rest.extend_from_slice(&bytes[..skipped.start]);
        rest.push(b'0');
        rest.extend_from_slice(&bytes[skipped.end..]);
        // An error is reported as reading the whole text reports it: its line and column are
        // the file's, not those of the text with `step.properties` left out.
        serde_json::from_slice(&rest).or_else(|e| serde_json::from_slice::<StepResultFields>(bytes).and(Err(e)))
    }
}

/// Where the value of `step.properties` is in a result's text, found by skimming (see
/// [`StepResultFields::from_slice`]); `None` when no `step` object holding `properties` is found so.
fn step_properties(bytes: &[u8]) -> Option<std::ops::Range<usize>> {
    use opschain_runner::properties::splice::skim_member;
    let step = skim_member(bytes, "step").ok()??;
    let properties = skim_member(&bytes[step.clone()], "properties").ok()??;
    Some(step.start + properties.start..step.start + properties.end)
}

/// Reads `<top>/<folder>/step_result.json` into the output's result fields, through
/// [`sandbox::SandboxDir`]: no link followed on the way, a regular file only, at most `max` bytes
/// (a result written by a step is as untrusted as anything else in its sandbox).
pub fn read_result(top: &std::path::Path, folder: &str, max: u64) -> (Option<StepResultFields>, Option<String>) {
    let bytes = sandbox::SandboxDir::open(top, folder, None).and_then(|dir| dir.read_regular(RESULT_FILE, max));
    match bytes {
        Ok(bytes) => match StepResultFields::from_slice(&bytes) {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(format!("{}: invalid step result: {e}", top.join(folder).join(RESULT_FILE).display()))),
        },
        Err(e) => {
            let cause = std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default();
            // A result that is missing is usually the consequence of an error the agent named;
            // one that is there but refused (a link, a FIFO, too large) is news of its own.
            let missing = matches!(&e, sandbox::SandboxFileError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound);
            let what = if missing { NO_RESULT } else { REFUSED_RESULT };
            (None, Some(format!("{what}: {e}{cause}")))
        }
    }
}

/// How a step error that no result was written begins (see [`read_result`]).
pub const NO_RESULT: &str = "no step result";

/// How a step error that the result in the sandbox was refused begins (see [`read_result`]).
pub const REFUSED_RESULT: &str = "no step result (refused)";

/// Removes a step's sandbox directory when dropped: on every path out of the step.
pub(crate) struct RemoveOnDrop(pub(crate) PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The name of the step context file in the repository folder.
pub const CONTEXT_FILE: &str = "step_context.json";

/// The name of the step result file in the repository folder.
pub const RESULT_FILE: &str = "step_result.json";

/// A new sandbox directory for one run of a step, `<root>/change-<id>/step-<id>-<pid>-<time>`
/// (not created). Each run gets its own, named after this controller's pid and the time: an agent
/// orphaned by a controller killed with -9 may still be finishing in the old one while a retry
/// runs the step again. `change retry` removes `<root>/change-<id>` whole.
pub fn sandbox_dir(root: &std::path::Path, change_id: i64, step_id: i64) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    root.join(format!("change-{change_id}")).join(format!("step-{step_id}-{}-{nanos}", std::process::id()))
}

/// How much longer than the agent's grace the controller waits, after asking a cancelled step's
/// agent to stop, before it kills the agent (5 s). Past its grace the agent still kills what its
/// action left running, reads the action's output to its end and writes `step_result.json`: a
/// kill at the same moment would lose the diffs the step recorded.
pub const KILL_AFTER_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The agent's TERM-to-KILL grace in whole seconds, as its `--grace-secs` takes it: `grace`
/// rounded up.
pub fn agent_grace_secs(grace: std::time::Duration) -> u64 {
    grace.as_secs() + u64::from(grace.subsec_nanos() > 0)
}

/// How long the controller waits for an agent given `grace` (see [`agent_grace_secs`]) to end
/// after a cancel before it kills it: that grace and [`KILL_AFTER_GRACE`].
pub fn agent_kill_after(grace: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_secs(agent_grace_secs(grace)) + KILL_AFTER_GRACE
}

#[cfg(test)]
mod tests {
    use super::{read_result, StepResultFields};
    use opschain_runner::actions::RunAs;
    use opschain_runner::result::{Children, LevelDiff, RunnerFacts, StepProperties, StepResult};

    #[test]
    fn a_result_is_read_without_its_step_properties_and_checked_as_a_step_result_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("step_result.json");
        let diff: json_patch::Patch = serde_json::from_value(serde_json::json!([{"op": "add", "path": "/a", "value": 1}])).unwrap();
        let written = StepResult {
            project: LevelDiff { properties_diff: diff.clone() },
            environment: LevelDiff::default(),
            step: StepProperties { properties: r#"{"servers": {"s1": {"ip": "10.0.0.1", "tags": ["x", "y\"z"]}}, "n": [1.5e3, null, true]}"#.into() },
            steps: Children::new(vec!["one".into(), "two".into()], RunAs::Parallel),
            runner: Some(RunnerFacts { version: "1".into(), action: "act".into(), error: Some("bad copy".into()), ..RunnerFacts::default() }),
        };
        written.write(&path).unwrap();
        // What the agent wrote, read as the controller reads it: every field it uses.
        let (report, error) = read_result(dir.path(), "", u64::MAX);
        let report = report.unwrap_or_else(|| panic!("{error:?}"));
        assert_eq!(report.project.properties_diff, diff);
        assert!(report.environment.properties_diff.0.is_empty());
        assert_eq!(report.steps, written.steps);
        assert_eq!(report.runner, written.runner);
        // `step.properties` must be there and be one value whose brackets balance; everything
        // else is checked strictly, as a StepResult checks it.
        let result = |step: &str, steps: &str| format!(r#"{{"project":{{"properties_diff":[]}},"environment":{{"properties_diff":[]}}{step},"steps":{steps}}}"#);
        let no_children = r#"{"children":[],"child_execution_strategy":null}"#;
        for (bad, why) in [
            (result(r#","step":{"properties":{"a":[1}}"#, no_children), "brackets that do not balance"),
            (result(r#","step":{"properties":{"a":[1]"#, no_children), "a cut properties"),
            (result(r#","step":{"properties":}"#, no_children), "no value"),
            (result(r#","step":{"properties":tru}"#, no_children), "a scalar that is not JSON"),
            (result(r#","step":{}"#, no_children), "no properties"),
            (result("", no_children), "no step"),
            (result(r#","step":{"properties":{}},"step":{"properties":{}}"#, no_children), "step twice"),
            (result(r#","step":{"properties":{"a":"}"}}"#, r#"{"children":[],"child_execution_strategy":"sideways"}"#), "a strategy that is not one"),
            (result(r#","step":{"properties":{"a":"]"}}"#, r#"{"children":[],"child_execution_strategy":null,}"#), "a trailing comma after the properties"),
        ] {
            assert!(serde_json::from_str::<StepResult>(&bad).is_err(), "{why}: a StepResult refuses it");
            let refused = StepResultFields::from_slice(bad.as_bytes()).expect_err(why);
            // Reported where reading the whole text reports it.
            let whole = serde_json::from_slice::<serde_json::Value>(bad.as_bytes()).err().map(|e| (e.line(), e.column()));
            if let Some(at) = whole {
                assert_eq!((refused.line(), refused.column()), at, "{why}: {refused}");
            }
            std::fs::write(&path, &bad).unwrap();
            let (report, error) = read_result(dir.path(), "", u64::MAX);
            assert!(report.is_none() && error.unwrap().contains("invalid step result"), "{why}");
        }
        // The inside of a balanced `step.properties` is skimmed, not checked: the agent wrote it
        // from text it had checked strictly, and the controller does not use it.
        let unchecked = result(r#","step":{"properties":{"a":[1,]}}"#, no_children);
        assert!(serde_json::from_str::<StepResult>(&unchecked).is_err(), "a StepResult checks it");
        assert!(StepResultFields::from_slice(unchecked.as_bytes()).is_ok(), "the controller skims it");
        // Laid out otherwise: another member before `properties`, whitespace, escaped keys (not
        // found by skimming: parsed whole).
        for good in [
            result(r#","step":{"properties":{"big":[{"x":"}"}]}}"#, no_children),
            result(r#", "step" : { "other": [1, {"a": "]"}], "properties" : [ {"x": "\"]"} ] } "#, no_children),
            result(r#","\u0073tep":{"properties":{"x":1}}"#, no_children),
            result(r#","step":{"propertie\u0073":{"x":1}}"#, no_children),
        ] {
            assert!(StepResultFields::from_slice(good.as_bytes()).unwrap().runner.is_none(), "a result without `runner` (another runner's) is read: {good}");
        }
        let escaped_bad = result(r#","\u0073tep":{"properties":{"x":[1,]}}"#, no_children);
        assert!(StepResultFields::from_slice(escaped_bad.as_bytes()).is_err(), "parsed whole when `step` is not found by skimming");
    }
}
