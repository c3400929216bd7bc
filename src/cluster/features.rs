//! The pretrained backbone's mask-guided class tokens of crops (no projector, no training):
//! what the number of defect types is estimated from and what the k-means baseline clusters.

use std::sync::Arc;

use tch::{Device, Kind};

use crate::config::Config;
use crate::data::{CropSet, EvalLoader, TransformSpec};
use crate::error::{Error, Result};
use crate::model::Model;

/// Class tokens `[n][D]` of `set.items[indices]` with the test transform, L2-normalised so that
/// Euclidean k-means compares directions (cosine), as DINO features are compared.
pub fn class_tokens(
    model: &Model,
    set: Arc<CropSet>,
    indices: Vec<usize>,
    cfg: &Config,
    device: Device,
) -> Result<Vec<Vec<f32>>> {
    let spec = TransformSpec::new(cfg.models.image_size as u32);
    let n = indices.len();
    let eval = EvalLoader::new(
        set,
        indices,
        spec,
        cfg.training.batch_size,
        cfg.training.num_workers,
        None,
    )?;
    let pb = crate::logging::progress(n as u64, "class tokens");
    let mut out = Vec::with_capacity(n);
    for batch in eval.iter() {
        let batch = batch?;
        let cls = tch::no_grad(|| {
            model.backbone.forward(
                &batch.images.to_device(device),
                &batch.masks.to_device(device),
            )
        })?;
        let cls = cls.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
        let (b, d) = match cls.size()[..] {
            [b, d] => (b as usize, d as usize),
            _ => return Err(Error::runtime("unexpected class-token shape")),
        };
        let flat = Vec::<f32>::try_from(cls.view(-1))?;
        for row in flat.chunks(d).take(b) {
            out.push(normalise(row));
        }
        pb.inc(b as u64);
    }
    pb.finish_and_clear();
    Ok(out)
}

fn normalise(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter().map(|x| x / norm).collect()
    } else {
        v.to_vec()
    }
}

/// Writes `tokens` (`[n][D]`) as one f32 tensor `class_tokens` `[n, D]` in a safetensors file,
/// atomically, for the user's own analysis (rows in the order of `crop_predictions.csv`).
pub fn save_tokens(path: &std::path::Path, tokens: &[Vec<f32>]) -> Result<()> {
    let d = tokens.first().map_or(0, |t| t.len());
    let bytes: Vec<u8> = tokens
        .iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let view = safetensors::tensor::TensorView::new(
        safetensors::Dtype::F32,
        vec![tokens.len(), d],
        &bytes,
    )
    .map_err(|e| Error::runtime(format!("class tokens: {e}")))?;
    let out = safetensors::serialize(vec![("class_tokens".to_string(), view)], &None)
        .map_err(|e| Error::runtime(format!("class tokens: {e}")))?;
    crate::fsutil::atomic_write(path, &out)
}
