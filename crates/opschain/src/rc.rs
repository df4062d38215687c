//! Default project and environment codes, found as OpsChain's own CLI finds them.
//!
//! A command that names a project or an environment takes the code from, first to last:
//!
//! 1. its flag (`--project-code` / `-p`, `--environment-code` / `-e`);
//! 2. the environment variable [`PROJECT_VAR`] (`opschain_projectCode`) or [`ENVIRONMENT_VAR`]
//!    (`opschain_environmentCode`), when set and not empty;
//! 3. the `projectCode` / `environmentCode` key of the `.opschainrc` file of the working
//!    directory or, when the working directory has none, of the home directory (one file is read,
//!    never both, as OpsChain reads them). The file is JSON or INI, with `;` comments, as
//!    OpsChain's example is. Its `editor` is the editor of `edit-properties`; the keys of
//!    OpsChain's API client ([`NOT_YET_USED`]: `apiBaseUrl`, `username`, ...) are accepted and
//!    reported as not used yet.
//!
//! [`Defaults`] reads the file only when a code is not given otherwise, and once.

use std::cell::OnceCell;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use opschain_runner::json::{self, JsonError, SizeLimit};

/// The configuration file's name: `.opschainrc`.
pub const RC_FILE: &str = ".opschainrc";

/// The variable that supplies a default project code: `opschain_projectCode`.
pub const PROJECT_VAR: &str = "opschain_projectCode";

/// The variable that supplies a default environment code: `opschain_environmentCode`.
pub const ENVIRONMENT_VAR: &str = "opschain_environmentCode";

/// The largest `.opschainrc` read (1 MiB): it holds a few settings.
const RC_LIMIT: SizeLimit = SizeLimit::Error(1 << 20);

/// Why the defaults could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RcError {
    /// The `.opschainrc` file exists but cannot be read or is not a JSON object whose
    /// `projectCode` and `environmentCode`, when present, are non-empty strings.
    #[error("cannot use the OpsChain CLI configuration")]
    File {
        /// The cause, naming the file and the key.
        #[source]
        source: JsonError,
    },
}

/// Which code: a project's or an environment's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// The project code.
    Project,
    /// The environment code.
    Environment,
}

impl Which {
    /// The key of `.opschainrc` that holds it.
    pub fn key(self) -> &'static str {
        match self {
            Which::Project => "projectCode",
            Which::Environment => "environmentCode",
        }
    }

    /// The environment variable that holds it.
    pub fn var(self) -> &'static str {
        match self {
            Which::Project => PROJECT_VAR,
            Which::Environment => ENVIRONMENT_VAR,
        }
    }

    /// Its name in messages ("project", "environment").
    pub fn noun(self) -> &'static str {
        match self {
            Which::Project => "project",
            Which::Environment => "environment",
        }
    }
}

/// Where a code came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The command line.
    Flag,
    /// An environment variable (its name).
    Variable(&'static str),
    /// A `.opschainrc` file (its path).
    File(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag => f.write_str("the command line"),
            Source::Variable(name) => write!(f, "${name}"),
            Source::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A code and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Code {
    /// The code.
    pub value: String,
    /// Its source.
    pub source: Source,
}

/// The keys of `.opschainrc`: those this controller reads, and the rest as they are.
#[derive(Debug, Deserialize)]
struct RcDoc {
    #[serde(rename = "projectCode", default, deserialize_with = "non_empty")]
    project_code: Option<String>,
    #[serde(rename = "environmentCode", default, deserialize_with = "non_empty")]
    environment_code: Option<String>,
    /// The editor of `edit-properties` (after $VISUAL and $EDITOR).
    #[serde(default)]
    editor: Option<String>,
    /// Every other key.
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

/// The keys of OpsChain's CLI configuration that belong to its API client (the server's address,
/// the credentials, the request timeout) or to its step display: accepted, not used yet.
pub const NOT_YET_USED: [&str; 6] = ["apiBaseUrl", "username", "password", "passwordCommand", "requestTimeout", "stepEmoji"];

fn non_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value = Option::<String>::deserialize(d)?;
    if value.as_deref() == Some("") {
        return Err(serde::de::Error::custom("an empty code"));
    }
    Ok(value)
}

/// A `.opschainrc` that was found.
#[derive(Debug)]
struct RcFile {
    path: PathBuf,
    doc: RcDoc,
}

/// The sources of default codes: the variables' values and the two directories to look in.
#[derive(Debug)]
pub struct Defaults {
    cwd: Option<PathBuf>,
    home: Option<PathBuf>,
    project_var: Option<String>,
    environment_var: Option<String>,
    rc: OnceCell<Option<RcFile>>,
}

impl Defaults {
    /// The defaults of this process: its working directory, `$HOME`, and its `opschain_*`
    /// variables.
    pub fn from_process() -> Defaults {
        let var = |name| std::env::var(name).ok();
        Defaults::new(std::env::current_dir().ok(), std::env::var_os("HOME").map(PathBuf::from), var(PROJECT_VAR), var(ENVIRONMENT_VAR))
    }

    /// Defaults from explicit sources (a missing directory is not looked in; an empty variable
    /// counts as unset).
    pub fn new(cwd: Option<PathBuf>, home: Option<PathBuf>, project_var: Option<String>, environment_var: Option<String>) -> Defaults {
        let set = |v: Option<String>| v.filter(|v| !v.is_empty());
        Defaults { cwd, home, project_var: set(project_var), environment_var: set(environment_var), rc: OnceCell::new() }
    }

    /// The code `which`: `flag` when given, else the variable's, else the `.opschainrc` file's;
    /// `None` when no source has one.
    pub fn resolve(&self, which: Which, flag: Option<&str>) -> Result<Option<Code>, RcError> {
        if let Some(value) = flag {
            return Ok(Some(Code { value: value.to_string(), source: Source::Flag }));
        }
        let var = match which {
            Which::Project => &self.project_var,
            Which::Environment => &self.environment_var,
        };
        if let Some(value) = var {
            return Ok(Some(Code { value: value.clone(), source: Source::Variable(which.var()) }));
        }
        let Some(rc) = self.rc()? else {
            return Ok(None);
        };
        let value = match which {
            Which::Project => &rc.doc.project_code,
            Which::Environment => &rc.doc.environment_code,
        };
        Ok(value.as_ref().map(|value| Code { value: value.clone(), source: Source::File(rc.path.clone()) }))
    }

    /// The editor `.opschainrc` names (`editor`), if it is read and names one.
    pub fn editor(&self) -> Result<Option<String>, RcError> {
        Ok(self.rc()?.and_then(|rc| rc.doc.editor.clone()))
    }

    /// The string value of `key` (one of OpsChain's API client keys, e.g. `apiBaseUrl`) in the
    /// `.opschainrc` in use, when it is set and not empty: what [`crate::remote::config`] reads.
    pub fn setting(&self, key: &str) -> Result<Option<String>, RcError> {
        Ok(self.rc()?.and_then(|rc| rc.doc.other.get(key)).and_then(|v| v.as_str()).filter(|v| !v.is_empty()).map(str::to_string))
    }

    /// What to tell the user about the `.opschainrc` in use: its keys this controller does not
    /// use yet ([`NOT_YET_USED`]) and those it does not know. Empty without a file.
    pub fn notes(&self) -> Result<Vec<String>, RcError> {
        let Some(rc) = self.rc()? else {
            return Ok(Vec::new());
        };
        let mut keys: Vec<&String> = rc.doc.other.keys().collect();
        keys.sort();
        let (later, unknown): (Vec<&String>, Vec<&String>) = keys.into_iter().partition(|k| NOT_YET_USED.contains(&k.as_str()));
        let mut notes = Vec::new();
        let list = |keys: Vec<&String>| keys.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ");
        if !later.is_empty() {
            notes.push(format!("{}: {} not used yet (OpsChain's API client settings: this controller keeps its state locally)", rc.path.display(), list(later)));
        }
        if !unknown.is_empty() {
            notes.push(format!("{}: unknown key(s) {} ignored", rc.path.display(), list(unknown)));
        }
        Ok(notes)
    }

    /// The `.opschainrc` in use, if any: the working directory's, else the home directory's.
    pub fn rc_path(&self) -> Option<PathBuf> {
        [&self.cwd, &self.home].into_iter().flatten().map(|dir| dir.join(RC_FILE)).find(|path| path.exists())
    }

    fn rc(&self) -> Result<Option<&RcFile>, RcError> {
        if let Some(rc) = self.rc.get() {
            return Ok(rc.as_ref());
        }
        let rc = match self.rc_path() {
            Some(path) => Some(read(&path)?),
            None => None,
        };
        Ok(self.rc.get_or_init(|| rc).as_ref())
    }
}

fn read(path: &Path) -> Result<RcFile, RcError> {
    let bytes = json::read_bytes(path, RC_LIMIT).map_err(|source| RcError::File { source })?;
    let text = String::from_utf8_lossy(&bytes);
    let doc = parse(path, &text).map_err(|source| RcError::File { source })?;
    Ok(RcFile { path: path.to_path_buf(), doc })
}

/// Reads `.opschainrc` as OpsChain's CLI does: JSON, or INI (`key = value` lines, `[section]`
/// headers ignored); in either, a line whose first character (after blanks) is `;` or `#` is a
/// comment. JSON is told by its first character, `{`.
fn parse(path: &Path, text: &str) -> Result<RcDoc, JsonError> {
    let is_comment = |line: &str| matches!(line.trim_start().chars().next(), Some(';' | '#'));
    // Comment lines become empty lines, so that an error's line number is the file's.
    let uncommented: String = text.lines().map(|l| if is_comment(l) { "" } else { l }).collect::<Vec<_>>().join("\n");
    if uncommented.trim_start().starts_with('{') {
        return json::parse(path, uncommented.as_bytes());
    }
    let mut map = serde_json::Map::new();
    for (n, line) in uncommented.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (line.starts_with('[') && line.ends_with(']')) {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            let message = format!("{line:?} is neither JSON, `key = value`, a `[section]` nor a `;` comment");
            return Err(JsonError::Invalid { path: path.to_path_buf(), pointer: String::new(), message, line: n + 1, column: 1 });
        };
        let value = value.trim();
        let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
        map.insert(key.trim().to_string(), serde_json::Value::String(value.to_string()));
    }
    let bytes = serde_json::to_vec(&map).unwrap_or_default();
    json::parse(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) {
        std::fs::write(dir.join(RC_FILE), text).unwrap();
    }

    #[test]
    fn flag_then_variable_then_the_working_directory_file_then_the_home_file() {
        let (cwd, home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write(home.path(), r#"{"projectCode": "home-p", "environmentCode": "home-e", "apiBaseUrl": "http://x"}"#);
        let d = |var: Option<&str>| Defaults::new(Some(cwd.path().into()), Some(home.path().into()), var.map(String::from), None);

        let code = d(Some("var-p")).resolve(Which::Project, Some("flag-p")).unwrap().unwrap();
        assert_eq!((code.value.as_str(), code.source), ("flag-p", Source::Flag));
        let code = d(Some("var-p")).resolve(Which::Project, None).unwrap().unwrap();
        assert_eq!((code.value.as_str(), code.source), ("var-p", Source::Variable(PROJECT_VAR)));
        let code = d(Some("")).resolve(Which::Project, None).unwrap().unwrap();
        assert_eq!((code.value.as_str(), code.source), ("home-p", Source::File(home.path().join(RC_FILE))));

        // The working directory's file is used alone, even when it lacks a key the home one has.
        write(cwd.path(), r#"{"projectCode": "cwd-p"}"#);
        let defaults = d(None);
        let code = defaults.resolve(Which::Project, None).unwrap().unwrap();
        assert_eq!((code.value.as_str(), code.source), ("cwd-p", Source::File(cwd.path().join(RC_FILE))));
        assert_eq!(defaults.resolve(Which::Environment, None).unwrap(), None);
    }

    #[test]
    fn a_bad_file_is_an_error_naming_it_and_the_key_but_only_when_it_is_needed() {
        let cwd = tempfile::tempdir().unwrap();
        write(cwd.path(), r#"{"projectCode": 7}"#);
        let defaults = Defaults::new(Some(cwd.path().into()), None, None, None);
        assert_eq!(defaults.resolve(Which::Project, Some("p")).unwrap().unwrap().value, "p");
        let err = defaults.resolve(Which::Project, None).unwrap_err();
        let RcError::File { source } = &err;
        let text = source.to_string();
        assert!(text.contains(".opschainrc") && text.contains("/projectCode"), "{text}");

        write(cwd.path(), r#"{"environmentCode": ""}"#);
        let defaults = Defaults::new(Some(cwd.path().into()), None, None, None);
        let err = defaults.resolve(Which::Environment, None).unwrap_err();
        let RcError::File { source } = &err;
        assert!(source.to_string().contains("empty code"), "{source}");

        write(cwd.path(), "not json");
        let defaults = Defaults::new(Some(cwd.path().into()), None, None, None);
        assert!(defaults.resolve(Which::Environment, None).is_err());
    }

    #[test]
    fn opschains_example_file_in_ini_and_json_with_comments_is_read() {
        let cwd = tempfile::tempdir().unwrap();
        let ini = "; OpsChain CLI configuration\n[opschain]\napiBaseUrl = http://localhost:3000\nusername = opschain\npassword = \"secret\"\n# passwordCommand = pass show opschain\nrequestTimeout = 30000\neditor = nano\nprojectCode = web\n";
        write(cwd.path(), ini);
        let defaults = Defaults::new(Some(cwd.path().into()), None, None, None);
        assert_eq!(defaults.resolve(Which::Project, None).unwrap().unwrap().value, "web");
        assert_eq!(defaults.editor().unwrap().as_deref(), Some("nano"));
        let notes = defaults.notes().unwrap();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("apiBaseUrl, password, requestTimeout, username not used yet"), "{notes:?}");

        write(
            cwd.path(),
            "; comments\n{\n  ; the server\n  \"apiBaseUrl\": \"http://localhost:3000\",\n  \"requestTimeout\": 30000,\n  \"environmentCode\": \"dev\", \"colour\": 1\n}\n",
        );
        let defaults = Defaults::new(Some(cwd.path().into()), None, None, None);
        assert_eq!(defaults.resolve(Which::Environment, None).unwrap().unwrap().value, "dev");
        assert!(defaults.notes().unwrap()[1].contains("unknown key(s) colour"), "{:?}", defaults.notes());
    }

    #[test]
    fn no_file_and_no_variable_give_no_code() {
        let cwd = tempfile::tempdir().unwrap();
        let defaults = Defaults::new(Some(cwd.path().into()), None, None, None);
        assert_eq!(defaults.resolve(Which::Project, None).unwrap(), None);
        assert_eq!(defaults.rc_path(), None);
    }
}
