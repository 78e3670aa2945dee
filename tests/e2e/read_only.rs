//! Read-only commands never write: `status`, `log`, `runs`, `export`,
//! `report`, `replay`, `diff` leave every byte of the journal folder as it
//! was (and take no lock), with no engine, beside a live engine, and after
//! an engine was SIGKILLed (a journal file that needs a recovery).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::support::{Sandbox, wait_until};

/// Every file and folder below `dir`: relative path → sha256 of the
/// content (folders: "dir").
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            if p.is_dir() {
                out.insert(rel, "dir".into());
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                out.insert(rel, hex::encode(Sha256::digest(&bytes)));
            }
        }
    }
    out
}

/// Runs every read-only command against `run` and asserts after each that
/// the journal folder is byte for byte what it was.
fn assert_each_leaves_the_journal_alone(sb: &Sandbox, run: &str, follow: bool) {
    let before = snapshot(&sb.journal());
    assert!(before.contains_key("journal.redb"), "{before:?}");
    let out = sb.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let export = out.join("r.export");
    let report = out.join("r.html");
    let (e, r) = (export.to_str().unwrap(), report.to_str().unwrap());
    let mut commands: Vec<Vec<&str>> = vec![
        vec!["status", run],
        vec!["status", run, "--json"],
        vec!["status"],
        vec!["runs"],
        vec!["log", run],
        vec!["export", run, "-o", e],
        vec!["report", run, "-o", r],
        vec!["replay", run],
        vec!["replay", run, "--explain"],
        vec!["diff", run, run],
    ];
    if follow {
        commands.push(vec!["log", run, "--follow"]);
    }
    if follow {
        // `status --follow` on a run no engine works on waits for one: it
        // reads while it waits, and is stopped here.
        let mut c = sb
            .cmd(&["status", run, "--follow"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let ended = wait_until(Duration::from_secs(3), || c.try_wait().unwrap().is_some());
        if !ended {
            c.kill().unwrap();
        }
        c.wait().unwrap();
        assert_eq!(
            before,
            snapshot(&sb.journal()),
            "status --follow changed the journal folder"
        );
    }
    for args in commands {
        let r = sb.run(&args);
        assert!(
            matches!(r.code, Some(0 | 3 | 130)),
            "upshift {args:?} failed: {r:?}"
        );
        let after = snapshot(&sb.journal());
        assert_eq!(before, after, "upshift {args:?} changed the journal folder");
    }
}

/// `first`, then `slow` (60 s: an engine idle in a step).
const SLOW_PLAN: &str = r#"name = "read only"
[steps]
first = { kind = "process", with = { program = "true" } }
slow = { kind = "process", needs = ["first"], with = { program = "sleep", args = ["60"] } }
"#;

#[test]
fn read_only_commands_change_no_byte_of_the_journal_without_with_and_after_an_engine() {
    let sb = Sandbox::new();
    // No engine: a finished run.
    let done = sb.plan("done.toml", &SLOW_PLAN.replace("\"60\"", "\"0\""));
    let r = sb.run(&["run", done.to_str().unwrap()]);
    r.expect(0);
    assert_each_leaves_the_journal_alone(&sb, &r.run_id(), true);

    // A live engine, idle in a slow step (it writes nothing meanwhile).
    let slow = sb.plan("slow.toml", SLOW_PLAN);
    let (mut engine, run) = sb.spawn_run(&slow);
    assert!(
        sb.wait_for_step(&run, "slow", "running"),
        "the slow step never started"
    );
    // Let the engine finish writing the start (run log, commit).
    std::thread::sleep(Duration::from_millis(500));
    assert_each_leaves_the_journal_alone(&sb, &run, false);
    assert!(
        engine.try_wait().unwrap().is_none(),
        "the engine still runs beside the readers"
    );
    let st = sb.status(&run);
    assert_eq!(st["state"], "running", "{st}");

    // SIGKILL: the journal file was not closed and needs a recovery, which
    // only a writer does; readers read a recovered private copy.
    engine.kill().unwrap();
    engine.wait().unwrap();
    assert!(wait_until(Duration::from_secs(10), || sb
        .run(&["status", &run, "--json"])
        .stdout
        .contains("\"interrupted\"")));
    assert_each_leaves_the_journal_alone(&sb, &run, true);
    // A writer recovers it (here: journaling an abort).
    sb.run(&["abort", &run, "--reason", "test over"]).expect(1);
    assert_eq!(sb.status(&run)["state"], "aborted");
}
