//! Where the server is and who the CLI is to it, found as OpsChain's CLI finds them: the API's
//! base URL from `--api-url`, else `opschain_apiBaseUrl`, else the `apiBaseUrl` key of the
//! `.opschainrc` in use (the working directory's, else the home directory's; JSON, or INI's
//! with `;` comments, as [`crate::rc`] reads it); the user from `opschain_username` or `username`; the password from
//! `opschain_password`, `password`, or the first line printed by `passwordCommand` (run with
//! `sh -c`). Without a base URL the CLI works locally, on its own store.

use std::process::Command;

use super::RemoteError;
use crate::rc::Defaults;

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

impl ApiConfig {
    /// The configuration from `flag` (`--api-url`), the process's variables and the
    /// `.opschainrc` `defaults` read; `None` when no base URL is given: the local mode.
    pub fn resolve(flag: Option<&str>, defaults: &Defaults) -> Result<Option<ApiConfig>, RemoteError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let file = |key: &str| defaults.setting(key).map_err(|e| RemoteError::Rc(e.to_string()));
        let base = match flag.map(str::to_string).or_else(|| var(API_URL_VAR)) {
            Some(base) => base,
            None => match file("apiBaseUrl")? {
                Some(base) => base,
                None => return Ok(None),
            },
        };
        let base_url = base.trim_end_matches('/').to_string();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(RemoteError::BadUrl(base_url));
        }
        let username = match var(USERNAME_VAR) {
            Some(user) => Some(user),
            None => file("username")?,
        };
        let password = match var(PASSWORD_VAR) {
            Some(password) => Some(password),
            None => match file("password")? {
                Some(password) => Some(password),
                None => file("passwordCommand")?.map(|command| password_from(&command)).transpose()?,
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
        let defaults = || Defaults::new(Some(dir.path().into()), None, None, None);
        std::fs::write(&rc, "; the server\n{\"apiBaseUrl\": \"http://h:3000/\", \"username\": \"ann\", \"passwordCommand\": \"echo from-command; echo second\"}").unwrap();
        let config = ApiConfig::resolve(None, &defaults()).unwrap().unwrap();
        assert_eq!(config, ApiConfig { base_url: "http://h:3000".into(), username: Some("ann".into()), password: Some("from-command".into()) });
        std::fs::write(&rc, "[opschain]\napiBaseUrl = http://ini:3000\nusername = bob\npassword = pw\n").unwrap();
        let config = ApiConfig::resolve(Some("https://flag"), &defaults()).unwrap().unwrap();
        assert_eq!((config.base_url.as_str(), config.username.as_deref(), config.password.as_deref()), ("https://flag", Some("bob"), Some("pw")));
        std::fs::write(&rc, r#"{"projectCode": "p"}"#).unwrap();
        assert_eq!(ApiConfig::resolve(None, &defaults()).unwrap(), None, "no URL: the local mode");
        assert!(matches!(ApiConfig::resolve(Some("localhost:3000"), &defaults()), Err(RemoteError::BadUrl(_))));
    }
}
