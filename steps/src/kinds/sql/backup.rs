//! `sql.backup`: the rollback point of the database phase.
//! `BACKUP DATABASE ... TO DISK = ... WITH COPY_ONLY, CHECKSUM, INIT,
//! STATS = 5, DESCRIPTION = 'upshift run <run> step <step>'`, progress from
//! the server's STATS messages, then `RESTORE VERIFYONLY ... WITH CHECKSUM`.
//!
//! Before backing up, the step looks in `msdb` for a backup set of this run
//! and step in that file; if there is one and it verifies, the step does not
//! back up again (a resumed run keeps its rollback point).
//!
//! Parameters: `connection` (the step connects to `master`), `database`
//! (default: the connection's), either `path` (the file, on the SQL Server
//! machine) or `directory` (the file is `<directory>\<database>_<run id>.bak`),
//! `command_timeout` (default "12h"; "0s" = none).
//! Outputs: `path`, `backup_set_id` (msdb.dbo.backupset), `database`.
//! Compensation: restores the database from the recorded `path` (as
//! `sql.restore` does).

use std::time::Duration;

use serde::Deserialize;

use super::connection::{ConnectionParams, Sql, cell_text, command_limit, limit_text, within};
use super::quote;
use super::restore::{self, DEFAULT_LIMIT};
use crate::kinds::KindFn;
use crate::{Outputs, ParamError, Step, StepContext, StepError, StepOutcome, parse_params};

/// The `sql.backup` kind.
pub const KIND: KindFn = KindFn {
    name: "sql.backup",
    summary: "full COPY_ONLY backup with checksum, verified; compensation restores it: connection, database, path or directory",
    build,
    local_paths: &[],
};

const BACKUP_SET_QUERY: &str = "SELECT TOP (1) bs.backup_set_id FROM msdb.dbo.backupset AS bs JOIN msdb.dbo.backupmediafamily AS mf ON mf.media_set_id = bs.media_set_id WHERE mf.physical_device_name = @P1 AND bs.database_name = @P2 AND bs.description = @P3 ORDER BY bs.backup_set_id DESC";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    connection: ConnectionParams,
    database: Option<String>,
    path: Option<String>,
    directory: Option<String>,
    #[serde(default, with = "crate::params::duration_text::option")]
    command_timeout: Option<Duration>,
}

enum Target {
    Path(String),
    Directory(String),
}

struct Backup {
    connection: ConnectionParams,
    database: String,
    target: Target,
    limit: Option<Duration>,
}

fn build(with: &toml::Table) -> Result<Box<dyn Step>, ParamError> {
    let p: Params = parse_params(with)?;
    p.connection.check()?;
    let database = p.database.unwrap_or_else(|| p.connection.database.clone());
    quote::ident(&database).map_err(|m| ParamError::field("database", m))?;
    let target = match (p.path, p.directory) {
        (Some(path), None) if !path.trim().is_empty() => Target::Path(path),
        (None, Some(dir)) if !dir.trim().is_empty() => Target::Directory(dir),
        _ => {
            return Err(
                ParamError::field("path", "give either `path` or `directory`")
                    .hint("directory = \"D:\\\\Backup\" names the file <database>_<run id>.bak"),
            );
        }
    };
    let (Target::Path(file) | Target::Directory(file)) = &target;
    quote::literal(file).map_err(|m| ParamError::field("path", m))?;
    Ok(Box::new(Backup {
        connection: p.connection,
        database,
        target,
        limit: command_limit(p.command_timeout, DEFAULT_LIMIT),
    }))
}

/// `<directory><sep><database>_<run>.bak`, with the directory's separator.
fn file_in(dir: &str, database: &str, run: &str) -> String {
    let sep = if dir.contains('\\') || !dir.contains('/') {
        '\\'
    } else {
        '/'
    };
    let name: String = format!("{database}_{run}.bak")
        .chars()
        .map(|c| if "\\/:*?\"<>|".contains(c) { '_' } else { c })
        .collect();
    format!("{}{sep}{name}", dir.trim_end_matches(['\\', '/']))
}

/// Longest backup description SQL Server takes: `DESCRIPTION` is at most
/// 255 characters (`msdb.dbo.backupset.description` is nvarchar(255),
/// counted in UTF-16 units).
const DESCRIPTION_MAX_UNITS: usize = 255;

/// The backup set's description: `upshift run <run> step <step>`. With a
/// step id too long for 255 characters, the id is shortened and the first
/// 16 hex digits of its SHA-256 appended, so the text stays unique per step
/// and the msdb lookup, which uses this same function, finds what the
/// backup wrote.
pub(crate) fn description(run: &str, step: &str) -> String {
    let full = format!("upshift run {run} step {step}");
    if full.encode_utf16().count() <= DESCRIPTION_MAX_UNITS {
        return full;
    }
    use sha2::Digest;
    let hash = hex::encode(sha2::Sha256::digest(step.as_bytes()));
    let suffix = format!("... #{}", &hash[..16]);
    let budget = DESCRIPTION_MAX_UNITS - suffix.encode_utf16().count();
    let mut out = String::new();
    let mut units = 0;
    for c in full.chars() {
        if units + c.len_utf16() > budget {
            break;
        }
        units += c.len_utf16();
        out.push(c);
    }
    out.push_str(&suffix);
    out
}

/// The BACKUP statement.
pub(crate) fn backup_statement(
    database: &str,
    path: &str,
    description: &str,
) -> Result<String, StepError> {
    let db = quote::ident(database).map_err(StepError::fatal)?;
    let file = quote::literal(path).map_err(StepError::fatal)?;
    let desc = quote::literal(description).map_err(StepError::fatal)?;
    Ok(format!(
        "BACKUP DATABASE {db} TO DISK = {file} WITH COPY_ONLY, CHECKSUM, INIT, STATS = 5, DESCRIPTION = {desc}"
    ))
}

impl Backup {
    fn path(&self, run: &str) -> String {
        match &self.target {
            Target::Path(p) => p.clone(),
            Target::Directory(d) => file_in(d, &self.database, run),
        }
    }

    async fn backup_set(
        &self,
        sql: &mut Sql,
        path: &str,
        description: &str,
    ) -> Result<Option<String>, StepError> {
        let (p, d, desc) = (
            path.to_string(),
            self.database.clone(),
            description.to_string(),
        );
        let rows = sql
            .query(BACKUP_SET_QUERY, &[&p, &d, &desc], self.limit)
            .await
            .map_err(|e| within(e, "looking up the backup set in msdb"))?;
        Ok(rows
            .into_iter()
            .next()
            .and_then(|rs| rs.into_iter().next())
            .map(|r| cell_text(&r, 0)))
    }

    async fn verify(&self, sql: &mut Sql, path: &str) -> Result<(), StepError> {
        let file = quote::literal(path).map_err(StepError::fatal)?;
        sql.batch(
            &format!("RESTORE VERIFYONLY FROM DISK = {file} WITH CHECKSUM"),
            self.limit,
        )
        .await
        .map(|_| ())
    }
}

#[async_trait::async_trait]
impl Step for Backup {
    async fn preflight(
        &self,
        _ctx: &crate::preflight::PreflightContext,
    ) -> Vec<crate::preflight::Check> {
        let (Target::Path(at) | Target::Directory(at)) = &self.target;
        super::preflight::backup(&self.connection, &self.database, at).await
    }
    fn describe(&self) -> Vec<String> {
        let path = match &self.target {
            Target::Path(p) => p.clone(),
            Target::Directory(d) => file_in(d, &self.database, "<run id>"),
        };
        let stmt = backup_statement(&self.database, &path, "upshift run <run id> step <step id>")
            .unwrap_or_else(|e| e.to_string());
        vec![
            format!(
                "back up database {} on {} to {} ({})",
                self.database,
                self.connection.display(),
                path,
                limit_text(self.limit)
            ),
            format!("  {stmt}"),
            format!("  then RESTORE VERIFYONLY FROM DISK = ... WITH CHECKSUM"),
            "  rollback: restore this backup (single user, replace, multi user)".into(),
        ]
    }

    async fn run(&self, ctx: &dyn StepContext) -> Result<StepOutcome, StepError> {
        let path = self.path(ctx.run_id());
        let description = description(ctx.run_id(), ctx.step_id());
        let mut sql = self.connection.connect(Some("master")).await?;
        let mut outputs = Outputs::new();
        outputs.insert("path".into(), path.clone());
        outputs.insert("database".into(), self.database.clone());

        // A backup of this run and step already in the file: keep it if it
        // verifies.
        if let Some(id) = self.backup_set(&mut sql, &path, &description).await?
            && self.verify(&mut sql, &path).await.is_ok()
        {
            {
                ctx.output(&format!(
                    "backup set {id} of this run in {path} verifies; not backing up again\n"
                ));
                outputs.insert("backup_set_id".into(), id);
                return Ok(StepOutcome::with_outputs(outputs));
            }
        }

        let stmt = backup_statement(&self.database, &path, &description)?;
        let result = sql
            .batch_with_progress(&stmt, self.limit, &|p| {
                ctx.progress(p, 100, &format!("backup {p}%"))
            })
            .await;
        result.map_err(|e| within(e, &format!("backing up {} to {path}", self.database)))?;
        let id = self
            .backup_set(&mut sql, &path, &description)
            .await?
            .ok_or_else(|| {
                StepError::fatal(format!(
                    "{}: BACKUP reported success but msdb has no backup set for {path}",
                    sql.label()
                ))
            })?;
        self.verify(&mut sql, &path)
            .await
            .map_err(|e| within(e, &format!("the new backup {path} does not verify")))?;
        ctx.output(&format!(
            "{}: backed up {} to {path} (backup set {id}), verified\n",
            sql.label(),
            self.database
        ));
        outputs.insert("backup_set_id".into(), id);
        Ok(StepOutcome::with_outputs(outputs))
    }

    fn has_compensation(&self) -> bool {
        true
    }

    async fn compensate(&self, ctx: &dyn StepContext) -> Result<(), StepError> {
        let recorded = ctx.recorded_outputs();
        let Some(path) = recorded.get("path") else {
            return Err(StepError::fatal(
                "cannot restore: the backup step recorded no `path` output",
            ));
        };
        // upshift's own backups are made WITH CHECKSUM.
        restore::restore(
            &self.connection,
            &self.database,
            path,
            true,
            self.limit,
            ctx,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_in_a_directory_carry_the_run() {
        assert_eq!(file_in("D:\\Backup\\", "TM", "r1"), "D:\\Backup\\TM_r1.bak");
        assert_eq!(
            file_in("/var/opt/mssql/backup", "TM", "r1"),
            "/var/opt/mssql/backup/TM_r1.bak"
        );
        assert_eq!(file_in("D:\\B", "a/b", "r"), "D:\\B\\a_b_r.bak");
    }

    #[test]
    fn descriptions_fit_in_255_characters_and_stay_unique() {
        let run = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        assert_eq!(
            description(run, "backup"),
            format!("upshift run {run} step backup")
        );
        let long_a = format!("{}a", "x".repeat(300));
        let long_b = format!("{}b", "x".repeat(300));
        let (a, b) = (description(run, &long_a), description(run, &long_b));
        assert_eq!(a.encode_utf16().count(), 255, "{a}");
        assert_ne!(a, b, "a shared prefix does not make two steps alike");
        assert_eq!(a, description(run, &long_a), "the lookup finds it again");
        // Characters outside the BMP count twice.
        let wide = description(run, &"😀".repeat(200));
        assert!(wide.encode_utf16().count() <= 255, "{wide}");
    }

    #[test]
    fn backup_statement_quotes_name_path_and_description() {
        let s = backup_statement("T]M", "D:\\it's\\TM.bak", "upshift run x").unwrap();
        assert_eq!(
            s,
            "BACKUP DATABASE [T]]M] TO DISK = N'D:\\it''s\\TM.bak' WITH COPY_ONLY, CHECKSUM, INIT, STATS = 5, DESCRIPTION = N'upshift run x'"
        );
    }
}
