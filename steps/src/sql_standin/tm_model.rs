//! [`TmDatabaseModel`]: a small in-memory TeamManager database behind the
//! stand-in. It recognises the statements the `sql.*`/`db.*` step kinds send
//! and the demo update scripts (`plans/sql/*.sql`) by their shape, not by
//! parsing T-SQL: anything it does not recognise succeeds and is only
//! recorded in [`TmState::executed`].
//!
//! Simplifications: one database; a transaction is a snapshot of
//! [`DbContent`] restored on rollback, on an error inside it (XACT_ABORT) or
//! when its session ends; `sp_getapplock` never waits (a held lock answers
//! -1 at once); backups hold a copy of the content, not pages; `RAISERROR`
//! and `THROW` in a batch fail the whole batch.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::NaiveDateTime;

use super::{Action, ColType, Message, Request, ResultSet, SqlValue, StandinHandler};

/// One row of `upshift.schema_history`.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRow {
    /// Version the script brought the database to.
    pub version: String,
    /// Script file name.
    pub script: String,
    /// SHA-256 of the script file, lowercase hex.
    pub checksum: String,
    /// Login that applied it.
    pub applied_by: String,
    /// When (UTC).
    pub applied_at: NaiveDateTime,
    /// How long it ran.
    pub execution_ms: i64,
    /// Whether it succeeded.
    pub success: bool,
    /// The upshift run that applied it.
    pub run_id: String,
}

/// A SQL Agent job with one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentJob {
    /// `msdb.dbo.sysjobs.job_id` (a GUID as text).
    pub job_id: String,
    /// Job name.
    pub name: String,
    /// The step's T-SQL command.
    pub command: String,
}

/// What a database holds that a backup captures and a restore brings back.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DbContent {
    /// The TM version (what the version query returns).
    pub version: String,
    /// Whether `upshift.schema_history` exists.
    pub history_exists: bool,
    /// Its rows.
    pub history: Vec<HistoryRow>,
}

/// A backup file on the stand-in's pretend disk.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupFile {
    /// Database backed up.
    pub database: String,
    /// Backup description (`WITH DESCRIPTION`).
    pub description: String,
    /// `msdb.dbo.backupset.backup_set_id`.
    pub backup_set_id: i32,
    /// The database content at backup time.
    pub content: DbContent,
    /// Whether `RESTORE VERIFYONLY` finds it valid (tests set false to
    /// simulate a damaged file).
    pub valid: bool,
}

/// A scripted fault: when a request's text contains `pattern`
/// (case-insensitive), answer with `actions` instead, `times` times.
struct Fault {
    pattern: String,
    actions: Box<dyn Fn() -> Vec<Action> + Send>,
    times: usize,
}

/// The model's state; tests read and change it through
/// [`TmDatabaseModel::state`].
pub struct TmState {
    /// The database's content.
    pub db: DbContent,
    /// The database name.
    pub database: String,
    /// Session holding the `upshift.db.update` application lock.
    pub app_lock: Option<u16>,
    /// SQL Agent jobs (msdb).
    pub agent_jobs: Vec<AgentJob>,
    /// Backup files by path.
    pub backups: BTreeMap<String, BackupFile>,
    /// Whether the database is in SINGLE_USER mode.
    pub single_user: bool,
    /// Every request text the model ran, in order.
    pub executed: Vec<String>,
    /// How often `[Reporting].[usp_DataLoader]` ran.
    pub data_loader_runs: u32,
    /// How many RESTORE DATABASE completed.
    pub restores: u32,
    /// Pause between two backup/restore STATS messages.
    pub stats_delay: Duration,
    /// How long one data loader run takes.
    pub data_loader_delay: Duration,
    next_backup_set_id: i32,
    tx: BTreeMap<u16, DbContent>,
    faults: Vec<Fault>,
}

impl TmState {
    /// How many executed requests contain `needle` (case-insensitive).
    pub fn count_executed(&self, needle: &str) -> usize {
        let n = needle.to_lowercase();
        self.executed
            .iter()
            .filter(|t| t.to_lowercase().contains(&n))
            .count()
    }
}

/// The ready-made "TM database" behaviour for the stand-in. Cheap to clone;
/// clones share the state.
#[derive(Clone)]
pub struct TmDatabaseModel {
    state: Arc<Mutex<TmState>>,
}

impl TmDatabaseModel {
    /// A database `TM` at `version`, without history table, jobs or backups.
    pub fn new(version: &str) -> TmDatabaseModel {
        TmDatabaseModel {
            state: Arc::new(Mutex::new(TmState {
                db: DbContent {
                    version: version.to_string(),
                    ..DbContent::default()
                },
                database: "TM".into(),
                app_lock: None,
                agent_jobs: Vec::new(),
                backups: BTreeMap::new(),
                single_user: false,
                executed: Vec::new(),
                data_loader_runs: 0,
                restores: 0,
                stats_delay: Duration::from_millis(5),
                data_loader_delay: Duration::ZERO,
                next_backup_set_id: 1,
                tx: BTreeMap::new(),
                faults: Vec::new(),
            })),
        }
    }

    /// The demo database: TM 7.0 (the demo scripts in `plans/sql/` take it
    /// to 8.0), one obsolete cleanup job calling
    /// `[mgt].[usp_CleanupReporting_DboSchema]`, one unrelated job, and
    /// slower STATS messages (100 ms apart) so progress is visible.
    pub fn demo() -> TmDatabaseModel {
        let m = TmDatabaseModel::new("7.0")
            .with_agent_job(
                "TM - Cleanup reporting (dbo schema)",
                "EXEC [mgt].[usp_CleanupReporting_DboSchema]",
            )
            .with_agent_job(
                "TM - Nightly index maintenance",
                "EXEC [dbo].[usp_IndexMaintenance]",
            );
        m.state().stats_delay = Duration::from_millis(100);
        m
    }

    /// Adds a SQL Agent job with one step running `command`.
    pub fn with_agent_job(self, name: &str, command: &str) -> TmDatabaseModel {
        {
            let mut s = self.state();
            let n = s.agent_jobs.len() + 1;
            s.agent_jobs.push(AgentJob {
                job_id: format!("6F9619FF-8B86-D011-B42D-00C04FC9{n:04X}"),
                name: name.to_string(),
                command: command.to_string(),
            });
        }
        self
    }

    /// The state, locked.
    pub fn state(&self) -> MutexGuard<'_, TmState> {
        self.state.lock().expect("stand-in model poisoned")
    }

    /// The current version.
    pub fn version(&self) -> String {
        self.state().db.version.clone()
    }

    /// When a request contains `pattern`, answer with `actions()` instead,
    /// `times` times (e.g. a deadlock, a dropped connection).
    pub fn fault(
        &self,
        pattern: &str,
        times: usize,
        actions: impl Fn() -> Vec<Action> + Send + 'static,
    ) {
        self.state().faults.push(Fault {
            pattern: pattern.to_lowercase(),
            actions: Box::new(actions),
            times,
        });
    }
}

impl StandinHandler for TmDatabaseModel {
    fn handle(&self, request: &Request) -> Vec<Action> {
        let mut s = self.state();
        answer(&self.state, &mut s, request)
    }

    fn disconnected(&self, session: u16) {
        let mut s = self.state();
        if s.app_lock == Some(session) {
            s.app_lock = None;
        }
        // An open transaction dies with its session.
        if let Some(before) = s.tx.remove(&session) {
            s.db = before;
        }
    }
}

/// The string literals (`N'...'` or `'...'`) in `text`, unescaped, in order.
fn literals(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            let mut s = String::new();
            loop {
                match chars.next() {
                    None => break,
                    Some('\'') if chars.peek() == Some(&'\'') => {
                        chars.next();
                        s.push('\'');
                    }
                    Some('\'') => break,
                    Some(ch) => s.push(ch),
                }
            }
            out.push(s);
        }
    }
    out
}

/// The identifier after `keyword` (case-insensitive): `[a]]b]` or `name`.
fn ident_after(text: &str, keyword: &str) -> Option<String> {
    let at = text.to_lowercase().find(&keyword.to_lowercase())? + keyword.len();
    let rest = text[at..].trim_start();
    if let Some(body) = rest.strip_prefix('[') {
        let mut s = String::new();
        let mut it = body.chars().peekable();
        while let Some(c) = it.next() {
            if c == ']' {
                if it.peek() == Some(&']') {
                    it.next();
                    s.push(']');
                } else {
                    return Some(s);
                }
            } else {
                s.push(c);
            }
        }
        None
    } else {
        let s: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        (!s.is_empty()).then_some(s)
    }
}

/// SQL `LIKE` with `%`, `_` and `[x]` single-character classes.
fn like(value: &str, pattern: &str) -> bool {
    fn go(v: &[char], p: &[char]) -> bool {
        match p.first() {
            None => v.is_empty(),
            Some('%') => (0..=v.len()).any(|i| go(&v[i..], &p[1..])),
            Some('_') => !v.is_empty() && go(&v[1..], &p[1..]),
            Some('[') => {
                let Some(end) = p.iter().position(|c| *c == ']') else {
                    return false;
                };
                let class = &p[1..end];
                !v.is_empty()
                    && class.iter().any(|c| c.eq_ignore_ascii_case(&v[0]))
                    && go(&v[1..], &p[end + 1..])
            }
            Some(c) => !v.is_empty() && c.eq_ignore_ascii_case(&v[0]) && go(&v[1..], &p[1..]),
        }
    }
    let v: Vec<char> = value.chars().collect();
    let p: Vec<char> = pattern.chars().collect();
    go(&v, &p)
}

fn param_text(req: &Request, name: &str) -> String {
    req.param(name)
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string()
}

fn one_int(name: &str, value: i32) -> Action {
    Action::Rows(ResultSet::new(&[(name, ColType::Int)]).row(vec![SqlValue::Int(value)]))
}

fn stats(actions: &mut Vec<Action>, text: &str, delay: Duration) {
    let lower = text.to_lowercase();
    let step = lower
        .find("stats")
        .and_then(|i| {
            lower[i + 5..].trim_start().strip_prefix('=').map(|r| {
                r.trim_start()
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
            })
        })
        .and_then(|d| d.parse::<u32>().ok())
        .filter(|n| (1..=100).contains(n));
    if let Some(step) = step {
        let mut p = step;
        while p <= 100 {
            actions.push(Action::Delay(delay));
            actions.push(Action::Info(Message::info(
                3211,
                format!("{p} percent processed."),
            )));
            p += step;
        }
    }
}

fn missing_file(path: &str, verb: &str) -> Vec<Action> {
    vec![
        Action::Error(Message::error(
            3201,
            format!(
                "Cannot open backup device '{path}'. Operating system error 2(The system cannot find the file specified.)."
            ),
        )),
        Action::Error(Message::error(
            3013,
            format!("{verb} is terminating abnormally."),
        )),
    ]
}

/// Parses `WAITFOR DELAY 'hh:mm:ss[.fff]'`.
fn waitfor(text: &str) -> Option<Duration> {
    let lower = text.to_lowercase();
    let at = lower.find("waitfor delay")?;
    let lit = literals(&text[at..]).into_iter().next()?;
    let mut secs = 0f64;
    for part in lit.split(':') {
        secs = secs * 60.0 + part.trim().parse::<f64>().ok()?;
    }
    Some(Duration::from_secs_f64(secs))
}

/// `RAISERROR(N'text', 16, 1)` or `THROW 51000, N'text', 1`.
fn raised(text: &str) -> Option<Message> {
    let lower = text.to_lowercase();
    if let Some(at) = lower.find("raiserror") {
        let msg = literals(&text[at..]).into_iter().next().unwrap_or_default();
        return Some(Message::error(50000, msg));
    }
    if let Some(at) = lower.find("throw ") {
        let rest = &text[at + 6..];
        let number: u32 = rest
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .ok()?;
        let msg = literals(rest).into_iter().next().unwrap_or_default();
        return Some(Message::error(number, msg));
    }
    None
}

/// `EXEC sp_executesql @P1, @P2, @v = @P3, ...` (how `sql.exec` passes
/// named parameters): the inner statement with its parameters by name.
fn unnest(req: &Request) -> Option<Request> {
    let lower = req.text.to_lowercase();
    let rest = lower.strip_prefix("exec sp_executesql @p1, @p2")?;
    let inner = req.param("@P1")?.as_str()?.to_string();
    let mut params = Vec::new();
    for part in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, from) = part.split_once('=')?;
        let value = req.param(from.trim())?.clone();
        params.push((name.trim().to_string(), value));
    }
    Some(Request {
        text: inner,
        params,
        ..req.clone()
    })
}

fn answer(shared: &Arc<Mutex<TmState>>, s: &mut TmState, req: &Request) -> Vec<Action> {
    let nested = unnest(req);
    let req = nested.as_ref().unwrap_or(req);
    let text = req.text.as_str();
    let l = text.to_lowercase();
    let l = l.trim();
    s.executed.push(text.to_string());

    if let Some(i) = s.faults.iter().position(|f| l.contains(&f.pattern)) {
        let actions = (s.faults[i].actions)();
        s.faults[i].times -= 1;
        if s.faults[i].times == 0 {
            s.faults.remove(i);
        }
        if actions.iter().any(|a| matches!(a, Action::Error(_))) {
            rollback_doomed(s, req.session);
        }
        return actions;
    }

    // Transactions (XACT_ABORT semantics: an error dooms the transaction).
    if l.contains("begin tran") {
        let snapshot = s.db.clone();
        s.tx.insert(req.session, snapshot);
        return vec![Action::Done { rows_affected: 0 }];
    }
    if l.starts_with("commit") {
        s.tx.remove(&req.session);
        return vec![Action::Done { rows_affected: 0 }];
    }
    if l.contains("rollback tran") {
        if let Some(before) = s.tx.remove(&req.session) {
            s.db = before;
        }
        return vec![Action::Done { rows_affected: 0 }];
    }

    // Application lock.
    if l.contains("sp_getapplock") {
        let granted = match s.app_lock {
            None => {
                s.app_lock = Some(req.session);
                0
            }
            Some(owner) if owner == req.session => 1,
            Some(_) => -1,
        };
        return vec![one_int("result", granted)];
    }
    if l.contains("sp_releaseapplock") {
        if s.app_lock == Some(req.session) {
            s.app_lock = None;
        }
        return vec![Action::Done { rows_affected: 0 }];
    }

    // upshift.schema_history.
    if l.contains("create table [upshift].[schema_history]") {
        s.db.history_exists = true;
        return vec![Action::Done { rows_affected: 0 }];
    }
    if l.contains("[upshift].[schema_history]") && l.starts_with("select") {
        if !s.db.history_exists {
            return vec![Action::Error(Message::error(
                208,
                "Invalid object name 'upshift.schema_history'.",
            ))];
        }
        let mut rs = ResultSet::new(&[
            ("version", ColType::NVarChar),
            ("script", ColType::NVarChar),
            ("checksum", ColType::NVarChar),
            ("applied_by", ColType::NVarChar),
            ("applied_at", ColType::DateTime2),
            ("execution_ms", ColType::BigInt),
            ("success", ColType::Bit),
        ]);
        for h in &s.db.history {
            rs = rs.row(vec![
                SqlValue::NVarChar(h.version.clone()),
                SqlValue::NVarChar(h.script.clone()),
                SqlValue::NVarChar(h.checksum.clone()),
                SqlValue::NVarChar(h.applied_by.clone()),
                SqlValue::DateTime2(h.applied_at),
                SqlValue::BigInt(h.execution_ms),
                SqlValue::Bit(h.success),
            ]);
        }
        return vec![Action::Rows(rs)];
    }
    if l.starts_with("insert into [upshift].[schema_history]") {
        if !s.db.history_exists {
            return vec![Action::Error(Message::error(
                208,
                "Invalid object name 'upshift.schema_history'.",
            ))];
        }
        s.db.history.push(HistoryRow {
            version: param_text(req, "@P1"),
            script: param_text(req, "@P2"),
            checksum: param_text(req, "@P3"),
            run_id: param_text(req, "@P4"),
            execution_ms: req.param("@P5").and_then(SqlValue::as_i64).unwrap_or(0),
            success: matches!(req.param("@P6"), Some(SqlValue::Bit(true))),
            applied_by: req.user.clone(),
            applied_at: chrono::Utc::now().naive_utc(),
        });
        return vec![Action::Done { rows_affected: 1 }];
    }

    // The TM version.
    if l.starts_with("select") && l.contains("databaseversion") {
        return vec![Action::Rows(
            ResultSet::new(&[("Version", ColType::NVarChar)])
                .row(vec![SqlValue::NVarChar(s.db.version.clone())]),
        )];
    }

    // Update scripts: faults they raise, pauses, and the version they set.
    let mut actions = Vec::new();
    if let Some(d) = waitfor(text) {
        actions.push(Action::Delay(d));
    }
    if let Some(m) = raised(text) {
        actions.push(Action::Error(m));
        rollback_doomed(s, req.session);
        return actions;
    }
    if let Some(at) = l.find("insert into [dbo].[databaseversion]")
        && let Some(v) = literals(&text[at..]).into_iter().last().or_else(|| {
            // VALUES (@v): a parameter of a nested sp_executesql.
            let after = &l[at..];
            let name_at = after.find("values")? + after[after.find("values")?..].find('@')?;
            let name: String = after[name_at..]
                .chars()
                .take_while(|c| *c == '@' || c.is_alphanumeric() || *c == '_')
                .collect();
            req.param(&name)
                .and_then(|v| v.as_str())
                .map(str::to_string)
        })
    {
        {
            let st = shared.clone();
            actions.push(Action::Effect(Box::new(move || {
                st.lock().expect("poisoned").db.version = v;
            })));
            actions.push(Action::Done { rows_affected: 1 });
            return actions;
        }
    }

    // Backups and restores.
    if l.starts_with("backup database") {
        let db = ident_after(text, "backup database").unwrap_or_default();
        let lits = literals(text);
        let path = lits.first().cloned().unwrap_or_default();
        let description = lits.get(1).cloned().unwrap_or_default();
        stats(&mut actions, text, s.stats_delay);
        let id = s.next_backup_set_id;
        s.next_backup_set_id += 1;
        let file = BackupFile {
            database: db.clone(),
            description,
            backup_set_id: id,
            content: s.db.clone(),
            valid: true,
        };
        let st = shared.clone();
        actions.push(Action::Effect(Box::new(move || {
            st.lock().expect("poisoned").backups.insert(path, file);
        })));
        actions.push(Action::Info(Message::info(
            3014,
            format!("BACKUP DATABASE successfully processed 1234 pages in 0.100 seconds (96.4 MB/sec). [{db}]"),
        )));
        actions.push(Action::Done { rows_affected: 0 });
        return actions;
    }
    if l.contains("msdb.dbo.backupset") {
        let path = param_text(req, "@P1");
        let db = param_text(req, "@P2");
        let desc = param_text(req, "@P3");
        let mut rs = ResultSet::new(&[("backup_set_id", ColType::Int)]);
        if let Some(f) = s.backups.get(&path)
            && f.database.eq_ignore_ascii_case(&db)
            && f.description == desc
        {
            {
                rs = rs.row(vec![SqlValue::Int(f.backup_set_id)]);
            }
        }
        return vec![Action::Rows(rs)];
    }
    if l.starts_with("restore verifyonly") {
        let path = literals(text).into_iter().next().unwrap_or_default();
        return match s.backups.get(&path) {
            Some(f) if f.valid => vec![
                Action::Info(Message::info(3262, "The backup set on file 1 is valid.")),
                Action::Done { rows_affected: 0 },
            ],
            Some(_) => vec![
                Action::Error(Message::error(
                    3189,
                    "Damage to the backup set was detected.",
                )),
                Action::Error(Message::error(
                    3013,
                    "VERIFY DATABASE is terminating abnormally.",
                )),
            ],
            None => missing_file(&path, "VERIFY DATABASE"),
        };
    }
    if l.starts_with("restore database") {
        let path = literals(text).into_iter().next().unwrap_or_default();
        let Some(file) = s.backups.get(&path).cloned() else {
            return missing_file(&path, "RESTORE DATABASE");
        };
        stats(&mut actions, text, s.stats_delay);
        let st = shared.clone();
        actions.push(Action::Effect(Box::new(move || {
            let mut s = st.lock().expect("poisoned");
            s.db = file.content;
            s.restores += 1;
        })));
        actions.push(Action::Info(Message::info(
            3014,
            "RESTORE DATABASE successfully processed 1234 pages in 0.100 seconds (96.4 MB/sec).",
        )));
        actions.push(Action::Done { rows_affected: 0 });
        return actions;
    }
    if l.starts_with("alter database") && l.contains("single_user") {
        s.single_user = true;
        return vec![Action::Done { rows_affected: 0 }];
    }
    if l.starts_with("alter database") && l.contains("multi_user") {
        s.single_user = false;
        return vec![Action::Done { rows_affected: 0 }];
    }

    // SQL Agent jobs.
    if l.contains("msdb.dbo.sysjobsteps") {
        let pattern = param_text(req, "@P1");
        let mut rs = ResultSet::new(&[
            ("job_id", ColType::NVarChar),
            ("name", ColType::NVarChar),
            ("command", ColType::NVarChar),
        ]);
        for j in s.agent_jobs.iter().filter(|j| like(&j.command, &pattern)) {
            rs = rs.row(vec![
                SqlValue::NVarChar(j.job_id.clone()),
                SqlValue::NVarChar(j.name.clone()),
                SqlValue::NVarChar(j.command.clone()),
            ]);
        }
        return vec![Action::Rows(rs)];
    }
    if l.contains("sp_delete_job") {
        let id = param_text(req, "@P1");
        let before = s.agent_jobs.len();
        s.agent_jobs.retain(|j| !j.job_id.eq_ignore_ascii_case(&id));
        if s.agent_jobs.len() == before {
            return vec![Action::Error(Message::error(
                14262,
                format!("The specified @job_id ('{id}') does not exist."),
            ))];
        }
        return vec![Action::Done { rows_affected: 0 }];
    }

    // The reporting data loader.
    if l.contains("usp_dataloader") {
        s.data_loader_runs += 1;
        if !s.data_loader_delay.is_zero() {
            actions.push(Action::Delay(s.data_loader_delay));
        }
        actions.push(Action::Done { rows_affected: 0 });
        return actions;
    }

    if l.starts_with("select @@trancount") {
        let n = i32::from(s.tx.contains_key(&req.session));
        return vec![one_int("n", n)];
    }
    if l.contains("@@spid") {
        return vec![one_int("spid", req.session as i32)];
    }

    actions.push(Action::Done { rows_affected: 0 });
    actions
}

/// XACT_ABORT: an error inside a transaction rolls it back.
fn rollback_doomed(s: &mut TmState, session: u16) {
    if let Some(before) = s.tx.remove(&session) {
        s.db = before;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_handles_wildcards_and_classes() {
        let cmd = "EXEC [mgt].[usp_CleanupReporting_DboSchema] @days = 3";
        assert!(like(cmd, "%usp[_]CleanupReporting[_]DboSchema%"));
        assert!(!like(cmd, "%usp[_]Other%"));
        assert!(like("abc", "a_c"));
        assert!(!like("abc", "a_d"));
    }

    #[test]
    fn literals_and_identifiers_unescape() {
        assert_eq!(
            literals("BACKUP x TO DISK = N'C:\\it''s.bak' WITH DESCRIPTION = N'd'"),
            vec!["C:\\it's.bak".to_string(), "d".to_string()]
        );
        assert_eq!(
            ident_after("BACKUP DATABASE [we]]ird] TO", "backup database").as_deref(),
            Some("we]ird")
        );
        assert_eq!(
            waitfor("WAITFOR DELAY '00:00:02'"),
            Some(Duration::from_secs(2))
        );
    }
}
