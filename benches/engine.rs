//! The engine end to end (plan text → parse → scheduler → group-commit
//! writer → redb, durable), measured against journal baselines taken in the
//! same process.
//!
//! - step overhead: a chain of 1,000 no-op steps (`sleep 0s`) vs 2,000
//!   raw `write + fdatasync` calls on a file of the same disk (goal <= 1.5x;
//!   a step transition is one redb commit, which syncs twice), and, for
//!   reference, vs 2,000 single-event durable appends to the redb store;
//! - linear scheduling: a 10,000-step chain vs the 1,000-step chain (goal
//!   <= 11x);
//! - process steps: 100 chained `process` steps running `/bin/true`, guarded
//!   as in a real run, vs 100 raw spawns of `/bin/true` (goal <= 4x);
//! - parallel chains: 8 chains of N vs one chain of 8N (goal <= 0.5x); the
//!   default is N = 125 (`UPSHIFT_BENCH_CHAIN_LEN=1000` for the full size);
//! - critical path: a demo-like plan of sleeps vs the sum of the sleeps on
//!   its critical path (goal <= 1.05x);
//! - journal growth: a `foreach` of 1,800 items journals O(items) events,
//!   and bytes on disk per event vs its encoded size (goal <= 3x).
//!
//! `cargo bench --bench engine`

#![allow(missing_docs)] // criterion_group! generates undocumented fns

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use upshift::engine::{Config, Engine, Exit, Quiet};
use upshift::plan::{LoadOptions, parse};
use upshift_journal::{Actor, Journal, Outcome, RunId, codec};

use common::{Goal, event, median, ms, record, summary};

const CHAIN: usize = 1_000;
const CHAINS: usize = 8;

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args()
}

/// `chains` chains of `len` no-op steps each.
fn chain_plan(chains: usize, len: usize) -> String {
    let mut s = String::from("name = \"chains\"\n");
    for c in 0..chains {
        for i in 0..len {
            s.push_str(&format!(
                "[steps.c{c}_{i}]\nkind = \"sleep\"\nwith = {{ duration = \"0s\" }}\n"
            ));
            if i > 0 {
                s.push_str(&format!("needs = [\"c{c}_{}\"]\n", i - 1));
            }
        }
    }
    s
}

fn engine_config(work: &Path, concurrency: Option<usize>) -> Config {
    Config {
        registry: upshift_steps::registry(),
        concurrency,
        // As `upshift run` does: `upshift-guard` beside it guards processes.
        guard_program: Some(env!("CARGO_BIN_EXE_upshift").into()),
        work_root: work.to_path_buf(),
        actor: Actor::default(),
        observer: Arc::new(Quiet),
        inbox: None,
        journal_dir: None,
        boot: Default::default(),
    }
}

/// Runs `text` as a new run on a journal in `dir` (opened before the clock
/// starts); returns the time from parsing the plan to the run's end, and the
/// run's id.
fn run_plan(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    text: &str,
    concurrency: Option<usize>,
) -> (Duration, RunId) {
    let journal = Journal::open(dir).expect("open journal");
    let run = RunId::new();
    let t = Instant::now();
    let plan = parse(
        Path::new("bench.toml"),
        text,
        &upshift_steps::registry(),
        &LoadOptions::default(),
    )
    .expect("plan parses");
    let mut eng = Engine::new(
        plan,
        engine_config(&dir.join("work"), concurrency),
        journal,
        run,
        &[],
        BTreeMap::new(),
    );
    let exit = rt.block_on(eng.start(BTreeMap::new())).expect("engine");
    let took = t.elapsed();
    assert_eq!(exit, Exit::Finished(Outcome::Succeeded));
    drop(eng); // closes the journal (releases the directory lock)
    (took, run)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// 2,000 single-event durable appends to redb (and, for reference, to a
/// plain file with fdatasync), per iteration.
fn baseline_appends(c: &mut Criterion) {
    let mut g = c.benchmark_group("step_overhead");
    let dir = common::tempdir();
    let mut j = Journal::open(dir.path()).expect("open");
    let run = RunId::new();
    let mut seq = 0u64;
    g.bench_function("baseline_2000_redb_appends", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let evs: Vec<_> = (0..2 * CHAIN as u64).map(|i| event(run, seq + i)).collect();
                let t = Instant::now();
                for e in &evs {
                    j.append(std::slice::from_ref(e)).expect("append");
                }
                total += t.elapsed();
                seq += evs.len() as u64;
            }
            record("steps/baseline_redb", iters, total);
            total
        })
    });
    drop(j);
    let rec = codec::encode(&event(run, 0)).expect("encode");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("plain.log"))
        .expect("open");
    g.bench_function("baseline_2000_file_fdatasyncs", |b| {
        b.iter_custom(|iters| {
            use std::io::Write;
            let t = Instant::now();
            for _ in 0..iters * 2 * CHAIN as u64 {
                f.write_all(&rec).expect("write");
                f.sync_data().expect("fdatasync");
            }
            let took = t.elapsed();
            record("steps/baseline_file", iters, took);
            took
        })
    });
    g.finish();
}

fn step_overhead(c: &mut Criterion) {
    let rt = runtime();
    let one = chain_plan(1, CHAIN);
    let mut g = c.benchmark_group("step_overhead");
    let dir = common::tempdir();
    g.bench_function("chain_1000_noop_steps", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += run_plan(&rt, dir.path(), &one, None).0;
            }
            record("steps/chain1000", iters, total);
            total
        })
    });
    g.finish();
    let (Some(chain), Some(redb), Some(file)) = (
        median("steps/chain1000"),
        median("steps/baseline_redb"),
        median("steps/baseline_file"),
    ) else {
        return;
    };
    summary(
        "step_overhead (1,000-step chain vs 2,000 raw write+fdatasync)",
        &ms(chain),
        &ms(file),
        chain / file,
        Goal::AtMost(1.5),
    );
    summary(
        "step_overhead/redb (1,000-step chain vs 2,000 durable redb appends)",
        &ms(chain),
        &ms(redb),
        chain / redb,
        Goal::Report,
    );
}

/// A 10,000-step chain against the 1,000-step chain of `step_overhead`
/// (same run): scheduling is linear when the ratio is about 10.
fn chain_scaling(c: &mut Criterion) {
    const LONG: usize = 10 * CHAIN;
    let rt = runtime();
    let long = chain_plan(1, LONG);
    let mut g = c.benchmark_group("chain_scaling");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(10));
    let dir = common::tempdir();
    g.bench_function("chain_10000_noop_steps", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += run_plan(&rt, dir.path(), &long, None).0;
            }
            record("steps/chain10000", iters, total);
            total
        })
    });
    g.finish();
    let (Some(long), Some(short)) = (median("steps/chain10000"), median("steps/chain1000")) else {
        return;
    };
    summary(
        "chain_scaling (10,000-step chain vs 1,000-step chain)",
        &ms(long),
        &ms(short),
        long / short,
        Goal::AtMost(11.0),
    );
}

/// 100 chained `process` steps of `/bin/true` (guarded, as `upshift run`
/// runs them) vs 100 raw spawns of `/bin/true`, in the same run.
fn process_steps(c: &mut Criterion) {
    const STEPS: usize = 100;
    let true_bin = ["/bin/true", "/usr/bin/true"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(true_bin) = true_bin else {
        eprintln!("SKIPPED: process_steps because there is no /bin/true here");
        return;
    };
    let rt = runtime();
    let mut text = String::from("name = \"processes\"\n");
    for i in 0..STEPS {
        text.push_str(&format!(
            "[steps.p{i}]\nkind = \"process\"\nwith = {{ program = \"{true_bin}\" }}\n"
        ));
        if i > 0 {
            text.push_str(&format!("needs = [\"p{}\"]\n", i - 1));
        }
    }
    let mut g = c.benchmark_group("process_steps");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_secs(5));
    g.bench_function("baseline_100_spawns_of_true", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters * STEPS as u64 {
                let status = std::process::Command::new(true_bin)
                    .status()
                    .expect("spawn true");
                assert!(status.success());
            }
            let took = t.elapsed();
            record("processes/baseline", iters, took);
            took
        })
    });
    let dir = common::tempdir();
    g.bench_function("chain_100_process_steps_of_true", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += run_plan(&rt, dir.path(), &text, None).0;
            }
            record("processes/chain", iters, total);
            total
        })
    });
    g.finish();
    let (Some(chain), Some(spawns)) = (median("processes/chain"), median("processes/baseline"))
    else {
        return;
    };
    summary(
        "process_steps (100 chained /bin/true process steps vs 100 raw spawns of /bin/true)",
        &ms(chain),
        &ms(spawns),
        chain / spawns,
        Goal::AtMost(4.0),
    );
}

fn parallel_chains(c: &mut Criterion) {
    let rt = runtime();
    let len: usize = std::env::var("UPSHIFT_BENCH_CHAIN_LEN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(125);
    let parallel = chain_plan(CHAINS, len);
    let sequential = chain_plan(1, CHAINS * len);
    let mut g = c.benchmark_group("parallel_chains");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(5));
    let dir = common::tempdir();
    g.bench_function(format!("8_chains_of_{len}"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += run_plan(&rt, dir.path(), &parallel, Some(CHAINS)).0;
            }
            record("chains/parallel", iters, total);
            total
        })
    });
    g.bench_function(format!("1_chain_of_{}", CHAINS * len), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += run_plan(&rt, dir.path(), &sequential, Some(CHAINS)).0;
            }
            record("chains/sequential", iters, total);
            total
        })
    });
    g.finish();
    // Evidence for the verdict: the writer stamps one time per commit, so
    // distinct times = commits. Group commit should make the parallel run
    // need far fewer commits than it has transitions.
    for (name, text) in [("parallel", &parallel), ("sequential", &sequential)] {
        let d = common::tempdir();
        let (_, run) = run_plan(&rt, d.path(), text, Some(CHAINS));
        let j = Journal::open_read_only(d.path()).expect("open");
        let events = j.read_run(run).expect("read");
        let commits = events
            .iter()
            .map(|e| e.time)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        println!(
            "parallel_chains/{name}: {} events in {commits} commits ({:.2} events/commit)",
            events.len(),
            events.len() as f64 / commits as f64
        );
    }
    let (Some(p), Some(s)) = (median("chains/parallel"), median("chains/sequential")) else {
        return;
    };
    summary(
        &format!(
            "parallel_chains (8 chains x {len} vs 1 chain x {} steps)",
            CHAINS * len
        ),
        &ms(p),
        &ms(s),
        p / s,
        Goal::AtMost(0.5),
    );
}

/// A demo-like plan of sleeps; critical path prepare → backup → update →
/// finish = 100 + 300 + 250 + 100 = 750 ms.
const DEMO: &str = r#"
name = "demo"
[steps.prepare]
kind = "sleep"
with = { duration = "100ms" }
[steps.backup]
kind = "sleep"
needs = ["prepare"]
with = { duration = "300ms" }
[steps.conferences]
kind = "sleep"
needs = ["prepare"]
with = { duration = "200ms" }
[steps.certs]
kind = "sleep"
needs = ["prepare"]
with = { duration = "50ms" }
[steps.update]
kind = "sleep"
needs = ["backup", "certs"]
with = { duration = "250ms" }
[steps.finish]
kind = "sleep"
needs = ["update", "conferences"]
with = { duration = "100ms" }
"#;
const DEMO_CRITICAL_MS: f64 = 750.0;

fn critical_path(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("critical_path");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(8));
    let dir = common::tempdir();
    g.bench_function("demo_plan", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += run_plan(&rt, dir.path(), DEMO, None).0;
            }
            record("critical/demo", iters, total);
            total
        })
    });
    g.finish();
    let Some(t) = median("critical/demo") else {
        return;
    };
    summary(
        "critical_path (demo plan wall time vs sum of sleeps on its critical path)",
        &ms(t),
        &ms(DEMO_CRITICAL_MS / 1e3),
        t * 1e3 / DEMO_CRITICAL_MS,
        Goal::AtMost(1.05),
    );
}

/// Not timed: one run of a 1,800-item foreach, counting events and bytes.
fn journal_growth(_: &mut Criterion) {
    const ITEMS: usize = 1_800;
    let rt = runtime();
    let dir = common::tempdir();
    let items: Vec<String> = (0..ITEMS)
        .map(|i| format!("\"conference-{i:04}\""))
        .collect();
    // `true` per item: the run takes seconds, so progress coalescing (one
    // journaled progress per 2 s) cannot hide an O(time) growth behind O(items).
    let text = format!(
        "name = \"growth\"\n[steps.loop]\nkind = \"foreach\"\nwith = {{ items = [{}], program = \"true\" }}\n",
        items.join(", ")
    );
    let (took, run) = run_plan(&rt, dir.path(), &text, None);
    let j = Journal::open_read_only(dir.path()).expect("open");
    let events = j.read_run(run).expect("read");
    let encoded: usize = events
        .iter()
        .map(|e| codec::encode(e).expect("encode").len())
        .sum();
    let file = std::fs::metadata(dir.path().join("journal.redb"))
        .expect("journal file")
        .len() as f64;
    let n = events.len() as f64;
    let kinds = events
        .iter()
        .fold(BTreeMap::<&str, usize>::new(), |mut m, e| {
            *m.entry(e.event.name()).or_default() += 1;
            m
        });
    println!(
        "journal growth: {ITEMS} items in {} -> {} events {kinds:?}; {:.0} encoded bytes/event; {:.0} file bytes/event",
        ms(took.as_secs_f64()),
        events.len(),
        encoded as f64 / n,
        file / n
    );
    summary(
        "journal_growth/events (events per item, 1,800-item foreach)",
        &format!("{} events", events.len()),
        &format!("{ITEMS} items"),
        n / ITEMS as f64,
        Goal::AtMost(1.1),
    );
    summary(
        "journal_growth/bytes (file bytes per event vs encoded bytes per event)",
        &format!("{:.0}B/event", file / n),
        &format!("{:.0}B/event", encoded as f64 / n),
        file / encoded as f64,
        Goal::AtMost(3.0),
    );
}

criterion_group! {
    name = benches;
    config = config();
    targets = baseline_appends, step_overhead, chain_scaling, process_steps, parallel_chains, critical_path, journal_growth
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
