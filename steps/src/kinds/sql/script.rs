//! `sql.script`: runs a `.sql` file batch by batch, split on sqlcmd `GO`
//! lines ([`super::go_split`]), with a checkpoint after each batch so that an
//! interrupted run goes on at the next batch.
//!
//! Parameters: `connection`, `file`, `command_timeout` (per batch run,
//! default "1h"; "0s" = none). Outputs: `batches` (in the file), `ran` (batch
//! runs in this attempt, repeats counted). `describe()` reads the file (the
//! only I/O outside `run`) to list the batches; if it cannot, it says so.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::connection::{self, ConnectionParams, command_limit, limit_text, sha256_hex, within};
use super::go_split::{self, Batch};
use crate::kinds::KindFn;
use crate::{Outputs, ParamError, Step, StepContext, StepError, StepOutcome, parse_params};

/// The `sql.script` kind.
pub const KIND: KindFn = KindFn {
    name: "sql.script",
    summary: "run a .sql file batch by batch (sqlcmd GO rules), resumable: connection, file, command_timeout",
    build,
    local_paths: &[crate::LocalPath::input("file", false)],
};

const DEFAULT_LIMIT: Duration = Duration::from_secs(60 * 60);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    connection: ConnectionParams,
    file: PathBuf,
    #[serde(default, with = "crate::params::duration_text::option")]
    command_timeout: Option<Duration>,
}

struct Script {
    connection: ConnectionParams,
    file: PathBuf,
    limit: Option<Duration>,
}

fn build(with: &toml::Table) -> Result<Box<dyn Step>, ParamError> {
    let p: Params = parse_params(with)?;
    p.connection.check()?;
    if p.file.as_os_str().is_empty() {
        return Err(ParamError::field("file", "`file` is empty"));
    }
    Ok(Box::new(Script {
        connection: p.connection,
        file: p.file,
        limit: command_limit(p.command_timeout, DEFAULT_LIMIT),
    }))
}

/// The checkpoint: the next batch to run and the file it belongs to.
fn checkpoint_text(next: usize, sha: &str) -> Vec<u8> {
    format!("sql.script v1 next={next} sha256={sha}").into_bytes()
}

fn parse_checkpoint(data: &[u8]) -> Option<(usize, String)> {
    let text = std::str::from_utf8(data).ok()?;
    let rest = text.strip_prefix("sql.script v1 ")?;
    let mut next = None;
    let mut sha = None;
    for part in rest.split(' ') {
        if let Some(n) = part.strip_prefix("next=") {
            next = n.parse().ok();
        } else if let Some(s) = part.strip_prefix("sha256=") {
            sha = Some(s.to_string());
        }
    }
    Some((next?, sha?))
}

/// Reads and splits a script file.
pub(crate) fn load(file: &std::path::Path) -> Result<(Vec<Batch>, String), StepError> {
    let bytes = std::fs::read(file)
        .map_err(|e| StepError::fatal(format!("cannot read {}: {e}", file.display())))?;
    let sha = sha256_hex(&bytes);
    let text = String::from_utf8(bytes).map_err(|_| {
        StepError::fatal(format!(
            "{} is not UTF-8 text; save it as UTF-8 (with or without BOM)",
            file.display()
        ))
    })?;
    let batches =
        go_split::split(&text).map_err(|e| StepError::fatal(format!("{}: {e}", file.display())))?;
    Ok((batches, sha))
}

/// One describe() line per batch.
pub(crate) fn batch_lines(batches: &[Batch]) -> Vec<String> {
    batches
        .iter()
        .enumerate()
        .map(|(i, b)| {
            format!(
                "  batch {}: line {}, runs {}x",
                i + 1,
                b.first_line,
                b.repeat
            )
        })
        .collect()
}

#[async_trait::async_trait]
impl Step for Script {
    async fn preflight(
        &self,
        ctx: &crate::preflight::PreflightContext,
    ) -> Vec<crate::preflight::Check> {
        super::preflight::path_and_login(
            ctx,
            &self.file,
            crate::preflight::files::Expect::File,
            "the SQL script the step runs",
            &self.connection,
        )
        .await
    }
    fn describe(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "run script {} on {}, batch by batch ({} per batch)",
            self.file.display(),
            self.connection.display(),
            limit_text(self.limit)
        )];
        match load(&self.file) {
            Ok((batches, _)) => lines.extend(batch_lines(&batches)),
            Err(e) => lines.push(format!("  (the file is read when the step runs; now: {e})")),
        }
        lines
    }

    async fn run(&self, ctx: &dyn StepContext) -> Result<StepOutcome, StepError> {
        let (batches, sha) = load(&self.file)?;
        let total = batches.len();
        let start = match ctx.resume_from() {
            None => 0,
            Some(data) => match parse_checkpoint(&data) {
                Some((next, old)) if old == sha => next.min(total),
                Some(_) => {
                    return Err(StepError::fatal(format!(
                        "{} changed since the interrupted attempt (its SHA-256 differs from the checkpoint's); batches already run cannot be matched to the new file. Restore the file or start a new run",
                        self.file.display()
                    )));
                }
                None => 0,
            },
        };
        if start > 0 {
            ctx.output(&format!(
                "resuming {} at batch {} of {total}\n",
                self.file.display(),
                start + 1
            ));
        }
        let mut ran = 0u64;
        if start < total {
            let mut sql = self.connection.connect(None).await?;
            for (i, b) in batches.iter().enumerate().skip(start) {
                let at = format!(
                    "{} batch {} (line {})",
                    self.file.display(),
                    i + 1,
                    b.first_line
                );
                for _ in 0..b.repeat {
                    sql.batch(&b.text, self.limit)
                        .await
                        .map_err(|e| within(e, &at))?;
                    ran += 1;
                }
                ctx.checkpoint(checkpoint_text(i + 1, &sha), (i + 1) as u64, total as u64)
                    .await?;
                ctx.progress(
                    (i + 1) as u64,
                    total as u64,
                    &format!("batch {} of {total} done", i + 1),
                );
            }
            ctx.output(&format!(
                "{}: {} ran {ran} batch run(s)\n",
                sql.label(),
                connection::short(&self.file.display().to_string())
            ));
        }
        let mut outputs = Outputs::new();
        outputs.insert("batches".into(), total.to_string());
        outputs.insert("ran".into(), ran.to_string());
        Ok(StepOutcome::with_outputs(outputs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trips() {
        let data = checkpoint_text(3, "abc");
        assert_eq!(parse_checkpoint(&data), Some((3, "abc".to_string())));
        assert_eq!(parse_checkpoint(b"garbage"), None);
    }
}
