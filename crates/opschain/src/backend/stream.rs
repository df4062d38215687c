//! The stream transport on the controller's side ([`opschain_runner::transport`] has the agent's side and
//! the frame): the step context goes to the agent through the container's standard input, and
//! `step_result.json` comes back framed in its output, taken out of the log lines by
//! [`FrameSink`]. No disk is shared with the step, so the step may run on any engine that
//! streams a container's output; the Docker backend uses it with `--transport stream`, the
//! Kubernetes backend always (its context comes through a Secret instead of stdin).

use std::ffi::OsString;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

use super::{status_code, stream_and_wait, BackendError, LogSink, StepReport};
use crate::image::docker::Docker;
use opschain_runner::transport::Decoder;

/// How a container backend passes the step context in and gets `step_result.json` back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// The repository folder, with the step context in it, bind-mounted into the container: the
    /// result lands on the controller's disk (the default on the Docker backend: the controller
    /// and the engine share a host).
    #[default]
    BindMount,
    /// The context through standard input, the result framed in the output: nothing shared.
    Stream,
}

impl std::str::FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> Result<Transport, String> {
        match s {
            "bind-mount" => Ok(Transport::BindMount),
            "stream" => Ok(Transport::Stream),
            other => Err(format!("unknown transport {other:?} (known: bind-mount, stream)")),
        }
    }
}

/// A new frame nonce: 24 hex digits from the kernel's random source (`getrandom(2)`), so that no
/// output of another step can pass for this step's frame.
pub fn nonce() -> String {
    let mut bytes = [0u8; 12];
    let mut filled = 0;
    while filled < bytes.len() {
        // SAFETY: writing at most the rest of a buffer we own.
        let n = unsafe { libc::getrandom(bytes[filled..].as_mut_ptr().cast(), bytes.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            // No getrandom (a kernel before 3.17): the time and pid are unique enough to tell
            // this step's frame from another's, which is all the nonce is for.
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
            return format!("{:016x}{:08x}", nanos as u64, std::process::id());
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A [`LogSink`] that takes the lines of one step's result frame out of its output and passes
/// every other line on.
pub struct FrameSink<'a> {
    inner: &'a dyn LogSink,
    decoder: Mutex<Decoder>,
}

impl<'a> FrameSink<'a> {
    /// A sink for the frame marked `nonce`, of at most `max` bytes, the log lines going to
    /// `inner`.
    pub fn new(nonce: &str, max: u64, inner: &'a dyn LogSink) -> FrameSink<'a> {
        FrameSink { inner, decoder: Mutex::new(Decoder::with_limit(nonce, max)) }
    }

    /// The step's result, or why there is none (as [`super::read_result`] gives them).
    pub fn finish(self) -> (Option<StepReport>, Option<String>) {
        let decoder = self.decoder.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
        match decoder.finish() {
            Ok(bytes) => match StepReport::from_slice(&bytes) {
                Ok(result) => (Some(result), None),
                Err(e) => (None, Some(format!("the step's result frame: invalid step result: {e}"))),
            },
            Err(e) => (None, Some(format!("no step result: {e}"))),
        }
    }
}

impl LogSink for FrameSink<'_> {
    fn line(&self, stream: &'static str, line: &str) {
        let consumed = self.decoder.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).feed(line);
        if !consumed {
            self.inner.line(stream, line);
        }
    }
}

/// The limits of a step run through the stream transport on the Docker engine.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// The largest result frame taken.
    pub max_result_bytes: u64,
    /// The time limits of the engine calls (the container's start, `rm -f`).
    pub timeouts: super::engine::EngineTimeouts,
    /// The agent's TERM-to-KILL grace (given as `--grace-secs`; the run is killed
    /// [`super::KILL_AFTER_GRACE`] after it).
    pub grace: std::time::Duration,
}

/// What a step run through a stream transport gave.
#[derive(Debug)]
pub struct Streamed {
    /// The exit status of the command (the container's, for `docker run`).
    pub exit_status: i32,
    /// The result, when a whole frame came.
    pub result: Option<StepReport>,
    /// Why the result is missing, when it is.
    pub result_error: Option<String>,
}

/// Runs `command` (a `docker run -i ... IMAGE step --context-from - --result-frame NONCE`
/// made by the caller around [`nonce`]), writes `context` to its standard input and closes it,
/// streams its output through a [`FrameSink`] into `sink`, and waits for it (cancellable
/// as the Docker backend's other commands: SIGTERM, SIGKILL after `grace`; within `bound`).
#[allow(clippy::too_many_arguments)]
pub fn run_with_stdin(
    mut command: Command,
    context: &[u8],
    nonce: &str,
    max_result_bytes: u64,
    sink: &dyn LogSink,
    cancel: &AtomicBool,
    grace: std::time::Duration,
    bound: Option<&super::Bound>,
) -> Result<Streamed, BackendError> {
    let name = Path::new(command.get_program()).display().to_string();
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|source| BackendError::Spawn { program: name.clone(), source })?;
    let stdin = child.stdin.take();
    let (stdout, stderr) = (child.stdout.take().map(Into::into), child.stderr.take().map(Into::into));
    let frames = FrameSink::new(nonce, max_result_bytes, sink);
    let status = std::thread::scope(|scope| {
        // The context is written from its own thread while the output is read here: a context
        // larger than the pipe would otherwise block against a container already writing.
        let writer = scope.spawn(move || {
            if let Some(mut stdin) = stdin {
                // A container that ends before reading it all closes the pipe: its exit status
                // and output say why, so the write's error adds nothing.
                let _ = stdin.write_all(context);
            }
        });
        let status = stream_and_wait(&mut child, stdout, stderr, name, &frames, cancel, grace, false, bound);
        let _ = writer.join();
        status
    })?;
    let (result, result_error) = frames.finish();
    Ok(Streamed { exit_status: status_code(status), result, result_error })
}

/// Runs one step in a container of `image` with the stream transport: `docker run -i --rm --name
/// NAME --env OPSCHAIN_REPO_FOLDER=FOLDER IMAGE step --context-from - --result-frame NONCE
/// --grace-secs GRACE`, the context on standard input, the result out of the output. A cancel
/// kills the run [`super::KILL_AFTER_GRACE`] after the agent's grace (`limits.grace`). A container left behind
/// (a failed or cancelled run) is removed.
#[allow(clippy::too_many_arguments)]
pub fn docker_step(
    docker: &Docker,
    image: &str,
    name: &str,
    folder: &str,
    context: &super::ContextDocument,
    limits: &StreamLimits,
    sink: &dyn LogSink,
    cancel: &AtomicBool,
) -> Result<super::StepOutput, BackendError> {
    let nonce = nonce();
    let grace_secs = super::agent_grace_secs(limits.grace).to_string();
    let folder_env = format!("OPSCHAIN_REPO_FOLDER={folder}");
    let args: Vec<OsString> =
        ["run", "-i", "--rm", "--name", name, "--env", &folder_env, image, "step", "--context-from", "-", "--result-frame", &nonce, "--grace-secs", &grace_secs]
            .iter()
            .map(OsString::from)
            .collect();
    let mut bytes = Vec::new();
    context.write_to(&mut bytes).expect("writing to memory cannot fail");
    let mut command = docker.command();
    command.args(&args);
    // `docker run` passes the SIGTERM on to the agent; it is killed only once the agent's own
    // grace ladder has had its time.
    let bound = limits.timeouts.start_bound(format!("docker run {image} (container {name})"));
    let run = run_with_stdin(command, &bytes, &nonce, limits.max_result_bytes, sink, cancel, super::agent_kill_after(limits.grace), Some(&bound));
    // `docker run` exits 125-127 for its own failures too (the container may not have run), and a
    // cancelled run leaves its container behind: only then is the engine asked again.
    // Not stopped by a cancel: it is what a cancel leaves to do.
    let remove = || {
        let bound = limits.timeouts.call_bound(format!("docker rm -f {name}"));
        let _ = super::engine::call(docker, &["rm", "-f", name], &bound, &AtomicBool::new(false));
    };
    match run {
        Ok(out) => {
            if out.exit_status >= 125 {
                remove();
            }
            Ok(super::StepOutput { exit_status: out.exit_status, result: out.result, result_error: out.result_error })
        }
        Err(e) => {
            remove();
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Lines(Mutex<Vec<String>>);

    impl LogSink for Lines {
        fn line(&self, _stream: &'static str, line: &str) {
            self.0.lock().unwrap().push(line.to_string());
        }
    }

    #[test]
    fn nonces_are_unique_and_valid() {
        let (a, b) = (nonce(), nonce());
        assert_ne!(a, b);
        opschain_runner::transport::check_nonce(&a).unwrap();
    }

    #[test]
    fn a_real_process_gets_the_context_on_stdin_and_its_framed_output_is_taken_apart() {
        // `sh` stands in for the container: it echoes a log line, frames what it read on stdin
        // with the agent's own encoder (printed by this test binary ahead of time), and exits 3.
        let context = vec![b'x'; 300_000];
        let nonce = nonce();
        let mut framed = Vec::new();
        opschain_runner::transport::write_frame(
            &nonce,
            br#"{"project":{"properties_diff":[]},"environment":{"properties_diff":[]},"step":{"properties":{}},"steps":{"children":[],"child_execution_strategy":null}}"#,
            &mut framed,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("frame"), &framed).unwrap();
        let script = format!("wc -c >&2; echo a log line; cat {}; echo after; exit 3", dir.path().join("frame").display());
        let lines = Lines::default();
        let cancel = AtomicBool::new(false);
        let mut sh = Command::new("/bin/sh");
        sh.arg("-c").arg(script);
        let out = run_with_stdin(sh, &context, &nonce, u64::MAX, &lines, &cancel, std::time::Duration::from_secs(1), None).unwrap();
        assert_eq!(out.exit_status, 3);
        assert!(out.result.is_some(), "{:?}", out.result_error);
        let lines = lines.0.into_inner().unwrap();
        // stdout and stderr are separate pipes: their lines' relative order is not kept.
        let mut lines: Vec<&str> = lines.iter().map(|l| l.trim()).collect();
        lines.sort();
        assert_eq!(lines, ["300000", "a log line", "after"]);
    }
}
