//! Operator decisions: manual steps, pauses on failure, retry, skip, abort,
//! plan changes, resume = "ask", Ctrl-C, locks and concurrency.

use std::time::Duration;

use crate::support::{Sandbox, wait_until};

#[test]
fn a_manual_step_pauses_with_exit_3_until_approved() {
    let sb = Sandbox::new();
    let plan = sb.plan(
        "p.toml",
        r#"
name = "manual"
[steps.bind]
kind = "manual"
with = { instructions = "bind the HTTPS certificate to the FE site in IIS" }
[steps.other]
kind = "process"
with = { program = "sh", args = ["-c", "echo other >> @M@/other"] }
[steps.after]
kind = "process"
needs = ["bind"]
with = { program = "sh", args = ["-c", "echo after >> @M@/after"] }
"#,
    );
    let r = sb.run(&["run", plan.to_str().unwrap()]);
    r.expect(3);
    let run = r.run_id();
    assert!(
        r.stderr.contains("bind the HTTPS certificate"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&format!("upshift approve {run} bind")),
        "{}",
        r.stderr
    );
    // The independent branch went on; the dependent one waits.
    assert_eq!(sb.marker_lines("other").len(), 1);
    assert!(sb.marker_lines("after").is_empty());
    let s = sb.status(&run);
    assert_eq!(s["state"], "paused");
    assert_eq!(s["steps"]["bind"]["state"], "waiting");
    // Approving a step that does not wait is refused.
    sb.run(&["approve", &run, "other"]).expect(2);
    sb.run(&["approve", &run, "bind", "--reason", "done in IIS by jd"])
        .expect(0);
    sb.run(&["resume", &run]).expect(0);
    assert_eq!(sb.marker_lines("after").len(), 1);
    assert_eq!(
        sb.marker_lines("other").len(),
        1,
        "a finished step never runs again"
    );
    let log = sb.run(&["log", &run]);
    assert!(
        log.stdout.contains("operator.decision approve bind by"),
        "{}",
        log.stdout
    );
    assert!(log.stdout.contains("done in IIS by jd"));
}

#[test]
fn a_failure_pauses_then_retry_after_a_fix_finishes_the_run() {
    let sb = Sandbox::new();
    let flag = sb.path().join("fixed");
    let plan = sb.plan(
        "p.toml",
        &format!(
            r#"
name = "pause"
[steps.flaky]
kind = "process"
retry = {{ attempts = 2, backoff = "10ms" }}
with = {{ program = "sh", args = ["-c", "echo try >> @M@/flaky; test -e {}"] }}
[steps.next]
kind = "process"
needs = ["flaky"]
with = {{ program = "sh", args = ["-c", "echo next >> @M@/next"] }}
"#,
            flag.display()
        ),
    );
    let r = sb.run(&["run", plan.to_str().unwrap()]);
    r.expect(3);
    let run = r.run_id();
    assert_eq!(
        sb.marker_lines("flaky").len(),
        2,
        "two attempts by the retry policy"
    );
    assert!(
        r.stderr.contains(&format!("upshift retry {run} flaky")),
        "{}",
        r.stderr
    );
    let s = sb.status(&run);
    assert_eq!(s["steps"]["flaky"]["state"], "failed");
    assert_eq!(s["steps"]["flaky"]["attempts"], 2);
    std::fs::write(&flag, "").unwrap();
    sb.run(&["retry", &run, "flaky", "--reason", "created the flag"])
        .expect(0);
    sb.run(&["resume", &run]).expect(0);
    assert_eq!(sb.marker_lines("flaky").len(), 3);
    assert_eq!(sb.marker_lines("next").len(), 1);
}

#[test]
fn skip_needs_a_reason_and_abort_ends_the_run() {
    let sb = Sandbox::new();
    let plan = sb.plan(
        "p.toml",
        r#"
name = "skip"
[steps.broken]
kind = "process"
with = { program = "false" }
[steps.next]
kind = "process"
needs = ["broken"]
with = { program = "sh", args = ["-c", "echo next >> @M@/next"] }
[steps.last]
kind = "manual"
needs = ["next"]
with = { instructions = "check" }
"#,
    );
    let r = sb.run(&["run", plan.to_str().unwrap()]);
    r.expect(3);
    let run = r.run_id();
    let no_reason = sb.run(&["skip", &run, "broken"]);
    no_reason.expect(2);
    assert!(no_reason.stderr.contains("--reason"));
    sb.run(&["skip", &run, "nope", "--reason", "x"]).expect(2);
    sb.run(&["skip", &run, "broken", "--reason", "done by hand"])
        .expect(0);
    sb.run(&["resume", &run]).expect(3);
    assert_eq!(sb.marker_lines("next").len(), 1);
    assert_eq!(sb.status(&run)["steps"]["broken"]["state"], "skipped");
    sb.run(&["abort", &run, "--reason", "customer cancelled"])
        .expect(1);
    assert_eq!(sb.status(&run)["state"], "aborted");
    let again = sb.run(&["resume", &run]);
    again.expect(1);
    assert!(again.stderr.contains("already ended"));
}

#[test]
fn resume_refuses_a_changed_plan_unless_accepted() {
    let sb = Sandbox::new();
    let text = r#"
name = "change"
[steps.a]
kind = "process"
with = { program = "sh", args = ["-c", "echo a >> @M@/a"] }
[steps.gate]
kind = "manual"
needs = ["a"]
with = { instructions = "go" }
[steps.b]
kind = "process"
needs = ["gate"]
with = { program = "sh", args = ["-c", "echo b >> @M@/b"] }
"#;
    let plan = sb.plan("p.toml", text);
    let r = sb.run(&["run", plan.to_str().unwrap()]);
    r.expect(3);
    let run = r.run_id();
    sb.run(&["approve", &run, "gate"]).expect(0);
    sb.plan("p.toml", &text.replace("echo b >>", "echo B >>"));
    let refused = sb.run(&["resume", &run]);
    refused.expect(2);
    assert!(
        refused.stderr.contains("changed steps: b"),
        "{}",
        refused.stderr
    );
    assert!(sb.marker_lines("b").is_empty());
    sb.run(&["resume", &run, "--accept-plan-change"]).expect(0);
    assert_eq!(sb.marker_lines("b"), ["B"]);
    let log = sb.run(&["log", &run]);
    assert!(
        log.stdout.contains("accept plan change (b)"),
        "{}",
        log.stdout
    );
}

#[cfg(unix)]
#[test]
fn ctrl_c_interrupts_with_130_and_resume_continues_an_ask_step_after_approval() {
    let sb = Sandbox::new();
    let plan = sb.plan(
        "p.toml",
        r#"
name = "interrupt"
[steps.long]
kind = "process"
resume = "ask"
with = { program = "sh", args = ["-c", "echo start >> @M@/long; sleep 30; echo end >> @M@/long"] }
"#,
    );
    let child = sb
        .cmd(&["run", plan.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || sb
        .marker_lines("long")
        .len()
        == 1));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(sb.status(&run)["state"], "interrupted");
    // resume = "ask": the interrupted step waits for an operator.
    let r = sb.run(&["resume", &run]);
    r.expect(3);
    assert!(r.stderr.contains("resume = \"ask\""), "{}", r.stderr);
    assert_eq!(sb.status(&run)["steps"]["long"]["state"], "waiting");
    assert_eq!(
        sb.marker_lines("long"),
        ["start"],
        "nothing ran while waiting"
    );
}

#[test]
fn a_lock_serialises_steps_and_unlocked_steps_run_in_parallel() {
    let sb = Sandbox::new();
    // a and b meet at a barrier: each waits (bounded) for the other's file,
    // so they can only both succeed if they run at the same time.
    let plan = sb.plan(
        "p.toml",
        r#"
name = "locks"
[steps.a]
kind = "process"
with = { program = "sh", args = ["-c", "touch @M@/a.here; i=0; while [ ! -e @M@/b.here ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; test -e @M@/b.here"] }
[steps.b]
kind = "process"
with = { program = "sh", args = ["-c", "touch @M@/b.here; i=0; while [ ! -e @M@/a.here ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; test -e @M@/a.here"] }
[steps.x]
kind = "process"
locks = ["ich"]
with = { program = "sh", args = ["-c", "echo start-x >> @M@/ich; sleep 0.2; echo end-x >> @M@/ich"] }
[steps.y]
kind = "process"
locks = ["ich"]
with = { program = "sh", args = ["-c", "echo start-y >> @M@/ich; sleep 0.2; echo end-y >> @M@/ich"] }
"#,
    );
    sb.run(&["run", plan.to_str().unwrap()]).expect(0);
    let ich = sb.marker_lines("ich");
    assert_eq!(ich.len(), 4);
    // Never two holders at once: every start is followed by its own end.
    assert!(
        ich[0].starts_with("start-") && ich[1] == ich[0].replace("start", "end"),
        "{ich:?}"
    );
    assert!(
        ich[2].starts_with("start-") && ich[3] == ich[2].replace("start", "end"),
        "{ich:?}"
    );
}

#[test]
fn concurrency_1_runs_one_step_at_a_time() {
    let sb = Sandbox::new();
    let plan = sb.plan(
        "p.toml",
        r#"
name = "serial"
[steps.a]
kind = "process"
with = { program = "sh", args = ["-c", "echo start >> @M@/s; sleep 0.1; echo end >> @M@/s"] }
[steps.b]
kind = "process"
with = { program = "sh", args = ["-c", "echo start >> @M@/s; sleep 0.1; echo end >> @M@/s"] }
"#,
    );
    sb.run(&["run", plan.to_str().unwrap(), "--concurrency", "1"])
        .expect(0);
    assert_eq!(sb.marker_lines("s"), ["start", "end", "start", "end"]);
}

#[test]
fn a_decision_given_while_the_run_is_live_is_queued_and_journaled_by_the_engine() {
    let sb = Sandbox::new();
    let plan = sb.plan(
        "p.toml",
        r#"
name = "live"
[steps.slow]
kind = "process"
with = { program = "sh", args = ["-c", "sleep 1.5; echo slow >> @M@/slow"] }
[steps.gate]
kind = "manual"
with = { instructions = "approve me" }
[steps.after]
kind = "process"
needs = ["gate", "slow"]
with = { program = "sh", args = ["-c", "echo after >> @M@/after"] }
"#,
    );
    let child = sb
        .cmd(&["run", plan.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the engine has journaled that gate waits.
    let mut run = String::new();
    assert!(wait_until(Duration::from_secs(10), || {
        let r = sb.run(&["status", "--json"]);
        if r.code != Some(0) {
            return false;
        }
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        run = v["run"].as_str().unwrap_or_default().to_string();
        v["steps"]["gate"]["state"] == "waiting"
    }));
    let a = sb.run(&["approve", &run, "gate", "--reason", "live"]);
    a.expect(0);
    assert!(a.stderr.contains("queued"), "{}", a.stderr);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sb.marker_lines("after").len(), 1);
}
