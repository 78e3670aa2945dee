//! Scenarios that run against a real SQL Server when `UPSHIFT_TEST_MSSQL`
//! holds an ADO.NET connection string to a throwaway database whose name
//! starts with `upshift_test` (the tests create and drop tables in it), and
//! against the stand-in's TM model otherwise. Tests that need scripted
//! faults (deadlock 1205, a dropped connection, the crash bookkeeping of the
//! model) live in the other `sql_*` files and always use the stand-in; this
//! file prints which ones a real server does not cover.
#![cfg(feature = "sql-standin")]

mod sql_support;

use sql_support::*;
use upshift_steps::kinds::sql::connection::connection_table_from_ado;
use upshift_steps::sql_standin::{StandinServer, TmDatabaseModel};
use upshift_steps::{Probe, StepError};

enum Target {
    Standin(StandinServer, TmDatabaseModel),
    Real(toml::Table),
}

const NOT_ON_A_REAL_SERVER: &[&str] = &[
    "sql_exec: deadlock_is_transient..., dropped_connection..., typed parameters as seen by the server",
    "sql_db: crash_after_commit..., deadlock_in_a_script..., application lock held by another session",
    "sql_backup: all (needs a server-side backup directory and the model's file bookkeeping)",
    "sql_agent_jobs: all (would delete jobs in msdb)",
    "sql_secrets: the echoing server",
];

async fn target(test: &str) -> Option<Target> {
    match real_server() {
        None => {
            // Straight to stderr (not println!): the test harness hides a
            // passing test's prints, and this must be seen.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "{test}: real SQL Server SKIPPED (UPSHIFT_TEST_MSSQL is not set); ran against the TDS stand-in only"
            );
            let model = TmDatabaseModel::new("0.9");
            let server = standin(model.clone()).await;
            Some(Target::Standin(server, model))
        }
        Some(ado) => {
            let table = connection_table_from_ado(&ado).expect("UPSHIFT_TEST_MSSQL parses");
            let db = table["database"]
                .as_str()
                .unwrap_or_default()
                .to_lowercase();
            if !db.starts_with("upshift_test") {
                println!(
                    "{test}: skipped: UPSHIFT_TEST_MSSQL must name a throwaway database called upshift_test*, not `{db}`"
                );
                return None;
            }
            println!(
                "{test}: against the real server; not covered there: {NOT_ON_A_REAL_SERVER:?}"
            );
            Some(Target::Real(table))
        }
    }
}

impl Target {
    fn with(&self, extra: &str) -> toml::Table {
        match self {
            Target::Standin(server, _) => with(server, extra),
            Target::Real(conn) => {
                let mut t: toml::Table = toml::from_str(extra).unwrap();
                t.insert("connection".into(), toml::Value::Table(conn.clone()));
                t
            }
        }
    }
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const SETUP: &str = "IF OBJECT_ID(N'[upshift].[schema_history]', N'U') IS NOT NULL DROP TABLE [upshift].[schema_history];
GO
IF OBJECT_ID(N'[dbo].[upshift_rt_items]', N'U') IS NOT NULL DROP TABLE [dbo].[upshift_rt_items];
GO
IF OBJECT_ID(N'[dbo].[DatabaseVersion]', N'U') IS NULL
CREATE TABLE [dbo].[DatabaseVersion] ([Id] int IDENTITY(1,1) PRIMARY KEY, [Version] nvarchar(50) NOT NULL, [AppliedAt] datetime2(3) NOT NULL DEFAULT SYSUTCDATETIME());
GO
DELETE FROM [dbo].[DatabaseVersion];
GO
";

#[tokio::test]
async fn exec_check_and_update_end_to_end() {
    let Some(t) = target("exec_check_and_update_end_to_end").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let setup = write(dir.path(), "setup.sql", SETUP);
    build(
        "sql.script",
        &t.with(&format!("file = '{}'", setup.display())),
    )
    .unwrap()
    .run(&ctx(&dir))
    .await
    .unwrap();
    let out = build(
        "sql.exec",
        &t.with(
            "sql = 'INSERT INTO [dbo].[DatabaseVersion] ([Version]) VALUES (@v)'\nparams = [{ name = '@v', type = 'nvarchar', value = '1.0' }]",
        ),
    )
    .unwrap()
    .run(&ctx(&dir))
    .await
    .unwrap()
    .outputs;
    assert_eq!(out["rows_affected"], "1");
    let check = build(
        "db.check",
        &t.with("target_version = '1.2'\nversions = ['1.0', '1.1', '1.2']"),
    )
    .unwrap()
    .run(&ctx(&dir))
    .await
    .unwrap()
    .outputs;
    assert_eq!(check["current_version"], "1.0");
    assert_eq!(check["path"], "1.1,1.2");

    let scripts = tempfile::tempdir().unwrap();
    write(
        scripts.path(),
        "1.0_to_1.1.sql",
        "CREATE TABLE [dbo].[upshift_rt_items] ([id] int NOT NULL);\nGO\nINSERT INTO [dbo].[upshift_rt_items] ([id]) VALUES (1);\nGO 2\nINSERT INTO [dbo].[DatabaseVersion] ([Version]) VALUES (N'1.1');\nGO\n",
    );
    write(
        scripts.path(),
        "1.1_to_1.2.sql",
        "ALTER TABLE [dbo].[upshift_rt_items] ADD [name] nvarchar(20) NULL;\nGO\nINSERT INTO [dbo].[DatabaseVersion] ([Version]) VALUES (N'1.2');\n",
    );
    let update = t.with(&format!(
        "target_version = '1.2'\nscripts_dir = '{}'\nexpect_path = '1.1,1.2'",
        scripts.path().display()
    ));
    let step = build("db.update", &update).unwrap();
    assert!(matches!(
        step.probe(&ctx(&dir)).await.unwrap(),
        Probe::Differs(_)
    ));
    let out = step.run(&ctx(&dir)).await.unwrap().outputs;
    assert_eq!(out["applied"], "1.0_to_1.1.sql,1.1_to_1.2.sql");
    assert_eq!(out["version"], "1.2");
    assert_eq!(step.probe(&ctx(&dir)).await.unwrap(), Probe::InPlace);
    if let Target::Standin(_, model) = &t {
        assert_eq!(model.version(), "1.2");
        assert_eq!(model.state().db.history.len(), 2);
    }
    // Again: nothing to do.
    let again = step.run(&ctx(&dir)).await.unwrap().outputs;
    assert_eq!(again["applied"], "");
    if let Target::Real(_) = t {
        let n = build(
            "sql.exec",
            &t.with("sql = 'SELECT COUNT(*) AS n FROM [dbo].[upshift_rt_items]'\nfirst_row = true"),
        )
        .unwrap()
        .run(&ctx(&dir))
        .await
        .unwrap()
        .outputs;
        assert_eq!(n["col.n"], "2", "GO 2 ran the insert twice");
    }
    // Editing an applied script is refused.
    write(
        scripts.path(),
        "1.0_to_1.1.sql",
        "CREATE TABLE [dbo].[upshift_rt_items] ([id] bigint NOT NULL);\nGO\n",
    );
    let err = build("db.update", &update)
        .unwrap()
        .run(&ctx(&dir))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("edited after it ran"), "{err}");
}

#[tokio::test]
async fn a_command_timeout_cancels_the_running_batch() {
    let Some(t) = target("a_command_timeout_cancels_the_running_batch").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "wait.sql", "WAITFOR DELAY '00:00:30';\n");
    let err = build(
        "sql.script",
        &t.with(&format!(
            "file = '{}'\ncommand_timeout = '500ms'",
            file.display()
        )),
    )
    .unwrap()
    .run(&ctx(&dir))
    .await
    .unwrap_err();
    assert!(
        matches!(&err, StepError::Failed { transient: false, message } if message.contains("attention acknowledged")),
        "{err:?}"
    );
    if let Target::Standin(server, _) = &t {
        assert_eq!(server.attentions(), 1);
    }
}

#[tokio::test]
async fn a_script_resumes_after_its_last_durable_batch() {
    let Some(t) = target("a_script_resumes_after_its_last_durable_batch").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "s.sql",
        "SELECT 1;\nGO\nSELECT 2;\nGO 3\nSELECT 3;\n",
    );
    let step = build(
        "sql.script",
        &t.with(&format!("file = '{}'", file.display())),
    )
    .unwrap();
    let mut first = ctx(&dir);
    first.fail_checkpoint_at = Some(2);
    step.run(&first).await.unwrap_err();
    let mut second = ctx(&dir);
    second.resume = first.last_checkpoint();
    let out = step.run(&second).await.unwrap().outputs;
    assert_eq!(out["batches"], "3");
    assert_eq!(out["ran"], "4", "batch 2 (3 runs) and batch 3");
}
