//! What changes leave in the state directory (`controller::gc`): repeated demos of a plain
//! directory keep the state directory bounded (one snapshot per content, removed when the change
//! succeeds; sandboxes removed as changes end); `opschain gc` removes the sandboxes a killed
//! controller left (never those of a change whose controller is alive), says in `--dry-run` what
//! it would remove without removing it, and keeps the snapshot a retry needs within its retention;
//! the next change to end removes such sandboxes by itself.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common;

fn opschain(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_opschain"));
    c.env("OPSCHAIN_STATE_DIR", state).env("OPSCHAIN_RUNNER_BIN", crate::common::runner_bin()).env_remove("OPSCHAIN_REPO_FOLDER");
    c
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The bytes of the regular files under `path`, the store's files left out (logs grow with every
/// change by design; they are not what this bounds).
fn bytes_besides_the_store(path: &Path) -> u64 {
    let meta = std::fs::symlink_metadata(path).unwrap();
    if meta.is_dir() {
        std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with("opschain.db"))
            .map(|p| bytes_besides_the_store(&p))
            .sum()
    } else if meta.is_file() {
        meta.len()
    } else {
        0
    }
}

/// The names in `dir` that do not start with `.`.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(read) => read.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| !n.starts_with('.')).collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

#[test]
fn repeated_demos_keep_the_state_directory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    // The demo with 4 MB of data that does not compress: a snapshot per run would show.
    let demo = dir.path().join("demo");
    common::copy_tree(&common::fixture("demo"), &demo);
    let mut data = vec![0u8; 4 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for byte in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *byte = x as u8;
    }
    std::fs::write(demo.join("data.bin"), &data).unwrap();
    let state = dir.path().join("state");
    let mut sizes = Vec::new();
    for _ in 0..3 {
        let out = opschain(&state).args(["demo", "--repo"]).arg(&demo).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        assert!(names(&state.join("sandboxes")).iter().all(|n| !n.starts_with("change-")), "a sandbox left: {:?}", names(&state.join("sandboxes")));
        assert_eq!(names(&state.join("repos")), Vec::<String>::new(), "the snapshot of a change that succeeded is removed");
        sizes.push(bytes_besides_the_store(&state));
    }
    assert!(sizes.iter().all(|&s| s < 1 << 20), "the state directory holds {sizes:?} bytes besides the store");
}

/// A plain directory (snapshotted) with two actions: `flaky` fails until `flag` exists, `wait`
/// sleeps a few seconds.
fn plain_repo(dir: &Path, flag: &Path) -> PathBuf {
    let repo = dir.join("plain");
    std::fs::create_dir_all(repo.join(".opschain")).unwrap();
    std::fs::write(repo.join(".opschain/actions.toml"), format!("[actions.flaky]\nrun = 'test -f {}'\n\n[actions.wait]\nrun = 'sleep 4'\n", flag.display())).unwrap();
    repo
}

#[test]
fn gc_removes_the_sandboxes_of_dead_changes_and_keeps_what_a_retry_needs() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("flag");
    let repo = plain_repo(dir.path(), &flag);
    let state = dir.path().join("state");
    for env in ["one", "two", "three"] {
        common::make_target(&state, "p", env);
    }
    let change = |env: &str, action: &str| {
        let mut c = opschain(&state);
        c.args(["change", "run", "--project", "p", "--environment", env, "--action", action, "--repo"]).arg(&repo);
        c
    };

    // Change 1 fails: its snapshot stays for a retry.
    let out = change("one", "flaky").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let snapshots = names(&state.join("repos"));
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    // A change that cannot be created (a revision that names no commit) leaves the snapshot it
    // shares with change 1 alone.
    let out = change("one", "flaky").args(["--git-rev", "no-such-revision"]).output().unwrap();
    assert_eq!(out.status.code(), Some(66), "{}", text(&out));
    assert_eq!(names(&state.join("repos")), snapshots, "the shared snapshot was removed");

    // Starts a change of `env` that waits, and returns its controller once its step runs.
    let waiting = |env: &str, id: i64| {
        let controller = change(env, "wait").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let sandbox = state.join(format!("sandboxes/change-{id}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !names(&sandbox).iter().any(|n| n.starts_with("step-")) {
            assert!(Instant::now() < deadline, "the step never started");
            std::thread::sleep(Duration::from_millis(50));
        }
        (controller, sandbox)
    };

    // Change 2 runs: while its controller is alive, gc leaves its sandbox alone.
    let (mut controller, sandbox) = waiting("two", 2);
    let out = opschain(&state).arg("gc").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(sandbox.is_dir() && !text(&out).contains("change-2"), "{}", text(&out));

    // Its controller killed: the sandbox is left, the change `running` with no controller.
    controller.kill().unwrap();
    controller.wait().unwrap();
    assert!(sandbox.is_dir());
    let dry = opschain(&state).args(["gc", "--dry-run"]).output().unwrap();
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(text(&dry).contains(&format!("would remove {}", sandbox.display())) && text(&dry).contains("by a controller that is gone"), "{}", text(&dry));
    assert!(sandbox.is_dir(), "a dry run removed it");
    let out = opschain(&state).arg("gc").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("removed {}", sandbox.display())), "{}", text(&out));
    assert!(!sandbox.exists());
    assert_eq!(names(&state.join("repos")), snapshots, "the snapshot a retry needs is kept");

    // Change 3's controller is killed too; the next change to end removes its sandbox itself.
    let (mut controller, sandbox) = waiting("three", 3);
    controller.kill().unwrap();
    controller.wait().unwrap();
    assert!(sandbox.is_dir());

    // The retry of change 1 runs from the kept snapshot.
    std::fs::write(&flag, "").unwrap();
    let out = opschain(&state).args(["change", "retry", "1"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!sandbox.exists(), "the sandbox a killed controller left is removed as the next change ends");

    // Changes 2 and 3 can still be retried (they share the snapshot): kept until they leave the
    // retention.
    assert_eq!(names(&state.join("repos")), snapshots);
    let out = opschain(&state).args(["gc", "--keep-changes", "0", "--keep-days", "0"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("repository snapshot"), "{}", text(&out));
    assert_eq!(names(&state.join("repos")), Vec::<String>::new());
    let help = opschain(&state).args(["gc", "--help"]).output().unwrap();
    for said in ["Removed:", "Kept:", "--dry-run", "--keep-changes <N>", "[default: 20]", "--keep-days <D>", "[default: 14]"] {
        assert!(text(&help).contains(said), "{said}: {}", text(&help));
    }
}
