//! `db.check` and `db.update` through tiberius against the stand-in's TM
//! database model and the demo scripts in `plans/sql/`.
#![cfg(feature = "sql-standin")]

mod sql_support;

use std::path::{Path, PathBuf};

use sha2::Digest;
use sql_support::*;
use upshift_steps::sql_standin::{Action, Message, TmDatabaseModel};
use upshift_steps::testing::TestContext;
use upshift_steps::{Probe, StepError};

fn demo_scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plans/sql")
}

/// A copy of the demo scripts the test may edit.
fn scripts_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(demo_scripts()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    dir
}

fn update_with(
    server: &upshift_steps::sql_standin::StandinServer,
    dir: &Path,
    target: &str,
) -> toml::Table {
    let mut w = with(server, &format!("target_version = \"{target}\""));
    w.insert("scripts_dir".into(), dir.display().to_string().into());
    w
}

fn sha(path: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

#[tokio::test]
async fn update_applies_each_version_and_records_history() {
    let model = TmDatabaseModel::new("7.0");
    let server = standin(model.clone()).await;
    let step = build("db.update", &update_with(&server, &demo_scripts(), "8.0")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cx = ctx(&dir);
    let out = step.run(&cx).await.unwrap().outputs;
    assert_eq!(out["from_version"], "7.0");
    assert_eq!(out["version"], "8.0");
    assert_eq!(
        out["applied"],
        "7.0_to_7.1.sql,7.1_to_7.2.sql,7.2_to_8.0.sql"
    );
    let s = model.state();
    assert_eq!(s.db.version, "8.0");
    let h: Vec<(&str, &str, bool)> =
        s.db.history
            .iter()
            .map(|h| (h.version.as_str(), h.script.as_str(), h.success))
            .collect();
    assert_eq!(
        h,
        vec![
            ("7.1", "7.0_to_7.1.sql", true),
            ("7.2", "7.1_to_7.2.sql", true),
            ("8.0", "7.2_to_8.0.sql", true),
        ]
    );
    for row in &s.db.history {
        assert_eq!(row.checksum, sha(&demo_scripts().join(&row.script)));
        assert_eq!(row.applied_by, "upshift");
        assert_eq!(row.run_id, cx.run_id_for_test());
    }
    // Each script's batches ran once, in transactions.
    assert_eq!(
        s.count_executed("CREATE TABLE [dbo].[AgentSkillHistory]"),
        1
    );
    assert_eq!(s.count_executed("BEGIN TRANSACTION"), 3);
    assert_eq!(s.count_executed("COMMIT TRANSACTION"), 3);
    assert!(s.app_locks.is_empty(), "the application lock is released");
    assert_eq!(cx.checkpoints.lock().unwrap().len(), 3);
}

trait RunId {
    fn run_id_for_test(&self) -> String;
}
impl RunId for TestContext {
    fn run_id_for_test(&self) -> String {
        use upshift_steps::StepContext;
        self.run_id().to_string()
    }
}

#[tokio::test]
async fn crash_after_commit_before_the_journal_does_not_apply_twice() {
    let model = TmDatabaseModel::new("7.0");
    let server = standin(model.clone()).await;
    let w = update_with(&server, &demo_scripts(), "7.2");
    let dir = tempfile::tempdir().unwrap();
    // Attempt 1 dies at its first checkpoint: 7.0_to_7.1 is committed in the
    // database, the journal never heard of it.
    let mut first = ctx(&dir);
    first.fail_checkpoint_at = Some(1);
    let err = build("db.update", &w)
        .unwrap()
        .run(&first)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("simulated crash"), "{err}");
    assert_eq!(model.version(), "7.1");
    // Attempt 2 starts without a checkpoint; the history table decides.
    let mut second = ctx(&dir);
    second.attempt = 2;
    let out = build("db.update", &w)
        .unwrap()
        .run(&second)
        .await
        .unwrap()
        .outputs;
    assert_eq!(out["from_version"], "7.1");
    assert_eq!(out["applied"], "7.1_to_7.2.sql");
    let s = model.state();
    assert_eq!(
        s.count_executed("CREATE TABLE [dbo].[AgentSkillHistory]"),
        1,
        "7.0_to_7.1 ran once"
    );
    assert_eq!(s.db.history.len(), 2);
    assert_eq!(s.db.version, "7.2");
}

#[tokio::test]
async fn edited_script_after_it_ran_is_refused() {
    let scripts = scripts_copy();
    let model = TmDatabaseModel::new("7.0");
    let server = standin(model.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    build("db.update", &update_with(&server, scripts.path(), "7.1"))
        .unwrap()
        .run(&ctx(&dir))
        .await
        .unwrap();
    let f = scripts.path().join("7.0_to_7.1.sql");
    let mut text = std::fs::read_to_string(&f).unwrap();
    text.push_str("-- edited afterwards\n");
    std::fs::write(&f, text).unwrap();
    let err = build("db.update", &update_with(&server, scripts.path(), "8.0"))
        .unwrap()
        .run(&ctx(&dir))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(
        err,
        StepError::Failed {
            transient: false,
            ..
        }
    ));
    assert!(
        msg.contains("7.0_to_7.1.sql") && msg.contains("edited after it ran"),
        "{msg}"
    );
    assert_eq!(model.version(), "7.1", "nothing else ran");
}

#[tokio::test]
async fn failing_script_rolls_back_and_records_the_failure() {
    let scripts = tempfile::tempdir().unwrap();
    std::fs::write(
        scripts.path().join("7.0_to_7.1.sql"),
        "INSERT INTO [dbo].[DatabaseVersion] ([Version]) VALUES (N'7.1');\nGO\nTHROW 51000, N'column Foo missing', 1;\nGO\n",
    )
    .unwrap();
    let model = TmDatabaseModel::new("7.0");
    let server = standin(model.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let err = build("db.update", &update_with(&server, scripts.path(), "7.1"))
        .unwrap()
        .run(&ctx(&dir))
        .await
        .unwrap_err();
    let msg = err.to_string();
    for part in [
        "7.0_to_7.1.sql",
        "rolled back",
        "batch 2 (line 3)",
        "51000",
        "column Foo missing",
    ] {
        assert!(msg.contains(part), "`{part}` missing: {msg}");
    }
    let s = model.state();
    assert_eq!(s.db.version, "7.0", "the transaction was rolled back");
    assert_eq!(s.db.history.len(), 1);
    assert!(!s.db.history[0].success);
}

#[tokio::test]
async fn deadlock_in_a_script_is_transient_and_a_retry_completes() {
    let model = TmDatabaseModel::new("7.1");
    // A database at 7.1 has the table 7.0_to_7.1.sql created.
    model
        .state()
        .db
        .tables
        .insert("dbo.agentskillhistory".into(), Vec::new());
    model.fault("ALTER TABLE [dbo].[AgentSkillHistory]", 1, || {
        vec![Action::Error(Message::deadlock())]
    });
    let server = standin(model.clone()).await;
    let w = update_with(&server, &demo_scripts(), "7.2");
    let dir = tempfile::tempdir().unwrap();
    let err = build("db.update", &w)
        .unwrap()
        .run(&ctx(&dir))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StepError::Failed {
                transient: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(model.version(), "7.1");
    let out = build("db.update", &w)
        .unwrap()
        .run(&ctx(&dir))
        .await
        .unwrap()
        .outputs;
    assert_eq!(out["version"], "7.2");
    let s = model.state();
    // A failure row, then the success.
    assert_eq!(
        s.db.history.iter().map(|h| h.success).collect::<Vec<_>>(),
        vec![false, true]
    );
}

#[tokio::test]
async fn a_run_gives_up_on_a_lock_held_too_long_and_touches_nothing() {
    let model = TmDatabaseModel::new("7.0");
    model
        .state()
        .app_locks
        .insert("upshift.db.update".into(), 4242); // another session holds it
    let server = standin(model.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut w = update_with(&server, &demo_scripts(), "7.1");
    w.insert("lock_timeout".into(), "300ms".into());
    let started = std::time::Instant::now();
    let err = build("db.update", &w)
        .unwrap()
        .run(&ctx(&dir))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StepError::Failed { transient: true, message } if message.contains("application lock") && message.contains("300ms")),
        "{err:?}"
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    let s = model.state();
    assert_eq!(s.db.version, "7.0");
    // The lock comes before the history table: a run that did not get the
    // lock created nothing.
    assert!(!s.db.history_exists);
}

#[tokio::test]
async fn probe_reports_the_version() {
    let model = TmDatabaseModel::new("7.2");
    let server = standin(model.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let step = build("db.update", &update_with(&server, &demo_scripts(), "8.0")).unwrap();
    assert!(
        matches!(step.probe(&ctx(&dir)).await.unwrap(), Probe::Differs(m) if m.contains("7.2"))
    );
    step.run(&ctx(&dir)).await.unwrap();
    assert_eq!(step.probe(&ctx(&dir)).await.unwrap(), Probe::InPlace);
}

#[tokio::test]
async fn describe_lists_scripts_without_a_server() {
    let model = TmDatabaseModel::new("7.0");
    let server = standin(model).await;
    let step = build("db.update", &update_with(&server, &demo_scripts(), "7.2")).unwrap();
    let lines = step.describe();
    assert!(lines[0].contains("to version 7.2"), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("7.0_to_7.1.sql")),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("7.2_to_8.0.sql")),
        "past the target: {lines:?}"
    );
    assert_eq!(server.connections(), 0, "describe does not connect");
}

fn check_with(server: &upshift_steps::sql_standin::StandinServer, target: &str) -> toml::Table {
    with(
        server,
        &format!(
            r#"
target_version = "{target}"
versions = ["6.0", "6.5", "7.0", "7.1", "7.2", "8.0"]
oldest_supported = "6.5"
incremental_from = {{ "8.0" = "7.0" }}
"#
        ),
    )
}

#[tokio::test]
async fn check_outputs_the_path() {
    let server = standin(TmDatabaseModel::new("7.0")).await;
    let dir = tempfile::tempdir().unwrap();
    let out = build("db.check", &check_with(&server, "8.0"))
        .unwrap()
        .run(&ctx(&dir))
        .await
        .unwrap()
        .outputs;
    assert_eq!(out["current_version"], "7.0");
    assert_eq!(out["target_version"], "8.0");
    assert_eq!(out["path"], "7.1,7.2,8.0");
    assert_eq!(out["decision"], "update");
}

#[tokio::test]
async fn check_stops_too_old_and_names_the_intermediate() {
    let dir = tempfile::tempdir().unwrap();
    let server = standin(TmDatabaseModel::new("6.0")).await;
    let err = build("db.check", &check_with(&server, "8.0"))
        .unwrap()
        .run(&ctx(&dir))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("contact Luware support"), "{err}");
    let server = standin(TmDatabaseModel::new("6.5")).await;
    let err = build("db.check", &check_with(&server, "8.0"))
        .unwrap()
        .run(&ctx(&dir))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("incremental update to 7.0 first"),
        "{err}"
    );
}

#[tokio::test]
async fn a_connection_lost_at_commit_is_transient_and_the_retry_reads_the_truth() {
    let model = TmDatabaseModel::new("7.0");
    model.fault("COMMIT TRANSACTION", 1, || vec![Action::DropConnection]);
    let server = standin(model.clone()).await;
    let w = update_with(&server, &demo_scripts(), "7.1");
    let dir = tempfile::tempdir().unwrap();
    let err = build("db.update", &w)
        .unwrap()
        .run(&ctx(&dir))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StepError::Failed { transient: true, message } if message.contains("COMMIT did not complete")),
        "{err:?}"
    );
    // The server rolled the open transaction back with the session, and the
    // dead session's application lock is gone with it.
    assert_eq!(model.version(), "7.0");
    assert!(model.state().app_locks.is_empty());
    let out = build("db.update", &w)
        .unwrap()
        .run(&ctx(&dir))
        .await
        .unwrap()
        .outputs;
    assert_eq!(out["applied"], "7.0_to_7.1.sql");
    assert_eq!(model.state().db.history.len(), 1);
}

#[tokio::test]
async fn a_script_that_commits_by_itself_is_refused() {
    let scripts = tempfile::tempdir().unwrap();
    std::fs::write(
        scripts.path().join("7.0_to_7.1.sql"),
        "INSERT INTO [dbo].[DatabaseVersion] ([Version]) VALUES (N'7.1');\nGO\nCOMMIT;\nGO\n",
    )
    .unwrap();
    let model = TmDatabaseModel::new("7.0");
    let server = standin(model.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let err = build("db.update", &update_with(&server, scripts.path(), "7.1"))
        .unwrap()
        .run(&ctx(&dir))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("-- upshift: no-transaction"),
        "{err}"
    );
    assert!(model.state().db.history.iter().all(|h| !h.success));
}

#[tokio::test]
async fn two_runs_starting_together_the_loser_waits_and_finds_the_work_done() {
    let model = TmDatabaseModel::new("7.0");
    // Leave a window between `IF OBJECT_ID(...) IS NULL` and the CREATE
    // TABLE it guards, as a real server does: with the history table
    // created before the lock, both runs would find it missing and the
    // loser would fail for good with 2714.
    model.state().ddl_delay = std::time::Duration::from_millis(100);
    let server = standin(model.clone()).await;
    let mut w = update_with(&server, &demo_scripts(), "8.0");
    w.insert("lock_timeout".into(), "30s".into());
    let (a, b) = (
        build("db.update", &w).unwrap(),
        build("db.update", &w).unwrap(),
    );
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ca, cb) = (ctx(&da), ctx(&db));
    let (ra, rb) = tokio::join!(a.run(&ca), b.run(&cb));
    let (ra, rb) = (ra.expect("run a"), rb.expect("run b"));
    let mut applied = [ra.outputs["applied"].clone(), rb.outputs["applied"].clone()];
    applied.sort();
    assert_eq!(
        applied,
        [
            String::new(),
            "7.0_to_7.1.sql,7.1_to_7.2.sql,7.2_to_8.0.sql".to_string()
        ]
    );
    let waited = ca.output_text() + &cb.output_text();
    assert!(waited.contains("waited for another run"), "{waited}");
    let s = model.state();
    assert_eq!(s.db.version, "8.0");
    assert_eq!(
        s.count_executed("CREATE TABLE [dbo].[AgentSkillHistory]"),
        1
    );
    assert_eq!(s.db.history.len(), 3);
}

/// `expect = "up_to_date"`: the check after the vendor's Database Updater
/// passes only when the database reports the target, and says otherwise
/// that the update was not applied (with the plan's assumption).
#[tokio::test]
async fn check_up_to_date_after_another_tools_update() {
    let dir = tempfile::tempdir().unwrap();
    let w = |server: &upshift_steps::sql_standin::StandinServer| {
        let mut t = check_with(server, "8.0");
        t.insert("expect".into(), "up_to_date".into());
        t.insert("assumed".into(), "the version query is the site's".into());
        t
    };
    let server = standin(TmDatabaseModel::new("7.2")).await;
    let step = build("db.check", &w(&server)).unwrap();
    assert!(
        step.describe()
            .iter()
            .any(|l| l.contains("ASSUMPTION: the version query is the site's")),
        "{:?}",
        step.describe()
    );
    let err = step.run(&ctx(&dir)).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("reports version 7.2, not the target 8.0: the update has not been applied"),
        "{err}"
    );
    let server = standin(TmDatabaseModel::new("8.0")).await;
    let out = build("db.check", &w(&server))
        .unwrap()
        .run(&ctx(&dir))
        .await
        .unwrap()
        .outputs;
    assert_eq!(out["decision"], "up_to_date");
}
