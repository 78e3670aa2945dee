//! `upshift preflight`: the real binary against a real MSI file (written
//! with the msi crate), the SQL Server stand-in over TCP (tiberius, with a
//! SQL login and per-login permissions), config files, and an ssh host
//! that does not answer. It must find what is wrong, say ready when
//! nothing is, keep its exit-code contract, and change nothing: the
//! journal folder, the msiexec stand-in's state, the packages and the
//! database stand-in's state hash the same before and after.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use upshift_steps::sql_standin::{StandinOptions, StandinServer, TmDatabaseModel};

use crate::support::{Ran, Sandbox};

const PASSWORD: &str = "pf-secret-pw";
const AC_CODE: &str = "{6C1B0A52-7A0E-4C61-9F1A-080000000001}";

/// A small site: the SQL stand-in (login `upshift` only), packages, a
/// settings file, the msiexec stand-in's state folder, a journal.
struct Site {
    sb: Sandbox,
    model: TmDatabaseModel,
    server: StandinServer,
    _rt: tokio::runtime::Runtime,
}

impl Site {
    fn new(model: TmDatabaseModel) -> Site {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let server = rt
            .block_on(StandinServer::start_with(
                Arc::new(model.clone()),
                StandinOptions {
                    credentials: Some(("upshift".into(), PASSWORD.into())),
                },
            ))
            .unwrap();
        let sb = Sandbox::new();
        let d = sb.path();
        std::fs::create_dir_all(d.join("packages")).unwrap();
        std::fs::create_dir_all(d.join("backups")).unwrap();
        upshift_steps::preflight::msi::write_package(
            &d.join("packages/TM-AC.msi"),
            &[
                ("ProductCode", AC_CODE),
                ("ProductVersion", "8.0.2113"),
                ("INSTANCENAME", "TM"),
                ("PORTNUMBER", "8101"),
            ],
            &["INSTALLFOLDER"],
        )
        .unwrap();
        std::fs::create_dir_all(d.join("bin/msiexec-state")).unwrap();
        std::fs::write(
            d.join("bin/msiexec-state/installed.txt"),
            "{6C1B0A52-7A0E-4C61-9F1A-0A7200000001}\t7.2\tLuware-TM-AC\t\t\n",
        )
        .unwrap();
        std::fs::write(
            d.join("AppSettings.config"),
            "<?xml version=\"1.0\"?>\n<appSettings>\n  <add key=\"InstanzName\" value=\"TM\" />\n</appSettings>\n",
        )
        .unwrap();
        // A real journal in the folder `UPSHIFT_JOURNAL` points at.
        let hello = sb.plan(
            "hello.toml",
            "name = \"hello\"\n[steps.a]\nkind = \"sleep\"\nwith = { duration = \"0s\" }\n",
        );
        sb.run(&["run", hello.to_str().unwrap()]).expect(0);
        Site {
            sb,
            model,
            server,
            _rt: rt,
        }
    }

    /// The plan, with `edit` applied to its text.
    fn plan(&self, edit: impl Fn(String) -> String) -> PathBuf {
        let d = self.sb.path().display().to_string();
        let text = format!(
            r#"name = "preflight-test"
[vars]
packages = '{d}/packages'
[secrets]
sql_password = {{ env = "PF_SQL_PASSWORD" }}
[targets.tm]
host = "127.0.0.1"
port = {port}
database = "TM"
auth = "sql"
user = "upshift"
password = "${{secrets.sql_password}}"
encrypt = "none"
connect_timeout = "5s"

[steps.db_backup]
kind = "sql.backup"
with = {{ target = "tm", directory = '{d}/backups' }}

[steps.db_check]
kind = "db.check"
needs = ["db_backup"]
with = {{ target = "tm", target_version = "8.0", versions = ["7.0", "7.1", "7.2", "8.0"] }}

[steps.jobs]
kind = "sql.agent_jobs.remove"
needs = ["db_check"]
with = {{ target = "tm", procedure = "[mgt].[usp_CleanupReporting_DboSchema]" }}

[steps.ac_install]
kind = "msi.install"
needs = ["jobs"]
[steps.ac_install.with]
package = '${{vars.packages}}/TM-AC.msi'
product_code = "{AC_CODE}"
version = "8.0"
program = '{d}/bin/msiexec'
[steps.ac_install.with.properties]
INSTANCENAME = "TM"
PORTNUMBER = "8101"

[steps.settings]
kind = "config.appsettings"
needs = ["ac_install"]
with = {{ file = '{d}/AppSettings.config', set = {{ InstanzName = "TM" }} }}
"#,
            port = self.server.port()
        );
        self.sb.plan("plan.toml", &edit(text))
    }

    fn preflight(&self, plan: &Path, extra: &[&str]) -> Ran {
        let mut args = vec!["preflight", plan.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.sb.run_env(&args, &[("PF_SQL_PASSWORD", PASSWORD)])
    }

    fn json(&self, plan: &Path) -> (Ran, serde_json::Value) {
        let ran = self.preflight(plan, &["--json"]);
        let v = serde_json::from_str(&ran.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", ran.stdout, ran.stderr));
        (ran, v)
    }

    /// Everything preflight must not change: files under the sandbox
    /// (journal, packages, stand-in state, settings) and the database.
    fn state(&self) -> (BTreeMap<String, String>, String) {
        let mut files = BTreeMap::new();
        let mut stack = vec![self.sb.path().to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap().flatten() {
                let p = e.path();
                let rel = p
                    .strip_prefix(self.sb.path())
                    .unwrap()
                    .display()
                    .to_string();
                if p.is_dir() {
                    files.insert(rel, "dir".into());
                    stack.push(p);
                } else {
                    files.insert(rel, hex::encode(Sha256::digest(std::fs::read(&p).unwrap())));
                }
            }
        }
        let s = self.model.state();
        let db = format!(
            "version {} history {} jobs {:?} backups {:?} restores {} loader {} single_user {} locks {:?}",
            s.db.version,
            s.db.history.len(),
            s.agent_jobs.iter().map(|j| &j.name).collect::<Vec<_>>(),
            s.backups.keys().collect::<Vec<_>>(),
            s.restores,
            s.data_loader_runs,
            s.single_user,
            s.app_locks
        );
        (files, db)
    }
}

fn demo_model() -> TmDatabaseModel {
    TmDatabaseModel::new("7.0").with_agent_job(
        "TM - Cleanup reporting (dbo schema)",
        "EXEC [mgt].[usp_CleanupReporting_DboSchema]",
    )
}

fn findings(v: &serde_json::Value) -> Vec<&serde_json::Value> {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["result"] == "finding")
        .collect()
}

#[test]
fn a_ready_site_is_ready_and_preflight_changes_nothing() {
    let site = Site::new(demo_model());
    let plan = site.plan(|t| t);
    let before = site.state();
    assert!(
        before.0.contains_key("journal/journal.redb"),
        "{:?}",
        before.0
    );

    let text = site.preflight(&plan, &[]);
    text.expect(0);
    assert!(
        text.stdout.contains("READY — no finding"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout
            .contains("SQL Agent jobs the run will remove (they call [mgt].[usp_CleanupReporting_DboSchema]): TM - Cleanup reporting (dbo schema)"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout
            .contains("database at 7.0, on the update path: 7.1 -> 7.2 -> 8.0")
    );
    assert!(
        text.stdout
            .contains("the package defines all 3 properties the plan passes")
    );

    let (ran, v) = site.json(&plan);
    ran.expect(0);
    assert_eq!(v["ready"], true);
    assert_eq!(v["findings"], 0);
    assert_eq!(v["plan"], "preflight-test");
    let checks = v["checks"].as_array().unwrap();
    assert!(checks.len() >= 10, "{v:#}");
    for c in checks {
        assert!(c["host"].is_string() && c["result"].is_string(), "{c}");
        assert!(c.get("step").is_some(), "step (or null for a host): {c}");
    }
    let html = site.sb.path().join("out/preflight.html");
    std::fs::create_dir_all(site.sb.path().join("out")).unwrap();
    site.preflight(&plan, &["-o", html.to_str().unwrap()])
        .expect(0);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains("<b>Ready</b>") && page.contains("[mgt].[usp_CleanupReporting_DboSchema]")
    );
    std::fs::remove_dir_all(site.sb.path().join("out")).unwrap();

    // Nothing changed: files (journal, packages, msiexec state, settings)
    // and the database stand-in; and it sent only statements that read.
    assert_eq!(site.state(), before, "preflight changed the site");
    for t in site.server.request_texts() {
        let head = t.trim_start().to_ascii_uppercase();
        for w in [
            "BACKUP", "RESTORE", "DELETE", "INSERT", "UPDATE", "ALTER", "DROP", "CREATE",
        ] {
            assert!(!head.starts_with(w), "preflight sent `{t}`");
        }
        assert!(
            !t.contains("sp_delete_job") && !t.contains("usp_DataLoader"),
            "{t}"
        );
    }
    assert!(!site.sb.path().join("bin/msiexec-state/calls.log").exists());
}

#[test]
fn a_misspelled_property_a_wrong_code_no_backup_right_and_a_missing_package_are_found() {
    let site = Site::new(demo_model().deny("upshift", "BACKUP DATABASE"));
    let plan = site.plan(|t| {
        let d = site.sb.path().display().to_string();
        t.replace("INSTANCENAME = \"TM\"", "INSTANCENAM = \"TM\"")
            + &format!(
                "\n[steps.ac_again]\nkind = \"msi.install\"\nwith = {{ package = '{d}/packages/TM-AC.msi', product_code = \"{{6C1B0A52-7A0E-4C61-9F1A-080000000099}}\", program = '{d}/bin/msiexec' }}\n"
            )
    });
    let before = site.state();
    let (ran, v) = site.json(&plan);
    ran.expect(1);
    assert_eq!(v["ready"], false);
    let f = findings(&v);
    let one = |step: &str, needle: &str| {
        f.iter()
            .find(|c| c["step"] == step && c["found"].as_str().unwrap().contains(needle))
            .unwrap_or_else(|| panic!("no finding of {step} with `{needle}` in {v:#}"))
    };
    let prop = one(
        "ac_install",
        "does not define the public property INSTANCENAM",
    );
    assert!(
        prop["fix"]
            .as_str()
            .unwrap()
            .contains("did you mean INSTANCENAME"),
        "{prop}"
    );
    assert!(prop["expected"].is_string());
    assert_eq!(prop["host"], "this machine");
    let code = one(
        "ac_again",
        "ProductCode is {6C1B0A52-7A0E-4C61-9F1A-080000000001}",
    );
    assert!(
        code["expected"].as_str().unwrap().contains("080000000099"),
        "{code}"
    );
    one("db_backup", "may not BACKUP DATABASE");
    assert_eq!(v["findings"], f.len());
    assert_eq!(f.len(), 3, "one finding per problem: {v:#}");
    // The text says the same, one finding per problem, with the fix.
    let text = site.preflight(&plan, &[]);
    text.expect(1);
    assert!(text.stdout.contains("3 FINDING(S)"), "{}", text.stdout);
    assert!(
        text.stdout.contains("fix:      did you mean INSTANCENAME?"),
        "{}",
        text.stdout
    );
    assert_eq!(site.state(), before, "preflight changed the site");
    // A package missing on this machine is a plan error, located at the
    // line naming it (as `check` reports it): exit 2.
    let missing = site.plan(|t| t.replace("TM-AC.msi", "TM-PS.msi"));
    let ran = site.preflight(&missing, &[]);
    ran.expect(2);
    assert!(ran.stderr.contains("TM-PS.msi"), "{}", ran.stderr);
}

#[test]
fn a_wrong_password_is_one_finding_for_every_sql_step_and_a_bad_plan_exits_2() {
    let site = Site::new(demo_model());
    let plan = site.plan(|t| t);
    let ran = site.sb.run_env(
        &["preflight", plan.to_str().unwrap(), "--json"],
        &[("PF_SQL_PASSWORD", "wrong")],
    );
    ran.expect(1);
    assert!(
        !ran.stdout.contains("wrong\""),
        "the password must not be printed"
    );
    let v: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    let f = findings(&v);
    assert!(
        f.iter().all(|c| c["found"]
            .as_str()
            .unwrap()
            .contains("Login failed for user 'upshift'")),
        "{v:#}"
    );
    // db_backup logs in to master, the others to TM: two texts, the later
    // steps folded into the first of each.
    assert_eq!(f.len(), 2, "{v:#}");
    assert_eq!(f[1]["also_steps"], serde_json::json!(["jobs"]), "{v:#}");

    let bad = site.sb.plan(
        "bad.toml",
        "name = \"bad\"\n[steps.a]\nkind = \"no.such.kind\"\n",
    );
    let ran = site.preflight(&bad, &[]);
    ran.expect(2);
    assert!(ran.stderr.contains("bad.toml:"), "{}", ran.stderr);
}

#[test]
fn an_ssh_host_that_does_not_answer_is_a_finding() {
    if std::process::Command::new("ssh")
        .arg("-V")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: preflight ssh test, because there is no ssh client here");
        return;
    }
    let sb = Sandbox::new();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(sb.path().join("id_ed25519"), "not a key\n").unwrap();
    std::fs::write(sb.path().join("known_hosts"), "").unwrap();
    let plan = sb.plan(
        "far.toml",
        &format!(
            "name = \"far\"\n[hosts.far]\ntransport = \"ssh\"\naddress = \"127.0.0.1\"\nport = {port}\nuser = \"u\"\nidentity_file = \"{d}/id_ed25519\"\nknown_hosts_file = \"{d}/known_hosts\"\nwork_dir = \"/tmp/upshift-pf-far\"\nconnect_timeout = \"3s\"\n\
             [steps.a]\nkind = \"sleep\"\nhost = \"far\"\nwith = {{ duration = \"0s\" }}\n",
            d = sb.path().display()
        ),
    );
    let ran = sb.run(&["preflight", plan.to_str().unwrap(), "--json"]);
    ran.expect(1);
    let v: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    let f = findings(&v);
    assert_eq!(f.len(), 1, "{v:#}");
    assert_eq!(f[0]["host"], "far");
    assert!(f[0]["step"].is_null(), "a host finding: {v:#}");
    assert!(
        f[0]["found"].as_str().unwrap().contains("unreachable"),
        "{v:#}"
    );
    let step = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["step"] == "a")
        .unwrap();
    assert_eq!(step["result"], "not_checked", "{step}");
}

/// Two real sshd hosts (the lab of tests/e2e/remote_hosts.rs); the second
/// one's host key is not in the known_hosts file the plan names. Linux
/// only, like that lab (sshd, network namespaces of loopback addresses).
#[cfg(target_os = "linux")]
#[test]
fn a_real_sshd_with_an_unknown_host_key_is_a_finding_and_its_neighbour_is_ready() {
    let Some(lab) = crate::remote_hosts::lab(2) else {
        return; // the lab said SKIPPED and why
    };
    let sb = Sandbox::new();
    let known = lab.known_hosts_without(1);
    let hosts = crate::remote_hosts::hosts_toml(&lab).replace(
        &lab.known_hosts.display().to_string(),
        &known.display().to_string(),
    );
    let (h0, h1) = (&lab.hosts[0].name, &lab.hosts[1].name);
    let plan = sb.plan(
        "two.toml",
        &format!(
            "name = \"two\"\n{hosts}\
             [steps.a]\nkind = \"sleep\"\nhost = \"{h0}\"\nwith = {{ duration = \"0s\" }}\n\
             [steps.b]\nkind = \"sleep\"\nhost = \"{h1}\"\nwith = {{ duration = \"0s\" }}\n"
        ),
    );
    let ran = sb.run(&["preflight", plan.to_str().unwrap(), "--json"]);
    ran.expect(1);
    let v: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    let f = findings(&v);
    let on = |h: &str| f.iter().filter(|c| c["host"] == h).count();
    assert_eq!(on(h1), 1, "one finding for the unknown key: {v:#}");
    let found = f.iter().find(|c| c["host"] == h1.as_str()).unwrap();
    assert!(
        found.to_string().to_lowercase().contains("key"),
        "names the host key: {found:#}"
    );
    assert_eq!(on(h0), 0, "the known host is ready: {v:#}");
    // Nothing ran on either host: no ticket folder was made.
    for h in &lab.hosts {
        let tickets = h.work_dir.join("tickets");
        let n = std::fs::read_dir(&tickets).map(|d| d.count()).unwrap_or(0);
        assert_eq!(n, 0, "{} has tickets: {}", h.name, tickets.display());
    }
}

#[test]
fn an_old_database_a_full_backup_disk_a_broken_config_and_a_busy_installer_are_found() {
    let site = Site::new(demo_model());
    {
        let mut s = site.model.state();
        s.db.version = "6.0".into();
        // The backup folder is a Unix path: drive C for xp_fixeddrives.
        s.drives_free_mb.insert("C".into(), 10);
        s.database_bytes = 512 << 20;
    }
    let d = site.sb.path();
    std::fs::write(
        d.join("AppSettings.config"),
        "<appSettings>\n  <add key=\"a\"\n",
    )
    .unwrap();
    std::fs::write(d.join("bin/msiexec-state/busy"), "").unwrap();
    let plan = site.plan(|t| t);
    let before = site.state();
    let (ran, v) = site.json(&plan);
    ran.expect(1);
    let f = findings(&v);
    let has = |step: &str, needle: &str| {
        assert!(
            f.iter()
                .any(|c| c["step"] == step && c["found"].as_str().unwrap().contains(needle)),
            "no finding of {step} with `{needle}` in {v:#}"
        )
    };
    has("db_check", "older than 7.0");
    has("db_backup", "10 MB free on drive C");
    has("settings", "not well-formed XML");
    has("ac_install", "the msiexec stand-in is busy");
    assert_eq!(f.len(), 4, "{v:#}");
    assert_eq!(site.state(), before, "preflight changed the site");
}

#[test]
fn a_server_that_never_answers_costs_one_step_timeout_not_one_per_step() {
    let site = Site::new(demo_model());
    // Accepts connections (the backlog) and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let plan = site.plan(|t| {
        t.replace(
            &format!("port = {}", site.server.port()),
            &format!("port = {port}"),
        )
    });
    let ran = site.preflight(&plan, &["--json", "--step-timeout", "1500ms"]);
    ran.expect(1);
    let v: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    let f = findings(&v);
    assert_eq!(f.len(), 1, "one problem, one finding: {v:#}");
    assert!(
        f[0]["found"]
            .as_str()
            .unwrap()
            .contains("did not finish within 1s 500ms"),
        "{v:#}"
    );
    assert_eq!(f[0]["step"], "db_backup");
    assert_eq!(f[0]["also_steps"], serde_json::json!(["db_check", "jobs"]));
    // Three SQL steps, each bounded by 1.5 s, checked in parallel.
    let ms = v["elapsed_ms"].as_u64().unwrap();
    assert!((1500..4000).contains(&ms), "elapsed {ms} ms");
    drop(silent);
}

/// Steps on two real sshd hosts (the lab of tests/e2e/remote_hosts.rs):
/// each step's own checks run **on its host**, through the host's upshift
/// session (no ticket). On h2 the package is missing, and the settings file
/// is named by a relative path that exists where the coordinator runs (on
/// a host a step runs in a fresh ticket folder, so a relative path is a
/// finding there): both are findings naming h2 and the step.
/// h1 is ready. A secret the step passes stays off the hosts' disks and
/// out of the report; no ticket folder remains; the journal is unchanged.
#[cfg(target_os = "linux")]
#[test]
fn steps_on_ssh_hosts_are_checked_on_their_hosts() {
    const SECRET: &str = "Pr3fl1ght-Rem0te-S3cret";
    let Some(lab) = crate::remote_hosts::lab(2) else {
        return; // the lab said SKIPPED and why
    };
    let sb = Sandbox::new();
    // A real journal to hash.
    let hello = sb.plan(
        "hello.toml",
        "name = \"hello\"\n[steps.a]\nkind = \"sleep\"\nwith = { duration = \"0s\" }\n",
    );
    sb.run(&["run", hello.to_str().unwrap()]).expect(0);
    let settings = "<?xml version=\"1.0\"?>\n<appSettings>\n  <add key=\"InstanzName\" value=\"TM\" />\n</appSettings>\n";
    let (h1, h2) = (&lab.hosts[0], &lab.hosts[1]);
    // h1's settings file, where h1 looks (an absolute path).
    let h1_settings = h1.dir.join("AppSettings.config");
    std::fs::write(&h1_settings, settings).unwrap();
    // The relative one exists beside the plan, where the coordinator runs.
    std::fs::create_dir_all(sb.path().join("tm-settings")).unwrap();
    std::fs::write(sb.path().join("tm-settings/AppSettings.config"), settings).unwrap();
    let missing_pkg = h2.dir.join("packages/TM-AC.msi");
    let plan = sb.plan(
        "two.toml",
        &format!(
            "name = \"two\"\n{hosts}\
             [secrets]\npw = {{ env = \"PF_REMOTE_PW\" }}\n\
             [steps.h1_settings]\nkind = \"config.appsettings\"\nhost = \"{n1}\"\n\
             with = {{ file = '{s1}', set = {{ InstanzName = \"TM\" }} }}\n\
             [steps.h2_install]\nkind = \"msi.install\"\nhost = \"{n2}\"\n\
             [steps.h2_install.with]\npackage = '{pkg}'\n\
             product_code = \"{AC_CODE}\"\nversion = \"8.0\"\n\
             [steps.h2_install.with.properties]\nINSTANCENAME = \"TM\"\nSQLPASSWORD = \"${{secrets.pw}}\"\n\
             [steps.h2_settings]\nkind = \"config.appsettings\"\nhost = \"{n2}\"\n\
             with = {{ file = 'tm-settings/AppSettings.config', set = {{ InstanzName = \"${{secrets.pw}}\" }} }}\n",
            hosts = crate::remote_hosts::hosts_toml(&lab),
            n1 = h1.name,
            n2 = h2.name,
            s1 = h1_settings.display(),
            pkg = missing_pkg.display(),
        ),
    );
    let journal_before = crate::support::all_bytes_under(&sb.journal());
    let ran = Ran::from(
        sb.cmd(&["preflight", plan.to_str().unwrap(), "--json"])
            .env("PF_REMOTE_PW", SECRET)
            .current_dir(sb.path())
            .output()
            .unwrap(),
    );
    ran.expect(1);
    let v: serde_json::Value = serde_json::from_str(&ran.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", ran.stdout, ran.stderr));
    let f = findings(&v);
    let on =
        |h: &str| -> Vec<&&serde_json::Value> { f.iter().filter(|c| c["host"] == h).collect() };
    assert!(on(&h1.name).is_empty(), "h1 is ready: {v:#}");
    let install = on(&h2.name)
        .into_iter()
        .find(|c| c["step"] == "h2_install")
        .unwrap_or_else(|| panic!("the missing package on h2 is a finding: {v:#}"));
    assert!(
        install["found"]
            .as_str()
            .unwrap()
            .contains(&missing_pkg.display().to_string()),
        "names the package: {install:#}"
    );
    let cfg = on(&h2.name)
        .into_iter()
        .find(|c| c["step"] == "h2_settings")
        .unwrap_or_else(|| {
            panic!("the settings file h2 cannot see is a finding (it ran on h2, not here): {v:#}")
        });
    assert!(
        cfg["found"]
            .as_str()
            .unwrap()
            .contains("tm-settings/AppSettings.config"),
        "names the file: {cfg:#}"
    );
    // Relative on a host is a finding in itself: the step would run in a
    // fresh ticket folder there.
    assert!(
        cfg["fix"].as_str().unwrap().contains("fresh ticket folder")
            && cfg["fix"].as_str().unwrap().contains("absolute"),
        "says why a relative path cannot work on a host: {cfg:#}"
    );
    // h1's step was really checked on h1 (ok lines, not "not checked").
    let h1_ok = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["step"] == "h1_settings" && c["result"] == "ok")
        .count();
    assert_eq!(h1_ok, 1, "h1's settings file parses: {v:#}");
    // Nothing stays behind: no ticket on either host, the journal as it
    // was, the secret nowhere on the hosts nor in the report.
    for h in &lab.hosts {
        let tickets = h.work_dir.join("tickets");
        let n = std::fs::read_dir(&tickets).map(|d| d.count()).unwrap_or(0);
        assert_eq!(n, 0, "{} has tickets: {}", h.name, tickets.display());
        assert!(
            !crate::support::contains(&crate::support::all_bytes_under(&h.dir), SECRET),
            "the secret is on {}'s disk",
            h.name
        );
    }
    assert!(
        crate::support::all_bytes_under(&sb.journal()) == journal_before,
        "preflight changed the journal"
    );
    for (what, text) in [("stdout", &ran.stdout), ("stderr", &ran.stderr)] {
        assert!(!text.contains(SECRET), "the secret is in the {what}");
    }
}
