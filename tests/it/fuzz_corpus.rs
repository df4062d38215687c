//! The fuzz targets' checks in the ordinary test suite: every committed corpus input replayed
//! through the same checks (`fuzz/fuzz_targets/checks.rs`), and a short libFuzzer smoke run of
//! each target, which needs cargo-fuzz: ignored unless asked for (`--ignored`; scripts/test
//! installs cargo-fuzz and asks), and then it fails without it.

#[path = "../../fuzz/fuzz_targets/checks.rs"]
mod checks;
use crate::common;

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
#[ignore = "needs cargo-fuzz: scripts/test installs it and runs this"]
fn libfuzzer_smoke_run_of_each_target() {
    let installed = match Command::new("cargo").args(["fuzz", "--version"]).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!("`cargo fuzz --version` failed: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Err(format!("cannot run cargo: {e}")),
    };
    common::required("cargo-fuzz", installed);
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
        assert!(output.status.success(), "{target} failed:\n{}", common::tail(&log, 4000));
        // libFuzzer runs the whole seed corpus before it stops, so a corpus of more than 3,000
        // inputs makes more runs than asked.
        let runs = log.lines().find_map(|l| l.strip_prefix("Done ")?.split_once(" runs")?.0.parse::<u64>().ok());
        assert!(runs.is_some_and(|n| n >= 3000), "{target}: {}", common::tail(&log, 2000));
    }
}

#[test]
fn a_log_tail_is_cut_at_a_character_boundary() {
    // libFuzzer echoes inputs, so a log holds any bytes; lossily decoded, a cut may fall inside a
    // character (here: 4000 bytes back from the end is inside a two-byte `é`).
    let log = format!("x{}x", "é".repeat(3000));
    assert!(!log.is_char_boundary(log.len() - 4000), "slicing there would panic");
    assert_eq!(common::tail(&log, 4000), format!("{}x", "é".repeat(1999)));
    assert_eq!(common::tail("short", 4000), "short");
    assert_eq!(common::tail("", 10), "");
}
