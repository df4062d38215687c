//! The statuses of changes and steps, with OpsChain's names.

/// A step's status. A step is created `pending`, waits for a worker `queued`, runs `running`, and
/// ends `success` or `error`; steps that never ran end `aborted` (a sequential sibling or an
/// ancestor failed) or `cancelled` (`change cancel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepStatus {
    /// Created, not started.
    Pending,
    /// Waiting for a worker.
    Queued,
    /// The agent runs it.
    Running,
    /// Its action succeeded and its diffs applied.
    Success,
    /// Its action failed, the agent failed, or its diffs did not apply.
    Error,
    /// Not run: an earlier sequential sibling (or an ancestor's) failed.
    Aborted,
    /// Not run, or stopped: the change was cancelled.
    Cancelled,
}

impl StepStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Queued => "queued",
            StepStatus::Running => "running",
            StepStatus::Success => "success",
            StepStatus::Error => "error",
            StepStatus::Aborted => "aborted",
            StepStatus::Cancelled => "cancelled",
        }
    }

    /// Reads a stored name; an unknown one reads as `error`.
    pub fn parse(s: &str) -> StepStatus {
        match s {
            "pending" => StepStatus::Pending,
            "queued" => StepStatus::Queued,
            "running" => StepStatus::Running,
            "success" => StepStatus::Success,
            "aborted" => StepStatus::Aborted,
            "cancelled" => StepStatus::Cancelled,
            _ => StepStatus::Error,
        }
    }

    /// Whether the status is an end state.
    pub fn is_final(self) -> bool {
        !matches!(self, StepStatus::Pending | StepStatus::Queued | StepStatus::Running)
    }
}

/// A change's status: `pending` when created, `queued` while another change holds its
/// environment, `running`, then `success`, `error` or `cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeStatus {
    /// Created, not started.
    Pending,
    /// Waiting for its environment.
    Queued,
    /// A controller runs it.
    Running,
    /// Every step succeeded.
    Success,
    /// A step failed.
    Error,
    /// Cancelled.
    Cancelled,
}

impl ChangeStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeStatus::Pending => "pending",
            ChangeStatus::Queued => "queued",
            ChangeStatus::Running => "running",
            ChangeStatus::Success => "success",
            ChangeStatus::Error => "error",
            ChangeStatus::Cancelled => "cancelled",
        }
    }

    /// Reads a stored name; an unknown one reads as `error`.
    pub fn parse(s: &str) -> ChangeStatus {
        match s {
            "pending" => ChangeStatus::Pending,
            "queued" => ChangeStatus::Queued,
            "running" => ChangeStatus::Running,
            "success" => ChangeStatus::Success,
            "cancelled" => ChangeStatus::Cancelled,
            _ => ChangeStatus::Error,
        }
    }

    /// Whether the status is an end state.
    pub fn is_final(self) -> bool {
        matches!(self, ChangeStatus::Success | ChangeStatus::Error | ChangeStatus::Cancelled)
    }
}
