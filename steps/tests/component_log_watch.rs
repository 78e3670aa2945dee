//! `log.watch` on real files written while it watches: new lines reported,
//! old ones not, a file that appears late, fail and pause patterns, resume
//! after an approval, rotation.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use upshift_steps::testing::TestContext;
use upshift_steps::{Step, StepError, registry};

fn step(file: &Path, rest: &str) -> Box<dyn Step> {
    let with: toml::Table = toml::from_str(&format!(
        "file = {}\npoll_interval = \"20ms\"\n{rest}",
        toml::Value::String(file.display().to_string())
    ))
    .unwrap();
    registry().get("log.watch").unwrap().build(&with).unwrap()
}

/// Appends `lines` to `file` after `delay`, in the background.
fn later(file: &Path, delay: Duration, lines: &[&str]) -> std::thread::JoinHandle<()> {
    let file = file.to_path_buf();
    let lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)
            .unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
    })
}

fn log(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("connectionIssues.log")
}

#[tokio::test]
async fn reports_the_lines_written_while_it_watches() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(log(&dir), "2026-11-01 old problem\n").unwrap();
    let s = step(&log(&dir), "duration = \"1s\"");
    let writer = later(
        &log(&dir),
        Duration::from_millis(100),
        &[
            "2026-11-24 02:40:01 WARN PS unreachable, retrying",
            "2026-11-24 02:40:03 INFO connected",
        ],
    );
    let ctx = TestContext::new("watch", dir.path().join("work"));
    let out = s.run(&ctx).await.unwrap().outputs;
    writer.join().unwrap();
    assert_eq!(out["new_lines"], "2");
    assert_eq!(out["matched"], "0");
    assert_eq!(out["file_exists"], "true");
    assert_eq!(out["last_line"], "2026-11-24 02:40:03 INFO connected");
    let text = ctx.output_text();
    assert!(
        text.contains("PS unreachable") && !text.contains("old problem"),
        "{text}"
    );
}

#[tokio::test]
async fn a_missing_file_is_waited_for_and_absence_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let s = step(&log(&dir), "duration = \"300ms\"");
    let ctx = TestContext::new("watch", dir.path().join("work"));
    let out = s.run(&ctx).await.unwrap().outputs;
    assert_eq!(out["new_lines"], "0");
    assert_eq!(out["file_exists"], "false");
    assert!(ctx.output_text().contains("does not exist"));

    let s = step(&log(&dir), "duration = \"1s\"");
    let writer = later(&log(&dir), Duration::from_millis(100), &["first issue"]);
    let out = s
        .run(&TestContext::new("watch", dir.path().join("work")))
        .await
        .unwrap()
        .outputs;
    writer.join().unwrap();
    assert_eq!(out["new_lines"], "1");
}

#[tokio::test]
async fn a_fail_pattern_fails_with_the_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(log(&dir), "").unwrap();
    let s = step(&log(&dir), "duration = \"5s\"\nfail_on = [\"certificate\"]");
    let writer = later(
        &log(&dir),
        Duration::from_millis(50),
        &["02:40:01 ERROR The X.509 CERTIFICATE CN=tm01 is not trusted"],
    );
    let started = std::time::Instant::now();
    let err = s
        .run(&TestContext::new("watch", dir.path().join("work")))
        .await
        .unwrap_err();
    writer.join().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "it failed at once"
    );
    let StepError::Failed { message, transient } = err else {
        panic!()
    };
    assert!(!transient);
    assert!(
        message.contains("`certificate`") && message.contains("CN=tm01"),
        "{message}"
    );
}

#[tokio::test]
async fn a_pause_pattern_waits_and_approval_goes_on_after_those_lines() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(log(&dir), "").unwrap();
    let s = step(&log(&dir), "duration = \"1s\"\npause_on = [\"error\"]");
    let writer = later(
        &log(&dir),
        Duration::from_millis(50),
        &["ERROR PS connection refused"],
    );
    let first = TestContext::new("watch", dir.path().join("work"));
    let Err(StepError::WaitForOperator { reason }) = s.run(&first).await else {
        panic!("no pause");
    };
    writer.join().unwrap();
    assert!(reason.contains("ERROR PS connection refused"), "{reason}");

    // Approved: the same line does not pause again; new ones are reported.
    let writer = later(&log(&dir), Duration::from_millis(50), &["INFO reconnected"]);
    let mut approved = TestContext::new("watch", dir.path().join("work"));
    approved.approved = true;
    approved.resume = first.last_checkpoint();
    let out = s.run(&approved).await.unwrap().outputs;
    writer.join().unwrap();
    assert_eq!(out["new_lines"], "2", "counted across the pause");
    assert_eq!(out["last_line"], "INFO reconnected");
}

#[tokio::test]
async fn from_start_and_rotation() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(log(&dir), "a\nb\n").unwrap();
    let s = step(&log(&dir), "duration = \"300ms\"\nfrom = \"start\"");
    let out = s
        .run(&TestContext::new("watch", dir.path().join("work")))
        .await
        .unwrap()
        .outputs;
    assert_eq!(out["new_lines"], "2");

    // Rotated while watching: the new, shorter file is read from its start.
    std::fs::write(log(&dir), "a long line that makes the file big\n").unwrap();
    let s = step(&log(&dir), "duration = \"400ms\"");
    let path = log(&dir);
    let rotate = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        std::fs::write(&path, "x\n").unwrap();
    });
    let ctx = TestContext::new("watch", dir.path().join("work"));
    let out = s.run(&ctx).await.unwrap().outputs;
    rotate.join().unwrap();
    assert_eq!(out["new_lines"], "1");
    assert!(ctx.output_text().contains("shrank"));
}

#[test]
fn empty_patterns_are_refused() {
    let with: toml::Table = toml::from_str("file = \"x\"\nfail_on = [\"\"]").unwrap();
    let Err(e) = registry().get("log.watch").unwrap().build(&with) else {
        panic!()
    };
    assert_eq!(e.field.as_deref(), Some("fail_on"));
}
