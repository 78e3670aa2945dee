//! `upshift demo`: the real `plans/teammanager.toml` against a simulated
//! TeamManager site in a folder — end to end, with progress bars, a reboot
//! asked for by an installer, a manual step approved by a stand-in operator,
//! and optionally a crash (`--crash-at N`) to show `upshift resume`.
//!
//! Every stand-in says so: msiexec, PowerShell and systemctl are shell
//! scripts (`steps/tests/standins/`), SQL Server is the TDS stand-in of the
//! steps crate, IIS is a tiny HTTP server. The stand-ins for SQL Server and
//! IIS run in a background process (`upshift __demo-standins DIR`) so that a
//! crashed demo can be resumed with the plain `upshift resume`; it stops
//! when the run succeeds (the demo, or a resume of the demo run, writes
//! `DIR/standins.stop`), when that file is written by hand, when the folder
//! is removed, or after 30 idle minutes.
//!
//! This module builds the site and plays the operator through the
//! application layer; it tells what happens through [`Note`]s and prints
//! nothing (`src/commands/demo.rs` does).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use upshift_journal::{Journal, Outcome, RunId};

use crate::app::Workspace;
use crate::app::run::{Session, resume, start};
use crate::engine::Exit;
use crate::error::{Error, Result};
use crate::plan::{LoadOptions, Plan, SiteSource};
use crate::state::{RunState, StepStatus};

const PLAN: &str = include_str!("../plans/teammanager.toml");
const SCRIPTS: &[(&str, &str)] = &[
    (
        "7.0_to_7.1.sql",
        include_str!("../plans/sql/7.0_to_7.1.sql"),
    ),
    (
        "7.1_to_7.2.sql",
        include_str!("../plans/sql/7.1_to_7.2.sql"),
    ),
    (
        "7.2_to_8.0.sql",
        include_str!("../plans/sql/7.2_to_8.0.sql"),
    ),
];
const MSIEXEC: &str = include_str!("../steps/tests/standins/msiexec");
const PWSH: &str = include_str!("../steps/tests/standins/pwsh");
const SYSTEMCTL: &str = include_str!("../steps/tests/standins/systemctl");

/// (site name, plan key, has a Windows service)
const COMPONENTS: &[(&str, bool)] = &[
    ("AC", true),
    ("AM", true),
    ("CI", true),
    ("CIC", true),
    ("CR", true),
    ("Configurator", true),
    ("CWS", true),
    ("GalReader", true),
    ("ICH", true),
    ("PS", true),
    ("SMD", true),
    ("FE", false),
    ("API", false),
];

/// Conferences the stand-in ICH cleans (0.2 s each instead of ~20 s).
const DEMO_CONFERENCES: usize = 30;
/// The stand-in process stops after this long without a request.
const STANDINS_IDLE: Duration = Duration::from_secs(30 * 60);

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::failed(format!("demo: {}: {e}", path.display()))
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(io(d))?;
    }
    std::fs::write(path, text).map_err(io(path))
}

fn write_exec(path: &Path, text: &str) -> Result<()> {
    write(path, text)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(io(path))?;
    }
    Ok(())
}

fn old_code(i: usize) -> String {
    format!("{{6C1B0A52-7A0E-4C61-9F1A-0A72{:08}}}", i + 1)
}

fn new_code(i: usize) -> String {
    format!("{{6C1B0A52-7A0E-4C61-9F1A-0800{:08}}}", i + 1)
}

fn unit_name(component: &str) -> String {
    format!("tm-{}", component.to_ascii_lowercase())
}

const FE_SETTINGS: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<appSettings>\r\n  <!-- TM-FE settings. DEMO: written by `upshift demo` in a simulated site. -->\r\n  <add key=\"InstanzName\" value=\"TM\" />\r\n  <add key=\"PortNumberToAdd\" value=\"8012\" />\r\n  <add key=\"SystemAdministratorGroup\" value=\"CN=TM-Admins,OU=Groups,DC=contoso,DC=com\" />\r\n  <add key=\"ReadonlyAdministratorGroup\" value=\"\" />\r\n  <add key=\"UserDomain\" value=\"CONTOSO\" />\r\n  <add key=\"EnableReporting\" value=\"true\" />\r\n  <add key=\"CustomerLogoUrl\" value=\"https://intranet.contoso.com/logo.png\" />\r\n</appSettings>\r\n";

/// What a fresh FE install lays down: the customer's own key is gone, as
/// after a real reinstall; `fe_compare` carries it over.
const FE_DEFAULTS: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<appSettings>\r\n  <add key=\"InstanzName\" value=\"\" />\r\n  <add key=\"PortNumberToAdd\" value=\"\" />\r\n  <add key=\"SystemAdministratorGroup\" value=\"\" />\r\n  <add key=\"ReadonlyAdministratorGroup\" value=\"\" />\r\n  <add key=\"UserDomain\" value=\"\" />\r\n  <add key=\"EnableReporting\" value=\"true\" />\r\n</appSettings>\r\n";

const API_SETTINGS: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<appSettings>\n  <add key=\"InstanzName\" value=\"TM\" />\n  <add key=\"PortNumberToAdd\" value=\"8013\" />\n</appSettings>\n";

const ICH_CONFIG: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<configuration>\n  <appSettings>\n    <add key=\"CleanupConferences\" value=\"false\" />\n    <add key=\"LogLevel\" value=\"Info\" />\n  </appSettings>\n</configuration>\n";

/// Lays out the simulated site. Returns the vars for the plan.
fn build_site(dir: &Path) -> Result<BTreeMap<String, String>> {
    let bin = dir.join("bin");
    let luware = dir.join("Luware AG");
    // Tools: stand-ins, named as such.
    write_exec(&bin.join("msiexec-standin"), MSIEXEC)?;
    write_exec(
        &bin.join("msiexec"),
        &format!(
            "#!/bin/sh\n# DEMO wrapper around the msiexec STAND-IN: installing TM-FE lays down a\n# fresh AppSettings.config, as the real setup does.\nhere=$(cd \"$(dirname \"$0\")\" && pwd)\n\"$here/msiexec-standin\" \"$@\"; rc=$?\ncase \"$*\" in *TM-FE.msi*) case \"$*\" in */i*) [ $rc -eq 0 ] && cp '{}' '{}' ;; esac ;; esac\nexit $rc\n",
            dir.join("defaults/FE-AppSettings.config").display(),
            luware.join("TM-FE/AppSettings.config").display()
        ),
    )?;
    write_exec(&bin.join("pwsh"), PWSH)?;
    write_exec(&bin.join("systemctl"), SYSTEMCTL)?;
    write_exec(
        &bin.join("systemctl-boot"),
        "#!/bin/sh\n# STAND-IN for systemctl's boot duties in the demo: records the call;\n# `reboot` reboots nothing.\nhere=$(cd \"$(dirname \"$0\")\" && pwd)\necho \"$@\" >> \"$here/systemctl-boot.calls\"\n[ \"$1\" = reboot ] && echo 'stand-in: a real systemctl would reboot the machine now'\nexit 0\n",
    )?;
    // Installed products (7.2) and new packages (8.0; ICH asks for a reboot).
    let mut installed = String::new();
    for (i, (c, _)) in COMPONENTS.iter().enumerate() {
        installed.push_str(&format!(
            "{}\t7.2\tLuware-TM-{c}\t{}\t\n",
            old_code(i),
            dir.join(format!("packages-7.2/TM-{c}.msi")).display()
        ));
        let mut pkg = format!(
            "ProductCode={}\nProductVersion=8.0\nProductName=Luware-TM-{c}\n",
            new_code(i)
        );
        if *c == "ICH" {
            pkg.push_str("ExitCode=3010\n");
        }
        write(&dir.join(format!("packages/TM-{c}.msi")), &pkg)?;
    }
    write(&bin.join("msiexec-state/installed.txt"), &installed)?;
    // Services (systemd units played by the stand-in), stopped after the
    // uninstall; the ICH unit's hook plays the conference cleanup.
    let state = bin.join("systemctl-state");
    for (c, service) in COMPONENTS {
        if *service {
            write(&state.join(format!("{}.unit", unit_name(c))), "")?;
            write(
                &state.join(format!("{}.active", unit_name(c))),
                "inactive\n",
            )?;
        }
    }
    let ich_cfg = luware.join("TM-ICH/TM.ICH.Service.exe.config");
    let ich_log = luware.join("TM-ICH/log/ConferenceTerminationLog.txt");
    write_exec(
        &state.join("tm-ich.on-start"),
        &format!(
            "#!/bin/sh\n# STAND-IN for the ICH service: with CleanupConferences on, it sets an\n# expiration time on {n} old conferences, 0.2 s each (the real one: ~20 s).\ncfg='{cfg}'\nlog='{log}'\ngrep -q 'key=\"CleanupConferences\" value=\"true\"' \"$cfg\" || exit 0\necho \"$(date '+%F %T') INFO  Found {n} conferences without expiration time\" >> \"$log\"\ni=0\nwhile [ $i -lt {n} ]; do\n  i=$((i + 1))\n  sleep 0.2\n  echo \"$(date '+%F %T') INFO  Conference 'sip:organizer@contoso.com;gruu;opaque=app:conf:focus:id:C$i' expiration time set to 2026-12-24 02:00:00\" >> \"$log\"\ndone\n",
            n = DEMO_CONFERENCES,
            cfg = ich_cfg.display(),
            log = ich_log.display()
        ),
    )?;
    // Configuration files.
    write(&luware.join("TM-FE/AppSettings.config"), FE_SETTINGS)?;
    write(&dir.join("defaults/FE-AppSettings.config"), FE_DEFAULTS)?;
    write(&luware.join("TM-API/AppSettings.config"), API_SETTINGS)?;
    write(&ich_cfg, ICH_CONFIG)?;
    write(&ich_log, "")?;
    // The plan, its update scripts, and the demo's secret.
    write(&dir.join("plan/teammanager.toml"), PLAN)?;
    for (name, text) in SCRIPTS {
        write(&dir.join("plan/sql").join(name), text)?;
    }
    write(&dir.join("secrets/sql_password"), "upshift-demo-password\n")?;

    let mut vars = BTreeMap::new();
    let p = |p: PathBuf| p.display().to_string();
    vars.insert("install_dir".into(), p(luware));
    vars.insert("packages".into(), p(dir.join("packages")));
    vars.insert("scripts_dir".into(), p(dir.join("plan/sql")));
    vars.insert("msiexec".into(), p(bin.join("msiexec")));
    vars.insert("powershell".into(), p(bin.join("pwsh")));
    vars.insert("systemctl".into(), p(bin.join("systemctl")));
    vars.insert(
        "secret:sql_password".into(),
        format!("file:{}", dir.join("secrets/sql_password").display()),
    );
    Ok(vars)
}

fn site_file(dir: &Path, sql_port: u16, http_port: u16) -> String {
    let mut s = format!(
        r#"# DEMO site: a simulated TeamManager site written by `upshift demo`.
# SQL Server and IIS are stand-ins on 127.0.0.1 (see standins.json).

[sql]
host = "127.0.0.1"
port = {sql_port}
database = "TM"
user = "upshift"
encrypt = "none"
backup_dir = '{backups}'

[lync]
version = "Skype for Business"
default_sip_domain = "contoso.com"
sip_connectors = ["sip:tm-connector1@contoso.com", "sip:tm-connector2@contoso.com"]

[ad]
system_admin_group = "CN=TM-Admins,OU=Groups,DC=contoso,DC=com"
readonly_admin_group = "CN=TM-Readers,OU=Groups,DC=contoso,DC=com"
user_domain = "CONTOSO"

[certificates]
mode = "Transport"
validation = "ChainTrust"
dedicated = "true"
# As pasted from the certificate dialog: with an invisible mark in front.
thumbprint = "\u200e3a 7f 12 9c 44 e1 0b 5d 6e 8f 90 ab cd ef 01 23 45 67 89 ab"

[ich]
cleanup_host = "TM01"
quiet_for = "2s"
expected_conferences = {DEMO_CONFERENCES}
per_conference = "200ms"
poll_interval = "200ms"

[products.lucs.instances]
TM01 = "LUCS"
"#,
        backups = dir.join("backups").display()
    );
    for (i, (c, service)) in COMPONENTS.iter().enumerate() {
        s.push_str(&format!(
            "\n[components.{c}]\nhost = \"{host}\"\ninstance = \"TM\"\nport = {port}\nold_product_code = \"{old}\"\nproduct_code = \"{new}\"\n",
            host = if *c == "SMD" { "LYNC01" } else { "TM01" },
            port = 8001 + i,
            old = old_code(i),
            new = new_code(i),
        ));
        if *service {
            s.push_str(&format!("service = \"{}\"\n", unit_name(c)));
        }
        match *c {
            "CIC" => s.push_str("enable_tenant_id = \"false\"\n"),
            "SMD" => s.push_str("log_level = \"Debug\"\n"),
            "FE" => s.push_str(&format!(
                "site_port = 443\nurl = \"http://127.0.0.1:{http_port}/fe/\"\n"
            )),
            "API" => s.push_str(&format!(
                "site_port = 8443\nurl = \"http://127.0.0.1:{http_port}/api/\"\n"
            )),
            _ => {}
        }
    }
    s
}

/// Ports of the running stand-ins, from `standins.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Standins {
    /// The SQL Server stand-in's port on 127.0.0.1.
    pub sql_port: u16,
    /// The IIS stand-in's port on 127.0.0.1.
    pub http_port: u16,
    /// The stand-ins' process.
    pub pid: u32,
}

fn start_standins(dir: &Path) -> Result<Standins> {
    let file = dir.join("standins.json");
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(dir.join("standins.stop"));
    let exe = std::env::current_exe().map_err(io(dir))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("__demo-standins")
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // Its own process group: a Ctrl-C or crash of the demo leaves it up,
    // so that `upshift resume` finds its SQL Server and IIS again.
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    cmd.spawn().map_err(io(dir))?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if let Ok(text) = std::fs::read_to_string(&file)
            && let Ok(s) = serde_json::from_str::<Standins>(&text)
        {
            return Ok(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(Error::failed(format!(
        "demo: the stand-ins did not start (no {})",
        file.display()
    )))
}

/// `upshift __demo-standins DIR`: the SQL Server stand-in (TDS over TCP,
/// with the demo TM database) and an IIS stand-in (HTTP 200), until
/// `DIR/standins.stop` appears or nothing was asked of them for 30 minutes.
pub fn standins_main(dir: &Path) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io(dir))?;
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let model = upshift_steps::sql_standin::TmDatabaseModel::demo();
        let sql = upshift_steps::sql_standin::StandinServer::start(model.clone())
            .await
            .map_err(io(dir))?;
        let http = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(io(dir))?;
        let http_port = http.local_addr().map_err(io(dir))?.port();
        let last = Arc::new(std::sync::Mutex::new(Instant::now()));
        let last_http = Arc::clone(&last);
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = http.accept().await {
                *last_http.lock().expect("poisoned") = Instant::now();
                tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    let _ = sock.read(&mut buf).await;
                    let body = "IIS STAND-IN (upshift demo): site running\n";
                    let _ = sock
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .await;
                });
            }
        });
        let info = Standins {
            sql_port: sql.port(),
            http_port,
            pid: std::process::id(),
        };
        upshift_fsutil::atomic_write(
            &dir.join("standins.json"),
            serde_json::to_string(&info)
                .expect("serializable")
                .as_bytes(),
        )
        .map_err(io(dir))?;
        let mut seen = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = sql.connections();
            if now != seen {
                seen = now;
                *last.lock().expect("poisoned") = Instant::now();
            }
            let idle = last.lock().expect("poisoned").elapsed();
            // Also when the folder is gone (a test's temporary folder
            // removed with the stop file in it): nothing is left to serve.
            if dir.join("standins.stop").exists() || !dir.exists() || idle > STANDINS_IDLE {
                break;
            }
        }
        let _ = std::fs::remove_file(dir.join("standins.json"));
        Ok(())
    })
}

fn waiting_steps(journal: &Path, run: RunId) -> Result<(Vec<String>, bool)> {
    let j = Journal::open_read_only(journal)?;
    let st = RunState::from_events(&j.read_run(run)?);
    let waiting = st
        .steps
        .iter()
        .filter(|(_, s)| s.status == StepStatus::Waiting)
        .map(|(k, _)| k.clone())
        .collect();
    Ok((waiting, st.reboot_pending.is_some()))
}

/// A simulated site, built and with its stand-ins running.
pub struct DemoSite {
    /// The demo folder.
    pub dir: PathBuf,
    /// Its journal.
    pub journal: PathBuf,
    /// The site file written for the stand-ins' ports.
    pub site: PathBuf,
    /// The copy of `plans/teammanager.toml` in the folder.
    pub plan_path: PathBuf,
    /// The stand-ins.
    pub standins: Standins,
    /// Where the resume-at-boot task goes (a stand-in systemd).
    pub boot: crate::reboot::BootOverrides,
    /// The plan's `--var` values (paths of the stand-ins, the secret's file).
    pub vars: BTreeMap<String, String>,
}

/// What the demo does, as it does it (the command layer says it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// The run was started (before anything is journaled).
    RunStarted(RunId),
    /// An installer asked for a reboot; the stand-in reboot happens now.
    Reboot {
        /// Where the boot task was registered.
        boot_dir: PathBuf,
    },
    /// A step waits for an operator; the demo approves it.
    Approving {
        /// The run.
        run: RunId,
        /// The step.
        step: String,
    },
    /// The approval is journaled.
    Approved {
        /// The run.
        run: RunId,
    },
}

/// The demo folder: `dir`, or a new folder in the temp dir; created.
/// Refuses a folder that already holds a demo.
pub fn demo_dir(dir: Option<PathBuf>) -> Result<PathBuf> {
    let dir = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!(
            "upshift-demo-{}",
            chrono::Utc::now().format("%Y%m%d-%H%M%S")
        )),
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let dir = dir.canonicalize().map_err(io(&dir))?;
    if dir.join("journal").exists() {
        return Err(Error::usage(format!(
            "demo: {} already holds a demo; continue it with `upshift resume --journal {}`, or give another --dir",
            dir.display(),
            dir.join("journal").display()
        )));
    }
    Ok(dir)
}

/// Lays out the simulated site in `dir` and starts its stand-ins.
pub fn build(dir: &Path) -> Result<DemoSite> {
    let mut vars = build_site(dir)?;
    // The run carries that it is a demo: every session of it (also a plain
    // `upshift resume`) keeps its effects in this folder.
    vars.insert(crate::app::run::DEMO_VAR.into(), dir.display().to_string());
    let standins = start_standins(dir)?;
    let site = dir.join("plan/sites/demo.toml");
    write(
        &site,
        &site_file(dir, standins.sql_port, standins.http_port),
    )?;
    Ok(DemoSite {
        dir: dir.to_path_buf(),
        journal: dir.join("journal"),
        site,
        plan_path: dir.join("plan/teammanager.toml"),
        standins,
        boot: crate::app::run::demo_boot(dir),
        vars,
    })
}

/// The real TM plan with the demo's site file and values.
pub fn load_plan(site: &DemoSite) -> Result<Plan> {
    Ok(crate::plan::load(
        &site.plan_path,
        &upshift_steps::registry(),
        &LoadOptions {
            vars: site.vars.clone(),
            site: SiteSource::File(site.site.clone()),
        },
    )?)
}

/// Runs the plan and plays the operator: approves manual steps, "reboots"
/// when asked, resumes, until the run ends or pauses for something else.
/// On success, tells the stand-ins to stop.
pub fn play(
    site: &DemoSite,
    plan: Plan,
    session: &Session,
    note: &mut dyn FnMut(Note),
) -> Result<(RunId, Exit)> {
    let ws = Workspace::new(&site.journal);
    let (run, mut exit) = start(plan, site.vars.clone(), &ws, session, |run| {
        note(Note::RunStarted(run))
    })?;
    for _ in 0..10 {
        match &exit {
            Exit::Paused(_) | Exit::Rebooting(_) => {}
            _ => break,
        }
        let (waiting, reboot) = waiting_steps(&site.journal, run)?;
        if reboot || matches!(exit, Exit::Rebooting(_)) {
            note(Note::Reboot {
                boot_dir: site.dir.join("systemd"),
            });
        } else if !waiting.is_empty() {
            for step in &waiting {
                note(Note::Approving {
                    run,
                    step: step.clone(),
                });
                crate::app::decisions::approve(
                    &ws,
                    run,
                    step,
                    "approved by the upshift demo (stand-in operator)",
                )?;
                note(Note::Approved { run });
            }
        } else {
            break;
        }
        exit = resume(&ws, Some(&run.to_string()), false, false, session)?
            .1
            .exit();
    }
    if exit == Exit::Finished(Outcome::Succeeded) {
        let _ = std::fs::write(site.dir.join("standins.stop"), "");
    }
    Ok((run, exit))
}
