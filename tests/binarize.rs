//! `anomalyncd binarize` and the MEBin library: parity with the reference's golden run (reads
//! ../shared), fast path == reference-algorithm oracle (property test), and bad inputs.

mod common;

use std::path::Path;
use std::process::Command;

use anomalyncd::imageio::GrayMap;
use anomalyncd::mebin::{self, oracle, BitDepth, Params, SearchRange};
use image::{DynamicImage, GrayImage, ImageBuffer, Rgb, RgbImage};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use common::{cli, shared, stderr};

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Golden parity (reads ../shared/golden/mebin/mtd_open): the whole command on the reference's 60
/// maps gives the same range, thresholds, counts, masks and crop boxes; scores within 0.02.
#[test]
fn golden_parity_with_reference_reads_shared() {
    let Some(shared) = shared() else {
        eprintln!("skipping golden_parity_with_reference_reads_shared: ../shared is absent");
        return;
    };
    let g = shared.join("golden/mebin/mtd_open");
    let out = tempfile::tempdir().unwrap();
    let o = cli(&[
        "binarize",
        "--anomaly-maps",
        g.join("maps").to_str().unwrap(),
        "--images",
        g.join("images").to_str().unwrap(),
        "--out",
        out.path().join("run").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = read_json(&out.path().join("run/mebin.json"));
    let want = read_json(&g.join("expected.json"));
    for k in ["min_th", "max_th", "sample_rate", "min_interval_len"] {
        assert_eq!(got[k].as_f64(), want[k].as_f64(), "{k}");
    }
    let want_recs = want["records"].as_array().unwrap();
    let got_recs = got["records"].as_array().unwrap();
    assert_eq!(got_recs.len(), want_recs.len());
    let mut worst_score = 0f64;
    for w in want_recs {
        let key = (
            w["class_name"].as_str().unwrap(),
            w["stem"].as_str().unwrap(),
        );
        let r = got_recs
            .iter()
            .find(|r| {
                (
                    r["class_name"].as_str().unwrap(),
                    r["stem"].as_str().unwrap(),
                ) == key
            })
            .unwrap_or_else(|| panic!("no record for {key:?}"));
        for f in [
            "threshold",
            "est_anomaly_num",
            "component_counts",
            "binary_foreground_pixels",
            "image_size",
            "map_size",
            "crop_sizes",
            "crop_mask_foreground",
        ] {
            assert_eq!(r[f], w[f], "{key:?} {f}");
        }
        let (rb, wb) = (
            r["crop_boxes"].as_array().unwrap(),
            w["crop_boxes"].as_array().unwrap(),
        );
        assert_eq!(rb.len(), wb.len(), "{key:?} crop count");
        for (a, b) in rb.iter().zip(wb) {
            for (x, y) in a.as_array().unwrap().iter().zip(b.as_array().unwrap()) {
                assert!(
                    (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-3,
                    "{key:?} boxes {a} vs {b}"
                );
            }
        }
        for (x, y) in r["crop_scores"]
            .as_array()
            .unwrap()
            .iter()
            .zip(w["crop_scores"].as_array().unwrap())
        {
            let d = (x.as_f64().unwrap() - y.as_f64().unwrap()).abs();
            worst_score = worst_score.max(d);
            assert!(d < 0.02, "{key:?} score {x} vs {y}");
        }
        // files: mask at image size, one image and mask crop per box, scores.json entries
        let (t, s) = key;
        let bin = image::open(out.path().join(format!("run/binary/{t}/{s}.png"))).unwrap();
        let size = w["image_size"].as_array().unwrap();
        assert_eq!(
            (bin.width() as u64, bin.height() as u64),
            (size[0].as_u64().unwrap(), size[1].as_u64().unwrap())
        );
        for k in 0..wb.len() {
            let c = image::open(
                out.path()
                    .join(format!("run/crops/images/{t}/{s}_crop{k}.png")),
            )
            .unwrap();
            let sz = &w["crop_sizes"][k];
            assert_eq!(
                (c.width() as u64, c.height() as u64),
                (sz[0].as_u64().unwrap(), sz[1].as_u64().unwrap())
            );
            let m = image::open(
                out.path()
                    .join(format!("run/crops/masks/{t}/{s}_crop{k}.png")),
            )
            .unwrap()
            .to_luma8();
            let fg = m.pixels().filter(|p| p.0[0] != 0).count() as u64;
            assert_eq!(
                fg,
                w["crop_mask_foreground"][k].as_u64().unwrap(),
                "{key:?} mask crop {k}"
            );
        }
    }
    eprintln!("largest crop score difference from the reference: {worst_score:e}");
    let scores = read_json(&out.path().join("run/scores.json"));
    let n: usize = scores
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_object().unwrap().len())
        .sum();
    let boxes: usize = want_recs
        .iter()
        .map(|r| r["crop_boxes"].as_array().unwrap().len())
        .sum();
    assert_eq!(n, boxes);
    assert!(
        scores["MT_Blowhole"]["exp1_num_54246_crop0.png"]
            .as_f64()
            .unwrap()
            > 0.6
    );
}

// ---------------------------------------------------------------- property test: fast == oracle

/// Maps of the shapes that stress the sweep: noise, blobs, constant, a single pixel, blobs on the
/// border, all at the maximum, stripes.
fn make_map(kind: u8, w: usize, h: usize, seed: u64, depth: BitDepth) -> GrayMap {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let top = depth.max_level() as f64;
    let mut px = vec![0f64; w * h];
    match kind {
        0 => px.iter_mut().for_each(|v| *v = rng.gen_range(0.0..=top)),
        1 | 4 => {
            let base = rng.gen_range(0.0..top * 0.3);
            px.iter_mut()
                .for_each(|v| *v = base + rng.gen_range(0.0..top * 0.05));
            for _ in 0..rng.gen_range(1..5) {
                let (cx, cy) = if kind == 4 {
                    // on the border
                    if rng.gen_bool(0.5) {
                        (0.0, rng.gen_range(0.0..h as f64))
                    } else {
                        (rng.gen_range(0.0..w as f64), h as f64 - 1.0)
                    }
                } else {
                    (rng.gen_range(0.0..w as f64), rng.gen_range(0.0..h as f64))
                };
                let r = rng.gen_range(1.0..(w.max(h) as f64 / 2.0).max(1.5));
                let peak = rng.gen_range(top * 0.3..=top);
                for y in 0..h {
                    for x in 0..w {
                        let d2 = ((x as f64 - cx).powi(2) + (y as f64 - cy).powi(2)) / (r * r);
                        px[y * w + x] += peak * (-d2).exp();
                    }
                }
            }
        }
        2 => {
            let c = rng.gen_range(0.0..=top);
            px.iter_mut().for_each(|v| *v = c);
        }
        3 => {
            let i = rng.gen_range(0..w * h);
            px[i] = rng.gen_range(1.0..=top);
        }
        5 => px.iter_mut().for_each(|v| *v = top),
        _ => {
            for y in 0..h {
                for x in 0..w {
                    px[y * w + x] = if (x / 3 + y / 5) % 2 == 0 {
                        top * 0.8
                    } else {
                        top * 0.1
                    };
                }
            }
        }
    }
    GrayMap {
        width: w,
        height: h,
        depth,
        pixels: px
            .iter()
            .map(|v| v.round().clamp(0.0, top) as u16)
            .collect(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// The min-filter + union-find sweep gives the reference algorithm's counts, threshold, count
    /// and mask on random and structured maps, ranges and settings.
    #[test]
    fn fast_path_equals_reference_oracle(
        kind in 0u8..7,
        w in 1usize..40,
        h in 1usize..40,
        seed in any::<u64>(),
        sixteen in any::<bool>(),
        other_max_frac in 0.0f64..1.2,
        floor_frac in proptest::option::of(0.0f64..0.9),
        sample_rate in prop::sample::select(vec![1u32, 2, 3, 4, 5, 8, 17, 64, 255]),
        min_interval_len in 1usize..7,
        erode in any::<bool>(),
    ) {
        let depth = if sixteen { BitDepth::Sixteen } else { BitDepth::Eight };
        let map = make_map(kind, w, h, seed, depth);
        // the range as from a set holding this map and one other
        let other = (map.max() as f64 * other_max_frac).min(depth.max_level() as f64) as u16;
        let maxima = [map.max(), other];
        let hi = *maxima.iter().max().unwrap() as f64;
        let range = SearchRange::from_maxima(&maxima, floor_frac.map(|f| (f * hi).floor())).unwrap();
        let params = Params { sample_rate, min_interval_len, erode };
        let fast = mebin::binarize_map(&map, &range, &params);
        let slow = oracle::binarize_map(&map, &range, &params);
        prop_assert_eq!(&fast.component_counts, &slow.component_counts);
        prop_assert_eq!(fast.threshold, slow.threshold);
        prop_assert_eq!(fast.est_anomaly_num, slow.est_anomaly_num);
        prop_assert!(fast.binary == slow.binary, "masks differ");
        prop_assert_eq!(
            mebin::stable_interval(&slow.component_counts, min_interval_len),
            oracle::get_threshold(&slow.component_counts, min_interval_len)
        );
    }

    /// The stable-interval search equals the reference's Python loop on arbitrary sequences.
    #[test]
    fn stable_interval_equals_reference_loop(
        seq in prop::collection::vec(0u32..4, 1..70),
        min_len in 1usize..6,
    ) {
        prop_assert_eq!(mebin::stable_interval(&seq, min_len), oracle::get_threshold(&seq, min_len));
    }
}

/// Component counts the oracle finds on a hand-made map, so the oracle itself is checked too.
#[test]
fn oracle_counts_a_known_map() {
    // two 8×8 squares (levels 200 and 120) far apart on a 40×20 map of zeros
    let mut px = vec![0u8; 40 * 20];
    for y in 6..14 {
        for x in 4..12 {
            px[y * 40 + x] = 200;
        }
        for x in 26..34 {
            px[y * 40 + x] = 120;
        }
    }
    let map = GrayMap::from_u8(40, 20, &px);
    let range = SearchRange::new(0.0, 200.0).unwrap();
    let r = oracle::binarize_map(&map, &range, &Params::default());
    // normalised: 255 and 153; the 8×8 squares survive a 6×6 erosion
    let s = Params::default().scores();
    for (c, t) in r.component_counts.iter().zip(&s) {
        let want = if *t >= 255 {
            0
        } else if *t >= 153 {
            1
        } else {
            2
        };
        assert_eq!(*c, want, "threshold {t}");
    }
    assert_eq!(r.est_anomaly_num, 2);
    assert_eq!(r.threshold, 2); // int(3 * 200 / 255 + 0)
    assert_eq!(mebin::binarize_map(&map, &range, &Params::default()), r);
}

// ---------------------------------------------------------------- bad inputs and edge cases

/// A small set: `types` × `n` maps (48×48, one or two blobs) with 64×40 gray images.
fn make_set(root: &Path, types: &[&str], n: usize, depth: BitDepth) {
    for (ti, t) in types.iter().enumerate() {
        for i in 0..n {
            let map = make_map(1, 48, 48, (ti * 100 + i) as u64, BitDepth::Eight);
            save_map(
                &map,
                depth,
                &root.join("maps").join(t).join(format!("s{i}.png")),
            );
            let img = RgbImage::from_fn(64, 40, |x, y| Rgb([(x * 3) as u8, (y * 5) as u8, 9]));
            let p = root.join("images").join(t).join(format!("s{i}.jpg"));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            DynamicImage::ImageRgb8(img).save(&p).unwrap();
        }
    }
}

fn save_map(map: &GrayMap, depth: BitDepth, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let (w, h) = (map.width as u32, map.height as u32);
    let img = match depth {
        BitDepth::Eight => DynamicImage::ImageLuma8(
            GrayImage::from_raw(w, h, map.pixels.iter().map(|&v| v as u8).collect()).unwrap(),
        ),
        BitDepth::Sixteen => DynamicImage::ImageLuma16(
            ImageBuffer::from_raw(w, h, map.pixels.iter().map(|&v| v * 257).collect()).unwrap(),
        ),
    };
    img.save(path).unwrap();
}

fn binarize(root: &Path, out: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "binarize".to_string(),
        "--anomaly-maps".into(),
        root.join("maps").display().to_string(),
        "--images".into(),
        root.join("images").display().to_string(),
        "--out".into(),
        root.join(out).display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    cli(&refs)
}

fn records(root: &Path, out: &str) -> Vec<Value> {
    read_json(&root.join(out).join("mebin.json"))["records"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn sixteen_bit_and_rgb_maps_give_the_same_masks_and_crops() {
    let d = tempfile::tempdir().unwrap();
    make_set(d.path(), &["a", "b"], 3, BitDepth::Eight);
    let o = binarize(d.path(), "out8", &[]);
    assert!(o.status.success(), "{}", stderr(&o));

    let d16 = tempfile::tempdir().unwrap();
    make_set(d16.path(), &["a", "b"], 3, BitDepth::Sixteen);
    let o = binarize(d16.path(), "out16", &[]);
    assert!(o.status.success(), "{}", stderr(&o));

    // RGB copies of the 8-bit maps (R = G = B)
    let drgb = tempfile::tempdir().unwrap();
    make_set(drgb.path(), &["a", "b"], 3, BitDepth::Eight);
    for t in ["a", "b"] {
        for i in 0..3 {
            let p = drgb.path().join(format!("maps/{t}/s{i}.png"));
            let g = image::open(&p).unwrap().to_luma8();
            DynamicImage::ImageLuma8(g).into_rgb8().save(&p).unwrap();
        }
    }
    let o = binarize(drgb.path(), "outrgb", &[]);
    assert!(o.status.success(), "{}", stderr(&o));

    let r8 = records(d.path(), "out8");
    let r16 = records(d16.path(), "out16");
    let rrgb = records(drgb.path(), "outrgb");
    assert!(
        r8.iter()
            .any(|r| r["est_anomaly_num"].as_u64().unwrap() > 0),
        "the set has anomalies"
    );
    for ((a, b), c) in r8.iter().zip(&r16).zip(&rrgb) {
        for f in [
            "est_anomaly_num",
            "component_counts",
            "binary_foreground_pixels",
            "crop_boxes",
            "crop_scores",
        ] {
            assert_eq!(a[f], b[f], "16-bit {f}");
            assert_eq!(a[f], c[f], "rgb {f}");
        }
        assert_eq!(a["threshold"], c["threshold"]);
    }
    assert_eq!(
        read_json(&d16.path().join("out16/mebin.json"))["bit_depth"],
        16
    );
}

#[test]
fn constant_maps_mean_no_anomaly_with_a_warning_and_no_nan() {
    let d = tempfile::tempdir().unwrap();
    make_set(d.path(), &["a"], 2, BitDepth::Eight);
    for i in 0..2 {
        let map = GrayMap::from_u8(48, 48, &[77; 48 * 48]);
        save_map(
            &map,
            BitDepth::Eight,
            &d.path().join(format!("maps/a/s{i}.png")),
        );
    }
    let o = cli(&[
        "binarize",
        "--anomaly-maps",
        d.path().join("maps").to_str().unwrap(),
        "--images",
        d.path().join("images").to_str().unwrap(),
        "--out",
        d.path().join("out").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for r in records(d.path(), "out") {
        assert_eq!(r["est_anomaly_num"], 0);
        assert_eq!(r["threshold"], 255);
        assert_eq!(r["crop_boxes"], serde_json::json!([[0.0, 0.0, 64.0, 40.0]]));
        assert_eq!(r["crop_scores"], serde_json::json!([0.0]));
    }
    let text = std::fs::read_to_string(d.path().join("out/scores.json")).unwrap();
    assert!(!text.contains("NaN") && !text.contains("null"), "{text}");
    // without -q the warning is shown
    let o = Command::new(env!("CARGO_BIN_EXE_anomalyncd"))
        .args(["binarize", "--anomaly-maps"])
        .arg(d.path().join("maps"))
        .arg("--images")
        .arg(d.path().join("images"))
        .arg("--out")
        .arg(d.path().join("out"))
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(stderr(&o).contains("same maximum"), "{}", stderr(&o));
}

#[test]
fn min_threshold_overrides_the_lower_end() {
    let d = tempfile::tempdir().unwrap();
    make_set(d.path(), &["a"], 3, BitDepth::Eight);
    let o = binarize(d.path(), "out", &["--min-threshold", "5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read_json(&d.path().join("out/mebin.json"))["min_th"], 5.0);
    let o = binarize(d.path(), "out_bad", &["--min-threshold", "300"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--min-threshold"), "{}", stderr(&o));
}

#[test]
fn a_map_larger_than_its_image_is_resized_to_the_image() {
    let d = tempfile::tempdir().unwrap();
    make_set(d.path(), &["a"], 2, BitDepth::Eight);
    // 48×48 maps, 20×16 images
    for i in 0..2 {
        let p = d.path().join(format!("images/a/s{i}.jpg"));
        DynamicImage::ImageRgb8(RgbImage::from_pixel(20, 16, Rgb([50, 60, 70])))
            .save(&p)
            .unwrap();
    }
    let o = binarize(d.path(), "out", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let b = image::open(d.path().join("out/binary/a/s0.png")).unwrap();
    assert_eq!((b.width(), b.height()), (20, 16));
    for r in records(d.path(), "out") {
        assert_eq!(r["image_size"], serde_json::json!([20, 16]));
        assert_eq!(r["map_size"], serde_json::json!([48, 48]));
    }
}

#[test]
fn unpaired_files_are_listed_unless_skipped() {
    let d = tempfile::tempdir().unwrap();
    make_set(d.path(), &["a"], 3, BitDepth::Eight);
    std::fs::rename(
        d.path().join("images/a/s1.jpg"),
        d.path().join("images/a/other.jpg"),
    )
    .unwrap();
    let o = binarize(d.path(), "out", &[]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("maps without an image: a/s1.png")
            && e.contains("images without a map: a/other.jpg"),
        "{e}"
    );
    assert!(e.contains("--skip-unpaired"), "{e}");
    let o = binarize(d.path(), "out", &["--skip-unpaired"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(records(d.path(), "out").len(), 2);
}

#[test]
fn empty_corrupt_truncated_and_mixed_inputs_are_clear_errors() {
    // empty folders
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("maps/a")).unwrap();
    std::fs::create_dir_all(d.path().join("images/a")).unwrap();
    let o = binarize(d.path(), "out", &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no anomaly maps found"),
        "{}",
        stderr(&o)
    );

    // a missing folder
    let o = cli(&[
        "binarize",
        "--anomaly-maps",
        "/nonexistent/maps",
        "--images",
        "/nonexistent/i",
        "--out",
        "/tmp/x",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/nonexistent/maps"), "{}", stderr(&o));

    // corrupt and truncated maps
    for (name, bytes) in [
        ("garbage", b"\x89PNG\r\n\x1a\nnot really".to_vec()),
        ("truncated", Vec::new()),
    ] {
        let d = tempfile::tempdir().unwrap();
        make_set(d.path(), &["a"], 2, BitDepth::Eight);
        let p = d.path().join("maps/a/s1.png");
        let bytes = if bytes.is_empty() {
            let full = std::fs::read(&p).unwrap();
            full[..full.len() / 3].to_vec()
        } else {
            bytes
        };
        std::fs::write(&p, bytes).unwrap();
        let o = binarize(d.path(), "out", &[]);
        assert_eq!(o.status.code(), Some(2), "{name}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("s1.png") && stderr(&o).contains("corrupt"),
            "{name}: {}",
            stderr(&o)
        );
    }

    // a zero-byte image
    let d = tempfile::tempdir().unwrap();
    make_set(d.path(), &["a"], 2, BitDepth::Eight);
    std::fs::write(d.path().join("images/a/s0.jpg"), b"").unwrap();
    let o = binarize(d.path(), "out", &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("s0.jpg") && stderr(&o).contains("0 bytes"),
        "{}",
        stderr(&o)
    );

    // 8- and 16-bit maps mixed in one set
    let d = tempfile::tempdir().unwrap();
    make_set(d.path(), &["a"], 2, BitDepth::Eight);
    let m = make_map(1, 48, 48, 9, BitDepth::Eight);
    save_map(&m, BitDepth::Sixteen, &d.path().join("maps/a/s1.png"));
    let o = binarize(d.path(), "out", &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("16-bit") && stderr(&o).contains("one bit depth"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn out_inside_the_inputs_is_refused_and_nothing_foreign_is_touched() {
    let d = tempfile::tempdir().unwrap();
    make_set(d.path(), &["a"], 2, BitDepth::Eight);
    let o = binarize(d.path(), "maps/out", &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("must not be inside --anomaly-maps"),
        "{}",
        stderr(&o)
    );
    assert!(!d.path().join("maps/out").exists());

    // a non-empty folder the tool did not create
    std::fs::create_dir_all(d.path().join("mine")).unwrap();
    std::fs::write(d.path().join("mine/keep.txt"), b"user data").unwrap();
    let o = binarize(d.path(), "mine", &["--overwrite"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        std::fs::read(d.path().join("mine/keep.txt")).unwrap(),
        b"user data"
    );

    // a rerun into the same folder works and leaves the same files
    let o = binarize(d.path(), "out", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let first = std::fs::read(d.path().join("out/mebin.json")).unwrap();
    let o = binarize(d.path(), "out", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(d.path().join("out/mebin.json")).unwrap(),
        first
    );
}

/// A stored range binarizes new maps the way the set's own range did (the `predict` use).
#[test]
fn library_run_with_a_fixed_range_reproduces_the_set_run() {
    let d = tempfile::tempdir().unwrap();
    make_set(d.path(), &["a", "b"], 2, BitDepth::Eight);
    let maps = anomalyncd::imageio::list_typed_files(
        &d.path().join("maps"),
        anomalyncd::imageio::MAP_EXTENSIONS,
    )
    .unwrap();
    let imgs = anomalyncd::imageio::list_typed_files(
        &d.path().join("images"),
        anomalyncd::imageio::IMAGE_EXTENSIONS,
    )
    .unwrap();
    let items: Vec<mebin::MapItem> = anomalyncd::imageio::pair_by_stem(maps, imgs)
        .pairs
        .into_iter()
        .map(|(m, i)| mebin::MapItem {
            class_name: m.type_name,
            stem: m.stem,
            map: m.path,
            image: i.path,
        })
        .collect();
    fn job<'a>(
        items: &'a [mebin::MapItem],
        out: &'a Path,
        range: mebin::RangeSource,
    ) -> mebin::BinarizeJob<'a> {
        mebin::BinarizeJob {
            items,
            params: Params::default(),
            range,
            rule: Default::default(),
            out,
            progress: false,
        }
    }
    let o1 = d.path().join("o1");
    let s1 = mebin::run::run(&job(
        &items,
        &o1,
        mebin::RangeSource::FromMaps {
            min_threshold: None,
        },
    ))
    .unwrap();
    let o2 = d.path().join("o2");
    let s2 = mebin::run::run(&job(&items, &o2, mebin::RangeSource::Fixed(s1.range()))).unwrap();
    assert_eq!(
        s1.records.iter().map(|r| &r.crop_boxes).collect::<Vec<_>>(),
        s2.records.iter().map(|r| &r.crop_boxes).collect::<Vec<_>>()
    );
    // only the first item, with the stored range: same result for it
    let o3 = d.path().join("o3");
    let one = mebin::BinarizeJob {
        items: &items[..1],
        ..job(&items, &o3, mebin::RangeSource::Fixed(s1.range()))
    };
    let s3 = mebin::run::run(&one).unwrap();
    assert_eq!(s3.records[0].threshold, s1.records[0].threshold);
    assert_eq!(s3.records[0].crop_scores, s1.records[0].crop_scores);
}

/// `external_rects` equals OpenCV's `findContours(RETR_EXTERNAL)` + `boundingRect` on 220 small
/// masks (random, rings, components nested in holes; tests/fixtures/external_contours.json).
#[test]
fn external_contours_match_opencv() {
    let fixture: Value =
        serde_json::from_str(include_str!("fixtures/external_contours.json")).unwrap();
    let mut nested = 0;
    for (i, case) in fixture["cases"].as_array().unwrap().iter().enumerate() {
        let rows: Vec<&str> = case["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        let (h, w) = (rows.len(), rows[0].len());
        let mask: Vec<u8> = rows
            .iter()
            .flat_map(|r| r.bytes().map(|b| if b == b'#' { 255 } else { 0 }))
            .collect();
        let mut got: Vec<[usize; 4]> = mebin::crop::external_rects(&mask, w, h)
            .into_iter()
            .map(|(x, y, rw, rh)| [x, y, rw, rh])
            .collect();
        got.sort();
        let want: Vec<[usize; 4]> = serde_json::from_value(case["rects"].clone()).unwrap();
        assert_eq!(got, want, "case {i}:\n{}", rows.join("\n"));
        let all = oracle::count_components(&mask.iter().map(|&v| v != 0).collect::<Vec<_>>(), w, h)
            as usize;
        nested += usize::from(all > want.len());
    }
    assert!(
        nested >= 20,
        "the fixture exercises components inside holes ({nested} cases)"
    );
}

/// Boxes of the external 8-connected components, the slow way: label every component by flood
/// fill, flood the 4-connected background from the frame, keep components touching it.
fn naive_external_rects(mask: &[bool], w: usize, h: usize) -> Vec<[usize; 4]> {
    let mut label = vec![usize::MAX; w * h];
    let mut boxes: Vec<[usize; 4]> = Vec::new();
    for s in 0..w * h {
        if !mask[s] || label[s] != usize::MAX {
            continue;
        }
        let id = boxes.len();
        let mut b = [s % w, s / w, s % w, s / w];
        let mut stack = vec![s];
        label[s] = id;
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            b = [b[0].min(x), b[1].min(y), b[2].max(x), b[3].max(y)];
            for yy in y.saturating_sub(1)..(y + 2).min(h) {
                for xx in x.saturating_sub(1)..(x + 2).min(w) {
                    if mask[yy * w + xx] && label[yy * w + xx] == usize::MAX {
                        label[yy * w + xx] = id;
                        stack.push(yy * w + xx);
                    }
                }
            }
        }
        boxes.push(b);
    }
    let mut outer = vec![false; w * h];
    let mut stack: Vec<usize> = (0..w * h)
        .filter(|&i| !mask[i] && (i % w == 0 || i % w == w - 1 || i / w == 0 || i / w == h - 1))
        .collect();
    stack.iter().for_each(|&i| outer[i] = true);
    while let Some(i) = stack.pop() {
        let (x, y) = (i % w, i / w);
        let mut next = Vec::new();
        if x > 0 {
            next.push(i - 1)
        }
        if x + 1 < w {
            next.push(i + 1)
        }
        if y > 0 {
            next.push(i - w)
        }
        if y + 1 < h {
            next.push(i + w)
        }
        for j in next {
            if !mask[j] && !outer[j] {
                outer[j] = true;
                stack.push(j);
            }
        }
    }
    let mut external = vec![false; boxes.len()];
    for i in 0..w * h {
        if !mask[i] {
            continue;
        }
        let (x, y) = (i % w, i / w);
        let on_frame = x == 0 || y == 0 || x == w - 1 || y == h - 1;
        let by_outer = (x > 0 && outer[i - 1])
            || (x + 1 < w && outer[i + 1])
            || (y > 0 && outer[i - w])
            || (y + 1 < h && outer[i + w]);
        if on_frame || by_outer {
            external[label[i]] = true;
        }
    }
    let mut r: Vec<[usize; 4]> = boxes
        .iter()
        .zip(&external)
        .filter(|(_, &e)| e)
        .map(|(b, _)| [b[0], b[1], b[2] - b[0] + 1, b[3] - b[1] + 1])
        .collect();
    r.sort();
    r
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Run-based component boxes (and the hole check) equal a plain flood fill on random masks,
    /// including rows wider than the 8-byte steps and rings around other components.
    #[test]
    fn external_rects_equal_a_flood_fill(
        w in 1usize..70,
        h in 1usize..30,
        density in 0.05f64..0.9,
        rings in 0usize..3,
        seed in any::<u64>(),
    ) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut mask: Vec<bool> = (0..w * h).map(|_| rng.gen_bool(density * 0.5)).collect();
        for _ in 0..rings {
            if w < 5 || h < 5 {
                break;
            }
            let (x0, y0) = (rng.gen_range(0..w - 4), rng.gen_range(0..h - 4));
            let (x1, y1) = (rng.gen_range(x0 + 4..w), rng.gen_range(y0 + 4..h));
            for x in x0..=x1 {
                mask[y0 * w + x] = true;
                mask[y1 * w + x] = true;
            }
            for y in y0..=y1 {
                mask[y * w + x0] = true;
                mask[y * w + x1] = true;
            }
            for y in y0 + 1..y1 {
                for x in x0 + 1..x1 {
                    mask[y * w + x] = (x + y) % 3 == 0 && x > x0 + 1 && x + 1 < x1 && y > y0 + 1 && y + 1 < y1;
                }
            }
        }
        let bytes: Vec<u8> = mask.iter().map(|&b| if b { 255 } else { 0 }).collect();
        let mut got: Vec<[usize; 4]> =
            mebin::crop::external_rects(&bytes, w, h).into_iter().map(|(x, y, rw, rh)| [x, y, rw, rh]).collect();
        got.sort();
        prop_assert_eq!(got, naive_external_rects(&mask, w, h));
    }
}
