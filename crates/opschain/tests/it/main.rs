//! The controller's integration tests, as one test binary: one link instead of one per file, and one
//! `cargo test -p opschain --test it` for all of them. Each module is one concern (its own `//!` says
//! which); pick one with a filter, e.g. `cargo test -p opschain --test it controller_docker:: -- --ignored`.

mod common;

mod controller;
mod controller_cli;
mod controller_docker;
mod controller_faults;
mod controller_gc;
mod controller_input;
mod controller_merge;
mod controller_schemas;
mod controller_secrets;
mod controller_stop;
mod docker_base;
mod first_hour;
mod engine_timeouts;
mod image;
mod kept_commits;
mod image_inputs;
#[cfg(feature = "kubernetes")]
mod kubernetes_fake;
mod pid1;
mod registry;
mod server;
mod sandbox_files;
mod store_encryption;
mod transport_docker;
