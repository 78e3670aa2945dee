//! Spans of time in a run, derived from its events: each step attempt,
//! compensation, operator wait and retry backoff, and each engine session
//! (from `run.started`/`run.resumed` to the pause, interruption, finish or
//! crash that ended it). The report's Gantt chart and `upshift diff` use
//! them. Pure: no clock, no I/O.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use upshift_journal::{Decision, Envelope, Event};

/// What a span is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SpanKind {
    /// An attempt of the step.
    Attempt,
    /// The step's compensation during a rollback.
    Compensation,
    /// The step waited for an operator.
    Waiting,
    /// Backoff before a retry.
    RetryWait,
}

/// How a span ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SpanEnd {
    /// Succeeded (attempt or compensation).
    Succeeded,
    /// Failed.
    Failed,
    /// The attempt stopped to wait for an operator.
    Waiting,
    /// The engine stopped (signal, crash, reboot) while it ran.
    Interrupted,
    /// An operator skipped the step.
    Skipped,
    /// A wait ended (approved, retried, started again).
    Resolved,
    /// Still open at the last event.
    Open,
}

impl SpanEnd {
    /// The word `--json` writes for it.
    pub fn as_str(self) -> &'static str {
        match self {
            SpanEnd::Succeeded => "succeeded",
            SpanEnd::Failed => "failed",
            SpanEnd::Waiting => "waiting",
            SpanEnd::Interrupted => "interrupted",
            SpanEnd::Skipped => "skipped",
            SpanEnd::Resolved => "resolved",
            SpanEnd::Open => "open",
        }
    }
}

/// One bar of the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Span {
    /// Step id.
    pub step: String,
    /// What.
    pub kind: SpanKind,
    /// Attempt number (attempts), else 0.
    pub attempt: u32,
    /// Started from a checkpoint.
    pub from_checkpoint: bool,
    /// Start.
    pub start: DateTime<Utc>,
    /// End (the last event's time if still open).
    pub end: DateTime<Utc>,
    /// Seq of the event that opened it.
    pub start_seq: u64,
    /// Seq of the event that closed it (or the last seq).
    pub end_seq: u64,
    /// How it ended.
    pub ended: SpanEnd,
}

impl Span {
    /// Its length.
    pub fn duration(&self) -> chrono::Duration {
        self.end - self.start
    }
}

/// How an engine session began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStart {
    /// `upshift run`.
    Started,
    /// `upshift resume` / `rollback`.
    Resumed,
}

/// One engine session (a process working on the run).
#[derive(Debug, Clone, Serialize)]
pub struct Session {
    /// How it began.
    pub began: SessionStart,
    /// Who (user@host, pid).
    pub who: String,
    /// Engine version.
    pub engine_version: String,
    /// Start.
    pub start: DateTime<Utc>,
    /// End (last event of the session).
    pub end: DateTime<Utc>,
    /// How it ended: `finished`, `paused`, `interrupted`, `crashed` (no
    /// closing event: killed or rebooted), `open` (the last session).
    pub ended: &'static str,
    /// Seq of the first event.
    pub start_seq: u64,
    /// Seq of the last event.
    pub end_seq: u64,
}

type Key = (String, u8);

fn key(step: &str, kind: SpanKind) -> Key {
    (
        step.to_string(),
        match kind {
            SpanKind::Attempt => 0,
            SpanKind::Compensation => 1,
            SpanKind::Waiting => 2,
            SpanKind::RetryWait => 3,
        },
    )
}

/// Every span of a run, in the order they opened.
pub fn spans(events: &[Envelope]) -> Vec<Span> {
    let mut out: Vec<Span> = Vec::new();
    let mut open: BTreeMap<Key, usize> = BTreeMap::new();
    let mut prev: Option<(DateTime<Utc>, u64)> = None;
    let close = |out: &mut Vec<Span>,
                 open: &mut BTreeMap<Key, usize>,
                 k: Key,
                 at: (DateTime<Utc>, u64),
                 how: SpanEnd| {
        if let Some(i) = open.remove(&k) {
            out[i].end = at.0.max(out[i].start);
            out[i].end_seq = at.1;
            out[i].ended = how;
        }
    };
    let open_span = |out: &mut Vec<Span>,
                     open: &mut BTreeMap<Key, usize>,
                     step: &str,
                     kind: SpanKind,
                     attempt: u32,
                     from_checkpoint: bool,
                     env: &Envelope| {
        out.push(Span {
            step: step.to_string(),
            kind,
            attempt,
            from_checkpoint,
            start: env.time,
            end: env.time,
            start_seq: env.seq,
            end_seq: env.seq,
            ended: SpanEnd::Open,
        });
        open.insert(key(step, kind), out.len() - 1);
    };
    for env in events {
        let now = (env.time, env.seq);
        match &env.event {
            Event::StepStarted {
                step,
                attempt,
                resumed_from_checkpoint,
            } => {
                close(
                    &mut out,
                    &mut open,
                    key(step, SpanKind::Attempt),
                    prev.unwrap_or(now),
                    SpanEnd::Interrupted,
                );
                close(
                    &mut out,
                    &mut open,
                    key(step, SpanKind::Waiting),
                    now,
                    SpanEnd::Resolved,
                );
                close(
                    &mut out,
                    &mut open,
                    key(step, SpanKind::RetryWait),
                    now,
                    SpanEnd::Resolved,
                );
                open_span(
                    &mut out,
                    &mut open,
                    step,
                    SpanKind::Attempt,
                    *attempt,
                    *resumed_from_checkpoint,
                    env,
                );
            }
            Event::StepSucceeded { step, .. } => close(
                &mut out,
                &mut open,
                key(step, SpanKind::Attempt),
                now,
                SpanEnd::Succeeded,
            ),
            Event::StepFailed { step, .. } => close(
                &mut out,
                &mut open,
                key(step, SpanKind::Attempt),
                now,
                SpanEnd::Failed,
            ),
            Event::StepRetryScheduled { step, .. } => open_span(
                &mut out,
                &mut open,
                step,
                SpanKind::RetryWait,
                0,
                false,
                env,
            ),
            Event::StepWaiting { step, .. } => {
                close(
                    &mut out,
                    &mut open,
                    key(step, SpanKind::Attempt),
                    now,
                    SpanEnd::Waiting,
                );
                if !open.contains_key(&key(step, SpanKind::Waiting)) {
                    open_span(&mut out, &mut open, step, SpanKind::Waiting, 0, false, env);
                }
            }
            Event::StepSkipped { step, .. } => {
                close(
                    &mut out,
                    &mut open,
                    key(step, SpanKind::Waiting),
                    now,
                    SpanEnd::Skipped,
                );
                close(
                    &mut out,
                    &mut open,
                    key(step, SpanKind::RetryWait),
                    now,
                    SpanEnd::Skipped,
                );
            }
            Event::OperatorDecision {
                decision: Decision::Approve { step } | Decision::Retry { step },
                ..
            } => {
                close(
                    &mut out,
                    &mut open,
                    key(step, SpanKind::Waiting),
                    now,
                    SpanEnd::Resolved,
                );
            }
            Event::CompensationStarted { step } => {
                close(
                    &mut out,
                    &mut open,
                    key(step, SpanKind::Compensation),
                    prev.unwrap_or(now),
                    SpanEnd::Interrupted,
                );
                open_span(
                    &mut out,
                    &mut open,
                    step,
                    SpanKind::Compensation,
                    0,
                    false,
                    env,
                );
            }
            Event::CompensationSucceeded { step, .. } => close(
                &mut out,
                &mut open,
                key(step, SpanKind::Compensation),
                now,
                SpanEnd::Succeeded,
            ),
            Event::CompensationFailed { step, .. } => close(
                &mut out,
                &mut open,
                key(step, SpanKind::Compensation),
                now,
                SpanEnd::Failed,
            ),
            Event::RunInterrupted { .. } | Event::RunResumed { .. } => {
                // Work in flight stopped: at this event if the engine said
                // so, else (a crash, seen at the next resume) at the last
                // event the dead engine wrote.
                let at = if matches!(env.event, Event::RunInterrupted { .. }) {
                    now
                } else {
                    prev.unwrap_or(now)
                };
                let running: Vec<Key> = open.keys().filter(|k| k.1 <= 1).cloned().collect();
                for k in running {
                    close(&mut out, &mut open, k, at, SpanEnd::Interrupted);
                }
            }
            _ => {}
        }
        prev = Some(now);
    }
    if let Some(last) = prev {
        for i in open.values() {
            out[*i].end = last.0.max(out[*i].start);
            out[*i].end_seq = last.1;
        }
    }
    out
}

/// Every engine session of a run.
pub fn sessions(events: &[Envelope]) -> Vec<Session> {
    let mut out: Vec<Session> = Vec::new();
    let mut open = false;
    let mut prev: Option<&Envelope> = None;
    for env in events {
        let who_version = match &env.event {
            Event::RunStarted {
                actor,
                engine_version,
                ..
            } => Some((SessionStart::Started, actor, engine_version)),
            Event::RunResumed {
                actor,
                engine_version,
            } => Some((SessionStart::Resumed, actor, engine_version)),
            _ => None,
        };
        if let Some((began, actor, version)) = who_version {
            if open && let (Some(s), Some(p)) = (out.last_mut(), prev) {
                s.end = p.time;
                s.end_seq = p.seq;
                s.ended = "crashed";
            }
            out.push(Session {
                began,
                who: format!("{}@{} pid {}", actor.user, actor.host, actor.pid),
                engine_version: version.clone(),
                start: env.time,
                end: env.time,
                ended: "open",
                start_seq: env.seq,
                end_seq: env.seq,
            });
            open = true;
        } else if open && let Some(s) = out.last_mut() {
            s.end = env.time;
            s.end_seq = env.seq;
            let how = match env.event {
                Event::RunFinished { .. } => Some("finished"),
                Event::RunPaused { .. } => Some("paused"),
                Event::RunInterrupted { .. } => Some("interrupted"),
                _ => None,
            };
            if let Some(h) = how {
                s.ended = h;
                open = false;
            }
        }
        prev = Some(env);
    }
    out
}

/// Per step: attempts started and the time spent in attempts.
pub fn step_totals(spans: &[Span]) -> BTreeMap<String, (u32, chrono::Duration)> {
    let mut out: BTreeMap<String, (u32, chrono::Duration)> = BTreeMap::new();
    for s in spans.iter().filter(|s| s.kind == SpanKind::Attempt) {
        let e = out
            .entry(s.step.clone())
            .or_insert((0, chrono::Duration::zero()));
        e.0 += 1;
        e.1 += s.duration();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use upshift_journal::{Actor, RunId};

    #[test]
    fn end_words_are_the_json_words() {
        use SpanEnd as E;
        for e in [
            E::Succeeded,
            E::Failed,
            E::Waiting,
            E::Interrupted,
            E::Skipped,
            E::Resolved,
            E::Open,
        ] {
            assert_eq!(serde_json::to_value(e).unwrap(), e.as_str());
        }
    }

    fn run(events: Vec<(i64, Event)>) -> Vec<Envelope> {
        let run = RunId::new();
        let t0 = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap();
        events
            .into_iter()
            .enumerate()
            .map(|(i, (ms, event))| Envelope {
                run,
                seq: i as u64,
                time: t0 + chrono::Duration::milliseconds(ms),
                event,
            })
            .collect()
    }

    fn started(step: &str, attempt: u32) -> Event {
        Event::StepStarted {
            step: step.into(),
            attempt,
            resumed_from_checkpoint: attempt > 1,
        }
    }

    fn resumed() -> Event {
        Event::RunResumed {
            actor: Actor::default(),
            engine_version: "0.1.0".into(),
        }
    }

    #[test]
    fn a_crash_closes_the_attempt_at_the_last_event_of_the_dead_engine() {
        let ev = run(vec![
            (
                0,
                Event::RunStarted {
                    plan_name: "p".into(),
                    plan_path: "p.toml".into(),
                    plan_text: String::new(),
                    plan_hash: String::new(),
                    vars: Default::default(),
                    engine_version: "0.1.0".into(),
                    actor: Actor::default(),
                },
            ),
            (10, started("a", 1)),
            (
                500,
                Event::StepCheckpoint {
                    step: "a".into(),
                    data: vec![],
                    done: 1,
                    total: 2,
                },
            ),
            (60_000, resumed()),
            (60_010, started("a", 2)),
            (
                60_500,
                Event::StepSucceeded {
                    step: "a".into(),
                    attempt: 2,
                    outputs: Default::default(),
                    output_tail: String::new(),
                    reboot_required: false,
                },
            ),
            (
                60_510,
                Event::RunFinished {
                    outcome: upshift_journal::Outcome::Succeeded,
                },
            ),
        ]);
        let s = spans(&ev);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].ended, SpanEnd::Interrupted);
        assert_eq!(s[0].duration(), chrono::Duration::milliseconds(490));
        assert_eq!(s[1].ended, SpanEnd::Succeeded);
        assert!(s[1].from_checkpoint);
        let sess = sessions(&ev);
        assert_eq!(sess.len(), 2);
        assert_eq!(sess[0].ended, "crashed");
        assert_eq!(sess[0].end_seq, 2);
        assert_eq!(sess[1].ended, "finished");
        let totals = step_totals(&s);
        assert_eq!(totals["a"].0, 2);
        assert_eq!(totals["a"].1, chrono::Duration::milliseconds(980));
    }

    #[test]
    fn waits_and_retries_are_their_own_spans() {
        let ev = run(vec![
            (0, started("m", 1)),
            (
                5,
                Event::StepWaiting {
                    step: "m".into(),
                    reason: "bind cert".into(),
                },
            ),
            (
                6,
                Event::RunPaused {
                    reason: "waiting".into(),
                },
            ),
            (
                1000,
                Event::OperatorDecision {
                    decision: Decision::Approve { step: "m".into() },
                    actor: Actor::default(),
                    reason: String::new(),
                },
            ),
            (1100, resumed()),
            (1110, started("m", 2)),
            (
                1120,
                Event::StepFailed {
                    step: "m".into(),
                    attempt: 2,
                    error: "x".into(),
                    output_tail: String::new(),
                    transient: true,
                },
            ),
            (
                1120,
                Event::StepRetryScheduled {
                    step: "m".into(),
                    next_attempt: 3,
                    delay_ms: 50,
                },
            ),
            (1170, started("m", 3)),
        ]);
        let kinds: Vec<(SpanKind, SpanEnd)> =
            spans(&ev).iter().map(|s| (s.kind, s.ended)).collect();
        assert_eq!(
            kinds,
            vec![
                (SpanKind::Attempt, SpanEnd::Waiting),
                (SpanKind::Waiting, SpanEnd::Resolved),
                (SpanKind::Attempt, SpanEnd::Failed),
                (SpanKind::RetryWait, SpanEnd::Resolved),
                (SpanKind::Attempt, SpanEnd::Open),
            ]
        );
    }
}
