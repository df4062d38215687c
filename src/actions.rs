//! `actions.toml`: the action definitions, and the plan of one step.
//!
//! ```toml
//! [actions.deploy]
//! description = "Build, test and release"
//! steps = ["build", "test", "release"]   # child steps, each in its own runner
//! run_as = "sequential"                  # or "parallel"; sequential when absent
//!
//! [actions.build]
//! requires = ["setup"]                   # prerequisites, run first in this same runner
//! run = "make build"                     # through /bin/sh -c; or command = ["make", "build"]
//! timeout_secs = 600
//! ```
//! An action with no `run` and no `command` only declares children. Unknown keys are errors, so a
//! typo never silently drops a setting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::exit::{ExitStatus, Sysexit};

/// The shell a `run` string goes through: `/bin/sh -c RUN`.
pub const SHELL: &str = "/bin/sh";

/// Why actions.toml could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ActionsError {
    /// The file does not exist.
    #[error("{}: not found", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// Reading the file failed.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or not of the expected shape.
    #[error("{}: line {line}, column {column}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A definition is valid TOML but inconsistent (e.g. both `run` and `command`).
    #[error("{}: [actions.{action:?}]: {message}", path.display())]
    Definition {
        /// The file.
        path: PathBuf,
        /// The action.
        action: String,
        /// What is wrong.
        message: String,
    },
    /// The action to run is not defined.
    #[error("{}: no action named {action:?} (defined: {defined})", path.display())]
    Unknown {
        /// The file.
        path: PathBuf,
        /// The missing action (or prerequisite).
        action: String,
        /// The names that are defined, comma-separated.
        defined: String,
    },
    /// The prerequisites form a cycle.
    #[error("{}: prerequisites form a cycle: {}", path.display(), cycle.join(" -> "))]
    Cycle {
        /// The file.
        path: PathBuf,
        /// The actions of the cycle, the first repeated last.
        cycle: Vec<String>,
    },
}

impl ActionsError {
    /// The exit status of this failure: 66 a missing actions.toml, 74 an unreadable one, 65 an
    /// invalid one.
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            ActionsError::Missing { .. } => Sysexit::NoInput,
            ActionsError::Read { .. } => Sysexit::IoErr,
            ActionsError::Invalid { .. } | ActionsError::Definition { .. } | ActionsError::Unknown { .. } | ActionsError::Cycle { .. } => Sysexit::DataErr,
        }
        .into()
    }
}

/// How a step's children run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunAs {
    /// One after another; a failure stops the rest (the default).
    #[default]
    Sequential,
    /// All at once; a failure lets the siblings finish.
    Parallel,
}

/// One `[actions.NAME]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// What the action does, for `opschain-runner actions`.
    #[serde(default)]
    pub description: Option<String>,
    /// Child steps, each in its own runner, after this step.
    #[serde(default)]
    pub steps: Vec<String>,
    /// How the children run; sequential when absent.
    #[serde(default)]
    pub run_as: Option<RunAs>,
    /// Prerequisites, run first in this same runner, in order.
    #[serde(default)]
    pub requires: Vec<String>,
    /// A shell command line, run through `/bin/sh -c`.
    #[serde(default)]
    pub run: Option<String>,
    /// A command and its arguments, run directly.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Time limit of the command, in seconds; the global default when absent.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

impl Action {
    /// The argv this action runs, if it runs anything.
    pub fn argv(&self) -> Option<Vec<String>> {
        match (&self.run, &self.command) {
            (Some(run), _) => Some(vec![SHELL.to_string(), "-c".to_string(), run.clone()]),
            (None, Some(command)) => Some(command.clone()),
            (None, None) => None,
        }
    }

    /// The action's own time limit.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout_secs.map(Duration::from_secs)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    actions: toml::Table,
}

/// The parsed `actions.toml`, in file order.
#[derive(Debug, Clone, Default)]
pub struct Actions {
    /// The file it was read from (named in errors).
    pub path: PathBuf,
    /// The definitions by name, in file order.
    pub actions: Vec<(String, Action)>,
}

impl Actions {
    /// Reads and validates `actions.toml` at `path`.
    pub fn read(path: &Path) -> Result<Actions, ActionsError> {
        let text = std::fs::read_to_string(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ActionsError::Missing { path: path.to_path_buf() },
            std::io::ErrorKind::InvalidData => ActionsError::Invalid { path: path.to_path_buf(), line: 1, column: 1, message: "not valid UTF-8".into() },
            _ => ActionsError::Read { path: path.to_path_buf(), source },
        })?;
        Actions::parse(path, &text)
    }

    /// Parses `text` (from `path`, named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Actions, ActionsError> {
        let invalid = |span: Option<std::ops::Range<usize>>, message: String| {
            let offset = span.map(|s| s.start).unwrap_or(0).min(text.len());
            let before = &text[..offset];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
            ActionsError::Invalid { path: path.to_path_buf(), line, column, message }
        };
        let file: File = toml::from_str(text).map_err(|e| invalid(e.span(), e.message().to_string()))?;
        let mut actions = Vec::with_capacity(file.actions.len());
        for (name, value) in file.actions {
            let action: Action = value.try_into().map_err(|e: toml::de::Error| {
                // Spans are lost once a table is detached from the document: point at its header.
                let header = find_header(text, &name);
                invalid(header.map(|h| h..h), format!("[actions.{name}]: {}", e.message()))
            })?;
            let definition = |message: &str| ActionsError::Definition { path: path.to_path_buf(), action: name.clone(), message: message.into() };
            if action.run.is_some() && action.command.is_some() {
                return Err(definition("has both `run` and `command`; keep one"));
            }
            if action.command.as_ref().is_some_and(Vec::is_empty) {
                return Err(definition("`command` is empty"));
            }
            if action.timeout_secs == Some(0) {
                return Err(definition("`timeout_secs` must be at least 1"));
            }
            if action.steps.iter().chain(&action.requires).any(|s| s.trim().is_empty()) {
                return Err(definition("an empty action name in `steps` or `requires`"));
            }
            actions.push((name, action));
        }
        let actions = Actions { path: path.to_path_buf(), actions };
        for (name, action) in &actions.actions {
            for dependency in action.requires.iter().chain(&action.steps) {
                if actions.get(dependency).is_none() {
                    return Err(actions.unknown(dependency));
                }
            }
            actions.plan(name)?;
        }
        Ok(actions)
    }

    /// The action named `name`.
    pub fn get(&self, name: &str) -> Option<&Action> {
        self.actions.iter().find(|(n, _)| n == name).map(|(_, a)| a)
    }

    fn unknown(&self, name: &str) -> ActionsError {
        let defined: Vec<&str> = self.actions.iter().map(|(n, _)| n.as_str()).collect();
        ActionsError::Unknown { path: self.path.clone(), action: name.to_string(), defined: defined.join(", ") }
    }

    /// The plan of a step running `name`: its prerequisites, depth first, each once, then itself.
    pub fn plan(&self, name: &str) -> Result<Vec<(String, Action)>, ActionsError> {
        let mut order = Vec::new();
        let mut state: BTreeMap<String, bool> = BTreeMap::new(); // false: on the stack; true: done
        let mut stack = Vec::new();
        self.visit(name, &mut state, &mut stack, &mut order)?;
        Ok(order)
    }

    fn visit(&self, name: &str, state: &mut BTreeMap<String, bool>, stack: &mut Vec<String>, order: &mut Vec<(String, Action)>) -> Result<(), ActionsError> {
        match state.get(name) {
            Some(true) => return Ok(()),
            Some(false) => {
                let start = stack.iter().position(|n| n == name).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(name.to_string());
                return Err(ActionsError::Cycle { path: self.path.clone(), cycle });
            }
            None => {}
        }
        let action = self.get(name).ok_or_else(|| self.unknown(name))?;
        state.insert(name.to_string(), false);
        stack.push(name.to_string());
        for required in &action.requires {
            self.visit(required, state, stack, order)?;
        }
        stack.pop();
        state.insert(name.to_string(), true);
        order.push((name.to_string(), action.clone()));
        Ok(())
    }
}

/// Byte offset of the `[actions.NAME]` header (quoted or bare), if it can be found.
fn find_header(text: &str, name: &str) -> Option<usize> {
    [format!("[actions.{name}]"), format!("[actions.\"{name}\"]"), format!("[actions.'{name}']")].iter().find_map(|h| text.find(h.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Actions, ActionsError> {
        Actions::parse(Path::new("actions.toml"), text)
    }

    #[test]
    fn plans_prerequisites_depth_first_once() {
        let actions = parse("[actions.a]\nrequires = [\"b\", \"c\"]\nrun = \"a\"\n[actions.b]\nrequires = [\"c\"]\nrun = \"b\"\n[actions.c]\nrun = \"c\"\n").unwrap();
        let names: Vec<_> = actions.plan("a").unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["c", "b", "a"]);
    }

    #[test]
    fn quoted_names_and_argv() {
        let actions = parse("[actions.\"sample:hello:run\"]\nrun = \"echo hi\"\n[actions.x]\ncommand = [\"echo\", \"a b\"]\n").unwrap();
        assert_eq!(actions.get("sample:hello:run").unwrap().argv().unwrap(), ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(actions.get("x").unwrap().argv().unwrap(), ["echo", "a b"]);
    }

    #[test]
    fn errors_name_the_line() {
        let err = parse("[actions.a]\nrun = \"x\"\nrun_as = \"sideways\"\n").unwrap_err().to_string();
        assert!(err.contains("line 1") || err.contains("line 3"), "{err}");
        let err = parse("[actions.a]\nrun = \n").unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        let err = parse("[actions.a]\nrnu = \"x\"\n").unwrap_err().to_string();
        assert!(err.contains("rnu"), "{err}");
    }

    #[test]
    fn cycles_and_unknown_names_are_refused() {
        let err = parse("[actions.a]\nrequires = [\"b\"]\n[actions.b]\nrequires = [\"a\"]\n").unwrap_err();
        assert!(matches!(err, ActionsError::Cycle { .. }), "{err}");
        let err = parse("[actions.a]\nsteps = [\"zz\"]\n").unwrap_err();
        assert!(matches!(err, ActionsError::Unknown { .. }), "{err}");
        assert!(parse("[actions.a]\nrun = \"x\"\ncommand = [\"y\"]\n").is_err());
    }
}
