//! The command bodies: each `upshift` command calls the application layer
//! ([`crate::app`]), the support tools or the demo, and renders what they
//! return — every line the operator reads on stdout or stderr is written
//! here (or by [`crate::ui`] while a run goes). One file per command
//! family:
//!
//! - [`plan`]: `check`, `graph`, `run --dry-run`'s text;
//! - [`run`]: `run`, `resume`, `drift`;
//! - [`status`]: `status` (and `--follow`), `runs`, `log` (and `--follow`);
//! - [`decisions`]: `retry`, `skip`, `approve`, `abort`, `rollback`;
//! - [`support`]: `export`, `import`, `replay`, `report`, `diff`;
//! - [`demo`]: `demo` and its stand-ins;
//! - [`preflight`]: `preflight` (read-only checks of the real site).
//!
//! Commands take plain values (paths, strings, flags), never clap types;
//! `src/cli.rs` parses the command line and calls them. Each returns the
//! process exit code, or an [`Error`] that `main` prints once.

use std::collections::BTreeMap;
use std::path::Path;

use upshift_journal::{Outcome, RunId};

use crate::engine::Exit;
use crate::error::{Error, Result, code};
use crate::report;

pub mod decisions;
#[cfg(feature = "demo")]
pub mod demo;
pub mod plan;
pub mod preflight;
pub mod run;
pub mod status;
pub mod support;

/// The exit code of an engine session.
pub fn exit_code(exit: &Exit) -> u8 {
    match exit {
        Exit::Finished(Outcome::Succeeded) => code::OK,
        Exit::Finished(_) => code::FAILED,
        Exit::Paused(_) => code::PAUSED,
        Exit::Interrupted | Exit::Rebooting(_) => code::INTERRUPTED,
    }
}

/// ` --journal DIR` for the commands we suggest, unless `$UPSHIFT_JOURNAL`
/// already says where the journal is.
pub fn journal_flag(dir: &Path) -> String {
    if std::env::var_os("UPSHIFT_JOURNAL").is_some() {
        String::new()
    } else {
        format!(" --journal {}", dir.display())
    }
}

/// Says how an engine session ended, and the command that continues it.
pub fn report_exit(exit: &Exit, run: RunId, dir: &Path) {
    let j = journal_flag(dir);
    match exit {
        Exit::Finished(o) => eprintln!("run {run} {}", report::outcome_word(*o)),
        Exit::Paused(reason) => eprintln!("run {run} paused: {reason}"),
        Exit::Interrupted => {
            eprintln!("run {run} interrupted; continue with: upshift resume {run}{j}")
        }
        Exit::Rebooting(message) => eprintln!("run {run}: {message}"),
    }
}

/// `--var KEY=VALUE` (and `--secret NAME=SOURCE`) values.
pub fn parse_vars(vars: &[String]) -> Result<BTreeMap<String, String>> {
    vars.iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.to_string()))
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| Error::usage(format!("--var {kv}: write KEY=VALUE")))
        })
        .collect()
}

/// Prints a document: pretty JSON with `--json`, else its text rendering.
pub fn print_doc<T: serde::Serialize>(doc: &T, json: bool, text: impl FnOnce(&T) -> String) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(doc).expect("serializable")
        );
    } else {
        print!("{}", text(doc));
    }
}

/// Writes an output file (export, report) atomically; the error names it.
pub fn write_output(path: &Path, bytes: &[u8]) -> Result<()> {
    upshift_fsutil::atomic_write(path, bytes)
        .map_err(|e| Error::failed(format!("cannot write {}: {e}", path.display())))
}
