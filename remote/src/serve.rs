//! `upshift __remote serve --work-dir DIR`: the host end of one SSH
//! session. It reads requests (JSON lines) on stdin and answers on stdout;
//! it lives exactly as long as the connection and owns nothing that must
//! outlive it: each step runs in a detached runner (`runner.rs`) that keeps
//! going when the session, sshd or the coordinator dies.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::sync::{RwLock, Semaphore, mpsc};
use upshift_steps::hash;
use upshift_steps::redact::Redactor;

use upshift_steps::preflight::{Check, Earlier, PreflightContext};

use crate::protocol::{
    Cursor, HostFacts, LINE_BYTES_MAX, OP_PREFLIGHT, PROTOCOL_VERSION, PollReply, PreflightRequest,
    Reply, ReplyLine, Request, RequestLine, StartReply, StartRequest, TicketId, check_id,
    read_line,
};
use crate::sys;
use crate::ticket::{self, Layout, TicketMeta};

/// Requests handled at once in one session (each poll may wait).
pub const REQUESTS_IN_FLIGHT_MAX: usize = 64;

/// Longest wait of one poll, in ms, whatever the coordinator asks.
pub const POLL_WAIT_MS_MAX: u64 = 30_000;

/// How long a new runner has to register (write `runner.json`).
pub const START_ACK_MS: u64 = 10_000;

/// How long the session waits, when it ends, for starts in progress.
pub const STARTS_DRAIN_MS: u64 = 15_000;

/// Environment variable naming the program `reboot` runs instead of the
/// OS's (tests: a script that records the request). Set on the host (sshd's
/// `SetEnv`), never by the coordinator.
pub const REBOOT_COMMAND_ENV: &str = "UPSHIFT_REMOTE_REBOOT_COMMAND";

struct Ctx {
    layout: Layout,
    exe: PathBuf,
    exe_sha256: String,
    // Starts hold it shared; the end of the session takes it exclusively,
    // so a start that created its ticket also hands the runner its request.
    starts: RwLock<()>,
}

/// Serves one session; returns the process exit code.
pub async fn serve(work_dir: PathBuf) -> i32 {
    platform::isolate_std_handles();
    let layout = Layout::new(&work_dir);
    if let Err(e) = std::fs::create_dir_all(layout.tickets()) {
        eprintln!(
            "upshift __remote serve: cannot create {}: {e}",
            layout.tickets().display()
        );
        return 3;
    }
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("upshift __remote serve: cannot find its own binary: {e}");
            return 3;
        }
    };
    let exe_sha256 = match hash::sha256_file(&exe) {
        Ok((h, _)) => h,
        Err(e) => {
            eprintln!("upshift __remote serve: cannot read {}: {e}", exe.display());
            return 3;
        }
    };
    let ctx = Arc::new(Ctx {
        layout,
        exe,
        exe_sha256,
        starts: RwLock::new(()),
    });

    let (tx, mut rx) = mpsc::channel::<ReplyLine>(REQUESTS_IN_FLIGHT_MAX);
    let writer = tokio::spawn(async move {
        let mut out = tokio::io::stdout();
        while let Some(line) = rx.recv().await {
            let Ok(mut bytes) = serde_json::to_vec(&line) else {
                continue;
            };
            bytes.push(b'\n');
            if out.write_all(&bytes).await.is_err() || out.flush().await.is_err() {
                break; // the connection is gone
            }
        }
    });

    let limit = Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_MAX));
    let mut stdin = BufReader::new(tokio::io::stdin());
    loop {
        let line = match read_line(&mut stdin, LINE_BYTES_MAX).await {
            Ok(Some(l)) => l,
            Ok(None) => break,
            Err(e) => {
                eprintln!("upshift __remote serve: {e}");
                break;
            }
        };
        let req: RequestLine = match serde_json::from_slice(&line) {
            Ok(r) => r,
            Err(e) => {
                // A request this runner does not know (a newer coordinator)
                // is answered under its own id when the line has one, so
                // the caller is not left waiting.
                let id = serde_json::from_slice::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v.get("id").and_then(serde_json::Value::as_u64))
                    .unwrap_or(0);
                let _ = tx
                    .send(ReplyLine {
                        id,
                        reply: Reply::Error {
                            message: format!(
                                "unreadable request (protocol {PROTOCOL_VERSION}): {e}"
                            ),
                        },
                    })
                    .await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
            break;
        };
        let (ctx, tx) = (Arc::clone(&ctx), tx.clone());
        tokio::spawn(async move {
            let reply = handle(&ctx, req.request).await;
            let _ = tx.send(ReplyLine { id: req.id, reply }).await;
            drop(permit);
        });
    }
    // The connection ended. Polls are moot, but a start that passed the
    // gate must hand its runner the request, or the ticket would only show
    // as interrupted after the grace period.
    let _ = tokio::time::timeout(Duration::from_millis(STARTS_DRAIN_MS), ctx.starts.write()).await;
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
    0
}

async fn handle(ctx: &Ctx, req: Request) -> Reply {
    let result = match req {
        Request::Hello => Ok(Reply::Hello { facts: facts(ctx) }),
        Request::Start { request } => {
            let _guard = ctx.starts.read().await;
            start(ctx, request)
                .await
                .map(|started| Reply::Start { started })
        }
        Request::Poll {
            ticket,
            cursor,
            wait_ms,
        } => poll(ctx, &ticket, cursor, wait_ms)
            .await
            .map(|poll| Reply::Poll { poll }),
        Request::Abort { ticket, reason } => abort(ctx, &ticket, &reason).map(|_| Reply::Done),
        Request::Prune { ticket } => prune(ctx, &ticket).map(|_| Reply::Done),
        Request::Reboot => reboot().await.map(|_| Reply::Done),
        Request::Preflight { request } => Ok(Reply::Preflight {
            checks: preflight(request).await,
        }),
        Request::PreflightHost => Ok(Reply::Preflight {
            checks: upshift_steps::preflight::windows::host_state(),
        }),
    };
    result.unwrap_or_else(|message| Reply::Error { message })
}

fn facts(ctx: &Ctx) -> HostFacts {
    HostFacts {
        os: std::env::consts::OS.to_string(),
        arch: std::env::consts::ARCH.to_string(),
        hostname: sys::hostname(),
        user: sys::user(),
        boot_id: sys::boot_id(),
        free_bytes: sys::free_bytes(ctx.layout.work_dir()),
        is_admin: sys::is_admin(),
        work_dir: ctx.layout.work_dir().display().to_string(),
        exe_sha256: ctx.exe_sha256.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        protocol: PROTOCOL_VERSION,
        ops: vec![OP_PREFLIGHT.to_string()],
    }
}

/// A step's read-only checks, here in the session (no ticket, no runner,
/// nothing written), bounded by the request's limit, every text redacted.
async fn preflight(req: PreflightRequest) -> Vec<Check> {
    let redactor = Redactor::new(req.secrets.iter().cloned());
    let limit = Duration::from_millis(req.time_limit_ms);
    let checks = preflight_unredacted(&req, limit).await;
    checks
        .into_iter()
        .map(|c| match c {
            Check::Ok { what } => Check::Ok {
                what: redactor.text(&what),
            },
            Check::Finding {
                found,
                expected,
                fix,
            } => Check::Finding {
                found: redactor.text(&found),
                expected: redactor.text(&expected),
                fix: redactor.text(&fix),
            },
            Check::NotChecked { what, why } => Check::NotChecked {
                what: redactor.text(&what),
                why: redactor.text(&why),
            },
        })
        .collect()
}

async fn preflight_unredacted(req: &PreflightRequest, limit: Duration) -> Vec<Check> {
    let what = format!("the step's own checks ({})", req.kind);
    let kinds = upshift_steps::registry();
    let Some(kind) = kinds.get(req.kind.as_str()) else {
        return vec![Check::not_checked(
            what,
            format!(
                "this host's upshift ({}) has no step kind `{}`",
                env!("CARGO_PKG_VERSION"),
                req.kind
            ),
        )];
    };
    let step = match toml::from_str::<toml::Table>(&req.with_toml)
        .map_err(|e| format!("unreadable parameters: {e}"))
        .and_then(|with| kind.build(&with).map_err(|e| e.message))
    {
        Ok(s) => s,
        Err(e) => {
            return vec![Check::not_checked(
                what,
                format!("its parameters do not build on the host: {e}"),
            )];
        }
    };
    let ctx = PreflightContext {
        step_id: req.step_id.clone(),
        host: Some(req.host.clone()),
        time_limit: limit,
        earlier: req
            .earlier
            .iter()
            .map(|e| {
                Arc::new(Earlier {
                    id: e.id.clone(),
                    kind: e.kind.clone(),
                    with_text: e.with_text.clone(),
                })
            })
            .collect(),
        relative_paths_unresolvable: Some(format!(
            "on host {} a step runs in a fresh ticket folder (`tickets/<ticket>` of the host's work_dir), so a relative path names nothing of yours there",
            req.host
        )),
    };
    match tokio::time::timeout(limit, step.preflight(&ctx)).await {
        Ok(c) => c,
        Err(_) => vec![Check::finding(
            format!(
                "its checks did not finish within {} ms on {}",
                limit.as_millis(),
                req.host
            ),
            "every check answered in time (a server or share that answers slowly will slow the run too)",
            "look at what it checks (server, share, package path) from that host",
        )],
    }
}

/// The copy of a request kept on the host's disk: no secret values, no
/// checkpoint, secrets replaced in the parameters and recorded outputs.
fn stored_copy(req: &StartRequest) -> StartRequest {
    let r = Redactor::new(req.secrets.iter().cloned());
    StartRequest {
        with_toml: r.text(&req.with_toml),
        secrets: Vec::new(),
        resume_from: None,
        recorded_outputs: req
            .recorded_outputs
            .iter()
            .map(|(k, v)| (k.clone(), r.text(v)))
            .collect(),
        ..req.clone()
    }
}

async fn start(ctx: &Ctx, req: StartRequest) -> Result<StartReply, String> {
    check_id("run id", &req.run_id)?;
    check_id("step id", &req.step_id)?;
    let tickets = ctx.layout.tickets();
    let dir = ctx.layout.ticket(&req.ticket);
    // The gate: one mkdir, atomic. Whoever creates the folder starts the
    // runner; everyone else attaches.
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta: Option<TicketMeta> = std::fs::read(dir.join(ticket::TICKET_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            // Without ticket.json (the launcher died right after the gate)
            // the ticket cannot be told apart; ids are unique per step, so
            // it counts as the same.
            let same_step = meta.is_none_or(|m| m.identity == req.identity());
            return Ok(StartReply::Exists { same_step });
        }
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    // The gate must survive a power cut once the coordinator is told.
    upshift_fsutil::sync_dir(&tickets)
        .map_err(|e| format!("cannot flush {}: {e}", tickets.display()))?;
    let meta = TicketMeta {
        ticket: req.ticket.clone(),
        identity: req.identity(),
        created_unix_ms: ticket::now_unix_ms(),
        boot_id: sys::boot_id(),
    };
    let write = |name: &str, bytes: Vec<u8>| {
        upshift_fsutil::atomic_write(&dir.join(name), &bytes)
            .map_err(|e| format!("cannot write {}: {e}", dir.join(name).display()))
    };
    write(
        ticket::TICKET_FILE,
        serde_json::to_vec_pretty(&meta).map_err(|e| e.to_string())?,
    )?;
    // For people reading the host's disk only: not fsync'd (one fewer
    // flush per step; nothing reads it back).
    let stored = serde_json::to_vec_pretty(&stored_copy(&req)).map_err(|e| e.to_string())?;
    std::fs::write(dir.join(ticket::REQUEST_FILE), stored).map_err(|e| {
        format!(
            "cannot write {}: {e}",
            dir.join(ticket::REQUEST_FILE).display()
        )
    })?;

    let mut cmd = tokio::process::Command::new(&ctx.exe);
    cmd.arg("__remote")
        .arg("run")
        .arg("--ticket-dir")
        .arg(&dir)
        .current_dir(&dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    platform::detach(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the runner {}: {e}", ctx.exe.display()))?;
    let pid = child.id().unwrap_or(0);
    // The whole request, secrets included, goes through the pipe only.
    let body = serde_json::to_vec(&req).map_err(|e| e.to_string())?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&body).await;
        let _ = stdin.shutdown().await;
    }
    let deadline = Instant::now() + Duration::from_millis(START_ACK_MS);
    loop {
        if let Ok(bytes) = std::fs::read(dir.join(ticket::RUNNER_FILE))
            && let Ok(id) = serde_json::from_slice::<sys::ProcessIdentity>(&bytes)
        {
            return Ok(StartReply::New { pid: id.pid });
        }
        if let Ok(Some(status)) = child.try_wait() {
            if ticket::read_end(&dir).is_some() {
                return Ok(StartReply::New { pid });
            }
            return Err(format!(
                "the runner exited ({status}) before registering in {}",
                dir.display()
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the runner did not register within {START_ACK_MS} ms"
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // `child` is dropped without being killed: the runner is on its own
    // (tokio reaps it if it ends while this session lives).
}

async fn poll(
    ctx: &Ctx,
    ticket: &TicketId,
    cursor: Cursor,
    wait_ms: u64,
) -> Result<PollReply, String> {
    let dir = ctx.layout.ticket(ticket);
    let wait = Duration::from_millis(wait_ms.min(POLL_WAIT_MS_MAX));
    let began = Instant::now();
    loop {
        // State first: if it is final, everything the runner wrote before
        // its end is in the files read next.
        let state = ticket::observe(&dir);
        let news = ticket::read_news(&dir, cursor)
            .map_err(|e| format!("cannot read ticket {}: {e}", dir.display()))?;
        if !news.is_empty() || state.is_final() || began.elapsed() >= wait {
            return Ok(PollReply {
                state,
                output: news.output,
                checkpoints: news.checkpoints,
                progress: news.progress,
                cursor: news.cursor,
                more: news.more,
            });
        }
        tokio::time::sleep(ticket::poll_tick(began.elapsed())).await;
    }
}

fn abort(ctx: &Ctx, ticket: &TicketId, reason: &str) -> Result<(), String> {
    let dir = ctx.layout.ticket(ticket);
    if !dir.is_dir() {
        return Err(format!("no ticket {ticket} on this host"));
    }
    upshift_fsutil::atomic_write(&dir.join(ticket::ABORT_FILE), reason.as_bytes())
        .map_err(|e| format!("cannot write the abort request in {}: {e}", dir.display()))
}

fn prune(ctx: &Ctx, ticket: &TicketId) -> Result<(), String> {
    let dir = ctx.layout.ticket(ticket);
    match ticket::observe(&dir) {
        crate::protocol::TicketState::Missing => Ok(()),
        s if s.is_final() => {
            for f in [
                ticket::OUTPUT_FILE,
                ticket::CHECKPOINTS_FILE,
                ticket::PROGRESS_FILE,
                ticket::REQUEST_FILE,
                ticket::ABORT_FILE,
            ] {
                let _ = std::fs::remove_file(dir.join(f));
            }
            Ok(())
        }
        _ => Err(format!("ticket {ticket} is still running; abort it first")),
    }
}

async fn reboot() -> Result<(), String> {
    let (program, args): (String, Vec<&str>) = match std::env::var(REBOOT_COMMAND_ENV) {
        Ok(p) if !p.is_empty() => (p, vec![]),
        _ => platform::reboot_command(),
    };
    let mut child = tokio::process::Command::new(&program)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
        Ok(Ok(s)) if s.success() => Ok(()),
        Ok(Ok(s)) => Err(format!("`{program} {}` failed: {s}", args.join(" "))),
        Ok(Err(e)) => Err(format!("waiting for {program}: {e}")),
        // Still running: the machine is going down.
        Err(_) => Ok(()),
    }
}

#[cfg(unix)]
mod platform {
    pub fn isolate_std_handles() {}

    /// The runner calls `setsid()` itself as its first act (no unsafe
    /// `pre_exec` here): it leaves the session's process group and has no
    /// controlling terminal, so neither the end of the SSH session nor a
    /// signal to sshd's group reaches it.
    pub fn detach(_cmd: &mut tokio::process::Command) {}

    pub fn reboot_command() -> (String, Vec<&'static str>) {
        ("systemctl".into(), vec!["reboot"])
    }
}

// Only type-checked here (no Windows machine): see docs/remote.md.
#[cfg(windows)]
#[allow(unsafe_code)]
mod platform {
    use windows_sys::Win32::Foundation::{HANDLE_FLAG_INHERIT, SetHandleInformation};
    use windows_sys::Win32::System::Console::{
        GetStdHandle, STD_ERROR_HANDLE, STD_INPUT_HANDLE, STD_OUTPUT_HANDLE,
    };
    use windows_sys::Win32::System::Threading::{
        CREATE_BREAKAWAY_FROM_JOB, CREATE_NEW_PROCESS_GROUP, DETACHED_PROCESS,
    };

    /// sshd waits for EOF on the session's pipes; a runner that inherited
    /// them would hold the session open until it ends (Win32-OpenSSH
    /// #2452). Our own std handles are made non-inheritable before any
    /// runner is spawned.
    pub fn isolate_std_handles() {
        for which in [STD_INPUT_HANDLE, STD_OUTPUT_HANDLE, STD_ERROR_HANDLE] {
            // SAFETY: GetStdHandle returns a handle owned by this process
            // (or null/invalid, which SetHandleInformation rejects harmlessly).
            unsafe {
                let h = GetStdHandle(which);
                if !h.is_null() {
                    SetHandleInformation(h, HANDLE_FLAG_INHERIT, 0);
                }
            }
        }
    }

    /// Out of sshd's job object (Win32-OpenSSH allows breakaway since
    /// 2018, PowerShell/openssh-portable#267), without a console, in its
    /// own process group: the end of the session does not end the runner.
    pub fn detach(cmd: &mut tokio::process::Command) {
        cmd.creation_flags(DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP | CREATE_BREAKAWAY_FROM_JOB);
    }

    pub fn reboot_command() -> (String, Vec<&'static str>) {
        (
            "shutdown".into(),
            vec![
                "/r",
                "/t",
                "5",
                "/c",
                "upshift: reboot asked by the coordinator",
            ],
        )
    }
}
