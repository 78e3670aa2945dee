//! `upshift replay`: a run's state rebuilt event by event with
//! [`RunState`], as it was after any event (`--at SEQ`), and what
//! `upshift resume` would do next (`--explain`), asked of [`decide`] —
//! the same pure functions the engine uses, so the answer is the engine's.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use upshift_journal::{Actor, Envelope, Event, Outcome};

use crate::decide::{End, decide};
use crate::plan::Plan;
use crate::report::{comp_word, log_line, outcome_word, status_word, step_word};
use crate::state::{CompStatus, RunState, StepStatus};

/// A checkpoint as shown: its size, and its text if it is short text.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CheckpointView {
    /// Bytes.
    pub bytes: usize,
    /// The bytes as text, if they are short printable UTF-8.
    pub text: Option<String>,
    /// The bytes in hex (first 64).
    pub hex: String,
}

impl CheckpointView {
    fn of(data: &[u8]) -> CheckpointView {
        CheckpointView {
            bytes: data.len(),
            text: std::str::from_utf8(data)
                .ok()
                .filter(|s| s.len() <= 200 && s.chars().all(|c| !c.is_control() || c == '\n'))
                .map(str::to_string),
            hex: hex::encode(&data[..data.len().min(64)]),
        }
    }
}

/// The state after one event, as `replay --at SEQ --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct StateView {
    /// The event's seq.
    pub seq: u64,
    /// Its time.
    pub time: DateTime<Utc>,
    /// The event as a log line.
    pub event: String,
    /// Status word of the run at that point (no engine is live in a replay).
    pub status: &'static str,
    /// The folded state.
    pub state: RunState,
    /// Each step's last checkpoint (not part of `state`'s JSON).
    pub checkpoints: BTreeMap<String, CheckpointView>,
}

/// The state right after event `seq` (folding events 0..=seq).
pub fn state_at(events: &[Envelope], seq: u64) -> Option<StateView> {
    let idx = usize::try_from(seq).ok().filter(|i| *i < events.len())?;
    let state = RunState::from_events(&events[..=idx]);
    // Before the last event, an engine was at work unless the run had
    // ended, paused or been interrupted at that point.
    let live = idx + 1 < events.len()
        && state.outcome.is_none()
        && state.paused.is_none()
        && !state.interrupted;
    let mut v = view(&events[idx], state);
    v.status = status_word(v.state.status(live));
    Some(v)
}

/// A state view of `state`, folded up to and including `last`.
pub fn view(last: &Envelope, state: RunState) -> StateView {
    let checkpoints = state
        .steps
        .iter()
        .filter_map(|(id, st)| {
            st.checkpoint
                .as_ref()
                .map(|c| (id.clone(), CheckpointView::of(c)))
        })
        .collect();
    StateView {
        seq: last.seq,
        time: last.time,
        event: log_line(last),
        status: status_word(state.status(false)),
        state,
        checkpoints,
    }
}

/// `replay` text: every step's state, attempts, checkpoint, outputs.
pub fn view_text(v: &StateView, plan_order: &[String]) -> String {
    let s = &v.state;
    let mut out = format!(
        "run    {}\nplan   {} ({})\nafter  {}\nstate  {}{}\n",
        s.run.map(|r| r.to_string()).unwrap_or_default(),
        s.plan_name,
        super::short(&s.plan_hash, 12),
        v.event.trim_start(),
        v.status,
        if s.rolling_back {
            " (rolling back)"
        } else {
            ""
        }
    );
    if let Some(p) = &s.paused {
        out.push_str(&format!("why    {}\n", p.replace('\n', "\n       ")));
    }
    if let Some(r) = &s.reboot_pending {
        out.push_str(&format!("reboot pending, asked by {r}\n"));
    }
    out.push_str("\nsteps:\n");
    let mut ids: Vec<String> = plan_order.to_vec();
    for k in s.steps.keys() {
        if !ids.contains(k) {
            ids.push(k.clone());
        }
    }
    let w = ids.iter().map(|i| i.len()).max().unwrap_or(4).max(4);
    for id in &ids {
        let st = s.step(id);
        let mut line = format!("  {id:w$}  {:<11}", step_word(&st.status));
        if st.attempts > 0 {
            line.push_str(&format!(" attempts {}", st.attempts));
        }
        if st.total > 0 || st.done > 0 {
            line.push_str(&format!(" {}/{}", st.done, st.total));
        }
        if st.compensation != CompStatus::None {
            line.push_str(&format!(" compensation {}", comp_word(&st.compensation)));
        }
        out.push_str(line.trim_end());
        out.push('\n');
        let pad = " ".repeat(w + 4);
        if let Some(c) = v.checkpoints.get(id) {
            out.push_str(&format!(
                "{pad}checkpoint {} bytes{}\n",
                c.bytes,
                c.text
                    .as_ref()
                    .map(|t| format!(": {t:?}"))
                    .unwrap_or_else(|| format!(" (hex {})", c.hex))
            ));
        }
        for (k, val) in &st.outputs {
            out.push_str(&format!("{pad}output {k} = {val:?}\n"));
        }
        if let Some(e) = &st.error
            && st.status != StepStatus::Succeeded
        {
            out.push_str(&format!("{pad}error: {}\n", e.replace('\n', "\n  ")));
        }
        if let Some(e) = &st.compensation_error {
            out.push_str(&format!("{pad}compensation error: {e}\n"));
        }
        if let Some(wr) = &st.waiting {
            out.push_str(&format!("{pad}waiting: {wr}\n"));
        }
    }
    if !s.decisions.is_empty() {
        out.push_str("\ndecisions:\n");
        for d in &s.decisions {
            out.push_str(&format!(
                "  seq {} {} {} by {}{}\n",
                d.seq,
                d.time.format("%Y-%m-%dT%H:%M:%SZ"),
                d.what,
                d.who,
                if d.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", d.reason)
                }
            ));
        }
    }
    out
}

/// Steps with a compensation ([`crate::decide::compensable`]), built with
/// placeholders for secret values.
pub fn compensable(plan: &Plan, state: &RunState) -> BTreeSet<String> {
    crate::decide::compensable(
        plan,
        state,
        &upshift_steps::registry(),
        &crate::decide::placeholder_secrets(plan),
    )
}

/// One thing resume would do to a step now.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Action {
    /// Step id.
    pub step: String,
    /// `rerun` (was interrupted), `retry` (failed, retry due or decided),
    /// `start` (never ran), `compensate`, `wait` (for an operator),
    /// `retry_later` (backoff not over).
    pub action: String,
    /// The attempt number it would be.
    pub attempt: u32,
    /// From a checkpoint: units done/total and its size.
    pub checkpoint: Option<String>,
    /// More words.
    pub note: String,
}

/// What `upshift resume` would do, from the last event.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// Run id.
    pub run: String,
    /// Seq of the last event.
    pub last_seq: u64,
    /// Status word now.
    pub status: &'static str,
    /// The run already ended this way: resume does nothing.
    pub ended: Option<String>,
    /// The pinned plan does not validate here (then nothing is decided).
    pub plan_error: Option<String>,
    /// What happens right after `run.resumed` is journaled.
    pub now: Vec<Action>,
    /// Steps that are done and are not run again.
    pub done: Vec<String>,
    /// Steps an operator skipped.
    pub skipped: Vec<String>,
    /// If every step from here on succeeds: the next waves of steps.
    pub then: Vec<Vec<String>>,
    /// Where it stops (or ends) if nothing else happens, in words.
    pub end: Option<String>,
    /// Whether the run is in a rollback already.
    pub rolling_back: bool,
    /// What `upshift rollback` would compensate, wave by wave (reverse
    /// dependency order).
    pub rollback: Vec<Vec<String>>,
    /// Completed steps that have no compensation (left as they are).
    pub not_compensable: Vec<String>,
}

fn end_text(e: &End) -> String {
    match e {
        End::Finish(o) => format!("the run ends {}", outcome_word(*o)),
        End::Pause(r) => format!("the run pauses: {r}"),
        End::StartRollback(r) => format!("a rollback starts: {r}"),
    }
}

fn resumed() -> Event {
    Event::RunResumed {
        actor: Actor {
            user: "replay".into(),
            host: "replay".into(),
            pid: 0,
        },
        engine_version: env!("CARGO_PKG_VERSION").into(),
    }
}

fn rollback_waves(
    plan: &Plan,
    state: &RunState,
    time: DateTime<Utc>,
    seq: u64,
) -> (Vec<Vec<String>>, Vec<String>) {
    let mut sim = state.clone();
    if !sim.rolling_back {
        sim.apply_event(
            &Event::RollbackStarted {
                reason: "replay --explain".into(),
            },
            time,
            seq,
        );
    }
    let comp = compensable(plan, &sim);
    let not: Vec<String> = plan
        .order
        .iter()
        .filter(|id| sim.step(id).status == StepStatus::Succeeded && !comp.contains(*id))
        .cloned()
        .collect();
    let mut waves = Vec::new();
    for _ in 0..=plan.order.len() {
        let next = decide(plan, &sim, time, &comp);
        if next.compensate.is_empty() {
            break;
        }
        for id in &next.compensate {
            sim.apply_event(
                &Event::CompensationSucceeded {
                    step: id.clone(),
                    output_tail: String::new(),
                },
                time,
                seq,
            );
        }
        waves.push(next.compensate);
    }
    (waves, not)
}

/// Explains what `upshift resume` would do next from the last event, and
/// what a rollback would compensate. Uses `now` for retry backoffs.
pub fn explain(events: &[Envelope], now: DateTime<Utc>) -> Explanation {
    let state = RunState::from_events(events);
    let last_seq = state.last_seq.unwrap_or(0);
    let time = state.last_time.unwrap_or(now);
    let mut ex = Explanation {
        run: state.run.map(|r| r.to_string()).unwrap_or_default(),
        last_seq,
        status: status_word(state.status(false)),
        ended: state.outcome.map(|o| outcome_word(o).to_string()),
        plan_error: None,
        now: Vec::new(),
        done: Vec::new(),
        skipped: Vec::new(),
        then: Vec::new(),
        end: None,
        rolling_back: state.rolling_back,
        rollback: Vec::new(),
        not_compensable: Vec::new(),
    };
    let plan = match super::pinned_plan(&state) {
        Ok(p) => p,
        Err(e) => {
            ex.plan_error = Some(e);
            return ex;
        }
    };
    for id in &plan.order {
        match state.step(id).status {
            StepStatus::Succeeded => ex.done.push(id.clone()),
            StepStatus::Skipped => ex.skipped.push(id.clone()),
            _ => {}
        }
    }
    // Resume and rollback journal run.resumed first: steps that were
    // running become interrupted. Then the engine asks decide().
    let mut st = state.clone();
    st.apply_event(&resumed(), time, last_seq + 1);
    if state.outcome.is_none() || state.outcome == Some(Outcome::Failed) {
        let (waves, not) = rollback_waves(&plan, &st, time, last_seq + 1);
        ex.rollback = waves;
        ex.not_compensable = not;
    }
    if state.outcome.is_some() {
        return ex;
    }
    let comp = compensable(&plan, &st);
    let next = decide(&plan, &st, now, &comp);
    for id in &next.start {
        let s = st.step(id);
        let (action, note) = match s.status {
            StepStatus::Interrupted => (
                "rerun",
                "was running when the engine stopped; runs again (steps are idempotent or reconcile first)",
            ),
            StepStatus::RetryWait => ("retry", "failed; its retry is due"),
            StepStatus::Pending if s.attempts > 0 => {
                ("retry", "an operator decided to run it again")
            }
            _ => ("start", "never ran; its dependencies are done"),
        };
        ex.now.push(Action {
            step: id.clone(),
            action: action.into(),
            attempt: s.attempts + 1,
            checkpoint: s
                .checkpoint
                .as_ref()
                .map(|c| format!("{}/{} ({} bytes)", s.done, s.total, c.len())),
            note: note.into(),
        });
    }
    for (id, reason) in &next.wait {
        ex.now.push(Action {
            step: id.clone(),
            action: "wait".into(),
            attempt: st.step(id).attempts,
            checkpoint: None,
            note: reason.clone(),
        });
    }
    for id in &next.compensate {
        ex.now.push(Action {
            step: id.clone(),
            action: "compensate".into(),
            attempt: 0,
            checkpoint: None,
            note: "rollback in progress: reverse dependency order".into(),
        });
    }
    if let Some(t) = next.wake_at {
        for id in &plan.order {
            let s = st.step(id);
            if s.status == StepStatus::RetryWait && s.retry_at.is_some_and(|r| r > now) {
                ex.now.push(Action {
                    step: id.clone(),
                    action: "retry_later".into(),
                    attempt: s.attempts + 1,
                    checkpoint: None,
                    note: format!("backoff until {}", t.to_rfc3339()),
                });
            }
        }
    }
    // Then: assume every step started from here on succeeds.
    let mut sim = st.clone();
    let far = now + chrono::Duration::days(3650);
    let mut wave = next.start.clone();
    let mut end = next.end.clone();
    for round in 0..=plan.order.len() {
        if wave.is_empty() {
            break;
        }
        for id in &wave {
            let attempt = sim.step(id).attempts + 1;
            // A manual step nobody approved yet waits for an operator: the
            // run does not go past it by itself.
            let manual = plan.steps.get(id).is_some_and(|d| d.body.kind == "manual");
            if manual && !sim.step(id).approved {
                for e in [
                    Event::StepStarted {
                        step: id.clone(),
                        attempt,
                        resumed_from_checkpoint: false,
                    },
                    Event::StepWaiting {
                        step: id.clone(),
                        reason: "a manual step: it waits for an operator".into(),
                    },
                ] {
                    sim.apply_event(&e, time, 0);
                }
                continue;
            }
            sim.apply_event(
                &Event::StepStarted {
                    step: id.clone(),
                    attempt,
                    resumed_from_checkpoint: false,
                },
                time,
                0,
            );
            sim.apply_event(
                &Event::StepSucceeded {
                    step: id.clone(),
                    attempt,
                    outputs: Default::default(),
                    output_tail: String::new(),
                    reboot_required: false,
                },
                time,
                0,
            );
        }
        if round > 0 {
            ex.then.push(wave.clone());
        }
        let n = decide(&plan, &sim, far, &comp);
        wave = n.start;
        end = n.end;
        if !n.wait.is_empty() {
            end = Some(End::Pause(format!(
                "waiting for an operator: {}",
                n.wait
                    .iter()
                    .map(|(s, _)| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
            break;
        }
    }
    ex.end = end.as_ref().map(end_text);
    ex
}

/// `replay --explain` for people.
pub fn explain_text(ex: &Explanation) -> String {
    let mut out = format!("run {} — {} after seq {}\n", ex.run, ex.status, ex.last_seq);
    if let Some(e) = &ex.plan_error {
        out.push_str(&format!(
            "the pinned plan does not validate with this upshift, so nothing can be decided:\n{e}\n"
        ));
        return out;
    }
    if let Some(o) = &ex.ended {
        out.push_str(&format!(
            "the run already ended ({o}): `upshift resume` does nothing\n"
        ));
    } else {
        out.push_str("`upshift resume` would journal run.resumed, then:\n");
        if ex.now.is_empty() {
            out.push_str("  start nothing\n");
        }
        for a in &ex.now {
            let what = match a.action.as_str() {
                "rerun" => format!(
                    "re-run {} (attempt {}) {}",
                    a.step,
                    a.attempt,
                    a.checkpoint
                        .as_ref()
                        .map(|c| format!("from its checkpoint {c}"))
                        .unwrap_or_else(|| "from the start (no checkpoint)".into())
                ),
                "retry" => format!(
                    "retry {} (attempt {}){}",
                    a.step,
                    a.attempt,
                    a.checkpoint
                        .as_ref()
                        .map(|c| format!(" from its checkpoint {c}"))
                        .unwrap_or_default()
                ),
                "start" => format!("start {} (attempt {})", a.step, a.attempt),
                "wait" => format!("mark {} waiting for an operator", a.step),
                "compensate" => format!("compensate {}", a.step),
                "retry_later" => format!("retry {} (attempt {}) later", a.step, a.attempt),
                other => format!("{other} {}", a.step),
            };
            out.push_str(&format!("  {what}\n      {}\n", a.note));
        }
        if !ex.done.is_empty() {
            out.push_str(&format!(
                "  not run again (already succeeded): {}\n",
                ex.done.join(", ")
            ));
        }
        if !ex.skipped.is_empty() {
            out.push_str(&format!(
                "  not run (skipped by an operator): {}\n",
                ex.skipped.join(", ")
            ));
        }
        for (i, w) in ex.then.iter().enumerate() {
            if i == 0 {
                out.push_str("then, if those succeed:\n");
            }
            out.push_str(&format!("  {}\n", w.join(", ")));
        }
        if let Some(e) = &ex.end {
            out.push_str(&format!("and then {e}\n"));
        }
    }
    if !ex.rollback.is_empty() || !ex.not_compensable.is_empty() {
        out.push_str(&format!(
            "\n{} would compensate, in this order (reverse dependency order):\n",
            if ex.rolling_back {
                "the rollback in progress"
            } else {
                "`upshift rollback`"
            }
        ));
        if ex.rollback.is_empty() {
            out.push_str("  nothing\n");
        }
        for (i, w) in ex.rollback.iter().enumerate() {
            out.push_str(&format!("  {}. {}\n", i + 1, w.join(", ")));
        }
        if !ex.not_compensable.is_empty() {
            out.push_str(&format!(
                "  left as they are (no compensation): {}\n",
                ex.not_compensable.join(", ")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use upshift_journal::RunId;

    const PLAN: &str = r#"
name = "explain"
[steps.a]
kind = "sleep"
with = { duration = "0s" }
compensate = { kind = "sleep", with = { duration = "0s" } }
[steps.b]
kind = "foreach"
needs = ["a"]
with = { items = ["x", "y", "z"], program = "true" }
[steps.c]
kind = "sleep"
needs = ["a"]
with = { duration = "0s" }
[steps.d]
kind = "sleep"
needs = ["b", "c"]
with = { duration = "0s" }
"#;

    fn events(list: Vec<Event>) -> Vec<Envelope> {
        let run = RunId::new();
        let t = Utc::now();
        let mut all = vec![Event::RunStarted {
            plan_name: "explain".into(),
            plan_path: "/nonexistent/explain.toml".into(),
            plan_text: PLAN.into(),
            plan_hash: crate::plan::hash_text(PLAN),
            vars: Default::default(),
            engine_version: "0.1.0".into(),
            actor: Actor::default(),
        }];
        all.extend(list);
        all.into_iter()
            .enumerate()
            .map(|(i, event)| Envelope {
                run,
                seq: i as u64,
                time: t,
                event,
            })
            .collect()
    }

    fn started(s: &str) -> Event {
        Event::StepStarted {
            step: s.into(),
            attempt: 1,
            resumed_from_checkpoint: false,
        }
    }

    fn ok(s: &str) -> Event {
        Event::StepSucceeded {
            step: s.into(),
            attempt: 1,
            outputs: Default::default(),
            output_tail: String::new(),
            reboot_required: false,
        }
    }

    #[test]
    fn a_crash_mid_foreach_reruns_it_from_its_checkpoint_and_skips_done_steps() {
        let ev = events(vec![
            started("a"),
            ok("a"),
            started("b"),
            started("c"),
            Event::StepCheckpoint {
                step: "b".into(),
                data: b"2".to_vec(),
                done: 2,
                total: 3,
            },
            ok("c"),
        ]);
        let ex = explain(&ev, Utc::now());
        assert_eq!(ex.now.len(), 1, "{ex:?}");
        assert_eq!(ex.now[0].step, "b");
        assert_eq!(ex.now[0].action, "rerun");
        assert_eq!(ex.now[0].attempt, 2);
        assert_eq!(ex.now[0].checkpoint.as_deref(), Some("2/3 (1 bytes)"));
        assert_eq!(ex.done, vec!["a", "c"]);
        assert_eq!(ex.then, vec![vec!["d".to_string()]]);
        assert_eq!(ex.end.as_deref(), Some("the run ends succeeded"));
        // Only a has a compensation; c has none and is left.
        assert_eq!(ex.rollback, vec![vec!["a".to_string()]]);
        assert!(ex.not_compensable.contains(&"c".to_string()));
        let text = explain_text(&ex);
        assert!(
            text.contains("re-run b (attempt 2) from its checkpoint 2/3"),
            "{text}"
        );
        assert!(
            text.contains("not run again (already succeeded): a, c"),
            "{text}"
        );
    }

    #[test]
    fn state_at_folds_only_up_to_the_seq() {
        let ev = events(vec![started("a"), ok("a"), started("b")]);
        let v = state_at(&ev, 1).unwrap();
        assert_eq!(v.state.step("a").status, StepStatus::Running);
        let v = state_at(&ev, 2).unwrap();
        assert_eq!(v.state.step("a").status, StepStatus::Succeeded);
        assert!(state_at(&ev, 4).is_none());
        let text = view_text(&state_at(&ev, 3).unwrap(), &["a".into(), "b".into()]);
        assert!(text.contains("b     running     attempts 1"), "{text}");
    }

    #[test]
    fn an_ended_run_explains_that_resume_does_nothing() {
        let ev = events(vec![
            started("a"),
            ok("a"),
            Event::RunFinished {
                outcome: Outcome::Aborted,
            },
        ]);
        let ex = explain(&ev, Utc::now());
        assert_eq!(ex.ended.as_deref(), Some("aborted"));
        assert!(ex.now.is_empty());
        assert!(explain_text(&ex).contains("does nothing"));
    }
}
