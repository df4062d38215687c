//! The names the store keeps a change and its steps under: their statuses, with OpsChain's
//! names, and the backend a change runs on. Each converts to and from SQL text (rusqlite's
//! [`ToSql`] and [`FromSql`]), so queries bind them as parameters rather than spelling the names.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

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

/// Stores a name as SQL text.
fn text(name: &'static str) -> rusqlite::Result<ToSqlOutput<'static>> {
    Ok(ToSqlOutput::Borrowed(ValueRef::Text(name.as_bytes())))
}

impl ToSql for StepStatus {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        text(self.as_str())
    }
}

impl FromSql for StepStatus {
    /// Reads a stored name as [`StepStatus::parse`] does (an unknown one reads as `error`).
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value.as_str().map(StepStatus::parse)
    }
}

impl ToSql for ChangeStatus {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        text(self.as_str())
    }
}

impl FromSql for ChangeStatus {
    /// Reads a stored name as [`ChangeStatus::parse`] does (an unknown one reads as `error`).
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value.as_str().map(ChangeStatus::parse)
    }
}

/// Where a change's steps run (`change run --backend`; default `process`). Every kind can be
/// stored and read back; [`BackendKind::AVAILABLE`] says which this build can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// A checkout and a child process per step.
    Process,
    /// An image and a container per step.
    Docker,
    /// A Job per step in a Kubernetes cluster (cargo feature `kubernetes`).
    Kubernetes,
}

impl BackendKind {
    /// Every kind, in the order `--help` lists them.
    pub const ALL: [BackendKind; 3] = [BackendKind::Process, BackendKind::Docker, BackendKind::Kubernetes];

    /// The kinds this build can run.
    #[cfg(not(feature = "kubernetes"))]
    pub const AVAILABLE: &'static [BackendKind] = &[BackendKind::Process, BackendKind::Docker];
    /// The kinds this build can run.
    #[cfg(feature = "kubernetes")]
    pub const AVAILABLE: &'static [BackendKind] = &[BackendKind::Process, BackendKind::Docker, BackendKind::Kubernetes];

    /// The stored (and command-line) name.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Process => "process",
            BackendKind::Docker => "docker",
            BackendKind::Kubernetes => "kubernetes",
        }
    }

    /// The kind named `name`, if any.
    pub fn from_name(name: &str) -> Option<BackendKind> {
        BackendKind::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    /// Whether this build can run it.
    pub fn is_available(self) -> bool {
        BackendKind::AVAILABLE.contains(&self)
    }

    /// The names of the kinds this build can run, joined with ", " (for messages).
    pub fn available_names() -> String {
        BackendKind::AVAILABLE.iter().map(|kind| kind.as_str()).collect::<Vec<_>>().join(", ")
    }
}

impl std::fmt::Display for BackendKind {
    /// The name, padded as the formatter asks (`{:<8}`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl ToSql for BackendKind {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        text(self.as_str())
    }
}

impl FromSql for BackendKind {
    /// Reads a stored name; one no kind has is an error (the database was edited by hand).
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let name = value.as_str()?;
        BackendKind::from_name(name).ok_or_else(|| FromSqlError::Other(format!("unknown backend {name:?}").into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    /// `value` stored in a column and read back, with the text the column holds.
    fn round_trip<T: ToSql + FromSql>(value: T) -> (T, String) {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (v TEXT NOT NULL)").unwrap();
        conn.execute("INSERT INTO t (v) VALUES (?1)", [&value]).unwrap();
        conn.query_row("SELECT v, v FROM t", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap()
    }

    #[test]
    fn statuses_and_backends_are_stored_by_name_and_read_back() {
        for status in [StepStatus::Pending, StepStatus::Queued, StepStatus::Running, StepStatus::Success, StepStatus::Error, StepStatus::Aborted, StepStatus::Cancelled] {
            assert_eq!(round_trip(status), (status, status.as_str().to_string()));
        }
        for status in [ChangeStatus::Pending, ChangeStatus::Queued, ChangeStatus::Running, ChangeStatus::Success, ChangeStatus::Error, ChangeStatus::Cancelled] {
            assert_eq!(round_trip(status), (status, status.as_str().to_string()));
        }
        for kind in BackendKind::ALL {
            assert_eq!(round_trip(kind), (kind, kind.as_str().to_string()));
        }
        assert_eq!(round_trip(BackendKind::Docker).1, "docker");
    }

    #[test]
    fn an_unknown_stored_status_reads_as_error_and_an_unknown_backend_fails() {
        let conn = Connection::open_in_memory().unwrap();
        let step: StepStatus = conn.query_row("SELECT 'exploded'", [], |r| r.get(0)).unwrap();
        let change: ChangeStatus = conn.query_row("SELECT 'exploded'", [], |r| r.get(0)).unwrap();
        assert_eq!((step, change), (StepStatus::Error, ChangeStatus::Error));
        let backend = conn.query_row("SELECT 'mainframe'", [], |r| r.get::<_, BackendKind>(0)).unwrap_err();
        assert!(backend.to_string().contains("unknown backend \"mainframe\""), "{backend}");
    }
}
