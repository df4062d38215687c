//! Faults: the disk fills while the result is written; the agent is SIGKILLed mid-write. Either
//! way there is never a partial step_result.json: the result is renamed into place, never truncated.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::*;
use serde_json::{json, Value};

fn setup(repo: &Path, actions: &str, properties: &Value) {
    std::fs::create_dir_all(repo.join(".opschain")).unwrap();
    std::fs::write(repo.join(".opschain/actions.toml"), actions).unwrap();
    let context = json!({"context": {"step": {"action": "a"}}, "project": {"properties": properties}});
    std::fs::write(repo.join(".opschain/step_context.json"), serde_json::to_vec(&context).unwrap()).unwrap();
}

/// Mounts a small tmpfs at `dir`; `None` (with the reason printed) where mounting is not allowed.
fn small_tmpfs(dir: &Path, size: &str) -> Option<()> {
    let status = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).stderr(Stdio::null()).status();
    match status {
        Ok(s) if s.success() => Some(()),
        _ => {
            eprintln!("skipped: cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)");
            None
        }
    }
}

#[test]
fn disk_full_while_writing_the_result_leaves_no_result_and_no_temporary() {
    let mount = tempfile::tempdir().unwrap();
    if small_tmpfs(mount.path(), "1m").is_none() {
        return;
    }
    let repo = mount.path().join("repo");
    setup(&repo, "[actions.a]\nrun = 'dd if=/dev/zero of=filler bs=4k 2>/dev/null; exit 0'\n", &json!({"blob": "y".repeat(100_000)}));
    let output = run_step(&repo, &[]);
    let names: Vec<String> = std::fs::read_dir(repo.join(".opschain")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    let _ = Command::new("umount").arg(mount.path()).status();
    let lines = stderr_lines(&output);
    assert_eq!(output.status.code(), Some(73), "{lines:?}");
    let line = lines.iter().find(|l| l.starts_with("opschain-runner:")).expect("an error line");
    assert!(line.contains("step_result.json"), "{line}");
    assert!(!names.iter().any(|n| n.contains("step_result")), "left behind: {names:?}");
}

#[test]
fn sigkill_mid_write_never_leaves_a_partial_result() {
    let repo = tempfile::tempdir().unwrap();
    // Large properties make the result several MB, so some kills land while it is written.
    let big: Vec<Value> = (0..10_000).map(|i| json!({"id": i, "name": format!("item-{i}"), "tags": ["a", "b"]})).collect();
    setup(repo.path(), "[actions.a]\nrun = 'opschain-runner property set --project touched 1'\n", &json!({"items": big}));
    let result = repo.path().join(".opschain/step_result.json");
    // Time one whole run, then kill runs at points spread over twice that time (the machine is
    // noisy: some kills land before the result is written, some during, some after).
    let start = std::time::Instant::now();
    let output = run_step(repo.path(), &[]);
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    let whole = start.elapsed();
    let mut complete = 0;
    let mut absent = 0;
    for i in 0..12u32 {
        let _ = std::fs::remove_file(&result);
        let mut child = runner()
            .arg("--repo")
            .arg(repo.path())
            .env("PATH", format!("{}:/usr/bin:/bin", bin_dir().display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(whole * (i + 1) / 6);
        let _ = child.kill();
        let _ = child.wait();
        match std::fs::read(&result) {
            Ok(bytes) => {
                let parsed: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("partial result after kill {i}: {e}"));
                assert_eq!(parsed["project"]["properties_diff"][0]["path"], "/touched");
                complete += 1;
            }
            Err(_) => absent += 1,
        }
        for entry in std::fs::read_dir(repo.path().join(".opschain")).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if name.starts_with(".step_result.json.tmp") {
                // A temporary file may be left by a kill; it is never the result itself.
                std::fs::remove_file(repo.path().join(".opschain").join(name)).unwrap();
            }
        }
    }
    eprintln!("run of {whole:?}; kills: {complete} left a complete result, {absent} left none");
    assert_eq!(complete + absent, 12);
}
