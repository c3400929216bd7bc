//! `anomalyncd predict`: assign new images to the discovered defect types (see
//! [`anomalyncd::pipeline::predict`]).

use std::path::PathBuf;

use clap::Args;

use super::{Ctx, NormalTypes};
use anomalyncd::pipeline::{self, PredictSpec};

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Checkpoint written by `train` (checkpoint.safetensors, or its run folder).
    #[arg(long, value_name = "CKPT")]
    pub checkpoint: PathBuf,
    /// New images: a flat folder, or <type>/ sub-folders.
    #[arg(long, value_name = "DIR")]
    pub images: PathBuf,
    /// Their anomaly maps, same layout and stems.
    #[arg(long, value_name = "DIR")]
    pub anomaly_maps: PathBuf,
    /// Output folder: predictions.csv, crop_predictions.csv, class_tokens.safetensors, report.html,
    /// binarize/.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Skip maps without an image (and images without a map) with a warning.
    #[arg(long)]
    pub skip_unpaired: bool,
    #[command(flatten)]
    pub normal: NormalTypes,
    /// Replace the files of a different earlier run in OUT.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(a: &PredictArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let spec = PredictSpec {
        checkpoint: a.checkpoint.clone(),
        images: a.images.clone(),
        maps: a.anomaly_maps.clone(),
        out: a.out.clone(),
        pairing: a.normal.pairing(a.skip_unpaired, false),
        overwrite: a.overwrite,
        device: ctx.device,
    };
    let r = pipeline::predict(&spec)?;
    println!(
        "{} images assigned to {} clusters (sizes {:?}); predictions in {}",
        r.images,
        r.cluster_sizes.len(),
        r.cluster_sizes,
        r.predictions.display()
    );
    Ok(())
}
