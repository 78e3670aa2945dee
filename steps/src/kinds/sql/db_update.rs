//! `db.update`: applies versioned update scripts, one version at a time, up
//! to the target, recording each in `upshift.schema_history`.
//!
//! Scripts live in `scripts_dir`, named `<from>_to_<to>.sql` (e.g.
//! `7.1_to_7.2.sql`), split on sqlcmd `GO` lines. From the database's current
//! version (read with `version_query`) the step picks the script starting
//! there that reaches furthest without passing the target, and repeats.
//! Each script must leave the database at its `<to>` version (the step checks
//! before it commits).
//!
//! - A script runs in one transaction together with its history row
//!   (`SET XACT_ABORT ON`), unless it contains the line
//!   `-- upshift: no-transaction` (for statements SQL Server refuses inside a
//!   transaction); then its history row is written after it succeeded. A
//!   transactional script that ends the transaction itself (`@@TRANCOUNT`
//!   is not 1 after its last batch) is refused.
//! - A failed script is rolled back and recorded with `success = 0`.
//! - The step refuses to run when a recorded script's checksum (SHA-256 of
//!   the file) differs from the file now, or when a script it is about to
//!   run is already recorded as applied.
//! - `sp_getapplock` (`@LockOwner = 'Session'`, waiting up to
//!   `lock_timeout`, default 1 minute) keeps two runs from updating one
//!   database at once. It is taken **before** anything else, the history
//!   table's creation included: two runs starting together would otherwise
//!   both find the table missing and the loser would fail for good on
//!   "There is already an object named 'schema_history'" (2714). The step
//!   releases the lock when it ends, and the server releases it if the
//!   session dies. A lock still held by another run after `lock_timeout` is
//!   a transient failure (the engine retries per the step's policy).
//! - On resume it reads the database's version and history, not its memory.
//!
//! Parameters: `connection`, `scripts_dir`, `target_version`,
//! `version_query` (default as `db.check`), `expect_path` (optional: the
//! `path` output of `db.check`; the versions applied must be the end of it),
//! `command_timeout` (per batch, default "4h"; "0s" = none), `lock_timeout`
//! (default "1m").
//! Outputs: `from_version`, `version`, `applied` (scripts applied by this
//! attempt, comma-separated). No compensation: the backup step's restore is
//! the database phase's rollback. Probe: in place when the database is at
//! the target version.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::connection::{ConnectionParams, Sql, cell_text, command_limit, limit_text, within};
use super::db_check::{DEFAULT_VERSION_QUERY, compare_versions, read_version};
use super::script::load;
use crate::kinds::KindFn;
use crate::{Outputs, ParamError, Probe, Step, StepContext, StepError, StepOutcome, parse_params};

/// The `db.update` kind.
pub const KIND: KindFn = KindFn {
    name: "db.update",
    summary: "apply <from>_to_<to>.sql update scripts up to target_version with a history table: connection, scripts_dir, target_version",
    build,
    local_paths: &[crate::LocalPath::input("scripts_dir", true)],
};

const DEFAULT_LIMIT: Duration = Duration::from_secs(4 * 60 * 60);

/// The history table, created if missing.
pub const HISTORY_DDL: &str = "IF SCHEMA_ID(N'upshift') IS NULL EXEC(N'CREATE SCHEMA [upshift]');
IF OBJECT_ID(N'[upshift].[schema_history]', N'U') IS NULL
CREATE TABLE [upshift].[schema_history] (
    [id] int IDENTITY(1,1) NOT NULL CONSTRAINT [PK_upshift_schema_history] PRIMARY KEY,
    [version] nvarchar(50) NOT NULL,
    [script] nvarchar(260) NOT NULL,
    [checksum] nvarchar(64) NOT NULL,
    [run_id] nvarchar(64) NOT NULL,
    [applied_by] nvarchar(128) NOT NULL,
    [applied_at] datetime2(3) NOT NULL,
    [execution_ms] bigint NOT NULL,
    [success] bit NOT NULL
);";

const HISTORY_SELECT: &str = "SELECT [version], [script], [checksum], [applied_by], [applied_at], [execution_ms], [success] FROM [upshift].[schema_history] ORDER BY [id]";

const HISTORY_INSERT: &str = "INSERT INTO [upshift].[schema_history] ([version], [script], [checksum], [run_id], [execution_ms], [success], [applied_by], [applied_at]) VALUES (@P1, @P2, @P3, @P4, @P5, @P6, SUSER_SNAME(), SYSUTCDATETIME())";

const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(60);

/// The application lock, waiting up to `wait` (whole milliseconds; the
/// number is computed, never taken from text).
fn lock_statement(wait: Duration) -> String {
    let ms = wait.as_millis().min(i32::MAX as u128);
    format!(
        "DECLARE @r int; EXEC @r = sp_getapplock @Resource = N'upshift.db.update', @LockMode = N'Exclusive', @LockOwner = N'Session', @LockTimeout = {ms}; SELECT @r AS result;"
    )
}

const UNLOCK: &str =
    "EXEC sp_releaseapplock @Resource = N'upshift.db.update', @LockOwner = N'Session';";

/// The marker line for scripts that cannot run inside a transaction.
pub const NO_TRANSACTION: &str = "-- upshift: no-transaction";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    connection: ConnectionParams,
    scripts_dir: PathBuf,
    target_version: String,
    version_query: Option<String>,
    expect_path: Option<String>,
    #[serde(default, with = "crate::params::duration_text::option")]
    command_timeout: Option<Duration>,
    #[serde(default, with = "crate::params::duration_text::option")]
    lock_timeout: Option<Duration>,
}

struct DbUpdate {
    connection: ConnectionParams,
    dir: PathBuf,
    target: String,
    query: String,
    expect_path: Option<Vec<String>>,
    limit: Option<Duration>,
    lock_wait: Duration,
}

fn build(with: &toml::Table) -> Result<Box<dyn Step>, ParamError> {
    let p: Params = parse_params(with)?;
    p.connection.check()?;
    if p.target_version.trim().is_empty() {
        return Err(ParamError::field(
            "target_version",
            "`target_version` is empty",
        ));
    }
    Ok(Box::new(DbUpdate {
        connection: p.connection,
        dir: p.scripts_dir,
        target: p.target_version.trim().to_string(),
        query: p
            .version_query
            .unwrap_or_else(|| DEFAULT_VERSION_QUERY.to_string()),
        expect_path: p.expect_path.map(|s| {
            s.split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect()
        }),
        limit: command_limit(p.command_timeout, DEFAULT_LIMIT),
        lock_wait: p.lock_timeout.unwrap_or(DEFAULT_LOCK_WAIT),
    }))
}

/// An update script file.
#[derive(Debug, Clone)]
struct ScriptFile {
    from: String,
    to: String,
    name: String,
    path: PathBuf,
}

/// `<from>_to_<to>.sql` files in `dir`, sorted by from then to.
fn scripts_in(dir: &Path) -> Result<Vec<ScriptFile>, StepError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        StepError::fatal(format!(
            "cannot list update scripts in {}: {e}",
            dir.display()
        ))
    })?;
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(|e| StepError::fatal(format!("{}: {e}", dir.display())))?;
        let name = e.file_name().to_string_lossy().to_string();
        let Some(stem) = name
            .strip_suffix(".sql")
            .or_else(|| name.strip_suffix(".SQL"))
        else {
            continue;
        };
        let Some((from, to)) = stem.split_once("_to_") else {
            continue;
        };
        out.push(ScriptFile {
            from: from.to_string(),
            to: to.to_string(),
            name: name.clone(),
            path: e.path(),
        });
    }
    out.sort_by(|a, b| compare_versions(&a.from, &b.from).then(compare_versions(&a.to, &b.to)));
    Ok(out)
}

/// The scripts from `current` to `target`, each step reaching as far as it
/// can without passing the target.
fn chain(scripts: &[ScriptFile], current: &str, target: &str) -> Result<Vec<ScriptFile>, String> {
    let mut out: Vec<ScriptFile> = Vec::new();
    let mut at = current.to_string();
    while compare_versions(&at, target) == Ordering::Less {
        let next = scripts
            .iter()
            .filter(|s| {
                compare_versions(&s.from, &at) == Ordering::Equal
                    && compare_versions(&s.to, &at) == Ordering::Greater
                    && compare_versions(&s.to, target) != Ordering::Greater
            })
            .max_by(|a, b| compare_versions(&a.to, &b.to));
        let Some(next) = next else {
            return Err(format!(
                "no update script starts at version {at} on the way to {target} (expected a file named {at}_to_<version>.sql)"
            ));
        };
        at = next.to.clone();
        out.push(next.clone());
    }
    Ok(out)
}

/// A history row as read back.
struct Recorded {
    version: String,
    script: String,
    checksum: String,
    success: bool,
}

async fn read_history(sql: &mut Sql, limit: Option<Duration>) -> Result<Vec<Recorded>, StepError> {
    let rows = sql
        .batch(HISTORY_SELECT, limit)
        .await
        .map_err(|e| within(e, "reading upshift.schema_history"))?;
    Ok(rows
        .into_iter()
        .next()
        .unwrap_or_default()
        .iter()
        .map(|r| Recorded {
            version: cell_text(r, 0),
            script: cell_text(r, 1),
            checksum: cell_text(r, 2).trim().to_lowercase(),
            success: r.get::<bool, _>(6).unwrap_or(false),
        })
        .collect())
}

impl DbUpdate {
    async fn record(
        &self,
        sql: &mut Sql,
        ctx: &dyn StepContext,
        s: &ScriptFile,
        checksum: &str,
        ms: i64,
        success: bool,
    ) -> Result<(), StepError> {
        let version = if success {
            s.to.clone()
        } else {
            s.from.clone()
        };
        let run_id = ctx.run_id().to_string();
        let params: [&dyn tiberius::ToSql; 6] =
            [&version, &s.name, &checksum, &run_id, &ms, &success];
        sql.execute(HISTORY_INSERT, &params, self.limit)
            .await
            .map_err(|e| within(e, "recording in upshift.schema_history"))?;
        Ok(())
    }

    /// Runs one script; on failure rolls back and records the failure.
    async fn apply(
        &self,
        sql: &mut Sql,
        ctx: &dyn StepContext,
        s: &ScriptFile,
    ) -> Result<(), StepError> {
        let (batches, checksum) = load(&s.path)?;
        let text = std::fs::read_to_string(&s.path).unwrap_or_default();
        let transactional = !text
            .lines()
            .any(|l| l.trim().eq_ignore_ascii_case(NO_TRANSACTION));
        let started = Instant::now();
        let mut committing = false;
        let result: Result<(), StepError> = async {
            if transactional {
                sql.batch("SET XACT_ABORT ON; BEGIN TRANSACTION;", self.limit)
                    .await?;
            }
            for (i, b) in batches.iter().enumerate() {
                let at = format!("{} batch {} (line {})", s.name, i + 1, b.first_line);
                for _ in 0..b.repeat {
                    sql.batch(&b.text, self.limit)
                        .await
                        .map_err(|e| within(e, &at))?;
                }
            }
            if transactional {
                // A script with its own COMMIT/ROLLBACK would have ended the
                // transaction the history row is meant to share.
                let n = sql
                    .batch("SELECT @@TRANCOUNT AS n;", self.limit)
                    .await?
                    .first()
                    .and_then(|rs| rs.first())
                    .and_then(|r| r.get::<i32, _>(0))
                    .unwrap_or(-1);
                if n != 1 {
                    return Err(StepError::fatal(format!(
                        "{} ended the transaction it runs in (@@TRANCOUNT is {n} after its last batch, expected 1): it has its own COMMIT or ROLLBACK; mark it with the line `{NO_TRANSACTION}`",
                        s.name
                    )));
                }
            }
            let now = read_version(sql, &self.query, self.limit).await?;
            if compare_versions(&now, &s.to) != Ordering::Equal {
                return Err(StepError::fatal(format!(
                    "{} ran but the database reports version {now}, not {}: the script must set the version it brings the database to",
                    s.name, s.to
                )));
            }
            let ms = started.elapsed().as_millis() as i64;
            self.record(sql, ctx, s, &checksum, ms, true).await?;
            if transactional {
                committing = true;
                sql.batch("COMMIT TRANSACTION;", self.limit).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            if committing {
                // The commit may or may not have happened on the server; the
                // next attempt reads the version and the history and knows.
                return Err(within(
                    e,
                    &format!(
                        "update script {}: the COMMIT did not complete; whether it took effect is unknown until the next attempt reads upshift.schema_history",
                        s.name
                    ),
                ));
            }
            // Best effort: the connection may be gone (then the server has
            // rolled back already).
            if transactional {
                let _ = sql
                    .batch("IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION;", self.limit)
                    .await;
            }
            let ms = started.elapsed().as_millis() as i64;
            let _ = self.record(sql, ctx, s, &checksum, ms, false).await;
            let note = if transactional {
                "rolled back"
            } else {
                "NOT rolled back (no-transaction script): restore the backup or repair by hand"
            };
            return Err(within(
                e,
                &format!("update script {} failed and was {note}", s.name),
            ));
        }
        Ok(())
    }

    async fn update(&self, sql: &mut Sql, ctx: &dyn StepContext) -> Result<Outputs, StepError> {
        // The lock first: everything after it, the history table's creation
        // included, runs for one run at a time.
        let lock = sql
            .batch(&lock_statement(self.lock_wait), self.limit)
            .await?;
        let granted = lock
            .first()
            .and_then(|rs| rs.first())
            .and_then(|r| r.get::<i32, _>(0))
            .unwrap_or(-999);
        if granted < 0 {
            return Err(StepError::transient(format!(
                "{}: another session still holds the upshift.db.update application lock after {} (sp_getapplock returned {granted}): another run is updating this database; this one tries again on a retry (raise `lock_timeout` to wait longer)",
                sql.label(),
                humantime::format_duration(self.lock_wait)
            )));
        }
        if granted == 1 {
            ctx.output(&format!(
                "{}: waited for another run's upshift.db.update application lock\n",
                sql.label()
            ));
        }
        sql.batch(HISTORY_DDL, self.limit)
            .await
            .map_err(|e| within(e, "creating upshift.schema_history"))?;
        let history = read_history(sql, self.limit).await?;
        let current = read_version(sql, &self.query, self.limit).await?;
        let scripts = scripts_in(&self.dir)?;

        // Edited scripts: a recorded checksum must match the file.
        for h in history.iter().filter(|h| h.success) {
            if let Some(s) = scripts
                .iter()
                .find(|s| s.name.eq_ignore_ascii_case(&h.script))
            {
                let (_, now) = load(&s.path)?;
                if now != h.checksum {
                    return Err(StepError::fatal(format!(
                        "{}: {} was applied with SHA-256 {} (version {}) but the file now has {}: the script was edited after it ran. Restore the original file; never change an applied update script, add a new one",
                        sql.label(),
                        s.name,
                        h.checksum,
                        h.version,
                        now
                    )));
                }
            }
        }

        let todo = chain(&scripts, &current, &self.target).map_err(|m| {
            StepError::fatal(format!("{}: {m} in {}", sql.label(), self.dir.display()))
        })?;
        if let Some(expected) = &self.expect_path {
            let got: Vec<String> = todo.iter().map(|s| s.to.clone()).collect();
            if !expected.ends_with(&got) {
                return Err(StepError::fatal(format!(
                    "{}: the scripts would apply {} but db.check planned {}",
                    sql.label(),
                    got.join(","),
                    expected.join(",")
                )));
            }
        }
        for s in &todo {
            if history
                .iter()
                .any(|h| h.success && h.script.eq_ignore_ascii_case(&s.name))
            {
                return Err(StepError::fatal(format!(
                    "{}: {} is recorded in upshift.schema_history as applied, yet the database reports version {current}: refusing to run it twice; check the version table",
                    sql.label(),
                    s.name
                )));
            }
        }
        let total = todo.len() as u64;
        let mut applied = Vec::new();
        for (i, s) in todo.iter().enumerate() {
            ctx.progress(i as u64, total, &format!("applying {}", s.name));
            self.apply(sql, ctx, s).await?;
            ctx.output(&format!("{}: applied {}\n", sql.label(), s.name));
            applied.push(s.name.clone());
            ctx.checkpoint(
                format!("db.update v1 applied={}", applied.join(",")).into_bytes(),
                (i + 1) as u64,
                total,
            )
            .await?;
        }
        let mut outputs = Outputs::new();
        outputs.insert("from_version".into(), current);
        outputs.insert(
            "version".into(),
            todo.last()
                .map(|s| s.to.clone())
                .unwrap_or_else(|| self.target.clone()),
        );
        outputs.insert("applied".into(), applied.join(","));
        Ok(outputs)
    }
}

#[async_trait::async_trait]
impl Step for DbUpdate {
    async fn preflight(
        &self,
        ctx: &crate::preflight::PreflightContext,
    ) -> Vec<crate::preflight::Check> {
        super::preflight::path_and_login(
            ctx,
            &self.dir,
            crate::preflight::files::Expect::Dir,
            "the folder of update scripts",
            &self.connection,
        )
        .await
    }
    fn describe(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "update {} to version {} with the scripts in {} ({} per batch; history in upshift.schema_history)",
            self.connection.display(),
            self.target,
            self.dir.display(),
            limit_text(self.limit)
        )];
        lines.push(super::db_check::version_query_line(&self.query));
        lines.push(format!(
            "  first: sp_getapplock 'upshift.db.update' (waits up to {} for another run)",
            humantime::format_duration(self.lock_wait)
        ));
        match scripts_in(&self.dir) {
            Ok(scripts) => {
                for s in scripts
                    .iter()
                    .filter(|s| compare_versions(&s.to, &self.target) != Ordering::Greater)
                {
                    let batches = load(&s.path)
                        .map(|(b, _)| format!("{} batches", b.len()))
                        .unwrap_or_else(|e| format!("unreadable: {e}"));
                    lines.push(format!(
                        "  script {} -> {}: {} ({batches})",
                        s.from, s.to, s.name
                    ));
                }
            }
            Err(e) => lines.push(format!(
                "  (scripts are listed when the step runs; now: {e})"
            )),
        }
        lines
    }

    async fn run(&self, ctx: &dyn StepContext) -> Result<StepOutcome, StepError> {
        let mut sql = self.connection.connect(None).await?;
        let result = self.update(&mut sql, ctx).await;
        // Release the lock on every path (the server would release it with
        // the session too, but only once it noticed the session ended).
        let _ = sql.batch(UNLOCK, self.limit).await;
        Ok(StepOutcome::with_outputs(result?))
    }

    async fn probe(&self, _ctx: &dyn StepContext) -> Result<Probe, StepError> {
        let mut sql = self.connection.connect(None).await?;
        let v = read_version(&mut sql, &self.query, self.limit).await?;
        Ok(if compare_versions(&v, &self.target) == Ordering::Equal {
            Probe::InPlace
        } else {
            Probe::Differs(format!(
                "the database is at version {v}, the plan updates it to {}",
                self.target
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(from: &str, to: &str) -> ScriptFile {
        ScriptFile {
            from: from.into(),
            to: to.into(),
            name: format!("{from}_to_{to}.sql"),
            path: PathBuf::new(),
        }
    }

    #[test]
    fn chain_takes_the_longest_step_not_past_the_target() {
        let all = vec![
            s("7.0", "7.1"),
            s("7.1", "7.2"),
            s("7.0", "7.2"),
            s("7.2", "8.0"),
        ];
        let names = |v: Vec<ScriptFile>| v.into_iter().map(|s| s.name).collect::<Vec<_>>();
        assert_eq!(
            names(chain(&all, "7.0", "7.2").unwrap()),
            vec!["7.0_to_7.2.sql"]
        );
        assert_eq!(
            names(chain(&all, "7.1", "8.0").unwrap()),
            vec!["7.1_to_7.2.sql", "7.2_to_8.0.sql"]
        );
        assert!(chain(&all, "7.2", "7.2").unwrap().is_empty());
        assert!(chain(&all, "6.5", "7.2").unwrap_err().contains("6.5_to_"));
    }
}
