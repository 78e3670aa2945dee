//! `upshift export` / `upshift import`: one run as one portable file.
//!
//! # Format (version 1)
//!
//! The whole file is one gzip stream (`gzip -dc FILE | head -2` shows the
//! header). Inflated, it reads:
//!
//! ```text
//! UPSHIFT-EXPORT 1\n                 magic and export format version
//! {"format":1,"run":…,"sha256":…}\n  header: one line of JSON (a summary)
//! <payload>                          frames, below
//! ```
//!
//! The payload is a sequence of frames, each a `u32` big-endian length and
//! that many bytes:
//!
//! 1. the [`Manifest`] as JSON (plan, fingerprint, counts);
//! 2. one frame per event, in seq order from 0: the event's record exactly
//!    as [`upshift_journal::codec::encode`] lays it out (format version,
//!    CRC-32, bincode body). So the event format lives in one place, and a
//!    later upshift reads old exports as it reads old journals.
//!
//! The header's `sha256` is the SHA-256 of the whole payload; the header's
//! other fields repeat the manifest for a quick look and must agree with
//! it. Readers refuse an unknown export format, a gzip or checksum error, a
//! record that fails its CRC, a gap in the seqs, or an event of another
//! run.
//!
//! Secrets: the engine never journals a secret value (it redacts them).
//! Export checks again: it resolves the plan's `[secrets]` where it can
//! (environment variables, files) and refuses to write a file if any event
//! holds such a value, naming the event's seq.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use upshift_journal::{Envelope, Event, Journal, codec};

use crate::error::{Error, Result};
use crate::plan::{SECRET_LEN_MIN, SecretRef};
use crate::state::RunState;

/// First line of every export file, before the format version.
pub const MAGIC: &str = "UPSHIFT-EXPORT";
/// The export format this release writes (and the newest it reads).
pub const EXPORT_FORMAT: u32 = 1;
/// Largest inflated payload accepted (a guard against a hostile file).
pub const PAYLOAD_BYTES_MAX: u64 = 8 * 1024 * 1024 * 1024;
/// Largest frame accepted (an event is bounded by the codec).
const FRAME_BYTES_MAX: u32 = (codec::EVENT_BYTES_MAX as u32) + 64 * 1024;

/// The one-line JSON header after the magic line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Header {
    /// Export format ([`EXPORT_FORMAT`]).
    pub format: u32,
    /// Run id.
    pub run: String,
    /// Plan name.
    pub plan: String,
    /// Events in the file.
    pub events: u64,
    /// When the file was written (RFC 3339, UTC).
    pub exported_at: String,
    /// `gzip` (the only one so far).
    pub compression: String,
    /// Inflated payload length in bytes.
    pub payload_bytes: u64,
    /// SHA-256 of the inflated payload, hex.
    pub sha256: String,
}

/// Where and with what the run was made and exported.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Fingerprint {
    /// OS of the exporting machine (`std::env::consts::OS`).
    pub os: String,
    /// CPU architecture.
    pub arch: String,
    /// OS release in words, when the OS says (e.g. `/etc/os-release`).
    pub os_release: Option<String>,
    /// Host that wrote the export.
    pub exported_on: String,
    /// User who wrote it.
    pub exported_by: String,
    /// upshift version that wrote the export.
    pub upshift_version: String,
    /// Engine versions that journaled events (from run.started/resumed).
    pub engine_versions: Vec<String>,
    /// Hosts the engine ran on (from run.started/resumed and decisions).
    pub hosts: Vec<String>,
    /// Hosts the plan's steps concern (`host = ...`).
    pub plan_hosts: Vec<String>,
    /// Step kinds the plan uses, with the version of their implementation.
    pub step_kinds: BTreeMap<String, String>,
    /// Journal store the run was read from (`redb`, `sled`).
    pub journal_store: String,
}

/// The first frame of the payload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// Export format.
    pub format: u32,
    /// Run id.
    pub run: String,
    /// Plan name.
    pub plan_name: String,
    /// The plan text the run pinned last (after any accepted change).
    pub plan_text: String,
    /// Its SHA-256.
    pub plan_hash: String,
    /// `--var` values the run was started with.
    pub vars: BTreeMap<String, String>,
    /// Events in the file.
    pub events: u64,
    /// Record format version of the events' codec when written.
    pub codec_version: u16,
    /// When exported.
    pub exported_at: String,
    /// Where from.
    pub fingerprint: Fingerprint,
    /// The journal was damaged after the last event included, in words.
    pub damaged: Option<String>,
}

/// A secret value to look for, and where it came from.
#[derive(Debug, Clone)]
pub struct SecretValue {
    /// Name in `[secrets]`.
    pub name: String,
    /// Where it was read (`env UPSHIFT_PW`, `file /etc/x`).
    pub source: String,
    /// The value.
    pub value: String,
}

/// The plan's secrets whose values this machine can read now, and a note
/// for each that it cannot.
pub fn resolvable_secrets(state: &RunState) -> (Vec<SecretValue>, Vec<String>) {
    let mut refs: BTreeMap<String, SecretRef> = BTreeMap::new();
    match super::pinned_plan(state) {
        Ok(p) => refs = p.secrets,
        // The plan may not validate with this build (a kind renamed):
        // the `[secrets]` table alone still says where values come from.
        Err(_) => {
            if let Ok(doc) = state.plan_text.parse::<toml::Table>()
                && let Some(toml::Value::Table(t)) = doc.get("secrets")
            {
                for (name, v) in t {
                    if let Some(e) = v.get("env").and_then(|e| e.as_str()) {
                        refs.insert(name.clone(), SecretRef::Env(e.into()));
                    } else if let Some(f) = v.get("file").and_then(|f| f.as_str()) {
                        refs.insert(name.clone(), SecretRef::File(f.into()));
                    }
                }
            }
        }
    }
    let mut found = Vec::new();
    let mut notes = Vec::new();
    for (name, r) in refs {
        let source = r.source_text();
        match r.read(&name).ok() {
            // The engine's redactor ignores values this short too.
            Some(v) if v.len() >= SECRET_LEN_MIN => found.push(SecretValue {
                name,
                source,
                value: v,
            }),
            Some(_) => notes.push(format!(
                "secret `{name}` ({source}) is shorter than {SECRET_LEN_MIN} characters: not checked"
            )),
            None => notes.push(format!(
                "secret `{name}` ({source}) cannot be read here: the export could not be checked for its value"
            )),
        }
    }
    (found, notes)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && memchr::memmem::find(hay, needle).is_some()
}

/// The first event (seq, secret name) whose stored record holds a secret
/// value anywhere (texts, outputs, checkpoint bytes, plan text).
pub fn find_secret(records: &[(u64, Vec<u8>)], secrets: &[SecretValue]) -> Option<(u64, String)> {
    for (seq, rec) in records {
        // What the event says, not its stored bytes (deflated when large).
        let body = codec::plain_body(rec).unwrap_or(std::borrow::Cow::Borrowed(rec));
        for s in secrets {
            if contains(&body, s.value.as_bytes()) {
                return Some((*seq, format!("{} ({})", s.name, s.source)));
            }
        }
    }
    None
}

fn os_release() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
}

/// The fingerprint of this machine and of the run.
pub fn fingerprint(events: &[Envelope], state: &RunState, store: &str) -> Fingerprint {
    let me = crate::app::identity::actor();
    let mut versions = BTreeSet::new();
    let mut hosts = BTreeSet::new();
    for e in events {
        match &e.event {
            Event::RunStarted {
                actor,
                engine_version,
                ..
            }
            | Event::RunResumed {
                actor,
                engine_version,
            } => {
                versions.insert(engine_version.clone());
                hosts.insert(actor.host.clone());
            }
            Event::OperatorDecision { actor, .. } => {
                hosts.insert(actor.host.clone());
            }
            _ => {}
        }
    }
    let mut plan_hosts = BTreeSet::new();
    let mut kinds = BTreeMap::new();
    if let Ok(p) = super::pinned_plan(state) {
        for def in p.steps.values() {
            if let Some(h) = &def.host {
                plan_hosts.insert(h.clone());
            }
            for body in std::iter::once(&def.body).chain(def.compensate.as_ref()) {
                // Kinds are built into this binary (crate upshift-steps,
                // released with upshift), so their version is upshift's.
                kinds.insert(body.kind.clone(), env!("CARGO_PKG_VERSION").to_string());
            }
        }
    }
    Fingerprint {
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
        os_release: os_release(),
        exported_on: me.host,
        exported_by: me.user,
        upshift_version: env!("CARGO_PKG_VERSION").into(),
        engine_versions: versions.into_iter().collect(),
        hosts: hosts.into_iter().collect(),
        plan_hosts: plan_hosts.into_iter().collect(),
        step_kinds: kinds,
        journal_store: store.into(),
    }
}

fn frame(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Builds the export file's bytes for a run's events. Refuses (with the
/// seq) if an event holds one of `secrets`.
pub fn build(
    events: &[Envelope],
    damaged: Option<String>,
    store: &str,
    secrets: &[SecretValue],
) -> Result<Vec<u8>, Error> {
    let Some(first) = events.first() else {
        return Err(Error::usage("the run has no events: nothing to export"));
    };
    let run = first.run;
    let state = RunState::from_events(events);
    let mut records = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        if e.run != run || e.seq != i as u64 {
            return Err(Error::failed(format!(
                "event {i} is seq {} of run {}: not a contiguous run",
                e.seq, e.run
            )));
        }
        let rec = codec::encode(e).map_err(|err| Error::failed(format!("seq {}: {err}", e.seq)))?;
        records.push((e.seq, rec));
    }
    if let Some((seq, name)) = find_secret(&records, secrets) {
        let what = events
            .get(seq as usize)
            .map(|e| {
                let mut s = e.event.name().to_string();
                if let Some(step) = e.event.step() {
                    s.push_str(&format!(" of step {step}"));
                }
                s
            })
            .unwrap_or_default();
        return Err(Error::failed(format!(
            "refusing to export run {run}: event seq {seq} ({what}) contains the value of secret {name}\n  the engine redacts secrets it knows; this value reached the journal some other way. Nothing was written."
        )));
    }
    let exported_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let manifest = Manifest {
        format: EXPORT_FORMAT,
        run: run.to_string(),
        plan_name: state.plan_name.clone(),
        plan_text: state.plan_text.clone(),
        plan_hash: state.plan_hash.clone(),
        vars: state.cli_vars.clone(),
        events: events.len() as u64,
        codec_version: codec::FORMAT_VERSION,
        exported_at: exported_at.clone(),
        fingerprint: fingerprint(events, &state, store),
        damaged,
    };
    let mut payload = Vec::new();
    frame(
        &mut payload,
        &serde_json::to_vec(&manifest).expect("serializable"),
    );
    for (_, rec) in &records {
        frame(&mut payload, rec);
    }
    let header = Header {
        format: EXPORT_FORMAT,
        run: run.to_string(),
        plan: state.plan_name.clone(),
        events: events.len() as u64,
        exported_at,
        compression: "gzip".into(),
        payload_bytes: payload.len() as u64,
        sha256: hex::encode(Sha256::digest(&payload)),
    };
    // The whole file is one gzip stream, so `gzip -dc FILE | head -2`
    // shows the header and standard tools can inflate it.
    let mut out = Vec::with_capacity(payload.len() / 4 + 1024);
    let mut gz = flate2::write::GzEncoder::new(&mut out, flate2::Compression::default());
    let head = format!(
        "{MAGIC} {EXPORT_FORMAT}\n{}\n",
        serde_json::to_string(&header).expect("serializable")
    );
    gz.write_all(head.as_bytes())
        .and_then(|_| gz.write_all(&payload))
        .and_then(|_| gz.finish().map(|_| ()))
        .map_err(|e| Error::failed(format!("compressing the export: {e}")))?;
    Ok(out)
}

fn bad(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::failed(format!(
        "{}: not a valid upshift export: {what}",
        path.display()
    ))
}

/// Reads and verifies an export file: its manifest and every event.
pub fn read_file(path: &Path) -> Result<(Manifest, Vec<Envelope>), Error> {
    let file = std::fs::File::open(path)
        .map_err(|e| Error::failed(format!("cannot open {}: {e}", path.display())))?;
    read(path, std::io::BufReader::new(file))
}

/// Reads and verifies an export from any reader (`path` names it in errors).
pub fn read(path: &Path, mut input: impl BufRead) -> Result<(Manifest, Vec<Envelope>), Error> {
    let magic = input.fill_buf().map_err(|e| bad(path, e))?;
    if !magic.starts_with(&[0x1f, 0x8b]) {
        return Err(bad(path, "it is not gzip-compressed"));
    }
    let mut input = std::io::BufReader::new(flate2::bufread::GzDecoder::new(input));
    let damaged = |e: std::io::Error| bad(path, format!("{e} (file truncated or damaged?)"));
    let mut line = String::new();
    // Bounded reads: a wrong file must not be slurped as one "line".
    (&mut input)
        .take(256)
        .read_line(&mut line)
        .map_err(damaged)?;
    let mut words = line.trim_end().split(' ');
    if words.next() != Some(MAGIC) {
        return Err(bad(path, format!("it does not start with `{MAGIC}`")));
    }
    let format: u32 = words
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad(path, "no format version after the magic"))?;
    if format == 0 || format > EXPORT_FORMAT {
        return Err(Error::failed(format!(
            "{}: export format {format}; this upshift reads formats 1..={EXPORT_FORMAT} (upgrade upshift to read it)",
            path.display()
        )));
    }
    let mut hline = String::new();
    (&mut input)
        .take(64 * 1024)
        .read_line(&mut hline)
        .map_err(damaged)?;
    let header: Header =
        serde_json::from_str(hline.trim_end()).map_err(|e| bad(path, format!("header: {e}")))?;
    if header.compression != "gzip" {
        return Err(bad(
            path,
            format!("unknown compression `{}`", header.compression),
        ));
    }
    if header.payload_bytes > PAYLOAD_BYTES_MAX {
        return Err(bad(path, "payload larger than the 8 GiB limit"));
    }
    let mut payload = Vec::new();
    (&mut input)
        .take(header.payload_bytes + 1)
        .read_to_end(&mut payload)
        .map_err(damaged)?;
    if payload.len() as u64 != header.payload_bytes {
        return Err(bad(
            path,
            format!(
                "payload is {} bytes, the header says {} (file truncated or damaged?)",
                payload.len(),
                header.payload_bytes
            ),
        ));
    }
    // Read to the end of the stream, so gzip's own CRC and length are
    // checked too.
    let mut rest = Vec::new();
    input.take(1).read_to_end(&mut rest).map_err(damaged)?;
    if !rest.is_empty() {
        return Err(bad(path, "bytes after the payload"));
    }
    let sum = hex::encode(Sha256::digest(&payload));
    if sum != header.sha256 {
        return Err(bad(
            path,
            format!(
                "checksum mismatch: content SHA-256 {sum}, header says {}",
                header.sha256
            ),
        ));
    }
    let mut frames = Frames { rest: &payload };
    let mf = frames
        .next_frame()
        .map_err(|e| bad(path, e))?
        .ok_or_else(|| bad(path, "no manifest"))?;
    let manifest: Manifest =
        serde_json::from_slice(mf).map_err(|e| bad(path, format!("manifest: {e}")))?;
    if manifest.run != header.run || manifest.events != header.events {
        return Err(bad(path, "header and manifest disagree"));
    }
    let run = manifest
        .run
        .parse()
        .map_err(|e| bad(path, format!("run id: {e}")))?;
    let mut events = Vec::with_capacity(manifest.events.min(10_000_000) as usize);
    while let Some(rec) = frames.next_frame().map_err(|e| bad(path, e))? {
        let seq = events.len() as u64;
        let env = codec::decode(rec, Some((run, seq)))
            .map_err(|e| bad(path, format!("event seq {seq}: {e}")))?;
        events.push(env);
    }
    if events.len() as u64 != manifest.events {
        return Err(bad(
            path,
            format!(
                "{} events, the manifest says {}",
                events.len(),
                manifest.events
            ),
        ));
    }
    Ok((manifest, events))
}

struct Frames<'a> {
    rest: &'a [u8],
}

impl<'a> Frames<'a> {
    fn next_frame(&mut self) -> Result<Option<&'a [u8]>, String> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        if self.rest.len() < 4 {
            return Err("truncated frame length".into());
        }
        let n = u32::from_be_bytes([self.rest[0], self.rest[1], self.rest[2], self.rest[3]]);
        if n > FRAME_BYTES_MAX || (n as usize) > self.rest.len() - 4 {
            return Err(format!("frame of {n} bytes past the end or over the limit"));
        }
        let (f, rest) = self.rest[4..].split_at(n as usize);
        self.rest = rest;
        Ok(Some(f))
    }
}

/// Events per commit when importing (bounded memory per transaction).
const IMPORT_BATCH: usize = 2000;

/// Writes an export's events into a journal, unchanged (same run id, seqs
/// and times). Importing the same file twice is a no-op.
pub fn import(journal: &mut Journal, events: &[Envelope]) -> Result<bool, Error> {
    let Some(first) = events.first() else {
        return Ok(false);
    };
    let have = journal.next_seq(first.run)?;
    if have > 0 {
        let existing = journal.read_run(first.run)?;
        if existing.len() == events.len()
            && existing.iter().zip(events).all(|(a, b)| {
                a.seq == b.seq
                    && a.event == b.event
                    && a.time.timestamp_micros() == b.time.timestamp_micros()
            })
        {
            return Ok(false);
        }
        return Err(Error::usage(format!(
            "this journal already holds run {} with {have} events that differ from the export; import into another journal (--journal DIR)",
            first.run
        )));
    }
    for batch in events.chunks(IMPORT_BATCH) {
        journal.append(batch)?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use upshift_journal::{Actor, RunId};

    #[test]
    fn a_secret_in_a_deflated_record_is_found() {
        let mut events = sample(2, "x");
        let text = format!(
            "{}hunter2-secret",
            "filler ".repeat(codec::DEFLATE_FROM / 6)
        );
        events[1].event = Event::Note { text };
        let rec = codec::encode(&events[1]).unwrap();
        assert!(!contains(&rec, b"hunter2-secret"), "the record is deflated");
        let secrets = [SecretValue {
            name: "pw".into(),
            source: "env PW".into(),
            value: "hunter2-secret".into(),
        }];
        assert_eq!(
            find_secret(&[(1, rec)], &secrets).map(|(seq, _)| seq),
            Some(1)
        );
    }

    fn sample(n: usize, text: &str) -> Vec<Envelope> {
        let run = RunId::new();
        let t = chrono::Utc::now();
        let mut v = vec![Envelope {
            run,
            seq: 0,
            time: t,
            event: Event::RunStarted {
                plan_name: "p".into(),
                plan_path: "/p.toml".into(),
                plan_text: "name = \"p\"\n".into(),
                plan_hash: "ab".into(),
                vars: Default::default(),
                engine_version: "0.1.0".into(),
                actor: Actor::default(),
            },
        }];
        for i in 1..n {
            v.push(Envelope {
                run,
                seq: i as u64,
                time: t,
                event: Event::Note {
                    text: format!("{text} {i}"),
                },
            });
        }
        v
    }

    #[test]
    fn round_trips_every_event() {
        let ev = sample(50, "hello");
        let bytes = build(&ev, None, "memory", &[]).unwrap();
        let (m, back) = read(Path::new("x"), &bytes[..]).unwrap();
        assert_eq!(m.events, 50);
        assert_eq!(m.plan_name, "p");
        assert_eq!(back.len(), 50);
        for (a, b) in ev.iter().zip(&back) {
            assert_eq!(a.event, b.event);
            assert_eq!(a.time.timestamp_micros(), b.time.timestamp_micros());
        }
    }

    #[test]
    fn a_salvaged_run_says_where_the_journal_was_damaged() {
        let ev = sample(5, "before the damage");
        let bytes = build(&ev, Some("seq 5: checksum mismatch".into()), "redb", &[]).unwrap();
        let (m, back) = read(Path::new("x"), &bytes[..]).unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(m.damaged.as_deref(), Some("seq 5: checksum mismatch"));
        assert_eq!(m.fingerprint.journal_store, "redb");
    }

    #[test]
    fn any_damage_is_refused() {
        let bytes = build(&sample(20, "hello"), None, "memory", &[]).unwrap();
        // Flip bytes throughout the stream (past gzip's 10-byte header,
        // whose time and OS fields carry no content), and truncate.
        // The last deflate byte before gzip's 8-byte trailer may hold
        // padding bits that carry nothing either.
        let padding = bytes.len() - 9;
        for i in (10..bytes.len()).step_by(5).filter(|i| *i != padding) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(
                read(Path::new("x"), &bad[..]).is_err(),
                "flip at {i} of {}",
                bytes.len()
            );
        }
        for n in [0, 2, 10, 30, bytes.len() - 1] {
            assert!(read(Path::new("x"), &bytes[..n]).is_err(), "cut at {n}");
        }
        assert!(read(Path::new("x"), &b"UPSHIFT-EXPORT 1\n{}"[..]).is_err());
    }

    #[test]
    fn a_newer_format_asks_for_a_newer_upshift() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"UPSHIFT-EXPORT 9\n{}\n").unwrap();
        let bytes = gz.finish().unwrap();
        let err = read(Path::new("x"), &bytes[..]).unwrap_err();
        assert!(
            err.message().contains("upgrade upshift"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn standard_gzip_inflates_it_to_the_header_lines() {
        let bytes = build(&sample(3, "x"), None, "memory", &[]).unwrap();
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut text)
            .unwrap();
        assert!(text.starts_with(b"UPSHIFT-EXPORT 1\n{\"format\":1,"));
    }

    #[test]
    fn a_secret_value_in_an_event_is_refused_with_its_seq() {
        let ev = sample(10, "the password is hunter22 ok");
        let secrets = vec![SecretValue {
            name: "pw".into(),
            source: "env PW".into(),
            value: "hunter22".into(),
        }];
        let err = build(&ev, None, "memory", &secrets).unwrap_err();
        assert!(
            err.message().contains("event seq 1 (note)"),
            "{}",
            err.message()
        );
        assert!(
            err.message().contains("secret pw (env PW)"),
            "{}",
            err.message()
        );
        let clean = sample(10, "nothing here");
        assert!(build(&clean, None, "memory", &secrets).is_ok());
    }
}
