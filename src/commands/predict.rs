//! `anomalyncd predict`: assign new images to the discovered defect types.

use std::path::PathBuf;

use clap::Args;

use super::Ctx;

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Checkpoint written by `train`.
    #[arg(long, value_name = "CKPT")]
    pub checkpoint: PathBuf,
    /// New images (flat or with sub-folders).
    #[arg(long, value_name = "DIR")]
    pub images: PathBuf,
    /// Their anomaly maps (same stems).
    #[arg(long, value_name = "DIR")]
    pub anomaly_maps: PathBuf,
    /// Output folder for predictions.csv.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

pub fn run(_args: &PredictArgs, _ctx: &Ctx) -> anyhow::Result<()> {
    super::not_yet("predict", "online inference, issue #6")
}
