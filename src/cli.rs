//! The command line. Only this module knows clap; errors are printed once,
//! in `main`, with a distinct exit code.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use upshift_journal::{Actor, Decision, Envelope, Event, Journal, JournalError, Outcome, RunId};

use crate::engine::{self, Config, Engine, Exit, InboxDecision};
use crate::plan::{self, LoadOptions, Plan};
use crate::report;
use crate::state::{RunState, StepStatus};

/// Exit codes (stable: scripts rely on them).
pub mod code {
    /// The run succeeded (or the command did what was asked).
    pub const OK: u8 = 0;
    /// The run failed, was aborted or was rolled back; or a journal error.
    pub const FAILED: u8 = 1;
    /// Bad usage or a plan error.
    pub const USAGE: u8 = 2;
    /// Paused, waiting for an operator.
    pub const PAUSED: u8 = 3;
    /// Interrupted (Ctrl-C, SIGTERM); resumable.
    pub const INTERRUPTED: u8 = 130;
}

/// An error to print, with its exit code.
#[derive(Debug)]
pub struct CliError {
    /// Exit code.
    pub code: u8,
    /// Message (already formatted).
    pub message: String,
}

impl CliError {
    fn usage(m: impl Into<String>) -> CliError {
        CliError {
            code: code::USAGE,
            message: m.into(),
        }
    }
    fn failed(m: impl Into<String>) -> CliError {
        CliError {
            code: code::FAILED,
            message: m.into(),
        }
    }
}

impl From<JournalError> for CliError {
    fn from(e: JournalError) -> Self {
        CliError::failed(e.to_string())
    }
}

impl From<plan::PlanErrors> for CliError {
    fn from(e: plan::PlanErrors) -> Self {
        CliError::usage(e.to_string())
    }
}

const ABOUT: &str =
    "Runs long, interruptible upgrade procedures as a journaled dependency graph of steps.";

const LONG_ABOUT: &str = "\
Runs long, interruptible upgrade procedures (such as the Luware TeamManager
upgrade) as a dependency graph of steps, and writes every event of a run to a
durable journal. A run that is cut off (process killed, host rebooted,
operator gone home) resumes from its last checkpoint, or is rolled back.

Typical session:
  upshift check plans/teammanager.toml        validate the plan, touch nothing
  upshift run plans/teammanager.toml --dry-run what would each step do?
  upshift run plans/teammanager.toml          run it (prints the run id first)
  upshift status                              where does the latest run stand?
  upshift resume                              continue after a crash/reboot/pause
  upshift log RUN                             every event, in order

Exit codes: 0 succeeded, 1 failed or rolled back, 2 usage or plan error,
3 paused waiting for an operator, 130 interrupted (resumable).

The journal lives in --journal DIR, else $UPSHIFT_JOURNAL, else
%ProgramData%\\upshift (Windows) or $XDG_STATE_HOME/upshift, ~/.local/state/upshift.";

/// The command line.
#[derive(Parser, Debug)]
#[command(name = "upshift", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    /// More diagnostics on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Where the journal is.
#[derive(Args, Debug, Clone)]
pub struct JournalArg {
    /// Journal directory [env: UPSHIFT_JOURNAL; default: per-OS state folder].
    #[arg(long, value_name = "DIR")]
    pub journal: Option<PathBuf>,
}

impl JournalArg {
    /// The directory to use.
    pub fn dir(&self) -> PathBuf {
        if let Some(d) = &self.journal {
            return d.clone();
        }
        if let Some(d) = std::env::var_os("UPSHIFT_JOURNAL").filter(|v| !v.is_empty()) {
            return PathBuf::from(d);
        }
        default_journal_dir()
    }
}

/// The OS default journal directory.
pub fn default_journal_dir() -> PathBuf {
    #[cfg(windows)]
    {
        let base = std::env::var_os("ProgramData")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(r"C:\ProgramData"));
        base.join("upshift")
    }
    #[cfg(not(windows))]
    {
        if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(x).join("upshift");
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        home.join(".local").join("state").join("upshift")
    }
}

/// Graph output formats.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum GraphFormat {
    /// Indented text, one step per line, in run order.
    Text,
    /// Graphviz DOT (`upshift graph plan.toml --format dot | dot -Tsvg > plan.svg`).
    Dot,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Validate a plan: TOML, kinds, parameters, dependencies, cycles, references.
    ///
    /// Nothing runs and nothing is journaled. Each problem is reported with
    /// file:line:column, the offending text and a hint. Exit 0 if valid, 2 if not.
    Check {
        /// The plan file.
        plan: PathBuf,
        /// Site file with this customer's values (default: the plan's `site`).
        #[arg(long, value_name = "FILE")]
        site: Option<PathBuf>,
        /// Set a variable (KEY=VALUE), overriding the plan's [vars].
        #[arg(long = "var", value_name = "KEY=VALUE")]
        vars: Vec<String>,
    },
    /// Show the plan's dependency graph.
    Graph {
        /// The plan file.
        plan: PathBuf,
        /// Site file with this customer's values (default: the plan's `site`).
        #[arg(long, value_name = "FILE")]
        site: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: GraphFormat,
    },
    /// Start a new run of a plan. Prints the run id as the first line on stdout.
    ///
    /// Steps run in dependency order, in parallel where the graph allows (up to
    /// --concurrency), each attempt journaled durably. Ctrl-C stops cleanly
    /// (exit 130) and `upshift resume` continues.
    Run {
        /// The plan file.
        plan: PathBuf,
        /// Site file with this customer's values (default: the plan's `site`).
        #[arg(long, value_name = "FILE")]
        site: Option<PathBuf>,
        /// Journal location.
        #[command(flatten)]
        journal: JournalArg,
        /// Set a variable (KEY=VALUE), overriding the plan's [vars].
        #[arg(long = "var", value_name = "KEY=VALUE")]
        vars: Vec<String>,
        /// Take a secret from elsewhere than the plan says: NAME=env:VARIABLE
        /// or NAME=file:PATH. The run pins the source (never the value), so
        /// `upshift resume` reads it from the same place.
        #[arg(long = "secret", value_name = "NAME=SOURCE")]
        secrets: Vec<String>,
        /// Steps running at once (default: the ready steps, at most 8).
        #[arg(long, value_name = "N")]
        concurrency: Option<usize>,
        /// Print what each step would do, in dependency order; run nothing.
        #[arg(long)]
        dry_run: bool,
        /// Echo every step's output on stderr.
        #[arg(long)]
        show_output: bool,
    },
    /// Continue an unfinished run from where it stopped.
    ///
    /// Steps whose success is journaled never run again; a step that was running
    /// when the engine stopped runs again from its last checkpoint (or waits for
    /// an operator if it has resume = "ask"). If the plan file changed since the
    /// run started, resume refuses and names the changed steps, unless
    /// --accept-plan-change (journaled).
    Resume {
        /// The run (default: the only unfinished run).
        run: Option<String>,
        /// Journal location.
        #[command(flatten)]
        journal: JournalArg,
        /// Continue with the edited plan file (the decision is journaled).
        #[arg(long)]
        accept_plan_change: bool,
        /// Continue although completed steps no longer match the machine
        /// (see `upshift drift`; the decision is journaled).
        #[arg(long)]
        ignore_drift: bool,
        /// Steps running at once.
        #[arg(long, value_name = "N")]
        concurrency: Option<usize>,
        /// Echo every step's output on stderr.
        #[arg(long)]
        show_output: bool,
    },
    /// Where a run stands (default: the most recent run).
    Status {
        /// The run.
        run: Option<String>,
        /// Journal location.
        #[command(flatten)]
        journal: JournalArg,
        /// Machine-readable JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Keep watching a live run from a second terminal: per-step progress
        /// bars (plain lines when not a terminal), refreshed from the journal
        /// every 300 ms until the run finishes, pauses or is interrupted.
        /// Exit code as the run's (0 succeeded, 1 failed, 3 paused, 130
        /// interrupted). Needs the redb journal (sled locks its directory).
        #[arg(long, conflicts_with = "json")]
        follow: bool,
    },
    /// List the runs in the journal, oldest first.
    Runs {
        /// Journal location.
        #[command(flatten)]
        journal: JournalArg,
    },
    /// Check that what completed steps did is still in place.
    ///
    /// Runs the probe of every step the journal records as done (a config value
    /// changed back by hand, a service stopped, another package version
    /// installed) and reports, per step, where the machine no longer matches.
    /// `upshift resume` runs this first. Exit 0 if nothing drifted, 1 if something did.
    Drift {
        /// The run (default: the most recent run).
        run: Option<String>,
        /// Journal location.
        #[command(flatten)]
        journal: JournalArg,
    },
    /// Print a run's events, one per line.
    Log {
        /// The run (default: the most recent run).
        run: Option<String>,
        /// Journal location.
        #[command(flatten)]
        journal: JournalArg,
        /// Keep printing events as the live engine journals them (like
        /// `tail -f`), until the run finishes, pauses or is interrupted.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Run a failed or paused step again (or retry a failed compensation).
    Retry(DecisionArgs),
    /// Mark a step done without running it. A reason is required.
    Skip {
        /// Journal location.
        #[command(flatten)]
        d: DecisionArgs,
    },
    /// Let a step that waits for an operator go on (manual steps, resume = "ask").
    Approve(DecisionArgs),
    /// End a run now: nothing more runs, nothing is compensated.
    Abort(RunDecisionArgs),
    /// Compensate every completed step, newest dependency first; resumable.
    Rollback(RunDecisionArgs),
    /// Write one run to a portable file for vendor support.
    ///
    /// The file holds the run's pinned plan, every event (as journaled), the
    /// engine version and a fingerprint (OS, hosts, upshift and step kinds'
    /// versions), gzip-compressed with a SHA-256 over the content. Secrets were
    /// never journaled; export checks again for the values of the plan's
    /// secrets it can read here and refuses, naming the event, if one is found.
    ///
    /// Example: upshift export 0193a5 -o case-1234.export
    Export {
        /// The run (id or unique prefix).
        run: String,
        /// Output file [default: upshift-RUN.export in the current folder].
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Journal location.
        #[command(flatten)]
        journal: JournalArg,
    },
    /// Load an export file into a journal (e.g. a support machine's), unchanged.
    ///
    /// The run keeps its id, seqs and times; `status`, `log`, `replay`, `report`
    /// and `diff` then work on it. Do not `resume` an imported run: it would run
    /// the customer's steps on this machine. Importing the same file twice is a
    /// no-op.
    ///
    /// Example: upshift import case-1234.export --journal ./case-1234
    Import {
        /// The export file.
        file: PathBuf,
        /// Journal location.
        #[command(flatten)]
        journal: JournalArg,
    },
    /// Rebuild a run's state event by event, from an export file or a journal.
    ///
    /// Without options: every event, then the final state. --at SEQ: every step's
    /// state, attempts, checkpoint and outputs right after event SEQ. --explain:
    /// what `upshift resume` would do next (which steps re-run and from which
    /// checkpoint, which are skipped, where it stops) and what `upshift
    /// rollback` would compensate, without doing anything. Needs none of the
    /// run's hosts.
    ///
    /// Examples:
    ///   upshift replay case-1234.export --explain
    ///   upshift replay case-1234.export --at 57
    ///   upshift replay 0193a5 --at 57 --json
    #[command(verbatim_doc_comment)]
    Replay {
        /// An export file, or a run (id or unique prefix) in the journal.
        source: String,
        /// Show the state right after this event.
        #[arg(long, value_name = "SEQ")]
        at: Option<u64>,
        /// Say what `upshift resume` (and `rollback`) would do next.
        #[arg(long)]
        explain: bool,
        /// Machine-readable JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Journal location (when SOURCE is a run).
        #[command(flatten)]
        journal: JournalArg,
    },
    /// Write a single self-contained HTML report of a run.
    ///
    /// Header (plan, site, result, duration, who decided what), a Gantt timeline
    /// of every attempt (retries, interruptions, reboots and operator waits show
    /// as gaps), the DAG with step states, every failure with its error and
    /// output tail, and the event list with filters. No network access: CSS, JS
    /// and SVG are inline. Stays fast for runs of 100,000+ events (progress and
    /// checkpoint events are summarised; the list is paged).
    ///
    /// Example: upshift report case-1234.export -o report.html
    Report {
        /// An export file, or a run (id or unique prefix) in the journal.
        source: String,
        /// The HTML file to write.
        #[arg(short, long, value_name = "FILE", default_value = "report.html")]
        output: PathBuf,
        /// Journal location (when SOURCE is a run).
        #[command(flatten)]
        journal: JournalArg,
    },
    /// Compare two runs of the same plan, step by step.
    ///
    /// Shows, per step, each run's outcome, attempts and time spent, the
    /// duration ratio (B/A), and marks the steps that differed. Either run may
    /// be an export file.
    ///
    /// Example: upshift diff site-a.export site-b.export
    Diff {
        /// The first run (A): export file or run id.
        a: String,
        /// The second run (B): export file or run id.
        b: String,
        /// Machine-readable JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Journal location (for runs given by id).
        #[command(flatten)]
        journal: JournalArg,
    },
    /// Run the TeamManager upgrade end to end against a simulated site.
    ///
    /// Builds a simulated TM site in a folder (config files shaped like the
    /// manual's, stand-ins for msiexec, PowerShell, systemctl, SQL Server and
    /// IIS — each says it is one) and runs the real plans/teammanager.toml
    /// against it, with progress bars: database phase, 13 components, an
    /// installer asking for a reboot, the FE HTTPS binding approved by a
    /// stand-in operator, the ICH conference cleanup (0.2 s per conference
    /// instead of 20 s). Then prints where the journal is and how to look at it.
    ///
    ///   upshift demo                 # the whole upgrade
    ///   upshift demo --crash-at 40   # dies after event 40; then `upshift resume`
    #[cfg(feature = "demo")]
    Demo {
        /// Folder for the simulated site (default: a new folder in the temp dir).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Kill the demo right after event N is journaled, to show `upshift resume`.
        #[arg(long, value_name = "N")]
        crash_at: Option<u64>,
        /// Echo every step's output on stderr.
        #[arg(long)]
        show_output: bool,
    },
    /// (internal) The demo's SQL Server and IIS stand-ins.
    #[cfg(feature = "demo")]
    #[command(name = "__demo-standins", hide = true)]
    DemoStandins {
        /// The demo folder.
        dir: PathBuf,
    },
    /// (internal) Supervise a step's child process so it dies with the engine.
    #[command(name = "__guard", hide = true)]
    Guard {
        /// Engine pid, `--`, program and arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

/// A decision about one step.
#[derive(Args, Debug)]
pub struct DecisionArgs {
    /// The run.
    pub run: String,
    /// The step.
    pub step: String,
    /// Why (journaled with your user name).
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Journal location.
    #[command(flatten)]
    pub journal: JournalArg,
}

/// A decision about a whole run.
#[derive(Args, Debug)]
pub struct RunDecisionArgs {
    /// The run.
    pub run: String,
    /// Why (journaled with your user name).
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Journal location.
    #[command(flatten)]
    pub journal: JournalArg,
    /// Steps running at once (rollback).
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
}

/// Who is running this command.
pub fn actor() -> Actor {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(os_user)
        .unwrap_or_else(|| "unknown".into());
    let host = hostname();
    Actor {
        user,
        host,
        pid: std::process::id(),
    }
}

fn os_user() -> Option<String> {
    #[cfg(unix)]
    {
        nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.name)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

fn hostname() -> String {
    #[cfg(unix)]
    {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "unknown".into())
    }
    #[cfg(not(unix))]
    {
        std::env::var("COMPUTERNAME").unwrap_or_else(|_| "unknown".into())
    }
}

fn parse_vars(vars: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    vars.iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.to_string()))
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| CliError::usage(format!("--var {kv}: write KEY=VALUE")))
        })
        .collect()
}

fn load_plan(
    path: &Path,
    vars: &BTreeMap<String, String>,
    site: Option<&Path>,
) -> Result<Plan, CliError> {
    Ok(plan::load(
        path,
        &upshift_steps::registry(),
        &LoadOptions {
            vars: vars.clone(),
            site: match site {
                Some(p) => plan::SiteSource::File(p.to_path_buf()),
                None => plan::SiteSource::FromPlan,
            },
        },
    )?)
}

fn exit_code(exit: &Exit) -> u8 {
    match exit {
        Exit::Finished(Outcome::Succeeded) => code::OK,
        Exit::Finished(_) => code::FAILED,
        Exit::Paused(_) => code::PAUSED,
        Exit::Interrupted | Exit::Rebooting(_) => code::INTERRUPTED,
    }
}

fn report_exit(exit: &Exit, run: RunId, dir: &Path) {
    let j = if std::env::var_os("UPSHIFT_JOURNAL").is_some() {
        String::new()
    } else {
        format!(" --journal {}", dir.display())
    };
    match exit {
        Exit::Finished(o) => eprintln!("run {run} {}", report::outcome_word(*o)),
        Exit::Paused(reason) => eprintln!("run {run} paused: {reason}"),
        Exit::Interrupted => {
            eprintln!("run {run} interrupted; continue with: upshift resume {run}{j}")
        }
        Exit::Rebooting(message) => eprintln!("run {run}: {message}"),
    }
}

/// Runs the command line; returns the exit code.
pub fn run(cli: Cli) -> Result<u8, CliError> {
    match cli.command {
        Command::Guard { args } => Ok(upshift_steps::child::guard_main(args).clamp(0, 255) as u8),
        Command::Check { plan, vars, site } => {
            let vars = parse_vars(&vars)?;
            let p = load_plan(&plan, &vars, site.as_deref())?;
            println!(
                "{}: ok — plan \"{}\", {} steps, {} dependencies",
                plan.display(),
                p.name,
                p.steps.len(),
                p.steps.values().map(|s| s.needs.len()).sum::<usize>()
            );
            Ok(code::OK)
        }
        Command::Graph { plan, format, site } => {
            let p = load_plan(&plan, &BTreeMap::new(), site.as_deref())?;
            print!("{}", graph(&p, format));
            Ok(code::OK)
        }
        Command::Run {
            plan,
            site,
            journal,
            vars,
            secrets,
            concurrency,
            dry_run,
            show_output,
        } => {
            let mut vars = parse_vars(&vars)?;
            for (name, source) in parse_vars(&secrets)? {
                vars.insert(format!("secret:{name}"), source);
            }
            let p = load_plan(&plan, &vars, site.as_deref())?;
            if dry_run {
                print!("{}", dry_run_text(&p));
                return Ok(code::OK);
            }
            let dir = journal.dir();
            let session = Session {
                concurrency,
                show_output,
                ..Session::default()
            };
            let (run, exit) = start_run(p, vars, &dir, &session)?;
            report_exit(&exit, run, &dir);
            Ok(exit_code(&exit))
        }
        Command::Resume {
            run,
            journal,
            accept_plan_change,
            ignore_drift,
            concurrency,
            show_output,
        } => {
            let dir = journal.dir();
            let session = Session {
                concurrency,
                show_output,
                ..Session::default()
            };
            let (run, exit) = resume_run(
                &dir,
                run.as_deref(),
                accept_plan_change,
                ignore_drift,
                &session,
            )?;
            report_exit(&exit, run, &dir);
            Ok(exit_code(&exit))
        }
        Command::Status {
            run,
            journal,
            json,
            follow,
        } => {
            if follow {
                return crate::support::follow::status_follow(run.as_deref(), &journal);
            }
            let dir = journal.dir();
            let live = live_pid(&dir);
            let j = Journal::open_read_only(&dir)?;
            let run = pick_run(&j, run.as_deref(), false)?;
            let state = fold_run(&j, run)?;
            let plan = pinned_plan(&state).ok();
            let doc = report::status_json(
                &state,
                plan.as_ref(),
                live.is_some() && state.outcome.is_none(),
            );
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&doc).expect("serializable")
                );
            } else {
                print!("{}", report::status_text(&doc));
            }
            Ok(code::OK)
        }
        Command::Runs { journal } => {
            let dir = journal.dir();
            let j = Journal::open_read_only(&dir)?;
            for run in j.runs()? {
                let (events, err) = j.read_run_salvage(run);
                let st = RunState::from_events(&events);
                println!(
                    "{run}  {:<11}  {}  {}  {} events{}",
                    report::status_word(st.status(false)),
                    st.started_at
                        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                        .unwrap_or_default(),
                    st.plan_name,
                    st.events,
                    if err.is_some() { " (damaged)" } else { "" }
                );
            }
            Ok(code::OK)
        }
        Command::Log {
            run,
            journal,
            follow,
        } => {
            if follow {
                return crate::support::follow::log_follow(run.as_deref(), &journal);
            }
            let dir = journal.dir();
            let j = Journal::open_read_only(&dir)?;
            let run = pick_run(&j, run.as_deref(), false)?;
            let mut out = std::io::stdout().lock();
            let r = j.scan(run, 0, &mut |env| {
                use std::io::Write;
                if writeln!(out, "{}", report::log_line(&env)).is_err() {
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            });
            r.map_err(|e| {
                CliError::failed(format!(
                    "{e}\n  the events above are intact; nothing after the damage is shown"
                ))
            })?;
            Ok(code::OK)
        }
        Command::Drift { run, journal } => {
            let dir = journal.dir();
            let j = Journal::open(&dir)?;
            let run = pick_run(&j, run.as_deref(), false)?;
            let state = fold_run(&j, run)?;
            let plan = pinned_plan(&state)
                .map_err(|e| CliError::failed(format!("the pinned plan does not validate: {e}")))?;
            let secrets = engine::resolve_secrets(&plan).map_err(CliError::usage)?;
            let eng = Engine::with_state(
                plan,
                config(&dir, &Session::default()),
                j,
                run,
                state,
                secrets,
            );
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| CliError::failed(format!("cannot start the async runtime: {e}")))?;
            let drift = rt.block_on(eng.drift());
            if drift.is_empty() {
                println!(
                    "run {run}: no drift — every completed step that can be probed is still in place"
                );
                Ok(code::OK)
            } else {
                println!("{}", drift_text(&drift));
                Ok(code::FAILED)
            }
        }
        #[cfg(feature = "demo")]
        Command::Demo {
            dir,
            crash_at,
            show_output,
        } => crate::demo::demo(crate::demo::DemoArgs {
            dir,
            crash_at,
            show_output,
        }),
        #[cfg(feature = "demo")]
        Command::DemoStandins { dir } => crate::demo::standins_main(&dir),
        Command::Retry(d) => step_decision(d, |step| Decision::Retry { step }, false),
        Command::Skip { d } => {
            if d.reason.trim().is_empty() {
                return Err(CliError::usage(
                    "skip needs --reason \"...\": the journal keeps why a step was not run",
                ));
            }
            step_decision(d, |step| Decision::Skip { step }, false)
        }
        Command::Approve(d) => step_decision(d, |step| Decision::Approve { step }, true),
        Command::Abort(d) => run_decision(d, Decision::Abort),
        Command::Rollback(d) => run_decision(d, Decision::Rollback),
        Command::Export {
            run,
            output,
            journal,
        } => crate::support::export::export_cmd(&run, output, &journal),
        Command::Import { file, journal } => crate::support::export::import_cmd(&file, &journal),
        Command::Replay {
            source,
            at,
            explain,
            json,
            journal,
        } => crate::support::replay::replay_cmd(&source, at, explain, json, &journal),
        Command::Report {
            source,
            output,
            journal,
        } => crate::support::report_html::report_cmd(&source, &output, &journal),
        Command::Diff {
            a,
            b,
            json,
            journal,
        } => crate::support::diff::diff_cmd(&a, &b, json, &journal),
    }
}

fn config(dir: &Path, session: &Session) -> Config {
    Config {
        registry: upshift_steps::registry(),
        concurrency: session.concurrency,
        guard_program: std::env::current_exe().ok(),
        work_root: dir.join("work"),
        actor: actor(),
        observer: session
            .observer
            .clone()
            .unwrap_or_else(|| Arc::new(crate::ui::Ui::new(session.show_output))),
        inbox: Some(dir.join("inbox")),
        journal_dir: Some(dir.to_path_buf()),
        boot: session.boot.clone(),
    }
}

fn block_on<F: std::future::Future<Output = Result<Exit, engine::EngineError>>>(
    f: F,
) -> Result<Exit, CliError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(f).map_err(|e| {
        CliError::failed(format!(
            "engine stopped: {e}\n  the run is resumable once the cause is fixed: upshift resume"
        ))
    })
}

fn damaged(e: JournalError, run: RunId) -> CliError {
    match e {
        JournalError::Corrupt { .. } => CliError::failed(format!(
            "{e}\n  upshift will not resume from a damaged journal: `upshift log {run}` shows the intact events before the damage"
        )),
        other => other.into(),
    }
}

fn read_history(j: &Journal, run: RunId) -> Result<Vec<Envelope>, CliError> {
    j.read_run(run).map_err(|e| damaged(e, run))
}

/// Folds a run's events as they are scanned, without holding them all
/// (a run can have millions).
pub fn fold_run(j: &Journal, run: RunId) -> Result<RunState, CliError> {
    let mut state = RunState::default();
    j.scan(run, 0, &mut |env| {
        state.apply(&env);
        ControlFlow::Continue(())
    })
    .map_err(|e| damaged(e, run))?;
    Ok(state)
}

/// The pid of a live engine holding the journal, if any.
pub fn live_pid(dir: &Path) -> Option<Option<u32>> {
    match upshift_journal::DirLock::acquire(dir) {
        Ok(_lock) => None,
        Err(JournalError::Locked { holder_pid, .. }) => Some(holder_pid),
        Err(_) => None,
    }
}

pub(crate) fn pick_run(
    j: &Journal,
    given: Option<&str>,
    unfinished: bool,
) -> Result<RunId, CliError> {
    let runs = j.runs()?;
    if let Some(g) = given {
        // Accept a full id or a unique prefix.
        let matches: Vec<RunId> = runs
            .iter()
            .copied()
            .filter(|r| r.to_string().starts_with(g))
            .collect();
        return match matches.as_slice() {
            [one] => Ok(*one),
            [] => Err(CliError::usage(format!(
                "no run {g} in this journal (`upshift runs` lists them)"
            ))),
            _ => Err(CliError::usage(format!(
                "{g} matches {} runs: give more of the id",
                matches.len()
            ))),
        };
    }
    if runs.is_empty() {
        return Err(CliError::usage(
            "this journal has no runs yet (start one with `upshift run PLAN`)",
        ));
    }
    if !unfinished {
        return Ok(*runs.last().expect("non-empty"));
    }
    let open: Vec<RunId> = runs
        .iter()
        .copied()
        .filter(|r| {
            let (ev, _) = j.read_run_salvage(*r);
            RunState::from_events(&ev).outcome.is_none()
        })
        .collect();
    match open.as_slice() {
        [one] => Ok(*one),
        [] => Err(CliError::usage(
            "no unfinished run to resume (`upshift runs` lists them)",
        )),
        many => Err(CliError::usage(format!(
            "{} unfinished runs; name one: {}",
            many.len(),
            many.iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The plan a run pinned last (after any accepted plan change) with its
/// pinned site file and `--var` values, parsed with this upshift's kinds.
pub fn pinned_plan(state: &RunState) -> Result<Plan, plan::PlanErrors> {
    plan::parse(
        Path::new(&state.plan_path),
        &state.plan_text,
        &upshift_steps::registry(),
        &pinned_options(state),
    )
}

/// How to load the plan a run pinned: its `--var` values and its pinned
/// site file.
pub fn pinned_options(state: &RunState) -> LoadOptions {
    LoadOptions {
        vars: state.cli_vars.clone(),
        site: match &state.site {
            Some((path, text, _)) => plan::SiteSource::Pinned {
                path: PathBuf::from(path),
                text: text.clone(),
            },
            None => plan::SiteSource::FromPlan,
        },
    }
}

fn plan_for_resume(state: &RunState, accept: bool) -> Result<(Plan, Vec<Event>), CliError> {
    let registry = upshift_steps::registry();
    let opts = pinned_options(state);
    let path = PathBuf::from(&state.plan_path);
    let pinned = plan::parse(&path, &state.plan_text, &registry, &opts).map_err(|e| {
        CliError::failed(format!(
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
        return Err(CliError::usage(format!(
            "the plan file {} changed since this run started{}\n  resume refuses to mix two plans in one run; restore the file, or resume with --accept-plan-change (journaled with your name)",
            path.display(),
            if changed.is_empty() {
                " (no step changed; only text around them)".to_string()
            } else {
                format!("; changed steps: {}", changed.join(", "))
            }
        )));
    }
    let mut extra = engine::decision_events(
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

/// How an engine session shows itself and reaches the OS.
#[derive(Default)]
pub struct Session {
    /// Cap on parallel steps.
    pub concurrency: Option<usize>,
    /// Echo step output.
    pub show_output: bool,
    /// Replaces the terminal UI (the demo wraps it).
    pub observer: Option<Arc<dyn engine::Observer>>,
    /// Where the resume-at-boot task goes.
    pub boot: crate::reboot::BootOverrides,
}

/// Starts a new run of a validated plan. Prints the run id first.
pub fn start_run(
    p: Plan,
    vars: BTreeMap<String, String>,
    dir: &Path,
    session: &Session,
) -> Result<(RunId, Exit), CliError> {
    let secrets = engine::resolve_secrets(&p).map_err(CliError::usage)?;
    let j = Journal::open(dir)?;
    let run = RunId::new();
    println!("{run}");
    let _log = crate::logging::run_log(dir, run);
    let mut eng = Engine::new(p, config(dir, session), j, run, &[], secrets);
    let exit = block_on(eng.start(vars))?;
    Ok((run, exit))
}

/// Resumes a run (the only unfinished one if `run` is None).
pub fn resume_run(
    dir: &Path,
    run: Option<&str>,
    accept_plan_change: bool,
    ignore_drift: bool,
    session: &Session,
) -> Result<(RunId, Exit), CliError> {
    let j = Journal::open(dir)?;
    let run = pick_run(&j, run, true)?;
    let state = fold_run(&j, run)?;
    if let Some(o) = state.outcome {
        eprintln!(
            "run {run} already ended: {} — nothing to resume",
            report::outcome_word(o)
        );
        return Ok((run, Exit::Finished(o)));
    }
    let (plan, mut extra) = plan_for_resume(&state, accept_plan_change)?;
    let secrets = engine::resolve_secrets(&plan).map_err(CliError::usage)?;
    let _log = crate::logging::run_log(dir, run);
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
    let mut eng = Engine::with_state(plan, config(dir, session), j, run, state, secrets);
    let exit = block_on(async {
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
            extra.extend(engine::decision_events(
                Decision::IgnoreDrift { steps },
                actor(),
                "resume --ignore-drift".into(),
            ));
        }
        eng.resume(extra).await
    })?;
    Ok((run, exit))
}

/// Approves a waiting step (as `upshift approve` does).
pub fn approve(dir: &Path, run: RunId, step: &str, reason: &str) -> Result<(), CliError> {
    step_decision(
        DecisionArgs {
            run: run.to_string(),
            step: step.to_string(),
            reason: reason.to_string(),
            journal: JournalArg {
                journal: Some(dir.to_path_buf()),
            },
        },
        |step| Decision::Approve { step },
        true,
    )
    .map(|_| ())
}

/// Journals a decision directly, or queues it for the live engine.
fn journal_decision(
    dir: &Path,
    run_arg: &str,
    check: impl FnOnce(&RunState, RunId) -> Result<Decision, CliError>,
    reason: String,
) -> Result<(RunId, Option<Journal>, RunState, Vec<Envelope>), CliError> {
    match Journal::open(dir) {
        Ok(mut j) => {
            let run = pick_run(&j, Some(run_arg), false)?;
            let history = read_history(&j, run)?;
            let state = RunState::from_events(&history);
            let decision = check(&state, run)?;
            let events = engine::decision_events(decision, actor(), reason);
            let mut seq = j.next_seq(run)?;
            let now = chrono::Utc::now();
            let batch: Vec<Envelope> = events
                .into_iter()
                .map(|event| {
                    let e = Envelope {
                        run,
                        seq,
                        time: now,
                        event,
                    };
                    seq += 1;
                    e
                })
                .collect();
            j.append(&batch)?;
            let mut all = history;
            all.extend(batch);
            let state = RunState::from_events(&all);
            Ok((run, Some(j), state, all))
        }
        Err(JournalError::Locked { holder_pid, .. }) => {
            // A live engine holds the journal: queue the decision for it.
            let j = Journal::open_read_only(dir)?;
            let run = pick_run(&j, Some(run_arg), false)?;
            let history = read_history(&j, run)?;
            let state = RunState::from_events(&history);
            let decision = check(&state, run)?;
            let inbox = dir.join("inbox").join(run.to_string());
            std::fs::create_dir_all(&inbox)
                .map_err(|e| CliError::failed(format!("{}: {e}", inbox.display())))?;
            let name = format!(
                "{}-{}.json",
                chrono::Utc::now().format("%Y%m%dT%H%M%S%.6f"),
                std::process::id()
            );
            let tmp = inbox.join(format!("{name}.tmp"));
            let doc = serde_json::to_string(&InboxDecision {
                decision,
                actor: actor(),
                reason,
            })
            .expect("serializable");
            std::fs::write(&tmp, doc)
                .and_then(|_| std::fs::rename(&tmp, inbox.join(&name)))
                .map_err(|e| CliError::failed(format!("{}: {e}", inbox.display())))?;
            eprintln!(
                "run {run} is live in {}; the decision is queued and the engine journals it within a second",
                holder_pid
                    .map(|p| format!("process {p}"))
                    .unwrap_or_else(|| "another process".into())
            );
            Ok((run, None, state, history))
        }
        Err(e) => Err(e.into()),
    }
}

fn step_decision(
    d: DecisionArgs,
    make: impl FnOnce(String) -> Decision,
    approve: bool,
) -> Result<u8, CliError> {
    let dir = d.journal.dir();
    let step = d.step.clone();
    let (run, j, _, _) = journal_decision(
        &dir,
        &d.run,
        |state, run| {
            if state.outcome.is_some_and(|o| o != Outcome::Failed) {
                return Err(CliError::usage(format!(
                    "run {run} already ended ({})",
                    report::outcome_word(state.outcome.expect("some"))
                )));
            }
            let plan_steps = pinned_plan(state)
                .map(|p| p.steps.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default();
            if !plan_steps.contains(&step) {
                let hint =
                    crate::diagnostics::suggest(&step, plan_steps.iter().map(String::as_str))
                        .map(|s| format!(" (did you mean `{s}`?)"))
                        .unwrap_or_default();
                return Err(CliError::usage(format!(
                    "run {run} has no step `{step}`{hint}"
                )));
            }
            let st = state.step(&step).clone();
            if st.status == StepStatus::Succeeded
                && st.compensation != crate::state::CompStatus::Failed
            {
                return Err(CliError::usage(format!(
                    "step `{step}` already succeeded; nothing to decide"
                )));
            }
            if approve
                && !matches!(
                    st.status,
                    StepStatus::Waiting | StepStatus::Interrupted | StepStatus::Pending
                )
            {
                return Err(CliError::usage(format!(
                    "step `{step}` is {}, not waiting for an operator",
                    report::step_word(&st.status)
                )));
            }
            Ok(make(step.clone()))
        },
        d.reason,
    )?;
    if j.is_some() {
        let j = if std::env::var_os("UPSHIFT_JOURNAL").is_some() {
            String::new()
        } else {
            format!(" --journal {}", dir.display())
        };
        eprintln!("journaled. Continue the run with: upshift resume {run}{j}");
    }
    Ok(code::OK)
}

fn run_decision(d: RunDecisionArgs, decision: Decision) -> Result<u8, CliError> {
    let dir = d.journal.dir();
    let is_rollback = decision == Decision::Rollback;
    let (run, j, state, history) = journal_decision(
        &dir,
        &d.run,
        |state, run| {
            if let Some(o) = state.outcome
                && (o != Outcome::Failed || !is_rollback)
            {
                return Err(CliError::usage(format!(
                    "run {run} already ended ({})",
                    report::outcome_word(o)
                )));
            }
            Ok(decision.clone())
        },
        d.reason,
    )?;
    let Some(j) = j else {
        return Ok(code::OK);
    };
    if !is_rollback {
        eprintln!("run {run} aborted");
        return Ok(code::FAILED);
    }
    // Perform the rollback now.
    let plan = pinned_plan(&state)
        .map_err(|e| CliError::failed(format!("the pinned plan does not validate: {e}")))?;
    let secrets = engine::resolve_secrets(&plan).map_err(CliError::usage)?;
    let _log = crate::logging::run_log(&dir, run);
    let mut eng = Engine::new(
        plan,
        config(
            &dir,
            &Session {
                concurrency: d.concurrency,
                ..Session::default()
            },
        ),
        j,
        run,
        &history,
        secrets,
    );
    let exit = block_on(eng.rollback(Vec::new()))?;
    report_exit(&exit, run, &dir);
    Ok(exit_code(&exit))
}

fn drift_text(drift: &[(String, String)]) -> String {
    let mut out = format!("drift found in {} completed step(s):", drift.len());
    for (step, what) in drift {
        out.push_str(&format!("\n  {step}: {what}"));
    }
    out
}

/// `--dry-run`: each step's description, in dependency order. Secrets show
/// as placeholders, outputs of earlier steps as what they will be.
pub fn dry_run_text(p: &Plan) -> String {
    let registry = upshift_steps::registry();
    let mut out = format!(
        "plan \"{}\" — {} steps (dry run: nothing runs, nothing is journaled)\n",
        p.name,
        p.order.len()
    );
    let placeholder_secret = |n: &str| Some(format!("<secret {n}>"));
    let placeholder_output = |s: &str, n: &str| Some(format!("<{n} of {s}>"));
    static NO_SITE: BTreeMap<String, toml::Value> = BTreeMap::new();
    let resolver = crate::refs::MapResolver {
        vars: &p.vars,
        site: p.site.as_ref().map(|s| &s.values).unwrap_or(&NO_SITE),
        secrets: &placeholder_secret,
        outputs: &placeholder_output,
    };
    for (i, id) in p.order.iter().enumerate() {
        let def = &p.steps[id];
        let needs = if def.needs.is_empty() {
            String::new()
        } else {
            format!(
                " (after {})",
                def.needs.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        };
        out.push_str(&format!("\n{}. {id} [{}]{needs}\n", i + 1, def.body.kind));
        if let Some(d) = &def.description {
            out.push_str(&format!("   {d}\n"));
        }
        let describe = |body: &plan::Body| -> Vec<String> {
            let with = plan::expand_target(&body.with, &p.targets)
                .and_then(|w| crate::refs::substitute_table(&w, &resolver).map_err(|b| b.message));
            match with.map(|w| registry[body.kind.as_str()].build(&w)) {
                Ok(Ok(step)) => step.describe(),
                Ok(Err(e)) => vec![format!("(cannot describe: {e})")],
                Err(e) => vec![format!("(cannot describe: {e})")],
            }
        };
        for l in describe(&def.body) {
            out.push_str(&format!("   {l}\n"));
        }
        if let Some(c) = &def.compensate {
            out.push_str(&format!("   on rollback [{}]:\n", c.kind));
            for l in describe(c) {
                out.push_str(&format!("     {l}\n"));
            }
        }
        let mut policy = Vec::new();
        if def.retry.attempts > 1 {
            policy.push(format!("up to {} attempts", def.retry.attempts));
        }
        if let Some(t) = def.timeout {
            policy.push(format!("timeout {}", humantime::format_duration(t)));
        }
        if !def.locks.is_empty() {
            policy.push(format!("locks {}", def.locks.join(", ")));
        }
        policy.push(format!(
            "on failure {}",
            serde_json::to_string(&def.on_failure)
                .unwrap_or_default()
                .trim_matches('"')
        ));
        out.push_str(&format!("   ({})\n", policy.join("; ")));
    }
    out
}

fn graph(p: &Plan, format: GraphFormat) -> String {
    match format {
        GraphFormat::Dot => {
            let mut out = format!(
                "digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box];\n",
                p.name.replace('"', "'")
            );
            for id in &p.order {
                let def = &p.steps[id];
                out.push_str(&format!(
                    "  \"{id}\" [label=\"{id}\\n{}\"];\n",
                    def.body.kind
                ));
                for n in &def.needs {
                    out.push_str(&format!("  \"{n}\" -> \"{id}\";\n"));
                }
            }
            out.push_str("}\n");
            out
        }
        GraphFormat::Text => {
            let mut out = String::new();
            // Level = longest path from a root, so parallel steps share a level.
            let mut level: BTreeMap<&str, usize> = BTreeMap::new();
            for id in &p.order {
                let l = p.steps[id]
                    .needs
                    .iter()
                    .map(|n| level[n.as_str()] + 1)
                    .max()
                    .unwrap_or(0);
                level.insert(id, l);
            }
            for id in &p.order {
                let def = &p.steps[id];
                let l = level[id.as_str()];
                let needs = if def.needs.is_empty() {
                    String::new()
                } else {
                    format!(
                        "  ← {}",
                        def.needs.iter().cloned().collect::<Vec<_>>().join(", ")
                    )
                };
                out.push_str(&format!(
                    "{:indent$}{id} [{}]{needs}\n",
                    "",
                    def.body.kind,
                    indent = l * 2
                ));
            }
            out
        }
    }
}
