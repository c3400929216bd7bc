//! The pretrained backbone's mask-guided class tokens of crops (no projector, no training):
//! what the number of defect types is estimated from and what the k-means baseline clusters.

use std::sync::Arc;

use ndarray::{Array2, ArrayView2};
use tch::{Device, Kind};

use crate::config::Config;
use crate::data::{CropSet, EvalLoader, TransformSpec};
use crate::error::{Error, Result};
use crate::model::Model;

/// Class tokens `[n, D]` of `set.items[indices]` with the test transform, L2-normalised so that
/// Euclidean k-means compares directions (cosine), as DINO features are compared. The rows are
/// copied once from the backbone's output into the matrix.
pub fn class_tokens(
    model: &Model,
    set: Arc<CropSet>,
    indices: Vec<usize>,
    cfg: &Config,
    device: Device,
) -> Result<Array2<f32>> {
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
    let mut out: Vec<f32> = Vec::new();
    let mut dim = model.backbone.embed_dim();
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
        dim = d;
        for row in flat.chunks(d).take(b) {
            normalise_into(row, &mut out);
        }
        pb.inc(b as u64);
        crate::threads::tick();
    }
    pb.finish_and_clear();
    let rows = out.len().checked_div(dim).unwrap_or(0);
    Array2::from_shape_vec((rows, dim), out)
        .map_err(|e| Error::runtime(format!("class tokens: {e}")))
}

/// Appends `v` / |v| (or `v` when it is zero) to `out`.
fn normalise_into(v: &[f32], out: &mut Vec<f32>) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        out.extend(v.iter().map(|x| x / norm));
    } else {
        out.extend_from_slice(v);
    }
}

/// Writes `tokens` as one f32 tensor `class_tokens` `[n, D]` in a safetensors file,
/// atomically, for the user's own analysis (rows in the order of `crop_predictions.csv`).
pub fn save_tokens(path: &std::path::Path, tokens: ArrayView2<f32>) -> Result<()> {
    let bytes: Vec<u8> = tokens.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(
        safetensors::Dtype::F32,
        vec![tokens.nrows(), tokens.ncols()],
        &bytes,
    )
    .map_err(|e| Error::runtime(format!("class tokens: {e}")))?;
    let out = safetensors::serialize(vec![("class_tokens".to_string(), view)], &None)
        .map_err(|e| Error::runtime(format!("class tokens: {e}")))?;
    crate::fsutil::atomic_write(path, &out)
}
