//! `anomalyncd train --config FILE`: binarize and crop the novel images, train the mask-guided
//! ViT guided by the base set, evaluate and save.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::Ctx;

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
    /// Number of novel clusters (default: number of novel type folders).
    #[arg(long)]
    pub num_classes: Option<String>,
    /// Continue from the run folder's last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Backbone weights (.pth or .safetensors), overriding models.backbone_weights.
    #[arg(long, value_name = "FILE")]
    pub backbone_weights: Option<PathBuf>,
}

pub fn run(_args: &TrainArgs, _ctx: &Ctx) -> anyhow::Result<()> {
    super::not_yet("train", "training, issue #5")
}
