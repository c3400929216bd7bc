//! Cropping a labelled base set by its ground-truth masks with MEBin's cropping rule (the
//! reference's `datasets/aebad_preprocess.py`: at most 2 crops per image).

use std::path::{Path, PathBuf};

use image::{ExtendedColorType, GenericImageView, GrayImage};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::crop::{CropBox, CropRule};
use super::run::{
    crop_by_mask, mask_at_image_size, progress_bar, remove_stale, write_png, Picture, PngKind,
};
use crate::error::{Error, Result};
use crate::imageio::{self, BitDepth};

/// One labelled image and its mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseItem {
    pub class_name: String,
    pub stem: String,
    pub image: PathBuf,
    pub mask: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseRecord {
    pub class_name: String,
    pub stem: String,
    #[serde(with = "crate::fsutil::serde_path")]
    pub image: PathBuf,
    #[serde(with = "crate::fsutil::serde_path")]
    pub mask: PathBuf,
    pub image_size: [u32; 2],
    /// The mask had no foreground: the whole image is the crop (as the reference does).
    pub empty_mask: bool,
    pub crop_boxes: Vec<CropBox>,
}

/// `prepare_base.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseSummary {
    pub max_crops: usize,
    pub records: Vec<BaseRecord>,
}

pub const BASE_SUMMARY_FILE: &str = "prepare_base.json";

impl BaseSummary {
    /// Every file the run wrote, relative to its output folder.
    pub fn output_files(&self) -> Vec<PathBuf> {
        let mut files = vec![PathBuf::from(BASE_SUMMARY_FILE)];
        for r in &self.records {
            for k in 0..r.crop_boxes.len() {
                let name = format!("{}_crop{k}.png", r.stem);
                files.push(Path::new("images").join(&r.class_name).join(&name));
                files.push(Path::new("masks").join(&r.class_name).join(&name));
            }
        }
        files
    }
}

/// A mask as 8-bit levels at image size: 16-bit levels keep their high byte, a mask of another
/// size is resized to the image with OpenCV's nearest rule (as the reference does).
fn mask_for_image(path: &Path, size: (u32, u32)) -> Result<GrayImage> {
    let m = imageio::read_map(path)?;
    let levels: Vec<u8> = match m.depth {
        BitDepth::Eight => m.pixels.iter().map(|&v| v as u8).collect(),
        BitDepth::Sixteen => m.pixels.iter().map(|&v| (v >> 8) as u8).collect(),
    };
    let g =
        GrayImage::from_raw(m.width as u32, m.height as u32, levels).expect("one byte per pixel");
    Ok(if g.dimensions() == size {
        g
    } else {
        mask_at_image_size(&g, size)
    })
}

/// Crops every image by its mask, keeping at most `max_crops` boxes, and writes
/// `out/images/<class>/<stem>_crop<k>.png`, `out/masks/<class>/…` and `prepare_base.json`.
pub fn prepare_base(
    items: &[BaseItem],
    out: &Path,
    max_crops: usize,
    rule: &CropRule,
    progress: bool,
) -> Result<BaseSummary> {
    if max_crops == 0 {
        return Err(Error::usage("--max-crops must be at least 1"));
    }
    if items.is_empty() {
        return Err(Error::usage("no base images to crop"));
    }
    let previous: Option<BaseSummary> = std::fs::read_to_string(out.join(BASE_SUMMARY_FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let pb = progress_bar(items.len(), "prepare-base", progress);
    let records: Vec<BaseRecord> = items
        .par_iter()
        .map(|it| {
            let picture = Picture::read(&it.image)?;
            let size = picture.dimensions();
            let mask = mask_for_image(&it.mask, size)?;
            let empty_mask = mask.as_raw().iter().all(|&v| v == 0);
            // the reference passes est_anomaly_num = save_max - 1 and keeps est + 1 boxes
            let crops = crop_by_mask(&picture, &mask, max_crops - 1, rule);
            for (k, (img, m)) in crops.images.into_iter().zip(crops.masks).enumerate() {
                let name = format!("{}_crop{k}.png", it.stem);
                let dir = out.join("images").join(&it.class_name);
                write_png(
                    &dir.join(&name),
                    img.as_bytes(),
                    img.dimensions(),
                    img.color().into(),
                    PngKind::Picture,
                )?;
                let dir = out.join("masks").join(&it.class_name);
                write_png(
                    &dir.join(&name),
                    m.as_raw(),
                    m.dimensions(),
                    ExtendedColorType::L8,
                    PngKind::Mask,
                )?;
            }
            pb.inc(1);
            Ok(BaseRecord {
                class_name: it.class_name.clone(),
                stem: it.stem.clone(),
                image: it.image.clone(),
                mask: it.mask.clone(),
                image_size: [size.0, size.1],
                empty_mask,
                crop_boxes: crops.boxes,
            })
        })
        .collect::<Result<_>>()?;
    pb.finish_and_clear();
    let empty = records.iter().filter(|r| r.empty_mask).count();
    if empty > 0 {
        log::warn!("{empty} masks have no foreground: their whole image was used as the crop");
    }
    let summary = BaseSummary { max_crops, records };
    let body = serde_json::to_vec_pretty(&summary).expect("summary serialises");
    crate::fsutil::atomic_write(&out.join(BASE_SUMMARY_FILE), &body)?;
    if let Some(prev) = previous {
        remove_stale(out, &prev.output_files(), &summary.output_files());
    }
    Ok(summary)
}
