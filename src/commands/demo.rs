//! `upshift demo` and its stand-ins process: what the demo says while it
//! builds the simulated site and plays the operator, and the `--crash-at`
//! observer that kills it like a power cut.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use upshift_journal::{Envelope, Outcome};

use crate::app::Workspace;
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
}

impl Observer for CrashAt {
    fn event(&self, env: &Envelope, state: &RunState) {
        self.inner.event(env, state);
        if env.seq + 1 >= self.n {
            self.inner.flush();
            eprintln!(
                "\ndemo: crashing on purpose right after event {} ({}) — like a power cut, no cleanup runs.\n  The stand-ins keep running. Continue with:\n    upshift resume --journal {}\n  (it may pause for the Database Updater — run {}/bin/DataBaseUpdater-standin, then\n  `upshift approve RUN db_updater` —, for changed FE settings — `upshift approve RUN fe_compare@web01` —\n  and for the ICH installer's reboot; run `upshift resume --journal ...` again after each)",
                env.seq + 1,
                env.event.name(),
                self.journal.display(),
                self.journal.parent().unwrap_or(&self.journal).display()
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
    super::preflight::demo_preflight(&plan, &site.dir)?;
    let observer: Arc<dyn Observer> = match args.crash_at {
        Some(n) => Arc::new(CrashAt {
            inner: Ui::new(args.show_output),
            n,
            journal: site.journal.clone(),
        }),
        None => Arc::new(Ui::new(args.show_output)),
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
                "\ndemo: step {step} waits for an operator; the demo approves it as one would:\n  upshift approve {run} {step} --reason \"...\"\n"
            ),
            Note::Updater { script } => eprintln!(
                "\ndemo: the database phase waits for the Luware Database Updater. The demo plays the admin:\n  it runs the Updater's STAND-IN ({}: upshift's db.update against the SQL Server stand-in),\n  then approves the step; db_version_after reads the new version back.\n",
                script.display()
            ),
            Note::Approved { run } => super::decisions::say_journaled(run, &ws),
        },
    )?;
    let code = match &exit {
        Exit::Finished(Outcome::Succeeded) => code::OK,
        Exit::Paused(reason) => {
            eprintln!("demo: the run paused: {reason}");
            code::PAUSED
        }
        _ => code::FAILED,
    };
    let j = site.journal.display();
    eprintln!(
        "\ndemo: run {run} {}.\n  journal: {j}\n  site:    {}\nLook at it:\n  upshift status {run} --journal {j}\n  upshift log {run} --journal {j}\n  upshift report {run} --journal {j} -o report.html\n  upshift run {} --site {} --dry-run   (every command line, no action)\nUndo it (the previous packages come back, the database is restored):\n  upshift rollback {run} --journal {j}\nThe stand-ins keep running for that; they stop after 30 idle minutes, or now with:\n  touch {}/standins.stop",
        match &exit {
            Exit::Finished(o) => crate::report::outcome_word(*o).to_string(),
            Exit::Paused(_) => "paused".into(),
            Exit::Interrupted | Exit::Rebooting(_) => "interrupted".into(),
        },
        site.dir.display(),
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
