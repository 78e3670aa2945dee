//! `upshift status --follow` and `upshift log --follow`: watch a live run
//! from a second terminal.
//!
//! The engine holds the journal directory's lock for writing; redb runs in
//! `SingleWriter` mode, so another process can open the file read-only and
//! every new read transaction sees the engine's latest commit. A follower
//! polls every [`POLL_MS`] from the last seq it saw, folds the new events
//! into its [`RunState`], and stops when the run has finished, or when no
//! engine works on it any more (paused, interrupted, killed):
//! [`crate::cli::live_pid`] is `None`, or the live engine is another run's.
//! sled locks its whole directory, so a sled journal cannot be followed
//! while an engine writes it; the error says so.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use upshift_journal::{Envelope, Event, Journal, RunId};

use super::failed;
use crate::cli::{CliError, JournalArg, code};
use crate::report::{log_line, status_json, status_text, status_word};
use crate::state::{RunState, RunStatus};

/// How often a follower re-reads the journal.
pub const POLL_MS: u64 = 300;
/// How long a follower waits for a run that a live engine is starting.
pub const START_WAIT_S: u64 = 10;

/// A reader that follows one run.
pub struct Follower {
    dir: PathBuf,
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
    pub fn open(run: Option<&str>, journal: &JournalArg) -> Result<Follower, CliError> {
        let dir = journal.dir();
        // `upshift run` prints the run id just before it journals
        // run.started: a follower started on that id at once waits for it
        // (bounded) while an engine is live.
        let deadline = std::time::Instant::now() + Duration::from_secs(START_WAIT_S);
        let (j, run) = loop {
            let attempt = super::open_reader(&dir)
                .and_then(|j| crate::cli::pick_run(&j, run, false).map(|r| (j, r)));
            match attempt {
                Ok(found) => break found,
                Err(e) => {
                    // (sled cannot be read beside a live engine at all.)
                    if std::time::Instant::now() >= deadline
                        || upshift_journal::Backend::detect(&dir) == upshift_journal::Backend::Sled
                        || crate::cli::live_pid(&dir).is_none()
                    {
                        return Err(e);
                    }
                    std::thread::sleep(Duration::from_millis(POLL_MS));
                }
            }
        };
        Ok(Follower {
            dir,
            journal: j,
            run,
            next_seq: 0,
            state: RunState::default(),
            session_pid: None,
        })
    }

    /// Reads the events journaled since the last call and folds them.
    pub fn poll(&mut self) -> Result<Vec<Envelope>, CliError> {
        let mut new = Vec::new();
        self.journal
            .scan(self.run, self.next_seq, &mut |e| {
                new.push(e);
                ControlFlow::Continue(())
            })
            .map_err(|e| {
                failed(format!(
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
        match crate::cli::live_pid(&self.dir) {
            None => false,
            // A live engine of another run of this journal does not count.
            Some(Some(pid)) => self.session_pid.is_none_or(|p| p == pid),
            Some(None) => true,
        }
    }

    /// Polls until the run is over or no engine works on it, calling
    /// `seen` with each batch of new events (also the first, possibly
    /// long one). Returns the final state.
    pub fn follow(
        &mut self,
        mut seen: impl FnMut(&[Envelope], &RunState, bool),
    ) -> Result<(), CliError> {
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

fn end_words(state: &RunState) -> String {
    match state.status(false) {
        RunStatus::Paused => format!(
            "paused: {}",
            state
                .paused
                .clone()
                .unwrap_or_default()
                .replace('\n', "\n  ")
        ),
        RunStatus::Interrupted => {
            "interrupted (no engine works on it; `upshift resume` continues)".into()
        }
        s => status_word(s).to_string(),
    }
}

fn exit_code(state: &RunState) -> u8 {
    match state.status(false) {
        RunStatus::Succeeded => code::OK,
        RunStatus::Failed | RunStatus::RolledBack => code::FAILED,
        RunStatus::Paused => code::PAUSED,
        RunStatus::Interrupted | RunStatus::Running => code::INTERRUPTED,
    }
}

/// `upshift log RUN --follow`: every event, then each new one as it is
/// journaled. Ends (exit 0) when the run finishes, pauses or is interrupted.
pub fn log_follow(run: Option<&str>, journal: &JournalArg) -> Result<u8, CliError> {
    let mut f = Follower::open(run, journal)?;
    let mut broken = false;
    f.follow(|new, _, _| {
        if broken {
            return;
        }
        let mut out = std::io::stdout().lock();
        for e in new {
            if writeln!(out, "{}", log_line(e)).is_err() {
                broken = true;
                return;
            }
        }
        // Each batch reaches a pipe at once, not when the buffer fills.
        if out.flush().is_err() {
            broken = true;
        }
    })?;
    eprintln!("run {} {} — end of follow", f.run, end_words(&f.state));
    Ok(code::OK)
}

/// What a follower shows of a step; a line is printed when it changes.
type StepSig = (&'static str, u32, Option<u64>, Option<u64>, Option<String>);

/// `upshift status RUN --follow`: per-step progress bars on a terminal
/// (plain lines when stderr is not one), until the run is over or no
/// engine works on it; then the final status on stdout.
pub fn status_follow(run: Option<&str>, journal: &JournalArg) -> Result<u8, CliError> {
    let mut f = Follower::open(run, journal)?;
    let tty = std::io::stderr().is_terminal();
    let multi = MultiProgress::with_draw_target(if tty {
        ProgressDrawTarget::stderr_with_hz(4)
    } else {
        ProgressDrawTarget::hidden()
    });
    let header = multi.add(ProgressBar::new_spinner());
    header.set_style(ProgressStyle::with_template("{spinner} {wide_msg}").expect("template"));
    let bar_style =
        ProgressStyle::with_template("{prefix:<18!} [{bar:20}] {pos:>4}/{len:<4} {wide_msg}")
            .expect("template")
            .progress_chars("=> ");
    let mut bars: BTreeMap<String, ProgressBar> = BTreeMap::new();
    let mut last: BTreeMap<String, StepSig> = BTreeMap::new();
    let mut plan_hash = String::new();
    let mut plan = None;
    f.follow(|_, state, live| {
        if state.plan_hash != plan_hash {
            plan_hash = state.plan_hash.clone();
            plan = super::pinned_plan(state).ok();
        }
        let doc = status_json(state, plan.as_ref(), live);
        let head = format!(
            "run {} — plan \"{}\" — {} — {} events",
            doc.run, doc.plan, doc.state, doc.events
        );
        if tty {
            header.set_message(head);
            header.tick();
        }
        // Plan order, then any step only the events know.
        let mut ids: Vec<&String> = plan
            .as_ref()
            .map(|p| {
                p.order
                    .iter()
                    .filter(|id| doc.steps.contains_key(*id))
                    .collect()
            })
            .unwrap_or_default();
        for id in doc.steps.keys() {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        for id in ids {
            let s = &doc.steps[id];
            let sig: StepSig = (
                s.state,
                s.attempts,
                s.done,
                s.total,
                s.compensation
                    .as_ref()
                    .map(|c| serde_json::to_string(c).unwrap_or_default()),
            );
            let mut msg = s.state.to_string();
            if s.attempts > 1 {
                msg.push_str(&format!(" (attempt {})", s.attempts));
            }
            if let Some(c) = &sig.4 {
                msg.push_str(&format!(" compensation {}", c.trim_matches('"')));
            }
            if let Some(e) = &s.error
                && s.state != "succeeded"
            {
                msg.push_str(&format!(" — {}", e.lines().next().unwrap_or_default()));
            }
            let (pos, len) = match (s.done, s.total) {
                (Some(d), Some(t)) if t > 0 => (d, t),
                _ => (u64::from(matches!(s.state, "succeeded" | "skipped")), 1),
            };
            if tty {
                let bar = bars.entry(id.clone()).or_insert_with(|| {
                    let b = multi.add(ProgressBar::new(len));
                    b.set_style(bar_style.clone());
                    b.set_prefix(id.clone());
                    b
                });
                bar.set_length(len);
                bar.set_position(pos);
                bar.set_message(msg.clone());
            } else if last.get(id) != Some(&sig) {
                let counts = match (s.done, s.total) {
                    (Some(d), Some(t)) => format!(" {d}/{t}"),
                    _ => String::new(),
                };
                eprintln!(
                    "{} {id} {msg}{counts}",
                    chrono::Utc::now().format("%H:%M:%S%.3f")
                );
            }
            last.insert(id.clone(), sig);
        }
    })?;
    for b in bars.values() {
        b.abandon();
    }
    header.finish_and_clear();
    let _ = multi.clear();
    let doc = status_json(&f.state, plan.as_ref(), false);
    print!("{}", status_text(&doc));
    eprintln!("run {} {} — end of follow", f.run, end_words(&f.state));
    Ok(exit_code(&f.state))
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
        let arg = JournalArg {
            journal: Some(dir.path().to_path_buf()),
        };
        let mut f = Follower::open(Some(&run.to_string()), &arg).unwrap();
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
