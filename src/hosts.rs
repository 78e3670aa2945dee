//! The machines of a plan and where each step runs.
//!
//! - `[hosts.<name>]` says how a host is reached: `transport = "ssh"`
//!   (address, port, user, identity_file, known_hosts_file) or `"local"`
//!   (this machine, through the same ticket runner: the demo's stand-in
//!   hosts), `work_dir` (the runner's folder on the host) and
//!   `max_concurrent`. Any value may be a `${site...}` or `${vars...}`
//!   reference. `hosts = "${site.hosts}"` takes the whole table from the
//!   site file; inside a `[hosts]` table, `include = "${site.hosts}"` does
//!   the same and the plan's own `[hosts.<name>]` tables extend it or
//!   override it key by key.
//! - A step's `host = "NAME"` runs it there; `hosts = [..]` (or a site
//!   reference to a list) makes one instance per host, `STEP@HOST`. A
//!   `hosts` reference to a site table that does not exist (a component
//!   this site does not have) makes the step absent: it is not in the run
//!   and its dependents do not wait for it.
//!
//! Parsing does no I/O: whether key files can be read is checked by
//! [`host_file_problems`] where a plan is loaded to be run or checked.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use toml::Spanned;

use crate::diagnostics::{Locator, PlanError, did_you_mean, locate_key};
use crate::refs::{self, Ref, Resolver};

/// The key of a `[hosts]` table that imports a table of hosts.
pub const INCLUDE_KEY: &str = "include";

/// Separates a fanned-out step's id from its host: `ich_install@tm02`.
pub const INSTANCE_SEP: char = '@';

/// Upper bound on a host's `max_concurrent`.
pub const HOST_CONCURRENCY_MAX: u32 = 64;

/// The keys a host table may have.
pub const HOST_KEYS: &[&str] = &[
    "transport",
    "address",
    "port",
    "user",
    "identity_file",
    "known_hosts_file",
    "work_dir",
    "max_concurrent",
    "connect_timeout",
    "keepalive_interval",
    "keepalive_count_max",
];

/// How a host is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// This machine, through the ticket runner (stand-in hosts, tests).
    Local,
    /// The system OpenSSH client.
    Ssh,
}

impl Transport {
    /// The word used in plans.
    pub fn word(self) -> &'static str {
        match self {
            Transport::Local => "local",
            Transport::Ssh => "ssh",
        }
    }
}

/// Where a value of a host was written, for errors found after parsing
/// (a key file that cannot be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// In the site file (else in the plan).
    pub in_site: bool,
    /// The table holding it (`hosts.lync`).
    pub table: Vec<String>,
    /// The key.
    pub key: String,
}

/// One host of a plan, its values resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct HostDef {
    /// Its name in the plan.
    pub name: String,
    /// How it is reached.
    pub transport: Transport,
    /// Name or address (ssh).
    pub address: String,
    /// TCP port (ssh; 22 unless given).
    pub port: u16,
    /// Login (ssh).
    pub user: String,
    /// The private key (ssh), absolute.
    pub identity_file: PathBuf,
    /// The only file the host's key is checked against (ssh), absolute.
    pub known_hosts_file: PathBuf,
    /// Where the runner keeps binaries, tickets and step folders on it.
    pub work_dir: String,
    /// Steps running on it at once, at most.
    pub max_concurrent: Option<u32>,
    /// ssh's connect timeout (default 15 s).
    pub connect_timeout: Option<Duration>,
    /// ssh's keepalive interval (default 5 s).
    pub keepalive_interval: Option<Duration>,
    /// Missed keepalives before the connection counts as lost (default 3).
    pub keepalive_count_max: Option<u32>,
    /// Where each key was written.
    pub written: BTreeMap<String, Written>,
}

impl HostDef {
    /// How it is reached, in words: `ssh tm-admin@lyncfe01:22, work dir C:/...`.
    pub fn describe(&self) -> String {
        match self.transport {
            Transport::Ssh => format!(
                "ssh {}@{}:{}, work dir {}",
                self.user, self.address, self.port, self.work_dir
            ),
            Transport::Local => format!(
                "local stand-in (this machine through the ticket runner), work dir {}",
                self.work_dir
            ),
        }
    }
}

/// Where a step runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// On the coordinator (no `host`).
    Coordinator,
    /// On one host.
    One(String),
    /// One instance per host (`hosts = [..]`), `STEP@HOST`.
    Fan(Vec<String>),
    /// Not on this site (an empty `hosts` list, or a reference to a site
    /// table that does not exist); why, in words.
    Absent(String),
}

/// What host values may refer to.
pub struct Scope<'a> {
    /// The plan file.
    pub plan_path: &'a Path,
    /// Its text.
    pub plan_text: &'a str,
    /// The site file: path, text, values by dotted path.
    pub site: Option<(&'a Path, &'a str, &'a BTreeMap<String, toml::Value>)>,
    /// Resolves vars and site values (secrets and outputs as placeholders).
    pub resolver: &'a dyn Resolver,
    /// Whether a `${vars.x}` exists.
    pub has_var: &'a dyn Fn(&str) -> bool,
}

impl Scope<'_> {
    fn site_values(&self) -> Option<&BTreeMap<String, toml::Value>> {
        self.site.map(|(_, _, v)| v)
    }

    fn locate(&self, w: &Written, message: String, hint: Option<String>) -> PlanError {
        let table: Vec<&str> = w.table.iter().map(String::as_str).collect();
        match (w.in_site, self.site) {
            (true, Some((path, text, _))) => {
                locate_key(path, text, &table, Some(&w.key), message, hint)
            }
            _ => locate_key(
                self.plan_path,
                self.plan_text,
                &table,
                Some(&w.key),
                message,
                hint,
            ),
        }
    }
}

/// Whether a name can be a host's name: letters, digits, `_`, `-` (it
/// becomes part of step ids and ticket folders).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The id of a fanned-out step's instance on `host`.
pub fn instance_id(step: &str, host: &str) -> String {
    format!("{step}{INSTANCE_SEP}{host}")
}

/// `${host}` in a step's parameters: the name of the host it runs on
/// (`$${host}` is a literal `${host}`). Replaced before any other
/// reference is resolved, so it can name a site key:
/// `${site.certificates.thumbprints.${host}}`.
pub const HOST_REF: &str = "${host}";

/// Whether a table mentions `${host}`.
pub fn mentions_host(t: &toml::Table) -> bool {
    fn value(v: &toml::Value) -> bool {
        match v {
            toml::Value::String(s) => replace_host(s, "").is_some(),
            toml::Value::Array(a) => a.iter().any(value),
            toml::Value::Table(t) => t.values().any(value),
            _ => false,
        }
    }
    t.values().any(value)
}

/// The table with `${host}` replaced by `host` in every string.
pub fn substitute_host(t: &toml::Table, host: &str) -> toml::Table {
    fn value(v: &toml::Value, host: &str) -> toml::Value {
        match v {
            toml::Value::String(s) => {
                toml::Value::String(replace_host(s, host).unwrap_or_else(|| s.clone()))
            }
            toml::Value::Array(a) => toml::Value::Array(a.iter().map(|v| value(v, host)).collect()),
            toml::Value::Table(t) => toml::Value::Table(substitute_host(t, host)),
            other => other.clone(),
        }
    }
    t.iter().map(|(k, v)| (k.clone(), value(v, host))).collect()
}

/// `s` with every `${host}` (not `$${host}`) replaced, or `None` if it
/// has none.
fn replace_host(s: &str, host: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = s;
    let mut any = false;
    while let Some(at) = rest.find(HOST_REF) {
        let escaped = rest[..at].ends_with('$');
        out.push_str(&rest[..at]);
        if escaped {
            out.push_str(HOST_REF);
        } else {
            out.push_str(host);
            any = true;
        }
        rest = &rest[at + HOST_REF.len()..];
    }
    out.push_str(rest);
    any.then_some(out)
}

/// One value of a host before typing, and where it was written.
struct RawValue {
    value: toml::Value,
    written: Written,
    /// From the plan (references are substituted), or a literal site value.
    from_plan: bool,
}

/// Parses the plan's `hosts` (a table, or a reference to the site's).
pub fn parse(
    raw: Option<&Spanned<toml::Value>>,
    loc: &Locator<'_>,
    scope: &Scope<'_>,
    errors: &mut Vec<PlanError>,
) -> BTreeMap<String, HostDef> {
    let Some(raw) = raw else {
        return BTreeMap::new();
    };
    let mut merged: BTreeMap<String, BTreeMap<String, RawValue>> = BTreeMap::new();
    let include = |reference: &str,
                   span: Range<usize>,
                   merged: &mut BTreeMap<String, BTreeMap<String, RawValue>>,
                   errors: &mut Vec<PlanError>| {
        let Some(path) = site_reference(reference) else {
            errors.push(loc.at(
                span,
                format!("hosts: `{reference}` is not a reference to a table of the site file"),
                Some("write hosts = \"${site.hosts}\" (the site file lists [hosts.<name>] tables)".into()),
            ));
            return;
        };
        let Some(values) = scope.site_values() else {
            errors.push(loc.at(
                span,
                format!("hosts: `${{site.{path}}}`, but the plan has no site file"),
                Some("add `site = \"sites/<customer>.toml\"` at the top of the plan, or give --site FILE".into()),
            ));
            return;
        };
        match values.get(&path) {
            Some(toml::Value::Table(t)) => {
                for (name, host) in t {
                    let toml::Value::Table(keys) = host else {
                        errors.push(scope.locate(
                            &Written {
                                in_site: true,
                                table: path.split('.').map(str::to_string).collect(),
                                key: name.clone(),
                            },
                            format!("site {path}.{name} is not a table of host settings"),
                            Some(format!(
                                "write [{path}.{name}] with transport, address, user, ..."
                            )),
                        ));
                        continue;
                    };
                    let table: Vec<String> = path
                        .split('.')
                        .map(str::to_string)
                        .chain(std::iter::once(name.clone()))
                        .collect();
                    let slot = merged.entry(name.clone()).or_default();
                    for (k, v) in keys {
                        slot.insert(
                            k.clone(),
                            RawValue {
                                value: v.clone(),
                                written: Written {
                                    in_site: true,
                                    table: table.clone(),
                                    key: k.clone(),
                                },
                                from_plan: false,
                            },
                        );
                    }
                }
            }
            Some(_) => errors.push(loc.at(
                span,
                format!("hosts: site value `{path}` is not a table of hosts"),
                Some("the site file lists its machines as [hosts.<name>] tables".into()),
            )),
            None => errors.push(loc.at(
                span,
                format!("hosts: the site file has no `{path}`"),
                Some("list the site's machines in the site file as [hosts.<name>] tables".into()),
            )),
        }
    };
    match raw.get_ref() {
        toml::Value::String(s) => include(s, raw.span(), &mut merged, errors),
        toml::Value::Table(t) => {
            if let Some(v) = t.get(INCLUDE_KEY) {
                match v {
                    toml::Value::String(s) => {
                        let span = loc.find_in(raw.span(), s);
                        include(s, span, &mut merged, errors)
                    }
                    _ => errors.push(loc.at(
                        loc.find_key(raw.span(), INCLUDE_KEY),
                        "hosts.include must be a reference to the site's hosts",
                        Some("write include = \"${site.hosts}\"".into()),
                    )),
                }
            }
            for (name, v) in t {
                if name == INCLUDE_KEY {
                    continue;
                }
                let keys = match v {
                    toml::Value::Table(keys) => keys,
                    _ => {
                        errors.push(locate_key(
                            scope.plan_path,
                            scope.plan_text,
                            &["hosts"],
                            Some(name),
                            format!("hosts.{name} must be a table of host settings"),
                            Some(format!("write [hosts.{name}] with transport, address, user, identity_file, known_hosts_file, work_dir")),
                        ));
                        continue;
                    }
                };
                let slot = merged.entry(name.clone()).or_default();
                for (k, v) in keys {
                    slot.insert(
                        k.clone(),
                        RawValue {
                            value: v.clone(),
                            written: Written {
                                in_site: false,
                                table: vec!["hosts".into(), name.clone()],
                                key: k.clone(),
                            },
                            from_plan: true,
                        },
                    );
                }
            }
        }
        _ => errors.push(loc.at(
            raw.span(),
            "hosts must be a table ([hosts.<name>]) or a reference to the site's hosts",
            Some("write hosts = \"${site.hosts}\", or [hosts.<name>] tables".into()),
        )),
    }
    let mut out = BTreeMap::new();
    for (name, values) in merged {
        if let Some(h) = host(&name, values, scope, errors) {
            out.insert(name, h);
        }
    }
    out
}

/// The dotted path of a string that is exactly `${site.PATH}`.
fn site_reference(s: &str) -> Option<String> {
    let inner = s.trim().strip_prefix("${")?.strip_suffix('}')?;
    match refs::refs_in(s).ok()?.as_slice() {
        [Ref::Site(p)] if inner.trim() == format!("site.{p}") => Some(p.clone()),
        _ => None,
    }
}

/// Types one host's values.
fn host(
    name: &str,
    mut values: BTreeMap<String, RawValue>,
    scope: &Scope<'_>,
    errors: &mut Vec<PlanError>,
) -> Option<HostDef> {
    let before = errors.len();
    let first = values.values().next().map(|v| v.written.clone());
    let header = Written {
        in_site: first.as_ref().is_some_and(|w| w.in_site),
        table: first
            .as_ref()
            .map(|w| w.table.clone())
            .unwrap_or_else(|| vec!["hosts".into(), name.into()]),
        key: String::new(),
    };
    if !valid_name(name) || name == INCLUDE_KEY {
        errors.push(scope.locate(
            &header,
            format!("host name `{name}` must be letters, digits, `_` and `-` (and not `include`)"),
            Some("host names become part of step ids (STEP@HOST) and folder names".into()),
        ));
        return None;
    }
    // Unknown keys, and references in plan values.
    let mut resolved: BTreeMap<String, (toml::Value, Written)> = BTreeMap::new();
    for (k, rv) in std::mem::take(&mut values) {
        if !HOST_KEYS.contains(&k.as_str()) {
            errors.push(scope.locate(
                &rv.written,
                format!("host `{name}`: unknown key `{k}`"),
                Some(did_you_mean(&k, HOST_KEYS.iter().copied(), "host keys")),
            ));
            continue;
        }
        let value = if rv.from_plan {
            match resolve_value(&rv.value, scope) {
                Ok(v) => v,
                Err(message) => {
                    errors.push(scope.locate(
                        &rv.written,
                        format!("host `{name}`, {k}: {message}"),
                        Some("host settings may refer to ${site...} and ${vars...} values".into()),
                    ));
                    continue;
                }
            }
        } else {
            rv.value
        };
        resolved.insert(k, (value, rv.written));
    }
    let at = |k: &str| {
        resolved
            .get(k)
            .map(|(_, w)| w.clone())
            .unwrap_or_else(|| header.clone())
    };
    let text = |k: &str, errors: &mut Vec<PlanError>| -> Option<String> {
        match resolved.get(k) {
            None => None,
            Some((toml::Value::String(s), _)) if !s.trim().is_empty() => Some(s.trim().to_string()),
            Some((_, w)) => {
                errors.push(scope.locate(
                    w,
                    format!("host `{name}`: {k} must be a non-empty string"),
                    None,
                ));
                None
            }
        }
    };
    let number = |k: &str, min: i64, max: i64, errors: &mut Vec<PlanError>| -> Option<i64> {
        let (v, w) = resolved.get(k)?;
        let n = match v {
            toml::Value::Integer(n) => Some(*n),
            toml::Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        match n {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                errors.push(scope.locate(
                    w,
                    format!("host `{name}`: {k} must be a whole number from {min} to {max}"),
                    None,
                ));
                None
            }
        }
    };
    let duration = |k: &str, errors: &mut Vec<PlanError>| -> Option<Duration> {
        let s = text(k, errors)?;
        match upshift_steps::params::parse_duration(&s) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                errors.push(scope.locate(
                    &at(k),
                    format!("host `{name}`: {k} must be above 0"),
                    None,
                ));
                None
            }
            Err(m) => {
                errors.push(scope.locate(&at(k), format!("host `{name}`: {k}: {m}"), None));
                None
            }
        }
    };
    let transport = match text("transport", errors).as_deref() {
        None | Some("ssh") => Transport::Ssh,
        Some("local") => Transport::Local,
        Some(other) => {
            errors.push(scope.locate(
                &at("transport"),
                format!("host `{name}`: transport = \"{other}\" is not a transport"),
                Some("use \"ssh\" (the system OpenSSH client) or \"local\" (this machine, a stand-in)".into()),
            ));
            Transport::Ssh
        }
    };
    let address = text("address", errors);
    let user = text("user", errors);
    let identity = text("identity_file", errors);
    let known_hosts = text("known_hosts_file", errors);
    let work_dir = text("work_dir", errors);
    let port = number("port", 1, 65535, errors).unwrap_or(22) as u16;
    let max_concurrent =
        number("max_concurrent", 1, HOST_CONCURRENCY_MAX as i64, errors).map(|n| n as u32);
    let keepalive_count_max = number("keepalive_count_max", 1, 100, errors).map(|n| n as u32);
    let connect_timeout = duration("connect_timeout", errors);
    let keepalive_interval = duration("keepalive_interval", errors);
    let mut missing = Vec::new();
    if work_dir.is_none() {
        missing.push("work_dir");
    }
    if transport == Transport::Ssh {
        for (k, v) in [
            ("address", &address),
            ("user", &user),
            ("identity_file", &identity),
            ("known_hosts_file", &known_hosts),
        ] {
            if v.is_none() {
                missing.push(k);
            }
        }
    } else {
        for k in ["address", "user", "identity_file", "known_hosts_file"] {
            if resolved.contains_key(k) {
                errors.push(scope.locate(
                    &at(k),
                    format!("host `{name}`: {k} is set but the transport is \"local\""),
                    Some("a local host is this machine; remove the ssh settings or write transport = \"ssh\"".into()),
                ));
            }
        }
    }
    if !missing.is_empty() {
        errors.push(scope.locate(
            &header,
            format!(
                "host `{name}` ({}) needs {}",
                transport.word(),
                missing.join(", ")
            ),
            Some(if transport == Transport::Ssh {
                "an ssh host needs address, user, identity_file (the private key), known_hosts_file (its host key is checked against it) and work_dir (the runner's folder on the host)".into()
            } else {
                "a local host needs work_dir (the runner's folder for it)".into()
            }),
        ));
    }
    if let Some(w) = &work_dir
        && !absolute_anywhere(w)
    {
        errors.push(scope.locate(
            &at("work_dir"),
            format!("host `{name}`: work_dir `{w}` must be an absolute path on the host"),
            Some("e.g. C:/ProgramData/upshift-remote or /var/lib/upshift-remote".into()),
        ));
    }
    if errors.len() != before {
        return None;
    }
    let base = |w: &Written| -> PathBuf {
        let file = match (w.in_site, scope.site) {
            (true, Some((p, _, _))) => p,
            _ => scope.plan_path,
        };
        // Absolute, so that messages say which file and a resume in
        // another folder finds the same one.
        std::path::absolute(file)
            .ok()
            .and_then(|f| f.parent().map(Path::to_path_buf))
            .unwrap_or_default()
    };
    let path_of = |k: &str, v: Option<String>| -> PathBuf {
        match v {
            None => PathBuf::new(),
            Some(v) if absolute_anywhere(&v) => PathBuf::from(v),
            Some(v) => base(&at(k)).join(v),
        }
    };
    Some(HostDef {
        name: name.to_string(),
        transport,
        address: address.unwrap_or_default(),
        port,
        user: user.unwrap_or_default(),
        identity_file: path_of("identity_file", identity),
        known_hosts_file: path_of("known_hosts_file", known_hosts),
        work_dir: work_dir.unwrap_or_default(),
        max_concurrent,
        connect_timeout,
        keepalive_interval,
        keepalive_count_max,
        written: resolved.into_iter().map(|(k, (_, w))| (k, w)).collect(),
    })
}

/// Whether a path is absolute on some OS (`/x`, `C:/x`, `C:\x`): a plan
/// names paths of other machines.
pub fn absolute_anywhere(p: &str) -> bool {
    let b = p.as_bytes();
    p.starts_with('/')
        || p.starts_with('\\')
        || (b.len() >= 3
            && b[0].is_ascii_alphabetic()
            && b[1] == b':'
            && matches!(b[2], b'/' | b'\\'))
}

/// Substitutes a plan value's references (vars and site only).
fn resolve_value(v: &toml::Value, scope: &Scope<'_>) -> Result<toml::Value, String> {
    let toml::Value::String(s) = v else {
        return Ok(v.clone());
    };
    let found =
        refs::refs_in(s).map_err(|b| format!("bad reference `${{{}}}`: {}", b.text, b.message))?;
    for r in &found {
        match r {
            Ref::Var(n) if !(scope.has_var)(n) => {
                return Err(format!("`${{vars.{n}}}`: no variable `{n}`"));
            }
            Ref::Site(p) if scope.site_values().is_none_or(|s| !s.contains_key(p)) => {
                return Err(match scope.site {
                    None => format!("`${{site.{p}}}`, but the plan has no site file"),
                    Some((path, _, _)) => {
                        format!("`${{site.{p}}}`: {} has no `{p}`", path.display())
                    }
                });
            }
            Ref::Secret(n) => {
                return Err(format!(
                    "`${{secrets.{n}}}`: host settings are not secret and are kept in the journal; key files are named by path"
                ));
            }
            Ref::Output { .. } | Ref::Item => {
                return Err("step outputs and foreach items are not known before the run".into());
            }
            _ => {}
        }
    }
    refs::substitute_str(s, scope.resolver).map_err(|b| b.message)
}

/// Where a step runs, from its `host` and `hosts` keys.
pub fn place(
    step: &str,
    host: Option<&Spanned<String>>,
    hosts: Option<&Spanned<toml::Value>>,
    defs: &BTreeMap<String, HostDef>,
    loc: &Locator<'_>,
    scope: &Scope<'_>,
    errors: &mut Vec<PlanError>,
) -> Placement {
    let known = |name: &str, span: Range<usize>, errors: &mut Vec<PlanError>| -> bool {
        if defs.contains_key(name) {
            return true;
        }
        let hint = if defs.is_empty() {
            format!(
                "describe it: [hosts.{name}] with transport, address, user, identity_file, known_hosts_file, work_dir (a step without `host` runs on this machine)"
            )
        } else {
            did_you_mean(name, defs.keys().map(String::as_str), "hosts of this plan")
        };
        errors.push(loc.at(
            span,
            format!("step `{step}` runs on host `{name}`, which is not in [hosts]"),
            Some(hint),
        ));
        false
    };
    // A string value: its references resolved (vars and site).
    let resolve =
        |s: &str, span: Range<usize>, errors: &mut Vec<PlanError>| -> Option<toml::Value> {
            match resolve_value(&toml::Value::String(s.to_string()), scope) {
                Ok(v) => Some(v),
                Err(m) => {
                    errors.push(loc.at(span, format!("step `{step}`: {m}"), None));
                    None
                }
            }
        };
    if let (Some(_), Some(hs)) = (host, hosts) {
        errors.push(loc.at(
            hs.span(),
            format!("step `{step}` has both `host` and `hosts`"),
            Some("`host = \"NAME\"` runs it on one host; `hosts = [..]` runs one instance per host; keep one".into()),
        ));
        return Placement::Coordinator;
    }
    if let Some(h) = host {
        let span = h.span();
        return match resolve(h.get_ref(), span.clone(), errors) {
            Some(toml::Value::String(name)) if known(&name, span.clone(), errors) => {
                Placement::One(name)
            }
            Some(toml::Value::String(_)) | None => Placement::Coordinator,
            Some(other) => {
                errors.push(loc.at(
                    span,
                    format!(
                        "step `{step}`: host must name one host, not {}",
                        other.type_str()
                    ),
                    Some("for one instance per host, write hosts = [..]".into()),
                ));
                Placement::Coordinator
            }
        };
    }
    let Some(hs) = hosts else {
        return Placement::Coordinator;
    };
    let span = hs.span();
    let list: Vec<(String, Range<usize>)> = match hs.get_ref() {
        toml::Value::String(s) => {
            // A reference to a site table that does not exist: the site has
            // no such component, and the step is not on this site.
            if let Some(path) = site_reference(s)
                && let Some(values) = scope.site_values()
                && !values.contains_key(&path)
            {
                let parent = path.rsplit_once('.').map(|(p, _)| p);
                match parent {
                    Some(p) if values.contains_key(p) => {
                        errors.push(loc.at(
                            span,
                            format!("step `{step}`: the site file has `{p}` but no `{path}`"),
                            Some(format!("list the hosts: {path} = [\"host1\", ...]; or remove [{p}] if this site has no such component")),
                        ));
                        return Placement::Coordinator;
                    }
                    _ => {
                        return Placement::Absent(format!(
                            "the site file has no `{}`",
                            parent.unwrap_or(&path)
                        ));
                    }
                }
            }
            match resolve(s, span.clone(), errors) {
                Some(toml::Value::Array(items)) => items
                    .into_iter()
                    .map(|i| match i {
                        toml::Value::String(n) => Some((n, span.clone())),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()
                    .unwrap_or_else(|| {
                        errors.push(loc.at(
                            span.clone(),
                            format!("step `{step}`: hosts must be a list of host names"),
                            None,
                        ));
                        Vec::new()
                    }),
                Some(toml::Value::String(n)) => vec![(n, span.clone())],
                Some(other) => {
                    errors.push(loc.at(
                        span.clone(),
                        format!(
                            "step `{step}`: hosts must be a list of host names, not {}",
                            other.type_str()
                        ),
                        None,
                    ));
                    return Placement::Coordinator;
                }
                None => return Placement::Coordinator,
            }
        }
        toml::Value::Array(items) => {
            let mut out = Vec::new();
            for i in items {
                match i {
                    toml::Value::String(s) => {
                        let at = loc.find_in(span.clone(), s);
                        match resolve(s, at.clone(), errors) {
                            Some(toml::Value::String(n)) => out.push((n, at)),
                            Some(toml::Value::Array(more)) => {
                                for m in more {
                                    if let toml::Value::String(n) = m {
                                        out.push((n, at.clone()));
                                    }
                                }
                            }
                            Some(_) => errors.push(loc.at(
                                at,
                                format!("step `{step}`: hosts must be a list of host names"),
                                None,
                            )),
                            None => {}
                        }
                    }
                    _ => errors.push(loc.at(
                        span.clone(),
                        format!("step `{step}`: hosts must be a list of host names"),
                        None,
                    )),
                }
            }
            out
        }
        other => {
            errors.push(loc.at(
                span,
                format!("step `{step}`: hosts must be a list of host names, not {}", other.type_str()),
                Some("write hosts = [\"tm01\", \"tm02\"] or hosts = \"${site.components.ICH.hosts}\"".into()),
            ));
            return Placement::Coordinator;
        }
    };
    let mut names: Vec<String> = Vec::new();
    let mut ok = true;
    for (n, at) in list {
        if !known(&n, at.clone(), errors) {
            ok = false;
        } else if names.contains(&n) {
            errors.push(loc.at(at, format!("step `{step}` lists host `{n}` twice"), None));
            ok = false;
        } else {
            names.push(n);
        }
    }
    if !ok {
        return Placement::Coordinator;
    }
    if names.is_empty() {
        return Placement::Absent("its hosts list is empty".into());
    }
    Placement::Fan(names)
}

/// Key files of ssh hosts that cannot be read, located where they are
/// named (plan or site file). Read where a plan is checked or run, not
/// when it is parsed (support reads a run's plan without the keys).
pub fn host_file_problems(
    hosts: &BTreeMap<String, HostDef>,
    plan_path: &Path,
    plan_text: &str,
    site: Option<(&Path, &str)>,
) -> Vec<PlanError> {
    let mut out = Vec::new();
    for h in hosts.values() {
        if h.transport != Transport::Ssh {
            continue;
        }
        for (key, path) in [
            ("identity_file", &h.identity_file),
            ("known_hosts_file", &h.known_hosts_file),
        ] {
            if let Err(e) = std::fs::File::open(path) {
                let w = h.written.get(key).cloned().unwrap_or(Written {
                    in_site: false,
                    table: vec!["hosts".into(), h.name.clone()],
                    key: key.into(),
                });
                let table: Vec<&str> = w.table.iter().map(String::as_str).collect();
                let (file, text) = match (w.in_site, site) {
                    (true, Some(s)) => s,
                    _ => (plan_path, plan_text),
                };
                out.push(locate_key(
                    file,
                    text,
                    &table,
                    Some(&w.key),
                    format!("host `{}`: {key} {} cannot be read: {e}", h.name, path.display()),
                    Some(if key == "identity_file" {
                        "give the private key upshift logs in with (ssh-keygen -t ed25519 -f FILE makes one)".into()
                    } else {
                        "give a known_hosts file holding the host's key (ssh-keyscan, then compare the fingerprint with the host's own)".into()
                    }),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::plan::{LoadOptions, Plan, PlanErrors, SiteSource, parse};

    fn load(plan: &str, site: Option<&str>) -> Result<Plan, PlanErrors> {
        let opts = LoadOptions {
            site: match site {
                Some(text) => SiteSource::Pinned {
                    path: "/sites/s.toml".into(),
                    text: text.into(),
                },
                None => SiteSource::FromPlan,
            },
            ..LoadOptions::default()
        };
        parse(
            "/plans/p.toml".as_ref(),
            plan,
            &upshift_steps::registry(),
            &opts,
        )
    }

    fn errors(plan: &str, site: Option<&str>) -> String {
        match load(plan, site) {
            Ok(_) => panic!("the plan should be refused"),
            Err(e) => e.to_string(),
        }
    }

    const THREE: &str = r#"
name = "three"
[hosts.a]
transport = "ssh"
address = "10.0.0.1"
user = "corp\\tm-admin"
identity_file = "keys/id_ed25519"
known_hosts_file = "/etc/upshift/known_hosts"
work_dir = "C:/ProgramData/upshift-remote"
max_concurrent = 2
[hosts.b]
address = "10.0.0.2"
port = 2222
user = "u"
identity_file = "/k"
known_hosts_file = "/kh"
work_dir = "/var/lib/upshift"
[hosts.c]
transport = "local"
work_dir = "/tmp/c"
"#;

    fn step(id: &str, extra: &str) -> String {
        format!("[steps.{id}]\nkind = \"sleep\"\n{extra}\nwith = {{ duration = \"0s\" }}\n")
    }

    #[test]
    fn hosts_and_a_step_on_each() {
        let text = format!(
            "{THREE}{}{}{}{}",
            step("x", "host = \"a\""),
            step("y", "host = \"b\""),
            step("z", "host = \"c\""),
            step("here", "")
        );
        let p = load(&text, None).unwrap();
        assert_eq!(p.hosts.len(), 3);
        let a = &p.hosts["a"];
        assert_eq!(a.transport, super::Transport::Ssh, "ssh is the default");
        assert_eq!(a.port, 22);
        assert_eq!(a.user, "corp\\tm-admin");
        assert_eq!(a.max_concurrent, Some(2));
        assert_eq!(
            a.identity_file,
            std::path::Path::new("/plans/keys/id_ed25519"),
            "relative to the plan file"
        );
        assert_eq!(p.hosts["b"].port, 2222);
        assert_eq!(p.hosts["c"].transport, super::Transport::Local);
        assert_eq!(p.steps["x"].host.as_deref(), Some("a"));
        assert_eq!(p.steps["z"].host.as_deref(), Some("c"));
        assert_eq!(p.steps["here"].host, None, "no host: the coordinator");
    }

    #[test]
    fn hosts_from_the_site_file_extended_by_the_plan() {
        let site = r#"
[hosts.tm01]
address = "tm01.corp"
user = "u"
identity_file = "k/id"
known_hosts_file = "/kh"
work_dir = "C:/up"
[hosts.lync]
address = "lync.corp"
user = "u"
identity_file = "/id"
known_hosts_file = "/kh"
work_dir = "C:/up"
[components.SMD]
host = "lync"
"#;
        let whole = format!(
            "name = \"p\"\nhosts = \"${{site.hosts}}\"\n{}",
            step("smd", "host = \"${site.components.SMD.host}\"")
        );
        let p = load(&whole, Some(site)).unwrap();
        assert_eq!(p.hosts.keys().collect::<Vec<_>>(), ["lync", "tm01"]);
        assert_eq!(
            p.hosts["tm01"].identity_file,
            std::path::Path::new("/sites/k/id"),
            "relative to the site file"
        );
        assert_eq!(p.steps["smd"].host.as_deref(), Some("lync"));

        let extended = format!(
            "name = \"p\"\n[hosts]\ninclude = \"${{site.hosts}}\"\n[hosts.lync]\nport = 2200\n[hosts.extra]\ntransport = \"local\"\nwork_dir = \"/w\"\n{}{}",
            step("s", "host = \"extra\""),
            step("smd", "host = \"${site.components.SMD.host}\"")
        );
        let p = load(&extended, Some(site)).unwrap();
        assert_eq!(p.hosts.len(), 3);
        assert_eq!(p.hosts["lync"].port, 2200, "the plan's key overrides");
        assert_eq!(
            p.hosts["lync"].address, "lync.corp",
            "the site's others stay"
        );
    }

    #[test]
    fn fan_out_pairs_instances_by_host() {
        let text = format!(
            "{THREE}{}{}{}{}{}",
            step("install", "hosts = [\"a\", \"b\"]"),
            step("start", "hosts = [\"a\", \"b\"]\nneeds = [\"install\"]"),
            step("cleanup", "host = \"a\"\nneeds = [\"start\"]"),
            step("prep", ""),
            step(
                "all",
                "hosts = [\"b\", \"c\"]\nneeds = [\"prep\", \"install\"]"
            ),
        );
        let p = load(&text, None).unwrap();
        let needs = |id: &str| p.steps[id].needs.clone();
        assert!(p.steps.contains_key("install@a") && p.steps.contains_key("install@b"));
        assert!(!p.steps.contains_key("install"));
        assert_eq!(needs("start@a"), ["install@a"]);
        assert_eq!(needs("start@b"), ["install@b"]);
        assert_eq!(
            needs("cleanup"),
            ["start@a", "start@b"],
            "a single step needs every instance"
        );
        assert_eq!(needs("all@b"), ["install@b", "prep"]);
        assert_eq!(
            needs("all@c"),
            ["install@a", "install@b", "prep"],
            "no instance on its host: every instance"
        );
        assert_eq!(p.steps["start@b"].host.as_deref(), Some("b"));
        assert_eq!(p.steps["start@b"].instance_of.as_deref(), Some("start"));
        assert_eq!(p.fanned["install"], ["a", "b"]);
    }

    #[test]
    fn outputs_of_a_fanned_out_step_come_from_the_same_host() {
        let text = format!(
            "{THREE}[steps.probe]\nkind = \"process\"\nhosts = [\"a\", \"b\"]\nwith = {{ program = \"hostname\" }}\n[steps.use]\nkind = \"process\"\nhosts = [\"a\", \"b\"]\nwith = {{ program = \"echo\", args = [\"${{steps.probe.outputs.stdout}}\"] }}\n"
        );
        let p = load(&text, None).unwrap();
        assert_eq!(
            p.steps["use@b"].needs.iter().collect::<Vec<_>>(),
            ["probe@b"]
        );
        let mut state = crate::state::RunState::default();
        for (i, (s, out)) in [("probe@a", "host-a"), ("probe@b", "host-b")]
            .iter()
            .enumerate()
        {
            state.apply(&upshift_journal::Envelope {
                run: upshift_journal::RunId::new(),
                seq: i as u64,
                time: chrono::Utc::now(),
                event: upshift_journal::Event::StepSucceeded {
                    step: s.to_string(),
                    attempt: 1,
                    outputs: [("stdout".to_string(), out.to_string())].into(),
                    output_tail: String::new(),
                    reboot_required: false,
                },
            });
        }
        let with = &p.steps["use@b"].body.with;
        let r = crate::state::resolve_with(&p, Some("use@b"), with, &Default::default(), &state)
            .unwrap();
        assert_eq!(r["args"].as_array().unwrap()[0].as_str(), Some("host-b"));

        let single = format!(
            "{THREE}[steps.probe]\nkind = \"process\"\nhosts = [\"a\", \"b\"]\nwith = {{ program = \"hostname\" }}\n[steps.use]\nkind = \"process\"\nwith = {{ program = \"echo\", args = [\"${{steps.probe.outputs.stdout}}\"] }}\n"
        );
        let e = errors(&single, None);
        assert!(
            e.contains("uses outputs of `probe`, which runs on several hosts"),
            "{e}"
        );
    }

    #[test]
    fn a_component_the_site_does_not_have_is_not_in_the_run() {
        let site = "[components.FE]\nhosts = [\"a\"]\n[components.EMPTY]\nhosts = []\n[components.BAD]\nport = 1\n";
        let text = format!(
            "{THREE}{}{}{}{}",
            step("ich_install", "hosts = \"${site.components.ICH.hosts}\""),
            step(
                "ich_start",
                "hosts = \"${site.components.ICH.hosts}\"\nneeds = [\"ich_install\"]"
            ),
            step("none", "hosts = \"${site.components.EMPTY.hosts}\""),
            step(
                "fe",
                "hosts = \"${site.components.FE.hosts}\"\nneeds = [\"ich_start\", \"none\"]"
            ),
        ) + "[steps.ich_config]\nkind = \"process\"\nhosts = \"${site.components.ICH.hosts}\"\nwith = { program = \"${site.components.ICH.config}\" }\n";
        // (A site key no one reads is an error: BAD is read below only.)
        let p = load(
            &text,
            Some(&site.replace("[components.BAD]\nport = 1\n", "")),
        )
        .unwrap();
        assert_eq!(
            p.absent.keys().collect::<Vec<_>>(),
            ["ich_config", "ich_install", "ich_start", "none"],
            "an absent step's own site values are not looked for"
        );
        assert!(
            p.absent["ich_start"].contains("components.ICH"),
            "{:?}",
            p.absent
        );
        assert!(
            p.steps["fe@a"].needs.is_empty(),
            "absent steps are not waited for"
        );
        assert_eq!(p.order, ["fe@a"]);

        let bad = format!(
            "{THREE}{}",
            step("x", "hosts = \"${site.components.BAD.hosts}\"")
        );
        let e = errors(&bad, Some(site));
        assert!(
            e.contains("has `components.BAD` but no `components.BAD.hosts`"),
            "{e}"
        );
    }

    #[test]
    fn check_names_the_line_of_every_host_problem() {
        let e = errors(&format!("{THREE}{}", step("x", "host = \"nope\"")), None);
        assert!(
            e.contains(
                "/plans/p.toml:23:8: error: step `x` runs on host `nope`, which is not in [hosts]"
            ),
            "{e}"
        );

        let e = errors(
            "name = \"p\"\n[hosts.a]\naddress = \"h\"\nwork_dir = \"/w\"\n[steps.x]\nkind = \"sleep\"\nhost = \"a\"\nwith = { duration = \"0s\" }\n",
            None,
        );
        assert!(
            e.contains(
                "p.toml:2:1: error: host `a` (ssh) needs user, identity_file, known_hosts_file"
            ),
            "{e}"
        );

        let e = errors(
            &format!("{THREE}{}", step("x", "host = \"a\"\nhosts = [\"b\"]")),
            None,
        );
        assert!(e.contains("step `x` has both `host` and `hosts`"), "{e}");

        let e = errors(&format!("{THREE}{}", step("\"x@a\"", "")), None);
        assert!(e.contains("step id `x@a` has `@`"), "{e}");

        let e = errors(
            &format!(
                "{THREE}{}{}",
                step("x", "hosts = [\"a\"]"),
                step("y", "needs = [\"x@a\"]")
            ),
            None,
        );
        assert!(
            e.contains("needs `x@a`: instances are not named by hand"),
            "{e}"
        );

        let e = errors(
            "name = \"p\"\n[secrets]\npw = { env = \"PW\" }\n[hosts.a]\ntransport = \"telnet\"\nwork_dir = \"${secrets.pw}\"\nmax_concurent = 2\n[steps.x]\nkind = \"sleep\"\nwith = { duration = \"0s\" }\n",
            None,
        );
        assert!(
            e.contains("p.toml:5:1: error: host `a`: transport = \"telnet\" is not a transport"),
            "{e}"
        );
        assert!(
            e.contains("p.toml:6:1: error: host `a`, work_dir: `${secrets.pw}`"),
            "{e}"
        );
        assert!(
            e.contains("p.toml:7:1: error: host `a`: unknown key `max_concurent`"),
            "{e}"
        );
        assert!(e.contains("did you mean `max_concurrent`?"), "{e}");

        let e = errors(
            "name = \"p\"\n[hosts.a]\ntransport = \"local\"\nwork_dir = \"relative\"\n[steps.x]\nkind = \"sleep\"\nwith = { duration = \"0s\" }\n",
            None,
        );
        assert!(
            e.contains("p.toml:4:1: error: host `a`: work_dir `relative` must be an absolute path"),
            "{e}"
        );
    }

    #[test]
    fn key_files_that_cannot_be_read_are_named_where_they_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id");
        std::fs::write(&key, "k").unwrap();
        let plan = format!(
            "name = \"p\"\n[hosts]\ninclude = \"${{site.hosts}}\"\n[hosts.a]\naddress = \"h\"\nuser = \"u\"\nidentity_file = \"{}\"\nknown_hosts_file = \"/no/such/known_hosts\"\nwork_dir = \"/w\"\n[steps.x]\nkind = \"sleep\"\nwith = {{ duration = \"0s\" }}\n",
            key.display()
        );
        let site = "[hosts.b]\naddress = \"h\"\nuser = \"u\"\nidentity_file = \"/no/such/id\"\nknown_hosts_file = \"/no/such/kh\"\nwork_dir = \"/w\"\n";
        let p = load(&plan, Some(site)).unwrap();
        let problems = crate::plan::PlanErrors(p.host_file_problems()).to_string();
        assert!(problems.contains("/plans/p.toml:8:1: error: host `a`: known_hosts_file /no/such/known_hosts cannot be read"), "{problems}");
        assert!(
            problems.contains(
                "/sites/s.toml:4:1: error: host `b`: identity_file /no/such/id cannot be read"
            ),
            "{problems}"
        );
        assert!(
            problems.contains("/sites/s.toml:5:1: error: host `b`: known_hosts_file"),
            "{problems}"
        );
        assert!(!problems.contains("host `a`: identity_file"), "{problems}");
    }

    #[test]
    fn host_names_the_instance_host_even_inside_a_site_path() {
        let site = "[certificates.thumbprints]\na = \"thumb-a\"\nb = \"thumb-b\"\n";
        let text = format!(
            "{THREE}[steps.cert]\nkind = \"process\"\nhosts = [\"a\", \"b\"]\nwith = {{ program = \"echo\", args = [\"${{site.certificates.thumbprints.${{host}}}}\", \"on ${{host}}\", \"$${{host}}\"] }}\n"
        );
        let p = load(&text, Some(site)).unwrap();
        let args = |id: &str| {
            crate::state::resolve_with(
                &p,
                Some(id),
                &p.steps[id].body.with,
                &Default::default(),
                &Default::default(),
            )
            .unwrap()["args"]
                .clone()
        };
        assert_eq!(
            args("cert@b").to_string(),
            r#"["thumb-b", "on b", "${host}"]"#
        );
        assert_eq!(
            args("cert@a").as_array().unwrap()[0].as_str(),
            Some("thumb-a")
        );

        let e = errors(
            &format!(
                "{THREE}[steps.cert]\nkind = \"process\"\nhosts = [\"a\", \"c\"]\nwith = {{ program = \"${{site.certificates.thumbprints.${{host}}}}\" }}\n"
            ),
            Some(site),
        );
        assert!(
            e.contains("has no `certificates.thumbprints.c`"),
            "checked for every host: {e}"
        );
        assert!(!e.contains("has no `certificates.thumbprints.a`"), "{e}");
        let e = errors(
            &format!(
                "{THREE}[steps.y]\nkind = \"process\"\nwith = {{ program = \"${{host}}\" }}\n"
            ),
            None,
        );
        assert!(
            e.contains("`${host}` in `with` of step `y`, which runs on no host"),
            "{e}"
        );
    }

    #[test]
    fn locks_count_per_host_unless_site_wide() {
        let text = format!(
            "{THREE}[locks]\nmsiexec = 1\ndb = {{ limit = 2, scope = \"site\" }}\n{}",
            step("x", "host = \"a\"\nlocks = [\"msiexec\", \"db\"]")
        );
        let p = load(&text, None).unwrap();
        assert_eq!(p.lock_limit("db"), 2);
        assert_eq!(p.lock_scope("db", Some("a")), crate::plan::LockScope::Site);
        assert_eq!(
            p.lock_scope("msiexec", Some("a")),
            crate::plan::LockScope::Host(Some("a"))
        );
        let e = errors(
            &format!(
                "{THREE}[locks]\ndb = {{ limit = 2, scope = \"world\" }}\n{}",
                step("x", "")
            ),
            None,
        );
        assert!(
            e.contains("lock `db`: scope must be \"host\" or \"site\""),
            "{e}"
        );
    }
}
