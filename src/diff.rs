//! RFC 6902 diff of two JSON documents: the patch that turns `before` into `after`.
//!
//! Interim: delegates to the json-patch crate. To be replaced by a minimal diff (see issue 2 item 7).

use serde_json::Value;

/// Returns the RFC 6902 patch that turns `before` into `after`.
pub fn diff(before: &Value, after: &Value) -> json_patch::Patch {
    json_patch::diff(before, after)
}
