//! `anomalyncd detect` on a tiny generated set (textured surfaces; defects are dark spots with
//! masks): the output layout and map format, the global scale, metrics, and bad inputs. With the
//! real EfficientNet-Lite0 weights (data/weights/efficientnet_lite0.pth from
//! scripts/prepare_weights.sh; skipped with a message when absent) the spots must be found.

mod maps_eval;
mod precision;

use std::path::{Path, PathBuf};

use image::{GrayImage, Luma};
use serde_json::Value;

use crate::common::stderr;

const SIZE: u32 = 64;

fn cli(args: &[&str]) -> std::process::Output {
    crate::common::bin()
        .args(["-q", "--device", "cpu"])
        .args(args)
        .output()
        .expect("run anomalyncd")
}

/// A deterministic textured tile (xorshift noise on stripes), with a dark disc when `spot` is
/// given (centre x, y, radius), and the disc's mask.
fn tile(seed: u32, spot: Option<(i32, i32, i32)>) -> (GrayImage, GrayImage) {
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    let mut noise = move || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        (s % 17) as f32 - 8.0
    };
    let mut img = GrayImage::new(SIZE, SIZE);
    let mut mask = GrayImage::new(SIZE, SIZE);
    for y in 0..SIZE {
        for x in 0..SIZE {
            let mut v = 150.0 + 25.0 * ((x as f32) * 0.7).sin() + noise();
            if let Some((cx, cy, r)) = spot {
                let (dx, dy) = (x as i32 - cx, y as i32 - cy);
                if dx * dx + dy * dy <= r * r {
                    v = 30.0 + noise();
                    mask.put_pixel(x, y, Luma([255]));
                }
            }
            img.put_pixel(x, y, Luma([v.clamp(0.0, 255.0) as u8]));
        }
    }
    (img, mask)
}

/// train/good (8), test/good (2), test/spot (3) with ground_truth/spot masks.
fn make_set(root: &Path) {
    let save = |img: &GrayImage, rel: String| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        img.save(p).unwrap();
    };
    for i in 0..8 {
        save(&tile(i, None).0, format!("train/good/{i:03}.png"));
    }
    for i in 0..2 {
        save(&tile(100 + i, None).0, format!("test/good/{i:03}.png"));
    }
    for (i, spot) in [(20, 20, 6), (44, 30, 7), (30, 48, 5)]
        .into_iter()
        .enumerate()
    {
        let (img, mask) = tile(200 + i as u32, Some(spot));
        save(&img, format!("test/spot/{i:03}.png"));
        save(&mask, format!("ground_truth/spot/{i:03}.png"));
    }
}

fn detect(root: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let p = |s: &str| root.join(s).to_str().unwrap().to_string();
    let (train, test, masks) = (p("train"), p("test"), p("ground_truth"));
    let mut args = vec![
        "detect",
        "--train",
        &train,
        "--test",
        &test,
        "--masks",
        &masks,
        "--out",
        out.to_str().unwrap(),
        "--image-size",
        "64",
        "--batch-size",
        "4",
        "--coreset",
        "0.5",
    ];
    // The EfficientNet cases pin the backbone; the ViT's own cases say so.
    if !extra.contains(&"--backbone") {
        args.extend(["--backbone", "efficientnet-lite0"]);
    }
    args.extend(extra);
    cli(&args)
}

fn report(out: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("detect.json")).unwrap()).unwrap()
}

/// The map's maximum (the first in raster order) in the mask's pixel coordinates, and the
/// tolerance `argmax_in_defect` allows around it: 2 % of the mask's larger side.
fn argmax_on_mask(map: &GrayImage, mask: &GrayImage) -> (f64, f64, f64) {
    let (mut best, mut at) = (0u8, (0, 0));
    for (x, y, p) in map.enumerate_pixels() {
        if p[0] > best {
            (best, at) = (p[0], (x, y));
        }
    }
    let (w, h) = mask.dimensions();
    let cx = (at.0 as f64 + 0.5) * w as f64 / map.width() as f64;
    let cy = (at.1 as f64 + 0.5) * h as f64 / map.height() as f64;
    (cx, cy, (0.02 * w.max(h) as f64).round().max(1.0))
}

fn read_l8(p: &Path) -> GrayImage {
    match image::open(p).unwrap() {
        image::DynamicImage::ImageLuma8(g) => g,
        other => panic!("{}: not 8-bit gray: {:?}", p.display(), other.color()),
    }
}

#[test]
fn maps_layout_scale_and_metrics_with_random_weights() {
    let d = tempfile::tempdir().unwrap();
    make_set(d.path());
    let out = d.path().join("maps");
    let o = detect(d.path(), &out, &["--random-weights"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("image AUROC") && stdout.contains("pixel AUROC"),
        "{stdout}"
    );
    // Maps for the defective images only, 8-bit at the input size.
    let spot: Vec<PathBuf> = (0..3)
        .map(|i| out.join(format!("spot/{i:03}.png")))
        .collect();
    for p in &spot {
        assert_eq!(read_l8(p).dimensions(), (SIZE, SIZE));
    }
    assert!(!out.join("good").exists());
    let r = report(&out);
    let m = &r["metrics"];
    for k in ["image_auroc", "pixel_auroc", "aupro"] {
        let v = m[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {m}"));
        assert!((0.0..=1.0).contains(&v), "{k} {v}");
    }
    assert_eq!(
        (
            m["normal_test_images"].as_u64(),
            m["defect_test_images"].as_u64()
        ),
        (Some(2), Some(3))
    );
    // 8 images x 8x8 patches, coreset 0.5.
    assert_eq!(
        (r["pool_patches"].as_u64(), r["memory_bank"].as_u64()),
        (Some(512), Some(256))
    );
    assert_eq!(r["images"].as_array().unwrap().len(), 5);

    // With the normal maps written too, the maps share one scale: 0 and 255 both occur, and an
    // image's score order matches its map's maximum order.
    let all = d.path().join("all");
    let o = detect(d.path(), &all, &["--random-weights", "--write-good-maps"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut levels = (255u8, 0u8);
    for rel in [
        "good/000.png",
        "good/001.png",
        "spot/000.png",
        "spot/001.png",
        "spot/002.png",
    ] {
        let g = read_l8(&all.join(rel));
        for p in g.pixels() {
            levels = (levels.0.min(p[0]), levels.1.max(p[0]));
        }
    }
    assert_eq!(levels, (0, 255));
    // Same inputs, same seed: identical maps.
    for p in &spot {
        let rel = p.strip_prefix(&out).unwrap();
        assert_eq!(
            std::fs::read(p).unwrap(),
            std::fs::read(all.join(rel)).unwrap()
        );
    }

    // A flat test folder gives flat maps.
    let flat = d.path().join("flat");
    std::fs::create_dir_all(&flat).unwrap();
    for i in 0..2 {
        std::fs::copy(
            d.path().join(format!("test/spot/{i:03}.png")),
            flat.join(format!("f{i}.png")),
        )
        .unwrap();
    }
    let fo = d.path().join("flat_maps");
    let o = cli(&[
        "detect",
        "--backbone",
        "efficientnet-lite0",
        "--train",
        d.path().join("train").to_str().unwrap(),
        "--test",
        flat.to_str().unwrap(),
        "--out",
        fo.to_str().unwrap(),
        "--image-size",
        "64",
        "--random-weights",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(fo.join("f0.png").is_file() && fo.join("f1.png").is_file());
    assert!(report(&fo)["metrics"]["image_auroc"].is_null());
}

#[test]
fn bad_inputs_exit_2_with_the_fix() {
    let d = tempfile::tempdir().unwrap();
    make_set(d.path());
    let out = d.path().join("out");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--random-weights", "--coreset", "0"], "--coreset"),
        (vec!["--random-weights", "--stages", "4,2"], "--stages"),
        (
            vec!["--random-weights", "--image-size", "8"],
            "--image-size",
        ),
        (
            vec!["--weights", "/nonexistent/w.pth"],
            "/nonexistent/w.pth",
        ),
    ];
    for (extra, want) in cases {
        let o = detect(d.path(), &out, &extra);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{extra:?}: {}", stderr(&o));
    }
    // Weights of another model.
    let other = d.path().join("other.safetensors");
    tch::Tensor::write_safetensors(&[("x", tch::Tensor::from_slice(&[1.0f32]))], &other).unwrap();
    let o = detect(d.path(), &out, &["--weights", other.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("missing tensor"), "{}", stderr(&o));
    // A defective image without a mask.
    std::fs::remove_file(d.path().join("ground_truth/spot/001.png")).unwrap();
    let o = detect(d.path(), &out, &["--random-weights"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("spot/001"), "{}", stderr(&o));
    // Output inside an input.
    let inside = d.path().join("test/maps");
    let o = cli(&[
        "detect",
        "--backbone",
        "efficientnet-lite0",
        "--train",
        d.path().join("train").to_str().unwrap(),
        "--test",
        d.path().join("test").to_str().unwrap(),
        "--out",
        inside.to_str().unwrap(),
        "--random-weights",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("must not be inside"), "{}", stderr(&o));
    assert!(!out.join("detect.json").exists());
}

/// `data/weights/<file>` (made by scripts/prepare_weights.sh), or None with a printed reason.
fn offline_weights(file: &str) -> Option<PathBuf> {
    let w = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/weights")
        .join(file);
    if w.is_file() {
        Some(w)
    } else {
        eprintln!(
            "skipped: {} is absent (run scripts/prepare_weights.sh)",
            w.display()
        );
        None
    }
}

/// Needs data/weights/efficientnet_lite0.pth (scripts/prepare_weights.sh); skipped without it.
#[test]
fn pretrained_features_find_the_spots() {
    let Some(w) = offline_weights("efficientnet_lite0.pth") else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    make_set(d.path());
    let out = d.path().join("maps");
    let o = detect(d.path(), &out, &["--weights", w.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = report(&out)["metrics"].clone();
    assert_eq!(m["image_auroc"].as_f64(), Some(1.0), "{m}");
    assert!(m["pixel_auroc"].as_f64().unwrap() > 0.95, "{m}");
    assert!(m["aupro"].as_f64().unwrap() > 0.7, "{m}");
}

#[test]
fn vit_maps_keep_the_aspect_ratio_and_zero_shot_needs_two_images() {
    let d = tempfile::tempdir().unwrap();
    make_set(d.path());
    // A wide defective tile: 64×32 goes in as 70×28 (multiples of the 14-pixel patch).
    let (img, mask) = tile(300, Some((40, 16, 5)));
    let crop = |g: &GrayImage| image::imageops::crop_imm(g, 0, 16, 64, 32).to_image();
    crop(&img)
        .save(d.path().join("test/spot/wide.png"))
        .unwrap();
    crop(&mask)
        .save(d.path().join("ground_truth/spot/wide.png"))
        .unwrap();
    // The architecture's config name is accepted for the backbone, which keeps its own name.
    let vit = ["--backbone", "dinov2_vits14", "--random-weights"];
    let out = d.path().join("vit");
    let o = detect(d.path(), &out, &vit);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read_l8(&out.join("spot/000.png")).dimensions(), (70, 70));
    assert_eq!(read_l8(&out.join("spot/wide.png")).dimensions(), (70, 28));
    let r = report(&out);
    assert_eq!(r["backbone"], "dinov2-vits14");
    assert_eq!(r["resize"], "aspect");
    assert_eq!(r["blocks"], serde_json::json!([6, 9, 12]));
    assert_eq!(r["feature_dim"], 384);

    // Zero-shot: no --train; every test image is scored against the others.
    let zs = d.path().join("zs");
    let p = |s: &str| d.path().join(s).to_str().unwrap().to_string();
    let zs_args = |test: &str, out: &Path| {
        vec![
            "detect".to_string(),
            "--zero-shot".into(),
            "--test".into(),
            p(test),
            "--out".into(),
            out.to_str().unwrap().into(),
            "--image-size".into(),
            "64".into(),
            "--random-weights".into(),
        ]
    };
    let o = cli(&zs_args("test", &zs)
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let r = report(&zs);
    assert_eq!(r["zero_shot"], true);
    // 6 test images, all of them references (each skips itself).
    assert_eq!(r["zero_shot_refs"], 6);
    assert!(zs.join("spot/wide.png").is_file());
    // One test image: nothing to compare with.
    let one = d.path().join("one");
    std::fs::create_dir_all(&one).unwrap();
    std::fs::copy(d.path().join("test/spot/000.png"), one.join("a.png")).unwrap();
    let o = cli(&zs_args("one", &d.path().join("zs1"))
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--zero-shot") && stderr(&o).contains("at least 2"),
        "{}",
        stderr(&o)
    );
    assert!(!d.path().join("zs1").exists());
    // --train and --zero-shot exclude each other; without either, clap names --train.
    let mut both = zs_args("test", &d.path().join("zs2"));
    both.extend(["--train".into(), p("train")]);
    let o = cli(&both.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = cli(&[
        "detect",
        "--test",
        &p("test"),
        "--out",
        &p("zs3"),
        "--random-weights",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--train"), "{}", stderr(&o));
    let o = detect(
        d.path(),
        &out,
        &[
            "--backbone",
            "dinov2-vits14",
            "--random-weights",
            "--blocks",
            "0,3",
            "--overwrite",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--blocks"), "{}", stderr(&o));
}

#[test]
fn the_cnn_beside_the_vit_mixes_its_maps_in() {
    let d = tempfile::tempdir().unwrap();
    make_set(d.path());
    let vit = ["--backbone", "dinov2-vits14", "--random-weights"];
    let plain = d.path().join("plain");
    assert!(detect(d.path(), &plain, &vit).status.success());
    let out = d.path().join("fused");
    let o = detect(d.path(), &out, &[&vit[..], &["--fuse-cnn", "0.5"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let r = report(&out);
    assert_eq!(
        (r["fuse_cnn"].as_f64(), r["backbone"].as_str()),
        (Some(0.5), Some("dinov2-vits14"))
    );
    // The ViT's map size; other values than the ViT's alone; no pooled features (they would
    // not be under the maps as written); no spill file left.
    let (a, b) = (
        read_l8(&plain.join("spot/000.png")),
        read_l8(&out.join("spot/000.png")),
    );
    assert_eq!(a.dimensions(), b.dimensions());
    assert_ne!(a, b);
    assert!(plain.join("pooled_features.safetensors").is_file());
    assert!(!out.join("pooled_features.safetensors").exists());
    assert_eq!(spills(&out), 0);
    // Only with normal images, the ViT, and without held-out normals; the weight in [0, 1].
    for (extra, names) in [
        (vec!["--fuse-cnn", "1.5"], "[0, 1]"),
        (
            vec!["--fuse-cnn", "0.5", "--holdout-normals", "0.1"],
            "--holdout-normals",
        ),
    ] {
        let o = detect(
            d.path(),
            &d.path().join("bad"),
            &[&vit[..], &extra].concat(),
        );
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("--fuse-cnn") && stderr(&o).contains(names),
            "{}",
            stderr(&o)
        );
    }
    let o = detect(
        d.path(),
        &d.path().join("bad"),
        &["--random-weights", "--fuse-cnn", "0.5"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("dinov2-vits14"), "{}", stderr(&o));
    assert!(!d.path().join("bad").exists());
}

#[test]
fn the_cnn_beside_the_vit_under_auto_is_chosen_by_held_out_normals() {
    let d = tempfile::tempdir().unwrap();
    make_set(d.path());
    let normal = |i: u32, spot: Option<(i32, i32, i32)>| {
        let p = d.path().join(format!("train/good/{i:03}.png"));
        tile(if spot.is_some() { 300 + i } else { i }, spot)
            .0
            .save(p)
            .unwrap();
    };
    for i in 8..12 {
        normal(i, None);
    }
    let vit = ["--backbone", "dinov2-vits14", "--random-weights"];
    let auto = |out: &Path| {
        let o = detect(d.path(), out, &[&vit[..], &["--fuse-cnn", "auto"]].concat());
        assert!(o.status.success(), "{}", stderr(&o));
    };
    let out = d.path().join("auto");
    auto(&out);
    // What any `auto` run must hold: the weight as written, the CNN tried only where the ViT
    // orders fewer than 9 in 10 (held-out, flagged) pairs and mixed in only 0.05 above it, the
    // ViT's pooled features only under its own maps, no floor and no spill file left.
    let check = |out: &Path| -> serde_json::Value {
        let r = report(out);
        let c = r["cnn_choice"].clone();
        // One of the 12 normal images scored as if held out (a tenth); the bank holds all 12.
        assert_eq!(
            (c["held_out"].as_u64(), r["train_images"].as_u64()),
            (Some(1), Some(12))
        );
        assert!(r["normal_floor"].is_null());
        let (v, w) = (
            c["vit_auroc"].as_f64().unwrap(),
            c["weight"].as_f64().unwrap(),
        );
        assert_eq!(r["fuse_cnn"].as_f64(), Some(w), "{c}");
        match c["cnn_auroc"].as_f64() {
            None => assert!(v >= 0.9 && w == 0.0, "{c}"),
            Some(cnn) => assert!(v < 0.9 && (w > 0.0) == (cnn >= v + 0.05), "{c}"),
        }
        assert_eq!(out.join("pooled_features.safetensors").is_file(), w == 0.0);
        assert_eq!(spills(out), 0);
        c
    };
    // The synthetic spots stand out to the ViT: it stays alone, the CNN untried.
    assert!(check(&out)["cnn_auroc"].is_null());
    // Normal images with the same spots as the flagged ones: the ViT cannot order them, so the
    // CNN is fitted and scored too; here it orders them and its maps are mixed in.
    for i in 0..12 {
        normal(i as u32, Some((16 + 3 * i, 40 - 2 * i, 6)));
    }
    let spotted = d.path().join("spotted");
    auto(&spotted);
    let c = check(&spotted);
    assert!(c["vit_auroc"].as_f64().unwrap() < 0.9, "{c}");
    assert!(c["weight"].as_f64().unwrap() > 0.0, "{c}");
    // Not with --holdout-normals (its floor would not be on mixed maps); a bad value names `auto`.
    let both = ["--fuse-cnn", "auto", "--holdout-normals", "0.1"];
    let o = detect(d.path(), &d.path().join("bad"), &[&vit[..], &both].concat());
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--holdout-normals"), "{}", stderr(&o));
    let o = detect(
        d.path(),
        &d.path().join("bad"),
        &[&vit[..], &["--fuse-cnn", "half"]].concat(),
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("auto"), "{}", stderr(&o));
}

/// Float-map spill files (`*.f32`) left in a detector's output folder.
fn spills(out: &Path) -> usize {
    std::fs::read_dir(out)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".f32"))
        .count()
}

/// The share of the defective test images whose map maximum lies inside the mask dilated by
/// 2 % of the image's larger side (the maps may have another size than the masks).
fn argmax_in_defect(maps: &Path, masks: &Path) -> f64 {
    let (mut hits, mut n) = (0, 0);
    for t in std::fs::read_dir(masks).unwrap() {
        let t = t.unwrap().path();
        for m in std::fs::read_dir(&t).unwrap() {
            let m = m.unwrap().path();
            let mask = read_l8(&m);
            let map = read_l8(
                &maps
                    .join(t.file_name().unwrap())
                    .join(m.file_name().unwrap()),
            );
            let (cx, cy, r) = argmax_on_mask(&map, &mask);
            let inside = mask.enumerate_pixels().any(|(x, y, p)| {
                p[0] > 127 && (x as f64 - cx).abs() <= r + 0.5 && (y as f64 - cy).abs() <= r + 0.5
            });
            hits += inside as usize;
            n += 1;
        }
    }
    hits as f64 / n as f64
}

/// Needs data/weights/dinov2_vits14.safetensors (scripts/prepare_weights.sh); skipped without
/// it. On the synthetic set, with normal images and zero-shot, the maxima fall in the defects.
#[test]
fn pretrained_vit_finds_the_synthetic_defects_with_and_without_normals() {
    let Some(w) = offline_weights("dinov2_vits14.safetensors") else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let set = d.path().join("synth");
    let o = cli(&[
        "synth",
        "--out",
        set.to_str().unwrap(),
        "--per-type",
        "5",
        "--normal",
        "8",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let p = |s: &str| set.join(s).to_str().unwrap().to_string();
    let w = w.to_str().unwrap();
    let (train, test, masks) = (p("train"), p("test"), p("ground_truth"));
    let modes: [(&str, Vec<&str>); 2] = [
        ("fit", vec!["--train", &train]),
        ("zero-shot", vec!["--zero-shot"]),
    ];
    for (name, mode) in modes {
        let out = d.path().join(name);
        let mut args = vec![
            "detect",
            "--test",
            &test,
            "--out",
            out.to_str().unwrap(),
            "--weights",
            w,
            "--image-size",
            "224",
        ];
        args.extend(["--masks", &masks]);
        args.extend(mode);
        let o = cli(&args);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let rate = argmax_in_defect(&out, &set.join("ground_truth"));
        assert!(
            rate >= 0.8,
            "{name}: argmax in defect for {rate:.2} of the images"
        );
    }
}
