//! The commands end to end: each test runs the `anomalyncd` binary (or, for `binarize`, also its
//! library path) on inputs it writes itself or on `../shared` (skipped with a printed reason when
//! absent). One module per command or area:
//!
//! - [`surface`]: `--help` of every command, `--version`, `config check/show`, exit codes,
//!   `synth`;
//! - [`binarize`] (raw and fallback maps in `binarize::maps`), [`prepare_base`], [`prepare_mtd`];
//! - [`detect`] (and `maps-eval` in `detect::maps_eval`);
//! - [`train`] (`train`, `test`, `predict`) and [`num_classes`] (flat folders, `--num-classes
//!   auto`, the k-means baseline);
//! - [`discover`]: the one-command pipeline (stage plan, resume in each stage, bad inputs);
//! - [`devices`]: the training path with `--device cpu --threads 1` given explicitly;
//! - [`scripts`]: the multi-GPU category queue of `scripts/anomalyncd.sh` (its self-test);
//! - [`quality_bench`]: `experiments/quality_bench.sh` and its report on the synthetic protocol;
//! - [`bad_inputs`]: bad inputs across every command.
//!
//! [`common`] holds the helpers they share (running the binary, checking failures, fixtures).

#[path = "../common/mod.rs"]
mod common;

mod bad_inputs;
mod binarize;
mod detect;
mod devices;
mod discover;
mod num_classes;
mod prepare_base;
mod prepare_mtd;
mod quality_bench;
mod scripts;
mod surface;
mod train;
