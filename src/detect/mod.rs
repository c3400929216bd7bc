//! A PatchCore-style anomaly detector (Roth et al., "Towards total recall in industrial anomaly
//! detection", CVPR 2022), so the pipeline runs without an outside detector:
//!
//! 1. fit: patch features ([`features`]) of the normal training images, streamed in batches.
//!    When all patches would exceed `max_patches`, each image contributes its
//!    `max_patches / n_train` most spread-out patches (a greedy k-center within the image), so
//!    the pool takes at most `max_patches x D x 4` bytes (61 MB at the default 100 000 x 152);
//! 2. memory bank: a greedy k-center coreset of the pool ([`coreset`]);
//! 3. score: each test patch's distance to its nearest bank entry; image score = max patch score;
//!    map = patch scores upsampled to the input size and smoothed ([`maps`]);
//! 4. write 8-bit maps on one scale over the whole test set (`OUT/<type>/<stem>.png`, the layout
//!    `binarize` and `train` read) and evaluate ([`eval`]) when normals / masks are given.
//!
//! Memory: the pool (above), the bank, and every test map as floats until the global scale is
//! known: `n_test x size^2 x 4` bytes (and `x 8` more while pixel metrics are computed).

pub mod coreset;
pub mod eval;
pub mod features;
pub mod localize;
pub mod maps;
mod run;

pub use run::{run, DetectReport, DetectSpec, REPORT_FILE};

use tch::{Kind, Tensor};

/// Test type folders holding normal images (MVTec AD's convention).
pub const NORMAL_TYPE: &str = "good";

/// Euclidean distance of each row of `feats [N, D]` to its nearest row of `bank [K, D]`
/// (`bank_sq [K]`: the bank's squared norms), in row chunks so that one chunk's distance matrix
/// stays under 16 M entries. -> `[N]`
pub fn nearest_distances(feats: &Tensor, bank: &Tensor, bank_sq: &Tensor) -> Tensor {
    let n = feats.size()[0];
    let k = bank.size()[0].max(1);
    let chunk = ((1i64 << 24) / k).max(1);
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let f = feats.narrow(0, start, len);
        let f_sq = (&f * &f).sum_dim_intlist([1i64].as_slice(), true, Kind::Float);
        let d2 = f_sq + bank_sq.unsqueeze(0) - f.matmul(&bank.tr()) * 2.0;
        out.push(d2.amin([1i64].as_slice(), false).clamp_min(0.0).sqrt());
        start += len;
    }
    Tensor::cat(&out, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn nearest_distances_match_brute_force() {
        tch::manual_seed(3);
        let f = Tensor::randn([50, 7], (Kind::Float, Device::Cpu));
        let bank = Tensor::randn([9, 7], (Kind::Float, Device::Cpu));
        let sq = (&bank * &bank).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
        let d = nearest_distances(&f, &bank, &sq);
        for i in 0..50 {
            let want = (bank.shallow_clone() - f.get(i))
                .square()
                .sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
                .min()
                .sqrt()
                .double_value(&[]);
            assert!((d.double_value(&[i]) - want).abs() < 1e-4);
        }
        // A feature equal to a bank row is at distance 0.
        let d0 = nearest_distances(&bank.narrow(0, 2, 1), &bank, &sq);
        assert!(d0.double_value(&[0]) < 1e-3);
    }
}
