//! Everything a detector run's maps depend on besides its input images: the fingerprint of
//! `detect`'s output folder and of `discover`'s maps stage. Built from the whole [`DetectSpec`]
//! (a new field does not compile until it is sorted in or out here) plus a digest of the
//! detector's source code, so no variant of the detector, and no later version of it, reuses
//! maps another one wrote.

use serde::{Deserialize, Serialize};
use tch::Kind;

use super::features::Resize;
use super::spec::DetectSpec;
use crate::config::CnnMix;
use crate::fingerprint::AbsPath;
use crate::model::precision::{frozen_kind, kind_name};

/// FNV-1a of the detector's source files (the list is in build.rs), fixed at build time.
pub const DETECT_CODE: &str = env!("ANOMALYNCD_DETECT_CODE");

fn is_false(v: &bool) -> bool {
    !*v
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

fn is_off(v: &CnnMix) -> bool {
    !v.is_on()
}

fn default_blur() -> f64 {
    super::maps::SIGMA
}

fn is_default_blur(v: &f64) -> bool {
    *v == super::maps::SIGMA
}

/// The settings that decide a detector run's maps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectSettings {
    pub backbone: String,
    /// The weights file's absolute path, or `random (test only)`.
    pub weights: String,
    pub image_size: u32,
    pub resize: Resize,
    pub stages: Vec<usize>,
    pub blocks: Vec<usize>,
    pub aggregate: Option<i64>,
    // Issue 25's map variants: each left out of the record at its default (today's maps), so
    // the fingerprints of runs with the default detector keep their old form.
    #[serde(default, skip_serializing_if = "is_false")]
    pub per_block: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aggregate_sizes: Vec<i64>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fuse_mutual: f64,
    #[serde(default, skip_serializing_if = "is_off")]
    pub fuse_cnn: CnnMix,
    /// The CNN's weights by their absolute path, when `fuse_cnn` is on (`none` under `auto`
    /// when none were found).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnn_weights: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub holdout: f64,
    #[serde(default = "default_blur", skip_serializing_if = "is_default_blur")]
    pub blur: f64,
    /// The kind the backbone actually runs in here (`float`, `bfloat16`): `auto` resolves by
    /// device and CPU, and maps of one kind must not stand in for the other's.
    pub precision: String,
    pub coreset: f64,
    pub max_patches: usize,
    pub zero_shot: bool,
    pub zero_shot_refs: usize,
    pub zero_shot_fraction: f64,
    /// The pooled features beside the maps (always recorded: earlier builds pooled at 1).
    pub pool_tau: f64,
    pub seed: u64,
    pub write_good_maps: bool,
    /// [`DETECT_CODE`] of the build that runs.
    pub code: String,
}

/// The fingerprint of `detect`'s output folder: the input folders and [`DetectSettings`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DetectFingerprint {
    /// Recorded also with `zero_shot`, where it is not read (the form the markers have had).
    pub train: Option<AbsPath>,
    pub test: AbsPath,
    /// `detect.json`'s metrics depend on them.
    pub masks: Option<AbsPath>,
    pub detector: DetectSettings,
}

impl DetectSpec {
    /// The fingerprint of this run's output folder (see [`DetectFingerprint`]).
    pub fn fingerprint(&self) -> DetectFingerprint {
        DetectFingerprint {
            train: self.train.as_deref().map(AbsPath::new),
            test: AbsPath::new(&self.test),
            masks: self.masks.as_deref().map(AbsPath::new),
            detector: self.settings(),
        }
    }

    /// What this run's maps depend on (see [`DetectSettings`]).
    pub fn settings(&self) -> DetectSettings {
        // Exhaustive on purpose: each field is either a setting or has a reason not to be.
        let DetectSpec {
            // The input folders: fingerprinted beside the settings, by their owners (`detect`
            // by path, `discover` also by listing).
            train: _,
            test: _,
            masks: _,
            out: _,
            // Only how images are grouped into forwards: a batch holds images of one size and
            // every per-image choice (patch shares, references) is drawn by the image's index
            // in the whole list, so the maps do not depend on it.
            batch_size: _,
            overwrite: _,
            // Recorded as the kind they resolve to together (`run_kind`).
            device: _,
            precision: _,
            // Recorded by its absolute path (`weights_name`).
            weights: _,
            backbone,
            image_size,
            resize,
            stages,
            blocks,
            aggregate,
            per_block,
            aggregate_sizes,
            fuse_mutual,
            fuse_cnn,
            cnn_weights,
            holdout,
            blur,
            coreset,
            max_patches,
            zero_shot,
            zero_shot_refs,
            zero_shot_fraction,
            pool_tau,
            seed,
            write_good_maps,
        } = self;
        DetectSettings {
            backbone: backbone.clone(),
            weights: self.weights_name(),
            image_size: *image_size,
            resize: *resize,
            stages: stages.clone(),
            blocks: blocks.clone(),
            aggregate: *aggregate,
            per_block: *per_block,
            aggregate_sizes: aggregate_sizes.clone(),
            fuse_mutual: *fuse_mutual,
            fuse_cnn: *fuse_cnn,
            cnn_weights: fuse_cnn.is_on().then(|| match cnn_weights {
                Some(p) => crate::fsutil::absolute(p).display().to_string(),
                None if self.weights.is_some() => "none".into(),
                None => "random (test only)".into(),
            }),
            holdout: *holdout,
            blur: *blur,
            precision: kind_name(self.run_kind()),
            coreset: *coreset,
            max_patches: *max_patches,
            zero_shot: *zero_shot,
            zero_shot_refs: *zero_shot_refs,
            zero_shot_fraction: *zero_shot_fraction,
            pool_tau: *pool_tau,
            seed: *seed,
            write_good_maps: *write_good_maps,
            code: DETECT_CODE.to_string(),
        }
    }

    /// The kind the backbone runs in: the ViT's frozen blocks follow `precision` (resolved for
    /// `device`); the CNN always runs in f32.
    pub(crate) fn run_kind(&self) -> Kind {
        match self.backbone.as_str() {
            super::features::EFFICIENTNET => Kind::Float,
            _ => frozen_kind(self.precision, self.device),
        }
    }

    /// The weights as `detect.json` and the fingerprints name them.
    pub(crate) fn weights_name(&self) -> String {
        self.weights
            .as_ref()
            .map_or("random (test only)".into(), |p| {
                crate::fsutil::absolute(p).display().to_string()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Precision;
    use tch::Device;

    fn spec() -> DetectSpec {
        DetectSpec::with_defaults(
            Some("/data/good".into()),
            "/data/test".into(),
            "/runs/maps".into(),
            Some("/weights/w.safetensors".into()),
            Device::Cpu,
        )
    }

    #[test]
    fn precision_is_recorded_as_it_runs() {
        let mut s = spec();
        s.precision = Precision::Auto;
        let auto = s.settings().precision;
        assert_eq!(auto, kind_name(frozen_kind(Precision::Auto, Device::Cpu)));
        s.precision = Precision::Bf16;
        assert_eq!(s.settings().precision, "bfloat16");
        s.precision = Precision::Fp32;
        assert_eq!(s.settings().precision, "float");
        // The CNN has no bf16 path: its precision setting changes nothing.
        s.backbone = crate::detect::features::EFFICIENTNET.into();
        s.precision = Precision::Bf16;
        assert_eq!(s.settings().precision, "float");
    }

    #[test]
    fn the_folders_batch_size_and_overwrite_are_not_settings() {
        let a = spec();
        let mut b = spec();
        b.out = "/elsewhere".into();
        b.batch_size = 3;
        b.overwrite = true;
        b.masks = Some("/data/masks".into());
        assert_eq!(a.settings(), b.settings());
        assert_eq!(a.settings().code, DETECT_CODE);
        assert_eq!(DETECT_CODE.len(), 16);
    }

    #[test]
    fn the_output_folders_fingerprint_follows_the_inputs_and_the_settings() {
        use crate::fingerprint::check::{fingerprint_follows, Change};
        let changes: &[Change<DetectSpec>] = &[
            ("train", |s| s.train = Some("/data/other".into())),
            ("test", |s| s.test = "/data/other".into()),
            ("masks", |s| s.masks = Some("/data/masks".into())),
            ("detector", |s| s.image_size = 224),
            ("precision", |s| s.precision = Precision::Bf16),
        ];
        let same: &[Change<DetectSpec>] = &[
            ("out", |s| s.out = "/elsewhere".into()),
            ("batch_size", |s| s.batch_size = 3),
            ("overwrite", |s| s.overwrite = true),
        ];
        let fp32 = || DetectSpec {
            precision: Precision::Fp32,
            ..spec()
        };
        fingerprint_follows(fp32, DetectSpec::fingerprint, changes, same, &[]);
        // The record the markers of earlier runs hold.
        let v = crate::fingerprint::to_value(&spec().fingerprint());
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["detector", "masks", "test", "train"]);
        assert_eq!(
            v["detector"],
            serde_json::to_value(spec().settings()).unwrap()
        );
    }

    #[test]
    fn map_variants_change_the_settings_and_stay_out_at_their_defaults() {
        let base = serde_json::to_value(spec().settings()).unwrap();
        for key in [
            "per_block",
            "aggregate_sizes",
            "fuse_mutual",
            "fuse_cnn",
            "cnn_weights",
            "holdout",
            "blur",
        ] {
            assert!(base.get(key).is_none(), "{key} recorded at its default");
        }
        type Change = fn(&mut DetectSpec);
        let changes: [(&str, Change); 7] = [
            ("blur", |s| s.blur = 2.0),
            ("per_block", |s| s.per_block = true),
            ("aggregate_sizes", |s| s.aggregate_sizes = vec![1, 3, 5]),
            ("fuse_mutual", |s| s.fuse_mutual = 0.5),
            ("fuse_cnn", |s| s.fuse_cnn = CnnMix::Weight(0.5)),
            ("fuse_cnn", |s| s.fuse_cnn = CnnMix::Auto),
            ("holdout", |s| s.holdout = 0.1),
        ];
        for (key, change) in changes {
            let mut s = spec();
            change(&mut s);
            let v = serde_json::to_value(s.settings()).unwrap();
            assert!(v.get(key).is_some(), "{key}");
            assert_ne!(s.settings(), spec().settings(), "{key}");
            let back: DetectSettings = serde_json::from_value(v).unwrap();
            assert_eq!(back, s.settings(), "{key} round trip");
        }
        let mut auto = spec();
        auto.fuse_cnn = CnnMix::Auto;
        let v = serde_json::to_value(auto.settings()).unwrap();
        assert_eq!(v["fuse_cnn"], "auto");
        let mut fixed = spec();
        fixed.fuse_cnn = CnnMix::Weight(0.5);
        let v = serde_json::to_value(fixed.settings()).unwrap();
        assert_eq!(
            v["fuse_cnn"], 0.5,
            "a weight keeps the record's earlier form"
        );
    }
}
