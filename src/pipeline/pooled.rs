//! `baseline --method pooled`: training-free defect types from the detector backbone's patch
//! features pooled under each image's anomaly map ([`crate::detect::pooled`]), clustered with
//! k-means. It works for any map source (the built-in detector's, the user's, oracle maps): the
//! features are computed here with the detector's backbone (DINOv2 ViT-S/14, blocks 6, 9, 12), at
//! the input side the caller resolves with the detector's rule (`detect.image_size`).

use std::path::PathBuf;

use serde::Serialize;
use serde_json::json;
use tch::Device;

use crate::cluster::{estimate, fit, KEstimate, KMeansOptions, NumClasses};
use crate::config::{KCriterion, Precision};
use crate::detect::features::{FeatureExtractor, Resize};
use crate::detect::pooled::{pooled_features, Pooling};
use crate::error::{Error, Result};
use crate::fingerprint::AbsPath;
use crate::mebin::{folders::pair_folders, MapItem, Pairing};
use crate::metrics::Scores;

/// The output folder's features (one f32 row per image; the file the detector writes beside its
/// maps, in the same format) and its image list (`image` column, the rows' order);
/// `training.neighbor_features` reads both.
pub const POOLED_FEATURES: &str = crate::detect::pooled::DETECT_FEATURES_FILE;
pub const POOLED_IMAGES: &str = "predictions.csv";

/// A validated `baseline --method pooled` request.
#[derive(Debug, Clone)]
pub struct PooledSpec {
    /// `<type>/<stem>` images (types score the result) or a flat folder.
    pub images: PathBuf,
    /// Their anomaly maps, paired by type and stem.
    pub maps: PathBuf,
    pub out: PathBuf,
    pub num_classes: NumClasses,
    pub max_classes: usize,
    /// How `auto` reads K (`training.k_criterion`).
    pub k_criterion: KCriterion,
    pub pooling: Pooling,
    /// DINOv2 ViT-S/14 weights; `None`: the offline default file.
    pub weights: Option<PathBuf>,
    pub precision: Precision,
    /// The backbone input's longer side (the detector's).
    pub image_size: u32,
    pub seed: u64,
    /// The input folders with their flags, for the output-folder checks.
    pub inputs: Vec<(&'static str, PathBuf)>,
    pub overwrite: bool,
    pub device: Device,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PooledOutcome {
    pub k: usize,
    pub estimate: Option<KEstimate>,
    pub images: usize,
    /// Image-level scores when the images have type folders.
    pub scores: Option<Scores>,
}

/// The offline DINOv2 ViT-S/14 weights the pooled features need; `fix` says in the error how
/// else to give them.
pub(crate) fn default_dinov2_weights(fix: &str) -> Result<PathBuf> {
    let file = crate::detect::features::default_weights_file(crate::detect::features::DINOV2);
    crate::model::find_in_weights_dir(&file).ok_or_else(|| {
        Error::usage(format!(
            "the pooled features need {}/{file}: run scripts/prepare_weights.sh, or {fix}",
            crate::model::DEFAULT_WEIGHTS_DIR
        ))
    })
}

/// One L2-normalised pooled feature per map item, in order: the detector backbone (DINOv2
/// ViT-S/14, its blocks) with `weights` at input side `image_size`, its patches weighted by the
/// item's map.
pub(crate) fn image_features(
    items: &[MapItem],
    weights: &std::path::Path,
    precision: Precision,
    image_size: u32,
    pooling: Pooling,
    device: Device,
) -> Result<ndarray::Array2<f32>> {
    let fx = FeatureExtractor::vit(
        crate::detect::features::dinov2_arch(),
        &crate::detect::DEFAULT_BLOCKS,
        Some(weights),
        crate::model::precision::frozen_kind(precision, device),
        device,
    )?;
    let pairs: Vec<(&std::path::Path, &std::path::Path)> = items
        .iter()
        .map(|it| (it.image.as_path(), it.map.as_path()))
        .collect();
    pooled_features(&fx, &pairs, image_size, Resize::Aspect, pooling)
}

/// The fingerprint of a `baseline --method pooled` output folder.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PooledFingerprint {
    /// `pooled`.
    pub baseline: &'static str,
    /// [`Pooling`]'s `Debug` text, the form the markers have held.
    pub pooling: String,
    /// The images and the maps.
    pub inputs: Vec<AbsPath>,
    pub num_classes: String,
    pub max_classes: usize,
    /// None: the offline default file.
    pub weights: Option<AbsPath>,
    /// The kind the backbone runs in: `precision` resolved for the device.
    pub precision: String,
    pub image_size: u32,
    pub seed: u64,
}

impl PooledSpec {
    /// The fingerprint of this run's output folder (see [`PooledFingerprint`]).
    pub fn fingerprint(&self) -> PooledFingerprint {
        // Exhaustive on purpose: each field is either recorded or has a reason not to be.
        let PooledSpec {
            pooling,
            inputs,
            num_classes,
            max_classes,
            k_criterion,
            weights,
            precision,
            image_size,
            seed,
            device,
            // Their folders are among `inputs`.
            images: _,
            maps: _,
            // Where the outputs go, and whether an earlier run's may be replaced.
            out: _,
            overwrite: _,
        } = self;
        let kind = crate::model::precision::frozen_kind(*precision, *device);
        PooledFingerprint {
            baseline: "pooled",
            pooling: format!("{pooling:?}"),
            inputs: inputs.iter().map(|(_, p)| AbsPath::new(p)).collect(),
            num_classes: num_classes.recorded(*k_criterion),
            max_classes: *max_classes,
            weights: weights.as_deref().map(AbsPath::new),
            precision: crate::model::precision::kind_name(kind),
            image_size: *image_size,
            seed: *seed,
        }
    }
}

/// The stage (see the module doc).
pub fn run(spec: &PooledSpec) -> Result<PooledOutcome> {
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
    let items: Vec<_> = pair_folders(&spec.maps, &spec.images, &Pairing::default())?
        .into_iter()
        .filter(|it| !it.normal)
        .collect();
    let weights = match &spec.weights {
        Some(w) => w.clone(),
        None => default_dinov2_weights("give --backbone-weights")?,
    };
    let features = image_features(
        &items,
        &weights,
        spec.precision,
        spec.image_size,
        spec.pooling,
        spec.device,
    )?;
    let mut types: Vec<String> = items.iter().map(|it| it.class_name.clone()).collect();
    types.sort();
    types.dedup();
    let typed = !types.iter().any(|t| t.is_empty());
    let (k, est) = match spec.num_classes {
        NumClasses::Fixed(k) => (k, None),
        NumClasses::FromFolders if typed => (types.len(), None),
        NumClasses::FromFolders => {
            return Err(Error::usage(
                "the images have no type folders: give --num-classes N or auto",
            ))
        }
        NumClasses::Auto => {
            let none = ndarray::Array2::<f32>::zeros((0, features.ncols()));
            let e = estimate(
                features.view(),
                none.view(),
                &[],
                spec.max_classes,
                spec.k_criterion,
                spec.seed,
            )?;
            log::info!("--num-classes auto on the pooled features:\n{}", e.table());
            (e.chosen, Some(e))
        }
    };
    if k == 0 || k > items.len() {
        return Err(Error::usage(format!(
            "--num-classes {k}: between 1 and the number of images ({})",
            items.len()
        )));
    }
    let fitted = fit(
        features.view(),
        &vec![None; items.len()],
        KMeansOptions::new(k, spec.seed),
    )?;
    let truth: Option<Vec<usize>> = typed.then(|| {
        items
            .iter()
            .map(|it| types.iter().position(|t| *t == it.class_name).unwrap_or(0))
            .collect()
    });
    let scores = match &truth {
        Some(t) => {
            let e = crate::metrics::evaluate(t, &fitted.assign, &vec![false; t.len()])?;
            Some(e.scores())
        }
        None => None,
    };
    let mut csv = String::from("image,type,cluster\n");
    for (it, c) in items.iter().zip(&fitted.assign) {
        csv.push_str(&format!(
            "{}/{},{},{c}\n",
            it.class_name, it.stem, it.class_name
        ));
    }
    crate::fsutil::atomic_write(&spec.out.join(POOLED_IMAGES), csv.as_bytes())?;
    let metrics = json!({
        "method": "pooled", "pooling": format!("{:?}", spec.pooling), "k": k,
        "images": items.len(), "estimate": est,
        "image_level": scores.map(|s| json!({"NMI": s.nmi, "ARI": s.ari, "F1": s.f1})),
    });
    let text = serde_json::to_vec_pretty(&metrics).expect("metrics serialise");
    crate::fsutil::atomic_write(&spec.out.join("metrics.json"), &text)?;
    crate::cluster::features::save_tokens(&spec.out.join(POOLED_FEATURES), features.view())?;
    if let Some(Scores { nmi, ari, f1 }) = scores {
        log::info!(
            "pooled ({:?}, K = {k}): NMI {nmi:.4} ARI {ari:.4} F1 {f1:.4}",
            spec.pooling
        );
    }
    Ok(PooledOutcome {
        k,
        estimate: est,
        images: items.len(),
        scores,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::check::{fingerprint_follows, Change};

    fn spec() -> PooledSpec {
        PooledSpec {
            images: "/d/images".into(),
            maps: "/d/maps".into(),
            out: "/d/out".into(),
            num_classes: NumClasses::FromFolders,
            max_classes: 10,
            k_criterion: KCriterion::default(),
            pooling: Pooling::Soft { tau: 1.0 },
            weights: None,
            precision: Precision::Fp32,
            image_size: 448,
            seed: 0,
            inputs: vec![
                ("--images", "/d/images".into()),
                ("--anomaly-maps", "/d/maps".into()),
            ],
            overwrite: false,
            device: Device::Cpu,
        }
    }

    #[test]
    fn the_fingerprint_follows_every_setting() {
        let changes: &[Change<PooledSpec>] = &[
            ("pooling", |s| s.pooling = Pooling::TopK { fraction: 0.1 }),
            ("inputs", |s| s.inputs[0].1 = "/d/other".into()),
            ("num_classes", |s| s.num_classes = NumClasses::Auto),
            ("max_classes", |s| s.max_classes = 4),
            ("weights", |s| s.weights = Some("/w.safetensors".into())),
            ("precision", |s| s.precision = Precision::Bf16),
            ("image_size", |s| s.image_size = 224),
            ("seed", |s| s.seed = 1),
        ];
        let same: &[Change<PooledSpec>] = &[
            ("out", |s| s.out = "/elsewhere".into()),
            ("overwrite", |s| s.overwrite = true),
        ];
        // `baseline` names the method: it tells this run from a k-means one.
        fingerprint_follows(spec, PooledSpec::fingerprint, changes, same, &["baseline"]);
    }

    #[test]
    fn the_k_criterion_counts_only_where_k_is_estimated() {
        let fp = |k, c| {
            let s = PooledSpec {
                num_classes: k,
                k_criterion: c,
                ..spec()
            };
            crate::fingerprint::to_value(&s.fingerprint())
        };
        let (one, scales) = (KCriterion::Eigengap, KCriterion::EigengapScales);
        assert_ne!(fp(NumClasses::Auto, one), fp(NumClasses::Auto, scales));
        assert_eq!(
            fp(NumClasses::Auto, one)["num_classes"],
            "Auto",
            "the earlier form"
        );
        assert_eq!(
            fp(NumClasses::Fixed(3), one),
            fp(NumClasses::Fixed(3), scales)
        );
    }
}
