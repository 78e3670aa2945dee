//! upshift's journal: every event of a run, durable, checksummed, in order.
//!
//! This crate knows nothing of steps, plans or SQL Server: a step is an id
//! string, a checkpoint opaque bytes. It offers:
//! - [`Event`] and its [`Envelope`] (run, seq, time, event);
//! - [`codec`], the one module that knows the byte layout;
//! - [`JournalStore`] with three stores: redb (default), memory, sled
//!   (feature `sled`);
//! - [`Journal`], which owns a store plus the directory lock, assigns nothing
//!   but checks that every append continues its run without a gap.
//!
//! ```
//! use upshift_journal::{Envelope, Event, Journal, RunId};
//! let mut journal = Journal::memory();
//! let run = RunId::new();
//! journal.append(&[Envelope { run, seq: 0, time: chrono::Utc::now(),
//!     event: Event::Note { text: "hello".into() } }]).unwrap();
//! assert_eq!(journal.read_run(run).unwrap().len(), 1);
//! ```

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

pub mod codec;
pub mod event;
pub mod store;

pub use event::{Actor, Decision, Envelope, Event, Outcome, RunId};
pub use store::{JournalError, JournalStore};

/// Which store a journal directory uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `journal.redb` (the default).
    Redb,
    /// `journal.sled/` (cargo feature `sled`).
    Sled,
}

impl Backend {
    /// The backend a directory already holds, else the one named by the
    /// environment variable `UPSHIFT_JOURNAL_BACKEND` (`redb`|`sled`), else redb.
    pub fn detect(dir: &Path) -> Backend {
        if dir.join("journal.sled").exists() {
            return Backend::Sled;
        }
        if dir.join("journal.redb").exists() {
            return Backend::Redb;
        }
        match std::env::var("UPSHIFT_JOURNAL_BACKEND").as_deref() {
            Ok("sled") => Backend::Sled,
            _ => Backend::Redb,
        }
    }
}

/// An exclusive lock on a journal directory, held for as long as it lives.
/// The holder's pid is written into the lock file so a second process can
/// name it.
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock or says who holds it. Creates the folder owner-only
    /// (Unix 0700, Windows a protected DACL) and refuses one that others
    /// may write into ([`JournalError::NotPrivate`]).
    pub fn acquire(dir: &Path) -> Result<DirLock, JournalError> {
        upshift_fsutil::create_private_dir_all(dir).map_err(|e| JournalError::io(dir, e))?;
        upshift_fsutil::check_private_dir(dir).map_err(JournalError::NotPrivate)?;
        let path = dir.join("journal.lock");
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .open(&path)
            .map_err(|e| JournalError::io(&path, e))?;
        let mut tries = 0;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                // A reader asking whether an engine is live (`holder`)
                // holds a shared lock for an instant: try again briefly
                // before calling the journal taken.
                Err(std::fs::TryLockError::WouldBlock) if tries < LOCK_TRIES_MAX => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(LOCK_RETRY_MS));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(JournalError::Locked {
                        holder_pid: read_pid(&mut file),
                        path,
                    });
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(JournalError::io(&path, e)),
            }
        }
        // Best effort: the lock is what matters, the pid only helps the message.
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = writeln!(file, "{}", std::process::id());
        let _ = file.flush();
        Ok(DirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a live engine holds the journal in `dir`, without taking the
    /// lock or writing anything: `Some(pid)` if one does (`Some(None)`: it
    /// did not say which), `None` if not. Opens the lock file read-only and
    /// takes a shared lock for an instant, which a writer's exclusive lock
    /// excludes; never creates the file.
    pub fn holder(dir: &Path) -> Option<Option<u32>> {
        let mut file = File::open(dir.join("journal.lock")).ok()?;
        match file.try_lock_shared() {
            Ok(()) => None,
            Err(std::fs::TryLockError::WouldBlock) => Some(read_pid(&mut file)),
            Err(std::fs::TryLockError::Error(_)) => None,
        }
    }
}

/// How often, and how long apart, a writer tries a lock that a reader's
/// [`DirLock::holder`] check holds for an instant (at most 100 ms in all).
const LOCK_TRIES_MAX: u32 = 20;
const LOCK_RETRY_MS: u64 = 5;

/// The pid a lock holder wrote into the lock file.
fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    let _ = file.rewind();
    let _ = file.read_to_string(&mut text);
    text.split_whitespace().next().and_then(|p| p.parse().ok())
}

/// A journal: a store, the directory lock (for writers), and the
/// sequence-continuity check every append passes.
pub struct Journal {
    store: Box<dyn JournalStore>,
    dir: Option<PathBuf>,
    next_seq: HashMap<RunId, u64>,
    _lock: Option<DirLock>,
}

impl Journal {
    /// Opens the journal in `dir` for writing (creating it), taking the lock.
    pub fn open(dir: &Path) -> Result<Journal, JournalError> {
        let lock = DirLock::acquire(dir)?;
        let store = open_store(dir, Backend::detect(dir), true)?;
        Ok(Journal {
            store,
            dir: Some(dir.to_path_buf()),
            next_seq: HashMap::new(),
            _lock: Some(lock),
        })
    }

    /// Opens the journal in `dir` for reading, beside a live writer if any
    /// (redb), without taking the lock and without writing a byte in `dir`:
    /// a file whose writer was killed is read from a recovered private copy
    /// (see [`store::redb::RedbStore::open_read_only`]). With sled, which
    /// locks (and may write) its directory, this fails while a run is live.
    pub fn open_read_only(dir: &Path) -> Result<Journal, JournalError> {
        let backend = Backend::detect(dir);
        let marker = match backend {
            Backend::Redb => dir.join("journal.redb"),
            Backend::Sled => dir.join("journal.sled"),
        };
        if !marker.exists() {
            return Err(JournalError::Io {
                path: marker,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no journal here yet (give --journal DIR or set UPSHIFT_JOURNAL)",
                ),
            });
        }
        Ok(Journal {
            store: open_store(dir, backend, false)?,
            dir: Some(dir.to_path_buf()),
            next_seq: HashMap::new(),
            _lock: None,
        })
    }

    /// A journal in memory, for tests.
    pub fn memory() -> Journal {
        Journal::from_store(Box::new(store::memory::MemoryStore::new()))
    }

    /// Wraps any store (no directory lock).
    pub fn from_store(store: Box<dyn JournalStore>) -> Journal {
        Journal {
            store,
            dir: None,
            next_seq: HashMap::new(),
            _lock: None,
        }
    }

    /// The directory, if the journal lives on disk.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The store's short name.
    pub fn kind(&self) -> &'static str {
        self.store.kind()
    }

    /// Appends a batch durably and atomically. Every envelope must continue
    /// its run exactly (seq = last + 1), else nothing is written.
    pub fn append(&mut self, batch: &[Envelope]) -> Result<(), JournalError> {
        let mut expected: HashMap<RunId, u64> = HashMap::new();
        for env in batch {
            let next = match expected.get(&env.run) {
                Some(n) => *n,
                None => match self.next_seq.get(&env.run) {
                    Some(n) => *n,
                    None => self.store.next_seq(env.run)?,
                },
            };
            if env.seq != next {
                return Err(JournalError::SeqGap {
                    run: env.run,
                    expected: next,
                    got: env.seq,
                });
            }
            expected.insert(env.run, next + 1);
        }
        self.store.append(batch)?;
        self.next_seq.extend(expected);
        Ok(())
    }

    /// One past the last seq of `run`.
    pub fn next_seq(&self, run: RunId) -> Result<u64, JournalError> {
        match self.next_seq.get(&run) {
            Some(n) => Ok(*n),
            None => self.store.next_seq(run),
        }
    }

    /// Every run, oldest first.
    pub fn runs(&self) -> Result<Vec<RunId>, JournalError> {
        self.store.runs()
    }

    /// Visits a run's events from `from_seq`, in order; stops with
    /// [`JournalError::Corrupt`] at the first damaged record.
    pub fn scan(
        &self,
        run: RunId,
        from_seq: u64,
        visit: &mut dyn FnMut(Envelope) -> ControlFlow<()>,
    ) -> Result<(), JournalError> {
        let mut expect = from_seq;
        let mut gap = None;
        let scanned = self.store.scan(run, from_seq, &mut |env| {
            if env.seq != expect {
                gap = Some(expect);
                return ControlFlow::Break(());
            }
            expect += 1;
            visit(env)
        });
        match scanned {
            // A damaged key (run or seq bits flipped in the store's own
            // pages) names a run or seq that is not the one being read: the
            // damage is at the next record this run expected.
            Err(JournalError::Corrupt {
                run: r,
                seq,
                detail,
            }) if r != run || seq != expect => {
                return Err(JournalError::Corrupt {
                    run,
                    seq: expect,
                    detail: codec::CodecError::Body(format!(
                        "stored under a damaged key (run {r} seq {seq}): {detail}"
                    )),
                });
            }
            other => other?,
        }
        match gap {
            Some(seq) => Err(JournalError::Corrupt {
                run,
                seq,
                detail: codec::CodecError::Body(format!(
                    "record missing: the next stored record is past seq {seq}"
                )),
            }),
            None => Ok(()),
        }
    }

    /// All of a run's events.
    pub fn read_run(&self, run: RunId) -> Result<Vec<Envelope>, JournalError> {
        let mut out = Vec::new();
        self.scan(run, 0, &mut |e| {
            out.push(e);
            ControlFlow::Continue(())
        })?;
        Ok(out)
    }

    /// A run's events up to the first damaged record, and the damage if any:
    /// what support can still read of a broken journal.
    pub fn read_run_salvage(&self, run: RunId) -> (Vec<Envelope>, Option<JournalError>) {
        let mut out = Vec::new();
        let err = self
            .scan(run, 0, &mut |e| {
                out.push(e);
                ControlFlow::Continue(())
            })
            .err();
        (out, err)
    }
}

fn open_store(
    dir: &Path,
    backend: Backend,
    write: bool,
) -> Result<Box<dyn JournalStore>, JournalError> {
    match backend {
        Backend::Redb => {
            let path = dir.join("journal.redb");
            Ok(Box::new(if write {
                store::redb::RedbStore::open(&path)?
            } else {
                store::redb::RedbStore::open_read_only(&path)?
            }))
        }
        #[cfg(feature = "sled")]
        Backend::Sled => Ok(Box::new(store::sled::SledStore::open(
            &dir.join("journal.sled"),
        )?)),
        #[cfg(not(feature = "sled"))]
        Backend::Sled => {
            let _ = write;
            Err(JournalError::Backend {
                path: dir.join("journal.sled"),
                detail: "this journal is a sled journal, but this upshift was built without the `sled` feature (cargo build --features sled)".into(),
            })
        }
    }
}
