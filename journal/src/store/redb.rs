//! The default store: one redb file, `journal.redb`, opened in redb's
//! `SingleWriter` mode so that other processes can open it read-only and
//! follow a live run (`upshift status --follow`) while the engine writes.
//! Every commit uses redb's default `Durability::Immediate` (fsync).

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use redb::{ConcurrencyMode, ReadableDatabase, TableDefinition};

use super::memory::next_run_key;
use super::{
    JournalError, JournalStore, catch_store_panic, decode_at, encode_batch, rethrow_visitor_panic,
    visit_outside_guard,
};
use crate::codec;
use crate::event::{Envelope, RunId};

const EVENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("events");
/// Run id (16 bytes) → one past its last seq, written in the same commit as
/// the events. Why: a damaged key in redb's pages can end a range scan early
/// without any error, and redb has no page checksums to notice; comparing
/// with the head turns a silently shorter history into reported damage.
/// Journals written before this table existed simply lack it. A table of its
/// own, not a key beside the run's events: a head in the events' own leaf page
/// was cut off together with them by the same damaged branch key (seeded
/// corruption test); the table costs ~25 us per commit (~7%).
const HEADS: TableDefinition<&[u8], u64> = TableDefinition::new("heads");

enum Handle {
    Writer(redb::Database),
    Reader(redb::ReadOnlyDatabase),
}

/// A journal in one redb file.
pub struct RedbStore {
    db: Handle,
    /// The journal's file (named in errors, also when reading a copy).
    path: PathBuf,
    /// The recovered private copy being read, removed on drop (declared
    /// after `db`, so the database closes first).
    _copy: Option<PrivateCopy>,
    /// The first I/O error a write met. After one, redb answers every
    /// write with "Previous I/O error occurred": the operator is told this
    /// original cause (a full disk, its OS error) instead.
    first_io: Option<FirstIo>,
}

/// An I/O error kept to be reported again (io::Error is not Clone).
struct FirstIo {
    kind: std::io::ErrorKind,
    os: Option<i32>,
    text: String,
}

impl FirstIo {
    fn of(e: &JournalError) -> Option<FirstIo> {
        match e {
            JournalError::Io { source, .. } | JournalError::DiskFull { source, .. } => {
                Some(FirstIo {
                    kind: source.kind(),
                    os: source.raw_os_error(),
                    text: source.to_string(),
                })
            }
            _ => None,
        }
    }

    fn error(&self, path: &Path) -> JournalError {
        let source = match self.os {
            Some(code) => std::io::Error::from_raw_os_error(code),
            None => std::io::Error::new(self.kind, self.text.clone()),
        };
        JournalError::io(path, source)
    }
}

/// redb's answer to every write after a failed one.
const PREVIOUS_IO: &str = "redb: a previous I/O error left the database needing a reopen";

/// A copy of a journal file in a private temporary folder, removed on drop.
struct PrivateCopy {
    dir: PathBuf,
}

impl PrivateCopy {
    fn of(path: &Path) -> std::io::Result<PrivateCopy> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "upshift-read-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        upshift_fsutil::create_private_dir_all(&dir)?;
        let copy = PrivateCopy { dir };
        std::fs::copy(path, copy.file())?;
        Ok(copy)
    }

    fn file(&self) -> PathBuf {
        self.dir.join("journal.redb")
    }
}

impl Drop for PrivateCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// redb's page cache. Its default (1 GiB) lets a scan of a long run keep
/// every page it read; a journal is read once from start to end and appended
/// at its end, so a small cache costs nothing and bounds the engine's memory.
pub const CACHE_BYTES: usize = 16 * 1024 * 1024;

fn builder() -> redb::Builder {
    let mut b = redb::Builder::new();
    b.set_concurrency_mode(ConcurrencyMode::SingleWriter);
    b.set_cache_size(CACHE_BYTES);
    b
}

impl RedbStore {
    /// Opens (creating if needed) the file for writing.
    pub fn open(path: &Path) -> Result<RedbStore, JournalError> {
        if !path.exists() {
            create_atomically(path)?;
        }
        let db = builder().open(path).map_err(|e| map_err(path, e))?;
        Ok(RedbStore {
            db: Handle::Writer(db),
            path: path.to_path_buf(),
            _copy: None,
            first_io: None,
        })
    }

    /// Opens an existing file read-only, beside a live writer if there is
    /// one; never writes to it. A file whose writer died needs a repair
    /// (redb: "repair aborted" for a reader), and a repair writes: the
    /// reader repairs a private copy in the temporary folder instead and
    /// reads that (a snapshot; only a writer's open repairs the journal).
    pub fn open_read_only(path: &Path) -> Result<RedbStore, JournalError> {
        let shared = guard(path, || match builder().open_read_only(path) {
            Ok(db) => Ok(Some(db)),
            Err(redb::DatabaseError::RepairAborted) => Ok(None),
            Err(e) => Err(map_err(path, e)),
        })?;
        if let Some(db) = shared {
            return Ok(RedbStore {
                db: Handle::Reader(db),
                path: path.to_path_buf(),
                _copy: None,
                first_io: None,
            });
        }
        let needs = |detail: String| JournalError::NeedsRecovery {
            path: path.to_path_buf(),
            detail,
        };
        let copy = PrivateCopy::of(path)
            .map_err(|e| needs(format!("cannot copy it to a temporary folder: {e}")))?;
        let db = guard(path, || {
            builder()
                .open(copy.file())
                .map_err(|e| needs(format!("its recovered copy: {e}")))
        })?;
        Ok(RedbStore {
            db: Handle::Writer(db),
            path: path.to_path_buf(),
            _copy: Some(copy),
            first_io: None,
        })
    }

    fn read(&self) -> Result<redb::ReadTransaction, JournalError> {
        match &self.db {
            Handle::Writer(db) => db.begin_read(),
            Handle::Reader(db) => db.begin_read(),
        }
        .map_err(|e| map_err(&self.path, e))
    }

    fn with_table<T>(
        &self,
        f: impl FnOnce(&redb::ReadOnlyTable<&'static [u8], &'static [u8]>) -> Result<T, JournalError>,
    ) -> Result<T, JournalError> {
        guard(&self.path, || {
            let txn = self.read()?;
            let table = txn.open_table(EVENTS).map_err(|e| map_err(&self.path, e))?;
            f(&table)
        })
    }
}

/// Runs a redb call, turning a panic of redb's (a damaged page it trusted)
/// into [`JournalError::Damaged`]; a panic of the caller's visitor goes on.
fn guard<T>(path: &Path, f: impl FnOnce() -> Result<T, JournalError>) -> Result<T, JournalError> {
    match catch_store_panic(f) {
        Ok(r) => r,
        Err(message) => {
            rethrow_visitor_panic();
            Err(JournalError::Damaged {
                path: path.to_path_buf(),
                detail: format!("redb failed reading its own pages ({message})"),
            })
        }
    }
}

/// Creates a new journal file under a temporary name and renames it into
/// place, so that a process killed while creating it never leaves a file
/// with a half-written header (which redb would refuse to open: "not a redb
/// database").
fn create_atomically(path: &Path) -> Result<(), JournalError> {
    let tmp = path.with_extension(format!("redb.creating-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    {
        let db = builder().create(&tmp).map_err(|e| map_err(&tmp, e))?;
        // The table exists from the start, so readers never see "no such table".
        let txn = db.begin_write().map_err(|e| map_err(&tmp, e))?;
        txn.open_table(EVENTS).map_err(|e| map_err(&tmp, e))?;
        txn.commit().map_err(|e| map_err(&tmp, e))?;
    }
    // Only the owner reads the journal (the folder is owner-only too).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| JournalError::io(&tmp, e))?;
    }
    upshift_fsutil::rename_durable(&tmp, path).map_err(|e| JournalError::io(path, e))?;
    // Leftovers of creations killed before their rename.
    if let (Some(dir), Some(name)) = (path.parent(), path.file_name())
        && let Ok(rd) = std::fs::read_dir(dir)
    {
        let prefix = format!(
            "{}.creating-",
            name.to_string_lossy().trim_end_matches(".redb")
        );
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

/// Maps any redb error, recognising a full disk and a damaged file.
fn map_err(path: &Path, e: impl Into<redb::Error>) -> JournalError {
    let e: redb::Error = e.into();
    match e {
        redb::Error::Io(io) => JournalError::io(path, io),
        redb::Error::Corrupted(detail) => JournalError::Damaged {
            path: path.to_path_buf(),
            detail,
        },
        redb::Error::PreviousIo => JournalError::Backend {
            path: path.to_path_buf(),
            detail: PREVIOUS_IO.into(),
        },
        redb::Error::DatabaseAlreadyOpen => JournalError::Locked {
            path: path.to_path_buf(),
            holder_pid: None,
        },
        other => JournalError::Backend {
            path: path.to_path_buf(),
            detail: other.to_string(),
        },
    }
}

impl JournalStore for RedbStore {
    fn kind(&self) -> &'static str {
        "redb"
    }

    fn append(&mut self, batch: &[Envelope]) -> Result<(), JournalError> {
        // A recovered copy is read, never written.
        let (Handle::Writer(db), None) = (&self.db, &self._copy) else {
            return Err(JournalError::ReadOnly);
        };
        let records = encode_batch(batch)?;
        let path = &self.path;
        let result = guard(path, || {
            let txn = db.begin_write().map_err(|e| map_err(path, e))?;
            {
                let mut table = txn.open_table(EVENTS).map_err(|e| map_err(path, e))?;
                for (k, v) in &records {
                    table
                        .insert(k.as_slice(), v.as_slice())
                        .map_err(|e| map_err(path, e))?;
                }
                let mut heads = txn.open_table(HEADS).map_err(|e| map_err(path, e))?;
                let mut last: Vec<(RunId, u64)> = Vec::new();
                for e in batch {
                    match last.iter_mut().find(|(r, _)| *r == e.run) {
                        Some(entry) => entry.1 = entry.1.max(e.seq + 1),
                        None => last.push((e.run, e.seq + 1)),
                    }
                }
                for (run, next) in last {
                    heads
                        .insert(run.to_bytes().as_slice(), next)
                        .map_err(|e| map_err(path, e))?;
                }
            }
            txn.commit().map_err(|e| map_err(path, e))
        });
        match result {
            Err(JournalError::Backend { detail, .. })
                if detail == PREVIOUS_IO && self.first_io.is_some() =>
            {
                let first = self.first_io.as_ref().expect("checked");
                Err(first.error(&self.path))
            }
            Err(e) => {
                if self.first_io.is_none() {
                    self.first_io = FirstIo::of(&e);
                }
                Err(e)
            }
            Ok(()) => Ok(()),
        }
    }

    fn runs(&self) -> Result<Vec<RunId>, JournalError> {
        self.with_table(|table| {
            let mut out = Vec::new();
            let mut from = codec::key(RunId(uuid::Uuid::nil()), 0);
            loop {
                let mut range = table
                    .range::<&[u8]>(from.as_slice()..)
                    .map_err(|e| map_err(&self.path, e))?;
                let Some(item) = range.next() else { break };
                let (k, _) = item.map_err(|e| map_err(&self.path, e))?;
                // A damaged key can sort before the one asked for; following
                // it would walk back and loop for ever.
                if k.value() < from.as_slice() {
                    return Err(JournalError::Damaged {
                        path: self.path.clone(),
                        detail: format!(
                            "keys out of order: {} found after {}",
                            hex::encode(k.value()),
                            hex::encode(from)
                        ),
                    });
                }
                let (run, _) =
                    codec::parse_key(k.value()).map_err(|detail| JournalError::Corrupt {
                        run: RunId(uuid::Uuid::nil()),
                        seq: 0,
                        detail,
                    })?;
                out.push(run);
                match next_run_key(run) {
                    Some(k) => from = k,
                    None => break,
                }
            }
            Ok(out)
        })
    }

    fn scan(
        &self,
        run: RunId,
        from_seq: u64,
        visit: &mut dyn FnMut(Envelope) -> ControlFlow<()>,
    ) -> Result<(), JournalError> {
        guard(&self.path, || {
            // One read transaction for the records and the checks after
            // them, so a live writer's newer commits are never mistaken for
            // records missing from this snapshot.
            let txn = self.read()?;
            let table = txn.open_table(EVENTS).map_err(|e| map_err(&self.path, e))?;
            let lo = codec::key(run, from_seq);
            let hi = codec::key(run, u64::MAX);
            let range = table
                .range::<&[u8]>(lo.as_slice()..=hi.as_slice())
                .map_err(|e| map_err(&self.path, e))?;
            let mut expect = from_seq;
            for item in range {
                let (k, v) = item.map_err(|e| map_err(&self.path, e))?;
                let env = decode_at(k.value(), v.value())?;
                let seq = env.seq;
                if visit_outside_guard(|| visit(env)).is_break() {
                    return Ok(());
                }
                if seq != expect {
                    // A gap: the caller (Journal::scan) reports it.
                    return Ok(());
                }
                expect += 1;
            }
            // A damaged key can end a range scan early without any error:
            // compare with the run's head and with its last key found from
            // the other end of the tree.
            let mut last = table
                .range::<&[u8]>(lo.as_slice()..=hi.as_slice())
                .map_err(|e| map_err(&self.path, e))?;
            let from_keys = match last.next_back() {
                Some(item) => {
                    let (k, _) = item.map_err(|e| map_err(&self.path, e))?;
                    codec::parse_key(k.value()).map(|(_, s)| s + 1).unwrap_or(0)
                }
                None => 0,
            };
            let head = match txn.open_table(HEADS) {
                Ok(t) => t
                    .get(run.to_bytes().as_slice())
                    .map_err(|e| map_err(&self.path, e))?
                    .map(|v| v.value())
                    .unwrap_or(0),
                Err(redb::TableError::TableDoesNotExist(_)) => 0,
                Err(e) => return Err(map_err(&self.path, e)),
            };
            let end = from_keys.max(head);
            if end > expect {
                return Err(JournalError::Corrupt {
                    run,
                    seq: expect,
                    detail: codec::CodecError::Body(format!(
                        "record missing: the run's records end at seq {}, the scan stopped at {expect}",
                        end - 1
                    )),
                });
            }
            Ok(())
        })
    }

    fn next_seq(&self, run: RunId) -> Result<u64, JournalError> {
        let from_events = self.next_seq_from_events(run)?;
        let head = guard(&self.path, || {
            let txn = self.read()?;
            match txn.open_table(HEADS) {
                Ok(t) => Ok(t
                    .get(run.to_bytes().as_slice())
                    .map_err(|e| map_err(&self.path, e))?
                    .map(|v| v.value())),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
                Err(e) => Err(map_err(&self.path, e)),
            }
        })?;
        Ok(from_events.max(head.unwrap_or(0)))
    }
}

impl RedbStore {
    fn next_seq_from_events(&self, run: RunId) -> Result<u64, JournalError> {
        self.with_table(|table| {
            let lo = codec::key(run, 0);
            let hi = codec::key(run, u64::MAX);
            let mut range = table
                .range::<&[u8]>(lo.as_slice()..=hi.as_slice())
                .map_err(|e| map_err(&self.path, e))?;
            Ok(match range.next_back() {
                Some(item) => {
                    let (k, _) = item.map_err(|e| map_err(&self.path, e))?;
                    codec::parse_key(k.value()).map(|(_, s)| s + 1).unwrap_or(0)
                }
                None => 0,
            })
        })
    }
}
