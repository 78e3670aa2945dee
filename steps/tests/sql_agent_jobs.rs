//! `sql.agent_jobs.remove` through tiberius against the stand-in's model.
#![cfg(feature = "sql-standin")]

mod sql_support;

use sql_support::*;
use upshift_steps::Probe;
use upshift_steps::sql_standin::TmDatabaseModel;

#[tokio::test]
async fn removes_only_jobs_calling_the_procedure() {
    let model = TmDatabaseModel::new("8.0")
        .with_agent_job(
            "TM cleanup reporting",
            "EXEC [mgt].[usp_CleanupReporting_DboSchema]",
        )
        .with_agent_job(
            "TM cleanup (old)",
            "exec mgt.usp_CleanupReporting_DboSchema @days = 3",
        )
        .with_agent_job(
            "Same name, other schema",
            "EXEC dbo.usp_CleanupReporting_DboSchema",
        )
        .with_agent_job("Nightly backup", "BACKUP DATABASE [TM] TO DISK = N'x'");
    let server = standin(model.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let step = build("sql.agent_jobs.remove", &with(&server, "")).unwrap();
    assert!(
        matches!(step.probe(&ctx(&dir)).await.unwrap(), Probe::Differs(m) if m.contains("TM cleanup reporting"))
    );
    let out = step.run(&ctx(&dir)).await.unwrap().outputs;
    assert_eq!(out["count"], "2");
    assert_eq!(out["removed"], "TM cleanup (old),TM cleanup reporting");
    let left: Vec<String> = model
        .state()
        .agent_jobs
        .iter()
        .map(|j| j.name.clone())
        .collect();
    assert_eq!(left, vec!["Same name, other schema", "Nightly backup"]);
    assert_eq!(step.probe(&ctx(&dir)).await.unwrap(), Probe::InPlace);
}

#[tokio::test]
async fn no_matching_job_is_a_no_op() {
    let model =
        TmDatabaseModel::new("8.0").with_agent_job("Nightly backup", "BACKUP DATABASE [TM]");
    let server = standin(model.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let cx = ctx(&dir);
    let out = build("sql.agent_jobs.remove", &with(&server, ""))
        .unwrap()
        .run(&cx)
        .await
        .unwrap()
        .outputs;
    assert_eq!(out["count"], "0");
    assert_eq!(out["removed"], "");
    assert_eq!(model.state().agent_jobs.len(), 1);
    assert_eq!(model.state().count_executed("sp_delete_job"), 0);
    assert!(
        cx.output_text()
            .contains("no SQL Agent job calls [mgt].[usp_CleanupReporting_DboSchema]")
    );
}

#[tokio::test]
async fn another_procedure_can_be_named() {
    let model =
        TmDatabaseModel::new("8.0").with_agent_job("Loader", "EXEC [Reporting].[usp_DataLoader]");
    let server = standin(model.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let out = build(
        "sql.agent_jobs.remove",
        &with(&server, "procedure = 'Reporting.usp_DataLoader'"),
    )
    .unwrap()
    .run(&ctx(&dir))
    .await
    .unwrap()
    .outputs;
    assert_eq!(out["removed"], "Loader");
}
