//! `sql.script` through tiberius against the stand-in.
#![cfg(feature = "sql-standin")]

mod sql_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sql_support::*;
use upshift_steps::StepError;
use upshift_steps::sql_standin::{Action, Message, Request, RequestKind};

const SCRIPT: &str = "-- header\nGO\nCREATE TABLE a (x int);\nGO\nINSERT a VALUES (1);\nGO 2\n\n/* GO */ SELECT 'GO\nGO';\nGO\n";

/// Texts the stand-in received.
type Seen = Arc<Mutex<Vec<String>>>;

fn recording() -> (
    Seen,
    impl Fn(&Request) -> Vec<Action> + Send + Sync + 'static,
) {
    let seen: Seen = Arc::default();
    let s2 = seen.clone();
    (seen, move |r: &Request| {
        assert_eq!(r.kind, RequestKind::Batch, "scripts run as SQL batches");
        s2.lock().unwrap().push(r.text.clone());
        vec![Action::Done { rows_affected: 0 }]
    })
}

fn script_with(
    server: &upshift_steps::sql_standin::StandinServer,
    file: &std::path::Path,
) -> toml::Table {
    let mut w = with(server, "");
    w.insert("file".into(), file.display().to_string().into());
    w
}

#[tokio::test]
async fn script_runs_each_batch_with_its_repeat_count() {
    let (seen, handler) = recording();
    let server = standin(handler).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.sql");
    std::fs::write(&file, SCRIPT).unwrap();
    let step = build("sql.script", &script_with(&server, &file)).unwrap();
    let cx = ctx(&dir);
    let out = step.run(&cx).await.unwrap().outputs;
    assert_eq!(out["batches"], "3");
    assert_eq!(out["ran"], "4");
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            "CREATE TABLE a (x int);",
            "INSERT a VALUES (1);",
            "INSERT a VALUES (1);",
            "/* GO */ SELECT 'GO\nGO';"
        ]
    );
    assert_eq!(cx.checkpoints.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn describe_lists_one_line_per_batch() {
    let (_, handler) = recording();
    let server = standin(handler).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.sql");
    std::fs::write(&file, SCRIPT).unwrap();
    let lines = build("sql.script", &script_with(&server, &file))
        .unwrap()
        .describe();
    assert_eq!(
        lines[1..],
        [
            "  batch 1: line 3, runs 1x",
            "  batch 2: line 5, runs 2x",
            "  batch 3: line 8, runs 1x"
        ]
    );
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn crash_between_batches_resumes_at_the_next_batch() {
    let (seen, handler) = recording();
    let server = standin(handler).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.sql");
    std::fs::write(
        &file,
        "SELECT 1\nGO\nSELECT 2\nGO\nSELECT 3\nGO\nSELECT 4\n",
    )
    .unwrap();
    let step = build("sql.script", &script_with(&server, &file)).unwrap();
    // Attempt 1: the checkpoint after batch 2 is never made durable.
    let mut first = ctx(&dir);
    first.fail_checkpoint_at = Some(2);
    step.run(&first).await.unwrap_err();
    assert_eq!(*seen.lock().unwrap(), vec!["SELECT 1", "SELECT 2"]);
    // Attempt 2 resumes after the last durable checkpoint (batch 1).
    seen.lock().unwrap().clear();
    let mut second = ctx(&dir);
    second.attempt = 2;
    second.resume = first.last_checkpoint();
    let out = step.run(&second).await.unwrap().outputs;
    assert_eq!(
        *seen.lock().unwrap(),
        vec!["SELECT 2", "SELECT 3", "SELECT 4"]
    );
    assert_eq!(out["ran"], "3");
    assert!(second.output_text().contains("resuming"));
    // Attempt 3 after a clean finish: nothing left to run.
    seen.lock().unwrap().clear();
    let mut third = ctx(&dir);
    third.resume = second.last_checkpoint();
    step.run(&third).await.unwrap();
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_script_changed_between_attempts_is_refused() {
    let (_, handler) = recording();
    let server = standin(handler).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.sql");
    std::fs::write(&file, "SELECT 1\nGO\nSELECT 2\n").unwrap();
    let step = build("sql.script", &script_with(&server, &file)).unwrap();
    let mut first = ctx(&dir);
    first.fail_checkpoint_at = Some(2);
    step.run(&first).await.unwrap_err();
    std::fs::write(&file, "SELECT 1\nGO\nSELECT 2 -- changed\n").unwrap();
    let mut second = ctx(&dir);
    second.resume = first.last_checkpoint();
    let err = step.run(&second).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("changed since the interrupted attempt"),
        "{err}"
    );
}

#[tokio::test]
async fn a_failing_batch_is_named_with_its_line() {
    let server = standin(|r: &Request| {
        if r.text.contains("boom") {
            vec![Action::Error(
                Message::error(102, "Incorrect syntax near 'boom'.").at("", 2),
            )]
        } else {
            vec![Action::Done { rows_affected: 0 }]
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.sql");
    std::fs::write(&file, "SELECT 1\nGO\n\nSELECT\nboom\nGO\nSELECT 3\n").unwrap();
    let cx = ctx(&dir);
    let err = build("sql.script", &script_with(&server, &file))
        .unwrap()
        .run(&cx)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("batch 2 (line 4)") && msg.contains("error 102"),
        "{msg}"
    );
    assert_eq!(
        cx.checkpoints.lock().unwrap().len(),
        1,
        "batch 1 was checkpointed"
    );
}

#[tokio::test]
async fn a_batch_past_its_command_timeout_is_cancelled_on_the_server() {
    let server = standin(|_r: &Request| {
        vec![
            Action::Delay(Duration::from_secs(60)),
            Action::Done { rows_affected: 0 },
        ]
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.sql");
    std::fs::write(&file, "WAITFOR DELAY '01:00:00'\n").unwrap();
    let mut w = script_with(&server, &file);
    w.insert("command_timeout".into(), "200ms".into());
    let err = build("sql.script", &w)
        .unwrap()
        .run(&ctx(&dir))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StepError::Failed { transient: false, message } if message.contains("attention acknowledged")),
        "{err:?}"
    );
    assert_eq!(server.attentions(), 1);
}

#[tokio::test]
async fn a_malformed_go_line_fails_before_anything_runs() {
    let (seen, handler) = recording();
    let server = standin(handler).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.sql");
    std::fs::write(&file, "SELECT 1\nGO x\nSELECT 2\n").unwrap();
    let err = build("sql.script", &script_with(&server, &file))
        .unwrap()
        .run(&ctx(&dir))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("line 2"), "{err}");
    assert!(seen.lock().unwrap().is_empty());
}
