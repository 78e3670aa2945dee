//! A long run for replay and resume benchmarks: `RunStarted`, one step
//! (`long`) with `events - 4` checkpoints and progress events of ~200 bytes,
//! its success, then nothing: the run is resumable, and resuming starts the
//! step `mark`, which writes the time it started (`date +%s.%N`) to a file.

use std::collections::BTreeMap;
use std::path::Path;

use upshift_journal::{Actor, Envelope, Event, Journal, RunId};

/// The plan the run pins. `@MARK@` is replaced by the marker file.
pub const PLAN: &str = r#"name = "replay"
[steps.long]
kind = "sleep"
with = { duration = "0s" }
[steps.mark]
kind = "process"
needs = ["long"]
with = { program = "sh", args = ["-c", "date +%s.%N > '@MARK@'"] }
"#;

/// Writes the run into the journal in `dir`, in commits of 10,000 events;
/// returns its id.
pub fn write(dir: &Path, events: u64, marker: &Path) -> RunId {
    let mut j = Journal::open(dir).expect("open journal");
    let run = RunId::new();
    let text = PLAN.replace("@MARK@", &marker.display().to_string());
    let now = chrono::Utc::now();
    let data = vec![b'c'; 150];
    let message = "m".repeat(150);
    let mut batch = Vec::with_capacity(10_000);
    let flush = |j: &mut Journal, batch: &mut Vec<Envelope>| {
        j.append(batch).expect("append");
        batch.clear();
    };
    for seq in 0..events {
        let event = if seq == 0 {
            Event::RunStarted {
                plan_name: "replay".into(),
                plan_path: "/bench/replay.toml".into(),
                plan_hash: upshift::plan::hash_text(&text),
                plan_text: text.clone(),
                vars: BTreeMap::new(),
                engine_version: env!("CARGO_PKG_VERSION").into(),
                actor: Actor::default(),
            }
        } else if seq == 1 {
            Event::StepStarted {
                step: "long".into(),
                attempt: 1,
                resumed_from_checkpoint: false,
            }
        } else if seq == events - 1 {
            Event::StepSucceeded {
                step: "long".into(),
                attempt: 1,
                outputs: BTreeMap::new(),
                output_tail: String::new(),
                reboot_required: false,
            }
        } else if seq % 2 == 0 {
            Event::StepCheckpoint {
                step: "long".into(),
                data: data.clone(),
                done: seq,
                total: events,
            }
        } else {
            Event::StepProgress {
                step: "long".into(),
                done: seq,
                total: events,
                message: message.clone(),
            }
        };
        batch.push(Envelope {
            run,
            seq,
            time: now,
            event,
        });
        if batch.len() == 10_000 {
            flush(&mut j, &mut batch);
        }
    }
    if !batch.is_empty() {
        flush(&mut j, &mut batch);
    }
    run
}
