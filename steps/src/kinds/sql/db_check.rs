//! `db.check`: reads the TM database version and decides, against the
//! plan's update path, whether the target version can be reached (manual,
//! step 3 of the database update: "A smaller incremental update may be
//! necessary first"; "When upgrading from a much older version, please
//! contact our support first").
//!
//! Parameters: `connection`, `target_version`, `versions` (the update path,
//! oldest first), `oldest_supported` (default: the first of `versions`),
//! `incremental_from` (table: to reach the key version the database must
//! already be at the value version or newer), `version_query` (default
//! [`DEFAULT_VERSION_QUERY`]), `command_timeout` (default "5m").
//! Outputs: `current_version`, `target_version`, `path` (versions to apply,
//! comma-separated, empty when up to date), `decision` (`update` or
//! `up_to_date`). A database that needs an intermediate version first, is
//! too old, newer than the target or off the path fails the step, naming
//! what to do.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::connection::{ConnectionParams, cell_text, command_limit, limit_text, within};
use crate::kinds::KindFn;
use crate::{Outputs, ParamError, Step, StepContext, StepError, StepOutcome, parse_params};

/// The `db.check` kind.
pub const KIND: KindFn = KindFn {
    name: "db.check",
    summary: "read the TM database version and check the target is reachable: connection, target_version, versions, oldest_supported, incremental_from",
    build,
    local_paths: &[],
};

/// The default query for the TM database version: one row, one column.
/// An assumption about TM's schema (the manual does not name the table);
/// plans for a real TM database should set `version_query` explicitly.
pub const DEFAULT_VERSION_QUERY: &str =
    "SELECT TOP (1) [Version] FROM [dbo].[DatabaseVersion] ORDER BY [Id] DESC";

const DEFAULT_LIMIT: Duration = Duration::from_secs(5 * 60);

/// The dry-run line naming the version query, marked as an assumption when
/// it is the default one.
pub(crate) fn version_query_line(query: &str) -> String {
    if query == DEFAULT_VERSION_QUERY {
        format!(
            "  version query: {query} (ASSUMPTION: the manual does not name TM's version table; set `version_query` for a real TM database)"
        )
    } else {
        format!("  version query: {query}")
    }
}

/// Compares dotted versions numerically part by part (`7.10` > `7.9`);
/// missing parts count as 0, non-numeric parts compare as text.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let pa: Vec<&str> = a.trim().split('.').collect();
    let pb: Vec<&str> = b.trim().split('.').collect();
    for i in 0..pa.len().max(pb.len()) {
        let x = pa.get(i).copied().unwrap_or("0");
        let y = pb.get(i).copied().unwrap_or("0");
        let o = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => x.cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

/// The update path as the plan states it.
#[derive(Debug, Clone)]
pub struct UpdatePath {
    /// Known versions, oldest first.
    pub versions: Vec<String>,
    /// Oldest version this path may start from.
    pub oldest_supported: String,
    /// To reach the key, the database must be at the value or newer.
    pub incremental_from: BTreeMap<String, String>,
}

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Already at the target.
    UpToDate,
    /// Apply these versions in order.
    Update(Vec<String>),
}

impl UpdatePath {
    /// Decides for a database at `current` and a plan aiming at `target`.
    pub fn decide(&self, current: &str, target: &str) -> Result<Decision, String> {
        let cmp = compare_versions(current, target);
        if cmp == Ordering::Equal {
            return Ok(Decision::UpToDate);
        }
        if cmp == Ordering::Greater {
            return Err(format!(
                "the database is at version {current}, newer than the target {target}: nothing to update; check the plan's target_version"
            ));
        }
        if compare_versions(current, &self.oldest_supported) == Ordering::Less {
            return Err(format!(
                "the database is at version {current}, older than {}, the oldest version this update path supports: stop here and contact Luware support before upgrading (manual: \"When upgrading from a much older version, please contact our support first.\")",
                self.oldest_supported
            ));
        }
        if !self
            .versions
            .iter()
            .any(|v| compare_versions(v, current) == Ordering::Equal)
        {
            return Err(format!(
                "the database is at version {current}, which is not on the update path ({}); add it to `versions` if an update script starts there",
                self.versions.join(", ")
            ));
        }
        let path: Vec<String> = self
            .versions
            .iter()
            .filter(|v| {
                compare_versions(v, current) == Ordering::Greater
                    && compare_versions(v, target) != Ordering::Greater
            })
            .cloned()
            .collect();
        for v in &path {
            if let Some(min) = self.incremental_from.get(v)
                && compare_versions(current, min) == Ordering::Less
            {
                {
                    return Err(format!(
                        "the database is at version {current}; version {v} can only be reached from {min} or newer: apply the smaller incremental update to {min} first, then run this plan again (manual: \"A smaller incremental update may be necessary first\")"
                    ));
                }
            }
        }
        Ok(Decision::Update(path))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    connection: ConnectionParams,
    target_version: String,
    versions: Vec<String>,
    oldest_supported: Option<String>,
    #[serde(default)]
    incremental_from: BTreeMap<String, String>,
    version_query: Option<String>,
    /// `reachable` (default): the target can be reached; `up_to_date`: the
    /// database must already be at the target (the check after an update
    /// done by another tool, e.g. the vendor's Database Updater).
    expect: Option<String>,
    /// What the plan assumes about the query (shown in the dry run).
    assumed: Option<String>,
    #[serde(default, with = "crate::params::duration_text::option")]
    command_timeout: Option<Duration>,
}

struct DbCheck {
    up_to_date: bool,
    assumed: Option<String>,
    connection: ConnectionParams,
    target: String,
    path: UpdatePath,
    query: String,
    limit: Option<Duration>,
}

fn on_path(versions: &[String], v: &str) -> bool {
    versions
        .iter()
        .any(|x| compare_versions(x, v) == Ordering::Equal)
}

fn build(with: &toml::Table) -> Result<Box<dyn Step>, ParamError> {
    let p: Params = parse_params(with)?;
    p.connection.check()?;
    if p.versions.is_empty() {
        return Err(ParamError::field("versions", "`versions` is empty").hint(
            "list the update path oldest first, e.g. versions = [\"7.0\", \"7.1\", \"8.0\"]",
        ));
    }
    for w in p.versions.windows(2) {
        if compare_versions(&w[0], &w[1]) != Ordering::Less {
            return Err(ParamError::field(
                "versions",
                format!(
                    "`versions` must be ascending: {} comes before {}",
                    w[0], w[1]
                ),
            ));
        }
    }
    if !on_path(&p.versions, &p.target_version) {
        return Err(ParamError::field(
            "target_version",
            format!("target_version {} is not in `versions`", p.target_version),
        ));
    }
    let oldest = p.oldest_supported.unwrap_or_else(|| p.versions[0].clone());
    if !on_path(&p.versions, &oldest) {
        return Err(ParamError::field(
            "oldest_supported",
            format!("oldest_supported {oldest} is not in `versions`"),
        ));
    }
    for (k, v) in &p.incremental_from {
        if !on_path(&p.versions, k) || !on_path(&p.versions, v) {
            return Err(ParamError::field(
                "incremental_from",
                format!("incremental_from {k} = {v}: both versions must be in `versions`"),
            ));
        }
    }
    let up_to_date = match p.expect.as_deref() {
        None | Some("reachable") => false,
        Some("up_to_date") => true,
        Some(other) => {
            return Err(ParamError::field(
                "expect",
                format!("expect = `{other}`: write \"reachable\" or \"up_to_date\""),
            ));
        }
    };
    Ok(Box::new(DbCheck {
        up_to_date,
        assumed: p.assumed.filter(|a| !a.trim().is_empty()),
        connection: p.connection,
        target: p.target_version,
        path: UpdatePath {
            versions: p.versions,
            oldest_supported: oldest,
            incremental_from: p.incremental_from,
        },
        query: p
            .version_query
            .unwrap_or_else(|| DEFAULT_VERSION_QUERY.to_string()),
        limit: command_limit(p.command_timeout, DEFAULT_LIMIT),
    }))
}

/// Reads the version with `query` (first column of the first row).
pub(crate) async fn read_version(
    sql: &mut super::connection::Sql,
    query: &str,
    limit: Option<Duration>,
) -> Result<String, StepError> {
    let results = sql
        .batch(query, limit)
        .await
        .map_err(|e| within(e, "reading the database version"))?;
    let row = results
        .into_iter()
        .next()
        .and_then(|rs| rs.into_iter().next())
        .ok_or_else(|| {
            StepError::fatal(format!(
                "{}: the version query returned no row: {query}",
                sql.label()
            ))
        })?;
    let v = cell_text(&row, 0).trim().to_string();
    if v.is_empty() {
        return Err(StepError::fatal(format!(
            "{}: the version query returned an empty version",
            sql.label()
        )));
    }
    Ok(v)
}

#[async_trait::async_trait]
impl Step for DbCheck {
    async fn preflight(
        &self,
        _ctx: &crate::preflight::PreflightContext,
    ) -> Vec<crate::preflight::Check> {
        use crate::preflight::Check;
        let mut sql = match super::preflight::login(&self.connection, None).await {
            Ok(s) => s,
            Err(c) => return vec![c],
        };
        let current = match read_version(
            &mut sql,
            &self.query,
            Some(super::preflight::STATEMENT_LIMIT),
        )
        .await
        {
            Ok(v) => v,
            Err(e) => {
                return vec![Check::finding(
                    e.to_string(),
                    "the database's version readable with the version query",
                    "check the plan's `version_query` (and that this is the TM database)",
                )];
            }
        };
        vec![match self.path.decide(&current, &self.target) {
            Ok(Decision::UpToDate) => Check::ok(format!(
                "{}: database at {current}, already the target",
                sql.label()
            )),
            Ok(Decision::Update(path)) => Check::ok(format!(
                "{}: database at {current}, on the update path: {} (target {})",
                sql.label(),
                path.join(" -> "),
                self.target
            )),
            Err(m) => Check::finding(
                format!("{}: {m}", sql.label()),
                format!(
                    "a database version on the update path {} to {}",
                    self.path.versions.join(", "),
                    self.target
                ),
                "see above: an intermediate update first, support, or the plan's versions",
            ),
        }]
    }
    fn describe(&self) -> Vec<String> {
        let mut lines = vec![
            if self.up_to_date {
                format!(
                    "check the database on {} now reports version {} (fails otherwise) ({})",
                    self.connection.display(),
                    self.target,
                    limit_text(self.limit)
                )
            } else {
                format!(
                    "check the database version on {} can reach {} ({})",
                    self.connection.display(),
                    self.target,
                    limit_text(self.limit)
                )
            },
            version_query_line(&self.query),
        ];
        if let Some(a) = &self.assumed {
            lines.push(format!("  ASSUMPTION: {a}"));
        }
        if self.up_to_date {
            return lines;
        }
        lines.extend([
            format!(
                "  update path (from the plan): {}",
                self.path.versions.join(" -> ")
            ),
            format!(
                "  older than {}: stop and contact support",
                self.path.oldest_supported
            ),
        ]);
        lines
    }

    async fn run(&self, ctx: &dyn StepContext) -> Result<StepOutcome, StepError> {
        let mut sql = self.connection.connect(None).await?;
        let current = read_version(&mut sql, &self.query, self.limit).await?;
        if self.up_to_date && compare_versions(&current, &self.target) != Ordering::Equal {
            return Err(StepError::fatal(format!(
                "{}: the database reports version {current}, not the target {}: the update has not been applied (run the Database Updater again: Check DB, then Update to version {}; then `upshift retry` this step){}",
                sql.label(),
                self.target,
                self.target,
                self.assumed
                    .as_ref()
                    .map(|a| format!(". Note: {a}"))
                    .unwrap_or_default()
            )));
        }
        let decision = self
            .path
            .decide(&current, &self.target)
            .map_err(|m| StepError::fatal(format!("{}: {m}", sql.label())))?;
        let mut outputs = Outputs::new();
        outputs.insert("current_version".into(), current.clone());
        outputs.insert("target_version".into(), self.target.clone());
        let (path, what) = match &decision {
            Decision::UpToDate => (String::new(), "up_to_date"),
            Decision::Update(p) => (p.join(","), "update"),
        };
        ctx.output(&format!(
            "{}: database at {current}, target {}: {}\n",
            sql.label(),
            self.target,
            if path.is_empty() {
                "up to date".to_string()
            } else {
                format!("apply {path}")
            }
        ));
        outputs.insert("path".into(), path);
        outputs.insert("decision".into(), what.into());
        Ok(StepOutcome::with_outputs(outputs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> UpdatePath {
        UpdatePath {
            versions: ["6.0", "6.5", "7.0", "7.1", "7.2", "8.0"]
                .map(String::from)
                .to_vec(),
            oldest_supported: "6.5".into(),
            incremental_from: BTreeMap::from([("8.0".to_string(), "7.0".to_string())]),
        }
    }

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(compare_versions("7.10", "7.9"), Ordering::Greater);
        assert_eq!(compare_versions("7.0", "7"), Ordering::Equal);
        assert_eq!(compare_versions("6.5.1", "6.5"), Ordering::Greater);
    }

    #[test]
    fn decisions_follow_the_manual() {
        let p = path();
        // (current, target, Ok(path) or Err(part of message))
        let cases: &[(&str, &str, Result<&str, &str>)] = &[
            ("8.0", "8.0", Ok("")),
            ("7.0", "8.0", Ok("7.1,7.2,8.0")),
            ("7.1", "7.2", Ok("7.2")),
            ("6.5", "7.2", Ok("7.0,7.1,7.2")),
            ("6.5", "8.0", Err("incremental update to 7.0 first")),
            ("6.0", "7.2", Err("contact Luware support")),
            ("5.9", "7.2", Err("contact Luware support")),
            ("8.0", "7.2", Err("newer than the target")),
            ("7.05", "8.0", Err("not on the update path")),
        ];
        for (cur, target, want) in cases {
            let got = p.decide(cur, target).map(|d| match d {
                Decision::UpToDate => String::new(),
                Decision::Update(v) => v.join(","),
            });
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(g, w, "{cur} -> {target}"),
                (Err(w), Err(g)) => assert!(g.contains(w), "{cur} -> {target}: {g}"),
                _ => panic!("{cur} -> {target}: wanted {want:?}, got {got:?}"),
            }
        }
    }
}
