//! The commands that continue a run, ready to paste: the one place that
//! decides whether a suggested command carries `--journal DIR`.
//!
//! A pause reason is journaled without a journal folder (the pure core
//! does not know where the journal lives, and an export is read on another
//! machine); whoever shows it passes it through [`complete`] with the
//! journal it was read from, so that every `` `upshift ...` `` in it names
//! that journal unless it is the default one. The terminal, `status`,
//! `status --follow`, the demo and the operator messages of `[notify]` all
//! use these functions.

use std::path::Path;

use super::workspace::{default_journal_dir, resolve_dir};

/// Whether a command without `--journal` finds this journal, here and in
/// any other shell: it is the OS default and `$UPSHIFT_JOURNAL` does not
/// point elsewhere.
pub fn is_default(dir: &Path) -> bool {
    dir == default_journal_dir() && resolve_dir(None) == dir
}

/// `path` as one shell word (double quotes when it needs any; the same on
/// cmd.exe, PowerShell and sh).
pub fn shell_word(path: &str) -> String {
    if !path.is_empty()
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/\\._-:+=@,~".contains(c))
    {
        path.to_string()
    } else {
        format!("\"{}\"", path.replace('"', "\\\""))
    }
}

/// ` --journal DIR`, or nothing for the default journal.
pub fn journal_arg(dir: &Path) -> String {
    if is_default(dir) {
        String::new()
    } else {
        format!(" --journal {}", shell_word(&dir.display().to_string()))
    }
}

/// `upshift ARGS --journal DIR` (without `--journal` for the default
/// journal).
pub fn command(dir: &Path, args: &str) -> String {
    format!("upshift {args}{}", journal_arg(dir))
}

/// `text` with `--journal DIR` added to every `` `upshift ...` `` command in
/// it that does not name a journal yet.
pub fn complete(text: &str, dir: &Path) -> String {
    let arg = journal_arg(dir);
    if arg.is_empty() {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 64);
    let mut rest = text;
    while let Some(at) = rest.find("`upshift ") {
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        // The command runs to the closing backtick (on the same line).
        match from[1..].find(['`', '\n']) {
            Some(end) if from.as_bytes()[1 + end] == b'`' => {
                let cmd = &from[..1 + end];
                out.push_str(cmd);
                if !cmd.contains(" --journal") {
                    out.push_str(&arg);
                }
                out.push('`');
                rest = &from[2 + end..];
            }
            _ => {
                out.push_str(&from[..1]);
                rest = &from[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_quoted_command_gets_the_journal() {
        let dir = Path::new("/srv/up shift/j");
        assert_eq!(
            complete(
                "step a failed: x\n  then: `upshift retry R a`, or `upshift abort R`; see `upshift log R --journal /x`",
                dir
            ),
            "step a failed: x\n  then: `upshift retry R a --journal \"/srv/up shift/j\"`, or `upshift abort R --journal \"/srv/up shift/j\"`; see `upshift log R --journal /x`"
        );
        assert_eq!(complete("a ` b `upshift", dir), "a ` b `upshift");
        assert_eq!(
            command(Path::new("/j"), "resume R"),
            "upshift resume R --journal /j"
        );
    }
}
