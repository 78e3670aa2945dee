//! Shared by every bench: a ~200-byte event, a recorder of per-iteration
//! times (criterion's `iter_custom` feeds it), and the summary line each
//! goal prints: `SUMMARY <goal>: figure=.. baseline=.. ratio=.. goal=.. PASS|MISS`.
//!
//! Every goal is a ratio against a baseline measured in the same process,
//! so the verdict holds on a noisy, shared machine.

#![allow(dead_code, missing_docs)]

pub mod history;
mod summary;

// Not every includer prints summaries (the gen_journal example does not).
#[allow(unused_imports)]
pub use summary::{Goal, summary};

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use upshift_journal::{Envelope, Event, RunId, codec};

/// Size of the benchmark event, encoded (header + bincode body).
pub const EVENT_BYTES: usize = 200;

/// A note event of `run` at `seq` whose record is exactly [`EVENT_BYTES`]
/// long (the text is sized by encoding once).
pub fn event(run: RunId, seq: u64) -> Envelope {
    let mut env = Envelope {
        run,
        seq,
        time: chrono::Utc::now(),
        event: Event::Note {
            text: String::new(),
        },
    };
    let base = codec::encode(&env).expect("encode").len();
    // One length byte for texts under 251 bytes (bincode varint).
    let text_len = EVENT_BYTES.saturating_sub(base);
    env.event = Event::Note {
        text: "x".repeat(text_len),
    };
    env
}

/// The event of [`event`] without an envelope (for the engine's `Writer`).
pub fn note_event() -> Event {
    event(RunId::new(), 0).event
}

static TIMES: Mutex<BTreeMap<String, Vec<f64>>> = Mutex::new(BTreeMap::new());

/// Records one criterion sample: `iters` units took `took`.
pub fn record(name: &str, iters: u64, took: Duration) {
    if iters == 0 {
        return;
    }
    TIMES
        .lock()
        .expect("poisoned")
        .entry(name.to_string())
        .or_default()
        .push(took.as_secs_f64() / iters as f64);
}

/// Median seconds per unit of everything recorded under `name`; `None`
/// if nothing was (the bench was filtered out on the command line).
pub fn median(name: &str) -> Option<f64> {
    let times = TIMES.lock().expect("poisoned");
    let mut v = times.get(name).cloned().unwrap_or_default();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    Some(v[v.len() / 2])
}

/// Events per second from seconds per event.
pub fn rate(secs_per_event: f64) -> String {
    format!("{:.0}/s", 1.0 / secs_per_event)
}

/// Milliseconds, for wall times.
pub fn ms(secs: f64) -> String {
    format!("{:.1}ms", secs * 1e3)
}

/// A directory for a bench's journal on the real disk (not tmpfs): under
/// `UPSHIFT_BENCH_DIR`, else the system temp dir.
pub fn tempdir() -> tempfile::TempDir {
    match std::env::var_os("UPSHIFT_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).expect("tempdir"),
        None => tempfile::tempdir().expect("tempdir"),
    }
}
