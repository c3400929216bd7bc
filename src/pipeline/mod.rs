//! The stages chained as the commands run them: each function takes a validated spec, runs
//! MEBin, the model, region merging and the report as needed, and returns what the command
//! prints. `anomalyncd <command>` only turns its flags into the spec.
//!
//! - [`train()`]: binarize → (estimate K) → train → evaluate → run folder;
//! - [`test()`]: a checkpoint on a crop folder, or on maps binarized with its stored range;
//! - [`predict()`]: new images and maps → clusters named by the classes matched in training;
//! - [`baseline()`]: k-means on the pretrained class tokens, no training;
//! - [`discover::run`]: all of it from a folder of images: base set, detector maps, MEBin,
//!   K, training and report in one run folder, resumable stage by stage.
//!
//! `mebin::run` and `detect::run` are stages of their own and need nothing from here.

mod baseline;
pub mod discover;
mod evaluate;
mod neighbours;
mod pooled;
mod pretrained;
mod train;

use std::path::{Path, PathBuf};

pub use baseline::{run as baseline, BaselineOutcome, BaselineSpec};
pub use evaluate::{predict, test, PredictOutcome, PredictSpec, TestOutcome, TestSpec};
pub use neighbours::NEIGHBOUR_FEATURES_FILES;
pub use pooled::{run as pooled, PooledOutcome, PooledSpec};
pub use train::{run as train, Timing, TokenCache, TrainOutcome, TrainSpec};

use crate::config::Binarization;
use crate::error::{Result, ResultExt};
use crate::mebin::{BinarizeSpec, Pairing, RangeSource};

/// Where `test` and `baseline` read their crops.
#[derive(Debug, Clone)]
pub enum CropInput {
    /// A `binarize` output (`crops/`, `scores.json`).
    Folder(PathBuf),
    /// Anomaly maps and their images, binarized into `<out>/binarize` first.
    Maps {
        maps: PathBuf,
        images: PathBuf,
        pairing: Pairing,
    },
}

impl CropInput {
    /// The crop folder: the given one, or `out/binarize` after binarizing the maps with `range`.
    fn resolve(
        &self,
        out: &Path,
        binarization: &Binarization,
        range: impl FnOnce() -> Result<RangeSource>,
        overwrite: bool,
    ) -> Result<PathBuf> {
        match self {
            CropInput::Folder(d) => Ok(d.clone()),
            CropInput::Maps {
                maps,
                images,
                pairing,
            } => {
                let dir = out.join("binarize");
                let spec = BinarizeSpec {
                    maps: maps.clone(),
                    images: images.clone(),
                    out: dir.clone(),
                    binarization: binarization.clone(),
                    range: range()?,
                    pairing: pairing.clone(),
                    overwrite,
                };
                crate::mebin::run(&spec)
                    .with_context(|| format!("binarizing the maps in {}", maps.display()))?;
                Ok(dir)
            }
        }
    }
}

/// Adds `out/log.txt` to the log's outputs.
fn add_log_file(out: &Path) -> Result<()> {
    crate::logging::add_log_file(&out.join("log.txt"))
        .map_err(|e| io_context(e, format!("opening {}/log.txt", out.display())))
}

/// An I/O error with what was being done, read as `msg: error` (as `anyhow::Context` gives).
fn io_context(e: std::io::Error, msg: String) -> crate::error::Error {
    crate::error::Error::Context {
        msg,
        source: Box::new(crate::error::Error::Runtime(e.to_string())),
    }
}
