//! Property tests of the pure core: random plans (DAGs with policies and
//! compensations), random step outcomes and random crashes, driven through
//! `decide` and `RunState` exactly as the executor drives them — minus I/O.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use upshift::decide::{End, decide};
use upshift::plan::{LoadOptions, Plan, parse};
use upshift::state::{CompStatus, RunState, StepStatus};
use upshift_journal::{Envelope, Event, Outcome, RunId};

#[derive(Debug, Clone)]
struct Spec {
    needs: Vec<Vec<usize>>,
    attempts: Vec<u32>,
    rollback: Vec<bool>,
    compensate: Vec<bool>,
}

fn spec() -> impl Strategy<Value = Spec> {
    (1usize..10).prop_flat_map(|n| {
        let needs = (0..n)
            .map(|i| proptest::collection::vec(0..i.max(1), 0..=i.min(3)))
            .collect::<Vec<_>>();
        (
            needs,
            proptest::collection::vec(1u32..=3, n),
            proptest::collection::vec(any::<bool>(), n),
            proptest::collection::vec(any::<bool>(), n),
        )
            .prop_map(move |(needs, attempts, rollback, compensate)| Spec {
                needs: needs
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| v.into_iter().filter(|d| *d < i).collect())
                    .collect(),
                attempts,
                rollback,
                compensate,
            })
    })
}

fn plan_of(s: &Spec) -> Plan {
    let mut text = String::from("name = \"prop\"\n");
    for i in 0..s.needs.len() {
        let needs: BTreeSet<String> = s.needs[i].iter().map(|d| format!("\"s{d}\"")).collect();
        text.push_str(&format!(
            "[steps.s{i}]\nkind = \"sleep\"\nneeds = [{}]\nretry = {{ attempts = {}, backoff = \"0s\" }}\non_failure = \"{}\"\nwith = {{ duration = \"0s\" }}\n",
            needs.into_iter().collect::<Vec<_>>().join(", "),
            s.attempts[i],
            if s.rollback[i] { "rollback" } else { "pause" },
        ));
        if s.compensate[i] {
            text.push_str("compensate = { kind = \"sleep\", with = { duration = \"0s\" } }\n");
        }
    }
    parse(
        "prop.toml".as_ref(),
        &text,
        &upshift_steps::registry(),
        &LoadOptions::default(),
    )
    .expect("generated plans are valid")
}

/// The journal of a simulated run, and its folded state.
struct Sim {
    run: RunId,
    events: Vec<Envelope>,
    state: RunState,
}

impl Sim {
    fn push(&mut self, e: Event) {
        let env = Envelope {
            run: self.run,
            seq: self.events.len() as u64,
            time: Utc
                .timestamp_opt(1_700_000_000 + self.events.len() as i64, 0)
                .unwrap(),
            event: e,
        };
        self.state.apply(&env);
        self.events.push(env);
    }
}

/// Drives a run to its end or a pause. `outcomes` decides success per
/// started attempt; `crashes` decides when the "engine" dies (RunResumed).
fn simulate(plan: &Plan, outcomes: &[bool], crashes: &[bool]) -> (Sim, Option<End>) {
    let compensable: BTreeSet<String> = plan
        .steps
        .values()
        .filter(|s| s.compensate.is_some())
        .map(|s| s.id.clone())
        .collect();
    let mut sim = Sim {
        run: RunId::new(),
        events: Vec::new(),
        state: RunState::default(),
    };
    sim.push(Event::RunStarted {
        plan_name: plan.name.clone(),
        plan_path: "prop.toml".into(),
        plan_text: plan.text.clone(),
        plan_hash: plan.hash.clone(),
        vars: BTreeMap::new(),
        engine_version: "test".into(),
        actor: Default::default(),
    });
    let mut draws = 0usize;
    let far_future = Utc.timestamp_opt(4_000_000_000, 0).unwrap();
    for _ in 0..500 {
        let next = decide(plan, &sim.state, far_future, &compensable);
        // Invariants of every decision.
        for id in &next.start {
            let st = sim.state.step(id);
            assert!(
                matches!(
                    st.status,
                    StepStatus::Pending | StepStatus::Interrupted | StepStatus::RetryWait
                ),
                "started {id} in state {:?}",
                st.status
            );
            for n in &plan.steps[id].needs {
                assert!(
                    matches!(
                        sim.state.step(n).status,
                        StepStatus::Succeeded | StepStatus::Skipped
                    ),
                    "started {id} before its need {n} was done"
                );
            }
            assert!(!sim.state.rolling_back, "no step starts during a rollback");
        }
        for id in &next.compensate {
            let st = sim.state.step(id);
            assert_eq!(
                st.status,
                StepStatus::Succeeded,
                "compensating {id} that did not succeed"
            );
            assert!(compensable.contains(id));
            for d in plan.transitive_dependents(id) {
                let ds = sim.state.step(d);
                assert!(
                    !(ds.status == StepStatus::Succeeded
                        && compensable.contains(d)
                        && ds.compensation != CompStatus::Done),
                    "compensating {id} before its dependent {d}"
                );
            }
        }
        let running: Vec<String> = plan
            .order
            .iter()
            .filter(|id| {
                sim.state.step(id).status == StepStatus::Running
                    || sim.state.step(id).compensation == CompStatus::Running
            })
            .cloned()
            .collect();
        if next.end.is_some() {
            assert!(
                running.is_empty(),
                "an end was decided with steps in flight"
            );
        }
        match next.end {
            Some(End::Finish(o)) => {
                sim.push(Event::RunFinished { outcome: o });
                return (sim, Some(End::Finish(o)));
            }
            Some(End::Pause(r)) => return (sim, Some(End::Pause(r))),
            Some(End::StartRollback(r)) => {
                sim.push(Event::RollbackStarted { reason: r });
                continue;
            }
            None => {}
        }
        // Start what was decided, then finish everything in flight.
        for (id, reason) in &next.wait {
            sim.push(Event::StepWaiting {
                step: id.clone(),
                reason: reason.clone(),
            });
        }
        for id in &next.start {
            let attempt = sim.state.step(id).attempts + 1;
            sim.push(Event::StepStarted {
                step: id.clone(),
                attempt,
                resumed_from_checkpoint: false,
            });
        }
        for id in &next.compensate {
            sim.push(Event::CompensationStarted { step: id.clone() });
        }
        let crash = crashes.get(draws).copied().unwrap_or(false);
        if crash {
            // The engine dies with everything in flight, and comes back.
            sim.push(Event::RunResumed {
                actor: Default::default(),
                engine_version: "test".into(),
            });
            draws += 1;
            continue;
        }
        let in_flight: Vec<String> = plan
            .order
            .iter()
            .filter(|id| sim.state.step(id).status == StepStatus::Running)
            .cloned()
            .collect();
        for id in in_flight {
            let ok = outcomes.get(draws).copied().unwrap_or(true);
            draws += 1;
            let attempt = sim.state.step(&id).attempts;
            if ok {
                sim.push(Event::StepSucceeded {
                    step: id,
                    attempt,
                    outputs: BTreeMap::new(),
                    output_tail: String::new(),
                    reboot_required: false,
                });
            } else {
                sim.push(Event::StepFailed {
                    step: id.clone(),
                    attempt,
                    error: "simulated".into(),
                    output_tail: String::new(),
                    transient: false,
                });
                if attempt < plan.steps[&id].retry.attempts {
                    sim.push(Event::StepRetryScheduled {
                        step: id,
                        next_attempt: attempt + 1,
                        delay_ms: 0,
                    });
                }
            }
        }
        let comps: Vec<String> = plan
            .order
            .iter()
            .filter(|id| sim.state.step(id).compensation == CompStatus::Running)
            .cloned()
            .collect();
        for id in comps {
            sim.push(Event::CompensationSucceeded {
                step: id,
                output_tail: String::new(),
            });
        }
    }
    panic!("the simulation did not end in 500 decisions");
}

fn debug_state(s: &RunState) -> String {
    format!(
        "{:?}",
        (
            &s.steps
                .iter()
                .map(|(k, v)| (k, &v.status, v.attempts, &v.compensation))
                .collect::<Vec<_>>(),
            s.outcome,
            s.rolling_back,
            &s.paused
        )
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// With every attempt succeeding, the run succeeds, each step once.
    #[test]
    fn all_success_runs_every_step_exactly_once(s in spec()) {
        let plan = plan_of(&s);
        let (sim, end) = simulate(&plan, &[], &[]);
        prop_assert_eq!(end, Some(End::Finish(Outcome::Succeeded)));
        for id in &plan.order {
            prop_assert_eq!(&sim.state.step(id).status, &StepStatus::Succeeded);
            prop_assert_eq!(sim.state.step(id).attempts, 1);
        }
    }

    /// Random failures and crashes: decisions keep their invariants (checked
    /// inside `simulate`), the run always ends or pauses, a rollback
    /// compensates every compensable success exactly once in reverse
    /// dependency order, and folding the journal from scratch gives the
    /// same state as the incremental fold.
    #[test]
    fn random_failures_and_crashes_keep_the_invariants(
        s in spec(),
        outcomes in proptest::collection::vec(prop::bool::weighted(0.8), 0..60),
        crashes in proptest::collection::vec(prop::bool::weighted(0.15), 0..60),
    ) {
        let plan = plan_of(&s);
        let (sim, end) = simulate(&plan, &outcomes, &crashes);
        let refold = RunState::from_events(&sim.events);
        prop_assert_eq!(debug_state(&refold), debug_state(&sim.state));
        if let Some(End::Finish(Outcome::RolledBack)) = end {
            let order: Vec<&str> = sim.events.iter().filter_map(|e| match &e.event {
                Event::CompensationSucceeded { step, .. } => Some(step.as_str()),
                _ => None,
            }).collect();
            for id in &plan.order {
                let st = sim.state.step(id);
                let should = st.status == StepStatus::Succeeded && plan.steps[id].compensate.is_some();
                let times = order.iter().filter(|x| **x == id.as_str()).count();
                prop_assert_eq!(times, usize::from(should), "compensations of {}", id);
            }
            for (i, a) in order.iter().enumerate() {
                for b in &order[i + 1..] {
                    // b compensated after a: b must not depend on a.
                    prop_assert!(!plan.transitive_dependents(a).contains(*b), "{} undone before its dependent {}", a, b);
                }
            }
        }
        // Sequence numbers are gapless (the journal's own invariant).
        prop_assert!(sim.events.iter().enumerate().all(|(i, e)| e.seq == i as u64));
    }
}
