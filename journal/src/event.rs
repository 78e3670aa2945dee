//! The events of a run and the envelope each is stored in.
//!
//! Versioning rule (read before editing): events are encoded with bincode,
//! which writes an enum variant as its *position*. So new variants and new
//! enums are only ever **appended**; existing variants keep their position and
//! fields forever. A change that cannot follow that rule bumps
//! [`crate::codec::FORMAT_VERSION`] and teaches the codec to read the old
//! version. Fixture journals under `tests/fixtures/` pin this.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Identifies one run: a UUID v7, so ids sort by creation time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RunId(pub Uuid);

impl RunId {
    /// A fresh, time-ordered id.
    pub fn new() -> RunId {
        RunId(Uuid::now_v7())
    }

    /// The 16 bytes used in storage keys (big-endian, so runs sort by time).
    pub fn to_bytes(self) -> [u8; 16] {
        *self.0.as_bytes()
    }

    /// Inverse of [`RunId::to_bytes`].
    pub fn from_bytes(bytes: [u8; 16]) -> RunId {
        RunId(Uuid::from_bytes(bytes))
    }
}

impl Default for RunId {
    fn default() -> Self {
        RunId::new()
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for RunId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(RunId(Uuid::parse_str(s)?))
    }
}

/// One stored record: which run, its position in the run, when, and what.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The run this event belongs to.
    pub run: RunId,
    /// Position in the run, from 0, without gaps.
    pub seq: u64,
    /// When the engine appended it (UTC, microsecond precision).
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub time: DateTime<Utc>,
    /// What happened.
    pub event: Event,
}

/// Who did something: the OS user on which host, from which process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// OS user name.
    pub user: String,
    /// Host name.
    pub host: String,
    /// Process id of the upshift process that journaled it.
    pub pid: u32,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Every step succeeded or was skipped by an operator.
    Succeeded,
    /// A step failed and the policy (or an operator) ended the run.
    Failed,
    /// Every completed step was compensated.
    RolledBack,
    /// An operator aborted the run.
    Aborted,
}

/// An operator's decision, journaled with who made it and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// Run a failed or paused step again.
    Retry {
        /// The step.
        step: String,
    },
    /// Treat a step as done without running it.
    Skip {
        /// The step.
        step: String,
    },
    /// Let a step that waits for an operator (a `manual` step, or
    /// `resume = "ask"`) go on.
    Approve {
        /// The step.
        step: String,
    },
    /// End the run now; nothing more runs, nothing is compensated.
    Abort,
    /// Compensate every completed step, in reverse dependency order.
    Rollback,
    /// Resume with a plan file that differs from the one the run pinned.
    AcceptPlanChange {
        /// SHA-256 of the plan the run had pinned.
        old_hash: String,
        /// SHA-256 of the accepted plan.
        new_hash: String,
        /// The accepted plan text, pinned from now on.
        new_plan_text: String,
        /// Steps that were added, removed or changed.
        changed_steps: Vec<String>,
    },
    /// Resume although completed steps no longer match the machine.
    IgnoreDrift {
        /// Steps whose probe reported drift.
        steps: Vec<String>,
    },
}

/// Everything that can happen in a run. Append-only: see the module docs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// A run began. Pins the plan text and its hash.
    RunStarted {
        /// The plan's `name`.
        plan_name: String,
        /// Where the plan was read from (absolute path).
        plan_path: String,
        /// The exact plan text.
        plan_text: String,
        /// SHA-256 of `plan_text`, hex.
        plan_hash: String,
        /// `--var` overrides given on the command line (never secrets).
        vars: BTreeMap<String, String>,
        /// Version of the engine that started the run.
        engine_version: String,
        /// Who started it.
        actor: Actor,
    },
    /// An engine process took the run up again.
    RunResumed {
        /// Who resumed it.
        actor: Actor,
        /// Version of the engine that resumed it.
        engine_version: String,
    },
    /// The engine stopped on purpose (Ctrl-C, SIGTERM) with work left.
    RunInterrupted {
        /// Why, in words.
        reason: String,
    },
    /// Nothing can go on without an operator; the engine exits (code 3).
    RunPaused {
        /// Why, in words, naming the steps and the commands that continue.
        reason: String,
    },
    /// The run ended.
    RunFinished {
        /// How.
        outcome: Outcome,
    },
    /// An attempt of a step began.
    StepStarted {
        /// Step id.
        step: String,
        /// Attempt number, from 1.
        attempt: u32,
        /// Whether the step was handed a checkpoint to continue from.
        resumed_from_checkpoint: bool,
    },
    /// A step saved its progress durably.
    StepCheckpoint {
        /// Step id.
        step: String,
        /// Opaque bytes the step gets back on resume.
        data: Vec<u8>,
        /// Units done and total, if the step counts.
        done: u64,
        /// Total units, 0 if unknown.
        total: u64,
    },
    /// Progress that is not a checkpoint (coalesced by the engine).
    StepProgress {
        /// Step id.
        step: String,
        /// Units done.
        done: u64,
        /// Total units, 0 if unknown.
        total: u64,
        /// A short message, e.g. the current item.
        message: String,
    },
    /// An attempt succeeded.
    StepSucceeded {
        /// Step id.
        step: String,
        /// Attempt number.
        attempt: u32,
        /// Named outputs for later steps (`${steps.<id>.outputs.<name>}`).
        outputs: BTreeMap<String, String>,
        /// The last lines of the step's output.
        output_tail: String,
        /// The step reported that the machine must reboot (e.g. msiexec 3010).
        reboot_required: bool,
    },
    /// An attempt failed.
    StepFailed {
        /// Step id.
        step: String,
        /// Attempt number.
        attempt: u32,
        /// The error, in words.
        error: String,
        /// The last lines of the step's output.
        output_tail: String,
        /// Whether the step's own error said a retry may help.
        transient: bool,
    },
    /// A failed attempt will be retried after a delay.
    StepRetryScheduled {
        /// Step id.
        step: String,
        /// The attempt that will run next.
        next_attempt: u32,
        /// Backoff before it.
        delay_ms: u64,
    },
    /// A step waits for an operator (`manual`, `resume = "ask"`).
    StepWaiting {
        /// Step id.
        step: String,
        /// Why, and the command that continues.
        reason: String,
    },
    /// A step was skipped by an operator.
    StepSkipped {
        /// Step id.
        step: String,
        /// The operator's reason.
        reason: String,
    },
    /// An operator decided something.
    OperatorDecision {
        /// What.
        decision: Decision,
        /// Who.
        actor: Actor,
        /// Why, in the operator's words.
        reason: String,
    },
    /// Rollback began: completed steps will be compensated.
    RollbackStarted {
        /// Why.
        reason: String,
    },
    /// A step's compensation began.
    CompensationStarted {
        /// Step id.
        step: String,
    },
    /// A step's compensation finished.
    CompensationSucceeded {
        /// Step id.
        step: String,
        /// The last lines of its output.
        output_tail: String,
    },
    /// A step's compensation failed; the rollback stops, resumable.
    CompensationFailed {
        /// Step id.
        step: String,
        /// The error.
        error: String,
        /// The last lines of its output.
        output_tail: String,
    },
    /// A step asked for a reboot before the run can go on.
    RebootRequested {
        /// Step id.
        step: String,
        /// What the engine does about it.
        action: String,
    },
    /// A free-form note from the engine (e.g. drift found), for support.
    Note {
        /// The text.
        text: String,
    },
    /// The run pins its site file (the customer's values), like the plan.
    SitePinned {
        /// Where it was read from.
        path: String,
        /// The exact text.
        text: String,
        /// SHA-256 of `text`, hex.
        hash: String,
    },
    /// The operator was told about an event of the run through the plan's
    /// `[notify]` (or could not be): one per notifier and event, after the
    /// last attempt. Never holds the webhook's address.
    Notified {
        /// Seq of the event the message was about.
        about: u64,
        /// Which notifier: `webhook` or `command` (or `queue`: dropped
        /// before any attempt, the sender being too far behind).
        channel: String,
        /// The receiver accepted it (HTTP 2xx, or the command exited 0).
        delivered: bool,
        /// Attempts made.
        attempts: u32,
        /// What the receiver answered, or the last error (redacted).
        detail: String,
    },
    /// A step attempt was handed to the host it runs on under a ticket,
    /// journaled before the ticket is started there (and again when a
    /// resumed engine re-attaches to it): a resume follows this ticket
    /// instead of starting the attempt again.
    StepDispatched {
        /// Step id.
        step: String,
        /// The attempt the ticket runs.
        attempt: u32,
        /// The host (`[hosts.<name>]`).
        host: String,
        /// The ticket id on the host (`<run>-<step>-<attempt>`).
        ticket: String,
    },
}

impl Event {
    /// The step this event is about, if it is about one.
    pub fn step(&self) -> Option<&str> {
        match self {
            Event::StepStarted { step, .. }
            | Event::StepCheckpoint { step, .. }
            | Event::StepProgress { step, .. }
            | Event::StepSucceeded { step, .. }
            | Event::StepFailed { step, .. }
            | Event::StepRetryScheduled { step, .. }
            | Event::StepWaiting { step, .. }
            | Event::StepSkipped { step, .. }
            | Event::CompensationStarted { step }
            | Event::CompensationSucceeded { step, .. }
            | Event::CompensationFailed { step, .. }
            | Event::RebootRequested { step, .. }
            | Event::StepDispatched { step, .. } => Some(step),
            Event::OperatorDecision {
                decision:
                    Decision::Retry { step } | Decision::Skip { step } | Decision::Approve { step },
                ..
            } => Some(step),
            _ => None,
        }
    }

    /// Calls `f` on every free text of the event (errors, output tails,
    /// outputs, messages, reasons), e.g. to redact values. Ids, hashes and
    /// the plan text are not free text and are left alone.
    pub fn for_each_text_mut(&mut self, f: &mut dyn FnMut(&mut String)) {
        match self {
            Event::RunInterrupted { reason }
            | Event::RunPaused { reason }
            | Event::StepWaiting { reason, .. }
            | Event::StepSkipped { reason, .. }
            | Event::RollbackStarted { reason } => f(reason),
            Event::StepProgress { message, .. } => f(message),
            Event::StepSucceeded {
                outputs,
                output_tail,
                ..
            } => {
                outputs.values_mut().for_each(&mut *f);
                f(output_tail);
            }
            Event::StepFailed {
                error, output_tail, ..
            }
            | Event::CompensationFailed {
                error, output_tail, ..
            } => {
                f(error);
                f(output_tail);
            }
            Event::CompensationSucceeded { output_tail, .. } => f(output_tail),
            Event::OperatorDecision { reason, .. } => f(reason),
            Event::RebootRequested { action, .. } => f(action),
            Event::Note { text } => f(text),
            Event::Notified {
                channel, detail, ..
            } => {
                f(channel);
                f(detail);
            }
            Event::RunStarted { vars, .. } => vars.values_mut().for_each(&mut *f),
            Event::RunResumed { .. }
            | Event::RunFinished { .. }
            | Event::StepStarted { .. }
            | Event::StepCheckpoint { .. }
            | Event::StepRetryScheduled { .. }
            | Event::CompensationStarted { .. }
            | Event::StepDispatched { .. }
            | Event::SitePinned { .. } => {}
        }
    }

    /// A short name for the variant, as shown by `upshift log`.
    pub fn name(&self) -> &'static str {
        match self {
            Event::RunStarted { .. } => "run.started",
            Event::RunResumed { .. } => "run.resumed",
            Event::RunInterrupted { .. } => "run.interrupted",
            Event::RunPaused { .. } => "run.paused",
            Event::RunFinished { .. } => "run.finished",
            Event::StepStarted { .. } => "step.started",
            Event::StepCheckpoint { .. } => "step.checkpoint",
            Event::StepProgress { .. } => "step.progress",
            Event::StepSucceeded { .. } => "step.succeeded",
            Event::StepFailed { .. } => "step.failed",
            Event::StepRetryScheduled { .. } => "step.retry_scheduled",
            Event::StepWaiting { .. } => "step.waiting",
            Event::StepSkipped { .. } => "step.skipped",
            Event::OperatorDecision { .. } => "operator.decision",
            Event::RollbackStarted { .. } => "rollback.started",
            Event::CompensationStarted { .. } => "compensation.started",
            Event::CompensationSucceeded { .. } => "compensation.succeeded",
            Event::CompensationFailed { .. } => "compensation.failed",
            Event::RebootRequested { .. } => "reboot.requested",
            Event::Note { .. } => "note",
            Event::SitePinned { .. } => "run.site_pinned",
            Event::Notified { .. } => "notified",
            Event::StepDispatched { .. } => "step.dispatched",
        }
    }
}
