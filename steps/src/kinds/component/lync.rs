//! `lync.conferencing_policy`: grants the conferencing policy
//! `Tag:LucsService` to each connector endpoint, as the manual's script
//! does (`Get-CsTrustedApplicationEndpoint <sip> | Grant-CsConferencingPolicy
//! -PolicyName "Tag:LucsService"`), before the updated ICH service starts.
//!
//! Each address is checked (`sip:` + user@domain) when the plan is loaded.
//! One PowerShell run per connector, through the `powershell` kind's safe
//! argument passing (the address is a parameter of a fixed script, never
//! script text). A checkpoint after each connector lists the ones done; a
//! resumed run skips them. Granting a policy twice is harmless, so a
//! connector in flight when the engine died is simply granted again.
//!
//! Parameters: `connectors` (list of SIP addresses), `policy` (default
//! `Tag:LucsService`), `module` (optional module to import first, e.g.
//! `SkypeForBusiness`; by default the cmdlets autoload), `program`
//! (PowerShell override). Outputs: `granted` (count this run), `skipped`
//! (count done by an earlier attempt), `connectors` (comma list).
//! Probe: unknown (reading back each endpoint's policy is not implemented).

use std::collections::BTreeSet;

use serde::Deserialize;

use super::powershell::{self, Invocation};
use super::{decode_lines, encode_lines};
use crate::kinds::KindFn;
use crate::{Outputs, ParamError, Step, StepContext, StepError, StepOutcome, parse_params};

/// The `lync.conferencing_policy` kind.
pub const KIND: KindFn = KindFn {
    name: "lync.conferencing_policy",
    summary: "grant Tag:LucsService to each connector SIP address (Grant-CsConferencingPolicy)",
    build,
    local_paths: &[],
};

/// Upper bound on connectors (a guard against a wrong list).
const CONNECTORS_MAX: usize = 10_000;

/// The script run per connector; the address and policy are parameters.
pub const SCRIPT: &str = "param([string]$Sip, [string]$PolicyName, [string]$Module)\n\
$ErrorActionPreference = 'Stop'\n\
if ($Module) { Import-Module $Module }\n\
$ep = Get-CsTrustedApplicationEndpoint -Identity $Sip\n\
if (-not $ep) { throw \"no trusted application endpoint $Sip\" }\n\
$ep | Grant-CsConferencingPolicy -PolicyName $PolicyName\n\
\"granted $PolicyName to $Sip\"\n";

/// Checks a connector address: `sip:user@domain.tld`.
pub fn check_sip(sip: &str) -> Result<(), String> {
    let rest = sip
        .strip_prefix("sip:")
        .ok_or_else(|| format!("`{sip}` does not start with `sip:`"))?;
    let (user, domain) = rest
        .split_once('@')
        .ok_or_else(|| format!("`{sip}` has no `@` (sip:user@domain)"))?;
    let user_ok = !user.is_empty()
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c));
    if !user_ok {
        return Err(format!(
            "`{sip}`: the user part `{user}` may hold only letters, digits and . _ - +"
        ));
    }
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !domain_ok {
        return Err(format!("`{sip}`: `{domain}` is not a domain name"));
    }
    Ok(())
}

fn default_policy() -> String {
    "Tag:LucsService".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    connectors: Vec<String>,
    #[serde(default = "default_policy")]
    policy: String,
    module: Option<String>,
    program: Option<String>,
}

struct Lync {
    connectors: Vec<String>,
    policy: String,
    module: Option<String>,
    program: String,
}

fn build(with: &toml::Table) -> Result<Box<dyn Step>, ParamError> {
    let p: Params = parse_params(with)?;
    if p.connectors.is_empty() || p.connectors.len() > CONNECTORS_MAX {
        return Err(ParamError::field(
            "connectors",
            format!("give 1 to {CONNECTORS_MAX} connector addresses"),
        )
        .hint("connectors = [\"sip:lucs_agent_connector_00@SIPDomain.com\"]"));
    }
    let mut seen = BTreeSet::new();
    for c in &p.connectors {
        check_sip(c).map_err(|m| {
            ParamError::field("connectors", m).hint("write each as sip:user@domain.tld")
        })?;
        if !seen.insert(c.to_ascii_lowercase()) {
            return Err(ParamError::field(
                "connectors",
                format!("`{c}` is listed twice"),
            ));
        }
    }
    if p.policy.trim().is_empty() {
        return Err(ParamError::field("policy", "`policy` is empty"));
    }
    Ok(Box::new(Lync {
        connectors: p.connectors,
        policy: p.policy,
        module: p.module,
        program: p
            .program
            .unwrap_or_else(|| powershell::default_program().to_string()),
    }))
}

fn list_hash(items: &[String]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(items.join("\n").as_bytes())[..8])
}

#[async_trait::async_trait]
impl Step for Lync {
    fn describe(&self) -> Vec<String> {
        self.connectors
            .iter()
            .map(|c| {
                format!(
                    "powershell: Get-CsTrustedApplicationEndpoint {c} | Grant-CsConferencingPolicy -PolicyName \"{}\"",
                    self.policy
                )
            })
            .collect()
    }

    async fn run(&self, ctx: &dyn StepContext) -> Result<StepOutcome, StepError> {
        let hash = list_hash(&self.connectors);
        let mut done: BTreeSet<String> = BTreeSet::new();
        if let Some(cp) = ctx.resume_from() {
            let m = decode_lines(&cp);
            if m.get("list").map(String::as_str) != Some(hash.as_str()) {
                return Err(StepError::fatal(
                    "the connector list changed since the last checkpoint: resuming \
                     would skip the wrong connectors; restore the list or start a new run",
                ));
            }
            done.extend(
                m.get("done")
                    .map(|d| {
                        d.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default(),
            );
        }
        let skipped = done.len();
        let script =
            powershell::write_inline(&ctx.work_dir(), "grant-conferencing-policy", SCRIPT)?;
        let total = self.connectors.len() as u64;
        let mut granted = 0;
        for sip in &self.connectors {
            if done.contains(sip) {
                ctx.output(&format!("{sip}: done in an earlier attempt\n"));
                continue;
            }
            ctx.progress(done.len() as u64, total, sip);
            let inv = Invocation {
                program: self.program.clone(),
                script_path: script.clone(),
                named: vec![
                    ("Sip".into(), sip.clone()),
                    ("PolicyName".into(), self.policy.clone()),
                    ("Module".into(), self.module.clone().unwrap_or_default()),
                ],
                positional: Vec::new(),
            };
            let exit = powershell::run(ctx, &inv).await?;
            if exit.code != 0 {
                return Err(StepError::fatal(format!(
                    "granting {} to {sip} failed (exit {}): {} ({} of {} connectors done; \
                     a retry resumes with this one)",
                    self.policy,
                    exit.code,
                    exit.stdout_tail.trim(),
                    done.len(),
                    total
                )));
            }
            done.insert(sip.clone());
            granted += 1;
            let list: Vec<&str> = self
                .connectors
                .iter()
                .filter(|c| done.contains(*c))
                .map(String::as_str)
                .collect();
            ctx.checkpoint(
                encode_lines(&[("list", hash.clone()), ("done", list.join(","))]),
                done.len() as u64,
                total,
            )
            .await?;
        }
        let mut outputs = Outputs::new();
        outputs.insert("granted".into(), granted.to_string());
        outputs.insert("skipped".into(), skipped.to_string());
        outputs.insert("connectors".into(), self.connectors.join(","));
        Ok(StepOutcome::with_outputs(outputs))
    }
}
