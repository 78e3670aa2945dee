//! Keeps the code map of ARCHITECTURE.md true: reads `src/**/*.rs` and
//! fails, naming the file and line, when
//!
//! - `clap` is used outside `src/cli.rs` and `src/main.rs`;
//! - the terminal (`indicatif`, `IsTerminal`/`is_terminal`) is used outside
//!   the UI module (`src/ui/`);
//! - anything outside the command layer (`src/commands/`), the UI and
//!   `main.rs` prints (`println!`, `eprintln!`, `print!`, `eprint!`), unless
//!   the line says `layout: allow(print)` with its reason just above;
//! - a lower layer imports a higher one (the core from `app`/`support`,
//!   anything below the command layer from `cli`/`commands`/`ui`);
//! - the top-level modules import each other in a cycle.
//!
//! Comments are ignored, and so is a file's `#[cfg(test)] mod tests` at
//! its end.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A source file: its path relative to the crate root, and its text.
struct Source {
    path: String,
    text: String,
}

fn sources(root: &Path) -> Vec<Source> {
    let mut out = Vec::new();
    let mut stack = vec![root.join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let p: PathBuf = entry.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(Source {
                    path: p
                        .strip_prefix(root)
                        .expect("under root")
                        .to_string_lossy()
                        .replace('\\', "/"),
                    text: std::fs::read_to_string(&p).expect("read file"),
                });
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// The top-level module a file belongs to (`src/app/run.rs` → `app`), or
/// None for the crate roots.
fn module_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("src/")?;
    let first = rest.split('/').next()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then_some(name)
}

/// (1-based line number, the line without comments), up to the test module.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() == "#[cfg(test)]"
            && lines
                .get(i + 1)
                .is_some_and(|n| n.trim_start().starts_with("mod tests"))
            && !line.starts_with(' ')
        {
            break;
        }
        let code = match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        };
        out.push((i + 1, code.to_string()));
    }
    out
}

fn has_word(code: &str, word: &str) -> bool {
    code.match_indices(word).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        let after = code[at + word.len()..].chars().next();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
            && !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

/// The top-level modules a line names through `crate::` paths (also in
/// `use crate::{a, b::c}` groups).
fn crate_refs(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        if code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
        {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or_default();
            for part in inner.split(',') {
                let name = part.trim().split("::").next().unwrap_or_default();
                if !name.is_empty() {
                    out.push(name.to_string());
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

/// Which modules may not be imported by which (the layers of
/// ARCHITECTURE.md).
fn forbidden(from: &str, to: &str) -> bool {
    const CORE: &[&str] = &[
        "engine",
        "state",
        "decide",
        "plan",
        "hosts",
        "rules",
        "diagnostics",
        "refs",
        "reboot",
        "report",
        "logging",
        "error",
    ];
    const APP: &[&str] = &["app", "support", "demo", "preflight"];
    const TOP: &[&str] = &["cli", "commands", "ui"];
    let below_top = CORE.contains(&from) || APP.contains(&from);
    (below_top && TOP.contains(&to)) || (CORE.contains(&from) && APP.contains(&to))
}

/// Every violation, as `file:line: what`.
fn violations(files: &[Source]) -> Vec<String> {
    let modules: BTreeSet<&str> = files.iter().filter_map(|f| module_of(&f.path)).collect();
    let mut out = Vec::new();
    // (from, to) → first place it happens.
    let mut edges: BTreeMap<(String, String), String> = BTreeMap::new();
    for f in files {
        let module = module_of(&f.path);
        let clap_ok = matches!(f.path.as_str(), "src/cli.rs" | "src/main.rs");
        let ui = module == Some("ui");
        let print_ok = ui || module == Some("commands") || f.path == "src/main.rs";
        let lines = code_lines(&f.text);
        for (no, code) in &lines {
            let at = format!("{}:{no}", f.path);
            if !clap_ok && has_word(code, "clap") {
                out.push(format!(
                    "{at}: uses clap; only src/cli.rs knows the command line (take plain values)"
                ));
            }
            if !ui {
                for t in ["indicatif", "IsTerminal", "is_terminal"] {
                    if has_word(code, t) {
                        out.push(format!(
                            "{at}: uses {t}; only src/ui/ knows the terminal (report through an Observer or return data)"
                        ));
                    }
                }
            }
            if !print_ok {
                let allowed = f
                    .text
                    .lines()
                    .skip(no.saturating_sub(4))
                    .take(4.min(*no))
                    .any(|l| l.contains("layout: allow(print)"));
                for m in ["println!", "eprintln!", "print!", "eprint!"] {
                    if has_word(code, m.trim_end_matches('!')) && code.contains(m) && !allowed {
                        out.push(format!(
                            "{at}: {m} outside the command layer; return data and let src/commands/ print it"
                        ));
                    }
                }
            }
            if let Some(from) = module {
                for to in crate_refs(code) {
                    if to != from && modules.contains(to.as_str()) {
                        if forbidden(from, &to) {
                            out.push(format!(
                                "{at}: `{from}` imports `{to}`, a layer above it (see ARCHITECTURE.md)"
                            ));
                        }
                        edges
                            .entry((from.to_string(), to.clone()))
                            .or_insert_with(|| at.clone());
                    }
                }
            }
        }
    }
    if let Some(cycle) = find_cycle(&edges) {
        let mut text = format!("import cycle between modules: {}", cycle.join(" → "));
        for pair in cycle.windows(2) {
            let at = &edges[&(pair[0].clone(), pair[1].clone())];
            text.push_str(&format!("\n  {at}: {} → {}", pair[0], pair[1]));
        }
        out.push(text);
    }
    out
}

/// A cycle in the module graph, as a closed path (first = last).
fn find_cycle(edges: &BTreeMap<(String, String), String>) -> Option<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        next.entry(from).or_default().push(to);
    }
    // 0 unvisited, 1 on the current path, 2 done.
    let mut color: BTreeMap<&str, u8> = BTreeMap::new();
    fn visit<'a>(
        n: &'a str,
        next: &BTreeMap<&'a str, Vec<&'a str>>,
        color: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        color.insert(n, 1);
        path.push(n);
        for &m in next.get(n).map(Vec::as_slice).unwrap_or_default() {
            match color.get(m).copied().unwrap_or(0) {
                1 => {
                    let start = path.iter().position(|p| *p == m).expect("on path");
                    let mut cycle: Vec<String> =
                        path[start..].iter().map(|s| s.to_string()).collect();
                    cycle.push(m.to_string());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, next, color, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        color.insert(n, 2);
        None
    }
    let nodes: Vec<&str> = next.keys().copied().collect();
    for n in nodes {
        if color.get(n).copied().unwrap_or(0) == 0
            && let Some(c) = visit(n, &next, &mut color, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_source_tree_keeps_its_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = sources(root);
    assert!(
        files.iter().any(|f| f.path == "src/cli.rs"),
        "the checker must see the real tree"
    );
    let v = violations(&files);
    assert!(v.is_empty(), "layout violations:\n{}", v.join("\n"));
}

#[test]
fn the_checker_finds_each_kind_of_violation_with_its_line() {
    let src = |path: &str, text: &str| Source {
        path: path.into(),
        text: text.into(),
    };
    let files = vec![
        src("src/cli.rs", "use clap::Parser;\nuse crate::commands;\n"),
        src("src/main.rs", "fn main() { println!(\"ok\"); }\n"),
        src(
            "src/commands/mod.rs",
            "use crate::app::Workspace;\nfn f() { println!(\"ok\"); }\n",
        ),
        src(
            "src/app/mod.rs",
            "// println!(\"a comment\")\nuse crate::{plan, support::x};\nfn f() {\n    eprintln!(\"no\");\n}\n",
        ),
        src("src/support/mod.rs", "use clap::Args;\nuse crate::app;\n"),
        src(
            "src/plan.rs",
            "use crate::app::Workspace;\nfn f() {\n    // layout: allow(print) — a reason\n    eprintln!(\"allowed\");\n}\n#[cfg(test)]\nmod tests {\n    fn t() { println!(\"test output\"); }\n}\n",
        ),
        src("src/engine.rs", "use std::io::IsTerminal;\n"),
        src(
            "src/ui/mod.rs",
            "use indicatif::ProgressBar;\nfn f() { eprintln!(\"ok\"); }\n",
        ),
    ];
    let v = violations(&files);
    // A violation reported at this place (a file, or file:line).
    let has = |at: &str| v.iter().any(|l| l.starts_with(at));
    assert!(has("src/support/mod.rs:1: uses clap"), "{v:#?}");
    assert!(has("src/app/mod.rs:4: eprintln!"), "{v:#?}");
    assert!(has("src/engine.rs:1: uses IsTerminal"), "{v:#?}");
    assert!(
        has("src/plan.rs:1: `plan` imports `app`, a layer above it"),
        "{v:#?}"
    );
    assert!(
        v.iter()
            .any(|l| l.starts_with("import cycle between modules: ")
                && l.contains("app → plan")
                && l.contains("src/plan.rs:1: plan → app")),
        "{v:#?}"
    );
    assert!(!has("src/plan.rs:4"), "an allowed print: {v:#?}");
    assert!(!has("src/plan.rs:8"), "test module: {v:#?}");
    assert!(!has("src/app/mod.rs:1"), "a comment: {v:#?}");
    assert!(!has("src/cli.rs"), "{v:#?}");
    assert!(!has("src/main.rs"), "{v:#?}");
    assert!(!has("src/commands"), "{v:#?}");
    assert!(!has("src/ui"), "{v:#?}");
    assert_eq!(v.len(), 5, "{v:#?}");
}
