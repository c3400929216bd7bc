//! Estimating the number of novel defect types before training (`--num-classes auto`).
//!
//! The choice is the eigengap of the novel class tokens' k-nearest-neighbour graph (von Luxburg,
//! "A tutorial on spectral clustering", 2007): with `k = √n` neighbours (cosine), the normalised
//! Laplacian has as many near-zero eigenvalues as the graph has well separated groups, so K is
//! where the gap `λ_K − λ_{K−1}` (0-based, ascending) is largest.
//!
//! Two scores are reported beside it for every K in `2..=max_classes`: the mean silhouette of
//! k-means with K clusters on the novel tokens, and, with a labelled base set, the
//! generalized-category-discovery check (Vaze et al. 2022): k-means with `base classes + K`
//! clusters over base and novel tokens together, scored by the Hungarian accuracy on the base
//! crops. On the MTD and synthetic sets the eigengap came closest to the true K of the criteria
//! we tried (silhouette, Calinski–Harabasz, Davies–Bouldin, eigengaps of self-tuned graphs; see
//! the README); the silhouette favoured too few types on MTD and too many on the synthetic set.
//! At most [`MAX_POINTS`] novel crops (a seeded sample) are used, so memory stays bounded.

use ndarray::{concatenate, Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use super::kmeans::{distance_matrix, fit, silhouette, KMeansOptions};
use crate::error::{Error, Result};

/// The scores of one candidate K.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KScore {
    pub k: usize,
    /// `λ_K − λ_{K−1}` of the kNN graph's normalised Laplacian (larger: K groups stand apart).
    pub eigengap: f64,
    /// Mean silhouette of k-means with K clusters on the novel crops (−1..1, higher is better).
    pub silhouette: f64,
    /// Accuracy on the labelled base crops of k-means with `base classes + K` clusters over all
    /// crops; absent without a base set.
    pub base_accuracy: Option<f64>,
}

/// What `--num-classes auto` chose and why (stored in the checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KEstimate {
    pub chosen: usize,
    pub max_classes: usize,
    /// How `chosen` was picked from `scores`.
    pub criterion: String,
    pub scores: Vec<KScore>,
}

impl KEstimate {
    /// One line per K, the chosen one marked, for the log and the terminal.
    pub fn table(&self) -> String {
        let mut s = String::from("   K  eigengap  silhouette  base accuracy\n");
        for r in &self.scores {
            let acc = r
                .base_accuracy
                .map(|a| format!("{a:.4}"))
                .unwrap_or_else(|| "-".into());
            let mark = if r.k == self.chosen {
                "  <- chosen"
            } else {
                ""
            };
            s.push_str(&format!(
                "{:>4}  {:>8.4}  {:>10.4}  {:>13}{mark}\n",
                r.k, r.eigengap, r.silhouette, acc
            ));
        }
        s
    }
}

pub const CRITERION: &str =
    "largest eigengap of the novel class tokens' kNN graph (k = sqrt n, cosine)";
/// Novel crops the estimate looks at, at most (a seeded sample beyond): the distance matrix and
/// the eigen-decomposition grow with its square and cube.
pub const MAX_POINTS: usize = 2000;

/// Scores K = 2..=`max_classes` (at most one less than the number of novel crops) and picks
/// the K with the largest eigengap. `novel` holds the novel tokens `[n, D]`; `base` the labelled
/// base tokens `[m, D]` (m may be 0) with their class indices `base_labels`. Deterministic for a
/// seed.
pub fn estimate(
    novel: ArrayView2<f32>,
    base: ArrayView2<f32>,
    base_labels: &[usize],
    max_classes: usize,
    seed: u64,
) -> Result<KEstimate> {
    if max_classes < 2 {
        return Err(Error::usage(format!(
            "--max-classes {max_classes}: the estimate compares at least K = 2; give 2 or more, or a fixed --num-classes"
        )));
    }
    if base.nrows() != base_labels.len() {
        return Err(Error::runtime(
            "the K estimate needs one label per base token",
        ));
    }
    let top = max_classes.min(novel.nrows().saturating_sub(1));
    if top < 2 {
        return Err(Error::usage(format!(
            "--num-classes auto needs at least 3 novel crops to compare cluster counts ({} found); give --num-classes N",
            novel.nrows()
        )));
    }
    let sample;
    let novel = if novel.nrows() > MAX_POINTS {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let rows: Vec<usize> = (0..novel.nrows()).collect();
        let picked: Vec<usize> = rows
            .choose_multiple(&mut rng, MAX_POINTS)
            .copied()
            .collect();
        sample = novel.select(Axis(0), &picked);
        sample.view()
    } else {
        novel.view()
    };
    let dist = distance_matrix(novel);
    let gaps = eigengaps(dist.view(), top)?;
    let no_pins = vec![None; novel.nrows()];
    let nb = base_labels.iter().map(|c| c + 1).max().unwrap_or(0);
    let all: Option<Array2<f32>> = match base_labels.is_empty() {
        true => None,
        false => Some(concatenate(Axis(0), &[base.view(), novel]).map_err(|e| {
            Error::runtime(format!("base and novel tokens of different widths: {e}"))
        })?),
    };
    let base_truth = base_labels;
    let pb = crate::logging::progress((top - 1) as u64, "estimate K");
    let mut scores = Vec::new();
    for k in 2..=top {
        let f = fit(novel, &no_pins, KMeansOptions::new(k, seed))?;
        let sil = silhouette(dist.view(), &f.assign)?;
        let base_accuracy = if let Some(all) = &all {
            let g = fit(
                all.view(),
                &vec![None; all.nrows()],
                KMeansOptions::new(nb + k, seed),
            )?;
            let pred = &g.assign[..base_truth.len()];
            let e = crate::metrics::evaluate(base_truth, pred, &vec![false; base_truth.len()])?;
            Some(e.f1)
        } else {
            None
        };
        scores.push(KScore {
            k,
            eigengap: gaps[k - 2],
            silhouette: sil,
            base_accuracy,
        });
        pb.inc(1);
    }
    pb.finish_and_clear();
    // The first K among equal scores: prefer fewer types when the data cannot tell them apart.
    let chosen = scores
        .iter()
        .fold(None::<&KScore>, |best, s| match best {
            Some(b) if b.eigengap >= s.eigengap => Some(b),
            _ => Some(s),
        })
        .map(|s| s.k)
        .ok_or_else(|| Error::runtime("no K was scored"))?;
    Ok(KEstimate {
        chosen,
        max_classes,
        criterion: CRITERION.into(),
        scores,
    })
}

/// `λ_K − λ_{K−1}` for K = 2..=`top` of the normalised Laplacian `I − D^{-1/2} A D^{-1/2}` of
/// the symmetric kNN graph (`A_ij = 1` when j is among i's `round(√n)` nearest, or i among j's)
/// built from the distance matrix `dist`. The eigenvalues come from libtorch (`eigvalsh`).
pub fn eigengaps(dist: ArrayView2<f32>, top: usize) -> Result<Vec<f64>> {
    let n = dist.nrows();
    let nn = ((n as f64).sqrt().round() as usize).clamp(1, n.saturating_sub(1).max(1));
    let mut adj = Array2::<f64>::zeros((n, n));
    for (i, row) in dist.outer_iter().enumerate() {
        let mut order: Vec<usize> = (0..n).filter(|&j| j != i).collect();
        order.sort_by(|&a, &b| row[a].total_cmp(&row[b]).then(a.cmp(&b)));
        for &j in order.iter().take(nn) {
            adj[[i, j]] = 1.0;
            adj[[j, i]] = 1.0;
        }
    }
    let deg: Vec<f64> = adj.outer_iter().map(|r| r.iter().sum()).collect();
    // The Laplacian in place of the adjacency: one n×n buffer instead of two.
    let mut lap = adj;
    for ((i, j), v) in lap.indexed_iter_mut() {
        let a = if deg[i] > 0.0 && deg[j] > 0.0 {
            *v / (deg[i] * deg[j]).sqrt()
        } else {
            0.0
        };
        *v = if i == j { 1.0 } else { 0.0 } - a;
    }
    let flat = lap.as_slice().expect("a new matrix is contiguous");
    let ev = tch::Tensor::from_slice(flat)
        .view([n as i64, n as i64])
        .f_linalg_eigvalsh("L")?;
    let ev = Vec::<f64>::try_from(ev)?;
    if ev.len() <= top {
        return Err(Error::runtime("too few eigenvalues for the K range"));
    }
    Ok((2..=top).map(|k| ev[k] - ev[k - 1]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn matrix(rows: &[Vec<f32>]) -> Array2<f32> {
        let d = rows.first().map_or(2, |r| r.len());
        Array2::from_shape_vec((rows.len(), d), rows.concat()).unwrap()
    }

    fn blob_points(k: usize, n: usize, offset: usize, seed: u64) -> Vec<(Vec<f32>, usize)> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut out = Vec::new();
        for c in 0..k {
            for _ in 0..n {
                let mut p = vec![0f32; 16];
                p[c + offset] = 1.0;
                for v in p.iter_mut() {
                    *v += rng.gen_range(-0.08..0.08);
                }
                out.push((p, c));
            }
        }
        out
    }

    #[test]
    fn finds_the_number_of_separated_groups() {
        for true_k in [2, 3, 5] {
            let novel: Vec<Vec<f32>> = blob_points(true_k, 12, 0, 4)
                .into_iter()
                .map(|(p, _)| p)
                .collect();
            let base = blob_points(3, 10, 8, 5);
            let labels: Vec<usize> = base.iter().map(|(_, c)| *c).collect();
            let base: Vec<Vec<f32>> = base.into_iter().map(|(p, _)| p).collect();
            let (novel, base) = (matrix(&novel), matrix(&base));
            let e = estimate(novel.view(), base.view(), &labels, 8, 1).unwrap();
            assert_eq!(e.chosen, true_k, "{}", e.table());
            assert_eq!(e.scores.len(), 7);
            assert!(e.scores.iter().all(|s| s.base_accuracy.is_some()));
            assert!(e.table().contains("<- chosen"));
        }
    }

    #[test]
    fn too_few_crops_or_a_tiny_bound_are_usage_errors() {
        let none = Array2::<f32>::zeros((0, 2));
        let novel = matrix(&[vec![1.0, 0.0], vec![0.0, 1.0]]);
        let est = |n: &Array2<f32>, max| estimate(n.view(), none.view(), &[], max, 0);
        assert_eq!(est(&novel, 10).unwrap_err().exit_code(), 2);
        let novel = matrix(&(0..5).map(|i| vec![i as f32, 1.0]).collect::<Vec<_>>());
        assert_eq!(est(&novel, 1).unwrap_err().exit_code(), 2);
        // The bound is capped by the number of crops.
        assert_eq!(est(&novel, 10).unwrap().scores.len(), 3);
    }
}
