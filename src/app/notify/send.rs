//! Delivering one message to one notifier, once: an HTTP POST (ureq; TLS
//! by rustls with the OS trust store off Windows, SChannel on Windows;
//! `HTTPS_PROXY`/`NO_PROXY` honoured) or a command run with the message on
//! stdin. Retries and journaling are the worker's (`super`); this file
//! only says what one attempt did and whether another may help.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::message::Message;
use crate::plan::WebhookFormat;

/// Bytes of a receiver's answer (HTTP body, a command's stderr) kept for
/// the journal.
pub const ANSWER_BYTES_MAX: usize = 512;

/// How one attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What happened, in words (not yet redacted).
    pub detail: String,
    /// Another attempt may succeed (network errors, timeouts, HTTP 5xx,
    /// 408, 429); a 4xx says the message or address is wrong.
    pub retry: bool,
    /// The receiver asked to wait this long first (`Retry-After`).
    pub retry_after: Option<Duration>,
}

/// Where a message goes.
pub enum Channel {
    /// An HTTP POST.
    Webhook {
        /// The resolved URL (a secret).
        url: String,
        /// The body's format.
        format: WebhookFormat,
        /// The client, with the attempt's timeout.
        agent: ureq::Agent,
        /// That timeout (for messages).
        timeout: Duration,
    },
    /// A program, with the message on stdin and in `UPSHIFT_NOTIFY_*`.
    Command {
        /// Program and arguments (no secrets).
        argv: Vec<String>,
        /// `[notify] env`, resolved.
        env: Vec<(String, String)>,
        /// Limit of one run.
        timeout: Duration,
    },
}

impl Channel {
    /// `webhook` or `command`, as journaled.
    pub fn name(&self) -> &'static str {
        match self {
            Channel::Webhook { .. } => "webhook",
            Channel::Command { .. } => "command",
        }
    }

    /// One attempt: what the receiver answered, or why not.
    pub fn send(&self, msg: &Message) -> Result<String, Failure> {
        match self {
            Channel::Webhook {
                url,
                format,
                agent,
                timeout,
            } => post(agent, url, &msg.body(*format), *timeout),
            Channel::Command { argv, env, timeout } => run(argv, env, msg, *timeout),
        }
    }
}

/// The HTTP client for a webhook: `timeout` bounds a whole attempt
/// (connect, TLS, request, answer); redirects are not followed (a webhook
/// that moved is an error to fix, and a POST is not replayed elsewhere).
pub fn agent(timeout: Duration) -> Result<ureq::Agent, String> {
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("upshift/", env!("CARGO_PKG_VERSION")))
        .tls_config(tls()?)
        .build();
    Ok(config.into())
}

#[cfg(windows)]
fn tls() -> Result<ureq::tls::TlsConfig, String> {
    use ureq::tls::{RootCerts, TlsConfig, TlsProvider};
    // SChannel with the machine's trust store (the one Teams' certificate
    // chains to, and the one an intercepting corporate proxy's CA is in).
    Ok(TlsConfig::builder()
        .provider(TlsProvider::NativeTls)
        .root_certs(RootCerts::PlatformVerifier)
        .build())
}

#[cfg(not(windows))]
fn tls() -> Result<ureq::tls::TlsConfig, String> {
    use std::sync::Arc;

    use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
    // The OS trust store, as http.check uses it; an empty store is only an
    // error for https webhooks, when the handshake fails.
    let found = rustls_native_certs::load_native_certs();
    let certs: Vec<Certificate<'static>> = found
        .certs
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    Ok(TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(RootCerts::new_with_certs(&certs))
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .build())
}

fn post(agent: &ureq::Agent, url: &str, body: &[u8], timeout: Duration) -> Result<String, Failure> {
    let sent = agent
        .post(url)
        .header("Content-Type", "application/json; charset=utf-8")
        .send(body);
    let mut resp = match sent {
        Ok(r) => r,
        Err(e) => {
            let retry = !matches!(
                e,
                ureq::Error::BadUri(_) | ureq::Error::Http(_) | ureq::Error::InvalidProxyUrl
            );
            return Err(Failure {
                detail: http_error_text(&e, timeout),
                retry,
                retry_after: None,
            });
        }
    };
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut answer = Vec::new();
    let _ = resp
        .body_mut()
        .as_reader()
        .take(ANSWER_BYTES_MAX as u64)
        .read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).trim().to_string();
    let detail = if answer.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {answer}")
    };
    if status.is_success() {
        Ok(detail)
    } else {
        let code = status.as_u16();
        Err(Failure {
            detail,
            retry: status.is_server_error() || code == 408 || code == 429,
            retry_after,
        })
    }
}

/// An HTTP error in words, without the URL: ureq's own texts may carry it
/// (`BadUri`), and a webhook's URL is its credential. The worker redacts
/// every detail again, with the URL's pieces.
fn http_error_text(e: &ureq::Error, timeout: Duration) -> String {
    match e {
        ureq::Error::Timeout(_) => format!(
            "no answer within {} (the attempt's timeout)",
            humantime::format_duration(timeout)
        ),
        ureq::Error::HostNotFound => "the webhook's host name does not resolve".into(),
        ureq::Error::Io(io) => format!("connection failed: {io}"),
        ureq::Error::ConnectionFailed => "connection failed".into(),
        ureq::Error::BadUri(_) => "the webhook is not a valid URL".into(),
        ureq::Error::InvalidProxyUrl => "the proxy setting (HTTPS_PROXY) is not a valid URL".into(),
        other => other.to_string(),
    }
}

fn run(
    argv: &[String],
    env: &[(String, String)],
    msg: &Message,
    timeout: Duration,
) -> Result<String, Failure> {
    let fail = |detail: String| Failure {
        detail,
        retry: true,
        retry_after: None,
    };
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .envs(msg.env())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Failure {
            detail: format!("cannot start `{}`: {e}", argv[0]),
            retry: false,
            retry_after: None,
        })?;
    // Written and read on threads of their own: a command that reads
    // nothing, or writes much, must not stall this one past its timeout.
    let mut stdin = child.stdin.take().expect("piped");
    let body = serde_json::to_vec(&msg.json()).expect("a JSON value serializes");
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&body);
    });
    let mut stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut tail: Vec<u8> = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > 2 * ANSWER_BYTES_MAX {
                tail.drain(..tail.len() - ANSWER_BYTES_MAX);
            }
        }
        let keep = tail.len().saturating_sub(ANSWER_BYTES_MAX);
        String::from_utf8_lossy(&tail[keep..]).trim().to_string()
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(fail(format!("waiting for `{}`: {e}", argv[0]))),
        }
    };
    let _ = writer.join();
    // A grandchild holding stderr open would keep the reader waiting: it
    // is only joined when the command itself ended.
    let said = match status {
        Some(_) => reader.join().unwrap_or_default(),
        None => String::new(),
    };
    let with_said = |head: String| {
        if said.is_empty() {
            head
        } else {
            format!("{head}: {said}")
        }
    };
    match status {
        None => Err(fail(format!(
            "`{}` did not finish within {}; killed",
            argv[0],
            humantime::format_duration(timeout)
        ))),
        Some(s) if s.success() => Ok(with_said(format!("`{}` exited 0", argv[0]))),
        Some(s) => Err(fail(with_said(format!("`{}` {s}", argv[0])))),
    }
}
