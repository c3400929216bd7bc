//! Helpers the command tests share: running the binary, checking a failure's exit code and
//! message, hashing an input tree before and after a run, and tiny image fixtures.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use image::{GrayImage, Luma, Rgb, RgbImage};
use rand::{Rng, SeedableRng};

/// `../shared` (read-only real data and golden outputs), when present.
pub fn shared() -> Option<PathBuf> {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared"));
    p.is_dir().then_some(p)
}

/// The binary under test, with a fixed thread count (`ANOMALYNCD_THREADS`, the cores): the
/// tests compare runs bit for bit, and `--threads auto` would follow the load of the tests
/// running beside them. A test of the thread setting passes `--threads`, which wins. The
/// cache folder (the stored `precision: auto` decision) lies under the build folder, shared by
/// the tests and never the user's own.
pub fn bin() -> Command {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut c = Command::new(env!("CARGO_BIN_EXE_anomalyncd"));
    c.env("ANOMALYNCD_THREADS", cores.to_string());
    c.env(
        "ANOMALYNCD_CACHE_DIR",
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("machine-cache"),
    );
    c
}

/// `anomalyncd -q ARGS` in the current folder.
pub fn cli<S: AsRef<OsStr>>(args: &[S]) -> Output {
    bin().arg("-q").args(args).output().expect("run anomalyncd")
}

/// `anomalyncd -q ARGS` in `dir`.
pub fn cli_in<S: AsRef<OsStr>>(dir: &Path, args: &[S]) -> Output {
    bin()
        .current_dir(dir)
        .arg("-q")
        .args(args)
        .output()
        .expect("run anomalyncd")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// stdout and stderr together, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Asserts that nothing in the output reads like a crash: no panic, no "internal error", no
/// backtrace.
pub fn assert_no_crash(o: &Output, what: &str) {
    let t = text(o);
    for bad in [
        "panicked",
        "internal error",
        "stack backtrace",
        "RUST_BACKTRACE",
    ] {
        assert!(!t.contains(bad), "{what}: output holds `{bad}`:\n{t}");
    }
}

/// Asserts a clean success.
pub fn assert_ok(o: &Output, what: &str) {
    assert_no_crash(o, what);
    assert!(o.status.success(), "{what}: expected success:\n{}", text(o));
}

/// Asserts a clean failure: exit `code`, a stderr naming every string of `culprits` (a file, a
/// folder or a flag), no crash, and an error that fits on one line.
pub fn assert_fails(o: &Output, code: i32, culprits: &[&str], what: &str) {
    assert_no_crash(o, what);
    let e = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(code),
        "{what}: exit code; stderr:\n{e}"
    );
    for c in culprits {
        assert!(e.contains(c), "{what}: stderr does not name `{c}`:\n{e}");
    }
    let errors: Vec<&str> = e.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{what}: one error line expected:\n{e}");
}

/// Hash of every file under `root` (relative path -> hash of its bytes and permissions), so a
/// test can check that a run changed, added or removed nothing there.
pub fn hash_tree(root: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if meta.is_dir() {
                stack.push(p);
                out.insert(rel, 0);
            } else {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::fs::read(&p).unwrap_or_default().hash(&mut h);
                meta.permissions().readonly().hash(&mut h);
                out.insert(rel, h.finish());
            }
        }
    }
    out
}

/// Snapshots of input trees, checked unchanged after a run.
pub struct Untouched(Vec<(PathBuf, BTreeMap<PathBuf, u64>)>);

impl Untouched {
    pub fn new<P: AsRef<Path>>(roots: &[P]) -> Untouched {
        Untouched(
            roots
                .iter()
                .map(|r| (r.as_ref().to_path_buf(), hash_tree(r.as_ref())))
                .collect(),
        )
    }

    pub fn check(&self, what: &str) {
        for (root, before) in &self.0 {
            let after = hash_tree(root);
            assert!(
                &after == before,
                "{what}: the input tree {} changed",
                root.display()
            );
        }
    }
}

/// Saves any image, creating its folder.
pub fn save(img: impl Into<image::DynamicImage>, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.into().save(path).unwrap();
}

/// A `w`×`h` 8-bit anomaly map: a low background and a bright disc of `peak` centred at
/// (`cx`, `cy`) (fractions of the size).
pub fn blob_map(w: u32, h: u32, cx: f32, cy: f32, peak: u8) -> GrayImage {
    let (x0, y0) = (cx * w as f32, cy * h as f32);
    let r = (w.min(h) as f32 / 5.0).max(2.0);
    GrayImage::from_fn(w, h, |x, y| {
        let d2 = ((x as f32 - x0).powi(2) + (y as f32 - y0).powi(2)) / (r * r);
        Luma([(12.0 + (peak as f32 - 12.0) * (-d2).exp()).round() as u8])
    })
}

/// A `w`×`h` textured RGB image.
pub fn picture(w: u32, h: u32, seed: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let v = ((x * 7 + y * 13 + seed * 31) % 200) as u8 + 20;
        Rgb([v, v / 2 + 30, 255 - v])
    })
}

/// `root/maps/<type>/<stem>.png` (48×48) and `root/images/<type>/<stem>.png` (64×48) for each
/// type, `n` per type, with maps of different maxima so the threshold search has a range.
pub fn map_set(root: &Path, types: &[&str], n: usize) {
    for (ti, t) in types.iter().enumerate() {
        for i in 0..n {
            let k = ti * n + i;
            let peak = 120 + ((k * 37) % 130) as u8;
            let cx = 0.25 + 0.5 * ((k % 3) as f32 / 2.0);
            save(
                blob_map(48, 48, cx, 0.5, peak),
                &root.join("maps").join(t).join(format!("s{i}.png")),
            );
            save(
                picture(64, 48, k as u32),
                &root.join("images").join(t).join(format!("s{i}.png")),
            );
        }
    }
}

/// Writes a PNG with the `png` crate, for layouts the `image` crate cannot encode (1-bit,
/// palette).
pub fn write_raw_png(
    path: &Path,
    (w, h): (u32, u32),
    color: png::ColorType,
    depth: png::BitDepth,
    palette: Option<&[u8]>,
    data: &[u8],
) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(f), w, h);
    enc.set_color(color);
    enc.set_depth(depth);
    if let Some(p) = palette {
        enc.set_palette(p.to_vec());
    }
    enc.write_header().unwrap().write_image_data(data).unwrap();
}

/// `mebin.json` of a binarize output.
pub fn read_json(p: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

/// A tiny `vit_tiny` config for the training tests; `{epochs}` and `{warmup}` vary by test.
pub fn tiny_config(epochs: usize, warmup: usize) -> String {
    format!(
        "models:\n  pretrained_backbone: vit_tiny\n  grad_from_block: 2\n  mask_layers: 2\n  image_size: 32\n  precision: fp32\ntraining:\n  batch_size: 8\n  num_workers: 2\n  epochs: {epochs}\nloss:\n  warmup_teacher_temp_epochs: {warmup}\n  repeat_times: 1\nexperiment:\n  exp_root: out\n"
    )
}

/// A temporary folder holding a synthetic set (`synth/`, `per_type` images per defect type and
/// per base class, 96 px), its base crops (`base/`) and `config` as `tiny.yaml`.
pub fn synth_with_base(per_type: usize, config: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let n = per_type.to_string();
    let o = cli_in(
        p,
        &[
            "synth",
            "--out",
            "synth",
            "--per-type",
            &n,
            "--per-base-class",
            &n,
            "--normal",
            "1",
            "--size",
            "96",
            "-q",
        ],
    );
    assert_ok(&o, "synth");
    let o = cli_in(
        p,
        &[
            "prepare-base",
            "--images",
            "synth/base/images",
            "--masks",
            "synth/base/masks",
            "--out",
            "base",
            "-q",
        ],
    );
    assert_ok(&o, "prepare-base");
    std::fs::write(p.join("tiny.yaml"), config).unwrap();
    d
}

/// `train` on a folder dataset in a [`synth_with_base`] folder (`tiny.yaml`, base crops in
/// `base/`), category `category`, images and maps from the given folders, then `extra`.
pub fn train_args_on(
    category: &str,
    images: &str,
    maps: &str,
    runner: &str,
    extra: &[&str],
) -> Vec<OsString> {
    let fixed = [
        "train",
        "--config",
        "tiny.yaml",
        "--dataset",
        "folder",
        "--category",
        category,
        "--dataset-path",
        images,
        "--anomaly-map-path",
        maps,
        "--base-data-path",
        "base",
        "--runner-name",
        runner,
    ];
    fixed.iter().chain(extra).map(OsString::from).collect()
}

/// [`train_args_on`] the synthetic set (`synth/test`, `synth/anomaly_maps`, category `synth`).
pub fn train_args(runner: &str, extra: &[&str]) -> Vec<OsString> {
    train_args_on("synth", "synth/test", "synth/anomaly_maps", runner, extra)
}

/// Maps of the shapes that stress the sweep: noise, blobs, constant, a single pixel, blobs on the
/// border, all at the maximum, stripes.
pub fn make_map(
    kind: u8,
    w: usize,
    h: usize,
    seed: u64,
    depth: anomalyncd::mebin::BitDepth,
) -> anomalyncd::imageio::GrayMap {
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
    anomalyncd::imageio::GrayMap {
        width: w,
        height: h,
        depth,
        pixels: px
            .iter()
            .map(|v| v.round().clamp(0.0, top) as u16)
            .collect(),
    }
}

/// `anomalyncd COMMAND --flag ROOT/sub … --out OUT EXTRA…` (quiet): a command over sub-folders of
/// one fixture root, e.g. `("--images", "images")`.
pub fn cli_on_folders(
    command: &str,
    root: &Path,
    folders: &[(&str, &str)],
    out: &Path,
    extra: &[&str],
) -> Output {
    let mut args: Vec<OsString> = vec![command.into()];
    for (flag, sub) in folders {
        args.push(flag.into());
        args.push(root.join(sub).into());
    }
    args.push("--out".into());
    args.push(out.into());
    args.extend(extra.iter().map(OsString::from));
    cli(&args)
}
