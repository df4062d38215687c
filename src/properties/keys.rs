//! The keys of the objects open in a walk over a JSON document, kept to refuse a duplicate key:
//! shared by the strict checker ([`super::splice::check_strict`]) and the properties text reader
//! ([`super::text`]).

use std::borrow::Cow;

/// The keys seen so far of the objects open in a walk, to refuse a duplicate: one stack for the
/// whole walk, each object's keys on top of its parents' (a nested object is done before its
/// parent's next key), so that checking allocates nothing per object. An object's first
/// [`Keys::LINEAR`] keys are checked as they come, each against the ones before it (most objects
/// have a handful, and comparing them costs less than hashing); the keys of an object that has
/// more are checked all at once when it closes ([`Keys::close`]), in a table sized for them.
#[derive(Default)]
pub(crate) struct Keys<'de> {
    /// The keys of the open objects, innermost last. Invariant: every open object's keys are
    /// contiguous, from the height [`Keys::open`] gave it.
    stack: Vec<Cow<'de, str>>,
    /// The hash of each key of the large object being checked, in order; reused from one object
    /// to the next.
    hashes: Vec<u64>,
    /// The table of that object's keys: each slot empty or a key's place in its object; reused.
    slots: Vec<u32>,
}

impl<'de> Keys<'de> {
    /// Up to this many keys (16), an object's keys are checked as they come.
    const LINEAR: usize = 16;

    /// Opens an object; returns where its keys begin, for [`Keys::insert`] and [`Keys::close`].
    pub(crate) fn open(&self) -> usize {
        self.stack.len()
    }

    /// Adds `key` to the object opened at `start`; false when the object already has it among its
    /// first [`Keys::LINEAR`] keys (a later duplicate is found by [`Keys::close`]).
    #[inline(always)]
    pub(crate) fn insert(&mut self, start: usize, key: Cow<'de, str>) -> bool {
        let keys = &self.stack[start..];
        if keys.len() < Keys::LINEAR {
            // A loop, not `Iterator::any`: built for size, `any` becomes a call per key.
            for k in keys {
                if k.len() == key.len() && k.as_bytes() == key.as_bytes() {
                    return false;
                }
            }
        }
        self.stack.push(key);
        true
    }

    /// Closes the object opened at `start`, forgetting its keys; `Err` with a key the object has
    /// twice, when it has more than [`Keys::LINEAR`] keys (a smaller object's were checked as they came).
    pub(crate) fn close(&mut self, start: usize) -> Result<(), String> {
        let result = if self.stack.len() - start > Keys::LINEAR { self.duplicate(start) } else { Ok(()) };
        self.stack.truncate(start);
        result
    }

    /// A key the object opened at `start` has twice, if any: its keys are put in an open-addressing
    /// table sized for them (at most two thirds full, probed linearly), and only keys of equal hash
    /// are compared. Written here rather than with std's `HashSet`: the table is built once, at a
    /// size known in advance, from keys whose hashes are kept, and needs no growth, no removal
    /// and no entry API; the agent is built for size, and the set's generic insert (or a sort of
    /// the hashes) costs more (BENCHMARKS.md, "design figures").
    fn duplicate(&mut self, start: usize) -> Result<(), String> {
        use std::hash::BuildHasher;
        const EMPTY: u32 = u32::MAX;
        let keys = &self.stack[start..];
        let size = (keys.len() + keys.len() / 2 + 1).next_power_of_two();
        let mask = size - 1;
        // Seeded per process (and per object), so that no document can be made to collide its
        // keys on purpose; made here, so that a walk without a large object does not pay for it.
        let seed = foldhash::fast::RandomState::default();
        self.hashes.clear();
        self.hashes.extend(keys.iter().map(|k| seed.hash_one(k.as_ref())));
        self.slots.clear();
        self.slots.resize(size, EMPTY);
        for (n, (key, &hash)) in keys.iter().zip(&self.hashes).enumerate() {
            let mut at = hash as usize & mask;
            loop {
                let slot = self.slots[at];
                if slot == EMPTY {
                    self.slots[at] = n as u32;
                    break;
                }
                if self.hashes[slot as usize] == hash && keys[slot as usize] == *key {
                    return Err(key.to_string());
                }
                at = (at + 1) & mask;
            }
        }
        Ok(())
    }
}
