//! `baseline`: k-means (k-means++ seeding, 10 restarts) on the pretrained backbone's
//! mask-guided class tokens of the novel crops, with region merging and no training. It shows
//! what training adds, and groups defects quickly when there is no base set.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use tch::Device;

use super::CropInput;
use crate::cluster::{estimate_k, fit, KEstimate, KMeansOptions, NumClasses};
use crate::config::Config;
use crate::data::{dataset::load_novel, CropSet, NovelSource};
use crate::error::{Error, Result};
use crate::fingerprint::AbsPath;
use crate::infer::merge::default_merge_temperature;
use crate::infer::predict::predict_assigned;
use crate::mebin::RangeSource;
use crate::metrics::Scores;
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
    /// Image-level scores when the crops have labels.
    pub scores: Option<Scores>,
}

/// The fingerprint of a `baseline` output folder: the method, the input folders and what
/// decides the clusters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BaselineFingerprint {
    /// The method.
    pub baseline: String,
    /// The input folders (the crops, or the maps and images; the base set).
    pub inputs: Vec<AbsPath>,
    /// The crops' `--normal-type` folders, when the maps are binarized here.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub normal_types: Vec<String>,
    /// [`Config::fingerprint`].
    pub config: Config,
    pub num_classes: String,
    pub max_classes: usize,
    pub weights: Option<AbsPath>,
    /// The name in `metrics.csv`.
    pub category: String,
    /// The kind the frozen backbone runs in: `models.precision` resolved for the device.
    pub precision: String,
}

impl BaselineSpec {
    /// The fingerprint of this run's output folder (see [`BaselineFingerprint`]).
    pub fn fingerprint(&self) -> BaselineFingerprint {
        // Exhaustive on purpose: each field is either recorded or has a reason not to be.
        let BaselineSpec {
            config,
            crops,
            inputs,
            num_classes,
            max_classes,
            weights,
            category,
            method,
            device,
            // Their folders are among `inputs`.
            base: _,
            // Where the outputs go, and whether an earlier run's may be replaced.
            out: _,
            overwrite: _,
        } = self;
        let normal_types = match crops {
            CropInput::Maps { pairing, .. } => pairing.normal_types.clone(),
            CropInput::Folder(_) => Vec::new(),
        };
        let kind = crate::model::precision::frozen_kind(config.models.precision, *device);
        BaselineFingerprint {
            baseline: method.clone(),
            inputs: inputs.iter().map(|(_, p)| AbsPath::new(p)).collect(),
            normal_types,
            config: config.fingerprint(),
            num_classes: num_classes.recorded(config.training.k_criterion()),
            max_classes: *max_classes,
            weights: weights.as_deref().map(AbsPath::new),
            category: category.clone(),
            precision: crate::model::precision::kind_name(kind),
        }
    }
}

/// The `baseline` stage.
pub fn run(spec: &BaselineSpec) -> Result<BaselineOutcome> {
    let cfg = &spec.config;
    let inputs: Vec<(&str, &std::path::Path)> =
        spec.inputs.iter().map(|(f, p)| (*f, p.as_path())).collect();
    let fingerprint = crate::fingerprint::to_value(&spec.fingerprint());
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
    let mut preds = predict_assigned(&set, &tokens.novel_items, &fitted.assign, k, temperature)?;
    // The clustered tokens, in crop order: the report writes them as `class_tokens.safetensors`.
    preds.class_tokens = tokens.novel.outer_iter().map(|r| r.to_vec()).collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Precision;
    use crate::fingerprint::check::{fingerprint_follows, Change};
    use crate::mebin::Pairing;

    fn spec() -> BaselineSpec {
        let mut config = Config::default();
        config.models.precision = Precision::Fp32;
        BaselineSpec {
            config,
            crops: CropInput::Maps {
                maps: "/d/maps".into(),
                images: "/d/images".into(),
                pairing: Pairing::default(),
            },
            base: None,
            num_classes: NumClasses::FromFolders,
            max_classes: 10,
            weights: None,
            out: "/d/out".into(),
            category: "d".into(),
            inputs: vec![
                ("--anomaly-maps", "/d/maps".into()),
                ("--images", "/d/images".into()),
            ],
            method: "Kmeans".into(),
            overwrite: false,
            device: Device::Cpu,
        }
    }

    #[test]
    fn the_fingerprint_follows_every_setting() {
        let changes: &[Change<BaselineSpec>] = &[
            ("method", |s| s.method = "Other".into()),
            ("inputs", |s| s.inputs[1].1 = "/d/other".into()),
            ("normal_types", |s| {
                if let CropInput::Maps { pairing, .. } = &mut s.crops {
                    pairing.normal_types = vec!["ok".into()];
                }
            }),
            ("config", |s| s.config.experiment.seed = 1),
            ("config", |s| s.config.models.mask_layers = 3),
            ("num_classes", |s| s.num_classes = NumClasses::Fixed(3)),
            ("max_classes", |s| s.max_classes = 4),
            ("weights", |s| s.weights = Some("/w.pth".into())),
            ("category", |s| s.category = "e".into()),
            ("precision", |s| s.config.models.precision = Precision::Bf16),
        ];
        let same: &[Change<BaselineSpec>] = &[
            ("out", |s| s.out = "/elsewhere".into()),
            ("overwrite", |s| s.overwrite = true),
            ("num_workers", |s| s.config.training.num_workers = 1),
            ("print_freq", |s| s.config.experiment.print_freq = 1),
        ];
        fingerprint_follows(spec, BaselineSpec::fingerprint, changes, same, &[]);
    }
}
