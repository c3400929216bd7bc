//! `anomalyncd test --checkpoint CKPT`: evaluate a trained model on a crop folder.

use std::path::PathBuf;

use clap::Args;

use super::Ctx;

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Checkpoint written by `train` (checkpoint.safetensors; checkpoint.json beside it).
    #[arg(long, value_name = "CKPT")]
    pub checkpoint: PathBuf,
    /// Crop folder written by `binarize` (crops/, scores.json).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Anomaly maps, to binarize first instead of --data.
    #[arg(long, value_name = "DIR")]
    pub anomaly_maps: Option<PathBuf>,
    /// Images paired with --anomaly-maps.
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// Run folder for metrics.csv, predictions.csv, metrics.json, report.html.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

pub fn run(_args: &TestArgs, _ctx: &Ctx) -> anyhow::Result<()> {
    super::not_yet("test", "inference and metrics, issue #6")
}
