//! `anomalyncd prepare-mtd --raw DIR --out DIR`: the original Magnetic-Tile-Defect layout to the
//! MVTec AD layout (see [`anomalyncd::mtd`]).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::Ctx;
use anomalyncd::mtd::{self, MtdSpec};

#[derive(Debug, Args)]
pub struct PrepareMtdArgs {
    /// The original dataset: RAW/MT_<Type>/Imgs/<stem>.jpg with <stem>.png masks beside them.
    #[arg(long, value_name = "DIR")]
    pub raw: PathBuf,
    /// Output folder (train/MT_Free/, test/good/, test/MT_<Type>/, ground_truth/MT_<Type>/).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The normal tiles to train on, one file name a line (e.g. DifferNet's
    /// mtd_train_filenames.txt); without it a seeded random 80 % of MT_Free.
    #[arg(long, value_name = "FILE")]
    pub train_list: Option<PathBuf>,
    /// Seed of the 80/20 split when no --train-list is given.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Replace the files of a different earlier prepare-mtd run in OUT.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(a: &PrepareMtdArgs, _ctx: &Ctx) -> anyhow::Result<()> {
    let spec = MtdSpec {
        raw: a.raw.clone(),
        out: a.out.clone(),
        train_list: a.train_list.clone(),
        seed: a.seed,
        overwrite: a.overwrite,
    };
    let s = mtd::prepare(&spec).with_context(|| format!("converting {}", a.raw.display()))?;
    let defects: Vec<String> = s.defects.iter().map(|(k, v)| format!("{k} {v}")).collect();
    log::info!(
        "{}: train/{} {} normal tiles, test/{} {}, defects: {} ({}); summary in {}",
        a.out.display(),
        mtd::FREE,
        s.train_normal,
        mtd::TEST_NORMAL,
        s.test_normal,
        defects.join(", "),
        s.split,
        a.out.join(mtd::SUMMARY_FILE).display()
    );
    Ok(())
}
