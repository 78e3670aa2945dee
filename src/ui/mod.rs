//! What an operator sees while a run goes: progress bars on a terminal,
//! plain lines otherwise. Only this module knows the terminal (whether
//! stderr is one, indicatif); the engine reports through
//! [`crate::engine::Observer`], which [`Ui`] implements.
//!
//! - [`Ui`]: the live run (`run`, `resume`, `rollback`, `demo`).
//! - [`follow`]: `status --follow` beside a live engine.
//!
//! The step path is kept lean: bars exist only on a terminal (their styles
//! are parsed once), and the lines of one commit's events are written
//! together when the engine calls [`Observer::flush`].

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use upshift_journal::{Envelope, Event};

use crate::engine::Observer;
use crate::state::RunState;

pub mod follow;

/// Shows progress on stderr and records events in the run's log (tracing).
pub struct Ui {
    multi: MultiProgress,
    tty: bool,
    bars: Mutex<HashMap<String, (Option<ProgressBar>, Instant)>>,
    spinner: ProgressStyle,
    counter: ProgressStyle,
    /// Event lines not written yet (plain output), see [`Observer::flush`].
    pending: Mutex<String>,
    verbose_output: bool,
}

impl Ui {
    /// A UI on stderr; bars only when stderr is a terminal.
    pub fn new(verbose_output: bool) -> Ui {
        let tty = std::io::stderr().is_terminal();
        let multi = MultiProgress::with_draw_target(if tty {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        Ui {
            multi,
            tty,
            bars: Mutex::new(HashMap::new()),
            spinner: ProgressStyle::with_template("{spinner} {prefix:.bold} {elapsed} {wide_msg}")
                .expect("template"),
            counter: ProgressStyle::with_template(
                "{prefix:.bold} [{bar:30}] {pos}/{len} {elapsed}<{eta} {wide_msg}",
            )
            .expect("template")
            .progress_chars("=> "),
            pending: Mutex::new(String::new()),
            verbose_output,
        }
    }

    /// A line now (a step's output).
    fn line(&self, text: String) {
        if self.tty {
            let _ = self.multi.println(text);
        } else {
            eprintln!("{text}");
        }
    }

    /// An event's line: on a terminal now, otherwise with the other lines
    /// of its commit.
    fn event_line(&self, text: String) {
        if self.tty {
            let _ = self.multi.println(text);
        } else {
            let mut p = self.pending.lock().expect("poisoned");
            p.push_str(&text);
            p.push('\n');
        }
    }

    fn start_bar(&self, step: &str) {
        // Plain output has no bars: only the start time is kept.
        let bar = self.tty.then(|| {
            let bar = self.multi.add(ProgressBar::new_spinner());
            bar.set_style(self.spinner.clone());
            bar.set_prefix(step.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        self.bars
            .lock()
            .expect("poisoned")
            .insert(step.to_string(), (bar, Instant::now()));
    }

    fn end_bar(&self, step: &str) -> Option<Duration> {
        let (bar, t) = self.bars.lock().expect("poisoned").remove(step)?;
        if let Some(bar) = bar {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
        Some(t.elapsed())
    }

    fn set_progress(&self, step: &str, done: u64, total: u64, message: &str) {
        let bars = self.bars.lock().expect("poisoned");
        let Some((Some(bar), _)) = bars.get(step) else {
            return;
        };
        if total > 0 && bar.length() != Some(total) {
            bar.set_length(total);
            bar.set_style(self.counter.clone());
        }
        bar.set_position(done);
        if !message.is_empty() {
            bar.set_message(message.to_string());
        }
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map(|d| format!(" in {}", crate::report::duration_text(d)))
        .unwrap_or_default()
}

impl Observer for Ui {
    fn event(&self, env: &Envelope, state: &RunState) {
        tracing::info!(target: crate::logging::JOURNAL_TARGET, seq = env.seq, "{}", crate::report::event_line(&env.event));
        match &env.event {
            Event::StepStarted {
                step,
                attempt,
                resumed_from_checkpoint,
            } => {
                let extra = match (*attempt, resumed_from_checkpoint) {
                    (1, false) => String::new(),
                    (a, true) => format!(" (attempt {a}, from its checkpoint)"),
                    (a, false) => format!(" (attempt {a})"),
                };
                self.event_line(format!("▶ {step}{extra}"));
                self.start_bar(step);
            }
            Event::StepDispatched {
                step, host, ticket, ..
            } => self.event_line(format!("  {step} on host {host} (ticket {ticket})")),
            // What happened to a remote host (connected, connection lost and
            // back, rebooted): `crate::remote` writes these notes.
            Event::Note { text }
                if text.starts_with("host ")
                    || text.contains(": host ")
                    || text.contains(" on host ") =>
            {
                self.event_line(format!("  {text}"))
            }
            Event::StepCheckpoint {
                step, done, total, ..
            } if *total > 0 => {
                self.set_progress(step, *done, *total, "");
                if !self.tty && (*done == *total || *done % (*total / 10).max(1) == 0) {
                    self.event_line(format!("  {step}: {done}/{total}"));
                }
            }
            Event::StepSucceeded {
                step,
                reboot_required,
                ..
            } => {
                let t = self.end_bar(step);
                let reboot = if *reboot_required {
                    " — reboot required"
                } else {
                    ""
                };
                self.event_line(format!("✓ {step}{}{reboot}", secs(t)));
            }
            Event::StepFailed {
                step,
                error,
                attempt,
                ..
            } => {
                let t = self.end_bar(step);
                self.event_line(format!("✗ {step} (attempt {attempt}){}: {error}", secs(t)));
            }
            Event::StepRetryScheduled {
                step,
                next_attempt,
                delay_ms,
            } => {
                self.event_line(format!(
                    "↻ {step}: attempt {next_attempt} in {}",
                    crate::report::duration_text(Duration::from_millis(*delay_ms))
                ));
            }
            Event::StepWaiting { step, reason } => {
                self.end_bar(step);
                self.event_line(format!("⏸ {step} waits for an operator: {reason}"));
            }
            Event::StepSkipped { step, reason } => {
                self.event_line(format!("⤼ {step} skipped: {reason}"))
            }
            Event::RollbackStarted { reason } => self.event_line(format!("⟲ rollback: {reason}")),
            Event::CompensationStarted { step } => {
                self.event_line(format!("⟲ compensating {step}"));
                self.start_bar(step);
            }
            Event::CompensationSucceeded { step, .. } => {
                let t = self.end_bar(step);
                self.event_line(format!("✓ compensated {step}{}", secs(t)));
            }
            Event::CompensationFailed { step, error, .. } => {
                self.end_bar(step);
                self.event_line(format!("✗ compensation of {step} failed: {error}"));
            }
            Event::RebootRequested { step, action } => {
                self.event_line(format!("⚠ {step} requires a reboot: {action}"))
            }
            Event::RunResumed { .. } => {
                let inflight = state.in_flight();
                if !inflight.is_empty() {
                    self.event_line(format!(
                        "resuming; interrupted steps run again: {}",
                        inflight.join(", ")
                    ));
                }
            }
            _ => {}
        }
    }

    fn output(&self, step: &str, text: &str) {
        tracing::debug!(target: "upshift::output", step, "{}", text.trim_end());
        if self.verbose_output {
            for l in text.lines() {
                self.line(format!("  {step} │ {l}"));
            }
        }
    }

    fn progress(&self, step: &str, done: u64, total: u64, message: &str) {
        self.set_progress(step, done, total, message);
    }

    fn flush(&self) {
        let lines = std::mem::take(&mut *self.pending.lock().expect("poisoned"));
        if !lines.is_empty() {
            let _ = std::io::stderr().lock().write_all(lines.as_bytes());
        }
        crate::logging::flush_run_log();
    }
}
