//! An operator decision counts only where it fits (issue 12 item 9):
//! `approve` only for a step that waits for an operator, `retry` only for
//! a failed step (or compensation), `skip` not for a step already done —
//! refused with the step's state and what it waits for, offline (journaled
//! directly) and live (the CLI checks the live journal; the engine checks
//! again when it takes a queued decision).

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use upshift::app::inbox::{DirInbox, InboxDecision};
use upshift_journal::{Actor, Decision, RunId};

use crate::support::{Sandbox, wait_until};

/// Asserts a refusal (exit 2) whose message contains `says`.
#[track_caller]
fn refused(sb: &Sandbox, args: &[&str], says: &str) {
    let r = sb.run(args);
    r.expect(2);
    assert!(r.stderr.contains(says), "upshift {args:?}: {}", r.stderr);
}

fn decisions_in_log(sb: &Sandbox, run: &str) -> usize {
    sb.run(&["log", run])
        .stdout
        .matches("operator.decision")
        .count()
}

#[test]
fn offline_decisions_that_do_not_fit_are_refused_and_journal_nothing() {
    let sb = Sandbox::new();
    let plan = sb.plan(
        "p.toml",
        r#"
name = "fit"
[steps.ok]
kind = "process"
with = { program = "true" }
[steps.a]
kind = "process"
needs = ["ok"]
with = { program = "sh", args = ["-c", "echo broken >&2; exit 1"] }
[steps.gate]
kind = "manual"
needs = ["a"]
with = { instructions = "bind the certificate, then approve" }
"#,
    );
    let r = sb.run(&["run", plan.to_str().unwrap()]);
    r.expect(3);
    let run = r.run_id();
    refused(
        &sb,
        &["approve", &run, "gate"],
        "step `gate` is pending: it waits for `a` (failed): an approval counts only for a step that waits for an operator",
    );
    refused(
        &sb,
        &["retry", &run, "gate"],
        "step `gate` is pending: it waits for `a` (failed): only a failed step",
    );
    refused(&sb, &["approve", &run, "a"], "step `a` is failed (");
    refused(
        &sb,
        &["skip", &run, "ok", "--reason", "x"],
        "step `ok` already succeeded",
    );
    refused(&sb, &["retry", &run, "ok"], "step `ok` already succeeded");
    assert_eq!(decisions_in_log(&sb, &run), 0, "a refusal journals nothing");
    // What fits is journaled, and the gate then waits for its approval.
    sb.run(&["skip", &run, "a", "--reason", "done by hand"])
        .expect(0);
    refused(
        &sb,
        &["skip", &run, "a", "--reason", "again"],
        "step `a` is skipped",
    );
    sb.run(&["resume", &run]).expect(3);
    assert_eq!(sb.status(&run)["steps"]["gate"]["state"], "waiting");
    sb.run(&["approve", &run, "gate"]).expect(0);
    sb.run(&["resume", &run]).expect(0);
}

#[test]
fn live_decisions_are_checked_by_the_cli_and_again_by_the_engine() {
    let sb = Sandbox::new();
    let plan = sb.plan(
        "p.toml",
        r#"
name = "fit live"
[steps.ok]
kind = "process"
with = { program = "true" }
[steps.slow]
kind = "process"
needs = ["ok"]
with = { program = "sh", args = ["-c", "for i in $(seq 600); do [ -e @M@/go ] && exit 0; sleep 0.05; done; exit 1"] }
[steps.bind]
kind = "manual"
needs = ["slow"]
with = { instructions = "bind the certificate in IIS, then approve" }
"#,
    );
    let mut engine = sb
        .cmd(&["run", plan.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(engine.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let run = line.trim().to_string();
    assert!(
        wait_until(Duration::from_secs(20), || {
            let r = sb.run(&["status", &run, "--json"]);
            r.code == Some(0) && r.stdout.contains("\"running\"")
        }),
        "slow never started"
    );
    // The CLI checks against the live journal: nothing is queued.
    refused(
        &sb,
        &["approve", &run, "bind"],
        "step `bind` is pending: it waits for `slow` (running)",
    );
    refused(
        &sb,
        &["retry", &run, "slow"],
        "step `slow` is running (attempt 1)",
    );
    refused(
        &sb,
        &["skip", &run, "ok", "--reason", "x"],
        "step `ok` already succeeded",
    );
    let inbox = DirInbox::new(sb.journal().join("inbox"));
    let id: RunId = run.parse().unwrap();
    let queued = || {
        std::fs::read_dir(inbox.run_dir(id))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(queued(), 0, "a refused decision is not queued");
    // A decision that fit when it was queued but no longer does when the
    // engine takes it (here: queued past the CLI) is refused by the engine.
    inbox
        .queue(
            id,
            &InboxDecision {
                decision: Decision::Approve {
                    step: "bind".into(),
                },
                actor: Actor {
                    user: "early".into(),
                    host: "h".into(),
                    pid: 1,
                },
                reason: "too early".into(),
            },
        )
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || queued() == 0),
        "the engine never took the queued decision"
    );
    std::fs::write(sb.markers().join("go"), "").unwrap();
    let code = engine.wait().unwrap().code();
    assert_eq!(code, Some(3), "the run pauses at bind");
    let st = sb.status(&run);
    assert_eq!(st["steps"]["bind"]["state"], "waiting", "{st}");
    let log = sb.run(&["log", &run]).stdout;
    assert!(
        log.contains("refused a queued decision (approve bind) by root (claimed: early)@h: step `bind` is pending: it waits for `slow` (running)"),
        "{log}"
    );
    assert_eq!(decisions_in_log(&sb, &run), 0, "{log}");
}
