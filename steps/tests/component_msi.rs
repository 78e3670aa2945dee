//! `msi.install` / `msi.uninstall` against the stand-in `msiexec`
//! (steps/tests/standins/), a real script that keeps installed products in
//! a state file and writes a UTF-16LE verbose log. The Windows command line
//! (msiexec quoting) is asserted in the unit tests of `msi.rs`.

// Unix only: the stand-in here is a shell script (steps/tests/standins/).
// On Windows the real program is exercised instead, under Wine by
// tests/wine/e2e (see docs/windows.md).
#![cfg(unix)]

use std::path::{Path, PathBuf};

use upshift_steps::testing::TestContext;
use upshift_steps::{Probe, Step, StepError, registry};

const CODE_NEW: &str = "{11111111-2222-3333-4444-555555555555}";
const CODE_OLD: &str = "{AAAAAAAA-2222-3333-4444-555555555555}";

struct Standin {
    dir: tempfile::TempDir,
}

impl Standin {
    fn new() -> Standin {
        let dir = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/standins/msiexec");
        std::fs::copy(&src, dir.path().join("msiexec")).unwrap();
        Standin { dir }
    }
    fn package(&self, name: &str, code: &str, version: &str, extra: &str) -> PathBuf {
        let p = self.dir.path().join("packages dir").join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(
            &p,
            format!(
                "ProductCode={code}\nProductVersion={version}\nProductName=Luware-TM-ICH\n{extra}"
            ),
        )
        .unwrap();
        p
    }
    fn installed(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("msiexec-state/installed.txt"))
            .unwrap_or_default()
    }
    fn calls(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("msiexec-state/calls.log")).unwrap_or_default()
    }
    fn step(&self, kind: &str, rest: &str) -> Box<dyn Step> {
        let with: toml::Table = toml::from_str(&format!(
            "program = {}\n{rest}",
            toml::Value::String(self.dir.path().join("msiexec").display().to_string())
        ))
        .unwrap();
        registry().get(kind).unwrap().build(&with).unwrap()
    }
    fn ctx(&self) -> TestContext {
        TestContext::new("ich_install", self.dir.path().join("work"))
    }
}

fn q(p: &Path) -> String {
    toml::Value::String(p.display().to_string()).to_string()
}

#[tokio::test]
async fn install_records_properties_probe_and_skip_on_rerun() {
    let s = Standin::new();
    let pkg = s.package("ich-3.2.msi", CODE_NEW, "3.2.0", "");
    let step = s.step(
        "msi.install",
        &format!(
            "package = {}\nproduct_code = \"{CODE_NEW}\"\nversion = \"3.2.0\"\nproperties = {{ INSTANCENAME = \"LUCS\", PORTNUMBER = 3500 }}",
            q(&pkg)
        ),
    );
    let ctx = s.ctx();
    assert!(matches!(step.probe(&ctx).await.unwrap(), Probe::Differs(_)));
    let out = step.run(&ctx).await.unwrap();
    assert_eq!(out.outputs["exit_code"], "0");
    assert!(!out.reboot_required);
    assert_eq!(out.outputs["installed_version"], "3.2.0");
    let installed = s.installed();
    assert!(installed.contains(CODE_NEW), "{installed}");
    assert!(
        installed.contains(
            "INSTANCENAME=LUCS PORTNUMBER=3500 INSTALLFOLDER=C:\\Program Files\\Luware AG"
        ),
        "{installed}"
    );
    assert!(s.calls().contains("/qn /norestart /l*v"));
    // The verbose log was written (UTF-16LE) into the work folder.
    let log = PathBuf::from(&out.outputs["log"]);
    assert!(log.starts_with(s.dir.path().join("work")));
    assert_eq!(&std::fs::read(&log).unwrap()[..2], &[0xFF, 0xFE]);
    assert_eq!(step.probe(&ctx).await.unwrap(), Probe::InPlace);

    let again = step.run(&s.ctx()).await.unwrap();
    assert_eq!(again.outputs["skipped"], "true");
    assert_eq!(s.calls().lines().count(), 1, "msiexec ran only once");
}

#[tokio::test]
async fn exit_3010_means_reboot_and_resume_skips() {
    let s = Standin::new();
    let pkg = s.package("ich.msi", CODE_NEW, "3.2.0", "ExitCode=3010\n");
    let step = s.step(
        "msi.install",
        &format!("package = {}\nproduct_code = \"{CODE_NEW}\"", q(&pkg)),
    );
    let out = step.run(&s.ctx()).await.unwrap();
    assert!(out.reboot_required);
    assert_eq!(out.outputs["reboot_required"], "true");
    // After the reboot the step runs again and finds the product in place.
    let again = step.run(&s.ctx()).await.unwrap();
    assert!(!again.reboot_required);
    assert_eq!(again.outputs["skipped"], "true");
}

#[tokio::test]
async fn failure_reports_meaning_and_log_lines_from_utf16() {
    let s = Standin::new();
    let pkg = s.package("bad.msi", CODE_NEW, "3.2.0", "FailCode=1603\n");
    let step = s.step("msi.install", &format!("package = {}", q(&pkg)));
    let e = step.run(&s.ctx()).await.unwrap_err();
    let StepError::Failed { message, transient } = e else {
        panic!()
    };
    assert!(!transient);
    assert!(
        message.contains("1603") && message.contains("a fatal error occurred"),
        "{message}"
    );
    assert!(
        message.contains("Error 1920. Service 'Luware-TM-ICH' failed to start"),
        "{message}"
    );
}

#[tokio::test]
async fn another_install_in_progress_is_transient() {
    let s = Standin::new();
    let pkg = s.package("ich.msi", CODE_NEW, "3.2.0", "");
    std::fs::create_dir_all(s.dir.path().join("msiexec-state")).unwrap();
    std::fs::write(s.dir.path().join("msiexec-state/busy"), "").unwrap();
    let step = s.step("msi.install", &format!("package = {}", q(&pkg)));
    let e = step.run(&s.ctx()).await.unwrap_err();
    assert!(
        matches!(
            e,
            StepError::Failed {
                transient: true,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("1618"));
}

#[tokio::test]
async fn uninstall_then_absent_is_success_and_compensation_reinstalls() {
    let s = Standin::new();
    let old = s.package("ich-3.1.msi", CODE_OLD, "3.1.0", "");
    s.step("msi.install", &format!("package = {}", q(&old)))
        .run(&s.ctx())
        .await
        .unwrap();
    assert!(s.installed().contains(CODE_OLD));

    let un = s.step("msi.uninstall", &format!("package = {}", q(&old)));
    let mut ctx = s.ctx();
    let out = un.run(&ctx).await.unwrap();
    assert_eq!(out.outputs["previous_package"], old.display().to_string());
    assert!(!s.installed().contains(CODE_OLD));
    // Again: msiexec says 1605 (not installed), which is success here.
    let again = un.run(&s.ctx()).await.unwrap();
    assert_eq!(again.outputs["exit_code"], "1605");

    assert!(un.has_compensation());
    ctx.recorded = out.outputs;
    un.compensate(&ctx).await.unwrap();
    assert!(s.installed().contains(CODE_OLD), "reinstalled");
}

#[tokio::test]
async fn upgrade_compensation_removes_new_and_reinstalls_previous() {
    let s = Standin::new();
    let old = s.package("ich-3.1.msi", CODE_OLD, "3.1.0", "");
    let new = s.package("ich-3.2.msi", CODE_NEW, "3.2.0", "");
    let install = s.step(
        "msi.install",
        &format!(
            "package = {}\nproduct_code = \"{CODE_NEW}\"\nprevious_package = {}",
            q(&new),
            q(&old)
        ),
    );
    let mut ctx = s.ctx();
    let out = install.run(&ctx).await.unwrap();
    assert_eq!(out.outputs["previous_package"], old.display().to_string());
    ctx.recorded = out.outputs;
    install.compensate(&ctx).await.unwrap();
    let installed = s.installed();
    assert!(
        !installed.contains(CODE_NEW) && installed.contains(CODE_OLD),
        "{installed}"
    );
    assert!(s.calls().contains(&format!("/x {CODE_NEW}")));
}

#[test]
fn parameters_are_checked() {
    let err = |kind: &str, with: &str| {
        let with: toml::Table = toml::from_str(with).unwrap();
        match registry().get(kind).unwrap().build(&with) {
            Ok(_) => panic!("built"),
            Err(e) => e.message,
        }
    };
    assert!(
        err(
            "msi.install",
            "product_code = \"{11111111-2222-3333-4444-555555555555}\""
        )
        .contains("package")
    );
    assert!(
        err(
            "msi.install",
            "package = \"a.msi\"\nproperties = { installfolder = \"x\" }"
        )
        .contains("public")
    );
    assert!(err("msi.uninstall", "product_code = \"1111\"").contains("not a ProductCode"));
    assert!(err("msi.uninstall", "").contains("package"));
}

#[test]
fn describe_shows_the_msiexec_line_with_secrets_hidden() {
    let with: toml::Table = toml::from_str(
        "package = 'D:\\TM\\Luware-TM-PS.msi'\nproperties = { SQLPASSWORD = \"hunter2\", INSTANCENAME = \"LUCS\" }",
    )
    .unwrap();
    let step = registry().get("msi.install").unwrap().build(&with).unwrap();
    let d = step.describe().join("\n");
    assert!(
        d.contains(r#"INSTALLFOLDER="C:\Program Files\Luware AG""#),
        "{d}"
    );
    assert!(
        d.contains("SQLPASSWORD=(hidden)") && !d.contains("hunter2"),
        "{d}"
    );
}

/// Property names from a site's table: a plan key renamed to the package's
/// name, `""` left out; an installed version other than `version`, or a
/// product not registered under the plan's code, fails the install.
#[tokio::test]
async fn property_names_and_the_installed_version_read_back() {
    let s = Standin::new();
    let pkg = s.package("ich.msi", CODE_NEW, "8.0", "");
    let step = s.step(
        "msi.install",
        &format!(
            "package = {}\nproduct_code = \"{CODE_NEW}\"\nversion = \"8.0\"\nproperties = {{ INSTANCENAME = \"TM\", LOGLEVEL = \"Debug\" }}\nproperty_names = {{ INSTANCENAME = \"INSTANCE_NAME\", LOGLEVEL = \"\" }}",
            q(&pkg)
        ),
    );
    step.run(&s.ctx()).await.unwrap();
    let calls = s.calls();
    assert!(calls.contains("INSTANCE_NAME=TM"), "{calls}");
    assert!(
        !calls.contains("INSTANCENAME") && !calls.contains("LOGLEVEL"),
        "{calls}"
    );

    // The package is 7.9, the plan wants 8.0.
    let s = Standin::new();
    let pkg = s.package("ich.msi", CODE_NEW, "7.9", "");
    let step = s.step(
        "msi.install",
        &format!(
            "package = {}\nproduct_code = \"{CODE_NEW}\"\nversion = \"8.0\"",
            q(&pkg)
        ),
    );
    let e = step.run(&s.ctx()).await.unwrap_err();
    assert!(
        e.to_string().contains("reports version 7.9, not 8.0"),
        "{e}"
    );

    // The package's ProductCode is not the plan's.
    let s = Standin::new();
    let pkg = s.package("ich.msi", CODE_OLD, "8.0", "");
    let step = s.step(
        "msi.install",
        &format!(
            "package = {}\nproduct_code = \"{CODE_NEW}\"\nversion = \"8.0\"",
            q(&pkg)
        ),
    );
    let e = step.run(&s.ctx()).await.unwrap_err();
    assert!(e.to_string().contains("not registered as installed"), "{e}");
}
