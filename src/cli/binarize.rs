//! `anomalyncd binarize`: MEBin over a set of anomaly maps, then anomaly-centred crops (see
//! [`anomalyncd::mebin::run`]).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::{Ctx, NormalTypes};
use anomalyncd::config::Config;
use anomalyncd::error::Error;
use anomalyncd::mebin::{BinarizeSpec, RangeSource};

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
    if let Some(v) = a.min_threshold {
        if !(v.is_finite() && v >= 0.0) {
            return Err(
                Error::usage(format!("--min-threshold {v}: must be a finite number >= 0")).into(),
            );
        }
    }
    let spec = BinarizeSpec {
        maps: a.anomaly_maps.clone(),
        images: a.images.clone(),
        out: a.out.clone(),
        binarization: cfg.binarization.clone(),
        range: RangeSource::FromMaps {
            min_threshold: a.min_threshold.or(cfg.binarization.min_threshold),
        },
        pairing: a.normal.pairing(a.skip_unpaired, false),
        overwrite: a.overwrite,
    };
    let summary = anomalyncd::mebin::run(&spec)
        .with_context(|| format!("binarizing {}", a.anomaly_maps.display()))?;
    log::info!("{}", summary.describe(&a.out));
    Ok(())
}
