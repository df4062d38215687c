//! RFC 6902 diff of two JSON documents: the patch that turns `before` into `after`.
//!
//! The agent diffs the project and environment properties as they were before an action against
//! what they are after it, and hands the patches on; they are applied with [`json_patch::patch`].
//!
//! # Why this is written by hand
//!
//! The json-patch crate has a `diff`, but it compares arrays index by index, with no alignment:
//! prepending one object to an array of 10,000 objects rewrites every element in place, leaf by
//! leaf, and then adds the last one — 30,001 operations for objects of three fields, where one
//! `add` says it. It also builds the path string of every node it visits, changed or not, which
//! makes it several times slower than `==` on a large document with one change (BENCHMARKS.md
//! compares the two).
//!
//! # Guarantees
//!
//! * **Correct.** Applying the patch to `before`, operation by operation in order, gives a document
//!   equal to `after` as serde_json compares them: object key order is ignored, numbers compare in
//!   their exact form (`1` and `1.0` differ, `0.0` and `-0.0` do not). Every path is valid at the
//!   moment its operation applies.
//! * **Minimal where it matters.** An unchanged subtree yields no operation. A changed scalar, or a
//!   value that changed type, is one `replace`. An object member added or removed is one `add` or
//!   `remove`. One element inserted into or removed from an array is one operation, wherever it is:
//!   arrays are aligned (common prefix and suffix trimmed, then a shortest edit script over the rest,
//!   after Myers), and an element that the alignment keeps in place but that changed is diffed
//!   recursively rather than replaced whole.
//! * **Bounded.** The alignment looks for at most [`DEFAULT_MAX_ALIGN_EDITS`] insertions and
//!   removals (see [`Differ::max_align_edits`]); a region that needs more is compared index by index.
//!   So the work is linear in the size of the documents times that constant, never quadratic in the
//!   length of an array.
//! * **Cheap when little changed.** The walk pairs object members in order (a key lookup only when
//!   the orders differ), prefetches each object's keys and values before comparing them, trims
//!   arrays with an `==` of its own, and keeps the path as a stack of borrowed segments: a JSON
//!   pointer (with `~` written `~0` and `/` written `~1`, RFC 6901) is built only when an operation
//!   is emitted. Diffing two large documents that differ in one leaf costs less than comparing them
//!   with `==`.
//!
//! Only `add`, `remove` and `replace` are emitted; never `move`, `copy` or `test`.

use std::collections::hash_map::{Entry, HashMap, RandomState};
use std::hash::{BuildHasher, Hash, Hasher};
use std::ops::Range;

use json_patch::jsonptr::{PointerBuf, Token};
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation};
use serde_json::{Map, Value};

/// The default for [`Differ::max_align_edits`]: how many insertions plus removals the alignment of
/// one array region may need before the region is compared index by index instead.
///
/// Properties arrays see a handful of elements added or dropped per action; a region that needs
/// more than this many is a rewrite, for which index-by-index comparison is about as small a patch.
/// The alignment costs `O((n + m) * limit)` time and `O(limit^2)` memory for a region of `n` and
/// `m` elements, so this also caps the work.
pub const DEFAULT_MAX_ALIGN_EDITS: usize = 128;

/// Returns the RFC 6902 patch that turns `before` into `after`, with the default [`Differ`].
///
/// See the [module documentation](self) for what the patch is guaranteed to be.
pub fn diff(before: &Value, after: &Value) -> Patch {
    Differ::new().diff(before, after)
}

/// Appends to `ops` the operations that turn `before` into `after`, with the default [`Differ`].
///
/// The same as [`diff`], for a caller that collects the patches of several documents into one
/// buffer, or reuses it. Operations already in `ops` are left as they are.
pub fn diff_into(before: &Value, after: &Value, ops: &mut Vec<PatchOperation>) {
    Differ::new().diff_into(before, after, ops);
}

/// A configured diff. [`Differ::new`] gives the defaults that [`diff`] uses.
#[derive(Clone, Debug)]
pub struct Differ {
    /// The most insertions plus removals one array alignment may need; see
    /// [`Differ::max_align_edits`].
    max_align_edits: usize,
}

impl Default for Differ {
    fn default() -> Differ {
        Differ::new()
    }
}

impl Differ {
    /// A differ with the defaults: alignment up to [`DEFAULT_MAX_ALIGN_EDITS`] edits.
    pub fn new() -> Differ {
        Differ { max_align_edits: DEFAULT_MAX_ALIGN_EDITS }
    }

    /// Sets how many insertions plus removals the alignment of an array region may need before
    /// the region is compared index by index instead. Default: [`DEFAULT_MAX_ALIGN_EDITS`].
    ///
    /// The region is what is left once the common prefix and suffix are trimmed, so a region of
    /// only insertions or only removals never needs the alignment and always yields one operation
    /// per element, whatever this limit. With `0`, every other region is compared index by index
    /// (as `json_patch::diff` does). A higher limit finds smaller patches for arrays that were
    /// shuffled heavily, at `O(limit^2)` memory and `O((n + m) * limit)` time per region.
    pub fn max_align_edits(&mut self, limit: usize) -> &mut Differ {
        self.max_align_edits = limit;
        self
    }

    /// Returns the RFC 6902 patch that turns `before` into `after`.
    pub fn diff(&self, before: &Value, after: &Value) -> Patch {
        let mut ops = Vec::new();
        self.diff_into(before, after, &mut ops);
        Patch(ops)
    }

    /// Appends to `ops` the operations that turn `before` into `after`. Operations already in
    /// `ops` are left as they are.
    pub fn diff_into(&self, before: &Value, after: &Value, ops: &mut Vec<PatchOperation>) {
        let mut walk = Walk { max_align_edits: self.max_align_edits, path: Vec::new(), ops };
        walk.value(before, after);
    }
}

/// One step of a path from the document root: an object member or an array element.
#[derive(Clone, Copy, Debug)]
enum Segment<'a> {
    /// An object member, by its key as written (not yet escaped for a JSON pointer).
    Key(&'a str),
    /// An array element, by its index at the moment the next operation applies.
    Index(usize),
}

/// The state of one diff: where it is, and what it has emitted.
struct Walk<'a, 'o> {
    /// See [`Differ::max_align_edits`].
    max_align_edits: usize,
    /// The path from the root to the pair of values being compared, outermost first. Pushed on the
    /// way down and popped on the way back up, so it is always the path of an operation emitted at
    /// the current node; it becomes a JSON pointer only when one is.
    path: Vec<Segment<'a>>,
    /// Where the operations go, in the order they must be applied.
    ops: &'o mut Vec<PatchOperation>,
}

impl<'a> Walk<'a, '_> {
    /// Emits the operations that turn `before` into `after`, both at [`Walk::path`].
    fn value(&mut self, before: &'a Value, after: &'a Value) {
        if std::ptr::eq(before, after) {
            return;
        }
        match (before, after) {
            (Value::Object(before), Value::Object(after)) => self.object(before, after),
            (Value::Array(before), Value::Array(after)) => self.array(before, after),
            _ if scalar_equal(before, after) => {}
            _ => self.replace(after),
        }
    }

    /// Emits the operations that turn the object `before` into the object `after`: a `remove` per
    /// member gone, an `add` per member new, and the diff of every member in both.
    fn object(&mut self, before: &'a Map<String, Value>, after: &'a Map<String, Value>) {
        let mut kept = 0;
        prefetch_members(before);
        prefetch_members(after);
        for (key, old, new) in members(before, after) {
            self.path.push(Segment::Key(key));
            match new {
                Some(new) => {
                    kept += 1;
                    self.value(old, new);
                }
                None => self.remove(),
            }
            self.path.pop();
        }
        // Every member of `after` that is not one of the `kept` is new. Most often there is none,
        // and this second pass over `after` is skipped.
        if kept < after.len() {
            for (key, new) in after {
                if !before.contains_key(key) {
                    self.path.push(Segment::Key(key));
                    self.add(new);
                    self.path.pop();
                }
            }
        }
    }

    /// Emits the operations that turn the array `before` into the array `after`.
    ///
    /// The common prefix and suffix are trimmed; what is left between them, the middle, is split
    /// into hunks (see [`align`]), each emitted by [`Walk::hunk`] from left to right.
    fn array(&mut self, before: &'a [Value], after: &'a [Value]) {
        let prefix = before.iter().zip(after).take_while(|(old, new)| equal(old, new)).count();
        let (before, after) = (&before[prefix..], &after[prefix..]);
        let suffix = before.iter().rev().zip(after.iter().rev()).take_while(|(old, new)| equal(old, new)).count();
        let before = &before[..before.len() - suffix];
        let after = &after[..after.len() - suffix];
        if before.is_empty() && after.is_empty() {
            return;
        }
        let whole = Hunk { before: 0..before.len(), after: 0..after.len() };
        // A middle of only insertions, only removals, or one element changed in place is one
        // hunk already; anything else is worth aligning.
        let simple = before.is_empty() || after.is_empty() || (before.len() == 1 && after.len() == 1);
        if simple {
            self.hunk(prefix, before, after, whole);
            return;
        }
        match align(before, after, self.max_align_edits) {
            Some(hunks) => {
                for hunk in hunks {
                    self.hunk(prefix, before, after, hunk);
                }
            }
            None => self.hunk(prefix, before, after, whole),
        }
    }

    /// Emits the operations that turn `before[hunk.before]` into `after[hunk.after]`, where both
    /// slices are the middle of an array that starts `offset` elements before them.
    ///
    /// Hunks are emitted from left to right, so when this one applies the array reads
    /// `after[..hunk.after.start]` followed by `before[hunk.before.start..]` (after the prefix):
    /// the first element of the hunk is at index `offset + hunk.after.start`. Elements are paired
    /// in order and each pair is diffed in place; the surplus of `before` is removed, or the
    /// surplus of `after` added.
    fn hunk(&mut self, offset: usize, before: &'a [Value], after: &'a [Value], hunk: Hunk) {
        let removed = &before[hunk.before];
        let added = &after[hunk.after.clone()];
        let start = offset + hunk.after.start;
        let paired = removed.len().min(added.len());
        for (i, (old, new)) in removed.iter().zip(added).enumerate() {
            self.path.push(Segment::Index(start + i));
            self.value(old, new);
            self.path.pop();
        }
        // Each removal shifts the rest down, so the surplus is always at the same index.
        self.path.push(Segment::Index(start + paired));
        for _ in paired..removed.len() {
            self.remove();
        }
        self.path.pop();
        for (i, new) in added.iter().enumerate().skip(paired) {
            self.path.push(Segment::Index(start + i));
            self.add(new);
            self.path.pop();
        }
    }

    /// The JSON pointer of [`Walk::path`]. Keys are escaped as RFC 6901 says (`~` as `~0`, `/` as
    /// `~1`) by [`Token::new`].
    fn pointer(&self) -> PointerBuf {
        PointerBuf::from_tokens(self.path.iter().map(|segment| match *segment {
            Segment::Key(key) => Token::new(key),
            Segment::Index(index) => Token::from(index),
        }))
    }

    /// Emits `add` of `value` at [`Walk::path`].
    fn add(&mut self, value: &Value) {
        let path = self.pointer();
        self.ops.push(PatchOperation::Add(AddOperation { path, value: value.clone() }));
    }

    /// Emits `remove` at [`Walk::path`].
    fn remove(&mut self) {
        let path = self.pointer();
        self.ops.push(PatchOperation::Remove(RemoveOperation { path }));
    }

    /// Emits `replace` with `value` at [`Walk::path`].
    fn replace(&mut self, value: &Value) {
        let path = self.pointer();
        self.ops.push(PatchOperation::Replace(ReplaceOperation { path, value: value.clone() }));
    }
}

/// Whether `a == b`, as serde_json's `==` says, found with fewer key lookups.
///
/// The same comparison, except that object members are paired by [`equal_members`]: when both
/// objects list their keys in the same order, as a document and an edited copy of it do, a
/// member's partner is found by comparing its key with the next key of the other object rather
/// than by hashing it. Each object's members are prefetched first ([`prefetch_members`]).
fn equal(a: &Value, b: &Value) -> bool {
    if std::ptr::eq(a, b) {
        return true;
    }
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            if a.len() != b.len() {
                return false;
            }
            prefetch_members(a);
            prefetch_members(b);
            equal_members(a, b)
        }
        (Value::Array(a), Value::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| equal(x, y)),
        _ => scalar_equal(a, b),
    }
}

/// Whether two objects with as many members each are equal, as `==` says.
///
/// Members are paired in order while their keys match; from the first that does not, the rest of
/// `a` is looked up in `b` by key. That is enough: the members paired in order have the same keys
/// in both, so the rest of `a` can only be in the rest of `b`, and with as many members and unique
/// keys, finding each one is finding all of `b`. Written as a plain loop rather than with
/// [`members`], whose iterator costs more per member at opt-level z.
fn equal_members(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    let mut rest = a.iter();
    let mut in_order = b.iter();
    for (key, x) in rest.by_ref() {
        match in_order.next() {
            Some((other, y)) if same_bytes(key.as_bytes(), other.as_bytes()) => {
                if !equal(x, y) {
                    return false;
                }
            }
            _ => return b.get(key).is_some_and(|y| equal(x, y)) && equal_by_key(rest, b),
        }
    }
    true
}

/// Whether every member of `rest` is in `b`, under its key, with an equal value.
fn equal_by_key(rest: serde_json::map::Iter<'_>, b: &Map<String, Value>) -> bool {
    for (key, x) in rest {
        if !b.get(key).is_some_and(|y| equal(x, y)) {
            return false;
        }
    }
    true
}

/// Asks the CPU to start loading, for every member of `map`, the bytes of its key and the first
/// bytes its value points to, without waiting for them.
///
/// Why: comparing two objects is a chain of dependent loads per member (the member, then its key's
/// separately allocated bytes, then what its value points to), and the members' comparisons are
/// too long for the CPU to run ahead into the next member on its own. Each of those loads is
/// usually a cache miss on a large document, and a walk that meets them as it goes waits for them
/// one at a time. Issued here, all at once, they overlap: the members themselves are contiguous, so reading their key
/// and value pointers is cheap, and the misses that follow are paid in parallel.
#[inline(always)] // opt-level z would otherwise call it, and the loop is a few instructions
fn prefetch_members(map: &Map<String, Value>) {
    for (key, value) in map {
        prefetch(key.as_ptr());
        prefetch_value(value);
    }
}

/// Asks the CPU to start loading what `value` points to, if anything: a string's bytes, an
/// array's first element, an object's first member. See [`prefetch_members`] for why.
#[inline(always)]
fn prefetch_value(value: &Value) {
    match value {
        Value::String(s) => prefetch(s.as_ptr()),
        Value::Array(items) => prefetch(items.as_ptr()),
        // Only the member's address is taken here; nothing is read.
        Value::Object(map) => {
            if let Some((first, _)) = map.iter().next() {
                prefetch(first);
            }
        }
        _ => {}
    }
}

/// A hint that the memory at `p` will be read soon: a software prefetch into every cache level.
/// It never faults and never changes what the program computes, whatever `p` is.
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` is a hint; it does not dereference `p` in the sense of the memory
    // model, cannot fault, and SSE is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Whether two values that are not both objects or both arrays are equal, as `==` says, with
/// strings compared by [`same_bytes`].
fn scalar_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(a), Value::String(b)) => same_bytes(a.as_bytes(), b.as_bytes()),
        _ => a == b,
    }
}

/// Whether `a == b`, for the short strings (keys, names, addresses) that make up most of a
/// properties document. Written by hand because `==` on slices calls the C library's `memcmp`,
/// whose entry and size dispatch cost more than the comparison itself at these lengths, and a diff
/// makes one such comparison per member (BENCHMARKS.md has the share of a diff it took). Eight
/// bytes at a time, the last (partial) word as an overlapping load.
#[inline(always)] // the agent is built for size (opt-level z), which would otherwise call it
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    // SAFETY: every read is of 8 bytes starting at an offset `i` with `i + 8 <= n`, inside both
    // slices (equal lengths); `read_unaligned` allows any alignment.
    unsafe {
        let word = |p: *const u8, i: usize| std::ptr::read_unaligned(p.add(i) as *const u64);
        if n >= 8 {
            let mut i = 0;
            while i + 8 < n {
                if word(pa, i) != word(pb, i) {
                    return false;
                }
                i += 8;
            }
            return word(pa, n - 8) == word(pb, n - 8);
        }
        // Under 8 bytes: at most one 4-byte pair (overlapping) and one 2-byte and 1-byte check.
        let mut i = 0;
        if n >= 4 {
            let w = |p: *const u8, i: usize| std::ptr::read_unaligned(p.add(i) as *const u32);
            return w(pa, 0) == w(pb, 0) && w(pa, n - 4) == w(pb, n - 4);
        }
        while i < n {
            if *pa.add(i) != *pb.add(i) {
                return false;
            }
            i += 1;
        }
        true
    }
}

/// The members of `before`, in order, each with the value of `after` under the same key, if any.
fn members<'a>(before: &'a Map<String, Value>, after: &'a Map<String, Value>) -> Members<'a> {
    Members { before: before.iter(), after, next: after.iter().peekable() }
}

/// The iterator of [`members`].
///
/// Keys are looked up in `after` by hashing only when the next member of `after` in order does not
/// have the key: for two objects with their keys in the same order, each member costs one string
/// comparison. A key missing from `after`, or a key that `after` lists elsewhere, costs one lookup
/// and does not move `next`, so the pairing picks up again after a member added or removed.
struct Members<'a> {
    /// The members of `before` still to pair.
    before: serde_json::map::Iter<'a>,
    /// Where keys are looked up when `next` has another key.
    after: &'a Map<String, Value>,
    /// The member of `after` that the next member of `before` most likely pairs with: the one
    /// after the last member paired in order.
    next: std::iter::Peekable<serde_json::map::Iter<'a>>,
}

impl<'a> Iterator for Members<'a> {
    type Item = (&'a String, &'a Value, Option<&'a Value>);

    fn next(&mut self) -> Option<Self::Item> {
        let (key, old) = self.before.next()?;
        // Keys are unique in `after`, so a match here is the only member of `after` with this key.
        if let Some(&(next_key, new)) = self.next.peek() {
            if same_bytes(next_key.as_bytes(), key.as_bytes()) {
                self.next.next();
                return Some((key, old, Some(new)));
            }
        }
        Some((key, old, self.after.get(key)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.before.size_hint()
    }
}

/// A region of an edit script with no kept element inside: `before[self.before]` is to become
/// `after[self.after]`. Either range may be empty, not both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hunk {
    /// The elements of `before` the region replaces (empty: an insertion before this index).
    pub before: Range<usize>,
    /// The elements of `after` that replace them (empty: a removal).
    pub after: Range<usize>,
}

/// Aligns `before` with `after` by a shortest edit script of insertions and removals (Myers,
/// "An O(ND) Difference Algorithm and Its Variations", 1986) and returns the hunks between the
/// elements it keeps, from left to right. Two hunks are always separated by at least one kept
/// element. Returns `None` when the script needs more than `max_edits` insertions plus removals.
///
/// Elements are compared as serde_json compares them. The controller's three-way merge of
/// properties aligns arrays with it, as the diff does.
pub fn align(before: &[Value], after: &[Value], max_edits: usize) -> Option<Vec<Hunk>> {
    // Every script needs at least the difference in length; don't hash anything to learn that.
    if before.len().abs_diff(after.len()) > max_edits {
        return None;
    }
    let (before, after) = intern(before, after);
    let steps = shortest_edit_script(&before, &after, max_edits)?;
    let mut hunks: Vec<Hunk> = Vec::new();
    for step in steps {
        let (x, y) = (step.x, step.y);
        let (to_x, to_y) = if step.insert { (x, y + 1) } else { (x + 1, y) };
        match hunks.last_mut() {
            Some(hunk) if hunk.before.end == x && hunk.after.end == y => {
                hunk.before.end = to_x;
                hunk.after.end = to_y;
            }
            _ => hunks.push(Hunk { before: x..to_x, after: y..to_y }),
        }
    }
    Some(hunks)
}

/// Numbers the values of `before` and `after` so that two get the same number if and only if they
/// are equal, and returns the numbers in the order of the values. The edit script then compares
/// integers, however large the elements.
///
/// Values are bucketed by a fingerprint, and a value is compared with `==` only against the
/// distinct values already seen with the same fingerprint: each element is hashed once and, unless
/// fingerprints collide, compared in full at most once. The fingerprint is keyed at random per call,
/// so no document can be crafted to make them collide.
fn intern<'v>(before: &'v [Value], after: &'v [Value]) -> (Vec<usize>, Vec<usize>) {
    let keys = RandomState::new();
    // The first value (as its number) seen with each fingerprint.
    let mut first: HashMap<u64, usize> = HashMap::new();
    // Per number: the value it stands for, and the next number with the same fingerprint.
    let mut distinct: Vec<(&'v Value, Option<usize>)> = Vec::new();
    let mut number = |value: &'v Value| -> usize {
        let fresh = distinct.len();
        match first.entry(fingerprint(value, &keys)) {
            Entry::Vacant(entry) => {
                entry.insert(fresh);
            }
            Entry::Occupied(entry) => {
                let mut seen = *entry.get();
                loop {
                    let (other, next) = distinct[seen];
                    if equal(other, value) {
                        return seen;
                    }
                    match next {
                        Some(next) => seen = next,
                        None => break,
                    }
                }
                distinct[seen].1 = Some(fresh);
            }
        }
        distinct.push((value, None));
        fresh
    };
    let before = before.iter().map(&mut number).collect();
    let after = after.iter().map(&mut number).collect();
    (before, after)
}

/// A hash of `value` consistent with serde_json's `==`: equal values have equal fingerprints.
///
/// Objects hash the wrapping sum of their members' hashes, since equal objects may list their
/// members in different orders; numbers hash as [`serde_json::Number`] does (`0.0` like `-0.0`).
fn fingerprint(value: &Value, keys: &RandomState) -> u64 {
    let mut hasher = keys.build_hasher();
    feed(value, keys, &mut hasher);
    hasher.finish()
}

/// Feeds `value` to `hasher`; see [`fingerprint`].
fn feed(value: &Value, keys: &RandomState, hasher: &mut impl Hasher) {
    match value {
        Value::Null => hasher.write_u8(0),
        Value::Bool(b) => {
            hasher.write_u8(1);
            b.hash(hasher);
        }
        Value::Number(n) => {
            hasher.write_u8(2);
            n.hash(hasher);
        }
        Value::String(s) => {
            hasher.write_u8(3);
            s.hash(hasher);
        }
        Value::Array(items) => {
            hasher.write_u8(4);
            hasher.write_usize(items.len());
            for item in items {
                feed(item, keys, hasher);
            }
        }
        Value::Object(members) => {
            hasher.write_u8(5);
            hasher.write_usize(members.len());
            let sum = members.iter().fold(0u64, |sum, (key, member)| {
                let mut one = keys.build_hasher();
                key.hash(&mut one);
                feed(member, keys, &mut one);
                sum.wrapping_add(one.finish())
            });
            hasher.write_u64(sum);
        }
    }
}

/// One insertion or removal of an edit script, at point `(x, y)` of the edit graph: `x` elements of
/// `before` and `y` of `after` are behind it. An insertion inserts `after[y]`; a removal removes
/// `before[x]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Step {
    x: usize,
    y: usize,
    insert: bool,
}

/// The insertions and removals of a shortest edit script from `before` to `after`, in order, or
/// `None` if it has more than `max_edits` of them.
///
/// Myers' greedy forward search: round `d` extends, on every diagonal `k = x - y` it can reach, the
/// furthest path with `d` edits, then follows equal elements (a snake) as far as they go. The first
/// round that reaches `(n, m)` gives the length of the script; the furthest points of each round are
/// kept (`d + 1` of them for round `d`) to walk back from `(n, m)` to `(0, 0)`.
///
/// The search does not keep paths inside the grid: a path may step past `x = n` or `y = m` on a
/// diagonal that does not end at `(n, m)`. That is harmless, as the paper shows: a path that left
/// the grid can't come back (steps only increase `x` and `y`, and snakes stay inside), and one that
/// reaches past `(n, m)` costs more than the one found first; so the walk back only visits points
/// inside the grid.
fn shortest_edit_script(before: &[usize], after: &[usize], max_edits: usize) -> Option<Vec<Step>> {
    let (n, m) = (before.len() as isize, after.len() as isize);
    let limit = max_edits.min(before.len() + after.len()) as isize;
    // `furthest[(k + offset)]` is the furthest x reached on diagonal k, for k in -limit-1..=limit+1.
    let offset = limit + 1;
    let mut furthest = vec![0isize; (2 * limit + 3) as usize];
    // Round d's furthest x on diagonals -d, -d + 2, ..., d, at `rounds[d * (d + 1) / 2..]`.
    let mut rounds: Vec<isize> = Vec::new();
    let mut edits = None;
    'search: for d in 0..=limit {
        for k in (-d..=d).step_by(2) {
            let at = (k + offset) as usize;
            let mut x = if k == -d || (k != d && furthest[at - 1] < furthest[at + 1]) { furthest[at + 1] } else { furthest[at - 1] + 1 };
            let mut y = x - k;
            while x < n && y < m && before[x as usize] == after[y as usize] {
                x += 1;
                y += 1;
            }
            furthest[at] = x;
            if x >= n && y >= m {
                edits = Some(d);
                break 'search;
            }
            rounds.push(x);
        }
    }
    let edits = edits?;
    let round = |d: isize, k: isize| rounds[(d * (d + 1) / 2 + (k + d) / 2) as usize];
    let mut steps = Vec::with_capacity(edits as usize);
    let (mut x, mut y) = (n, m);
    for d in (1..=edits).rev() {
        let k = x - y;
        let insert = k == -d || (k != d && round(d - 1, k - 1) < round(d - 1, k + 1));
        let from = if insert { k + 1 } else { k - 1 };
        x = round(d - 1, from);
        y = x - from;
        steps.push(Step { x: x as usize, y: y as usize, insert });
    }
    steps.reverse();
    Some(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// Small documents from a small alphabet, so that two of them are often equal in part.
    fn document() -> impl Strategy<Value = Value> {
        let scalar = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (0i64..3).prop_map(Value::from),
            Just(json!(0.0)),
            Just(json!(-0.0)),
            "[ab]{0,1}".prop_map(Value::String),
        ];
        scalar.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(("[abc]", inner), 0..4).prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    /// The same document with the members of every object rotated left by `by`.
    fn rotated(doc: &Value, by: usize) -> Value {
        match doc {
            Value::Array(items) => Value::Array(items.iter().map(|v| rotated(v, by)).collect()),
            Value::Object(members) => {
                let mut members: Vec<_> = members.iter().collect();
                if !members.is_empty() {
                    let len = members.len();
                    members.rotate_left(by % len);
                }
                Value::Object(members.into_iter().map(|(k, v)| (k.clone(), rotated(v, by))).collect())
            }
            scalar => scalar.clone(),
        }
    }

    proptest! {
        #[test]
        fn equal_agrees_with_eq(a in document(), b in document(), by in 0usize..4) {
            prop_assert_eq!(equal(&a, &b), a == b);
            let c = rotated(&a, by);
            prop_assert!(equal(&a, &c));
            prop_assert_eq!(equal(&b, &c), b == c);
        }

        #[test]
        fn members_pairs_each_key_with_its_value(
            a in prop::collection::vec(("[a-e]", 0i64..2), 0..6),
            b in prop::collection::vec(("[a-e]", 0i64..2), 0..6),
        ) {
            let a: Map<String, Value> = a.into_iter().map(|(k, v)| (k, v.into())).collect();
            let b: Map<String, Value> = b.into_iter().map(|(k, v)| (k, v.into())).collect();
            let paired: Vec<_> = members(&a, &b).map(|(k, x, y)| (k.clone(), x.clone(), y.cloned())).collect();
            let expected: Vec<_> = a.iter().map(|(k, x)| (k.clone(), x.clone(), b.get(k).cloned())).collect();
            prop_assert_eq!(paired, expected);
        }
    }

    proptest! {
        /// Two objects of the same members, with the keys of `b` partly in `a`'s order and partly
        /// not (two members swapped), and perhaps one value or key changed: `equal_members` pairs
        /// the first part in order and looks the rest up, and must agree with `==` either way.
        #[test]
        fn equal_members_agrees_with_eq(
            a in prop::collection::vec(("[a-h]", 0i64..2), 0..8),
            swap in (0usize..8, 0usize..8),
            change in prop::option::of((0usize..8, prop::bool::ANY)),
        ) {
            let a: Map<String, Value> = a.into_iter().map(|(k, v)| (k, v.into())).collect();
            let mut members: Vec<(String, Value)> =
                a.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            if !members.is_empty() {
                let n = members.len();
                members.swap(swap.0 % n, swap.1 % n);
                if let Some((at, rename)) = change {
                    let member = &mut members[at % n];
                    if rename {
                        member.0.push('z');
                    } else {
                        member.1 = json!("changed");
                    }
                }
            }
            let b: Map<String, Value> = members.into_iter().collect();
            prop_assume!(a.len() == b.len());
            prop_assert_eq!(equal_members(&a, &b), a == b);
            prop_assert_eq!(equal_members(&b, &a), a == b);
        }
    }

    #[test]
    fn same_bytes_agrees_with_eq_at_every_length_and_position() {
        for n in 0..40usize {
            let a: Vec<u8> = (0..n as u8).map(|i| i.wrapping_mul(37)).collect();
            assert!(same_bytes(&a, &a.clone()), "equal, length {n}");
            for i in 0..n {
                let mut b = a.clone();
                b[i] ^= 0x80;
                assert!(!same_bytes(&a, &b), "length {n}, differing at {i}");
            }
            let mut longer = a.clone();
            longer.push(0);
            assert!(!same_bytes(&a, &longer), "lengths {n} and {}", n + 1);
        }
    }

    fn apply(before: &Value, patch: &Patch) -> Value {
        let mut doc = before.clone();
        if let Err(err) = json_patch::patch(&mut doc, patch) {
            panic!("patch {patch:?} does not apply to {before}: {err}");
        }
        doc
    }

    fn ops_json(patch: &Patch) -> Value {
        match serde_json::to_value(patch) {
            Ok(ops) => ops,
            Err(err) => panic!("patch does not serialize: {err}"),
        }
    }

    #[test]
    fn equal_documents_give_no_op() {
        let doc = json!({"a": [1, {"b": null}], "c": "d"});
        assert!(diff(&doc, &doc).0.is_empty());
        assert!(diff(&doc, &doc.clone()).0.is_empty());
        let reordered = json!({"c": "d", "a": [1, {"b": null}]});
        assert!(diff(&doc, &reordered).0.is_empty());
    }

    #[test]
    fn scalar_change_is_one_replace() {
        let before = json!({"a": {"b": [1, 2, 3]}});
        let after = json!({"a": {"b": [1, 5, 3]}});
        let patch = diff(&before, &after);
        assert_eq!(ops_json(&patch), json!([{"op": "replace", "path": "/a/b/1", "value": 5}]));
    }

    #[test]
    fn numbers_compare_in_exact_form() {
        let patch = diff(&json!([1]), &json!([1.0]));
        assert_eq!(ops_json(&patch), json!([{"op": "replace", "path": "/0", "value": 1.0}]));
        assert!(diff(&json!([0.0]), &json!([-0.0])).0.is_empty());
    }

    #[test]
    fn root_of_another_type_is_replaced() {
        let patch = diff(&json!({"a": 1}), &json!([1]));
        assert_eq!(ops_json(&patch), json!([{"op": "replace", "path": "", "value": [1]}]));
    }

    #[test]
    fn members_added_and_removed() {
        let before = json!({"gone": 1, "kept": 2});
        let after = json!({"kept": 2, "new": 3});
        let patch = diff(&before, &after);
        assert_eq!(
            ops_json(&patch),
            json!([
                {"op": "remove", "path": "/gone"},
                {"op": "add", "path": "/new", "value": 3}
            ])
        );
    }

    #[test]
    fn keys_are_escaped() {
        let before = json!({"a/b": {"c~d": 1}, "": 0});
        let after = json!({"a/b": {"c~d": 2}, "": 1});
        let patch = diff(&before, &after);
        assert_eq!(
            ops_json(&patch),
            json!([
                {"op": "replace", "path": "/a~1b/c~0d", "value": 2},
                {"op": "replace", "path": "/", "value": 1}
            ])
        );
        assert_eq!(apply(&before, &patch), after);
    }

    #[test]
    fn one_insertion_anywhere_is_one_add() {
        let before: Vec<Value> = (0..20).map(|i| json!({"id": i})).collect();
        for at in 0..=before.len() {
            let mut after = before.clone();
            after.insert(at, json!({"id": "new"}));
            let (before, after) = (Value::Array(before.clone()), Value::Array(after));
            let patch = diff(&before, &after);
            assert_eq!(ops_json(&patch), json!([{"op": "add", "path": format!("/{at}"), "value": {"id": "new"}}]));
        }
    }

    #[test]
    fn one_removal_anywhere_is_one_remove() {
        let before: Vec<Value> = (0..20).map(|i| json!({"id": i})).collect();
        for at in 0..before.len() {
            let mut after = before.clone();
            after.remove(at);
            let (before, after) = (Value::Array(before.clone()), Value::Array(after));
            let patch = diff(&before, &after);
            assert_eq!(ops_json(&patch), json!([{"op": "remove", "path": format!("/{at}")}]));
        }
    }

    #[test]
    fn duplicate_elements_are_trimmed_correctly() {
        // Prefix and suffix overlap when the inserted element equals its neighbours.
        let before = json!([1, 1, 1]);
        let after = json!([1, 1, 1, 1]);
        let patch = diff(&before, &after);
        assert_eq!(patch.0.len(), 1);
        assert_eq!(apply(&before, &patch), after);
    }

    #[test]
    fn element_changed_in_place_is_diffed_recursively() {
        let before = json!([{"id": 1, "port": 80}, {"id": 2, "port": 80}, {"id": 3}]);
        let after = json!([{"id": 0}, {"id": 1, "port": 80}, {"id": 2, "port": 81}]);
        let patch = diff(&before, &after);
        assert_eq!(
            ops_json(&patch),
            json!([
                {"op": "add", "path": "/0", "value": {"id": 0}},
                {"op": "replace", "path": "/2/port", "value": 81},
                {"op": "remove", "path": "/3"}
            ])
        );
        assert_eq!(apply(&before, &patch), after);
    }

    #[test]
    fn edits_on_both_sides_of_kept_elements() {
        let before = json!(["a", "b", "c", "d", "e", "f"]);
        let after = json!(["x", "b", "c", "y", "z", "e", "w"]);
        let patch = diff(&before, &after);
        assert_eq!(apply(&before, &patch), after);
        // a->x, d->y, insert z, f->w.
        assert_eq!(patch.0.len(), 4, "{}", ops_json(&patch));
    }

    #[test]
    fn over_the_limit_falls_back_to_index_by_index() {
        let before = json!([1, 2, 3, 4, 5, 6]);
        let after = json!([0, 2, 3, 4, 5, 7, 8]);
        // Aligned: 1->0, 6->7, add 8. Index by index it is the same, as no element shifted.
        let mut differ = Differ::new();
        differ.max_align_edits(0);
        let patch = differ.diff(&before, &after);
        assert_eq!(apply(&before, &patch), after);
        assert_eq!(patch.0.len(), 3);

        // A shift needs the alignment: with it, one removal; without, a rewrite.
        let before = json!([0, 1, 2, 3, 4, 5, 9]);
        let after = json!([1, 2, 3, 4, 5, 8]);
        assert_eq!(diff(&before, &after).0.len(), 2);
        let patch = differ.diff(&before, &after);
        assert_eq!(apply(&before, &patch), after);
        assert_eq!(patch.0.len(), 7);
    }

    #[test]
    fn diff_into_appends() {
        let mut ops = Vec::new();
        diff_into(&json!({"a": 1}), &json!({"a": 2}), &mut ops);
        diff_into(&json!([]), &json!([true]), &mut ops);
        assert_eq!(
            ops_json(&Patch(ops)),
            json!([
                {"op": "replace", "path": "/a", "value": 2},
                {"op": "add", "path": "/0", "value": true}
            ])
        );
    }

    #[test]
    fn edit_script_is_shortest() {
        // Myers' paper's example: ABCABBA to CBABAC takes 5 edits.
        let letters = |s: &str| s.bytes().map(usize::from).collect::<Vec<_>>();
        let steps = shortest_edit_script(&letters("ABCABBA"), &letters("CBABAC"), 100);
        assert_eq!(steps.map(|s| s.len()), Some(5));
        assert_eq!(shortest_edit_script(&letters("ABCABBA"), &letters("CBABAC"), 4), None);
        assert_eq!(shortest_edit_script(&[], &[], 0), Some(vec![]));
    }

    #[test]
    fn fingerprint_agrees_with_equality() {
        let keys = RandomState::new();
        let a = json!({"x": [1, 0.0, "s"], "y": {"p": null, "q": true}});
        let b = json!({"y": {"q": true, "p": null}, "x": [1, -0.0, "s"]});
        assert_eq!(a, b);
        assert_eq!(fingerprint(&a, &keys), fingerprint(&b, &keys));
        let (before, after) = intern(&[json!(1), json!({"a": 1, "b": 2}), json!(1.0)], &[json!({"b": 2, "a": 1}), json!(1), json!("1")]);
        assert_eq!(before, vec![0, 1, 2]);
        assert_eq!(after, vec![1, 0, 3]);
    }
}
