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

/// Spawns `upshift run PLAN` and returns the child and its run id.
fn spawn_run(sb: &Sandbox, plan: &Path) -> (Child, String) {
    let mut child = sb
        .cmd(&["run", plan.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line.trim().to_string())
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
    let (mut child, run) = spawn_run(&sb, &plan);
    assert!(
        wait_until(Duration::from_secs(20), || checkpoints_of(
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

#[allow(dead_code)]
fn read_all(mut r: impl Read) -> String {
    let mut s = String::new();
    let _ = r.read_to_string(&mut s);
    s
}

#[allow(dead_code)]
fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}
