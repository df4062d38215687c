//! Everything the controller prints or stores about a change, masked with the change's secrets.
//!
//! [`ChangeOutput`] is the one place a running change's lines go through on their way to the
//! terminal and the store: the agent's output and whatever else a backend streams (the Docker
//! image build's output), through each step's [`StepSink`], and the controller's own messages
//! ([`ChangeOutput::say`]). A step's end message (why it failed, a properties conflict, which
//! prints whole property documents) is masked with the same [`Masker`] before it is stored
//! ([`crate::store::StepEnd::mask`]), and `change show` and `change logs` mask what
//! they print once more, with the secrets as they are then ([`change_masker`]), so that lines
//! stored before a secret was added are hidden too.
//!
//! The secrets of a change ([`change_secrets`]) are the values of the secret sets it uses: its
//! runner set (`--secrets`), and the build secret sets that apply to its properties
//! ([`opschain_runner::exec::build_secret_sets`]: `opschain.config.build_secrets` of the project, then of
//! the environment, else the default set `opschain-build-env`) that exist in the store. A step
//! may change the properties that name the build sets: each step adds the sets its own starting
//! properties name ([`ChangeOutput::add_secrets`]), and no value once masked is unmasked during
//! the run.
//!
//! Masking follows the agent's rules ([`opschain_runner::mask`]): each value and its base64, JSON-escaped
//! and percent-encoded forms become `****`, values shorter than
//! [`opschain_runner::mask::MIN_SECRET_LEN`] bytes are not masked (and named in a warning). Lines are
//! masked whole, after the backend joined what the pipe gave in separate reads; the pieces of a
//! line longer than the backend's line limit are masked as one stream ([`StepSink::piece`]), so a
//! secret cut between two pieces is masked too.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::sync::{Mutex, RwLock};
use std::time::Instant;

use serde_json::{json, Map, Value};

use super::backend::LogSink;
use super::logline;
use super::store::{ChangeRow, Level, LogLines, Store, StoreError};
use opschain_runner::context::{Level as ContextLevel, StepContext};
use opschain_runner::exec::{build_secret_sets, DEFAULT_BUILD_SECRET_SET};
use opschain_runner::json::StrictObject;
use opschain_runner::mask::{MaskStream, Masker, ShortSecret};

/// The secrets of a change, by `set/NAME`: its runner set's values and those of the build sets
/// `project` and `environment` (a level's properties) name, as stored now. A set that does not
/// exist adds nothing; a `build_secrets` list that is not valid (the build refuses it) counts as
/// the default set, so that masking never depends on a list the build would reject.
pub fn change_secrets(
    store: &Store,
    runner_set: Option<&str>,
    project: &Map<String, Value>,
    environment: &Map<String, Value>,
) -> Result<BTreeMap<String, String>, StoreError> {
    // Only the member the rule reads is copied, not the whole properties, for every step.
    let level = |props: &Map<String, Value>| {
        let list = props.get("opschain").and_then(Value::as_object).and_then(|o| o.get("config")).and_then(Value::as_object).and_then(|c| c.get("build_secrets"));
        let properties = match list {
            Some(list) => Map::from_iter([("opschain".to_string(), json!({"config": {"build_secrets": list}}))]),
            None => Map::new(),
        };
        ContextLevel { properties: StrictObject(properties) }
    };
    let context = StepContext { project: level(project), environment: level(environment), ..StepContext::default() };
    let mut sets: Vec<String> = build_secret_sets(&context).unwrap_or_else(|_| vec![DEFAULT_BUILD_SECRET_SET.to_string()]);
    sets.extend(runner_set.map(str::to_string));
    let mut secrets = BTreeMap::new();
    for set in sets {
        for (name, value) in store.secrets(&set)?.unwrap_or_default() {
            if let Value::String(value) = value {
                secrets.insert(format!("{set}/{name}"), value);
            }
        }
    }
    Ok(secrets)
}

/// The masker of a stored change: the secrets of [`change_secrets`] with its project's and
/// environment's current properties (for `change show` and `change logs`).
pub fn change_masker(store: &Store, change: &ChangeRow) -> Result<Masker, StoreError> {
    let project = store.properties(Level::Project, change.project_id)?.json;
    let environment = store.properties(Level::Environment, change.environment_id)?.json;
    let secrets = change_secrets(store, change.secret_set.as_deref(), &project, &environment)?;
    Ok(Masker::from_named(secrets).0)
}

/// What a running change prints on the terminal (the store keeps every line whatever it is).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct View {
    /// Also the agent's phase records, its own error line and the backend's lines (`checked
    /// out ...`, an image build's output), and the controller's progress (a step started, its
    /// children). Default: the action's lines and one status line per step.
    pub verbose: bool,
    /// Each line starts with its time (RFC 3339, UTC): when the agent read it, or when the
    /// controller wrote it. Default: no time.
    pub timestamps: bool,
    /// Nothing of the run goes to the terminal: another view owns it (the live step tree of
    /// [`crate::report::live_tree`]). Default: off.
    pub silent: bool,
}

impl View {
    /// How `line`, a masked line of step `step` (prefix `[step action]`), is shown: `None` when
    /// it is not (the agent's phase records unless verbose). A line without a time of its own is
    /// given `recorded` (when the store got it), else the time now.
    pub fn show(&self, prefix: &str, line: &str, recorded: Option<&str>) -> Option<String> {
        let (at, text) = match logline::classify(line) {
            logline::Kind::Action { at, text, stream, .. } => (Some(at), if stream == "stderr" { format!("! {text}") } else { format!("  {text}") }),
            _ if !self.verbose => return None,
            logline::Kind::Record { at, level, text } => (Some(at), format!("  {level} {}", logline::round_durations(text))),
            logline::Kind::AgentError(e) => (None, format!("  opschain-runner: {e}")),
            logline::Kind::Other(text) => (None, format!("  {text}")),
        };
        Some(match (self.timestamps, at) {
            (true, Some(at)) => format!("{at} {prefix}{text}"),
            (true, None) => format!("{} {prefix}{text}", recorded.map_or_else(now, str::to_string)),
            (false, _) => format!("{prefix}{text}"),
        })
    }
}

/// The time now as the agent stamps its lines (RFC 3339, UTC, microseconds).
pub fn now() -> String {
    let mut stamp = opschain_runner::supervise::Stamp::default();
    String::from_utf8_lossy(stamp.format(std::time::SystemTime::now())).into_owned()
}

/// The terminal and store output of one change's run (see the module documentation).
pub struct ChangeOutput<'a> {
    store: &'a Store,
    /// Every secret masked so far: `set/NAME` and the value.
    secrets: Mutex<BTreeSet<(String, String)>>,
    /// The masker of `secrets`, rebuilt when a step brings new ones.
    masker: RwLock<Masker>,
    /// The terminal (stdout, unless [`ChangeOutput::with_terminal`] says otherwise).
    out: Mutex<Box<dyn Write + Send>>,
    started: Instant,
    view: View,
}

impl<'a> ChangeOutput<'a> {
    /// The output of a change that stores its step lines in `store` and prints to stdout,
    /// masking nothing yet.
    pub fn new(store: &'a Store) -> ChangeOutput<'a> {
        ChangeOutput::with_terminal(store, Box::new(std::io::stdout()))
    }

    /// [`ChangeOutput::new`] printing to `terminal` instead of stdout.
    pub fn with_terminal(store: &'a Store, terminal: Box<dyn Write + Send>) -> ChangeOutput<'a> {
        ChangeOutput {
            store,
            secrets: Mutex::new(BTreeSet::new()),
            masker: RwLock::new(Masker::default()),
            out: Mutex::new(terminal),
            started: Instant::now(),
            view: View::default(),
        }
    }

    /// The same output, printing as `view` says.
    pub fn with_view(self, view: View) -> ChangeOutput<'a> {
        ChangeOutput { view, ..self }
    }

    /// How long the change has run.
    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Masks `secrets` (by `set/NAME`) from now on, besides those already masked (a value
    /// rotated during the run is masked in both its forms). Returns the new ones too short to be
    /// masked, for a warning.
    pub fn add_secrets(&self, secrets: BTreeMap<String, String>) -> Vec<ShortSecret> {
        let mut known = self.secrets.lock().unwrap_or_else(|e| e.into_inner());
        let added: Vec<String> = secrets.into_iter().filter_map(|(name, value)| known.insert((name.clone(), value)).then_some(name)).collect();
        if added.is_empty() {
            return Vec::new();
        }
        let (masker, short) = Masker::from_named(known.iter().cloned());
        *self.masker.write().unwrap_or_else(|e| e.into_inner()) = masker;
        short.into_iter().filter(|s| added.contains(&s.name)).collect()
    }

    /// The masker of the secrets masked now.
    pub fn masker(&self) -> Masker {
        self.masker.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `text` with every secret masked.
    pub fn mask(&self, text: &str) -> String {
        self.masker().mask(text).into_owned()
    }

    /// Prints one of the controller's own messages, masked: `==> text` (with
    /// [`View::timestamps`], after the time).
    pub fn say(&self, text: &str) {
        if self.view.silent {
            return;
        }
        let text = self.mask(text);
        let time = if self.view.timestamps { now() + " " } else { String::new() };
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "{time}==> {text}");
    }

    /// [`ChangeOutput::say`] of a progress message, printed only when [`View::verbose`].
    pub fn detail(&self, text: &str) {
        if self.view.verbose {
            self.say(text);
        }
    }

    /// The sink of one run of step `step_id` (action `action`): its lines are masked, stored and
    /// printed prefixed `[step action]`.
    pub fn step_sink(&self, step_id: i64, action: &str) -> StepSink<'_> {
        StepSink { output: self, step_id, prefix: format!("[{step_id} {action}]"), pieces: Mutex::new(HashMap::new()), pending: Mutex::default(), cause: Mutex::default() }
    }
}

/// Where one step's output lines go: masked, into the store and onto the terminal.
pub struct StepSink<'a> {
    output: &'a ChangeOutput<'a>,
    step_id: i64,
    prefix: String,
    /// The masking state of each stream in the middle of a line sent in pieces.
    pieces: Mutex<HashMap<&'static str, MaskStream>>,
    /// The masked lines of the current batch: for the store, and prefixed for the terminal. Both
    /// are handed on at once by [`LogSink::flush`], and when the sink is dropped (a lock of the
    /// store and a write per line would cost more than the line).
    pending: Mutex<(LogLines, Vec<u8>)>,
    /// What the step's lines said of why it failed: the agent's own error, the action's last
    /// stderr line.
    cause: Mutex<Cause>,
}

/// What a step's log said of why it failed (see [`StepSink::cause`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cause {
    /// The agent's own error (its last `opschain-runner: ...` line), the sandbox's path taken
    /// off the paths in it.
    pub agent_error: Option<String>,
    /// The last line the action wrote to its stderr.
    pub last_stderr: Option<String>,
}

impl StepSink<'_> {
    /// What the step's lines have said so far of why it failed.
    pub fn cause(&self) -> Cause {
        self.cause.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Queues a masked line for the store and the terminal.
    fn record(&self, stream: &'static str, masked: &str) {
        match logline::classify(masked) {
            logline::Kind::AgentError(e) => self.cause.lock().unwrap_or_else(|e| e.into_inner()).agent_error = Some(logline::without_sandbox(e)),
            logline::Kind::Action { stream: "stderr", text, .. } if !text.trim().is_empty() => {
                self.cause.lock().unwrap_or_else(|e| e.into_inner()).last_stderr = Some(text.to_string())
            }
            _ => {}
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let (stored, shown) = &mut *pending;
        stored.push(stream, masked);
        if let Some(line) = self.output.view.show(&self.prefix, masked, None).filter(|_| !self.output.view.silent) {
            shown.extend_from_slice(line.as_bytes());
            shown.push(b'\n');
        }
    }

    /// Hands the queued lines to the store, then writes them to the terminal. Blocks while the
    /// terminal (or whatever reads `change run`) is slow: the step's output then waits in the
    /// agent, never dropped.
    fn write_pending(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let (stored, shown) = &mut *pending;
        if stored.is_empty() {
            return;
        }
        // The store first: a line shown has been handed to the store.
        self.output.store.append_logs(self.step_id, stored);
        let mut out = self.output.out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = out.write_all(shown).and_then(|()| out.flush());
        shown.clear();
    }
}

impl Drop for StepSink<'_> {
    fn drop(&mut self) {
        self.write_pending();
    }
}

impl LogSink for StepSink<'_> {
    fn line(&self, stream: &'static str, line: &str) {
        let pending = {
            let mut pieces = self.pieces.lock().unwrap_or_else(|e| e.into_inner());
            // Most lines come whole: no stream is then in the middle of one to look up.
            if pieces.is_empty() {
                None
            } else {
                pieces.remove(stream)
            }
        };
        let masked = match pending {
            // The end of a line sent in pieces: masked as the rest of that one stream.
            Some(mut masking) => {
                let mut out = Vec::with_capacity(line.len());
                masking.push(line.as_bytes(), &mut out);
                masking.flush(&mut out);
                String::from_utf8_lossy(&out).into_owned()
            }
            None => {
                // A line without secrets is recorded as it is: no copy, no clone of the masker.
                let masker = self.output.masker.read().unwrap_or_else(|e| e.into_inner());
                let masked = masker.mask(line);
                drop(masker);
                self.record(stream, &masked);
                return;
            }
        };
        self.record(stream, &masked);
    }

    fn piece(&self, stream: &'static str, piece: &str) {
        let mut pieces = self.pieces.lock().unwrap_or_else(|e| e.into_inner());
        let masking = pieces.entry(stream).or_insert_with(|| self.output.masker().stream());
        let mut out = Vec::with_capacity(piece.len());
        masking.push(piece.as_bytes(), &mut out);
        drop(pieces);
        // The tail that could still start a secret stays behind, for the next piece.
        if !out.is_empty() {
            self.record(stream, &String::from_utf8_lossy(&out));
        }
    }

    fn flush(&self) {
        self.write_pending();
    }

    fn end(&self, stream: &'static str) {
        let pending = self.pieces.lock().unwrap_or_else(|e| e.into_inner()).remove(stream);
        if let Some(mut masking) = pending {
            let mut out = Vec::new();
            masking.flush(&mut out);
            if !out.is_empty() {
                self.record(stream, &String::from_utf8_lossy(&out));
            }
        }
        self.write_pending();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::BackendKind;
    use crate::store::NewChangeRow;

    #[test]
    fn the_default_view_shows_the_actions_lines_without_their_time_and_hides_the_agents_records() {
        let quiet = View::default();
        let action = "2026-12-08T00:02:23.679314Z deploy stdout| deploying demo-app";
        let record = "2026-12-08T00:02:23.685680Z  INFO phase finished phase=\"action\" duration_ms=11.869000000001";
        assert_eq!(quiet.show("[1 deploy]", action, None).as_deref(), Some("[1 deploy]  deploying demo-app"));
        assert_eq!(quiet.show("[1 deploy]", "2026-12-08T00:02:23.679314Z deploy stderr| oops", None).as_deref(), Some("[1 deploy]! oops"));
        assert_eq!(quiet.show("[1 deploy]", record, None), None);
        assert_eq!(quiet.show("[1 deploy]", "opschain: checked out 753ca6d47fef in 0.014s", None), None);
        let verbose = View { verbose: true, timestamps: true, silent: false };
        assert_eq!(verbose.show("[1 deploy]", action, None).as_deref(), Some("2026-12-08T00:02:23.679314Z [1 deploy]  deploying demo-app"));
        assert_eq!(
            verbose.show("[1 deploy]", record, None).as_deref(),
            Some("2026-12-08T00:02:23.685680Z [1 deploy]  INFO phase finished phase=\"action\" duration_ms=11.9")
        );
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_change_masks_its_runner_set_and_the_build_sets_its_properties_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (set, value) in [("runner", "runner-value-1"), ("opschain-build-env", "default-build-2"), ("listed", "listed-value-3"), ("other", "unused-value-4")] {
            store.set_secrets(set, &obj(json!({"V": value}))).unwrap();
        }
        let none = Map::new();
        let values = |s: BTreeMap<String, String>| s.into_values().collect::<Vec<_>>();
        assert_eq!(values(change_secrets(&store, Some("runner"), &none, &none).unwrap()), ["default-build-2", "runner-value-1"]);
        let listed = obj(json!({"opschain": {"config": {"build_secrets": ["listed"]}}}));
        assert_eq!(values(change_secrets(&store, None, &none, &listed).unwrap()), ["listed-value-3"]);
        let bad = obj(json!({"opschain": {"config": {"build_secrets": "listed"}}}));
        assert_eq!(values(change_secrets(&store, None, &bad, &none).unwrap()), ["default-build-2"], "an invalid list counts as the default");
    }

    /// A terminal that keeps what is printed.
    #[derive(Clone, Default)]
    struct Terminal(std::sync::Arc<Mutex<Vec<u8>>>);

    impl Write for Terminal {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Feeds a sink of step 1 (with the secret `hunter2-secret`) whose store is in a temporary
    /// directory; returns what it stored, after checking that the terminal got the same lines.
    fn stored(feed: impl FnOnce(&StepSink<'_>)) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let p = store.ensure_project("p").unwrap();
        let e = store.ensure_environment(p, "e").unwrap();
        let c = store
            .create_change(&NewChangeRow {
                project_id: p,
                environment_id: e,
                action: "a",
                repo: dir.path(),
                git_rev: "HEAD",
                commit: "0",
                backend: BackendKind::Process,
                secret_set: None,
                folder: ".opschain",
                metadata: None,
            })
            .unwrap()
            .0;
        let step = store.steps(c).unwrap()[0].id;
        let terminal = Terminal::default();
        // Verbose: every line is shown, the backend's own ones too.
        let output = ChangeOutput::with_terminal(&store, Box::new(terminal.clone())).with_view(View { verbose: true, ..View::default() });
        output.add_secrets(BTreeMap::from([("s/TOKEN".to_string(), "hunter2-secret".to_string())]));
        let sink = output.step_sink(step, "a");
        feed(&sink);
        drop(sink);
        drop(output);
        // A write waited for commits after every log line queued before it.
        store.ensure_project("p").unwrap();
        let lines: Vec<String> = store.logs(c).unwrap().into_iter().map(|l| l.line).collect();
        let printed = String::from_utf8(terminal.0.lock().unwrap().clone()).unwrap();
        let printed: Vec<&str> = printed.lines().map(|l| l.strip_prefix(&format!("[{step} a]  ")).unwrap()).collect();
        assert_eq!(printed, lines, "the terminal and the store got the same masked lines");
        lines
    }

    #[test]
    fn lines_and_their_encodings_are_masked_before_they_are_stored() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode("hunter2-secret");
        let lines = stored(|sink| {
            sink.line("stdout", "token=hunter2-secret;");
            sink.line("stderr", &format!("basic {b64}"));
            sink.line("stdout", "nothing here");
        });
        assert_eq!(lines, ["token=****;", "basic ****", "nothing here"]);
    }

    #[test]
    fn a_secret_split_across_reads_and_across_the_pieces_of_a_long_line_is_masked() {
        // Through a real pipe (reads of at most 64 KiB) and the backend's line splitting: the
        // first secret straddles the 1 MiB cut of an over-long line.
        let script = "head -c 1048571 /dev/zero | tr '\\0' a; printf 'hunter2-secret tail\\nnext hunter2-secret\\n'";
        let mut command = std::process::Command::new("/bin/sh");
        command.args(["-c", script]).stdin(std::process::Stdio::null());
        let cancel = std::sync::atomic::AtomicBool::new(false);
        let lines = stored(|sink| {
            let status = super::super::backend::run_streamed(command, "sh".into(), sink, &cancel, std::time::Duration::from_secs(1), None).unwrap();
            assert!(status.success());
        });
        let all = lines.concat();
        assert!(!all.contains("hunter2-secret") && !all.contains("r2-secret"), "{}", &all[all.len().saturating_sub(80)..]);
        assert_eq!(all.matches("****").count(), 2);
        assert!(lines.len() >= 3 && lines.last().unwrap() == "next ****", "{:?}", lines.iter().map(String::len).collect::<Vec<_>>());
    }

    #[test]
    fn a_secret_cut_between_the_pieces_of_a_long_line_is_masked() {
        let lines = stored(|sink| {
            sink.piece("stdout", "aaaa hunt");
            sink.piece("stdout", "er2-sec");
            sink.line("stdout", "ret bbbb");
            sink.piece("stderr", "cccc hunter2-se");
            sink.end("stderr");
        });
        assert_eq!(lines.concat(), "aaaa **** bbbbcccc hunter2-se");
        assert!(!lines.concat().contains("hunter2-secret"));
    }
}
