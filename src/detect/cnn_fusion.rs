//! A CNN beside the ViT (`fuse_cnn` w > 0, with normal images): a second detector on ImageNet
//! EfficientNet-Lite0 (stages 2 and 4 with PatchCore's 3×3 mean: `detect --backbone
//! efficientnet-lite0`'s defaults, its input squashed to a square) is fitted on the same normal
//! images and scores the same test images at the ViT's input side; its maps are mixed into the
//! ViT's.
//!
//! Why two backbones: which one localises depends on the data. On the tire objects the CNN puts
//! the map's maximum in the defect far more often than the ViT (80.5 against 58.5 % of the maps,
//! best IoU 0.462 against 0.238), on MTD's textured tiles far less often (40.5 against 79.9 %).
//! Mixed at w = 0.5, tire gets 82.9 % and 92.8 % of MEBin's crops on a defect (ViT 86.9 %), and
//! MTD keeps the ViT's localisation within its noise (docs/detect.md, "A CNN beside the ViT").
//!
//! Each detector's maps are first put on 0..1 by their own range over the test maps (the scale
//! its 8-bit maps would have), then divided by their mean image maximum, as `fuse_mutual` does
//! with the scores, and mixed: `(1 − w) ViT + w CNN`. The CNN's map is resized to the ViT's.

use std::path::Path;

use tch::Tensor;

use super::features::{FeatureExtractor, Resize};
use super::reference::{fit_bank, Inputs, Reference};
use super::scoring::{score, ToScore};
use super::spec::{DetectSpec, DEFAULT_STAGES};
use super::spill::MapSpill;
use crate::error::{Error, Result};

const CNN_FILE: &str = ".anomalyncd-detect-maps-cnn.f32";
const FUSED_FILE: &str = ".anomalyncd-detect-maps-fused.f32";

/// Fits the CNN on `fitted`, scores `test` with it and mixes its maps into `vit` (the ViT's
/// maps of `test`, in order) with weight `spec.fuse_cnn`; returns the mixed maps (spilled into
/// `out`) and each test image's score, the maximum of its mixed map.
pub(crate) fn fuse(
    spec: &DetectSpec,
    fitted: &[&Path],
    test: &[&Path],
    written: &[bool],
    inp: Inputs,
    vit: MapSpill,
    out: &Path,
) -> Result<(MapSpill, Vec<f32>)> {
    let fx =
        FeatureExtractor::efficientnet(&DEFAULT_STAGES, spec.cnn_weights.as_deref(), spec.device)?;
    log::info!(
        "the CNN beside the ViT: EfficientNet-Lite0 fitted on the same {} normal images (weight {})",
        fitted.len(),
        spec.fuse_cnn
    );
    // Squashed to the side, as `detect --backbone efficientnet-lite0` takes its input.
    let inp = Inputs {
        resize: Resize::Square,
        ..inp
    };
    let (bank, _) = fit_bank(&fx, fitted, inp, spec.max_patches, spec.coreset)?;
    let reference = Reference::bank(bank, fx.slices());
    let images = ToScore {
        test,
        held: &[],
        written,
        pool: false,
        spill: CNN_FILE,
    };
    let cnn = score(&fx, &reference, None, images, inp, out)?.maps;
    drop(reference);
    mix(&vit, &cnn, test.len(), spec.fuse_cnn, out)
}

/// `(1 − w) a / m_a + w b / m_b` per map, `a` and `b` on 0..1 by their spill's range and `m`
/// their mean image maximum; `b` resized to `a`'s size.
fn mix(a: &MapSpill, b: &MapSpill, n: usize, w: f64, out: &Path) -> Result<(MapSpill, Vec<f32>)> {
    let unit = |s: &MapSpill, what: &str| -> Result<(f32, f32)> {
        let span = s.hi - s.lo;
        if span.is_finite() && span > 0.0 {
            Ok((s.lo, span))
        } else {
            Err(Error::runtime(format!(
                "--fuse-cnn: the {what} maps are flat (range {} to {}); nothing to fuse, run without --fuse-cnn",
                s.lo, s.hi
            )))
        }
    };
    let (ua, ub) = (unit(a, "ViT's")?, unit(b, "CNN's")?);
    let read = |i: usize| -> Result<(Vec<f32>, Vec<f32>, u32, u32)> {
        let (va, wa, ha) = a.read(i)?;
        let (vb, wb, hb) = b.read(i)?;
        let vb = match (wb, hb) == (wa, ha) {
            true => vb,
            false => Vec::try_from(
                Tensor::from_slice(&vb)
                    .view([1, 1, hb as i64, wb as i64])
                    .upsample_bilinear2d([ha as i64, wa as i64], false, None, None)
                    .flatten(0, -1),
            )
            .map_err(|e| Error::runtime(format!("resizing a CNN map: {e}")))?,
        };
        let scale = |v: Vec<f32>, (lo, span): (f32, f32)| -> Vec<f32> {
            v.into_iter().map(|x| (x - lo) / span).collect()
        };
        Ok((scale(va, ua), scale(vb, ub), wa, ha))
    };
    let top = |v: &[f32]| v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let (mut ma, mut mb) = (0.0, 0.0);
    for i in 0..n {
        let (va, vb, _, _) = read(i)?;
        ma += top(&va) / n as f64;
        mb += top(&vb) / n as f64;
    }
    if !(ma > 0.0 && mb > 0.0) {
        return Err(Error::runtime(
            "--fuse-cnn: a detector's maps are all at their lowest value; nothing to fuse, run without --fuse-cnn",
        ));
    }
    let (ka, kb) = (((1.0 - w) / ma) as f32, (w / mb) as f32);
    let mut fused = MapSpill::create_named(out, FUSED_FILE)?;
    let mut scores = Vec::with_capacity(n);
    for i in 0..n {
        let (va, vb, wd, ht) = read(i)?;
        let v: Vec<f32> = va.iter().zip(&vb).map(|(x, y)| ka * x + kb * y).collect();
        scores.push(top(&v) as f32);
        fused.push(&v, wd, ht)?;
    }
    Ok((fused, scores))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_detector_counts_by_its_own_scale_and_the_cnn_map_is_resized() {
        let d = tempfile::tempdir().unwrap();
        let mut a = MapSpill::create_named(d.path(), "a").unwrap();
        let mut b = MapSpill::create_named(d.path(), "b").unwrap();
        // ViT: 2×1 maps on the range 0..2; CNN: 1×1 maps on the range 10..30.
        a.push(&[0.0, 2.0], 2, 1).unwrap();
        a.push(&[1.0, 1.0], 2, 1).unwrap();
        b.push(&[30.0], 1, 1).unwrap();
        b.push(&[10.0], 1, 1).unwrap();
        let (f, scores) = mix(&a, &b, 2, 0.5, d.path()).unwrap();
        // On 0..1: a = [0, 1], [0.5, 0.5] (mean max 0.75); b = [1], [0] (mean max 0.5), spread
        // over the ViT's 2×1 grid.
        let (v0, w, h) = f.read(0).unwrap();
        assert_eq!((w, h), (2, 1));
        let k = |x: f64, y: f64| (0.5 * x / 0.75 + 0.5 * y / 0.5) as f32;
        for (got, want) in v0.iter().zip([k(0.0, 1.0), k(1.0, 1.0)]) {
            assert!((got - want).abs() < 1e-6, "{v0:?}");
        }
        let (v1, _, _) = f.read(1).unwrap();
        assert!(v1.iter().all(|x| (x - k(0.5, 0.0)).abs() < 1e-6), "{v1:?}");
        assert!((scores[0] - k(1.0, 1.0)).abs() < 1e-6 && (scores[1] - k(0.5, 0.0)).abs() < 1e-6);
        drop(f);
        // Weight 0: the ViT's maps alone (on their scale).
        let (f0, _) = mix(&a, &b, 2, 0.0, d.path()).unwrap();
        assert_eq!(f0.read(0).unwrap().0, [0.0, (1.0 / 0.75) as f32]);
        // A flat detector has nothing to give.
        let mut flat = MapSpill::create_named(d.path(), "c").unwrap();
        flat.push(&[3.0], 1, 1).unwrap();
        flat.push(&[3.0], 1, 1).unwrap();
        let Err(e) = mix(&a, &flat, 2, 0.5, d.path()) else {
            panic!("a flat CNN fused");
        };
        assert!(e.to_string().contains("--fuse-cnn"), "{e}");
    }
}
