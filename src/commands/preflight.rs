//! `upshift preflight PLAN [--site FILE] [--json] [-o report.html]`: the
//! read-only checks of the real site ([`crate::preflight`]), as text,
//! JSON or HTML. Exit codes are a contract: 0 ready, 1 findings, 2 plan
//! error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::app::workspace::load_plan_to_run;
use crate::error::{Error, Result, code};
use crate::preflight::{self, Options};

use super::{parse_vars, print_doc, write_output};

/// What `upshift preflight` was asked.
#[derive(Debug, Clone)]
pub struct PreflightArgs {
    /// The plan file.
    pub plan: PathBuf,
    /// `--site FILE`.
    pub site: Option<PathBuf>,
    /// `--var KEY=VALUE`.
    pub vars: Vec<String>,
    /// `--json`.
    pub json: bool,
    /// `-o FILE`: also an HTML report.
    pub output: Option<PathBuf>,
    /// Time limit of each step's checks.
    pub step_timeout: Duration,
    /// Steps checked at once per host.
    pub per_host: usize,
}

/// Exit code of a report: 0 ready, 1 findings.
pub fn exit_code(r: &preflight::Report) -> u8 {
    if r.ready { code::OK } else { code::FAILED }
}

/// `upshift preflight`.
pub fn preflight(a: PreflightArgs) -> Result<u8> {
    let vars = parse_vars(&a.vars)?;
    // A plan or site file that does not validate: exit 2 (Error::Plan).
    let plan = load_plan_to_run(&a.plan, &vars, a.site.as_deref())?;
    let report = preflight::run(
        &plan,
        &Options {
            step_limit: a.step_timeout,
            per_host: a.per_host,
            ..Options::default()
        },
    )?;
    print_doc(&report, a.json, preflight::text);
    if let Some(out) = &a.output {
        write_output(out, preflight::html::render(&report).as_bytes())?;
        eprintln!("preflight report written to {}", out.display());
    }
    Ok(exit_code(&report))
}

/// `upshift demo`'s first act, once its site is built: the packages become
/// real MSI files, then preflight of the simulated site, its report on
/// stderr (stdout carries the run id). Findings do not stop the demo; the
/// run meets them.
///
/// Also writes `DIR/preflight.json` (what `--json` prints), which the
/// demo's run report takes in (`upshift report --preflight`).
#[cfg(feature = "demo")]
pub fn demo_preflight(plan: &crate::plan::Plan, dir: &Path) -> Result<preflight::Report> {
    preflight::demo::make_packages_real(dir, plan)?;
    let report = preflight::run(plan, &Options::default())?;
    let html = dir.join("preflight.html");
    write_output(&html, preflight::html::render(&report).as_bytes())?;
    let json = serde_json::to_vec_pretty(&report)
        .map_err(|e| Error::failed(format!("preflight report as JSON: {e}")))?;
    write_output(&dir.join(DEMO_PREFLIGHT_JSON), &json)?;
    eprintln!(
        "demo: first, `upshift preflight` asks the simulated site, read-only, whether the plan can run\n  (real MSI packages and their Property tables, the SQL stand-in's login, permissions and\n  version, config files):\n  {}\n  every check: {}\n",
        preflight::summary_text(&report)
            .replace('\n', "\n  ")
            .trim_end(),
        html.display()
    );
    Ok(report)
}

/// The demo's preflight report as JSON, in the demo's folder.
#[cfg(feature = "demo")]
pub const DEMO_PREFLIGHT_JSON: &str = "preflight.json";

/// `upshift __msi-properties PACKAGE`: the Property table as `NAME=value`
/// lines, for the msiexec stand-in (a shell script cannot read MSI files).
pub fn msi_properties(package: &Path) -> Result<u8> {
    let info = upshift_steps::preflight::msi::read_package(package).map_err(|e| {
        Error::failed(format!(
            "{}: not a readable Windows Installer package: {e}",
            package.display()
        ))
    })?;
    for (k, v) in &info.properties {
        println!("{k}={v}");
    }
    Ok(code::OK)
}
