//! The TM model's statement interpreter: a batch is split into statements
//! (`tsql`), and each statement is recognised token by token. What the
//! model knows it carries out on [`TmState`]; anything else is answered with
//! the error SQL Server would give (102 incorrect syntax, 2812 unknown
//! procedure, 207/208 unknown column/object, 155 unknown BACKUP option,
//! 137 undeclared variable, 8145 unknown procedure parameter, ...), so a
//! typo in a statement a step kind generates fails its test.
//!
//! What it recognises strictly: everything the `sql.*`/`db.*` kinds send
//! (transactions, `SET XACT_ABORT`, `sp_getapplock`/`sp_releaseapplock`,
//! the history table's DDL, inserts and selects, the version query,
//! BACKUP/RESTORE with their options, `ALTER DATABASE ... SET
//! SINGLE_USER|MULTI_USER`, the msdb backup-set and Agent-job queries,
//! `sp_delete_job`, the data loader), `IF <condition> <statement>` with
//! `DB_ID`/`SCHEMA_ID`/`OBJECT_ID`/`@@TRANCOUNT`/`@@ERROR`, `DECLARE`,
//! `SELECT` of expressions or from the tables it has (joins on equality,
//! `WHERE` conjunctions of `=`/`<>`/`LIKE`/`IS [NOT] NULL`, `ORDER BY`,
//! `TOP`), `PRINT`, `WAITFOR DELAY`, `RAISERROR`, `THROW`.
//! What it accepts with only its first words and object names checked
//! (update scripts): `CREATE TABLE` (columns recorded), `CREATE INDEX`,
//! `CREATE SCHEMA`, `CREATE VIEW|PROCEDURE|FUNCTION|TRIGGER` (first in the
//! batch), `ALTER TABLE`, `INSERT` into tables it knows, `UPDATE`, `DELETE`,
//! `DROP TABLE`, `TRUNCATE TABLE`.
//!
//! Simplifications: the first error ends the batch (SQL Server goes on
//! after most statement-level errors); an error inside a transaction rolls
//! it back (as with `XACT_ABORT ON`, which `db.update` sets); rows inserted
//! into tables created by scripts are counted, not kept; every application
//! lock mode is exclusive.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::tm_model::{BackupFile, Column, HistoryRow, TmState, like};
use super::tsql::{self, Cur, Tok, comma_list, syntax_error};
use super::{Action, ColType, Message, Request, ResultSet, SqlValue};

/// How often a statement waiting for an application lock looks again.
const LOCK_POLL: Duration = Duration::from_millis(20);

/// Longest `BACKUP ... DESCRIPTION` SQL Server takes, in UTF-16 units
/// (`msdb.dbo.backupset.description` is nvarchar(255)).
pub(crate) const DESCRIPTION_MAX_UNITS: usize = 255;

/// A statement failed: the messages SQL Server would send.
pub(super) struct Fail(Vec<Message>);

impl From<Message> for Fail {
    fn from(m: Message) -> Fail {
        Fail(vec![m])
    }
}

type R<T> = Result<T, Fail>;

/// What a statement did.
enum Flow {
    /// Finished, with these actions.
    Go(Vec<Action>),
    /// Must wait (an application lock): after `delay`, run `then`, or the
    /// same statement again (`None`).
    Wait {
        delay: Duration,
        then: Option<Vec<Tok>>,
    },
}

/// A batch being run: its statements and variables, kept across waits.
pub(super) struct Batch {
    req: Request,
    stmts: VecDeque<Vec<Tok>>,
    /// Variables by lowercase name (request parameters included).
    vars: BTreeMap<String, SqlValue>,
    /// When the statement waiting for a lock gives up.
    deadline: Option<Option<Instant>>,
    /// `@@ERROR`: 0 after a statement that succeeded.
    last_error: u32,
    /// Index of the statement running (0 = first of the batch).
    index: usize,
}

impl Batch {
    pub(super) fn new(req: Request, stmts: Vec<Vec<Tok>>) -> Batch {
        let vars = req
            .params
            .iter()
            .map(|(n, v)| (n.to_lowercase(), v.clone()))
            .collect();
        Batch {
            req,
            stmts: stmts.into(),
            vars,
            deadline: None,
            last_error: 0,
            index: 0,
        }
    }
}

/// Runs the batch's statements until the end, an error, or a wait (then it
/// returns a delay and an [`Action::Then`] that goes on).
pub(super) fn run_batch(
    shared: &Arc<Mutex<TmState>>,
    s: &mut TmState,
    mut b: Batch,
) -> Vec<Action> {
    let mut actions = Vec::new();
    while let Some(stmt) = b.stmts.pop_front() {
        let text = stmt.iter().map(Tok::near).collect::<Vec<_>>().join(" ");
        let result = match s.statement_fault(&text) {
            Some(a) if a.iter().any(|x| matches!(x, Action::Error(_))) => Err(Fail(
                a.into_iter()
                    .filter_map(|x| match x {
                        Action::Error(m) => Some(m),
                        _ => None,
                    })
                    .collect(),
            )),
            Some(a) => Ok(Flow::Go(a)),
            None => statement(shared, s, &mut b, &stmt),
        };
        match result {
            Ok(Flow::Go(a)) => {
                b.last_error = 0;
                b.deadline = None;
                b.index += 1;
                actions.extend(a);
            }
            Ok(Flow::Wait { delay, then }) => {
                b.stmts.push_front(then.unwrap_or(stmt));
                actions.push(Action::Delay(delay));
                let shared = shared.clone();
                actions.push(Action::Then(Box::new(move || {
                    let mut s = shared.lock().expect("stand-in model poisoned");
                    run_batch(&shared, &mut s, b)
                })));
                return actions;
            }
            Err(Fail(messages)) => {
                // XACT_ABORT: an error dooms the open transaction.
                rollback(s, b.req.session);
                actions.extend(messages.into_iter().map(Action::Error));
                end_of_batch(s);
                return actions;
            }
        }
    }
    end_of_batch(s);
    actions
}

/// Things that happen between two requests: an application waiting to get
/// into a database left in SINGLE_USER mode takes the one slot.
fn end_of_batch(s: &mut TmState) {
    if s.single_user && s.single_user_contender {
        s.single_user_taken = true;
    }
}

/// Rolls back the session's open transaction, if any.
pub(super) fn rollback(s: &mut TmState, session: u16) {
    if let Some((before, _)) = s.tx.remove(&session) {
        s.db = before;
    }
}

fn done(rows: u64) -> Flow {
    Flow::Go(vec![Action::Done {
        rows_affected: rows,
    }])
}

fn statement(
    shared: &Arc<Mutex<TmState>>,
    s: &mut TmState,
    b: &mut Batch,
    toks: &[Tok],
) -> R<Flow> {
    let mut c = Cur::new(toks);
    let Some(first) = c.next() else {
        return Ok(Flow::Go(Vec::new()));
    };
    let Tok::Word(word) = first else {
        return Err(syntax_error(&first.near()).into());
    };
    match word.to_ascii_uppercase().as_str() {
        "SET" => set(b, &mut c),
        "DECLARE" => declare(b, &mut c),
        "BEGIN" => {
            if !(c.kw("TRAN") || c.kw("TRANSACTION")) {
                return Err(c.error().into());
            }
            if matches!(c.peek(), Some(Tok::Word(_) | Tok::Ident(_))) {
                c.next();
            }
            c.expect_end()?;
            let entry =
                s.tx.entry(b.req.session)
                    .or_insert_with(|| (s.db.clone(), 0));
            entry.1 += 1;
            Ok(Flow::Go(Vec::new()))
        }
        "COMMIT" => {
            let _ = c.kw("TRAN") || c.kw("TRANSACTION") || c.kw("WORK");
            c.expect_end()?;
            match s.tx.get_mut(&b.req.session) {
                None => Err(Message::error(
                    3902,
                    "The COMMIT TRANSACTION request has no corresponding BEGIN TRANSACTION.",
                )
                .into()),
                Some(t) => {
                    t.1 -= 1;
                    if t.1 == 0 {
                        s.tx.remove(&b.req.session);
                    }
                    Ok(Flow::Go(Vec::new()))
                }
            }
        }
        "ROLLBACK" => {
            let _ = c.kw("TRAN") || c.kw("TRANSACTION") || c.kw("WORK");
            c.expect_end()?;
            if !s.tx.contains_key(&b.req.session) {
                return Err(Message::error(
                    3903,
                    "The ROLLBACK TRANSACTION request has no corresponding BEGIN TRANSACTION.",
                )
                .into());
            }
            rollback(s, b.req.session);
            Ok(Flow::Go(Vec::new()))
        }
        "IF" => {
            let cond = condition(s, b, &mut c)?;
            if c.done() {
                return Err(c.error().into());
            }
            let inner = c.rest().to_vec();
            if !cond {
                return Ok(Flow::Go(Vec::new()));
            }
            // The window between the check and the statement, where another
            // session can get in first (e.g. two CREATE TABLEs).
            if !s.ddl_delay.is_zero() && inner[0].is_kw("CREATE") {
                return Ok(Flow::Wait {
                    delay: s.ddl_delay,
                    then: Some(inner),
                });
            }
            statement(shared, s, b, &inner)
        }
        "EXEC" | "EXECUTE" => exec(shared, s, b, &mut c),
        "SELECT" => select(s, b, &mut c),
        "INSERT" => insert(shared, s, b, &mut c),
        "UPDATE" => {
            let name = c.name()?;
            table_of(s, b, &name)?;
            c.expect_kw("SET")?;
            Ok(done(0))
        }
        "DELETE" => {
            c.kw("FROM");
            let name = c.name()?;
            let t = table_of(s, b, &name)?;
            if !c.done() {
                c.expect_kw("WHERE")?;
            }
            Ok(done(clear(s, &t)))
        }
        "TRUNCATE" => {
            c.expect_kw("TABLE")?;
            let name = c.name()?;
            let t = table_of(s, b, &name)?;
            c.expect_end()?;
            clear(s, &t);
            Ok(Flow::Go(Vec::new()))
        }
        "DROP" => drop_table(s, b, &mut c),
        "CREATE" => create(s, b, &mut c),
        "ALTER" => alter(s, b, &mut c),
        "BACKUP" => backup(shared, s, b, &mut c),
        "RESTORE" => restore(shared, s, b, &mut c),
        "PRINT" => {
            let v = expr(s, b, &mut c)?;
            c.expect_end()?;
            Ok(Flow::Go(vec![Action::Info(Message::info(0, text_of(&v)))]))
        }
        "WAITFOR" => {
            c.expect_kw("DELAY")?;
            let d = match c.next() {
                Some(Tok::Str(t)) => parse_delay(t),
                _ => None,
            }
            .ok_or_else(|| c.error())?;
            c.expect_end()?;
            Ok(Flow::Go(vec![Action::Delay(d)]))
        }
        "RAISERROR" => {
            c.expect_op("(")?;
            let args = c.parenthesised()?;
            let args = comma_list(args);
            if args.len() < 3 {
                return Err(syntax_error(word).into());
            }
            let msg = match args[0].first() {
                Some(Tok::Str(t)) => t.clone(),
                Some(other) => other.near(),
                None => String::new(),
            };
            let severity = int_of(args[1]).unwrap_or(16).clamp(0, 25) as u8;
            let state = int_of(args[2]).unwrap_or(1).clamp(0, 255) as u8;
            let m = Message::error(50000, msg).severity(severity, state);
            if severity > 10 {
                Err(m.into())
            } else {
                Ok(Flow::Go(vec![Action::Info(m)]))
            }
        }
        "THROW" => {
            let number = c.int()?;
            c.expect_op(",")?;
            let msg = c.string()?;
            c.expect_op(",")?;
            let state = c.int()?;
            c.expect_end()?;
            Err(
                Message::error(number.clamp(50000, i32::MAX as i64) as u32, msg)
                    .severity(16, state.clamp(0, 255) as u8)
                    .into(),
            )
        }
        _ => Err(syntax_error(word).into()),
    }
}

// ---- SET, DECLARE, expressions ----

fn set(b: &mut Batch, c: &mut Cur<'_>) -> R<Flow> {
    if let Some(Tok::Var(v)) = c.peek() {
        c.next();
        let name = v.to_lowercase();
        if !b.vars.contains_key(&name) {
            return Err(undeclared(v).into());
        }
        c.expect_op("=")?;
        let value = {
            // Expressions here only read variables, not the model.
            let t = c.rest().to_vec();
            let mut inner = Cur::new(&t);
            let v = literal_or_var(b, &mut inner)?;
            inner.expect_end()?;
            v
        };
        b.vars.insert(name, value);
        return Ok(Flow::Go(Vec::new()));
    }
    const FLAGS: &[&str] = &[
        "XACT_ABORT",
        "NOCOUNT",
        "QUOTED_IDENTIFIER",
        "ANSI_NULLS",
        "ANSI_PADDING",
        "ANSI_WARNINGS",
        "ARITHABORT",
        "CONCAT_NULL_YIELDS_NULL",
        "NUMERIC_ROUNDABORT",
    ];
    let Some(Tok::Word(option)) = c.next() else {
        return Err(c.error().into());
    };
    if FLAGS.iter().any(|f| f.eq_ignore_ascii_case(option)) {
        if !(c.kw("ON") || c.kw("OFF")) {
            return Err(c.error().into());
        }
    } else if option.eq_ignore_ascii_case("LOCK_TIMEOUT") {
        c.int()?;
    } else {
        return Err(syntax_error(option).into());
    }
    c.expect_end()?;
    Ok(Flow::Go(Vec::new()))
}

fn declare(b: &mut Batch, c: &mut Cur<'_>) -> R<Flow> {
    let rest = c.rest().to_vec();
    for part in comma_list(&rest) {
        let mut p = Cur::new(part);
        let Some(Tok::Var(name)) = p.next() else {
            return Err(p.error().into());
        };
        p.kw("AS");
        let Some(Tok::Word(ty)) = p.next() else {
            return Err(p.error().into());
        };
        check_type(ty)?;
        if p.op("(") {
            p.parenthesised()?;
        }
        let value = if p.op("=") {
            literal_or_var(b, &mut p)?
        } else {
            SqlValue::Null
        };
        p.expect_end()?;
        b.vars.insert(name.to_lowercase(), value);
    }
    Ok(Flow::Go(Vec::new()))
}

const TYPES: &[&str] = &[
    "int",
    "bigint",
    "smallint",
    "tinyint",
    "bit",
    "nvarchar",
    "varchar",
    "nchar",
    "char",
    "datetime",
    "datetime2",
    "date",
    "time",
    "datetimeoffset",
    "decimal",
    "numeric",
    "float",
    "real",
    "money",
    "uniqueidentifier",
    "varbinary",
    "binary",
    "xml",
    "sysname",
    "text",
    "ntext",
];

fn check_type(ty: &str) -> Result<(), Message> {
    if TYPES.iter().any(|t| t.eq_ignore_ascii_case(ty)) {
        Ok(())
    } else {
        Err(Message::error(
            2715,
            format!("Column, parameter, or variable #1: Cannot find data type {ty}."),
        ))
    }
}

fn undeclared(name: &str) -> Message {
    Message::error(137, format!("Must declare the scalar variable \"{name}\".")).severity(15, 2)
}

fn variable(b: &Batch, name: &str) -> Result<SqlValue, Message> {
    b.vars
        .get(&name.to_lowercase())
        .cloned()
        .ok_or_else(|| undeclared(name))
}

/// A literal, a variable or NULL.
fn literal_or_var(b: &Batch, c: &mut Cur<'_>) -> Result<SqlValue, Message> {
    let negative = c.op("-");
    match c.next() {
        Some(Tok::Str(t)) if !negative => Ok(SqlValue::NVarChar(t.clone())),
        Some(Tok::Num(n)) => number(n, negative),
        Some(Tok::Var(v)) if !v.starts_with("@@") && !negative => variable(b, v),
        Some(t) if t.is_kw("NULL") && !negative => Ok(SqlValue::Null),
        Some(t) => Err(syntax_error(&t.near())),
        None => Err(c.error()),
    }
}

fn number(n: &str, negative: bool) -> Result<SqlValue, Message> {
    let text = if negative {
        format!("-{n}")
    } else {
        n.to_string()
    };
    if let Ok(i) = text.parse::<i32>() {
        Ok(SqlValue::Int(i))
    } else if let Ok(i) = text.parse::<i64>() {
        Ok(SqlValue::BigInt(i))
    } else {
        // Decimals: the model has no decimal type; text is enough for it.
        Ok(SqlValue::NVarChar(text))
    }
}

/// An expression: a literal, a variable, `@@TRANCOUNT`/`@@SPID`/`@@ERROR`,
/// or one of the functions the model knows.
fn expr(s: &TmState, b: &Batch, c: &mut Cur<'_>) -> Result<SqlValue, Message> {
    match c.peek() {
        Some(Tok::Var(v)) if v.starts_with("@@") => {
            c.next();
            match v.to_ascii_uppercase().as_str() {
                "@@TRANCOUNT" => Ok(SqlValue::Int(
                    s.tx.get(&b.req.session).map_or(0, |t| t.1 as i32),
                )),
                "@@SPID" => Ok(SqlValue::Int(b.req.session as i32)),
                "@@ERROR" => Ok(SqlValue::Int(b.last_error as i32)),
                _ => Err(syntax_error(v)),
            }
        }
        Some(Tok::Word(f)) if c.peek_at(1).is_some_and(|t| t.is_op("(")) => {
            c.next();
            c.next();
            let args = c.parenthesised()?;
            function(s, b, f, args)
        }
        _ => literal_or_var(b, c),
    }
}

fn function(s: &TmState, b: &Batch, f: &str, args: &[Tok]) -> Result<SqlValue, Message> {
    let args: Vec<&[Tok]> = if args.is_empty() {
        Vec::new()
    } else {
        comma_list(args)
    };
    let text_arg = |i: usize| -> Result<String, Message> {
        let a = args.get(i).ok_or_else(|| syntax_error(")"))?;
        let mut c = Cur::new(a);
        let v = literal_or_var(b, &mut c)?;
        c.expect_end()?;
        Ok(text_of(&v))
    };
    let arity = |n: usize| -> Result<(), Message> {
        if args.len() == n {
            Ok(())
        } else {
            Err(Message::error(
                174,
                format!(
                    "The {} function requires {n} argument(s).",
                    f.to_ascii_lowercase()
                ),
            ))
        }
    };
    match f.to_ascii_uppercase().as_str() {
        "SUSER_SNAME" | "SUSER_NAME" | "ORIGINAL_LOGIN" => {
            arity(0)?;
            Ok(SqlValue::NVarChar(b.req.user.clone()))
        }
        "DB_NAME" => {
            arity(0)?;
            Ok(SqlValue::NVarChar(b.req.database.clone()))
        }
        "SYSUTCDATETIME" | "GETUTCDATE" | "SYSDATETIME" | "GETDATE" => {
            arity(0)?;
            Ok(SqlValue::DateTime2(chrono::Utc::now().naive_utc()))
        }
        "DB_ID" => {
            arity(1)?;
            let name = text_arg(0)?;
            Ok(if name.eq_ignore_ascii_case(&s.database) {
                SqlValue::Int(5)
            } else if ["master", "tempdb", "model", "msdb"]
                .iter()
                .any(|d| d.eq_ignore_ascii_case(&name))
            {
                SqlValue::Int(1)
            } else {
                SqlValue::Null
            })
        }
        "HAS_PERMS_BY_NAME" => {
            // (securable, securable_class, permission): NULL for a database
            // that does not exist, 0 for a permission denied to the login,
            // else 1.
            arity(3)?;
            let (securable, class, permission) = (text_arg(0)?, text_arg(1)?, text_arg(2)?);
            if class.eq_ignore_ascii_case("DATABASE")
                && function(s, b, "DB_ID", &[Tok::Str(securable)])? == SqlValue::Null
            {
                return Ok(SqlValue::Null);
            }
            let denied = s
                .denied
                .get(&b.req.user.to_lowercase())
                .is_some_and(|d| d.contains(&permission.to_uppercase()));
            Ok(SqlValue::Int(i32::from(!denied)))
        }
        "SCHEMA_ID" => {
            arity(1)?;
            let name = text_arg(0)?;
            Ok(if in_tm_db(s, b) && schema_exists(s, &name) {
                SqlValue::Int(1)
            } else {
                SqlValue::Null
            })
        }
        "OBJECT_ID" => {
            if args.is_empty() || args.len() > 2 {
                return Err(syntax_error(f));
            }
            let name = text_arg(0)?;
            let toks = tsql::tokens(&name)?;
            let mut nc = Cur::new(&toks);
            let Ok(parts) = nc.name() else {
                return Ok(SqlValue::Null);
            };
            Ok(match resolve(s, b, &parts) {
                Some(_) if nc.done() => SqlValue::Int(1),
                _ => SqlValue::Null,
            })
        }
        _ => Err(Message::error(
            195,
            format!("'{f}' is not a recognized built-in function name."),
        )
        .severity(15, 10)),
    }
}

/// `<expr> <op> <expr>` or `<expr> IS [NOT] NULL`.
fn condition(s: &TmState, b: &Batch, c: &mut Cur<'_>) -> Result<bool, Message> {
    let left = expr(s, b, c)?;
    if c.kw("IS") {
        let not = c.kw("NOT");
        c.expect_kw("NULL")?;
        return Ok((left == SqlValue::Null) != not);
    }
    let op = match c.next() {
        Some(Tok::Op(o)) if ["=", "<>", "!=", ">", "<", ">=", "<="].contains(&o.as_str()) => {
            o.clone()
        }
        Some(t) => return Err(syntax_error(&t.near())),
        None => return Err(c.error()),
    };
    let right = expr(s, b, c)?;
    Ok(compare_op(&left, &op, &right))
}

fn compare_op(left: &SqlValue, op: &str, right: &SqlValue) -> bool {
    if *left == SqlValue::Null || *right == SqlValue::Null {
        return false;
    }
    let ord = order(left, right);
    match op {
        "=" => ord.is_eq(),
        "<>" | "!=" => !ord.is_eq(),
        ">" => ord.is_gt(),
        "<" => ord.is_lt(),
        ">=" => ord.is_ge(),
        "<=" => ord.is_le(),
        _ => false,
    }
}

/// Orders two values: numbers numerically, text case-insensitively (SQL
/// Server's default collations), NULL first.
fn order(a: &SqlValue, b: &SqlValue) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a.as_i64(), b.as_i64()) {
        (Some(x), Some(y)) => x.cmp(&y),
        _ => match (a, b) {
            (SqlValue::Null, SqlValue::Null) => Ordering::Equal,
            (SqlValue::Null, _) => Ordering::Less,
            (_, SqlValue::Null) => Ordering::Greater,
            (SqlValue::DateTime2(x), SqlValue::DateTime2(y)) => x.cmp(y),
            (SqlValue::Bit(x), SqlValue::Bit(y)) => x.cmp(y),
            _ => text_of(a).to_lowercase().cmp(&text_of(b).to_lowercase()),
        },
    }
}

pub(crate) fn text_of(v: &SqlValue) -> String {
    match v {
        SqlValue::Null => String::new(),
        SqlValue::Int(i) => i.to_string(),
        SqlValue::BigInt(i) => i.to_string(),
        SqlValue::NVarChar(t) => t.clone(),
        SqlValue::VarBinary(x) => hex::encode(x),
        SqlValue::DateTime2(d) => d.to_string(),
        SqlValue::Bit(x) => u8::from(*x).to_string(),
    }
}

fn int_of(toks: &[Tok]) -> Option<i64> {
    match toks {
        [Tok::Num(n)] => n.parse().ok(),
        _ => None,
    }
}

fn col_type(v: &SqlValue) -> ColType {
    match v {
        SqlValue::Int(_) => ColType::Int,
        SqlValue::BigInt(_) => ColType::BigInt,
        SqlValue::VarBinary(_) => ColType::VarBinary,
        SqlValue::DateTime2(_) => ColType::DateTime2,
        SqlValue::Bit(_) => ColType::Bit,
        SqlValue::NVarChar(_) | SqlValue::Null => ColType::NVarChar,
    }
}

/// `hh:mm:ss[.fff]`.
fn parse_delay(text: &str) -> Option<Duration> {
    let mut secs = 0f64;
    for part in text.split(':') {
        secs = secs * 60.0 + part.trim().parse::<f64>().ok()?;
    }
    Some(Duration::from_secs_f64(secs))
}

// ---- objects ----

/// A table the model can read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Table {
    /// `[dbo].[DatabaseVersion]` of the TM database.
    Version,
    /// `[upshift].[schema_history]`.
    History,
    /// A table an update script created (`schema.name`, lowercase).
    Created(String),
    /// `msdb.dbo.backupset`.
    BackupSet,
    /// `msdb.dbo.backupmediafamily`.
    MediaFamily,
    /// `msdb.dbo.sysjobs`.
    Jobs,
    /// `msdb.dbo.sysjobsteps`.
    JobSteps,
}

fn in_tm_db(s: &TmState, b: &Batch) -> bool {
    b.req.database.eq_ignore_ascii_case(&s.database)
}

fn schema_exists(s: &TmState, schema: &str) -> bool {
    [
        "dbo",
        "sys",
        "guest",
        "INFORMATION_SCHEMA",
        "Reporting",
        "mgt",
    ]
    .iter()
    .any(|x| x.eq_ignore_ascii_case(schema))
        || s.db.schemas.contains(&schema.to_lowercase())
}

/// Resolves `[db.][schema.]name` to a table of the model.
fn resolve(s: &TmState, b: &Batch, parts: &[String]) -> Option<Table> {
    let (db, schema, name) = match parts {
        [n] => (b.req.database.as_str(), "dbo", n.as_str()),
        [sc, n] => (b.req.database.as_str(), sc.as_str(), n.as_str()),
        [d, sc, n] => (
            d.as_str(),
            if sc.is_empty() { "dbo" } else { sc.as_str() },
            n.as_str(),
        ),
        _ => return None,
    };
    let is = |a: &str, x: &str| a.eq_ignore_ascii_case(x);
    if is(db, "msdb") && is(schema, "dbo") {
        return match name.to_ascii_lowercase().as_str() {
            "backupset" => Some(Table::BackupSet),
            "backupmediafamily" => Some(Table::MediaFamily),
            "sysjobs" => Some(Table::Jobs),
            "sysjobsteps" => Some(Table::JobSteps),
            _ => None,
        };
    }
    if !is(db, &s.database) {
        return None;
    }
    if is(schema, "dbo") && is(name, "DatabaseVersion") {
        return Some(Table::Version);
    }
    if is(schema, "upshift") && is(name, "schema_history") {
        return s.db.history_exists.then_some(Table::History);
    }
    let key = format!("{}.{}", schema.to_lowercase(), name.to_lowercase());
    s.db.tables
        .contains_key(&key)
        .then_some(Table::Created(key))
}

fn invalid_object(parts: &[String]) -> Message {
    Message::error(208, format!("Invalid object name '{}'.", parts.join(".")))
}

fn table_of(s: &TmState, b: &Batch, parts: &[String]) -> Result<Table, Message> {
    resolve(s, b, parts).ok_or_else(|| invalid_object(parts))
}

/// Deletes every row; returns how many there were.
fn clear(s: &mut TmState, t: &Table) -> u64 {
    match t {
        Table::Version => {
            let had = !s.db.version.is_empty();
            s.db.version.clear();
            u64::from(had)
        }
        Table::History => {
            let n = s.db.history.len() as u64;
            s.db.history.clear();
            n
        }
        _ => 0,
    }
}

/// A table's columns and rows, as read now.
struct View {
    columns: Vec<(String, ColType)>,
    rows: Vec<Vec<SqlValue>>,
}

fn history_value(h: &HistoryRow, id: usize, column: &str) -> SqlValue {
    match column.to_ascii_lowercase().as_str() {
        "id" => SqlValue::Int(id as i32),
        "version" => SqlValue::NVarChar(h.version.clone()),
        "script" => SqlValue::NVarChar(h.script.clone()),
        "checksum" => SqlValue::NVarChar(h.checksum.clone()),
        "run_id" => SqlValue::NVarChar(h.run_id.clone()),
        "applied_by" => SqlValue::NVarChar(h.applied_by.clone()),
        "applied_at" => SqlValue::DateTime2(h.applied_at),
        "execution_ms" => SqlValue::BigInt(h.execution_ms),
        "success" => SqlValue::Bit(h.success),
        _ => SqlValue::Null,
    }
}

fn history_type(column: &str) -> ColType {
    match column.to_ascii_lowercase().as_str() {
        "id" => ColType::Int,
        "applied_at" => ColType::DateTime2,
        "execution_ms" => ColType::BigInt,
        "success" => ColType::Bit,
        _ => ColType::NVarChar,
    }
}

fn view(s: &TmState, t: &Table) -> View {
    let cols = |c: &[(&str, ColType)]| c.iter().map(|(n, t)| (n.to_string(), *t)).collect();
    match t {
        Table::Version => View {
            columns: cols(&[
                ("Id", ColType::Int),
                ("Version", ColType::NVarChar),
                ("AppliedAt", ColType::DateTime2),
            ]),
            rows: if s.db.version.is_empty() {
                Vec::new()
            } else {
                vec![vec![
                    SqlValue::Int(1),
                    SqlValue::NVarChar(s.db.version.clone()),
                    SqlValue::DateTime2(chrono::Utc::now().naive_utc()),
                ]]
            },
        },
        Table::History => View {
            columns: s
                .db
                .history_columns
                .iter()
                .map(|c| (c.name.clone(), history_type(&c.name)))
                .collect(),
            rows: s
                .db
                .history
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    s.db.history_columns
                        .iter()
                        .map(|c| history_value(h, i + 1, &c.name))
                        .collect()
                })
                .collect(),
        },
        Table::Created(key) => View {
            columns: s.db.tables[key]
                .iter()
                .map(|c| (c.name.clone(), ColType::NVarChar))
                .collect(),
            rows: Vec::new(),
        },
        Table::BackupSet => View {
            columns: cols(&[
                ("backup_set_id", ColType::Int),
                ("media_set_id", ColType::Int),
                ("database_name", ColType::NVarChar),
                ("description", ColType::NVarChar),
                ("name", ColType::NVarChar),
                ("type", ColType::NVarChar),
                ("is_copy_only", ColType::Bit),
                ("has_backup_checksums", ColType::Bit),
            ]),
            rows: s
                .backups
                .values()
                .map(|f| {
                    vec![
                        SqlValue::Int(f.backup_set_id),
                        SqlValue::Int(f.backup_set_id),
                        SqlValue::NVarChar(f.database.clone()),
                        SqlValue::NVarChar(f.description.clone()),
                        SqlValue::Null,
                        SqlValue::NVarChar("D".into()),
                        SqlValue::Bit(true),
                        SqlValue::Bit(f.checksums),
                    ]
                })
                .collect(),
        },
        Table::MediaFamily => View {
            columns: cols(&[
                ("media_set_id", ColType::Int),
                ("physical_device_name", ColType::NVarChar),
            ]),
            rows: s
                .backups
                .iter()
                .map(|(path, f)| {
                    vec![
                        SqlValue::Int(f.backup_set_id),
                        SqlValue::NVarChar(path.clone()),
                    ]
                })
                .collect(),
        },
        Table::Jobs => View {
            columns: cols(&[
                ("job_id", ColType::NVarChar),
                ("name", ColType::NVarChar),
                ("enabled", ColType::Int),
            ]),
            rows: s
                .agent_jobs
                .iter()
                .map(|j| {
                    vec![
                        SqlValue::NVarChar(j.job_id.clone()),
                        SqlValue::NVarChar(j.name.clone()),
                        SqlValue::Int(1),
                    ]
                })
                .collect(),
        },
        Table::JobSteps => View {
            columns: cols(&[
                ("job_id", ColType::NVarChar),
                ("step_id", ColType::Int),
                ("step_name", ColType::NVarChar),
                ("command", ColType::NVarChar),
            ]),
            rows: s
                .agent_jobs
                .iter()
                .map(|j| {
                    vec![
                        SqlValue::NVarChar(j.job_id.clone()),
                        SqlValue::Int(1),
                        SqlValue::NVarChar("step 1".into()),
                        SqlValue::NVarChar(j.command.clone()),
                    ]
                })
                .collect(),
        },
    }
}

// ---- SELECT ----

/// A table in a FROM clause: its alias (or name) and view.
struct Source {
    alias: String,
    view: View,
}

/// A column reference, resolved: (source index, column index).
type ColRef = (usize, usize);

fn invalid_column(name: &str) -> Message {
    Message::error(207, format!("Invalid column name '{name}'."))
}

/// Reads `[alias.]column` and resolves it against the sources.
fn column(c: &mut Cur<'_>, sources: &[Source]) -> Result<ColRef, Message> {
    let parts = c.name()?;
    let (qualifier, col) = match parts.as_slice() {
        [col] => (None, col),
        [q, col] => (Some(q), col),
        _ => return Err(syntax_error(&parts.join("."))),
    };
    let mut found = Vec::new();
    for (i, src) in sources.iter().enumerate() {
        if let Some(q) = qualifier
            && !q.eq_ignore_ascii_case(&src.alias)
        {
            continue;
        }
        if let Some(j) = src
            .view
            .columns
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(col))
        {
            found.push((i, j));
        }
    }
    if let Some(q) = qualifier
        && !sources.iter().any(|s| s.alias.eq_ignore_ascii_case(q))
    {
        return Err(Message::error(
            4104,
            format!("The multi-part identifier \"{q}.{col}\" could not be bound."),
        ));
    }
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(invalid_column(col)),
        _ => Err(Message::error(
            209,
            format!("Ambiguous column name '{col}'."),
        )),
    }
}

/// A select-list item: what it reads and its type.
enum Item {
    Column(ColRef),
    Value(SqlValue),
}

fn select(s: &TmState, b: &Batch, c: &mut Cur<'_>) -> R<Flow> {
    let mut top = None;
    if c.kw("TOP") {
        top = Some(if c.op("(") {
            let n = c.int()?;
            c.expect_op(")")?;
            n
        } else {
            c.int()?
        });
    }
    // The select list runs up to FROM (outside parentheses).
    let start = c.rest();
    let mut depth = 0;
    let mut len = 0;
    while let Some(t) = start.get(len) {
        if t.is_op("(") {
            depth += 1;
        } else if t.is_op(")") {
            depth -= 1;
        } else if depth == 0 && t.is_kw("FROM") {
            break;
        }
        len += 1;
    }
    let list = &start[..len];
    for _ in 0..len {
        c.next();
    }
    let mut sources = Vec::new();
    let mut conditions: Vec<Vec<Tok>> = Vec::new();
    if c.kw("FROM") {
        sources.push(source(s, b, c)?);
        loop {
            let inner = c.kw("INNER");
            if !c.kw("JOIN") {
                if inner {
                    return Err(c.error().into());
                }
                break;
            }
            sources.push(source(s, b, c)?);
            c.expect_kw("ON")?;
            conditions.push(until_clause(c));
        }
        if c.kw("WHERE") {
            conditions.push(until_clause(c));
        }
    }
    let mut order_by: Vec<(ColRef, bool)> = Vec::new();
    if c.kw("ORDER") {
        c.expect_kw("BY")?;
        loop {
            let col = column(c, &sources)?;
            let desc = c.kw("DESC");
            if !desc {
                c.kw("ASC");
            }
            order_by.push((col, desc));
            if !c.op(",") {
                break;
            }
        }
    }
    c.expect_end()?;

    // The select list.
    let mut items: Vec<(String, Item)> = Vec::new();
    for part in comma_list(list) {
        let mut p = Cur::new(part);
        let item = if p.kw("CONVERT") {
            p.expect_op("(")?;
            let Some(Tok::Word(ty)) = p.next() else {
                return Err(p.error().into());
            };
            check_type(ty)?;
            if p.op("(") {
                p.parenthesised()?;
            }
            p.expect_op(",")?;
            let col = column(&mut p, &sources)?;
            p.expect_op(")")?;
            Item::Column(col)
        } else if !sources.is_empty()
            && matches!(p.peek(), Some(Tok::Word(_) | Tok::Ident(_)))
            && !p.peek_at(1).is_some_and(|t| t.is_op("("))
        {
            Item::Column(column(&mut p, &sources)?)
        } else {
            Item::Value(expr(s, b, &mut p)?)
        };
        let alias = if p.kw("AS") {
            match p.next().and_then(Tok::name_part) {
                Some(a) => a.to_string(),
                None => return Err(p.error().into()),
            }
        } else if let Some(a) = p.peek().and_then(Tok::name_part) {
            p.next();
            a.to_string()
        } else {
            match &item {
                Item::Column((i, j)) => sources[*i].view.columns[*j].0.clone(),
                Item::Value(_) => String::new(),
            }
        };
        p.expect_end()?;
        items.push((alias, item));
    }
    if items.is_empty() {
        return Err(c.error().into());
    }

    // The rows: every combination of the sources' rows that meets the
    // conditions.
    let mut rows: Vec<Vec<&Vec<SqlValue>>> = vec![Vec::new()];
    for src in &sources {
        let mut next = Vec::new();
        for r in &rows {
            for row in &src.view.rows {
                let mut r = r.clone();
                r.push(row);
                next.push(r);
            }
        }
        rows = next;
    }
    // Names are bound whether or not there are rows (SQL Server checks
    // them when it compiles the statement).
    let nulls: Vec<Vec<SqlValue>> = sources
        .iter()
        .map(|src| vec![SqlValue::Null; src.view.columns.len()])
        .collect();
    let null_row: Vec<&Vec<SqlValue>> = nulls.iter().collect();
    for cond in &conditions {
        conjunction(s, b, cond, &sources, &null_row)?;
    }
    let mut kept = Vec::new();
    for r in rows {
        let mut ok = true;
        for cond in &conditions {
            if !conjunction(s, b, cond, &sources, &r)? {
                ok = false;
                break;
            }
        }
        if ok {
            kept.push(r);
        }
    }
    if !order_by.is_empty() {
        kept.sort_by(|x, y| {
            for ((i, j), desc) in &order_by {
                let o = order(&x[*i][*j], &y[*i][*j]);
                let o = if *desc { o.reverse() } else { o };
                if !o.is_eq() {
                    return o;
                }
            }
            std::cmp::Ordering::Equal
        });
    }
    if let Some(n) = top {
        kept.truncate(n.max(0) as usize);
    }
    let columns: Vec<(String, ColType)> = items
        .iter()
        .map(|(name, item)| {
            let ty = match item {
                Item::Column((i, j)) => sources[*i].view.columns[*j].1,
                Item::Value(v) => col_type(v),
            };
            (name.clone(), ty)
        })
        .collect();
    let mut rs = ResultSet {
        columns,
        rows: Vec::new(),
    };
    if sources.is_empty() {
        rs.rows.push(
            items
                .iter()
                .map(|(_, i)| match i {
                    Item::Value(v) => v.clone(),
                    Item::Column(_) => SqlValue::Null,
                })
                .collect(),
        );
    } else {
        for r in kept {
            rs.rows.push(
                items
                    .iter()
                    .map(|(_, i)| match i {
                        Item::Column((si, ci)) => r[*si][*ci].clone(),
                        Item::Value(v) => v.clone(),
                    })
                    .collect(),
            );
        }
    }
    Ok(Flow::Go(vec![Action::Rows(rs)]))
}

fn source(s: &TmState, b: &Batch, c: &mut Cur<'_>) -> Result<Source, Message> {
    let parts = c.name()?;
    let t = table_of(s, b, &parts)?;
    let name = parts.last().cloned().unwrap_or_default();
    let alias = if c.kw("AS") {
        c.next()
            .and_then(Tok::name_part)
            .map(str::to_string)
            .ok_or_else(|| c.error())?
    } else if let Some(Tok::Word(w)) = c.peek()
        && !["JOIN", "INNER", "WHERE", "ORDER", "ON"]
            .iter()
            .any(|k| k.eq_ignore_ascii_case(w))
    {
        c.next();
        w.clone()
    } else {
        name
    };
    Ok(Source {
        alias,
        view: view(s, &t),
    })
}

/// The tokens of an ON or WHERE clause, up to the next clause keyword.
fn until_clause(c: &mut Cur<'_>) -> Vec<Tok> {
    let mut out = Vec::new();
    while let Some(t) = c.peek() {
        if ["JOIN", "INNER", "WHERE", "ORDER"]
            .iter()
            .any(|k| t.is_kw(k))
        {
            break;
        }
        out.push(t.clone());
        c.next();
    }
    out
}

/// `a = b AND c LIKE d AND e IS NULL ...` for one combination of rows.
fn conjunction(
    s: &TmState,
    b: &Batch,
    toks: &[Tok],
    sources: &[Source],
    row: &[&Vec<SqlValue>],
) -> Result<bool, Message> {
    let mut c = Cur::new(toks);
    let mut all = true;
    loop {
        let operand = |c: &mut Cur<'_>| -> Result<SqlValue, Message> {
            if matches!(c.peek(), Some(Tok::Word(_) | Tok::Ident(_)))
                && !c.peek().is_some_and(|t| t.is_kw("NULL"))
            {
                let (i, j) = column(c, sources)?;
                Ok(row[i][j].clone())
            } else {
                expr(s, b, c)
            }
        };
        let left = operand(&mut c)?;
        let ok = if c.kw("IS") {
            let not = c.kw("NOT");
            c.expect_kw("NULL")?;
            (left == SqlValue::Null) != not
        } else if c.kw("LIKE") {
            let pattern = operand(&mut c)?;
            like(&text_of(&left), &text_of(&pattern))
        } else {
            let op = match c.next() {
                Some(Tok::Op(o)) => o.clone(),
                Some(t) => return Err(syntax_error(&t.near())),
                None => return Err(c.error()),
            };
            let right = operand(&mut c)?;
            compare_op(&left, &op, &right)
        };
        all &= ok;
        if c.done() {
            return Ok(all);
        }
        if !c.kw("AND") {
            return Err(c.error());
        }
    }
}

// ---- INSERT ----

fn insert(
    shared: &Arc<Mutex<TmState>>,
    s: &mut TmState,
    b: &mut Batch,
    c: &mut Cur<'_>,
) -> R<Flow> {
    c.kw("INTO");
    let parts = c.name()?;
    let t = table_of(s, b, &parts)?;
    let table_columns: Vec<Column> = match &t {
        Table::Version => vec![
            Column::new("Id", true, true, false),
            Column::new("Version", true, false, false),
            Column::new("AppliedAt", true, false, true),
        ],
        Table::History => s.db.history_columns.clone(),
        Table::Created(key) => s.db.tables[key].clone(),
        _ => {
            return Err(Message::error(
                229,
                format!(
                    "The INSERT permission was denied on the object '{}'. ({}: msdb tables are read-only here)",
                    parts.last().cloned().unwrap_or_default(),
                    super::STANDIN_NAME
                ),
            )
            .into());
        }
    };
    let columns: Vec<String> = if c.op("(") {
        let list = c.parenthesised()?;
        let mut out = Vec::new();
        for part in comma_list(list) {
            let mut p = Cur::new(part);
            let n = p.name()?;
            p.expect_end()?;
            let [n] = n.as_slice() else {
                return Err(syntax_error(&n.join(".")).into());
            };
            let Some(col) = table_columns
                .iter()
                .find(|x| x.name.eq_ignore_ascii_case(n))
            else {
                return Err(invalid_column(n).into());
            };
            out.push(col.name.clone());
        }
        out
    } else {
        table_columns
            .iter()
            .filter(|x| !x.identity)
            .map(|x| x.name.clone())
            .collect()
    };
    c.expect_kw("VALUES")?;
    let mut rows = Vec::new();
    loop {
        c.expect_op("(")?;
        let list = c.parenthesised()?;
        let values = comma_list(list);
        if values.len() < columns.len() {
            return Err(Message::error(
                109,
                "There are more columns in the INSERT statement than values specified in the VALUES clause. The number of values in the VALUES clause must match the number of columns specified in the INSERT statement.",
            )
            .into());
        }
        if values.len() > columns.len() {
            return Err(Message::error(
                110,
                "There are fewer columns in the INSERT statement than values specified in the VALUES clause. The number of values in the VALUES clause must match the number of columns specified in the INSERT statement.",
            )
            .into());
        }
        let mut row = BTreeMap::new();
        for (col, v) in columns.iter().zip(values) {
            let mut p = Cur::new(v);
            let value = expr(s, b, &mut p)?;
            p.expect_end()?;
            row.insert(col.to_lowercase(), value);
        }
        for col in &table_columns {
            let v = row.get(&col.name.to_lowercase());
            if col.not_null
                && !col.identity
                && !col.default
                && v.is_none_or(|v| *v == SqlValue::Null)
            {
                return Err(Message::error(
                    515,
                    format!(
                        "Cannot insert the value NULL into column '{}', table '{}.{}'; column does not allow nulls. INSERT fails.",
                        col.name,
                        s.database,
                        parts.join(".")
                    ),
                )
                .into());
            }
        }
        rows.push(row);
        if !c.op(",") {
            break;
        }
    }
    c.expect_end()?;
    let n = rows.len() as u64;
    match t {
        Table::Version => {
            // Only if the reply gets this far (an attention before it
            // cancels the insert).
            let Some(v) = rows.last().and_then(|r| r.get("version")).map(text_of) else {
                return Ok(done(n));
            };
            let st = shared.clone();
            Ok(Flow::Go(vec![
                Action::Effect(Box::new(move || {
                    st.lock().expect("poisoned").db.version = v;
                })),
                Action::Done { rows_affected: n },
            ]))
        }
        Table::History => {
            for r in rows {
                let get = |k: &str| r.get(k).cloned().unwrap_or(SqlValue::Null);
                s.db.history.push(HistoryRow {
                    version: text_of(&get("version")),
                    script: text_of(&get("script")),
                    checksum: text_of(&get("checksum")),
                    run_id: text_of(&get("run_id")),
                    execution_ms: get("execution_ms").as_i64().unwrap_or(0),
                    success: match get("success") {
                        SqlValue::Bit(x) => x,
                        v => v.as_i64() == Some(1),
                    },
                    applied_by: text_of(&get("applied_by")),
                    applied_at: match get("applied_at") {
                        SqlValue::DateTime2(d) => d,
                        _ => chrono::Utc::now().naive_utc(),
                    },
                });
            }
            Ok(done(n))
        }
        _ => Ok(done(n)),
    }
}

// ---- DDL ----

/// Statements SQL Server only takes as the first of a batch.
fn first_in_batch(b: &Batch, what: &str) -> Result<(), Message> {
    if b.index == 0 {
        Ok(())
    } else {
        Err(Message::error(
            111,
            format!("'{what}' must be the first statement in a query batch."),
        ))
    }
}

fn create(s: &mut TmState, b: &mut Batch, c: &mut Cur<'_>) -> R<Flow> {
    let Some(Tok::Word(what)) = c.next() else {
        return Err(c.error().into());
    };
    match what.to_ascii_uppercase().as_str() {
        "SCHEMA" => {
            first_in_batch(b, "CREATE SCHEMA")?;
            let name = c.name()?;
            let [name] = name.as_slice() else {
                return Err(syntax_error(&name.join(".")).into());
            };
            if c.kw("AUTHORIZATION") {
                c.name()?;
            }
            c.expect_end()?;
            if schema_exists(s, name) {
                return Err(Message::error(
                    2714,
                    format!("There is already an object named '{name}' in the database."),
                )
                .into());
            }
            s.db.schemas.insert(name.to_lowercase());
            Ok(Flow::Go(Vec::new()))
        }
        "TABLE" => {
            let parts = c.name()?;
            let (schema, name) = match parts.as_slice() {
                [n] => ("dbo".to_string(), n.clone()),
                [sc, n] => (sc.clone(), n.clone()),
                _ => return Err(syntax_error(&parts.join(".")).into()),
            };
            if !in_tm_db(s, b) {
                return Err(Message::error(
                    262,
                    format!(
                        "CREATE TABLE permission denied in database '{}'. ({}: only the TM database is modelled)",
                        b.req.database,
                        super::STANDIN_NAME
                    ),
                )
                .into());
            }
            if !schema_exists(s, &schema) {
                return Err(Message::error(
                    2760,
                    format!(
                        "The specified schema name \"{schema}\" either does not exist or you do not have permission to use it."
                    ),
                )
                .into());
            }
            if resolve(s, b, &parts).is_some() {
                return Err(Message::error(
                    2714,
                    format!("There is already an object named '{name}' in the database."),
                )
                .into());
            }
            c.expect_op("(")?;
            let body = c.parenthesised()?;
            c.expect_end()?;
            let columns = column_definitions(body)?;
            if schema.eq_ignore_ascii_case("upshift") && name.eq_ignore_ascii_case("schema_history")
            {
                s.db.history_exists = true;
                s.db.history_columns = columns;
            } else {
                s.db.tables.insert(
                    format!("{}.{}", schema.to_lowercase(), name.to_lowercase()),
                    columns,
                );
            }
            Ok(Flow::Go(Vec::new()))
        }
        w @ ("UNIQUE" | "CLUSTERED" | "NONCLUSTERED" | "INDEX") => {
            while w != "INDEX" && !c.kw("INDEX") {
                if c.next().is_none() {
                    return Err(c.error().into());
                }
            }
            c.name()?;
            c.expect_kw("ON")?;
            let parts = c.name()?;
            if resolve(s, b, &parts).is_none() {
                return Err(Message::error(
                    1088,
                    format!(
                        "Cannot find the object \"{}\" because it does not exist or you do not have permissions.",
                        parts.join(".")
                    ),
                )
                .into());
            }
            c.expect_op("(")?;
            Ok(Flow::Go(Vec::new()))
        }
        w @ ("VIEW" | "PROCEDURE" | "PROC" | "FUNCTION" | "TRIGGER") => {
            first_in_batch(b, &format!("CREATE {w}"))?;
            let parts = c.name()?;
            if w.starts_with("PROC") {
                s.procedures
                    .insert(parts.last().cloned().unwrap_or_default().to_lowercase());
            }
            Ok(Flow::Go(Vec::new()))
        }
        other => Err(syntax_error(other).into()),
    }
}

/// The columns of a CREATE TABLE body.
fn column_definitions(body: &[Tok]) -> Result<Vec<Column>, Message> {
    let mut out = Vec::new();
    for part in comma_list(body) {
        let Some(first) = part.first() else {
            return Err(syntax_error(","));
        };
        if [
            "CONSTRAINT",
            "PRIMARY",
            "UNIQUE",
            "FOREIGN",
            "CHECK",
            "INDEX",
        ]
        .iter()
        .any(|k| first.is_kw(k))
        {
            continue;
        }
        let Some(name) = first.name_part() else {
            return Err(syntax_error(&first.near()));
        };
        let Some(Tok::Word(ty)) = part.get(1) else {
            return Err(syntax_error(name));
        };
        check_type(ty)?;
        let words: Vec<&Tok> = part[2..].iter().collect();
        let has = |k: &str| words.iter().any(|t| t.is_kw(k));
        let not_null = words
            .windows(2)
            .any(|w| w[0].is_kw("NOT") && w[1].is_kw("NULL"))
            || has("PRIMARY");
        out.push(Column::new(name, not_null, has("IDENTITY"), has("DEFAULT")));
    }
    Ok(out)
}

fn alter(s: &mut TmState, b: &mut Batch, c: &mut Cur<'_>) -> R<Flow> {
    if c.kw("TABLE") {
        let parts = c.name()?;
        let Some(t) = resolve(s, b, &parts) else {
            return Err(Message::error(
                4902,
                format!(
                    "Cannot find the object \"{}\" because it does not exist or you do not have permissions.",
                    parts.join(".")
                ),
            )
            .into());
        };
        if c.kw("ADD")
            && let Table::Created(key) = t
        {
            let rest = c.rest().to_vec();
            let columns = column_definitions(&rest)?;
            s.db.tables.entry(key).or_default().extend(columns);
        }
        return Ok(Flow::Go(Vec::new()));
    }
    c.expect_kw("DATABASE")?;
    let db = c.name()?;
    let [db] = db.as_slice() else {
        return Err(syntax_error(&db.join(".")).into());
    };
    if !db.eq_ignore_ascii_case(&s.database) {
        return Err(Message::error(
            5011,
            format!(
                "User does not have permission to alter database '{db}', the database does not exist, or the database is not in a state that allows access checks."
            ),
        )
        .severity(14, 5)
        .into());
    }
    c.expect_kw("SET")?;
    let single = if c.kw("SINGLE_USER") {
        true
    } else if c.kw("MULTI_USER") {
        false
    } else {
        return Err(c.error().into());
    };
    if c.kw("WITH") {
        if c.kw("ROLLBACK") {
            if !c.kw("IMMEDIATE") {
                c.expect_kw("AFTER")?;
                c.int()?;
                c.kw("SECONDS");
            }
        } else {
            c.expect_kw("NO_WAIT")?;
        }
    }
    c.expect_end()?;
    if single {
        s.single_user = true;
    } else {
        s.single_user = false;
        s.single_user_taken = false;
    }
    Ok(Flow::Go(Vec::new()))
}

fn drop_table(s: &mut TmState, b: &mut Batch, c: &mut Cur<'_>) -> R<Flow> {
    c.expect_kw("TABLE")?;
    let if_exists = c.kw("IF");
    if if_exists {
        c.expect_kw("EXISTS")?;
    }
    let parts = c.name()?;
    c.expect_end()?;
    match resolve(s, b, &parts) {
        Some(Table::History) => {
            s.db.history_exists = false;
            s.db.history.clear();
            s.db.history_columns.clear();
        }
        Some(Table::Created(key)) => {
            s.db.tables.remove(&key);
        }
        Some(_) | None if if_exists => {}
        _ => {
            return Err(Message::error(
                3701,
                format!(
                    "Cannot drop the table '{}', because it does not exist or you do not have permission.",
                    parts.join(".")
                ),
            )
            .severity(11, 5)
            .into());
        }
    }
    Ok(Flow::Go(Vec::new()))
}

// ---- BACKUP / RESTORE ----

/// The options after WITH, as read.
#[derive(Default)]
struct Options {
    checksum: bool,
    stats: Option<u32>,
    description: Option<String>,
}

fn options(b: &Batch, c: &mut Cur<'_>, statement: &str, restore: bool) -> R<Options> {
    let mut o = Options::default();
    if !c.kw("WITH") {
        c.expect_end()?;
        return Ok(o);
    }
    const FLAGS_BACKUP: &[&str] = &[
        "COPY_ONLY",
        "NO_CHECKSUM",
        "INIT",
        "NOINIT",
        "FORMAT",
        "NOFORMAT",
        "SKIP",
        "NOSKIP",
        "COMPRESSION",
        "NO_COMPRESSION",
        "CONTINUE_AFTER_ERROR",
        "STOP_ON_ERROR",
        "NOREWIND",
        "NOUNLOAD",
    ];
    const FLAGS_RESTORE: &[&str] = &[
        "REPLACE",
        "NO_CHECKSUM",
        "RECOVERY",
        "NORECOVERY",
        "CONTINUE_AFTER_ERROR",
        "STOP_ON_ERROR",
        "LOADHISTORY",
        "RESTRICTED_USER",
        "NOREWIND",
        "NOUNLOAD",
    ];
    let flags = if restore { FLAGS_RESTORE } else { FLAGS_BACKUP };
    loop {
        let Some(Tok::Word(w)) = c.next() else {
            return Err(c.error().into());
        };
        let up = w.to_ascii_uppercase();
        let text_value = |c: &mut Cur<'_>| -> R<String> {
            c.expect_op("=")?;
            match c.next() {
                Some(Tok::Str(t)) => Ok(t.clone()),
                Some(Tok::Var(v)) => Ok(text_of(&variable(b, v)?)),
                _ => Err(c.error().into()),
            }
        };
        match up.as_str() {
            "CHECKSUM" => o.checksum = true,
            "STATS" => {
                o.stats = Some(if c.op("=") {
                    c.int()?.clamp(1, 100) as u32
                } else {
                    10
                });
            }
            "DESCRIPTION" if !restore => o.description = Some(text_value(c)?),
            "NAME" | "MEDIANAME" if !restore => {
                text_value(c)?;
            }
            "FILE" | "BUFFERCOUNT" | "MAXTRANSFERSIZE" | "BLOCKSIZE" => {
                c.expect_op("=")?;
                c.int()?;
            }
            "MOVE" if restore => {
                c.string()?;
                c.expect_kw("TO")?;
                c.string()?;
            }
            f if flags.contains(&f) => {}
            _ => {
                return Err(Message::error(
                    155,
                    format!("'{w}' is not a recognized {statement} option."),
                )
                .severity(15, 1)
                .into());
            }
        }
        if !c.op(",") {
            break;
        }
    }
    c.expect_end()?;
    Ok(o)
}

fn stats(actions: &mut Vec<Action>, step: Option<u32>, delay: Duration) {
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

fn terminating(verb: &str) -> Message {
    Message::error(3013, format!("{verb} is terminating abnormally."))
}

fn missing_file(path: &str, verb: &str) -> Fail {
    Fail(vec![
        Message::error(
            3201,
            format!(
                "Cannot open backup device '{path}'. Operating system error 2(The system cannot find the file specified.)."
            ),
        ),
        terminating(verb),
    ])
}

fn disk(c: &mut Cur<'_>) -> R<String> {
    c.expect_kw("DISK")?;
    c.expect_op("=")?;
    Ok(c.string()?)
}

fn backup(
    shared: &Arc<Mutex<TmState>>,
    s: &mut TmState,
    b: &mut Batch,
    c: &mut Cur<'_>,
) -> R<Flow> {
    c.expect_kw("DATABASE")?;
    let db = c.name()?;
    let [db] = db.as_slice() else {
        return Err(syntax_error(&db.join(".")).into());
    };
    c.expect_kw("TO")?;
    let path = disk(c)?;
    let o = options(b, c, "BACKUP", false)?;
    if !db.eq_ignore_ascii_case(&s.database) {
        return Err(Fail(vec![
            Message::error(
                911,
                format!(
                    "Database '{db}' does not exist. Make sure that the name is entered correctly."
                ),
            ),
            terminating("BACKUP DATABASE"),
        ]));
    }
    let description = o.description.unwrap_or_default();
    if description.encode_utf16().count() > DESCRIPTION_MAX_UNITS {
        return Err(Fail(vec![
            Message::error(
                50000,
                format!(
                    "{}: DESCRIPTION is {} characters long; SQL Server takes at most {DESCRIPTION_MAX_UNITS} (the exact error it gives is not modelled).",
                    super::STANDIN_NAME,
                    description.encode_utf16().count()
                ),
            ),
            terminating("BACKUP DATABASE"),
        ]));
    }
    let mut actions = Vec::new();
    stats(&mut actions, o.stats, s.stats_delay);
    let id = s.next_backup_set_id;
    s.next_backup_set_id += 1;
    let file = BackupFile {
        database: s.database.clone(),
        description,
        backup_set_id: id,
        content: s.db.clone(),
        valid: true,
        checksums: o.checksum,
    };
    let st = shared.clone();
    actions.push(Action::Effect(Box::new(move || {
        st.lock().expect("poisoned").backups.insert(path, file);
    })));
    actions.push(Action::Info(Message::info(
        3014,
        format!(
            "BACKUP DATABASE successfully processed 1234 pages in 0.100 seconds (96.4 MB/sec). [{db}]"
        ),
    )));
    actions.push(Action::Done { rows_affected: 0 });
    Ok(Flow::Go(actions))
}

fn restore(
    shared: &Arc<Mutex<TmState>>,
    s: &mut TmState,
    b: &mut Batch,
    c: &mut Cur<'_>,
) -> R<Flow> {
    if c.kw("VERIFYONLY") {
        c.expect_kw("FROM")?;
        let path = disk(c)?;
        let o = options(b, c, "RESTORE", true)?;
        let verb = "VERIFY DATABASE";
        return match s.backups.get(&path) {
            None => Err(missing_file(&path, verb)),
            Some(f) if o.checksum && !f.checksums => Err(Fail(vec![
                Message::error(
                    3187,
                    "RESTORE WITH CHECKSUM cannot be specified because the backup set does not contain checksum information.",
                ),
                terminating(verb),
            ])),
            Some(f) if f.valid => Ok(Flow::Go(vec![
                Action::Info(Message::info(3262, "The backup set on file 1 is valid.")),
                Action::Done { rows_affected: 0 },
            ])),
            Some(_) => Err(Fail(vec![
                Message::error(3189, "Damage to the backup set was detected."),
                terminating(verb),
            ])),
        };
    }
    c.expect_kw("DATABASE")?;
    let db = c.name()?;
    let [db] = db.as_slice() else {
        return Err(syntax_error(&db.join(".")).into());
    };
    c.expect_kw("FROM")?;
    let path = disk(c)?;
    let o = options(b, c, "RESTORE", true)?;
    let verb = "RESTORE DATABASE";
    if !db.eq_ignore_ascii_case(&s.database) {
        return Err(Fail(vec![
            Message::error(
                3154,
                format!(
                    "{}: only the database {} is modelled, not {db}.",
                    super::STANDIN_NAME,
                    s.database
                ),
            ),
            terminating(verb),
        ]));
    }
    if b.req.database.eq_ignore_ascii_case(db) {
        return Err(Fail(vec![
            Message::error(
                3102,
                format!(
                    "RESTORE cannot process database '{db}' because it is in use by this session. It is recommended that the master database be used when performing this operation."
                ),
            ),
            terminating(verb),
        ]));
    }
    if s.single_user && s.single_user_taken {
        return Err(Fail(vec![
            Message::error(
                3101,
                "Exclusive access could not be obtained because the database is in use.",
            ),
            terminating(verb),
        ]));
    }
    let Some(file) = s.backups.get(&path).cloned() else {
        return Err(missing_file(&path, verb));
    };
    if o.checksum && !file.checksums {
        return Err(Fail(vec![
            Message::error(
                3187,
                "RESTORE WITH CHECKSUM cannot be specified because the backup set does not contain checksum information.",
            ),
            terminating(verb),
        ]));
    }
    let mut actions = Vec::new();
    stats(&mut actions, o.stats, s.stats_delay);
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
    Ok(Flow::Go(actions))
}

// ---- EXEC ----

/// A procedure the model knows: its parameters (required ones first
/// marked) — `None` takes any arguments.
fn signature(proc: &str) -> Option<&'static [(&'static str, bool)]> {
    match proc {
        "sp_getapplock" => Some(&[
            ("@Resource", true),
            ("@LockMode", true),
            ("@LockOwner", false),
            ("@LockTimeout", false),
            ("@DbPrincipal", false),
        ]),
        "sp_releaseapplock" => Some(&[
            ("@Resource", true),
            ("@LockOwner", false),
            ("@DbPrincipal", false),
        ]),
        "sp_delete_job" => Some(&[
            ("@job_id", false),
            ("@job_name", false),
            ("@originating_server", false),
            ("@delete_history", false),
            ("@delete_unused_schedule", false),
        ]),
        _ => None,
    }
}

fn exec(shared: &Arc<Mutex<TmState>>, s: &mut TmState, b: &mut Batch, c: &mut Cur<'_>) -> R<Flow> {
    // EXEC (N'...'): a nested batch.
    if c.op("(") {
        let inner = c.parenthesised()?;
        c.expect_end()?;
        let text = match inner {
            [Tok::Str(t)] => t.clone(),
            [Tok::Var(v)] => text_of(&variable(b, v)?),
            _ => return Err(syntax_error("(").into()),
        };
        let toks = tsql::tokens(&text)?;
        let mut nested = Batch::new(b.req.clone(), tsql::statements(toks));
        let mut actions = Vec::new();
        while let Some(stmt) = nested.stmts.pop_front() {
            match statement(shared, s, &mut nested, &stmt)? {
                Flow::Go(a) => {
                    nested.index += 1;
                    actions.extend(a);
                }
                Flow::Wait { .. } => {
                    return Err(syntax_error(&text).into());
                }
            }
        }
        return Ok(Flow::Go(actions));
    }
    let ret = match c.peek() {
        Some(Tok::Var(v)) if c.peek_at(1).is_some_and(|t| t.is_op("=")) => {
            let name = v.to_lowercase();
            if !b.vars.contains_key(&name) {
                return Err(undeclared(v).into());
            }
            c.next();
            c.next();
            Some(name)
        }
        _ => None,
    };
    let parts = c.name()?;
    let proc = parts.last().cloned().unwrap_or_default();
    let proc_l = proc.to_lowercase();
    let schema = if parts.len() >= 2 {
        parts[parts.len() - 2].to_lowercase()
    } else {
        String::new()
    };
    let db = if parts.len() >= 3 {
        parts[0].to_lowercase()
    } else {
        b.req.database.to_lowercase()
    };
    let known = match proc_l.as_str() {
        "sp_getapplock" | "sp_releaseapplock" | "sp_spaceused" => true,
        "xp_fixeddrives" => db == "master" && (schema.is_empty() || schema == "dbo"),
        "sp_delete_job" => db == "msdb" && (schema.is_empty() || schema == "dbo"),
        "usp_dataloader" => schema == "reporting" && db == s.database.to_lowercase(),
        "usp_cleanupreporting_dboschema" => schema == "mgt" && db == s.database.to_lowercase(),
        other => s.procedures.contains(other),
    };
    if !known {
        return Err(Message::error(
            2812,
            format!("Could not find stored procedure '{}'.", parts.join(".")),
        )
        .severity(16, 62)
        .into());
    }

    // Arguments: positional first, then @name = value.
    let mut args: Vec<(Option<String>, SqlValue)> = Vec::new();
    let rest = c.rest().to_vec();
    if !rest.is_empty() {
        for (i, part) in comma_list(&rest).into_iter().enumerate() {
            let mut p = Cur::new(part);
            let name = match (p.peek(), p.peek_at(1)) {
                (Some(Tok::Var(n)), Some(t)) if t.is_op("=") => {
                    p.next();
                    p.next();
                    Some(n.clone())
                }
                _ => None,
            };
            if name.is_none() && args.iter().any(|(n, _)| n.is_some()) {
                return Err(Message::error(
                    119,
                    format!(
                        "Must pass parameter number {} and subsequent parameters as '@name = value'. After the form '@name = value' has been used, all subsequent parameters must be passed in the form '@name = value'.",
                        i + 1
                    ),
                )
                .into());
            }
            let value = if p.kw("DEFAULT") {
                SqlValue::Null
            } else {
                literal_or_var(b, &mut p)?
            };
            p.kw("OUTPUT");
            p.expect_end()?;
            args.push((name, value));
        }
    }
    let mut named: BTreeMap<String, SqlValue> = BTreeMap::new();
    if let Some(sig) = signature(&proc_l) {
        for (i, (name, value)) in args.into_iter().enumerate() {
            let pname = match name {
                Some(n) => match sig.iter().find(|(p, _)| p.eq_ignore_ascii_case(&n)) {
                    Some((p, _)) => p.to_lowercase(),
                    None => {
                        return Err(Message::error(
                            8145,
                            format!("{n} is not a parameter for procedure {proc}."),
                        )
                        .into());
                    }
                },
                None => match sig.get(i) {
                    Some((p, _)) => p.to_lowercase(),
                    None => {
                        return Err(Message::error(
                            8144,
                            format!(
                                "Procedure or function {proc} has too many arguments specified."
                            ),
                        )
                        .into());
                    }
                },
            };
            if named.insert(pname.clone(), value).is_some() {
                return Err(Message::error(
                    8143,
                    format!("Parameter '{pname}' was supplied multiple times."),
                )
                .into());
            }
        }
        if let Some((missing, _)) = sig
            .iter()
            .find(|(p, req)| *req && !named.contains_key(&p.to_lowercase()))
        {
            return Err(Message::error(
                201,
                format!(
                    "Procedure or function '{proc}' expects parameter '{missing}', which was not supplied."
                ),
            )
            .severity(16, 4)
            .into());
        }
    } else if !args.is_empty() && !s.procedures.contains(&proc_l) {
        return Err(Message::error(
            8144,
            format!("Procedure or function {proc} has too many arguments specified."),
        )
        .into());
    }
    let arg = |k: &str| named.get(k).map(text_of).unwrap_or_default();

    let mut actions = Vec::new();
    let status: i32 = match proc_l.as_str() {
        "sp_getapplock" => {
            const MODES: &[&str] = &[
                "Shared",
                "Update",
                "IntentShared",
                "IntentExclusive",
                "Exclusive",
            ];
            let mode = arg("@lockmode");
            if !MODES.iter().any(|m| m.eq_ignore_ascii_case(&mode)) {
                return Err(Message::error(
                    1206,
                    format!(
                        "{}: @LockMode '{mode}' is not one of {MODES:?}.",
                        super::STANDIN_NAME
                    ),
                )
                .into());
            }
            let owner = named
                .get("@lockowner")
                .map(text_of)
                .unwrap_or_else(|| "Transaction".into());
            if !["Transaction", "Session"]
                .iter()
                .any(|o| o.eq_ignore_ascii_case(&owner))
            {
                return Err(Message::error(
                    1206,
                    format!(
                        "{}: @LockOwner '{owner}' is not Transaction or Session.",
                        super::STANDIN_NAME
                    ),
                )
                .into());
            }
            let timeout_ms = named
                .get("@locktimeout")
                .and_then(SqlValue::as_i64)
                .unwrap_or(-1);
            let resource = arg("@resource").to_lowercase();
            match s.app_locks.get(&resource).copied() {
                None => {
                    s.app_locks.insert(resource, b.req.session);
                    if b.deadline.is_some() { 1 } else { 0 }
                }
                Some(owner) if owner == b.req.session => 0,
                Some(_) => {
                    let deadline = *b.deadline.get_or_insert_with(|| {
                        (timeout_ms >= 0)
                            .then(|| Instant::now() + Duration::from_millis(timeout_ms as u64))
                    });
                    if deadline.is_none_or(|d| Instant::now() < d) {
                        // Wait and look again (an attention ends the wait).
                        return Ok(Flow::Wait {
                            delay: LOCK_POLL,
                            then: None,
                        });
                    }
                    -1
                }
            }
        }
        "sp_releaseapplock" => {
            let resource = arg("@resource");
            if s.app_locks.get(&resource.to_lowercase()) == Some(&b.req.session) {
                s.app_locks.remove(&resource.to_lowercase());
                0
            } else {
                return Err(Message::error(
                    1223,
                    format!(
                        "Cannot release the application lock (Database Principal: 'public', Resource: '{resource}') because it is not currently held."
                    ),
                )
                .into());
            }
        }
        "sp_delete_job" => {
            let id = arg("@job_id");
            let name = arg("@job_name");
            if id.is_empty() && name.is_empty() {
                return Err(Message::error(
                    14294,
                    "Supply either @job_id or @job_name to identify the job.",
                )
                .into());
            }
            let before = s.agent_jobs.len();
            s.agent_jobs.retain(|j| {
                !(if id.is_empty() {
                    j.name.eq_ignore_ascii_case(&name)
                } else {
                    j.job_id.eq_ignore_ascii_case(&id)
                })
            });
            if s.agent_jobs.len() == before {
                return Err(Message::error(
                    14262,
                    format!(
                        "The specified {} ('{}') does not exist.",
                        if id.is_empty() {
                            "@job_name"
                        } else {
                            "@job_id"
                        },
                        if id.is_empty() { &name } else { &id }
                    ),
                )
                .into());
            }
            0
        }
        "sp_spaceused" => {
            // Two result sets, as SQL Server sends them (sizes as text).
            let size = if b.req.database.eq_ignore_ascii_case(&s.database) {
                s.database_bytes
            } else {
                8 * 1024 * 1024
            };
            let mb = |bytes: i64| format!("{:.2} MB", bytes as f64 / (1024.0 * 1024.0));
            let kb = |bytes: i64| format!("{} KB", bytes / 1024);
            actions.push(Action::Rows(
                ResultSet::new(&[
                    ("database_name", ColType::NVarChar),
                    ("database_size", ColType::NVarChar),
                    ("unallocated space", ColType::NVarChar),
                ])
                .row(vec![
                    SqlValue::NVarChar(b.req.database.clone()),
                    SqlValue::NVarChar(mb(size)),
                    SqlValue::NVarChar(mb(size / 4)),
                ]),
            ));
            actions.push(Action::Rows(
                ResultSet::new(&[
                    ("reserved", ColType::NVarChar),
                    ("data", ColType::NVarChar),
                    ("index_size", ColType::NVarChar),
                    ("unused", ColType::NVarChar),
                ])
                .row(vec![
                    SqlValue::NVarChar(kb(size / 2)),
                    SqlValue::NVarChar(kb(size / 3)),
                    SqlValue::NVarChar(kb(size / 8)),
                    SqlValue::NVarChar(kb(size / 24)),
                ]),
            ));
            0
        }
        "xp_fixeddrives" => {
            let mut rs = ResultSet::new(&[("drive", ColType::NVarChar), ("MB free", ColType::Int)]);
            for (d, mb) in &s.drives_free_mb {
                rs = rs.row(vec![
                    SqlValue::NVarChar(d.clone()),
                    SqlValue::Int(*mb as i32),
                ]);
            }
            actions.push(Action::Rows(rs));
            0
        }
        "usp_dataloader" => {
            s.data_loader_runs += 1;
            if !s.data_loader_delay.is_zero() {
                actions.push(Action::Delay(s.data_loader_delay));
            }
            0
        }
        _ => 0,
    };
    if let Some(r) = ret {
        b.vars.insert(r, SqlValue::Int(status));
    }
    actions.push(Action::Done { rows_affected: 0 });
    Ok(Flow::Go(actions))
}

/// Checks the names of an `EXEC sp_executesql @P1, @P2, @a = @P3, ...`
/// call: a name given twice, or one of sp_executesql's own (`@stmt`,
/// `@params`, which the first two positions already are), is error 8143.
pub(super) fn check_executesql_names(names: &[String]) -> Result<(), Message> {
    let mut seen = BTreeSet::from(["@stmt".to_string(), "@params".to_string()]);
    for n in names {
        if !seen.insert(n.to_lowercase()) {
            return Err(Message::error(
                8143,
                format!("Parameter '{n}' was supplied multiple times."),
            ));
        }
    }
    Ok(())
}
