//! Score-weighted pooling of the detector backbone's patch features: one feature per image,
//! the patches weighted by the image's anomaly map (issue 25; after Sohn et al., "Anomaly
//! Clustering", WACV 2023, and UniFormaly). Training-free: k-means on these features groups the
//! images by what their anomalous patches look like, without the crops' loose masks.
//!
//! Weights: `Soft { tau }`: a softmax of the patch scores over a temperature relative to the
//! image's own score spread, `w ∝ exp((s − max s) / (tau · sd(s)))`, so the same `tau` fits maps
//! of any scale; `TopK { fraction }`: the plain mean of the highest-scoring patches.

use std::path::Path;

use ndarray::Array2;
use tch::{Device, Kind, Tensor};

use super::features::{FeatureExtractor, Resize};
use crate::error::{Error, Result};
use crate::imageio::RawMap;

/// The detector's pooled features, beside its maps: one L2-normalised f32 row per test image
/// ([`crate::cluster::features::save_tokens`]'s format), the images in [`DETECT_IMAGES_FILE`].
pub const DETECT_FEATURES_FILE: &str = "pooled_features.safetensors";
/// The rows' images: a CSV with an `image` column, `<type>/<stem>` (a flat folder: `<stem>`).
pub const DETECT_IMAGES_FILE: &str = "pooled_features.csv";

/// How the patch features of an image are weighted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pooling {
    /// Softmax weights at temperature `tau` × the image's score standard deviation.
    Soft { tau: f64 },
    /// The mean of the top `fraction` of patches by score (at least one).
    TopK { fraction: f64 },
}

/// The weights of `scores` (one per patch), summing to 1.
pub fn weights(scores: &[f64], pooling: Pooling) -> Vec<f64> {
    let n = scores.len();
    if n == 0 {
        return Vec::new();
    }
    match pooling {
        Pooling::Soft { tau } => {
            let mean = scores.iter().sum::<f64>() / n as f64;
            let sd = (scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            // A flat map has no anomalous patch: every patch counts the same.
            let t = tau * sd;
            if t.is_nan() || t <= 0.0 {
                return vec![1.0 / n as f64; n];
            }
            let e: Vec<f64> = scores.iter().map(|s| ((s - max) / t).exp()).collect();
            let z: f64 = e.iter().sum();
            e.iter().map(|v| v / z).collect()
        }
        Pooling::TopK { fraction } => {
            let k = ((n as f64 * fraction).round() as usize).clamp(1, n);
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
            let mut w = vec![0.0; n];
            for &i in &order[..k] {
                w[i] = 1.0 / k as f64;
            }
            w
        }
    }
}

/// `patches [P, D]` pooled with the weights of `scores` (P of them) → `[D]` f32 on the CPU.
pub fn pool(patches: &Tensor, scores: &[f64], pooling: Pooling) -> Result<Tensor> {
    let p = patches.size();
    if p.len() != 2 || p[0] as usize != scores.len() || p[0] == 0 {
        return Err(Error::runtime(format!(
            "pooling {} scores over patch features of shape {p:?}",
            scores.len()
        )));
    }
    let w: Vec<f32> = weights(scores, pooling).iter().map(|&v| v as f32).collect();
    let w = Tensor::from_slice(&w)
        .to_device(patches.device())
        .view([1, -1]);
    Ok(w.matmul(&patches.to_kind(Kind::Float))
        .view([-1])
        .to_device(Device::Cpu))
}

/// The map averaged over the cells of a `rows`×`cols` grid laid over it (row-major scores).
pub fn map_to_grid(map: &RawMap, rows: usize, cols: usize) -> Vec<f64> {
    let (w, h, value): (usize, usize, Box<dyn Fn(usize) -> f64 + '_>) = match map {
        RawMap::Levels(m) => (m.width, m.height, Box::new(|k| m.pixels[k] as f64)),
        RawMap::Float(f) => (f.width, f.height, Box::new(|k| f.values[k])),
    };
    let mut sums = vec![0.0f64; rows * cols];
    let mut counts = vec![0usize; rows * cols];
    for y in 0..h {
        let r = (y * rows / h.max(1)).min(rows - 1);
        for x in 0..w {
            let c = (x * cols / w.max(1)).min(cols - 1);
            sums[r * cols + c] += value(y * w + x);
            counts[r * cols + c] += 1;
        }
    }
    // A grid finer than the map: empty cells take the nearest map pixel.
    (0..rows * cols)
        .map(|k| match counts[k] {
            0 => {
                let (r, c) = (k / cols, k % cols);
                let (y, x) = ((r * h / rows).min(h - 1), (c * w / cols).min(w - 1));
                value(y * w + x)
            }
            n => sums[k] / n as f64,
        })
        .collect()
}

/// `patches [P, D]` of a `grid` (rows × cols = P) pooled under `map [H, W]` (the image's
/// anomaly map at the backbone input, any scale: the weights depend on the scores' spread only),
/// each patch scored by the mean of the map over its cell; L2-normalised.
pub fn pool_under_map(
    patches: &Tensor,
    grid: (i64, i64),
    map: &Tensor,
    pooling: Pooling,
) -> Result<Vec<f32>> {
    let cells = map
        .to_kind(Kind::Float)
        .unsqueeze(0)
        .adaptive_avg_pool2d([grid.0, grid.1])
        .to_kind(Kind::Double)
        .to_device(Device::Cpu)
        .flatten(0, -1);
    let scores = Vec::<f64>::try_from(&cells)?;
    Ok(unit(Vec::<f32>::try_from(&pool(
        patches, &scores, pooling,
    )?)?))
}

/// `v` over its length (a zero vector stays zero).
fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// One L2-normalised pooled feature per `(image, map)` pair, rows in order.
pub fn pooled_features(
    fx: &FeatureExtractor,
    pairs: &[(&Path, &Path)],
    size: u32,
    resize: Resize,
    pooling: Pooling,
) -> Result<Array2<f32>> {
    let pb = crate::logging::progress(pairs.len() as u64, "pooled features");
    let mut rows: Vec<f32> = Vec::new();
    let mut dim = 0usize;
    for (image, map) in pairs {
        let f = fx
            .images(&[*image], size, resize)?
            .pop()
            .ok_or_else(|| Error::runtime("no features for an image"))?;
        let raw = crate::imageio::read_anomaly_map(map)?;
        let scores = map_to_grid(&raw, f.grid.0 as usize, f.grid.1 as usize);
        let v = pool(&f.patches, &scores, pooling)?;
        let v = unit(Vec::<f32>::try_from(&v)?);
        dim = v.len();
        rows.extend(v);
        pb.inc(1);
        crate::threads::tick();
    }
    pb.finish_and_clear();
    Array2::from_shape_vec((pairs.len(), dim), rows)
        .map_err(|e| Error::runtime(format!("pooled features: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imageio::GrayMap;

    fn patches(p: i64, d: i64) -> Tensor {
        Tensor::arange(p * d, (Kind::Float, Device::Cpu)).view([p, d]) / 10.0
    }

    #[test]
    fn uniform_scores_give_the_plain_mean() {
        let x = patches(6, 4);
        let mean = x.mean_dim(0, false, Kind::Float);
        for pooling in [Pooling::Soft { tau: 1.0 }, Pooling::TopK { fraction: 1.0 }] {
            let v = pool(&x, &[3.0; 6], pooling).unwrap();
            assert!(v.allclose(&mean, 1e-6, 1e-6, false), "{pooling:?}");
        }
    }

    #[test]
    fn one_dominant_patch_at_a_low_temperature_is_that_patch() {
        let x = patches(6, 4);
        let mut s = [0.1, 0.2, 0.15, 0.12, 0.18, 0.11];
        s[3] = 5.0;
        let v = pool(&x, &s, Pooling::Soft { tau: 0.01 }).unwrap();
        assert!(v.allclose(&x.get(3), 1e-5, 1e-5, false));
        let top = pool(&x, &s, Pooling::TopK { fraction: 0.1 }).unwrap();
        assert!(top.allclose(&x.get(3), 1e-6, 1e-6, false));
        // A higher temperature spreads the weight.
        let w = weights(&s, Pooling::Soft { tau: 2.0 });
        assert!(w[3] < 0.99 && w.iter().all(|&v| v > 0.0));
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn pooling_under_a_map_scores_each_patch_by_its_cell() {
        // A 6×4 map over a 2×3 grid (2×2 pixels a cell), on any scale: the same pooled feature
        // as the cells' means, unit length.
        let mut px = vec![10.0f32; 24];
        (px[0], px[1], px[6], px[7], px[10]) = (90.0, 70.0, 50.0, 30.0, 40.0);
        let map = Tensor::from_slice(&px).view([4, 6]);
        let x = patches(6, 5);
        let cells = [60.0, 10.0, 17.5, 10.0, 10.0, 10.0];
        let soft = Pooling::Soft { tau: 1.0 };
        let want = Vec::<f32>::try_from(&pool(&x, &cells, soft).unwrap()).unwrap();
        let got = pool_under_map(&x, (2, 3), &map, soft).unwrap();
        let scaled = pool_under_map(&x, (2, 3), &(&map * 3.0 + 7.0), soft).unwrap();
        let norm = want.iter().map(|v| v * v).sum::<f32>().sqrt();
        for ((g, s), w) in got.iter().zip(&scaled).zip(&want) {
            assert!(
                (g - w / norm).abs() < 1e-5 && (s - g).abs() < 1e-5,
                "{got:?}"
            );
        }
    }

    #[test]
    fn non_square_grids_and_maps_pool_to_the_right_shapes() {
        // A 6×4 map (w = 6, h = 4) with one hot corner, on a 2×3 grid (rows × cols).
        let mut px = vec![0u8; 24];
        px[0] = 200;
        px[1] = 200;
        let map = RawMap::Levels(GrayMap::from_u8(6, 4, &px));
        let g = map_to_grid(&map, 2, 3);
        assert_eq!(g.len(), 6);
        assert!((g[0] - 100.0).abs() < 1e-9, "{g:?}");
        assert!(g[1..].iter().all(|&v| v == 0.0));
        let v = pool(&patches(6, 5), &g, Pooling::Soft { tau: 1.0 }).unwrap();
        assert_eq!(v.size(), [5]);
        // A grid finer than the map samples it.
        assert_eq!(map_to_grid(&map, 8, 12).len(), 96);
        assert!(pool(&patches(5, 5), &g, Pooling::Soft { tau: 1.0 }).is_err());
    }
}
