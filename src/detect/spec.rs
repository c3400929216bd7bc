//! What a detect job is: [`DetectSpec`], its defaults and its checks (kept apart from the job
//! itself so that the inputs and the settings can name the spec without depending on the run).

use std::path::{Path, PathBuf};

use tch::Device;

use super::features::Resize;
use super::maps;
use crate::config::{
    valid_pool_tau, valid_zero_shot_fraction, CnnMix, ImageSize, Precision, IMAGE_SIDES, MAX_BLUR,
    MAX_HOLDOUT, MAX_POOL_TAU,
};
use crate::error::{Error, Result};

/// What to run.
#[derive(Debug, Clone)]
pub struct DetectSpec {
    /// Normal training images; None with `zero_shot`.
    pub train: Option<PathBuf>,
    pub test: PathBuf,
    pub out: PathBuf,
    pub masks: Option<PathBuf>,
    pub backbone: String,
    /// None: random weights (tests only).
    pub weights: Option<PathBuf>,
    /// The backbone input's longer side (both sides with `Resize::Square`); the maps have the
    /// input's size.
    pub image_size: u32,
    pub resize: Resize,
    /// EfficientNet stages (0-based) feeding the features.
    pub stages: Vec<usize>,
    /// ViT blocks (1-based) whose patch tokens are averaged.
    pub blocks: Vec<usize>,
    /// Side of the neighbourhood each patch feature is averaged over; None: the backbone's
    /// default (1 for the ViT, 3 for the CNN).
    pub aggregate: Option<i64>,
    /// ViT: score each tapped block's patch tokens on their own and average the scores
    /// (MuSc), instead of scoring the blocks' mean.
    pub per_block: bool,
    /// ViT: several neighbourhood sides (odd), each scored on its own and the scores averaged
    /// (MuSc's r = 1, 3, 5); empty: the one side of `aggregate`.
    pub aggregate_sizes: Vec<i64>,
    /// With normal images: the weight of the zero-shot mutual score mixed into the fitted
    /// score (0: off; see [`super::scoring`]).
    pub fuse_mutual: f64,
    /// With normal images and the ViT: the weight of a second, CNN detector's maps
    /// (EfficientNet-Lite0, stages 2 and 4, PatchCore's 3×3 mean) mixed into the ViT's (0: off),
    /// or `auto`: chosen by held-out normal images (see [`super::cnn_fusion`]).
    pub fuse_cnn: CnnMix,
    /// The CNN's weights when `fuse_cnn` is on; None: random (tests only), or, under `auto`
    /// with real ViT weights, none to be found (the ViT alone).
    pub cnn_weights: Option<PathBuf>,
    /// The fraction of the normal images kept out of the memory bank and scored as held-out
    /// normals: `detect.json` then gives MEBin's floor (`normal_floor`). 0: off.
    pub holdout: f64,
    /// The maps' Gaussian blur: sigma at a map side of 256, scaled with the map (PatchCore's 4;
    /// 0: none).
    pub blur: f64,
    /// The ViT blocks' precision (the similarities are f32 regardless).
    pub precision: Precision,
    pub coreset: f64,
    pub max_patches: usize,
    /// Score each test image against other test images instead of normal ones (MuSc-style).
    pub zero_shot: bool,
    /// Zero-shot: at most this many reference test images.
    pub zero_shot_refs: usize,
    /// Zero-shot: the fraction of lowest per-reference distances averaged.
    pub zero_shot_fraction: f64,
    /// The softmax temperature of the pooled features written beside the maps (relative to
    /// each image's score spread; [`super::pooled::Pooling::Soft`]).
    pub pool_tau: f64,
    pub batch_size: usize,
    pub seed: u64,
    pub write_good_maps: bool,
    pub overwrite: bool,
    pub device: Device,
}

/// The defaults of `anomalyncd detect`, shared by the command's flags and by `discover`.
pub const DEFAULT_BLOCKS: [usize; 3] = [6, 9, 12];
pub const DEFAULT_STAGES: [usize; 2] = [2, 4];
pub const DEFAULT_CORESET: f64 = 0.1;
pub const DEFAULT_MAX_PATCHES: usize = 100_000;
pub const DEFAULT_ZERO_SHOT_REFS: usize = 64;
pub use crate::config::{DEFAULT_POOL_TAU, DEFAULT_ZERO_SHOT_FRACTION};
pub const DEFAULT_BATCH_SIZE: usize = 16;
/// The ViT's input's longer side (a 32-patch side for ViT-S/14): `detect`'s and `discover`'s.
pub const DEFAULT_VIT_IMAGE_SIZE: u32 = 448;
/// The CNN's input side (PatchCore's).
pub const DEFAULT_CNN_IMAGE_SIZE: u32 = 256;
/// The ViT's input side that `auto` picks for large images (a 48-patch side): on tire's
/// 800×600 images it put 11 more points of maxima inside the defect than 448 and raised the
/// benchmark's F1 by 0.03 over six seeds (docs/detect.md); images smaller than this gain
/// nothing from being upsampled to it (MTD's tiles: the same argmax rate).
pub const LARGE_VIT_IMAGE_SIZE: u32 = 672;
/// At most this many images' headers are read to size the input (an evenly spaced sample).
const SIZE_SAMPLE: usize = 256;

/// `auto`'s ViT input side for images whose longer sides are `long_sides`:
/// [`LARGE_VIT_IMAGE_SIZE`] when their median reaches it, else [`DEFAULT_VIT_IMAGE_SIZE`].
pub fn auto_image_size(long_sides: &[u32]) -> u32 {
    let mut v = long_sides.to_vec();
    v.sort_unstable();
    match v.get(v.len() / 2) {
        Some(&median) if median >= LARGE_VIT_IMAGE_SIZE => LARGE_VIT_IMAGE_SIZE,
        _ => DEFAULT_VIT_IMAGE_SIZE,
    }
}

/// [`resolve_image_size`] for the images of the folder `test` (given as the flag `flag`), its
/// defective ones when it has any; the folder is listed only for `auto`.
pub fn resolve_image_size_of(size: ImageSize, test: &Path, flag: &str, what: &str) -> Result<u32> {
    if size != ImageSize::Auto {
        return resolve_image_size(size, &[], what);
    }
    let files = super::inputs::list_images(test, flag)?;
    let defective: Vec<PathBuf> = files
        .iter()
        .filter(|f| !crate::imageio::is_normal(&f.type_name))
        .map(|f| f.path.clone())
        .collect();
    match defective.is_empty() {
        true => resolve_image_size(
            size,
            &files.into_iter().map(|f| f.path).collect::<Vec<_>>(),
            what,
        ),
        false => resolve_image_size(size, &defective, what),
    }
}

/// The ViT input side for scoring `images` under the setting `size` (`what` names the flag
/// or key in errors): a fixed side is checked, `auto` reads the longer sides of at most
/// [`SIZE_SAMPLE`] of the images (headers only).
pub fn resolve_image_size(size: ImageSize, images: &[PathBuf], what: &str) -> Result<u32> {
    match size {
        ImageSize::Auto => Ok(auto_side(&sample_dimensions(images)?)),
        ImageSize::Fixed(n) => checked_side(n, what),
    }
}

fn checked_side(n: u32, what: &str) -> Result<u32> {
    match IMAGE_SIDES.contains(&n) {
        true => Ok(n),
        false => Err(Error::usage(format!(
            "{what} {n}: use {}..={} pixels or auto (e.g. {DEFAULT_VIT_IMAGE_SIZE})",
            IMAGE_SIDES.start(),
            IMAGE_SIDES.end()
        ))),
    }
}

fn auto_side(dims: &[(u32, u32)]) -> u32 {
    let sides: Vec<u32> = dims.iter().map(|&(w, h)| w.max(h)).collect();
    auto_image_size(&sides)
}

/// The sizes of an evenly spaced sample of at most [`SIZE_SAMPLE`] of `images` (headers only).
fn sample_dimensions(images: &[PathBuf]) -> Result<Vec<(u32, u32)>> {
    let step = images.len().div_ceil(SIZE_SAMPLE).max(1);
    images
        .iter()
        .step_by(step)
        .map(|p| crate::imageio::dimensions(p))
        .collect()
}

/// The detector's input side for `images` ([`resolve_image_size`], or `given` when set) and
/// the default ViT's mean patches per image at that side (`Resize::Aspect`; 0 without images),
/// from one sample of their headers: what a forward of the detector costs, for `discover`'s
/// time estimates. MTD's tiles average 657 patches at 448, not 1024.
pub fn side_and_patches(
    size: ImageSize,
    given: Option<u32>,
    images: &[PathBuf],
    what: &str,
) -> Result<(u32, f64)> {
    let dims = sample_dimensions(images)?;
    let side = match (given, size) {
        (Some(n), _) => n,
        (None, ImageSize::Auto) => auto_side(&dims),
        (None, ImageSize::Fixed(n)) => checked_side(n, what)?,
    };
    let patch = super::features::dinov2_arch().patch_size as u32;
    let total: f64 = dims
        .iter()
        .map(|&(w, h)| {
            let (iw, ih) = super::features::input_size(w, h, side, Resize::Aspect, patch);
            f64::from(iw / patch) * f64::from(ih / patch)
        })
        .sum();
    Ok((side, total / dims.len().max(1) as f64))
}

impl DetectSpec {
    /// The default detector (the DINOv2 backbone with `weights`) over `test` into `out`: fitted
    /// on `train`, or zero-shot without it. The fields are public for anything else.
    pub fn with_defaults(
        train: Option<PathBuf>,
        test: PathBuf,
        out: PathBuf,
        weights: Option<PathBuf>,
        device: Device,
    ) -> Self {
        Self {
            zero_shot: train.is_none(),
            train,
            test,
            out,
            masks: None,
            backbone: super::features::DINOV2.to_string(),
            weights,
            image_size: DEFAULT_VIT_IMAGE_SIZE,
            resize: Resize::Aspect,
            stages: DEFAULT_STAGES.to_vec(),
            blocks: DEFAULT_BLOCKS.to_vec(),
            aggregate: None,
            per_block: false,
            aggregate_sizes: Vec::new(),
            fuse_mutual: 0.0,
            fuse_cnn: CnnMix::OFF,
            cnn_weights: None,
            holdout: 0.0,
            blur: maps::SIGMA,
            precision: Precision::Auto,
            coreset: DEFAULT_CORESET,
            max_patches: DEFAULT_MAX_PATCHES,
            zero_shot_refs: DEFAULT_ZERO_SHOT_REFS,
            zero_shot_fraction: DEFAULT_ZERO_SHOT_FRACTION,
            pool_tau: DEFAULT_POOL_TAU,
            batch_size: DEFAULT_BATCH_SIZE,
            seed: 0,
            write_good_maps: false,
            overwrite: false,
            device,
        }
    }
}

pub(crate) fn check_spec(s: &DetectSpec) -> Result<()> {
    if !(32..=2048).contains(&s.image_size) {
        return Err(Error::usage(format!(
            "--image-size {}: use 32..=2048 pixels (e.g. {DEFAULT_VIT_IMAGE_SIZE})",
            s.image_size
        )));
    }
    if !(s.coreset > 0.0 && s.coreset <= 1.0) {
        return Err(Error::usage(format!(
            "--coreset {}: give a fraction in (0, 1], e.g. 0.1",
            s.coreset
        )));
    }
    if !valid_pool_tau(s.pool_tau) {
        return Err(Error::usage(format!(
            "--pool-tau {}: give a temperature in (0, {MAX_POOL_TAU}], e.g. {DEFAULT_POOL_TAU}",
            s.pool_tau
        )));
    }
    if s.max_patches == 0 || s.batch_size == 0 {
        return Err(Error::usage(
            "--max-patches and --batch-size must be at least 1",
        ));
    }
    if !super::features::BACKBONES.contains(&s.backbone.as_str()) {
        return Err(Error::usage(format!(
            "--backbone {}: use one of {}",
            s.backbone,
            super::features::BACKBONES.join(", ")
        )));
    }
    if s.zero_shot {
        if s.zero_shot_refs < 2 {
            return Err(Error::usage(format!(
                "--zero-shot-refs {}: give at least 2 reference images (e.g. 32)",
                s.zero_shot_refs
            )));
        }
        if !valid_zero_shot_fraction(s.zero_shot_fraction) {
            return Err(Error::usage(format!(
                "--zero-shot-fraction {}: give a fraction in (0, 1], e.g. {DEFAULT_ZERO_SHOT_FRACTION}",
                s.zero_shot_fraction
            )));
        }
    } else if s.train.is_none() {
        return Err(Error::usage(
            "give --train with normal images, or --zero-shot to score the test images against each other",
        ));
    }
    check_variants(s)
}

/// The options of issue 25's map variants (fusion, held-out normals, neighbourhood sizes).
fn check_variants(s: &DetectSpec) -> Result<()> {
    if !(0.0..=1.0).contains(&s.fuse_mutual) {
        return Err(Error::usage(format!(
            "--fuse-mutual {}: give a weight in [0, 1] (0: off, e.g. 0.5)",
            s.fuse_mutual
        )));
    }
    if s.fuse_mutual > 0.0 && s.zero_shot {
        return Err(Error::usage(
            "--fuse-mutual mixes the fitted score with the zero-shot one: give --train, not --zero-shot",
        ));
    }
    let refs_ok = s.zero_shot_refs >= 2 && valid_zero_shot_fraction(s.zero_shot_fraction);
    if s.fuse_mutual > 0.0 && !refs_ok {
        return Err(Error::usage(format!(
            "--fuse-mutual: --zero-shot-refs {} / --zero-shot-fraction {}: give at least 2 references and a fraction in (0, 1]",
            s.zero_shot_refs, s.zero_shot_fraction
        )));
    }
    if let CnnMix::Weight(w) = s.fuse_cnn {
        if !(0.0..=1.0).contains(&w) {
            return Err(Error::usage(format!(
                "--fuse-cnn {w}: give a weight in [0, 1] (0: off, e.g. 0.5) or `auto`"
            )));
        }
    }
    if s.fuse_cnn.is_on() {
        let why = if s.zero_shot {
            Some("fits the CNN on the normal images: give --train, not --zero-shot")
        } else if s.backbone != super::features::DINOV2 {
            Some("mixes the CNN's maps into the ViT's: leave --backbone at dinov2-vits14")
        } else if s.weights.is_some() && s.cnn_weights.is_none() && s.fuse_cnn != CnnMix::Auto {
            Some("needs the EfficientNet-Lite0 weights (data/weights/efficientnet_lite0.pth): run scripts/prepare_weights.sh")
        } else if s.holdout > 0.0 {
            Some("and --holdout-normals: the floor is not computed on fused maps; give one of the two")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(Error::usage(format!("--fuse-cnn {why}")));
        }
    }
    if !(0.0..=MAX_HOLDOUT).contains(&s.holdout) {
        return Err(Error::usage(format!(
            "--holdout-normals {}: give a fraction in [0, {MAX_HOLDOUT}] of the normal images (0: off, e.g. 0.1)",
            s.holdout
        )));
    }
    if s.holdout > 0.0 && s.zero_shot {
        return Err(Error::usage(
            "--holdout-normals holds normal images out of the memory bank: give --train, not --zero-shot",
        ));
    }
    if !(0.0..=MAX_BLUR).contains(&s.blur) {
        return Err(Error::usage(format!(
            "--blur {}: give the maps' Gaussian sigma at a side of 256 in [0, {MAX_BLUR}] (0: none, default 4)",
            s.blur
        )));
    }
    if s.aggregate.is_some() && !s.aggregate_sizes.is_empty() {
        return Err(Error::usage(
            "give either --aggregate K or --aggregate-sizes K1,K2,..., not both",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_size_follows_the_median_longer_side() {
        assert_eq!(auto_image_size(&[]), DEFAULT_VIT_IMAGE_SIZE);
        // MTD's tiles (231..632 px) stay at 448; tire's 800x600 images get 672.
        assert_eq!(auto_image_size(&[231, 362, 632]), DEFAULT_VIT_IMAGE_SIZE);
        assert_eq!(auto_image_size(&[800; 5]), LARGE_VIT_IMAGE_SIZE);
        assert_eq!(auto_image_size(&[200, 700, 1024]), LARGE_VIT_IMAGE_SIZE);
        assert_eq!(auto_image_size(&[200, 300, 1024]), DEFAULT_VIT_IMAGE_SIZE);
    }

    #[test]
    fn resolving_the_size_reads_the_images_or_checks_the_number() {
        let dir = std::env::temp_dir().join(format!("anomalyncd-size-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut files = Vec::new();
        for (i, (w, h)) in [(800u32, 600u32), (700, 900), (100, 50)]
            .into_iter()
            .enumerate()
        {
            let p = dir.join(format!("{i}.png"));
            image::GrayImage::new(w, h).save(&p).unwrap();
            files.push(p);
        }
        let what = "detect.image_size";
        assert_eq!(
            resolve_image_size(ImageSize::Auto, &files, what).unwrap(),
            672
        );
        assert_eq!(
            resolve_image_size(ImageSize::Auto, &files[2..], what).unwrap(),
            448
        );
        assert_eq!(
            resolve_image_size(ImageSize::Fixed(518), &files, what).unwrap(),
            518
        );
        let e = resolve_image_size(ImageSize::Fixed(9999), &files, what).unwrap_err();
        assert!(e.to_string().contains("detect.image_size 9999"), "{e}");
        // The side and the mean patches at it, from the same headers: 100x50 at 448 is 32x16.
        let one = &files[2..];
        assert_eq!(
            side_and_patches(ImageSize::Auto, None, one, what).unwrap(),
            (448, 512.0)
        );
        assert_eq!(
            side_and_patches(ImageSize::Auto, Some(224), one, what).unwrap(),
            (224, 128.0)
        );
        assert_eq!(
            side_and_patches(ImageSize::Fixed(448), None, &[], what).unwrap(),
            (448, 0.0)
        );
        let e = side_and_patches(ImageSize::Fixed(9999), None, one, what).unwrap_err();
        assert!(e.to_string().contains("detect.image_size 9999"), "{e}");
        let bad = dir.join("bad.png");
        std::fs::write(&bad, b"not a png").unwrap();
        let e = resolve_image_size(ImageSize::Auto, &[bad], what).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("bad.png"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn map_variant_settings_are_checked() {
        let spec = || {
            DetectSpec::with_defaults(
                Some("/good".into()),
                "/test".into(),
                "/out".into(),
                None,
                Device::Cpu,
            )
        };
        assert!(check_spec(&spec()).is_ok());
        type Change = fn(&mut DetectSpec);
        let bad: [Change; 14] = [
            |s| s.blur = -1.0,
            |s| s.blur = f64::NAN,
            |s| s.fuse_mutual = 1.5,
            |s| s.fuse_mutual = -0.1,
            |s| {
                s.fuse_mutual = 0.5;
                s.zero_shot_refs = 1;
            },
            |s| s.holdout = 0.9,
            |s| {
                s.aggregate = Some(3);
                s.aggregate_sizes = vec![1, 3];
            },
            |s| {
                s.zero_shot = true;
                s.train = None;
                s.holdout = 0.1;
            },
            |s| s.fuse_cnn = CnnMix::Weight(1.5),
            |s| s.fuse_cnn = CnnMix::Weight(f64::NAN),
            |s| {
                s.fuse_cnn = CnnMix::Weight(0.5);
                s.zero_shot = true;
            },
            |s| {
                s.fuse_cnn = CnnMix::Auto;
                s.zero_shot = true;
            },
            |s| {
                s.fuse_cnn = CnnMix::Weight(0.5);
                s.backbone = super::super::features::EFFICIENTNET.into();
            },
            |s| {
                s.fuse_cnn = CnnMix::Auto;
                s.holdout = 0.1;
            },
        ];
        for (i, change) in bad.iter().enumerate() {
            let mut s = spec();
            change(&mut s);
            assert_eq!(check_spec(&s).unwrap_err().exit_code(), 2, "case {i}");
        }
        let mut s = spec();
        (s.fuse_mutual, s.holdout, s.per_block) = (0.5, 0.1, true);
        s.aggregate_sizes = vec![1, 3, 5];
        assert!(check_spec(&s).is_ok());
        (s.fuse_cnn, s.holdout) = (CnnMix::Weight(0.5), 0.0);
        assert!(check_spec(&s).is_ok());
        // Real ViT weights: a fixed weight needs the CNN's file, `auto` falls back to the ViT.
        s.weights = Some("/w/dinov2.safetensors".into());
        assert_eq!(check_spec(&s).unwrap_err().exit_code(), 2);
        s.fuse_cnn = CnnMix::Auto;
        assert!(check_spec(&s).is_ok());
    }
}
