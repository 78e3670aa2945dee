//! `sql.backup` (and its compensation) and `sql.restore` through tiberius
//! against the stand-in's TM database model.
#![cfg(feature = "sql-standin")]

mod sql_support;

use sql_support::*;
use upshift_steps::sql_standin::{Action, Message, TmDatabaseModel};
use upshift_steps::{Outputs, StepContext, StepError};

fn backup_with(server: &upshift_steps::sql_standin::StandinServer, extra: &str) -> toml::Table {
    with(server, &format!("directory = 'D:\\Backup'\n{extra}"))
}

#[tokio::test]
async fn backup_is_verified_reports_progress_and_outputs_its_set() {
    let model = TmDatabaseModel::new("7.0");
    let server = standin(model.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let cx = ctx(&dir);
    let out = build("sql.backup", &backup_with(&server, ""))
        .unwrap()
        .run(&cx)
        .await
        .unwrap()
        .outputs;
    let path = format!("D:\\Backup\\TM_{}.bak", cx.run_id());
    assert_eq!(out["path"], path);
    assert_eq!(out["backup_set_id"], "1");
    assert_eq!(out["database"], "TM");
    let progress: Vec<u64> = cx.progress.lock().unwrap().iter().map(|p| p.0).collect();
    assert_eq!(
        progress,
        (1..=20).map(|i| i * 5).collect::<Vec<u64>>(),
        "STATS = 5 messages"
    );
    let s = model.state();
    let file = &s.backups[&path];
    assert_eq!(file.database, "TM");
    assert_eq!(
        file.description,
        format!("upshift run {} step db", cx.run_id())
    );
    assert_eq!(
        s.count_executed("WITH COPY_ONLY, CHECKSUM, INIT, STATS = 5"),
        1
    );
    assert_eq!(s.count_executed("RESTORE VERIFYONLY"), 1);
    // The backup runs from master, not from the database it backs up.
    assert!(server.logins().iter().all(|l| l.database == "master"));
}

#[tokio::test]
async fn a_resumed_backup_keeps_the_verified_file_of_its_run() {
    let model = TmDatabaseModel::new("7.0");
    let server = standin(model.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let step = build("sql.backup", &backup_with(&server, "")).unwrap();
    let first = step.run(&ctx(&dir)).await.unwrap().outputs;
    let again_cx = ctx(&dir);
    let again = step.run(&again_cx).await.unwrap().outputs;
    assert_eq!(first, again);
    assert_eq!(model.state().count_executed("BACKUP DATABASE"), 1);
    assert!(again_cx.output_text().contains("not backing up again"));
    // A damaged file of this run is replaced.
    let path = first["path"].clone();
    model.state().backups.get_mut(&path).unwrap().valid = false;
    let third = step.run(&ctx(&dir)).await.unwrap().outputs;
    assert_eq!(model.state().count_executed("BACKUP DATABASE"), 2);
    assert_eq!(third["backup_set_id"], "2");
}

#[tokio::test]
async fn names_and_paths_are_quoted() {
    let model = TmDatabaseModel::new("7.0");
    // The model refuses to back up a database it does not have (911).
    model.state().database = "T]M".into();
    let server = standin(model.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let w = with(&server, "database = 'T]M'\npath = \"D:\\\\it's.bak\"");
    let step = build("sql.backup", &w).unwrap();
    assert!(
        step.describe()[1].contains("BACKUP DATABASE [T]]M] TO DISK = N'D:\\it''s.bak'"),
        "{:?}",
        step.describe()
    );
    let out = step.run(&ctx(&dir)).await.unwrap().outputs;
    assert_eq!(out["path"], "D:\\it's.bak");
    let s = model.state();
    assert_eq!(s.backups["D:\\it's.bak"].database, "T]M");
    assert_eq!(
        s.count_executed("RESTORE VERIFYONLY FROM DISK = N'D:\\it''s.bak' WITH CHECKSUM"),
        1
    );
}

#[tokio::test]
async fn compensation_restores_the_backup_it_made() {
    let model = TmDatabaseModel::new("7.0");
    let server = standin(model.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let step = build("sql.backup", &backup_with(&server, "")).unwrap();
    assert!(step.has_compensation());
    let outputs: Outputs = step.run(&ctx(&dir)).await.unwrap().outputs;
    model.state().db.version = "7.2".into(); // the update ran, then failed later
    let mut cx = ctx(&dir);
    cx.recorded = outputs;
    step.compensate(&cx).await.unwrap();
    let s = model.state();
    assert_eq!(s.db.version, "7.0");
    assert_eq!(s.restores, 1);
    assert!(!s.single_user);
    let order: Vec<&str> = s
        .executed
        .iter()
        .filter_map(|t| {
            if t.contains("SINGLE_USER") && t.contains("RESTORE DATABASE") {
                Some("SINGLE_USER + RESTORE DATABASE")
            } else {
                [
                    "RESTORE VERIFYONLY",
                    "SINGLE_USER",
                    "RESTORE DATABASE",
                    "MULTI_USER",
                ]
                .into_iter()
                .find(|k| t.contains(k))
            }
        })
        .collect();
    assert_eq!(
        order,
        [
            "RESTORE VERIFYONLY",
            "RESTORE VERIFYONLY",
            "SINGLE_USER + RESTORE DATABASE",
            "MULTI_USER"
        ]
    );
    assert!(
        !cx.progress.lock().unwrap().is_empty(),
        "restore progress reported"
    );
}

#[tokio::test]
async fn a_failed_restore_still_returns_to_multi_user() {
    let model = TmDatabaseModel::new("7.0");
    let server = standin(model.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let out = build("sql.backup", &backup_with(&server, ""))
        .unwrap()
        .run(&ctx(&dir))
        .await
        .unwrap()
        .outputs;
    model.fault_statement("RESTORE DATABASE", 1, || {
        vec![
            Action::Error(Message::error(
                3159,
                "The tail of the log for the database \"TM\" has not been backed up.",
            )),
            Action::Error(Message::error(
                3013,
                "RESTORE DATABASE is terminating abnormally.",
            )),
        ]
    });
    let w = with(&server, &format!("path = '{}'", out["path"]));
    let err = build("sql.restore", &w)
        .unwrap()
        .run(&ctx(&dir))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StepError::Failed { transient: false, message } if message.contains("3159")),
        "{err:?}"
    );
    let s = model.state();
    assert_eq!(s.restores, 0);
    assert_eq!(s.count_executed("SET SINGLE_USER"), 1, "the switch ran");
    assert!(!s.single_user, "back to MULTI_USER after the failure");
    assert_eq!(s.count_executed("MULTI_USER"), 1);
}

#[tokio::test]
async fn single_user_and_restore_go_in_one_batch_so_nobody_takes_the_slot() {
    let model = TmDatabaseModel::new("7.0");
    // An application that grabs the single connection as soon as a request
    // leaves the database in SINGLE_USER mode: with the switch and the
    // RESTORE in two batches, the RESTORE fails with 3101.
    model.state().single_user_contender = true;
    let server = standin(model.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let out = build("sql.backup", &backup_with(&server, ""))
        .unwrap()
        .run(&ctx(&dir))
        .await
        .unwrap()
        .outputs;
    model.state().db.version = "7.2".into();
    build(
        "sql.restore",
        &with(&server, &format!("path = '{}'", out["path"])),
    )
    .unwrap()
    .run(&ctx(&dir))
    .await
    .unwrap();
    let s = model.state();
    assert_eq!(s.restores, 1);
    assert_eq!(s.db.version, "7.0");
    assert!(!s.single_user);
}

#[tokio::test]
async fn checksum_is_required_unless_turned_off() {
    let model = TmDatabaseModel::new("7.0");
    let server = standin(model.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    // A backup made elsewhere, without CHECKSUM.
    let path = "E:/Elsewhere/TM.bak";
    build(
        "sql.exec",
        &with(
            &server,
            &format!("sql = \"BACKUP DATABASE [TM] TO DISK = N'{path}' WITH COPY_ONLY, INIT\""),
        ),
    )
    .unwrap()
    .run(&ctx(&dir))
    .await
    .unwrap();
    let restore = |extra: &str| {
        build(
            "sql.restore",
            &with(&server, &format!("path = '{path}'\n{extra}")),
        )
        .unwrap()
    };
    let step = restore("");
    assert!(step.describe().join("\n").contains("3187"));
    let err = step.run(&ctx(&dir)).await.unwrap_err();
    assert!(err.to_string().contains("3187"), "{err}");
    assert_eq!(model.state().count_executed("SINGLE_USER"), 0);
    restore("checksum = false").run(&ctx(&dir)).await.unwrap();
    assert_eq!(model.state().restores, 1);
}

#[tokio::test]
async fn a_long_step_id_fits_the_description_and_the_backup_is_found_again() {
    let model = TmDatabaseModel::new("7.0");
    let server = standin(model.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let step = build("sql.backup", &backup_with(&server, "")).unwrap();
    let long = format!("backup_{}", "x".repeat(300));
    let cx = upshift_steps::testing::TestContext::new(&long, dir.path());
    let first = step.run(&cx).await.unwrap().outputs;
    let description = model.state().backups[&first["path"]].description.clone();
    assert_eq!(description.encode_utf16().count(), 255, "{description}");
    // A resumed run finds its backup set through the same description.
    let again_cx = upshift_steps::testing::TestContext::new(&long, dir.path());
    step.run(&again_cx).await.unwrap();
    assert!(again_cx.output_text().contains("not backing up again"));
    assert_eq!(model.state().count_executed("BACKUP DATABASE"), 1);
}

#[tokio::test]
async fn restoring_a_missing_file_leaves_the_database_alone() {
    let model = TmDatabaseModel::new("7.0");
    let server = standin(model.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let err = build("sql.restore", &with(&server, "path = 'D:\\nope.bak'"))
        .unwrap()
        .run(&ctx(&dir))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not verify"), "{err}");
    assert!(err.to_string().contains("3201"), "{err}");
    assert_eq!(model.state().count_executed("SINGLE_USER"), 0);
}
