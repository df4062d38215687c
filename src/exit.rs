//! The exit statuses of the agent's and the controller's own failures (sysexits, and the shell's
//! 124/126/127), and [`ExitStatus`], the one type every error's `exit_status` returns. Each error
//! type maps its variants to a status beside its own definition; this module holds only the
//! statuses. The action's own status and 128+N for a signal come from [`crate::supervise`].

/// Exit statuses of the agent's own failures, as sysexits.h names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Sysexit {
    /// 64: the command line is wrong.
    Usage = 64,
    /// 65: the step context, actions.toml or a properties file is invalid.
    DataErr = 65,
    /// 66: an input file is missing.
    NoInput = 66,
    /// 67: no such user (`opschain user`).
    NoUser = 67,
    /// 69: a service is unavailable (an address the server cannot listen on).
    Unavailable = 69,
    /// 70: an internal error of the agent.
    Software = 70,
    /// 73: a file or the result cannot be created.
    CantCreat = 73,
    /// 74: an I/O error.
    IoErr = 74,
    /// 75: a temporary failure, worth trying again later (the controller: another controller
    /// runs the change).
    TempFail = 75,
    /// 77: permission denied (the server refused the user).
    NoPerm = 77,
    /// 78: a configuration error (the controller's key file is not the database's key).
    Config = 78,
}

/// The exit status of a failure, as a process reports it to its parent (0-255). Every error type
/// of the crate maps to one through its `exit_status` method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExitStatus(u8);

impl ExitStatus {
    /// The status as the `i32` that `std::process::exit` and `ExitStatus::code` use.
    pub const fn code(self) -> i32 {
        self.0 as i32
    }
}

impl From<Sysexit> for ExitStatus {
    fn from(s: Sysexit) -> Self {
        // Every sysexit is in 64..=78.
        ExitStatus(s as i32 as u8)
    }
}

impl From<ExitStatus> for i32 {
    fn from(s: ExitStatus) -> i32 {
        s.code()
    }
}

impl From<ExitStatus> for std::process::ExitCode {
    fn from(s: ExitStatus) -> Self {
        std::process::ExitCode::from(s.0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The exit status of a timed-out action.
pub const TIMEOUT: ExitStatus = ExitStatus(124);

/// The exit status of a command that exists but cannot be executed (as a POSIX shell and env(1)
/// report it).
pub const CANNOT_EXECUTE: ExitStatus = ExitStatus(126);

/// The exit status of a command that is not found (as a POSIX shell and env(1) report it).
pub const NOT_FOUND: ExitStatus = ExitStatus(127);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_keep_their_numbers() {
        assert_eq!(ExitStatus::from(Sysexit::Usage).code(), 64);
        assert_eq!(ExitStatus::from(Sysexit::IoErr).code(), 74);
        assert_eq!(i32::from(TIMEOUT), 124);
        assert_eq!(CANNOT_EXECUTE.code(), 126);
        assert_eq!(NOT_FOUND.to_string(), "127");
    }
}
