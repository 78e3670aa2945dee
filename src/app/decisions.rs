//! Operator decisions (`retry`, `skip`, `approve`, `abort`, `rollback`):
//! checked against the run's state, then journaled directly when no engine
//! holds the journal, or queued in the [inbox](super::inbox) for the live
//! engine, which journals them within a second.

use upshift_journal::{Actor, Decision, Envelope, Event, Journal, JournalError, Outcome, RunId};

use super::identity::actor;
use super::inbox::InboxDecision;
use super::workspace::{Workspace, pick_run, pinned_plan, read_history};
use crate::error::{Error, Result};
use crate::report;
use crate::state::{CompStatus, RunState, StepStatus};

/// The events that record an operator decision.
pub fn decision_events(decision: Decision, actor: Actor, reason: String) -> Vec<Event> {
    let mut out = vec![Event::OperatorDecision {
        decision: decision.clone(),
        actor,
        reason: reason.clone(),
    }];
    match decision {
        Decision::Skip { step } => out.push(Event::StepSkipped { step, reason }),
        Decision::Abort => out.push(Event::RunFinished {
            outcome: Outcome::Aborted,
        }),
        Decision::Rollback => out.push(Event::RollbackStarted {
            reason: if reason.is_empty() {
                "operator asked for a rollback".into()
            } else {
                reason
            },
        }),
        _ => {}
    }
    out
}

/// Where a decision went.
pub enum Recorded {
    /// No engine held the journal: the decision is journaled (boxed: the
    /// journal and the state are large, the other variant small).
    Journaled(Box<Journaled>),
    /// A live engine holds the journal: the decision waits in its inbox.
    Queued {
        /// The engine's pid, if it said.
        holder_pid: Option<u32>,
    },
}

/// A decision journaled directly, and the run after it.
pub struct Journaled {
    /// The journal, still open as its writer.
    pub journal: Journal,
    /// The run's state after the decision.
    pub state: RunState,
    /// Every event of the run, the decision's included.
    pub history: Vec<Envelope>,
}

/// Journals a decision directly, or queues it for the live engine.
/// `check` turns the run's state into the decision, or refuses.
pub fn record(
    ws: &Workspace,
    run_arg: &str,
    check: impl FnOnce(&RunState, RunId) -> Result<Decision>,
    reason: String,
) -> Result<(RunId, Recorded)> {
    match Journal::open(ws.dir()) {
        Ok(mut j) => {
            let run = pick_run(&j, Some(run_arg), false)?;
            let history = read_history(&j, run)?;
            let state = RunState::from_events(&history);
            let decision = check(&state, run)?;
            let events = decision_events(decision, actor(), reason);
            let mut seq = j.next_seq(run)?;
            let now = chrono::Utc::now();
            let batch: Vec<Envelope> = events
                .into_iter()
                .map(|event| {
                    let e = Envelope {
                        run,
                        seq,
                        time: now,
                        event,
                    };
                    seq += 1;
                    e
                })
                .collect();
            j.append(&batch)?;
            let mut all = history;
            all.extend(batch);
            let state = RunState::from_events(&all);
            Ok((
                run,
                Recorded::Journaled(Box::new(Journaled {
                    journal: j,
                    state,
                    history: all,
                })),
            ))
        }
        Err(JournalError::Locked { holder_pid, .. }) => {
            // A live engine holds the journal: queue the decision for it.
            let j = ws.open_reader()?;
            let run = pick_run(&j, Some(run_arg), false)?;
            let history = read_history(&j, run)?;
            let state = RunState::from_events(&history);
            let decision = check(&state, run)?;
            ws.inbox().queue(
                run,
                &InboxDecision {
                    decision,
                    actor: actor(),
                    reason,
                },
            )?;
            Ok((run, Recorded::Queued { holder_pid }))
        }
        Err(e) => Err(e.into()),
    }
}

/// A decision about one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepDecision {
    /// Run a failed or paused step again (or retry a failed compensation).
    Retry,
    /// Mark the step done without running it.
    Skip,
    /// Let a step that waits for an operator go on.
    Approve,
}

/// Decides about one step of a run, after checking that the run has that
/// step and the decision applies to it.
pub fn decide_step(
    ws: &Workspace,
    run_arg: &str,
    step: &str,
    what: StepDecision,
    reason: String,
) -> Result<(RunId, Recorded)> {
    let step = step.to_string();
    record(
        ws,
        run_arg,
        |state, run| {
            if state.outcome.is_some_and(|o| o != Outcome::Failed) {
                return Err(Error::usage(format!(
                    "run {run} already ended ({})",
                    report::outcome_word(state.outcome.expect("some"))
                )));
            }
            let plan_steps = pinned_plan(state)
                .map(|p| p.steps.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default();
            if !plan_steps.contains(&step) {
                let hint =
                    crate::diagnostics::suggest(&step, plan_steps.iter().map(String::as_str))
                        .map(|s| format!(" (did you mean `{s}`?)"))
                        .unwrap_or_default();
                return Err(Error::usage(format!(
                    "run {run} has no step `{step}`{hint}"
                )));
            }
            let st = state.step(&step).clone();
            if st.status == StepStatus::Succeeded && st.compensation != CompStatus::Failed {
                return Err(Error::usage(format!(
                    "step `{step}` already succeeded; nothing to decide"
                )));
            }
            if what == StepDecision::Approve
                && !matches!(
                    st.status,
                    StepStatus::Waiting | StepStatus::Interrupted | StepStatus::Pending
                )
            {
                return Err(Error::usage(format!(
                    "step `{step}` is {}, not waiting for an operator",
                    report::step_word(&st.status)
                )));
            }
            Ok(match what {
                StepDecision::Retry => Decision::Retry { step: step.clone() },
                StepDecision::Skip => Decision::Skip { step: step.clone() },
                StepDecision::Approve => Decision::Approve { step: step.clone() },
            })
        },
        reason,
    )
}

/// Decides about a whole run: [`Decision::Abort`] or
/// [`Decision::Rollback`]. A rollback is also allowed for a failed run.
pub fn decide_run(
    ws: &Workspace,
    run_arg: &str,
    decision: Decision,
    reason: String,
) -> Result<(RunId, Recorded)> {
    let is_rollback = decision == Decision::Rollback;
    record(
        ws,
        run_arg,
        |state, run| {
            if let Some(o) = state.outcome
                && (o != Outcome::Failed || !is_rollback)
            {
                return Err(Error::usage(format!(
                    "run {run} already ended ({})",
                    report::outcome_word(o)
                )));
            }
            Ok(decision.clone())
        },
        reason,
    )
}

/// Approves a waiting step (as `upshift approve` does).
pub fn approve(ws: &Workspace, run: RunId, step: &str, reason: &str) -> Result<()> {
    decide_step(
        ws,
        &run.to_string(),
        step,
        StepDecision::Approve,
        reason.to_string(),
    )
    .map(|_| ())
}
