//! Reboots: register upshift to resume a run at boot, reboot, and
//! unregister after the boot.
//!
//! - **Windows**: a scheduled task that runs at startup as SYSTEM
//!   (`schtasks /Create /SC ONSTART /RU SYSTEM`), and `shutdown /r`.
//! - **Elsewhere**: a systemd unit `upshift-resume-<run>.service`, enabled
//!   for `multi-user.target`, and `systemctl reboot`. The unit folder and
//!   the `systemctl` program can be moved with `UPSHIFT_SYSTEMD_DIR` and
//!   `UPSHIFT_SYSTEMCTL` (tests and the demo use a stand-in; these machines
//!   run no systemd).

use std::path::{Path, PathBuf};
use std::process::Command;

use upshift_journal::RunId;

/// Where the boot task goes, when not where the OS keeps them (tests and
/// the demo point these at a stand-in). Unset fields fall back to the
/// environment (`UPSHIFT_SYSTEMCTL`, `UPSHIFT_SYSTEMD_DIR`), then the OS.
#[derive(Debug, Clone, Default)]
pub struct BootOverrides {
    /// The systemctl program.
    pub systemctl: Option<String>,
    /// The folder for the unit file.
    pub unit_dir: Option<PathBuf>,
}

/// The name of the boot task of a run.
pub fn task_name(run: RunId) -> String {
    format!("upshift-resume-{run}")
}

fn run_cmd(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(not(windows))]
fn systemctl(o: &BootOverrides) -> String {
    o.systemctl
        .clone()
        .or_else(|| std::env::var("UPSHIFT_SYSTEMCTL").ok())
        .unwrap_or_else(|| "systemctl".into())
}

#[cfg(not(windows))]
fn unit_path(run: RunId, o: &BootOverrides) -> PathBuf {
    let dir = o
        .unit_dir
        .clone()
        .or_else(|| std::env::var_os("UPSHIFT_SYSTEMD_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/etc/systemd/system"));
    dir.join(format!("{}.service", task_name(run)))
}

/// Registers `exe resume RUN --journal DIR` to run at the next boot.
/// Returns what was done, in words.
pub fn register(
    run: RunId,
    journal_dir: &Path,
    exe: &Path,
    o: &BootOverrides,
) -> Result<String, String> {
    #[cfg(windows)]
    {
        let _ = o;
        let name = task_name(run);
        let tr = format!(
            "\"{}\" resume {run} --journal \"{}\"",
            exe.display(),
            journal_dir.display()
        );
        run_cmd(
            "schtasks",
            &[
                "/Create", "/TN", &name, "/SC", "ONSTART", "/RU", "SYSTEM", "/RL", "HIGHEST", "/F",
                "/TR", &tr,
            ],
        )?;
        Ok(format!(
            "scheduled task {name} resumes the run at startup (as SYSTEM)"
        ))
    }
    #[cfg(not(windows))]
    {
        let path = unit_path(run, o);
        let unit = format!(
            "# Written by upshift: resumes run {run} after the reboot it asked for.\n\
             # upshift removes it when the run resumes.\n\
             [Unit]\n\
             Description=upshift: resume run {run} after reboot\n\
             After=network-online.target\n\
             Wants=network-online.target\n\n\
             [Service]\n\
             Type=oneshot\n\
             ExecStart=\"{}\" resume {run} --journal \"{}\"\n\n\
             [Install]\n\
             WantedBy=multi-user.target\n",
            exe.display(),
            journal_dir.display()
        );
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(&path, unit).map_err(|e| format!("{}: {e}", path.display()))?;
        let name = format!("{}.service", task_name(run));
        run_cmd(&systemctl(o), &["daemon-reload"])?;
        run_cmd(&systemctl(o), &["enable", &name])?;
        Ok(format!(
            "systemd unit {} resumes the run at boot",
            path.display()
        ))
    }
}

/// Removes the boot task of a run, if there is one. Returns what was done.
pub fn unregister(run: RunId, o: &BootOverrides) -> Result<Option<String>, String> {
    #[cfg(windows)]
    {
        let _ = o;
        let name = task_name(run);
        if run_cmd("schtasks", &["/Query", "/TN", &name]).is_err() {
            return Ok(None);
        }
        run_cmd("schtasks", &["/Delete", "/TN", &name, "/F"])?;
        Ok(Some(format!("removed scheduled task {name}")))
    }
    #[cfg(not(windows))]
    {
        let path = unit_path(run, o);
        if !path.exists() {
            return Ok(None);
        }
        let name = format!("{}.service", task_name(run));
        // Disable first; a failure here must not keep the unit behind.
        let disabled = run_cmd(&systemctl(o), &["disable", &name]);
        std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let _ = run_cmd(&systemctl(o), &["daemon-reload"]);
        disabled?;
        Ok(Some(format!("removed systemd unit {}", path.display())))
    }
}

/// Asks the OS to reboot now (Windows: in 30 s, with a message).
pub fn reboot_now(step: &str, o: &BootOverrides) -> Result<String, String> {
    #[cfg(windows)]
    {
        let _ = o;
        let comment = format!("upshift: step {step} requires a reboot; the run resumes at startup");
        run_cmd("shutdown", &["/r", "/t", "30", "/c", &comment])?;
        Ok("shutdown /r /t 30".into())
    }
    #[cfg(not(windows))]
    {
        let _ = step;
        run_cmd(&systemctl(o), &["reboot"])?;
        Ok(format!("{} reboot", systemctl(o)))
    }
}
