//! Stable-toolchain fuzzing: proptest drives the plan parser, the journal
//! decoder and the `GO` splitter with arbitrary input and with mutations of
//! valid input, asserting only that they answer (Ok or Err) without a panic,
//! and that a decoded record round-trips. The cargo-fuzz targets in `fuzz/`
//! do the same with coverage guidance on nightly.
//!
//! Bounded: `PROPTEST_CASES` cases per property (default 256 here); a longer
//! run: `PROPTEST_CASES=20000 cargo test --release --test fuzz_props`.
//! Crashes found become the regression tests at the end of this file.

use std::path::Path;

use proptest::prelude::*;
use upshift::plan::{LoadOptions, parse};
use upshift_journal::{Envelope, Event, RunId, codec};

const VALID_PLAN: &str = r#"
name = "demo"
[vars]
out = "/tmp/x"
[secrets]
pw = { env = "PW" }
[steps.prepare]
kind = "process"
with = { program = "mkdir", args = ["-p", "${vars.out}"] }
[steps.backup]
kind = "process"
needs = ["prepare"]
retry = { attempts = 3, backoff = "1s" }
timeout = "10m"
with = { program = "sh", args = ["-c", "echo ${secrets.pw}"] }
compensate = { kind = "process", with = { program = "rm", args = ["-f", "x"] } }
[steps.loop]
kind = "foreach"
needs = ["prepare"]
with = { items = ["a", "b"], program = "echo", args = ["${item}"] }
[steps.wait]
kind = "sleep"
needs = ["backup", "loop"]
with = { duration = "250ms" }
[steps.use]
kind = "process"
needs = ["wait"]
with = { program = "echo", args = ["${steps.backup.outputs.stdout}"] }
"#;

const VALID_SQL: &str = "CREATE TABLE t (a int)\nGO\n/* GO inside a comment\nGO */\nINSERT INTO t VALUES ('GO')\ngo 3\n-- GO\nSELECT 1\n";

fn cfg() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn parse_plan(text: &str) {
    let _ = parse(
        Path::new("fuzz.toml"),
        text,
        &upshift_steps::registry(),
        &LoadOptions::default(),
    );
}

fn decode_checked(data: &[u8]) {
    if let Ok(env) = codec::decode(data, None) {
        let again = codec::encode(&env).expect("a decoded event encodes");
        assert_eq!(codec::decode(&again, None).expect("re-decodes"), env);
    }
    let _ = codec::parse_key(data);
}

fn record() -> Vec<u8> {
    codec::encode(&Envelope {
        run: RunId::new(),
        seq: 42,
        time: chrono::Utc::now(),
        event: Event::StepFailed {
            step: "db.update".into(),
            attempt: 2,
            error: "deadlock".into(),
            output_tail: "tail".into(),
            transient: true,
        },
    })
    .expect("encode")
}

/// Edits applied to a valid input: (position fraction, kind, payload).
fn edits() -> impl Strategy<Value = Vec<(f64, u8, String)>> {
    prop::collection::vec(
        (0.0..1.0f64, 0u8..3, "[\\PC\"\\[\\]{}=$.\n\\\\]{0,12}"),
        1..6,
    )
}

fn mutate(base: &str, edits: &[(f64, u8, String)]) -> String {
    let mut s = base.to_string();
    for (at, kind, text) in edits {
        let mut i = ((s.len() as f64) * at) as usize;
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        match kind {
            0 => s.insert_str(i, text),
            1 => {
                let mut end = (i + text.len().max(1)).min(s.len());
                while !s.is_char_boundary(end) {
                    end += 1;
                }
                s.replace_range(i..end, "");
            }
            _ => {
                let mut end = (i + text.len()).min(s.len());
                while !s.is_char_boundary(end) {
                    end += 1;
                }
                s.replace_range(i..end, text);
            }
        }
    }
    s
}

proptest! {
    #![proptest_config(cfg())]

    #[test]
    fn plan_parser_never_panics_on_arbitrary_text(text in "\\PC{0,400}") {
        parse_plan(&text);
    }

    #[test]
    fn plan_parser_never_panics_on_mutated_plans(e in edits()) {
        parse_plan(&mutate(VALID_PLAN, &e));
    }

    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..300)) {
        decode_checked(&data);
    }

    #[test]
    fn decoder_never_panics_on_mutated_records(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        recompute_crc in any::<bool>(),
    ) {
        let mut rec = record();
        for (i, b) in &flips {
            let n = rec.len();
            rec[i.index(n)] = *b;
        }
        if recompute_crc && rec.len() > 6 {
            // Get past the checksum, so the bincode body decoder is what
            // meets the damage.
            let crc = crc32fast_hash(&rec[6..]);
            rec[2..6].copy_from_slice(&crc.to_be_bytes());
        }
        let n = rec.len();
        rec.truncate(cut.index(n + 1).max(1));
        decode_checked(&rec);
    }
    #[test]
    fn go_splitter_never_panics(text in "(\\PC|\n|GO|go|/\\*|\\*/|--|'|\\[|\\]){0,200}") {
        let _ = upshift_steps::kinds::sql::go_split::split(&text);
    }
    #[test]
    fn go_splitter_never_panics_on_mutated_scripts(e in edits()) {
        let _ = upshift_steps::kinds::sql::go_split::split(&mutate(VALID_SQL, &e));
    }
}

/// CRC-32 (IEEE), as the codec computes it, without a dependency.
fn crc32fast_hash(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn the_valid_inputs_are_valid() {
    // The mutations start from inputs that parse, so they reach deep code.
    parse(
        Path::new("fuzz.toml"),
        VALID_PLAN,
        &upshift_steps::registry(),
        &LoadOptions::default(),
    )
    .expect("valid plan");
    assert!(
        upshift_steps::kinds::sql::go_split::split(VALID_SQL)
            .expect("valid")
            .len()
            >= 3
    );
    let rec = record();
    assert_eq!(crc32fast_hash(&rec[6..]).to_be_bytes(), rec[2..6]);
    decode_checked(&rec);
}

// ---------------------------------------------------------------------------
// Regressions: every crash the fuzzing found.

/// Found by `go_splitter_never_panics` (minimal input "ண"): a script line
/// whose first character is multi-byte (a Tamil, Chinese, accented... word,
/// e.g. in a comment) panicked in `go_line` at `t[..2]`, a byte index inside
/// the character. Fixed with `t.get(..2)`.
#[test]
fn go_split_non_ascii_first_char() {
    for script in [
        "ண",
        "é",
        "Éxécuter\nGO\n",
        "SELECT 1\n-- ok\n中文注释\nGO\n",
    ] {
        let r = std::panic::catch_unwind(|| upshift_steps::kinds::sql::go_split::split(script));
        assert!(r.is_ok(), "split panicked on {script:?}");
    }
}
