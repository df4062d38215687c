//! # opschain-runner
//!
//! The step runner of an OpsChain-style change-automation system, as a library with thin binaries
//! over it:
//!
//! * `opschain-runner` — the static in-container agent (the runner image's ENTRYPOINT). It reads
//!   `<repo>/<folder>/step_context.json`, merges the properties, writes the declared files, exports the
//!   declared env vars, runs the action under supervision and writes `step_result.json`.
//! * `opschain-exec` — the same binary called by that name: runs a command with the step's env vars
//!   (and the build secrets) loaded, for Dockerfile `RUN` lines.
//! * `opschain` — the host-side companion controller, a package of its own (`crates/opschain`)
//!   over this library.
//!
//! Each module holds one concept of the domain; a reader should find any behaviour by file name.

#![warn(missing_docs)]

pub mod diff;
pub mod mask;
pub mod supervise;
pub mod procfs;
pub mod actions;
pub mod atomic;
pub mod context;
pub mod env;
pub mod files;
pub mod json;
pub mod layout;
pub mod properties;
pub mod exit;
pub mod logging;
pub mod result;
pub mod step;
pub mod cli;
pub mod helper;
pub mod plan;
pub mod exec;
pub mod step_image;
pub mod transport;
pub mod git;
pub mod allocator;
