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

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use wait_timeout::ChildExt;

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

/// How long one OS tool of the reboot path may take before it is killed
/// (`schtasks`, `shutdown`, `systemctl`: each answers in well under a
/// second when the system is healthy).
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

fn run_cmd(program: &str, args: &[&str]) -> Result<String, String> {
    run_cmd_within(program, args, TOOL_TIMEOUT)
}

/// Runs `program args`, its output read in full; killed (with an error
/// saying so) if it has not ended within `limit`. Success is the exit
/// code alone: the tools' text is localized on Windows and never parsed.
fn run_cmd_within(program: &str, args: &[&str], limit: Duration) -> Result<String, String> {
    let shown = || format!("`{program} {}`", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            let _ = tx.send(String::from_utf8_lossy(&buf).trim().to_string());
        });
        rx
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = match child.wait_timeout(limit) {
        Ok(Some(status)) => status,
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{} did not finish within {} and was stopped",
                shown(),
                crate::report::duration_text(limit)
            ));
        }
        Err(e) => return Err(format!("{}: cannot wait for it: {e}", shown())),
    };
    // A grandchild still holding the pipes open must not hold us either:
    // what has not arrived a moment after the exit is left behind.
    let take = |rx: std::sync::mpsc::Receiver<String>| {
        rx.recv_timeout(Duration::from_secs(2)).unwrap_or_default()
    };
    let (out, err) = (take(out), take(err));
    if status.success() {
        Ok(out)
    } else {
        Err(format!("{} failed ({status}): {err}", shown()))
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

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_tool_that_hangs_is_stopped_and_named() {
        let t0 = std::time::Instant::now();
        let e = run_cmd_within("sleep", &["30"], Duration::from_millis(300)).unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert!(
            e.contains("`sleep 30` did not finish within 300 ms and was stopped"),
            "{e}"
        );
    }

    #[test]
    fn success_and_failure_are_the_exit_code() {
        assert_eq!(run_cmd("sh", &["-c", "echo done"]).unwrap(), "done");
        let e = run_cmd("sh", &["-c", "echo nope >&2; exit 3"]).unwrap_err();
        assert!(e.contains("failed") && e.contains("nope"), "{e}");
    }

    #[test]
    fn a_grandchild_holding_the_pipes_does_not_hold_the_caller() {
        let t0 = std::time::Instant::now();
        let out = run_cmd("sh", &["-c", "sleep 20 & echo started"]).unwrap();
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        assert_eq!(out, "");
    }
}
