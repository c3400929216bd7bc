//! The fast path of MEBin: every threshold's component count from one min-filter and one sweep.
//!
//! Why it is exact: for a flat kernel, eroding a thresholded map equals thresholding the
//! min-filtered map (`erode(m > t) == minfilter(m) > t`), and normalisation is monotone, so
//! `erode(norm(m) > s) == norm(minfilter(m)) > s`. Each pixel therefore switches on at one
//! threshold step and stays on for all lower thresholds. Adding pixels step by step (high
//! threshold to low) into a union-find over 8-neighbours gives the component count after each
//! step: pixels added minus successful unions. That replaces 64 × (erode + label) with one
//! O(N α(N)) pass. Hand-written because no crate offers incremental connected-component counts.

use std::cell::RefCell;

use super::union_find::find_root;
use super::SearchRange;

/// Per-thread buffers reused from map to map: fresh large allocations each map cost more in page
/// faults (the allocator hands them back to the OS) than the work itself.
#[derive(Default)]
struct Scratch {
    rows: Vec<i16>,
    cols: Vec<i16>,
    parent: Vec<u32>,
    order: Vec<u32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Scratch buffers are kept between maps up to this many elements each (a 2048×2048 map):
/// larger ones are freed by [`trim_scratch`].
const KEEP_SCRATCH: usize = 1 << 22;

/// Frees this thread's scratch buffers when a huge map grew them past [`KEEP_SCRATCH`], so that
/// one 10000×10000 map does not keep about 10 bytes per pixel on each thread for the rest of the
/// run (and through its own cropping step). Maps of the usual sizes keep their buffers.
pub fn trim_scratch() {
    SCRATCH.with_borrow_mut(|s| {
        let largest = [
            s.rows.capacity(),
            s.cols.capacity(),
            s.parent.capacity(),
            s.order.capacity(),
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        if largest > KEEP_SCRATCH {
            *s = Scratch::default();
        }
    });
}

/// u16 levels as i16 with the same order (sign bit flipped): baseline x86-64 (SSE2) has a
/// vectorised min for i16 but not for u16.
fn to_ordered_i16(v: u16) -> i16 {
    (v ^ 0x8000) as i16
}

fn from_ordered_i16(v: i16) -> u16 {
    (v as u16) ^ 0x8000
}

/// `dst[i] = min(dst[i], src[i])`, written so that it vectorises.
fn min_into(dst: &mut [i16], src: &[i16]) {
    for (o, &v) in dst.iter_mut().zip(src) {
        *o = (*o).min(v);
    }
}

/// OpenCV's `erode` with a `k`×`k` rectangle of ones and default arguments: anchor at the kernel
/// centre (`k / 2`, so offsets `-(k/2) ..= k - 1 - k/2`; −3..=2 for k = 6) and a border that never
/// erodes (pixels outside the image count as +∞). Separable: rows, then columns.
pub fn min_filter(src: &[u16], width: usize, height: usize, k: usize) -> Vec<u16> {
    assert_eq!(src.len(), width * height, "min_filter: wrong pixel count");
    let lo = (k / 2) as isize;
    let offsets: Vec<isize> = (-lo..(k as isize - lo)).filter(|&d| d != 0).collect();
    SCRATCH.with_borrow_mut(|s| {
        let Scratch { rows, cols, .. } = s;
        rows.clear();
        rows.extend(src.iter().map(|&v| to_ordered_i16(v)));
        cols.clear();
        cols.extend_from_slice(rows);
        // Horizontal: cols[x] = min over row[x + d] inside the row.
        for (dst, row) in cols.chunks_exact_mut(width).zip(rows.chunks_exact(width)) {
            for &d in &offsets {
                let (a, b) = if d < 0 {
                    ((-d) as usize, width)
                } else {
                    (0, width.saturating_sub(d as usize))
                };
                if a < b {
                    min_into(
                        &mut dst[a..b],
                        &row[(a as isize + d) as usize..(b as isize + d) as usize],
                    );
                }
            }
        }
        // Vertical: rows[y] = min over cols[y + d] inside the image.
        for y in 0..height {
            let dst = &mut rows[y * width..(y + 1) * width];
            dst.copy_from_slice(&cols[y * width..(y + 1) * width]);
            for &d in &offsets {
                let yy = y as isize + d;
                if yy >= 0 && yy < height as isize {
                    min_into(dst, &cols[yy as usize * width..(yy as usize + 1) * width]);
                }
            }
        }
        let out = rows.iter().map(|&v| from_ordered_i16(v)).collect();
        // A huge map's buffers would stay alive through the component count: free them now.
        if rows.capacity() > KEEP_SCRATCH {
            (*rows, *cols) = (Vec::new(), Vec::new());
        }
        out
    })
}

/// Marker for "never switches on" in [`first_steps`].
pub const NEVER: u8 = u8::MAX;

/// For each level `0..=top`, the first step `k` (index into `scores`, high to low) at which
/// `normalise(level) > scores[k]`, or [`NEVER`]. Non-increasing in the level.
pub fn step_table(range: &SearchRange, scores: &[u32], top: u16) -> Vec<u8> {
    assert!(
        scores.len() <= NEVER as usize,
        "at most 255 threshold steps"
    );
    (0..=top as usize)
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
        .collect()
}

const EMPTY: u32 = u32::MAX;

/// 8-connected component count after each step: a pixel of level `v` joins at step `table[v]`
/// (from [`step_table`]; [`NEVER`] or >= `n_steps` = never), and the count at step `k` is over
/// the pixels joined at steps <= k.
///
/// Union-find over a padded grid (one empty pixel around the image, so neighbours need no bounds
/// checks); `EMPTY` marks pixels not added yet. Roots link toward the smaller index, with path
/// halving: on these grids that keeps trees shallow without a rank array.
pub fn component_counts(
    levels: &[u16],
    width: usize,
    height: usize,
    table: &[u8],
    n_steps: usize,
) -> Vec<u32> {
    assert_eq!(
        levels.len(),
        width * height,
        "component_counts: wrong pixel count"
    );
    // Levels below `lowest` never switch on (the table is non-increasing).
    let lowest = table
        .iter()
        .position(|&s| (s as usize) < n_steps)
        .unwrap_or(table.len()) as u16;
    let pw = width + 2;
    SCRATCH.with_borrow_mut(|s| {
        let Scratch { parent, order, .. } = s;
        // The pixels that ever switch on, as padded indices, counting-sorted by their step
        // straight from the levels (two passes): no list of (pixel, step) pairs to sort, which
        // would cost 5 more bytes per pixel where most pixels switch on.
        let on = |v: u16| v >= lowest && (table[v as usize] as usize) < n_steps;
        let mut bucket = vec![0usize; n_steps + 1];
        if (lowest as usize) < table.len() {
            for &v in levels {
                if on(v) {
                    bucket[table[v as usize] as usize + 1] += 1;
                }
            }
        }
        for k in 1..=n_steps {
            bucket[k] += bucket[k - 1];
        }
        order.clear();
        order.resize(bucket[n_steps], 0);
        let mut fill = bucket.clone();
        if (lowest as usize) < table.len() {
            for y in 0..height {
                for (x, &v) in levels[y * width..(y + 1) * width].iter().enumerate() {
                    if on(v) {
                        let st = table[v as usize] as usize;
                        order[fill[st]] = ((y + 1) * pw + x + 1) as u32;
                        fill[st] += 1;
                    }
                }
            }
        }
        sweep_sorted(parent, order, &bucket, pw, height)
    })
}

/// The same counts from a list of the pixels that ever switch on, as padded indices
/// (`(y + 1) * (width + 2) + x + 1`) with their first steps, in any order.
pub fn counts_from_on_pixels(
    order: &[u32],
    steps: &[u8],
    width: usize,
    height: usize,
    n_steps: usize,
) -> Vec<u32> {
    SCRATCH.with_borrow_mut(|s| sweep(&mut s.parent, order, steps, width + 2, height, n_steps))
}

/// Counting sort of the on-pixels by step, then the union-find sweep; leaves `parent` all EMPTY.
fn sweep(
    parent: &mut Vec<u32>,
    order: &[u32],
    steps: &[u8],
    pw: usize,
    height: usize,
    n_steps: usize,
) -> Vec<u32> {
    let mut bucket = vec![0usize; n_steps + 1];
    for &st in steps {
        bucket[st as usize + 1] += 1;
    }
    for k in 1..=n_steps {
        bucket[k] += bucket[k - 1];
    }
    let mut sorted = vec![0u32; order.len()];
    let mut fill = bucket.clone();
    for (&p, &st) in order.iter().zip(steps) {
        sorted[fill[st as usize]] = p;
        fill[st as usize] += 1;
    }
    sweep_sorted(parent, &sorted, &bucket, pw, height)
}

/// The union-find sweep over padded pixel indices sorted by step (`sorted[bucket[k]..bucket[k +
/// 1]]` join at step k); the component count after each step. Leaves `parent` all EMPTY.
fn sweep_sorted(
    parent: &mut Vec<u32>,
    sorted: &[u32],
    bucket: &[usize],
    pw: usize,
    height: usize,
) -> Vec<u32> {
    let n_steps = bucket.len() - 1;
    let cells = pw * (height + 2);
    if parent.len() < cells {
        parent.resize(cells, EMPTY);
    }
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
        for &p in &sorted[bucket[k]..bucket[k + 1]] {
            // `root` stays the root of p's set: a new pixel, then linked sets keep the smaller root
            let mut root = p;
            parent[p as usize] = p;
            components += 1;
            for &d in &neighbours {
                let q = (p as isize + d) as u32;
                let pq = parent[q as usize];
                if pq == EMPTY || pq == root {
                    continue;
                }
                let rq = find_root(parent, q);
                if rq != root {
                    let (lo, hi) = if root < rq { (root, rq) } else { (rq, root) };
                    parent[hi as usize] = lo;
                    root = lo;
                    components -= 1;
                }
            }
        }
        counts.push(components as u32);
    }
    // Leave the buffer all EMPTY for the next map: only the added pixels were touched.
    for &p in sorted {
        parent[p as usize] = EMPTY;
    }
    counts
}

/// Min over the erosion window of pixel (x, y) (offsets −k/2 ..= k−1−k/2, clipped to the image):
/// the min-filter at one pixel, for maps where few pixels need it.
pub fn window_min(src: &[u16], width: usize, height: usize, k: usize, x: usize, y: usize) -> u16 {
    let lo = k / 2;
    let (x0, x1) = (x.saturating_sub(lo), (x + k - lo).min(width));
    let (y0, y1) = (y.saturating_sub(lo), (y + k - lo).min(height));
    let mut m = u16::MAX;
    for yy in y0..y1 {
        m = src[yy * width + x0..yy * width + x1]
            .iter()
            .fold(m, |a, &v| a.min(v));
    }
    m
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
        let low: Vec<(usize, usize)> = (0..144)
            .filter(|&i| out[i] == 0)
            .map(|i| (i % 12, i / 12))
            .collect();
        assert_eq!(low.first(), Some(&(3, 3)));
        assert_eq!(low.last(), Some(&(8, 8)));
        assert_eq!(low.len(), 36);
    }

    #[test]
    fn sweep_counts_components_per_step() {
        // two blobs that join at step 2 through a diagonal bridge; levels are the steps (9: never)
        #[rustfmt::skip]
        let first: Vec<u16> = vec![
            0, 0, 9, 9, 1,
            0, 0, 9, 2, 9,
            9, 9, 2, 9, 9,
        ];
        // level v joins at step v; levels 3.. never
        let table: Vec<u8> = (0..=9u8).map(|v| if v < 3 { v } else { NEVER }).collect();
        let counts = component_counts(&first, 5, 3, &table, 3);
        assert_eq!(counts, vec![1, 2, 1]);
    }
}
