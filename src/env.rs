//! `opschain.env`: the environment variables the properties declare, and the environment the
//! action runs with.
//!
//! Precedence, lowest first: the agent's own environment, `opschain.env` of the merged properties
//! (so environment over project over repository), the runner secrets, and last the `OPSCHAIN_*`
//! paths and `HOME`, which the agent owns.

use std::ffi::OsString;

use serde_json::{Map, Value};

use crate::json::{push_escaped, PointerError};

/// The size above which OpsChain's docs warn that exec may fail with E2BIG: 64 KiB.
pub const ENV_SIZE_WARNING: usize = 64 << 10;

/// Checks that `name` is a POSIX-portable environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty variable name");
    }
    if name.contains('=') {
        return Err("variable name contains `=`");
    }
    if name.contains('\0') {
        return Err("variable name contains a NUL byte");
    }
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err("variable name is not POSIX-portable ([A-Za-z_][A-Za-z0-9_]*)");
    }
    Ok(())
}

/// Checks a value: it must not hold a NUL byte (exec cannot pass one).
pub fn check_value(value: &str) -> Result<(), &'static str> {
    if value.contains('\0') {
        return Err("value contains a NUL byte");
    }
    Ok(())
}

/// Parses and validates the `opschain.env` object of a properties document, in declaration order.
pub fn parse(properties: &Map<String, Value>) -> Result<Vec<(String, String)>, PointerError> {
    match properties.get("opschain").and_then(|o| o.as_object()).and_then(|o| o.get("env")) {
        Some(env) => parse_object(env, "/opschain/env"),
        None => Ok(Vec::new()),
    }
}

/// Parses and validates an env declaration (an object of `NAME: value`) found at `base`, the JSON
/// pointer errors are reported under; in declaration order.
pub fn parse_object(env: &Value, base: &str) -> Result<Vec<(String, String)>, PointerError> {
    let env = env.as_object().ok_or_else(|| PointerError { pointer: base.into(), message: "expected an object of NAME: value".into() })?;
    env.iter()
        .map(|(name, value)| {
            // The pointer is built only for an error: escaping every name of a valid declaration
            // cost more than checking it.
            let fail = |message: String| {
                let mut pointer = base.to_string();
                pointer.push('/');
                push_escaped(&mut pointer, name);
                PointerError { pointer, message }
            };
            check_name(name).map_err(|m| fail(m.to_string()))?;
            let value = value.as_str().ok_or_else(|| fail(format!("value of {name} must be a string, not {}", kind(value))))?;
            check_value(value).map_err(|m| fail(m.to_string()))?;
            Ok((name.clone(), value.to_string()))
        })
        .collect()
}

/// Validates the runner secrets' names and values (they come from the step context's `secrets`).
pub fn check_secrets<'a>(secrets: impl IntoIterator<Item = (&'a String, &'a String)>) -> Result<(), PointerError> {
    for (name, value) in secrets {
        check_name(name).and_then(|()| check_value(value)).map_err(|m| {
            let mut pointer = "/secrets/".to_string();
            push_escaped(&mut pointer, name);
            PointerError { pointer, message: m.to_string() }
        })?;
    }
    Ok(())
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An environment built up by layers, later layers winning; keeps first-insertion order.
#[derive(Debug, Clone, Default)]
pub struct EnvBuilder {
    vars: Vec<(OsString, OsString)>,
}

impl EnvBuilder {
    /// Starts from the agent's own environment.
    pub fn inherit() -> EnvBuilder {
        EnvBuilder { vars: std::env::vars_os().collect() }
    }

    /// Starts empty.
    pub fn empty() -> EnvBuilder {
        EnvBuilder::default()
    }

    /// Sets `name` to `value`, replacing an earlier value.
    pub fn set(&mut self, name: impl Into<OsString>, value: impl Into<OsString>) -> &mut EnvBuilder {
        let (name, value) = (name.into(), value.into());
        match self.vars.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.vars.push((name, value)),
        }
        self
    }

    /// The bytes exec would need for this environment (`NAME=value\0` each).
    pub fn size(&self) -> usize {
        self.vars.iter().map(|(n, v)| n.len() + v.len() + 2).sum()
    }

    /// The finished environment.
    pub fn build(self) -> Vec<(OsString, OsString)> {
        self.vars
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names() {
        assert!(check_name("A_1").is_ok());
        assert!(check_name("_a").is_ok());
        for bad in ["", "1A", "A-B", "A=B", "A\0", "Ä"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn values_must_be_strings_and_errors_point_at_them() {
        let props = json!({"opschain": {"env": {"A": "1", "B": 2}}});
        let err = parse(props.as_object().unwrap()).unwrap_err();
        assert_eq!(err.pointer, "/opschain/env/B");
        assert!(err.message.contains("a number"));
        let props = json!({"opschain": {"env": {"A=B": "1"}}});
        assert!(parse(props.as_object().unwrap()).unwrap_err().message.contains('='));
    }

    #[test]
    fn builder_layers_later_wins() {
        let mut env = EnvBuilder::empty();
        env.set("A", "1").set("B", "2").set("A", "3");
        assert_eq!(env.build(), vec![("A".into(), "3".into()), ("B".into(), "2".into())]);
    }
}
