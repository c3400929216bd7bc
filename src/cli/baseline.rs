//! `anomalyncd baseline --method kmeans`: cluster the pretrained class tokens of the crops with
//! k-means, no training (see [`anomalyncd::pipeline::baseline`]).

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::{CropSource, Ctx};
use anomalyncd::cluster::NumClasses;
use anomalyncd::config::Config;
use anomalyncd::detect::pooled::Pooling;
use anomalyncd::error::Error;
use anomalyncd::pipeline::{self, BaselineSpec, PooledSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// k-means (k-means++ seeding, 10 restarts) on the L2-normalised class tokens.
    Kmeans,
    /// k-means on the detector backbone's patch features pooled under each image's anomaly
    /// map (needs --images and --anomaly-maps; no crops).
    Pooled,
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
    /// --method pooled: softmax temperature, relative to each image's score spread (default:
    /// the config's detect.pool_tau, 0.5, as `discover` pools).
    #[arg(long, value_name = "T")]
    pub pool_tau: Option<f64>,
    /// --method pooled: average the top FRACTION of patches instead of the softmax weights.
    #[arg(long, value_name = "FRACTION")]
    pub pool_top: Option<f64>,
}

pub fn run(a: &BaselineArgs, ctx: &Ctx) -> anyhow::Result<()> {
    if a.method == Method::Pooled {
        return pooled(a, ctx);
    }
    let cfg = Config::load(a.config.as_deref(), &a.set)?;
    let num_classes = NumClasses::parse(a.num_classes.as_deref())?;
    let c = &a.crops;
    let missing = || Error::usage("give --data (a binarize output) or --anomaly-maps and --images");
    let source = c.data.as_ref().or(c.images.as_ref()).ok_or_else(missing)?;
    let category = a.category.clone().unwrap_or_else(|| {
        source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "baseline".into())
    });
    let mut inputs = c.inputs();
    if let Some(p) = &a.base_data_path {
        inputs.push(("--base-data-path", p.clone()));
    }
    let spec = BaselineSpec {
        config: cfg,
        crops: c.input(true)?.ok_or_else(missing)?,
        base: a.base_data_path.clone(),
        num_classes,
        max_classes: a.max_classes,
        weights: a.backbone_weights.clone(),
        out: a.out.clone(),
        category: category.clone(),
        inputs,
        method: format!("{:?}", a.method),
        overwrite: a.overwrite,
        device: ctx.device,
    };
    let r = pipeline::baseline(&spec)?;
    let how = match &r.estimate {
        Some(e) => format!("K = {} estimated", e.chosen),
        None => format!("K = {}", r.k),
    };
    match r.scores {
        Some(s) => println!(
            "{category} (k-means baseline, {how}): {s}  (image level; {})",
            a.out.display()
        ),
        None => println!(
            "{} images in {} clusters (k-means baseline, {how}); predictions in {}",
            r.images,
            r.k,
            a.out.join("predictions.csv").display()
        ),
    }
    Ok(())
}

fn pooled(a: &BaselineArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let cfg = Config::load(a.config.as_deref(), &a.set)?;
    let c = &a.crops;
    let (Some(images), Some(maps)) = (&c.images, &c.anomaly_maps) else {
        return Err(Error::usage("--method pooled needs --images and --anomaly-maps").into());
    };
    let pooling = match a.pool_top {
        Some(f) if f > 0.0 && f <= 1.0 => Pooling::TopK { fraction: f },
        Some(f) => {
            return Err(Error::usage(format!("--pool-top {f}: a fraction in (0, 1]")).into())
        }
        None => match a.pool_tau.unwrap_or(cfg.detect.pool_tau) {
            t if anomalyncd::config::valid_pool_tau(t) => Pooling::Soft { tau: t },
            t => {
                return Err(Error::usage(format!(
                    "--pool-tau {t}: a temperature in (0, {}]",
                    anomalyncd::config::MAX_POOL_TAU
                ))
                .into())
            }
        },
    };
    let r = pipeline::pooled(&PooledSpec {
        images: images.clone(),
        maps: maps.clone(),
        out: a.out.clone(),
        num_classes: NumClasses::parse(a.num_classes.as_deref())?,
        max_classes: a.max_classes,
        k_criterion: cfg.training.k_criterion(),
        pooling,
        weights: a.backbone_weights.clone(),
        precision: cfg.models.precision,
        // The detector's rule (`detect.image_size`, auto by default): the features then come at
        // the resolution the built-in detector scores such images at.
        image_size: anomalyncd::detect::resolve_image_size_of(
            cfg.detect.image_size,
            images,
            "--images",
            "detect.image_size",
        )?,
        seed: cfg.experiment.seed,
        inputs: c.inputs(),
        overwrite: a.overwrite,
        device: ctx.device,
    })?;
    match r.scores {
        Some(s) => println!(
            "pooled features ({pooling:?}, K = {}): {s}  (image level; {})",
            r.k,
            a.out.display()
        ),
        None => println!(
            "{} images in {} clusters (pooled features); predictions in {}",
            r.images,
            r.k,
            a.out.join("predictions.csv").display()
        ),
    }
    Ok(())
}
