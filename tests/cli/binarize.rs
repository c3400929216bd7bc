//! `anomalyncd binarize`: parity with the reference's golden run (reads ../shared; under
//! `binarization.no_interval: whole_image`), and bad
//! inputs and edge cases of the command and the library run. (Exactness properties of MEBin are in
//! `tests/fuzz/mebin_props.rs`; raw and fallback maps in [`maps`].)

mod maps;

use std::path::Path;

use anomalyncd::imageio::GrayMap;
use anomalyncd::mebin::{self, BitDepth, Params};
use image::{DynamicImage, GrayImage, ImageBuffer, Rgb, RgbImage};
use serde_json::Value;

use crate::common::{cli, make_map, shared, stderr};

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
        // the reference's crop for maps without a stable interval
        "--set",
        "binarization.no_interval=whole_image",
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
    let o = crate::common::bin()
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
            normal: false,
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
            refine: Default::default(),
            range,
            rule: Default::default(),
            out,
            progress: false,
        }
    }
    let o1 = d.path().join("o1");
    let s1 = job(
        &items,
        &o1,
        mebin::RangeSource::FromMaps {
            min_threshold: None,
        },
    )
    .run()
    .unwrap();
    let o2 = d.path().join("o2");
    let s2 = job(&items, &o2, mebin::RangeSource::Fixed(s1.range(), None))
        .run()
        .unwrap();
    assert_eq!(
        s1.records.iter().map(|r| &r.crop_boxes).collect::<Vec<_>>(),
        s2.records.iter().map(|r| &r.crop_boxes).collect::<Vec<_>>()
    );
    // only the first item, with the stored range: same result for it
    let o3 = d.path().join("o3");
    let one = mebin::BinarizeJob {
        items: &items[..1],
        ..job(&items, &o3, mebin::RangeSource::Fixed(s1.range(), None))
    };
    let s3 = one.run().unwrap();
    assert_eq!(s3.records[0].threshold, s1.records[0].threshold);
    assert_eq!(s3.records[0].crop_scores, s1.records[0].crop_scores);
}
