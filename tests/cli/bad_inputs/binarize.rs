//! `binarize`: folders, pairing, damaged files, map formats and sizes, degenerate sets, output
//! folders and paths.

use std::path::{Path, PathBuf};

use image::{DynamicImage, GrayImage, ImageBuffer, Luma, Rgba, RgbaImage};

use super::{binarize, records, replace_maps, set};
use crate::common::*;

#[test]
fn binarize_empty_and_missing_folders() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("maps/a")).unwrap();
    std::fs::create_dir_all(d.path().join("images/a")).unwrap();
    let g = Untouched::new(&[d.path()]);
    let maps = d.path().join("maps");
    let o = binarize(d.path(), &d.path().join("out"), &[]);
    assert_fails(
        &o,
        2,
        &[maps.to_str().unwrap(), "no anomaly maps"],
        "empty maps folder",
    );
    g.check("empty maps folder");

    let o = cli(&[
        "binarize",
        "--anomaly-maps",
        "/nonexistent/maps",
        "--images",
        "/nonexistent/images",
        "--out",
        d.path().join("out2").to_str().unwrap(),
    ]);
    assert_fails(&o, 2, &["/nonexistent/maps"], "missing maps folder");

    // maps present, images folder missing
    map_set(d.path(), &["a"], 2);
    std::fs::remove_dir_all(d.path().join("images")).unwrap();
    let g = Untouched::new(&[d.path()]);
    let o = binarize(d.path(), &d.path().join("out3"), &[]);
    let images = d.path().join("images");
    assert_fails(&o, 2, &[images.to_str().unwrap()], "missing images folder");
    g.check("missing images folder");
}

#[test]
fn binarize_unpaired_maps_and_images() {
    let d = tempfile::tempdir().unwrap();
    map_set(d.path(), &["a"], 3);
    std::fs::rename(
        d.path().join("images/a/s1.png"),
        d.path().join("images/a/other.png"),
    )
    .unwrap();
    let g = Untouched::new(&[d.path().join("maps"), d.path().join("images")]);
    let o = binarize(d.path(), &d.path().join("out"), &[]);
    assert_fails(
        &o,
        2,
        &["a/s1.png", "a/other.png", "--skip-unpaired"],
        "unpaired",
    );
    g.check("unpaired");
}

#[test]
fn binarize_corrupt_truncated_zero_byte_and_text_files() {
    type Damage = fn(&Path);
    let cases: [(&str, &str, Damage, &str); 5] = [
        (
            "maps/a/s1.png",
            "corrupt map",
            |p| std::fs::write(p, b"\x89PNG\r\n\x1a\nnot really a png").unwrap(),
            "corrupt",
        ),
        (
            "images/a/s0.png",
            "truncated image",
            |p| {
                let b = std::fs::read(p).unwrap();
                std::fs::write(p, &b[..b.len() / 2]).unwrap()
            },
            "corrupt or truncated",
        ),
        (
            "maps/a/s0.png",
            "zero-byte map",
            |p| std::fs::write(p, b"").unwrap(),
            "0 bytes",
        ),
        (
            "images/a/s1.png",
            "zero-byte image",
            |p| std::fs::write(p, b"").unwrap(),
            "0 bytes",
        ),
        (
            "images/a/s2.png",
            "text file named .png",
            |p| std::fs::write(p, "these are my notes, not a picture\n").unwrap(),
            "not an image",
        ),
    ];
    for (file, what, damage, says) in cases {
        let d = tempfile::tempdir().unwrap();
        map_set(d.path(), &["a"], 3);
        damage(&d.path().join(file));
        let g = Untouched::new(&[d.path().join("maps"), d.path().join("images")]);
        let o = binarize(d.path(), &d.path().join("out"), &[]);
        assert_fails(&o, 2, &[file, says], what);
        g.check(what);
    }
}

/// A PNG header that claims a 60000×60000 16-bit RGBA map: refused by the decoder's allocation
/// limit with a message that says so, not "corrupt".
#[test]
fn binarize_a_map_claiming_a_huge_size_is_refused_as_too_large() {
    let (d, _) = set(&["a"], 2);
    let p = d.path().join("maps/a/s0.png");
    let mut enc = png::Encoder::new(std::fs::File::create(&p).unwrap(), 60_000, 60_000);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Sixteen);
    // Header and one empty IDAT chunk: the decoder must refuse before reading pixels.
    let mut w = enc.write_header().unwrap();
    w.write_chunk(png::chunk::IDAT, &[]).unwrap();
    drop(w);
    let g = Untouched::new(&[d.path().join("maps"), d.path().join("images")]);
    let o = binarize(d.path(), &d.path().join("out"), &[]);
    assert_fails(&o, 2, &["a/s0.png", "too large"], "huge header");
    g.check("huge header");
}

/// 16-bit, RGB, RGBA, palette and 1-bit maps all binarize (module doc of `imageio`): 16-bit keeps
/// its levels, colour maps go through OpenCV's luma, 1-bit expands to 0/255.
#[test]
fn binarize_maps_of_every_pixel_format_work_as_documented() {
    type Write = fn(&GrayImage, &Path);
    let formats: [(&str, Write, u64); 5] = [
        (
            "16-bit",
            |g, p| {
                let v: Vec<u16> = g.as_raw().iter().map(|&x| x as u16 * 257).collect();
                let img: ImageBuffer<Luma<u16>, _> =
                    ImageBuffer::from_raw(g.width(), g.height(), v).unwrap();
                DynamicImage::ImageLuma16(img).save(p).unwrap()
            },
            16,
        ),
        (
            "RGB",
            |g, p| {
                DynamicImage::ImageLuma8(g.clone())
                    .into_rgb8()
                    .save(p)
                    .unwrap()
            },
            8,
        ),
        (
            "RGBA",
            |g, p| {
                let rgba = RgbaImage::from_fn(g.width(), g.height(), |x, y| {
                    let v = g.get_pixel(x, y)[0];
                    Rgba([v, v, v, 128])
                });
                rgba.save(p).unwrap()
            },
            8,
        ),
        (
            "palette",
            |g, p| {
                // a gray palette of all 256 levels: index = level
                let pal: Vec<u8> = (0..=255u8).flat_map(|v| [v, v, v]).collect();
                write_raw_png(
                    p,
                    g.dimensions(),
                    png::ColorType::Indexed,
                    png::BitDepth::Eight,
                    Some(&pal),
                    g.as_raw(),
                )
            },
            8,
        ),
        (
            "1-bit",
            |g, p| {
                let (w, h) = g.dimensions();
                let stride = w.div_ceil(8) as usize;
                let mut data = vec![0u8; stride * h as usize];
                for (x, y, v) in g.enumerate_pixels() {
                    if v[0] > 100 {
                        data[y as usize * stride + x as usize / 8] |= 0x80 >> (x % 8);
                    }
                }
                write_raw_png(
                    p,
                    (w, h),
                    png::ColorType::Grayscale,
                    png::BitDepth::One,
                    None,
                    &data,
                )
            },
            8,
        ),
    ];
    // reference: the same maps as 8-bit gray
    let (d0, _) = set(&["a"], 3);
    let o = binarize(d0.path(), &d0.path().join("out"), &[]);
    assert_ok(&o, "8-bit gray");
    let want = records(&d0.path().join("out"));
    for (name, write, depth) in formats {
        let (d, _) = set(&["a"], 3);
        replace_maps(d.path(), 3, |i, p| {
            let g = image::open(d0.path().join(format!("maps/a/s{i}.png")))
                .unwrap()
                .to_luma8();
            write(&g, p)
        });
        let g = Untouched::new(&[d.path().join("maps"), d.path().join("images")]);
        let out = d.path().join("out");
        let o = binarize(d.path(), &out, &[]);
        assert_ok(&o, name);
        g.check(name);
        assert_eq!(
            read_json(&out.join("mebin.json"))["bit_depth"],
            depth,
            "{name}"
        );
        let got = records(&out);
        assert_eq!(got.len(), 3);
        if name != "1-bit" {
            // same levels (16-bit: scaled by 257, the range scales with them) -> same result
            for (a, b) in got.iter().zip(&want) {
                for f in ["est_anomaly_num", "crop_boxes", "binary_foreground_pixels"] {
                    assert_eq!(a[f], b[f], "{name} {f}");
                }
            }
        } else {
            // 0/255 maps: one level above zero, every map has the same maximum -> no search
            for r in &got {
                assert_eq!(r["est_anomaly_num"], 0, "{name}");
            }
        }
    }
}

#[test]
fn binarize_maps_larger_and_smaller_than_their_images() {
    for (map_side, img, what) in [
        (48u32, (20u32, 16u32), "map larger"),
        (16, (160, 120), "map smaller"),
    ] {
        let (d, _) = set(&["a"], 3);
        replace_maps(d.path(), 3, |i, p| {
            save(
                blob_map(
                    map_side,
                    map_side,
                    0.3 + 0.2 * i as f32,
                    0.5,
                    150 + 40 * i as u8,
                ),
                p,
            )
        });
        for i in 0..3 {
            save(
                picture(img.0, img.1, i),
                &d.path().join(format!("images/a/s{i}.png")),
            );
        }
        let g = Untouched::new(&[d.path().join("maps"), d.path().join("images")]);
        let out = d.path().join("out");
        let o = binarize(d.path(), &out, &[]);
        assert_ok(&o, what);
        g.check(what);
        for r in records(&out) {
            assert_eq!(r["image_size"], serde_json::json!([img.0, img.1]), "{what}");
            assert_eq!(
                r["map_size"],
                serde_json::json!([map_side, map_side]),
                "{what}"
            );
        }
        let b = image::open(out.join("binary/a/s2.png")).unwrap();
        assert_eq!((b.width(), b.height()), img, "{what}: mask at image size");
    }
}

/// Constant maps, all-zero maps and maps that all peak at the same level: the threshold search
/// range is empty, so every map means "no anomaly" (whole-image crop, score 0) with a warning
/// naming --min-threshold; never a NaN.
#[test]
fn binarize_constant_zero_and_same_maximum_maps() {
    type Make = fn(usize) -> GrayImage;
    let cases: [(&str, Make); 3] = [
        ("constant", |_| GrayImage::from_pixel(48, 48, Luma([77]))),
        ("all-zero", |_| GrayImage::new(48, 48)),
        ("same maximum", |i| {
            blob_map(48, 48, 0.2 + 0.3 * i as f32, 0.5, 255)
        }),
    ];
    for (what, make) in cases {
        let (d, _) = set(&["a"], 3);
        replace_maps(d.path(), 3, |i, p| save(make(i), p));
        let g = Untouched::new(&[d.path().join("maps"), d.path().join("images")]);
        let out = d.path().join("out");
        // without -q, so the warning is shown
        let o = crate::common::bin()
            .args(["binarize", "--anomaly-maps"])
            .arg(d.path().join("maps"))
            .arg("--images")
            .arg(d.path().join("images"))
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert_ok(&o, what);
        g.check(what);
        assert!(
            stderr(&o).contains("--min-threshold"),
            "{what}: {}",
            stderr(&o)
        );
        for r in records(&out) {
            assert_eq!(r["est_anomaly_num"], 0, "{what}");
            let whole = serde_json::json!([[0.0, 0.0, 64.0, 48.0]]);
            // a flat map has no peak: the whole image; a blob is still cropped around its peak
            if what == "same maximum" {
                assert_eq!(r["peak_fallback"], true, "{what}");
                assert_ne!(r["crop_boxes"], whole, "{what}");
            } else {
                assert_eq!(r["crop_boxes"], whole, "{what}");
            }
            assert_eq!(r["crop_scores"], serde_json::json!([0.0]), "{what}");
        }
        let text = std::fs::read_to_string(out.join("scores.json")).unwrap();
        assert!(
            !text.contains("NaN") && !text.contains("null"),
            "{what}: {text}"
        );
    }
}

#[test]
fn binarize_output_folder_inside_an_input_is_refused() {
    let (d, g) = set(&["a"], 2);
    let inside = d.path().join("images/out");
    let o = binarize(d.path(), &inside, &[]);
    assert_fails(&o, 2, &["--out", "--images"], "out inside images");
    assert!(!inside.exists());
    g.check("out inside images");
    // and an output folder that contains an input
    let o = binarize(d.path(), d.path(), &[]);
    assert_fails(
        &o,
        2,
        &["--out", "must not be inside"],
        "out containing the inputs",
    );
    g.check("out containing the inputs");
}

/// A folder that cannot be written: a run-time failure (exit 1) naming the folder. Root may write
/// into a 0o555 folder, so there a folder that nobody can create (under /sys) stands in.
#[test]
fn binarize_read_only_output_folder() {
    use std::os::unix::fs::PermissionsExt;
    let (d, g) = set(&["a"], 2);
    let ro = d.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let out = if std::fs::write(ro.join("probe"), b"x").is_ok() {
        std::fs::remove_file(ro.join("probe")).unwrap();
        if !Path::new("/sys/kernel").is_dir() {
            eprintln!("skipping the read-only case: running as root without /sys");
            return;
        }
        PathBuf::from("/sys/anomalyncd-read-only-test")
    } else {
        ro.clone()
    };
    let o = binarize(d.path(), &out, &[]);
    assert_fails(&o, 1, &[out.to_str().unwrap()], "read-only out");
    g.check("read-only out");
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn binarize_output_folder_of_another_run_needs_overwrite() {
    let (d, g) = set(&["a"], 3);
    let out = d.path().join("out");
    assert_ok(&binarize(d.path(), &out, &[]), "first run");
    let o = binarize(d.path(), &out, &["--set", "binarization.sample_rate=2"]);
    assert_fails(&o, 2, &["--out", "--overwrite"], "another run");
    let o = binarize(
        d.path(),
        &out,
        &["--set", "binarization.sample_rate=2", "--overwrite"],
    );
    assert_ok(&o, "--overwrite");
    assert_eq!(read_json(&out.join("mebin.json"))["sample_rate"], 2);
    // a folder the tool did not make is refused even with --overwrite
    let mine = d.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), b"keep me").unwrap();
    let o = binarize(d.path(), &mine, &["--overwrite"]);
    assert_fails(
        &o,
        2,
        &["--out", "not created by anomalyncd"],
        "foreign folder",
    );
    assert_eq!(std::fs::read(mine.join("notes.txt")).unwrap(), b"keep me");
    g.check("another run");
}

/// Folders whose names are not UTF-8 or hold spaces work, for inputs and output alike.
#[test]
fn binarize_non_utf8_and_space_holding_paths_work() {
    use std::os::unix::ffi::OsStrExt;
    let d = tempfile::tempdir().unwrap();
    let odd = d
        .path()
        .join(std::ffi::OsStr::from_bytes(b"in \xff\xfe put"));
    map_set(&odd, &["type a"], 3);
    let g = Untouched::new(&[&odd]);
    let out = d
        .path()
        .join(std::ffi::OsStr::from_bytes(b"out \xe9 folder"));
    let o = binarize(&odd, &out, &[]);
    assert_ok(&o, "non-UTF-8 paths");
    g.check("non-UTF-8 paths");
    assert_eq!(records(&out).len(), 3);
    assert!(out.join("crops/images/type a").is_dir());
    // a second run into the same folder is recognised as the same run
    assert_ok(&binarize(&odd, &out, &[]), "rerun with non-UTF-8 paths");
}

/// A file name that is not UTF-8 cannot become an output name or a JSON key: a clear error
/// that names the file and says to rename it.
#[test]
fn binarize_a_non_utf8_file_name_is_refused_by_name() {
    use std::os::unix::ffi::OsStrExt;
    let (d, _) = set(&["a"], 2);
    std::fs::rename(
        d.path().join("maps/a/s1.png"),
        d.path()
            .join("maps/a")
            .join(std::ffi::OsStr::from_bytes(b"s\xff1.png")),
    )
    .unwrap();
    let g = Untouched::new(&[d.path().join("maps"), d.path().join("images")]);
    let o = binarize(d.path(), &d.path().join("out"), &[]);
    assert_fails(&o, 2, &["not valid UTF-8", "rename"], "non-UTF-8 file name");
    g.check("non-UTF-8 file name");
}

/// Float maps that cannot be used: NaN, Inf, 3-D, empty, a truncated `.npy` header, a float map
/// in a set of 8-bit ones, and a TIFF of 32-bit integers (a pixel type no reader handles). Each
/// is a clear error naming the file (exit 2), and nothing but the output marker is written.
#[test]
fn binarize_bad_float_maps_are_refused_by_name() {
    use anomalyncd::imageio::npy::encode_f32;
    type Make = fn(&Path);
    let cases: [(&str, &str, Make, &str); 7] = [
        (
            "maps/a/s0.npy",
            "NaN in a .npy map",
            |p| {
                let mut v: Vec<f32> = (0..48 * 48).map(|i| i as f32).collect();
                v[100] = f32::NAN;
                std::fs::write(p, encode_f32(&[48, 48], &v, false)).unwrap()
            },
            "NaN or infinite",
        ),
        (
            "maps/a/s0.npy",
            "Inf in a .npy map",
            |p| {
                let mut v: Vec<f32> = (0..48 * 48).map(|i| i as f32).collect();
                v[7] = f32::INFINITY;
                std::fs::write(p, encode_f32(&[48, 48], &v, false)).unwrap()
            },
            "row 0, column 7",
        ),
        (
            "maps/a/s0.npy",
            "3-D .npy map",
            |p| std::fs::write(p, encode_f32(&[2, 48, 48], &[0.5; 2 * 48 * 48], false)).unwrap(),
            "must be 2-D",
        ),
        (
            "maps/a/s0.npy",
            "empty .npy map",
            |p| std::fs::write(p, encode_f32(&[0, 48], &[], false)).unwrap(),
            "empty array",
        ),
        (
            "maps/a/s0.npy",
            "truncated .npy header",
            |p| std::fs::write(p, &encode_f32(&[48, 48], &[0.5; 48 * 48], false)[..40]).unwrap(),
            "truncated .npy header",
        ),
        (
            "maps/a/s1.npy",
            "a float map among 8-bit maps",
            |p| std::fs::write(p, encode_f32(&[48, 48], &[0.5; 48 * 48], false)).unwrap(),
            "all float maps",
        ),
        (
            "maps/a/s0.tif",
            "32-bit integer TIFF",
            |p| {
                let f = std::fs::File::create(p).unwrap();
                let mut enc = tiff::encoder::TiffEncoder::new(f).unwrap();
                let v: Vec<u32> = (0..48 * 48).collect();
                enc.write_image::<tiff::encoder::colortype::Gray32>(48, 48, &v)
                    .unwrap()
            },
            "unsupported pixel type",
        ),
    ];
    for (file, what, make, says) in cases {
        let d = tempfile::tempdir().unwrap();
        map_set(d.path(), &["a"], 3);
        let stem = Path::new(file).file_stem().unwrap().to_str().unwrap();
        std::fs::remove_file(d.path().join(format!("maps/a/{stem}.png"))).unwrap();
        make(&d.path().join(file));
        let g = Untouched::new(&[d.path().join("maps"), d.path().join("images")]);
        let out = d.path().join("out");
        let o = binarize(d.path(), &out, &[]);
        assert_fails(&o, 2, &[file, says], what);
        g.check(what);
        let written: Vec<_> = std::fs::read_dir(&out)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            written.iter().all(|n| n == anomalyncd::fsutil::MARKER),
            "{what}: wrote {written:?}"
        );
    }
}
