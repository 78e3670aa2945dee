//! Preflight: what a step can check against the real site days before the
//! maintenance window, **without changing anything** (`upshift preflight`).
//!
//! [`crate::Step::preflight`] answers with [`Check`]s: one per thing looked
//! at — as expected ([`Check::Ok`]), a problem ([`Check::Finding`]: what
//! was found, what was expected, how to fix it) or not checked here, and
//! why ([`Check::NotChecked`], e.g. a Windows-only check on Linux). The
//! caller adds the step and the host, runs the steps of one host in
//! parallel and bounds each in time ([`PreflightContext::time_limit`]).
//!
//! Helpers for the kinds: [`msi`] (a package's own tables, read with the
//! `msi` crate on any OS), [`files`] (paths and config files), [`windows`]
//! (the machine's state: pending reboot, Windows Installer busy, services),
//! [`ports`] (a component's port free or its own, IIS site ports).
//!
//! A preflight method only reads: it opens no file for writing, starts no
//! installer or service tool, journals nothing and sends SQL that only
//! reads (`SELECT`, `HAS_PERMS_BY_NAME`, `sp_spaceused`,
//! `xp_fixeddrives`).
//!
//! ```
//! use upshift_steps::preflight::Check;
//! let c = Check::finding("no package at D:\\TM\\TM-ICH.msi", "the .msi the plan installs", "copy the package there");
//! assert!(c.is_finding());
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod cert;
pub mod files;
pub mod msi;
pub mod ports;
pub mod windows;

/// What a step's preflight is handed.
#[derive(Debug, Clone)]
pub struct PreflightContext {
    /// The step's id in the plan.
    pub step_id: String,
    /// The host it runs on (`None`: the coordinator).
    pub host: Option<String>,
    /// How long the whole preflight of this step may take; the caller
    /// enforces it too (a step over it gets a finding).
    pub time_limit: Duration,
    /// The steps that run before this one (its `needs`, transitively): a
    /// file missing now may be laid down by one of them.
    pub earlier: Vec<Arc<Earlier>>,
    /// Set where a relative path cannot mean what its author meant: on an
    /// ssh host a step runs in a fresh ticket folder, so a relative path
    /// is a finding with this explanation instead of being looked up.
    pub relative_paths_unresolvable: Option<String>,
}

/// A step that runs before the one being checked.
#[derive(Debug, Clone)]
pub struct Earlier {
    /// Its id.
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// Its parameters as text (with this site's values), to find the paths
    /// it names.
    pub with_text: String,
}

/// Kinds that lay down files of their own (an installer's files).
const LAYS_DOWN_FILES: &[&str] = &["msi.install"];

impl PreflightContext {
    /// A context for `step` on the coordinator with a 30 s limit.
    pub fn new(step: impl Into<String>) -> PreflightContext {
        PreflightContext {
            step_id: step.into(),
            host: None,
            time_limit: DEFAULT_TIME_LIMIT,
            earlier: Vec::new(),
            relative_paths_unresolvable: None,
        }
    }

    /// The earlier step that may create `path`: one whose parameters name
    /// it, else an installer that runs before.
    pub fn laid_down_by(&self, path: &Path) -> Option<&Earlier> {
        let shown = path.display().to_string();
        self.earlier
            .iter()
            .find(|e| e.with_text.contains(&shown))
            .or_else(|| {
                self.earlier
                    .iter()
                    .find(|e| LAYS_DOWN_FILES.contains(&e.kind.as_str()))
            })
            .map(|e| e.as_ref())
    }
}

/// Default time limit of one step's preflight.
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(30);

/// One thing a preflight looked at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Check {
    /// Checked, as expected.
    Ok {
        /// What was checked and found, in words.
        what: String,
    },
    /// A problem the run would meet.
    Finding {
        /// What was found.
        found: String,
        /// What the plan and site file expect.
        expected: String,
        /// How to fix it.
        fix: String,
    },
    /// Not checked here, and why (not a problem by itself).
    NotChecked {
        /// What was not checked.
        what: String,
        /// Why not.
        why: String,
    },
}

impl Check {
    /// A passed check.
    pub fn ok(what: impl Into<String>) -> Check {
        Check::Ok { what: what.into() }
    }

    /// A finding.
    pub fn finding(
        found: impl Into<String>,
        expected: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::Finding {
            found: found.into(),
            expected: expected.into(),
            fix: fix.into(),
        }
    }

    /// Something not checked, and why.
    pub fn not_checked(what: impl Into<String>, why: impl Into<String>) -> Check {
        Check::NotChecked {
            what: what.into(),
            why: why.into(),
        }
    }

    /// Whether this is a finding.
    pub fn is_finding(&self) -> bool {
        matches!(self, Check::Finding { .. })
    }
}

/// Whether a resolved parameter still holds a placeholder for something
/// only known at run time (`<output X of step Y>`, `<secret NAME>`): such
/// a value cannot be checked before the run.
pub fn is_placeholder(value: &str) -> bool {
    value.contains("<output ") || value.contains("<secret ")
}
