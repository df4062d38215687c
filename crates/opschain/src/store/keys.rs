//! The database's key: checked when the store is opened, every value encrypted when a database
//! from before encryption is opened, and key rotation (see `seal` for the cipher).
//!
//! `store_meta` keeps `key_check`, a known value sealed under the key. Its absence marks a
//! database whose values are not sealed yet (new, or from before encryption): opening it seals
//! them all and records the check, in one transaction.

use std::path::Path;

use rusqlite::types::Value as SqlValue;
use rusqlite::{params, Connection, OptionalExtension};

use super::seal::{install_key_file, properties_aad, secret_set_aad, Seal, SealError};
use super::{q, Store, StoreError};

/// Checks the key file `key_file` against the database, in its own IMMEDIATE transaction: a
/// database with a key check must open under it ([`SealError::WrongKey`], or
/// [`SealError::MissingKey`] without creating the file); one without gets its values sealed
/// under the key file's key (made when missing) and the check. Returns the key.
pub(super) fn seal_database(conn: &Connection, key_file: &Path) -> Result<Seal, StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE").map_err(q("begin key check"))?;
    let result = (|| {
        let check: Option<Vec<u8>> = conn.query_row("SELECT value FROM store_meta WHERE name = 'key_check'", [], |r| r.get(0)).optional().map_err(q("read key check"))?;
        match check {
            Some(check) => {
                let seal = Seal::load(key_file)?;
                seal.verify(&check)?;
                Ok(seal)
            }
            None => {
                let seal = Seal::load_or_create(key_file)?;
                reseal(conn, None, &seal)?;
                conn.execute("INSERT INTO store_meta (name, value) VALUES ('key_check', ?1)", [seal.key_check()]).map_err(q("store key check"))?;
                Ok(seal)
            }
        }
    })();
    match result {
        Ok(seal) => {
            conn.execute_batch("COMMIT").map_err(q("commit key check"))?;
            Ok(seal)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Re-seals every sealed value of the database under `to`: each sealed one opened under `from`,
/// each one still in clear (text) taken as it is. Returns how many values were sealed.
fn reseal(conn: &Connection, from: Option<&Seal>, to: &Seal) -> Result<usize, StoreError> {
    let open = |aad: &str, value: SqlValue| -> Result<Option<Vec<u8>>, StoreError> {
        match (value, from) {
            (SqlValue::Null, _) => Ok(None),
            (SqlValue::Text(text), _) => Ok(Some(text.into_bytes())),
            (SqlValue::Blob(sealed), Some(from)) => Ok(Some(from.open(aad, &sealed)?)),
            (_, _) => Err(SealError::Damaged { what: aad.to_string() }.into()),
        }
    };
    let mut sealed = 0;
    let ids: Vec<i64> =
        conn.prepare("SELECT id FROM properties ORDER BY id").and_then(|mut s| s.query_map([], |r| r.get(0))?.collect()).map_err(q("list properties to encrypt"))?;
    for id in ids {
        let (level, owner, version, json, patch): (String, i64, i64, SqlValue, SqlValue) = conn
            .query_row("SELECT level, owner_id, version, json, patch FROM properties WHERE id = ?1", [id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .map_err(q("read properties to encrypt"))?;
        let json_aad = properties_aad(&level, owner, version, "json");
        let patch_aad = properties_aad(&level, owner, version, "patch");
        let json = open(&json_aad, json)?.map(|plain| to.seal(&json_aad, &plain));
        let patch = open(&patch_aad, patch)?.map(|plain| to.seal(&patch_aad, &plain));
        sealed += usize::from(json.is_some()) + usize::from(patch.is_some());
        conn.execute("UPDATE properties SET json = ?2, patch = ?3 WHERE id = ?1", params![id, json, patch]).map_err(q("store encrypted properties"))?;
    }
    let names: Vec<String> =
        conn.prepare("SELECT name FROM secret_sets ORDER BY name").and_then(|mut s| s.query_map([], |r| r.get(0))?.collect()).map_err(q("list secret sets to encrypt"))?;
    for name in names {
        let aad = secret_set_aad(&name);
        let json: SqlValue = conn.query_row("SELECT json FROM secret_sets WHERE name = ?1", [&name], |r| r.get(0)).map_err(q("read secret set to encrypt"))?;
        if let Some(plain) = open(&aad, json)? {
            conn.execute("UPDATE secret_sets SET json = ?2 WHERE name = ?1", params![name, to.seal(&aad, &plain)]).map_err(q("store encrypted secret set"))?;
            sealed += 1;
        }
    }
    Ok(sealed)
}

impl Store {
    /// Re-encrypts every value of the database under the key of `new_key_file` (made, `0600`,
    /// when missing) in one transaction, then installs that key in the store's key file (replaced
    /// atomically; `new_key_file` is left as it is, so the key is never only in the database's
    /// past). Returns how many values were re-encrypted. Every other process using the database
    /// must be stopped first: one still running keeps sealing with the old key. The store is
    /// closed by it (its key is no longer the database's).
    pub fn rotate_key(self, new_key_file: &Path) -> Result<usize, StoreError> {
        let new = Seal::load_or_create(new_key_file)?;
        let old_file = self.seal.key_file().to_path_buf();
        if std::fs::canonicalize(new_key_file).ok() == std::fs::canonicalize(&old_file).ok() {
            return Err(SealError::SameKey { path: old_file }.into());
        }
        let old = std::sync::Arc::clone(&self.seal);
        let count = self.write(move |tx| {
            let count = reseal(tx, Some(&old), &new)?;
            tx.execute("UPDATE store_meta SET value = ?1 WHERE name = 'key_check'", [new.key_check()]).map_err(q("store key check"))?;
            Ok(count)
        })?;
        drop(self);
        install_key_file(new_key_file, &old_file)?;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{end, obj, setup};
    use super::super::{StoreOptions, DB_FILE, KEY_FILE, SCHEMA};
    use super::*;
    use crate::store::Level;
    use serde_json::json;

    /// Whether any file of `dir` holds `needle`.
    fn in_clear(dir: &Path, needle: &str) -> bool {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_file())
            .any(|e| std::fs::read(e.path()).unwrap().windows(needle.len()).any(|w| w == needle.as_bytes()))
    }

    #[test]
    fn a_database_from_before_encryption_is_encrypted_when_opened_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        {
            // The schema as it was: no store_meta, every value in clear.
            let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
            conn.execute_batch(&SCHEMA[..SCHEMA.find("-- What the store keeps about itself").unwrap()]).unwrap();
            conn.execute_batch(
                "INSERT INTO projects (code) VALUES ('p');
                 INSERT INTO properties (level, owner_id, version, json) VALUES ('project', 1, 0, '{}'), ('project', 1, 1, '{\"a\":\"clear-4f2a\"}');
                 INSERT INTO properties (level, owner_id, version, patch) VALUES ('project', 1, 2, '[{\"op\":\"add\",\"path\":\"/b\",\"value\":\"clear-77e0\"}]');
                 INSERT INTO secret_sets (name, json) VALUES ('s', '{\"T\":\"clear-secret-91\"}');",
            )
            .unwrap();
        }
        assert!(in_clear(dir.path(), "clear-secret-91"), "the control: the old database holds it in clear");
        let store = Store::open(dir.path()).unwrap();
        let p = store.project_id("p").unwrap();
        assert_eq!(store.properties(Level::Project, p).unwrap().json, obj(json!({"a": "clear-4f2a", "b": "clear-77e0"})));
        assert_eq!(store.properties_version(Level::Project, p, 1).unwrap(), obj(json!({"a": "clear-4f2a"})));
        assert_eq!(store.secrets("s").unwrap().unwrap(), obj(json!({"T": "clear-secret-91"})));
        drop(store);
        // Checkpointed and vacuumed, no freed page keeps the old text.
        Connection::open(dir.path().join(DB_FILE)).unwrap().execute_batch("PRAGMA wal_checkpoint(TRUNCATE); VACUUM;").unwrap();
        for value in ["clear-4f2a", "clear-77e0", "clear-secret-91"] {
            assert!(!in_clear(dir.path(), value), "{value} still in clear");
        }
        // Opened again: nothing left to encrypt, every value reads.
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.properties_history(Level::Project, p).unwrap().len(), 3);
        assert_eq!(store.secrets("opschain-build-env").unwrap().unwrap(), obj(json!({})));
    }

    #[test]
    fn a_wrong_or_missing_key_is_refused_and_rotation_re_encrypts_everything() {
        let (dir, store, p, e, c) = setup();
        store.set_secrets("s", &obj(json!({"T": "secret-1"}))).unwrap();
        store.set_properties(Level::Environment, e, &obj(json!({"a": 1}))).unwrap();
        let root = store.steps(c).unwrap()[0].id;
        store.start_step(root, p, e).unwrap();
        store.finish_step(root, p, e, end(json!([{"op": "add", "path": "/k", "value": "v"}]), json!([{"op": "add", "path": "/b", "value": 2}]), &[])).unwrap();
        drop(store);

        let other = dir.path().join("other.key");
        let wrong = Store::open_with(dir.path(), &StoreOptions { key_file: Some(other.clone()) }).err().unwrap();
        assert!(matches!(wrong, StoreError::Seal(SealError::MissingKey { .. })), "{wrong}");
        assert!(!other.exists(), "a missing key file is not made for an encrypted database");
        Seal::load_or_create(&other).unwrap();
        let wrong = Store::open_with(dir.path(), &StoreOptions { key_file: Some(other.clone()) }).err().unwrap();
        assert!(matches!(wrong, StoreError::Seal(SealError::WrongKey { .. })), "{wrong}");

        let old = std::fs::read(dir.path().join(KEY_FILE)).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let same = Store::open(dir.path()).unwrap().rotate_key(&dir.path().join(KEY_FILE)).unwrap_err();
        assert!(matches!(same, StoreError::Seal(SealError::SameKey { .. })), "{same}");
        // Project versions 0 and 1, environment versions 0 to 2, secret sets s and opschain-build-env.
        assert_eq!(store.rotate_key(&other).unwrap(), 7);
        assert_eq!(std::fs::read(dir.path().join(KEY_FILE)).unwrap(), std::fs::read(&other).unwrap());
        assert_ne!(std::fs::read(dir.path().join(KEY_FILE)).unwrap(), old);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.properties(Level::Project, p).unwrap().json, obj(json!({"k": "v"})));
        assert_eq!(store.properties(Level::Environment, e).unwrap().json, obj(json!({"a": 1, "b": 2})));
        assert_eq!(store.properties_history(Level::Environment, e).unwrap().len(), 3);
        assert_eq!(store.secrets("s").unwrap().unwrap(), obj(json!({"T": "secret-1"})));
        let old_file = dir.path().join("old.key");
        std::fs::write(&old_file, &old).unwrap();
        let refused = Store::open_with(dir.path(), &StoreOptions { key_file: Some(old_file) }).err().unwrap();
        assert!(matches!(refused, StoreError::Seal(SealError::WrongKey { .. })), "{refused}");
    }
}
