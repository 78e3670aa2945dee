//! `upshift status --follow` and `upshift log --follow`: watch a live run
//! from a second terminal.
//!
//! The engine holds the journal directory's lock for writing; redb runs in
//! `SingleWriter` mode, so another process can open the file read-only and
//! every new read transaction sees the engine's latest commit. A follower
//! polls every [`POLL_MS`] from the last seq it saw, folds the new events
//! into its [`RunState`], and stops when the run has finished, or when no
//! engine works on it any more (paused, interrupted, killed):
//! [`Workspace::live_pid`] is `None`, or the live engine is another run's.
//! sled locks its whole directory, so a sled journal cannot be followed
//! while an engine writes it; the error says so.
//!
//! This module reads; showing is elsewhere: `log --follow` prints in
//! `src/commands/status.rs`, the progress bars of `status --follow` are in
//! `src/ui/follow.rs`.

use std::ops::ControlFlow;
use std::time::Duration;

use upshift_journal::{Envelope, Event, Journal, RunId};

use crate::app::Workspace;
use crate::app::workspace::pick_run;
use crate::error::{Error, Result};
use crate::state::RunState;

/// How often a follower re-reads the journal.
pub const POLL_MS: u64 = 300;
/// How long a follower waits for a run that a live engine is starting.
pub const START_WAIT_S: u64 = 10;

/// A reader that follows one run.
pub struct Follower {
    ws: Workspace,
    journal: Journal,
    /// The run.
    pub run: RunId,
    next_seq: u64,
    /// The fold of every event read so far.
    pub state: RunState,
    /// Pid of the engine session that journaled the last run.started/resumed.
    session_pid: Option<u32>,
}

impl Follower {
    /// Opens the journal read-only and picks the run (default: the latest).
    pub fn open(run: Option<&str>, ws: &Workspace) -> Result<Follower> {
        // `upshift run` prints the run id just before it journals
        // run.started: a follower started on that id at once waits for it
        // (bounded) while an engine is live.
        let deadline = std::time::Instant::now() + Duration::from_secs(START_WAIT_S);
        let (j, run) = loop {
            let attempt = ws
                .open_reader()
                .and_then(|j| pick_run(&j, run, false).map(|r| (j, r)));
            match attempt {
                Ok(found) => break found,
                Err(e) => {
                    // (sled cannot be read beside a live engine at all.)
                    if std::time::Instant::now() >= deadline
                        || upshift_journal::Backend::detect(ws.dir())
                            == upshift_journal::Backend::Sled
                        || ws.live_pid().is_none()
                    {
                        return Err(e);
                    }
                    std::thread::sleep(Duration::from_millis(POLL_MS));
                }
            }
        };
        Ok(Follower {
            ws: ws.clone(),
            journal: j,
            run,
            next_seq: 0,
            state: RunState::default(),
            session_pid: None,
        })
    }

    /// Reads the events journaled since the last call and folds them.
    pub fn poll(&mut self) -> Result<Vec<Envelope>> {
        let mut new = Vec::new();
        self.journal
            .scan(self.run, self.next_seq, &mut |e| {
                new.push(e);
                ControlFlow::Continue(())
            })
            .map_err(|e| {
                Error::failed(format!(
                    "{e}\n  the events shown so far are intact; nothing after the damage is shown"
                ))
            })?;
        for e in &new {
            self.state.apply(e);
            if let Event::RunStarted { actor, .. } | Event::RunResumed { actor, .. } = &e.event {
                self.session_pid = Some(actor.pid);
            }
        }
        if let Some(last) = new.last() {
            self.next_seq = last.seq + 1;
        }
        Ok(new)
    }

    /// Whether an engine works on this run now.
    pub fn live(&self) -> bool {
        match self.ws.live_pid() {
            None => false,
            // A live engine of another run of this journal does not count.
            Some(Some(pid)) => self.session_pid.is_none_or(|p| p == pid),
            Some(None) => true,
        }
    }

    /// Started before an engine works on the run (e.g. before `upshift
    /// resume`): polls until one does or the run has ended. `waiting` is
    /// called once first, with the state, when there is something to wait
    /// for. Ctrl-C ends the wait (the process's default). Returns whether
    /// it waited.
    pub fn wait_for_engine(&mut self, waiting: impl FnOnce(&RunState)) -> Result<bool> {
        self.poll()?;
        if self.state.outcome.is_some() || self.live() {
            return Ok(false);
        }
        waiting(&self.state);
        // A journal whose engine was killed is read from a recovered copy
        // (a snapshot): when the file changes — an engine opened it and
        // wrote — it is opened again to see what was written.
        let stamp = |ws: &Workspace| {
            std::fs::metadata(ws.dir().join("journal.redb"))
                .and_then(|m| Ok((m.len(), m.modified()?)))
                .ok()
        };
        let mut seen = stamp(&self.ws);
        loop {
            std::thread::sleep(Duration::from_millis(POLL_MS));
            let now = stamp(&self.ws);
            if now != seen || self.ws.live_pid().is_some() {
                seen = now;
                if let Ok(j) = self.ws.open_reader() {
                    self.journal = j;
                }
            }
            self.poll()?;
            if self.state.outcome.is_some() || self.live() {
                return Ok(true);
            }
        }
    }

    /// Polls until the run is over or no engine works on it, calling
    /// `seen` with each batch of new events (also the first, possibly
    /// long one). Returns the final state.
    pub fn follow(&mut self, mut seen: impl FnMut(&[Envelope], &RunState, bool)) -> Result<()> {
        loop {
            let new = self.poll()?;
            let live = self.state.outcome.is_none() && self.live();
            seen(&new, &self.state, live);
            if self.state.outcome.is_some() {
                return Ok(());
            }
            if !live {
                // The engine is gone: read what it committed last, then stop.
                let rest = self.poll()?;
                seen(&rest, &self.state, false);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(POLL_MS));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use upshift_journal::{Actor, Envelope};

    #[test]
    fn a_follower_reads_only_new_events_and_sees_the_writer_go() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = Journal::open(dir.path()).unwrap();
        let run = RunId::new();
        let t = chrono::Utc::now();
        let env = |seq, event| Envelope {
            run,
            seq,
            time: t,
            event,
        };
        writer
            .append(&[env(
                0,
                Event::RunStarted {
                    plan_name: "p".into(),
                    plan_path: "/p.toml".into(),
                    plan_text: String::new(),
                    plan_hash: String::new(),
                    vars: Default::default(),
                    engine_version: "0.1.0".into(),
                    actor: Actor {
                        pid: std::process::id(),
                        ..Actor::default()
                    },
                },
            )])
            .unwrap();
        let ws = Workspace::new(dir.path());
        let mut f = Follower::open(Some(&run.to_string()), &ws).unwrap();
        assert_eq!(f.poll().unwrap().len(), 1);
        assert!(f.live(), "the writer holds the journal");
        writer
            .append(&[
                env(1, Event::Note { text: "a".into() }),
                env(2, Event::Note { text: "b".into() }),
            ])
            .unwrap();
        let new = f.poll().unwrap();
        assert_eq!(new.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert!(f.poll().unwrap().is_empty());
        assert_eq!(f.state.events, 3);
        drop(writer);
        assert!(!f.live(), "no engine any more");
    }
}
