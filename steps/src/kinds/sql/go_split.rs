//! Splits a script into batches on sqlcmd `GO` lines.
//!
//! The rules (Microsoft, "GO (Transact-SQL)" and sqlcmd):
//! - `GO` must be alone on its line: optional leading/trailing whitespace,
//!   case-insensitive (`go`, `Go`), optionally a repeat count (`GO 5`: run the
//!   batch 5 times) and optionally a `--` comment after it.
//! - A `GO` inside a string (`'...'`, `N'...'`), a quoted identifier
//!   (`"..."`), a bracketed name (`[...]`), a `--` comment, or a (nested)
//!   `/* ... */` comment is text, not a separator: a line only counts if it
//!   starts outside all of those.
//! - `GOTO`, `GOOD` and other words that start with GO are not separators.
//! - A line whose first word is `GO` but whose rest is neither a count nor a
//!   comment (`GO x`, `GO 0`, `GO;`) is an error with its line number, as in
//!   sqlcmd, rather than something sent to the server.
//! - Batches that hold nothing but whitespace and comments are dropped.

/// One batch of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The batch's text, without its GO line.
    pub text: String,
    /// 1-based line number of the batch's first line with content.
    pub first_line: usize,
    /// How many times to run it (`GO n`).
    pub repeat: u32,
}

/// A line the splitter cannot accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for SplitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Where the lexer is at a line's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Code,
    /// Inside `'...'`.
    Str,
    /// Inside `"..."`.
    Quoted,
    /// Inside `[...]`.
    Bracket,
    /// Inside `/* */`, with nesting depth.
    Block(u32),
}

/// Advances the lexer over one line (without its line break). `--`
/// comments end with the line, so they never carry over.
fn scan_line(mut state: State, line: &str) -> State {
    let b: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        match state {
            State::Code => match (c, next) {
                ('-', Some('-')) => return State::Code,
                ('/', Some('*')) => {
                    state = State::Block(1);
                    i += 1;
                }
                ('\'', _) => state = State::Str,
                ('"', _) => state = State::Quoted,
                ('[', _) => state = State::Bracket,
                _ => {}
            },
            State::Str | State::Quoted | State::Bracket => {
                let close = match state {
                    State::Str => '\'',
                    State::Quoted => '"',
                    _ => ']',
                };
                if c == close {
                    if next == Some(close) {
                        i += 1; // doubled: an escaped quote, still inside
                    } else {
                        state = State::Code;
                    }
                }
            }
            State::Block(depth) => match (c, next) {
                ('*', Some('/')) => {
                    state = if depth == 1 {
                        State::Code
                    } else {
                        State::Block(depth - 1)
                    };
                    i += 1;
                }
                ('/', Some('*')) => {
                    state = State::Block(depth + 1);
                    i += 1;
                }
                _ => {}
            },
        }
        i += 1;
    }
    state
}

/// If `line` is a GO line: `Ok(Some(count))`; `Ok(None)` if not; an error
/// for a malformed GO line.
fn go_line(line: &str) -> Result<Option<u32>, String> {
    let t = line.trim();
    // `get`, not slicing: the line may start with a multi-byte character
    // (found by fuzzing).
    if !t.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("go")) {
        return Ok(None);
    }
    let rest = &t[2..];
    match rest.chars().next() {
        None => return Ok(Some(1)),
        Some(c) if c.is_whitespace() => {}
        Some('-') if rest.starts_with("--") => return Ok(Some(1)),
        // GOTO, GOOD, GO; ... : part of a statement or an identifier.
        Some(c) if c.is_alphanumeric() || c == '_' || c == '@' || c == '#' || c == '$' => {
            return Ok(None);
        }
        Some(_) => {
            return Err(format!(
                "`{t}`: GO must be alone on its line (optionally with a count and a -- comment)"
            ));
        }
    }
    let rest = rest.trim_start();
    let (word, tail) = match rest.find(char::is_whitespace) {
        Some(i) => (&rest[..i], rest[i..].trim_start()),
        None => (rest, ""),
    };
    let (word, tail) = match word.find("--") {
        Some(i) => (&word[..i], &rest[i..]),
        None => (word, tail),
    };
    if word.starts_with("--") || word.is_empty() {
        return Ok(Some(1));
    }
    if !tail.is_empty() && !tail.starts_with("--") {
        return Err(format!("`{t}`: unexpected text after GO"));
    }
    match word.parse::<u32>() {
        Ok(n) if n >= 1 => Ok(Some(n)),
        _ => Err(format!(
            "`{t}`: the GO count must be a whole number from 1 (e.g. `GO 5`)"
        )),
    }
}

/// Whether `text` holds nothing but whitespace and comments.
fn is_blank(text: &str) -> bool {
    let mut state = State::Code;
    for line in text.lines() {
        let b: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            let next = b.get(i + 1).copied();
            match state {
                State::Block(d) => match (c, next) {
                    ('*', Some('/')) => {
                        state = if d == 1 {
                            State::Code
                        } else {
                            State::Block(d - 1)
                        };
                        i += 1;
                    }
                    ('/', Some('*')) => {
                        state = State::Block(d + 1);
                        i += 1;
                    }
                    _ => {}
                },
                _ => match (c, next) {
                    ('-', Some('-')) => break,
                    ('/', Some('*')) => {
                        state = State::Block(1);
                        i += 1;
                    }
                    (c, _) if c.is_whitespace() => {}
                    _ => return false,
                },
            }
            i += 1;
        }
    }
    true
}

/// Splits `script` into batches.
pub fn split(script: &str) -> Result<Vec<Batch>, SplitError> {
    let script = script.strip_prefix('\u{feff}').unwrap_or(script);
    let mut batches = Vec::new();
    let mut state = State::Code;
    let mut current: Vec<&str> = Vec::new();
    let mut start_line = 1;
    let mut push = |lines: &mut Vec<&str>, start: usize, repeat: u32| {
        let text = lines.join("\n");
        if !is_blank(&text) {
            let offset = lines.iter().take_while(|l| l.trim().is_empty()).count();
            batches.push(Batch {
                text: text.trim_matches(|c| c == '\n' || c == '\r').to_string(),
                first_line: start + offset,
                repeat,
            });
        }
        lines.clear();
    };
    for (idx, raw) in script.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let n = idx + 1;
        if state == State::Code {
            match go_line(line) {
                Ok(Some(count)) => {
                    push(&mut current, start_line, count);
                    start_line = n + 1;
                    continue;
                }
                Ok(None) => {}
                Err(message) => return Err(SplitError { line: n, message }),
            }
        }
        state = scan_line(state, line);
        current.push(line);
    }
    push(&mut current, start_line, 1);
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, script, expected batches as (first line, repeat, text)).
    type Case = (
        &'static str,
        &'static str,
        &'static [(usize, u32, &'static str)],
    );

    const CASES: &[Case] = &[
        ("single batch, no GO", "SELECT 1", &[(1, 1, "SELECT 1")]),
        (
            "two batches",
            "SELECT 1\nGO\nSELECT 2\n",
            &[(1, 1, "SELECT 1"), (3, 1, "SELECT 2")],
        ),
        (
            "lowercase and mixed case",
            "SELECT 1\ngo\nSELECT 2\nGo\n",
            &[(1, 1, "SELECT 1"), (3, 1, "SELECT 2")],
        ),
        (
            "indented, trailing spaces, CRLF",
            "SELECT 1\r\n   GO   \r\nSELECT 2",
            &[(1, 1, "SELECT 1"), (3, 1, "SELECT 2")],
        ),
        (
            "repeat count",
            "INSERT t VALUES (1)\nGO 3\n",
            &[(1, 3, "INSERT t VALUES (1)")],
        ),
        (
            "count and comment",
            "SELECT 1\nGO 2 -- twice\nSELECT 2",
            &[(1, 2, "SELECT 1"), (3, 1, "SELECT 2")],
        ),
        (
            "trailing comment",
            "SELECT 1\nGO --x\nSELECT 2\nGO-- y",
            &[(1, 1, "SELECT 1"), (3, 1, "SELECT 2")],
        ),
        (
            "GO inside a string spanning lines",
            "SELECT 'a\nGO\nb'\nGO\nSELECT 2",
            &[(1, 1, "SELECT 'a\nGO\nb'"), (5, 1, "SELECT 2")],
        ),
        (
            "escaped quote keeps the string open",
            "SELECT 'it''s\nGO\nstill'\nGO",
            &[(1, 1, "SELECT 'it''s\nGO\nstill'")],
        ),
        (
            "GO inside nested block comments",
            "/* outer /* inner\nGO\n*/ still comment\nGO\n*/\nSELECT 1\nGO",
            &[(
                1,
                1,
                "/* outer /* inner\nGO\n*/ still comment\nGO\n*/\nSELECT 1",
            )],
        ),
        (
            "GO after a line comment is text of that line",
            "SELECT 1 -- GO\nSELECT 2\nGO",
            &[(1, 1, "SELECT 1 -- GO\nSELECT 2")],
        ),
        (
            "file starting with a comment then GO",
            "-- header comment\n/* block */\nGO\nSELECT 1\nGO\n",
            &[(4, 1, "SELECT 1")],
        ),
        (
            "GO inside brackets",
            "CREATE TABLE [a\nGO\nb] (x int)\nGO",
            &[(1, 1, "CREATE TABLE [a\nGO\nb] (x int)")],
        ),
        (
            "escaped bracket keeps the name open",
            "SELECT [a]]\nGO\n]\nGO",
            &[(1, 1, "SELECT [a]]\nGO\n]")],
        ),
        (
            "GO inside a quoted identifier",
            "SELECT \"x\nGO\ny\"\nGO",
            &[(1, 1, "SELECT \"x\nGO\ny\"")],
        ),
        (
            "GOTO and GOOD are not separators",
            "GOTO done\nGOOD_TABLE:\nGO_x\ndone:\nGO",
            &[(1, 1, "GOTO done\nGOOD_TABLE:\nGO_x\ndone:")],
        ),
        (
            "empty batches between GOs are dropped",
            "GO\n\nGO\nSELECT 1\nGO\nGO\n",
            &[(4, 1, "SELECT 1")],
        ),
        (
            "blank lines before a batch move its first line",
            "SELECT 1\nGO\n\n\nSELECT 2",
            &[(1, 1, "SELECT 1"), (5, 1, "SELECT 2")],
        ),
        (
            "byte order mark",
            "\u{feff}SELECT 1\nGO",
            &[(1, 1, "SELECT 1")],
        ),
        (
            "a string containing -- does not hide a later GO",
            "SELECT '--'\nGO\nSELECT 2",
            &[(1, 1, "SELECT '--'"), (3, 1, "SELECT 2")],
        ),
        (
            "a string containing /* does not open a comment",
            "SELECT '/*'\nGO\nSELECT 2",
            &[(1, 1, "SELECT '/*'"), (3, 1, "SELECT 2")],
        ),
    ];

    #[test]
    fn go_split_table() {
        for (name, script, want) in CASES {
            let got = split(script).unwrap_or_else(|e| panic!("{name}: {e}"));
            let got: Vec<(usize, u32, &str)> = got
                .iter()
                .map(|b| (b.first_line, b.repeat, b.text.as_str()))
                .collect();
            assert_eq!(&got[..], *want, "case: {name}");
        }
    }

    #[test]
    fn malformed_go_lines_are_errors_with_their_line() {
        let cases = [
            ("SELECT 1\nGO x\n", 2),
            ("SELECT 1\nGO 0\n", 2),
            ("GO;\n", 1),
            ("SELECT 1\n\nGO 2 3", 3),
        ];
        for (script, line) in cases {
            let e = split(script).unwrap_err();
            assert_eq!(e.line, line, "{script:?}: {e}");
        }
    }
}
