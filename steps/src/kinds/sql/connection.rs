//! The `connection` parameter table every SQL kind takes, and the one place
//! that connects to SQL Server, runs statements under a command timeout
//! (cancelling on the server with a TDS attention when it expires), and turns
//! driver errors into [`StepError`]s (transient or not).
//!
//! The password never leaves this module in text: [`Secret`] prints as
//! `<redacted>`, [`ConnectionParams::display`] leaves it out, and every error
//! message passes through [`ConnectionParams::redact`] before it becomes a
//! `StepError`.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use tiberius::{AuthMethod, Client, Config, EncryptionLevel, Row, ToSql};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use crate::{ParamError, StepError};

/// Error numbers a retry may cure: deadlock victim (1205), lock request
/// timeout (1222), the "server busy / failover" family of Azure SQL and
/// Always On (4060 is not here: a missing database stays missing), and the
/// network-level errors SQL Server reports for a broken session.
pub const TRANSIENT_ERRORS: &[u32] = &[
    1205, 1222, 233, 64, 10053, 10054, 10060, 40143, 40197, 40501, 40613, 49918, 49919, 49920,
    4221, 3960, 41301, 41302, 41305, 41325, 41839,
];

/// How long a cancel (attention) may take to be acknowledged before the
/// connection is abandoned.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// A password. Never printed.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    /// The password itself, for the driver only.
    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        Ok(Secret(String::deserialize(d)?))
    }
}

/// How the connection is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encrypt {
    /// `true`: everything is encrypted (TLS); the default.
    Required,
    /// `false`: only the login packet is encrypted (SQL Server's classic
    /// `Encrypt=False`); the certificate is still checked unless
    /// `trust_server_certificate`.
    LoginOnly,
    /// `"none"`: no TLS at all, the password crosses the network readable.
    /// Only for the stand-in and test servers without TLS.
    None,
}

impl<'de> Deserialize<'de> for Encrypt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Encrypt, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(Encrypt::Required),
            Raw::Bool(false) => Ok(Encrypt::LoginOnly),
            Raw::Text(t) => match t.as_str() {
                "required" | "true" => Ok(Encrypt::Required),
                "login" | "false" => Ok(Encrypt::LoginOnly),
                "none" => Ok(Encrypt::None),
                other => Err(serde::de::Error::custom(format!(
                    "encrypt = \"{other}\": write true, false or \"none\""
                ))),
            },
        }
    }
}

/// How the engine authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Auth {
    /// A SQL login: `user` and `password`.
    #[default]
    Sql,
    /// Windows integrated security (the account upshift runs as).
    Integrated,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(15)
}

fn default_true() -> Encrypt {
    Encrypt::Required
}

/// The `connection` table (the engine fills it from `[targets.<name>]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionParams {
    /// Server host name or address.
    pub host: String,
    /// TCP port; 1433 unless an `instance` is named (then SQL Server Browser
    /// tells the port, unless a port is given too).
    pub port: Option<u16>,
    /// Named instance (`host\instance`).
    pub instance: Option<String>,
    /// Database to connect to.
    pub database: String,
    /// `sql` (default) or `integrated`.
    #[serde(default)]
    pub auth: Auth,
    /// SQL login name (auth = "sql").
    pub user: Option<String>,
    /// SQL login password (auth = "sql"); from a secret.
    pub password: Option<Secret>,
    /// `true` (default), `false` (login packet only) or `"none"`.
    #[serde(default = "default_true")]
    pub encrypt: Encrypt,
    /// Accept any server certificate (self-signed); default false.
    #[serde(default)]
    pub trust_server_certificate: bool,
    /// Bound on TCP connect + login; default 15 s.
    #[serde(
        default = "default_connect_timeout",
        with = "crate::params::duration_text"
    )]
    pub connect_timeout: Duration,
}

impl ConnectionParams {
    /// Checks what serde cannot (called by every kind's `build`).
    pub fn check(&self) -> Result<(), ParamError> {
        if self.host.trim().is_empty() {
            return Err(ParamError::field("connection.host", "`host` is empty"));
        }
        // `sql01\TMSQL` is how SQL Server tools name a named instance; the
        // driver takes the two apart (host, then the instance through SQL
        // Server Browser), and a backslash in a host name only fails at run
        // time, after the steps before the first connection have run.
        if let Some((host, instance)) = self.host.split_once('\\') {
            return Err(ParamError::field(
                "connection.host",
                format!(
                    "host `{}` names a named instance; `host` is the server only",
                    self.host
                ),
            )
            .hint(format!(
                "write host = \"{host}\" and instance = \"{instance}\" (SQL Server Browser, UDP 1434, tells the port unless `port` is given too)"
            )));
        }
        if self
            .instance
            .as_deref()
            .is_some_and(|i| i.trim().is_empty())
        {
            return Err(ParamError::field(
                "connection.instance",
                "`instance` is empty",
            )
            .hint("name the instance (the part after the backslash in sql01\\TMSQL), or leave `instance` out for the default instance"));
        }
        if self.database.trim().is_empty() {
            return Err(ParamError::field(
                "connection.database",
                "`database` is empty",
            ));
        }
        if self.auth == Auth::Sql {
            if self.user.as_deref().unwrap_or("").is_empty() {
                return Err(
                    ParamError::field("connection.user", "auth = \"sql\" needs a `user`").hint(
                        "or set auth = \"integrated\" to log in as the account upshift runs as",
                    ),
                );
            }
            if self.password.is_none() {
                return Err(ParamError::field(
                    "connection.password",
                    "auth = \"sql\" needs a `password`",
                )
                .hint("reference a secret: password = \"${secrets.sql_password}\""));
            }
        }
        Ok(())
    }

    /// `host\instance:port/database (sql login user)`, never the password.
    pub fn display(&self) -> String {
        let mut s = self.host.clone();
        if let Some(i) = &self.instance {
            s.push('\\');
            s.push_str(i);
        }
        if let Some(p) = self.port {
            s.push_str(&format!(":{p}"));
        }
        s.push('/');
        s.push_str(&self.database);
        match self.auth {
            Auth::Sql => s.push_str(&format!(
                " (sql login {})",
                self.user.as_deref().unwrap_or("?")
            )),
            Auth::Integrated => s.push_str(" (integrated)"),
        }
        s
    }

    pub(crate) fn password(&self) -> &str {
        self.password.as_ref().map(Secret::expose).unwrap_or("")
    }

    /// Replaces the password in `text`, wherever a message picked it up.
    pub fn redact(&self, text: &str) -> String {
        let pw = self.password();
        if pw.is_empty() {
            text.to_string()
        } else {
            text.replace(pw, "<redacted>")
        }
    }

    /// Connects to `database` (or the table's database), bounded by
    /// `connect_timeout`. Failures to reach the server are transient.
    pub async fn connect(&self, database: Option<&str>) -> Result<Sql, StepError> {
        let database = database.unwrap_or(&self.database).to_string();
        let label = format!("{} [database {database}]", self.display());
        let mut config = Config::new();
        config.host(&self.host);
        if let Some(p) = self.port {
            config.port(p);
        }
        if let Some(i) = &self.instance {
            config.instance_name(i);
        }
        config.database(&database);
        config.application_name("upshift");
        config.encryption(match self.encrypt {
            Encrypt::Required => EncryptionLevel::Required,
            Encrypt::LoginOnly => EncryptionLevel::Off,
            Encrypt::None => EncryptionLevel::NotSupported,
        });
        if self.trust_server_certificate {
            config.trust_cert();
        }
        config.handshake_timeout(Some(self.connect_timeout));
        // Never let the driver's 30 s default cut a backup or a script short:
        // every statement is bounded by the step's own command timeout below.
        config.command_timeout(None);
        match self.auth {
            Auth::Sql => config.authentication(AuthMethod::sql_server(
                self.user.as_deref().unwrap_or(""),
                self.password(),
            )),
            Auth::Integrated => {
                #[cfg(windows)]
                config.authentication(AuthMethod::Integrated);
                #[cfg(not(windows))]
                return Err(StepError::fatal(format!(
                    "{label}: auth = \"integrated\" works only when upshift runs on Windows; use a SQL login here"
                )));
            }
        }
        let redact = |m: String| self.redact(&m);
        let connect = async {
            let tcp = if self.instance.is_some() && self.port.is_none() {
                use tiberius::SqlBrowser;
                TcpStream::connect_named(&config)
                    .await
                    .map_err(|e| StepError::transient(redact(format!(
                        "{label}: cannot resolve the instance through SQL Server Browser (UDP 1434): {e}"
                    ))))?
            } else {
                TcpStream::connect(config.get_addr()).await.map_err(|e| {
                    StepError::transient(redact(format!("{label}: cannot connect: {e}")))
                })?
            };
            let _ = tcp.set_nodelay(true);
            Client::connect(config, tcp.compat_write())
                .await
                .map_err(|e| classify(self, &label, "login", e))
        };
        let client = match guarded(connect, Some(self.connect_timeout), self.password()).await {
            Some(c) => c?,
            None => {
                return Err(StepError::transient(format!(
                    "{label}: no connection within the connect timeout of {}",
                    humantime::format_duration(self.connect_timeout)
                )));
            }
        };
        tracing::debug!(target: "upshift::sql", "connected to {label}");
        Ok(Sql {
            client,
            params: self.clone(),
            label,
        })
    }
}

/// Turns a driver error into a step error: server errors keep their number,
/// severity, state, procedure and line; lost connections are transient.
fn classify(p: &ConnectionParams, label: &str, what: &str, e: tiberius::error::Error) -> StepError {
    use tiberius::error::Error;
    let (message, transient) = match e {
        Error::Server(t) => {
            let mut at = String::new();
            if !t.procedure().is_empty() {
                at.push_str(&format!(", procedure {}", t.procedure()));
            }
            at.push_str(&format!(", line {}", t.line()));
            (
                format!(
                    "{label}: {what} failed: SQL Server error {}, severity {}, state {}{at}: {}",
                    t.code(),
                    t.class(),
                    t.state(),
                    t.message()
                ),
                TRANSIENT_ERRORS.contains(&t.code()),
            )
        }
        Error::Io { message, .. } => (
            format!("{label}: connection lost during {what}: {message}"),
            true,
        ),
        other => (format!("{label}: {what} failed: {other}"), false),
    };
    StepError::Failed {
        message: p.redact(&message),
        transient,
    }
}

/// Where the statement was in the step, for messages: its first line.
pub fn short(sql: &str) -> String {
    let line = sql
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let mut s: String = line.chars().take(70).collect();
    if line.chars().count() > 70 || sql.trim().lines().count() > 1 {
        s.push_str(" ...");
    }
    format!("`{s}`")
}

/// An open connection.
pub struct Sql {
    client: Client<Compat<TcpStream>>,
    params: ConnectionParams,
    label: String,
}

impl Sql {
    /// `host/database (login)` for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The connection parameters (for redaction).
    pub fn params(&self) -> &ConnectionParams {
        &self.params
    }

    /// Maps what a bounded statement came back with: its value, its error
    /// (classified), or, when the time limit ran out, the batch cancelled on
    /// the server.
    async fn settle<T>(
        &mut self,
        what: &str,
        limit: Option<Duration>,
        outcome: Option<Result<T, tiberius::error::Error>>,
    ) -> Result<T, StepError> {
        match outcome {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(self.fail(what, e)),
            None => Err(self
                .cancel_after_timeout(what, limit.unwrap_or_default())
                .await),
        }
    }

    fn fail(&self, what: &str, e: tiberius::error::Error) -> StepError {
        classify(&self.params, &self.label, what, e)
    }

    /// Cancels the running request on the server and says how it went.
    async fn cancel_after_timeout(&mut self, what: &str, limit: Duration) -> StepError {
        tracing::warn!(
            target: "upshift::sql",
            "{}: {} over its command timeout; sending an attention",
            self.label,
            self.params.redact(what)
        );
        let secret = self.params.password().to_string();
        let outcome = match guarded(self.client.cancel_query(), Some(CANCEL_WAIT), &secret).await {
            Some(Ok(())) => "it was cancelled on the server (attention acknowledged)".to_string(),
            Some(Err(e)) => format!(
                "the cancel failed ({}); the connection is closed, which ends the request on the server",
                self.params.redact(&e.to_string())
            ),
            None => "the server did not acknowledge the cancel; the connection is closed, which ends the request on the server".to_string(),
        };
        StepError::fatal(self.params.redact(&format!(
            "{}: {what} did not finish within the command timeout of {}; {outcome}. Raise the step's `command_timeout` if it needs longer",
            self.label,
            humantime::format_duration(limit)
        )))
    }

    /// Runs an SQL batch (no parameters), returning every result set.
    pub async fn batch(
        &mut self,
        sql: &str,
        limit: Option<Duration>,
    ) -> Result<Vec<Vec<Row>>, StepError> {
        let what = self.params.redact(&short(sql));
        tracing::debug!(target: "upshift::sql", "{}: running {what}", self.label);
        let client = &mut self.client;
        let fut = async move { client.simple_query(sql).await?.into_results().await };
        let secret = self.params.password().to_string();
        let outcome = guarded(fut, limit, &secret).await;
        self.settle(&what, limit, outcome).await
    }

    /// Runs a parameterised statement (`@P1`, ...; `sp_executesql`),
    /// returning every result set.
    pub async fn query(
        &mut self,
        sql: &str,
        params: &[&dyn ToSql],
        limit: Option<Duration>,
    ) -> Result<Vec<Vec<Row>>, StepError> {
        let what = self.params.redact(&short(sql));
        tracing::debug!(target: "upshift::sql", "{}: running {what}", self.label);
        let client = &mut self.client;
        let fut = async move { client.query(sql, params).await?.into_results().await };
        let secret = self.params.password().to_string();
        let outcome = guarded(fut, limit, &secret).await;
        self.settle(&what, limit, outcome).await
    }

    /// Runs a parameterised statement, returning the rows it affected.
    pub async fn execute(
        &mut self,
        sql: &str,
        params: &[&dyn ToSql],
        limit: Option<Duration>,
    ) -> Result<u64, StepError> {
        let what = self.params.redact(&short(sql));
        tracing::debug!(target: "upshift::sql", "{}: running {what}", self.label);
        let client = &mut self.client;
        let fut = async move {
            let r = client.execute(sql, params).await?;
            Ok::<u64, tiberius::error::Error>(r.rows_affected().iter().sum())
        };
        let secret = self.params.password().to_string();
        let outcome = guarded(fut, limit, &secret).await;
        self.settle(&what, limit, outcome).await
    }

    /// Like [`Sql::batch`], handing `N percent processed.` messages
    /// (`WITH STATS`) to `on_percent` as they arrive, while the statement
    /// runs.
    pub async fn batch_with_progress(
        &mut self,
        sql: &str,
        limit: Option<Duration>,
        on_percent: &(dyn Fn(u64) + Sync),
    ) -> Result<Vec<Vec<Row>>, StepError> {
        let what = self.params.redact(&short(sql));
        tracing::debug!(target: "upshift::sql", "{}: running {what}", self.label);
        let client = &mut self.client;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let run = async move { client.simple_query(sql).await?.into_results().await };
        let tapped = super::progress::tapped(
            run,
            Some(Arc::new(move |p| {
                let _ = tx.send(p);
            })),
            self.params.password(),
        );
        let watched = async {
            tokio::pin!(tapped);
            let out = loop {
                tokio::select! {
                    out = &mut tapped => break out,
                    Some(p) = rx.recv() => on_percent(p),
                }
            };
            while let Ok(p) = rx.try_recv() {
                on_percent(p);
            }
            out
        };
        let outcome = bounded(watched, limit).await;
        self.settle(&what, limit, outcome).await
    }
}

/// Runs `fut` with an optional time limit; `None` when it ran out.
async fn bounded<T>(fut: impl Future<Output = T>, limit: Option<Duration>) -> Option<T> {
    match limit {
        None => Some(fut.await),
        Some(l) => tokio::time::timeout(l, fut).await.ok(),
    }
}

/// [`bounded`], with tiberius' events that carry `secret` dropped.
async fn guarded<T>(
    fut: impl Future<Output = T>,
    limit: Option<Duration>,
    secret: &str,
) -> Option<T> {
    super::progress::tapped(bounded(fut, limit), None, secret).await
}

/// A `command_timeout` parameter: `"0s"` means no limit.
pub fn command_limit(given: Option<Duration>, default: Duration) -> Option<Duration> {
    match given {
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
        None => Some(default),
    }
}

/// Text for a command limit in describe() lines.
pub fn limit_text(limit: Option<Duration>) -> String {
    match limit {
        None => "no command timeout".into(),
        Some(d) => format!("command timeout {}", humantime::format_duration(d)),
    }
}

/// The value of a result cell as text: integers in decimal, bit as
/// `true`/`false`, binary as lowercase hex, date-times in ISO 8601, NULL as
/// the empty string.
pub fn cell_text(row: &Row, idx: usize) -> String {
    use tiberius::ColumnData as C;
    let Some((_, data)) = row.cells().nth(idx) else {
        return String::new();
    };
    match data {
        C::U8(v) => v.map(|x| x.to_string()).unwrap_or_default(),
        C::I16(v) => v.map(|x| x.to_string()).unwrap_or_default(),
        C::I32(v) => v.map(|x| x.to_string()).unwrap_or_default(),
        C::I64(v) => v.map(|x| x.to_string()).unwrap_or_default(),
        C::F32(v) => v.map(|x| x.to_string()).unwrap_or_default(),
        C::F64(v) => v.map(|x| x.to_string()).unwrap_or_default(),
        C::Bit(v) => v.map(|x| x.to_string()).unwrap_or_default(),
        C::String(v) => v.as_deref().unwrap_or_default().to_string(),
        C::Guid(v) => v.map(|x| x.to_string()).unwrap_or_default(),
        C::Binary(v) => v.as_deref().map(hex::encode).unwrap_or_default(),
        C::Numeric(v) => v.map(|x| x.to_string()).unwrap_or_default(),
        _ => {
            if let Ok(Some(dt)) = row.try_get::<chrono::NaiveDateTime, _>(idx) {
                dt.format("%Y-%m-%dT%H:%M:%S%.f").to_string()
            } else if let Ok(Some(d)) = row.try_get::<chrono::NaiveDate, _>(idx) {
                d.to_string()
            } else {
                format!("{data:?}")
            }
        }
    }
}

/// The same error with `prefix` in front of its message (keeps whether it
/// is transient).
pub fn within(e: StepError, prefix: &str) -> StepError {
    match e {
        StepError::Failed { message, transient } => StepError::Failed {
            message: format!("{prefix}: {message}"),
            transient,
        },
        other => other,
    }
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// `key=value` pairs of a connection string; a value in `{...}`, `'...'` or
/// `"..."` may contain `;`.
fn ado_pairs(ado: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = ado.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.trim().is_empty() {
            break;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let close = match chars.peek() {
            Some('{') => Some('}'),
            Some('\'') => Some('\''),
            Some('"') => Some('"'),
            _ => None,
        };
        let value = match close {
            Some(close) => {
                chars.next();
                let v: String = chars.by_ref().take_while(|c| *c != close).collect();
                for c in chars.by_ref() {
                    if c == ';' {
                        break;
                    }
                }
                v
            }
            None => chars.by_ref().take_while(|c| *c != ';').collect::<String>(),
        };
        out.push((
            key.trim().trim_start_matches(';').trim().to_string(),
            value.trim().to_string(),
        ));
    }
    out
}

/// Turns an ADO.NET connection string (`Server=tcp:host,1433;Database=TM;
/// User Id=sa;Password=...;Encrypt=true;TrustServerCertificate=true`) into
/// a `connection` table. Used by the tests against a real server
/// (`UPSHIFT_TEST_MSSQL`); an operator's tool could use it too.
pub fn connection_table_from_ado(ado: &str) -> Result<toml::Table, String> {
    let mut t = toml::Table::new();
    for (k, v) in ado_pairs(ado) {
        let key = k.to_ascii_lowercase().replace(' ', "");
        let v = v.as_str();
        let yes = matches!(
            v.to_ascii_lowercase().as_str(),
            "true" | "yes" | "sspi" | "mandatory" | "strict"
        );
        match key.as_str() {
            "server" | "datasource" | "address" | "addr" | "networkaddress" => {
                let v = v.strip_prefix("tcp:").unwrap_or(v);
                let (host, port) = match v.rsplit_once(',') {
                    Some((h, p)) => (
                        h,
                        Some(
                            p.trim()
                                .parse::<u16>()
                                .map_err(|_| format!("bad port in `{v}`"))?,
                        ),
                    ),
                    None => (v, None),
                };
                let (host, instance) = match host.split_once('\\') {
                    Some((h, i)) => (h, Some(i)),
                    None => (host, None),
                };
                let host = if host == "." || host.eq_ignore_ascii_case("(local)") {
                    "localhost"
                } else {
                    host
                };
                t.insert("host".into(), host.trim().into());
                if let Some(p) = port {
                    t.insert("port".into(), i64::from(p).into());
                }
                if let Some(i) = instance {
                    t.insert("instance".into(), i.trim().into());
                }
            }
            "database" | "initialcatalog" => {
                t.insert("database".into(), v.into());
            }
            "userid" | "uid" | "user" | "username" => {
                t.insert("user".into(), v.into());
            }
            "password" | "pwd" => {
                t.insert("password".into(), v.into());
            }
            "integratedsecurity" | "trusted_connection" if yes => {
                t.insert("auth".into(), "integrated".into());
            }
            "encrypt" => {
                t.insert("encrypt".into(), yes.into());
            }
            "trustservercertificate" => {
                t.insert("trust_server_certificate".into(), yes.into());
            }
            "connecttimeout" | "connectiontimeout" | "timeout" => {
                t.insert("connect_timeout".into(), format!("{v}s").into());
            }
            _ => {}
        }
    }
    if !t.contains_key("host") {
        return Err("the connection string names no Server".into());
    }
    if !t.contains_key("database") {
        return Err("the connection string names no Database".into());
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(extra: &str) -> Result<ConnectionParams, ParamError> {
        let t: toml::Table = toml::from_str(&format!(
            "host = \"db1\"\ndatabase = \"TM\"\nuser = \"sa\"\npassword = \"S3cr3t!pw\"\n{extra}"
        ))
        .map_err(|e| ParamError::field("test", e.to_string()))?;
        crate::parse_params(&t)
    }

    #[test]
    fn defaults_are_documented_ones() {
        let p = params("").unwrap();
        assert_eq!(p.encrypt, Encrypt::Required);
        assert_eq!(p.auth, Auth::Sql);
        assert_eq!(p.connect_timeout, Duration::from_secs(15));
        assert!(!p.trust_server_certificate);
        assert_eq!(p.port, None);
    }

    #[test]
    fn encrypt_accepts_bool_and_none() {
        assert_eq!(
            params("encrypt = false").unwrap().encrypt,
            Encrypt::LoginOnly
        );
        assert_eq!(params("encrypt = \"none\"").unwrap().encrypt, Encrypt::None);
        assert!(params("encrypt = \"maybe\"").is_err());
    }

    #[test]
    fn password_never_printed() {
        let p = params("instance = \"TM\"").unwrap();
        assert!(!format!("{p:?}").contains("S3cr3t!pw"));
        assert!(!p.display().contains("S3cr3t!pw"));
        assert_eq!(p.display(), "db1\\TM/TM (sql login sa)");
        assert_eq!(p.redact("x S3cr3t!pw y"), "x <redacted> y");
    }

    #[test]
    fn sql_auth_needs_user_and_password() {
        let t: toml::Table = toml::from_str("host = \"h\"\ndatabase = \"d\"").unwrap();
        let p: ConnectionParams = crate::parse_params(&t).unwrap();
        assert_eq!(
            p.check().unwrap_err().field.as_deref(),
            Some("connection.user")
        );
    }

    #[test]
    fn a_backslash_in_host_is_refused_with_the_instance_hint() {
        let t: toml::Table =
            toml::from_str("host = 'sql01\\TMSQL'\ndatabase = \"d\"\nauth = \"integrated\"")
                .unwrap();
        let p: ConnectionParams = crate::parse_params(&t).unwrap();
        let e = p.check().unwrap_err();
        assert_eq!(e.field.as_deref(), Some("connection.host"));
        assert!(
            e.hint
                .unwrap()
                .starts_with("write host = \"sql01\" and instance = \"TMSQL\"")
        );
    }

    #[test]
    fn ado_strings_become_connection_tables() -> Result<(), ParamError> {
        let t = connection_table_from_ado(
            "Server=tcp:db1\\TM,1434;Initial Catalog=TM;User ID=sa;Password={a;b};Encrypt=false;TrustServerCertificate=True;Connect Timeout=5",
        );
        let t = t.map_err(|e| ParamError::field("ado", e))?;
        assert_eq!(t["password"].as_str(), Some("a;b"));
        let p: ConnectionParams = crate::parse_params(&t)?;
        assert_eq!(p.host, "db1");
        assert_eq!(p.instance.as_deref(), Some("TM"));
        assert_eq!(p.port, Some(1434));
        assert_eq!(p.database, "TM");
        assert_eq!(p.encrypt, Encrypt::LoginOnly);
        assert!(p.trust_server_certificate);
        assert_eq!(p.connect_timeout, Duration::from_secs(5));
        assert!(connection_table_from_ado("Database=x").is_err());
        Ok(())
    }

    #[test]
    fn zero_command_timeout_means_none() {
        let d = Duration::from_secs(5);
        assert_eq!(command_limit(Some(Duration::ZERO), d), None);
        assert_eq!(command_limit(None, d), Some(d));
    }
}
