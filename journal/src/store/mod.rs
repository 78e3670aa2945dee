//! Stores: where records live. Each implements [`JournalStore`]; one
//! contract test suite (`journal/tests/contract.rs`) runs against all of them.

use std::ops::ControlFlow;
use std::path::PathBuf;

use crate::codec::CodecError;
use crate::event::{Envelope, RunId};

pub mod memory;
pub mod redb;
#[cfg(feature = "sled")]
pub mod sled;

/// Everything that can go wrong with a journal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// Another process holds the journal for writing.
    #[error("journal {path} is in use by {}; wait for that run to finish, or watch it with `upshift status --follow`", holder_text(.holder_pid))]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// The holder's pid, if it could be read.
        holder_pid: Option<u32>,
    },
    /// A stored record failed its checks. Nothing after it is trusted.
    #[error("journal record of run {run} at seq {seq} is corrupt: {detail}")]
    Corrupt {
        /// The run.
        run: RunId,
        /// The damaged record's sequence number.
        seq: u64,
        /// What was wrong.
        detail: CodecError,
    },
    /// The journal's storage itself reports damage.
    #[error("journal {path} is damaged: {detail}")]
    Damaged {
        /// The store's file or folder.
        path: PathBuf,
        /// The store's own words.
        detail: String,
    },
    /// The disk is full: nothing of the failed batch was written.
    #[error(
        "journal disk full: no space left on the device holding the journal {path} ({}; the error: {source}). Free space on that device (or move the journal folder to a larger one), then resume the run: nothing already journaled was lost",
        free_text(.free_bytes)
    )]
    DiskFull {
        /// The store's file or folder.
        path: PathBuf,
        /// Bytes free there when the error was seen, if they could be read.
        free_bytes: Option<u64>,
        /// The OS error, as the OS said it (kept even when the store
        /// reports only a follow-up error later).
        #[source]
        source: std::io::Error,
    },
    /// An I/O error.
    #[error("journal I/O error at {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An event could not be encoded (e.g. too large).
    #[error("cannot journal event: {0}")]
    Encode(CodecError),
    /// A batch would leave a gap or overwrite: a bug in the caller.
    #[error("run {run}: append of seq {got} but the journal expects seq {expected}")]
    SeqGap {
        /// The run.
        run: RunId,
        /// Next free seq.
        expected: u64,
        /// Seq offered.
        got: u64,
    },
    /// A reader found a journal its writer did not close (killed), and
    /// could not read it from a recovered copy either.
    #[error(
        "journal {path} was not closed by its engine (killed?) and needs a recovery that only its writer may do ({detail}); `upshift resume` recovers it (and continues the run), after which reading works again"
    )]
    NeedsRecovery {
        /// The store's file.
        path: PathBuf,
        /// Why the copy could not be read.
        detail: String,
    },
    /// The journal folder is not private: others could change the journal
    /// or its inbox (refused like sshd's StrictModes).
    #[error("{0}")]
    NotPrivate(upshift_fsutil::Insecure),
    /// The handle was opened read-only.
    #[error("journal opened read-only")]
    ReadOnly,
    /// Any other error of the store, in its words.
    #[error("journal store error at {path}: {detail}")]
    Backend {
        /// The store's file or folder.
        path: PathBuf,
        /// The store's own words.
        detail: String,
    },
}

fn free_text(free: &Option<u64>) -> String {
    match free {
        Some(n) => format!("{n} bytes free there now"),
        None => "free space unknown".to_string(),
    }
}

fn holder_text(pid: &Option<u32>) -> String {
    match pid {
        Some(p) => format!("process {p}"),
        None => "another process".to_string(),
    }
}

impl JournalError {
    /// Maps an I/O error, recognising a full disk.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> JournalError {
        let path = path.into();
        if is_disk_full(&source) {
            JournalError::DiskFull {
                free_bytes: upshift_fsutil::free_bytes(&path).ok(),
                path,
                source,
            }
        } else {
            JournalError::Io { path, source }
        }
    }
}

/// Whether an I/O error means "no space left".
pub fn is_disk_full(e: &std::io::Error) -> bool {
    // ENOSPC is 28 on Linux; ERROR_DISK_FULL is 112 and ERROR_HANDLE_DISK_FULL 39 on Windows.
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || (cfg!(unix) && e.raw_os_error() == Some(28))
        || (cfg!(windows) && matches!(e.raw_os_error(), Some(112) | Some(39)))
}

/// The storage contract every backend meets.
///
/// `append` returns only when the whole batch is durable (on disk, past the
/// disk's write cache), and writes all of it or none. `scan` stops at the
/// first record that fails its checks and returns [`JournalError::Corrupt`]
/// after visiting everything before it.
pub trait JournalStore: Send {
    /// Short name: `redb`, `sled`, `memory`.
    fn kind(&self) -> &'static str;
    /// Appends a batch durably, atomically.
    fn append(&mut self, batch: &[Envelope]) -> Result<(), JournalError>;
    /// Every run id in the store, oldest first.
    fn runs(&self) -> Result<Vec<RunId>, JournalError>;
    /// Visits a run's events from `from_seq` on, in order.
    fn scan(
        &self,
        run: RunId,
        from_seq: u64,
        visit: &mut dyn FnMut(Envelope) -> ControlFlow<()>,
    ) -> Result<(), JournalError>;
    /// One past the last seq of `run` (0 for an unknown run).
    fn next_seq(&self, run: RunId) -> Result<u64, JournalError>;
}

/// Decodes one stored record under its key, turning failures into
/// [`JournalError::Corrupt`] with the run and seq of the key.
pub(crate) fn decode_at(key: &[u8], value: &[u8]) -> Result<Envelope, JournalError> {
    let (run, seq) = crate::codec::parse_key(key).map_err(|detail| JournalError::Corrupt {
        run: RunId(uuid::Uuid::nil()),
        seq: 0,
        detail,
    })?;
    crate::codec::decode(value, Some((run, seq))).map_err(|detail| JournalError::Corrupt {
        run,
        seq,
        detail,
    })
}

/// A storage key and its encoded record.
pub(crate) type Record = ([u8; crate::codec::KEY_LEN], Vec<u8>);

/// Encodes a batch into `(key, record)` pairs.
pub(crate) fn encode_batch(batch: &[Envelope]) -> Result<Vec<Record>, JournalError> {
    batch
        .iter()
        .map(|e| {
            Ok((
                crate::codec::key(e.run, e.seq),
                crate::codec::encode(e).map_err(JournalError::Encode)?,
            ))
        })
        .collect()
}

/// Runs `f`, turning a panic inside it into `Err(message)`.
///
/// Why: redb trusts its own pages; a flipped byte in a page header makes it
/// panic (e.g. `btree_base.rs` index out of range) instead of returning
/// `Corrupted`. A journal must report damage, not crash the CLI that
/// support uses to read it. The panic message is kept out of stderr (the
/// error returned says what happened), unless `RUST_BACKTRACE` is set.
pub(crate) fn catch_store_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    quiet_panics::install();
    quiet_panics::DEPTH.with(|d| d.set(d.get() + 1));
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    quiet_panics::DEPTH.with(|d| d.set(d.get() - 1));
    out.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".to_string())
    })
}

/// Runs a caller's visitor from inside [`catch_store_panic`]: its panics
/// are the caller's, so they are neither silenced nor turned into errors.
pub(crate) fn visit_outside_guard<T>(f: impl FnOnce() -> T) -> T {
    let depth = quiet_panics::DEPTH.with(|d| d.replace(0));
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    quiet_panics::DEPTH.with(|d| d.set(depth));
    match out {
        Ok(v) => v,
        Err(payload) => {
            quiet_panics::ESCAPING.with(|e| *e.borrow_mut() = Some(payload));
            // Unwind out of the store; `rethrow_visitor_panic` resumes it.
            std::panic::resume_unwind(Box::new(VisitorPanic))
        }
    }
}

/// Marker payload: a visitor panicked (see [`visit_outside_guard`]).
struct VisitorPanic;

/// Resumes a visitor's panic caught inside a store call, if there was one.
pub(crate) fn rethrow_visitor_panic() {
    if let Some(p) = quiet_panics::ESCAPING.with(|e| e.borrow_mut().take()) {
        std::panic::resume_unwind(p);
    }
}

mod quiet_panics {
    use std::cell::{Cell, RefCell};
    use std::sync::Once;

    thread_local! {
        pub(super) static DEPTH: Cell<u32> = const { Cell::new(0) };
        pub(super) static ESCAPING: RefCell<Option<Box<dyn std::any::Any + Send>>> =
            const { RefCell::new(None) };
    }

    static HOOK: Once = Once::new();

    /// Chains a panic hook that stays silent for panics inside a guarded
    /// store call on this thread (and for the visitor marker).
    pub(super) fn install() {
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let guarded =
                    DEPTH.with(|d| d.get()) > 0 || info.payload().is::<super::VisitorPanic>();
                if !guarded || std::env::var_os("RUST_BACKTRACE").is_some() {
                    previous(info);
                }
            }));
        });
    }
}
