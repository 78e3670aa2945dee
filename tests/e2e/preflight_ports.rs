//! `upshift preflight`, ports: the real binary looks at real listening
//! sockets (this test process binds them on loopback) and at an IIS
//! configuration file (`$UPSHIFT_IIS_CONFIG`, a fixture in the form of
//! `applicationHost.config`). A port held by another process is a finding
//! naming it and its PID; held by the component itself (its executable)
//! it is not; a free port is ok. Another IIS site bound to the site port
//! is a finding; the component's own site alone is ok.

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use crate::support::{Ran, Sandbox};

const CODE: &str = "{6C1B0A52-7A0E-4C61-9F1A-080000000001}";

fn sandbox() -> Sandbox {
    let sb = Sandbox::new();
    let d = sb.path();
    std::fs::create_dir_all(d.join("bin/msiexec-state")).unwrap();
    std::fs::write(d.join("bin/msiexec-state/installed.txt"), "").unwrap();
    upshift_steps::preflight::msi::write_package(
        &d.join("TM-AC.msi"),
        &[("ProductCode", CODE), ("ProductVersion", "8.0.2113")],
        &["INSTALLFOLDER"],
    )
    .unwrap();
    sb
}

/// One `msi.install` step whose component listens as `listens` says.
fn write_plan(sb: &Sandbox, listens: &str) -> PathBuf {
    let d = sb.path().display().to_string();
    sb.plan(
        "ports.toml",
        &format!(
            r#"name = "ports"
[steps.ac_install]
kind = "msi.install"
[steps.ac_install.with]
package = '{d}/TM-AC.msi'
product_code = "{CODE}"
version = "8.0"
program = '{d}/bin/msiexec'
listens = {listens}
"#
        ),
    )
}

fn preflight(sb: &Sandbox, plan: &Path, env: &[(&str, &str)]) -> (Ran, serde_json::Value) {
    let mut env = env.to_vec();
    if !env.iter().any(|(k, _)| *k == "UPSHIFT_IIS_CONFIG") {
        env.push(("UPSHIFT_IIS_CONFIG", ""));
    }
    let ran = sb.run_env(&["preflight", plan.to_str().unwrap(), "--json"], &env);
    let v = serde_json::from_str(&ran.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", ran.stdout, ran.stderr));
    (ran, v)
}

fn lines<'a>(v: &'a serde_json::Value, result: &str) -> Vec<&'a serde_json::Value> {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["result"] == result)
        .collect()
}

fn ok_text(v: &serde_json::Value) -> String {
    lines(v, "ok")
        .iter()
        .map(|c| c["what"].as_str().unwrap_or_default().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(target_os = "linux")]
fn this_exe() -> String {
    std::env::current_exe()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[cfg(target_os = "linux")]
#[test]
fn a_port_held_by_another_process_is_a_finding_naming_it_and_a_free_port_is_ok() {
    let sb = sandbox();
    let sock = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = sock.local_addr().unwrap().port();
    let plan = write_plan(
        &sb,
        &format!("{{ port = {port}, service = \"Luware TM AC\", exe = \"TM.AC.Service.exe\" }}"),
    );
    let (ran, v) = preflight(&sb, &plan, &[]);
    ran.expect(1);
    let f = lines(&v, "finding");
    assert_eq!(f.len(), 1, "{v:#}");
    let found = f[0]["found"].as_str().unwrap();
    let me = format!("{} (PID {})", this_exe(), std::process::id());
    assert!(
        found.contains(&format!("port {port} is taken by {me} on 127.0.0.1:{port}")),
        "{found}"
    );
    assert_eq!(f[0]["step"], "ac_install");
    assert!(
        f[0]["expected"]
            .as_str()
            .unwrap()
            .contains("service \"Luware TM AC\""),
        "{v:#}"
    );
    assert!(f[0]["fix"].as_str().unwrap().contains("another port"));
    // The same port once the other process let it go: ready.
    drop(sock);
    let (ran, v) = preflight(&sb, &plan, &[]);
    ran.expect(0);
    assert!(
        ok_text(&v).contains(&format!("port {port} is free")),
        "{v:#}"
    );
}

#[cfg(target_os = "linux")]
#[test]
fn a_port_held_by_the_component_itself_is_not_a_finding() {
    // Before an upgrade the old version still listens on its port: here
    // "the component" is this test's own executable, holding the port.
    let sb = sandbox();
    let sock = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = sock.local_addr().unwrap().port();
    let plan = write_plan(
        &sb,
        &format!("{{ port = {port}, exe = \"{}\" }}", this_exe()),
    );
    let (ran, v) = preflight(&sb, &plan, &[]);
    ran.expect(0);
    let ok = ok_text(&v);
    assert!(
        ok.contains(&format!(
            "port {port} is held by the component itself ({}: {} (PID {})",
            this_exe(),
            this_exe(),
            std::process::id()
        )),
        "{ok}"
    );
    drop(sock);
}

const IIS: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<configuration>
  <system.applicationHost>
    <sites>
      <site name="Default Web Site" id="1" serverAutoStart="true">
        <application path="/" applicationPool="DefaultAppPool" />
        <bindings>
          <binding protocol="http" bindingInformation="*:@OTHER@:" />
        </bindings>
      </site>
      <site name="Luware-TM-FE" id="2">
        <bindings>
          <binding protocol="https" bindingInformation="*:@PORT@:" />
        </bindings>
      </site>
    </sites>
  </system.applicationHost>
</configuration>
"#;

#[test]
fn another_iis_site_on_the_site_port_is_a_finding_and_the_own_site_alone_is_ready() {
    let sb = sandbox();
    // A port nobody listens on (bound, then let go): the IIS check alone.
    let port = {
        let s = TcpListener::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let plan = write_plan(
        &sb,
        &format!("{{ port = {port}, iis_site = \"Luware-TM-FE\" }}"),
    );
    let config = sb.path().join("applicationHost.config");
    let env = [("UPSHIFT_IIS_CONFIG", config.to_str().unwrap())];
    std::fs::write(
        &config,
        IIS.replace("@OTHER@", &port.to_string())
            .replace("@PORT@", &port.to_string()),
    )
    .unwrap();
    let before = std::fs::read(&config).unwrap();
    let (ran, v) = preflight(&sb, &plan, &env);
    ran.expect(1);
    let f = lines(&v, "finding");
    assert_eq!(f.len(), 1, "{v:#}");
    let found = f[0]["found"].as_str().unwrap();
    assert!(
        found.contains(&format!(
            "site port {port} is already bound by IIS site(s) \"Default Web Site\" (http *:{port}:)"
        )),
        "{found}"
    );
    assert!(f[0]["fix"].as_str().unwrap().contains("site_port"));
    assert_eq!(std::fs::read(&config).unwrap(), before, "read only");

    // Only TM's own site binds it: ready.
    std::fs::write(
        &config,
        IIS.replace("@OTHER@", "80")
            .replace("@PORT@", &port.to_string()),
    )
    .unwrap();
    let (ran, v) = preflight(&sb, &plan, &env);
    ran.expect(0);
    assert!(
        ok_text(&v).contains(&format!(
            "site port {port} is not bound by another IIS site (\"Luware-TM-FE\" itself binds it"
        )),
        "{v:#}"
    );

    // A site name that IIS does not have (the site file's iis_site is
    // wrong): a finding naming the sites there are.
    let plan = write_plan(
        &sb,
        &format!("{{ port = {port}, iis_site = \"Luware-TM-Frontend\" }}"),
    );
    let (ran, v) = preflight(&sb, &plan, &env);
    ran.expect(1);
    let found = lines(&v, "finding")[0]["found"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        found.contains("no IIS site \"Luware-TM-Frontend\"")
            && found.contains("Default Web Site, Luware-TM-FE"),
        "{found}"
    );
}

#[test]
fn a_bad_listens_port_is_a_plan_error() {
    let sb = sandbox();
    let plan = write_plan(&sb, "{ port = \"eighty\" }");
    let ran = sb.run(&["preflight", plan.to_str().unwrap()]);
    ran.expect(2);
    assert!(
        ran.stderr.contains("ports.toml:4:1") && ran.stderr.contains("`eighty` is not a TCP port"),
        "{}",
        ran.stderr
    );
}
