//! The executor: performs what [`crate::decide`] says, with tokio.
//!
//! The journal [`Writer`] commits whatever is queued in one durable commit
//! (group commit); the scheduler loop commits its own transitions on its
//! thread, folds every committed event into its [`RunState`], asks `decide`
//! what to do, and polls the step attempts it starts (within the
//! concurrency limit and the plan's locks) itself. A step transition is one
//! commit: the end of one attempt is journaled together with the starts it
//! makes possible.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use upshift_journal::{Actor, Envelope, Event, Journal, JournalError, Outcome, RunId};
use upshift_steps::{Registry, Step, StepContext, StepError, StepOutcome};

use crate::decide::{End, Limits, decide_within};
use crate::plan::Plan;
use crate::state::{RunState, StepStatus, resolve_with};

/// Bytes of a step's output kept for the journal (the tail).
pub const OUTPUT_TAIL_BYTES: usize = 16 * 1024;
/// Minimum interval between two journaled progress events of one step.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);
/// Upper bound on parallel step attempts.
pub const CONCURRENCY_MAX: usize = 64;
/// Default cap on parallel step attempts.
pub const CONCURRENCY_DEFAULT: usize = 8;

/// How a session of the engine ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The run ended.
    Finished(Outcome),
    /// Waiting for an operator; the reason says what to do.
    Paused(String),
    /// Stopped by Ctrl-C/SIGTERM; resumable.
    Interrupted,
    /// A step needed a reboot and the plan says `reboot = "auto"`: the
    /// machine is rebooting and the run resumes at boot.
    Rebooting(String),
}

/// Errors that stop the engine (the run stays resumable).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The journal failed (disk full, I/O, corruption).
    #[error(transparent)]
    Journal(#[from] Arc<JournalError>),
    /// Anything else, in words.
    #[error("{0}")]
    Other(String),
}

impl From<JournalError> for EngineError {
    fn from(e: JournalError) -> Self {
        EngineError::Journal(Arc::new(e))
    }
}

/// Receives what happens, for a UI. Called from the scheduler loop.
pub trait Observer: Send + Sync {
    /// A committed event, with the state after it.
    fn event(&self, _env: &Envelope, _state: &RunState) {}
    /// Output of a step attempt.
    fn output(&self, _step: &str, _text: &str) {}
    /// Non-durable progress of a step.
    fn progress(&self, _step: &str, _done: u64, _total: u64, _message: &str) {}
    /// The events of a commit were all passed to [`Observer::event`]:
    /// write out what was buffered for them (called once per commit).
    fn flush(&self) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

/// Where operator decisions for a live run come from. The engine polls it
/// every 500 ms and journals what it hands over; the application layer's
/// inbox folder (`app::inbox::DirInbox`) is the implementation,
/// handed in through [`Config::inbox`] so the engine does not depend on it.
pub trait Inbox: Send + Sync {
    /// Takes (and removes) the decisions queued for `run`, oldest first, as
    /// the events that record them. Each is checked against the run as it
    /// stands now (`plan`, `state`): one that no longer fits is journaled
    /// as a refusal note instead.
    fn take(&self, run: RunId, plan: &Plan, state: &RunState) -> Vec<Event>;
}

/// Engine settings.
pub struct Config {
    /// Step kinds.
    pub registry: Registry,
    /// Cap on parallel attempts (None: number of ready steps, at most 8).
    pub concurrency: Option<usize>,
    /// Program used to guard child processes (the upshift binary).
    pub guard_program: Option<PathBuf>,
    /// Where steps keep files: `<dir>/<run>/<step>/`.
    pub work_root: PathBuf,
    /// Who runs the engine.
    pub actor: Actor,
    /// UI.
    pub observer: Arc<dyn Observer>,
    /// Polled for operator decisions while the run is live.
    pub inbox: Option<Arc<dyn Inbox>>,
    /// The journal folder (for the resume-at-boot task).
    pub journal_dir: Option<PathBuf>,
    /// Where the resume-at-boot task goes (tests, demo).
    pub boot: crate::reboot::BootOverrides,
}

// ---------------------------------------------------------------------------
// The journal writer: group commit.

struct WriteReq {
    run: RunId,
    events: Vec<Event>,
    ack: Option<oneshot::Sender<Result<Vec<Envelope>, Arc<JournalError>>>>,
}

/// What the writer thread is asked to do.
enum Msg {
    /// Commit what is queued (a [`Writer::post`] was queued).
    Commit,
    /// Commit what is queued, close the journal, end the thread.
    Close,
}

/// The journal and what a commit needs besides it: owned by whoever commits
/// (one at a time, behind [`Shared::core`]).
struct Core {
    journal: Journal,
    /// Next seq of each run written in this session.
    next: HashMap<RunId, u64>,
    redactor: Redactor,
    committed: mpsc::UnboundedSender<Envelope>,
    crash_after: Option<u64>,
}

struct Shared {
    /// Requests not yet committed, in the order they were made.
    queue: Mutex<Vec<WriteReq>>,
    /// The journal; `None` once closed.
    core: Mutex<Option<Core>>,
}

/// A handle to the journal writer.
///
/// Group commit by combining: a request is queued, then whoever commits
/// next takes everything queued into one commit. The scheduler's own
/// transitions ([`Writer::write_here`]) are committed on its thread when
/// the journal is free, without waking another thread and waiting to be
/// woken (two thread hand-offs per transition); other writes and
/// [`Writer::post`]s are committed by the writer thread, so that their
/// callers' threads stay free and concurrent writers share commits.
/// Whoever holds the journal looks at the queue again after letting go, so
/// no request is left behind.
#[derive(Clone)]
pub struct Writer {
    shared: Arc<Shared>,
    tx: std::sync::mpsc::Sender<Msg>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

/// Replaces secret values in every text of an event.
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Arc<Vec<String>>,
}

impl Redactor {
    /// Redacts these values (empty and very short values are ignored: they
    /// would mangle ordinary text and carry no secret).
    pub fn new(values: impl IntoIterator<Item = String>) -> Redactor {
        let mut v: Vec<String> = values
            .into_iter()
            .filter(|s| s.len() >= crate::plan::SECRET_LEN_MIN)
            .collect();
        // Longest first, so a secret containing another is replaced whole.
        v.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Redactor {
            secrets: Arc::new(v),
        }
    }

    /// Redacts one string.
    pub fn text(&self, s: &str) -> String {
        let mut out = s.to_string();
        for secret in self.secrets.iter() {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "***");
            }
        }
        out
    }

    fn event(&self, e: &mut Event) {
        if !self.secrets.is_empty() {
            e.for_each_text_mut(&mut |s| {
                if self.secrets.iter().any(|x| s.contains(x.as_str())) {
                    *s = self.text(s);
                }
            });
        }
    }
}

impl upshift_remote::client::Redact for Redactor {
    fn redact(&self, text: &str) -> String {
        self.text(text)
    }
}

impl Writer {
    /// Starts the writer over `journal`. Every committed envelope is also
    /// sent to `committed`, in journal order.
    pub fn start(
        journal: Journal,
        redactor: Redactor,
        committed: mpsc::UnboundedSender<Envelope>,
    ) -> Writer {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Vec::new()),
            core: Mutex::new(Some(Core {
                journal,
                next: HashMap::new(),
                redactor,
                committed,
                crash_after: failpoint_crash_after(),
            })),
        });
        let (tx, rx) = std::sync::mpsc::channel::<Msg>();
        let own = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("upshift-journal-writer".into())
            .spawn(move || {
                while let Ok(msg) = rx.recv() {
                    // Whatever else was asked meanwhile is served by the
                    // same commit.
                    let mut closing = matches!(msg, Msg::Close);
                    while let Ok(m) = rx.try_recv() {
                        closing |= matches!(m, Msg::Close);
                    }
                    if closing {
                        // Waits for a commit in progress, commits the rest.
                        let mut core = own.core.lock().expect("poisoned");
                        if let Some(c) = core.as_mut() {
                            c.commit(own.take_queued());
                        }
                        *core = None; // closes the journal
                        break;
                    }
                    own.commit_queued();
                }
            })
            .expect("spawn journal writer");
        Writer {
            shared,
            tx,
            thread: Arc::new(Mutex::new(Some(thread))),
        }
    }

    /// Commits what is queued, closes the journal cleanly and waits for the
    /// writer thread to end.
    pub fn close(&self) {
        let _ = self.tx.send(Msg::Close);
        if let Some(t) = self.thread.lock().expect("poisoned").take() {
            let _ = t.join();
        }
    }

    /// Appends events of `run` durably, in one commit with whatever else is
    /// queued; returns them as stored. The writer thread commits them, so
    /// the caller's thread stays free for other writers meanwhile (step
    /// checkpoints of parallel branches share commits).
    pub async fn write(
        &self,
        run: RunId,
        events: Vec<Event>,
    ) -> Result<Vec<Envelope>, EngineError> {
        self.write_with(run, events, false).await
    }

    /// [`Writer::write`] for the scheduler's own transitions: committed on
    /// the caller's thread when the journal is free, without waking the
    /// writer thread and waiting to be woken (a chain of steps waits for
    /// each transition anyway).
    pub async fn write_here(
        &self,
        run: RunId,
        events: Vec<Event>,
    ) -> Result<Vec<Envelope>, EngineError> {
        self.write_with(run, events, true).await
    }

    async fn write_with(
        &self,
        run: RunId,
        events: Vec<Event>,
        here: bool,
    ) -> Result<Vec<Envelope>, EngineError> {
        let (ack, rx) = oneshot::channel();
        self.shared.push(WriteReq {
            run,
            events,
            ack: Some(ack),
        });
        if here {
            // Blocks this thread for the commit (as long as the disk takes
            // to sync), which is what its caller would wait for anyway.
            self.shared.commit_queued();
        } else if self.tx.send(Msg::Commit).is_err() {
            // The writer thread has ended (the journal was closed): this
            // finds the journal closed and drops the request, so the
            // caller hears "journal writer stopped" instead of waiting.
            self.shared.commit_queued();
        }
        rx.await
            .map_err(|_| EngineError::Other("journal writer stopped".into()))?
            .map_err(EngineError::Journal)
    }

    /// Queues events without waiting for them (progress); the writer thread
    /// commits them.
    pub fn post(&self, run: RunId, events: Vec<Event>) {
        self.shared.push(WriteReq {
            run,
            events,
            ack: None,
        });
        let _ = self.tx.send(Msg::Commit);
    }
}

impl Shared {
    fn push(&self, req: WriteReq) {
        self.queue.lock().expect("poisoned").push(req);
    }

    fn take_queued(&self) -> Vec<WriteReq> {
        std::mem::take(&mut *self.queue.lock().expect("poisoned"))
    }

    /// Commits everything queued, unless another caller holds the journal:
    /// that one looks at the queue again after it lets go (below), so a
    /// request queued before this call is always committed by someone.
    fn commit_queued(&self) {
        loop {
            let mut guard = match self.core.try_lock() {
                Ok(g) => g,
                Err(std::sync::TryLockError::WouldBlock) => return,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            };
            let Some(core) = guard.as_mut() else {
                // Closed: what is queued is dropped, its callers told
                // "journal writer stopped".
                drop(self.take_queued());
                return;
            };
            loop {
                let reqs = self.take_queued();
                if reqs.is_empty() {
                    break;
                }
                core.commit(reqs);
            }
            drop(guard);
            // A request queued after the last look, whose caller found the
            // journal held: commit it now.
            if self.queue.lock().expect("poisoned").is_empty() {
                return;
            }
        }
    }
}

impl Core {
    /// Commits `reqs` in one durable commit and answers each.
    fn commit(&mut self, mut reqs: Vec<WriteReq>) {
        if reqs.is_empty() {
            return;
        }
        // The time as the journal keeps it (microseconds): the live state
        // folds these envelopes, replay the stored ones, and both must see
        // the same time.
        let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
        let mut batch = Vec::new();
        let mut spans = Vec::new();
        let mut seq_err = None;
        for r in &mut reqs {
            let n = match self.next.get(&r.run) {
                Some(n) => *n,
                None => match self.journal.next_seq(r.run) {
                    Ok(n) => n,
                    Err(e) => {
                        seq_err = Some(Arc::new(e));
                        break;
                    }
                },
            };
            let start = batch.len();
            for (i, mut ev) in std::mem::take(&mut r.events).into_iter().enumerate() {
                self.redactor.event(&mut ev);
                batch.push(Envelope {
                    run: r.run,
                    seq: n + i as u64,
                    time: now,
                    event: ev,
                });
            }
            self.next.insert(r.run, n + (batch.len() - start) as u64);
            spans.push(start..batch.len());
        }
        let result = match seq_err {
            Some(e) => Err(e),
            None => commit(&mut self.journal, &batch, self.crash_after),
        };
        match result {
            Ok(()) => {
                for env in &batch {
                    let _ = self.committed.send(env.clone());
                }
                for (r, span) in reqs.into_iter().zip(spans) {
                    if let Some(ack) = r.ack {
                        let _ = ack.send(Ok(batch[span].to_vec()));
                    }
                }
            }
            Err(e) => {
                // Nothing of the batch was written: forget the seqs handed
                // out, and fail every request.
                self.next.clear();
                for r in reqs {
                    if let Some(ack) = r.ack {
                        let _ = ack.send(Err(Arc::clone(&e)));
                    }
                }
            }
        }
    }
}

#[cfg(feature = "failpoints")]
fn failpoint_crash_after() -> Option<u64> {
    std::env::var("UPSHIFT_FAILPOINT_CRASH_AFTER")
        .ok()
        .and_then(|v| v.parse().ok())
}

#[cfg(not(feature = "failpoints"))]
fn failpoint_crash_after() -> Option<u64> {
    None
}

/// Commits a batch. With the `failpoints` feature and
/// `UPSHIFT_FAILPOINT_CRASH_AFTER=k`, the process aborts right after the
/// k-th event of the run (seq k-1) is durable.
fn commit(
    journal: &mut Journal,
    batch: &[Envelope],
    crash_after: Option<u64>,
) -> Result<(), Arc<JournalError>> {
    if let Some(k) = crash_after
        && let Some(pos) = batch.iter().position(|e| e.seq + 1 >= k)
    {
        journal.append(&batch[..=pos]).map_err(Arc::new)?;
        // layout: allow(print) — the process aborts on the next line; there
        // is no caller left to return this to.
        eprintln!(
            "upshift: failpoint: aborting after event {k} (seq {})",
            batch[pos].seq
        );
        std::process::abort();
    }
    journal.append(batch).map_err(Arc::new)
}

// ---------------------------------------------------------------------------
// The step context.

struct Tail {
    text: String,
}

impl Tail {
    fn push(&mut self, s: &str) {
        self.text.push_str(s);
        if self.text.len() > 2 * OUTPUT_TAIL_BYTES {
            self.trim();
        }
    }
    fn trim(&mut self) {
        if self.text.len() > OUTPUT_TAIL_BYTES {
            let mut cut = self.text.len() - OUTPUT_TAIL_BYTES;
            while !self.text.is_char_boundary(cut) {
                cut += 1;
            }
            self.text.drain(..cut);
        }
    }
    fn take(&mut self) -> String {
        self.trim();
        std::mem::take(&mut self.text)
    }
}

struct Ctx {
    run: RunId,
    run_text: String,
    step: String,
    attempt: u32,
    resume: Option<Vec<u8>>,
    approved: bool,
    recorded: BTreeMap<String, String>,
    work_dir: PathBuf,
    guard: Option<PathBuf>,
    writer: Writer,
    observer: Arc<dyn Observer>,
    redactor: Redactor,
    tail: Mutex<Tail>,
    last_progress: Mutex<Option<Instant>>,
}

#[async_trait::async_trait]
impl StepContext for Ctx {
    fn step_id(&self) -> &str {
        &self.step
    }
    fn run_id(&self) -> &str {
        &self.run_text
    }
    fn attempt(&self) -> u32 {
        self.attempt
    }
    fn resume_from(&self) -> Option<Vec<u8>> {
        self.resume.clone()
    }
    async fn checkpoint(&self, data: Vec<u8>, done: u64, total: u64) -> Result<(), StepError> {
        self.writer
            .write(
                self.run,
                vec![Event::StepCheckpoint {
                    step: self.step.clone(),
                    data,
                    done,
                    total,
                }],
            )
            .await
            .map(|_| ())
            .map_err(|e| StepError::fatal(format!("checkpoint not saved: {e}")))
    }
    fn progress(&self, done: u64, total: u64, message: &str) {
        let message = &self.redactor.text(message);
        self.observer.progress(&self.step, done, total, message);
        let mut last = self.last_progress.lock().expect("poisoned");
        if last.is_some_and(|t| t.elapsed() < PROGRESS_INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
        self.writer.post(
            self.run,
            vec![Event::StepProgress {
                step: self.step.clone(),
                done,
                total,
                message: message.chars().take(200).collect(),
            }],
        );
    }
    fn output(&self, text: &str) {
        // Redacted before anything sees it: the terminal (--show-output),
        // the run log and the journal's tail.
        let text = &self.redactor.text(text);
        self.observer.output(&self.step, text);
        self.tail.lock().expect("poisoned").push(text);
    }
    fn approved(&self) -> bool {
        self.approved
    }
    fn recorded_outputs(&self) -> BTreeMap<String, String> {
        self.recorded.clone()
    }
    fn work_dir(&self) -> PathBuf {
        let _ = upshift_fsutil::create_private_dir_all(&self.work_dir);
        self.work_dir.clone()
    }
    fn guard_program(&self) -> Option<PathBuf> {
        self.guard.clone()
    }
}

// ---------------------------------------------------------------------------
// The scheduler loop.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    Run,
    Compensate,
}

struct Done {
    step: String,
    work: Work,
    attempt: u32,
    result: Result<StepOutcome, StepError>,
    tail: String,
    /// A remote attempt's runner was found gone (or never began): start a
    /// new attempt from the last checkpoint, and why.
    restart: Option<String>,
}

/// A remote attempt found interrupted is started again at most this many
/// times in one engine session; then it fails (and its retry policy
/// decides).
pub const REMOTE_RESTARTS_MAX: u32 = 3;

/// Secret values resolved from their references.
pub fn resolve_secrets(plan: &Plan) -> Result<BTreeMap<String, String>, String> {
    plan.secrets
        .iter()
        .map(|(name, r)| Ok((name.clone(), r.read(name)?)))
        .collect()
}

/// Runs (or resumes) one run to its end, a pause or an interruption.
pub struct Engine {
    plan: Arc<Plan>,
    cfg: Config,
    run: RunId,
    writer: Writer,
    committed: mpsc::UnboundedReceiver<Envelope>,
    state: RunState,
    secrets: BTreeMap<String, String>,
    redactor: Redactor,
    /// Steps a rollback compensates, and the number of done steps it was
    /// computed for (it changes only when a step completes).
    compensable: (Option<u32>, BTreeSet<String>),
    /// The program that guards step processes ([`guard_beside`]).
    guard: Option<PathBuf>,
    /// The plan's ssh hosts ([`crate::remote`]).
    hosts: crate::remote::Hosts,
}

/// File name of the guard-only binary (`src/bin/upshift-guard.rs`).
pub const GUARD_BINARY: &str = if cfg!(windows) {
    "upshift-guard.exe"
} else {
    "upshift-guard"
};

/// The guard for step processes of the `upshift` binary at `exe`: the small
/// `upshift-guard` beside it when there is one (its start costs a fraction
/// of `upshift`'s, paid per process step), else `upshift` itself (its
/// `__guard` command).
pub fn guard_beside(exe: &std::path::Path) -> PathBuf {
    let small = exe.with_file_name(GUARD_BINARY);
    if small.is_file() {
        small
    } else {
        exe.to_path_buf()
    }
}

impl Engine {
    /// Prepares an engine for `run`, whose events so far are `history`.
    /// Starts the writer thread on `journal`.
    pub fn new(
        plan: Plan,
        cfg: Config,
        journal: Journal,
        run: RunId,
        history: &[Envelope],
        secrets: BTreeMap<String, String>,
    ) -> Engine {
        Engine::with_state(
            plan,
            cfg,
            journal,
            run,
            RunState::from_events(history),
            secrets,
        )
    }

    /// Like [`Engine::new`], from the run's already folded state (a resume
    /// folds the journal as it scans it, without holding every event).
    pub fn with_state(
        plan: Plan,
        cfg: Config,
        journal: Journal,
        run: RunId,
        mut state: RunState,
        secrets: BTreeMap<String, String>,
    ) -> Engine {
        state.attach(&plan);
        let (ctx, crx) = mpsc::unbounded_channel();
        let redactor = Redactor::new(secrets.values().cloned());
        let writer = Writer::start(journal, redactor.clone(), ctx);
        let guard = cfg.guard_program.as_deref().map(guard_beside);
        let hosts = crate::remote::hosts(&plan, cfg.guard_program.clone());
        Engine {
            plan: Arc::new(plan),
            cfg,
            run,
            writer,
            committed: crx,
            state,
            secrets,
            redactor,
            compensable: (None, BTreeSet::new()),
            guard,
            hosts,
        }
    }

    /// A handle to the journal writer, for what is journaled beside the
    /// scheduler (the operator notifications' deliveries, through the
    /// non-blocking [`Writer::post`]); such events are folded like any.
    pub fn writer(&self) -> Writer {
        self.writer.clone()
    }

    /// Closes the journal cleanly (also done on drop).
    pub fn close(&self) {
        self.writer.close();
    }

    /// The folded state.
    pub fn state(&self) -> &RunState {
        &self.state
    }

    /// Journals events and folds everything committed so far.
    async fn journal(&mut self, events: Vec<Event>) -> Result<(), EngineError> {
        if events.is_empty() {
            return Ok(());
        }
        self.writer.write_here(self.run, events).await?;
        self.drain_committed();
        Ok(())
    }

    /// Folds committed events in journal order, with the journal's times:
    /// the live state is the fold replay makes of the same journal.
    fn drain_committed(&mut self) {
        let mut any = false;
        while let Ok(env) = self.committed.try_recv() {
            self.state.apply(&env);
            self.cfg.observer.event(&env, &self.state);
            any = true;
        }
        if any {
            self.cfg.observer.flush();
        }
    }

    fn build(&self, id: &str, work: Work) -> Result<Box<dyn Step>, String> {
        let def = &self.plan.steps[id];
        let body = match work {
            Work::Compensate => def.compensate.as_ref().unwrap_or(&def.body),
            Work::Run => &def.body,
        };
        let kind = self
            .cfg
            .registry
            .get(body.kind.as_str())
            .ok_or_else(|| format!("unknown step kind `{}`", body.kind))?;
        let with = resolve_with(&self.plan, Some(id), &body.with, &self.secrets, &self.state)?;
        kind.build(&with).map_err(|e| e.message)
    }

    /// Which completed steps have a compensation
    /// ([`crate::decide::compensable`]); recomputed only when a step has
    /// completed since.
    fn refresh_compensable(&mut self) {
        let done = self.state.sched_for(&self.plan).map(|s| s.done());
        if done.is_some() && self.compensable.0 == done {
            return;
        }
        let set =
            crate::decide::compensable(&self.plan, &self.state, &self.cfg.registry, &self.secrets);
        self.compensable = (done, set);
    }

    fn ctx(&self, id: &str, work: Work, attempt: u32) -> Arc<Ctx> {
        let st = self.state.step(id);
        Arc::new(Ctx {
            run: self.run,
            run_text: self.run.to_string(),
            step: id.to_string(),
            attempt,
            resume: if work == Work::Run {
                st.checkpoint.clone()
            } else {
                None
            },
            approved: st.approved,
            recorded: st.outputs.clone(),
            work_dir: self.cfg.work_root.join(self.run.to_string()).join(id),
            guard: self.guard.clone(),
            writer: self.writer.clone(),
            observer: Arc::clone(&self.cfg.observer),
            redactor: self.redactor.clone(),
            tail: Mutex::new(Tail {
                text: String::new(),
            }),
            last_progress: Mutex::new(None),
        })
    }

    /// The ssh host a step runs on, if it runs on one.
    fn remote_host(&self, id: &str) -> Option<(&str, &Result<upshift_remote::RemoteHost, String>)> {
        let h = self.plan.steps.get(id)?.host.as_deref()?;
        self.hosts.get(h).map(|r| (h, r))
    }

    /// The ticket of attempt `attempt` of step `id`.
    fn ticket(&self, id: &str, attempt: u32) -> Result<upshift_remote::protocol::TicketId, String> {
        crate::remote::ticket_id(&self.run.to_string(), id, &attempt.to_string())
    }

    /// What to hand the step's ssh host for this work (`None`: the step
    /// runs here). `reattach`: the attempt's ticket was journaled by an
    /// earlier session and is followed (started only if the host never saw
    /// it).
    fn dispatch(
        &self,
        id: &str,
        work: Work,
        attempt: u32,
        reattach: bool,
    ) -> Option<Result<crate::remote::Dispatch, String>> {
        use upshift_remote::protocol::StepOp;
        let (_, host) = self.remote_host(id)?;
        Some((|| {
            let host = host.clone()?;
            let def = &self.plan.steps[id];
            let st = self.state.step(id);
            let (body, op, ticket) = match work {
                Work::Run => (&def.body, StepOp::Run, self.ticket(id, attempt)?),
                Work::Compensate => {
                    // Named by what the journal holds, so that a resume
                    // after a crash names the same ticket and the host
                    // attaches to it ("the ticket already existed")
                    // instead of compensating twice; a compensation that
                    // failed and is tried again gets a new one.
                    let suffix = format!("c{}.{}", st.attempts, st.compensations_failed + 1);
                    let ticket = crate::remote::ticket_id(&self.run.to_string(), id, &suffix)?;
                    match &def.compensate {
                        Some(b) => (b, StepOp::Run, ticket),
                        None => (&def.body, StepOp::Compensate, ticket),
                    }
                }
            };
            let with = resolve_with(&self.plan, Some(id), &body.with, &self.secrets, &self.state)?;
            let request = crate::remote::request(
                ticket,
                &self.run.to_string(),
                id,
                attempt,
                op,
                body.kind.as_str(),
                &with,
                &self.secrets,
                if work == Work::Run {
                    st.checkpoint.clone()
                } else {
                    None
                },
                st.approved,
                st.outputs.clone(),
                def.timeout,
            )?;
            Ok(crate::remote::Dispatch {
                host,
                request,
                journaled_checkpoints: match &st.remote {
                    Some(r) if reattach && r.attempt == attempt => r.checkpoints,
                    _ => 0,
                },
                reboot_auto: self.plan.reboot == crate::plan::RebootPolicy::Auto,
                done: st.done,
                total: st.total,
            })
        })())
    }

    /// Steps whose attempt an earlier session handed to an ssh host and
    /// that did not end: the engine follows their tickets again instead of
    /// starting them anew. Their `StepDispatched` events, journaled again.
    fn reattach_events(&self) -> Vec<Event> {
        if self.state.outcome.is_some() {
            return Vec::new();
        }
        self.plan
            .order
            .iter()
            .filter_map(|id| {
                let st = self.state.step(id);
                let r = st.remote.as_ref()?;
                let lost = st.status == StepStatus::Waiting
                    && st
                        .waiting
                        .as_deref()
                        .is_some_and(|w| w.contains(crate::remote::LOST_TICKET));
                // The same host (an accepted plan change may have moved the
                // step: then it starts anew there).
                let same_host = self.remote_host(id).is_some_and(|(h, _)| h == r.host);
                ((matches!(st.status, StepStatus::Interrupted | StepStatus::Running) || lost)
                    && r.attempt == st.attempts
                    && same_host)
                    .then(|| Event::StepDispatched {
                        step: id.clone(),
                        attempt: r.attempt,
                        host: r.host.clone(),
                        ticket: r.ticket.clone(),
                    })
            })
            .collect()
    }

    /// The probe ticket of a step on an ssh host (`None`: probed here).
    fn probe_request(
        &self,
        id: &str,
    ) -> Option<
        Result<
            (
                upshift_remote::RemoteHost,
                upshift_remote::protocol::StartRequest,
            ),
            String,
        >,
    > {
        let (_, host) = self.remote_host(id)?;
        Some((|| {
            let host = host.clone()?;
            let def = &self.plan.steps[id];
            let st = self.state.step(id);
            let suffix = format!("p{}", Utc::now().timestamp_millis());
            let ticket = crate::remote::ticket_id(&self.run.to_string(), id, &suffix)?;
            let with = resolve_with(
                &self.plan,
                Some(id),
                &def.body.with,
                &self.secrets,
                &self.state,
            )?;
            let request = crate::remote::request(
                ticket,
                &self.run.to_string(),
                id,
                st.attempts,
                upshift_remote::protocol::StepOp::Probe,
                def.body.kind.as_str(),
                &with,
                &self.secrets,
                None,
                st.approved,
                st.outputs.clone(),
                def.timeout,
            )?;
            Ok((host, request))
        })())
    }

    /// Connects every ssh host that has steps left (in parallel; installs
    /// the binary where it is missing). Returns the problems an operator
    /// must fix before anything runs (a changed or unknown host key, a
    /// refused login, a bad host configuration), and notes on hosts that
    /// cannot be reached now (their steps wait and retry).
    async fn preflight(&self) -> (Vec<String>, Vec<Event>) {
        let mut wanted: BTreeMap<&str, &Result<upshift_remote::RemoteHost, String>> =
            BTreeMap::new();
        for id in &self.plan.order {
            let st = self.state.step(id);
            if matches!(st.status, StepStatus::Succeeded | StepStatus::Skipped) {
                continue;
            }
            if let Some((h, r)) = self.remote_host(id) {
                wanted.insert(h, r);
            }
        }
        let mut problems = Vec::new();
        let mut notes = Vec::new();
        let mut checks = JoinSet::new();
        for (name, host) in wanted {
            match host {
                Err(e) => problems.push(format!("host {name}: {e}")),
                Ok(h) => {
                    let h = h.clone();
                    checks.spawn(async move {
                        let r = h.connect().await;
                        (h.name().to_string(), r)
                    });
                }
            }
        }
        while let Some(done) = checks.join_next().await {
            let Ok((name, r)) = done else { continue };
            match r {
                Ok(f) => notes.push(Event::Note {
                    text: format!(
                        "host {name}: connected ({} {}, {}, boot id {})",
                        f.os, f.arch, f.hostname, f.boot_id
                    ),
                }),
                Err(e) if e.is_transient() => notes.push(Event::Note {
                    text: format!(
                        "host {name} cannot be reached now ({e}); its steps retry until it can"
                    ),
                }),
                Err(e) => problems.push(e.to_string()),
            }
        }
        problems.sort();
        (problems, notes)
    }

    /// Pauses before anything runs when a host refuses us for good.
    async fn drive_checked(&mut self) -> Result<Exit, EngineError> {
        if !self.hosts.is_empty() {
            let (problems, notes) = self.preflight().await;
            if !problems.is_empty() {
                return self
                    .stop_paused(
                        notes,
                        format!(
                            "nothing was started: {}. Fix the host(s), then run `upshift resume {}`",
                            problems.join("; "),
                            self.run
                        ),
                    )
                    .await;
            }
            self.journal(notes).await?;
        }
        self.drive().await
    }

    /// `StepDispatched` for a new attempt of a step on an ssh host.
    fn dispatched_event(&self, id: &str, attempt: u32) -> Option<Event> {
        let (host, _) = self.remote_host(id)?;
        let ticket = self.ticket(id, attempt).ok()?;
        Some(Event::StepDispatched {
            step: id.to_string(),
            attempt,
            host: host.to_string(),
            ticket: ticket.to_string(),
        })
    }

    /// Starts a brand-new run: journals `RunStarted` and drives it.
    pub async fn start(&mut self, cli_vars: BTreeMap<String, String>) -> Result<Exit, EngineError> {
        let plan = Arc::clone(&self.plan);
        let mut events = vec![Event::RunStarted {
            plan_name: plan.name.clone(),
            plan_path: plan.path.display().to_string(),
            plan_text: plan.text.clone(),
            plan_hash: plan.hash.clone(),
            vars: cli_vars,
            engine_version: env!("CARGO_PKG_VERSION").into(),
            actor: self.cfg.actor.clone(),
        }];
        if let Some(site) = &plan.site {
            events.push(Event::SitePinned {
                path: site.path.display().to_string(),
                text: site.text.clone(),
                hash: crate::plan::hash_text(&site.text),
            });
        }
        self.journal(events).await?;
        self.drive_checked().await
    }

    /// Takes an existing run up again: journals `RunResumed` (plus any
    /// `extra` events, e.g. an accepted plan change) and drives it.
    pub async fn resume(&mut self, extra: Vec<Event>) -> Result<Exit, EngineError> {
        let mut events = vec![Event::RunResumed {
            actor: self.cfg.actor.clone(),
            engine_version: env!("CARGO_PKG_VERSION").into(),
        }];
        events.extend(extra);
        self.journal(events).await?;
        self.drive_checked().await
    }

    /// Journals `events` and a pause, without resuming (e.g. drift found).
    pub async fn stop_paused(
        &mut self,
        mut events: Vec<Event>,
        reason: String,
    ) -> Result<Exit, EngineError> {
        let reason = self.redactor.text(&reason);
        events.push(Event::RunPaused {
            reason: reason.clone(),
        });
        self.journal(events).await?;
        Ok(Exit::Paused(reason))
    }

    /// Drives a rollback (the caller journaled the decision).
    pub async fn rollback(&mut self, extra: Vec<Event>) -> Result<Exit, EngineError> {
        self.resume(extra).await
    }

    async fn drive(&mut self) -> Result<Exit, EngineError> {
        // Step attempts are polled here, by the engine's own task, not
        // spawned: a step that ends wakes this task on the thread it runs
        // on, and a step it starts runs there at once (a spawned task was
        // a hand-off to another worker thread and back per step). A step's
        // future therefore must not block for long (none does: children,
        // SQL and ssh are awaited; file edits are short).
        let mut tasks: FuturesUnordered<BoxFuture<'static, Result<Done, String>>> =
            FuturesUnordered::new();
        let mut in_flight: BTreeSet<String> = BTreeSet::new();
        let mut pending_events: Vec<Event> = Vec::new();
        // Remote attempts an earlier session left running: followed again
        // (journaled with the first commit, folded before the first
        // decision, so they are not started anew).
        let reattach_events = self.reattach_events();
        let mut reattach: Vec<(String, u32)> = reattach_events
            .iter()
            .filter_map(|e| match e {
                Event::StepDispatched { step, attempt, .. } => Some((step.clone(), *attempt)),
                _ => None,
            })
            .collect();
        pending_events.extend(reattach_events);
        // Remote attempts found interrupted, to start again.
        let mut relaunch: Vec<String> = Vec::new();
        let mut restarts: HashMap<String, u32> = HashMap::new();
        // Tickets in flight on remote hosts (aborted with the run).
        let mut remote_tickets: BTreeMap<
            String,
            (
                upshift_remote::RemoteHost,
                upshift_remote::protocol::TicketId,
            ),
        > = BTreeMap::new();
        let shutdown = shutdown_signal();
        tokio::pin!(shutdown);
        let mut inbox_tick = tokio::time::interval(Duration::from_millis(500));
        inbox_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let limit = self
            .cfg
            .concurrency
            .unwrap_or(CONCURRENCY_DEFAULT)
            .clamp(1, CONCURRENCY_MAX);
        loop {
            self.drain_committed();
            // Fold the events about to be journaled (ends of attempts,
            // decisions) before deciding, so that the end of one attempt and
            // the starts it allows are one commit. The fold is undone before
            // the commit: the state only folds journaled events, in journal
            // order, with the writer's times (what replay folds).
            let now = Utc::now();
            let speculation = self.state.speculate(&pending_events, now);
            if self.state.rolling_back {
                self.refresh_compensable();
            }
            let next = decide_within(
                &self.plan,
                &self.state,
                now,
                &self.compensable.1,
                Limits {
                    concurrency: limit,
                    locks: true,
                },
            );
            let mut launches: Vec<(String, Work, u32, bool)> = Vec::new();
            let mut staged: Vec<Event> = Vec::new();
            for (id, attempt) in reattach.drain(..) {
                launches.push((id, Work::Run, attempt, true));
            }
            for id in relaunch.drain(..) {
                let st = self.state.step(&id);
                let attempt = st.attempts + 1;
                staged.push(Event::StepStarted {
                    step: id.clone(),
                    attempt,
                    resumed_from_checkpoint: st.checkpoint.is_some(),
                });
                staged.extend(self.dispatched_event(&id, attempt));
                launches.push((id, Work::Run, attempt, false));
            }
            for (id, reason) in &next.wait {
                staged.push(Event::StepWaiting {
                    step: id.clone(),
                    reason: reason.clone(),
                });
            }
            let candidates: Vec<(String, Work)> = next
                .start
                .iter()
                .map(|s| (s.clone(), Work::Run))
                .chain(
                    next.compensate
                        .iter()
                        .map(|s| (s.clone(), Work::Compensate)),
                )
                .collect();
            for (id, work) in candidates {
                // `decide` counts what the state says runs; a task can
                // outlive its step's state (an operator skipped it while it
                // ran), so the tasks are counted too.
                if in_flight.len() + launches.len() >= limit
                    || in_flight.contains(&id)
                    || launches.iter().any(|l| l.0 == id)
                {
                    continue;
                }
                let attempt = self.state.step(&id).attempts + u32::from(work == Work::Run);
                match work {
                    Work::Run => {
                        staged.push(Event::StepStarted {
                            step: id.clone(),
                            attempt,
                            resumed_from_checkpoint: self.state.step(&id).checkpoint.is_some(),
                        });
                        // The ticket is journaled before the host sees it.
                        staged.extend(self.dispatched_event(&id, attempt));
                    }
                    Work::Compensate => {
                        staged.push(Event::CompensationStarted { step: id.clone() })
                    }
                }
                launches.push((id, work, attempt, false));
            }
            let mut end = if in_flight.is_empty() && launches.is_empty() {
                next.end.clone()
            } else {
                None
            };
            let mut rebooting = None;
            if let Some(End::Pause(_)) = &end
                && let Some(step) = self.state.reboot_pending.clone()
            {
                let (notes, outcome) = self.handle_reboot(&step);
                staged.extend(notes);
                match outcome {
                    Ok(message) => {
                        staged.push(Event::RunInterrupted {
                            reason: message.clone(),
                        });
                        rebooting = Some(message);
                        end = None;
                    }
                    Err(reason) => end = Some(End::Pause(reason)),
                }
            }
            match &end {
                Some(End::Finish(o)) if self.state.outcome.is_none() => {
                    staged.push(Event::RunFinished { outcome: *o })
                }
                Some(End::Pause(reason)) => staged.push(Event::RunPaused {
                    reason: reason.clone(),
                }),
                Some(End::StartRollback(reason)) => staged.push(Event::RollbackStarted {
                    reason: reason.clone(),
                }),
                _ => {}
            }
            self.state.undo(speculation);
            let mut events = std::mem::take(&mut pending_events);
            events.extend(staged);
            self.journal(events).await?;
            for (id, work, attempt, reattach) in launches {
                let ctx = self.ctx(&id, work, attempt);
                if let Some(dispatch) = self.dispatch(&id, work, attempt, reattach) {
                    if let Ok(d) = &dispatch {
                        remote_tickets
                            .insert(id.clone(), (d.host.clone(), d.request.ticket.clone()));
                        if work == Work::Compensate {
                            self.writer.post(
                                self.run,
                                vec![Event::Note {
                                    text: format!(
                                        "compensation of {id} dispatched to host {} (ticket {})",
                                        d.host.name(),
                                        d.request.ticket
                                    ),
                                }],
                            );
                        }
                    }
                    let redact: Arc<dyn upshift_remote::client::Redact> =
                        Arc::new(self.redactor.clone());
                    let (writer, run) = (self.writer.clone(), self.run);
                    tasks.push(attempt_task(async move {
                        let note = move |text: String| writer.post(run, vec![Event::Note { text }]);
                        let (result, restart) = match dispatch {
                            Err(message) => (Err(StepError::fatal(message)), None),
                            Ok(d) => {
                                match crate::remote::run_ticket(d, ctx.as_ref(), redact, &note)
                                    .await
                                {
                                    crate::remote::Ticket::Ended(r) => (r, None),
                                    crate::remote::Ticket::Restart(why) => {
                                        (Err(StepError::transient(why.clone())), Some(why))
                                    }
                                }
                            }
                        };
                        let tail = ctx.tail.lock().expect("poisoned").take();
                        Done {
                            step: ctx.step.clone(),
                            work,
                            attempt,
                            result,
                            tail,
                            restart: if work == Work::Run { restart } else { None },
                        }
                    }));
                    in_flight.insert(id);
                    continue;
                }
                let timeout = self.plan.steps[&id].timeout;
                let built = self.build(&id, work);
                // A plan `compensate` body is a step of its own and is run;
                // otherwise the kind's own compensation is called.
                let own_compensation =
                    work == Work::Compensate && self.plan.steps[&id].compensate.is_none();
                tasks.push(attempt_task(async move {
                    let result = match built {
                        Err(message) => Err(StepError::fatal(message)),
                        Ok(step) => {
                            let fut = async {
                                if own_compensation {
                                    step.compensate(ctx.as_ref())
                                        .await
                                        .map(|_| StepOutcome::default())
                                } else {
                                    step.run(ctx.as_ref()).await
                                }
                            };
                            match timeout {
                                None => fut.await,
                                Some(t) => match tokio::time::timeout(t, fut).await {
                                    Ok(r) => r,
                                    Err(_) => Err(StepError::transient(format!(
                                        "timed out after {}; its processes were killed",
                                        crate::report::duration_text(t)
                                    ))),
                                },
                            }
                        }
                    };
                    let tail = ctx.tail.lock().expect("poisoned").take();
                    Done {
                        step: ctx.step.clone(),
                        work,
                        attempt,
                        result,
                        tail,
                        restart: None,
                    }
                }));
                in_flight.insert(id);
            }
            if let Some(message) = rebooting {
                return Ok(Exit::Rebooting(message));
            }
            match end {
                Some(End::Finish(o)) => return Ok(Exit::Finished(o)),
                Some(End::Pause(r)) => return Ok(Exit::Paused(self.redactor.text(&r))),
                Some(End::StartRollback(_)) => continue,
                None => {}
            }
            if in_flight.is_empty()
                && next.wake_at.is_none()
                && next.start.is_empty()
                && next.compensate.is_empty()
                && next.wait.is_empty()
            {
                // Nothing in flight, nothing to wait for: decide again (the
                // state changed by what was just journaled).
                continue;
            }
            let sleep_until = next.wake_at.map(|t| {
                let d = (t - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                tokio::time::Instant::now() + d
            });
            tokio::select! {
                Some(done) = tasks.next(), if !tasks.is_empty() => {
                    // Attempts that ended meanwhile go in the same commit
                    // (parallel branches share their transitions).
                    let mut next_done = Some(done);
                    while let Some(done) = next_done {
                        let done = done.map_err(|e| {
                            EngineError::Other(format!("a step attempt panicked: {e}"))
                        })?;
                        in_flight.remove(&done.step);
                        remote_tickets.remove(&done.step);
                        let mut done = done;
                        if let Some(why) = done.restart.take() {
                            let n = restarts.entry(done.step.clone()).or_insert(0);
                            *n += 1;
                            if *n <= REMOTE_RESTARTS_MAX && self.state.outcome.is_none() {
                                pending_events.push(Event::Note {
                                    text: self.redactor.text(&format!(
                                        "{}: {why}; starting it again from its last checkpoint",
                                        done.step
                                    )),
                                });
                                relaunch.push(done.step);
                                next_done = tasks.next().now_or_never().flatten();
                                continue;
                            }
                            done.result = Err(StepError::transient(format!(
                                "{why} ({n} times in this session)"
                            )));
                        }
                        // Redacted now, not only by the writer: decisions
                        // made on these events (pause reasons) reach the
                        // terminal.
                        pending_events.extend(self.result_events(done).into_iter().map(|mut e| {
                            self.redactor.event(&mut e);
                            e
                        }));
                        next_done = tasks.next().now_or_never().flatten();
                    }
                }
                _ = async {
                    match sleep_until {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending::<()>().await,
                    }
                } => {}
                _ = inbox_tick.tick(), if self.cfg.inbox.is_some() => {
                    pending_events.extend(self.read_inbox());
                    if self.state.outcome.is_none()
                        && pending_events.iter().any(|e| matches!(e, Event::RunFinished { .. }))
                    {
                        // Abort: stop everything in flight, on the
                        // remote hosts too (their runners kill the steps'
                        // process trees).
                        for (_, (host, ticket)) in std::mem::take(&mut remote_tickets) {
                            let _ = tokio::time::timeout(
                                Duration::from_secs(10),
                                host.abort(&ticket, "the run was aborted by an operator"),
                            )
                            .await;
                        }
                        // Dropping an attempt kills its processes.
                        tasks.clear();
                        in_flight.clear();
                    }
                }
                _ = &mut shutdown => {
                    tasks.clear();
                    let names: Vec<String> = in_flight.iter().cloned().collect();
                    let remote: Vec<String> = remote_tickets
                        .iter()
                        .map(|(id, (h, _))| format!("{id} on {}", h.name()))
                        .collect();
                    pending_events.push(Event::RunInterrupted {
                        reason: if names.is_empty() {
                            "interrupted by signal".into()
                        } else if remote.is_empty() {
                            format!("interrupted by signal while running: {}", names.join(", "))
                        } else {
                            format!(
                                "interrupted by signal while running: {}; still running on \
                                 their hosts: {} (`upshift resume` follows them again)",
                                names.join(", "),
                                remote.join(", ")
                            )
                        },
                    });
                    let events = std::mem::take(&mut pending_events);
                    self.journal(events).await?;
                    return Ok(Exit::Interrupted);
                }
            }
        }
    }

    /// A step asked for a reboot and nothing else can run: register the
    /// resume-at-boot task, then reboot (`reboot = "auto"`) or pause.
    /// Returns notes to journal, and Ok(message) when rebooting or
    /// Err(pause reason).
    fn handle_reboot(&self, step: &str) -> (Vec<Event>, Result<String, String>) {
        let run = self.run;
        let mut notes = Vec::new();
        if let Some((host, _)) = self.remote_host(step) {
            // Another machine must reboot: nothing to register here. With
            // `reboot = "auto"` the host was rebooted already unless that
            // failed (see the notes).
            return (
                notes,
                Err(format!(
                    "step {step} requires a reboot of host {host}: reboot it, wait until it is \
                     back, then run `upshift resume {run}`"
                )),
            );
        }
        let registered = match (&self.cfg.journal_dir, &self.cfg.guard_program) {
            (Some(dir), Some(exe)) => crate::reboot::register(run, dir, exe, &self.cfg.boot),
            _ => Err("no journal folder or program path to register".into()),
        };
        match &registered {
            Ok(what) => notes.push(Event::Note {
                text: format!("reboot required by {step}: {what}"),
            }),
            Err(e) => notes.push(Event::Note {
                text: format!(
                    "reboot required by {step}: could not register the resume at boot: {e}"
                ),
            }),
        }
        if self.plan.reboot == crate::plan::RebootPolicy::Auto && registered.is_ok() {
            match crate::reboot::reboot_now(step, &self.cfg.boot) {
                Ok(cmd) => {
                    return (
                        notes,
                        Ok(format!(
                            "rebooting for step {step} ({cmd}); upshift resumes run {run} at boot"
                        )),
                    );
                }
                Err(e) => notes.push(Event::Note {
                    text: format!("could not reboot: {e}"),
                }),
            }
        }
        let reason = match &registered {
            Ok(_) => format!(
                "step {step} requires a reboot: reboot the machine; upshift resumes run {run} at boot (or run `upshift resume {run}` after the reboot)"
            ),
            // Said where the operator looks, not only in the log: nothing
            // will resume the run by itself after this reboot.
            Err(e) => format!(
                "step {step} requires a reboot, and upshift could NOT register itself to resume the run at boot: {e}\n  reboot the machine, then run `upshift resume {run}` yourself (or fix the cause and resume now to try the registration again)"
            ),
        };
        (notes, Err(reason))
    }

    /// Probes every step the journal records as succeeded: does the machine
    /// still match? Returns (step, what differs) for each drifted step and
    /// (step, error) for probes that failed. A step is not probed when a
    /// later step of this run acts on one of the same resources (same
    /// service, file or product on the same host) and has started since it
    /// succeeded: that step changed it on purpose, and if it was cut off it
    /// reconciles when it runs again.
    pub async fn drift(&self) -> Vec<(String, String)> {
        // What every step that has started acts on.
        let acts: Vec<(&String, Vec<upshift_steps::Resource>)> = self
            .plan
            .order
            .iter()
            .filter(|id| self.state.step(id).attempts > 0)
            .filter_map(|id| {
                let host = self.plan.steps[id].host.as_deref();
                let step = self.build(id, Work::Run).ok()?;
                Some((
                    id,
                    step.resources().into_iter().map(|r| r.on(host)).collect(),
                ))
            })
            .collect();
        let superseded = |id: &String| {
            let Some((_, mine)) = acts.iter().find(|(s, _)| *s == id) else {
                return false;
            };
            let Some(done) = self.state.step(id).ended_at else {
                return false;
            };
            acts.iter().any(|(other, theirs)| {
                *other != id
                    && self.state.step(other).started_at >= Some(done)
                    && theirs.iter().any(|t| mine.iter().any(|m| m.same(t)))
            })
        };
        let mut out = Vec::new();
        for id in &self.plan.order {
            if self.state.step(id).status != StepStatus::Succeeded || superseded(id) {
                continue;
            }
            let step = match self.build(id, Work::Run) {
                Ok(s) => s,
                Err(e) => {
                    out.push((id.clone(), format!("cannot probe: {e}")));
                    continue;
                }
            };
            let ctx = self.ctx(id, Work::Run, self.state.step(id).attempts);
            let probed = match self.probe_request(id) {
                // On the step's host, as an `op = probe` ticket.
                Some(Ok((host, request))) => crate::remote::probe(&host, request)
                    .await
                    .map_err(StepError::transient),
                Some(Err(e)) => Err(StepError::transient(e)),
                None => step.probe(ctx.as_ref()).await,
            };
            match probed {
                Ok(upshift_steps::Probe::Differs(what)) => {
                    out.push((id.clone(), self.redactor.text(&what)))
                }
                Ok(_) => {}
                Err(e) => out.push((
                    id.clone(),
                    format!("probe failed: {}", self.redactor.text(&e.to_string())),
                )),
            }
        }
        out
    }

    fn result_events(&self, done: Done) -> Vec<Event> {
        let Done {
            step,
            work,
            attempt,
            result,
            tail,
            ..
        } = done;
        match (work, result) {
            (Work::Run, Ok(outcome)) => {
                let mut ev = vec![Event::StepSucceeded {
                    step: step.clone(),
                    attempt,
                    outputs: outcome.outputs,
                    output_tail: tail,
                    reboot_required: outcome.reboot_required,
                }];
                if outcome.reboot_required {
                    let action = match self.remote_host(&step) {
                        Some((host, _)) => {
                            format!("pause: reboot host {host}, then `upshift resume`")
                        }
                        None => "pause: reboot the machine, then `upshift resume`".into(),
                    };
                    ev.push(Event::RebootRequested { step, action });
                }
                ev
            }
            (Work::Run, Err(StepError::WaitForOperator { reason })) => {
                vec![Event::StepWaiting { step, reason }]
            }
            (Work::Run, Err(StepError::Failed { message, transient })) => {
                crate::decide::failure_events(
                    &self.plan.steps[&step],
                    attempt,
                    message,
                    tail,
                    transient,
                )
            }
            (Work::Compensate, Ok(_)) => vec![Event::CompensationSucceeded {
                step,
                output_tail: tail,
            }],
            (Work::Compensate, Err(e)) => vec![Event::CompensationFailed {
                step,
                error: e.to_string(),
                output_tail: tail,
            }],
        }
    }

    fn read_inbox(&self) -> Vec<Event> {
        match &self.cfg.inbox {
            Some(inbox) => inbox.take(self.run, &self.plan, &self.state),
            None => Vec::new(),
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.writer.close();
    }
}

/// A step attempt as the engine polls it: a panic in the step becomes an
/// error naming it (as a spawned task's would).
fn attempt_task(
    f: impl std::future::Future<Output = Done> + Send + 'static,
) -> BoxFuture<'static, Result<Done, String>> {
    std::panic::AssertUnwindSafe(f)
        .catch_unwind()
        .map(|r| {
            r.map_err(|p| {
                p.downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".into())
            })
        })
        .boxed()
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// For tests (the engine's own and the end-to-end suite's): runs a parsed
/// plan to its end in this process, then checks that the live engine's
/// final state is the fold of its journal, field by field (the Debug form,
/// the JSON form and the state's own index). Returns the live state and
/// the run's events for the caller's own assertions. Panics on any
/// difference; a run that does not succeed is a difference too.
#[doc(hidden)]
pub fn run_to_end_live_equals_replay(
    plan: &Plan,
    journal_dir: &Path,
    work_root: PathBuf,
    guard_program: Option<PathBuf>,
) -> (RunState, Vec<Envelope>) {
    let cfg = Config {
        registry: upshift_steps::registry(),
        concurrency: None,
        guard_program,
        work_root,
        actor: Actor::default(),
        observer: Arc::new(Quiet),
        inbox: None,
        journal_dir: None,
        boot: Default::default(),
    };
    let run = RunId::new();
    let mut eng = Engine::new(
        plan.clone(),
        cfg,
        Journal::open(journal_dir).expect("open the journal"),
        run,
        &[],
        BTreeMap::new(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let exit = rt.block_on(eng.start(BTreeMap::new())).expect("the run");
    assert_eq!(exit, Exit::Finished(Outcome::Succeeded));
    let live = eng.state().clone();
    drop(eng);
    let events = Journal::open_read_only(journal_dir)
        .expect("reopen the journal")
        .read_run(run)
        .expect("read the run");
    let mut replay = RunState::for_plan(plan);
    for e in &events {
        replay.apply(e);
    }
    live.check_index().expect("the live state's index");
    assert_eq!(format!("{live:#?}"), format!("{replay:#?}"));
    assert_eq!(
        serde_json::to_string(&live).expect("json"),
        serde_json::to_string(&RunState::from_events(&events)).expect("json")
    );
    (live, events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{LoadOptions, parse};

    /// Writes through both paths (the writer thread's and the caller's own
    /// thread) and posts, from concurrent tasks, all end up committed, once
    /// each, with gap-free seqs, and reach `committed` in journal order.
    /// After `close`, both paths fail at once instead of waiting (before the
    /// fix, a `write` after close waited forever for the ended thread).
    #[test]
    fn concurrent_writes_all_commit_once_in_order_and_fail_after_close() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let writer = Writer::start(journal, Redactor::default(), tx);
        let run = RunId::new();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        const TASKS: usize = 6;
        const EACH: usize = 40;
        rt.block_on(async {
            let mut set = JoinSet::new();
            for t in 0..TASKS {
                let w = writer.clone();
                set.spawn(async move {
                    for i in 0..EACH {
                        let text = format!("{t}-{i}");
                        let ev = vec![Event::Note { text }];
                        let stored = match (t + i) % 3 {
                            0 => w.write_here(run, ev).await.unwrap(),
                            1 => w.write(run, ev).await.unwrap(),
                            _ => {
                                w.post(run, ev);
                                continue;
                            }
                        };
                        assert_eq!(stored.len(), 1);
                    }
                });
            }
            let all = tokio::time::timeout(Duration::from_secs(60), async {
                while let Some(r) = set.join_next().await {
                    r.unwrap();
                }
            })
            .await;
            assert!(all.is_ok(), "a write was never committed");
        });
        writer.close(); // commits the posts still queued
        let mut seen = Vec::new();
        while let Ok(env) = rx.try_recv() {
            seen.push(env);
        }
        let seqs: Vec<u64> = seen.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (0..(TASKS * EACH) as u64).collect::<Vec<_>>());
        let mut texts: Vec<String> = seen
            .iter()
            .map(|e| match &e.event {
                Event::Note { text } => text.clone(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        texts.sort();
        texts.dedup();
        assert_eq!(texts.len(), TASKS * EACH, "an event was written twice");
        let stored = Journal::open(dir.path()).unwrap().read_run(run).unwrap();
        assert_eq!(stored.len(), TASKS * EACH);
        rt.block_on(async {
            for here in [false, true] {
                let ev = vec![Event::Note {
                    text: "late".into(),
                }];
                let r =
                    tokio::time::timeout(Duration::from_secs(5), writer.write_with(run, ev, here))
                        .await
                        .expect("a write after close must fail at once, not wait");
                assert!(r.is_err(), "a write after close succeeded");
            }
        });
    }

    /// The live engine's final state is the fold of its journal, field by
    /// field: the same times (the writer's), seqs, checkpoints, outputs,
    /// attempts and decisions. A plan with parallel branches, a retried
    /// step (with backoff) and a checkpointing `foreach`.
    #[test]
    fn the_live_state_is_the_fold_of_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("m");
        std::fs::create_dir_all(&m).unwrap();
        let text = r#"
name = "live"
[steps.a]
kind = "process"
with = { program = "sh", args = ["-c", "echo a"] }
[steps.flaky]
kind = "process"
needs = ["a"]
retry = { attempts = 3, backoff = "20ms" }
with = { program = "sh", args = ["-c", "n=$(cat @M@/flaky 2>/dev/null || echo 0); echo $((n+1)) > @M@/flaky; [ $n -ge 2 ]"] }
[steps.loop]
kind = "foreach"
needs = ["a"]
with = { items = ["1", "2", "3", "4", "5", "6"], concurrency = 2, program = "sh", args = ["-c", "echo ${item}"] }
[steps.b]
kind = "sleep"
needs = ["a"]
with = { duration = "30ms" }
[steps.end]
kind = "process"
needs = ["flaky", "loop", "b"]
with = { program = "sh", args = ["-c", "echo ${steps.a.outputs.stdout}"] }
"#
        .replace("@M@", &m.display().to_string());
        let plan = parse(
            "live.toml".as_ref(),
            &text,
            &upshift_steps::registry(),
            &LoadOptions::default(),
        )
        .unwrap();
        let (live, events) = run_to_end_live_equals_replay(
            &plan,
            &dir.path().join("journal"),
            dir.path().join("work"),
            None,
        );
        // What the test is about was exercised.
        assert_eq!(live.step("flaky").attempts, 3, "{live:?}");
        assert!(
            events
                .iter()
                .any(|e| matches!(e.event, Event::StepRetryScheduled { .. }))
        );
        assert!(
            events
                .iter()
                .filter(|e| matches!(e.event, Event::StepCheckpoint { .. }))
                .count()
                >= 6
        );
        // The times are the journal's.
        let started = |id: &str| {
            events
                .iter()
                .rev()
                .find(|e| matches!(&e.event, Event::StepStarted { step, .. } if step == id))
                .unwrap()
                .time
        };
        for id in &plan.order {
            assert_eq!(live.step(id).started_at, Some(started(id)), "{id}");
        }
    }
}
