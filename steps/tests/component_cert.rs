//! `cert.check`: thumbprint normalisation (invisible marks, spaces, case),
//! errors that name the invisible characters, the Windows store lookup's
//! parsing and judgement (with a fixed clock), and the Linux skip note.

use chrono::{TimeZone, Utc};
use upshift_steps::kinds::component::cert::{
    SKIPPED, StoreInfo, filetime_to_utc, judge_store, normalize, thumbprint_bytes,
};
use upshift_steps::testing::TestContext;
use upshift_steps::{Probe, registry};

const TP: &str = "1F2E3D4C5B6A79880716253443526170A9B8C7D6";

fn build(with: &str) -> Result<Box<dyn upshift_steps::Step>, upshift_steps::ParamError> {
    let with: toml::Table = toml::from_str(with)
        .map_err(|e| upshift_steps::ParamError::field("toml", e.to_string()))?;
    let kinds = registry();
    let kind = kinds
        .get("cert.check")
        .ok_or_else(|| upshift_steps::ParamError::field("kind", "not registered"))?;
    kind.build(&with)
}

#[test]
fn copied_from_the_dialog_is_normalised() {
    let copied = "\u{200E}1f 2e 3d 4c 5b 6a 79 88 07 16 25 34 43 52 61 70 a9 b8 c7 d6";
    let n = normalize(copied).unwrap();
    assert_eq!(n.thumbprint, TP);
    assert_eq!(n.invisible, ["U+200E LEFT-TO-RIGHT MARK at position 0"]);
    assert_eq!(n.spaces, 19);
    let n = normalize(&format!("\u{FEFF}{TP}\u{202C}")).unwrap();
    assert_eq!(n.invisible.len(), 2);
    assert!(n.invisible[1].starts_with("U+202C POP DIRECTIONAL FORMATTING at position 41"));
}

#[test]
fn wrong_input_names_the_invisible_characters() {
    // One digit short, with a mark in front and a right-to-left mark inside.
    let bad = format!("\u{200E}{}\u{200F}", &TP[..39]);
    let e = normalize(&bad).unwrap_err();
    assert!(e.contains("39 hex digits where a thumbprint has 40"), "{e}");
    assert!(e.contains("U+200E LEFT-TO-RIGHT MARK at position 0"), "{e}");
    assert!(
        e.contains("U+200F RIGHT-TO-LEFT MARK at position 40"),
        "{e}"
    );

    let e = normalize(&format!("{}Z", &TP[..39])).unwrap_err();
    assert!(e.contains("'Z' at position 39"), "{e}");
    // Other invisible characters that are not in the strip list are named too.
    let e = normalize(&format!("{TP}\u{0007}")).unwrap_err();
    assert!(e.contains("U+0007"), "{e}");
}

#[test]
fn plan_with_a_bad_thumbprint_is_refused_at_build() {
    let e = build("thumbprint = \"\u{200E}ABC\"").err().unwrap();
    assert_eq!(e.field.as_deref(), Some("thumbprint"));
    assert!(
        e.message
            .contains("U+200E LEFT-TO-RIGHT MARK at position 0"),
        "{}",
        e.message
    );
    assert!(build("thumbprint = \"x\"\nstore = \"My; rm\"").is_err());
}

#[tokio::test]
async fn run_outputs_the_normalised_thumbprint() {
    let dir = tempfile::tempdir().unwrap();
    let step = build(&format!("thumbprint = \"\u{200E}{}\"", TP.to_lowercase())).unwrap();
    let ctx = TestContext::new("cert", dir.path());
    if cfg!(windows) {
        // TP is made up: the real store lookup must not find it. A real
        // certificate with its key is found by tests/wine/e2e under Wine.
        let e = step.run(&ctx).await.unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "certificate {TP} in LocalMachine\\My: no certificate"
            )),
            "{e}"
        );
        assert!(matches!(step.probe(&ctx).await.unwrap(), Probe::Differs(_)));
        return;
    }
    let out = step.run(&ctx).await.unwrap();
    assert_eq!(out.outputs["thumbprint"], TP);
    assert_eq!(
        out.outputs["stripped"],
        "U+200E LEFT-TO-RIGHT MARK at position 0"
    );
    {
        assert_eq!(out.outputs["store_check"], SKIPPED);
        assert!(ctx.output_text().contains("skipped: not Windows"));
        assert_eq!(step.probe(&ctx).await.unwrap(), Probe::Unknown);
        assert!(step.describe()[0].contains("store check skipped"));
    }
}

#[test]
fn store_lookup_is_judged() {
    let now = Utc.with_ymd_and_hms(2026, 11, 24, 0, 0, 0).unwrap();
    let info = StoreInfo {
        found: true,
        subject: "CN=tm-fe.corp.local".into(),
        not_before: Some(Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()),
        not_after: Some(Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap()),
        has_private_key: true,
    };
    assert!(judge_store(&info, now, 30, true, "LocalMachine\\My").is_empty());
    // Expiring within the required days, expired, no key, missing.
    assert!(judge_store(&info, now, 60, true, "x")[0].contains("within the 60 days"));
    let later = Utc.with_ymd_and_hms(2027, 6, 1, 0, 0, 0).unwrap();
    assert!(judge_store(&info, later, 0, true, "x")[0].contains("expired on 2027-01-01"));
    let nokey = StoreInfo {
        has_private_key: false,
        ..info.clone()
    };
    assert!(judge_store(&nokey, now, 0, true, "x")[0].contains("no private key"));
    assert!(judge_store(&nokey, now, 0, false, "x").is_empty());
    let missing = StoreInfo::default();
    assert!(judge_store(&missing, now, 0, true, "LocalMachine\\My")[0].contains("no certificate"));
}

#[test]
fn filetimes_and_thumbprint_bytes() {
    // 2027-01-01T00:00:00Z as a FILETIME.
    assert_eq!(
        filetime_to_utc(134_432_352_000_000_000),
        Some(Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap())
    );
    assert_eq!(
        filetime_to_utc(116_444_736_000_000_000),
        Some(Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap())
    );
    let b = thumbprint_bytes("00112233445566778899AABBCCDDEEFF00112233").unwrap();
    assert_eq!((b.len(), b[1], b[19]), (20, 0x11, 0x33));
    assert!(thumbprint_bytes("0011").is_none());
}

/// A site's per-host thumbprints: `host` picks one; a host without one is
/// refused when the plan is built, naming it; certificate security off
/// needs none and checks nothing.
#[tokio::test]
async fn thumbprints_by_host_and_security_off() {
    let with = format!(
        "thumbprints = {{ tm01 = \"\u{200E}{}\", web01 = \"{TP}\" }}\nhost = \"tm01\"",
        TP.to_lowercase()
    );
    let step = build(&with).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ctx = TestContext::new("cert", dir.path());
    if cfg!(windows) {
        // TP is made up: the real store lookup (CryptoAPI) must not find the
        // thumbprint `host` picked, normalised.
        let e = step.run(&ctx).await.unwrap_err().to_string();
        assert!(
            e.contains(&format!("certificate {TP} in LocalMachine\\My")),
            "{e}"
        );
    } else {
        let out = step.run(&ctx).await.unwrap();
        assert_eq!(out.outputs["thumbprint"], TP);
    }

    let e = build(&format!(
        "thumbprints = {{ web01 = \"{TP}\" }}\nhost = \"lync01\""
    ))
    .err()
    .unwrap();
    assert_eq!(e.field.as_deref(), Some("thumbprints"));
    assert!(
        e.message.contains("no thumbprint for host `lync01`") && e.message.contains("web01"),
        "{}",
        e.message
    );
    // Both ways at once is refused.
    assert!(
        build(&format!(
            "thumbprint = \"{TP}\"\nthumbprints = {{}}\nhost = \"a\""
        ))
        .is_err()
    );

    // Off: no thumbprint at all, an empty output, a dry run that says so.
    let step = build("enabled = \"false\"\nthumbprints = {}\nhost = \"tm01\"").unwrap();
    assert!(step.describe()[0].contains("certificate security is off"));
    let out = step.run(&ctx).await.unwrap();
    assert_eq!(out.outputs["thumbprint"], "");
    assert_eq!(out.outputs["store_check"], "off");
    assert!(matches!(step.probe(&ctx).await.unwrap(), Probe::InPlace));
    assert!(build("enabled = \"maybe\"\nthumbprint = \"x\"").is_err());
}
