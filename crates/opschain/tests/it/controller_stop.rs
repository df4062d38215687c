//! How a change stops, through the real `opschain` binary on the process backend: a cancelled
//! step that ignores SIGTERM keeps the property changes it recorded; a controller killed with -9
//! is recognised as lost by the next command that looks; SIGINT, SIGTERM and SIGHUP of a
//! foreground `change create` cancel its change; the same on the Docker backend (ignored unless
//! asked for: it needs an engine).

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn opschain(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_opschain"));
    c.env("OPSCHAIN_STATE_DIR", state)
        .env("OPSCHAIN_RUNNER_BIN", crate::common::runner_bin())
        .env("OPSCHAIN_GRACE_SECS", "2")
        .env_remove("OPSCHAIN_REPO_FOLDER")
        .env_remove("OPSCHAIN_BACKEND");
    c
}

fn run(state: &Path, args: &[&str]) -> Output {
    opschain(state).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("--- stdout\n{}\n--- stderr\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A git repository whose `.opschain/actions.toml` is `actions`.
fn project(actions: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(".opschain")).unwrap();
    std::fs::write(dir.path().join(".opschain/actions.toml"), actions).unwrap();
    for args in [&["init", "-q"][..], &["add", "-A"], &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init"]] {
        assert!(Command::new("git").arg("-C").arg(dir.path()).args(args).status().unwrap().success());
    }
    dir
}

/// Makes project `p` and its environment `dev` (a change names ones that exist).
fn make_environment(state: &Path) {
    for args in [&["project", "create", "--code", "p"][..], &["environment", "create", "-p", "p", "--code", "dev"]] {
        let out = run(state, args);
        assert!(out.status.success(), "{}", text(&out));
    }
}

/// `change create` of `action` in environment `dev` of project `p`, in the background.
fn spawn_change(state: &Path, repo: &Path, action: &str) -> Child {
    make_environment(state);
    opschain(state)
        .args(["change", "create", "--repo", repo.to_str().unwrap(), "-p", "p", "-e", "dev", "-a", action])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the stored log of change `id` has a line containing `marker`.
fn wait_for_log(state: &Path, id: u32, marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if state.join("opschain.db").exists() {
            let out = run(state, &["change", "logs", &id.to_string()]);
            if String::from_utf8_lossy(&out.stdout).contains(marker) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "no {marker:?} in the log of change {id}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn env_props(state: &Path) -> Value {
    let out = run(state, &["properties", "show", "-p", "p", "-e", "dev"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The status column of `change ls` for change `id`.
fn listed_status(state: &Path, id: u32) -> String {
    let out = run(state, &["change", "ls"]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(&id.to_string())).then(|| words.next().unwrap_or_default().to_string())
        })
        .unwrap_or_else(|| panic!("change {id} is not listed"))
}

const STUBBORN: &str = r#"
[actions.stubborn]
run = "trap '' TERM; opschain-runner property set --environment kept yes; echo recorded; sleep 30"
"#;

#[test]
fn a_cancelled_step_that_ignores_sigterm_keeps_the_properties_it_recorded() {
    let state = tempfile::tempdir().unwrap();
    let repo = project(STUBBORN);
    // Properties of a few MB: writing the result after the grace takes the agent a while, so a
    // controller that killed it at the end of the same grace would cut it short every time.
    let servers: serde_json::Map<String, Value> =
        (0..40_000).map(|i| (format!("srv-{i:05}"), json!({"ip": format!("10.0.{}.{}", i / 256, i % 256), "roles": ["web", "db"]}))).collect();
    let file = state.path().join("props.json");
    std::fs::write(&file, json!({"servers": servers}).to_string()).unwrap();
    let out = run(state.path(), &["properties", "set", "-p", "p", "-e", "dev", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let controller = spawn_change(state.path(), repo.path(), "stubborn");
    wait_for_log(state.path(), 1, "recorded");
    let out = run(state.path(), &["change", "cancel", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = controller.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    // The agent killed the action after its grace and wrote its result before the controller's
    // kill: the step's recorded change is applied.
    let props = env_props(state.path());
    assert_eq!(props["kept"], json!("yes"), "{}", text(&out));
    assert_eq!(props["servers"].as_object().map(|s| s.len()), Some(40_000));
}

const SLOW: &str = r#"
[actions.slow]
run = "echo slow-step-began; sleep ${SLOW_SECS:-0}"

[actions.quick]
run = "true"
"#;

/// The process id of the only child of `pid` (what `unshare --fork` runs).
fn only_child(pid: u32) -> u32 {
    let children: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            // The parent's id is the second field after the command's closing parenthesis.
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)).and_then(|p| p.parse::<u32>().ok()) == Some(pid)
        })
        .collect();
    assert_eq!(children.len(), 1, "the children of unshare: {children:?}");
    children[0]
}

/// Whether this user can make a PID namespace (root can).
fn pid_namespaces_work() -> bool {
    Command::new("unshare").args(["--pid", "--fork", "--mount-proc", "true"]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

#[test]
fn a_change_whose_controller_was_killed_is_recorded_by_the_next_command_and_frees_its_environment() {
    let state = tempfile::tempdir().unwrap();
    let repo = project(SLOW);
    make_environment(state.path());
    // As PID 1 of its own PID namespace where this user can make one (as in every `docker run`
    // of the controller): its process id then names a live process in any other namespace.
    let as_pid_1 = pid_namespaces_work();
    let program = env!("CARGO_BIN_EXE_opschain");
    let mut command = if as_pid_1 {
        let mut c = opschain(state.path());
        let mut unshare = Command::new("unshare");
        unshare.args(["--pid", "--fork", "--mount-proc", program]).envs(c.get_envs().filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))));
        c = unshare;
        c
    } else {
        opschain(state.path())
    };
    let mut controller = command
        .env("SLOW_SECS", "30")
        .args(["change", "create", "--repo", repo.path().to_str().unwrap(), "-p", "p", "-e", "dev", "-a", "slow"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_log(state.path(), 1, "slow-step-began");
    let pid = if as_pid_1 { only_child(controller.id()) } else { controller.id() };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    controller.wait().unwrap();

    // The next command that looks records it, once, and says so.
    let out = run(state.path(), &["change", "ls"]);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("change 1 was left unfinished by a controller that is gone"), "as PID 1: {as_pid_1}\n{}", text(&out));
    assert!(stderr.contains("`opschain change retry 1`"), "{}", text(&out));
    assert_eq!(listed_status(state.path(), 1), "error");
    let out = run(state.path(), &["change", "ls"]);
    assert!(out.stderr.is_empty(), "recorded once: {}", text(&out));
    let show = run(state.path(), &["change", "show", "1"]);
    let show = String::from_utf8_lossy(&show.stdout);
    assert!(show.contains("reason: the controller running it was lost"), "{show}");
    assert!(show.contains("[slow] error"), "{show}");
    assert!(show.contains("its controller was lost while it ran"), "{show}");
    // Its sandboxes (step contexts, secrets) are gone.
    assert!(!state.path().join("sandboxes/change-1").exists());

    // A new change of the environment runs at once, not queued behind the dead one.
    let mut next = opschain(state.path())
        .args(["change", "create", "--repo", repo.path().to_str().unwrap(), "-p", "p", "-e", "dev", "-a", "quick"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while next.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            next.kill().unwrap();
            panic!("the new change of the environment never ended: {}", text(&next.wait_with_output().unwrap()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = next.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("queued"), "{}", text(&out));

    // And the lost change can be retried to its end.
    let out = run(state.path(), &["change", "retry", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(listed_status(state.path(), 1), "success");
}

#[test]
fn sigint_sigterm_and_sighup_of_a_foreground_change_cancel_it_with_one_line_saying_how_to_retry() {
    for signal in [nix::sys::signal::Signal::SIGINT, nix::sys::signal::Signal::SIGTERM, nix::sys::signal::Signal::SIGHUP] {
        let state = tempfile::tempdir().unwrap();
        let repo = project(SLOW);
        make_environment(state.path());
        let controller = opschain(state.path())
            .env("SLOW_SECS", "30")
            .args(["change", "create", "--repo", repo.path().to_str().unwrap(), "-p", "p", "-e", "dev", "-a", "slow"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_log(state.path(), 1, "slow-step-began");
        let started = Instant::now();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(controller.id() as i32), signal).unwrap();
        let out = controller.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{signal}: {}", text(&out));
        assert!(started.elapsed() < Duration::from_secs(20), "{signal}: the cancel took {:?}", started.elapsed());
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("cancelled")).collect();
        assert_eq!(lines.len(), 1, "{signal}: {}", text(&out));
        assert!(lines[0].contains(&format!("change 1 cancelled on {signal}")), "{}", lines[0]);
        assert!(lines[0].contains("`opschain change retry 1`"), "{}", lines[0]);
        assert_eq!(listed_status(state.path(), 1), "cancelled", "{signal}");
        let show = String::from_utf8_lossy(&run(state.path(), &["change", "show", "1"]).stdout).to_string();
        assert!(show.contains("[slow] cancelled"), "{signal}: {show}");
        // A retry runs it to its end.
        let out = run(state.path(), &["change", "retry", "1"]);
        assert!(out.status.success(), "{signal}: {}", text(&out));
    }
}

/// The Docker backend's actions: the same as on the process backend, their time fixed (a
/// container does not get the controller's environment).
const IN_CONTAINERS: &str = r#"
[actions.stubborn]
run = "trap '' TERM; opschain-runner property set --environment kept yes; echo recorded; sleep 30"

[actions.slow]
run = "echo slow-step-began; sleep 30"
"#;

/// An image removed when dropped, also when a test fails.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new(crate::docker_base::DOCKER).args(["rmi", "--force", &self.0]).output();
    }
}

/// Images removed when dropped, also when a test fails.
struct Images(Vec<String>);

impl Drop for Images {
    fn drop(&mut self) {
        for tag in &self.0 {
            let _ = Command::new(crate::docker_base::DOCKER).args(["rmi", "--force", tag]).output();
        }
    }
}

/// `change create --backend docker` of `action` with the base image `base` and `transport`.
fn spawn_docker_change(state: &Path, repo: &Path, base: &str, transport: &str, action: &str) -> Child {
    make_environment(state);
    opschain(state)
        .args(["change", "create", "--backend", "docker", "--docker-bin", crate::docker_base::DOCKER, "--docker-base-image", base, "--transport", transport])
        .args(["--repo", repo.to_str().unwrap(), "-p", "p", "-e", "dev", "-a", action])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the step has run for a while: its log line `marker` is stored (the bind-mount
/// transport streams the log as it comes), or, with the stream transport (whose log reaches the
/// store only once the step's output ends), its container has run for 5 s.
fn wait_for_step(state: &Path, transport: &str, controller: u32, marker: &str) {
    if transport != "stream" {
        return wait_for_log(state, 1, marker);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ps = Command::new(crate::docker_base::DOCKER).args(["ps", "--format", "{{.Names}}"]).output().unwrap();
        if String::from_utf8_lossy(&ps.stdout).lines().any(|n| n.starts_with("opschain-step-1-") && n.ends_with(&format!("-{controller}"))) {
            std::thread::sleep(Duration::from_secs(5));
            return;
        }
        assert!(Instant::now() < deadline, "the step's container never ran");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The step images a change's output says it built.
fn built_images(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(": built image "))
        .map(|(_, tag)| tag.split_whitespace().next().unwrap_or_default().to_string())
        .collect()
}

#[test]
#[ignore = "needs a Docker engine: scripts/test runs it where it finds one"]
fn on_the_docker_backend_a_cancelled_step_keeps_its_properties_and_sigint_cancels_the_change() {
    crate::common::required("a Docker engine", crate::docker_base::engine_runs());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let base = Image(format!("fix-props-stop-base:{}-{nanos}", std::process::id()));
    crate::docker_base::build_image_as(crate::common::runner_bin(), &base.0, "");
    let repo = project(IN_CONTAINERS);
    let mut step_images = Images(Vec::new());
    for transport in ["bind-mount", "stream"] {
        // A step that ignores SIGTERM, cancelled: its recorded change is applied (large
        // properties, so that the agent's result takes a while after its grace).
        let state = tempfile::tempdir().unwrap();
        let servers: serde_json::Map<String, Value> = (0..40_000).map(|i| (format!("srv-{i:05}"), json!({"ip": format!("10.0.{}.{}", i / 256, i % 256)}))).collect();
        let file = state.path().join("props.json");
        std::fs::write(&file, json!({"servers": servers}).to_string()).unwrap();
        let out = run(state.path(), &["properties", "set", "-p", "p", "-e", "dev", file.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
        let controller = spawn_docker_change(state.path(), repo.path(), &base.0, transport, "stubborn");
        wait_for_step(state.path(), transport, controller.id(), "recorded");
        let cancel = run(state.path(), &["change", "cancel", "1"]);
        assert!(cancel.status.success(), "{}", text(&cancel));
        let out = controller.wait_with_output().unwrap();
        step_images.0.extend(built_images(&out));
        assert_eq!(out.status.code(), Some(2), "{transport}: {}\n{}", text(&out), text(&cancel));
        assert_eq!(env_props(state.path())["kept"], json!("yes"), "{transport}: {}", text(&out));

        // SIGINT of the foreground change: cancelled, one line, no container left.
        let state = tempfile::tempdir().unwrap();
        let controller = spawn_docker_change(state.path(), repo.path(), &base.0, transport, "slow");
        let pid = controller.id();
        wait_for_step(state.path(), transport, pid, "slow-step-began");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGINT).unwrap();
        let out = controller.wait_with_output().unwrap();
        step_images.0.extend(built_images(&out));
        assert_eq!(out.status.code(), Some(2), "{transport}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().filter(|l| l.contains("change 1 cancelled on SIGINT") && l.contains("`opschain change retry 1`")).count(), 1, "{}", text(&out));
        assert_eq!(listed_status(state.path(), 1), "cancelled");
        let ps = Command::new(crate::docker_base::DOCKER).args(["ps", "-a", "--format", "{{.Names}}"]).output().unwrap();
        let left: Vec<String> =
            String::from_utf8_lossy(&ps.stdout).lines().filter(|n| n.starts_with("opschain-step-1-") && n.ends_with(&format!("-{pid}"))).map(str::to_string).collect();
        assert!(left.is_empty(), "{transport}: containers left behind: {left:?}");
    }
}
