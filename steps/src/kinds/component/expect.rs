//! `config.expect`: reads back what a component really got after its
//! install and fails listing every difference. Windows Installer ignores a
//! public property a package does not define, so a wrong property name
//! passes the install silently; reading the installed config file back is
//! how the plan finds out.
//!
//! Parameters: `file` (the config file); `app_settings` (table key =
//! expected value: `<appSettings>` keys, read as .NET reads them: the last
//! `<add>` of a key wins, keys case-insensitive, and an external file named
//! by `<appSettings file="...">` overrides the keys it holds); `checks`
//! (list of `{ key = "..." | path = "/a/b/@attr", value = "...",
//! compare = "...", file = "...", assumed = "..." }`; `path` is a small
//! XPath subset, see [`super::xml::XmlPath`]; `file` defaults to the step's);
//! a check with `skip_if_empty = true` is left out when its expected value
//! is empty (a thumbprint on a site without certificate security);
//! `compare` (default for every check: `"exact"` | `"ignore-case"` |
//! `"thumbprint"`); `assumed` (a note shown in the dry run for the
//! `app_settings` keys, e.g. "key names are assumptions").
//!
//! Comparison: `exact` compares the text as read (entities resolved);
//! `ignore-case` ignores letter case and surrounding white space;
//! `thumbprint` strips spaces and invisible marks (the `cert.check` list:
//! U+200E and its kin) from both sides and ignores case. On a difference
//! under `exact`, the message says when the two differ only in case, only in
//! invisible characters, or only in surrounding spaces.
//!
//! Outputs: `checked` (number of checks), `files` (the files read). Probe:
//! the same checks. No compensation (it changes nothing).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::appsettings::{SettingValue, load_doc};
use super::cert::{normalize, strippable};
use super::read_file;
use super::shown_value;
use super::xml::{Selected, XmlPath};
use crate::kinds::KindFn;
use crate::{Outputs, ParamError, Probe, Step, StepContext, StepError, StepOutcome, parse_params};

/// The `config.expect` kind.
pub const KIND: KindFn = KindFn {
    name: "config.expect",
    summary: "read back a config file (appSettings keys, element/attribute paths) and fail listing every difference",
    build,
    local_paths: &[],
};

/// How an expected and a found value are compared.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "kebab-case")]
enum Compare {
    /// The text as read.
    #[default]
    Exact,
    /// Letter case and surrounding white space ignored.
    IgnoreCase,
    /// Spaces and invisible marks stripped, case ignored.
    Thumbprint,
}

impl Compare {
    fn name(self) -> &'static str {
        match self {
            Compare::Exact => "exact",
            Compare::IgnoreCase => "ignoring case and surrounding spaces",
            Compare::Thumbprint => "as thumbprints: spaces and invisible marks stripped, any case",
        }
    }

    fn equal(self, expected: &str, found: &str) -> bool {
        match self {
            Compare::Exact => expected == found,
            Compare::IgnoreCase => expected.trim().to_lowercase() == found.trim().to_lowercase(),
            Compare::Thumbprint => thumb(expected) == thumb(found),
        }
    }
}

/// A thumbprint as compared: spaces and invisible marks out, upper case.
/// (A value that is no thumbprint at all is compared the same way, so the
/// difference is still reported.)
fn thumb(v: &str) -> String {
    match normalize(v) {
        Ok(n) => n.thumbprint,
        Err(_) => v
            .chars()
            .filter(|c| strippable(*c).is_none())
            .collect::<String>()
            .to_uppercase(),
    }
}

/// Why two texts that are not equal look alike, if they do.
fn hint(expected: &str, found: &str) -> Option<String> {
    let visible = |s: &str| -> String { s.chars().filter(|c| strippable(*c).is_none()).collect() };
    let invisible: Vec<String> = found
        .chars()
        .enumerate()
        .filter(|(_, c)| *c != ' ' && strippable(*c).is_some())
        .map(|(i, c)| {
            format!(
                "U+{:04X} {} at position {i}",
                c as u32,
                strippable(c).unwrap_or("character")
            )
        })
        .collect();
    if expected.trim() == found.trim() {
        Some("they differ only in surrounding spaces".into())
    } else if expected.to_lowercase() == found.to_lowercase() {
        Some("they differ only in letter case".into())
    } else if visible(expected) == visible(found) && !invisible.is_empty() {
        Some(format!(
            "they differ only in invisible characters; found has {}",
            invisible.join(", ")
        ))
    } else {
        None
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckSpec {
    key: Option<String>,
    path: Option<String>,
    value: SettingValue,
    compare: Option<Compare>,
    file: Option<PathBuf>,
    assumed: Option<String>,
    /// Skip this check when the expected value is empty (e.g. a thumbprint
    /// on a site without certificate security).
    #[serde(default)]
    skip_if_empty: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    file: PathBuf,
    #[serde(default)]
    app_settings: BTreeMap<String, SettingValue>,
    #[serde(default)]
    checks: Vec<CheckSpec>,
    #[serde(default)]
    compare: Compare,
    assumed: Option<String>,
}

/// What a check reads.
#[derive(Debug, Clone)]
enum Target {
    Key(String),
    Path(XmlPath),
}

#[derive(Debug, Clone)]
struct Check {
    file: PathBuf,
    target: Target,
    expected: String,
    compare: Compare,
    assumed: Option<String>,
}

impl Check {
    fn what(&self) -> String {
        match &self.target {
            Target::Key(k) => format!("appSettings `{k}`"),
            Target::Path(p) => p.to_string(),
        }
    }

    fn secret_key(&self) -> String {
        match &self.target {
            Target::Key(k) => k.clone(),
            Target::Path(p) => p.to_string(),
        }
    }
}

struct Expect {
    checks: Vec<Check>,
}

fn build(with: &toml::Table) -> Result<Box<dyn Step>, ParamError> {
    let p: Params = parse_params(with)?;
    let mut checks = Vec::new();
    for (k, v) in p.app_settings {
        if k.trim().is_empty() {
            return Err(ParamError::field("app_settings", "a key is empty"));
        }
        checks.push(Check {
            file: p.file.clone(),
            target: Target::Key(k),
            expected: v.0,
            compare: p.compare,
            assumed: p.assumed.clone(),
        });
    }
    for (i, c) in p.checks.into_iter().enumerate() {
        let field = format!("checks[{i}]");
        let target = match (c.key, c.path) {
            (Some(k), None) if !k.trim().is_empty() => Target::Key(k),
            (None, Some(path)) => {
                Target::Path(XmlPath::parse(&path).map_err(|m| ParamError::field(&field, m))?)
            }
            _ => {
                return Err(ParamError::field(&field, "give either `key` or `path`").hint(
                    "key = \"InstanzName\" (an appSettings key) or path = \"/configuration/.../@attribute\"",
                ));
            }
        };
        if c.skip_if_empty && c.value.0.trim().is_empty() {
            continue;
        }
        let compare = c.compare.unwrap_or(p.compare);
        // A literal is checked now; a reference (or the plan checker's
        // `<output NAME of step ID>` placeholder for one) when it is known.
        let placeholder = c.value.0.starts_with("<output ") && c.value.0.ends_with('>');
        if compare == Compare::Thumbprint && !c.value.0.contains("${") && !placeholder {
            normalize(&c.value.0).map_err(|m| ParamError::field(&field, m))?;
        }
        checks.push(Check {
            file: c.file.unwrap_or_else(|| p.file.clone()),
            target,
            expected: c.value.0,
            compare,
            assumed: c.assumed,
        });
    }
    if checks.is_empty() {
        return Err(ParamError::field(
            "app_settings",
            "nothing to check: `app_settings` and `checks` are empty",
        )
        .hint("e.g. app_settings = { InstanzName = \"TM\", PortNumberToAdd = 8101 }"));
    }
    Ok(Box::new(Expect { checks }))
}

/// The appSettings values of `file` as .NET reads them, with the external
/// file of `<appSettings file="...">` overriding (relative to `file`'s
/// folder). Keys lowercase.
fn app_settings(file: &Path) -> Result<BTreeMap<String, Option<String>>, StepError> {
    let doc = load_doc(file)?;
    let mut out = BTreeMap::new();
    for e in doc.entries() {
        out.insert(e.key.to_lowercase(), e.value.clone());
    }
    if let Some(external) = doc.file_attribute() {
        let path = file.parent().unwrap_or(Path::new(".")).join(external);
        // .NET ignores a missing external file.
        if path.is_file() {
            for e in load_doc(&path)?.entries() {
                out.insert(e.key.to_lowercase(), e.value.clone());
            }
        }
    }
    Ok(out)
}

/// One difference, as reported: (file, what, expected, found).
type Difference = (PathBuf, String, String, String);

impl Expect {
    /// Runs every check; returns the lines for the output and the
    /// differences.
    fn evaluate(&self) -> Result<(Vec<String>, Vec<Difference>), StepError> {
        let mut settings: BTreeMap<PathBuf, BTreeMap<String, Option<String>>> = BTreeMap::new();
        let mut raw: BTreeMap<PathBuf, Vec<u8>> = BTreeMap::new();
        let mut lines = Vec::new();
        let mut diffs = Vec::new();
        for c in &self.checks {
            let found: Vec<Option<String>> = match &c.target {
                Target::Key(k) => {
                    if !settings.contains_key(&c.file) {
                        settings.insert(c.file.clone(), app_settings(&c.file)?);
                    }
                    match settings[&c.file].get(&k.to_lowercase()) {
                        None => Vec::new(),
                        Some(v) => vec![v.clone()],
                    }
                }
                Target::Path(p) => {
                    if !raw.contains_key(&c.file) {
                        raw.insert(c.file.clone(), read_file(&c.file)?);
                    }
                    p.select(&raw[&c.file])
                        .map_err(|e| {
                            StepError::fatal(format!(
                                "{}:{}: not well-formed XML: {}",
                                c.file.display(),
                                e.line,
                                e.message
                            ))
                        })?
                        .into_iter()
                        .map(|s| match s {
                            Selected::Value(v) => Some(v),
                            Selected::NoAttribute => None,
                        })
                        .collect()
                }
            };
            let key = c.secret_key();
            let shown_expected = shown_value(&key, &c.expected);
            let mut problems: Vec<String> = Vec::new();
            if found.is_empty() {
                problems.push("(absent)".into());
            }
            for f in &found {
                match f {
                    None if matches!(c.target, Target::Key(_)) => {
                        problems.push("(an <add> without value)".into())
                    }
                    None => problems.push("(the element has no such attribute)".into()),
                    Some(v) if !c.compare.equal(&c.expected, v) => {
                        let mut text = shown_value(&key, v);
                        if c.compare == Compare::Exact
                            && shown_value(&key, "x") != "(hidden)"
                            && let Some(h) = hint(&c.expected, v)
                        {
                            text.push_str(&format!(" ({h})"));
                        }
                        problems.push(text);
                    }
                    Some(_) => {}
                }
            }
            if problems.is_empty() {
                lines.push(format!(
                    "ok    {}: {} = {shown_expected}",
                    c.file.display(),
                    c.what()
                ));
            } else {
                let found_text = problems.join(", ");
                lines.push(format!(
                    "DIFF  {}: {}: expected {shown_expected}, found {found_text}",
                    c.file.display(),
                    c.what()
                ));
                diffs.push((c.file.clone(), c.what(), shown_expected, found_text));
            }
        }
        Ok((lines, diffs))
    }
}

#[async_trait::async_trait]
impl Step for Expect {
    fn describe(&self) -> Vec<String> {
        let mut lines = vec!["read back and fail listing every difference:".to_string()];
        for c in &self.checks {
            let mut l = format!(
                "  {}: {} must be {} (compared {})",
                c.file.display(),
                c.what(),
                shown_value(&c.secret_key(), &c.expected),
                c.compare.name()
            );
            if let Some(a) = &c.assumed {
                l.push_str(&format!(" — ASSUMPTION: {a}"));
            }
            lines.push(l);
        }
        lines
    }

    async fn run(&self, ctx: &dyn StepContext) -> Result<StepOutcome, StepError> {
        let (lines, diffs) = self.evaluate()?;
        for l in &lines {
            ctx.output(&format!("{l}\n"));
        }
        if !diffs.is_empty() {
            let mut msg = format!(
                "{} of {} check(s) differ from what the plan expects:",
                diffs.len(),
                self.checks.len()
            );
            for (file, what, expected, found) in &diffs {
                msg.push_str(&format!(
                    "\n  {}: {what}: expected {expected}, found {found}",
                    file.display()
                ));
            }
            msg.push_str(
                "\n(a wrong MSI property name is ignored by Windows Installer: check the property names in the site file, or the component's settings)",
            );
            return Err(StepError::fatal(msg));
        }
        let mut files: Vec<String> = self
            .checks
            .iter()
            .map(|c| c.file.display().to_string())
            .collect();
        files.sort();
        files.dedup();
        let mut outputs = Outputs::new();
        outputs.insert("checked".into(), self.checks.len().to_string());
        outputs.insert("files".into(), files.join(","));
        Ok(StepOutcome::with_outputs(outputs))
    }

    async fn probe(&self, _ctx: &dyn StepContext) -> Result<Probe, StepError> {
        let (_, diffs) = self.evaluate()?;
        Ok(if diffs.is_empty() {
            Probe::InPlace
        } else {
            Probe::Differs(
                diffs
                    .iter()
                    .map(|(f, w, e, x)| format!("{}: {w}: expected {e}, found {x}", f.display()))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparisons_and_hints() {
        assert!(Compare::Exact.equal("TM", "TM"));
        assert!(!Compare::Exact.equal("TM", "tm"));
        assert!(Compare::IgnoreCase.equal("Skype for Business", " skype FOR business"));
        let t = "3a7f129c44e10b5d6e8f90abcdef0123456789ab";
        assert!(Compare::Thumbprint.equal(
            t,
            "\u{200e}3A 7F 12 9C 44 E1 0B 5D 6E 8F 90 AB CD EF 01 23 45 67 89 AB"
        ));
        assert!(!Compare::Thumbprint.equal(t, &t.replace('3', "4")));
        assert_eq!(hint("TM", "tm").unwrap(), "they differ only in letter case");
        assert!(
            hint("TM", "\u{200e}TM")
                .unwrap()
                .contains("U+200E LEFT-TO-RIGHT MARK at position 0")
        );
        assert!(hint("TM", "TM ").unwrap().contains("surrounding spaces"));
        assert_eq!(hint("TM", "LUCS"), None);
    }
}
