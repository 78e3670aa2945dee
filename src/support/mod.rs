//! Support diagnosis: everything vendor support needs to see what happened
//! in a customer's run without access to the customer's machines.
//!
//! - [`export`]: one portable, checksummed, compressed file per run
//!   (`upshift export`), and [`export::import`] into another journal.
//! - [`replay`]: the run's state as it was after any event, and what
//!   `upshift resume` would do next (`upshift replay --at/--explain`).
//! - [`report_html`]: a self-contained HTML report (`upshift report`).
//! - [`diff`]: two runs of one plan side by side (`upshift diff`).
//! - [`follow`]: `status --follow` and `log --follow` beside a live engine.
//!
//! Every tool reads a run from a journal (`RUN`, an id or unique prefix) or
//! from an export file (`FILE`), through [`load`]; all of them fold events
//! with [`crate::state::RunState`] and ask [`crate::decide::decide`], so
//! what support sees is what the engine saw. The tools take the
//! application layer's [`Workspace`] and return data (documents, views,
//! text); the command layer (`src/commands/support.rs`) writes and prints.
//!
//! ```
//! use upshift::support::timeline::spans;
//! use upshift_journal::{Envelope, Event, RunId};
//! let run = RunId::new();
//! let t = chrono::Utc::now();
//! let ev = |seq, event| Envelope { run, seq, time: t, event };
//! let events = vec![
//!     ev(0, Event::StepStarted { step: "a".into(), attempt: 1, resumed_from_checkpoint: false }),
//!     ev(1, Event::StepFailed { step: "a".into(), attempt: 1, error: "boom".into(),
//!         output_tail: String::new(), transient: false }),
//! ];
//! assert_eq!(spans(&events).len(), 1);
//! ```

use std::path::{Path, PathBuf};

use upshift_journal::{Envelope, RunId};

use crate::app::Workspace;
use crate::error::{Error, Result};
use crate::plan::Plan;
use crate::state::RunState;

pub mod diff;
pub mod export;
pub mod follow;
pub mod replay;
pub mod report_html;
pub mod timeline;

/// Where a run was read from.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A journal directory.
    Journal(PathBuf),
    /// An export file (with its manifest).
    Export(PathBuf, Box<export::Manifest>),
}

impl Origin {
    /// In words, for headers.
    pub fn describe(&self) -> String {
        match self {
            Origin::Journal(d) => format!("journal {}", d.display()),
            Origin::Export(f, _) => format!("export {}", f.display()),
        }
    }
}

/// A run's events, from a journal or an export file.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The run.
    pub run: RunId,
    /// Every event, in order from seq 0, without gaps.
    pub events: Vec<Envelope>,
    /// Where from.
    pub origin: Origin,
    /// If the journal was damaged: what, after the intact events.
    pub damage: Option<String>,
}

impl Loaded {
    /// The export manifest, if the run came from an export file.
    pub fn manifest(&self) -> Option<&export::Manifest> {
        match &self.origin {
            Origin::Export(_, m) => Some(m),
            Origin::Journal(_) => None,
        }
    }
}

/// Reads a run: `source` is an export file if such a file exists, else a
/// run id (or unique prefix) in the journal. A damaged journal yields its
/// intact events and the damage in [`Loaded::damage`] (support wants what
/// is readable).
pub fn load(source: &str, ws: &Workspace) -> Result<Loaded> {
    let path = Path::new(source);
    if path.is_file() {
        let (manifest, events) = export::read_file(path)?;
        let run = manifest.run.parse::<RunId>().map_err(|e| {
            Error::failed(format!("{}: bad run id in manifest: {e}", path.display()))
        })?;
        return Ok(Loaded {
            run,
            events,
            damage: manifest.damaged.clone(),
            origin: Origin::Export(path.to_path_buf(), Box::new(manifest)),
        });
    }
    let j = ws.open_reader()?;
    let run = crate::app::workspace::pick_run(&j, Some(source), false).map_err(|e| {
        if source.contains('.') || source.contains('/') || source.contains('\\') {
            Error::usage(format!("{source}: no such export file, and {e}"))
        } else {
            e
        }
    })?;
    let (events, err) = j.read_run_salvage(run);
    let damage = err.map(|e| e.to_string());
    Ok(Loaded {
        run,
        events,
        origin: Origin::Journal(ws.dir().to_path_buf()),
        damage,
    })
}

/// The plan the run pinned last (after any accepted plan change), parsed
/// with this upshift's step kinds.
pub fn pinned_plan(state: &RunState) -> Result<Plan, String> {
    crate::app::workspace::pinned_plan(state).map_err(|e| e.to_string())
}

/// The first `n` characters of a hash (or any text), for display.
pub(crate) fn short(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(i, _)| &s[..i])
}

/// Escapes text for HTML.
pub(crate) fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A span of the journal's clock in words ([`crate::report::duration_text`];
/// a negative span reads as zero).
pub fn duration_text(d: chrono::Duration) -> String {
    crate::report::duration_text(d.to_std().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_cuts_on_characters() {
        assert_eq!(short("abcdef", 3), "abc");
        assert_eq!(short("ab", 3), "ab");
        assert_eq!(short("äöüß", 2), "äö");
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            html_escape("<script>\"a\" & 'b'"),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;"
        );
    }
}
