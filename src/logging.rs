//! Diagnostics through `tracing`: stderr at the level of `-v`/`RUST_LOG`,
//! and each run's own log file beside the journal (`logs/<run>.log`) at
//! info level, which records every journaled event as a line.
//!
//! The lines of journaled events (target `upshift::journal`) are buffered
//! and reach the file when the engine has folded a commit's events
//! ([`flush_run_log`], through the observer): one write per transition
//! instead of one per line. Every other line is written at once, as
//! before. The run log is not the journal: it is never fsync'd.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use upshift_journal::RunId;

/// Target of the lines that record journaled events.
pub const JOURNAL_TARGET: &str = "upshift::journal";

static RUN_LOG: Mutex<Option<BufWriter<File>>> = Mutex::new(None);

struct RunLogWriter {
    /// A journaled event's line: stays in the buffer until
    /// [`flush_run_log`].
    buffered: bool,
}

impl Write for RunLogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match RUN_LOG.lock().ok().as_mut().and_then(|g| g.as_mut()) {
            Some(f) => {
                f.write_all(buf)?;
                if !self.buffered {
                    f.flush()?;
                }
                Ok(buf.len())
            }
            None => Ok(buf.len()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match RUN_LOG.lock().ok().as_mut().and_then(|g| g.as_mut()) {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

struct MakeRunLog;

impl<'a> MakeWriter<'a> for MakeRunLog {
    type Writer = RunLogWriter;
    fn make_writer(&'a self) -> Self::Writer {
        RunLogWriter { buffered: false }
    }
    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        RunLogWriter {
            buffered: meta.target() == JOURNAL_TARGET,
        }
    }
}

/// Writes the buffered lines of journaled events to the run log.
pub fn flush_run_log() {
    if let Some(f) = RUN_LOG.lock().ok().as_mut().and_then(|g| g.as_mut()) {
        let _ = f.flush();
    }
}

/// Buffer of the run log: a few transitions' lines.
const RUN_LOG_BUFFER_BYTES: usize = 16 * 1024;

/// Installs the global subscriber. `verbose`: 0 warn, 1 info, 2+ debug.
pub fn init(verbose: u8) {
    // tiberius warns about every unencrypted connection; the step's own
    // parameters (encrypt) already say so, so only its errors are shown.
    let default = match verbose {
        0 => "warn,tiberius=error",
        1 => "info,tiberius=warn",
        _ => "debug",
    };
    // ureq (the notifications' HTTP client) logs a request's path and
    // query at trace level, and a webhook's path is its credential: its
    // logs stop at warnings, whatever RUST_LOG says.
    let quiet_http = || "ureq=warn".parse().expect("a valid directive");
    let stderr_filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(default))
        .add_directive(quiet_http());
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_filter(stderr_filter);
    let file = tracing_subscriber::fmt::layer()
        .with_writer(MakeRunLog)
        .with_ansi(false)
        .with_filter(EnvFilter::new("info").add_directive(quiet_http()));
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .try_init();
}

/// Opens the run's log file (appending); closed when the guard drops.
pub fn run_log(dir: &Path, run: RunId) -> RunLogGuard {
    let path = dir.join("logs").join(format!("{run}.log"));
    // Owner-only, like the journal: a log can name hosts, paths, outputs.
    let file = upshift_fsutil::create_private_dir_all(&dir.join("logs")).and_then(|_| {
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(&path)
    });
    match file {
        Ok(f) => {
            if let Ok(mut g) = RUN_LOG.lock() {
                *g = Some(BufWriter::with_capacity(RUN_LOG_BUFFER_BYTES, f));
            }
        }
        Err(e) => tracing::warn!("cannot open the run log {}: {e}", path.display()),
    }
    RunLogGuard
}

/// Closes the run log when dropped.
pub struct RunLogGuard;

impl Drop for RunLogGuard {
    fn drop(&mut self) {
        if let Ok(mut g) = RUN_LOG.lock() {
            if let Some(f) = g.as_mut() {
                let _ = f.flush();
            }
            *g = None;
        }
    }
}
