//! `http.check`: waits until a URL answers with an expected status (an IIS
//! site is running), polling with a timeout.
//!
//! **Client.** A status check needs one GET and one status line, so this is
//! plain HTTP/1.1 over a tokio `TcpStream` (`Connection: close`, only the
//! status line is read; no redirects are followed: a 301/302 is an answer
//! like any other, list it in `expect_status` if it is expected). For
//! `https://` the TLS layer is the platform's own on Windows (SChannel
//! through `native-tls`/`async-native-tls`: pure Rust bindings, no C
//! compiler, already in the Windows graph through tiberius) and rustls with
//! the OS trust store elsewhere (`tokio-rustls`, already in the Linux graph
//! through tiberius). Certificates are always verified.
//!
//! Parameters: `url`, `expect_status` (list, default `[200]`), `timeout`
//! (default `5m`), `poll_interval` (default `2s`), `request_timeout`
//! (default `10s`). Outputs: `status`, `attempts`. Probe: one request.

use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::kinds::KindFn;
use crate::params::duration_text;
use crate::{Outputs, ParamError, Probe, Step, StepContext, StepError, StepOutcome, parse_params};

/// The `http.check` kind.
pub const KIND: KindFn = KindFn {
    name: "http.check",
    summary: "wait until a URL answers with an expected HTTP status (e.g. the IIS site runs)",
    build,
    local_paths: &[],
};

/// A parsed `http://` or `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// Whether it is `https`.
    pub tls: bool,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Url {
    /// Parses a URL; only `http` and `https`, no user info.
    pub fn parse(url: &str) -> Result<Url, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else {
            return Err(format!("`{url}` must start with http:// or https://"));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        let path = path.split('#').next().unwrap_or("/").to_string();
        if authority.contains('@') {
            return Err(format!("`{url}`: user info in URLs is not supported"));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("`{url}`: unclosed `[`"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("`{url}`: bad port `{p}`"))?,
                None if after.is_empty() => default_port,
                None => return Err(format!("`{url}`: bad host")),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().map_err(|_| format!("`{url}`: bad port `{p}`"))?,
                ),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("`{url}`: bad host"));
        }
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("`{url}`: spaces in the path must be written %20"));
        }
        Ok(Url {
            tls,
            host,
            port,
            path,
        })
    }

    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == if self.tls { 443 } else { 80 } {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The request sent.
    pub fn request(&self) -> String {
        format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: upshift-http-check\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            self.path,
            self.host_header()
        )
    }
}

/// Parses a status line `HTTP/1.1 200 OK`.
pub fn parse_status_line(line: &str) -> Result<(u16, String), String> {
    let mut it = line.splitn(3, ' ');
    let version = it.next().unwrap_or("");
    if !version.starts_with("HTTP/") {
        return Err(format!("not an HTTP answer: `{}`", line.escape_default()));
    }
    let code = it
        .next()
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|c| (100..=599).contains(c))
        .ok_or_else(|| format!("bad status line `{}`", line.escape_default()))?;
    Ok((code, it.next().unwrap_or("").trim().to_string()))
}

/// Upper bound on the bytes read before the status line ends.
const STATUS_LINE_MAX: usize = 8192;

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    request: &str,
) -> Result<(u16, String), String> {
    s.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    s.flush()
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(i) = memchr::memmem::find(&buf, b"\r\n") {
            return parse_status_line(&String::from_utf8_lossy(&buf[..i]));
        }
        if buf.len() > STATUS_LINE_MAX {
            return Err("no status line in the first 8 KiB".into());
        }
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        if n == 0 {
            return Err(if buf.is_empty() {
                "the server closed the connection without answering".into()
            } else {
                format!(
                    "incomplete status line `{}`",
                    String::from_utf8_lossy(&buf).escape_default()
                )
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(windows)]
async fn tls_exchange(tcp: tokio::net::TcpStream, url: &Url) -> Result<(u16, String), String> {
    use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};
    let tls = async_native_tls::connect(url.host.as_str(), tcp.compat())
        .await
        .map_err(|e| format!("TLS with {}: {e}", url.host))?;
    exchange(tls.compat(), &url.request()).await
}

#[cfg(not(windows))]
async fn tls_exchange(tcp: tokio::net::TcpStream, url: &Url) -> Result<(u16, String), String> {
    use std::sync::{Arc, OnceLock};

    use tokio_rustls::rustls;

    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    let config = CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err("no trusted root certificates found on this machine".to_string());
            }
            Ok(Arc::new(
                rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            ))
        })
        .clone()?;
    let name = rustls::pki_types::ServerName::try_from(url.host.clone())
        .map_err(|e| format!("`{}` is not a TLS server name: {e}", url.host))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {}: {e}", url.host))?;
    exchange(tls, &url.request()).await
}

/// One GET: the status and reason, or why there was none.
pub async fn get_status(url: &Url, request_timeout: Duration) -> Result<(u16, String), String> {
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| format!("connecting to {}:{}: {e}", url.host, url.port))?;
        if url.tls {
            tls_exchange(tcp, url).await
        } else {
            exchange(tcp, &url.request()).await
        }
    };
    match tokio::time::timeout(request_timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(request_timeout)
        )),
    }
}

fn ok200() -> Vec<u16> {
    vec![200]
}

fn five_minutes() -> Duration {
    Duration::from_secs(300)
}

fn two_seconds() -> Duration {
    Duration::from_secs(2)
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    url: String,
    #[serde(default = "ok200")]
    expect_status: Vec<u16>,
    #[serde(default = "five_minutes", with = "duration_text")]
    timeout: Duration,
    #[serde(default = "two_seconds", with = "duration_text")]
    poll_interval: Duration,
    #[serde(default = "ten_seconds", with = "duration_text")]
    request_timeout: Duration,
}

struct HttpCheck {
    text: String,
    url: Url,
    expect: Vec<u16>,
    timeout: Duration,
    poll_interval: Duration,
    request_timeout: Duration,
}

fn build(with: &toml::Table) -> Result<Box<dyn Step>, ParamError> {
    let p: Params = parse_params(with)?;
    let url = Url::parse(&p.url)
        .map_err(|m| ParamError::field("url", m).hint("e.g. url = \"http://localhost:80/\""))?;
    if p.expect_status.is_empty() || p.expect_status.iter().any(|s| !(100..=599).contains(s)) {
        return Err(ParamError::field(
            "expect_status",
            "list HTTP statuses (100..599)",
        ));
    }
    if p.poll_interval.is_zero() || p.request_timeout.is_zero() {
        return Err(ParamError::field(
            "poll_interval",
            "`poll_interval` and `request_timeout` must be above 0",
        ));
    }
    Ok(Box::new(HttpCheck {
        text: p.url,
        url,
        expect: p.expect_status,
        timeout: p.timeout,
        poll_interval: p.poll_interval,
        request_timeout: p.request_timeout,
    }))
}

fn answer_text(r: &Result<(u16, String), String>) -> String {
    match r {
        Ok((code, reason)) => format!("{code} {reason}").trim().to_string(),
        Err(e) => e.clone(),
    }
}

#[async_trait::async_trait]
impl Step for HttpCheck {
    fn describe(&self) -> Vec<String> {
        vec![format!(
            "wait up to {} for GET {} to answer {:?} (every {})",
            humantime::format_duration(self.timeout),
            self.text,
            self.expect,
            humantime::format_duration(self.poll_interval)
        )]
    }

    async fn run(&self, ctx: &dyn StepContext) -> Result<StepOutcome, StepError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut attempts: u64 = 0;
        let mut last_seen = String::new();
        loop {
            attempts += 1;
            let r = get_status(&self.url, self.request_timeout).await;
            let seen = answer_text(&r);
            if let Ok((code, _)) = &r
                && self.expect.contains(code)
            {
                ctx.output(&format!("GET {}: {seen}\n", self.text));
                let mut outputs = Outputs::new();
                outputs.insert("status".into(), code.to_string());
                outputs.insert("attempts".into(), attempts.to_string());
                return Ok(StepOutcome::with_outputs(outputs));
            }
            // One output line per change of answer, not per poll.
            if seen != last_seen {
                ctx.output(&format!(
                    "GET {}: {seen} (waiting for {:?})\n",
                    self.text, self.expect
                ));
                last_seen = seen;
            }
            ctx.progress(0, 0, &format!("waiting for {}: {last_seen}", self.text));
            if tokio::time::Instant::now() + self.poll_interval > deadline {
                return Err(StepError::transient(format!(
                    "{} did not answer {:?} within {} ({attempts} attempts); last: {last_seen}",
                    self.text,
                    self.expect,
                    humantime::format_duration(self.timeout)
                )));
            }
            tokio::time::sleep(self.poll_interval).await;
        }
    }

    async fn probe(&self, _ctx: &dyn StepContext) -> Result<Probe, StepError> {
        let r = get_status(&self.url, self.request_timeout).await;
        Ok(match r {
            Ok((code, _)) if self.expect.contains(&code) => Probe::InPlace,
            other => Probe::Differs(format!("GET {}: {}", self.text, answer_text(&other))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let u = Url::parse("http://localhost/").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (false, "localhost", 80, "/")
        );
        let u = Url::parse("https://tm-fe.corp.local:8443/api/health?x=1#frag").unwrap();
        assert_eq!(
            (u.tls, u.port, u.path.as_str()),
            (true, 8443, "/api/health?x=1")
        );
        assert!(u.request().contains("Host: tm-fe.corp.local:8443\r\n"));
        let u = Url::parse("http://[::1]:8080").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 8080));
        assert!(u.request().contains("Host: [::1]:8080\r\n"));
        assert!(Url::parse("ftp://x").is_err());
        assert!(Url::parse("http://a b/").is_err());
        assert!(Url::parse("http://x:99999/").is_err());
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(
            parse_status_line("HTTP/1.1 503 Service Unavailable"),
            Ok((503, "Service Unavailable".into()))
        );
        assert_eq!(parse_status_line("HTTP/1.0 200"), Ok((200, String::new())));
        assert!(parse_status_line("SSH-2.0-OpenSSH").is_err());
    }
}
