//! `anomalyncd test --checkpoint CKPT`: evaluate a trained model on a crop folder (see
//! [`anomalyncd::pipeline::test`]).

use std::path::PathBuf;

use clap::Args;

use super::{CropSource, Ctx};
use anomalyncd::pipeline::{self, TestSpec};

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Checkpoint written by `train` (checkpoint.safetensors, or its run folder). Without --data
    /// or --anomaly-maps, the crops of its training run are evaluated.
    #[arg(long, value_name = "CKPT")]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub crops: CropSource,
    /// Folder for metrics.csv, predictions.csv, metrics.json, report.html (default: the checkpoint's
    /// folder).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Replace the files of a different earlier run in OUT (and OUT/binarize).
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(a: &TestArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let spec = TestSpec {
        checkpoint: a.checkpoint.clone(),
        crops: a.crops.input(false)?,
        out: a.out.clone(),
        inputs: a.crops.inputs(),
        overwrite: a.overwrite,
        device: ctx.device,
    };
    let r = pipeline::test(&spec)?;
    match r.scores {
        Some(s) => println!("{}: {s}  (image level; {})", r.category, r.out.display()),
        None => println!(
            "predictions written to {}",
            r.out.join("predictions.csv").display()
        ),
    }
    Ok(())
}
