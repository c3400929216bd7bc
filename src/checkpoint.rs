//! Checkpoints: `checkpoint.safetensors` holds the model (`model.*`), the optimiser's momentum
//! buffers (`optim.*`) and, in its safetensors metadata, the whole [`CheckpointMeta`] as JSON —
//! so the one file, replaced atomically, is the commit point and can never be seen half-written.
//! `checkpoint.json` beside it is a readable copy of the metadata.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::fsutil::atomic_write;
use crate::model::Model;

/// The checkpoint's file name in a run folder (`checkpoint.json` is written beside it).
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
pub const FORMAT_VERSION: u32 = 1;
/// Most classes (base + novel clusters) a checkpoint may declare: the model is built from that
/// number before any tensor is compared, so an edited file must not make it allocate without end.
pub const MAX_CLASSES: usize = 10_000;
const META_KEY: &str = "anomalyncd";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    pub epoch: usize,
    pub mean_loss: f64,
    /// Mean cluster loss of each head over the epoch (the lowest picks the prediction head).
    pub head_cluster_losses: Vec<f64>,
    pub lr: f64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckpointMeta {
    pub format_version: u32,
    pub anomalyncd_version: String,
    pub libtorch_version: String,
    pub config: Config,
    pub category: String,
    pub base_classes: Vec<String>,
    /// Novel type folder names when known (for evaluation); empty for unlabelled data.
    pub novel_classes: Vec<String>,
    pub num_novel_clusters: usize,
    /// Epochs completed.
    pub epoch: usize,
    pub chosen_head: usize,
    pub backbone: String,
    pub mask_layers: usize,
    /// Where the crop anomaly scores came from (the binarize output's scores.json).
    #[serde(with = "crate::fsutil::serde_opt_path")]
    pub anomaly_scores: Option<PathBuf>,
    /// MEBin threshold search range of the training set (raw map scale), for `predict`.
    pub search_range: Option<(f64, f64)>,
    /// The float range the training maps were normalised over, when they were float maps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub float_scale: Option<crate::imageio::FloatScale>,
    /// Region-merging temperature used at image level.
    pub merge_temperature: f64,
    pub history: Vec<EpochRecord>,
    /// How `--num-classes auto` chose `num_novel_clusters` (absent when it was given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_classes_estimate: Option<crate::cluster::KEstimate>,
    /// The novel class each cluster matched in the training run's evaluation (image level; ""
    /// for an unmatched cluster); empty when the training images had no labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_classes: Vec<String>,
    /// With `inference.refine_steps`: each novel cluster's centroid of the image features
    /// ([`crate::infer::refine`]; an empty row for a cluster without images), which `test` and
    /// `predict` assign images to; empty without refinement.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_centroids: Vec<Vec<f32>>,
    /// How the answer's K was read after training (`inference.num_clusters: auto`), which
    /// `test` and `predict` keep; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_k: Option<crate::infer::answer_k::AnswerK>,
}

pub struct Checkpoint {
    pub meta: CheckpointMeta,
    pub model: BTreeMap<String, Tensor>,
    pub optim: BTreeMap<String, Tensor>,
    /// What reproduces the image clusters beyond the meta (`answer.` tensors): the training
    /// images' features and clusters under `inference.assign: spectral`
    /// ([`crate::infer::spectral::Neighbours`]); empty otherwise.
    pub answer: BTreeMap<String, Tensor>,
}

fn tensor_bytes(t: &Tensor) -> Result<(Vec<u8>, Vec<usize>)> {
    let t = t
        .to_device(tch::Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous();
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let n = t.numel();
    let mut v = vec![0f32; n];
    t.f_copy_data(&mut v, n)?;
    Ok((v.iter().flat_map(|x| x.to_le_bytes()).collect(), shape))
}

/// Writes `path` (the .safetensors) atomically, then the readable `.json` copy beside it.
pub fn save(path: &Path, ckpt: &Checkpoint) -> Result<()> {
    let mut named: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
    for (prefix, map) in [
        ("model.", &ckpt.model),
        ("optim.", &ckpt.optim),
        ("answer.", &ckpt.answer),
    ] {
        for (k, t) in map {
            let (b, s) = tensor_bytes(t)?;
            named.push((format!("{prefix}{k}"), b, s));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = named
        .iter()
        .map(|(k, b, s)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map_err(|e| Error::runtime(format!("checkpoint tensor {k}: {e}")))?;
            Ok((k.clone(), v))
        })
        .collect::<Result<_>>()?;
    let meta_json = serde_json::to_string(&ckpt.meta).expect("meta serialises");
    let md: HashMap<String, String> = [(META_KEY.to_string(), meta_json)].into();
    let bytes = safetensors::serialize(views, &Some(md)).map_err(|e| {
        Error::runtime(format!(
            "{}: cannot serialise checkpoint: {e}",
            path.display()
        ))
    })?;
    atomic_write(path, &bytes)?;
    let pretty = serde_json::to_vec_pretty(&ckpt.meta).expect("meta serialises");
    atomic_write(&path.with_extension("json"), &pretty)
}

/// Reads a checkpoint; any problem is an input error naming the file.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let bad = |m: String| Error::input(path, m);
    let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read checkpoint: {e}")))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
        bad(format!("not a complete anomalyncd checkpoint ({e}); was it truncated or written by another tool?"))
    })?;
    let meta_json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .ok_or_else(|| {
            bad("no anomalyncd metadata: not a checkpoint written by `anomalyncd train`".into())
        })?;
    let meta: CheckpointMeta = serde_json::from_str(meta_json)
        .map_err(|e| bad(format!("unreadable checkpoint metadata: {e}")))?;
    if meta.format_version != FORMAT_VERSION {
        return Err(bad(format!(
            "checkpoint format {} is not supported by this version (expects {FORMAT_VERSION})",
            meta.format_version
        )));
    }
    // The model is rebuilt from this metadata: refuse values that would build a wrong one.
    meta.config
        .validate()
        .map_err(|m| bad(format!("checkpoint metadata holds an invalid config: {m}")))?;
    if meta.num_novel_clusters == 0
        || meta.base_classes.len() + meta.num_novel_clusters > MAX_CLASSES
        || meta.chosen_head >= meta.config.models.n_head
        || !(meta.merge_temperature.is_finite() && meta.merge_temperature > 0.0)
    {
        return Err(bad(format!(
            "inconsistent checkpoint metadata ({} base classes, {} novel clusters, head {} of {}, \
             merge temperature {}); was the file edited?",
            meta.base_classes.len(),
            meta.num_novel_clusters,
            meta.chosen_head,
            meta.config.models.n_head,
            meta.merge_temperature
        )));
    }
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("corrupt checkpoint tensors: {e}")))?;
    let mut model = BTreeMap::new();
    let mut optim = BTreeMap::new();
    let mut answer = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(bad(format!(
                "tensor {name} has dtype {:?}, expected F32",
                view.dtype()
            )));
        }
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, Kind::Float)?;
        if t.isfinite().logical_not().any().int64_value(&[]) != 0 {
            return Err(bad(format!("tensor {name} holds NaN or Inf values")));
        }
        if let Some(k) = name.strip_prefix("model.") {
            model.insert(k.to_string(), t);
        } else if let Some(k) = name.strip_prefix("optim.") {
            optim.insert(k.to_string(), t);
        } else if let Some(k) = name.strip_prefix("answer.") {
            answer.insert(k.to_string(), t);
        } else {
            return Err(bad(format!("unexpected tensor {name}")));
        }
    }
    Ok(Checkpoint {
        meta,
        model,
        optim,
        answer,
    })
}

/// Copies checkpoint tensors into the model; every variable must be present with its shape.
pub fn load_model_state(
    model: &mut Model,
    state: &BTreeMap<String, Tensor>,
    origin: &std::path::Path,
) -> Result<()> {
    let vars = model.vs.variables();
    for (name, var) in &vars {
        let src = state.get(name).ok_or_else(|| {
            Error::input(origin, format!("checkpoint lacks tensor {name}: it was written for another model configuration"))
        })?;
        if src.size() != var.size() {
            return Err(Error::input(
                origin,
                format!(
                    "checkpoint tensor {name} has shape {:?}, the model needs {:?}: it was written for another architecture or class count",
                    src.size(),
                    var.size()
                ),
            ));
        }
        tch::no_grad(|| var.shallow_clone().copy_(&src.to_device(var.device())));
    }
    if let Some(extra) = state.keys().find(|k| !vars.contains_key(*k)) {
        return Err(Error::input(
            origin,
            format!(
                "checkpoint has tensor {extra} that this model does not: another configuration"
            ),
        ));
    }
    Ok(())
}

/// Remakes the low-precision copies of the frozen prefix from the (just loaded) f32 weights.
pub fn refresh_frozen_copies(model: &mut Model, cfg: &Config, device: Device) {
    let kind = crate::model::precision::frozen_kind(cfg.models.precision, device);
    model
        .backbone
        .set_frozen_kind(kind, cfg.models.grad_from_block);
}
