//! The one place that knows how an event is laid out in bytes.
//!
//! A stored record is `version (u16 BE) · crc32 of body (u32 BE) · body`,
//! where body is the bincode (2.0.1, standard config) encoding of an
//! [`Envelope`] (version 1), or that encoding compressed with deflate
//! (version 2, written only for an encoding of [`DEFLATE_FROM`] bytes or
//! more: in practice the `RunStarted` of a plan of tens of thousands of
//! steps, which pins the plan's text). A key is `run id (16 bytes) · seq
//! (u64 BE)`, so a run's events scan in order and runs sort by their
//! time-ordered ids.

use std::borrow::Cow;
use std::io::Read;

use crate::event::{Envelope, RunId};

/// The newest format this release writes; it reads every version up to it.
pub const FORMAT_VERSION: u16 = DEFLATED;

/// Version 1: the body is the bincode encoding itself.
const PLAIN: u16 = 1;
/// Version 2: the body is the bincode encoding compressed with deflate.
const DEFLATED: u16 = 2;

/// Encodings this large or larger are stored deflated (version 2); smaller
/// ones as they are (version 1), readable by every release.
pub const DEFLATE_FROM: usize = 1024 * 1024;

/// Largest encoding a deflated body may inflate to (the bound bincode's
/// declared lengths are held to as well).
const INFLATED_BYTES_MAX: usize = 32 * EVENT_BYTES_MAX;

/// Largest encoded event accepted (bounded so a runaway step output cannot
/// bloat the journal; output tails are trimmed long before this).
pub const EVENT_BYTES_MAX: usize = 4 * 1024 * 1024;

const HEADER_LEN: usize = 6;

/// Length of a storage key.
pub const KEY_LEN: usize = 24;

/// Why a record could not be encoded or decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// The record is shorter than its header.
    #[error("record is {0} bytes, shorter than its 6-byte header")]
    Truncated(usize),
    /// Written by a format this release does not know.
    #[error(
        "record has format version {0}; this upshift reads versions 1..={FORMAT_VERSION} (upgrade upshift to read it)"
    )]
    UnknownVersion(u16),
    /// The body does not match its checksum.
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// Checksum in the header.
        stored: u32,
        /// Checksum of the body as read.
        computed: u32,
    },
    /// The body is not a valid event.
    #[error("body does not decode: {0}")]
    Body(String),
    /// The record's own run/seq differ from its key.
    #[error("record says run {run} seq {seq}, but is stored under another key")]
    Misplaced {
        /// Run in the record.
        run: RunId,
        /// Seq in the record.
        seq: u64,
    },
    /// The event is larger than [`EVENT_BYTES_MAX`] (after compression).
    #[error("event of {0} bytes exceeds the {EVENT_BYTES_MAX}-byte limit")]
    TooLarge(usize),
    /// The key is not 24 bytes.
    #[error("storage key of {0} bytes (expected {KEY_LEN})")]
    BadKey(usize),
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes an envelope into a record.
pub fn encode(env: &Envelope) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![0u8; HEADER_LEN];
    bincode::serde::encode_into_std_write(env, &mut out, config())
        .map_err(|e| CodecError::Body(e.to_string()))?;
    let mut version = PLAIN;
    if out.len() - HEADER_LEN >= DEFLATE_FROM {
        let mut deflated = vec![0u8; HEADER_LEN];
        let mut z = flate2::write::DeflateEncoder::new(&mut deflated, flate2::Compression::fast());
        std::io::Write::write_all(&mut z, &out[HEADER_LEN..])
            .and_then(|()| z.finish().map(drop))
            .map_err(|e| CodecError::Body(format!("deflate: {e}")))?;
        out = deflated;
        version = DEFLATED;
    }
    let body_len = out.len() - HEADER_LEN;
    if body_len > EVENT_BYTES_MAX {
        return Err(CodecError::TooLarge(body_len));
    }
    let crc = crc32fast::hash(&out[HEADER_LEN..]);
    out[0..2].copy_from_slice(&version.to_be_bytes());
    out[2..6].copy_from_slice(&crc.to_be_bytes());
    Ok(out)
}

/// The bincode encoding a record holds, after its header and checksum are
/// verified (inflated for version 2): what a scan for secret values reads.
pub fn plain_body(record: &[u8]) -> Result<Cow<'_, [u8]>, CodecError> {
    if record.len() < HEADER_LEN {
        return Err(CodecError::Truncated(record.len()));
    }
    let version = u16::from_be_bytes([record[0], record[1]]);
    if version == 0 || version > FORMAT_VERSION {
        return Err(CodecError::UnknownVersion(version));
    }
    let stored = u32::from_be_bytes([record[2], record[3], record[4], record[5]]);
    let body = &record[HEADER_LEN..];
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(CodecError::Checksum { stored, computed });
    }
    if version == PLAIN {
        return Ok(Cow::Borrowed(body));
    }
    let mut plain = Vec::new();
    flate2::read::DeflateDecoder::new(body)
        .take(INFLATED_BYTES_MAX as u64 + 1)
        .read_to_end(&mut plain)
        .map_err(|e| CodecError::Body(format!("inflate: {e}")))?;
    if plain.len() > INFLATED_BYTES_MAX {
        return Err(CodecError::Body(format!(
            "inflates to more than {INFLATED_BYTES_MAX} bytes"
        )));
    }
    Ok(Cow::Owned(plain))
}

/// Decodes a record, verifying version, checksum and that it belongs under
/// `key` (pass `None` to skip that check, e.g. for exports).
pub fn decode(record: &[u8], key: Option<(RunId, u64)>) -> Result<Envelope, CodecError> {
    let body = plain_body(record)?;
    let body = body.as_ref();
    // The limit bounds what declared lengths may claim: without it, a body
    // whose checksum matches but that declares a length of 2^62 (fuzzing
    // found one) makes bincode allocate that much and abort the process.
    // bincode claims `size_of::<T>()` per element, up to 24x the encoded
    // bytes (a map of empty strings), so the bound is 32x the largest event.
    let limited = config().with_limit::<{ 32 * EVENT_BYTES_MAX }>();
    let (env, used): (Envelope, usize) = bincode::serde::decode_from_slice(body, limited)
        .map_err(|e| CodecError::Body(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Body(format!(
            "{} trailing bytes after the event",
            body.len() - used
        )));
    }
    if let Some((run, seq)) = key
        && (env.run != run || env.seq != seq)
    {
        return Err(CodecError::Misplaced {
            run: env.run,
            seq: env.seq,
        });
    }
    Ok(env)
}

/// The storage key of `(run, seq)`.
pub fn key(run: RunId, seq: u64) -> [u8; KEY_LEN] {
    let mut k = [0u8; KEY_LEN];
    k[..16].copy_from_slice(&run.to_bytes());
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Splits a storage key into `(run, seq)`.
pub fn parse_key(k: &[u8]) -> Result<(RunId, u64), CodecError> {
    if k.len() != KEY_LEN {
        return Err(CodecError::BadKey(k.len()));
    }
    let mut run = [0u8; 16];
    run.copy_from_slice(&k[..16]);
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&k[16..]);
    Ok((RunId::from_bytes(run), u64::from_be_bytes(seq)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    fn sample(seq: u64) -> Envelope {
        Envelope {
            run: RunId::new(),
            seq,
            time: chrono::Utc::now(),
            event: Event::StepFailed {
                step: "db.update".into(),
                attempt: 2,
                error: "deadlock 1205".into(),
                output_tail: "line\n".repeat(10),
                transient: true,
            },
        }
    }

    #[test]
    fn round_trips_and_checks_key() {
        let env = sample(7);
        let rec = encode(&env).unwrap();
        let back = decode(&rec, Some((env.run, 7))).unwrap();
        // Time is stored at microsecond precision.
        assert_eq!(back.event, env.event);
        assert_eq!(back.time.timestamp_micros(), env.time.timestamp_micros());
        assert!(matches!(
            decode(&rec, Some((env.run, 8))),
            Err(CodecError::Misplaced { seq: 7, .. })
        ));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let rec = encode(&sample(1)).unwrap();
        for i in 0..rec.len() {
            for bit in 0..8 {
                let mut bad = rec.clone();
                bad[i] ^= 1 << bit;
                assert!(decode(&bad, None).is_err(), "flip at byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn truncation_is_detected() {
        let rec = encode(&sample(1)).unwrap();
        for n in 0..rec.len() {
            assert!(decode(&rec[..n], None).is_err(), "truncated to {n}");
        }
    }

    /// Text that deflate cannot shrink much (6 bits of entropy a byte).
    fn noise(len: usize) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ALPHABET[(x % 64) as usize] as char
            })
            .collect()
    }

    #[test]
    fn oversized_event_is_refused() {
        let mut env = sample(1);
        env.event = Event::Note {
            text: noise(EVENT_BYTES_MAX * 2),
        };
        assert!(matches!(encode(&env), Err(CodecError::TooLarge(_))));
    }

    #[test]
    fn small_events_keep_version_1_and_large_ones_are_deflated() {
        let small = encode(&sample(1)).unwrap();
        assert_eq!(u16::from_be_bytes([small[0], small[1]]), PLAIN);
        // A 7.4 MiB plan text (100,000 steps) is over the event limit as it
        // is, and well under it deflated.
        let mut env = sample(1);
        let step = "[steps.s]\nkind = \"sleep\"\nwith = { duration = \"0s\" }\n";
        env.event = Event::Note {
            text: step.repeat(2 * EVENT_BYTES_MAX / step.len()),
        };
        let rec = encode(&env).unwrap();
        assert_eq!(u16::from_be_bytes([rec[0], rec[1]]), DEFLATED);
        assert!(rec.len() < EVENT_BYTES_MAX / 8, "{} bytes", rec.len());
        let back = decode(&rec, None).unwrap();
        assert!(back.event == env.event, "the event reads back changed");
        assert_eq!(back.time.timestamp_micros(), env.time.timestamp_micros());
        assert!(plain_body(&rec).unwrap().len() > 2 * EVENT_BYTES_MAX - step.len());
        // Damage is still caught before inflating.
        let mut bad = rec.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 1;
        assert!(matches!(
            decode(&bad, None),
            Err(CodecError::Checksum { .. })
        ));
    }

    #[test]
    fn a_deflated_body_may_not_inflate_without_bound() {
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1024 * 1024];
        for _ in 0..=INFLATED_BYTES_MAX / zeros.len() {
            std::io::Write::write_all(&mut z, &zeros).unwrap();
        }
        let body = z.finish().unwrap();
        let mut rec = Vec::with_capacity(HEADER_LEN + body.len());
        rec.extend_from_slice(&DEFLATED.to_be_bytes());
        rec.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
        rec.extend_from_slice(&body);
        let err = decode(&rec, None).unwrap_err();
        assert!(err.to_string().contains("inflates to more than"), "{err}");
    }

    #[test]
    fn keys_sort_by_run_then_seq() {
        let a = RunId::new();
        let b = RunId::new();
        assert!(key(a, u64::MAX) < key(b, 0));
        assert!(key(a, 255) < key(a, 256));
        assert_eq!(parse_key(&key(a, 42)).unwrap(), (a, 42));
    }
}
