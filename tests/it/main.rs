//! The integration tests, as one test binary: one link instead of one per file, and one
//! `cargo test --test it` for all of them. Each module is one concern (its own `//!` says which);
//! pick one with a filter, e.g. `cargo test -p opschain-runner --test it step::`. The controller's
//! tests are its package's (`crates/opschain/tests/it`).
//!
//! `tests/supervise.rs` stays a binary of its own: its tests reap every child of their process
//! (`waitpid(-1)`) and signal it, which would take the children of the tests here.

mod common;

mod diff_conformance;
mod diff_props;
mod exec;
mod faults;
mod fuzz_corpus;
mod malformed;
mod mask;
mod properties_text;
mod requirements;
mod schemas;
mod seed_sample;
mod static_agent;
mod step;
