//! Tests that need a tool the machine may lack (a Docker engine, cargo-fuzz) never pass without
//! it: each is `#[ignore]`d, so a plain `cargo test` reports it as ignored, and when it is run
//! (`--ignored`, as scripts/test does where it installed or found the tool) a missing tool fails
//! it through `common::required`.

use crate::common;

#[test]
#[should_panic(expected = "this test needs a Docker engine, which is missing: no engine here")]
fn a_missing_tool_fails_the_test_that_needs_it() {
    common::required::<(), _>("a Docker engine", Err("no engine here"));
}

#[test]
fn a_found_tool_is_handed_over() {
    assert_eq!(common::required::<_, String>("cargo-fuzz", Ok(7)), 7);
}

#[test]
fn every_test_that_needs_a_tool_is_ignored_by_default_and_requires_it_when_run() {
    let tests = [
        ("crates/opschain/tests/it/pid1.rs", "fn docker_stop_cancels_the_action_reaps_everything_and_writes_the_result()"),
        ("crates/opschain/tests/it/image.rs", "fn step_images_build_with_secrets_that_reach_no_layer_and_run_a_step()"),
        ("crates/opschain/tests/it/controller_docker.rs", "fn the_demo_change_runs_on_the_docker_backend_as_on_the_process_backend()"),
        ("tests/it/fuzz_corpus.rs", "fn libfuzzer_smoke_run_of_each_target()"),
    ];
    for (file, function) in tests {
        let source = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
        let at = source.find(function).unwrap_or_else(|| panic!("{file}: no {function}"));
        let attributes = source[..at].rsplit("\n\n").next().unwrap();
        assert!(attributes.contains("#[test]") && attributes.contains("#[ignore = \"needs "), "{file}: {function} is not ignored by default:\n{attributes}");
        let body = &source[at..];
        let body = &body[..body.find("\n}\n").unwrap()];
        assert!(body.contains("common::required("), "{file}: {function} does not require its tool");
        assert!(!body.contains("skipped"), "{file}: {function} still passes as a skip");
    }
}
