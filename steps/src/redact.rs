//! Secret redaction for text that leaves a step: output, outputs, error
//! messages. The remote runner uses it before anything reaches the host's
//! disk; the coordinator applies it again to everything coming back.
//!
//! Output arrives in chunks, and a secret can be split across two of them;
//! [`RedactStream`] holds back the end of a chunk only while it could still
//! be the start of a secret, so ordinary output is not delayed.

use std::fmt;
use std::sync::Arc;

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Secret values shorter than this are not redacted: they would mangle
/// ordinary text and carry no secret.
pub const SECRET_CHARS_MIN: usize = 3;

/// Replaces secret values in text.
#[derive(Clone, Default)]
pub struct Redactor {
    // Longest first, so a secret containing another is replaced whole.
    secrets: Arc<Vec<String>>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the values.
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

impl Redactor {
    /// Redacts these values (see [`SECRET_CHARS_MIN`]).
    pub fn new(values: impl IntoIterator<Item = String>) -> Redactor {
        let mut v: Vec<String> = values
            .into_iter()
            .filter(|s| s.chars().count() >= SECRET_CHARS_MIN)
            .collect();
        v.sort_by_key(|s| std::cmp::Reverse(s.len()));
        v.dedup();
        Redactor {
            secrets: Arc::new(v),
        }
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Redacts one complete text.
    pub fn text(&self, s: &str) -> String {
        let mut out = s.to_string();
        for secret in self.secrets.iter() {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), MASK);
            }
        }
        out
    }

    /// A redactor for text that arrives in chunks.
    pub fn stream(&self) -> RedactStream {
        RedactStream {
            redactor: self.clone(),
            carry: String::new(),
        }
    }

    /// The length in bytes of the longest suffix of `s` that is the start
    /// (but not the whole) of some secret.
    fn pending_suffix(&self, s: &str) -> usize {
        let longest = self.secrets.first().map_or(0, |x| x.len());
        if longest == 0 {
            return 0;
        }
        let from = s.len().saturating_sub(longest - 1);
        for (i, _) in s.char_indices().filter(|(i, _)| *i >= from) {
            let tail = &s[i..];
            if self
                .secrets
                .iter()
                .any(|x| x.len() > tail.len() && x.starts_with(tail))
            {
                return s.len() - i;
            }
        }
        0
    }
}

/// Redacts a stream of chunks: feed [`RedactStream::push`], then
/// [`RedactStream::finish`] once at the end.
pub struct RedactStream {
    redactor: Redactor,
    carry: String,
}

impl RedactStream {
    /// Takes the next chunk; returns what can be written now, redacted.
    pub fn push(&mut self, chunk: &str) -> String {
        if self.redactor.is_empty() {
            return chunk.to_string();
        }
        self.carry.push_str(chunk);
        let red = self.redactor.text(&self.carry);
        let hold = self.redactor.pending_suffix(&red);
        let cut = red.len() - hold;
        self.carry = red[cut..].to_string();
        red[..cut].to_string()
    }

    /// Whether text is held back waiting for the next chunk.
    pub fn has_pending(&self) -> bool {
        !self.carry.is_empty()
    }

    /// Returns whatever is still held back (the stream has ended, or the
    /// caller flushes before a checkpoint).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.carry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(r: &Redactor, chunks: &[&str]) -> String {
        let mut s = r.stream();
        let mut out: String = chunks.iter().map(|c| s.push(c)).collect();
        out.push_str(&s.finish());
        out
    }

    #[test]
    fn a_secret_split_across_chunks_is_redacted() {
        let r = Redactor::new(["hunter2pass".to_string()]);
        assert_eq!(run(&r, &["pw=hunter", "2pass ok"]), "pw=*** ok");
        assert_eq!(run(&r, &["h", "u", "nter2pas", "s!"]), "***!");
        // A prefix that turns out not to be the secret comes out unchanged.
        assert_eq!(run(&r, &["pw=hunt", "ing"]), "pw=hunting");
    }

    #[test]
    fn ordinary_output_is_not_held_back() {
        let r = Redactor::new(["s3cr3t".to_string()]);
        let mut s = r.stream();
        assert_eq!(s.push("line one\n"), "line one\n");
        assert!(!s.has_pending());
        assert_eq!(s.push("ends with s3"), "ends with ");
        assert!(s.has_pending());
        assert_eq!(s.finish(), "s3");
    }

    #[test]
    fn overlapping_and_nested_secrets() {
        let r = Redactor::new(["aab".to_string(), "xaabx".to_string()]);
        assert_eq!(run(&r, &["a", "a", "ab"]), "a***");
        assert_eq!(run(&r, &["xa", "abx"]), "***");
        // Short values are ignored.
        let r = Redactor::new(["ab".to_string()]);
        assert!(r.is_empty());
        assert_eq!(run(&r, &["ab"]), "ab");
    }

    #[test]
    fn multibyte_text_is_cut_on_char_boundaries() {
        let r = Redactor::new(["ééé".to_string()]);
        assert_eq!(run(&r, &["aé", "é", "éb"]), "a***b");
        assert_eq!(run(&r, &["é", "x"]), "éx");
    }

    #[test]
    fn debug_never_shows_values() {
        let r = Redactor::new(["topsecret".to_string()]);
        assert!(!format!("{r:?}").contains("topsecret"));
    }
}
