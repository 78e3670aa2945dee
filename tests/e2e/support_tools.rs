//! Support diagnosis with the real binary: export → import → replay
//! identically, secrets refused, damage refused, `replay --explain` after a
//! SIGKILL, the HTML report in headless Chromium, `diff`, `status/log
//! --follow` beside a live engine, and the fixture journals of earlier
//! versions.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use upshift::support::replay::state_at;
use upshift_journal::{Envelope, Journal, RunId};

use crate::support::{Sandbox, wait_until};

/// A run with a bit of everything: parallel branches, a foreach with
/// checkpoints, outputs, a failure with a retry, a pause, an operator
/// retry after a fix, a manual approval, and a resume.
const STORY_PLAN: &str = r#"
name = "support story"
[vars]
site = "zurich-lab"

[steps.prepare]
kind = "process"
with = { program = "sh", args = ["-c", "echo prepared; echo note >&2"] }

[steps.loop]
kind = "foreach"
needs = ["prepare"]
with = { items = ["conf-1", "conf-2", "conf-3", "conf-4"], program = "sh", args = ["-c", "echo ${item}"] }

[steps.flaky]
kind = "process"
needs = ["prepare"]
retry = { attempts = 2, backoff = "10ms" }
with = { program = "sh", args = ["-c", "echo trying; test -e @M@/fixed || { echo 'cannot reach sql01' >&2; exit 4; }"] }

[steps.bind]
kind = "manual"
needs = ["flaky"]
with = { instructions = "bind the HTTPS certificate in IIS" }

[steps.finish]
kind = "process"
needs = ["loop", "bind"]
compensate = { kind = "process", with = { program = "true" } }
with = { program = "sh", args = ["-c", "echo done"] }
"#;

/// Runs STORY_PLAN to success through a pause, a retry and an approval.
fn story(sb: &Sandbox) -> String {
    let plan = sb.plan("story.toml", STORY_PLAN);
    let r = sb.run(&["run", plan.to_str().unwrap()]);
    r.expect(3);
    let run = r.run_id();
    std::fs::write(sb.markers().join("fixed"), "").unwrap();
    sb.run(&["retry", &run, "flaky", "--reason", "opened the firewall"])
        .expect(0);
    sb.run(&["resume", &run]).expect(3); // now waits for `bind`
    sb.run(&["approve", &run, "bind", "--reason", "bound by jd"])
        .expect(0);
    sb.run(&["resume", &run]).expect(0);
    run
}

fn state_json(events: &[Envelope], seq: u64) -> String {
    serde_json::to_string(&state_at(events, seq).expect("seq in range")).unwrap()
}

#[test]
fn an_exported_run_replays_identically_after_import_on_another_journal() {
    let sb = Sandbox::new();
    let run = story(&sb);
    let original = sb.events(&run);
    assert!(original.len() > 20, "a long enough story");
    let file = sb.path().join("case.export");
    let r = sb.run(&["export", &run, "-o", file.to_str().unwrap()]);
    r.expect(0);
    assert_eq!(r.stdout.trim(), file.to_str().unwrap());
    // "Another machine": a fresh journal that never saw the run, and the
    // export file read without any journal.
    let other = sb.path().join("support-journal");
    sb.run(&[
        "import",
        file.to_str().unwrap(),
        "--journal",
        other.to_str().unwrap(),
    ])
    .expect(0);
    let imported = Journal::open_read_only(&other)
        .unwrap()
        .read_run(run.parse::<RunId>().unwrap())
        .unwrap();
    let (manifest, from_file) = upshift::support::export::read_file(&file).unwrap();
    assert_eq!(manifest.run, run);
    assert_eq!(manifest.plan_name, "support story");
    assert!(manifest.plan_text.contains("[steps.flaky]"));
    assert_eq!(
        manifest.fingerprint.upshift_version,
        env!("CARGO_PKG_VERSION")
    );
    assert!(manifest.fingerprint.step_kinds.contains_key("foreach"));
    assert!(!manifest.fingerprint.hosts.is_empty());
    assert_eq!(imported.len(), original.len());
    assert_eq!(from_file.len(), original.len());
    for seq in 0..original.len() as u64 {
        let want = state_json(&original, seq);
        assert_eq!(
            want,
            state_json(&imported, seq),
            "imported journal, seq {seq}"
        );
        assert_eq!(want, state_json(&from_file, seq), "export file, seq {seq}");
    }
    // And through the binary: the file and the journal give the same
    // answer at every event.
    let j = other.to_str().unwrap();
    for seq in 0..original.len() as u64 {
        let s = seq.to_string();
        let a = sb.run(&["replay", file.to_str().unwrap(), "--at", &s, "--json"]);
        let b = sb.run(&["replay", &run, "--at", &s, "--json", "--journal", j]);
        a.expect(0);
        b.expect(0);
        assert_eq!(a.stdout, b.stdout, "replay --at {seq}");
    }
    // Spot-check one point in words: right after the foreach's second
    // checkpoint, the loop is running with 2/4 done and its checkpoint.
    let seq = original
        .iter()
        .filter(|e| matches!(&e.event, upshift_journal::Event::StepCheckpoint { step, .. } if step == "loop"))
        .nth(1)
        .unwrap()
        .seq;
    let r = sb.run(&["replay", file.to_str().unwrap(), "--at", &seq.to_string()]);
    r.expect(0);
    assert!(r.stdout.contains("loop"), "{}", r.stdout);
    assert!(r.stdout.contains(" 2/4"), "{}", r.stdout);
    assert!(r.stdout.contains("checkpoint"), "{}", r.stdout);
    // The full replay tells the whole story and ends succeeded.
    let r = sb.run(&["replay", file.to_str().unwrap()]);
    r.expect(0);
    assert!(
        r.stdout.contains("operator.decision retry flaky"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("state  succeeded"), "{}", r.stdout);
    // Importing the same file again changes nothing.
    sb.run(&["import", file.to_str().unwrap(), "--journal", j])
        .expect(0);
    assert_eq!(
        Journal::open_read_only(&other)
            .unwrap()
            .read_run(run.parse().unwrap())
            .unwrap()
            .len(),
        original.len()
    );
}

#[test]
fn export_refuses_a_secret_value_and_names_the_event() {
    let sb = Sandbox::new();
    // The step prints a value the engine does not know as a secret (the
    // run's secret is another one); at export time, the environment holds
    // that printed value as the secret: the export must refuse.
    let plan = sb.plan(
        "p.toml",
        r#"
name = "secrets"
[secrets]
pw = { env = "UPSHIFT_TEST_EXPORT_PW" }
[steps.a]
kind = "process"
with = { program = "sh", args = ["-c", "echo connecting with ${secrets.pw}; echo old password was $(cat @M@/legacy)"] }
"#,
    );
    std::fs::write(sb.markers().join("legacy"), "Legacy-Pw-4711\n").unwrap();
    let r = sb.run_env(
        &["run", plan.to_str().unwrap()],
        &[("UPSHIFT_TEST_EXPORT_PW", "Current-Pw-0815")],
    );
    r.expect(0);
    let run = r.run_id();
    let out = sb.path().join("x.export");
    let seq = sb
        .events(&run)
        .iter()
        .find(|e| matches!(e.event, upshift_journal::Event::StepSucceeded { .. }))
        .unwrap()
        .seq;
    let refused = sb.run_env(
        &["export", &run, "-o", out.to_str().unwrap()],
        &[("UPSHIFT_TEST_EXPORT_PW", "Legacy-Pw-4711")],
    );
    refused.expect(1);
    assert!(
        refused
            .stderr
            .contains(&format!("event seq {seq} (step.succeeded of step a)")),
        "{}",
        refused.stderr
    );
    assert!(
        refused
            .stderr
            .contains("secret pw (env UPSHIFT_TEST_EXPORT_PW)")
    );
    assert!(
        !refused.stderr.contains("Legacy-Pw-4711"),
        "the error must not print the value"
    );
    assert!(!out.exists(), "nothing written");
    // With the run's real secret (redacted by the engine) the export is fine.
    sb.run_env(
        &["export", &run, "-o", out.to_str().unwrap()],
        &[("UPSHIFT_TEST_EXPORT_PW", "Current-Pw-0815")],
    )
    .expect(0);
    let bytes = std::fs::read(&out).unwrap();
    let mut text = Vec::new();
    decoded_bytes(&out, &mut text);
    assert!(!text.windows(15).any(|w| w == b"Current-Pw-0815"));
    assert!(!bytes.is_empty());
    // Unset: export works and says it could not check.
    let r = sb.run(&["export", &run, "-o", out.to_str().unwrap()]);
    r.expect(0);
    assert!(r.stderr.contains("cannot be read here"), "{}", r.stderr);
}

/// The inflated payload of an export, via the library's reader (which
/// verifies it) re-encoded: every event's text.
fn decoded_bytes(file: &Path, out: &mut Vec<u8>) {
    let (m, events) = upshift::support::export::read_file(file).unwrap();
    out.extend(serde_json::to_vec(&m).unwrap());
    for e in events {
        out.extend(upshift_journal::codec::encode(&e).unwrap());
    }
}

#[test]
fn a_damaged_or_truncated_export_is_refused() {
    let sb = Sandbox::new();
    let run = story(&sb);
    let file = sb.path().join("case.export");
    sb.run(&["export", &run, "-o", file.to_str().unwrap()])
        .expect(0);
    let good = std::fs::read(&file).unwrap();
    let mut flipped = good.clone();
    let n = flipped.len();
    flipped[n / 2 + 40] ^= 0x10;
    let bad = sb.path().join("bad.export");
    std::fs::write(&bad, &flipped).unwrap();
    let r = sb.run(&["replay", bad.to_str().unwrap()]);
    r.expect(1);
    assert!(
        r.stderr.contains("not a valid upshift export"),
        "{}",
        r.stderr
    );
    std::fs::write(&bad, &good[..good.len() - 20]).unwrap();
    let r = sb.run(&[
        "import",
        bad.to_str().unwrap(),
        "--journal",
        sb.path().join("j2").to_str().unwrap(),
    ]);
    r.expect(1);
    assert!(
        r.stderr.contains("not a valid upshift export"),
        "{}",
        r.stderr
    );
    assert!(
        !sb.path().join("j2").join("journal.redb").exists(),
        "nothing imported"
    );
}

/// A foreach whose third item blocks until the `go` marker exists.
const BLOCKING_PLAN: &str = r#"
name = "blocking"
[steps.first]
kind = "process"
with = { program = "true" }
compensate = { kind = "process", with = { program = "true" } }
[steps.loop]
kind = "foreach"
needs = ["first"]
with = { items = ["i0", "i1", "i2", "i3"], program = "sh", args = ["-c", "[ ${item} != i2 ] || while [ ! -e @M@/go ]; do sleep 0.02; done; echo ${item} >> @M@/loop"] }
[steps.side]
kind = "process"
needs = ["first"]
with = { program = "true" }
[steps.last]
kind = "process"
needs = ["loop", "side"]
with = { program = "true" }
"#;

fn checkpoints_of(sb: &Sandbox, run: &str, step: &str) -> usize {
    let Ok(j) = Journal::open_read_only(&sb.journal()) else {
        return 0;
    };
    j.read_run(run.parse().unwrap())
        .map(|ev| {
            ev.iter()
                .filter(|e| matches!(&e.event, upshift_journal::Event::StepCheckpoint { step: s, .. } if s == step))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn replay_explain_after_a_sigkill_names_the_checkpoint_the_step_resumes_from() {
    let sb = Sandbox::new();
    let plan = sb.plan("p.toml", BLOCKING_PLAN);
    let (mut child, run) = sb.spawn_run(&plan);
    assert!(
        wait_until(Duration::from_secs(60), || checkpoints_of(
            &sb, &run, "loop"
        ) >= 2),
        "the loop never reached its second checkpoint"
    );
    child.kill().unwrap(); // SIGKILL: no run.interrupted is journaled
    child.wait().unwrap();
    let file = sb.path().join("k.export");
    sb.run(&["export", &run, "-o", file.to_str().unwrap()])
        .expect(0);
    let r = sb.run(&["replay", file.to_str().unwrap(), "--explain"]);
    r.expect(0);
    assert!(
        r.stdout
            .contains("re-run loop (attempt 2) from its checkpoint 2/4"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("not run again (already succeeded): first, side"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("then, if those succeed:\n  last"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("1. first"),
        "rollback compensates first: {}",
        r.stdout
    );
    let j: serde_json::Value = serde_json::from_str(
        &sb.run(&["replay", file.to_str().unwrap(), "--explain", "--json"])
            .stdout,
    )
    .unwrap();
    assert_eq!(j["now"][0]["step"], "loop");
    assert_eq!(j["now"][0]["action"], "rerun");
    // And resume does what was explained.
    std::fs::write(sb.markers().join("go"), "").unwrap();
    let r = sb.run(&["resume", &run]);
    r.expect(0);
    assert!(
        r.stderr.contains("▶ loop (attempt 2, from its checkpoint)"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("▶ side"), "{}", r.stderr);
}

#[test]
fn replay_at_an_unknown_seq_is_a_usage_error() {
    let sb = Sandbox::new();
    let plan = sb.plan(
        "p.toml",
        "name = \"x\"\n[steps.a]\nkind = \"process\"\nwith = { program = \"true\" }\n",
    );
    let r = sb.run(&["run", plan.to_str().unwrap()]);
    r.expect(0);
    let r = sb.run(&["replay", &r.run_id(), "--at", "999"]);
    r.expect(2);
    assert!(
        r.stderr.contains("--at 999: the run has events 0..="),
        "{}",
        r.stderr
    );
    let r = sb.run(&["replay", "nothing-here.export"]);
    r.expect(2);
    assert!(r.stderr.contains("no such export file"), "{}", r.stderr);
}

/// Reads a child's pipe into a shared buffer on a thread.
fn collect(pipe: impl Read + Send + 'static) -> std::sync::Arc<std::sync::Mutex<String>> {
    let buf = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let b = std::sync::Arc::clone(&buf);
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            let mut g = b.lock().unwrap();
            g.push_str(&line);
            g.push('\n');
        }
    });
    buf
}

fn text(buf: &std::sync::Arc<std::sync::Mutex<String>>) -> String {
    buf.lock().unwrap().clone()
}

/// Waits (bounded) for a child to exit; kills it and fails if it does not.
fn exit_of(child: &mut Child, what: &str) -> i32 {
    let done = wait_until(Duration::from_secs(30), || {
        child.try_wait().unwrap().is_some()
    });
    if !done {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what} did not end");
    }
    child.wait().unwrap().code().unwrap_or(-1)
}

fn follower(
    sb: &Sandbox,
    args: &[&str],
) -> (
    Child,
    std::sync::Arc<std::sync::Mutex<String>>,
    std::sync::Arc<std::sync::Mutex<String>>,
) {
    let mut c = sb
        .cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = collect(c.stdout.take().unwrap());
    let err = collect(c.stderr.take().unwrap());
    (c, out, err)
}

#[test]
fn log_and_status_follow_a_live_run_until_it_finishes() {
    let sb = Sandbox::new();
    let plan = sb.plan("p.toml", BLOCKING_PLAN);
    let (mut engine, run) = sb.spawn_run(&plan);
    let (mut log, log_out, log_err) = follower(&sb, &["log", &run, "--follow"]);
    let (mut status, status_out, status_err) = follower(&sb, &["status", &run, "--follow"]);
    // While the engine is blocked in item i2, both followers have shown
    // the loop's second checkpoint and are still following.
    assert!(
        wait_until(Duration::from_secs(60), || text(&log_out)
            .contains("step.checkpoint loop 2/4")),
        "log --follow did not stream the checkpoint: {}{}",
        text(&log_out),
        text(&log_err)
    );
    assert!(
        wait_until(Duration::from_secs(60), || text(&status_err)
            .contains("loop running 2/4")),
        "status --follow did not show the progress: {}",
        text(&status_err)
    );
    assert!(
        log.try_wait().unwrap().is_none(),
        "log --follow ended early"
    );
    assert!(
        status.try_wait().unwrap().is_none(),
        "status --follow ended early"
    );
    assert!(
        engine.try_wait().unwrap().is_none(),
        "the run is still in progress"
    );
    std::fs::write(sb.markers().join("go"), "").unwrap();
    assert_eq!(exit_of(&mut engine, "the run"), 0);
    assert_eq!(exit_of(&mut log, "log --follow"), 0, "{}", text(&log_err));
    assert_eq!(
        exit_of(&mut status, "status --follow"),
        0,
        "{}",
        text(&status_err)
    );
    // log --follow printed exactly what `upshift log` prints afterwards.
    let full = sb.run(&["log", &run]);
    full.expect(0);
    assert!(wait_until(Duration::from_secs(5), || text(&log_out) == full.stdout));
    assert!(full.stdout.contains("run.finished succeeded"));
    assert!(
        text(&log_err).contains("succeeded — end of follow"),
        "{}",
        text(&log_err)
    );
    let st = text(&status_out);
    assert!(st.contains("state succeeded"), "{st}");
    assert!(st.contains("loop") && st.contains("4/4"), "{st}");
    let lines = text(&status_err);
    assert!(lines.contains("loop succeeded 4/4"), "{lines}");
    assert!(lines.contains("last succeeded"), "{lines}");
}

/// `script` (util-linux) gives the follower a terminal, so the progress
/// bars are drawn; skipped where it is missing.
#[test]
fn status_follow_draws_progress_bars_on_a_terminal() {
    let Some(script) = crate::support::script_or_skip("the progress bars on a terminal") else {
        return;
    };
    let sb = Sandbox::new();
    let plan = sb.plan("p.toml", BLOCKING_PLAN);
    let (mut engine, run) = sb.spawn_run(&plan);
    let mut term = sb.follow_on_a_terminal(script, &run, 120, 40);
    // A bar for the loop at 2 of 4, drawn while the run is blocked.
    assert!(
        wait_until(Duration::from_secs(60), || {
            let t = term.text();
            t.contains("loop") && t.contains("2/4") && t.contains("[==========")
        }),
        "no progress bar: {:?}",
        term.text()
    );
    assert!(
        engine.try_wait().unwrap().is_none(),
        "the run is still in progress"
    );
    std::fs::write(sb.markers().join("go"), "").unwrap();
    assert_eq!(exit_of(&mut engine, "the run"), 0);
    assert_eq!(exit_of(&mut term.child, "status --follow on a terminal"), 0);
    assert!(term.text().contains("state succeeded"), "{}", term.text());
}

#[test]
fn log_follow_ends_when_the_engine_is_killed() {
    let sb = Sandbox::new();
    let plan = sb.plan("p.toml", BLOCKING_PLAN);
    let (mut engine, run) = sb.spawn_run(&plan);
    let (mut log, log_out, log_err) = follower(&sb, &["log", &run, "-f"]);
    assert!(
        wait_until(Duration::from_secs(60), || text(&log_out)
            .contains("step.checkpoint loop 2/4")),
        "log --follow did not stream the checkpoint (exited: {:?}): {}{}",
        log.try_wait().unwrap(),
        text(&log_out),
        text(&log_err)
    );
    assert!(log.try_wait().unwrap().is_none());
    engine.kill().unwrap(); // SIGKILL: no closing event
    engine.wait().unwrap();
    assert_eq!(exit_of(&mut log, "log --follow"), 0);
    assert!(
        text(&log_err).contains(&format!(
            "interrupted (no engine works on it; `upshift resume {run} --journal {}` continues)",
            sb.journal().display()
        )),
        "{}",
        text(&log_err)
    );
    // status --follow started on a run nobody works on waits for an
    // engine (it said how to start one), then follows the resumed run to
    // its end.
    let (mut status, status_out, status_err) = follower(&sb, &["status", &run, "--follow"]);
    let journal = sb.journal().display().to_string();
    assert!(
        wait_until(Duration::from_secs(20), || text(&status_err)
            .contains(&format!("upshift resume {run} --journal {journal}"))),
        "{}",
        text(&status_err)
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        status.try_wait().unwrap().is_none(),
        "status --follow ended before the run was resumed: {}",
        text(&status_err)
    );
    std::fs::write(sb.markers().join("go"), "").unwrap();
    sb.run(&["resume", &run]).expect(0);
    assert_eq!(
        exit_of(&mut status, "status --follow"),
        0,
        "{}",
        text(&status_err)
    );
    // (The reader threads may lag the exit by a moment.)
    assert!(
        wait_until(Duration::from_secs(5), || text(&status_out)
            .contains("state succeeded")),
        "{}",
        text(&status_out)
    );
    assert!(
        // (the engine took it up, or already ended it, before the next look)
        wait_until(Duration::from_secs(5), || text(&status_err)
            .contains(" — following")),
        "the resume is shown: {}",
        text(&status_err)
    );
}

/// (Needs the `sled` feature: `cargo test --all-features`.)
#[cfg(feature = "sled")]
#[test]
fn following_a_live_sled_journal_says_why_it_cannot() {
    let sb = Sandbox::new();
    let plan = sb.plan("p.toml", BLOCKING_PLAN);
    let mut engine = sb
        .cmd(&["run", plan.to_str().unwrap()])
        .env("UPSHIFT_JOURNAL_BACKEND", "sled")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(engine.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(sb.journal().join("journal.sled").exists(), "a sled journal");
    let r = sb.run(&["log", line.trim(), "--follow"]);
    std::fs::write(sb.markers().join("go"), "").unwrap();
    let code = exit_of(&mut engine, "the run");
    r.expect(1);
    assert!(r.stderr.contains("sled backend"), "{}", r.stderr);
    assert!(r.stderr.contains("redb"), "{}", r.stderr);
    assert_eq!(code, 0);
}

fn chromium() -> Option<PathBuf> {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Runs headless Chromium on a file with `extra` args (bounded wait);
/// returns stdout.
fn headless(chrome: &Path, tmp: &Path, file: &Path, extra: &[&str]) -> String {
    let profile = tmp.join(format!("chrome-profile-{}", extra.len()));
    let mut c = std::process::Command::new(chrome)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", file.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = collect(c.stdout.take().unwrap());
    let done = wait_until(Duration::from_secs(120), || c.try_wait().unwrap().is_some());
    if !done {
        let _ = c.kill();
        let _ = c.wait();
        panic!("chromium did not finish rendering {}", file.display());
    }
    // The reader thread may lag the exit by a moment.
    let mut last = 0;
    wait_until(Duration::from_secs(5), || {
        let n = text(&out).len();
        let settled = n == last && n > 0;
        last = n;
        settled
    });
    text(&out)
}

fn preflight_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preflight/findings.json")
}

/// `upshift report --preflight FILE.json` adds a Preflight section: the
/// verdict, each finding with step, host, found, expected and fix (text
/// escaped, never markup), the counts; without the flag there is none; a
/// file that is not preflight's JSON is refused with file:line:col.
#[test]
fn the_report_gains_a_preflight_section_from_preflight_json() {
    let sb = Sandbox::new();
    let plan = sb.plan(
        "hello.toml",
        "name = \"hello\"\n[steps.a]\nkind = \"sleep\"\nwith = { duration = \"0s\" }\n",
    );
    let r = sb.run(&["run", plan.to_str().unwrap()]);
    r.expect(0);
    let run = r.run_id();
    let out = sb.path().join("report.html");
    let fixture = preflight_fixture();
    sb.run(&[
        "report",
        &run,
        "-o",
        out.to_str().unwrap(),
        "--preflight",
        fixture.to_str().unwrap(),
    ])
    .expect(0);
    let html = std::fs::read_to_string(&out).unwrap();
    let section = html
        .split("<section id=\"preflight\">")
        .nth(1)
        .expect("a preflight section")
        .split("</section>")
        .next()
        .unwrap();
    assert!(section.contains("<h2>Preflight</h2>"));
    assert!(
        section.contains("<b>Not ready</b>: 2 finding(s)."),
        "{section}"
    );
    assert!(section.contains("4 check(s) in 412 ms: 1 ok, 2 finding(s), 1 not checked"));
    // The finding: step, host, found (escaped), expected, fix.
    let row = section
        .split("<tr class=\"pf-finding\">")
        .nth(1)
        .unwrap()
        .split("</tr>")
        .next()
        .unwrap();
    for cell in [
        "ac_install",
        "lyncfe01",
        "no package at D:\\TM\\TM-AC.msi &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;",
        "the .msi the plan installs",
        "copy the package there &amp; run preflight again",
    ] {
        assert!(row.contains(cell), "{cell:?} not in {row}");
    }
    assert!(
        !html.contains("<script>alert"),
        "finding text became markup"
    );
    assert!(section.contains("db_backup (also db_restore)"));
    // Without the flag: no section.
    let plain = sb.path().join("plain.html");
    sb.run(&["report", &run, "-o", plain.to_str().unwrap()])
        .expect(0);
    assert!(
        !std::fs::read_to_string(&plain)
            .unwrap()
            .contains("id=\"preflight\"")
    );
    // Not preflight's JSON: refused, located.
    let bad = sb.path().join("bad.json");
    std::fs::write(&bad, "{\n  \"plan\": \"x\",\n  \"ready\": maybe\n}\n").unwrap();
    let r = sb.run(&[
        "report",
        &run,
        "-o",
        plain.to_str().unwrap(),
        "--preflight",
        bad.to_str().unwrap(),
    ]);
    r.expect(2);
    assert!(
        r.stderr.contains(&format!("{}:3:", bad.display())),
        "names file:line:col: {}",
        r.stderr
    );
}

#[test]
fn the_html_report_renders_in_headless_chromium_with_every_step() {
    let sb = Sandbox::new();
    let run = story(&sb);
    let file = sb.path().join("case.export");
    sb.run(&["export", &run, "-o", file.to_str().unwrap()])
        .expect(0);
    let html_path = sb.path().join("report.html");
    sb.run(&[
        "report",
        file.to_str().unwrap(),
        "-o",
        html_path.to_str().unwrap(),
    ])
    .expect(0);
    let html = std::fs::read_to_string(&html_path).unwrap();
    // Self-contained: nothing is loaded from anywhere.
    for external in ["<link", " src=", "@import", "url(http", "fetch("] {
        assert!(!html.contains(external), "report references {external}");
    }
    // Written from the journal too, it says the same about the steps.
    let from_journal = sb.path().join("r2.html");
    sb.run(&["report", &run, "-o", from_journal.to_str().unwrap()])
        .expect(0);
    // With the preflight printed before the window: one more section.
    let with_pf = sb.path().join("r3.html");
    sb.run(&[
        "report",
        file.to_str().unwrap(),
        "-o",
        with_pf.to_str().unwrap(),
        "--preflight",
        preflight_fixture().to_str().unwrap(),
    ])
    .expect(0);
    let Some(chrome) = chromium() else {
        eprintln!(
            "skipping the Chromium check: chromium is not installed (apt-get install -y chromium)"
        );
        return;
    };
    let dom = headless(&chrome, sb.path(), &html_path, &["--dump-dom"]);
    assert!(
        dom.contains("data-ready=\"1\""),
        "the script did not run:\n{dom}"
    );
    let steps = ["prepare", "loop", "flaky", "bind", "finish"];
    for s in steps {
        assert!(
            dom.contains(&format!("class=\"gantt-row\" data-step=\"{s}\"")),
            "no timeline row for {s}"
        );
        // (The script adds a style attribute to clickable elements.)
        assert!(
            dom.split("<tr class=\"step-row")
                .skip(1)
                .any(|row| row.contains(&format!("data-step=\"{s}\""))
                    && row.contains(&format!("<td>{s}</td>"))),
            "no summary row for {s}"
        );
        assert!(
            dom.contains(&format!("<g class=\"node s-ok\" data-step=\"{s}\"")),
            "no graph node for {s}"
        );
    }
    assert_eq!(dom.matches("<tr class=\"step-row").count(), steps.len());
    // The event list was rendered by the script, one row per event.
    let events = sb.events(&run).len();
    assert_eq!(
        dom.matches("<tr class=\"ev").count(),
        events.min(200),
        "event rows"
    );
    assert!(dom.contains("retry flaky"), "the decision is in the header");
    assert!(
        dom.contains("cannot reach sql01"),
        "the failure's output tail is shown"
    );
    assert!(dom.contains("zurich-lab"), "the site");
    // The report with a preflight section renders, with the section.
    let dom = headless(&chrome, sb.path(), &with_pf, &["--dump-dom"]);
    assert!(
        dom.contains("data-ready=\"1\""),
        "the script did not run with the preflight section:\n{dom}"
    );
    assert!(dom.contains("<section id=\"preflight\"><h2>Preflight</h2>"));
    assert_eq!(dom.matches("<tr class=\"pf-finding\">").count(), 2);
    assert!(!dom.contains("<script>alert"), "finding text became markup");
    assert_eq!(dom.matches("<tr class=\"step-row").count(), steps.len());
    let shot = sb.path().join("report.png");
    headless(
        &chrome,
        sb.path(),
        &html_path,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1400,1000",
        ],
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert_eq!(&png[..4], b"\x89PNG");
}

#[test]
fn a_report_of_100k_events_stays_small_and_renders_paged() {
    let sb = Sandbox::new();
    let run = RunId::new();
    let plan = "name = \"big\"\n[steps.loop]\nkind = \"foreach\"\nwith = { items_file = \"/nonexistent\", program = \"true\" }\n[steps.after]\nkind = \"process\"\nneeds = [\"loop\"]\nwith = { program = \"true\" }\n";
    {
        let mut j = Journal::open(&sb.journal()).unwrap();
        let t0 = chrono::Utc::now();
        let mut seq = 0u64;
        let mut batch = Vec::new();
        let mut push = |event, batch: &mut Vec<Envelope>, j: &mut Journal| {
            batch.push(Envelope {
                run,
                seq,
                time: t0 + chrono::Duration::milliseconds(seq as i64 * 20),
                event,
            });
            seq += 1;
            if batch.len() == 5000 {
                j.append(batch).unwrap();
                batch.clear();
            }
        };
        use upshift_journal::Event;
        push(
            Event::RunStarted {
                plan_name: "big".into(),
                plan_path: "/big.toml".into(),
                plan_text: plan.into(),
                plan_hash: "0".into(),
                vars: Default::default(),
                engine_version: "0.1.0".into(),
                actor: Default::default(),
            },
            &mut batch,
            &mut j,
        );
        push(
            Event::StepStarted {
                step: "loop".into(),
                attempt: 1,
                resumed_from_checkpoint: false,
            },
            &mut batch,
            &mut j,
        );
        let n = 100_000u64;
        for i in 0..n {
            let ev = if i % 2 == 0 {
                Event::StepCheckpoint {
                    step: "loop".into(),
                    data: format!("done={i}").into_bytes(),
                    done: i + 1,
                    total: n,
                }
            } else if i % 200 == 1 {
                // Events that are never summarised: a few hundred notes,
                // so the list has more than one page.
                Event::Note {
                    text: format!("conference {i} took longer than usual"),
                }
            } else {
                Event::StepProgress {
                    step: "loop".into(),
                    done: i + 1,
                    total: n,
                    message: format!("conference {i}"),
                }
            };
            push(ev, &mut batch, &mut j);
        }
        push(
            Event::StepSucceeded {
                step: "loop".into(),
                attempt: 1,
                outputs: Default::default(),
                output_tail: String::new(),
                reboot_required: false,
            },
            &mut batch,
            &mut j,
        );
        push(
            Event::StepStarted {
                step: "after".into(),
                attempt: 1,
                resumed_from_checkpoint: false,
            },
            &mut batch,
            &mut j,
        );
        push(
            Event::StepSucceeded {
                step: "after".into(),
                attempt: 1,
                outputs: Default::default(),
                output_tail: String::new(),
                reboot_required: false,
            },
            &mut batch,
            &mut j,
        );
        push(
            Event::RunFinished {
                outcome: upshift_journal::Outcome::Succeeded,
            },
            &mut batch,
            &mut j,
        );
        j.append(&batch).unwrap();
    }
    let html_path = sb.path().join("big.html");
    let r = sb.run(&[
        "report",
        &run.to_string(),
        "-o",
        html_path.to_str().unwrap(),
    ]);
    r.expect(0);
    let html = std::fs::read_to_string(&html_path).unwrap();
    assert!(
        html.len() < 1_000_000,
        "report of 100k events is {} bytes",
        html.len()
    );
    assert!(
        html.contains("50000 step.checkpoint, 49500 step.progress"),
        "per-step counts in the summary table"
    );
    let Some(chrome) = chromium() else {
        eprintln!(
            "skipping the Chromium check: chromium is not installed (apt-get install -y chromium)"
        );
        return;
    };
    let dom = headless(&chrome, sb.path(), &html_path, &["--dump-dom"]);
    assert!(dom.contains("data-ready=\"1\""), "the script did not run");
    assert_eq!(
        dom.matches("<tr class=\"ev").count(),
        200,
        "one page of rows"
    );
    assert!(dom.contains("100006 events in the run"), "the count line");
    // 2 × 25 checkpoints and progress events, their 2 summary rows, 500
    // notes and 6 other events: 608 rows, in 4 pages.
    assert!(dom.contains("608 of 608 rows shown"), "the rows line");
    assert!(dom.contains("page 1 / 4"), "paged");
    assert!(dom.contains("summarised (seq"), "the summary row is listed");
}

#[test]
fn diff_shows_the_steps_that_differed_between_two_runs() {
    let sb = Sandbox::new();
    let bumpy = story(&sb); // flaky failed twice, then an operator retry
    // A smooth run of the same plan: the fix is in place from the start.
    let plan = sb.plan("story.toml", STORY_PLAN);
    let r = sb.run(&["run", plan.to_str().unwrap()]);
    r.expect(3);
    let smooth = r.run_id();
    sb.run(&["approve", &smooth, "bind"]).expect(0);
    sb.run(&["resume", &smooth]).expect(0);
    let file = sb.path().join("bumpy.export");
    sb.run(&["export", &bumpy, "-o", file.to_str().unwrap()])
        .expect(0);
    let d = sb.run(&["diff", file.to_str().unwrap(), &smooth]);
    d.expect(0);
    let flaky = d
        .stdout
        .lines()
        .find(|l| l.contains(" flaky "))
        .unwrap_or_else(|| panic!("{}", d.stdout));
    assert!(flaky.starts_with('*'), "{}", d.stdout);
    assert!(flaky.contains("succeeded ×3"), "{}", d.stdout);
    assert!(flaky.contains("succeeded ×1"), "{}", d.stdout);
    let loop_line = d.stdout.lines().find(|l| l.contains(" loop ")).unwrap();
    assert!(loop_line.starts_with(' '), "{}", d.stdout);
    assert!(d.stdout.contains("1 step(s) differ"), "{}", d.stdout);
    let j: serde_json::Value =
        serde_json::from_str(&sb.run(&["diff", &bumpy, &smooth, "--json"]).stdout).unwrap();
    assert_eq!(j["same_plan"], true);
    let steps = j["steps"].as_array().unwrap();
    let f = steps.iter().find(|s| s["step"] == "flaky").unwrap();
    assert_eq!(f["differs"], true);
    assert_eq!(f["a"]["attempts"], 3);
    assert_eq!(f["b"]["attempts"], 1);
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn fixture_journals_and_exports_of_v1_still_load_with_the_same_state() {
    let dir = fixtures().join("v1");
    let sb = Sandbox::new();
    // Never open the committed file itself: a reader may repair.
    let journal = sb.path().join("fixture-journal");
    copy_dir(&dir.join("journal"), &journal);
    let mut checked = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(run) = name
            .strip_prefix("expected-")
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(e.path()).unwrap()).unwrap();
        let from_journal = sb.run(&[
            "status",
            run,
            "--json",
            "--journal",
            journal.to_str().unwrap(),
        ]);
        from_journal.expect(0);
        let got: serde_json::Value = serde_json::from_str(&from_journal.stdout).unwrap();
        assert_eq!(got, expected, "fixture journal, run {run}");
        // The export: imported into a fresh journal, same state; and its
        // events equal the journal's, seq by seq.
        let export = dir.join(format!("{run}.export"));
        let fresh = sb.path().join(format!("imported-{run}"));
        sb.run(&[
            "import",
            export.to_str().unwrap(),
            "--journal",
            fresh.to_str().unwrap(),
        ])
        .expect(0);
        let imported = sb.run(&[
            "status",
            run,
            "--json",
            "--journal",
            fresh.to_str().unwrap(),
        ]);
        imported.expect(0);
        let got: serde_json::Value = serde_json::from_str(&imported.stdout).unwrap();
        assert_eq!(got, expected, "fixture export, run {run}");
        let a = Journal::open_read_only(&journal)
            .unwrap()
            .read_run(run.parse().unwrap())
            .unwrap();
        let (_, b) = upshift::support::export::read_file(&export).unwrap();
        assert_eq!(a.len(), b.len());
        for seq in 0..a.len() as u64 {
            assert_eq!(
                state_json(&a, seq),
                state_json(&b, seq),
                "run {run} seq {seq}"
            );
        }
        // replay --explain still works on it.
        sb.run(&["replay", export.to_str().unwrap(), "--explain"])
            .expect(0);
        checked += 1;
    }
    assert_eq!(checked, 2, "both fixture runs were checked");
}
