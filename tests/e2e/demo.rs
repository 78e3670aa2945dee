//! `upshift demo`: the real TM plan against the simulated site, end to end,
//! and with a crash in the middle resumed by the plain `upshift resume`.

#![cfg(all(target_os = "linux", feature = "demo"))]

use crate::support::{Sandbox, StopStandins};

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
    // Preflight first (issue 15): the demo site is ready, well under 5 s.
    assert!(
        r.stderr
            .contains("preflight of \"teammanager-upgrade\": READY"),
        "{}",
        r.stderr
    );
    assert!(dir.join("preflight.html").is_file());
    // The run's report carries the preflight (which journals nothing).
    let report = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(
        report.contains(
            "<section id=\"preflight\"><h2>Preflight</h2><p class=\"pf-ready\"><b>Ready</b>"
        ),
        "the demo's report has the preflight section"
    );
    let pf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("preflight.json")).unwrap()).unwrap();
    assert_eq!(pf["ready"], true);
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
    // The reboot and the operator's decisions are in the journal: the
    // Database Updater step approved after its stand-in ran, the changed FE
    // setting, the go/no-go gate.
    let log = sb.run(&["log", &run, "--journal", journal.to_str().unwrap()]);
    assert!(log.stdout.contains("reboot.requested ich_install@tm01"));
    for step in ["db_updater", "fe_compare@web01", "acceptance"] {
        assert!(
            log.stdout
                .contains(&format!("operator.decision approve {step}")),
            "{step}: {}",
            log.stdout
        );
    }
    assert!(
        log.stdout
            .contains("current_version=8.0, decision=up_to_date"),
        "db_version_after read the Updater's work back"
    );
    assert!(
        r.stderr.contains("Database Updater") && r.stderr.contains("STAND-IN"),
        "{}",
        r.stderr
    );
    // The demo shows several hosts.
    for host in ["@tm01", "@web01", "@lync01"] {
        assert!(log.stdout.contains(host), "{host}");
    }
}

/// `upshift demo --stop-at acceptance` leaves the run at the go/no-go
/// gate; `upshift rollback` then brings every component's PREVIOUS version
/// back (the stand-in msiexec's installed-product list), stops the
/// services again before the database restore, restores the database
/// (read back through the SQL Server stand-in) and starts the old
/// services.
#[test]
fn rollback_of_the_demo_restores_the_previous_versions_and_the_database() {
    let sb = Sandbox::new();
    let dir = sb.path().join("site");
    let _stop = StopStandins(dir.clone());
    let r = sb.run(&[
        "demo",
        "--dir",
        dir.to_str().unwrap(),
        "--stop-at",
        "acceptance",
    ]);
    r.expect(3);
    let run = r.run_id();
    let j = dir.join("journal");
    let j = j.to_str().unwrap();
    let installed =
        || std::fs::read_to_string(dir.join("bin/msiexec-state/installed.txt")).unwrap();
    assert_eq!(
        installed()
            .lines()
            .filter(|l| l.contains("\t8.0\t"))
            .count(),
        13
    );
    let rb = sb.run(&["rollback", &run, "--journal", j, "--reason", "test"]);
    assert_eq!(rb.code, Some(1), "rolled back: {rb:?}");
    let status = sb.run(&["status", &run, "--json", "--journal", j]);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["state"], "rolled_back", "{status}");
    // Every component at its previous version, from the previous package.
    let now = installed();
    assert_eq!(
        now.lines().filter(|l| l.contains("\t7.2\t")).count(),
        13,
        "{now}"
    );
    assert!(!now.contains("\t8.0\t"), "{now}");
    assert!(now.lines().all(|l| l.contains("packages-7.2/TM-")), "{now}");
    // Order: every service held stopped again before the restore; the
    // services of the old version started after it.
    let log = sb.run(&["log", &run, "--journal", j]).stdout;
    let pos = |needle: &str| {
        log.find(needle)
            .unwrap_or_else(|| panic!("no `{needle}` in:\n{log}"))
    };
    let restore = pos("compensation.started db_backup");
    for c in ["ac", "ich", "smd", "ps", "fe", "api"] {
        let host = match c {
            "smd" => "lync01",
            "fe" | "api" => "web01",
            _ => "tm01",
        };
        assert!(
            pos(&format!("compensation.succeeded {c}_hold@{host}")) < restore,
            "{c} stopped before the restore"
        );
        assert!(
            pos(&format!("compensation.succeeded {c}_uninstall@{host}")) < restore,
            "{c}'s previous version back before the restore"
        );
    }
    assert!(pos("compensation.succeeded db_backup") < pos("compensation.succeeded ich_stop@tm01"));
    let units = dir.join("bin/systemctl-state");
    let active = std::fs::read_to_string(units.join("tm-ich.active")).unwrap();
    assert_eq!(active.trim(), "active", "the old ICH runs again");
    // The database is back at the version before the update (7.0 in the
    // stand-in): read through the SQL Server stand-in with db.check.
    let standins: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("standins.json")).unwrap()).unwrap();
    let check = sb.plan(
        "db-version.toml",
        &format!(
            r#"
name = "db-version"
[secrets]
pw = {{ file = "{secret}" }}
[targets.tm]
host = "127.0.0.1"
port = {port}
database = "TM"
auth = "sql"
user = "upshift"
password = "${{secrets.pw}}"
encrypt = "none"
[steps.version]
kind = "db.check"
with = {{ target = "tm", expect = "up_to_date", target_version = "7.0", versions = ["7.0", "8.0"] }}
"#,
            secret = dir.join("secrets/sql_password").display(),
            port = standins["sql_port"]
        ),
    );
    let own = sb.path().join("check-journal");
    sb.run(&[
        "run",
        check.to_str().unwrap(),
        "--journal",
        own.to_str().unwrap(),
    ])
    .expect(0);
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
    for _ in 0..10 {
        let r = sb.run(&["resume", &run, "--journal", j]);
        if r.code == Some(0) {
            last = Some(r);
            break;
        }
        r.expect(3);
        // Every step the pause names as waiting (`upshift approve RUN STEP`):
        // the Database Updater (its stand-in runs first, as the admin
        // would run the real one), config.compare's changed values, the
        // go/no-go gate.
        let waiting: std::collections::BTreeSet<&str> = r
            .stderr
            .split("`upshift approve ")
            .skip(1)
            .filter_map(|rest| rest.split('`').next()?.split_whitespace().nth(1))
            .collect();
        for step in waiting {
            if step == "db_updater" {
                let out = std::process::Command::new(dir.join("bin/DataBaseUpdater-standin"))
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{out:?}");
            }
            sb.run(&["approve", &run, step, "--journal", j]).expect(0);
        }
    }
    assert!(last.is_some(), "the run did not finish");
    let status = sb.run(&["status", &run, "--json", "--journal", j]);
    all_steps_succeeded(&serde_json::from_str(&status.stdout).unwrap());
    // Each component installed exactly once: the crash repeated nothing done.
    let calls = std::fs::read_to_string(dir.join("bin/msiexec-state/calls.log")).unwrap();
    let db = sb.run(&["log", &run, "--journal", j]).stdout;
    assert!(db.contains("operator.decision approve db_updater"), "{db}");
    for c in ["AC", "ICH", "FE", "API", "SMD"] {
        let n = calls
            .lines()
            .filter(|l| l.contains("/i ") && l.contains(&format!("TM-{c}.msi")))
            .count();
        assert!((1..=2).contains(&n), "{c} installed {n} times:\n{calls}");
    }
}

/// Windows Installer ignores a public property the package does not
/// define: with a wrong name in the site's `[msi_property_names]`, the
/// install "succeeds" and the read-back (`X_verify`) must fail, naming the
/// key, what was expected and what the component really got.
#[test]
fn a_wrong_msi_property_name_fails_the_read_back() {
    let sb = Sandbox::new();
    let dir = sb.path().join("site");
    let _stop = StopStandins(dir.clone());
    // Build the simulated site (the demo dies right after its first events).
    let crashed = sb.run(&["demo", "--dir", dir.to_str().unwrap(), "--crash-at", "3"]);
    assert!(crashed.code != Some(0), "{crashed:?}");
    let site = std::fs::read_to_string(dir.join("plan/sites/demo.toml")).unwrap();
    let wrong = site.replacen(
        "INSTANCENAME = \"INSTANCENAME\"",
        "INSTANCENAME = \"INSTANCE_NAME\"",
        1,
    );
    assert_ne!(site, wrong);
    let wrong_site = dir.join("plan/sites/wrong.toml");
    std::fs::write(&wrong_site, wrong).unwrap();
    // No reboot in this run (the plain `run` would register a real one).
    // (The demo's packages are real MSI files: rewrite ICH's Property
    // table without the stand-in's ExitCode row.)
    let ich = dir.join("packages/TM-ICH.msi");
    let info = upshift_steps::preflight::msi::read_package(&ich).unwrap();
    let rows: Vec<(&str, &str)> = info
        .properties
        .iter()
        .filter(|(k, _)| k.as_str() != "ExitCode")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert!(rows.len() < info.properties.len(), "ICH asks for a reboot");
    upshift_steps::preflight::msi::write_package(&ich, &rows, &["INSTALLFOLDER"]).unwrap();
    let d = |p: &str| dir.join(p).display().to_string();
    let journal = d("journal-wrong");
    let vars = [
        format!("state_dir={}", d("state")),
        format!("msiexec={}", d("bin/msiexec")),
        format!("powershell={}", d("bin/pwsh")),
        format!("systemctl={}", d("bin/systemctl")),
    ];
    let secret = format!("sql_password=file:{}", d("secrets/sql_password"));
    let mut args = vec![
        "run".to_string(),
        d("plan/teammanager.toml"),
        "--site".into(),
        wrong_site.display().to_string(),
        "--journal".into(),
        journal.clone(),
        "--secret".into(),
        secret,
    ];
    for v in &vars {
        args.push("--var".into());
        args.push(v.clone());
    }
    // Preflight catches the wrong name before anything runs: the package's
    // own tables do not define it (issue 15).
    let mut pf: Vec<String> = vec![
        "preflight".into(),
        d("plan/teammanager.toml"),
        "--site".into(),
        wrong_site.display().to_string(),
        "--var".into(),
        format!("secret:sql_password=file:{}", d("secrets/sql_password")),
    ];
    for v in &vars {
        pf.push("--var".into());
        pf.push(v.clone());
    }
    let pf: Vec<&str> = pf.iter().map(String::as_str).collect();
    let found = sb.run(&pf);
    found.expect(1);
    assert!(
        found
            .stdout
            .contains("does not define the public property INSTANCE_NAME")
            && found.stdout.contains("did you mean INSTANCENAME?"),
        "{}",
        found.stdout
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = sb.run(&args);
    r.expect(3); // waits for the Database Updater
    let run = r.run_id();
    let out = std::process::Command::new(dir.join("bin/DataBaseUpdater-standin"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    sb.run(&["approve", &run, "db_updater", "--journal", &journal])
        .expect(0);
    let r = sb.run(&["resume", &run, "--journal", &journal]);
    assert_ne!(r.code, Some(0), "{r:?}");
    let log = sb.run(&["log", &run, "--journal", &journal]).stdout;
    // The first read-back to finish fails (the run pauses there).
    let failed = log
        .lines()
        .find(|l| l.contains("step.failed ") && l.contains("_verify@"))
        .unwrap_or_else(|| panic!("no read-back failed:\n{log}\n{}", r.stderr));
    assert!(
        failed.contains("appSettings `InstanzName`: expected \"TM\", found \"\""),
        "{failed}"
    );
    // The installs themselves passed: the property was silently ignored.
    let component = failed
        .split("step.failed ")
        .nth(1)
        .and_then(|s| s.split("_verify@").next())
        .unwrap();
    assert!(
        log.contains(&format!("step.succeeded {component}_install@")),
        "{log}"
    );
    let calls = std::fs::read_to_string(dir.join("bin/msiexec-state/calls.log")).unwrap();
    assert!(calls.contains("INSTANCE_NAME=TM"), "{calls}");
}
