//! Regressions from fuzzing the decoder (tests/fuzz_props.rs): a record
//! whose checksum matches but whose body declares a huge length must be an
//! error, not an allocation of exabytes that aborts the process.

use upshift_journal::{Envelope, Event, RunId, codec};

/// A valid record of a note `text`, with the note's length prefix replaced
/// by `len` (bincode varint: 0xFD then a u64 LE) and the CRC recomputed.
fn record_claiming(len: u64) -> Vec<u8> {
    let env = Envelope {
        run: RunId::new(),
        seq: 1,
        time: chrono::Utc::now(),
        event: Event::Note {
            text: "needle".into(),
        },
    };
    let rec = codec::encode(&env).unwrap();
    let pos = rec
        .windows(7)
        .position(|w| w == b"\x06needle")
        .expect("length prefix of the note");
    let mut bad = rec[..pos].to_vec();
    bad.push(0xFD);
    bad.extend_from_slice(&len.to_le_bytes());
    bad.extend_from_slice(b"needle");
    let crc = crc(&bad[6..]);
    bad[2..6].copy_from_slice(&crc.to_be_bytes());
    bad
}

fn crc(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for b in data {
        c ^= u32::from(*b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

#[test]
fn a_huge_declared_length_is_an_error_not_an_abort() {
    for len in [u64::MAX, u64::MAX / 2, 1 << 40, 7_738_151_096_083_899_748] {
        let bad = record_claiming(len);
        assert!(codec::decode(&bad, None).is_err(), "len {len}");
    }
}

#[test]
fn the_crafted_record_is_otherwise_well_formed() {
    // Same construction with the true length decodes: the test above
    // exercises the length, not a broken header.
    let ok = record_claiming(6);
    let env = codec::decode(&ok, None).unwrap();
    assert_eq!(
        env.event,
        Event::Note {
            text: "needle".into()
        }
    );
}
