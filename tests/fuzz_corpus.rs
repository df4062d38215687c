//! The fuzz targets' checks in the ordinary test suite: every committed corpus input replayed
//! through the same checks (`fuzz/fuzz_targets/checks.rs`), and, where cargo-fuzz is installed, a
//! short libFuzzer smoke run of each target.

#[path = "../fuzz/fuzz_targets/checks.rs"]
mod checks;

use std::path::Path;
use std::process::Command;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir).unwrap().map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect();
    assert!(inputs.len() >= 8, "{}: only {} inputs", dir.display(), inputs.len());
    inputs
}

#[test]
fn step_context_corpus_replays() {
    corpus("step_context").iter().for_each(|input| checks::step_context(input));
}

#[test]
fn actions_toml_corpus_replays() {
    corpus("actions_toml").iter().for_each(|input| checks::actions_toml(input));
}

#[test]
fn diff_apply_corpus_replays() {
    corpus("diff_apply").iter().for_each(|input| checks::diff_apply(input));
}

#[test]
fn libfuzzer_smoke_run_of_each_target() {
    let installed = Command::new("cargo").args(["fuzz", "--version"]).output().is_ok_and(|o| o.status.success());
    if !installed {
        eprintln!("skipped: cargo-fuzz is not installed (scripts/test installs it)");
        return;
    }
    for target in ["step_context", "actions_toml", "diff_apply"] {
        // The corpus is copied so that a smoke run never adds to the committed one.
        let scratch = tempfile::tempdir().unwrap();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), scratch.path().join(entry.file_name())).unwrap();
        }
        let output = Command::new("cargo")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", "-s", "none", "-O", target])
            .arg(scratch.path())
            .args(["--", "-runs=3000", "-max_len=4096"])
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{target} failed:\n{}", &log[log.len().saturating_sub(4000)..]);
        // libFuzzer runs the whole seed corpus before it stops, so a corpus of more than 3,000
        // inputs makes more runs than asked.
        let runs = log.lines().find_map(|l| l.strip_prefix("Done ")?.split_once(" runs")?.0.parse::<u64>().ok());
        assert!(runs.is_some_and(|n| n >= 3000), "{target}: {}", &log[log.len().saturating_sub(2000)..]);
    }
}
