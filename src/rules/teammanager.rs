//! The TeamManager rules: checks of a customer's site file that the
//! TeamManager manual implies, run by `upshift check` for plans with
//! `rules = ["teammanager"]` ([`check_site`]), and the one rule on the plan
//! itself that the manual implies for every plan ([`one_ich_cleanup`]).
//! Each failure names the file's line.
//!
//! The site file (see `plans/sites/example.toml`):
//! ```toml
//! [components.FE]              # one table per component: AC, API, AM, ...
//! host = "tm01"
//! instance = "TM"
//! port = 8090
//! site_port = 443              # FE and API only
//! [products.lucs.instances]    # LUCS instance names on shared machines
//! tm01 = "LUCS"
//! [ad]
//! system_admin_group = "CN=TM-Admins,OU=Groups,DC=contoso,DC=com"
//! [certificates]
//! thumbprint = "..."
//! ```

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

/// The site keys [`check_site`] reads (it is handed no other).
pub const READS: &[&str] = &[
    "components.*.host",
    "components.*.port",
    "components.*.site_port",
    "components.*.instance",
    "products.lucs.instances",
    "ad.*_group",
    "**.*thumbprint",
    "ich.cleanup_host",
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

    // Component ports unique per host.
    let mut ports: BTreeMap<(String, String), String> = BTreeMap::new();
    for (name, c) in &components {
        let (Some(host), Some(port)) = (c.get("host"), c.get("port")) else {
            continue;
        };
        let key = (text(host).to_ascii_lowercase(), text(port));
        if let Some(other) = ports.get(&key) {
            errors.push(err(
                &["components", name],
                Some("port"),
                format!(
                    "component {name} uses port {} on host {}, already used by {other}",
                    key.1,
                    text(host)
                ),
                "each component on a host needs its own port",
            ));
        } else {
            ports.insert(key, name.clone());
        }
    }

    // FE and API on one machine use different site ports.
    if let (Some(fe), Some(api)) = (components.get("FE"), components.get("API"))
        && let (Some(fh), Some(ah)) = (fe.get("host"), api.get("host"))
        && text(fh).eq_ignore_ascii_case(&text(ah))
        && let (Some(fp), Some(ap)) = (fe.get("site_port"), api.get("site_port"))
        && text(fp) == text(ap)
    {
        errors.push(err(
            &["components", "API"],
            Some("site_port"),
            format!(
                "FE and API are both on {} with site port {}",
                text(fh),
                text(fp)
            ),
            "FE and API on the same machine must use different IIS site ports (e.g. 443 and 8443)",
        ));
    }

    // TM and LUCS instance names differ on a shared machine.
    if let Some(lucs) = get(site.doc, &["products", "lucs", "instances"]).and_then(|v| v.as_table())
    {
        for (name, c) in &components {
            let (Some(host), Some(instance)) = (c.get("host"), c.get("instance")) else {
                continue;
            };
            if let Some((_, li)) = lucs
                .iter()
                .find(|(h, _)| h.eq_ignore_ascii_case(&text(host)))
                && text(li).eq_ignore_ascii_case(&text(instance))
            {
                errors.push(err(
                    &["components", name],
                    Some("instance"),
                    format!(
                        "component {name} on {} has instance name `{}`, the same as the LUCS product on that machine",
                        text(host),
                        text(instance)
                    ),
                    "TM and LUCS sharing a machine need different instance names",
                ));
            }
        }
    }

    // AD group DNs well formed, without spaces.
    if let Some(ad) = get(site.doc, &["ad"]).and_then(|v| v.as_table()) {
        for (key, v) in ad {
            if !key.ends_with("_group") {
                continue;
            }
            if let Some(problem) = dn_problem(&text(v)) {
                errors.push(err(
                    &["ad"],
                    Some(key),
                    format!("ad.{key} = \"{}\" is not a valid group DN: {problem}", text(v)),
                    "copy the distinguished name from Active Directory, e.g. CN=TM-Admins,OU=Groups,DC=contoso,DC=com",
                ));
            }
        }
    }

    // Thumbprints: 40 hex characters once invisible marks are stripped.
    let mut thumbprints = Vec::new();
    for (path, v) in site.values {
        if path
            .rsplit('.')
            .next()
            .is_some_and(|k| k.ends_with("thumbprint"))
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

    // Exactly one ICH cleanup host, if the site names one.
    if let Some(v) = get(site.doc, &["ich", "cleanup_host"])
        && !matches!(v, toml::Value::String(s) if !s.trim().is_empty() && !s.contains(','))
    {
        errors.push(err(
            &["ich"],
            Some("cleanup_host"),
            "ich.cleanup_host must name exactly one host".into(),
            "the manual: turn Cleanup Conferences on on one server only",
        ));
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
