//! The stand-in's TM model through the real tiberius driver: a statement it
//! does not recognise gets SQL Server's error instead of silence, so a typo
//! in a statement a step kind generates fails a test.
#![cfg(feature = "sql-standin")]

mod sql_support;

use sql_support::*;
use upshift_steps::StepError;
use upshift_steps::sql_standin::TmDatabaseModel;

async fn exec_error(model: &TmDatabaseModel, sql: &str) -> String {
    let server = standin(model.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut w = with(&server, "");
    w.insert("sql".into(), sql.into());
    match build("sql.exec", &w).unwrap().run(&ctx(&dir)).await {
        Ok(_) => panic!("`{sql}` was accepted"),
        Err(StepError::Failed { message, .. }) => message,
        Err(e) => panic!("{e:?}"),
    }
}

#[tokio::test]
async fn typos_in_statements_fail_with_sql_server_errors() {
    let model = TmDatabaseModel::new("7.0");
    for (sql, error) in [
        ("EXEC [Reporting].[usp_DataLoadr]", "error 2812"),
        ("EXEC [Reporting].[usp_DataLoader] @x = 1", "error 8144"),
        ("SELEC 1", "error 102"),
        (
            "SELECT TOP (1) [Versoin] FROM [dbo].[DatabaseVersion] ORDER BY [Id] DESC",
            "error 207",
        ),
        (
            "SELECT TOP (1) bs.backup_set_id FROM msdb.dbo.backupset AS bs JOIN msdb.dbo.backupmediafamily AS mf ON mf.media_set_id = bs.media_sets_id",
            "error 207",
        ),
        (
            "RESTORE VERIFYONLY FROM DISK = N'x.bak' WITH CHECKSUMS",
            "error 155",
        ),
        ("ALTER DATABASE [TN] SET MULTI_USER", "error 5011"),
        (
            "INSERT INTO [upshift].[schema_history] ([version]) VALUES (N'1')",
            "error 208",
        ),
    ] {
        let message = exec_error(&model, sql).await;
        assert!(message.contains(error), "{sql}: {message}");
    }
}

#[tokio::test]
async fn a_script_calling_a_procedure_it_has_runs_and_one_it_lacks_fails() {
    let model = TmDatabaseModel::new("7.0").with_procedure("usp_Prepare");
    let server = standin(model.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.sql");
    std::fs::write(
        &file,
        "EXEC dbo.usp_Prepare @days = 3;\nGO\nCREATE TABLE [dbo].[T] ([id] int NOT NULL);\nGO\nINSERT INTO [dbo].[T] ([id]) VALUES (1);\nGO\nEXEC dbo.usp_Missing;\nGO\n",
    )
    .unwrap();
    let mut w = with(&server, "");
    w.insert("file".into(), file.display().to_string().into());
    let err = build("sql.script", &w)
        .unwrap()
        .run(&ctx(&dir))
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("batch 4") && message.contains("2812") && message.contains("usp_Missing"),
        "{message}"
    );
    assert!(model.state().db.tables.contains_key("dbo.t"));
}
