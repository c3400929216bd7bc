//! What makes `discover --resume` skip a stage: each stage folder gets a `stage.json` with the
//! fingerprint of the stage's inputs (absolute paths, listing digests of the input folders,
//! settings, and the digests of the stages it reads). A stage whose `stage.json` says finished
//! with the same digest is not run again; anything else is redone. The maps stage records the
//! detector job's whole [`DetectSettings`], its resolved precision and the digest of the
//! detector's code among them, so no other detector's maps are ever reused.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::plan::{BaseInput, Inputs, Plan, StageKind, BASE_MAX_CROPS, NORMAL_TYPE};
use super::plan::{SYNTH_BASE_PER_CLASS, SYNTH_BASE_SEED, SYNTH_BASE_SIZE};
use super::stages::detect_spec;
use super::DiscoverSpec;
use crate::detect::DetectSettings;
use crate::error::Result;
use crate::fsutil::{absolute_value, atomic_write};
use crate::imageio::TypedFile;

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

pub fn read(dir: &Path) -> Option<StageRecord> {
    let text = std::fs::read_to_string(dir.join(STAGE_FILE)).ok()?;
    serde_json::from_str(&text).ok()
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

/// The fingerprint of each stage of `plan` and its digest, in order. `model_weights` names the
/// resolved backbone weights; `detector_weights` is the detector's resolved weights file (None:
/// random).
pub fn fingerprints(
    spec: &DiscoverSpec,
    inputs: &Inputs,
    plan: &Plan,
    model_weights: &str,
    detector_weights: Option<&Path>,
) -> Vec<(Value, String)> {
    let mut done: Vec<(&str, String)> = Vec::new();
    let upstream = |done: &[(&str, String)], name: &str| -> Value {
        done.iter()
            .find(|(n, _)| *n == name)
            .map_or(Value::Null, |(_, d)| json!(d))
    };
    let d = &inputs.digests;
    let images = absolute_value(&spec.images);
    let mut out = Vec::new();
    for st in &plan.stages {
        let settings = match &st.kind {
            StageKind::SynthBase => json!({
                "synth": { "seed": SYNTH_BASE_SEED, "per_base_class": SYNTH_BASE_PER_CLASS,
                           "size": SYNTH_BASE_SIZE },
                "max_crops": BASE_MAX_CROPS,
            }),
            StageKind::CropBase { images, masks } => json!({
                "images": absolute_value(images), "masks": absolute_value(masks),
                "listing": d.base, "max_crops": BASE_MAX_CROPS,
            }),
            StageKind::Detect {
                train,
                write_good_maps,
            } => {
                let from_good = train.as_ref() == Some(&spec.images.join(NORMAL_TYPE));
                let job = detect_spec(
                    spec,
                    detector_weights.map(Path::to_path_buf),
                    &st.dir,
                    train,
                    *write_good_maps,
                );
                maps_settings(
                    job.train.as_deref(),
                    if from_good { &d.images } else { &d.normal },
                    &job.test,
                    &d.images,
                    &job.settings(),
                )
            }
            StageKind::Binarize { maps } => json!({
                "maps": absolute_value(maps),
                "maps_listing": d.maps, "maps_stage": upstream(&done, "maps"),
                "images": images, "images_listing": d.images,
                "binarization": spec.config.binarization,
                "layout": crate::mebin::job::OUTPUT_LAYOUT,
            }),
            StageKind::Train => json!({
                "config": spec.config,
                "num_classes": format!("{:?}", spec.num_classes), "max_classes": spec.max_classes,
                "weights": model_weights,
                "base": plan.base.as_deref().map(absolute_value),
                "base_listing": match inputs.base { BaseInput::Cropped { .. } => Some(&d.base), _ => None },
                "base_stage": upstream(&done, "base"),
                "binarize_stage": upstream(&done, "binarize"),
            }),
        };
        let (fp, digest) = stamp(st.name, settings);
        done.push((st.name, digest.clone()));
        out.push((fp, digest));
    }
    out
}

/// The maps stage's settings: the detector's input folders (paths and listing digests) and
/// everything else its maps depend on.
fn maps_settings(
    train: Option<&Path>,
    train_listing: &str,
    images: &Path,
    images_listing: &str,
    detector: &DetectSettings,
) -> Value {
    json!({
        "train": train.map(absolute_value), "train_listing": train_listing,
        "images": absolute_value(images), "images_listing": images_listing,
        "detector": detector,
    })
}

/// A stage's fingerprint and its digest.
fn stamp(stage: &str, settings: Value) -> (Value, String) {
    let fp = json!({ "stage": stage, "version": VERSION, "settings": settings });
    let digest = fnv(fp.to_string().as_bytes());
    (fp, digest)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    use super::*;
    use crate::cluster::NumClasses;
    use crate::config::{Config, Precision};
    use crate::detect::features::Resize;
    use crate::detect::DetectSpec;
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
        let v = maps_settings(job.train.as_deref(), "l1", &job.test, "l2", detector);
        stamp("maps", v).1
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
        };
        let plan = plan(spec, &inputs);
        assert_eq!(plan.names(), ["base", "maps", "binarize", "train"]);
        fingerprints(spec, &inputs, &plan, "random", weights)
    }

    #[test]
    fn the_maps_stage_records_the_job_it_runs_and_a_change_redoes_what_follows() {
        let spec = discover_spec();
        let w = Path::new("/weights/dinov2.safetensors");
        let fps = run_fingerprints(&spec, Some(w));
        let maps_dir = PathBuf::from("/runs/r/maps");
        let normal = Some(PathBuf::from("/data/normal"));
        let job = detect_spec(&spec, Some(w.to_path_buf()), &maps_dir, &normal, false);
        assert_eq!(
            fps[1].0["settings"]["detector"],
            serde_json::to_value(job.settings()).unwrap()
        );
        assert_eq!(run_fingerprints(&spec, Some(w)), fps, "stable");
        let redone = |other: &[(Value, String)]| -> Vec<bool> {
            fps.iter().zip(other).map(|(a, b)| a.1 != b.1).collect()
        };
        let mut small = discover_spec();
        small.detector.image_size = 224;
        assert_eq!(
            redone(&run_fingerprints(&small, Some(w))),
            [false, true, true, true]
        );
        let random = run_fingerprints(&spec, None);
        assert_eq!(redone(&random), [false, true, true, true]);
        // The config's `detect` section reaches the detector's job and its fingerprint.
        let mut per_block = discover_spec();
        per_block.config.detect.per_block = true;
        let job = detect_spec(&per_block, Some(w.to_path_buf()), &maps_dir, &normal, false);
        assert!(job.per_block);
        assert_eq!(
            redone(&run_fingerprints(&per_block, Some(w))),
            [false, true, true, true]
        );
    }
}
