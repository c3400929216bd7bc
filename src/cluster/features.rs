//! The pretrained backbone's mask-guided class tokens of crops (no projector, no training):
//! what the number of defect types is estimated from and what the k-means baseline clusters.

use std::sync::Arc;

use ndarray::{Array2, ArrayView2};
use tch::{Device, Kind};

use crate::config::Config;
use crate::data::{CropSet, EvalLoader, TransformSpec};
use crate::error::{Error, Result};
use crate::model::{Model, PrefixTokens};

/// Class tokens `[n, D]` of `set.items[indices]` with the test transform, L2-normalised so that
/// Euclidean k-means compares directions (cosine), as DINO features are compared. With `bank`
/// (a token cache of `set`), only the blocks after the cached prefix run, on the crops' cached
/// plain views; without it, the whole backbone runs on freshly decoded crops.
pub fn class_tokens(
    model: &Model,
    set: Arc<CropSet>,
    indices: Vec<usize>,
    cfg: &Config,
    bank: Option<&dyn PrefixTokens>,
    device: Device,
) -> Result<Array2<f32>> {
    let n = indices.len();
    let pb = crate::logging::progress(n as u64, "class tokens");
    let mut rows = TokenRows::new(model.backbone.embed_dim());
    match bank {
        Some(bank) => {
            for chunk in indices.chunks(cfg.training.batch_size.max(1)) {
                let (tokens, hidden) = bank.plain(chunk, device)?;
                let cls = tch::no_grad(|| {
                    model
                        .backbone
                        .forward_from_guide(&tokens, &hidden, bank.block())
                })?;
                rows.push(&cls)?;
                pb.inc(chunk.len() as u64);
                crate::threads::tick();
            }
        }
        None => {
            let spec = TransformSpec::new(cfg.models.image_size as u32);
            let eval = EvalLoader::new(
                set,
                indices,
                spec,
                cfg.training.batch_size,
                cfg.training.num_workers,
                None,
            )?;
            for batch in eval.iter() {
                let batch = batch?;
                let cls = tch::no_grad(|| {
                    model.backbone.forward(
                        &batch.images.to_device(device),
                        &batch.masks.to_device(device),
                    )
                })?;
                rows.push(&cls)?;
                pb.inc(batch.ids.len() as u64);
                crate::threads::tick();
            }
        }
    }
    pb.finish_and_clear();
    rows.finish()
}

/// Normalised class-token rows gathered batch by batch.
struct TokenRows {
    out: Vec<f32>,
    dim: usize,
}

impl TokenRows {
    fn new(dim: usize) -> Self {
        Self {
            out: Vec::new(),
            dim,
        }
    }

    /// Appends the normalised rows of `cls [B, D]`, copied once from the backbone's output.
    fn push(&mut self, cls: &tch::Tensor) -> Result<()> {
        let cls = cls.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
        let (b, d) = match cls.size()[..] {
            [b, d] => (b as usize, d as usize),
            _ => return Err(Error::runtime("unexpected class-token shape")),
        };
        let flat = Vec::<f32>::try_from(cls.view(-1))?;
        self.dim = d;
        for row in flat.chunks(d).take(b) {
            normalise_into(row, &mut self.out);
        }
        Ok(())
    }

    fn finish(self) -> Result<Array2<f32>> {
        let rows = self.out.len().checked_div(self.dim).unwrap_or(0);
        Array2::from_shape_vec((rows, self.dim), self.out)
            .map_err(|e| Error::runtime(format!("class tokens: {e}")))
    }
}

/// Appends `v` / |v| (or `v` when it is zero) to `out`.
pub(crate) fn normalise_into(v: &[f32], out: &mut Vec<f32>) {
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
