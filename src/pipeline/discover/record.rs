//! What makes `discover --resume` skip a stage: each stage folder gets a `stage.json` with the
//! fingerprint of the stage's inputs (absolute paths of the inputs, paths inside the run folder
//! relative to it, listing digests of the input folders, settings, and the digests of the
//! stages it reads). A stage whose `stage.json` says finished with the same digest is not run
//! again; anything else is redone. The maps stage records the detector job's whole
//! [`DetectSettings`], its resolved precision and the digest of the detector's code among them,
//! so no other detector's maps are ever reused.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::plan::{BaseInput, Inputs, Plan, StageKind, BASE_MAX_CROPS, NORMAL_TYPE};
use super::plan::{SYNTH_BASE_PER_CLASS, SYNTH_BASE_SEED, SYNTH_BASE_SIZE};
use super::stages::detect_spec;
use super::DiscoverSpec;
use crate::cluster::NumClasses;
use crate::config::{Binarization, Config, KCriterion, NeighbourFeatures};
use crate::detect::DetectSettings;
use crate::error::Result;
use crate::fingerprint::AbsPath;
use crate::fsutil::atomic_write;
use crate::imageio::TypedFile;
use crate::model::precision::{frozen_kind, kind_name};

/// The record's file name in each stage folder.
pub const STAGE_FILE: &str = "stage.json";
/// Bumped when a stage's outputs change meaning in a way its settings do not show (the
/// detector's code is in the maps stage's settings), so older records are redone.
const VERSION: u32 = 1;

/// `stage.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub stage: String,
    /// FNV-1a of `fingerprint`.
    pub digest: String,
    pub fingerprint: Value,
    /// False while the stage runs (only `train` writes a record before it ends: its checkpoint
    /// can be resumed).
    pub finished: bool,
    pub seconds: f64,
    /// What the stage reported (counts; for `train` its outcome).
    #[serde(default)]
    pub summary: Value,
}

impl StageRecord {
    /// The record of the planned stage `ps`, finished or not, with what it reported.
    pub fn of(ps: &super::PlannedStage, finished: bool, seconds: f64, summary: Value) -> Self {
        StageRecord {
            stage: ps.stage.name.into(),
            digest: ps.digest.clone(),
            fingerprint: ps.fingerprint.clone(),
            finished,
            seconds,
            summary,
        }
    }
}

/// The record in `dir`; None when there is none, or when it does not read (logged: the stage
/// then runs again).
pub fn read(dir: &Path) -> Option<StageRecord> {
    let path = dir.join(STAGE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            log::warn!(
                "{}: cannot read ({e}); the stage runs again",
                path.display()
            );
            return None;
        }
    };
    match serde_json::from_str(&text) {
        Ok(r) => Some(r),
        Err(e) => {
            log::warn!(
                "{}: not a stage record ({e}); the stage runs again",
                path.display()
            );
            None
        }
    }
}

pub fn write(dir: &Path, rec: &StageRecord) -> Result<()> {
    let body = serde_json::to_vec_pretty(rec).expect("a stage record serialises");
    atomic_write(&dir.join(STAGE_FILE), &body)
}

pub use crate::digest::fnv;

/// Digest of a listing: each file's path, size and modification time, so a changed, added or
/// removed file changes it (nothing is read).
pub fn listing_digest(files: &[TypedFile]) -> String {
    let mut text = String::new();
    for f in files {
        let meta = std::fs::metadata(&f.path).ok();
        let size = meta.as_ref().map_or(0, |m| m.len());
        let mtime = meta
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        text.push_str(&format!("{}\t{size}\t{mtime}\n", f.path.display()));
    }
    fnv(text.as_bytes())
}

/// What a stage's fingerprint records besides its name: per kind of stage, everything its
/// outputs depend on (input folders by path and listing digest, settings, the digests of the
/// stages it reads).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum StageSettings {
    SynthBase {
        synth: SynthBaseSettings,
        max_crops: usize,
    },
    CropBase {
        images: AbsPath,
        masks: AbsPath,
        listing: String,
        max_crops: usize,
    },
    Maps(MapsSettings),
    Binarize(BinarizeSettings),
    Train(Box<TrainSettings>),
}

/// The built-in synthetic base set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SynthBaseSettings {
    pub seed: u64,
    pub per_base_class: usize,
    pub size: u32,
}

/// The maps stage: the detector's input folders (paths and listing digests) and everything else
/// its maps depend on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MapsSettings {
    pub train: Option<AbsPath>,
    pub train_listing: String,
    pub images: AbsPath,
    pub images_listing: String,
    pub detector: DetectSettings,
}

/// The binarize stage: the maps (given, or the maps stage's), the images, MEBin's settings and
/// the outputs' layout.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BinarizeSettings {
    pub maps: AbsPath,
    pub maps_listing: String,
    pub maps_stage: Option<String>,
    pub images: AbsPath,
    pub images_listing: String,
    pub binarization: Binarization,
    pub layout: u32,
}

/// The config as the train stage's fingerprint holds it: [`Config::fingerprint`] without the
/// `inference` section, which changes only the evaluation at the stage's end. `discover
/// --resume` after a change there evaluates the checkpoint again instead of retraining it (the
/// stage's summary records the settings it was evaluated with, [`super::Found::inference`]).
pub fn training_config(config: &Config) -> Config {
    let mut c = config.fingerprint();
    c.inference = Default::default();
    c
}

/// The digest of a `baseline --method pooled` folder's features and image list.
fn features_digest(dir: &std::path::Path) -> String {
    let mut d = crate::digest::Fnv::default();
    for name in crate::pipeline::NEIGHBOUR_FEATURES_FILES {
        match std::fs::read(dir.join(name)) {
            Ok(bytes) => d.update(&bytes),
            Err(_) => return "missing".into(),
        };
    }
    d.hex()
}

/// The train stage: the config, K, the backbone and the base and crop sets it reads.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainSettings {
    /// [`training_config`].
    pub config: Config,
    pub num_classes: String,
    pub max_classes: usize,
    /// The resolved backbone weights' absolute path, or `random`.
    pub weights: String,
    /// The kind the frozen blocks run in: `models.precision` resolved for the device.
    pub precision: String,
    pub base: Option<AbsPath>,
    pub base_listing: Option<String>,
    pub base_stage: Option<String>,
    pub binarize_stage: Option<String>,
    /// The digest of `training.neighbor_features`' two files (their bytes; `missing` when
    /// unreadable, which the stage then reports), so new features there retrain; left out
    /// without them, so earlier fingerprints keep their form.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub neighbor_features: Option<String>,
    /// How `--num-classes auto` reads K, the default resolved; left out with a given K, where
    /// nothing reads it, so that those runs' earlier fingerprints keep their form.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k_criterion: Option<KCriterion>,
    /// With `--num-classes auto` and `inference.num_clusters: auto`: training has
    /// `max_classes` novel heads and the answer's K is read after it; left out otherwise, so
    /// that earlier fingerprints keep their form.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub k_read_after_training: bool,
}

/// A stage's fingerprint: its name, the records' [`VERSION`] and its settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageFingerprint {
    pub stage: &'static str,
    pub version: u32,
    pub settings: StageSettings,
}

impl StageFingerprint {
    /// The fingerprint as `stage.json` holds it, and its digest.
    pub fn stamp(&self) -> (Value, String) {
        let fp = crate::fingerprint::to_value(self);
        let digest = fnv(fp.to_string().as_bytes());
        (fp, digest)
    }
}

/// The fingerprint of each stage of `plan`, in order. `model_weights` names the resolved
/// backbone weights; `detector_weights` is the detector's resolved weights file (None: random).
pub fn fingerprints(
    spec: &DiscoverSpec,
    inputs: &Inputs,
    plan: &Plan,
    model_weights: &str,
    detector_weights: Option<&Path>,
) -> Vec<StageFingerprint> {
    let mut done: Vec<(&str, String)> = Vec::new();
    let upstream = |done: &[(&str, String)], name: &str| -> Option<String> {
        done.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, d)| d.clone())
    };
    let d = &inputs.digests;
    let mut out = Vec::new();
    for st in &plan.stages {
        let settings = match &st.kind {
            StageKind::SynthBase => StageSettings::SynthBase {
                synth: SynthBaseSettings {
                    seed: SYNTH_BASE_SEED,
                    per_base_class: SYNTH_BASE_PER_CLASS,
                    size: SYNTH_BASE_SIZE,
                },
                max_crops: BASE_MAX_CROPS,
            },
            StageKind::CropBase { images, masks } => StageSettings::CropBase {
                images: AbsPath::new(images),
                masks: AbsPath::new(masks),
                listing: d.base.clone(),
                max_crops: BASE_MAX_CROPS,
            },
            StageKind::Detect {
                train,
                write_good_maps,
                image_size,
            } => {
                let from_good = train.as_ref() == Some(&spec.images.join(NORMAL_TYPE));
                let job = detect_spec(
                    spec,
                    detector_weights.map(Path::to_path_buf),
                    &st.dir,
                    train,
                    *write_good_maps,
                    *image_size,
                );
                StageSettings::Maps(MapsSettings {
                    train: job.train.as_deref().map(AbsPath::new),
                    train_listing: if from_good { &d.images } else { &d.normal }.clone(),
                    images: AbsPath::new(&job.test),
                    images_listing: d.images.clone(),
                    detector: job.settings(),
                })
            }
            StageKind::Binarize { maps } => StageSettings::Binarize(BinarizeSettings {
                maps: AbsPath::in_run(maps, &spec.out),
                maps_listing: d.maps.clone(),
                maps_stage: upstream(&done, "maps"),
                images: AbsPath::new(&spec.images),
                images_listing: d.images.clone(),
                binarization: spec.config.binarization.clone(),
                layout: crate::mebin::job::OUTPUT_LAYOUT,
            }),
            StageKind::Train => {
                let precision = frozen_kind(spec.config.models.precision, spec.device);
                StageSettings::Train(Box::new(TrainSettings {
                    config: training_config(&spec.config),
                    k_criterion: matches!(spec.num_classes, NumClasses::Auto)
                        .then(|| spec.config.training.k_criterion()),
                    k_read_after_training: matches!(spec.num_classes, NumClasses::Auto)
                        && spec.config.inference.reads_k(),
                    num_classes: format!("{:?}", spec.num_classes),
                    max_classes: spec.max_classes,
                    weights: model_weights.to_string(),
                    precision: kind_name(precision),
                    base: plan.base.as_deref().map(|b| AbsPath::in_run(b, &spec.out)),
                    base_listing: match inputs.base {
                        BaseInput::Cropped { .. } => Some(d.base.clone()),
                        _ => None,
                    },
                    base_stage: upstream(&done, "base"),
                    binarize_stage: upstream(&done, "binarize"),
                    neighbor_features: match &spec.config.training.neighbor_features {
                        Some(NeighbourFeatures::Folder(dir)) => Some(features_digest(dir)),
                        // Computed from the maps and images the stage's other fields hold.
                        Some(NeighbourFeatures::Pooled) | None => None,
                    },
                }))
            }
        };
        let fp = StageFingerprint {
            stage: st.name,
            version: VERSION,
            settings,
        };
        done.push((st.name, fp.stamp().1));
        out.push(fp);
    }
    out
}

#[cfg(test)]
#[path = "record_tests.rs"]
mod tests;
