//! The command line (clap derive): each command's flags and its `run` live in one file here,
//! and `run` only turns the flags into the library's spec, calls the stage and prints. Library
//! errors get their context here (`anyhow`); `main.rs` maps them to exit codes.

mod baseline;
mod binarize;
mod config;
mod detect;
mod discover;
mod maps_eval;
mod predict;
mod prepare_base;
mod prepare_mtd;
mod synth;
mod test;
mod token_cache;
mod train;

use std::path::PathBuf;

use anomalyncd::error::Error;
use anomalyncd::mebin::Pairing;
use anomalyncd::pipeline::CropInput;
use clap::{ArgAction, Args, Parser, Subcommand};

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
    /// Threads: `auto` follows the cores other processes leave free (libtorch's own count on an
    /// idle machine); N fixes libtorch's threads and the data-parallel pool at N (a run's
    /// numbers then never depend on the machine's load).
    #[arg(
        long,
        global = true,
        value_name = "N|auto",
        default_value = "auto",
        env = "ANOMALYNCD_THREADS"
    )]
    pub threads: anomalyncd::threads::ThreadSetting,
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
    Binarize(binarize::BinarizeArgs),
    /// Crop a labelled base set of other defect types by its ground-truth masks.
    PrepareBase(prepare_base::PrepareBaseArgs),
    /// All stages from a folder of images to defect types: base set, anomaly maps, MEBin, K,
    /// training, report (one resumable run folder).
    Discover(discover::DiscoverArgs),
    /// Train the mask-guided ViT on novel crops guided by a labelled base set, then evaluate.
    Train(train::TrainArgs),
    /// Evaluate a trained checkpoint on a crop folder (NMI / ARI / F1 when labels exist).
    Test(test::TestArgs),
    /// Assign new images to the discovered defect types with a trained checkpoint.
    Predict(predict::PredictArgs),
    /// Cluster the pretrained class tokens of the crops with k-means (no training): a baseline.
    Baseline(baseline::BaselineArgs),
    /// Built-in PatchCore-style detector: anomaly maps of test images from normal training images.
    Detect(detect::DetectArgs),
    /// Score anomaly maps against masks: per-image localisation, MEBin's crops, pixel AUROC.
    MapsEval(maps_eval::MapsEvalArgs),
    /// Convert the original Magnetic-Tile-Defect dataset to the MVTec AD layout.
    PrepareMtd(prepare_mtd::PrepareMtdArgs),
    /// Write a deterministic synthetic industrial dataset (demo and tests; no download).
    Synth(synth::SynthArgs),
    /// Check a config file or show the defaults.
    #[command(subcommand)]
    Config(config::ConfigCommand),
}

/// What every command gets besides its own flags.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub device: tch::Device,
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    anomalyncd::logging::init(cli.verbose, cli.quiet);
    if cli.version {
        println!("{}", anomalyncd::device::version_text());
        return Ok(());
    }
    anomalyncd::threads::configure(cli.threads)?;
    let device = anomalyncd::device::parse_device(&cli.device)?;
    let ctx = Ctx { device };
    let Some(command) = cli.command else {
        return Err(Error::usage("no command given; run `anomalyncd --help`").into());
    };
    match command {
        Command::Baseline(a) => baseline::run(&a, &ctx),
        Command::Binarize(a) => binarize::run(&a, &ctx),
        Command::PrepareBase(a) => prepare_base::run(&a, &ctx),
        Command::Train(a) => train::run(&a, &ctx),
        Command::Test(a) => test::run(&a, &ctx),
        Command::Predict(a) => predict::run(&a, &ctx),
        Command::Detect(a) => detect::run(&a, &ctx),
        Command::Discover(a) => discover::run(&a, &ctx),
        Command::MapsEval(a) => maps_eval::run(&a, &ctx),
        Command::PrepareMtd(a) => prepare_mtd::run(&a, &ctx),
        Command::Synth(a) => synth::run(&a, &ctx),
        Command::Config(c) => config::run(&c, &ctx),
    }
}

/// `--normal-type NAME`: shared by every command that binarizes maps.
#[derive(Debug, Clone, Default, Args)]
pub struct NormalTypes {
    /// A type folder of normal images besides `good` (always normal), e.g. MT_Free: its maps
    /// enter MEBin's search range; it is never cropped, clustered, scored or counted as a type
    /// (repeatable).
    #[arg(long = "normal-type", value_name = "NAME")]
    pub normal_type: Vec<String>,
}

impl NormalTypes {
    /// The pairing rules with these normal types.
    pub fn pairing(&self, skip_unpaired: bool, only_map_types: bool) -> Pairing {
        Pairing {
            skip_unpaired,
            only_map_types,
            normal_types: self.normal_type.clone(),
        }
    }
}

/// Where `test` and `baseline` read their crops: a `binarize` output, or anomaly maps and images
/// that are binarized into `OUT/binarize` first.
#[derive(Debug, Args)]
pub struct CropSource {
    /// Crop folder written by `binarize` (crops/, scores.json); or give --anomaly-maps and
    /// --images.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["anomaly_maps", "images"])]
    pub data: Option<PathBuf>,
    /// Anomaly maps (<type>/<stem>.<png|tif|npy> or a flat folder), binarized into OUT/binarize
    /// first.
    #[arg(long, value_name = "DIR", requires = "images")]
    pub anomaly_maps: Option<PathBuf>,
    /// Images paired with --anomaly-maps by stem.
    #[arg(long, value_name = "DIR", requires = "anomaly_maps")]
    pub images: Option<PathBuf>,
    #[command(flatten)]
    pub normal: NormalTypes,
}

impl CropSource {
    /// The given input folders with their flags, for the output-folder checks.
    pub fn inputs(&self) -> Vec<(&'static str, PathBuf)> {
        [
            ("--data", &self.data),
            ("--anomaly-maps", &self.anomaly_maps),
            ("--images", &self.images),
        ]
        .into_iter()
        .filter_map(|(flag, p)| p.as_deref().map(|p| (flag, p.to_path_buf())))
        .collect()
    }

    /// The crops as the library takes them; None when no flag names any.
    pub fn input(&self, only_map_types: bool) -> anyhow::Result<Option<CropInput>> {
        match (&self.anomaly_maps, &self.images, &self.data) {
            (Some(maps), Some(images), _) => Ok(Some(CropInput::Maps {
                maps: maps.clone(),
                images: images.clone(),
                pairing: self.normal.pairing(false, only_map_types),
            })),
            (None, None, d) => Ok(d.clone().map(CropInput::Folder)),
            _ => Err(Error::usage("--anomaly-maps and --images go together: give both").into()),
        }
    }
}
