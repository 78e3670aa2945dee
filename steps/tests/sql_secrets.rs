//! The password of a `connection` table never appears in a describe() line,
//! an error, an output, captured output, progress, or a tracing event (ours
//! or tiberius'), even when the server echoes it back.
#![cfg(feature = "sql-standin")]

mod sql_support;

use std::sync::{Arc, Mutex};

use sql_support::*;
use tracing::instrument::WithSubscriber;
use upshift_steps::sql_standin::{
    Action, Message, Request, StandinOptions, StandinServer, TmDatabaseModel,
};

/// Every kind with a `with` table (beside `connection`) that builds.
fn kinds(scripts: &std::path::Path, file: &std::path::Path) -> Vec<(&'static str, String)> {
    vec![
        ("sql.exec", "sql = 'SELECT 1'\nfirst_row = true".into()),
        (
            "sql.exec",
            "sql = 'SELECT @v'\nparams = [{ name = '@v', type = 'nvarchar', value = 'x' }]".into(),
        ),
        ("sql.script", format!("file = '{}'", file.display())),
        ("sql.backup", "directory = 'D:\\Backup'".into()),
        ("sql.restore", "path = 'D:\\Backup\\TM.bak'".into()),
        (
            "db.check",
            "target_version = '7.2'\nversions = ['7.0', '7.1', '7.2']".into(),
        ),
        (
            "db.update",
            format!(
                "target_version = '8.0'\nscripts_dir = '{}'",
                scripts.display()
            ),
        ),
        ("sql.agent_jobs.remove", String::new()),
    ]
}

/// Collects every tracing event's fields as text.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<String>>);

struct Fields<'a>(&'a mut String);
impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={v:?} ", f.name()));
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, a: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut s = self.0.lock().unwrap();
        a.record(&mut Fields(&mut s));
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, r: &tracing::span::Record<'_>) {
        r.record(&mut Fields(&mut self.0.lock().unwrap()));
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, e: &tracing::Event<'_>) {
        let mut s = self.0.lock().unwrap();
        e.record(&mut Fields(&mut s));
        s.push('\n');
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

async fn check_every_kind(server: &StandinServer, what: &str) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.sql");
    std::fs::write(&file, "SELECT 1\nGO\nSELECT 2\n").unwrap();
    let scripts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plans/sql");
    let mut failures = 0;
    for (kind, extra) in kinds(&scripts, &file) {
        let step = build(kind, &with(server, &extra)).unwrap();
        for line in step.describe() {
            assert_no_password(&format!("{kind} describe"), &line);
        }
        let cx = ctx(&dir);
        let capture = Capture::default();
        let result = step.run(&cx).with_subscriber(capture.clone()).await;
        match &result {
            Ok(out) => {
                for (k, v) in &out.outputs {
                    assert_no_password(&format!("{kind} output {k} ({what})"), v);
                }
            }
            Err(e) => {
                failures += 1;
                assert_no_password(&format!("{kind} error ({what})"), &e.to_string());
                assert_no_password(&format!("{kind} error debug ({what})"), &format!("{e:?}"));
            }
        }
        assert_no_password(&format!("{kind} captured output"), &cx.output_text());
        for p in cx.progress.lock().unwrap().iter() {
            assert_no_password(&format!("{kind} progress"), &p.2);
        }
        let traced = capture.0.lock().unwrap().clone();
        assert!(!traced.is_empty() || result.is_ok(), "the capture works");
        assert_no_password(&format!("{kind} tracing ({what})"), &traced);
        if step.has_compensation()
            && let Err(e) = step.compensate(&cx).await
        {
            assert_no_password(&format!("{kind} compensation error"), &e.to_string());
        }
    }
    failures
}

#[tokio::test]
async fn password_never_leaks_when_the_server_echoes_it() {
    // A hostile server: every request fails with the password in the text.
    let server = standin(|_r: &Request| {
        vec![Action::Error(
            Message::error(102, format!("Incorrect syntax near '{PASSWORD}'.")).at(PASSWORD, 1),
        )]
    })
    .await;
    let failures = check_every_kind(&server, "echoing server").await;
    assert_eq!(failures, 8, "every kind failed against the echoing server");
}

#[tokio::test]
async fn password_never_leaks_on_success() {
    let model = TmDatabaseModel::new("7.0")
        .with_agent_job("job", "EXEC [mgt].[usp_CleanupReporting_DboSchema]");
    let server = standin(model).await;
    check_every_kind(&server, "TM model").await;
}

#[tokio::test]
async fn a_refused_login_does_not_show_the_password_tried() {
    let server = StandinServer::start_with(
        Arc::new(|_r: &Request| vec![Action::Done { rows_affected: 0 }]),
        StandinOptions {
            credentials: Some(("upshift".into(), "the-right-one".into())),
        },
    )
    .await
    .unwrap();
    let failures = check_every_kind(&server, "wrong password").await;
    assert_eq!(failures, 8);
    assert!(server.logins().iter().all(|l| !l.accepted));
}

#[tokio::test]
async fn a_password_spliced_into_a_statement_is_redacted_too() {
    // A plan that puts the secret into the SQL text itself (it should use a
    // parameter): describe, output and result columns still hide it.
    let server = standin(|_r: &Request| {
        vec![Action::Rows(
            upshift_steps::sql_standin::ResultSet::new(&[(
                "pw",
                upshift_steps::sql_standin::ColType::NVarChar,
            )])
            .row(vec![upshift_steps::sql_standin::SqlValue::NVarChar(
                PASSWORD.into(),
            )]),
        )]
    })
    .await;
    let sql = format!("SELECT N'{PASSWORD}' AS pw");
    let mut w = with(&server, "first_row = true");
    w.insert("sql".into(), sql.into());
    let step = build("sql.exec", &w).unwrap();
    let lines = step.describe().join("\n");
    assert_no_password("describe", &lines);
    assert!(lines.contains("<redacted>"), "{lines}");
    let dir = tempfile::tempdir().unwrap();
    let cx = ctx(&dir);
    let out = step.run(&cx).await.unwrap().outputs;
    assert_eq!(out["col.pw"], "<redacted>");
    assert_no_password("output", &cx.output_text());
}
