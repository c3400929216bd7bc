//! Estimating the number of novel defect types before training (`--num-classes auto`).
//!
//! For every K in `2..=max_classes` the novel class tokens are split by k-means and scored by
//! their mean silhouette: how much closer each crop is to its own cluster than to the next one.
//! When a labelled base set is given, the generalized-category-discovery check (Vaze et al.
//! 2022) is reported beside it: k-means with `base classes + K` clusters over base and novel
//! tokens together, scored by the Hungarian accuracy on the base crops.

use serde::{Deserialize, Serialize};

use super::kmeans::{distance_matrix, fit, silhouette, KMeansOptions};
use crate::error::{Error, Result};

/// The scores of one candidate K.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KScore {
    pub k: usize,
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
        let mut s = String::from("   K  silhouette  base accuracy\n");
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
                "{:>4}  {:>10.4}  {:>13}{mark}\n",
                r.k, r.silhouette, acc
            ));
        }
        s
    }
}

pub const CRITERION: &str = "largest mean silhouette of k-means on the novel class tokens";

/// Scores K = 2..=`max_classes` (at most one less than the number of novel crops) and picks
/// the K with the largest silhouette. `base` holds labelled base tokens with their class
/// indices (may be empty). Deterministic for a seed.
pub fn estimate(
    novel: &[Vec<f32>],
    base: &[(Vec<f32>, usize)],
    max_classes: usize,
    seed: u64,
) -> Result<KEstimate> {
    if max_classes < 2 {
        return Err(Error::usage(format!(
            "--max-classes {max_classes}: the estimate compares at least K = 2; give 2 or more, or a fixed --num-classes"
        )));
    }
    let top = max_classes.min(novel.len().saturating_sub(1));
    if top < 2 {
        return Err(Error::usage(format!(
            "--num-classes auto needs at least 3 novel crops to compare cluster counts ({} found); give --num-classes N",
            novel.len()
        )));
    }
    let dist = distance_matrix(novel);
    let no_pins = vec![None; novel.len()];
    let nb = base.iter().map(|(_, c)| c + 1).max().unwrap_or(0);
    let all: Vec<Vec<f32>> = base
        .iter()
        .map(|(f, _)| f.clone())
        .chain(novel.iter().cloned())
        .collect();
    let base_truth: Vec<usize> = base.iter().map(|(_, c)| *c).collect();
    let pb = crate::logging::progress((top - 1) as u64, "estimate K");
    let mut scores = Vec::new();
    for k in 2..=top {
        let f = fit(novel, &no_pins, KMeansOptions::new(k, seed))?;
        let sil = silhouette(&dist, &f.assign)?;
        let base_accuracy = if base.is_empty() {
            None
        } else {
            let g = fit(
                &all,
                &vec![None; all.len()],
                KMeansOptions::new(nb + k, seed),
            )?;
            let pred = &g.assign[..base.len()];
            let e = crate::metrics::evaluate(&base_truth, pred, &vec![false; base.len()])?;
            Some(e.f1)
        };
        scores.push(KScore {
            k,
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
            Some(b) if b.silhouette >= s.silhouette => Some(b),
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

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
            let e = estimate(&novel, &base, 8, 1).unwrap();
            assert_eq!(e.chosen, true_k, "{}", e.table());
            assert_eq!(e.scores.len(), 7);
            assert!(e.scores.iter().all(|s| s.base_accuracy.is_some()));
            assert!(e.table().contains("<- chosen"));
        }
    }

    #[test]
    fn too_few_crops_or_a_tiny_bound_are_usage_errors() {
        let novel = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        assert_eq!(estimate(&novel, &[], 10, 0).unwrap_err().exit_code(), 2);
        let novel: Vec<Vec<f32>> = (0..5).map(|i| vec![i as f32, 1.0]).collect();
        assert_eq!(estimate(&novel, &[], 1, 0).unwrap_err().exit_code(), 2);
        // The bound is capped by the number of crops.
        assert_eq!(estimate(&novel, &[], 10, 0).unwrap().scores.len(), 3);
    }
}
