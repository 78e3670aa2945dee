//! The [`Step`] trait and every built-in step kind of upshift.
//!
//! This crate knows nothing of the engine, the journal or plans: a step is
//! built from its resolved `with` table by a [`Kind`], and runs against a
//! [`StepContext`] the engine hands it. Checkpoints, progress and output go
//! through the context; the engine decides what becomes durable and when.
//!
//! ```
//! use upshift_steps::{registry, Kind};
//! let kinds = registry();
//! let sleep = kinds.get("sleep").unwrap();
//! let with: toml::Table = toml::from_str(r#"duration = "0s""#).unwrap();
//! let step = sleep.build(&with).unwrap();
//! assert_eq!(step.describe(), vec!["sleep 0s".to_string()]);
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

pub mod child;
pub mod hash;
pub mod kinds;
pub mod params;
pub mod redact;
#[cfg(feature = "sql-standin")]
pub mod sql_standin;
pub mod testing;

pub use params::{ParamError, parse_params};

/// Named outputs of a step, for later steps: `${steps.<id>.outputs.<name>}`.
pub type Outputs = BTreeMap<String, String>;

/// What a successful step reports.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StepOutcome {
    /// Named outputs.
    pub outputs: Outputs,
    /// The machine must reboot before the run can go on (e.g. msiexec 3010).
    pub reboot_required: bool,
}

impl StepOutcome {
    /// An outcome with these outputs and no reboot.
    pub fn with_outputs(outputs: Outputs) -> StepOutcome {
        StepOutcome {
            outputs,
            reboot_required: false,
        }
    }
}

/// Why a step did not succeed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StepError {
    /// The step failed. `transient` says a retry may help (deadlock,
    /// connection reset, another installer running); the engine retries per
    /// the step's policy either way, but reports the distinction.
    #[error("{message}")]
    Failed {
        /// What went wrong, with what the operator needs to fix it.
        message: String,
        /// Whether a retry may help.
        transient: bool,
    },
    /// The step cannot go on without an operator (a `manual` step, a reboot
    /// to be confirmed). The engine pauses the step; `upshift approve` lets
    /// it run again, and then [`StepContext::approved`] is true.
    #[error("waiting for an operator: {reason}")]
    WaitForOperator {
        /// What the operator must do.
        reason: String,
    },
}

impl StepError {
    /// A permanent failure.
    pub fn fatal(message: impl Into<String>) -> StepError {
        StepError::Failed {
            message: message.into(),
            transient: false,
        }
    }

    /// A failure a retry may cure.
    pub fn transient(message: impl Into<String>) -> StepError {
        StepError::Failed {
            message: message.into(),
            transient: true,
        }
    }
}

/// A probe's answer: is the state this step produces in place right now?
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The kind cannot tell.
    Unknown,
    /// The wanted state is in place.
    InPlace,
    /// The machine differs from what the step produces; what differs.
    Differs(String),
}

/// What a step sees of the engine while it runs.
#[async_trait::async_trait]
pub trait StepContext: Send + Sync {
    /// The step's id in the plan.
    fn step_id(&self) -> &str;
    /// The run's id (for file names that must be unique per run).
    fn run_id(&self) -> &str;
    /// Attempt number, from 1.
    fn attempt(&self) -> u32;
    /// The last checkpoint this step saved in an earlier, interrupted
    /// attempt, if any.
    fn resume_from(&self) -> Option<Vec<u8>>;
    /// Saves a checkpoint; returns only once it is durable. `done`/`total`
    /// count units of work (0 total if unknown).
    async fn checkpoint(&self, data: Vec<u8>, done: u64, total: u64) -> Result<(), StepError>;
    /// Reports progress that need not be durable (the engine coalesces it).
    fn progress(&self, done: u64, total: u64, message: &str);
    /// Appends to the step's captured output (the engine keeps a bounded
    /// tail for the journal).
    fn output(&self, text: &str);
    /// Whether an operator approved this step (`upshift approve`).
    fn approved(&self) -> bool;
    /// The outputs this step recorded when it succeeded (for compensation).
    fn recorded_outputs(&self) -> Outputs;
    /// A folder for this step's files (installer logs, saved copies), kept
    /// with the journal.
    fn work_dir(&self) -> PathBuf;
    /// The program that supervises child processes so they die with the
    /// engine (the upshift binary itself). `None` in unit tests.
    fn guard_program(&self) -> Option<PathBuf> {
        None
    }
}

/// One step, built from its parameters; runs at least once.
///
/// Every implementation is idempotent or reconciles with the world before it
/// acts, because a step that was running when the engine died runs again.
#[async_trait::async_trait]
pub trait Step: Send + Sync {
    /// What the step would do, one line per action, for `--dry-run`.
    fn describe(&self) -> Vec<String>;
    /// Does the work.
    async fn run(&self, ctx: &dyn StepContext) -> Result<StepOutcome, StepError>;
    /// Whether [`Step::compensate`] does anything.
    fn has_compensation(&self) -> bool {
        false
    }
    /// Undoes the step's effects during a rollback (must be idempotent too).
    async fn compensate(&self, _ctx: &dyn StepContext) -> Result<(), StepError> {
        Ok(())
    }
    /// Checks whether the state this step produces is in place (drift check).
    async fn probe(&self, _ctx: &dyn StepContext) -> Result<Probe, StepError> {
        Ok(Probe::Unknown)
    }
}

/// A step kind: validates parameters and builds steps. Building does no I/O.
pub trait Kind: Send + Sync {
    /// The name used in plans (`kind = "process"`).
    fn name(&self) -> &'static str;
    /// One line for `--help` and the README.
    fn summary(&self) -> &'static str;
    /// Builds a step from its (resolved) `with` table.
    fn build(&self, with: &toml::Table) -> Result<Box<dyn Step>, ParamError>;
}

/// Every built-in kind by name.
pub type Registry = BTreeMap<&'static str, Arc<dyn Kind>>;

/// The registry of built-in kinds.
pub fn registry() -> Registry {
    let mut r: Registry = BTreeMap::new();
    for k in kinds::all() {
        r.insert(k.name(), k);
    }
    r
}
