//! Spectral clustering's cost (`inference.assign: spectral`) against the number of images:
//! wall time of `cluster::spectral::fit` on synthetic image features (K = 5 loose groups of unit
//! vectors in 384 dimensions, the class tokens' width), the dense eigendecomposition up to
//! `DENSE_MAX_POINTS` and subspace iteration above it, both at the largest dense size side by
//! side, with the ARI of each answer against the groups.
//!
//! Run: `cargo bench --bench spectral` (on an idle machine; `uptime` first). Synthetic data
//! only: the benchmark needs nothing from ../shared.

use std::time::Instant;

use anomalyncd::cluster::spectral::{fit, SpectralOptions, DENSE_MAX_POINTS};
use anomalyncd::metrics::ari;
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const DIM: usize = 384;
const K: usize = 5;

/// `n` unit vectors around K random directions (noise of the same size as the signal).
fn features(n: usize, seed: u64) -> (Array2<f32>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let centres: Vec<Vec<f32>> = (0..K)
        .map(|_| (0..DIM).map(|_| rng.gen_range(-1.0..1.0)).collect())
        .collect();
    let mut x = Array2::<f32>::zeros((n, DIM));
    let truth: Vec<usize> = (0..n).map(|i| i % K).collect();
    for (i, &c) in truth.iter().enumerate() {
        let mut row: Vec<f32> = centres[c]
            .iter()
            .map(|v| v + rng.gen_range(-1.7..1.7))
            .collect();
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().for_each(|v| *v /= norm);
        x.row_mut(i).assign(&ndarray::ArrayView1::from(&row));
    }
    (x, truth)
}

fn main() {
    println!(
        "spectral clustering, K = {K}, {DIM}-d features, 10 neighbours, {} threads; dense up to {DENSE_MAX_POINTS} images",
        rayon::current_num_threads()
    );
    println!("| images | eigenvectors | wall (s) | ARI against the groups |");
    println!("|---|---|---|---|");
    let runs = [
        (500, DENSE_MAX_POINTS),
        (1000, DENSE_MAX_POINTS),
        (DENSE_MAX_POINTS, DENSE_MAX_POINTS),
        (DENSE_MAX_POINTS, 0),
        (10_000, DENSE_MAX_POINTS),
        (20_000, DENSE_MAX_POINTS),
    ];
    let mut pair = Vec::new();
    for (n, dense_max) in runs {
        let (x, truth) = features(n, 1);
        let mut opts = SpectralOptions::new(K, 10, 0);
        opts.dense_max_points = dense_max;
        let t = Instant::now();
        let got = fit(x.view(), &opts).expect("spectral clustering");
        let s = t.elapsed().as_secs_f64();
        let how = if n <= dense_max {
            "dense"
        } else {
            "subspace iteration"
        };
        println!(
            "| {n} | {how} | {s:.2} | {:.3} |",
            ari(&truth, &got).unwrap()
        );
        if n == DENSE_MAX_POINTS {
            pair.push(s);
        }
    }
    if let [dense, iterative] = pair[..] {
        println!(
            "at {DENSE_MAX_POINTS} images subspace iteration takes {:.2}x the dense time",
            iterative / dense
        );
    }
}
