//! The journal decoder on arbitrary records: an error, never a panic; and a
//! record that decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use upshift_journal::codec;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = codec::decode(data, None) {
        let again = codec::encode(&env).expect("a decoded event encodes");
        assert_eq!(
            codec::decode(&again, None).expect("re-decodes"),
            env,
            "decode . encode is not the identity"
        );
    }
    let _ = codec::parse_key(data);
});
