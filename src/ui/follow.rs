//! `upshift status --follow` on the terminal: per-step progress bars while
//! a [`Follower`] reads a live run (plain lines when stderr is not a
//! terminal).

use std::collections::BTreeMap;
use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::error::Result;
use crate::plan::Plan;
use crate::report::status_json;
use crate::support::follow::Follower;

/// What a follower shows of a step; a line is printed when it changes.
type StepSig = (
    &'static str,
    u32,
    Option<u64>,
    Option<u64>,
    Option<&'static str>,
);

/// Shows the followed run's steps on stderr until the run is over or no
/// engine works on it. Returns the plan the run pinned (if it parses), for
/// the final status.
pub fn progress(f: &mut Follower) -> Result<Option<Plan>> {
    let tty = std::io::stderr().is_terminal();
    let multi = MultiProgress::with_draw_target(if tty {
        ProgressDrawTarget::stderr_with_hz(4)
    } else {
        ProgressDrawTarget::hidden()
    });
    let header = multi.add(ProgressBar::new_spinner());
    header.set_style(ProgressStyle::with_template("{spinner} {wide_msg}").expect("template"));
    let bar_style =
        ProgressStyle::with_template("{prefix:<18!} [{bar:20}] {pos:>4}/{len:<4} {wide_msg}")
            .expect("template")
            .progress_chars("=> ");
    let mut bars: BTreeMap<String, ProgressBar> = BTreeMap::new();
    let mut last: BTreeMap<String, StepSig> = BTreeMap::new();
    let mut plan_hash = String::new();
    let mut plan = None;
    f.follow(|_, state, live| {
        if state.plan_hash != plan_hash {
            plan_hash = state.plan_hash.clone();
            plan = crate::support::pinned_plan(state).ok();
        }
        let doc = status_json(state, plan.as_ref(), live);
        let head = format!(
            "run {} — plan \"{}\" — {} — {} events",
            doc.run, doc.plan, doc.state, doc.events
        );
        if tty {
            header.set_message(head);
            header.tick();
        }
        // Plan order, then any step only the events know.
        let mut ids: Vec<&String> = plan
            .as_ref()
            .map(|p| {
                p.order
                    .iter()
                    .filter(|id| doc.steps.contains_key(*id))
                    .collect()
            })
            .unwrap_or_default();
        for id in doc.steps.keys() {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        for id in ids {
            let s = &doc.steps[id];
            let sig: StepSig = (
                s.state,
                s.attempts,
                s.done,
                s.total,
                s.compensation.as_ref().map(crate::report::comp_word),
            );
            let mut msg = s.state.to_string();
            if s.attempts > 1 {
                msg.push_str(&format!(" (attempt {})", s.attempts));
            }
            if let Some(c) = &sig.4 {
                msg.push_str(&format!(" compensation {c}"));
            }
            if let Some(e) = &s.error
                && s.state != "succeeded"
            {
                msg.push_str(&format!(" — {}", e.lines().next().unwrap_or_default()));
            }
            let (pos, len) = match (s.done, s.total) {
                (Some(d), Some(t)) if t > 0 => (d, t),
                _ => (u64::from(matches!(s.state, "succeeded" | "skipped")), 1),
            };
            if tty {
                let bar = bars.entry(id.clone()).or_insert_with(|| {
                    let b = multi.add(ProgressBar::new(len));
                    b.set_style(bar_style.clone());
                    b.set_prefix(id.clone());
                    b
                });
                bar.set_length(len);
                bar.set_position(pos);
                bar.set_message(msg.clone());
            } else if last.get(id) != Some(&sig) {
                let counts = match (s.done, s.total) {
                    (Some(d), Some(t)) => format!(" {d}/{t}"),
                    _ => String::new(),
                };
                eprintln!(
                    "{} {id} {msg}{counts}",
                    chrono::Utc::now().format("%H:%M:%S%.3f")
                );
            }
            last.insert(id.clone(), sig);
        }
    })?;
    for b in bars.values() {
        b.abandon();
    }
    header.finish_and_clear();
    let _ = multi.clear();
    Ok(plan)
}
