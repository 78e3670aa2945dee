//! The ticket folder on the host: its layout, the creation gate, and how
//! its state is read. The runner writes it (`runner.rs`), `serve` reads it
//! (`serve.rs`). docs/remote.md describes the same layout for operators.
//!
//! ```text
//! <work_dir>/
//!   bin/<sha256>/upshift[.exe]       the coordinator's binary, by content
//!   steps/<run>/<step>/              the step's work folder (all attempts)
//!   tickets/<ticket>/
//!     ticket.json     who the ticket is for, when and in which boot it was created
//!     request.json    the start request, secrets replaced, no checkpoint
//!     runner.json     the runner's pid, process start time and boot id (not fsync'd)
//!     output.log      the step's output, redacted, appended
//!     checkpoints.jsonl  one checkpoint per line, fsync'd before the step goes on
//!     progress.json   the latest progress (not fsync'd)
//!     end.json        how it ended (fsync'd); its presence means "ended"
//!     abort           present when the coordinator asked for an abort
//! ```
//!
//! Creating `tickets/<ticket>` (one `mkdir`, atomic on every file system)
//! is the gate: a start whose `mkdir` finds the folder starts nothing.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::protocol::{Checkpoint, Cursor, EndState, Progress, TicketId, TicketState};
use crate::sys::{self, ProcessIdentity};

/// `ticket.json`.
pub const TICKET_FILE: &str = "ticket.json";
/// `request.json`.
pub const REQUEST_FILE: &str = "request.json";
/// `runner.json`.
pub const RUNNER_FILE: &str = "runner.json";
/// `output.log`.
pub const OUTPUT_FILE: &str = "output.log";
/// `checkpoints.jsonl`.
pub const CHECKPOINTS_FILE: &str = "checkpoints.jsonl";
/// `progress.json`.
pub const PROGRESS_FILE: &str = "progress.json";
/// `end.json`.
pub const END_FILE: &str = "end.json";
/// `abort`.
pub const ABORT_FILE: &str = "abort";

/// How long a ticket may exist without its runner registering before it
/// counts as interrupted (the runner registers within milliseconds; this
/// only matters when the launcher died between `mkdir` and the spawn).
pub const START_GRACE_MS: u64 = 60_000;

/// Most output bytes one poll returns.
pub const POLL_OUTPUT_BYTES_MAX: usize = 256 * 1024;

/// Most checkpoint bytes one poll returns (a checkpoint may be large).
pub const POLL_CHECKPOINT_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Where things are under a work folder on the host.
#[derive(Debug, Clone)]
pub struct Layout {
    work_dir: PathBuf,
}

impl Layout {
    /// The layout under `work_dir`.
    pub fn new(work_dir: impl Into<PathBuf>) -> Layout {
        Layout {
            work_dir: work_dir.into(),
        }
    }

    /// The work folder.
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// `tickets/`.
    pub fn tickets(&self) -> PathBuf {
        self.work_dir.join("tickets")
    }

    /// `tickets/<ticket>/`.
    pub fn ticket(&self, id: &TicketId) -> PathBuf {
        self.tickets().join(id.as_str())
    }

    /// `steps/<run>/<step>/`: ids are checked by the caller.
    pub fn step_work_dir(&self, run: &str, step: &str) -> PathBuf {
        self.work_dir.join("steps").join(run).join(step)
    }

    /// The work folder of a ticket folder (`<work>/tickets/<id>` → `<work>`).
    pub fn of_ticket_dir(dir: &Path) -> Option<Layout> {
        Some(Layout::new(dir.parent()?.parent()?))
    }
}

/// `ticket.json`: written once, right after the gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketMeta {
    /// The ticket.
    pub ticket: TicketId,
    /// [`crate::protocol::StartRequest::identity`] of the request.
    pub identity: String,
    /// Milliseconds since 1970 at creation.
    pub created_unix_ms: u64,
    /// The boot it was created in.
    pub boot_id: String,
}

/// Milliseconds since 1970.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Replaces a file atomically (temporary name, rename) without flushing it
/// to disk: for files whose loss in a power cut is harmless (`runner.json`:
/// after a crash the boot id in `ticket.json` already says "interrupted";
/// `progress.json`).
pub fn write_visible(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = upshift_fsutil::temp_beside(path);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Reads `end.json`, if the runner wrote it.
pub fn read_end(dir: &Path) -> Option<EndState> {
    read_json(&dir.join(END_FILE))
}

/// Where a ticket stands now. The order of the reads matters: the end is
/// checked again after the runner is found gone, because it may have
/// written its end and exited in between.
pub fn observe(dir: &Path) -> TicketState {
    if !dir.is_dir() {
        return TicketState::Missing;
    }
    if let Some(end) = read_end(dir) {
        return TicketState::Ended { end };
    }
    if let Some(runner) = read_json::<ProcessIdentity>(&dir.join(RUNNER_FILE)) {
        if runner.is_alive() {
            return TicketState::Running { pid: runner.pid };
        }
        if let Some(end) = read_end(dir) {
            return TicketState::Ended { end };
        }
        return TicketState::Interrupted {
            reason: runner.why_gone(),
        };
    }
    // No runner registered (yet).
    let meta: Option<TicketMeta> = read_json(&dir.join(TICKET_FILE));
    if let Some(meta) = &meta
        && meta.boot_id != sys::boot_id()
    {
        return TicketState::Interrupted {
            reason: "the host rebooted before the runner started".into(),
        };
    }
    let created_ms = meta.map(|m| m.created_unix_ms).unwrap_or_else(|| {
        std::fs::metadata(dir)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    });
    if now_unix_ms().saturating_sub(created_ms) > START_GRACE_MS {
        return TicketState::Interrupted {
            reason: format!(
                "the runner never registered within {} s of the ticket's creation",
                START_GRACE_MS / 1000
            ),
        };
    }
    TicketState::Starting
}

/// What is new in a ticket since `cursor`.
#[derive(Debug, Default)]
pub struct News {
    /// New output (a UTF-8 prefix; a character cut by the writer stays for
    /// the next read).
    pub output: String,
    /// New complete checkpoint lines.
    pub checkpoints: Vec<Checkpoint>,
    /// The latest progress, if newer than the cursor's.
    pub progress: Option<Progress>,
    /// The cursor after this read.
    pub cursor: Cursor,
    /// More is waiting (a cap was reached).
    pub more: bool,
}

impl News {
    /// Whether anything is new.
    pub fn is_empty(&self) -> bool {
        self.output.is_empty() && self.checkpoints.is_empty() && self.progress.is_none()
    }
}

fn read_from(path: &Path, offset: u64, max: usize) -> std::io::Result<(Vec<u8>, bool)> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), false)),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len <= offset {
        return Ok((Vec::new(), false));
    }
    f.seek(SeekFrom::Start(offset))?;
    let want = ((len - offset) as usize).min(max);
    let mut buf = vec![0u8; want];
    f.read_exact(&mut buf)?;
    Ok((buf, (len - offset) as usize > max))
}

/// Reads output, checkpoints and progress after `cursor`.
pub fn read_news(dir: &Path, cursor: Cursor) -> std::io::Result<News> {
    let mut news = News {
        cursor,
        ..News::default()
    };
    let (bytes, more_out) = read_from(
        &dir.join(OUTPUT_FILE),
        cursor.output_bytes,
        POLL_OUTPUT_BYTES_MAX,
    )?;
    let valid = match std::str::from_utf8(&bytes) {
        Ok(_) => bytes.len(),
        // A character cut at the end of what is written so far: wait for it.
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        // Invalid bytes cannot come from the runner; pass them on, lossy.
        Err(_) => bytes.len(),
    };
    news.output = String::from_utf8_lossy(&bytes[..valid]).into_owned();
    news.cursor.output_bytes += valid as u64;

    let (bytes, more_cp) = read_from(
        &dir.join(CHECKPOINTS_FILE),
        cursor.checkpoint_bytes,
        POLL_CHECKPOINT_BYTES_MAX,
    )?;
    // Only complete lines: the last one may be half written (or cut by a
    // crash: then it was never acknowledged to the step either).
    let mut used = 0usize;
    for line in bytes.split_inclusive(|b| *b == b'\n') {
        if !line.ends_with(b"\n") {
            break;
        }
        used += line.len();
        if let Ok(cp) = serde_json::from_slice::<Checkpoint>(line) {
            news.cursor.checkpoints = cp.seq;
            news.checkpoints.push(cp);
        }
    }
    news.cursor.checkpoint_bytes += used as u64;
    news.more = more_out || (more_cp && used > 0);

    if let Some(p) = read_json::<Progress>(&dir.join(PROGRESS_FILE))
        && p.seq > cursor.progress_seq
    {
        news.cursor.progress_seq = p.seq;
        news.progress = Some(p);
    }
    Ok(news)
}

/// The poll interval while waiting for news: short at first (a quick step
/// ends within milliseconds), longer for a long step.
pub fn poll_tick(waited: Duration) -> Duration {
    if waited < Duration::from_millis(200) {
        Duration::from_millis(5)
    } else {
        Duration::from_millis(50)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn news_stop_at_a_cut_character_and_a_half_written_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join(OUTPUT_FILE), &"aé".as_bytes()[..2]).unwrap();
        let cp = serde_json::to_string(&Checkpoint {
            seq: 1,
            data: b"x".to_vec(),
            done: 1,
            total: 2,
        })
        .unwrap();
        std::fs::write(d.join(CHECKPOINTS_FILE), format!("{cp}\n{{\"seq\":2,\"da")).unwrap();
        let n = read_news(d, Cursor::default()).unwrap();
        assert_eq!(n.output, "a");
        assert_eq!(n.cursor.output_bytes, 1);
        assert_eq!(n.checkpoints.len(), 1);
        assert_eq!(n.cursor.checkpoints, 1);
        assert_eq!(n.cursor.checkpoint_bytes, cp.len() as u64 + 1);
        // The rest arrives.
        std::fs::write(d.join(OUTPUT_FILE), "aé!".as_bytes()).unwrap();
        let n2 = read_news(d, n.cursor).unwrap();
        assert_eq!(n2.output, "é!");
        assert!(n2.checkpoints.is_empty());
    }

    #[test]
    fn a_ticket_without_runner_is_starting_then_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t");
        assert_eq!(observe(&t), TicketState::Missing);
        std::fs::create_dir(&t).unwrap();
        let meta = TicketMeta {
            ticket: TicketId::new("t").unwrap(),
            identity: "x".into(),
            created_unix_ms: now_unix_ms(),
            boot_id: sys::boot_id(),
        };
        std::fs::write(t.join(TICKET_FILE), serde_json::to_vec(&meta).unwrap()).unwrap();
        assert_eq!(observe(&t), TicketState::Starting);
        let old = TicketMeta {
            created_unix_ms: now_unix_ms() - START_GRACE_MS - 1,
            ..meta.clone()
        };
        std::fs::write(t.join(TICKET_FILE), serde_json::to_vec(&old).unwrap()).unwrap();
        assert!(matches!(observe(&t), TicketState::Interrupted { .. }));
        let rebooted = TicketMeta {
            boot_id: "another boot".into(),
            ..meta
        };
        std::fs::write(t.join(TICKET_FILE), serde_json::to_vec(&rebooted).unwrap()).unwrap();
        match observe(&t) {
            TicketState::Interrupted { reason } => assert!(reason.contains("rebooted")),
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn a_dead_runner_is_interrupted_unless_it_wrote_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        let mut me = ProcessIdentity::current();
        std::fs::write(t.join(RUNNER_FILE), serde_json::to_vec(&me).unwrap()).unwrap();
        assert_eq!(observe(t), TicketState::Running { pid: me.pid });
        me.start += 1;
        me.pid = u32::MAX - 1;
        std::fs::write(t.join(RUNNER_FILE), serde_json::to_vec(&me).unwrap()).unwrap();
        assert!(matches!(observe(t), TicketState::Interrupted { .. }));
        let end = EndState::Aborted { reason: "r".into() };
        std::fs::write(t.join(END_FILE), serde_json::to_vec(&end).unwrap()).unwrap();
        assert_eq!(observe(t), TicketState::Ended { end });
    }
}
