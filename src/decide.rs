//! The scheduler's decisions, as a pure function of the plan, the folded
//! state and the time: what to start, what waits, what to compensate, and
//! whether the run ends or pauses. The executor performs what this says;
//! `upshift replay --explain` prints it. Also here, so that the engine,
//! replay and the tests share one implementation: when a failed attempt is
//! retried ([`failure_events`]) and which steps a rollback compensates
//! ([`compensable`]).
//!
//! A decision reads the state's scheduler index ([`crate::state::sched`]), so it
//! costs O(what can start) rather than a walk of the plan; a state folded
//! without its plan gets an index built for the occasion.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use upshift_journal::{Event, Outcome};
use upshift_steps::Registry;

use crate::plan::{OnFailure, Plan, StepDef};
use crate::state::sched::{Graph, Sched};
use crate::state::{CompStatus, RunState, StepStatus};

/// How the run ends or stops, once nothing is in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The run is over.
    Finish(Outcome),
    /// Nothing can go on without an operator; the reason names the commands.
    Pause(String),
    /// A step failed with `on_failure = "rollback"`: start compensating.
    StartRollback(String),
}

/// What to do now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Next {
    /// Steps whose attempt can start now, in plan order.
    pub start: Vec<String>,
    /// Interrupted steps with `resume = "ask"`: to be marked waiting.
    pub wait: Vec<(String, String)>,
    /// Steps whose compensation can start now.
    pub compensate: Vec<String>,
    /// The earliest scheduled retry still in the future.
    pub wake_at: Option<DateTime<Utc>>,
    /// Set when nothing is in flight and nothing can start.
    pub end: Option<End>,
}

/// What may start at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Attempts and compensations in flight at most (those running count).
    pub concurrency: usize,
    /// Honour the plan's locks (held by running steps, counted per host
    /// unless site-wide) and each host's `max_concurrent`.
    pub locks: bool,
}

impl Limits {
    /// Everything that could start, locks ignored (replay's predictions).
    pub const UNBOUNDED: Limits = Limits {
        concurrency: usize::MAX,
        locks: false,
    };
}

/// Decides what to do next, with no limit on what starts at once.
/// `compensable` holds the steps that have a compensation
/// ([`compensable`]).
pub fn decide(
    plan: &Plan,
    state: &RunState,
    now: DateTime<Utc>,
    compensable: &BTreeSet<String>,
) -> Next {
    decide_within(plan, state, now, compensable, Limits::UNBOUNDED)
}

/// Decides what to do next; what starts stays within `limits` (steps in
/// plan order, skipping those whose locks are taken).
pub fn decide_within(
    plan: &Plan,
    state: &RunState,
    now: DateTime<Utc>,
    compensable: &BTreeSet<String>,
    limits: Limits,
) -> Next {
    let mut next = Next::default();
    if let Some(o) = state.outcome {
        next.end = Some(End::Finish(o));
        return next;
    }
    let built;
    let s = match state.sched_for(plan) {
        Some(s) => s,
        None => {
            built = Sched::new(Arc::new(Graph::new(plan)), state);
            &built
        }
    };
    if state.rolling_back {
        return decide_rollback(state, compensable, s, limits);
    }
    let g = s.graph();
    let run = run_text(state);
    let blocked = s.failed().next().is_some() || state.reboot_pending.is_some();
    if !blocked {
        for i in s.asking() {
            let id = g.id(i);
            next.wait.push((
                id.to_string(),
                format!(
                    "was running when the engine stopped and has resume = \"ask\": check the machine, then `upshift approve {run} {id}` to run it again, or `upshift skip {run} {id} --reason ...`"
                ),
            ));
        }
        // Retries that are due and can run, and the next one to come.
        let mut due = Vec::new();
        for (t, i) in s.retries() {
            match t {
                Some(t) if t > now => {
                    next.wake_at = Some(t);
                    break;
                }
                _ if s.unmet(i) == 0 => due.push(i),
                _ => {}
            }
        }
        due.sort_unstable();
        let mut room = limits
            .concurrency
            .saturating_sub((s.running() + s.comp_running()) as usize);
        let mut taken = vec![0u32; if limits.locks { g.lock_count() } else { 0 }];
        let mut host_taken = vec![0u32; if limits.locks { g.host_count() } else { 0 }];
        let mut ready = s.ready().peekable();
        let mut due = due.into_iter().peekable();
        while room > 0 {
            // Both lists are in plan order; a step is in one of them only.
            let i = match (ready.peek(), due.peek()) {
                (Some(a), Some(b)) if b < a => due.next(),
                (Some(_), _) => ready.next(),
                (None, _) => due.next(),
            };
            let Some(i) = i else { break };
            if limits.locks {
                let locks = g.locks(i);
                let host = g.host(i);
                if locks
                    .iter()
                    .any(|&l| s.held(l) + taken[l as usize] >= g.lock_limit(l))
                    || host.is_some_and(|h| {
                        s.host_running(h) + host_taken[h as usize] >= g.host_limit(h)
                    })
                {
                    continue;
                }
                for &l in locks {
                    taken[l as usize] += 1;
                }
                if let Some(h) = host {
                    host_taken[h as usize] += 1;
                }
            }
            next.start.push(g.id(i).to_string());
            room -= 1;
        }
    }
    if s.running() > 0 || !next.start.is_empty() || !next.wait.is_empty() {
        return next;
    }
    if let Some(first) = s.failed().next() {
        let first = g.id(first);
        let def = &plan.steps[first];
        let err = state.step(first).error.clone().unwrap_or_default();
        next.end = Some(match def.on_failure {
            OnFailure::Rollback => End::StartRollback(format!("step {first} failed: {err}")),
            OnFailure::Abort => End::Finish(Outcome::Failed),
            OnFailure::Pause => End::Pause(format!(
                "step {first} failed: {err}\n  then: fix the cause and `upshift retry {run} {first}`, or `upshift skip {run} {first} --reason ...`, or `upshift rollback {run}`, or `upshift abort {run}`"
            )),
        });
        return next;
    }
    if let Some(step) = &state.reboot_pending {
        next.end = Some(End::Pause(format!(
            "step {step} requires a reboot: reboot the machine, then `upshift resume {run}`"
        )));
        return next;
    }
    if next.wake_at.is_some() {
        return next;
    }
    if s.done() as usize == g.len() {
        next.end = Some(End::Finish(Outcome::Succeeded));
        return next;
    }
    let waiting: Vec<String> = s
        .waiting()
        .map(|i| {
            let id = g.id(i);
            format!(
                "{id}: {} (`upshift approve {run} {id}`)",
                state.step(id).waiting.clone().unwrap_or_default()
            )
        })
        .collect();
    next.end = Some(End::Pause(if waiting.is_empty() {
        "no step can start (every remaining step needs a step that cannot finish)".into()
    } else {
        format!("waiting for an operator:\n  {}", waiting.join("\n  "))
    }));
    next
}

fn run_text(state: &RunState) -> String {
    state.run.map(|r| r.to_string()).unwrap_or_default()
}

/// Rollback decisions: one walk of the plan per decision (a rollback
/// compensates few steps, once per run), in reverse dependency order.
fn decide_rollback(
    state: &RunState,
    compensable: &BTreeSet<String>,
    s: &Sched,
    limits: Limits,
) -> Next {
    let mut next = Next::default();
    // Steps of the normal run still in flight finish (or are cancelled)
    // before any compensation starts.
    if s.running() > 0 {
        return next;
    }
    let g = s.graph();
    let n = g.len() as u32;
    let needs_comp: Vec<bool> = (0..n)
        .map(|i| {
            let k = s.key(i);
            k.status == StepStatus::Succeeded
                && k.comp != CompStatus::Done
                && compensable.contains(g.id(i))
        })
        .collect();
    let failed = s.comp_failed().next();
    if failed.is_none() {
        let mut room = limits.concurrency.saturating_sub(s.comp_running() as usize);
        // Whether a step has a dependent, direct or not, still to be
        // compensated: dependents come later in the plan's order.
        let mut blocked = vec![false; n as usize];
        for i in (0..n).rev() {
            let b = g
                .dependents(i)
                .iter()
                .any(|&d| needs_comp[d as usize] || blocked[d as usize]);
            blocked[i as usize] = b;
            if room > 0 && needs_comp[i as usize] && s.key(i).comp == CompStatus::None && !b {
                next.compensate.push(g.id(i).to_string());
                room -= 1;
            }
        }
    }
    if s.comp_running() > 0 || !next.compensate.is_empty() {
        return next;
    }
    let run = run_text(state);
    if let Some(first) = failed {
        let first = g.id(first);
        let err = state
            .step(first)
            .compensation_error
            .clone()
            .unwrap_or_default();
        next.end = Some(End::Pause(format!(
            "rollback stopped: compensation of {first} failed: {err}\n  then: fix the cause and `upshift rollback {run}` (runs the remaining compensations), or `upshift abort {run}`"
        )));
        return next;
    }
    next.end = Some(End::Finish(Outcome::RolledBack));
    next
}

/// The events that record a failed attempt: the failure, and the retry
/// the step's policy allows (attempts left, and the failure is transient
/// or the policy retries every failure), with its exponential backoff.
pub fn failure_events(
    def: &StepDef,
    attempt: u32,
    error: String,
    output_tail: String,
    transient: bool,
) -> Vec<Event> {
    let policy = &def.retry;
    let mut ev = vec![Event::StepFailed {
        step: def.id.clone(),
        attempt,
        error,
        output_tail,
        transient,
    }];
    if policy.retries(attempt, transient) {
        ev.push(Event::StepRetryScheduled {
            step: def.id.clone(),
            next_attempt: attempt + 1,
            delay_ms: policy.delay_before(attempt + 1).as_millis() as u64,
        });
    }
    ev
}

/// Stand-ins for secret values, for building steps where only their shape
/// matters (building does no I/O and no step's compensation depends on a
/// secret's value).
pub fn placeholder_secrets(plan: &Plan) -> BTreeMap<String, String> {
    plan.secrets
        .keys()
        .map(|k| (k.clone(), format!("<secret {k}>")))
        .collect()
}

/// Steps a rollback compensates: those with a plan `compensate` body, and
/// succeeded steps whose kind compensates itself (built as the engine
/// builds them, with `secrets`; building does no I/O).
pub fn compensable(
    plan: &Plan,
    state: &RunState,
    registry: &Registry,
    secrets: &BTreeMap<String, String>,
) -> BTreeSet<String> {
    let mut set = BTreeSet::new();
    for id in &plan.order {
        let def = &plan.steps[id];
        if def.compensate.is_some() {
            set.insert(id.clone());
        } else if state.step(id).status == StepStatus::Succeeded
            && let Some(kind) = registry.get(def.body.kind.as_str())
            && let Ok(with) =
                crate::state::resolve_with(plan, Some(id), &def.body.with, secrets, state)
            && kind.build(&with).is_ok_and(|s| s.has_compensation())
        {
            set.insert(id.clone());
        }
    }
    set
}
