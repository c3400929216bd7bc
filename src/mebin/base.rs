//! Cropping a labelled base set by its ground-truth masks with MEBin's cropping rule (the
//! reference's `datasets/aebad_preprocess.py`: at most 2 crops per image).
//! Its masks are read by `mask_for_image`, not `imageio::read_mask`: the reference keeps the
//! mask's grey levels here (no threshold at half), and so does this stage.

use std::path::{Path, PathBuf};

use image::{ExtendedColorType, GenericImageView, GrayImage};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::crop::{CropBox, CropRule};
use super::job::{crop_by_mask, mask_at_image_size, write_png, Picture, PngKind};
use crate::error::ResultExt;
use crate::error::{Error, Result};
use crate::fsutil::{StageOutput, StageSummary};
use crate::imageio::{self, describe_files, BitDepth, IMAGE_EXTENSIONS, MAP_EXTENSIONS};
use crate::logging::progress_bar;

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

impl StageSummary for BaseSummary {
    const FILE: &'static str = BASE_SUMMARY_FILE;
    fn written_files(&self) -> Vec<PathBuf> {
        self.output_files()
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
    let output = StageOutput::<BaseSummary>::open(out);
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
    output.finish(&summary)?;
    Ok(summary)
}

/// A validated `prepare-base` request: labelled images and their masks, cropped by the masks.
#[derive(Debug, Clone)]
pub struct PrepareBaseSpec {
    /// `DIR/<class>/<stem>.<ext>`.
    pub images: PathBuf,
    /// `DIR/<class>/<stem>.png`, same stems as the images.
    pub masks: PathBuf,
    /// `OUT/images/<class>/…`, `OUT/masks/<class>/…`.
    pub out: PathBuf,
    /// At most this many crops per image (>= 1).
    pub max_crops: usize,
    /// At most this many images per class, spread evenly over each class's sorted stems.
    pub max_per_class: Option<usize>,
    pub overwrite: bool,
}

/// The fingerprint of a `prepare-base` output folder.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BaseFingerprint {
    pub images: crate::fingerprint::AbsPath,
    pub masks: crate::fingerprint::AbsPath,
    pub max_crops: usize,
    pub max_per_class: Option<usize>,
}

impl PrepareBaseSpec {
    /// The fingerprint of this run's output folder (see [`BaseFingerprint`]).
    pub fn fingerprint(&self) -> BaseFingerprint {
        // Exhaustive on purpose: each field is either recorded or has a reason not to be.
        let PrepareBaseSpec {
            images,
            masks,
            max_crops,
            max_per_class,
            // Where the outputs go, and whether an earlier run's may be replaced.
            out: _,
            overwrite: _,
        } = self;
        BaseFingerprint {
            images: crate::fingerprint::AbsPath::new(images),
            masks: crate::fingerprint::AbsPath::new(masks),
            max_crops: *max_crops,
            max_per_class: *max_per_class,
        }
    }
}

/// The base-set stage: pairs images with masks, thins, crops and writes `spec.out`.
pub fn run(spec: &PrepareBaseSpec) -> Result<BaseSummary> {
    if spec.max_crops == 0 {
        return Err(Error::usage("--max-crops must be at least 1"));
    }
    if spec.max_per_class == Some(0) {
        return Err(Error::usage("--max-per-class must be at least 1"));
    }
    let images = imageio::list_typed_files(&spec.images, IMAGE_EXTENSIONS)
        .with_context(|| "listing --images")?;
    if images.is_empty() {
        return Err(Error::input(
            &spec.images,
            "no images found (expected DIR/<class>/<stem>.<png|jpg|bmp|tif>)",
        ));
    }
    let masks = imageio::list_typed_files(&spec.masks, MAP_EXTENSIONS)
        .with_context(|| "listing --masks")?;
    let mut p = imageio::pair_masks(&images, &masks, |_| false);
    let unused = std::mem::take(&mut p.unused);
    let masks = p.or_error(|missing| {
        Error::usage(format!(
            "images without a mask (same <class>/<stem> under --masks): {}",
            describe_files(missing, &spec.images, 5)
        ))
    })?;
    if !unused.is_empty() {
        log::warn!(
            "masks without an image are ignored: {}",
            describe_files(&unused, &spec.masks, 5)
        );
    }
    let items: Vec<BaseItem> = images
        .into_iter()
        .zip(masks)
        .filter_map(|(i, m)| {
            Some(BaseItem {
                class_name: i.type_name,
                stem: i.stem,
                image: i.path,
                mask: m?,
            })
        })
        .collect();
    let items = match spec.max_per_class {
        Some(n) => thin_per_class(items, n),
        None => items,
    };
    let fingerprint = crate::fingerprint::to_value(&spec.fingerprint());
    crate::fsutil::prepare_output_dir(
        &spec.out,
        &[("--images", &spec.images), ("--masks", &spec.masks)],
        "prepare-base",
        &fingerprint,
        spec.overwrite,
    )?;
    prepare_base(
        &items,
        &spec.out,
        spec.max_crops,
        &CropRule::default(),
        true,
    )
    .with_context(|| format!("cropping the base set {}", spec.images.display()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_follows_every_setting_and_keeps_its_old_form() {
        use crate::fingerprint::check::{fingerprint_follows, Change};
        let spec = || PrepareBaseSpec {
            images: "/b/images".into(),
            masks: "/b/masks".into(),
            out: "/b/out".into(),
            max_crops: 2,
            max_per_class: None,
            overwrite: false,
        };
        let changes: &[Change<PrepareBaseSpec>] = &[
            ("images", |s| s.images = "/b/other".into()),
            ("masks", |s| s.masks = "/b/other".into()),
            ("max_crops", |s| s.max_crops = 3),
            ("max_per_class", |s| s.max_per_class = Some(4)),
        ];
        let same: &[Change<PrepareBaseSpec>] = &[
            ("out", |s| s.out = "/elsewhere".into()),
            ("overwrite", |s| s.overwrite = true),
        ];
        fingerprint_follows(spec, PrepareBaseSpec::fingerprint, changes, same, &[]);
        let s = spec();
        let old = serde_json::json!({
            "images": crate::fsutil::absolute_value(&s.images),
            "masks": crate::fsutil::absolute_value(&s.masks),
            "max_crops": s.max_crops,
            "max_per_class": s.max_per_class,
        });
        assert_eq!(crate::fingerprint::to_value(&s.fingerprint()), old);
    }

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
