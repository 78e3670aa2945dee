//! Human- and machine-readable renderings of events and run state, shared
//! by `log`, `status`, the run log file and support tools.

use std::collections::BTreeMap;

use serde::Serialize;
use upshift_journal::{Envelope, Event, Outcome};

use crate::plan::{OnFailure, Plan};
use crate::state::{CompStatus, RunState, RunStatus, StepStatus};

fn short(s: &str, n: usize) -> String {
    let one = s.trim().replace('\n', " ⏎ ");
    if one.chars().count() <= n {
        one
    } else {
        format!("{}…", one.chars().take(n).collect::<String>())
    }
}

/// One event as a line of text (no seq or time).
pub fn event_line(e: &Event) -> String {
    let name = e.name();
    match e {
        Event::RunStarted {
            plan_name,
            plan_hash,
            actor,
            engine_version,
            ..
        } => format!(
            "{name} plan \"{plan_name}\" ({}) by {}@{} pid {} upshift {engine_version}",
            &plan_hash[..plan_hash.len().min(12)],
            actor.user,
            actor.host,
            actor.pid
        ),
        Event::RunResumed {
            actor,
            engine_version,
        } => format!(
            "{name} by {}@{} pid {} upshift {engine_version}",
            actor.user, actor.host, actor.pid
        ),
        Event::RunInterrupted { reason } | Event::RunPaused { reason } => {
            format!("{name} {}", short(reason, 300))
        }
        Event::RunFinished { outcome } => format!("{name} {}", outcome_word(*outcome)),
        Event::StepStarted {
            step,
            attempt,
            resumed_from_checkpoint,
        } => format!(
            "{name} {step} attempt {attempt}{}",
            if *resumed_from_checkpoint {
                " (from checkpoint)"
            } else {
                ""
            }
        ),
        Event::StepCheckpoint {
            step,
            data,
            done,
            total,
        } => format!(
            "{name} {step} {done}/{total} ({} bytes{})",
            data.len(),
            std::str::from_utf8(data)
                .ok()
                .filter(|s| s.len() <= 80 && s.chars().all(|c| !c.is_control()))
                .map(|s| format!(": {s}"))
                .unwrap_or_default()
        ),
        Event::StepProgress {
            step,
            done,
            total,
            message,
        } => {
            format!("{name} {step} {done}/{total} {}", short(message, 80))
        }
        Event::StepSucceeded {
            step,
            attempt,
            outputs,
            reboot_required,
            ..
        } => format!(
            "{name} {step} attempt {attempt}{}{}",
            if outputs.is_empty() {
                String::new()
            } else {
                format!(
                    " outputs: {}",
                    outputs
                        .iter()
                        .map(|(k, v)| format!("{k}={}", short(v, 60)))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
            if *reboot_required {
                " (reboot required)"
            } else {
                ""
            }
        ),
        Event::StepFailed {
            step,
            attempt,
            error,
            transient,
            ..
        } => format!(
            "{name} {step} attempt {attempt}{}: {}",
            if *transient { " (transient)" } else { "" },
            short(error, 300)
        ),
        Event::StepRetryScheduled {
            step,
            next_attempt,
            delay_ms,
        } => {
            format!("{name} {step} attempt {next_attempt} after {delay_ms} ms")
        }
        Event::StepWaiting { step, reason } => format!("{name} {step}: {}", short(reason, 300)),
        Event::StepSkipped { step, reason } => format!("{name} {step}: {}", short(reason, 300)),
        Event::OperatorDecision {
            decision,
            actor,
            reason,
        } => format!(
            "{name} {} by {}@{}{}",
            crate::state::describe_decision(decision),
            actor.user,
            actor.host,
            if reason.is_empty() {
                String::new()
            } else {
                format!(": {}", short(reason, 200))
            }
        ),
        Event::RollbackStarted { reason } => format!("{name} {}", short(reason, 300)),
        Event::CompensationStarted { step } => format!("{name} {step}"),
        Event::CompensationSucceeded { step, .. } => format!("{name} {step}"),
        Event::CompensationFailed { step, error, .. } => {
            format!("{name} {step}: {}", short(error, 300))
        }
        Event::RebootRequested { step, action } => format!("{name} {step}: {action}"),
        Event::Note { text } => format!("{name} {}", short(text, 300)),
        Event::SitePinned { path, hash, .. } => {
            format!("{name} {path} ({})", &hash[..hash.len().min(12)])
        }
        Event::Notified {
            about,
            channel,
            delivered,
            attempts,
            detail,
        } => format!(
            "{name} {channel} about event {about}: {} after {attempts} attempt(s): {}",
            if *delivered {
                "delivered"
            } else {
                "NOT delivered"
            },
            short(detail, 300)
        ),
        Event::StepDispatched {
            step,
            attempt,
            host,
            ticket,
        } => format!("{name} {step} attempt {attempt} on host {host} (ticket {ticket})"),
    }
}

/// An envelope as one `upshift log` line.
pub fn log_line(env: &Envelope) -> String {
    format!(
        "{:>6} {} {}",
        env.seq,
        env.time.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
        event_line(&env.event)
    )
}

/// A duration in words, the one way upshift writes them: `850 ms`,
/// `12.3 s`, `4 min 05 s`, `2 h 03 min`.
pub fn duration_text(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", d.as_secs_f64())
    } else if ms < 3_600_000 {
        format!("{} min {:02} s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{} h {:02} min", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

/// An outcome in one word.
pub fn outcome_word(o: Outcome) -> &'static str {
    match o {
        Outcome::Succeeded => "succeeded",
        Outcome::Failed => "failed",
        Outcome::RolledBack => "rolled_back",
        Outcome::Aborted => "aborted",
    }
}

/// A status word.
pub fn status_word(s: RunStatus) -> &'static str {
    match s {
        RunStatus::Running => "running",
        RunStatus::Paused => "paused",
        RunStatus::Interrupted => "interrupted",
        RunStatus::Failed => "failed",
        RunStatus::Succeeded => "succeeded",
        RunStatus::RolledBack => "rolled_back",
    }
}

/// A step status word.
pub fn step_word(s: &StepStatus) -> &'static str {
    match s {
        StepStatus::Pending => "pending",
        StepStatus::Running => "running",
        StepStatus::Interrupted => "interrupted",
        StepStatus::RetryWait => "retry_wait",
        StepStatus::Waiting => "waiting",
        StepStatus::Failed => "failed",
        StepStatus::Succeeded => "succeeded",
        StepStatus::Skipped => "skipped",
    }
}

/// A compensation status word.
pub fn comp_word(c: &CompStatus) -> &'static str {
    match c {
        CompStatus::None => "none",
        CompStatus::Running => "running",
        CompStatus::Done => "done",
        CompStatus::Failed => "failed",
    }
}

/// An `on_failure` policy word, as the plan writes it.
pub fn on_failure_word(p: OnFailure) -> &'static str {
    match p {
        OnFailure::Pause => "pause",
        OnFailure::Rollback => "rollback",
        OnFailure::Abort => "abort",
    }
}

/// One step in `status --json`.
#[derive(Serialize)]
pub struct StepJson {
    /// Status word.
    pub state: &'static str,
    /// Attempts started.
    pub attempts: u32,
    /// foreach and other counting steps: units done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done: Option<u64>,
    /// Units in all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// Last error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Compensation state, during or after a rollback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compensation: Option<CompStatus>,
    /// The host it runs on (`None`: the coordinator).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The ticket of its latest attempt on that host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
}

/// `status --json`.
#[derive(Serialize)]
pub struct StatusJson {
    /// Run id.
    pub run: String,
    /// Plan name.
    pub plan: String,
    /// Status word.
    pub state: &'static str,
    /// Why it is paused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
    /// Events journaled.
    pub events: u64,
    /// Steps by id.
    pub steps: BTreeMap<String, StepJson>,
    /// Step ids in plan order (for text output).
    #[serde(skip)]
    pub order: Vec<String>,
}

/// Builds the status document. `plan` lists steps not yet seen in events.
pub fn status_json(state: &RunState, plan: Option<&Plan>, live: bool) -> StatusJson {
    let mut ids: Vec<String> = plan.map(|p| p.order.clone()).unwrap_or_default();
    for k in state.steps.keys() {
        if !ids.contains(k) {
            ids.push(k.clone());
        }
    }
    let foreach: Vec<&str> = plan
        .map(|p| {
            p.steps
                .values()
                .filter(|s| s.body.kind == "foreach")
                .map(|s| s.id.as_str())
                .collect()
        })
        .unwrap_or_default();
    let order = ids.clone();
    let steps = ids
        .into_iter()
        .map(|id| {
            let st = state.step(&id);
            let counting = st.total > 0 || foreach.contains(&id.as_str());
            let json = StepJson {
                state: step_word(&st.status),
                attempts: st.attempts,
                done: counting.then_some(st.done),
                total: counting.then_some(st.total),
                error: st.error.clone(),
                compensation: (st.compensation != CompStatus::None).then_some(st.compensation),
                host: plan
                    .and_then(|p| p.steps.get(&id))
                    .and_then(|d| d.host.clone())
                    .or_else(|| st.remote.as_ref().map(|r| r.host.clone())),
                ticket: st.remote.as_ref().map(|r| r.ticket.clone()),
            };
            (id, json)
        })
        .collect();
    StatusJson {
        run: state.run.map(|r| r.to_string()).unwrap_or_default(),
        plan: state.plan_name.clone(),
        state: status_word(state.status(live)),
        paused: state.paused.clone(),
        events: state.events,
        steps,
        order,
    }
}

/// `status` for people.
pub fn status_text(doc: &StatusJson) -> String {
    let mut out = format!(
        "run   {}\nplan  {}\nstate {}\n",
        doc.run, doc.plan, doc.state
    );
    if let Some(p) = &doc.paused {
        out.push_str(&format!("why   {p}\n"));
    }
    out.push('\n');
    let w = doc.steps.keys().map(|k| k.len()).max().unwrap_or(4).max(4);
    for id in &doc.order {
        let Some(s) = doc.steps.get(id) else { continue };
        let mut line = format!("  {id:w$}  {:<11}", s.state);
        if let Some(h) = &s.host
            && !id.ends_with(&format!("@{h}"))
        {
            line.push_str(&format!(" on {h}"));
        }
        if s.attempts > 1 {
            line.push_str(&format!(" attempts {}", s.attempts));
        }
        if let (Some(d), Some(t)) = (s.done, s.total) {
            line.push_str(&format!(" {d}/{t}"));
        }
        if let Some(c) = &s.compensation {
            line.push_str(&format!(" compensation {}", comp_word(c)));
        }
        if let Some(e) = &s.error
            && s.state != "succeeded"
        {
            line.push_str(&format!(" — {}", short(e, 120)));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The words are the ones `--json` writes (serde's `snake_case`), so
    /// text and JSON never name a state differently.
    #[test]
    fn durations_read_well() {
        use std::time::Duration as D;
        assert_eq!(duration_text(D::from_millis(850)), "850 ms");
        assert_eq!(duration_text(D::from_millis(12_340)), "12.3 s");
        assert_eq!(duration_text(D::from_secs(245)), "4 min 05 s");
        assert_eq!(duration_text(D::from_secs(7380)), "2 h 03 min");
    }

    #[test]
    fn words_are_the_json_words() {
        fn json<T: Serialize>(v: &T) -> String {
            serde_json::to_value(v)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        }
        {
            use StepStatus::*;
            let some = [Pending, Running, Interrupted, RetryWait];
            for s in some
                .into_iter()
                .chain([Waiting, Failed, Succeeded, Skipped])
            {
                assert_eq!(step_word(&s), json(&s));
            }
        }
        {
            use RunStatus::*;
            for s in [Running, Paused, Interrupted, Failed, Succeeded, RolledBack] {
                assert_eq!(status_word(s), json(&s));
            }
        }
        for c in [CompStatus::None, CompStatus::Running, CompStatus::Done] {
            assert_eq!(comp_word(&c), json(&c));
        }
        assert_eq!(comp_word(&CompStatus::Failed), "failed");
        for p in [OnFailure::Pause, OnFailure::Rollback, OnFailure::Abort] {
            assert_eq!(on_failure_word(p), json(&p));
        }
    }
}
