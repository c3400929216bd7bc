//! Inference on the test crops: per-crop (sub-image) predictions and their merging into one
//! prediction per image ([`merge`]), the images' clusters as `inference.assign` says ([`answer`]),
//! then scoring with [`crate::metrics`].

pub mod answer_k;
pub mod merge;
pub mod outputs;
pub mod predict;
pub mod refine;
pub mod spectral;
pub mod trained;

use ndarray::ArrayView2;

use crate::config::{ImageAssign, Inference};
use crate::error::Result;
use predict::Predictions;

/// What the checkpoint stores so that `test` and `predict` reproduce the image clusters: the
/// refined clusters' centroids ([`refine`]) or the training images' features and clusters
/// ([`spectral`]); neither for the heads' answer as it is.
#[derive(Debug, Default)]
pub struct StoredAnswer {
    pub centroids: Vec<Vec<f32>>,
    pub neighbours: Option<spectral::Neighbours>,
    /// How the answer's K was read (`inference.num_clusters: auto`).
    pub k_read: Option<answer_k::AnswerK>,
}

/// Puts the images of `preds` (the heads' region-merged answer) into clusters as `inference`
/// says; `seed` seeds spectral clustering's k-means. `pooled`: the images' pooled detector
/// features, one row per image of `preds` in its order, which join the spectral graph; the
/// caller reads them only when [`Inference::reads_pooled`]. `read`: how
/// `inference.num_clusters: auto` reads K ([`answer_k`]).
pub fn answer(
    preds: &mut Predictions,
    inference: &Inference,
    seed: u64,
    pooled: Option<ArrayView2<f32>>,
    read: answer_k::KRead,
) -> Result<StoredAnswer> {
    Ok(match inference.assign {
        ImageAssign::Heads => StoredAnswer {
            centroids: refine::refine(preds, inference.refine_steps)?,
            ..StoredAnswer::default()
        },
        ImageAssign::Spectral => {
            let (neighbours, k_read) = spectral::assign(preds, inference, seed, pooled, read)?;
            StoredAnswer {
                centroids: Vec::new(),
                neighbours: Some(neighbours),
                k_read,
            }
        }
    })
}

/// The head used at test time: the one with the smallest mean cluster loss over the last
/// training epoch. Among equal losses the last head wins, as in the reference's region merging.
/// `None` for no heads or when every loss is NaN.
pub fn best_head(cluster_losses: &[f64]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, &l) in cluster_losses.iter().enumerate() {
        if l.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, b)| l <= b) {
            best = Some((i, l));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_head_is_the_last_smallest_loss() {
        assert_eq!(best_head(&[0.5, 0.2, 0.3]), Some(1));
        assert_eq!(best_head(&[0.2, 0.4, 0.2]), Some(2));
        assert_eq!(best_head(&[f64::NAN, 1.0]), Some(1));
        assert_eq!(best_head(&[]), None);
        assert_eq!(best_head(&[f64::NAN]), None);
    }
}
