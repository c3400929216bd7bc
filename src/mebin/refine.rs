//! Image-guided refinement of an anomaly map before MEBin (`binarization.refine: guided`, ours;
//! `none`, the default, is the reference's behaviour).
//!
//! A detector's patch-level map is blurred over whole patches, so its binary mask is loose and
//! the mask-guided class token sees background. The guided filter (He, Sun and Tang, "Guided
//! Image Filtering", TPAMI 2013) fits the map, in every window of radius r, as a linear function
//! of the image's brightness: where the defect has edges in the image, the map takes them; where
//! the image is flat, the map is smoothed. It runs at the map's resolution on the image resized
//! to it, in O(pixels) with summed-area tables.
//!
//! Written here because neither `image` nor `imageproc` has a guided filter or an f32 box mean.

use std::path::Path;

use image::imageops::FilterType;

use crate::config::{Binarization, Refine};
use crate::error::Result;
use crate::imageio::{BitDepth, FloatMap, GrayMap, RawMap};

/// What is done to each map before MEBin (`binarization.refine`, `refine_radius`, `refine_eps`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MapRefine {
    pub kind: Refine,
    pub radius: Option<usize>,
    pub eps: f64,
}

impl From<&Binarization> for MapRefine {
    fn from(b: &Binarization) -> Self {
        Self {
            kind: b.refine,
            radius: b.refine_radius,
            eps: b.refine_eps,
        }
    }
}

impl Default for MapRefine {
    /// The reference's behaviour: maps as they are.
    fn default() -> Self {
        Self::from(&Binarization::default())
    }
}

/// The window radius in map pixels when none is set: 1/64 of the map's shorter side, at least 2
/// (4 on a 256-pixel map, 7 on a 448 one: about half a ViT-S/14 patch at the detector's input).
pub fn default_radius(width: usize, height: usize) -> usize {
    (width.min(height) / 64).max(2)
}

/// Means over the (2r+1)² windows of a `w`×`h` image, clipped at the borders.
fn box_mean(x: &[f64], w: usize, h: usize, r: usize) -> Vec<f64> {
    // Summed-area table with a zero first row and column.
    let mut sat = vec![0.0f64; (w + 1) * (h + 1)];
    for y in 0..h {
        let mut row = 0.0;
        for xx in 0..w {
            row += x[y * w + xx];
            sat[(y + 1) * (w + 1) + xx + 1] = sat[y * (w + 1) + xx + 1] + row;
        }
    }
    let mut out = vec![0.0f64; w * h];
    for y in 0..h {
        let (y0, y1) = (y.saturating_sub(r), (y + r + 1).min(h));
        for xx in 0..w {
            let (x0, x1) = (xx.saturating_sub(r), (xx + r + 1).min(w));
            let s = sat[y1 * (w + 1) + x1] - sat[y0 * (w + 1) + x1] - sat[y1 * (w + 1) + x0]
                + sat[y0 * (w + 1) + x0];
            out[y * w + xx] = s / ((y1 - y0) * (x1 - x0)) as f64;
        }
    }
    out
}

/// The guided filter of `p` with guide `i` (both `w`×`h`, `i` in 0..1), radius `r`, and
/// regularisation `eps` (a variance on the guide's scale: edges of lower contrast are smoothed).
pub fn guided_filter(i: &[f64], p: &[f64], w: usize, h: usize, r: usize, eps: f64) -> Vec<f64> {
    let mean_i = box_mean(i, w, h, r);
    let mean_p = box_mean(p, w, h, r);
    let ip: Vec<f64> = i.iter().zip(p).map(|(a, b)| a * b).collect();
    let ii: Vec<f64> = i.iter().map(|a| a * a).collect();
    let corr_ip = box_mean(&ip, w, h, r);
    let corr_ii = box_mean(&ii, w, h, r);
    let mut a = vec![0.0; w * h];
    let mut b = vec![0.0; w * h];
    for k in 0..w * h {
        let var = corr_ii[k] - mean_i[k] * mean_i[k];
        let cov = corr_ip[k] - mean_i[k] * mean_p[k];
        a[k] = cov / (var + eps);
        b[k] = mean_p[k] - a[k] * mean_i[k];
    }
    let (ma, mb) = (box_mean(&a, w, h, r), box_mean(&b, w, h, r));
    (0..w * h).map(|k| ma[k] * i[k] + mb[k]).collect()
}

/// The image's brightness in 0..1, resized to `w`×`h` (the guide).
fn guide_of(image: &Path, w: usize, h: usize) -> Result<Vec<f64>> {
    let img = crate::imageio::decode(image)?.to_luma32f();
    let img = image::imageops::resize(&img, w as u32, h as u32, FilterType::Triangle);
    Ok(img
        .pixels()
        .map(|p| p.0[0].clamp(0.0, 1.0) as f64)
        .collect())
}

/// `map` refined as `how` says, guided by `image`; the map keeps its kind and its scale
/// (levels are clamped to the bit depth's range, float values to the map's own range).
pub fn refine_map(map: RawMap, image: &Path, how: &MapRefine) -> Result<RawMap> {
    if how.kind == Refine::None {
        return Ok(map);
    }
    let (radius, eps) = (how.radius, &how.eps);
    let (w, h) = match &map {
        RawMap::Levels(m) => (m.width, m.height),
        RawMap::Float(f) => (f.width, f.height),
    };
    let guide = guide_of(image, w, h)?;
    let r = radius.unwrap_or_else(|| default_radius(w, h));
    Ok(match map {
        RawMap::Levels(m) => {
            let top = match m.depth {
                BitDepth::Eight => 255.0,
                BitDepth::Sixteen => 65535.0,
            };
            let p: Vec<f64> = m.pixels.iter().map(|&v| v as f64).collect();
            let q = guided_filter(&guide, &p, w, h, r, *eps);
            RawMap::Levels(GrayMap {
                width: w,
                height: h,
                depth: m.depth,
                pixels: q.iter().map(|v| v.round().clamp(0.0, top) as u16).collect(),
            })
        }
        RawMap::Float(f) => {
            let (lo, hi) = f.min_max();
            let q = guided_filter(&guide, &f.values, w, h, r, *eps);
            RawMap::Float(FloatMap {
                width: w,
                height: h,
                values: q.iter().map(|v| v.clamp(lo, hi)).collect(),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bright square on a dark image, its mask, and a map that is the square blurred.
    fn scene(n: usize) -> (Vec<f64>, Vec<bool>, Vec<f64>) {
        let inside = |x: usize, y: usize| (20..44).contains(&x) && (22..40).contains(&y);
        let image: Vec<f64> = (0..n * n)
            .map(|k| if inside(k % n, k / n) { 0.8 } else { 0.2 })
            .collect();
        let truth: Vec<bool> = (0..n * n).map(|k| inside(k % n, k / n)).collect();
        let sharp: Vec<f64> = truth.iter().map(|&t| if t { 255.0 } else { 0.0 }).collect();
        // Three passes of a radius-4 box blur: close to a Gaussian of sigma ~ 4.
        let mut map = sharp;
        for _ in 0..3 {
            map = box_mean(&map, n, n, 4);
        }
        (image, truth, map)
    }

    /// The IoU with `truth` at the best threshold.
    fn best_iou(map: &[f64], truth: &[bool]) -> f64 {
        (1..255)
            .map(|t| {
                let t = t as f64;
                let (mut inter, mut union) = (0usize, 0usize);
                for (v, &g) in map.iter().zip(truth) {
                    let p = *v > t;
                    inter += (p && g) as usize;
                    union += (p || g) as usize;
                }
                inter as f64 / union.max(1) as f64
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn box_mean_is_the_clipped_window_mean() {
        let x: Vec<f64> = (0..12).map(|v| v as f64).collect(); // 4 wide, 3 high
        let m = box_mean(&x, 4, 3, 1);
        // Corner (0,0): values 0, 1, 4, 5.
        assert!((m[0] - 2.5).abs() < 1e-12);
        // Centre (1,1): rows 0..3, columns 0..3: 0 1 2 4 5 6 8 9 10.
        assert!((m[5] - 5.0).abs() < 1e-12);
        assert_eq!(box_mean(&x, 4, 3, 0), x);
    }

    #[test]
    fn a_blurred_square_comes_back_tighter_along_the_image_edges() {
        let n = 64;
        let (image, truth, map) = scene(n);
        let before = best_iou(&map, &truth);
        let refined = guided_filter(&image, &map, n, n, 3, 1e-3);
        let after = best_iou(&refined, &truth);
        assert!(after > before + 0.05, "IoU {before:.3} -> {after:.3}");
        // Across the square's left edge (x = 20) the map steps instead of ramping.
        let row = 31 * n;
        let step = |m: &[f64]| m[row + 21] - m[row + 18];
        assert!(
            step(&refined) > 1.3 * step(&map),
            "{} -> {}",
            step(&map),
            step(&refined)
        );
    }

    #[test]
    fn a_flat_guide_leaves_a_smooth_map_nearly_unchanged_and_none_is_the_identity() {
        let n = 32;
        let flat = vec![0.5; n * n];
        let smooth: Vec<f64> = (0..n * n).map(|k| (k % n) as f64 * 4.0).collect();
        let q = guided_filter(&flat, &smooth, n, n, 2, 1e-3);
        // Interior pixels of a linear ramp are kept by the box means.
        for y in 4..n - 4 {
            for x in 4..n - 4 {
                assert!((q[y * n + x] - smooth[y * n + x]).abs() < 1e-9);
            }
        }
        let m = RawMap::Levels(GrayMap::from_u8(2, 1, &[3, 250]));
        let same = refine_map(m, Path::new("/not/read"), &MapRefine::default()).unwrap();
        match same {
            RawMap::Levels(g) => assert_eq!(g.pixels, vec![3, 250]),
            RawMap::Float(_) => panic!("kind changed"),
        }
    }
}
