//! Issue 14, items 5, 8, 9 and 10, through the binary: messages that can be
//! pasted (`--journal DIR` whenever the journal is not the default one),
//! unknown runs that name the journal and create nothing, a demo run that
//! keeps every effect in its folder, a full journal disk said in words,
//! and the small things (abort says aborted, `skip --help`, `--crash-at`
//! beyond the run, `replay --explain` before a manual step).

#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::{Ran, Sandbox, bin};

/// A command with no `UPSHIFT_JOURNAL` and a private HOME/XDG, so that the
/// OS default journal lives in `home` and nothing reaches the real one.
fn bare(home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .env_remove("UPSHIFT_JOURNAL")
        .env_remove("UPSHIFT_SYSTEMD_DIR")
        .env_remove("UPSHIFT_SYSTEMCTL")
        .env_remove("UPSHIFT_FAILPOINT_CRASH_AFTER")
        .env_remove("RUST_LOG")
        .env("HOME", home)
        .env("XDG_STATE_HOME", home.join("xdg-state"))
        .env("XDG_CONFIG_HOME", home.join("xdg-config"))
        .env("XDG_DATA_HOME", home.join("xdg-data"))
        .env("XDG_RUNTIME_DIR", home.join("xdg-runtime"))
        .stdin(Stdio::null());
    c
}

fn ran(mut c: Command) -> Ran {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    ran_child(c.spawn().expect("spawn upshift"))
}

fn ran_child(c: std::process::Child) -> Ran {
    let out = c.wait_with_output().expect("wait for upshift");
    Ran {
        code: out.status.code(),
        signal: std::os::unix::process::ExitStatusExt::signal(&out.status),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Every file under `dir` (relative paths).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

const MANUAL_AND_FAIL: &str = r#"
name = "paste"
[steps.first]
kind = "process"
with = { program = "true" }
[steps.bind]
kind = "manual"
needs = ["first"]
with = { instructions = "bind the certificate in IIS Manager, then approve" }
[steps.after]
kind = "process"
needs = ["bind"]
with = { program = "sh", args = ["-c", "[ -e @M@/fixed ] || { echo broken >&2; exit 4; }"] }
"#;

#[test]
fn every_pause_and_failure_prints_the_command_with_its_journal() {
    let sb = Sandbox::new();
    let home = sb.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let plan = sb.plan("p.toml", MANUAL_AND_FAIL);
    let j = sb.path().join("my journal");
    let js = j.to_str().unwrap();
    let quoted = format!("--journal \"{js}\"");
    let r = ran(bare(
        &home,
        &["run", plan.to_str().unwrap(), "--journal", js],
    ));
    r.expect(3);
    let run = r.run_id();
    assert!(
        r.stderr
            .contains(&format!("`upshift approve {run} bind {quoted}`")),
        "the pause names the journal:\n{}",
        r.stderr
    );
    // `status` says the same, ready to paste.
    let st = ran(bare(&home, &["status", &run, "--journal", js]));
    st.expect(0);
    assert!(
        st.stdout
            .contains(&format!("`upshift approve {run} bind {quoted}`")),
        "{}",
        st.stdout
    );
    let a = ran(bare(&home, &["approve", &run, "bind", "--journal", js]));
    a.expect(0);
    assert!(
        a.stderr.contains(&format!("upshift resume {run} {quoted}")),
        "{}",
        a.stderr
    );
    let r = ran(bare(&home, &["resume", &run, "--journal", js]));
    r.expect(3);
    for cmd in [
        format!("`upshift retry {run} after {quoted}`"),
        format!("`upshift rollback {run} {quoted}`"),
        format!("`upshift abort {run} {quoted}`"),
    ] {
        assert!(r.stderr.contains(&cmd), "{cmd} missing:\n{}", r.stderr);
    }
    // The default journal gets no --journal (and nothing was created there).
    assert!(
        !home.join("xdg-state/upshift").exists(),
        "the default journal was created"
    );
    std::fs::write(sb.markers().join("fixed"), "").unwrap();
    ran(bare(&home, &["retry", &run, "after", "--journal", js])).expect(0);
    ran(bare(&home, &["resume", &run, "--journal", js])).expect(0);
}

#[test]
fn the_default_journal_needs_no_flag_and_an_unknown_run_creates_nothing() {
    let sb = Sandbox::new();
    let home = sb.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let default = home.join("xdg-state/upshift");
    // An unknown run in the default journal: named, nothing created.
    for args in [
        vec!["resume", "0190a1b2-dead"],
        vec!["approve", "0190a1b2-dead", "bind"],
        vec!["abort", "0190a1b2-dead"],
        vec!["status", "0190a1b2-dead"],
        vec!["drift", "0190a1b2-dead"],
    ] {
        let r = ran(bare(&home, &args));
        r.expect(2);
        assert!(
            r.stderr.contains(&default.display().to_string()),
            "{args:?} does not name the journal it looked in:\n{}",
            r.stderr
        );
        assert!(
            !default.exists(),
            "{args:?} created an empty default journal"
        );
    }
    // A run in the default journal: its pause needs no --journal.
    let plan = sb.plan("p.toml", MANUAL_AND_FAIL);
    let r = ran(bare(&home, &["run", plan.to_str().unwrap()]));
    r.expect(3);
    let run = r.run_id();
    assert!(
        r.stderr.contains(&format!("`upshift approve {run} bind`")),
        "{}",
        r.stderr
    );
    // An unknown run in an existing journal names it too.
    let r = ran(bare(&home, &["approve", "0190a1b2-dead", "bind"]));
    r.expect(2);
    assert!(
        r.stderr.contains("no run 0190a1b2-dead in the journal")
            && r.stderr.contains(&default.display().to_string()),
        "{}",
        r.stderr
    );
}

#[test]
fn abort_says_aborted_and_skip_requires_its_reason() {
    let sb = Sandbox::new();
    let plan = sb.plan("p.toml", MANUAL_AND_FAIL);
    let r = sb.run(&["run", plan.to_str().unwrap()]);
    r.expect(3);
    let run = r.run_id();
    sb.run(&["abort", &run, "--reason", "test"]).expect(1);
    let st = sb.run(&["status", &run]);
    assert!(st.stdout.contains("state aborted"), "{}", st.stdout);
    assert_eq!(sb.status(&run)["state"], "aborted");
    let help = sb.run(&["skip", "--help"]);
    help.expect(0);
    assert!(!help.stdout.contains("[default: \"\"]"), "{}", help.stdout);
    assert!(help.stdout.contains("--reason <REASON>"), "{}", help.stdout);
    let r = sb.run(&["skip", &run, "bind"]);
    r.expect(2);
    assert!(r.stderr.contains("--reason"), "{}", r.stderr);
}

#[test]
fn replay_explain_stops_at_a_manual_step_nobody_approved() {
    let sb = Sandbox::new();
    let plan = sb.plan(
        "p.toml",
        r#"
name = "explain"
[steps.first]
kind = "process"
with = { program = "true" }
[steps.bind]
kind = "manual"
needs = ["first"]
with = { instructions = "bind it" }
[steps.after]
kind = "process"
needs = ["bind"]
with = { program = "true" }
"#,
    );
    // Killed right after `first` started: resume would run it again, then
    // reach the manual step.
    let r = sb.run_env(
        &["run", plan.to_str().unwrap()],
        &[("UPSHIFT_FAILPOINT_CRASH_AFTER", "2")],
    );
    assert!(r.code != Some(0), "{r:?}");
    let run = r.run_id();
    let ex = sb.run(&["replay", &run, "--explain"]);
    ex.expect(0);
    assert!(
        !ex.stdout.contains("ends succeeded"),
        "a manual step is still ahead:\n{}",
        ex.stdout
    );
    assert!(ex.stdout.contains("bind"), "{}", ex.stdout);
    assert!(
        ex.stdout.contains("waiting for an operator"),
        "{}",
        ex.stdout
    );
}

// ---------------------------------------------------------------------------
// The demo (items 8 and 10).

#[cfg(feature = "demo")]
use crate::support::StopStandins;

#[cfg(feature = "demo")]
fn unit_name(run: &str) -> String {
    format!("upshift-resume-{run}.service")
}

/// After `demo --crash-at`, the plain `upshift resume` (no demo process, no
/// overrides in the environment) reaches the ICH reboot: its boot task goes
/// into the demo folder, never into /etc/systemd/system, and nothing is
/// written outside the demo folder.
#[cfg(feature = "demo")]
#[test]
fn a_resumed_demo_keeps_every_effect_in_its_folder() {
    let sb = Sandbox::new();
    let home = sb.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let dir = sb.path().join("site");
    let _stop = StopStandins(dir.clone());
    let crashed = ran(bare(
        &home,
        &["demo", "--dir", dir.to_str().unwrap(), "--crash-at", "30"],
    ));
    assert!(crashed.signal.is_some(), "{crashed:?}");
    let run = crashed.run_id();
    let j = dir.join("journal");
    let js = j.to_str().unwrap();
    assert!(
        crashed
            .stderr
            .contains(&format!("upshift resume {run} --journal {js}")),
        "{}",
        crashed.stderr
    );
    assert!(
        crashed.stderr.contains("standins.stop"),
        "says how the stand-ins stop: {}",
        crashed.stderr
    );
    let etc = Path::new("/etc/systemd/system").join(unit_name(&run));
    let mut saw_reboot = false;
    let mut last = None;
    for _ in 0..12 {
        let r = ran(bare(&home, &["resume", &run, "--journal", js]));
        // Cleaned up at once if it ever lands there, then failed on.
        if etc.exists() {
            let _ = std::fs::remove_file(&etc);
            panic!("a demo run wrote {}", etc.display());
        }
        if r.code == Some(0) {
            last = Some(r);
            break;
        }
        r.expect(3);
        if r.stderr.contains("requires a reboot") {
            saw_reboot = true;
            assert!(
                dir.join("systemd").join(unit_name(&run)).exists(),
                "the boot task is in the demo folder: {}",
                r.stderr
            );
            assert!(!r.stderr.contains("could NOT register"), "{}", r.stderr);
        }
        let waiting: std::collections::BTreeSet<String> = r
            .stderr
            .split("`upshift approve ")
            .skip(1)
            .filter_map(|rest| {
                rest.split('`')
                    .next()?
                    .split_whitespace()
                    .nth(1)
                    .map(str::to_string)
            })
            .collect();
        for step in waiting {
            if step == "db_updater" {
                // The admin runs the Updater (its stand-in) before approving.
                let out = Command::new(dir.join("bin/DataBaseUpdater-standin"))
                    .env("HOME", &home)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{out:?}");
            }
            ran(bare(&home, &["approve", &run, &step, "--journal", js])).expect(0);
        }
    }
    assert!(saw_reboot, "the resumed demo never reached the reboot");
    assert!(last.is_some(), "the resumed demo did not finish");
    let calls = std::fs::read_to_string(dir.join("bin/systemctl-boot.calls")).unwrap_or_default();
    assert!(
        calls.contains(&format!("enable {}", unit_name(&run))),
        "the demo's stand-in systemctl registered the task: {calls}"
    );
    assert!(
        !dir.join("systemd").join(unit_name(&run)).exists(),
        "removed after the reboot"
    );
    // Nothing in HOME or the XDG folders (no default journal, no log).
    assert_eq!(files_under(&home), Vec::<PathBuf>::new());
    // The run succeeded: the stand-ins were told to stop.
    assert!(
        dir.join("standins.stop").exists(),
        "a finished demo run stops its stand-ins"
    );
}

/// `--crash-at` beyond the run's events says so at the end.
#[cfg(feature = "demo")]
#[test]
fn a_crash_point_beyond_the_run_is_reported() {
    let sb = Sandbox::new();
    let dir = sb.path().join("site");
    let _stop = StopStandins(dir.clone());
    let r = sb.run(&["demo", "--dir", dir.to_str().unwrap(), "--crash-at", "9999"]);
    r.expect(0);
    let run = r.run_id();
    assert!(
        r.stderr.contains("--crash-at 9999 did not crash"),
        "{}",
        r.stderr
    );
    // Each count line once, and an approval is not a second attempt.
    let counts: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("ich_cleanup") && l.trim_end().ends_with(": 30/30"))
        .collect();
    assert_eq!(counts.len(), 1, "{counts:?}\n{}", r.stderr);
    assert!(r.stderr.contains(" (approved)"), "{}", r.stderr);
    for l in r.stderr.lines().filter(|l| l.contains("(attempt 2)")) {
        let step = l
            .trim_start_matches("▶ ")
            .split_whitespace()
            .next()
            .unwrap();
        assert!(
            !r.stderr.contains(&format!(
                "operator; the demo approves it as one would:\n  upshift approve {run} {step} "
            )),
            "an approval shows as a second attempt: {l}"
        );
    }
}

// ---------------------------------------------------------------------------
// A full journal disk (item 9).

/// Mounts a tmpfs of `size` at `dir`; false (with a loud message) where
/// that is not permitted.
#[cfg(target_os = "linux")]
fn mount_tmpfs(dir: &Path, size: &str) -> bool {
    std::fs::create_dir_all(dir).unwrap();
    let ok = Command::new("mount")
        // mode=700: upshift refuses a journal folder others may write into.
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=700"),
            "tmpfs",
        ])
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "SKIPPED: cannot mount a tmpfs here (needs root): the disk-full message test did not run"
        );
    }
    ok
}

#[cfg(target_os = "linux")]
struct Unmount(PathBuf);
#[cfg(target_os = "linux")]
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The journal fills a 1 MiB tmpfs by itself (step outputs): the console
/// names the cause, the device's path and its free bytes, keeps the OS
/// error rather than the store's follow-up "Previous I/O error", and says
/// how to go on; with space back, the run resumes to the end.
#[cfg(target_os = "linux")]
#[test]
fn a_full_journal_disk_is_named_with_its_path_and_free_bytes() {
    let sb = Sandbox::new();
    if !mount_tmpfs(&sb.journal(), "1m") {
        return;
    }
    let _unmount = Unmount(sb.journal());
    let mut plan = String::from("name = \"fill\"\n");
    for i in 0..160 {
        plan.push_str(&format!(
            "[steps.s{i:03}]\nkind = \"process\"\nwith = {{ program = \"sh\", args = [\"-c\", \"head -c 16000 /dev/zero | tr '\\\\0' {}; echo {i} >> @M@/done\"] }}\n",
            (b'a' + (i % 26) as u8) as char
        ));
    }
    let plan = sb.plan("fill.toml", &plan);
    let r = sb.run(&["run", plan.to_str().unwrap()]);
    r.expect(1);
    let run = r.run_id();
    let journal = sb.journal().display().to_string();
    assert!(
        r.stderr
            .contains("no space left on the device holding the journal"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains(&journal), "{}", r.stderr);
    assert!(r.stderr.contains("bytes free"), "{}", r.stderr);
    assert!(
        r.stderr.contains("No space left on device"),
        "the OS error is kept: {}",
        r.stderr
    );
    assert!(!r.stderr.contains("Previous I/O"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("upshift resume {run} --journal {journal}")),
        "{}",
        r.stderr
    );
    // Space comes back: the run resumes to the end.
    assert!(
        Command::new("mount")
            .args(["-o", "remount,size=16m"])
            .arg(sb.journal())
            .status()
            .unwrap()
            .success()
    );
    sb.run(&["resume", &run]).expect(0);
    assert_eq!(sb.status(&run)["state"], "succeeded");
}

// ---------------------------------------------------------------------------
// The live view at 50 steps (item 6).

/// 53 steps: 50 quick ones (two with names alike for their first 30
/// characters), a counting step that runs a while, and a manual step with
/// instructions.
fn fifty_step_plan(sb: &Sandbox) -> PathBuf {
    let mut p = String::from("name = \"fifty\"\n");
    for i in 0..48 {
        p.push_str(&format!(
            "[steps.step_{i:02}]\nkind = \"process\"\nwith = {{ program = \"true\" }}\n"
        ));
    }
    p.push_str(
        r#"[steps.db_push_reporting_procedures_and_views]
kind = "process"
with = { program = "true" }
[steps.db_push_reporting_procedures_and_views_again]
kind = "process"
with = { program = "true" }
[steps.ich_cleanup_of_conferences_on_the_farm]
kind = "foreach"
needs = ["step_00"]
with = { items = ["a", "b", "c", "d", "e", "f", "g", "h"], program = "sh", args = ["-c", "[ ${item} = a ] || [ -e @M@/go ] || sleep 30"] }
[steps.fe_bind_https_certificate_in_iis_manager]
kind = "manual"
needs = ["step_01"]
with = { instructions = "bind the certificate 3A7F to the FE site (port 443) in IIS Manager,\nthen approve" }
[steps.after_everything]
kind = "process"
needs = ["ich_cleanup_of_conferences_on_the_farm", "fe_bind_https_certificate_in_iis_manager"]
with = { program = "true" }
"#,
    );
    sb.plan("fifty.toml", &p)
}

#[cfg(target_os = "linux")]
#[test]
fn status_follow_on_a_terminal_shows_what_runs_and_waits_at_fifty_steps() {
    let Some(script) = crate::support::script_or_skip("the terminal view") else {
        return;
    };
    let sb = Sandbox::new();
    let plan = fifty_step_plan(&sb);
    let (mut engine, run) = sb.spawn_run(&plan);
    assert!(sb.wait_for_step(&run, "fe_bind_https_certificate_in_iis_manager", "waiting"));
    let mut term = sb.follow_on_a_terminal(script, &run, 200, 60);
    let text = || term.text();
    let journal = sb.journal().display().to_string();
    let approve = format!(
        "approve: upshift approve {run} fe_bind_https_certificate_in_iis_manager --journal {journal}"
    );
    let drawn = crate::support::wait_until(std::time::Duration::from_secs(30), || {
        let t = text();
        t.contains(&approve) && t.contains("left (estimated)")
    });
    let _ = std::fs::write(sb.markers().join("go"), "");
    let t = text();
    let _ = term.child.kill();
    let _ = term.child.wait();
    let _ = engine.kill();
    let _ = engine.wait();
    if let Ok(p) = std::env::var("UPSHIFT_TEST_SCREEN") {
        let _ = std::fs::write(p, &t);
    }
    assert!(drawn, "the view lacks the approve command or the ETA:\n{t}");
    for want in [
        // Full names, never cut.
        "ich_cleanup_of_conferences_on_the_farm",
        "fe_bind_https_certificate_in_iis_manager",
        // The instructions, whole.
        "bind the certificate 3A7F to the FE site (port 443) in IIS Manager,",
        "then approve",
        // The rest in one line.
        "the other steps: ",
        " succeeded",
        "of 53 steps done",
    ] {
        assert!(t.contains(want), "{want:?} missing from the view:\n{t}");
    }
    // No bar for each of the 53 steps: the finished ones are one line.
    assert!(
        !t.contains("step_17 "),
        "a finished step has a line of its own:\n{t}"
    );
}

/// Without a terminal: changes only (no line per pending step), the run's
/// own pause, and the waiting step's instructions and approve command.
#[test]
fn status_follow_without_a_terminal_prints_changes_and_the_pause() {
    let sb = Sandbox::new();
    let plan = fifty_step_plan(&sb);
    // step_00 waits for the follower to be there.
    let text = std::fs::read_to_string(&plan).unwrap().replacen(
        "[steps.step_00]\nkind = \"process\"\nwith = { program = \"true\" }",
        &format!(
            "[steps.step_00]\nkind = \"process\"\nwith = {{ program = \"sh\", args = [\"-c\", \"while [ ! -e {0}/start ]; do sleep 0.05; done\"] }}",
            sb.markers().display()
        ),
        1,
    );
    assert!(text.contains("/start ]"));
    std::fs::write(&plan, text).unwrap();
    std::fs::write(sb.markers().join("go"), "").unwrap();
    let (mut engine, run) = sb.spawn_run(&plan);
    let follower = sb
        .cmd(&["status", &run, "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    std::fs::write(sb.markers().join("start"), "").unwrap();
    let f = ran_child(follower);
    let _ = engine.wait();
    f.expect(3);
    let journal = sb.journal().display().to_string();
    assert!(
        f.stderr.contains(&format!(
            "approve: upshift approve {run} fe_bind_https_certificate_in_iis_manager --journal {journal}"
        )),
        "{}",
        f.stderr
    );
    assert!(f.stderr.contains("run paused: "), "{}", f.stderr);
    assert!(
        !f.stderr.contains("step_30 pending"),
        "pending steps are not changes:\n{}",
        f.stderr
    );
}

// ---------------------------------------------------------------------------
// Values shown whole, and a graph that fits the page (item 7).

/// Headless Chromium, if installed.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .flat_map(|name| dirs.iter().map(move |d| d.join(name)))
        .find(|p| p.is_file())
}

/// `log` and the report show a long path and a long error whole; the
/// report's graph of 53 steps fits a 1280-pixel page in headless Chromium.
#[test]
fn long_values_are_whole_and_the_graph_of_53_steps_fits_the_page() {
    let sb = Sandbox::new();
    let plan = fifty_step_plan(&sb);
    // A long output value (an msiexec log path) and a long error line.
    let long_path = format!(
        "C:\\ProgramData\\upshift\\work\\{}\\msiexec-ich_install-df226a0c9e5b4f7f8a1d2c3b4a5f6e7d.log",
        "0".repeat(36)
    );
    let long_error = format!("the installer said: {}: end of the error", "x".repeat(300));
    let text = std::fs::read_to_string(&plan).unwrap()
        + &format!(
            "[steps.with_a_long_output]\nkind = \"process\"\nwith = {{ program = \"printf\", args = [\"%s\", '{long_path}'] }}\n[steps.with_a_long_error]\nkind = \"process\"\nneeds = [\"with_a_long_output\"]\nwith = {{ program = \"sh\", args = [\"-c\", \"echo '{long_error}' >&2; exit 7\"] }}\n"
        );
    std::fs::write(&plan, text).unwrap();
    std::fs::write(sb.markers().join("go"), "").unwrap();
    let r = sb.run(&["run", plan.to_str().unwrap()]);
    r.expect(3);
    let run = r.run_id();
    let log = sb.run(&["log", &run]);
    log.expect(0);
    assert!(
        log.stdout.contains(&long_path),
        "log cut the path:\n{}",
        log.stdout
    );
    assert!(
        log.stdout.contains("end of the error"),
        "log cut the error:\n{}",
        log.stdout
    );
    let st = sb.run(&["status", &run]);
    assert!(st.stdout.contains("end of the error"), "{}", st.stdout);
    let html = sb.path().join("report.html");
    sb.run(&["report", &run, "-o", html.to_str().unwrap()])
        .expect(0);
    let page = std::fs::read_to_string(&html).unwrap();
    if let Ok(p) = std::env::var("UPSHIFT_TEST_REPORT") {
        let _ = std::fs::write(p, &page);
    }
    assert!(
        page.contains(&long_path.replace('\\', "\\\\")) || page.contains(&long_path),
        "the report cut the path"
    );
    let Some(chrome) = chromium() else {
        eprintln!(
            "SKIPPED: chromium is not installed (apt-get install -y chromium): the graph's width was not measured in a browser"
        );
        return;
    };
    // Measure in the page: the graph's box against the page's width.
    let probe = sb.path().join("probe.html");
    std::fs::write(
        &probe,
        page.replace(
            "</body>",
            "<script>(function(){var g=document.getElementById('dag').getBoundingClientRect();var e=document.documentElement;var n=document.querySelectorAll('#dag g.node').length;var wide=[];Array.prototype.forEach.call(document.querySelectorAll('body *'),function(x){var r=x.getBoundingClientRect();if(r.right>e.clientWidth+1&&wide.length<5)wide.push(x.tagName+'.'+x.className+'#'+x.id+'='+Math.round(r.right));});document.body.setAttribute('data-probe',[Math.round(g.left),Math.round(g.right),e.clientWidth,e.scrollWidth,n].join(' '));document.body.setAttribute('data-wide',wide.join(','));})();</script></body>",
        ),
    )
    .unwrap();
    let profile = sb.path().join("chrome-profile");
    let mut c = Command::new(&chrome)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1280,900",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("file://{}", probe.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut dom = String::new();
    std::io::Read::read_to_string(c.stdout.as_mut().unwrap(), &mut dom).unwrap();
    let _ = c.wait();
    let probe = dom
        .split("data-probe=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("the probe did not run:\n{}", &dom[..dom.len().min(2000)]));
    let v: Vec<i64> = probe
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    let (left, right, client, scroll, nodes) = (v[0], v[1], v[2], v[3], v[4]);
    assert_eq!(nodes, 55, "every step is a node: {probe}");
    assert!(
        left >= 0 && right <= client,
        "the graph runs off the page: left {left}, right {right}, page {client}"
    );
    assert!(
        scroll <= client,
        "the page scrolls sideways: {scroll} > {client}; too wide: {}",
        dom.split("data-wide=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("")
    );
    assert!(
        dom.contains(">ich_cleanup_of_conferences_on_the_farm</text>"),
        "a long step name is shown whole"
    );
}

/// The dry run of the TM plan with the example site: the backup file
/// shows `<run id>` as such, and a Windows path put together from a
/// reference keeps one separator.
#[test]
fn the_dry_run_shows_backup_names_and_windows_paths_as_they_will_be() {
    let sb = Sandbox::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let r = sb.run(&[
        "run",
        root.join("plans/teammanager.toml").to_str().unwrap(),
        "--site",
        root.join("plans/sites/example.toml").to_str().unwrap(),
        "--dry-run",
    ]);
    r.expect(0);
    assert!(r.stdout.contains("_<run id>.bak"), "{}", r.stdout);
    assert!(!r.stdout.contains("_run id_"), "{}", r.stdout);
    // Each drive path (`X:\...`) up to a quote, the line's end or a ` /switch`.
    for line in r.stdout.lines() {
        let b = line.as_bytes();
        for i in 1..b.len().saturating_sub(1) {
            if b[i] == b':' && b[i + 1] == b'\\' && b[i - 1].is_ascii_alphabetic() {
                let rest = &line[i - 1..];
                let end = rest
                    .find(['"', '\''])
                    .into_iter()
                    .chain(rest.find(" /"))
                    .min()
                    .unwrap_or(rest.len());
                let path = &rest[..end];
                assert!(
                    !path.contains('/'),
                    "a Windows path mixes separators: {path}\n  in: {line}"
                );
            }
        }
    }
}
