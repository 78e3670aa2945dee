//! `upshift run`, `upshift resume` and `upshift drift`.

use std::path::Path;
use std::sync::Arc;

use crate::app::Workspace;
use crate::app::run::{self, Resumed, Session, drift_text};
use crate::app::workspace::load_plan_to_run;
use crate::error::{Result, code};
use crate::report;
use crate::ui::Ui;

use super::{exit_code, parse_vars, report_exit};

/// Options of `upshift run`.
pub struct RunArgs<'a> {
    /// The plan file.
    pub plan: &'a Path,
    /// `--site FILE`.
    pub site: Option<&'a Path>,
    /// `--var KEY=VALUE`.
    pub vars: &'a [String],
    /// `--secret NAME=SOURCE`.
    pub secrets: &'a [String],
    /// `--concurrency N`.
    pub concurrency: Option<usize>,
    /// `--dry-run`.
    pub dry_run: bool,
    /// `--show-output`.
    pub show_output: bool,
}

/// The terminal session: progress on stderr.
fn session(concurrency: Option<usize>, show_output: bool) -> Session {
    Session {
        concurrency,
        observer: Arc::new(Ui::new(show_output)),
        ..Session::default()
    }
}

/// `upshift run PLAN`: prints the run id first, then runs it.
pub fn run(ws: &Workspace, a: RunArgs<'_>) -> Result<u8> {
    let mut vars = parse_vars(a.vars)?;
    for (name, source) in parse_vars(a.secrets)? {
        vars.insert(format!("secret:{name}"), source);
    }
    let p = load_plan_to_run(a.plan, &vars, a.site)?;
    if a.dry_run {
        print!("{}", super::plan::dry_run_text(&p));
        return Ok(code::OK);
    }
    // Relative path values pinned absolute: a resume may start elsewhere.
    let vars = p.vars_to_pin(&vars);
    let (run, exit) = run::start(p, vars, ws, &session(a.concurrency, a.show_output), |run| {
        println!("{run}")
    })?;
    report_exit(&exit, run, ws.dir());
    Ok(exit_code(&exit))
}

/// `upshift resume [RUN]`.
pub fn resume(
    ws: &Workspace,
    run: Option<&str>,
    accept_plan_change: bool,
    ignore_drift: bool,
    concurrency: Option<usize>,
    show_output: bool,
) -> Result<u8> {
    let (run, resumed) = run::resume(
        ws,
        run,
        accept_plan_change,
        ignore_drift,
        &session(concurrency, show_output),
    )?;
    if let Resumed::AlreadyEnded(o) = resumed {
        eprintln!(
            "run {run} already ended: {} — nothing to resume",
            report::outcome_word(o)
        );
    }
    let exit = resumed.exit();
    report_exit(&exit, run, ws.dir());
    Ok(exit_code(&exit))
}

/// `upshift drift [RUN]`: exit 0 if nothing drifted, 1 if something did.
pub fn drift(ws: &Workspace, run: Option<&str>) -> Result<u8> {
    let (run, drift) = run::drift(ws, run, &session(None, false))?;
    if drift.is_empty() {
        println!("run {run}: no drift — every completed step that can be probed is still in place");
        Ok(code::OK)
    } else {
        println!("{}", drift_text(&drift));
        Ok(code::FAILED)
    }
}
