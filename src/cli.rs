//! Command-line interface (clap derive). Each subcommand's flags live beside its code in
//! `commands::<name>`; this file only assembles them.

use clap::{ArgAction, Parser, Subcommand};

use crate::commands;

#[derive(Debug, Parser)]
#[command(
    name = "anomalyncd",
    about = "Group the defects an anomaly detector flagged into defect types, without labels (after AnomalyNCD, CVPR 2025).",
    long_about = None,
    disable_version_flag = true,
    arg_required_else_help = true,
    after_help = "Pipeline: binarize (MEBin masks + anomaly-centred crops) -> train (mask-guided ViT) -> test / predict.\nRun `anomalyncd <command> --help` for each command."
)]
pub struct Cli {
    /// Compute device: auto (CUDA when present), cpu, cuda, cuda:N.
    #[arg(long, global = true, default_value = "auto", value_name = "DEVICE")]
    pub device: String,
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,
    /// Less log output (-q warnings only, -qq errors only).
    #[arg(short, long, global = true, action = ArgAction::Count, conflicts_with = "verbose")]
    pub quiet: u8,
    /// Print the version, the libtorch version and whether CUDA is available.
    #[arg(short = 'V', long)]
    pub version: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// MEBin: binarize anomaly maps with an adaptive threshold and crop anomaly-centred sub-images.
    Binarize(commands::binarize::BinarizeArgs),
    /// Crop a labelled base set of other defect types by its ground-truth masks.
    PrepareBase(commands::prepare_base::PrepareBaseArgs),
    /// Train the mask-guided ViT on novel crops guided by a labelled base set, then evaluate.
    Train(commands::train::TrainArgs),
    /// Evaluate a trained checkpoint on a crop folder (NMI / ARI / F1 when labels exist).
    Test(commands::test::TestArgs),
    /// Assign new images to the discovered defect types with a trained checkpoint.
    Predict(commands::predict::PredictArgs),
    /// Cluster the pretrained class tokens of the crops with k-means (no training): a baseline.
    Baseline(commands::baseline::BaselineArgs),
    /// Built-in PatchCore-style detector: anomaly maps of test images from normal training images.
    Detect(commands::detect::DetectArgs),
    /// Score anomaly maps against masks: per-image localisation, MEBin's crops, pixel AUROC.
    MapsEval(commands::maps_eval::MapsEvalArgs),
    /// Convert the original Magnetic-Tile-Defect dataset to the MVTec AD layout.
    PrepareMtd(commands::prepare_mtd::PrepareMtdArgs),
    /// Write a deterministic synthetic industrial dataset (demo and tests; no download).
    Synth(commands::synth::SynthArgs),
    /// Check a config file or show the defaults.
    #[command(subcommand)]
    Config(commands::config::ConfigCommand),
}
