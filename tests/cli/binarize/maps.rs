//! `binarize` on the inputs real detectors give: maps with no stable interval (the peak
//! fallback), normal images' maps in the set (`good`, `--normal-type`), and raw float maps
//! (`.npy`, float TIFF) against their 8-bit export. Part of the `binarize` tests.

use std::path::Path;

use anomalyncd::imageio::npy;
use image::{GrayImage, Luma};
use serde_json::Value;

use crate::common::{cli, picture, read_json, save, stderr};

fn run(root: &Path, maps: &str, out: &str, extra: &[&str]) -> std::process::Output {
    let mut args: Vec<String> = vec![
        "-q".into(),
        "binarize".into(),
        "--anomaly-maps".into(),
        root.join(maps).display().to_string(),
        "--images".into(),
        root.join("images").display().to_string(),
        "--out".into(),
        root.join(out).display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    cli(&args)
}

fn record<'a>(summary: &'a Value, class: &str, stem: &str) -> &'a Value {
    summary["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["class_name"] == class && r["stem"] == stem)
        .unwrap_or_else(|| panic!("no record {class}/{stem}"))
}

/// A 96×96 map whose component count changes every one or two thresholds: 36 separate 8×8
/// squares on a grid of 16-pixel cells at levels 250, 243, 236, … (one new square per 7 levels),
/// so no count lasts the 4 thresholds a stable interval needs. The brightest is at (0..8, 0..8).
fn staircase_map() -> GrayImage {
    let mut m = GrayImage::new(96, 96);
    for k in 0..36u32 {
        let level = (250 - 7 * k) as u8;
        for y in 0..8 {
            for x in 0..8 {
                m.put_pixel((k % 6) * 16 + x, (k / 6) * 16 + y, Luma([level]));
            }
        }
    }
    m
}

#[test]
fn a_map_without_a_stable_interval_is_cropped_around_its_peak() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    save(staircase_map(), &p.join("maps/a/stair.png"));
    // a second map with a low maximum sets the lower end of the range
    let mut low = GrayImage::new(96, 96);
    low.put_pixel(50, 50, Luma([10]));
    save(low, &p.join("maps/a/low.png"));
    for s in ["stair", "low"] {
        save(picture(96, 96, 3), &p.join(format!("images/a/{s}.png")));
    }
    let o = run(p, "maps", "peak", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = read_json(&p.join("peak/mebin.json"));
    let r = record(&s, "a", "stair");
    assert_eq!(
        r["est_anomaly_num"], 0,
        "the fixture must have no stable interval"
    );
    assert_eq!(r["peak_fallback"], true);
    let b = r["crop_boxes"][0].as_array().unwrap();
    let (l, u, rt, bt) = (
        b[0].as_f64().unwrap(),
        b[1].as_f64().unwrap(),
        b[2].as_f64().unwrap(),
        b[3].as_f64().unwrap(),
    );
    // the brightest square (0..8, 0..8) lies in the crop, which is not the whole image
    assert!(l <= 0.0 && u <= 0.0 && rt >= 8.0 && bt >= 8.0, "{b:?}");
    assert!((rt - l) * (bt - u) < 96.0 * 96.0 / 2.0, "{b:?}");
    assert!(r["crop_mask_foreground"][0].as_u64().unwrap() >= 64);
    assert_eq!(r["binary_foreground_pixels"], 64);
    assert!(r["crop_scores"][0].as_f64().unwrap() > 0.9);

    let o = run(
        p,
        "maps",
        "whole",
        &["--set", "binarization.no_interval=whole_image"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let s = read_json(&p.join("whole/mebin.json"));
    let r = record(&s, "a", "stair");
    assert_eq!(r["peak_fallback"], false);
    assert_eq!(r["threshold"], 255);
    assert_eq!(r["crop_boxes"], serde_json::json!([[0.0, 0.0, 96.0, 96.0]]));
    assert_eq!(r["crop_mask_foreground"], serde_json::json!([0]));
}

/// Four defect maps of two types (maxima 200 … 170) and normal maps (maxima 30 and 60).
fn normal_set(root: &Path, normal: &str, with_images: bool) {
    for (t, s, peak) in [
        ("a", "x", 200u8),
        ("a", "y", 180),
        ("b", "z", 190),
        ("b", "w", 170),
        (normal, "n0", 30),
        (normal, "n1", 60),
    ] {
        save(
            crate::common::blob_map(48, 48, 0.5, 0.5, peak),
            &root.join(format!("maps/{t}/{s}.png")),
        );
        if t != normal || with_images {
            save(
                picture(64, 48, 1),
                &root.join(format!("images/{t}/{s}.png")),
            );
        }
    }
}

#[test]
fn good_maps_set_the_range_and_are_never_cropped() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    normal_set(p, "good", true);
    let o = run(p, "maps", "out", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = read_json(&p.join("out/mebin.json"));
    // min_th: the smallest maximum over all maps, the normal ones included
    assert_eq!(
        (s["min_th"].as_f64(), s["max_th"].as_f64()),
        (Some(30.0), Some(200.0))
    );
    assert_eq!(s["normal_maps"], 2);
    let types: Vec<&str> = s["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["class_name"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["a", "a", "b", "b"]);
    assert!(!p.join("out/crops/images/good").exists());
    assert!(!p.join("out/binary/good").exists());
    let scores = std::fs::read_to_string(p.join("out/scores.json")).unwrap();
    assert!(!scores.contains("good"), "{scores}");

    // nor clustered or scored: the k-means baseline over the same folders sees two types
    std::fs::write(p.join("tiny.yaml"), crate::common::tiny_config(1, 0)).unwrap();
    let o = cli(&[
        "-q",
        "baseline",
        "--method",
        "kmeans",
        "--config",
        p.join("tiny.yaml").to_str().unwrap(),
        "--anomaly-maps",
        p.join("maps").to_str().unwrap(),
        "--images",
        p.join("images").to_str().unwrap(),
        "--out",
        p.join("base").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = read_json(&p.join("base/metrics.json"));
    assert_eq!(m["num_clusters"], 2, "{m}");
    assert_eq!(m["images"], 4, "{m}");
    for f in ["metrics.json", "predictions.csv", "crop_predictions.csv"] {
        let text = std::fs::read_to_string(p.join("base").join(f)).unwrap();
        assert!(!text.contains("good"), "{f}: {text}");
    }

    // without the normal maps the range starts at the defect maps' smallest maximum
    std::fs::remove_dir_all(p.join("maps/good")).unwrap();
    let o = run(p, "maps", "alone", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read_json(&p.join("alone/mebin.json"))["min_th"], 170.0);
}

#[test]
fn normal_type_names_another_folder_and_needs_no_images() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    normal_set(p, "MT_Free", false);
    let o = run(p, "maps", "out", &["--normal-type", "MT_Free"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = read_json(&p.join("out/mebin.json"));
    assert_eq!(
        (s["min_th"].as_f64(), s["normal_maps"].as_u64()),
        (Some(30.0), Some(2))
    );
    assert_eq!(s["records"].as_array().unwrap().len(), 4);
    // without the flag MT_Free is a defect type whose maps have no images
    let o = run(p, "maps", "plain", &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("MT_Free/n0"), "{}", stderr(&o));
    // a set of normal maps only
    let o = run(p, "maps/MT_Free", "only", &[]);
    assert_eq!(o.status.code(), Some(2));
    let o = cli(&[
        "-q",
        "binarize",
        "--anomaly-maps",
        p.join("maps").to_str().unwrap(),
        "--images",
        p.join("images").to_str().unwrap(),
        "--out",
        p.join("only").to_str().unwrap(),
        "--normal-type",
        "MT_Free",
        "--normal-type",
        "a",
        "--normal-type",
        "b",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("only normal-image maps"),
        "{}",
        stderr(&o)
    );
    assert!(!p.join("only/mebin.json").exists());
}

/// Float maps of blobs on a noisy background, values in about [-0.4, 3.6].
fn float_maps() -> Vec<(String, String, Vec<f32>)> {
    let mut out = Vec::new();
    for (k, (t, s)) in [
        ("a", "m0"),
        ("a", "m1"),
        ("a", "m2"),
        ("b", "m3"),
        ("b", "m4"),
    ]
    .into_iter()
    .enumerate()
    {
        let (cx, cy, peak) = (
            10.0 + 7.0 * k as f32,
            30.0 - 4.0 * k as f32,
            1.0 + 0.6 * k as f32,
        );
        let v = (0..48 * 48)
            .map(|i| {
                let (x, y) = ((i % 48) as f32, (i / 48) as f32);
                let d2 = ((x - cx).powi(2) + (y - cy).powi(2)) / 30.0;
                let noise = ((i * 7919 + k * 104729) % 1000) as f32 / 1000.0 * 0.4 - 0.4;
                noise + peak * (-d2).exp()
            })
            .collect();
        out.push((t.to_string(), s.to_string(), v));
    }
    out
}

#[test]
fn npy_and_float_tiff_sets_match_their_8_bit_export() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let maps = float_maps();
    // the reference's generate_anomaly_maps: min-max over the set, x255, uint8 by truncation
    let (lo, hi) = maps
        .iter()
        .flat_map(|m| m.2.iter())
        .fold((f64::MAX, f64::MIN), |(a, b), &v| {
            (a.min(v as f64), b.max(v as f64))
        });
    for (k, (t, s, v)) in maps.iter().enumerate() {
        save(
            picture(64, 64, k as u32),
            &p.join(format!("images/{t}/{s}.png")),
        );
        let png: Vec<u8> = v
            .iter()
            .map(|&x| ((x as f64 - lo) / (hi - lo) * 255.0) as u8)
            .collect();
        save(
            GrayImage::from_raw(48, 48, png).unwrap(),
            &p.join(format!("png/{t}/{s}.png")),
        );
        // C order, Fortran order and a leading axis of 1 all read the same
        let (shape, fortran): (&[usize], bool) = match k % 3 {
            0 => (&[48, 48], false),
            1 => (&[48, 48], true),
            _ => (&[1, 48, 48], false),
        };
        let f = p.join(format!("npy/{t}/{s}.npy"));
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, npy::encode_f32(shape, v, fortran)).unwrap();
        let f = p.join(format!("tif/{t}/{s}.tif"));
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        let mut enc = tiff::encoder::TiffEncoder::new(std::fs::File::create(&f).unwrap()).unwrap();
        enc.write_image::<tiff::encoder::colortype::Gray32Float>(48, 48, v)
            .unwrap();
    }
    let mut summaries = Vec::new();
    for set in ["png", "npy", "tif"] {
        let o = run(p, set, &format!("out_{set}"), &[]);
        assert!(o.status.success(), "{set}: {}", stderr(&o));
        summaries.push(read_json(&p.join(format!("out_{set}/mebin.json"))));
    }
    let keys = [
        "threshold",
        "est_anomaly_num",
        "component_counts",
        "crop_boxes",
        "crop_scores",
    ];
    for s in &summaries[1..] {
        assert_eq!(s["min_th"], summaries[0]["min_th"]);
        assert_eq!(s["max_th"], summaries[0]["max_th"]);
        assert_eq!(s["float_scale"], serde_json::json!([lo, hi]));
        for (a, b) in s["records"]
            .as_array()
            .unwrap()
            .iter()
            .zip(summaries[0]["records"].as_array().unwrap())
        {
            for k in keys {
                assert_eq!(a[k], b[k], "{} {k}", a["stem"]);
            }
        }
    }
    // a stored range and float scale (what `predict` gets from a checkpoint) reproduce one map
    let how = anomalyncd::mebin::folders::Pairing::default();
    let items =
        anomalyncd::mebin::folders::pair_folders(&p.join("npy"), &p.join("images"), &how).unwrap();
    let set = anomalyncd::mebin::folders::read_summary(&p.join("out_npy")).unwrap();
    let job = anomalyncd::mebin::BinarizeJob {
        items: &items[2..3],
        params: Default::default(),
        refine: Default::default(),
        range: anomalyncd::mebin::RangeSource::Fixed(set.range(), set.float_scale),
        rule: Default::default(),
        out: &p.join("one"),
        progress: false,
    };
    let one = job.run().unwrap();
    assert_eq!(one.float_scale, set.float_scale);
    assert_eq!(one.records[0].threshold, set.records[2].threshold);
    assert_eq!(one.records[0].crop_boxes, set.records[2].crop_boxes);
    assert!(summaries[0]["records"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["est_anomaly_num"] != 0));
}
