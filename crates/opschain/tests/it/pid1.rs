//! The agent as PID 1 of a real container: `docker stop` cancels the action (exit 143), every
//! orphan is reaped while it runs (no zombie), and step_result.json is written. Ignored unless
//! asked for (`--ignored`; scripts/test asks where it finds an engine), and then it needs one.

use crate::common;

use std::process::Output;
use std::time::{Duration, Instant};

use opschain::image::docker::Docker;
use serde_json::Value;

fn ok(output: Output, what: &str) -> String {
    assert!(output.status.success(), "{what}: {}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Process states inside the container: `pid state comm` for every process.
fn processes(docker: &Docker, container: &str) -> Vec<String> {
    let out = docker.run(["exec", container, "sh", "-c", "for s in /proc/[0-9]*/stat; do cat $s 2>/dev/null; echo; done"]).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (pid, rest) = l.split_once(" (")?;
            let (comm, rest) = rest.rsplit_once(") ")?;
            Some(format!("{pid} {} {comm}", rest.split(' ').next()?))
        })
        .collect()
}

#[test]
#[ignore = "needs a Docker engine with a BuildKit client: scripts/test runs it where it finds one"]
fn docker_stop_cancels_the_action_reaps_everything_and_writes_the_result() {
    let docker = common::required("a Docker engine with a BuildKit client", Docker::detect());
    let agent = common::static_agent().as_ref().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let unique = format!("{}-{}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    let base_dir = dir.path().join("base");
    std::fs::create_dir_all(&base_dir).unwrap();
    std::fs::copy("/bin/busybox", base_dir.join("busybox")).unwrap();
    std::fs::copy(agent, base_dir.join("opschain-runner")).unwrap();
    let image = format!("opschain-pid1-test:{unique}");
    let dockerfile = common::repo_root().join("runner-image/test/Dockerfile");
    ok(docker.run(["build".as_ref(), "--file".as_ref(), dockerfile.as_os_str(), "--tag".as_ref(), image.as_ref(), base_dir.as_os_str()]).unwrap(), "build");

    // The repo, bind-mounted: the action records a change, leaves orphans that exit (zombies
    // unless PID 1 reaps them) and one that lives on, then waits ignoring SIGTERM.
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join(".opschain")).unwrap();
    std::fs::write(
        repo.join(".opschain/actions.toml"),
        "[actions.wait]\nrun = '''\nopschain-runner property set --project stage started\nfor i in 1 2 3; do (sleep 0.2 &); done\n(sleep 1000 &)\ntrap \"\" TERM\ntouch waiting\nsleep 1000\n'''\n",
    )
    .unwrap();
    std::fs::write(repo.join(".opschain/step_context.json"), r#"{"context": {"step": {"action": "wait"}}, "project": {"properties": {}}}"#).unwrap();
    let container = format!("opschain-pid1-{unique}");
    let mount = format!("{}:/opt/opschain", repo.display());
    ok(docker.run(["run", "-d", "--name", &container, "-e", "OPSCHAIN_GRACE_SECS=2", "-v", &mount, &image]).unwrap(), "run");
    let cleanup = || {
        let _ = docker.run(["rm", "--force", &container]);
        let _ = docker.run(["rmi", "--force", &image]);
    };

    let deadline = Instant::now() + Duration::from_secs(30);
    while !repo.join("waiting").exists() {
        if Instant::now() > deadline {
            let logs = docker.run(["logs", &container]).unwrap();
            cleanup();
            panic!("the action never started: {}", String::from_utf8_lossy(&logs.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(800)); // the short-lived orphans have exited by now
    let before = processes(&docker, &container);
    let zombies: Vec<&String> = before.iter().filter(|p| p.split(' ').nth(1) == Some("Z")).collect();
    let pid1 = before.iter().find(|p| p.starts_with("1 ")).cloned();

    let stop_started = Instant::now();
    let stop = docker.run(["stop", "--time", "30", &container]).unwrap();
    let stop_took = stop_started.elapsed();
    let code = docker.run(["inspect", "--format", "{{.State.ExitCode}}", &container]).unwrap();
    let code = String::from_utf8_lossy(&code.stdout).trim().to_string();
    let logs = docker.run(["logs", &container]).unwrap();
    let result = std::fs::read(repo.join(".opschain/step_result.json"));
    cleanup();

    assert!(stop.status.success());
    assert_eq!(pid1.as_deref().map(|p| p.contains(" opschain-runne")), Some(true), "PID 1 is the agent: {before:?}");
    assert!(zombies.is_empty(), "zombies while the action ran: {zombies:?}");
    assert_eq!(code, "143", "exit code after docker stop; logs: {}", String::from_utf8_lossy(&logs.stderr));
    assert!(stop_took < Duration::from_secs(20), "the agent ended the action after its 2 s grace, not docker's KILL: {stop_took:?}");
    let result: Value = serde_json::from_slice(&result.expect("step_result.json written")).unwrap();
    common::schema::assert_valid("step_result", &result, "the container's step_result.json");
    assert_eq!(result["runner"]["reason"], "cancelled");
    assert_eq!(result["runner"]["exit_status"], 143);
    assert_eq!(result["project"]["properties_diff"][0]["path"], "/stage");
}
