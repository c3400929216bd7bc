//! Known answers of the per-map measures, the aggregation and the table.

use super::*;
use image::Luma;

/// A `w`×`h` mask with the rectangle `[x0, x1) × [y0, y1)` set.
fn rect_mask(w: u32, h: u32, (x0, y0, x1, y1): (u32, u32, u32, u32)) -> GrayImage {
    GrayImage::from_fn(w, h, |x, y| {
        Luma([if (x0..x1).contains(&x) && (y0..y1).contains(&y) {
            255
        } else {
            0
        }])
    })
}

/// A float map of low noise-free background with one peak at (`px`, `py`).
fn peak_map(w: usize, h: usize, px: usize, py: usize) -> Vec<f32> {
    let mut m = vec![0.1f32; w * h];
    m[py * w + px] = 1.0;
    m
}

/// Mask 40..60 in a 100×100 image: the dilation radius is round(0.02 × 100) = 2.
const SQUARE: (u32, u32, u32, u32) = (40, 40, 60, 60);

#[test]
fn argmax_inside_the_mask_counts() {
    let mask = rect_mask(100, 100, SQUARE);
    let loc = localize(&peak_map(100, 100, 50, 50), 100, 100, &mask).unwrap();
    assert!(loc.argmax_in_defect);
}

#[test]
fn argmax_outside_the_mask_does_not() {
    let mask = rect_mask(100, 100, SQUARE);
    let loc = localize(&peak_map(100, 100, 10, 80), 100, 100, &mask).unwrap();
    assert!(!loc.argmax_in_defect);
}

#[test]
fn argmax_just_outside_counts_within_the_dilation() {
    assert_eq!(dilation_radius(100, 100), 2);
    assert_eq!(dilation_radius(10, 20), 1, "at least one pixel");
    let mask = rect_mask(100, 100, SQUARE);
    // Column 61 is 2 pixels right of the mask's last column (59), diagonally too.
    for (x, y) in [(61, 50), (61, 61), (50, 38)] {
        let loc = localize(&peak_map(100, 100, x, y), 100, 100, &mask).unwrap();
        assert!(loc.argmax_in_defect, "({x}, {y})");
    }
    // One more pixel out is outside the square structuring element.
    for (x, y) in [(62, 50), (50, 37), (62, 62)] {
        let loc = localize(&peak_map(100, 100, x, y), 100, 100, &mask).unwrap();
        assert!(!loc.argmax_in_defect, "({x}, {y})");
    }
}

#[test]
fn ties_take_the_first_maximum_in_row_major_order() {
    let flat = vec![0.5f32; 100 * 100];
    let corner = rect_mask(100, 100, (0, 0, 1, 1));
    assert!(localize(&flat, 100, 100, &corner).unwrap().argmax_in_defect);
    let far = rect_mask(100, 100, (90, 90, 100, 100));
    assert!(!localize(&flat, 100, 100, &far).unwrap().argmax_in_defect);
}

#[test]
fn an_empty_mask_is_not_counted() {
    let empty = GrayImage::new(100, 100);
    assert_eq!(localize(&peak_map(100, 100, 5, 5), 100, 100, &empty), None);
    let levels = GrayMap::from_u8(100, 100, &[7; 100 * 100]);
    assert_eq!(localize_levels(&levels, &empty), None);
    let mut agg = LocAggregator::default();
    agg.add("good", None);
    let r = agg.finish();
    assert_eq!((r.overall.maps, r.overall.localized_maps), (1, 0));
    assert_eq!(r.overall.argmax_in_defect_rate, None);
    assert_eq!(r.overall.mean_best_iou, None);
}

#[test]
fn a_map_equal_to_its_mask_has_iou_one() {
    let mask = rect_mask(100, 100, SQUARE);
    let levels = GrayMap::from_u8(100, 100, mask.as_raw());
    let loc = localize_levels(&levels, &mask).unwrap();
    assert_eq!(loc.best_iou, 1.0);
    assert_eq!(loc.best_threshold, 255.0);
    assert!(loc.argmax_in_defect);
    // The same map as floats on another scale.
    let float: Vec<f32> = mask.as_raw().iter().map(|&v| v as f32 * 0.01).collect();
    assert_eq!(localize(&float, 100, 100, &mask).unwrap().best_iou, 1.0);
}

#[test]
fn a_float_map_scores_as_its_8_bit_levels_on_a_small_defect() {
    // A 3×3 defect (0.09 % of the map) under a smooth blob: float and 8-bit thresholds agree.
    let mask = rect_mask(100, 100, (49, 49, 52, 52));
    let float: Vec<f32> = (0..100 * 100)
        .map(|i| {
            let (dx, dy) = ((i % 100) as f32 - 50.0, (i / 100) as f32 - 50.0);
            7.5 * (-(dx * dx + dy * dy) / 8.0).exp()
        })
        .collect();
    let levels: Vec<u8> = float.iter().map(|v| (v / 7.5 * 255.0) as u8).collect();
    let f = localize(&float, 100, 100, &mask).unwrap().best_iou;
    let q = localize_levels(&GrayMap::from_u8(100, 100, &levels), &mask).unwrap();
    assert!(
        q.best_iou > 0.5 && (f - q.best_iou).abs() < 0.05,
        "{f} {q:?}"
    );
}

#[test]
fn best_iou_picks_the_best_threshold() {
    // Mask of 4 pixels; the map ranks 2 of them first (9), then 4 normals (7), then the other 2
    // (5): IoU 2/4 at 9, 2/8 at 7, 4/8 at 5 and 4/16 at 0.
    let mask = rect_mask(4, 4, (0, 0, 4, 1));
    let mut levels = [0u8; 16];
    levels[..4].copy_from_slice(&[9, 9, 5, 5]);
    levels[4..8].copy_from_slice(&[7; 4]);
    let loc = localize_levels(&GrayMap::from_u8(4, 4, &levels), &mask).unwrap();
    assert_eq!(loc.best_iou, 0.5);
    // Ties between thresholds go to the highest.
    assert_eq!(loc.best_threshold, 9.0);
    levels[4..8].copy_from_slice(&[3; 4]);
    let loc = localize_levels(&GrayMap::from_u8(4, 4, &levels), &mask).unwrap();
    assert_eq!((loc.best_iou, loc.best_threshold), (1.0, 5.0));
}

#[test]
fn maps_are_resized_to_the_mask() {
    // [0, 1] to 4 pixels with centres aligned: 0, 0.25, 0.75, 1 (OpenCV INTER_LINEAR).
    assert_eq!(
        resize_bilinear(&[0.0, 1.0], 2, 1, 4, 1),
        [0.0, 0.25, 0.75, 1.0]
    );
    assert_eq!(resize_bilinear(&[2.0; 6], 3, 2, 7, 5), vec![2.0; 35]);
    // A 50×50 map peaking in its block (30, 10) lands on a 100×100 mask around (60..62, 20..22).
    let mut small = vec![0.0f32; 50 * 50];
    small[10 * 50 + 30] = 1.0;
    let on = rect_mask(100, 100, (60, 20, 62, 22));
    assert!(localize(&small, 50, 50, &on).unwrap().argmax_in_defect);
    let off = rect_mask(100, 100, (10, 60, 30, 80));
    assert!(!localize(&small, 50, 50, &off).unwrap().argmax_in_defect);
}

#[test]
fn crops_touch_only_with_a_defect_pixel_inside() {
    let mask = rect_mask(20, 10, (15, 2, 16, 3));
    let b = |l, u, r, bt| CropBox {
        left: l,
        up: u,
        right: r,
        bottom: bt,
    };
    assert!(crop_touches(&mask, &b(10.0, 0.0, 20.0, 10.0)));
    // Right edge exclusive; a box reaching outside the image is clipped.
    assert!(!crop_touches(&mask, &b(0.0, 0.0, 15.0, 10.0)));
    assert!(crop_touches(&mask, &b(14.6, -5.0, 40.0, 2.6)));
    assert!(!crop_touches(&mask, &b(30.0, 0.0, 40.0, 10.0)));
}

#[test]
fn mebin_crops_are_counted_against_the_mask() {
    // A bright square on a dark map: MEBin finds it, its one crop holds the defect.
    let mask = rect_mask(64, 64, (20, 20, 36, 36));
    let map = GrayMap::from_u8(
        64,
        64,
        &mask
            .as_raw()
            .iter()
            .map(|&v| v / 2 + 10)
            .collect::<Vec<_>>(),
    );
    let range = SearchRange::new(10.0, 137.0).unwrap();
    let t = mebin_touch(&map, &range, &Params::default(), &mask);
    assert_eq!((t.crops, t.touching, t.no_interval), (1, 1, false), "{t:?}");
    // An empty search range: no stable interval, one crop around the peak, on the defect.
    let flat = SearchRange::new(137.0, 137.0).unwrap();
    let t = mebin_touch(&map, &flat, &Params::default(), &mask);
    assert_eq!((t.crops, t.touching, t.no_interval), (1, 1, true), "{t:?}");
}

#[test]
fn aggregation_per_type_and_overall() {
    let loc = |hit: bool, iou: f64, crops: Option<(usize, usize, bool)>| MapLoc {
        argmax_in_defect: hit,
        best_iou: iou,
        best_threshold: 0.0,
        crops: crops.map(|(c, t, n)| CropTouch {
            crops: c,
            touching: t,
            no_interval: n,
        }),
    };
    let mut agg = LocAggregator::default();
    agg.add("b", Some(&loc(true, 0.5, Some((2, 1, false)))));
    agg.add("b", Some(&loc(false, 0.25, Some((1, 0, false)))));
    agg.add("a", Some(&loc(true, 1.0, Some((1, 1, true)))));
    agg.add("good", None);
    // Pixels: type a's defect pixel on top, good's normal ones below.
    agg.add_pixels("a", &[0.9, 0.1], &rect_mask(2, 1, (0, 0, 1, 1)));
    agg.add_pixels("good", &[0.2, 0.3], &GrayImage::new(2, 1));
    let r = agg.finish();
    let names: Vec<&str> = r.types.iter().map(|t| t.type_name.as_str()).collect();
    assert_eq!(names, ["a", "b", "good"]);
    let b = &r.types[1];
    assert_eq!((b.maps, b.localized_maps, b.argmax_in_defect), (2, 2, 1));
    assert_eq!(b.mean_best_iou, Some(0.375));
    let m = b.mebin.unwrap();
    assert_eq!((m.crops, m.crops_touching, m.images_touching), (3, 1, 1));
    assert_eq!(m.images_touching_rate, Some(0.5));
    assert_eq!(b.pixel_auroc, None, "no pixels added for b");
    assert_eq!(r.types[0].pixel_auroc, Some(1.0));
    assert_eq!(r.types[2].pixel_auroc, None, "only normal pixels");
    let o = &r.overall;
    assert_eq!((o.maps, o.localized_maps, o.argmax_in_defect), (4, 3, 2));
    assert_eq!(o.mebin.unwrap().no_interval, 1);
    assert_eq!(o.mebin.unwrap().crops_touching_rate, Some(0.5));
    assert_eq!(o.pixel_auroc, Some(1.0));
    // Without MEBin the crop columns are absent, and the table says n/a.
    let plain = aggregate([("".to_string(), loc(true, 0.5, None))]);
    assert_eq!(plain.overall.mebin, None);
    let text = render_table(&plain);
    assert!(text.lines().any(|l| l.starts_with("overall")), "{text}");
    assert!(text.contains("100.0%") && text.contains("n/a"), "{text}");
    assert!(text.lines().nth(1).unwrap().starts_with("(flat)"), "{text}");

    let table = render_table(&r);
    let rows: Vec<&str> = table.lines().collect();
    assert!(rows[0].starts_with("type") && rows[0].contains("pixel AUROC"));
    assert!(
        rows[2].starts_with("b ") && rows[2].contains("33.3% (1/3)"),
        "{table}"
    );
}
