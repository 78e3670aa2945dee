//! Preflight on a host (`upshift preflight`): a step's read-only checks
//! answered by the host's session itself, without a ticket; a runner older
//! than preflight says so instead of hanging.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use upshift_remote::RemoteError;
use upshift_remote::client::{HostConfig, TransportConfig};
use upshift_remote::protocol::PreflightRequest;
use upshift_steps::preflight::Check;

use crate::support::{local_host, stub};

fn settings_request(file: &str, secret: &str) -> PreflightRequest {
    PreflightRequest {
        step_id: "settings".into(),
        host: "local".into(),
        kind: "config.appsettings".into(),
        with_toml: format!("file = '{file}'\n[set]\nInstanzName = '{secret}'\n"),
        secrets: vec![secret.into()],
        time_limit_ms: 10_000,
        earlier: Vec::new(),
    }
}

#[tokio::test]
async fn a_step_is_checked_on_the_host_without_a_ticket_and_secrets_redacted() {
    const SECRET: &str = "Pf-S3cret-On-Host";
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let host = local_host(&work);
    // A path holding the secret: the finding names it, redacted.
    let missing = dir.path().join(format!("{SECRET}/AppSettings.config"));
    let checks = host
        .preflight(&settings_request(&missing.display().to_string(), SECRET))
        .await
        .unwrap();
    assert_eq!(checks.len(), 1, "{checks:?}");
    let Check::Finding { found, .. } = &checks[0] else {
        panic!("a missing settings file is a finding: {checks:?}");
    };
    assert!(found.contains("AppSettings.config"), "{found}");
    assert!(!found.contains(SECRET), "the secret came back: {found}");
    // A readable, well-formed file: ok.
    let good = dir.path().join("AppSettings.config");
    std::fs::write(
        &good,
        "<appSettings><add key=\"InstanzName\" value=\"TM\"/></appSettings>",
    )
    .unwrap();
    let checks = host
        .preflight(&settings_request(&good.display().to_string(), SECRET))
        .await
        .unwrap();
    assert!(
        checks.iter().all(|c| matches!(c, Check::Ok { .. })),
        "{checks:?}"
    );
    // The host's own state answers too (not Windows here: not checked).
    let state = host.preflight_host().await.unwrap();
    assert!(
        !state.is_empty() && !state.iter().any(Check::is_finding),
        "{state:?}"
    );
    host.close().await;
    // Nothing was made on the host: no ticket, no step folder.
    let tickets = std::fs::read_dir(work.join("tickets")).unwrap().count();
    assert_eq!(tickets, 0, "preflight left a ticket");
    assert!(!work.join("steps").exists(), "preflight made a step folder");
    let everything = walk(&work);
    assert!(
        !everything
            .iter()
            .any(|b| String::from_utf8_lossy(b).contains(SECRET)),
        "the secret is on the host's disk"
    );
}

fn walk(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.push(b);
        }
    }
    out
}

/// A host whose runner predates preflight (its hello lists no `ops`):
/// `preflight` is [`RemoteError::Unsupported`], at once. The old runner
/// is played by a wrapper that hides `ops` from the real one's hello.
#[tokio::test]
async fn a_runner_older_than_preflight_is_unsupported_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old-upshift");
    std::fs::write(
        &old,
        format!(
            "#!/bin/sh\nme=$(sha256sum \"$0\" | cut -d' ' -f1)\n\
             '{stub}' \"$@\" | sed -u -e 's/,\"ops\":\\[[^]]*\\]//' \
             -e \"s/\\\"exe_sha256\\\":\\\"[0-9a-f]*\\\"/\\\"exe_sha256\\\":\\\"$me\\\"/\"\n",
            stub = stub().display()
        ),
    )
    .unwrap();
    Command::new("chmod").arg("755").arg(&old).status().unwrap();
    let mut opts = crate::support::sshd::Lab::options();
    opts.binary = old;
    opts.binary_sha256 = None;
    let host = upshift_remote::RemoteHost::new(
        HostConfig {
            name: "old".into(),
            transport: TransportConfig::Local,
            work_dir: dir.path().join("work").display().to_string(),
        },
        opts,
    )
    .unwrap();
    let facts = host
        .connect()
        .await
        .expect("the old runner still says hello");
    assert!(facts.ops.is_empty(), "{facts:?}");
    let began = std::time::Instant::now();
    let e = host
        .preflight(&settings_request("/nonexistent/AppSettings.config", "x"))
        .await
        .unwrap_err();
    assert!(matches!(e, RemoteError::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("older"), "{e}");
    assert!(began.elapsed().as_secs() < 5, "answered at once");
    host.close().await;
}

/// A request the runner cannot read (an op it does not know) is answered
/// under the request's own id, so the caller is not left waiting.
#[test]
fn an_unknown_request_is_answered_under_its_own_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut serve = Command::new(stub())
        .args(["__remote", "serve", "--work-dir"])
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = serve.stdin.take().unwrap();
    stdin
        .write_all(b"{\"id\":7,\"request\":{\"op\":\"frobnicate\"}}\n")
        .unwrap();
    stdin.flush().unwrap();
    let mut line = String::new();
    BufReader::new(serve.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    drop(stdin); // ends the session
    let status = serve.wait().unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["id"], 7, "{line}");
    assert_eq!(v["reply"]["reply"], "error", "{line}");
    assert!(
        v["reply"]["message"]
            .as_str()
            .unwrap()
            .contains("unreadable request"),
        "{line}"
    );
    assert!(status.success());
}
