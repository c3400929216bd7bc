//! The detector's input side in `discover`: `detect.image_size: auto` (the default) follows the
//! defective images' median longer side (672 from 672 px up, else 448), a number fixes it, and
//! a bad value or an unreadable image is an exit-2 error before any work. Dry runs only: the
//! sizes come from the images' headers.

use super::*;

/// A folder `images/dent/<i>.png` of `n` grey images of `w` x `h`.
fn images(root: &Path, w: u32, h: u32, n: usize) -> PathBuf {
    let dir = root.join("images");
    std::fs::create_dir_all(dir.join("dent")).unwrap();
    for i in 0..n {
        image::GrayImage::from_pixel(w, h, image::Luma([90]))
            .save(dir.join(format!("dent/{i}.png")))
            .unwrap();
    }
    dir
}

fn plan(root: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "--images",
        "images",
        "--out",
        "run",
        "--num-classes",
        "2",
        "--detector-random-weights",
        "--dry-run",
    ];
    args.extend_from_slice(extra);
    ok(root, &args)
}

#[test]
fn the_detector_input_side_follows_the_images_unless_set() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    images(p, 800, 600, 3);
    assert!(plan(p, &[]).contains("input side 672 px"), "large images");
    let fixed = plan(p, &["--set", "detect.image_size=448"]);
    assert!(fixed.contains("input side 448 px"), "{fixed}");
    let flag = plan(p, &["--detector-image-size", "224"]);
    assert!(flag.contains("input side 224 px"), "{flag}");
    assert!(!p.join("run").exists(), "--dry-run wrote nothing");

    let small = tempfile::tempdir().unwrap();
    images(small.path(), 300, 200, 3);
    let t = plan(small.path(), &[]);
    assert!(t.contains("input side 448 px"), "small images: {t}");

    let base = [
        "--images",
        "images",
        "--out",
        "run",
        "--detector-random-weights",
    ];
    let with = |extra: &[&'static str]| [&base[..], extra, &["--dry-run"]].concat();
    fails(
        p,
        &with(&["--set", "detect.image_size=big"]),
        &["detect.image_size", "auto"],
    );
    fails(
        p,
        &with(&["--set", "detect.image_size=9999"]),
        &["detect.image_size", "32..=2048", "got 9999"],
    );
    std::fs::write(p.join("images/dent/1.png"), b"").unwrap();
    fails(p, &with(&[]), &["dent/1.png", "0 bytes"]);
}
