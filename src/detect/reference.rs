//! What each test patch is compared with, and its anomaly score:
//!
//! - a memory bank of normal patches ([`Reference::Bank`]): the score is the distance to the
//!   nearest bank entry (PatchCore; cosine for the ViT features, AnomalyDINO's choice);
//! - zero-shot mutual scoring ([`Reference::Mutual`], after MuSc, Li et al., ICLR 2024): with no
//!   normal images, each patch is compared with every patch of a bounded, seeded random subset of
//!   the *other* test images. Its distance to the nearest patch of each reference image is small
//!   for normal texture, which nearly every image shows, and large for a defect, which only a few
//!   others share; the score is the mean of the lowest `fraction` of these per-image distances,
//!   so a defect type that recurs in a minority of the references still scores high.
//!
//! Similarities are computed in f32 whatever the backbone's precision: near 1, bf16 resolves
//! steps of about 0.004, the size of the signal, and nearest neighbours would tie.

use std::path::Path;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use super::coreset;
use super::features::{FeatureExtractor, Metric, Resize};
use crate::error::{Error, Result};

/// Rows of test patches per similarity matmul, so one chunk stays under 16 M entries.
const CHUNK_ENTRIES: i64 = 1 << 24;

pub(crate) enum Reference {
    Bank {
        /// Per feature slice ([`super::slices`]; one by default): the bank `[K, d]` and its
        /// squared norms `[K]` (for the Euclidean metric).
        slices: Vec<(Tensor, Tensor)>,
    },
    Mutual {
        /// (test index, patches `[P_j, d]` of each slice) of each reference image.
        refs: Vec<(usize, Vec<Tensor>)>,
        fraction: f64,
    },
}

fn sq_norms(t: &Tensor) -> Tensor {
    (t * t).sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
}

impl Reference {
    /// A memory bank `[K, S·d]` of `s` slices.
    pub(crate) fn bank(bank: Tensor, s: usize) -> Reference {
        let slices = super::slices::split(&bank, s)
            .into_iter()
            .map(|b| {
                let sq = sq_norms(&b);
                (b, sq)
            })
            .collect();
        Reference::Bank { slices }
    }

    /// Zero-shot references: (test index, patches `[P_j, S·d]`) cut into `s` slices.
    pub(crate) fn mutual_refs(refs: Vec<(usize, Tensor)>, s: usize, fraction: f64) -> Reference {
        let refs = refs
            .into_iter()
            .map(|(i, r)| (i, super::slices::split(&r, s)))
            .collect();
        Reference::Mutual { refs, fraction }
    }

    /// Slices per patch feature.
    fn slices(&self) -> usize {
        match self {
            Reference::Bank { slices } => slices.len(),
            Reference::Mutual { refs, .. } => refs.first().map_or(1, |(_, r)| r.len()),
        }
    }

    /// Anomaly scores `[P]` of the patches `q [P, S·d]` of test image `image`: the mean over
    /// the slices of each slice's score.
    pub(crate) fn score(&self, image: usize, q: &Tensor, metric: Metric) -> Tensor {
        let qs = super::slices::split(q, self.slices());
        let n = qs.len() as f64;
        let per_slice = qs
            .iter()
            .enumerate()
            .map(|(s, q)| self.score_slice(image, s, q, metric));
        let sum = per_slice.reduce(|a, b| a + b).expect("one slice at least");
        if n > 1.0 {
            sum / n
        } else {
            sum
        }
    }

    fn score_slice(&self, image: usize, s: usize, q: &Tensor, metric: Metric) -> Tensor {
        tch::no_grad(|| match self {
            Reference::Bank { slices } => nearest(q, &slices[s].0, &slices[s].1, metric),
            Reference::Mutual { refs, fraction } => {
                let per_image: Vec<Tensor> = refs
                    .iter()
                    .filter(|(j, _)| *j != image)
                    .map(|(_, r)| nearest(q, &r[s], &sq_norms(&r[s]), metric))
                    .collect();
                let d = Tensor::stack(&per_image, 1);
                let keep = lowest_count(per_image.len(), *fraction);
                let (low, _) = d.sort(1, false);
                low.narrow(1, 0, keep as i64)
                    .mean_dim([1i64].as_slice(), false, Kind::Float)
            }
        })
    }
}

/// How the features of a set of images are taken (the spec's input settings).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Inputs {
    pub size: u32,
    pub resize: Resize,
    pub batch_size: usize,
    pub seed: u64,
    /// The maps' Gaussian blur: sigma at a side of 256.
    pub blur: f64,
}

/// A fitted memory bank.
pub(crate) struct Bank {
    /// `[K, S·d]`.
    pub bank: Tensor,
    /// Patches pooled before the coreset.
    pub pool: usize,
    /// Per bank row: the index (in the fitted list) of the image it came from.
    pub owners: Vec<u32>,
}

impl Bank {
    /// The bank without image `image`'s rows, as a [`Reference`] of `s` slices: how a fitted
    /// normal image scores as if it had been held out.
    pub(crate) fn without(&self, image: usize, s: usize) -> Reference {
        let keep: Vec<i64> = (self.owners.iter().enumerate())
            .filter(|(_, &o)| o as usize != image)
            .map(|(i, _)| i as i64)
            .collect();
        let idx = Tensor::from_slice(&keep).to_device(self.bank.device());
        Reference::bank(self.bank.index_select(0, &idx), s)
    }
}

/// The pool of normal patches, then its greedy k-center coreset. The images are streamed in
/// batches; when all their patches would exceed `max_patches`, each image keeps its
/// `max_patches / n` most spread-out patches, so the pool stays bounded.
pub(crate) fn fit_bank(
    fx: &FeatureExtractor,
    paths: &[&Path],
    inp: Inputs,
    max_patches: usize,
    coreset_fraction: f64,
) -> Result<Bank> {
    let pb = crate::logging::progress(paths.len() as u64, "features");
    let dim = fx.dim() as usize;
    let mut pool: Vec<f32> = Vec::new();
    let mut owners: Vec<u32> = Vec::new();
    for (b, chunk) in paths.chunks(inp.batch_size).enumerate() {
        let feats = fx.images(chunk, inp.size, inp.resize)?;
        for (i, f) in feats.iter().enumerate() {
            let rows: Vec<f32> = Vec::try_from(f.patches.to_device(Device::Cpu).flatten(0, -1))
                .map_err(|e| Error::runtime(format!("reading patch features: {e}")))?;
            let keep = per_image_keep(paths.len(), rows.len() / dim, max_patches);
            let img = b * inp.batch_size + i;
            let share = image_share(&rows, dim, keep, inp.seed, img);
            owners.extend(std::iter::repeat_n(img as u32, share.len() / dim));
            pool.extend_from_slice(&share);
        }
        pb.inc(chunk.len() as u64);
        crate::threads::tick();
    }
    pb.finish_and_clear();
    let n = pool.len() / dim;
    let pool = Tensor::from_slice(&pool)
        .view([n as i64, dim as i64])
        .to_device(fx.device);
    let k = coreset::coreset_size(n, coreset_fraction);
    let pb = crate::logging::progress(k as u64, "coreset");
    let rows = coreset::subsample_rows(&pool, coreset_fraction, inp.seed, || pb.inc(1));
    pb.finish_and_clear();
    let (bank, owners) = match rows {
        None => (pool, owners),
        Some(idx) => {
            let owners = idx.iter().map(|&i| owners[i as usize]).collect();
            let idx = Tensor::from_slice(&idx).to_device(pool.device());
            (pool.index_select(0, &idx), owners)
        }
    };
    Ok(Bank {
        bank,
        pool: n,
        owners,
    })
}

/// Zero-shot references: the features of up to `count` test images drawn with the seed
/// (`paths` are all test images; the caller has checked there are at least two).
pub(crate) fn mutual(
    fx: &FeatureExtractor,
    paths: &[&Path],
    inp: Inputs,
    count: usize,
    fraction: f64,
) -> Result<Reference> {
    let mut idx: Vec<usize> = (0..paths.len()).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(inp.seed));
    idx.truncate(count.max(2));
    idx.sort_unstable();
    let pb = crate::logging::progress(idx.len() as u64, "references");
    let mut refs = Vec::with_capacity(idx.len());
    for chunk in idx.chunks(inp.batch_size) {
        let ps: Vec<&Path> = chunk.iter().map(|&i| paths[i]).collect();
        for (&i, f) in chunk.iter().zip(fx.images(&ps, inp.size, inp.resize)?) {
            refs.push((i, f.patches));
        }
        pb.inc(chunk.len() as u64);
        crate::threads::tick();
    }
    pb.finish_and_clear();
    Ok(Reference::mutual_refs(refs, fx.slices(), fraction))
}

/// Patches each training image contributes to the pool: all of its `per_image`, or
/// `max_patches / n_images` (at least 1) when the pool would exceed `max_patches`.
pub(crate) fn per_image_keep(n_images: usize, per_image: usize, max_patches: usize) -> usize {
    (max_patches / n_images.max(1)).clamp(1, per_image)
}

/// One image's share of the pool: its `rows [P, dim]` (row-major) reduced to `keep` rows by
/// greedy k-center from a seeded random patch, so rare normal patterns survive (a random subset
/// would drop them).
fn image_share(rows: &[f32], dim: usize, keep: usize, seed: u64, img: usize) -> Vec<f32> {
    let p = rows.len() / dim;
    if keep >= p {
        return rows.to_vec();
    }
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ (img as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let start = rng.gen_range(0..p);
    coreset::greedy_k_center(rows, dim, keep, start, || {})
        .into_iter()
        .flat_map(|i| rows[i * dim..(i + 1) * dim].iter().copied())
        .collect()
}

/// How many of `n` per-image distances the mutual score averages (at least 1).
pub(crate) fn lowest_count(n: usize, fraction: f64) -> usize {
    ((n as f64 * fraction).floor() as usize).clamp(1, n.max(1))
}

/// Distance of each row of `q [N, D]` to its nearest row of `bank [K, D]` (`bank_sq [K]`: the
/// squared norms, Euclidean only): 1 − cosine for unit vectors, or Euclidean. -> `[N]`
pub fn nearest(q: &Tensor, bank: &Tensor, bank_sq: &Tensor, metric: Metric) -> Tensor {
    let n = q.size()[0];
    let k = bank.size()[0].max(1);
    let chunk = (CHUNK_ENTRIES / k).max(1);
    let q = q.to_kind(Kind::Float);
    let bank = bank.to_kind(Kind::Float);
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let f = q.narrow(0, start, len);
        let sim = f.matmul(&bank.tr());
        out.push(match metric {
            Metric::Cosine => 1.0 - sim.amax([1i64].as_slice(), false),
            Metric::Euclidean => {
                let f_sq = (&f * &f).sum_dim_intlist([1i64].as_slice(), true, Kind::Float);
                let d2 = f_sq + bank_sq.unsqueeze(0) - sim * 2.0;
                d2.amin([1i64].as_slice(), false).clamp_min(0.0).sqrt()
            }
        });
        start += len;
    }
    Tensor::cat(&out, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn unit(t: Tensor) -> Tensor {
        let n = t.norm_scalaropt_dim(2.0, [1i64].as_slice(), true);
        t / n
    }

    #[test]
    fn each_image_keeps_its_share_of_the_pool() {
        // 10 images of 100 patches, at most 250 patches: 25 per image.
        assert_eq!(per_image_keep(10, 100, 250), 25);
        assert_eq!(per_image_keep(10, 100, 5000), 100);
        assert_eq!(per_image_keep(10, 100, 3), 1);
        // 6 patches in 2-d, 3 kept: the far corners survive whatever the random start.
        let rows = [0.0, 0.0, 0.1, 0.0, 0.0, 0.1, 9.0, 0.0, 0.0, 9.0, 0.1, 0.1];
        for img in 0..5 {
            let share = image_share(&rows, 2, 3, 1, img);
            assert_eq!(share.len(), 6);
            let has = |x: f32, y: f32| share.chunks(2).any(|r| r == [x, y]);
            assert!(has(9.0, 0.0) && has(0.0, 9.0), "{share:?}");
        }
        assert_eq!(image_share(&rows, 2, 6, 1, 0), rows);
    }

    #[test]
    fn nearest_matches_brute_force() {
        tch::manual_seed(3);
        let f = Tensor::randn([50, 7], (Kind::Float, Device::Cpu));
        let bank = Tensor::randn([9, 7], (Kind::Float, Device::Cpu));
        let sq = (&bank * &bank).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
        let d = nearest(&f, &bank, &sq, Metric::Euclidean);
        let (fu, bu) = (unit(f.shallow_clone()), unit(bank.shallow_clone()));
        let c = nearest(&fu, &bu, &sq, Metric::Cosine);
        for i in 0..50 {
            let want = (bank.shallow_clone() - f.get(i))
                .square()
                .sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
                .min()
                .sqrt()
                .double_value(&[]);
            assert!((d.double_value(&[i]) - want).abs() < 1e-4);
            let cos = bu.matmul(&fu.get(i)).max().double_value(&[]);
            assert!((c.double_value(&[i]) - (1.0 - cos)).abs() < 1e-6);
        }
        // A feature equal to a bank row is at distance 0.
        let d0 = nearest(&bank.narrow(0, 2, 1), &bank, &sq, Metric::Euclidean);
        assert!(d0.double_value(&[0]) < 1e-3);
    }

    #[test]
    fn mutual_scores_single_out_what_few_references_share() {
        // Five reference "images" of 4 patches: all show the normal directions e0/e1; image 1
        // also shows e2 (one image in five shares the defect).
        let e = |i: i64| {
            Tensor::eye(4, (Kind::Float, Device::Cpu))
                .get(i)
                .unsqueeze(0)
        };
        let normal = Tensor::cat(&[e(0), e(1), e(0), e(1)], 0);
        let mut refs: Vec<(usize, Tensor)> = (0..5).map(|j| (j, normal.copy())).collect();
        refs[1].1 = Tensor::cat(&[e(0), e(1), e(2), e(1)], 0);
        let r = Reference::mutual_refs(refs, 1, 0.5);
        // Test image 0: a normal patch and a defect patch (e2).
        let q = Tensor::cat(&[e(0), e(2)], 0);
        let s = r.score(0, &q, Metric::Cosine);
        // Image 0 itself is skipped: 4 references, the lowest 2 averaged: (0 + 1) / 2.
        assert!(s.double_value(&[0]).abs() < 1e-6);
        assert!((s.double_value(&[1]) - 0.5).abs() < 1e-6, "{s}");
        assert_eq!(lowest_count(4, 0.3), 1);
        assert_eq!(lowest_count(10, 0.3), 3);
        assert_eq!(lowest_count(1, 0.3), 1);
    }

    #[test]
    fn identical_slices_score_as_one_slice() {
        // Per-block scoring of three identical blocks equals scoring the block alone, for the
        // bank and for the zero-shot references.
        tch::manual_seed(5);
        let f = |n: i64| unit(Tensor::randn([n, 6], (Kind::Float, Device::Cpu)));
        let (q, bank) = (f(20), f(9));
        let three = |t: &Tensor| Tensor::cat(&[t, t, t], 1);
        let one = Reference::bank(bank.shallow_clone(), 1).score(0, &q, Metric::Cosine);
        let per = Reference::bank(three(&bank), 3).score(0, &three(&q), Metric::Cosine);
        assert_eq!(per.size(), [20]);
        assert!(one.allclose(&per, 1e-6, 1e-6, false));
        let refs: Vec<(usize, Tensor)> = (1..5).map(|j| (j, f(7))).collect();
        let refs3 = refs.iter().map(|(j, r)| (*j, three(r))).collect();
        let one = Reference::mutual_refs(refs, 1, 0.5).score(0, &q, Metric::Cosine);
        let per = Reference::mutual_refs(refs3, 3, 0.5).score(0, &three(&q), Metric::Cosine);
        assert!(one.allclose(&per, 1e-6, 1e-6, false));
        // Two different slices: the mean of each slice's own nearest distance.
        let (a, b) = (f(9), f(9));
        let two = Reference::bank(Tensor::cat(&[&a, &b], 1), 2);
        let (qa, qb) = (f(20), f(20));
        let got = two.score(0, &Tensor::cat(&[&qa, &qb], 1), Metric::Cosine);
        let want = (Reference::bank(a, 1).score(0, &qa, Metric::Cosine)
            + Reference::bank(b, 1).score(0, &qb, Metric::Cosine))
            / 2.0;
        assert!(got.allclose(&want, 1e-6, 1e-6, false));
    }
}
