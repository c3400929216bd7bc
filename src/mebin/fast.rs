//! The fast path of MEBin: every threshold's component count from one min-filter and one sweep.
//!
//! Why it is exact: for a flat kernel, eroding a thresholded map equals thresholding the
//! min-filtered map (`erode(m > t) == minfilter(m) > t`), and normalisation is monotone, so
//! `erode(norm(m) > s) == norm(minfilter(m)) > s`. Each pixel therefore switches on at one
//! threshold step and stays on for all lower thresholds. Adding pixels step by step (high
//! threshold to low) into a union-find over 8-neighbours gives the component count after each
//! step: pixels added minus successful unions. That replaces 64 × (erode + label) with one
//! O(N α(N)) pass. Hand-written because no crate offers incremental connected-component counts.

use super::SearchRange;

/// OpenCV's `erode` with a `k`×`k` rectangle of ones and default arguments: anchor at the kernel
/// centre (`k / 2`, so offsets `-(k/2) ..= k - 1 - k/2`; −3..=2 for k = 6) and a border that never
/// erodes (pixels outside the image count as +∞). Separable: rows, then columns.
pub fn min_filter(src: &[u16], width: usize, height: usize, k: usize) -> Vec<u16> {
    assert_eq!(src.len(), width * height, "min_filter: wrong pixel count");
    let lo = (k / 2) as isize;
    let offsets: Vec<isize> = (-lo..(k as isize - lo)).collect();
    let mut rows = src.to_vec();
    for (dst, row) in rows.chunks_exact_mut(width).zip(src.chunks_exact(width)) {
        for &d in &offsets {
            // dst[x] = min(dst[x], row[x + d]) where x + d is inside the row; slices so that the
            // compiler vectorises the loop.
            let (a, b) = if d < 0 { ((-d) as usize, width) } else { (0, width.saturating_sub(d as usize)) };
            if a >= b {
                continue;
            }
            let shifted = &row[(a as isize + d) as usize..(b as isize + d) as usize];
            for (o, &v) in dst[a..b].iter_mut().zip(shifted) {
                *o = (*o).min(v);
            }
        }
    }
    let mut out = rows.clone();
    for y in 0..height {
        for &d in &offsets {
            let yy = y as isize + d;
            if yy < 0 || yy >= height as isize || d == 0 {
                continue;
            }
            let dst = &mut out[y * width..(y + 1) * width];
            let srow = &rows[yy as usize * width..(yy as usize + 1) * width];
            for (o, &v) in dst.iter_mut().zip(srow) {
                *o = (*o).min(v);
            }
        }
    }
    out
}

/// Marker for "never switches on" in [`first_steps`].
pub const NEVER: u8 = u8::MAX;

/// For each pixel level, the first step `k` (index into `scores`, high to low) at which
/// `normalise(level) > scores[k]`, or [`NEVER`]. Computed once per distinct level.
pub fn first_steps(levels: &[u16], range: &SearchRange, scores: &[u32]) -> Vec<u8> {
    assert!(scores.len() <= NEVER as usize, "at most 255 threshold steps");
    let top = levels.iter().copied().max().unwrap_or(0) as usize;
    let table: Vec<u8> = (0..=top)
        .map(|v| {
            let n = range.normalise(v as f64);
            // scores decrease, so "not yet above" holds for a prefix
            let k = scores.partition_point(|&s| n <= s as f64);
            if k == scores.len() {
                NEVER
            } else {
                k as u8
            }
        })
        .collect();
    levels.iter().map(|&v| table[v as usize]).collect()
}

/// Union-find over a padded grid (one empty pixel around the image, so neighbours need no bounds
/// checks). `parent == EMPTY` marks pixels not added yet.
struct Forest {
    parent: Vec<u32>,
    size: Vec<u32>,
}

const EMPTY: u32 = u32::MAX;

impl Forest {
    fn find(&mut self, mut i: u32) -> u32 {
        // path halving
        while self.parent[i as usize] != i {
            let p = self.parent[i as usize];
            self.parent[i as usize] = self.parent[p as usize];
            i = self.parent[i as usize];
        }
        i
    }

    /// Joins the sets of `a` and `b`; true when they were different.
    fn union(&mut self, a: u32, b: u32) -> bool {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return false;
        }
        let (big, small) = if self.size[ra as usize] >= self.size[rb as usize] { (ra, rb) } else { (rb, ra) };
        self.parent[small as usize] = big;
        self.size[big as usize] += self.size[small as usize];
        true
    }
}

/// 8-connected component count after each step, given each pixel's first step (from
/// [`first_steps`]): the count at step `k` is over the pixels whose first step is <= k.
pub fn component_counts(first: &[u8], width: usize, height: usize, n_steps: usize) -> Vec<u32> {
    assert_eq!(first.len(), width * height, "component_counts: wrong pixel count");
    // Counting sort of the padded pixel indices by first step.
    let mut bucket_len = vec![0usize; n_steps + 1];
    for &s in first {
        if (s as usize) < n_steps {
            bucket_len[s as usize + 1] += 1;
        }
    }
    for k in 1..=n_steps {
        bucket_len[k] += bucket_len[k - 1];
    }
    let pw = width + 2;
    let mut order = vec![0u32; bucket_len[n_steps]];
    let mut fill = bucket_len.clone();
    for y in 0..height {
        for x in 0..width {
            let s = first[y * width + x] as usize;
            if s < n_steps {
                order[fill[s]] = ((y + 1) * pw + x + 1) as u32;
                fill[s] += 1;
            }
        }
    }
    let mut forest = Forest { parent: vec![EMPTY; pw * (height + 2)], size: vec![1; pw * (height + 2)] };
    let neighbours = [
        -(pw as isize) - 1,
        -(pw as isize),
        -(pw as isize) + 1,
        -1,
        1,
        pw as isize - 1,
        pw as isize,
        pw as isize + 1,
    ];
    let mut counts = Vec::with_capacity(n_steps);
    let mut components: i64 = 0;
    for k in 0..n_steps {
        for &p in &order[bucket_len[k]..bucket_len[k + 1]] {
            forest.parent[p as usize] = p;
            components += 1;
            for &d in &neighbours {
                let q = (p as isize + d) as u32;
                if forest.parent[q as usize] != EMPTY && forest.union(p, q) {
                    components -= 1;
                }
            }
        }
        counts.push(components as u32);
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_min(src: &[u16], w: usize, h: usize) -> Vec<u16> {
        let mut out = vec![0; w * h];
        for y in 0..h {
            for x in 0..w {
                let mut m = u16::MAX;
                for dy in -3isize..=2 {
                    for dx in -3isize..=2 {
                        let (yy, xx) = (y as isize + dy, x as isize + dx);
                        if yy >= 0 && xx >= 0 && (yy as usize) < h && (xx as usize) < w {
                            m = m.min(src[yy as usize * w + xx as usize]);
                        }
                    }
                }
                out[y * w + x] = m;
            }
        }
        out
    }

    #[test]
    fn min_filter_matches_a_window_scan_with_opencv_anchor() {
        for (w, h) in [(1, 1), (3, 2), (6, 6), (7, 11), (20, 9)] {
            let src: Vec<u16> = (0..w * h).map(|i| ((i * 7919 + 13) % 251) as u16).collect();
            assert_eq!(min_filter(&src, w, h, 6), naive_min(&src, w, h), "{w}x{h}");
        }
        // anchor: a single low pixel at (5,5) lowers (2..=8, 2..=8), i.e. offsets -3..=2 from the
        // output pixel reach it.
        let mut src = vec![9u16; 12 * 12];
        src[5 * 12 + 5] = 0;
        let out = min_filter(&src, 12, 12, 6);
        let low: Vec<(usize, usize)> =
            (0..144).filter(|&i| out[i] == 0).map(|i| (i % 12, i / 12)).collect();
        assert_eq!(low.first(), Some(&(3, 3)));
        assert_eq!(low.last(), Some(&(8, 8)));
        assert_eq!(low.len(), 36);
    }

    #[test]
    fn sweep_counts_components_per_step() {
        // two blobs that join at step 2 through a diagonal bridge
        #[rustfmt::skip]
        let first: Vec<u8> = vec![
            0, 0, 9, 9, 1,
            0, 0, 9, 2, 9,
            9, 9, 2, 9, 9,
        ];
        let counts = component_counts(&first, 5, 3, 3);
        assert_eq!(counts, vec![1, 2, 1]);
    }
}
