//! Greedy k-center coreset of the normal patch features (PatchCore, Roth et al. 2022, Sec. 3.2):
//! start from one point, then repeatedly add the point farthest from everything chosen so far.
//! Distances are computed after a Gaussian random projection to a few dimensions
//! (Johnson–Lindenstrauss), as PatchCore does, which keeps each step one `[N, d] x [d]` product.
//! Hand-written: no crate offers k-center greedy selection on tch tensors.

use tch::{Device, Kind, Tensor};

/// Dimension of the random projection used for the distance computations.
pub const PROJECTION_DIM: i64 = 128;

/// Indices of `k` rows of `points [N, D]` chosen greedily (farthest-point first), starting at
/// row `start`; exact Euclidean distances in the given space. `tick` is called once per pick.
pub fn greedy_k_center(
    points: &Tensor,
    k: usize,
    start: usize,
    mut tick: impl FnMut(),
) -> Vec<i64> {
    let n = points.size()[0];
    let k = (k as i64).min(n);
    if k <= 0 {
        return Vec::new();
    }
    let x = points.to_kind(Kind::Float);
    let sq = (&x * &x).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    // Squared distance of every point to the nearest chosen one.
    let mut min_d = Tensor::full([n], f64::INFINITY, (Kind::Float, x.device()));
    let mut chosen = Vec::with_capacity(k as usize);
    let mut next = start as i64 % n;
    for _ in 0..k {
        chosen.push(next);
        let c = x.get(next);
        // |x - c|^2 = |x|^2 - 2 x.c + |c|^2, clamped against rounding below 0.
        let d = (&sq - x.mv(&c) * 2.0 + sq.get(next)).clamp_min(0.0);
        min_d = min_d.minimum(&d);
        // A chosen point has distance 0, so it is never chosen twice while others remain.
        next = min_d.argmax(0, false).int64_value(&[]);
        tick();
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
/// projection, starting from a seeded random row. Returns the selected rows `[k, D]`.
pub fn subsample(features: &Tensor, fraction: f64, seed: u64, tick: impl FnMut()) -> Tensor {
    let (n, dim) = (features.size()[0], features.size()[1]);
    let k = coreset_size(n as usize, fraction);
    if k as i64 >= n {
        return features.shallow_clone();
    }
    let projected = match random_projection(dim, seed, features.device()) {
        Some(p) => features.matmul(&p),
        None => features.shallow_clone(),
    };
    let start = (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as usize % n as usize;
    let idx = greedy_k_center(&projected, k, start, tick);
    let idx = Tensor::from_slice(&idx).to_device(features.device());
    features.index_select(0, &idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pts(v: &[[f32; 2]]) -> Tensor {
        let flat: Vec<f32> = v.iter().flatten().copied().collect();
        Tensor::from_slice(&flat).view([v.len() as i64, 2])
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
        let idx = greedy_k_center(&p, 3, 0, || ticks += 1);
        // From (0,0): (10,0) is farthest; then (0,6) is farthest from both chosen points.
        assert_eq!(idx, [0, 3, 4]);
        assert_eq!(ticks, 3);
        // Starting elsewhere changes the first pick only.
        assert_eq!(greedy_k_center(&p, 2, 4, || {}), [4, 3]);
        // Asking for more points than exist returns each point once.
        let mut all = greedy_k_center(&p, 10, 0, || {});
        all.sort();
        assert_eq!(all, [0, 1, 2, 3, 4, 5]);
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
        let bank = subsample(&all, 4.0 / 303.0, 7, || {});
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
