//! `sql.restore`: the database phase's rollback. Verifies the backup file,
//! then, **in one batch**, `ALTER DATABASE ... SET SINGLE_USER WITH
//! ROLLBACK IMMEDIATE` and `RESTORE DATABASE ... WITH REPLACE, CHECKSUM,
//! STATS = 5` (progress reported), and back to `MULTI_USER`, also when the
//! restore fails. One batch, because between two batches another
//! connection can take the single-user slot and the RESTORE then fails with
//! 3101 ("Exclusive access could not be obtained").
//!
//! Parameters: `connection` (the step connects to `master`), `database`
//! (default: the connection's), `path` (the backup file on the SQL Server
//! machine, e.g. `${steps.backup.outputs.path}`), `checksum` (default
//! true: `WITH CHECKSUM` on the verify and the restore, which SQL Server
//! refuses with error 3187 for a backup made without checksums; upshift's
//! own backups always have them; set false for a backup made elsewhere
//! without `CHECKSUM`), `command_timeout` (default "12h"; "0s" = none).
//! Outputs: `path`, `database`. The same restore is the compensation of
//! `sql.backup`.

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
    local_paths: &[],
};

pub(crate) const DEFAULT_LIMIT: Duration = Duration::from_secs(12 * 60 * 60);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    connection: ConnectionParams,
    database: Option<String>,
    path: String,
    #[serde(default = "yes")]
    checksum: bool,
    #[serde(default, with = "crate::params::duration_text::option")]
    command_timeout: Option<Duration>,
}

fn yes() -> bool {
    true
}

struct Restore {
    connection: ConnectionParams,
    database: String,
    path: String,
    checksum: bool,
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
        checksum: p.checksum,
        limit: command_limit(p.command_timeout, DEFAULT_LIMIT),
    }))
}

/// The batches of a restore, in order: verify; single user and restore
/// (one batch); multi user. `checksum` adds `WITH CHECKSUM` to the verify
/// and the restore.
///
/// The single-user switch is skipped when the database does not exist (a
/// restore may recreate a dropped one), and the restore is skipped when the
/// switch failed (`@@ERROR`): SQL Server goes on with the next statement
/// after most errors, and the error of the switch is what the operator must
/// see.
pub(crate) fn statements(
    database: &str,
    path: &str,
    checksum: bool,
) -> Result<[String; 3], StepError> {
    let db = quote::ident(database).map_err(StepError::fatal)?;
    let name = quote::literal(database).map_err(StepError::fatal)?;
    let file = quote::literal(path).map_err(StepError::fatal)?;
    let (verify_with, restore_with) = if checksum {
        (" WITH CHECKSUM", "REPLACE, CHECKSUM, STATS = 5")
    } else {
        ("", "REPLACE, STATS = 5")
    };
    Ok([
        format!("RESTORE VERIFYONLY FROM DISK = {file}{verify_with}"),
        format!(
            "IF DB_ID({name}) IS NOT NULL ALTER DATABASE {db} SET SINGLE_USER WITH ROLLBACK IMMEDIATE;\nIF @@ERROR = 0 RESTORE DATABASE {db} FROM DISK = {file} WITH {restore_with};"
        ),
        format!("ALTER DATABASE {db} SET MULTI_USER"),
    ])
}

/// Restores `database` from `path`; the database is back in MULTI_USER
/// whatever happens after it was set to SINGLE_USER.
pub(crate) async fn restore(
    connection: &ConnectionParams,
    database: &str,
    path: &str,
    checksum: bool,
    limit: Option<Duration>,
    ctx: &dyn StepContext,
) -> Result<(), StepError> {
    let [verify, restore, multi] = statements(database, path, checksum)?;
    let mut sql = connection.connect(Some("master")).await?;
    sql.batch(&verify, limit).await.map_err(|e| {
        within(
            e,
            &format!("the backup {path} does not verify; the database was not touched"),
        )
    })?;
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
    async fn preflight(
        &self,
        _ctx: &crate::preflight::PreflightContext,
    ) -> Vec<crate::preflight::Check> {
        super::preflight::login_only(&self.connection).await
    }
    fn describe(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "restore database {} on {} from {} ({})",
            self.database,
            self.connection.display(),
            self.path,
            limit_text(self.limit)
        )];
        if let Ok(stmts) = statements(&self.database, &self.path, self.checksum) {
            lines.extend(
                stmts
                    .iter()
                    .flat_map(|s| s.lines())
                    .map(|s| format!("  {s}")),
            );
        }
        if self.checksum {
            lines.push(
                "  WITH CHECKSUM: a backup made without checksums is refused (error 3187); \
                 upshift's own backups have them; set checksum = false for one made elsewhere without"
                    .into(),
            );
        }
        lines
    }

    async fn run(&self, ctx: &dyn StepContext) -> Result<StepOutcome, StepError> {
        restore(
            &self.connection,
            &self.database,
            &self.path,
            self.checksum,
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
