//! The detect job: list and check the folders, fit the memory bank, score the test images, write
//! the maps and `detect.json`, evaluate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use image::GrayImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::cnn_fusion::{beside_vit, held_out_indices, held_out_scores, CnnChoice, Job, Scores};
use super::eval::{auroc, PixelSet};
use super::features::{dinov2_arch, FeatureExtractor, Resize, EFFICIENTNET};
use super::inputs::{list_images, masks_of, split_holdout};
use super::localize::{LocReport, MapsEvalSpec};
use super::pooled::{Pooling, DETECT_FEATURES_FILE, DETECT_IMAGES_FILE};
use super::reference::{self, Inputs, Reference};
use super::scoring::{self, NormalFloor};
use super::slices::Slicing;
use super::spec::check_spec;
use super::spec::DetectSpec;
use super::spill::MapSpill;
use super::{maps, NORMAL_TYPE};
use crate::config::CnnMix;
use crate::error::{Error, Result};
use crate::fsutil::{prepare_output_dir, save_image_atomic, StageOutput, StageSummary};
use crate::imageio::{is_normal, mask_at, read_mask, TypedFile};
use crate::model::precision::kind_name;

/// The run summary written into OUT.
pub const REPORT_FILE: &str = "detect.json";

/// Score of one test image and where its map went.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageScore {
    #[serde(rename = "type")]
    pub type_name: String,
    pub stem: String,
    pub score: f32,
    /// Path of the map relative to OUT; None for normal images (see `write_good_maps`).
    pub map: Option<PathBuf>,
}

/// Metrics; each None when the test set lacks what it needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Metrics {
    pub image_auroc: Option<f64>,
    pub pixel_auroc: Option<f64>,
    pub aupro: Option<f64>,
    pub normal_test_images: usize,
    pub defect_test_images: usize,
    /// With masks: per-image localisation of the written maps per type (argmax in defect,
    /// best IoU, MEBin's crops on the defect; see [`super::localize`]).
    pub localization: Option<LocReport>,
}

/// `detect.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DetectReport {
    pub backbone: String,
    pub weights: String,
    pub image_size: u32,
    pub resize: Resize,
    pub stages: Vec<usize>,
    pub blocks: Vec<usize>,
    pub aggregate: Option<i64>,
    #[serde(default)]
    pub per_block: bool,
    #[serde(default)]
    pub aggregate_sizes: Vec<i64>,
    #[serde(default)]
    pub fuse_mutual: f64,
    /// The CNN detector's weight in the maps as written (0: none).
    #[serde(default)]
    pub fuse_cnn: f64,
    /// What `fuse_cnn: auto` saw and chose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnn_choice: Option<CnnChoice>,
    /// The fraction of the normal images held out of the bank.
    #[serde(default)]
    pub holdout: f64,
    /// The maps' blur (sigma at a side of 256).
    #[serde(default = "default_blur")]
    pub blur: f64,
    /// The ViT blocks' precision as run (`float` or `bfloat16`).
    pub precision: String,
    pub feature_dim: i64,
    pub coreset_fraction: f64,
    pub max_patches: usize,
    pub zero_shot: bool,
    /// Zero-shot: the test images used as references.
    pub zero_shot_refs: usize,
    pub seed: u64,
    pub train_images: usize,
    /// With `holdout`: the held-out normal images' map statistics on the written maps' scale;
    /// `normal_floor.floor` is the floor for MEBin (`binarization.min_threshold`).
    #[serde(default)]
    pub normal_floor: Option<NormalFloor>,
    /// The test images' patch features pooled under their maps (`<file>`, beside
    /// [`DETECT_IMAGES_FILE`]; softmax weights at `pool_tau`); `None` when fusing.
    #[serde(default)]
    pub pooled_features: Option<PathBuf>,
    /// Their softmax temperature; reports written before the setting pooled at 1.
    #[serde(default = "earlier_pool_tau")]
    pub pool_tau: f64,
    pub pool_patches: usize,
    pub memory_bank: usize,
    /// Range of the raw map values mapped to 0..=255 (over all test maps).
    pub scale: (f32, f32),
    pub metrics: Metrics,
    pub seconds: HashMap<String, f64>,
    pub images: Vec<ImageScore>,
    /// Files written into OUT (relative), so a rerun removes what it no longer writes.
    pub output_files: Vec<PathBuf>,
    /// The digest of the detector code that wrote the maps ([`super::DETECT_CODE`]).
    #[serde(default)]
    pub code: String,
}

impl StageSummary for DetectReport {
    const FILE: &'static str = REPORT_FILE;
    fn written_files(&self) -> Vec<PathBuf> {
        self.output_files.clone()
    }
}

fn map_path(f: &TypedFile) -> PathBuf {
    let name = format!("{}.png", f.stem);
    if f.type_name.is_empty() {
        PathBuf::from(name)
    } else {
        Path::new(&f.type_name).join(name)
    }
}

fn evaluate(
    test: &[TypedFile],
    scores: &[f32],
    maps: &MapSpill,
    masks: Option<&[Option<PathBuf>]>,
) -> Result<Metrics> {
    let normal: Vec<bool> = test.iter().map(|f| is_normal(&f.type_name)).collect();
    let n_normal = normal.iter().filter(|&&n| n).count();
    let mut m = Metrics {
        normal_test_images: n_normal,
        defect_test_images: test.len() - n_normal,
        ..Default::default()
    };
    let defect: Vec<bool> = normal.iter().map(|n| !n).collect();
    m.image_auroc = auroc(scores, &defect);
    if m.image_auroc.is_none() {
        log::info!(
            "image AUROC skipped: it needs both normal test images (a `{NORMAL_TYPE}` folder in --test) and defective ones"
        );
    }
    if let Some(masks) = masks {
        let pb = crate::logging::progress(test.len() as u64, "pixel eval");
        let mut set = PixelSet::default();
        for (i, mask) in masks.iter().enumerate() {
            let (map, w, h) = maps.read(i)?;
            let mask = mask.as_deref().map(read_mask).transpose()?;
            set.add(&map, &mask_at(mask, w, h));
            pb.inc(1);
        }
        pb.finish_and_clear();
        match set.metrics() {
            Some(pm) => {
                m.pixel_auroc = Some(pm.auroc);
                m.aupro = Some(pm.aupro);
            }
            None => {
                log::info!("pixel metrics skipped: the masks hold no defect pixel or no normal one")
            }
        }
    }
    Ok(m)
}

/// The extractor the spec names, its weights loaded.
fn extractor(spec: &DetectSpec) -> Result<FeatureExtractor> {
    let fx = match spec.backbone.as_str() {
        EFFICIENTNET => {
            FeatureExtractor::efficientnet(&spec.stages, spec.weights.as_deref(), spec.device)
        }
        _ => FeatureExtractor::vit(
            dinov2_arch(),
            &spec.blocks,
            spec.weights.as_deref(),
            spec.run_kind(),
            spec.device,
        ),
    }?;
    let fx = match spec.aggregate {
        Some(k) => fx.with_aggregate(k)?,
        None => fx,
    };
    if !spec.per_block && spec.aggregate_sizes.is_empty() {
        return Ok(fx);
    }
    let sizes = match spec.aggregate_sizes.is_empty() {
        true => vec![spec.aggregate.unwrap_or(1)],
        false => spec.aggregate_sizes.clone(),
    };
    fx.with_slicing(Slicing {
        per_block: spec.per_block,
        sizes,
    })
}

/// Runs the detector; see the module doc of [`crate::detect`].
pub fn run(spec: &DetectSpec) -> Result<DetectReport> {
    check_spec(spec)?;
    let train = match (&spec.train, spec.zero_shot) {
        (Some(t), false) => list_images(t, "--train")?,
        _ => Vec::new(),
    };
    let test = list_images(&spec.test, "--test")?;
    let masks = match &spec.masks {
        Some(dir) => Some(masks_of(dir, &test)?),
        None => None,
    };
    if spec.zero_shot && test.len() < 2 {
        return Err(Error::input(
            &spec.test,
            format!(
                "--zero-shot scores each test image against the other test images, and --test has {} image; \
                 give at least 2, or give --train with normal images instead of --zero-shot",
                test.len()
            ),
        ));
    }
    // Seeded so random weights (tests) are the same in every run; loads the weights before OUT
    // is touched, so a bad weights file or block list leaves no output folder behind.
    tch::manual_seed(spec.seed as i64);
    let fx = extractor(spec)?;
    let mut inputs = vec![("--test", spec.test.as_path())];
    if let (Some(t), false) = (&spec.train, spec.zero_shot) {
        inputs.push(("--train", t.as_path()));
    }
    if let Some(m) = &spec.masks {
        inputs.push(("--masks", m.as_path()));
    }
    let fingerprint = crate::fingerprint::to_value(&spec.fingerprint());
    prepare_output_dir(&spec.out, &inputs, "detect", &fingerprint, spec.overwrite)?;
    let output = StageOutput::<DetectReport>::open(&spec.out);

    let inp = Inputs {
        size: spec.image_size,
        resize: spec.resize,
        batch_size: spec.batch_size,
        seed: spec.seed,
        blur: spec.blur,
    };
    let test_paths: Vec<&Path> = test.iter().map(|f| f.path.as_path()).collect();
    let mut seconds = HashMap::new();
    let t = Instant::now();
    let (fitted, held) = split_holdout(&train, spec.holdout, spec.seed)?;
    // `fuse_cnn: auto`: fitted normals scored as if held out (check_spec keeps it from `holdout`).
    let auto_held = match (spec.fuse_cnn, spec.zero_shot) {
        (CnnMix::Auto, false) => held_out_indices(fitted.len(), spec.seed),
        _ => Vec::new(),
    };
    let mut vit_bank = None;
    let (reference, n_pool, n_bank, n_refs) = if spec.zero_shot {
        log::info!(
            "zero-shot: scoring {} test images against up to {} of the others",
            test.len(),
            spec.zero_shot_refs
        );
        let r = reference::mutual(
            &fx,
            &test_paths,
            inp,
            spec.zero_shot_refs,
            spec.zero_shot_fraction,
        )?;
        let n = match &r {
            Reference::Mutual { refs, .. } => refs.len(),
            Reference::Bank { .. } => 0,
        };
        (r, 0, 0, n)
    } else {
        log::info!(
            "fitting on {} normal images from {}",
            train.len(),
            spec.train.as_deref().unwrap_or(Path::new("")).display()
        );
        if !held.is_empty() {
            log::info!(
                "holding {} of the {} normal images out of the bank (MEBin's floor)",
                held.len(),
                train.len()
            );
        }
        let bank = reference::fit_bank(&fx, &fitted, inp, spec.max_patches, spec.coreset)?;
        let (k, n_pool) = (bank.bank.size()[0] as usize, bank.pool);
        log::info!("memory bank: {k} of {n_pool} patches ({} dims)", fx.dim());
        let r = Reference::bank(bank.bank.shallow_clone(), fx.slices());
        vit_bank = Some(bank).filter(|_| !auto_held.is_empty());
        (r, n_pool, k, 0)
    };
    let mutual = match spec.fuse_mutual > 0.0 {
        true => Some(reference::mutual(
            &fx,
            &test_paths,
            inp,
            spec.zero_shot_refs,
            spec.zero_shot_fraction,
        )?),
        false => None,
    };
    seconds.insert("fit".to_string(), t.elapsed().as_secs_f64());

    let t = Instant::now();
    let written: Vec<bool> = test
        .iter()
        .map(|f| spec.write_good_maps || !is_normal(&f.type_name))
        .collect();
    let scored = scoring::score(
        &fx,
        &reference,
        mutual.as_ref().map(|m| (m, spec.fuse_mutual)),
        scoring::ToScore {
            test: &test_paths,
            held: &held,
            written: &written,
            // Pooled under the map as written: not when the CNN's maps are mixed in after
            // (under `auto`, dropped if they are).
            pool: (!spec.fuse_cnn.always()).then_some(Pooling::Soft { tau: spec.pool_tau }),
            spill: MapSpill::FILE,
        },
        inp,
        &spec.out,
    )?;
    drop(reference);
    drop(mutual);
    let th = Instant::now();
    let vit_held = match &vit_bank {
        Some(b) => held_out_scores(&fx, b, &fitted, &auto_held, inp)?,
        None => Vec::new(),
    };
    drop(vit_bank);
    if !auto_held.is_empty() {
        seconds.insert("held_out".to_string(), th.elapsed().as_secs_f64());
    }
    let flagged: Vec<bool> = test.iter().map(|f| !is_normal(&f.type_name)).collect();
    let job = Job {
        spec,
        inp,
        out: &spec.out,
        fitted: &fitted,
        test: &test_paths,
        held: &auto_held,
        written: &written,
        flagged: &flagged,
    };
    let vit = Scores {
        maps: scored.maps,
        test: scored.scores,
        held: vit_held,
    };
    let (maps_spill, scores, cnn_choice) = beside_vit(job, vit)?;
    let mixed = cnn_choice
        .as_ref()
        .map_or(spec.fuse_cnn.weight(), |c| c.weight);
    // `holdout`'s floor, from the ViT's maps (the CNN's mix is refused beside it).
    let normal_floor = scored.normal_floor;
    let pooled_features = match (&scored.pooled, mixed > 0.0) {
        (Some(rows), false) => Some(write_pooled(&spec.out, &test, rows)?),
        _ => None,
    };
    seconds.insert("scoring".to_string(), t.elapsed().as_secs_f64());

    let t = Instant::now();
    let (lo, hi) = (maps_spill.lo, maps_spill.hi);
    let mut images = Vec::with_capacity(test.len());
    for (f, &s) in test.iter().zip(&scores) {
        let write = spec.write_good_maps || !is_normal(&f.type_name);
        images.push(ImageScore {
            type_name: f.type_name.clone(),
            stem: f.stem.clone(),
            score: s,
            map: write.then(|| map_path(f)),
        });
    }
    let pb = crate::logging::progress(test.len() as u64, "writing maps");
    images
        .par_iter()
        .enumerate()
        .try_for_each(|(i, im)| -> Result<()> {
            if let Some(rel) = &im.map {
                let (map, w, h) = maps_spill.read(i)?;
                let img = GrayImage::from_raw(w, h, maps::to_u8(&map, lo, hi))
                    .expect("map has w*h levels");
                save_image_atomic(&image::DynamicImage::ImageLuma8(img), &spec.out.join(rel))?;
            }
            pb.inc(1);
            Ok(())
        })?;
    pb.finish_and_clear();
    seconds.insert("writing".to_string(), t.elapsed().as_secs_f64());

    let t = Instant::now();
    let mut metrics = evaluate(&test, &scores, &maps_spill, masks.as_deref())?;
    drop(maps_spill);
    if let (Some(m), true) = (&spec.masks, images.iter().any(|i| i.map.is_some())) {
        // What reaches MEBin: the written 8-bit maps, their crops on the test images.
        let loc = super::localize::evaluate_folders(&MapsEvalSpec {
            anomaly_maps: spec.out.clone(),
            masks: m.clone(),
            images: Some(spec.test.clone()),
            skip_unpaired: true,
            progress: true,
        })?;
        metrics.localization = Some(loc.report);
    }
    seconds.insert("evaluation".to_string(), t.elapsed().as_secs_f64());

    let mut output_files: Vec<PathBuf> = images.iter().filter_map(|i| i.map.clone()).collect();
    output_files.extend(
        pooled_features
            .iter()
            .flat_map(|_| [DETECT_FEATURES_FILE, DETECT_IMAGES_FILE].map(PathBuf::from)),
    );
    output_files.push(PathBuf::from(REPORT_FILE));
    let report = DetectReport {
        backbone: spec.backbone.clone(),
        weights: spec.weights_name(),
        image_size: spec.image_size,
        resize: spec.resize,
        stages: spec.stages.clone(),
        blocks: spec.blocks.clone(),
        aggregate: spec.aggregate,
        per_block: spec.per_block,
        aggregate_sizes: spec.aggregate_sizes.clone(),
        fuse_mutual: spec.fuse_mutual,
        fuse_cnn: mixed,
        cnn_choice,
        holdout: spec.holdout,
        blur: spec.blur,
        precision: kind_name(fx.kind()),
        feature_dim: fx.dim(),
        coreset_fraction: spec.coreset,
        max_patches: spec.max_patches,
        zero_shot: spec.zero_shot,
        zero_shot_refs: n_refs,
        seed: spec.seed,
        train_images: fitted.len(),
        normal_floor,
        pooled_features,
        pool_tau: spec.pool_tau,
        pool_patches: n_pool,
        memory_bank: n_bank,
        scale: (lo, hi),
        metrics,
        seconds,
        images,
        output_files,
        code: super::DETECT_CODE.to_string(),
    };
    output.finish(&report)?;
    Ok(report)
}

/// Writes the test images' pooled features and their images' list into `out`; returns the
/// features' file name.
fn write_pooled(out: &Path, test: &[TypedFile], rows: &ndarray::Array2<f32>) -> Result<PathBuf> {
    crate::cluster::features::save_tokens(&out.join(DETECT_FEATURES_FILE), rows.view())?;
    let mut w = csv::Writer::from_writer(Vec::new());
    let bad = |e: csv::Error| Error::runtime(format!("{DETECT_IMAGES_FILE}: {e}"));
    w.write_record(["image"]).map_err(bad)?;
    for f in test {
        let key = map_path(f).with_extension("");
        w.write_record([key.to_string_lossy().as_ref()])
            .map_err(bad)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| Error::runtime(format!("{DETECT_IMAGES_FILE}: {e}")))?;
    crate::fsutil::atomic_write(&out.join(DETECT_IMAGES_FILE), &bytes)?;
    Ok(PathBuf::from(DETECT_FEATURES_FILE))
}

pub(super) fn earlier_pool_tau() -> f64 {
    1.0
}

fn default_blur() -> f64 {
    maps::SIGMA
}
