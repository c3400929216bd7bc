//! What makes `discover --resume` skip a stage: each stage folder gets a `stage.json` with the
//! fingerprint of the stage's inputs (absolute paths, listing digests of the input folders,
//! settings, and the digests of the stages it reads). A stage whose `stage.json` says finished
//! with the same digest is not run again; anything else is redone. The maps stage records the
//! detector job's whole [`DetectSettings`], its resolved precision and the digest of the
//! detector's code among them, so no other detector's maps are ever reused.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::plan::{BaseInput, Inputs, Plan, StageKind, BASE_MAX_CROPS, NORMAL_TYPE};
use super::plan::{SYNTH_BASE_PER_CLASS, SYNTH_BASE_SEED, SYNTH_BASE_SIZE};
use super::stages::detect_spec;
use super::DiscoverSpec;
use crate::config::{Binarization, Config};
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
                maps: AbsPath::new(maps),
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
                    num_classes: format!("{:?}", spec.num_classes),
                    max_classes: spec.max_classes,
                    weights: model_weights.to_string(),
                    precision: kind_name(precision),
                    base: plan.base.as_deref().map(AbsPath::new),
                    base_listing: match inputs.base {
                        BaseInput::Cropped { .. } => Some(d.base.clone()),
                        _ => None,
                    },
                    base_stage: upstream(&done, "base"),
                    binarize_stage: upstream(&done, "binarize"),
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
mod tests {
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    use serde_json::json;

    use super::*;
    use crate::cluster::NumClasses;
    use crate::config::{Config, Precision};
    use crate::detect::features::Resize;
    use crate::detect::DetectSpec;
    use crate::detect::DEFAULT_VIT_IMAGE_SIZE;
    use crate::fsutil::absolute_value;
    use crate::pipeline::discover::{plan, DetectorSettings, Digests};

    fn job() -> DetectSpec {
        DetectSpec {
            precision: Precision::Fp32,
            ..DetectSpec::with_defaults(
                Some("/data/good".into()),
                "/data/test".into(),
                "/runs/r/maps".into(),
                Some("/weights/dinov2.safetensors".into()),
                tch::Device::Cpu,
            )
        }
    }

    fn digest_of(job: &DetectSpec, detector: &DetectSettings) -> String {
        let settings = StageSettings::Maps(MapsSettings {
            train: job.train.as_deref().map(AbsPath::new),
            train_listing: "l1".into(),
            images: AbsPath::new(&job.test),
            images_listing: "l2".into(),
            detector: detector.clone(),
        });
        let fp = StageFingerprint {
            stage: "maps",
            version: VERSION,
            settings,
        };
        fp.stamp().1
    }

    type Change = (&'static str, fn(&mut DetectSpec));

    /// One change of each setting (and of each input folder) of the detector job.
    const CHANGES: &[Change] = &[
        ("backbone", |j| j.backbone = "efficientnet-lite0".into()),
        ("weights", |j| {
            j.weights = Some("/weights/other.safetensors".into())
        }),
        ("weights", |j| j.weights = None),
        ("image_size", |j| j.image_size = 224),
        ("resize", |j| j.resize = Resize::Square),
        ("stages", |j| j.stages = vec![1, 3]),
        ("blocks", |j| j.blocks = vec![12]),
        ("aggregate", |j| j.aggregate = Some(3)),
        ("precision", |j| j.precision = Precision::Bf16),
        ("coreset", |j| j.coreset = 0.25),
        ("max_patches", |j| j.max_patches = 5000),
        ("zero_shot", |j| j.zero_shot = true),
        ("zero_shot_refs", |j| j.zero_shot_refs = 8),
        ("zero_shot_fraction", |j| j.zero_shot_fraction = 0.5),
        ("seed", |j| j.seed = 7),
        ("write_good_maps", |j| j.write_good_maps = true),
        ("train", |j| j.train = Some("/data/normal".into())),
        ("test", |j| j.test = "/data/other".into()),
        ("per_block", |j| j.per_block = true),
        ("aggregate_sizes", |j| j.aggregate_sizes = vec![1, 3, 5]),
        ("fuse_mutual", |j| j.fuse_mutual = 0.5),
        ("holdout", |j| j.holdout = 0.1),
        ("blur", |j| j.blur = 2.0),
    ];

    #[test]
    fn every_detector_setting_and_its_code_change_the_maps_digest() {
        let base = job();
        let base_settings = serde_json::to_value(base.settings()).unwrap();
        let base_digest = digest_of(&base, &base.settings());
        assert_eq!(digest_of(&job(), &job().settings()), base_digest, "stable");
        let mut seen = vec![base_digest.clone()];
        let mut covered = BTreeSet::new();
        for (name, change) in CHANGES {
            let mut j = job();
            change(&mut j);
            let d = digest_of(&j, &j.settings());
            assert!(
                !seen.contains(&d),
                "changing {name} left the digest as before"
            );
            seen.push(d);
            let now = serde_json::to_value(j.settings()).unwrap();
            let moved = base_settings.as_object().unwrap().iter();
            covered.extend(
                moved
                    .filter(|(k, v)| now[k.as_str()] != **v)
                    .map(|(k, _)| k.clone()),
            );
        }
        // Another build of the detector's code.
        let mut other = base.settings();
        other.code = "0123456789abcdef".into();
        assert_ne!(digest_of(&base, &other), base_digest, "code");
        covered.insert("code".into());
        // A field added to the settings needs a change above.
        let all: BTreeSet<String> = base_settings.as_object().unwrap().keys().cloned().collect();
        assert_eq!(covered, all);
        // What only decides how the work is batched, or where it goes, keeps the maps.
        let mut j = job();
        (j.batch_size, j.overwrite, j.out) = (2, false, "/elsewhere".into());
        assert_eq!(digest_of(&j, &j.settings()), base_digest);
    }

    fn discover_spec() -> DiscoverSpec {
        DiscoverSpec {
            config: Config::default(),
            images: "/data/images".into(),
            out: "/runs/r".into(),
            normal: Some(PathBuf::from("/data/normal")),
            anomaly_maps: None,
            base: None,
            no_base: false,
            num_classes: NumClasses::Auto,
            max_classes: 10,
            detector: DetectorSettings::default(),
            resume: false,
            overwrite: false,
            stop_after_stage: None,
            stop_after_epochs: None,
            token_cache: crate::pipeline::TokenCache::InRunFolder,
            device: tch::Device::Cpu,
        }
    }

    fn run_fingerprints(spec: &DiscoverSpec, weights: Option<&Path>) -> Vec<(Value, String)> {
        let inputs = Inputs {
            images: 40,
            types: vec!["crack".into(), "hole".into()],
            good: 0,
            normal: 8,
            maps: 0,
            base: BaseInput::Synthetic,
            digests: Digests::default(),
            detector_image_size: spec.detector.image_size.unwrap_or(DEFAULT_VIT_IMAGE_SIZE),
            detector_patches: 1024.0,
            speed: crate::pipeline::discover::plan::Speed::REFERENCE,
        };
        let plan = plan(spec, &inputs);
        assert_eq!(plan.names(), ["base", "maps", "binarize", "train"]);
        fingerprints(spec, &inputs, &plan, "random", weights)
            .iter()
            .map(StageFingerprint::stamp)
            .collect()
    }

    #[test]
    fn the_records_keep_the_form_of_the_runs_before() {
        // What the hand-written JSON recorded, so that finished stages of earlier runs are
        // still found finished (the train stage's record changed: it is redone once).
        let spec = discover_spec();
        let w = Path::new("/weights/dinov2.safetensors");
        let fps = run_fingerprints(&spec, Some(w));
        let stamp = |stage: &str, settings: Value| {
            let fp = json!({ "stage": stage, "version": VERSION, "settings": settings });
            let digest = fnv(fp.to_string().as_bytes());
            (fp, digest)
        };
        let base = json!({
            "synth": { "seed": SYNTH_BASE_SEED, "per_base_class": SYNTH_BASE_PER_CLASS,
                       "size": SYNTH_BASE_SIZE },
            "max_crops": BASE_MAX_CROPS,
        });
        assert_eq!(fps[0], stamp("base", base));
        let job = detect_spec(
            &spec,
            Some(w.to_path_buf()),
            Path::new("/runs/r/maps"),
            &Some("/data/normal".into()),
            false,
            DEFAULT_VIT_IMAGE_SIZE,
        );
        let maps = json!({
            "train": job.train.as_deref().map(absolute_value), "train_listing": "",
            "images": absolute_value(&job.test), "images_listing": "",
            "detector": job.settings(),
        });
        assert_eq!(fps[1], stamp("maps", maps));
        let binarize = json!({
            "maps": absolute_value(Path::new("/runs/r/maps")),
            "maps_listing": "", "maps_stage": fps[1].1,
            "images": absolute_value(&spec.images), "images_listing": "",
            "binarization": spec.config.binarization,
            "layout": crate::mebin::job::OUTPUT_LAYOUT,
        });
        assert_eq!(fps[2], stamp("binarize", binarize));
        let keys: Vec<&String> = fps[3].0["settings"].as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "base",
                "base_listing",
                "base_stage",
                "binarize_stage",
                "config",
                "max_classes",
                "num_classes",
                "precision",
                "weights"
            ]
        );
    }

    #[test]
    fn the_train_stage_follows_its_settings_and_not_the_workers() {
        let spec = discover_spec();
        let w = Some(Path::new("/weights/dinov2.safetensors"));
        let fps = run_fingerprints(&spec, w);
        let redone = |change: fn(&mut DiscoverSpec)| -> Vec<bool> {
            let mut s = discover_spec();
            change(&mut s);
            let other = run_fingerprints(&s, w);
            fps.iter().zip(&other).map(|(a, b)| a.1 != b.1).collect()
        };
        let train_only = [false, false, false, true];
        type Edit = fn(&mut DiscoverSpec);
        let changes: [(&str, Edit); 4] = [
            ("num_classes", |s| s.num_classes = NumClasses::Fixed(3)),
            ("max_classes", |s| s.max_classes = 4),
            ("seed", |s| s.config.experiment.seed = 1),
            ("epochs", |s| s.config.training.epochs = 3),
        ];
        for (name, change) in changes {
            assert_eq!(redone(change), train_only, "{name}");
        }
        // The precision is the detector's too: a forced one that resolves to another kind
        // redoes the maps and everything after them.
        // (Both forced: `auto` resolves by a measurement on this machine.)
        let forced = |p: Precision| {
            let mut s = discover_spec();
            s.config.models.precision = p;
            run_fingerprints(&s, w)
        };
        let (f32_run, bf16_run) = (forced(Precision::Fp32), forced(Precision::Bf16));
        let moved: Vec<bool> = f32_run
            .iter()
            .zip(&bf16_run)
            .map(|(a, b)| a.1 != b.1)
            .collect();
        assert_eq!(moved, [false, true, true, true]);
        assert_eq!(
            redone(|s| s.config.binarization.sample_rate = 2),
            [false, false, true, true]
        );
        let nothing = [false; 4];
        assert_eq!(redone(|s| s.config.training.num_workers = 1), nothing);
        // Inference settings change only the evaluation: `discover` evaluates the checkpoint
        // again (the train stage's summary records them), the fingerprints stay.
        assert_eq!(
            redone(|s| s.config.inference.merge_temperature = Some(5.0)),
            nothing
        );
        assert_eq!(redone(|s| s.config.inference.refine_steps = 1), nothing);
        assert_eq!(redone(|s| s.resume = true), nothing);
        assert_eq!(redone(|s| s.stop_after_epochs = Some(1)), nothing);
    }

    #[test]
    fn the_maps_stage_records_the_job_it_runs_and_a_change_redoes_what_follows() {
        let spec = discover_spec();
        let w = Path::new("/weights/dinov2.safetensors");
        let fps = run_fingerprints(&spec, Some(w));
        let maps_dir = PathBuf::from("/runs/r/maps");
        let normal = Some(PathBuf::from("/data/normal"));
        let job = detect_spec(&spec, Some(w.to_path_buf()), &maps_dir, &normal, false, 448);
        assert_eq!(
            fps[1].0["settings"]["detector"],
            serde_json::to_value(job.settings()).unwrap()
        );
        assert_eq!(run_fingerprints(&spec, Some(w)), fps, "stable");
        let redone = |other: &[(Value, String)]| -> Vec<bool> {
            fps.iter().zip(other).map(|(a, b)| a.1 != b.1).collect()
        };
        let mut small = discover_spec();
        small.detector.image_size = Some(224);
        assert_eq!(
            redone(&run_fingerprints(&small, Some(w))),
            [false, true, true, true]
        );
        let random = run_fingerprints(&spec, None);
        assert_eq!(redone(&random), [false, true, true, true]);
        // The config's `detect` section reaches the detector's job and its fingerprint.
        let mut per_block = discover_spec();
        per_block.config.detect.per_block = true;
        let job = detect_spec(
            &per_block,
            Some(w.to_path_buf()),
            &maps_dir,
            &normal,
            false,
            448,
        );
        assert!(job.per_block);
        assert_eq!(
            redone(&run_fingerprints(&per_block, Some(w))),
            [false, true, true, true]
        );
    }
}
