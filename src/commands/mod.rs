//! The command edge: each subcommand's flags and its `run`, turning library errors into
//! `anyhow` errors with context. `main.rs` calls [`run`].

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

/// Writes `report.html` and its pictures into `out` (what `train`, `test` and `predict` share).
fn write_report(
    out: &std::path::Path,
    category: &str,
    set: &crate::data::CropSet,
    preds: &crate::infer::predict::Predictions,
    binarize_out: &std::path::Path,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let input = crate::report::ReportInput {
        category,
        class_names: &set.novel_types,
        preds,
        set,
        binarize_out,
    };
    crate::report::write_report(out, &input)
        .with_context(|| format!("writing the report into {}", out.display()))?;
    Ok(())
}
