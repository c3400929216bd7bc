//! What makes `discover --resume` skip a stage: each stage folder gets a `stage.json` with the
//! fingerprint of the stage's inputs (absolute paths, listing digests of the input folders,
//! settings, and the digests of the stages it reads). A stage whose `stage.json` says finished
//! with the same digest is not run again; anything else is redone.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::plan::{BaseInput, Inputs, Plan, StageKind, BASE_MAX_CROPS, NORMAL_TYPE};
use super::plan::{SYNTH_BASE_PER_CLASS, SYNTH_BASE_SEED, SYNTH_BASE_SIZE};
use super::DiscoverSpec;
use crate::error::Result;
use crate::fsutil::{absolute_value, atomic_write};
use crate::imageio::TypedFile;

/// The record's file name in each stage folder.
pub const STAGE_FILE: &str = "stage.json";
/// Bumped when a stage's outputs change meaning, so older records are redone.
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

/// 64-bit FNV-1a, as 16 hex digits: stable across builds (std's hasher is not promised to be).
pub fn fnv(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

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

/// The fingerprint of each stage of `plan` and its digest, in order. `model_weights` and
/// `detector_weights` name the resolved weight files.
pub fn fingerprints(
    spec: &DiscoverSpec,
    inputs: &Inputs,
    plan: &Plan,
    model_weights: &str,
    detector_weights: &str,
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
                json!({
                    "train": train.as_deref().map(absolute_value),
                    "train_listing": if from_good { &d.images } else { &d.normal },
                    "images": images, "images_listing": d.images,
                    "weights": detector_weights, "image_size": spec.detector.image_size,
                    "write_good_maps": write_good_maps,
                })
            }
            StageKind::Binarize { maps } => json!({
                "maps": absolute_value(maps),
                "maps_listing": d.maps, "maps_stage": upstream(&done, "maps"),
                "images": images, "images_listing": d.images,
                "binarization": spec.config.binarization,
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
        let fp = json!({ "stage": st.name, "version": VERSION, "settings": settings });
        let digest = fnv(fp.to_string().as_bytes());
        done.push((st.name, digest.clone()));
        out.push((fp, digest));
    }
    out
}
