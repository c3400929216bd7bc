//! `anomalyncd binarize`: MEBin over a set of anomaly maps, then anomaly-centred crops.

use std::path::PathBuf;

use clap::Args;

use super::Ctx;

#[derive(Debug, Args)]
pub struct BinarizeArgs {
    /// Anomaly maps: MAPS/<type>/<stem>.png (8- or 16-bit grayscale, any size).
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
    /// Replace the files of a different earlier run in OUT.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(_args: &BinarizeArgs, _ctx: &Ctx) -> anyhow::Result<()> {
    super::not_yet("binarize", "MEBin, issue #3")
}
