//! A trained model restored from a checkpoint, and evaluation of it on a folder of novel crops:
//! what `test` and `predict` share.

use std::path::Path;
use std::sync::Arc;

use tch::Device;

use super::predict::{crop_logits, predict, Predictions};
use super::spectral::Neighbours;
use crate::checkpoint::{
    self, load_model_state, refresh_frozen_copies, CheckpointMeta, CHECKPOINT_FILE,
};
use crate::config::ImageAssign;
use crate::data::dataset::load_novel;
use crate::data::{CropSet, EvalLoader, NovelSource, TransformSpec};
use crate::error::{Error, Result};
use crate::model::Model;

pub struct Trained {
    pub meta: CheckpointMeta,
    pub model: Model,
    /// The training images' features and clusters (`inference.assign: spectral`).
    pub neighbours: Option<Neighbours>,
}

/// Loads `checkpoint.safetensors` (or the folder holding it) onto `device`.
pub fn load(path: &Path, device: Device) -> Result<Trained> {
    let file = if path.is_dir() {
        path.join(CHECKPOINT_FILE)
    } else {
        path.to_path_buf()
    };
    if !file.is_file() {
        return Err(Error::input(
            &file,
            "checkpoint not found; give the checkpoint.safetensors written by `anomalyncd train`",
        ));
    }
    let ck = checkpoint::load(&file)?;
    let neighbours = Neighbours::from_tensors(&ck.answer, &file)?;
    let meta = ck.meta;
    if meta.config.inference.assign == ImageAssign::Spectral && neighbours.is_none() {
        return Err(Error::input(
            &file,
            "the checkpoint was evaluated with inference.assign: spectral but stores no image \
             features; evaluate it again (`train --resume`) or was the file edited?",
        ));
    }
    let num_classes = meta.base_classes.len() + meta.num_novel_clusters;
    // All weights come from the checkpoint: build the architecture without pretrained weights.
    let mut model = Model::new(&meta.config, num_classes, None, device)?;
    load_model_state(&mut model, &ck.model, &file)?;
    refresh_frozen_copies(&mut model, &meta.config, device);
    Ok(Trained {
        meta,
        model,
        neighbours,
    })
}

/// The novel crops of a binarize output (`crops/`, `scores.json`), labelled by their type
/// folders when there are any, as a crop set with the checkpoint's classes.
pub fn novel_set(meta: &CheckpointMeta, binarize_out: &Path) -> Result<CropSet> {
    let nb = meta.base_classes.len();
    let src =
        NovelSource::from_binarize_out(binarize_out).with_guidance(meta.config.models.guidance);
    let (novel_types, items) = load_novel(&src, nb)?;
    Ok(CropSet {
        items,
        base_classes: meta.base_classes.clone(),
        novel_types,
        num_novel_clusters: meta.num_novel_clusters,
    })
}

/// Runs the chosen head over every crop of `set` and merges per image; a refined checkpoint
/// then assigns the images to its stored centroids, a spectral one to its stored images'
/// clusters.
pub fn run(t: &Trained, set: Arc<CropSet>, device: Device) -> Result<Predictions> {
    let cfg = &t.meta.config;
    let spec = TransformSpec::new(cfg.models.image_size as u32);
    let idx: Vec<usize> = (0..set.len()).collect();
    let eval = EvalLoader::new(
        set.clone(),
        idx,
        spec,
        cfg.training.batch_size,
        cfg.training.num_workers,
        None,
    )?;
    let outputs = crop_logits(&t.model, &eval, device)?;
    let mut preds = predict(&set, &outputs, t.meta.chosen_head, t.meta.merge_temperature)?;
    if let Some(n) = &t.neighbours {
        // The K the answer was made with: read after training (`auto`), or the setting's.
        let k = t.meta.answer_k.as_ref().map(|a| a.chosen);
        let k = k.or(cfg.inference.num_clusters.and_then(|n| n.fixed()));
        super::spectral::assign_stored(&mut preds, n, k)?;
    } else if !t.meta.image_centroids.is_empty() {
        super::refine::assign_stored(&mut preds, &t.meta.image_centroids)?;
    }
    Ok(preds)
}
