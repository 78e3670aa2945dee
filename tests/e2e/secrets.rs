//! Secrets never reach the journal, the run log, stdout or stderr, whatever
//! path the run takes (success, failure with retry, dry run).

use crate::support::{Sandbox, all_bytes_under, contains};

const SECRET: &str = "Sup3r-S3cret-Passw0rd";

#[test]
fn a_secret_echoed_by_steps_never_reaches_journal_logs_or_terminal() {
    let sb = Sandbox::new();
    let plan = sb.plan(
        "p.toml",
        r#"
name = "secrets"
[secrets]
pw = { env = "UPSHIFT_TEST_PW" }
[steps.uses]
kind = "process"
with = { program = "sh", args = ["-c", "echo password is $0; echo $0 >&2", "${secrets.pw}"] }
[steps.fails]
kind = "process"
needs = ["uses"]
retry = { attempts = 2, backoff = "10ms" }
with = { program = "sh", args = ["-c", "echo failing with $0; exit 3", "${secrets.pw}"] }
"#,
    );
    let p = plan.to_str().unwrap();
    let dry = sb.run_env(&["run", p, "--dry-run"], &[("UPSHIFT_TEST_PW", SECRET)]);
    dry.expect(0);
    let r = sb.run_env(&["run", p, "--show-output"], &[("UPSHIFT_TEST_PW", SECRET)]);
    r.expect(3);
    let log = sb.run(&["log", &r.run_id()]);
    let status = sb.run(&["status", &r.run_id(), "--json"]);
    // The step did see the value (it is redacted, not withheld).
    assert!(
        log.stdout.contains("stdout=password is ***"),
        "{}",
        log.stdout
    );
    for (what, bytes) in [
        ("journal folder", all_bytes_under(&sb.journal())),
        ("run stdout", r.stdout.clone().into_bytes()),
        ("run stderr", r.stderr.clone().into_bytes()),
        (
            "dry-run output",
            format!("{}{}", dry.stdout, dry.stderr).into_bytes(),
        ),
        ("log", log.stdout.into_bytes()),
        ("status", status.stdout.into_bytes()),
    ] {
        assert!(!bytes.is_empty() || what == "run stdout", "{what} is empty");
        assert!(
            !contains(&bytes, SECRET),
            "the secret leaked into the {what}"
        );
    }
}

#[test]
fn a_missing_secret_is_a_usage_error_naming_the_variable() {
    let sb = Sandbox::new();
    let plan = sb.plan(
        "p.toml",
        "name = \"s\"\n[secrets]\npw = { env = \"UPSHIFT_TEST_UNSET_PW\" }\n[steps.a]\nkind = \"process\"\nwith = { program = \"echo\", args = [\"${secrets.pw}\"] }\n",
    );
    let r = sb.run(&["run", plan.to_str().unwrap()]);
    r.expect(2);
    assert!(r.stderr.contains("UPSHIFT_TEST_UNSET_PW"), "{}", r.stderr);
    assert!(
        !sb.journal().join("journal.redb").exists(),
        "nothing journaled before secrets resolve"
    );
}

/// A plan whose steps and compensations echo the secret, and whose last
/// step fails with `on_failure = "rollback"`.
const ROLLBACK_SECRET_PLAN: &str = r#"
name = "secrets-rollback"
[secrets]
pw = { env = "UPSHIFT_TEST_PW" }
[steps.a]
kind = "process"
with = { program = "sh", args = ["-c", "echo doing a with $0; echo a >> @M@/a", "${secrets.pw}"] }
compensate = { kind = "process", with = { program = "sh", args = ["-c", "echo undoing a with $0 >&2; echo a >> @M@/a.undo", "${secrets.pw}"] } }
[steps.b]
kind = "process"
needs = ["a"]
on_failure = "rollback"
with = { program = "sh", args = ["-c", "echo failing b with $0; exit 4", "${secrets.pw}"] }
"#;

#[test]
fn a_secret_never_leaks_through_a_rollback_or_an_export() {
    let sb = Sandbox::new();
    let plan = sb.plan("p.toml", ROLLBACK_SECRET_PLAN);
    let r = sb.run_env(
        &["run", plan.to_str().unwrap(), "--show-output"],
        &[("UPSHIFT_TEST_PW", SECRET)],
    );
    r.expect(1);
    let run = r.run_id();
    assert_eq!(sb.status(&run)["state"], "rolled_back");
    assert_eq!(sb.marker_lines("a.undo").len(), 1, "a was compensated");
    let log = sb.run(&["log", &run]);
    log.expect(0);
    // The compensation saw the value (redacted, not withheld).
    let undo_tail = sb
        .events(&run)
        .into_iter()
        .find_map(|e| match e.event {
            upshift_journal::Event::CompensationSucceeded { output_tail, .. } => Some(output_tail),
            _ => None,
        })
        .expect("a was compensated");
    assert!(undo_tail.contains("undoing a with ***"), "{undo_tail}");
    let mut places = vec![
        ("journal folder", all_bytes_under(&sb.journal())),
        ("run stdout", r.stdout.clone().into_bytes()),
        ("run stderr", r.stderr.clone().into_bytes()),
        ("log", log.stdout.clone().into_bytes()),
    ];
    // Export, where this build has it: the file, and its decompressed content.
    let help = sb.run(&["--help"]);
    if help.stdout.contains("export") {
        let file = sb.path().join("case.export");
        let e = sb.run_env(
            &["export", &run, "-o", file.to_str().unwrap()],
            &[("UPSHIFT_TEST_PW", SECRET)],
        );
        e.expect(0);
        let raw = std::fs::read(&file).expect("export file");
        let unzipped = std::process::Command::new("gzip")
            .arg("-dc")
            .arg(&file)
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default();
        assert!(
            !unzipped.is_empty(),
            "the export is not gzip (or gzip is missing)"
        );
        assert!(
            contains(&unzipped, "secrets-rollback"),
            "the export lacks the run's plan"
        );
        places.push(("export file", raw));
        places.push(("export content", unzipped));
        places.push(("export stderr", e.stderr.into_bytes()));
    } else {
        eprintln!("this build has no `upshift export`: export not checked");
    }
    for (what, bytes) in places {
        assert!(
            !contains(&bytes, SECRET),
            "the secret leaked into the {what}"
        );
    }
}
