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
//! **Store check (Windows only, `cfg(windows)`)**: the CryptoAPI
//! (`CertOpenStore` on `LocalMachine\<store>`, read-only,
//! `CertFindCertificateInStore` by SHA-1 hash, the key's
//! `CERT_KEY_PROV_INFO_PROP_ID`): the certificate must exist, be valid now
//! (NotBefore..NotAfter) and for `min_days_valid` more days, and have a
//! private key. No PowerShell (hosts may restrict it) and no tool text. Run
//! under Wine in CI with a certificate and key imported into the prefix's
//! `LocalMachine\My`. **On Linux there is no Windows
//! certificate store: the check is skipped and the output says so**
//! (`store_check` = `skipped: ...`); only the normalisation is verified.
//!
//! Parameters: `thumbprint` (or `thumbprints`, a table by host name, with
//! `host` picking one: a site's per-host thumbprints), `enabled` (default
//! true; false = certificate security off, no thumbprint needed, the step
//! checks nothing and outputs an empty thumbprint), `store` (default `My`), `min_days_valid`
//! (default 0), `require_private_key` (default true), `program` (ignored;
//! kept so that older plans still load). Outputs: `thumbprint` (normalised), `stripped` (what was
//! removed), `store_check`, `subject`, `not_after` (Windows).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::kinds::KindFn;
use crate::{Outputs, ParamError, Probe, Step, StepContext, StepError, StepOutcome, parse_params};

/// The thumbprint as given, `None` when there is none to check. (A
/// `String` here; an `Option<String>` where certificate security can be
/// switched off: preflight reads both.)
trait Given {
    fn given(&self) -> Option<&str>;
}

impl Given for String {
    fn given(&self) -> Option<&str> {
        Some(self)
    }
}

impl Given for Option<String> {
    fn given(&self) -> Option<&str> {
        self.as_deref()
    }
}

/// Days a certificate must still be valid when preflight looks (it runs
/// days before the window), unless `min_days_valid` asks for more.
const PREFLIGHT_MIN_DAYS: u32 = 7;

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

/// What the Windows store lookup found.
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

/// A FILETIME (100 ns ticks since 1601-01-01 UTC) as a UTC time.
pub fn filetime_to_utc(ticks: u64) -> Option<chrono::DateTime<chrono::Utc>> {
    const UNIX_EPOCH_TICKS: i64 = 116_444_736_000_000_000;
    let since_unix = i64::try_from(ticks).ok()? - UNIX_EPOCH_TICKS;
    chrono::DateTime::from_timestamp(
        since_unix.div_euclid(10_000_000),
        (since_unix.rem_euclid(10_000_000) * 100) as u32,
    )
}

/// Thumbprint hex (40 digits, normalised) as the 20 bytes of the hash.
pub fn thumbprint_bytes(thumbprint: &str) -> Option<Vec<u8>> {
    hex::decode(thumbprint).ok().filter(|b| b.len() == 20)
}

/// The CryptoAPI lookup (Windows only).
#[cfg(windows)]
#[allow(unsafe_code)]
mod store {
    use windows_sys::Win32::Security::Cryptography::{
        CERT_CONTEXT, CERT_FIND_SHA1_HASH, CERT_KEY_PROV_INFO_PROP_ID,
        CERT_STORE_OPEN_EXISTING_FLAG, CERT_STORE_PROV_SYSTEM_W, CERT_STORE_READONLY_FLAG,
        CERT_SYSTEM_STORE_LOCAL_MACHINE, CERT_X500_NAME_STR, CRYPT_INTEGER_BLOB, CertCloseStore,
        CertFindCertificateInStore, CertFreeCertificateContext, CertGetCertificateContextProperty,
        CertNameToStrW, CertOpenStore, PKCS_7_ASN_ENCODING, X509_ASN_ENCODING,
    };

    use super::{StoreInfo, filetime_to_utc};

    fn ticks(ft: windows_sys::Win32::Foundation::FILETIME) -> u64 {
        (u64::from(ft.dwHighDateTime) << 32) | u64::from(ft.dwLowDateTime)
    }

    /// Looks the certificate up by its SHA-1 hash in LocalMachine\<store>.
    pub fn lookup(store_name: &str, hash: &[u8]) -> Result<StoreInfo, String> {
        let wname: Vec<u16> = store_name.encode_utf16().chain([0]).collect();
        // SAFETY: CertOpenStore gets a NUL-terminated store name that
        // outlives the call; the blob points at `hash` (alive for the
        // find); the context and store are freed/closed exactly once below;
        // the fields read belong to a context that is still held.
        unsafe {
            let store = CertOpenStore(
                CERT_STORE_PROV_SYSTEM_W,
                0,
                0,
                CERT_SYSTEM_STORE_LOCAL_MACHINE
                    | CERT_STORE_READONLY_FLAG
                    | CERT_STORE_OPEN_EXISTING_FLAG,
                wname.as_ptr().cast(),
            );
            if store.is_null() {
                // No such store (a fresh Wine prefix has no My yet): then
                // the certificate is not there either.
                if windows_sys::Win32::Foundation::GetLastError()
                    == windows_sys::Win32::Foundation::ERROR_FILE_NOT_FOUND
                {
                    return Ok(StoreInfo::default());
                }
                return Err(format!(
                    "cannot open the certificate store LocalMachine\\{store_name}: {}",
                    std::io::Error::last_os_error()
                ));
            }
            let blob = CRYPT_INTEGER_BLOB {
                cbData: hash.len() as u32,
                pbData: hash.as_ptr().cast_mut(),
            };
            let cert: *const CERT_CONTEXT = CertFindCertificateInStore(
                store,
                X509_ASN_ENCODING | PKCS_7_ASN_ENCODING,
                0,
                CERT_FIND_SHA1_HASH,
                (&raw const blob).cast(),
                std::ptr::null(),
            );
            let mut info = StoreInfo::default();
            if !cert.is_null() {
                let ci = &*(*cert).pCertInfo;
                info.found = true;
                info.not_before = filetime_to_utc(ticks(ci.NotBefore));
                info.not_after = filetime_to_utc(ticks(ci.NotAfter));
                let mut subject = vec![0u16; 512];
                let n = CertNameToStrW(
                    X509_ASN_ENCODING,
                    &ci.Subject,
                    CERT_X500_NAME_STR,
                    subject.as_mut_ptr(),
                    subject.len() as u32,
                );
                info.subject = String::from_utf16_lossy(&subject[..(n as usize).saturating_sub(1)]);
                let mut size = 0u32;
                info.has_private_key = CertGetCertificateContextProperty(
                    cert,
                    CERT_KEY_PROV_INFO_PROP_ID,
                    std::ptr::null_mut(),
                    &mut size,
                ) != 0;
                CertFreeCertificateContext(cert);
            }
            CertCloseStore(store, 0);
            Ok(info)
        }
    }
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
    /// Ignored (the store is read through the CryptoAPI, no PowerShell);
    /// accepted so that older plans still load.
    #[allow(dead_code)]
    program: Option<String>,
}

struct CertCheck {
    /// `None`: certificate security is off, nothing to check.
    input: Option<String>,
    store: String,
    min_days_valid: u32,
    require_private_key: bool,
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
            let _ = ctx;
            let hash = thumbprint_bytes(thumbprint)
                .ok_or_else(|| StepError::fatal(format!("`{thumbprint}` is not a thumbprint")))?;
            let info = store::lookup(&self.store, &hash).map_err(StepError::fatal)?;

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
    async fn preflight(
        &self,
        _ctx: &crate::preflight::PreflightContext,
    ) -> Vec<crate::preflight::Check> {
        use crate::preflight::Check;
        let Some(input) = Given::given(&self.input) else {
            return vec![Check::ok(
                "certificate security is off: no certificate to check",
            )];
        };
        match normalize(input) {
            Ok(n) => {
                let mut out = vec![Check::ok(format!(
                    "thumbprint {} is 40 hex digits",
                    n.thumbprint
                ))];
                // At least a week left at preflight time: it runs days
                // before the window.
                out.extend(crate::preflight::windows::certificate(
                    &n.thumbprint,
                    &self.store,
                    self.require_private_key,
                    self.min_days_valid.max(PREFLIGHT_MIN_DAYS),
                ));
                out
            }
            Err(e) => vec![Check::finding(
                format!("the thumbprint is not usable: {e}"),
                "40 hex digits (invisible marks and spaces are stripped)",
                "copy the thumbprint again from the certificate's details in the site file",
            )],
        }
    }
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
