//! Secret masking of everything the agent prints.
//!
//! Interim API (to be completed): a [`Masker`] built from the secret values, one-shot masking of a
//! string, and a [`MaskStream`] per output stream that masks a byte stream fed in arbitrary chunks.

use std::borrow::Cow;

/// What a masked secret is replaced by.
pub const MASK: &str = "****";

/// The set of secret values to hide. Cheap to share behind an `Arc`.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    secrets: Vec<String>,
}

impl Masker {
    /// Builds a masker for these secret values.
    pub fn new<I, S>(secrets: I) -> Masker
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let secrets = secrets.into_iter().map(Into::into).filter(|s| !s.is_empty()).collect();
        Masker { secrets }
    }

    /// True when there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Masks every secret in `text`.
    pub fn mask<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = Cow::Owned(out.replace(s.as_str(), MASK));
            }
        }
        out
    }

    /// A streaming masker for one output stream.
    pub fn stream(&self) -> MaskStream {
        MaskStream { masker: self.clone(), carry: Vec::new() }
    }
}

/// Masks one byte stream fed in chunks of any size.
#[derive(Debug)]
pub struct MaskStream {
    masker: Masker,
    carry: Vec<u8>,
}

impl MaskStream {
    /// Feeds `input`; appends to `out` what can be released now.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        self.carry.extend_from_slice(input);
        self.flush(out);
    }

    /// Releases everything held back (call at end of stream or after a short idle time).
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        let text = String::from_utf8_lossy(&self.carry).into_owned();
        out.extend_from_slice(self.masker.mask(&text).as_bytes());
        self.carry.clear();
    }

    /// How many bytes are held back, waiting for more input.
    pub fn pending(&self) -> usize {
        self.carry.len()
    }
}
