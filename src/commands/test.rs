//! `anomalyncd test --checkpoint CKPT`: evaluate a trained model on a crop folder.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use super::{CropSource, Ctx};
use crate::config::Config;
use crate::error::Error;
use crate::infer::trained;
use crate::mebin::{RangeSource, SearchRange};

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Checkpoint written by `train` (checkpoint.safetensors, or its run folder). Without --data
    /// or --anomaly-maps, the crops of its training run are evaluated.
    #[arg(long, value_name = "CKPT")]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub crops: CropSource,
    /// Folder for metrics.csv, predictions.csv, metrics.json, report.html (default: the checkpoint's
    /// folder).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Replace the files of a different earlier run in OUT (and OUT/binarize).
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(a: &TestArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let t = trained::load(&a.checkpoint, ctx.device)?;
    let ckpt_dir = if a.checkpoint.is_dir() {
        a.checkpoint.clone()
    } else {
        a.checkpoint.parent().map(PathBuf::from).unwrap_or_default()
    };
    let out = match &a.out {
        // A folder of the user's: only a new, empty or earlier `test` folder of ours is written.
        Some(o) => {
            let fingerprint =
                serde_json::json!({"checkpoint": crate::fsutil::absolute_value(&a.checkpoint)});
            let inputs = a.crops.inputs();
            crate::fsutil::prepare_output_dir(o, &inputs, "test", &fingerprint, a.overwrite)?;
            o.clone()
        }
        None => ckpt_dir.clone(),
    };
    crate::logging::add_log_file(&out.join("log.txt"))
        .with_context(|| format!("opening {}/log.txt", out.display()))?;
    let range = || {
        Ok(RangeSource::Fixed(
            stored_range(&t.meta)?,
            t.meta.float_scale,
        ))
    };
    let cfg: &Config = &t.meta.config;
    let data = match a.crops.resolve(&out, cfg, range, false, a.overwrite)? {
        Some(d) => d,
        None => t
            .meta
            .anomaly_scores
            .as_ref()
            .and_then(|p| p.parent().map(PathBuf::from))
            .ok_or_else(|| {
                Error::usage("give --data (a binarize output) or --anomaly-maps and --images")
            })?,
    };
    let set = Arc::new(trained::novel_set(&t.meta, &data)?);
    log::info!(
        "evaluating {} crops of {} with head {}",
        set.len(),
        data.display(),
        t.meta.chosen_head
    );
    let preds = trained::run(&t, set.clone(), ctx.device)?;
    let table = out.join("metrics.csv");
    let head = t.meta.chosen_head;
    let res = super::write_outputs(
        &out,
        &table,
        &t.meta.category,
        &set,
        &preds,
        head,
        &data,
        &[],
    )?;
    if let Some((nmi, ari, f1)) = res {
        println!(
            "{}: NMI {nmi:.4}  ARI {ari:.4}  F1 {f1:.4}  (image level; {})",
            t.meta.category,
            out.display()
        );
    } else {
        println!(
            "predictions written to {}",
            out.join("predictions.csv").display()
        );
    }
    Ok(())
}

pub(crate) fn stored_range(
    meta: &crate::train::checkpoint::CheckpointMeta,
) -> anyhow::Result<SearchRange> {
    let (lo, hi) = meta
        .search_range
        .ok_or_else(|| Error::usage("the checkpoint stores no MEBin search range (trained with --skip-binarize on old crops)"))?;
    Ok(SearchRange::new(lo, hi)?)
}
