//! The command edge: each subcommand's flags and its `run`, turning library errors into
//! `anyhow` errors with context. `main.rs` calls [`run`].

pub mod baseline;
pub mod binarize;
pub mod config;
pub mod detect;
pub mod maps_eval;
pub mod predict;
pub mod prepare_base;
pub mod prepare_mtd;
pub mod synth;
pub mod test;
pub mod train;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use crate::cli::{Cli, Command};
use crate::config::Config;
use crate::error::Error;
use crate::mebin::folders::{binarize_folders, Pairing};
use crate::mebin::RangeSource;

/// What every command gets besides its own flags.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub device: tch::Device,
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    crate::logging::init(cli.verbose, cli.quiet);
    if cli.version {
        println!("{}", crate::device::version_text());
        return Ok(());
    }
    let device = crate::device::parse_device(&cli.device)?;
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
    pub fn inputs(&self) -> Vec<(&'static str, &Path)> {
        [
            ("--data", &self.data),
            ("--anomaly-maps", &self.anomaly_maps),
            ("--images", &self.images),
        ]
        .into_iter()
        .filter_map(|(flag, p)| p.as_deref().map(|p| (flag, p)))
        .collect()
    }

    /// The crop folder: `--data`, or `out/binarize` after binarizing the maps with the range
    /// `range()` gives (asked only then). None when neither was given.
    pub fn resolve(
        &self,
        out: &Path,
        cfg: &Config,
        range: impl FnOnce() -> anyhow::Result<RangeSource>,
        only_map_types: bool,
        overwrite: bool,
    ) -> anyhow::Result<Option<PathBuf>> {
        match (&self.anomaly_maps, &self.images, &self.data) {
            (Some(maps), Some(images), _) => {
                let dir = out.join("binarize");
                let how = self.normal.pairing(false, only_map_types);
                binarize_folders(maps, images, &dir, cfg, range()?, &how, overwrite)
                    .with_context(|| format!("binarizing the maps in {}", maps.display()))?;
                Ok(Some(dir))
            }
            (None, None, d) => Ok(d.clone()),
            _ => Err(Error::usage("--anomaly-maps and --images go together: give both").into()),
        }
    }
}

/// What `train`, `test`, `predict` and `baseline` write after predicting: the prediction files
/// and metrics into `out` (one row appended to `table` when labels exist, see
/// [`crate::infer::outputs::write_all`]), then `report.html` and its pictures. Returns the
/// image-level (NMI, ARI, F1) when labels exist. `trained_names`: the class each cluster matched
/// in training (`predict`), or empty.
#[allow(clippy::too_many_arguments)] // each is a distinct input of the outputs; a struct would only rename them
fn write_outputs(
    out: &Path,
    table: &Path,
    category: &str,
    set: &crate::data::CropSet,
    preds: &crate::infer::predict::Predictions,
    head: usize,
    binarize_out: &Path,
    trained_names: &[String],
) -> anyhow::Result<Option<(f64, f64, f64)>> {
    let novel = &set.novel_types;
    let res =
        crate::infer::outputs::write_all(out, table, category, novel, preds, head, trained_names)?;
    let input = crate::report::ReportInput {
        category,
        class_names: &set.novel_types,
        preds,
        set,
        binarize_out,
        trained_names,
    };
    crate::report::write_report(out, &input)
        .with_context(|| format!("writing the report into {}", out.display()))?;
    Ok(res)
}

/// `--num-classes`: how many novel clusters to form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NumClasses {
    /// One per novel type folder (the reference's rule).
    FromFolders,
    Fixed(usize),
    /// Estimated from the pretrained class tokens ([`crate::cluster::estimate`]).
    Auto,
}

pub(crate) fn parse_num_classes(v: Option<&str>) -> anyhow::Result<NumClasses> {
    match v {
        None => Ok(NumClasses::FromFolders),
        Some(s) if s.eq_ignore_ascii_case("auto") => Ok(NumClasses::Auto),
        Some(s) => match s.parse::<usize>() {
            Ok(k) if k >= 1 => Ok(NumClasses::Fixed(k)),
            _ => Err(Error::usage(format!(
                "--num-classes {s}: expected a positive whole number or `auto`"
            ))
            .into()),
        },
    }
}

/// Estimates the number of novel types of `set` from the pretrained backbone's class tokens
/// (base crops included for the base check), logs and prints the scores per K.
pub(crate) fn estimate_num_classes(
    model: &crate::model::Model,
    set: &std::sync::Arc<crate::data::CropSet>,
    cfg: &crate::config::Config,
    max_classes: usize,
    device: tch::Device,
) -> anyhow::Result<(crate::cluster::KEstimate, crate::cluster::SetTokens)> {
    let tokens = crate::cluster::set_tokens(model, set, cfg, device, set.num_base_classes() > 0)?;
    let est = crate::cluster::estimate(
        &tokens.novel,
        &tokens.base,
        max_classes,
        cfg.experiment.seed,
    )?;
    let msg = format!(
        "--num-classes auto: {} novel defect types ({}; K = 2..{}):\n{}",
        est.chosen,
        est.criterion,
        est.scores.last().map(|s| s.k).unwrap_or(2),
        est.table()
    );
    log::info!("{msg}");
    Ok((est, tokens))
}
