//! Small crop folders in the layouts of `prepare-base` and `binarize`, made on the fly for the data
//! pipeline's tests and benchmark: a dark textured crop with a bright, off-centre rectangle that
//! is also its mask (so the image shows where the mask must be after any geometry).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use image::{GrayImage, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A crop of `w`×`h` and its 0/255 mask: an axis-aligned rectangle in the upper-left part.
pub fn crop(w: u32, h: u32, seed: u64) -> (RgbImage, GrayImage) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (x0, y0) = (
        w / 8 + rng.gen_range(0..=w / 10),
        h / 10 + rng.gen_range(0..=h / 10),
    );
    let (x1, y1) = (x0 + w / 3, y0 + h / 2);
    let inside = |x: u32, y: u32| (x0..x1).contains(&x) && (y0..y1).contains(&y);
    let mask = GrayImage::from_fn(w, h, |x, y| {
        image::Luma([if inside(x, y) { 255 } else { 0 }])
    });
    let tint: [i32; 3] = [
        rng.gen_range(-15..15),
        rng.gen_range(-15..15),
        rng.gen_range(-15..15),
    ];
    let image = RgbImage::from_fn(w, h, |x, y| {
        let base = if inside(x, y) { 215 } else { 45 };
        let n = rng.gen_range(-12..=12);
        image::Rgb(std::array::from_fn(|c| {
            (base + n + tint[c]).clamp(0, 255) as u8
        }))
    });
    (image, mask)
}

/// `root/images/<class>/<k>.png` and `root/masks/<class>/<k>.png` for `(class, count)`.
pub fn write_base(root: &Path, classes: &[(&str, usize)], side: u32) {
    for (ci, (class, n)) in classes.iter().enumerate() {
        for k in 0..*n {
            let (img, mask) = crop(side, side, 1000 * ci as u64 + k as u64);
            save(
                img,
                &root.join("images").join(class).join(format!("{k:03}.png")),
            );
            save(
                mask,
                &root.join("masks").join(class).join(format!("{k:03}.png")),
            );
        }
    }
}

/// `out/crops/{images,masks,maps}/<type>/<stem>_crop<k>.png` and `out/scores.json`; with `flat`
/// the crops go straight into `images/`, `masks/` and `maps/` and the scores are `{file: score}`.
/// A crop's map is high on its mask and falls off away from the mask's first row (a grey-level
/// map, as binarize writes them). Crop sides
/// vary around `side` (some not square), as binarize's crops do.
pub fn write_novel(out: &Path, types: &[(&str, usize)], side: u32, flat: bool) {
    let mut scores = serde_json::Map::new();
    for (ti, (t, n)) in types.iter().enumerate() {
        let mut per_type = serde_json::Map::new();
        for k in 0..*n {
            let (w, h) = (
                side + (k as u32 * 7) % 40,
                side + if k % 3 == 2 { 9 } else { 0 },
            );
            let (img, mask) = crop(w, h, 50_000 + 1000 * ti as u64 + k as u64);
            let file = format!("{t}{k:03}_crop{}.png", k % 2);
            let sub = if flat {
                PathBuf::new()
            } else {
                PathBuf::from(t)
            };
            save(img, &out.join("crops/images").join(&sub).join(&file));
            let map = GrayImage::from_fn(w, h, |x, y| {
                let on = mask.get_pixel(x, y)[0] > 0;
                image::Luma([if on { 230 } else { (40 + (x + y) % 90) as u8 }])
            });
            save(mask, &out.join("crops/masks").join(&sub).join(&file));
            save(map, &out.join("crops/maps").join(&sub).join(&file));
            let score = serde_json::json!(0.3 + 0.05 * (k % 10) as f64);
            if flat {
                scores.insert(file, score);
            } else {
                per_type.insert(file, score);
            }
        }
        if !flat {
            scores.insert(t.to_string(), per_type.into());
        }
    }
    std::fs::create_dir_all(out).unwrap();
    std::fs::write(
        out.join("scores.json"),
        serde_json::to_vec(&scores).unwrap(),
    )
    .unwrap();
}

fn save(img: impl Into<image::DynamicImage>, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.into().save(path).unwrap();
}

/// Base crops under `root/base` and novel crops (typed) under `root/out`, loaded as the
/// training set: the fixture the benchmarks and the frozen-cache tests start from.
pub fn crop_set(
    root: &Path,
    base: &[(&str, usize)],
    novel: &[(&str, usize)],
    side: u32,
) -> anomalyncd::data::CropSet {
    write_base(&root.join("base"), base, side);
    write_novel(&root.join("out"), novel, side, false);
    let novel = anomalyncd::data::NovelSource::from_binarize_out(&root.join("out"));
    anomalyncd::data::CropSet::load(Some(&root.join("base")), &novel, None).expect("fixture loads")
}
