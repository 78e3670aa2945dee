//! `upshift status --follow`: what an operator watching a live run from a
//! second terminal needs, for a plan of 50 steps as for one of 3.
//!
//! On a terminal, one block redrawn in place: the run's line; each
//! **running** step with its full name, a bar, its count and an ETA (the
//! step's own "about N left" when its progress says one, else estimated
//! from its rate); each **waiting** step with its instructions and the
//! command that approves it; each failed step with its error and the retry
//! command; and one line for the rest (so many succeeded, pending, ...).
//! Without a terminal, lines for changes only: a step's state or count,
//! with the same instructions and commands, and the run's own pauses,
//! reboots, resumes and end.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;

use chrono::Utc;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use upshift_journal::{Envelope, Event};

use crate::app::next;
use crate::error::Result;
use crate::plan::Plan;
use crate::report::{duration_text, event_line};
use crate::state::{RunState, StepStatus};
use crate::support::follow::Follower;

/// Width of the drawn bar, in characters.
const BAR_CHARS: usize = 24;

/// What a step shows; a line is printed (plain output) when it changes.
type StepSig = (StepStatus, u32, u64, u64);

/// Steps in plan order, then any only the events know.
fn step_order<'a>(plan: Option<&'a Plan>, state: &'a RunState) -> Vec<&'a str> {
    let mut ids: Vec<&str> = plan
        .map(|p| p.order.iter().map(String::as_str).collect())
        .unwrap_or_default();
    for id in state.steps.keys() {
        if plan.is_none_or(|p| !p.steps.contains_key(id)) {
            ids.push(id);
        }
    }
    ids
}

/// `[=======>        ]`.
fn bar(done: u64, total: u64) -> String {
    let filled = if total == 0 {
        0
    } else {
        ((done.min(total) as f64 / total as f64) * BAR_CHARS as f64).round() as usize
    };
    let mut s = String::with_capacity(BAR_CHARS + 2);
    s.push('[');
    for i in 0..BAR_CHARS {
        s.push(if i < filled {
            '='
        } else if i == filled && filled > 0 && done < total {
            '>'
        } else {
            ' '
        });
    }
    s.push(']');
    s
}

/// The ETA of a running step: its own words when its progress says how
/// long is left ("about 4m left"), else from its rate so far.
fn eta(state: &RunState, id: &str, message: Option<&str>) -> Option<String> {
    if let Some(m) = message
        && m.contains(" left")
    {
        return Some(m.to_string());
    }
    let st = state.step(id);
    let started = st.started_at?;
    if st.done == 0 || st.total == 0 || st.done >= st.total {
        return message.map(str::to_string);
    }
    let spent = (Utc::now() - started).to_std().ok()?;
    let left = spent.mul_f64((st.total - st.done) as f64 / st.done as f64);
    let mut s = format!("about {} left (estimated)", duration_text(left));
    if let Some(m) = message.filter(|m| !m.is_empty()) {
        s = format!("{m}; {s}");
    }
    Some(s)
}

/// The instructions of a waiting step, each line indented.
fn indented(text: &str, by: &str) -> String {
    text.trim_end()
        .lines()
        .map(|l| format!("{by}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One line for everything that is neither running, waiting nor failed.
fn rest_line(state: &RunState, ids: &[&str]) -> String {
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    for id in ids {
        let word = match state.step(id).status {
            StepStatus::Succeeded => "succeeded",
            StepStatus::Skipped => "skipped",
            StepStatus::Pending => "pending",
            StepStatus::Interrupted => "interrupted",
            StepStatus::RetryWait => "waiting to retry",
            StepStatus::Running | StepStatus::Waiting | StepStatus::Failed => continue,
        };
        *counts.entry(word).or_default() += 1;
    }
    if counts.is_empty() {
        return String::new();
    }
    let order = [
        "succeeded",
        "skipped",
        "waiting to retry",
        "interrupted",
        "pending",
    ];
    let parts: Vec<String> = order
        .iter()
        .filter_map(|w| counts.get(w).map(|n| format!("{n} {w}")))
        .collect();
    format!("the other steps: {}", parts.join(", "))
}

/// The terminal view of the run, as lines.
fn screen(
    state: &RunState,
    plan: Option<&Plan>,
    live: bool,
    messages: &BTreeMap<String, String>,
    dir: &Path,
) -> String {
    let run = state.run.map(|r| r.to_string()).unwrap_or_default();
    let ids = step_order(plan, state);
    let done = ids
        .iter()
        .filter(|id| {
            matches!(
                state.step(id).status,
                StepStatus::Succeeded | StepStatus::Skipped
            )
        })
        .count();
    let mut out = format!(
        "run {run} — plan \"{}\" — {} — {done} of {} steps done — {} events",
        state.plan_name,
        crate::report::status_word(state.status(live)),
        ids.len(),
        state.events
    );
    let running: Vec<&str> = ids
        .iter()
        .copied()
        .filter(|id| state.step(id).status == StepStatus::Running)
        .collect();
    if !running.is_empty() {
        let w = running
            .iter()
            .map(|id| id.chars().count())
            .max()
            .unwrap_or(0);
        out.push_str("\nrunning:");
        for id in &running {
            let st = state.step(id);
            let since = st
                .started_at
                .and_then(|t| (Utc::now() - t).to_std().ok())
                .map(|d| format!(" for {}", duration_text(d)))
                .unwrap_or_default();
            let attempt = if st.attempts > 1 && !st.approved {
                format!(" (attempt {})", st.attempts)
            } else {
                String::new()
            };
            if st.total > 0 {
                out.push_str(&format!(
                    "\n  {id:w$}  {} {}/{}{attempt}{}",
                    bar(st.done, st.total),
                    st.done,
                    st.total,
                    eta(state, id, messages.get(*id).map(String::as_str))
                        .map(|e| format!("  {e}"))
                        .unwrap_or_default()
                ));
            } else {
                out.push_str(&format!(
                    "\n  {id:w$}  running{since}{attempt}{}",
                    messages
                        .get(*id)
                        .filter(|m| !m.is_empty())
                        .map(|m| format!("  {m}"))
                        .unwrap_or_default()
                ));
            }
        }
    }
    for id in &ids {
        let st = state.step(id);
        match st.status {
            StepStatus::Waiting => {
                out.push_str(&format!(
                    "\nwaiting for an operator: {id}\n{}\n    approve: {}",
                    indented(
                        &next::complete(st.waiting.as_deref().unwrap_or_default(), dir),
                        "    "
                    ),
                    next::command(dir, &format!("approve {run} {id}"))
                ));
            }
            StepStatus::Failed => {
                out.push_str(&format!(
                    "\nfailed: {id} (attempt {})\n{}\n    retry: {}",
                    st.attempts,
                    indented(st.error.as_deref().unwrap_or_default(), "    "),
                    next::command(dir, &format!("retry {run} {id}"))
                ));
            }
            _ => {}
        }
    }
    let rest = rest_line(state, &ids);
    if !rest.is_empty() {
        out.push('\n');
        out.push_str(&rest);
    }
    out
}

/// A plain line, with the time.
fn say(text: &str) {
    eprintln!("{} {text}", Utc::now().format("%H:%M:%S%.3f"));
}

/// Plain output: the lines for what changed with these events.
fn changes(
    new: &[Envelope],
    state: &RunState,
    plan: Option<&Plan>,
    last: &mut BTreeMap<String, StepSig>,
    first: bool,
    dir: &Path,
) {
    let run = state.run.map(|r| r.to_string()).unwrap_or_default();
    // The run's own events: pauses, reboots, resumes, the end.
    for env in new {
        match &env.event {
            Event::RunPaused { reason } => {
                say(&format!("run paused: {}", next::complete(reason, dir)))
            }
            Event::RunInterrupted { reason } => {
                say(&format!("run stopped: {}", next::complete(reason, dir)))
            }
            Event::RebootRequested { .. }
            | Event::RunResumed { .. }
            | Event::RunFinished { .. }
            | Event::RollbackStarted { .. }
                if !first =>
            {
                say(&event_line(&env.event))
            }
            _ => {}
        }
    }
    let ids = step_order(plan, state);
    if first {
        let rest = rest_line(state, &ids);
        if !rest.is_empty() {
            say(&format!("run {run}: {rest}"));
        }
    }
    for id in ids {
        let st = state.step(id);
        let sig: StepSig = (st.status, st.attempts, st.done, st.total);
        let before = last.insert(id.to_string(), sig);
        if before == Some(sig) {
            continue;
        }
        // The first time, only what is under way or needs someone.
        if first
            && !matches!(
                st.status,
                StepStatus::Running | StepStatus::Waiting | StepStatus::Failed
            )
        {
            continue;
        }
        if before.is_none() && !first && st.status == StepStatus::Pending {
            continue;
        }
        let word = crate::report::step_word(&st.status);
        let counts = if st.total > 0 {
            format!(" {}/{}", st.done, st.total)
        } else {
            String::new()
        };
        match st.status {
            StepStatus::Waiting => say(&format!(
                "{id} waiting for an operator:\n{}\n    approve: {}",
                indented(
                    &next::complete(st.waiting.as_deref().unwrap_or_default(), dir),
                    "    "
                ),
                next::command(dir, &format!("approve {run} {id}"))
            )),
            StepStatus::Failed => say(&format!(
                "{id} failed (attempt {}): {}\n    retry: {}",
                st.attempts,
                st.error.as_deref().unwrap_or_default(),
                next::command(dir, &format!("retry {run} {id}"))
            )),
            StepStatus::Running if st.attempts > 1 && !st.approved => {
                say(&format!("{id} running (attempt {}){counts}", st.attempts))
            }
            _ => say(&format!("{id} {word}{counts}")),
        }
    }
}

/// Shows the followed run on stderr until the run is over or no engine
/// works on it. Returns the plan the run pinned (if it parses), for the
/// final status. `dir` is the journal, for the commands shown.
pub fn progress(f: &mut Follower, dir: &Path) -> Result<Option<Plan>> {
    let tty = std::io::stderr().is_terminal();
    let view = ProgressBar::with_draw_target(
        None,
        if tty {
            ProgressDrawTarget::stderr_with_hz(4)
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    view.set_style(ProgressStyle::with_template("{msg}").expect("template"));
    let mut last: BTreeMap<String, StepSig> = BTreeMap::new();
    let mut messages: BTreeMap<String, String> = BTreeMap::new();
    let mut plan_hash = String::new();
    let mut plan = None;
    let mut first = true;
    f.follow(|new, state, live| {
        if state.plan_hash != plan_hash {
            plan_hash = state.plan_hash.clone();
            plan = crate::support::pinned_plan(state).ok();
        }
        for env in new {
            match &env.event {
                Event::StepProgress { step, message, .. } => {
                    messages.insert(step.clone(), message.clone());
                }
                Event::StepStarted { step, .. } => {
                    messages.remove(step);
                }
                _ => {}
            }
        }
        if tty {
            view.set_message(screen(state, plan.as_ref(), live, &messages, dir));
            view.tick();
        } else {
            changes(new, state, plan.as_ref(), &mut last, first, dir);
        }
        first = false;
    })?;
    view.finish_and_clear();
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_fill_in_proportion() {
        assert_eq!(bar(0, 10), format!("[{}]", " ".repeat(BAR_CHARS)));
        assert_eq!(bar(10, 10), format!("[{}]", "=".repeat(BAR_CHARS)));
        assert_eq!(
            bar(5, 10),
            format!("[{}>{}]", "=".repeat(12), " ".repeat(11))
        );
    }
}
