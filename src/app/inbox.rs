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

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use upshift_journal::{Actor, Decision, Event, RunId};

use super::decisions::{check_decision, decision_events};
use crate::error::{Error, Result};
use crate::plan::Plan;
use crate::state::{RunState, describe_decision};

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

    /// The folders a decision passes through, each of which must be
    /// private: the journal folder, `inbox/` and the run's folder.
    fn check_private(&self, run: RunId) -> std::result::Result<(), upshift_fsutil::Insecure> {
        let journal = self.root.parent().unwrap_or(&self.root);
        for dir in [journal, self.root.as_path(), self.run_dir(run).as_path()] {
            upshift_fsutil::check_private_dir(dir)?;
        }
        Ok(())
    }

    /// Queues a decision for the engine that runs `run` (owner-only
    /// folders and file; refused if others may write into the inbox).
    pub fn queue(&self, run: RunId, decision: &InboxDecision) -> Result<PathBuf> {
        let inbox = self.run_dir(run);
        upshift_fsutil::create_private_dir_all(&inbox)
            .map_err(|e| Error::failed(format!("{}: {e}", inbox.display())))?;
        self.check_private(run)
            .map_err(|e| Error::failed(e.to_string()))?;
        // Time, pid and a counter: unique, and in the order given.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let name = format!(
            "{}-{}-{:06}.json",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.6f"),
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let doc = serde_json::to_string(decision).expect("serializable");
        let path = inbox.join(&name);
        upshift_fsutil::atomic_write_private(&path, doc.as_bytes())
            .map_err(|e| Error::failed(format!("{}: {e}", inbox.display())))?;
        Ok(path)
    }

    /// Reads and removes the decisions queued for `run`, oldest first, as
    /// the events that record them, journaled with the OS account that
    /// wrote each file (the name inside it is kept as "claimed").
    ///
    /// A file is refused (a note says why, the file is removed, nothing
    /// else changes) when the inbox is not private, when its owner is
    /// neither the journal's owner nor an administrator, or when the
    /// decision no longer fits the run as it stands ([`check_decision`];
    /// the run may have moved on since the CLI checked it).
    pub fn take(&self, run: RunId, plan: &Plan, state: &RunState) -> Vec<Event> {
        let Ok(rd) = std::fs::read_dir(self.run_dir(run)) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        let mut out = Vec::new();
        // Later decisions of the same poll are checked against the run as
        // the earlier ones leave it.
        let mut after: Option<RunState> = None;
        let insecure = self.check_private(run).err();
        let journal = self.root.parent().unwrap_or(&self.root);
        for f in files {
            let name = f.file_name().unwrap_or_default().to_string_lossy();
            let refuse = |why: String| Event::Note {
                text: format!("refused the decision file {name}: {why}"),
            };
            if let Some(e) = &insecure {
                out.push(refuse(e.to_string()));
                let _ = std::fs::remove_file(&f);
                continue;
            }
            let writer = match upshift_fsutil::written_by_owner_or_admin(&f, journal) {
                Ok((true, owner)) => owner,
                Ok((false, owner)) => {
                    out.push(refuse(format!(
                        "written by {owner}, who is neither the journal's owner nor an administrator"
                    )));
                    let _ = std::fs::remove_file(&f);
                    continue;
                }
                Err(e) => {
                    out.push(refuse(format!("its owner cannot be read: {e}")));
                    let _ = std::fs::remove_file(&f);
                    continue;
                }
            };
            if let Ok(text) = std::fs::read_to_string(&f)
                && let Ok(mut req) = serde_json::from_str::<InboxDecision>(&text)
            {
                req.actor.user = os_identity(&writer, &req.actor.user);
                let now = after.as_ref().unwrap_or(state);
                match check_decision(Some(plan), now, run, &req.decision) {
                    Ok(()) => {
                        let events = decision_events(req.decision, req.actor, req.reason);
                        let st = after.get_or_insert_with(|| state.clone());
                        for e in &events {
                            st.apply_event(e, chrono::Utc::now(), st.events);
                        }
                        out.extend(events);
                    }
                    Err(e) => out.push(Event::Note {
                        text: format!(
                            "refused a queued decision ({}) by {}@{}: {}",
                            describe_decision(&req.decision),
                            req.actor.user,
                            req.actor.host,
                            e.message()
                        ),
                    }),
                }
            }
            let _ = std::fs::remove_file(&f);
        }
        out
    }
}

/// The user journaled for a decision file: the OS account that wrote it,
/// and the name inside the file when that differs ("claimed").
fn os_identity(writer: &upshift_fsutil::Owner, claimed: &str) -> String {
    let os = writer.name.clone().unwrap_or_else(|| writer.id.clone());
    if claimed == os {
        os
    } else {
        format!("{os} (claimed: {claimed})")
    }
}

impl crate::engine::Inbox for DirInbox {
    fn take(&self, run: RunId, plan: &Plan, state: &RunState) -> Vec<Event> {
        DirInbox::take(self, run, plan, state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        crate::plan::parse(
            std::path::Path::new("p.toml"),
            "name = \"p\"\n[steps.a]\nkind = \"manual\"\nwith = { instructions = \"x\" }\n",
            &upshift_steps::registry(),
            &crate::plan::LoadOptions::default(),
        )
        .unwrap()
    }

    fn queue(inbox: &DirInbox, run: RunId, decision: Decision) {
        inbox
            .queue(
                run,
                &InboxDecision {
                    decision,
                    actor: Actor::default(),
                    reason: "done by hand".into(),
                },
            )
            .unwrap();
    }

    /// A private folder with an inbox, a run, its plan and its state.
    fn fixture() -> (tempfile::TempDir, DirInbox, RunId, Plan, RunState) {
        let dir = tempfile::tempdir().unwrap();
        let inbox = DirInbox::new(dir.path().join("inbox"));
        (dir, inbox, RunId::new(), plan(), RunState::default())
    }

    #[test]
    fn a_queued_decision_is_taken_once_as_its_events() {
        let (_dir, inbox, run, plan, state) = fixture();
        queue(&inbox, run, Decision::Skip { step: "a".into() });
        let events = inbox.take(run, &plan, &state);
        assert_eq!(events.len(), 2, "the decision and the skip: {events:?}");
        assert!(matches!(&events[1], Event::StepSkipped { step, .. } if step == "a"));
        assert!(inbox.take(run, &plan, &state).is_empty(), "taken once");
        let other = RunId::new();
        assert!(
            inbox.take(other, &plan, &state).is_empty(),
            "another run's inbox"
        );
    }

    #[test]
    fn a_decision_that_no_longer_fits_becomes_a_refusal_note() {
        let (_dir, inbox, run, plan, state) = fixture();
        queue(&inbox, run, Decision::Approve { step: "a".into() });
        // The skip is checked against the run as the refused approval left
        // it (unchanged); a second skip against the run after the first.
        queue(&inbox, run, Decision::Skip { step: "a".into() });
        queue(&inbox, run, Decision::Skip { step: "a".into() });
        let events = inbox.take(run, &plan, &state);
        let Event::Note { text } = &events[0] else {
            panic!("{events:?}")
        };
        assert!(
            text.contains("refused a queued decision (approve a)")
                && text.contains("step `a` is pending (it has not started)"),
            "{text}"
        );
        assert!(
            matches!(&events[2], Event::StepSkipped { .. }),
            "{events:?}"
        );
        assert!(
            matches!(&events[3], Event::Note { text } if text.contains("is skipped")),
            "{events:?}"
        );
        assert_eq!(events.len(), 4);
    }
}
