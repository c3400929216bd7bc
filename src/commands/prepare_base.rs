//! `anomalyncd prepare-base`: crop a labelled base set by its ground-truth masks.

use std::path::PathBuf;

use clap::Args;

use super::Ctx;

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
    /// Replace the files of a different earlier run in OUT.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(_args: &PrepareBaseArgs, _ctx: &Ctx) -> anyhow::Result<()> {
    super::not_yet("prepare-base", "MEBin cropping, issue #3")
}
