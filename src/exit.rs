//! The exit statuses of the agent's own failures (sysexits), and the one place that maps every
//! error to one. The action's own status, 128+N for a signal and 124 for a timeout come from
//! [`crate::supervise`].

use crate::actions::ActionsError;
#[cfg(feature = "controller")]
use crate::build::BuildError;
use crate::exec::ExecError;
use crate::json::JsonError;
use crate::properties::PropertiesError;
use crate::step::StepError;
use crate::transport::TransportError;

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
    /// 70: an internal error of the agent.
    Software = 70,
    /// 73: a file or the result cannot be created.
    CantCreat = 73,
    /// 74: an I/O error.
    IoErr = 74,
}

/// The exit status of a timed-out action.
pub const TIMEOUT: i32 = 124;

/// The exit status of `opschain-exec` when its command exists but cannot be executed (as a POSIX
/// shell and env(1) report it).
pub const CANNOT_EXECUTE: i32 = 126;

/// The exit status of `opschain-exec` when its command is not found (as a POSIX shell and env(1)
/// report it).
pub const NOT_FOUND: i32 = 127;

/// The sysexit of a JSON input that cannot be read or is invalid.
pub fn of_json(e: &JsonError) -> Sysexit {
    match e {
        JsonError::Missing { .. } => Sysexit::NoInput,
        JsonError::Read { .. } => Sysexit::IoErr,
        JsonError::TooLarge { .. } | JsonError::Invalid { .. } => Sysexit::DataErr,
    }
}

fn actions(e: &ActionsError) -> Sysexit {
    match e {
        ActionsError::Missing { .. } => Sysexit::NoInput,
        ActionsError::Read { .. } => Sysexit::IoErr,
        ActionsError::Invalid { .. } | ActionsError::Definition { .. } | ActionsError::Unknown { .. } | ActionsError::Cycle { .. } => Sysexit::DataErr,
    }
}

/// The sysexit of a step error.
pub fn of_step(e: &StepError) -> Sysexit {
    match e {
        StepError::Context(e) => of_json(e),
        StepError::Actions(e) => actions(e),
        StepError::NoAction { .. } => Sysexit::DataErr,
        StepError::UnknownActionFlag { .. } => Sysexit::Usage,
        StepError::Properties(PropertiesError::Read(e)) => of_json(e),
        StepError::Properties(_) => Sysexit::DataErr,
        StepError::Declaration { .. } => Sysexit::DataErr,
        StepError::WriteFile(_) | StepError::Runtime(_) | StepError::RuntimeDir { .. } | StepError::Result(_) => Sysexit::CantCreat,
        StepError::Supervise(_) => Sysexit::Software,
        StepError::PropertiesCopy { .. } => Sysexit::DataErr,
    }
}

/// The exit status of a step error.
pub fn status_of(e: &StepError) -> i32 {
    of_step(e) as i32
}

/// The sysexit of a helper command error.
pub fn of_helper(e: &crate::helper::HelperError) -> Sysexit {
    use crate::helper::HelperError;
    match e {
        HelperError::NotInStep { .. } | HelperError::Value(_) | HelperError::ChildName(_) => Sysexit::Usage,
        HelperError::Read(e) => of_json(e),
        HelperError::Edit(_) => Sysexit::DataErr,
        HelperError::NotSet(_) => Sysexit::DataErr,
        HelperError::Write(_) | HelperError::Append { .. } => Sysexit::CantCreat,
    }
}

/// The exit status of an `opschain-exec` failure: sysexits for its own failures (64 no command, 65
/// bad context, properties or secret set, 66/74 unreadable input), 127 when the command is not found
/// and 126 when it cannot be executed.
pub fn of_exec(e: &ExecError) -> i32 {
    match e {
        ExecError::Exec { source: nix::Error::ENOENT, .. } => NOT_FOUND,
        ExecError::Exec { .. } => CANNOT_EXECUTE,
        other => exec_input(other) as i32,
    }
}

/// The sysexit of an `opschain-exec` failure to read or validate its input.
fn exec_input(e: &ExecError) -> Sysexit {
    match e {
        ExecError::NoCommand => Sysexit::Usage,
        ExecError::Context(e) | ExecError::SecretSet(e) => of_json(e),
        ExecError::Zip { source: zip::result::ZipError::Io(_), .. } => Sysexit::IoErr,
        ExecError::Zip { .. } | ExecError::ZipEntryMissing { .. } | ExecError::Declaration { .. } => Sysexit::DataErr,
        ExecError::Properties(PropertiesError::Read(e)) => of_json(e),
        ExecError::Properties(_) => Sysexit::DataErr,
        ExecError::Exec { .. } => Sysexit::Software,
    }
}

/// The sysexit of a build context or Docker failure: 65 invalid input (the step context, a build
/// secret list or set, the repo's Dockerfile), 74 an unreadable secret set, 66 a revision that
/// names no commit, 73 a context directory or file that cannot be written, 70 when git, tar or
/// docker cannot be run or fail.
#[cfg(feature = "controller")]
pub fn of_build(e: &BuildError) -> Sysexit {
    match e {
        BuildError::Context(e) => of_json(e),
        BuildError::SecretSets { .. } | BuildError::SecretValues { .. } | BuildError::NoSecretSet { .. } | BuildError::Dockerfile { .. } => Sysexit::DataErr,
        BuildError::SecretStore { .. } => Sysexit::IoErr,
        BuildError::SecretSet { source } => exec_input(source),
        BuildError::Revision { .. } => Sysexit::NoInput,
        BuildError::OutDir { .. } | BuildError::Write { .. } => Sysexit::CantCreat,
        BuildError::Spawn { .. } | BuildError::Tool { .. } => Sysexit::Software,
        BuildError::Docker(_) => Sysexit::Software,
    }
}

/// The sysexit of a transport error: a missing context file 66, one too large 65, a bad nonce 64,
/// a context that cannot be written 73, other I/O 74.
pub fn of_transport(e: &TransportError) -> Sysexit {
    match e {
        TransportError::ReadContext { source, .. } if source.kind() == std::io::ErrorKind::NotFound => Sysexit::NoInput,
        TransportError::ReadContext { .. } | TransportError::ReadResult { .. } | TransportError::WriteFrame(_) => Sysexit::IoErr,
        TransportError::ContextTooLarge { .. } => Sysexit::DataErr,
        TransportError::WriteContext(_) => Sysexit::CantCreat,
        TransportError::Nonce(_) => Sysexit::Usage,
    }
}
