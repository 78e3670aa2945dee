//! `plans/tm-database.toml` builds with these kinds and runs D1-D6 against
//! the stand-in's TM model (a stand-in for what `upshift demo` does; the
//! `${...}` resolution here is a minimal copy of the engine's, for the test).
#![cfg(feature = "sql-standin")]

mod sql_support;

use std::collections::BTreeMap;
use std::path::Path;

use sql_support::*;
use upshift_steps::Outputs;
use upshift_steps::sql_standin::{StandinServer, TmDatabaseModel};

const ORDER: [&str; 6] = [
    "backup",
    "push_reporting",
    "check_version",
    "update",
    "remove_cleanup_jobs",
    "push_reporting_again",
];

fn plan() -> toml::Table {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    toml::from_str(&std::fs::read_to_string(root.join("plans/tm-database.toml")).unwrap()).unwrap()
}

fn resolve(
    v: &toml::Value,
    vars: &BTreeMap<String, String>,
    outputs: &BTreeMap<String, Outputs>,
) -> toml::Value {
    match v {
        toml::Value::String(s) => {
            let mut out = s.clone();
            while let Some(start) = out.find("${") {
                let end = start + out[start..].find('}').expect("closed reference");
                let key = &out[start + 2..end];
                let value = if let Some(k) = key.strip_prefix("vars.") {
                    vars[k].clone()
                } else if key == "secrets.sql_password" {
                    PASSWORD.to_string()
                } else if let Some(rest) = key.strip_prefix("steps.") {
                    let (step, name) = rest.split_once(".outputs.").expect("step output reference");
                    outputs[step][name].clone()
                } else {
                    panic!("unknown reference {key}");
                };
                out.replace_range(start..=end, &value);
            }
            toml::Value::String(out)
        }
        toml::Value::Table(t) => toml::Value::Table(
            t.iter()
                .map(|(k, v)| (k.clone(), resolve(v, vars, outputs)))
                .collect(),
        ),
        toml::Value::Array(a) => {
            toml::Value::Array(a.iter().map(|v| resolve(v, vars, outputs)).collect())
        }
        other => other.clone(),
    }
}

/// The resolved `with` table of step `id`, its target pointed at `server`.
fn step_with(
    plan: &toml::Table,
    id: &str,
    server: &StandinServer,
    outputs: &BTreeMap<String, Outputs>,
) -> toml::Table {
    let mut vars: BTreeMap<String, String> = plan["vars"]
        .as_table()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plans/sql");
    vars.insert("scripts_dir".into(), scripts.display().to_string());
    let step = plan["steps"][id].as_table().unwrap();
    let mut with = resolve(&step["with"], &vars, outputs)
        .as_table()
        .unwrap()
        .clone();
    let target = with
        .remove("target")
        .expect("every DB step uses the tm target");
    let mut conn = resolve(&plan["targets"][target.as_str().unwrap()], &vars, outputs)
        .as_table()
        .unwrap()
        .clone();
    conn.insert("host".into(), "127.0.0.1".into());
    conn.insert("port".into(), i64::from(server.port()).into());
    conn.insert("encrypt".into(), "none".into());
    with.insert("connection".into(), toml::Value::Table(conn));
    with
}

#[test]
fn every_step_of_the_plan_builds_and_the_order_is_d1_to_d6() {
    let plan = plan();
    let steps = plan["steps"].as_table().unwrap();
    assert_eq!(steps.len(), ORDER.len());
    for (i, id) in ORDER.iter().enumerate() {
        let needs: Vec<&str> = steps[*id]
            .get("needs")
            .map(|n| {
                n.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        let want: Vec<&str> = if i == 0 { vec![] } else { vec![ORDER[i - 1]] };
        assert_eq!(needs, want, "{id}");
    }
    assert_eq!(steps["update"]["on_failure"].as_str(), Some("rollback"));
}

#[tokio::test]
async fn the_plan_runs_d1_to_d6_and_rolls_back_to_the_backup() {
    let plan = plan();
    let model = TmDatabaseModel::new("7.0")
        .with_agent_job("TM cleanup", "EXEC [mgt].[usp_CleanupReporting_DboSchema]");
    let server = standin(model.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut outputs: BTreeMap<String, Outputs> = BTreeMap::new();
    for id in ORDER {
        let kind = plan["steps"][id]["kind"].as_str().unwrap();
        let step = build(kind, &step_with(&plan, id, &server, &outputs))
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        let out = step
            .run(&ctx(&dir))
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        outputs.insert(id.to_string(), out.outputs);
    }
    assert_eq!(outputs["check_version"]["path"], "7.1,7.2,8.0");
    assert_eq!(outputs["update"]["version"], "8.0");
    assert_eq!(outputs["remove_cleanup_jobs"]["removed"], "TM cleanup");
    {
        let s = model.state();
        assert_eq!(s.db.version, "8.0");
        assert_eq!(s.data_loader_runs, 2);
        assert!(s.agent_jobs.is_empty());
        assert_eq!(s.backups.len(), 1);
    }
    // A later failure rolls the phase back: the backup's compensation.
    let backup = build("sql.backup", &step_with(&plan, "backup", &server, &outputs)).unwrap();
    let mut cx = ctx(&dir);
    cx.recorded = outputs["backup"].clone();
    backup.compensate(&cx).await.unwrap();
    assert_eq!(model.version(), "7.0");
}
