//! `upshift status` (and `--follow`), `upshift runs`, `upshift log` (and
//! `--follow`).

use std::io::Write;
use std::ops::ControlFlow;

use crate::app::Workspace;
use crate::app::next;
use crate::app::workspace::{fold_run, pick_run, pinned_plan};
use crate::error::{Error, Result, code};
use crate::report::{self, log_line, status_json, status_text, status_word};
use crate::state::{RunState, RunStatus};
use crate::support::follow::Follower;

/// `upshift status [RUN] [--json] [--follow]`.
pub fn status(ws: &Workspace, run: Option<&str>, json: bool, follow: bool) -> Result<u8> {
    if follow {
        return status_follow(ws, run);
    }
    let live = ws.live_pid();
    let j = ws.open_reader()?;
    let run = pick_run(&j, run, false)?;
    let state = fold_run(&j, run)?;
    let plan = pinned_plan(&state).ok();
    let mut doc = status_json(
        &state,
        plan.as_ref(),
        live.is_some() && state.outcome.is_none(),
    );
    doc.paused = doc.paused.map(|p| next::complete(&p, ws.dir()));
    super::print_doc(&doc, json, status_text);
    Ok(code::OK)
}

/// `upshift runs`: every run of the journal, oldest first.
pub fn runs(ws: &Workspace) -> Result<u8> {
    let j = ws.open_reader()?;
    for run in j.runs()? {
        let (events, err) = j.read_run_salvage(run);
        let st = RunState::from_events(&events);
        println!(
            "{run}  {:<11}  {}  {}  {} events{}",
            report::status_word(st.status(false)),
            st.started_at
                .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                .unwrap_or_default(),
            st.plan_name,
            st.events,
            if err.is_some() { " (damaged)" } else { "" }
        );
    }
    Ok(code::OK)
}

/// `upshift log [RUN] [--follow]`: every event, one per line.
pub fn log(ws: &Workspace, run: Option<&str>, follow: bool) -> Result<u8> {
    if follow {
        return log_follow(ws, run);
    }
    let j = ws.open_reader()?;
    let run = pick_run(&j, run, false)?;
    let mut out = std::io::stdout().lock();
    let r = j.scan(run, 0, &mut |env| {
        if writeln!(out, "{}", log_line(&env)).is_err() {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    r.map_err(|e| {
        Error::from(e).with_hint("the events above are intact; nothing after the damage is shown")
    })?;
    Ok(code::OK)
}

/// How a followed run stands when the follow ends, in words, with the
/// command that continues it.
fn end_words(state: &RunState, dir: &std::path::Path) -> String {
    let run = state.run.map(|r| r.to_string()).unwrap_or_default();
    match state.status(false) {
        RunStatus::Paused => format!(
            "paused: {}",
            next::complete(&state.paused.clone().unwrap_or_default(), dir).replace('\n', "\n  ")
        ),
        RunStatus::Interrupted => format!(
            "interrupted (no engine works on it; `{}` continues)",
            next::command(dir, &format!("resume {run}"))
        ),
        s => status_word(s).to_string(),
    }
}

/// The exit code of a followed run, as the run's own would be.
fn follow_exit_code(state: &RunState) -> u8 {
    match state.status(false) {
        RunStatus::Succeeded => code::OK,
        RunStatus::Failed | RunStatus::Aborted | RunStatus::RolledBack => code::FAILED,
        RunStatus::Paused => code::PAUSED,
        RunStatus::Interrupted | RunStatus::Running => code::INTERRUPTED,
    }
}

/// `upshift log RUN --follow`: every event, then each new one as it is
/// journaled. Ends (exit 0) when the run finishes, pauses or is interrupted.
fn log_follow(ws: &Workspace, run: Option<&str>) -> Result<u8> {
    let mut f = Follower::open(run, ws)?;
    let mut broken = false;
    f.follow(|new, _, _| {
        if broken {
            return;
        }
        let mut out = std::io::stdout().lock();
        for e in new {
            if writeln!(out, "{}", log_line(e)).is_err() {
                broken = true;
                return;
            }
        }
        // Each batch reaches a pipe at once, not when the buffer fills.
        if out.flush().is_err() {
            broken = true;
        }
    })?;
    eprintln!(
        "run {} {} — end of follow",
        f.run,
        end_words(&f.state, ws.dir())
    );
    Ok(code::OK)
}

/// `upshift status RUN --follow`: what runs, waits and failed (see
/// [`crate::ui::follow`]) until the run is over or no engine works on it;
/// then the final status on stdout. Started while no engine works on the
/// run (before `upshift resume`), it waits for one.
fn status_follow(ws: &Workspace, run: Option<&str>) -> Result<u8> {
    let mut f = Follower::open(run, ws)?;
    let waited = f.wait_for_engine(|state| {
        let run = state.run.map(|r| r.to_string()).unwrap_or_default();
        eprintln!(
            "run {run} is {}: no engine works on it. Waiting for one — continue it with `{}` (Ctrl-C stops watching)",
            status_word(state.status(false)),
            next::command(ws.dir(), &format!("resume {run}"))
        );
    })?;
    if waited {
        eprintln!(
            "run {}: {} — following",
            f.run,
            match f.state.outcome {
                Some(o) => format!("ended {}", crate::report::outcome_word(o)),
                None => "an engine took it up".to_string(),
            }
        );
    }
    let plan = crate::ui::follow::progress(&mut f, ws.dir())?;
    let mut doc = status_json(&f.state, plan.as_ref(), false);
    doc.paused = doc.paused.map(|p| next::complete(&p, ws.dir()));
    print!("{}", status_text(&doc));
    eprintln!(
        "run {} {} — end of follow",
        f.run,
        end_words(&f.state, ws.dir())
    );
    Ok(follow_exit_code(&f.state))
}
