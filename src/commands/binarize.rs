//! `anomalyncd binarize`: MEBin over a set of anomaly maps, then anomaly-centred crops.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::{Ctx, NormalTypes};
use crate::config::Config;
use crate::error::Error;
use crate::mebin::folders::binarize_folders;
use crate::mebin::RangeSource;

#[derive(Debug, Args)]
pub struct BinarizeArgs {
    /// Anomaly maps: MAPS/<type>/<stem>.<png|tif|npy> (8- or 16-bit images, float TIFF or float
    /// .npy; any size; a `good` folder holds normal images' maps).
    #[arg(long, value_name = "MAPS")]
    pub anomaly_maps: PathBuf,
    /// Original images: IMAGES/<type>/<stem>.<png|jpg|bmp|tif>, paired with maps by stem.
    #[arg(long, value_name = "IMAGES")]
    pub images: PathBuf,
    /// Output folder (binary/, crops/, scores.json, mebin.json).
    #[arg(long, value_name = "OUT")]
    pub out: PathBuf,
    /// Config file (binarization section).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override a config key, e.g. --set binarization.sample_rate=2 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
    /// Lower end of the threshold search range (raw map scale), for sets with no normal images.
    #[arg(long, value_name = "V")]
    pub min_threshold: Option<f64>,
    /// Skip maps without an image (and images without a map) with a warning instead of failing.
    #[arg(long)]
    pub skip_unpaired: bool,
    #[command(flatten)]
    pub normal: NormalTypes,
    /// Replace the files of a different earlier run in OUT.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(a: &BinarizeArgs, _ctx: &Ctx) -> anyhow::Result<()> {
    let cfg = Config::load(a.config.as_deref(), &a.set)?;
    let min_threshold = a.min_threshold.or(cfg.binarization.min_threshold);
    if let Some(v) = a.min_threshold {
        if !(v.is_finite() && v >= 0.0) {
            return Err(
                Error::usage(format!("--min-threshold {v}: must be a finite number >= 0")).into(),
            );
        }
    }
    let how = a.normal.pairing(a.skip_unpaired, false);
    let summary = binarize_folders(
        &a.anomaly_maps,
        &a.images,
        &a.out,
        &cfg,
        RangeSource::FromMaps { min_threshold },
        &how,
        a.overwrite,
    )
    .with_context(|| format!("binarizing {}", a.anomaly_maps.display()))?;
    let crops: usize = summary.records.iter().map(|r| r.crop_boxes.len()).sum();
    let empty = summary
        .records
        .iter()
        .filter(|r| r.est_anomaly_num == 0)
        .count();
    let peaks = summary.records.iter().filter(|r| r.peak_fallback).count();
    let normal = match summary.normal_maps {
        0 => String::new(),
        n => format!(" with {n} normal-image maps"),
    };
    log::info!(
        "{} maps binarized (search range [{}, {}]{normal}), {crops} crops, {empty} maps without a stable \
         interval ({peaks} cropped around their peak); outputs in {} (binary/, crops/, scores.json, mebin.json)",
        summary.records.len(),
        summary.min_th,
        summary.max_th,
        a.out.display()
    );
    Ok(())
}
