//! `upshift __remote run --ticket-dir DIR`: runs one step operation on the
//! host, detached from the SSH session, and records everything in the
//! ticket folder (layout: `ticket.rs`).
//!
//! - It reads its request (secrets included) from stdin, a pipe from the
//!   launcher: nothing secret is on its command line or on disk.
//! - It registers first (`runner.json`: pid, process start time, boot id),
//!   so the coordinator can tell "still running" from "gone".
//! - The step runs with the same child containment as the local engine
//!   (`upshift_steps::child`): the guard on Unix, a Job Object on Windows.
//!   When the runner dies, the step's process tree dies with it; when the
//!   timeout fires or an abort is asked for, the step future is dropped,
//!   which kills the tree, and the end says so.
//! - Checkpoints return to the step only once fsync'd in the ticket.
//! - Everything written passes through the redactor first.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use upshift_steps::redact::{RedactStream, Redactor};
use upshift_steps::{Outputs, Probe, StepContext, StepError, StepOutcome};

use crate::protocol::{
    Checkpoint, EndState, LINE_BYTES_MAX, ProbeAnswer, Progress, StartRequest, StepOp, check_id,
};
use crate::sys::ProcessIdentity;
use crate::ticket::{self, Layout};

/// Progress reports closer together than this are not written (the last
/// one before a checkpoint or the end always is).
pub const PROGRESS_INTERVAL_MS: u64 = 100;

/// How often the runner looks for an abort request.
pub const ABORT_CHECK_MS: u64 = 50;

/// Runs the ticket in `dir`; returns the process exit code (0 whenever an
/// end was written, whatever the step's outcome).
pub fn run_main(dir: PathBuf) -> i32 {
    #[cfg(unix)]
    {
        // Leave the SSH session's process group and session (see serve.rs).
        let _ = nix::unistd::setsid();
    }
    let me = ProcessIdentity::current();
    let registered = serde_json::to_vec_pretty(&me)
        .map_err(std::io::Error::other)
        .and_then(|b| ticket::write_visible(&dir.join(ticket::RUNNER_FILE), &b));
    if registered.is_err() {
        // The ticket folder is unusable; nothing can be recorded.
        return 3;
    }
    let mut body = Vec::new();
    let read = std::io::stdin()
        .take(LINE_BYTES_MAX as u64 + 1)
        .read_to_end(&mut body);
    let req: StartRequest = match read
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_slice(&body).map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => {
            return not_started(
                &dir,
                format!("the start request was cut off or unreadable: {e}"),
            );
        }
    };
    drop(body);
    let redactor = Redactor::new(req.secrets.iter().cloned());
    install_panic_hook(dir.clone(), redactor.clone());
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return not_started(&dir, format!("cannot start an async runtime: {e}")),
    };
    let end = rt.block_on(run_ticket(&dir, req, redactor.clone()));
    write_end(&dir, &end.map_text(|t| redactor.text(t)));
    // Children of aborted/timed-out steps are being killed by their guards;
    // nothing else waits here.
    rt.shutdown_timeout(Duration::from_millis(200));
    0
}

/// Ends a ticket whose step never began; the exit code.
fn not_started(dir: &Path, reason: String) -> i32 {
    write_end(dir, &EndState::NotStarted { reason });
    0
}

fn write_end(dir: &Path, end: &EndState) {
    if let Ok(bytes) = serde_json::to_vec_pretty(end) {
        let _ = upshift_fsutil::atomic_write(&dir.join(ticket::END_FILE), &bytes);
    }
}

fn install_panic_hook(dir: PathBuf, redactor: Redactor) {
    std::panic::set_hook(Box::new(move |info| {
        if ticket::read_end(&dir).is_none() {
            write_end(
                &dir,
                &EndState::Failed {
                    message: redactor.text(&format!("the remote runner panicked: {info}")),
                    transient: false,
                },
            );
        }
    }));
}

async fn run_ticket(dir: &Path, req: StartRequest, redactor: Redactor) -> EndState {
    let not_started = |reason: String| EndState::NotStarted { reason };
    for (what, id) in [("run id", &req.run_id), ("step id", &req.step_id)] {
        if let Err(e) = check_id(what, id) {
            return not_started(e);
        }
    }
    let Some(layout) = Layout::of_ticket_dir(dir) else {
        return not_started(format!("{} is not inside a work folder", dir.display()));
    };
    let kinds = upshift_steps::registry();
    let Some(kind) = kinds.get(req.kind.as_str()) else {
        return not_started(format!(
            "this host's runner (upshift {}) has no step kind `{}`",
            env!("CARGO_PKG_VERSION"),
            req.kind
        ));
    };
    let with: toml::Table = match toml::from_str(&req.with_toml) {
        Ok(t) => t,
        Err(e) => return not_started(format!("unreadable parameters: {e}")),
    };
    let step = match kind.build(&with) {
        Ok(s) => s,
        Err(e) => return not_started(format!("bad parameters for `{}`: {e}", req.kind)),
    };
    let ctx = match TicketContext::open(
        dir,
        layout.step_work_dir(&req.run_id, &req.step_id),
        &req,
        redactor,
    ) {
        Ok(c) => c,
        Err(e) => return not_started(format!("cannot open the ticket's files: {e}")),
    };
    let work = async {
        match req.op {
            StepOp::Run => step.run(&ctx).await.map(succeeded),
            StepOp::Compensate => step.compensate(&ctx).await.map(|()| EndState::Succeeded {
                outputs: BTreeMap::new(),
                reboot_required: false,
            }),
            StepOp::Probe => step.probe(&ctx).await.map(|p| EndState::Probed {
                probe: match p {
                    Probe::Unknown => ProbeAnswer::Unknown,
                    Probe::InPlace => ProbeAnswer::InPlace,
                    Probe::Differs(d) => ProbeAnswer::Differs(d),
                },
            }),
        }
    };
    let limited = async {
        match req.timeout_ms {
            Some(ms) => tokio::time::timeout(Duration::from_millis(ms), work)
                .await
                .unwrap_or(Ok(EndState::TimedOut { timeout_ms: ms })),
            None => work.await,
        }
    };
    let end = tokio::select! {
        r = limited => r.unwrap_or_else(failed),
        reason = abort_requested(dir) => EndState::Aborted { reason },
        () = terminated() => EndState::Aborted {
            reason: "the runner was asked to stop (SIGTERM)".into(),
        },
    };
    // The step future is dropped here: the process tree of an aborted or
    // timed-out step is being killed. What it printed is on disk.
    ctx.finish();
    end
}

fn succeeded(o: StepOutcome) -> EndState {
    EndState::Succeeded {
        outputs: o.outputs,
        reboot_required: o.reboot_required,
    }
}

fn failed(e: StepError) -> EndState {
    match e {
        StepError::Failed { message, transient } => EndState::Failed { message, transient },
        StepError::WaitForOperator { reason } => EndState::WaitForOperator { reason },
    }
}

async fn abort_requested(dir: &Path) -> String {
    let file = dir.join(ticket::ABORT_FILE);
    loop {
        if let Ok(reason) = std::fs::read_to_string(&file) {
            return if reason.trim().is_empty() {
                "aborted by the coordinator".into()
            } else {
                reason
            };
        }
        tokio::time::sleep(Duration::from_millis(ABORT_CHECK_MS)).await;
    }
}

#[cfg(unix)]
async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn terminated() {
    std::future::pending().await
}

struct OutputLog {
    file: std::fs::File,
    stream: RedactStream,
}

struct CheckpointLog {
    file: std::fs::File,
    seq: u64,
}

struct ProgressState {
    seq: u64,
    written: Option<Instant>,
}

/// The [`StepContext`] of a remote step: backed by the ticket folder.
struct TicketContext {
    dir: PathBuf,
    work_dir: PathBuf,
    run_id: String,
    step_id: String,
    attempt: u32,
    resume: Option<Vec<u8>>,
    approved: bool,
    recorded: Outputs,
    redactor: Redactor,
    output: Mutex<OutputLog>,
    checkpoints: Mutex<CheckpointLog>,
    progress: Mutex<ProgressState>,
}

impl TicketContext {
    fn open(
        dir: &Path,
        work_dir: PathBuf,
        req: &StartRequest,
        redactor: Redactor,
    ) -> std::io::Result<TicketContext> {
        let append = |name: &str| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(name))
        };
        let output = append(ticket::OUTPUT_FILE)?;
        let checkpoints = append(ticket::CHECKPOINTS_FILE)?;
        Ok(TicketContext {
            dir: dir.to_path_buf(),
            work_dir,
            run_id: req.run_id.clone(),
            step_id: req.step_id.clone(),
            attempt: req.attempt,
            resume: req.resume_from.clone(),
            approved: req.approved,
            recorded: req.recorded_outputs.clone(),
            output: Mutex::new(OutputLog {
                file: output,
                stream: redactor.stream(),
            }),
            redactor,
            checkpoints: Mutex::new(CheckpointLog {
                file: checkpoints,
                seq: 0,
            }),
            progress: Mutex::new(ProgressState {
                seq: 0,
                written: None,
            }),
        })
    }

    /// Writes what the redactor still holds and flushes the output.
    fn finish(&self) {
        let mut out = self.output.lock().expect("poisoned");
        let rest = out.stream.finish();
        let _ = out.file.write_all(rest.as_bytes());
        let _ = out.file.sync_data();
    }

    fn write_progress(&self, p: &Progress) {
        if let Ok(bytes) = serde_json::to_vec(p) {
            // Progress is allowed to be lost.
            let _ = ticket::write_visible(&self.dir.join(ticket::PROGRESS_FILE), &bytes);
        }
    }
}

#[async_trait::async_trait]
impl StepContext for TicketContext {
    fn step_id(&self) -> &str {
        &self.step_id
    }

    fn run_id(&self) -> &str {
        &self.run_id
    }

    fn attempt(&self) -> u32 {
        self.attempt
    }

    fn resume_from(&self) -> Option<Vec<u8>> {
        self.resume.clone()
    }

    async fn checkpoint(&self, data: Vec<u8>, done: u64, total: u64) -> Result<(), StepError> {
        let fail = |e: std::io::Error| {
            StepError::fatal(format!(
                "cannot save a checkpoint in {}: {e}",
                self.dir.display()
            ))
        };
        // Output written before the checkpoint is durable with it.
        self.output
            .lock()
            .expect("poisoned")
            .file
            .sync_data()
            .map_err(fail)?;
        let mut log = self.checkpoints.lock().expect("poisoned");
        let cp = Checkpoint {
            seq: log.seq + 1,
            data,
            done,
            total,
        };
        let mut line = serde_json::to_vec(&cp).map_err(|e| fail(std::io::Error::other(e)))?;
        line.push(b'\n');
        // One write per line (append mode): a reader sees whole lines or a
        // cut last line, which it ignores.
        log.file.write_all(&line).map_err(fail)?;
        log.file.sync_data().map_err(fail)?;
        if log.seq == 0 {
            // The files' names must survive a crash with their contents
            // (once, before the first checkpoint is acknowledged); the
            // ticket folder's own entry was flushed when it was created.
            upshift_fsutil::sync_dir(&self.dir).map_err(fail)?;
        }
        log.seq = cp.seq;
        drop(log);
        let mut p = self.progress.lock().expect("poisoned");
        p.seq += 1;
        p.written = Some(Instant::now());
        let seq = p.seq;
        drop(p);
        self.write_progress(&Progress {
            seq,
            done,
            total,
            message: String::new(),
        });
        Ok(())
    }

    fn progress(&self, done: u64, total: u64, message: &str) {
        let mut p = self.progress.lock().expect("poisoned");
        p.seq += 1;
        let due = p
            .written
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(PROGRESS_INTERVAL_MS))
            || (total > 0 && done >= total);
        if !due {
            return;
        }
        p.written = Some(Instant::now());
        let seq = p.seq;
        drop(p);
        self.write_progress(&Progress {
            seq,
            done,
            total,
            message: self.redactor.text(message),
        });
    }

    fn output(&self, text: &str) {
        let mut out = self.output.lock().expect("poisoned");
        let clean = out.stream.push(text);
        if !clean.is_empty() {
            let _ = out.file.write_all(clean.as_bytes());
        }
    }

    fn approved(&self) -> bool {
        self.approved
    }

    fn recorded_outputs(&self) -> Outputs {
        self.recorded.clone()
    }

    fn work_dir(&self) -> PathBuf {
        let _ = std::fs::create_dir_all(&self.work_dir);
        self.work_dir.clone()
    }

    fn guard_program(&self) -> Option<PathBuf> {
        // The runner is the upshift binary; `__guard` keeps each child's
        // tree tied to the runner's life (Unix). Windows uses Job Objects.
        if cfg!(unix) {
            std::env::current_exe().ok()
        } else {
            None
        }
    }
}
