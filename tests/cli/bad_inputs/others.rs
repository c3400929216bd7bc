//! `prepare-base`, `detect`, `prepare-mtd`, `synth` and `--device`.

use std::path::Path;

use image::{DynamicImage, GrayImage, ImageBuffer, Luma, Rgb};

use super::{binarize, set};
use crate::common::*;

fn base_set(root: &Path, classes: &[(&str, usize)]) {
    for (c, n) in classes {
        for i in 0..*n {
            save(
                picture(40, 32, i as u32),
                &root.join(format!("images/{c}/b{i}.png")),
            );
            let m = GrayImage::from_fn(40, 32, |x, y| {
                Luma([if (8..20).contains(&x) && (6..18).contains(&y) {
                    255
                } else {
                    0
                }])
            });
            save(m, &root.join(format!("masks/{c}/b{i}.png")));
        }
    }
}

fn prepare_base(root: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let folders = [("--images", "images"), ("--masks", "masks")];
    cli_on_folders("prepare-base", root, &folders, out, extra)
}

#[test]
fn prepare_base_missing_folders_unpaired_and_corrupt_masks() {
    let d = tempfile::tempdir().unwrap();
    let o = prepare_base(d.path(), &d.path().join("out"), &[]);
    let images = d.path().join("images");
    assert_fails(&o, 2, &[images.to_str().unwrap()], "missing base images");

    base_set(d.path(), &[("dent", 3)]);
    std::fs::remove_file(d.path().join("masks/dent/b1.png")).unwrap();
    let g = Untouched::new(&[d.path()]);
    let o = prepare_base(d.path(), &d.path().join("out"), &[]);
    assert_fails(
        &o,
        2,
        &["dent/b1.png", "without a mask"],
        "image without mask",
    );
    g.check("image without mask");

    std::fs::write(d.path().join("masks/dent/b1.png"), b"GIF89a not a png").unwrap();
    let g = Untouched::new(&[d.path().join("images"), d.path().join("masks")]);
    let o = prepare_base(d.path(), &d.path().join("out2"), &[]);
    assert_fails(&o, 2, &["b1.png"], "corrupt mask");
    g.check("corrupt mask");

    let o = prepare_base(d.path(), &d.path().join("out3"), &["--max-crops", "0"]);
    assert_fails(&o, 2, &["--max-crops"], "zero max crops");
}

/// Masks of another size (resized to the image), an empty mask (whole-image crop), a 16-bit
/// RGB mask and a class of a single image all work.
#[test]
fn prepare_base_odd_masks_and_a_single_image_class_work() {
    let d = tempfile::tempdir().unwrap();
    base_set(d.path(), &[("dent", 3), ("lonely", 1)]);
    let m = GrayImage::from_fn(80, 64, |x, y| {
        Luma([if x > 40 && y > 30 { 255 } else { 0 }])
    });
    save(m, &d.path().join("masks/dent/b0.png"));
    save(GrayImage::new(10, 8), &d.path().join("masks/dent/b1.png"));
    let rgb16: ImageBuffer<Rgb<u16>, _> =
        ImageBuffer::from_fn(40, 32, |x, _| Rgb([if x < 10 { 65535 } else { 0 }; 3]));
    save(
        DynamicImage::ImageRgb16(rgb16),
        &d.path().join("masks/dent/b2.png"),
    );
    let g = Untouched::new(&[d.path().join("images"), d.path().join("masks")]);
    let out = d.path().join("out");
    let o = prepare_base(d.path(), &out, &[]);
    assert_ok(&o, "odd masks");
    g.check("odd masks");
    let recs = read_json(&out.join("prepare_base.json"))["records"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(recs.len(), 4);
    let rec = |stem: &str, class: &str| {
        recs.iter()
            .find(|r| r["stem"] == stem && r["class_name"] == class)
            .unwrap()
            .clone()
    };
    assert_eq!(rec("b1", "dent")["empty_mask"], true);
    assert_eq!(
        rec("b1", "dent")["crop_boxes"],
        serde_json::json!([[0.0, 0.0, 40.0, 32.0]])
    );
    assert_eq!(rec("b2", "dent")["empty_mask"], false);
    assert!(out.join("images/lonely/b0_crop0.png").is_file());
}

// ------------------------------------------------------------------------ detect, mtd, synth, CLI

fn detect_set(root: &Path) {
    for i in 0..4 {
        save(
            picture(48, 48, i),
            &root.join(format!("train/good/{i}.png")),
        );
    }
    for i in 0..2 {
        save(
            picture(48, 48, 10 + i),
            &root.join(format!("test/spot/{i}.png")),
        );
    }
}

fn detect(root: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let folders = [("--train", "train"), ("--test", "test")];
    let mut all = vec!["--random-weights", "--image-size", "64"];
    all.extend_from_slice(extra);
    cli_on_folders("detect", root, &folders, out, &all)
}

#[test]
fn detect_bad_folders_flags_and_images() {
    let d = tempfile::tempdir().unwrap();
    let o = detect(d.path(), &d.path().join("out"), &[]);
    let train = d.path().join("train");
    assert_fails(&o, 2, &[train.to_str().unwrap()], "missing --train");

    detect_set(d.path());
    std::fs::create_dir_all(d.path().join("empty")).unwrap();
    let g = Untouched::new(&[d.path().join("train"), d.path().join("test")]);
    // a good run writes its maps and leaves no spill file of the float maps behind
    let good = d.path().join("good");
    assert_ok(&detect(d.path(), &good, &[]), "detect");
    assert!(good.join("spot/0.png").is_file() && good.join("spot/1.png").is_file());
    assert!(!good.join(".anomalyncd-detect-maps.f32").exists());
    let o = cli(&[
        "detect",
        "--train",
        d.path().join("train").to_str().unwrap(),
        "--test",
        d.path().join("empty").to_str().unwrap(),
        "--out",
        d.path().join("out").to_str().unwrap(),
        "--random-weights",
    ]);
    assert_fails(&o, 2, &["--test", "no images"], "empty --test");
    let o = detect(d.path(), &d.path().join("out"), &["--image-size", "0"]);
    assert_fails(&o, 2, &["--image-size"], "zero image size");
    let o = detect(d.path(), &d.path().join("out"), &["--batch-size", "0"]);
    assert_fails(&o, 2, &["--batch-size"], "zero batch size");
    let o = detect(
        d.path(),
        &d.path().join("out"),
        &["--masks", "/nonexistent/gt"],
    );
    assert_fails(&o, 2, &["/nonexistent/gt"], "missing --masks");
    g.check("detect flags");

    std::fs::write(d.path().join("test/spot/1.png"), b"").unwrap();
    let g = Untouched::new(&[d.path().join("train"), d.path().join("test")]);
    let o = detect(d.path(), &d.path().join("out2"), &[]);
    assert_fails(&o, 2, &["spot/1.png", "0 bytes"], "zero-byte test image");
    g.check("zero-byte test image");
}

#[test]
fn prepare_mtd_and_synth_bad_inputs() {
    let d = tempfile::tempdir().unwrap();
    let o = cli(&[
        "prepare-mtd",
        "--raw",
        "/nonexistent/mtd",
        "--out",
        d.path().join("o").to_str().unwrap(),
    ]);
    assert_fails(&o, 2, &["/nonexistent/mtd"], "missing --raw");

    std::fs::create_dir_all(d.path().join("raw/holiday photos")).unwrap();
    let g = Untouched::new(&[d.path().join("raw")]);
    let raw = d.path().join("raw");
    let o = cli(&[
        "prepare-mtd",
        "--raw",
        raw.to_str().unwrap(),
        "--out",
        d.path().join("o").to_str().unwrap(),
    ]);
    assert_fails(&o, 2, &[raw.to_str().unwrap()], "no MT_ folders");
    g.check("no MT_ folders");

    let o = cli(&[
        "synth",
        "--out",
        d.path().join("s").to_str().unwrap(),
        "--size",
        "10",
    ]);
    assert_fails(&o, 2, &["--size"], "synth too small");
    let file = d.path().join("a file");
    std::fs::write(&file, b"x").unwrap();
    let o = cli(&["synth", "--out", file.to_str().unwrap()]);
    assert_fails(&o, 2, &["a file", "not a folder"], "synth into a file");
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}

/// `--device cuda` on a machine without CUDA: a usage error naming the flag, for any command.
#[test]
fn cuda_device_without_cuda_is_a_usage_error() {
    if tch::Cuda::is_available() {
        eprintln!("skipping cuda_device_without_cuda_is_a_usage_error: this machine has CUDA");
        return;
    }
    let (d, g) = set(&["a"], 2);
    let o = binarize(d.path(), &d.path().join("out"), &["--device", "cuda"]);
    assert_fails(&o, 2, &["--device cuda", "--device cpu"], "--device cuda");
    assert!(!d.path().join("out").exists());
    let o = cli(&["--device", "cuda:1", "config", "show"]);
    assert_fails(&o, 2, &["--device cuda:1"], "--device cuda:1");
    g.check("--device cuda");
}
