//! `log.watch`: watches a log file for a while and reports the lines
//! written meanwhile; a line matching `fail_on` fails the step, one matching
//! `pause_on` makes it wait for an operator. For the manual's
//! `connectionIssues.log` ("The system reports all errors related to
//! connection or certificate issues to a log file") after the TM services
//! start.
//!
//! Parameters: `file`; `duration` (how long to watch, default "5m");
//! `poll_interval` (default "2s"); `from` = `"end"` (default: only lines
//! written after the step starts) | `"start"` (the whole file); `fail_on`,
//! `pause_on` (lists of texts, matched case-insensitively anywhere in a
//! line); `lines_max` (new lines copied to the step's output, default 100;
//! the rest are counted).
//!
//! A file that does not exist (yet) is watched for: it may appear. Reading
//! is by byte offset, complete lines only; a file that shrank (rotated) is
//! read from its start. Lines are read as UTF-8 (invalid bytes replaced); a
//! UTF-16 file is refused with a message. Checkpoint: the offset read up
//! to; a resumed step goes on from it and watches for `duration` again.
//! After an approval of a `pause_on` match, the watch goes on after the
//! lines already reported.
//!
//! Outputs: `new_lines`, `matched` (lines that matched `fail_on` or
//! `pause_on`), `file_exists`, `last_line`, `offset`. No probe (a log says
//! what happened, not a state), no compensation.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{decode_lines, encode_lines};
use crate::kinds::KindFn;
use crate::params::duration_text;
use crate::{Outputs, ParamError, Step, StepContext, StepError, StepOutcome, parse_params};

/// The `log.watch` kind.
pub const KIND: KindFn = KindFn {
    name: "log.watch",
    summary: "watch a log file for a while, report new lines; fail or pause on matching lines",
    build,
    local_paths: &[],
};

/// Upper bound on bytes read from a log per poll (the rest is read on the
/// next poll), so a log that grows by gigabytes cannot exhaust memory.
const READ_MAX_BYTES: u64 = 4 << 20;

/// Upper bound on the length of one reported line, in characters.
const LINE_MAX_CHARS: usize = 2000;

/// The size of a file, 0 when it is missing.
pub(crate) fn log_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Reads the complete lines after `offset`; returns them and the new offset
/// (just past the last newline read). A missing file reads as no lines.
pub(crate) fn read_new_lines(path: &Path, offset: u64) -> Result<(Vec<String>, u64), StepError> {
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
    if offset == 0 && (buf.starts_with(&[0xFF, 0xFE]) || buf.starts_with(&[0xFE, 0xFF])) {
        return Err(StepError::fatal(format!(
            "{} is UTF-16; this step reads UTF-8 (or ASCII) logs only",
            path.display()
        )));
    }
    let Some(last_nl) = buf.iter().rposition(|&b| b == b'\n') else {
        return Ok((Vec::new(), offset));
    };
    let mut text = &buf[..=last_nl];
    if offset == 0 {
        text = text.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(text);
    }
    let lines = String::from_utf8_lossy(text)
        .lines()
        .map(|l| {
            let l = l.trim_end_matches('\r');
            if l.chars().count() > LINE_MAX_CHARS {
                let mut s: String = l.chars().take(LINE_MAX_CHARS).collect();
                s.push_str(" ...");
                s
            } else {
                l.to_string()
            }
        })
        .collect();
    Ok((lines, offset + last_nl as u64 + 1))
}

/// Whether `line` contains one of `patterns` (case-insensitive).
fn matches(line: &str, patterns: &[String]) -> Option<String> {
    let l = line.to_lowercase();
    patterns
        .iter()
        .find(|p| l.contains(&p.to_lowercase()))
        .cloned()
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum ReadFrom {
    End,
    Start,
}

fn end() -> ReadFrom {
    ReadFrom::End
}
fn five_minutes() -> Duration {
    Duration::from_secs(300)
}
fn two_seconds() -> Duration {
    Duration::from_secs(2)
}
fn hundred() -> usize {
    100
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    file: PathBuf,
    #[serde(default = "five_minutes", with = "duration_text")]
    duration: Duration,
    #[serde(default = "two_seconds", with = "duration_text")]
    poll_interval: Duration,
    #[serde(default = "end")]
    from: ReadFrom,
    #[serde(default)]
    fail_on: Vec<String>,
    #[serde(default)]
    pause_on: Vec<String>,
    #[serde(default = "hundred")]
    lines_max: usize,
}

struct Watch {
    p: Params,
}

fn build(with: &toml::Table) -> Result<Box<dyn Step>, ParamError> {
    let p: Params = parse_params(with)?;
    if p.poll_interval.is_zero() {
        return Err(ParamError::field(
            "poll_interval",
            "`poll_interval` must be above 0",
        ));
    }
    for (field, list) in [("fail_on", &p.fail_on), ("pause_on", &p.pause_on)] {
        if list.iter().any(|x| x.trim().is_empty()) {
            return Err(ParamError::field(
                field,
                format!("`{field}` has an empty text (it would match every line)"),
            ));
        }
    }
    Ok(Box::new(Watch { p }))
}

/// The checkpoint: where reading stands, the counts so far, and whether the
/// step paused for a match (so an approval answers that pause).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct State {
    offset: u64,
    new_lines: u64,
    matched: u64,
    paused: bool,
}

impl State {
    fn encode(&self) -> Vec<u8> {
        encode_lines(&[
            ("offset", self.offset.to_string()),
            ("new_lines", self.new_lines.to_string()),
            ("matched", self.matched.to_string()),
            ("paused", u8::from(self.paused).to_string()),
        ])
    }

    fn decode(data: &[u8]) -> Option<State> {
        let m = decode_lines(data);
        let num = |k: &str| m.get(k).and_then(|v| v.parse::<u64>().ok());
        Some(State {
            offset: num("offset")?,
            new_lines: num("new_lines").unwrap_or(0),
            matched: num("matched").unwrap_or(0),
            paused: num("paused") == Some(1),
        })
    }
}

#[async_trait::async_trait]
impl Step for Watch {
    fn describe(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "watch {} for {} ({}), report the new lines",
            self.p.file.display(),
            humantime::format_duration(self.p.duration),
            match self.p.from {
                ReadFrom::End => "lines written from now on",
                ReadFrom::Start => "the whole file",
            }
        )];
        if !self.p.fail_on.is_empty() {
            lines.push(format!("  fail on a line containing: {:?}", self.p.fail_on));
        }
        if !self.p.pause_on.is_empty() {
            lines.push(format!(
                "  wait for an operator on a line containing: {:?}",
                self.p.pause_on
            ));
        }
        lines.push(
            "  a missing file is watched for; no file means no new lines (ASSUMPTION: the log is created with its first line)"
                .into(),
        );
        lines
    }

    async fn run(&self, ctx: &dyn StepContext) -> Result<StepOutcome, StepError> {
        let resumed = ctx.resume_from().and_then(|d| State::decode(&d));
        // An approval answers this step's own pause only.
        let approved_pause = ctx.approved() && resumed.as_ref().is_some_and(|s| s.paused);
        let mut st = match resumed {
            Some(s) => s,
            None => {
                let s = State {
                    offset: match self.p.from {
                        ReadFrom::End => log_size(&self.p.file),
                        ReadFrom::Start => 0,
                    },
                    ..State::default()
                };
                ctx.checkpoint(s.encode(), 0, 0).await?;
                s
            }
        };
        if st.paused && approved_pause {
            ctx.output("approved by an operator: watching on\n");
        }
        st.paused = false;
        let started = tokio::time::Instant::now();
        let mut shown = 0usize;
        let mut last_line = String::new();
        let mut matched_lines: Vec<String> = Vec::new();
        loop {
            let size = log_size(&self.p.file);
            if size < st.offset {
                ctx.output(&format!(
                    "{} shrank ({size} < {} bytes): rotated or truncated; reading it from the start\n",
                    self.p.file.display(),
                    st.offset
                ));
                st.offset = 0;
            }
            let (lines, offset) = read_new_lines(&self.p.file, st.offset)?;
            if offset != st.offset {
                let mut fail = None;
                let mut pause = None;
                for l in &lines {
                    st.new_lines += 1;
                    if shown < self.p.lines_max {
                        ctx.output(&format!("{}: {l}\n", self.p.file.display()));
                        shown += 1;
                    }
                    last_line = l.clone();
                    let f = matches(l, &self.p.fail_on);
                    let p = matches(l, &self.p.pause_on);
                    if f.is_some() || p.is_some() {
                        st.matched += 1;
                        matched_lines.push(l.clone());
                    }
                    if fail.is_none() && f.is_some() {
                        fail = f.map(|f| (f, l.clone()));
                    }
                    if pause.is_none() && p.is_some() {
                        pause = p.map(|p| (p, l.clone()));
                    }
                }
                st.offset = offset;
                if let Some((pattern, line)) = fail {
                    ctx.checkpoint(st.encode(), st.new_lines, 0).await?;
                    return Err(StepError::fatal(format!(
                        "{}: a new line contains `{pattern}`: {line}{}",
                        self.p.file.display(),
                        if matched_lines.len() > 1 {
                            format!(" ({} matching lines, see the output)", matched_lines.len())
                        } else {
                            String::new()
                        }
                    )));
                }
                if let Some((pattern, _)) = pause {
                    st.paused = true;
                    ctx.checkpoint(st.encode(), st.new_lines, 0).await?;
                    return Err(StepError::WaitForOperator {
                        reason: format!(
                            "{}: new line(s) contain `{pattern}`:\n  {}\nCheck them (connection or certificate problems between the TM services?); `upshift approve` goes on watching after these lines",
                            self.p.file.display(),
                            matched_lines.join("\n  ")
                        ),
                    });
                }
                ctx.checkpoint(st.encode(), st.new_lines, 0).await?;
            }
            if started.elapsed() >= self.p.duration {
                break;
            }
            tokio::time::sleep(self.p.poll_interval.min(self.p.duration)).await;
        }
        let exists = self.p.file.exists();
        ctx.output(&format!(
            "{}: {} new line(s) in {}{}\n",
            self.p.file.display(),
            st.new_lines,
            humantime::format_duration(self.p.duration),
            if exists {
                ""
            } else {
                " (the file does not exist)"
            }
        ));
        if shown < st.new_lines as usize {
            ctx.output(&format!(
                "({} more line(s) not shown; lines_max = {})\n",
                st.new_lines as usize - shown,
                self.p.lines_max
            ));
        }
        let mut outputs = Outputs::new();
        outputs.insert("new_lines".into(), st.new_lines.to_string());
        outputs.insert("matched".into(), st.matched.to_string());
        outputs.insert("file_exists".into(), exists.to_string());
        outputs.insert("last_line".into(), last_line);
        outputs.insert("offset".into(), st.offset.to_string());
        Ok(StepOutcome::with_outputs(outputs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_patterns_match_any_case() {
        let s = State {
            offset: 10,
            new_lines: 3,
            matched: 1,
            paused: true,
        };
        assert_eq!(State::decode(&s.encode()), Some(s));
        assert_eq!(
            matches("2026 ERROR certificate expired", &["error".into()]),
            Some("error".into())
        );
        assert_eq!(matches("all good", &["error".into()]), None);
    }
}
