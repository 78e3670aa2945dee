//! `ich.cleanup_conferences`: turns the ICH "Cleanup Conferences" option on,
//! restarts ICH, follows `ConferenceTerminationLog.txt` until the old
//! conferences are cleaned, then turns the option off and restarts ICH.
//!
//! The manual: with `CleanupConferences` on, the ICH service sets an
//! expiration time on every old conference that has none, about 20 s per
//! conference; "new log file 'ConferenceTerminationLog.txt' appears in LUCS
//! folder: C:\Program Files\Luware AG\TM – ICH\log" (sic, with an en dash
//! and spaces; the config lives in `...\TM-ICH`); it is needed once, for
//! old conferences, and must be on for one server only. Afterwards set
//! `<add key="CleanupConferences" value="false"/>` in the `<appSettings>`
//! of `TM.ICH.Service.exe.config` and restart ICH. The "one ICH host only"
//! rule is a plan-level check of the engine.
//!
//! **Only when asked**: `enabled = false` (e.g. from the site file) makes
//! the step a no-op that says so (`finished_by = "disabled"`); it touches
//! neither the config nor the service.
//!
//! **The log must appear**: if no line reaches the log within `log_wait`
//! (default 5m) after ICH restarted with the option on, the step pauses for
//! an operator, naming where it looked and what to check, instead of
//! counting 0 cleaned conferences after a quiet period. Approving goes on
//! following the log and finishes when it is quiet (or the count is
//! reached), 0 cleaned if it never appears.
//!
//! **Log lines.** The manual does not give the log's format, so the parser
//! is deliberately loose and documented (`docs/steps-components.md`) — an
//! ASSUMPTION shown in the dry run; the stand-in and tests write this
//! invented format:
//! ```text
//! 2026-11-24 02:31:05.123 INFO  Found 1234 conferences without expiration time
//! 2026-11-24 02:31:25.456 INFO  Conference 'sip:...;gruu;opaque=app:conf:focus:id:ABC' expiration time set to 2026-12-24 02:31:25
//! 2026-11-24 02:31:45.789 ERROR Conference 'X' could not be updated: timeout
//! ```
//! A line counts as one cleaned conference when it mentions `expiration` and
//! `set to` or `updated` (and is not an error); `found <n> conference` gives
//! the total; a line with `error`, `could not` or `failed` counts as an
//! error: errors are counted, the first ones kept, and reported in the
//! outputs and the step's output.
//!
//! **Done when** `count` conferences are cleaned, or the log has not grown
//! for `quiet_for` (default 10m). **Checkpoints**: phase, log byte offset,
//! counts; a resumed run follows the log from the checkpointed offset (the
//! quiet and log-wait timers start again at the resume). Progress and ETA at
//! `per_conference` (default 20 s) per remaining conference.
//!
//! Parameters: `service` (the ICH service or unit name), `enabled` (default
//! true; `true`/`false` or their text), `config` (default
//! `C:\Program Files\Luware AG\TM-ICH\TM.ICH.Service.exe.config`), `log`
//! (default `log\ConferenceTerminationLog.txt` beside the config), `key`
//! (default `CleanupConferences`), `quiet_for`, `log_wait`, `count`,
//! `expected` (total, for the ETA), `per_conference`, `poll_interval`
//! (default 5s), `timeout` (default 48h), `service_timeout` (default 2m),
//! `systemctl` (non-Windows).
//! Outputs: `cleaned`, `errors`, `error_lines` (the first errors, ` | `
//! between them), `total` (0 if unknown), `finished_by` (`count` | `quiet`
//! | `disabled`), `log_offset`. Compensation: the option off and ICH
//! restarted (if it was on).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::appsettings::{AppSettingsEdit, load_doc};
use super::log_watch::{log_size, read_new_lines};
use super::service::{Backend, ServiceCtl};
use super::{decode_lines, encode_lines};
use crate::kinds::KindFn;
use crate::params::duration_text;
use crate::{Outputs, ParamError, Probe, Step, StepContext, StepError, StepOutcome, parse_params};

/// The `ich.cleanup_conferences` kind.
pub const KIND: KindFn = KindFn {
    name: "ich.cleanup_conferences",
    summary: "turn ICH CleanupConferences on, follow ConferenceTerminationLog.txt until done, turn it off",
    build,
    local_paths: &[],
};

/// Default ICH config path (the manual's default install folder).
pub const DEFAULT_CONFIG: &str = r"C:\Program Files\Luware AG\TM-ICH\TM.ICH.Service.exe.config";

/// The log folder as the manual prints it (with an en dash), for messages.
const MANUAL_LOG_DIR: &str = "C:\\Program Files\\Luware AG\\TM \u{2013} ICH\\log";

/// How many error lines of the log are kept for the outputs.
const ERROR_LINES_MAX: usize = 5;

/// The assumptions this step relies on, for the dry run.
const ASSUMPTIONS: &[&str] = &[
    "ASSUMPTION (log format, not in the manual): a line with `expiration` and `set to`/`updated` is one cleaned conference; `Found <n> conference` is the total; `error`/`could not`/`failed` is an error",
    "ASSUMPTION (not in the manual): the log gets its first line within `log_wait` of the restart, else the step pauses",
];

/// What one log line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLine {
    /// The total of old conferences found.
    Found(u64),
    /// One conference got its expiration time.
    Cleaned,
    /// An error.
    Error,
    /// Anything else.
    Other,
}

/// Classifies a log line (see the module docs for the format).
pub fn classify(line: &str) -> LogLine {
    let l = line.to_ascii_lowercase();
    if l.contains("error") || l.contains("could not") || l.contains("failed") {
        return LogLine::Error;
    }
    if let Some(at) = l.find("found ") {
        let n: String = l[at + 6..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(n) = n.parse()
            && l[at..].contains("conference")
        {
            return LogLine::Found(n);
        }
    }
    if l.contains("expiration") && (l.contains("set to") || l.contains("updated")) {
        return LogLine::Cleaned;
    }
    LogLine::Other
}

/// Progress state, as checkpointed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Progress {
    phase: String,
    offset: u64,
    cleaned: u64,
    errors: u64,
    total: u64,
    /// A line reached the log since the option was turned on.
    grew: bool,
    /// The step paused because the log stayed empty (an approval answers
    /// that).
    waited: bool,
    /// The first error lines.
    error_lines: Vec<String>,
}

impl Progress {
    fn encode(&self) -> Vec<u8> {
        let mut pairs = vec![
            ("phase".to_string(), self.phase.clone()),
            ("offset".to_string(), self.offset.to_string()),
            ("cleaned".to_string(), self.cleaned.to_string()),
            ("errors".to_string(), self.errors.to_string()),
            ("total".to_string(), self.total.to_string()),
            ("grew".to_string(), u8::from(self.grew).to_string()),
            ("waited".to_string(), u8::from(self.waited).to_string()),
        ];
        for (i, l) in self.error_lines.iter().enumerate() {
            pairs.push((format!("error.{i}"), l.replace(['\r', '\n'], " ")));
        }
        let pairs: Vec<(&str, String)> =
            pairs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        encode_lines(&pairs)
    }

    fn decode(data: &[u8]) -> Option<Progress> {
        let m = decode_lines(data);
        let num = |k: &str| m.get(k).and_then(|v| v.parse().ok());
        Some(Progress {
            phase: m.get("phase")?.clone(),
            offset: num("offset")?,
            cleaned: num("cleaned")?,
            errors: num("errors").unwrap_or(0),
            total: num("total").unwrap_or(0),
            grew: num("grew") == Some(1),
            waited: num("waited") == Some(1),
            error_lines: (0..ERROR_LINES_MAX)
                .map_while(|i| m.get(&format!("error.{i}")).cloned())
                .collect(),
        })
    }
}

fn ten_minutes() -> Duration {
    Duration::from_secs(600)
}
fn twenty_seconds() -> Duration {
    Duration::from_secs(20)
}
fn five_seconds() -> Duration {
    Duration::from_secs(5)
}
fn two_days() -> Duration {
    Duration::from_secs(48 * 3600)
}
fn two_minutes() -> Duration {
    Duration::from_secs(120)
}
fn default_config() -> PathBuf {
    PathBuf::from(DEFAULT_CONFIG)
}
fn default_key() -> String {
    "CleanupConferences".into()
}
fn five_minutes() -> Duration {
    Duration::from_secs(300)
}
fn yes() -> bool {
    true
}

/// `true`/`false`, or their text (a site file may hold either).
fn lenient_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bool(bool),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Bool(b) => Ok(b),
        Raw::Text(t) => match t.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => Ok(true),
            "false" | "no" | "0" | "" => Ok(false),
            other => Err(serde::de::Error::custom(format!(
                "enabled = \"{other}\": write true or false"
            ))),
        },
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    service: String,
    #[serde(default = "yes", deserialize_with = "lenient_bool")]
    enabled: bool,
    #[serde(default = "default_config")]
    config: PathBuf,
    log: Option<PathBuf>,
    #[serde(default = "default_key")]
    key: String,
    #[serde(default = "ten_minutes", with = "duration_text")]
    quiet_for: Duration,
    #[serde(default = "five_minutes", with = "duration_text")]
    log_wait: Duration,
    count: Option<u64>,
    expected: Option<u64>,
    #[serde(default = "twenty_seconds", with = "duration_text")]
    per_conference: Duration,
    #[serde(default = "five_seconds", with = "duration_text")]
    poll_interval: Duration,
    #[serde(default = "two_days", with = "duration_text")]
    timeout: Duration,
    #[serde(default = "two_minutes", with = "duration_text")]
    service_timeout: Duration,
    systemctl: Option<String>,
}

struct Cleanup {
    enabled: bool,
    config: PathBuf,
    log: PathBuf,
    key: String,
    quiet_for: Duration,
    log_wait: Duration,
    count: Option<u64>,
    expected: Option<u64>,
    per_conference: Duration,
    poll_interval: Duration,
    timeout: Duration,
    ich: ServiceCtl,
}

fn build(with: &toml::Table) -> Result<Box<dyn Step>, ParamError> {
    let p: Params = parse_params(with)?;
    if p.service.trim().is_empty() {
        return Err(ParamError::field("service", "`service` is empty")
            .hint("the ICH service name, e.g. service = \"TM-ICH\""));
    }
    if p.count == Some(0) {
        return Err(ParamError::field("count", "`count` must be at least 1"));
    }
    if p.poll_interval.is_zero() {
        return Err(ParamError::field(
            "poll_interval",
            "`poll_interval` must be above 0",
        ));
    }
    let log = p.log.unwrap_or_else(|| {
        // Beside the config, in `log\` (Windows separators on Windows).
        let dir = p.config.parent().unwrap_or(Path::new("."));
        dir.join("log").join("ConferenceTerminationLog.txt")
    });
    Ok(Box::new(Cleanup {
        enabled: p.enabled,
        config: p.config,
        log,
        key: p.key,
        quiet_for: p.quiet_for,
        log_wait: p.log_wait,
        count: p.count,
        expected: p.expected,
        per_conference: p.per_conference,
        poll_interval: p.poll_interval,
        timeout: p.timeout,
        ich: ServiceCtl {
            backend: Backend::for_this_os(p.systemctl.as_deref()),
            name: p.service,
            timeout: p.service_timeout,
            poll_interval: Duration::from_millis(500).min(p.poll_interval),
        },
    }))
}

impl Cleanup {
    fn option(&self, on: bool) -> AppSettingsEdit {
        AppSettingsEdit {
            file: self.config.clone(),
            set: vec![(self.key.clone(), on.to_string())],
            remove: Vec::new(),
        }
    }

    async fn set_option(&self, ctx: &dyn StepContext, on: bool) -> Result<bool, StepError> {
        let applied = self
            .option(on)
            .apply(ctx, &ctx.work_dir(), None, false)
            .await?;
        Ok(!applied.changes.is_empty())
    }

    fn total(&self, p: &Progress) -> u64 {
        // The operator's number first, then the log's "Found N", then the
        // count to stop at.
        self.expected.unwrap_or(if p.total > 0 {
            p.total
        } else {
            self.count.unwrap_or(0)
        })
    }

    fn report(&self, ctx: &dyn StepContext, p: &Progress) {
        let total = self.total(p);
        let msg = if total > 0 {
            let left = total.saturating_sub(p.cleaned);
            let eta = self
                .per_conference
                .checked_mul(u32::try_from(left).unwrap_or(u32::MAX))
                .unwrap_or(Duration::MAX);
            format!(
                "cleaned {} of {total} conferences, about {} left",
                p.cleaned,
                humantime::format_duration(Duration::from_secs(eta.as_secs()))
            )
        } else {
            format!("cleaned {} conferences (total unknown)", p.cleaned)
        };
        ctx.progress(p.cleaned, total, &msg);
    }

    /// Why the log is silent, and what to check, for the pause.
    fn silent_log_reason(&self) -> String {
        let exists = self.log.exists();
        let mut r = format!(
            "{} {} within {} after {} restarted with `{}` = true.\n\
             Looked at: {}\n\
             The manual says the log appears in `{MANUAL_LOG_DIR}` (as printed there, with an en dash).\n\
             Check: the service `{}` runs; `{}` in {} is true; the service account can write the log folder; the log path (set `log` if your ICH writes elsewhere).",
            self.log.display(),
            if exists {
                "got no new line"
            } else {
                "did not appear"
            },
            humantime::format_duration(self.log_wait),
            self.ich.name,
            self.key,
            self.log.display(),
            self.ich.name,
            self.key,
            self.config.display(),
        );
        // Other places the log may be, named by the manual's chapters.
        if let Some(root) = self.config.parent().and_then(Path::parent) {
            for dir in ["TM \u{2013} ICH", "TM-ICH", "LUCS-ICH"] {
                let candidate = root
                    .join(dir)
                    .join("log")
                    .join("ConferenceTerminationLog.txt");
                if candidate != self.log && candidate.exists() {
                    r.push_str(&format!(
                        "\nThere is a log at {}: if that is the one, set `log` to it.",
                        candidate.display()
                    ));
                }
            }
        }
        r.push_str(
            "\n`upshift approve` goes on following the log and finishes when it is quiet (0 cleaned if it never appears).",
        );
        r
    }

    async fn follow(
        &self,
        ctx: &dyn StepContext,
        p: &mut Progress,
        accept_silence: bool,
    ) -> Result<&'static str, StepError> {
        let started = tokio::time::Instant::now();
        let mut last_growth = started;
        loop {
            let size = log_size(&self.log);
            if size < p.offset {
                ctx.output(&format!(
                    "{} shrank ({} < {} bytes): it was rotated or truncated; reading it from the start\n",
                    self.log.display(),
                    size,
                    p.offset
                ));
                p.offset = 0;
            }
            let (lines, offset) = read_new_lines(&self.log, p.offset)?;
            if offset != p.offset {
                for l in &lines {
                    match classify(l) {
                        LogLine::Found(n) => p.total = n,
                        LogLine::Cleaned => p.cleaned += 1,
                        LogLine::Error => {
                            p.errors += 1;
                            if p.error_lines.len() < ERROR_LINES_MAX {
                                p.error_lines.push(l.clone());
                            }
                            ctx.output(&format!("ICH error: {l}\n"));
                        }
                        LogLine::Other => {}
                    }
                }
                p.offset = offset;
                p.grew = true;
                last_growth = tokio::time::Instant::now();
                ctx.checkpoint(p.encode(), p.cleaned, self.total(p)).await?;
                self.report(ctx, p);
            }
            if let Some(c) = self.count
                && p.cleaned >= c
            {
                return Ok("count");
            }
            let now = tokio::time::Instant::now();
            if !p.grew && !accept_silence && now.duration_since(started) >= self.log_wait {
                // Nothing at all since the option was turned on: not a
                // finished cleanup, something to look at.
                p.waited = true;
                ctx.checkpoint(p.encode(), p.cleaned, self.total(p)).await?;
                return Err(StepError::WaitForOperator {
                    reason: self.silent_log_reason(),
                });
            }
            if now.duration_since(last_growth) >= self.quiet_for {
                return Ok("quiet");
            }
            if now.duration_since(started) >= self.timeout {
                return Err(StepError::transient(format!(
                    "conference cleanup still running after {} ({} cleaned); \
                     a retry resumes following the log (CleanupConferences stays on)",
                    humantime::format_duration(self.timeout),
                    p.cleaned
                )));
            }
            tokio::time::sleep(self.poll_interval).await;
        }
    }
}

#[async_trait::async_trait]
impl Step for Cleanup {
    async fn preflight(
        &self,
        ctx: &crate::preflight::PreflightContext,
    ) -> Vec<crate::preflight::Check> {
        crate::preflight::files::check_xml_config_for(
            ctx,
            &self.config,
            "the ICH service's config file",
        )
    }
    fn resources(&self) -> Vec<crate::Resource> {
        // It edits the ICH configuration and restarts the service.
        vec![
            crate::Resource::service(&self.ich.name),
            crate::Resource::file(&self.config),
        ]
    }
    fn describe(&self) -> Vec<String> {
        if !self.enabled {
            return vec![format!(
                "conference cleanup not requested (enabled = false): nothing is done; {} and `{}` are left as they are",
                self.config.display(),
                self.ich.name
            )];
        }
        let mut lines = self.option(true).describe();
        lines.push(format!("restart service `{}`", self.ich.name));
        lines.push(format!(
            "follow {} until {}; pause if no line arrives within {}",
            self.log.display(),
            match self.count {
                Some(c) => format!(
                    "{c} conferences are cleaned or it is quiet for {}",
                    humantime::format_duration(self.quiet_for)
                ),
                None => format!(
                    "it is quiet for {}",
                    humantime::format_duration(self.quiet_for)
                ),
            },
            humantime::format_duration(self.log_wait)
        ));
        lines.extend(self.option(false).describe());
        lines.push(format!("restart service `{}`", self.ich.name));
        lines.push(format!(
            "  the manual names the log folder `{MANUAL_LOG_DIR}` (with an en dash); this step reads {}",
            self.log.display()
        ));
        lines.extend(ASSUMPTIONS.iter().map(|a| format!("  {a}")));
        lines
    }

    async fn run(&self, ctx: &dyn StepContext) -> Result<StepOutcome, StepError> {
        if !self.enabled {
            let state = match load_doc(&self.config)
                .map(|d| d.get(&self.key).map(|v| v.map(str::to_string)))
            {
                Ok(Some(Some(v))) => format!("`{}` is {v:?} there", self.key),
                Ok(_) => format!("`{}` is not set there", self.key),
                Err(_) => "it could not be read".to_string(),
            };
            ctx.output(&format!(
                "conference cleanup not requested (enabled = false): nothing done; {} left as it is ({state})\n",
                self.config.display()
            ));
            let mut outputs = Outputs::new();
            for k in ["cleaned", "errors", "total", "log_offset"] {
                outputs.insert(k.into(), "0".into());
            }
            outputs.insert("error_lines".into(), String::new());
            outputs.insert("finished_by".into(), "disabled".into());
            return Ok(StepOutcome::with_outputs(outputs));
        }
        // Fail early, before anything changes, if the config is unreadable.
        load_doc(&self.config)?;
        let mut p = ctx
            .resume_from()
            .and_then(|d| Progress::decode(&d))
            .unwrap_or_default();
        // An approval answers this step's own pause for a silent log.
        let accept_silence = p.waited && ctx.approved();
        if accept_silence {
            ctx.output(
                "approved by an operator: following the log without waiting for its first line\n",
            );
        }
        if p.phase.is_empty() {
            // Lines already in the log belong to earlier runs.
            p = Progress {
                phase: "restarting".into(),
                offset: log_size(&self.log),
                ..Progress::default()
            };
            ctx.checkpoint(p.encode(), 0, 0).await?;
        }
        if p.phase == "restarting" {
            self.set_option(ctx, true).await?;
            self.ich.restart(ctx).await?;
            p.phase = "following".into();
            ctx.checkpoint(p.encode(), p.cleaned, self.total(&p))
                .await?;
        }
        let mut finished_by = "resumed";
        if p.phase == "following" {
            // Reconcile after a crash: the option on, ICH running.
            if self.set_option(ctx, true).await? {
                self.ich.restart(ctx).await?;
            } else {
                self.ich.ensure(ctx, true).await?;
            }
            self.report(ctx, &p);
            finished_by = self.follow(ctx, &mut p, accept_silence).await?;
            ctx.output(&format!(
                "cleanup finished ({}): {} conferences cleaned, {} errors{}\n",
                if finished_by == "count" {
                    "count reached".to_string()
                } else {
                    format!(
                        "log quiet for {}",
                        humantime::format_duration(self.quiet_for)
                    )
                },
                p.cleaned,
                p.errors,
                if p.errors > 0 {
                    format!(
                        " (first: {}) — check ConferenceTerminationLog.txt",
                        p.error_lines.join(" | ")
                    )
                } else {
                    String::new()
                }
            ));
            p.phase = "disabling".into();
            ctx.checkpoint(p.encode(), p.cleaned, self.total(&p))
                .await?;
        }
        if p.phase == "disabling" {
            self.set_option(ctx, false).await?;
            self.ich.restart(ctx).await?;
        }
        let mut outputs = Outputs::new();
        outputs.insert("cleaned".into(), p.cleaned.to_string());
        outputs.insert("errors".into(), p.errors.to_string());
        outputs.insert("error_lines".into(), p.error_lines.join(" | "));
        outputs.insert("total".into(), self.total(&p).to_string());
        outputs.insert("finished_by".into(), finished_by.into());
        outputs.insert("log_offset".into(), p.offset.to_string());
        Ok(StepOutcome::with_outputs(outputs))
    }

    fn has_compensation(&self) -> bool {
        self.enabled
    }

    async fn compensate(&self, ctx: &dyn StepContext) -> Result<(), StepError> {
        if !self.enabled {
            return Ok(());
        }
        if self.set_option(ctx, false).await? {
            self.ich.restart(ctx).await?;
        }
        Ok(())
    }

    async fn probe(&self, _ctx: &dyn StepContext) -> Result<Probe, StepError> {
        if !self.enabled {
            return Ok(Probe::Unknown);
        }
        // The lasting effect of the step is the option being off again.
        let doc = load_doc(&self.config)?;
        Ok(match doc.get(&self.key) {
            Some(Some(v)) if v.eq_ignore_ascii_case("true") => {
                Probe::Differs(format!("`{}` is still on", self.key))
            }
            _ => Probe::Unknown,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_classified() {
        assert_eq!(
            classify(
                "2026-11-24 02:31:05.123 INFO  Found 1234 conferences without expiration time"
            ),
            LogLine::Found(1234)
        );
        assert_eq!(
            classify(
                "2026-11-24 02:31:25.456 INFO  Conference 'sip:x;gruu' expiration time set to 2026-12-24 02:31:25"
            ),
            LogLine::Cleaned
        );
        assert_eq!(
            classify("2026-11-24 02:31:45.789 ERROR Conference 'X' could not be updated: timeout"),
            LogLine::Error
        );
        assert_eq!(classify("Service endpoint established"), LogLine::Other);
    }

    #[test]
    fn checkpoint_round_trips() {
        let p = Progress {
            phase: "following".into(),
            offset: 1234,
            cleaned: 7,
            errors: 1,
            total: 40,
            grew: true,
            waited: false,
            error_lines: vec!["ERROR x could not".into()],
        };
        assert_eq!(Progress::decode(&p.encode()), Some(p));
    }
}
