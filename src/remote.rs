//! Steps on remote hosts: the engine's side of the ticket contract
//! (`upshift-remote`, docs/remote.md).
//!
//! For a step whose host is reached over ssh, the engine journals
//! `StepDispatched { step, attempt, host, ticket }` in the commit of its
//! `StepStarted`, then [`run_ticket`] starts the ticket on the host (a
//! start that finds the ticket existing starts nothing) and follows it:
//! output to the step's output tail and the terminal, checkpoints to the
//! journal (those a re-attached follower reads again are skipped by their
//! seq), the end to the step's end. A dropped connection is a progress
//! line and a note, the step keeps running on the host; a runner found gone
//! ([`Ticket::Restart`]) makes the engine start a new attempt from the last
//! checkpoint under a new ticket. Hosts with `transport = "local"` run their
//! steps in the engine's process, as steps without a host do.
//!
//! This module knows the plan and the remote crate, not the engine: the
//! engine hands it a [`StepContext`] (its journal and terminal) and its
//! redactor as a [`Redact`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use upshift_remote::RemoteHost;
use upshift_remote::client::{
    ClientOptions, HostConfig, Redact, Started, TicketEvent, TransportConfig,
};
use upshift_remote::protocol::{Cursor, EndState, ProbeAnswer, StartRequest, StepOp, TicketId};
use upshift_remote::transport::ssh::SshConfig;
use upshift_steps::{Probe, StepContext, StepError, StepOutcome};

use crate::hosts::{HostDef, Transport};
use crate::plan::Plan;

/// How long a remote host may take to come back from a reboot the plan
/// asked for (`reboot = "auto"`) before the run pauses.
pub const REBOOT_WAIT: Duration = Duration::from_secs(30 * 60);

/// How the wait of a step whose host could not be reached for too long
/// begins: `resume` re-attaches to its ticket (it may still run there)
/// instead of starting the step again.
pub const LOST_TICKET: &str = "lost ticket";

/// A run's ssh hosts, each ready to connect (or why it cannot be).
pub type Hosts = BTreeMap<String, Result<RemoteHost, String>>;

/// The coordinator's handles on the plan's ssh hosts. Hashes `binary` (what
/// goes on the hosts: the coordinator's own `upshift`) once; connects
/// nothing.
pub fn hosts(plan: &Plan, binary: Option<PathBuf>) -> Hosts {
    let ssh: Vec<&HostDef> = plan
        .hosts
        .values()
        .filter(|h| h.transport == Transport::Ssh)
        .collect();
    if ssh.is_empty() {
        return Hosts::new();
    }
    let binary = match binary.or_else(|| std::env::current_exe().ok()) {
        Some(b) => b,
        None => {
            return ssh
                .iter()
                .map(|h| {
                    (
                        h.name.clone(),
                        Err("the upshift binary to install on the host is unknown".to_string()),
                    )
                })
                .collect();
        }
    };
    let sha = upshift_steps::hash::sha256_file(&binary).map(|(s, _)| s);
    ssh.iter()
        .map(|h| {
            let host = match &sha {
                Err(e) => Err(format!(
                    "host {}: cannot read the binary to install, {}: {e}",
                    h.name,
                    binary.display()
                )),
                Ok(sha) => {
                    let mut opts = ClientOptions::new(&binary);
                    opts.binary_sha256 = Some(sha.clone());
                    RemoteHost::new(host_config(h), opts).map_err(|e| e.to_string())
                }
            };
            (h.name.clone(), host)
        })
        .collect()
}

/// A plan's host as the remote crate takes it.
pub fn host_config(h: &HostDef) -> HostConfig {
    let transport = match h.transport {
        Transport::Local => TransportConfig::Local,
        Transport::Ssh => {
            let mut c = SshConfig::new(&h.address, &h.user, &h.identity_file, &h.known_hosts_file);
            c.port = h.port;
            if let Some(t) = h.connect_timeout {
                c.connect_timeout = t;
            }
            if let Some(t) = h.keepalive_interval {
                c.keepalive_interval = t;
            }
            if let Some(n) = h.keepalive_count_max {
                c.keepalive_count_max = n;
            }
            TransportConfig::Ssh(c)
        }
    };
    HostConfig {
        name: h.name.clone(),
        transport,
        work_dir: h.work_dir.clone(),
    }
}

/// A ticket id: `<run>-<step>-<suffix>` (the suffix: the attempt, `c<n>`
/// for a compensation, `p<n>` for a probe). Characters a ticket id cannot
/// hold (`@` of a fanned-out instance) become `.`; step ids cannot hold
/// `.`, so two steps never share a ticket.
pub fn ticket_id(run: &str, step: &str, suffix: &str) -> Result<TicketId, String> {
    TicketId::new(format!("{run}-{}-{suffix}", remote_step_id(step)))
}

/// A step id as the host's runner takes it (its work folder's name): `@`
/// of a fanned-out instance becomes `.`.
pub fn remote_step_id(step: &str) -> String {
    step.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '.'
            }
        })
        .collect()
}

/// What following a ticket came to.
pub enum Ticket {
    /// The attempt ended (succeeded, failed, waits for an operator).
    Ended(Result<StepOutcome, StepError>),
    /// The runner is gone without an end (killed, host rebooted or
    /// crashed), or the ticket never began: start a new attempt from the
    /// last checkpoint.
    Restart(String),
}

/// One dispatch of a step attempt to its host.
pub struct Dispatch {
    /// The host.
    pub host: RemoteHost,
    /// What to start (a repeated start of an existing ticket starts nothing).
    pub request: StartRequest,
    /// Checkpoints of this ticket already journaled (re-attach).
    pub journaled_checkpoints: u64,
    /// The plan says `reboot = "auto"`: a step that needs a reboot reboots
    /// its host and waits for it.
    pub reboot_auto: bool,
    /// Units done and in all, as the journal has them.
    pub done: u64,
    /// Units in all.
    pub total: u64,
}

/// Starts (or re-attaches to) a ticket and follows it to its end. `note`
/// journals a note (connection lost and back, reboots).
pub async fn run_ticket(
    d: Dispatch,
    ctx: &dyn StepContext,
    redact: Arc<dyn Redact>,
    note: &(dyn Fn(String) + Send + Sync),
) -> Ticket {
    let host_name = d.host.name().to_string();
    let ticket = d.request.ticket.clone();
    match d.host.start(&d.request).await {
        Ok(Started::New { .. }) | Ok(Started::Existing) => {}
        Err(e) if e.is_transient() => {
            return Ticket::Ended(Err(StepError::transient(format!(
                "host {host_name}: cannot start ticket {ticket}: {e}"
            ))));
        }
        Err(e) => {
            return Ticket::Ended(Err(StepError::fatal(format!(
                "host {host_name}: cannot start ticket {ticket}: {e}"
            ))));
        }
    }
    let (mut done, mut total) = (d.done, d.total);
    let mut follow = d.host.follow(ticket.clone(), Cursor::default(), redact);
    loop {
        let ev = match follow.next().await {
            Ok(Some(ev)) => ev,
            Ok(None) => {
                return Ticket::Restart(format!(
                    "ticket {ticket} on host {host_name} ended without saying how"
                ));
            }
            Err(e) => {
                // Gave up reconnecting, or the host refuses us now: the
                // step may still run there; an operator decides.
                return Ticket::Ended(Err(StepError::WaitForOperator {
                    reason: format!(
                        "{LOST_TICKET} {ticket} on host {host_name}: {e}; the step may still be \
                         running there. When the host is reachable, `upshift resume` re-attaches \
                         to it"
                    ),
                }));
            }
        };
        match ev {
            TicketEvent::Output(text) => ctx.output(&text),
            TicketEvent::Checkpoint(cp) => {
                if cp.seq <= d.journaled_checkpoints {
                    continue;
                }
                done = cp.done;
                total = cp.total;
                if let Err(e) = ctx.checkpoint(cp.data, cp.done, cp.total).await {
                    return Ticket::Ended(Err(e));
                }
            }
            TicketEvent::Progress(p) => {
                done = p.done;
                total = p.total;
                ctx.progress(p.done, p.total, &p.message);
            }
            TicketEvent::ConnectionLost { error, .. } => {
                let text = format!(
                    "host {host_name}: connection lost ({error}); reconnecting, the step keeps \
                     running there"
                );
                ctx.progress(done, total, &text);
                note(format!("{}: {text}", ctx.step_id()));
            }
            TicketEvent::Reconnected { outage } => {
                let text = format!(
                    "host {host_name}: reconnected after {:.1} s, following ticket {ticket} again",
                    outage.as_secs_f64()
                );
                ctx.progress(done, total, &text);
                note(format!("{}: {text}", ctx.step_id()));
            }
            TicketEvent::Interrupted { reason } => {
                return Ticket::Restart(format!(
                    "ticket {ticket} on host {host_name} was interrupted: {reason}"
                ));
            }
            TicketEvent::Ended(end) => {
                return match end {
                    EndState::NotStarted { reason } => Ticket::Restart(format!(
                        "ticket {ticket} on host {host_name} did not start: {reason}"
                    )),
                    end => Ticket::Ended(
                        ended(end, &d.host, d.reboot_auto, d.request.timeout_ms, note, ctx).await,
                    ),
                };
            }
        }
    }
}

async fn ended(
    end: EndState,
    host: &RemoteHost,
    reboot_auto: bool,
    timeout_ms: Option<u64>,
    note: &(dyn Fn(String) + Send + Sync),
    ctx: &dyn StepContext,
) -> Result<StepOutcome, StepError> {
    let name = host.name();
    match end {
        EndState::Succeeded {
            outputs,
            reboot_required,
        } => {
            if reboot_required && reboot_auto {
                note(format!(
                    "{}: host {name} must reboot; rebooting it (reboot = \"auto\")",
                    ctx.step_id()
                ));
                ctx.progress(0, 0, &format!("rebooting host {name}"));
                match host.reboot_and_confirm(REBOOT_WAIT).await {
                    Ok(r) => {
                        note(format!(
                            "{}: host {name} rebooted: boot id {} -> {} after {:.1} s",
                            ctx.step_id(),
                            r.before,
                            r.after.boot_id,
                            r.waited.as_secs_f64()
                        ));
                        return Ok(StepOutcome {
                            outputs,
                            reboot_required: false,
                        });
                    }
                    Err(e) => note(format!(
                        "{}: the reboot of host {name} was not confirmed: {e}",
                        ctx.step_id()
                    )),
                }
            }
            Ok(StepOutcome {
                outputs,
                reboot_required,
            })
        }
        EndState::Failed { message, transient } => Err(StepError::Failed {
            message: format!("on host {name}: {message}"),
            transient,
        }),
        EndState::WaitForOperator { reason } => Err(StepError::WaitForOperator {
            reason: format!("on host {name}: {reason}"),
        }),
        EndState::TimedOut { timeout_ms: t } => Err(StepError::transient(format!(
            "timed out after {} on host {name}; its processes there were killed",
            crate::report::duration_text(Duration::from_millis(timeout_ms.unwrap_or(t)))
        ))),
        EndState::Aborted { reason } => Err(StepError::fatal(format!(
            "aborted on host {name} ({reason}); its processes there were killed"
        ))),
        EndState::Probed { .. } => Err(StepError::fatal(format!(
            "host {name} answered a probe to a run request"
        ))),
        EndState::NotStarted { reason } => Err(StepError::transient(format!(
            "did not start on host {name}: {reason}"
        ))),
    }
}

/// Asks the step's host whether what the step produced is still in place
/// (an `op = probe` ticket).
pub async fn probe(host: &RemoteHost, request: StartRequest) -> Result<Probe, String> {
    let name = host.name().to_string();
    let ticket = request.ticket.clone();
    host.start(&request)
        .await
        .map_err(|e| format!("host {name}: {e}"))?;
    let began = Instant::now();
    let mut follow = host.follow(
        ticket.clone(),
        Cursor::default(),
        Arc::new(upshift_remote::client::NoRedaction),
    );
    loop {
        match follow
            .next()
            .await
            .map_err(|e| format!("host {name}: {e}"))?
        {
            Some(TicketEvent::Ended(EndState::Probed { probe })) => {
                let _ = host.prune(&ticket).await;
                return Ok(match probe {
                    ProbeAnswer::Unknown => Probe::Unknown,
                    ProbeAnswer::InPlace => Probe::InPlace,
                    ProbeAnswer::Differs(d) => Probe::Differs(d),
                });
            }
            Some(TicketEvent::Ended(end)) => {
                return Err(format!("host {name}: the probe ended {end:?}"));
            }
            Some(TicketEvent::Interrupted { reason }) => {
                return Err(format!("host {name}: the probe was interrupted: {reason}"));
            }
            Some(_) => {}
            None => {
                return Err(format!(
                    "host {name}: the probe ended after {:.1} s without an answer",
                    began.elapsed().as_secs_f64()
                ));
            }
        }
    }
}

/// Asks the hosts to stop every attempt of `state` that an engine handed
/// to an ssh host and that did not end (after a Ctrl-C or a crash the
/// runners go on without a coordinator): what an abort of a run no engine
/// holds does. One line per ticket, saying what happened.
pub async fn abort_in_flight(
    plan: &Plan,
    state: &crate::state::RunState,
    binary: Option<PathBuf>,
    reason: &str,
) -> Vec<String> {
    use crate::state::StepStatus;
    let hosts = hosts(plan, binary);
    let mut out = Vec::new();
    for (id, st) in &state.steps {
        let Some(r) = &st.remote else { continue };
        if r.attempt != st.attempts
            || !matches!(
                st.status,
                StepStatus::Running | StepStatus::Interrupted | StepStatus::Waiting
            )
        {
            continue;
        }
        let Some(Ok(host)) = hosts.get(&r.host) else {
            out.push(format!(
                "{id}: host {} is not an ssh host of the plan; ticket {} not stopped",
                r.host, r.ticket
            ));
            continue;
        };
        let Ok(ticket) = TicketId::new(r.ticket.clone()) else {
            continue;
        };
        let said = match tokio::time::timeout(Duration::from_secs(30), host.abort(&ticket, reason))
            .await
        {
            Ok(Ok(())) => format!("stopped on host {}", r.host),
            Ok(Err(e)) => format!("not stopped: {e}"),
            Err(_) => format!("not stopped: host {} did not answer in 30 s", r.host),
        };
        out.push(format!("{id} (ticket {}): {said}", r.ticket));
        host.close().await;
    }
    out
}

/// The start request of one operation of a step.
#[allow(clippy::too_many_arguments)]
pub fn request(
    ticket: TicketId,
    run: &str,
    step: &str,
    attempt: u32,
    op: StepOp,
    kind: &str,
    with: &toml::Table,
    secrets: &BTreeMap<String, String>,
    resume_from: Option<Vec<u8>>,
    approved: bool,
    recorded_outputs: BTreeMap<String, String>,
    timeout: Option<Duration>,
) -> Result<StartRequest, String> {
    Ok(StartRequest {
        ticket,
        run_id: run.to_string(),
        step_id: remote_step_id(step),
        attempt,
        op,
        kind: kind.to_string(),
        with_toml: toml::to_string(with).map_err(|e| format!("parameters: {e}"))?,
        secrets: secrets.values().cloned().collect(),
        resume_from,
        approved,
        recorded_outputs,
        timeout_ms: timeout.map(|t| t.as_millis().min(u64::MAX as u128) as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_ids_hold_only_allowed_characters() {
        let run = "0190aaaa-bbbb-7ccc-8ddd-eeeeffff0000";
        let t = ticket_id(run, "ich_install@tm02", "3").unwrap();
        assert_eq!(t.as_str(), format!("{run}-ich_install.tm02-3"));
        assert!(ticket_id(run, "a", "c1").is_ok());
    }
}
