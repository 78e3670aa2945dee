//! Engine sessions: start a run, resume one (with the plan-change and
//! drift checks), roll one back, or probe it for drift. Each returns what
//! happened ([`Exit`], drift found); the command layer says it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use upshift_journal::{Decision, Envelope, Event, Journal, Outcome, RunId};

use super::decisions::decision_events;
use super::identity::actor;
use super::notify::{FINISH_WAIT_MAX, Notifier};
use super::workspace::{Workspace, fold_run, pick_run, pinned_options, pinned_plan};
use crate::engine::{self, Config, Engine, Exit, Observer, Quiet};
use crate::error::{Error, Result};
use crate::plan::{self, Plan};
use crate::state::RunState;

/// How an engine session shows itself and reaches the OS.
#[derive(Clone)]
pub struct Session {
    /// Cap on parallel steps.
    pub concurrency: Option<usize>,
    /// Who is told what happens (the terminal UI, the demo's wrapper).
    pub observer: Arc<dyn Observer>,
    /// Where the resume-at-boot task goes.
    pub boot: crate::reboot::BootOverrides,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            concurrency: None,
            observer: Arc::new(Quiet),
            boot: Default::default(),
        }
    }
}

/// The engine's settings for a session on this journal.
pub fn config(ws: &Workspace, session: &Session) -> Config {
    Config {
        registry: upshift_steps::registry(),
        concurrency: session.concurrency,
        guard_program: std::env::current_exe().ok(),
        work_root: ws.dir().join("work"),
        actor: actor(),
        observer: Arc::clone(&session.observer),
        inbox: Some(Arc::new(ws.inbox())),
        journal_dir: Some(ws.dir().to_path_buf()),
        boot: session.boot.clone(),
    }
}

/// Starts a new run of a validated plan. `started` is called with the new
/// run's id before anything is journaled (the CLI prints it first).
pub fn start(
    p: Plan,
    vars: BTreeMap<String, String>,
    ws: &Workspace,
    session: &Session,
    started: impl FnOnce(RunId),
) -> Result<(RunId, Exit)> {
    let secrets = engine::resolve_secrets(&p).map_err(Error::usage)?;
    let j = ws.open()?;
    let run = RunId::new();
    let mut cfg = config(ws, session);
    let notify = notifier(&p, &secrets, run, ws, &mut cfg)?;
    started(run);
    let _log = crate::logging::run_log(ws.dir(), run);
    let mut eng = Engine::new(p, cfg, j, run, &[], secrets);
    let exit = notified(&mut eng, notify, |eng| block_on(eng.start(vars)));
    Ok((run, exit?))
}

/// What `resume` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resumed {
    /// The session ran and stopped so.
    Ran(Exit),
    /// The run had already ended; nothing ran.
    AlreadyEnded(Outcome),
}

impl Resumed {
    /// The session's end, as the engine would report it.
    pub fn exit(&self) -> Exit {
        match self {
            Resumed::Ran(e) => e.clone(),
            Resumed::AlreadyEnded(o) => Exit::Finished(*o),
        }
    }
}

/// Resumes a run (the only unfinished one if `run` is None). Refuses an
/// edited plan unless `accept_plan_change`; pauses on drift unless
/// `ignore_drift` (both journaled).
pub fn resume(
    ws: &Workspace,
    run: Option<&str>,
    accept_plan_change: bool,
    ignore_drift: bool,
    session: &Session,
) -> Result<(RunId, Resumed)> {
    let j = ws.open()?;
    let run = pick_run(&j, run, true)?;
    let state = fold_run(&j, run)?;
    if let Some(o) = state.outcome {
        return Ok((run, Resumed::AlreadyEnded(o)));
    }
    let (plan, mut extra) = plan_for_resume(&state, accept_plan_change)?;
    let secrets = engine::resolve_secrets(&plan).map_err(Error::usage)?;
    let _log = crate::logging::run_log(ws.dir(), run);
    // Back from a reboot this run asked for: the boot task is done.
    match crate::reboot::unregister(run, &session.boot) {
        Ok(Some(what)) => extra.push(Event::Note {
            text: format!("resumed after the reboot: {what}"),
        }),
        Ok(None) => {}
        Err(e) => extra.push(Event::Note {
            text: format!("could not remove the resume-at-boot task: {e}"),
        }),
    }
    let mut cfg = config(ws, session);
    let notify = notifier(&plan, &secrets, run, ws, &mut cfg)?;
    let mut eng = Engine::with_state(plan, cfg, j, run, state, secrets);
    let exit = notified(&mut eng, notify, |eng| {
        block_on(async {
            let drift = eng.drift().await;
            if !drift.is_empty() {
                let report = drift_text(&drift);
                let steps: Vec<String> = drift.iter().map(|(s, _)| s.clone()).collect();
                if !ignore_drift {
                    return eng
                        .stop_paused(
                            vec![Event::Note { text: report.clone() }],
                            format!(
                                "{report}\n  the machine no longer matches what these steps did; put it back, or resume with --ignore-drift (journaled with your name)"
                            ),
                        )
                        .await;
                }
                extra.push(Event::Note { text: report });
                extra.extend(decision_events(
                    Decision::IgnoreDrift { steps },
                    actor(),
                    "resume --ignore-drift".into(),
                ));
            }
            eng.resume(extra).await
        })
    })?;
    Ok((run, Resumed::Ran(exit)))
}

/// Rolls a run back, right after its `rollback` decision was journaled
/// (`journal` is still open as the writer; `history` holds every event).
pub fn rollback(
    ws: &Workspace,
    run: RunId,
    journal: Journal,
    state: &RunState,
    history: &[Envelope],
    session: &Session,
) -> Result<Exit> {
    let plan = pinned_plan(state)
        .map_err(|e| Error::failed(format!("the pinned plan does not validate: {e}")))?;
    let secrets = engine::resolve_secrets(&plan).map_err(Error::usage)?;
    let _log = crate::logging::run_log(ws.dir(), run);
    let mut cfg = config(ws, session);
    let notify = notifier(&plan, &secrets, run, ws, &mut cfg)?;
    let mut eng = Engine::new(plan, cfg, journal, run, history, secrets);
    notified(&mut eng, notify, |eng| block_on(eng.rollback(Vec::new())))
}

/// The plan's `[notify]` for this session, if it has one: its observer
/// takes the place of the session's in `cfg` (and passes everything on).
fn notifier(
    plan: &Plan,
    secrets: &BTreeMap<String, String>,
    run: RunId,
    ws: &Workspace,
    cfg: &mut Config,
) -> Result<Option<Notifier>> {
    let n = Notifier::for_session(
        plan,
        secrets,
        run,
        ws.dir(),
        actor().host,
        Arc::clone(&cfg.observer),
    )?;
    if let Some(n) = &n {
        cfg.observer = n.observer();
    }
    Ok(n)
}

/// Drives a session with its notifier: the notifier journals through the
/// engine's writer, and once the session has stopped, what is still being
/// sent gets a bounded time before the engine (and its writer) goes.
fn notified(
    eng: &mut Engine,
    notify: Option<Notifier>,
    session: impl FnOnce(&mut Engine) -> Result<Exit>,
) -> Result<Exit> {
    if let Some(n) = &notify {
        n.attach(eng.writer());
    }
    let exit = session(eng);
    if let Some(n) = notify {
        n.finish(FINISH_WAIT_MAX);
    }
    exit
}

/// Runs the probe of every completed step of a run (default: the latest);
/// returns (step, what no longer matches) for each that drifted.
pub fn drift(
    ws: &Workspace,
    run: Option<&str>,
    session: &Session,
) -> Result<(RunId, Vec<(String, String)>)> {
    let j = ws.open()?;
    let run = pick_run(&j, run, false)?;
    let state = fold_run(&j, run)?;
    let plan = pinned_plan(&state)
        .map_err(|e| Error::failed(format!("the pinned plan does not validate: {e}")))?;
    let secrets = engine::resolve_secrets(&plan).map_err(Error::usage)?;
    let eng = Engine::with_state(plan, config(ws, session), j, run, state, secrets);
    let rt = runtime()?;
    Ok((run, rt.block_on(eng.drift())))
}

/// After an abort journaled while no engine held the run: stops the
/// attempts still running on ssh hosts (their runners went on without a
/// coordinator). One line per ticket.
pub fn abort_remote(state: &RunState, reason: &str) -> Result<Vec<String>> {
    if !state.steps.values().any(|s| s.remote.is_some()) {
        return Ok(Vec::new());
    }
    let plan = pinned_plan(state)
        .map_err(|e| Error::failed(format!("the pinned plan does not validate: {e}")))?;
    let rt = runtime()?;
    Ok(rt.block_on(crate::remote::abort_in_flight(
        &plan,
        state,
        std::env::current_exe().ok(),
        reason,
    )))
}

/// A drift report in words, as journaled and shown.
pub fn drift_text(drift: &[(String, String)]) -> String {
    let mut out = format!("drift found in {} completed step(s):", drift.len());
    for (step, what) in drift {
        out.push_str(&format!("\n  {step}: {what}"));
    }
    out
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::failed(format!("cannot start the async runtime: {e}")))
}

fn block_on<F: std::future::Future<Output = Result<Exit, engine::EngineError>>>(
    f: F,
) -> Result<Exit> {
    runtime()?.block_on(f).map_err(|e| {
        Error::failed(format!("engine stopped: {e}"))
            .with_hint("the run is resumable once the cause is fixed: upshift resume")
    })
}

/// The plan to resume with: the pinned one, or (with `accept`) the edited
/// file, with the events that journal accepting it.
fn plan_for_resume(state: &RunState, accept: bool) -> Result<(Plan, Vec<Event>)> {
    let registry = upshift_steps::registry();
    let opts = pinned_options(state);
    let path = PathBuf::from(&state.plan_path);
    let pinned = plan::parse(&path, &state.plan_text, &registry, &opts).map_err(|e| {
        Error::failed(format!(
            "the plan pinned in the journal no longer validates with this upshift:\n{e}"
        ))
    })?;
    let Ok(current_text) = std::fs::read_to_string(&path) else {
        // The file is gone: the pinned text is the plan.
        return Ok((pinned, Vec::new()));
    };
    // The site file counts as part of the plan.
    let site_now = state
        .site
        .as_ref()
        .and_then(|(p, _, hash)| {
            std::fs::read_to_string(p)
                .ok()
                .map(|t| (p.clone(), t, hash.clone()))
        })
        .filter(|(_, t, hash)| plan::hash_text(t) != *hash);
    if plan::hash_text(&current_text) == state.plan_hash && site_now.is_none() {
        return Ok((pinned, Vec::new()));
    }
    let mut current_opts = opts.clone();
    if let Some((p, t, _)) = &site_now {
        current_opts.site = plan::SiteSource::Pinned {
            path: PathBuf::from(p),
            text: t.clone(),
        };
    }
    let current = plan::parse(&path, &current_text, &registry, &current_opts)?;
    let mut changed = pinned.changed_steps(&current);
    if let Some((p, _, _)) = &site_now {
        changed.push(format!("(site file {p})"));
    }
    if !accept {
        return Err(Error::usage(format!(
            "the plan file {} changed since this run started{}",
            path.display(),
            if changed.is_empty() {
                " (no step changed; only text around them)".to_string()
            } else {
                format!("; changed steps: {}", changed.join(", "))
            }
        ))
        .with_hint("resume refuses to mix two plans in one run; restore the file, or resume with --accept-plan-change (journaled with your name)"));
    }
    let mut extra = decision_events(
        Decision::AcceptPlanChange {
            old_hash: state.plan_hash.clone(),
            new_hash: current.hash.clone(),
            new_plan_text: current.text.clone(),
            changed_steps: changed,
        },
        actor(),
        "resume --accept-plan-change".into(),
    );
    if let Some((p, t, _)) = site_now {
        extra.push(Event::SitePinned {
            path: p,
            hash: plan::hash_text(&t),
            text: t,
        });
    }
    Ok((current, extra))
}
