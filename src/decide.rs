//! The scheduler's decisions, as a pure function of the plan, the folded
//! state and the time: what to start, what waits, what to compensate, and
//! whether the run ends or pauses. The executor performs what this says;
//! `upshift replay --explain` prints it.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use upshift_journal::Outcome;

use crate::plan::{OnFailure, Plan, ResumePolicy};
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

fn done(st: &StepStatus) -> bool {
    matches!(st, StepStatus::Succeeded | StepStatus::Skipped)
}

/// Decides what to do next. `compensable` holds the steps that have a
/// compensation (plan `compensate` or the kind's own).
pub fn decide(
    plan: &Plan,
    state: &RunState,
    now: DateTime<Utc>,
    compensable: &BTreeSet<String>,
) -> Next {
    let mut next = Next::default();
    if let Some(o) = state.outcome {
        next.end = Some(End::Finish(o));
        return next;
    }
    // One pass over the steps, one lookup each: this runs on every
    // transition, so its cost is paid once per step of the plan each time.
    let mut running = false;
    let mut all_done = true;
    let mut failed: Vec<&String> = Vec::new();
    let mut waiting: Vec<&String> = Vec::new();
    let mut candidates: Vec<(&String, &crate::state::StepState)> = Vec::new();
    for id in &plan.order {
        let st = state.step(id);
        match st.status {
            StepStatus::Running => running = true,
            StepStatus::Failed => failed.push(id),
            StepStatus::Waiting => waiting.push(id),
            StepStatus::Pending | StepStatus::Interrupted | StepStatus::RetryWait => {
                candidates.push((id, st))
            }
            StepStatus::Succeeded | StepStatus::Skipped => {}
        }
        all_done &= done(&st.status);
    }
    if state.rolling_back {
        return decide_rollback(plan, state, compensable, running);
    }
    let blocked = !failed.is_empty() || state.reboot_pending.is_some();
    if !blocked {
        for (id, st) in candidates {
            let def = &plan.steps[id];
            if st.status == StepStatus::RetryWait
                && let Some(t) = st.retry_at
                && t > now
            {
                next.wake_at = Some(next.wake_at.map_or(t, |w| w.min(t)));
                continue;
            }
            if !def.needs.iter().all(|n| done(&state.step(n).status)) {
                continue;
            }
            if st.status == StepStatus::Interrupted
                && def.resume == ResumePolicy::Ask
                && !st.approved
            {
                next.wait.push((
                    id.clone(),
                    format!(
                        "was running when the engine stopped and has resume = \"ask\": check the machine, then `upshift approve {} {id}` to run it again, or `upshift skip {} {id} --reason ...`",
                        run_text(state),
                        run_text(state)
                    ),
                ));
            } else {
                next.start.push(id.clone());
            }
        }
    }
    if running || !next.start.is_empty() || !next.wait.is_empty() {
        return next;
    }
    let run = run_text(state);
    if let Some(first) = failed.first() {
        let def = &plan.steps[*first];
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
    if all_done {
        next.end = Some(End::Finish(Outcome::Succeeded));
        return next;
    }
    let waiting: Vec<String> = waiting
        .into_iter()
        .map(|id| {
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

fn decide_rollback(
    plan: &Plan,
    state: &RunState,
    compensable: &BTreeSet<String>,
    running: bool,
) -> Next {
    let mut next = Next::default();
    // Steps of the normal run still in flight finish (or are cancelled)
    // before any compensation starts.
    if running {
        return next;
    }
    let needs_comp = |id: &str| {
        let st = state.step(id);
        st.status == StepStatus::Succeeded
            && compensable.contains(id)
            && st.compensation != CompStatus::Done
    };
    let comp_running = plan
        .order
        .iter()
        .any(|id| state.step(id).compensation == CompStatus::Running);
    let failed: Vec<&String> = plan
        .order
        .iter()
        .filter(|id| state.step(id).compensation == CompStatus::Failed)
        .collect();
    if failed.is_empty() {
        for id in plan.order.iter().rev() {
            if !needs_comp(id) || state.step(id).compensation != CompStatus::None {
                continue;
            }
            // Reverse dependency order: everything that depends on this
            // step is compensated first.
            if plan
                .transitive_dependents(id)
                .iter()
                .all(|d| !needs_comp(d))
            {
                next.compensate.push(id.clone());
            }
        }
    }
    if comp_running || !next.compensate.is_empty() {
        return next;
    }
    let run = run_text(state);
    if let Some(first) = failed.first() {
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
