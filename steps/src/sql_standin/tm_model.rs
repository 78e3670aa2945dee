//! [`TmDatabaseModel`]: a small in-memory TeamManager database behind the
//! stand-in. It recognises the statements the `sql.*`/`db.*` step kinds send
//! and the update scripts of the demo and the tests, statement by statement
//! (`tm_exec`); a statement it does not recognise is answered with the error
//! SQL Server would give (e.g. 102 "Incorrect syntax near ...", 2812 "Could
//! not find stored procedure ..."), never with silence, so a typo in a
//! generated statement fails a test.
//!
//! Simplifications: one database; a transaction is a snapshot of
//! [`DbContent`] restored on rollback, on an error inside it (XACT_ABORT) or
//! when its session ends; the first error ends a batch; backups hold a copy
//! of the content, not pages (one backup set per file); rows inserted into
//! tables created by scripts are not kept.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::NaiveDateTime;

use super::tm_exec::{self, Batch};
use super::tsql;
use super::{Action, Message, Request, SqlValue, StandinHandler};

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

/// A column of a table created by a statement (`CREATE TABLE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Its name, as written.
    pub name: String,
    /// `NOT NULL` (or part of the primary key).
    pub not_null: bool,
    /// `IDENTITY`: the server fills it.
    pub identity: bool,
    /// Has a `DEFAULT`.
    pub default: bool,
}

impl Column {
    /// A column.
    pub fn new(name: &str, not_null: bool, identity: bool, default: bool) -> Column {
        Column {
            name: name.to_string(),
            not_null,
            identity,
            default,
        }
    }
}

/// What a database holds that a backup captures and a restore brings back.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DbContent {
    /// The TM version (what the version query returns); empty when
    /// `[dbo].[DatabaseVersion]` has no row.
    pub version: String,
    /// Whether `upshift.schema_history` exists.
    pub history_exists: bool,
    /// Its columns, as its `CREATE TABLE` declared them.
    pub history_columns: Vec<Column>,
    /// Its rows.
    pub history: Vec<HistoryRow>,
    /// Schemas created by statements (lowercase).
    pub schemas: BTreeSet<String>,
    /// Tables created by statements, `schema.name` (lowercase) to columns.
    pub tables: BTreeMap<String, Vec<Column>>,
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
    /// Whether it was made `WITH CHECKSUM` (a restore or verify `WITH
    /// CHECKSUM` of a backup without checksums fails with error 3187).
    pub checksums: bool,
}

/// The actions of the first fault whose pattern `text` contains
/// (case-insensitive), used up once.
fn take_fault(faults: &mut Vec<Fault>, text: &str) -> Option<Vec<Action>> {
    let l = text.to_lowercase();
    let i = faults.iter().position(|f| l.contains(&f.pattern))?;
    let actions = (faults[i].actions)();
    faults[i].times -= 1;
    if faults[i].times == 0 {
        faults.remove(i);
    }
    Some(actions)
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
    /// Application locks (`sp_getapplock`): resource (lowercase) to the
    /// session holding it. Every lock mode is exclusive here; a request for
    /// a held lock waits up to its `@LockTimeout`.
    pub app_locks: BTreeMap<String, u16>,
    /// SQL Agent jobs (msdb).
    pub agent_jobs: Vec<AgentJob>,
    /// Backup files by path.
    pub backups: BTreeMap<String, BackupFile>,
    /// Whether the database is in SINGLE_USER mode.
    pub single_user: bool,
    /// Another application keeps trying to connect to the database: as soon
    /// as a request ends with the database in SINGLE_USER mode, it takes the
    /// one connection, and a RESTORE then fails with 3101 (why SINGLE_USER
    /// and RESTORE must be sent in one batch).
    pub single_user_contender: bool,
    /// The contender holds the single-user connection.
    pub single_user_taken: bool,
    /// Procedures that exist besides the ones the model knows (tests):
    /// lowercase names without schema; they take any arguments and do
    /// nothing.
    pub procedures: BTreeSet<String>,
    /// Pause between an `IF ...` check and the `CREATE` it guards: the
    /// window in which another session's `CREATE` gets in first (default
    /// none).
    pub ddl_delay: Duration,
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
    /// Permissions denied per login (lowercase login name → upper-case
    /// permission names, e.g. `BACKUP DATABASE`, `CREATE ANY DATABASE`):
    /// `HAS_PERMS_BY_NAME` answers 0 for them, 1 for anything else.
    pub denied: BTreeMap<String, BTreeSet<String>>,
    /// The database's size as `sp_spaceused` reports it (bytes).
    pub database_bytes: i64,
    /// Free megabytes per drive letter, as `xp_fixeddrives` reports them.
    pub drives_free_mb: BTreeMap<String, i64>,
    pub(crate) next_backup_set_id: i32,
    /// Open transactions: the content before, and the nesting level.
    pub(crate) tx: BTreeMap<u16, (DbContent, u32)>,
    faults: Vec<Fault>,
    statement_faults: Vec<Fault>,
}

impl TmState {
    /// The actions of a statement fault matching `statement` (its tokens'
    /// text, separated by spaces), if any is left.
    pub(crate) fn statement_fault(&mut self, statement: &str) -> Option<Vec<Action>> {
        take_fault(&mut self.statement_faults, statement)
    }

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
                app_locks: BTreeMap::new(),
                agent_jobs: Vec::new(),
                backups: BTreeMap::new(),
                single_user: false,
                single_user_contender: false,
                single_user_taken: false,
                procedures: BTreeSet::new(),
                ddl_delay: Duration::ZERO,
                executed: Vec::new(),
                data_loader_runs: 0,
                restores: 0,
                stats_delay: Duration::from_millis(5),
                data_loader_delay: Duration::ZERO,
                denied: BTreeMap::new(),
                database_bytes: 64 * 1024 * 1024,
                drives_free_mb: BTreeMap::from([
                    ("C".to_string(), 40_960),
                    ("D".to_string(), 204_800),
                ]),
                next_backup_set_id: 1,
                tx: BTreeMap::new(),
                faults: Vec::new(),
                statement_faults: Vec::new(),
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

    /// Like [`TmDatabaseModel::fault`], for one statement of a batch: when
    /// a statement's tokens, written with single spaces (`RESTORE DATABASE
    /// TM FROM DISK = x.bak ...`: names and strings unquoted), contain
    /// `pattern`, it answers with `actions()` instead; the statements before
    /// it in the batch have run, an error ends the batch.
    pub fn fault_statement(
        &self,
        pattern: &str,
        times: usize,
        actions: impl Fn() -> Vec<Action> + Send + 'static,
    ) {
        self.state().statement_faults.push(Fault {
            pattern: pattern.to_lowercase(),
            actions: Box::new(actions),
            times,
        });
    }

    /// Denies `permission` (`BACKUP DATABASE`, `CREATE ANY DATABASE`) to
    /// `login`: `HAS_PERMS_BY_NAME` answers 0 for it.
    pub fn deny(self, login: &str, permission: &str) -> TmDatabaseModel {
        self.state()
            .denied
            .entry(login.to_lowercase())
            .or_default()
            .insert(permission.to_uppercase());
        self
    }

    /// Adds a procedure that exists and does nothing (for scripts that call
    /// one); `name` without schema.
    pub fn with_procedure(self, name: &str) -> TmDatabaseModel {
        self.state().procedures.insert(name.to_lowercase());
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
        s.app_locks.retain(|_, owner| *owner != session);
        // An open transaction dies with its session.
        tm_exec::rollback(&mut s, session);
    }
}

/// SQL `LIKE` with `%`, `_` and `[x]` single-character classes.
pub(crate) fn like(value: &str, pattern: &str) -> bool {
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

/// `EXEC sp_executesql @P1, @P2, @v = @P3, ...` (how `sql.exec` passes
/// named parameters): the inner statement with its parameters by name.
/// A parameter named like sp_executesql's own (`@stmt`, `@params`) or
/// given twice is error 8143, as on SQL Server.
fn unnest(req: &Request) -> Result<Option<Request>, Message> {
    let toks = tsql::tokens(&req.text)?;
    let mut c = tsql::Cur::new(&toks);
    if !((c.kw("EXEC") || c.kw("EXECUTE")) && c.kw("sp_executesql")) {
        return Ok(None);
    }
    let rest = c.rest();
    let args = tsql::comma_list(rest);
    let (Some([tsql::Tok::Var(stmt)]), Some([tsql::Tok::Var(_)])) =
        (args.first().copied(), args.get(1).copied())
    else {
        return Ok(None);
    };
    let Some(inner) = req.param(stmt).and_then(SqlValue::as_str) else {
        return Ok(None);
    };
    let mut params = Vec::new();
    let mut names = Vec::new();
    for a in &args[2..] {
        let [tsql::Tok::Var(name), eq, tsql::Tok::Var(from)] = a else {
            return Ok(None);
        };
        if !eq.is_op("=") {
            return Ok(None);
        }
        names.push(name.clone());
        let value = req.param(from).cloned().unwrap_or(SqlValue::Null);
        params.push((name.clone(), value));
    }
    tm_exec::check_executesql_names(&names)?;
    Ok(Some(Request {
        text: inner.to_string(),
        params,
        ..req.clone()
    }))
}

fn answer(shared: &Arc<Mutex<TmState>>, s: &mut TmState, req: &Request) -> Vec<Action> {
    let nested = match unnest(req) {
        Ok(n) => n,
        Err(m) => return vec![Action::Error(m)],
    };
    let req = nested.as_ref().unwrap_or(req);
    s.executed.push(req.text.clone());

    if let Some(actions) = take_fault(&mut s.faults, &req.text) {
        if actions.iter().any(|a| matches!(a, Action::Error(_))) {
            tm_exec::rollback(s, req.session);
        }
        return actions;
    }

    let statements = match tsql::tokens(&req.text) {
        Ok(t) => tsql::statements(t),
        Err(m) => return vec![Action::Error(m)],
    };
    tm_exec::run_batch(shared, s, Batch::new(req.clone(), statements))
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

    fn req(text: &str, params: &[(&str, SqlValue)]) -> Request {
        Request {
            session: 51,
            kind: super::super::RequestKind::Batch,
            text: text.to_string(),
            declaration: String::new(),
            params: params
                .iter()
                .map(|(n, v)| (n.to_string(), v.clone()))
                .collect(),
            user: "upshift".into(),
            database: "TM".into(),
        }
    }

    fn errors(actions: &[Action]) -> Vec<u32> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Error(m) => Some(m.number),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn unknown_statements_get_sql_server_errors() {
        let m = TmDatabaseModel::new("7.0");
        let cases = [
            ("SELEC 1", 102),
            ("EXEC [Reporting].[usp_DataLoadr]", 2812),
            ("SELECT [Versoin] FROM [dbo].[DatabaseVersion]", 207),
            ("SELECT [Version] FROM [dbo].[DatabaseVersions]", 208),
            ("SELECT @undeclared", 137),
            ("GO", 102),
            (
                "BACKUP DATABASE [TM] TO DISK = N'x' WITH COPY_ONLY, CHECKSUMS",
                155,
            ),
            (
                "EXEC sp_getapplock @Resource = N'x', @LockMod = N'Exclusive'",
                8145,
            ),
            ("COMMIT TRANSACTION", 3902),
            ("SELECT 1; CREATE SCHEMA [s]", 111),
        ];
        for (text, number) in cases {
            let got = errors(&m.handle(&req(text, &[])));
            assert_eq!(got.first(), Some(&number), "{text}: {got:?}");
        }
        // What the kinds send is known.
        for text in [
            "SELECT TOP (1) [Version] FROM [dbo].[DatabaseVersion] ORDER BY [Id] DESC",
            "SET XACT_ABORT ON; BEGIN TRANSACTION;",
            "SELECT @@TRANCOUNT AS n;",
            "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION;",
            "EXEC [Reporting].[usp_DataLoader]",
        ] {
            let got = errors(&m.handle(&req(text, &[])));
            assert!(got.is_empty(), "{text}: {got:?}");
        }
    }

    #[test]
    fn sp_executesql_parameters_named_like_its_own_are_refused() {
        let m = TmDatabaseModel::new("7.0");
        let r = req(
            "EXEC sp_executesql @P1, @P2, @STMT = @P3",
            &[
                ("@P1", SqlValue::NVarChar("SELECT @stmt".into())),
                ("@P2", SqlValue::NVarChar("@stmt int".into())),
                ("@P3", SqlValue::Int(1)),
            ],
        );
        assert_eq!(errors(&m.handle(&r)), vec![8143]);
    }
}
