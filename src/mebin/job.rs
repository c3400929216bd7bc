//! MEBin over a whole set of paired maps, a [`BinarizeJob`]: read the maps, take the search
//! range, binarize and crop every map in parallel, write `binary/`, `crops/`, `scores.json` and
//! `mebin.json`. The stage, [`super::run`], pairs the folders, prepares the output folder and runs
//! the job ([`BinarizeJob::run`]); `binarize`, `train` and `predict` (with a stored range) all go
//! through it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{DynamicImage, ExtendedColorType, GenericImageView, GrayImage, ImageEncoder, RgbImage};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::crop::{self, CropBox, CropRule, NoInterval};
pub use super::read::MapItem;
use super::resize::{nearest, BicubicView, Leveled};
use super::{binarize_map, peak, read, BitDepth, GrayMap, MapResult, Params, SearchRange};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{StageOutput, StageSummary};
use crate::imageio::{self, FloatScale};
use crate::logging::progress_bar;

/// Where the threshold search range comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RangeSource {
    /// The reference's rule over this set of maps; `min_threshold` replaces the smallest maximum.
    FromMaps { min_threshold: Option<f64> },
    /// A stored range (e.g. from training), for binarizing new maps the same way, with the float
    /// scale of the training maps when they were float maps.
    Fixed(SearchRange, Option<FloatScale>),
}

/// A whole-set MEBin run.
#[derive(Debug, Clone)]
pub struct BinarizeJob<'a> {
    pub items: &'a [MapItem],
    pub params: Params,
    pub range: RangeSource,
    pub rule: CropRule,
    /// Ours: what is done to each map before MEBin (`binarization.refine`).
    pub refine: super::refine::MapRefine,
    /// Output folder (already prepared with `fsutil::prepare_output_dir`).
    pub out: &'a Path,
    /// Show a progress bar.
    pub progress: bool,
}

/// One map's result as written to `mebin.json` (field meanings as in the reference's golden file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapRecord {
    pub class_name: String,
    pub stem: String,
    #[serde(with = "crate::fsutil::serde_path")]
    pub map: PathBuf,
    #[serde(with = "crate::fsutil::serde_path")]
    pub image: PathBuf,
    /// (width, height) of the original image.
    pub image_size: [u32; 2],
    /// (width, height) of the anomaly map.
    pub map_size: [u32; 2],
    /// Raw-scale threshold (`erode(map > threshold)` is the mask).
    pub threshold: u32,
    pub est_anomaly_num: usize,
    /// Components at each normalised threshold 255, 255 − s, …
    pub component_counts: Vec<u32>,
    /// Foreground pixels of the mask at map size.
    pub binary_foreground_pixels: usize,
    /// (left, up, right, bottom) in image pixels.
    pub crop_boxes: Vec<CropBox>,
    /// (width, height) of each crop.
    pub crop_sizes: Vec<[u32; 2]>,
    /// Max of the normalised map resized to the image (Pillow bicubic) inside each box, / 255.
    pub crop_scores: Vec<f64>,
    /// Foreground pixels of each mask crop.
    pub crop_mask_foreground: Vec<usize>,
    /// Ours: no stable interval, and the mask is the region around the map's peak
    /// (`binarization.no_interval: peak`; `threshold` is then that region's level).
    #[serde(default)]
    pub peak_fallback: bool,
}

impl MapRecord {
    /// `<stem>_crop<k>.png` for each crop, the reference's naming.
    pub fn crop_names(&self) -> Vec<String> {
        (0..self.crop_boxes.len())
            .map(|k| format!("{}_crop{k}.png", self.stem))
            .collect()
    }
}

/// `mebin.json`: the range and settings used, and one record per map sorted by (type, stem).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BinarizeSummary {
    pub min_th: f64,
    pub max_th: f64,
    pub sample_rate: u32,
    pub min_interval_len: usize,
    pub erode: bool,
    /// Ours: `binarization.interval_position`; left out when it is the reference's 1.
    #[serde(
        default = "crate::config::interval_end",
        skip_serializing_if = "crate::config::is_interval_end"
    )]
    pub interval_position: f64,
    /// 8 or 16: the maps' bit depth (8 for float maps, after normalisation).
    pub bit_depth: u8,
    /// Ours: normal images' maps that entered the search range (never cropped).
    #[serde(default)]
    pub normal_maps: usize,
    /// Ours: for float maps, the `[min, max]` over the set they were normalised over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub float_scale: Option<FloatScale>,
    pub records: Vec<MapRecord>,
}

impl BinarizeSummary {
    /// One line on what was binarized: maps, range, crops and maps without a stable interval.
    pub fn describe(&self, out: &Path) -> String {
        let crops: usize = self.records.iter().map(|r| r.crop_boxes.len()).sum();
        let empty = self
            .records
            .iter()
            .filter(|r| r.est_anomaly_num == 0)
            .count();
        let peaks = self.records.iter().filter(|r| r.peak_fallback).count();
        let normal = match self.normal_maps {
            0 => String::new(),
            n => format!(" with {n} normal-image maps"),
        };
        format!(
            "{} maps binarized (search range [{}, {}]{normal}), {crops} crops, {empty} maps without a \
             stable interval ({peaks} cropped around their peak); outputs in {} (binary/, crops/, \
             scores.json, mebin.json)",
            self.records.len(),
            self.min_th,
            self.max_th,
            out.display()
        )
    }

    pub fn range(&self) -> SearchRange {
        SearchRange {
            min_th: self.min_th,
            max_th: self.max_th,
        }
    }

    /// The reference's scores JSON: `{type: {"<stem>_crop<k>.png": score}}`.
    pub fn scores(&self) -> BTreeMap<String, BTreeMap<String, f64>> {
        let mut out: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
        for r in &self.records {
            let t = out.entry(r.class_name.clone()).or_default();
            for (name, s) in r.crop_names().into_iter().zip(&r.crop_scores) {
                t.insert(name, *s);
            }
        }
        out
    }

    /// Every file this run wrote, relative to the output folder.
    pub fn output_files(&self) -> Vec<PathBuf> {
        let mut files = vec![PathBuf::from(SCORES_FILE), PathBuf::from(SUMMARY_FILE)];
        for r in &self.records {
            files.push(binary_path(r));
            for name in r.crop_names() {
                files.push(Path::new("crops/images").join(&r.class_name).join(&name));
                files.push(Path::new("crops/masks").join(&r.class_name).join(&name));
                files.push(Path::new("crops/maps").join(&r.class_name).join(&name));
            }
        }
        files
    }
}

impl StageSummary for BinarizeSummary {
    const FILE: &'static str = SUMMARY_FILE;
    fn written_files(&self) -> Vec<PathBuf> {
        self.output_files()
    }
}

/// What a binarize output holds, for the fingerprints of stages that reuse one: 2 added each
/// crop's anomaly map (`crops/maps/`).
pub const OUTPUT_LAYOUT: u32 = 2;

pub const SCORES_FILE: &str = "scores.json";
pub const SUMMARY_FILE: &str = "mebin.json";

/// `binary/<type>/<stem>.png`: where a record's mask at image size is written, relative to the output.
pub fn binary_path(r: &MapRecord) -> PathBuf {
    Path::new("binary")
        .join(&r.class_name)
        .join(format!("{}.png", r.stem))
}

/// An original image in its own channel layout: gray images stay gray (and so do their crops,
/// which equal the reference's RGB crops after RGB conversion, at a third of the size and cost);
/// every other layout becomes 8-bit RGB.
pub enum Picture {
    Gray(GrayImage),
    Rgb(RgbImage),
}

impl Picture {
    pub fn read(path: &Path) -> Result<Picture> {
        match imageio::decode(path)? {
            DynamicImage::ImageLuma8(g) => Ok(Picture::Gray(g)),
            other => Ok(Picture::Rgb(other.into_rgb8())),
        }
    }

    pub fn dimensions(&self) -> (u32, u32) {
        match self {
            Picture::Gray(g) => g.dimensions(),
            Picture::Rgb(c) => c.dimensions(),
        }
    }

    /// Pillow-style crop (black outside the image), gray or RGB as the picture.
    pub fn crop(&self, b: &CropBox) -> DynamicImage {
        match self {
            Picture::Gray(g) => DynamicImage::ImageLuma8(crop::crop_gray(g, b)),
            Picture::Rgb(c) => DynamicImage::ImageRgb8(crop::crop_rgb(c, b)),
        }
    }
}

/// Crops of one image: the boxes, image crops and mask crops.
pub struct Crops {
    pub boxes: Vec<CropBox>,
    pub images: Vec<DynamicImage>,
    pub masks: Vec<GrayImage>,
}

/// Crops an image by a mask at image size with the reference's rule, keeping at most
/// `est_anomaly_num + 1` boxes.
pub fn crop_by_mask(
    picture: &Picture,
    mask: &GrayImage,
    est_anomaly_num: usize,
    rule: &CropRule,
) -> Crops {
    let boxes = crop::crop_boxes(mask, est_anomaly_num, rule);
    let images = boxes.iter().map(|b| picture.crop(b)).collect();
    let masks = boxes.iter().map(|b| crop::crop_gray(mask, b)).collect();
    Crops {
        boxes,
        images,
        masks,
    }
}

/// Crop scores: the max of the normalised map resized (Pillow bicubic, float32) to the image
/// inside each box, / 255; parts of a box outside the image count as 0, as Pillow's crop fills.
pub fn crop_scores(
    map: &GrayMap,
    range: &SearchRange,
    image_size: (u32, u32),
    boxes: &[CropBox],
) -> Vec<f64> {
    // The normalised value of each level, read through the levels (not a float copy of the map).
    let table: Vec<f32> = (0..=map.max())
        .map(|v| range.normalise(v as f64) as f32)
        .collect();
    let norm = Leveled {
        levels: &map.pixels,
        table: &table,
    };
    let (iw, ih) = (image_size.0 as usize, image_size.1 as usize);
    let view = BicubicView::over(&norm, map.width, map.height, iw, ih);
    boxes
        .iter()
        .map(|b| {
            let (l, u, r, bt) = b.pixel_box();
            let outside = l < 0 || u < 0 || r > iw as i64 || bt > ih as i64;
            let inside = view.max_in(l, u, r, bt);
            let m = match inside {
                Some(v) if outside => v.max(0.0),
                Some(v) => v,
                None => 0.0,
            };
            m as f64 / 255.0
        })
        .collect()
}

/// The mask at image size: OpenCV nearest resize of MEBin's binary map.
pub fn mask_at_image_size(binary: &GrayImage, image_size: (u32, u32)) -> GrayImage {
    let (w, h) = image_size;
    let data = nearest(
        binary.as_raw(),
        binary.width() as usize,
        binary.height() as usize,
        w as usize,
        h as usize,
    );
    GrayImage::from_raw(w, h, data).expect("one byte per pixel")
}

/// Everything one map produces, before writing.
pub struct MapOutput {
    pub record: MapRecord,
    pub mask: GrayImage,
    pub crops: Crops,
    /// Each crop's anomaly map (`crops/maps/`, for soft guidance).
    pub crop_maps: Vec<GrayImage>,
}

/// MEBin, mask at image size, crops and scores for one map.
pub fn process_map(
    item: &MapItem,
    map: &GrayMap,
    range: &SearchRange,
    params: &Params,
    rule: &CropRule,
) -> Result<MapOutput> {
    let MapResult {
        mut threshold,
        est_anomaly_num,
        component_counts,
        mut binary,
    } = binarize_map(map, range, params);
    let mut peak_fallback = false;
    if est_anomaly_num == 0 && rule.no_interval == NoInterval::Peak {
        if let Some(p) = peak::peak_region(map) {
            (threshold, binary, peak_fallback) = (p.threshold, p.mask, true);
        }
    }
    let picture = Picture::read(&item.image)?;
    let size = picture.dimensions();
    let mask = mask_at_image_size(&binary, size);
    let crops = crop_by_mask(&picture, &mask, est_anomaly_num, rule);
    let crop_scores = crop_scores(map, range, size, &crops.boxes);
    let crop_maps = crop::crop_maps(map, size, &crops.boxes);
    let record = MapRecord {
        class_name: item.class_name.clone(),
        stem: item.stem.clone(),
        map: item.map.clone(),
        image: item.image.clone(),
        image_size: [size.0, size.1],
        map_size: [map.width as u32, map.height as u32],
        threshold,
        est_anomaly_num,
        component_counts,
        binary_foreground_pixels: binary.as_raw().iter().filter(|&&v| v != 0).count(),
        crop_sizes: crops.boxes.iter().map(|b| b.pixel_size().into()).collect(),
        crop_mask_foreground: crops
            .masks
            .iter()
            .map(|m| m.as_raw().iter().filter(|&&v| v != 0).count())
            .collect(),
        crop_boxes: crops.boxes.clone(),
        crop_scores,
        peak_fallback,
    };
    Ok(MapOutput {
        record,
        mask,
        crops,
        crop_maps,
    })
}

/// Writes one map's mask and crops under `out`.
pub fn write_map_output(out: &Path, o: &MapOutput) -> Result<()> {
    let r = &o.record;
    write_png(
        &out.join(binary_path(r)),
        o.mask.as_raw(),
        o.mask.dimensions(),
        ExtendedColorType::L8,
        PngKind::Mask,
    )?;
    for (((name, img), m), cm) in r
        .crop_names()
        .iter()
        .zip(&o.crops.images)
        .zip(&o.crops.masks)
        .zip(&o.crop_maps)
    {
        let dir = out.join("crops/images").join(&r.class_name);
        write_png(
            &dir.join(name),
            img.as_bytes(),
            img.dimensions(),
            img.color().into(),
            PngKind::Picture,
        )?;
        let dir = out.join("crops/masks").join(&r.class_name);
        write_png(
            &dir.join(name),
            m.as_raw(),
            m.dimensions(),
            ExtendedColorType::L8,
            PngKind::Mask,
        )?;
        let dir = out.join("crops/maps").join(&r.class_name);
        write_png(
            &dir.join(name),
            cm.as_raw(),
            cm.dimensions(),
            ExtendedColorType::L8,
            PngKind::Picture,
        )?;
    }
    Ok(())
}

/// What a PNG holds, which decides its row filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PngKind {
    /// A mask (mostly long runs of equal bytes): no filter.
    Mask,
    /// An image: the "Up" filter.
    Picture,
}

/// Writes a PNG through a temporary file and a rename, so readers never see half a file.
///
/// Unlike `fsutil::atomic_write` it does not fsync each file: a run writes thousands of small
/// crops, an fsync each made the command several times slower, and a crash mid-run is handled by
/// rerunning (every file is rewritten). The summaries, written last, are synced. Fast deflate,
/// with the filter that was fastest at about the adaptive filter's size on these images.
pub fn write_png(
    path: &Path,
    data: &[u8],
    (w, h): (u32, u32),
    color: ExtendedColorType,
    kind: PngKind,
) -> Result<()> {
    let mut buf = Vec::with_capacity(data.len() / 2 + 1024);
    let filter = match kind {
        PngKind::Mask => FilterType::NoFilter,
        PngKind::Picture => FilterType::Up,
    };
    PngEncoder::new_with_quality(&mut buf, CompressionType::Fast, filter)
        .write_image(data, w, h, color)
        .map_err(|e| Error::runtime(format!("{}: cannot encode PNG: {e}", path.display())))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    // The folder usually exists: create it only when the first write says it is missing.
    let mut written = std::fs::write(&tmp, &buf);
    if matches!(&written, Err(e) if e.kind() == std::io::ErrorKind::NotFound) {
        std::fs::create_dir_all(dir).at(dir)?;
        written = std::fs::write(&tmp, &buf);
    }
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

impl BinarizeJob<'_> {
    /// Binarizes and crops every item but the normal ones, writes all outputs under `self.out`,
    /// and returns the summary. Files of an earlier run in `self.out` that this run does not
    /// produce again are removed (only those its `mebin.json` lists).
    pub fn run(&self) -> Result<BinarizeSummary> {
        if self.items.is_empty() {
            return Err(Error::usage("no anomaly maps to binarize"));
        }
        // With a stored range the normal maps have nothing to set: leave them unread.
        let fixed = matches!(self.range, RangeSource::Fixed(..));
        let items: Vec<&MapItem> = self
            .items
            .iter()
            .filter(|it| !(fixed && it.normal))
            .collect();
        if self.items.iter().all(|it| it.normal) {
            let mut types: Vec<&str> = self.items.iter().map(|it| it.class_name.as_str()).collect();
            types.dedup();
            return Err(Error::usage(format!(
                "all {} maps are normal-image maps (type folders {}): nothing to crop; add the \
                 defective images' maps, or do not name a defect type with --normal-type",
                self.items.len(),
                types.join(", ")
            )));
        }
        let stored_scale = match self.range {
            RangeSource::Fixed(_, s) => s,
            RangeSource::FromMaps { .. } => None,
        };
        let set = read::read_set(&items, stored_scale, &self.refine, self.progress)?;
        if fixed && stored_scale.is_none() && set.float_scale.is_some() {
            log::warn!(
                "float maps, but the stored range comes from 8/16-bit maps: these maps are normalised \
                 over their own set (min-max); export them as the training maps were for the same scale"
            );
        }
        let depth = set.depth;
        let normal_maps = items.iter().filter(|it| it.normal).count();
        let range = match self.range {
            RangeSource::Fixed(r, _) => r,
            RangeSource::FromMaps { min_threshold } => {
                SearchRange::from_maxima(&set.maxima, min_threshold)?
            }
        };
        if range.is_degenerate() {
            let why = match self.range {
                RangeSource::FromMaps {
                    min_threshold: None,
                } => format!("every map has the same maximum ({})", range.max_th),
                _ => format!(
                    "the lower end of the search range equals its upper end ({})",
                    range.max_th
                ),
            };
            log::warn!(
                "{why}: the threshold search range is empty, so no map has a stable interval (each is \
                 cropped around its peak, or whole under no_interval: whole_image; score 0); pass a \
                 --min-threshold below {} to search",
                range.max_th
            );
        }
        log::info!(
            "MEBin over {} maps, search range [{}, {}]{}",
            items.len() - normal_maps,
            range.min_th,
            range.max_th,
            if normal_maps > 0 {
                format!(" (set with {normal_maps} normal-image maps, which are not cropped)")
            } else {
                String::new()
            }
        );
        let output = StageOutput::<BinarizeSummary>::open(self.out);
        let pb = progress_bar(items.len() - normal_maps, "binarize", self.progress);
        let scale = set.float_scale;
        let records: Vec<MapRecord> = items
            .par_iter()
            .zip(set.maps.into_par_iter())
            .filter(|(item, _)| !item.normal)
            .map(|(item, map)| {
                let map = match map {
                    Some(m) => m,
                    None => read::reread(item, scale.as_ref(), &self.refine)?,
                };
                let o = process_map(item, &map, &range, &self.params, &self.rule)?;
                write_map_output(self.out, &o)?;
                pb.inc(1);
                Ok(o.record)
            })
            .collect::<Result<_>>()?;
        pb.finish_and_clear();
        let summary = BinarizeSummary {
            min_th: range.min_th,
            max_th: range.max_th,
            sample_rate: self.params.sample_rate,
            min_interval_len: self.params.min_interval_len,
            erode: self.params.erode,
            interval_position: self.params.interval_position,
            bit_depth: bits(depth),
            normal_maps,
            float_scale: scale,
            records,
        };
        let scores = serde_json::to_vec_pretty(&summary.scores()).expect("scores serialise");
        crate::fsutil::atomic_write(&self.out.join(SCORES_FILE), &scores)?;
        output.finish(&summary)?;
        Ok(summary)
    }
}

fn bits(d: BitDepth) -> u8 {
    match d {
        BitDepth::Eight => 8,
        BitDepth::Sixteen => 16,
    }
}
