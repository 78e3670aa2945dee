//! Secrets never reach the journal, the run log, stdout or stderr, whatever
//! path the run takes (success, failure with retry, dry run).

use crate::support::Sandbox;

const SECRET: &str = "Sup3r-S3cret-Passw0rd";

fn all_bytes_under(dir: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.extend(b);
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

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
