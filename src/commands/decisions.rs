//! `upshift retry`, `skip`, `approve`, `abort` and `rollback`.

use std::sync::Arc;

use upshift_journal::{Decision, RunId};

use crate::app::Workspace;
use crate::app::decisions::{Recorded, StepDecision, decide_run, decide_step};
use crate::app::run::{self, Session};
use crate::error::{Error, Result, code};
use crate::ui::Ui;

use super::{exit_code, journal_flag, report_exit};

/// Says that a decision waits for the live engine.
fn say_queued(run: RunId, holder_pid: Option<u32>) {
    eprintln!(
        "run {run} is live in {}; the decision is queued and the engine journals it within a second",
        holder_pid
            .map(|p| format!("process {p}"))
            .unwrap_or_else(|| "another process".into())
    );
}

/// Says that a decision is journaled and how the run continues.
pub fn say_journaled(run: RunId, ws: &Workspace) {
    eprintln!(
        "journaled. Continue the run with: upshift resume {run}{}",
        journal_flag(ws.dir())
    );
}

/// `upshift retry|skip|approve RUN STEP [--reason ...]`.
pub fn step(
    ws: &Workspace,
    run: &str,
    step: &str,
    what: StepDecision,
    reason: String,
) -> Result<u8> {
    if what == StepDecision::Skip && reason.trim().is_empty() {
        return Err(Error::usage(
            "skip needs --reason \"...\": the journal keeps why a step was not run",
        ));
    }
    let (run, recorded) = decide_step(ws, run, step, what, reason)?;
    match recorded {
        Recorded::Journaled(_) => say_journaled(run, ws),
        Recorded::Queued { holder_pid } => say_queued(run, holder_pid),
    }
    Ok(code::OK)
}

/// `upshift abort|rollback RUN [--reason ...]`; a rollback runs at once
/// when no engine holds the journal.
pub fn whole_run(
    ws: &Workspace,
    run: &str,
    decision: Decision,
    reason: String,
    concurrency: Option<usize>,
) -> Result<u8> {
    let is_rollback = decision == Decision::Rollback;
    let (run, recorded) = decide_run(ws, run, decision, reason)?;
    let done = match recorded {
        Recorded::Queued { holder_pid } => {
            say_queued(run, holder_pid);
            return Ok(code::OK);
        }
        Recorded::Journaled(done) => *done,
    };
    if !is_rollback {
        eprintln!("run {run} aborted");
        // Steps an earlier engine left running on their hosts are stopped.
        for line in run::abort_remote(&done.state, "the run was aborted by an operator")? {
            eprintln!("  {line}");
        }
        return Ok(code::FAILED);
    }
    let session = Session {
        concurrency,
        observer: Arc::new(Ui::new(false)),
        ..Session::default()
    };
    let exit = run::rollback(ws, run, done.journal, &done.state, &done.history, &session)?;
    report_exit(&exit, run, ws.dir());
    Ok(exit_code(&exit))
}
