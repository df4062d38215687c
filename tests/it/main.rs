//! The integration tests, as one test binary: one link instead of one per file, and one
//! `cargo test --test it` for all of them. Each module is one concern (its own `//!` says which);
//! pick one with a filter, e.g. `cargo test --test it controller_docker:: -- --ignored`.
//!
//! `tests/supervise.rs` stays a binary of its own: its tests reap every child of their process
//! (`waitpid(-1)`) and signal it, which would take the children of the tests here.

mod common;

mod controller;
mod controller_cli;
mod controller_docker;
mod controller_faults;
mod controller_input;
mod controller_secrets;
mod diff_conformance;
mod diff_props;
mod docker_base;
mod exec;
mod faults;
mod fuzz_corpus;
mod image;
#[cfg(feature = "kubernetes")]
mod kubernetes_fake;
mod malformed;
mod mask;
mod pid1;
mod properties_text;
mod registry;
mod requirements;
mod schemas;
mod seed_sample;
mod server;
mod static_agent;
mod step;
mod transport_docker;
