//! Bad inputs across every command: each case checks the exit code (2: fix an input, flag or
//! config; 1: run-time failure), that stderr names the culprit (file, folder, flag or key), that
//! nothing reads like a crash (panic, "internal error", backtrace) and that no input file changed
//! (the input trees are hashed before and after). Inputs that must work (odd map formats, sizes,
//! non-UTF-8 and space-holding paths, tiny sets) are asserted to succeed with the documented
//! result. Training cases use the tiny `vit_tiny` backbone on a small synthetic set.
//!
//! One module per group of commands: [`binarize`], [`config`], [`others`] (prepare-base, detect,
//! prepare-mtd, synth, `--device`) and [`train`] (train, test, predict).

mod binarize;
mod config;
mod others;
mod train;

use std::path::Path;

use crate::common::*;

/// `binarize --anomaly-maps ROOT/maps --images ROOT/images --out OUT EXTRA…`.
fn binarize(root: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let folders = [("--anomaly-maps", "maps"), ("--images", "images")];
    cli_on_folders("binarize", root, &folders, out, extra)
}

/// A map set under a fresh temporary folder, with a guard over its inputs.
fn set(types: &[&str], n: usize) -> (tempfile::TempDir, Untouched) {
    let d = tempfile::tempdir().unwrap();
    map_set(d.path(), types, n);
    let g = Untouched::new(&[d.path().join("maps"), d.path().join("images")]);
    (d, g)
}

/// Records of `OUT/mebin.json`.
fn records(out: &Path) -> Vec<serde_json::Value> {
    read_json(&out.join("mebin.json"))["records"]
        .as_array()
        .unwrap()
        .clone()
}

/// Replaces every map of `root/maps/a/` with `make(i)`.
fn replace_maps(root: &Path, n: usize, make: impl Fn(usize, &Path)) {
    for i in 0..n {
        make(i, &root.join(format!("maps/a/s{i}.png")));
    }
}
