//! The stand-in's TCP side: one task per connection, a reader task per
//! connection that turns packets into messages and notices attentions.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;

use super::wire::{self, Incoming, Tokens, WireError, done, packet_type};
use super::{
    Action, Journal, LoginRecord, Message, Request, RequestKind, STANDIN_NAME, SqlValue,
    StandinHandler, StandinOptions,
};

/// Largest message the stand-in accepts from a client (a guard, not a TDS
/// rule): 64 MiB.
const MESSAGE_MAX_BYTES: usize = 64 << 20;

pub(crate) async fn accept_loop(
    listener: TcpListener,
    handler: Arc<dyn StandinHandler>,
    options: Arc<StandinOptions>,
    journal: Arc<Journal>,
) {
    // Tasks live in the set: when this loop is aborted (server dropped), the
    // set is dropped and every connection closes with it.
    let mut tasks = JoinSet::new();
    let next_spid = Arc::new(AtomicU16::new(51));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(_) => continue,
        };
        journal.connections.fetch_add(1, Ordering::SeqCst);
        let spid = next_spid.fetch_add(1, Ordering::SeqCst);
        let (h, o, j) = (handler.clone(), options.clone(), journal.clone());
        tasks.spawn(async move {
            let _ = stream.set_nodelay(true);
            let (rd, wr) = stream.into_split();
            let session = Session::new(spid, wr, h, o, j);
            session.run(rd).await;
        });
        // Reap finished connections so the set does not grow without bound.
        while tasks.try_join_next().is_some() {}
    }
}

/// A message from the client: packet type and the payload of all its
/// packets.
struct ClientMessage {
    ty: u8,
    payload: Vec<u8>,
}

/// Reads packets, assembles messages, and raises the attention flag (an
/// attention can arrive while the session is busy answering).
async fn read_loop(
    mut rd: OwnedReadHalf,
    tx: mpsc::UnboundedSender<ClientMessage>,
    attention: Arc<(AtomicBool, Notify)>,
    journal: Arc<Journal>,
) {
    let mut current: Option<ClientMessage> = None;
    loop {
        let mut header = [0u8; wire::HEADER_LEN];
        if rd.read_exact(&mut header).await.is_err() {
            return;
        }
        let ty = header[0];
        let status = header[1];
        let len = u16::from_be_bytes([header[2], header[3]]) as usize;
        if len < wire::HEADER_LEN {
            return;
        }
        let mut body = vec![0u8; len - wire::HEADER_LEN];
        if rd.read_exact(&mut body).await.is_err() {
            return;
        }
        if ty == packet_type::ATTENTION {
            journal.attentions.fetch_add(1, Ordering::SeqCst);
            attention.0.store(true, Ordering::SeqCst);
            attention.1.notify_one();
            continue;
        }
        let msg = current.get_or_insert_with(|| ClientMessage {
            ty,
            payload: Vec::new(),
        });
        msg.payload.extend_from_slice(&body);
        if msg.payload.len() > MESSAGE_MAX_BYTES {
            return;
        }
        if status & wire::STATUS_EOM != 0 {
            let done = current.take().expect("set above");
            if tx.send(done).is_err() {
                return;
            }
        }
    }
}

struct Session {
    spid: u16,
    wr: OwnedWriteHalf,
    handler: Arc<dyn StandinHandler>,
    options: Arc<StandinOptions>,
    journal: Arc<Journal>,
    attention: Arc<(AtomicBool, Notify)>,
    packet_size: usize,
    packet_id: u8,
    user: String,
    database: String,
    /// Whether the handler was told the session ended.
    ended: bool,
}

/// How a reply ended.
enum Ended {
    Normally,
    Attention,
    Dropped,
}

impl Session {
    fn new(
        spid: u16,
        wr: OwnedWriteHalf,
        handler: Arc<dyn StandinHandler>,
        options: Arc<StandinOptions>,
        journal: Arc<Journal>,
    ) -> Session {
        Session {
            spid,
            wr,
            handler,
            options,
            journal,
            attention: Arc::new((AtomicBool::new(false), Notify::new())),
            packet_size: 4096,
            packet_id: 1,
            user: String::new(),
            database: "master".into(),
            ended: false,
        }
    }

    /// Tells the handler the session ended, once. Called before the socket
    /// closes on a dropped connection, so the client cannot reconnect before
    /// the model released the session's locks and transactions.
    fn end(&mut self) {
        if !self.ended {
            self.ended = true;
            self.handler.disconnected(self.spid);
        }
    }

    async fn send(&mut self, payload: &[u8], eom: bool) -> std::io::Result<()> {
        let bytes = wire::packetize(
            payload,
            self.packet_size,
            self.spid,
            &mut self.packet_id,
            eom,
        );
        if bytes.is_empty() {
            return Ok(());
        }
        self.wr.write_all(&bytes).await?;
        self.wr.flush().await
    }

    fn take_attention(&self) -> bool {
        self.attention.0.swap(false, Ordering::SeqCst)
    }

    async fn run(mut self, rd: OwnedReadHalf) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(
            rd,
            tx,
            self.attention.clone(),
            self.journal.clone(),
        ));
        let _ = self.serve(&mut rx).await;
        self.end();
        reader.abort();
    }

    async fn serve(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<ClientMessage>,
    ) -> Result<(), WireError> {
        // PRELOGIN.
        let Some(msg) = rx.recv().await else {
            return Ok(());
        };
        if msg.ty != packet_type::PRELOGIN {
            return Err(WireError(format!(
                "expected PRELOGIN, got packet type 0x{:02X}",
                msg.ty
            )));
        }
        self.send(&wire::prelogin_response(), true)
            .await
            .map_err(io)?;
        // LOGIN7 (a TLS handshake would arrive here as another PRELOGIN:
        // the stand-in does not do TLS and says so).
        let Some(msg) = rx.recv().await else {
            return Ok(());
        };
        if msg.ty != packet_type::LOGIN7 {
            let mut t = Tokens::default();
            t.error(
                &Message::error(
                    10054,
                    format!(
                        "{STANDIN_NAME}: expected LOGIN7 (packet type 0x{:02X}); the stand-in does not support TLS, connect with encrypt = \"none\"",
                        msg.ty
                    ),
                )
                .severity(20, 1),
                STANDIN_NAME,
            );
            t.done_final(done::ERROR);
            let _ = self.send(&t.buf, true).await;
            return Ok(());
        }
        if !self.login(&msg.payload).await? {
            return Ok(());
        }
        // Requests.
        loop {
            let msg = tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => m,
                    None => return Ok(()),
                },
                _ = self.attention.1.notified() => {
                    // An attention while idle: the request it meant to cancel
                    // has already finished; acknowledge anyway (MS-TDS 3.3.5.7).
                    if self.take_attention() {
                        let mut t = Tokens::default();
                        t.done_final(done::ATTN);
                        self.send(&t.buf, true).await.map_err(io)?;
                    }
                    continue;
                }
            };
            let incoming = match msg.ty {
                packet_type::SQL_BATCH => wire::parse_batch(&msg.payload)?,
                packet_type::RPC => wire::parse_rpc(&msg.payload)?,
                other => {
                    let mut t = Tokens::default();
                    t.error(
                        &Message::error(
                            0,
                            format!("{STANDIN_NAME}: packet type 0x{other:02X} is not supported"),
                        ),
                        STANDIN_NAME,
                    );
                    t.done_final(done::ERROR);
                    self.send(&t.buf, true).await.map_err(io)?;
                    continue;
                }
            };
            let (request, in_proc) = self.request(incoming);
            self.journal
                .requests
                .lock()
                .expect("poisoned")
                .push(request.clone());
            let actions = self.handler.handle(&request);
            match self.reply(actions, in_proc).await.map_err(io)? {
                Ended::Normally | Ended::Attention => {}
                Ended::Dropped => return Ok(()),
            }
        }
    }

    fn request(&self, incoming: Incoming) -> (Request, bool) {
        let base = |kind, text, declaration, params| Request {
            session: self.spid,
            kind,
            text,
            declaration,
            params,
            user: self.user.clone(),
            database: self.database.clone(),
        };
        match incoming {
            Incoming::Batch(text) => (
                base(RequestKind::Batch, text, String::new(), Vec::new()),
                false,
            ),
            Incoming::Rpc { procedure, params } => {
                if procedure.eq_ignore_ascii_case("sp_executesql") {
                    let mut it = params.into_iter();
                    let text = it
                        .next()
                        .and_then(|(_, v)| v.as_str().map(str::to_string))
                        .unwrap_or_default();
                    let mut declaration = String::new();
                    let mut rest: Vec<(String, SqlValue)> = it.collect();
                    if !rest.is_empty() && !rest[0].0.starts_with('@') {
                        // The second, unnamed-by-@ parameter is the declaration.
                        let (_, d) = rest.remove(0);
                        declaration = d.as_str().unwrap_or_default().to_string();
                    }
                    (
                        base(RequestKind::Rpc { procedure }, text, declaration, rest),
                        true,
                    )
                } else {
                    (
                        base(
                            RequestKind::Rpc {
                                procedure: procedure.clone(),
                            },
                            format!("EXEC {procedure}"),
                            String::new(),
                            params,
                        ),
                        true,
                    )
                }
            }
        }
    }

    async fn login(&mut self, payload: &[u8]) -> Result<bool, WireError> {
        let login = wire::parse_login7(payload)?;
        if login.packet_size >= 512 && login.packet_size <= 32767 {
            self.packet_size = login.packet_size as usize;
        }
        let accepted = !login.integrated
            && login.tds_version >= 0x7200_0000
            && match &self.options.credentials {
                None => true,
                Some((u, p)) => *u == login.user && *p == login.password,
            };
        self.journal
            .logins
            .lock()
            .expect("poisoned")
            .push(LoginRecord {
                session: self.spid,
                user: login.user.clone(),
                database: login.database.clone(),
                app: login.app.clone(),
                accepted,
            });
        let mut t = Tokens::default();
        if !accepted {
            let text = if login.integrated {
                format!(
                    "{STANDIN_NAME}: integrated authentication is not supported; use a SQL login"
                )
            } else {
                format!("Login failed for user '{}'.", login.user)
            };
            t.error(&Message::error(18456, text).severity(14, 1), STANDIN_NAME);
            t.done_final(done::ERROR);
            self.send(&t.buf, true).await.map_err(io)?;
            return Ok(false);
        }
        self.user = login.user;
        if !login.database.is_empty() {
            self.database = login.database;
        }
        t.env_database(&self.database, "master");
        t.info(
            &Message::info(
                5701,
                format!("Changed database context to '{}'.", self.database),
            )
            .severity(0, 2),
            STANDIN_NAME,
        );
        t.env_collation();
        t.login_ack(STANDIN_NAME);
        t.env_packet_size(self.packet_size as u32, self.packet_size as u32);
        t.done_final(done::FINAL);
        self.send(&t.buf, true).await.map_err(io)?;
        Ok(true)
    }

    /// Plays a handler's actions; returns how the reply ended.
    async fn reply(&mut self, actions: Vec<Action>, in_proc: bool) -> std::io::Result<Ended> {
        let mut t = Tokens::default();
        let mut failed = false;
        let mut actions: std::collections::VecDeque<Action> = actions.into();
        while let Some(action) = actions.pop_front() {
            if self.take_attention() {
                return self.ack_attention(t).await;
            }
            match action {
                Action::Rows(rs) => {
                    let count = rs.rows.len() as u64;
                    if let Err(e) = t.result_set(&rs) {
                        // A broken script: tell the client as an error.
                        t.error(&Message::error(0, e.0), STANDIN_NAME);
                        t.done(in_proc, done::MORE | done::ERROR, 0);
                        failed = true;
                        continue;
                    }
                    t.done(in_proc, done::MORE | done::COUNT, count);
                }
                Action::Done { rows_affected } => {
                    t.done(in_proc, done::MORE | done::COUNT, rows_affected)
                }
                Action::Info(m) => t.info(&m, STANDIN_NAME),
                Action::Error(m) => {
                    t.error(&m, STANDIN_NAME);
                    t.done(in_proc, done::MORE | done::ERROR, 0);
                    failed = true;
                }
                Action::Effect(f) => f(),
                Action::Then(f) => {
                    for a in f().into_iter().rev() {
                        actions.push_front(a);
                    }
                }
                Action::DropConnection => {
                    self.end();
                    let _ = self.wr.shutdown().await;
                    return Ok(Ended::Dropped);
                }
                Action::Delay(d) => {
                    self.send(&std::mem::take(&mut t.buf), false).await?;
                    let deadline = tokio::time::Instant::now() + d;
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep_until(deadline) => break,
                            _ = self.attention.1.notified() => {
                                // A stale wake-up (flag already taken) is
                                // ignored; the delay goes on.
                                if self.take_attention() {
                                    return self.ack_attention(t).await;
                                }
                            }
                        }
                    }
                }
            }
        }
        let status = if failed { done::ERROR } else { done::FINAL };
        if in_proc {
            t.done_proc(status, if failed { 1 } else { 0 });
        } else {
            t.done_final(status);
        }
        self.send(&t.buf, true).await?;
        Ok(Ended::Normally)
    }

    async fn ack_attention(&mut self, mut t: Tokens) -> std::io::Result<Ended> {
        t.done_final(done::ATTN);
        self.send(&t.buf, true).await?;
        Ok(Ended::Attention)
    }
}

fn io(e: std::io::Error) -> WireError {
    WireError(format!("connection: {e}"))
}
