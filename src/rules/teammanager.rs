//! The TeamManager rules: checks of a customer's site file that the
//! TeamManager manual implies, run by `upshift check` for plans with
//! `rules = ["teammanager"]` ([`check_site`]), and the one rule on the plan
//! itself that the manual implies for every plan ([`one_ich_cleanup`]).
//! Each failure names the file's line.
//!
//! The site file's shape is `plans/sites/example.toml` (every key there
//! has a comment): `[hosts.*]`, `[roles]` (tm, iis, lync, sql),
//! `[components.X]` with `hosts`, wizard inputs and packages,
//! `[certificates]` with per-host thumbprints, `[ich.cleanup]`, ...

use std::collections::BTreeMap;

use super::{SiteView, StepKind};
use crate::diagnostics::{Locator, PlanError, locate_key};

fn get<'a>(v: &'a toml::Value, path: &[&str]) -> Option<&'a toml::Value> {
    let mut cur = v;
    for p in path {
        cur = cur.as_table()?.get(*p)?;
    }
    Some(cur)
}

fn text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Is this an AD distinguished name as the manual wants it: `CN=..`,
/// optional `OU=..`, then `DC=..` parts, comma-separated, no spaces.
pub fn dn_problem(dn: &str) -> Option<String> {
    if dn.contains(' ') {
        return Some("contains a space (write CN=..,OU=..,DC=.. without spaces)".into());
    }
    let parts: Vec<&str> = dn.split(',').collect();
    let kinds: Vec<String> = parts
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, _)| k.to_ascii_uppercase())
                .unwrap_or_default()
        })
        .collect();
    if parts
        .iter()
        .any(|p| p.split_once('=').is_none_or(|(_, v)| v.is_empty()))
    {
        return Some("every part must be KEY=value".into());
    }
    if kinds.first().map(String::as_str) != Some("CN") {
        return Some("must start with CN=".into());
    }
    if kinds.last().map(String::as_str) != Some("DC") {
        return Some("must end with DC= parts".into());
    }
    if !kinds
        .iter()
        .all(|k| matches!(k.as_str(), "CN" | "OU" | "DC"))
    {
        return Some("only CN=, OU= and DC= parts are expected".into());
    }
    None
}

/// The manual: the ICH conference cleanup runs on one server only, so a
/// plan has at most one `ich.cleanup_conferences` step.
pub fn one_ich_cleanup(loc: &Locator<'_>, steps: &[StepKind<'_>]) -> Vec<PlanError> {
    let cleanups: Vec<&StepKind<'_>> = steps
        .iter()
        .filter(|s| s.kind == "ich.cleanup_conferences")
        .collect();
    if cleanups.len() <= 1 {
        return Vec::new();
    }
    vec![loc.at(
        cleanups[1].span.clone(),
        format!(
            "{} steps run the ICH conference cleanup ({}); the manual allows it on one server only",
            cleanups.len(),
            cleanups.iter().map(|s| s.id).collect::<Vec<_>>().join(", ")
        ),
        Some("keep one ich.cleanup_conferences step, for the host named in the site file".into()),
    )]
}

/// The components the manual lists (13).
pub const COMPONENTS: &[&str] = &[
    "AC",
    "API",
    "AM",
    "CI",
    "CIC",
    "CR",
    "Configurator",
    "CWS",
    "FE",
    "GalReader",
    "ICH",
    "PS",
    "SMD",
];

/// The minimum set. **Assumed**: the manual marks it in bold, and the
/// copy upshift works from lost the marks; a site may name its own set
/// with a top-level `required_components = [...]`.
pub const REQUIRED: &[&str] = &["AC", "CWS", "Configurator", "FE", "ICH", "PS"];

fn hosts_of(c: &toml::Value) -> Vec<String> {
    match c.get("hosts") {
        Some(toml::Value::Array(a)) => a.iter().map(text).collect(),
        Some(toml::Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

fn list(v: Option<&toml::Value>) -> Vec<String> {
    match v {
        Some(toml::Value::Array(a)) => a.iter().map(text).collect(),
        Some(toml::Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// The site keys [`check_site`] reads: it is handed no other, and a site
/// key that neither these nor the plan read is an error. A new check that
/// reads another key adds it here.
pub const READS: &[&str] = &[
    "required_components",
    "roles.tm",
    "roles.iis",
    "roles.lync",
    "components.*.hosts",
    "components.*.port",
    "components.*.site_port",
    "components.*.instance",
    "components.*.protocol",
    "components.*.https",
    "components.FE.app_settings.*Group",
    "components.CIC.enable_tenant_id",
    "components.CIC.tenant",
    "products.lucs.instances",
    "certificates.security",
    "certificates.thumbprints",
    "certificates.**.*thumbprint",
    "ich.cleanup.host",
];

/// The TeamManager site rules. Returns every violation.
pub fn check_site(site: &SiteView<'_>) -> Vec<PlanError> {
    let mut errors = Vec::new();
    let file = site.path;
    let t = site.text;
    let err = |table: &[&str], key: Option<&str>, message: String, hint: &str| {
        locate_key(file, t, table, key, message, Some(hint.to_string()))
    };
    let components = get(site.doc, &["components"])
        .and_then(|v| v.as_table())
        .cloned()
        .unwrap_or_default();

    // Which components: known names, the required set present.
    for name in components.keys() {
        if !COMPONENTS.contains(&name.as_str()) {
            errors.push(err(
                &["components", name],
                None,
                format!("[components.{name}] is not a TeamManager component"),
                &format!("the manual's components: {}", COMPONENTS.join(", ")),
            ));
        }
    }
    let required: Vec<String> = match site.doc.get("required_components") {
        Some(v) => list(Some(v)),
        None => REQUIRED.iter().map(|s| s.to_string()).collect(),
    };
    for r in &required {
        if !components.contains_key(r) {
            errors.push(err(
                &["components"],
                None,
                format!(
                    "the site has no [components.{r}], a required component (required: {})",
                    required.join(", ")
                ),
                "add the component's table with its hosts and wizard inputs; the required set is ASSUMED (the manual marks it in bold, our copy lost the marks): set required_components = [...] at the top of the site file to state yours",
            ));
        }
    }

    // Where components go: roles.
    let role = |r: &str| list(get(site.doc, &["roles", r]));
    let (tm, iis, lync) = (role("tm"), role("iis"), role("lync"));
    for (name, c) in &components {
        let hs = hosts_of(c);
        if hs.is_empty() {
            continue; // the plan names the missing `hosts`
        }
        for h in &hs {
            if !tm.contains(h) {
                errors.push(err(
                    &["components", name],
                    Some("hosts"),
                    format!("component {name} is on host {h}, which roles.tm does not list"),
                    "roles.tm lists every host with a TM component (their certificates are checked)",
                ));
            }
            let (must, what) = match name.as_str() {
                "SMD" => (
                    &lync,
                    "the manual: \"the SMD component is installed on the Lync server machine\" (roles.lync)",
                ),
                "FE" | "API" => (
                    &iis,
                    "FE and API are IIS applications: put them on an IIS host (roles.iis)",
                ),
                _ => continue,
            };
            if !must.contains(h) {
                errors.push(err(
                    &["components", name],
                    Some("hosts"),
                    format!(
                        "component {name} is on host {h}, which is not a {} host",
                        if name == "SMD" { "Lync/SfB" } else { "IIS" }
                    ),
                    what,
                ));
            }
        }
    }

    // Component ports unique per host; FE and API may share
    // PortNumberToAdd (the manual's own example uses 3500 for both).
    let mut ports: BTreeMap<(String, String), String> = BTreeMap::new();
    for (name, c) in &components {
        let Some(port) = c.get("port") else { continue };
        for h in hosts_of(c) {
            let key = (h.to_ascii_lowercase(), text(port));
            match ports.get(&key) {
                Some(other)
                    if !(matches!(name.as_str(), "FE" | "API")
                        && matches!(other.as_str(), "FE" | "API")) =>
                {
                    errors.push(err(
                        &["components", name],
                        Some("port"),
                        format!(
                            "component {name} uses port {} on host {h}, already used by {other}",
                            key.1
                        ),
                        "each component on a host needs its own port (only FE and API may share PortNumberToAdd)",
                    ));
                }
                Some(_) => {}
                None => {
                    ports.insert(key, name.clone());
                }
            }
        }
    }

    // FE and API on one machine use different site ports.
    if let (Some(fe), Some(api)) = (components.get("FE"), components.get("API"))
        && let (Some(fp), Some(ap)) = (fe.get("site_port"), api.get("site_port"))
        && text(fp) == text(ap)
    {
        let api_hosts = hosts_of(api);
        if let Some(h) = hosts_of(fe).into_iter().find(|h| api_hosts.contains(h)) {
            errors.push(err(
                &["components", "API"],
                Some("site_port"),
                format!("FE and API are both on {h} with site port {}", text(fp)),
                "the manual: for TM-FE and TM-API installed on the same machine the site port numbers have to be different (e.g. 443 and 8443)",
            ));
        }
    }

    // Security protocol http/https, and the HTTPS binding's inputs.
    for name in ["FE", "API"] {
        let Some(c) = components.get(name) else {
            continue;
        };
        let protocol = c.get("protocol").map(text).unwrap_or_default();
        let https = c.get("https");
        match protocol.as_str() {
            "http" if https.is_some() => errors.push(err(
                &["components", name],
                Some("protocol"),
                format!("{name} uses http but the site has [components.{name}.https]"),
                "remove the https table (no certificate binding for http), or write protocol = \"https\"",
            )),
            "https" => match https {
                None => errors.push(err(
                    &["components", name],
                    Some("protocol"),
                    format!("{name} uses https but the site has no [components.{name}.https]"),
                    "add [components.X.https] with hosts and certificate (the HTTPS certificate bound in IIS by hand, manual)",
                )),
                Some(h) => {
                    if hosts_of(h) != hosts_of(c) {
                        errors.push(err(
                            &["components", name, "https"],
                            Some("hosts"),
                            format!("[components.{name}.https] hosts differ from {name}'s hosts"),
                            "the HTTPS binding is made on every host of the component",
                        ));
                    }
                    if h.get("certificate").is_none_or(|v| text(v).trim().is_empty()) {
                        errors.push(err(
                            &["components", name, "https"],
                            None,
                            format!("[components.{name}.https] does not name the HTTPS certificate"),
                            "certificate = \"...\": how the admin finds it in IIS's SSL certificate list",
                        ));
                    }
                }
            },
            "http" => {}
            other => errors.push(err(
                &["components", name],
                Some("protocol"),
                format!("{name}: protocol = \"{other}\" is not a security protocol"),
                "the wizard's Security Protocol: \"http\" or \"https\"",
            )),
        }
    }

    // TM and LUCS instance names differ on a shared machine.
    if let Some(lucs) = get(site.doc, &["products", "lucs", "instances"]).and_then(|v| v.as_table())
    {
        for (name, c) in &components {
            let Some(instance) = c.get("instance") else {
                continue;
            };
            for host in hosts_of(c) {
                if let Some((_, li)) = lucs.iter().find(|(h, _)| h.eq_ignore_ascii_case(&host))
                    && text(li).eq_ignore_ascii_case(&text(instance))
                {
                    errors.push(err(
                        &["components", name],
                        Some("instance"),
                        format!(
                            "component {name} on {host} has instance name `{}`, the same as the LUCS product on that machine",
                            text(instance)
                        ),
                        "TM and LUCS sharing a machine need different instance names",
                    ));
                }
            }
        }
    }

    // AD group DNs well formed, without spaces (FE's settings).
    if let Some(settings) =
        get(site.doc, &["components", "FE", "app_settings"]).and_then(|v| v.as_table())
    {
        for (key, v) in settings {
            if !key.ends_with("Group") {
                continue;
            }
            if let Some(problem) = dn_problem(&text(v)) {
                errors.push(err(
                    &["components", "FE", "app_settings"],
                    Some(key),
                    format!("{key} = \"{}\" is not a valid group DN: {problem}", text(v)),
                    "copy the distinguished name from Active Directory, e.g. CN=TM-Admins,OU=Groups,DC=contoso,DC=com",
                ));
            }
        }
    }

    // Certificate security: on → one thumbprint per TM host.
    let security = get(site.doc, &["certificates", "security"]).map(text);
    if security.as_deref() == Some("true") {
        let have = get(site.doc, &["certificates", "thumbprints"])
            .and_then(|v| v.as_table())
            .cloned()
            .unwrap_or_default();
        for h in &tm {
            if !have.contains_key(h) {
                errors.push(err(
                    &["certificates", "thumbprints"],
                    None,
                    format!("certificate security is on, but host {h} has no thumbprint"),
                    "add `HOST = \"<thumbprint>\"` (the host's dedicated certificate, Personal store), or set certificates.security = false",
                ));
            }
        }
    }

    // Thumbprints: 40 hex characters once invisible marks are stripped.
    let mut thumbprints = Vec::new();
    for (path, v) in site.values {
        let named = path.starts_with("certificates.")
            && path
                .rsplit('.')
                .next()
                .is_some_and(|k| k.ends_with("thumbprint"));
        if (named || path.starts_with("certificates.thumbprints."))
            && let toml::Value::String(s) = v
        {
            thumbprints.push((path.clone(), s.clone()));
        }
    }
    for (path, value) in thumbprints {
        if let Err(problem) = upshift_steps::kinds::component::cert::normalize(&value) {
            let mut parts: Vec<&str> = path.split('.').collect();
            let key = parts.pop();
            errors.push(err(
                &parts,
                key,
                format!("{path}: {problem}"),
                "copy the thumbprint again (certificate dialog → Details → Thumbprint); upshift strips invisible marks and spaces, but 40 hex characters must remain",
            ));
        }
    }

    // The ICH cleanup: on exactly one ICH host, if the site asks.
    if let Some(cleanup) = get(site.doc, &["ich", "cleanup"]) {
        let ich_hosts = components.get("ICH").map(hosts_of).unwrap_or_default();
        match cleanup.get("host") {
            Some(toml::Value::String(h)) if !h.trim().is_empty() && !h.contains(',') => {
                if !ich_hosts.contains(h) {
                    errors.push(err(
                        &["ich", "cleanup"],
                        Some("host"),
                        format!("ich.cleanup.host = \"{h}\" is not one of ICH's hosts ({})", ich_hosts.join(", ")),
                        "the cleanup runs where ICH runs: name one of components.ICH.hosts",
                    ));
                }
            }
            _ => errors.push(err(
                &["ich", "cleanup"],
                Some("host"),
                "ich.cleanup.host must name exactly one host".into(),
                "the manual: switch Cleanup Conferences ON only on one server; remove [ich.cleanup] to leave it off",
            )),
        }
    }

    // CIC: "Enable Tenant ID" → the computer goes into AD groups.
    if let Some(cic) = components.get("CIC") {
        let on = cic.get("enable_tenant_id").map(text).as_deref() == Some("true");
        match (on, cic.get("tenant")) {
            (true, None) => errors.push(err(
                &["components", "CIC"],
                Some("enable_tenant_id"),
                "CIC has Enable Tenant ID on, but no [components.CIC.tenant]".into(),
                "add [components.CIC.tenant] with hosts, computers (AD computer name per host) and ad_groups: the manual says to add the computer to AD groups",
            )),
            (false, Some(_)) => errors.push(err(
                &["components", "CIC", "tenant"],
                None,
                "[components.CIC.tenant] is given but enable_tenant_id is not \"true\"".into(),
                "set enable_tenant_id = \"true\", or remove the tenant table",
            )),
            (true, Some(tenant)) => {
                let computers = tenant.get("computers").and_then(|v| v.as_table());
                for h in hosts_of(tenant) {
                    if computers.is_none_or(|c| !c.contains_key(&h)) {
                        errors.push(err(
                            &["components", "CIC", "tenant"],
                            Some("computers"),
                            format!("[components.CIC.tenant] has no computer name for host {h}"),
                            "computers = { HOST = \"AD computer name\" }",
                        ));
                    }
                }
            }
            (false, None) => {}
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dn_rules() {
        assert_eq!(dn_problem("CN=TM-Admins,OU=Groups,DC=contoso,DC=com"), None);
        assert!(
            dn_problem("CN=TM Admins,DC=contoso,DC=com")
                .unwrap()
                .contains("space")
        );
        assert!(dn_problem("OU=Groups,DC=contoso").unwrap().contains("CN="));
        assert!(dn_problem("CN=x,OU=y").unwrap().contains("DC="));
        assert!(dn_problem("CN=,DC=x").is_some());
    }
}
