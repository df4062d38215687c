//! What `opschain user` does: add, list, remove users and set their passwords, on the store the
//! server uses (the server sees the change at the user's next request).

use std::io::Read;

use super::passwords::{hash_password, PasswordError};
use crate::store::{Role, Store, StoreError, UserRow};
use opschain_runner::exit::{ExitStatus, Sysexit};

/// The shortest password taken (8 characters).
pub const MIN_PASSWORD_CHARS: usize = 8;

/// The longest password taken (1,024 bytes): enough for any passphrase, and a bound on what a
/// login makes the server hash.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Why a user command failed.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The user name is not one.
    #[error("{0:?} is not a user name: 1 to 64 letters, digits, '.', '-', '_' or '@'")]
    BadName(String),
    /// The password is too short or too long.
    #[error("the password must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_BYTES} bytes long (got {0})")]
    BadPassword(usize),
    /// The password cannot be read from standard input.
    #[error("cannot read the password from standard input")]
    ReadPassword(#[source] std::io::Error),
    /// The store failed (or the user exists, or does not).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The password cannot be hashed.
    #[error(transparent)]
    Hash(#[from] PasswordError),
}

impl AccountError {
    /// The exit status: 67 (no such user) for an unknown user, 65 (data error) for a name or
    /// password that is not one or a user that exists, 74 when standard input cannot be read, 70
    /// when the store fails.
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            AccountError::Store(StoreError::NotFound(_)) => Sysexit::NoUser.into(),
            AccountError::BadName(_) | AccountError::BadPassword(_) | AccountError::Store(StoreError::Exists(_)) => Sysexit::DataErr.into(),
            AccountError::ReadPassword(_) => Sysexit::IoErr.into(),
            _ => Sysexit::Software.into(),
        }
    }
}

/// Checks a user name: 1 to 64 letters, digits, `.`, `-`, `_` or `@` (no `:`, which HTTP Basic
/// cannot carry in a name).
pub fn check_name(name: &str) -> Result<(), AccountError> {
    let ok = !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@'));
    if !ok {
        return Err(AccountError::BadName(name.to_string()));
    }
    Ok(())
}

/// Reads a password from `input`: its first line, without the line end.
pub fn read_password(input: &mut dyn Read) -> Result<String, AccountError> {
    let mut text = String::new();
    input.take(MAX_PASSWORD_BYTES as u64 + 2).read_to_string(&mut text).map_err(AccountError::ReadPassword)?;
    let password = text.lines().next().unwrap_or_default().to_string();
    if password.chars().count() < MIN_PASSWORD_CHARS || password.len() > MAX_PASSWORD_BYTES {
        return Err(AccountError::BadPassword(password.len()));
    }
    Ok(password)
}

/// Adds user `name` with `role` and `password`.
pub fn add(store: &Store, name: &str, role: Role, password: &str) -> Result<(), AccountError> {
    check_name(name)?;
    store.add_user(name, role, &hash_password(password)?)?;
    Ok(())
}

/// Sets user `name`'s password (and role, when given); their sessions end.
pub fn set_password(store: &Store, name: &str, password: &str, role: Option<Role>) -> Result<(), AccountError> {
    store.set_user_password(name, &hash_password(password)?, role)?;
    Ok(())
}

/// Removes user `name`.
pub fn remove(store: &Store, name: &str) -> Result<(), AccountError> {
    Ok(store.remove_user(name)?)
}

/// Every user, by name.
pub fn list(store: &Store) -> Result<Vec<UserRow>, AccountError> {
    Ok(store.users()?)
}
