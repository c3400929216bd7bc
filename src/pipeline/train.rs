//! `train`: binarize and crop the novel images, estimate K when asked, train the mask-guided ViT
//! guided by the base set, evaluate on the novel crops and write the run folder.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::Device;

use super::pretrained::{k_read, novel_heads, pretrained_view, training_free_scores};
use super::{add_log_file, io_context};
use crate::checkpoint::{self, CheckpointMeta, CHECKPOINT_FILE};
use crate::cluster::{KEstimate, NumClasses};
use crate::config::Config;
use crate::data::{
    CropCache, CropSet, EvalLoader, LoaderOptions, NovelSource, TrainLoader, TransformSpec,
    ViewSource,
};
use crate::error::{Error, Result, ResultExt};
use crate::infer::answer_k::AnswerK;
use crate::infer::merge::default_merge_temperature;
use crate::infer::predict::{crop_logits, crop_logits_cached, predict};
use crate::mebin::{BinarizeSpec, BinarizeSummary, Pairing};
use crate::metrics::Scores;
use crate::model::{resolve_backbone_weights, Model};
use crate::train::cache::{BankKey, BankOptions, BankOrigin, TokenBank};
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
    /// With `maps` `None`: the maps those crops were made from, when known (`discover`'s), for
    /// `training.neighbor_features: pooled`.
    pub source_maps: Option<PathBuf>,
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
    /// Train nothing: evaluate the finished checkpoint in `run_dir` again, with this spec's
    /// `inference` settings (`discover --resume` after only they changed). The checkpoint's
    /// stored answer and inference settings are replaced, so `test` and `predict` follow.
    pub evaluate_only: bool,
    /// Stop after this many epochs (checkpoint written).
    pub stop_after: Option<usize>,
    /// How maps pair with images (MVTec's `test/good` images have no maps: `only_map_types`).
    pub pairing: Pairing,
    /// MVTec-style data (the reference's region-merging temperature for MVTec).
    pub mvtec_style: bool,
    /// The metrics table the image-level row is appended to.
    pub table: PathBuf,
    /// Where the frozen-prefix token cache is kept (`training.cache_frozen`).
    pub token_cache: TokenCache,
    pub device: Device,
}

/// Where the frozen-prefix token cache lives (see [`crate::train::cache`]).
#[derive(Debug, Clone, PartialEq)]
pub enum TokenCache {
    /// `<run folder>/token_cache`, reused when the run is resumed or redone.
    InRunFolder,
    /// A folder shared by runs: each key has its own file there (`--cache-dir`).
    Dir(PathBuf),
    /// Built for this run only, in memory or in a spill file removed when the run ends
    /// (`--no-token-cache`).
    Off,
}

impl TokenCache {
    /// The cache folder for a run in `run_dir`; `None` when the cache is not kept.
    pub fn dir(&self, run_dir: &Path) -> Option<PathBuf> {
        match self {
            Self::InRunFolder => Some(run_dir.join("token_cache")),
            Self::Dir(d) => Some(d.clone()),
            Self::Off => None,
        }
    }
}

/// Seconds spent in the parts of the `train` stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// The frozen-prefix cache, built or read.
    pub cache_s: f64,
    /// The pretrained class tokens, the K estimate and the training-free k-means.
    pub estimate_s: f64,
    pub train_s: f64,
    pub eval_s: f64,
}

impl TrainSpec {
    pub fn checkpoint(&self) -> PathBuf {
        self.run_dir.join(CHECKPOINT_FILE)
    }
}

/// How a training run ended.
// Returned once per run: the size of its largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum TrainOutcome {
    /// Stopped after `epoch` of `epochs` (`stop_after` or Ctrl-C); resume to finish.
    Stopped { epoch: usize, epochs: usize },
    /// Trained and evaluated: the image-level scores when the crops have labels.
    Finished {
        scores: Option<Scores>,
        /// The number of novel clusters, and the estimate when K was estimated.
        num_clusters: usize,
        estimate: Option<KEstimate>,
        /// How the answer's K was read after training (`inference.num_clusters: auto`).
        answer_k: Option<AnswerK>,
        /// Images per cluster.
        cluster_sizes: Vec<usize>,
        /// The K that `--num-classes auto` chooses on these crops (computed beside a given K
        /// when the token cache makes it cheap).
        auto_k: Option<usize>,
        /// Image-level scores of k-means with the same K on the pretrained class tokens of the
        /// same crops: what training adds.
        training_free: Option<Scores>,
        /// Where the token cache came from, when training used one.
        cache: Option<BankOrigin>,
        timing: Timing,
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
    // Held to the end of the run: a second train here would write the same checkpoint.
    let _lock = crate::runlock::RunLock::acquire(run_dir, "train")?;
    add_log_file(run_dir)?;
    log::info!("run folder {}", run_dir.display());

    // 1. MEBin binarization and cropping of the novel images.
    let summary = binarize(spec, &cfg)?;
    if let Some(dir) = &spec.binary_copy {
        copy_binary_masks(&spec.binarize_out, dir, &spec.images, spec.overwrite)
            .with_context(|| format!("--binary-data-path {}", dir.display()))?;
    }

    // 2. Data, and the number of novel clusters.
    let resume = if spec.resume || spec.evaluate_only {
        Some(checkpoint::load(&ckpt_path)?)
    } else {
        None
    };
    let weights = resolve_backbone_weights(&cfg.models, spec.weights.as_deref())?;
    if let Some(w) = &weights {
        cfg.models.backbone_weights = Some(w.clone());
    }
    let novel =
        NovelSource::from_binarize_out(&spec.binarize_out).with_guidance(cfg.models.guidance);
    let estimate_needed = spec.num_classes == NumClasses::Auto && resume.is_none();
    // With `auto` the set is first loaded with one cluster: the crops, their views and tokens
    // do not depend on K, and the set is loaded again with the estimated K before training.
    let first_k = match (spec.num_classes, &resume) {
        (NumClasses::FromFolders, _) => None,
        (NumClasses::Fixed(k), _) => Some(k),
        (NumClasses::Auto, Some(ck)) => Some(ck.meta.num_novel_clusters),
        (NumClasses::Auto, None) => Some(1),
    };
    let mut set = Arc::new(CropSet::load(spec.base.as_deref(), &novel, first_k)?);
    let transform = TransformSpec::new(cfg.models.image_size as u32);
    let crops = Arc::new(CropCache::build(
        &set,
        &transform,
        cfg.training.num_workers,
    )?);
    let merge_temperature = cfg
        .inference
        .merge_temperature
        .unwrap_or(default_merge_temperature(spec.mvtec_style));

    // 3. The pretrained backbone: the token cache, K and the training-free row.
    let mut timing = Timing::default();
    let t = Instant::now();
    tch::manual_seed(cfg.experiment.seed as i64);
    let pretrained = Model::new(&cfg, set.num_classes(), weights.as_deref(), spec.device)?;
    let bank = match cfg.training.cache_frozen.enabled(spec.device) {
        true => open_bank(spec, &cfg, &set, &crops, &pretrained, weights.as_deref())?,
        false => None,
    };
    timing.cache_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut k_estimate = resume
        .as_ref()
        .and_then(|ck| ck.meta.num_classes_estimate.clone());
    let (mut auto_k, mut training_free, mut neighbours) = (None, None, None);
    // Without a cache the pretrained tokens cost a whole backbone pass: only `auto` and
    // neighbour views by the class tokens pay it (the training-free row comes with them).
    let neighbours_needed = cfg.training.neighbor_views > 0.0 && !spec.evaluate_only;
    let by_tokens = cfg.training.neighbor_features.is_none();
    // The images' pooled features, read or computed once for the neighbour views and the answer.
    let pooled = match neighbours_needed && !by_tokens || cfg.inference.reads_pooled() {
        true => Some(super::neighbours::pooled_images(spec, &cfg, &set)?),
        false => None,
    };
    if !(estimate_needed || bank.is_some() || neighbours_needed && by_tokens) {
        if neighbours_needed {
            neighbours = super::neighbours::neighbour_views(&cfg, &set, None, pooled.as_ref())?;
        }
    } else {
        let cached = bank.as_ref().map(|b| b as &dyn crate::model::PrefixTokens);
        let view = pretrained_view(spec, &cfg, &set, &pretrained, cached, estimate_needed)?;
        if let Some(view) = view {
            auto_k = view.estimate.as_ref().map(|e| e.chosen);
            if let Some(est) = view.estimate.filter(|_| estimate_needed) {
                let again =
                    CropSet::load(spec.base.as_deref(), &novel, Some(novel_heads(&cfg, &est)))?;
                if again.items != set.items {
                    return Err(Error::runtime(
                        "the crops changed while K was estimated; run again",
                    ));
                }
                set = Arc::new(again);
                k_estimate = Some(est);
            }
            let read = k_read(spec, &cfg, k_estimate.as_ref());
            training_free = training_free_scores(
                &cfg,
                &set,
                &view.tokens,
                view.guidance,
                merge_temperature,
                read,
            )?;
            if !spec.evaluate_only {
                neighbours = super::neighbours::neighbour_views(
                    &cfg,
                    &set,
                    Some(&view.tokens),
                    pooled.as_ref(),
                )?;
            }
        }
    }
    drop(pretrained);
    timing.estimate_s = t.elapsed().as_secs_f64();
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

    // 4. Model, loss and training (an evaluation of a finished checkpoint needs neither the
    // loader nor the loss).
    // Seed libtorch too: the projector (and a backbone without weights) is randomly initialised.
    tch::manual_seed(cfg.experiment.seed as i64);
    let mut model = Model::new(&cfg, set.num_classes(), weights.as_deref(), spec.device)?;
    if let Some(ck) = &resume {
        check_resumable(&ck.meta, &cfg, &set, &ckpt_path)?;
    }
    let head = match resume {
        Some(ck) if spec.evaluate_only => {
            trained_weights(&mut model, &ck, &cfg, &ckpt_path, spec.device)?
        }
        resume => {
            // With the bank the neighbours' views come from it; the loader's batches are not
            // read then.
            let loader = TrainLoader::with_neighbours(
                set.clone(),
                transform,
                LoaderOptions::from_config(&cfg),
                Some(crops.clone()),
                neighbours.clone().filter(|_| bank.is_none()),
            )?;
            let criterion = Criterion::new(
                &cfg.loss,
                set.num_base_classes(),
                set.num_classes(),
                cfg.training.epochs,
            )?;
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
                bank: bank.as_ref(),
                neighbours: neighbours.as_ref(),
            };
            crate::train::interrupt::install();
            let t = Instant::now();
            let outcome = trainer::train(&mut model, &loader, &criterion, plan)?;
            timing.train_s = t.elapsed().as_secs_f64();
            if outcome.stopped {
                return Ok(TrainOutcome::Stopped {
                    epoch: outcome.meta.epoch,
                    epochs: cfg.training.epochs,
                });
            }
            outcome.meta.chosen_head
        }
    };

    // 5. Evaluation on the novel crops, as the reference does at the end of training.
    let t = Instant::now();
    let outputs = match &bank {
        Some(bank) => crop_logits_cached(
            &model,
            bank,
            &set.novel_indices(),
            cfg.training.batch_size,
            spec.device,
        )?,
        None => {
            let eval = EvalLoader::new(
                set.clone(),
                set.novel_indices(),
                transform,
                cfg.training.batch_size,
                cfg.training.num_workers,
                Some(crops),
            )?;
            crop_logits(&model, &eval, spec.device)?
        }
    };
    timing.eval_s = t.elapsed().as_secs_f64();
    let mut preds = predict(&set, &outputs, head, merge_temperature)?;
    let pooled_rows = match (&pooled, cfg.inference.reads_pooled()) {
        (Some(p), true) => Some(super::neighbours::image_rows(p, &preds)?),
        _ => None,
    };
    let read = k_read(spec, &cfg, k_estimate.as_ref());
    let answer = crate::infer::answer(
        &mut preds,
        &cfg.inference,
        cfg.experiment.seed,
        pooled_rows.as_ref().map(|r| r.view()),
        read,
    )?;
    let answer_k = answer.k_read.clone();
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
    crate::infer::outputs::store_in_checkpoint(
        &ckpt_path,
        &set.novel_types,
        &preds,
        answer,
        (&cfg.inference, merge_temperature),
    )?;
    log::info!("checkpoint: {}", ckpt_path.display());
    Ok(TrainOutcome::Finished {
        scores,
        num_clusters: preds.num_clusters,
        estimate: k_estimate,
        answer_k,
        cluster_sizes: preds.cluster_sizes(),
        auto_k,
        training_free,
        cache: bank.as_ref().map(|b| b.origin().clone()),
        timing,
    })
}

/// The weights of the finished checkpoint `ck` in `model`, for [`TrainSpec::evaluate_only`];
/// returns its chosen head. A checkpoint that stopped before its last epoch is an error: it
/// needs `--resume`, not a new evaluation.
fn trained_weights(
    model: &mut Model,
    ck: &checkpoint::Checkpoint,
    cfg: &Config,
    path: &Path,
    device: Device,
) -> Result<usize> {
    if ck.meta.epoch < cfg.training.epochs {
        return Err(Error::input(
            path,
            format!(
                "the checkpoint stopped after epoch {} of {}: continue its training with --resume before evaluating it again",
                ck.meta.epoch, cfg.training.epochs
            ),
        ));
    }
    checkpoint::load_model_state(model, &ck.model, path)?;
    checkpoint::refresh_frozen_copies(model, cfg, device);
    log::info!(
        "evaluating the trained checkpoint {} again (no training): only inference settings changed",
        path.display()
    );
    Ok(ck.meta.chosen_head)
}

/// The frozen-prefix cache of `set`: read from the cache folder when an earlier run built it
/// with the same key, else built with `model`'s frozen prefix. With
/// [`TrainSpec::evaluate_only`] an absent cache is not built (`None`: the evaluation runs the
/// whole backbone once per crop, cheaper than a bank of views).
fn open_bank(
    spec: &TrainSpec,
    cfg: &Config,
    set: &Arc<CropSet>,
    crops: &Arc<CropCache>,
    model: &Model,
    weights: Option<&Path>,
) -> Result<Option<TokenBank>> {
    let key = BankKey::new(cfg, set, weights, spec.device)?;
    let cache_dir = spec.token_cache.dir(&spec.run_dir);
    let on_disk = cache_dir
        .as_ref()
        .is_some_and(|d| crate::train::cache::file_exists(d, &key));
    if spec.evaluate_only && !on_disk {
        return Ok(None);
    }
    let src = ViewSource::new(
        set.clone(),
        TransformSpec::new(cfg.models.image_size as u32),
        key.view_seed,
        cfg.training.num_workers,
        Some(crops.clone()),
    )?;
    let opts = BankOptions {
        key,
        cache_dir,
        spill_dir: spec.run_dir.clone(),
        ram_budget: cfg.training.cache_ram_gb.map(|g| (g * 1e9) as u64),
    };
    TokenBank::open_or_build(model, Arc::new(src), &opts, spec.device).map(Some)
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
    if (spec.resume || spec.evaluate_only) && !ckpt_path.is_file() {
        return Err(Error::usage(format!(
            "--resume: no checkpoint at {}; start without --resume",
            ckpt_path.display()
        )));
    }
    if !spec.resume && !spec.evaluate_only && ckpt_path.is_file() && !spec.overwrite {
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
            &spec.binarize_out.join(crate::mebin::job::SCORES_FILE),
        )),
        search_range: Some((summary.min_th, summary.max_th)),
        float_scale: summary.float_scale,
        merge_temperature,
        history: Vec::new(),
        num_classes_estimate,
        cluster_classes: Vec::new(),
        image_centroids: Vec::new(),
        answer_k: None,
    }
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
