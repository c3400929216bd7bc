//! Patch features for the detector, from one of two frozen backbones:
//!
//! - `dinov2-vits14` (the default): the offline DINOv2 ViT-S/14 ([`crate::model::MgVit`] without
//!   mask guidance). The patch tokens after several blocks, each through the final LayerNorm,
//!   are averaged and L2-normalised, so that nearest neighbours are taken by cosine similarity.
//!   Mid-level blocks localise far better than the last one alone, and a 14-pixel patch is
//!   already a neighbourhood: PatchCore's 3×3 mean only blurs small defects (`docs/detect.md`).
//! - `efficientnet-lite0`: ImageNet EfficientNet-Lite0 block outputs at two (or more) stages,
//!   each averaged over its 3×3 neighbourhood (PatchCore's local aggregation), the deeper ones
//!   upsampled to the grid of the shallowest and concatenated; Euclidean distances.
//!
//! Backbone names are hyphenated ([`DINOV2`]), as `detect.json` and the run fingerprints have
//! always recorded them; `--backbone` also takes the config's architecture name for the same
//! model ([`DINOV2_VITS14`], see [`BACKBONE_ALIASES`]), so one model reads the same everywhere.
//!
//! Images are resized with their aspect ratio kept (the longer side to the input size, both sides
//! to multiples of the patch), or squashed to a square as PatchCore does (`Resize::Square`):
//! squashing MTD's tall tiles stretches their texture, which the normal patches never show.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use tch::{nn, Device, Kind, Tensor};

use crate::config::arch::DINOV2_VITS14;
use crate::error::{Error, Result};
use crate::model::efficientnet::{
    ignored_tensor_names, EfficientNetConfig, EfficientNetLite, INPUT_MEAN, INPUT_STD,
};
use crate::model::{ArchSpec, MgVit};

use super::slices::{local_mean, Slicing};

/// The default backbone: the offline DINOv2 ViT-S/14 (architecture [`DINOV2_VITS14`]).
pub const DINOV2: &str = "dinov2-vits14";
/// PatchCore's CNN, ImageNet EfficientNet-Lite0.
pub const EFFICIENTNET: &str = "efficientnet-lite0";
/// Backbones `detect` knows; the first is the default.
pub const BACKBONES: &[&str] = &[DINOV2, EFFICIENTNET];
/// Other names accepted for a backbone (alias, backbone): the architecture's config name.
pub const BACKBONE_ALIASES: &[(&str, &str)] = &[(DINOV2_VITS14, DINOV2)];

/// The backbone `name` stands for: one of [`BACKBONES`], or one of their [`BACKBONE_ALIASES`].
pub fn backbone_name(name: &str) -> Option<&'static str> {
    let alias = BACKBONE_ALIASES.iter().find(|(a, _)| *a == name);
    BACKBONES
        .iter()
        .copied()
        .find(|b| *b == name)
        .or(alias.map(|(_, b)| *b))
}

/// The architecture of the [`DINOV2`] backbone.
pub fn dinov2_arch() -> &'static ArchSpec {
    ArchSpec::by_name(DINOV2_VITS14).expect("a known architecture")
}

/// The weights file of `backbone`: `flag` (`--weights`) when given, else its default file in
/// the offline weights folder; an error naming the fix when there is none.
pub fn resolve_weights(backbone: &str, flag: Option<&Path>) -> Result<PathBuf> {
    let file = default_weights_file(backbone);
    let p = match flag {
        Some(p) => p.to_path_buf(),
        None => crate::model::find_in_weights_dir(&file).ok_or_else(|| {
            Error::usage(format!(
                "--backbone {backbone}: no weights at {}/{file}; run scripts/prepare_weights.sh \
                 (scripts/setup.sh does) or pass --weights FILE",
                crate::model::DEFAULT_WEIGHTS_DIR
            ))
        })?,
    };
    if !p.is_file() {
        return Err(Error::input(&p, "--weights: file not found"));
    }
    Ok(p)
}

/// The weights file `scripts/prepare_weights.sh` puts in `data/weights/` for `backbone`.
pub fn default_weights_file(backbone: &str) -> String {
    match backbone {
        EFFICIENTNET => "efficientnet_lite0.pth".to_string(),
        _ => format!("{DINOV2_VITS14}.safetensors"),
    }
}

/// How test and training images are brought to the backbone's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resize {
    /// The longer side to the input size, the aspect ratio kept.
    Aspect,
    /// Both sides to the input size (PatchCore's squash).
    Square,
}

impl Resize {
    pub fn parse(s: &str) -> Option<Resize> {
        match s {
            "aspect" => Some(Resize::Aspect),
            "square" => Some(Resize::Square),
            _ => None,
        }
    }
}

/// The metric between patch features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Euclidean distance (PatchCore).
    Euclidean,
    /// 1 − cosine similarity; the features are unit vectors.
    Cosine,
}

enum Net {
    // Both networks boxed: their layer structs are hundreds of bytes.
    EfficientNet {
        net: Box<EfficientNetLite>,
        taps: Vec<usize>,
        channels: Vec<i64>,
    },
    Vit {
        vit: Box<MgVit>,
        blocks: Vec<usize>,
        dim: i64,
    },
}

/// A frozen backbone and which of its layers feed the patch features.
pub struct FeatureExtractor {
    _vs: nn::VarStore,
    net: Net,
    /// Input pixels per cell of the patch grid.
    pub stride: i64,
    pub metric: Metric,
    pub device: Device,
    /// Side of the neighbourhood each patch feature is averaged over (1: none).
    aggregate: i64,
    /// The ViT's slices (one by default: the blocks' mean at `aggregate`).
    slicing: Slicing,
}

/// Side of the local neighbourhood each CNN patch feature is averaged over (PatchCore's).
pub const CNN_AGGREGATE: i64 = 3;

impl FeatureExtractor {
    /// EfficientNet-Lite0 tapped at the ends of `stages` (0-based stage indices, ascending);
    /// `weights`: a `.pth` / `.safetensors` state dict, or None for random weights (tests only).
    pub fn efficientnet(stages: &[usize], weights: Option<&Path>, device: Device) -> Result<Self> {
        let cfg = EfficientNetConfig::lite0();
        let n = cfg.stages.len();
        if stages.is_empty()
            || stages.iter().any(|&s| s >= n)
            || !stages.windows(2).all(|w| w[0] < w[1])
        {
            return Err(Error::usage(format!(
                "--stages {stages:?}: give 1 or more distinct stage indices in 0..{n}, ascending (e.g. 2,4)"
            )));
        }
        let mut vs = nn::VarStore::new(device);
        let net = EfficientNetLite::new(&vs.root(), &cfg);
        if let Some(path) = weights {
            let ignored = ignored_tensor_names(&vs);
            let ignored: Vec<&str> = ignored.iter().map(String::as_str).collect();
            let r =
                crate::model::weights::load_into(&vs, "", path, &ignored, "EfficientNet-Lite0")?;
            log::debug!("loaded {} tensors from {}", r.loaded, path.display());
        }
        vs.freeze();
        let ends = cfg.stage_ends();
        let strides = cfg.stage_strides();
        Ok(FeatureExtractor {
            _vs: vs,
            net: Net::EfficientNet {
                net: Box::new(net),
                taps: stages.iter().map(|&s| ends[s]).collect(),
                channels: stages.iter().map(|&s| cfg.stages[s].out_ch).collect(),
            },
            stride: strides[stages[0]],
            metric: Metric::Euclidean,
            device,
            aggregate: CNN_AGGREGATE,
            slicing: Slicing::single(CNN_AGGREGATE),
        })
    }

    /// A DINOv2-style ViT of shape `arch` whose patch tokens after `blocks` (block numbers in
    /// `1..=depth`, ascending) are averaged; `weights` as for [`Self::efficientnet`]; the blocks
    /// run in `kind` (bf16 where it is measurably faster; the similarities are always f32).
    pub fn vit(
        arch: &ArchSpec,
        blocks: &[usize],
        weights: Option<&Path>,
        kind: Kind,
        device: Device,
    ) -> Result<Self> {
        let mut vs = nn::VarStore::new(device);
        let mut vit = MgVit::new(&vs.root(), arch, 0)?;
        if let Some(path) = weights {
            let what = format!("{} backbone", arch.name);
            let r = crate::model::weights::load_into(
                &vs,
                "",
                path,
                crate::model::mgvit::IGNORED_TENSORS,
                &what,
            )?;
            log::debug!("loaded {} tensors from {}", r.loaded, path.display());
        }
        vs.freeze();
        vit.set_frozen_kind(kind, arch.depth);
        // Validates the block list before any image is read.
        let p = arch.patch_size as i64;
        vit.patch_tokens(&Tensor::zeros([1, 3, p, p], (Kind::Float, device)), blocks)
            .map_err(|e| Error::usage(format!("--blocks: {e}")))?;
        Ok(FeatureExtractor {
            _vs: vs,
            net: Net::Vit {
                vit: Box::new(vit),
                blocks: blocks.to_vec(),
                dim: arch.embed_dim as i64,
            },
            stride: p,
            metric: Metric::Cosine,
            device,
            aggregate: 1,
            slicing: Slicing::single(1),
        })
    }

    /// Feature dimension of one patch (all its slices).
    pub fn dim(&self) -> i64 {
        match &self.net {
            Net::EfficientNet { channels, .. } => channels.iter().sum(),
            Net::Vit { dim, blocks, .. } => *dim * self.slicing.count(blocks.len()) as i64,
        }
    }

    /// Slices per patch feature, each scored on its own ([`super::slices`]); 1 by default.
    pub fn slices(&self) -> usize {
        match &self.net {
            Net::EfficientNet { .. } => 1,
            Net::Vit { blocks, .. } => self.slicing.count(blocks.len()),
        }
    }

    /// Several slices per patch (ViT only): one per tapped block with `per_block`, times one
    /// per neighbourhood side in `sizes` (MuSc's per-layer, per-r scoring).
    pub fn with_slicing(mut self, slicing: Slicing) -> Result<Self> {
        slicing.check()?;
        if matches!(self.net, Net::EfficientNet { .. })
            && slicing != Slicing::single(slicing.sizes[0])
        {
            return Err(Error::usage(format!(
                "--per-block and --aggregate-sizes need the ViT backbone ({DINOV2})"
            )));
        }
        self.aggregate = slicing.sizes[0];
        self.slicing = slicing;
        Ok(self)
    }

    /// Averages each patch feature over its `k`×`k` neighbourhood (odd `k`; 1: none). The ViT
    /// default is none: on MTD a 3×3 mean blurred small defects (blowholes, cracks) into
    /// normal texture and moved the maps' maxima off them (argmax in defect 57 % against 77 %).
    pub fn with_aggregate(mut self, k: i64) -> Result<Self> {
        if !crate::config::valid_aggregate_sizes(&[k]) {
            return Err(Error::usage(format!(
                "--aggregate {k}: give an odd neighbourhood side in 1..={} (1: none, 3: PatchCore's 3x3)",
                super::slices::MAX_SIZE
            )));
        }
        self.aggregate = k;
        self.slicing = Slicing::single(k);
        Ok(self)
    }

    /// The precision the backbone runs in.
    pub fn kind(&self) -> Kind {
        match &self.net {
            Net::EfficientNet { .. } => Kind::Float,
            Net::Vit { vit, .. } => vit.frozen_kind(),
        }
    }

    /// Pixels the input sides must be multiples of (the ViT's patch; 1 for the CNN).
    pub fn multiple(&self) -> u32 {
        match &self.net {
            Net::EfficientNet { .. } => 1,
            Net::Vit { .. } => self.stride as u32,
        }
    }

    /// The patch grid `(rows, cols)` of an `h`×`w` input (TF SAME for the CNN: ceil at each
    /// stride).
    pub fn grid(&self, h: i64, w: i64) -> (i64, i64) {
        match &self.net {
            Net::EfficientNet { .. } => (
                (h + self.stride - 1) / self.stride,
                (w + self.stride - 1) / self.stride,
            ),
            Net::Vit { .. } => (h / self.stride, w / self.stride),
        }
    }

    /// `x [B, 3, H, W]` in 0..=255 -> patch features `[B, D, G_h, G_w]` (f32; unit vectors for
    /// the cosine metric).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_device(self.device);
        let k = self.aggregate;
        tch::no_grad(|| match &self.net {
            Net::EfficientNet { net, taps, .. } => {
                let x = (x - INPUT_MEAN) / INPUT_STD;
                let feats = net.block_features(&x, taps);
                let size = feats[0].size();
                let (gh, gw) = (size[2], size[3]);
                let parts: Vec<Tensor> = feats
                    .into_iter()
                    .map(|f| {
                        let f = local_mean(f, k);
                        if f.size()[2] == gh && f.size()[3] == gw {
                            f
                        } else {
                            f.upsample_bilinear2d([gh, gw], false, None, None)
                        }
                    })
                    .collect();
                Ok(Tensor::cat(&parts, 1))
            }
            Net::Vit { vit, blocks, .. } => {
                let (h, w) = (x.size()[2], x.size()[3]);
                let x = imagenet_normalise(&x);
                let taps = vit.patch_tokens(&x, blocks)?;
                super::slices::vit_slices(taps, self.grid(h, w), &self.slicing)
            }
        })
    }
}

/// The patch features of one image.
pub struct ImageFeatures {
    /// `[P, D]` (P = rows × cols of `grid`), on the extractor's device.
    pub patches: Tensor,
    /// The patch grid `(rows, cols)`.
    pub grid: (i64, i64),
    /// The backbone input `(width, height)`; the anomaly map has this size.
    pub input: (u32, u32),
}

impl FeatureExtractor {
    /// Decodes `paths` in parallel, resizes each (see [`input_size`]) and runs the backbone,
    /// batching consecutive images of equal input size.
    pub fn images(&self, paths: &[&Path], size: u32, resize: Resize) -> Result<Vec<ImageFeatures>> {
        use rayon::prelude::*;
        let m = self.multiple();
        let loaded: Vec<Tensor> = paths
            .par_iter()
            .map(|p| load_image(p, size, resize, m))
            .collect::<Result<_>>()?;
        let mut out = Vec::with_capacity(paths.len());
        let mut start = 0;
        while start < loaded.len() {
            let dims = loaded[start].size();
            let mut end = start + 1;
            while end < loaded.len() && loaded[end].size() == dims {
                end += 1;
            }
            let f = self.forward(&Tensor::stack(&loaded[start..end], 0))?;
            let (d, gh, gw) = (f.size()[1], f.size()[2], f.size()[3]);
            for i in 0..(end - start) as i64 {
                out.push(ImageFeatures {
                    patches: f.get(i).view([d, gh * gw]).tr().contiguous(),
                    grid: (gh, gw),
                    input: (dims[2] as u32, dims[1] as u32),
                });
            }
            start = end;
        }
        Ok(out)
    }
}

/// `x [B, 3, H, W]` in 0..=255 -> ImageNet-normalised (the statistics DINO was trained with).
fn imagenet_normalise(x: &Tensor) -> Tensor {
    use crate::data::{IMAGENET_MEAN, IMAGENET_STD};
    let dev = x.device();
    let mean = Tensor::from_slice(&IMAGENET_MEAN)
        .to_device(dev)
        .view([1, 3, 1, 1])
        * 255.0;
    let std = Tensor::from_slice(&IMAGENET_STD)
        .to_device(dev)
        .view([1, 3, 1, 1])
        * 255.0;
    (x.to_kind(Kind::Float) - mean) / std
}

/// The backbone input size `(width, height)` of a `w`×`h` image: the longer side (or both, for
/// `Square`) to `size`, each side rounded to a multiple of `multiple` (at least one).
pub fn input_size(w: u32, h: u32, size: u32, resize: Resize, multiple: u32) -> (u32, u32) {
    let m = multiple.max(1) as f64;
    let round = |v: f64| ((v / m).round().max(1.0) * m) as u32;
    match resize {
        Resize::Square => (round(size as f64), round(size as f64)),
        Resize::Aspect => {
            let s = size as f64 / w.max(h).max(1) as f64;
            (round(w as f64 * s), round(h as f64 * s))
        }
    }
}

/// One decoded image resized (bilinear) to its [`input_size`], `[3, H, W]` 0..=255 floats on
/// the CPU.
pub fn load_image(path: &Path, size: u32, resize: Resize, multiple: u32) -> Result<Tensor> {
    let img = crate::imageio::read_rgb(path)?;
    let (w, h) = input_size(img.width(), img.height(), size, resize, multiple);
    let r = image::imageops::resize(&img, w, h, FilterType::Triangle);
    Ok(Tensor::from_slice(r.as_raw())
        .view([h as i64, w as i64, 3])
        .permute([2, 0, 1])
        .to_kind(Kind::Float))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backbones_have_one_name_and_the_architecture_name_is_an_alias() {
        assert_eq!(BACKBONES[0], DINOV2, "the default");
        for b in BACKBONES {
            assert_eq!(backbone_name(b), Some(*b));
        }
        assert_eq!(backbone_name(DINOV2_VITS14), Some(DINOV2));
        assert_eq!(backbone_name("dinov2_vits14"), Some(DINOV2));
        for bad in ["", "DINOV2-VITS14", "dinov2_vitb14", "resnet50"] {
            assert_eq!(backbone_name(bad), None, "{bad}");
        }
        assert_eq!(dinov2_arch().name, DINOV2_VITS14);
        assert_eq!(default_weights_file(DINOV2), "dinov2_vits14.safetensors");
        assert_eq!(default_weights_file(EFFICIENTNET), "efficientnet_lite0.pth");
    }

    #[test]
    fn patch_features_are_on_the_shallow_grid() {
        let fx = FeatureExtractor::efficientnet(&[2, 4], None, Device::Cpu).unwrap();
        assert_eq!(fx.dim(), 40 + 112);
        assert_eq!(fx.stride, 8);
        assert_eq!(fx.grid(64, 64), (8, 8));
        let x = Tensor::rand([2, 3, 64, 64], (Kind::Float, Device::Cpu)) * 255.0;
        let f = fx.forward(&x).unwrap();
        assert_eq!(f.size(), [2, 152, 8, 8]);
        assert!(!f.requires_grad());
        for bad in [vec![], vec![4, 2], vec![2, 7], vec![3, 3]] {
            let e = FeatureExtractor::efficientnet(&bad, None, Device::Cpu)
                .err()
                .unwrap();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn vit_features_are_unit_vectors_on_the_patch_grid() {
        tch::manual_seed(0);
        let arch = ArchSpec::by_name("vit_tiny").unwrap();
        let fx = FeatureExtractor::vit(arch, &[2, 3], None, Kind::Float, Device::Cpu).unwrap();
        assert_eq!((fx.dim(), fx.stride, fx.multiple()), (48, 8, 8));
        // Non-square: 5×3 patches.
        let x = Tensor::rand([2, 3, 40, 24], (Kind::Float, Device::Cpu)) * 255.0;
        let f = fx.forward(&x).unwrap();
        assert_eq!(f.size(), [2, 48, 5, 3]);
        let norms = f.norm_scalaropt_dim(2.0, [1i64].as_slice(), false);
        assert!((norms - 1.0).abs().max().double_value(&[]) < 1e-5);
        // Blocks 2 and 3 averaged differ from block 3 alone (same seed, same weights).
        tch::manual_seed(0);
        let last = FeatureExtractor::vit(arch, &[3], None, Kind::Float, Device::Cpu).unwrap();
        let g = last.forward(&x).unwrap();
        assert!((&f - &g).abs().max().double_value(&[]) > 1e-3);
        // A 3×3 neighbourhood mean changes the features; an even or zero side is refused.
        let fx3 = FeatureExtractor::vit(arch, &[2, 3], None, Kind::Float, Device::Cpu)
            .unwrap()
            .with_aggregate(3)
            .unwrap();
        assert!(
            (fx3.forward(&x).unwrap() - &f)
                .abs()
                .max()
                .double_value(&[])
                > 1e-3
        );
        for k in [0, 2, 17] {
            assert!(
                FeatureExtractor::vit(arch, &[3], None, Kind::Float, Device::Cpu)
                    .unwrap()
                    .with_aggregate(k)
                    .is_err()
            );
        }
        for bad in [vec![], vec![0], vec![4], vec![3, 2]] {
            let e = FeatureExtractor::vit(arch, &bad, None, Kind::Float, Device::Cpu)
                .err()
                .unwrap();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn input_sizes_keep_the_aspect_and_the_patch_multiple() {
        // A tall MTD-like tile: 200×500 to long side 448, multiples of 14.
        assert_eq!(input_size(200, 500, 448, Resize::Aspect, 14), (182, 448));
        assert_eq!(input_size(500, 200, 448, Resize::Aspect, 14), (448, 182));
        assert_eq!(input_size(200, 500, 448, Resize::Square, 14), (448, 448));
        assert_eq!(input_size(200, 500, 256, Resize::Square, 1), (256, 256));
        // Never below one patch.
        assert_eq!(input_size(2, 900, 448, Resize::Aspect, 14), (14, 448));
        assert_eq!(input_size(300, 300, 450, Resize::Aspect, 14), (448, 448));
    }
}
