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
    let w = compare_world(new, old, &format!("mode = \"{mode}\""));
    let ctx = TestContext::new("cmp", &w.work);
    let r = w.step.run(&ctx).await;
    (
        r,
        ctx.output_text(),
        std::fs::read_to_string(&w.new).unwrap(),
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
    let (r, _, file) = compare(NEW, OLD, "carry_over\"\nchanged = \"keep-new").await;
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

struct CompareWorld {
    _dir: tempfile::TempDir,
    new: PathBuf,
    work: PathBuf,
    step: Box<dyn Step>,
}

fn compare_world(new: &str, old: &str, with_rest: &str) -> CompareWorld {
    let dir = tempfile::tempdir().unwrap();
    let newf = dir.path().join("AppSettings.config");
    let oldf = dir.path().join("AppSettings.config.bak");
    std::fs::write(&newf, new).unwrap();
    std::fs::write(&oldf, old).unwrap();
    let step = step(
        "config.compare",
        &format!(
            "file = {}\nbackup = {}\n{with_rest}",
            toml_path(&newf),
            toml_path(&oldf)
        ),
    );
    CompareWorld {
        work: dir.path().join("work"),
        new: newf,
        _dir: dir,
        step,
    }
}

#[tokio::test]
async fn compare_pauses_on_changed_values_listing_both_then_keeps_the_file_as_approved() {
    let w = compare_world(NEW, OLD, "mode = \"carry_over\"");
    assert!(
        w.step
            .describe()
            .join("\n")
            .contains("wait for an operator"),
        "{:?}",
        w.step.describe()
    );
    let first = TestContext::new("cmp", &w.work);
    let Err(StepError::WaitForOperator { reason }) = w.step.run(&first).await else {
        panic!("no pause");
    };
    assert!(
        reason.contains("PortNumberToAdd: backup \"3500\" -> new \"3600\""),
        "{reason}"
    );
    assert!(reason.contains("keep-old"), "{reason}");
    // Nothing was written while waiting.
    assert_eq!(std::fs::read_to_string(&w.new).unwrap(), NEW);

    // An approval that answers something else (resume = "ask") is not
    // taken as the answer to this question.
    let mut other = TestContext::new("cmp", &w.work);
    other.approved = true;
    assert!(matches!(
        w.step.run(&other).await,
        Err(StepError::WaitForOperator { .. })
    ));

    // `upshift approve`: the step runs again with its checkpoint.
    let mut approved = TestContext::new("cmp", &w.work);
    approved.approved = true;
    approved.resume = first.last_checkpoint();
    let out = w.step.run(&approved).await.unwrap().outputs;
    assert_eq!(out["carried_over"], "UserDomain");
    assert_eq!(out["kept_new"], "PortNumberToAdd");
    assert_eq!(out["kept_old"], "");
    let file = std::fs::read_to_string(&w.new).unwrap();
    assert!(file.contains("value=\"3600\""), "{file}");
    assert!(
        file.contains("key=\"UserDomain\" value=\"corp.local\""),
        "{file}"
    );
    assert_eq!(w.step.probe(&approved).await.unwrap(), Probe::InPlace);
}

#[tokio::test]
async fn compare_after_the_operator_edited_the_file_keeps_the_edit() {
    let w = compare_world(NEW, OLD, "mode = \"carry_over\"\nchanged = \"pause\"");
    let first = TestContext::new("cmp", &w.work);
    assert!(w.step.run(&first).await.is_err());
    // The operator wants the old port back, and sets it before approving.
    std::fs::write(&w.new, NEW.replace("3600", "3500")).unwrap();
    let mut approved = TestContext::new("cmp", &w.work);
    approved.approved = true;
    approved.resume = first.last_checkpoint();
    let out = w.step.run(&approved).await.unwrap().outputs;
    assert_eq!(out["changed"], "");
    assert!(
        std::fs::read_to_string(&w.new)
            .unwrap()
            .contains("value=\"3500\"")
    );
}

#[tokio::test]
async fn compare_keep_old_puts_old_values_back_byte_exactly_and_undoes_on_rollback() {
    let w = compare_world(NEW, OLD, "mode = \"carry_over\"\nchanged = \"keep-old\"");
    let mut ctx = TestContext::new("cmp", &w.work);
    assert!(matches!(
        w.step.probe(&ctx).await.unwrap(),
        Probe::Differs(m) if m.contains("UserDomain") && m.contains("PortNumberToAdd")
    ));
    let out = w.step.run(&ctx).await.unwrap().outputs;
    assert_eq!(out["kept_old"], "PortNumberToAdd");
    assert_eq!(out["carried_over"], "UserDomain");
    let want = NEW.replace("3600", "3500").replace(
        "<add key=\"EnableReporting\" value=\"true\"/>\n",
        "<add key=\"EnableReporting\" value=\"true\"/>\n  <add key=\"UserDomain\" value=\"corp.local\"/>\n",
    );
    assert_eq!(std::fs::read_to_string(&w.new).unwrap(), want);
    assert_eq!(w.step.probe(&ctx).await.unwrap(), Probe::InPlace);
    assert!(w.step.has_compensation());
    ctx.recorded = out;
    w.step.compensate(&ctx).await.unwrap();
    assert_eq!(std::fs::read_to_string(&w.new).unwrap(), NEW);
}

#[tokio::test]
async fn compare_keep_new_and_ignore() {
    let w = compare_world(
        NEW,
        OLD,
        "mode = \"fail\"\nchanged = \"keep-new\"\nignore = [\"userdomain\"]",
    );
    let out = w
        .step
        .run(&TestContext::new("cmp", &w.work))
        .await
        .unwrap()
        .outputs;
    assert_eq!(out["lost"], "", "an ignored key is not lost");
    assert_eq!(out["kept_new"], "PortNumberToAdd");
    assert_eq!(std::fs::read_to_string(&w.new).unwrap(), NEW);
    // Ignoring the changed key: nothing to pause for.
    let w = compare_world(
        NEW,
        OLD,
        "mode = \"carry_over\"\nignore = [\"PortNumberToAdd\"]",
    );
    let out = w
        .step
        .run(&TestContext::new("cmp", &w.work))
        .await
        .unwrap()
        .outputs;
    assert_eq!(out["changed"], "");
    assert_eq!(out["carried_over"], "UserDomain");
}

#[test]
fn compare_changed_needs_a_mode_that_acts() {
    assert!(
        build_err(
            "config.compare",
            "file = \"a\"\nbackup = \"b\"\nchanged = \"keep-old\""
        )
        .contains("report")
    );
    assert!(
        build_err(
            "config.compare",
            "file = \"a\"\nbackup = \"b\"\nmode = \"carry_over\"\nchanged = \"keep_old\""
        )
        .contains("keep-old")
    );
}

// ---- properties: random files, random edits, against a reference model ----
//
// A file is generated from a small structure (`Gen`), so the expected result
// of an edit can be computed on the structure and rendered with the same
// code: the edit must produce exactly those bytes (byte-exact everywhere
// outside the edited elements), and reading the result back must give the
// reference model's list of entries.

use upshift_steps::kinds::component::xml::escape;

fn value_text() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-zA-Z0-9 ,=;:/._é&<>'\"-]{0,12}").unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// `<add ... />`
    SpacedSlash,
    /// `<add .../>`
    Slash,
    /// `<add ...></add >`
    EndTag,
}

#[derive(Debug, Clone)]
struct GenEntry {
    key: String,
    /// The value and its raw (escaped) text; `None`: no value attribute.
    value: Option<(String, String)>,
    value_first: bool,
    close: Close,
    quote: u8,
    indent: String,
}

#[derive(Debug, Clone)]
struct Gen {
    bom: bool,
    crlf: bool,
    decl: bool,
    indent: String,
    entries: Vec<GenEntry>,
    comment: Option<String>,
}

fn close_gen() -> impl Strategy<Value = Close> {
    prop_oneof![
        Just(Close::SpacedSlash),
        Just(Close::Slash),
        Just(Close::EndTag)
    ]
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
                proptest::option::weighted(0.9, value_text()),
                any::<bool>(),
                close_gen(),
                prop_oneof![Just(b'"'), Just(b'\'')],
            ),
            0..7,
        ),
        proptest::option::of("[a-zA-Z0-9 ]{0,12}"),
    )
        .prop_map(|(bom, crlf, decl, indent, entries, comment)| Gen {
            bom,
            crlf,
            decl,
            entries: entries
                .into_iter()
                .map(|(key, value, value_first, close, quote)| GenEntry {
                    // Written with a numeric reference for `&`, to check
                    // that untouched entities stay as they are.
                    value: value.map(|v| {
                        let raw = escape(&v, quote, false).replace("&amp;", "&#38;");
                        (v, raw)
                    }),
                    key,
                    value_first,
                    close,
                    quote,
                    indent: indent.repeat(2),
                })
                .collect(),
            indent,
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
    for e in &g.entries {
        let q = e.quote as char;
        let k = &e.key;
        let attrs = match &e.value {
            None => format!("key={q}{k}{q}"),
            Some((_, raw)) if e.value_first => format!("value={q}{raw}{q}  key={q}{k}{q}"),
            Some((_, raw)) => format!("key={q}{k}{q} value={q}{raw}{q}"),
        };
        let close = match e.close {
            Close::SpacedSlash => " />",
            Close::Slash => "/>",
            Close::EndTag => "></add >",
        };
        s.push_str(&format!("{}<add {attrs}{close}{nl}", e.indent));
    }
    s.push_str(&format!(
        "{}</appSettings>{nl}</configuration>{nl}",
        g.indent
    ));
    s.into_bytes()
}

/// The reference model of an edit, on the structure: every entry of a set
/// key gets the value; absent keys are appended after the entries that stay,
/// written like the last original entry (its indentation and quote; `/>` or
/// ` />`); removed keys lose every entry. Returns the new structure and the
/// number of changes (values set, keys added, entries removed).
fn model_edit(g: &Gen, set: &[(String, String)], remove: &[String]) -> (Gen, usize) {
    let mut out = g.clone();
    let mut changes = 0;
    let mut added = Vec::new();
    for (k, v) in set {
        let mut any = false;
        for e in out
            .entries
            .iter_mut()
            .filter(|e| e.key.eq_ignore_ascii_case(k))
        {
            any = true;
            if e.value.as_ref().map(|x| &x.0) != Some(v) {
                // A value-less <add> gets its value after the key.
                e.value_first &= e.value.is_some();
                e.value = Some((v.clone(), escape(v, e.quote, false)));
                changes += 1;
            }
        }
        if !any {
            added.push((k.clone(), v.clone()));
        }
    }
    let before = out.entries.len();
    out.entries
        .retain(|e| !remove.iter().any(|r| r.eq_ignore_ascii_case(&e.key)));
    changes += before - out.entries.len() + added.len();
    let (quote, close, indent) = match g.entries.last() {
        Some(last) => (
            last.quote,
            if last.close == Close::SpacedSlash {
                Close::SpacedSlash
            } else {
                Close::Slash
            },
            last.indent.clone(),
        ),
        None => (
            b'"',
            Close::SpacedSlash,
            format!(
                "{}{}",
                g.indent,
                if g.indent.contains('\t') { "\t" } else { "  " }
            ),
        ),
    };
    for (k, v) in added {
        out.entries.push(GenEntry {
            value: Some((v.clone(), escape(&v, quote, false))),
            key: k,
            value_first: false,
            close,
            quote,
            indent: indent.clone(),
        });
    }
    (out, changes)
}

/// A random mix of edits for a file: remove some of its keys (and an absent
/// one), set others (to a new value or the one they have), add new keys.
fn edits_gen() -> impl Strategy<Value = (Gen, Vec<(String, String)>, Vec<String>)> {
    (
        config_gen(),
        proptest::collection::vec(0u8..4, 7),
        proptest::collection::vec(value_text(), 7),
        proptest::collection::vec(("[A-Za-z][A-Za-z0-9]{0,8}", value_text()), 0..4),
        any::<bool>(),
    )
        .prop_map(|(g, what, values, new_keys, remove_absent)| {
            let mut set: Vec<(String, String)> = Vec::new();
            let mut remove: Vec<String> = Vec::new();
            let taken = |k: &str, set: &[(String, String)], remove: &[String]| {
                set.iter().any(|(s, _)| s.eq_ignore_ascii_case(k))
                    || remove.iter().any(|r| r.eq_ignore_ascii_case(k))
            };
            for (i, e) in g.entries.iter().enumerate() {
                if taken(&e.key, &set, &remove) {
                    continue;
                }
                match what[i] {
                    0 => remove.push(e.key.clone()),
                    1 => set.push((e.key.clone(), values[i].clone())),
                    // The value .NET reads now (a no-op unless duplicates differ).
                    2 => set.push((
                        e.key.clone(),
                        e.value.as_ref().map(|v| v.0.clone()).unwrap_or_default(),
                    )),
                    _ => {}
                }
            }
            for (k, v) in new_keys {
                if !taken(&k, &set, &remove)
                    && !g.entries.iter().any(|e| e.key.eq_ignore_ascii_case(&k))
                {
                    set.push((k, v));
                }
            }
            if remove_absent {
                remove.push("NoSuchKeyAnywhere".into());
            }
            (g, set, remove)
        })
}

fn read_back(bytes: &[u8]) -> Vec<(String, Option<String>)> {
    Doc::parse(bytes.to_vec())
        .unwrap()
        .entries()
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn random_set_and_remove_match_the_model_byte_for_byte((g, set, remove) in edits_gen()) {
        let bytes = render(&g);
        let doc = Doc::parse(bytes.clone()).unwrap();
        let edited = doc.edit(&set, &remove).unwrap();
        let (want, changes) = model_edit(&g, &set, &remove);
        let want_bytes = render(&want);
        prop_assert_eq!(
            String::from_utf8_lossy(&edited.bytes),
            String::from_utf8_lossy(&want_bytes),
            "set {:?} remove {:?}", set, remove
        );
        prop_assert_eq!(edited.changes.len(), changes);
        // Read back: the entries the model has, in its order, and the probe
        // finds every wanted value.
        let model: Vec<(String, Option<String>)> = want
            .entries
            .iter()
            .map(|e| (e.key.clone(), e.value.as_ref().map(|v| v.0.clone())))
            .collect();
        prop_assert_eq!(read_back(&edited.bytes), model);
        let again = Doc::parse(edited.bytes.clone()).unwrap();
        prop_assert!(again.differences(&set, &remove).is_empty());
        // The same edit again changes nothing.
        let twice = again.edit(&set, &remove).unwrap();
        prop_assert!(twice.changes.is_empty());
        prop_assert_eq!(twice.bytes, edited.bytes);
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

#[tokio::test]
async fn adding_keys_while_removing_the_last_one_works_through_the_step() {
    let out = run_edit(
        BOM_CRLF,
        "set = { CleanupConferences = false, InstanzName = \"NAVY\" }\nremove = [\"Note\"]",
    )
    .await;
    let want = String::from_utf8(BOM_CRLF.to_vec())
        .unwrap()
        .replace("value=\"LUCS\"", "value=\"NAVY\"")
        .replace(
            "<add key=\"Note\" value=\"a &amp; b &lt;c&gt; &#x41;\"/>",
            "<add key=\"CleanupConferences\" value=\"false\"/>",
        );
    assert_eq!(String::from_utf8(out).unwrap(), want);
}
