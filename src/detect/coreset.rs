//! Greedy k-center coreset of the normal patch features (PatchCore, Roth et al. 2022, Sec. 3.2):
//! start from one point, then repeatedly add the point farthest from everything chosen so far.
//! Distances are computed after a Gaussian random projection to a few dimensions
//! (Johnson–Lindenstrauss), as PatchCore does.
//!
//! The search costs k x N x d and reads the whole set once per pick, so its time grows with the
//! square of the pool (k is a fraction of N): `detect` keeps the pool bounded (see
//! [`crate::detect`]). Pruning cells of points by the triangle inequality was tried and gave no
//! speed-up on real patch features (128-d distances concentrate), so the loop is the plain one,
//! split over threads. Hand-written: no crate offers k-center greedy selection.

use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

/// Dimension of the random projection used for the distance computations.
pub const PROJECTION_DIM: i64 = 128;
/// Rows per parallel work item of one pick.
const BLOCK: usize = 4096;

/// Squared Euclidean distance; 8 lanes so the compiler vectorises it.
pub fn dist2(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            let d = x[l] - y[l];
            acc[l] += d * d;
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += (x - y) * (x - y);
    }
    s
}

/// The larger distance, the lower index on ties (so the result does not depend on threads).
fn farther(a: (f32, usize), b: (f32, usize)) -> (f32, usize) {
    if b.0 > a.0 || (b.0 == a.0 && b.1 < a.1) {
        b
    } else {
        a
    }
}

/// Indices of up to `k` rows of `points` (row-major, `dim` columns) chosen greedily
/// (farthest-point first, exact distances), starting at row `start`. Stops early when every
/// point coincides with a chosen one. `tick` is called once per pick.
pub fn greedy_k_center(
    points: &[f32],
    dim: usize,
    k: usize,
    start: usize,
    mut tick: impl FnMut(),
) -> Vec<usize> {
    let n = points.len() / dim.max(1);
    let k = k.min(n);
    if k == 0 {
        return Vec::new();
    }
    let row = |i: usize| &points[i * dim..(i + 1) * dim];
    // Squared distance of every point to its nearest chosen one.
    let mut min_d = vec![f32::INFINITY; n];
    let mut chosen = Vec::with_capacity(k);
    let mut next = start % n;
    loop {
        chosen.push(next);
        tick();
        if chosen.len() == k {
            break;
        }
        let c = row(next);
        let update = |(b, md): (usize, &mut [f32])| {
            let mut best = (-1.0f32, usize::MAX);
            for (o, m) in md.iter_mut().enumerate() {
                let i = b * BLOCK + o;
                *m = m.min(dist2(row(i), c));
                best = farther(best, (*m, i));
            }
            best
        };
        let none = (-1.0f32, usize::MAX);
        let (d_far, far) = if n > BLOCK {
            min_d
                .par_chunks_mut(BLOCK)
                .enumerate()
                .map(update)
                .reduce(|| none, farther)
        } else {
            min_d
                .chunks_mut(BLOCK)
                .enumerate()
                .map(update)
                .fold(none, farther)
        };
        if d_far <= 0.0 {
            break;
        }
        next = far;
    }
    chosen
}

/// A seeded Gaussian random projection `[D, d]` (scaled by 1/sqrt(d)) when `D > d`, else None.
pub fn random_projection(dim: i64, seed: u64, device: Device) -> Option<Tensor> {
    if dim <= PROJECTION_DIM {
        return None;
    }
    tch::manual_seed(seed as i64);
    let p = Tensor::randn([dim, PROJECTION_DIM], (Kind::Float, Device::Cpu))
        / (PROJECTION_DIM as f64).sqrt();
    Some(p.to_device(device))
}

/// Number of coreset points for `n` patches at `fraction` (at least 1 when `n > 0`).
pub fn coreset_size(n: usize, fraction: f64) -> usize {
    if n == 0 {
        return 0;
    }
    ((n as f64 * fraction).ceil() as usize).clamp(1, n)
}

/// The PatchCore memory bank: the rows of `features [N, D]` picked by greedy k-center in a random
/// projection, starting from a seeded random row. Returns the indices of the
/// selected rows, in the order picked; None: all `N` rows are kept.
pub fn subsample_rows(
    features: &Tensor,
    fraction: f64,
    seed: u64,
    tick: impl FnMut(),
) -> Option<Vec<i64>> {
    let (n, dim) = (features.size()[0], features.size()[1]);
    let k = coreset_size(n as usize, fraction);
    if k as i64 >= n {
        return None;
    }
    let projected = match random_projection(dim, seed, features.device()) {
        Some(p) => features.matmul(&p),
        None => features.shallow_clone(),
    };
    let d = projected.size()[1] as usize;
    let flat: Vec<f32> = Vec::try_from(
        projected
            .to_kind(Kind::Float)
            .to_device(Device::Cpu)
            .flatten(0, -1),
    )
    .expect("a float tensor converts to Vec<f32>");
    let start = (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as usize % n as usize;
    Some(
        greedy_k_center(&flat, d, k, start, tick)
            .into_iter()
            .map(|i| i as i64)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pts(v: &[[f32; 2]]) -> Vec<f32> {
        v.iter().flatten().copied().collect()
    }

    #[test]
    fn picks_the_farthest_point_then_the_farthest_from_both() {
        // A tight cluster near the origin, one far point right, one mid point up.
        let p = pts(&[
            [0.0, 0.0],
            [0.1, 0.0],
            [0.0, 0.1],
            [10.0, 0.0],
            [0.0, 6.0],
            [0.1, 0.1],
        ]);
        let mut ticks = 0;
        let idx = greedy_k_center(&p, 2, 3, 0, || ticks += 1);
        // From (0,0): (10,0) is farthest; then (0,6) is farthest from both chosen points.
        assert_eq!(idx, [0, 3, 4]);
        assert_eq!(ticks, 3);
        // Starting elsewhere changes the first pick only.
        assert_eq!(greedy_k_center(&p, 2, 2, 4, || {}), [4, 3]);
        // Asking for more points than exist returns each point once.
        let mut all = greedy_k_center(&p, 2, 10, 0, || {});
        all.sort();
        assert_eq!(all, [0, 1, 2, 3, 4, 5]);
        // Duplicates of chosen points are never picked: the search stops when all are covered.
        let dup = pts(&[[1.0, 1.0], [1.0, 1.0], [2.0, 2.0]]);
        assert_eq!(greedy_k_center(&dup, 2, 3, 0, || {}), [0, 2]);
    }

    #[test]
    fn parallel_blocks_pick_as_the_sequential_loop() {
        // More rows than one block, so the picks are reduced over threads.
        tch::manual_seed(2);
        let x = Tensor::randn([3 * BLOCK as i64 + 17, 5], (Kind::Float, Device::Cpu));
        let flat: Vec<f32> = Vec::try_from(x.flatten(0, -1)).unwrap();
        let (n, dim, k) = (flat.len() / 5, 5, 40);
        let row = |i: usize| &flat[i * dim..(i + 1) * dim];
        let mut min_d = vec![f32::INFINITY; n];
        let mut want = vec![11];
        while want.len() < k {
            let c = row(*want.last().unwrap());
            for (i, m) in min_d.iter_mut().enumerate() {
                *m = m.min(dist2(row(i), c));
            }
            want.push((0..n).fold(0, |a, b| if min_d[b] > min_d[a] { b } else { a }));
        }
        assert_eq!(greedy_k_center(&flat, dim, k, 11, || {}), want);
    }

    #[test]
    fn subsample_keeps_outliers_and_sizes() {
        assert_eq!(coreset_size(1000, 0.1), 100);
        assert_eq!(coreset_size(5, 0.01), 1);
        assert_eq!(coreset_size(0, 0.5), 0);
        // 300 points in a small blob plus 3 far outliers in 200 dimensions (projected to 128):
        // a coreset of 4 must contain all the outliers.
        tch::manual_seed(1);
        let blob = Tensor::randn([300, 200], (Kind::Float, Device::Cpu)) * 0.01;
        let far = Tensor::zeros([3, 200], (Kind::Float, Device::Cpu));
        for i in 0..3i64 {
            let _ = far.get(i).get(i * 50).fill_(50.0 * (i + 1) as f64);
        }
        let all = Tensor::cat(&[blob, far.shallow_clone()], 0);
        let rows = subsample_rows(&all, 4.0 / 303.0, 7, || {}).unwrap();
        let bank = all.index_select(0, &Tensor::from_slice(&rows));
        assert_eq!(bank.size(), [4, 200]);
        for i in 0..3 {
            let row = far.get(i);
            let hit = (&bank - &row)
                .abs()
                .sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
            assert!(hit.min().double_value(&[]) < 1e-6, "outlier {i} missing");
        }
    }
}
