//! Which keys of a site file are read, and the keys nobody reads.
//!
//! A site file is read by two parties: the plan (every `${site.a.b}` in any
//! of its strings) and the rule sets the plan names (each declares the keys
//! it reads, [`crate::rules::RuleSet::reads`], and is handed only those).
//! A key that neither reads is a mistake — usually a misspelling
//! (`hots = "web01"`, `site_prot = 8443`) that would otherwise be ignored
//! silently, together with the checks that needed the right key — so it is
//! an error at its line in the site file, with a suggestion toward a key
//! that is read.
//!
//! Patterns are dotted paths: `components.FE.port`; `*` is any one key
//! (`components.*.host`), `*_group` / `tm*` any key with that suffix or
//! prefix, `**` any number of keys (`**.*thumbprint`). Reading a table
//! reads everything in it (`${site.hosts}`).
//!
//! ```
//! use upshift::sitekeys::KeyPattern;
//! let p = KeyPattern::parse("components.*.host");
//! assert!(p.covers(&["components", "FE", "host"]));
//! assert!(!p.covers(&["components", "FE", "hots"]));
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::diagnostics::{Locator, PlanError, suggest};
use crate::refs::{self, Ref};

/// One segment of a [`KeyPattern`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Seg {
    Lit(String),
    Any,
    Suffix(String),
    Prefix(String),
    Deep,
}

impl Seg {
    fn matches(&self, key: &str) -> bool {
        match self {
            Seg::Lit(l) => l == key,
            Seg::Any | Seg::Deep => true,
            Seg::Suffix(s) => key.ends_with(s.as_str()),
            Seg::Prefix(p) => key.starts_with(p.as_str()),
        }
    }

    fn text(&self) -> String {
        match self {
            Seg::Lit(l) => l.clone(),
            Seg::Any => "*".into(),
            Seg::Suffix(s) => format!("*{s}"),
            Seg::Prefix(p) => format!("{p}*"),
            Seg::Deep => "**".into(),
        }
    }
}

/// A set of site keys, as a dotted pattern (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyPattern(Vec<Seg>);

/// How a pattern relates to a key path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Match {
    /// The path, or a table above it, is read: everything in it.
    Full,
    /// Something inside the path (a table) is read.
    Inside,
    /// Nothing of it.
    No,
}

fn relate(pat: &[Seg], path: &[&str]) -> Match {
    match pat.first() {
        None => Match::Full,
        Some(Seg::Deep) => {
            // `**` matches no key, or one more key.
            let skip = relate(&pat[1..], path);
            let take = if path.is_empty() {
                Match::Inside
            } else {
                relate(pat, &path[1..])
            };
            match (skip, take) {
                (Match::Full, _) | (_, Match::Full) => Match::Full,
                _ => Match::Inside,
            }
        }
        Some(seg) => match path.first() {
            None => Match::Inside,
            Some(k) if seg.matches(k) => relate(&pat[1..], &path[1..]),
            Some(_) => Match::No,
        },
    }
}

impl KeyPattern {
    /// Parses a dotted pattern.
    pub fn parse(text: &str) -> KeyPattern {
        KeyPattern(
            text.split('.')
                .map(|s| match s {
                    "*" => Seg::Any,
                    "**" => Seg::Deep,
                    _ if s.len() > 1 && s.starts_with('*') => Seg::Suffix(s[1..].to_string()),
                    _ if s.len() > 1 && s.ends_with('*') => {
                        Seg::Prefix(s[..s.len() - 1].to_string())
                    }
                    _ => Seg::Lit(s.to_string()),
                })
                .collect(),
        )
    }

    /// Whether the key at `path` is read (or a table above it is).
    pub fn covers(&self, path: &[&str]) -> bool {
        relate(&self.0, path) == Match::Full
    }

    /// Whether the value at `path`, a site value, is one this pattern reads
    /// or holds one it reads.
    pub fn touches(&self, path: &[&str]) -> bool {
        relate(&self.0, path) != Match::No
    }

    /// The names this pattern gives a key directly under `parent`
    /// (`host` for `components.*.host` under `components.FE`).
    fn names_under(&self, parent: &[&str]) -> Option<String> {
        let n = parent.len();
        if self.0.len() <= n || self.0[..n].contains(&Seg::Deep) {
            return None;
        }
        if !self.0[..n].iter().zip(parent).all(|(s, k)| s.matches(k)) {
            return None;
        }
        Some(self.0[n].text())
    }
}

impl std::fmt::Display for KeyPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(Seg::text).collect();
        f.write_str(&parts.join("."))
    }
}

/// What `${host}` stands for while a plan's site references are gathered:
/// any key (`${site.certificates.thumbprints.${host}}`).
const ANY_HOST: &str = "__upshift_any_host__";

/// Every site key a plan's text refers to (`${site.a.b}` in any string of
/// the plan, wherever it is written: vars, hosts, targets, steps, notify).
pub fn plan_reads(plan: &toml::Table) -> BTreeSet<KeyPattern> {
    fn walk(v: &toml::Value, out: &mut BTreeSet<KeyPattern>) {
        match v {
            toml::Value::String(s) => {
                let s = s.replace("${host}", ANY_HOST);
                if let Ok(found) = refs::refs_in(&s) {
                    for r in found {
                        if let Ref::Site(p) | Ref::SiteOptional(p) = r {
                            out.insert(KeyPattern(
                                p.split('.')
                                    .map(|k| {
                                        if k.contains(ANY_HOST) {
                                            Seg::Any
                                        } else {
                                            Seg::Lit(k.to_string())
                                        }
                                    })
                                    .collect(),
                            ));
                        }
                    }
                }
            }
            toml::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            toml::Value::Table(t) => t.values().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    for v in plan.values() {
        walk(v, &mut out);
    }
    out
}

/// The part of a site document that `reads` touch (what a rule set is
/// handed: it cannot read a key it did not declare).
pub fn restrict(doc: &toml::Value, reads: &[KeyPattern]) -> toml::Value {
    fn go(v: &toml::Value, path: &mut Vec<String>, reads: &[KeyPattern]) -> Option<toml::Value> {
        let keys: Vec<&str> = path.iter().map(String::as_str).collect();
        if reads.iter().any(|r| r.covers(&keys)) {
            return Some(v.clone());
        }
        if !reads.iter().any(|r| r.touches(&keys)) {
            return None;
        }
        let toml::Value::Table(t) = v else {
            return None;
        };
        let mut out = toml::Table::new();
        for (k, v) in t {
            path.push(k.clone());
            if let Some(kept) = go(v, path, reads) {
                out.insert(k.clone(), kept);
            }
            path.pop();
        }
        Some(toml::Value::Table(out))
    }
    go(doc, &mut Vec::new(), reads).unwrap_or_else(|| toml::Value::Table(toml::Table::new()))
}

/// A site key nobody reads.
#[derive(Debug, Clone)]
pub struct Unread {
    /// The error, at the key's line in the site file.
    pub error: PlanError,
    /// The read key it is probably a misspelling of (dotted), if any.
    pub suggests: Option<String>,
}

/// Every key of the site file that no pattern of `reads` reads: one error
/// per key (at the outermost unread one: a misspelt table is one error),
/// at its line, with a suggestion toward a key that is read there.
pub fn unread_keys(file: &Path, text: &str, reads: &BTreeSet<KeyPattern>) -> Vec<Unread> {
    let Ok(doc) = toml::de::DeTable::parse(text) else {
        return Vec::new();
    };
    let loc = Locator { file, text };
    let mut out = Vec::new();
    let mut path = Vec::new();
    walk_unread(doc.get_ref(), &mut path, reads, &loc, &mut out);
    out
}

fn walk_unread(
    table: &toml::de::DeTable<'_>,
    path: &mut Vec<String>,
    reads: &BTreeSet<KeyPattern>,
    loc: &Locator<'_>,
    out: &mut Vec<Unread>,
) {
    for (k, v) in table {
        path.push(k.get_ref().to_string());
        let keys: Vec<&str> = path.iter().map(String::as_str).collect();
        if reads.iter().any(|r| r.covers(&keys)) {
            // Read whole.
        } else if reads.iter().any(|r| r.touches(&keys))
            && let toml::de::DeValue::Table(t) = v.get_ref()
        {
            let mut inside = Vec::new();
            walk_unread(t, path, reads, loc, &mut inside);
            let keys: Vec<&str> = path.iter().map(String::as_str).collect();
            let (parent, key) = keys.split_at(keys.len() - 1);
            let named = reads
                .iter()
                .any(|r| r.names_under(parent).as_deref() == Some(key[0]));
            if !inside.is_empty() && !named {
                // A table only a wildcard reaches (`components.*.port`)
                // with keys nobody reads is itself the mistake
                // (`[components.PSX]`): one error, at its header.
                out.push(unread_error(&keys, k.span(), reads, loc));
            } else {
                out.extend(inside);
            }
        } else {
            out.push(unread_error(&keys, k.span(), reads, loc));
        }
        path.pop();
    }
}

fn unread_error(
    keys: &[&str],
    span: std::ops::Range<usize>,
    reads: &BTreeSet<KeyPattern>,
    loc: &Locator<'_>,
) -> Unread {
    let (parent, key) = keys.split_at(keys.len() - 1);
    let key = key[0];
    let names: BTreeSet<String> = reads.iter().filter_map(|r| r.names_under(parent)).collect();
    let literal = names
        .iter()
        .filter(|n| !n.contains('*'))
        .map(String::as_str);
    let dotted = keys.join(".");
    let mut suggests = None;
    let hint = match suggest(key, literal) {
        Some(s) => {
            let mut right: Vec<&str> = parent.to_vec();
            right.push(s);
            let right = right.join(".");
            let hint = format!(
                "did you mean `{s}` ({right})? A misspelt key is not read, and the checks that need the right one cannot run"
            );
            suggests = Some(right);
            hint
        }
        None if names.is_empty() => {
            "remove it, or check its place against the example site file (plans/sites/example.toml)"
                .to_string()
        }
        None => format!(
            "keys read {}: {}; remove it if it is not needed",
            if parent.is_empty() {
                "at the top".to_string()
            } else {
                format!("under [{}]", parent.join("."))
            },
            names.iter().cloned().collect::<Vec<_>>().join(", ")
        ),
    };
    Unread {
        error: loc.at(
            span,
            format!("site key `{dotted}` is read by neither the plan nor its rules"),
            Some(hint),
        ),
        suggests,
    }
}

/// Where each value of a site file is written, by dotted path (for errors
/// about a value, located at the site file's line).
pub fn value_spans(text: &str) -> BTreeMap<String, std::ops::Range<usize>> {
    fn walk(
        t: &toml::de::DeTable<'_>,
        prefix: &str,
        out: &mut BTreeMap<String, std::ops::Range<usize>>,
    ) {
        for (k, v) in t {
            let p = if prefix.is_empty() {
                k.get_ref().to_string()
            } else {
                format!("{prefix}.{}", k.get_ref())
            };
            match v.get_ref() {
                toml::de::DeValue::Table(inner) => walk(inner, &p, out),
                _ => {
                    out.insert(p, k.span().start..v.span().end);
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(doc) = toml::de::DeTable::parse(text) {
        walk(doc.get_ref(), "", &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads(ps: &[&str]) -> BTreeSet<KeyPattern> {
        ps.iter().map(|p| KeyPattern::parse(p)).collect()
    }

    #[test]
    fn patterns_cover_what_they_read() {
        let p = KeyPattern::parse("**.*thumbprint");
        assert!(p.covers(&["certificates", "thumbprint"]));
        assert!(p.covers(&["a", "b", "tls_thumbprint"]));
        assert!(!p.covers(&["certificates", "mode"]));
        assert!(p.touches(&["certificates"]));
        let g = KeyPattern::parse("ad.*_group");
        assert!(g.covers(&["ad", "system_admin_group"]));
        assert!(!g.covers(&["ad", "user_domain"]));
        assert!(KeyPattern::parse("hosts").covers(&["hosts", "web01", "address"]));
    }

    #[test]
    fn unread_keys_are_located_with_a_suggestion_toward_the_read_one() {
        let text = "[sql]\nhost = \"s\"\n\n[components.API]\nport = 1\nsite_prot = 8443\n\n[componentz.FE]\nport = 2\n\n[components.PSX]\nport = 3\nfolder = 'x'\n";
        let r = reads(&[
            "sql.host",
            "components.API.port",
            "components.PS.folder",
            "components.*.port",
            "components.*.site_port",
        ]);
        let found = unread_keys(Path::new("s.toml"), text, &r);
        assert_eq!(
            found[0].suggests.as_deref(),
            Some("components.API.site_port")
        );
        let errs: Vec<PlanError> = found.into_iter().map(|u| u.error).collect();
        assert_eq!(errs.len(), 3, "{errs:#?}");
        assert_eq!((errs[0].line, errs[0].col), (6, 1));
        assert!(errs[0].message.contains("`components.API.site_prot`"));
        assert!(
            errs[0]
                .hint
                .as_deref()
                .unwrap()
                .contains("did you mean `site_port` (components.API.site_port)?")
        );
        assert_eq!(
            errs[1].line, 11,
            "a table only a wildcard reaches: {errs:#?}"
        );
        assert!(errs[1].message.contains("`components.PSX`"));
        assert!(
            errs[1]
                .hint
                .as_deref()
                .unwrap()
                .contains("did you mean `PS`"),
            "{errs:#?}"
        );
        assert_eq!(errs[2].line, 8, "a misspelt table is one error: {errs:#?}");
        assert!(errs[2].message.contains("`componentz`"));
    }

    #[test]
    fn a_rule_set_sees_only_what_it_declares() {
        let doc: toml::Value =
            toml::from_str("[ad]\nx_group = \"a\"\nuser_domain = \"b\"\n[sql]\nhost = \"h\"\n")
                .unwrap();
        let kept = restrict(&doc, &[KeyPattern::parse("ad.*_group")]);
        let want: toml::Value = toml::from_str("[ad]\nx_group = \"a\"\n").unwrap();
        assert_eq!(kept, want);
    }

    #[test]
    fn plan_reads_every_site_reference_and_host_as_any_key() {
        let plan: toml::Table = toml::from_str(
            "[targets.tm]\nhost = \"${site.sql.host}\"\n[steps.a.with]\nt = \"${site.certificates.thumbprints.${host}}\"\nx = \"$${site.literal}\"\n",
        )
        .unwrap();
        let r = plan_reads(&plan);
        let shown: Vec<String> = r.iter().map(|p| p.to_string()).collect();
        assert_eq!(shown, ["certificates.thumbprints.*", "sql.host"]);
    }
}
