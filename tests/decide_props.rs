//! Property tests of the pure core: random plans (DAGs with policies,
//! locks, compensations, `resume = "ask"`), random step outcomes, crashes,
//! retries with backoff, and operator decisions (retry, skip, approve,
//! rollback, abort), driven through `decide` and `RunState` exactly as the
//! executor drives them — minus I/O.
//!
//! At every decision the incremental `decide` (the state's scheduler
//! index) is compared with a naive reference that walks the whole plan
//! (the `decide` of before the index, kept here), and the index with one
//! rebuilt from scratch.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use upshift::app::decisions::decision_events;
use upshift::decide::{self, End, Limits, Next, decide_within};
use upshift::plan::{LoadOptions, OnFailure, Plan, ResumePolicy, parse};
use upshift::state::{CompStatus, RunState, StepStatus};
use upshift_journal::{Actor, Decision, Envelope, Event, Outcome, RunId};

#[derive(Debug, Clone)]
struct Spec {
    needs: Vec<Vec<usize>>,
    attempts: Vec<u32>,
    backoff_s: Vec<u32>,
    on_failure: Vec<u8>,
    compensate: Vec<bool>,
    ask: Vec<bool>,
    locks: Vec<u8>,
    /// 0: the coordinator; 1, 2: hosts h1, h2.
    host: Vec<u8>,
    concurrency: usize,
    lock_b_limit: u32,
    /// `max_concurrent` of h1 and h2 (0: none).
    host_caps: (u32, u32),
}

fn spec() -> impl Strategy<Value = Spec> {
    (1usize..12).prop_flat_map(|n| {
        let needs = (0..n)
            .map(|i| proptest::collection::vec(0..i.max(1), 0..=i.min(3)))
            .collect::<Vec<_>>();
        (
            needs,
            proptest::collection::vec(1u32..=3, n),
            proptest::collection::vec(prop_oneof![Just(0u32), Just(0), Just(2)], n),
            proptest::collection::vec(0u8..3, n),
            proptest::collection::vec(any::<bool>(), n),
            proptest::collection::vec(prop::bool::weighted(0.2), n),
            proptest::collection::vec(0u8..6, n),
            proptest::collection::vec(0u8..3, n),
            1usize..5,
            1u32..3,
            (0u32..3, 0u32..3),
        )
            .prop_map(
                move |(
                    needs,
                    attempts,
                    backoff_s,
                    on_failure,
                    compensate,
                    ask,
                    locks,
                    host,
                    concurrency,
                    lock_b_limit,
                    host_caps,
                )| Spec {
                    needs: needs
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| v.into_iter().filter(|d| *d < i).collect())
                        .collect(),
                    attempts,
                    backoff_s,
                    on_failure,
                    compensate,
                    ask,
                    locks,
                    host,
                    concurrency,
                    lock_b_limit,
                    host_caps,
                },
            )
    })
}

fn plan_of(s: &Spec) -> Plan {
    let mut text = format!(
        "name = \"prop\"\n[locks]\nb = {}\nsite = {{ limit = 1, scope = \"site\" }}\n",
        s.lock_b_limit
    );
    for (h, cap) in [("h1", s.host_caps.0), ("h2", s.host_caps.1)] {
        text.push_str(&format!(
            "[hosts.{h}]\ntransport = \"local\"\nwork_dir = \"/w/{h}\"\n"
        ));
        if cap > 0 {
            text.push_str(&format!("max_concurrent = {cap}\n"));
        }
    }
    for i in 0..s.needs.len() {
        let needs: BTreeSet<String> = s.needs[i].iter().map(|d| format!("\"s{d}\"")).collect();
        let locks = match s.locks[i] {
            1 => "[\"a\"]",
            2 => "[\"b\"]",
            3 => "[\"a\", \"b\"]",
            4 => "[\"site\"]",
            5 => "[\"b\", \"site\"]",
            _ => "[]",
        };
        if s.host[i] > 0 {
            text.push_str(&format!("[steps.s{i}]\nhost = \"h{}\"\n", s.host[i]));
        } else {
            text.push_str(&format!("[steps.s{i}]\n"));
        }
        text.push_str(&format!(
            "kind = \"sleep\"\nneeds = [{}]\nretry = {{ attempts = {}, backoff = \"{}s\" }}\non_failure = \"{}\"\nresume = \"{}\"\nlocks = {locks}\nwith = {{ duration = \"0s\" }}\n",
            needs.into_iter().collect::<Vec<_>>().join(", "),
            s.attempts[i],
            s.backoff_s[i],
            ["pause", "rollback", "abort"][s.on_failure[i] as usize],
            if s.ask[i] { "ask" } else { "auto" },
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

// ---------------------------------------------------------------------------
// The reference: `decide` as it was before the scheduler index (a walk of
// the whole plan per decision), and the engine's old filter for the
// concurrency limit and the locks.

fn done(st: &StepStatus) -> bool {
    matches!(st, StepStatus::Succeeded | StepStatus::Skipped)
}

fn run_text(state: &RunState) -> String {
    state.run.map(|r| r.to_string()).unwrap_or_default()
}

fn reference(
    plan: &Plan,
    state: &RunState,
    now: DateTime<Utc>,
    compensable: &BTreeSet<String>,
) -> Next {
    let mut next = Next::default();
    if let Some(o) = state.outcome {
        next.end = Some(End::Finish(o));
        return next;
    }
    let mut running = false;
    let mut all_done = true;
    let mut failed: Vec<&String> = Vec::new();
    let mut waiting: Vec<&String> = Vec::new();
    let mut candidates = Vec::new();
    for id in &plan.order {
        let st = state.step(id);
        match st.status {
            StepStatus::Running => running = true,
            StepStatus::Failed => failed.push(id),
            StepStatus::Waiting => waiting.push(id),
            StepStatus::Pending | StepStatus::Interrupted | StepStatus::RetryWait => {
                candidates.push((id, st))
            }
            StepStatus::Succeeded | StepStatus::Skipped => {}
        }
        all_done &= done(&st.status);
    }
    if state.rolling_back {
        return reference_rollback(plan, state, compensable, running);
    }
    let run = run_text(state);
    let blocked = !failed.is_empty() || state.reboot_pending.is_some();
    if !blocked {
        for (id, st) in candidates {
            let def = &plan.steps[id];
            if st.status == StepStatus::RetryWait
                && let Some(t) = st.retry_at
                && t > now
            {
                next.wake_at = Some(next.wake_at.map_or(t, |w| w.min(t)));
                continue;
            }
            if !def.needs.iter().all(|n| done(&state.step(n).status)) {
                continue;
            }
            if st.status == StepStatus::Interrupted
                && def.resume == ResumePolicy::Ask
                && !st.approved
            {
                next.wait.push((
                    id.clone(),
                    format!(
                        "was running when the engine stopped and has resume = \"ask\": check the machine, then `upshift approve {run} {id}` to run it again, or `upshift skip {run} {id} --reason ...`"
                    ),
                ));
            } else {
                next.start.push(id.clone());
            }
        }
    }
    if running || !next.start.is_empty() || !next.wait.is_empty() {
        return next;
    }
    if let Some(first) = failed.first() {
        let def = &plan.steps[*first];
        let err = state.step(first).error.clone().unwrap_or_default();
        next.end = Some(match def.on_failure {
            OnFailure::Rollback => End::StartRollback(format!("step {first} failed: {err}")),
            OnFailure::Abort => End::Finish(Outcome::Failed),
            OnFailure::Pause => End::Pause(format!(
                "step {first} failed: {err}\n  then: fix the cause and `upshift retry {run} {first}`, or `upshift skip {run} {first} --reason ...`, or `upshift rollback {run}`, or `upshift abort {run}`"
            )),
        });
        return next;
    }
    if let Some(step) = &state.reboot_pending {
        next.end = Some(End::Pause(format!(
            "step {step} requires a reboot: reboot the machine, then `upshift resume {run}`"
        )));
        return next;
    }
    if next.wake_at.is_some() {
        return next;
    }
    if all_done {
        next.end = Some(End::Finish(Outcome::Succeeded));
        return next;
    }
    let waiting: Vec<String> = waiting
        .into_iter()
        .map(|id| {
            format!(
                "{id}: {} (`upshift approve {run} {id}`)",
                state.step(id).waiting.clone().unwrap_or_default()
            )
        })
        .collect();
    next.end = Some(End::Pause(if waiting.is_empty() {
        "no step can start (every remaining step needs a step that cannot finish)".into()
    } else {
        format!("waiting for an operator:\n  {}", waiting.join("\n  "))
    }));
    next
}

fn reference_rollback(
    plan: &Plan,
    state: &RunState,
    compensable: &BTreeSet<String>,
    running: bool,
) -> Next {
    let mut next = Next::default();
    if running {
        return next;
    }
    let needs_comp = |id: &str| {
        let st = state.step(id);
        st.status == StepStatus::Succeeded
            && compensable.contains(id)
            && st.compensation != CompStatus::Done
    };
    let comp_running = plan
        .order
        .iter()
        .any(|id| state.step(id).compensation == CompStatus::Running);
    let failed: Vec<&String> = plan
        .order
        .iter()
        .filter(|id| state.step(id).compensation == CompStatus::Failed)
        .collect();
    if failed.is_empty() {
        for id in plan.order.iter().rev() {
            if !needs_comp(id) || state.step(id).compensation != CompStatus::None {
                continue;
            }
            if plan
                .transitive_dependents(id)
                .iter()
                .all(|d| !needs_comp(d))
            {
                next.compensate.push(id.clone());
            }
        }
    }
    if comp_running || !next.compensate.is_empty() {
        return next;
    }
    let run = run_text(state);
    if let Some(first) = failed.first() {
        let err = state
            .step(first)
            .compensation_error
            .clone()
            .unwrap_or_default();
        next.end = Some(End::Pause(format!(
            "rollback stopped: compensation of {first} failed: {err}\n  then: fix the cause and `upshift rollback {run}` (runs the remaining compensations), or `upshift abort {run}`"
        )));
        return next;
    }
    next.end = Some(End::Finish(Outcome::RolledBack));
    next
}

/// The reference within limits: what the engine used to start of the
/// reference's decision (plan order, starts before compensations, a step
/// skipped when one of its locks is full, nothing past the limit).
fn reference_within(
    plan: &Plan,
    state: &RunState,
    now: DateTime<Utc>,
    compensable: &BTreeSet<String>,
    concurrency: usize,
) -> Next {
    let mut next = reference(plan, state, now, compensable);
    let mut busy = plan
        .order
        .iter()
        .filter(|id| {
            let st = state.step(id);
            st.status == StepStatus::Running || st.compensation == CompStatus::Running
        })
        .count();
    // Locks are held per (lock, host), a site-wide lock per lock; hosts
    // count their running steps against their cap.
    let key = |id: &str, l: &str| -> (String, Option<String>) {
        let host = plan.steps[id].host.clone();
        if plan.site_locks.contains(l) {
            (l.to_string(), Some("<site>".into()))
        } else {
            (l.to_string(), host)
        }
    };
    let mut held: BTreeMap<(String, Option<String>), u32> = BTreeMap::new();
    let mut on_host: BTreeMap<String, u32> = BTreeMap::new();
    for id in &plan.order {
        if state.step(id).status == StepStatus::Running {
            for l in &plan.steps[id].locks {
                *held.entry(key(id, l)).or_default() += 1;
            }
            if let Some(h) = &plan.steps[id].host {
                *on_host.entry(h.clone()).or_default() += 1;
            }
        }
    }
    let start = std::mem::take(&mut next.start);
    for id in start {
        if busy >= concurrency {
            continue;
        }
        let locks = &plan.steps[&id].locks;
        if locks
            .iter()
            .any(|l| held.get(&key(&id, l)).copied().unwrap_or(0) >= plan.lock_limit(l))
        {
            continue;
        }
        let host = plan.steps[&id].host.clone();
        if let Some(h) = &host
            && let Some(cap) = plan.hosts[h].max_concurrent
            && on_host.get(h).copied().unwrap_or(0) >= cap
        {
            continue;
        }
        for l in locks {
            *held.entry(key(&id, l)).or_default() += 1;
        }
        if let Some(h) = host {
            *on_host.entry(h).or_default() += 1;
        }
        busy += 1;
        next.start.push(id);
    }
    let comp = std::mem::take(&mut next.compensate);
    for id in comp {
        if busy >= concurrency {
            continue;
        }
        busy += 1;
        next.compensate.push(id);
    }
    next
}

// ---------------------------------------------------------------------------
// The simulation.

/// The journal of a simulated run, and its folded state (with the index).
struct Sim {
    run: RunId,
    clock: DateTime<Utc>,
    events: Vec<Envelope>,
    state: RunState,
}

impl Sim {
    fn push(&mut self, e: Event) {
        let env = Envelope {
            run: self.run,
            seq: self.events.len() as u64,
            time: self.clock,
            event: e,
        };
        self.state.apply(&env);
        self.events.push(env);
        self.clock += chrono::Duration::milliseconds(250);
    }
}

fn actor() -> Actor {
    Actor {
        user: "op".into(),
        host: "h".into(),
        pid: 1,
    }
}

/// Random draws, consumed in order (false/0 once exhausted).
struct Draws<'a> {
    outcomes: &'a [bool],
    crashes: &'a [bool],
    ops: &'a [u8],
    spec: &'a [Option<u8>],
    n: usize,
    o: usize,
}

impl Draws<'_> {
    fn outcome(&mut self) -> bool {
        self.n += 1;
        self.outcomes.get(self.n - 1).copied().unwrap_or(true)
    }
    fn crash(&mut self) -> bool {
        self.crashes.get(self.n).copied().unwrap_or(false)
    }
    fn op(&mut self) -> Option<u8> {
        self.o += 1;
        self.ops.get(self.o - 1).copied()
    }
    fn speculate(&self) -> Option<u8> {
        self.spec.get(self.n).copied().flatten()
    }
}

/// Checks the incremental decision against the reference, with and
/// without limits, and with the index and without.
fn decide_checked(plan: &Plan, sim: &Sim, comp: &BTreeSet<String>, concurrency: usize) -> Next {
    let state = &sim.state;
    if let Err(e) = state.check_index() {
        panic!("index out of step after {} events: {e}", sim.events.len());
    }
    let limits = Limits {
        concurrency,
        locks: true,
    };
    let next = decide_within(plan, state, sim.clock, comp, limits);
    assert_eq!(
        next,
        reference_within(plan, state, sim.clock, comp, concurrency),
        "incremental decide differs from the reference after {} events",
        sim.events.len()
    );
    assert_eq!(
        decide::decide(plan, state, sim.clock, comp),
        reference(plan, state, sim.clock, comp),
        "unbounded decide differs from the reference"
    );
    // A state folded without its plan gets an index built for the occasion.
    let plain = RunState::from_events(&sim.events);
    assert_eq!(decide_within(plan, &plain, sim.clock, comp, limits), next);
    next
}

/// Folds a random batch speculatively, then undoes it: the state (and its
/// index) must be exactly as before.
fn check_speculation(plan: &Plan, sim: &mut Sim, which: u8) {
    let before = format!("{:?}", sim.state);
    let ids: Vec<&String> = plan.order.iter().collect();
    let id = ids[which as usize % ids.len()].clone();
    let batch = match which % 6 {
        0 => vec![Event::StepSucceeded {
            step: id,
            attempt: 1,
            outputs: BTreeMap::new(),
            output_tail: String::new(),
            reboot_required: true,
        }],
        1 => decide::failure_events(&plan.steps[&id], 1, "x".into(), String::new(), true),
        2 => decision_events(Decision::Skip { step: id }, actor(), "r".into()),
        3 => decision_events(Decision::Rollback, actor(), String::new()),
        4 => decision_events(Decision::Retry { step: id }, actor(), "r".into()),
        _ => vec![
            Event::StepStarted {
                step: id.clone(),
                attempt: 9,
                resumed_from_checkpoint: false,
            },
            Event::CompensationStarted { step: id },
            Event::RunResumed {
                actor: actor(),
                engine_version: "t".into(),
            },
        ],
    };
    let sp = sim.state.speculate(&batch, sim.clock);
    sim.state.check_index().expect("index during a speculation");
    sim.state.undo(sp);
    assert_eq!(
        format!("{:?}", sim.state),
        before,
        "undo left the state changed"
    );
    sim.state.check_index().expect("index after an undo");
}

/// Drives a run to its end, or to a pause no operator draw is left for.
fn simulate(spec: &Spec, plan: &Plan, d: &mut Draws) -> (Sim, Option<End>) {
    let registry = upshift_steps::registry();
    let secrets = decide::placeholder_secrets(plan);
    let mut sim = Sim {
        run: RunId::new(),
        clock: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
        events: Vec::new(),
        state: RunState::for_plan(plan),
    };
    sim.push(Event::RunStarted {
        plan_name: plan.name.clone(),
        plan_path: "prop.toml".into(),
        plan_text: plan.text.clone(),
        plan_hash: plan.hash.clone(),
        vars: BTreeMap::new(),
        engine_version: "test".into(),
        actor: actor(),
    });
    for _ in 0..1000 {
        if let Some(w) = d.speculate() {
            check_speculation(plan, &mut sim, w);
        }
        let comp = decide::compensable(plan, &sim.state, &registry, &secrets);
        let next = decide_checked(plan, &sim, &comp, spec.concurrency);
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
                    done(&sim.state.step(n).status),
                    "started {id} before its need {n} was done"
                );
            }
            assert!(!sim.state.rolling_back, "no step starts during a rollback");
        }
        for id in &next.compensate {
            assert_eq!(sim.state.step(id).status, StepStatus::Succeeded);
            assert!(comp.contains(id));
        }
        match next.end {
            Some(End::Finish(o)) => {
                if sim.state.outcome.is_none() {
                    sim.push(Event::RunFinished { outcome: o });
                }
                return (sim, Some(End::Finish(o)));
            }
            Some(End::Pause(r)) => {
                sim.push(Event::RunPaused { reason: r.clone() });
                if !operator(plan, &mut sim, d) {
                    return (sim, Some(End::Pause(r)));
                }
                continue;
            }
            Some(End::StartRollback(r)) => {
                sim.push(Event::RollbackStarted { reason: r });
                continue;
            }
            None => {}
        }
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
        // What runs now stays within the limits.
        let running: Vec<&String> = plan
            .order
            .iter()
            .filter(|id| {
                let st = sim.state.step(id);
                st.status == StepStatus::Running || st.compensation == CompStatus::Running
            })
            .collect();
        assert!(
            running.len() <= spec.concurrency,
            "over the limit: {running:?}"
        );
        let holding = |id: &&&String, lock: &str| {
            sim.state.step(id).status == StepStatus::Running
                && plan.steps[**id].locks.iter().any(|l| l == lock)
        };
        for host in [None, Some("h1"), Some("h2")] {
            for (lock, limit) in [("a", 1), ("b", spec.lock_b_limit)] {
                let holders = running
                    .iter()
                    .filter(|id| holding(id, lock) && plan.steps[**id].host.as_deref() == host)
                    .count();
                assert!(
                    holders as u32 <= limit,
                    "lock {lock} held {holders} times on {host:?}"
                );
            }
        }
        let site_holders = running.iter().filter(|id| holding(id, "site")).count();
        assert!(
            site_holders <= 1,
            "site-wide lock held {site_holders} times"
        );
        for (h, cap) in [("h1", spec.host_caps.0), ("h2", spec.host_caps.1)] {
            let on = running
                .iter()
                .filter(|id| {
                    sim.state.step(id).status == StepStatus::Running
                        && plan.steps[**id].host.as_deref() == Some(h)
                })
                .count() as u32;
            assert!(cap == 0 || on <= cap, "{on} steps on {h}, cap {cap}");
        }
        if running.is_empty() {
            // Nothing runs: a retry is due later (time passes), or the
            // waits just journaled change the next decision.
            if let Some(t) = next.wake_at {
                sim.clock = t;
            }
            continue;
        }
        if d.crash() {
            // The engine dies with everything in flight, and comes back.
            d.n += 1;
            sim.push(Event::RunResumed {
                actor: actor(),
                engine_version: "test".into(),
            });
            continue;
        }
        let running: Vec<String> = running.into_iter().cloned().collect();
        for id in running {
            let ok = d.outcome();
            let st = sim.state.step(&id);
            if st.compensation == CompStatus::Running {
                sim.push(if ok {
                    Event::CompensationSucceeded {
                        step: id,
                        output_tail: String::new(),
                    }
                } else {
                    Event::CompensationFailed {
                        step: id,
                        error: "simulated".into(),
                        output_tail: String::new(),
                    }
                });
                continue;
            }
            let attempt = st.attempts;
            if ok {
                sim.push(Event::StepSucceeded {
                    step: id,
                    attempt,
                    outputs: BTreeMap::new(),
                    output_tail: String::new(),
                    reboot_required: false,
                });
            } else {
                let transient = attempt % 2 == 1;
                for e in decide::failure_events(
                    &plan.steps[&id],
                    attempt,
                    "simulated".into(),
                    String::new(),
                    transient,
                ) {
                    sim.push(e);
                }
            }
        }
    }
    panic!("the simulation did not end in 1000 decisions");
}

/// An operator's answer to a pause, as `upshift` journals it (the decision,
/// then the engine's `run.resumed`). False when no draw is left.
fn operator(plan: &Plan, sim: &mut Sim, d: &mut Draws) -> bool {
    let Some(op) = d.op() else { return false };
    let first = |f: &dyn Fn(&upshift::state::StepState) -> bool| {
        plan.order.iter().find(|id| f(sim.state.step(id))).cloned()
    };
    let failed = first(&|s| s.status == StepStatus::Failed || s.compensation == CompStatus::Failed);
    let waiting = first(&|s| s.status == StepStatus::Waiting);
    let pending = first(&|s| !done(&s.status));
    let decision = match op % 6 {
        0 => failed.map(|step| Decision::Retry { step }),
        1 => failed.or(pending).map(|step| Decision::Skip { step }),
        2 => waiting.map(|step| Decision::Approve { step }),
        3 => Some(Decision::Rollback),
        4 if op > 200 => Some(Decision::Abort),
        // Approving a step ahead of time (it runs again without asking if
        // it is interrupted later).
        5 => plan
            .order
            .iter()
            .rev()
            .find(|id| !done(&sim.state.step(id).status))
            .map(|step| Decision::Approve { step: step.clone() }),
        _ => None,
    };
    if let Some(decision) = decision {
        for e in decision_events(decision, actor(), "because".into()) {
            sim.push(e);
        }
    }
    sim.push(Event::RunResumed {
        actor: actor(),
        engine_version: "test".into(),
    });
    true
}

fn debug_state(s: &RunState) -> String {
    format!(
        "{:?}",
        (
            &s.steps
                .iter()
                .map(|(k, v)| (k, &v.status, v.attempts, &v.compensation, v.retry_at))
                .collect::<Vec<_>>(),
            s.outcome,
            s.rolling_back,
            &s.paused
        )
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// With every attempt succeeding, the run succeeds, each step once.
    #[test]
    fn all_success_runs_every_step_exactly_once(s in spec()) {
        let plan = plan_of(&s);
        let mut d = Draws { outcomes: &[], crashes: &[], ops: &[], spec: &[], n: 0, o: 0 };
        let (sim, end) = simulate(&s, &plan, &mut d);
        prop_assert_eq!(end, Some(End::Finish(Outcome::Succeeded)));
        for id in &plan.order {
            prop_assert_eq!(&sim.state.step(id).status, &StepStatus::Succeeded);
            prop_assert_eq!(sim.state.step(id).attempts, 1);
        }
    }

    /// Random failures, retries, crashes and operator decisions: every
    /// decision equals the reference's (checked inside `simulate`), the run
    /// always ends or pauses, a rollback compensates every compensable
    /// success exactly once in reverse dependency order, and folding the
    /// journal from scratch gives the same state as the incremental fold.
    #[test]
    fn random_runs_decide_as_the_reference(
        s in spec(),
        outcomes in proptest::collection::vec(prop::bool::weighted(0.75), 0..80),
        crashes in proptest::collection::vec(prop::bool::weighted(0.15), 0..80),
        ops in proptest::collection::vec(any::<u8>(), 0..10),
        spec_draws in proptest::collection::vec(proptest::option::weighted(0.2, any::<u8>()), 0..80),
    ) {
        let plan = plan_of(&s);
        let mut d = Draws { outcomes: &outcomes, crashes: &crashes, ops: &ops, spec: &spec_draws, n: 0, o: 0 };
        let (sim, end) = simulate(&s, &plan, &mut d);
        let refold = RunState::from_events(&sim.events);
        prop_assert_eq!(debug_state(&refold), debug_state(&sim.state));
        let mut indexed = RunState::for_plan(&plan);
        for e in &sim.events {
            indexed.apply(e);
        }
        prop_assert_eq!(format!("{indexed:?}"), format!("{:?}", sim.state));
        if let Some(End::Finish(Outcome::RolledBack)) = end {
            let order: Vec<&str> = sim.events.iter().filter_map(|e| match &e.event {
                Event::CompensationSucceeded { step, .. } => Some(step.as_str()),
                _ => None,
            }).collect();
            for (i, a) in order.iter().enumerate() {
                for b in &order[i + 1..] {
                    // b compensated after a: b must not depend on a.
                    prop_assert!(!plan.transitive_dependents(a).contains(*b), "{} undone before its dependent {}", a, b);
                }
            }
            for id in &plan.order {
                let st = sim.state.step(id);
                let should = st.status == StepStatus::Succeeded && plan.steps[id].compensate.is_some();
                let times = order.iter().filter(|x| **x == id.as_str()).count();
                prop_assert_eq!(times >= 1, should, "compensations of {}", id);
            }
        }
        // Sequence numbers are gapless (the journal's own invariant).
        prop_assert!(sim.events.iter().enumerate().all(|(i, e)| e.seq == i as u64));
    }
}

/// Retry scheduling: the policy's attempts, `only_transient`, and the
/// doubling backoff capped by `backoff_max`, as the engine journals it.
#[test]
fn failure_events_follow_the_retry_policy() {
    let plan = parse(
        "p.toml".as_ref(),
        "name = \"p\"\n[steps.a]\nkind = \"sleep\"\nretry = { attempts = 4, backoff = \"1s\", backoff_max = \"3s\", only_transient = true }\nwith = { duration = \"0s\" }\n",
        &upshift_steps::registry(),
        &LoadOptions::default(),
    )
    .unwrap();
    let def = &plan.steps["a"];
    let delays: Vec<Option<u64>> = (1..=4)
        .map(|attempt| {
            let ev = decide::failure_events(def, attempt, "e".into(), String::new(), true);
            assert!(matches!(ev[0], Event::StepFailed { .. }));
            ev.get(1).map(|e| match e {
                Event::StepRetryScheduled {
                    delay_ms,
                    next_attempt,
                    ..
                } => {
                    assert_eq!(*next_attempt, attempt + 1);
                    *delay_ms
                }
                other => panic!("{other:?}"),
            })
        })
        .collect();
    assert_eq!(delays, [Some(1000), Some(2000), Some(3000), None]);
    // Not transient, and the policy retries only transient failures.
    assert_eq!(
        decide::failure_events(def, 1, "e".into(), String::new(), false).len(),
        1
    );
}
