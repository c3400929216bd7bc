//! `anomalyncd binarize`: MEBin over a set of anomaly maps, then anomaly-centred crops.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::Ctx;
use crate::config::Config;
use crate::error::Error;
use crate::fsutil::prepare_output_dir;
use crate::imageio::{self, describe_files, IMAGE_EXTENSIONS, MAP_EXTENSIONS};
use crate::mebin::crop::CropRule;
use crate::mebin::{self, BinarizeJob, MapItem, Params, RangeSource};

#[derive(Debug, Args)]
pub struct BinarizeArgs {
    /// Anomaly maps: MAPS/<type>/<stem>.png (8- or 16-bit grayscale, any size).
    #[arg(long, value_name = "MAPS")]
    pub anomaly_maps: PathBuf,
    /// Original images: IMAGES/<type>/<stem>.<png|jpg|bmp|tif>, paired with maps by stem.
    #[arg(long, value_name = "IMAGES")]
    pub images: PathBuf,
    /// Output folder (binary/, crops/, scores.json, mebin.json).
    #[arg(long, value_name = "OUT")]
    pub out: PathBuf,
    /// Config file (binarization section).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override a config key, e.g. --set binarization.sample_rate=2 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
    /// Lower end of the threshold search range (raw map scale), for sets with no normal images.
    #[arg(long, value_name = "V")]
    pub min_threshold: Option<f64>,
    /// Skip maps without an image (and images without a map) with a warning instead of failing.
    #[arg(long)]
    pub skip_unpaired: bool,
    /// Replace the files of a different earlier run in OUT.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(a: &BinarizeArgs, _ctx: &Ctx) -> anyhow::Result<()> {
    let cfg = Config::load(a.config.as_deref(), &a.set)?;
    let min_threshold = a.min_threshold.or(cfg.binarization.min_threshold);
    if let Some(v) = a.min_threshold {
        if !(v.is_finite() && v >= 0.0) {
            return Err(
                Error::usage(format!("--min-threshold {v}: must be a finite number >= 0")).into(),
            );
        }
    }
    let items = paired_items(a)?;
    let fingerprint = serde_json::json!({
        "anomaly_maps": crate::fsutil::absolute(&a.anomaly_maps),
        "images": crate::fsutil::absolute(&a.images),
        "binarization": cfg.binarization,
        "min_threshold": min_threshold,
        "skip_unpaired": a.skip_unpaired,
    });
    prepare_output_dir(
        &a.out,
        &[("--anomaly-maps", &a.anomaly_maps), ("--images", &a.images)],
        "binarize",
        &fingerprint,
        a.overwrite,
    )?;
    let job = BinarizeJob {
        items: &items,
        params: Params::from(&cfg.binarization),
        range: RangeSource::FromMaps { min_threshold },
        rule: CropRule::default(),
        out: &a.out,
        progress: true,
    };
    let summary = mebin::run::run(&job)
        .with_context(|| format!("binarizing {}", a.anomaly_maps.display()))?;
    let crops: usize = summary.records.iter().map(|r| r.crop_boxes.len()).sum();
    let empty = summary
        .records
        .iter()
        .filter(|r| r.est_anomaly_num == 0)
        .count();
    log::info!(
        "{} maps binarized (search range [{}, {}]), {crops} crops, {empty} maps without a stable interval; \
         outputs in {} (binary/, crops/, scores.json, mebin.json)",
        summary.records.len(),
        summary.min_th,
        summary.max_th,
        a.out.display()
    );
    Ok(())
}

/// Lists maps and images and pairs them by (type, stem); unpaired files are an error listing the
/// first offenders unless --skip-unpaired.
fn paired_items(a: &BinarizeArgs) -> anyhow::Result<Vec<MapItem>> {
    let maps = imageio::list_typed_files(&a.anomaly_maps, MAP_EXTENSIONS)
        .context("listing --anomaly-maps")?;
    if maps.is_empty() {
        return Err(Error::input(
            &a.anomaly_maps,
            "no anomaly maps found (expected MAPS/<type>/<stem>.png)",
        )
        .into());
    }
    let images =
        imageio::list_typed_files(&a.images, IMAGE_EXTENSIONS).context("listing --images")?;
    if images.is_empty() {
        return Err(Error::input(
            &a.images,
            "no images found (expected IMAGES/<type>/<stem>.<png|jpg|bmp|tif>)",
        )
        .into());
    }
    let p = imageio::pair_by_stem(maps, images);
    if !p.left_only.is_empty() || !p.right_only.is_empty() {
        let mut parts = Vec::new();
        if !p.left_only.is_empty() {
            parts.push(format!(
                "maps without an image: {}",
                describe_files(&p.left_only, &a.anomaly_maps, 5)
            ));
        }
        if !p.right_only.is_empty() {
            parts.push(format!(
                "images without a map: {}",
                describe_files(&p.right_only, &a.images, 5)
            ));
        }
        let msg = parts.join("; ");
        if !a.skip_unpaired {
            return Err(Error::usage(format!(
                "maps and images do not pair up by <type>/<stem>: {msg}; fix the names or pass --skip-unpaired"
            ))
            .into());
        }
        log::warn!("skipping unpaired files: {msg}");
    }
    if p.pairs.is_empty() {
        return Err(Error::usage(
            "no map has an image with the same <type>/<stem>; nothing to binarize",
        )
        .into());
    }
    Ok(p.pairs
        .into_iter()
        .map(|(m, i)| MapItem {
            class_name: m.type_name,
            stem: m.stem,
            map: m.path,
            image: i.path,
        })
        .collect())
}
