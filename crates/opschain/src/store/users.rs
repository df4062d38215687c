//! The server's users and their sessions: a user's name, role and password hash (the hash is made
//! and checked by [`crate::server::passwords`]; the store never sees a password), and
//! the sessions a login opens (kept by the digest of their token, never the token itself).

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{params, OptionalExtension};

use super::{q, Store, StoreError};

/// What a user may do: a `viewer` reads; an `operator` also creates and runs changes and edits
/// projects, environments, properties and secret sets; an `admin` may do everything an operator
/// may (the role is kept apart for the user management a later page brings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads only.
    Viewer,
    /// Reads and writes.
    Operator,
    /// Reads and writes, and manages users.
    Admin,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    /// The stored (and command-line) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// The role named `name`, if any.
    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// Whether the role may change anything (every role but `viewer`).
    pub fn can_write(self) -> bool {
        self >= Role::Operator
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl ToSql for Role {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(ValueRef::Text(self.as_str().as_bytes())))
    }
}

impl FromSql for Role {
    /// Reads a stored name; the schema's CHECK allows no other.
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let name = value.as_str()?;
        Role::from_name(name).ok_or_else(|| FromSqlError::Other(format!("unknown role {name:?}").into()))
    }
}

/// A stored user.
#[derive(Debug, Clone)]
pub struct UserRow {
    /// The user id.
    pub id: i64,
    /// The login name.
    pub name: String,
    /// What the user may do.
    pub role: Role,
    /// The password's hash, a PHC string (`$argon2id$...`).
    pub password_hash: String,
    /// When the user was added.
    pub created_at: String,
    /// When the password or role last changed.
    pub updated_at: String,
}

/// The columns [`user_row`] reads.
const USER_COLUMNS: &str = "id, name, role, password_hash, created_at, updated_at";

/// Reads a [`USER_COLUMNS`] row.
fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserRow> {
    Ok(UserRow { id: r.get(0)?, name: r.get(1)?, role: r.get(2)?, password_hash: r.get(3)?, created_at: r.get(4)?, updated_at: r.get(5)? })
}

impl Store {
    /// Adds a user; fails with [`StoreError::Exists`] when the name is taken.
    pub fn add_user(&self, name: &str, role: Role, password_hash: &str) -> Result<i64, StoreError> {
        let (name, hash) = (name.to_string(), password_hash.to_string());
        self.write(move |tx| {
            let taken: bool = tx.query_row("SELECT count(*) FROM users WHERE name = ?1", [&name], |r| r.get(0)).map_err(q("find user"))?;
            if taken {
                return Err(StoreError::Exists(format!("user {name:?}")));
            }
            tx.execute("INSERT INTO users (name, role, password_hash) VALUES (?1, ?2, ?3)", params![name, role, hash]).map_err(q("add user"))?;
            Ok(tx.last_insert_rowid())
        })
    }

    /// Replaces a user's password hash (and, when given, role); their sessions end.
    pub fn set_user_password(&self, name: &str, password_hash: &str, role: Option<Role>) -> Result<(), StoreError> {
        let (name, hash) = (name.to_string(), password_hash.to_string());
        self.write(move |tx| {
            let changed = tx
                .execute(
                    "UPDATE users SET password_hash = ?2, role = COALESCE(?3, role), updated_at = strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE name = ?1",
                    params![name, hash, role],
                )
                .map_err(q("set password"))?;
            if changed == 0 {
                return Err(StoreError::NotFound(format!("user {name:?}")));
            }
            tx.execute("DELETE FROM sessions WHERE user_id = (SELECT id FROM users WHERE name = ?1)", [&name]).map_err(q("end sessions"))?;
            Ok(())
        })
    }

    /// Removes a user and their sessions.
    pub fn remove_user(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        self.write(move |tx| {
            tx.execute("DELETE FROM sessions WHERE user_id = (SELECT id FROM users WHERE name = ?1)", [&name]).map_err(q("end sessions"))?;
            if tx.execute("DELETE FROM users WHERE name = ?1", [&name]).map_err(q("remove user"))? == 0 {
                return Err(StoreError::NotFound(format!("user {name:?}")));
            }
            Ok(())
        })
    }

    /// Every user, by name.
    pub fn users(&self) -> Result<Vec<UserRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY name")).map_err(q("list users"))?;
        let rows = stmt.query_map([], user_row).map_err(q("list users"))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(q("list users"))
    }

    /// The user named `name`, if any.
    pub fn user(&self, name: &str) -> Result<Option<UserRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE name = ?1")).map_err(q("find user"))?;
        stmt.query_row([name], user_row).optional().map_err(q("find user"))
    }

    /// Opens a session for `user_id`, kept by `token_digest` (the digest of its token), ending
    /// after `ttl_secs`. Sessions already past their end are removed on the way.
    pub fn open_session(&self, user_id: i64, token_digest: &str, ttl_secs: u64) -> Result<(), StoreError> {
        let digest = token_digest.to_string();
        let ttl = format!("+{ttl_secs} seconds");
        self.write(move |tx| {
            tx.execute("DELETE FROM sessions WHERE expires_at < strftime('%Y-%m-%dT%H:%M:%fZ','now')", []).map_err(q("expire sessions"))?;
            tx.execute("INSERT INTO sessions (token_digest, user_id, expires_at) VALUES (?1, ?2, strftime('%Y-%m-%dT%H:%M:%fZ','now', ?3))", params![digest, user_id, ttl])
                .map_err(q("open session"))?;
            Ok(())
        })
    }

    /// The user of the session kept by `token_digest`, unless it ended or does not exist.
    pub fn session_user(&self, token_digest: &str) -> Result<Option<UserRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {} FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_digest = ?1 AND s.expires_at >= strftime('%Y-%m-%dT%H:%M:%fZ','now')",
                USER_COLUMNS.split(", ").map(|c| format!("u.{c}")).collect::<Vec<_>>().join(", ")
            ))
            .map_err(q("find session"))?;
        stmt.query_row([token_digest], user_row).optional().map_err(q("find session"))
    }

    /// Ends the session kept by `token_digest` (nothing when there is none).
    pub fn close_session(&self, token_digest: &str) -> Result<(), StoreError> {
        let digest = token_digest.to_string();
        self.write(move |tx| {
            tx.execute("DELETE FROM sessions WHERE token_digest = ?1", [&digest]).map_err(q("close session"))?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::setup;
    use super::*;

    #[test]
    fn users_are_added_once_changed_and_removed_with_their_sessions() {
        let (_dir, store, ..) = setup();
        let id = store.add_user("ann", Role::Viewer, "$argon2id$x").unwrap();
        assert!(matches!(store.add_user("ann", Role::Admin, "h"), Err(StoreError::Exists(_))));
        store.open_session(id, "digest", 60).unwrap();
        assert_eq!(store.session_user("digest").unwrap().unwrap().name, "ann");
        store.set_user_password("ann", "$argon2id$y", Some(Role::Operator)).unwrap();
        let ann = store.user("ann").unwrap().unwrap();
        assert_eq!((ann.role, ann.password_hash.as_str()), (Role::Operator, "$argon2id$y"));
        assert!(store.session_user("digest").unwrap().is_none(), "a new password ends the sessions");
        store.open_session(id, "again", 0).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(store.session_user("again").unwrap().is_none(), "a session past its end is refused");
        store.remove_user("ann").unwrap();
        assert!(store.user("ann").unwrap().is_none());
        assert!(matches!(store.remove_user("ann"), Err(StoreError::NotFound(_))));
    }
}
