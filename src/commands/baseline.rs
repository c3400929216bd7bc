//! `anomalyncd baseline --method kmeans`: clusters the pretrained backbone's mask-guided class
//! tokens of the novel crops with k-means, with region merging, and no training. It shows what
//! training adds, and groups defects quickly when there is no base set.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};

use super::{estimate_num_classes, parse_num_classes, CropSource, Ctx, NumClasses};
use crate::cluster::{fit, KMeansOptions};
use crate::config::Config;
use crate::data::{dataset::load_novel, CropSet, NovelSource};
use crate::error::Error;
use crate::infer::merge::default_merge_temperature;
use crate::infer::predict::predict_assigned;
use crate::mebin::RangeSource;
use crate::model::{resolve_backbone_weights, Model};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// k-means (k-means++ seeding, 10 restarts) on the L2-normalised class tokens.
    Kmeans,
}

#[derive(Debug, Args)]
pub struct BaselineArgs {
    /// Clustering method.
    #[arg(long, value_enum, default_value = "kmeans")]
    pub method: Method,
    /// Config file (backbone, image size, mask layers, binarization, seed).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override a config key, e.g. --set models.pretrained_backbone=vit_tiny (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
    #[command(flatten)]
    pub crops: CropSource,
    /// Labelled base crops (images/<class>/, masks/<class>/): only used by --num-classes auto,
    /// for its base check.
    #[arg(long, value_name = "DIR")]
    pub base_data_path: Option<PathBuf>,
    /// Number of clusters: N, or `auto` to estimate it (default: the number of type folders).
    #[arg(long, value_name = "N|auto")]
    pub num_classes: Option<String>,
    /// Largest K that --num-classes auto considers.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub max_classes: usize,
    /// Backbone weights (.pth or .safetensors), overriding models.backbone_weights.
    #[arg(long, value_name = "FILE")]
    pub backbone_weights: Option<PathBuf>,
    /// Output folder: predictions.csv, crop_predictions.csv, metrics.json, report.html,
    /// class_tokens.safetensors (the clustered tokens, in crop_predictions.csv order).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Name in metrics.csv (default: the name of the image or crop folder).
    #[arg(long)]
    pub category: Option<String>,
    /// Replace the files of a different earlier run in OUT.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(a: &BaselineArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let cfg = Config::load(a.config.as_deref(), &a.set)?;
    let num_classes = parse_num_classes(a.num_classes.as_deref())?;
    let c = &a.crops;
    let source = c.data.as_ref().or(c.images.as_ref()).ok_or_else(|| {
        Error::usage("give --data (a binarize output) or --anomaly-maps and --images")
    })?;
    let category = a.category.clone().unwrap_or_else(|| {
        source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "baseline".into())
    });
    let mut inputs = c.inputs();
    if let Some(p) = &a.base_data_path {
        inputs.push(("--base-data-path", p.as_path()));
    }
    let fingerprint = serde_json::json!({
        "baseline": format!("{:?}", a.method),
        "inputs": inputs.iter().map(|(_, p)| crate::fsutil::absolute_value(p)).collect::<Vec<_>>(),
    });
    crate::fsutil::prepare_output_dir(&a.out, &inputs, "baseline", &fingerprint, a.overwrite)?;
    crate::logging::add_log_file(&a.out.join("log.txt"))
        .with_context(|| format!("opening {}/log.txt", a.out.display()))?;

    let range = || {
        Ok(RangeSource::FromMaps {
            min_threshold: cfg.binarization.min_threshold,
        })
    };
    let data = c
        .resolve(&a.out, &cfg, range, true, a.overwrite)?
        .ok_or_else(|| {
            Error::usage("give --data (a binarize output) or --anomaly-maps and --images")
        })?;
    let novel = NovelSource::from_binarize_out(&data);
    let placeholder = Some(1);
    let mut set = match &a.base_data_path {
        Some(base) => CropSet::load(base, &novel, placeholder)?,
        None => {
            let (novel_types, items) = load_novel(&novel, 0)?;
            CropSet {
                items,
                base_classes: Vec::new(),
                novel_types,
                num_novel_clusters: 1,
            }
        }
    };
    if set.novel_indices().is_empty() {
        return Err(Error::input(&novel.images, "no novel crops to cluster").into());
    }
    let k = match num_classes {
        NumClasses::Fixed(k) => Some(k),
        NumClasses::Auto => None,
        NumClasses::FromFolders if set.novel_types.is_empty() => {
            return Err(Error::usage(format!(
                "{}: the crops have no type folders, so the number of clusters is unknown; give --num-classes N or auto",
                novel.images.display()
            ))
            .into())
        }
        NumClasses::FromFolders => Some(set.novel_types.len()),
    };
    if num_classes == NumClasses::Auto && a.base_data_path.is_none() {
        log::info!("--num-classes auto without --base-data-path: scored by the silhouette alone");
    }
    set.num_novel_clusters = k.unwrap_or(1);
    let set = Arc::new(set);

    let weights = resolve_backbone_weights(&cfg.models, a.backbone_weights.as_deref())?;
    tch::manual_seed(cfg.experiment.seed as i64);
    let model = Model::new(&cfg, set.num_classes(), weights.as_deref(), ctx.device)?;
    let (k, tokens, estimate) = match k {
        Some(k) => {
            let t = crate::cluster::set_tokens(&model, &set, &cfg, ctx.device, false)?;
            (k, t, None)
        }
        None => {
            let (est, t) = estimate_num_classes(&model, &set, &cfg, a.max_classes, ctx.device)?;
            (est.chosen, t, Some(est))
        }
    };
    let fitted = fit(
        &tokens.novel,
        &vec![None; tokens.novel.len()],
        KMeansOptions::new(k, cfg.experiment.seed),
    )?;
    let temperature = cfg
        .inference
        .merge_temperature
        .unwrap_or(default_merge_temperature(false));
    let preds = predict_assigned(&set, &tokens.novel_items, &fitted.assign, k, temperature)?;
    crate::cluster::features::save_tokens(&a.out.join("class_tokens.safetensors"), &tokens.novel)?;
    if let Some(est) = &estimate {
        let text = serde_json::to_string_pretty(est).context("serialising the K estimate")?;
        crate::fsutil::atomic_write(&a.out.join("k_estimate.json"), text.as_bytes())?;
    }
    let table = a.out.join("metrics.csv");
    let res = super::write_outputs(&a.out, &table, &category, &set, &preds, 0, &data, &[])?;
    let how = match &estimate {
        Some(e) => format!("K = {} estimated", e.chosen),
        None => format!("K = {k}"),
    };
    match res {
        Some((nmi, ari, f1)) => println!(
            "{category} (k-means baseline, {how}): NMI {nmi:.4}  ARI {ari:.4}  F1 {f1:.4}  (image level; {})",
            a.out.display()
        ),
        None => println!(
            "{} images in {k} clusters (k-means baseline, {how}); predictions in {}",
            preds.images.len(),
            a.out.join("predictions.csv").display()
        ),
    }
    Ok(())
}
