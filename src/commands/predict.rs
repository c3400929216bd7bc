//! `anomalyncd predict`: assign new images to the discovered defect types. The new maps are
//! binarized with the threshold search range stored in the checkpoint, so a single image works.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use super::{Ctx, NormalTypes};
use crate::infer::trained;
use crate::mebin::folders::binarize_folders;
use crate::mebin::RangeSource;

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
    /// Output folder: predictions.csv, crop_predictions.csv, report.html, binarize/.
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
    let t = trained::load(&a.checkpoint, ctx.device)?;
    let range = super::test::stored_range(&t.meta)?;
    let fingerprint =
        serde_json::json!({"checkpoint": crate::fsutil::absolute_value(&a.checkpoint)});
    crate::fsutil::prepare_output_dir(
        &a.out,
        &[("--images", &a.images), ("--anomaly-maps", &a.anomaly_maps)],
        "predict",
        &fingerprint,
        a.overwrite,
    )?;
    crate::logging::add_log_file(&a.out.join("log.txt"))
        .with_context(|| format!("opening {}/log.txt", a.out.display()))?;
    let bin = a.out.join("binarize");
    let how = a.normal.pairing(a.skip_unpaired, false);
    binarize_folders(
        &a.anomaly_maps,
        &a.images,
        &bin,
        &t.meta.config,
        RangeSource::Fixed(range, t.meta.float_scale),
        &how,
        a.overwrite,
    )?;
    let set = Arc::new(trained::novel_set(&t.meta, &bin)?);
    let preds = trained::run(&t, set.clone(), ctx.device)?;
    let table = a.out.join("metrics.csv");
    let head = t.meta.chosen_head;
    let names = &t.meta.cluster_classes;
    super::write_outputs(
        &a.out,
        &table,
        &t.meta.category,
        &set,
        &preds,
        head,
        &bin,
        names,
    )?;
    let mut sizes = vec![0usize; t.meta.num_novel_clusters];
    for r in &preds.images {
        sizes[r.cluster] += 1;
    }
    println!(
        "{} images assigned to {} clusters (sizes {:?}); predictions in {}",
        preds.images.len(),
        t.meta.num_novel_clusters,
        sizes,
        a.out.join("predictions.csv").display()
    );
    Ok(())
}
