//! `anomalyncd prepare-base`: crop a labelled base set by its ground-truth masks.

use std::path::PathBuf;

use clap::Args;

use super::Ctx;
use anomalyncd::mebin::base::PrepareBaseSpec;

#[derive(Debug, Args)]
pub struct PrepareBaseArgs {
    /// Base images: DIR/<class>/<stem>.<png|jpg|bmp|tif>.
    #[arg(long, value_name = "DIR")]
    pub images: PathBuf,
    /// Ground-truth masks: DIR/<class>/<stem>.png (same stems as the images).
    #[arg(long, value_name = "DIR")]
    pub masks: PathBuf,
    /// Output folder: OUT/images/<class>/…, OUT/masks/<class>/….
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// At most this many crops per image (the reference's aebad_preprocess uses 2).
    #[arg(long, default_value_t = 2)]
    pub max_crops: usize,
    /// Use at most this many images per class, spread evenly over each class's sorted stems
    /// (a smaller base set trains faster; the paper uses all).
    #[arg(long, value_name = "N")]
    pub max_per_class: Option<usize>,
    /// Replace the files of a different earlier run in OUT.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(a: &PrepareBaseArgs, _ctx: &Ctx) -> anyhow::Result<()> {
    let spec = PrepareBaseSpec {
        images: a.images.clone(),
        masks: a.masks.clone(),
        out: a.out.clone(),
        max_crops: a.max_crops,
        max_per_class: a.max_per_class,
        overwrite: a.overwrite,
    };
    let summary = anomalyncd::mebin::base::run(&spec)?;
    let crops: usize = summary.records.iter().map(|r| r.crop_boxes.len()).sum();
    let classes: std::collections::BTreeSet<&str> = summary
        .records
        .iter()
        .map(|r| r.class_name.as_str())
        .collect();
    log::info!(
        "{} images of {} classes cropped into {crops} crops; outputs in {} (images/, masks/, prepare_base.json)",
        summary.records.len(),
        classes.len(),
        a.out.display()
    );
    Ok(())
}
