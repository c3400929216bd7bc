//! k-means with k-means++ seeding and restarts, optionally semi-supervised: points with a known
//! class are pinned to that class's cluster (the "SS-k-means" of generalized category discovery,
//! Vaze et al. 2022), and the silhouette score.
//!
//! Hand-written rather than linfa-clustering because linfa's KMeans cannot pin labelled points
//! to their clusters, which the K estimate's base check needs. The sets are small (hundreds to a
//! few thousand class tokens), so a plain Lloyd loop over the rows of the token matrix (an
//! `ndarray` view, as the tokens come from the backbone) is fast.

use ndarray::{Array2, ArrayView2};
use rand::distributions::{Distribution, WeightedIndex};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::error::{Error, Result};

/// Settings of one k-means fit.
#[derive(Debug, Clone, Copy)]
pub struct KMeansOptions {
    pub k: usize,
    /// Restarts with different seeds; the fit with the lowest inertia wins.
    pub n_init: usize,
    pub max_iter: usize,
    pub seed: u64,
}

impl KMeansOptions {
    pub fn new(k: usize, seed: u64) -> Self {
        Self {
            k,
            n_init: 10,
            max_iter: 300,
            seed,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct KMeansFit {
    /// Cluster of each point, `0..k`.
    pub assign: Vec<usize>,
    pub centroids: Vec<Vec<f32>>,
    /// Sum of squared distances of the points to their centroids.
    pub inertia: f64,
}

/// Squared Euclidean distance, summed in f64.
pub(crate) fn sq_dist(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = (*x - *y) as f64;
            d * d
        })
        .sum()
}

/// The nearest of `centroids` to `p` and its squared distance (the first among equals).
pub(crate) fn nearest(p: &[f32], centroids: &[Vec<f32>]) -> (usize, f64) {
    let mut best = (0, f64::INFINITY);
    for (c, m) in centroids.iter().enumerate() {
        let d = sq_dist(p, m);
        if d < best.1 {
            best = (c, d);
        }
    }
    best
}

/// The rows of `points` as slices (a copy only when the view is not in row-major order).
pub(crate) fn rows<'a>(
    points: &'a ArrayView2<'_, f32>,
    owned: &'a mut Option<Array2<f32>>,
) -> Vec<&'a [f32]> {
    let flat: &'a [f32] = match points.as_slice() {
        Some(s) => s,
        None => owned
            .insert(points.as_standard_layout().into_owned())
            .as_slice()
            .expect("a standard-layout matrix is one slice"),
    };
    flat.chunks(points.ncols().max(1)).collect()
}

fn check(points: &[&[f32]], pinned: &[Option<usize>], k: usize) -> Result<usize> {
    let dim = points.first().map(|p| p.len()).unwrap_or(0);
    if points.is_empty() || dim == 0 {
        return Err(Error::runtime("k-means needs at least one non-empty point"));
    }
    if k == 0 || k > points.len() {
        return Err(Error::usage(format!(
            "cannot split {} crops into {k} clusters; choose between 1 and {}",
            points.len(),
            points.len()
        )));
    }
    if pinned.len() != points.len() {
        return Err(Error::runtime("k-means: one pin per point expected"));
    }
    if points.iter().flat_map(|p| p.iter()).any(|v| !v.is_finite()) {
        return Err(Error::runtime("k-means: a feature is not finite"));
    }
    if let Some(c) = pinned.iter().flatten().find(|&&c| c >= k) {
        return Err(Error::runtime(format!(
            "k-means: pinned class {c} outside {k} clusters"
        )));
    }
    Ok(dim)
}

/// Fits k-means to the rows of `points` (`[n, D]`). `pinned[i] = Some(c)` keeps point `i` in
/// cluster `c` throughout; those clusters start at their pinned points' mean, the others by
/// k-means++ over all points. Deterministic for a seed; the restarts run in parallel.
pub fn fit(
    points: ArrayView2<f32>,
    pinned: &[Option<usize>],
    opts: KMeansOptions,
) -> Result<KMeansFit> {
    let mut owned = None;
    let rows = rows(&points, &mut owned);
    let points = &rows[..];
    let dim = check(points, pinned, opts.k)?;
    let fits: Vec<KMeansFit> = (0..opts.n_init.max(1))
        .into_par_iter()
        .map(|r| {
            let mut rng = ChaCha8Rng::seed_from_u64(opts.seed.wrapping_add(r as u64 * 7919));
            lloyd(points, pinned, opts, dim, &mut rng)
        })
        .collect();
    // The lowest inertia, the first restart among equals (deterministic).
    let best = fits
        .into_iter()
        .reduce(|a, b| if b.inertia < a.inertia { b } else { a })
        .ok_or_else(|| Error::runtime("k-means: no restart ran"))?;
    Ok(best)
}

fn init_centroids(
    points: &[&[f32]],
    pinned: &[Option<usize>],
    k: usize,
    dim: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<Option<Vec<f32>>> {
    let mut cents: Vec<Option<Vec<f32>>> = vec![None; k];
    let mut sums = vec![vec![0f64; dim]; k];
    let mut counts = vec![0usize; k];
    for (p, c) in points.iter().zip(pinned) {
        if let Some(c) = *c {
            counts[c] += 1;
            for (s, v) in sums[c].iter_mut().zip(p.iter()) {
                *s += *v as f64;
            }
        }
    }
    for c in 0..k {
        if counts[c] > 0 {
            cents[c] = Some(
                sums[c]
                    .iter()
                    .map(|s| (s / counts[c] as f64) as f32)
                    .collect(),
            );
        }
    }
    // k-means++: each free centroid is a point drawn with probability ∝ squared distance to the
    // nearest centroid so far (uniform for the first).
    for c in 0..k {
        if cents[c].is_some() {
            continue;
        }
        let chosen: Vec<Vec<f32>> = cents.iter().flatten().cloned().collect();
        let idx = if chosen.is_empty() {
            rng.gen_range(0..points.len())
        } else {
            let w: Vec<f64> = points.iter().map(|p| nearest(p, &chosen).1).collect();
            match WeightedIndex::new(&w) {
                Ok(dist) => dist.sample(rng),
                // Every point sits on a centroid already (duplicates): any point will do.
                Err(_) => rng.gen_range(0..points.len()),
            }
        };
        cents[c] = Some(points[idx].to_vec());
    }
    cents
}

fn lloyd(
    points: &[&[f32]],
    pinned: &[Option<usize>],
    opts: KMeansOptions,
    dim: usize,
    rng: &mut ChaCha8Rng,
) -> KMeansFit {
    let k = opts.k;
    let mut centroids: Vec<Vec<f32>> = init_centroids(points, pinned, k, dim, rng)
        .into_iter()
        .map(|c| c.unwrap_or_else(|| vec![0.0; dim]))
        .collect();
    let mut assign = vec![usize::MAX; points.len()];
    for _ in 0..opts.max_iter.max(1) {
        let mut changed = false;
        for (i, p) in points.iter().enumerate() {
            let c = pinned[i].unwrap_or_else(|| nearest(p, &centroids).0);
            if assign[i] != c {
                assign[i] = c;
                changed = true;
            }
        }
        if !changed {
            break;
        }
        let mut sums = vec![vec![0f64; dim]; k];
        let mut counts = vec![0usize; k];
        for (p, &c) in points.iter().zip(&assign) {
            counts[c] += 1;
            for (s, v) in sums[c].iter_mut().zip(p.iter()) {
                *s += *v as f64;
            }
        }
        for c in 0..k {
            if counts[c] > 0 {
                centroids[c] = sums[c]
                    .iter()
                    .map(|s| (s / counts[c] as f64) as f32)
                    .collect();
            } else {
                // An empty cluster takes the free point farthest from its centroid, as
                // scikit-learn does, so k clusters stay in use.
                let far = (0..points.len())
                    .filter(|&i| pinned[i].is_none())
                    .max_by(|&a, &b| {
                        let da = sq_dist(points[a], &centroids[assign[a]]);
                        let db = sq_dist(points[b], &centroids[assign[b]]);
                        da.total_cmp(&db).then(b.cmp(&a))
                    });
                if let Some(i) = far {
                    centroids[c] = points[i].to_vec();
                    assign[i] = c;
                }
            }
        }
    }
    let inertia = points
        .iter()
        .zip(&assign)
        .map(|(p, &c)| sq_dist(p, &centroids[c]))
        .sum();
    KMeansFit {
        assign,
        centroids,
        inertia,
    }
}

/// Pairwise Euclidean distances `[n, n]` of the rows of `points`, computed once and reused by
/// [`silhouette`] over many clusterings of the same points.
pub fn distance_matrix(points: ArrayView2<f32>) -> Array2<f32> {
    let mut owned = None;
    let rows = rows(&points, &mut owned);
    let points = &rows[..];
    let n = points.len();
    let flat: Vec<f32> = (0..n)
        .into_par_iter()
        .flat_map_iter(|i| {
            points
                .iter()
                .map(move |q| sq_dist(points[i], q).sqrt() as f32)
        })
        .collect();
    Array2::from_shape_vec((n, n), flat).expect("n × n distances")
}

/// Mean silhouette coefficient of a clustering, from [`distance_matrix`]: for each point
/// `(b − a) / max(a, b)` with `a` its mean distance to its own cluster and `b` the smallest mean
/// distance to another cluster; 0 for a point alone in its cluster (scikit-learn's convention).
/// Needs at least 2 clusters in use.
pub fn silhouette(dist: ArrayView2<f32>, assign: &[usize]) -> Result<f64> {
    let k = assign.iter().max().map(|m| m + 1).unwrap_or(0);
    let mut sizes = vec![0usize; k];
    for &c in assign {
        sizes[c] += 1;
    }
    if sizes.iter().filter(|&&s| s > 0).count() < 2 || dist.nrows() != assign.len() {
        return Err(Error::runtime(
            "the silhouette needs at least two non-empty clusters",
        ));
    }
    let total: f64 = (0..assign.len())
        .into_par_iter()
        .map(|i| {
            let own = assign[i];
            if sizes[own] < 2 {
                return 0.0;
            }
            let mut sums = vec![0f64; k];
            for (j, &c) in assign.iter().enumerate() {
                sums[c] += dist[[i, j]] as f64;
            }
            let a = sums[own] / (sizes[own] - 1) as f64;
            let b = (0..k)
                .filter(|&c| c != own && sizes[c] > 0)
                .map(|c| sums[c] / sizes[c] as f64)
                .fold(f64::INFINITY, f64::min);
            let m = a.max(b);
            if m > 0.0 {
                (b - a) / m
            } else {
                0.0
            }
        })
        .sum();
    Ok(total / assign.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `k` tight blobs of `n` points each around well separated centres.
    fn matrix(rows: &[Vec<f32>]) -> Array2<f32> {
        let d = rows.first().map_or(0, |r| r.len());
        Array2::from_shape_vec((rows.len(), d), rows.concat()).unwrap()
    }

    fn blobs(k: usize, n: usize, seed: u64) -> (Array2<f32>, Vec<usize>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut pts = Vec::new();
        let mut labels = Vec::new();
        for c in 0..k {
            for _ in 0..n {
                let mut p = vec![0f32; 8];
                p[c % 8] = 10.0 * (1 + c / 8) as f32;
                for v in p.iter_mut() {
                    *v += rng.gen_range(-0.5..0.5);
                }
                pts.push(p);
                labels.push(c);
            }
        }
        (matrix(&pts), labels)
    }

    fn same_partition(a: &[usize], b: &[usize]) -> bool {
        (0..a.len()).all(|i| (0..a.len()).all(|j| (a[i] == a[j]) == (b[i] == b[j])))
    }

    #[test]
    fn recovers_separated_blobs_deterministically() {
        let (pts, labels) = blobs(4, 20, 1);
        let pins = vec![None; pts.nrows()];
        let f = fit(pts.view(), &pins, KMeansOptions::new(4, 7)).unwrap();
        assert!(same_partition(&f.assign, &labels));
        assert_eq!(f, fit(pts.view(), &pins, KMeansOptions::new(4, 7)).unwrap());
    }

    #[test]
    fn pinned_points_stay_in_their_cluster() {
        let (pts, labels) = blobs(3, 10, 2);
        // Pin blob 0 to cluster 2 and blob 1 to cluster 0: the free blob takes cluster 1.
        let pins: Vec<Option<usize>> = labels
            .iter()
            .map(|&l| match l {
                0 => Some(2),
                1 => Some(0),
                _ => None,
            })
            .collect();
        let f = fit(pts.view(), &pins, KMeansOptions::new(3, 3)).unwrap();
        for (i, &l) in labels.iter().enumerate() {
            assert_eq!(f.assign[i], [2, 0, 1][l]);
        }
    }

    #[test]
    fn silhouette_is_high_for_the_true_k_and_matches_a_hand_computed_case() {
        // Points 0, 1 | 10: a(0)=1, b(0)=10 → 0.9; a(1)=1, b(1)=9 → 8/9; point 2 alone → 0.
        let pts = matrix(&[vec![0.0], vec![1.0], vec![10.0]]);
        let s = silhouette(distance_matrix(pts.view()).view(), &[0, 0, 1]).unwrap();
        assert!((s - (0.9 + 8.0 / 9.0) / 3.0).abs() < 1e-9, "{s}");
        let (pts, _) = blobs(4, 15, 3);
        let d = distance_matrix(pts.view());
        let pins = vec![None; pts.nrows()];
        let score = |k| {
            let f = fit(pts.view(), &pins, KMeansOptions::new(k, 1)).unwrap();
            silhouette(d.view(), &f.assign).unwrap()
        };
        let s4 = score(4);
        assert!(s4 > 0.8 && s4 > score(2) && s4 > score(3) && s4 > score(6));
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let pts = matrix(&[vec![0.0, 1.0], vec![1.0, 0.0]]);
        let pins = vec![None; 2];
        assert!(fit(pts.view(), &pins, KMeansOptions::new(3, 0)).is_err());
        assert!(fit(pts.view(), &pins, KMeansOptions::new(0, 0)).is_err());
        assert!(fit(
            Array2::<f32>::zeros((0, 2)).view(),
            &[],
            KMeansOptions::new(1, 0)
        )
        .is_err());
        let nan = matrix(&[vec![f32::NAN, 0.0], vec![1.0, 0.0]]);
        assert!(fit(nan.view(), &pins, KMeansOptions::new(1, 0)).is_err());
        assert!(fit(pts.view(), &[Some(5), None], KMeansOptions::new(2, 0)).is_err());
        assert!(silhouette(distance_matrix(pts.view()).view(), &[0, 0]).is_err());
        // Duplicated points: k-means++ has no distance left to sample by, and still fits.
        let dup = Array2::from_elem((5, 2), 1.0f32);
        let f = fit(dup.view(), &[None; 5], KMeansOptions::new(2, 0)).unwrap();
        assert_eq!(f.inertia, 0.0);
    }
}
