//! `sql.exec`: one statement or procedure call, with typed parameters passed
//! as parameters (through `sp_executesql`, never spliced into the text).
//!
//! Parameters: `connection`, `sql`, `params` (list of `{ name = "@v", type =
//! "int", value = 5 }`; types `int`, `bigint`, `nvarchar`, `bit`,
//! `datetime2`, `varbinary` (hex); no `value` = NULL), `first_row` (bool),
//! `command_timeout` (default "30m"; "0s" = none). A parameter may not be
//! called `@stmt` or `@params` (any case): those are `sp_executesql`'s own.
//! Outputs: `rows_affected` (first_row = false) or `rows` and `col.<name>`
//! for each column of the first row (first_row = true).

use std::time::Duration;

use chrono::NaiveDateTime;
use serde::Deserialize;
use tiberius::ToSql;

use super::connection::{self, ConnectionParams, cell_text, command_limit, limit_text};
use crate::kinds::KindFn;
use crate::{Outputs, ParamError, Step, StepContext, StepError, StepOutcome, parse_params};

/// The `sql.exec` kind.
pub const KIND: KindFn = KindFn {
    name: "sql.exec",
    summary: "run one T-SQL statement with typed parameters: connection, sql, params, first_row, command_timeout",
    build,
    local_paths: &[],
};

const DEFAULT_LIMIT: Duration = Duration::from_secs(30 * 60);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ParamSpec {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    value: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    connection: ConnectionParams,
    sql: String,
    #[serde(default)]
    params: Vec<ParamSpec>,
    #[serde(default)]
    first_row: bool,
    #[serde(default, with = "crate::params::duration_text::option")]
    command_timeout: Option<Duration>,
}

/// A bound parameter value.
#[derive(Debug, Clone)]
enum Value {
    Int(Option<i32>),
    BigInt(Option<i64>),
    NVarChar(Option<String>),
    Bit(Option<bool>),
    DateTime2(Option<NaiveDateTime>),
    VarBinary(Option<Vec<u8>>),
}

impl Value {
    fn to_sql(&self) -> &dyn ToSql {
        match self {
            Value::Int(v) => v,
            Value::BigInt(v) => v,
            Value::NVarChar(v) => v,
            Value::Bit(v) => v,
            Value::DateTime2(v) => v,
            Value::VarBinary(v) => v,
        }
    }
}

struct Bound {
    name: String,
    sql_type: &'static str,
    value: Value,
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars.next() == Some('@')
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn bind(i: usize, p: &ParamSpec) -> Result<Bound, ParamError> {
    let field = format!("params[{i}]");
    if !valid_name(&p.name) || p.name.len() > 128 {
        return Err(ParamError::field(
            &field,
            format!("parameter name `{}` is not an @name", p.name),
        )
        .hint("write it like name = \"@version\" (letters, digits, _)"));
    }
    // The statement runs as `EXEC sp_executesql @P1, @P2, @name = @P3...`:
    // a parameter called like sp_executesql's own would be "supplied
    // multiple times" (8143). Renaming it would mean rewriting the plan's
    // statement text, so it is refused here with the fix.
    if ["@stmt", "@params"]
        .iter()
        .any(|own| p.name.eq_ignore_ascii_case(own))
    {
        return Err(ParamError::field(
            &field,
            format!(
                "parameter name `{}` is sp_executesql's own (@stmt and @params are its first two parameters, through which the statement and its declaration travel)",
                p.name
            ),
        )
        .hint(format!(
            "rename it in `sql` and in `params`, e.g. `{}_value`",
            p.name
        )));
    }
    let text = |v: &toml::Value| match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let bad = |what: &str| ParamError::field(&field, format!("value of {} is not {what}", p.name));
    let v = p.value.as_ref();
    let (sql_type, value) = match p.ty.to_ascii_lowercase().as_str() {
        "int" => (
            "int",
            Value::Int(
                v.map(|v| text(v).trim().parse().map_err(|_| bad("an int")))
                    .transpose()?,
            ),
        ),
        "bigint" => (
            "bigint",
            Value::BigInt(
                v.map(|v| text(v).trim().parse().map_err(|_| bad("a bigint")))
                    .transpose()?,
            ),
        ),
        "nvarchar" | "string" => ("nvarchar(max)", Value::NVarChar(v.map(text))),
        "bit" | "bool" => (
            "bit",
            Value::Bit(
                v.map(|v| match text(v).trim().to_ascii_lowercase().as_str() {
                    "true" | "1" => Ok(true),
                    "false" | "0" => Ok(false),
                    _ => Err(bad("a bit (true/false/1/0)")),
                })
                .transpose()?,
            ),
        ),
        "datetime2" => (
            "datetime2(7)",
            Value::DateTime2(
                v.map(|v| {
                    let t = text(v);
                    NaiveDateTime::parse_from_str(t.trim(), "%Y-%m-%dT%H:%M:%S%.f")
                        .or_else(|_| {
                            NaiveDateTime::parse_from_str(t.trim(), "%Y-%m-%d %H:%M:%S%.f")
                        })
                        .map_err(|_| bad("a datetime2 (2026-11-24T02:25:00)"))
                })
                .transpose()?,
            ),
        ),
        "varbinary" => (
            "varbinary(max)",
            Value::VarBinary(
                v.map(|v| {
                    let t = text(v);
                    hex::decode(t.trim().trim_start_matches("0x")).map_err(|_| bad("hex bytes"))
                })
                .transpose()?,
            ),
        ),
        other => {
            return Err(ParamError::field(
                &field,
                format!("type `{other}` of {} is not supported", p.name),
            )
            .hint("use int, bigint, nvarchar, bit, datetime2 or varbinary"));
        }
    };
    Ok(Bound {
        name: p.name.clone(),
        sql_type,
        value,
    })
}

struct Exec {
    connection: ConnectionParams,
    sql: String,
    params: Vec<Bound>,
    first_row: bool,
    limit: Option<Duration>,
}

fn build(with: &toml::Table) -> Result<Box<dyn Step>, ParamError> {
    let p: Params = parse_params(with)?;
    p.connection.check()?;
    if p.sql.trim().is_empty() {
        return Err(ParamError::field("sql", "`sql` is empty"));
    }
    let params = p
        .params
        .iter()
        .enumerate()
        .map(|(i, s)| bind(i, s))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, b) in params.iter().enumerate() {
        if params[..i]
            .iter()
            .any(|o| o.name.eq_ignore_ascii_case(&b.name))
        {
            return Err(ParamError::field(
                &format!("params[{i}]"),
                format!("parameter {} is given twice", b.name),
            ));
        }
    }
    Ok(Box::new(Exec {
        connection: p.connection,
        sql: p.sql,
        params,
        first_row: p.first_row,
        limit: command_limit(p.command_timeout, DEFAULT_LIMIT),
    }))
}

impl Exec {
    /// The statement sent and its declaration: with named parameters, the
    /// plan's statement runs inside `sp_executesql` with those names, bound
    /// to tiberius' positional `@P3...` values.
    fn wrapped(&self) -> (String, String) {
        let decl = self
            .params
            .iter()
            .map(|b| format!("{} {}", b.name, b.sql_type))
            .collect::<Vec<_>>()
            .join(", ");
        let mut call = "EXEC sp_executesql @P1, @P2".to_string();
        for (i, b) in self.params.iter().enumerate() {
            call.push_str(&format!(", {} = @P{}", b.name, i + 3));
        }
        (call, decl)
    }
}

#[async_trait::async_trait]
impl Step for Exec {
    async fn preflight(
        &self,
        _ctx: &crate::preflight::PreflightContext,
    ) -> Vec<crate::preflight::Check> {
        super::preflight::login_only(&self.connection).await
    }
    fn describe(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "on {}: {} ({})",
            self.connection.display(),
            connection::short(&self.sql),
            limit_text(self.limit)
        )];
        for b in &self.params {
            lines.push(format!("  param {} {}", b.name, b.sql_type));
        }
        if self.first_row {
            lines.push("  outputs the first row's columns as col.<name>".into());
        }
        // A plan may put a secret into the statement itself.
        lines.iter().map(|l| self.connection.redact(l)).collect()
    }

    async fn run(&self, ctx: &dyn StepContext) -> Result<StepOutcome, StepError> {
        let mut sql = self.connection.connect(None).await?;
        let (call, decl) = self.wrapped();
        let mut values: Vec<&dyn ToSql> = Vec::new();
        let (text, params): (&str, Vec<&dyn ToSql>) = if self.params.is_empty() {
            (&self.sql, Vec::new())
        } else {
            values.push(&self.sql);
            values.push(&decl);
            values.extend(self.params.iter().map(|b| b.value.to_sql()));
            (&call, values)
        };
        let mut outputs = Outputs::new();
        if self.first_row {
            let results = sql.query(text, &params, self.limit).await?;
            let first = results.into_iter().next().unwrap_or_default();
            outputs.insert("rows".into(), first.len().to_string());
            if let Some(row) = first.first() {
                for (i, col) in row.columns().iter().enumerate() {
                    outputs.insert(format!("col.{}", col.name()), cell_text(row, i));
                }
            }
        } else {
            let n = sql.execute(text, &params, self.limit).await?;
            outputs.insert("rows_affected".into(), n.to_string());
        }
        ctx.output(&self.connection.redact(&format!(
            "{}: {} done\n",
            sql.label(),
            connection::short(&self.sql)
        )));
        for v in outputs.values_mut() {
            *v = self.connection.redact(v);
        }
        Ok(StepOutcome::with_outputs(outputs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build_with(extra: &str) -> Result<Box<dyn Step>, ParamError> {
        let t: toml::Table = toml::from_str(&format!(
            "sql = \"SELECT @v\"\n{extra}\n[connection]\nhost = \"h\"\ndatabase = \"d\"\nuser = \"u\"\npassword = \"p\"\n"
        ))
        .map_err(|e| ParamError::field("test", e.to_string()))?;
        build(&t)
    }

    #[test]
    fn typed_params_are_checked_at_build() {
        assert!(build_with("params = [{name = \"@v\", type = \"int\", value = 5}]").is_ok());
        assert!(build_with("params = [{name = \"@v\", type = \"int\", value = \"x\"}]").is_err());
        assert!(build_with("params = [{name = \"v\", type = \"int\", value = 5}]").is_err());
        assert!(build_with("params = [{name = \"@v\", type = \"money\", value = 5}]").is_err());
        assert!(
            build_with(
                "params = [{name = \"@v\", type = \"int\"}, {name = \"@V\", type = \"int\"}]"
            )
            .is_err()
        );
        assert!(build_with("params = [{name = \"@v; DROP\", type = \"int\", value = 1}]").is_err());
        for own in ["@stmt", "@PARAMS", "@Stmt"] {
            let Err(e) = build_with(&format!(
                "params = [{{name = \"{own}\", type = \"int\", value = 1}}]"
            )) else {
                panic!("{own} accepted");
            };
            assert!(
                e.message.contains(own) && e.message.contains("sp_executesql"),
                "{e:?}"
            );
            assert_eq!(e.field.as_deref(), Some("params[0]"));
        }
        assert!(
            build_with("params = [{name = \"@statement\", type = \"int\", value = 1}]").is_ok()
        );
    }
}
