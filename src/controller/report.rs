//! What the command line prints about stored changes: a change's step tree (`change show`, the
//! end of `demo`) and its logs (`change show-logs`). Each writes to the writer it is given, so a
//! reader that goes away (a closed pipe) is an [`std::io::Error`] for the caller to end on, never
//! a panic.

use std::io::Write;
use std::time::Duration;

use super::output::{change_masker, View};
use super::status::{ChangeStatus, StepStatus};
use super::store::{pid_alive, ChangeRow, StepRow, Store, StoreError};

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The output cannot be written (a closed pipe, a full disk).
    #[error("cannot write the output")]
    Write(#[from] std::io::Error),
}

/// How often a followed log looks for new lines (200 ms).
pub const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Writes the subtree of `steps` under `parent` (`None`: the whole tree), indented from `depth`:
/// a line per step (`id [action] status duration exit N (children: how)`), and under a failed
/// step its message, each line marked `|`.
pub fn write_step_tree(out: &mut dyn Write, steps: &[StepRow], parent: Option<i64>, depth: usize) -> std::io::Result<()> {
    let mut children: Vec<&StepRow> = steps.iter().filter(|s| s.parent_id == parent).collect();
    children.sort_by_key(|s| s.position);
    for s in children {
        let strategy = s.child_strategy.as_deref().map(|c| format!(" (children: {c})")).unwrap_or_default();
        let took = s.duration_secs.map(|d| format!(" {d:.2}s")).unwrap_or_default();
        let exit = s.exit_status.map(|e| format!(" exit {e}")).unwrap_or_default();
        writeln!(out, "{}{} [{}] {}{took}{exit}{strategy}", "  ".repeat(depth), s.id, s.action, s.status.as_str())?;
        if s.status == StepStatus::Error {
            for line in s.message.as_deref().unwrap_or_default().lines() {
                writeln!(out, "{}  | {line}", "  ".repeat(depth))?;
            }
        }
        write_step_tree(out, steps, Some(s.id), depth + 1)?;
    }
    Ok(())
}

/// Why a change failed, in one line: the first failed step (`step 7 [helo]`) and the first line
/// of its message (the agent's own error, see [`crate::controller::scheduler::failure_message`]).
/// `None` when no step failed with a message.
pub fn failure_summary(steps: &[StepRow]) -> Option<String> {
    let step = steps.iter().filter(|s| s.status == StepStatus::Error && s.message.is_some()).min_by_key(|s| s.id)?;
    let first = step.message.as_deref()?.lines().next().unwrap_or_default();
    Some(format!("step {} [{}]: {first}", step.id, step.action))
}

/// How `change show-logs` prints.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogOptions {
    /// Keep printing lines as they are stored until the change has ended.
    pub follow: bool,
    /// Which lines, and whether with their time (as a running change prints them).
    pub view: View,
}

/// Writes the log lines of change `id`, masked with its secrets; with `options.follow`, keeps
/// writing new ones until the change has ended and its last lines are written.
pub fn write_logs(store: &Store, id: i64, options: LogOptions, out: &mut dyn Write) -> Result<(), ReportError> {
    let mask = change_masker(store, &store.change(id)?)?;
    let mut failed: Option<std::io::Error> = None;
    let mut after = 0;
    loop {
        // Whether the change had ended before this read: then the read has its last lines.
        let ended = !options.follow || is_ended(&store.change(id)?);
        after = store.logs_after(id, after, |l| {
            if failed.is_none() {
                let prefix = format!("[{} {}]", l.step_id, l.action);
                if let Some(line) = options.view.show(&prefix, &mask.mask(&l.line), Some(&l.at)) {
                    if let Err(e) = writeln!(out, "{line}") {
                        failed = Some(e);
                    }
                }
            }
        })?;
        if let Some(e) = failed.take() {
            return Err(e.into());
        }
        out.flush()?;
        if ended {
            return Ok(());
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}

/// Whether no more lines will come to `change`: it has ended, or the controller running it is
/// gone (killed: `change retry` runs it again, and `change logs --follow` follows that run).
pub fn is_ended(change: &ChangeRow) -> bool {
    let running = matches!(change.status, ChangeStatus::Pending | ChangeStatus::Queued | ChangeStatus::Running);
    !running || change.controller_pid.is_some_and(|pid| !pid_alive(pid))
}
