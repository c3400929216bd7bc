//! Localisation metrics of anomaly maps against ground-truth masks, per map and per defect type.
//!
//! Pixel AUROC did not predict what reaches the class-discovery model: a detector can rank most
//! defect pixels above most normal ones and still put each map's peak, and so MEBin's crops, on
//! background. So, per map (resized bilinearly to its mask's size, the original image size):
//! - **argmax-in-defect**: the map's maximum (the first in row-major order on ties) lies in the
//!   mask dilated by `r = max(1, round(0.02 max(H, W)))` pixels (a (2r+1)² square);
//! - **best IoU**: the largest IoU of `map >= t` with the mask over thresholds `t` (each distinct
//!   level of an 8- or 16-bit map, [`FLOAT_THRESHOLDS`] even steps over a float map's range);
//! - with MEBin run over the set ([`mebin_touch`]): how many crops touch a defect pixel, whether
//!   one of the image's crops does, and whether the map had no stable interval (then cropped
//!   around its peak, as `binarize` does by default).
//!
//! Maps with an empty mask (normal images) are not measured ([`localize`] gives None); they count
//! in pixel AUROC and AUPRO (from [`super::eval`], at the map's own size), which the
//! [`LocAggregator`] adds per type and overall. [`folders`] runs it all over a folder of maps
//! (`anomalyncd maps-eval`). A detector's own loop, on its float maps before quantisation:
//!
//! ```text
//! let mut agg = LocAggregator::default();
//! for each test map (w×h floats) with its mask at image size:
//!     agg.add(type_name, localize(&map, w, h, &mask).as_ref());
//!     agg.add_pixels(type_name, &map, &mask_resized_to_w_h_by_nearest);  // pixel AUROC / AUPRO
//! print!("{}", render_table(&agg.finish()));
//! ```
//!
//! Memory: per map only its resized copy (4 bytes per mask pixel) while it is measured; the
//! aggregator keeps 8 bytes per pixel given to `add_pixels`, as `detect`'s own pixel metrics.

use std::collections::BTreeMap;

use image::GrayImage;
use serde::{Deserialize, Serialize};

use super::eval::PixelSet;
use crate::imageio::GrayMap;
use crate::mebin::crop::{self, CropBox, CropRule, NoInterval};
use crate::mebin::job::mask_at_image_size;
use crate::mebin::{binarize_map, Params, SearchRange};

pub mod folders;
mod table;

pub use folders::{evaluate_folders, MapsEvalReport, MapsEvalSpec};
pub use table::render_table;

/// The mask's dilation radius for argmax-in-defect, as a fraction of its larger side: a peak a
/// few pixels off a thin scratch still puts MEBin's crop on it.
pub const DILATION_FRACTION: f64 = 0.02;

/// Thresholds tried for the best IoU of a float map, evenly spaced from its minimum to its maximum.
pub const FLOAT_THRESHOLDS: usize = 64;

/// Localisation of one map with a non-empty mask.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MapLoc {
    pub argmax_in_defect: bool,
    pub best_iou: f64,
    /// The threshold (on the map's own scale) that gives `best_iou`.
    pub best_threshold: f32,
    /// MEBin's crops against the mask, when MEBin ran ([`mebin_touch`]).
    pub crops: Option<CropTouch>,
}

/// MEBin's crops of one map against its mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CropTouch {
    pub crops: usize,
    /// Crops whose box holds at least one defect pixel.
    pub touching: usize,
    /// No stable interval: MEBin found no anomaly (`est_anomaly_num == 0`, threshold at the
    /// map's top level) and cropped the whole image.
    pub no_interval: bool,
}

/// `max(1, round(DILATION_FRACTION * max(w, h)))`.
pub fn dilation_radius(w: usize, h: usize) -> usize {
    ((DILATION_FRACTION * w.max(h) as f64).round() as usize).max(1)
}

/// Localisation of a float map (`w`×`h`, row-major) against `mask` (> 127 = defect, any size:
/// the map is resized to it). None when the mask has no defect pixel.
///
/// Float maps are thresholded at [`FLOAT_THRESHOLDS`] levels evenly spaced over the map's range,
/// as an 8-bit quantisation would place them. Not at quantiles: a small defect covers less of
/// the map than one quantile step (on the MTD oracle maps, 64 quantiles gave a mean best IoU
/// of 0.50 against 0.74 at the maps' own 8-bit levels; 64 even steps gave 0.74).
pub fn localize(map: &[f32], w: usize, h: usize, mask: &GrayImage) -> Option<MapLoc> {
    assert!(
        w > 0 && h > 0 && map.len() == w * h,
        "localize: a {w}x{h} map needs w*h > 0 values, got {}",
        map.len()
    );
    if !mask.pixels().any(|p| p[0] > 127) {
        return None;
    }
    let finite = map.iter().copied().filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let mut thresholds: Vec<f32> = if lo <= hi {
        let steps = (FLOAT_THRESHOLDS - 1) as f32;
        (0..FLOAT_THRESHOLDS)
            .map(|i| lo + (hi - lo) * (i as f32 / steps))
            .collect()
    } else {
        Vec::new()
    };
    thresholds.dedup();
    let values = resize_bilinear(map, w, h, mask.width() as usize, mask.height() as usize);
    Some(measure(&values, mask, &thresholds))
}

/// [`localize`] for an 8- or 16-bit map, thresholded at each of its distinct levels.
pub fn localize_levels(map: &GrayMap, mask: &GrayImage) -> Option<MapLoc> {
    if !mask.pixels().any(|p| p[0] > 127) {
        return None;
    }
    let mut present = vec![false; map.max() as usize + 1];
    map.pixels.iter().for_each(|&v| present[v as usize] = true);
    let thresholds: Vec<f32> = (0..present.len())
        .filter(|&v| present[v])
        .map(|v| v as f32)
        .collect();
    let levels: Vec<f32> = map.pixels.iter().map(|&v| v as f32).collect();
    let (mw, mh) = (mask.width() as usize, mask.height() as usize);
    let values = resize_bilinear(&levels, map.width, map.height, mw, mh);
    Some(measure(&values, mask, &thresholds))
}

/// Argmax-in-defect and best IoU of `values` (at the mask's size) over sorted `thresholds`.
fn measure(values: &[f32], mask: &GrayImage, thresholds: &[f32]) -> MapLoc {
    let (w, h) = (mask.width() as usize, mask.height() as usize);
    let defect = |i: usize| mask.as_raw()[i] > 127;
    // First maximum in row-major order; NaN never wins.
    let mut top = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[top] || (values[top].is_nan() && !v.is_nan()) {
            top = i;
        }
    }
    // The dilated mask is needed at one pixel only: any defect pixel in the square around it.
    let r = dilation_radius(w, h);
    let (tx, ty) = (top % w, top / w);
    let argmax_in_defect = (ty.saturating_sub(r)..(ty + r + 1).min(h))
        .any(|y| (tx.saturating_sub(r)..(tx + r + 1).min(w)).any(|x| defect(y * w + x)));

    // A pixel at or above thresholds[..k] only, k = how many thresholds it reaches: count defect
    // and normal pixels per k, then sweep the thresholds from the top.
    let mut on_defect = vec![0usize; thresholds.len() + 1];
    let mut on_normal = vec![0usize; thresholds.len() + 1];
    let mut mask_area = 0;
    for (i, &v) in values.iter().enumerate() {
        let k = thresholds.partition_point(|&t| t <= v);
        if defect(i) {
            on_defect[k] += 1;
            mask_area += 1;
        } else {
            on_normal[k] += 1;
        }
    }
    let (mut tp, mut fp) = (0usize, 0usize);
    let (mut best_iou, mut best_threshold) = (0.0, thresholds.last().copied().unwrap_or(0.0));
    for j in (0..thresholds.len()).rev() {
        tp += on_defect[j + 1];
        fp += on_normal[j + 1];
        let iou = tp as f64 / (mask_area + fp) as f64;
        if iou > best_iou {
            (best_iou, best_threshold) = (iou, thresholds[j]);
        }
    }
    MapLoc {
        argmax_in_defect,
        best_iou,
        best_threshold,
        crops: None,
    }
}

/// Bilinear resize with pixel centres aligned (OpenCV's `INTER_LINEAR`, torch's
/// `align_corners=False`), without antialiasing. The image crate's filters clamp float pixels to
/// 0..=1, which raw detector scores exceed.
pub fn resize_bilinear(src: &[f32], sw: usize, sh: usize, dw: usize, dh: usize) -> Vec<f32> {
    assert_eq!(src.len(), sw * sh, "resize_bilinear: wrong pixel count");
    if (sw, sh) == (dw, dh) {
        return src.to_vec();
    }
    // Per output coordinate: the two source indices and the second one's weight.
    let axis = |s: usize, d: usize| -> Vec<(usize, usize, f32)> {
        let scale = s as f64 / d as f64;
        (0..d)
            .map(|o| {
                let x = ((o as f64 + 0.5) * scale - 0.5).clamp(0.0, (s - 1) as f64);
                let i0 = x.floor() as usize;
                (i0, (i0 + 1).min(s - 1), (x - i0 as f64) as f32)
            })
            .collect()
    };
    let (xs, ys) = (axis(sw, dw), axis(sh, dh));
    let mut out = Vec::with_capacity(dw * dh);
    for &(y0, y1, fy) in &ys {
        let (r0, r1) = (&src[y0 * sw..(y0 + 1) * sw], &src[y1 * sw..(y1 + 1) * sw]);
        out.extend(xs.iter().map(|&(x0, x1, fx)| {
            let top = r0[x0] + (r0[x1] - r0[x0]) * fx;
            let bottom = r1[x0] + (r1[x1] - r1[x0]) * fx;
            top + (bottom - top) * fy
        }));
    }
    out
}

/// Does the crop (its Pillow pixel box, clipped to the image) hold a defect pixel of `mask`
/// (at image size, > 127 = defect)?
pub fn crop_touches(mask: &GrayImage, b: &CropBox) -> bool {
    let (w, h) = (mask.width() as i64, mask.height() as i64);
    let (l, u, r, bt) = b.pixel_box();
    let (x0, x1) = (l.clamp(0, w) as usize, r.clamp(0, w) as usize);
    let (y0, y1) = (u.clamp(0, h) as usize, bt.clamp(0, h) as usize);
    (y0..y1).any(|y| {
        let row = &mask.as_raw()[y * w as usize..(y + 1) * w as usize];
        row[x0..x1.max(x0)].iter().any(|&v| v > 127)
    })
}

/// MEBin on one map with the set's search range, as `binarize` crops it (mask resized to the
/// image, the reference's crop rule), and its crops against `mask`, which is at image size.
pub fn mebin_touch(
    map: &GrayMap,
    range: &SearchRange,
    params: &Params,
    mask: &GrayImage,
) -> CropTouch {
    let res = binarize_map(map, range, params);
    let rule = CropRule::default();
    let mut binary = res.binary;
    // As `binarize` does by default: a map without a stable interval is cropped around its peak.
    if res.est_anomaly_num == 0 && rule.no_interval == NoInterval::Peak {
        if let Some(p) = crate::mebin::peak::peak_region(map) {
            binary = p.mask;
        }
    }
    let at_image = mask_at_image_size(&binary, mask.dimensions());
    let boxes = crop::crop_boxes(&at_image, res.est_anomaly_num, &rule);
    CropTouch {
        crops: boxes.len(),
        touching: boxes.iter().filter(|b| crop_touches(mask, b)).count(),
        no_interval: res.est_anomaly_num == 0,
    }
}

/// Per-type and overall results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocReport {
    /// Sorted by type name.
    pub types: Vec<TypeLoc>,
    pub overall: TypeLoc,
}

/// One row of the report: a defect type, or all maps (`type` "overall").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TypeLoc {
    #[serde(rename = "type")]
    pub type_name: String,
    pub maps: usize,
    /// Maps measured for localisation (with a defect in the mask; not normal ones).
    pub localized_maps: usize,
    pub argmax_in_defect: usize,
    /// `argmax_in_defect / localized_maps`.
    pub argmax_in_defect_rate: Option<f64>,
    /// Mean best-threshold IoU over the localised maps.
    pub mean_best_iou: Option<f64>,
    /// MEBin's crops over the localised maps; None when MEBin did not run (no images).
    pub mebin: Option<MebinLoc>,
    pub pixel_auroc: Option<f64>,
    pub aupro: Option<f64>,
}

/// MEBin's crops of one type's localised maps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MebinLoc {
    pub maps: usize,
    pub crops: usize,
    pub crops_touching: usize,
    pub crops_touching_rate: Option<f64>,
    /// Maps with at least one crop touching a defect.
    pub images_touching: usize,
    pub images_touching_rate: Option<f64>,
    /// Maps without a stable interval.
    pub no_interval: usize,
}

#[derive(Debug, Default)]
struct Counts {
    maps: usize,
    localized: usize,
    argmax_in: usize,
    iou_sum: f64,
    mebin_maps: usize,
    crops: usize,
    touching: usize,
    images_touching: usize,
    no_interval: usize,
}

impl Counts {
    fn add(&mut self, loc: Option<&MapLoc>) {
        self.maps += 1;
        let Some(l) = loc else { return };
        self.localized += 1;
        self.argmax_in += usize::from(l.argmax_in_defect);
        self.iou_sum += l.best_iou;
        if let Some(c) = &l.crops {
            self.mebin_maps += 1;
            self.crops += c.crops;
            self.touching += c.touching;
            self.images_touching += usize::from(c.touching > 0);
            self.no_interval += usize::from(c.no_interval);
        }
    }

    fn merge(&mut self, o: &Counts) {
        self.maps += o.maps;
        self.localized += o.localized;
        self.argmax_in += o.argmax_in;
        self.iou_sum += o.iou_sum;
        self.mebin_maps += o.mebin_maps;
        self.crops += o.crops;
        self.touching += o.touching;
        self.images_touching += o.images_touching;
        self.no_interval += o.no_interval;
    }

    fn row(&self, type_name: &str, pixels: &PixelSet) -> TypeLoc {
        let rate = |n: usize, of: usize| (of > 0).then(|| n as f64 / of as f64);
        let pm = pixels.metrics();
        TypeLoc {
            type_name: type_name.to_string(),
            maps: self.maps,
            localized_maps: self.localized,
            argmax_in_defect: self.argmax_in,
            argmax_in_defect_rate: rate(self.argmax_in, self.localized),
            mean_best_iou: (self.localized > 0).then(|| self.iou_sum / self.localized as f64),
            mebin: (self.mebin_maps > 0).then(|| MebinLoc {
                maps: self.mebin_maps,
                crops: self.crops,
                crops_touching: self.touching,
                crops_touching_rate: rate(self.touching, self.crops),
                images_touching: self.images_touching,
                images_touching_rate: rate(self.images_touching, self.mebin_maps),
                no_interval: self.no_interval,
            }),
            pixel_auroc: pm.map(|m| m.auroc),
            aupro: pm.map(|m| m.aupro),
        }
    }
}

/// Collects per-map results by type, and the maps' pixels for pixel AUROC / AUPRO.
#[derive(Debug, Default)]
pub struct LocAggregator {
    types: BTreeMap<String, (Counts, PixelSet)>,
}

impl LocAggregator {
    /// Counts one map of `type_name`; `loc` None for a map that is not measured (empty mask).
    pub fn add(&mut self, type_name: &str, loc: Option<&MapLoc>) {
        self.entry(type_name).0.add(loc);
    }

    /// Adds a map's scores for the pixel metrics: `scores` row-major at `mask`'s size (resize
    /// the mask by nearest neighbour to the map, as `detect` does), > 127 = defect.
    pub fn add_pixels(&mut self, type_name: &str, scores: &[f32], mask: &GrayImage) {
        self.entry(type_name).1.add(scores, mask);
    }

    fn entry(&mut self, type_name: &str) -> &mut (Counts, PixelSet) {
        self.types.entry(type_name.to_string()).or_default()
    }

    /// The rows per type and overall. Each type's pixels move into the overall set once its own
    /// metrics are taken, so the pixels are held once.
    pub fn finish(self) -> LocReport {
        let (mut all, mut all_pixels) = (Counts::default(), PixelSet::default());
        let mut types = Vec::with_capacity(self.types.len());
        for (name, (counts, pixels)) in self.types {
            types.push(counts.row(&name, &pixels));
            all.merge(&counts);
            all_pixels.append(pixels);
        }
        LocReport {
            types,
            overall: all.row("overall", &all_pixels),
        }
    }
}

/// The report of (type, map result) items, without pixel metrics.
pub fn aggregate(items: impl IntoIterator<Item = (String, MapLoc)>) -> LocReport {
    let mut agg = LocAggregator::default();
    for (t, loc) in items {
        agg.add(&t, Some(&loc));
    }
    agg.finish()
}

#[cfg(test)]
mod tests;
