//! Clustering metrics of novel-class discovery, as the reference's `log_accs_from_preds` computes
//! them: predicted clusters are matched one-to-one to true classes by the Hungarian algorithm over
//! all samples (maximising the matched count), then NMI (arithmetic normalisation), ARI and
//! micro-F1 are taken on the novel samples, with the conventions of scikit-learn for degenerate
//! labellings. Also the matched per-class precision / recall and confusion matrix for reports.
//!
//! Labels are small class indices (`usize`): the matching works on a D×D count matrix with
//! D = the largest label + 1.

use std::collections::BTreeMap;

use pathfinding::prelude::{kuhn_munkres, Matrix};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Dense indices of the distinct values of `labels` (sorted ascending) and their counts.
fn dense(labels: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let mut ids: BTreeMap<usize, usize> = BTreeMap::new();
    for &l in labels {
        let next = ids.len();
        ids.entry(l).or_insert(next);
    }
    // Renumber in sorted order so that results do not depend on first appearance.
    let order: BTreeMap<usize, usize> = ids.keys().enumerate().map(|(i, &k)| (k, i)).collect();
    let idx: Vec<usize> = labels.iter().map(|l| order[l]).collect();
    let mut counts = vec![0usize; order.len()];
    for &i in &idx {
        counts[i] += 1;
    }
    (idx, counts)
}

/// Contingency counts `[class][cluster]` with the class and cluster marginals.
struct Contingency {
    cells: Vec<Vec<usize>>,
    rows: Vec<usize>,
    cols: Vec<usize>,
    n: usize,
}

impl Contingency {
    fn new(labels_true: &[usize], labels_pred: &[usize]) -> Self {
        let (ti, rows) = dense(labels_true);
        let (pi, cols) = dense(labels_pred);
        let mut cells = vec![vec![0usize; cols.len()]; rows.len()];
        for (&t, &p) in ti.iter().zip(&pi) {
            cells[t][p] += 1;
        }
        Self {
            cells,
            rows,
            cols,
            n: labels_true.len(),
        }
    }
}

fn check_pair(labels_true: &[usize], labels_pred: &[usize]) -> Result<()> {
    if labels_true.is_empty() {
        return Err(Error::runtime("cannot score an empty set of predictions"));
    }
    if labels_true.len() != labels_pred.len() {
        return Err(Error::runtime(format!(
            "{} true labels but {} predictions",
            labels_true.len(),
            labels_pred.len()
        )));
    }
    Ok(())
}

/// Natural-log entropy of marginal counts (0 for a single group).
fn entropy(counts: &[usize]) -> f64 {
    if counts.len() <= 1 {
        return 0.0;
    }
    let total = counts.iter().sum::<usize>() as f64;
    -counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let c = c as f64;
            (c / total) * (c.ln() - total.ln())
        })
        .sum::<f64>()
}

/// Normalised mutual information with the arithmetic mean of the two entropies
/// (scikit-learn's `normalized_mutual_info_score` default). 1.0 when both labellings are a
/// single group; 0.0 when only one is, or when the mutual information is 0.
pub fn nmi(labels_true: &[usize], labels_pred: &[usize]) -> Result<f64> {
    check_pair(labels_true, labels_pred)?;
    let c = Contingency::new(labels_true, labels_pred);
    if c.rows.len() == 1 && c.cols.len() == 1 {
        return Ok(1.0);
    }
    if c.rows.len() == 1 || c.cols.len() == 1 {
        return Ok(0.0);
    }
    let n = c.n as f64;
    let mut mi = 0.0;
    for (i, row) in c.cells.iter().enumerate() {
        for (j, &nij) in row.iter().enumerate().filter(|(_, &v)| v > 0) {
            let p = nij as f64 / n;
            let outer = (c.rows[i] * c.cols[j]) as f64;
            // Same term layout as scikit-learn; it also zeroes terms below machine epsilon.
            let term = p * ((nij as f64).ln() - n.ln()) + p * (-outer.ln() + n.ln() + n.ln());
            if term.abs() >= f64::EPSILON {
                mi += term;
            }
        }
    }
    let mi = mi.max(0.0);
    if mi == 0.0 {
        return Ok(0.0);
    }
    let norm = (entropy(&c.rows) + entropy(&c.cols)) / 2.0;
    Ok(mi / norm)
}

/// Adjusted Rand index (scikit-learn's `adjusted_rand_score`): from the pair confusion matrix;
/// 1.0 when no pair disagrees (including one group in both).
pub fn ari(labels_true: &[usize], labels_pred: &[usize]) -> Result<f64> {
    check_pair(labels_true, labels_pred)?;
    let c = Contingency::new(labels_true, labels_pred);
    // Exact integer pair counts; i128 because products of pair counts overflow i64 early.
    let n = c.n as i128;
    let sum_sq: i128 = c
        .cells
        .iter()
        .flatten()
        .map(|&v| (v as i128) * (v as i128))
        .sum();
    let dot_cols: i128 = c
        .cells
        .iter()
        .flat_map(|row| {
            row.iter()
                .zip(&c.cols)
                .map(|(&v, &k)| v as i128 * k as i128)
        })
        .sum();
    let dot_rows: i128 = c
        .cells
        .iter()
        .zip(&c.rows)
        .flat_map(|(row, &r)| row.iter().map(move |&v| v as i128 * r as i128))
        .sum();
    let tp = sum_sq - n;
    let fp = dot_cols - sum_sq;
    let fn_ = dot_rows - sum_sq;
    let tn = n * n - fp - fn_ - sum_sq;
    if fn_ == 0 && fp == 0 {
        return Ok(1.0);
    }
    let num = 2.0 * (tp * tn - fn_ * fp) as f64;
    let den = ((tp + fn_) * (fn_ + tn) + (tp + fp) * (fp + tn)) as f64;
    Ok(num / den)
}

/// One-to-one matching of predicted clusters to true classes that maximises the number of
/// samples whose matched cluster equals their class (the reference's `linear_sum_assignment` on
/// `max − counts`). Returns, for each cluster id `0..D` (D = largest label + 1), its class.
///
/// Uses the `pathfinding` crate's Kuhn–Munkres (O(D³)). Where several matchings tie, the chosen
/// one may differ from scipy's; the matched total is the same.
pub fn hungarian_match(labels_true: &[usize], labels_pred: &[usize]) -> Result<Vec<usize>> {
    check_pair(labels_true, labels_pred)?;
    let d = 1 + labels_true
        .iter()
        .chain(labels_pred)
        .copied()
        .max()
        .unwrap_or(0);
    let mut counts = Matrix::new(d, d, 0i64);
    for (&t, &p) in labels_true.iter().zip(labels_pred) {
        counts[(p, t)] += 1;
    }
    let (_, assignment) = kuhn_munkres(&counts);
    Ok(assignment)
}

/// Precision and recall of one class among the novel samples, after matching.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassStats {
    pub class: usize,
    /// Novel samples of this class.
    pub support: usize,
    /// Novel samples whose matched prediction is this class.
    pub predicted: usize,
    pub correct: usize,
    /// `correct / predicted`; 0 when nothing was predicted as this class (scikit-learn's default).
    pub precision: f64,
    /// `correct / support`; 0 when the class has no sample.
    pub recall: f64,
}

/// Counts of (true class, matched predicted class) over the novel samples.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfusionMatrix {
    /// Row and column labels: the classes seen as truth or as matched prediction, ascending.
    pub classes: Vec<usize>,
    /// `counts[i][j]`: samples of class `classes[i]` predicted as `classes[j]`.
    pub counts: Vec<Vec<usize>>,
}

/// NMI, ARI and F1 of a clustering: what a run reports (see [`Evaluation`]). In JSON the
/// triple `[nmi, ari, f1]`, the form the run summaries have always held.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "(f64, f64, f64)", into = "(f64, f64, f64)")]
pub struct Scores {
    pub nmi: f64,
    pub ari: f64,
    pub f1: f64,
}

impl From<(f64, f64, f64)> for Scores {
    fn from((nmi, ari, f1): (f64, f64, f64)) -> Self {
        Scores { nmi, ari, f1 }
    }
}

impl From<Scores> for (f64, f64, f64) {
    fn from(s: Scores) -> Self {
        (s.nmi, s.ari, s.f1)
    }
}

impl std::fmt::Display for Scores {
    /// `NMI 0.1234  ARI 0.5678  F1 0.9012`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NMI {:.4}  ARI {:.4}  F1 {:.4}",
            self.nmi, self.ari, self.f1
        )
    }
}

/// Scores of a set of predictions and the matching behind them.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub nmi: f64,
    pub ari: f64,
    /// Micro-F1 of the matched predictions on the novel samples (= their accuracy).
    pub f1: f64,
    /// Matched class of each cluster id (index: cluster id, from [`hungarian_match`]).
    pub cluster_to_class: Vec<usize>,
    /// Matched prediction of every input sample (base samples included).
    pub matched: Vec<usize>,
    /// Per class (ascending), over the novel samples.
    pub per_class: Vec<ClassStats>,
    pub confusion: ConfusionMatrix,
}

impl Evaluation {
    /// NMI, ARI and F1.
    pub fn scores(&self) -> Scores {
        Scores {
            nmi: self.nmi,
            ari: self.ari,
            f1: self.f1,
        }
    }
}

/// Scores predicted clusters `y_pred` against true classes `y_true` as the reference does:
/// matching over all samples, NMI / ARI / micro-F1 over the samples of the classes that occur
/// where `is_base` is false (the "novel samples"; per-class stats and confusion over them too).
/// Errors on empty or unequal inputs, or when no sample is novel.
pub fn evaluate(y_true: &[usize], y_pred: &[usize], is_base: &[bool]) -> Result<Evaluation> {
    check_pair(y_true, y_pred)?;
    if is_base.len() != y_true.len() {
        return Err(Error::runtime(format!(
            "{} base flags for {} samples",
            is_base.len(),
            y_true.len()
        )));
    }
    let cluster_to_class = hungarian_match(y_true, y_pred)?;
    let matched: Vec<usize> = y_pred.iter().map(|&p| cluster_to_class[p]).collect();
    // As the reference: the scored samples are all those whose class occurs among the novel
    // samples (the same set whenever base and novel classes are disjoint, as in a real run).
    let novel_classes: std::collections::BTreeSet<usize> = y_true
        .iter()
        .zip(is_base)
        .filter(|(_, &base)| !base)
        .map(|(&t, _)| t)
        .collect();
    let (novel_true, novel_pred): (Vec<usize>, Vec<usize>) = y_true
        .iter()
        .zip(&matched)
        .filter(|(t, _)| novel_classes.contains(t))
        .map(|(&t, &p)| (t, p))
        .unzip();
    if novel_true.is_empty() {
        return Err(Error::runtime(
            "no novel sample to score (every sample is from a base class)",
        ));
    }
    let nmi = nmi(&novel_true, &novel_pred)?;
    let ari = ari(&novel_true, &novel_pred)?;
    let correct = novel_true
        .iter()
        .zip(&novel_pred)
        .filter(|(t, p)| t == p)
        .count();
    // Micro averaging over single-label samples: every wrong sample is one FP and one FN.
    let wrong = novel_true.len() - correct;
    let f1 = (2 * correct) as f64 / (2 * correct + 2 * wrong) as f64;

    let mut classes: Vec<usize> = novel_true.iter().chain(&novel_pred).copied().collect();
    classes.sort_unstable();
    classes.dedup();
    let pos: BTreeMap<usize, usize> = classes.iter().enumerate().map(|(i, &c)| (c, i)).collect();
    let mut counts = vec![vec![0usize; classes.len()]; classes.len()];
    for (t, p) in novel_true.iter().zip(&novel_pred) {
        counts[pos[t]][pos[p]] += 1;
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let per_class = classes
        .iter()
        .enumerate()
        .map(|(i, &class)| {
            let support: usize = counts[i].iter().sum();
            let predicted: usize = counts.iter().map(|r| r[i]).sum();
            let correct = counts[i][i];
            ClassStats {
                class,
                support,
                predicted,
                correct,
                precision: ratio(correct, predicted),
                recall: ratio(correct, support),
            }
        })
        .collect();
    Ok(Evaluation {
        nmi,
        ari,
        f1,
        cluster_to_class,
        matched,
        per_class,
        confusion: ConfusionMatrix { classes, counts },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const GOLDEN: &str = include_str!("../tests/fixtures/metrics.json");

    #[test]
    fn scores_are_a_triple_in_json_and_print_on_one_line() {
        let s = Scores {
            nmi: 0.5,
            ari: 0.25,
            f1: 0.125,
        };
        let v = serde_json::to_value(s).unwrap();
        assert_eq!(v, serde_json::json!([0.5, 0.25, 0.125]));
        assert_eq!(serde_json::from_value::<Scores>(v).unwrap(), s);
        assert_eq!(s.to_string(), "NMI 0.5000  ARI 0.2500  F1 0.1250");
        let e = evaluate(&[0, 0, 1, 1], &[1, 1, 0, 0], &[false; 4]).unwrap();
        assert_eq!(e.scores(), (1.0, 1.0, 1.0).into());
    }
    const RANDOM: &str = include_str!("../tests/fixtures/metrics_reference_random.json");

    /// The reference's NMI / ARI / F1 on its golden label vectors (a copy of
    /// ../shared/golden/model/metrics.json in tests/fixtures; every sample novel).
    #[test]
    fn scores_match_the_reference_golden_cases() {
        let g: Value = serde_json::from_str(GOLDEN).unwrap();
        for (k, case) in g["cases"].as_array().unwrap().iter().enumerate() {
            let t: Vec<usize> = serde_json::from_value(case["y_true"].clone()).unwrap();
            let p: Vec<usize> = serde_json::from_value(case["y_pred"].clone()).unwrap();
            let e = evaluate(&t, &p, &vec![false; t.len()]).unwrap();
            for (name, got) in [("nmi", e.nmi), ("ari", e.ari), ("f1", e.f1)] {
                let want = case[name].as_f64().unwrap();
                assert!(
                    (got - want).abs() < 1e-6,
                    "case {k} {name}: {got} vs {want}"
                );
            }
        }
    }

    /// Random label vectors, half with base samples that share classes with novel ones, scored by
    /// the reference's own `split_cluster_acc` (tests/fixtures/metrics_reference_random.json).
    #[test]
    fn scores_match_the_reference_on_random_labellings_with_base_samples() {
        let g: Value = serde_json::from_str(RANDOM).unwrap();
        for (k, case) in g["cases"].as_array().unwrap().iter().enumerate() {
            let t: Vec<usize> = serde_json::from_value(case["y_true"].clone()).unwrap();
            let p: Vec<usize> = serde_json::from_value(case["y_pred"].clone()).unwrap();
            let base: Vec<u8> = serde_json::from_value(case["is_base"].clone()).unwrap();
            let base: Vec<bool> = base.iter().map(|&b| b == 1).collect();
            let e = evaluate(&t, &p, &base).unwrap();
            for (name, got) in [("nmi", e.nmi), ("ari", e.ari), ("f1", e.f1)] {
                let want = case[name].as_f64().unwrap();
                assert!(
                    (got - want).abs() < 1e-9,
                    "case {k} {name}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn hungarian_finds_the_best_relabelling() {
        // Clusters are a permutation of the classes plus one mistake.
        let t = [0, 0, 1, 1, 2, 2, 2];
        let p = [2, 2, 0, 0, 1, 1, 0];
        assert_eq!(hungarian_match(&t, &p).unwrap(), vec![1, 2, 0]);
        let e = evaluate(&t, &p, &[false; 7]).unwrap();
        assert_eq!(e.matched, vec![0, 0, 1, 1, 2, 2, 1]);
        assert!((e.f1 - 6.0 / 7.0).abs() < 1e-12);
        // More clusters than classes: the extra cluster takes an unused id.
        let m = hungarian_match(&[0, 0, 0, 1, 1], &[0, 0, 3, 1, 1]).unwrap();
        assert_eq!((m[0], m[1]), (0, 1));
        assert!(m[3] > 1);
    }

    #[test]
    fn base_samples_steer_the_matching_but_are_not_scored() {
        let t = [0, 0, 1, 1, 2, 2];
        let p = [1, 1, 0, 0, 2, 0];
        let base = [true, true, false, false, false, false];
        let e = evaluate(&t, &p, &base).unwrap();
        assert_eq!(e.cluster_to_class[1], 0);
        assert!((e.f1 - 0.75).abs() < 1e-12);
        assert_eq!(e.confusion.classes, vec![1, 2]);
        assert_eq!(e.confusion.counts, vec![vec![2, 0], vec![1, 1]]);
        let c1 = &e.per_class[0];
        assert_eq!(
            (c1.class, c1.support, c1.predicted, c1.correct),
            (1, 2, 3, 2)
        );
        assert!((c1.precision - 2.0 / 3.0).abs() < 1e-12 && c1.recall == 1.0);
        assert_eq!(
            (e.per_class[1].precision, e.per_class[1].recall),
            (1.0, 0.5)
        );
        // Base samples outnumber the novel ones in cluster 0, which is matched to their class.
        let e = evaluate(
            &[0, 0, 0, 1, 1],
            &[0, 0, 0, 0, 0],
            &[true, true, true, false, false],
        );
        assert_eq!(e.unwrap().f1, 0.0);
        assert_eq!(evaluate(&[1, 1], &[0, 0], &[false, false]).unwrap().f1, 1.0);
    }

    #[test]
    fn degenerate_labellings_follow_scikit_learn() {
        // One class, one cluster: a perfect match.
        assert_eq!(nmi(&[3, 3, 3], &[1, 1, 1]).unwrap(), 1.0);
        assert_eq!(ari(&[3, 3, 3], &[1, 1, 1]).unwrap(), 1.0);
        // One class split into clusters, or one cluster over several classes.
        assert_eq!(nmi(&[0, 0, 0, 0], &[0, 1, 2, 3]).unwrap(), 0.0);
        assert_eq!(ari(&[0, 0, 0, 0], &[0, 1, 2, 3]).unwrap(), 0.0);
        assert_eq!(nmi(&[0, 1, 2], &[5, 5, 5]).unwrap(), 0.0);
        assert_eq!(ari(&[0, 1, 2], &[5, 5, 5]).unwrap(), 0.0);
        // Independent labellings: mutual information 0.
        assert_eq!(nmi(&[0, 0, 1, 1], &[0, 1, 0, 1]).unwrap(), 0.0);
        assert_eq!(ari(&[0, 0, 1, 1], &[0, 1, 0, 1]).unwrap(), -0.5);
        // A single sample.
        let e = evaluate(&[4], &[0], &[false]).unwrap();
        assert_eq!((e.nmi, e.ari, e.f1), (1.0, 1.0, 1.0));
        // Identical up to renaming.
        assert!((nmi(&[0, 0, 1, 2], &[7, 7, 3, 5]).unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(ari(&[0, 0, 1, 2], &[7, 7, 3, 5]).unwrap(), 1.0);
    }

    #[test]
    fn bad_inputs_are_errors_not_nan() {
        assert!(evaluate(&[], &[], &[]).is_err());
        assert!(evaluate(&[0, 1], &[0], &[false, false]).is_err());
        assert!(evaluate(&[0, 1], &[0, 1], &[false]).is_err());
        let err = evaluate(&[0, 1], &[0, 1], &[true, true])
            .unwrap_err()
            .to_string();
        assert!(err.contains("no novel sample"), "{err}");
        assert!(nmi(&[], &[]).is_err() && ari(&[], &[]).is_err());
        assert!(hungarian_match(&[], &[]).is_err());
    }
}
