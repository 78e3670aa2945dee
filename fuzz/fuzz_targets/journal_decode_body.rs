//! The journal decoder past its checksum: the input is a record *body*; the
//! target prepends a valid header (version 1, the body's CRC-32), so every
//! input reaches the bincode decoder (where a declared length of 2^62 once
//! aborted the process). An error, never a panic or an abort.
#![no_main]

use libfuzzer_sys::fuzz_target;
use upshift_journal::codec;

fuzz_target!(|body: &[u8]| {
    let mut record = Vec::with_capacity(body.len() + 6);
    record.extend_from_slice(&codec::FORMAT_VERSION.to_be_bytes());
    record.extend_from_slice(&crc32fast::hash(body).to_be_bytes());
    record.extend_from_slice(body);
    if let Ok(env) = codec::decode(&record, None) {
        let again = codec::encode(&env).expect("a decoded event encodes");
        assert_eq!(codec::decode(&again, None).expect("re-decodes"), env);
    }
});
