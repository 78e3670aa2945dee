//! `RunState`: a pure fold over a run's events. No I/O, no clock: replaying
//! a journal event by event reproduces exactly the picture the engine had.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use upshift_journal::{Decision, Envelope, Event, Outcome, RunId};

/// Where a step stands.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
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
    /// Ended failed (or aborted).
    Failed,
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
}

impl RunState {
    /// The fold of a whole event list.
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a Envelope>) -> RunState {
        let mut s = RunState::default();
        for e in events {
            s.apply(e);
        }
        s
    }

    /// A step's state (pending if never seen).
    pub fn step(&self, id: &str) -> &StepState {
        self.steps.get(id).unwrap_or(&NEVER_SEEN)
    }

    /// Counts an envelope whose event was already folded with
    /// [`RunState::apply_event`] (the engine folds its own events before
    /// they are durable, to decide what to commit with them).
    pub fn note(&mut self, env: &Envelope) {
        self.events += 1;
        self.last_seq = Some(env.seq);
        self.run = Some(env.run);
        self.started_at.get_or_insert(env.time);
        self.last_time = Some(env.time);
    }

    fn step_mut(&mut self, id: &str) -> &mut StepState {
        self.steps.entry(id.to_string()).or_default()
    }

    /// Folds one event.
    pub fn apply(&mut self, env: &Envelope) {
        self.note(env);
        self.apply_event(&env.event, env.time, env.seq);
    }

    /// Folds one event given its time (used for events not yet journaled,
    /// to decide what to journal with them in one commit).
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
                for st in self.steps.values_mut() {
                    if st.status == StepStatus::Running {
                        st.status = StepStatus::Interrupted;
                    }
                    if st.compensation == CompStatus::Running {
                        st.compensation = CompStatus::None;
                    }
                }
            }
            Event::RunInterrupted { .. } => {
                self.interrupted = true;
                for st in self.steps.values_mut() {
                    if st.status == StepStatus::Running {
                        st.status = StepStatus::Interrupted;
                    }
                    if st.compensation == CompStatus::Running {
                        st.compensation = CompStatus::None;
                    }
                }
            }
            Event::RunPaused { reason } => self.paused = Some(reason.clone()),
            Event::RunFinished { outcome } => {
                self.outcome = Some(*outcome);
                self.paused = None;
            }
            Event::StepStarted { step, attempt, .. } => {
                let st = self.step_mut(step);
                st.status = StepStatus::Running;
                st.attempts = *attempt;
                st.started_at = Some(time);
                st.waiting = None;
                st.retry_at = None;
            }
            Event::StepCheckpoint {
                step,
                data,
                done,
                total,
            } => {
                let st = self.step_mut(step);
                st.checkpoint = Some(data.clone());
                st.done = *done;
                st.total = *total;
            }
            Event::StepProgress {
                step, done, total, ..
            } => {
                let st = self.step_mut(step);
                st.done = *done;
                st.total = *total;
            }
            Event::StepSucceeded {
                step,
                outputs,
                output_tail,
                reboot_required,
                ..
            } => {
                let st = self.step_mut(step);
                st.status = StepStatus::Succeeded;
                st.outputs = outputs.clone();
                st.output_tail = output_tail.clone();
                st.error = None;
                st.ended_at = Some(time);
                st.reboot_required = *reboot_required;
                if st.total > 0 {
                    st.done = st.total;
                }
            }
            Event::StepFailed {
                step,
                error,
                output_tail,
                ..
            } => {
                let st = self.step_mut(step);
                st.status = StepStatus::Failed;
                st.error = Some(error.clone());
                st.output_tail = output_tail.clone();
                st.ended_at = Some(time);
            }
            Event::StepRetryScheduled { step, delay_ms, .. } => {
                let st = self.step_mut(step);
                st.status = StepStatus::RetryWait;
                st.retry_at = Some(time + chrono::Duration::milliseconds(*delay_ms as i64));
            }
            Event::StepWaiting { step, reason } => {
                let st = self.step_mut(step);
                st.status = StepStatus::Waiting;
                st.waiting = Some(reason.clone());
            }
            Event::StepSkipped { step, .. } => {
                let st = self.step_mut(step);
                st.status = StepStatus::Skipped;
                st.ended_at = Some(time);
                st.waiting = None;
            }
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
                        let st = self.step_mut(step);
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
                    }
                    Decision::Approve { step } => {
                        let st = self.step_mut(step);
                        st.approved = true;
                        if matches!(st.status, StepStatus::Waiting | StepStatus::Interrupted) {
                            st.status = StepStatus::Pending;
                            st.waiting = None;
                        }
                    }
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
                for st in self.steps.values_mut() {
                    if st.compensation == CompStatus::Failed {
                        st.compensation = CompStatus::None;
                    }
                }
            }
            Event::CompensationStarted { step } => {
                self.step_mut(step).compensation = CompStatus::Running;
            }
            Event::CompensationSucceeded { step, output_tail } => {
                let st = self.step_mut(step);
                st.compensation = CompStatus::Done;
                st.output_tail = output_tail.clone();
            }
            Event::CompensationFailed {
                step,
                error,
                output_tail,
            } => {
                let st = self.step_mut(step);
                st.compensation = CompStatus::Failed;
                st.compensation_error = Some(error.clone());
                st.output_tail = output_tail.clone();
            }
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

    /// The status word. `live` says whether an engine holds the run now
    /// (the journal cannot know that by itself).
    pub fn status(&self, live: bool) -> RunStatus {
        match self.outcome {
            Some(Outcome::Succeeded) => return RunStatus::Succeeded,
            Some(Outcome::RolledBack) => return RunStatus::RolledBack,
            Some(Outcome::Failed) | Some(Outcome::Aborted) => return RunStatus::Failed,
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
