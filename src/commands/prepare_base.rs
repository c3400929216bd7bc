//! `anomalyncd prepare-base`: crop a labelled base set by its ground-truth masks.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::Ctx;
use crate::error::Error;
use crate::fsutil::prepare_output_dir;
use crate::imageio::{self, describe_files, IMAGE_EXTENSIONS, MAP_EXTENSIONS};
use crate::mebin::base::{prepare_base, BaseItem};
use crate::mebin::crop::CropRule;

#[derive(Debug, Args)]
pub struct PrepareBaseArgs {
    /// Base images: DIR/<class>/<stem>.<png|jpg|bmp|tif>.
    #[arg(long, value_name = "DIR")]
    pub images: PathBuf,
    /// Ground-truth masks: DIR/<class>/<stem>.png (same stems as the images).
    #[arg(long, value_name = "DIR")]
    pub masks: PathBuf,
    /// Output folder: OUT/images/<class>/…, OUT/masks/<class>/….
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// At most this many crops per image (the reference's aebad_preprocess uses 2).
    #[arg(long, default_value_t = 2)]
    pub max_crops: usize,
    /// Use at most this many images per class, spread evenly over each class's sorted stems
    /// (a smaller base set trains faster; the paper uses all).
    #[arg(long, value_name = "N")]
    pub max_per_class: Option<usize>,
    /// Replace the files of a different earlier run in OUT.
    #[arg(long)]
    pub overwrite: bool,
}

/// Every class's items thinned to at most `n`, evenly spaced over its order (deterministic).
fn thin_per_class(items: Vec<BaseItem>, n: usize) -> Vec<BaseItem> {
    let mut by_class: std::collections::BTreeMap<String, Vec<BaseItem>> = Default::default();
    for it in items {
        by_class.entry(it.class_name.clone()).or_default().push(it);
    }
    by_class
        .into_values()
        .flat_map(|mut v| {
            v.sort_by(|a, b| a.stem.cmp(&b.stem));
            let len = v.len();
            let keep: std::collections::BTreeSet<usize> = if len <= n {
                (0..len).collect()
            } else {
                (0..n).map(|k| k * len / n).collect()
            };
            v.into_iter()
                .enumerate()
                .filter(move |(i, _)| keep.contains(i))
                .map(|(_, it)| it)
        })
        .collect()
}

pub fn run(a: &PrepareBaseArgs, _ctx: &Ctx) -> anyhow::Result<()> {
    if a.max_crops == 0 {
        return Err(Error::usage("--max-crops must be at least 1").into());
    }
    if a.max_per_class == Some(0) {
        return Err(Error::usage("--max-per-class must be at least 1").into());
    }
    let images =
        imageio::list_typed_files(&a.images, IMAGE_EXTENSIONS).context("listing --images")?;
    if images.is_empty() {
        return Err(Error::input(
            &a.images,
            "no images found (expected DIR/<class>/<stem>.<png|jpg|bmp|tif>)",
        )
        .into());
    }
    let masks = imageio::list_typed_files(&a.masks, MAP_EXTENSIONS).context("listing --masks")?;
    let p = imageio::pair_by_stem(images, masks);
    if !p.left_only.is_empty() {
        return Err(Error::usage(format!(
            "images without a mask (same <class>/<stem> under --masks): {}",
            describe_files(&p.left_only, &a.images, 5)
        ))
        .into());
    }
    if !p.right_only.is_empty() {
        log::warn!(
            "masks without an image are ignored: {}",
            describe_files(&p.right_only, &a.masks, 5)
        );
    }
    let items: Vec<BaseItem> = p
        .pairs
        .into_iter()
        .map(|(i, m)| BaseItem {
            class_name: i.type_name,
            stem: i.stem,
            image: i.path,
            mask: m.path,
        })
        .collect();
    let items = match a.max_per_class {
        Some(n) => thin_per_class(items, n),
        None => items,
    };
    let fingerprint = serde_json::json!({
        "images": crate::fsutil::absolute_value(&a.images),
        "masks": crate::fsutil::absolute_value(&a.masks),
        "max_crops": a.max_crops,
        "max_per_class": a.max_per_class,
    });
    prepare_output_dir(
        &a.out,
        &[("--images", &a.images), ("--masks", &a.masks)],
        "prepare-base",
        &fingerprint,
        a.overwrite,
    )?;
    let summary = prepare_base(&items, &a.out, a.max_crops, &CropRule::default(), true)
        .with_context(|| format!("cropping the base set {}", a.images.display()))?;
    let crops: usize = summary.records.iter().map(|r| r.crop_boxes.len()).sum();
    let classes: std::collections::BTreeSet<&str> = summary
        .records
        .iter()
        .map(|r| r.class_name.as_str())
        .collect();
    log::info!(
        "{} images of {} classes cropped into {crops} crops; outputs in {} (images/, masks/, prepare_base.json)",
        summary.records.len(),
        classes.len(),
        a.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinning_keeps_an_even_spread_per_class() {
        let item = |c: &str, s: usize| BaseItem {
            class_name: c.into(),
            stem: format!("{s:03}"),
            image: PathBuf::new(),
            mask: PathBuf::new(),
        };
        let items: Vec<BaseItem> = (0..10)
            .map(|s| item("a", s))
            .chain((0..2).map(|s| item("b", s)))
            .collect();
        let kept = thin_per_class(items, 4);
        let stems: Vec<(String, String)> = kept
            .iter()
            .map(|i| (i.class_name.clone(), i.stem.clone()))
            .collect();
        let want = [
            ("a", "000"),
            ("a", "002"),
            ("a", "005"),
            ("a", "007"),
            ("b", "000"),
            ("b", "001"),
        ];
        assert_eq!(
            stems,
            want.iter()
                .map(|(c, s)| (c.to_string(), s.to_string()))
                .collect::<Vec<_>>()
        );
    }
}
