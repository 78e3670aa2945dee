//! `upshift demo` and its stand-ins process: what the demo says while it
//! builds the simulated site and plays the operator, and the `--crash-at`
//! observer that kills it like a power cut.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use upshift_journal::{Envelope, Outcome};

use crate::app::Workspace;
use crate::app::next;
use crate::app::run::Session;
use crate::demo::{self, Note};
use crate::engine::{Exit, Observer};
use crate::error::{Result, code};
use crate::state::RunState;
use crate::ui::Ui;

/// Options of `upshift demo`.
pub struct DemoArgs {
    /// Folder for the simulated site (default: a new temporary folder).
    pub dir: Option<PathBuf>,
    /// Crash right after this event.
    pub crash_at: Option<u64>,
    /// Leave the run paused when this step waits.
    pub stop_at: Option<String>,
    /// Echo step output.
    pub show_output: bool,
}

/// Kills the demo right after event `n` is durable (`--crash-at`).
struct CrashAt {
    inner: Ui,
    n: u64,
    journal: PathBuf,
    dir: PathBuf,
}

impl Observer for CrashAt {
    fn event(&self, env: &Envelope, state: &RunState) {
        self.inner.event(env, state);
        if env.seq + 1 >= self.n {
            self.inner.flush();
            let j = &self.journal;
            let run = env.run;
            eprintln!(
                "\ndemo: crashing on purpose right after event {} ({}) — like a power cut, no cleanup runs.\n  The stand-ins keep running (they stop when a resume finishes the run, after 30 idle\n  minutes, or when {} exists). Continue with:\n    {}\n  It may pause for the Database Updater (run {}/bin/DataBaseUpdater-standin, then approve\n  db_updater), for changed FE settings and for the ICH installer's reboot; each pause prints\n  the command that continues it (e.g. {}), then run the resume again.",
                env.seq + 1,
                env.event.name(),
                self.dir.join("standins.stop").display(),
                next::command(j, &format!("resume {run}")),
                self.dir.display(),
                next::command(j, &format!("approve {run} db_updater")),
            );
            #[cfg(unix)]
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::getpid(),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::process::abort();
        }
    }
    fn output(&self, step: &str, text: &str) {
        self.inner.output(step, text);
    }
    fn progress(&self, step: &str, done: u64, total: u64, message: &str) {
        self.inner.progress(step, done, total, message);
    }
    fn flush(&self) {
        self.inner.flush();
    }
}

/// `upshift demo`.
pub fn demo(args: DemoArgs) -> Result<u8> {
    let dir = demo::demo_dir(args.dir)?;
    eprintln!(
        "upshift demo — the TeamManager upgrade (plans/teammanager.toml) against a SIMULATED site in\n  {}\nStand-ins, not the real thing: msiexec, PowerShell and systemctl are shell scripts (bin/),\nSQL Server is a TDS stand-in and IIS an HTTP stand-in on 127.0.0.1. Nothing here is Windows.\n",
        dir.display()
    );
    let site = demo::build(&dir)?;
    eprintln!(
        "stand-ins (pid {}): SQL Server on 127.0.0.1:{}, IIS on 127.0.0.1:{}\n",
        site.standins.pid, site.standins.sql_port, site.standins.http_port
    );
    let plan = demo::load_plan(&site)?;
    let preflight = super::preflight::demo_preflight(&plan, &site.dir)?;
    let observer: Arc<dyn Observer> = match args.crash_at {
        Some(n) => Arc::new(CrashAt {
            inner: Ui::for_journal(args.show_output, &site.journal),
            n,
            journal: site.journal.clone(),
            dir: site.dir.clone(),
        }),
        None => Arc::new(Ui::for_journal(args.show_output, &site.journal)),
    };
    let session = Session {
        concurrency: None,
        observer,
        boot: site.boot.clone(),
    };
    let ws = Workspace::new(&site.journal);
    let (run, exit) = demo::play(
        &site,
        plan,
        &session,
        args.stop_at.as_deref(),
        &mut |note| match note {
            Note::RunStarted(run) => println!("{run}"),
            Note::Reboot { boot_dir } => eprintln!(
                "\ndemo: an installer asked for a reboot (msiexec 3010). upshift registered itself to resume\n  the run at boot ({}). A stand-in reboot happens now; the run resumes as the boot task would.\n",
                boot_dir.display()
            ),
            Note::Approving { run, step } => eprintln!(
                "\ndemo: step {step} waits for an operator; the demo approves it as one would:\n  {}\n",
                next::command(
                    &site.journal,
                    &format!("approve {run} {step} --reason \"...\"")
                )
            ),
            Note::Updater { script } => eprintln!(
                "\ndemo: the database phase waits for the Luware Database Updater. The demo plays the admin:\n  it runs the Updater's STAND-IN ({}: upshift's db.update against the SQL Server stand-in),\n  then approves the step; db_version_after reads the new version back.\n",
                script.display()
            ),
            Note::Approved { run } => super::decisions::say_journaled(run, &ws),
        },
    )?;
    if let Some(n) = args.crash_at {
        // Still here: the crash never came.
        let events = ws
            .open_reader()
            .and_then(|j| crate::app::workspace::fold_run(&j, run))
            .map(|st| st.events)
            .unwrap_or(0);
        eprintln!(
            "\ndemo: --crash-at {n} did not crash: the run journaled only {events} events (event {n} never came).\n  Give a number from 1 to {}, e.g. --crash-at {}.",
            events.saturating_sub(1).max(1),
            (events / 2).max(1)
        );
    }
    let code = match &exit {
        Exit::Finished(Outcome::Succeeded) => code::OK,
        Exit::Paused(reason) => {
            eprintln!("demo: the run paused: {reason}");
            code::PAUSED
        }
        _ => code::FAILED,
    };
    // The run's report, with the preflight section (preflight journals
    // nothing: its result is handed in).
    let report = site.dir.join("report.html");
    let section = crate::preflight::html::section(&preflight);
    let written = crate::support::load(&run.to_string(), &ws)
        .and_then(|l| {
            crate::support::report_html::render_with(
                &l,
                Some(crate::support::report_html::Section {
                    css: crate::preflight::html::SECTION_CSS,
                    html: &section,
                }),
            )
        })
        .and_then(|html| super::write_output(&report, html.as_bytes()));
    if let Err(e) = written {
        eprintln!("demo: the report could not be written: {e}");
    }
    let j = site.journal.display();
    let pf_json = site.dir.join(super::preflight::DEMO_PREFLIGHT_JSON);
    eprintln!(
        "\ndemo: run {run} {}.\n  journal: {j}\n  site:    {}\n  report:  {} (with the preflight)\nLook at it:\n  upshift status {run} --journal {j}\n  upshift log {run} --journal {j}\n  upshift report {run} --journal {j} -o report.html --preflight {}\n  upshift run {} --site {} --dry-run   (every command line, no action)\nUndo it (the previous packages come back, the database is restored):\n  upshift rollback {run} --journal {j}\nThe stand-ins keep running for that; they stop after 30 idle minutes, or now with:\n  touch {}/standins.stop",
        match &exit {
            Exit::Finished(o) => crate::report::outcome_word(*o).to_string(),
            Exit::Paused(_) => "paused".into(),
            Exit::Interrupted | Exit::Rebooting(_) => "interrupted".into(),
        },
        site.dir.display(),
        report.display(),
        pf_json.display(),
        site.plan_path.display(),
        site.site.display(),
        site.dir.display()
    );
    Ok(code)
}

/// `upshift __demo-standins DIR`.
pub fn standins(dir: &Path) -> Result<u8> {
    demo::standins_main(dir)?;
    Ok(code::OK)
}
