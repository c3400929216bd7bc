//! Fuzz targets of map and image reading: arbitrary bytes and mutated PNGs and `.npy` files as a
//! map, PNGs of odd sizes, colour types and bit depths through the whole binarize library path,
//! and MEBin + cropping on random maps and settings.

use std::path::Path;
use std::sync::OnceLock;

use anomalyncd::mebin::crop::{crop_boxes, CropRule};
use anomalyncd::mebin::{binarize_map, BitDepth, GrayMap, Params, SearchRange};
use anomalyncd::mebin::{BinarizeJob, MapItem, RangeSource};
use proptest::prelude::*;

use super::{config, edits, input_error, mutate};

/// A small valid gray PNG (the mutation seed for maps).
fn valid_png() -> &'static [u8] {
    static PNG: OnceLock<Vec<u8>> = OnceLock::new();
    PNG.get_or_init(|| {
        let img =
            image::GrayImage::from_fn(23, 17, |x, y| image::Luma([((x * 11) ^ (y * 7)) as u8]));
        let mut buf = std::io::Cursor::new(Vec::new());
        img.write_to(&mut buf, image::ImageFormat::Png).unwrap();
        buf.into_inner()
    })
}

/// A PNG of any colour type and valid bit depth, `w`×`h`, pixel bytes from `data` (repeated).
fn odd_png(path: &Path, (w, h): (u32, u32), kind: u8, depth: u8, data: &[u8]) {
    use png::{BitDepth as D, ColorType as C};
    let (color, depth, channels) = match kind % 5 {
        0 => (
            C::Grayscale,
            [D::One, D::Two, D::Four, D::Eight, D::Sixteen][depth as usize % 5],
            1,
        ),
        1 => (C::Rgb, [D::Eight, D::Sixteen][depth as usize % 2], 3),
        2 => (
            C::Indexed,
            [D::One, D::Two, D::Four, D::Eight][depth as usize % 4],
            1,
        ),
        3 => (
            C::GrayscaleAlpha,
            [D::Eight, D::Sixteen][depth as usize % 2],
            2,
        ),
        _ => (C::Rgba, [D::Eight, D::Sixteen][depth as usize % 2], 4),
    };
    let bits = depth as usize * channels;
    let stride = (w as usize * bits).div_ceil(8);
    let seed = if data.is_empty() { &[7u8][..] } else { data };
    let pixels: Vec<u8> = seed
        .iter()
        .copied()
        .cycle()
        .take(stride * h as usize)
        .collect();
    let f = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(f), w, h);
    enc.set_color(color);
    enc.set_depth(depth);
    if color == C::Indexed {
        // a palette shorter than the index range: out-of-range indices must not crash
        let n = 1usize << (depth as usize).min(8);
        let entries = (n / 2).max(1);
        enc.set_palette(
            (0..entries * 3)
                .map(|i| (i * 37) as u8)
                .collect::<Vec<u8>>(),
        );
    }
    enc.write_header()
        .unwrap()
        .write_image_data(&pixels)
        .unwrap();
}

fn odd_png_strategy() -> impl Strategy<Value = ((u32, u32), u8, u8, Vec<u8>)> {
    (
        (1u32..40, 1u32..40),
        0u8..5,
        0u8..5,
        prop::collection::vec(any::<u8>(), 1..64),
    )
}

proptest! {
    #![proptest_config(config(128))]

    /// Arbitrary bytes, and mutated PNGs, as a map: read_map gives a map or an input error; a map
    /// it gives goes through MEBin and cropping.
    #[test]
    fn map_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        byte_edits in edits(8),
        mutated in any::<bool>(),
        ext in prop::sample::select(vec!["png", "tif", "bmp"]),
    ) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(format!("m.{ext}"));
        let bytes = if mutated { mutate(valid_png().to_vec(), &byte_edits, Some(64)) } else { bytes };
        std::fs::write(&p, &bytes).unwrap();
        match anomalyncd::imageio::read_map(&p) {
            Ok(map) => {
                prop_assert_eq!(map.pixels.len(), map.width * map.height);
                let range = SearchRange::new(0.0, map.max() as f64).unwrap();
                let r = binarize_map(&map, &range, &Params::default());
                prop_assert_eq!(r.binary.dimensions(), (map.width as u32, map.height as u32));
                let boxes = crop_boxes(&r.binary, r.est_anomaly_num, &CropRule::default());
                prop_assert!(boxes.len() <= r.est_anomaly_num + 1);
            }
            Err(e) => input_error(&e, "map bytes")?,
        }
        match anomalyncd::imageio::read_rgb(&p) {
            Ok(img) => prop_assert!(img.width() > 0 && img.height() > 0),
            Err(e) => input_error(&e, "image bytes")?,
        }
    }

    /// Mutated `.npy` files as anomaly maps: a finite float map of the stated size or an input
    /// error, never a panic; a map it gives goes through the peak fallback.
    #[test]
    fn npy_map_bytes(byte_edits in edits(8), fortran in any::<bool>(), h in 1usize..6, w in 1usize..6) {
        let v: Vec<f32> = (0..w * h).map(|i| i as f32 * 0.5 - 1.0).collect();
        let valid = anomalyncd::imageio::npy::encode_f32(&[h, w], &v, fortran);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.npy");
        std::fs::write(&p, mutate(valid, &byte_edits, Some(64))).unwrap();
        match anomalyncd::imageio::read_anomaly_map(&p) {
            Ok(anomalyncd::imageio::RawMap::Float(f)) => {
                prop_assert_eq!(f.values.len(), f.width * f.height);
                prop_assert!(f.values.iter().all(|v| v.is_finite()));
                let (lo, hi) = f.min_max();
                let map = f.to_levels(&anomalyncd::imageio::FloatScale { min: lo, max: hi });
                if let Some(r) = anomalyncd::mebin::peak::peak_region(&map) {
                    prop_assert!(r.mask.as_raw().iter().any(|&b| b != 0));
                }
            }
            Ok(other) => prop_assert!(false, "a .npy read as {:?}", other),
            Err(e) => input_error(&e, "npy bytes")?,
        }
    }

    /// MEBin and cropping on random maps, ranges and settings: masks of the map's size, at most
    /// est + 1 boxes, every box with a positive area.
    #[test]
    fn mebin_and_crops_on_random_maps(
        (w, h) in (1usize..48, 1usize..48),
        levels in prop::collection::vec(any::<u16>(), 1..64),
        sixteen in any::<bool>(),
        lo in 0.0f64..70000.0,
        span in 0.0f64..70000.0,
        sample_rate in 1u32..=255,
        min_interval_len in 1usize..12,
        erode in any::<bool>(),
        interval_position in 0.0f64..=1.0,
    ) {
        let depth = if sixteen { BitDepth::Sixteen } else { BitDepth::Eight };
        let pixels: Vec<u16> = levels
            .iter()
            .cycle()
            .take(w * h)
            .map(|&v| if sixteen { v } else { v % 256 })
            .collect();
        let map = GrayMap { width: w, height: h, depth, pixels };
        let range = SearchRange::new(lo, lo + span).unwrap();
        let params = Params { sample_rate, min_interval_len, erode, interval_position };
        let r = binarize_map(&map, &range, &params);
        prop_assert_eq!(r.binary.dimensions(), (w as u32, h as u32));
        prop_assert_eq!(r.component_counts.len(), params.scores().len());
        let boxes = crop_boxes(&r.binary, r.est_anomaly_num, &CropRule::default());
        prop_assert!(boxes.len() <= r.est_anomaly_num + 1);
        for b in &boxes {
            let (bw, bh) = b.pixel_size();
            prop_assert!(bw > 0 && bh > 0, "empty box {:?} on a {}x{} mask", b, w, h);
        }
    }
}

proptest! {
    #![proptest_config(config(48))]

    /// PNGs of odd sizes, colour types and bit depths (and, sometimes, damaged bytes) as maps and
    /// images through the whole binarize library path: the run succeeds with its outputs on
    /// disk, or fails with an input error.
    #[test]
    fn binarize_odd_pngs(
        items in prop::collection::vec((odd_png_strategy(), odd_png_strategy()), 1..4),
        damage in prop::option::of((0usize..4, edits(4))),
        min_threshold in prop::option::of(0.0f64..300.0),
    ) {
        let d = tempfile::tempdir().unwrap();
        let mut list = Vec::new();
        for (k, ((ms, mk, md, mdata), (is, ik, id, idata))) in items.iter().enumerate() {
            let map = d.path().join(format!("maps/t/{k}.png"));
            let image = d.path().join(format!("images/t/{k}.png"));
            std::fs::create_dir_all(map.parent().unwrap()).unwrap();
            std::fs::create_dir_all(image.parent().unwrap()).unwrap();
            odd_png(&map, *ms, *mk, *md, mdata);
            odd_png(&image, *is, *ik, *id, idata);
            list.push(MapItem { class_name: "t".into(), stem: k.to_string(), map, image, normal: false });
        }
        if let Some((which, e)) = &damage {
            let it = &list[which % list.len()];
            let p = if which % 2 == 0 { &it.map } else { &it.image };
            let b = mutate(std::fs::read(p).unwrap(), e, Some(64));
            std::fs::write(p, b).unwrap();
        }
        let out = d.path().join("out");
        let job = BinarizeJob {
            items: &list,
            params: Params::default(),
            refine: Default::default(),
            range: RangeSource::FromMaps { min_threshold },
            rule: CropRule::default(),
            out: &out,
            progress: false,
        };
        match job.run() {
            Ok(summary) => {
                prop_assert_eq!(summary.records.len(), list.len());
                for f in summary.output_files() {
                    prop_assert!(out.join(&f).is_file(), "{} missing", f.display());
                }
            }
            Err(e) => input_error(&e, "binarize")?,
        }
    }
}
