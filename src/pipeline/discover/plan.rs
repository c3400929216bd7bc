//! The plan of a `discover` run. [`super::scan()`] lists and checks the input folders into
//! [`Inputs`]; [`plan`] is pure: from the flags and those counts it decides the stages, their
//! folders and rough times, so every combination of flags is unit-tested without a model.

use std::path::{Path, PathBuf};

pub(super) use super::costs::{Costs, CropCosts};
use super::DiscoverSpec;
use crate::cluster::NumClasses;
use crate::config::{CnnMix, NeighbourFeatures};
use crate::detect::held_out_normals;

/// The type folder of `--images` that holds normal images.
pub use crate::imageio::NORMAL_TYPE;
pub use crate::logging::duration_text;

/// The built-in base set: `synth`'s three base classes, this many images each.
pub const SYNTH_BASE_PER_CLASS: usize = 12;
/// Its seed (not the default `synth` seed, so it is not the demo set's own base set).
pub const SYNTH_BASE_SEED: u64 = 1;
/// Its image side in pixels.
pub const SYNTH_BASE_SIZE: u32 = 160;
/// Crops per base image (the reference's `aebad_preprocess`).
pub const BASE_MAX_CROPS: usize = 2;

/// Where the labelled base set comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum BaseInput {
    /// No `--base`: the built-in synthetic base set, generated into `RUN/synth_base`.
    Synthetic,
    /// `--no-base`: training without the supervised base terms.
    None,
    /// `DIR/images/<class>/` and `DIR/masks/<class>/`, cropped by the masks into `RUN/base`.
    Raw {
        dir: PathBuf,
        images: usize,
        classes: usize,
    },
    /// A `prepare-base` output (it holds `prepare_base.json`): used as it is.
    Cropped {
        dir: PathBuf,
        crops: usize,
        classes: usize,
    },
}

/// What [`super::scan()`] found in the input folders.
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs {
    /// Defective images, to be grouped.
    pub images: usize,
    /// Their type folders (empty for a flat folder: no metrics).
    pub types: Vec<String>,
    /// Normal images in `--images/good`.
    pub good: usize,
    /// Images in `--normal` (0 without it).
    pub normal: usize,
    /// Maps in `--anomaly-maps` paired with a defective image (0 without it).
    pub maps: usize,
    pub base: BaseInput,
    /// Digests of the listings (names, sizes, modification times), for the stage fingerprints.
    pub digests: Digests,
    /// The built-in detector's input side: `--detector-image-size`, else the config's
    /// `detect.image_size` (`auto`: from the defective images' sizes); unused with
    /// `--anomaly-maps`.
    pub detector_image_size: u32,
    /// The defective images' mean patches at that side (a sample's headers; 0 with
    /// `--anomaly-maps`): what one of the detector's forwards costs.
    pub detector_patches: f64,
    /// This machine's speed against the CPU [`Costs`] were measured on, for the estimates.
    pub speed: Speed,
}

/// How fast this machine runs the estimates' work, from the GEMM rates `precision: auto`
/// measures once per machine (or has stored). Rough on purpose: the estimates are for
/// planning; on the two CPUs measured (docs/discover.md) they came within about 1.4×.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Speed {
    /// GFLOP/s of a ViT forward in the run's precision: its GEMMs at the run's rate, plus the
    /// work around them (attention softmax, norms, activations, the input pipeline).
    pub forward: f64,
    /// The full-size fp32 GEMM rate (GFLOP/s): the detector's nearest-neighbour searches and
    /// the cached training steps, which run in fp32.
    pub fp32: f64,
}

impl Speed {
    /// The CPU [`Costs`] were measured on: a 2-core AVX2-only AMD EPYC, fp32 GEMMs at 66
    /// GFLOP/s.
    pub const REFERENCE: Speed = Speed {
        forward: 66.0 / (1.0 + Self::AROUND_GEMMS),
        fp32: 66.0,
    };
    /// The work around a forward's GEMMs, in seconds per GEMM GFLOP at the fp32 rate: fitted
    /// to the measured forward rates, 48–50 GFLOP/s at an fp32 GEMM rate of 66 on the EPYC,
    /// 244 at 306 in fp32 and ~750 at 2534 in bf16 on the AMX Xeon (0.25–0.37). bf16 speeds
    /// up only the GEMMs.
    const AROUND_GEMMS: f64 = 0.3;

    /// From this machine's fp32 GEMM rate and the rate of the kind its ViT blocks run in
    /// (GFLOP/s). Rates that are not positive numbers give the reference.
    pub fn from_rates(fp32: f64, run: f64) -> Speed {
        if !(fp32 > 0.0 && run > 0.0 && fp32.is_finite() && run.is_finite()) {
            return Speed::REFERENCE;
        }
        Speed {
            forward: 1.0 / (1.0 / run + Self::AROUND_GEMMS / fp32),
            fp32,
        }
    }
}

/// Listing digests of the input folders (empty when not given).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Digests {
    pub images: String,
    pub normal: String,
    pub maps: String,
    pub base: String,
}

/// What a stage does.
#[derive(Debug, Clone, PartialEq)]
pub enum StageKind {
    /// Generate the synthetic base set into `RUN/synth_base` and crop it into `RUN/base`.
    SynthBase,
    /// Crop a labelled base set by its masks into `RUN/base`.
    CropBase { images: PathBuf, masks: PathBuf },
    /// The built-in detector: fitted on `train`, or zero-shot (`None`); `write_good_maps`
    /// also writes the maps of `--images/good` (held-out normals: they set MEBin's range).
    Detect {
        train: Option<PathBuf>,
        write_good_maps: bool,
        /// The backbone input's longer side, resolved from the images when `auto`.
        image_size: u32,
    },
    /// MEBin over these maps and `--images`.
    Binarize { maps: PathBuf },
    /// K (estimated or given), training, evaluation, report.
    Train,
}

/// One stage of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    /// `base`, `maps`, `binarize` or `train`: also its sub-folder of the run folder.
    pub name: &'static str,
    pub kind: StageKind,
    pub dir: PathBuf,
    /// One line on what it does, with the counts.
    pub what: String,
    /// Rough seconds on this machine (see [`Costs`] and [`Speed`]).
    pub estimate_s: f64,
    /// Of them, the evaluation at the end (the train stage; 0 elsewhere): what a resumed run
    /// whose `inference` settings changed spends.
    pub evaluate_s: f64,
}

/// What a resumed run does with a stage finished earlier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// It runs (not finished, or its inputs changed).
    Runs,
    /// Finished with the same inputs: skipped.
    Skipped,
    /// The train stage finished with the same inputs but other `inference` settings: only its
    /// evaluation runs again.
    EvaluatedAgain,
}

impl Stage {
    /// Rough seconds it takes as `resumed` says: all of it, nothing, or its evaluation.
    pub fn estimate_as(&self, resumed: Resumed) -> f64 {
        match resumed {
            Resumed::Runs => self.estimate_s,
            Resumed::Skipped => 0.0,
            Resumed::EvaluatedAgain => self.evaluate_s,
        }
    }
}

/// The stages of a run, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub stages: Vec<Stage>,
    /// The base crops training reads (`None`: training without a base set).
    pub base: Option<PathBuf>,
    /// The maps MEBin reads.
    pub maps: PathBuf,
    /// Choices worth a line (inputs used as they are, flags without effect).
    pub notes: Vec<String>,
}

impl Plan {
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name == name)
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.stages.iter().map(|s| s.name).collect()
    }

    pub fn estimate_s(&self) -> f64 {
        self.stages.iter().map(|s| s.estimate_s).sum()
    }

    /// The plan as `--dry-run` prints it, with what a resumed run does with each stage
    /// (`resumed`, in the stages' order; a stage beyond its end runs).
    pub fn describe(&self, out: &Path, inputs: &Inputs, resumed: &[Resumed]) -> String {
        let resumed = |i: usize| resumed.get(i).copied().unwrap_or(Resumed::Runs);
        let mut s = format!("discover plan for {}\n", out.display());
        let types = match inputs.types.len() {
            0 => "a flat folder: no type folders, no metrics".to_string(),
            n => format!("{n} type folders: {}", inputs.types.join(", ")),
        };
        s.push_str(&format!("  images: {} defective ({types})", inputs.images));
        if inputs.good > 0 {
            s.push_str(&format!(", {} normal in good/", inputs.good));
        }
        s.push('\n');
        if inputs.normal > 0 {
            s.push_str(&format!("  normal: {} images\n", inputs.normal));
        }
        if inputs.maps > 0 {
            s.push_str(&format!("  anomaly maps: {} paired\n", inputs.maps));
        }
        let n = self.stages.len();
        for (i, st) in self.stages.iter().enumerate() {
            let mark = match resumed(i) {
                Resumed::Skipped => "  [done: skipped with --resume]".to_string(),
                Resumed::EvaluatedAgain => format!(
                    "  [trained earlier: with --resume only the evaluation runs again, ~{}: inference.* changed]",
                    duration_text(st.evaluate_s)
                ),
                Resumed::Runs => String::new(),
            };
            s.push_str(&format!(
                "  stage {}/{n} {:<8} -> {}: {} (~{}){mark}\n",
                i + 1,
                st.name,
                st.dir.display(),
                st.what,
                duration_text(st.estimate_s)
            ));
        }
        let left: f64 = (self.stages.iter().enumerate())
            .map(|(i, st)| st.estimate_as(resumed(i)))
            .sum();
        s.push_str(&format!(
            "  total ~{} (rough: from the counts and this machine's speed)\n",
            duration_text(left)
        ));
        for note in &self.notes {
            s.push_str(&format!("  note: {note}\n"));
        }
        s
    }
}

/// The stages for these flags and inputs (pure; see the module doc).
pub fn plan(spec: &DiscoverSpec, inputs: &Inputs) -> Plan {
    let out = &spec.out;
    let cfg = &spec.config;
    let mut stages = Vec::new();
    let mut notes = Vec::new();
    let crop = CropCosts::new(cfg, inputs.speed);
    let (base, base_crops, base_classes) = match &inputs.base {
        BaseInput::Synthetic => {
            let classes = crate::synth::Defect::BASE.len();
            let n = classes * SYNTH_BASE_PER_CLASS;
            stages.push(Stage {
                name: "base",
                kind: StageKind::SynthBase,
                dir: out.join("base"),
                what: format!(
                    "the built-in synthetic base set ({classes} classes x {SYNTH_BASE_PER_CLASS} images, \
                     written to {}) cropped by its masks",
                    out.join("synth_base").display()
                ),
                estimate_s: 0.05 * n as f64 + 2.0,
                evaluate_s: 0.0,
            });
            (
                Some(out.join("base")),
                Costs::BASE_CROPS * n as f64,
                classes as f64,
            )
        }
        BaseInput::None => {
            notes.push(
                "no base set (--no-base): training without the supervised base terms".to_string(),
            );
            (None, 0.0, 0.0)
        }
        BaseInput::Raw {
            dir,
            images,
            classes,
        } => {
            stages.push(Stage {
                name: "base",
                kind: StageKind::CropBase {
                    images: dir.join("images"),
                    masks: dir.join("masks"),
                },
                dir: out.join("base"),
                what: format!(
                    "crop the base set {} ({images} images in {classes} classes) by its masks",
                    dir.display()
                ),
                estimate_s: 0.01 * *images as f64 + 1.0,
                evaluate_s: 0.0,
            });
            (
                Some(out.join("base")),
                Costs::BASE_CROPS * *images as f64,
                *classes as f64,
            )
        }
        BaseInput::Cropped {
            dir,
            crops,
            classes,
        } => {
            notes.push(format!(
                "base set: {} is a prepare-base output ({crops} crops in {classes} classes): used as it is",
                dir.display()
            ));
            (Some(dir.clone()), *crops as f64, *classes as f64)
        }
    };
    let images = inputs.images as f64;
    let maps = match &spec.anomaly_maps {
        Some(m) => {
            notes.push(format!(
                "anomaly maps: {} ({} maps) are used, no detector runs",
                m.display(),
                inputs.maps
            ));
            if let Some(n) = &spec.normal {
                notes.push(format!(
                    "--normal {} is not used: the anomaly maps are given",
                    n.display()
                ));
            }
            m.clone()
        }
        None => {
            let (train, good_maps, what, fit) = match (&spec.normal, inputs.good) {
                (Some(n), g) => (
                    Some(n.clone()),
                    g > 0,
                    format!(
                        "the built-in detector fitted on the {} normal images in {}{}",
                        inputs.normal,
                        n.display(),
                        if g > 0 {
                            format!("; the {g} images in --images/good are scored too (their maps set MEBin's range)")
                        } else {
                            String::new()
                        }
                    ),
                    inputs.normal as f64,
                ),
                (None, g) if g > 0 => (
                    Some(spec.images.join(NORMAL_TYPE)),
                    false,
                    format!("the built-in detector fitted on the {g} normal images in --images/good"),
                    g as f64,
                ),
                (None, _) => (
                    None,
                    false,
                    format!(
                        "the built-in detector, zero-shot (no normal images: each of the {} images is scored against up to 64 others)",
                        inputs.images
                    ),
                    0.0,
                ),
            };
            let scored = images + inputs.good as f64;
            let plain = Costs::detect(fit, scored, inputs.detector_patches, inputs.speed);
            let held = held_out_normals(fit as usize);
            let cnn = match cfg.detect.fuse_cnn {
                _ if fit == 0.0 => None,
                CnnMix::Auto if held == 0 => None,
                CnnMix::Auto => Some(format!(
                    ", an EfficientNet-Lite0 detector's maps mixed in where {held} held-out normal images favour it (detect.fuse_cnn: auto; then up to {} more)",
                    duration_text(Costs::CNN * plain),
                )),
                w if w.is_on() => Some(format!(
                    ", an EfficientNet-Lite0 detector's maps mixed in at {w} (detect.fuse_cnn)"
                )),
                _ => None,
            };
            let what = format!(
                "{what}; input side {} px (detect.image_size){}",
                inputs.detector_image_size,
                cnn.unwrap_or_default()
            );
            stages.push(Stage {
                name: "maps",
                kind: StageKind::Detect {
                    train,
                    write_good_maps: good_maps,
                    image_size: inputs.detector_image_size,
                },
                dir: out.join("maps"),
                what,
                estimate_s: Costs::detect_variants(
                    plain,
                    fit,
                    scored,
                    inputs.detector_patches,
                    &spec.config.detect,
                    inputs.speed,
                ),
                evaluate_s: 0.0,
            });
            out.join("maps")
        }
    };
    stages.push(Stage {
        name: "binarize",
        kind: StageKind::Binarize { maps: maps.clone() },
        dir: out.join("binarize"),
        what: format!(
            "MEBin binary masks and anomaly-centred crops of the {} images",
            inputs.images
        ),
        estimate_s: 0.01 * images + 1.0,
        evaluate_s: 0.0,
    });
    let novel = Costs::NOVEL_CROPS * images;
    let all = novel + base_crops;
    // The K estimate's pass reads the novel crops and at most BASE_PER_CLASS crops per base class.
    let estimate_crops =
        novel + base_crops.min(crate::cluster::BASE_PER_CLASS as f64 * base_classes);
    let t = &cfg.training;
    let cached = t.cache_frozen.enabled(spec.device);
    let k_what = match spec.num_classes {
        NumClasses::Auto if cfg.inference.reads_k() => format!(
            "estimate K (2..={m}), train {m} clusters, read K again after training",
            m = spec.max_classes
        ),
        NumClasses::Auto => format!("estimate K (2..={})", spec.max_classes),
        NumClasses::Fixed(k) => format!("K = {k}"),
        NumClasses::FromFolders => format!("K = {} (type folders)", inputs.types.len()),
    };
    // With the cache, the K estimate and the evaluation read the plain view's cached tokens;
    // without it, each is one forward per crop.
    let (k_cost, train_cost, evaluate_s) = if cached {
        let views = t.cache_views as f64 + 1.0;
        // `auto` under `soft` guidance reads K from tokens guided within the masks: one more
        // forward per crop, outside the cache.
        let separate =
            crate::pipeline::pretrained::separate_estimate_guidance(cfg.models.guidance).is_some();
        let k = match spec.num_classes {
            NumClasses::Auto if separate => estimate_crops * crop.full_s,
            _ => 0.0,
        };
        (
            k,
            all * views * crop.prefix_s + t.epochs as f64 * all * crop.step_s,
            novel * crop.step_s + 5.0,
        )
    } else {
        let k = match spec.num_classes {
            NumClasses::Auto => estimate_crops * crop.full_s,
            _ => 0.0,
        };
        (
            k,
            t.epochs as f64 * all * 2.0 * crop.full_s,
            novel * crop.full_s + 5.0,
        )
    };
    // `neighbor_features: pooled`: a detector forward per defective image, unless the detector
    // wrote them: not when it fuses, which needs normal images (--normal or --images/good);
    // user's maps (or the detector's pooled at another `detect.pool_tau`): 448 px, 32 × 32
    // patches.
    let written = |m: &Path| crate::detect::pooled_at(m, cfg.detect.pool_tau);
    let fuses = (spec.normal.is_some() || inputs.good > 0)
        && (cfg.detect.fuse_mutual > 0.0 || cfg.detect.fuse_cnn.always());
    let pass = (spec.anomaly_maps.as_deref()).map_or(fuses, |m| !written(m));
    // The answer's graph (`inference.spectral_graph`) reads the same features, once.
    let by_views = t.neighbor_features == Some(NeighbourFeatures::Pooled) && t.neighbor_views > 0.0;
    let by_answer = cfg.inference.reads_pooled()
        && !matches!(t.neighbor_features, Some(NeighbourFeatures::Folder(_)));
    let pooled = (by_views || by_answer) && pass;
    let patches = Some(inputs.detector_patches).filter(|&p| p > 0.0);
    let pooled_s = pooled as u8 as f64
        * Costs::detect_forwards(images, patches.unwrap_or(1024.0), inputs.speed);
    stages.push(Stage {
        name: "train",
        kind: StageKind::Train,
        dir: out.join("train"),
        what: format!(
            "{k_what}, train {} epochs ({}, ~{} crops{}), evaluate, predictions and report.html",
            t.epochs,
            cfg.models.pretrained_backbone,
            all.round(),
            ["", ", neighbour views"][(t.neighbor_views > 0.0) as usize]
        ),
        estimate_s: k_cost + pooled_s + train_cost + evaluate_s,
        evaluate_s,
    });
    // Not measured on a GPU: 1/40 of the reference CPU keeps the CUDA estimates where they
    // were when the reference was the AMX Xeon (1/20 of its about twice shorter figures).
    if spec.device.is_cuda() {
        for s in &mut stages {
            s.estimate_s /= 40.0;
            s.evaluate_s /= 40.0;
        }
    }
    Plan {
        stages,
        base,
        maps,
        notes,
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
pub(super) mod tests;
