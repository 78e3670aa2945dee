//! `upshift diff A B`: two runs of the same plan side by side — per step,
//! the outcome, attempts and time spent in each run, and the duration
//! ratio B/A; steps whose outcome or attempts differ are marked.

use std::collections::BTreeMap;

use serde::Serialize;

use super::timeline::{spans, step_totals};
use super::{Loaded, duration_text};
use crate::report::{comp_word, status_word, step_word};
use crate::state::{CompStatus, RunState};

/// One run's side of a step.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Side {
    /// Step state word (with the compensation, if any).
    pub state: String,
    /// Attempts started.
    pub attempts: u32,
    /// Time spent in attempts, ms.
    pub ms: i64,
}

/// One step in both runs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StepDiff {
    /// Step id.
    pub step: String,
    /// Run A (None: not in A's plan).
    pub a: Option<Side>,
    /// Run B.
    pub b: Option<Side>,
    /// Duration B/A (None when A spent no time).
    pub ratio: Option<f64>,
    /// Outcome or attempts differ (or the step is in one plan only).
    pub differs: bool,
}

/// A whole run in one line.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunSide {
    /// Run id.
    pub run: String,
    /// From where.
    pub origin: String,
    /// Plan name.
    pub plan: String,
    /// Plan hash.
    pub plan_hash: String,
    /// Status word.
    pub state: &'static str,
    /// Events.
    pub events: u64,
    /// Engine sessions.
    pub sessions: u32,
    /// First to last event, ms.
    pub wall_ms: i64,
    /// Operator decisions.
    pub decisions: usize,
}

/// The comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    /// Run A.
    pub a: RunSide,
    /// Run B.
    pub b: RunSide,
    /// Both pinned the same plan text.
    pub same_plan: bool,
    /// Every step of either plan, A's plan order first.
    pub steps: Vec<StepDiff>,
}

fn side(l: &Loaded) -> (RunSide, RunState, Vec<String>, BTreeMap<String, Side>) {
    let st = RunState::from_events(&l.events);
    let mut order = super::pinned_plan(&st).map(|p| p.order).unwrap_or_default();
    for k in st.steps.keys() {
        if !order.contains(k) {
            order.push(k.clone());
        }
    }
    let totals = step_totals(&spans(&l.events));
    let sides = order
        .iter()
        .map(|id| {
            let s = st.step(id);
            let mut state = step_word(&s.status).to_string();
            if s.compensation != CompStatus::None {
                state.push_str(&format!("+comp.{}", comp_word(&s.compensation)));
            }
            let ms = totals.get(id).map(|t| t.1.num_milliseconds()).unwrap_or(0);
            (
                id.clone(),
                Side {
                    state,
                    attempts: s.attempts,
                    ms,
                },
            )
        })
        .collect();
    let wall_ms = match (l.events.first(), l.events.last()) {
        (Some(a), Some(b)) => (b.time - a.time).num_milliseconds(),
        _ => 0,
    };
    let rs = RunSide {
        run: l.run.to_string(),
        origin: l.origin.describe(),
        plan: st.plan_name.clone(),
        plan_hash: st.plan_hash.clone(),
        state: status_word(st.status(false)),
        events: st.events,
        sessions: st.sessions,
        wall_ms,
        decisions: st.decisions.len(),
    };
    (rs, st, order, sides)
}

/// Compares two runs.
pub fn diff(a: &Loaded, b: &Loaded) -> Diff {
    let (ra, _, oa, sa) = side(a);
    let (rb, _, ob, sb) = side(b);
    let mut order = oa;
    for k in ob {
        if !order.contains(&k) {
            order.push(k);
        }
    }
    let steps = order
        .into_iter()
        .map(|id| {
            let a = sa.get(&id).cloned();
            let b = sb.get(&id).cloned();
            let differs = match (&a, &b) {
                (Some(x), Some(y)) => x.state != y.state || x.attempts != y.attempts,
                _ => true,
            };
            let ratio = match (&a, &b) {
                (Some(x), Some(y)) if x.ms > 0 => Some(y.ms as f64 / x.ms as f64),
                _ => None,
            };
            StepDiff {
                step: id,
                a,
                b,
                ratio,
                differs,
            }
        })
        .collect();
    Diff {
        same_plan: ra.plan_hash == rb.plan_hash,
        a: ra,
        b: rb,
        steps,
    }
}

fn ms_text(ms: i64) -> String {
    duration_text(chrono::Duration::milliseconds(ms))
}

/// `diff` for people.
pub fn diff_text(d: &Diff) -> String {
    let mut out = String::new();
    for (n, r) in [("A", &d.a), ("B", &d.b)] {
        out.push_str(&format!(
            "{n}  {}  {}  plan \"{}\" ({})  {} events, {} session(s), {} decision(s), {}  [{}]\n",
            r.run,
            r.state,
            r.plan,
            super::short(&r.plan_hash, 12),
            r.events,
            r.sessions,
            r.decisions,
            ms_text(r.wall_ms),
            r.origin
        ));
    }
    if !d.same_plan {
        out.push_str("note: the runs pinned different plan texts; steps are matched by id\n");
    }
    let w = d
        .steps
        .iter()
        .map(|s| s.step.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let cell = |s: &Option<Side>| match s {
        Some(s) => format!("{} ×{} {}", s.state, s.attempts, ms_text(s.ms)),
        None => "(not in plan)".into(),
    };
    let (ha, hb) = ("A: state ×attempts time", "B: state ×attempts time");
    let cw = d
        .steps
        .iter()
        .flat_map(|s| [cell(&s.a), cell(&s.b)])
        .chain([ha.to_string()])
        .map(|c| c.chars().count())
        .max()
        .unwrap_or(0);
    out.push_str(&format!(
        "\n  {:w$}  {ha:<cw$}  {hb:<cw$}  {:>8}\n",
        "step", "B/A"
    ));
    for s in &d.steps {
        out.push_str(&format!(
            "{} {:w$}  {:<cw$}  {:<cw$}  {:>8}\n",
            if s.differs { "*" } else { " " },
            s.step,
            cell(&s.a),
            cell(&s.b),
            s.ratio
                .map(|r| format!("{r:.2}×"))
                .unwrap_or_else(|| "-".into())
        ));
    }
    let n = d.steps.iter().filter(|s| s.differs).count();
    out.push_str(&format!(
        "\n{n} step(s) differ in outcome or attempts (marked *)\n"
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::support::Origin;
    use upshift_journal::{Actor, Envelope, Event, RunId};

    const PLAN: &str = "name = \"d\"\n[steps.a]\nkind = \"sleep\"\nwith = { duration = \"0s\" }\n[steps.b]\nkind = \"sleep\"\nneeds = [\"a\"]\nwith = { duration = \"0s\" }\n";

    fn run(b_attempts: u32, b_ms: i64) -> Loaded {
        let run = RunId::new();
        let t = chrono::Utc::now();
        let mut ev = vec![(
            0,
            Event::RunStarted {
                plan_name: "d".into(),
                plan_path: "/d.toml".into(),
                plan_text: PLAN.into(),
                plan_hash: crate::plan::hash_text(PLAN),
                vars: Default::default(),
                engine_version: "0.1.0".into(),
                actor: Actor::default(),
            },
        )];
        let ok = |s: &str, attempt| Event::StepSucceeded {
            step: s.into(),
            attempt,
            outputs: Default::default(),
            output_tail: String::new(),
            reboot_required: false,
        };
        let start = |s: &str, attempt| Event::StepStarted {
            step: s.into(),
            attempt,
            resumed_from_checkpoint: false,
        };
        ev.push((0, start("a", 1)));
        ev.push((100, ok("a", 1)));
        let mut t_ms = 100;
        for i in 1..=b_attempts {
            ev.push((t_ms, start("b", i)));
            t_ms += b_ms;
            if i < b_attempts {
                ev.push((
                    t_ms,
                    Event::StepFailed {
                        step: "b".into(),
                        attempt: i,
                        error: "x".into(),
                        output_tail: String::new(),
                        transient: true,
                    },
                ));
            } else {
                ev.push((t_ms, ok("b", i)));
            }
        }
        let events: Vec<Envelope> = ev
            .into_iter()
            .enumerate()
            .map(|(i, (ms, event))| Envelope {
                run,
                seq: i as u64,
                time: t + chrono::Duration::milliseconds(ms),
                event,
            })
            .collect();
        Loaded {
            run,
            events,
            origin: Origin::Journal("/j".into()),
            damage: None,
        }
    }

    #[test]
    fn marks_steps_with_other_attempts_and_gives_the_ratio() {
        let d = diff(&run(1, 200), &run(3, 200));
        assert!(d.same_plan);
        assert_eq!(d.steps.len(), 2);
        assert!(!d.steps[0].differs);
        assert_eq!(d.steps[0].ratio, Some(1.0));
        assert!(d.steps[1].differs);
        assert_eq!(d.steps[1].b.as_ref().unwrap().attempts, 3);
        assert_eq!(d.steps[1].ratio, Some(3.0));
        let text = diff_text(&d);
        assert!(text.contains("* b "), "{text}");
        assert!(text.contains("3.00×"), "{text}");
        assert!(text.contains("1 step(s) differ"), "{text}");
    }
}
