//! The command edge: each subcommand's flags and its `run`, turning library errors into
//! `anyhow` errors with context. `main.rs` calls [`run`].

pub mod baseline;
pub mod binarize;
pub mod config;
pub mod detect;
pub mod predict;
pub mod prepare_base;
pub mod prepare_mtd;
pub mod synth;
pub mod test;
pub mod train;

use crate::cli::{Cli, Command};
use crate::error::Error;

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
        Command::PrepareMtd(a) => prepare_mtd::run(&a, &ctx),
        Command::Synth(a) => synth::run(&a, &ctx),
        Command::Config(c) => config::run(&c, &ctx),
    }
}

/// What `train`, `test`, `predict` and `baseline` write after predicting: the prediction files
/// and metrics into `out` (one row appended to `table` when labels exist, see
/// [`crate::infer::outputs::write_all`]), then `report.html` and its pictures. Returns the
/// image-level (NMI, ARI, F1) when labels exist.
fn write_outputs(
    out: &std::path::Path,
    table: &std::path::Path,
    category: &str,
    set: &crate::data::CropSet,
    preds: &crate::infer::predict::Predictions,
    head: usize,
    binarize_out: &std::path::Path,
) -> anyhow::Result<Option<(f64, f64, f64)>> {
    use anyhow::Context;
    let res =
        crate::infer::outputs::write_all(out, table, category, &set.novel_types, preds, head)?;
    let input = crate::report::ReportInput {
        category,
        class_names: &set.novel_types,
        preds,
        set,
        binarize_out,
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
