//! A journal directory and what every command does with it first: open it
//! for writing or reading, pick a run, fold it, read the plan it pinned,
//! and see whether a live engine holds it.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use upshift_journal::{Envelope, Journal, JournalError, RunId};

use super::inbox::DirInbox;
use crate::error::{Error, Result};
use crate::plan::{self, LoadOptions, Plan, PlanErrors};
use crate::state::RunState;

/// A journal directory (with its `inbox/`, `logs/` and `work/` folders).
#[derive(Debug, Clone)]
pub struct Workspace {
    dir: PathBuf,
}

impl Workspace {
    /// The journal in `dir` (nothing is opened yet).
    pub fn new(dir: impl Into<PathBuf>) -> Workspace {
        Workspace { dir: dir.into() }
    }

    /// The journal in `given`, else `$UPSHIFT_JOURNAL`, else the OS default.
    pub fn resolve(given: Option<&Path>) -> Workspace {
        Workspace::new(resolve_dir(given))
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Opens the journal as its writer (takes the directory lock).
    pub fn open(&self) -> Result<Journal> {
        Ok(Journal::open(&self.dir)?)
    }

    /// Opens the journal for reading beside a live engine; with sled,
    /// which locks its directory, explains why that cannot work while a
    /// run is live.
    pub fn open_reader(&self) -> Result<Journal> {
        match Journal::open_read_only(&self.dir) {
            Ok(j) => Ok(j),
            Err(e) => {
                if upshift_journal::Backend::detect(&self.dir) == upshift_journal::Backend::Sled
                    && self.live_pid().is_some()
                {
                    Err(Error::failed(format!(
                        "{e}\n  this journal uses the sled backend, which locks its directory while an engine writes: it cannot be read beside a live run. Wait for the run to stop, or use the default redb backend (it lets readers follow a live run)."
                    )))
                } else {
                    Err(e.into())
                }
            }
        }
    }

    /// The pid of a live engine holding the journal, if any (`Some(None)`:
    /// held, by a process that did not say which).
    pub fn live_pid(&self) -> Option<Option<u32>> {
        live_pid(&self.dir)
    }

    /// The decision inbox of this journal (`<dir>/inbox`).
    pub fn inbox(&self) -> DirInbox {
        DirInbox::new(self.dir.join("inbox"))
    }
}

/// The journal directory: `given`, else `$UPSHIFT_JOURNAL`, else the OS
/// default.
pub fn resolve_dir(given: Option<&Path>) -> PathBuf {
    if let Some(d) = given {
        return d.to_path_buf();
    }
    if let Some(d) = std::env::var_os("UPSHIFT_JOURNAL").filter(|v| !v.is_empty()) {
        return PathBuf::from(d);
    }
    default_journal_dir()
}

/// The OS default journal directory.
pub fn default_journal_dir() -> PathBuf {
    #[cfg(windows)]
    {
        let base = std::env::var_os("ProgramData")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(r"C:\ProgramData"));
        base.join("upshift")
    }
    #[cfg(not(windows))]
    {
        if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(x).join("upshift");
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        home.join(".local").join("state").join("upshift")
    }
}

/// The pid of a live engine holding the journal in `dir`, if any. Reads
/// only: the lock is tested, never taken ([`upshift_journal::DirLock::holder`]).
pub fn live_pid(dir: &Path) -> Option<Option<u32>> {
    upshift_journal::DirLock::holder(dir)
}

/// The run `given` (a full id or a unique prefix); without one, the latest
/// run, or with `unfinished` the only run that has not ended.
pub fn pick_run(j: &Journal, given: Option<&str>, unfinished: bool) -> Result<RunId> {
    let runs = j.runs()?;
    if let Some(g) = given {
        // Accept a full id or a unique prefix.
        let matches: Vec<RunId> = runs
            .iter()
            .copied()
            .filter(|r| r.to_string().starts_with(g))
            .collect();
        return match matches.as_slice() {
            [one] => Ok(*one),
            [] => Err(Error::usage(format!(
                "no run {g} in this journal (`upshift runs` lists them)"
            ))),
            _ => Err(Error::usage(format!(
                "{g} matches {} runs: give more of the id",
                matches.len()
            ))),
        };
    }
    if runs.is_empty() {
        return Err(Error::usage(
            "this journal has no runs yet (start one with `upshift run PLAN`)",
        ));
    }
    if !unfinished {
        return Ok(*runs.last().expect("non-empty"));
    }
    let open: Vec<RunId> = runs
        .iter()
        .copied()
        .filter(|r| {
            let (ev, _) = j.read_run_salvage(*r);
            RunState::from_events(&ev).outcome.is_none()
        })
        .collect();
    match open.as_slice() {
        [one] => Ok(*one),
        [] => Err(Error::usage(
            "no unfinished run to resume (`upshift runs` lists them)",
        )),
        many => Err(Error::usage(format!(
            "{} unfinished runs; name one: {}",
            many.len(),
            many.iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn damaged(e: JournalError, run: RunId) -> Error {
    match e {
        JournalError::Corrupt { .. } => Error::from(e).with_hint(format!(
            "upshift will not resume from a damaged journal: `upshift log {run}` shows the intact events before the damage"
        )),
        other => other.into(),
    }
}

/// Every event of a run; a damaged journal is an error that says where to
/// look.
pub fn read_history(j: &Journal, run: RunId) -> Result<Vec<Envelope>> {
    j.read_run(run).map_err(|e| damaged(e, run))
}

/// Folds a run's events as they are scanned, without holding them all
/// (a run can have millions).
pub fn fold_run(j: &Journal, run: RunId) -> Result<RunState> {
    let mut state = RunState::default();
    j.scan(run, 0, &mut |env| {
        state.apply(&env);
        ControlFlow::Continue(())
    })
    .map_err(|e| damaged(e, run))?;
    Ok(state)
}

/// The plan a run pinned last (after any accepted plan change) with its
/// pinned site file and `--var` values, parsed with this upshift's kinds.
pub fn pinned_plan(state: &RunState) -> Result<Plan, PlanErrors> {
    plan::parse(
        Path::new(&state.plan_path),
        &state.plan_text,
        &upshift_steps::registry(),
        &pinned_options(state),
    )
}

/// How to load the plan a run pinned: its `--var` values and its pinned
/// site file.
pub fn pinned_options(state: &RunState) -> LoadOptions {
    LoadOptions {
        vars: state.cli_vars.clone(),
        site: match &state.site {
            Some((path, text, _)) => plan::SiteSource::Pinned {
                path: PathBuf::from(path),
                text: text.clone(),
            },
            None => plan::SiteSource::FromPlan,
        },
    }
}

/// [`load_plan`], then the files the plan's hosts need on this machine
/// (ssh keys, known_hosts) and the files and folders its steps need here
/// (scripts, packages): what `check` and `run` load a plan with.
pub fn load_plan_to_run(
    path: &Path,
    vars: &BTreeMap<String, String>,
    site: Option<&Path>,
) -> Result<Plan> {
    let p = load_plan(path, vars, site)?;
    let mut problems = p.host_file_problems();
    problems.extend(p.local_path_problems());
    if !problems.is_empty() {
        return Err(plan::PlanErrors(problems).into());
    }
    Ok(p)
}

/// Reads and validates a plan file with `--var` values and an optional
/// `--site` file (default: the plan's own `site`).
pub fn load_plan(
    path: &Path,
    vars: &BTreeMap<String, String>,
    site: Option<&Path>,
) -> Result<Plan> {
    Ok(plan::load(
        path,
        &upshift_steps::registry(),
        &LoadOptions {
            vars: vars.clone(),
            site: match site {
                Some(p) => plan::SiteSource::File(p.to_path_buf()),
                None => plan::SiteSource::FromPlan,
            },
        },
    )?)
}
