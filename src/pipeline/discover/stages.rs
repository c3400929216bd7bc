//! Running one stage of a `discover` plan with the library stage it wraps.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::plan::{self, StageKind};
use super::record::{self, StageRecord, STAGE_FILE};
use super::summary::{BaseCounts, BinarizeCounts, MapsCounts, StageSummary};
use super::{pairing, DiscoverSpec, Found, PlannedStage, Prepared};
use crate::detect::DetectSpec;
use crate::error::{Error, Result};
use crate::mebin::base::PrepareBaseSpec;
use crate::mebin::BinarizeSpec;
use crate::pipeline::{TrainOutcome, TrainSpec};
use crate::synth::SynthSpec;

pub(super) enum Ran {
    /// The stage's summary for its `stage.json`.
    Done(StageSummary),
    Stopped(String),
}

pub(super) fn run_stage(spec: &DiscoverSpec, p: &Prepared, ps: &PlannedStage) -> Result<Ran> {
    let st = &ps.stage;
    let previous = record::read(&st.dir);
    // A record of an earlier run must not outlive a stage that now runs again.
    let _ = std::fs::remove_file(st.dir.join(STAGE_FILE));
    let base_summary = |s: crate::mebin::base::BaseSummary| {
        let crops: usize = s.records.iter().map(|r| r.crop_boxes.len()).sum();
        Ran::Done(StageSummary::Base(BaseCounts {
            images: s.records.len(),
            crops,
        }))
    };
    match &st.kind {
        StageKind::SynthBase => {
            let dir = spec.out.join("synth_base");
            let synth = SynthSpec {
                seed: plan::SYNTH_BASE_SEED,
                per_type: 1,
                normal: 0,
                per_base_class: plan::SYNTH_BASE_PER_CLASS,
                size: plan::SYNTH_BASE_SIZE,
            };
            crate::synth::write_dataset(&dir, &synth, true)?;
            let base = dir.join("base");
            crop_base(&base.join("images"), &base.join("masks"), &st.dir).map(base_summary)
        }
        StageKind::CropBase { images, masks } => {
            crop_base(images, masks, &st.dir).map(base_summary)
        }
        StageKind::Detect {
            train,
            write_good_maps,
            image_size,
        } => {
            let job = detect_spec(
                spec,
                p.detector_weights.clone(),
                &st.dir,
                train,
                *write_good_maps,
                *image_size,
            );
            let r = crate::detect::run(&job)?;
            let maps = r.images.iter().filter(|i| i.map.is_some()).count();
            Ok(Ran::Done(StageSummary::Maps(MapsCounts {
                maps,
                zero_shot: r.zero_shot,
                train_images: r.train_images,
                image_auroc: r.metrics.image_auroc,
                scored: r.images.len(),
                cnn_choice: r.cnn_choice.clone(),
            })))
        }
        StageKind::Binarize { maps } => {
            // A detector run with held-out normals (`detect.holdout`) leaves a floor for MEBin's
            // range; a floor set in the config wins.
            let mut binarization = spec.config.binarization.clone();
            if binarization.min_threshold.is_none()
                && maps.join(crate::detect::REPORT_FILE).is_file()
            {
                if let Some(floor) = crate::detect::normal_floor(maps)? {
                    log::info!("MEBin floor {floor:.1} from the held-out normal images' maps");
                    binarization.min_threshold = Some(floor);
                }
            }
            let job = BinarizeSpec::from_maps(
                maps,
                &spec.images,
                &st.dir,
                &binarization,
                pairing(),
                true,
            );
            let s = crate::mebin::run(&job)?;
            log::info!("{}", s.describe(&st.dir));
            let crops: usize = s.records.iter().map(|r| r.crop_boxes.len()).sum();
            let peaks = s.records.iter().filter(|r| r.peak_fallback).count();
            Ok(Ran::Done(StageSummary::Binarize(BinarizeCounts {
                maps: s.records.len(),
                crops,
                normal_maps: s.normal_maps,
                peak_fallback: peaks,
            })))
        }
        StageKind::Train => run_train(spec, p, ps, previous),
    }
}

fn crop_base(images: &Path, masks: &Path, out: &Path) -> Result<crate::mebin::base::BaseSummary> {
    crate::mebin::base::run(&PrepareBaseSpec {
        images: images.to_path_buf(),
        masks: masks.to_path_buf(),
        out: out.to_path_buf(),
        max_crops: plan::BASE_MAX_CROPS,
        max_per_class: None,
        overwrite: true,
    })
}

/// The detector job of the maps stage into `dir`, with the resolved `weights` (None: random):
/// also what the stage's fingerprint records ([`record::fingerprints`]), so the two cannot
/// disagree.
pub(super) fn detect_spec(
    spec: &DiscoverSpec,
    weights: Option<PathBuf>,
    dir: &Path,
    train: &Option<PathBuf>,
    write_good_maps: bool,
    image_size: u32,
) -> DetectSpec {
    let mut job = DetectSpec {
        image_size,
        write_good_maps,
        overwrite: true,
        // One setting for the run's ViT blocks: the detector's and the frozen prefix's.
        precision: spec.config.models.precision,
        ..DetectSpec::with_defaults(
            train.clone(),
            spec.images.clone(),
            dir.to_path_buf(),
            weights,
            spec.device,
        )
    };
    spec.config.detect.apply(&mut job);
    // The CNN beside the ViT: random with a random ViT (tests), else the offline default file
    // (a fixed weight refuses to run without it, `auto` keeps the ViT alone).
    if job.fuse_cnn.is_on() && job.weights.is_some() {
        job.cnn_weights = crate::detect::find_cnn_weights();
    }
    job
}

/// Training, resumed from its checkpoint when an earlier run of the same stage stopped.
fn run_train(
    spec: &DiscoverSpec,
    p: &Prepared,
    ps: &PlannedStage,
    previous: Option<StageRecord>,
) -> Result<Ran> {
    let st = &ps.stage;
    let ckpt = st.dir.join(crate::checkpoint::CHECKPOINT_FILE);
    let resume = spec.resume
        && ckpt.is_file()
        && previous.is_some_and(|r| !r.finished && r.digest == ps.digest);
    // Trained earlier with the same fingerprint; only `inference` changed (the plan saw the
    // checkpoint; should it be gone by now, the train stage says so).
    let evaluate_only = ps.evaluated_earlier.is_some();
    std::fs::create_dir_all(&st.dir).map_err(|e| Error::io(&st.dir, e))?;
    record::write(&st.dir, &StageRecord::of(ps, false, 0.0, Value::Null))?;
    if resume {
        log::info!("continuing the training from {}", ckpt.display());
    }
    let category = spec
        .out
        .file_name()
        .map_or("discover".into(), |n| n.to_string_lossy().into_owned());
    let train = TrainSpec {
        config: spec.config.clone(),
        category,
        images: spec.images.clone(),
        maps: None,
        source_maps: Some(p.plan.maps.clone()),
        run_dir: st.dir.clone(),
        binarize_out: spec.out.join("binarize"),
        binary_copy: None,
        base: p.plan.base.clone(),
        num_classes: spec.num_classes,
        max_classes: spec.max_classes,
        weights: p.model_weights.clone(),
        resume,
        overwrite: !resume && !evaluate_only,
        evaluate_only,
        stop_after: spec.stop_after_epochs,
        pairing: pairing(),
        mvtec_style: false,
        table: st.dir.join("metrics.csv"),
        token_cache: spec.token_cache.clone(),
        device: spec.device,
    };
    match crate::pipeline::train(&train)? {
        TrainOutcome::Stopped { epoch, epochs } => Ok(Ran::Stopped(format!(
            "after epoch {epoch} of {epochs} (checkpoint {})",
            ckpt.display()
        ))),
        TrainOutcome::Finished {
            scores,
            num_clusters,
            estimate,
            answer_k,
            cluster_sizes,
            auto_k,
            training_free,
            cache,
            timing,
        } => {
            // An evaluation redone without the token cache cannot redo the estimate beside a
            // given K; it does not depend on `inference`, so the earlier one stands.
            let earlier_auto_k = match &ps.evaluated_earlier {
                Some(StageSummary::Train(f)) if evaluate_only => f.auto_k,
                _ => None,
            };
            let found = Found {
                num_clusters,
                estimate,
                answer_k,
                cluster_sizes,
                scores,
                auto_k: auto_k.or(earlier_auto_k),
                training_free,
                cache,
                timing: Some(timing),
                inference: Some(spec.config.inference.clone()),
            };
            Ok(Ran::Done(StageSummary::Train(Box::new(found))))
        }
    }
}
