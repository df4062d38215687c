//! Query parameters: the known ones checked (an unknown filter is an error, not ignored: a
//! misspelt filter would otherwise list everything), numbers parsed, page sizes bounded, and the
//! `links.next` of a page.

use std::collections::HashMap;

use super::jsonapi::ApiError;

/// The largest page (1,000), as OpsChain's API allows.
pub const MAX_PAGE_SIZE: usize = 1000;

/// A request's query parameters, each checked to be known.
#[derive(Debug, Clone)]
pub struct Params(HashMap<String, String>);

impl Params {
    /// `params`, when each is one of `known`; 400 naming the first that is not.
    pub fn new(params: HashMap<String, String>, known: &[&str]) -> Result<Params, ApiError> {
        let mut unknown: Vec<&String> = params.keys().filter(|k| !known.contains(&k.as_str())).collect();
        unknown.sort();
        if let Some(first) = unknown.first() {
            return Err(ApiError::bad_parameter(first, format!("unknown parameter (known: {})", known.join(", "))));
        }
        Ok(Params(params))
    }

    /// The value of `name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The value of `name` as a non-negative integer, if given; 400 when it is not one.
    pub fn number(&self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.parse::<i64>().ok().filter(|n| *n >= 0).map(Some).ok_or_else(|| ApiError::bad_parameter(name, format!("{v:?} is not a number"))),
        }
    }

    /// The link to `path` with these parameters, `set` replacing theirs and `drop` left out.
    pub fn link(&self, path: &str, set: &[(&str, String)], drop: &[&str]) -> String {
        let mut pairs: Vec<(String, String)> =
            self.0.iter().filter(|(k, _)| !drop.contains(&k.as_str()) && !set.iter().any(|(s, _)| s == k)).map(|(k, v)| (k.clone(), v.clone())).collect();
        pairs.extend(set.iter().map(|(k, v)| (k.to_string(), v.clone())));
        pairs.sort();
        let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect();
        format!("{path}?{}", query.join("&"))
    }
}

/// `page[size]`: `default` when absent; 400 when it is 0, not a number, or above
/// [`MAX_PAGE_SIZE`].
pub fn page_size(params: &Params, default: usize) -> Result<usize, ApiError> {
    match params.number("page[size]")? {
        None => Ok(default),
        Some(n) if n >= 1 && n as usize <= MAX_PAGE_SIZE => Ok(n as usize),
        Some(n) => Err(ApiError::bad_parameter("page[size]", format!("{n} is not between 1 and {MAX_PAGE_SIZE}"))),
    }
}

/// `text` percent-encoded for a query string (everything but unreserved characters).
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
