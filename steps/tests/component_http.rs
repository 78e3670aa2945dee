//! `http.check` against real HTTP servers on 127.0.0.1 started by the
//! tests (tokio `TcpListener`): up, not up yet (refused, then 503) then up,
//! and a timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use upshift_steps::testing::TestContext;
use upshift_steps::{Probe, Step, StepError, registry};

fn step(url: &str, rest: &str) -> Box<dyn Step> {
    let with: toml::Table = toml::from_str(&format!(
        "url = \"{url}\"\npoll_interval = \"20ms\"\nrequest_timeout = \"2s\"\n{rest}"
    ))
    .unwrap();
    registry().get("http.check").unwrap().build(&with).unwrap()
}

/// Serves forever: the first `fail_first` requests get 503, the rest 200.
/// Returns the number of requests served so far.
fn serve(listener: TcpListener, fail_first: usize) -> Arc<AtomicUsize> {
    let served = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&served);
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let n = count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => got.extend_from_slice(&buf[..k]),
                    }
                }
                let text = String::from_utf8_lossy(&got);
                assert!(text.starts_with("GET /health HTTP/1.1\r\n"), "{text}");
                assert!(text.contains("\r\nHost: 127.0.0.1:"), "{text}");
                let answer = if n < fail_first {
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                } else {
                    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                };
                let _ = sock.write_all(answer.as_bytes()).await;
            });
        }
    });
    served
}

#[tokio::test]
async fn answers_200_at_once() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://127.0.0.1:{}/health", l.local_addr().unwrap().port());
    serve(l, 0);
    let s = step(&url, "");
    let ctx = TestContext::new("http", "/tmp");
    let out = s.run(&ctx).await.unwrap();
    assert_eq!(out.outputs["status"], "200");
    assert_eq!(out.outputs["attempts"], "1");
    assert_eq!(s.probe(&ctx).await.unwrap(), Probe::InPlace);
}

#[tokio::test]
async fn not_up_then_503_then_up() {
    // Take a free port, and listen on it only once the step has seen the
    // connection refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/health");
    let s = step(&url, "timeout = \"2m\"");
    let ctx = TestContext::new("http", "/tmp");
    let starter = async {
        while !ctx.output_text().contains("connecting to 127.0.0.1") {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        serve(TcpListener::bind(("127.0.0.1", port)).await.unwrap(), 2)
    };
    let (result, served) = tokio::join!(s.run(&ctx), starter);
    let out = result.unwrap();
    assert_eq!(out.outputs["status"], "200");
    assert_eq!(served.load(Ordering::SeqCst), 3, "two 503s, then 200");
    let text = ctx.output_text();
    assert!(
        text.contains("503 Service Unavailable (waiting for [200])"),
        "{text}"
    );
    // One line per change of answer, not one per poll.
    assert_eq!(text.matches("503 Service Unavailable").count(), 1, "{text}");
    let attempts: u64 = out.outputs["attempts"].parse().unwrap();
    assert!(
        attempts >= 4,
        "refused at least once, 503 twice, then 200: {attempts}"
    );
}

#[tokio::test]
async fn timeout_is_transient_with_the_last_answer() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://127.0.0.1:{}/health", l.local_addr().unwrap().port());
    serve(l, usize::MAX);
    let s = step(&url, "timeout = \"100ms\"");
    let ctx = TestContext::new("http", "/tmp");
    let e = s.run(&ctx).await.unwrap_err();
    let StepError::Failed { message, transient } = e else {
        panic!()
    };
    assert!(transient);
    assert!(
        message.contains("did not answer [200]")
            && message.contains("last: 503 Service Unavailable"),
        "{message}"
    );
    assert!(matches!(s.probe(&ctx).await.unwrap(), Probe::Differs(d) if d.contains("503")));
}

#[tokio::test]
async fn expected_status_list_and_https_to_a_plain_server_fails_in_tls() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    serve(l, usize::MAX);
    let s = step(
        &format!("http://127.0.0.1:{port}/health"),
        "expect_status = [200, 503]",
    );
    let out = s.run(&TestContext::new("http", "/tmp")).await.unwrap();
    assert_eq!(out.outputs["status"], "503");

    // The https path runs the real TLS client; a server that answers in
    // plain HTTP cannot complete the handshake.
    let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_port = plain.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = plain.accept().await {
            let _ = sock
                .write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                .await;
        }
    });
    let s = step(
        &format!("https://127.0.0.1:{plain_port}/health"),
        "timeout = \"0s\"",
    );
    let e = s
        .run(&TestContext::new("http", "/tmp"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("TLS with 127.0.0.1"), "{e}");
}

#[test]
fn bad_parameters_are_refused() {
    let err = |w: &str| {
        let with: toml::Table = toml::from_str(w).unwrap();
        registry()
            .get("http.check")
            .unwrap()
            .build(&with)
            .err()
            .unwrap()
            .message
    };
    assert!(err("url = \"localhost\"").contains("http://"));
    assert!(err("url = \"http://x/\"\nexpect_status = [42]").contains("statuses"));
    assert!(err("url = \"http://x/\"\ntimeout = \"soon\"").contains("not a duration"));
}
