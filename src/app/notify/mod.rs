//! Telling the operator: the plan's `[notify]` (a webhook, e.g. Microsoft
//! Teams, and/or a command) is sent a message when the run waits for an
//! operator, a step fails for good, a reboot is pending, or the run ends.
//!
//! How it hangs on the engine: a [`Notifier`] wraps the session's
//! [`Observer`] and sees every *committed* event, with the state after it.
//! For the few events that call for a message it builds one and hands it
//! to its own thread through a bounded queue (`try_send`: the scheduler
//! never waits, and a full queue drops the message and journals that).
//! The thread delivers with retries (backoff doubling from 1 s, bounded by
//! `[notify] attempts` and `timeout`) and journals one
//! [`Event::Notified`] per notifier and message through the engine's
//! writer (non-blocking `post`), with the answer or the last error,
//! redacted: the webhook's URL and its pieces never reach the journal, a
//! log line or an error.
//!
//! When the session ends (paused, finished, interrupted), the app layer
//! calls [`Notifier::finish`], which waits at most [`FINISH_WAIT_MAX`] for
//! what is still queued — the run is already stopped then — and journals
//! what could not be confirmed.
//!
//! **After a crash.** A message whose event was journaled but which was
//! not sent when the engine died is *not* sent again on resume: a resume is
//! itself an operator (or the boot task) acting, and the resumed session
//! tells again whatever still needs the operator (its pause names the
//! waiting and failed steps). The journal shows such a message as an event
//! with no `notified` record after it.

pub mod message;
pub mod send;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use upshift_journal::{Envelope, Event, Outcome, RunId};

use crate::app::next::shell_word;
use crate::engine::{Observer, Redactor, Writer};
use crate::error::{Error, Result};
use crate::plan::{NotifyOn, OnFailure, Plan, RetryPolicy};
use crate::report;
use crate::state::{CompStatus, RunState, StepStatus};
use message::{Message, REASON_CHARS_MAX, cut};
use send::Channel;

/// Messages waiting for the sender thread at most; more are dropped (and
/// the drop journaled), so a dead webhook cannot make memory grow.
pub const QUEUE_MESSAGES_MAX: usize = 32;
/// The first wait between two attempts; doubles each time.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// Cap on the wait between two attempts (also on a `Retry-After`).
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a session that has ended waits for messages still being sent.
pub const FINISH_WAIT_MAX: Duration = Duration::from_secs(60);

/// What a step contributes to its messages.
struct StepInfo {
    host: Option<String>,
    retry: RetryPolicy,
    on_failure: OnFailure,
}

/// Decides, event by event, whether the operator is told and what.
struct Classifier {
    on: BTreeSet<NotifyOn>,
    steps: BTreeMap<String, StepInfo>,
    plan: String,
    host: String,
    journal: String,
    /// The journal folder, for the commands that continue the run.
    journal_dir: PathBuf,
    /// A message about something that needs the operator went out since
    /// the last pause: the pause itself says nothing new.
    told: bool,
}

impl Classifier {
    fn cmd(&self, args: &str) -> String {
        crate::app::next::command(&self.journal_dir, args)
    }

    fn message(
        &self,
        on: NotifyOn,
        env: &Envelope,
        title: String,
        step: Option<&str>,
        reason: &str,
        next: Vec<String>,
    ) -> Message {
        Message {
            on,
            title: format!("{}: {title}", self.plan),
            run: env.run.to_string(),
            plan: self.plan.clone(),
            step: step.map(str::to_string),
            step_host: step
                .and_then(|s| self.steps.get(s))
                .and_then(|i| i.host.clone()),
            host: self.host.clone(),
            reason: cut(
                &crate::app::next::complete(reason, &self.journal_dir),
                REASON_CHARS_MAX,
            ),
            outcome: None,
            next,
            journal: self.journal.clone(),
            seq: env.seq,
            time: env.time,
        }
    }

    /// The commands that continue a paused run, from where its steps stand.
    fn next_for_pause(&self, run: &str, state: &RunState) -> (Option<String>, Vec<String>) {
        let mut first = None;
        let mut next = Vec::new();
        for (id, st) in &state.steps {
            let cmd = match st.status {
                StepStatus::Waiting => format!("approve {run} {id}"),
                StepStatus::Failed => format!("retry {run} {id}"),
                _ if st.compensation == CompStatus::Failed => format!("rollback {run}"),
                _ => continue,
            };
            first.get_or_insert_with(|| id.clone());
            next.push(self.cmd(&cmd));
        }
        if next.is_empty() {
            next.push(self.cmd(&format!("resume {run}")));
        }
        next.dedup();
        (first, next)
    }

    fn classify(&mut self, env: &Envelope, state: &RunState) -> Option<Message> {
        let run = env.run.to_string();
        let msg = match &env.event {
            Event::RunStarted { .. } | Event::RunResumed { .. } => {
                self.told = false;
                None
            }
            Event::StepWaiting { step, reason } => Some(self.message(
                NotifyOn::Waiting,
                env,
                format!("step {step} waits for an operator"),
                Some(step),
                reason,
                vec![
                    self.cmd(&format!("approve {run} {step}")),
                    self.cmd(&format!("skip {run} {step} --reason \"...\"")),
                ],
            )),
            Event::StepFailed {
                step,
                attempt,
                error,
                transient,
                ..
            } => {
                let info = self.steps.get(step)?;
                if info.retry.retries(*attempt, *transient) {
                    return None;
                }
                let next = match info.on_failure {
                    OnFailure::Pause => vec![
                        self.cmd(&format!("retry {run} {step}")),
                        self.cmd(&format!("skip {run} {step} --reason \"...\"")),
                        self.cmd(&format!("rollback {run}")),
                        self.cmd(&format!("abort {run}")),
                    ],
                    // The run rolls back or ends by itself.
                    OnFailure::Rollback | OnFailure::Abort => {
                        vec![self.cmd(&format!("status {run}"))]
                    }
                };
                Some(self.message(
                    NotifyOn::Failed,
                    env,
                    format!("step {step} failed (attempt {attempt}, no retry left)"),
                    Some(step),
                    error,
                    next,
                ))
            }
            Event::CompensationFailed { step, error, .. } => Some(self.message(
                NotifyOn::Failed,
                env,
                format!("rollback stopped: the compensation of {step} failed"),
                Some(step),
                error,
                vec![
                    self.cmd(&format!("rollback {run}")),
                    self.cmd(&format!("retry {run} {step}")),
                    self.cmd(&format!("abort {run}")),
                ],
            )),
            Event::RunPaused { reason } => {
                let told = std::mem::take(&mut self.told);
                if let Some(step) = &state.reboot_pending {
                    Some(self.message(
                        NotifyOn::Reboot,
                        env,
                        format!("reboot needed (step {step})"),
                        Some(step),
                        reason,
                        vec![self.cmd(&format!("resume {run}"))],
                    ))
                } else if told {
                    None
                } else {
                    let (step, next) = self.next_for_pause(&run, state);
                    Some(self.message(
                        NotifyOn::Waiting,
                        env,
                        "run paused, waiting for an operator".into(),
                        step.as_deref(),
                        reason,
                        next,
                    ))
                }
            }
            Event::RunInterrupted { reason } => state.reboot_pending.as_ref().map(|step| {
                self.message(
                    NotifyOn::Reboot,
                    env,
                    format!("rebooting for step {step}; the run resumes at boot"),
                    Some(step),
                    reason,
                    vec![self.cmd(&format!("resume {run}"))],
                )
            }),
            Event::RunFinished { outcome } => {
                let word = report::outcome_word(*outcome);
                let mut m = self.message(
                    NotifyOn::Ended,
                    env,
                    format!("run {}", word.replace('_', " ")),
                    None,
                    "",
                    vec![self.cmd(&format!("status {run}"))],
                );
                m.outcome = Some(word.to_string());
                if *outcome == Outcome::Failed {
                    m.reason = state
                        .steps
                        .iter()
                        .find_map(|(id, st)| {
                            st.error.as_ref().map(|e| format!("step {id} failed: {e}"))
                        })
                        .map(|r| cut(&r, REASON_CHARS_MAX))
                        .unwrap_or_default();
                }
                Some(m)
            }
            _ => None,
        }?;
        if !self.on.contains(&msg.on) {
            return None;
        }
        if matches!(msg.on, NotifyOn::Waiting | NotifyOn::Failed) {
            self.told = true;
        }
        Some(msg)
    }
}

/// What the sender thread and the observer share.
struct Shared {
    run: RunId,
    /// The engine's writer, once the engine exists.
    writer: OnceLock<Writer>,
    /// Redacts secret values and the webhook URL's pieces.
    redactor: Redactor,
    /// Set when the session stopped waiting: journal nothing more.
    abandoned: AtomicBool,
    /// (about, channel) being delivered now.
    current: Mutex<Option<(u64, &'static str)>>,
    /// Messages dropped because the queue was full.
    dropped: AtomicU32,
}

impl Shared {
    fn journal(&self, about: u64, channel: &str, delivered: bool, attempts: u32, detail: &str) {
        if self.abandoned.load(Ordering::SeqCst) {
            return;
        }
        if let Some(w) = self.writer.get() {
            w.post(
                self.run,
                vec![Event::Notified {
                    about,
                    channel: channel.to_string(),
                    delivered,
                    attempts,
                    detail: self.redactor.text(detail),
                }],
            );
        }
    }

    /// Sleeps `d`, or less if the session stops waiting.
    fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until && !self.abandoned.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
        }
    }
}

struct NotifyObserver {
    inner: Arc<dyn Observer>,
    classifier: Mutex<Classifier>,
    /// Taken (closed) by [`Notifier::finish`], which ends the thread once
    /// it has sent what is queued.
    queue: Mutex<Option<SyncSender<Message>>>,
    shared: Arc<Shared>,
}

impl Observer for NotifyObserver {
    fn event(&self, env: &Envelope, state: &RunState) {
        self.inner.event(env, state);
        let msg = self
            .classifier
            .lock()
            .expect("poisoned")
            .classify(env, state);
        if let Some(msg) = msg {
            let sent = match self.queue.lock().expect("poisoned").as_ref() {
                Some(q) => q.try_send(msg),
                None => Err(TrySendError::Disconnected(msg)),
            };
            let (m, why) = match sent {
                Ok(()) => return,
                Err(TrySendError::Full(m)) => (
                    m,
                    format!("{QUEUE_MESSAGES_MAX} messages were still waiting to be sent"),
                ),
                Err(TrySendError::Disconnected(m)) => (m, "the notifier had stopped".to_string()),
            };
            let n = self.shared.dropped.fetch_add(1, Ordering::SeqCst) + 1;
            self.shared.journal(
                m.seq,
                "queue",
                false,
                0,
                &format!("not sent: {why} ({n} dropped in this session)"),
            );
        }
    }
    fn output(&self, step: &str, text: &str) {
        self.inner.output(step, text);
    }
    fn progress(&self, step: &str, done: u64, total: u64, message: &str) {
        self.inner.progress(step, done, total, message);
    }
    // The UI and the run log buffer a commit's lines until this call:
    // without it, a plan with [notify] would show nothing until the end.
    fn flush(&self) {
        self.inner.flush();
    }
}

/// A session's notifier: the observer to hand the engine, and the thread
/// that delivers.
pub struct Notifier {
    observer: Arc<NotifyObserver>,
    shared: Arc<Shared>,
    done: Receiver<()>,
}

impl Notifier {
    /// The notifier for a session of `run`, if the plan has `[notify]`;
    /// `inner` is the session's own observer, which it wraps. Resolves the
    /// webhook and the command against the run's values (`secrets`
    /// resolved); a webhook that is not an http(s) URL is a usage error
    /// that names the plan's reference, never the value.
    pub fn for_session(
        plan: &Plan,
        secrets: &BTreeMap<String, String>,
        run: RunId,
        journal_dir: &Path,
        host: String,
        inner: Arc<dyn Observer>,
    ) -> Result<Option<Notifier>> {
        let Some(n) = &plan.notify else {
            return Ok(None);
        };
        let mut table = toml::Table::new();
        if let Some(w) = &n.webhook {
            table.insert("webhook".into(), toml::Value::String(w.clone()));
        }
        table.insert(
            "command".into(),
            toml::Value::Array(n.command.iter().cloned().map(toml::Value::String).collect()),
        );
        table.insert(
            "env".into(),
            toml::Value::Table(
                n.env
                    .iter()
                    .map(|(k, v)| (k.clone(), toml::Value::String(v.clone())))
                    .collect(),
            ),
        );
        let resolved =
            crate::state::resolve_with(plan, None, &table, secrets, &RunState::default())
                .map_err(|e| Error::usage(format!("[notify]: {e}")))?;
        let text = |v: &toml::Value| match v {
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let mut redact: Vec<String> = secrets.values().cloned().collect();
        let mut channels = Vec::new();
        if let (Some(written), Some(url)) = (&n.webhook, resolved.get("webhook").map(text)) {
            let parsed = url
                .parse::<ureq::http::Uri>()
                .ok()
                .filter(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
            let Some(parsed) = parsed else {
                return Err(Error::usage(format!(
                    "[notify] webhook = \"{written}\" is not an http:// or https:// URL"
                ))
                .with_hint("put the whole URL (e.g. the Teams webhook's) in the secret"));
            };
            redact.extend(url_pieces(&url, &parsed));
            channels.push(Channel::Webhook {
                agent: send::agent(n.timeout).map_err(Error::usage)?,
                timeout: n.timeout,
                url,
                format: n.format,
            });
        }
        if !n.command.is_empty() {
            let argv = resolved
                .get("command")
                .and_then(|v| v.as_array())
                .map(|a| a.iter().map(text).collect())
                .unwrap_or_default();
            let env = resolved
                .get("env")
                .and_then(|v| v.as_table())
                .map(|t| t.iter().map(|(k, v)| (k.clone(), text(v))).collect())
                .unwrap_or_default();
            channels.push(Channel::Command {
                argv,
                env,
                timeout: n.timeout,
            });
        }
        let classifier = Classifier {
            on: n.on.clone(),
            steps: plan
                .steps
                .iter()
                .map(|(id, d)| {
                    (
                        id.clone(),
                        StepInfo {
                            host: d.host.clone(),
                            retry: d.retry.clone(),
                            on_failure: d.on_failure,
                        },
                    )
                })
                .collect(),
            plan: plan.name.clone(),
            host,
            journal: shell_word(&journal_dir.display().to_string()),
            journal_dir: journal_dir.to_path_buf(),
            told: false,
        };
        let shared = Arc::new(Shared {
            run,
            writer: OnceLock::new(),
            redactor: Redactor::new(redact),
            abandoned: AtomicBool::new(false),
            current: Mutex::new(None),
            dropped: AtomicU32::new(0),
        });
        let (queue, jobs) = mpsc::sync_channel::<Message>(QUEUE_MESSAGES_MAX);
        let (done_tx, done) = mpsc::channel();
        let attempts = n.attempts;
        let worker = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("upshift-notify".into())
            .spawn(move || {
                for msg in jobs {
                    for ch in &channels {
                        deliver(&worker, ch, &msg, attempts);
                    }
                }
                let _ = done_tx.send(());
            })
            .map_err(|e| Error::failed(format!("cannot start the notifier thread: {e}")))?;
        Ok(Some(Notifier {
            observer: Arc::new(NotifyObserver {
                inner,
                classifier: Mutex::new(classifier),
                queue: Mutex::new(Some(queue)),
                shared: Arc::clone(&shared),
            }),
            shared,
            done,
        }))
    }

    /// The observer to give the engine (it passes everything on to the
    /// session's own).
    pub fn observer(&self) -> Arc<dyn Observer> {
        Arc::clone(&self.observer) as Arc<dyn Observer>
    }

    /// Hands over the engine's writer, which journals the deliveries.
    pub fn attach(&self, writer: Writer) {
        let _ = self.shared.writer.set(writer);
    }

    /// The session has ended: waits (at most `wait_max`) for the messages
    /// still queued, then journals what is still unconfirmed. Call it
    /// before the engine (and its writer) is dropped.
    pub fn finish(self, wait_max: Duration) {
        let Notifier {
            observer,
            shared,
            done,
        } = self;
        // Closing the queue ends the thread once it has sent what is in it
        // (the engine, which still holds the observer, sends no more).
        observer.queue.lock().expect("poisoned").take();
        let why = match wait_or_signal(&done, wait_max) {
            Waited::Done => return,
            Waited::TimedOut => format!(
                "upshift stopped waiting after {}",
                humantime::format_duration(wait_max)
            ),
            Waited::Signalled => "upshift was interrupted while waiting".to_string(),
        };
        let current = *shared.current.lock().expect("poisoned");
        if let Some((about, channel)) = current {
            shared.journal(
                about,
                channel,
                false,
                0,
                &format!("still being sent when {why}; not confirmed"),
            );
        }
        shared.abandoned.store(true, Ordering::SeqCst);
    }
}

/// How the wait for the sender thread ended.
enum Waited {
    Done,
    TimedOut,
    Signalled,
}

/// Waits for the sender thread to end, at most `wait_max`, and no longer
/// than the operator wants: Ctrl-C or SIGTERM stop the wait (the engine's
/// own signal handling has ended with its session).
fn wait_or_signal(done: &Receiver<()>, wait_max: Duration) -> Waited {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return match done.recv_timeout(wait_max) {
            Ok(()) => Waited::Done,
            Err(_) => Waited::TimedOut,
        };
    };
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + wait_max;
        let signal = crate::engine::shutdown_signal();
        tokio::pin!(signal);
        loop {
            match done.try_recv() {
                Ok(()) | Err(mpsc::TryRecvError::Disconnected) => return Waited::Done,
                Err(mpsc::TryRecvError::Empty) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Waited::TimedOut;
            }
            tokio::select! {
                _ = &mut signal => return Waited::Signalled,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    })
}

/// Delivers one message through one channel, with retries, and journals
/// the result.
fn deliver(shared: &Shared, ch: &Channel, msg: &Message, attempts: u32) {
    *shared.current.lock().expect("poisoned") = Some((msg.seq, ch.name()));
    let mut wait = BACKOFF_FIRST;
    let mut result = (false, 0, String::new());
    for attempt in 1..=attempts {
        if shared.abandoned.load(Ordering::SeqCst) {
            return;
        }
        match ch.send(msg) {
            Ok(detail) => {
                result = (true, attempt, detail);
                break;
            }
            Err(f) => {
                tracing::info!(
                    "notification ({}) attempt {attempt} of {attempts}: {}",
                    ch.name(),
                    shared.redactor.text(&f.detail)
                );
                result = (false, attempt, f.detail.clone());
                if !f.retry || attempt == attempts {
                    break;
                }
                shared.pause(f.retry_after.unwrap_or(wait).max(wait).min(BACKOFF_MAX));
                wait = (wait * 2).min(BACKOFF_MAX);
            }
        }
    }
    let (delivered, made, detail) = result;
    shared.journal(msg.seq, ch.name(), delivered, made, &detail);
    *shared.current.lock().expect("poisoned") = None;
}

/// The parts of a webhook URL that are its credential, to redact even
/// where only a piece of it appears (an error naming the path, a proxy's
/// answer quoting the query): the URL, its path and query, and every long
/// segment of them.
fn url_pieces(url: &str, parsed: &ureq::http::Uri) -> Vec<String> {
    let mut out = vec![url.to_string()];
    if let Some(pq) = parsed.path_and_query() {
        out.push(pq.as_str().to_string());
        if let Some(q) = pq.query() {
            out.push(q.to_string());
        }
        out.extend(
            pq.as_str()
                .split(['/', '?', '&', '=', '@'])
                .filter(|s| s.len() >= 8)
                .map(str::to_string),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classifier(on: &[NotifyOn]) -> Classifier {
        let step = |attempts, on_failure| StepInfo {
            host: Some("sql01".into()),
            retry: RetryPolicy {
                attempts,
                ..RetryPolicy::default()
            },
            on_failure,
        };
        Classifier {
            on: on.iter().copied().collect(),
            steps: [
                ("db".to_string(), step(2, OnFailure::Pause)),
                ("undo".to_string(), step(1, OnFailure::Rollback)),
            ]
            .into_iter()
            .collect(),
            plan: "TM".into(),
            host: "jump01".into(),
            journal: "/j".into(),
            journal_dir: "/j".into(),
            told: false,
        }
    }

    fn env(seq: u64, event: Event) -> Envelope {
        Envelope {
            run: RunId::new(),
            seq,
            time: chrono::Utc::now(),
            event,
        }
    }

    fn failed(step: &str, attempt: u32) -> Event {
        Event::StepFailed {
            step: step.into(),
            attempt,
            error: "exit 4".into(),
            output_tail: String::new(),
            transient: false,
        }
    }

    #[test]
    fn only_a_failure_with_no_retry_left_is_told() {
        let mut c = classifier(&NotifyOn::ALL);
        let st = RunState::default();
        assert!(c.classify(&env(3, failed("db", 1)), &st).is_none());
        let m = c.classify(&env(5, failed("db", 2)), &st).expect("told");
        assert_eq!(
            (m.on, m.step.as_deref(), m.seq),
            (NotifyOn::Failed, Some("db"), 5)
        );
        assert_eq!(m.step_host.as_deref(), Some("sql01"));
        assert!(m.next[0].starts_with("upshift retry "), "{:?}", m.next);
        assert!(m.next[0].ends_with(" db --journal /j"), "{:?}", m.next);
        // With on_failure = "rollback" the run goes on by itself.
        let m = c.classify(&env(6, failed("undo", 1)), &st).expect("told");
        assert!(m.next[0].starts_with("upshift status "), "{:?}", m.next);
    }

    #[test]
    fn a_pause_after_a_message_about_the_same_wait_sends_nothing() {
        let mut c = classifier(&NotifyOn::ALL);
        let mut st = RunState::default();
        let wait = Event::StepWaiting {
            step: "db".into(),
            reason: "approve".into(),
        };
        let paused = Event::RunPaused {
            reason: "waiting".into(),
        };
        assert!(c.classify(&env(1, wait), &st).is_some());
        assert!(c.classify(&env(2, paused.clone()), &st).is_none());
        // A later pause (a new session, say drift) is told again.
        let m = c.classify(&env(3, paused.clone()), &st).expect("told");
        assert_eq!(m.on, NotifyOn::Waiting);
        assert!(m.next[0].starts_with("upshift resume "), "{:?}", m.next);
        // A pause for a reboot is always told, as a reboot.
        st.reboot_pending = Some("msi".into());
        let m = c.classify(&env(4, paused), &st).expect("told");
        assert_eq!((m.on, m.step.as_deref()), (NotifyOn::Reboot, Some("msi")));
    }

    #[test]
    fn triggers_not_listed_in_on_are_not_told() {
        let mut c = classifier(&[NotifyOn::Ended]);
        let st = RunState::default();
        assert!(c.classify(&env(1, failed("db", 2)), &st).is_none());
        // ... and do not count as told: the pause is not told either.
        assert!(
            c.classify(&env(2, Event::RunPaused { reason: "x".into() }), &st)
                .is_none()
        );
        let m = c
            .classify(
                &env(
                    3,
                    Event::RunFinished {
                        outcome: Outcome::RolledBack,
                    },
                ),
                &st,
            )
            .expect("told");
        assert_eq!(m.outcome.as_deref(), Some("rolled_back"));
        assert!(m.title.ends_with("run rolled back"), "{}", m.title);
    }

    #[cfg(unix)]
    #[test]
    fn a_stuck_receiver_fills_the_queue_and_the_rest_is_dropped_without_waiting() {
        let text = r#"
name = "p"
[notify]
command = ["sleep", "3"]
timeout = "5s"
attempts = 1
[steps.a]
kind = "manual"
with = { instructions = "x" }
"#;
        let plan = crate::plan::parse(
            Path::new("p.toml"),
            text,
            &upshift_steps::registry(),
            &Default::default(),
        )
        .expect("a valid plan");
        let n = Notifier::for_session(
            &plan,
            &BTreeMap::new(),
            RunId::new(),
            Path::new("/j"),
            "h".into(),
            Arc::new(crate::engine::Quiet),
        )
        .expect("built")
        .expect("the plan has [notify]");
        let observer = n.observer();
        let st = RunState::default();
        let started = Instant::now();
        for seq in 0..40 {
            let wait = Event::StepWaiting {
                step: "a".into(),
                reason: "x".into(),
            };
            observer.event(&env(seq, wait), &st);
        }
        // 40 messages were classified and queued or dropped at once, while
        // the first one's command sleeps.
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        let dropped = n.shared.dropped.load(Ordering::SeqCst) as usize;
        assert!(
            (40 - QUEUE_MESSAGES_MAX - 1..=40 - QUEUE_MESSAGES_MAX).contains(&dropped),
            "{dropped} dropped"
        );
        // Finishing is bounded too.
        let started = Instant::now();
        n.finish(Duration::from_millis(200));
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn url_pieces_cover_the_token_wherever_it_shows() {
        let url = "https://contoso.webhook.office.com/webhookb2/1a2b3c4d-aaaa@5e6f/IncomingWebhook/0123456789abcdef/77889900?sig=Zm9vYmFyYmF6cXV4";
        let pieces = url_pieces(url, &url.parse().unwrap());
        let r = Redactor::new(pieces);
        for leak in [
            url.to_string(),
            "POST /webhookb2/1a2b3c4d-aaaa@5e6f/IncomingWebhook/0123456789abcdef/77889900?sig=Zm9vYmFyYmF6cXV4 failed".into(),
            "bad signature Zm9vYmFyYmF6cXV4".into(),
            "id 0123456789abcdef".into(),
        ] {
            let out = r.text(&leak);
            assert!(!out.contains("Zm9vYmFyYmF6cXV4"), "{out}");
            assert!(!out.contains("0123456789abcdef"), "{out}");
        }
        // The host is not a secret and stays readable.
        assert!(
            r.text("connecting to contoso.webhook.office.com")
                .contains("contoso")
        );
    }

    #[test]
    fn journal_folders_become_one_shell_word() {
        assert_eq!(shell_word("/var/lib/upshift"), "/var/lib/upshift");
        assert_eq!(
            shell_word(r"C:\ProgramData\upshift"),
            r"C:\ProgramData\upshift"
        );
        assert_eq!(
            shell_word(r"C:\Users\Jane Doe\upshift"),
            r#""C:\Users\Jane Doe\upshift""#
        );
    }
}
