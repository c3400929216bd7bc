//! `baseline`: k-means (k-means++ seeding, 10 restarts) on the pretrained backbone's
//! mask-guided class tokens of the novel crops, with region merging and no training. It shows
//! what training adds, and groups defects quickly when there is no base set.

use std::path::PathBuf;
use std::sync::Arc;

use tch::Device;

use super::CropInput;
use crate::cluster::{estimate_k, fit, KEstimate, KMeansOptions, NumClasses};
use crate::config::Config;
use crate::data::{dataset::load_novel, CropSet, NovelSource};
use crate::error::{Error, Result};
use crate::infer::merge::default_merge_temperature;
use crate::infer::predict::predict_assigned;
use crate::mebin::RangeSource;
use crate::model::{resolve_backbone_weights, Model};

/// A validated `baseline` request.
#[derive(Debug, Clone)]
pub struct BaselineSpec {
    pub config: Config,
    pub crops: CropInput,
    /// Labelled base crops: only the K estimate's base check uses them.
    pub base: Option<PathBuf>,
    pub num_classes: NumClasses,
    /// Largest K that [`NumClasses::Auto`] considers.
    pub max_classes: usize,
    /// Backbone weights overriding `models.backbone_weights`.
    pub weights: Option<PathBuf>,
    /// Output folder: predictions, metrics, report, `class_tokens.safetensors`.
    pub out: PathBuf,
    /// The name in `metrics.csv`.
    pub category: String,
    /// The input folders with their flags, for the output-folder checks.
    pub inputs: Vec<(&'static str, PathBuf)>,
    /// What the output folder's fingerprint records as the method.
    pub method: String,
    pub overwrite: bool,
    pub device: Device,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BaselineOutcome {
    pub k: usize,
    /// The estimate when K was estimated.
    pub estimate: Option<KEstimate>,
    pub images: usize,
    /// Image-level (NMI, ARI, F1) when the crops have labels.
    pub scores: Option<(f64, f64, f64)>,
}

/// The `baseline` stage.
pub fn run(spec: &BaselineSpec) -> Result<BaselineOutcome> {
    let cfg = &spec.config;
    let inputs: Vec<(&str, &std::path::Path)> =
        spec.inputs.iter().map(|(f, p)| (*f, p.as_path())).collect();
    let fingerprint = serde_json::json!({
        "baseline": spec.method,
        "inputs": inputs.iter().map(|(_, p)| crate::fsutil::absolute_value(p)).collect::<Vec<_>>(),
    });
    crate::fsutil::prepare_output_dir(
        &spec.out,
        &inputs,
        "baseline",
        &fingerprint,
        spec.overwrite,
    )?;
    super::add_log_file(&spec.out)?;

    let range = || {
        Ok(RangeSource::FromMaps {
            min_threshold: cfg.binarization.min_threshold,
        })
    };
    let data = spec
        .crops
        .resolve(&spec.out, &cfg.binarization, range, spec.overwrite)?;
    let novel = NovelSource::from_binarize_out(&data).with_guidance(cfg.models.guidance);
    let k = fixed_k(spec, &novel)?;
    // The set is built with the K it will be clustered into; with `auto`, the K estimate only
    // needs the crops, and the model's head size (base + 1 here) does not touch the tokens.
    let probe_k = k.unwrap_or(1);
    let set = Arc::new(CropSet::load(spec.base.as_deref(), &novel, Some(probe_k))?);
    if set.novel_indices().is_empty() {
        return Err(Error::input(&novel.images, "no novel crops to cluster"));
    }
    if spec.num_classes == NumClasses::Auto && spec.base.is_none() {
        log::info!("--num-classes auto without --base-data-path: scored by the silhouette alone");
    }

    let weights = resolve_backbone_weights(&cfg.models, spec.weights.as_deref())?;
    tch::manual_seed(cfg.experiment.seed as i64);
    let model = Model::new(cfg, set.num_classes(), weights.as_deref(), spec.device)?;
    let (k, tokens, estimate) = match k {
        Some(k) => {
            let t = crate::cluster::set_tokens(&model, &set, cfg, None, spec.device, false)?;
            (k, t, None)
        }
        None => {
            let (est, t) = estimate_k(&model, &set, cfg, spec.max_classes, None, spec.device)?;
            (est.chosen, t, Some(est))
        }
    };
    let fitted = fit(
        tokens.novel.view(),
        &vec![None; tokens.novel.nrows()],
        KMeansOptions::new(k, cfg.experiment.seed),
    )?;
    let temperature = cfg
        .inference
        .merge_temperature
        .unwrap_or(default_merge_temperature(false));
    let preds = predict_assigned(&set, &tokens.novel_items, &fitted.assign, k, temperature)?;
    crate::cluster::features::save_tokens(
        &spec.out.join("class_tokens.safetensors"),
        tokens.novel.view(),
    )?;
    if let Some(est) = &estimate {
        let text = serde_json::to_string_pretty(est)
            .map_err(|e| Error::runtime(format!("serialising the K estimate: {e}")))?;
        crate::fsutil::atomic_write(&spec.out.join("k_estimate.json"), text.as_bytes())?;
    }
    let scores = crate::report::write(&crate::report::RunOutputs {
        out: &spec.out,
        table: &spec.out.join("metrics.csv"),
        category: &spec.category,
        set: &set,
        preds: &preds,
        head: 0,
        binarize_out: &data,
        trained_names: &[],
    })?;
    Ok(BaselineOutcome {
        k,
        estimate,
        images: preds.images.len(),
        scores,
    })
}

/// The K given or implied by the type folders; `None` when it is to be estimated.
fn fixed_k(spec: &BaselineSpec, novel: &NovelSource) -> Result<Option<usize>> {
    Ok(match spec.num_classes {
        NumClasses::Fixed(k) => Some(k),
        NumClasses::Auto => None,
        NumClasses::FromFolders => {
            let (types, _) = load_novel(novel, 0)?;
            if types.is_empty() {
                return Err(Error::usage(format!(
                    "{}: the crops have no type folders, so the number of clusters is unknown; give --num-classes N or auto",
                    novel.images.display()
                )));
            }
            Some(types.len())
        }
    })
}
