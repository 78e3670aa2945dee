//! Read-only commands never write: `status`, `log`, `runs`, `export`,
//! `report`, `replay`, `diff` leave every byte of the journal folder as it
//! was (and take no lock), with no engine, beside a live engine, and after
//! an engine was SIGKILLed (a journal file that needs a recovery).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
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
        commands.push(vec!["status", run, "--follow"]);
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

const SLOW_PLAN: &str = r#"
name = "read only"
[steps.first]
kind = "process"
with = { program = "sh", args = ["-c", "echo first >> @M@/first"] }
[steps.slow]
kind = "process"
needs = ["first"]
with = { program = "sh", args = ["-c", "sleep 60"] }
"#;

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

#[test]
fn read_only_commands_change_no_byte_of_the_journal_without_with_and_after_an_engine() {
    let sb = Sandbox::new();
    // No engine: a finished run.
    let done = sb.plan("done.toml", &SLOW_PLAN.replace("sleep 60", "true"));
    let r = sb.run(&["run", done.to_str().unwrap()]);
    r.expect(0);
    assert_each_leaves_the_journal_alone(&sb, &r.run_id(), true);

    // A live engine, idle in a slow step (it writes nothing meanwhile).
    let slow = sb.plan("slow.toml", SLOW_PLAN);
    let (mut engine, run) = spawn_run(&sb, &slow);
    assert!(
        wait_until(Duration::from_secs(20), || {
            let r = sb.run(&["status", &run, "--json"]);
            r.code == Some(0)
                && serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()["steps"]["slow"]["state"]
                    == "running"
        }),
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
    assert_eq!(sb.status(&run)["state"], "failed");
}
