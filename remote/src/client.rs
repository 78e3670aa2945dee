//! The coordinator's side: one [`RemoteHost`] per host of the plan. It
//! installs the binary (by hash), keeps one session (`upshift __remote
//! serve` over one SSH connection) shared by every step on the host, starts
//! tickets, and follows them through dropped connections.
//!
//! The engine's part (phase 2) is to journal the ticket id before
//! [`RemoteHost::start`], and on resume to [`RemoteHost::follow`] every
//! ticket that was running instead of starting it again.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::oneshot;

use crate::RemoteError;
use crate::protocol::{
    Checkpoint, Cursor, EndState, HostFacts, LINE_BYTES_MAX, OP_PREFLIGHT, PROTOCOL_VERSION,
    PollReply, PreflightRequest, Progress, Reply, ReplyLine, Request, RequestLine, StartReply,
    StartRequest, TicketId, TicketState, read_line,
};
use crate::transport::local::LocalTransport;
use crate::transport::ssh::{SshConfig, SshTransport};
use crate::transport::{HostOs, RemoteChild, RemoteCommand, Transport, read_tail};

/// Hides secret values in text coming back from a host. The engine's
/// redactor plugs in here; `upshift_steps::redact::Redactor` implements it.
pub trait Redact: Send + Sync {
    /// The text with every secret value replaced.
    fn redact(&self, text: &str) -> String;
}

impl Redact for upshift_steps::redact::Redactor {
    fn redact(&self, text: &str) -> String {
        self.text(text)
    }
}

/// Redacts nothing (tests, hosts of plans without secrets).
pub struct NoRedaction;

impl Redact for NoRedaction {
    fn redact(&self, text: &str) -> String {
        text.to_string()
    }
}

/// How a host is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportConfig {
    /// The coordinator itself.
    Local,
    /// The system ssh client.
    Ssh(SshConfig),
}

/// One host of the plan (`[hosts.<name>]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConfig {
    /// Its name in the plan.
    pub name: String,
    /// How it is reached.
    pub transport: TransportConfig,
    /// Where the runner keeps binaries, tickets and step folders on the
    /// host. A drive-letter path makes the host a Windows host.
    pub work_dir: String,
}

/// Timing of the coordinator's side.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The binary installed on hosts (the coordinator's own by default).
    pub binary: PathBuf,
    /// Longest wait for an answer beyond a poll's own wait.
    pub request_timeout: Duration,
    /// How long one poll waits on the host for news.
    pub poll_wait: Duration,
    /// First pause before reconnecting; doubles up to `reconnect_max`.
    pub reconnect_initial: Duration,
    /// Longest pause between reconnection attempts.
    pub reconnect_max: Duration,
    /// Reconnecting stops after this long (the engine then pauses the run).
    pub reconnect_give_up: Duration,
    /// The binary's SHA-256 (hex), when the caller hashed it already (an
    /// engine with several hosts hashes its binary once, not per host).
    pub binary_sha256: Option<String>,
}

impl ClientOptions {
    /// Defaults around `binary`: answers within 60 s, polls wait 2 s,
    /// reconnect after 0.25 s doubling to 10 s, give up after 30 min (a
    /// host that reboots for an update can take that long).
    pub fn new(binary: impl Into<PathBuf>) -> ClientOptions {
        ClientOptions {
            binary: binary.into(),
            request_timeout: Duration::from_secs(60),
            poll_wait: Duration::from_secs(2),
            reconnect_initial: Duration::from_millis(250),
            reconnect_max: Duration::from_secs(10),
            reconnect_give_up: Duration::from_secs(30 * 60),
            binary_sha256: None,
        }
    }
}

/// How a start went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// This call started the runner.
    New {
        /// The runner's pid on the host.
        pid: u32,
    },
    /// The ticket existed already (an earlier call, or another
    /// coordinator, started it); nothing was started. Follow it.
    Existing,
}

/// Something that happened to a followed ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketEvent {
    /// New output (redacted twice: on the host and here).
    Output(String),
    /// A checkpoint, durable on the host.
    Checkpoint(Checkpoint),
    /// Progress.
    Progress(Progress),
    /// The connection was lost; reconnecting (the step keeps running).
    ConnectionLost {
        /// Why.
        error: RemoteError,
        /// Reconnection attempts so far in this outage.
        attempt: u32,
    },
    /// Connected again after an outage.
    Reconnected {
        /// How long the outage lasted.
        outage: Duration,
    },
    /// The ticket ended.
    Ended(EndState),
    /// The runner is gone without an end (killed, host crashed or
    /// rebooted): resume from the last checkpoint under a new ticket.
    Interrupted {
        /// What was seen.
        reason: String,
    },
}

/// A reboot the host confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebootConfirmed {
    /// The boot id before.
    pub before: String,
    /// The host's facts after (a different boot id).
    pub after: HostFacts,
    /// From the request to the confirmation.
    pub waited: Duration,
}

/// One host, as the coordinator sees it. Cheap to clone (shared).
#[derive(Clone)]
pub struct RemoteHost {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    work_dir: String,
    os: HostOs,
    transport: Arc<dyn Transport>,
    opts: ClientOptions,
    binary_sha256: String,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    installs: AtomicU64,
    sessions: AtomicU64,
}

impl RemoteHost {
    /// A host from its configuration. Checks the configuration (key files
    /// readable, a usable work folder) and hashes the binary; connects
    /// nothing yet.
    pub fn new(config: HostConfig, opts: ClientOptions) -> Result<RemoteHost, RemoteError> {
        let name = config.name.clone();
        let os = HostOs::of_work_dir(&config.work_dir);
        if config.work_dir.is_empty()
            || !(config.work_dir.starts_with('/') || os == HostOs::Windows)
        {
            return Err(RemoteError::Config {
                host: name,
                message: format!(
                    "work_dir `{}` must be an absolute path on the host (e.g. \
                     C:/ProgramData/upshift-remote or /var/lib/upshift-remote)",
                    config.work_dir
                ),
            });
        }
        let transport: Arc<dyn Transport> = match config.transport {
            TransportConfig::Local => {
                if os != HostOs::current() {
                    return Err(RemoteError::Config {
                        host: name,
                        message: format!(
                            "work_dir `{}` is not a path of this machine",
                            config.work_dir
                        ),
                    });
                }
                Arc::new(LocalTransport::new(&name))
            }
            TransportConfig::Ssh(cfg) => Arc::new(SshTransport::new(&name, cfg, os)?),
        };
        Self::with_transport(name, config.work_dir, transport, opts)
    }

    /// A host reached through any [`Transport`] (WinRM later, test doubles).
    pub fn with_transport(
        name: String,
        work_dir: String,
        transport: Arc<dyn Transport>,
        opts: ClientOptions,
    ) -> Result<RemoteHost, RemoteError> {
        let binary_sha256 = match &opts.binary_sha256 {
            Some(sha) => sha.clone(),
            None => {
                upshift_steps::hash::sha256_file(&opts.binary)
                    .map_err(|e| RemoteError::Config {
                        host: name.clone(),
                        message: format!(
                            "cannot read the binary to install, {}: {e}",
                            opts.binary.display()
                        ),
                    })?
                    .0
            }
        };
        let os = transport.os();
        Ok(RemoteHost {
            inner: Arc::new(Inner {
                name,
                work_dir,
                os,
                transport,
                opts,
                binary_sha256,
                session: tokio::sync::Mutex::new(None),
                installs: AtomicU64::new(0),
                sessions: AtomicU64::new(0),
            }),
        })
    }

    /// The host's name in the plan.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// How the host is reached, for messages.
    pub fn describe(&self) -> String {
        self.inner.transport.describe()
    }

    /// Where the binary goes on the host: `<work_dir>/bin/<sha256>/upshift`,
    /// by content, so a new version never overwrites a running one.
    pub fn remote_binary(&self) -> String {
        self.inner.os.join(
            &self.inner.work_dir,
            &["bin", &self.inner.binary_sha256, self.inner.os.exe_name()],
        )
    }

    /// How often the binary was copied to the host by this handle.
    pub fn installs(&self) -> u64 {
        self.inner.installs.load(Ordering::Relaxed)
    }

    /// How many sessions (connections) this handle opened.
    pub fn sessions_opened(&self) -> u64 {
        self.inner.sessions.load(Ordering::Relaxed)
    }

    /// Connects (installing the binary if it is missing or differs) and
    /// returns the host's facts. One attempt: a host key, login or network
    /// problem is returned as it is.
    pub async fn connect(&self) -> Result<HostFacts, RemoteError> {
        Ok(self.session().await?.facts.clone())
    }

    /// Fresh facts (boot id, free disk) from the host.
    pub async fn facts(&self) -> Result<HostFacts, RemoteError> {
        match self.call(Request::Hello).await? {
            Reply::Hello { facts } => Ok(facts),
            other => Err(self.unexpected("hello", &other)),
        }
    }

    /// Starts a ticket, reconnecting as needed: safe to repeat, because the
    /// host starts a ticket at most once ([`Started::Existing`] after the
    /// first). The engine journals `req.ticket` before calling this.
    pub async fn start(&self, req: &StartRequest) -> Result<Started, RemoteError> {
        let ticket = req.ticket.clone();
        let reply = self
            .retrying(|| {
                self.call(Request::Start {
                    request: req.clone(),
                })
            })
            .await?;
        match reply {
            Reply::Start {
                started: StartReply::New { pid },
            } => Ok(Started::New { pid }),
            Reply::Start {
                started: StartReply::Exists { same_step: true },
            } => Ok(Started::Existing),
            Reply::Start {
                started: StartReply::Exists { same_step: false },
            } => Err(RemoteError::Ticket {
                host: self.name().to_string(),
                ticket: ticket.to_string(),
                message: format!(
                    "exists on the host for another step than {}; ticket ids must be unique",
                    req.identity()
                ),
            }),
            Reply::Error { message } => Err(RemoteError::Ticket {
                host: self.name().to_string(),
                ticket: ticket.to_string(),
                message: format!("cannot start: {message}"),
            }),
            other => Err(self.unexpected("start", &other)),
        }
    }

    /// What is new in a ticket after `cursor` (one request; waits on the
    /// host up to the poll wait for news).
    pub async fn poll(&self, ticket: &TicketId, cursor: Cursor) -> Result<PollReply, RemoteError> {
        self.poll_waiting(ticket, cursor, self.inner.opts.poll_wait)
            .await
    }

    /// A poll that waits on the host up to `wait` for news.
    async fn poll_waiting(
        &self,
        ticket: &TicketId,
        cursor: Cursor,
        wait: Duration,
    ) -> Result<PollReply, RemoteError> {
        let wait_ms = wait.as_millis() as u64;
        match self
            .call(Request::Poll {
                ticket: ticket.clone(),
                cursor,
                wait_ms,
            })
            .await?
        {
            Reply::Poll { poll } => Ok(poll),
            Reply::Error { message } => Err(RemoteError::Ticket {
                host: self.name().to_string(),
                ticket: ticket.to_string(),
                message,
            }),
            other => Err(self.unexpected("poll", &other)),
        }
    }

    /// Follows a ticket from `cursor` (the default cursor: from the start)
    /// to its end, through dropped connections. Everything textual is passed
    /// through `redact`.
    pub fn follow(&self, ticket: TicketId, cursor: Cursor, redact: Arc<dyn Redact>) -> Follower {
        Follower {
            host: self.clone(),
            ticket,
            cursor,
            redact,
            queue: VecDeque::new(),
            done: false,
            outage: None,
        }
    }

    /// Asks a running ticket to stop; its runner kills the step's process
    /// tree and ends with [`EndState::Aborted`].
    pub async fn abort(&self, ticket: &TicketId, reason: &str) -> Result<(), RemoteError> {
        let reply = self
            .retrying(|| {
                self.call(Request::Abort {
                    ticket: ticket.clone(),
                    reason: reason.to_string(),
                })
            })
            .await?;
        self.done_or_error(reply, ticket, "abort")
    }

    /// Drops a finished ticket's output and checkpoints from the host
    /// (after its end is journaled); the gate stays.
    pub async fn prune(&self, ticket: &TicketId) -> Result<(), RemoteError> {
        let reply = self
            .retrying(|| {
                self.call(Request::Prune {
                    ticket: ticket.clone(),
                })
            })
            .await?;
        self.done_or_error(reply, ticket, "prune")
    }

    /// A step's read-only checks on the host (`upshift preflight`),
    /// answered by the session itself: no ticket, nothing written on the
    /// host. The host bounds the checks by `req.time_limit_ms`; this call
    /// waits that long plus the usual answer time. One attempt, no retry.
    ///
    /// A host whose runner does not know preflight (older than it) is
    /// [`RemoteError::Unsupported`].
    pub async fn preflight(
        &self,
        req: &PreflightRequest,
    ) -> Result<Vec<upshift_steps::preflight::Check>, RemoteError> {
        self.preflight_call(Request::Preflight {
            request: req.clone(),
        })
        .await
    }

    /// The host's own state for preflight (pending reboot, Windows
    /// Installer busy...), read by the session on the host. See
    /// [`RemoteHost::preflight`].
    pub async fn preflight_host(
        &self,
    ) -> Result<Vec<upshift_steps::preflight::Check>, RemoteError> {
        self.preflight_call(Request::PreflightHost).await
    }

    async fn preflight_call(
        &self,
        req: Request,
    ) -> Result<Vec<upshift_steps::preflight::Check>, RemoteError> {
        let session = self.session().await?;
        let unsupported = |detail: String| RemoteError::Unsupported {
            host: self.name().to_string(),
            what: req.name().to_string(),
            detail,
        };
        if !session.facts.ops.iter().any(|o| o == OP_PREFLIGHT) {
            return Err(unsupported(format!(
                "its upshift {} (protocol {}) is older than preflight on hosts",
                session.facts.version, session.facts.protocol
            )));
        }
        match self.call_on(&session, &req).await? {
            Reply::Preflight { checks } => Ok(checks),
            // A runner that cannot read the request (an unknown op).
            Reply::Error { message } if message.starts_with("unreadable request") => {
                Err(unsupported(message))
            }
            Reply::Error { message } => Err(RemoteError::Protocol {
                host: self.name().to_string(),
                message: format!("{} failed on the host: {message}", req.name()),
            }),
            other => Err(self.unexpected(req.name(), &other)),
        }
    }

    /// Asks the host to reboot now. A connection lost while it answers
    /// counts as accepted (the host went down).
    pub async fn reboot(&self) -> Result<(), RemoteError> {
        match self.call(Request::Reboot).await {
            Ok(Reply::Done) => Ok(()),
            Ok(Reply::Error { message }) => Err(RemoteError::RebootNotConfirmed {
                host: self.name().to_string(),
                detail: format!("the host refused to reboot: {message}"),
            }),
            Ok(other) => Err(self.unexpected("reboot", &other)),
            Err(RemoteError::Disconnected { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Waits until the host answers with a boot id other than `before`
    /// (reconnecting with backoff), for at most `limit`.
    pub async fn wait_for_boot_change(
        &self,
        before: &str,
        limit: Duration,
    ) -> Result<HostFacts, RemoteError> {
        let began = Instant::now();
        let mut delay = self.inner.opts.reconnect_initial;
        let mut last: String;
        loop {
            self.disconnect().await;
            match self.connect().await {
                Ok(f) if f.boot_id != before => return Ok(f),
                Ok(_) => last = format!("it answers with the same boot id {before}"),
                Err(e) if e.is_transient() => last = e.to_string(),
                Err(e) => return Err(e),
            }
            if began.elapsed() >= limit {
                return Err(RemoteError::RebootNotConfirmed {
                    host: self.name().to_string(),
                    detail: format!("after {} s, {last}", limit.as_secs()),
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(self.inner.opts.reconnect_max);
        }
    }

    /// Reboots the host and waits, up to `limit`, until it is back with a
    /// new boot id.
    pub async fn reboot_and_confirm(
        &self,
        limit: Duration,
    ) -> Result<RebootConfirmed, RemoteError> {
        let began = Instant::now();
        let before = self.facts().await?.boot_id;
        self.reboot().await?;
        let after = self.wait_for_boot_change(&before, limit).await?;
        Ok(RebootConfirmed {
            before,
            after,
            waited: began.elapsed(),
        })
    }

    /// Ends the current session (the step runners on the host go on).
    pub async fn disconnect(&self) {
        if let Some(s) = self.inner.session.lock().await.take() {
            s.kill();
        }
    }

    /// The local pid of the current session's `ssh` process (tests cut the
    /// connection with it).
    pub async fn session_local_pid(&self) -> Option<u32> {
        self.inner
            .session
            .lock()
            .await
            .as_ref()
            .and_then(|s| s.local_pid)
    }

    /// Releases the connection.
    pub async fn close(&self) {
        self.disconnect().await;
        self.inner.transport.close().await;
    }

    fn unexpected(&self, what: &str, reply: &Reply) -> RemoteError {
        RemoteError::Protocol {
            host: self.name().to_string(),
            message: format!("unexpected answer to {what}: {reply:?}"),
        }
    }

    fn done_or_error(
        &self,
        reply: Reply,
        ticket: &TicketId,
        what: &str,
    ) -> Result<(), RemoteError> {
        match reply {
            Reply::Done => Ok(()),
            Reply::Error { message } => Err(RemoteError::Ticket {
                host: self.name().to_string(),
                ticket: ticket.to_string(),
                message,
            }),
            other => Err(self.unexpected(what, &other)),
        }
    }

    /// Repeats `f` on transient errors with exponential backoff, until it
    /// succeeds, fails for good, or reconnecting takes too long.
    async fn retrying<T, F, Fut>(&self, mut f: F) -> Result<T, RemoteError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, RemoteError>>,
    {
        let began = Instant::now();
        let mut delay = self.inner.opts.reconnect_initial;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() => {
                    if began.elapsed() >= self.inner.opts.reconnect_give_up {
                        return Err(RemoteError::GaveUp {
                            host: self.name().to_string(),
                            waited_s: began.elapsed().as_secs(),
                            last: e.to_string(),
                        });
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.inner.opts.reconnect_max);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One request on the current session (opened if needed).
    async fn call(&self, req: Request) -> Result<Reply, RemoteError> {
        let session = self.session().await?;
        self.call_on(&session, &req).await
    }

    /// One request on `session`, given the time it may take on the host
    /// (a poll's wait, a preflight's limit) beyond the request timeout.
    async fn call_on(&self, session: &Arc<Session>, req: &Request) -> Result<Reply, RemoteError> {
        let extra = match req {
            Request::Poll { wait_ms, .. } => Duration::from_millis(*wait_ms),
            Request::Preflight { request } => Duration::from_millis(request.time_limit_ms),
            _ => Duration::ZERO,
        };
        let result = session
            .call(req, self.inner.opts.request_timeout + extra)
            .await;
        if result.is_err() {
            // A dead or stuck session is replaced on the next call.
            let mut slot = self.inner.session.lock().await;
            if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, session)) {
                slot.take();
            }
            session.kill();
        }
        result
    }

    async fn session(&self) -> Result<Arc<Session>, RemoteError> {
        let mut slot = self.inner.session.lock().await;
        if let Some(s) = slot.as_ref()
            && !s.is_closed()
        {
            return Ok(Arc::clone(s));
        }
        let s = self.open_session().await?;
        *slot = Some(Arc::clone(&s));
        Ok(s)
    }

    /// Opens a session, installing the binary once if it is missing or not
    /// the coordinator's.
    async fn open_session(&self) -> Result<Arc<Session>, RemoteError> {
        let mut installed = false;
        loop {
            let problem = match self.try_session().await {
                Ok(s) if s.facts.exe_sha256 == self.inner.binary_sha256 => {
                    if s.facts.protocol != PROTOCOL_VERSION {
                        return Err(RemoteError::Protocol {
                            host: self.name().to_string(),
                            message: format!(
                                "the host's runner speaks protocol {}, this coordinator {}",
                                s.facts.protocol, PROTOCOL_VERSION
                            ),
                        });
                    }
                    return Ok(s);
                }
                Ok(s) => {
                    s.kill();
                    format!(
                        "{} has sha256 {}, not {}",
                        self.remote_binary(),
                        s.facts.exe_sha256,
                        self.inner.binary_sha256
                    )
                }
                Err(Opening::Transport(e)) => return Err(e),
                Err(Opening::Runner(detail)) => detail,
            };
            if installed {
                return Err(RemoteError::RunnerWontStart {
                    host: self.name().to_string(),
                    detail: format!("after installing {}: {problem}", self.remote_binary()),
                });
            }
            tracing::info!(host = %self.name(), "installing {}", self.remote_binary());
            self.inner
                .transport
                .copy_file(&self.inner.opts.binary, &self.remote_binary())
                .await?;
            self.inner.installs.fetch_add(1, Ordering::Relaxed);
            installed = true;
        }
    }

    async fn try_session(&self) -> Result<Arc<Session>, Opening> {
        let cmd = RemoteCommand {
            program: self.remote_binary(),
            args: vec![
                "__remote".into(),
                "serve".into(),
                "--work-dir".into(),
                self.inner.os.join(&self.inner.work_dir, &[]),
            ],
        };
        let child = match self.inner.transport.spawn(&cmd).await {
            Ok(c) => c,
            // The local transport cannot start a missing binary.
            Err(RemoteError::Io { detail, .. }) => return Err(Opening::Runner(detail)),
            Err(e) => return Err(Opening::Transport(e)),
        };
        self.inner.sessions.fetch_add(1, Ordering::Relaxed);
        let session = Session::start(
            self.name().to_string(),
            Arc::clone(&self.inner.transport),
            child,
        );
        // The first answer proves the host key, the login and the binary.
        let hello_limit = self.inner.opts.request_timeout;
        match session.call(&Request::Hello, hello_limit).await {
            Ok(Reply::Hello { facts }) => Ok(Arc::new(Session { facts, ..session })),
            Ok(other) => {
                session.kill();
                Err(Opening::Transport(self.unexpected("hello", &other)))
            }
            Err(e) => {
                session.kill();
                match session.wait_end().await {
                    Some(End {
                        transport_error: Some(te),
                        ..
                    }) => Err(Opening::Transport(te)),
                    Some(End { code, stderr, .. }) => Err(Opening::Runner(format!(
                        "`{} __remote serve` exited with code {code}{}",
                        self.remote_binary(),
                        if stderr.trim().is_empty() {
                            String::new()
                        } else {
                            format!(": {}", stderr.trim())
                        }
                    ))),
                    None => Err(Opening::Transport(e)),
                }
            }
        }
    }
}

enum Opening {
    /// Host key, login, network: returned as is.
    Transport(RemoteError),
    /// The binary is missing, broken or another one: install and retry.
    Runner(String),
}

/// How a session's local end finished.
#[derive(Debug, Clone)]
struct End {
    code: i32,
    stderr: String,
    transport_error: Option<RemoteError>,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>;

/// One running `upshift __remote serve` behind one connection.
struct Session {
    host: String,
    facts: HostFacts,
    writer: Arc<tokio::sync::Mutex<Box<dyn AsyncWrite + Send + Unpin>>>,
    pending: Pending,
    next_id: Arc<AtomicU64>,
    end: Arc<Mutex<Option<End>>>,
    end_rx: tokio::sync::watch::Receiver<bool>,
    killer: Arc<Mutex<Option<RemoteChild>>>,
    local_pid: Option<u32>,
}

impl Session {
    fn start(host: String, transport: Arc<dyn Transport>, mut child: RemoteChild) -> Session {
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take();
        let local_pid = child.local_pid();
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let end: Arc<Mutex<Option<End>>> = Arc::new(Mutex::new(None));
        let (end_tx, end_rx) = tokio::sync::watch::channel(false);
        let killer = Arc::new(Mutex::new(Some(child)));
        let stderr_task = tokio::spawn(async move { read_tail(&mut stderr).await });
        {
            let pending = Arc::clone(&pending);
            let end = Arc::clone(&end);
            let killer = Arc::clone(&killer);
            tokio::spawn(async move {
                let mut reader = BufReader::new(stdout);
                while let Ok(Some(line)) = read_line(&mut reader, LINE_BYTES_MAX).await {
                    let Ok(reply) = serde_json::from_slice::<ReplyLine>(&line) else {
                        tracing::warn!("a line from the host that is not an answer: dropped");
                        continue;
                    };
                    if let Some(tx) = pending.lock().expect("poisoned").remove(&reply.id) {
                        let _ = tx.send(reply.reply);
                    }
                }
                // The connection ended: find out why before failing callers.
                let child = killer.lock().expect("poisoned").take();
                let code = match child {
                    Some(mut c) => {
                        match tokio::time::timeout(Duration::from_secs(5), c.wait()).await {
                            Ok(Ok(code)) => code,
                            _ => {
                                c.kill();
                                -1
                            }
                        }
                    }
                    None => -1, // killed by us
                };
                let stderr = tokio::time::timeout(Duration::from_secs(2), stderr_task)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default();
                let transport_error = transport.failure(code, &stderr);
                *end.lock().expect("poisoned") = Some(End {
                    code,
                    stderr,
                    transport_error,
                });
                // Dropping the senders wakes every caller still waiting.
                pending.lock().expect("poisoned").clear();
                let _ = end_tx.send(true);
            });
        }
        Session {
            host,
            facts: placeholder_facts(),
            writer: Arc::new(tokio::sync::Mutex::new(stdin)),
            pending,
            next_id: Arc::new(AtomicU64::new(1)),
            end,
            end_rx,
            killer,
            local_pid,
        }
    }

    fn is_closed(&self) -> bool {
        self.end.lock().expect("poisoned").is_some()
    }

    fn kill(&self) {
        if let Some(c) = self.killer.lock().expect("poisoned").as_mut() {
            c.kill();
        }
    }

    /// Waits (briefly) until the reader saw the end, and returns it.
    async fn wait_end(&self) -> Option<End> {
        let mut rx = self.end_rx.clone();
        let _ = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|e| *e)).await;
        self.end.lock().expect("poisoned").clone()
    }

    fn lost(&self) -> RemoteError {
        match self.end.lock().expect("poisoned").as_ref() {
            Some(End {
                transport_error: Some(e),
                ..
            }) => match e {
                // Mid-session, an "unreachable" is a lost connection.
                RemoteError::Unreachable { host, detail } => RemoteError::Disconnected {
                    host: host.clone(),
                    detail: detail.clone(),
                },
                e => e.clone(),
            },
            Some(End { code, stderr, .. }) => RemoteError::Disconnected {
                host: self.host.clone(),
                detail: format!(
                    "the session ended (exit code {code}){}",
                    if stderr.trim().is_empty() {
                        String::new()
                    } else {
                        format!(": {}", stderr.trim())
                    }
                ),
            },
            None => RemoteError::Disconnected {
                host: self.host.clone(),
                detail: "the session ended".into(),
            },
        }
    }

    async fn call(&self, req: &Request, limit: Duration) -> Result<Reply, RemoteError> {
        if self.is_closed() {
            return Err(self.lost());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("poisoned").insert(id, tx);
        let mut line = serde_json::to_vec(&RequestLine {
            id,
            request: req.clone(),
        })
        .map_err(|e| RemoteError::Protocol {
            host: self.host.clone(),
            message: e.to_string(),
        })?;
        line.push(b'\n');
        let sent = {
            let mut w = self.writer.lock().await;
            match w.write_all(&line).await {
                Ok(()) => w.flush().await,
                Err(e) => Err(e),
            }
        };
        if sent.is_err() {
            self.pending.lock().expect("poisoned").remove(&id);
            let _ = self.wait_end().await;
            return Err(self.lost());
        }
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => {
                let _ = self.wait_end().await;
                Err(self.lost())
            }
            Err(_) => {
                self.pending.lock().expect("poisoned").remove(&id);
                Err(RemoteError::Timeout {
                    host: self.host.clone(),
                    what: req.name().to_string(),
                    timeout_ms: limit.as_millis() as u64,
                })
            }
        }
    }
}

fn placeholder_facts() -> HostFacts {
    HostFacts {
        os: String::new(),
        arch: String::new(),
        hostname: String::new(),
        user: String::new(),
        boot_id: String::new(),
        free_bytes: None,
        is_admin: false,
        work_dir: String::new(),
        exe_sha256: String::new(),
        version: String::new(),
        protocol: 0,
        ops: Vec::new(),
    }
}

/// Follows one ticket to its end. See [`RemoteHost::follow`].
pub struct Follower {
    host: RemoteHost,
    ticket: TicketId,
    cursor: Cursor,
    redact: Arc<dyn Redact>,
    queue: VecDeque<TicketEvent>,
    done: bool,
    /// When the current outage began, and attempts so far.
    outage: Option<(Instant, u32)>,
}

impl Follower {
    /// Where the follower stands (the engine may journal it with the
    /// checkpoints it journals, to re-attach from there after a crash).
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// The ticket.
    pub fn ticket(&self) -> &TicketId {
        &self.ticket
    }

    /// The next event; `None` after [`TicketEvent::Ended`] or
    /// [`TicketEvent::Interrupted`]. Reconnects by itself; errs when the
    /// host refuses us for good (host key, login), the ticket is unknown,
    /// or reconnecting took longer than the client's give-up time.
    pub async fn next(&mut self) -> Result<Option<TicketEvent>, RemoteError> {
        let opts = self.host.inner.opts.clone();
        loop {
            if let Some(ev) = self.queue.pop_front() {
                return Ok(Some(ev));
            }
            if self.done {
                return Ok(None);
            }
            // Right after an outage the poll does not wait for news: the
            // reconnection is reported as soon as the host answers.
            let wait = if self.outage.is_some() {
                Duration::ZERO
            } else {
                opts.poll_wait
            };
            match self
                .host
                .poll_waiting(&self.ticket, self.cursor, wait)
                .await
            {
                Ok(reply) => {
                    if let Some((since, _)) = self.outage.take() {
                        self.queue.push_back(TicketEvent::Reconnected {
                            outage: since.elapsed(),
                        });
                    }
                    self.take(reply)?;
                }
                Err(e) if e.is_transient() => {
                    let (since, attempt) = self.outage.unwrap_or((Instant::now(), 0));
                    if since.elapsed() >= opts.reconnect_give_up {
                        return Err(RemoteError::GaveUp {
                            host: self.host.name().to_string(),
                            waited_s: since.elapsed().as_secs(),
                            last: e.to_string(),
                        });
                    }
                    let attempt = attempt + 1;
                    self.outage = Some((since, attempt));
                    let delay = opts
                        .reconnect_initial
                        .saturating_mul(1u32 << (attempt - 1).min(16))
                        .min(opts.reconnect_max);
                    tracing::warn!(host = %self.host.name(), ticket = %self.ticket, "{e}; reconnecting in {delay:?}");
                    // Report the loss once per outage, then retry quietly.
                    if attempt == 1 {
                        self.queue
                            .push_back(TicketEvent::ConnectionLost { error: e, attempt });
                    }
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn take(&mut self, reply: PollReply) -> Result<(), RemoteError> {
        let r = &self.redact;
        if !reply.output.is_empty() {
            self.queue
                .push_back(TicketEvent::Output(r.redact(&reply.output)));
        }
        for cp in reply.checkpoints {
            self.queue.push_back(TicketEvent::Checkpoint(cp));
        }
        if let Some(mut p) = reply.progress {
            p.message = r.redact(&p.message);
            self.queue.push_back(TicketEvent::Progress(p));
        }
        self.cursor = reply.cursor;
        if reply.more {
            return Ok(());
        }
        match reply.state {
            TicketState::Starting | TicketState::Running { .. } => {}
            TicketState::Ended { end } => {
                self.queue
                    .push_back(TicketEvent::Ended(end.map_text(|t| r.redact(t))));
                self.done = true;
            }
            TicketState::Interrupted { reason } => {
                self.queue.push_back(TicketEvent::Interrupted {
                    reason: r.redact(&reason),
                });
                self.done = true;
            }
            TicketState::Missing => {
                return Err(RemoteError::Ticket {
                    host: self.host.name().to_string(),
                    ticket: self.ticket.to_string(),
                    message: "no such ticket on the host (never started there, or its work \
                              folder was removed)"
                        .into(),
                });
            }
        }
        Ok(())
    }
}
