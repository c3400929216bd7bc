//! Scoring the test images into float maps (spilled into OUT), with two options beside the
//! plain score against the reference:
//!
//! - **fusion** (`fuse_mutual` w > 0, with normal images): each patch also gets the zero-shot
//!   mutual score against other test images; each score is divided by its mean image score
//!   (the mean over the test images of the largest patch score) and the two are mixed,
//!   `(1 − w) fitted + w mutual`;
//! - **held-out normals** (`holdout`): normal images kept out of the bank are scored like test
//!   images but not written; their maps' statistics on the test maps' 8-bit scale
//!   ([`NormalFloor`]) give MEBin a floor for its threshold range (after RoBiS, which floors
//!   it with the normal images' statistics). The fitted detector's own normal images would
//!   score near zero.
//!
//! Beside the maps, each test image's patch features are pooled under its map
//! (softmax weights at `detect.pool_tau`) while they are at hand, so `training.neighbor_features:
//! pooled` needs no second backbone pass. Not when fusing: the fused map needs every image's
//! scores first, and keeping every image's patch features would not bound the memory.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::features::FeatureExtractor;
use super::maps;
use super::pooled::{pool_under_map, Pooling};
use super::reference::{Inputs, Reference};
use super::spill::MapSpill;
use crate::error::{Error, Result};

/// Statistics of the held-out normal images' maps, in the levels of the written 8-bit maps
/// (`floor(255 (v - lo) / (hi - lo))`, the scale of the defective test images' maps; values
/// below `lo` come out negative).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NormalFloor {
    /// Held-out normal images scored.
    pub images: usize,
    /// The floor to give MEBin as `binarization.min_threshold`: `maxima_mean` (what a normal
    /// image's map typically reaches), never below `maps_maxima_min` (MEBin's own lower end),
    /// clamped to 0..=255. Chosen over `pixel_mean + 3 pixel_sd` (mean + 3 sd, after RoBiS), which lay
    /// at or below MEBin's own lower end on MTD and tire and so changed nothing
    /// (`docs/detect.md`).
    pub floor: f64,
    pub pixel_mean: f64,
    pub pixel_sd: f64,
    /// The smallest, mean and largest of the held-out maps' maxima (the reference's MEBin range
    /// starts at the smallest maximum of the set when normal maps are in it).
    pub maxima_min: f64,
    pub maxima_mean: f64,
    pub maxima_max: f64,
    pub maxima_sd: f64,
    /// The smallest maximum of the written test maps: where MEBin's range starts by itself.
    pub maps_maxima_min: f64,
}

/// The scored maps and image scores of the test images, and the held-out normals' statistics.
pub(crate) struct Scored {
    pub maps: MapSpill,
    pub scores: Vec<f32>,
    pub normal_floor: Option<NormalFloor>,
    /// The test images' pooled features (`[test images, D]`, L2-normalised rows); `None` when
    /// fusing.
    pub pooled: Option<ndarray::Array2<f32>>,
}

/// One image's patch scores `[G_h, G_w]` (fitted, and mutual when fusing) and input size.
struct Grid {
    fitted: Tensor,
    mutual: Option<Tensor>,
    input: (u32, u32),
}

/// Raw-value statistics of the held-out maps, turned into levels once the scale is known.
#[derive(Default)]
struct Moments {
    n: f64,
    sum: f64,
    sum_sq: f64,
    maxima: Vec<f64>,
}

impl Moments {
    fn add(&mut self, map: &[f32]) {
        let mut max = f64::NEG_INFINITY;
        for &v in map {
            let v = v as f64;
            self.sum += v;
            self.sum_sq += v * v;
            max = max.max(v);
        }
        self.n += map.len() as f64;
        self.maxima.push(max);
    }

    /// The statistics in 8-bit levels; `maps_min`: the smallest maximum of the written maps.
    fn levels(&self, lo: f32, hi: f32, maps_min: f64) -> Option<NormalFloor> {
        let span = (hi - lo) as f64;
        if self.maxima.is_empty() || self.n == 0.0 || span.is_nan() || span <= 0.0 {
            return None;
        }
        let level = |v: f64| 255.0 * (v - lo as f64) / span;
        let mean = self.sum / self.n;
        let sd = (self.sum_sq / self.n - mean * mean).max(0.0).sqrt();
        let (pixel_mean, pixel_sd) = (level(mean), 255.0 * sd / span);
        let m = &self.maxima;
        let fold = |f: fn(f64, f64) -> f64, init: f64| m.iter().copied().fold(init, f);
        let k = m.len() as f64;
        let mm = m.iter().sum::<f64>() / k;
        let msd = (m.iter().map(|v| (v - mm).powi(2)).sum::<f64>() / k).sqrt();
        let maps_maxima_min = if maps_min.is_finite() {
            level(maps_min).floor()
        } else {
            0.0
        };
        Some(NormalFloor {
            images: m.len(),
            floor: level(mm).max(maps_maxima_min).clamp(0.0, 255.0),
            pixel_mean,
            pixel_sd,
            maxima_min: level(fold(f64::min, f64::INFINITY)),
            maxima_mean: level(mm),
            maxima_max: level(fold(f64::max, f64::NEG_INFINITY)),
            maxima_sd: 255.0 * msd / span,
            maps_maxima_min,
        })
    }
}

/// The mean over `grids` of their largest value; an error when it is not a positive number
/// (all maps flat at zero cannot be put on a common scale).
fn mean_max<'a>(grids: impl Iterator<Item = &'a Tensor>, what: &str) -> Result<f64> {
    let (mut sum, mut n) = (0.0, 0usize);
    for g in grids {
        sum += g.max().double_value(&[]);
        n += 1;
    }
    let m = sum / n.max(1) as f64;
    if m.is_finite() && m > 0.0 {
        Ok(m)
    } else {
        Err(Error::runtime(format!(
            "--fuse-mutual: the {what} scores of the test images are all zero or not finite (mean image score {m}); \
             nothing to fuse, run without --fuse-mutual"
        )))
    }
}

/// Fused patch scores: `(1 − w) fitted / s_f + w mutual / s_m`.
fn fuse(g: &Grid, w: f64, scales: (f64, f64)) -> Tensor {
    match &g.mutual {
        Some(m) => &g.fitted * ((1.0 - w) / scales.0) + m * (w / scales.1),
        None => g.fitted.shallow_clone(),
    }
}

/// The images one scoring pass takes, and where its maps go.
pub(crate) struct ToScore<'a> {
    pub test: &'a [&'a Path],
    /// Held-out normal images: scored, not written, summarised as [`NormalFloor`].
    pub held: &'a [&'a Path],
    /// Per test image: whether its map is written (and so enters MEBin's range).
    pub written: &'a [bool],
    /// How to pool each test image's patch features under its map (None: not pooled; nor when
    /// fusing).
    pub pool: Option<Pooling>,
    /// The spill file's name in `out`.
    pub spill: &'a str,
}

/// Where the scored maps go, in scoring order: the test images' maps into the spill (and
/// their image scores), the held-out normals' into their moments.
struct Sink<'a> {
    spill: MapSpill,
    scores: Vec<f32>,
    normal: Moments,
    maps_min: f64,
    tests: usize,
    written: &'a [bool],
}

impl Sink<'_> {
    /// Takes image `i`'s patch scores `s` `[1, h, w]` and its blurred map `m` `[1, H, W]`.
    fn take(&mut self, i: usize, s: &Tensor, m: &Tensor, input: (u32, u32)) -> Result<()> {
        let v: Vec<f32> = Vec::try_from(m.flatten(0, -1))
            .map_err(|e| Error::runtime(format!("reading a map: {e}")))?;
        if i < self.tests {
            self.scores.push(s.max().double_value(&[]) as f32);
            if self.written.get(i).copied().unwrap_or(true) {
                let top = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                self.maps_min = self.maps_min.min(top);
            }
            self.spill.push(&v, input.0, input.1)
        } else {
            self.normal.add(&v);
            Ok(())
        }
    }
}

/// Scores the test images (then the held-out normals) against `reference`, and against
/// `mutual` mixed in with its weight when given; `batch_size` images per forward; the float
/// maps are spilled into `out` (`images.spill`). Without fusion each map is made, pooled under
/// (`images.pool`) and spilled as its image is scored; with it, once every image's scores give
/// the two scales.
pub(crate) fn score(
    fx: &FeatureExtractor,
    reference: &Reference,
    mutual: Option<(&Reference, f64)>,
    images: ToScore<'_>,
    inp: Inputs,
    out: &Path,
) -> Result<Scored> {
    let ToScore {
        test,
        held,
        written,
        pool,
        spill,
    } = images;
    let all: Vec<&Path> = test.iter().chain(held).copied().collect();
    let blur = |s: &Tensor, (wd, ht): (u32, u32)| {
        tch::no_grad(|| maps::patch_scores_to_maps_blur(s, ht as i64, wd as i64, inp.blur))
    };
    let mut sink = Sink {
        spill: MapSpill::create_named(out, spill)?,
        scores: Vec::with_capacity(test.len()),
        normal: Moments::default(),
        maps_min: f64::INFINITY,
        tests: test.len(),
        written,
    };
    let pb = crate::logging::progress(all.len() as u64, "scoring");
    // Kept only when fusing: the fused scores need the scales over all test images.
    let mut grids = Vec::new();
    // How to pool and the rows so far; not when fusing.
    let mut pooled = pool
        .filter(|_| mutual.is_none())
        .map(|how| (how, Vec::<f32>::new()));
    let mut dim = 0;
    for (c, chunk) in all.chunks(inp.batch_size).enumerate() {
        let feats = fx.images(chunk, inp.size, inp.resize)?;
        for (i, f) in feats.into_iter().enumerate() {
            let idx = c * inp.batch_size + i;
            let at = |r: &Reference| {
                r.score(idx, &f.patches, fx.metric)
                    .view([f.grid.0, f.grid.1])
                    .to_device(tch::Device::Cpu)
            };
            let fitted = at(reference);
            if let Some((m, _)) = mutual {
                grids.push(Grid {
                    mutual: Some(at(m)),
                    fitted,
                    input: f.input,
                });
                continue;
            }
            let s = fitted.unsqueeze(0);
            let map = blur(&s, f.input);
            if let (Some((how, rows)), true) = (pooled.as_mut(), idx < test.len()) {
                // The map as written, up to the global 8-bit scale the weights ignore.
                let v = pool_under_map(&f.patches, f.grid, &map.squeeze_dim(0), *how)?;
                dim = v.len();
                rows.extend(v);
            }
            sink.take(idx, &s, &map, f.input)?;
        }
        pb.inc(chunk.len() as u64);
        crate::threads::tick();
    }
    pb.finish_and_clear();
    if let Some((_, w)) = mutual {
        let t = &grids[..test.len()];
        let sf = mean_max(t.iter().map(|g| &g.fitted), "fitted")?;
        let sm = mean_max(t.iter().filter_map(|g| g.mutual.as_ref()), "mutual")?;
        log::info!(
            "fusing fitted and mutual scores (weight {w}; mean image scores {sf:.4} / {sm:.4})"
        );
        for (i, g) in grids.iter().enumerate() {
            let s = fuse(g, w, (sf, sm)).unsqueeze(0);
            sink.take(i, &s, &blur(&s, g.input), g.input)?;
        }
    }
    let Sink {
        spill,
        scores,
        normal,
        maps_min,
        ..
    } = sink;
    let normal_floor = normal.levels(spill.lo, spill.hi, maps_min);
    let pooled = match pooled {
        Some((_, rows)) => Some(
            ndarray::Array2::from_shape_vec((test.len(), dim), rows)
                .map_err(|e| Error::runtime(format!("pooled features: {e}")))?,
        ),
        None => None,
    };
    Ok(Scored {
        maps: spill,
        scores,
        normal_floor,
        pooled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn held_out_statistics_are_on_the_8_bit_scale() {
        let mut m = Moments::default();
        m.add(&[0.1, 0.1, 0.3, 0.3]);
        m.add(&[0.2, 0.2, 0.2, 0.2]);
        // Scale 0..1: levels are 255 v.
        let f = m.levels(0.0, 1.0, 0.2).unwrap();
        assert_eq!(f.images, 2);
        // Pixels 0.1 0.1 0.3 0.3 0.2 0.2 0.2 0.2: mean 0.2, sd = sqrt(mean of squares - 0.04).
        assert!((f.pixel_mean - 51.0).abs() < 1e-4);
        let sd = ((0.01f64 * 2.0 + 0.09 * 2.0 + 0.04 * 4.0) / 8.0 - 0.04).sqrt() * 255.0;
        assert!((f.pixel_sd - sd).abs() < 1e-3);
        assert!((f.floor - 63.75).abs() < 1e-3);
        assert_eq!(f.maps_maxima_min, 51.0);
        assert!((f.maxima_sd - 12.75).abs() < 1e-3);
        // The floor never lies below MEBin's own lower end.
        assert_eq!(m.levels(0.0, 1.0, 0.9).unwrap().floor, 229.0);
        assert!((f.maxima_min - 51.0).abs() < 1e-4 && (f.maxima_max - 76.5).abs() < 1e-4);
        assert!((f.maxima_mean - 63.75).abs() < 1e-4);
        // A flat scale or no maps: no statistics.
        assert!(m.levels(1.0, 1.0, 0.5).is_none());
        assert!(Moments::default().levels(0.0, 1.0, 0.5).is_none());
    }

    #[test]
    fn fusion_mixes_scores_on_their_own_scales() {
        let g = Grid {
            fitted: Tensor::from_slice(&[0.0f32, 2.0]).view([1, 2]),
            mutual: Some(Tensor::from_slice(&[10.0f32, 0.0]).view([1, 2])),
            input: (2, 1),
        };
        let f = fuse(&g, 0.5, (2.0, 10.0));
        let v: Vec<f32> = Vec::try_from(f.flatten(0, -1)).unwrap();
        assert_eq!(v, [0.5, 0.5]);
        // Weight 0: the fitted scores, unscaled.
        let f0 = fuse(&Grid { mutual: None, ..g }, 0.0, (1.0, 1.0));
        assert_eq!(Vec::<f32>::try_from(f0.flatten(0, -1)).unwrap(), [0.0, 2.0]);
        let zeros = [Tensor::zeros([2, 2], (Kind::Float, Device::Cpu))];
        assert!(mean_max(zeros.iter(), "fitted").is_err());
    }
}
