//! `anomalyncd prepare-base`: crops of a labelled base set by its masks, with parity against the
//! reference's crops of SD-saliency-900 (reads ../shared) and checks of bad inputs.

use std::path::Path;

use image::{DynamicImage, GrayImage, Luma, Rgb, RgbImage};
use serde_json::Value;

use crate::common::{cli, shared, stderr};

fn prepare(images: &Path, masks: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "prepare-base",
        "--images",
        images.to_str().unwrap(),
        "--masks",
        masks.to_str().unwrap(),
    ];
    args.extend(["--out", out.to_str().unwrap()]);
    args.extend(extra);
    cli(&args)
}

/// SD-saliency-900 (reads ../shared/data/sd900): every image's crop boxes, sizes and mask-crop
/// foreground equal the reference's (`aebad_preprocess.py` rule, tests/fixtures/sd900_reference_crops.json).
#[test]
fn sd900_crops_match_the_reference_reads_shared() {
    let Some(shared) = shared() else {
        eprintln!("skipping sd900_crops_match_the_reference_reads_shared: ../shared is absent");
        return;
    };
    let sd = shared.join("data/sd900");
    let out = tempfile::tempdir().unwrap();
    let o = prepare(
        &sd.join("images"),
        &sd.join("masks"),
        &out.path().join("base"),
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let want: Value =
        serde_json::from_str(include_str!("../fixtures/sd900_reference_crops.json")).unwrap();
    let got: Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("base/prepare_base.json")).unwrap(),
    )
    .unwrap();
    let recs = got["records"].as_array().unwrap();
    let want = want["crops"].as_object().unwrap();
    assert_eq!(recs.len(), want.len());
    for r in recs {
        let (c, s) = (
            r["class_name"].as_str().unwrap(),
            r["stem"].as_str().unwrap(),
        );
        let w = &want[&format!("{c}/{s}")];
        let (gb, wb) = (
            r["crop_boxes"].as_array().unwrap(),
            w["boxes"].as_array().unwrap(),
        );
        assert_eq!(gb.len(), wb.len(), "{c}/{s}");
        for (a, b) in gb.iter().zip(wb) {
            for (x, y) in a.as_array().unwrap().iter().zip(b.as_array().unwrap()) {
                assert!(
                    (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-3,
                    "{c}/{s}: {a} vs {b}"
                );
            }
        }
        for (k, (size, fg)) in w["sizes"]
            .as_array()
            .unwrap()
            .iter()
            .zip(w["mask_fg"].as_array().unwrap())
            .enumerate()
        {
            let img =
                image::open(out.path().join(format!("base/images/{c}/{s}_crop{k}.png"))).unwrap();
            assert_eq!(img.color(), image::ColorType::Rgb8);
            assert_eq!(
                serde_json::json!([img.width(), img.height()]),
                *size,
                "{c}/{s} crop {k}"
            );
            let m = image::open(out.path().join(format!("base/masks/{c}/{s}_crop{k}.png")))
                .unwrap()
                .to_luma8();
            assert_eq!(
                m.pixels().filter(|p| p.0[0] != 0).count() as u64,
                fg.as_u64().unwrap(),
                "{c}/{s} mask {k}"
            );
        }
    }
}

/// Two classes of 3 images (60×50) with masks; image `x2` has three separate defects, `x1` an
/// empty mask, and class `b` has masks at twice the image size.
fn make_base(root: &Path) {
    for (class, scale) in [("a", 1u32), ("b", 2)] {
        for i in 0..3 {
            let img = RgbImage::from_fn(60, 50, |x, y| {
                Rgb([(x * 4) as u8, (y * 5) as u8, i as u8 * 60])
            });
            let p = root.join(format!("images/{class}/x{i}.png"));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            DynamicImage::ImageRgb8(img).save(&p).unwrap();
            let mut m = GrayImage::new(60 * scale, 50 * scale);
            let blobs: &[(u32, u32)] = match i {
                0 => &[(30, 25)],
                1 => &[],
                _ => &[(8, 8), (50, 10), (30, 42)],
            };
            for &(cx, cy) in blobs {
                for y in cy.saturating_sub(3)..cy + 3 {
                    for x in cx.saturating_sub(3)..cx + 3 {
                        m.put_pixel(x * scale, y * scale, Luma([255]));
                    }
                }
            }
            let p = root.join(format!("masks/{class}/x{i}.png"));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            m.save(&p).unwrap();
        }
    }
}

#[test]
fn crops_are_written_per_class_with_at_most_max_crops() {
    let d = tempfile::tempdir().unwrap();
    make_base(d.path());
    let out = d.path().join("out");
    let o = prepare(&d.path().join("images"), &d.path().join("masks"), &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    for class in ["a", "b"] {
        // one crop for the single defect, the whole image for the empty mask, 2 of 3 defects
        assert!(out.join(format!("images/{class}/x0_crop0.png")).exists());
        assert!(!out.join(format!("images/{class}/x0_crop1.png")).exists());
        let whole = image::open(out.join(format!("images/{class}/x1_crop0.png"))).unwrap();
        assert_eq!((whole.width(), whole.height()), (60, 50));
        assert!(out.join(format!("masks/{class}/x2_crop1.png")).exists());
        assert!(!out.join(format!("images/{class}/x2_crop2.png")).exists());
    }
    // a crop's mask holds the defect
    let m = image::open(out.join("masks/a/x0_crop0.png"))
        .unwrap()
        .to_luma8();
    assert_eq!(m.pixels().filter(|p| p.0[0] == 255).count(), 36);

    // --max-crops 3 keeps all three defects; rerunning with 1 removes the crops it no longer makes
    let out3 = d.path().join("out3");
    let o = prepare(
        &d.path().join("images"),
        &d.path().join("masks"),
        &out3,
        &["--max-crops", "3"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out3.join("images/a/x2_crop2.png").exists());
    let o = prepare(
        &d.path().join("images"),
        &d.path().join("masks"),
        &out3,
        &["--max-crops", "1", "--overwrite"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out3.join("images/a/x2_crop0.png").exists());
    assert!(!out3.join("images/a/x2_crop1.png").exists());
    assert!(!out3.join("masks/a/x2_crop2.png").exists());
}

#[test]
fn bad_base_inputs_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    make_base(d.path());
    let (imgs, masks) = (d.path().join("images"), d.path().join("masks"));
    let o = prepare(&imgs, &masks, &d.path().join("o"), &["--max-crops", "0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--max-crops"), "{}", stderr(&o));

    let o = prepare(&imgs, &masks, &imgs.join("out"), &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("must not be inside --images"),
        "{}",
        stderr(&o)
    );

    std::fs::remove_file(masks.join("b/x1.png")).unwrap();
    let o = prepare(&imgs, &masks, &d.path().join("o"), &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("images without a mask") && stderr(&o).contains("b/x1.png"),
        "{}",
        stderr(&o)
    );

    std::fs::write(masks.join("b/x1.png"), b"\x89PNG\r\n\x1a\n broken").unwrap();
    let o = prepare(&imgs, &masks, &d.path().join("o"), &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("x1.png") && stderr(&o).contains("corrupt"),
        "{}",
        stderr(&o)
    );
}
