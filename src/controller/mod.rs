//! `opschain`, the host-side companion controller: it turns the step agent into something useful
//! end to end. A *change* runs an action of a project's repository, at one commit, in one
//! environment; its root step's reported children run after it, and theirs after them, as
//! OpsChain schedules them.
//!
//! One module per concept:
//! * [`store`]: the embedded SQLite store (projects, environments, properties with every version,
//!   changes, steps, step logs, secret sets).
//! * [`status`]: change and step statuses and the backend kind, stored by name.
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

/// Makes the C allocator hand buffers of 256 KiB and more straight back to the kernel when they
/// are freed, for the rest of the process. A step's large buffers (its result file, the
/// properties text it patches) are allocated and freed by the scheduler's worker threads; glibc
/// would otherwise raise its mmap threshold past their size after the first free and serve them
/// from per-thread arenas that keep the memory, so that the controller's peak RSS grew with the
/// worker count times the properties' size rather than with the steps in flight. Does nothing
/// with another C library.
pub fn bound_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a tunable of the allocator; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}
