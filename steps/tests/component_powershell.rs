//! `powershell` through the stand-in `pwsh` (steps/tests/standins/), which
//! records argv, the decoded launcher and the argument environment of each
//! call: arguments must arrive as data, never as code.

// Unix only: the stand-in here is a shell script (steps/tests/standins/).
// On Windows the real program is exercised instead, under Wine by
// tests/wine/e2e (see docs/windows.md).
#![cfg(unix)]

use std::path::{Path, PathBuf};

use upshift_steps::testing::TestContext;
use upshift_steps::{Step, registry};

const EVIL: &str = "'; Remove-Item C:\\ -Recurse; '";

struct Standin {
    dir: tempfile::TempDir,
}

impl Standin {
    fn new() -> Standin {
        let dir = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/standins/pwsh");
        std::fs::copy(&src, dir.path().join("pwsh")).unwrap();
        Standin { dir }
    }
    fn program(&self) -> PathBuf {
        self.dir.path().join("pwsh")
    }
    fn call(&self, n: usize, what: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("pwsh-state/{n}.{what}")))
            .unwrap_or_default()
    }
    fn hook(&self, body: &str) {
        let state = self.dir.path().join("pwsh-state");
        std::fs::create_dir_all(&state).unwrap();
        let hook = state.join("hook");
        std::fs::write(&hook, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(&hook)
            .status()
            .unwrap();
    }
    fn step(&self, kind: &str, rest: &str) -> Box<dyn Step> {
        let with: toml::Table = toml::from_str(&format!(
            "program = {}\n{rest}",
            toml::Value::String(self.program().display().to_string())
        ))
        .unwrap();
        registry().get(kind).unwrap().build(&with).unwrap()
    }
}

#[tokio::test]
async fn injection_string_stays_one_literal_argument() {
    let s = Standin::new();
    let step = s.step(
        "powershell",
        &format!(
            "script = \"param([string]$Path) Write-Output $Path\"\nparams = {{ Path = {0} }}\nargs = [{0}, \"second arg\"]",
            toml::Value::String(EVIL.into())
        ),
    );
    let ctx = TestContext::new("ps", s.dir.path().join("work"));
    let out = step.run(&ctx).await.unwrap();
    assert_eq!(out.outputs["exit_code"], "0");

    let argv: Vec<String> = s.call(1, "argv").lines().map(str::to_string).collect();
    assert_eq!(
        argv[..5],
        [
            "-NoProfile",
            "-NonInteractive",
            "-ExecutionPolicy",
            "Bypass",
            "-EncodedCommand"
        ]
    );
    assert_eq!(argv.len(), 6, "{argv:?}");
    assert!(!argv.iter().any(|a| a.contains("Remove-Item")));
    let launcher = s.call(1, "launcher");
    assert!(
        launcher.contains("@upshiftArgs @upshiftNamed"),
        "{launcher}"
    );
    assert!(!launcher.contains("Remove-Item"), "{launcher}");
    let env = s.call(1, "env");
    assert!(
        env.contains(&format!("UPSHIFT_PS_NAMED_Path={EVIL}\n")),
        "{env}"
    );
    assert!(env.contains(&format!("UPSHIFT_PS_ARG_0={EVIL}\n")), "{env}");
    assert!(env.contains("UPSHIFT_PS_ARG_1=second arg\n"), "{env}");

    // The inline script went to a file in the work folder, with a BOM.
    let script = PathBuf::from(s.call(1, "script").trim());
    assert!(
        script.starts_with(s.dir.path().join("work")),
        "{}",
        script.display()
    );
    let bytes = std::fs::read(&script).unwrap();
    assert_eq!(&bytes[..3], b"\xEF\xBB\xBF");
    assert_eq!(&bytes[3..], b"param([string]$Path) Write-Output $Path");
}

#[tokio::test]
async fn exit_code_and_output_are_judged() {
    let s = Standin::new();
    s.hook("echo \"script said $UPSHIFT_PS_NAMED_Name\"; exit 4");
    let step = s.step(
        "powershell",
        "script = \"exit 4\"\nparams = { Name = \"ICH\" }",
    );
    let ctx = TestContext::new("ps", s.dir.path().join("work"));
    let e = step.run(&ctx).await.unwrap_err().to_string();
    assert!(
        e.contains("exited with code 4") && e.contains("script said ICH"),
        "{e}"
    );

    let ok = s.step("powershell", "script = \"exit 4\"\nok_exit_codes = [0, 4]");
    let out = ok.run(&ctx).await.unwrap();
    assert_eq!(out.outputs["exit_code"], "4");
    assert!(ctx.output_text().contains("script said"));
}

#[tokio::test]
async fn script_file_is_used_as_is_and_missing_file_fails() {
    let s = Standin::new();
    let file = s.dir.path().join("it's here.ps1");
    std::fs::write(&file, "param($A)").unwrap();
    let step = s.step(
        "powershell",
        &format!(
            "script_file = {}",
            toml::Value::String(file.display().to_string())
        ),
    );
    step.run(&TestContext::new("ps", s.dir.path().join("work")))
        .await
        .unwrap();
    assert_eq!(s.call(1, "script").trim(), file.display().to_string());
    assert!(s.call(1, "launcher").contains("it''s here.ps1"));

    let missing = s.step("powershell", "script_file = \"/nonexistent/x.ps1\"");
    let e = missing
        .run(&TestContext::new("ps", s.dir.path().join("work")))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not found"), "{e}");
}

#[test]
fn bad_parameter_names_are_refused() {
    let with: toml::Table = toml::from_str("script = \"x\"\nparams = { \"a b\" = \"1\" }").unwrap();
    let e = registry()
        .get("powershell")
        .unwrap()
        .build(&with)
        .err()
        .unwrap();
    assert!(
        e.message.contains("not a PowerShell parameter name"),
        "{}",
        e.message
    );
    let with: toml::Table = toml::from_str("params = {}").unwrap();
    assert!(registry().get("powershell").unwrap().build(&with).is_err());
}
