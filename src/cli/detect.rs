//! `anomalyncd detect --train DIR | --zero-shot --test DIR --out DIR`: the built-in detector
//! (see [`anomalyncd::detect`]); writes anomaly maps for `binarize` / `train`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::Ctx;
use anomalyncd::config::{CnnMix, ImageSize, Precision};
use anomalyncd::detect::features::{
    backbone_name, resolve_weights, Resize, BACKBONES, BACKBONE_ALIASES, EFFICIENTNET,
};
use anomalyncd::detect::{self, DetectSpec, REPORT_FILE};

#[derive(Debug, Args)]
pub struct DetectArgs {
    /// Normal training images: TRAIN/<stem>.<ext> or TRAIN/<type>/<stem>.<ext> (e.g. MVTec's train/).
    #[arg(long, value_name = "DIR", required_unless_present = "zero_shot")]
    pub train: Option<PathBuf>,
    /// Test images: TEST/<type>/<stem>.<ext> (a `good` folder holds normal ones) or a flat folder.
    #[arg(long, value_name = "DIR")]
    pub test: PathBuf,
    /// Output folder: <type>/<stem>.png 8-bit maps on one scale, detect.json.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Ground-truth masks MASKS/<type>/<stem>.png (0/255): localisation, pixel AUROC and AUPRO.
    #[arg(long, value_name = "DIR")]
    pub masks: Option<PathBuf>,
    /// No normal images: score each test image against other test images (MuSc-style).
    #[arg(long, conflicts_with = "train")]
    pub zero_shot: bool,
    /// Zero-shot: at most this many test images (seeded random) are the references.
    #[arg(long, default_value_t = detect::DEFAULT_ZERO_SHOT_REFS, value_name = "N")]
    pub zero_shot_refs: usize,
    /// Zero-shot: a patch's score is the mean of this fraction of its lowest per-reference
    /// distances.
    #[arg(long, default_value_t = detect::DEFAULT_ZERO_SHOT_FRACTION, value_name = "FRACTION")]
    pub zero_shot_fraction: f64,
    /// The softmax temperature (relative to each image's score spread) of the images' patch
    /// features pooled under their maps, written beside them for `discover`'s train stage.
    #[arg(long, default_value_t = detect::DEFAULT_POOL_TAU, value_name = "T")]
    pub pool_tau: f64,
    /// Feature backbone.
    #[arg(long, default_value = BACKBONES[0], value_parser = backbone_parser())]
    pub backbone: String,
    /// Backbone weights (.pth state dict or .safetensors); default data/weights/dinov2_vits14.safetensors
    /// or data/weights/efficientnet_lite0.pth (made by scripts/prepare_weights.sh).
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// Random backbone weights (tests only: the maps are meaningless).
    #[arg(long, hide = true, conflicts_with = "weights")]
    pub random_weights: bool,
    /// The backbone input's longer side in pixels (both sides with --resize square), or `auto`;
    /// the maps have the input's size. Default for dinov2-vits14: auto, 672 when the test
    /// images' median longer side is at least 672, else 448; for efficientnet-lite0: 256.
    #[arg(long, value_name = "SIZE|auto")]
    pub image_size: Option<ImageSize>,
    /// aspect: keep the aspect ratio; square: squash to SIZE x SIZE (PatchCore). Default aspect
    /// for dinov2-vits14, square for efficientnet-lite0.
    #[arg(long, value_parser = ["aspect", "square"])]
    pub resize: Option<String>,
    /// ViT blocks (1-based) whose patch tokens, each through the final norm, are averaged.
    #[arg(long, value_delimiter = ',', default_values_t = detect::DEFAULT_BLOCKS)]
    pub blocks: Vec<usize>,
    /// Average each patch feature over its K x K neighbourhood (odd; 1: none). Default 1 for
    /// dinov2-vits14, 3 (PatchCore's) for efficientnet-lite0.
    #[arg(long, value_name = "K")]
    pub aggregate: Option<i64>,
    /// dinov2-vits14: score each of --blocks on its own and average the scores (MuSc), instead
    /// of scoring the blocks' mean.
    #[arg(long)]
    pub per_block: bool,
    /// dinov2-vits14: several neighbourhood sides (odd, e.g. 1,3,5, MuSc's), each scored on its
    /// own and the scores averaged; instead of --aggregate.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "K1,K2,...",
        conflicts_with = "aggregate"
    )]
    pub aggregate_sizes: Vec<i64>,
    /// With --train: mix this weight of the zero-shot mutual score (against --zero-shot-refs
    /// other test images) into the fitted score, each on its own scale (0: off).
    #[arg(long, default_value_t = 0.0, value_name = "W")]
    pub fuse_mutual: f64,
    /// With --train and the ViT: fit a second detector on EfficientNet-Lite0 (its weights from
    /// data/weights/) and mix this weight of its maps into the ViT's, each on its own scale
    /// (0: off; e.g. 0.5). The CNN localises better on some objects, the ViT on textures.
    /// `auto`: score a few normal images as if held out (against the banks without their own
    /// patches) and mix the CNN in at 0.5 only where
    /// they show it separating normal from flagged images clearly better than the ViT.
    #[arg(long, default_value_t = CnnMix::OFF, value_name = "W|auto")]
    pub fuse_cnn: CnnMix,
    /// With --train: hold this fraction of the normal images out of the memory bank and score
    /// them; detect.json's `normal_floor.floor` (the mean of their maps' maxima on the maps'
    /// 8-bit scale, at least MEBin's own lower end) is then a floor for MEBin
    /// (`binarize --min-threshold`). 0: off.
    #[arg(long, default_value_t = 0.0, value_name = "FRACTION")]
    pub holdout_normals: f64,
    /// The maps' Gaussian blur: sigma at a map side of 256, scaled with the map (PatchCore's
    /// 4; 0: none).
    #[arg(long, default_value_t = 4.0, value_name = "SIGMA")]
    pub blur: f64,
    /// EfficientNet stages whose outputs form the patch features (0-based; 2 = stride 8, 4 = stride 16).
    #[arg(long, value_delimiter = ',', default_values_t = detect::DEFAULT_STAGES)]
    pub stages: Vec<usize>,
    /// The ViT's precision: auto (bf16 on CUDA, and on a CPU whose bf16 GEMMs timed at least
    /// 1.3x faster than fp32's; timed once per machine), fp32, bf16. The similarities are fp32
    /// always.
    #[arg(long, default_value = "auto", value_parser = ["auto", "fp32", "bf16"])]
    pub precision: String,
    /// Fraction of the pooled normal patches kept in the memory bank (greedy k-center coreset).
    #[arg(long, default_value_t = detect::DEFAULT_CORESET, value_name = "FRACTION")]
    pub coreset: f64,
    /// At most this many normal patches enter the coreset search (each image then keeps its
    /// N / images most spread-out patches); bounds fitting memory at N x feature dim x 4 bytes,
    /// and the search time grows with N squared.
    #[arg(long, default_value_t = detect::DEFAULT_MAX_PATCHES, value_name = "N")]
    pub max_patches: usize,
    /// Images per forward pass (images of equal input size are batched).
    #[arg(long, default_value_t = detect::DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    /// Seed of the patch subsets, the coreset start and its random projection, and the
    /// zero-shot references.
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

/// `--backbone`: one of [`BACKBONES`] (listed in the help) or an alias, read as the backbone's
/// own name.
fn backbone_parser() -> impl clap::builder::TypedValueParser<Value = String> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    let values = BACKBONES.iter().map(|&b| {
        let aliases = BACKBONE_ALIASES.iter().filter(move |(_, to)| *to == b);
        aliases.fold(PossibleValue::new(b), |v, (alias, _)| v.alias(*alias))
    });
    PossibleValuesParser::new(values).map(|s| {
        backbone_name(&s)
            .expect("clap checked the name")
            .to_string()
    })
}

pub fn run(a: &DetectArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let weights = match a.random_weights {
        true => None,
        false => Some(resolve_weights(&a.backbone, a.weights.as_deref())?),
    };
    let vit = a.backbone != EFFICIENTNET;
    let resize = match a.resize.as_deref() {
        Some(r) => Resize::parse(r).expect("clap checked the value"),
        None if vit => Resize::Aspect,
        None => Resize::Square,
    };
    let image_size = match (a.image_size.unwrap_or_default(), vit) {
        (ImageSize::Auto, false) => detect::DEFAULT_CNN_IMAGE_SIZE,
        (size, _) => detect::resolve_image_size_of(size, &a.test, "--test", "--image-size")?,
    };
    let precision = match a.precision.as_str() {
        "fp32" => Precision::Fp32,
        "bf16" => Precision::Bf16,
        _ => Precision::Auto,
    };
    let spec = DetectSpec {
        train: a.train.clone(),
        test: a.test.clone(),
        out: a.out.clone(),
        masks: a.masks.clone(),
        backbone: a.backbone.clone(),
        weights,
        image_size,
        resize,
        stages: a.stages.clone(),
        blocks: a.blocks.clone(),
        aggregate: a.aggregate,
        per_block: a.per_block,
        aggregate_sizes: a.aggregate_sizes.clone(),
        fuse_mutual: a.fuse_mutual,
        fuse_cnn: a.fuse_cnn,
        cnn_weights: match (a.random_weights, a.fuse_cnn) {
            (true, _) => None,
            (false, CnnMix::Auto) => anomalyncd::detect::find_cnn_weights(),
            (false, w) if w.is_on() => Some(resolve_weights(EFFICIENTNET, None)?),
            (false, _) => None,
        },
        holdout: a.holdout_normals,
        blur: a.blur,
        precision,
        coreset: a.coreset,
        max_patches: a.max_patches,
        zero_shot: a.zero_shot,
        zero_shot_refs: a.zero_shot_refs,
        zero_shot_fraction: a.zero_shot_fraction,
        pool_tau: a.pool_tau,
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
    let reference = if r.zero_shot {
        format!("zero-shot against {} test images", r.zero_shot_refs)
    } else {
        format!(
            "memory bank {} of {} patches",
            r.memory_bank, r.pool_patches
        )
    };
    println!(
        "image AUROC {}  pixel AUROC {}  AUPRO {}  ({} defective, {} normal test images; {reference})",
        fmt(m.image_auroc),
        fmt(m.pixel_auroc),
        fmt(m.aupro),
        m.defect_test_images,
        m.normal_test_images,
    );
    if let Some(f) = &r.normal_floor {
        println!(
            "held-out normals: {} images; MEBin floor {:.1} (binarize --min-threshold; mean of their maps' maxima {:.1}, sd {:.1}, max {:.1}; pixel mean {:.1} + 3 x sd {:.1}; MEBin's own lower end {:.0}; on the maps' 0..255 scale)",
            f.images, f.floor, f.maxima_mean, f.maxima_sd, f.maxima_max, f.pixel_mean, f.pixel_sd, f.maps_maxima_min
        );
    }
    if let Some(loc) = &m.localization {
        print!("{}", anomalyncd::detect::localize::render_table(loc));
    }
    log::info!("maps and {REPORT_FILE} in {}", a.out.display());
    Ok(())
}
