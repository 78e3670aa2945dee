//! Just enough T-SQL lexing for the stand-in's TM model: tokens (comments
//! dropped, strings and bracketed names unescaped), statements (split on
//! `;` outside parentheses and `BEGIN`/`CASE` ... `END`), and a cursor with
//! the checks the model's recognisers need. It is not a parser of T-SQL:
//! the model recognises the statements it knows token by token and answers
//! anything else with a SQL Server error.

use super::Message;

/// One token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tok {
    /// A bare word: keyword or unquoted name, as written.
    Word(String),
    /// `[name]` or `"name"`, unescaped.
    Ident(String),
    /// `'text'` or `N'text'`, unescaped.
    Str(String),
    /// A number, as written.
    Num(String),
    /// `@name` or `@@name`, as written.
    Var(String),
    /// Punctuation or an operator (`(`, `,`, `=`, `<>`, `>=`, ...).
    Op(String),
}

impl Tok {
    /// Whether this is the keyword `k` (any case).
    pub(crate) fn is_kw(&self, k: &str) -> bool {
        matches!(self, Tok::Word(w) if w.eq_ignore_ascii_case(k))
    }

    /// Whether this is the operator `o`.
    pub(crate) fn is_op(&self, o: &str) -> bool {
        matches!(self, Tok::Op(x) if x == o)
    }

    /// The token as SQL Server quotes it in "Incorrect syntax near '...'".
    pub(crate) fn near(&self) -> String {
        match self {
            Tok::Word(s) | Tok::Ident(s) | Tok::Str(s) | Tok::Num(s) | Tok::Var(s) | Tok::Op(s) => {
                s.clone()
            }
        }
    }

    /// A name part: a bare word or a quoted identifier.
    pub(crate) fn name_part(&self) -> Option<&str> {
        match self {
            Tok::Word(s) | Tok::Ident(s) => Some(s),
            _ => None,
        }
    }
}

/// Error 102, as SQL Server words it, with a note that it is the stand-in's
/// model that does not know the statement (so a developer is not sent
/// looking for a syntax error in valid T-SQL the model does not cover).
pub(crate) fn syntax_error(near: &str) -> Message {
    Message::error(
        102,
        format!(
            "Incorrect syntax near '{near}'. ({}: TmDatabaseModel does not recognise this statement)",
            super::STANDIN_NAME
        ),
    )
    .severity(15, 1)
}

/// The text of a quoted string or name starting at `chars[*i]` (the
/// opening quote), up to `close`, a doubled `close` standing for one;
/// `*i` ends after the closing quote.
fn quoted(chars: &[char], i: &mut usize, close: char) -> Result<String, Message> {
    *i += 1;
    let mut s = String::new();
    loop {
        match chars.get(*i) {
            None => {
                return Err(Message::error(
                    105,
                    format!("Unclosed quotation mark after the character string '{s}'."),
                )
                .severity(15, 1));
            }
            Some(&ch) if ch == close && chars.get(*i + 1) == Some(&close) => {
                s.push(close);
                *i += 2;
            }
            Some(&ch) if ch == close => {
                *i += 1;
                return Ok(s);
            }
            Some(&ch) => {
                s.push(ch);
                *i += 1;
            }
        }
    }
}

/// Splits `text` into tokens.
pub(crate) fn tokens(text: &str) -> Result<Vec<Tok>, Message> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let word_char = |c: char| c.is_alphanumeric() || matches!(c, '_' | '$' | '#' | '@');
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c.is_whitespace() {
            i += 1;
        } else if c == '-' && next == Some('-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            // Block comments nest in T-SQL.
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            if depth != 0 {
                return Err(Message::error(113, "Missing end comment mark '*/'.").severity(15, 1));
            }
        } else if c == '\'' || ((c == 'N' || c == 'n') && next == Some('\'')) {
            if c != '\'' {
                i += 1;
            }
            out.push(Tok::Str(quoted(&chars, &mut i, '\'')?));
        } else if c == '[' || c == '"' {
            let close = if c == '[' { ']' } else { '"' };
            out.push(Tok::Ident(quoted(&chars, &mut i, close)?));
        } else if c == '@' {
            let start = i;
            i += 1;
            while i < chars.len() && word_char(chars[i]) {
                i += 1;
            }
            out.push(Tok::Var(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            out.push(Tok::Num(chars[start..i].iter().collect()));
        } else if c.is_alphabetic() || c == '_' || c == '#' {
            let start = i;
            while i < chars.len() && word_char(chars[i]) {
                i += 1;
            }
            out.push(Tok::Word(chars[start..i].iter().collect()));
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            if ["<>", "!=", ">=", "<="].contains(&two.as_str()) {
                out.push(Tok::Op(two));
                i += 2;
            } else {
                out.push(Tok::Op(c.to_string()));
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Splits tokens into statements: at `;` outside parentheses and outside
/// `BEGIN ... END` / `CASE ... END` blocks. Empty statements are dropped.
pub(crate) fn statements(toks: Vec<Tok>) -> Vec<Vec<Tok>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut depth = 0i32;
    let mut it = toks.into_iter().peekable();
    while let Some(t) = it.next() {
        if t.is_op(";") && depth <= 0 {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if t.is_op("(") || t.is_kw("CASE") {
            depth += 1;
        } else if t.is_op(")") || t.is_kw("END") {
            depth -= 1;
        } else if t.is_kw("BEGIN") {
            let transaction = it.peek().is_some_and(|n| {
                n.is_kw("TRAN") || n.is_kw("TRANSACTION") || n.is_kw("DISTRIBUTED")
            });
            if !transaction {
                depth += 1;
            }
        }
        cur.push(t);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Reads a statement's tokens from left to right.
pub(crate) struct Cur<'a> {
    toks: &'a [Tok],
    at: usize,
}

impl<'a> Cur<'a> {
    pub(crate) fn new(toks: &'a [Tok]) -> Cur<'a> {
        Cur { toks, at: 0 }
    }

    /// The token at the cursor.
    pub(crate) fn peek(&self) -> Option<&'a Tok> {
        self.toks.get(self.at)
    }

    /// The token `n` places after the cursor.
    pub(crate) fn peek_at(&self, n: usize) -> Option<&'a Tok> {
        self.toks.get(self.at + n)
    }

    /// Takes the token at the cursor.
    pub(crate) fn next(&mut self) -> Option<&'a Tok> {
        let t = self.toks.get(self.at);
        if t.is_some() {
            self.at += 1;
        }
        t
    }

    /// The tokens not read yet.
    pub(crate) fn rest(&self) -> &'a [Tok] {
        &self.toks[self.at.min(self.toks.len())..]
    }

    /// Whether every token was read.
    pub(crate) fn done(&self) -> bool {
        self.at >= self.toks.len()
    }

    /// Takes the keyword `k` if it is next.
    pub(crate) fn kw(&mut self, k: &str) -> bool {
        if self.peek().is_some_and(|t| t.is_kw(k)) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    /// Takes the operator `o` if it is next.
    pub(crate) fn op(&mut self, o: &str) -> bool {
        if self.peek().is_some_and(|t| t.is_op(o)) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    /// Error 102 at the cursor (or at the last token, at the end).
    pub(crate) fn error(&self) -> Message {
        let near = self
            .peek()
            .or_else(|| self.toks.last())
            .map(Tok::near)
            .unwrap_or_default();
        syntax_error(&near)
    }

    /// Requires the keyword `k`.
    pub(crate) fn expect_kw(&mut self, k: &str) -> Result<(), Message> {
        if self.kw(k) {
            Ok(())
        } else {
            Err(self.error())
        }
    }

    /// Requires the operator `o`.
    pub(crate) fn expect_op(&mut self, o: &str) -> Result<(), Message> {
        if self.op(o) {
            Ok(())
        } else {
            Err(self.error())
        }
    }

    /// Requires the end of the statement.
    pub(crate) fn expect_end(&self) -> Result<(), Message> {
        if self.done() {
            Ok(())
        } else {
            Err(self.error())
        }
    }

    /// A multi-part name (`a`, `[a].[b]`, `msdb.dbo.x`, `msdb..x`), its
    /// parts unescaped (an omitted part is empty).
    pub(crate) fn name(&mut self) -> Result<Vec<String>, Message> {
        let mut parts = Vec::new();
        let Some(first) = self.peek().and_then(Tok::name_part) else {
            return Err(self.error());
        };
        self.at += 1;
        parts.push(first.to_string());
        while self.op(".") {
            if self.peek().is_some_and(|t| t.is_op(".")) {
                parts.push(String::new());
                continue;
            }
            let Some(p) = self.peek().and_then(Tok::name_part) else {
                return Err(self.error());
            };
            self.at += 1;
            parts.push(p.to_string());
        }
        if parts.len() > 4 {
            return Err(self.error());
        }
        Ok(parts)
    }

    /// A string literal.
    pub(crate) fn string(&mut self) -> Result<String, Message> {
        match self.peek() {
            Some(Tok::Str(s)) => {
                self.at += 1;
                Ok(s.clone())
            }
            _ => Err(self.error()),
        }
    }

    /// An integer literal.
    pub(crate) fn int(&mut self) -> Result<i64, Message> {
        match self.peek() {
            Some(Tok::Num(n)) if n.parse::<i64>().is_ok() => {
                self.at += 1;
                Ok(n.parse().unwrap_or_default())
            }
            _ => Err(self.error()),
        }
    }

    /// Tokens up to the matching `)` of a `(` just read; the cursor ends
    /// after it.
    pub(crate) fn parenthesised(&mut self) -> Result<&'a [Tok], Message> {
        let start = self.at;
        let mut depth = 1;
        while let Some(t) = self.next() {
            if t.is_op("(") {
                depth += 1;
            } else if t.is_op(")") {
                depth -= 1;
                if depth == 0 {
                    return Ok(&self.toks[start..self.at - 1]);
                }
            }
        }
        Err(syntax_error(
            &self.toks.last().map(Tok::near).unwrap_or_default(),
        ))
    }
}

/// Splits tokens at top-level commas.
pub(crate) fn comma_list(toks: &[Tok]) -> Vec<&[Tok]> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, t) in toks.iter().enumerate() {
        if t.is_op("(") {
            depth += 1;
        } else if t.is_op(")") {
            depth -= 1;
        } else if t.is_op(",") && depth == 0 {
            out.push(&toks[start..i]);
            start = i + 1;
        }
    }
    if start < toks.len() || !out.is_empty() {
        out.push(&toks[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_unescape_and_drop_comments() {
        let t = tokens(
            "SELECT N'it''s' /* a /* nested */ comment */, [a]]b] -- rest\n, @@TRANCOUNT >= 1",
        )
        .unwrap();
        assert_eq!(
            t,
            vec![
                Tok::Word("SELECT".into()),
                Tok::Str("it's".into()),
                Tok::Op(",".into()),
                Tok::Ident("a]b".into()),
                Tok::Op(",".into()),
                Tok::Var("@@TRANCOUNT".into()),
                Tok::Op(">=".into()),
                Tok::Num("1".into()),
            ]
        );
        assert_eq!(tokens("SELECT 'x").unwrap_err().number, 105);
    }

    #[test]
    fn statements_split_on_semicolons_outside_blocks() {
        let s = statements(
            tokens("SET XACT_ABORT ON; BEGIN TRANSACTION; IF 1 = 1 BEGIN SELECT 1; SELECT 2; END; SELECT CASE WHEN 1 = 1 THEN 1 END;;").unwrap(),
        );
        assert_eq!(s.len(), 4, "{s:?}");
        assert!(s[1][0].is_kw("BEGIN") && s[1][1].is_kw("TRANSACTION"));
        assert!(s[2].last().unwrap().is_kw("END"));
    }

    #[test]
    fn names_have_up_to_four_parts() {
        let t = tokens("msdb..sysjobs [upshift].[schema_history] a.b.c.d.e").unwrap();
        let mut c = Cur::new(&t);
        assert_eq!(c.name().unwrap(), vec!["msdb", "", "sysjobs"]);
        assert_eq!(c.name().unwrap(), vec!["upshift", "schema_history"]);
        assert!(c.name().is_err());
    }
}
