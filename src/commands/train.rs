//! `anomalyncd train --config FILE`: binarize and crop the novel images, train the mask-guided
//! ViT guided by the base set, evaluate and save.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};

use super::{estimate_num_classes, parse_num_classes, Ctx, NormalTypes, NumClasses};
use crate::config::Config;
use crate::data::{
    CropCache, CropSet, EvalLoader, LoaderOptions, NovelSource, TrainLoader, TransformSpec,
};
use crate::error::Error;
use crate::infer::merge::default_merge_temperature;
use crate::infer::predict::{crop_logits, predict};
use crate::model::{resolve_backbone_weights, Model};
use crate::train::checkpoint::{self, CheckpointMeta};
use crate::train::losses::Criterion;
use crate::train::trainer::{self, TrainPlan};

/// The checkpoint's file name in the run folder (`checkpoint.json` is written beside it).
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DatasetLayout {
    /// <dataset-path>/<category>/test/<type>/
    Mvtec,
    /// <dataset-path>/<type>/
    Mtd,
    /// <dataset-path>/<type>/ or a flat folder of images
    Folder,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Config file (the reference's configs/AnomalyNCD.yaml loads unchanged).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override a config key, e.g. --set training.epochs=5 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
    /// Layout of --dataset-path.
    #[arg(long, value_enum, default_value = "mvtec")]
    pub dataset: DatasetLayout,
    /// Novel category name (MVTec product, or a name for the run).
    #[arg(long)]
    pub category: Option<String>,
    /// Novel images.
    #[arg(long, value_name = "DIR")]
    pub dataset_path: Option<PathBuf>,
    /// Novel anomaly maps.
    #[arg(long, value_name = "DIR")]
    pub anomaly_map_path: Option<PathBuf>,
    /// Where MEBin writes binary masks.
    #[arg(long, value_name = "DIR")]
    pub binary_data_path: Option<PathBuf>,
    /// Where MEBin writes crops.
    #[arg(long, value_name = "DIR")]
    pub crop_data_path: Option<PathBuf>,
    /// Labelled base crops: images/<class>/, masks/<class>/.
    #[arg(long, value_name = "DIR")]
    pub base_data_path: Option<PathBuf>,
    /// Name of the run folder under experiment.exp_root.
    #[arg(long, default_value = "AnomalyNCD")]
    pub runner_name: String,
    /// Reuse existing crops in --crop-data-path instead of binarizing again.
    #[arg(long)]
    pub skip_binarize: bool,
    /// Number of novel clusters: N, or `auto` to estimate it from the pretrained class tokens
    /// before training (default: the number of novel type folders; needed for a flat folder).
    #[arg(long, value_name = "N|auto")]
    pub num_classes: Option<String>,
    /// Largest K that --num-classes auto considers.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub max_classes: usize,
    /// Continue from the run folder's last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Backbone weights (.pth or .safetensors), overriding models.backbone_weights.
    #[arg(long, value_name = "FILE")]
    pub backbone_weights: Option<PathBuf>,
    /// Train anew over an earlier run's checkpoint in the same run folder.
    #[arg(long)]
    pub overwrite: bool,
    /// Stop after this many epochs (checkpoint written); finish later with --resume.
    #[arg(long, value_name = "N")]
    pub stop_after: Option<usize>,
    #[command(flatten)]
    pub normal: NormalTypes,
}

pub fn run(a: &TrainArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let mut cfg = Config::load(a.config.as_deref(), &a.set)?;
    let num_classes = parse_num_classes(a.num_classes.as_deref())?;
    let dataset_path = a
        .dataset_path
        .as_deref()
        .ok_or_else(|| Error::usage("--dataset-path is required (the novel images)"))?;
    let category = match (&a.category, a.dataset) {
        (Some(c), _) => c.clone(),
        (None, DatasetLayout::Mvtec) => {
            return Err(Error::usage(
                "--category is required with --dataset mvtec (the product folder)",
            )
            .into())
        }
        (None, _) => dataset_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "dataset".into()),
    };
    let images = match a.dataset {
        DatasetLayout::Mvtec => dataset_path.join(&category).join("test"),
        _ => dataset_path.to_path_buf(),
    };
    let run_dir = cfg.experiment.exp_root.join(&a.runner_name).join(&category);
    let ckpt_path = run_dir.join(CHECKPOINT_FILE);
    let binarize_out = a
        .crop_data_path
        .as_ref()
        .map(|p| p.join(&category))
        .unwrap_or_else(|| run_dir.join("binarize"));
    let base = a
        .base_data_path
        .as_deref()
        .ok_or_else(|| Error::usage("--base-data-path is required (labelled base crops: images/<class>/, masks/<class>/; see `anomalyncd prepare-base`)"))?;
    if !base.is_dir() {
        return Err(Error::input(
            base,
            "--base-data-path: folder not found (expected images/<class>/ and masks/<class>/)",
        )
        .into());
    }
    if a.resume && !ckpt_path.is_file() {
        return Err(Error::usage(format!(
            "--resume: no checkpoint at {}; start without --resume",
            ckpt_path.display()
        ))
        .into());
    }
    if !a.resume && ckpt_path.is_file() && !a.overwrite {
        return Err(Error::usage(format!(
            "{} already holds a trained model; pass --resume to continue it, --overwrite to train anew, or another --runner-name",
            run_dir.display()
        ))
        .into());
    }
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("creating the run folder {}", run_dir.display()))?;
    crate::logging::add_log_file(&run_dir.join("log.txt"))
        .with_context(|| format!("opening {}/log.txt", run_dir.display()))?;
    log::info!("run folder {}", run_dir.display());

    // 1. MEBin binarization and cropping of the novel images.
    let summary = if a.skip_binarize {
        let s = crate::mebin::folders::read_summary(&binarize_out).with_context(|| {
            format!(
                "--skip-binarize: reading the earlier binarization in {}",
                binarize_out.display()
            )
        })?;
        log::info!("reusing the crops in {}", binarize_out.display());
        s
    } else {
        let maps_root = a
            .anomaly_map_path
            .as_deref()
            .ok_or_else(|| Error::usage("--anomaly-map-path is required unless --skip-binarize"))?;
        let maps = if maps_root.join(&category).is_dir() {
            maps_root.join(&category)
        } else {
            maps_root.to_path_buf()
        };
        crate::mebin::folders::binarize_folders(
            &maps,
            &images,
            &binarize_out,
            &cfg,
            crate::mebin::RangeSource::FromMaps {
                min_threshold: cfg.binarization.min_threshold,
            },
            &a.normal.pairing(false, true),
            a.overwrite,
        )
        .with_context(|| format!("binarizing the novel maps in {}", maps.display()))?
    };
    if let Some(dir) = &a.binary_data_path {
        copy_binary_masks(&binarize_out, &dir.join(&category), &images, a.overwrite)
            .with_context(|| format!("--binary-data-path {}", dir.display()))?;
    }

    // 2. Data, and the number of novel clusters.
    let resume = if a.resume {
        Some(checkpoint::load(&ckpt_path)?)
    } else {
        None
    };
    let fixed = match num_classes {
        NumClasses::FromFolders => None,
        NumClasses::Fixed(k) => Some(k),
        // A resumed run keeps the K it estimated; a new one estimates it below.
        NumClasses::Auto => Some(resume.as_ref().map_or(1, |ck| ck.meta.num_novel_clusters)),
    };
    let mut set = CropSet::load(base, &NovelSource::from_binarize_out(&binarize_out), fixed)?;
    let weights = resolve_backbone_weights(&cfg.models, a.backbone_weights.as_deref())?;
    if let Some(w) = &weights {
        cfg.models.backbone_weights = Some(w.clone());
    }
    let k_estimate = match (num_classes, &resume) {
        (NumClasses::Auto, Some(ck)) => ck.meta.num_classes_estimate.clone(),
        (NumClasses::Auto, None) => {
            let probe = Arc::new(set.clone());
            tch::manual_seed(cfg.experiment.seed as i64);
            let m = Model::new(&cfg, probe.num_classes(), weights.as_deref(), ctx.device)?;
            let (est, _) = estimate_num_classes(&m, &probe, &cfg, a.max_classes, ctx.device)?;
            set.num_novel_clusters = est.chosen;
            Some(est)
        }
        _ => None,
    };
    let set = Arc::new(set);
    log::info!(
        "{} base crops in {} classes, {} novel crops -> {} novel clusters",
        set.base_indices().len(),
        set.num_base_classes(),
        set.novel_indices().len(),
        set.num_novel_clusters
    );
    let spec = TransformSpec::new(cfg.models.image_size as u32);
    let cache = Arc::new(CropCache::build(&set, &spec, cfg.training.num_workers)?);
    let loader = TrainLoader::new(
        set.clone(),
        spec,
        LoaderOptions::from_config(&cfg),
        Some(cache.clone()),
    )?;

    // 3. Model, loss and training.
    // Seed libtorch too: the projector (and a backbone without weights) is randomly initialised.
    tch::manual_seed(cfg.experiment.seed as i64);
    let mut model = Model::new(&cfg, set.num_classes(), weights.as_deref(), ctx.device)?;
    let criterion = Criterion::new(
        &cfg.loss,
        set.num_base_classes(),
        set.num_classes(),
        cfg.training.epochs,
    )?;
    let mvtec_style = a.dataset == DatasetLayout::Mvtec;
    let merge_temperature = cfg
        .inference
        .merge_temperature
        .unwrap_or(default_merge_temperature(mvtec_style));
    if let Some(ck) = &resume {
        check_resumable(&ck.meta, &cfg, &set, &ckpt_path)?;
    }
    let meta = CheckpointMeta {
        format_version: checkpoint::FORMAT_VERSION,
        anomalyncd_version: env!("CARGO_PKG_VERSION").into(),
        libtorch_version: crate::device::libtorch_version().into(),
        config: cfg.clone(),
        category: category.clone(),
        base_classes: set.base_classes.clone(),
        novel_classes: set.novel_types.clone(),
        num_novel_clusters: set.num_novel_clusters,
        epoch: 0,
        chosen_head: 0,
        backbone: cfg.models.pretrained_backbone.clone(),
        mask_layers: cfg.models.mask_layers,
        anomaly_scores: Some(crate::fsutil::absolute(
            &binarize_out.join(crate::mebin::run::SCORES_FILE),
        )),
        search_range: Some((summary.min_th, summary.max_th)),
        float_scale: summary.float_scale,
        merge_temperature,
        history: Vec::new(),
        num_classes_estimate: k_estimate,
        cluster_classes: Vec::new(),
    };
    let plan = TrainPlan {
        cfg: &cfg,
        device: ctx.device,
        checkpoint: ckpt_path.clone(),
        meta,
        resume,
        stop_after: a.stop_after,
    };
    crate::train::interrupt::install();
    let outcome = trainer::train(&mut model, &loader, &criterion, plan)?;
    if outcome.stopped {
        println!(
            "stopped after epoch {} of {}; continue with the same command and --resume ({})",
            outcome.meta.epoch,
            cfg.training.epochs,
            ckpt_path.display()
        );
        return Ok(());
    }

    // 4. Evaluation on the novel crops, as the reference does at the end of training.
    let eval = EvalLoader::new(
        set.clone(),
        set.novel_indices(),
        spec,
        cfg.training.batch_size,
        cfg.training.num_workers,
        Some(cache),
    )?;
    let outputs = crop_logits(&model, &eval, ctx.device)?;
    let preds = predict(&set, &outputs, outcome.meta.chosen_head, merge_temperature)?;
    let table = cfg
        .experiment
        .exp_root
        .join(&a.runner_name)
        .join("metrics.csv");
    let head = outcome.meta.chosen_head;
    let res = super::write_outputs(
        &run_dir,
        &table,
        &category,
        &set,
        &preds,
        head,
        &binarize_out,
        &[],
    )?;
    if res.is_some() {
        remember_cluster_classes(&ckpt_path, &set.novel_types, &preds)?;
    }
    match res {
        Some((nmi, ari, f1)) => println!(
            "{category}: NMI {nmi:.4}  ARI {ari:.4}  F1 {f1:.4}  (image level; run folder {})",
            run_dir.display()
        ),
        None => println!(
            "predictions in {}",
            run_dir.join("predictions.csv").display()
        ),
    }
    log::info!("checkpoint: {}", ckpt_path.display());
    Ok(())
}

/// Stores in the checkpoint the class each cluster matched in this evaluation, so that
/// `predict` can name its clusters.
fn remember_cluster_classes(
    ckpt_path: &std::path::Path,
    novel: &[String],
    preds: &crate::infer::predict::Predictions,
) -> anyhow::Result<()> {
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

fn check_resumable(
    meta: &CheckpointMeta,
    cfg: &Config,
    set: &CropSet,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let same = meta.backbone == cfg.models.pretrained_backbone
        && meta.base_classes == set.base_classes
        && meta.num_novel_clusters == set.num_novel_clusters
        && meta.config.training.epochs == cfg.training.epochs
        && meta.config.models == cfg.models;
    if !same {
        return Err(Error::input(
            path,
            "--resume: the checkpoint was trained with another backbone, class set, epoch count or model config; resume with the same config and data, or start anew with --overwrite",
        )
        .into());
    }
    Ok(())
}

/// The reference writes MEBin's binary masks to `--binary-data-path/<category>/<type>/<stem>.png`;
/// ours live in the crop folder (`binary/`), copied there when the flag is given.
fn copy_binary_masks(
    binarize_out: &std::path::Path,
    dest: &std::path::Path,
    images: &std::path::Path,
    overwrite: bool,
) -> crate::error::Result<()> {
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
    let files = crate::mebin::folders::list_files(&src, &["png"])?;
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
