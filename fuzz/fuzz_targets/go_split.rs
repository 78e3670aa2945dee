//! The sqlcmd `GO` splitter on arbitrary scripts: an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = upshift_steps::kinds::sql::go_split::split(text);
    }
});
