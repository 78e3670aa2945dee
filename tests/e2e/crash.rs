//! Proof by crashing: abort the engine right after the k-th durable event,
//! for every k, resume, and check the final state and every side effect.

use std::collections::{BTreeMap, BTreeSet};

use upshift_journal::{Envelope, Event};

use crate::support::{Ran, Sandbox};

/// Parallel branches (b ∥ loop), a foreach with checkpoints, outputs passed
/// on (d reads b's stdout) and a compensation on b.
const PLAN: &str = r#"
name = "crash test"

[steps.a]
kind = "process"
with = { program = "sh", args = ["-c", "echo a >> @M@/a"] }

[steps.b]
kind = "process"
needs = ["a"]
with = { program = "sh", args = ["-c", "echo b >> @M@/b; echo from-b"] }
compensate = { kind = "process", with = { program = "sh", args = ["-c", "echo undo >> @M@/b.undo"] } }

[steps.loop]
kind = "foreach"
needs = ["a"]
with = { items = ["i0", "i1", "i2", "i3"], program = "sh", args = ["-c", "echo ${item} >> @M@/loop"] }

[steps.d]
kind = "process"
needs = ["b"]
with = { program = "sh", args = ["-c", "echo ${steps.b.outputs.stdout} >> @M@/d"] }

[steps.e]
kind = "process"
needs = ["d", "loop"]
with = { program = "sh", args = ["-c", "echo e >> @M@/e"] }
"#;

/// The same, but `e` fails and the policy is rollback: a, b, d and loop
/// have compensations that write markers.
const ROLLBACK_PLAN: &str = r#"
name = "crash during rollback"

[steps.a]
kind = "process"
with = { program = "sh", args = ["-c", "echo a >> @M@/a"] }
# Reverse dependency order: a is undone only after b and c were.
compensate = { kind = "process", with = { program = "sh", args = ["-c", "test -s @M@/b.undo && test -s @M@/c.undo && echo undo >> @M@/a.undo"] } }

[steps.b]
kind = "process"
needs = ["a"]
with = { program = "sh", args = ["-c", "echo b >> @M@/b"] }
compensate = { kind = "process", with = { program = "sh", args = ["-c", "echo undo >> @M@/b.undo"] } }

[steps.c]
kind = "process"
needs = ["a"]
with = { program = "sh", args = ["-c", "echo c >> @M@/c"] }
compensate = { kind = "process", with = { program = "sh", args = ["-c", "echo undo >> @M@/c.undo"] } }

[steps.e]
kind = "process"
needs = ["b", "c"]
on_failure = "rollback"
with = { program = "sh", args = ["-c", "echo e >> @M@/e; exit 7"] }
"#;

#[derive(Default, Debug)]
struct Prefix {
    started: BTreeSet<String>,
    succeeded: BTreeSet<String>,
    comp_started: BTreeSet<String>,
    comp_done: BTreeSet<String>,
    loop_done: BTreeSet<usize>,
}

fn prefix_of(events: &[Envelope], k: usize) -> Prefix {
    let mut p = Prefix::default();
    for e in events.iter().take(k) {
        match &e.event {
            Event::StepStarted { step, .. } => {
                p.started.insert(step.clone());
            }
            Event::StepSucceeded { step, .. } => {
                p.succeeded.insert(step.clone());
            }
            Event::CompensationStarted { step } => {
                p.comp_started.insert(step.clone());
            }
            Event::CompensationSucceeded { step, .. } => {
                p.comp_done.insert(step.clone());
            }
            Event::StepCheckpoint { step, data, .. } if step == "loop" => {
                let text = String::from_utf8_lossy(data);
                let ranges = text.split("done=").nth(1).unwrap_or("");
                p.loop_done.clear();
                for part in ranges.split(',').filter(|s| !s.is_empty()) {
                    match part.split_once('-') {
                        Some((a, b)) => p
                            .loop_done
                            .extend(a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap()),
                        None => {
                            p.loop_done.insert(part.parse().unwrap());
                        }
                    }
                }
            }
            _ => {}
        }
    }
    p
}

/// A side effect ran exactly once if its step's fate was sealed on either
/// side of the crash, and at most twice if the crash caught it in flight.
#[track_caller]
fn assert_count(what: &str, count: usize, in_flight: bool, k: usize) {
    if in_flight {
        assert!(
            (1..=2).contains(&count),
            "k={k}: {what} ran {count} times; an in-flight unit may repeat once, no more"
        );
    } else {
        assert_eq!(
            count, 1,
            "k={k}: {what} ran {count} times, expected exactly once"
        );
    }
}

fn crash_run(sb: &Sandbox, plan: &std::path::Path, k: usize) -> Ran {
    sb.run_env(
        &["run", plan.to_str().unwrap()],
        &[("UPSHIFT_FAILPOINT_CRASH_AFTER", &k.to_string())],
    )
}

#[test]
fn crash_after_every_event_then_resume_finishes_with_each_effect_once() {
    // The number of events of an uninterrupted run bounds k.
    let reference = Sandbox::new();
    let plan = reference.plan("plan.toml", PLAN);
    let r = reference.run(&["run", plan.to_str().unwrap()]);
    r.expect(0);
    let total = reference.events(&r.run_id()).len();
    assert!(
        total >= 15,
        "plan too small to be a meaningful test: {total} events"
    );

    for k in 1..=total {
        let sb = Sandbox::new();
        let plan = sb.plan("plan.toml", PLAN);
        let crashed = crash_run(&sb, &plan, k);
        assert!(
            crashed.signal.is_some() || crashed.code == Some(134),
            "k={k}: the failpoint did not abort the engine: {crashed:?}"
        );
        let run = crashed.run_id();
        let before = sb.events(&run);
        assert_eq!(before.len(), k, "k={k}: exactly k events must be durable");
        let p = prefix_of(&before, k);

        sb.run(&["resume", &run]).expect(0);
        let status = sb.status(&run);
        assert_eq!(status["state"], "succeeded", "k={k}: {status}");
        for step in ["a", "b", "d", "e", "loop"] {
            assert_eq!(status["steps"][step]["state"], "succeeded", "k={k}: {step}");
        }
        // Each step's marker: once, or twice if it was in flight.
        for step in ["a", "b", "d", "e"] {
            let in_flight = p.started.contains(step) && !p.succeeded.contains(step);
            assert_count(step, sb.marker_lines(step).len(), in_flight, k);
        }
        // d read b's output, whichever session ran it.
        assert!(sb.marker_lines("d").iter().all(|l| l == "from-b"), "k={k}");
        // foreach: items checkpointed before the crash never repeat; at most
        // the one item in flight (concurrency 1) repeats.
        let lines = sb.marker_lines("loop");
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for l in &lines {
            *counts.entry(l.clone()).or_default() += 1;
        }
        let loop_in_flight = p.started.contains("loop") && !p.succeeded.contains("loop");
        let mut repeated = 0;
        for i in 0..4 {
            let c = counts.get(&format!("i{i}")).copied().unwrap_or(0);
            let may_repeat = loop_in_flight && !p.loop_done.contains(&i);
            assert_count(&format!("loop item {i}"), c, may_repeat, k);
            repeated += c - 1;
        }
        assert!(
            repeated <= 1,
            "k={k}: {repeated} items repeated; only one was in flight"
        );
        // No compensation ran in a successful run.
        assert!(sb.marker_lines("b.undo").is_empty(), "k={k}");
        // The journal is gapless across both sessions (read_run checks).
        let after = sb.events(&run);
        assert!(after.len() >= k);
        assert_eq!(&after[..k], &before[..]);
    }
}

#[test]
fn crash_after_every_event_of_a_rollback_then_resume_rolls_back_each_step_once() {
    let reference = Sandbox::new();
    let plan = reference.plan("plan.toml", ROLLBACK_PLAN);
    let r = reference.run(&["run", plan.to_str().unwrap()]);
    r.expect(1);
    let reference_events = reference.events(&r.run_id());
    let total = reference_events.len();
    let rollback_at = reference_events
        .iter()
        .position(|e| matches!(e.event, Event::RollbackStarted { .. }))
        .expect("the reference run rolls back");
    assert_eq!(reference.status(&r.run_id())["state"], "rolled_back");

    for k in 1..=total {
        let sb = Sandbox::new();
        let plan = sb.plan("plan.toml", ROLLBACK_PLAN);
        let crashed = crash_run(&sb, &plan, k);
        assert!(
            crashed.signal.is_some() || crashed.code == Some(134),
            "k={k}: {crashed:?}"
        );
        let run = crashed.run_id();
        let p = prefix_of(&sb.events(&run), k);

        sb.run(&["resume", &run]).expect(1);
        let status = sb.status(&run);
        assert_eq!(status["state"], "rolled_back", "k={k}: {status}");
        for step in ["a", "b", "c"] {
            assert_eq!(
                status["steps"][step]["compensation"], "done",
                "k={k}: {step}"
            );
            let in_flight = p.started.contains(step) && !p.succeeded.contains(step);
            assert_count(step, sb.marker_lines(step).len(), in_flight, k);
            let comp_in_flight = p.comp_started.contains(step) && !p.comp_done.contains(step);
            assert_count(
                &format!("compensation of {step}"),
                sb.marker_lines(&format!("{step}.undo")).len(),
                comp_in_flight,
                k,
            );
        }
        // e failed: it is not compensated; it may have run twice only if it
        // was in flight at the crash.
        let e_in_flight = p.started.contains("e")
            && !reference_events[..k.min(rollback_at)]
                .iter()
                .any(|x| matches!(&x.event, Event::StepFailed { step, .. } if step == "e"));
        assert_count("e", sb.marker_lines("e").len(), e_in_flight, k);
    }
}

/// Real SIGKILLs from outside at seeded random moments, resuming each time,
/// until the run is done. Bounded: 40 kills at most.
#[cfg(unix)]
#[test]
fn random_sigkills_from_outside_then_resume_until_done() {
    use std::time::Duration;

    const SOAK_PLAN: &str = r#"
name = "soak"
[steps.a]
kind = "process"
with = { program = "sh", args = ["-c", "sleep 0.1; echo a >> @M@/a"] }
[steps.loop]
kind = "foreach"
needs = ["a"]
with = { items = ["0","1","2","3","4","5","6","7","8","9","10","11"], program = "sh", args = ["-c", "sleep 0.08; echo ${item} >> @M@/loop"] }
[steps.b]
kind = "process"
needs = ["a"]
with = { program = "sh", args = ["-c", "sleep 0.3; echo b >> @M@/b"] }
[steps.c]
kind = "process"
needs = ["loop", "b"]
with = { program = "sh", args = ["-c", "sleep 0.1; echo c >> @M@/c"] }
"#;
    let sb = Sandbox::new();
    let plan = sb.plan("plan.toml", SOAK_PLAN);
    // A small LCG: seeded, so a failure replays.
    let mut seed: u64 = 0x5eed_1234;
    let mut next = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % 400
    };
    let mut run_id: Option<String> = None;
    let mut kills = 0;
    let mut finished = false;
    for _ in 0..40 {
        // The run by its id: a session killed after journaling the run's
        // end leaves no unfinished run, and a bare `resume` would then say
        // so (exit 2) instead of "already ended" (exit 0).
        let mut cmd = match &run_id {
            None => sb.cmd(&["run", plan.to_str().unwrap()]),
            Some(id) => sb.cmd(&["resume", id.as_str()]),
        };
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(30 + next()));
        match child.try_wait().unwrap() {
            Some(status) => {
                assert!(status.success(), "engine ended with {status}");
                finished = true;
            }
            None => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
            }
        }
        if run_id.is_none() {
            use std::io::Read;
            let mut out = String::new();
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            let id = out.lines().next().unwrap_or_default().trim().to_string();
            if !id.is_empty() {
                run_id = Some(id);
            }
        }
        if finished {
            break;
        }
    }
    let run = run_id.expect("the first run printed its id");
    if !finished {
        // Let the last resume run to the end.
        sb.run(&["resume", &run]).expect(0);
    }
    assert_eq!(sb.status(&run)["state"], "succeeded");
    assert!(
        kills >= 3,
        "the soak must actually kill the engine (killed {kills} times)"
    );
    // Completed work never repeats more than once per kill, and each unit
    // is done at least once.
    for step in ["a", "b", "c"] {
        let n = sb.marker_lines(step).len();
        assert!(
            n >= 1 && n <= 1 + kills,
            "{step} ran {n} times over {kills} kills"
        );
    }
    // foreach items: each done at least once; a repeat needs a kill while
    // that item was in flight (concurrency 1: one item per kill), so the
    // repeats add up to at most the kills. (The same item can be caught by
    // two kills in a row, so a per-item bound of 2 would be wrong.)
    let lines = sb.marker_lines("loop");
    let mut repeats = 0;
    for i in 0..12 {
        let n = lines.iter().filter(|l| **l == i.to_string()).count();
        assert!(n >= 1, "loop item {i} never ran");
        repeats += n - 1;
    }
    assert!(
        repeats <= kills,
        "{repeats} repeated loop items over {kills} kills: {lines:?}"
    );
    // Every event of every session is there, gapless.
    let events = sb.events(&run);
    assert!(events.iter().enumerate().all(|(i, e)| e.seq == i as u64));
}

#[test]
fn a_corrupted_record_is_reported_and_never_resumed_from() {
    let sb = Sandbox::new();
    let plan = sb.plan("plan.toml", PLAN);
    let crashed = crash_run(&sb, &plan, 6);
    assert!(crashed.signal.is_some() || crashed.code == Some(134));
    let run = crashed.run_id();
    // Flip one byte in the body of the record at seq 3, through redb, so only
    // upshift's own checksum can notice.
    {
        const T: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("events");
        let mut b = redb::Builder::new();
        b.set_concurrency_mode(redb::ConcurrencyMode::SingleWriter);
        let db = b.create(sb.journal().join("journal.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            use redb::ReadableTable;
            let mut t = txn.open_table(T).unwrap();
            let key = upshift_journal::codec::key(run.parse().unwrap(), 3);
            let mut v = t.get(key.as_slice()).unwrap().unwrap().value().to_vec();
            let n = v.len();
            v[n - 1] ^= 0x01;
            t.insert(key.as_slice(), v.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let r = sb.run(&["resume", &run]);
    r.expect(1);
    assert!(
        r.stderr.contains("corrupt") && r.stderr.contains("seq 3") && r.stderr.contains(&run),
        "{}",
        r.stderr
    );
    // Nothing ran: no new marker beyond what the crashed session wrote.
    let a_before = sb.marker_lines("a").len();
    assert!(a_before <= 1);
    // `log` shows the intact prefix and then reports the damage.
    let log = sb.run(&["log", &run]);
    log.expect(1);
    assert_eq!(log.stdout.lines().count(), 3, "{}", log.stdout);
    assert!(log.stderr.contains("seq 3"));
}
