//! Plans: TOML in, a validated DAG of step definitions out.
//!
//! Everything that can be known before a run is checked here, and every
//! problem is reported with the file, line and column, the offending text
//! and a hint: TOML errors, unknown kinds, bad parameters, unknown `needs`,
//! cycles (named), unresolvable references.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;
use upshift_steps::Registry;

use crate::diagnostics::{Locator, did_you_mean, suggest};
pub use crate::diagnostics::{PlanError, PlanErrors};
use crate::hosts::{self, HostDef, Placement};
use crate::refs::{self, MapResolver, Ref};
use crate::rules;
use crate::sitekeys::{self, KeyPattern};

mod chunks;
mod steps;
pub use steps::Steps;

/// What to do when a step fails for good (retries exhausted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Stop starting steps; wait for an operator (retry, skip, rollback, abort).
    #[default]
    Pause,
    /// Compensate every completed step, in reverse dependency order.
    Rollback,
    /// End the run as failed.
    Abort,
}

/// What to do with a step that was running when the engine died.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResumePolicy {
    /// Run it again from its last checkpoint.
    #[default]
    Auto,
    /// Pause and let an operator decide (`upshift approve` re-runs it).
    Ask,
}

/// Retry policy: attempts in all, and the first backoff (doubling, capped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retry).
    pub attempts: u32,
    /// Delay before the second attempt; doubles each time.
    pub backoff: Duration,
    /// Cap on the delay.
    pub backoff_max: Duration,
    /// Retry only failures the step calls transient.
    pub only_transient: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 1,
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            only_transient: false,
        }
    }
}

impl RetryPolicy {
    /// Whether a failed `attempt` is tried again (a timeout counts as
    /// transient). The one rule for "failed for good": the engine schedules
    /// retries by it and the operator notifications tell by it.
    pub fn retries(&self, attempt: u32, transient: bool) -> bool {
        attempt < self.attempts && (transient || !self.only_transient)
    }

    /// Delay before attempt `next` (2, 3, ...).
    pub fn delay_before(&self, next: u32) -> Duration {
        let exp = next.saturating_sub(2).min(20);
        self.backoff
            .saturating_mul(1u32 << exp)
            .min(self.backoff_max)
    }
}

/// A step body: a kind and its parameters (as written, references intact).
#[derive(Debug, Clone, PartialEq)]
pub struct Body {
    /// Kind name.
    pub kind: String,
    /// The `with` table.
    pub with: toml::Table,
}

/// One step of a plan.
#[derive(Debug, Clone)]
pub struct StepDef {
    /// Its id.
    pub id: String,
    /// What it runs.
    pub body: Body,
    /// Explicit `needs` plus steps whose outputs it references: sorted, no
    /// repeats (a set, without a set's per-step node).
    pub needs: Vec<String>,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Time limit of one attempt.
    pub timeout: Option<Duration>,
    /// Named locks held while it runs.
    pub locks: Vec<String>,
    /// Failure policy.
    pub on_failure: OnFailure,
    /// Policy for an interrupted attempt.
    pub resume: ResumePolicy,
    /// Body run on rollback instead of the kind's own compensation.
    pub compensate: Option<Body>,
    /// Free text for operators.
    pub description: Option<String>,
    /// The host it runs on (a `[hosts.<name>]`); `None`: the coordinator.
    pub host: Option<String>,
    /// For an instance of a fanned-out step (`STEP@HOST`), the step's id
    /// as written (`STEP`).
    pub instance_of: Option<String>,
    /// Position in the file (for stable ordering).
    pub decl: usize,
}

/// Who a lock's limit is counted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LockScope<'a> {
    /// One host (`None`: the coordinator): the default.
    Host(Option<&'a str>),
    /// The whole site (`scope = "site"`).
    Site,
}

/// Where a secret comes from. The value itself is never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// An environment variable.
    Env(String),
    /// A file (its content, trailing newline removed).
    File(PathBuf),
}

/// Secret values shorter than this are neither redacted nor looked for in
/// exports: they would match ordinary text and carry no secret.
pub const SECRET_LEN_MIN: usize = 3;
/// `--var` keys with this prefix are journaled with the run for upshift
/// itself (`upshift:demo`: the run is a demo, confined to that folder);
/// they are not plan variables.
pub const RESERVED_VAR_PREFIX: &str = "upshift:";

impl SecretRef {
    /// Where the value is read, in words: `env VAR`, `file PATH`.
    pub fn source_text(&self) -> String {
        match self {
            SecretRef::Env(var) => format!("env {var}"),
            SecretRef::File(p) => format!("file {}", p.display()),
        }
    }

    /// Reads the value of secret `name` now (a file's trailing newline is
    /// not part of it); the error says what to do and never holds a value.
    pub fn read(&self, name: &str) -> Result<String, String> {
        match self {
            SecretRef::Env(var) => std::env::var(var).map_err(|_| {
                format!("secret `{name}`: environment variable {var} is not set (set it in this shell; it is never journaled)")
            }),
            SecretRef::File(path) => std::fs::read_to_string(path)
                .map(|v| v.trim_end_matches(['\r', '\n']).to_string())
                .map_err(|e| format!("secret `{name}`: cannot read {}: {e}", path.display())),
        }
    }
}

/// A validated plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `name`.
    pub name: String,
    /// Where it was read from.
    pub path: PathBuf,
    /// The exact text.
    pub text: String,
    /// SHA-256 of the text, hex.
    pub hash: String,
    /// Variables (plan values overridden by `--var`).
    pub vars: BTreeMap<String, toml::Value>,
    /// Secret references.
    pub secrets: BTreeMap<String, SecretRef>,
    /// Lock limits (default 1 for a lock not listed), per host.
    pub locks: BTreeMap<String, u32>,
    /// Locks whose limit holds for the whole site (`scope = "site"`), not
    /// per host.
    pub site_locks: BTreeSet<String>,
    /// The machines steps run on (`[hosts.<name>]`).
    pub hosts: BTreeMap<String, HostDef>,
    /// Steps of the plan file that are not on this site (an empty or
    /// missing `hosts` list), and why.
    pub absent: BTreeMap<String, String>,
    /// Fanned-out steps (as written) and the hosts of their instances.
    pub fanned: BTreeMap<String, Vec<String>>,
    /// Connection targets (`[targets.<name>]`), references intact.
    pub targets: BTreeMap<String, toml::Table>,
    /// Steps by id.
    pub steps: Steps,
    /// Step ids in a topological order (ties broken by position in the file).
    pub order: Vec<String>,
    /// For each step (by its position in `steps`), the positions of the
    /// steps that need it directly (the reverse edges), in plan order.
    dependents: Vec<Box<[u32]>>,
    /// The site file, if the plan has one.
    pub site: Option<Site>,
    /// Reboot policy.
    pub reboot: RebootPolicy,
    /// `[notify]`, if the plan has one.
    pub notify: Option<Notify>,
    /// Files and folders on this machine that steps name, resolved
    /// (see [`LocalPathUse`]).
    pub local_paths: Vec<LocalPathUse>,
}

/// A file or folder on this machine that a step's parameter names
/// ([`upshift_steps::LocalPath`]), resolved relative to the file that
/// names it: the plan file (its own text, its `[vars]`), the site file, or
/// the current folder (`--var`, like any path on the command line).
#[derive(Debug, Clone)]
pub struct LocalPathUse {
    /// The step (as written).
    pub step: String,
    /// The parameter.
    pub field: &'static str,
    /// The path the run uses.
    pub path: PathBuf,
    /// A folder (else a file).
    pub dir: bool,
    /// It must exist before the run.
    pub must_exist: bool,
    /// Where the value is written (file, line; message and hint empty).
    pub written: PlanError,
    /// What the path was relative to, in words (`None`: it was absolute).
    pub relative_to: Option<String>,
    /// A relative `--var` the value starts with, and that var made
    /// absolute (what a run pins, so that a resume started in another
    /// folder uses the same path).
    pub cli_var: Option<(String, String)>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    /// Required; optional here so that a piece of a large plan (see
    /// `chunks`), which has no `name`, parses as a `RawPlan` too.
    name: Option<Spanned<String>>,
    /// Site file with this customer's values (relative to the plan file).
    site: Option<Spanned<String>>,
    /// What to do when a step needs a reboot: "ask" (default) | "auto".
    reboot: Option<Spanned<String>>,
    /// Named validation rule sets for the site (e.g. "teammanager").
    #[serde(default)]
    rules: Vec<Spanned<String>>,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    vars: BTreeMap<String, toml::Value>,
    #[serde(default)]
    secrets: BTreeMap<String, Spanned<RawSecret>>,
    #[serde(default)]
    locks: BTreeMap<String, Spanned<toml::Value>>,
    /// The machines: `[hosts.<name>]` tables, or `"${site.hosts}"`.
    hosts: Option<Spanned<toml::Value>>,
    #[serde(default)]
    targets: BTreeMap<String, Spanned<toml::Table>>,
    #[serde(default)]
    steps: RawSteps,
    notify: Option<Spanned<RawNotify>>,
}

/// `[steps.*]` as written, in id order. A `Vec` rather than a map: the
/// steps as written are the parse's peak of a large plan (a B-tree held
/// each in a half-full node: ~980 bytes a step, measured by massif).
#[derive(Debug, Default)]
struct RawSteps(Vec<(String, Spanned<RawStep>)>);

impl RawSteps {
    /// The ids, in order.
    fn ids(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(id, _)| id)
    }

    /// Adds a later piece's steps (see `chunks`); [`RawSteps::sort`]
    /// once all are in.
    fn append(&mut self, mut part: RawSteps) {
        self.0.append(&mut part.0);
    }

    /// Sorts the steps by id; `None` if an id is there twice.
    fn sort(&mut self) -> Option<()> {
        if !self.0.is_sorted_by(|a, b| a.0 < b.0) {
            self.0.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            if self.0.windows(2).any(|w| w[0].0 == w[1].0) {
                return None;
            }
        }
        Some(())
    }
}

impl<'de> Deserialize<'de> for RawSteps {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RawSteps, D::Error> {
        struct Steps;
        impl<'de> serde::de::Visitor<'de> for Steps {
            type Value = RawSteps;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawSteps, A::Error> {
                let mut steps = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(entry) = map.next_entry()? {
                    steps.push(entry);
                }
                let mut steps = RawSteps(steps);
                // A table's keys arrive in order, and are unique.
                match steps.sort() {
                    Some(()) => Ok(steps),
                    None => Err(serde::de::Error::custom("a step is defined twice")),
                }
            }
        }
        d.deserialize_map(Steps)
    }
}

/// What is kept of a step as written once its definition is built.
struct StepDecl {
    /// Its `[steps.ID]` table.
    span: Range<usize>,
    kind: Spanned<String>,
    /// Its `with` table, and its `compensate`'s.
    with_span: Option<Range<usize>>,
    compensate_with_span: Option<Range<usize>>,
}

/// The plan's tables as written; a large text in pieces (see `chunks`).
fn parse_raw(text: &str) -> Result<RawPlan, toml::de::Error> {
    if text.len() >= chunks::CHUNKED_FROM
        && let Some(raw) = parse_raw_in_pieces(text, chunks::STEPS_PER_PIECE)
    {
        return Ok(raw);
    }
    toml::from_str(text)
}

/// `None` when the pieces do not parse or merge: the caller parses the
/// whole text, for the same result and the same errors as always.
fn parse_raw_in_pieces(text: &str, steps_per_piece: usize) -> Option<RawPlan> {
    let cuts = chunks::cut_points(text, steps_per_piece)?;
    let mut whole: Option<RawPlan> = None;
    for piece in chunks::pieces(text, &cuts) {
        let part: RawPlan = toml::from_str(&piece).ok()?;
        match whole.as_mut() {
            None => {
                // Room for every piece's steps at once (not doubled as
                // they come: the steps as written are the parse's peak).
                let mut first = part;
                first.steps.0.reserve_exact(cuts.len() * steps_per_piece);
                whole = Some(first)
            }
            Some(whole) => whole.merge(part)?,
        }
    }
    let mut whole = whole?;
    whole.steps.sort()?;
    Some(whole)
}

impl RawPlan {
    /// Adds a later piece's tables; `None` if both define the same thing.
    fn merge(&mut self, part: RawPlan) -> Option<()> {
        let RawPlan {
            name,
            site,
            reboot,
            rules,
            description,
            vars,
            secrets,
            locks,
            hosts,
            targets,
            steps,
            notify,
        } = part;
        chunks::merge_option(&mut self.name, name)?;
        chunks::merge_option(&mut self.site, site)?;
        chunks::merge_option(&mut self.reboot, reboot)?;
        chunks::merge_option(&mut self.description, description)?;
        chunks::merge_option(&mut self.hosts, hosts)?;
        chunks::merge_option(&mut self.notify, notify)?;
        if !rules.is_empty() {
            if !self.rules.is_empty() {
                return None;
            }
            self.rules = rules;
        }
        chunks::merge_map(&mut self.vars, vars)?;
        chunks::merge_map(&mut self.secrets, secrets)?;
        chunks::merge_map(&mut self.locks, locks)?;
        chunks::merge_map(&mut self.targets, targets)?;
        self.steps.append(steps);
        Some(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    on: Option<Spanned<Vec<Spanned<String>>>>,
    webhook: Option<Spanned<String>>,
    format: Option<Spanned<String>>,
    command: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
    timeout: Option<Spanned<String>>,
    attempts: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    env: Option<String>,
    file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    kind: Spanned<String>,
    #[serde(default)]
    needs: Vec<Spanned<String>>,
    #[serde(default)]
    with: Option<Spanned<toml::Table>>,
    // Boxed: rare, and large beside the rest.
    retry: Option<Box<Spanned<RawRetry>>>,
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    locks: Vec<Spanned<String>>,
    on_failure: Option<Spanned<String>>,
    resume: Option<Spanned<String>>,
    compensate: Option<Box<Spanned<RawBody>>>,
    description: Option<String>,
    host: Option<Spanned<String>>,
    hosts: Option<Box<Spanned<toml::Value>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    attempts: u32,
    backoff: Option<String>,
    backoff_max: Option<String>,
    #[serde(default)]
    only_transient: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBody {
    kind: Spanned<String>,
    #[serde(default)]
    with: Option<Spanned<toml::Table>>,
}

/// Options that shape loading: `--var` overrides and the site file.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `--var KEY=VALUE` (strings; they replace plan values).
    pub vars: BTreeMap<String, String>,
    /// Where the site file comes from.
    pub site: SiteSource,
}

/// Where a plan's site file comes from.
#[derive(Debug, Clone, Default)]
pub enum SiteSource {
    /// The plan's `site` key, relative to the plan file.
    #[default]
    FromPlan,
    /// A file given on the command line (`--site`).
    File(PathBuf),
    /// The text a run pinned in its journal.
    Pinned {
        /// Where it was read from.
        path: PathBuf,
        /// The exact text.
        text: String,
    },
}

/// A plan's site file, as loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    /// Where it was read from.
    pub path: PathBuf,
    /// The exact text (pinned by a run).
    pub text: String,
    /// Every value by dotted path.
    pub values: BTreeMap<String, toml::Value>,
    /// The whole document.
    pub doc: toml::Value,
}

/// What to do when a step reports that the machine must reboot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RebootPolicy {
    /// Register the resume-at-boot task and pause for the operator.
    #[default]
    Ask,
    /// Register the resume-at-boot task and reboot now.
    Auto,
}

/// When the plan's `[notify]` tells the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyOn {
    /// The run waits for an operator: a `manual` step, a `resume = "ask"`
    /// step, or a paused run.
    Waiting,
    /// A step (or a compensation) failed for good: no retry is left.
    Failed,
    /// A step asked for a reboot and the run stopped for it.
    Reboot,
    /// The run ended: succeeded, failed, aborted or rolled back.
    Ended,
}

impl NotifyOn {
    /// Every trigger, in the order the README lists them.
    pub const ALL: [NotifyOn; 4] = [
        NotifyOn::Waiting,
        NotifyOn::Failed,
        NotifyOn::Reboot,
        NotifyOn::Ended,
    ];

    /// The word used in plans, messages and `UPSHIFT_NOTIFY_EVENT`.
    pub fn word(self) -> &'static str {
        match self {
            NotifyOn::Waiting => "waiting",
            NotifyOn::Failed => "failed",
            NotifyOn::Reboot => "reboot",
            NotifyOn::Ended => "ended",
        }
    }
}

/// The body a `[notify]` webhook is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WebhookFormat {
    /// Microsoft Teams: an Adaptive Card in a `message` envelope, which both
    /// Teams Workflows ("when a Teams webhook request is received") and the
    /// older incoming-webhook connector accept.
    #[default]
    Teams,
    /// Microsoft Teams' legacy connector card (`MessageCard`), for tenants
    /// whose incoming webhooks take nothing else.
    TeamsMessageCard,
    /// Plain JSON: every field of the message, plus `text` (so Slack- and
    /// Mattermost-style webhooks show it as is).
    Json,
}

impl WebhookFormat {
    /// The word used in plans.
    pub fn word(self) -> &'static str {
        match self {
            WebhookFormat::Teams => "teams",
            WebhookFormat::TeamsMessageCard => "teams-messagecard",
            WebhookFormat::Json => "json",
        }
    }
}

/// Upper bound on `[notify] attempts`.
pub const NOTIFY_ATTEMPTS_MAX: u32 = 10;
/// Upper bound on `[notify] timeout` (one attempt).
pub const NOTIFY_TIMEOUT_MAX: Duration = Duration::from_secs(120);

/// A plan's `[notify]`: tell the operator, where they are, when the run
/// needs them or ends. Strings keep their references (`${secrets.x}`):
/// they are resolved when a run starts, like step parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Notify {
    /// When.
    pub on: BTreeSet<NotifyOn>,
    /// An http(s) URL to POST the message to (always a secret reference:
    /// a webhook's address is its credential).
    pub webhook: Option<String>,
    /// The webhook's body.
    pub format: WebhookFormat,
    /// A program and its arguments, handed the message as JSON on stdin
    /// and in `UPSHIFT_NOTIFY_*` variables (never secrets: command lines
    /// are visible to every user of the machine).
    pub command: Vec<String>,
    /// Extra environment for `command` (secrets allowed here).
    pub env: BTreeMap<String, String>,
    /// Limit of one attempt.
    pub timeout: Duration,
    /// Attempts per message and notifier (backoff doubling from 1 s).
    pub attempts: u32,
}

/// Reads and validates a plan file.
pub fn load(path: &Path, registry: &Registry, opts: &LoadOptions) -> Result<Plan, PlanErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        PlanErrors(vec![PlanError::whole_file(
            path,
            format!("cannot read the plan: {e}"),
            Some("give the path of a plan .toml file".into()),
        )])
    })?;
    let mut plan = parse(path, &text, registry, opts)?;
    // A run pins these paths and a resume may start in another folder:
    // they are kept absolute (messages above keep the paths as given).
    if let Ok(abs) = std::path::absolute(path) {
        plan.path = abs;
    }
    if let Some(site) = &mut plan.site
        && let Ok(abs) = std::path::absolute(&site.path)
    {
        site.path = abs;
    }
    Ok(plan)
}

/// Validates a plan given as text (`path` is used in messages).
pub fn parse(
    path: &Path,
    text: &str,
    registry: &Registry,
    opts: &LoadOptions,
) -> Result<Plan, PlanErrors> {
    let loc = Locator { file: path, text };
    let mut raw: RawPlan = parse_raw(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let message = e.message().trim().to_string();
        let hint = if let Some(h) = crate::diagnostics::windows_path_hint(text, span.start) {
            Some(h)
        } else if message.contains("unknown field") {
            Some("top-level keys are name, description, site, rules, reboot, vars, secrets, locks, hosts, targets, notify, steps; step keys are kind, needs, with, retry, timeout, locks, on_failure, resume, compensate, description, host, hosts; [notify] keys are on, webhook, format, command, env, timeout, attempts".to_string())
        } else if message.contains("missing field") {
            Some("see the plan format in the README".to_string())
        } else {
            None
        };
        PlanErrors(vec![loc.at(span, message, hint)])
    })?;
    let Some(name) = raw.name.clone() else {
        return Err(PlanErrors(vec![loc.at(
            0..0,
            "missing field `name`",
            Some("see the plan format in the README".into()),
        )]));
    };

    let mut errors = Vec::new();

    // Vars: plan values, then --var overrides (which may also add new vars).
    let mut vars = raw.vars.clone();
    let mut secret_sources = BTreeMap::new();
    for (k, v) in &opts.vars {
        // `--secret NAME=env:VAR|file:PATH` travels with the vars (so a run
        // pins where its secrets come from, never their values).
        if let Some(name) = k.strip_prefix("secret:") {
            secret_sources.insert(name.to_string(), v.clone());
        } else if k.starts_with(RESERVED_VAR_PREFIX) {
            // Journaled with the run for upshift itself (e.g. the demo
            // folder), not a plan variable.
        } else {
            vars.insert(k.clone(), toml::Value::String(v.clone()));
        }
    }

    let mut secrets = BTreeMap::new();
    for (name, s) in &raw.secrets {
        let r = s.get_ref();
        match (&r.env, &r.file) {
            (Some(env), None) => {
                secrets.insert(name.clone(), SecretRef::Env(env.clone()));
            }
            (None, Some(file)) => {
                // Relative to the plan file, like every path it names.
                let file = match file.to_str() {
                    Some(f) if hosts::absolute_anywhere(f) => file.clone(),
                    _ => std::path::absolute(path)
                        .ok()
                        .and_then(|p| p.parent().map(|d| d.join(file)))
                        .unwrap_or_else(|| file.clone()),
                };
                secrets.insert(name.clone(), SecretRef::File(file));
            }
            _ => errors.push(loc.at(
                s.span(),
                format!("secret `{name}` must name exactly one source"),
                Some(format!(
                    "write `{name} = {{ env = \"VAR\" }}` or `{name} = {{ file = \"path\" }}`; never the value itself"
                )),
            )),
        }
    }

    for (name, source) in &secret_sources {
        let parsed = match source.split_once(':') {
            Some(("env", var)) if !var.is_empty() => Some(SecretRef::Env(var.to_string())),
            // Relative to the current folder, like any path on the command line.
            Some(("file", path)) if !path.is_empty() => Some(SecretRef::File(
                std::path::absolute(path).unwrap_or_else(|_| PathBuf::from(path)),
            )),
            _ => None,
        };
        match parsed {
            Some(r) if secrets.contains_key(name) => {
                secrets.insert(name.clone(), r);
            }
            Some(_) => errors.push(PlanError::whole_file(
                path,
                format!("--secret {name}=...: the plan declares no secret `{name}`"),
                Some(format!(
                    "declared secrets: {}",
                    secrets.keys().cloned().collect::<Vec<_>>().join(", ")
                )),
            )),
            None => errors.push(PlanError::whole_file(
                path,
                format!("--secret {name}={source}: write env:VARIABLE or file:PATH"),
                None,
            )),
        }
    }

    let mut locks = BTreeMap::new();
    let mut site_locks = BTreeSet::new();
    for (k, v) in &raw.locks {
        let bad = |errors: &mut Vec<PlanError>, message: String| {
            errors.push(loc.at(
                v.span(),
                message,
                Some("write `name = N` (N holders per host) or `name = { limit = N, scope = \"site\" }` (N for the whole site)".into()),
            ))
        };
        let (limit, scope) = match v.get_ref() {
            toml::Value::Integer(n) => (Some(*n), None),
            toml::Value::Table(t) => {
                if let Some(other) = t.keys().find(|k| !matches!(k.as_str(), "limit" | "scope")) {
                    bad(&mut errors, format!("lock `{k}`: unknown key `{other}`"));
                }
                (
                    match t.get("limit") {
                        None => Some(1),
                        Some(toml::Value::Integer(n)) => Some(*n),
                        Some(_) => None,
                    },
                    t.get("scope"),
                )
            }
            _ => (None, None),
        };
        match limit {
            Some(0) => errors.push(loc.at(
                v.span(),
                format!("lock `{k}` has a limit of 0: nothing holding it could ever run"),
                Some("use 1 or more".into()),
            )),
            Some(n) if (1..=u32::MAX as i64).contains(&n) => {
                locks.insert(k.clone(), n as u32);
            }
            _ => bad(
                &mut errors,
                format!("lock `{k}`: the limit must be a whole number above 0"),
            ),
        }
        match scope.map(|s| s.as_str()) {
            None | Some(Some("host")) => {}
            Some(Some("site")) => {
                site_locks.insert(k.clone());
            }
            Some(_) => bad(
                &mut errors,
                format!("lock `{k}`: scope must be \"host\" or \"site\""),
            ),
        }
    }

    let targets: BTreeMap<String, toml::Table> = raw
        .targets
        .iter()
        .map(|(k, v)| (k.clone(), v.get_ref().clone()))
        .collect();

    let errors_before_site = errors.len();
    let site = match load_site(path, &raw, &opts.site, &loc) {
        Ok(site) => site,
        Err(e) => {
            // Everything after this reads the site file: without it, each
            // of its references would be one more error about the same
            // mistake. The site file's own error is the one to fix.
            errors.insert(0, e);
            return Err(PlanErrors(errors));
        }
    };
    let reboot = match raw
        .reboot
        .as_ref()
        .map(|r| (r.get_ref().as_str(), r.span()))
    {
        None | Some(("ask", _)) => RebootPolicy::Ask,
        Some(("auto", _)) => RebootPolicy::Auto,
        Some((other, sp)) => {
            errors.push(loc.at(sp, format!("reboot = \"{other}\" is not a policy"), Some("use \"ask\" (pause for the operator) or \"auto\" (reboot and resume at boot)".into())));
            RebootPolicy::Ask
        }
    };

    // References and parameters are checked with placeholders for what is
    // only known at run time.
    let resolver = MapResolver::placeholders(&vars, site.as_ref().map(|s| &s.values));

    let notify = raw.notify.as_ref().and_then(|n| {
        check_notify(
            n,
            &loc,
            &NotifyScope {
                vars: &vars,
                secrets: &raw.secrets,
                site: resolver.site,
                has_site: site.is_some(),
            },
            &mut errors,
        )
    });

    let has_var = |n: &str| vars.contains_key(n);
    let host_scope = hosts::Scope {
        plan_path: path,
        plan_text: text,
        site: site
            .as_ref()
            .map(|s| (s.path.as_path(), s.text.as_str(), &s.values)),
        resolver: &resolver,
        has_var: &has_var,
    };
    let host_defs = hosts::parse(raw.hosts.as_ref(), &loc, &host_scope, &mut errors);

    let ids: BTreeSet<String> = raw.steps.ids().cloned().collect();
    // `${site.X}` the site file lacks, by X: reported after the site's
    // unread keys, unless one of them is X misspelt (then the site file's
    // line is the one to fix, and this would be the same mistake twice).
    let missing_site: std::cell::RefCell<Vec<(String, PlanError)>> = Default::default();
    // Where each site value is written, to report a bad value at its line.
    let site_spans = site.as_ref().map(|s| crate::sitekeys::value_spans(&s.text));
    // In id order: the steps as written are visited in that order.
    let mut steps: Vec<StepDef> = Vec::with_capacity(raw.steps.0.len());
    let mut placements: BTreeMap<String, Placement> = BTreeMap::new();

    // The steps as written are consumed here (a 100,000-step plan would
    // otherwise hold them beside their definitions); what later checks need
    // of them is kept in `decls`.
    let mut decls: BTreeMap<String, StepDecl> = BTreeMap::new();
    for (id, raw_step) in std::mem::take(&mut raw.steps.0) {
        let id = &id;
        let span = raw_step.span();
        let rs = raw_step.get_ref();
        decls.insert(
            id.clone(),
            StepDecl {
                span: span.clone(),
                kind: rs.kind.clone(),
                with_span: rs.with.as_ref().map(|w| w.span()),
                compensate_with_span: rs
                    .compensate
                    .as_ref()
                    .and_then(|c| c.get_ref().with.as_ref().map(|w| w.span())),
            },
        );
        if id.contains(hosts::INSTANCE_SEP) {
            errors.push(loc.at(
                loc.find_in(span.clone(), id),
                format!("step id `{id}` has `@`, which names the instances of a fanned-out step (STEP@HOST)"),
                Some("write the step once with hosts = [..]; upshift makes one instance per host".into()),
            ));
        } else if !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            errors.push(loc.at(
                loc.find_in(span.clone(), id),
                format!("step id `{id}` has characters other than letters, digits, `_` and `-`"),
                Some("ids appear in references (${steps.<id>.outputs.x}) and commands; rename it".into()),
            ));
        }
        placements.insert(
            id.clone(),
            hosts::place(
                id,
                rs.host.as_ref(),
                rs.hosts.as_deref(),
                &host_defs,
                &loc,
                &host_scope,
                &mut errors,
            ),
        );
        let mut needs = BTreeSet::new();
        for n in &rs.needs {
            if let Some((base, _)) = n.get_ref().split_once(hosts::INSTANCE_SEP)
                && ids.contains(base)
            {
                errors.push(loc.at(
                    n.span(),
                    format!("step `{id}` needs `{}`: instances are not named by hand", n.get_ref()),
                    Some(format!("write needs = [\"{base}\"]: a step fanned out over the same hosts waits for the instance on its own host, any other step for every instance")),
                ));
            } else if !ids.contains(n.get_ref().as_str()) {
                let hint = Some(did_you_mean(
                    n.get_ref(),
                    ids.iter().map(String::as_str),
                    "known steps",
                ));
                errors.push(loc.at(
                    n.span(),
                    format!(
                        "step `{id}` needs `{}`, which is not a step of this plan",
                        n.get_ref()
                    ),
                    hint,
                ));
            } else if n.get_ref() == id {
                errors.push(loc.at(n.span(), format!("step `{id}` needs itself"), None));
            } else {
                needs.insert(n.get_ref().clone());
            }
        }

        // `host`: the host the body is checked for (`${host}` is its name).
        let check_body = |kind: &Spanned<String>,
                          with: &Option<Spanned<toml::Table>>,
                          what: &str,
                          host: Option<&str>,
                          needs: &mut BTreeSet<String>,
                          errors: &mut Vec<PlanError>|
         -> Option<Body> {
            let with_span = with.as_ref().map(|w| w.span()).unwrap_or(span.clone());
            let raw_table = with
                .as_ref()
                .map(|w| w.get_ref().clone())
                .unwrap_or_default();
            let with_table = match host {
                Some(h) => hosts::substitute_host(&raw_table, h),
                None if hosts::mentions_host(&raw_table) => {
                    errors.push(loc.at(
                        loc.find_in(with_span.clone(), "${host}"),
                        format!("`${{host}}` in {what} of step `{id}`, which runs on no host"),
                        Some("`${host}` is the name of the host the step runs on: give it host = \"NAME\" or hosts = [..]".into()),
                    ));
                    return None;
                }
                None => raw_table.clone(),
            };
            // References: syntax, existence, implicit dependencies.
            let mut found = Vec::new();
            refs::refs_in_value(&toml::Value::Table(with_table.clone()), &mut found);
            let mut refs_ok = true;
            for (s, r) in found {
                let at = loc.find_in(with_span.clone(), &s);
                match r {
                    Err(bad) => {
                        refs_ok = false;
                        errors.push(loc.at(
                            loc.find_in(at.clone(), &bad.text),
                            format!(
                                "bad reference `${{{}}}` in {what} of step `{id}`: {}",
                                bad.text, bad.message
                            ),
                            None,
                        ));
                    }
                    Ok(Ref::Var(v)) if !vars.contains_key(&v) => {
                        refs_ok = false;
                        let hint = suggest(&v, vars.keys().map(String::as_str))
                            .map(|s| format!("did you mean `{s}`? Or give it with --var {v}=VALUE"))
                            .unwrap_or_else(|| {
                                format!("add `{v} = ...` under [vars], or give --var {v}=VALUE")
                            });
                        errors.push(loc.at(
                            loc.find_in(at, &format!("vars.{v}")),
                            format!("`${{vars.{v}}}` in step `{id}`: no variable `{v}`"),
                            Some(hint),
                        ));
                    }
                    Ok(Ref::Secret(n))
                        if !secrets.contains_key(&n) && !raw.secrets.contains_key(&n) =>
                    {
                        refs_ok = false;
                        errors.push(loc.at(
                            loc.find_in(at, &format!("secrets.{n}")),
                            format!("`${{secrets.{n}}}` in step `{id}`: no secret `{n}`"),
                            Some(format!("declare it: [secrets] {n} = {{ env = \"VAR\" }}")),
                        ));
                    }
                    Ok(Ref::Site(p)) if !resolver.site.contains_key(&p) => {
                        refs_ok = false;
                        let (msg, hint) = match &site {
                            None => (
                                format!("`${{site.{p}}}` in step `{id}`, but the plan has no site file"),
                                "add `site = \"sites/<customer>.toml\"` at the top of the plan, or give --site FILE".to_string(),
                            ),
                            Some(s) => (
                                format!("`${{site.{p}}}` in step `{id}`: {} has no `{p}`", s.path.display()),
                                suggest(&p, resolver.site.keys().map(String::as_str))
                                    .map(|c| format!("did you mean `{c}`?"))
                                    .unwrap_or_else(|| "add it to the site file".into()),
                            ),
                        };
                        let e = loc.at(loc.find_in(at, &format!("site.{p}")), msg, Some(hint));
                        if site.is_some() {
                            missing_site.borrow_mut().push((p.clone(), e));
                        } else {
                            errors.push(e);
                        }
                    }
                    Ok(Ref::Output { step, .. }) if !ids.contains(step.as_str()) => {
                        refs_ok = false;
                        let hint = suggest(&step, ids.iter().map(String::as_str))
                            .map(|s| format!("did you mean `{s}`?"));
                        errors.push(loc.at(
                            loc.find_in(at, &format!("steps.{step}")),
                            format!("step `{id}` refers to outputs of `{step}`, which is not a step of this plan"),
                            hint,
                        ));
                    }
                    Ok(Ref::Output { step, .. }) if step == *id => {
                        refs_ok = false;
                        errors.push(loc.at(
                            at,
                            format!("step `{id}` refers to its own outputs"),
                            None,
                        ));
                    }
                    Ok(Ref::Output { step, .. }) => {
                        needs.insert(step);
                    }
                    Ok(Ref::Item) if kind.get_ref() != "foreach" => {
                        refs_ok = false;
                        errors.push(loc.at(
                            loc.find_in(at, "${item"),
                            format!("`${{item}}` in step `{id}`, which is not a foreach"),
                            Some("only a foreach body has items".into()),
                        ));
                    }
                    Ok(_) => {}
                }
            }
            let Some(k) = registry.get(kind.get_ref().as_str()) else {
                let hint = did_you_mean(kind.get_ref(), registry.keys().copied(), "known kinds");
                errors.push(loc.at(
                    kind.span(),
                    format!(
                        "unknown step kind `{}` in {what} of step `{id}`",
                        kind.get_ref()
                    ),
                    Some(hint),
                ));
                return None;
            };
            if refs_ok {
                match expand_target(&with_table, &targets)
                    .map_err(|m| {
                        loc.at(
                            loc.find_key(with_span.clone(), "target"),
                            m.clone(),
                            Some(format!(
                                "known targets: {}",
                                targets.keys().cloned().collect::<Vec<_>>().join(", ")
                            )),
                        )
                    })
                    .and_then(|t| {
                        refs::substitute_table(&t, &resolver)
                            .map_err(|b| loc.at(with_span.clone(), b.message, None))
                    }) {
                    Ok(resolved) => {
                        if let Err(e) = k.build(&resolved) {
                            // A bad value that comes from the site file is
                            // reported once, at its line there.
                            let from_site = e.field.as_deref().and_then(|f| {
                                let written = expand_target(&with_table, &targets).ok()?;
                                let p = site_ref_at(&written, f)?;
                                let s = site.as_ref()?;
                                let span = site_spans.as_ref()?.get(&p)?.clone();
                                Some((p, s, span))
                            });
                            if let Some((p, s, span)) = from_site {
                                let site_loc = Locator {
                                    file: &s.path,
                                    text: &s.text,
                                };
                                let what = e.message.split("\nin `").next().unwrap_or_default();
                                errors.push(site_loc.at(
                                    span,
                                    format!("site value {p}: {what}"),
                                    e.hint.clone(),
                                ));
                                return Some(Body {
                                    kind: kind.get_ref().clone(),
                                    with: raw_table,
                                });
                            }
                            let at = match &e.field {
                                Some(f) => loc.find_key(with_span.clone(), f),
                                None => with_span.clone(),
                            };
                            errors.push(loc.at(
                                at,
                                format!(
                                    "{what} of step `{id}` ({}): {}",
                                    kind.get_ref(),
                                    e.message
                                ),
                                e.hint.clone(),
                            ));
                        }
                    }
                    Err(e) => errors.push(e),
                }
            }
            Some(Body {
                kind: kind.get_ref().clone(),
                with: raw_table,
            })
        };
        // A step not on this site is not checked against the site (its
        // component's values are missing too); only its kind must exist.
        let absent_body = |kind: &Spanned<String>,
                           with: &Option<Spanned<toml::Table>>,
                           errors: &mut Vec<PlanError>|
         -> Option<Body> {
            if registry.get(kind.get_ref().as_str()).is_none() {
                errors.push(loc.at(
                    kind.span(),
                    format!("unknown step kind `{}` in step `{id}`", kind.get_ref()),
                    Some(did_you_mean(
                        kind.get_ref(),
                        registry.keys().copied(),
                        "known kinds",
                    )),
                ));
                return None;
            }
            Some(Body {
                kind: kind.get_ref().clone(),
                with: with
                    .as_ref()
                    .map(|w| w.get_ref().clone())
                    .unwrap_or_default(),
            })
        };
        // Checked once per host the step runs on (`${host}` differs).
        let check_hosts: Vec<Option<&str>> = match &placements[id] {
            Placement::One(h) => vec![Some(h.as_str())],
            Placement::Fan(hs) => hs.iter().map(|h| Some(h.as_str())).collect(),
            Placement::Coordinator | Placement::Absent(_) => vec![None],
        };
        let absent = matches!(placements[id], Placement::Absent(_));
        let mut body = None;
        let mut compensate = None;
        for h in &check_hosts {
            body = if absent {
                absent_body(&rs.kind, &rs.with, &mut errors)
            } else {
                check_body(&rs.kind, &rs.with, "`with`", *h, &mut needs, &mut errors)
            };
            compensate = rs.compensate.as_ref().and_then(|c| {
                let c = c.get_ref();
                if absent {
                    absent_body(&c.kind, &c.with, &mut errors)
                } else {
                    check_body(
                        &c.kind,
                        &c.with,
                        "`compensate`",
                        *h,
                        &mut needs,
                        &mut errors,
                    )
                }
            });
        }

        let retry = match &rs.retry {
            None => RetryPolicy::default(),
            Some(r) => {
                let rr = r.get_ref();
                let mut p = RetryPolicy {
                    attempts: rr.attempts,
                    only_transient: rr.only_transient,
                    ..RetryPolicy::default()
                };
                if rr.attempts == 0 || rr.attempts > 100 {
                    errors.push(loc.at(
                        loc.find_key(r.span(), "attempts"),
                        format!(
                            "retry.attempts of step `{id}` must be 1..=100, not {}",
                            rr.attempts
                        ),
                        Some("attempts counts the first try: 3 means up to 2 retries".into()),
                    ));
                }
                for (field, val, slot) in [
                    ("backoff", &rr.backoff, &mut p.backoff),
                    ("backoff_max", &rr.backoff_max, &mut p.backoff_max),
                ] {
                    if let Some(v) = val {
                        match upshift_steps::params::parse_duration(v) {
                            Ok(d) => *slot = d,
                            Err(m) => errors.push(loc.at(loc.find_key(r.span(), field), m, None)),
                        }
                    }
                }
                p
            }
        };
        let timeout =
            rs.timeout.as_ref().and_then(|t| {
                match upshift_steps::params::parse_duration(t.get_ref()) {
                    Ok(d) if d.is_zero() => {
                        errors.push(loc.at(
                            t.span(),
                            "timeout of 0 would fail every attempt",
                            Some("omit `timeout` for no limit".into()),
                        ));
                        None
                    }
                    Ok(d) => Some(d),
                    Err(m) => {
                        errors.push(loc.at(t.span(), m, None));
                        None
                    }
                }
            });
        let on_failure = match rs
            .on_failure
            .as_ref()
            .map(|s| (s.get_ref().as_str(), s.span()))
        {
            None | Some(("pause", _)) => OnFailure::Pause,
            Some(("rollback", _)) => OnFailure::Rollback,
            Some(("abort", _)) => OnFailure::Abort,
            Some((other, sp)) => {
                errors.push(loc.at(
                    sp,
                    format!("on_failure = \"{other}\" is not a policy"),
                    Some("use \"pause\", \"rollback\" or \"abort\"".into()),
                ));
                OnFailure::Pause
            }
        };
        let resume = match rs.resume.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
            None | Some(("auto", _)) => ResumePolicy::Auto,
            Some(("ask", _)) => ResumePolicy::Ask,
            Some((other, sp)) => {
                errors.push(loc.at(
                    sp,
                    format!("resume = \"{other}\" is not a policy"),
                    Some("use \"auto\" or \"ask\"".into()),
                ));
                ResumePolicy::Auto
            }
        };
        if let Some(body) = body {
            steps.push(StepDef {
                id: id.clone(),
                body,
                needs: needs.into_iter().collect(),
                retry,
                timeout,
                locks: rs.locks.iter().map(|l| l.get_ref().clone()).collect(),
                on_failure,
                resume,
                compensate,
                description: rs.description.clone(),
                host: None,
                instance_of: None,
                decl: span.start,
            });
        }
    }

    // Paths on this machine: relative to the file that names them.
    let local_paths = if errors.is_empty() {
        resolve_local_paths(
            &mut steps,
            &LocalScope {
                registry,
                placements: &placements,
                hosts: &host_defs,
                resolver: &resolver,
                cli_vars: &opts.vars,
                plan_path: path,
                site: site.as_ref(),
                decls: &decls,
                loc: &loc,
            },
        )
    } else {
        Vec::new()
    };

    // Where steps run: instances of fanned-out steps, steps not on this
    // site, and the needs between them.
    let (steps, absent, fanned) = expand_placements(steps, &placements, &decls, &loc, &mut errors);

    // Rules from products' manuals: those for every plan, then the rule
    // sets the plan names for its site file.
    let kinds: Vec<rules::StepKind<'_>> = decls
        .iter()
        .map(|(id, d)| rules::StepKind {
            id,
            kind: d.kind.get_ref(),
            span: d.kind.span(),
        })
        .collect();
    for rule in rules::PLAN_RULES {
        errors.extend(rule(&loc, &kinds));
    }
    // Site keys read: by the plan's references and by the rule sets
    // (only a plan with a site file has keys to leave unread).
    let mut reads = if site.is_some() {
        site_reads(text)
    } else {
        BTreeSet::new()
    };
    let mut rule_sets_known = true;
    for r in &raw.rules {
        let name = r.get_ref().as_str();
        match (rules::rule_set(name), &site) {
            (Some(set), Some(site)) => {
                let own: Vec<KeyPattern> = set.reads.iter().map(|p| KeyPattern::parse(p)).collect();
                // A rule set sees only the keys it declares it reads.
                let doc = sitekeys::restrict(&site.doc, &own);
                let mut values = BTreeMap::new();
                refs::flatten("", &doc, &mut values);
                errors.extend((set.check_site)(&rules::SiteView {
                    path: &site.path,
                    text: &site.text,
                    doc: &doc,
                    values: &values,
                }));
                reads.extend(own);
            }
            (Some(_), None) => errors.push(loc.at(
                r.span(),
                format!("rules = [\"{name}\"] checks a site file, but the plan has none"),
                Some("add `site = \"sites/<customer>.toml\"`".into()),
            )),
            (None, _) => {
                rule_sets_known = false;
                errors.push(loc.at(
                    r.span(),
                    format!("unknown rule set `{name}`"),
                    Some(format!("known rule sets: {}", rules::known())),
                ))
            }
        }
    }
    let mut missing_site = missing_site.into_inner();
    if let Some(site) = &site
        && rule_sets_known
    {
        let mut unread = sitekeys::unread_keys(&site.path, &site.text, &reads);
        // A rule that already names the line says it better.
        unread.retain(|u| {
            !errors[errors_before_site..]
                .iter()
                .any(|e| e.file == u.error.file && e.line == u.error.line)
        });
        // A key nobody reads that is close to one that is read is a
        // misspelling: what reads the right key found nothing (a
        // component without hosts, a rule without its value, a step
        // without its host). Those errors are the same mistake again, in
        // other words and other files; the misspelt keys' lines are the
        // ones to fix first.
        if unread.iter().any(|u| u.suggests.is_some()) {
            errors.truncate(errors_before_site);
            missing_site.clear();
        }
        errors.extend(unread.into_iter().map(|u| u.error));
    }
    errors.extend(missing_site.into_iter().map(|(_, e)| e));

    if decls.is_empty() {
        errors.push(loc.at(
            name.span(),
            "the plan has no steps",
            Some("add [steps.<id>] tables".into()),
        ));
    }

    let order = if errors.is_empty() {
        match topo_order(&steps) {
            Ok(o) => o,
            Err(cycle) => {
                let first = &cycle[0];
                let span = decls[first].span.clone();
                errors.push(loc.at(
                    loc.find_in(span, "needs"),
                    format!("the steps form a cycle: {}", cycle.iter().chain(std::iter::once(first)).map(String::as_str).collect::<Vec<_>>().join(" → ")),
                    Some("a step runs after everything it needs (and every step whose outputs it references); break the cycle by removing one of these dependencies".into()),
                ));
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };

    if !errors.is_empty() {
        errors.sort_by(|a, b| {
            (&a.file, a.line, a.col, &a.message).cmp(&(&b.file, b.line, b.col, &b.message))
        });
        // A fanned-out step is checked once per host: the same problem once.
        errors.dedup();
        return Err(PlanErrors(errors));
    }
    let dependents = direct_dependents(&steps, &order);
    Ok(Plan {
        local_paths,
        dependents,
        site,
        reboot,
        notify,
        name: name.into_inner(),
        path: path.to_path_buf(),
        text: text.to_string(),
        hash: hash_text(text),
        vars,
        secrets,
        locks,
        site_locks,
        hosts: host_defs,
        absent,
        fanned,
        targets,
        steps,
        order,
    })
}

/// The site keys the plan's own strings read (`${site.X}`). A large text
/// is read piece by piece (see `chunks`): its whole document at once would
/// be the parse's peak again (664 MiB for 100,000 steps).
fn site_reads(text: &str) -> BTreeSet<KeyPattern> {
    if text.len() >= chunks::CHUNKED_FROM
        && let Some(reads) = site_reads_in_pieces(text, chunks::STEPS_PER_PIECE)
    {
        return reads;
    }
    match toml::from_str::<toml::Table>(text) {
        Ok(t) => sitekeys::plan_reads(&t),
        Err(_) => BTreeSet::new(),
    }
}

/// [`site_reads`] of the text cut every `steps_per_piece` steps; `None`
/// when it cannot be cut or a piece does not parse alone.
fn site_reads_in_pieces(text: &str, steps_per_piece: usize) -> Option<BTreeSet<KeyPattern>> {
    let cuts = chunks::cut_points(text, steps_per_piece)?;
    let mut reads = BTreeSet::new();
    for piece in chunks::slices(text, &cuts) {
        reads.extend(sitekeys::plan_reads(&toml::from_str(piece).ok()?));
    }
    Some(reads)
}

/// What [`resolve_local_paths`] needs to know.
struct LocalScope<'a> {
    registry: &'a Registry,
    placements: &'a BTreeMap<String, Placement>,
    hosts: &'a BTreeMap<String, HostDef>,
    resolver: &'a MapResolver<'a>,
    cli_vars: &'a BTreeMap<String, String>,
    plan_path: &'a Path,
    site: Option<&'a Site>,
    decls: &'a BTreeMap<String, StepDecl>,
    loc: &'a Locator<'a>,
}

/// Makes every relative path a step running on this machine names
/// ([`upshift_steps::Kind::local_paths`]) relative to the file that names
/// it, in the step's `with` (so `check`, `--dry-run` and the run use the
/// same path), and returns them all for [`Plan::local_path_problems`].
fn resolve_local_paths(steps: &mut [StepDef], scope: &LocalScope<'_>) -> Vec<LocalPathUse> {
    let dir_of = |p: &Path| {
        std::path::absolute(p)
            .ok()
            .and_then(|a| a.parent().map(Path::to_path_buf))
            .unwrap_or_default()
    };
    let plan_dir = dir_of(scope.plan_path);
    let site_dir = scope.site.map(|s| dir_of(&s.path));
    let cwd = std::env::current_dir().unwrap_or_default();
    let mut out = Vec::new();
    for def in steps.iter_mut() {
        let id = &def.id.clone();
        let here = match &scope.placements[id] {
            Placement::Coordinator => true,
            Placement::One(h) => scope
                .hosts
                .get(h)
                .is_some_and(|d| d.transport == hosts::Transport::Local),
            Placement::Fan(hs) => hs.iter().all(|h| {
                scope
                    .hosts
                    .get(h)
                    .is_some_and(|d| d.transport == hosts::Transport::Local)
            }),
            Placement::Absent(_) => false,
        };
        if !here {
            continue;
        }
        let decl = &scope.decls[id];
        for (body, with_span) in std::iter::once((&mut def.body, &decl.with_span)).chain(
            def.compensate
                .as_mut()
                .map(|c| (c, &decl.compensate_with_span)),
        ) {
            let Some(kind) = scope.registry.get(body.kind.as_str()) else {
                continue;
            };
            for lp in kind.local_paths() {
                let Some(written) = body
                    .with
                    .get(lp.field)
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
                else {
                    continue;
                };
                if written.contains("${host}") {
                    continue;
                }
                let Ok(found) = refs::refs_in(&written) else {
                    continue;
                };
                // Known only at run time: left as written.
                if found
                    .iter()
                    .any(|r| matches!(r, Ref::Secret(_) | Ref::Output { .. } | Ref::Item))
                {
                    continue;
                }
                let Ok(toml::Value::String(value)) = refs::substitute_str(&written, scope.resolver)
                else {
                    continue;
                };
                // The file that names the path: where its first part comes from.
                let with_span = with_span.clone().unwrap_or(decl.span.clone());
                let in_plan = scope
                    .loc
                    .at(scope.loc.find_key(with_span, lp.field), "", None);
                let (base, what, at) = match found.first() {
                    Some(Ref::Var(n))
                        if written.starts_with("${") && scope.cli_vars.contains_key(n) =>
                    {
                        (
                            cwd.clone(),
                            format!("--var {n}: the current folder"),
                            in_plan,
                        )
                    }
                    Some(Ref::Var(n)) if written.starts_with("${") => (
                        plan_dir.clone(),
                        format!("[vars] {n}: the plan file's folder"),
                        crate::diagnostics::locate_key(
                            scope.plan_path,
                            scope.loc.text,
                            &["vars"],
                            Some(n),
                            String::new(),
                            None,
                        ),
                    ),
                    Some(Ref::Site(p) | Ref::SiteOptional(p))
                        if written.starts_with("${")
                            && let (Some(s), Some(d)) = (scope.site, &site_dir) =>
                    {
                        let span = crate::sitekeys::value_spans(&s.text)
                            .get(p)
                            .cloned()
                            .unwrap_or(0..0);
                        (
                            d.clone(),
                            format!("site value {p}: the site file's folder"),
                            Locator {
                                file: &s.path,
                                text: &s.text,
                            }
                            .at(span, "", None),
                        )
                    }
                    _ => (
                        plan_dir.clone(),
                        "the plan file's folder".to_string(),
                        in_plan,
                    ),
                };
                let cli_var = match found.first() {
                    Some(Ref::Var(n)) if written.starts_with("${") => scope
                        .cli_vars
                        .get(n)
                        .filter(|v| !hosts::absolute_anywhere(v))
                        .map(|v| (n.clone(), cwd.join(v).display().to_string())),
                    _ => None,
                };
                let (path, relative_to) = if hosts::absolute_anywhere(&value) || value.is_empty() {
                    (PathBuf::from(&value), None)
                } else {
                    let p = base.join(&value);
                    body.with.insert(
                        lp.field.to_string(),
                        toml::Value::String(p.display().to_string().replace("${", "$${")),
                    );
                    (
                        p,
                        Some(format!(
                            "`{value}` is relative to {what}, {}",
                            base.display()
                        )),
                    )
                };
                out.push(LocalPathUse {
                    step: id.clone(),
                    field: lp.field,
                    path,
                    dir: lp.dir,
                    must_exist: lp.must_exist,
                    written: at,
                    relative_to,
                    cli_var,
                });
            }
        }
    }
    out
}

type Expanded = (
    Steps,
    BTreeMap<String, String>,
    BTreeMap<String, Vec<String>>,
);

/// Turns the steps as written into the steps of the run: one instance
/// (`STEP@HOST`) per host of a fanned-out step, none for a step not on
/// this site. A fanned-out step that needs another fanned-out step needs
/// the instance on its own host (every instance if that host has none);
/// any other step needs every instance; an absent step is no longer
/// needed. Outputs of a fanned-out step can only be used by a step fanned
/// out over the same hosts (each instance reads its own host's).
fn expand_placements(
    written: Vec<StepDef>,
    placements: &BTreeMap<String, Placement>,
    decls: &BTreeMap<String, StepDecl>,
    loc: &Locator<'_>,
    errors: &mut Vec<PlanError>,
) -> Expanded {
    let mut absent = BTreeMap::new();
    let mut fanned = BTreeMap::new();
    for (id, p) in placements {
        match p {
            Placement::Absent(why) => {
                absent.insert(id.clone(), why.clone());
            }
            Placement::Fan(hs) => {
                fanned.insert(id.clone(), hs.clone());
            }
            Placement::Coordinator | Placement::One(_) => {}
        }
    }
    let need_ids = |n: &str, fan_host: Option<&str>| -> Vec<String> {
        match placements.get(n) {
            Some(Placement::Absent(_)) => Vec::new(),
            Some(Placement::Fan(hs)) => match fan_host {
                Some(h) if hs.iter().any(|x| x == h) => vec![hosts::instance_id(n, h)],
                _ => hs.iter().map(|h| hosts::instance_id(n, h)).collect(),
            },
            _ => vec![n.to_string()],
        }
    };
    // In place: each definition becomes its (last) instance, the other
    // instances are copies of it (a second vector of every definition was
    // the peak of a large plan's parse).
    let mut written = written;
    let mut others = Vec::new();
    let mut kept = vec![true; written.len()];
    for (k, slot) in written.iter_mut().enumerate() {
        let def = &*slot;
        let id = &def.id.clone();
        let place = placements
            .get(id)
            .cloned()
            .unwrap_or(Placement::Coordinator);
        let instances: Vec<(String, Option<String>)> = match &place {
            Placement::Coordinator => vec![(id.clone(), None)],
            Placement::One(h) => vec![(id.clone(), Some(h.clone()))],
            Placement::Fan(hs) => hs
                .iter()
                .map(|h| (hosts::instance_id(id, h), Some(h.clone())))
                .collect(),
            Placement::Absent(_) => {
                kept[k] = false;
                continue;
            }
        };
        let is_fan = matches!(place, Placement::Fan(_));
        // Outputs this step uses, by the step they come from.
        let mut used = BTreeSet::new();
        for body in std::iter::once(&def.body).chain(def.compensate.as_ref()) {
            let mut found = Vec::new();
            refs::refs_in_value(&toml::Value::Table(body.with.clone()), &mut found);
            for (_, r) in found {
                if let Ok(Ref::Output { step, .. }) = r {
                    used.insert(step);
                }
            }
        }
        for from in &used {
            let span = decls[id].span.clone();
            let problem = match placements.get(from) {
                Some(Placement::Absent(why)) => Some((
                    format!(
                        "step `{id}` uses outputs of `{from}`, which is not on this site ({why})"
                    ),
                    format!(
                        "a step that may be absent cannot feed another; drop the reference or give `{from}` its hosts"
                    ),
                )),
                Some(Placement::Fan(theirs)) => {
                    let mine = match &place {
                        Placement::Fan(hs) => hs.clone(),
                        _ => Vec::new(),
                    };
                    let missing: Vec<&String> =
                        mine.iter().filter(|h| !theirs.contains(h)).collect();
                    if !is_fan || !missing.is_empty() {
                        Some((
                            format!(
                                "step `{id}` uses outputs of `{from}`, which runs on several hosts ({})",
                                theirs.join(", ")
                            ),
                            format!(
                                "only a step fanned out over the same hosts can use them (each instance reads its own host's); {}",
                                if is_fan {
                                    format!(
                                        "`{from}` has no instance on {}",
                                        missing
                                            .iter()
                                            .map(|s| s.as_str())
                                            .collect::<Vec<_>>()
                                            .join(", ")
                                    )
                                } else {
                                    format!("give `{id}` hosts = the same list")
                                }
                            ),
                        ))
                    } else {
                        None
                    }
                }
                _ => None,
            };
            if let Some((message, hint)) = problem {
                errors.push(loc.at(
                    loc.find_in(span, &format!("steps.{from}")),
                    message,
                    Some(hint),
                ));
            }
        }
        let last = instances.len().saturating_sub(1);
        for (i, (iid, host)) in instances.into_iter().enumerate() {
            let fan_host = if is_fan { host.as_deref() } else { None };
            let mut copy = (i != last).then(|| slot.clone());
            let d = copy.as_mut().unwrap_or(&mut *slot);
            if let Some(h) = &host {
                d.body.with = hosts::substitute_host(&d.body.with, h);
                if let Some(c) = &mut d.compensate {
                    c.with = hosts::substitute_host(&c.with, h);
                }
            }
            let mut needs: Vec<String> =
                d.needs.iter().flat_map(|n| need_ids(n, fan_host)).collect();
            needs.sort_unstable();
            needs.dedup();
            needs.shrink_to_fit();
            d.needs = needs;
            d.id = iid;
            d.host = host;
            d.instance_of = is_fan.then(|| id.clone());
            others.extend(copy);
        }
    }
    let mut k = 0;
    written.retain(|_| {
        k += 1;
        kept[k - 1]
    });
    written.append(&mut others);
    (Steps::new(written), absent, fanned)
}

/// What a `[notify]` string may refer to.
struct NotifyScope<'a> {
    vars: &'a BTreeMap<String, toml::Value>,
    secrets: &'a BTreeMap<String, Spanned<RawSecret>>,
    site: &'a BTreeMap<String, toml::Value>,
    has_site: bool,
}

/// Validates `[notify]`; every problem goes to `errors`, located.
fn check_notify(
    raw: &Spanned<RawNotify>,
    loc: &Locator<'_>,
    scope: &NotifyScope<'_>,
    errors: &mut Vec<PlanError>,
) -> Option<Notify> {
    let n = raw.get_ref();
    let before = errors.len();
    let mut on = BTreeSet::new();
    match &n.on {
        None => on.extend(NotifyOn::ALL),
        Some(list) if list.get_ref().is_empty() => errors.push(loc.at(
            list.span(),
            "[notify] on = [] never notifies",
            Some("list when to notify: on = [\"waiting\", \"failed\", \"reboot\", \"ended\"], or remove [notify]".into()),
        )),
        Some(list) => {
            for w in list.get_ref() {
                match NotifyOn::ALL.iter().find(|t| t.word() == w.get_ref()) {
                    Some(t) => {
                        on.insert(*t);
                    }
                    None => errors.push(loc.at(
                        w.span(),
                        format!("[notify] on: `{}` is not a trigger", w.get_ref()),
                        Some(did_you_mean(
                            w.get_ref(),
                            NotifyOn::ALL.iter().map(|t| t.word()),
                            "triggers",
                        )),
                    )),
                }
            }
        }
    }
    let format = match n.format.as_ref() {
        None => WebhookFormat::default(),
        Some(f) => {
            let all = [
                WebhookFormat::Teams,
                WebhookFormat::TeamsMessageCard,
                WebhookFormat::Json,
            ];
            match all.iter().find(|x| x.word() == f.get_ref()) {
                Some(x) => *x,
                None => {
                    errors.push(loc.at(
                        f.span(),
                        format!("[notify] format = \"{}\" is not a format", f.get_ref()),
                        Some("use \"teams\" (an Adaptive Card: Teams Workflows and incoming webhooks), \"teams-messagecard\" (the legacy connector card) or \"json\"".into()),
                    ));
                    WebhookFormat::default()
                }
            }
        }
    };
    // A reference in a [notify] string: what exists, and where secrets may go.
    let check_refs = |s: &Spanned<String>,
                      what: &str,
                      secrets_ok: bool,
                      errors: &mut Vec<PlanError>|
     -> Vec<Ref> {
        match refs::refs_in(s.get_ref()) {
            Err(bad) => {
                errors.push(loc.at(
                    s.span(),
                    format!(
                        "bad reference `${{{}}}` in [notify] {what}: {}",
                        bad.text, bad.message
                    ),
                    None,
                ));
                Vec::new()
            }
            Ok(found) => {
                for r in &found {
                    let problem = match r {
                        Ref::Var(v) if !scope.vars.contains_key(v) => Some((
                            format!("`${{vars.{v}}}` in [notify] {what}: no variable `{v}`"),
                            format!("add `{v} = ...` under [vars], or give --var {v}=VALUE"),
                        )),
                        Ref::Secret(x) if !scope.secrets.contains_key(x) => Some((
                            format!("`${{secrets.{x}}}` in [notify] {what}: no secret `{x}`"),
                            format!("declare it: [secrets] {x} = {{ env = \"VAR\" }}"),
                        )),
                        Ref::Secret(x) if !secrets_ok => Some((
                            format!("`${{secrets.{x}}}` in [notify] {what}: a command line is visible to every user of the machine"),
                            format!("pass it in the command's environment instead: [notify] env = {{ TOKEN = \"${{secrets.{x}}}\" }}"),
                        )),
                        Ref::Site(p) if !scope.site.contains_key(p) => Some((
                            if scope.has_site {
                                format!("`${{site.{p}}}` in [notify] {what}: the site file has no `{p}`")
                            } else {
                                format!("`${{site.{p}}}` in [notify] {what}, but the plan has no site file")
                            },
                            "add it to the site file, or write the value".into(),
                        )),
                        Ref::Output { .. } | Ref::Item => Some((
                            format!("[notify] {what} refers to a step's outputs or a foreach item"),
                            "a notification belongs to the run, not to a step: use vars, secrets or site values".into(),
                        )),
                        _ => None,
                    };
                    if let Some((message, hint)) = problem {
                        errors.push(loc.at(s.span(), message, Some(hint)));
                    }
                }
                found
            }
        }
    };
    let webhook = n.webhook.as_ref().map(|w| {
        let found = check_refs(w, "webhook", true, errors);
        if !found.iter().any(|r| matches!(r, Ref::Secret(_))) {
            errors.push(loc.at(
                w.span(),
                "[notify] webhook is written in the plan: a webhook's address is its credential, and the plan text is kept in the journal and in exports",
                Some("declare it as a secret and refer to it: [secrets] teams_webhook = { env = \"TEAMS_WEBHOOK\" }, then webhook = \"${secrets.teams_webhook}\"".into()),
            ));
        } else if !w.get_ref().starts_with("${secrets.")
            && !w.get_ref().starts_with("http://")
            && !w.get_ref().starts_with("https://")
        {
            errors.push(loc.at(
                w.span(),
                "[notify] webhook must be an http:// or https:// URL",
                Some("write webhook = \"${secrets.NAME}\" with the whole URL in the secret".into()),
            ));
        }
        w.get_ref().clone()
    });
    let command = match &n.command {
        None => Vec::new(),
        Some(c) if c.get_ref().is_empty() => {
            errors.push(loc.at(
                c.span(),
                "[notify] command = [] names no program",
                Some("write command = [\"program\", \"arg\", ...]; it gets the message as JSON on stdin".into()),
            ));
            Vec::new()
        }
        Some(c) => c
            .get_ref()
            .iter()
            .map(|a| {
                check_refs(a, "command", false, errors);
                a.get_ref().clone()
            })
            .collect(),
    };
    let mut env = BTreeMap::new();
    for (k, v) in &n.env {
        check_refs(v, &format!("env.{k}"), true, errors);
        if k.is_empty() || k.contains('=') || k.starts_with("UPSHIFT_NOTIFY_") {
            errors.push(loc.at(
                v.span(),
                format!("[notify] env: `{k}` cannot be set"),
                Some("names without `=`; UPSHIFT_NOTIFY_* are set by upshift".into()),
            ));
        }
        env.insert(k.clone(), v.get_ref().clone());
    }
    if !env.is_empty() && command.is_empty() {
        errors.push(loc.at(
            raw.span(),
            "[notify] env is set but there is no command to hand it to",
            Some("add command = [...] or remove env".into()),
        ));
    }
    if webhook.is_none() && command.is_empty() && n.command.is_none() {
        errors.push(loc.at(
            raw.span(),
            "[notify] says neither where nor how to notify",
            Some("add webhook = \"${secrets.NAME}\" (an http(s) URL, e.g. a Teams webhook) and/or command = [\"program\", ...]".into()),
        ));
    }
    let timeout = match &n.timeout {
        None => Duration::from_secs(10),
        Some(t) => match upshift_steps::params::parse_duration(t.get_ref()) {
            Ok(d) if !d.is_zero() && d <= NOTIFY_TIMEOUT_MAX => d,
            Ok(_) => {
                errors.push(loc.at(
                    t.span(),
                    format!(
                        "[notify] timeout must be above 0 and at most {}",
                        humantime::format_duration(NOTIFY_TIMEOUT_MAX)
                    ),
                    Some("it bounds one attempt; the default is 10s".into()),
                ));
                Duration::from_secs(10)
            }
            Err(m) => {
                errors.push(loc.at(t.span(), m, None));
                Duration::from_secs(10)
            }
        },
    };
    let attempts = match &n.attempts {
        None => 4,
        Some(a) if (1..=NOTIFY_ATTEMPTS_MAX).contains(a.get_ref()) => *a.get_ref(),
        Some(a) => {
            errors.push(loc.at(
                a.span(),
                format!(
                    "[notify] attempts must be 1..={NOTIFY_ATTEMPTS_MAX}, not {}",
                    a.get_ref()
                ),
                Some("attempts counts the first try; the default is 4".into()),
            ));
            4
        }
    };
    (errors.len() == before).then_some(Notify {
        on,
        webhook,
        format,
        command,
        env,
        timeout,
        attempts,
    })
}

fn load_site(
    plan_path: &Path,
    raw: &RawPlan,
    source: &SiteSource,
    loc: &Locator<'_>,
) -> Result<Option<Site>, PlanError> {
    let (path, text) = match source {
        SiteSource::Pinned { path, text } => (path.clone(), text.clone()),
        SiteSource::File(p) => (p.clone(), read_site(p, None, loc)?),
        SiteSource::FromPlan => {
            let Some(rel) = &raw.site else {
                return Ok(None);
            };
            let base = plan_path.parent().unwrap_or(Path::new("."));
            let p = base.join(rel.get_ref());
            let text = read_site(&p, Some(rel.span()), loc)?;
            (p, text)
        }
    };
    let doc: toml::Value = toml::from_str::<toml::Table>(&text)
        .map(toml::Value::Table)
        .map_err(|e| {
            let site_loc = Locator {
                file: &path,
                text: &text,
            };
            let span = e.span().unwrap_or(0..0);
            let hint = crate::diagnostics::windows_path_hint(&text, span.start);
            site_loc.at(span, e.message().trim().to_string(), hint)
        })?;
    let mut values = BTreeMap::new();
    refs::flatten("", &doc, &mut values);
    Ok(Some(Site {
        path,
        text,
        values,
        doc,
    }))
}

fn read_site(p: &Path, span: Option<Range<usize>>, loc: &Locator<'_>) -> Result<String, PlanError> {
    std::fs::read_to_string(p).map_err(|e| {
        let full = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let message = format!("cannot read the site file {}: {e}", full.display());
        let hint = Some(match span {
            Some(_) => format!(
                "`site` is relative to the plan file ({}); fix it, or give the site file with --site FILE",
                loc.file.display()
            ),
            None => "--site is relative to the current folder, like any path on the command line"
                .to_string(),
        });
        match span {
            Some(sp) => loc.at(sp, message, hint),
            None => PlanError::whole_file(p, message, hint),
        }
    })
}

/// The site path a parameter's value comes from: the first `${site.X}` in
/// the string at dotted `field` of a `with` table as written.
fn site_ref_at(with: &toml::Table, field: &str) -> Option<String> {
    let mut parts = field.split('.');
    let mut cur = with.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_table()?.get(p)?;
    }
    refs::refs_in(cur.as_str()?)
        .ok()?
        .into_iter()
        .find_map(|r| match r {
            Ref::Site(p) | Ref::SiteOptional(p) => Some(p),
            _ => None,
        })
}

/// SHA-256 of a plan text, hex.
pub fn hash_text(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Replaces `target = "name"` with `connection = <the target's table>`.
pub fn expand_target(
    with: &toml::Table,
    targets: &BTreeMap<String, toml::Table>,
) -> Result<toml::Table, String> {
    let Some(t) = with.get("target") else {
        return Ok(with.clone());
    };
    let Some(name) = t.as_str() else {
        return Err("`target` must be the name of a [targets.<name>] table".into());
    };
    let Some(table) = targets.get(name) else {
        return Err(format!("no target `{name}`: add a [targets.{name}] table"));
    };
    let mut out = with.clone();
    out.remove("target");
    out.insert("connection".into(), toml::Value::Table(table.clone()));
    Ok(out)
}

/// For each step (by position in `steps`), the positions of the steps
/// that need it directly, in plan order. Only the direct edges are kept:
/// transitive sets would take O(steps²) memory on a long chain (measured:
/// 175 MiB for 2,000 steps).
fn direct_dependents(steps: &Steps, order: &[String]) -> Vec<Box<[u32]>> {
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); steps.len()];
    for id in order {
        let i = steps.position(id).expect("ordered steps are steps") as u32;
        for n in &steps[id].needs {
            out[steps.position(n).expect("needs are steps")].push(i);
        }
    }
    out.into_iter().map(Vec::into_boxed_slice).collect()
}

/// A topological order, ties broken by position in the file; or a cycle.
fn topo_order(steps: &Steps) -> Result<Vec<String>, Vec<String>> {
    // Edges by position in `steps`: what each step needs, and the reverse.
    let needs: Vec<Vec<usize>> = steps
        .values()
        .map(|s| s.needs.iter().filter_map(|n| steps.position(n)).collect())
        .collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); steps.len()];
    for (i, ns) in needs.iter().enumerate() {
        for &n in ns {
            dependents[n].push(i);
        }
    }
    // Kahn's algorithm with a priority on declaration order, so `graph`
    // and `--dry-run` list steps as the author wrote them where possible.
    let mut indeg: Vec<usize> = needs.iter().map(Vec::len).collect();
    let mut ready: BTreeSet<(usize, &str, usize)> = (0..steps.len())
        .filter(|&i| indeg[i] == 0)
        .map(|i| (steps.at(i).decl, steps.at(i).id.as_str(), i))
        .collect();
    let mut order = Vec::with_capacity(steps.len());
    while let Some((_, id, i)) = ready.pop_first() {
        order.push(id.to_string());
        for &next in &dependents[i] {
            indeg[next] -= 1;
            if indeg[next] == 0 {
                let d = steps.at(next);
                ready.insert((d.decl, d.id.as_str(), next));
            }
        }
    }
    if order.len() == steps.len() {
        return Ok(order);
    }
    // Name one cycle: among the steps left, walk `needs` until a repeat.
    let left = |i: usize| indeg[i] > 0;
    let start = (0..steps.len())
        .find(|&i| left(i))
        .expect("a cycle remains");
    let mut path = vec![start];
    let mut cur = start;
    loop {
        let next = *needs[cur]
            .iter()
            .find(|&&n| left(n))
            .expect("every remaining step needs another remaining step");
        if let Some(pos) = path.iter().position(|p| *p == next) {
            // path[pos..] is the cycle, listed against the `needs` direction.
            let mut cycle: Vec<String> = path[pos..]
                .iter()
                .map(|&i| steps.at(i).id.clone())
                .collect();
            cycle.reverse();
            // Start at the step declared first, so the message is stable.
            let first = (0..cycle.len())
                .min_by_key(|i| steps[&cycle[*i]].decl)
                .unwrap_or(0);
            cycle.rotate_left(first);
            return Err(cycle);
        }
        path.push(next);
        cur = next;
    }
}

impl Plan {
    /// Steps that depend on `id` directly, in plan order.
    pub fn dependents(&self, id: &str) -> impl Iterator<Item = &str> {
        let of = self.steps.position(id).map(|i| &*self.dependents[i]);
        of.unwrap_or_default()
            .iter()
            .map(|&d| self.steps.at(d as usize).id.as_str())
    }

    /// Steps that depend on `id`, directly or not (a walk of the reverse
    /// edges; used by rollback decisions, which are rare).
    pub fn transitive_dependents(&self, id: &str) -> BTreeSet<&str> {
        let mut out = BTreeSet::new();
        let mut todo = vec![id];
        while let Some(cur) = todo.pop() {
            for d in self.dependents(cur) {
                if out.insert(d) {
                    todo.push(d);
                }
            }
        }
        out
    }

    /// Ids of steps that differ between two plans (added, removed, changed).
    pub fn changed_steps(&self, other: &Plan) -> Vec<String> {
        let mut out = BTreeSet::new();
        for (id, s) in &self.steps {
            match other.steps.get(id) {
                None => {
                    out.insert(id.clone());
                }
                Some(o) => {
                    if s.body != o.body
                        || s.needs != o.needs
                        || s.compensate != o.compensate
                        || s.retry != o.retry
                        || s.timeout != o.timeout
                        || s.locks != o.locks
                        || s.on_failure != o.on_failure
                        || s.resume != o.resume
                        || s.host != o.host
                    {
                        out.insert(id.clone());
                    }
                }
            }
        }
        for id in other.steps.keys() {
            if !self.steps.contains_key(id) {
                out.insert(id.clone());
            }
        }
        out.into_iter().collect()
    }

    /// The limit of a named lock.
    pub fn lock_limit(&self, name: &str) -> u32 {
        self.locks.get(name).copied().unwrap_or(1)
    }

    /// Who holds lock `name` for a step on `host`: the host (`None`: the
    /// coordinator), or the whole site for a `scope = "site"` lock.
    pub fn lock_scope<'a>(&self, name: &str, host: Option<&'a str>) -> LockScope<'a> {
        if self.site_locks.contains(name) {
            LockScope::Site
        } else {
            LockScope::Host(host)
        }
    }

    /// The step whose outputs `${steps.<from>.outputs.x}` reads when
    /// written in step `referrer`: `from` itself, or, for a fanned-out
    /// `from`, its instance on the referrer's host. `None`: no such step
    /// in the run.
    pub fn output_source(&self, referrer: Option<&str>, from: &str) -> Option<String> {
        if self.steps.contains_key(from) {
            return Some(from.to_string());
        }
        let hs = self.fanned.get(from)?;
        let host = referrer
            .and_then(|r| self.steps.get(r))
            .filter(|d| d.instance_of.is_some())
            .and_then(|d| d.host.as_deref())?;
        hs.iter()
            .any(|h| h == host)
            .then(|| hosts::instance_id(from, host))
    }

    /// The `--var` values a run pins: those naming a path on this machine
    /// made absolute (relative to the current folder, as given), so that
    /// a resume started in another folder uses the same files.
    pub fn vars_to_pin(&self, vars: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut out = vars.clone();
        for (k, v) in out.iter_mut() {
            if k.starts_with("secret:")
                && let Some(f) = v.strip_prefix("file:")
                && !hosts::absolute_anywhere(f)
                && let Ok(abs) = std::path::absolute(f)
            {
                *v = format!("file:{}", abs.display());
            }
        }
        for u in &self.local_paths {
            if let Some((name, abs)) = &u.cli_var {
                out.insert(name.clone(), abs.clone());
            }
        }
        out
    }

    /// Files and folders on this machine that the run needs before it
    /// starts and that are not there (or are not what the step needs),
    /// located where their value is written. Checked where a plan is run
    /// or checked (parsing reads no other file).
    pub fn local_path_problems(&self) -> Vec<PlanError> {
        let mut out = Vec::new();
        for u in &self.local_paths {
            // A Windows path cannot be looked for on another system.
            if !u.must_exist || (!cfg!(windows) && !u.path.is_absolute()) {
                continue;
            }
            let what = if u.dir { "folder" } else { "file" };
            let problem = match std::fs::metadata(&u.path) {
                Ok(m) if m.is_dir() == u.dir => continue,
                Ok(_) => format!("is not a {what}"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist".into(),
                Err(e) => format!("cannot be read: {e}"),
            };
            let mut e = u.written.clone();
            e.message = format!(
                "step `{}` needs the {what} {} ({}), which {problem}",
                u.step,
                u.path.display(),
                u.field
            );
            e.hint = Some(match &u.relative_to {
                Some(r) => format!("{r}; give the right path (an absolute one is taken as it is)"),
                None => format!("give the path of an existing {what}"),
            });
            out.push(e);
        }
        out.sort_by(|a, b| (&a.file, a.line, &a.message).cmp(&(&b.file, b.line, &b.message)));
        out.dedup();
        out
    }

    /// Key files of the plan's ssh hosts that cannot be read (checked where
    /// a plan is run or checked; parsing reads no other file).
    pub fn host_file_problems(&self) -> Vec<PlanError> {
        hosts::host_file_problems(
            &self.hosts,
            &self.path,
            &self.text,
            self.site
                .as_ref()
                .map(|s| (s.path.as_path(), s.text.as_str())),
        )
    }
}
