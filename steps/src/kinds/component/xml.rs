//! Byte-exact edits of `<appSettings>` in .NET config files, by splicing.
//!
//! quick-xml is used only to *find* byte ranges (an attribute value, an
//! `<add>` element, the section's tags); the edit replaces just those bytes
//! in the original buffer, so everything else (comments, attribute order and
//! quoting, whitespace, BOM, CRLF, the encoding declaration, entities) stays
//! as it was. A Reader→Writer passthrough would not be byte-exact.
//!
//! Rules (documented in `docs/steps-components.md`):
//! - the section is the first `<appSettings>` that is the root element or a
//!   child of the root `<configuration>`;
//! - keys match ASCII-case-insensitively, as .NET's `AppSettings` does; every
//!   `<add>` with the key is edited (with duplicates, .NET uses the last);
//! - a key to set that is absent is added as a new `<add key="" value="" />`
//!   line after the last `<add>`, with that line's indentation and quote
//!   character and the file's line ending;
//! - a removed `<add>` alone on its line takes its line with it;
//! - values are escaped for the attribute (`& < > "` or `'`, tab, CR, LF);
//!   when the file declares an encoding other than UTF-8, non-ASCII
//!   characters are written as character references;
//! - files must be UTF-8 (with or without BOM): a UTF-16 file is refused.

use std::ops::Range;

use quick_xml::XmlVersion;
use quick_xml::events::{BytesStart, Event};
use quick_xml::reader::Reader;

/// A file that cannot be read as XML, with the 1-based line of the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XmlError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for XmlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// One `<add key=".." value=".."/>` of the section.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The key, unescaped.
    pub key: String,
    /// The value, unescaped and normalised (`None`: no `value` attribute).
    pub value: Option<String>,
    /// Byte range of the raw value (between the quotes).
    value_range: Option<Range<usize>>,
    /// Byte range of the raw key value (between the quotes).
    key_range: Range<usize>,
    /// The quote character used by this element's attributes.
    quote: u8,
    /// Byte range of the whole element (`<add .../>` or `<add ...></add>`).
    element: Range<usize>,
    /// Whether it is written `<add ... />` (space before the slash).
    spaced_slash: bool,
}

/// The `<appSettings>` section.
#[derive(Debug, Clone)]
struct Section {
    /// The start tag (`<appSettings ...>` or `<appSettings .../>`).
    start: Range<usize>,
    /// The end tag, `None` for a self-closing section.
    end: Option<Range<usize>>,
    entries: Vec<Entry>,
    /// The `file=` attribute, if any (keys there override this file's).
    file_attr: Option<String>,
}

/// A parsed config file: the original bytes and where things are.
#[derive(Debug, Clone)]
pub struct Doc {
    bytes: Vec<u8>,
    section: Option<Section>,
    ascii_only: bool,
}

/// What an edit changes, one entry per effect, for the step's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// An existing key gets a new value.
    Set {
        /// The key.
        key: String,
        /// The value before (None: no value attribute).
        old: Option<String>,
        /// The value after.
        new: String,
    },
    /// A key is added.
    Add {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// A key is removed.
    Remove {
        /// The key.
        key: String,
        /// Its value before.
        old: Option<String>,
    },
}

/// The edited bytes and what changed.
#[derive(Debug, Clone)]
pub struct Edited {
    /// The new file content (identical to the input when `changes` is empty).
    pub bytes: Vec<u8>,
    /// What changed.
    pub changes: Vec<Change>,
}

fn line_of(bytes: &[u8], pos: usize) -> usize {
    bytes[..pos.min(bytes.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn offset_in(base: &str, part: &str) -> Option<usize> {
    let b = base.as_ptr() as usize;
    let p = part.as_ptr() as usize;
    (p >= b && p + part.len() <= b + base.len()).then(|| p - b)
}

/// The text of a config file after its BOM, and the BOM's length; UTF-16
/// and invalid UTF-8 are refused with the line.
fn utf8_text(bytes: &[u8]) -> Result<(&str, usize), XmlError> {
    if bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]) {
        return Err(XmlError {
            line: 1,
            message: "the file is UTF-16; only UTF-8 config files are supported \
                      (save it as UTF-8 first)"
                .into(),
        });
    }
    let bom = if bytes.starts_with(&[0xEF, 0xBB, 0xBF]) {
        3
    } else {
        0
    };
    let text = std::str::from_utf8(&bytes[bom..]).map_err(|e| XmlError {
        line: line_of(bytes, bom + e.valid_up_to()),
        message: "the file is not valid UTF-8".into(),
    })?;
    Ok((text, bom))
}

impl Doc {
    /// Parses `bytes`; fails with the line of the first problem.
    pub fn parse(bytes: Vec<u8>) -> Result<Doc, XmlError> {
        let (text, bom) = utf8_text(&bytes)?;
        let mut ascii_only = false;
        let section = scan(text, bom, &bytes, &mut ascii_only)?;
        Ok(Doc {
            bytes,
            section,
            ascii_only,
        })
    }

    /// The entries of the section, in file order (empty without a section).
    pub fn entries(&self) -> &[Entry] {
        self.section.as_ref().map_or(&[], |s| &s.entries)
    }

    /// Whether the file has an `<appSettings>` section.
    pub fn has_section(&self) -> bool {
        self.section.is_some()
    }

    /// The section's `file=` attribute, if any.
    pub fn file_attribute(&self) -> Option<&str> {
        self.section.as_ref()?.file_attr.as_deref()
    }

    /// The value of `key` as .NET would read it (the last `<add>` wins);
    /// `Some(None)` for an `<add>` without a value.
    pub fn get(&self, key: &str) -> Option<Option<&str>> {
        self.entries()
            .iter()
            .rev()
            .find(|e| e.key.eq_ignore_ascii_case(key))
            .map(|e| e.value.as_deref())
    }

    /// Whether every `<add>` of each key in `set` has the wanted value and
    /// no key of `remove` is present. Returns what differs.
    pub fn differences(&self, set: &[(String, String)], remove: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for (k, v) in set {
            let found: Vec<&Entry> = self
                .entries()
                .iter()
                .filter(|e| e.key.eq_ignore_ascii_case(k))
                .collect();
            if found.is_empty() {
                out.push(format!("`{k}` is absent"));
            } else if found.iter().any(|e| e.value.as_deref() != Some(v.as_str())) {
                out.push(format!("`{k}` has another value"));
            }
        }
        for k in remove {
            if self.get(k).is_some() {
                out.push(format!("`{k}` is present"));
            }
        }
        out
    }

    /// Sets and removes keys; returns the new bytes and what changed.
    pub fn edit(&self, set: &[(String, String)], remove: &[String]) -> Result<Edited, XmlError> {
        let bytes = &self.bytes;
        let nl: &[u8] = if memchr::memmem::find(bytes, b"\r\n").is_some() {
            b"\r\n"
        } else {
            b"\n"
        };
        let mut splices: Vec<(Range<usize>, Vec<u8>)> = Vec::new();
        let mut changes = Vec::new();
        let mut missing: Vec<(&str, &str)> = Vec::new();
        let section = self.section.as_ref();
        for (k, v) in set {
            let mut any = false;
            for e in self
                .entries()
                .iter()
                .filter(|e| e.key.eq_ignore_ascii_case(k))
            {
                any = true;
                if e.value.as_deref() == Some(v.as_str()) {
                    continue;
                }
                let escaped = escape(v, e.quote, self.ascii_only);
                match &e.value_range {
                    Some(r) => splices.push((r.clone(), escaped.into_bytes())),
                    None => {
                        let at = e.key_range.end + 1;
                        let q = e.quote as char;
                        splices.push((at..at, format!(" value={q}{escaped}{q}").into_bytes()));
                    }
                }
                changes.push(Change::Set {
                    key: e.key.clone(),
                    old: e.value.clone(),
                    new: v.clone(),
                });
            }
            if !any {
                missing.push((k, v));
            }
        }
        for k in remove {
            for e in self
                .entries()
                .iter()
                .filter(|e| e.key.eq_ignore_ascii_case(k))
            {
                splices.push((removal_range(bytes, &e.element), Vec::new()));
                changes.push(Change::Remove {
                    key: e.key.clone(),
                    old: e.value.clone(),
                });
            }
        }
        if !missing.is_empty() {
            let Some(section) = section else {
                return Err(XmlError {
                    line: 1,
                    message: format!(
                        "there is no <appSettings> section to add `{}` to",
                        missing[0].0
                    ),
                });
            };
            let removed = |e: &Entry| remove.iter().any(|k| e.key.eq_ignore_ascii_case(k));
            let (at, text) = insertion(bytes, section, &removed, &missing, nl, self.ascii_only);
            // An insertion at the end of the start tag replaces its `/>`.
            splices.push((at, text));
            for (k, v) in &missing {
                changes.push(Change::Add {
                    key: (*k).to_string(),
                    value: (*v).to_string(),
                });
            }
        }
        splices.sort_by_key(|(r, _)| (r.start, r.end));
        let mut out = Vec::with_capacity(bytes.len() + 64);
        let mut pos = 0;
        for (r, text) in &splices {
            if r.start < pos {
                return Err(XmlError {
                    line: line_of(bytes, r.start),
                    message: "overlapping edits (a key both set and removed?)".into(),
                });
            }
            out.extend_from_slice(&bytes[pos..r.start]);
            out.extend_from_slice(text);
            pos = r.end;
        }
        out.extend_from_slice(&bytes[pos..]);
        Ok(Edited {
            bytes: out,
            changes,
        })
    }
}

/// The start of the line holding `pos`, and the whitespace before `pos` on
/// it if that is all there is.
fn indentation(bytes: &[u8], pos: usize) -> Option<&[u8]> {
    let line_start = bytes[..pos]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let before = &bytes[line_start..pos];
    let before = before.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(before);
    before
        .iter()
        .all(|&b| b == b' ' || b == b'\t')
        .then_some(before)
}

/// The bytes to delete for an element: its whole line if it is alone there.
fn removal_range(bytes: &[u8], element: &Range<usize>) -> Range<usize> {
    let Some(indent) = indentation(bytes, element.start) else {
        return element.clone();
    };
    let start = element.start - indent.len();
    let mut end = element.end;
    while end < bytes.len() && (bytes[end] == b' ' || bytes[end] == b'\t') {
        end += 1;
    }
    if bytes[end..].starts_with(b"\r\n") {
        start..end + 2
    } else if bytes[end..].starts_with(b"\n") {
        start..end + 1
    } else {
        element.clone()
    }
}

fn unit_for(indent: &[u8]) -> &'static [u8] {
    if indent.contains(&b'\t') {
        b"\t"
    } else {
        b"  "
    }
}

/// Where and what to insert for keys absent from the section.
///
/// The new lines are written like the section's last `<add>` (its
/// indentation, quote character and `/>` or ` />`), whether or not that one
/// is being removed, and go after the last `<add>` that stays. When every
/// `<add>` goes (or there was none), they go before `</appSettings>`. So an
/// insertion never lands inside a range that a removal deletes: those two
/// edits used to collide when the last `<add>` was removed and a key added
/// in the same step.
fn insertion(
    bytes: &[u8],
    section: &Section,
    removed: &dyn Fn(&Entry) -> bool,
    missing: &[(&str, &str)],
    nl: &[u8],
    ascii_only: bool,
) -> (Range<usize>, Vec<u8>) {
    let line = |indent: &[u8], quote: u8, spaced: bool| -> Vec<u8> {
        let mut out = Vec::new();
        for (i, (k, v)) in missing.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(nl);
            }
            let q = quote as char;
            out.extend_from_slice(indent);
            out.extend_from_slice(
                format!(
                    "<add key={q}{}{q} value={q}{}{q}{}/>",
                    escape(k, quote, ascii_only),
                    escape(v, quote, ascii_only),
                    if spaced { " " } else { "" }
                )
                .as_bytes(),
            );
        }
        out
    };
    let section_indent = indentation(bytes, section.start.start).unwrap_or(b"");
    let default_indent = [section_indent, unit_for(section_indent)].concat();
    // The style to copy: the last <add>, kept or not.
    let (indent, quote, spaced) = match section.entries.last() {
        Some(last) => (
            indentation(bytes, last.element.start)
                .map(<[u8]>::to_vec)
                .unwrap_or_else(|| default_indent.clone()),
            last.quote,
            last.spaced_slash,
        ),
        None => (default_indent.clone(), b'"', true),
    };
    if let Some(anchor) = section.entries.iter().rev().find(|e| !removed(e)) {
        // After the last <add> that stays, on a new line.
        let mut text = nl.to_vec();
        text.extend(line(&indent, quote, spaced));
        let at = anchor.element.end;
        return (at..at, text);
    }
    match &section.end {
        Some(end) => match indentation(bytes, end.start) {
            // `</appSettings>` on its own line: the new lines go before it.
            Some(end_indent) => {
                let mut text = line(&indent, quote, spaced);
                text.extend_from_slice(nl);
                let at = end.start - end_indent.len();
                (at..at, text)
            }
            None => {
                let mut text = nl.to_vec();
                text.extend(line(&indent, quote, spaced));
                text.extend_from_slice(nl);
                text.extend_from_slice(section_indent);
                let at = end.start;
                (at..at, text)
            }
        },
        None => {
            // `<appSettings .../>`: open it, add the lines, close it.
            let tag = &bytes[section.start.clone()];
            let slash = tag.len() - 2; // the `/>`
            let mut text = b">".to_vec();
            text.extend_from_slice(nl);
            text.extend(line(&indent, quote, spaced));
            text.extend_from_slice(nl);
            text.extend_from_slice(section_indent);
            text.extend_from_slice(b"</appSettings>");
            let at = section.start.start + slash;
            (at..section.start.end, text)
        }
    }
}

/// Escapes a value for an attribute quoted with `quote`.
pub fn escape(value: &str, quote: u8, ascii_only: bool) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' if quote == b'"' => out.push_str("&quot;"),
            '\'' if quote == b'\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#x9;"),
            '\n' => out.push_str("&#xA;"),
            '\r' => out.push_str("&#xD;"),
            c if ascii_only && !c.is_ascii() => out.push_str(&format!("&#x{:X};", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Whether `value` can be written into an XML 1.0 attribute at all.
pub fn check_value(value: &str) -> Result<(), String> {
    match value.chars().find(|&c| {
        (c < ' ' && !matches!(c, '\t' | '\n' | '\r')) || c == '\u{FFFE}' || c == '\u{FFFF}'
    }) {
        Some(c) => Err(format!(
            "contains U+{:04X}, which XML 1.0 cannot hold",
            c as u32
        )),
        None => Ok(()),
    }
}

/// A path into an XML document, a small XPath subset:
/// `/configuration/system.serviceModel/bindings/netTcpBinding/binding[@name='x']/security/@mode`.
/// Absolute; each step is an element name (local name, prefix ignored; `*`
/// for any) with optional `[@attribute='value']` predicates; a last step
/// `@attribute` selects an attribute, otherwise the element's text (trimmed)
/// is selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XmlPath {
    steps: Vec<PathStep>,
    attribute: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PathStep {
    name: String,
    predicates: Vec<(String, String)>,
}

/// What one selected node holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selected {
    /// The attribute's value or the element's text.
    Value(String),
    /// The element is there but has no such attribute.
    NoAttribute,
}

impl XmlPath {
    /// Parses a path; the error says what is wrong and where.
    pub fn parse(text: &str) -> Result<XmlPath, String> {
        let bad = |why: &str| format!("`{text}` is not a supported path: {why}");
        let Some(mut rest) = text.trim().strip_prefix('/') else {
            return Err(bad("it must start with `/` (from the root element)"));
        };
        let mut steps = Vec::new();
        let mut attribute = None;
        while !rest.is_empty() {
            if let Some(a) = rest.strip_prefix('@') {
                if a.is_empty() || a.contains(['/', '[', ']', '\'', '"']) {
                    return Err(bad("`@attribute` must be the last step"));
                }
                attribute = Some(a.to_string());
                break;
            }
            let end = rest.find(['/', '[']).unwrap_or(rest.len());
            let name = &rest[..end];
            if name.is_empty() || name.contains(['@', ']', '\'', '"', ' ']) {
                return Err(bad(&format!("empty or odd element name near `{rest}`")));
            }
            rest = &rest[end..];
            let mut predicates = Vec::new();
            while let Some(p) = rest.strip_prefix('[') {
                let p = p.trim_start();
                let Some(p) = p.strip_prefix('@') else {
                    return Err(bad("a predicate is `[@attribute='value']`"));
                };
                let eq = p.find('=').ok_or_else(|| bad("a predicate needs `=`"))?;
                let attr = p[..eq].trim().to_string();
                let v = p[eq + 1..].trim_start();
                let q = v
                    .chars()
                    .next()
                    .filter(|c| *c == '\'' || *c == '"')
                    .ok_or_else(|| bad("a predicate's value is quoted"))?;
                let close = v[1..]
                    .find(q)
                    .ok_or_else(|| bad("a predicate's quote is not closed"))?;
                let value = v[1..1 + close].to_string();
                let after = v[1 + close + 1..].trim_start();
                rest = after
                    .strip_prefix(']')
                    .ok_or_else(|| bad("a predicate ends with `]`"))?;
                predicates.push((attr, value));
            }
            steps.push(PathStep {
                name: name.to_string(),
                predicates,
            });
            match rest.strip_prefix('/') {
                Some(r) if !r.is_empty() => rest = r,
                Some(_) => return Err(bad("it ends with `/`")),
                None if rest.is_empty() => {}
                None => return Err(bad(&format!("unexpected `{rest}`"))),
            }
        }
        if steps.is_empty() {
            return Err(bad("no element named"));
        }
        Ok(XmlPath { steps, attribute })
    }

    /// Every node the path selects in `bytes`, in document order.
    pub fn select(&self, bytes: &[u8]) -> Result<Vec<Selected>, XmlError> {
        let (text, bom) = utf8_text(bytes)?;
        let mut reader = Reader::from_str(text);
        reader.config_mut().check_end_names = true;
        let err_at = |pos: usize, message: String| XmlError {
            line: line_of(bytes, bom + pos),
            message,
        };
        // Per open element: whether it continues the path (it and all its
        // ancestors matched their steps).
        let mut on_path: Vec<bool> = Vec::new();
        let mut out = Vec::new();
        // Depth of the element whose text is being collected, and the text.
        let mut collecting: Option<(usize, String)> = None;
        loop {
            let before = reader.buffer_position() as usize;
            let event = reader
                .read_event()
                .map_err(|e| err_at(reader.error_position() as usize, e.to_string()))?;
            match event {
                Event::Start(ref e) | Event::Empty(ref e) => {
                    let depth = on_path.len();
                    let parent_ok = on_path.last().copied().unwrap_or(true);
                    let matched = parent_ok
                        && depth < self.steps.len()
                        && self
                            .step_matches(&self.steps[depth], e)
                            .map_err(|m| err_at(before, m))?;
                    let last = matched && depth + 1 == self.steps.len();
                    let empty = matches!(event, Event::Empty(_));
                    if last {
                        match &self.attribute {
                            Some(a) => out.push(
                                attr_value(e, a)
                                    .map_err(|m| err_at(before, m))?
                                    .map_or(Selected::NoAttribute, Selected::Value),
                            ),
                            None if empty => out.push(Selected::Value(String::new())),
                            None => collecting = Some((depth, String::new())),
                        }
                    }
                    if !empty {
                        on_path.push(matched);
                    }
                }
                Event::Text(ref t) => {
                    if let Some((_, buf)) = collecting.as_mut() {
                        let raw: &str = t;
                        buf.push_str(
                            &quick_xml::escape::unescape(raw)
                                .map_err(|e| err_at(before, e.to_string()))?,
                        );
                    }
                }
                Event::CData(ref t) => {
                    if let Some((_, buf)) = collecting.as_mut() {
                        buf.push_str(&t[..]);
                    }
                }
                Event::GeneralRef(ref r) => {
                    if let Some((_, buf)) = collecting.as_mut() {
                        let name: &str = r;
                        let raw = format!("&{name};");
                        buf.push_str(
                            &quick_xml::escape::unescape(&raw)
                                .map_err(|e| err_at(before, e.to_string()))?,
                        );
                    }
                }
                Event::End(_) => {
                    on_path.pop();
                    if let Some((depth, _)) = &collecting
                        && *depth == on_path.len()
                        && let Some((_, buf)) = collecting.take()
                    {
                        out.push(Selected::Value(buf.trim().to_string()));
                    }
                }
                Event::Eof => break,
                _ => {}
            }
        }
        if !on_path.is_empty() {
            return Err(XmlError {
                line: line_of(bytes, bytes.len()),
                message: "an element is not closed at the end of the file".into(),
            });
        }
        Ok(out)
    }

    fn step_matches(&self, step: &PathStep, e: &BytesStart<'_>) -> Result<bool, String> {
        let name = e.name();
        let local = name.local_name();
        let local: &str = local.as_ref();
        if step.name != "*" && step.name != local {
            return Ok(false);
        }
        for (a, v) in &step.predicates {
            if attr_value(e, a)?.as_deref() != Some(v.as_str()) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl std::fmt::Display for XmlPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for s in &self.steps {
            write!(f, "/{}", s.name)?;
            for (a, v) in &s.predicates {
                write!(f, "[@{a}='{v}']")?;
            }
        }
        if let Some(a) = &self.attribute {
            write!(f, "/@{a}")?;
        }
        Ok(())
    }
}

struct Open {
    name: String,
    entry: Option<Entry>,
}

fn scan(
    text: &str,
    bom: usize,
    bytes: &[u8],
    ascii_only: &mut bool,
) -> Result<Option<Section>, XmlError> {
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let err_at = |pos: usize, message: String| XmlError {
        line: line_of(bytes, bom + pos),
        message,
    };
    let mut stack: Vec<Open> = Vec::new();
    let mut section: Option<Section> = None;
    // Depth of the open section in `stack` (its index), while inside it.
    let mut in_section: Option<usize> = None;
    let mut section_done = false;
    let mut roots = 0usize;
    loop {
        let before = reader.buffer_position() as usize;
        let event = match reader.read_event() {
            Ok(e) => e,
            Err(e) => {
                return Err(err_at(reader.error_position() as usize, e.to_string()));
            }
        };
        let after = reader.buffer_position() as usize;
        match event {
            Event::Decl(d) => {
                let raw: &str = &d;
                if let Some(enc) = declared_encoding(raw) {
                    *ascii_only =
                        !enc.eq_ignore_ascii_case("utf-8") && !enc.eq_ignore_ascii_case("utf8");
                }
            }
            Event::Start(_) | Event::Empty(_) if stack.is_empty() && roots > 0 => {
                return Err(err_at(before, "more than one root element".into()));
            }
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(event, Event::Empty(_));
                let name = e.name();
                let name = name.as_ref().to_string();
                if stack.is_empty() {
                    roots += 1;
                }
                let mut entry = None;
                if in_section == Some(stack.len().wrapping_sub(1)) && name == "add" {
                    entry = Some(read_entry(text, bom, e, before, after, bytes)?);
                } else if name == "appSettings"
                    && !section_done
                    && in_section.is_none()
                    && (stack.is_empty() || (stack.len() == 1 && stack[0].name == "configuration"))
                {
                    let file_attr = attr_value(e, "file").map_err(|m| err_at(before, m))?;
                    section = Some(Section {
                        start: bom + before..bom + after,
                        end: None,
                        entries: Vec::new(),
                        file_attr,
                    });
                    if empty {
                        section_done = true;
                    } else {
                        in_section = Some(stack.len());
                    }
                }
                if empty {
                    if let (Some(entry), Some(s)) = (entry, section.as_mut()) {
                        s.entries.push(entry);
                    }
                } else {
                    stack.push(Open { name, entry });
                }
            }
            Event::End(_) => {
                let Some(open) = stack.pop() else {
                    return Err(err_at(before, "end tag without a start tag".into()));
                };
                if let (Some(mut entry), Some(s)) = (open.entry, section.as_mut()) {
                    entry.element.end = bom + after;
                    entry.spaced_slash = false;
                    s.entries.push(entry);
                }
                if in_section == Some(stack.len()) {
                    if let Some(s) = section.as_mut() {
                        s.end = Some(bom + before..bom + after);
                    }
                    in_section = None;
                    section_done = true;
                }
            }
            Event::Text(ref t) if stack.is_empty() && !t.trim().is_empty() => {
                return Err(err_at(before, "text outside the root element".into()));
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if let Some(open) = stack.last() {
        return Err(XmlError {
            line: line_of(bytes, bytes.len()),
            message: format!("<{}> is not closed at the end of the file", open.name),
        });
    }
    if roots == 0 {
        return Err(XmlError {
            line: 1,
            message: "no root element (empty file?)".into(),
        });
    }
    Ok(section)
}

fn declared_encoding(decl: &str) -> Option<String> {
    let at = decl.find("encoding")?;
    let rest = decl[at + "encoding".len()..]
        .trim_start()
        .strip_prefix('=')?;
    let rest = rest.trim_start();
    let q = rest.chars().next()?;
    if q != '"' && q != '\'' {
        return None;
    }
    let rest = &rest[1..];
    Some(rest[..rest.find(q)?].to_string())
}

fn attr_value(e: &BytesStart<'_>, name: &str) -> Result<Option<String>, String> {
    for a in e.attributes() {
        let a = a.map_err(|x| x.to_string())?;
        if a.key.as_ref() == name {
            let v = a
                .normalized_value(XmlVersion::Implicit1_0)
                .map_err(|x| x.to_string())?;
            return Ok(Some(v.into_owned()));
        }
    }
    Ok(None)
}

fn read_entry(
    text: &str,
    bom: usize,
    e: &BytesStart<'_>,
    before: usize,
    after: usize,
    bytes: &[u8],
) -> Result<Entry, XmlError> {
    let err = |m: String| XmlError {
        line: line_of(bytes, bom + before),
        message: m,
    };
    let mut key = None;
    let mut key_range = None;
    let mut value = None;
    let mut value_range = None;
    let mut quote = b'"';
    for a in e.attributes() {
        let a = a.map_err(|x| err(x.to_string()))?;
        let raw: &str = &a.value;
        let off = offset_in(text, raw)
            .ok_or_else(|| err("internal: attribute value not borrowed from the file".into()))?;
        let range = bom + off..bom + off + raw.len();
        let q = bytes[range.end];
        let v = a
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|x| err(x.to_string()))?
            .into_owned();
        match a.key.as_ref() {
            "key" => {
                key = Some(v);
                key_range = Some(range);
                quote = q;
            }
            "value" => {
                value = Some(v);
                value_range = Some(range);
                quote = q;
            }
            _ => {}
        }
    }
    let (Some(key), Some(key_range)) = (key, key_range) else {
        return Err(err(
            "<add> without a `key` attribute in <appSettings>".into()
        ));
    };
    let raw_tag = &bytes[bom + before..bom + after];
    Ok(Entry {
        key,
        value,
        value_range,
        key_range,
        quote,
        element: bom + before..bom + after,
        spaced_slash: raw_tag.ends_with(b" />"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn edit(input: &str, s: &[(&str, &str)], r: &[&str]) -> String {
        let doc = Doc::parse(input.as_bytes().to_vec()).unwrap();
        let r: Vec<String> = r.iter().map(|x| x.to_string()).collect();
        String::from_utf8(doc.edit(&set(s), &r).unwrap().bytes).unwrap()
    }

    #[test]
    fn sets_a_value_in_place() {
        let input = "<configuration>\n  <appSettings>\n    <add key=\"A\" value=\"1\"/>\n  </appSettings>\n</configuration>\n";
        assert_eq!(
            edit(input, &[("A", "2")], &[]),
            input.replace("value=\"1\"", "value=\"2\"")
        );
    }

    #[test]
    fn adds_after_the_last_entry_with_its_indentation_and_quotes() {
        let input = "<appSettings>\r\n\t<add key='A' value='1' />\r\n</appSettings>";
        assert_eq!(
            edit(input, &[("B", "it's")], &[]),
            "<appSettings>\r\n\t<add key='A' value='1' />\r\n\t<add key='B' value='it&apos;s' />\r\n</appSettings>"
        );
    }

    #[test]
    fn adds_to_an_empty_or_self_closing_section() {
        assert_eq!(
            edit(
                "<configuration>\n  <appSettings>\n  </appSettings>\n</configuration>",
                &[("K", "v")],
                &[]
            ),
            "<configuration>\n  <appSettings>\n    <add key=\"K\" value=\"v\" />\n  </appSettings>\n</configuration>"
        );
        assert_eq!(
            edit(
                "<configuration>\n  <appSettings file=\"x.config\" />\n</configuration>",
                &[("K", "v")],
                &[]
            ),
            "<configuration>\n  <appSettings file=\"x.config\" >\n    <add key=\"K\" value=\"v\" />\n  </appSettings>\n</configuration>"
        );
    }

    #[test]
    fn removes_the_whole_line() {
        let input = "<appSettings>\n  <add key=\"A\" value=\"1\"/>\n  <add key=\"B\" value=\"2\"></add>\n</appSettings>";
        assert_eq!(
            edit(input, &[], &["b"]),
            "<appSettings>\n  <add key=\"A\" value=\"1\"/>\n</appSettings>"
        );
    }

    #[test]
    fn adds_and_removes_the_last_entry_in_one_edit() {
        // Found by an outside test: the insertion after the last <add> fell
        // inside that <add>'s removal ("overlapping edits").
        let input = "<appSettings>\n  <add key=\"A\" value=\"1\"/>\n  <add key=\"B\" value=\"2\" />\n</appSettings>";
        assert_eq!(
            edit(input, &[("C", "3")], &["B"]),
            "<appSettings>\n  <add key=\"A\" value=\"1\"/>\n  <add key=\"C\" value=\"3\" />\n</appSettings>"
        );
        // Every <add> removed: the new one takes the last one's style,
        // before the end tag.
        assert_eq!(
            edit(input, &[("C", "3")], &["a", "b"]),
            "<appSettings>\n  <add key=\"C\" value=\"3\" />\n</appSettings>"
        );
        // All on one line.
        assert_eq!(
            edit(
                "<appSettings><add key='A' value='1'/></appSettings>",
                &[("C", "3")],
                &["A"]
            ),
            "<appSettings>\n  <add key='C' value='3'/>\n</appSettings>"
        );
    }

    #[test]
    fn paths_select_attributes_and_text() {
        let doc = br#"<?xml version="1.0"?>
<configuration xmlns:x="urn:x">
  <system.serviceModel>
    <bindings>
      <netTcpBinding>
        <binding name="a"><security mode="None"/></binding>
        <binding name="b"><security mode="Transport"/></binding>
      </netTcpBinding>
    </bindings>
    <x:note>  it&apos;s &amp; <![CDATA[<raw>]]> </x:note>
  </system.serviceModel>
</configuration>"#;
        let sel = |p: &str| XmlPath::parse(p).unwrap().select(doc).unwrap();
        let v = |s: &str| Selected::Value(s.to_string());
        assert_eq!(
            sel(
                "/configuration/system.serviceModel/bindings/netTcpBinding/binding[@name='b']/security/@mode"
            ),
            vec![v("Transport")]
        );
        assert_eq!(
            sel("/configuration/*/bindings/netTcpBinding/binding/security/@mode"),
            vec![v("None"), v("Transport")]
        );
        assert_eq!(
            sel("/configuration/system.serviceModel/note"),
            vec![v("it's & <raw>")]
        );
        assert_eq!(
            sel("/configuration/system.serviceModel/bindings/netTcpBinding/binding/@nope"),
            vec![Selected::NoAttribute, Selected::NoAttribute]
        );
        assert!(sel("/configuration/nothing").is_empty());
        for bad in [
            "configuration",
            "/a/",
            "/a/@b/c",
            "/a[@b=c]",
            "/a[@b='c'",
            "/",
        ] {
            assert!(XmlPath::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            XmlPath::parse("/a/b[@n=\"x\"]/@m").unwrap().to_string(),
            "/a/b[@n='x']/@m"
        );
    }

    #[test]
    fn ill_formed_reports_the_line() {
        let e =
            Doc::parse(b"<configuration>\n<appSettings>\n</configuration>\n".to_vec()).unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        let e = Doc::parse(b"<a>\n<b>\n".to_vec()).unwrap_err();
        assert!(e.message.contains("not closed"), "{e}");
    }

    #[test]
    fn non_utf8_declared_encoding_writes_character_references() {
        let input = "<?xml version=\"1.0\" encoding=\"windows-1252\"?>\n<appSettings>\n  <add key=\"A\" value=\"x\"/>\n</appSettings>";
        assert!(edit(input, &[("A", "é")], &[]).contains("value=\"&#xE9;\""));
    }
}
