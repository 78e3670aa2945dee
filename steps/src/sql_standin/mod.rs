//! A protocol-level **SQL Server stand-in** for tests and `upshift demo`.
//!
//! It is not SQL Server. It is a TCP server on 127.0.0.1 that speaks enough
//! TDS 7.4 for the real tiberius driver: PRELOGIN (without encryption:
//! connect with `encrypt = "none"`), LOGIN7, SQL batches, RPC calls
//! (`sp_executesql`, which tiberius uses for `query`/`execute`), attention
//! (cancel) answered with `DONE_ATTN`, and the tokens a client needs: DONE /
//! DONEPROC / DONEINPROC, ERROR, INFO, ENVCHANGE (database, packet size,
//! collation), LOGINACK, COLMETADATA and ROW with int, bigint, nvarchar,
//! varbinary, datetime2 and bit columns.
//!
//! What a request *means* is up to a [`StandinHandler`]: a closure or type
//! that gets each batch or RPC (text and parameters) and answers with a list
//! of [`Action`]s: result sets, row counts, errors, info messages, delays
//! (which an attention interrupts), side effects, a dropped connection.
//! [`TmDatabaseModel`] is a ready-made handler: a small in-memory TeamManager
//! database (version, `upshift.schema_history`, application lock, SQL Agent
//! jobs, backup files) that understands the statements the `sql.*`/`db.*`
//! step kinds send and the demo update scripts under `plans/sql/`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use upshift_steps::sql_standin::{Action, Request, StandinServer};
//! let server = StandinServer::start(|_req: &Request| vec![Action::Done { rows_affected: 1 }])
//!     .await
//!     .unwrap();
//! assert!(server.addr().ip().is_loopback());
//! # }
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::NaiveDateTime;

mod server;
mod tm_exec;
mod tm_model;
mod tsql;
mod wire;

pub use tm_model::{AgentJob, BackupFile, Column, DbContent, HistoryRow, TmDatabaseModel, TmState};

/// The name the stand-in gives itself (LOGINACK program name, server name in
/// messages), so nobody mistakes it for a real server.
pub const STANDIN_NAME: &str = "upshift SQL Server stand-in";

/// A value in a parameter or a result row.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// NULL.
    Null,
    /// int (also smaller integers a client sent).
    Int(i32),
    /// bigint.
    BigInt(i64),
    /// nvarchar.
    NVarChar(String),
    /// varbinary.
    VarBinary(Vec<u8>),
    /// datetime2 (sent with scale 7).
    DateTime2(NaiveDateTime),
    /// bit.
    Bit(bool),
}

impl SqlValue {
    /// The text of an nvarchar, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            SqlValue::NVarChar(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an i64, if it is an integer.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            SqlValue::Int(i) => Some(*i as i64),
            SqlValue::BigInt(i) => Some(*i),
            _ => None,
        }
    }
}

/// A column type of a result set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColType {
    /// int (INTN, 4 bytes).
    Int,
    /// bigint (INTN, 8 bytes).
    BigInt,
    /// nvarchar(4000).
    NVarChar,
    /// varbinary(8000).
    VarBinary,
    /// datetime2(7).
    DateTime2,
    /// bit.
    Bit,
}

/// A result set: named, typed columns and rows of values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResultSet {
    /// Column names and types.
    pub columns: Vec<(String, ColType)>,
    /// Rows, each with one value per column.
    pub rows: Vec<Vec<SqlValue>>,
}

impl ResultSet {
    /// A result set with these columns and no rows yet.
    pub fn new(columns: &[(&str, ColType)]) -> ResultSet {
        ResultSet {
            columns: columns.iter().map(|(n, t)| (n.to_string(), *t)).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(mut self, values: Vec<SqlValue>) -> ResultSet {
        self.rows.push(values);
        self
    }
}

/// An ERROR or INFO message as SQL Server sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Error number (e.g. 1205 for a deadlock).
    pub number: u32,
    /// State.
    pub state: u8,
    /// Class (severity); 10 and below is informational.
    pub class: u8,
    /// Text.
    pub text: String,
    /// Procedure name, empty if none.
    pub procedure: String,
    /// Line number within the batch or procedure.
    pub line: u32,
}

impl Message {
    /// An error with severity 16, state 1, line 1.
    pub fn error(number: u32, text: impl Into<String>) -> Message {
        Message {
            number,
            state: 1,
            class: 16,
            text: text.into(),
            procedure: String::new(),
            line: 1,
        }
    }

    /// An informational message (severity 0), e.g. a `STATS` progress line.
    pub fn info(number: u32, text: impl Into<String>) -> Message {
        Message {
            class: 0,
            ..Message::error(number, text)
        }
    }

    /// The same message with a procedure and line.
    pub fn at(mut self, procedure: &str, line: u32) -> Message {
        self.procedure = procedure.to_string();
        self.line = line;
        self
    }

    /// The same message with another severity and state.
    pub fn severity(mut self, class: u8, state: u8) -> Message {
        self.class = class;
        self.state = state;
        self
    }

    /// The deadlock victim error, 1205.
    pub fn deadlock() -> Message {
        Message::error(
            1205,
            "Transaction (Process ID 51) was deadlocked on lock resources with another process and has been chosen as the deadlock victim. Rerun the transaction.",
        )
        .severity(13, 51)
    }
}

/// A side effect run when the server reaches it in a reply (not run when an
/// attention or a dropped connection ended the reply before).
pub type Effect = Box<dyn FnOnce() + Send>;

/// One thing the stand-in does in answer to a request, in order.
pub enum Action {
    /// A result set, then a DONE with its row count.
    Rows(ResultSet),
    /// A statement that affected this many rows.
    Done {
        /// Rows affected.
        rows_affected: u64,
    },
    /// An informational message (INFO token), e.g. "10 percent processed.".
    Info(Message),
    /// An error (ERROR token, then a DONE with the error bit).
    Error(Message),
    /// Sends what is pending, then waits; an attention from the client ends
    /// the reply here with `DONE_ATTN`.
    Delay(Duration),
    /// Runs a side effect (a model's state change) at this point.
    Effect(Effect),
    /// Closes the connection without another byte, as a crashed server or a
    /// cut network would.
    DropConnection,
    /// Computes more actions when the reply gets here (after a `Delay`, to
    /// look again at a lock another session holds); they are played next.
    Then(Box<dyn FnOnce() -> Vec<Action> + Send>),
}

impl fmt::Debug for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Rows(rs) => write!(f, "Rows({} rows)", rs.rows.len()),
            Action::Done { rows_affected } => write!(f, "Done({rows_affected})"),
            Action::Info(m) => write!(f, "Info({})", m.text),
            Action::Error(m) => write!(f, "Error({} {})", m.number, m.text),
            Action::Delay(d) => write!(f, "Delay({d:?})"),
            Action::Effect(_) => write!(f, "Effect"),
            Action::DropConnection => write!(f, "DropConnection"),
            Action::Then(_) => write!(f, "Then"),
        }
    }
}

/// What kind of request the client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    /// An SQL batch (tiberius `simple_query`).
    Batch,
    /// An RPC call; for `sp_executesql` the request's `text` is the statement
    /// and `params` the values bound to it.
    Rpc {
        /// The procedure called (`sp_executesql` for tiberius' `query`).
        procedure: String,
    },
}

/// One request as a handler sees it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The session (SPID) it came on.
    pub session: u16,
    /// Batch or RPC.
    pub kind: RequestKind,
    /// The SQL text (the batch, or `sp_executesql`'s statement).
    pub text: String,
    /// For `sp_executesql`, its parameter declaration (`@P1 int, ...`).
    pub declaration: String,
    /// Parameter values by name (`@P1`, ... for tiberius).
    pub params: Vec<(String, SqlValue)>,
    /// The login name.
    pub user: String,
    /// The session's database.
    pub database: String,
}

impl Request {
    /// A parameter by name.
    pub fn param(&self, name: &str) -> Option<&SqlValue> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

/// Scripts the stand-in's answers. Implemented for closures
/// `Fn(&Request) -> Vec<Action>`.
pub trait StandinHandler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(&self, request: &Request) -> Vec<Action>;
    /// A session ended (client closed, connection dropped): release what it
    /// held (locks, open transactions).
    fn disconnected(&self, _session: u16) {}
}

impl<F> StandinHandler for F
where
    F: Fn(&Request) -> Vec<Action> + Send + Sync + 'static,
{
    fn handle(&self, request: &Request) -> Vec<Action> {
        self(request)
    }
}

/// A login the stand-in accepted or refused (never with the password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRecord {
    /// The session id given.
    pub session: u16,
    /// Login name.
    pub user: String,
    /// Database asked for.
    pub database: String,
    /// Application name.
    pub app: String,
    /// Whether the login succeeded.
    pub accepted: bool,
}

/// Options of a stand-in server.
#[derive(Debug, Clone, Default)]
pub struct StandinOptions {
    /// If set, only this user with this password may log in; others get
    /// error 18456 like SQL Server. If unset, any SQL login is accepted.
    pub credentials: Option<(String, String)>,
}

/// What the server saw, for assertions.
#[derive(Debug, Default)]
pub(crate) struct Journal {
    pub logins: Mutex<Vec<LoginRecord>>,
    pub requests: Mutex<Vec<Request>>,
    pub attentions: AtomicUsize,
    pub connections: AtomicUsize,
}

/// A running stand-in. Dropping it stops accepting connections and closes
/// the open ones.
pub struct StandinServer {
    addr: SocketAddr,
    journal: Arc<Journal>,
    task: tokio::task::JoinHandle<()>,
}

impl StandinServer {
    /// Starts a stand-in on 127.0.0.1 with an ephemeral port, answering
    /// with `handler`, accepting any SQL login. Must be called inside a tokio
    /// runtime, which then serves the connections.
    pub async fn start(handler: impl StandinHandler) -> std::io::Result<StandinServer> {
        StandinServer::start_with(Arc::new(handler), StandinOptions::default()).await
    }

    /// Starts a stand-in with options and a shared handler.
    pub async fn start_with(
        handler: Arc<dyn StandinHandler>,
        options: StandinOptions,
    ) -> std::io::Result<StandinServer> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let journal = Arc::new(Journal::default());
        let task = tokio::spawn(server::accept_loop(
            listener,
            handler,
            Arc::new(options),
            journal.clone(),
        ));
        Ok(StandinServer {
            addr,
            journal,
            task,
        })
    }

    /// The address to connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port to connect to (host is 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A `connection` table for the `sql.*`/`db.*` kinds pointing at this
    /// stand-in (SQL auth, `encrypt = "none"`).
    pub fn connection_table(&self, database: &str, user: &str, password: &str) -> toml::Table {
        let mut t = toml::Table::new();
        t.insert("host".into(), "127.0.0.1".into());
        t.insert("port".into(), i64::from(self.port()).into());
        t.insert("database".into(), database.into());
        t.insert("auth".into(), "sql".into());
        t.insert("user".into(), user.into());
        t.insert("password".into(), password.into());
        t.insert("encrypt".into(), "none".into());
        t.insert("connect_timeout".into(), "5s".into());
        t
    }

    /// Logins seen so far.
    pub fn logins(&self) -> Vec<LoginRecord> {
        self.journal.logins.lock().expect("poisoned").clone()
    }

    /// Requests seen so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.journal.requests.lock().expect("poisoned").clone()
    }

    /// The texts of the requests seen so far.
    pub fn request_texts(&self) -> Vec<String> {
        self.requests().into_iter().map(|r| r.text).collect()
    }

    /// How many attention (cancel) signals arrived.
    pub fn attentions(&self) -> usize {
        self.journal.attentions.load(Ordering::SeqCst)
    }

    /// How many TCP connections were accepted.
    pub fn connections(&self) -> usize {
        self.journal.connections.load(Ordering::SeqCst)
    }
}

impl Drop for StandinServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
