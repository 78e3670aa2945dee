//! Located diagnostics for plan and site files: [`PlanError`] (file, line,
//! column, the line's text underlined, a hint), the [`Locator`] that turns
//! byte spans into those, and "did you mean" suggestions.
//!
//! Split from the parser so that rule sets ([`crate::rules`]) and the
//! application layer can produce the same located errors without
//! depending on the parser.
//!
//! ```
//! use upshift::diagnostics::{Locator, suggest};
//! let text = "name = \"p\"\n[steps.a]\nkind = \"slep\"\n";
//! let loc = Locator { file: "p.toml".as_ref(), text };
//! let at = text.find("\"slep\"").unwrap();
//! let e = loc.at(at..at + 6, "unknown kind `slep`", Some("did you mean `sleep`?".into()));
//! assert_eq!((e.line, e.col, e.width), (3, 8, 6));
//! assert_eq!(suggest("slep", ["sleep", "process"]), Some("sleep"));
//! ```

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in a plan, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError {
    /// The plan file.
    pub file: PathBuf,
    /// 1-based line, 0 if unknown.
    pub line: usize,
    /// 1-based column, 0 if unknown.
    pub col: usize,
    /// The line's text.
    pub snippet: String,
    /// Width of the underline.
    pub width: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl PlanError {
    /// An error about a whole file (no line to point at).
    pub fn whole_file(file: &Path, message: String, hint: Option<String>) -> PlanError {
        PlanError {
            file: file.to_path_buf(),
            line: 0,
            col: 0,
            snippet: String::new(),
            width: 0,
            message,
            hint,
        }
    }
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            writeln!(
                f,
                "{}:{}:{}: error: {}",
                self.file.display(),
                self.line,
                self.col,
                self.message
            )?;
            let no = self.line.to_string();
            writeln!(f, "{:w$} |", "", w = no.len())?;
            writeln!(f, "{no} | {}", self.snippet)?;
            write!(
                f,
                "{:w$} | {:c$}{}",
                "",
                "",
                "^".repeat(self.width.max(1)),
                w = no.len(),
                c = self.col.saturating_sub(1)
            )?;
        } else {
            write!(f, "{}: error: {}", self.file.display(), self.message)?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

/// Every problem found in a plan (never empty).
#[derive(Debug, Clone)]
pub struct PlanErrors(pub Vec<PlanError>);

impl fmt::Display for PlanErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        if self.0.len() > 1 {
            // Errors in the site file too: say so (the site file's own
            // lines are the ones to fix).
            let files: std::collections::BTreeSet<&Path> =
                self.0.iter().map(|e| e.file.as_path()).collect();
            let place = if files.len() > 1 {
                "in the plan and its site file"
            } else {
                "in the plan"
            };
            write!(f, "\n\n{} problems {place}", self.0.len())?;
        }
        Ok(())
    }
}

impl std::error::Error for PlanErrors {}

/// Locates byte offsets in a file's text.
pub struct Locator<'a> {
    /// The file, for messages.
    pub file: &'a Path,
    /// Its whole text.
    pub text: &'a str,
}

impl Locator<'_> {
    /// A located error at `span` (byte offsets into the text).
    pub fn at(
        &self,
        span: Range<usize>,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> PlanError {
        let start = span.start.min(self.text.len());
        let line_start = self.text[..start].rfind('\n').map(|i| i + 1).unwrap_or(0);
        let line_end = self.text[start..]
            .find('\n')
            .map(|i| start + i)
            .unwrap_or(self.text.len());
        let line = self.text[..start].matches('\n').count() + 1;
        let col = self.text[line_start..start].chars().count() + 1;
        let end = span.end.min(line_end).max(start);
        PlanError {
            file: self.file.to_path_buf(),
            line,
            col,
            snippet: self.text[line_start..line_end]
                .trim_end_matches('\r')
                .to_string(),
            width: self.text[start..end].chars().count(),
            message: message.into(),
            hint,
        }
    }

    /// Narrows a table's span to where `needle` first appears in it.
    pub fn find_in(&self, span: Range<usize>, needle: &str) -> Range<usize> {
        let hay = &self.text[span.start.min(self.text.len())..span.end.min(self.text.len())];
        match hay.find(needle) {
            Some(i) => span.start + i..span.start + i + needle.len(),
            None => span,
        }
    }

    /// Narrows to a key `key =` inside a table span.
    pub fn find_key(&self, span: Range<usize>, key: &str) -> Range<usize> {
        let hay = &self.text[span.start.min(self.text.len())..span.end.min(self.text.len())];
        let mut from = 0;
        while let Some(i) = hay[from..].find(key) {
            let at = from + i;
            let before_ok = at == 0
                || hay[..at]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_whitespace() || c == '{' || c == ',' || c == '"');
            let after = hay[at + key.len()..].trim_start_matches(['"', ' ', '\t']);
            if before_ok && after.starts_with('=') {
                return span.start + at..span.start + at + key.len();
            }
            from = at + key.len();
        }
        span
    }
}

/// The closest of `candidates` to `word`, if close enough to suggest.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::osa_distance(word, c), c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// "did you mean `x`?" for a close candidate, else the list of candidates.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str> + Clone,
    label: &str,
) -> String {
    match suggest(word, candidates.clone()) {
        Some(s) => format!("did you mean `{s}`?"),
        None => format!("{label}: {}", candidates.collect::<Vec<_>>().join(", ")),
    }
}

/// Finds where a dotted key of a TOML file is written, as a located error:
/// the line of `key =` under the `[table]` header, else the header, else the
/// file. Used by site rules to name the site file's line.
pub fn locate_key(
    file: &Path,
    text: &str,
    table: &[&str],
    key: Option<&str>,
    message: String,
    hint: Option<String>,
) -> PlanError {
    let loc = Locator { file, text };
    let header = format!("[{}]", table.join("."));
    let mut offset = 0;
    let mut in_table = table.is_empty();
    let mut header_span = None;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t.starts_with('[') {
            in_table = t == header;
            if in_table {
                header_span = Some(offset..offset + line.trim_end().len());
            }
        } else if in_table
            && let Some(k) = key
            && let Some(rest) = t.strip_prefix(k)
            && rest.trim_start().starts_with('=')
        {
            let start = offset + (line.len() - line.trim_start().len());
            return loc.at(start..start + line.trim().len(), message, hint);
        }
        offset += line.len();
    }
    match header_span {
        Some(sp) => loc.at(sp, message, hint),
        None => PlanError::whole_file(file, message, hint),
    }
}

/// A hint for a TOML error inside a double-quoted string that looks like a
/// Windows path (`"D:\Backup"`, `"\\server\share"`): a backslash starts an
/// escape there, so such paths go in single quotes (a literal string).
pub fn windows_path_hint(text: &str, at: usize) -> Option<String> {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let line_start = text[..at].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line_end = text[at..].find('\n').map(|i| at + i).unwrap_or(text.len());
    let line = text[line_start..line_end].trim_end_matches('\r');
    // The double-quoted string around the error.
    let rel = (at - line_start).min(line.len());
    let open = line.get(..rel)?.rfind('"')?;
    let close = line[open + 1..].find('"').map(|i| open + 1 + i)?;
    let inner = &line[open + 1..close];
    let b = inner.as_bytes();
    let drive = b.len() >= 3 && b[0].is_ascii_alphabetic() && &b[1..3] == b":\\";
    let unc = inner.starts_with("\\\\");
    let relative = inner.contains('\\') && !inner.contains("\\\\") && !inner.contains(' ');
    if !(drive || unc || relative) || inner.contains('\'') {
        return None;
    }
    let fixed = format!("{}'{inner}'", &line[..open]);
    Some(format!(
        "a backslash in a double-quoted string starts an escape; write Windows paths in single quotes (a literal string, no escapes): {}",
        fixed.trim()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_paths_in_double_quotes_get_the_single_quote_hint() {
        let text = "[sql]\nbackup_dir = \"D:\\Backup\"\n";
        let at = text.find("\\B").unwrap();
        assert_eq!(
            windows_path_hint(text, at).unwrap().rsplit(": ").next(),
            Some("backup_dir = 'D:\\Backup'")
        );
        let unc = "p = \"\\\\srv\\share\"\n";
        assert!(windows_path_hint(unc, 6).is_some());
        assert_eq!(windows_path_hint("x = \"a\\qb c\"\n", 6), None);
        // Any offset of any text: never a panic.
        let odd = "é = \"ü\\é\"\n\"";
        for at in 0..odd.len() + 2 {
            let _ = windows_path_hint(odd, at);
        }
    }
}
