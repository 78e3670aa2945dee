//! TDS 7.4 wire format, server side: just what the stand-in needs to talk to
//! tiberius. Written from MS-TDS (sections 2.2.3 packets, 2.2.6 requests,
//! 2.2.7 tokens); nothing here is shared with the client.

use std::fmt;

use chrono::{Datelike, NaiveDate, NaiveDateTime, Timelike};

use super::{ColType, Message, ResultSet, SqlValue};

/// Packet types (MS-TDS 2.2.3.1.1).
pub(crate) mod packet_type {
    pub const SQL_BATCH: u8 = 0x01;
    pub const RPC: u8 = 0x03;
    pub const TABULAR_RESULT: u8 = 0x04;
    pub const ATTENTION: u8 = 0x06;
    pub const LOGIN7: u8 = 0x10;
    pub const PRELOGIN: u8 = 0x12;
}

/// Packet status: end of message.
pub(crate) const STATUS_EOM: u8 = 0x01;
/// Packet header length.
pub(crate) const HEADER_LEN: usize = 8;

/// DONE status bits (MS-TDS 2.2.7.6).
pub(crate) mod done {
    pub const FINAL: u16 = 0x00;
    pub const MORE: u16 = 0x01;
    pub const ERROR: u16 = 0x02;
    pub const COUNT: u16 = 0x10;
    pub const ATTN: u16 = 0x20;
}

/// Token bytes (MS-TDS 2.2.7).
mod token {
    pub const COLMETADATA: u8 = 0x81;
    pub const RETURNSTATUS: u8 = 0x79;
    pub const ERROR: u8 = 0xAA;
    pub const INFO: u8 = 0xAB;
    pub const LOGINACK: u8 = 0xAD;
    pub const ROW: u8 = 0xD1;
    pub const ENVCHANGE: u8 = 0xE3;
    pub const DONE: u8 = 0xFD;
    pub const DONEPROC: u8 = 0xFE;
    pub const DONEINPROC: u8 = 0xFF;
}

/// TDS 7.4 as the server announces it in LOGINACK.
const TDS_74: u32 = 0x7400_0004;
/// Latin1_General_CI_AS, the collation of every nvarchar the stand-in sends.
const COLLATION: [u8; 5] = [0x09, 0x04, 0xD0, 0x00, 0x34];

/// A wire-format problem in what the client sent.
#[derive(Debug)]
pub(crate) struct WireError(pub String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(what: impl Into<String>) -> Result<T, WireError> {
    Err(WireError(what.into()))
}

/// A little-endian reader over a message payload.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }
    pub fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.pos + n > self.buf.len() {
            return err(format!(
                "message ends early: wanted {n} bytes at offset {}, have {}",
                self.pos,
                self.buf.len() - self.pos.min(self.buf.len())
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    pub fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u64(&mut self) -> Result<u64, WireError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    pub fn utf16(&mut self, chars: usize) -> Result<String, WireError> {
        let b = self.take(chars * 2)?;
        utf16_bytes(b)
    }
}

fn utf16_bytes(b: &[u8]) -> Result<String, WireError> {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).map_err(|_| WireError("invalid UTF-16 text".into()))
}

/// Splits a response payload into packets of at most `packet_size` bytes;
/// only the last one carries end-of-message when `eom`.
pub(crate) fn packetize(
    payload: &[u8],
    packet_size: usize,
    spid: u16,
    packet_id: &mut u8,
    eom: bool,
) -> Vec<u8> {
    let chunk = packet_size.max(512) - HEADER_LEN;
    let mut out = Vec::with_capacity(payload.len() + HEADER_LEN * (payload.len() / chunk + 1));
    let mut pieces: Vec<&[u8]> = payload.chunks(chunk).collect();
    if pieces.is_empty() {
        if !eom {
            return out;
        }
        pieces.push(&[]);
    }
    let last = pieces.len() - 1;
    for (i, piece) in pieces.into_iter().enumerate() {
        let status = if eom && i == last { STATUS_EOM } else { 0 };
        let len = (piece.len() + HEADER_LEN) as u16;
        out.push(packet_type::TABULAR_RESULT);
        out.push(status);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&spid.to_be_bytes());
        out.push(*packet_id);
        out.push(0);
        out.extend_from_slice(piece);
        *packet_id = packet_id.wrapping_add(1);
    }
    out
}

/// The PRELOGIN answer: version, no encryption (ENCRYPT_NOT_SUP), no
/// instance check, no MARS.
pub(crate) fn prelogin_response() -> Vec<u8> {
    // (token, data) pairs; offsets are computed below.
    let options: [(u8, Vec<u8>); 5] = [
        (0x00, vec![16, 0, 0x10, 0x00, 0, 0]), // VERSION 16.0.4096, subbuild 0
        (0x01, vec![0x02]),                    // ENCRYPTION: ENCRYPT_NOT_SUP
        (0x02, vec![0x00]),                    // INSTOPT: accepted
        (0x03, vec![]),                        // THREADID: none
        (0x04, vec![0x00]),                    // MARS: off
    ];
    let mut offset = (options.len() * 5 + 1) as u16;
    let mut head = Vec::new();
    let mut data = Vec::new();
    for (tok, bytes) in &options {
        head.push(*tok);
        head.extend_from_slice(&offset.to_be_bytes());
        head.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        offset += bytes.len() as u16;
        data.extend_from_slice(bytes);
    }
    head.push(0xFF);
    head.extend_from_slice(&data);
    head
}

/// What the stand-in keeps of a LOGIN7 message.
pub(crate) struct Login {
    pub tds_version: u32,
    pub packet_size: u32,
    pub user: String,
    pub password: String,
    pub app: String,
    pub database: String,
    pub integrated: bool,
}

/// Parses LOGIN7 (MS-TDS 2.2.6.4).
pub(crate) fn parse_login7(p: &[u8]) -> Result<Login, WireError> {
    if p.len() < 94 {
        return err("LOGIN7 shorter than its fixed part");
    }
    let mut r = Reader::new(p);
    let _len = r.u32()?;
    let tds_version = r.u32()?;
    let packet_size = r.u32()?;
    r.take(4 + 4 + 4)?; // prog version, pid, connection id
    let _flags1 = r.u8()?;
    let flags2 = r.u8()?;
    let field = |at: usize| -> Result<String, WireError> {
        let off = u16::from_le_bytes([p[at], p[at + 1]]) as usize;
        let chars = u16::from_le_bytes([p[at + 2], p[at + 3]]) as usize;
        if off + chars * 2 > p.len() {
            return err(format!("LOGIN7 field at {at} points outside the message"));
        }
        utf16_bytes(&p[off..off + chars * 2])
    };
    let user = field(40)?;
    let password = {
        let off = u16::from_le_bytes([p[44], p[45]]) as usize;
        let chars = u16::from_le_bytes([p[46], p[47]]) as usize;
        if off + chars * 2 > p.len() {
            return err("LOGIN7 password points outside the message");
        }
        // Each byte: swap the nibbles back, then XOR 0xA5 (MS-TDS 2.2.6.4).
        let plain: Vec<u8> = p[off..off + chars * 2]
            .iter()
            .map(|b| {
                let x = b ^ 0xA5;
                x.rotate_left(4)
            })
            .collect();
        utf16_bytes(&plain)?
    };
    Ok(Login {
        tds_version,
        packet_size,
        user,
        password,
        app: field(48)?,
        database: field(68)?,
        integrated: flags2 & 0x80 != 0,
    })
}

/// A client request after its ALL_HEADERS.
pub(crate) enum Incoming {
    Batch(String),
    Rpc {
        procedure: String,
        params: Vec<(String, SqlValue)>,
    },
}

fn skip_all_headers(r: &mut Reader<'_>) -> Result<(), WireError> {
    let total = r.u32()? as usize;
    if total < 4 {
        return err("ALL_HEADERS length below 4");
    }
    r.take(total - 4)?;
    Ok(())
}

/// Parses an SQL batch (MS-TDS 2.2.6.7).
pub(crate) fn parse_batch(p: &[u8]) -> Result<Incoming, WireError> {
    let mut r = Reader::new(p);
    skip_all_headers(&mut r)?;
    let rest = &p[r.pos..];
    Ok(Incoming::Batch(utf16_bytes(rest)?))
}

/// Well-known procedure ids (MS-TDS 2.2.6.6).
fn proc_name(id: u16) -> String {
    match id {
        10 => "sp_executesql".into(),
        11 => "sp_prepare".into(),
        12 => "sp_execute".into(),
        13 => "sp_prepexec".into(),
        15 => "sp_unprepare".into(),
        other => format!("proc#{other}"),
    }
}

/// Parses an RPC request (MS-TDS 2.2.6.6), one call.
pub(crate) fn parse_rpc(p: &[u8]) -> Result<Incoming, WireError> {
    let mut r = Reader::new(p);
    skip_all_headers(&mut r)?;
    let name_len = r.u16()?;
    let procedure = if name_len == 0xFFFF {
        proc_name(r.u16()?)
    } else {
        r.utf16(name_len as usize)?
    };
    let _options = r.u16()?;
    let mut params = Vec::new();
    while !r.at_end() {
        let n = r.u8()? as usize;
        let name = r.utf16(n)?;
        let _status = r.u8()?;
        let value = read_typed_value(&mut r)?;
        params.push((name, value));
    }
    Ok(Incoming::Rpc { procedure, params })
}

fn read_plp(r: &mut Reader<'_>) -> Result<Option<Vec<u8>>, WireError> {
    let total = r.u64()?;
    if total == u64::MAX {
        return Ok(None);
    }
    let mut out = Vec::new();
    loop {
        let chunk = r.u32()? as usize;
        if chunk == 0 {
            break;
        }
        out.extend_from_slice(r.take(chunk)?);
    }
    Ok(Some(out))
}

/// TYPE_INFO followed by the value, for the types tiberius sends.
fn read_typed_value(r: &mut Reader<'_>) -> Result<SqlValue, WireError> {
    let ty = r.u8()?;
    match ty {
        0x1F => Ok(SqlValue::Null),
        0x26 => {
            let _max = r.u8()?;
            let len = r.u8()?;
            let b = r.take(len as usize)?;
            Ok(match len {
                0 => SqlValue::Null,
                1 => SqlValue::Int(b[0] as i32),
                2 => SqlValue::Int(i16::from_le_bytes([b[0], b[1]]) as i32),
                4 => SqlValue::Int(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                8 => {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    SqlValue::BigInt(i64::from_le_bytes(a))
                }
                other => return err(format!("INTN of length {other}")),
            })
        }
        0x68 => {
            let _max = r.u8()?;
            let len = r.u8()?;
            let b = r.take(len as usize)?;
            Ok(if len == 0 {
                SqlValue::Null
            } else {
                SqlValue::Bit(b[0] != 0)
            })
        }
        0xE7 | 0xA5 => {
            let max = r.u16()?;
            if ty == 0xE7 {
                r.take(5)?; // collation
            }
            let bytes = if max == 0xFFFF {
                read_plp(r)?
            } else {
                let len = r.u16()?;
                if len == 0xFFFF {
                    None
                } else {
                    Some(r.take(len as usize)?.to_vec())
                }
            };
            Ok(match (bytes, ty) {
                (None, _) => SqlValue::Null,
                (Some(b), 0xE7) => SqlValue::NVarChar(utf16_bytes(&b)?),
                (Some(b), _) => SqlValue::VarBinary(b),
            })
        }
        0x2A => {
            let scale = r.u8()?;
            let len = r.u8()? as usize;
            if len == 0 {
                return Ok(SqlValue::Null);
            }
            let b = r.take(len)?;
            Ok(SqlValue::DateTime2(decode_datetime2(b, scale)?))
        }
        other => err(format!(
            "parameter type 0x{other:02X} is not supported by the stand-in"
        )),
    }
}

fn decode_datetime2(b: &[u8], scale: u8) -> Result<NaiveDateTime, WireError> {
    let tlen = b.len() - 3;
    let mut t = [0u8; 8];
    t[..tlen].copy_from_slice(&b[..tlen]);
    let units = u64::from_le_bytes(t);
    let days = u32::from_le_bytes([b[tlen], b[tlen + 1], b[tlen + 2], 0]);
    let nanos = units as u128 * 10u128.pow(9 - scale as u32);
    let date = NaiveDate::from_ymd_opt(1, 1, 1)
        .and_then(|d| d.checked_add_days(chrono::Days::new(days as u64)))
        .ok_or_else(|| WireError("datetime2 date out of range".into()))?;
    let secs = (nanos / 1_000_000_000) as u32;
    let frac = (nanos % 1_000_000_000) as u32;
    let time = chrono::NaiveTime::from_num_seconds_from_midnight_opt(secs, frac)
        .ok_or_else(|| WireError("datetime2 time out of range".into()))?;
    Ok(NaiveDateTime::new(date, time))
}

fn encode_datetime2(dt: &NaiveDateTime, out: &mut Vec<u8>) {
    // Scale 7: 100 ns units since midnight in 5 bytes, then days since
    // 0001-01-01 in 3 bytes.
    let t = dt.time();
    let units = t.num_seconds_from_midnight() as u64 * 10_000_000 + (t.nanosecond() as u64) / 100;
    out.extend_from_slice(&units.to_le_bytes()[..5]);
    let days = dt.date().num_days_from_ce() - 1;
    out.extend_from_slice(&(days as u32).to_le_bytes()[..3]);
}

/// Builds a response's token stream.
#[derive(Default)]
pub(crate) struct Tokens {
    pub buf: Vec<u8>,
}

fn b_varchar(out: &mut Vec<u8>, s: &str) {
    let units: Vec<u16> = s.encode_utf16().take(255).collect();
    out.push(units.len() as u8);
    for u in units {
        out.extend_from_slice(&u.to_le_bytes());
    }
}

fn us_varchar(out: &mut Vec<u8>, s: &str) {
    let units: Vec<u16> = s.encode_utf16().take(u16::MAX as usize).collect();
    out.extend_from_slice(&(units.len() as u16).to_le_bytes());
    for u in units {
        out.extend_from_slice(&u.to_le_bytes());
    }
}

impl Tokens {
    fn with_len(&mut self, token: u8, body: Vec<u8>) {
        self.buf.push(token);
        self.buf
            .extend_from_slice(&(body.len() as u16).to_le_bytes());
        self.buf.extend_from_slice(&body);
    }

    pub fn env_database(&mut self, new: &str, old: &str) {
        let mut b = vec![1u8];
        b_varchar(&mut b, new);
        b_varchar(&mut b, old);
        self.with_len(token::ENVCHANGE, b);
    }

    pub fn env_packet_size(&mut self, new: u32, old: u32) {
        let mut b = vec![4u8];
        b_varchar(&mut b, &new.to_string());
        b_varchar(&mut b, &old.to_string());
        self.with_len(token::ENVCHANGE, b);
    }

    pub fn env_collation(&mut self) {
        let mut b = vec![7u8, 5];
        b.extend_from_slice(&COLLATION);
        b.push(0);
        self.with_len(token::ENVCHANGE, b);
    }

    pub fn login_ack(&mut self, program: &str) {
        let mut b = vec![1u8];
        b.extend_from_slice(&TDS_74.to_be_bytes());
        b_varchar(&mut b, program);
        b.extend_from_slice(&[16, 0, 0x10, 0x00]);
        self.with_len(token::LOGINACK, b);
    }

    fn message(&mut self, token: u8, m: &Message, server: &str) {
        let mut b = Vec::new();
        b.extend_from_slice(&m.number.to_le_bytes());
        b.push(m.state);
        b.push(m.class);
        us_varchar(&mut b, &m.text);
        b_varchar(&mut b, server);
        b_varchar(&mut b, &m.procedure);
        b.extend_from_slice(&m.line.to_le_bytes());
        self.with_len(token, b);
    }

    pub fn error(&mut self, m: &Message, server: &str) {
        self.message(token::ERROR, m, server);
    }

    pub fn info(&mut self, m: &Message, server: &str) {
        self.message(token::INFO, m, server);
    }

    fn done_token(&mut self, token: u8, status: u16, rows: u64) {
        self.buf.push(token);
        self.buf.extend_from_slice(&status.to_le_bytes());
        self.buf.extend_from_slice(&0xC1u16.to_le_bytes()); // cur cmd: SELECT
        self.buf.extend_from_slice(&rows.to_le_bytes());
    }

    /// DONE (a batch statement) or DONEINPROC (inside an RPC).
    pub fn done(&mut self, in_proc: bool, status: u16, rows: u64) {
        let t = if in_proc {
            token::DONEINPROC
        } else {
            token::DONE
        };
        self.done_token(t, status, rows);
    }

    /// The end of an RPC: RETURNSTATUS then DONEPROC.
    pub fn done_proc(&mut self, status: u16, return_status: i32) {
        self.buf.push(token::RETURNSTATUS);
        self.buf.extend_from_slice(&return_status.to_le_bytes());
        self.done_token(token::DONEPROC, status, 0);
    }

    /// The final DONE of a batch, or the attention acknowledgement.
    pub fn done_final(&mut self, status: u16) {
        self.done_token(token::DONE, status, 0);
    }

    /// COLMETADATA and one ROW per row.
    pub fn result_set(&mut self, rs: &ResultSet) -> Result<(), WireError> {
        self.buf.push(token::COLMETADATA);
        self.buf
            .extend_from_slice(&(rs.columns.len() as u16).to_le_bytes());
        for (name, ty) in &rs.columns {
            self.buf.extend_from_slice(&0u32.to_le_bytes()); // user type
            self.buf.extend_from_slice(&0x0001u16.to_le_bytes()); // nullable
            match ty {
                ColType::Int => self.buf.extend_from_slice(&[0x26, 4]),
                ColType::BigInt => self.buf.extend_from_slice(&[0x26, 8]),
                ColType::Bit => self.buf.extend_from_slice(&[0x68, 1]),
                ColType::NVarChar => {
                    self.buf.push(0xE7);
                    self.buf.extend_from_slice(&8000u16.to_le_bytes());
                    self.buf.extend_from_slice(&COLLATION);
                }
                ColType::VarBinary => {
                    self.buf.push(0xA5);
                    self.buf.extend_from_slice(&8000u16.to_le_bytes());
                }
                ColType::DateTime2 => self.buf.extend_from_slice(&[0x2A, 7]),
            }
            b_varchar(&mut self.buf, name);
        }
        for (i, row) in rs.rows.iter().enumerate() {
            if row.len() != rs.columns.len() {
                return err(format!(
                    "stand-in script error: row {i} has {} values for {} columns",
                    row.len(),
                    rs.columns.len()
                ));
            }
            self.buf.push(token::ROW);
            for (v, (name, ty)) in row.iter().zip(&rs.columns) {
                self.value(v, *ty, name)?;
            }
        }
        Ok(())
    }

    fn value(&mut self, v: &SqlValue, ty: ColType, col: &str) -> Result<(), WireError> {
        let b = &mut self.buf;
        match (ty, v) {
            (
                ColType::Int | ColType::BigInt | ColType::Bit | ColType::DateTime2,
                SqlValue::Null,
            ) => b.push(0),
            (ColType::NVarChar | ColType::VarBinary, SqlValue::Null) => {
                b.extend_from_slice(&0xFFFFu16.to_le_bytes())
            }
            (ColType::Int, SqlValue::Int(i)) => {
                b.push(4);
                b.extend_from_slice(&i.to_le_bytes());
            }
            (ColType::BigInt, SqlValue::BigInt(i)) => {
                b.push(8);
                b.extend_from_slice(&i.to_le_bytes());
            }
            (ColType::BigInt, SqlValue::Int(i)) => {
                b.push(8);
                b.extend_from_slice(&(*i as i64).to_le_bytes());
            }
            (ColType::Bit, SqlValue::Bit(x)) => {
                b.push(1);
                b.push(*x as u8);
            }
            (ColType::NVarChar, SqlValue::NVarChar(s)) => {
                let units: Vec<u16> = s.encode_utf16().collect();
                if units.len() > 4000 {
                    return err(format!(
                        "stand-in limit: nvarchar value of column {col} longer than 4000 characters"
                    ));
                }
                b.extend_from_slice(&((units.len() * 2) as u16).to_le_bytes());
                for u in units {
                    b.extend_from_slice(&u.to_le_bytes());
                }
            }
            (ColType::VarBinary, SqlValue::VarBinary(x)) => {
                if x.len() > 8000 {
                    return err(format!(
                        "stand-in limit: varbinary value of column {col} longer than 8000 bytes"
                    ));
                }
                b.extend_from_slice(&(x.len() as u16).to_le_bytes());
                b.extend_from_slice(x);
            }
            (ColType::DateTime2, SqlValue::DateTime2(dt)) => {
                b.push(8);
                encode_datetime2(dt, b);
            }
            (ty, v) => {
                return err(format!(
                    "stand-in script error: value {v:?} does not fit column {col} of type {ty:?}"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetime2_round_trips() {
        let dt = NaiveDate::from_ymd_opt(2026, 11, 24)
            .unwrap()
            .and_hms_nano_opt(2, 25, 13, 123_456_700)
            .unwrap();
        let mut b = Vec::new();
        encode_datetime2(&dt, &mut b);
        assert_eq!(b.len(), 8);
        assert_eq!(decode_datetime2(&b, 7).unwrap(), dt);
    }

    #[test]
    fn packetize_marks_only_the_last_packet_eom() {
        let mut id = 1;
        let bytes = packetize(&vec![7u8; 1200], 512, 51, &mut id, true);
        // 1200 bytes in 504-byte chunks: 3 packets.
        assert_eq!(id, 4);
        assert_eq!(bytes[1], 0);
        let second = 512;
        assert_eq!(bytes[second + 1], 0);
        let third = 1024;
        assert_eq!(bytes[third + 1], STATUS_EOM);
        assert_eq!(bytes.len(), 1200 + 3 * HEADER_LEN);
    }
}
