//! Patch scores to anomaly maps: bilinear upsampling to the input size, a Gaussian blur (sigma 4,
//! as PatchCore, with scipy's defaults: radius 4 sigma, "reflect" borders), and 8-bit maps on one
//! global scale over the whole test set, as the reference's `generate_anomaly_maps` writes them.

use tch::{Kind, Tensor};

/// PatchCore's smoothing of the upsampled map (at a map side of 256).
pub const SIGMA: f64 = crate::config::DEFAULT_BLUR;

/// Normalised 1-D Gaussian of `sigma` with radius `round(4 sigma)` (scipy's `truncate=4.0`).
fn gaussian_kernel(sigma: f64) -> Vec<f32> {
    let r = (4.0 * sigma + 0.5).floor() as i64;
    let w: Vec<f64> = (-r..=r)
        .map(|i| (-0.5 * (i as f64 / sigma).powi(2)).exp())
        .collect();
    let sum: f64 = w.iter().sum();
    w.iter().map(|v| (v / sum) as f32).collect()
}

/// Indices that extend `0..n` by `r` on both sides with scipy's "reflect" (half-sample
/// symmetric: `d c b a | a b c d | d c b a`), repeated when `r > n`.
fn reflect_indices(n: i64, r: i64) -> Vec<i64> {
    (-r..n + r)
        .map(|i| {
            let period = 2 * n;
            let m = i.rem_euclid(period);
            if m < n {
                m
            } else {
                period - 1 - m
            }
        })
        .collect()
}

/// Separable Gaussian blur of `x [B, 1, H, W]` with reflect borders.
pub fn gaussian_blur(x: &Tensor, sigma: f64) -> Tensor {
    let k = gaussian_kernel(sigma);
    let r = (k.len() / 2) as i64;
    let dev = x.device();
    let kt = Tensor::from_slice(&k).to_device(dev).to_kind(x.kind());
    let size = x.size();
    let (h, w) = (size[2], size[3]);
    let rows = Tensor::from_slice(&reflect_indices(h, r)).to_device(dev);
    let cols = Tensor::from_slice(&reflect_indices(w, r)).to_device(dev);
    let len = k.len() as i64;
    let y = x.index_select(2, &rows).conv2d(
        &kt.view([1, 1, len, 1]),
        None::<Tensor>,
        [1, 1],
        [0, 0],
        [1, 1],
        1,
    );
    y.index_select(3, &cols).conv2d(
        &kt.view([1, 1, 1, len]),
        None::<Tensor>,
        [1, 1],
        [0, 0],
        [1, 1],
        1,
    )
}

/// Patch scores `[B, G_h, G_w]` -> smoothed maps `[B, h, w]` (float, on the CPU). The blur is
/// sigma 4 at a longer side of 256 (PatchCore's setting) and scales with the map, so it covers
/// the same share of the image at any size.
#[cfg(test)]
pub fn patch_scores_to_maps(scores: &Tensor, h: i64, w: i64) -> Tensor {
    patch_scores_to_maps_blur(scores, h, w, SIGMA)
}

/// [`patch_scores_to_maps`] with the blur's sigma `sigma` at a side of 256 (0: no blur).
pub fn patch_scores_to_maps_blur(scores: &Tensor, h: i64, w: i64, sigma: f64) -> Tensor {
    let up = scores
        .unsqueeze(1)
        .to_kind(Kind::Float)
        .upsample_bilinear2d([h, w], false, None, None);
    let s = sigma * h.max(w) as f64 / 256.0;
    let m = if s > 0.0 { gaussian_blur(&up, s) } else { up };
    m.squeeze_dim(1).to_device(tch::Device::Cpu)
}

/// One map as 8-bit levels on the global scale `[lo, hi]`: `floor(255 (v - lo) / (hi - lo))`,
/// as the reference's `(norm * 255).astype(np.uint8)`; all zeros when `hi <= lo`.
pub fn to_u8(map: &[f32], lo: f32, hi: f32) -> Vec<u8> {
    let span = hi - lo;
    // Also catches a NaN span.
    if span.is_nan() || span <= 0.0 {
        return vec![0; map.len()];
    }
    map.iter()
        .map(|&v| ((v - lo) / span * 255.0).floor().clamp(0.0, 255.0) as u8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn reflect_is_half_sample_symmetric() {
        assert_eq!(reflect_indices(4, 2), [1, 0, 0, 1, 2, 3, 3, 2]);
        assert_eq!(reflect_indices(2, 3), [1, 1, 0, 0, 1, 1, 0, 0]);
    }

    #[test]
    fn blur_keeps_mass_and_constants() {
        let k = gaussian_kernel(SIGMA);
        assert_eq!(k.len(), 33);
        assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        let c = Tensor::full([1, 1, 20, 30], 3.0, (Kind::Float, Device::Cpu));
        let b = gaussian_blur(&c, SIGMA);
        assert_eq!(b.size(), [1, 1, 20, 30]);
        assert!((b - 3.0).abs().max().double_value(&[]) < 1e-5);
        // A centred impulse spreads symmetrically and keeps its mass away from the borders.
        let x = Tensor::zeros([1, 1, 41, 41], (Kind::Float, Device::Cpu));
        let _ = x.get(0).get(0).get(20).get(20).fill_(1.0);
        let y = gaussian_blur(&x, SIGMA);
        assert!((y.sum(Kind::Float).double_value(&[]) - 1.0).abs() < 1e-5);
        let a = y.double_value(&[0, 0, 20, 24]);
        let b = y.double_value(&[0, 0, 16, 20]);
        assert!((a - b).abs() < 1e-7 && a < y.double_value(&[0, 0, 20, 20]));
    }

    #[test]
    fn maps_are_upsampled_and_quantised_on_one_scale() {
        // One peaked patch of 8×8: upsampled to a cone, which the blur (PatchCore's sigma 4 at
        // a side of 256) lowers.
        let s = Tensor::zeros([1, 8, 8], (Kind::Float, Device::Cpu));
        let _ = s.get(0).get(4).get(4).fill_(3.0);
        let m = patch_scores_to_maps(&s, 256, 256);
        assert_eq!(m.size(), [1, 256, 256]);
        let v: Vec<f32> = Vec::try_from(m.flatten(0, -1)).unwrap();
        let q = to_u8(&v, 0.0, 3.0);
        assert!(q.iter().all(|&l| l < 255));
        assert_eq!(to_u8(&[1.0, 2.0, 3.0, 9.0], 1.0, 3.0), [0, 127, 255, 255]);
        assert_eq!(to_u8(&[5.0, 5.0], 5.0, 5.0), [0, 0]);
    }

    #[test]
    fn a_smaller_blur_keeps_a_peak_tighter() {
        // One hot patch of 8x8 on a non-square 6x10 grid: the unblurred map is the bilinear
        // cone; sigma 2 spreads it less than the default 4.
        let s = Tensor::zeros([1, 6, 10], (Kind::Float, Device::Cpu));
        let _ = s.get(0).get(3).get(5).fill_(1.0);
        let above = |m: &Tensor| m.ge(0.25).sum(Kind::Int64).int64_value(&[]);
        let none = patch_scores_to_maps_blur(&s, 48, 80, 0.0);
        assert_eq!(none.size(), [1, 48, 80]);
        let (m2, m4) = (
            patch_scores_to_maps_blur(&s, 48, 80, 2.0),
            patch_scores_to_maps(&s, 48, 80),
        );
        assert!(m4.allclose(
            &patch_scores_to_maps_blur(&s, 48, 80, SIGMA),
            0.0,
            0.0,
            false
        ));
        let peak = |m: &Tensor| m.max().double_value(&[]);
        assert!(peak(&none) > peak(&m2) && peak(&m2) > peak(&m4));
        assert!(above(&(&m2 / peak(&m2))) < above(&(&m4 / peak(&m4))));
    }
}
