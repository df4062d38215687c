//! The commands an action's scripts call (`opschain-runner property get|set|remove`,
//! `opschain-runner child add`): read or change a property, add a child step, without
//! hand-editing JSON. They find their files through the `OPSCHAIN_*` variables the agent exports.
//!
//! Each change rewrites the file atomically, splicing the property into the text as it is
//! ([`crate::properties::splice`]): a large document is neither parsed into a tree nor re-serialised. Two of these commands
//! changing the same level at the same time from one action race (last writer wins): run them one after another.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::atomic::{self, AtomicError, Durability};
use crate::exit::{ExitStatus, Sysexit};
use crate::json::{self, JsonError, SizeLimit, StrictObject};
use crate::properties::splice::{self, SpliceError};
use crate::properties::{self, PropertiesError};

/// Why a script command failed.
#[derive(Debug, thiserror::Error)]
pub enum ScriptCommandError {
    /// The variable naming the file is not set: not run by the agent.
    #[error("${var} is not set: run this from an action started by opschain-runner")]
    NotInStep {
        /// The variable.
        var: &'static str,
    },
    /// The file is missing or invalid.
    #[error(transparent)]
    Read(#[from] JsonError),
    /// The path or the edit is invalid.
    #[error(transparent)]
    Edit(#[from] PropertiesError),
    /// `--json` was given and VALUE is not JSON.
    #[error("VALUE is not valid JSON: {0}")]
    Value(serde_json::Error),
    /// The property is not set.
    #[error("property {0:?} is not set")]
    NotSet(String),
    /// A child action name is empty or spans lines.
    #[error("invalid child action name {0:?}")]
    ChildName(String),
    /// Writing a file failed.
    #[error(transparent)]
    Write(#[from] AtomicError),
    /// Appending to the child steps file failed.
    #[error("{}: cannot append: {source}", path.display())]
    Append {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl ScriptCommandError {
    /// The exit status of this failure: 64 a misuse (outside a step, a bad VALUE or child name),
    /// the file's own for an unreadable file, 65 an invalid edit or an unset property, 73 a file
    /// that cannot be written.
    pub fn exit_status(&self) -> ExitStatus {
        let sysexit = match self {
            ScriptCommandError::NotInStep { .. } | ScriptCommandError::Value(_) | ScriptCommandError::ChildName(_) => Sysexit::Usage,
            ScriptCommandError::Read(e) => return e.exit_status(),
            ScriptCommandError::Edit(_) | ScriptCommandError::NotSet(_) => Sysexit::DataErr,
            ScriptCommandError::Write(_) | ScriptCommandError::Append { .. } => Sysexit::CantCreat,
        };
        sysexit.into()
    }
}

/// A writable level whose properties copy a script command edits (`OPSCHAIN_PROJECT_PROPERTIES` or `OPSCHAIN_ENVIRONMENT_PROPERTIES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyLevel {
    /// `$OPSCHAIN_PROJECT_PROPERTIES`.
    Project,
    /// `$OPSCHAIN_ENVIRONMENT_PROPERTIES`.
    Environment,
}

impl CopyLevel {
    fn var(self) -> &'static str {
        match self {
            CopyLevel::Project => "OPSCHAIN_PROJECT_PROPERTIES",
            CopyLevel::Environment => "OPSCHAIN_ENVIRONMENT_PROPERTIES",
        }
    }
}

fn path_of(var: &'static str) -> Result<PathBuf, ScriptCommandError> {
    std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from).ok_or(ScriptCommandError::NotInStep { var })
}

fn read(path: &Path) -> Result<Map<String, Value>, ScriptCommandError> {
    Ok(json::read_file::<StrictObject>(path, SizeLimit::DEFAULT)?.0)
}

/// The property at `path` of the merged properties.
pub fn get(path: &str) -> Result<Value, ScriptCommandError> {
    let keys = properties::parse_path(path)?;
    let doc = read(&path_of("OPSCHAIN_PROPERTIES")?)?;
    properties::get(&doc, &keys).cloned().ok_or_else(|| ScriptCommandError::NotSet(path.to_string()))
}

/// Sets the property at `path` of `level` to `value` (a string, or JSON when `as_json`).
pub fn set(level: CopyLevel, path: &str, value: &str, as_json: bool) -> Result<(), ScriptCommandError> {
    let keys = properties::parse_path(path)?;
    let value = if as_json { serde_json::from_str(value).map_err(ScriptCommandError::Value)? } else { Value::String(value.to_string()) };
    let text = serde_json::to_string(&value).expect("a JSON value serialises");
    edit(level, |doc| splice::set_splice(doc, &keys, &text).map(Some), |doc| Ok(properties::set(doc, &keys, value, path)?), path, &keys)
}

/// Removes the property at `path` of `level`; removing what is not there is no error.
pub fn remove(level: CopyLevel, path: &str) -> Result<(), ScriptCommandError> {
    let keys = properties::parse_path(path)?;
    edit(
        level,
        |doc| splice::remove_splice(doc, &keys),
        |doc| {
            properties::remove(doc, &keys);
            Ok(())
        },
        path,
        &keys,
    )
}

/// Changes the copy of `level`: by splicing its text (`splice` finds the edit to make: only the
/// objects on the property's path are taken apart, the rest of the document is skimmed, not
/// checked; `Ok(None)` leaves the file as it is), or, when the text is not a document the splice
/// can read, by the strict reader, whose error names the problem (`tree`, should the text be
/// valid after all, edits the tree). `path` and `keys` name the property, for errors.
///
/// A copy the action made invalid where the splice does not look is written back with the edit,
/// invalid: the agent refuses it when the action ends (every byte of a copy that differs from what
/// the agent wrote is checked strictly there), as it refuses a copy the action left invalid
/// without these commands. The copy is mapped, not read ([`json::read_mapped`]: the agent and these
/// commands only ever replace it by renaming), and the edited text is written from its pages,
/// around the edit: the document is not copied in memory.
fn edit(
    level: CopyLevel,
    splice: impl FnOnce(&str) -> Result<Option<splice::Splice>, SpliceError>,
    tree: impl FnOnce(&mut Map<String, Value>) -> Result<(), ScriptCommandError>,
    path: &str,
    keys: &[String],
) -> Result<(), ScriptCommandError> {
    let file = path_of(level.var())?;
    // Mapped, not read: the copy is megabytes, read once, and replaced by renaming only.
    let bytes = json::read_mapped(&file, SizeLimit::DEFAULT)?;
    let spliced = std::str::from_utf8(&bytes).map_err(|source| SpliceError::Utf8 { source }).and_then(splice);
    match spliced {
        Ok(None) => Ok(()),
        Ok(Some(edit)) => Ok(atomic::write_with(&file, 0o644, Durability::Rename, |out| {
            out.write_all(&bytes[..edit.range.start])?;
            out.write_all(edit.with.as_bytes())?;
            out.write_all(&bytes[edit.range.end..])
        })?),
        Err(SpliceError::NotAnObjectOnPath { depth }) => {
            Err(PropertiesError::NotAnObject { path: path.to_string(), at: keys[..=depth.min(keys.len() - 1)].join(".") }.into())
        }
        Err(_) => {
            let StrictObject(mut doc) = json::parse(&file, &bytes)?;
            tree(&mut doc)?;
            // Compact, as the agent wrote the copy (see `atomic::json`).
            atomic::write_with(&file, 0o644, Durability::Rename, |out| atomic::json(out, &doc))?;
            Ok(())
        }
    }
}

/// Appends child steps to `$OPSCHAIN_CHILD_STEPS`.
pub fn add_children(actions: &[String]) -> Result<(), ScriptCommandError> {
    let path = path_of("OPSCHAIN_CHILD_STEPS")?;
    let mut text = String::new();
    for action in actions {
        let name = action.trim();
        if name.is_empty() || name.contains(['\n', '\r']) || name.starts_with('#') {
            return Err(ScriptCommandError::ChildName(action.clone()));
        }
        text.push_str(name);
        text.push('\n');
    }
    let append = |source| ScriptCommandError::Append { path: path.clone(), source };
    let mut file = std::fs::OpenOptions::new().append(true).open(&path).map_err(append)?;
    // One write of whole lines: concurrent appenders (O_APPEND) never interleave within a line.
    file.write_all(text.as_bytes()).map_err(append)
}
