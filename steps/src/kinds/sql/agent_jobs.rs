//! `sql.agent_jobs.remove`: deletes the SQL Agent jobs whose steps call a
//! named procedure (the manual's optional cleanup of jobs calling
//! `[mgt].[usp_CleanupReporting_DboSchema]`); a no-op when there are none.
//!
//! Parameters: `connection`, `procedure` (default
//! `[mgt].[usp_CleanupReporting_DboSchema]`; `schema.name`, brackets
//! optional), `command_timeout` (default "5m"). Outputs: `removed` (job
//! names, comma-separated, sorted), `count`. No compensation (the jobs are
//! obsolete after the update). Probe: in place when no such job exists.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::connection::{ConnectionParams, Sql, cell_text, command_limit, limit_text, within};
use super::quote;
use crate::kinds::KindFn;
use crate::{Outputs, ParamError, Probe, Step, StepContext, StepError, StepOutcome, parse_params};

/// The `sql.agent_jobs.remove` kind.
pub const KIND: KindFn = KindFn {
    name: "sql.agent_jobs.remove",
    summary: "delete SQL Agent jobs whose steps call a procedure (default [mgt].[usp_CleanupReporting_DboSchema]): connection, procedure",
    build,
    local_paths: &[],
};

const DEFAULT_PROCEDURE: &str = "[mgt].[usp_CleanupReporting_DboSchema]";
const DEFAULT_LIMIT: Duration = Duration::from_secs(5 * 60);

const FIND: &str = "SELECT CONVERT(nvarchar(36), j.job_id) AS job_id, j.name AS name, s.command AS command FROM msdb.dbo.sysjobs AS j JOIN msdb.dbo.sysjobsteps AS s ON s.job_id = j.job_id WHERE s.command LIKE @P1 ORDER BY j.name";
const DELETE: &str = "EXEC msdb.dbo.sp_delete_job @job_id = @P1, @delete_unused_schedule = 1";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    connection: ConnectionParams,
    procedure: Option<String>,
    #[serde(default, with = "crate::params::duration_text::option")]
    command_timeout: Option<Duration>,
}

struct RemoveJobs {
    connection: ConnectionParams,
    /// Unquoted parts, e.g. ["mgt", "usp_CleanupReporting_DboSchema"].
    parts: Vec<String>,
    limit: Option<Duration>,
}

fn build(with: &toml::Table) -> Result<Box<dyn Step>, ParamError> {
    let p: Params = parse_params(with)?;
    p.connection.check()?;
    let name = p.procedure.unwrap_or_else(|| DEFAULT_PROCEDURE.to_string());
    let parts = quote::split_name(&name).map_err(|m| ParamError::field("procedure", m))?;
    if parts.len() > 2 {
        return Err(ParamError::field(
            "procedure",
            format!("`{name}`: give schema.name or name"),
        ));
    }
    Ok(Box::new(RemoveJobs {
        connection: p.connection,
        parts,
        limit: command_limit(p.command_timeout, DEFAULT_LIMIT),
    }))
}

/// LIKE pattern matching the procedure's bare name anywhere.
fn like_pattern(name: &str) -> String {
    let mut s = String::from("%");
    for c in name.chars() {
        match c {
            '[' | '%' | '_' => {
                s.push('[');
                s.push(c);
                s.push(']');
            }
            c => s.push(c),
        }
    }
    s.push('%');
    s
}

/// `[mgt].[x]` / `mgt.x` / `MGT.[X]` all normalise to `mgt.x`.
fn normalise(text: &str) -> String {
    text.to_lowercase().replace(['[', ']'], "")
}

impl RemoveJobs {
    fn display(&self) -> String {
        self.parts
            .iter()
            .map(|p| quote::ident(p).unwrap_or_else(|_| p.clone()))
            .collect::<Vec<_>>()
            .join(".")
    }

    /// Jobs (id -> name) with a step calling the procedure.
    async fn find(&self, sql: &mut Sql) -> Result<BTreeMap<String, String>, StepError> {
        let bare = self.parts.last().cloned().unwrap_or_default();
        let pattern = like_pattern(&bare);
        let rows = sql
            .query(FIND, &[&pattern], self.limit)
            .await
            .map_err(|e| within(e, "listing SQL Agent jobs in msdb"))?;
        let wanted = normalise(&self.parts.join("."));
        let mut jobs = BTreeMap::new();
        for r in rows.into_iter().next().unwrap_or_default() {
            if normalise(&cell_text(&r, 2)).contains(&wanted) {
                jobs.insert(cell_text(&r, 0), cell_text(&r, 1));
            }
        }
        Ok(jobs)
    }
}

#[async_trait::async_trait]
impl Step for RemoveJobs {
    async fn preflight(
        &self,
        _ctx: &crate::preflight::PreflightContext,
    ) -> Vec<crate::preflight::Check> {
        use crate::preflight::Check;
        let mut sql = match super::preflight::login(&self.connection, None).await {
            Ok(s) => s,
            Err(c) => return vec![c],
        };
        match self.find(&mut sql).await {
            Ok(jobs) if jobs.is_empty() => vec![Check::ok(format!(
                "no SQL Agent job calls {}: nothing to remove",
                self.display()
            ))],
            Ok(jobs) => vec![Check::ok(format!(
                "SQL Agent jobs the run will remove (they call {}): {}",
                self.display(),
                jobs.values().cloned().collect::<Vec<_>>().join(", ")
            ))],
            Err(e) => vec![Check::finding(
                format!("cannot list SQL Agent jobs: {e}"),
                "the login may read msdb's jobs (the step deletes them)",
                "add the login's user in msdb to SQLAgentOperatorRole, or make it sysadmin",
            )],
        }
    }
    fn describe(&self) -> Vec<String> {
        vec![format!(
            "delete the SQL Agent jobs on {} whose steps call {} (none: nothing to do; {})",
            self.connection.display(),
            self.display(),
            limit_text(self.limit)
        )]
    }

    async fn run(&self, ctx: &dyn StepContext) -> Result<StepOutcome, StepError> {
        let mut sql = self.connection.connect(None).await?;
        let jobs = self.find(&mut sql).await?;
        let mut removed: Vec<String> = Vec::new();
        for (id, name) in &jobs {
            sql.execute(DELETE, &[id], self.limit)
                .await
                .map_err(|e| within(e, &format!("deleting SQL Agent job `{name}`")))?;
            ctx.output(&format!("deleted SQL Agent job `{name}` ({id})\n"));
            removed.push(name.clone());
        }
        if removed.is_empty() {
            ctx.output(&format!("no SQL Agent job calls {}\n", self.display()));
        }
        removed.sort();
        let mut outputs = Outputs::new();
        outputs.insert("count".into(), removed.len().to_string());
        outputs.insert("removed".into(), removed.join(","));
        Ok(StepOutcome::with_outputs(outputs))
    }

    async fn probe(&self, _ctx: &dyn StepContext) -> Result<Probe, StepError> {
        let mut sql = self.connection.connect(None).await?;
        let jobs = self.find(&mut sql).await?;
        Ok(if jobs.is_empty() {
            Probe::InPlace
        } else {
            Probe::Differs(format!(
                "SQL Agent jobs call {}: {}",
                self.display(),
                jobs.values().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_pattern_escapes_wildcards() {
        assert_eq!(
            like_pattern("usp_CleanupReporting_DboSchema"),
            "%usp[_]CleanupReporting[_]DboSchema%"
        );
        assert_eq!(like_pattern("a%[b"), "%a[%][[]b%");
    }

    #[test]
    fn names_normalise_with_or_without_brackets() {
        assert_eq!(normalise("EXEC [mgt].[usp_X] 1"), "exec mgt.usp_x 1");
        assert!(normalise("exec MGT.usp_X").contains("mgt.usp_x"));
    }
}
