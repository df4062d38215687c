//! Properties: every version of every level, stored as patches with a few snapshots, and the
//! current versions held in memory (see the store's documentation).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{Map, Value};

use super::seal::{properties_aad, Seal};
use super::{exec_cached, json_of, q, Store, StoreError};
use crate::merge;
use opschain_runner::properties::{declarations, splice};

/// A properties version is stored whole (a snapshot) when this many patches (100) have been
/// stored since the last snapshot: reading a version applies at most this many patches.
pub const SNAPSHOT_EVERY: usize = 100;

/// A properties version is stored whole when the patches since the last snapshot, its own
/// included, add up to more than the document's size divided by this (2): the snapshots then
/// take at most twice the space of the patches.
pub const SNAPSHOT_FRACTION: usize = 2;

/// A writable properties level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    /// A project's properties.
    Project,
    /// An environment's properties.
    Environment,
}

impl Level {
    /// The name stored in `properties.level`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Project => "project",
            Level::Environment => "environment",
        }
    }
}

impl rusqlite::ToSql for Level {
    /// The name stored in `properties.level`, as SQL text.
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(rusqlite::types::ToSqlOutput::Borrowed(rusqlite::types::ValueRef::Text(self.as_str().as_bytes())))
    }
}

/// A properties version's row as stored: its number, its sealed snapshot or patch, the step that
/// wrote it, when.
pub(super) type StoredVersion = (i64, Option<Vec<u8>>, Option<Vec<u8>>, Option<i64>, String);

/// One stored version of a level's properties.
#[derive(Debug, Clone)]
pub struct PropertiesVersion {
    /// The version number, 0 for the empty document made with the owner.
    pub version: i64,
    /// The document.
    pub json: Map<String, Value>,
    /// The step whose diff made this version; `None` for a user edit.
    pub step_id: Option<i64>,
    /// When it was written.
    pub created_at: String,
}

impl Store {
    /// The latest version of a level's properties.
    pub fn properties(&self, level: Level, owner: i64) -> Result<PropertiesVersion, StoreError> {
        let conn = self.conn();
        let current = current(&conn, &self.cache, None, level, owner)?;
        let (step_id, created_at) = conn
            .prepare_cached("SELECT step_id, created_at FROM properties WHERE level = ?1 AND owner_id = ?2 AND version = ?3")
            .and_then(|mut stmt| stmt.query_row(params![level, owner, current.version], |r| Ok((r.get(0)?, r.get(1)?))))
            .map_err(q("read properties"))?;
        let json = json_of(current.doc.text(), || format!("{} properties v{}", level.as_str(), current.version))?;
        Ok(PropertiesVersion { version: current.version, json, step_id, created_at })
    }

    /// Of the latest version of a level's properties, only the members that can hold
    /// declarations ([`declarations::MEMBERS`]), parsed: what the secret rule reads, without
    /// parsing the rest of the document.
    pub fn declaring_properties(&self, level: Level, owner: i64) -> Result<Map<String, Value>, StoreError> {
        let conn = self.conn();
        Ok(declaring(&current(&conn, &self.cache, None, level, owner)?.doc))
    }

    /// Calls `each` with every version of a level's properties, oldest first: each snapshot is
    /// parsed once and the patches after it applied in turn, so listing the versions costs one
    /// tree, not one per version.
    pub fn properties_history_each(&self, level: Level, owner: i64, mut each: impl FnMut(PropertiesVersion)) -> Result<(), StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT version, json, patch, step_id, created_at FROM properties WHERE level = ?1 AND owner_id = ?2 ORDER BY version")
            .map_err(q("list properties versions"))?;
        let mut rows = stmt.query(params![level, owner]).map_err(q("list properties versions"))?;
        let mut doc = Map::new();
        while let Some(r) = rows.next().map_err(q("list properties versions"))? {
            let (version, json, patch, step_id, created_at): StoredVersion =
                (|| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))().map_err(q("list properties versions"))?;
            let what = || format!("{} properties v{version}", level.as_str());
            doc = match (json, patch) {
                (Some(json), _) => json_of(&self.seal.open_text(&properties_aad(level.as_str(), owner, version, "json"), &json)?, what)?,
                (None, Some(patch)) => apply_stored(doc, &self.seal.open_text(&properties_aad(level.as_str(), owner, version, "patch"), &patch)?, what)?,
                (None, None) => unreachable!("the schema's CHECK keeps a document or a patch"),
            };
            each(PropertiesVersion { version, json: doc.clone(), step_id, created_at });
        }
        Ok(())
    }

    /// Every version of a level's properties, oldest first (see [`Store::properties_history_each`]).
    pub fn properties_history(&self, level: Level, owner: i64) -> Result<Vec<PropertiesVersion>, StoreError> {
        let mut out = Vec::new();
        self.properties_history_each(level, owner, |v| out.push(v))?;
        Ok(out)
    }

    /// Stores a new version of a level's properties (a user's `set` or `edit`); returns its number.
    /// Stored as its diff from the current version, or whole when a snapshot is due.
    pub fn set_properties(&self, level: Level, owner: i64, json: &Map<String, Value>) -> Result<i64, StoreError> {
        let json = Value::Object(json.clone());
        self.write_properties(move |tx, cache, staged| {
            let prev = current(tx, cache, Some(staged), level, owner)?;
            let before: Value = serde_json::from_str(prev.doc.text()).map_err(|source| StoreError::Json { what: format!("{} properties", level.as_str()), source })?;
            let patch = serde_json::to_string(&opschain_runner::diff::diff(&before, &json)).expect("a patch serialises");
            let doc = splice::Document::parse(&json.to_string()).expect("a JSON object's text is a document");
            insert_version(tx, cache, staged, level, owner, &prev, doc, Some(patch), None)
        })
    }

    /// The version `version` of a level's properties.
    pub fn properties_version(&self, level: Level, owner: i64, version: i64) -> Result<Map<String, Value>, StoreError> {
        let conn = self.conn();
        let doc = load(&conn, &self.seal, level, owner, version)?.doc;
        json_of(doc.text(), || format!("{} properties v{version}", level.as_str()))
    }

    /// [`Store::write`] for a write that reads or stores properties versions: it gets the cache
    /// and a list to stage the versions it reads or writes in, published once its group commits.
    pub(super) fn write_properties<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &PropertiesCache, &mut Vec<Staged>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (cache, settle) = (Arc::clone(&self.cache), Arc::clone(&self.cache));
        let mine: Arc<Mutex<Vec<Staged>>> = Arc::default();
        let published = Arc::clone(&mine);
        self.write_then(
            move |tx| {
                let mut staged = Vec::new();
                let result = f(tx, &cache, &mut staged);
                *mine.lock().unwrap_or_else(|e| e.into_inner()) = staged;
                result
            },
            move |committed| settle.settle(std::mem::take(&mut *published.lock().unwrap_or_else(|e| e.into_inner())), committed),
        )
    }
}

/// The current version of one level's properties, as held in memory: the document's text,
/// shared with every step that starts on it, and what has been stored since the last snapshot.
#[derive(Debug)]
pub(super) struct Current {
    /// The version number.
    pub(super) version: i64,
    /// The document.
    pub(super) doc: splice::Document,
    /// How many patches were stored since the last snapshot (0 when this version is one).
    patches: usize,
    /// Their size in bytes.
    patch_bytes: usize,
}

/// A version staged by a write: the level and owner, and the version.
pub(super) type Staged = ((Level, i64), Arc<Current>);

/// The current properties versions in memory (see the module documentation), and the key the
/// versions it reads and writes are sealed with in the database (the cache holds them in clear).
#[derive(Debug)]
pub(super) struct PropertiesCache {
    /// The store's key.
    pub(super) seal: Arc<Seal>,
    /// Committed versions, by level and owner: each the latest this process has seen.
    committed: Mutex<HashMap<(Level, i64), Arc<Current>>>,
    /// The versions the writer's current group has read or written, not yet committed: what a
    /// later write of the same group builds on.
    staged: Mutex<HashMap<(Level, i64), Arc<Current>>>,
}

impl PropertiesCache {
    /// An empty cache of versions sealed with `seal`.
    pub(super) fn new(seal: Arc<Seal>) -> PropertiesCache {
        PropertiesCache { seal, committed: Mutex::default(), staged: Mutex::default() }
    }

    /// Ends a write's staging: the group's staged versions are dropped, and the write's own
    /// published when it committed (a later version is never replaced by an earlier one).
    fn settle(&self, mine: Vec<Staged>, committed: bool) {
        self.staged.lock().unwrap_or_else(|e| e.into_inner()).clear();
        if committed {
            for (key, current) in mine {
                self.publish(key, current);
            }
        }
    }

    /// Records a committed version, unless a later one is known.
    fn publish(&self, key: (Level, i64), current: Arc<Current>) {
        let mut committed = self.committed.lock().unwrap_or_else(|e| e.into_inner());
        if committed.get(&key).is_none_or(|known| known.version <= current.version) {
            committed.insert(key, current);
        }
    }
}

/// The latest version of a level's properties: from the cache when it holds that version, else
/// loaded from the database. `staged`: the writer's staging list, when called inside a write
/// (the version is then staged, as it may come from the write's own transaction); a reader's
/// connection sees only committed versions, which are published at once.
pub(super) fn current(conn: &Connection, cache: &PropertiesCache, staged: Option<&mut Vec<Staged>>, level: Level, owner: i64) -> Result<Arc<Current>, StoreError> {
    let version: Option<i64> = conn
        .prepare_cached("SELECT MAX(version) FROM properties WHERE level = ?1 AND owner_id = ?2")
        .and_then(|mut stmt| stmt.query_row(params![level, owner], |r| r.get(0)))
        .map_err(q("read properties version"))?;
    let version = version.ok_or_else(|| StoreError::NotFound(format!("{} {owner} properties", level.as_str())))?;
    let key = (level, owner);
    if staged.is_some() {
        if let Some(c) = cache.staged.lock().unwrap_or_else(|e| e.into_inner()).get(&key).filter(|c| c.version == version) {
            return Ok(Arc::clone(c));
        }
    }
    if let Some(c) = cache.committed.lock().unwrap_or_else(|e| e.into_inner()).get(&key).filter(|c| c.version == version) {
        return Ok(Arc::clone(c));
    }
    let loaded = Arc::new(load(conn, &cache.seal, level, owner, version)?);
    match staged {
        Some(staged) => stage(cache, staged, key, Arc::clone(&loaded)),
        None => cache.publish(key, Arc::clone(&loaded)),
    }
    Ok(loaded)
}

/// Stages a version for the rest of the writer's group and for publication at its commit.
fn stage(cache: &PropertiesCache, staged: &mut Vec<Staged>, key: (Level, i64), current: Arc<Current>) {
    cache.staged.lock().unwrap_or_else(|e| e.into_inner()).insert(key, Arc::clone(&current));
    staged.push((key, current));
}

/// Stores the first version (0) of a new owner's properties: an empty document, sealed as every
/// version is. Every path that creates a project or an environment calls this in the write that
/// creates it.
pub(super) fn insert_first_version(conn: &Connection, seal: &Seal, level: Level, owner: i64) -> Result<(), StoreError> {
    let empty = seal.seal(&properties_aad(level.as_str(), owner, 0, "json"), b"{}");
    conn.execute("INSERT INTO properties (level, owner_id, version, json) VALUES (?1, ?2, 0, ?3)", params![level, owner, empty])
        .map_err(q("create the first properties version"))?;
    Ok(())
}

/// Reads version `version` of a level's properties from the database: the last snapshot at or
/// before it, and the patches after that applied in turn: spliced into its text
/// ([`splice::Document::patch`], as a step's diff is applied) while they can be, so that a
/// megabyte document is not parsed into a tree, patched and written out again each time a
/// controller first uses it; from the first patch that cannot be spliced on, applied to its tree.
pub(super) fn load(conn: &Connection, seal: &Seal, level: Level, owner: i64, version: i64) -> Result<Current, StoreError> {
    let what = || format!("{} properties v{version}", level.as_str());
    let (base, json): (i64, Vec<u8>) = conn
        .prepare_cached("SELECT version, json FROM properties WHERE level = ?1 AND owner_id = ?2 AND version <= ?3 AND json IS NOT NULL ORDER BY version DESC LIMIT 1")
        .and_then(|mut stmt| stmt.query_row(params![level, owner, version], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(q("read properties snapshot"))?
        .ok_or_else(|| StoreError::NotFound(what()))?;
    let json = seal.open_text(&properties_aad(level.as_str(), owner, base, "json"), &json)?;
    let sealed: Vec<(i64, Vec<u8>)> = conn
        .prepare_cached("SELECT version, patch FROM properties WHERE level = ?1 AND owner_id = ?2 AND version > ?3 AND version <= ?4 ORDER BY version")
        .and_then(|mut stmt| stmt.query_map(params![level, owner, base, version], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .map_err(q("read properties patches"))?;
    let patches = sealed.into_iter().map(|(v, patch)| seal.open_text(&properties_aad(level.as_str(), owner, v, "patch"), &patch)).collect::<Result<Vec<String>, _>>()?;
    assemble(level, version, base, json, &patches)
}

/// Version `version` of a level's properties from the text of the last snapshot at or before it
/// (`json`, version `base`) and of the patches after that (each RFC 6902 JSON), whichever
/// database they came from: spliced in turn while they can be, then applied to its tree (see
/// [`load`]). A version after the latest is not found (versions are numbered without gaps).
pub(super) fn assemble(level: Level, version: i64, base: i64, json: String, patches: &[String]) -> Result<Current, StoreError> {
    let what = || format!("{} properties v{version}", level.as_str());
    if base + patches.len() as i64 != version {
        return Err(StoreError::NotFound(what()));
    }
    let patch_bytes = patches.iter().map(String::len).sum();
    let parse = |text: &str| splice::Document::parse(text).map_err(|source| StoreError::StoredDocument { what: what(), source });
    let mut doc = parse(&json)?;
    drop(json);
    for (i, patch) in patches.iter().enumerate() {
        let parsed: json_patch::Patch = serde_json::from_str(patch).map_err(|source| StoreError::Json { what: format!("the patch of {}", what()), source })?;
        match doc.patch(&parsed) {
            Some(patched) => doc = patched,
            None => {
                let mut tree = json_of(doc.text(), what)?;
                for patch in &patches[i..] {
                    tree = apply_stored(tree, patch, what)?;
                }
                doc = parse(&Value::Object(tree).to_string())?;
                break;
            }
        }
    }
    Ok(Current { version, doc, patches: patches.len(), patch_bytes })
}

/// The members of `doc` that can hold declarations ([`declarations::MEMBERS`]), parsed, in
/// document order, as [`opschain_runner::properties::text::PropertiesText::subset`] gives them: found in
/// the document's index of its top-level members, so only these members' text is parsed.
pub(super) fn declaring(doc: &splice::Document) -> Map<String, Value> {
    doc.members()
        .iter()
        .filter(|member| declarations::MEMBERS.contains(&member.key.as_str()))
        // The document was checked when it was made: its members' values are JSON.
        .filter_map(|member| serde_json::from_str(&doc.text()[member.value.clone()]).ok().map(|value| (member.key.clone(), value)))
        .collect()
}

/// `doc` after the stored patch `patch` (JSON text) of version `what`.
pub(super) fn apply_stored(doc: Map<String, Value>, patch: &str, what: impl Fn() -> String) -> Result<Map<String, Value>, StoreError> {
    let patch: json_patch::Patch = serde_json::from_str(patch).map_err(|source| StoreError::Json { what: format!("the patch of {}", what()), source })?;
    let mut doc = Value::Object(doc);
    json_patch::patch(&mut doc, &patch).map_err(|source| StoreError::StoredPatch { what: what(), source })?;
    match doc {
        Value::Object(map) => Ok(map),
        _ => Err(StoreError::StoredDocument { what: what(), source: splice::SpliceError::NotAnObject }),
    }
}

/// A version of a level's properties that a step started from, as the store held it: the
/// scheduler keeps it until the step ends, so that the step's diff can be merged against it
/// ([`Store::finish_step`]) without reading that version from the database again.
#[derive(Debug, Clone)]
pub struct PropertiesBase(pub(super) Arc<Current>);

impl PropertiesBase {
    /// The version number.
    pub fn version(&self) -> i64 {
        self.0.version
    }
}

/// Why a step's diff could not be applied as the step meant it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Unapplied {
    /// The diff does not apply (to the version the step started from, or to the current one):
    /// `json_patch`'s reason.
    Invalid(String),
    /// Both the step and, since it started, another step or a user changed these paths.
    Conflict(merge::MergeConflict),
}

/// A step's `diff`, made against `base`, applied to `current` as the step meant it: the new
/// document and the patch that makes it from `current` (what is stored for the version).
///
/// Only the top-level members the diff touches are looked at. When each of them is as it was in
/// `base` (byte for byte: untouched members keep their text from version to version), the diff
/// applies to `current` as it is, spliced. Otherwise those members are merged three ways
/// ([`merge::merge_member`]): the step's result (`base` after `diff`) against `current`, each an
/// edit of `base`.
pub(super) fn apply_merged(base: &splice::Document, current: &splice::Document, diff: &json_patch::Patch) -> Result<(splice::Document, json_patch::Patch), Unapplied> {
    let keys = match touched_members(diff) {
        Some(keys) => keys,
        None => {
            let mut keys: Vec<String> = current.members().iter().map(|span| span.key.clone()).collect();
            keys.extend(base.members().iter().map(|span| span.key.clone()).filter(|k| member(current, k).is_none()));
            keys
        }
    };
    if keys.iter().all(|k| member(base, k) == member(current, k)) {
        return apply(current, diff).map(|doc| (doc, diff.clone())).map_err(Unapplied::Invalid);
    }
    let ours = apply(base, diff).map_err(Unapplied::Invalid)?;
    let mut keys = keys;
    let added: Vec<String> =
        ours.members().iter().map(|span| span.key.clone()).filter(|k| member(base, k).is_none() && member(current, k).is_none() && !keys.contains(k)).collect();
    keys.extend(added);
    let parse = |text: Option<&str>| text.map(|t| serde_json::from_str::<Value>(t).expect("a document's member is JSON"));
    let mut ops = Vec::new();
    let mut conflicts = Vec::new();
    for key in &keys {
        let (b, o, t) = (member(base, key), member(&ours, key), member(current, key));
        if o == t || o == b {
            continue;
        }
        let merged = if b == t {
            parse(o)
        } else {
            match merge::merge_member(key, parse(b).as_ref(), parse(o).as_ref(), parse(t).as_ref()) {
                Ok(merged) => merged,
                Err(conflict) => {
                    conflicts.extend(conflict.paths);
                    continue;
                }
            }
        };
        let one = |value: Value| Value::Object(Map::from_iter([(key.to_string(), value)]));
        match (parse(t), merged) {
            (Some(t), Some(merged)) => opschain_runner::diff::diff_into(&one(t), &one(merged), &mut ops),
            (None, Some(merged)) => opschain_runner::diff::diff_into(&Value::Object(Map::new()), &one(merged), &mut ops),
            (Some(t), None) => opschain_runner::diff::diff_into(&one(t), &Value::Object(Map::new()), &mut ops),
            (None, None) => {}
        }
    }
    if !conflicts.is_empty() {
        return Err(Unapplied::Conflict(merge::MergeConflict { paths: conflicts }));
    }
    let patch = json_patch::Patch(ops);
    let doc = apply(current, &patch).map_err(Unapplied::Invalid)?;
    Ok((doc, patch))
}

/// The top-level members a patch's operations touch, in order, each once; `None` when one
/// operates on the whole document.
fn touched_members(patch: &json_patch::Patch) -> Option<Vec<String>> {
    use json_patch::PatchOperation as Op;
    let mut keys: Vec<String> = Vec::new();
    for op in &patch.0 {
        let (path, from) = match op {
            Op::Add(o) => (&o.path, None),
            Op::Remove(o) => (&o.path, None),
            Op::Replace(o) => (&o.path, None),
            Op::Test(o) => (&o.path, None),
            Op::Move(o) => (&o.path, Some(&o.from)),
            Op::Copy(o) => (&o.path, Some(&o.from)),
        };
        for pointer in std::iter::once(path).chain(from) {
            let key = pointer.tokens().next()?.decoded().into_owned();
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    Some(keys)
}

/// The text of a document's top-level member `key`.
fn member<'d>(doc: &'d splice::Document, key: &str) -> Option<&'d str> {
    doc.members().iter().find(|span| span.key == key).map(|span| &doc.text()[span.value.clone()])
}

/// `doc` after a step's `patch`: spliced into its text when the patch only adds, replaces and
/// removes object members ([`splice::Document::patch`]), else applied to its tree by
/// `json_patch::patch`, whose error (the patch does not apply) is returned as text.
pub(super) fn apply(doc: &splice::Document, patch: &json_patch::Patch) -> Result<splice::Document, String> {
    if let Some(patched) = doc.patch(patch) {
        return Ok(patched);
    }
    let mut tree: Value = serde_json::from_str(doc.text()).map_err(|e| format!("the current properties are not valid JSON: {e}"))?;
    json_patch::patch(&mut tree, patch).map_err(|e| e.to_string())?;
    splice::Document::parse(&tree.to_string()).map_err(|_| "the patch replaces the properties with a value that is not an object".to_string())
}

/// Stores the version after `prev` of a level's properties: `doc`, made from `prev` by `patch`
/// (JSON text; `None`: store it whole). The row holds the patch, or the whole document when a
/// snapshot is due (see the module documentation). Stages the new version; returns its number.
#[allow(clippy::too_many_arguments)]
pub(super) fn insert_version(
    conn: &Connection,
    cache: &PropertiesCache,
    staged: &mut Vec<Staged>,
    level: Level,
    owner: i64,
    prev: &Current,
    doc: splice::Document,
    patch: Option<String>,
    step_id: Option<i64>,
) -> Result<i64, StoreError> {
    let version = prev.version + 1;
    let (snapshot, next) = stored_form(prev, &doc, patch.as_deref());
    let (json, patch) = if snapshot { (Some(&**doc.text()), None) } else { (None, patch) };
    let json = json.map(|j| cache.seal.seal(&properties_aad(level.as_str(), owner, version, "json"), j.as_bytes()));
    let patch = patch.map(|p| cache.seal.seal(&properties_aad(level.as_str(), owner, version, "patch"), p.as_bytes()));
    exec_cached(
        conn,
        "INSERT INTO properties (level, owner_id, version, json, patch, step_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![level, owner, version, json, patch, step_id],
    )
    .map_err(q("store properties version"))?;
    stage(cache, staged, (level, owner), Arc::new(next(doc)));
    Ok(version)
}

/// How the version after `prev`, `doc` made by `patch` (`None`: a document stored whole), is
/// stored: whether as a snapshot (see the module documentation), and the version as the cache
/// holds it once stored.
pub(super) fn stored_form(prev: &Current, doc: &splice::Document, patch: Option<&str>) -> (bool, impl FnOnce(splice::Document) -> Current) {
    let (patches, patch_bytes) = match patch {
        Some(p) => (prev.patches + 1, prev.patch_bytes + p.len()),
        None => (0, 0),
    };
    let snapshot = patch.is_none() || patches >= SNAPSHOT_EVERY || patch_bytes * SNAPSHOT_FRACTION > doc.text().len();
    let (patches, patch_bytes) = if snapshot { (0, 0) } else { (patches, patch_bytes) };
    let version = prev.version + 1;
    (snapshot, move |doc| Current { version, doc, patches, patch_bytes })
}

/// Brings a database made before properties patches to the current `properties` table, in place
/// and in one transaction: `json` may now be NULL and `patch` is added; the rows are kept as they
/// are (each a snapshot).
pub(super) fn migrate_properties(conn: &Connection) -> rusqlite::Result<()> {
    let has_patch = |conn: &Connection| conn.prepare("SELECT 1 FROM pragma_table_info('properties') WHERE name = 'patch'")?.exists([]);
    if has_patch(conn)? {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| {
        if has_patch(conn)? {
            return Ok(());
        }
        conn.execute_batch(
            "CREATE TABLE properties_migrated (
                id INTEGER PRIMARY KEY,
                level TEXT NOT NULL CHECK (level IN ('project', 'environment')),
                owner_id INTEGER NOT NULL,
                version INTEGER NOT NULL,
                json TEXT,
                patch TEXT,
                step_id INTEGER REFERENCES steps(id),
                created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
                CHECK (json IS NOT NULL OR patch IS NOT NULL),
                UNIQUE (level, owner_id, version)
            );
            INSERT INTO properties_migrated (id, level, owner_id, version, json, step_id, created_at)
                SELECT id, level, owner_id, version, json, step_id, created_at FROM properties;
            DROP TABLE properties;
            ALTER TABLE properties_migrated RENAME TO properties;",
        )
    })();
    match result {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{end, obj, patch, setup};
    use super::super::{DB_FILE, SCHEMA};
    use super::*;
    use crate::status::StepStatus;
    use serde_json::json;

    /// The number of rows of a level's versions that hold the whole document, and the bytes of
    /// the documents and patches stored.
    fn stored(store: &Store, level: Level, owner: i64) -> (i64, i64, i64) {
        store
            .conn()
            .query_row(
                "SELECT COUNT(json), COALESCE(SUM(LENGTH(json)), 0), COALESCE(SUM(LENGTH(patch)), 0) FROM properties WHERE level = ?1 AND owner_id = ?2",
                params![level, owner],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap()
    }

    #[test]
    fn versions_are_stored_as_patches_with_a_few_snapshots_and_every_version_reads_back() {
        let (_dir, store, p, e, c) = setup();
        let servers: Map<String, Value> = (0..2000).map(|i| (format!("srv-{i:05}"), json!({"ip": format!("10.0.{}.{}", i / 256, i % 256), "roles": ["web"]}))).collect();
        let mut expected = vec![Map::new(), obj(json!({"servers": servers, "deployed": {}}))];
        store.set_properties(Level::Project, p, &expected[1]).unwrap();
        let document = Value::Object(expected[1].clone()).to_string().len() as i64;
        let root = store.steps(c).unwrap()[0].id;
        store.start_step(root, p, e).unwrap();
        let children: Vec<String> = (0..250).map(|i| format!("set{i}")).collect();
        let names: Vec<&str> = children.iter().map(String::as_str).collect();
        store.finish_step(root, p, e, end(json!([]), json!([]), &names)).unwrap();
        let steps = store.steps(c).unwrap();
        for (i, step) in steps.iter().skip(1).enumerate() {
            store.start_step(step.id, p, e).unwrap();
            // Most add a key; some replace one, remove one, or touch the large member.
            let diff = match i % 10 {
                3 if i > 10 => json!([{"op": "replace", "path": format!("/deployed/k{}", i - 1), "value": {"again": i}}]),
                7 if i > 10 => json!([{"op": "remove", "path": format!("/deployed/k{}", i - 3)}]),
                9 => json!([{"op": "replace", "path": format!("/servers/srv-{i:05}/roles/0"), "value": "db"}]),
                _ => json!([{"op": "add", "path": format!("/deployed/k{i}"), "value": i}]),
            };
            let mut next = Value::Object(expected.last().unwrap().clone());
            json_patch::patch(&mut next, &patch(diff.clone())).unwrap();
            expected.push(next.as_object().unwrap().clone());
            assert_eq!(store.finish_step(step.id, p, e, end(diff, json!([]), &[])).unwrap().0, StepStatus::Success);
        }
        let latest = store.properties(Level::Project, p).unwrap();
        assert_eq!(latest.version, 251);
        assert_eq!(&latest.json, expected.last().unwrap());
        // Every version reads back, one by one and as the history.
        for v in [0, 1, 2, 57, 99, 100, 101, 150, 199, 200, 201, 251] {
            assert_eq!(store.properties_version(Level::Project, p, v).unwrap(), expected[v as usize], "version {v}");
        }
        let history = store.properties_history(Level::Project, p).unwrap();
        assert_eq!(history.len(), expected.len());
        for (got, want) in history.iter().zip(&expected) {
            assert_eq!(&got.json, want, "version {}", got.version);
        }
        // Stored: version 0, the user's document and a snapshot each 100 patches, the rest patches.
        let (snapshots, snapshot_bytes, patch_bytes) = stored(&store, Level::Project, p);
        assert!(snapshots <= 5, "{snapshots} snapshots");
        assert!(snapshot_bytes < 5 * document, "{snapshot_bytes} bytes of snapshots for a {document}-byte document");
        assert!(patch_bytes < 250 * 120, "{patch_bytes} bytes of patches");
        // A store opened afresh (nothing cached) reads the same, to the byte: the stored patches
        // since the last snapshot (array edits among them, which are not spliced) are applied
        // as the steps' diffs were.
        let again = Store::open(_dir.path()).unwrap();
        assert_eq!(&again.properties(Level::Project, p).unwrap().json, expected.last().unwrap());
        for v in [199, 200, 251] {
            let loaded = load(&again.conn(), &again.seal, Level::Project, p, v).unwrap();
            assert_eq!(json_of(loaded.doc.text(), String::new).unwrap(), expected[v as usize], "version {v}");
        }
    }

    #[test]
    fn a_version_read_afresh_is_the_text_the_steps_left() {
        let (dir, store, p, e, c) = setup();
        let members: Map<String, Value> = (0..50).map(|i| (format!("m{i:02}"), json!({"v": i, "list": [i, "x"]}))).collect();
        store.set_properties(Level::Project, p, &obj(json!({"deployed": members, "other": {"a": 1}}))).unwrap();
        let root = store.steps(c).unwrap()[0].id;
        store.start_step(root, p, e).unwrap();
        let names: Vec<String> = (0..12).map(|i| format!("s{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        store.finish_step(root, p, e, end(json!([]), json!([]), &names)).unwrap();
        // Object members added, replaced and removed (not the last one: a tree would move the
        // last member into its place), at the top and below.
        let diffs = [
            json!([{"op": "remove", "path": "/deployed/m03"}]),
            json!([{"op": "add", "path": "/deployed/new1", "value": {"n": 1}}]),
            json!([{"op": "replace", "path": "/deployed/m10/v", "value": "ten"}]),
            json!([{"op": "remove", "path": "/deployed/m20"}, {"op": "add", "path": "/top", "value": [1, 2]}]),
            json!([{"op": "remove", "path": "/other"}]),
            json!([{"op": "add", "path": "/deployed/m05/extra", "value": null}]),
        ];
        for (step, diff) in store.steps(c).unwrap().iter().skip(1).zip(diffs) {
            store.start_step(step.id, p, e).unwrap();
            assert_eq!(store.finish_step(step.id, p, e, end(diff, json!([]), &[])).unwrap().0, StepStatus::Success);
        }
        let running = current(&store.conn(), &store.cache, None, Level::Project, p).unwrap();
        assert_eq!(running.patches, 6, "the versions are stored as patches since the user's snapshot");
        // Another process reads the same text, member order included, as `properties show` there
        // prints it.
        let again = Store::open(dir.path()).unwrap();
        assert_eq!(load(&again.conn(), &again.seal, Level::Project, p, running.version).unwrap().doc.text(), running.doc.text());
        let order: Vec<String> = again.properties(Level::Project, p).unwrap().json["deployed"].as_object().unwrap().keys().take(5).cloned().collect();
        assert_eq!(order, ["m00", "m01", "m02", "m04", "m05"]);
    }

    #[test]
    fn a_version_written_by_another_process_is_seen_and_built_on() {
        let (dir, store, p, e, c) = setup();
        let root = store.steps(c).unwrap()[0].id;
        store.set_properties(Level::Project, p, &obj(json!({"a": 1}))).unwrap();
        let start = store.start_step(root, p, e).unwrap();
        assert_eq!(&*start.project, r#"{"a":1}"#);
        // Another store on the same database (another `opschain` process) writes a version.
        let other = Store::open(dir.path()).unwrap();
        other.set_properties(Level::Project, p, &obj(json!({"a": 1, "b": 2}))).unwrap();
        assert_eq!(store.properties(Level::Project, p).unwrap().json, obj(json!({"a": 1, "b": 2})));
        store.finish_step(root, p, e, end(json!([{"op": "add", "path": "/c", "value": 3}]), json!([]), &[])).unwrap();
        assert_eq!(other.properties(Level::Project, p).unwrap().json, obj(json!({"a": 1, "b": 2, "c": 3})));
        assert_eq!(other.properties(Level::Project, p).unwrap().version, 3);
    }

    #[test]
    fn a_step_starts_with_the_declaring_members_of_the_properties_it_is_given() {
        let (_dir, store, p, e, c) = setup();
        let root = store.steps(c).unwrap()[0].id;
        let project = obj(json!({
            "servers": {"s1": {"ip": "10.0.0.1"}},
            "env": {"A": "1"},
            "opschain": {"config": {"build_secrets": ["set1"]}, "env": {"B": "2"}},
            "deployed": {"opschain": "not a declaration"},
            "files": {"~/f": {"content": "x"}},
        }));
        store.set_properties(Level::Project, p, &project).unwrap();
        assert_eq!(store.declaring_properties(Level::Project, p).unwrap().keys().collect::<Vec<_>>(), ["env", "opschain", "files"]);
        let start = store.start_step(root, p, e).unwrap();
        // The members of PropertiesText::subset, in document order, nothing else.
        let expected = opschain_runner::properties::text::PropertiesText::parse(&start.project).unwrap().subset(&declarations::MEMBERS);
        assert_eq!(start.project_declaring, expected);
        assert_eq!(start.project_declaring.keys().collect::<Vec<_>>(), ["env", "opschain", "files"]);
        assert!(start.environment_declaring.is_empty());
        // A step's diff that changes a declaration is seen by the next step to start, as is a
        // user's edit of the environment.
        store.finish_step(root, p, e, end(json!([{"op": "replace", "path": "/opschain/config/build_secrets/0", "value": "set2"}]), json!([]), &["next"])).unwrap();
        store.set_properties(Level::Environment, e, &obj(json!({"opschain": {"env": {"C": "3"}}, "other": 1}))).unwrap();
        let next = store.steps(c).unwrap()[1].id;
        let start = store.start_step(next, p, e).unwrap();
        assert_eq!(start.project_declaring["opschain"], json!({"config": {"build_secrets": ["set2"]}, "env": {"B": "2"}}));
        assert_eq!(start.environment_declaring, obj(json!({"opschain": {"env": {"C": "3"}}})));
        assert_eq!(store.declaring_properties(Level::Environment, e).unwrap(), start.environment_declaring);
    }

    #[test]
    fn a_database_from_before_patches_is_migrated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
            let old = SCHEMA.replace("    json TEXT,\n    patch TEXT,", "    json TEXT NOT NULL,").replace("    CHECK (json IS NOT NULL OR patch IS NOT NULL),\n", "");
            assert!(!old.contains("patch"), "the old schema has no patch column");
            conn.execute_batch(&old).unwrap();
            conn.execute_batch(
                "INSERT INTO projects (code) VALUES ('p');
                 INSERT INTO properties (level, owner_id, version, json) VALUES ('project', 1, 0, '{}'), ('project', 1, 1, '{\"a\":1}');",
            )
            .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let p = store.ensure_project("p").unwrap();
        assert_eq!(store.properties(Level::Project, p).unwrap().json, obj(json!({"a": 1})));
        store.set_properties(Level::Project, p, &obj(json!({"a": 1, "b": 2}))).unwrap();
        assert_eq!(store.properties_version(Level::Project, p, 1).unwrap(), obj(json!({"a": 1})));
        assert_eq!(store.properties_history(Level::Project, p).unwrap().len(), 3);
        drop(store);
        // Opening it again finds it migrated.
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.properties(Level::Project, p).unwrap().json, obj(json!({"a": 1, "b": 2})));
    }
}
