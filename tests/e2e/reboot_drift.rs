//! Reboots (register resume-at-boot, reboot, unregister after boot) and
//! drift (probes of completed steps) through the real binary. The Linux
//! path runs for real up to the reboot itself, which a stand-in systemctl
//! records instead of performing.

#![cfg(unix)]

use crate::support::{Sandbox, standin_systemctl};

#[test]
fn a_reboot_registers_resume_at_boot_reboots_and_unregisters_after_the_boot() {
    let sb = Sandbox::new();
    let systemctl = standin_systemctl(&sb);
    let units = sb.path().join("units");
    let plan = sb.plan(
        "p.toml",
        r#"
name = "reboot"
reboot = "auto"
[steps.install]
kind = "process"
with = { program = "sh", args = ["-c", "echo install >> @M@/install; exit 3"], reboot_exit_codes = [3] }
[steps.after]
kind = "process"
needs = ["install"]
with = { program = "sh", args = ["-c", "echo after >> @M@/after"] }
"#,
    );
    let env = [
        ("UPSHIFT_SYSTEMCTL", systemctl.as_str()),
        ("UPSHIFT_SYSTEMD_DIR", units.to_str().unwrap()),
    ];
    let r = sb.run_env(&["run", plan.to_str().unwrap()], &env);
    r.expect(130);
    let run = r.run_id();
    assert!(
        r.stderr.contains("rebooting for step install"),
        "{}",
        r.stderr
    );
    let unit = units.join(format!("upshift-resume-{run}.service"));
    let text = std::fs::read_to_string(&unit).expect("the boot unit is written");
    assert!(text.contains(&format!("resume {run} --journal")), "{text}");
    let calls = sb.marker_lines("systemctl.calls");
    assert_eq!(
        calls,
        [
            "daemon-reload",
            &format!("enable upshift-resume-{run}.service"),
            "reboot"
        ]
    );
    assert!(
        sb.marker_lines("after").is_empty(),
        "nothing runs past a reboot"
    );

    // "After the boot": the unit runs `upshift resume`.
    sb.run_env(&["resume", &run], &env).expect(0);
    assert!(
        !unit.exists(),
        "the boot unit is removed once the run resumed"
    );
    assert_eq!(
        sb.marker_lines("install").len(),
        1,
        "the step before the reboot is not repeated"
    );
    assert_eq!(sb.marker_lines("after").len(), 1);
    let calls = sb.marker_lines("systemctl.calls");
    assert!(
        calls.contains(&format!("disable upshift-resume-{run}.service")),
        "{calls:?}"
    );
    let log = sb.run(&["log", &run]);
    assert!(
        log.stdout.contains("reboot.requested install"),
        "{}",
        log.stdout
    );
    assert!(
        log.stdout.contains("resumed after the reboot"),
        "{}",
        log.stdout
    );
}

#[test]
fn with_reboot_ask_the_run_pauses_with_the_task_registered() {
    let sb = Sandbox::new();
    let systemctl = standin_systemctl(&sb);
    let units = sb.path().join("units");
    let plan = sb.plan(
        "p.toml",
        r#"
name = "reboot ask"
[steps.need]
kind = "reboot"
with = { reason = "Windows update pending" }
[steps.after]
kind = "process"
needs = ["need"]
with = { program = "sh", args = ["-c", "echo after >> @M@/after"] }
"#,
    );
    let env = [
        ("UPSHIFT_SYSTEMCTL", systemctl.as_str()),
        ("UPSHIFT_SYSTEMD_DIR", units.to_str().unwrap()),
    ];
    let r = sb.run_env(&["run", plan.to_str().unwrap()], &env);
    r.expect(3);
    assert!(r.stderr.contains("requires a reboot"), "{}", r.stderr);
    assert!(
        !sb.marker_lines("systemctl.calls")
            .contains(&"reboot".to_string())
    );
    sb.run_env(&["resume", &r.run_id()], &env).expect(0);
    assert_eq!(sb.marker_lines("after").len(), 1);
}

#[test]
fn drift_is_reported_and_resume_pauses_on_it_unless_ignored() {
    let sb = Sandbox::new();
    let config = sb.path().join("AppSettings.config");
    std::fs::write(
        &config,
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<appSettings>\n  <add key=\"InstanzName\" value=\"old\" />\n</appSettings>\n",
    )
    .unwrap();
    let plan = sb.plan(
        "p.toml",
        &format!(
            r#"
name = "drift"
[steps.edit]
kind = "config.appsettings"
with = {{ file = "{}", set = {{ InstanzName = "TM" }} }}
[steps.gate]
kind = "manual"
needs = ["edit"]
with = {{ instructions = "check the site" }}
[steps.after]
kind = "process"
needs = ["gate"]
with = {{ program = "sh", args = ["-c", "echo after >> @M@/after"] }}
"#,
            config.display()
        ),
    );
    let r = sb.run(&["run", plan.to_str().unwrap()]);
    r.expect(3);
    let run = r.run_id();
    assert!(
        std::fs::read_to_string(&config)
            .unwrap()
            .contains("value=\"TM\"")
    );
    sb.run(&["drift", &run]).expect(0);
    // Someone changes the value back by hand.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("value=\"TM\"", "value=\"old\"");
    std::fs::write(&config, text).unwrap();
    let d = sb.run(&["drift", &run]);
    d.expect(1);
    assert!(
        d.stdout.contains("edit:") && d.stdout.contains("InstanzName"),
        "{}",
        d.stdout
    );
    sb.run(&["approve", &run, "gate"]).expect(0);
    let paused = sb.run(&["resume", &run]);
    paused.expect(3);
    assert!(
        paused.stderr.contains("--ignore-drift"),
        "{}",
        paused.stderr
    );
    assert!(sb.marker_lines("after").is_empty());
    sb.run(&["resume", &run, "--ignore-drift"]).expect(0);
    assert_eq!(sb.marker_lines("after").len(), 1);
    let log = sb.run(&["log", &run]);
    assert!(log.stdout.contains("ignore drift (edit)"), "{}", log.stdout);
}

/// A stand-in for systemctl with one unit whose state is a file: `restart`
/// stops it, waits 250 ms and starts it (a crash of the engine meanwhile
/// kills it and leaves the unit stopped, as an ICH restart cut off by a
/// crash does).
fn standin_unit_systemctl(sb: &Sandbox) -> String {
    let path = sb.path().join("systemctl-unit");
    let state = sb.markers().join("unit.state");
    std::fs::write(
        &path,
        format!(
            r#"#!/bin/sh
# stand-in for systemctl (test): one unit, its state in a file
S={state}
case "$1" in
  is-active) s=$(cat "$S" 2>/dev/null || echo inactive); echo "$s"; [ "$s" = active ] ;;
  start) echo active > "$S" ;;
  stop) echo inactive > "$S" ;;
  restart) echo inactive > "$S"; sleep 0.25; echo active > "$S" ;;
esac
"#,
            state = state.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

/// Drift must not blame the run for its own work: a step starts a service,
/// a later step restarts it (beside a checkpointing `foreach`, so that
/// crashes land while the service is down). A crash after every event,
/// then plain `upshift resume` until done: it never pauses on drift, and
/// the service runs at the end.
#[test]
fn a_crash_in_a_step_that_restarts_a_service_never_pauses_resume_on_drift() {
    let plan_text = |sb: &Sandbox, systemctl: &str| {
        sb.plan(
            "p.toml",
            &format!(
                r#"
name = "restart"
[steps.start]
kind = "service"
with = {{ name = "tm-ich", action = "start", systemctl = "{systemctl}", poll_interval = "20ms" }}
[steps.tick]
kind = "foreach"
needs = ["start"]
with = {{ items = ["1", "2", "3", "4", "5", "6"], program = "sh", args = ["-c", "sleep 0.06"] }}
[steps.restart]
kind = "service"
needs = ["start"]
with = {{ name = "tm-ich", action = "restart", systemctl = "{systemctl}", poll_interval = "20ms" }}
[steps.after]
kind = "process"
needs = ["restart", "tick"]
with = {{ program = "sh", args = ["-c", "echo after >> @M@/after"] }}
"#
            ),
        )
    };
    let reference = Sandbox::new();
    let systemctl = standin_unit_systemctl(&reference);
    let r = reference.run(&["run", plan_text(&reference, &systemctl).to_str().unwrap()]);
    r.expect(0);
    let total = reference.events(&r.run_id()).len();
    let mut down_at_crash = 0;
    for k in 1..=total {
        let sb = Sandbox::new();
        let systemctl = standin_unit_systemctl(&sb);
        let plan = plan_text(&sb, &systemctl);
        let crashed = sb.run_env(
            &["run", plan.to_str().unwrap()],
            &[("UPSHIFT_FAILPOINT_CRASH_AFTER", &k.to_string())],
        );
        assert!(
            crashed.signal.is_some() || crashed.code == Some(134),
            "k={k}: the failpoint did not abort the engine: {crashed:?}"
        );
        let run = crashed.run_id();
        // A restart cut off by the crash is killed with the engine.
        std::thread::sleep(std::time::Duration::from_millis(300));
        if sb.marker_lines("unit.state") == ["inactive"] {
            down_at_crash += 1;
        }
        let mut done = false;
        for _ in 0..4 {
            let r = sb.run(&["resume", &run]);
            assert!(
                !r.stderr.contains("drift"),
                "k={k}: resume paused on drift:\n{}",
                r.stderr
            );
            if r.code == Some(0) {
                done = true;
                break;
            }
        }
        assert!(done, "k={k}: the run did not finish");
        assert_eq!(sb.marker_lines("unit.state"), ["active"], "k={k}");
        assert_eq!(sb.marker_lines("after").len(), 1, "k={k}");
    }
    assert!(
        down_at_crash > 0,
        "no crash landed while the restart had the service down: the test proves nothing"
    );
}
