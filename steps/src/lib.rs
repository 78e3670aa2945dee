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
pub mod preflight;
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

/// What kind of thing a [`Resource`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceKind {
    /// A service (Windows service or systemd unit), by name.
    Service,
    /// A file, by path.
    File,
    /// An installed product (MSI product code, else the package).
    Product,
}

/// Something on a machine a step acts on. Drift checks use it: a completed
/// step's probe says nothing when a later step of the same run acts on the
/// same resource (it changed it on purpose).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Resource {
    /// What it is.
    pub kind: ResourceKind,
    /// Its name, path or product code.
    pub name: String,
    /// The host it is on (`None`: the machine the step runs on).
    pub host: Option<String>,
}

impl Resource {
    /// A service by name.
    pub fn service(name: impl Into<String>) -> Resource {
        Resource::new(ResourceKind::Service, name.into())
    }
    /// A file by path.
    pub fn file(path: &std::path::Path) -> Resource {
        Resource::new(ResourceKind::File, path.display().to_string())
    }
    /// An installed product.
    pub fn product(name: impl Into<String>) -> Resource {
        Resource::new(ResourceKind::Product, name.into())
    }
    fn new(kind: ResourceKind, name: String) -> Resource {
        Resource {
            kind,
            name,
            host: None,
        }
    }
    /// The same resource on `host`.
    pub fn on(mut self, host: Option<&str>) -> Resource {
        self.host = host.map(str::to_string);
        self
    }
    /// Whether two steps acting on these act on the same thing. Service
    /// names and product codes compare without case (as Windows does);
    /// paths compare as written (without case on Windows).
    pub fn same(&self, other: &Resource) -> bool {
        let case_blind = self.kind != ResourceKind::File || cfg!(windows);
        self.kind == other.kind
            && self.host == other.host
            && if case_blind {
                self.name.eq_ignore_ascii_case(&other.name)
            } else {
                self.name == other.name
            }
    }
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
    /// What the step acts on (services, files, products), so that a drift
    /// check does not blame a completed step for a later step's work.
    fn resources(&self) -> Vec<Resource> {
        Vec::new()
    }
    /// Read-only checks against the real site before the maintenance window
    /// (`upshift preflight`): packages, logins, permissions, files the step
    /// will need. Must change nothing anywhere (see [`preflight`]). Default:
    /// nothing to check.
    async fn preflight(&self, _ctx: &preflight::PreflightContext) -> Vec<preflight::Check> {
        Vec::new()
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
    /// The parameters that name a file or folder on the machine the step
    /// runs on. Where that is this machine, the plan loader makes a
    /// relative one relative to the file that names it, and `check` says
    /// which of those the run needs that do not exist.
    fn local_paths(&self) -> &'static [LocalPath] {
        &[]
    }
}

/// A parameter naming a file or folder ([`Kind::local_paths`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalPath {
    /// The parameter (a top-level key of `with`).
    pub field: &'static str,
    /// A folder (else a file).
    pub dir: bool,
    /// It must exist before the run starts (not made by an earlier step).
    pub must_exist: bool,
}

impl LocalPath {
    /// A file or folder that must exist before the run.
    pub const fn input(field: &'static str, dir: bool) -> LocalPath {
        LocalPath {
            field,
            dir,
            must_exist: true,
        }
    }

    /// A path that an earlier step may create.
    pub const fn any(field: &'static str, dir: bool) -> LocalPath {
        LocalPath {
            field,
            dir,
            must_exist: false,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_are_the_same_thing_on_the_same_host_only() {
        let ich = Resource::service("TM-ICH");
        assert!(
            ich.same(&Resource::service("tm-ich")),
            "service names ignore case"
        );
        assert!(!ich.same(&Resource::service("TM-FE")));
        assert!(!ich.same(&Resource::product("TM-ICH")), "kinds differ");
        let on_a = Resource::service("TM-ICH").on(Some("a"));
        assert!(!ich.same(&on_a), "the local machine is not host a");
        assert!(on_a.same(&Resource::service("tm-ich").on(Some("a"))));
        assert!(!on_a.same(&Resource::service("tm-ich").on(Some("b"))));
        let f = Resource::file(std::path::Path::new("/etc/App.config"));
        assert!(f.same(&Resource::file(std::path::Path::new("/etc/App.config"))));
        assert_eq!(
            f.same(&Resource::file(std::path::Path::new("/etc/app.config"))),
            cfg!(windows),
            "paths ignore case on Windows only"
        );
    }

    #[test]
    fn the_kinds_that_act_on_services_files_and_products_say_so() {
        let r = registry();
        let build = |kind: &str, with: &str| {
            r.get(kind)
                .unwrap()
                .build(&toml::from_str(with).unwrap())
                .unwrap_or_else(|e| panic!("{kind}: {}", e.message))
                .resources()
        };
        assert_eq!(
            build("service", "name = \"TM-ICH\"\naction = \"restart\""),
            [Resource::service("TM-ICH")]
        );
        assert_eq!(
            build(
                "ich.cleanup_conferences",
                "service = \"TM-ICH\"\nconfig = \"/x/ich.config\""
            ),
            [
                Resource::service("TM-ICH"),
                Resource::file(std::path::Path::new("/x/ich.config"))
            ]
        );
        assert_eq!(
            build(
                "config.appsettings",
                "file = \"/x/a.config\"\nset = { K = \"v\" }"
            ),
            [Resource::file(std::path::Path::new("/x/a.config"))]
        );
        assert!(build("sleep", "duration = \"0s\"").is_empty());
    }
}
