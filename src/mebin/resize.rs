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
    let mut out = vec![0u8; dw * dh];
    for (dy, &sy) in ys.iter().enumerate() {
        // upsampling repeats source rows: copy the previous output row instead of gathering
        if dy > 0 && ys[dy - 1] == sy {
            out.copy_within((dy - 1) * dw..dy * dw, dy * dw);
            continue;
        }
        let row = &src[sy * sw..(sy + 1) * sw];
        for (o, &sx) in out[dy * dw..(dy + 1) * dw].iter_mut().zip(&xs) {
            *o = row[sx];
        }
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
    /// Sum of |weight| per output index (bounds the output by the inputs' largest magnitude).
    pub abs_sum: Vec<f64>,
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
            abs_sum: Vec::with_capacity(out_size),
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
            c.abs_sum.push(k.iter().map(|w| w.abs()).sum());
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

/// Row-major float pixels a [`BicubicView`] reads.
pub trait Pixels: Sync {
    fn count(&self) -> usize;
    /// The value of pixel `i`.
    fn at(&self, i: usize) -> f32;
}

impl Pixels for [f32] {
    fn count(&self) -> usize {
        self.len()
    }
    #[inline]
    fn at(&self, i: usize) -> f32 {
        self[i]
    }
}

/// Integer levels read through a table of their float values: the same pixels as a float copy
/// of the map, without that copy (4 bytes a pixel; 400 MB for a 10000×10000 map).
pub struct Leveled<'a> {
    pub levels: &'a [u16],
    /// The float value of each level (`table[level]`), covering every level that occurs.
    pub table: &'a [f32],
}

impl Pixels for Leveled<'_> {
    fn count(&self) -> usize {
        self.levels.len()
    }
    #[inline]
    fn at(&self, i: usize) -> f32 {
        self.table[self.levels[i] as usize]
    }
}

/// A float map and the size Pillow would resize it to; evaluates resized values only where asked.
pub struct BicubicView<'a, P: Pixels + ?Sized = [f32]> {
    src: &'a P,
    sw: usize,
    sh: usize,
    dw: usize,
    dh: usize,
    cx: Coeffs,
    cy: Coeffs,
}

impl<'a, P: Pixels + ?Sized> BicubicView<'a, P> {
    /// A view of any [`Pixels`] (row-major, `sw`×`sh`).
    pub fn over(src: &'a P, sw: usize, sh: usize, dw: usize, dh: usize) -> Self {
        assert_eq!(src.count(), sw * sh, "BicubicView: wrong pixel count");
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
    /// or None when that is empty.
    ///
    /// The box is cut into tiles; a tile's values are bounded by the largest input magnitude
    /// under its taps times its largest |weight| sums, so tiles are evaluated in decreasing bound
    /// order until no remaining bound can beat the best value found. The result is the exact max;
    /// usually only the tiles around the peak are computed.
    pub fn max_in(&self, x0: i64, y0: i64, x1: i64, y1: i64) -> Option<f32> {
        let (x0, x1) = (x0.max(0) as usize, x1.min(self.dw as i64).max(0) as usize);
        let (y0, y1) = (y0.max(0) as usize, y1.min(self.dh as i64).max(0) as usize);
        if x0 >= x1 || y0 >= y1 {
            return None;
        }
        const TILE: usize = 16;
        // Slack for the float32 roundings of the two passes (relative 2^-24 each).
        const SLACK: f64 = 1.0 + 1e-5;
        let mut tiles: Vec<(f64, usize, usize, usize, usize)> = Vec::new();
        for ty in (y0..y1).step_by(TILE) {
            let ty1 = (ty + TILE).min(y1);
            let (r0, r1) = self.source_span(&self.cy, self.sh == self.dh, ty, ty1);
            let ky = (ty..ty1)
                .map(|y| {
                    if self.sh == self.dh {
                        1.0
                    } else {
                        self.cy.abs_sum[y]
                    }
                })
                .fold(0.0, f64::max);
            for tx in (x0..x1).step_by(TILE) {
                let tx1 = (tx + TILE).min(x1);
                let (c0, c1) = self.source_span(&self.cx, self.sw == self.dw, tx, tx1);
                let kx = (tx..tx1)
                    .map(|x| {
                        if self.sw == self.dw {
                            1.0
                        } else {
                            self.cx.abs_sum[x]
                        }
                    })
                    .fold(0.0, f64::max);
                let m = (r0..r1)
                    .map(|r| {
                        (r * self.sw + c0..r * self.sw + c1)
                            .fold(0f32, |a, i| a.max(self.src.at(i).abs()))
                    })
                    .fold(0f32, f32::max);
                tiles.push((m as f64 * kx * ky * SLACK, tx, ty, tx1, ty1));
            }
        }
        tiles.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut best = f32::NEG_INFINITY;
        for (bound, tx, ty, tx1, ty1) in tiles {
            if bound <= best as f64 {
                break;
            }
            best = best.max(self.exact_max(tx, ty, tx1, ty1));
        }
        Some(best)
    }

    /// Input indices `[first, last)` the outputs `[o0, o1)` of one axis read.
    fn source_span(&self, c: &Coeffs, same: bool, o0: usize, o1: usize) -> (usize, usize) {
        if same {
            (o0, o1)
        } else {
            let first = (o0..o1).map(|o| c.start[o]).min().unwrap_or(0);
            let last = (o0..o1).map(|o| c.start[o] + c.len[o]).max().unwrap_or(0);
            (first, last)
        }
    }

    /// The resized values over `[x0, x1) × [y0, y1)` (inside the image), computed as Pillow
    /// does: horizontally first, storing float32, then vertically, each output a float64 sum over
    /// its taps in order; a size that does not change is not resampled. Only the needed columns
    /// and rows are computed (the vertical pass runs row-wise, keeping each pixel's sum order).
    fn exact_max(&self, x0: usize, y0: usize, x1: usize, y1: usize) -> f32 {
        let same_w = self.sw == self.dw;
        let same_h = self.sh == self.dh;
        let (r0, r1) = self.source_span(&self.cy, same_h, y0, y1);
        let cols = x1 - x0;
        // Horizontal pass over rows r0..r1 for output columns x0..x1 (float32 intermediate).
        let mut tmp = vec![0f32; (r1 - r0) * cols];
        for (r, trow) in (r0..r1).zip(tmp.chunks_exact_mut(cols)) {
            let row = r * self.sw;
            if same_w {
                for (t, x) in trow.iter_mut().zip(x0..x1) {
                    *t = self.src.at(row + x);
                }
                continue;
            }
            for (x, t) in (x0..x1).zip(trow.iter_mut()) {
                let s = self.cx.start[x];
                let mut acc = 0.0f64;
                for (w, c) in self.cx.of(x).iter().zip(s..self.sw) {
                    acc += self.src.at(row + c) as f64 * w;
                }
                *t = acc as f32;
            }
        }
        let mut best = f32::NEG_INFINITY;
        if same_h {
            return tmp.iter().fold(best, |m, &v| m.max(v));
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
        best
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
        let v = BicubicView::over(&src[..], 4, 3, 4, 3);
        assert_eq!(v.max_in(0, 0, 4, 3), Some(11.0));
        assert_eq!(v.max_in(0, 0, 2, 2), Some(5.0));
        assert_eq!(v.max_in(5, 0, 9, 3), None);
    }

    #[test]
    fn pruned_max_equals_the_full_evaluation() {
        let mut seed = 12345u64;
        let mut rnd = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        for case in 0..60 {
            let (sw, sh) = (1 + rnd() % 40, 1 + rnd() % 40);
            let (dw, dh) = (1 + rnd() % 90, 1 + rnd() % 90);
            // peaks on a low background; some cases with negative values
            let src: Vec<f32> = (0..sw * sh)
                .map(|_| {
                    let v = if rnd() % 17 == 0 {
                        (rnd() % 255) as f32
                    } else {
                        (rnd() % 7) as f32 * 0.3
                    };
                    if case % 5 == 0 && rnd() % 3 == 0 {
                        -v
                    } else {
                        v
                    }
                })
                .collect();
            let view = BicubicView::over(&src[..], sw, sh, dw, dh);
            for _ in 0..5 {
                let (x0, y0) = (rnd() % dw, rnd() % dh);
                let (x1, y1) = (x0 + 1 + rnd() % (dw - x0), y0 + 1 + rnd() % (dh - y0));
                let full = view.exact_max(x0, y0, x1, y1);
                let pruned = view
                    .max_in(x0 as i64, y0 as i64, x1 as i64, y1 as i64)
                    .unwrap();
                assert_eq!(
                    pruned.to_bits(),
                    full.to_bits(),
                    "case {case}: {sw}x{sh} -> {dw}x{dh}"
                );
            }
        }
    }

    #[test]
    fn upsampling_a_constant_stays_constant() {
        let src = vec![3.5f32; 16 * 9];
        let v = BicubicView::over(&src[..], 16, 9, 37, 20);
        let m = v.max_in(-4, -4, 100, 100).unwrap();
        assert!((m - 3.5).abs() < 1e-5, "{m}");
    }
}
