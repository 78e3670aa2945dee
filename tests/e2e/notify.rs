//! `[notify]` through the real binary, against HTTP receivers on 127.0.0.1
//! started by the tests (plain std sockets, one thread per connection):
//! each trigger fires once with what the operator needs; a receiver that
//! hangs never delays the run; a 500 is retried; a command gets the
//! message on stdin and in its environment; the webhook's URL — a secret —
//! appears in no byte upshift writes.

#![cfg(unix)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use upshift_journal::Event;

use crate::support::{Sandbox, all_bytes_under, contains, standin_systemctl, wait_until};

/// The secret part of the webhook URLs below.
const TOKEN: &str = "hook-T0k3n-5ecret-0123456789";

/// How a receiver answers.
#[derive(Clone, Copy)]
enum Answer {
    /// 200 with body `1` (as Teams' incoming webhooks do).
    Ok,
    /// 500 to the first `n` requests, then 200.
    FailFirst(usize),
    /// 404 with the request's path echoed in the body (as some proxies
    /// and gateways do: the secret comes back in an error).
    EchoPath404,
    /// Reads the request and never answers (until the test ends).
    Hang,
}

struct Request {
    path: String,
    headers: String,
    body: String,
}

/// An HTTP receiver on 127.0.0.1; stops when dropped (and by itself after
/// a minute, whatever happens).
struct Receiver {
    addr: SocketAddr,
    tls: bool,
    got: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
}

const RECEIVER_LIFE_MAX: Duration = Duration::from_secs(60);

impl Receiver {
    fn start(answer: Answer) -> Receiver {
        Receiver::start_with(answer, None)
    }

    /// With `tls`, the receiver speaks HTTPS with that server config.
    fn start_with(answer: Answer, tls: Option<Arc<rustls::ServerConfig>>) -> Receiver {
        let with_tls = tls.is_some();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicUsize::new(0));
        let (g, s) = (Arc::clone(&got), Arc::clone(&stop));
        std::thread::spawn(move || {
            let born = Instant::now();
            while !s.load(Ordering::SeqCst) && born.elapsed() < RECEIVER_LIFE_MAX {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (g, s, n) = (Arc::clone(&g), Arc::clone(&s), Arc::clone(&count));
                        conn.set_nonblocking(false).unwrap();
                        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        match &tls {
                            None => {
                                std::thread::spawn(move || serve(conn, answer, &g, &s, &n));
                            }
                            Some(config) => {
                                let Ok(tls) = rustls::ServerConnection::new(Arc::clone(config))
                                else {
                                    continue;
                                };
                                let conn = rustls::StreamOwned::new(tls, conn);
                                std::thread::spawn(move || serve(conn, answer, &g, &s, &n));
                            }
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Receiver {
            addr,
            tls: with_tls,
            got,
            stop,
        }
    }

    fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/hooks/{TOKEN}?sig={TOKEN}", self.addr)
    }

    fn bodies(&self) -> Vec<serde_json::Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|r| serde_json::from_str(&r.body).expect("a JSON body"))
            .collect()
    }

    fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(
    mut conn: impl Read + Write,
    answer: Answer,
    got: &Mutex<Vec<Request>>,
    stop: &AtomicBool,
    count: &AtomicUsize,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let path = head.split(' ').nth(1).unwrap_or_default().to_string();
    got.lock().unwrap().push(Request {
        path: path.clone(),
        headers: head.clone(),
        body: String::from_utf8_lossy(&buf[head_end..head_end + length]).to_string(),
    });
    let n = count.fetch_add(1, Ordering::SeqCst);
    let (status, body) = match answer {
        Answer::Ok => ("200 OK", "1".to_string()),
        Answer::FailFirst(k) if n < k => ("500 Internal Server Error", "try later".into()),
        Answer::FailFirst(_) => ("200 OK", "1".into()),
        Answer::EchoPath404 => ("404 Not Found", format!("no webhook at {path}")),
        Answer::Hang => {
            let born = Instant::now();
            while !stop.load(Ordering::SeqCst) && born.elapsed() < RECEIVER_LIFE_MAX {
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.flush();
}

/// (about, channel, delivered, attempts, detail) of every `notified` event.
fn notified(sb: &Sandbox, run: &str) -> Vec<(u64, String, bool, u32, String)> {
    sb.events(run)
        .into_iter()
        .filter_map(|e| match e.event {
            Event::Notified {
                about,
                channel,
                delivered,
                attempts,
                detail,
            } => Some((about, channel, delivered, attempts, detail)),
            _ => None,
        })
        .collect()
}

fn env_for(r: &Receiver) -> Vec<(&'static str, String)> {
    vec![("UPSHIFT_TEST_HOOK", r.url())]
}

fn run_env(sb: &Sandbox, args: &[&str], env: &[(&'static str, String)]) -> crate::support::Ran {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    sb.run_env(args, &env)
}

#[test]
fn each_trigger_fires_once_naming_run_step_host_and_the_command_that_continues() {
    let sb = Sandbox::new();
    let hook = Receiver::start(Answer::Ok);
    let systemctl = standin_systemctl(&sb);
    let plan = sb.plan(
        "p.toml",
        r#"
name = "notify me"
[secrets]
hook = { env = "UPSHIFT_TEST_HOOK" }
[notify]
webhook = "${secrets.hook}"
format = "json"
[hosts.tm-fe01]
transport = "local"
work_dir = "/tmp/upshift-notify-test-fe01"
[steps.bind]
kind = "manual"
host = "tm-fe01"
with = { instructions = "bind the certificate in IIS, then approve" }
[steps.flaky]
kind = "process"
needs = ["bind"]
retry = { attempts = 2, backoff = "10ms" }
with = { program = "sh", args = ["-c", "echo broken >&2; exit 4"] }
[steps.install]
kind = "reboot"
needs = ["flaky"]
with = { reason = "the installer asked for it" }
"#,
    );
    let mut env = env_for(&hook);
    env.push(("UPSHIFT_SYSTEMCTL", systemctl));
    env.push((
        "UPSHIFT_SYSTEMD_DIR",
        sb.path().join("units").display().to_string(),
    ));
    let journal = sb.journal().display().to_string();

    // 1. A manual step: one `waiting` message (the pause that follows says
    //    nothing new and sends nothing).
    let r = run_env(&sb, &["run", plan.to_str().unwrap()], &env);
    r.expect(3);
    let run = r.run_id();
    let got = hook.bodies();
    assert_eq!(got.len(), 1, "one message for the wait: {got:#?}");
    let m = &got[0];
    assert_eq!(m["event"], "waiting");
    assert_eq!(m["run"], run.as_str());
    assert_eq!(m["step"], "bind");
    assert_eq!(m["step_host"], "tm-fe01");
    assert!(!m["host"].as_str().unwrap().is_empty());
    assert!(
        m["reason"]
            .as_str()
            .unwrap()
            .contains("bind the certificate")
    );
    let approve = format!("upshift approve {run} bind --journal {journal}");
    assert_eq!(m["continue"][0], approve.as_str(), "{m:#}");
    assert!(m["text"].as_str().unwrap().contains(&approve));
    let n = notified(&sb, &run);
    assert_eq!(n.len(), 1, "{n:?}");
    assert!(n[0].2, "journaled as delivered: {n:?}");
    assert_eq!((n[0].1.as_str(), n[0].3), ("webhook", 1));
    assert!(n[0].4.starts_with("HTTP 200"), "{n:?}");

    // The command in the message, pasted as is, continues the run.
    let argv: Vec<&str> = approve.split(' ').skip(1).collect();
    sb.run(&argv).expect(0);

    // 2. A step that fails for good: one `failed` message (not one per
    //    attempt), naming the retry command; the pause adds nothing.
    run_env(&sb, &["resume", &run], &env).expect(3);
    let got = hook.bodies();
    assert_eq!(got.len(), 2, "{got:#?}");
    let m = &got[1];
    assert_eq!(m["event"], "failed");
    assert_eq!(m["step"], "flaky");
    assert!(m["reason"].as_str().unwrap().contains("exit"), "{m:#}");
    assert_eq!(
        m["continue"][0],
        format!("upshift retry {run} flaky --journal {journal}").as_str()
    );

    // 3. A reboot: one `reboot` message with the command for after it.
    sb.run(&["skip", &run, "flaky", "--reason", "known issue"])
        .expect(0);
    run_env(&sb, &["resume", &run], &env).expect(3);
    let got = hook.bodies();
    assert_eq!(got.len(), 3, "{got:#?}");
    let m = &got[2];
    assert_eq!(m["event"], "reboot");
    assert_eq!(m["step"], "install");
    assert_eq!(
        m["continue"][0],
        format!("upshift resume {run} --journal {journal}").as_str()
    );

    // 4. The end.
    run_env(&sb, &["resume", &run], &env).expect(0);
    let got = hook.bodies();
    assert_eq!(got.len(), 4, "{got:#?}");
    assert_eq!(got[3]["event"], "ended");
    assert_eq!(got[3]["outcome"], "succeeded");

    // Every message is journaled as delivered, about the event it reports.
    let events = sb.events(&run);
    let n = notified(&sb, &run);
    assert_eq!(n.len(), 4, "{n:?}");
    for ((about, ..), m) in n.iter().zip(&got) {
        assert_eq!(m["seq"], *about);
        let name = events[*about as usize].event.name();
        let expect = match m["event"].as_str().unwrap() {
            "waiting" => "step.waiting",
            "failed" => "step.failed",
            "reboot" => "run.paused",
            _ => "run.finished",
        };
        assert_eq!(name, expect, "{m:#}");
    }
    for r in hook.got.lock().unwrap().iter() {
        assert!(
            r.headers
                .to_ascii_lowercase()
                .contains("content-type: application/json")
        );
        assert_eq!(r.path, format!("/hooks/{TOKEN}?sig={TOKEN}"));
    }
    // `upshift log` shows the deliveries.
    let log = sb.run(&["log", &run]);
    assert!(
        log.stdout.contains("notified webhook about event"),
        "{}",
        log.stdout
    );
}

#[test]
fn a_hanging_receiver_never_delays_the_run() {
    let sb = Sandbox::new();
    let hook = Receiver::start(Answer::Hang);
    let plan = sb.plan(
        "p.toml",
        r#"
name = "hang"
[secrets]
hook = { env = "UPSHIFT_TEST_HOOK" }
[notify]
webhook = "${secrets.hook}"
timeout = "2s"
attempts = 2
[steps.ask]
kind = "manual"
with = { instructions = "look at the chain" }
[steps.c1]
kind = "sleep"
with = { duration = "200ms" }
[steps.c2]
kind = "sleep"
needs = ["c1"]
with = { duration = "200ms" }
[steps.c3]
kind = "sleep"
needs = ["c2"]
with = { duration = "200ms" }
[steps.c4]
kind = "sleep"
needs = ["c3"]
with = { duration = "200ms" }
"#,
    );
    let started = Instant::now();
    let r = run_env(&sb, &["run", plan.to_str().unwrap()], &env_for(&hook));
    let took = started.elapsed();
    r.expect(3);
    let run = r.run_id();
    let events = sb.events(&run);
    let time_of = |pred: &dyn Fn(&Event) -> bool| {
        events
            .iter()
            .find(|e| pred(&e.event))
            .map(|e| e.time)
            .unwrap()
    };
    let waiting = time_of(&|e| matches!(e, Event::StepWaiting { step, .. } if step == "ask"));
    let last = time_of(&|e| matches!(e, Event::StepSucceeded { step, .. } if step == "c4"));
    let paused = time_of(&|e| matches!(e, Event::RunPaused { .. }));
    // The chain's four sleeps (0.8 s) went on while the webhook hung on
    // the message about `ask`: one attempt alone would have cost 2 s.
    let chain = (last - waiting).to_std().unwrap();
    assert!(
        chain < Duration::from_millis(1_600),
        "the chain took {chain:?} after the wait began"
    );
    assert!((paused - last).to_std().unwrap() < Duration::from_millis(500));
    // The message was tried twice, each cut off after 2 s, and journaled
    // as not delivered — after the pause.
    assert!(wait_until(Duration::from_secs(5), || hook.count() >= 2));
    let n = notified(&sb, &run);
    assert_eq!(n.len(), 1, "{n:?}");
    let (_, channel, delivered, attempts, detail) = &n[0];
    assert_eq!(
        (channel.as_str(), *delivered, *attempts),
        ("webhook", false, 2)
    );
    assert!(detail.contains("no answer within 2s"), "{detail}");
    // The process waited for the message once the run had paused, bounded
    // by attempts × timeout + backoff (2 + 1 + 2 s), not forever.
    assert!(took < Duration::from_secs(15), "upshift took {took:?}");
}

#[test]
fn a_500_is_retried_with_backoff_until_delivered() {
    let sb = Sandbox::new();
    let hook = Receiver::start(Answer::FailFirst(2));
    let plan = sb.plan(
        "p.toml",
        r#"
name = "retry"
[secrets]
hook = { env = "UPSHIFT_TEST_HOOK" }
[notify]
webhook = "${secrets.hook}"
on = ["ended"]
[steps.only]
kind = "sleep"
with = { duration = "10ms" }
"#,
    );
    let r = run_env(&sb, &["run", plan.to_str().unwrap()], &env_for(&hook));
    r.expect(0);
    let n = notified(&sb, &r.run_id());
    assert_eq!(n.len(), 1, "{n:?}");
    let (_, _, delivered, attempts, detail) = &n[0];
    assert!(*delivered, "{n:?}");
    assert_eq!(*attempts, 3, "two 500s, then 200");
    assert!(detail.starts_with("HTTP 200"), "{detail}");
    assert_eq!(hook.count(), 3);
    // The default format is Teams' Adaptive Card in a message envelope.
    let b = &hook.bodies()[0];
    assert_eq!(b["type"], "message");
    assert_eq!(
        b["attachments"][0]["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(b["attachments"][0]["content"]["type"], "AdaptiveCard");
}

#[test]
fn the_webhook_url_appears_in_no_byte_written_even_when_errors_quote_it() {
    let sb = Sandbox::new();
    let echo = Receiver::start(Answer::EchoPath404);
    // A port nothing listens on (bound, then released).
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let plan = sb.plan(
        "p.toml",
        r#"
name = "secret url"
[secrets]
hook = { env = "UPSHIFT_TEST_HOOK" }
[notify]
webhook = "${secrets.hook}"
format = "teams-messagecard"
attempts = 2
[steps.fails]
kind = "process"
with = { program = "false" }
"#,
    );
    let p = plan.to_str().unwrap();
    let dead_url = format!("http://{dead}/hooks/{TOKEN}?sig={TOKEN}");
    let mut outputs = Vec::new();
    let mut runs = Vec::new();
    for (url, verbose) in [(echo.url(), true), (dead_url, false)] {
        let mut env = vec![("UPSHIFT_TEST_HOOK", url)];
        if verbose {
            env.push(("RUST_LOG", "trace".into()));
        }
        let dry = run_env(&sb, &["run", p, "--dry-run"], &env);
        dry.expect(0);
        assert!(
            dry.stdout
                .contains("POST <secret hook> as teams-messagecard"),
            "{}",
            dry.stdout
        );
        let r = run_env(&sb, &["run", p, "-v"], &env);
        r.expect(3);
        runs.push(r.run_id());
        outputs.push(format!(
            "{}{}{}{}",
            dry.stdout, dry.stderr, r.stdout, r.stderr
        ));
    }
    // The 404 quoting the path is not retried (the address is wrong) and
    // is journaled with the path redacted.
    let n = notified(&sb, &runs[0]);
    assert_eq!(n.len(), 1, "{n:?}");
    assert_eq!((n[0].2, n[0].3), (false, 1), "{n:?}");
    assert!(n[0].4.starts_with("HTTP 404"), "{n:?}");
    assert!(n[0].4.contains("***"), "{n:?}");
    assert_eq!(echo.count(), 1);
    // The dead port: retried, then journaled as a connection error.
    let n = notified(&sb, &runs[1]);
    assert_eq!((n[0].2, n[0].3), (false, 2), "{n:?}");
    assert!(n[0].4.contains("connection"), "{n:?}");
    // The legacy connector card was what went out.
    assert_eq!(echo.bodies()[0]["@type"], "MessageCard");

    let mut written: Vec<(String, Vec<u8>)> =
        vec![("journal folder".into(), all_bytes_under(&sb.journal()))];
    for (i, run) in runs.iter().enumerate() {
        let export = sb.path().join(format!("case{i}.export"));
        sb.run(&["export", run, "-o", export.to_str().unwrap()])
            .expect(0);
        written.push((format!("export {i}"), std::fs::read(&export).unwrap()));
        let log = sb.run(&["log", run]);
        written.push((format!("log {i}"), log.stdout.into_bytes()));
        let status = sb.run(&["status", run, "--json"]);
        written.push((format!("status {i}"), status.stdout.into_bytes()));
        let report = sb.path().join(format!("report{i}.html"));
        sb.run(&["report", run, "-o", report.to_str().unwrap()])
            .expect(0);
        written.push((format!("report {i}"), std::fs::read(&report).unwrap()));
    }
    for (i, o) in outputs.iter().enumerate() {
        written.push((format!("terminal of run {i}"), o.clone().into_bytes()));
    }
    for (what, bytes) in &written {
        assert!(!bytes.is_empty(), "{what} is empty");
        assert!(
            !contains(bytes, TOKEN),
            "the webhook's token leaked into the {what}"
        );
    }
}

#[test]
fn a_command_gets_the_message_on_stdin_and_in_env_never_a_secret_on_its_command_line() {
    let sb = Sandbox::new();
    let script = sb.path().join("notify.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncat > {m}/stdin.json\nenv | grep '^UPSHIFT_NOTIFY_' | sort > {m}/env.txt\necho \"$TEAMS_TOKEN\" > {m}/token\necho \"$@\" > {m}/argv\n",
            m = sb.markers().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let plan = sb.plan(
        "p.toml",
        &format!(
            r#"
name = "by command"
[vars]
channel = "ops"
[secrets]
tok = {{ env = "UPSHIFT_TEST_TOKEN" }}
[notify]
command = ["{}", "--channel", "${{vars.channel}}"]
env = {{ TEAMS_TOKEN = "${{secrets.tok}}" }}
on = ["waiting"]
[steps.approve_me]
kind = "manual"
with = {{ instructions = "check the backup" }}
"#,
            script.display()
        ),
    );
    let r = sb.run_env(
        &["run", plan.to_str().unwrap()],
        &[("UPSHIFT_TEST_TOKEN", TOKEN)],
    );
    r.expect(3);
    let run = r.run_id();
    let stdin: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sb.markers().join("stdin.json")).unwrap())
            .unwrap();
    assert_eq!(stdin["event"], "waiting");
    assert_eq!(stdin["step"], "approve_me");
    assert_eq!(stdin["run"], run.as_str());
    let env = std::fs::read_to_string(sb.markers().join("env.txt")).unwrap();
    assert!(env.contains(&format!("UPSHIFT_NOTIFY_RUN={run}")), "{env}");
    assert!(env.contains("UPSHIFT_NOTIFY_STEP=approve_me"), "{env}");
    assert!(
        env.contains(&format!(
            "UPSHIFT_NOTIFY_CONTINUE=upshift approve {run} approve_me --journal"
        )),
        "{env}"
    );
    // The secret went through the environment, and only there.
    assert_eq!(sb.marker_lines("token"), [TOKEN]);
    assert_eq!(sb.marker_lines("argv"), ["--channel ops"]);
    let n = notified(&sb, &run);
    assert_eq!(n.len(), 1, "{n:?}");
    assert_eq!((n[0].1.as_str(), n[0].2), ("command", true), "{n:?}");
    assert!(!contains(&all_bytes_under(&sb.journal()), TOKEN));
}

#[test]
fn check_points_at_bad_notify_keys() {
    let sb = Sandbox::new();
    let cases: &[(&str, &str, &str)] = &[
        (
            "[notify]\nwebhook = \"https://contoso.webhook.office.com/webhookb2/abc\"\n",
            "a webhook's address is its credential",
            "webhook = \"${secrets.teams_webhook}\"",
        ),
        (
            "[secrets]\nt = { env = \"T\" }\n[notify]\ncommand = [\"notify\", \"${secrets.t}\"]\n",
            "a command line is visible to every user",
            "env = { TOKEN",
        ),
        (
            "[secrets]\nh = { env = \"H\" }\n[notify]\nwebhook = \"${secrets.h}\"\non = [\"wating\"]\n",
            "`wating` is not a trigger",
            "did you mean `waiting`",
        ),
        (
            "[secrets]\nh = { env = \"H\" }\n[notify]\nwebhook = \"${secrets.h}\"\nformat = \"slack\"\n",
            "format = \"slack\" is not a format",
            "teams-messagecard",
        ),
        (
            "[notify]\non = [\"ended\"]\n",
            "neither where nor how",
            "command = [",
        ),
        (
            "[secrets]\nh = { env = \"H\" }\n[notify]\nwebhook = \"${secrets.h}\"\nattempts = 50\n",
            "attempts must be 1..=10",
            "default is 4",
        ),
        (
            "[secrets]\nh = { env = \"H\" }\n[notify]\nwebhook = \"${secrets.h}\"\nretries = 3\n",
            "unknown field `retries`",
            "[notify] keys are on, webhook",
        ),
    ];
    for (i, (notify, message, hint)) in cases.iter().enumerate() {
        let plan = sb.plan(
            &format!("p{i}.toml"),
            &format!(
                "name = \"n\"\n[steps.a]\nkind = \"sleep\"\nwith = {{ duration = \"1ms\" }}\n{notify}"
            ),
        );
        let r = sb.run(&["check", plan.to_str().unwrap()]);
        r.expect(2);
        assert!(r.stderr.contains(message), "case {i}: {}", r.stderr);
        assert!(r.stderr.contains(hint), "case {i}: {}", r.stderr);
        // Located: the file and a line inside [notify].
        let at = format!("p{i}.toml:");
        let line: usize = r
            .stderr
            .split(&at)
            .nth(1)
            .and_then(|s| s.split(':').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("case {i}: no location in {}", r.stderr));
        assert!(line >= 5, "case {i}: line {line}: {}", r.stderr);
    }
}

/// A self-signed certificate for 127.0.0.1 made by the `openssl` program:
/// (certificate PEM path, server config). None if there is no openssl.
fn self_signed(sb: &Sandbox) -> Option<(std::path::PathBuf, Arc<rustls::ServerConfig>)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = (sb.path().join("cert.pem"), sb.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=upshift test receiver"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if !made.is_ok_and(|s| s.success()) {
        return None;
    }
    let chain = vec![CertificateDer::from_pem_file(&cert).expect("cert.pem")];
    let key = PrivateKeyDer::from_pem_file(&key).expect("key.pem");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("a server config");
    Some((cert, Arc::new(config)))
}

#[test]
fn https_webhooks_are_verified_against_the_trust_store() {
    let sb = Sandbox::new();
    let Some((cert, config)) = self_signed(&sb) else {
        eprintln!("SKIPPED: https webhook test, because `openssl` could not make a certificate");
        return;
    };
    let hook = Receiver::start_with(Answer::Ok, Some(config));
    let plan = sb.plan(
        "p.toml",
        r#"
name = "https"
[secrets]
hook = { env = "UPSHIFT_TEST_HOOK" }
[notify]
webhook = "${secrets.hook}"
on = ["ended"]
attempts = 1
[steps.only]
kind = "sleep"
with = { duration = "1ms" }
"#,
    );
    let p = plan.to_str().unwrap();
    // Trusted (rustls-native-certs reads SSL_CERT_FILE as the trust store):
    // delivered over TLS.
    let mut env = env_for(&hook);
    env.push(("SSL_CERT_FILE", cert.display().to_string()));
    let r = run_env(&sb, &["run", p], &env);
    r.expect(0);
    let n = notified(&sb, &r.run_id());
    assert!(n[0].2, "{n:?}");
    assert_eq!(
        hook.bodies()[0]["attachments"][0]["content"]["type"],
        "AdaptiveCard"
    );
    // Not trusted (the machine's store does not hold the test's CA): the
    // handshake fails and nothing is sent.
    let r = run_env(&sb, &["run", p], &env_for(&hook));
    r.expect(0);
    let n = notified(&sb, &r.run_id());
    assert!(!n[0].2, "{n:?}");
    assert!(n[0].4.to_lowercase().contains("certificate"), "{n:?}");
    assert_eq!(hook.count(), 1, "nothing reached the untrusted receiver");
}

#[test]
fn ctrl_c_ends_the_wait_for_a_hanging_receiver_after_the_run_stopped() {
    use std::io::BufRead;
    let sb = Sandbox::new();
    let hook = Receiver::start(Answer::Hang);
    let plan = sb.plan(
        "p.toml",
        r#"
name = "impatient"
[secrets]
hook = { env = "UPSHIFT_TEST_HOOK" }
[notify]
webhook = "${secrets.hook}"
timeout = "20s"
attempts = 3
[steps.ask]
kind = "manual"
with = { instructions = "x" }
"#,
    );
    let mut child = sb
        .cmd(&["run", plan.to_str().unwrap()])
        .env("UPSHIFT_TEST_HOOK", hook.url())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let run = first.trim().to_string();
    // The run has paused; upshift now waits (up to a minute) for the
    // message the hanging receiver never answers.
    assert!(wait_until(Duration::from_secs(10), || {
        hook.count() == 1
            && sb
                .events(&run)
                .iter()
                .any(|e| matches!(e.event, Event::RunPaused { .. }))
    }));
    let signalled = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if signalled.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("upshift still waits 10 s after Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "{:?}",
        signalled.elapsed()
    );
    assert_eq!(status.code(), Some(3), "the session's own exit: paused");
    let n = notified(&sb, &run);
    assert_eq!(n.len(), 1, "{n:?}");
    assert!(!n[0].2, "{n:?}");
    assert!(n[0].4.contains("interrupted while waiting"), "{n:?}");
}
