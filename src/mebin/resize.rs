//! The two resamplings the reference's cropping relies on, reproduced bit for bit because crop
//! boxes and scores depend on them: OpenCV's `INTER_NEAREST` (mask to image size) and Pillow's
//! bicubic resize of a float image (normalised map to image size, for crop scores). Hand-written:
//! the `image` crate's filters use other sample positions and kernels.

/// OpenCV `resize(.., INTER_NEAREST)` source index for each of `dst` outputs from `src` inputs:
/// `min(floor(x * (1 / (dst / src))), src - 1)` in float64, as `resizeNN` computes it.
pub fn nearest_index(src: usize, dst: usize) -> Vec<usize> {
    let fx = dst as f64 / src as f64;
    let ifx = 1.0 / fx;
    (0..dst)
        .map(|x| ((x as f64 * ifx).floor() as usize).min(src - 1))
        .collect()
}

/// OpenCV `resize(src, (dw, dh), interpolation=INTER_NEAREST)` of a one-byte-per-pixel image.
pub fn nearest(src: &[u8], sw: usize, sh: usize, dw: usize, dh: usize) -> Vec<u8> {
    assert_eq!(src.len(), sw * sh, "nearest: wrong pixel count");
    let xs = nearest_index(sw, dw);
    let ys = nearest_index(sh, dh);
    let mut out = Vec::with_capacity(dw * dh);
    for &sy in &ys {
        let row = &src[sy * sw..(sy + 1) * sw];
        out.extend(xs.iter().map(|&sx| row[sx]));
    }
    out
}

/// Pillow's bicubic kernel (a = −0.5).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Pillow's `precompute_coeffs` for one axis (`Resample.c`): per output index the first input
/// index and the normalised weights (`ksize` slots each, unused ones 0). The support widens with
/// the scale when downsampling.
pub struct Coeffs {
    pub start: Vec<usize>,
    pub len: Vec<usize>,
    pub ksize: usize,
    pub weights: Vec<f64>,
}

impl Coeffs {
    pub fn bicubic(in_size: usize, out_size: usize) -> Coeffs {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = 2.0 * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut c = Coeffs {
            start: Vec::with_capacity(out_size),
            len: Vec::with_capacity(out_size),
            ksize,
            weights: vec![0.0; out_size * ksize],
        };
        for xx in 0..out_size {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C's (int) cast truncates toward zero
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = (((center + support + 0.5) as i64).min(in_size as i64) as usize)
                .clamp(xmin, xmin + ksize);
            let k = &mut c.weights[xx * ksize..xx * ksize + (xmax - xmin)];
            for (x, w) in (xmin..xmax).zip(k.iter_mut()) {
                *w = bicubic((x as f64 - center + 0.5) * ss);
            }
            let ww: f64 = k.iter().sum();
            if ww != 0.0 {
                k.iter_mut().for_each(|w| *w /= ww);
            }
            c.start.push(xmin);
            c.len.push(xmax - xmin);
        }
        c
    }

    /// The weights of output index `i`.
    pub fn of(&self, i: usize) -> &[f64] {
        &self.weights[i * self.ksize..i * self.ksize + self.len[i]]
    }
}

/// A float map and the size Pillow would resize it to; evaluates resized values only where asked.
pub struct BicubicView<'a> {
    src: &'a [f32],
    sw: usize,
    sh: usize,
    dw: usize,
    dh: usize,
    cx: Coeffs,
    cy: Coeffs,
}

impl<'a> BicubicView<'a> {
    /// `src` is the row-major `sw`×`sh` image Pillow holds in mode "F".
    pub fn new(src: &'a [f32], sw: usize, sh: usize, dw: usize, dh: usize) -> Self {
        assert_eq!(src.len(), sw * sh, "BicubicView: wrong pixel count");
        BicubicView {
            src,
            sw,
            sh,
            dw,
            dh,
            cx: Coeffs::bicubic(sw, dw),
            cy: Coeffs::bicubic(sh, dh),
        }
    }

    /// Maximum of `resize((dw, dh), BICUBIC)` over `[x0, x1) × [y0, y1)` (clipped to the image),
    /// or None when that is empty. Pillow resamples horizontally first, storing float32, then
    /// vertically, each output a float64 sum over its taps in order; a size that does not change
    /// is not resampled. Computing only the needed columns and rows gives the same numbers at a
    /// fraction of the cost (the vertical pass runs row-wise, keeping each pixel's sum order).
    pub fn max_in(&self, x0: i64, y0: i64, x1: i64, y1: i64) -> Option<f32> {
        let (x0, x1) = (x0.max(0) as usize, x1.min(self.dw as i64).max(0) as usize);
        let (y0, y1) = (y0.max(0) as usize, y1.min(self.dh as i64).max(0) as usize);
        if x0 >= x1 || y0 >= y1 {
            return None;
        }
        let same_w = self.sw == self.dw;
        let same_h = self.sh == self.dh;
        // Source rows the vertical pass needs.
        let (r0, r1) = if same_h {
            (y0, y1)
        } else {
            let first = (y0..y1).map(|y| self.cy.start[y]).min().unwrap_or(0);
            let last = (y0..y1)
                .map(|y| self.cy.start[y] + self.cy.len[y])
                .max()
                .unwrap_or(0);
            (first, last)
        };
        let cols = x1 - x0;
        // Horizontal pass over rows r0..r1 for output columns x0..x1 (float32 intermediate).
        let mut tmp = vec![0f32; (r1 - r0) * cols];
        for (r, trow) in (r0..r1).zip(tmp.chunks_exact_mut(cols)) {
            let srow = &self.src[r * self.sw..(r + 1) * self.sw];
            if same_w {
                trow.copy_from_slice(&srow[x0..x1]);
                continue;
            }
            for (x, t) in (x0..x1).zip(trow.iter_mut()) {
                let s = self.cx.start[x];
                let mut acc = 0.0f64;
                for (w, &v) in self.cx.of(x).iter().zip(&srow[s..]) {
                    acc += v as f64 * w;
                }
                *t = acc as f32;
            }
        }
        let mut best = f32::NEG_INFINITY;
        if same_h {
            return Some(tmp.iter().fold(best, |m, &v| m.max(v)));
        }
        let mut acc = vec![0f64; cols];
        for y in y0..y1 {
            acc.iter_mut().for_each(|a| *a = 0.0);
            let s = self.cy.start[y];
            for (i, &w) in self.cy.of(y).iter().enumerate() {
                let trow = &tmp[(s + i - r0) * cols..(s + i - r0 + 1) * cols];
                for (a, &v) in acc.iter_mut().zip(trow) {
                    *a += v as f64 * w;
                }
            }
            best = acc.iter().fold(best, |m, &a| m.max(a as f32));
        }
        Some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_uses_opencv_float_scale() {
        // 256 -> 98: x = 49 maps to 127, not 128 (49 * fl(1 / fl(98 / 256)) rounds just below
        // 128), as cv2.resize does
        let idx = nearest_index(256, 98);
        assert_eq!(idx[49], 127);
        assert_eq!((idx[0], idx[48], idx[50], idx[97]), (0, 125, 130, 253));
        let idx = nearest_index(256, 278);
        assert_eq!((idx.len(), idx[0], idx[139], idx[277]), (278, 0, 128, 255));
        // identity and downsampling
        assert_eq!(nearest_index(5, 5), vec![0, 1, 2, 3, 4]);
        assert_eq!(nearest_index(4, 2), vec![0, 2]);
    }

    #[test]
    fn bicubic_weights_sum_to_one_and_identity_is_exact() {
        for (i, o) in [(256, 278), (256, 100), (10, 3), (3, 10)] {
            let c = Coeffs::bicubic(i, o);
            for k in 0..o {
                assert!((c.of(k).iter().sum::<f64>() - 1.0).abs() < 1e-12);
            }
        }
        let src: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let v = BicubicView::new(&src, 4, 3, 4, 3);
        assert_eq!(v.max_in(0, 0, 4, 3), Some(11.0));
        assert_eq!(v.max_in(0, 0, 2, 2), Some(5.0));
        assert_eq!(v.max_in(5, 0, 9, 3), None);
    }

    #[test]
    fn upsampling_a_constant_stays_constant() {
        let src = vec![3.5f32; 16 * 9];
        let v = BicubicView::new(&src, 16, 9, 37, 20);
        let m = v.max_in(-4, -4, 100, 100).unwrap();
        assert!((m - 3.5).abs() < 1e-5, "{m}");
    }
}
