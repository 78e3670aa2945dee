//! What an operator sees while a run goes: progress bars on a terminal,
//! plain lines otherwise. Only this module knows the terminal (whether
//! stderr is one, indicatif); the engine reports through
//! [`crate::engine::Observer`], which [`Ui`] implements.
//!
//! - [`Ui`]: the live run (`run`, `resume`, `rollback`, `demo`).
//! - [`follow`]: `status --follow` beside a live engine.

use std::collections::HashMap;
use std::io::IsTerminal;
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
    bars: Mutex<HashMap<String, (ProgressBar, Instant)>>,
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
            verbose_output,
        }
    }

    fn line(&self, text: String) {
        if self.tty {
            let _ = self.multi.println(text);
        } else {
            eprintln!("{text}");
        }
    }

    fn start_bar(&self, step: &str) {
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix:.bold} {elapsed} {wide_msg}")
                .expect("template"),
        );
        bar.set_prefix(step.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        self.bars
            .lock()
            .expect("poisoned")
            .insert(step.to_string(), (bar, Instant::now()));
    }

    fn end_bar(&self, step: &str) -> Option<Duration> {
        let (bar, t) = self.bars.lock().expect("poisoned").remove(step)?;
        bar.finish_and_clear();
        self.multi.remove(&bar);
        Some(t.elapsed())
    }

    fn set_progress(&self, step: &str, done: u64, total: u64, message: &str) {
        let bars = self.bars.lock().expect("poisoned");
        let Some((bar, _)) = bars.get(step) else {
            return;
        };
        if total > 0 && bar.length() != Some(total) {
            bar.set_length(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:.bold} [{bar:30}] {pos}/{len} {elapsed}<{eta} {wide_msg}",
                )
                .expect("template")
                .progress_chars("=> "),
            );
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
        tracing::info!(target: "upshift::journal", seq = env.seq, "{}", crate::report::event_line(&env.event));
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
                self.line(format!("▶ {step}{extra}"));
                self.start_bar(step);
            }
            Event::StepCheckpoint {
                step, done, total, ..
            } if *total > 0 => {
                self.set_progress(step, *done, *total, "");
                if !self.tty && (*done == *total || *done % (*total / 10).max(1) == 0) {
                    eprintln!("  {step}: {done}/{total}");
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
                self.line(format!("✓ {step}{}{reboot}", secs(t)));
            }
            Event::StepFailed {
                step,
                error,
                attempt,
                ..
            } => {
                let t = self.end_bar(step);
                self.line(format!("✗ {step} (attempt {attempt}){}: {error}", secs(t)));
            }
            Event::StepRetryScheduled {
                step,
                next_attempt,
                delay_ms,
            } => {
                self.line(format!(
                    "↻ {step}: attempt {next_attempt} in {}",
                    crate::report::duration_text(Duration::from_millis(*delay_ms))
                ));
            }
            Event::StepWaiting { step, reason } => {
                self.end_bar(step);
                self.line(format!("⏸ {step} waits for an operator: {reason}"));
            }
            Event::StepSkipped { step, reason } => self.line(format!("⤼ {step} skipped: {reason}")),
            Event::RollbackStarted { reason } => self.line(format!("⟲ rollback: {reason}")),
            Event::CompensationStarted { step } => {
                self.line(format!("⟲ compensating {step}"));
                self.start_bar(step);
            }
            Event::CompensationSucceeded { step, .. } => {
                let t = self.end_bar(step);
                self.line(format!("✓ compensated {step}{}", secs(t)));
            }
            Event::CompensationFailed { step, error, .. } => {
                self.end_bar(step);
                self.line(format!("✗ compensation of {step} failed: {error}"));
            }
            Event::RebootRequested { step, action } => {
                self.line(format!("⚠ {step} requires a reboot: {action}"))
            }
            Event::RunResumed { .. } => {
                let inflight = state.in_flight();
                if !inflight.is_empty() {
                    self.line(format!(
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
}
