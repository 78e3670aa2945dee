//! `config.appsettings` and `config.compare` on real files: byte-exact
//! splicing over awkward fixtures, backups, compensation, probes, and a
//! property test that a no-op edit leaves the bytes identical.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use upshift_steps::kinds::component::xml::Doc;
use upshift_steps::testing::TestContext;
use upshift_steps::{Probe, Step, StepError, registry};

fn step(kind: &str, with: &str) -> Box<dyn Step> {
    let with: toml::Table = toml::from_str(with).expect("toml");
    registry()
        .get(kind)
        .expect("kind")
        .build(&with)
        .expect("build")
}

fn build_err(kind: &str, with: &str) -> String {
    let with: toml::Table = toml::from_str(with).expect("toml");
    match registry().get(kind).expect("kind").build(&with) {
        Ok(_) => panic!("built"),
        Err(e) => e.message,
    }
}

fn toml_path(p: &Path) -> String {
    toml::Value::String(p.display().to_string()).to_string()
}

struct Fixture {
    _dir: tempfile::TempDir,
    file: PathBuf,
    work: PathBuf,
}

fn fixture(bytes: &[u8]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("App.config");
    std::fs::write(&file, bytes).unwrap();
    let work = dir.path().join("work");
    Fixture {
        file,
        work,
        _dir: dir,
    }
}

/// Runs `config.appsettings` with `with_rest` on `input`; returns the file.
async fn run_edit(input: &[u8], with_rest: &str) -> Vec<u8> {
    let f = fixture(input);
    let s = step(
        "config.appsettings",
        &format!("file = {}\n{with_rest}", toml_path(&f.file)),
    );
    let ctx = TestContext::new("edit", &f.work);
    s.run(&ctx).await.expect("run");
    std::fs::read(&f.file).unwrap()
}

const BOM_CRLF: &[u8] = b"\xEF\xBB\xBF<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<configuration>\r\n  <!-- keep me: <add key=\"Commented\" value=\"x\"/> -->\r\n  <appSettings>\r\n    <add key=\"InstanzName\" value=\"LUCS\" />\r\n    <add  value='3500'   key='PortNumberToAdd'/>\r\n    <add key=\"SystemAdministratorGroup\" value=\"CN=TM2,OU=TM2,OU=Development,DC=dev,DC=local\"></add>\r\n    <add key=\"Note\" value=\"a &amp; b &lt;c&gt; &#x41;\"/>\r\n  </appSettings>\r\n</configuration >\r\n";

#[tokio::test]
async fn set_keeps_bom_crlf_comments_quotes_and_entities() {
    let out = run_edit(
        BOM_CRLF,
        "set = { PortNumberToAdd = 3600, InstanzName = \"NAVY\" }",
    )
    .await;
    let want = String::from_utf8(BOM_CRLF.to_vec())
        .unwrap()
        .replace("value='3500'", "value='3600'")
        .replace("value=\"LUCS\"", "value=\"NAVY\"");
    assert_eq!(String::from_utf8(out).unwrap(), want);
}

#[tokio::test]
async fn set_value_with_quotes_and_ampersand_is_escaped_per_quote_style() {
    let out = run_edit(
        BOM_CRLF,
        "set = { PortNumberToAdd = \"it's \\\"x\\\" & <y>\", InstanzName = \"it's \\\"x\\\"\" }",
    )
    .await;
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(
        text.contains("value='it&apos;s \"x\" &amp; &lt;y&gt;'"),
        "{text}"
    );
    assert!(text.contains("value=\"it's &quot;x&quot;\""), "{text}");
    let doc = Doc::parse(out).unwrap();
    assert_eq!(doc.get("PortNumberToAdd"), Some(Some("it's \"x\" & <y>")));
}

#[tokio::test]
async fn entities_read_unescaped_and_untouched_when_equal() {
    let out = run_edit(BOM_CRLF, "set = { Note = \"a & b <c> A\" }").await;
    assert_eq!(
        out, BOM_CRLF,
        "an equal value (after unescaping) changes nothing"
    );
}

#[tokio::test]
async fn absent_key_is_added_with_neighbour_indentation_and_crlf() {
    let out = run_edit(BOM_CRLF, "set = { CleanupConferences = false }").await;
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("value=\"a &amp; b &lt;c&gt; &#x41;\"/>\r\n    <add key=\"CleanupConferences\" value=\"false\"/>\r\n  </appSettings>"),
        "{text}"
    );
    assert!(text.starts_with('\u{FEFF}'));
}

#[tokio::test]
async fn remove_deletes_the_line_and_keeps_the_rest() {
    let out = run_edit(BOM_CRLF, "remove = [\"systemadministratorgroup\"]").await;
    let want = String::from_utf8(BOM_CRLF.to_vec()).unwrap().replace(
        "    <add key=\"SystemAdministratorGroup\" value=\"CN=TM2,OU=TM2,OU=Development,DC=dev,DC=local\"></add>\r\n",
        "",
    );
    assert_eq!(String::from_utf8(out).unwrap(), want);
}

#[tokio::test]
async fn appsettings_with_file_attribute_and_self_closing_adds() {
    let input = b"<configuration>\n\t<appSettings file=\"AppSettings.config\"/>\n\t<system.web/>\n</configuration>\n";
    let out = run_edit(input, "set = { K = \"v\" }").await;
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "<configuration>\n\t<appSettings file=\"AppSettings.config\">\n\t\t<add key=\"K\" value=\"v\" />\n\t</appSettings>\n\t<system.web/>\n</configuration>\n"
    );
}

#[tokio::test]
async fn external_appsettings_root_and_value_less_add() {
    let input = b"<appSettings>\n  <add key=\"Flag\"/>\n</appSettings>";
    let out = run_edit(input, "set = { Flag = true }").await;
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "<appSettings>\n  <add key=\"Flag\" value=\"true\"/>\n</appSettings>"
    );
}

#[tokio::test]
async fn backup_compensation_and_probe() {
    let f = fixture(BOM_CRLF);
    let s = step(
        "config.appsettings",
        &format!(
            "file = {}\nset = {{ InstanzName = \"NAVY\" }}",
            toml_path(&f.file)
        ),
    );
    let mut ctx = TestContext::new("edit", &f.work);
    assert!(matches!(s.probe(&ctx).await.unwrap(), Probe::Differs(_)));
    let out = s.run(&ctx).await.unwrap();
    assert_eq!(out.outputs["changed"], "true");
    let backup = PathBuf::from(&out.outputs["backup"]);
    assert!(backup.starts_with(&f.work));
    assert_eq!(std::fs::read(&backup).unwrap(), BOM_CRLF);
    assert_eq!(s.probe(&ctx).await.unwrap(), Probe::InPlace);
    // Checkpointed before writing.
    assert!(
        String::from_utf8(ctx.last_checkpoint().unwrap())
            .unwrap()
            .contains(&out.outputs["backup"])
    );

    // A second run changes nothing.
    let again = s.run(&TestContext::new("edit", &f.work)).await.unwrap();
    assert_eq!(again.outputs["changed"], "false");

    // Compensation restores the original bytes, and is idempotent.
    assert!(s.has_compensation());
    ctx.recorded = out.outputs.clone();
    s.compensate(&ctx).await.unwrap();
    assert_eq!(std::fs::read(&f.file).unwrap(), BOM_CRLF);
    s.compensate(&ctx).await.unwrap();
    assert_eq!(std::fs::read(&f.file).unwrap(), BOM_CRLF);
}

#[tokio::test]
async fn resume_after_crash_reuses_the_first_backup() {
    let f = fixture(BOM_CRLF);
    let s = step(
        "config.appsettings",
        &format!(
            "file = {}\nset = {{ InstanzName = \"NAVY\" }}",
            toml_path(&f.file)
        ),
    );
    let first = TestContext::new("edit", &f.work);
    let out = s.run(&first).await.unwrap();
    // The engine died after the write, before success was journaled: the
    // re-run sees the checkpoint, finds nothing to change, and still reports
    // the original backup (so a rollback restores the true original).
    let mut resumed = TestContext::new("edit", &f.work);
    resumed.resume = first.last_checkpoint();
    let again = s.run(&resumed).await.unwrap();
    assert_eq!(again.outputs["changed"], "true");
    assert_eq!(again.outputs["backup"], out.outputs["backup"]);
}

#[tokio::test]
async fn missing_and_ill_formed_files_fail_with_path_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.config");
    let s = step(
        "config.appsettings",
        &format!("file = {}\nset = {{ A = \"1\" }}", toml_path(&missing)),
    );
    let e = s.run(&TestContext::new("e", dir.path())).await.unwrap_err();
    assert!(e.to_string().contains("nope.config"), "{e}");

    let bad = dir.path().join("bad.config");
    std::fs::write(&bad, "<configuration>\n<appSettings>\n<add key=\"A\" value=\"1\">\n</appSettings>\n</configuration>").unwrap();
    let s = step(
        "config.appsettings",
        &format!("file = {}\nset = {{ A = \"2\" }}", toml_path(&bad)),
    );
    let e = s.run(&TestContext::new("e", dir.path())).await.unwrap_err();
    let StepError::Failed { message, .. } = e else {
        panic!()
    };
    assert!(message.contains("bad.config:4:"), "{message}");
}

#[test]
fn parameters_are_checked() {
    assert!(build_err("config.appsettings", "file = \"x\"").contains("nothing to do"));
    assert!(
        build_err(
            "config.appsettings",
            "file = \"x\"\nset = { A = \"1\" }\nremove = [\"a\"]"
        )
        .contains("both")
    );
    assert!(build_err("config.appsettings", "file = \"x\"\nsett = {}").contains("unknown field"));
}

#[test]
fn describe_hides_secret_values() {
    let s = step(
        "config.appsettings",
        "file = \"C:/x.config\"\nset = { DbPassword = \"hunter2\", Port = 1 }\nremove = [\"Old\"]",
    );
    let lines = s.describe().join("\n");
    assert!(!lines.contains("hunter2"), "{lines}");
    assert!(lines.contains("`Port` = \"1\""), "{lines}");
    assert!(lines.contains("remove appSettings `Old`"), "{lines}");
}

// ---- config.compare ----

async fn compare(
    new: &str,
    old: &str,
    mode: &str,
) -> (
    Result<upshift_steps::StepOutcome, StepError>,
    String,
    String,
) {
    let dir = tempfile::tempdir().unwrap();
    let newf = dir.path().join("AppSettings.config");
    let oldf = dir.path().join("AppSettings.config.bak");
    std::fs::write(&newf, new).unwrap();
    std::fs::write(&oldf, old).unwrap();
    let s = step(
        "config.compare",
        &format!(
            "file = {}\nbackup = {}\nmode = \"{mode}\"",
            toml_path(&newf),
            toml_path(&oldf)
        ),
    );
    let ctx = TestContext::new("cmp", dir.path().join("work"));
    let r = s.run(&ctx).await;
    (
        r,
        ctx.output_text(),
        std::fs::read_to_string(&newf).unwrap(),
    )
}

const OLD: &str = "<appSettings>\n  <add key=\"InstanzName\" value=\"LUCS\"/>\n  <add key=\"UserDomain\" value=\"corp.local\"/>\n  <add key=\"PortNumberToAdd\" value=\"3500\"/>\n</appSettings>\n";
const NEW: &str = "<appSettings>\n  <add key=\"InstanzName\" value=\"LUCS\"/>\n  <add key=\"PortNumberToAdd\" value=\"3600\"/>\n  <add key=\"EnableReporting\" value=\"true\"/>\n</appSettings>\n";

#[tokio::test]
async fn compare_reports_lost_added_changed() {
    let (r, out, file) = compare(NEW, OLD, "report").await;
    let o = r.unwrap().outputs;
    assert_eq!(o["lost"], "UserDomain");
    assert_eq!(o["added"], "EnableReporting");
    assert_eq!(o["changed"], "PortNumberToAdd");
    assert!(out.contains("lost") && out.contains("corp.local"), "{out}");
    assert_eq!(file, NEW);
}

#[tokio::test]
async fn compare_fail_mode_fails_on_lost_keys() {
    let (r, _, _) = compare(NEW, OLD, "fail").await;
    let e = r.unwrap_err().to_string();
    assert!(e.contains("UserDomain"), "{e}");
    let (r, _, _) = compare(NEW, NEW, "fail").await;
    assert_eq!(r.unwrap().outputs["lost"], "");
}

#[tokio::test]
async fn compare_carry_over_copies_lost_keys_only() {
    let (r, _, file) = compare(NEW, OLD, "carry_over").await;
    let o = r.unwrap().outputs;
    assert_eq!(o["carried_over"], "UserDomain");
    assert_eq!(
        file,
        NEW.replace(
            "<add key=\"EnableReporting\" value=\"true\"/>\n",
            "<add key=\"EnableReporting\" value=\"true\"/>\n  <add key=\"UserDomain\" value=\"corp.local\"/>\n"
        )
    );
}

// ---- property: a no-op edit is byte-identical ----

fn value_text() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-zA-Z0-9 ,=;:/._é-]{0,12}").unwrap()
}

#[derive(Debug, Clone)]
struct Gen {
    bom: bool,
    crlf: bool,
    decl: bool,
    indent: String,
    entries: Vec<(String, String, bool, bool, u8)>,
    comment: Option<String>,
}

fn config_gen() -> impl Strategy<Value = Gen> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![
            Just("  ".to_string()),
            Just("\t".to_string()),
            Just("    ".to_string())
        ],
        proptest::collection::vec(
            (
                "[A-Za-z][A-Za-z0-9]{0,8}",
                value_text(),
                any::<bool>(),
                any::<bool>(),
                prop_oneof![Just(b'"'), Just(b'\'')],
            ),
            0..6,
        ),
        proptest::option::of(value_text()),
    )
        .prop_map(|(bom, crlf, decl, indent, entries, comment)| Gen {
            bom,
            crlf,
            decl,
            indent,
            entries,
            comment,
        })
}

fn render(g: &Gen) -> Vec<u8> {
    let nl = if g.crlf { "\r\n" } else { "\n" };
    let mut s = String::new();
    if g.bom {
        s.push('\u{FEFF}');
    }
    if g.decl {
        s.push_str(&format!("<?xml version=\"1.0\" encoding=\"utf-8\"?>{nl}"));
    }
    s.push_str(&format!("<configuration>{nl}"));
    if let Some(c) = &g.comment {
        s.push_str(&format!("{}<!-- {c} -->{nl}", g.indent));
    }
    s.push_str(&format!("{}<appSettings >{nl}", g.indent));
    for (k, v, value_first, self_closing, q) in &g.entries {
        let q = *q as char;
        let v = upshift_steps::kinds::component::xml::escape(v, q as u8, false)
            .replace("&amp;", "&#38;");
        let attrs = if *value_first {
            format!("value={q}{v}{q}  key={q}{k}{q}")
        } else {
            format!("key={q}{k}{q} value={q}{v}{q}")
        };
        let close = if *self_closing {
            " />".to_string()
        } else {
            "></add >".to_string()
        };
        s.push_str(&format!("{0}{0}<add {attrs}{close}{nl}", g.indent));
    }
    s.push_str(&format!(
        "{}</appSettings>{nl}</configuration>{nl}",
        g.indent
    ));
    s.into_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn noop_edit_is_byte_identical(g in config_gen()) {
        let bytes = render(&g);
        let doc = Doc::parse(bytes.clone()).unwrap();
        // Set every key to the value .NET would read, remove an absent key.
        let set: Vec<(String, String)> = doc
            .entries()
            .iter()
            .map(|e| (e.key.clone(), e.value.clone().unwrap_or_default()))
            .filter(|(k, _)| doc.entries().iter().filter(|e| e.key.eq_ignore_ascii_case(k)).all(|e| e.value.is_some()))
            .collect();
        // Only keys whose duplicates agree can be a no-op.
        let set: Vec<(String, String)> = set
            .into_iter()
            .filter(|(k, v)| doc.entries().iter().filter(|e| e.key.eq_ignore_ascii_case(k)).all(|e| e.value.as_deref() == Some(v)))
            .collect();
        let edited = doc.edit(&set, &["NoSuchKeyAnywhere".to_string()]).unwrap();
        prop_assert!(edited.changes.is_empty());
        prop_assert_eq!(edited.bytes, bytes);
    }

    #[test]
    fn set_then_read_back_changes_only_that_value(g in config_gen(), v in value_text()) {
        let bytes = render(&g);
        let doc = Doc::parse(bytes.clone()).unwrap();
        let edited = doc.edit(&[("Zz9New".to_string(), v.clone())], &[]).unwrap();
        let again = Doc::parse(edited.bytes.clone()).unwrap();
        prop_assert_eq!(again.get("Zz9New"), Some(Some(v.as_str())));
        // Every other entry reads the same as before.
        for e in doc.entries() {
            prop_assert_eq!(again.get(&e.key), doc.get(&e.key));
        }
        // Removing it again gives back the original bytes.
        let back = again.edit(&[], &["Zz9New".to_string()]).unwrap();
        prop_assert_eq!(back.bytes, bytes);
    }
}
