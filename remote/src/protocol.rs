//! What the coordinator and the host's `upshift __remote serve` say to each
//! other: one JSON object per line, each request with an id that its answer
//! repeats, so several steps on one host share one SSH connection.
//!
//! Everything here is plain data; the rules live in `serve.rs` (host side)
//! and `client.rs` (coordinator side).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Bumped when a message changes incompatibly; `hello` compares it.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest line either side accepts (a start request carries the step's
/// parameters and its last checkpoint).
pub const LINE_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Longest id of a ticket, a run or a step, in bytes.
pub const ID_BYTES_MAX: usize = 128;

/// A ticket id: chosen (and journaled) by the coordinator before the start.
/// It names a folder on the host, so it is restricted to letters, digits,
/// `.`, `_` and `-`, 1 to [`ID_BYTES_MAX`] bytes, not starting with `.`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TicketId(String);

impl TicketId {
    /// Checks and wraps an id.
    pub fn new(id: impl Into<String>) -> Result<TicketId, String> {
        let id = id.into();
        check_id("ticket id", &id)?;
        Ok(TicketId(id))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TicketId {
    type Error = String;
    fn try_from(s: String) -> Result<TicketId, String> {
        TicketId::new(s)
    }
}

impl From<TicketId> for String {
    fn from(t: TicketId) -> String {
        t.0
    }
}

impl fmt::Display for TicketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TicketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TicketId({})", self.0)
    }
}

/// Checks an id that becomes a path component on the host.
pub fn check_id(what: &str, id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > ID_BYTES_MAX {
        return Err(format!(
            "{what} `{id}` must be 1 to {ID_BYTES_MAX} bytes long"
        ));
    }
    if id.starts_with('.')
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "{what} `{id}` may only hold letters, digits, `.`, `_` and `-`, and not start with `.`"
        ));
    }
    Ok(())
}

/// Which operation of a step a ticket runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOp {
    /// `Step::run`.
    Run,
    /// `Step::compensate` (rollback).
    Compensate,
    /// `Step::probe` (drift).
    Probe,
}

/// Starts one step operation on the host under a ticket.
///
/// The whole request travels over the SSH channel only (the launcher's
/// stdin, then a pipe to the detached runner). The copy kept in the ticket
/// folder (`request.json`) has the secret values replaced and no
/// checkpoint.
#[derive(Clone, Serialize, Deserialize)]
pub struct StartRequest {
    /// The ticket (the coordinator journals it before asking).
    pub ticket: TicketId,
    /// The run's id.
    pub run_id: String,
    /// The step's id.
    pub step_id: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Which operation.
    pub op: StepOp,
    /// The step kind (`process`, `foreach`, `msi.install`...).
    pub kind: String,
    /// The step's resolved `with` table, as TOML text (TOML values, dates
    /// included, survive exactly).
    pub with_toml: String,
    /// Secret values: redacted from everything the runner writes.
    pub secrets: Vec<String>,
    /// The step's last checkpoint from an earlier attempt.
    #[serde(with = "hex_opt")]
    pub resume_from: Option<Vec<u8>>,
    /// Whether an operator approved the step.
    pub approved: bool,
    /// Outputs of the step's success (for compensation).
    pub recorded_outputs: BTreeMap<String, String>,
    /// Per-attempt limit; the runner enforces it on the host (so it holds
    /// while the coordinator is disconnected) and kills the process tree.
    pub timeout_ms: Option<u64>,
}

impl fmt::Debug for StartRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Parameters may hold resolved secrets: never printed.
        f.debug_struct("StartRequest")
            .field("ticket", &self.ticket)
            .field("run_id", &self.run_id)
            .field("step_id", &self.step_id)
            .field("attempt", &self.attempt)
            .field("op", &self.op)
            .field("kind", &self.kind)
            .field("secrets", &self.secrets.len())
            .field("resume_from", &self.resume_from.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

impl StartRequest {
    /// What identifies the step behind a ticket: a second start of the same
    /// ticket must be for the same step (see [`StartReply::Exists`]).
    pub fn identity(&self) -> String {
        format!(
            "{}/{}/{}/{:?}/{}",
            self.run_id, self.step_id, self.attempt, self.op, self.kind
        )
    }
}

/// Where a reader of a ticket stands; kept by the coordinator (the engine
/// may journal it) and handed back on every poll.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Bytes of `output.log` already read.
    pub output_bytes: u64,
    /// Bytes of `checkpoints.jsonl` already read.
    pub checkpoint_bytes: u64,
    /// Checkpoints already read (the next one has seq = this + 1).
    pub checkpoints: u64,
    /// The last progress report seen.
    pub progress_seq: u64,
}

/// One checkpoint the step saved on the host, durable there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// 1, 2, ... within the ticket.
    pub seq: u64,
    /// The step's bytes.
    #[serde(with = "hex_bytes")]
    pub data: Vec<u8>,
    /// Units done.
    pub done: u64,
    /// Units in all (0 if unknown).
    pub total: u64,
}

/// The step's latest progress report (not durable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Increases with every report.
    pub seq: u64,
    /// Units done.
    pub done: u64,
    /// Units in all (0 if unknown).
    pub total: u64,
    /// What the step is doing.
    pub message: String,
}

/// A probe's answer (mirrors `upshift_steps::Probe`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeAnswer {
    /// The kind cannot tell.
    Unknown,
    /// The state is in place.
    InPlace,
    /// What differs.
    Differs(String),
}

/// How a ticket ended, as the runner wrote it in `end.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "end", rename_all = "snake_case")]
pub enum EndState {
    /// `run` or `compensate` succeeded.
    Succeeded {
        /// The step's outputs (redacted).
        outputs: BTreeMap<String, String>,
        /// The host must reboot before the run goes on.
        reboot_required: bool,
    },
    /// `probe` answered.
    Probed {
        /// The answer.
        probe: ProbeAnswer,
    },
    /// The step failed.
    Failed {
        /// Why (redacted).
        message: String,
        /// Whether a retry may help.
        transient: bool,
    },
    /// The step needs an operator.
    WaitForOperator {
        /// What the operator must do.
        reason: String,
    },
    /// The runner's timeout fired; the process tree was killed.
    TimedOut {
        /// The limit.
        timeout_ms: u64,
    },
    /// The coordinator asked for an abort; the process tree was killed.
    Aborted {
        /// The reason given.
        reason: String,
    },
    /// The step never began (a cut-off start request, an unknown kind the
    /// runner refused before running anything). Safe to start anew.
    NotStarted {
        /// Why.
        reason: String,
    },
}

impl EndState {
    /// The same end with every text (outputs, messages, reasons) passed
    /// through `f`: how redaction is applied on both sides.
    pub fn map_text(self, f: impl Fn(&str) -> String) -> EndState {
        match self {
            EndState::Succeeded {
                outputs,
                reboot_required,
            } => EndState::Succeeded {
                outputs: outputs.into_iter().map(|(k, v)| (k, f(&v))).collect(),
                reboot_required,
            },
            EndState::Probed {
                probe: ProbeAnswer::Differs(d),
            } => EndState::Probed {
                probe: ProbeAnswer::Differs(f(&d)),
            },
            EndState::Failed { message, transient } => EndState::Failed {
                message: f(&message),
                transient,
            },
            EndState::WaitForOperator { reason } => {
                EndState::WaitForOperator { reason: f(&reason) }
            }
            EndState::Aborted { reason } => EndState::Aborted { reason: f(&reason) },
            EndState::NotStarted { reason } => EndState::NotStarted { reason: f(&reason) },
            other @ (EndState::Probed { .. } | EndState::TimedOut { .. }) => other,
        }
    }
}

/// Where a ticket stands, as seen on the host now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TicketState {
    /// No such ticket on the host.
    Missing,
    /// Created, the runner not yet registered (a few milliseconds).
    Starting,
    /// The runner is alive (same boot, same pid, same process start time).
    Running {
        /// The runner's pid.
        pid: u32,
    },
    /// The runner wrote its end.
    Ended {
        /// How it ended.
        end: EndState,
    },
    /// The runner is gone without an end: killed, or the host crashed or
    /// rebooted. The step resumes from its last checkpoint under a new
    /// ticket.
    Interrupted {
        /// What was seen.
        reason: String,
    },
}

impl TicketState {
    /// Whether the ticket will not change any more.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            TicketState::Ended { .. } | TicketState::Interrupted { .. } | TicketState::Missing
        )
    }
}

/// New things in a ticket since a cursor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollReply {
    /// The state, observed *before* the data below was read: when it is
    /// final and `more` is false, the data is complete.
    pub state: TicketState,
    /// New output (redacted on the host).
    pub output: String,
    /// New checkpoints, in order.
    pub checkpoints: Vec<Checkpoint>,
    /// The latest progress, if newer than the cursor's.
    pub progress: Option<Progress>,
    /// The cursor after this reply.
    pub cursor: Cursor,
    /// More output or checkpoints are waiting (the reply was capped).
    pub more: bool,
}

/// What a host is, for preflight checks and reboot confirmation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    /// `linux`, `windows`, ...
    pub os: String,
    /// `x86_64`, ...
    pub arch: String,
    /// The host's name for itself.
    pub hostname: String,
    /// The user the runner runs as.
    pub user: String,
    /// Changes with every boot (Linux: `/proc/sys/kernel/random/boot_id`;
    /// Windows: the boot counter and boot time).
    pub boot_id: String,
    /// Bytes free for this user in the work folder, if known.
    pub free_bytes: Option<u64>,
    /// Whether the runner has administrator rights (root; an elevated
    /// administrator token on Windows).
    pub is_admin: bool,
    /// The work folder.
    pub work_dir: String,
    /// SHA-256 of the runner's own binary.
    pub exe_sha256: String,
    /// The runner's crate version.
    pub version: String,
    /// [`PROTOCOL_VERSION`] of the runner.
    pub protocol: u32,
    /// Operations added since protocol 1 that this runner answers (see
    /// [`OP_PREFLIGHT`]); empty from a runner older than them.
    #[serde(default)]
    pub ops: Vec<String>,
}

/// [`HostFacts::ops`]: the runner answers [`Request::Preflight`] and
/// [`Request::PreflightHost`].
pub const OP_PREFLIGHT: &str = "preflight";

/// A step that runs before the one being checked (mirrors
/// `upshift_steps::preflight::Earlier`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EarlierStep {
    /// Its id.
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// Its parameters as text, to find the paths it names.
    pub with_text: String,
}

/// One step's read-only checks (`Step::preflight`), answered inline by
/// `serve`: no ticket, no runner, nothing written on the host. Travels
/// over the SSH channel only, like a [`StartRequest`].
#[derive(Clone, Serialize, Deserialize)]
pub struct PreflightRequest {
    /// The step's id in the plan.
    pub step_id: String,
    /// The host's name in the plan.
    pub host: String,
    /// The step kind.
    pub kind: String,
    /// The step's resolved `with` table, as TOML text.
    pub with_toml: String,
    /// Secret values: redacted from the answer.
    pub secrets: Vec<String>,
    /// How long the step's checks may take; over it, the answer is a
    /// finding saying so.
    pub time_limit_ms: u64,
    /// The steps that run before this one.
    pub earlier: Vec<EarlierStep>,
}

impl fmt::Debug for PreflightRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Parameters may hold resolved secrets: never printed.
        f.debug_struct("PreflightRequest")
            .field("step_id", &self.step_id)
            .field("host", &self.host)
            .field("kind", &self.kind)
            .field("secrets", &self.secrets.len())
            .field("time_limit_ms", &self.time_limit_ms)
            .finish_non_exhaustive()
    }
}

/// A request to `upshift __remote serve`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The host's facts (also the first request of a session).
    Hello,
    /// Start a ticket (never twice).
    Start {
        /// What to start.
        request: StartRequest,
    },
    /// What is new in a ticket; waits up to `wait_ms` for something new.
    Poll {
        /// The ticket.
        ticket: TicketId,
        /// Where the reader stands.
        cursor: Cursor,
        /// Longest wait for news, in ms.
        wait_ms: u64,
    },
    /// Ask a running ticket to stop: the runner kills the step's process
    /// tree and ends with `Aborted`.
    Abort {
        /// The ticket.
        ticket: TicketId,
        /// Why.
        reason: String,
    },
    /// Delete the bulky files of a finished ticket (output, checkpoints,
    /// request) after the coordinator journaled its end. The folder stays,
    /// with `ticket.json` and `end.json`, so the gate still refuses a second
    /// start of that ticket.
    Prune {
        /// The ticket.
        ticket: TicketId,
    },
    /// Reboot the host now.
    Reboot,
    /// A step's read-only checks, run in `serve` itself (no ticket).
    Preflight {
        /// What to check.
        request: PreflightRequest,
    },
    /// The host's own state for preflight (pending reboot, Windows
    /// Installer busy...), read in `serve` itself.
    PreflightHost,
}

impl Request {
    /// The request's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Hello => "hello",
            Request::Start { .. } => "start",
            Request::Poll { .. } => "poll",
            Request::Abort { .. } => "abort",
            Request::Prune { .. } => "prune",
            Request::Reboot => "reboot",
            Request::Preflight { .. } => "preflight",
            Request::PreflightHost => "preflight_host",
        }
    }
}

/// The answer to a start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "started", rename_all = "snake_case")]
pub enum StartReply {
    /// This request created the ticket and started its runner.
    New {
        /// The runner's pid.
        pid: u32,
    },
    /// The ticket already existed: nothing was started; attach to it.
    Exists {
        /// Whether the existing ticket is for the same run, step, attempt,
        /// operation and kind.
        same_step: bool,
    },
}

/// An answer from `serve`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// To `hello`.
    Hello {
        /// The facts.
        facts: HostFacts,
    },
    /// To `start`.
    Start {
        /// What happened.
        started: StartReply,
    },
    /// To `poll`.
    Poll {
        /// What is new.
        poll: PollReply,
    },
    /// To `preflight` and `preflight_host`.
    Preflight {
        /// The checks, redacted.
        checks: Vec<upshift_steps::preflight::Check>,
    },
    /// To `abort`, `prune`, `reboot`.
    Done,
    /// The request failed on the host.
    Error {
        /// What failed.
        message: String,
    },
}

/// One line from the coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestLine {
    /// Repeated in the answer.
    pub id: u64,
    /// The request.
    pub request: Request,
}

/// One line from the host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplyLine {
    /// The request's id.
    pub id: u64,
    /// The answer.
    pub reply: Reply,
}

/// Reads one `\n`-terminated line of at most `max` bytes (without the
/// `\n`). `None` at the end of the stream; a last line without `\n` was cut
/// off and is dropped.
pub(crate) async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
) -> std::io::Result<Option<Vec<u8>>> {
    use tokio::io::AsyncBufReadExt;
    let mut line = Vec::new();
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(None);
        }
        if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            line.extend_from_slice(&buf[..pos]);
            r.consume(pos + 1);
            return Ok(Some(line));
        }
        let n = buf.len();
        line.extend_from_slice(buf);
        r.consume(n);
        if line.len() > max {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a line longer than {max} bytes"),
            ));
        }
    }
}

/// Bytes as lowercase hex in JSON.
pub(crate) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

/// Optional bytes as lowercase hex in JSON.
pub(crate) mod hex_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| hex::decode(s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_escape_the_ticket_folder_are_refused() {
        for bad in [
            "",
            "..",
            ".x",
            "a/b",
            "a\\b",
            "c:x",
            "a b",
            &"x".repeat(129),
        ] {
            assert!(TicketId::new(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["t1", "0192-abc_def.2", &"x".repeat(128)] {
            assert!(TicketId::new(good).is_ok(), "{good:?} refused");
        }
        // Deserializing checks too.
        assert!(serde_json::from_str::<TicketId>("\"../etc\"").is_err());
    }

    #[test]
    fn requests_round_trip_and_debug_hides_parameters() {
        let req = StartRequest {
            ticket: TicketId::new("t1").unwrap(),
            run_id: "r".into(),
            step_id: "s".into(),
            attempt: 2,
            op: StepOp::Run,
            kind: "process".into(),
            with_toml: "program = \"echo\"\nargs = [\"pw=hunter22\"]\n".into(),
            secrets: vec!["hunter22".into()],
            resume_from: Some(vec![0, 1, 255]),
            approved: false,
            recorded_outputs: BTreeMap::new(),
            timeout_ms: Some(5),
        };
        let line = serde_json::to_string(&RequestLine {
            id: 7,
            request: Request::Start {
                request: req.clone(),
            },
        })
        .unwrap();
        let back: RequestLine = serde_json::from_str(&line).unwrap();
        let Request::Start { request } = back.request else {
            panic!("not a start")
        };
        assert_eq!(request.resume_from, Some(vec![0, 1, 255]));
        assert_eq!(request.identity(), req.identity());
        assert!(!format!("{req:?}").contains("hunter22"));
    }
}
