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

/// The parent pid of process `pid` (from /proc/PID/stat; the command name
/// in parentheses may hold spaces, so the fields after the last `)`).
fn parent_of(pid: &str) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1).map(str::to_string)
}

/// The pid of a `processes_with` line (`PID: command line`).
fn pid_of(line: &str) -> &str {
    line.split(':').next().unwrap_or_default()
}

fn children_die_with_a_sigkilled(exe: &std::path::Path, guard: &str) {
    let sb = Sandbox::new();
    let token = format!("upshift-orphan-{}-{}", std::process::id(), guard.len());
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
    // The step's shell and its two sleeping shells (the step reaches the
    // guard over its stdin: no guard's command line holds the token).
    assert!(wait_until(Duration::from_secs(10), || processes_with(
        &token
    )
    .len()
        >= 3));
    // `guard` is how the guards' command lines start, then the engine's
    // pid (`PID --` whole: `1234` alone also matches the guards of another
    // test's engine 12345 running beside this one). Two: the one guarding
    // the step and the idle one started to guard the next.
    let guard_line = format!("{guard} {} --spec-on-stdin", child.id());
    assert!(
        wait_until(Duration::from_secs(10), || processes_with(&guard_line)
            .len()
            == 2),
        "expected two `{guard_line}` processes (one guarding, one idle): {:?}",
        processes_with(&guard_line)
    );
    let guards = processes_with(&guard_line);
    let step = processes_with(&token)
        .into_iter()
        .find(|p| p.contains("echo up"))
        .expect("the step's shell");
    let parent = parent_of(pid_of(&step)).expect("the step's parent");
    assert!(
        guards.iter().any(|g| pid_of(g) == parent),
        "the step's shell ({step}) is not a child of a guard: {guards:?}"
    );
    child.kill().unwrap(); // SIGKILL: no cleanup code runs in the engine
    child.wait().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || processes_with(&token).is_empty()),
        "survived the engine: {:?}",
        processes_with(&token)
    );
    // The idle guard too: it started nothing, and goes with the engine.
    assert!(
        wait_until(Duration::from_secs(5), || processes_with(&guard_line)
            .is_empty()),
        "guards survived the engine: {:?}",
        processes_with(&guard_line)
    );
}

#[test]
fn env_and_cwd_reach_the_child_and_a_secret_in_env_no_command_line() {
    const SECRET: &str = "Gu4rd-S3cret-Passw0rd";
    let sb = Sandbox::new();
    let cwd = sb.path().join("work dir");
    std::fs::create_dir_all(&cwd).unwrap();
    // The child writes the secret rot13'd (so that the marker file holds
    // no secret), the plain variable and its working directory, then
    // waits for the test to look at every command line.
    let plan = sb.plan(
        "p.toml",
        &format!(
            r#"
name = "envcwd"
[secrets]
pw = {{ env = "UPSHIFT_TEST_PW" }}
[steps.env]
kind = "process"
with = {{ program = "sh", args = ["-c", "printf '%s\n' \"$(printf %s \"$PG_SECRET\" | tr a-zA-Z n-za-mN-ZA-M)\" \"$PG_PLAIN\" \"$(pwd)\" > @M@/seen.tmp; mv @M@/seen.tmp @M@/seen; while [ ! -e @M@/looked ]; do sleep 0.05; done"], env = {{ PG_SECRET = "${{secrets.pw}}", PG_PLAIN = "plain value" }}, cwd = "{}" }}
"#,
            cwd.display()
        ),
    );
    let mut run = sb
        .cmd(&["run", plan.to_str().unwrap()])
        .env("UPSHIFT_TEST_PW", SECRET)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let seen = sb.markers().join("seen");
    let started = wait_until(Duration::from_secs(10), || seen.exists());
    // Every process's command line while the step runs: the engine's
    // (it got the secret through its environment), the guards', the
    // child's.
    let on_command_lines = processes_with(SECRET);
    std::fs::write(sb.markers().join("looked"), "").unwrap();
    let status = run.wait().unwrap();
    assert!(started, "the step never ran");
    assert!(
        on_command_lines.is_empty(),
        "the secret is on a command line: {on_command_lines:?}"
    );
    assert!(status.success(), "{status:?}");
    let rot13: String = SECRET
        .chars()
        .map(|c| match c {
            'a'..='z' => (((c as u8 - b'a') + 13) % 26 + b'a') as char,
            'A'..='Z' => (((c as u8 - b'A') + 13) % 26 + b'A') as char,
            _ => c,
        })
        .collect();
    assert_eq!(
        sb.marker_lines("seen"),
        vec![rot13, "plain value".to_string(), cwd.display().to_string()]
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
