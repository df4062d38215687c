//! Properties documents edited, patched and compared as JSON text, by splicing: the cost of an
//! edit follows the part of the document it touches, not the document's size.
//!
//! A properties document of a few MB (an inventory of servers) is the common case, and most steps
//! change one key of it. Parsing it into a `serde_json::Value` tree costs about ten times its size
//! in memory and tens of milliseconds; serialising it again as much. Here a document stays text:
//!
//! * [`set`] and [`remove`] edit one property in place (the action scripts' `property set` and
//!   `property remove`). The document is scanned once, and its grammar checked, by a byte scanner that builds
//!   nothing; only the objects on the property's path are split into members, and only their keys
//!   are checked for duplicates. The rest of the text is copied as it is.
//! * [`diff`] turns two versions of a document into the RFC 6902 patch between them. Members whose
//!   text is byte for byte the same are equal and skipped (the unchanged inventory); objects whose
//!   text differs are split and compared member by member; what is left, small, is parsed strictly
//!   and diffed by [`crate::diff`]. So every byte of `after` is either the same as a byte of
//!   `before` (which is valid) or checked strictly: an invalid `after` is refused as
//!   [`crate::json::StrictValue`] would refuse it.
//! * [`diff_known`] does the same for a `before` whose top-level members are known, parsing only
//!   the bytes between the two texts' common prefix and suffix.
//! * [`Document::patch`] applies an RFC 6902 patch whose operations add, replace or remove object
//!   members (what steps' diffs are) to the text of the controller's current properties; it
//!   declines (`None`) anything else, and any operation that would fail, so that the caller
//!   applies `json_patch::patch` to a tree instead and gets its exact result or error.
//! * [`check_strict`] and [`check_members`] check a document as strictly as the strict parser,
//!   in one pass and building nothing: what the agent reads its step context with.
//!
//! The scanner accepts what RFC 8259 accepts; it does not refuse numbers too large for an `f64`
//! (the strict parser does) in the parts it only skips.
//!
//! One concept a file: `scan` (the byte scanner), `strict` (the strict checker), `edit` (set and
//! remove, on one key-path walk), `diff` (two texts compared) and `document` ([`Document::patch`]).
//! The key stack that refuses duplicate keys is `properties::keys`, shared with [`super::text`].

mod diff;
mod document;
mod edit;
mod scan;
mod strict;

pub use self::diff::{diff, diff_known, diff_known_rest};
pub use self::document::Document;
pub use self::edit::{remove, remove_splice, set, set_splice, Splice};
pub use self::scan::{skim_member, Span};
pub use self::strict::{check_members, check_strict, Found};

/// Why a document could not be scanned or edited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpliceError {
    /// The text is not JSON.
    #[error("invalid JSON at byte {at}: expected {expected}")]
    Syntax {
        /// The byte offset of the problem.
        at: usize,
        /// What the scanner expected there.
        expected: &'static str,
    },
    /// An object on the edited path has the same key twice.
    #[error("duplicate key {key:?} in the object at byte {at}")]
    DuplicateKey {
        /// The key.
        key: String,
        /// The byte offset of the object.
        at: usize,
    },
    /// The document is valid JSON but not an object.
    #[error("the document is not a JSON object")]
    NotAnObject,
    /// A value on the path of an edit is not an object: `depth` counts the path's keys, from 0,
    /// up to and including the one whose value it is.
    #[error("the value of key {depth} of the path is not an object")]
    NotAnObjectOnPath {
        /// The index of the key whose value is not an object.
        depth: usize,
    },
    /// A parent of the property is missing (an RFC 6902 `add` does not create parents).
    #[error("a parent of the property is missing")]
    MissingParent,
    /// The document is not UTF-8 text.
    #[error("the document is not UTF-8 text")]
    Utf8 {
        /// The cause.
        #[source]
        source: std::str::Utf8Error,
    },
    /// A value to insert is not valid JSON (a caller's bug: values are serialised by serde_json).
    #[error("the value is not valid JSON")]
    Value,
}
