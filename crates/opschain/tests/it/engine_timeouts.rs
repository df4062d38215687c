//! Calls to a Docker engine that does not answer: a fake `docker` CLI (a shell script) that never
//! answers the calls the test picks, and a fake engine socket that accepts connections and never
//! answers. The step must fail within its limit with an error naming the call that hung, and
//! `change cancel` must still end the change, however the engine behaves. No engine is needed.

use crate::common::git;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A fake docker CLI: `image inspect` answers as a step image built from the current base image
/// would (so the step goes on to `docker run`) unless `$FAKE_HANG` names it; every command named
/// in `$FAKE_HANG` (`inspect`, `run`, `rm`) never answers and ignores SIGTERM.
const FAKE_DOCKER: &str = r#"#!/bin/sh
hang() { trap '' TERM; while :; do sleep 1; done; }
case "$1" in
  image) touch "$FAKE_DIR/inspect.called"
         case " $FAKE_HANG " in *" inspect "*) hang;; esac
         echo "sha256:base "; echo "sha256:step sha256:base"; exit 0;;
  run)   echo "$$" > "$FAKE_DIR/run.pid"
         case " $FAKE_HANG " in *" run "*) hang;; esac; exit 0;;
  rm)    echo rm >> "$FAKE_DIR/rm.calls"
         case " $FAKE_HANG " in *" rm "*) hang;; esac; exit 0;;
esac
echo "fake docker: unexpected call: $*" >&2
exit 1
"#;

/// The test's fakes: the CLI, a socket that never answers, and a repository.
struct Fakes {
    dir: tempfile::TempDir,
    _listener: std::os::unix::net::UnixListener,
}

impl Fakes {
    fn new() -> Fakes {
        let dir = tempfile::tempdir().unwrap();
        let docker = dir.path().join("docker");
        std::fs::write(&docker, FAKE_DOCKER).unwrap();
        std::fs::set_permissions(&docker, std::fs::Permissions::from_mode(0o755)).unwrap();
        // The engine socket: connections are accepted (by the kernel's backlog) and never
        // answered.
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("engine.sock")).unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(repo.join(".opschain")).unwrap();
        std::fs::write(repo.join(".opschain/actions.toml"), "[actions.ok]\nrun = \"echo ran\"\n").unwrap();
        git(&repo, &["init", "-q"]);
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "-m", "one"]);
        Fakes { dir, _listener: listener }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `opschain ARGS` against the fakes: `hang` names the docker commands that never answer;
    /// `socket` whether the engine socket is the fake one (else none is found and the CLI asked).
    fn opschain(&self, state: &Path, hang: &str, socket: bool) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_opschain"));
        let host = if socket { format!("unix://{}", self.path("engine.sock").display()) } else { format!("unix://{}", self.path("no.sock").display()) };
        c.env("OPSCHAIN_STATE_DIR", state)
            .env("OPSCHAIN_RUNNER_BIN", crate::common::runner_bin())
            .env("DOCKER_HOST", host)
            .env_remove("DOCKER_CONTEXT")
            .env("FAKE_HANG", hang)
            .env("FAKE_DIR", self.dir.path())
            .env("OPSCHAIN_GRACE_SECS", "1")
            .env("OPSCHAIN_DOCKER_TIMEOUT_SECS", "2")
            .env_remove("OPSCHAIN_REPO_FOLDER")
            .env_remove("OPSCHAIN_BACKEND");
        c
    }

    /// `change create --backend docker` of the repository.
    fn create(&self, state: &Path, hang: &str, socket: bool, extra: &[&str]) -> Command {
        crate::common::make_target(state, "p", "e");
        let mut c = self.opschain(state, hang, socket);
        c.args(["change", "create", "-p", "p", "-e", "e", "-a", "ok", "--backend", "docker", "--docker-base-image", "fake-base:1", "--docker-bin"])
            .arg(self.path("docker"))
            .arg("--repo")
            .arg(self.path("repo"))
            .args(extra);
        c
    }
}

/// Waits for `child` to end, its output read meanwhile; killed after 60 s (a hang fails the
/// test instead of wedging it). Returns its exit code (`None`: killed) and output.
fn finish(mut child: std::process::Child) -> (Option<i32>, String) {
    let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let readers = [std::thread::spawn(move || std::io::read_to_string(stdout).unwrap()), std::thread::spawn(move || std::io::read_to_string(stderr).unwrap())];
    let started = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (code, readers.map(|r| r.join().unwrap()).join(""))
}

/// Runs `command` to its end (see [`finish`]); also how long it took.
fn bounded(mut command: Command) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let (code, text) = finish(command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap());
    (code, text, started.elapsed())
}

#[test]
fn an_engine_that_does_not_answer_fails_the_step_within_the_limit_naming_the_call() {
    let fakes = Fakes::new();
    // The socket accepts and never answers: the image inspect over it.
    let (code, text, took) = bounded(fakes.create(&fakes.path("state-socket"), "", true, &[]));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("docker image inspect fake-base:1 opschain-step:") && text.contains("did not answer within 2s (the limit is --docker-timeout-secs)"), "{text}");
    assert!(took < Duration::from_secs(20), "{took:?}: {text}");

    // No socket: the CLI's image inspect hangs.
    let (code, text, took) = bounded(fakes.create(&fakes.path("state-cli"), "inspect", false, &[]));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("docker image inspect fake-base:1 opschain-step:") && text.contains("did not answer within 2s"), "{text}");
    assert!(!text.contains("GET /images"), "asked through the CLI: {text}");
    assert!(took < Duration::from_secs(20), "{took:?}: {text}");

    // The image is there, but `docker run` never starts the container, and `rm -f` hangs too.
    let (code, text, took) = bounded(fakes.create(&fakes.path("state-run"), "run rm", false, &["--docker-start-secs", "3"]));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("docker run opschain-step:") && text.contains("did not answer within 3s (the limit is --docker-start-secs)"), "{text}");
    assert!(std::fs::read_to_string(fakes.path("rm.calls")).unwrap_or_default().contains("rm"), "the container was removed: {text}");
    assert!(took < Duration::from_secs(25), "{took:?}: {text}");
    let run_pid: i32 = std::fs::read_to_string(fakes.path("run.pid")).unwrap().trim().parse().unwrap();
    assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(run_pid), None).is_err(), "the hung docker run was killed");
}

#[test]
fn cancel_ends_a_change_whose_engine_does_not_answer() {
    let fakes = Fakes::new();
    // The call that hangs has a limit far beyond the test's patience: only the cancel can end
    // it. After a cancelled run, `rm -f` hangs too and is bounded by its own (short) limit.
    let cases: [(&str, &str, &[&str]); 2] =
        [("run rm", "run.pid", &["--docker-start-secs", "600", "--docker-timeout-secs", "3"]), ("inspect", "inspect.called", &["--docker-timeout-secs", "600"])];
    for (hang, marker, limits) in cases {
        let _ = std::fs::remove_file(fakes.path(marker));
        let state = fakes.path(&format!("state-{marker}"));
        let mut create = fakes.create(&state, hang, false, limits);
        let child = create.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let started = Instant::now();
        while !fakes.path(marker).exists() {
            assert!(started.elapsed() < Duration::from_secs(30), "{hang}: the call never came");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        let cancelled_at = Instant::now();
        let cancel = fakes.opschain(&state, "", false).args(["change", "cancel", "1"]).output().unwrap();
        assert!(cancel.status.success(), "{hang}: {}{}", String::from_utf8_lossy(&cancel.stdout), String::from_utf8_lossy(&cancel.stderr));
        let (code, text) = finish(child);
        let took = cancelled_at.elapsed();
        assert_eq!(code, Some(2), "{hang}: the change ends cancelled: {text}");
        assert!(took < Duration::from_secs(20), "{hang}: cancelled in {took:?}: {text}");
    }
}
