//! `upshift demo`: the real `plans/teammanager.toml` against a simulated
//! TeamManager site in a folder — end to end, with progress bars, a reboot
//! asked for by an installer, a manual step approved by a stand-in operator,
//! and optionally a crash (`--crash-at N`) to show `upshift resume`.
//!
//! Every stand-in says so: msiexec, PowerShell and systemctl are shell
//! scripts (`steps/tests/standins/`), SQL Server is the TDS stand-in of the
//! steps crate, IIS is a tiny HTTP server. The stand-ins for SQL Server and
//! IIS run in a background process (`upshift __demo-standins DIR`) so that a
//! crashed demo can be resumed with the plain `upshift resume`; it stops by
//! itself after 30 idle minutes, or when `DIR/standins.stop` exists.
//!
//! This module builds the site and plays the operator through the
//! application layer; it tells what happens through [`Note`]s and prints
//! nothing (`src/commands/demo.rs` does).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use upshift_journal::{Journal, RunId};

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

/// The plan's manual step for the vendor's Database Updater.
pub const UPDATER_STEP: &str = "db_updater";

/// (component, has a Windows service)
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

/// The components that ask for the Lync server version (manual).
const LYNC: &[&str] = &["AC", "ICH", "CR", "SMD", "CIC"];

/// The demo's stand-in hosts (transport "local": all on this machine),
/// and which components each has: several hosts, as on a real site.
const DEMO_HOSTS: &[(&str, &str)] = &[
    ("tm01", "TeamManager application server"),
    ("web01", "IIS: FE and API"),
    ("lync01", "Skype for Business front end: SMD"),
];

fn host_of(component: &str) -> &'static str {
    match component {
        "SMD" => "lync01",
        "FE" | "API" => "web01",
        _ => "tm01",
    }
}

/// Per-host thumbprints as pasted (the first with an invisible mark).
const THUMBPRINTS: &[(&str, &str)] = &[
    (
        "tm01",
        "\u{200e}3a 7f 12 9c 44 e1 0b 5d 6e 8f 90 ab cd ef 01 23 45 67 89 ab",
    ),
    (
        "web01",
        "4b 80 23 ad 55 f2 1c 6e 7f 90 a1 bc de f0 12 34 56 78 9a bc",
    ),
    (
        "lync01",
        "6d a2 45 cf 77 14 3e 80 91 b2 c3 de f0 12 34 56 78 9a bc de",
    ),
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

/// A component's port in the demo; FE and API share PortNumberToAdd as in
/// the manual's example (3500), their site ports differ.
fn port_of(i: usize, component: &str) -> usize {
    match component {
        "FE" | "API" => 3500,
        _ => 8101 + i,
    }
}

/// The config file a component's package lays down (the manual's paths
/// for FE, API and ICH; `TM-X\TM.X.Service.exe.config` otherwise, as the
/// example site file assumes).
fn config_of(luware: &Path, component: &str) -> PathBuf {
    match component {
        "FE" => luware.join("TM-FE/AppSettings.config"),
        "API" => luware.join("API/AppSettings.config"),
        c => luware.join(format!("TM-{c}/TM.{c}.Service.exe.config")),
    }
}

/// TM-FE's AppSettings.config as the 7.2 install left it (the customer's
/// own `CustomerLogoUrl`, a `SessionTimeout` the new installer resets).
const FE_SETTINGS: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<appSettings>\r\n  <!-- TM-FE settings. DEMO: written by `upshift demo` in a simulated site. -->\r\n  <add key=\"InstanzName\" value=\"TM\" />\r\n  <add key=\"PortNumberToAdd\" value=\"3500\" />\r\n  <add key=\"Thumbprint\" value=\"4B8023AD55F21C6E7F90A1BCDEF0123456789ABC\" />\r\n  <add key=\"SystemAdministratorGroup\" value=\"CN=TM-Admins,OU=Groups,DC=contoso,DC=com\" />\r\n  <add key=\"ReadonlyAdministratorGroup\" value=\"\" />\r\n  <add key=\"UserDomain\" value=\"CONTOSO\" />\r\n  <add key=\"EnableReporting\" value=\"true\" />\r\n  <add key=\"SessionTimeout\" value=\"60\" />\r\n  <add key=\"CustomerLogoUrl\" value=\"https://intranet.contoso.com/logo.png\" />\r\n</appSettings>\r\n";

/// What the 8.0 FE package lays down (the DEMO msiexec wrapper fills in
/// @INSTANCE@, @PORT@, @THUMBPRINT@ from its properties): the customer's
/// own key is gone and SessionTimeout reset, as after a real reinstall;
/// `fe_compare` carries the key over and pauses on the changed value.
const FE_DEFAULTS: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<appSettings>\r\n  <add key=\"InstanzName\" value=\"@INSTANCE@\" />\r\n  <add key=\"PortNumberToAdd\" value=\"@PORT@\" />\r\n  <add key=\"Thumbprint\" value=\"@THUMBPRINT@\" />\r\n  <add key=\"SystemAdministratorGroup\" value=\"\" />\r\n  <add key=\"ReadonlyAdministratorGroup\" value=\"\" />\r\n  <add key=\"UserDomain\" value=\"\" />\r\n  <add key=\"EnableReporting\" value=\"true\" />\r\n  <add key=\"SessionTimeout\" value=\"20\" />\r\n</appSettings>\r\n";

/// The registry stand-in: HKLM\SOFTWARE\Luware AG\TM-FE's values, as the
/// plan's export script writes them (appSettings form).
const FE_REGISTRY: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<appSettings>\n  <!-- DEMO: stand-in for HKLM\\SOFTWARE\\Luware AG\\TM-FE -->\n  <add key=\"InstanzName\" value=\"TM\" />\n  <add key=\"PortNumberToAdd\" value=\"3500\" />\n  <add key=\"SitePortNumber\" value=\"8080\" />\n  <add key=\"UserDomain\" value=\"CONTOSO\" />\n</appSettings>\n";

/// Lays out the simulated site. Returns the vars for the plan.
fn build_site(dir: &Path) -> Result<BTreeMap<String, String>> {
    let bin = dir.join("bin");
    let luware = dir.join("Luware AG");
    // Tools: stand-ins, named as such.
    write_exec(&bin.join("msiexec-standin"), MSIEXEC)?;
    write_exec(
        &bin.join("msiexec"),
        &format!(
            r#"#!/bin/sh
# DEMO wrapper around the msiexec STAND-IN. On a successful install it plays
# what a TM package lays down: the component's config file, holding the
# values of the properties the package understands (INSTANCENAME,
# PORTNUMBER, SERVERTHUMBPRINT, LYNCVERSION) — so the plan's read-back
# (X_verify) sees what the "package" really got, and a property the package
# does not know (a wrong name) leaves its value empty there.
# The demo's hosts all live on this machine and share the stand-in's state
# file: one msiexec at a time here (a real host has its own installer).
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$here/msiexec-state"
exec 9>>"$here/msiexec-state/wrapper.lock"
flock 9
out=$("$here/msiexec-standin" "$@"); rc=$?
printf '%s\n' "$out"
code=$(printf '%s\n' "$out" | sed -n 's/^msiexec-exit-code=//p' | tail -n 1)
[ "$1" = "/i" ] || exit $rc
case "$code" in 0|3010|1641) ;; *) exit $rc ;; esac
pkg=$2
c=$(basename "$pkg" .msi); c=${{c#TM-}}
inst=""; port=""; thumb=""; lync=""
for a in "$@"; do
  case "$a" in
    INSTANCENAME=*) inst=${{a#*=}} ;;
    PORTNUMBER=*) port=${{a#*=}} ;;
    SERVERTHUMBPRINT=*) thumb=${{a#*=}} ;;
    LYNCVERSION=*) lync=${{a#*=}} ;;
  esac
done
luware='{luware}'
case "$c" in
  FE) f="$luware/TM-FE/AppSettings.config"; mkdir -p "$(dirname "$f")"
      sed -e "s|@INSTANCE@|$inst|" -e "s|@PORT@|$port|" -e "s|@THUMBPRINT@|$thumb|" '{fe_defaults}' > "$f" ;;
  API) f="$luware/API/AppSettings.config"; mkdir -p "$(dirname "$f")"
      {{ echo '<?xml version="1.0" encoding="utf-8"?>'; echo '<appSettings>'
         echo "  <add key=\"InstanzName\" value=\"$inst\" />"; echo "  <add key=\"PortNumberToAdd\" value=\"$port\" />"
         echo "  <add key=\"Thumbprint\" value=\"$thumb\" />"; echo '</appSettings>'; }} > "$f" ;;
  *) f="$luware/TM-$c/TM.$c.Service.exe.config"; mkdir -p "$(dirname "$f")"
     {{ echo '<?xml version="1.0" encoding="utf-8"?>'; echo '<configuration>'; echo '  <appSettings>'
        echo "    <add key=\"InstanzName\" value=\"$inst\" />"; echo "    <add key=\"PortNumberToAdd\" value=\"$port\" />"
        echo "    <add key=\"Thumbprint\" value=\"$thumb\" />"
        [ -n "$lync" ] && echo "    <add key=\"LyncServerVersion\" value=\"$lync\" />"
        [ "$c" = ICH ] && echo '    <add key="CleanupConferences" value="false" />'
        echo '  </appSettings>'; echo '</configuration>'; }} > "$f" ;;
esac
exit $rc
"#,
            luware = luware.display(),
            fe_defaults = dir.join("defaults/FE-AppSettings.config").display(),
        ),
    )?;
    write_exec(&bin.join("pwsh"), PWSH)?;
    write_exec(
        &bin.join("pwsh-state/hook"),
        &format!(
            "#!/bin/sh\n# DEMO hook of the PowerShell STAND-IN: plays the plan's scripts. The\n# registry export copies the demo's registry stand-in ({reg}); the IIS and\n# Lync scripts only say what they would have done.\nif [ -n \"${{UPSHIFT_PS_NAMED_Key:-}}\" ] && [ -n \"${{UPSHIFT_PS_NAMED_Out:-}}\" ]; then\n  mkdir -p \"$(dirname \"$UPSHIFT_PS_NAMED_Out\")\"\n  cp '{reg}' \"$UPSHIFT_PS_NAMED_Out\"\n  echo \"stand-in: exported $UPSHIFT_PS_NAMED_Key (the demo's registry stand-in) to $UPSHIFT_PS_NAMED_Out\"\n  exit 0\nfi\necho \"stand-in pwsh: would run $(basename \"$STANDIN_SCRIPT\") with:\"\nenv | grep '^UPSHIFT_PS_' | sort\nexit 0\n",
            reg = dir.join("registry/TM-FE.config").display()
        ),
    )?;
    write_exec(&bin.join("systemctl"), SYSTEMCTL)?;
    write_exec(
        &bin.join("systemctl-boot"),
        "#!/bin/sh\n# STAND-IN for systemctl's boot duties in the demo: records the call;\n# `reboot` reboots nothing.\nhere=$(cd \"$(dirname \"$0\")\" && pwd)\necho \"$@\" >> \"$here/systemctl-boot.calls\"\n[ \"$1\" = reboot ] && echo 'stand-in: a real systemctl would reboot the machine now'\nexit 0\n",
    )?;
    // Installed products (7.2, installed from packages-7.2, which rollback
    // reinstalls) and new packages (8.0; ICH asks for a reboot).
    let mut installed = String::new();
    for (i, (c, _)) in COMPONENTS.iter().enumerate() {
        let previous = dir.join(format!("packages-7.2/TM-{c}.msi"));
        write(
            &previous,
            &format!(
                "ProductCode={}\nProductVersion=7.2\nProductName=Luware-TM-{c}\n",
                old_code(i)
            ),
        )?;
        installed.push_str(&format!(
            "{}\t7.2\tLuware-TM-{c}\t{}\t\n",
            old_code(i),
            previous.display()
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
    // Services (systemd units played by the stand-in), running the 7.2
    // version; the ICH unit's hook plays the conference cleanup.
    let state = bin.join("systemctl-state");
    for (c, service) in COMPONENTS {
        if *service {
            write(&state.join(format!("{}.unit", unit_name(c))), "")?;
            write(&state.join(format!("{}.active", unit_name(c))), "active\n")?;
            write(
                &state.join(format!("{}.enabled", unit_name(c))),
                "enabled\n",
            )?;
        }
    }
    let ich_cfg = config_of(&luware, "ICH");
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
    // Configuration files as the 7.2 install left them.
    write(&config_of(&luware, "FE"), FE_SETTINGS)?;
    write(&dir.join("defaults/FE-AppSettings.config"), FE_DEFAULTS)?;
    write(&dir.join("registry/TM-FE.config"), FE_REGISTRY)?;
    write(
        &config_of(&luware, "API"),
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<appSettings>\n  <add key=\"InstanzName\" value=\"TM\" />\n  <add key=\"PortNumberToAdd\" value=\"3500\" />\n</appSettings>\n",
    )?;
    write(&ich_log, "")?;
    write(
        &luware.join("TM-ICH/log/connectionIssues.log"),
        "2026-12-06 22:14:03 WARN  PS endpoint net.tcp://tm01:8110 not reachable (before the upgrade)\n",
    )?;
    // The plan, the Database Updater stand-in's scripts, the secret.
    write(&dir.join("plan/teammanager.toml"), PLAN)?;
    for (name, text) in SCRIPTS {
        write(&dir.join("updater-standin/sql").join(name), text)?;
    }
    write(&dir.join("secrets/sql_password"), "upshift-demo-password\n")?;

    let mut vars = BTreeMap::new();
    let p = |p: PathBuf| p.display().to_string();
    vars.insert("state_dir".into(), p(dir.join("state")));
    vars.insert("msiexec".into(), p(bin.join("msiexec")));
    vars.insert("powershell".into(), p(bin.join("pwsh")));
    vars.insert("systemctl".into(), p(bin.join("systemctl")));
    vars.insert(
        "secret:sql_password".into(),
        format!("file:{}", dir.join("secrets/sql_password").display()),
    );
    Ok(vars)
}

/// The demo's site file: the shape of `plans/sites/example.toml`, with the
/// stand-ins' addresses and paths, and stand-in hosts (transport "local").
fn site_file(dir: &Path, sql_port: u16, http_port: u16) -> String {
    let luware = dir.join("Luware AG");
    let mut s = String::from(
        "# DEMO site: a simulated TeamManager site written by `upshift demo`.\n# Its hosts are STAND-INS: transport \"local\" runs their steps on this\n# machine. SQL Server and IIS are stand-ins on 127.0.0.1 (standins.json).\n# The keys are those of plans/sites/example.toml, which explains each.\n",
    );
    for (h, what) in DEMO_HOSTS {
        s.push_str(&format!(
            "\n# {what} (stand-in)\n[hosts.{h}]\ntransport = \"local\"\nwork_dir = '{}'\n",
            dir.join("hosts").join(h).display()
        ));
    }
    s.push_str(&format!(
        r#"
[roles]
tm = ["tm01", "web01", "lync01"]
iis = ["web01"]
lync = ["lync01"]
# sql = "tm01" (informational: a key nothing reads is an error)

[sql]
host = "127.0.0.1"
port = {sql_port}
database = "TM"
user = "upshift"
encrypt = "none"
backup_dir = '{backups}'

[release]
version = "8.0"
database_version = "8.0"

[database]
updater = '{updater}'  # the Database Updater's STAND-IN
updater_server_name = "127.0.0.1,{sql_port}"
updater_login = "SQL login upshift"
update_path = ["7.0", "7.1", "7.2", "8.0"]
oldest_supported = "7.0"
incremental_from = {{}}
version_query = "SELECT TOP (1) [Version] FROM [dbo].[DatabaseVersion] ORDER BY [Id] DESC"

[lync]
management_host = "lync01"
shell_module = "SkypeForBusiness"
sip_connectors = ["sip:lucs_agent_connector_00@contoso.com", "sip:lucs_agent_connector_01@contoso.com"]

[certificates]
security = true
[certificates.server]
mode = "Transport"
validation = "ChainTrust"
dedicated = "true"
[certificates.client]
mode = "Transport"
validation = "ChainTrust"
dedicated = "true"
[certificates.thumbprints]
"#,
        backups = dir.join("backups").display(),
        updater = updater_script(dir).display(),
    ));
    for (h, t) in THUMBPRINTS {
        s.push_str(&format!("{h} = \"{t}\"\n"));
    }
    s.push_str(&format!(
        r#"
[ich]
connection_log = '{conn}'
watch_connection_log_for = "1s"

[ich.cleanup]
host = "tm01"
log = '{cleanup_log}'
quiet_for = "2s"
log_wait = "30s"
expected_conferences = {DEMO_CONFERENCES}
per_conference = "200ms"
poll_interval = "200ms"

[products.lucs.instances]
tm01 = "LUCS"

[config_keys]
instance = "InstanzName"
port = "PortNumberToAdd"
thumbprint = "Thumbprint"
lync_version = "LyncServerVersion"

[msi_property_names]
"#,
        conn = luware.join("TM-ICH/log/connectionIssues.log").display(),
        cleanup_log = luware
            .join("TM-ICH/log/ConferenceTerminationLog.txt")
            .display(),
    ));
    for k in [
        "INSTALLFOLDER",
        "INSTANCENAME",
        "PORTNUMBER",
        "CONFIGURECERTIFICATESECURITY",
        "SERVERSECURITYMODE",
        "SERVERVALIDATIONMODE",
        "SERVERISDEDICATED",
        "SERVERTHUMBPRINT",
        "CLIENTSECURITYMODE",
        "CLIENTVALIDATIONMODE",
        "CLIENTISDEDICATED",
        "CLIENTTHUMBPRINT",
        "SITEPORTNUMBER",
        "SECURITYPROTOCOL",
        "LYNCVERSION",
        "INSTALLGALSEARCH",
        "ENABLETENANTID",
        "CLEANUPCONFERENCES",
        "LOGLEVEL",
    ] {
        s.push_str(&format!("{k} = \"{k}\"\n"));
    }
    for (i, (c, service)) in COMPONENTS.iter().enumerate() {
        s.push_str(&format!(
            "\n[components.{c}]\nhosts = [\"{host}\"]\ninstance = \"TM\"\nport = {port}\ninstall_folder = '{luware}'\ncertificate_security = \"true\"\nconfig = '{config}'\npackage = '{package}'\nproduct_code = \"{new}\"\nprevious_package = '{previous}'\nold_product_code = \"{old}\"\n",
            host = host_of(c),
            port = port_of(i, c),
            luware = luware.display(),
            config = config_of(&luware, c).display(),
            package = dir.join(format!("packages/TM-{c}.msi")).display(),
            previous = dir.join(format!("packages-7.2/TM-{c}.msi")).display(),
            old = old_code(i),
            new = new_code(i),
        ));
        if *service {
            s.push_str(&format!("service = \"{}\"\n", unit_name(c)));
        }
        if LYNC.contains(c) {
            s.push_str("lync_version = \"Skype for Business\"\n");
        }
        match *c {
            "CIC" => s.push_str("enable_tenant_id = \"false\"\n"),
            "SMD" => s.push_str("log_level = \"Debug\"\n"),
            "FE" => s.push_str(&format!(
                "site_port = 8080\nprotocol = \"http\"\niis_site = \"Luware-TM-FE\"\napp_pool = \"Luware-TM-FE\"\nurl = \"http://127.0.0.1:{http_port}/fe/\"\ninstall_gal_search = \"true\"\nchanged_settings = \"pause\"\n[components.FE.app_settings]\nSystemAdministratorGroup = \"CN=TM-Admins,OU=Groups,DC=contoso,DC=com\"\nReadonlyAdministratorGroup = \"CN=TM-Readers,OU=Groups,DC=contoso,DC=com\"\nUserDomain = \"CONTOSO\"\nDefaultSipDomain = \"contoso.com\"\nEnableReporting = \"true\"\nEnableWorkflowResources = \"true\"\nDisableWindowsAuthentication = \"false\"\nDisableTeamMemberLogin = \"false\"\n"
            )),
            "API" => s.push_str(&format!(
                "site_port = 8081\nprotocol = \"http\"\niis_site = \"Luware-TM-API\"\napp_pool = \"Luware-TM-API\"\nurl = \"http://127.0.0.1:{http_port}/api/\"\n"
            )),
            _ => {}
        }
    }
    s
}

/// The DEMO STAND-IN for the Luware Database Updater: upshift's generic
/// `db.update` kind running the demo's update scripts against the SQL
/// Server stand-in, as its own small run (own journal). The real Updater
/// is a GUI the admin runs; the demo plays that admin.
fn updater_standin_plan(dir: &Path, sql_port: u16) -> String {
    format!(
        r#"# DEMO STAND-IN for the Luware Database Updater (DataBaseUpdater.exe):
# upshift's generic db.update kind runs the demo's scripts against the SQL
# Server stand-in. It is NOT the vendor's tool.
name = "database-updater-standin"
description = "DEMO STAND-IN for the Luware Database Updater: db.update against the SQL Server stand-in"

[secrets]
sql_password = {{ env = "UPSHIFT_DEMO_UNUSED" }}

[targets.tm]
host = "127.0.0.1"
port = {sql_port}
database = "TM"
auth = "sql"
user = "upshift"
password = "${{secrets.sql_password}}"
encrypt = "none"

[steps.update_to_8_0]
kind = "db.update"
description = "stand-in: \"Check DB\", then \"Update to version 8.0\""
with = {{ target = "tm", scripts_dir = '{scripts}', target_version = "8.0" }}
"#,
        scripts = dir.join("updater-standin/sql").display()
    )
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
                    let n = sock.read(&mut buf).await.unwrap_or(0);
                    // FE answers as with Windows authentication: 401
                    // Negotiate (the plan accepts 200, 302 and 401).
                    let fe = buf[..n].starts_with(b"GET /fe/");
                    let (status, extra, body) = if fe {
                        (
                            "401 Unauthorized",
                            "WWW-Authenticate: Negotiate\r\n",
                            "IIS STAND-IN (upshift demo): FE site running, Windows authentication\n",
                        )
                    } else {
                        ("200 OK", "", "IIS STAND-IN (upshift demo): site running\n")
                    };
                    let _ = sock
                        .write_all(
                            format!(
                                "HTTP/1.1 {status}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
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
            // A demo folder removed (a test's sandbox) ends them too.
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
    /// The Database Updater step waits: the demo's admin runs the
    /// Updater's stand-in first (then approves as for any manual step).
    Updater {
        /// The stand-in's script.
        script: PathBuf,
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

/// The Database Updater stand-in's script in a demo folder.
pub fn updater_script(dir: &Path) -> PathBuf {
    dir.join("bin/DataBaseUpdater-standin")
}

/// Runs the Database Updater stand-in (as the demo's admin would).
fn run_updater_standin(dir: &Path) -> Result<()> {
    let script = updater_script(dir);
    let status = std::process::Command::new(&script)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(io(&script))?;
    if !status.success() {
        return Err(Error::failed(format!(
            "demo: the Database Updater stand-in ({}) failed: {status}",
            script.display()
        )));
    }
    Ok(())
}

/// Lays out the simulated site in `dir` and starts its stand-ins.
pub fn build(dir: &Path) -> Result<DemoSite> {
    let vars = build_site(dir)?;
    let standins = start_standins(dir)?;
    let site = dir.join("plan/sites/demo.toml");
    write(
        &site,
        &site_file(dir, standins.sql_port, standins.http_port),
    )?;
    let updater_plan = dir.join("updater-standin/database-updater-standin.toml");
    write(&updater_plan, &updater_standin_plan(dir, standins.sql_port))?;
    let exe = std::env::current_exe().map_err(io(dir))?;
    write_exec(
        &updater_script(dir),
        &format!(
            "#!/bin/sh\n# DEMO STAND-IN for the Luware Database Updater (DataBaseUpdater.exe), whose\n# \"Check DB\" and \"Update to version 8.0\" an admin clicks: upshift's generic\n# db.update runs the demo's scripts against the SQL Server stand-in, as a\n# run of its own ({plan}). Run it when the demo's db_updater step waits,\n# then approve that step.\nexec '{exe}' run '{plan}' --journal '{journal}' --secret 'sql_password=file:{secret}' \"$@\"\n",
            exe = exe.display(),
            plan = updater_plan.display(),
            journal = dir.join("updater-standin/journal").display(),
            secret = dir.join("secrets/sql_password").display(),
        ),
    )?;
    Ok(DemoSite {
        dir: dir.to_path_buf(),
        journal: dir.join("journal"),
        site,
        plan_path: dir.join("plan/teammanager.toml"),
        standins,
        boot: crate::reboot::BootOverrides {
            systemctl: Some(dir.join("bin/systemctl-boot").display().to_string()),
            unit_dir: Some(dir.join("systemd")),
        },
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

/// Runs the plan and plays the operator: runs the Database Updater's
/// stand-in and approves manual steps, "reboots" when asked, resumes,
/// until the run ends or pauses for something else. The stand-ins keep
/// running afterwards (for `upshift rollback`; they stop after 30 idle
/// minutes or when `DIR/standins.stop` exists).
pub fn play(
    site: &DemoSite,
    plan: Plan,
    session: &Session,
    stop_at: Option<&str>,
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
        } else if stop_at.is_some_and(|s| waiting.iter().any(|w| w == s)) {
            break;
        } else if !waiting.is_empty() {
            for step in &waiting {
                if step == UPDATER_STEP {
                    note(Note::Updater {
                        script: updater_script(&site.dir),
                    });
                    run_updater_standin(&site.dir)?;
                }
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
    Ok((run, exit))
}
