//! Paths and config files a plan names: do they exist, and do the config
//! files parse?
//!
//! A step resolves a relative path against the working directory of the
//! process that runs it (as every tool does). A relative path that exists
//! only beside the plan file works only when upshift is started from the
//! plan's folder; the finding says so.

use std::path::Path;

use super::{Check, PreflightContext};
use crate::kinds::component::xml::Doc;

/// What a path is expected to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A readable file.
    File,
    /// A folder.
    Dir,
}

/// Checks that `path` exists as `expect`; `role` says what it is for
/// ("the settings file the step edits").
pub fn check_path(path: &Path, expect: Expect, role: &str) -> Check {
    let shown = path.display();
    let what = match expect {
        Expect::File => "file",
        Expect::Dir => "folder",
    };
    match std::fs::metadata(path) {
        Ok(m)
            if (expect == Expect::File) == m.is_file() && (expect == Expect::Dir) == m.is_dir() =>
        {
            if expect == Expect::File
                && let Err(e) = std::fs::File::open(path)
            {
                return Check::finding(
                    format!("{shown} cannot be opened: {e}"),
                    format!("{role}: a readable {what}"),
                    "give the account that runs upshift read access",
                );
            }
            Check::ok(format!("{shown}: {role} exists"))
        }
        Ok(_) => Check::finding(
            format!("{shown} is not a {what}"),
            format!("{role}: a {what}"),
            "correct the path in the plan or site file",
        ),
        Err(e) => {
            let relative = path.is_relative();
            Check::finding(
                format!("{shown} not found ({e})"),
                format!("{role}: an existing {what}"),
                if relative {
                    "the path is relative: it resolves against the folder upshift is started in; write it absolute in the plan or site file".to_string()
                } else {
                    "correct the path in the plan or site file, or restore the missing file"
                        .to_string()
                },
            )
        }
    }
}

/// Checks that a config file exists and is well-formed XML.
pub fn check_xml_config(path: &Path, role: &str) -> Vec<Check> {
    let exists = check_path(path, Expect::File, role);
    if exists.is_finding() {
        return vec![exists];
    }
    let shown = path.display();
    let parsed = match std::fs::read(path) {
        Ok(bytes) => match Doc::parse(bytes) {
            Ok(_) => Check::ok(format!("{shown}: well-formed XML")),
            Err(e) => Check::finding(
                format!("{shown}:{}: not well-formed XML: {}", e.line, e.message),
                format!("{role}: a config file the step can edit"),
                "repair the file (compare with the vendor's default), or restore it from a backup",
            ),
        },
        Err(e) => Check::finding(
            format!("{shown} cannot be read: {e}"),
            format!("{role}: readable"),
            "give the account that runs upshift read access",
        ),
    };
    vec![parsed]
}

/// [`check_path`] for a step: a path missing now that an earlier step
/// may create is not a finding (the run finds out when it gets there).
pub fn check_path_for(ctx: &PreflightContext, path: &Path, expect: Expect, role: &str) -> Check {
    if let Some(why) = ctx.relative_paths_unresolvable.as_deref()
        && path.is_relative()
    {
        return Check::finding(
            format!("{}: {role} is a relative path", path.display()),
            format!("{role}: an absolute path"),
            format!("{why}; write the path absolute in the plan or site file"),
        );
    }
    let c = check_path(path, expect, role);
    match ctx.laid_down_by(path) {
        Some(e) if c.is_finding() && !path.exists() => Check::not_checked(
            format!("{}: {role}, not there yet", path.display()),
            format!(
                "step {} ({}) runs before this one and may lay it down",
                e.id, e.kind
            ),
        ),
        _ => c,
    }
}

/// [`check_xml_config`] for a step (see [`check_path_for`]).
pub fn check_xml_config_for(ctx: &PreflightContext, path: &Path, role: &str) -> Vec<Check> {
    let exists = check_path_for(ctx, path, Expect::File, role);
    if !matches!(exists, Check::Ok { .. }) {
        return vec![exists];
    }
    check_xml_config(path, role)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_a_folder_and_broken_xml_are_findings() {
        let d = tempfile::tempdir().unwrap();
        let good = d.path().join("a.config");
        std::fs::write(
            &good,
            "<appSettings><add key=\"a\" value=\"b\" /></appSettings>",
        )
        .unwrap();
        assert!(!check_xml_config(&good, "settings")[0].is_finding());
        let bad = d.path().join("b.config");
        std::fs::write(&bad, "<appSettings><add key=\"a\"").unwrap();
        assert!(check_xml_config(&bad, "settings")[0].is_finding());
        assert!(check_xml_config(&d.path().join("none"), "settings")[0].is_finding());
        assert!(check_path(d.path(), Expect::File, "x").is_finding());
        assert!(!check_path(d.path(), Expect::Dir, "x").is_finding());
        let mut ctx = PreflightContext::new("s");
        assert!(check_path_for(&ctx, &d.path().join("later"), Expect::File, "x").is_finding());
        // Where relative paths mean nothing (a step on an ssh host), one is
        // a finding even when it exists here (cargo runs tests in the
        // package's folder, which holds Cargo.toml).
        let rel = std::path::Path::new("Cargo.toml");
        let mut remote = PreflightContext::new("s");
        remote.relative_paths_unresolvable =
            Some("on host h1 a step runs in a fresh folder".into());
        let far = check_path_for(&remote, rel, Expect::File, "x");
        assert!(far.is_finding(), "{far:?}");
        if rel.exists() {
            let local = check_path_for(&PreflightContext::new("s"), rel, Expect::File, "x");
            assert!(!local.is_finding(), "{local:?}");
        }
        ctx.earlier.push(std::sync::Arc::new(super::super::Earlier {
            id: "make".into(),
            kind: "powershell".into(),
            with_text: format!("Out = '{}'", d.path().join("later").display()),
        }));
        assert!(matches!(
            check_path_for(&ctx, &d.path().join("later"), Expect::File, "x"),
            Check::NotChecked { why, .. } if why.contains("step make")
        ));
        assert!(check_path_for(&ctx, &d.path().join("other"), Expect::File, "x").is_finding());
        match check_path(Path::new("no/such/dir"), Expect::Dir, "scripts") {
            Check::Finding { fix, .. } => assert!(fix.contains("relative")),
            other => panic!("{other:?}"),
        }
    }
}
