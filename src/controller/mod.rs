//! `opschain`, the host-side companion controller: it turns the step agent into something useful
//! end to end. A *change* runs an action of a project's repository, at one commit, in one
//! environment; its root step's reported children run after it, and theirs after them, as
//! OpsChain schedules them.
//!
//! One module per concept:
//! * [`store`]: the embedded SQLite store (projects, environments, properties with every version,
//!   changes, steps, step logs, secret sets).
//! * [`status`]: change and step statuses.
//! * [`change`]: create, run, retry and cancel a change.
//! * [`scheduler`]: the step tree, sequential and parallel children, failure and cancel rules.
//! * [`patch`]: the message of a properties diff that does not apply.
//! * [`repo`]: git: commits, snapshots of plain directories, a fresh checkout per step.
//! * [`private`]: the state directory, snapshots, sandboxes and secret files private to their
//!   owner.
//! * [`output`]: everything the controller prints or stores about a change, masked with the
//!   change's secrets.
//! * [`backend`]: where a step runs: [`backend::process`] (default) or [`backend::docker`].
//! * [`rc`]: the default project and environment codes (`.opschainrc`, `opschain_*` variables).
//! * [`registry`]: step images pushed to and pulled from a registry (`--registry`).

pub mod backend;
pub mod change;
pub mod output;
pub mod patch;
pub mod rc;
pub mod private;
pub mod registry;
pub mod repo;
pub mod scheduler;
pub mod status;
pub mod store;
