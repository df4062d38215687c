//! The agent's hand-written `step` command line (`Cli::parse_step_fast`, its hot path) against
//! clap's: every command line it accepts, it reads exactly as clap does, under the same
//! environment; and it accepts the invocations the controller's backends and the runner images
//! make. A binary of its own: it sets this process's environment, which clap reads.

use std::ffi::OsString;

use clap::Parser;
use opschain_runner::cli::Cli;

/// The variables either parser reads.
const VARS: [&str; 13] = [
    "OPSCHAIN_REPO_DIR",
    "OPSCHAIN_REPO_FOLDER",
    "OPSCHAIN_LOG_FORMAT",
    "OPSCHAIN_FILES_ROOT",
    "OPSCHAIN_GRACE_SECS",
    "OPSCHAIN_TIMEOUT_SECS",
    "OPSCHAIN_SECRET_PATTERNS",
    "OPSCHAIN_MAX_INPUT_BYTES",
    "OPSCHAIN_LOG_MODE",
    "OPSCHAIN_CONTEXT_FROM",
    "OPSCHAIN_RESULT_FRAME",
    "OPSCHAIN_BUILD_SECRETS_DIR",
    "OPSCHAIN_BASE_RUNNER",
];

fn argv(line: &str) -> Vec<OsString> {
    std::iter::once("opschain-runner").chain(line.split_whitespace()).map(|arg| OsString::from(arg.replace('~', " "))).collect()
}

/// Compares the two parsers on `line` (`~` stands for a space inside an argument) under `env`;
/// returns whether the fast one accepted it.
fn compare(line: &str, env: &[(&str, &str)]) -> bool {
    for var in VARS {
        std::env::remove_var(var);
    }
    for (name, value) in env {
        std::env::set_var(name, value);
    }
    let args = argv(line);
    let fast = Cli::parse_step_fast(&args, &|name| std::env::var_os(name));
    let clap = Cli::try_parse_from(&args);
    if let Some(fast) = &fast {
        let clap = clap.unwrap_or_else(|e| panic!("{line:?} {env:?}: the fast parser accepted what clap refuses: {e}"));
        assert_eq!(format!("{fast:?}"), format!("{clap:?}"), "{line:?} under {env:?}");
    }
    fast.is_some()
}

#[test]
fn what_the_fast_parser_accepts_it_reads_as_clap_does() {
    // The invocations the backends and the images make, and the benchmark's: all taken fast.
    let common = [
        "",
        "step",
        "--repo /r step",
        "--repo /r --folder .mintpress step --files-root /sandbox",
        "step --context-from - --result-frame abc123",
        "step --context-from /var/run/opschain/step_context.json",
        "--repo=/r step --action=deploy --grace-secs=3 --timeout-secs 60 --log-mode non-blocking",
        "step --repo /r --log-format json --secret-patterns *_PW,X --max-input-bytes 1024 --dry-run",
        "--log-format text --repo /a~b step --action step",
        "--repo step",
    ];
    for line in common {
        assert!(compare(line, &[]), "{line:?} should take the fast path");
    }
    let env = [
        ("OPSCHAIN_REPO_DIR", "/env/repo"),
        ("OPSCHAIN_REPO_FOLDER", ".f"),
        ("OPSCHAIN_LOG_FORMAT", "json"),
        ("OPSCHAIN_FILES_ROOT", "/root"),
        ("OPSCHAIN_GRACE_SECS", "7"),
        ("OPSCHAIN_TIMEOUT_SECS", "0099"),
        ("OPSCHAIN_SECRET_PATTERNS", "A*"),
        ("OPSCHAIN_MAX_INPUT_BYTES", "5"),
        ("OPSCHAIN_LOG_MODE", "non-blocking"),
        ("OPSCHAIN_CONTEXT_FROM", "-"),
        ("OPSCHAIN_RESULT_FRAME", "n"),
    ];
    for line in common {
        assert!(compare(line, &env), "{line:?} should take the fast path under the environment");
    }
    // Options and environments it leaves to clap (whatever clap makes of them).
    let clap_only = [
        "--help",
        "step --help",
        "--version",
        "-h",
        "validate",
        "actions",
        "exec -- true",
        "property get a.b",
        "step step",
        "step extra",
        "step --unknown",
        "step --repo",
        "step --repo=",
        "step --repo -x",
        "--repo /a --repo /b step",
        "--action a step",
        "--files-root /x",
        "--dry-run",
        "step --dry-run=true",
        "step --dry-run --dry-run",
        "step --grace-secs -1",
        "step --grace-secs 1x",
        "step --grace-secs +1",
        "step --timeout-secs 99999999999999999999",
        "step --log-mode fast",
        "step --log-format yaml",
        "step --",
        "step -- x",
    ];
    for line in clap_only {
        assert!(!compare(line, &[]), "{line:?} should be left to clap");
    }
    for (name, value) in [
        ("OPSCHAIN_GRACE_SECS", "x"),
        ("OPSCHAIN_GRACE_SECS", ""),
        ("OPSCHAIN_LOG_FORMAT", "Text"),
        ("OPSCHAIN_LOG_MODE", ""),
        ("OPSCHAIN_REPO_DIR", ""),
        ("OPSCHAIN_MAX_INPUT_BYTES", "-3"),
    ] {
        assert!(!compare("step", &[(name, value)]), "{name}={value:?} should be left to clap");
    }
    // Variables of other commands change nothing here.
    assert!(compare("step", &[("OPSCHAIN_BUILD_SECRETS_DIR", "/s"), ("OPSCHAIN_BASE_RUNNER", "img")]));
}
