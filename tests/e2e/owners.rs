//! Only the run's owners decide (issue 12 item 11): the journal folder and
//! everything in it are owner-only; a folder others may write into is
//! refused like sshd's StrictModes; a decision file written by another
//! user is refused and reported, and a decision is journaled with the OS
//! account that wrote it, not the name inside it.

#![cfg(unix)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::support::{Sandbox, WAIT_FOR_GO};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A plan whose `gate` waits for an operator while `slow` keeps the
/// engine live until the `go` marker appears.
fn gated() -> String {
    format!(
        "name = \"owners\"\n[steps]\nslow = {WAIT_FOR_GO}\n{}",
        r#"gate = { kind = "manual", with = { instructions = "approve me" } }
after = { kind = "process", needs = ["gate", "slow"], with = { program = "true" } }
"#
    )
}

#[test]
fn the_journal_folder_logs_and_inbox_are_owner_only() {
    let sb = Sandbox::new();
    let plan = sb.plan("p.toml", &gated());
    let (mut engine, run) = sb.spawn_run(&plan);
    let j = sb.journal();
    assert!(sb.wait_for_step(&run, "gate", "waiting"));
    sb.run(&["approve", &run, "gate"]).expect(0);
    let inbox_run = j.join("inbox").join(&run);
    assert_eq!(mode(&j.join("inbox")), 0o700);
    assert_eq!(mode(&inbox_run), 0o700);
    assert!(sb.wait_inbox_taken(&run));
    std::fs::write(sb.markers().join("go"), "").unwrap();
    assert_eq!(
        engine.wait().unwrap().code(),
        Some(0),
        "{}",
        sb.run(&["log", &run]).stdout
    );
    assert_eq!(mode(&j), 0o700, "journal folder");
    for f in ["journal.redb", "journal.lock"] {
        assert_eq!(mode(&j.join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(&j.join("logs")), 0o700);
    assert_eq!(mode(&j.join("logs").join(format!("{run}.log"))), 0o600);
    let work = j.join("work").join(&run).join("slow");
    if work.exists() {
        assert_eq!(mode(&work), 0o700);
    }
}

#[test]
fn a_journal_folder_or_inbox_others_may_write_is_refused() {
    let sb = Sandbox::new();
    let plan = sb.plan("p.toml", &gated().replace("for i", "touch @M@/go; for i"));
    let r = sb.run(&["run", plan.to_str().unwrap()]);
    r.expect(3);
    let run = r.run_id();
    let j = sb.journal();
    std::fs::set_permissions(&j, std::fs::Permissions::from_mode(0o777)).unwrap();
    let approve = ["approve", &run, "gate"];
    sb.run_refused(&approve, 1, "mode 0777: group and others may write");
    sb.run_refused(&approve, 1, &format!("chmod 700 {}", j.display()));
    sb.run_refused(&["resume", &run], 1, "is not private");
    std::fs::set_permissions(&j, std::fs::Permissions::from_mode(0o700)).unwrap();
    // A group-writable inbox: the CLI refuses to queue into it.
    let inbox = j.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::set_permissions(&inbox, std::fs::Permissions::from_mode(0o770)).unwrap();
    let q = upshift::app::inbox::DirInbox::new(&inbox).queue(
        run.parse().unwrap(),
        &upshift::app::inbox::InboxDecision {
            decision: upshift_journal::Decision::Abort,
            actor: upshift_journal::Actor::default(),
            reason: String::new(),
        },
    );
    let e = q.expect_err("refused").to_string();
    assert!(
        e.contains("its group may write") && e.contains("chmod 700"),
        "{e}"
    );
}

#[test]
fn a_decision_file_written_by_another_user_is_refused_and_reported() {
    if !is_root() {
        eprintln!(
            "SKIPPED: a_decision_file_written_by_another_user_is_refused_and_reported because it must chown a file to another uid (run the tests as root)"
        );
        return;
    }
    let sb = Sandbox::new();
    let plan = sb.plan("p.toml", &gated());
    let (mut engine, run) = sb.spawn_run(&plan);
    assert!(sb.wait_for_step(&run, "gate", "waiting"));
    // Another user's file (uid 4242 exists nowhere: the OS still records
    // it as the owner), claiming to be root.
    let forged = sb.queue_approve(&run, "gate", "root");
    std::os::unix::fs::chown(&forged, Some(4242), Some(4242)).unwrap();
    assert!(sb.wait_inbox_taken(&run), "never taken");
    assert_eq!(sb.status(&run)["steps"]["gate"]["state"], "waiting");
    // The owner's own decision, claiming another name, is journaled with
    // the OS account that wrote it.
    sb.queue_approve(&run, "gate", "mallory");
    assert!(sb.wait_inbox_taken(&run), "never taken");
    std::fs::write(sb.markers().join("go"), "").unwrap();
    assert_eq!(engine.wait().unwrap().code(), Some(0));
    let log = sb.run(&["log", &run]).stdout;
    assert!(
        log.contains(
            "written by uid 4242, who is neither the journal's owner nor an administrator"
        ),
        "{log}"
    );
    assert!(
        log.contains("operator.decision approve gate by root (claimed: mallory)@h"),
        "{log}"
    );
    assert_eq!(log.matches("operator.decision").count(), 1, "{log}");
}
