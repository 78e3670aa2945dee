//! An operator decision counts only where it fits (issue 12 item 9):
//! `approve` only for a step that waits for an operator, `retry` only for
//! a failed step (or compensation), `skip` not for a step already done —
//! refused with the step's state and what it waits for, offline (journaled
//! directly) and live (the CLI checks the live journal; the engine checks
//! again when it takes a queued decision).

use crate::support::{Sandbox, WAIT_FOR_GO};

/// Asserts a refusal (exit 2) whose message contains `says`.
#[track_caller]
fn refused(sb: &Sandbox, args: &[&str], says: &str) {
    sb.run_refused(args, 2, says);
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
        r#"name = "fit"
[steps]
ok = { kind = "process", with = { program = "true" } }
a = { kind = "process", needs = ["ok"], with = { program = "sh", args = ["-c", "echo broken >&2; exit 1"] } }
gate = { kind = "manual", needs = ["a"], with = { instructions = "bind the certificate, then approve" } }
"#,
    );
    let r = sb.run(&["run", plan.to_str().unwrap()]);
    r.expect(3);
    let run = r.run_id();
    let r = run.as_str();
    let refusals: [(&[&str], &str); 5] = [
        (
            &["approve", r, "gate"],
            "step `gate` is pending: it waits for `a` (failed): an approval counts only for a step that waits for an operator",
        ),
        (
            &["retry", r, "gate"],
            "step `gate` is pending: it waits for `a` (failed): only a failed step",
        ),
        (&["approve", r, "a"], "step `a` is failed ("),
        (
            &["skip", r, "ok", "--reason", "x"],
            "step `ok` already succeeded",
        ),
        (&["retry", r, "ok"], "step `ok` already succeeded"),
    ];
    for (args, says) in refusals {
        refused(&sb, args, says);
    }
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
        &format!(
            "name = \"fit live\"\n[steps]\nslow = {WAIT_FOR_GO}\n{}",
            r#"ok = { kind = "process", with = { program = "true" } }
bind = { kind = "manual", needs = ["slow"], with = { instructions = "bind the certificate in IIS, then approve" } }
"#
        )
        .replace("kind = \"process\", with = { program = \"sh\"", "kind = \"process\", needs = [\"ok\"], with = { program = \"sh\""),
    );
    let (mut engine, run) = sb.spawn_run(&plan);
    assert!(sb.wait_for_step(&run, "slow", "running"));
    // The CLI checks against the live journal: nothing is queued.
    let r = run.as_str();
    let refusals: [(&[&str], &str); 3] = [
        (
            &["approve", r, "bind"],
            "step `bind` is pending: it waits for `slow` (running)",
        ),
        (&["retry", r, "slow"], "step `slow` is running (attempt 1)"),
        (
            &["skip", r, "ok", "--reason", "x"],
            "step `ok` already succeeded",
        ),
    ];
    for (args, says) in refusals {
        refused(&sb, args, says);
    }
    assert!(
        !sb.inbox().run_dir(run.parse().unwrap()).exists(),
        "a refused decision is not queued"
    );
    // A decision that fit when it was queued but no longer does when the
    // engine takes it (here: queued past the CLI) is refused by the engine.
    sb.queue_approve(&run, "bind", "early");
    assert!(sb.wait_inbox_taken(&run), "the engine never took it");
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
