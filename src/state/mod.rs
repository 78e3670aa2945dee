//! `RunState`: a pure fold over a run's events. No I/O, no clock: replaying
//! a journal event by event reproduces exactly the picture the engine had.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use upshift_journal::{Decision, Envelope, Event, Outcome, RunId};

use crate::plan::{Plan, expand_target};
use crate::refs::{self, MapResolver};
pub mod sched;

use sched::{Graph, Key, Sched};

/// Where a step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not started (or reset for a retry).
    #[default]
    Pending,
    /// An attempt is under way (or was, when the engine died).
    Running,
    /// Was running when the engine stopped or died; runs again on resume.
    Interrupted,
    /// Failed; a retry is scheduled.
    RetryWait,
    /// Waits for an operator (`manual`, `resume = "ask"`).
    Waiting,
    /// Failed for good (until an operator decides).
    Failed,
    /// Done.
    Succeeded,
    /// Skipped by an operator.
    Skipped,
}

/// Where a step's compensation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CompStatus {
    /// Not compensated (or not needed).
    #[default]
    None,
    /// Under way (or was, when the engine died).
    Running,
    /// Done.
    Done,
    /// Failed.
    Failed,
}

/// Everything known about one step.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StepState {
    /// Status.
    pub status: StepStatus,
    /// Attempts started.
    pub attempts: u32,
    /// Last checkpoint (opaque bytes).
    #[serde(skip)]
    pub checkpoint: Option<Vec<u8>>,
    /// Units done (from checkpoints and progress).
    pub done: u64,
    /// Units in all (0 if unknown).
    pub total: u64,
    /// Outputs of the successful attempt.
    pub outputs: BTreeMap<String, String>,
    /// Last error.
    pub error: Option<String>,
    /// Last output tail.
    pub output_tail: String,
    /// Why it waits.
    pub waiting: Option<String>,
    /// Approved by an operator.
    pub approved: bool,
    /// The next attempt may start at this time.
    pub retry_at: Option<DateTime<Utc>>,
    /// When the current/last attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it last succeeded, failed or was skipped.
    pub ended_at: Option<DateTime<Utc>>,
    /// It asked for a reboot.
    pub reboot_required: bool,
    /// Compensation.
    pub compensation: CompStatus,
    /// Compensation error.
    pub compensation_error: Option<String>,
    /// Compensations that failed (names the next compensation's ticket on
    /// a remote host: a compensation cut off by a crash is followed again
    /// under the same ticket, never started twice).
    pub compensations_failed: u32,
    /// The ticket of the latest attempt handed to a remote host
    /// (`StepDispatched`).
    pub remote: Option<RemoteTicket>,
}

/// A step attempt running on a remote host under a ticket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RemoteTicket {
    /// The host.
    pub host: String,
    /// The ticket id on the host.
    pub ticket: String,
    /// The attempt it runs.
    pub attempt: u32,
    /// Checkpoints of this ticket journaled so far (a re-attached follower
    /// reads the ticket's checkpoints from the first: those up to this
    /// count are in the journal already).
    pub checkpoints: u64,
}

/// The state of a step no event has mentioned yet.
static NEVER_SEEN: StepState = StepState {
    status: StepStatus::Pending,
    attempts: 0,
    checkpoint: None,
    done: 0,
    total: 0,
    outputs: BTreeMap::new(),
    error: None,
    output_tail: String::new(),
    waiting: None,
    approved: false,
    retry_at: None,
    started_at: None,
    ended_at: None,
    reboot_required: false,
    compensation: CompStatus::None,
    compensation_error: None,
    compensations_failed: 0,
    remote: None,
};

/// The overall state of a run as a status word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// An engine is working on it.
    Running,
    /// Waiting for an operator.
    Paused,
    /// Stopped with work left (Ctrl-C, crash, reboot); `upshift resume`.
    Interrupted,
    /// Ended failed.
    Failed,
    /// Ended by an operator's `abort`.
    Aborted,
    /// Ended successfully.
    Succeeded,
    /// Every completed step was compensated.
    RolledBack,
}

/// A decision as journaled, for reports.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionRecord {
    /// Seq of the event.
    pub seq: u64,
    /// When.
    pub time: DateTime<Utc>,
    /// Who (user@host).
    pub who: String,
    /// What, in words.
    pub what: String,
    /// Why.
    pub reason: String,
}

/// The fold of a run's events.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunState {
    /// Run id.
    pub run: Option<RunId>,
    /// Plan name.
    pub plan_name: String,
    /// Plan path.
    pub plan_path: String,
    /// Pinned plan text.
    #[serde(skip)]
    pub plan_text: String,
    /// Pinned plan hash.
    pub plan_hash: String,
    /// `--var` values of the run.
    pub cli_vars: BTreeMap<String, String>,
    /// Pinned site file: path, text, hash.
    #[serde(skip)]
    pub site: Option<(String, String, String)>,
    /// Steps seen in events.
    pub steps: BTreeMap<String, StepState>,
    /// Set when the run ended.
    pub outcome: Option<Outcome>,
    /// Rolling back.
    pub rolling_back: bool,
    /// Paused, and why.
    pub paused: Option<String>,
    /// Interrupted on purpose (Ctrl-C) or by a reboot.
    pub interrupted: bool,
    /// A step asked for a reboot that has not happened yet.
    pub reboot_pending: Option<String>,
    /// Events folded.
    pub events: u64,
    /// Seq of the last event folded.
    pub last_seq: Option<u64>,
    /// First event's time.
    pub started_at: Option<DateTime<Utc>>,
    /// Last event's time.
    pub last_time: Option<DateTime<Utc>>,
    /// Times an engine (re)started the run.
    pub sessions: u32,
    /// Operator decisions.
    pub decisions: Vec<DecisionRecord>,
    /// The scheduler's index, when the state was given its plan
    /// ([`RunState::for_plan`], [`RunState::attach`]).
    #[serde(skip)]
    sched: Option<Box<Sched>>,
}

/// What [`RunState::speculate`] changed, to put back with
/// [`RunState::undo`].
#[must_use = "a speculation must be undone"]
pub struct Speculation {
    steps: Vec<(String, Option<StepState>)>,
    all_saved: bool,
    outcome: Option<Outcome>,
    rolling_back: bool,
    paused: Option<String>,
    interrupted: bool,
    reboot_pending: Option<String>,
    sessions: u32,
    decisions: usize,
    plan: Option<Box<PlanFields>>,
}

/// The run-level fields a plan-related event sets.
type PlanFields = (
    String,
    String,
    String,
    String,
    BTreeMap<String, String>,
    Option<(String, String, String)>,
);

impl RunState {
    /// The fold of a whole event list.
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a Envelope>) -> RunState {
        let mut s = RunState::default();
        for e in events {
            s.apply(e);
        }
        s
    }

    /// An empty state that keeps the scheduler's index of `plan` up to
    /// date as it folds (what the engine and replay fold into).
    pub fn for_plan(plan: &Plan) -> RunState {
        let mut s = RunState::default();
        s.attach(plan);
        s
    }

    /// Gives the state its plan: builds the scheduler's index from the
    /// steps folded so far (one walk of the plan) and keeps it up to date
    /// from now on. A plan changed mid-run (an accepted plan change) is
    /// attached again.
    pub fn attach(&mut self, plan: &Plan) {
        if self.sched.as_ref().is_some_and(|s| s.graph().is_of(plan)) {
            return;
        }
        let graph = Arc::new(Graph::new(plan));
        self.sched = Some(Box::new(Sched::new(graph, self)));
    }

    /// The scheduler's index, if it is the one of `plan`.
    pub fn sched_for(&self, plan: &Plan) -> Option<&Sched> {
        self.sched.as_deref().filter(|s| s.graph().is_of(plan))
    }

    /// A step's state (pending if never seen).
    pub fn step(&self, id: &str) -> &StepState {
        self.steps.get(id).unwrap_or(&NEVER_SEEN)
    }

    fn note(&mut self, env: &Envelope) {
        self.events += 1;
        self.last_seq = Some(env.seq);
        self.run = Some(env.run);
        self.started_at.get_or_insert(env.time);
        self.last_time = Some(env.time);
    }

    /// Changes one step, keeping the scheduler's index in step.
    fn change(&mut self, id: &str, f: impl FnOnce(&mut StepState)) {
        let st = match self.steps.get_mut(id) {
            Some(st) => st,
            None => self.steps.entry(id.to_string()).or_default(),
        };
        let before = Key::of(st);
        f(st);
        let after = Key::of(st);
        if let Some(s) = &mut self.sched {
            s.update(id, before, after);
        }
    }

    /// Changes every step seen so far (run-wide events, rare).
    fn change_all(&mut self, f: impl Fn(&mut StepState)) {
        for (id, st) in self.steps.iter_mut() {
            let before = Key::of(st);
            f(st);
            let after = Key::of(st);
            if let Some(s) = &mut self.sched {
                s.update(id, before, after);
            }
        }
    }

    /// Folds one event.
    pub fn apply(&mut self, env: &Envelope) {
        self.note(env);
        self.apply_event(&env.event, env.time, env.seq);
    }

    /// Folds one event given its time and seq, without counting it as a
    /// journaled event (simulations: `replay --explain`, the engine's
    /// speculation).
    pub fn apply_event(&mut self, event: &Event, time: DateTime<Utc>, seq: u64) {
        match event {
            Event::RunStarted {
                plan_name,
                plan_path,
                plan_text,
                plan_hash,
                vars,
                ..
            } => {
                self.plan_name = plan_name.clone();
                self.plan_path = plan_path.clone();
                self.plan_text = plan_text.clone();
                self.plan_hash = plan_hash.clone();
                self.cli_vars = vars.clone();
                self.sessions += 1;
            }
            Event::RunResumed { .. } => {
                self.sessions += 1;
                self.paused = None;
                self.interrupted = false;
                self.reboot_pending = None;
                self.change_all(stop_in_flight);
            }
            Event::RunInterrupted { .. } => {
                self.interrupted = true;
                self.change_all(stop_in_flight);
            }
            Event::RunPaused { reason } => self.paused = Some(reason.clone()),
            Event::RunFinished { outcome } => {
                self.outcome = Some(*outcome);
                self.paused = None;
            }
            Event::StepStarted { step, attempt, .. } => self.change(step, |st| {
                st.status = StepStatus::Running;
                st.attempts = *attempt;
                st.started_at = Some(time);
                st.waiting = None;
                st.retry_at = None;
            }),
            Event::StepCheckpoint {
                step,
                data,
                done,
                total,
            } => self.change(step, |st| {
                st.checkpoint = Some(data.clone());
                st.done = *done;
                st.total = *total;
                if let Some(r) = &mut st.remote
                    && r.attempt == st.attempts
                    && st.status == StepStatus::Running
                {
                    r.checkpoints += 1;
                }
            }),
            Event::StepDispatched {
                step,
                attempt,
                host,
                ticket,
            } => self.change(step, |st| {
                // Dispatched (or re-attached after a resume): the attempt
                // runs on the host.
                st.status = StepStatus::Running;
                st.waiting = None;
                match &mut st.remote {
                    Some(r) if r.ticket == *ticket => {}
                    _ => {
                        st.remote = Some(RemoteTicket {
                            host: host.clone(),
                            ticket: ticket.clone(),
                            attempt: *attempt,
                            checkpoints: 0,
                        })
                    }
                }
            }),
            Event::StepProgress {
                step, done, total, ..
            } => self.change(step, |st| {
                st.done = *done;
                st.total = *total;
            }),
            Event::StepSucceeded {
                step,
                outputs,
                output_tail,
                reboot_required,
                ..
            } => self.change(step, |st| {
                st.status = StepStatus::Succeeded;
                st.outputs = outputs.clone();
                st.output_tail = output_tail.clone();
                st.error = None;
                st.ended_at = Some(time);
                st.reboot_required = *reboot_required;
                if st.total > 0 {
                    st.done = st.total;
                }
            }),
            Event::StepFailed {
                step,
                error,
                output_tail,
                ..
            } => self.change(step, |st| {
                st.status = StepStatus::Failed;
                st.error = Some(error.clone());
                st.output_tail = output_tail.clone();
                st.ended_at = Some(time);
            }),
            Event::StepRetryScheduled { step, delay_ms, .. } => self.change(step, |st| {
                st.status = StepStatus::RetryWait;
                st.retry_at = Some(retry_due(time, *delay_ms));
            }),
            Event::StepWaiting { step, reason } => self.change(step, |st| {
                st.status = StepStatus::Waiting;
                st.waiting = Some(reason.clone());
            }),
            Event::StepSkipped { step, .. } => self.change(step, |st| {
                st.status = StepStatus::Skipped;
                st.ended_at = Some(time);
                st.waiting = None;
            }),
            Event::OperatorDecision {
                decision,
                actor,
                reason,
            } => {
                self.decisions.push(DecisionRecord {
                    seq,
                    time,
                    who: format!("{}@{}", actor.user, actor.host),
                    what: describe_decision(decision),
                    reason: reason.clone(),
                });
                self.paused = None;
                match decision {
                    Decision::Retry { step } => {
                        // A retry reopens a run that ended failed.
                        if self.outcome == Some(Outcome::Failed) {
                            self.outcome = None;
                        }
                        self.change(step, |st| {
                            if st.status == StepStatus::Succeeded {
                                return;
                            }
                            if st.compensation == CompStatus::Failed {
                                st.compensation = CompStatus::None;
                            } else {
                                st.status = StepStatus::Pending;
                                st.error = None;
                                st.waiting = None;
                            }
                        });
                    }
                    Decision::Approve { step } => self.change(step, |st| {
                        st.approved = true;
                        if matches!(st.status, StepStatus::Waiting | StepStatus::Interrupted) {
                            st.status = StepStatus::Pending;
                            st.waiting = None;
                        }
                    }),
                    Decision::AcceptPlanChange {
                        new_hash,
                        new_plan_text,
                        ..
                    } => {
                        self.plan_hash = new_hash.clone();
                        self.plan_text = new_plan_text.clone();
                    }
                    Decision::Skip { .. }
                    | Decision::Abort
                    | Decision::Rollback
                    | Decision::IgnoreDrift { .. } => {}
                }
            }
            Event::RollbackStarted { .. } => {
                self.rolling_back = true;
                self.outcome = None;
                self.change_all(|st| {
                    if st.compensation == CompStatus::Failed {
                        st.compensation = CompStatus::None;
                    }
                });
            }
            Event::CompensationStarted { step } => self.change(step, |st| {
                st.compensation = CompStatus::Running;
            }),
            Event::CompensationSucceeded { step, output_tail } => self.change(step, |st| {
                st.compensation = CompStatus::Done;
                st.output_tail = output_tail.clone();
            }),
            Event::CompensationFailed {
                step,
                error,
                output_tail,
            } => self.change(step, |st| {
                st.compensation = CompStatus::Failed;
                st.compensation_error = Some(error.clone());
                st.compensations_failed += 1;
                st.output_tail = output_tail.clone();
            }),
            Event::RebootRequested { step, .. } => {
                self.reboot_pending = Some(step.clone());
            }
            // Notes and notification records do not change where the run
            // stands.
            Event::Note { .. } | Event::Notified { .. } => {}
            Event::SitePinned { path, text, hash } => {
                self.site = Some((path.clone(), text.clone(), hash.clone()));
            }
        }
    }

    /// Folds events that are not journaled yet, to decide what to journal
    /// with them in one commit (the end of an attempt and the starts it
    /// allows), remembering what they changed: [`RunState::undo`] puts it
    /// back, so that the state only ever holds journaled events, folded
    /// in journal order with the journal's times (what replay folds).
    pub fn speculate(&mut self, events: &[Event], time: DateTime<Utc>) -> Speculation {
        let mut sp = Speculation {
            steps: Vec::new(),
            all_saved: false,
            outcome: self.outcome,
            rolling_back: self.rolling_back,
            paused: self.paused.clone(),
            interrupted: self.interrupted,
            reboot_pending: self.reboot_pending.clone(),
            sessions: self.sessions,
            decisions: self.decisions.len(),
            plan: None,
        };
        for e in events {
            match touched(e) {
                Touched::Step(id) => {
                    if !sp.all_saved && !sp.steps.iter().any(|(s, _)| s == id) {
                        sp.steps.push((id.to_string(), self.steps.get(id).cloned()));
                    }
                }
                Touched::AllSteps => {
                    if !sp.all_saved {
                        // Every step seen so far, plus those saved already
                        // (which may not exist yet).
                        let saved: Vec<(String, Option<StepState>)> = self
                            .steps
                            .iter()
                            .filter(|(id, _)| !sp.steps.iter().any(|(s, _)| s == *id))
                            .map(|(id, st)| (id.clone(), Some(st.clone())))
                            .collect();
                        sp.steps.extend(saved);
                        sp.all_saved = true;
                    }
                }
                Touched::Plan => {
                    if sp.plan.is_none() {
                        sp.plan = Some(Box::new((
                            self.plan_name.clone(),
                            self.plan_path.clone(),
                            self.plan_text.clone(),
                            self.plan_hash.clone(),
                            self.cli_vars.clone(),
                            self.site.clone(),
                        )));
                    }
                }
                Touched::Nothing => {}
            }
            if sp.all_saved
                && let Some(id) = e.step()
                && !sp.steps.iter().any(|(s, _)| s == id)
            {
                sp.steps.push((id.to_string(), None));
            }
            self.apply_event(e, time, u64::MAX);
        }
        sp
    }

    /// Puts back what [`RunState::speculate`] changed.
    pub fn undo(&mut self, sp: Speculation) {
        for (id, saved) in sp.steps.into_iter().rev() {
            let before = self.steps.get(&id).map(Key::of).unwrap_or_default();
            let after = saved.as_ref().map(Key::of).unwrap_or_default();
            match saved {
                Some(st) => {
                    self.steps.insert(id.clone(), st);
                }
                None => {
                    self.steps.remove(&id);
                }
            }
            if let Some(s) = &mut self.sched {
                s.update(&id, before, after);
            }
        }
        self.outcome = sp.outcome;
        self.rolling_back = sp.rolling_back;
        self.paused = sp.paused;
        self.interrupted = sp.interrupted;
        self.reboot_pending = sp.reboot_pending;
        self.sessions = sp.sessions;
        self.decisions.truncate(sp.decisions);
        if let Some(plan) = sp.plan {
            (
                self.plan_name,
                self.plan_path,
                self.plan_text,
                self.plan_hash,
                self.cli_vars,
                self.site,
            ) = *plan;
        }
    }

    /// Checks the scheduler's index against one built from scratch (tests).
    #[doc(hidden)]
    pub fn check_index(&self) -> Result<(), String> {
        match &self.sched {
            Some(s) => s.check(self),
            None => Ok(()),
        }
    }

    /// The status word. `live` says whether an engine holds the run now
    /// (the journal cannot know that by itself).
    pub fn status(&self, live: bool) -> RunStatus {
        match self.outcome {
            Some(Outcome::Succeeded) => return RunStatus::Succeeded,
            Some(Outcome::RolledBack) => return RunStatus::RolledBack,
            Some(Outcome::Failed) => return RunStatus::Failed,
            Some(Outcome::Aborted) => return RunStatus::Aborted,
            None => {}
        }
        if live {
            RunStatus::Running
        } else if self.paused.is_some() {
            RunStatus::Paused
        } else {
            RunStatus::Interrupted
        }
    }

    /// Step ids that an interrupted or crashed run had in flight.
    pub fn in_flight(&self) -> Vec<&str> {
        self.steps
            .iter()
            .filter(|(_, s)| matches!(s.status, StepStatus::Running | StepStatus::Interrupted))
            .map(|(k, _)| k.as_str())
            .collect()
    }
}

/// Resolves a body's `with` table against the run's values. `step` is the
/// step it belongs to (an instance of a fanned-out step reads the outputs
/// of the instances on its own host), `None` for what belongs to the run.
pub fn resolve_with(
    plan: &Plan,
    step: Option<&str>,
    with: &toml::Table,
    secrets: &BTreeMap<String, String>,
    state: &RunState,
) -> Result<toml::Table, String> {
    let expanded = expand_target(with, &plan.targets)?;
    let sec = |n: &str| secrets.get(n).cloned();
    let out = |s: &str, n: &str| {
        let from = plan.output_source(step, s)?;
        state
            .steps
            .get(&from)
            .and_then(|st| st.outputs.get(n).cloned())
    };
    let resolver = MapResolver::new(
        &plan.vars,
        plan.site.as_ref().map(|s| &s.values),
        &sec,
        &out,
    );
    let resolved = refs::substitute_table(&expanded, &resolver).map_err(|b| b.message)?;
    // An output reference that did not resolve (its step was skipped, or
    // never produced that output) is an error, not a literal.
    let mut left = Vec::new();
    refs::refs_in_value(&toml::Value::Table(resolved.clone()), &mut left);
    for (_, r) in left {
        if let Ok(refs::Ref::Output { step, name }) = r {
            return Err(format!(
                "`${{steps.{step}.outputs.{name}}}` has no value: step {step} did not produce output `{name}` (was it skipped?)"
            ));
        }
    }
    Ok(resolved)
}

/// When a retry journaled at `time` with `delay_ms` is due.
pub fn retry_due(time: DateTime<Utc>, delay_ms: u64) -> DateTime<Utc> {
    time + chrono::Duration::milliseconds(delay_ms.min(i64::MAX as u64) as i64)
}

/// What an event changes, for [`RunState::speculate`].
enum Touched<'a> {
    Step(&'a str),
    AllSteps,
    Plan,
    Nothing,
}

fn touched(e: &Event) -> Touched<'_> {
    match e {
        Event::RunResumed { .. } | Event::RunInterrupted { .. } | Event::RollbackStarted { .. } => {
            Touched::AllSteps
        }
        Event::OperatorDecision {
            decision: Decision::AcceptPlanChange { .. },
            ..
        } => Touched::Plan,
        Event::OperatorDecision {
            decision: Decision::Retry { step } | Decision::Approve { step },
            ..
        } => Touched::Step(step),
        Event::RunStarted { .. } | Event::SitePinned { .. } => Touched::Plan,
        e => e.step().map_or(Touched::Nothing, Touched::Step),
    }
}

/// A step that was running when the engine stopped is interrupted.
fn stop_in_flight(st: &mut StepState) {
    if st.status == StepStatus::Running {
        st.status = StepStatus::Interrupted;
    }
    if st.compensation == CompStatus::Running {
        st.compensation = CompStatus::None;
    }
}

/// A decision in words.
pub fn describe_decision(d: &Decision) -> String {
    match d {
        Decision::Retry { step } => format!("retry {step}"),
        Decision::Skip { step } => format!("skip {step}"),
        Decision::Approve { step } => format!("approve {step}"),
        Decision::Abort => "abort".into(),
        Decision::Rollback => "rollback".into(),
        Decision::AcceptPlanChange { changed_steps, .. } => {
            format!("accept plan change ({})", changed_steps.join(", "))
        }
        Decision::IgnoreDrift { steps } => format!("ignore drift ({})", steps.join(", ")),
    }
}
