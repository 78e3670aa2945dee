//! `upshift demo`: the real TM plan against the simulated site, end to end,
//! and with a crash in the middle resumed by the plain `upshift resume`.

#![cfg(all(target_os = "linux", feature = "demo"))]

use crate::support::Sandbox;

/// Stops the demo's stand-ins when the test ends, and waits (bounded) until
/// they are gone: a test leaves no `upshift __demo-standins` behind.
struct StopStandins(std::path::PathBuf);
impl Drop for StopStandins {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("standins.stop"), "");
        let token = format!("__demo-standins {}", self.0.display());
        crate::support::wait_until(std::time::Duration::from_secs(10), || {
            crate::support::processes_with(&token).is_empty()
        });
    }
}

#[test]
fn a_demo_test_leaves_no_stand_ins_running() {
    let sb = Sandbox::new();
    let dir = sb.path().join("site");
    let token = format!("__demo-standins {}", dir.display());
    {
        let _stop = StopStandins(dir.clone());
        let crashed = sb.run(&["demo", "--dir", dir.to_str().unwrap(), "--crash-at", "5"]);
        assert!(crashed.signal.is_some(), "{crashed:?}");
        assert!(
            !crate::support::processes_with(&token).is_empty(),
            "the stand-ins outlive a crashed demo (for `upshift resume`)"
        );
    }
    assert!(
        crate::support::processes_with(&token).is_empty(),
        "stand-ins left running: {:?}",
        crate::support::processes_with(&token)
    );
    // Removing the folder (a test's temporary folder) stops them too.
    let dir2 = sb.path().join("site2");
    let token2 = format!("__demo-standins {}", dir2.display());
    let _stop2 = StopStandins(dir2.clone());
    let crashed = sb.run(&["demo", "--dir", dir2.to_str().unwrap(), "--crash-at", "5"]);
    assert!(crashed.signal.is_some(), "{crashed:?}");
    std::fs::remove_dir_all(&dir2).unwrap();
    assert!(
        crate::support::wait_until(std::time::Duration::from_secs(5), || {
            crate::support::processes_with(&token2).is_empty()
        }),
        "stand-ins outlive their folder"
    );
}

fn all_steps_succeeded(status: &serde_json::Value) {
    assert_eq!(status["state"], "succeeded", "{status}");
    let steps = status["steps"].as_object().unwrap();
    assert!(
        steps.len() >= 50,
        "the whole TM plan: {} steps",
        steps.len()
    );
    for (id, s) in steps {
        assert_eq!(s["state"], "succeeded", "{id}: {s}");
    }
}

#[test]
fn the_demo_runs_the_whole_tm_upgrade_against_the_stand_ins() {
    let sb = Sandbox::new();
    let dir = sb.path().join("site");
    let _stop = StopStandins(dir.clone());
    let r = sb.run(&["demo", "--dir", dir.to_str().unwrap()]);
    r.expect(0);
    assert!(
        r.stderr.contains("SIMULATED site") && r.stderr.contains("stand-in"),
        "{}",
        r.stderr
    );
    let run = r.run_id();
    let journal = dir.join("journal");
    let status = sb.run(&[
        "status",
        &run,
        "--json",
        "--journal",
        journal.to_str().unwrap(),
    ]);
    status.expect(0);
    all_steps_succeeded(&serde_json::from_str(&status.stdout).unwrap());
    // The site changed as the plan says.
    let fe = std::fs::read_to_string(dir.join("Luware AG/TM-FE/AppSettings.config")).unwrap();
    assert!(
        fe.contains("key=\"DefaultSipDomain\" value=\"contoso.com\""),
        "{fe}"
    );
    assert!(
        fe.contains("CustomerLogoUrl"),
        "the lost key was carried over: {fe}"
    );
    assert!(fe.contains("\r\n"), "CRLF kept");
    let ich =
        std::fs::read_to_string(dir.join("Luware AG/TM-ICH/TM.ICH.Service.exe.config")).unwrap();
    assert!(
        ich.contains("key=\"CleanupConferences\" value=\"false\""),
        "cleanup turned off again: {ich}"
    );
    let installed = std::fs::read_to_string(dir.join("bin/msiexec-state/installed.txt")).unwrap();
    assert_eq!(
        installed.lines().filter(|l| l.contains("\t8.0\t")).count(),
        13,
        "{installed}"
    );
    assert!(!installed.contains("\t7.2\t"), "{installed}");
    // The reboot and the manual step are in the journal.
    let log = sb.run(&["log", &run, "--journal", journal.to_str().unwrap()]);
    assert!(log.stdout.contains("reboot.requested ich_install"));
    assert!(
        log.stdout
            .contains("operator.decision approve fe_bind_https")
    );
}

#[test]
fn a_crashed_demo_is_finished_by_upshift_resume() {
    let sb = Sandbox::new();
    let dir = sb.path().join("site");
    let _stop = StopStandins(dir.clone());
    let crashed = sb.run(&["demo", "--dir", dir.to_str().unwrap(), "--crash-at", "50"]);
    assert!(
        crashed.signal.is_some() || crashed.code == Some(137),
        "{crashed:?}"
    );
    let run = crashed.run_id();
    let journal = dir.join("journal");
    let j = journal.to_str().unwrap();
    // Resume until done, approving what waits (bounded).
    let mut last = None;
    for _ in 0..6 {
        let r = sb.run(&["resume", &run, "--journal", j]);
        if r.code == Some(0) {
            last = Some(r);
            break;
        }
        r.expect(3);
        // Every step the pause names as waiting (`upshift approve RUN STEP`):
        // the FE HTTPS binding, and config.compare's changed values.
        let waiting: std::collections::BTreeSet<&str> = r
            .stderr
            .split("`upshift approve ")
            .skip(1)
            .filter_map(|rest| rest.split('`').next()?.split_whitespace().nth(1))
            .collect();
        for step in waiting {
            sb.run(&["approve", &run, step, "--journal", j]).expect(0);
        }
    }
    assert!(last.is_some(), "the run did not finish");
    let status = sb.run(&["status", &run, "--json", "--journal", j]);
    all_steps_succeeded(&serde_json::from_str(&status.stdout).unwrap());
    // Each component installed exactly once: the crash repeated nothing done.
    let calls = std::fs::read_to_string(dir.join("bin/msiexec-state/calls.log")).unwrap();
    for c in ["AC", "ICH", "FE", "API", "SMD"] {
        let n = calls
            .lines()
            .filter(|l| l.contains("/i ") && l.contains(&format!("TM-{c}.msi")))
            .count();
        assert!((1..=2).contains(&n), "{c} installed {n} times:\n{calls}");
    }
}
