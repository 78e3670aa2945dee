//! `cert.check`: normalises and validates a certificate thumbprint, and on
//! Windows checks the certificate in `LocalMachine\My`.
//!
//! A thumbprint copied from the Windows certificate dialog carries invisible
//! Unicode marks (typically U+200E LEFT-TO-RIGHT MARK in front) and spaces
//! between byte pairs; the manual says to strip them. This kind strips
//! invisible format characters (U+200B..U+200F, U+202A..U+202E,
//! U+2060..U+2064, U+2066..U+2069, U+FEFF, U+00AD) and spaces (including
//! no-break spaces), upper-cases the rest, and requires exactly 40 hex
//! digits. A wrong input fails with the invisible characters it held, each
//! named with its position (`U+200E LEFT-TO-RIGHT MARK at position 0`).
//!
//! **Store check (Windows only, `cfg(windows)`)**: PowerShell
//! `Get-Item -LiteralPath Cert:\LocalMachine\<store>\<thumbprint>` (run
//! through the `powershell` kind's safe argument passing): the certificate
//! must exist, be valid now (NotBefore..NotAfter) and for `min_days_valid`
//! more days, and have a private key. **On Linux there is no Windows
//! certificate store: the check is skipped and the output says so**
//! (`store_check` = `skipped: ...`); only the normalisation is verified.
//!
//! Parameters: `thumbprint` (or `thumbprints`, a table by host name, with
//! `host` picking one: a site's per-host thumbprints), `enabled` (default
//! true; false = certificate security off, no thumbprint needed, the step
//! checks nothing and outputs an empty thumbprint), `store` (default `My`), `min_days_valid`
//! (default 0), `require_private_key` (default true), `program` (PowerShell
//! override). Outputs: `thumbprint` (normalised), `stripped` (what was
//! removed), `store_check`, `subject`, `not_after` (Windows).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::kinds::KindFn;
use crate::{Outputs, ParamError, Probe, Step, StepContext, StepError, StepOutcome, parse_params};

/// The `cert.check` kind.
pub const KIND: KindFn = KindFn {
    name: "cert.check",
    summary: "normalise a certificate thumbprint (strip invisible marks) and check it in LocalMachine\\My on Windows",
    build,
    local_paths: &[],
};

/// The name of an invisible or space character stripped from thumbprints;
/// `None` for any other character.
pub fn strippable(c: char) -> Option<&'static str> {
    Some(match c {
        ' ' => "SPACE",
        '\t' => "CHARACTER TABULATION",
        '\u{00A0}' => "NO-BREAK SPACE",
        '\u{00AD}' => "SOFT HYPHEN",
        '\u{200B}' => "ZERO WIDTH SPACE",
        '\u{200C}' => "ZERO WIDTH NON-JOINER",
        '\u{200D}' => "ZERO WIDTH JOINER",
        '\u{200E}' => "LEFT-TO-RIGHT MARK",
        '\u{200F}' => "RIGHT-TO-LEFT MARK",
        '\u{202A}' => "LEFT-TO-RIGHT EMBEDDING",
        '\u{202B}' => "RIGHT-TO-LEFT EMBEDDING",
        '\u{202C}' => "POP DIRECTIONAL FORMATTING",
        '\u{202D}' => "LEFT-TO-RIGHT OVERRIDE",
        '\u{202E}' => "RIGHT-TO-LEFT OVERRIDE",
        '\u{202F}' => "NARROW NO-BREAK SPACE",
        '\u{2060}' => "WORD JOINER",
        '\u{2061}' => "FUNCTION APPLICATION",
        '\u{2062}' => "INVISIBLE TIMES",
        '\u{2063}' => "INVISIBLE SEPARATOR",
        '\u{2064}' => "INVISIBLE PLUS",
        '\u{2066}' => "LEFT-TO-RIGHT ISOLATE",
        '\u{2067}' => "RIGHT-TO-LEFT ISOLATE",
        '\u{2068}' => "FIRST STRONG ISOLATE",
        '\u{2069}' => "POP DIRECTIONAL ISOLATE",
        '\u{FEFF}' => "ZERO WIDTH NO-BREAK SPACE (BOM)",
        _ => return None,
    })
}

/// A normalised thumbprint and what was removed to get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// 40 upper-case hex digits.
    pub thumbprint: String,
    /// The invisible characters removed (spaces not listed), each as
    /// `U+XXXX NAME at position N` (N counts characters from 0).
    pub invisible: Vec<String>,
    /// How many spaces were removed.
    pub spaces: usize,
}

fn describe_char(c: char, pos: usize) -> String {
    format!(
        "U+{:04X} {} at position {pos}",
        c as u32,
        strippable(c).unwrap_or("character")
    )
}

/// Normalises a thumbprint; the error lists the invisible characters found
/// and what else is wrong.
pub fn normalize(input: &str) -> Result<Normalized, String> {
    let mut out = String::new();
    let mut invisible = Vec::new();
    let mut spaces = 0;
    let mut bad = Vec::new();
    for (pos, c) in input.chars().enumerate() {
        if let Some(_name) = strippable(c) {
            if matches!(c, ' ' | '\t' | '\u{00A0}' | '\u{202F}') {
                spaces += 1;
            } else {
                invisible.push(describe_char(c, pos));
            }
        } else if c.is_ascii_hexdigit() {
            out.push(c.to_ascii_uppercase());
        } else {
            bad.push(if c.is_ascii_graphic() {
                format!("'{c}' at position {pos}")
            } else {
                describe_char(c, pos)
            });
        }
    }
    if bad.is_empty() && out.len() == 40 {
        return Ok(Normalized {
            thumbprint: out,
            invisible,
            spaces,
        });
    }
    let mut problems = Vec::new();
    if !bad.is_empty() {
        problems.push(format!(
            "characters that are not hex digits: {}",
            bad.join(", ")
        ));
    }
    if out.len() != 40 {
        problems.push(format!(
            "{} hex digits where a thumbprint has 40",
            out.len()
        ));
    }
    let mut msg = format!(
        "`{}` is not a certificate thumbprint: {}",
        input.escape_default(),
        problems.join("; ")
    );
    if !invisible.is_empty() {
        msg.push_str(&format!(
            "; invisible characters found (and stripped): {}",
            invisible.join(", ")
        ));
    }
    msg.push_str(" (copy the thumbprint again from the certificate's Details tab)");
    Err(msg)
}

/// What the Windows store lookup printed, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoreInfo {
    /// The certificate was found.
    pub found: bool,
    /// Its subject.
    pub subject: String,
    /// NotBefore (UTC).
    pub not_before: Option<chrono::DateTime<chrono::Utc>>,
    /// NotAfter (UTC).
    pub not_after: Option<chrono::DateTime<chrono::Utc>>,
    /// Whether it has a private key.
    pub has_private_key: bool,
}

/// The PowerShell script of the store lookup (arguments come as parameters).
pub const STORE_SCRIPT: &str = "param([string]$Thumbprint, [string]$Store)\n\
$c = Get-Item -LiteralPath ('Cert:\\LocalMachine\\' + $Store + '\\' + $Thumbprint) -ErrorAction SilentlyContinue\n\
if (-not $c) { 'FOUND=False'; exit 0 }\n\
'FOUND=True'\n\
'SUBJECT=' + $c.Subject\n\
'NOTBEFORE=' + $c.NotBefore.ToUniversalTime().ToString('o')\n\
'NOTAFTER=' + $c.NotAfter.ToUniversalTime().ToString('o')\n\
'HASPRIVATEKEY=' + $c.HasPrivateKey\n";

/// Parses [`STORE_SCRIPT`]'s output.
pub fn parse_store_output(out: &str) -> StoreInfo {
    let mut info = StoreInfo::default();
    let time = |v: &str| {
        chrono::DateTime::parse_from_rfc3339(v.trim())
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc))
    };
    for line in out.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        match k.trim() {
            "FOUND" => info.found = v.trim().eq_ignore_ascii_case("true"),
            "SUBJECT" => info.subject = v.trim().to_string(),
            "NOTBEFORE" => info.not_before = time(v),
            "NOTAFTER" => info.not_after = time(v),
            "HASPRIVATEKEY" => info.has_private_key = v.trim().eq_ignore_ascii_case("true"),
            _ => {}
        }
    }
    info
}

/// Judges a store lookup at `now`: the problems, empty if fine.
pub fn judge_store(
    info: &StoreInfo,
    now: chrono::DateTime<chrono::Utc>,
    min_days_valid: u32,
    require_private_key: bool,
    where_: &str,
) -> Vec<String> {
    if !info.found {
        return vec![format!("no certificate with this thumbprint in {where_}")];
    }
    let mut p = Vec::new();
    match (info.not_before, info.not_after) {
        (_, None) => p.push("its expiry date could not be read".to_string()),
        (Some(nb), _) if nb > now => p.push(format!("it is not valid before {nb}")),
        (_, Some(na)) if na <= now => p.push(format!("it expired on {na}")),
        (_, Some(na)) if na <= now + chrono::Duration::days(i64::from(min_days_valid)) => p.push(
            format!("it expires on {na}, within the {min_days_valid} days required"),
        ),
        _ => {}
    }
    if require_private_key && !info.has_private_key {
        p.push("it has no private key (import it with its key, as .pfx)".into());
    }
    p
}

fn yes() -> bool {
    true
}

fn my() -> String {
    "My".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    thumbprint: Option<String>,
    /// Thumbprints by host name; `host` picks one (a site's per-host table).
    #[serde(default)]
    thumbprints: BTreeMap<String, String>,
    host: Option<String>,
    /// Certificate security on (default) or off: off needs no thumbprint.
    enabled: Option<super::appsettings::SettingValue>,
    #[serde(default = "my")]
    store: String,
    #[serde(default)]
    min_days_valid: u32,
    #[serde(default = "yes")]
    require_private_key: bool,
    program: Option<String>,
}

struct CertCheck {
    /// `None`: certificate security is off, nothing to check.
    input: Option<String>,
    store: String,
    min_days_valid: u32,
    require_private_key: bool,
    #[cfg_attr(not(windows), allow(dead_code))]
    program: String,
}

fn build(with: &toml::Table) -> Result<Box<dyn Step>, ParamError> {
    let p: Params = parse_params(with)?;
    if !super::powershell::valid_name(&p.store) {
        return Err(
            ParamError::field("store", format!("`{}` is not a store name", p.store))
                .hint("e.g. store = \"My\" (LocalMachine\\My, the Personal store)"),
        );
    }
    let enabled = match p.enabled.as_ref().map(|v| v.0.trim().to_ascii_lowercase()) {
        None => true,
        Some(v) if v == "true" => true,
        Some(v) if v == "false" => false,
        Some(v) => {
            return Err(ParamError::field(
                "enabled",
                format!("enabled = `{v}`: write true or false"),
            ));
        }
    };
    if p.thumbprint.is_some() && (!p.thumbprints.is_empty() || p.host.is_some()) {
        return Err(ParamError::field(
            "thumbprint",
            "give `thumbprint`, or `thumbprints` with `host`, not both",
        ));
    }
    let input = if !enabled {
        None
    } else if let Some(t) = p.thumbprint {
        Some(t)
    } else {
        let Some(host) = p.host else {
            return Err(ParamError::field(
                "thumbprint",
                "give `thumbprint`, or `thumbprints` (by host) with `host`",
            ));
        };
        match p.thumbprints.get(&host) {
            Some(t) => Some(t.clone()),
            None => {
                return Err(ParamError::field(
                    "thumbprints",
                    format!(
                        "certificate security is on, but there is no thumbprint for host `{host}` (thumbprints for: {})",
                        if p.thumbprints.is_empty() {
                            "none".to_string()
                        } else {
                            p.thumbprints.keys().cloned().collect::<Vec<_>>().join(", ")
                        }
                    ),
                )
                .hint(format!(
                    "add `{host} = \"<40 hex digits>\"` to the thumbprints (the certificate of that machine), or turn certificate security off"
                )));
            }
        }
    };
    // A thumbprint that cannot be valid is a plan error, found before
    // anything runs, unless it comes from a reference resolved later.
    if let Some(t) = &input
        && !t.contains("${")
    {
        normalize(t).map_err(|m| ParamError::field("thumbprint", m))?;
    }
    Ok(Box::new(CertCheck {
        input,
        store: p.store,
        min_days_valid: p.min_days_valid,
        require_private_key: p.require_private_key,
        program: p
            .program
            .unwrap_or_else(|| super::powershell::default_program().to_string()),
    }))
}

impl CertCheck {
    fn where_(&self) -> String {
        format!("LocalMachine\\{}", self.store)
    }

    /// The store check: `Ok(None)` when skipped (not Windows).
    async fn store_check(
        &self,
        ctx: &dyn StepContext,
        thumbprint: &str,
    ) -> Result<Option<(StoreInfo, Vec<String>)>, StepError> {
        #[cfg(windows)]
        {
            use super::powershell::{Invocation, write_inline};
            let path = write_inline(&ctx.work_dir(), "cert-check", STORE_SCRIPT)?;
            let inv = Invocation {
                program: self.program.clone(),
                script_path: path,
                named: vec![
                    ("Thumbprint".into(), thumbprint.to_string()),
                    ("Store".into(), self.store.clone()),
                ],
                positional: Vec::new(),
            };
            let (code, out) = super::run_quiet(ctx, &inv.spec()).await?;
            if code != 0 {
                return Err(StepError::fatal(format!(
                    "the certificate store lookup failed (exit {code}): {}",
                    out.trim()
                )));
            }
            let info = parse_store_output(&out);
            let problems = judge_store(
                &info,
                chrono::Utc::now(),
                self.min_days_valid,
                self.require_private_key,
                &self.where_(),
            );
            Ok(Some((info, problems)))
        }
        #[cfg(not(windows))]
        {
            let _ = (ctx, thumbprint);
            Ok(None)
        }
    }
}

/// What the step says when certificate security is off.
pub const OFF: &str =
    "certificate security is off (enabled = false): no thumbprint needed, nothing checked";

/// What `store_check` says when there is no Windows store.
pub const SKIPPED: &str = "skipped: not Windows (no LocalMachine certificate store here); only the thumbprint was checked";

#[async_trait::async_trait]
impl Step for CertCheck {
    fn describe(&self) -> Vec<String> {
        let Some(input) = &self.input else {
            return vec![OFF.to_string()];
        };
        let tp = normalize(input)
            .map(|n| n.thumbprint)
            .unwrap_or_else(|_| input.clone());
        vec![format!(
            "check certificate {tp} in {}: exists, valid{}{}{}",
            self.where_(),
            if self.min_days_valid > 0 {
                format!(" for {} more days", self.min_days_valid)
            } else {
                String::new()
            },
            if self.require_private_key {
                ", has a private key"
            } else {
                ""
            },
            if cfg!(windows) {
                ""
            } else {
                " (store check skipped: not Windows)"
            }
        )]
    }

    async fn run(&self, ctx: &dyn StepContext) -> Result<StepOutcome, StepError> {
        let Some(input) = &self.input else {
            ctx.output(&format!("{OFF}\n"));
            let mut outputs = Outputs::new();
            for k in ["thumbprint", "stripped"] {
                outputs.insert(k.into(), String::new());
            }
            outputs.insert("store_check".into(), "off".into());
            return Ok(StepOutcome::with_outputs(outputs));
        };
        let n = normalize(input).map_err(StepError::fatal)?;
        let mut stripped = n.invisible.clone();
        if n.spaces > 0 {
            stripped.push(format!("{} space(s)", n.spaces));
        }
        if !stripped.is_empty() {
            ctx.output(&format!(
                "stripped from the thumbprint: {}\n",
                stripped.join(", ")
            ));
        }
        let mut outputs = Outputs::new();
        outputs.insert("thumbprint".into(), n.thumbprint.clone());
        outputs.insert("stripped".into(), stripped.join(", "));
        match self.store_check(ctx, &n.thumbprint).await? {
            None => {
                ctx.output(&format!("store check {SKIPPED}\n"));
                outputs.insert("store_check".into(), SKIPPED.into());
            }
            Some((info, problems)) => {
                if !problems.is_empty() {
                    return Err(StepError::fatal(format!(
                        "certificate {} in {}: {}",
                        n.thumbprint,
                        self.where_(),
                        problems.join("; ")
                    )));
                }
                outputs.insert("store_check".into(), "ok".into());
                outputs.insert("subject".into(), info.subject);
                outputs.insert(
                    "not_after".into(),
                    info.not_after.map(|t| t.to_rfc3339()).unwrap_or_default(),
                );
            }
        }
        Ok(StepOutcome::with_outputs(outputs))
    }

    async fn probe(&self, ctx: &dyn StepContext) -> Result<Probe, StepError> {
        let Some(input) = &self.input else {
            return Ok(Probe::InPlace);
        };
        let n = match normalize(input) {
            Ok(n) => n,
            Err(m) => return Ok(Probe::Differs(m)),
        };
        Ok(match self.store_check(ctx, &n.thumbprint).await? {
            None => Probe::Unknown,
            Some((_, p)) if p.is_empty() => Probe::InPlace,
            Some((_, p)) => Probe::Differs(p.join("; ")),
        })
    }
}
