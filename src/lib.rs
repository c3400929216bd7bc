//! anomalyncd: discover the kinds of defects in industrial images without labels.
//!
//! One module per pipeline stage: [`mebin`] (adaptive binarization and anomaly-centred crops),
//! [`model`] (mask-guided ViT and projector), [`train`] (losses), [`infer`] (region merging),
//! [`metrics`] (NMI / ARI / Hungarian F1), [`report`] (HTML report and contact sheets);
//! [`detect`] (a built-in PatchCore-style detector); [`mtd`] (Magnetic-Tile-Defect to MVTec
//! layout); [`synth`]
//! makes a synthetic dataset; [`commands`] is the command edge used by the binary.

pub mod cli;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod data;
pub mod detect;
pub mod device;
pub mod error;
pub mod fsutil;
pub mod imageio;
pub mod infer;
pub mod logging;
pub mod mebin;
pub mod metrics;
pub mod model;
pub mod mtd;
pub mod report;
pub mod synth;
pub mod train;

pub use error::{Error, Result};
