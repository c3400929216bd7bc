//! Fuzzing with proptest: every reader of user data must give a result or a typed error (exit
//! code 2, "fix this input"), never a panic, a hang or a run-time error code, whatever the bytes.
//!
//! - config: arbitrary text, mutated valid YAML (also as raw bytes in a file) and `--set` lines;
//! - maps: arbitrary bytes and mutated PNGs as a map, PNGs of odd sizes, colour types and bit
//!   depths as map and image through the whole binarize library path (MEBin, crops, outputs), and
//!   MEBin + cropping on random maps and settings;
//! - checkpoints: arbitrary bytes, and a valid tiny checkpoint with byte flips, insertions and
//!   truncations, read and rebuilt into a model as `test`/`predict` do;
//! - weights: arbitrary bytes and mutated .pth / .safetensors files.
//!
//! The case counts are small so that the suite stays fast; `FUZZ_CASES=100000 cargo test
//! --release --test fuzz` runs every target that long (see docs/fuzzing.md).
//!
//! One module per target group: [`config`], [`maps`], [`checkpoints`] (with the weights files),
//! and [`mebin_props`] (MEBin's exactness against its oracle, also property tests). Regression
//! seeds: proptest's default place for a source file under a folder with `main.rs` is
//! `tests/proptest-regressions/<module>.txt` (e.g. `config.txt` for `tests/fuzz/config.rs`);
//! those files are committed and their cases run first.

#[path = "../common/mod.rs"]
mod common;

mod checkpoints;
mod config;
mod maps;
mod mebin_props;

use anomalyncd::Error;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Cases per target: `FUZZ_CASES` when set, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(default: u32) -> ProptestConfig {
    ProptestConfig {
        cases: cases(default),
        // a shrunk failing input is what the fix needs; keep shrinking short on long runs
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    }
}

/// A typed error that tells the user to fix an input (exit 2), or a test failure saying what
/// came back instead.
fn input_error(e: &Error, what: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        e.exit_code(),
        2,
        "{}: {} (exit code {})",
        what,
        e,
        e.exit_code()
    );
    let msg = e.to_string();
    prop_assert!(
        !msg.is_empty() && !msg.contains('\n'),
        "{}: not one line: {:?}",
        what,
        msg
    );
    Ok(())
}

/// Byte edits: (position fraction, kind, byte). Kind 0 flips bits, 1 inserts, 2 deletes, 3
/// overwrites, 4 truncates.
fn edits(max: usize) -> impl Strategy<Value = Vec<(f64, u8, u8)>> {
    prop::collection::vec((0.0f64..1.0, 0u8..5, any::<u8>()), 1..max)
}

fn mutate(mut b: Vec<u8>, edits: &[(f64, u8, u8)], focus: Option<usize>) -> Vec<u8> {
    for &(f, kind, byte) in edits {
        // half the edits land in the first `focus` bytes (a header), where parsers branch most
        let span = match focus {
            Some(n) if byte % 2 == 0 => n.min(b.len()),
            _ => b.len(),
        };
        let i = ((f * span as f64) as usize).min(span.saturating_sub(1));
        match kind {
            0 if !b.is_empty() => b[i] ^= byte | 1,
            1 => b.insert(i.min(b.len()), byte),
            2 if !b.is_empty() => {
                b.remove(i);
            }
            3 if !b.is_empty() => b[i] = byte,
            4 => b.truncate(i),
            _ => {}
        }
    }
    b
}
