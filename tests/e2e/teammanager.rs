//! `plans/teammanager.toml` and its site files: the TeamManager rules of
//! `upshift check` (each mistake named at the site file's line), what the
//! dry run tells an admin (every assumption at the step relying on it),
//! and the shape of a site without certificate security or https.

use std::path::{Path, PathBuf};

use crate::support::Sandbox;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn plan() -> String {
    root()
        .join("plans/teammanager.toml")
        .to_str()
        .unwrap()
        .to_string()
}

fn example() -> String {
    std::fs::read_to_string(root().join("plans/sites/example.toml")).unwrap()
}

/// Writes a site file into the sandbox, with the example's key files
/// beside it (host key files are relative to the site file).
fn site(sb: &Sandbox, text: &str) -> PathBuf {
    let keys = sb.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    for f in ["id_ed25519", "known_hosts"] {
        std::fs::copy(root().join("plans/sites/keys").join(f), keys.join(f)).unwrap();
    }
    let p = sb.path().join("site.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// The line (1-based) of the first line matching `needle` at or after the
/// line `after` (a table header).
fn line_under(text: &str, after: &str, needle: &str) -> usize {
    let start = text.lines().position(|l| l == after).unwrap();
    text.lines()
        .enumerate()
        .skip(start)
        .find(|(_, l)| l.starts_with(needle))
        .unwrap()
        .0
        + 1
}

#[test]
fn the_example_and_three_host_sites_pass_and_show_their_hosts() {
    let sb = Sandbox::new();
    let r = sb.run(&["check", &plan()]);
    r.expect(0);
    assert!(
        r.stdout
            .contains("5 host(s): lync01, sql01, tm01, tm02, web01"),
        "{}",
        r.stdout
    );
    let three = root().join("plans/sites/three-hosts.toml");
    let r = sb.run(&["check", &plan(), "--site", three.to_str().unwrap()]);
    r.expect(0);
    assert!(
        r.stdout.contains("3 host(s): lync01, tm01, web01"),
        "{}",
        r.stdout
    );
    // SMD runs on the Lync host, FE/API on the IIS host, ICH on its farm.
    let d = sb.run(&["run", &plan(), "--dry-run"]);
    d.expect(0);
    for want in [
        "smd_install@lync01 [msi.install] on lync01",
        "fe_install@web01 [msi.install] on web01",
        "ich_install@tm01 [msi.install] on tm01",
        "ich_install@tm02 [msi.install] on tm02",
        // The cleanup on exactly the one host the site names.
        "ich_cleanup@tm01 [ich.cleanup_conferences] on tm01",
    ] {
        assert!(d.stdout.contains(want), "missing {want:?}");
    }
    assert!(
        !d.stdout.contains("ich_cleanup@tm02"),
        "cleanup on one host only"
    );
}

/// One mistake of each kind; each error names the site file's line.
#[test]
fn the_teammanager_rules_name_the_site_files_lines() {
    let sb = Sandbox::new();
    let good = example();
    let bad = good
        // AM's port = AC's, both on tm01.
        .replacen("port = 8102", "port = 8101", 1)
        // API's site port = FE's, both on web01.
        .replacen("site_port = 8443", "site_port = 443", 1)
        .replacen("CN=TM-Readers,OU=Groups", "CN=TM Readers,OU=Groups", 1)
        .replacen("tm01 = \"LUCS\"", "tm01 = \"TM\"", 1)
        // PS is missing (a required component), PSX is no component.
        .replacen("[components.PS]", "[components.PSX]", 1)
        // SMD away from the Lync host.
        .replacen("hosts = [\"lync01\"]", "hosts = [\"tm01\"]", 1)
        // The cleanup on a host without ICH.
        .replacen("host = \"tm01\"\nlog =", "host = \"web01\"\nlog =", 1)
        // Certificate security on, one host without a thumbprint.
        .replacen("web01 = \"", "# web01 = \"", 1);
    assert_ne!(bad, good);
    let s = site(&sb, &bad);
    let r = sb.run(&["check", &plan(), "--site", s.to_str().unwrap()]);
    r.expect(2);
    let at = |line: usize| format!("site.toml:{line}:");
    for (line, words) in [
        (
            line_under(&bad, "[components.AM]", "port ="),
            "already used by AC",
        ),
        (
            line_under(&bad, "[components.API]", "site_port ="),
            "FE and API are both on web01 with site port 443",
        ),
        (
            line_under(
                &bad,
                "[components.FE.app_settings]",
                "ReadonlyAdministratorGroup",
            ),
            "not a valid group DN",
        ),
        (
            line_under(&bad, "[components.SMD]", "hosts ="),
            "component SMD is on host tm01, which is not a Lync/SfB host",
        ),
        (
            line_under(&bad, "[ich.cleanup]", "host ="),
            "is not one of ICH's hosts",
        ),
        (
            line_under(&bad, "[components.PSX]", "[components.PSX]"),
            "[components.PSX] is not a TeamManager component",
        ),
        (
            line_under(
                &bad,
                "[certificates.thumbprints]",
                "[certificates.thumbprints]",
            ),
            "host web01 has no thumbprint",
        ),
    ] {
        assert!(
            r.stderr.contains(&at(line)) && r.stderr.contains(words),
            "expected {} and `{words}` in:\n{}",
            at(line),
            r.stderr
        );
    }
    assert!(
        r.stderr
            .contains("the site has no [components.PS], a required component"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("the same as the LUCS product"),
        "{}",
        r.stderr
    );
    // The manual's own example: FE and API both with PortNumberToAdd 3500
    // on one host is fine (only their site ports must differ).
    assert!(
        !r.stderr.contains("already used by FE") && !r.stderr.contains("already used by API"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_site_with_http_and_without_certificate_security_needs_no_thumbprint_or_binding() {
    let sb = Sandbox::new();
    let mut text = example()
        .replacen("security = true", "security = false", 1)
        .replace("protocol = \"https\"", "protocol = \"http\"");
    // No thumbprints at all; no https tables.
    let mut out = Vec::new();
    let mut skip = false;
    for l in text.lines() {
        if l.starts_with('[') {
            skip = l == "[components.FE.https]" || l == "[components.API.https]";
        }
        let thumb = ["tm01 = \"", "tm02 = \"", "web01 = \"", "lync01 = \""]
            .iter()
            .any(|p| l.starts_with(p) && l.len() > 50);
        if !skip && !thumb {
            out.push(l);
        }
    }
    text = out.join("\n");
    let s = site(&sb, &text);
    let r = sb.run(&["check", &plan(), "--site", s.to_str().unwrap()]);
    r.expect(0);
    assert!(
        r.stdout.contains(
            "fe_bind_https: not on this site (the site file has no `components.FE.https`)"
        ),
        "{}",
        r.stdout
    );
    let d = sb.run(&["run", &plan(), "--site", s.to_str().unwrap(), "--dry-run"]);
    d.expect(0);
    assert!(
        d.stdout.contains("certificate security is off"),
        "{}",
        d.stdout
    );
    // The read-back skips the thumbprint (none expected) but still checks
    // instance and port.
    assert!(!d.stdout.contains("fe_bind_https@"), "{}", d.stdout);
}

#[test]
fn the_https_binding_names_the_https_certificate_and_checks_accept_401() {
    let sb = Sandbox::new();
    let d = sb.run(&["run", &plan(), "--dry-run"]);
    d.expect(0);
    let at = d.stdout.find("fe_bind_https@web01 [manual]").unwrap();
    let step = &d.stdout[at..at + 900];
    assert!(
        step.contains("tm.contoso.com (issued by Contoso Issuing CA)")
            && step.contains("not the WCF"),
        "{step}"
    );
    let at = d.stdout.find("fe_check@web01 [http.check]").unwrap();
    let step = &d.stdout[at..at + 600];
    assert!(step.contains("401"), "{step}");
}

/// Every assumption the plan relies on is in the dry run, at its step.
#[test]
fn the_dry_run_shows_each_assumption_at_the_step_relying_on_it() {
    let sb = Sandbox::new();
    let d = sb.run(&["run", &plan(), "--dry-run"]);
    d.expect(0);
    let step = |id: &str| -> String {
        let start = d
            .stdout
            .find(&format!(". {id} ["))
            .unwrap_or_else(|| panic!("no step {id} in:\n{}", d.stdout));
        let rest = &d.stdout[start..];
        let end = rest[3..].find("\n\n").map(|e| e + 3).unwrap_or(rest.len());
        rest[..end].to_string()
    };
    for (id, words) in [
        (
            "db_version_after",
            "ASSUMPTION: the version query is not in the manual",
        ),
        (
            "db_version_before",
            "ASSUMPTION: the version query is not in the manual",
        ),
        ("db_updater", "Check DB"),
        ("ac_install@tm01", "ASSUMED: MSI property names"),
        ("ac_verify@tm01", "ASSUMPTION"),
        ("ac_stop@tm01", "ASSUMED: the service name"),
        ("fe_settings@web01", "ASSUMED key names"),
        ("fe_stop_iis@web01", "ASSUMED: app pool name"),
        ("api_bind_https@web01", "ASSUMED"),
    ] {
        let s = step(id);
        assert!(s.contains(words), "{id}: expected `{words}` in:\n{s}");
    }
    // The Updater step names the site's server, database and target version.
    let u = step("db_updater");
    for w in [
        "sql01.contoso.com",
        "Database Name: TM",
        "Update to version",
        "8.0",
    ] {
        assert!(u.contains(w), "db_updater: `{w}` in:\n{u}");
    }
    // The install uses the previous package for rollback.
    let un = step("ac_uninstall@tm01");
    assert!(un.contains("TM-7.2"), "{un}");
}

/// "Enable Tenant ID": a manual step names the computer and the AD groups;
/// on without the groups, `check` names the line.
#[test]
fn cic_with_enable_tenant_id_asks_for_the_ad_groups() {
    let sb = Sandbox::new();
    let on = example().replacen(
        "enable_tenant_id = \"false\"",
        "enable_tenant_id = \"true\"",
        1,
    );
    let s = site(&sb, &on);
    let r = sb.run(&["check", &plan(), "--site", s.to_str().unwrap()]);
    r.expect(2);
    let line = line_under(&on, "[components.CIC]", "enable_tenant_id");
    assert!(
        r.stderr.contains(&format!("site.toml:{line}:"))
            && r.stderr.contains("no [components.CIC.tenant]"),
        "{}",
        r.stderr
    );
    let with = on.replacen(
        "# [components.CIC.tenant]\n# hosts = [\"tm01\"]\n# computers = { tm01 = \"TM01\" }\n# ad_groups = ",
        "[components.CIC.tenant]\nhosts = [\"tm01\"]\ncomputers = { tm01 = \"TM01\" }\nad_groups = ",
        1,
    );
    assert_ne!(with, on);
    let s = site(&sb, &with);
    sb.run(&["check", &plan(), "--site", s.to_str().unwrap()])
        .expect(0);
    let d = sb.run(&["run", &plan(), "--site", s.to_str().unwrap(), "--dry-run"]);
    d.expect(0);
    let at = d.stdout.find("cic_tenant@tm01 [manual] on tm01").unwrap();
    let step = &d.stdout[at..at + 700];
    assert!(
        step.contains("add the computer TM01")
            && step.contains("CN=TM-Tenant,OU=Groups,DC=contoso,DC=com"),
        "{step}"
    );
    // CIC starts only after the approval.
    let start = d.stdout.find("cic_start@tm01 [service]").unwrap();
    assert!(
        d.stdout[start..]
            .lines()
            .next()
            .unwrap()
            .contains("cic_tenant@tm01")
    );
}
