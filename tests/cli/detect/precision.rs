//! `--precision auto` on the CPU: decided by timing GEMMs, logged with both rates, stored once
//! per machine in the cache folder and reused only there; `fp32` and `bf16` are never
//! overridden by a stored decision. With the real DINOv2 weights, bf16 maps peak in the same
//! defects as fp32 ones.

use std::path::Path;
use std::process::Output;

use image::{GrayImage, Luma};
use serde_json::Value;

use super::{make_set, report};
use crate::common::stderr;

/// A ViT zero-shot detect run at info level (the decision is logged at info) with `cache` as
/// the cache folder. The other tests load the machine, so the busy threshold is lifted: the
/// rates are stored whatever the load (the threshold itself has unit tests).
fn run(root: &Path, cache: &Path, out: &str, precision: &str) -> Output {
    let o = crate::common::bin()
        .env("ANOMALYNCD_CACHE_DIR", cache)
        .env("ANOMALYNCD_PRECISION_BUSY_CORES", "1000")
        .args(["--device", "cpu", "detect", "--zero-shot", "--test"])
        .arg(root.join("test"))
        .arg("--out")
        .arg(root.join(out))
        .args(["--image-size", "32", "--random-weights"])
        .args(["--precision", precision])
        .output()
        .expect("run anomalyncd");
    assert!(o.status.success(), "{}", stderr(&o));
    o
}

/// The `precision auto: …` line of a run's log.
fn decision(o: &Output) -> Option<String> {
    let lines: Vec<String> = stderr(o)
        .lines()
        .filter(|l| l.starts_with("precision auto: "))
        .map(str::to_string)
        .collect();
    assert!(lines.len() <= 1, "logged more than once: {lines:?}");
    lines.into_iter().next()
}

fn stored(cache: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(cache.join("precision.json")).unwrap()).unwrap()
}

#[test]
fn auto_is_measured_logged_stored_and_reused_only_on_the_same_cpu() {
    let cpu_known = std::fs::read_to_string("/proc/cpuinfo")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("model name")));
    if !cpu_known {
        eprintln!("skipped: no CPU model name in /proc/cpuinfo, so nothing is stored");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    make_set(d.path());
    let cache = d.path().join("cache");
    let file = cache.join("precision.json");

    let line = decision(&run(d.path(), &cache, "a", "auto")).expect("decision not logged");
    assert!(
        line.contains(" GFLOP/s, fp32 ") && line.contains("measured, saved in"),
        "{line}"
    );
    let s = stored(&cache);
    let choice = s["precision"].as_str().unwrap().to_string();
    assert!(
        line.starts_with(&format!("precision auto: {choice} (bf16 ")),
        "{line}"
    );
    let as_run = if choice == "bf16" {
        "bfloat16"
    } else {
        "float"
    };
    assert_eq!(report(&d.path().join("a"))["precision"], as_run);

    let line = decision(&run(d.path(), &cache, "b", "auto")).expect("decision not logged");
    assert!(
        line.contains(&format!("stored in {}", file.display())),
        "{line}"
    );

    // Another CPU's decision, the opposite of this one's: measured again and overwritten.
    let mut other = s.clone();
    other["cpu"] = "Some Other CPU".into();
    other["precision"] = if choice == "bf16" { "fp32" } else { "bf16" }.into();
    std::fs::write(&file, other.to_string()).unwrap();
    let line = decision(&run(d.path(), &cache, "c", "auto")).expect("decision not logged");
    assert!(line.contains("measured"), "{line}");
    let again = stored(&cache);
    assert_eq!(again["cpu"], s["cpu"]);
    // The new measurement decides (on a loaded machine it may differ from the first one).
    let as_run_again = if again["precision"] == "bf16" {
        "bfloat16"
    } else {
        "float"
    };
    assert_eq!(report(&d.path().join("c"))["precision"], as_run_again);

    // A forced precision neither reads nor logs the decision, whatever is stored.
    for (forced, kind) in [("fp32", "float"), ("bf16", "bfloat16")] {
        let o = run(d.path(), &cache, forced, forced);
        assert_eq!(decision(&o), None, "{}", stderr(&o));
        assert_eq!(report(&d.path().join(forced))["precision"], kind);
    }
}

/// The defect a map's maximum (the first in raster order) falls in: the label (from 1) of the
/// ground-truth mask's 8-connected component nearest to it, within 2 % of the mask's larger
/// side (as `argmax_in_defect` allows); `None` outside every defect. The map may be of
/// another size than the mask.
fn defect_at_argmax(map: &GrayImage, mask: &GrayImage) -> Option<u32> {
    use imageproc::region_labelling::{connected_components, Connectivity};
    let labels = connected_components(mask, Connectivity::Eight, Luma([0u8]));
    let (cx, cy, r) = super::argmax_on_mask(map, mask);
    let r = r + 0.5;
    labels
        .enumerate_pixels()
        .filter(|(_, _, l)| l[0] > 0)
        .map(|(x, y, l)| {
            let (dx, dy) = ((x as f64 + 0.5 - cx).abs(), (y as f64 + 0.5 - cy).abs());
            (dx.max(dy), l[0])
        })
        .filter(|&(dist, _)| dist <= r)
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, l)| l)
}

/// Needs data/weights/dinov2_vits14.safetensors (scripts/prepare_weights.sh); skipped without
/// it. `--precision bf16` finds the defects fp32 finds: on a small synthetic set, wherever the
/// fp32 map's maximum lies in a defect, the bf16 map's lies in the same one (images with two
/// defects tell them apart).
#[test]
fn bf16_maps_peak_in_the_same_defects_as_fp32() {
    let Some(w) = super::offline_weights("dinov2_vits14.safetensors") else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let set = d.path().join("synth");
    let o = super::cli(&[
        "synth",
        "--out",
        set.to_str().unwrap(),
        "--per-type",
        "3",
        "--normal",
        "4",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let p = |s: &str| set.join(s).to_str().unwrap().to_string();
    for (precision, kind) in [("fp32", "float"), ("bf16", "bfloat16")] {
        let out = d.path().join(precision);
        let o = super::cli(&[
            "detect",
            "--train",
            &p("train"),
            "--test",
            &p("test"),
            "--out",
            out.to_str().unwrap(),
            "--weights",
            w.to_str().unwrap(),
            "--image-size",
            "224",
            "--precision",
            precision,
        ]);
        assert!(o.status.success(), "{precision}: {}", stderr(&o));
        assert_eq!(report(&out)["precision"], kind);
    }
    let (mut images, mut found) = (0, 0);
    for t in std::fs::read_dir(set.join("ground_truth")).unwrap() {
        let t = t.unwrap().path();
        for m in std::fs::read_dir(&t).unwrap() {
            let m = m.unwrap().path();
            let mask = super::read_l8(&m);
            let rel = Path::new(t.file_name().unwrap()).join(m.file_name().unwrap());
            let at = |precision: &str| {
                defect_at_argmax(&super::read_l8(&d.path().join(precision).join(&rel)), &mask)
            };
            images += 1;
            let Some(defect) = at("fp32") else {
                continue;
            };
            found += 1;
            assert_eq!(
                at("bf16"),
                Some(defect),
                "{}: the bf16 map peaks elsewhere than the fp32 one (in defect {defect})",
                rel.display()
            );
        }
    }
    eprintln!("the fp32 maps peak in a defect on {found} of {images} images, the bf16 ones too");
    // Enough images where fp32 finds the defect for the comparison to say something.
    assert!(
        2 * found >= images,
        "the fp32 maps peak in a defect on only {found} of {images} images"
    );
}

#[test]
fn the_defect_at_a_maps_maximum_is_told_apart_from_the_others() {
    // Two defects in a 100×100 mask; maps at half the size.
    let mask = GrayImage::from_fn(100, 100, |x, y| {
        let on = (10..20).contains(&x) && (10..20).contains(&y)
            || (70..90).contains(&x) && (60..80).contains(&y);
        Luma([if on { 255 } else { 0 }])
    });
    let peak = |px: u32, py: u32| {
        GrayImage::from_fn(50, 50, |x, y| {
            Luma([if (x, y) == (px, py) { 200 } else { 10 }])
        })
    };
    let first = defect_at_argmax(&peak(7, 7), &mask).expect("in the first defect");
    let second = defect_at_argmax(&peak(40, 35), &mask).expect("in the second defect");
    assert_ne!(first, second);
    // Just beside the first defect (within 2 % of the side), and far from both.
    assert_eq!(defect_at_argmax(&peak(10, 7), &mask), Some(first));
    assert_eq!(defect_at_argmax(&peak(30, 5), &mask), None);
}
