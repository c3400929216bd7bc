//! `train`: binarize and crop the novel images, estimate K when asked, train the mask-guided ViT
//! guided by the base set, evaluate on the novel crops and write the run folder.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tch::Device;

use super::{add_log_file, io_context};
use crate::checkpoint::{self, CheckpointMeta, CHECKPOINT_FILE};
use crate::cluster::{estimate_k, KEstimate, NumClasses};
use crate::config::Config;
use crate::data::{
    CropCache, CropSet, EvalLoader, LoaderOptions, NovelSource, TrainLoader, TransformSpec,
};
use crate::error::{Error, Result, ResultExt};
use crate::infer::merge::default_merge_temperature;
use crate::infer::predict::{crop_logits, predict, Predictions};
use crate::mebin::{BinarizeSpec, BinarizeSummary, Pairing};
use crate::model::{resolve_backbone_weights, Model};
use crate::train::losses::Criterion;
use crate::train::trainer::{self, TrainPlan};

/// A validated training request (`anomalyncd train` builds it from its flags).
#[derive(Debug, Clone)]
pub struct TrainSpec {
    pub config: Config,
    /// The run's name (MVTec product, or the dataset folder's name).
    pub category: String,
    /// The novel images: `<type>/` folders or a flat folder.
    pub images: PathBuf,
    /// Their anomaly maps; `None` reuses the crops already in `binarize_out` (`--skip-binarize`).
    pub maps: Option<PathBuf>,
    /// The run folder: checkpoint, log, predictions, report.
    pub run_dir: PathBuf,
    /// Where MEBin writes its crops.
    pub binarize_out: PathBuf,
    /// A copy of MEBin's binary masks as the reference lays them out (`--binary-data-path`).
    pub binary_copy: Option<PathBuf>,
    /// Labelled base crops: `images/<class>/`, `masks/<class>/`; `None` trains without the
    /// supervised base terms (see [`crate::train::losses`]).
    pub base: Option<PathBuf>,
    pub num_classes: NumClasses,
    /// Largest K that [`NumClasses::Auto`] considers.
    pub max_classes: usize,
    /// Backbone weights overriding `models.backbone_weights`.
    pub weights: Option<PathBuf>,
    pub resume: bool,
    pub overwrite: bool,
    /// Stop after this many epochs (checkpoint written).
    pub stop_after: Option<usize>,
    /// How maps pair with images (MVTec's `test/good` images have no maps: `only_map_types`).
    pub pairing: Pairing,
    /// MVTec-style data (the reference's region-merging temperature for MVTec).
    pub mvtec_style: bool,
    /// The metrics table the image-level row is appended to.
    pub table: PathBuf,
    pub device: Device,
}

impl TrainSpec {
    pub fn checkpoint(&self) -> PathBuf {
        self.run_dir.join(CHECKPOINT_FILE)
    }
}

/// How a training run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainOutcome {
    /// Stopped after `epoch` of `epochs` (`stop_after` or Ctrl-C); resume to finish.
    Stopped { epoch: usize, epochs: usize },
    /// Trained and evaluated: the image-level (NMI, ARI, F1) when the crops have labels.
    Finished {
        scores: Option<(f64, f64, f64)>,
        /// The number of novel clusters, and the estimate when K was estimated.
        num_clusters: usize,
        estimate: Option<KEstimate>,
        /// Images per cluster.
        cluster_sizes: Vec<usize>,
    },
}

/// The `train` stage (see the module doc). Input errors are found before the heavy work.
pub fn run(spec: &TrainSpec) -> Result<TrainOutcome> {
    let mut cfg = spec.config.clone();
    let ckpt_path = spec.checkpoint();
    let run_dir = &spec.run_dir;
    check_inputs(spec, &ckpt_path)?;
    std::fs::create_dir_all(run_dir)
        .map_err(|e| io_context(e, format!("creating the run folder {}", run_dir.display())))?;
    add_log_file(run_dir)?;
    log::info!("run folder {}", run_dir.display());

    // 1. MEBin binarization and cropping of the novel images.
    let summary = binarize(spec, &cfg)?;
    if let Some(dir) = &spec.binary_copy {
        copy_binary_masks(&spec.binarize_out, dir, &spec.images, spec.overwrite)
            .with_context(|| format!("--binary-data-path {}", dir.display()))?;
    }

    // 2. Data, and the number of novel clusters.
    let resume = if spec.resume {
        Some(checkpoint::load(&ckpt_path)?)
    } else {
        None
    };
    let weights = resolve_backbone_weights(&cfg.models, spec.weights.as_deref())?;
    if let Some(w) = &weights {
        cfg.models.backbone_weights = Some(w.clone());
    }
    let novel = NovelSource::from_binarize_out(&spec.binarize_out);
    let (set, k_estimate) = match (spec.num_classes, &resume) {
        (NumClasses::FromFolders, _) => (CropSet::load(spec.base.as_deref(), &novel, None)?, None),
        (NumClasses::Fixed(k), _) => (CropSet::load(spec.base.as_deref(), &novel, Some(k))?, None),
        // A resumed run keeps the K it estimated.
        (NumClasses::Auto, Some(ck)) => {
            let k = ck.meta.num_novel_clusters;
            let set = CropSet::load(spec.base.as_deref(), &novel, Some(k))?;
            (set, ck.meta.num_classes_estimate.clone())
        }
        (NumClasses::Auto, None) => {
            let (set, est) = estimated_set(spec, &cfg, &novel, weights.as_deref())?;
            (set, Some(est))
        }
    };
    let set = Arc::new(set);
    if set.num_base_classes() == 0 {
        log::info!("no base set: training without the supervised base terms (cls, SupCon)");
    }
    log::info!(
        "{} base crops in {} classes, {} novel crops -> {} novel clusters",
        set.base_indices().len(),
        set.num_base_classes(),
        set.novel_indices().len(),
        set.num_novel_clusters
    );
    let transform = TransformSpec::new(cfg.models.image_size as u32);
    let cache = Arc::new(CropCache::build(
        &set,
        &transform,
        cfg.training.num_workers,
    )?);
    let loader = TrainLoader::new(
        set.clone(),
        transform,
        LoaderOptions::from_config(&cfg),
        Some(cache.clone()),
    )?;

    // 3. Model, loss and training.
    // Seed libtorch too: the projector (and a backbone without weights) is randomly initialised.
    tch::manual_seed(cfg.experiment.seed as i64);
    let mut model = Model::new(&cfg, set.num_classes(), weights.as_deref(), spec.device)?;
    let criterion = Criterion::new(
        &cfg.loss,
        set.num_base_classes(),
        set.num_classes(),
        cfg.training.epochs,
    )?;
    let merge_temperature = cfg
        .inference
        .merge_temperature
        .unwrap_or(default_merge_temperature(spec.mvtec_style));
    if let Some(ck) = &resume {
        check_resumable(&ck.meta, &cfg, &set, &ckpt_path)?;
    }
    let meta = new_meta(
        spec,
        &cfg,
        &set,
        &summary,
        merge_temperature,
        k_estimate.clone(),
    );
    let plan = TrainPlan {
        cfg: &cfg,
        device: spec.device,
        checkpoint: ckpt_path.clone(),
        meta,
        resume,
        stop_after: spec.stop_after,
    };
    crate::train::interrupt::install();
    let outcome = trainer::train(&mut model, &loader, &criterion, plan)?;
    if outcome.stopped {
        return Ok(TrainOutcome::Stopped {
            epoch: outcome.meta.epoch,
            epochs: cfg.training.epochs,
        });
    }

    // 4. Evaluation on the novel crops, as the reference does at the end of training.
    let eval = EvalLoader::new(
        set.clone(),
        set.novel_indices(),
        transform,
        cfg.training.batch_size,
        cfg.training.num_workers,
        Some(cache),
    )?;
    let outputs = crop_logits(&model, &eval, spec.device)?;
    let head = outcome.meta.chosen_head;
    let preds = predict(&set, &outputs, head, merge_temperature)?;
    let scores = crate::report::write(&crate::report::RunOutputs {
        out: run_dir,
        table: &spec.table,
        category: &spec.category,
        set: &set,
        preds: &preds,
        head,
        binarize_out: &spec.binarize_out,
        trained_names: &[],
    })?;
    if scores.is_some() {
        remember_cluster_classes(&ckpt_path, &set.novel_types, &preds)?;
    }
    log::info!("checkpoint: {}", ckpt_path.display());
    Ok(TrainOutcome::Finished {
        scores,
        num_clusters: set.num_novel_clusters,
        estimate: k_estimate,
        cluster_sizes: preds.cluster_sizes(),
    })
}

/// The checks that need no heavy work: the base folder, and the checkpoint against
/// `--resume` / `--overwrite`.
fn check_inputs(spec: &TrainSpec, ckpt_path: &Path) -> Result<()> {
    if let Some(base) = spec.base.as_ref().filter(|b| !b.is_dir()) {
        return Err(Error::input(
            base,
            "--base-data-path: folder not found (expected images/<class>/ and masks/<class>/)",
        ));
    }
    if spec.resume && !ckpt_path.is_file() {
        return Err(Error::usage(format!(
            "--resume: no checkpoint at {}; start without --resume",
            ckpt_path.display()
        )));
    }
    if !spec.resume && ckpt_path.is_file() && !spec.overwrite {
        return Err(Error::usage(format!(
            "{} already holds a trained model; pass --resume to continue it, --overwrite to train anew, or another --runner-name",
            spec.run_dir.display()
        )));
    }
    Ok(())
}

/// MEBin over the novel maps, or the summary of the earlier binarization to reuse.
fn binarize(spec: &TrainSpec, cfg: &Config) -> Result<BinarizeSummary> {
    let Some(maps) = &spec.maps else {
        let s = crate::mebin::folders::read_summary(&spec.binarize_out).with_context(|| {
            format!(
                "--skip-binarize: reading the earlier binarization in {}",
                spec.binarize_out.display()
            )
        })?;
        log::info!("reusing the crops in {}", spec.binarize_out.display());
        return Ok(s);
    };
    let job = BinarizeSpec::from_maps(
        maps,
        &spec.images,
        &spec.binarize_out,
        &cfg.binarization,
        spec.pairing.clone(),
        spec.overwrite,
    );
    crate::mebin::run(&job)
        .with_context(|| format!("binarizing the novel maps in {}", maps.display()))
}

/// The crop set with K estimated from the pretrained class tokens.
fn estimated_set(
    spec: &TrainSpec,
    cfg: &Config,
    novel: &NovelSource,
    weights: Option<&Path>,
) -> Result<(CropSet, KEstimate)> {
    // The estimate needs the crops first; the set is then rebuilt with the chosen K, so that
    // no set is ever seen with a placeholder K.
    let probe = Arc::new(CropSet::load(spec.base.as_deref(), novel, Some(1))?);
    tch::manual_seed(cfg.experiment.seed as i64);
    let m = Model::new(cfg, probe.num_classes(), weights, spec.device)?;
    let (est, _) = estimate_k(&m, &probe, cfg, spec.max_classes, spec.device)?;
    drop(m);
    let set = CropSet::load(spec.base.as_deref(), novel, Some(est.chosen))?;
    Ok((set, est))
}

fn new_meta(
    spec: &TrainSpec,
    cfg: &Config,
    set: &CropSet,
    summary: &BinarizeSummary,
    merge_temperature: f64,
    num_classes_estimate: Option<KEstimate>,
) -> CheckpointMeta {
    CheckpointMeta {
        format_version: checkpoint::FORMAT_VERSION,
        anomalyncd_version: env!("CARGO_PKG_VERSION").into(),
        libtorch_version: crate::device::libtorch_version().into(),
        config: cfg.clone(),
        category: spec.category.clone(),
        base_classes: set.base_classes.clone(),
        novel_classes: set.novel_types.clone(),
        num_novel_clusters: set.num_novel_clusters,
        epoch: 0,
        chosen_head: 0,
        backbone: cfg.models.pretrained_backbone.clone(),
        mask_layers: cfg.models.mask_layers,
        anomaly_scores: Some(crate::fsutil::absolute(
            &spec.binarize_out.join(crate::mebin::run::SCORES_FILE),
        )),
        search_range: Some((summary.min_th, summary.max_th)),
        float_scale: summary.float_scale,
        merge_temperature,
        history: Vec::new(),
        num_classes_estimate,
        cluster_classes: Vec::new(),
    }
}

/// Stores in the checkpoint the class each cluster matched in this evaluation, so that
/// `predict` can name its clusters.
fn remember_cluster_classes(ckpt_path: &Path, novel: &[String], preds: &Predictions) -> Result<()> {
    let Some(scores) = crate::infer::predict::score(preds)? else {
        return Ok(());
    };
    let names: Vec<String> = (0..preds.num_clusters)
        .map(|k| {
            scores
                .image
                .cluster_to_class
                .get(k)
                .and_then(|&c| novel.get(c).cloned())
                .unwrap_or_default()
        })
        .collect();
    let mut ck = checkpoint::load(ckpt_path)?;
    ck.meta.cluster_classes = names;
    checkpoint::save(ckpt_path, &ck)
        .with_context(|| format!("storing the matched classes in {}", ckpt_path.display()))?;
    Ok(())
}

fn check_resumable(meta: &CheckpointMeta, cfg: &Config, set: &CropSet, path: &Path) -> Result<()> {
    let same = meta.backbone == cfg.models.pretrained_backbone
        && meta.base_classes == set.base_classes
        && meta.num_novel_clusters == set.num_novel_clusters
        && meta.config.training.epochs == cfg.training.epochs
        && meta.config.models == cfg.models;
    if !same {
        return Err(Error::input(
            path,
            "--resume: the checkpoint was trained with another backbone, class set, epoch count or model config; resume with the same config and data, or start anew with --overwrite",
        ));
    }
    Ok(())
}

/// The reference writes MEBin's binary masks to `--binary-data-path/<category>/<type>/<stem>.png`;
/// ours live in the crop folder (`binary/`), copied there when the flag is given.
fn copy_binary_masks(
    binarize_out: &Path,
    dest: &Path,
    images: &Path,
    overwrite: bool,
) -> Result<()> {
    let src = binarize_out.join("binary");
    let fingerprint = serde_json::json!({ "binary_masks_of": crate::fsutil::absolute_value(&src) });
    crate::fsutil::prepare_output_dir(
        dest,
        &[
            ("--dataset-path", images),
            ("the crop folder", binarize_out),
        ],
        "train --binary-data-path",
        &fingerprint,
        overwrite,
    )?;
    let files = crate::imageio::list_files(&src, &["png"])?;
    for f in &files {
        let rel = f.path.strip_prefix(&src).unwrap_or(&f.path);
        let bytes = std::fs::read(&f.path).map_err(|e| Error::io(&f.path, e))?;
        let to = dest.join(rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        crate::fsutil::atomic_write(&to, &bytes)?;
    }
    log::info!("{} binary masks copied to {}", files.len(), dest.display());
    Ok(())
}
