//! Anomaly-centred crop boxes from a mask, as the reference's `crop_sub_image_mask` and
//! `merge_crop_boxes` compute them: bounding boxes of the external contours, padded squares of at
//! least a tenth of the larger side kept inside the image, close boxes merged and squared, the
//! largest `est_anomaly_num + 1` kept. The merge is a literal transcription (its grouping and
//! removal order decide which boxes survive), on lists of a handful of boxes.

use image::{GrayImage, RgbImage};
use serde::{Deserialize, Serialize};

pub use crate::config::NoInterval;

pub use super::contours::external_rects;

/// The reference's cropping constants.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropRule {
    /// Extra side around a component's bounding box (0.1 = 10 %).
    pub padding: f64,
    /// Boxes closer than this fraction of the larger image side are merged.
    pub max_merge_dist: f64,
    /// Smallest crop side as a fraction of the larger image side.
    pub min_crop_size: f64,
    /// Ours: the crop of a map without a stable interval (`binarization.no_interval`).
    pub no_interval: NoInterval,
    /// Ours: a factor on the crop's side (`binarization.crop_scale`; 1 = the reference's).
    pub scale: f64,
}

impl Default for CropRule {
    fn default() -> Self {
        CropRule {
            padding: 0.1,
            max_merge_dist: 0.01,
            min_crop_size: 0.1,
            no_interval: NoInterval::default(),
            scale: 1.0,
        }
    }
}

/// A crop box (left, up, right, bottom) in image pixels; may reach outside the image and be
/// fractional after merging, as in the reference. Serialises as `[left, up, right, bottom]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "[f64; 4]", into = "[f64; 4]")]
pub struct CropBox {
    pub left: f64,
    pub up: f64,
    pub right: f64,
    pub bottom: f64,
}

impl From<[f64; 4]> for CropBox {
    fn from(a: [f64; 4]) -> Self {
        CropBox {
            left: a[0],
            up: a[1],
            right: a[2],
            bottom: a[3],
        }
    }
}

impl From<CropBox> for [f64; 4] {
    fn from(b: CropBox) -> Self {
        [b.left, b.up, b.right, b.bottom]
    }
}

impl CropBox {
    fn area(&self) -> f64 {
        (self.right - self.left) * (self.bottom - self.up)
    }

    /// The integer box Pillow's `Image.crop` uses: each coordinate rounded half to even
    /// (Python's `round`).
    pub fn pixel_box(&self) -> (i64, i64, i64, i64) {
        let r = |v: f64| v.round_ties_even() as i64;
        (r(self.left), r(self.up), r(self.right), r(self.bottom))
    }

    /// (width, height) of the crop Pillow makes.
    pub fn pixel_size(&self) -> (u32, u32) {
        let (l, u, r, b) = self.pixel_box();
        ((r - l).max(0) as u32, (b - u).max(0) as u32)
    }

    /// Python tuple ordering, for the reference's `sorted(merge_group)`.
    fn tuple_cmp(&self, o: &CropBox) -> std::cmp::Ordering {
        [self.left, self.up, self.right, self.bottom]
            .partial_cmp(&[o.left, o.up, o.right, o.bottom])
            .unwrap_or(std::cmp::Ordering::Equal)
    }
}

/// The reference's `min_distance_of_rectangles` on (left, up, right, bottom) boxes: the gap
/// between two boxes, or −1 when they overlap.
fn min_distance(a: &CropBox, b: &CropBox) -> f64 {
    let (aw, ah) = (a.right - a.left, a.bottom - a.up);
    let (bw, bh) = (b.right - b.left, b.bottom - b.up);
    let dx = ((a.left + aw / 2.0) - (b.left + bw / 2.0)).abs();
    let dy = ((a.up + ah / 2.0) - (b.up + bh / 2.0)).abs();
    let (hw, hh) = ((aw + bw) / 2.0, (ah + bh) / 2.0);
    match (dx < hw, dy < hh) {
        (true, false) => dy - hh,
        (false, true) => dx - hw,
        (false, false) => ((dx - hw) * (dx - hw) + (dy - hh) * (dy - hh)).sqrt(),
        (true, true) => -1.0,
    }
}

fn remove_first(list: &mut Vec<CropBox>, b: &CropBox) {
    if let Some(i) = list.iter().position(|x| x == b) {
        list.remove(i);
    }
}

fn as_set(group: &[CropBox]) -> Vec<CropBox> {
    let mut s: Vec<CropBox> = Vec::new();
    for b in group {
        if !s.contains(b) {
            s.push(*b);
        }
    }
    s
}

/// The reference's `merge_crop_boxes`, step by step: per distinct box the group of boxes closer
/// than `int(side * max_merge_dist)`, distinct sorted groups, groups that are subsets of another
/// dropped, each group's boxes removed and their union (squared after each addition) appended;
/// finally sorted by area, largest first (stable).
pub fn merge_boxes(mut list: Vec<CropBox>, side: usize, max_merge_dist: f64) -> Vec<CropBox> {
    let threshold = ((side as f64) * max_merge_dist).trunc();
    // dict keyed by box: one group per distinct box, in first-seen order
    let mut keys: Vec<CropBox> = Vec::new();
    for b in &list {
        if !keys.contains(b) {
            keys.push(*b);
        }
    }
    let mut merge_list: Vec<Vec<CropBox>> = Vec::new();
    for k in &keys {
        let mut group: Vec<CropBox> = list
            .iter()
            .filter(|b| min_distance(k, b) < threshold)
            .copied()
            .collect();
        group.sort_by(|a, b| a.tuple_cmp(b));
        if !group.is_empty() && !merge_list.contains(&group) {
            merge_list.push(group);
        }
    }
    let mut to_remove: Vec<Vec<CropBox>> = Vec::new();
    for g1 in &merge_list {
        for g2 in &merge_list {
            let (s1, s2) = (as_set(g1), as_set(g2));
            if g1 != g2 && s1.iter().all(|b| s2.contains(b)) {
                to_remove.push(g1.clone());
            }
        }
    }
    for g in &to_remove {
        if let Some(i) = merge_list.iter().position(|x| x == g) {
            merge_list.remove(i);
        }
    }
    for group in &merge_list {
        remove_first(&mut list, &group[0]);
        for other in &group[1..] {
            remove_first(&mut list, other);
        }
        let mut m = group[0];
        for other in &group[1..] {
            m = CropBox {
                left: m.left.min(other.left),
                up: m.up.min(other.up),
                right: m.right.max(other.right),
                bottom: m.bottom.max(other.bottom),
            };
            let (w, h) = (m.right - m.left, m.bottom - m.up);
            if w > h {
                let d = (w - h) / 2.0;
                m = CropBox {
                    up: m.up - d,
                    bottom: m.bottom + d,
                    ..m
                };
            } else if w < h {
                let d = (h - w) / 2.0;
                m = CropBox {
                    left: m.left - d,
                    right: m.right + d,
                    ..m
                };
            }
        }
        list.push(m);
    }
    // Python's sorted(.., reverse=True) keeps equal areas in their order
    list.sort_by(|a, b| {
        b.area()
            .partial_cmp(&a.area())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    list
}

/// Crop boxes for a mask at image size (non-zero = anomaly), keeping at most
/// `est_anomaly_num + 1` (the reference keeps `[:est + 1]` when there are more than `est`).
/// An empty mask gives the whole image.
pub fn crop_boxes(mask: &GrayImage, est_anomaly_num: usize, rule: &CropRule) -> Vec<CropBox> {
    let (w, h) = (mask.width() as usize, mask.height() as usize);
    // The reference takes max(image.shape) of an RGB array (h, w, 3): the 3 counts for tiny images.
    let side = w.max(h).max(3);
    let mut rects = external_rects(mask.as_raw(), w, h);
    let boxes: Vec<CropBox> = if rects.is_empty() {
        vec![CropBox {
            left: 0.0,
            up: 0.0,
            right: w as f64,
            bottom: h as f64,
        }]
    } else {
        // sorted(zip(area, [x, y, w, h])): by area, then by the rectangle
        rects.sort_by_key(|&(x, y, rw, rh)| (rw * rh, x, y, rw, rh));
        rects
            .iter()
            .map(|&r| square_box(r, w as i64, h as i64, side as i64, rule))
            .collect()
    };
    let mut merged = merge_boxes(boxes, side, rule.max_merge_dist);
    if merged.len() > est_anomaly_num {
        merged.truncate(est_anomaly_num + 1);
    }
    merged
}

/// A component's padded square, at least `min_crop_size * side`, at most `side / 2` in radius,
/// shifted inside the image on the side it crosses (integer arithmetic as Python's `int()`).
fn square_box(
    r: (usize, usize, usize, usize),
    w: i64,
    h: i64,
    side: i64,
    rule: &CropRule,
) -> CropBox {
    let (x, y, rw, rh) = (r.0 as i64, r.1 as i64, r.2 as i64, r.3 as i64);
    let cy = ((y + y + rh) as f64 * 0.5) as i64;
    let cx = ((x + x + rw) as f64 * 0.5) as i64;
    let padded = (rh.max(rw) as f64 * (1.0 + rule.padding) * 0.5) as i64;
    // × 1.0 (the reference's) leaves the integer radius as it is.
    let mut radius =
        (padded.max((side as f64 * rule.min_crop_size) as i64) as f64 * rule.scale) as i64;
    // At least 1: in an image under 10 pixels a side a one-pixel component gives radius 0 by
    // the reference's rule, an empty crop that no image format can hold (found by fuzzing).
    radius = radius.max(1).min((side as f64 * 0.5) as i64);
    let (mut left, mut up, mut right, mut bottom) =
        (cx - radius, cy - radius, cx + radius, cy + radius);
    if left < 0 {
        (left, right) = (0, 2 * radius);
    } else if right > w {
        (left, right) = (w - 2 * radius, w);
    }
    if up < 0 {
        (up, bottom) = (0, 2 * radius);
    } else if bottom > h {
        (up, bottom) = (h - 2 * radius, h);
    }
    CropBox {
        left: left as f64,
        up: up as f64,
        right: right as f64,
        bottom: bottom as f64,
    }
}

/// Pillow's `crop` of an RGB image: the rounded box, black outside the image.
pub fn crop_rgb(img: &RgbImage, b: &CropBox) -> RgbImage {
    let (data, w, h) = crop_raw(img.as_raw(), img.width(), img.height(), 3, b);
    RgbImage::from_raw(w, h, data).expect("crop buffer matches its size")
}

/// The anomaly map inside each box, for soft mask guidance (`crops/maps/`): the map min-max
/// normalised over the whole image to 0..=255, resized bilinearly to the image's size and cut
/// as [`crop_gray`] cuts the mask (0 outside the image). The per-image scale is only for
/// storage: the model normalises each crop's map over its own patches.
pub fn crop_maps(
    map: &crate::imageio::GrayMap,
    image_size: (u32, u32),
    boxes: &[CropBox],
) -> Vec<GrayImage> {
    if boxes.is_empty() {
        return Vec::new();
    }
    let lo = map.pixels.iter().copied().min().unwrap_or(0) as f32;
    let hi = map.pixels.iter().copied().max().unwrap_or(0) as f32;
    let span = (hi - lo).max(1.0);
    let levels: Vec<u8> = map
        .pixels
        .iter()
        .map(|&v| ((v as f32 - lo) / span * 255.0).round() as u8)
        .collect();
    let small = GrayImage::from_raw(map.width as u32, map.height as u32, levels)
        .expect("one level per pixel");
    let (w, h) = image_size;
    let full = if (w, h) == small.dimensions() {
        small
    } else {
        image::imageops::resize(&small, w, h, image::imageops::FilterType::Triangle)
    };
    boxes.iter().map(|b| crop_gray(&full, b)).collect()
}

/// Pillow's `crop` of a one-channel image: the rounded box, 0 outside the image.
pub fn crop_gray(img: &GrayImage, b: &CropBox) -> GrayImage {
    let (data, w, h) = crop_raw(img.as_raw(), img.width(), img.height(), 1, b);
    GrayImage::from_raw(w, h, data).expect("crop buffer matches its size")
}

/// Crop of a row-major image with `ch` bytes per pixel: row slices copied into a zero-filled
/// buffer of the rounded box's size.
fn crop_raw(src: &[u8], w: u32, h: u32, ch: usize, b: &CropBox) -> (Vec<u8>, u32, u32) {
    let (l, u, r, bt) = b.pixel_box();
    let (cw, chh) = ((r - l).max(0) as usize, (bt - u).max(0) as usize);
    let mut out = vec![0u8; cw * chh * ch];
    let (x0, x1) = (l.max(0), r.min(w as i64));
    let (y0, y1) = (u.max(0), bt.min(h as i64));
    if x0 < x1 && y0 < y1 {
        let n = (x1 - x0) as usize * ch;
        for sy in y0..y1 {
            let s = (sy as usize * w as usize + x0 as usize) * ch;
            let d = ((sy - u) as usize * cw + (x0 - l) as usize) * ch;
            out[d..d + n].copy_from_slice(&src[s..s + n]);
        }
    }
    (out, cw as u32, chh as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(w: usize, h: usize, on: &[(usize, usize)]) -> Vec<u8> {
        let mut m = vec![0u8; w * h];
        for &(x, y) in on {
            m[y * w + x] = 255;
        }
        m
    }

    #[test]
    fn a_component_inside_a_hole_is_not_external() {
        // ring 0..=6 with a dot at (3,3) inside its hole, and a separate dot at (9,0)
        let mut on = Vec::new();
        for i in 0..=6 {
            on.extend([(i, 0), (i, 6), (0, i), (6, i)]);
        }
        on.extend([(3, 3), (9, 0)]);
        let m = mask(10, 7, &on);
        let mut r = external_rects(&m, 10, 7);
        r.sort();
        assert_eq!(r, vec![(0, 0, 7, 7), (9, 0, 1, 1)]);
        // open the ring's left side: the background reaches the dot through a 4-connected gap
        let on2: Vec<_> = on.iter().copied().filter(|&p| p != (0, 3)).collect();
        let mut r2 = external_rects(&mask(10, 7, &on2), 10, 7);
        r2.sort();
        assert_eq!(r2, vec![(0, 0, 7, 7), (3, 3, 1, 1), (9, 0, 1, 1)]);
    }

    #[test]
    fn diagonal_gap_does_not_open_a_hole() {
        // a diamond ring closed only diagonally: 8-connected foreground, so the centre stays a hole
        let on = [
            (2, 0),
            (1, 1),
            (3, 1),
            (0, 2),
            (4, 2),
            (1, 3),
            (3, 3),
            (2, 4),
            (2, 2),
        ];
        let r = external_rects(&mask(5, 5, &on[..8]), 5, 5);
        assert_eq!(r, vec![(0, 0, 5, 5)]);
        let r = external_rects(&mask(5, 5, &on), 5, 5);
        assert_eq!(
            r,
            vec![(0, 0, 5, 5)],
            "the centre pixel joins the ring 8-connectedly"
        );
    }

    #[test]
    fn pillow_crop_rounds_half_to_even_and_fills_outside() {
        let b = CropBox {
            left: 179.0,
            up: -37.5,
            right: 338.0,
            bottom: 121.5,
        };
        assert_eq!(b.pixel_box(), (179, -38, 338, 122));
        assert_eq!(b.pixel_size(), (159, 160));
        let img = RgbImage::from_pixel(4, 4, image::Rgb([9, 9, 9]));
        let c = crop_rgb(
            &img,
            &CropBox {
                left: -1.0,
                up: 2.0,
                right: 2.0,
                bottom: 6.0,
            },
        );
        assert_eq!(c.dimensions(), (3, 4));
        assert_eq!(c.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(c.get_pixel(1, 0).0, [9, 9, 9]);
        assert_eq!(c.get_pixel(1, 2).0, [0, 0, 0]);
    }

    #[test]
    fn empty_mask_crops_the_whole_image() {
        let m = GrayImage::new(30, 20);
        let b = crop_boxes(&m, 0, &CropRule::default());
        assert_eq!(
            b,
            vec![CropBox {
                left: 0.0,
                up: 0.0,
                right: 30.0,
                bottom: 20.0
            }]
        );
    }

    #[test]
    fn a_pixel_in_a_tiny_image_still_gets_a_crop() {
        for (w, h) in [(1u32, 1u32), (3, 2), (9, 9)] {
            let mut m = GrayImage::new(w, h);
            m.put_pixel(w / 2, h / 2, image::Luma([255]));
            for b in crop_boxes(&m, 1, &CropRule::default()) {
                let (bw, bh) = b.pixel_size();
                assert!(bw > 0 && bh > 0, "{w}x{h}: {b:?}");
            }
        }
    }

    #[test]
    fn close_boxes_merge_into_a_square_and_far_ones_stay() {
        let mut m = GrayImage::new(200, 100);
        for (x, y) in [(20, 20), (21, 20), (24, 20), (25, 20), (180, 90)] {
            m.put_pixel(x, y, image::Luma([255]));
        }
        let b = crop_boxes(&m, 5, &CropRule::default());
        // the two blobs near (20..25, 20) give overlapping boxes of radius 20: merged (one box),
        // the far dot keeps its own; kept at most est + 1
        assert_eq!(b.len(), 2);
        for bx in &b {
            assert_eq!(bx.right - bx.left, bx.bottom - bx.up, "squares: {bx:?}");
        }
        let b1 = crop_boxes(&m, 0, &CropRule::default());
        assert_eq!(b1.len(), 1);
    }

    #[test]
    fn the_crop_scale_widens_the_square_around_the_same_centre() {
        // A 30 x 10 component in a 400 x 400 image: padded radius 30 * 1.1 / 2 = 16, below the
        // smallest crop's 0.1 * 400 = 40, so the reference's square is 80 px wide.
        let mut m = GrayImage::new(400, 400);
        for x in 185..215 {
            for y in 195..205 {
                m.put_pixel(x, y, image::Luma([255]));
            }
        }
        let side = |scale: f64| {
            let rule = CropRule {
                scale,
                ..CropRule::default()
            };
            let b = crop_boxes(&m, 1, &rule);
            assert_eq!(b.len(), 1);
            let b = b[0];
            assert_eq!(
                ((b.left + b.right) / 2.0, (b.up + b.bottom) / 2.0),
                (200.0, 200.0)
            );
            b.right - b.left
        };
        assert_eq!(side(1.0), 80.0);
        assert_eq!(side(2.0), 160.0);
        assert_eq!(side(0.5), 40.0);
        // Never beyond the image's larger side.
        assert_eq!(side(4.0), 320.0);
        let rule = CropRule {
            scale: 8.0,
            ..CropRule::default()
        };
        assert_eq!(
            crop_boxes(&m, 1, &rule)[0].right - crop_boxes(&m, 1, &rule)[0].left,
            400.0
        );
    }
}
