//! The plan of a `discover` run. [`scan`] lists and checks the input folders (names only,
//! nothing is decoded) into [`Inputs`]; [`plan`] is pure: from the flags and those counts it
//! decides the stages, their folders and rough times, so every combination of flags is
//! unit-tested without a model.

use std::path::{Path, PathBuf};

use super::record::listing_digest;
use super::DiscoverSpec;
use crate::cluster::NumClasses;
use crate::config::{arch::ArchSpec, Config};
use crate::error::{Error, Result, ResultExt};
use crate::fsutil::absolute;
use crate::imageio::{self, TypedFile, ANOMALY_MAP_EXTENSIONS, IMAGE_EXTENSIONS, MAP_EXTENSIONS};
use crate::mebin::base::BASE_SUMMARY_FILE;
use crate::mebin::Pairing;

/// The type folder of `--images` that holds normal images (MVTec's name).
pub const NORMAL_TYPE: &str = "good";

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

/// What [`scan`] found in the input folders.
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
    /// Rough seconds (2-core CPU figures, see [`Costs`]).
    pub estimate_s: f64,
}

/// The stages of a run, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub stages: Vec<Stage>,
    /// The base crops training reads.
    pub base: PathBuf,
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

    /// The plan as `--dry-run` prints it; `done[i]`: stage i finished earlier with the same
    /// inputs (skipped with `--resume`).
    pub fn describe(&self, out: &Path, inputs: &Inputs, done: &[bool]) -> String {
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
            let mark = match done.get(i) {
                Some(true) => "  [done: skipped with --resume]",
                _ => "",
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
        let left: f64 = self
            .stages
            .iter()
            .zip(done.iter().chain(std::iter::repeat(&false)))
            .filter(|(_, d)| !**d)
            .map(|(st, _)| st.estimate_s)
            .sum();
        s.push_str(&format!(
            "  total ~{} (rough, from the counts; 2-core CPU figures)\n",
            duration_text(left)
        ));
        for note in &self.notes {
            s.push_str(&format!("  note: {note}\n"));
        }
        s
    }
}

/// `12 s`, `3 min`, `1 h 5 min`.
pub fn duration_text(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        0..=89 => format!("{s} s"),
        90..=3599 => format!("{} min", (s + 30) / 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600 + 30) / 60),
    }
}

/// Seconds per unit on the 2-core CPU the README's tables were measured on (DINOv2 ViT-S/14,
/// fp32): rough, for the plan and the ETA only.
pub struct Costs;

impl Costs {
    /// `detect`: one image at a 448 side (fit or score; fp32 MTD run: 1344 images in 498 s).
    const DETECT_IMAGE: f64 = 0.37;
    /// One uncached forward of ViT-S/14 at 224 (5.6 views/s).
    const VIEW: f64 = 0.18;
    /// A cached training step per sample over an uncached view (`cargo bench --bench train`).
    const CACHED_SPEEDUP: f64 = 58.0;
    /// Crops per defective image (MTD: 416–520 for 392 images) and per base image (SD-900: 377
    /// for 300; the synthetic base set: 1 each).
    const NOVEL_CROPS: f64 = 1.2;
    const BASE_CROPS: f64 = 1.2;

    /// One forward of the config's backbone relative to ViT-S/14 at 224 (tokens x width² x depth).
    fn view(cfg: &Config) -> f64 {
        let Some(a) = ArchSpec::by_name(&cfg.models.pretrained_backbone) else {
            return Self::VIEW;
        };
        let side = cfg.models.image_size as f64 / a.patch_size as f64;
        let tokens = side * side + 1.0;
        let width = a.embed_dim as f64 / 384.0;
        Self::VIEW * tokens / 257.0 * width * width * a.depth as f64 / 12.0
    }
}

/// The stages for these flags and inputs (pure; see the module doc).
pub fn plan(spec: &DiscoverSpec, inputs: &Inputs) -> Plan {
    let out = &spec.out;
    let cfg = &spec.config;
    let mut stages = Vec::new();
    let mut notes = Vec::new();
    let view = Costs::view(cfg);
    let (base, base_crops) = match &inputs.base {
        BaseInput::Synthetic => {
            let n = 3 * SYNTH_BASE_PER_CLASS;
            stages.push(Stage {
                name: "base",
                kind: StageKind::SynthBase,
                dir: out.join("base"),
                what: format!(
                    "the built-in synthetic base set (3 classes x {SYNTH_BASE_PER_CLASS} images, \
                     written to {}) cropped by its masks",
                    out.join("synth_base").display()
                ),
                estimate_s: 0.05 * n as f64 + 2.0,
            });
            (out.join("base"), Costs::BASE_CROPS * n as f64)
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
            });
            (out.join("base"), Costs::BASE_CROPS * *images as f64)
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
            (dir.clone(), *crops as f64)
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
            let size = (spec.detector.image_size as f64 / 448.0).powi(2);
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
                    images,
                ),
            };
            let scored = images + inputs.good as f64;
            stages.push(Stage {
                name: "maps",
                kind: StageKind::Detect {
                    train,
                    write_good_maps: good_maps,
                },
                dir: out.join("maps"),
                what,
                estimate_s: Costs::DETECT_IMAGE * size * (fit + scored) + 5.0,
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
    });
    let novel = Costs::NOVEL_CROPS * images;
    let all = novel + base_crops;
    let t = &cfg.training;
    let (k_what, k_cost) = match spec.num_classes {
        NumClasses::Auto => (format!("estimate K (2..={})", spec.max_classes), all * view),
        NumClasses::Fixed(k) => (format!("K = {k}"), 0.0),
        NumClasses::FromFolders => (format!("K = {} (type folders)", inputs.types.len()), 0.0),
    };
    let train_cost = if t.cache_frozen {
        all * t.cache_views as f64 * view + t.epochs as f64 * all * view / Costs::CACHED_SPEEDUP
    } else {
        t.epochs as f64 * all * 2.0 * view
    };
    stages.push(Stage {
        name: "train",
        kind: StageKind::Train,
        dir: out.join("train"),
        what: format!(
            "{k_what}, train {} epochs ({}, ~{} crops), evaluate, predictions and report.html",
            t.epochs,
            cfg.models.pretrained_backbone,
            all.round()
        ),
        estimate_s: k_cost + train_cost + novel * view + 5.0,
    });
    if spec.device.is_cuda() {
        for s in &mut stages {
            s.estimate_s *= 0.05;
        }
    }
    Plan {
        stages,
        base,
        maps,
        notes,
    }
}

/// Lists and checks the inputs: every error an input can cause is raised here, before any
/// stage runs (exit code 2). Writes nothing.
pub fn scan(spec: &DiscoverSpec) -> Result<Inputs> {
    let images = &spec.images;
    if !images.is_dir() {
        return Err(Error::input(images, "--images: folder not found"));
    }
    check_out(spec)?;
    let top = imageio::read_folder(images, IMAGE_EXTENSIONS)?;
    if !top.files.is_empty() && !top.dirs.is_empty() {
        return Err(Error::input(
            images,
            "--images holds both image files and sub-folders; keep it flat (IMAGES/<stem>.<ext>) \
             or put every image in a type folder (IMAGES/<type>/<stem>.<ext>; normal ones in IMAGES/good)",
        ));
    }
    let files = if top.dirs.is_empty() {
        top.files
    } else {
        imageio::list_typed_files(images, IMAGE_EXTENSIONS)?
    };
    let digest_images = listing_digest(&files);
    let (good, defective): (Vec<TypedFile>, Vec<TypedFile>) =
        files.into_iter().partition(|f| f.type_name == NORMAL_TYPE);
    if defective.is_empty() {
        let why = if good.is_empty() {
            "--images: no images found (expected IMAGES/<type>/<stem>.<png|jpg|bmp|tif> or a flat folder of images)"
        } else {
            "--images: only normal images (in good/); add the defective images as IMAGES/<type>/<stem>.<ext>"
        };
        return Err(Error::input(images, why));
    }
    let mut types: Vec<String> = defective.iter().map(|f| f.type_name.clone()).collect();
    types.dedup();
    types.retain(|t| !t.is_empty());
    let mut digests = Digests {
        images: digest_images,
        ..Default::default()
    };
    let normal = match &spec.normal {
        Some(dir) => {
            if !dir.is_dir() {
                return Err(Error::input(dir, "--normal: folder not found"));
            }
            let files = imageio::list_files(dir, IMAGE_EXTENSIONS)
                .with_context(|| format!("--normal {}", dir.display()))?;
            if files.is_empty() {
                return Err(Error::input(
                    dir,
                    "--normal: no images found (expected NORMAL/<stem>.<png|jpg|bmp|tif> or NORMAL/<type>/<stem>.<ext>)",
                ));
            }
            digests.normal = listing_digest(&files);
            files.len()
        }
        None => 0,
    };
    let maps = match &spec.anomaly_maps {
        Some(dir) => {
            let ctx = || format!("--anomaly-maps {}", dir.display());
            if !dir.is_dir() {
                return Err(Error::input(dir, "--anomaly-maps: folder not found"));
            }
            let items =
                crate::mebin::folders::pair_folders(dir, images, &pairing()).with_context(ctx)?;
            let files = imageio::list_files(dir, ANOMALY_MAP_EXTENSIONS).with_context(ctx)?;
            digests.maps = listing_digest(&files);
            items.iter().filter(|i| !i.normal).count()
        }
        None => 0,
    };
    if spec.anomaly_maps.is_none() && normal == 0 && good.is_empty() && defective.len() < 2 {
        return Err(Error::input(
            images,
            "the zero-shot detector (no --normal, no IMAGES/good, no --anomaly-maps) scores each image \
             against the others and needs at least 2 images; give --normal or --anomaly-maps",
        ));
    }
    let base = match &spec.base {
        Some(dir) => scan_base(dir, &mut digests)?,
        None => BaseInput::Synthetic,
    };
    Ok(Inputs {
        images: defective.len(),
        types,
        good: good.len(),
        normal,
        maps,
        base,
        digests,
    })
}

/// How MEBin pairs maps with `--images`: every defective image needs its map; `good` maps
/// (if any) only set the range.
pub fn pairing() -> Pairing {
    Pairing::default()
}

/// The run folder must not sit inside an input nor contain one.
fn check_out(spec: &DiscoverSpec) -> Result<()> {
    let out = absolute(&spec.out);
    let inputs = [
        ("--images", Some(&spec.images)),
        ("--normal", spec.normal.as_ref()),
        ("--anomaly-maps", spec.anomaly_maps.as_ref()),
        ("--base", spec.base.as_ref()),
    ];
    for (flag, dir) in inputs {
        let Some(dir) = dir else { continue };
        let d = absolute(dir);
        if out.starts_with(&d) || d.starts_with(&out) {
            return Err(Error::usage(format!(
                "--out {}: the run folder must not be inside {flag} {} (or contain it); choose a folder outside the inputs",
                spec.out.display(),
                dir.display()
            )));
        }
    }
    Ok(())
}

/// `--base DIR`: a prepare-base output (used as it is), or `images/<class>/` + `masks/<class>/`
/// where every image has a mask.
fn scan_base(dir: &Path, digests: &mut Digests) -> Result<BaseInput> {
    let layout =
        "expected BASE/images/<class>/<stem>.<ext> and BASE/masks/<class>/<stem>.png (0/255), \
                  or a prepare-base output";
    if !dir.is_dir() {
        return Err(Error::input(
            dir,
            format!("--base: folder not found; {layout}"),
        ));
    }
    let ctx = || format!("--base {}", dir.display());
    if dir.join(BASE_SUMMARY_FILE).is_file() {
        let (classes, items) = crate::data::dataset::load_base(dir).with_context(ctx)?;
        let files: Vec<TypedFile> = items
            .iter()
            .map(|c| TypedFile {
                type_name: String::new(),
                stem: c.id.clone(),
                path: c.image.clone(),
            })
            .collect();
        digests.base = listing_digest(&files);
        return Ok(BaseInput::Cropped {
            dir: dir.to_path_buf(),
            crops: items.len(),
            classes: classes.len(),
        });
    }
    let (img_dir, mask_dir) = (dir.join("images"), dir.join("masks"));
    if !img_dir.is_dir() {
        return Err(Error::input(
            dir,
            format!("--base: no images/ folder; {layout}"),
        ));
    }
    if !mask_dir.is_dir() {
        return Err(Error::input(
            dir,
            format!("--base: no masks/ folder: the base set needs a mask per image; {layout}"),
        ));
    }
    let imgs = imageio::list_typed_files(&img_dir, IMAGE_EXTENSIONS).with_context(ctx)?;
    if imgs.is_empty() {
        return Err(Error::input(
            &img_dir,
            format!("--base: no images; {layout}"),
        ));
    }
    let masks = imageio::list_typed_files(&mask_dir, MAP_EXTENSIONS).with_context(ctx)?;
    if masks.is_empty() {
        return Err(Error::input(
            &mask_dir,
            format!("--base: no masks; {layout}"),
        ));
    }
    let mut all = imgs.clone();
    all.extend(masks.iter().cloned());
    digests.base = listing_digest(&all);
    let p = imageio::pair_by_stem(imgs, masks);
    if !p.left_only.is_empty() {
        return Err(Error::input(
            &mask_dir,
            format!(
                "--base: images without a mask (same <class>/<stem>): {}; {layout}",
                imageio::describe_files(&p.left_only, &img_dir, 5)
            ),
        ));
    }
    let mut classes: Vec<&str> = p.pairs.iter().map(|(i, _)| i.type_name.as_str()).collect();
    classes.dedup();
    Ok(BaseInput::Raw {
        dir: dir.to_path_buf(),
        images: p.pairs.len(),
        classes: classes.len(),
    })
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
