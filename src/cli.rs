//! The command line: clap's types, and [`run`], which dispatches parsed
//! arguments to the command bodies in [`crate::commands`]. Only this module
//! (and `main.rs`) knows clap; commands take plain values. Errors are
//! printed once, in `main`, with [`crate::error::Error::exit_code`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use upshift_journal::Decision;

use crate::app::Workspace;
use crate::app::decisions::StepDecision;
use crate::commands;
use crate::error::Result;

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
    /// The directory to use: `--journal`, else `$UPSHIFT_JOURNAL`, else the
    /// OS default.
    pub fn dir(&self) -> PathBuf {
        crate::app::workspace::resolve_dir(self.journal.as_deref())
    }

    /// The journal workspace in that directory.
    pub fn workspace(&self) -> Workspace {
        Workspace::new(self.dir())
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
    /// Ask the real site, read-only, whether the plan can run: days before the window.
    ///
    /// Runs every step's preflight checks on the host that will run it, all
    /// steps of a host in parallel, each bounded in time, and prints one
    /// finding per problem: step, host, what was found, what was expected,
    /// how to fix it. It changes nothing and journals nothing.
    ///
    /// What is checked (docs/preflight.md has the full list):
    ///   packages  every .msi exists, is readable, and its own Property table
    ///             says what the site file assumes (ProductCode,
    ///             ProductVersion, UpgradeCode); every public property the
    ///             plan passes is defined by the package (a misspelled
    ///             INSTANCENAME is caught here and nowhere else)
    ///   SQL       the login works; HAS_PERMS_BY_NAME for BACKUP DATABASE and
    ///             RESTORE; the database exists and its version is on the
    ///             update path; free space where the backup goes > database
    ///             size (approximate); SQL Agent jobs to remove are listed
    ///   files     config files the plan edits exist and parse; paths resolve
    ///   hosts     ssh hosts reachable, host key known, administrator, free disk;
    ///             the steps on an ssh host are checked on that host (no ticket)
    ///   Windows   pending reboot, Windows Installer busy, services exist,
    ///             the certificate present with a private key and not
    ///             expiring soon (on Windows only; elsewhere "not checked")
    /// Not yet (listed as "not checked"): ports.
    ///
    /// Exit codes (a contract for scripts): 0 ready, 1 findings, 2 plan error.
    ///
    ///   upshift preflight plans/teammanager.toml --site sites/contoso.toml
    ///   upshift preflight plans/teammanager.toml --json | jq '.checks[] | select(.result == "finding")'
    ///   upshift preflight plans/teammanager.toml -o preflight.html
    ///   upshift preflight plans/teammanager.toml --json > pf.json
    ///   upshift report RUN --preflight pf.json    (after the run: its report with this preflight)
    #[command(verbatim_doc_comment)]
    Preflight {
        /// The plan file.
        plan: PathBuf,
        /// Site file with this customer's values (default: the plan's `site`).
        #[arg(long, value_name = "FILE")]
        site: Option<PathBuf>,
        /// Set a variable (KEY=VALUE), overriding the plan's [vars].
        #[arg(long = "var", value_name = "KEY=VALUE")]
        vars: Vec<String>,
        /// Print the report as JSON (for scripts) instead of text.
        #[arg(long)]
        json: bool,
        /// Also write the report as a self-contained HTML file.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
        /// Time limit of each step's checks.
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
        step_timeout: std::time::Duration,
        /// Steps checked at once per host (1 = one after another).
        #[arg(long, value_name = "N", default_value_t = 8)]
        per_host: usize,
    },
    /// (internal) Print an MSI package's Property table as NAME=value lines
    /// (the msiexec stand-in of tests and the demo reads packages with it).
    #[command(name = "__msi-properties", hide = true)]
    MsiProperties {
        /// The .msi file.
        package: PathBuf,
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
    Skip(SkipArgs),
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
    /// With `--preflight FILE.json` (what `upshift preflight --json` printed
    /// before the window), the report gains a Preflight section: verdict,
    /// findings with step, host, found, expected and fix, and the counts.
    ///
    /// Example: upshift report case-1234.export -o report.html
    Report {
        /// An export file, or a run (id or unique prefix) in the journal.
        source: String,
        /// The HTML file to write.
        #[arg(short, long, value_name = "FILE", default_value = "report.html")]
        output: PathBuf,
        /// Add a Preflight section from this file: the JSON `upshift
        /// preflight PLAN --json > FILE.json` printed (preflight journals
        /// nothing, so the run's journal does not hold it).
        #[arg(long, value_name = "FILE.json")]
        preflight: Option<PathBuf>,
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
    ///   upshift demo --stop-at acceptance   # leaves the run at the go/no-go gate: try `upshift rollback`
    #[cfg(feature = "demo")]
    Demo {
        /// Folder for the simulated site (default: a new folder in the temp dir).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Kill the demo right after event N is journaled, to show `upshift resume`.
        #[arg(long, value_name = "N")]
        crash_at: Option<u64>,
        /// Play the operator until step STEP waits, then leave the run paused
        /// there (e.g. `acceptance`, the go/no-go gate, to try `upshift rollback`).
        #[arg(long, value_name = "STEP")]
        stop_at: Option<String>,
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
    /// (internal) The host side of remote steps (`serve`, `run`), started
    /// by a coordinator over ssh.
    #[command(name = "__remote", hide = true)]
    Remote {
        /// `serve --work-dir DIR` or `run --ticket-dir DIR`.
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

/// `skip`: like [`DecisionArgs`], with a reason that must be given.
#[derive(Args, Debug)]
pub struct SkipArgs {
    /// The run.
    pub run: String,
    /// The step.
    pub step: String,
    /// Why the step is not run (required; journaled with your user name).
    #[arg(long)]
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

impl From<GraphFormat> for commands::plan::GraphFormat {
    fn from(f: GraphFormat) -> Self {
        match f {
            GraphFormat::Text => commands::plan::GraphFormat::Text,
            GraphFormat::Dot => commands::plan::GraphFormat::Dot,
        }
    }
}

/// Runs the command line; returns the exit code.
pub fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Guard { args } => Ok(upshift_steps::child::guard_main(args).clamp(0, 255) as u8),
        Command::Remote { args } => Ok(upshift_remote::main(args).clamp(0, 255) as u8),
        Command::Check { plan, vars, site } => commands::plan::check(&plan, &vars, site.as_deref()),
        Command::Preflight {
            plan,
            site,
            vars,
            json,
            output,
            step_timeout,
            per_host,
        } => commands::preflight::preflight(commands::preflight::PreflightArgs {
            plan,
            site,
            vars,
            json,
            output,
            step_timeout,
            per_host,
        }),
        Command::MsiProperties { package } => commands::preflight::msi_properties(&package),
        Command::Graph { plan, format, site } => {
            commands::plan::graph(&plan, format.into(), site.as_deref())
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
        } => commands::run::run(
            &journal.workspace(),
            commands::run::RunArgs {
                plan: &plan,
                site: site.as_deref(),
                vars: &vars,
                secrets: &secrets,
                concurrency,
                dry_run,
                show_output,
            },
        ),
        Command::Resume {
            run,
            journal,
            accept_plan_change,
            ignore_drift,
            concurrency,
            show_output,
        } => commands::run::resume(
            &journal.workspace(),
            run.as_deref(),
            accept_plan_change,
            ignore_drift,
            concurrency,
            show_output,
        ),
        Command::Status {
            run,
            journal,
            json,
            follow,
        } => commands::status::status(&journal.workspace(), run.as_deref(), json, follow),
        Command::Runs { journal } => commands::status::runs(&journal.workspace()),
        Command::Log {
            run,
            journal,
            follow,
        } => commands::status::log(&journal.workspace(), run.as_deref(), follow),
        Command::Drift { run, journal } => {
            commands::run::drift(&journal.workspace(), run.as_deref())
        }
        #[cfg(feature = "demo")]
        Command::Demo {
            dir,
            crash_at,
            stop_at,
            show_output,
        } => commands::demo::demo(commands::demo::DemoArgs {
            dir,
            crash_at,
            stop_at,
            show_output,
        }),
        #[cfg(feature = "demo")]
        Command::DemoStandins { dir } => commands::demo::standins(&dir),
        Command::Retry(d) => step_decision(d, StepDecision::Retry),
        Command::Skip(d) => commands::decisions::step(
            &d.journal.workspace(),
            &d.run,
            &d.step,
            StepDecision::Skip,
            d.reason,
        ),
        Command::Approve(d) => step_decision(d, StepDecision::Approve),
        Command::Abort(d) => run_decision(d, Decision::Abort),
        Command::Rollback(d) => run_decision(d, Decision::Rollback),
        Command::Export {
            run,
            output,
            journal,
        } => commands::support::export(&journal.workspace(), &run, output),
        Command::Import { file, journal } => commands::support::import(&journal.workspace(), &file),
        Command::Replay {
            source,
            at,
            explain,
            json,
            journal,
        } => commands::support::replay(&journal.workspace(), &source, at, explain, json),
        Command::Report {
            source,
            output,
            preflight,
            journal,
        } => {
            commands::support::report(&journal.workspace(), &source, &output, preflight.as_deref())
        }
        Command::Diff {
            a,
            b,
            json,
            journal,
        } => commands::support::diff(&journal.workspace(), &a, &b, json),
    }
}

fn step_decision(d: DecisionArgs, what: StepDecision) -> Result<u8> {
    commands::decisions::step(&d.journal.workspace(), &d.run, &d.step, what, d.reason)
}

fn run_decision(d: RunDecisionArgs, decision: Decision) -> Result<u8> {
    commands::decisions::whole_run(
        &d.journal.workspace(),
        &d.run,
        decision,
        d.reason,
        d.concurrency,
    )
}
