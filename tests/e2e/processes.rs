//! Child processes: timeouts kill the whole tree, and nothing outlives an
//! engine that is SIGKILLed. Output is captured, bounded.

#![cfg(target_os = "linux")]

use std::time::Duration;

use crate::support::{Sandbox, processes_with, wait_until};

#[test]
fn a_timeout_kills_the_whole_process_tree_and_fails_the_attempt() {
    let sb = Sandbox::new();
    let token = format!("upshift-timeout-{}", std::process::id());
    // The token sits in the command lines of two shells (one in the
    // background), each waiting on a sleep: a tree of four processes.
    let plan = sb.plan(
        "p.toml",
        &format!(
            r#"
name = "timeout"
[steps.hang]
kind = "process"
timeout = "500ms"
with = {{ program = "sh", args = ["-c", "sh -c 'sleep 60; : {token}' & sh -c 'sleep 60; : {token}'; echo never >> @M@/hang"] }}
"#
        ),
    );
    let r = sb.run(&["run", plan.to_str().unwrap()]);
    r.expect(3);
    assert!(r.stderr.contains("timed out after"), "{}", r.stderr);
    assert!(
        wait_until(Duration::from_secs(5), || processes_with(&token).is_empty()),
        "left running: {:?}",
        processes_with(&token)
    );
    assert!(sb.marker_lines("hang").is_empty());
}

#[test]
fn children_die_with_a_sigkilled_engine() {
    // The small `upshift-guard` beside the binary guards the step.
    children_die_with_a_sigkilled(
        std::path::Path::new(crate::support::bin()),
        "upshift-guard __guard",
    );
}

#[test]
fn children_die_with_a_sigkilled_engine_whose_guard_is_itself() {
    // Without `upshift-guard` beside it, `upshift __guard` guards the step.
    let alone = tempfile::tempdir().unwrap();
    let exe = alone.path().join("upshift");
    std::fs::copy(crate::support::bin(), &exe).unwrap();
    children_die_with_a_sigkilled(&exe, "upshift __guard");
}

fn children_die_with_a_sigkilled(exe: &std::path::Path, guard: &str) {
    let sb = Sandbox::new();
    let token = format!("upshift-orphan-{}-{}", std::process::id(), guard.len());
    // `guard` is how the guard's command line starts (then the engine's pid).
    let plan = sb.plan(
        "p.toml",
        &format!(
            r#"
name = "orphans"
[steps.tree]
kind = "process"
with = {{ program = "sh", args = ["-c", "echo up >> @M@/tree; (sh -c 'sleep 60; : {token}' &) ; sh -c 'sleep 60; : {token}'"] }}
"#
        ),
    );
    let mut child = std::process::Command::new(exe)
        .args(["run", plan.to_str().unwrap()])
        .env("UPSHIFT_JOURNAL", sb.journal())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The guard's own command line holds the token too (and so does its
    // fork until it execs the step): count only the step's processes, so
    // that the guard's child has exec'd when the guards are counted.
    assert!(wait_until(Duration::from_secs(10), || processes_with(
        &token
    )
    .iter()
    .filter(|p| !p.contains(" __guard "))
    .count()
        >= 2));
    // `PID --` whole: `1234` alone also matches the guard of another
    // test's engine 12345 running beside this one.
    let guards = processes_with(&format!("{guard} {} -- ", child.id()));
    assert_eq!(
        guards.len(),
        1,
        "expected one `{guard}` process: {guards:?}"
    );
    child.kill().unwrap(); // SIGKILL: no cleanup code runs in the engine
    child.wait().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || processes_with(&token).is_empty()),
        "survived the engine: {:?}",
        processes_with(&token)
    );
}

#[test]
fn output_is_captured_bounded_with_its_tail_in_the_journal() {
    let sb = Sandbox::new();
    let plan = sb.plan(
        "p.toml",
        r#"
name = "chatty"
[steps.talk]
kind = "process"
with = { program = "sh", args = ["-c", "i=0; while [ $i -lt 20000 ]; do echo line-$i-................................................; i=$((i+1)); done; echo LAST-LINE"] }
"#,
    );
    let r = sb.run(&["run", plan.to_str().unwrap()]);
    r.expect(0);
    let events = sb.events(&r.run_id());
    let tail = events
        .iter()
        .find_map(|e| match &e.event {
            upshift_journal::Event::StepSucceeded { output_tail, .. } => Some(output_tail.clone()),
            _ => None,
        })
        .unwrap();
    assert!(
        tail.len() <= upshift::engine::OUTPUT_TAIL_BYTES,
        "{}",
        tail.len()
    );
    assert!(tail.trim_end().ends_with("LAST-LINE"));
    assert!(
        !tail.contains("line-0-"),
        "the head is dropped, the tail kept"
    );
}
