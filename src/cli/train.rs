//! `anomalyncd train --config FILE`: binarize and crop the novel images, train the mask-guided
//! ViT guided by the base set, evaluate and save (see [`anomalyncd::pipeline::train`]).

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::{Ctx, NormalTypes};
use anomalyncd::cluster::NumClasses;
use anomalyncd::config::Config;
use anomalyncd::error::Error;
use anomalyncd::pipeline::{self, TrainOutcome, TrainSpec};

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
    #[command(flatten)]
    pub token_cache: super::token_cache::TokenCacheArgs,
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
    /// Train without a base set: self-distillation and the contrastive loss on the novel crops
    /// only (the supervised cls and SupCon terms are dropped).
    #[arg(long, conflicts_with = "base_data_path")]
    pub no_base: bool,
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
    let cfg = Config::load(a.config.as_deref(), &a.set)?;
    let num_classes = NumClasses::parse(a.num_classes.as_deref())?;
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
    let runner = cfg.experiment.exp_root.join(&a.runner_name);
    let run_dir = runner.join(&category);
    let binarize_out = a
        .crop_data_path
        .as_ref()
        .map(|p| p.join(&category))
        .unwrap_or_else(|| run_dir.join("binarize"));
    let base = match (&a.base_data_path, a.no_base) {
        (Some(b), _) => Some(b.clone()),
        (None, true) => None,
        (None, false) => return Err(Error::usage("--base-data-path is required (labelled base crops: images/<class>/, masks/<class>/; see `anomalyncd prepare-base`), or --no-base to train without one").into()),
    };
    // The reference's layout: MAPS/<category>/<type>/ when that folder exists.
    let maps = match (&a.anomaly_map_path, a.skip_binarize) {
        (_, true) => None,
        (Some(root), false) if root.join(&category).is_dir() => Some(root.join(&category)),
        (Some(root), false) => Some(root.clone()),
        (None, false) => {
            return Err(
                Error::usage("--anomaly-map-path is required unless --skip-binarize").into(),
            )
        }
    };
    let epochs = cfg.training.epochs;
    let spec = TrainSpec {
        config: cfg,
        category: category.clone(),
        images,
        maps,
        source_maps: None,
        run_dir: run_dir.clone(),
        binarize_out,
        binary_copy: a.binary_data_path.as_ref().map(|d| d.join(&category)),
        base,
        num_classes,
        max_classes: a.max_classes,
        weights: a.backbone_weights.clone(),
        resume: a.resume,
        overwrite: a.overwrite,
        evaluate_only: false,
        stop_after: a.stop_after,
        pairing: a.normal.pairing(false, true),
        mvtec_style: a.dataset == DatasetLayout::Mvtec,
        table: runner.join("metrics.csv"),
        token_cache: a.token_cache.setting(),
        device: ctx.device,
    };
    match pipeline::train(&spec)? {
        TrainOutcome::Stopped { epoch, .. } => println!(
            "stopped after epoch {epoch} of {epochs}; continue with the same command and --resume ({})",
            spec.checkpoint().display()
        ),
        TrainOutcome::Finished {
            scores: Some(s),
            ..
        } => println!(
            "{category}: {s}  (image level; run folder {})",
            run_dir.display()
        ),
        TrainOutcome::Finished { scores: None, .. } => println!(
            "predictions in {}",
            run_dir.join("predictions.csv").display()
        ),
    }
    Ok(())
}
