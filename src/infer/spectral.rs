//! Putting the images into clusters by spectral clustering of their trained features (ours,
//! issue 25; `inference.assign: spectral`).
//!
//! Each image's feature is the one [`super::refine`] uses: the normalised mean of its crops'
//! unit class tokens from the trained model. The images are split into the run's K clusters by
//! [`crate::cluster::spectral`] on their nearest-neighbour graph, and each spectral cluster takes
//! the number of the heads' cluster it overlaps most (one-to-one), so that the crop rows, which
//! keep the heads' answer, and the image rows mostly agree. An image whose cluster changed gets
//! its merged probability of the new cluster as its confidence, as a refined one does.
//!
//! With `inference.num_clusters` the images are split into that many clusters instead of the
//! K the model was trained with: K enters training only through the heads, and the trained
//! graph can be split into any number (measured: models trained with 10 clusters and split
//! into the true K were level on the mean with those trained with it, docs/results.md,
//! fifteenth session). There is then no one-to-one pairing with the heads' clusters: each
//! head is paired with the cluster most of its images went to, and an image's confidence is
//! its merged probability over the heads paired with its cluster. `inference.num_clusters:
//! auto` reads that number from the same features first ([`super::answer_k`]).
//!
//! With `inference.spectral_center`, the images' mean feature is subtracted from each before
//! the graph (each made unit length again). Why: the trained tokens of one product's defects
//! share a large common direction, so their cosine neighbourhoods are crowded; without it,
//! the same trained models' answers were 0.01–0.09 F1 lower on MTD (docs/results.md,
//! fourteenth session).
//!
//! The features (centred where they were) and clusters of the training images are stored in
//! the checkpoint, with the mean that centred them. `test` and `predict` centre new images by
//! that mean and give each the cluster of its nearest stored image: on the training images
//! themselves that is their own answer, and a new image follows the graph's clusters, where a
//! centroid would cut across them (measured: nearest centroids after the spectral answer lost
//! up to 0.02 F1, docs/results.md).

use std::collections::BTreeMap;
use std::path::Path;

use ndarray::ArrayView2;
use tch::{Kind, Tensor};

use super::answer_k::{AnswerK, KRead};
use super::predict::Predictions;
use super::refine::{centroids, image_features, move_images};
use crate::cluster::kmeans::nearest;
use crate::cluster::spectral::{self, SpectralOptions};
use crate::config::Inference;
use crate::error::{Error, Result};

/// Checkpoint tensor names (under the `answer.` prefix) of the stored training images.
const FEATURES: &str = "image_features";
const CLUSTERS: &str = "image_clusters";
const CENTER: &str = "image_center";

/// The training images' features and clusters, which `test` and `predict` assign images by.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbours {
    pub features: Vec<Vec<f32>>,
    pub clusters: Vec<usize>,
    /// The mean subtracted from the features (`inference.spectral_center`), `None` if none was.
    pub center: Option<Vec<f32>>,
}

/// `f` − `center`, made unit length (left as it is when that is zero).
fn centred(f: &[f32], center: &[f32]) -> Vec<f32> {
    let d: Vec<f32> = f.iter().zip(center).map(|(a, b)| a - b).collect();
    let mut out = Vec::with_capacity(d.len());
    crate::cluster::features::normalise_into(&d, &mut out);
    out
}

/// Replaces the image clusters of `preds` by spectral clustering of the images' trained
/// features on the graphs `inference.spectral_*` describe (k-means seeded by `seed`), and
/// returns what the checkpoint stores to reproduce the answer. With `spectral_center`, the
/// features are first centred on their mean (module doc). With `pooled` (one row per image of `preds`, in its
/// order: the images' pooled detector features), the graph is the sum of the two features'
/// graphs ([`spectral::fit_views`]); the stored answer is the same kind, the trained features
/// and the clusters.
pub fn assign(
    preds: &mut Predictions,
    inference: &Inference,
    seed: u64,
    pooled: Option<ArrayView2<f32>>,
    read: KRead,
) -> Result<(Neighbours, Option<AnswerK>)> {
    let mut features = image_features(preds)?;
    let center = match inference.spectral_center {
        true => centroids(&features, &vec![0; features.len()], 1)
            .pop()
            .flatten(),
        false => None,
    };
    if let Some(c) = &center {
        features = features.iter().map(|f| centred(f, c)).collect();
    }
    let n = features.len();
    let heads_k = preds.num_clusters;
    let d = features.first().map_or(0, Vec::len);
    let flat: Vec<f32> = features.iter().flatten().copied().collect();
    let points = ArrayView2::from_shape((n, d), &flat)
        .map_err(|e| Error::runtime(format!("image features: {e}")))?;
    let (answer_k, read) = super::answer_k::answer_k(inference, heads_k, points, read, seed)?;
    let k = answer_k.min(n);
    if let Some(p) = pooled.filter(|p| p.nrows() != n) {
        return Err(Error::runtime(format!(
            "{} pooled features for {n} images",
            p.nrows()
        )));
    }
    let opts = SpectralOptions {
        scales: inference.spectral_scales.clone(),
        ..SpectralOptions::new(k, inference.spectral_neighbors, seed)
    };
    let found = match pooled {
        _ if n < 2 => vec![0; n],
        Some(p) => spectral::fit_views(&[points.view(), p.view()], &opts)?,
        None => spectral::fit(points, &opts)?,
    };
    // With the heads' K each spectral cluster takes the number of the heads' cluster it overlaps
    // most; with another K (`inference.num_clusters`) there is no such pairing.
    let clusters: Vec<usize> = match answer_k == heads_k {
        true => {
            let heads: Vec<usize> = preds.images.iter().map(|i| i.cluster).collect();
            let to_heads = crate::metrics::hungarian_match(&heads, &found)?;
            found.iter().map(|&c| to_heads[c]).collect()
        }
        false => found,
    };
    let change =
        match place(preds, &clusters, answer_k) {
            Some(moved) => format!("{moved} of {n} images differ from the region-merged answer"),
            None => format!(
            "{answer_k} clusters (inference.num_clusters{}; the model was trained with {heads_k})",
            inference.num_clusters.map_or(String::new(), |n| format!(": {n}"))
        ),
        };
    let stored = Neighbours {
        features,
        clusters,
        center,
    };
    let what = match pooled {
        Some(_) => "trained and pooled detector features' graphs",
        None => "features",
    };
    let centred = if stored.center.is_some() {
        ", the trained features centred on their mean"
    } else {
        ""
    };
    let counts = opts.neighbour_counts();
    let neighbours = match counts[..] {
        [one] => format!("{one} neighbours"),
        _ => format!("summed over {counts:?} neighbours"),
    };
    log::info!(
        "image clusters by spectral clustering of the images' {what} ({neighbours}{centred}): \
         {change}"
    );
    Ok((stored, read))
}

/// Assigns the images of `preds` the cluster of their nearest stored training image (squared
/// Euclidean distance, after centring them on the stored mean where there is one; the first
/// among equals), as `test` and `predict` reproduce a checkpoint made with
/// `inference.assign: spectral`.
pub fn assign_stored(
    preds: &mut Predictions,
    stored: &Neighbours,
    num_clusters: Option<usize>,
) -> Result<()> {
    let mut features = image_features(preds)?;
    let answer_k = num_clusters.unwrap_or(preds.num_clusters);
    let d = features.first().map_or(0, Vec::len);
    let bad_center = stored.center.as_ref().is_some_and(|c| c.len() != d);
    if bad_center || stored.features.is_empty() || stored.features.iter().any(|f| f.len() != d) {
        return Err(Error::runtime(format!(
            "the checkpoint's stored image features do not have the model's {d} dimensions"
        )));
    }
    if let Some(&c) = stored.clusters.iter().find(|&&c| c >= answer_k) {
        return Err(Error::runtime(format!(
            "the checkpoint stores cluster {c} of {answer_k}"
        )));
    }
    if let Some(c) = &stored.center {
        features = features.iter().map(|f| centred(f, c)).collect();
    }
    let clusters: Vec<usize> = features
        .iter()
        .map(|f| stored.clusters[nearest(f, &stored.features).0])
        .collect();
    place(preds, &clusters, answer_k);
    Ok(())
}

/// Puts the images of `preds` into `clusters` of an answer with `k` clusters: with the heads'
/// own K each keeps the merged probability of its cluster and the images that moved are
/// counted (`Some`); with another K, [`regroup`] pairs heads and clusters (`None`).
fn place(preds: &mut Predictions, clusters: &[usize], k: usize) -> Option<usize> {
    match k == preds.num_clusters {
        true => Some(move_images(
            preds,
            &clusters.iter().map(|&c| Some(c)).collect::<Vec<_>>(),
        )),
        false => {
            regroup(preds, clusters, k);
            None
        }
    }
}

/// Puts the images of `preds` into `clusters` of an answer with `k` clusters, where the heads
/// have another number (`inference.num_clusters`). Each head is paired with the cluster that
/// most of its region-merged images went to (the lower number among equals), and an image's
/// confidence is its merged probability summed over the heads paired with its cluster: with
/// one head per cluster that is the probability a refined or spectral answer gives it.
fn regroup(preds: &mut Predictions, clusters: &[usize], k: usize) {
    let heads = preds.num_clusters;
    let mut votes = vec![vec![0usize; k]; heads];
    for (img, &c) in preds.images.iter().zip(clusters) {
        if let Some(v) = votes.get_mut(img.cluster) {
            v[c] += 1;
        }
    }
    let paired: Vec<Option<usize>> = votes
        .iter()
        .map(|v| {
            let best = (0..k).max_by_key(|&c| (v[c], std::cmp::Reverse(c)))?;
            (v[best] > 0).then_some(best)
        })
        .collect();
    for (img, &c) in preds.images.iter_mut().zip(clusters) {
        img.cluster = c;
        img.confidence = img
            .merged
            .iter()
            .zip(&paired)
            .filter(|(_, p)| **p == Some(c))
            .map(|(m, _)| m)
            .sum();
    }
    preds.num_clusters = k;
}

impl Neighbours {
    /// The checkpoint tensors (names without the `answer.` prefix).
    pub fn to_tensors(&self) -> BTreeMap<String, Tensor> {
        let n = self.features.len() as i64;
        let d = self.features.first().map_or(0, Vec::len) as i64;
        let flat: Vec<f32> = self.features.iter().flatten().copied().collect();
        let clusters: Vec<f32> = self.clusters.iter().map(|&c| c as f32).collect();
        let mut t = BTreeMap::from([
            (FEATURES.to_string(), Tensor::from_slice(&flat).view([n, d])),
            (CLUSTERS.to_string(), Tensor::from_slice(&clusters)),
        ]);
        if let Some(c) = &self.center {
            t.insert(CENTER.to_string(), Tensor::from_slice(c));
        }
        t
    }

    /// Reads them back; `None` when the checkpoint stores none, an input error naming `origin`
    /// when they are inconsistent.
    pub fn from_tensors(t: &BTreeMap<String, Tensor>, origin: &Path) -> Result<Option<Self>> {
        let (Some(f), Some(c)) = (t.get(FEATURES), t.get(CLUSTERS)) else {
            return match t.is_empty() {
                true => Ok(None),
                false => Err(Error::input(
                    origin,
                    "the checkpoint's stored answer is incomplete; was the file edited?",
                )),
            };
        };
        let (n, d) = match f.size()[..] {
            [n, d] if n > 0 && c.size() == [n] => (n as usize, d as usize),
            _ => {
                return Err(Error::input(
                    origin,
                    format!(
                    "the checkpoint's stored answer has shapes {:?} and {:?}; was the file edited?",
                    f.size(),
                    c.size()
                ),
                ))
            }
        };
        let mut flat = vec![0f32; n * d];
        f.to_kind(Kind::Float).f_copy_data(&mut flat, n * d)?;
        let mut cl = vec![0f32; n];
        c.to_kind(Kind::Float).f_copy_data(&mut cl, n)?;
        if cl.iter().any(|&v| v < 0.0 || v.fract() != 0.0) {
            return Err(Error::input(
                origin,
                "the checkpoint's stored image clusters are not cluster numbers",
            ));
        }
        // A checkpoint made before `inference.spectral_center` has no mean: its features were
        // not centred.
        let center = match t.get(CENTER) {
            None => None,
            Some(m) if m.size() == [d as i64] => {
                let mut v = vec![0f32; d];
                m.to_kind(Kind::Float).f_copy_data(&mut v, d)?;
                Some(v)
            }
            Some(m) => {
                let shape = m.size();
                let what = format!("the checkpoint's stored mean has shape {shape:?}, not [{d}]");
                return Err(Error::input(
                    origin,
                    format!("{what}; was the file edited?"),
                ));
            }
        };
        Ok(Some(Self {
            features: flat.chunks(d.max(1)).map(<[f32]>::to_vec).collect(),
            clusters: cl.iter().map(|&v| v as usize).collect(),
            center,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClusterCount;

    fn preds(tokens: &[[f32; 2]], heads: &[usize], k: usize) -> Predictions {
        Predictions::with_tokens(tokens, heads, k)
    }

    /// One graph of 4 neighbours, the features as they are (the settings until 2026-12-07).
    fn plain() -> Inference {
        Inference {
            spectral_neighbors: 4,
            ..Inference::default()
        }
    }

    /// Graphs of 2, 4 and 8 neighbours, on the centred features.
    fn centred_graphs() -> Inference {
        Inference {
            spectral_scales: vec![0.5, 1.0, 2.0],
            spectral_center: true,
            ..plain()
        }
    }

    /// Two tight groups of directions, six images each, around 10° and 80°.
    fn two_groups() -> Vec<[f32; 2]> {
        (0..12)
            .map(|i| {
                let deg = if i < 6 { 10.0 } else { 80.0 } + (i % 6) as f32;
                let r = deg.to_radians();
                [r.cos(), r.sin()]
            })
            .collect()
    }

    /// Three tight groups of directions, four images each, around 5°, 45° and 85°.
    fn three_groups() -> Vec<[f32; 2]> {
        (0..12)
            .map(|i| {
                let r = (5.0 + 40.0 * (i / 4) as f32 + (i % 4) as f32).to_radians();
                [r.cos(), r.sin()]
            })
            .collect()
    }

    #[test]
    fn another_number_of_clusters_splits_the_graph_again() {
        let t = three_groups();
        // Heads trained with K = 2: the first group on head 0, the other two on head 1.
        let heads = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1];
        let three = Inference {
            num_clusters: Some(ClusterCount::Fixed(3)),
            ..plain()
        };
        let mut p = preds(&t, &heads, 2);
        let stored = assign(&mut p, &three, 0, None, KRead::default()).unwrap().0;
        assert_eq!(p.num_clusters, 3);
        let got: Vec<usize> = p.images.iter().map(|i| i.cluster).collect();
        for g in got.chunks(4) {
            assert!(g.iter().all(|&c| c == g[0]), "{got:?}");
        }
        let firsts = [got[0], got[4], got[8]];
        assert!(firsts[0] != firsts[1] && firsts[1] != firsts[2] && firsts[0] != firsts[2]);
        // Head 0 pairs with the first group's cluster (0.9 for its images); head 1's images went
        // to two clusters, four each, so it pairs with the lower number, and the images of the
        // other cluster have no paired head left (0.0).
        assert_eq!(p.images[0].confidence, 0.9);
        let head1 = got[4].min(got[8]);
        for img in &p.images[4..] {
            let want = if img.cluster == head1 { 0.9 } else { 0.0 };
            assert_eq!(img.confidence, want, "{:?}", img.cluster);
        }
        assert_eq!(stored.clusters, got);
        // `test` reproduces it with the same setting; without it the stored clusters exceed the
        // heads' K, which is an error, not a silent answer.
        let mut q = preds(&t, &heads, 2);
        assign_stored(&mut q, &stored, Some(3)).unwrap();
        assert_eq!(q.images.iter().map(|i| i.cluster).collect::<Vec<_>>(), got);
        assert_eq!(q.num_clusters, 3);
        let mut r = preds(&t, &heads, 2);
        let e = assign_stored(&mut r, &stored, None).unwrap_err();
        assert!(e.to_string().contains("stores cluster 2 of 2"), "{e}");
        // Fewer clusters than heads: two near groups (10°–15° under heads 0 and 1) merge, and
        // each head pairs with its images' cluster.
        let two = Inference {
            num_clusters: Some(ClusterCount::Fixed(2)),
            ..plain()
        };
        let near: Vec<[f32; 2]> = two_groups()[..6].iter().chain(&t[8..]).copied().collect();
        let mut p = preds(&near, &[0, 0, 0, 1, 1, 1, 2, 2, 2, 2], 3);
        assign(&mut p, &two, 0, None, KRead::default()).unwrap();
        assert_eq!(p.num_clusters, 2);
        let got: Vec<usize> = p.images.iter().map(|i| i.cluster).collect();
        assert!(got[..6].iter().all(|&c| c == got[0]) && got[6..].iter().all(|&c| c != got[0]));
        for img in &p.images {
            // Two heads pair with the merged cluster: 0.9 + 0.05; one with the other: 0.9.
            assert!(
                [0.9, 0.95]
                    .iter()
                    .any(|c| (img.confidence - c).abs() < 1e-12),
                "{img:?}"
            );
        }
    }

    #[test]
    fn the_graph_decides_and_clusters_keep_the_heads_numbers() {
        let t = two_groups();
        // The heads number the groups 1 and 0 and put image 3 with the second group.
        let heads = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0];
        let mut p = preds(&t, &heads, 2);
        let stored = assign(&mut p, &plain(), 0, None, KRead::default())
            .unwrap()
            .0;
        let got: Vec<usize> = p.images.iter().map(|i| i.cluster).collect();
        assert_eq!(got, [1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0]);
        // The moved image's confidence is its merged probability of its new cluster; the crop
        // rows keep the heads' answer.
        assert_eq!(p.images[3].confidence, 0.05);
        assert_eq!(p.images[0].confidence, 0.9);
        assert_eq!(p.crops[3].cluster, 0);
        assert_eq!(stored.clusters, got);
        // The stored neighbours reproduce the answer on the same images, through the
        // checkpoint's tensors.
        let back = Neighbours::from_tensors(&stored.to_tensors(), Path::new("ck")).unwrap();
        assert_eq!(back.as_ref(), Some(&stored));
        let mut q = preds(&t, &heads, 2);
        assign_stored(&mut q, &back.unwrap(), None).unwrap();
        assert_eq!(q.images, p.images);
    }

    #[test]
    fn pooled_features_join_the_graph_and_the_stored_answer_stays_trained() {
        let t = two_groups();
        let heads = [0; 12];
        let mut alone = preds(&t, &heads, 2);
        assign(&mut alone, &plain(), 0, None, KRead::default()).unwrap();
        // The same features as the pooled view: the summed graph is the graph doubled, whose
        // normalised affinity (and so the answer) is the same.
        let flat: Vec<f32> = t.iter().flatten().copied().collect();
        let same = ndarray::Array2::from_shape_vec((12, 2), flat).unwrap();
        let mut both = preds(&t, &heads, 2);
        let stored = assign(&mut both, &plain(), 0, Some(same.view()), KRead::default())
            .unwrap()
            .0;
        assert_eq!(both.images, alone.images);
        assert_eq!(
            stored.features[0].len(),
            2,
            "the trained features are stored"
        );
        // One row short is an error, not a panic.
        let mut p = preds(&t, &heads, 2);
        let short = same.slice(ndarray::s![..11, ..]);
        let e = assign(&mut p, &plain(), 0, Some(short), KRead::default()).unwrap_err();
        assert!(
            e.to_string().contains("11 pooled features for 12 images"),
            "{e}"
        );
    }

    #[test]
    fn centred_features_are_stored_with_their_mean_and_new_images_follow_it() {
        let t = two_groups();
        let mut p = preds(&t, &[0; 12], 2);
        let stored = assign(&mut p, &centred_graphs(), 0, None, KRead::default())
            .unwrap()
            .0;
        let mean = stored.center.clone().expect("the mean is stored");
        let raw = image_features(&p).unwrap();
        for (j, m) in mean.iter().enumerate() {
            let want = raw.iter().map(|f| f[j]).sum::<f32>() / 12.0;
            assert!((m - want).abs() < 1e-6, "{m} against {want}");
        }
        // Each stored feature is its image's, less the mean, at unit length.
        for (s, r) in stored.features.iter().zip(&raw) {
            let d: Vec<f32> = r.iter().zip(&mean).map(|(a, b)| a - b).collect();
            let norm = d.iter().map(|v| v * v).sum::<f32>().sqrt();
            for (a, b) in s.iter().zip(&d) {
                assert!((a - b / norm).abs() < 1e-5, "{s:?} against {d:?}");
            }
        }
        // The two groups are still found, and the answer comes back through the tensors.
        let got: Vec<usize> = p.images.iter().map(|i| i.cluster).collect();
        assert!(got[..6].iter().all(|&c| c == got[0]) && got[6..].iter().all(|&c| c != got[0]));
        let back = Neighbours::from_tensors(&stored.to_tensors(), Path::new("ck"))
            .unwrap()
            .unwrap();
        assert_eq!(back, stored);
        let mut q = preds(&t, &[0; 12], 2);
        assign_stored(&mut q, &back, None).unwrap();
        assert_eq!(q.images, p.images);
        // A new image near the second group, centred by the stored mean, joins it.
        let r = 79f32.to_radians();
        let mut one = preds(&[[r.cos(), r.sin()]], &[got[0]], 2);
        assign_stored(&mut one, &back, None).unwrap();
        assert_eq!(one.images[0].cluster, got[11]);
        // A stored mean of another length is an input error, as is one whose shape was edited.
        let mut short = back.clone();
        short.center = Some(vec![0.0; 3]);
        assert!(assign_stored(&mut one, &short, None).is_err());
        let mut t2 = stored.to_tensors();
        t2.insert(CENTER.into(), Tensor::from_slice(&[0f32; 3]));
        let e = Neighbours::from_tensors(&t2, Path::new("ck")).unwrap_err();
        assert!(e.to_string().contains("stored mean"), "{e}");
        // A checkpoint made before the key stores no mean: its features were not centred.
        let mut t3 = stored.to_tensors();
        t3.remove(CENTER);
        assert_eq!(
            Neighbours::from_tensors(&t3, Path::new("ck"))
                .unwrap()
                .unwrap()
                .center,
            None
        );
    }

    #[test]
    fn a_new_image_takes_its_nearest_stored_images_cluster() {
        let t = two_groups();
        let mut p = preds(&t, &[0; 12], 2);
        let stored = assign(&mut p, &plain(), 0, None, KRead::default())
            .unwrap()
            .0;
        let second = stored.clusters[11];
        let r = 79f32.to_radians();
        let mut q = preds(&[[r.cos(), r.sin()]], &[1 - second], 2);
        assign_stored(&mut q, &stored, None).unwrap();
        assert_eq!(q.images[0].cluster, second);
    }

    #[test]
    fn bad_stored_answers_are_errors_not_panics() {
        let mut p = preds(&two_groups(), &[0; 12], 2);
        let origin = Path::new("ck");
        assert_eq!(
            Neighbours::from_tensors(&BTreeMap::new(), origin).unwrap(),
            None
        );
        let good = assign(&mut p, &plain(), 0, None, KRead::default())
            .unwrap()
            .0;
        let mut t = good.to_tensors();
        t.remove(CLUSTERS);
        assert!(Neighbours::from_tensors(&t, origin).is_err());
        let mut t = good.to_tensors();
        t.insert(CLUSTERS.into(), Tensor::from_slice(&[0.5f32; 12]));
        assert!(Neighbours::from_tensors(&t, origin).is_err());
        let mut t = good.to_tensors();
        t.insert(CLUSTERS.into(), Tensor::from_slice(&[0f32; 3]));
        assert!(Neighbours::from_tensors(&t, origin).is_err());
        let wrong_dim = Neighbours {
            features: vec![vec![1.0; 3]],
            clusters: vec![0],
            center: None,
        };
        assert!(assign_stored(&mut p, &wrong_dim, None).is_err());
        let wrong_cluster = Neighbours {
            features: vec![vec![1.0, 0.0]],
            clusters: vec![2],
            center: None,
        };
        assert!(assign_stored(&mut p, &wrong_cluster, None).is_err());
        p.class_tokens.clear();
        assert!(assign(&mut p, &plain(), 0, None, KRead::default()).is_err());
    }
}
