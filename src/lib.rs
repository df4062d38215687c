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
//! The list below follows the agent's pipeline, each module with its one-line summary.

#![warn(missing_docs)]

// One step, in the order the agent runs it: its context, its properties, the files and env vars
// they declare, the supervised action, the diff of what it changed, the result.

// Where a step's files are: the repository, its OpsChain folder, the paths derived from them.
pub mod layout;
// The step's input, `step_context.json`, read strictly.
pub mod context;
// The four property sources, their merge, and edits of their text (`splice`).
pub mod properties;
// `actions.toml`: the actions and the commands one step runs.
pub mod actions;
// The printable plan of a step (`opschain-runner validate`).
pub mod plan;
// `opschain.files`: the files the properties declare, written before the action.
pub mod files;
// `opschain.env`: the env vars the properties declare, and the action's environment.
pub mod env;
// Running the action's commands: jobs, signals, process trees, their output.
pub mod supervise;
// Output cut into lines, never inside a UTF-8 sequence (shared with the controller).
pub mod lines;
// Secret masking of everything printed.
pub mod mask;
// The agent's own log.
pub mod logging;
// The process table as `/proc` shows it.
pub mod procfs;
// The RFC 6902 diff of two JSON documents.
pub mod diff;
// The step's output, `step_result.json`.
pub mod result;
// The result framed on stdout for a controller that shares no disk, and its decoder.
pub mod transport;
// One step end to end: prepare, then run.
pub mod step;
// The commands an action's scripts call: `property get|set|remove`, `child add`.
pub mod script_commands;

// Inside images: `opschain-exec`, and the build context of a step image.

// `opschain-exec`: a command run with the step's env vars and the build secrets.
pub mod exec;
// The step image's Dockerfile, plan, key and build context.
pub mod step_image;
// The one way the crate runs git.
pub mod git;

// Shared JSON and file helpers.

// Strict reading of JSON documents, with errors that point at the fault.
pub mod json;
// Atomic file replacement.
pub mod atomic;

// The binary.

// The command line of `opschain-runner` and `opschain-exec`.
pub mod cli;
// Exit statuses (sysexits and the shell's).
pub mod exit;
// The static agent's global allocator.
pub mod allocator;

#[cfg(test)]
mod testutil;
