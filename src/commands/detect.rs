//! `anomalyncd detect --train DIR --test DIR --out DIR`: the built-in PatchCore-style detector
//! (see [`crate::detect`]); writes anomaly maps for `binarize` / `train`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::Ctx;
use crate::detect::features::{BACKBONES, DEFAULT_WEIGHTS_FILE};
use crate::detect::{self, DetectSpec, REPORT_FILE};
use crate::error::Error;

#[derive(Debug, Args)]
pub struct DetectArgs {
    /// Normal training images: TRAIN/<stem>.<ext> or TRAIN/<type>/<stem>.<ext> (e.g. MVTec's train/).
    #[arg(long, value_name = "DIR")]
    pub train: PathBuf,
    /// Test images: TEST/<type>/<stem>.<ext> (a `good` folder holds normal ones) or a flat folder.
    #[arg(long, value_name = "DIR")]
    pub test: PathBuf,
    /// Output folder: <type>/<stem>.png 8-bit maps on one scale, detect.json.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Ground-truth masks MASKS/<type>/<stem>.png (0/255) for pixel AUROC and AUPRO.
    #[arg(long, value_name = "DIR")]
    pub masks: Option<PathBuf>,
    /// Feature backbone.
    #[arg(long, default_value = "efficientnet-lite0", value_parser = clap::builder::PossibleValuesParser::new(BACKBONES))]
    pub backbone: String,
    /// Backbone weights (.pth state dict or .safetensors); default data/weights/efficientnet_lite0.pth
    /// (made by scripts/prepare_weights.sh).
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// Random backbone weights (tests only: the maps are meaningless).
    #[arg(long, hide = true, conflicts_with = "weights")]
    pub random_weights: bool,
    /// Images are resized to SIZE x SIZE; the maps have this size.
    #[arg(long, default_value_t = 256, value_name = "SIZE")]
    pub image_size: u32,
    /// Backbone stages whose outputs form the patch features (0-based; 2 = stride 8, 4 = stride 16).
    #[arg(long, value_delimiter = ',', default_values_t = [2usize, 4])]
    pub stages: Vec<usize>,
    /// Fraction of the pooled normal patches kept in the memory bank (greedy k-center coreset).
    #[arg(long, default_value_t = 0.1, value_name = "FRACTION")]
    pub coreset: f64,
    /// At most this many normal patches enter the coreset search (each image then keeps its
    /// N / images most spread-out patches); bounds fitting memory at N x feature dim x 4 bytes,
    /// and the search time grows with N squared.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub max_patches: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Seed of the patch subsets, the coreset start and its random projection.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write maps of the normal test images (TEST/good); off so that OUT holds only what
    /// binarize/train should group.
    #[arg(long)]
    pub write_good_maps: bool,
    /// Replace the files of a different earlier detect run in OUT.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(a: &DetectArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let weights = if a.random_weights {
        None
    } else {
        let p = match &a.weights {
            Some(p) => p.clone(),
            None => crate::model::find_in_weights_dir(DEFAULT_WEIGHTS_FILE).ok_or_else(|| {
                Error::usage(format!(
                    "--backbone {}: no weights at {}/{DEFAULT_WEIGHTS_FILE}; run scripts/prepare_weights.sh \
                     (scripts/setup.sh does) or pass --weights FILE",
                    a.backbone,
                    crate::model::DEFAULT_WEIGHTS_DIR
                ))
            })?,
        };
        if !p.is_file() {
            return Err(Error::input(&p, "--weights: file not found").into());
        }
        Some(p)
    };
    let spec = DetectSpec {
        train: a.train.clone(),
        test: a.test.clone(),
        out: a.out.clone(),
        masks: a.masks.clone(),
        backbone: a.backbone.clone(),
        weights,
        image_size: a.image_size,
        stages: a.stages.clone(),
        coreset: a.coreset,
        max_patches: a.max_patches,
        batch_size: a.batch_size,
        seed: a.seed,
        write_good_maps: a.write_good_maps,
        overwrite: a.overwrite,
        device: ctx.device,
    };
    let r = detect::run(&spec)
        .with_context(|| format!("detecting anomalies in {}", a.test.display()))?;
    let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.4}"));
    let m = &r.metrics;
    println!(
        "image AUROC {}  pixel AUROC {}  AUPRO {}  ({} defective, {} normal test images; memory bank {} of {} patches)",
        fmt(m.image_auroc),
        fmt(m.pixel_auroc),
        fmt(m.aupro),
        m.defect_test_images,
        m.normal_test_images,
        r.memory_bank,
        r.pool_patches
    );
    log::info!("maps and {REPORT_FILE} in {}", a.out.display());
    Ok(())
}
