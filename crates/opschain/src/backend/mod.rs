//! Where a step runs. A backend takes one step (its action, the change's commit, its step
//! context), runs the agent on it, streams the agent's output line by line to a [`LogSink`], and
//! returns the agent's exit status with the parsed `step_result.json`.
//!
//! * [`process`] (the default): a fresh copy of the change's checkout in a temporary sandbox, the
//!   agent as a child process ([`spawn`]: no fork of the controller). No Docker needed.
//! * [`docker`]: a container per step, of the step image [`crate::image::build`] builds (or reuses).
//! * `kubernetes` (cargo feature `kubernetes`): a Job per step in a cluster, the image through
//!   the registry.
//!
//! [`stream`] is the transport for engines that share no disk with the controller.

pub mod docker;
pub mod engine;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod process;
pub mod sandbox;
pub mod spawn;
pub mod stream;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde_json::Value;

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
    /// The agent or docker cannot be started.
    #[error("cannot run {program}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The agent or docker was started, but whether it has ended cannot be learnt.
    #[error("cannot wait for {program}")]
    Wait {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
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
    /// The step image cannot be planned or its build context written (a bad env context, a
    /// Dockerfile that is a symlink, git or tar failing).
    #[error("cannot prepare the step image of step {step}")]
    Image {
        /// The step.
        step: i64,
        /// The cause.
        #[source]
        source: opschain_runner::step_image::BuildError,
    },
    /// A step image cannot be pulled from or pushed to the registry.
    #[error("cannot get the step image of step {step} through the registry")]
    Registry {
        /// The step.
        step: i64,
        /// The cause.
        #[source]
        source: crate::image::registry::RegistryError,
    },
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
    /// The base runner image is not on the Docker engine.
    #[error(
        "the base runner image {image} does not exist on this Docker engine: build it from runner-image/ (runner-image/README.md: \
         `docker build -t {image} runner-image` with the static agent in it), or choose another with --docker-base-image \
         (OPSCHAIN_DOCKER_BASE_IMAGE)"
    )]
    NoBaseImage {
        /// The image.
        image: String,
    },
    /// A call to the Docker engine gave no answer in time, or was stopped by a cancel.
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    /// A docker command failed.
    #[error("docker {op} failed: {stderr}")]
    Docker {
        /// The docker operation.
        op: &'static str,
        /// Its stderr.
        stderr: String,
    },
}

/// Where a backend sends the agent's output lines.
pub trait LogSink: Sync {
    /// One line of the agent's `stdout` or `stderr` (`stream`), without its line ending.
    fn line(&self, stream: &'static str, line: &str);

    /// One piece of a line too long to keep whole (over 1 MiB): the line goes on in the next
    /// `piece` or `line` of the same stream, or ends with the stream ([`LogSink::end`]). A sink
    /// that masks secrets masks the pieces as one text. By default, a line of its own.
    fn piece(&self, stream: &'static str, piece: &str) {
        self.line(stream, piece);
    }

    /// The end of `stream`: a sink that held back the end of a piece sends it now. By default,
    /// nothing.
    fn end(&self, _stream: &'static str) {}

    /// The lines given so far should be shown now: called after each batch of lines read at
    /// once, so that a sink may buffer within a batch. Does nothing by default.
    fn flush(&self) {}
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
    pub result: Option<StepReport>,
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
/// megabytes), is required but only skimmed ([`StepReport::from_slice`]): the controller has no
/// use for it, and the agent wrote it from text it had checked strictly.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct StepReport {
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

impl StepReport {
    /// Reads a result's bytes. `step.properties` is found by skimming
    /// ([`opschain_runner::properties::splice::skim_member`]: the members before it walked, values' brackets
    /// outside strings counted, not checked) and left out: the rest of the text, with `0` in its
    /// place, is parsed strictly, as it was written. So a result whose `step.properties` is
    /// missing, or is not one value whose brackets balance, is refused as before, but the inside of
    /// a balanced `step.properties` is not checked: validating megabytes the controller never uses
    /// cost it a third of its time a step on large properties. A result laid out otherwise (no
    /// `step` object found by skimming) is parsed whole, `step.properties` checked as JSON.
    pub fn from_slice(bytes: &[u8]) -> serde_json::Result<StepReport> {
        let Some(skipped) = step_properties(bytes) else { return serde_json::from_slice(bytes) };
        let mut rest = Vec::with_capacity(bytes.len() - skipped.len() + 1);
        rest.extend_from_slice(&bytes[..skipped.start]);
        rest.push(b'0');
        rest.extend_from_slice(&bytes[skipped.end..]);
        // An error is reported as reading the whole text reports it: its line and column are
        // the file's, not those of the text with `step.properties` left out.
        serde_json::from_slice(&rest).or_else(|e| serde_json::from_slice::<StepReport>(bytes).and(Err(e)))
    }
}

/// Where the value of `step.properties` is in a result's text, found by skimming (see
/// [`StepReport::from_slice`]); `None` when no `step` object holding `properties` is found so.
fn step_properties(bytes: &[u8]) -> Option<std::ops::Range<usize>> {
    use opschain_runner::properties::splice::skim_member;
    let step = skim_member(bytes, "step").ok()??;
    let properties = skim_member(&bytes[step.clone()], "properties").ok()??;
    Some(step.start + properties.start..step.start + properties.end)
}

/// Reads `<top>/<folder>/step_result.json` into the output's result fields, through
/// [`sandbox::SandboxDir`]: no link followed on the way, a regular file only, at most `max` bytes
/// (a result written by a step is as untrusted as anything else in its sandbox).
pub fn read_result(top: &std::path::Path, folder: &str, max: u64) -> (Option<StepReport>, Option<String>) {
    let bytes = sandbox::SandboxDir::open(top, folder, None).and_then(|dir| dir.read_regular(RESULT_FILE, max));
    match bytes {
        Ok(bytes) => match StepReport::from_slice(&bytes) {
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

/// One output pipe of a running step: its fd and the bytes of its current, unfinished line.
struct OutputPipe {
    /// The read end; `None` once closed.
    pipe: Option<std::os::fd::OwnedFd>,
    /// The stream's name in the log (`stdout`, `stderr`).
    name: &'static str,
    /// The line read so far, without its end. Invariant: at most [`LINE_LIMIT`] bytes between
    /// reads (a longer line is sent in pieces of that size).
    partial: Vec<u8>,
    /// Whether any byte was read from the pipe.
    seen: bool,
}

/// The longest line the controller keeps before sending it on (1 MiB): a longer one is sent in
/// pieces of this size, so that a program writing without newlines cannot grow the controller's
/// memory without bound. The agent's own lines are far shorter (it cuts its action's at 64 KiB).
pub(crate) const LINE_LIMIT: usize = 1 << 20;

impl OutputPipe {
    /// A stream over `pipe` (none: already closed), its lines logged under `name`.
    fn new(pipe: Option<std::os::fd::OwnedFd>, name: &'static str) -> OutputPipe {
        OutputPipe { pipe, name, partial: Vec::new(), seen: false }
    }

    /// Reads what the pipe holds (one `read`), hands every complete line to `sink`, and closes
    /// the pipe at end of file or on a read error (the unfinished line, if any, is sent first).
    fn drain(&mut self, sink: &dyn LogSink, buf: &mut [u8]) {
        use std::os::fd::AsRawFd;
        let Some(fd) = &self.pipe else { return };
        // SAFETY: reading into a buffer we own from a pipe fd we own.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            return;
        }
        if n <= 0 {
            self.close(sink);
            return;
        }
        self.seen = true;
        let read = &buf[..n as usize];
        // UTF-8 is checked once for the whole read: a line that lies wholly in its valid prefix
        // is sent as it is, without a check of its own.
        let valid = match std::str::from_utf8(read) {
            Ok(_) => read.len(),
            Err(e) => e.valid_up_to(),
        };
        let mut data = read;
        loop {
            // A line may take up to `room` more bytes; its newline may come right after them.
            let room = LINE_LIMIT - self.partial.len();
            match memchr::memchr(b'\n', &data[..data.len().min(room + 1)]) {
                Some(at) if self.partial.is_empty() => {
                    // The whole line is in this read: sent from where it lies.
                    let start = read.len() - data.len();
                    if start + at <= valid {
                        // SAFETY: `read[..valid]` is UTF-8 and a newline is a character
                        // boundary, so this slice of it, from a line's start, is UTF-8 too.
                        let line = unsafe { std::str::from_utf8_unchecked(&data[..at]) };
                        sink.line(self.name, line.trim_end_matches('\r'));
                    } else {
                        send(sink, self.name, &data[..at]);
                    }
                    data = &data[at + 1..];
                }
                Some(at) => {
                    self.partial.extend_from_slice(&data[..at]);
                    self.emit(sink, true);
                    data = &data[at + 1..];
                }
                None if data.len() > room => {
                    self.partial.extend_from_slice(&data[..room]);
                    self.emit(sink, false);
                    data = &data[room..];
                }
                None => break,
            }
        }
        self.partial.extend_from_slice(data);
    }

    /// Sends what `partial` holds and empties it: a whole line (`whole`, without its line
    /// ending), or a piece of one that goes on. A piece ends at a character boundary: the first
    /// bytes of a UTF-8 sequence cut by the limit stay in `partial` for the next piece.
    fn emit(&mut self, sink: &dyn LogSink, whole: bool) {
        if whole {
            send(sink, self.name, &self.partial);
            self.partial.clear();
        } else {
            let cut = opschain_runner::lines::utf8_cut(&self.partial);
            sink.piece(self.name, &String::from_utf8_lossy(&self.partial[..cut]));
            self.partial.drain(..cut);
        }
    }

    /// Sends an unfinished last line, if any, ends the stream and closes the pipe.
    fn close(&mut self, sink: &dyn LogSink) {
        if self.pipe.is_none() {
            return;
        }
        if !self.partial.is_empty() {
            self.emit(sink, true);
        }
        sink.end(self.name);
        self.pipe = None;
    }
}

/// How much one read of an output pipe takes at most (256 KiB): several pipe buffers' worth, so
/// that a flood of output costs few reads and each batch of lines is large.
pub(crate) const READ_SIZE: usize = 256 * 1024;

/// Sends one line of stream `name` (without its newline; a `\r` before it is dropped too) to
/// `sink`, bytes that are not UTF-8 replaced by U+FFFD.
fn send(sink: &dyn LogSink, name: &'static str, line: &[u8]) {
    let line = String::from_utf8_lossy(line);
    sink.line(name, line.trim_end_matches(['\n', '\r']));
}

/// How often a running step looks at the cancel flag (50 ms). The agent's exit and its output
/// are seen at once (the wait sleeps in `poll(2)` on its pipes and a pidfd), not at the next look.
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

pub(crate) const CANCEL_CHECK: std::time::Duration = std::time::Duration::from_millis(50);

/// How long the output pipes may stay open after the agent exited before the step's session is
/// swept ([`kill_session`]), and again after the sweep before the controller stops reading them
/// (200 ms). Only a process the agent left behind holds them that long.
pub(crate) const LEFTOVER_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// A pidfd of `pid` (a child of ours not yet reaped, so the pid cannot have been reused), or
/// `None` on a kernel without `pidfd_open` (before Linux 5.3).
fn pidfd_open(pid: u32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: a non-negative result is a new file descriptor that nothing else owns.
    (fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// A started process [`stream_and_wait`] can wait for and stop.
pub(crate) trait Running {
    /// Its pid.
    fn id(&self) -> u32;
    /// Reaps it if it has exited.
    fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>>;
    /// Sends it SIGKILL.
    fn kill(&mut self);
}

impl Running for std::process::Child {
    fn id(&self) -> u32 {
        std::process::Child::id(self)
    }
    fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        std::process::Child::try_wait(self)
    }
    fn kill(&mut self) {
        let _ = std::process::Child::kill(self);
    }
}

impl Running for spawn::AgentProcess {
    fn id(&self) -> u32 {
        spawn::AgentProcess::id(self)
    }
    fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        spawn::AgentProcess::try_wait(self)
    }
    fn kill(&mut self) {
        spawn::AgentProcess::kill(self)
    }
}

/// A time limit on a command the controller waits for (a call to the Docker engine): the command
/// is killed, and the wait fails with [`engine::EngineError::NoAnswer`], when it has printed
/// nothing `first_output` after it started, or has not ended `total` after it started.
#[derive(Debug, Clone)]
pub struct Bound {
    /// The command, as the error names it (`docker image inspect X`).
    pub what: String,
    /// How long it may run without printing anything; `None`: no such limit.
    pub first_output: Option<std::time::Duration>,
    /// How long it may run; `None`: no such limit.
    pub total: Option<std::time::Duration>,
    /// The setting that sets the limit, for the error (`--docker-timeout-secs`).
    pub setting: &'static str,
}

/// Spawns `command` (with `std::process`) with its output piped and runs [`stream_and_wait`] on
/// it without ending its session (the Docker backend's `docker` commands). `program` names the
/// command in errors.
pub(crate) fn run_streamed(
    mut command: std::process::Command,
    program: String,
    sink: &dyn LogSink,
    cancel: &AtomicBool,
    grace: std::time::Duration,
    bound: Option<&Bound>,
) -> Result<std::process::ExitStatus, BackendError> {
    use std::process::Stdio;
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|source| BackendError::Spawn { program: program.clone(), source })?;
    let (stdout, stderr) = (child.stdout.take().map(Into::into), child.stderr.take().map(Into::into));
    stream_and_wait(&mut child, stdout, stderr, program, sink, cancel, grace, false, bound)
}

/// Starts `spec` as a session leader ([`spawn::spawn`]) and runs [`stream_and_wait`] on it,
/// ending its session (the process backend's agent).
pub(crate) fn run_spawned(spec: &spawn::Spawn, sink: &dyn LogSink, cancel: &AtomicBool, grace: std::time::Duration) -> Result<std::process::ExitStatus, BackendError> {
    let program = spec.program.display().to_string();
    let mut child = spawn::spawn(spec).map_err(|e| BackendError::Spawn { program: program.clone(), source: e.into() })?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    stream_and_wait(&mut child, stdout, stderr, program, sink, cancel, grace, true, None)
}

/// Streams a started child's stdout and stderr into `sink` line by line, and waits for it
/// (cancellable: SIGTERM when `cancel` turns true, SIGKILL `grace` later), all from the calling
/// thread: one `poll(2)` loop over the two pipes and a pidfd of the child, so a step costs no
/// extra threads and its end is seen the moment it happens.
///
/// With `end_session` (the process backend, whose agent leads its own session) the child's
/// session is swept with [`kill_session`] when the agent did not end by itself (it was killed by
/// a signal, or the step was cancelled), or when its pipes stay open [`LEFTOVER_WAIT`] after it
/// exited: only a leftover process holds them then. An agent that exited by itself with its pipes
/// closed has ended its action's processes itself (its contract), and the sweep, a walk over
/// every process of the machine, is skipped. Pipes still open [`LEFTOVER_WAIT`] after the sweep
/// (held by a process outside the session) are abandoned with a line saying so, rather than
/// stalling the step forever. `program` names the command in errors. With a `bound`, a command
/// past it is killed and reaped, and the wait fails naming it ([`Bound`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn stream_and_wait(
    child: &mut dyn Running,
    stdout: Option<std::os::fd::OwnedFd>,
    stderr: Option<std::os::fd::OwnedFd>,
    program: String,
    sink: &dyn LogSink,
    cancel: &AtomicBool,
    grace: std::time::Duration,
    end_session: bool,
    bound: Option<&Bound>,
) -> Result<std::process::ExitStatus, BackendError> {
    use std::os::fd::AsRawFd;
    use std::sync::atomic::Ordering;
    use std::time::Instant;
    let wait_err = |source| BackendError::Wait { program: program.clone(), source };
    let pid = child.id();
    let mut streams = [OutputPipe::new(stdout, "stdout"), OutputPipe::new(stderr, "stderr")];
    let pidfd = pidfd_open(pid);
    let mut buf = vec![0u8; READ_SIZE];
    let mut status: Option<std::process::ExitStatus> = None;
    let mut term_sent: Option<Instant> = None;
    // When the agent was seen to exit, and when the session was swept.
    let mut exited_at: Option<Instant> = None;
    let mut swept_at: Option<Instant> = None;
    let started = Instant::now();
    loop {
        if let (None, Some(bound)) = (status, bound) {
            let silent = !streams.iter().any(|s| s.seen);
            let past = |limit: Option<std::time::Duration>| limit.filter(|l| started.elapsed() >= *l);
            if let Some(within) = past(bound.total).or_else(|| past(bound.first_output.filter(|_| silent))) {
                child.kill();
                // SIGKILL ends it at once: reaped so that no zombie is left.
                let reaping = Instant::now();
                while matches!(child.try_wait(), Ok(None)) && reaping.elapsed() < std::time::Duration::from_secs(5) {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                sink.flush();
                return Err(BackendError::Engine(engine::EngineError::NoAnswer { what: bound.what.clone(), within, setting: bound.setting }));
            }
        }
        if status.is_none() {
            // Seen ended but not yet reaped: the zombie keeps its pid, the session's id, so the
            // sweep cannot reach another session that reused the number. Reaped right after.
            if let Some(signalled) = ended_unreaped(pid).map_err(wait_err)? {
                if end_session && (signalled || cancel.load(Ordering::SeqCst)) {
                    kill_session(pid as i32);
                    swept_at = Some(Instant::now());
                }
                let s = child.try_wait().map_err(wait_err)?.ok_or_else(|| wait_err(std::io::Error::other("the process ended but could not be reaped")))?;
                status = Some(s);
                exited_at = Some(Instant::now());
            }
        }
        let open = streams.iter().filter(|s| s.pipe.is_some()).count();
        let mut timeout = CANCEL_CHECK;
        if let (Some(s), Some(exited)) = (status, exited_at) {
            if open == 0 {
                return Ok(s);
            }
            match swept_at {
                Some(swept) if swept.elapsed() >= LEFTOVER_WAIT => {
                    for stream in &mut streams {
                        stream.close(sink);
                    }
                    sink.line("stderr", "opschain: a process left behind by the step holds its output open: stopped reading it");
                    sink.flush();
                    return Ok(s);
                }
                Some(swept) => timeout = LEFTOVER_WAIT - swept.elapsed(),
                None if exited.elapsed() >= LEFTOVER_WAIT => {
                    if end_session {
                        // The agent is reaped by now, but the session's id stays taken while
                        // processes are left in it (Linux frees a pid number only once no process
                        // uses it as pid, group or session id). Only if the session emptied, and
                        // the pids wrapped around to this number within LEFTOVER_WAIT, could the
                        // sweep reach a stranger.
                        kill_session(pid as i32);
                    }
                    swept_at = Some(Instant::now());
                    continue;
                }
                None => timeout = LEFTOVER_WAIT - exited.elapsed(),
            }
        } else if cancel.load(Ordering::SeqCst) {
            match term_sent {
                None => {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
                    term_sent = Some(Instant::now());
                }
                Some(at) if at.elapsed() > grace => {
                    child.kill();
                    kill_session(pid as i32);
                }
                Some(_) => {}
            }
        }
        let mut fds: Vec<libc::pollfd> =
            streams.iter().filter_map(|s| s.pipe.as_ref()).map(|p| libc::pollfd { fd: p.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
        let waiting_for_exit = status.is_none() && pidfd.is_some();
        if let (true, Some(p)) = (waiting_for_exit, &pidfd) {
            fds.push(libc::pollfd { fd: p.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        }
        if status.is_none() && pidfd.is_none() && fds.is_empty() {
            // No pidfd and no pipe to wake us: look again after a while.
            std::thread::sleep(CANCEL_CHECK);
            continue;
        }
        // SAFETY: a valid array of pollfds of fds we own; EINTR and timeouts just loop.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout.as_millis().max(1) as libc::c_int) };
        if ready <= 0 {
            continue;
        }
        for pfd in &fds {
            if pfd.revents == 0 {
                continue;
            }
            if let Some(stream) = streams.iter_mut().find(|s| s.pipe.as_ref().is_some_and(|p| p.as_raw_fd() == pfd.fd)) {
                stream.drain(sink, &mut buf);
            }
        }
        sink.flush();
    }
}

/// Whether the child `pid` has ended, without reaping it (`waitid` with `WNOWAIT`): `None` while it
/// runs, else whether a signal ended it.
fn ended_unreaped(pid: u32) -> std::io::Result<Option<bool>> {
    use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    loop {
        return match waitid(Id::Pid(nix::unistd::Pid::from_raw(pid as i32)), flags) {
            Ok(WaitStatus::Exited(..)) => Ok(Some(false)),
            Ok(WaitStatus::Signaled(..)) => Ok(Some(true)),
            Ok(_) => Ok(None),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => Err(e.into()),
        };
    }
}

/// Sends SIGKILL to every process of session `sid` (the agent is started as a session leader, so
/// this reaches the action and whatever it left behind, which would otherwise hold the log pipes
/// open). Does nothing when no process is in that session.
pub(crate) fn kill_session(sid: i32) {
    let Ok(pids) = opschain_runner::procfs::pids() else { return };
    for pid in pids.flatten() {
        if matches!(opschain_runner::procfs::stat(pid), Ok(Some(stat)) if stat.session == sid) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// The exit status of a process, 128+N for signal N.
pub(crate) fn status_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Mutex;

    use super::{read_result, LogSink, OutputPipe, StepReport, LINE_LIMIT};
    use opschain_runner::actions::RunAs;
    use opschain_runner::result::{Children, LevelDiff, RunnerFacts, StepProperties, StepResult};

    /// The lines a stream sent.
    #[derive(Default)]
    struct Lines(Mutex<Vec<String>>);

    impl LogSink for Lines {
        fn line(&self, _stream: &'static str, line: &str) {
            self.0.lock().unwrap().push(line.to_string());
        }
    }

    #[test]
    fn lines_longer_than_the_limit_are_sent_in_pieces_and_nothing_is_lost() {
        // Through a real pipe: a line of exactly the limit, one 2.5 times as long without a
        // newline until its end, short lines, and an unfinished last line.
        let long = "y".repeat(LINE_LIMIT * 5 / 2);
        let exact = "x".repeat(LINE_LIMIT);
        let input = format!("a\n{exact}\n{long}\nb\nlast");
        let (read, write) = nix::unistd::pipe().unwrap();
        let writer = std::thread::spawn({
            let input = input.clone();
            move || std::fs::File::from(write).write_all(input.as_bytes()).unwrap()
        });
        let sink = Lines::default();
        let mut stream = OutputPipe::new(Some(read), "stdout");
        let mut buf = vec![0u8; 64 * 1024];
        while stream.pipe.is_some() {
            stream.drain(&sink, &mut buf);
            assert!(stream.partial.len() <= LINE_LIMIT);
        }
        writer.join().unwrap();
        let lines = sink.0.into_inner().unwrap();
        let lengths: Vec<usize> = lines.iter().map(String::len).collect();
        assert_eq!(lengths, [1, LINE_LIMIT, LINE_LIMIT, LINE_LIMIT, LINE_LIMIT / 2, 1, 4]);
        assert_eq!(lines.concat(), input.replace('\n', ""), "every byte, in order");
    }
    #[test]
    fn pieces_end_at_character_boundaries() {
        // One ASCII byte, then two- and four-byte characters without a newline for 2.5 times
        // the limit: the limit falls inside a character, which must reach the sink whole.
        for ch in ["é", "😀"] {
            let input = format!("a{}\nend\n", ch.repeat(LINE_LIMIT * 5 / 2 / ch.len()));
            let (read, write) = nix::unistd::pipe().unwrap();
            let writer = std::thread::spawn({
                let input = input.clone();
                move || std::fs::File::from(write).write_all(input.as_bytes()).unwrap()
            });
            let sink = Lines::default();
            let mut stream = OutputPipe::new(Some(read), "stdout");
            let mut buf = vec![0u8; 64 * 1024];
            while stream.pipe.is_some() {
                stream.drain(&sink, &mut buf);
                assert!(stream.partial.len() <= LINE_LIMIT);
            }
            writer.join().unwrap();
            let lines = sink.0.into_inner().unwrap();
            assert!(lines.len() > 2, "the long line went in pieces");
            assert!(!lines.iter().any(|l| l.contains('\u{FFFD}')), "no character cut in two");
            assert_eq!(lines.concat(), input.replace('\n', ""), "every character, in order");
        }
    }

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
            let refused = StepReport::from_slice(bad.as_bytes()).expect_err(why);
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
        assert!(StepReport::from_slice(unchecked.as_bytes()).is_ok(), "the controller skims it");
        // Laid out otherwise: another member before `properties`, whitespace, escaped keys (not
        // found by skimming: parsed whole).
        for good in [
            result(r#","step":{"properties":{"big":[{"x":"}"}]}}"#, no_children),
            result(r#", "step" : { "other": [1, {"a": "]"}], "properties" : [ {"x": "\"]"} ] } "#, no_children),
            result(r#","\u0073tep":{"properties":{"x":1}}"#, no_children),
            result(r#","step":{"propertie\u0073":{"x":1}}"#, no_children),
        ] {
            assert!(StepReport::from_slice(good.as_bytes()).unwrap().runner.is_none(), "a result without `runner` (another runner's) is read: {good}");
        }
        let escaped_bad = result(r#","\u0073tep":{"properties":{"x":[1,]}}"#, no_children);
        assert!(StepReport::from_slice(escaped_bad.as_bytes()).is_err(), "parsed whole when `step` is not found by skimming");
    }
}
