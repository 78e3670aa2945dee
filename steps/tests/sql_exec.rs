//! `sql.exec` through tiberius against the stand-in.
#![cfg(feature = "sql-standin")]

mod sql_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sql_support::*;
use upshift_steps::StepError;
use upshift_steps::sql_standin::{Action, ColType, Message, Request, ResultSet, SqlValue};

#[tokio::test]
async fn exec_passes_typed_parameters_and_reports_rows_affected() {
    let seen: Arc<Mutex<Vec<Request>>> = Arc::default();
    let s2 = seen.clone();
    let server = standin(move |r: &Request| {
        s2.lock().unwrap().push(r.clone());
        vec![Action::Done { rows_affected: 3 }]
    })
    .await;
    let w = with(
        &server,
        r#"
sql = "UPDATE t SET v = @v WHERE name = @name"
params = [
  { name = "@v", type = "int", value = 5 },
  { name = "@name", type = "nvarchar", value = "O'Brien" },
  { name = "@none", type = "bigint" },
]
"#,
    );
    let step = build("sql.exec", &w).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = step.run(&ctx(&dir)).await.unwrap();
    assert_eq!(out.outputs["rows_affected"], "3");
    let reqs = seen.lock().unwrap();
    let r = reqs.last().unwrap();
    // The statement travels as a parameter of a nested sp_executesql, the
    // values as typed parameters: nothing is spliced into the text.
    assert_eq!(
        r.text,
        "EXEC sp_executesql @P1, @P2, @v = @P3, @name = @P4, @none = @P5"
    );
    assert_eq!(
        r.param("@P1"),
        Some(&SqlValue::NVarChar(
            "UPDATE t SET v = @v WHERE name = @name".into()
        ))
    );
    assert_eq!(
        r.param("@P2"),
        Some(&SqlValue::NVarChar(
            "@v int, @name nvarchar(max), @none bigint".into()
        ))
    );
    assert_eq!(r.param("@P3"), Some(&SqlValue::Int(5)));
    assert_eq!(r.param("@P4"), Some(&SqlValue::NVarChar("O'Brien".into())));
    assert!(matches!(
        r.param("@P5"),
        Some(SqlValue::Null | SqlValue::BigInt(_))
    ));
    assert!(!r.text.contains("O'Brien"));
}

#[tokio::test]
async fn exec_first_row_outputs_columns_of_every_type() {
    let server = standin(|_r: &Request| {
        let dt = chrono::NaiveDate::from_ymd_opt(2026, 11, 24)
            .unwrap()
            .and_hms_opt(2, 25, 0)
            .unwrap();
        vec![Action::Rows(
            ResultSet::new(&[
                ("i", ColType::Int),
                ("b", ColType::BigInt),
                ("s", ColType::NVarChar),
                ("x", ColType::VarBinary),
                ("d", ColType::DateTime2),
                ("f", ColType::Bit),
                ("n", ColType::NVarChar),
            ])
            .row(vec![
                SqlValue::Int(7),
                SqlValue::BigInt(1 << 40),
                SqlValue::NVarChar("7.2 Grüße".into()),
                SqlValue::VarBinary(vec![0xde, 0xad]),
                SqlValue::DateTime2(dt),
                SqlValue::Bit(true),
                SqlValue::Null,
            ])
            .row(vec![
                SqlValue::Int(8),
                SqlValue::Null,
                SqlValue::Null,
                SqlValue::Null,
                SqlValue::Null,
                SqlValue::Null,
                SqlValue::Null,
            ]),
        )]
    })
    .await;
    let step = build(
        "sql.exec",
        &with(&server, "sql = \"SELECT 1\"\nfirst_row = true"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = step.run(&ctx(&dir)).await.unwrap().outputs;
    assert_eq!(out["rows"], "2");
    assert_eq!(out["col.i"], "7");
    assert_eq!(out["col.b"], (1i64 << 40).to_string());
    assert_eq!(out["col.s"], "7.2 Grüße");
    assert_eq!(out["col.x"], "dead");
    assert_eq!(out["col.d"], "2026-11-24T02:25:00");
    assert_eq!(out["col.f"], "true");
    assert_eq!(out["col.n"], "");
}

#[tokio::test]
async fn deadlock_is_transient_and_carries_the_server_details() {
    let server =
        standin(|_r: &Request| vec![Action::Error(Message::deadlock().at("usp_Move", 12))]).await;
    let step = build("sql.exec", &with(&server, "sql = \"EXEC usp_Move\"")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = step.run(&ctx(&dir)).await.unwrap_err();
    let StepError::Failed { message, transient } = err else {
        panic!("expected a failure, got {err:?}");
    };
    assert!(transient, "1205 must be transient: {message}");
    for part in [
        "1205",
        "severity 13",
        "state 51",
        "procedure usp_Move",
        "line 12",
        "deadlock",
    ] {
        assert!(message.contains(part), "`{part}` missing in: {message}");
    }
    assert_no_password("deadlock message", &message);
}

#[tokio::test]
async fn other_server_errors_are_permanent() {
    let server = standin(|_r: &Request| {
        vec![Action::Error(
            Message::error(208, "Invalid object name 'nope'.").at("", 3),
        )]
    })
    .await;
    let step = build("sql.exec", &with(&server, "sql = \"SELECT * FROM nope\"")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = step.run(&ctx(&dir)).await.unwrap_err();
    assert!(
        matches!(&err, StepError::Failed { transient: false, message } if message.contains("error 208") && message.contains("line 3")),
        "{err:?}"
    );
}

#[tokio::test]
async fn command_timeout_cancels_the_batch_on_the_server() {
    let server = standin(|_r: &Request| {
        vec![
            Action::Delay(Duration::from_secs(60)),
            Action::Done { rows_affected: 1 },
        ]
    })
    .await;
    let step = build(
        "sql.exec",
        &with(
            &server,
            "sql = \"EXEC [Reporting].[usp_DataLoader]\"\ncommand_timeout = \"300ms\"",
        ),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = step.run(&ctx(&dir)).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("command timeout"), "{msg}");
    assert!(msg.contains("attention acknowledged"), "{msg}");
    assert_eq!(server.attentions(), 1, "the stand-in saw the attention");
}

#[tokio::test]
async fn dropped_connection_mid_batch_is_transient() {
    let server = standin(|_r: &Request| vec![Action::DropConnection]).await;
    let step = build("sql.exec", &with(&server, "sql = \"SELECT 1\"")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = step.run(&ctx(&dir)).await.unwrap_err();
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
}

#[tokio::test]
async fn unreachable_server_is_transient() {
    // A port nothing listens on: bind, read the port, close.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut w: toml::Table = toml::from_str("sql = \"SELECT 1\"").unwrap();
    let mut c = toml::Table::new();
    c.insert("host".into(), "127.0.0.1".into());
    c.insert("port".into(), i64::from(port).into());
    c.insert("database".into(), "TM".into());
    c.insert("user".into(), "upshift".into());
    c.insert("password".into(), PASSWORD.into());
    c.insert("encrypt".into(), "none".into());
    w.insert("connection".into(), toml::Value::Table(c));
    let step = build("sql.exec", &w).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = step.run(&ctx(&dir)).await.unwrap_err();
    assert!(
        matches!(
            &err,
            StepError::Failed {
                transient: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert_no_password("connect error", &err.to_string());
}

#[tokio::test]
async fn requests_and_results_larger_than_a_packet() {
    let long = format!("SELECT 1 /* {} */", "x".repeat(30_000));
    let expected = long.clone();
    let server = standin(move |r: &Request| {
        assert_eq!(r.text, expected, "a 60 KB request arrives whole");
        let mut rs = ResultSet::new(&[("n", ColType::Int), ("s", ColType::NVarChar)]);
        for i in 0..2000 {
            rs = rs.row(vec![
                SqlValue::Int(i),
                SqlValue::NVarChar(format!("row {i:04} {}", "y".repeat(80))),
            ]);
        }
        vec![Action::Rows(rs)]
    })
    .await;
    let mut w = with(&server, "first_row = true");
    w.insert("sql".into(), long.into());
    let dir = tempfile::tempdir().unwrap();
    let out = build("sql.exec", &w)
        .unwrap()
        .run(&ctx(&dir))
        .await
        .unwrap()
        .outputs;
    assert_eq!(out["rows"], "2000");
    assert_eq!(out["col.n"], "0");
    assert!(out["col.s"].starts_with("row 0000 yyy"));
}

#[tokio::test]
async fn a_connection_dropped_after_part_of_the_reply_is_transient() {
    let server = standin(|_r: &Request| {
        vec![
            Action::Info(Message::info(3211, "10 percent processed.")),
            Action::Delay(Duration::from_millis(20)),
            Action::DropConnection,
        ]
    })
    .await;
    let step = build("sql.exec", &with(&server, "sql = \"EXEC long_thing\"")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = step.run(&ctx(&dir)).await.unwrap_err();
    assert!(
        matches!(&err, StepError::Failed { transient: true, message } if message.contains("connection lost")),
        "{err:?}"
    );
}

#[tokio::test]
async fn every_parameter_type_reaches_the_server_typed() {
    let seen: Arc<Mutex<Vec<Request>>> = Arc::default();
    let s2 = seen.clone();
    let server = standin(move |r: &Request| {
        s2.lock().unwrap().push(r.clone());
        vec![Action::Done { rows_affected: 0 }]
    })
    .await;
    let w = with(
        &server,
        r#"
sql = "EXEC dbo.p @i, @b, @s, @f, @d, @x, @n"
params = [
  { name = "@i", type = "int", value = "-7" },
  { name = "@b", type = "bigint", value = 9000000000 },
  { name = "@s", type = "nvarchar", value = "Zürich ✓" },
  { name = "@f", type = "bit", value = true },
  { name = "@d", type = "datetime2", value = "2026-11-24T02:25:13.5" },
  { name = "@x", type = "varbinary", value = "0xCAFE" },
  { name = "@n", type = "nvarchar" },
]
"#,
    );
    let dir = tempfile::tempdir().unwrap();
    build("sql.exec", &w)
        .unwrap()
        .run(&ctx(&dir))
        .await
        .unwrap();
    let r = seen.lock().unwrap().last().cloned().unwrap();
    let dt = chrono::NaiveDate::from_ymd_opt(2026, 11, 24)
        .unwrap()
        .and_hms_milli_opt(2, 25, 13, 500)
        .unwrap();
    assert_eq!(r.param("@P3"), Some(&SqlValue::Int(-7)));
    assert_eq!(r.param("@P4"), Some(&SqlValue::BigInt(9_000_000_000)));
    assert_eq!(r.param("@P5"), Some(&SqlValue::NVarChar("Zürich ✓".into())));
    assert_eq!(r.param("@P6"), Some(&SqlValue::Bit(true)));
    assert_eq!(r.param("@P7"), Some(&SqlValue::DateTime2(dt)));
    assert_eq!(r.param("@P8"), Some(&SqlValue::VarBinary(vec![0xca, 0xfe])));
    assert_eq!(r.param("@P9"), Some(&SqlValue::Null));
    assert_eq!(
        r.param("@P2"),
        Some(&SqlValue::NVarChar(
            "@i int, @b bigint, @s nvarchar(max), @f bit, @d datetime2(7), @x varbinary(max), @n nvarchar(max)".into()
        ))
    );
}
