//! A certificate in the Windows **LocalMachine** store, as preflight sees
//! it: present, a private key associated, not expiring soon.
//!
//! The system stores keep each certificate under
//! `HKLM\SOFTWARE\Microsoft\SystemCertificates\<STORE>\Certificates\<THUMBPRINT>`,
//! value `Blob`: a list of properties, each `id: u32, reserved: u32,
//! length: u32, data` (little endian). Property 32 (`CERT_CERT_PROP_ID`)
//! is the certificate (DER); property 2 (`CERT_KEY_PROV_INFO_PROP_ID`)
//! names the provider and container of its private key, present when a
//! private key is associated. [`parse_store_blob`] and [`not_after`] are
//! plain parsers (tested on any OS); the registry read is Windows-only
//! (`super::windows`).

use chrono::{NaiveDate, NaiveDateTime};

use super::Check;

/// `CERT_CERT_PROP_ID`.
const CERT_PROP: u32 = 32;
/// `CERT_KEY_PROV_INFO_PROP_ID`.
const KEY_PROV_INFO_PROP: u32 = 2;

/// What a store entry holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreEntry {
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// A private key is associated (key provider info present).
    pub has_key: bool,
}

/// Parses a store `Blob` value.
pub fn parse_store_blob(blob: &[u8]) -> Result<StoreEntry, String> {
    let mut i = 0;
    let mut der = None;
    let mut has_key = false;
    let u32_at = |i: usize| -> Option<u32> {
        blob.get(i..i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    while i < blob.len() {
        let (Some(id), Some(len)) = (u32_at(i), u32_at(i + 8)) else {
            return Err(format!("a property header is cut off at byte {i}"));
        };
        let start = i + 12;
        let end = start
            .checked_add(len as usize)
            .filter(|e| *e <= blob.len())
            .ok_or_else(|| format!("property {id} is cut off"))?;
        match id {
            CERT_PROP => der = Some(blob[start..end].to_vec()),
            KEY_PROV_INFO_PROP => has_key = true,
            _ => {}
        }
        i = end;
    }
    Ok(StoreEntry {
        der: der.ok_or("no certificate (property 32) in the blob")?,
        has_key,
    })
}

/// One DER element at `*i`: (tag, content); `*i` moves past it.
fn element<'a>(der: &'a [u8], i: &mut usize) -> Result<(u8, &'a [u8]), String> {
    let tag = *der.get(*i).ok_or("DER cut off")?;
    let first = *der.get(*i + 1).ok_or("DER cut off")?;
    let (len, head) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return Err("unsupported DER length".into());
        }
        let mut len = 0usize;
        for k in 0..n {
            len = (len << 8) | *der.get(*i + 2 + k).ok_or("DER cut off")? as usize;
        }
        (len, 2 + n)
    };
    let start = *i + head;
    let end = start
        .checked_add(len)
        .filter(|e| *e <= der.len())
        .ok_or("DER cut off")?;
    *i = end;
    Ok((tag, &der[start..end]))
}

fn time(tag: u8, text: &[u8]) -> Result<NaiveDateTime, String> {
    let s = std::str::from_utf8(text).map_err(|_| "a time is not text")?;
    let s = s.trim_end_matches('Z');
    let (year, rest) = match tag {
        0x17 if s.len() >= 12 => {
            let yy: i32 = s[..2].parse().map_err(|_| "bad UTCTime")?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &s[2..])
        }
        0x18 if s.len() >= 14 => (s[..4].parse().map_err(|_| "bad GeneralizedTime")?, &s[4..]),
        _ => return Err(format!("unexpected time (tag {tag:#x})")),
    };
    let n = |a: usize| -> Result<u32, String> {
        rest[a..a + 2].parse().map_err(|_| "bad time".to_string())
    };
    let (mo, d, h, mi, sec) = (n(0)?, n(2)?, n(4)?, n(6)?, n(8)?.min(59));
    NaiveDate::from_ymd_opt(year, mo, d)
        .and_then(|date| date.and_hms_opt(h, mi, sec))
        .ok_or_else(|| "an impossible date".to_string())
}

/// The certificate's `notAfter` (UTC), from its DER.
pub fn not_after(der: &[u8]) -> Result<NaiveDateTime, String> {
    let mut i = 0;
    let (_, cert) = element(der, &mut i)?;
    let mut i = 0;
    let (_, tbs) = element(cert, &mut i)?;
    let mut i = 0;
    // [0] version (optional), serial, signature algorithm, issuer, validity.
    if tbs.first() == Some(&0xA0) {
        element(tbs, &mut i)?;
    }
    for _ in 0..3 {
        element(tbs, &mut i)?;
    }
    let (tag, validity) = element(tbs, &mut i)?;
    if tag != 0x30 {
        return Err("no validity in the certificate".into());
    }
    let mut j = 0;
    element(validity, &mut j)?;
    let (tag, text) = element(validity, &mut j)?;
    time(tag, text)
}

/// Judges a store entry: a private key associated (when required), valid
/// for at least `min_days` more days from `now`.
pub fn judge(
    thumbprint: &str,
    store: &str,
    entry: &StoreEntry,
    require_key: bool,
    min_days: u32,
    now: NaiveDateTime,
) -> Vec<Check> {
    let mut out = Vec::new();
    let where_ = format!("LocalMachine\\{store}");
    out.push(if entry.has_key || !require_key {
        Check::ok(format!("certificate {thumbprint} in {where_}{}", if entry.has_key { " with a private key" } else { "" }))
    } else {
        Check::finding(
            format!("certificate {thumbprint} in {where_} has no private key"),
            "the certificate with its private key (the services use it for TLS)",
            "import the certificate again from its .pfx (with the private key) into LocalMachine\\My",
        )
    });
    match not_after(&entry.der) {
        Ok(end) => {
            let needed = now + chrono::Duration::days(i64::from(min_days));
            out.push(if end > needed {
                Check::ok(format!("certificate {thumbprint} valid until {end} UTC"))
            } else {
                Check::finding(
                    format!("certificate {thumbprint} expires {end} UTC"),
                    format!("valid for at least {min_days} more days (through the window)"),
                    "renew the certificate before the window and update the thumbprint in the site file",
                )
            });
        }
        Err(e) => out.push(Check::not_checked(
            format!("expiry of certificate {thumbprint}"),
            format!("its DER could not be read: {e}"),
        )),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate valid for `days`, DER, from openssl.
    fn openssl_cert(days: u32) -> Option<Vec<u8>> {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("c.der");
        let ok = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                "/CN=tm01.contoso.com",
                "-outform",
                "DER",
                "-days",
            ])
            .arg(days.to_string())
            .arg("-keyout")
            .arg(d.path().join("k.pem"))
            .arg("-out")
            .arg(&out)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            eprintln!(
                "SKIPPED: certificate parsing test, because openssl cannot make a certificate here"
            );
            return None;
        }
        std::fs::read(out).ok()
    }

    fn blob(der: &[u8], key: bool) -> Vec<u8> {
        let mut b = Vec::new();
        let mut prop = |id: u32, data: &[u8]| {
            b.extend_from_slice(&id.to_le_bytes());
            b.extend_from_slice(&1u32.to_le_bytes());
            b.extend_from_slice(&(data.len() as u32).to_le_bytes());
            b.extend_from_slice(data);
        };
        prop(3, &[0xAB; 20]); // SHA-1 hash property, ignored
        if key {
            prop(KEY_PROV_INFO_PROP, b"provider info");
        }
        prop(CERT_PROP, der);
        b
    }

    #[test]
    fn a_store_blob_gives_the_certificate_its_key_and_its_expiry() {
        let Some(der) = openssl_cert(10) else { return };
        let now = chrono::Utc::now().naive_utc();
        let end = not_after(&der).unwrap();
        let days = (end - now).num_days();
        assert!((9..=10).contains(&days), "not after {end}");
        let with_key = parse_store_blob(&blob(&der, true)).unwrap();
        assert!(with_key.has_key);
        let ok = judge("AB", "My", &with_key, true, 7, now);
        assert!(!ok.iter().any(Check::is_finding), "{ok:?}");
        let soon = judge("AB", "My", &with_key, true, 30, now);
        assert!(
            matches!(&soon[1], Check::Finding { found, .. } if found.contains("expires")),
            "{soon:?}"
        );
        let no_key = parse_store_blob(&blob(&der, false)).unwrap();
        let f = judge("AB", "My", &no_key, true, 0, now);
        assert!(
            matches!(&f[0], Check::Finding { found, .. } if found.contains("no private key")),
            "{f:?}"
        );
        assert!(
            parse_store_blob(&blob(&der, true)[..20]).is_err(),
            "a cut-off blob"
        );
    }
}
