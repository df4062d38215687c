//! The exit statuses of the agent's own failures (sysexits), and the one place that maps every
//! error to one. The action's own status, 128+N for a signal and 124 for a timeout come from
//! [`crate::supervise`].

use crate::actions::ActionsError;
use crate::json::JsonError;
use crate::properties::PropertiesError;
use crate::step::StepError;

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

fn json(e: &JsonError) -> Sysexit {
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
        StepError::Context(e) => json(e),
        StepError::Actions(e) => actions(e),
        StepError::NoAction { .. } => Sysexit::DataErr,
        StepError::UnknownActionFlag { .. } => Sysexit::Usage,
        StepError::Properties(PropertiesError::Read(e)) => json(e),
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
        HelperError::Read(e) => json(e),
        HelperError::Edit(_) => Sysexit::DataErr,
        HelperError::NotSet(_) => Sysexit::DataErr,
        HelperError::Write(_) | HelperError::Append { .. } => Sysexit::CantCreat,
    }
}
