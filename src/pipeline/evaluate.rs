//! `test` and `predict`: a trained checkpoint on crops. `test` evaluates it on a crop folder (by
//! default the crops of its training run); `predict` binarizes new maps with the checkpoint's
//! stored search range, so a single image works, and names the clusters by the classes they
//! matched in training.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tch::Device;

use super::{add_log_file, CropInput};
use crate::checkpoint::CheckpointMeta;
use crate::error::{Error, Result};
use crate::infer::trained;
use crate::mebin::{BinarizeSpec, Pairing, RangeSource, SearchRange};
use crate::metrics::Scores;

/// A validated `test` request.
#[derive(Debug, Clone)]
pub struct TestSpec {
    /// `checkpoint.safetensors` or its run folder.
    pub checkpoint: PathBuf,
    /// The crops; `None`: the crops of the checkpoint's training run.
    pub crops: Option<CropInput>,
    /// The output folder: `None` writes into the checkpoint's folder.
    pub out: Option<PathBuf>,
    /// The input folders with their flags, for the output-folder checks.
    pub inputs: Vec<(&'static str, PathBuf)>,
    pub overwrite: bool,
    pub device: Device,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TestOutcome {
    pub category: String,
    pub out: PathBuf,
    /// Image-level scores when the crops have labels.
    pub scores: Option<Scores>,
}

/// The `test` stage.
pub fn test(spec: &TestSpec) -> Result<TestOutcome> {
    let t = trained::load(&spec.checkpoint, spec.device)?;
    let ckpt_dir = if spec.checkpoint.is_dir() {
        spec.checkpoint.clone()
    } else {
        spec.checkpoint
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default()
    };
    let out = match &spec.out {
        // A folder of the user's: only a new, empty or earlier `test` folder of ours is written.
        Some(o) => {
            let fingerprint =
                serde_json::json!({"checkpoint": crate::fsutil::absolute_value(&spec.checkpoint)});
            let inputs: Vec<(&str, &Path)> =
                spec.inputs.iter().map(|(f, p)| (*f, p.as_path())).collect();
            crate::fsutil::prepare_output_dir(o, &inputs, "test", &fingerprint, spec.overwrite)?;
            o.clone()
        }
        None => ckpt_dir,
    };
    add_log_file(&out)?;
    let cfg = &t.meta.config;
    let range = || {
        Ok(RangeSource::Fixed(
            stored_range(&t.meta)?,
            t.meta.float_scale,
        ))
    };
    let data = match &spec.crops {
        Some(c) => c.resolve(&out, &cfg.binarization, range, spec.overwrite)?,
        None => t
            .meta
            .anomaly_scores
            .as_ref()
            .and_then(|p| p.parent().map(PathBuf::from))
            .ok_or_else(|| {
                Error::usage("give --data (a binarize output) or --anomaly-maps and --images")
            })?,
    };
    let set = Arc::new(trained::novel_set(&t.meta, &data)?);
    log::info!(
        "evaluating {} crops of {} with head {}",
        set.len(),
        data.display(),
        t.meta.chosen_head
    );
    let preds = trained::run(&t, set.clone(), spec.device)?;
    let scores = crate::report::write(&crate::report::RunOutputs {
        out: &out,
        table: &out.join("metrics.csv"),
        category: &t.meta.category,
        set: &set,
        preds: &preds,
        head: t.meta.chosen_head,
        binarize_out: &data,
        trained_names: &[],
    })?;
    Ok(TestOutcome {
        category: t.meta.category.clone(),
        out,
        scores,
    })
}

/// A validated `predict` request.
#[derive(Debug, Clone)]
pub struct PredictSpec {
    pub checkpoint: PathBuf,
    /// New images: a flat folder or `<type>/` folders.
    pub images: PathBuf,
    /// Their anomaly maps, same layout and stems.
    pub maps: PathBuf,
    pub out: PathBuf,
    pub pairing: Pairing,
    pub overwrite: bool,
    pub device: Device,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PredictOutcome {
    pub images: usize,
    /// Images per cluster.
    pub cluster_sizes: Vec<usize>,
    pub predictions: PathBuf,
}

/// The `predict` stage.
pub fn predict(spec: &PredictSpec) -> Result<PredictOutcome> {
    let t = trained::load(&spec.checkpoint, spec.device)?;
    let range = stored_range(&t.meta)?;
    let fingerprint =
        serde_json::json!({"checkpoint": crate::fsutil::absolute_value(&spec.checkpoint)});
    crate::fsutil::prepare_output_dir(
        &spec.out,
        &[("--images", &spec.images), ("--anomaly-maps", &spec.maps)],
        "predict",
        &fingerprint,
        spec.overwrite,
    )?;
    add_log_file(&spec.out)?;
    let bin = spec.out.join("binarize");
    crate::mebin::run(&BinarizeSpec {
        maps: spec.maps.clone(),
        images: spec.images.clone(),
        out: bin.clone(),
        binarization: t.meta.config.binarization.clone(),
        range: RangeSource::Fixed(range, t.meta.float_scale),
        pairing: spec.pairing.clone(),
        overwrite: spec.overwrite,
    })?;
    let set = Arc::new(trained::novel_set(&t.meta, &bin)?);
    let preds = trained::run(&t, set.clone(), spec.device)?;
    crate::report::write(&crate::report::RunOutputs {
        out: &spec.out,
        table: &spec.out.join("metrics.csv"),
        category: &t.meta.category,
        set: &set,
        preds: &preds,
        head: t.meta.chosen_head,
        binarize_out: &bin,
        trained_names: &t.meta.cluster_classes,
    })?;
    let mut sizes = preds.cluster_sizes();
    sizes.resize(t.meta.num_novel_clusters, 0);
    Ok(PredictOutcome {
        images: preds.images.len(),
        cluster_sizes: sizes,
        predictions: spec.out.join("predictions.csv"),
    })
}

/// The MEBin search range the checkpoint was trained with.
pub fn stored_range(meta: &CheckpointMeta) -> Result<SearchRange> {
    let (lo, hi) = meta.search_range.ok_or_else(|| {
        Error::usage("the checkpoint stores no MEBin search range (trained with --skip-binarize on old crops)")
    })?;
    SearchRange::new(lo, hi)
}
