//! Damage to a redb journal file: bytes flipped at seeded random places and
//! the file truncated at seeded random lengths. Every open either succeeds
//! and yields exactly the events written, up to the damage, reporting the
//! damage with its run and seq; or refuses with a clear error. Never a panic,
//! never a silently different history.
//!
//! The case count is `UPSHIFT_CORRUPTION_CASES` (default 60 flips + 30
//! truncations); a failure names the seed, so it replays.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use upshift_journal::{Envelope, Event, Journal, JournalError, RunId};

/// Seeded LCG (no dependency; the same numbers on every platform).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A journal of two runs, 150 events each, committed 10 at a time.
fn reference(dir: &Path) -> Vec<(RunId, Vec<Envelope>)> {
    let mut j = Journal::open(dir).unwrap();
    let mut runs = Vec::new();
    for r in 0..2 {
        let run = RunId::new();
        for batch in 0..15u64 {
            let events: Vec<Envelope> = (0..10u64)
                .map(|i| Envelope {
                    run,
                    seq: batch * 10 + i,
                    time: chrono::Utc::now(),
                    event: Event::Note {
                        text: format!("run {r} event {} {}", batch * 10 + i, "p".repeat(150)),
                    },
                })
                .collect();
            j.append(&events).unwrap();
        }
        runs.push(run);
    }
    drop(j);
    let j = Journal::open_read_only(dir).unwrap();
    runs.into_iter()
        .map(|run| (run, j.read_run(run).unwrap()))
        .collect()
}

fn cases() -> (u64, u64) {
    match std::env::var("UPSHIFT_CORRUPTION_CASES")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        Some(n) => (n, n / 2),
        None => (60, 30),
    }
}

#[derive(Default, Debug)]
struct Tally {
    refused: usize,
    intact: usize,
    damage_reported: usize,
}

/// Opens the damaged journal in `dir` and checks the contract against
/// `expected`. `what` names the case for failure messages.
fn check(dir: &Path, expected: &[(RunId, Vec<Envelope>)], what: &str, tally: &mut Tally) {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let j = match Journal::open_read_only(dir) {
            Ok(j) => j,
            Err(e) => return Err(e),
        };
        let runs = j.runs()?;
        let mut seen = Vec::new();
        for run in runs {
            let (events, err) = j.read_run_salvage(run);
            seen.push((run, events, err));
        }
        Ok(seen)
    }));
    let result = match outcome {
        Ok(r) => r,
        Err(_) => panic!("{what}: opening or reading the damaged journal panicked"),
    };
    match result {
        Err(e) => {
            let text = e.to_string();
            assert!(
                text.contains("journal") && text.len() > 20,
                "{what}: unclear refusal: {text}"
            );
            tally.refused += 1;
        }
        Ok(seen) => {
            let mut damaged = false;
            for (run, events, err) in &seen {
                let reference = expected.iter().find(|(r, _)| r == run);
                match reference {
                    // A run id nobody wrote (a damaged key): nothing of it may
                    // be read as history without an error.
                    None => assert!(
                        err.is_some() || events.is_empty(),
                        "{what}: unknown run {run} read without error: {events:?}"
                    ),
                    Some((_, want)) => {
                        assert!(
                            events.len() <= want.len() && events[..] == want[..events.len()],
                            "{what}: run {run}: the events read differ from those written"
                        );
                        if events.len() < want.len() {
                            let err = err.as_ref().unwrap_or_else(|| {
                                panic!(
                                    "{what}: run {run}: {} of {} events and no damage reported",
                                    events.len(),
                                    want.len()
                                )
                            });
                            if let JournalError::Corrupt { run: r, seq, .. } = err {
                                assert_eq!(r, run, "{what}: damage reported on the wrong run");
                                assert_eq!(
                                    *seq,
                                    events.len() as u64,
                                    "{what}: damage reported at the wrong seq"
                                );
                            }
                            assert!(err.to_string().contains("journal"), "{what}: {err}");
                        }
                        if err.is_some() {
                            damaged = true;
                        }
                    }
                }
            }
            // A run whose key range was damaged may vanish from `runs()`;
            // its events are then not shown at all (a refusal, not a
            // different history), which the check above cannot see.
            if damaged {
                tally.damage_reported += 1;
            } else {
                tally.intact += 1;
            }
        }
    }
}

fn copy_of(reference: &[u8], bytes: impl FnOnce(&mut Vec<u8>)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut b = reference.to_vec();
    bytes(&mut b);
    std::fs::write(dir.path().join("journal.redb"), b).unwrap();
    dir
}

/// Offsets worth flipping: where records live (the run ids of keys and the
/// text of records), plus anywhere in the file.
fn interesting(file: &[u8], runs: &[RunId]) -> Vec<usize> {
    let mut out = Vec::new();
    for run in runs {
        let id = run.to_bytes();
        out.extend(
            file.windows(16)
                .enumerate()
                .filter(|(_, w)| *w == id)
                .map(|(i, _)| i),
        );
    }
    out.extend(
        file.windows(8)
            .enumerate()
            .filter(|(_, w)| *w == b"event 1 ")
            .map(|(i, _)| i),
    );
    out
}

#[test]
fn flipped_bytes_are_reported_or_refused_never_a_different_history() {
    let src = tempfile::tempdir().unwrap();
    let expected = reference(src.path());
    let file = std::fs::read(src.path().join("journal.redb")).unwrap();
    let runs: Vec<RunId> = expected.iter().map(|(r, _)| *r).collect();
    let hot = interesting(&file, &runs);
    assert!(!hot.is_empty(), "records not found in the file");
    let (flips, _) = cases();
    let mut tally = Tally::default();
    for seed in 0..flips {
        let mut rng = Lcg(seed ^ 0xC0FFEE);
        // Half near records, half anywhere; 1 to 4 bytes each.
        let count = 1 + rng.below(4);
        let mut at = Vec::new();
        for _ in 0..count {
            let off = if seed % 2 == 0 {
                let base = hot[rng.below(hot.len() as u64) as usize];
                (base + rng.below(40) as usize).min(file.len() - 1)
            } else {
                rng.below(file.len() as u64) as usize
            };
            at.push((off, 1u8 << rng.below(8)));
        }
        if std::env::var_os("UPSHIFT_CORRUPTION_VERBOSE").is_some() {
            eprintln!("seed {seed}: flips {at:?}");
        }
        let dir = copy_of(&file, |b| {
            for (off, bit) in &at {
                b[*off] ^= bit;
            }
        });
        check(
            dir.path(),
            &expected,
            &format!("seed {seed}: flips {at:?}"),
            &mut tally,
        );
    }
    eprintln!("flips: {tally:?}");
    assert!(
        tally.damage_reported + tally.refused > 0,
        "no flip was ever noticed: the test flips nothing that matters"
    );
}

#[test]
fn truncated_files_are_reported_or_refused_never_a_different_history() {
    let src = tempfile::tempdir().unwrap();
    let expected = reference(src.path());
    let file = std::fs::read(src.path().join("journal.redb")).unwrap();
    let (_, truncations) = cases();
    let mut tally = Tally::default();
    for seed in 0..truncations {
        let mut rng = Lcg(seed ^ 0x7A11);
        let len = rng.below(file.len() as u64) as usize;
        let dir = copy_of(&file, |b| b.truncate(len));
        check(
            dir.path(),
            &expected,
            &format!("seed {seed}: truncated to {len} of {} bytes", file.len()),
            &mut tally,
        );
    }
    eprintln!("truncations: {tally:?}");
    assert!(tally.refused + tally.damage_reported > 0);
}

#[test]
fn a_record_damaged_through_redb_is_reported_at_its_seq_in_every_run() {
    // Damage a record body through redb itself (its page checksums stay
    // valid), so only the journal's own checksum can tell.
    let src = tempfile::tempdir().unwrap();
    let expected = reference(src.path());
    let (run, want) = &expected[1];
    {
        const T: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("events");
        let db = redb::Database::create(src.path().join("journal.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            use redb::ReadableTable;
            let mut t = txn.open_table(T).unwrap();
            let key = upshift_journal::codec::key(*run, 77);
            let mut v = t.get(key.as_slice()).unwrap().unwrap().value().to_vec();
            v[20] ^= 0x40;
            t.insert(key.as_slice(), v.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let j = Journal::open_read_only(src.path()).unwrap();
    let (events, err) = j.read_run_salvage(*run);
    assert_eq!(&events[..], &want[..77]);
    match err {
        Some(JournalError::Corrupt { run: r, seq, .. }) => {
            assert_eq!((r, seq), (*run, 77));
        }
        other => panic!("expected Corrupt at seq 77, got {other:?}"),
    }
    // The other run is untouched.
    assert_eq!(j.read_run(expected[0].0).unwrap(), expected[0].1);
}

#[test]
fn a_reader_beside_a_live_writer_never_reports_false_damage() {
    // The damage checks after a scan (run head, last key) must use the
    // scan's own snapshot: a commit landing between them is not damage.
    let dir = tempfile::tempdir().unwrap();
    let run = RunId::new();
    let mut w = Journal::open(dir.path()).unwrap();
    let note = move |seq: u64| Envelope {
        run,
        seq,
        time: chrono::Utc::now(),
        event: Event::Note {
            text: format!("event {seq}"),
        },
    };
    w.append(&[note(0)]).unwrap();
    let r = Journal::open_read_only(dir.path()).unwrap();
    let writer = std::thread::spawn(move || {
        for seq in 1..300 {
            w.append(&[note(seq)]).unwrap();
        }
    });
    let mut reads = 0;
    while !writer.is_finished() || reads == 0 {
        let events = r
            .read_run(run)
            .unwrap_or_else(|e| panic!("read {reads}: false damage beside a live writer: {e}"));
        assert!(events.iter().enumerate().all(|(i, e)| e.seq == i as u64));
        reads += 1;
    }
    writer.join().unwrap();
    assert_eq!(r.read_run(run).unwrap().len(), 300);
}
