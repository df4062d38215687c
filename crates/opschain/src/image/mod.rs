//! The step image pipeline of the controller: a step's image is planned and its build context
//! written by the agent library's `opschain_runner::step_image` (the code `opschain-runner
//! build-context` runs), then built, reused or fetched here.
//!
//! * [`docker`]: the one docker client, able to build with BuildKit.
//! * [`build`]: a step's image: built from the change's commit, or reused when one of the same key
//!   exists.
//! * [`registry`]: step images pushed to and pulled from a registry (`--registry`).

pub mod build;
pub mod docker;
pub mod registry;
