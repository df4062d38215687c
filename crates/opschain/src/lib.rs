//! `opschain`, the host-side companion controller: it turns the step agent (the `opschain-runner`
//! package, whose library this one builds on) into something useful end to end. A *change* runs an
//! action of a project's repository, at one commit, in one environment; its root step's reported
//! children run after it, and theirs after them, as OpsChain schedules them.
//!
//! One module per concept:
//! * [`store`]: the embedded SQLite store (projects, environments, properties with every version,
//!   changes, steps, step logs, secret sets), properties and secret sets encrypted at rest; the
//!   PostgreSQL store of the catalogue (`--database-url`).
//! * [`catalog`]: projects and environments by code (an unknown code lists the known ones).
//! * [`logline`]: a stored log line read back (action output, phase record, the agent's error).
//! * [`report`]: what the command line prints about stored changes (step trees, logs).
//! * [`edit`]: editing a document in the user's editor.
//! * [`dev`]: tools for a project's repository (the default Dockerfile).
//! * [`status`]: change and step statuses and the backend kind, stored by name.
//! * [`change`]: create, run, retry and cancel a change.
//! * [`scheduler`]: the step tree, sequential and parallel children, failure and cancel rules.
//! * [`interrupt`]: SIGINT, SIGTERM and SIGHUP of a foreground change cancel it.
//! * [`liveness`]: whether a change's controller still runs (a lock it holds).
//! * [`merge`]: the three-way merge of a step's properties edit with the edits made since it started.
//! * [`conflict`]: the message of a properties diff that does not apply.
//! * [`repo`]: git: commits, snapshots of plain directories, a fresh checkout per step.
//! * [`gc`]: what changes leave in the state directory, and when it goes (`opschain gc`).
//! * [`permissions`]: the state directory, snapshots, sandboxes and secret files private to their
//!   owner.
//! * [`output`]: everything the controller prints or stores about a change, masked with the
//!   change's secrets.
//! * [`child`]: a child process (the agent, a `docker` command) started, its output streamed
//!   line by line, waited for: cancellable, bounded in time.
//! * [`backend`]: where a step runs: [`backend::process`] (default) or [`backend::docker`].
//! * [`image`]: the step image pipeline: the docker client, builds and reuse, the registry.
//! * [`rcfile`]: the default project and environment codes (`.opschainrc`, `opschain_*` variables).
//! * [`remote`]: the CLI's side of the server: its URL and user (`apiBaseUrl`), a JSON:API client.
//! * [`server`]: `opschain server`, the controller as a shared service behind OpsChain's JSON:API.
//! * [`page`]: the server's HTML page: changes, step trees, live logs and properties in a browser.
//!
//! The `opschain` binary's command line is `src/bin/opschain/commands/`: a file per subcommand,
//! each its clap definition and a thin `exec` over these modules.

#![warn(missing_docs)]

pub mod backend;
pub mod catalog;
pub mod change;
pub mod child;
pub mod conflict;
pub mod dev;
pub mod edit;
pub mod gc;
pub mod image;
pub mod interrupt;
pub mod liveness;
pub mod merge;
pub mod logline;
pub mod output;
pub mod page;
pub mod permissions;
pub mod rcfile;
pub mod remote;
pub mod repo;
pub mod report;
pub mod scheduler;
pub mod server;
pub mod status;
pub mod store;

/// The size from which the C allocator hands a buffer straight to the kernel (`mmap`) and back
/// when it is freed (32 MiB, glibc's largest): below it, buffers are served from, and freed back
/// to, the allocator's heap, whose pages stay mapped and are reused. A step's large buffers (the
/// properties text its patch is spliced into, the new version's text, its result's bytes) are as
/// large as the properties (megabytes): given a fresh `mmap` each, every one cost its pages'
/// faults and zeroing, then their unmapping (what that cost is in BENCHMARKS.md's design figures).
/// A document larger than this still gets fresh mappings.
pub const MMAP_THRESHOLD: usize = 32 << 20;

/// How much free memory the C allocator keeps at the top of its heap rather than handing it back
/// to the kernel (32 MiB, as [`MMAP_THRESHOLD`]). A step's buffers are freed in a burst at its end,
/// mostly from the top of the heap; with glibc's default (128 KiB) they were handed back each time
/// and faulted in again by the next step. The controller's peak RSS is unchanged (what it uses at
/// once); after a burst it may stay up to this much above what it uses.
pub const TRIM_THRESHOLD: usize = 32 << 20;

/// How many heaps ("arenas") the C allocator keeps (1): every thread allocates from the one heap,
/// so that memory freed by any thread is reused by all. With glibc's default (8 per CPU), each
/// scheduler worker thread that ever held a large buffer would keep its own heap of them, and the
/// controller's peak RSS would grow with the worker count times the properties' size; one heap
/// showed no lock contention.
pub const ARENAS: usize = 1;

/// Sets the C allocator's policy for the rest of the process ([`MMAP_THRESHOLD`],
/// [`TRIM_THRESHOLD`], [`ARENAS`]): large buffers are reused from one heap rather than mapped
/// afresh for each step, and no per-thread heaps keep freed memory. Does nothing with another C
/// library.
pub fn bound_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets tunables of the allocator; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS as libc::c_int);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int);
    }
}
