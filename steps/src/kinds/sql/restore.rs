//! `sql.restore`: the database phase's rollback. Verifies the backup file,
//! then `ALTER DATABASE ... SET SINGLE_USER WITH ROLLBACK IMMEDIATE`,
//! `RESTORE DATABASE ... WITH REPLACE, STATS = 5` (progress reported), and
//! back to `MULTI_USER`, also when the restore fails.
//!
//! Parameters: `connection` (the step connects to `master`), `database`
//! (default: the connection's), `path` (the backup file on the SQL Server
//! machine, e.g. `${steps.backup.outputs.path}`), `command_timeout` (default
//! "12h"; "0s" = none). Outputs: `path`, `database`. The same restore is the
//! compensation of `sql.backup`.

use std::time::Duration;

use serde::Deserialize;

use super::connection::{ConnectionParams, command_limit, limit_text, within};
use super::quote;
use crate::kinds::KindFn;
use crate::{Outputs, ParamError, Step, StepContext, StepError, StepOutcome, parse_params};

/// The `sql.restore` kind.
pub const KIND: KindFn = KindFn {
    name: "sql.restore",
    summary: "restore a database from a backup file (single user, replace, back to multi user): connection, database, path",
    build,
};

pub(crate) const DEFAULT_LIMIT: Duration = Duration::from_secs(12 * 60 * 60);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    connection: ConnectionParams,
    database: Option<String>,
    path: String,
    #[serde(default, with = "crate::params::duration_text::option")]
    command_timeout: Option<Duration>,
}

struct Restore {
    connection: ConnectionParams,
    database: String,
    path: String,
    limit: Option<Duration>,
}

fn build(with: &toml::Table) -> Result<Box<dyn Step>, ParamError> {
    let p: Params = parse_params(with)?;
    p.connection.check()?;
    let database = p.database.unwrap_or_else(|| p.connection.database.clone());
    quote::ident(&database).map_err(|m| ParamError::field("database", m))?;
    if p.path.trim().is_empty() {
        return Err(ParamError::field("path", "`path` is empty"));
    }
    quote::literal(&p.path).map_err(|m| ParamError::field("path", m))?;
    Ok(Box::new(Restore {
        connection: p.connection,
        database,
        path: p.path,
        limit: command_limit(p.command_timeout, DEFAULT_LIMIT),
    }))
}

/// The statements of a restore, in order: verify, single user, restore,
/// multi user.
pub(crate) fn statements(database: &str, path: &str) -> Result<[String; 4], StepError> {
    let db = quote::ident(database).map_err(StepError::fatal)?;
    let file = quote::literal(path).map_err(StepError::fatal)?;
    Ok([
        format!("RESTORE VERIFYONLY FROM DISK = {file} WITH CHECKSUM"),
        format!("ALTER DATABASE {db} SET SINGLE_USER WITH ROLLBACK IMMEDIATE"),
        format!("RESTORE DATABASE {db} FROM DISK = {file} WITH REPLACE, CHECKSUM, STATS = 5"),
        format!("ALTER DATABASE {db} SET MULTI_USER"),
    ])
}

/// Restores `database` from `path`; the database is back in MULTI_USER
/// whatever happens after it was set to SINGLE_USER.
pub(crate) async fn restore(
    connection: &ConnectionParams,
    database: &str,
    path: &str,
    limit: Option<Duration>,
    ctx: &dyn StepContext,
) -> Result<(), StepError> {
    let [verify, single, restore, multi] = statements(database, path)?;
    let mut sql = connection.connect(Some("master")).await?;
    sql.batch(&verify, limit).await.map_err(|e| {
        within(
            e,
            &format!("the backup {path} does not verify; the database was not touched"),
        )
    })?;
    sql.batch(&single, limit).await?;
    let result = sql
        .batch_with_progress(&restore, limit, &|p| {
            ctx.progress(p, 100, &format!("restore {p}%"))
        })
        .await;
    // Back to MULTI_USER on the same connection, or a new one if it broke.
    let back = match sql.batch(&multi, limit).await {
        Ok(_) => Ok(()),
        Err(_) => match connection.connect(Some("master")).await {
            Ok(mut again) => again.batch(&multi, limit).await.map(|_| ()),
            Err(e) => Err(e),
        },
    };
    result.map_err(|e| within(e, &format!("restoring {database} from {path}")))?;
    back.map_err(|e| {
        within(
            e,
            &format!("{database} was restored but could not be set back to MULTI_USER"),
        )
    })?;
    ctx.output(&format!("restored {database} from {path}\n"));
    Ok(())
}

#[async_trait::async_trait]
impl Step for Restore {
    fn describe(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "restore database {} on {} from {} ({})",
            self.database,
            self.connection.display(),
            self.path,
            limit_text(self.limit)
        )];
        if let Ok(stmts) = statements(&self.database, &self.path) {
            lines.extend(stmts.iter().map(|s| format!("  {s}")));
        }
        lines
    }

    async fn run(&self, ctx: &dyn StepContext) -> Result<StepOutcome, StepError> {
        restore(
            &self.connection,
            &self.database,
            &self.path,
            self.limit,
            ctx,
        )
        .await?;
        let mut outputs = Outputs::new();
        outputs.insert("path".into(), self.path.clone());
        outputs.insert("database".into(), self.database.clone());
        Ok(StepOutcome::with_outputs(outputs))
    }
}
