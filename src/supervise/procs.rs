//! The process-table side of supervision: reaping children, finding descendants in `/proc`, and
//! sending signals that tolerate processes vanishing in between.
//!
//! Everything here is synchronous and cheap (a `/proc` walk reads one small file per process); the
//! event loop in the parent module decides when to call it.

use std::io;

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::procfs;

/// How a child ended, as `waitpid` reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// It called `exit` with this code.
    Exited(i32),
    /// This signal number killed it (a plain `i32`, so that real-time signals need no enum).
    Signalled(i32),
}

/// What one round of reaping collected.
#[derive(Debug, Default)]
pub(crate) struct Reaped {
    /// How the watched process ended, if it was among those reaped.
    pub(crate) watched: Option<Ended>,
    /// How many other processes (orphans re-parented to us, and their zombies) were reaped.
    pub(crate) others: u64,
    /// `waitpid` said this process has no child left at all (ECHILD). Then no process is below it
    /// either (every descendant has a child of ours as an ancestor, and one whose ancestors end is
    /// re-parented to us before they can be reaped), and none can come until we start one: the
    /// caller needs no `/proc` walk to know that nothing is left.
    pub(crate) childless: bool,
}

/// Reaps every child of this process that has ended, without blocking, and tells apart `watched`
/// (the job's main process) from the others.
///
/// This loops until `waitpid` says nothing more is ready, because SIGCHLD is coalesced: one
/// notification may stand for many ended children.
///
/// It calls libc's `waitpid` rather than nix's: nix turns the status into its `Signal` enum and
/// fails with EINVAL, after the kernel has already reaped the child, when a real-time signal killed
/// it; the job's status would then be lost.
pub(crate) fn reap(watched: Option<Pid>) -> Result<Reaped, Errno> {
    let mut reaped = Reaped::default();
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a valid, writable c_int for the duration of the call; waitpid has no
        // other memory effects.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid == 0 {
            return Ok(reaped);
        }
        if pid < 0 {
            match Errno::last() {
                Errno::ECHILD => {
                    reaped.childless = true;
                    return Ok(reaped);
                }
                Errno::EINTR => continue,
                errno => return Err(errno),
            }
        }
        let ended = if libc::WIFEXITED(status) {
            Ended::Exited(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            Ended::Signalled(libc::WTERMSIG(status))
        } else {
            // Stopped or continued: only reported with WUNTRACED / WCONTINUED, which we do not ask.
            continue;
        };
        if Some(Pid::from_raw(pid)) == watched {
            reaped.watched = Some(ended);
        } else {
            reaped.others += 1;
        }
    }
}

/// One process found below us in the process tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Descendant {
    /// Its process id.
    pub(crate) pid: Pid,
    /// Its process group id: a process that called `setsid` or `setpgid` has left the job's group.
    pub(crate) pgid: Pid,
}

/// Checks that the process table can be read: that `/proc` is mounted and shows `root`. One
/// `stat`, where a walk ([`descendants`]) costs a dozen calls and a directory buffer; a `/proc`
/// that shows this much is one [`descendants`] can walk.
pub(crate) fn check_readable(root: Pid) -> io::Result<()> {
    std::fs::metadata(format!("/proc/{root}/stat")).map(drop)
}

/// Every process whose chain of parents leads to `root`, zombies included, found by reading the
/// parent of each process in `/proc/<pid>/stat`.
///
/// Processes that vanish while the walk runs are skipped. Because we are a child subreaper (or PID
/// 1), an orphan below us is re-parented to us, never to someone outside, so the walk sees every
/// process the job started, including those that called `setsid`.
pub(crate) fn descendants(root: Pid) -> io::Result<Vec<Descendant>> {
    match descendants_by_children_files(root) {
        Some(found) => Ok(found),
        None => descendants_by_table(root),
    }
}

/// The fast walk: down the tree through `/proc/<pid>/task/<tid>/children` (Linux 3.5+ with
/// `CONFIG_PROC_CHILDREN`), reading one file per task of a descendant instead of one per process
/// on the machine: on a busy host the full table costs milliseconds a walk. `None` where the
/// kernel has no such files, or the root's cannot be read; the caller then scans the whole table.
/// A child forked while its parent's file is read may be missed: the callers walk again (each kill
/// round, and until nothing is left), and the parent that forked it is always seen.
fn descendants_by_children_files(root: Pid) -> Option<Vec<Descendant>> {
    let mut found = Vec::new();
    let mut frontier = vec![root.as_raw()];
    let mut first = true;
    while let Some(parent) = frontier.pop() {
        let tasks = match std::fs::read_dir(format!("/proc/{parent}/task")) {
            Ok(tasks) => tasks,
            Err(_) if !first => continue, // the process is gone: so are its children's links
            Err(_) => return None,
        };
        for task in tasks.flatten() {
            let children = match std::fs::read_to_string(task.path().join("children")) {
                Ok(children) => children,
                Err(e) if first && e.kind() == io::ErrorKind::NotFound => return None,
                Err(_) => continue,
            };
            for pid in children.split_ascii_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                let pgid = procfs::stat(pid).ok().flatten().map(|stat| stat.pgrp);
                // A child that vanished between the two reads has no group left to signal.
                if let Some(pgid) = pgid {
                    found.push(Descendant { pid: Pid::from_raw(pid), pgid: Pid::from_raw(pgid) });
                    frontier.push(pid);
                }
            }
        }
        first = false;
    }
    Some(found)
}

/// The portable walk: read the parent of every process in `/proc/<pid>/stat`, then follow the
/// parent links down from `root`.
fn descendants_by_table(root: Pid) -> io::Result<Vec<Descendant>> {
    // (pid, ppid, pgid) of every process in the table.
    let mut table: Vec<(i32, i32, i32)> = Vec::new();
    for pid in procfs::pids()? {
        // `None`: gone between the listing and the read.
        if let Some(stat) = procfs::stat(pid?)? {
            table.push((stat.pid, stat.ppid, stat.pgrp));
        }
    }
    let mut found: Vec<Descendant> = Vec::new();
    let mut frontier = vec![root.as_raw()];
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid, pgid) in &table {
            if ppid == parent {
                found.push(Descendant { pid: Pid::from_raw(pid), pgid: Pid::from_raw(pgid) });
                frontier.push(pid);
            }
        }
    }
    Ok(found)
}

/// Sends `signal` to the process group `pgid`. A group that no longer exists is not an error; any
/// other failure is logged, not returned: cleanup carries on with the processes it can reach, and
/// what survives is counted in the outcome.
pub(crate) fn signal_group(pgid: Pid, signal: Signal) {
    match killpg(pgid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(errno) => {
            tracing::warn!(%pgid, ?signal, %errno, "cannot signal the job's process group")
        }
    }
}

/// Sends `signal` to one process; like [`signal_group`], tolerates a process that is gone.
///
/// A pid read from `/proc` could in principle be reused between the walk and the kill. The window
/// is small: a process below us that ends stays a zombie until its parent (or we, in this same
/// thread) reap it.
pub(crate) fn signal_process(pid: Pid, signal: Signal) {
    match kill(pid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(errno) => tracing::warn!(%pid, ?signal, %errno, "cannot signal a descendant"),
    }
}
