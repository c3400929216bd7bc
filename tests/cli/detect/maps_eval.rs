//! `anomalyncd maps-eval`: localisation of a folder of maps against masks, and its bad inputs
//! (part of the `detect` tests).

use super::*;
use crate::common;

/// `maps-eval` fixture: `maps/spot/{0,1}.png` (32×32) with masks and images at 64×48, map 0
/// peaking on its defect and map 1 beside it, and a normal `maps/good/0.png` without a mask.
fn make_maps_eval_set(root: &Path) {
    let save = |img: &GrayImage, rel: &str| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        img.save(p).unwrap();
    };
    // (peak centre in map pixels, peak level)
    let blob = |cx: f32, cy: f32, peak: f32| {
        GrayImage::from_fn(32, 32, |x, y| {
            let d2 = (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2);
            Luma([(20.0 + (peak - 20.0) * (-d2 / 8.0).exp()) as u8])
        })
    };
    // The defect: image pixels 16..24 × 12..20, map pixels 8..12 × 8..13.
    let mask = GrayImage::from_fn(64, 48, |x, y| {
        Luma([if (16..24).contains(&x) && (12..20).contains(&y) {
            255
        } else {
            0
        }])
    });
    save(&blob(10.0, 10.0, 220.0), "maps/spot/0.png");
    save(&blob(26.0, 24.0, 180.0), "maps/spot/1.png");
    save(&blob(16.0, 16.0, 60.0), "maps/good/0.png");
    for rel in ["spot/0.png", "spot/1.png"] {
        save(&mask, &format!("masks/{rel}"));
    }
    for (i, rel) in ["spot/0.png", "spot/1.png", "good/0.png"]
        .iter()
        .enumerate()
    {
        save(&tile(300 + i as u32, None).0, &format!("images/{rel}"));
    }
    // tile() is SIZE×SIZE; the images must have the masks' size.
    for rel in ["spot/0.png", "spot/1.png", "good/0.png"] {
        let p = root.join("images").join(rel);
        let img = image::open(&p).unwrap().crop_imm(0, 0, 64, 48);
        img.save(&p).unwrap();
    }
}

fn maps_eval(root: &Path, extra: &[&str]) -> std::process::Output {
    let p = |s: &str| root.join(s).to_str().unwrap().to_string();
    let (maps, masks) = (p("maps"), p("masks"));
    let mut args = vec!["maps-eval", "--anomaly-maps", &maps, "--masks", &masks];
    args.extend(extra);
    cli(&args)
}

#[test]
fn maps_eval_scores_localisation_and_writes_json() {
    let d = tempfile::tempdir().unwrap();
    make_maps_eval_set(d.path());
    let before = common::Untouched::new(&[d.path().join("maps"), d.path().join("masks")]);
    let json = d.path().join("report/loc.json");
    let images = d.path().join("images");
    let o = maps_eval(
        d.path(),
        &[
            "--images",
            images.to_str().unwrap(),
            "--out",
            json.to_str().unwrap(),
        ],
    );
    common::assert_ok(&o, "maps-eval");
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.lines().any(|l| l.starts_with("overall")) && table.contains("argmax in defect"),
        "{table}"
    );
    before.check("maps-eval");

    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["command"], "maps-eval");
    let types: Vec<&str> = r["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["good", "spot"]);
    let (good, spot, all) = (&r["types"][0], &r["types"][1], &r["overall"]);
    // The normal map counts only in the pixel metrics.
    assert_eq!(
        (good["maps"].as_u64(), good["localized_maps"].as_u64()),
        (Some(1), Some(0))
    );
    assert!(
        good["mebin"].is_null() && good["pixel_auroc"].is_null(),
        "{good}"
    );
    // Map 0 peaks on the defect, map 1 beside it.
    assert_eq!(spot["localized_maps"], 2);
    assert_eq!(spot["argmax_in_defect"], 1);
    assert_eq!(spot["argmax_in_defect_rate"], 0.5);
    let iou = spot["mean_best_iou"].as_f64().unwrap();
    assert!(iou > 0.1 && iou < 1.0, "{iou}");
    let m = &spot["mebin"];
    assert_eq!(m["maps"], 2);
    assert!(m["crops"].as_u64().unwrap() >= 2, "{m}");
    assert!(m["crops_touching"].as_u64().unwrap() >= 1, "{m}");
    assert_eq!(all["maps"], 3);
    let auroc = all["pixel_auroc"].as_f64().unwrap();
    assert!(
        (0.0..=1.0).contains(&auroc) && all["aupro"].is_f64(),
        "{all}"
    );
    assert!(
        r["search_range"]["max_th"].as_f64().unwrap() >= 200.0,
        "{r}"
    );

    // Without images: no crop columns. The report may be written again over its own file.
    let o = maps_eval(d.path(), &["--out", json.to_str().unwrap()]);
    common::assert_ok(&o, "maps-eval without images");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(
        r["overall"]["mebin"].is_null() && r["images"].is_null(),
        "{r}"
    );
    assert_eq!(r["overall"]["argmax_in_defect"], 1);
}

#[test]
fn maps_eval_bad_inputs_exit_2_naming_the_culprit() {
    let d = tempfile::tempdir().unwrap();
    make_maps_eval_set(d.path());
    let path = |s: &str| d.path().join(s).to_str().unwrap().to_string();

    // --out: inside an input, a folder, a file the tool did not write.
    let inside = path("maps/loc.json");
    let o = maps_eval(d.path(), &["--out", &inside]);
    common::assert_fails(&o, 2, &["--out", "must not be inside"], "--out inside maps");
    let o = maps_eval(d.path(), &["--out", &path("images")]);
    common::assert_fails(&o, 2, &["--out", "is a folder"], "--out folder");
    std::fs::write(d.path().join("notes.json"), "{\"mine\": 1}").unwrap();
    let o = maps_eval(d.path(), &["--out", &path("notes.json")]);
    common::assert_fails(
        &o,
        2,
        &["notes.json", "not a maps-eval report"],
        "foreign --out",
    );
    assert_eq!(
        std::fs::read_to_string(d.path().join("notes.json")).unwrap(),
        "{\"mine\": 1}"
    );

    // Missing folders name their flag.
    let o = cli(&[
        "maps-eval",
        "--anomaly-maps",
        &path("maps"),
        "--masks",
        &path("nope"),
    ]);
    common::assert_fails(&o, 2, &["--masks", "nope"], "missing masks folder");

    // An empty maps folder.
    std::fs::create_dir_all(d.path().join("empty")).unwrap();
    let o = cli(&[
        "maps-eval",
        "--anomaly-maps",
        &path("empty"),
        "--masks",
        &path("masks"),
    ]);
    common::assert_fails(
        &o,
        2,
        &["empty", "no anomaly maps found"],
        "empty maps folder",
    );

    // A defective map without a mask names the map and the fix.
    std::fs::remove_file(d.path().join("masks/spot/1.png")).unwrap();
    let o = maps_eval(d.path(), &[]);
    common::assert_fails(
        &o,
        2,
        &["spot/1.png", "no ground-truth mask", "masks"],
        "missing mask",
    );

    // A mask that is not an image.
    std::fs::write(d.path().join("masks/spot/1.png"), b"not a png").unwrap();
    let o = maps_eval(d.path(), &[]);
    common::assert_fails(&o, 2, &["masks/spot/1.png"], "corrupt mask");

    // A mask of another size than its image (crops are in image pixels).
    let small = GrayImage::new(10, 10);
    small.save(d.path().join("masks/spot/1.png")).unwrap();
    let o = maps_eval(d.path(), &["--images", &path("images")]);
    common::assert_fails(&o, 2, &["masks/spot/1.png", "10x10", "64x48"], "mask size");
}
