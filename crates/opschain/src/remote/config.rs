//! Where the server is and who the CLI is to it, found as OpsChain's CLI finds them: the API's
//! base URL from `--api-url`, else `opschain_apiBaseUrl`, else the `apiBaseUrl` key of the
//! `.opschainrc` in use (the working directory's, else the home directory's; JSON, or INI's
//! `key = value` lines); the user from `opschain_username` or `username`; the password from
//! `opschain_password`, `password`, or the first line printed by `passwordCommand` (run with
//! `sh -c`). Without a base URL the CLI works locally, on its own store.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Map, Value};

use super::RemoteError;

/// The variable that supplies the API's base URL: `opschain_apiBaseUrl`.
pub const API_URL_VAR: &str = "opschain_apiBaseUrl";
/// The variable that supplies the user name: `opschain_username`.
pub const USERNAME_VAR: &str = "opschain_username";
/// The variable that supplies the password: `opschain_password`.
pub const PASSWORD_VAR: &str = "opschain_password";

/// How the CLI reaches the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// The base URL, without a trailing `/` (e.g. `http://localhost:3000`).
    pub base_url: String,
    /// The user, if any.
    pub username: Option<String>,
    /// The password, if any.
    pub password: Option<String>,
}

/// The settings of an `.opschainrc` that concern the API.
#[derive(Debug, Default)]
struct RcApi {
    api_base_url: Option<String>,
    username: Option<String>,
    password: Option<String>,
    password_command: Option<String>,
}

/// Reads the API's keys of `path` (JSON, else INI-style `key = value` lines).
fn read_rc(path: &Path) -> Result<RcApi, RemoteError> {
    let text = std::fs::read_to_string(path).map_err(|source| RemoteError::Rc { path: path.to_path_buf(), reason: source.to_string() })?;
    let keys: Map<String, Value> = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(RemoteError::Rc { path: path.to_path_buf(), reason: "not a JSON object".into() }),
        Err(_) => text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with(['#', ';', '[']))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), Value::String(v.trim().trim_matches('"').to_string())))
            .collect(),
    };
    let get = |key: &str| keys.get(key).and_then(Value::as_str).filter(|v| !v.is_empty()).map(str::to_string);
    Ok(RcApi { api_base_url: get("apiBaseUrl"), username: get("username"), password: get("password"), password_command: get("passwordCommand") })
}

impl ApiConfig {
    /// The configuration from `flag` (`--api-url`), the process's variables and the
    /// `.opschainrc` at `rc` (the one in use, if any); `None` when no base URL is given: the
    /// local mode.
    pub fn resolve(flag: Option<&str>, rc: Option<PathBuf>) -> Result<Option<ApiConfig>, RemoteError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let file = match &rc {
            Some(path) => read_rc(path)?,
            None => RcApi::default(),
        };
        let Some(base) = flag.map(str::to_string).or_else(|| var(API_URL_VAR)).or(file.api_base_url) else { return Ok(None) };
        let base_url = base.trim_end_matches('/').to_string();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(RemoteError::BadUrl(base_url));
        }
        let username = var(USERNAME_VAR).or(file.username);
        let password = match var(PASSWORD_VAR).or(file.password) {
            Some(password) => Some(password),
            None => match file.password_command {
                Some(command) => Some(password_from(&command)?),
                None => None,
            },
        };
        Ok(Some(ApiConfig { base_url, username, password }))
    }
}

/// The first line `command` prints (run with `sh -c`).
fn password_from(command: &str) -> Result<String, RemoteError> {
    let out = Command::new("/bin/sh").args(["-c", command]).output().map_err(|e| RemoteError::PasswordCommand(e.to_string()))?;
    if !out.status.success() {
        return Err(RemoteError::PasswordCommand(format!("it exited with {}", out.status)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_and_user_come_from_a_json_or_ini_rc_and_the_password_from_its_command() {
        let dir = tempfile::tempdir().unwrap();
        let rc = dir.path().join(".opschainrc");
        std::fs::write(&rc, r#"{"apiBaseUrl": "http://h:3000/", "username": "ann", "passwordCommand": "echo from-command; echo second"}"#).unwrap();
        let config = ApiConfig::resolve(None, Some(rc.clone())).unwrap().unwrap();
        assert_eq!(config, ApiConfig { base_url: "http://h:3000".into(), username: Some("ann".into()), password: Some("from-command".into()) });
        std::fs::write(&rc, "apiBaseUrl = http://ini:3000\nusername = bob\npassword = pw\n").unwrap();
        let config = ApiConfig::resolve(Some("https://flag"), Some(rc.clone())).unwrap().unwrap();
        assert_eq!((config.base_url.as_str(), config.username.as_deref(), config.password.as_deref()), ("https://flag", Some("bob"), Some("pw")));
        std::fs::write(&rc, r#"{"projectCode": "p"}"#).unwrap();
        assert_eq!(ApiConfig::resolve(None, Some(rc)).unwrap(), None, "no URL: the local mode");
        assert!(matches!(ApiConfig::resolve(Some("localhost:3000"), None), Err(RemoteError::BadUrl(_))));
    }
}
