//! `config.expect` on real files: appSettings keys (with an external
//! `file=`), element/attribute paths, every difference listed in one
//! failure, comparisons that see through pasted invisible marks.

use std::path::PathBuf;

use upshift_steps::testing::TestContext;
use upshift_steps::{Probe, Step, StepError, registry};

const AC_CONFIG: &str = "\u{FEFF}<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<configuration>\r\n  <appSettings file=\"AppSettings.config\">\r\n    <add key=\"InstanzName\" value=\"TM\" />\r\n    <add key=\"PortNumberToAdd\" value=\"8101\" />\r\n    <add key=\"LyncVersion\" value=\"Skype for Business\" />\r\n    <add key=\"DbPassword\" value=\"hunter2\" />\r\n  </appSettings>\r\n  <system.serviceModel>\r\n    <behaviors>\r\n      <serviceBehaviors>\r\n        <behavior name=\"tm\">\r\n          <serviceCredentials>\r\n            <serviceCertificate findValue=\"3A7F129C44E10B5D6E8F90ABCDEF0123456789AB\" x509FindType=\"FindByThumbprint\" />\r\n          </serviceCredentials>\r\n        </behavior>\r\n      </serviceBehaviors>\r\n    </behaviors>\r\n  </system.serviceModel>\r\n</configuration>\r\n";

const EXTERNAL: &str =
    "<appSettings>\n  <add key=\"PortNumberToAdd\" value=\"8102\" />\n</appSettings>\n";

struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("TM.AC.Service.exe.config"), AC_CONFIG).unwrap();
        std::fs::write(dir.path().join("AppSettings.config"), EXTERNAL).unwrap();
        World { dir }
    }
    fn file(&self) -> PathBuf {
        self.dir.path().join("TM.AC.Service.exe.config")
    }
    fn with(&self, rest: &str) -> toml::Table {
        toml::from_str(&format!(
            "file = {}\n{rest}",
            toml::Value::String(self.file().display().to_string())
        ))
        .unwrap()
    }
    fn step(&self, rest: &str) -> Box<dyn Step> {
        registry()
            .get("config.expect")
            .unwrap()
            .build(&self.with(rest))
            .unwrap()
    }
    fn build_err(&self, rest: &str) -> String {
        match registry()
            .get("config.expect")
            .unwrap()
            .build(&self.with(rest))
        {
            Ok(_) => panic!("built"),
            Err(e) => format!("{} {:?}", e.message, e.field),
        }
    }
    fn ctx(&self) -> TestContext {
        TestContext::new("verify", self.dir.path().join("work"))
    }
}

const CERT_PATH: &str = "/configuration/system.serviceModel/behaviors/serviceBehaviors/behavior[@name='tm']/serviceCredentials/serviceCertificate/@findValue";

#[tokio::test]
async fn what_the_component_got_matches() {
    let w = World::new();
    let s = w.step(&format!(
        r#"app_settings = {{ InstanzName = "TM", PortNumberToAdd = 8102, LyncVersion = "Skype for Business" }}
assumed = "TM's key names are not in the manual"
[[checks]]
path = "{CERT_PATH}"
value = "‎3a 7f 12 9c 44 e1 0b 5d 6e 8f 90 ab cd ef 01 23 45 67 89 ab"
compare = "thumbprint"
assumed = "where TM keeps its WCF certificate"
"#
    ));
    let d = s.describe().join("\n");
    assert!(
        d.contains("ASSUMPTION: TM's key names are not in the manual"),
        "{d}"
    );
    assert!(
        d.contains("ASSUMPTION: where TM keeps its WCF certificate"),
        "{d}"
    );
    assert!(d.contains("compared as thumbprints"), "{d}");
    let ctx = w.ctx();
    let out = s.run(&ctx).await.unwrap().outputs;
    assert_eq!(out["checked"], "4");
    // 8102: the external AppSettings.config overrides the main file, as in .NET.
    assert!(
        ctx.output_text().contains("`PortNumberToAdd` = \"8102\""),
        "{}",
        ctx.output_text()
    );
    assert_eq!(s.probe(&ctx).await.unwrap(), Probe::InPlace);
    // It changed nothing.
    assert_eq!(std::fs::read_to_string(w.file()).unwrap(), AC_CONFIG);
}

#[tokio::test]
async fn every_difference_is_listed_in_one_failure() {
    let w = World::new();
    let s = w.step(&format!(
        r#"app_settings = {{ InstanzName = "tm", PortNumberToAdd = 8101, LyncVersion = "Lync 2013", CleanupConferences = "false", DbPassword = "other" }}
[[checks]]
path = "{CERT_PATH}"
value = "0000000000000000000000000000000000000000"
compare = "thumbprint"
[[checks]]
path = "/configuration/system.serviceModel/behaviors/serviceBehaviors/behavior/serviceCredentials/serviceCertificate/@storeName"
value = "My"
[[checks]]
key = "LyncVersion"
value = " skype FOR business "
compare = "ignore-case"
"#
    ));
    let ctx = w.ctx();
    let StepError::Failed { message, transient } = s.run(&ctx).await.unwrap_err() else {
        panic!()
    };
    assert!(!transient);
    for part in [
        "7 of 8 check(s) differ",
        "appSettings `InstanzName`: expected \"tm\", found \"TM\" (they differ only in letter case)",
        "appSettings `PortNumberToAdd`: expected \"8101\", found \"8102\"",
        "appSettings `LyncVersion`: expected \"Lync 2013\", found \"Skype for Business\"",
        "appSettings `CleanupConferences`: expected \"false\", found (absent)",
        "appSettings `DbPassword`: expected (hidden), found (hidden)",
        "serviceCertificate/@findValue: expected \"0000000000000000000000000000000000000000\", found \"3A7F129C44E10B5D6E8F90ABCDEF0123456789AB\"",
        "@storeName: expected \"My\", found (the element has no such attribute)",
        "TM.AC.Service.exe.config",
    ] {
        assert!(message.contains(part), "`{part}` missing:\n{message}");
    }
    assert!(!message.contains("hunter2"), "{message}");
    assert!(!ctx.output_text().contains("hunter2"));
    assert!(
        matches!(s.probe(&ctx).await.unwrap(), Probe::Differs(m) if m.contains("CleanupConferences"))
    );
}

#[tokio::test]
async fn an_invisible_mark_in_the_file_is_named() {
    let w = World::new();
    std::fs::write(
        w.file(),
        AC_CONFIG.replace("value=\"TM\"", "value=\"\u{200E}TM\""),
    )
    .unwrap();
    let err = w
        .step("app_settings = { InstanzName = \"TM\" }")
        .run(&w.ctx())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("U+200E LEFT-TO-RIGHT MARK at position 0"),
        "{err}"
    );
}

#[tokio::test]
async fn missing_and_broken_files_fail_with_path() {
    let w = World::new();
    std::fs::write(
        w.file(),
        "<configuration>\n<appSettings>\n</configuration>\n",
    )
    .unwrap();
    let err = w
        .step("app_settings = { A = \"1\" }")
        .run(&w.ctx())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("TM.AC.Service.exe.config:3"), "{err}");
    std::fs::remove_file(w.file()).unwrap();
    let err = w
        .step("app_settings = { A = \"1\" }")
        .run(&w.ctx())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot read") && err.contains("TM.AC.Service.exe.config"),
        "{err}"
    );
}

#[test]
fn parameters_are_checked() {
    let w = World::new();
    assert!(w.build_err("").contains("nothing to check"));
    assert!(
        w.build_err("[[checks]]\nvalue = \"x\"")
            .contains("either `key` or `path`")
    );
    assert!(
        w.build_err("[[checks]]\nkey = \"a\"\npath = \"/a\"\nvalue = \"x\"")
            .contains("either")
    );
    let e = w.build_err("[[checks]]\npath = \"configuration/a\"\nvalue = \"x\"");
    assert!(
        e.contains("must start with `/`") && e.contains("checks[0]"),
        "{e}"
    );
    assert!(
        w.build_err("[[checks]]\npath = \"/a/@b\"\nvalue = \"12\"\ncompare = \"thumbprint\"")
            .contains("40")
    );
    assert!(
        w.build_err("app_settings = { A = 1 }\ncompare = \"fuzzy\"")
            .contains("fuzzy")
    );
}

/// `skip_if_empty`: a check whose expected value is empty is left out (a
/// thumbprint on a site without certificate security); without it, an
/// empty expectation against a missing key is a difference.
#[tokio::test]
async fn skip_if_empty_leaves_the_check_out() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("AppSettings.config");
    std::fs::write(
        &f,
        "<appSettings>\n  <add key=\"InstanzName\" value=\"TM\" />\n</appSettings>\n",
    )
    .unwrap();
    let build = |extra: &str| {
        let with: toml::Table = toml::from_str(&format!(
            "file = {}\nchecks = [{{ key = \"InstanzName\", value = \"TM\" }}, {{ key = \"Thumbprint\", value = \"\"{extra} }}]",
            toml::Value::String(f.display().to_string())
        ))
        .unwrap();
        upshift_steps::registry()
            .get("config.expect")
            .unwrap()
            .build(&with)
            .unwrap()
    };
    let ctx = upshift_steps::testing::TestContext::new("verify", dir.path().join("work"));
    let out = build(", skip_if_empty = true").run(&ctx).await.unwrap();
    assert_eq!(out.outputs["checked"], "1");
    let e = build("").run(&ctx).await.unwrap_err();
    assert!(e.to_string().contains("Thumbprint"), "{e}");
}
