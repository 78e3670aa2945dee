//! Operator decisions (`retry`, `skip`, `approve`, `abort`, `rollback`):
//! checked against the run's state, then journaled directly when no engine
//! holds the journal, or queued in the [inbox](super::inbox) for the live
//! engine, which journals them within a second.

use upshift_journal::{Actor, Decision, Envelope, Event, Journal, JournalError, Outcome, RunId};

use super::identity::actor;
use super::inbox::InboxDecision;
use super::workspace::{Workspace, pick_run, pinned_plan, read_history};
use crate::error::{Error, Result};
use crate::plan::{Plan, ResumePolicy};
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
    if !ws.has_journal() {
        // Nothing to decide about, and nothing to create.
        ws.open_existing()?;
    }
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
/// step and the decision applies to it now ([`check_decision`]).
pub fn decide_step(
    ws: &Workspace,
    run_arg: &str,
    step: &str,
    what: StepDecision,
    reason: String,
) -> Result<(RunId, Recorded)> {
    let step = step.to_string();
    let decision = match what {
        StepDecision::Retry => Decision::Retry { step },
        StepDecision::Skip => Decision::Skip { step },
        StepDecision::Approve => Decision::Approve { step },
    };
    record(
        ws,
        run_arg,
        |state, run| {
            check_decision(pinned_plan(state).ok().as_ref(), state, run, &decision)?;
            Ok(decision.clone())
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
    record(
        ws,
        run_arg,
        |state, run| {
            check_decision(None, state, run, &decision)?;
            Ok(decision.clone())
        },
        reason,
    )
}

/// Whether an operator decision fits the run as it stands: the CLI asks
/// before journaling or queuing it, and the live engine asks again when it
/// takes the decision from its inbox (the run may have moved on).
///
/// An approval counts only for a step that waits for an operator; a retry
/// only for a step (or a compensation) that failed; a skip not for a step
/// that already succeeded or was skipped. A refusal names the step's state
/// and, for a pending step, what it waits for. `plan` (the run's pinned
/// plan) names the steps and their `needs`; without it those checks are
/// left out.
pub fn check_decision(
    plan: Option<&Plan>,
    state: &RunState,
    run: RunId,
    decision: &Decision,
) -> Result<()> {
    let step = match decision {
        Decision::Retry { step } | Decision::Skip { step } | Decision::Approve { step } => step,
        Decision::Abort | Decision::Rollback => {
            if let Some(o) = state.outcome
                && (o != Outcome::Failed || *decision != Decision::Rollback)
            {
                return Err(Error::usage(format!(
                    "run {run} already ended ({})",
                    report::outcome_word(o)
                )));
            }
            return Ok(());
        }
        _ => return Ok(()),
    };
    if state.outcome.is_some_and(|o| o != Outcome::Failed) {
        return Err(Error::usage(format!(
            "run {run} already ended ({})",
            report::outcome_word(state.outcome.expect("some"))
        )));
    }
    if let Some(plan) = plan
        && !plan.steps.contains_key(step)
    {
        let hint = crate::diagnostics::suggest(step, plan.steps.keys().map(String::as_str))
            .map(|s| format!(" (did you mean `{s}`?)"))
            .unwrap_or_default();
        return Err(Error::usage(format!(
            "run {run} has no step `{step}`{hint}"
        )));
    }
    let st = state.step(step);
    let comp_failed = st.compensation == CompStatus::Failed;
    if st.status == StepStatus::Succeeded && !comp_failed {
        return Err(Error::usage(format!(
            "step `{step}` already succeeded; nothing to decide"
        )));
    }
    let fits = match decision {
        Decision::Approve { .. } => {
            st.status == StepStatus::Waiting
                || (st.status == StepStatus::Interrupted
                    && plan.is_some_and(|p| p.steps[step].resume == ResumePolicy::Ask))
        }
        Decision::Retry { .. } => {
            comp_failed || matches!(st.status, StepStatus::Failed | StepStatus::RetryWait)
        }
        _ => st.status != StepStatus::Skipped,
    };
    if fits {
        return Ok(());
    }
    let only = match decision {
        Decision::Approve { .. } => "an approval counts only for a step that waits for an operator",
        Decision::Retry { .. } => "only a failed step (or a failed compensation) can be retried",
        _ => "it is already done",
    };
    Err(Error::usage(format!(
        "step `{step}` is {}: {only}",
        where_step_stands(plan, state, step)
    )))
}

/// A step's state in words, with what a pending step waits for:
/// "pending: it waits for `fe_compare` (running)".
pub fn where_step_stands(plan: Option<&Plan>, state: &RunState, step: &str) -> String {
    let st = state.step(step);
    let word = report::step_word(&st.status);
    match st.status {
        StepStatus::Pending => {
            let waits: Vec<String> = plan
                .and_then(|p| p.steps.get(step))
                .map(|def| {
                    def.needs
                        .iter()
                        .filter(|n| {
                            !matches!(
                                state.step(n).status,
                                StepStatus::Succeeded | StepStatus::Skipped
                            )
                        })
                        .map(|n| format!("`{n}` ({})", report::step_word(&state.step(n).status)))
                        .collect()
                })
                .unwrap_or_default();
            if waits.is_empty() {
                format!("{word} (it has not started)")
            } else {
                format!("{word}: it waits for {}", waits.join(", "))
            }
        }
        StepStatus::Running | StepStatus::Interrupted => {
            format!("{word} (attempt {})", st.attempts)
        }
        StepStatus::Failed => format!(
            "{word} ({})",
            st.error
                .as_deref()
                .and_then(|e| e.lines().next())
                .unwrap_or("no error recorded")
        ),
        _ => word.to_string(),
    }
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
