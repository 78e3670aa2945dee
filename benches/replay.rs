//! Replay: fold 1,000,000 events of one run into `RunState`, streaming from
//! the default store (redb), against a bare scan + decode of the same store
//! in the same process. Goal: fold rate >= 0.8x the scan rate.
//!
//! For reference also the path the CLI takes today (`read_run` into a Vec,
//! then `RunState::from_events`).
//!
//! `cargo bench --bench replay` (`UPSHIFT_REPLAY_EVENTS` overrides the count).

#![allow(missing_docs)] // criterion_group! generates undocumented fns

mod common;

use std::hint::black_box;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use upshift::state::RunState;
use upshift_journal::Journal;

use common::{Goal, median, rate, record, summary};

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args()
}

fn replay(c: &mut Criterion) {
    let events: u64 = std::env::var("UPSHIFT_REPLAY_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = common::tempdir();
    let t = Instant::now();
    let run = common::history::write(dir.path(), events, &dir.path().join("marker"));
    let size = std::fs::metadata(dir.path().join("journal.redb"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "replay: wrote {events} events in {:.1}s ({:.0} MiB on disk)",
        t.elapsed().as_secs_f64(),
        size as f64 / (1 << 20) as f64
    );
    let j = Journal::open(dir.path()).expect("open");

    let mut g = c.benchmark_group("replay");
    g.throughput(Throughput::Elements(events));
    g.bench_function("scan_decode", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                let mut n = 0u64;
                j.scan(run, 0, &mut |env| {
                    black_box(&env);
                    n += 1;
                    ControlFlow::Continue(())
                })
                .expect("scan");
                assert_eq!(n, events);
            }
            let took = t.elapsed();
            record("replay/scan", iters * events, took);
            took
        })
    });
    g.bench_function("fold_streaming", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                let mut st = RunState::default();
                j.scan(run, 0, &mut |env| {
                    st.apply(&env);
                    ControlFlow::Continue(())
                })
                .expect("scan");
                assert_eq!(black_box(&st).events, events);
            }
            let took = t.elapsed();
            record("replay/fold", iters * events, took);
            took
        })
    });
    g.bench_function("read_run_then_fold", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                let all = j.read_run(run).expect("read");
                let st = RunState::from_events(&all);
                assert_eq!(black_box(&st).events, events);
            }
            let took = t.elapsed();
            record("replay/vec", iters * events, took);
            took
        })
    });
    g.finish();
    let (Some(scan), Some(fold), Some(vec)) = (
        median("replay/scan"),
        median("replay/fold"),
        median("replay/vec"),
    ) else {
        return;
    };
    summary(
        "replay (streaming fold into RunState vs bare scan+decode, events/s)",
        &rate(fold),
        &rate(scan),
        scan / fold,
        Goal::AtLeast(0.8),
    );
    summary(
        "replay/cli_path (read_run into a Vec then fold, vs bare scan+decode)",
        &rate(vec),
        &rate(scan),
        scan / vec,
        Goal::Report,
    );
}

criterion_group! {
    name = benches;
    config = config();
    targets = replay
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
