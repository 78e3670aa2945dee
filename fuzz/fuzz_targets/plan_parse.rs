//! The plan parser on arbitrary text: errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let registry = upshift_steps::registry();
        let _ = upshift::plan::parse(
            std::path::Path::new("fuzz.toml"),
            text,
            &registry,
            &upshift::plan::LoadOptions::default(),
        );
    }
});
