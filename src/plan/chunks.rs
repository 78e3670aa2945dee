//! Large plans are parsed a few hundred steps at a time.
//!
//! The TOML parser holds the whole document at once (its token vector and
//! its tree: ~4 KB per step of a ~75-byte step text, measured by massif), so
//! `check` of a 100,000-step plan peaked at 415 MiB. A plan text larger than
//! [`CHUNKED_FROM`] is therefore cut before `[steps.NAME]` headers into
//! pieces of [`STEPS_PER_PIECE`] steps, and each piece is parsed alone and
//! merged. A piece is padded with spaces up to its offset in the file, so
//! every span — and every file:line:col in a message — is that of the file.
//!
//! The result is the whole-document parse or nothing: whenever the pieces
//! do not merge cleanly (a table defined in two pieces, which TOML allows
//! for sub-tables of a step defined far apart; a header spelled with
//! escapes; any parse error) the caller parses the whole text as before,
//! so errors and corner cases read exactly as they did.

use std::collections::BTreeMap;

use toml_parser::Source;
use toml_parser::lexer::TokenKind;

/// Plans up to this size are parsed whole (every real plan: the TM plan
/// is ~40 KB).
pub(super) const CHUNKED_FROM: usize = 1 << 20;

/// Steps per piece: the parser's peak is this many steps' documents.
pub(super) const STEPS_PER_PIECE: usize = 500;

/// Byte offsets at which the text is cut: before the header of every
/// `every`-th step. `None` when a header is spelled in a way this scanner
/// does not decode (the caller then parses the whole text).
pub(super) fn cut_points(text: &str, every: usize) -> Option<Vec<usize>> {
    let mut cuts = Vec::new();
    let mut depth = 0usize; // inside an array or inline table value
    let mut line_start = true;
    let mut last_step: Option<&str> = None;
    let mut steps_since_cut = 0usize;
    let mut tokens = Source::new(text).lex().peekable();
    while let Some(token) = tokens.next() {
        let span = token.span();
        match token.kind() {
            TokenKind::Whitespace | TokenKind::Comment => {}
            TokenKind::Newline => line_start = depth == 0,
            TokenKind::LeftSquareBracket if line_start && depth == 0 => {
                let header_start = span.start();
                let array = tokens
                    .next_if(|t| t.kind() == TokenKind::LeftSquareBracket)
                    .is_some();
                let mut keys: Vec<&str> = Vec::new();
                loop {
                    let t = tokens.next()?;
                    let s = &text[t.span().start()..t.span().end()];
                    match t.kind() {
                        TokenKind::Whitespace | TokenKind::Dot => {}
                        TokenKind::Atom => keys.push(s),
                        TokenKind::BasicString | TokenKind::LiteralString => {
                            if s.contains('\\') || s.len() < 2 {
                                return None;
                            }
                            keys.push(&s[1..s.len() - 1]);
                        }
                        TokenKind::RightSquareBracket => break,
                        _ => return None,
                    }
                }
                if array {
                    tokens.next_if(|t| t.kind() == TokenKind::RightSquareBracket)?;
                }
                if keys.first() == Some(&"steps")
                    && let Some(&name) = keys.get(1)
                    && last_step != Some(name)
                {
                    if steps_since_cut == every {
                        cuts.push(header_start);
                        steps_since_cut = 0;
                    }
                    steps_since_cut += 1;
                    last_step = Some(name);
                }
                line_start = false;
            }
            TokenKind::LeftSquareBracket | TokenKind::LeftCurlyBracket => {
                depth += 1;
                line_start = false;
            }
            TokenKind::RightSquareBracket | TokenKind::RightCurlyBracket => {
                depth = depth.saturating_sub(1);
                line_start = false;
            }
            TokenKind::Eof => break,
            _ => line_start = false,
        }
    }
    Some(cuts)
}

/// One piece of the text, padded with spaces to its offset in the file.
pub(super) fn pieces(text: &str, cuts: &[usize]) -> impl Iterator<Item = String> {
    let mut bounds = Vec::with_capacity(cuts.len() + 2);
    bounds.push(0);
    bounds.extend_from_slice(cuts);
    bounds.push(text.len());
    (0..bounds.len() - 1).map(move |i| {
        let (start, end) = (bounds[i], bounds[i + 1]);
        let mut piece = String::with_capacity(end);
        piece.extend(std::iter::repeat_n(' ', start));
        piece.push_str(&text[start..end]);
        piece
    })
}

/// The pieces themselves, unpadded (for what needs no spans).
pub(super) fn slices<'t>(text: &'t str, cuts: &[usize]) -> impl Iterator<Item = &'t str> {
    let mut bounds = Vec::with_capacity(cuts.len() + 2);
    bounds.push(0);
    bounds.extend_from_slice(cuts);
    bounds.push(text.len());
    (0..bounds.len() - 1).map(move |i| &text[bounds[i]..bounds[i + 1]])
}

/// Moves `from`'s entries into `into`; `None` if a key is in both.
pub(super) fn merge_map<K: Ord, V>(into: &mut BTreeMap<K, V>, from: BTreeMap<K, V>) -> Option<()> {
    for (k, v) in from {
        if into.contains_key(&k) {
            return None;
        }
        into.insert(k, v);
    }
    Some(())
}

/// `into` keeps its value, or takes `from`'s; `None` if both have one.
pub(super) fn merge_option<T>(into: &mut Option<T>, from: Option<T>) -> Option<()> {
    match (into.is_some(), from) {
        (_, None) => Some(()),
        (false, Some(v)) => {
            *into = Some(v);
            Some(())
        }
        (true, Some(_)) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_fall_before_a_new_step_only() {
        let text = "name = \"p\"\n[steps.a]\nkind = \"sleep\"\n[steps.a.with]\nduration = \"0s\"\n\
                    [vars]\nx = [\n[1],\n]\n[steps.b]\nkind = \"sleep\"\n[steps.'c']\nkind = \"x\"\n";
        let cuts = cut_points(text, 1).unwrap();
        let at: Vec<&str> = cuts.iter().map(|&c| &text[c..c + 9]).collect();
        assert_eq!(at, ["[steps.b]", "[steps.'c"]);
        // `[1]` at the start of a line inside an array is not a header.
        assert!(!cuts.iter().any(|&c| text[c..].starts_with("[1]")));
    }

    #[test]
    fn a_header_with_escapes_is_left_to_the_whole_parse() {
        assert!(cut_points("[steps.\"a\\u0062\"]\nkind = \"x\"\n", 1).is_none());
    }

    #[test]
    fn pieces_keep_their_offsets() {
        let text = "a = 1\n[steps.x]\nk = 2\n";
        let cuts = [6];
        let p: Vec<String> = pieces(text, &cuts).collect();
        assert_eq!(p[0], "a = 1\n");
        assert_eq!(p[1].len(), text.len());
        assert_eq!(&p[1][6..], "[steps.x]\nk = 2\n");
    }

    /// Every plan of the project, and a generated one with the shapes the
    /// scanner must step over, read the same in pieces of 1 to 7 steps as
    /// whole: same tables, same spans.
    #[test]
    fn pieces_read_like_the_whole_text() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut texts = vec![GENERATED.to_string()];
        for dir in ["plans", "examples", "tests/fixtures"] {
            collect_plans(&root.join(dir), &mut texts);
        }
        assert!(texts.len() > 3, "found only {} plans", texts.len());
        let mut compared = 0;
        for text in &texts {
            let Ok(whole) = toml::from_str::<super::super::RawPlan>(text) else {
                continue; // not a plan (a site file) or a deliberately bad one
            };
            let whole = format!("{whole:?}");
            for every in 1..=7 {
                let pieces = super::super::parse_raw_in_pieces(text, every)
                    .expect("a valid plan reads in pieces");
                assert_eq!(
                    format!("{pieces:?}"),
                    whole,
                    "in pieces of {every}:\n{text}"
                );
            }
            compared += 1;
        }
        assert!(compared > 3, "compared only {compared} plans");
    }

    /// The site keys a plan reads are the same read in pieces as whole.
    #[test]
    fn site_reads_in_pieces_are_those_of_the_whole_text() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut texts = vec![GENERATED.to_string()];
        for dir in ["plans", "examples", "tests/fixtures"] {
            collect_plans(&root.join(dir), &mut texts);
        }
        let mut with_reads = 0;
        for text in &texts {
            let Ok(doc) = toml::from_str::<toml::Table>(text) else {
                continue;
            };
            let whole = crate::sitekeys::plan_reads(&doc);
            with_reads += usize::from(!whole.is_empty());
            for every in 1..=7 {
                let pieces = super::super::site_reads_in_pieces(text, every)
                    .expect("a valid plan reads in pieces");
                assert_eq!(pieces, whole, "in pieces of {every}:\n{text}");
            }
        }
        // The generated plan and the TeamManager plan at least.
        assert!(with_reads >= 2, "only {with_reads} plans read site keys");
    }

    #[test]
    fn a_step_defined_in_two_pieces_is_left_to_the_whole_parse() {
        let text = "name = \"p\"\n[steps.a]\nkind = \"sleep\"\n[steps.b]\nkind = \"sleep\"\n\
                    [steps.a.with]\nduration = \"0s\"\n";
        assert!(toml::from_str::<super::super::RawPlan>(text).is_ok());
        assert!(super::super::parse_raw_in_pieces(text, 1).is_none());
    }

    const GENERATED: &str = r#"# comment [steps.not_a_header]
name = "generated"
rules = ["teammanager"]
[vars]
list = [
  [1, 2],
  ["[steps.x]"],
]
inline = { a = [ { b = "]" } ] }
[steps.one]
kind = "sleep"
with = { duration = "0s" }
[steps.one.retry]
attempts = 2
[steps."two"]
kind = "sleep"
needs = ["one"]
with.duration = """
[steps.three]
"""
[locks.l]
max = 1
[steps.'three']
kind = "sleep"
needs = [
  "two",
]
[steps.four]
kind = "sleep"
[steps.four.with]
duration = "0s"
[targets.t]
x = 1
[steps.five]
kind = "sleep"
[steps.five.with]
server = "${site.sql.host}"
files = ["${site.certificates.thumbprints.${host}}"]
"#;

    fn collect_plans(dir: &std::path::Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                collect_plans(&path, out);
            } else if path.extension().is_some_and(|e| e == "toml")
                && let Ok(text) = std::fs::read_to_string(&path)
                && text.contains("[steps.")
            {
                out.push(text);
            }
        }
    }
}
