//! Patch features for the detector: EfficientNet-Lite0 block outputs at two (or more) stages,
//! each averaged over its 3×3 neighbourhood (PatchCore's local aggregation), the deeper ones
//! upsampled to the grid of the shallowest and concatenated along channels.

use std::path::Path;

use image::imageops::FilterType;
use rayon::prelude::*;
use tch::{nn, Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::efficientnet::{
    ignored_tensor_names, EfficientNetConfig, EfficientNetLite, INPUT_MEAN, INPUT_STD,
};

/// Backbones `detect` knows (only one so far).
pub const BACKBONES: &[&str] = &["efficientnet-lite0"];
/// The weights file `scripts/prepare_weights.sh` puts in `data/weights/`.
pub const DEFAULT_WEIGHTS_FILE: &str = "efficientnet_lite0.pth";

/// A frozen backbone and which stages feed the patch features.
pub struct FeatureExtractor {
    _vs: nn::VarStore,
    net: EfficientNetLite,
    taps: Vec<usize>,
    /// Channels of each tapped stage.
    pub channels: Vec<i64>,
    /// Input pixels per cell of the patch grid (the shallowest stage's stride).
    pub stride: i64,
    pub device: Device,
}

impl FeatureExtractor {
    /// EfficientNet-Lite0 tapped at the ends of `stages` (0-based stage indices, ascending);
    /// `weights`: a `.pth` / `.safetensors` state dict, or None for random weights (tests only).
    pub fn new(stages: &[usize], weights: Option<&Path>, device: Device) -> Result<Self> {
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
            net,
            taps: stages.iter().map(|&s| ends[s]).collect(),
            channels: stages.iter().map(|&s| cfg.stages[s].out_ch).collect(),
            stride: strides[stages[0]],
            device,
        })
    }

    /// Feature dimension of one patch.
    pub fn dim(&self) -> i64 {
        self.channels.iter().sum()
    }

    /// Side of the patch grid for a square input of `size` pixels (TF SAME: ceil at each stride).
    pub fn grid(&self, size: i64) -> i64 {
        (size + self.stride - 1) / self.stride
    }

    /// `x [B, 3, S, S]` in 0..=255 -> patch features `[B, D, G, G]` (G = [`Self::grid`]).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let x = (x.to_device(self.device) - INPUT_MEAN) / INPUT_STD;
            let feats = self.net.block_features(&x, &self.taps);
            let size = feats[0].size();
            let (gh, gw) = (size[2], size[3]);
            let parts: Vec<Tensor> = feats
                .iter()
                .map(|f| {
                    // Local 3×3 mean (zero padding not counted), PatchCore's neighbourhood aggregation.
                    let f = f.avg_pool2d([3, 3], [1, 1], [1, 1], false, false, None::<i64>);
                    if f.size()[2] == gh && f.size()[3] == gw {
                        f
                    } else {
                        f.upsample_bilinear2d([gh, gw], false, None, None)
                    }
                })
                .collect();
            Tensor::cat(&parts, 1)
        })
    }
}

/// Decodes `paths` in parallel and resizes each to `size`×`size` RGB (bilinear; the aspect
/// ratio is not kept), as a batch `[B, 3, size, size]` of 0..=255 floats on the CPU.
pub fn load_batch(paths: &[&Path], size: u32) -> Result<Tensor> {
    let decoded: Vec<Vec<u8>> = paths
        .par_iter()
        .map(|p| {
            let img = crate::imageio::read_rgb(p)?;
            Ok(image::imageops::resize(&img, size, size, FilterType::Triangle).into_raw())
        })
        .collect::<Result<_>>()?;
    let s = size as i64;
    let flat: Vec<u8> = decoded.concat();
    Ok(Tensor::from_slice(&flat)
        .view([paths.len() as i64, s, s, 3])
        .permute([0, 3, 1, 2])
        .to_kind(Kind::Float))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_features_are_on_the_shallow_grid() {
        let fx = FeatureExtractor::new(&[2, 4], None, Device::Cpu).unwrap();
        assert_eq!(fx.dim(), 40 + 112);
        assert_eq!(fx.stride, 8);
        assert_eq!(fx.grid(64), 8);
        let x = Tensor::rand([2, 3, 64, 64], (Kind::Float, Device::Cpu)) * 255.0;
        let f = fx.forward(&x);
        assert_eq!(f.size(), [2, 152, 8, 8]);
        assert!(!f.requires_grad());
        for bad in [vec![], vec![4, 2], vec![2, 7], vec![3, 3]] {
            let e = FeatureExtractor::new(&bad, None, Device::Cpu)
                .err()
                .unwrap();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }
}
