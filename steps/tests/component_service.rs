//! `service` against the stand-in `systemctl` (steps/tests/standins/), a
//! real shell script that keeps unit state in files: start/stop/restart,
//! waiting through pending states, timeouts, start types, compensation.

// Unix only: the stand-in here is a shell script (steps/tests/standins/).
// On Windows the real program is exercised instead, under Wine by
// tests/wine/e2e (see docs/windows.md).
#![cfg(unix)]

use std::path::{Path, PathBuf};

use upshift_steps::testing::TestContext;
use upshift_steps::{Probe, Step, StepError, registry};

struct Standin {
    dir: tempfile::TempDir,
}

impl Standin {
    fn new() -> Standin {
        let dir = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/standins/systemctl");
        std::fs::copy(&src, dir.path().join("systemctl")).unwrap();
        std::fs::create_dir_all(dir.path().join("systemctl-state")).unwrap();
        Standin { dir }
    }
    fn program(&self) -> PathBuf {
        self.dir.path().join("systemctl")
    }
    fn state(&self, file: &str) -> PathBuf {
        self.dir.path().join("systemctl-state").join(file)
    }
    fn unit(&self, name: &str, active: &str, enabled: &str) {
        std::fs::write(self.state(&format!("{name}.unit")), "").unwrap();
        std::fs::write(self.state(&format!("{name}.active")), format!("{active}\n")).unwrap();
        std::fs::write(
            self.state(&format!("{name}.enabled")),
            format!("{enabled}\n"),
        )
        .unwrap();
    }
    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.state(file))
            .unwrap_or_default()
            .trim()
            .to_string()
    }
    fn step(&self, rest: &str) -> Box<dyn Step> {
        let with: toml::Table = toml::from_str(&format!(
            "systemctl = {}\npoll_interval = \"10ms\"\n{rest}",
            toml::Value::String(self.program().display().to_string())
        ))
        .unwrap();
        registry().get("service").unwrap().build(&with).unwrap()
    }
    fn ctx(&self) -> TestContext {
        TestContext::new("svc", self.dir.path().join("work"))
    }
}

#[tokio::test]
async fn stop_waits_through_pending_and_compensation_starts_again() {
    let s = Standin::new();
    s.unit("tm-ich", "active", "enabled");
    std::fs::write(s.state("tm-ich.delay"), "3").unwrap();
    let step = s.step("name = \"tm-ich\"\naction = \"stop\"");
    let mut ctx = s.ctx();
    assert!(matches!(step.probe(&ctx).await.unwrap(), Probe::Differs(_)));
    let out = step.run(&ctx).await.unwrap();
    assert_eq!(out.outputs["previous_state"], "running");
    assert_eq!(out.outputs["previous_start_type"], "auto");
    assert_eq!(out.outputs["state"], "stopped");
    assert_eq!(s.read("tm-ich.active"), "inactive");
    assert_eq!(step.probe(&ctx).await.unwrap(), Probe::InPlace);
    // The waiting went through "deactivating" polls.
    let calls = s.read("calls.log");
    assert!(calls.matches("is-active tm-ich").count() >= 4, "{calls}");

    assert!(step.has_compensation());
    ctx.recorded = out.outputs;
    step.compensate(&ctx).await.unwrap();
    assert_eq!(s.read("tm-ich.active"), "active");
}

#[tokio::test]
async fn start_is_a_noop_when_running() {
    let s = Standin::new();
    s.unit("web", "active", "enabled");
    let step = s.step("name = \"web\"\naction = \"start\"");
    step.run(&s.ctx()).await.unwrap();
    let calls = s.read("calls.log");
    assert!(!calls.contains("start web"), "{calls}");
}

#[tokio::test]
async fn start_type_is_set_and_restored() {
    let s = Standin::new();
    s.unit("am", "active", "enabled");
    let step = s.step("name = \"am\"\naction = \"stop\"\nstart_type = \"disabled\"");
    let mut ctx = s.ctx();
    let out = step.run(&ctx).await.unwrap();
    assert_eq!(s.read("am.enabled"), "masked");
    assert_eq!(s.read("am.active"), "inactive");
    ctx.recorded = out.outputs;
    step.compensate(&ctx).await.unwrap();
    assert_eq!(s.read("am.enabled"), "enabled");
    assert_eq!(s.read("am.active"), "active");
}

#[tokio::test]
async fn restart_once_and_resume_does_not_restart_twice() {
    let s = Standin::new();
    s.unit("ich", "active", "enabled");
    let counter = s.dir.path().join("starts");
    let hook = s.state("ich.on-start");
    std::fs::write(
        &hook,
        format!("#!/bin/sh\necho x >> '{}'\n", counter.display()),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&hook)
        .status()
        .unwrap();
    let step = s.step("name = \"ich\"\naction = \"restart\"");
    let ctx = s.ctx();
    step.run(&ctx).await.unwrap();
    assert_eq!(s.read("ich.active"), "active");
    assert_eq!(s.read("calls.log").matches("restart ich").count(), 1);

    let mut resumed = s.ctx();
    resumed.resume = ctx.last_checkpoint();
    let out = step.run(&resumed).await.unwrap();
    assert_eq!(out.outputs["previous_state"], "running");
    assert_eq!(
        s.read("calls.log").matches("restart ich").count(),
        1,
        "no second restart"
    );
}

#[tokio::test]
async fn timeout_is_transient_and_names_the_state() {
    let s = Standin::new();
    s.unit("slow", "inactive", "enabled");
    std::fs::write(s.state("slow.delay"), "1000000").unwrap();
    let step = s.step("name = \"slow\"\naction = \"start\"\ntimeout = \"100ms\"");
    let e = step.run(&s.ctx()).await.unwrap_err();
    let StepError::Failed { message, transient } = e else {
        panic!()
    };
    assert!(transient);
    assert!(
        message.contains("not running") && message.contains("activating"),
        "{message}"
    );
}

#[tokio::test]
async fn missing_unit_and_failed_start_fail_clearly() {
    let s = Standin::new();
    let step = s.step("name = \"ghost\"\naction = \"start\"");
    let e = step.run(&s.ctx()).await.unwrap_err().to_string();
    assert!(
        e.contains("does not exist") && e.contains("not found"),
        "{e}"
    );

    s.unit("bad", "inactive", "enabled");
    std::fs::write(s.state("bad.fail-start"), "").unwrap();
    let step = s.step("name = \"bad\"\naction = \"start\"");
    let e = step.run(&s.ctx()).await.unwrap_err().to_string();
    assert!(e.contains("exited with code 1"), "{e}");
}

#[test]
fn describe_lists_the_commands() {
    let s = Standin::new();
    let step = s.step("name = \"tm-fe\"\naction = \"stop\"\nstart_type = \"manual\"");
    let d = step.describe().join("\n");
    assert!(
        d.contains("unmask tm-fe") && d.contains("disable tm-fe") && d.contains("stop tm-fe"),
        "{d}"
    );
}
