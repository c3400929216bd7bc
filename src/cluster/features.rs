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

/// Reads back a file of one f32 matrix as [`save_tokens`] writes it (any tensor name): the
/// rows, checked finite. A missing file, another layout or a non-finite value is an input
/// error naming the file.
pub fn load_tokens(path: &std::path::Path) -> Result<Array2<f32>> {
    let bad = |what: String| Error::input(path, what);
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
    let names = st.names();
    let [name] = names.as_slice() else {
        return Err(bad(format!("{} tensors, expected one", names.len())));
    };
    let view = st.tensor(name).map_err(|e| bad(e.to_string()))?;
    let shape = view.shape().to_vec();
    if view.dtype() != safetensors::Dtype::F32 || shape.len() != 2 || shape[1] == 0 {
        return Err(bad(format!(
            "expected one f32 matrix, got {:?} {shape:?}",
            view.dtype()
        )));
    }
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if values.iter().any(|v| !v.is_finite()) {
        return Err(bad("a value is not finite".into()));
    }
    Array2::from_shape_vec((shape[0], shape[1]), values).map_err(|e| bad(e.to_string()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_tokens_load_back_and_bad_files_are_input_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.safetensors");
        let t = ndarray::array![[1.0f32, -2.0, 0.5], [3.0, 0.0, 4.0]];
        save_tokens(&p, t.view()).unwrap();
        assert_eq!(load_tokens(&p).unwrap(), t);
        let nan = ndarray::array![[f32::NAN, 1.0]];
        save_tokens(&p, nan.view()).unwrap();
        let e = load_tokens(&p).unwrap_err();
        assert!(
            e.exit_code() == 2 && e.to_string().contains("not finite"),
            "{e}"
        );
        std::fs::write(&p, b"not a tensor file").unwrap();
        let e = load_tokens(&p).unwrap_err();
        assert!(
            e.exit_code() == 2 && e.to_string().contains("t.safetensors"),
            "{e}"
        );
        assert!(load_tokens(&d.path().join("absent")).is_err());
    }
}
