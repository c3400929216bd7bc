//! anomalyncd: discover the kinds of defects in industrial images without labels.
//!
//! One module per pipeline stage: [`mebin`] (adaptive binarization and anomaly-centred crops),
//! [`model`] (mask-guided ViT and projector), [`metrics`] (NMI / ARI / Hungarian F1); [`synth`]
//! makes a synthetic dataset; [`commands`] is the command edge used by the binary.

pub mod cli;
pub mod commands;
pub mod config;
pub mod device;
pub mod error;
pub mod fsutil;
pub mod imageio;
pub mod logging;
pub mod mebin;
pub mod model;
pub mod synth;

pub use error::{Error, Result};
