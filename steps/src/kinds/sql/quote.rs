//! Quoting of identifiers and literals that cannot be parameters (database
//! names and file paths in BACKUP/RESTORE/ALTER DATABASE).

/// `[name]` with `]` doubled, like `QUOTENAME(name)`. Rejects names SQL
/// Server cannot have (empty, longer than 128 characters, NUL).
pub fn ident(name: &str) -> Result<String, String> {
    if name.is_empty() || name.chars().count() > 128 || name.contains('\0') {
        return Err(format!(
            "`{name}` is not a valid SQL Server name (1 to 128 characters, no NUL)"
        ));
    }
    Ok(format!("[{}]", name.replace(']', "]]")))
}

/// `N'text'` with `'` doubled. Rejects NUL, which T-SQL cannot carry.
pub fn literal(text: &str) -> Result<String, String> {
    if text.contains('\0') {
        return Err("a text value contains a NUL character".to_string());
    }
    Ok(format!("N'{}'", text.replace('\'', "''")))
}

/// A two-part name `schema.name` (each part bracketed or not) as
/// `[schema].[name]`.
pub fn two_part(name: &str) -> Result<String, String> {
    let parts = split_name(name)?;
    parts
        .iter()
        .map(|p| ident(p))
        .collect::<Result<Vec<_>, _>>()
        .map(|v| v.join("."))
}

/// Splits `[a].[b]` / `a.b` / `[a.b]]c]` into its unquoted parts.
pub fn split_name(name: &str) -> Result<Vec<String>, String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = name.trim().chars().peekable();
    let mut in_bracket = false;
    while let Some(c) = chars.next() {
        match (in_bracket, c) {
            (false, '[') => in_bracket = true,
            (true, ']') if chars.peek() == Some(&']') => {
                chars.next();
                cur.push(']');
            }
            (true, ']') => in_bracket = false,
            (false, '.') => parts.push(std::mem::take(&mut cur)),
            (_, c) => cur.push(c),
        }
    }
    if in_bracket {
        return Err(format!("`{name}`: unclosed `[`"));
    }
    parts.push(cur);
    if parts.iter().any(|p| p.trim().is_empty()) {
        return Err(format!("`{name}`: empty name part"));
    }
    Ok(parts.into_iter().map(|p| p.trim().to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_bracketed_and_escaped() {
        let cases = [
            ("TM", "[TM]"),
            ("we]ird", "[we]]ird]"),
            ("a]]b", "[a]]]]b]"),
            ("x'; DROP DATABASE TM; --", "[x'; DROP DATABASE TM; --]"),
            ("[TM]", "[[TM]]]"),
        ];
        for (name, want) in cases {
            assert_eq!(ident(name).unwrap(), want, "{name}");
        }
        assert!(ident("").is_err());
        assert!(ident(&"x".repeat(129)).is_err());
    }

    #[test]
    fn literals_are_n_quoted_and_escaped() {
        let cases = [
            ("C:\\backup\\TM.bak", "N'C:\\backup\\TM.bak'"),
            ("O'Brien's.bak", "N'O''Brien''s.bak'"),
            ("'; DROP TABLE x; --", "N'''; DROP TABLE x; --'"),
            ("", "N''"),
        ];
        for (text, want) in cases {
            assert_eq!(literal(text).unwrap(), want, "{text}");
        }
        assert!(literal("a\0b").is_err());
    }

    #[test]
    fn two_part_names_split_on_dots_outside_brackets() {
        assert_eq!(
            two_part("[mgt].[usp_CleanupReporting_DboSchema]").unwrap(),
            "[mgt].[usp_CleanupReporting_DboSchema]"
        );
        assert_eq!(
            two_part("Reporting.usp_DataLoader").unwrap(),
            "[Reporting].[usp_DataLoader]"
        );
        assert_eq!(split_name("[a.b]]c].d").unwrap(), vec!["a.b]c", "d"]);
        assert!(split_name("[a").is_err());
        assert!(split_name("a..b").is_err());
    }
}
