//! `ich.cleanup_conferences`: turns the ICH "Cleanup Conferences" option on,
//! restarts ICH, follows `ConferenceTerminationLog.txt` until the old
//! conferences are cleaned, then turns the option off and restarts ICH.
//!
//! The manual: with `CleanupConferences` on, the ICH service sets an
//! expiration time on every old conference that has none, about 20 s per
//! conference, logging to `...\TM-ICH\log\ConferenceTerminationLog.txt`;
//! afterwards set `<add key="CleanupConferences" value="false"/>` in the
//! `<appSettings>` of `TM.ICH.Service.exe.config` and restart ICH. The "one
//! ICH host only" rule is a plan-level check of the engine.
//!
//! **Log lines.** The manual does not give the log's format, so the parser
//! is deliberately loose and documented (`docs/steps-components.md`); the
//! stand-in and tests write this invented format:
//! ```text
//! 2026-11-24 02:31:05.123 INFO  Found 1234 conferences without expiration time
//! 2026-11-24 02:31:25.456 INFO  Conference 'sip:...;gruu;opaque=app:conf:focus:id:ABC' expiration time set to 2026-12-24 02:31:25
//! 2026-11-24 02:31:45.789 ERROR Conference 'X' could not be updated: timeout
//! ```
//! A line counts as one cleaned conference when it mentions `expiration` and
//! `set to` or `updated` (and is not an error); `found <n> conference` gives
//! the total; a line with `error` counts as an error.
//!
//! **Done when** `count` conferences are cleaned, or the log has not grown
//! for `quiet_for` (default 10m). **Checkpoints**: phase, log byte offset,
//! counts; a resumed run follows the log from the checkpointed offset (the
//! quiet timer starts again at the resume). Progress and ETA at
//! `per_conference` (default 20 s) per remaining conference.
//!
//! Parameters: `service` (the ICH service or unit name), `config` (default
//! `C:\Program Files\Luware AG\TM-ICH\TM.ICH.Service.exe.config`), `log`
//! (default `log\ConferenceTerminationLog.txt` beside the config), `key`
//! (default `CleanupConferences`), `quiet_for`, `count`, `expected` (total,
//! for the ETA), `per_conference`, `poll_interval` (default 5s), `timeout`
//! (default 48h), `service_timeout` (default 2m), `systemctl` (non-Windows).
//! Outputs: `cleaned`, `errors`, `total` (0 if unknown), `finished_by`
//! (`count` | `quiet`), `log_offset`. Compensation: the option off and ICH
//! restarted (if it was on).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::appsettings::{AppSettingsEdit, load_doc};
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
};

/// Default ICH config path (the manual's default install folder).
pub const DEFAULT_CONFIG: &str = r"C:\Program Files\Luware AG\TM-ICH\TM.ICH.Service.exe.config";

/// Upper bound on bytes read from the log per poll (a guard; the rest is
/// read on the next poll).
const READ_MAX_BYTES: u64 = 4 << 20;

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
}

impl Progress {
    fn encode(&self) -> Vec<u8> {
        encode_lines(&[
            ("phase", self.phase.clone()),
            ("offset", self.offset.to_string()),
            ("cleaned", self.cleaned.to_string()),
            ("errors", self.errors.to_string()),
            ("total", self.total.to_string()),
        ])
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    service: String,
    #[serde(default = "default_config")]
    config: PathBuf,
    log: Option<PathBuf>,
    #[serde(default = "default_key")]
    key: String,
    #[serde(default = "ten_minutes", with = "duration_text")]
    quiet_for: Duration,
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
    config: PathBuf,
    log: PathBuf,
    key: String,
    quiet_for: Duration,
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
        config: p.config,
        log,
        key: p.key,
        quiet_for: p.quiet_for,
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

fn log_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Reads complete lines after `offset`; returns them and the new offset
/// (just past the last newline read).
fn read_new_lines(path: &Path, offset: u64) -> Result<(Vec<String>, u64), StepError> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), offset)),
        Err(e) => {
            return Err(StepError::fatal(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    let io = |e: std::io::Error| StepError::fatal(format!("reading {}: {e}", path.display()));
    f.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut buf = Vec::new();
    f.take(READ_MAX_BYTES).read_to_end(&mut buf).map_err(io)?;
    let Some(last_nl) = buf.iter().rposition(|&b| b == b'\n') else {
        return Ok((Vec::new(), offset));
    };
    let mut text = &buf[..=last_nl];
    if offset == 0 {
        text = text.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(text);
    }
    let lines = String::from_utf8_lossy(text)
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect();
    Ok((lines, offset + last_nl as u64 + 1))
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

    async fn follow(
        &self,
        ctx: &dyn StepContext,
        p: &mut Progress,
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
                            ctx.output(&format!("ICH: {l}\n"));
                        }
                        LogLine::Other => {}
                    }
                }
                p.offset = offset;
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
    fn describe(&self) -> Vec<String> {
        let mut lines = self.option(true).describe();
        lines.push(format!("restart service `{}`", self.ich.name));
        lines.push(format!(
            "follow {} until {}",
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
            }
        ));
        lines.extend(self.option(false).describe());
        lines.push(format!("restart service `{}`", self.ich.name));
        lines
    }

    async fn run(&self, ctx: &dyn StepContext) -> Result<StepOutcome, StepError> {
        // Fail early, before anything changes, if the config is unreadable.
        load_doc(&self.config)?;
        let mut p = ctx
            .resume_from()
            .and_then(|d| Progress::decode(&d))
            .unwrap_or_default();
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
            finished_by = self.follow(ctx, &mut p).await?;
            ctx.output(&format!(
                "cleanup finished ({}): {} conferences cleaned, {} errors\n",
                if finished_by == "count" {
                    "count reached".to_string()
                } else {
                    format!(
                        "log quiet for {}",
                        humantime::format_duration(self.quiet_for)
                    )
                },
                p.cleaned,
                p.errors
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
        outputs.insert("total".into(), self.total(&p).to_string());
        outputs.insert("finished_by".into(), finished_by.into());
        outputs.insert("log_offset".into(), p.offset.to_string());
        Ok(StepOutcome::with_outputs(outputs))
    }

    fn has_compensation(&self) -> bool {
        true
    }

    async fn compensate(&self, ctx: &dyn StepContext) -> Result<(), StepError> {
        if self.set_option(ctx, false).await? {
            self.ich.restart(ctx).await?;
        }
        Ok(())
    }

    async fn probe(&self, _ctx: &dyn StepContext) -> Result<Probe, StepError> {
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
        };
        assert_eq!(Progress::decode(&p.encode()), Some(p));
    }
}
