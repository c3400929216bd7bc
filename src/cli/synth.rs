//! `anomalyncd synth --out DIR`: write the synthetic demo dataset.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::Ctx;
use anomalyncd::synth::{self, SynthSpec};

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Output folder (train/, test/, ground_truth/, anomaly_maps/, base/).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Random seed; the same seed gives byte-identical files.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Defective images per novel defect type.
    #[arg(long, default_value_t = 12)]
    pub per_type: usize,
    /// Normal images in train/good.
    #[arg(long, default_value_t = 8)]
    pub normal: usize,
    /// Images per base class.
    #[arg(long, default_value_t = 12)]
    pub per_base_class: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 160)]
    pub size: u32,
    /// Replace the files of a different earlier synth run in OUT.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(a: &SynthArgs, _ctx: &Ctx) -> anyhow::Result<()> {
    let spec = SynthSpec {
        seed: a.seed,
        per_type: a.per_type,
        normal: a.normal,
        per_base_class: a.per_base_class,
        size: a.size,
    };
    let summary = synth::write_dataset(&a.out, &spec, a.overwrite)
        .with_context(|| format!("writing the synthetic dataset to {}", a.out.display()))?;
    log::info!("{summary}");
    Ok(())
}
