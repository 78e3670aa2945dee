//! `upshift preflight`: asks the real site, read-only, whether the plan
//! can run — every step's [`Step::preflight`] on the host that will run
//! it, and every host's own state — days before the maintenance window.
//!
//! What runs where:
//! - steps on the coordinator, or on a `transport = "local"` host (this
//!   machine): their preflight runs here, all steps of one host in parallel
//!   (at most [`Options::per_host`] at once), each bounded by
//!   [`Options::step_limit`];
//! - steps on an `ssh` host: the host is checked through upshift-remote's
//!   connection (reachable, host key known, administrator, free disk in
//!   the work folder), then the same session runs the host's own state
//!   checks and every step's [`Step::preflight`] **on the host**
//!   (`Request::Preflight`, answered inline: no ticket, nothing written
//!   there), in parallel and bounded in time as here
//!   ([`ssh_host_and_steps`]); a host whose upshift is older than that
//!   says "not checked";
//! - this machine's Windows state (pending reboot, Windows Installer busy)
//!   when a step runs here: through Windows APIs on Windows, "not checked
//!   on this OS" elsewhere.
//!
//! It journals nothing and writes nothing (the connection to an ssh host
//! puts upshift's own binary into the host's work folder if it is not
//! there yet, as the run's first step on that host would).
//!
//! Values only known at run time (outputs of earlier steps) are
//! placeholders; what depends on them is reported as not checked.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use upshift_steps::Step;
use upshift_steps::preflight::{Check, Earlier, PreflightContext};

use crate::error::{Error, Result};
use crate::hosts::{HostDef, Transport};
use crate::plan::Plan;
use crate::refs::{self, MapResolver};

#[cfg(feature = "demo")]
pub mod demo;
pub mod html;

/// The name findings and checks give the machine running upshift.
pub const COORDINATOR: &str = "this machine";

/// Free bytes a host's work folder should have at least (installer logs,
/// saved settings, the runner's binary).
pub const HOST_FREE_BYTES_MIN: u64 = 1 << 30;

/// How preflight runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Bound on one step's preflight.
    pub step_limit: Duration,
    /// Steps checked at once per host (1: one after another).
    pub per_host: usize,
    /// The binary an ssh host runs for the connection check (the
    /// coordinator's own).
    pub remote_binary: Option<std::path::PathBuf>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            step_limit: Duration::from_secs(30),
            per_host: 8,
            remote_binary: std::env::current_exe().ok(),
        }
    }
}

/// One line of the report: a check of a step (or of a host) on a host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Line {
    /// The step (`None`: about the host itself).
    pub step: Option<String>,
    /// The host it runs on ([`COORDINATOR`] for this machine).
    pub host: String,
    /// What was found.
    #[serde(flatten)]
    pub check: Check,
    /// Other steps on the same host with the very same finding (one
    /// problem, one finding: a login that fails fails for every SQL step).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also_steps: Vec<String>,
}

/// What preflight found (also read back: `upshift report --preflight`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The plan's name.
    pub plan: String,
    /// The plan file.
    pub plan_path: String,
    /// The site file, if any.
    pub site: Option<String>,
    /// No finding: the site is ready as far as preflight can tell.
    pub ready: bool,
    /// How many findings.
    pub findings: usize,
    /// Every check, host checks first, then steps in plan order.
    pub checks: Vec<Line>,
    /// Wall time, milliseconds.
    pub elapsed_ms: u64,
}

impl Report {
    /// A report as `upshift preflight --json` printed it, from `path`; a
    /// file that is not one is an error naming file:line:col.
    pub fn read_json(path: &std::path::Path) -> Result<Report> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::usage(format!("cannot read {}: {e}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| {
            Error::usage(format!(
                "{}:{}:{}: not the JSON `upshift preflight --json` prints: {e}; write it with `upshift preflight PLAN --json > {}`",
                path.display(),
                e.line(),
                e.column(),
                path.display()
            ))
        })
    }

    /// The findings only.
    pub fn findings(&self) -> impl Iterator<Item = &Line> {
        self.checks.iter().filter(|l| l.check.is_finding())
    }
}

/// Secret values for the steps' parameters; a secret that cannot be read
/// is a finding (and its steps see a placeholder, so what needs it is not
/// checked).
fn secrets(plan: &Plan, lines: &mut Vec<Line>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, r) in &plan.secrets {
        match r.read(name) {
            Ok(v) => {
                out.insert(name.clone(), v);
            }
            Err(e) => lines.push(Line {
                step: None,
                host: COORDINATOR.into(),
                check: Check::finding(
                    e,
                    format!("secret `{name}` readable here ({})", r.source_text()),
                    "set it as for the run (the value is never journaled or printed)",
                ),
                also_steps: Vec::new(),
            }),
        }
    }
    out
}

/// A step's parameters with this site's values, secrets resolved and
/// outputs of earlier steps as placeholders.
fn resolve(
    plan: &Plan,
    with: &toml::Table,
    secrets: &BTreeMap<String, String>,
) -> std::result::Result<toml::Table, String> {
    let expanded = crate::plan::expand_target(with, &plan.targets)?;
    let sec = |n: &str| {
        secrets
            .get(n)
            .cloned()
            .or_else(|| refs::placeholder_secret(n))
    };
    let resolver = MapResolver::new(
        &plan.vars,
        plan.site.as_ref().map(|s| &s.values),
        &sec,
        &refs::placeholder_output,
    );
    refs::substitute_table(&expanded, &resolver).map_err(|b| b.message)
}

/// An ssh host through upshift-remote: reachable, host key known, login,
/// administrator, free disk in the work folder, and its own state (read on
/// the host, see [`ssh_host_and_steps`]).
pub async fn ssh_host(h: &HostDef, opts: &Options) -> Vec<Check> {
    ssh_host_and_steps(h, Vec::new(), opts).await.0
}

/// A step to check on an ssh host: its position in the plan, its id, what
/// the host is asked.
pub struct RemoteStep {
    /// Its position in the plan.
    pub index: usize,
    /// Its id.
    pub id: String,
    /// The request (parameters resolved, secrets only over the channel).
    pub request: upshift_remote::protocol::PreflightRequest,
}

/// The checks of one ssh host's steps, each as it gave them.
pub type RemoteStepChecks = Vec<(usize, String, Vec<Check>)>;

/// Every step that could not be asked: why, as one "not checked" each.
fn steps_not_checked(steps: &[RemoteStep], why: &str) -> RemoteStepChecks {
    steps
        .iter()
        .map(|s| {
            (
                s.index,
                s.id.clone(),
                vec![Check::not_checked(
                    format!("the step's own checks ({})", s.request.kind),
                    why,
                )],
            )
        })
        .collect()
}

/// An ssh host and the steps on it, through one upshift-remote session:
/// the host's connection facts ([`ssh_host`]), then its own state and
/// every step's [`Step::preflight`] run **on the host** by the session
/// itself (no ticket, nothing written there), at most
/// [`Options::per_host`] at once, each bounded by [`Options::step_limit`].
pub async fn ssh_host_and_steps(
    h: &HostDef,
    steps: Vec<RemoteStep>,
    opts: &Options,
) -> (Vec<Check>, RemoteStepChecks) {
    let unreachable = "the host was not reached: see its finding";
    let Some(binary) = &opts.remote_binary else {
        let why = "upshift's own binary cannot be found to run on it";
        return (
            vec![Check::not_checked(format!("host {}", h.name), why)],
            steps_not_checked(&steps, why),
        );
    };
    let host = match upshift_remote::client::RemoteHost::new(
        crate::remote::host_config(h),
        upshift_remote::client::ClientOptions::new(binary),
    ) {
        Ok(host) => host,
        Err(e) => {
            return (
                vec![Check::finding(
                    e.to_string(),
                    format!("host {} configured so that it can be reached", h.name),
                    "correct the host's table in the plan or site file",
                )],
                steps_not_checked(&steps, unreachable),
            );
        }
    };
    let limit = h.connect_timeout.unwrap_or(Duration::from_secs(15)) + opts.step_limit;
    let facts = tokio::time::timeout(limit, host.connect()).await;
    let facts = match facts {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => {
            use upshift_remote::RemoteError as R;
            let (expected, fix) = match &e {
                R::HostKeyUnknown { .. } | R::HostKeyChanged { .. } => (
                    "the host's key in the configured known_hosts file",
                    "check the fingerprint on the host itself, then add (or replace) its line in that known_hosts file",
                ),
                R::AuthRefused { .. } => (
                    "the key logs in as the configured user",
                    "put the public key in that user's authorized_keys (Windows administrators: C:\\ProgramData\\ssh\\administrators_authorized_keys)",
                ),
                _ => (
                    "the host reachable over ssh from this machine",
                    "check the address, port, firewall and that sshd runs on the host",
                ),
            };
            host.close().await;
            return (
                vec![Check::finding(
                    format!("{} ({})", e, h.describe()),
                    expected,
                    fix,
                )],
                steps_not_checked(&steps, unreachable),
            );
        }
        Err(_) => {
            host.close().await;
            return (
                vec![Check::finding(
                    format!(
                        "host {}: no answer within {} ({})",
                        h.name,
                        humantime::format_duration(limit),
                        h.describe()
                    ),
                    "the host reachable over ssh from this machine",
                    "check the address, port, firewall and that sshd runs on the host",
                )],
                steps_not_checked(&steps, unreachable),
            );
        }
    };
    let mut out = vec![Check::ok(format!(
        "reachable over ssh, host key known: {} ({} {}, user {})",
        facts.hostname, facts.os, facts.arch, facts.user
    ))];
    out.push(if facts.is_admin {
        Check::ok(format!("{} has administrator rights", facts.user))
    } else {
        Check::finding(
            format!("{} has no administrator rights on {}", facts.user, h.name),
            "an administrator (installers, services and certificates need one)",
            "log in as an administrator (and on Windows, one whose ssh session is elevated)",
        )
    });
    out.push(match facts.free_bytes {
        Some(b) if b >= HOST_FREE_BYTES_MIN => Check::ok(format!(
            "{} MB free in the work folder {}",
            b >> 20,
            facts.work_dir
        )),
        Some(b) => Check::finding(
            format!(
                "{} MB free in the work folder {} on {}",
                b >> 20,
                facts.work_dir,
                h.name
            ),
            format!("at least {} MB", HOST_FREE_BYTES_MIN >> 20),
            "free space there, or set the host's work_dir to a larger disk",
        ),
        None => Check::not_checked(
            format!("free space in {}", facts.work_dir),
            "the host did not say",
        ),
    });
    out.extend(remote_host_state(&host, opts).await);
    let steps = remote_steps(&host, steps, opts).await;
    host.close().await;
    (out, steps)
}

/// Why a remote check was not made, for a "not checked" line.
fn remote_not_checked_why(e: &upshift_remote::RemoteError) -> String {
    match e {
        upshift_remote::RemoteError::Unsupported { detail, .. } => {
            format!("the host's upshift is older ({detail})")
        }
        other => other.to_string(),
    }
}

/// The host's own state (pending reboot, Windows Installer busy, ports),
/// read on the host by its session.
async fn remote_host_state(host: &upshift_remote::RemoteHost, opts: &Options) -> Vec<Check> {
    let what = "the host's Windows state (pending reboot, Windows Installer busy)";
    match tokio::time::timeout(opts.step_limit, host.preflight_host()).await {
        Ok(Ok(checks)) => checks,
        Ok(Err(e)) => vec![Check::not_checked(what, remote_not_checked_why(&e))],
        Err(_) => vec![Check::not_checked(
            what,
            format!(
                "no answer within {}",
                humantime::format_duration(opts.step_limit)
            ),
        )],
    }
}

/// Every step's checks on the host, at most [`Options::per_host`] at once.
async fn remote_steps(
    host: &upshift_remote::RemoteHost,
    steps: Vec<RemoteStep>,
    opts: &Options,
) -> RemoteStepChecks {
    let sem = Arc::new(tokio::sync::Semaphore::new(opts.per_host.max(1)));
    // The host bounds each step by the limit; the margin covers the answer
    // travelling back (a host that does not answer at all is bounded too).
    let outer = opts.step_limit + Duration::from_secs(10);
    let mut set = tokio::task::JoinSet::new();
    for s in steps {
        let (sem, host) = (Arc::clone(&sem), host.clone());
        set.spawn(async move {
            let _permit = sem.acquire_owned().await.expect("never closed");
            let kind = s.request.kind.clone();
            let checks = match tokio::time::timeout(outer, host.preflight(&s.request)).await {
                Ok(Ok(checks)) => checks,
                Ok(Err(e @ upshift_remote::RemoteError::Unsupported { .. })) => {
                    vec![Check::not_checked(
                        format!("the step's own checks ({kind})"),
                        remote_not_checked_why(&e),
                    )]
                }
                Ok(Err(e)) => vec![Check::finding(
                    format!("its checks on the host failed: {e}"),
                    "the host answers the step's checks",
                    "check the connection to the host, then run preflight again",
                )],
                Err(_) => vec![Check::finding(
                    format!(
                        "its checks did not finish within {}",
                        humantime::format_duration(outer)
                    ),
                    "every check answered in time (a server or share that answers slowly will slow the run too)",
                    "look at what it checks (server, share, package path) from that host",
                )],
            };
            (s.index, s.id, checks)
        });
    }
    let mut out = Vec::new();
    while let Some(done) = set.join_next().await {
        if let Ok(r) = done {
            out.push(r);
        }
    }
    out
}

/// This machine as a host: its user's rights (Windows: installers need an
/// elevated administrator) and free space where the step folders go
/// (`folder`, or the nearest existing folder above it).
fn this_machine(folder: &std::path::Path) -> Vec<Check> {
    let mut out = Vec::new();
    let user = upshift_remote::sys::user();
    out.push(if upshift_remote::sys::is_admin() {
        Check::ok(format!("{user} has administrator rights"))
    } else if cfg!(windows) {
        Check::finding(
            format!("{user} runs without administrator rights"),
            "an elevated administrator (installers, services and certificates need one)",
            "run upshift from an elevated prompt as an administrator",
        )
    } else {
        Check::ok(format!(
            "{user} is not root (the Windows steps need an administrator; here they are stand-ins)"
        ))
    });
    let existing = folder.ancestors().find(|p| p.is_dir());
    out.push(match existing.and_then(upshift_remote::sys::free_bytes) {
        Some(b) if b >= HOST_FREE_BYTES_MIN => Check::ok(format!(
            "{} MB free for the step folders ({})",
            b >> 20,
            folder.display()
        )),
        Some(b) => Check::finding(
            format!("{} MB free for the step folders ({})", b >> 20, folder.display()),
            format!("at least {} MB (installer logs, saved settings)", HOST_FREE_BYTES_MIN >> 20),
            "free space there, or put the journal (--journal, $UPSHIFT_JOURNAL) or the host's work_dir on a larger disk",
        ),
        None => Check::not_checked(
            format!("free space for {}", folder.display()),
            "the OS did not say",
        ),
    });
    out
}

/// One step's preflight, bounded in time.
async fn step_checks(step: Arc<dyn Step>, ctx: PreflightContext) -> (Vec<Check>, Duration) {
    let t = Instant::now();
    let limit = ctx.time_limit;
    let checks = match tokio::time::timeout(limit, step.preflight(&ctx)).await {
        Ok(c) => c,
        Err(_) => vec![Check::finding(
            format!(
                "its checks did not finish within {}",
                humantime::format_duration(limit)
            ),
            "every check answered in time (a server or share that answers slowly will slow the run too)",
            "look at what it checks (server, share, package path) from this machine",
        )],
    };
    (checks, t.elapsed())
}

/// A step built for its checks: its position in the plan, its id, the
/// step, the steps that run before it.
type Built = (usize, String, Arc<dyn Step>, Vec<Arc<Earlier>>);

/// The steps that run before `id` (its needs, transitively), nearest
/// first.
fn ancestors(plan: &Plan, id: &str) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    let mut queue: std::collections::VecDeque<&str> =
        plan.steps[id].needs.iter().map(String::as_str).collect();
    while let Some(n) = queue.pop_front() {
        if !seen.insert(n) {
            continue;
        }
        out.push(n.to_string());
        if let Some(def) = plan.steps.get(n) {
            queue.extend(def.needs.iter().map(String::as_str));
        }
    }
    out
}

/// What an ssh host is asked about one step: its resolved parameters, the
/// secrets (over the channel only, as the run passes them) and the steps
/// before it.
#[allow(clippy::too_many_arguments)]
fn remote_step(
    index: usize,
    id: &str,
    host: &str,
    kind: &str,
    with: &toml::Table,
    secrets: &BTreeMap<String, String>,
    opts: &Options,
    earlier: Vec<Arc<Earlier>>,
) -> std::result::Result<RemoteStep, String> {
    Ok(RemoteStep {
        index,
        id: id.to_string(),
        request: upshift_remote::protocol::PreflightRequest {
            step_id: id.to_string(),
            host: host.to_string(),
            kind: kind.to_string(),
            with_toml: toml::to_string(with).map_err(|e| format!("its parameters: {e}"))?,
            secrets: secrets.values().cloned().collect(),
            time_limit_ms: opts.step_limit.as_millis().min(u64::MAX as u128) as u64,
            earlier: earlier
                .iter()
                .map(|e| upshift_remote::protocol::EarlierStep {
                    id: e.id.clone(),
                    kind: e.kind.clone(),
                    with_text: e.with_text.clone(),
                })
                .collect(),
        },
    })
}

/// Where a step's checks run.
enum Place {
    Here(String),
    Ssh(String),
}

/// Runs preflight for a loaded plan.
pub fn run(plan: &Plan, opts: &Options) -> Result<Report> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::failed(format!("preflight: cannot start its runtime: {e}")))?;
    Ok(rt.block_on(run_async(plan, opts)))
}

/// [`run`] inside a runtime.
pub async fn run_async(plan: &Plan, opts: &Options) -> Report {
    let start = Instant::now();
    let mut host_lines: Vec<Line> = Vec::new();
    let secrets = secrets(plan, &mut host_lines);
    let registry = upshift_steps::registry();

    // Build every step here (no I/O), grouped by the host that runs it.
    let mut per_host: BTreeMap<String, Vec<Built>> = BTreeMap::new();
    let mut step_lines: Vec<(usize, Line)> = Vec::new();
    let mut here_hosts: BTreeMap<String, ()> = BTreeMap::new();
    let mut ssh_hosts: BTreeMap<String, Vec<RemoteStep>> = BTreeMap::new();
    // Every step as an earlier step of those that need it: a file missing
    // now may be laid down by one of them.
    let earlier_of: BTreeMap<&str, Arc<Earlier>> = plan
        .order
        .iter()
        .map(|id| {
            let def = &plan.steps[id];
            let with =
                resolve(plan, &def.body.with, &secrets).unwrap_or_else(|_| def.body.with.clone());
            (
                id.as_str(),
                Arc::new(Earlier {
                    id: id.clone(),
                    kind: def.body.kind.clone(),
                    with_text: with.to_string(),
                }),
            )
        })
        .collect();
    for (i, id) in plan.order.iter().enumerate() {
        let def = &plan.steps[id];
        let place = match def.host.as_deref().and_then(|h| plan.hosts.get(h)) {
            None => Place::Here(COORDINATOR.to_string()),
            Some(h) if h.transport == Transport::Local => Place::Here(h.name.clone()),
            Some(h) => Place::Ssh(h.name.clone()),
        };
        let host = match &place {
            Place::Here(h) | Place::Ssh(h) => h.clone(),
        };
        let line = |check: Check| Line {
            step: Some(id.clone()),
            host: host.clone(),
            check,
            also_steps: Vec::new(),
        };
        match &place {
            Place::Ssh(h) => {
                ssh_hosts.entry(h.clone()).or_default();
            }
            Place::Here(_) => {
                here_hosts.insert(host.clone(), ());
            }
        }
        let Some(kind) = registry.get(def.body.kind.as_str()) else {
            continue;
        };
        let built = resolve(plan, &def.body.with, &secrets)
            .and_then(|w| kind.build(&w).map(|s| (s, w)).map_err(|e| e.message));
        match built {
            Ok((_, with)) if matches!(place, Place::Ssh(_)) => {
                let steps = ssh_hosts.entry(host.clone()).or_default();
                let earlier = ancestors(plan, id)
                    .into_iter()
                    .filter_map(|a| earlier_of.get(a.as_str()).cloned())
                    .collect();
                match remote_step(i, id, &host, &def.body.kind, &with, &secrets, opts, earlier) {
                    Ok(s) => steps.push(s),
                    Err(e) => step_lines.push((
                        i,
                        line(Check::not_checked(
                            format!("the step's own checks ({})", def.body.kind),
                            e,
                        )),
                    )),
                }
            }
            Ok((step, _)) => per_host.entry(host).or_default().push((
                i,
                id.clone(),
                Arc::from(step),
                ancestors(plan, id)
                    .into_iter()
                    .filter_map(|a| earlier_of.get(a.as_str()).cloned())
                    .collect(),
            )),
            Err(e) => step_lines.push((
                i,
                line(Check::not_checked(
                    format!("the step's checks ({})", def.body.kind),
                    format!("its parameters are only complete at run time: {e}"),
                )),
            )),
        }
    }

    // Hosts: ssh hosts through the remote crate, in parallel.
    let mut ssh_set = tokio::task::JoinSet::new();
    for (name, steps) in ssh_hosts {
        let h = plan.hosts[&name].clone();
        let opts = opts.clone();
        ssh_set.spawn(async move {
            let (host, steps) = ssh_host_and_steps(&h, steps, &opts).await;
            (h.name.clone(), host, steps)
        });
    }
    // Steps: each host's steps in parallel, at most `per_host` at once.
    let mut set = tokio::task::JoinSet::new();
    for (host, steps) in per_host {
        let sem = Arc::new(tokio::sync::Semaphore::new(opts.per_host.max(1)));
        for (i, id, step, earlier) in steps {
            let sem = Arc::clone(&sem);
            let ctx = PreflightContext {
                step_id: id.clone(),
                host: (host != COORDINATOR).then(|| host.clone()),
                time_limit: opts.step_limit,
                earlier,
                relative_paths_unresolvable: None,
            };
            let host = host.clone();
            set.spawn(async move {
                let _permit = sem.acquire_owned().await.expect("never closed");
                let (checks, _took) = step_checks(step, ctx).await;
                (i, id, host, checks)
            });
        }
    }
    while let Some(done) = set.join_next().await {
        match done {
            Ok((i, id, host, checks)) => {
                for c in checks {
                    step_lines.push((
                        i,
                        Line {
                            step: Some(id.clone()),
                            host: host.clone(),
                            check: c,
                            also_steps: Vec::new(),
                        },
                    ));
                }
            }
            Err(e) => host_lines.push(Line {
                step: None,
                host: COORDINATOR.into(),
                check: Check::finding(
                    format!("a step's preflight failed: {e}"),
                    "every check ends",
                    "report this as a bug of upshift",
                ),
                also_steps: Vec::new(),
            }),
        }
    }
    for name in here_hosts.keys() {
        let folder = match plan.hosts.get(name) {
            Some(h) => std::path::PathBuf::from(&h.work_dir),
            // Step folders (installer logs, saved settings) live with the
            // journal.
            None => crate::app::workspace::resolve_dir(None),
        };
        let mut checks = this_machine(&folder);
        checks.extend(upshift_steps::preflight::windows::host_state());
        for c in checks {
            host_lines.push(Line {
                step: None,
                host: name.clone(),
                check: c,
                also_steps: Vec::new(),
            });
        }
    }
    let mut ssh_results = Vec::new();
    while let Some(done) = ssh_set.join_next().await {
        if let Ok(r) = done {
            ssh_results.push(r);
        }
    }
    ssh_results.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, checks, steps) in ssh_results {
        for (i, id, step_checks) in steps {
            for c in step_checks {
                step_lines.push((
                    i,
                    Line {
                        step: Some(id.clone()),
                        host: name.clone(),
                        check: c,
                        also_steps: Vec::new(),
                    },
                ));
            }
        }
        for c in checks {
            host_lines.push(Line {
                step: None,
                host: name.clone(),
                check: c,
                also_steps: Vec::new(),
            });
        }
    }
    // Steps in plan order, each step's lines in the order it gave them.
    step_lines.sort_by_key(|(i, _)| *i);
    let mut checks = host_lines;
    checks.extend(step_lines.into_iter().map(|(_, l)| l));
    let checks = merge_same_findings(checks);
    let findings = checks.iter().filter(|l| l.check.is_finding()).count();
    Report {
        plan: plan.name.clone(),
        plan_path: plan.path.display().to_string(),
        site: plan.site.as_ref().map(|s| s.path.display().to_string()),
        ready: findings == 0,
        findings,
        checks,
        elapsed_ms: start.elapsed().as_millis() as u64,
    }
}

/// One finding per problem: a finding repeated by later steps on the same
/// host (same text) is folded into the first one's `also_steps`.
fn merge_same_findings(lines: Vec<Line>) -> Vec<Line> {
    let mut out: Vec<Line> = Vec::with_capacity(lines.len());
    let mut first: BTreeMap<(String, String), usize> = BTreeMap::new();
    for l in lines {
        if l.check.is_finding()
            && let Some(step) = &l.step
        {
            let key = (l.host.clone(), format!("{:?}", l.check));
            if let Some(&i) = first.get(&key) {
                out[i].also_steps.push(step.clone());
                continue;
            }
            first.insert(key, out.len());
        }
        out.push(l);
    }
    out
}

/// The report in a few lines: the verdict, the findings, the counts.
pub fn summary_text(r: &Report) -> String {
    let count = |f: fn(&Check) -> bool| r.checks.iter().filter(|l| f(&l.check)).count();
    let ok = count(|c| matches!(c, Check::Ok { .. }));
    let nc = count(|c| matches!(c, Check::NotChecked { .. }));
    let mut out = format!(
        "preflight of \"{}\": {} — {} checks in {} ms: {ok} ok, {} finding(s), {nc} not checked (Windows-only checks on this OS, values known only at run time)\n",
        r.plan,
        if r.ready { "READY" } else { "NOT READY" },
        r.checks.len(),
        r.elapsed_ms,
        r.findings
    );
    for l in r.findings() {
        if let Check::Finding { found, fix, .. } = &l.check {
            out.push_str(&format!(
                "  {} on {}: {found}\n    fix: {fix}\n",
                l.step.as_deref().unwrap_or("(host)"),
                l.host
            ));
        }
    }
    out
}

/// How many steps of one host, not checked for one reason, are folded
/// into one line of the text report.
const FOLD_AT: usize = 3;

/// Steps of one host that are "not checked" for one reason (the host was
/// not reached, a secret cannot be read...) and have no other line: from
/// `FOLD_AT` of them on, one entry at the position of the first, listing
/// all. Returns the first line's index → the folded lines' indexes.
fn folds(lines: &[Line]) -> BTreeMap<usize, Vec<usize>> {
    let mut per_step: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for l in lines {
        if let Some(step) = &l.step {
            *per_step.entry((step, &l.host)).or_default() += 1;
        }
    }
    let mut groups: BTreeMap<(&str, &str), Vec<usize>> = BTreeMap::new();
    for (i, l) in lines.iter().enumerate() {
        if let (Some(step), Check::NotChecked { why, .. }) = (&l.step, &l.check)
            && per_step[&(step.as_str(), l.host.as_str())] == 1
        {
            groups.entry((&l.host, why)).or_default().push(i);
        }
    }
    groups
        .into_values()
        .filter(|g| g.len() >= FOLD_AT)
        .map(|g| (g[0], g))
        .collect()
}

/// The report as text: findings first (step, host, found, expected, fix),
/// then every check per host and step.
pub fn text(r: &Report) -> String {
    let mut out = format!(
        "preflight of plan \"{}\" ({}{}): {}\n",
        r.plan,
        r.plan_path,
        r.site
            .as_ref()
            .map(|s| format!(", site {s}"))
            .unwrap_or_default(),
        if r.ready {
            "READY — no finding".to_string()
        } else {
            format!("{} FINDING(S)", r.findings)
        }
    );
    if !r.ready {
        out.push_str("\nfindings:\n");
        for (n, l) in r.findings().enumerate() {
            if let Check::Finding {
                found,
                expected,
                fix,
            } = &l.check
            {
                out.push_str(&format!(
                    "{:>3}. {}{} on {}\n     found:    {found}\n     expected: {expected}\n     fix:      {fix}\n",
                    n + 1,
                    l.step.as_deref().unwrap_or("(host)"),
                    if l.also_steps.is_empty() {
                        String::new()
                    } else {
                        format!(" (also {})", l.also_steps.join(", "))
                    },
                    l.host
                ));
            }
        }
    }
    out.push_str("\nchecks:\n");
    let mut last: Option<(&Option<String>, &str)> = None;
    let folds = folds(&r.checks);
    let folded: std::collections::BTreeSet<usize> = folds.values().flatten().copied().collect();
    for (i, l) in r.checks.iter().enumerate() {
        if let Some(group) = folds.get(&i) {
            if let Check::NotChecked { why, .. } = &l.check {
                let steps: Vec<&str> = group
                    .iter()
                    .filter_map(|&j| r.checks[j].step.as_deref())
                    .collect();
                out.push_str(&format!(
                    "  {} steps on {}\n    not checked  {why}: {}\n",
                    steps.len(),
                    l.host,
                    steps.join(", ")
                ));
            }
            last = None;
            continue;
        }
        if folded.contains(&i) {
            continue;
        }
        let key = (&l.step, l.host.as_str());
        if last != Some(key) {
            match &l.step {
                Some(s) => out.push_str(&format!("  {s} on {}\n", l.host)),
                None => out.push_str(&format!("  host {}\n", l.host)),
            }
            last = Some(key);
        }
        match &l.check {
            Check::Ok { what } => out.push_str(&format!("    ok           {what}\n")),
            Check::Finding { found, .. } => out.push_str(&format!("    FINDING      {found}\n")),
            Check::NotChecked { what, why } => {
                out.push_str(&format!("    not checked  {what}: {why}\n"))
            }
        }
    }
    out.push_str(&format!(
        "\n{} check(s), {} finding(s), {} ms; nothing was changed or journaled\n",
        r.checks.len(),
        r.findings,
        r.elapsed_ms
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(step: Option<&str>, host: &str, check: Check) -> Line {
        Line {
            step: step.map(str::to_string),
            host: host.into(),
            check,
            also_steps: Vec::new(),
        }
    }

    /// Steps of one host not checked for one reason are one entry in the
    /// text (at the first one's place, listing all); fewer than three, a
    /// step with other lines, or another reason keep their own blocks.
    #[test]
    fn steps_not_checked_for_one_reason_are_folded_per_host() {
        let gone = || Check::not_checked("the step's own checks", "the host was not reached");
        let checks = vec![
            line(
                None,
                "h1",
                Check::finding("h1 unreachable", "reachable", "check it"),
            ),
            line(Some("a"), "h1", gone()),
            line(Some("x"), "h2", gone()),
            line(Some("b"), "h1", gone()),
            line(Some("c"), "h1", Check::ok("file exists")),
            line(Some("c"), "h1", gone()),
            line(Some("d"), "h1", gone()),
            line(
                Some("e"),
                "h1",
                Check::not_checked("ports", "not on this OS"),
            ),
        ];
        let r = Report {
            plan: "p".into(),
            plan_path: "p.toml".into(),
            site: None,
            ready: false,
            findings: 1,
            checks,
            elapsed_ms: 1,
        };
        let t = text(&r);
        assert!(
            t.contains("  3 steps on h1\n    not checked  the host was not reached: a, b, d\n"),
            "{t}"
        );
        // One h2 step, the step with two lines, another reason: their own.
        for own in ["  x on h2\n", "  c on h1\n", "  e on h1\n"] {
            assert!(t.contains(own), "{own:?} missing:\n{t}");
        }
        assert!(!t.contains("  a on h1"), "{t}");
        // The fold sits where its first step was: before x.
        assert!(t.find("3 steps on h1").unwrap() < t.find("  x on h2").unwrap());
    }
}
