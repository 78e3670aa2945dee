//! The decision inbox: how an operator's decision reaches an engine that
//! holds the journal. The writer ([`DirInbox::queue`]) and the reader
//! ([`DirInbox::take`], handed to the engine as its
//! [`crate::engine::Inbox`]) live side by side, so the file format has one
//! owner.
//!
//! Layout: `<journal>/inbox/<run>/<time>-<pid>.json`, one [`InboxDecision`]
//! per file, written atomically (a hidden `.tmp` name, renamed), so the engine never
//! reads half a file. The engine polls every 500 ms, journals each
//! decision with the actor who gave it, and removes the file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use upshift_journal::{Actor, Decision, Event, RunId};

use super::decisions::decision_events;
use crate::error::{Error, Result};

/// A decision queued for a live engine.
#[derive(Serialize, Deserialize)]
pub struct InboxDecision {
    /// The decision.
    pub decision: Decision,
    /// Who.
    pub actor: Actor,
    /// Why.
    pub reason: String,
}

/// The inbox folder of a journal (`<journal>/inbox`).
#[derive(Debug, Clone)]
pub struct DirInbox {
    root: PathBuf,
}

impl DirInbox {
    /// The inbox under `root` (one folder per run below it).
    pub fn new(root: impl Into<PathBuf>) -> DirInbox {
        DirInbox { root: root.into() }
    }

    /// The folder of one run's decisions.
    pub fn run_dir(&self, run: RunId) -> PathBuf {
        self.root.join(run.to_string())
    }

    /// Queues a decision for the engine that runs `run`.
    pub fn queue(&self, run: RunId, decision: &InboxDecision) -> Result<PathBuf> {
        let inbox = self.run_dir(run);
        std::fs::create_dir_all(&inbox)
            .map_err(|e| Error::failed(format!("{}: {e}", inbox.display())))?;
        let name = format!(
            "{}-{}.json",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.6f"),
            std::process::id()
        );
        let doc = serde_json::to_string(decision).expect("serializable");
        let path = inbox.join(&name);
        upshift_fsutil::atomic_write_private(&path, doc.as_bytes())
            .map_err(|e| Error::failed(format!("{}: {e}", inbox.display())))?;
        Ok(path)
    }

    /// Reads and removes the decisions queued for `run`, oldest first, as
    /// the events that record them.
    pub fn take(&self, run: RunId) -> Vec<Event> {
        read_inbox_dir(&self.run_dir(run))
    }
}

impl crate::engine::Inbox for DirInbox {
    fn take(&self, run: RunId) -> Vec<Event> {
        DirInbox::take(self, run)
    }
}

/// Reads and removes queued decisions from one run's inbox folder, oldest
/// first.
pub fn read_inbox_dir(dir: &Path) -> Vec<Event> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        if let Ok(text) = std::fs::read_to_string(&f)
            && let Ok(req) = serde_json::from_str::<InboxDecision>(&text)
        {
            out.extend(decision_events(req.decision, req.actor, req.reason));
        }
        let _ = std::fs::remove_file(&f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queued_decision_is_taken_once_as_its_events() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = DirInbox::new(dir.path().join("inbox"));
        let run = RunId::new();
        inbox
            .queue(
                run,
                &InboxDecision {
                    decision: Decision::Skip { step: "a".into() },
                    actor: Actor::default(),
                    reason: "done by hand".into(),
                },
            )
            .unwrap();
        let events = inbox.take(run);
        assert_eq!(events.len(), 2, "the decision and the skip: {events:?}");
        assert!(matches!(&events[1], Event::StepSkipped { step, .. } if step == "a"));
        assert!(inbox.take(run).is_empty(), "taken once");
        assert!(inbox.take(RunId::new()).is_empty(), "another run's inbox");
    }
}
