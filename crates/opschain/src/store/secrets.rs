//! Secret sets: named JSON objects of secret values, each stored encrypted (see `seal`).

use rusqlite::{params, OptionalExtension};
use serde_json::{Map, Value};

use super::seal::secret_set_aad;
use super::{json_of, q, Store, StoreError};

impl Store {
    /// Creates or replaces a secret set (`{"NAME": "value"}`).
    pub fn set_secrets(&self, name: &str, secrets: &Map<String, Value>) -> Result<(), StoreError> {
        let json = self.seal.seal(&secret_set_aad(name), Value::Object(secrets.clone()).to_string().as_bytes());
        let name = name.to_string();
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO secret_sets (name, json) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET json = excluded.json, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ','now')",
                params![name, json],
            )
            .map_err(q("store secret set"))?;
            Ok(())
        })
    }

    /// A secret set, or `None` when it does not exist.
    pub fn secrets(&self, name: &str) -> Result<Option<Map<String, Value>>, StoreError> {
        let sealed: Option<Vec<u8>> =
            self.conn().query_row("SELECT json FROM secret_sets WHERE name = ?1", [name], |r| r.get(0)).optional().map_err(q("read secret set"))?;
        let Some(sealed) = sealed else { return Ok(None) };
        let json = self.seal.open_text(&secret_set_aad(name), &sealed)?;
        json_of(&json, || format!("secret set {name}")).map(Some)
    }

    /// The names of the secret sets.
    pub fn secret_set_names(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT name FROM secret_sets ORDER BY name").map_err(q("list secret sets"))?;
        let names = stmt.query_map([], |r| r.get(0)).map_err(q("list secret sets"))?.collect::<Result<Vec<String>, _>>().map_err(q("list secret sets"))?;
        Ok(names)
    }
}
