//! Three-way merge of properties: a step's result applied as the step meant it, when the
//! properties changed while it ran.
//!
//! A step starts from one version of the properties (the *base*), and its diff says what it made
//! of them (*ours*); by the time it ends, other steps or a user may have made another version
//! (*theirs*, the current one). Applying the step's diff to the current version by its paths can
//! be silently wrong: an array element removed by index removes whichever element now sits there.
//! So the two edits are merged instead, as `diff3` merges two edits of a text:
//!
//! * where only one side changed a value, that side's value is taken;
//! * objects are merged member by member (a member that both sides added as objects is merged as
//!   if it had been empty);
//! * arrays are merged element-aware: each side's edit is aligned against the base by a shortest
//!   edit script ([`opschain_runner::diff::align`], the alignment the agent's diff uses), and edits of
//!   separate regions are both applied, whatever they did to the indexes of the other; both
//!   sides replacing the same elements one for one are merged element by element;
//! * anything else that both sides changed differently is a conflict, named by its JSON pointer.
//!
//! The result of [`merge`] either holds both edits or is a [`MergeConflict`]: never a value that
//! neither side wrote. Edits that touch at one point of an array (an insertion next to an element
//! the other side removed, say) are a conflict: which of two orders was meant cannot be known.

use std::ops::Range;

use serde_json::{Map, Value};

use opschain_runner::diff::{self, Hunk};

/// Both sides changed the same places differently.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("changed differently by this step and, since it started, by another step or a user: {}", .paths.join(", "))]
pub struct MergeConflict {
    /// The JSON pointers (RFC 6901) of the values both sides changed, in document order.
    pub paths: Vec<String>,
}

/// Merges `ours` and `theirs`, two edits of `base`: the value holding both edits, or the paths
/// where they conflict.
pub fn merge(base: &Value, ours: &Value, theirs: &Value) -> Result<Value, MergeConflict> {
    let mut merger = Merger { path: String::new(), conflicts: Vec::new() };
    let merged = merger.value(Some(base), Some(ours), Some(theirs));
    merger.finish(merged).map(|merged| merged.unwrap_or(Value::Null))
}

/// Merges one member `key` of a document that `ours` and `theirs` may have added or removed
/// (`None`: absent on that side): the merged member (`None`: removed), or the conflicting paths,
/// each starting with the member's own pointer.
pub fn merge_member(key: &str, base: Option<&Value>, ours: Option<&Value>, theirs: Option<&Value>) -> Result<Option<Value>, MergeConflict> {
    let mut merger = Merger { path: String::new(), conflicts: Vec::new() };
    push_key(&mut merger.path, key);
    let merged = merger.value(base, ours, theirs);
    merger.finish(merged)
}

/// One merge: where it is, and the conflicts found so far.
struct Merger {
    /// The JSON pointer of the values being merged.
    path: String,
    /// The pointers of the conflicts found.
    conflicts: Vec<String>,
}

impl Merger {
    fn finish(self, merged: Option<Value>) -> Result<Option<Value>, MergeConflict> {
        if self.conflicts.is_empty() {
            Ok(merged)
        } else {
            Err(MergeConflict { paths: self.conflicts })
        }
    }

    /// Records a conflict at the current path; the value returned in its place is never used.
    fn conflict(&mut self) -> Option<Value> {
        self.conflicts.push(if self.path.is_empty() { "/".to_string() } else { self.path.clone() });
        None
    }

    fn value(&mut self, base: Option<&Value>, ours: Option<&Value>, theirs: Option<&Value>) -> Option<Value> {
        if ours == base || ours == theirs {
            return theirs.cloned();
        }
        if theirs == base {
            return ours.cloned();
        }
        match (base, ours, theirs) {
            (Some(Value::Object(b)), Some(Value::Object(o)), Some(Value::Object(t))) => Some(Value::Object(self.object(b, o, t))),
            (None, Some(Value::Object(o)), Some(Value::Object(t))) => Some(Value::Object(self.object(&Map::new(), o, t))),
            (Some(Value::Array(b)), Some(Value::Array(o)), Some(Value::Array(t))) => Some(Value::Array(self.array(b, o, t))),
            _ => self.conflict(),
        }
    }

    /// Merges objects member by member, in the order of `theirs` (the current document's), then
    /// the members only `ours` added, in its order.
    fn object(&mut self, base: &Map<String, Value>, ours: &Map<String, Value>, theirs: &Map<String, Value>) -> Map<String, Value> {
        let mut merged = Map::new();
        let keys = theirs.keys().chain(ours.keys().filter(|k| !theirs.contains_key(*k))).chain(base.keys().filter(|k| !theirs.contains_key(*k) && !ours.contains_key(*k)));
        for key in keys {
            let len = self.path.len();
            push_key(&mut self.path, key);
            if let Some(value) = self.value(base.get(key), ours.get(key), theirs.get(key)) {
                merged.insert(key.clone(), value);
            }
            self.path.truncate(len);
        }
        merged
    }

    /// Merges arrays region by region: the regions each side changed (its hunks against the
    /// base) that do not overlap are applied both; where a region of each side overlaps, the
    /// two are merged only when they are the same edit, or replace the same elements one for one
    /// (merged element by element).
    fn array(&mut self, base: &[Value], ours: &[Value], theirs: &[Value]) -> Vec<Value> {
        let (mine, other) = (hunks(base, ours), hunks(base, theirs));
        let mut merged = Vec::with_capacity(theirs.len().max(ours.len()));
        let (mut i, mut j, mut at) = (0, 0, 0);
        while i < mine.len() || j < other.len() {
            // A group: the first hunk of either side, and every hunk of either side that
            // overlaps the group, transitively.
            let mine_first = j == other.len() || (i < mine.len() && mine[i].before.start <= other[j].before.start);
            let mut range = if mine_first { mine[i].before.clone() } else { other[j].before.clone() };
            let (from_mine, from_other) = (i, j);
            if mine_first {
                i += 1;
            } else {
                j += 1;
            }
            loop {
                if i < mine.len() && overlaps(&range, &mine[i].before) {
                    range = range.start.min(mine[i].before.start)..range.end.max(mine[i].before.end);
                    i += 1;
                } else if j < other.len() && overlaps(&range, &other[j].before) {
                    range = range.start.min(other[j].before.start)..range.end.max(other[j].before.end);
                    j += 1;
                } else {
                    break;
                }
            }
            merged.extend_from_slice(&base[at..range.start]);
            match (&mine[from_mine..i], &other[from_other..j]) {
                (only, []) => only.iter().for_each(|h| merged.extend_from_slice(&ours[h.after.clone()])),
                ([], only) => only.iter().for_each(|h| merged.extend_from_slice(&theirs[h.after.clone()])),
                ([m], [t]) if m.before == t.before && ours[m.after.clone()] == theirs[t.after.clone()] => merged.extend_from_slice(&ours[m.after.clone()]),
                ([m], [t]) if m.before == t.before && m.after.len() == m.before.len() && t.after.len() == t.before.len() => {
                    for (k, index) in m.before.clone().enumerate() {
                        let len = self.path.len();
                        self.path.push_str(&format!("/{index}"));
                        let value = self.value(Some(&base[index]), Some(&ours[m.after.start + k]), Some(&theirs[t.after.start + k]));
                        self.path.truncate(len);
                        merged.push(value.unwrap_or(Value::Null));
                    }
                }
                _ => {
                    self.conflict();
                }
            }
            at = range.end;
        }
        merged.extend_from_slice(&base[at..]);
        merged
    }
}

/// Whether hunk ranges of the base overlap: two that replace elements when they share one; an
/// insertion (an empty range) when it lies within or at either end of the other.
fn overlaps(a: &Range<usize>, b: &Range<usize>) -> bool {
    if a.is_empty() || b.is_empty() {
        b.start <= a.end && a.start <= b.end
    } else {
        b.start < a.end && a.start < b.end
    }
}

/// The regions of `base` that `edited` changed, left to right: the common prefix and suffix
/// trimmed, the rest aligned by [`diff::align`]; when that needs too many edits, the whole rest
/// is one region.
fn hunks(base: &[Value], edited: &[Value]) -> Vec<Hunk> {
    let prefix = base.iter().zip(edited).take_while(|(b, e)| b == e).count();
    let suffix = base[prefix..].iter().rev().zip(edited[prefix..].iter().rev()).take_while(|(b, e)| b == e).count();
    let (b, e) = (&base[prefix..base.len() - suffix], &edited[prefix..edited.len() - suffix]);
    if b.is_empty() && e.is_empty() {
        return Vec::new();
    }
    match diff::align(b, e, diff::DEFAULT_MAX_ALIGN_EDITS) {
        Some(hunks) => {
            hunks.into_iter().map(|h| Hunk { before: h.before.start + prefix..h.before.end + prefix, after: h.after.start + prefix..h.after.end + prefix }).collect()
        }
        None => vec![Hunk { before: prefix..base.len() - suffix, after: prefix..edited.len() - suffix }],
    }
}

/// Appends `/key` to a JSON pointer, escaped as RFC 6901 says (`~` as `~0`, `/` as `~1`).
fn push_key(path: &mut String, key: &str) {
    path.push('/');
    for c in key.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;
    use std::collections::HashSet;

    #[test]
    fn independent_edits_of_one_array_are_both_kept() {
        // Two parallel steps: one drops "a", the other drops "b". Applying the second diff by
        // index (`remove /servers/1`) after the first would drop "c".
        let base = json!({"servers": ["a", "b", "c"]});
        let merged = merge(&base, &json!({"servers": ["b", "c"]}), &json!({"servers": ["a", "c"]})).unwrap();
        assert_eq!(merged, json!({"servers": ["c"]}));
        // Insertions at both ends, a removal in the middle.
        let base = json!(["a", "b", "c", "d"]);
        assert_eq!(merge(&base, &json!(["x", "a", "b", "c", "d"]), &json!(["a", "b", "d", "y"])).unwrap(), json!(["x", "a", "b", "d", "y"]));
        // Both edited the same element, in different members: merged inside it.
        let base = json!([{"ip": 1, "role": "web"}, {"ip": 2, "role": "db"}]);
        let ours = json!([{"ip": 1, "role": "web"}, {"ip": 3, "role": "db"}]);
        let theirs = json!([{"ip": 1, "role": "web"}, {"ip": 2, "role": "cache"}]);
        assert_eq!(merge(&base, &ours, &theirs).unwrap(), json!([{"ip": 1, "role": "web"}, {"ip": 3, "role": "cache"}]));
    }

    #[test]
    fn overlapping_edits_are_a_conflict_naming_the_paths() {
        let base = json!({"app": {"version": "1.0", "replicas": 2}, "servers": ["a", "b"], "k~/": 1});
        let ours = json!({"app": {"version": "1.1", "replicas": 2}, "servers": ["a", "x"], "k~/": 2});
        let theirs = json!({"app": {"version": "1.2", "replicas": 3}, "servers": ["a", "y"], "k~/": 3});
        let conflict = merge(&base, &ours, &theirs).unwrap_err();
        assert_eq!(conflict.paths, ["/app/version", "/servers/1", "/k~0~1"]);
        assert!(conflict.to_string().contains("/app/version, /servers/1"), "{conflict}");
        // Inserting next to an element the other side removed: the order is not known.
        assert_eq!(merge(&json!(["a", "b"]), &json!(["a", "x", "b"]), &json!(["a"])).unwrap_err().paths, ["/"]);
        // Both removed a member, one changed it: conflict; both set it alike: fine.
        assert_eq!(merge_member("k", Some(&json!(1)), None, Some(&json!(2))).unwrap_err().paths, ["/k"]);
        assert_eq!(merge_member("k", Some(&json!(1)), Some(&json!(5)), Some(&json!(5))).unwrap(), Some(json!(5)));
        // Both added the same member as objects: merged as if it had been empty.
        assert_eq!(merge_member("d", None, Some(&json!({"web": 1})), Some(&json!({"db": 2}))).unwrap(), Some(json!({"db": 2, "web": 1})));
    }

    /// A document whose every scalar is a distinct string, so that an array element is known by
    /// its value: objects and arrays up to three deep.
    fn document() -> impl Strategy<Value = Value> {
        let leaf = Just(Value::Null);
        let tree = leaf.prop_recursive(3, 40, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec(("[abcd]", inner), 0..5).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        });
        prop_oneof![prop::collection::vec(("[abcd]", tree), 0..5).prop_map(|m| Value::Object(m.into_iter().collect()))].prop_map(|mut doc| {
            let mut n = 0;
            number(&mut doc, &mut n);
            doc
        })
    }

    /// Replaces every `null` with a fresh string atom `b<n>` (the base's atoms), and gives every
    /// empty container an atom, so that no two containers are equal.
    fn number(value: &mut Value, n: &mut usize) {
        match value {
            Value::Null => {
                *value = Value::String(format!("b{n}"));
                *n += 1;
            }
            Value::Array(items) if items.is_empty() => items.push(Value::Null),
            Value::Object(members) if members.is_empty() => {
                members.insert("id".into(), Value::Null);
            }
            _ => {}
        }
        match value {
            Value::Array(items) => items.iter_mut().for_each(|v| number(v, n)),
            Value::Object(members) => members.values_mut().for_each(|v| number(v, n)),
            _ => {}
        }
    }

    /// One edit of a document: at a container picked by `pick`, add, remove or replace an object
    /// member, or insert, remove or replace an array element; new values are fresh atoms
    /// `<side><n>`, or objects or arrays of them.
    fn edit(doc: &mut Value, pick: usize, op: u8, side: char, fresh: &mut usize) {
        let mut containers = Vec::new();
        containers_of(doc, &mut Vec::new(), &mut containers);
        let path = &containers[pick % containers.len()];
        let mut target = &mut *doc;
        for step in path {
            target = match step {
                Ok(key) => &mut target[key.as_str()],
                Err(index) => &mut target[*index],
            };
        }
        let mut new = || {
            *fresh += 1;
            match *fresh % 5 == 0 {
                true => json!({"n": format!("{side}{fresh}")}),
                false => Value::String(format!("{side}{fresh}")),
            }
        };
        match target {
            Value::Object(members) => {
                let keys: Vec<String> = members.keys().cloned().collect();
                match (op % 3, keys.is_empty()) {
                    (0, _) | (_, true) => {
                        members.insert(["a", "b", "c", "d", "e"][pick % 5].to_string(), new());
                    }
                    (1, false) => {
                        members.remove(&keys[pick % keys.len()]);
                    }
                    _ => {
                        members.insert(keys[pick % keys.len()].clone(), new());
                    }
                }
            }
            Value::Array(items) => match (op % 3, items.is_empty()) {
                (0, _) | (_, true) => items.insert(pick % (items.len() + 1), new()),
                (1, false) => {
                    items.remove(pick % items.len());
                }
                _ => {
                    let at = pick % items.len();
                    items[at] = new();
                }
            },
            _ => unreachable!("only containers are listed"),
        }
    }

    type Path = Vec<Result<String, usize>>;

    fn containers_of(value: &Value, path: &mut Path, out: &mut Vec<Path>) {
        match value {
            Value::Object(members) => {
                out.push(path.clone());
                for (k, v) in members {
                    path.push(Ok(k.clone()));
                    containers_of(v, path, out);
                    path.pop();
                }
            }
            Value::Array(items) => {
                out.push(path.clone());
                for (i, v) in items.iter().enumerate() {
                    path.push(Err(i));
                    containers_of(v, path, out);
                    path.pop();
                }
            }
            _ => {}
        }
    }

    /// Checks, independently of the merge's own rules, that `merged` holds the edit of `ours` and
    /// of `theirs` to `base`: where one side left a value as it was, `merged` has the other's;
    /// objects member by member; an array of atoms (every element a distinct value) holds
    /// exactly the elements neither side removed plus those either side added, in an order
    /// that keeps the order of each side's own elements.
    fn holds_both(base: Option<&Value>, ours: Option<&Value>, theirs: Option<&Value>, merged: Option<&Value>) -> Result<(), String> {
        let fail = || Err(format!("base {base:?}, ours {ours:?}, theirs {theirs:?}: merged {merged:?}"));
        if ours == base || ours == theirs {
            return if merged == theirs { Ok(()) } else { fail() };
        }
        if theirs == base {
            return if merged == ours { Ok(()) } else { fail() };
        }
        match (base, ours, theirs, merged) {
            (b, Some(Value::Object(o)), Some(Value::Object(t)), Some(Value::Object(m))) if b.is_none_or(Value::is_object) => {
                let empty = Map::new();
                let b = b.and_then(Value::as_object).unwrap_or(&empty);
                for key in b.keys().chain(o.keys()).chain(t.keys()).chain(m.keys()) {
                    holds_both(b.get(key), o.get(key), t.get(key), m.get(key))?;
                }
                Ok(())
            }
            (Some(Value::Array(b)), Some(Value::Array(o)), Some(Value::Array(t)), Some(Value::Array(m))) => {
                let set = |items: &[Value]| items.iter().map(Value::to_string).collect::<HashSet<_>>();
                let (bs, os, ts, ms) = (set(b), set(o), set(t), set(m));
                if [b, o, t, m].iter().zip([&bs, &os, &ts, &ms]).any(|(items, set)| items.len() != set.len()) {
                    // Elements that are not distinct (two empty arrays left by the edits) are not
                    // known by their value: this check does not apply. The generator makes
                    // containers non-empty, so this is rare.
                    return Ok(());
                }
                if !bs.intersection(&os).filter(|e| ts.contains(*e)).all(|e| ms.contains(e)) {
                    return fail();
                }
                let added: HashSet<&String> = os.difference(&bs).chain(ts.difference(&bs)).collect();
                // Besides the elements of a side, the merged array may hold elements both sides
                // replaced in place, merged inside: each is explained by a base element both
                // replaced, a replacement of each side, and holds both of their edits; and each
                // replacement missing from the merged array is explained by one of them.
                let fresh_of = |side: &[Value]| -> Vec<Value> { side.iter().filter(|e| !bs.contains(&e.to_string())).cloned().collect() };
                let (new_o, new_t) = (fresh_of(o), fresh_of(t));
                let replaced: Vec<&Value> = b
                    .iter()
                    .filter(|e| {
                        let e = e.to_string();
                        !os.contains(&e) && !ts.contains(&e)
                    })
                    .collect();
                let merged_inside = |x: &Value, lo: &Value, lt: &Value, me: &Value| holds_both(Some(x), Some(lo), Some(lt), Some(me)).is_ok();
                for me in m {
                    let e = me.to_string();
                    let kept = bs.contains(&e) && os.contains(&e) && ts.contains(&e);
                    if !kept && !added.contains(&e) && !replaced.iter().any(|x| new_o.iter().any(|lo| new_t.iter().any(|lt| merged_inside(x, lo, lt, me)))) {
                        return fail();
                    }
                }
                for lo in new_o.iter().filter(|e| !ms.contains(&e.to_string())) {
                    if !replaced.iter().any(|x| new_t.iter().any(|lt| m.iter().any(|me| merged_inside(x, lo, lt, me)))) {
                        return fail();
                    }
                }
                for lt in new_t.iter().filter(|e| !ms.contains(&e.to_string())) {
                    if !replaced.iter().any(|x| new_o.iter().any(|lo| m.iter().any(|me| merged_inside(x, lo, lt, me)))) {
                        return fail();
                    }
                }
                let order = |side: &[Value]| -> Vec<String> { side.iter().map(Value::to_string).filter(|e| ms.contains(e)).collect() };
                let in_merged = |side: &HashSet<String>| -> Vec<String> { m.iter().map(Value::to_string).filter(|e| side.contains(e)).collect() };
                if order(o) != in_merged(&os) || order(t) != in_merged(&ts) {
                    return fail();
                }
                Ok(())
            }
            _ => fail(),
        }
    }

    #[test]
    fn the_check_of_the_property_test_refuses_what_applying_by_index_gives() {
        // The check must be able to fail: the result of applying the second diff by index.
        let (base, ours, theirs) = (json!(["a", "b", "c"]), json!(["b", "c"]), json!(["a", "c"]));
        assert!(holds_both(Some(&base), Some(&ours), Some(&theirs), Some(&json!(["b"]))).is_err());
        assert!(holds_both(Some(&base), Some(&ours), Some(&theirs), Some(&json!(["c", "b"]))).is_err());
        assert!(holds_both(Some(&base), Some(&ours), Some(&theirs), Some(&json!(["c"]))).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        /// Random documents and random pairs of concurrent edits: either a merge that holds
        /// both edits, or a conflict that names a path; nothing else.
        #[test]
        fn concurrent_edits_merge_holding_both_or_conflict(
            base in document(),
            ours_edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            theirs_edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        ) {
            let mut fresh = 0;
            let mut ours = base.clone();
            for (pick, op) in ours_edits { edit(&mut ours, pick, op, 'o', &mut fresh); }
            let mut theirs = base.clone();
            for (pick, op) in theirs_edits { edit(&mut theirs, pick, op, 't', &mut fresh); }
            match merge(&base, &ours, &theirs) {
                Ok(merged) => {
                    if let Err(e) = holds_both(Some(&base), Some(&ours), Some(&theirs), Some(&merged)) {
                        return Err(TestCaseError::fail(e));
                    }
                    // The same merge seen from the other side.
                    prop_assert_eq!(merge(&base, &theirs, &ours).map(|m| m == merged), Ok(true));
                }
                Err(conflict) => {
                    prop_assert!(!conflict.paths.is_empty());
                    prop_assert!(ours != base && theirs != base && ours != theirs, "a one-sided edit never conflicts");
                    for path in &conflict.paths {
                        prop_assert!(path.starts_with('/'), "{path}");
                    }
                }
            }
        }

        /// Edits inside different members never conflict, and the merge applies both.
        #[test]
        fn edits_of_different_members_always_merge(p in document(), q in document(), a in any::<usize>(), b in any::<usize>(), op in any::<u8>()) {
            let base = json!({"p": p, "q": q});
            let mut fresh = 0;
            let (mut o, mut t) = (base["p"].clone(), base["q"].clone());
            edit(&mut o, a, op, 'o', &mut fresh);
            edit(&mut t, b, op, 't', &mut fresh);
            let ours = json!({"p": o.clone(), "q": base["q"].clone()});
            let theirs = json!({"p": base["p"].clone(), "q": t.clone()});
            prop_assert_eq!(merge(&base, &ours, &theirs), Ok(json!({"p": o, "q": t})));
        }

        /// The same leaf set to two different values is a conflict at that leaf.
        #[test]
        fn the_same_leaf_set_differently_is_a_conflict(base in document(), pick in any::<usize>()) {
            let mut ours = base.clone();
            let mut theirs = base.clone();
            let key = format!("k{pick}");
            ours[key.as_str()] = json!("o");
            theirs[key.as_str()] = json!("t");
            prop_assert_eq!(merge(&base, &ours, &theirs).unwrap_err().paths, vec![format!("/{key}")]);
        }
    }
}
