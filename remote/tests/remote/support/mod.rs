//! Helpers shared by the remote tests: requests, following a ticket to its
//! end, a local host. The sshd lab is in `sshd.rs`.

#![allow(dead_code)]

pub mod sshd;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use upshift_remote::RemoteHost;
use upshift_remote::client::{HostConfig, NoRedaction, Redact, TicketEvent, TransportConfig};
use upshift_remote::protocol::{Checkpoint, Cursor, EndState, StartRequest, StepOp, TicketId};

/// The stand-in for `upshift` that hosts run.
pub fn stub() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_upshift-remote-stub"))
}

/// A start request for `kind` with these parameters (a TOML table).
pub fn request(ticket: &str, kind: &str, with: toml::Table) -> StartRequest {
    StartRequest {
        ticket: TicketId::new(ticket).unwrap(),
        run_id: "run1".into(),
        step_id: format!("step-{ticket}"),
        attempt: 1,
        op: StepOp::Run,
        kind: kind.into(),
        with_toml: toml::to_string(&with).unwrap(),
        secrets: Vec::new(),
        resume_from: None,
        approved: false,
        recorded_outputs: Default::default(),
        timeout_ms: None,
    }
}

/// A `process` step running `sh -c script`.
pub fn sh(ticket: &str, script: &str) -> StartRequest {
    let mut with = toml::Table::new();
    with.insert("program".into(), "sh".into());
    with.insert(
        "args".into(),
        toml::Value::Array(vec!["-c".into(), script.into()]),
    );
    request(ticket, "process", with)
}

/// What following a ticket gave.
#[derive(Debug, Default)]
pub struct Followed {
    /// All output, in order.
    pub output: String,
    /// All checkpoints.
    pub checkpoints: Vec<Checkpoint>,
    /// Every event.
    pub events: Vec<TicketEvent>,
}

impl Followed {
    /// The end, if the ticket ended.
    pub fn end(&self) -> Option<&EndState> {
        self.events.iter().rev().find_map(|e| match e {
            TicketEvent::Ended(end) => Some(end),
            _ => None,
        })
    }

    /// The interruption, if the runner was found gone.
    pub fn interrupted(&self) -> Option<&str> {
        self.events.iter().rev().find_map(|e| match e {
            TicketEvent::Interrupted { reason } => Some(reason.as_str()),
            _ => None,
        })
    }

    /// How many connection losses were reported.
    pub fn losses(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, TicketEvent::ConnectionLost { .. }))
            .count()
    }
}

/// Follows a ticket to its end (or interruption), recording everything;
/// `until` may stop early (it sees the record so far).
pub async fn follow(
    host: &RemoteHost,
    ticket: &str,
    redact: Arc<dyn Redact>,
    mut until: impl FnMut(&Followed) -> bool,
) -> Followed {
    let mut f = host.follow(TicketId::new(ticket).unwrap(), Cursor::default(), redact);
    let mut got = Followed::default();
    let began = Instant::now();
    loop {
        if until(&got) {
            return got;
        }
        assert!(
            began.elapsed() < Duration::from_secs(120),
            "ticket {ticket} did not end in 120 s: {got:?}"
        );
        match f.next().await.expect("following the ticket") {
            Some(ev) => {
                match &ev {
                    TicketEvent::Output(t) => got.output.push_str(t),
                    TicketEvent::Checkpoint(c) => got.checkpoints.push(c.clone()),
                    _ => {}
                }
                got.events.push(ev);
            }
            None => return got,
        }
    }
}

/// Follows a ticket to its end.
pub async fn follow_to_end(host: &RemoteHost, ticket: &str) -> Followed {
    follow(host, ticket, Arc::new(NoRedaction), |_| false).await
}

/// The coordinator itself as a host, working in `work_dir`.
pub fn local_host(work_dir: &Path) -> RemoteHost {
    RemoteHost::new(
        HostConfig {
            name: "local".into(),
            transport: TransportConfig::Local,
            work_dir: work_dir.display().to_string(),
        },
        sshd::Lab::options(),
    )
    .expect("local host")
}

/// Waits until `f` is true (checked every 20 ms), for at most `limit`.
pub fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let began = Instant::now();
    while !f() {
        assert!(began.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a process is alive (and not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

/// Lines of a file (none if it is missing).
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}
