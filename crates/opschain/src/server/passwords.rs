//! Passwords: hashed with Argon2id (memory-hard; the argon2 crate's default parameters, OWASP's
//! minimum: 19 MiB, 2 passes), checked in constant time, and the checks bounded and slowed down:
//! * at most [`CONCURRENT_HASHES`] hashes run at once, so a burst of logins cannot take the
//!   server's memory (19 MiB each) or every CPU from the workers;
//! * a password verified once is remembered for the user by a keyed digest (BLAKE2b, keyed by a
//!   random key of this process; never the password itself), so a client sending HTTP Basic with
//!   every request costs one hash, not one per request; a new password or role forgets it (the
//!   user's row is read again when it is older than [`USER_ROW_TTL`]);
//! * a failed check answers only after a delay that doubles with each failure in a row for that
//!   name (from [`Passwords::failure_delay`], up to 8 times it), and an unknown user costs the
//!   same hash as a known one, so neither guessing nor timing tells which names exist.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use blake2::digest::{consts::U32, Mac};
use subtle::ConstantTimeEq;

use crate::store::{Store, StoreError, UserRow};

/// How many password hashes run at once (2).
pub const CONCURRENT_HASHES: usize = 2;

/// How long a verified user's row is trusted without reading it again (2 s): a removed user, a
/// new password or role takes effect within it, and a client sending HTTP Basic with every
/// request costs no read of the store for each.
pub const USER_ROW_TTL: Duration = Duration::from_secs(2);

/// Why a password could not be hashed or checked.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// Argon2 refused (it does not for the default parameters and a password of any length).
    #[error("cannot hash the password: {0}")]
    Hash(String),
    /// The store failed while the user was looked up.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blocking task that checked the password failed.
    #[error("the password check did not finish")]
    Task,
}

/// Hashes `password` with Argon2id and a fresh random salt: a PHC string (`$argon2id$v=19$...`).
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Whether `password` matches the PHC string `hash` (constant time; false for a malformed hash).
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

/// What [`Passwords::check`] found.
#[derive(Debug, Clone)]
pub enum Checked {
    /// The password is the user's, as verified before (no hash was run).
    Remembered(UserRow),
    /// The password is the user's, verified now (a login).
    Verified(UserRow),
    /// No such user, or not their password.
    Refused,
}

/// A keyed digest.
type Digest = [u8; 32];

/// Checks users' passwords for the server (see the module documentation).
pub struct Passwords {
    /// The key of the remembered digests, random for this process.
    key: [u8; 32],
    /// Per user name, the digest of the password last verified (with its hash and role), the
    /// user's row as it was then, and when the row was last read.
    verified: Mutex<HashMap<String, (Digest, UserRow, Instant)>>,
    /// Per user name, a lock held while a password of theirs is hashed: requests that arrive
    /// together with the same credentials (a client's first burst) cost one hash, not one each.
    checking: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Per user name, the failures in a row.
    failures: Mutex<HashMap<String, u32>>,
    /// Bounds the hashes running at once.
    hashing: tokio::sync::Semaphore,
    /// A hash of no one's password, checked for an unknown user.
    decoy: String,
    /// The delay after a first failure.
    failure_delay: Duration,
}

impl Passwords {
    /// A checker whose first failure for a name is answered after `failure_delay`.
    pub fn new(failure_delay: Duration) -> Result<Passwords, PasswordError> {
        let mut key = [0; 32];
        OsRng.fill_bytes(&mut key);
        let mut decoy = [0; 16];
        OsRng.fill_bytes(&mut decoy);
        let decoy = hash_password(&String::from_utf8_lossy(&decoy))?;
        Ok(Passwords {
            key,
            verified: Mutex::default(),
            checking: Mutex::default(),
            failures: Mutex::default(),
            hashing: tokio::sync::Semaphore::new(CONCURRENT_HASHES),
            decoy,
            failure_delay,
        })
    }

    /// The delay after a first failure (doubling with each failure in a row, up to 8 times it).
    pub fn failure_delay(&self) -> Duration {
        self.failure_delay
    }

    /// The keyed digest of what a verification proved: this name, this password, against this
    /// stored hash and role (so a new password or role is verified anew).
    fn digest(&self, user: &UserRow, password: &str) -> Digest {
        let mut mac = blake2::Blake2bMac::<U32>::new_from_slice(&self.key).expect("a 32-byte key fits BLAKE2b");
        for part in [user.name.as_bytes(), password.as_bytes(), user.password_hash.as_bytes(), user.role.as_str().as_bytes()] {
            mac.update(&(part.len() as u64).to_le_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// `user`, when `password` was verified as theirs before (their row read afresh: the row is
    /// trusted again for [`USER_ROW_TTL`]).
    fn remembered(&self, user: Option<&UserRow>, password: &str) -> Option<UserRow> {
        let user = user?;
        let digest = self.digest(user, password);
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        let entry = verified.get_mut(&user.name).filter(|(d, ..)| bool::from(d.ct_eq(&digest)))?;
        *entry = (digest, user.clone(), Instant::now());
        Some(user.clone())
    }

    /// The user `name`, when `password` was verified as theirs and their row was read less than
    /// [`USER_ROW_TTL`] ago.
    fn fresh(&self, name: &str, password: &str) -> Option<UserRow> {
        let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        let (digest, user, read) = verified.get(name)?;
        let matches = bool::from(digest.ct_eq(&self.digest(user, password)));
        (matches && read.elapsed() < USER_ROW_TTL).then(|| user.clone())
    }

    /// Whether `password` is user `name`'s: [`Checked::Refused`] (after the failure delay) when
    /// the user does not exist or the password is wrong.
    pub async fn check(&self, store: &Arc<Store>, name: &str, password: &str) -> Result<Checked, PasswordError> {
        if let Some(user) = self.fresh(name, password) {
            return Ok(Checked::Remembered(user));
        }
        let lookup = Arc::clone(store);
        let owned = name.to_string();
        let user = tokio::task::spawn_blocking(move || lookup.user(&owned)).await.map_err(|_| PasswordError::Task)??;
        if let Some(user) = self.remembered(user.as_ref(), password) {
            return Ok(Checked::Remembered(user));
        }
        let lock = {
            let mut checking = self.checking.lock().unwrap_or_else(|e| e.into_inner());
            if checking.len() > 10_000 {
                checking.retain(|_, l| Arc::strong_count(l) > 1);
            }
            Arc::clone(checking.entry(name.to_string()).or_default())
        };
        let _checking = lock.lock().await;
        // Verified by the request this one waited for.
        if let Some(user) = self.remembered(user.as_ref(), password) {
            return Ok(Checked::Remembered(user));
        }
        let hash = user.as_ref().map_or_else(|| self.decoy.clone(), |u| u.password_hash.clone());
        let given = password.to_string();
        let matched = {
            let _permit = self.hashing.acquire().await.map_err(|_| PasswordError::Task)?;
            tokio::task::spawn_blocking(move || verify_password(&hash, &given)).await.map_err(|_| PasswordError::Task)?
        };
        match user {
            Some(user) if matched => {
                self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
                self.verified.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), (self.digest(&user, password), user.clone(), Instant::now()));
                Ok(Checked::Verified(user))
            }
            _ => {
                let failures = {
                    let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
                    // Bounded: a flood of made-up names cannot grow the map without end.
                    if failures.len() > 10_000 {
                        failures.clear();
                    }
                    let n = failures.entry(name.to_string()).or_insert(0);
                    *n = n.saturating_add(1);
                    *n
                };
                self.verified.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
                tokio::time::sleep(self.failure_delay * (1 << (failures - 1).min(3))).await;
                Ok(Checked::Refused)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password(&hash, "correct horse"));
        assert!(!verify_password(&hash, "correct horsE"));
        assert!(!verify_password("not a hash", "correct horse"));
        assert_ne!(hash, hash_password("correct horse").unwrap(), "each hash has its own salt");
    }
}
