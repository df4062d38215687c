//! Strict reading of the JSON documents the agent is given.
//!
//! Stricter than `serde_json::from_slice` in three ways that matter for input written by people and
//! tools: a duplicate key in an object is an error (serde_json silently keeps the last one), a
//! document larger than a [`SizeLimit`] is refused before it is parsed, and every error says where:
//! the JSON path (as an RFC 6901 pointer) and the line and column.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::exit::{ExitStatus, Sysexit};

/// How large a document the agent agrees to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeLimit {
    /// Refuse documents larger than this many bytes (default: [`SizeLimit::DEFAULT`]).
    Error(u64),
    /// Read documents of any size.
    Unlimited,
}

impl SizeLimit {
    /// Default limit of a step context or properties document: 64 MiB. Properties are configuration;
    /// a larger document is a mistake (or an attack), and refusing it bounds the agent's memory.
    pub const DEFAULT: SizeLimit = SizeLimit::Error(64 << 20);

    /// The largest size allowed, in bytes (`u64::MAX` when unlimited).
    pub const fn max_bytes(self) -> u64 {
        match self {
            SizeLimit::Error(max) => max,
            SizeLimit::Unlimited => u64::MAX,
        }
    }
}

impl Default for SizeLimit {
    fn default() -> SizeLimit {
        SizeLimit::DEFAULT
    }
}

/// Why a JSON document could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// The file does not exist.
    #[error("{}: not found", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// Opening or reading the file failed.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than the size limit.
    #[error("{}: larger than the limit of {limit} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit it broke.
        limit: u64,
    },
    /// The document is not valid JSON, or not of the expected shape.
    #[error("{}: {}{message} (line {line}, column {column})", path.display(), at(pointer))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// RFC 6901 pointer to the offending value; empty for the whole document.
        pointer: String,
        /// What is wrong.
        message: String,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
    },
}

impl JsonError {
    /// The exit status of this failure: 66 a missing file, 74 an unreadable one, 65 an invalid one.
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            JsonError::Missing { .. } => Sysexit::NoInput,
            JsonError::Read { .. } => Sysexit::IoErr,
            JsonError::TooLarge { .. } | JsonError::Invalid { .. } => Sysexit::DataErr,
        }
        .into()
    }
}

fn at(pointer: &str) -> String {
    if pointer.is_empty() {
        String::new()
    } else {
        format!("at {pointer}: ")
    }
}

/// Reads and parses the JSON document at `path` into `T`, strictly.
pub fn read_file<T: DeserializeOwned>(path: &Path, limit: SizeLimit) -> Result<T, JsonError> {
    let bytes = read_bytes(path, limit)?;
    parse(path, &bytes)
}

/// The error of reading the file at `path`: [`JsonError::Missing`] when it is not there, else
/// [`JsonError::Read`] with the cause.
fn read_error(path: &Path) -> impl Fn(std::io::Error) -> JsonError + Copy + '_ {
    move |source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            JsonError::Missing { path: path.to_path_buf() }
        } else {
            JsonError::Read { path: path.to_path_buf(), source }
        }
    }
}

/// Reads the file at `path` whole, refusing it when it is larger than `limit`. The buffer is sized
/// from the file's metadata: growing it by doubling takes a dozen reads for a 50 KB document and
/// touches twice the memory, and page faults are most of what reading costs here.
pub fn read_bytes(path: &Path, limit: SizeLimit) -> Result<Vec<u8>, JsonError> {
    let mut bytes = Vec::new();
    read_bytes_into(path, limit, &mut bytes)?;
    Ok(bytes)
}

/// The bytes of a file as [`read_mapped`] gives them: the file's pages mapped, or read into a
/// buffer.
#[derive(Debug)]
pub enum FileBytes {
    /// The file's pages, mapped read-only and private. Invariant: `len` bytes from `ptr`, mapped
    /// until this is dropped.
    Mapped {
        /// The mapping's start.
        ptr: std::ptr::NonNull<libc::c_void>,
        /// Its length (the file's size when mapped; never 0).
        len: std::num::NonZeroUsize,
    },
    /// The file read whole (empty, not a regular file, or not mappable).
    Read(Vec<u8>),
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            // SAFETY: the invariant of `Mapped`: `len` readable bytes until `self` is dropped.
            FileBytes::Mapped { ptr, len } => unsafe { std::slice::from_raw_parts(ptr.as_ptr().cast::<u8>(), len.get()) },
            FileBytes::Read(bytes) => bytes,
        }
    }
}

impl Drop for FileBytes {
    fn drop(&mut self) {
        if let FileBytes::Mapped { ptr, len } = self {
            // SAFETY: the mapping `read_mapped` made, unmapped once; nothing borrows it any more.
            let _ = unsafe { nix::sys::mman::munmap(*ptr, len.get()) };
        }
    }
}

/// [`read_bytes`], with a regular file's pages mapped (read-only, private) rather than copied:
/// for a helper that reads a properties copy of megabytes once, reading it cost a fresh buffer's
/// pages, each faulted in and zeroed, and a copy (twice the time the helper spends on the text);
/// mapping it shares the page cache's pages, many a fault. The size limit is checked on the
/// file's size. For files replaced by renaming only (the runtime copies: the agent and the
/// helpers write them so): a file truncated while mapped would end the process with SIGBUS.
pub fn read_mapped(path: &Path, limit: SizeLimit) -> Result<FileBytes, JsonError> {
    use nix::sys::mman::{mmap, MapFlags, ProtFlags};
    let read_err = read_error(path);
    let file = fs::File::open(path).map_err(read_err)?;
    let metadata = file.metadata().map_err(read_err)?;
    let max = limit.max_bytes();
    if metadata.is_file() && metadata.len() <= max {
        if let Some(len) = usize::try_from(metadata.len()).ok().and_then(std::num::NonZeroUsize::new) {
            // SAFETY: a new read-only private mapping of a file we opened, at no fixed address;
            // its bytes are read through `FileBytes` only while it is mapped (see the caveat on
            // truncation above).
            if let Ok(ptr) = unsafe { mmap(None, len, ProtFlags::PROT_READ, MapFlags::MAP_PRIVATE, &file, 0) } {
                return Ok(FileBytes::Mapped { ptr, len });
            }
        }
    }
    read_bytes(path, limit).map(FileBytes::Read)
}

/// [`read_bytes`] into `bytes` (cleared first): a caller that reads several large files one after
/// the other reuses one buffer, whose pages are already faulted in, rather than a new one each.
pub fn read_bytes_into(path: &Path, limit: SizeLimit, bytes: &mut Vec<u8>) -> Result<(), JsonError> {
    let read_err = read_error(path);
    let file = fs::File::open(path).map_err(read_err)?;
    let max = limit.max_bytes();
    // The metadata is a hint only (a pipe or /proc file has none that is true): one byte past the
    // limit is read so that "exactly at the limit" and "over it" are told apart by what was read.
    let size = file.metadata().map_err(read_err)?.len();
    bytes.clear();
    bytes.reserve(usize::try_from(size.min(max).saturating_add(1)).unwrap_or(0));
    file.take(max.saturating_add(1)).read_to_end(bytes).map_err(read_err)?;
    if bytes.len() as u64 > max {
        return Err(JsonError::TooLarge { path: path.to_path_buf(), limit: max });
    }
    Ok(())
}

/// How a file compares with bytes the caller has, as [`read_differing`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Differing {
    /// The file holds exactly those bytes.
    Same,
    /// The file's first `at` bytes are the first `at` of those bytes; `rest` is what follows in
    /// the file. `at` is on a character boundary of the bytes the caller has, when they are text
    /// (not a UTF-8 continuation byte), so that `rest` is text when the file is.
    From {
        /// How many bytes the two have in common from their start, or a few less.
        at: usize,
        /// The rest of the file.
        rest: Vec<u8>,
    },
}

/// The size of the pieces [`read_differing`] reads and compares (64 KiB).
const PIECE: usize = 64 * 1024;

/// Reads the file at `path` (refused, as [`read_bytes`] refuses it, when larger than `limit`),
/// comparing it with `known` as it goes, a piece of `PIECE` (64 KiB) at a time: only what follows
/// the first difference is kept. The agent reads back the properties copies it wrote this way:
/// a copy of a few MB that an action changed near its end (a property added) costs no buffer of
/// its size, whose pages the kernel would fault in one by one.
pub fn read_differing(path: &Path, limit: SizeLimit, known: &[u8]) -> Result<Differing, JsonError> {
    let read_err = read_error(path);
    let max = limit.max_bytes();
    let mut file = fs::File::open(path).map_err(read_err)?;
    // No larger than needed to tell a file of `known`'s size from a longer one.
    let mut piece = vec![0; PIECE.min(known.len() + 1)];
    let mut at = 0;
    loop {
        let n = match file.read(&mut piece) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e)),
        };
        let got = &piece[..n];
        let mine = &known[at.min(known.len())..(at + n).min(known.len())];
        if n == 0 && at == known.len() {
            return Ok(Differing::Same);
        }
        if n > 0 && crate::diff::same_bytes(mine, got) {
            at += n;
            continue;
        }
        // The first difference (or the end of one of the two) is in this piece.
        let same = mine.iter().zip(got).take_while(|(a, b)| a == b).count();
        let mut from = at + same;
        // Back to a character boundary: the bytes stepped over are the same in both.
        while from > 0 && known.get(from).is_some_and(|b| b & 0xC0 == 0x80) {
            from -= 1;
        }
        let mut rest = Vec::with_capacity(at + n - from);
        rest.extend_from_slice(&known[from..at + same]);
        rest.extend_from_slice(&got[same..]);
        let read = (at + n) as u64;
        (&mut file).take((max.saturating_add(1)).saturating_sub(read)).read_to_end(&mut rest).map_err(read_err)?;
        if (from + rest.len()) as u64 > max {
            return Err(JsonError::TooLarge { path: path.to_path_buf(), limit: max });
        }
        return Ok(Differing::From { at: from, rest });
    }
}

/// Parses `bytes` (read from `path`, named in errors) into `T`, strictly.
pub fn parse<T: DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T, JsonError> {
    // Fast path: parse without tracking where the parser is. Only when that fails is the document
    // parsed again with serde_path_to_error, to name the failing JSON path: the same bytes fail at
    // the same place, and a valid document (the common case) pays for no path bookkeeping.
    parse_or_explain::<T, T>(path, bytes)
}

/// Parses `bytes` (read from `path`, named in errors) into `T`; when that fails, parses them again
/// as `E`, tracking the JSON path, for an error that says where. The document must be a JSON
/// object (every document this crate reads is one; see [`Object`]).
///
/// For a `T` that reads faster than it can explain itself: one that keeps parts of the document
/// as text ([`crate::properties::text::PropertiesText`]) fails on the same documents as the `E`
/// that builds them as trees, but only `E`'s error points inside those parts. Should `E` accept
/// what `T` refused, `T`'s own error is returned.
pub fn parse_or_explain<T: DeserializeOwned, E: DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T, JsonError> {
    let invalid = |pointer: String, inner: serde_json::Error| JsonError::Invalid {
        path: path.to_path_buf(),
        pointer,
        message: strip_position(&inner.to_string()),
        line: inner.line(),
        column: inner.column(),
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let fast = match Object::<T>::deserialize(&mut de).and_then(|Object(value)| de.end().map(|()| value)) {
        Ok(value) => return Ok(value),
        Err(e) => e,
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let explained = serde_path_to_error::deserialize::<_, Object<E>>(&mut de)
        .map_err(|err| {
            let pointer = pointer_of(err.path());
            invalid(pointer, err.into_inner())
        })
        .and_then(|_| de.end().map_err(|e| invalid(String::new(), e)));
    Err(explained.err().unwrap_or_else(|| invalid(String::new(), fast)))
}

/// serde_json appends " at line L column C" to its messages; the error says that once, itself.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// Renders a serde_path_to_error path as an RFC 6901 JSON pointer.
pub fn pointer_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => {
                out.push('/');
                out.push_str(&index.to_string());
            }
            Segment::Map { key } => {
                out.push('/');
                push_escaped(&mut out, key);
            }
            Segment::Enum { variant } => {
                out.push('/');
                push_escaped(&mut out, variant);
            }
            Segment::Unknown => out.push_str("/?"),
        }
    }
    out
}

/// Appends `token` to a JSON pointer, escaped as RFC 6901 says (`~` as `~0`, `/` as `~1`).
pub fn push_escaped(out: &mut String, token: &str) {
    for c in token.chars() {
        match c {
            '~' => out.push_str("~0"),
            '/' => out.push_str("~1"),
            c => out.push(c),
        }
    }
}

/// A value that is valid JSON but not a valid declaration: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at {pointer}: {message}")]
pub struct PointerError {
    /// RFC 6901 pointer to the offending value, relative to the document it was found in.
    pub pointer: String,
    /// What is wrong.
    pub message: String,
}

/// A `T` read from a JSON object only. serde's derived structs also accept an array of their
/// fields in order (`[]` is a step context of defaults, `["dev"]` an environment); every document
/// and nested record this crate reads is an object, and its schema says so, so an array is refused.
/// [`parse_or_explain`] reads every document through it; [`object`] and [`optional_object`] are for
/// nested records (`#[serde(deserialize_with = "...")]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Object<T>, D::Error> {
        deserializer.deserialize_map(ObjectVisitor(std::marker::PhantomData))
    }
}

/// Hands a JSON object's members to `T`'s own deserializer; refuses anything else.
struct ObjectVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
    type Value = Object<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Object<T>, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Object)
    }
}

/// Reads a `T` from a JSON object only (see [`Object`]).
pub fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<T, D::Error> {
    Object::deserialize(deserializer).map(|Object(value)| value)
}

/// Reads an optional `T` from a JSON object or `null` only (see [`Object`]).
pub fn optional_object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Option<T>, D::Error> {
    Option::<Object<T>>::deserialize(deserializer).map(|value| value.map(|Object(value)| value))
}

/// A JSON value read strictly: an object with a duplicate key is an error.
#[derive(Debug, Clone, PartialEq)]
pub struct StrictValue(pub Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<StrictValue, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

/// A JSON object read strictly (duplicate keys refused); anything but an object is an error.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StrictObject(pub Map<String, Value>);

impl<'de> Deserialize<'de> for StrictObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<StrictObject, D::Error> {
        match deserializer.deserialize_map(StrictObjectVisitor)? {
            Value::Object(map) => Ok(StrictObject(map)),
            _ => Err(de::Error::custom("expected a JSON object")),
        }
    }
}

/// [`StrictVisitor`] for a place that takes only an object, so that any other value is refused
/// as "expected a JSON object" rather than as the generic "a JSON value".
struct StrictObjectVisitor;

impl<'de> Visitor<'de> for StrictObjectVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Value, A::Error> {
        StrictVisitor.visit_map(map)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v).map(Value::Number).ok_or_else(|| E::custom("number out of range"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(StrictValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            // One hash of the key, not two (a lookup, then an insert).
            match out.entry(key) {
                serde_json::map::Entry::Occupied(taken) => {
                    return Err(de::Error::custom(format_args!("duplicate key {:?}", taken.key())));
                }
                serde_json::map::Entry::Vacant(slot) => {
                    let StrictValue(value) = map.next_value()?;
                    slot.insert(value);
                }
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str<T: DeserializeOwned>(s: &str) -> Result<T, JsonError> {
        parse(Path::new("t.json"), s.as_bytes())
    }

    #[test]
    fn read_mapped_gives_what_read_bytes_gives_and_refuses_what_it_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("copy.json");
        let text: String = (0..300_000).map(|i| if i % 89 == 3 { 'é' } else { 'a' }).collect();
        std::fs::write(&path, &text).unwrap();
        let mapped = read_mapped(&path, SizeLimit::DEFAULT).unwrap();
        assert!(matches!(mapped, FileBytes::Mapped { .. }), "a regular file is mapped");
        assert_eq!(&*mapped, text.as_bytes());
        // Replaced by renaming while mapped: the mapping keeps the old file's bytes.
        let next = dir.path().join("next.json");
        std::fs::write(&next, "{}").unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(&*mapped, text.as_bytes());
        drop(mapped);
        assert_eq!(&*read_mapped(&path, SizeLimit::DEFAULT).unwrap(), b"{}");
        // At the limit and over it, as read_bytes.
        assert_eq!(&*read_mapped(&path, SizeLimit::Error(2)).unwrap(), b"{}");
        assert!(matches!(read_mapped(&path, SizeLimit::Error(1)), Err(JsonError::TooLarge { limit: 1, .. })));
        // Empty, missing, not a regular file: read, with read_bytes' answers.
        std::fs::write(&path, "").unwrap();
        assert!(matches!(read_mapped(&path, SizeLimit::DEFAULT).unwrap(), FileBytes::Read(ref b) if b.is_empty()));
        assert!(matches!(read_mapped(&dir.path().join("none"), SizeLimit::DEFAULT), Err(JsonError::Missing { .. })));
        assert!(matches!(read_mapped(dir.path(), SizeLimit::DEFAULT), Err(JsonError::Read { .. })));
    }

    #[test]
    fn read_differing_keeps_only_what_follows_the_first_difference() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("copy.json");
        // Three pieces and a bit, with two-byte characters all along.
        let known: String = (0..2 * PIECE + 1000).map(|i| if i % 97 == 5 { 'é' } else { 'a' }).collect();
        let k = known.as_bytes();
        let read = |file: &[u8], limit| {
            std::fs::write(&path, file).unwrap();
            read_differing(&path, limit, k).unwrap()
        };
        let unlimited = SizeLimit::Unlimited;
        assert_eq!(read(k, unlimited), Differing::Same);
        let with = |at: usize, len: usize, by: &[u8]| [&k[..at], by, &k[at + len..]].concat();
        for file in [
            with(k.len(), 0, b"x"),
            with(k.len() - 1, 1, b""),
            with(0, 1, b"b"),
            with(PIECE, 1, b"b"),
            with(PIECE - 1, 0, b"bc"),
            with(2 * PIECE + 7, 3, b""),
            known.replacen('\u{e9}', "\u{e8}", 1).into_bytes(),
            known.replace("\u{e9}a", "\u{e8}a").into_bytes(),
            Vec::new(),
        ] {
            let Differing::From { at, rest } = read(&file, unlimited) else { panic!("the same") };
            let common = file.iter().zip(k).take_while(|(a, b)| a == b).count();
            assert!(known.is_char_boundary(at) && at <= common && at + 1 >= common, "{at} for {common}");
            assert_eq!(&file[..at], &k[..at]);
            assert_eq!(rest, &file[at..]);
        }
        // The size limit holds for what is kept and what is compared alike.
        let limit = SizeLimit::Error(k.len() as u64);
        assert_eq!(read(k, limit), Differing::Same);
        std::fs::write(&path, with(k.len(), 0, b"xx")).unwrap();
        assert!(matches!(read_differing(&path, limit, k), Err(JsonError::TooLarge { .. })));
        assert!(matches!(read_differing(&dir.path().join("none"), limit, b""), Err(JsonError::Missing { .. })));
        // A small copy is read in a piece of its size and one byte: a longer file is told apart.
        for (file, expected) in
            [(&b"{}\n"[..], Differing::Same), (b"{}\n  ", Differing::From { at: 3, rest: b"  ".to_vec() }), (b"{}", Differing::From { at: 2, rest: vec![] })]
        {
            std::fs::write(&path, file).unwrap();
            assert_eq!(read_differing(&path, unlimited, b"{}\n").unwrap(), expected);
        }
    }

    #[test]
    fn duplicate_key_is_refused_with_its_path() {
        let err = parse_str::<StrictValue>(r#"{"a": {"b": 1, "b": 2}}"#).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("duplicate key \"b\""), "{text}");
        assert!(text.contains("at /a"), "{text}");
    }

    #[test]
    fn trailing_garbage_is_refused() {
        assert!(parse_str::<StrictValue>("{} x").is_err());
    }

    #[test]
    fn pointer_escapes_tilde_and_slash() {
        let err = parse_str::<std::collections::BTreeMap<String, u8>>(r#"{"a/~b": "x"}"#).unwrap_err();
        assert!(err.to_string().contains("at /a~1~0b"), "{err}");
    }

    #[test]
    fn size_limit_refuses_larger_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.json");
        std::fs::write(&path, "[1,2,3]").unwrap();
        assert!(matches!(read_bytes(&path, SizeLimit::Error(6)), Err(JsonError::TooLarge { .. })));
        assert!(read_bytes(&path, SizeLimit::Error(7)).is_ok());
    }
}
