//! Durable appends, one writer, each event its own durable commit, for every
//! store (redb; sled with `--features sled`), against the physical baseline
//! measured in the same run: append the same ~200-byte record to a plain
//! file and `fdatasync` it (`File::sync_data`) per event.
//!
//! Then group commit: 8 concurrent writers through the engine's `Writer`
//! (one writer thread, one commit per queue drain) against one writer
//! through the same `Writer` and store. Goal: >= 3x the one-writer rate.
//!
//! `cargo bench --bench append` (add `--features sled` for sled).

#![allow(missing_docs)] // criterion_group! generates undocumented fns

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use upshift::engine::{Redactor, Writer};
#[cfg(feature = "sled")]
use upshift_journal::JournalStore;
use upshift_journal::{Journal, RunId, codec};

use common::{Goal, event, median, note_event, rate, record, summary};

const WRITERS: usize = 8;

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args()
}

fn durable_append(c: &mut Criterion) {
    let mut g = c.benchmark_group("durable_append");
    g.throughput(Throughput::Elements(1));

    // Baseline: plain file, append + fdatasync per event.
    {
        let dir = common::tempdir();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("plain.log"))
            .expect("open");
        let record_bytes = codec::encode(&event(RunId::new(), 0)).expect("encode");
        assert_eq!(record_bytes.len(), common::EVENT_BYTES);
        g.bench_function("file_fdatasync", |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    f.write_all(&record_bytes).expect("write");
                    f.sync_data().expect("fdatasync");
                }
                let took = t.elapsed();
                record("append/file", iters, took);
                took
            })
        });
    }

    // redb through the Journal (what the engine's writer thread calls).
    {
        let dir = common::tempdir();
        let mut j = Journal::open(dir.path()).expect("open redb journal");
        let run = RunId::new();
        let mut seq = 0u64;
        g.bench_function("redb", |b| {
            b.iter_custom(|iters| {
                let evs: Vec<_> = (0..iters).map(|i| event(run, seq + i)).collect();
                let t = Instant::now();
                for e in &evs {
                    j.append(std::slice::from_ref(e)).expect("append");
                }
                let took = t.elapsed();
                seq += iters;
                record("append/redb", iters, took);
                took
            })
        });
    }

    // redb alone, one table, one insert + commit per event: what the redb
    // store cost before it also kept its per-run head (see RESULTS.md).
    {
        const T: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("events");
        let dir = common::tempdir();
        let db = redb::Database::create(dir.path().join("raw.redb")).expect("create");
        let run = RunId::new();
        let mut seq = 0u64;
        g.bench_function("redb_raw", |b| {
            b.iter_custom(|iters| {
                let recs: Vec<_> = (0..iters)
                    .map(|i| {
                        let e = event(run, seq + i);
                        (codec::key(run, seq + i), codec::encode(&e).expect("encode"))
                    })
                    .collect();
                let t = Instant::now();
                for (k, v) in &recs {
                    let txn = db.begin_write().expect("txn");
                    {
                        let mut table = txn.open_table(T).expect("table");
                        table.insert(k.as_slice(), v.as_slice()).expect("insert");
                    }
                    txn.commit().expect("commit");
                }
                let took = t.elapsed();
                seq += iters;
                record("append/redb_raw", iters, took);
                took
            })
        });
    }

    #[cfg(feature = "sled")]
    {
        let dir = common::tempdir();
        let mut s = upshift_journal::store::sled::SledStore::open(&dir.path().join("journal.sled"))
            .expect("open sled");
        let run = RunId::new();
        let mut seq = 0u64;
        g.bench_function("sled", |b| {
            b.iter_custom(|iters| {
                let evs: Vec<_> = (0..iters).map(|i| event(run, seq + i)).collect();
                let t = Instant::now();
                for e in &evs {
                    s.append(std::slice::from_ref(e)).expect("append");
                }
                let took = t.elapsed();
                seq += iters;
                record("append/sled", iters, took);
                took
            })
        });
    }
    g.finish();

    let Some(file) = median("append/file") else {
        return;
    };
    for store in ["redb", "redb_raw", "sled"] {
        if cfg!(not(feature = "sled")) && store == "sled" {
            continue;
        }
        let Some(t) = median(&format!("append/{store}")) else {
            continue;
        };
        summary(
            &format!("durable_append/{store} (time per event vs file+fdatasync)"),
            &format!("{} ({:.0}us/event)", rate(t), t * 1e6),
            &format!("{} ({:.0}us/event)", rate(file), file * 1e6),
            t / file,
            Goal::Report,
        );
    }
}

/// About `n` events (rounded up to a multiple of `writers`), one per
/// `write`, from `writers` tasks at once, each on its own run, through
/// `writer`. Returns the wall time and the number of events written.
fn through_writer(
    rt: &tokio::runtime::Runtime,
    writer: &Writer,
    writers: usize,
    n: u64,
) -> (Duration, u64) {
    let per = n.div_ceil(writers as u64);
    let ev = note_event();
    let t = Instant::now();
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..writers {
            let w = writer.clone();
            let ev = ev.clone();
            let run = RunId::new();
            set.spawn(async move {
                for _ in 0..per {
                    w.write(run, vec![ev.clone()]).await.expect("write");
                }
            });
        }
        while let Some(r) = set.join_next().await {
            r.expect("writer task");
        }
    });
    (t.elapsed(), per * writers as u64)
}

fn group_commit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut stores = vec!["redb"];
    if cfg!(feature = "sled") {
        stores.push("sled");
    }
    let mut g = c.benchmark_group("group_commit");
    g.throughput(Throughput::Elements(1));
    for store in stores {
        for writers in [1, WRITERS] {
            let dir = common::tempdir();
            let journal = open(store, dir.path());
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            drop(rx); // committed envelopes are not needed here
            let writer = Writer::start(journal, Redactor::default(), tx);
            let key = format!("group/{store}/{writers}");
            g.bench_function(format!("{store}/{writers}_writers"), |b| {
                b.iter_custom(|iters| {
                    let (took, n) = through_writer(&rt, &writer, writers, iters);
                    record(&key, n, took);
                    Duration::from_secs_f64(took.as_secs_f64() * iters as f64 / n as f64)
                })
            });
            writer.close();
        }
    }
    g.finish();
    for store in ["redb", "sled"] {
        if cfg!(not(feature = "sled")) && store == "sled" {
            continue;
        }
        let (Some(one), Some(many)) = (
            median(&format!("group/{store}/1")),
            median(&format!("group/{store}/{WRITERS}")),
        ) else {
            continue;
        };
        summary(
            &format!("group_commit/{store} ({WRITERS} writers vs 1, events/s)"),
            &rate(many),
            &rate(one),
            one / many,
            Goal::AtLeast(3.0),
        );
    }
}

fn open(store: &str, dir: &std::path::Path) -> Journal {
    match store {
        "redb" => Journal::open(dir).expect("open redb"),
        #[cfg(feature = "sled")]
        "sled" => Journal::from_store(Box::new(
            upshift_journal::store::sled::SledStore::open(&dir.join("journal.sled"))
                .expect("open sled"),
        )),
        other => panic!("unknown store {other}"),
    }
}

criterion_group! {
    name = benches;
    config = config();
    targets = durable_append, group_commit
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
