//! Encryption at rest: every properties version (its snapshot and its patch) and every secret set
//! is sealed before it reaches the database, with XChaCha20-Poly1305 under a key kept outside it
//! (the key file), so that a copy of the database (a backup, a dump, a stolen disk) shows no
//! property or secret value.
//!
//! A sealed value is `FORMAT` (one byte), a random 24-byte nonce, then the ciphertext and its
//! 16-byte tag. Each value is bound to the row it belongs to (its *associated data*, e.g.
//! `properties/project/3/17/patch`): a sealed value copied into another row, or another version,
//! does not open. Random nonces are safe with XChaCha20's 192 bits without any counter to keep
//! across processes.
//!
//! The key file holds the 32-byte key in base64 (one line). It is created `0600`, from the
//! operating system's random source, when a database that has never been sealed is opened and the
//! file does not exist; every process of one database must be given the same file. The database
//! records a value sealed under the key (`KEY_CHECK_AAD`), so a wrong key is refused when the
//! store is opened, not when a value is first read.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::private::FILE_MODE;

/// The first byte of every sealed value: the format (1, XChaCha20-Poly1305 with a 24-byte nonce).
pub const FORMAT: u8 = 1;

/// The length of a nonce (24 bytes).
const NONCE_LEN: usize = 24;

/// The file name of the default key file, beside the database in the state directory.
pub const KEY_FILE: &str = "opschain.key";

/// The associated data of the value the database keeps to recognise its key.
pub const KEY_CHECK_AAD: &str = "store_meta/key_check";

/// The plaintext of that value.
pub const KEY_CHECK: &[u8] = b"opschain store key";

/// Why the key could not be had, or a sealed value not opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key file cannot be read.
    #[error("cannot read the key file {}", path.display())]
    ReadKey {
        /// The key file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The key file does not exist, and the database is already sealed under a key.
    #[error(
        "the key file {} does not exist, and the database is encrypted: give the key file its values were encrypted with \
         (--key-file or OPSCHAIN_KEY_FILE)",
        path.display()
    )]
    MissingKey {
        /// The key file.
        path: PathBuf,
    },
    /// The key file cannot be created.
    #[error("cannot create the key file {}", path.display())]
    CreateKey {
        /// The key file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The key file does not hold a key (32 bytes in base64 on one line).
    #[error("the key file {} does not hold a key (32 bytes in base64 on one line)", path.display())]
    KeyFormat {
        /// The key file.
        path: PathBuf,
    },
    /// The database was encrypted under another key than the key file's.
    #[error(
        "the key file {} is not the key this database was encrypted with: give the right one (--key-file or OPSCHAIN_KEY_FILE)",
        path.display()
    )]
    WrongKey {
        /// The key file.
        path: PathBuf,
    },
    /// Key rotation was given the key file the database is already encrypted with.
    #[error("the new key file {} is the current key file: give a new one (a missing file is made with a new key)", path.display())]
    SameKey {
        /// The key file.
        path: PathBuf,
    },
    /// A stored value does not open under the key (damaged, or moved from another row).
    #[error("the stored value of {what} cannot be decrypted: it is damaged or belongs to another row")]
    Damaged {
        /// The row's associated data.
        what: String,
    },
}

/// A key: seals and opens the store's values. Its `Debug` shows the key file, never the key.
pub struct Seal {
    cipher: XChaCha20Poly1305,
    path: PathBuf,
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seal").field("key_file", &self.path).finish_non_exhaustive()
    }
}

impl Seal {
    /// The key of the key file `path`; [`SealError::MissingKey`] when it does not exist.
    pub fn load(path: &Path) -> Result<Seal, SealError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(SealError::MissingKey { path: path.to_path_buf() }),
            Err(source) => return Err(SealError::ReadKey { path: path.to_path_buf(), source }),
        };
        let key = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .ok()
            .filter(|k| k.len() == 32)
            .ok_or_else(|| SealError::KeyFormat { path: path.to_path_buf() })?;
        let cipher = XChaCha20Poly1305::new_from_slice(&key).map_err(|_| SealError::KeyFormat { path: path.to_path_buf() })?;
        Ok(Seal { cipher, path: path.to_path_buf() })
    }

    /// The key of the key file `path`, made (a new random key, `0600`) when the file does not
    /// exist. Two processes making it at once end with one key: the file appears whole (linked
    /// into place from a private temporary file) or not at all, and the loser reads the winner's.
    pub fn load_or_create(path: &Path) -> Result<Seal, SealError> {
        match Seal::load(path) {
            Err(SealError::MissingKey { .. }) => {
                create_key_file(path)?;
                Seal::load(path)
            }
            other => other,
        }
    }

    /// The key file this key was read from.
    pub fn key_file(&self) -> &Path {
        &self.path
    }

    /// `plain` sealed for the row `aad` (see the module documentation for the layout).
    pub fn seal(&self, aad: &str, plain: &[u8]) -> Vec<u8> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self.cipher.encrypt(&nonce, Payload { msg: plain, aad: aad.as_bytes() }).expect("XChaCha20-Poly1305 seals any message that fits in memory");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(FORMAT);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The plaintext of `sealed`, sealed for the row `aad`.
    pub fn open(&self, aad: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let damaged = || SealError::Damaged { what: aad.to_string() };
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != FORMAT {
            return Err(damaged());
        }
        let nonce = XNonce::from_slice(&sealed[1..1 + NONCE_LEN]);
        self.cipher.decrypt(nonce, Payload { msg: &sealed[1 + NONCE_LEN..], aad: aad.as_bytes() }).map_err(|_| damaged())
    }

    /// [`Seal::open`] of a value whose plaintext is UTF-8 text (JSON).
    pub fn open_text(&self, aad: &str, sealed: &[u8]) -> Result<String, SealError> {
        String::from_utf8(self.open(aad, sealed)?).map_err(|_| SealError::Damaged { what: aad.to_string() })
    }

    /// Whether `check` (the database's `KEY_CHECK` value) was sealed under this key.
    pub fn verify(&self, check: &[u8]) -> Result<(), SealError> {
        match self.open(KEY_CHECK_AAD, check) {
            Ok(plain) if plain == KEY_CHECK => Ok(()),
            _ => Err(SealError::WrongKey { path: self.path.clone() }),
        }
    }

    /// A new `KEY_CHECK` value sealed under this key, for the database to keep.
    pub fn key_check(&self) -> Vec<u8> {
        self.seal(KEY_CHECK_AAD, KEY_CHECK)
    }
}

/// The associated data of a properties version's snapshot (`json`) or patch (`patch`).
pub fn properties_aad(level: &str, owner: i64, version: i64, column: &str) -> String {
    format!("properties/{level}/{owner}/{version}/{column}")
}

/// The associated data of a secret set.
pub fn secret_set_aad(name: &str) -> String {
    format!("secret_sets/{name}")
}

/// Writes a new random key to `path` unless it exists: a private temporary file beside it, linked
/// into place (which fails when `path` exists: the existing key is kept).
fn create_key_file(path: &Path) -> Result<(), SealError> {
    let err = |source| SealError::CreateKey { path: path.to_path_buf(), source };
    let key = XChaCha20Poly1305::generate_key(&mut OsRng);
    let text = format!("{}\n", base64::engine::general_purpose::STANDARD.encode(key));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(FILE_MODE).open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    })();
    let linked = written.and_then(|()| match std::fs::hard_link(&tmp, path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    });
    let _ = std::fs::remove_file(&tmp);
    linked.map_err(err)
}

/// Replaces the key file `path` with the key of `new` (the same text), atomically: a private
/// temporary file beside it, renamed over it.
pub fn install_key_file(new: &Path, path: &Path) -> Result<(), SealError> {
    let text = std::fs::read(new).map_err(|source| SealError::ReadKey { path: new.to_path_buf(), source })?;
    let err = |source| SealError::CreateKey { path: path.to_path_buf(), source };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(FILE_MODE).open(&tmp)?;
        file.write_all(&text)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_missing_key_file_is_made_private_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let a = Seal::load_or_create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let b = Seal::load_or_create(&path).unwrap();
        let sealed = a.seal("row/1", b"value");
        assert_eq!(b.open("row/1", &sealed).unwrap(), b"value", "the second open read the first key");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    }

    #[test]
    fn a_value_opens_only_under_its_key_and_for_its_row() {
        let dir = tempfile::tempdir().unwrap();
        let key = Seal::load_or_create(&dir.path().join("a")).unwrap();
        let other = Seal::load_or_create(&dir.path().join("b")).unwrap();
        let sealed = key.seal("properties/project/1/2/json", b"{\"password\":\"hunter2\"}");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"), "no plaintext in the sealed value");
        assert_ne!(sealed, key.seal("properties/project/1/2/json", b"{\"password\":\"hunter2\"}"), "a fresh nonce each time");
        assert_eq!(key.open("properties/project/1/2/json", &sealed).unwrap(), b"{\"password\":\"hunter2\"}");
        assert!(matches!(key.open("properties/project/1/3/json", &sealed), Err(SealError::Damaged { .. })), "another row's");
        assert!(matches!(other.open("properties/project/1/2/json", &sealed), Err(SealError::Damaged { .. })), "another key");
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(key.open("properties/project/1/2/json", &flipped), Err(SealError::Damaged { .. })), "a changed byte");
        assert!(key.verify(&key.key_check()).is_ok());
        let e = other.verify(&key.key_check()).unwrap_err();
        assert!(e.to_string().contains(&dir.path().join("b").display().to_string()), "{e}");
    }

    #[test]
    fn a_key_file_that_holds_no_key_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "not a key\n").unwrap();
        let e = Seal::load_or_create(&path).unwrap_err();
        assert!(matches!(e, SealError::KeyFormat { .. }), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a key\n", "an existing file is never replaced");
        assert!(matches!(Seal::load(&dir.path().join("none")), Err(SealError::MissingKey { .. })));
    }
}
