//! The storage contract, run against every store: memory, redb, and sled
//! (with `--features sled`). One macro instantiates the suite per store.

use std::ops::ControlFlow;
use std::path::Path;

use upshift_journal::{Envelope, Event, Journal, JournalError, RunId};

fn ev(run: RunId, seq: u64, text: &str) -> Envelope {
    Envelope {
        run,
        seq,
        time: chrono::Utc::now(),
        event: Event::Note {
            text: text.to_string(),
        },
    }
}

fn texts(j: &Journal, run: RunId) -> Vec<String> {
    j.read_run(run)
        .unwrap()
        .into_iter()
        .map(|e| match e.event {
            Event::Note { text } => text,
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

/// A store under test: how to open it fresh, and how to reopen it (None for
/// memory, which does not survive).
trait Subject {
    fn open(dir: &Path) -> Journal;
    fn persistent() -> bool;
}

struct Memory;
impl Subject for Memory {
    fn open(_: &Path) -> Journal {
        Journal::memory()
    }
    fn persistent() -> bool {
        false
    }
}

struct Redb;
impl Subject for Redb {
    fn open(dir: &Path) -> Journal {
        Journal::open(dir).unwrap()
    }
    fn persistent() -> bool {
        true
    }
}

#[cfg(feature = "sled")]
struct Sled;
#[cfg(feature = "sled")]
impl Subject for Sled {
    fn open(dir: &Path) -> Journal {
        std::fs::create_dir_all(dir.join("journal.sled")).unwrap();
        let j = Journal::open(dir).unwrap();
        assert_eq!(j.kind(), "sled");
        j
    }
    fn persistent() -> bool {
        true
    }
}

fn appends_and_reads_in_order<S: Subject>() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = S::open(dir.path());
    let a = RunId::new();
    let b = RunId::new();
    j.append(&[ev(a, 0, "a0"), ev(b, 0, "b0"), ev(a, 1, "a1")])
        .unwrap();
    j.append(&[ev(b, 1, "b1")]).unwrap();
    assert_eq!(texts(&j, a), ["a0", "a1"]);
    assert_eq!(texts(&j, b), ["b0", "b1"]);
    assert_eq!(j.runs().unwrap(), vec![a, b]);
    assert_eq!(j.next_seq(a).unwrap(), 2);
    assert_eq!(j.next_seq(RunId::new()).unwrap(), 0);
}

fn refuses_gaps_and_overwrites_writing_nothing<S: Subject>() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = S::open(dir.path());
    let a = RunId::new();
    j.append(&[ev(a, 0, "a0")]).unwrap();
    let gap = j.append(&[ev(a, 1, "ok"), ev(a, 3, "gap")]);
    assert!(matches!(
        gap,
        Err(JournalError::SeqGap {
            expected: 2,
            got: 3,
            ..
        })
    ));
    let overwrite = j.append(&[ev(a, 0, "again")]);
    assert!(matches!(overwrite, Err(JournalError::SeqGap { .. })));
    assert_eq!(texts(&j, a), ["a0"]);
}

fn scan_from_middle_and_stop_early<S: Subject>() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = S::open(dir.path());
    let a = RunId::new();
    let batch: Vec<_> = (0..100).map(|i| ev(a, i, &i.to_string())).collect();
    j.append(&batch).unwrap();
    let mut seen = Vec::new();
    j.scan(a, 40, &mut |e| {
        seen.push(e.seq);
        if seen.len() == 5 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert_eq!(seen, [40, 41, 42, 43, 44]);
}

fn survives_reopen<S: Subject>() {
    if !S::persistent() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = RunId::new();
    {
        let mut j = S::open(dir.path());
        j.append(&[ev(a, 0, "x"), ev(a, 1, "y")]).unwrap();
    }
    let mut j = S::open(dir.path());
    assert_eq!(texts(&j, a), ["x", "y"]);
    j.append(&[ev(a, 2, "z")]).unwrap();
    assert_eq!(j.next_seq(a).unwrap(), 3);
}

fn second_writer_is_refused_naming_the_holder<S: Subject>() {
    if !S::persistent() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let _first = S::open(dir.path());
    match Journal::open(dir.path()) {
        Err(JournalError::Locked { holder_pid, .. }) => {
            assert_eq!(holder_pid, Some(std::process::id()))
        }
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("second writer opened a locked journal"),
    }
}

macro_rules! contract {
    ($name:ident, $subject:ty) => {
        mod $name {
            use super::*;
            #[test]
            fn appends_and_reads_in_order() {
                super::appends_and_reads_in_order::<$subject>();
            }
            #[test]
            fn refuses_gaps_and_overwrites_writing_nothing() {
                super::refuses_gaps_and_overwrites_writing_nothing::<$subject>();
            }
            #[test]
            fn scan_from_middle_and_stop_early() {
                super::scan_from_middle_and_stop_early::<$subject>();
            }
            #[test]
            fn survives_reopen() {
                super::survives_reopen::<$subject>();
            }
            #[test]
            fn second_writer_is_refused_naming_the_holder() {
                super::second_writer_is_refused_naming_the_holder::<$subject>();
            }
        }
    };
}

contract!(memory, Memory);
contract!(redb, Redb);
#[cfg(feature = "sled")]
contract!(sled, Sled);

#[test]
fn memory_corrupt_record_is_reported_with_run_and_seq() {
    let mut store = upshift_journal::store::memory::MemoryStore::new();
    let a = RunId::new();
    use upshift_journal::JournalStore;
    store
        .append(&[ev(a, 0, "ok"), ev(a, 1, "bad"), ev(a, 2, "after")])
        .unwrap();
    let rec = store.record_mut(a, 1).unwrap();
    let last = rec.len() - 1;
    rec[last] ^= 0x40;
    let j = Journal::from_store(Box::new(store));
    let (good, err) = j.read_run_salvage(a);
    assert_eq!(good.len(), 1);
    match err {
        Some(JournalError::Corrupt { run, seq, .. }) => {
            assert_eq!((run, seq), (a, 1));
        }
        other => panic!("expected Corrupt at seq 1, got {other:?}"),
    }
}

#[test]
fn redb_corrupt_record_is_reported_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let a = RunId::new();
    {
        let mut j = Journal::open(dir.path()).unwrap();
        j.append(&[ev(a, 0, "ok"), ev(a, 1, "bad"), ev(a, 2, "after")])
            .unwrap();
    }
    // Damage one record's body in place, through redb itself, so only our
    // checksum can notice.
    {
        const T: ::redb::TableDefinition<&[u8], &[u8]> = ::redb::TableDefinition::new("events");
        let mut b = ::redb::Builder::new();
        b.set_concurrency_mode(::redb::ConcurrencyMode::SingleWriter);
        let db = b.create(dir.path().join("journal.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(T).unwrap();
            let k = upshift_journal::codec::key(a, 1);
            let mut v = {
                use ::redb::ReadableTable;
                t.get(k.as_slice()).unwrap().unwrap().value().to_vec()
            };
            let n = v.len();
            v[n - 2] ^= 1;
            t.insert(k.as_slice(), v.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let j = Journal::open(dir.path()).unwrap();
    let err = j.read_run(a).unwrap_err();
    assert!(
        matches!(err, JournalError::Corrupt { seq: 1, .. }),
        "got {err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&a.to_string()) && msg.contains("seq 1"),
        "{msg}"
    );
}

#[test]
fn redb_reader_follows_a_live_writer() {
    let dir = tempfile::tempdir().unwrap();
    let a = RunId::new();
    let mut w = Journal::open(dir.path()).unwrap();
    w.append(&[ev(a, 0, "first")]).unwrap();
    let r = Journal::open_read_only(dir.path()).unwrap();
    assert_eq!(texts(&r, a), ["first"]);
    w.append(&[ev(a, 1, "second")]).unwrap();
    assert_eq!(texts(&r, a), ["first", "second"]);
}
