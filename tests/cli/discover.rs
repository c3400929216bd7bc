//! `discover` end to end on a tiny synthetic set with the tiny ViT (no weights needed): given
//! maps and the built-in detector (random weights), type folders and a flat folder, with and
//! without normal images; `--resume` after a stop in each stage redoes no finished stage, also
//! in a moved run folder; `--dry-run` writes nothing; bad inputs are exit-2 errors before any
//! work. Self-contained (std, tempfile, serde_json, the binary and `common`).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::SystemTime;

use crate::common;

mod evaluate_again;
mod image_size;
mod interrupt;
mod lock;
mod timing;

const TINY: &str = "models:\n  pretrained_backbone: vit_tiny\n  grad_from_block: 2\n  mask_layers: 2\n  image_size: 32\n  precision: fp32\ntraining:\n  batch_size: 8\n  num_workers: 2\n  epochs: 2\n  cache_frozen: true\n  cache_views: 2\nloss:\n  warmup_teacher_temp_epochs: 1\n  repeat_times: 1\n";

/// `anomalyncd ARGS` in `dir`, without `-q`: the tests read what `discover` prints.
fn run_in(dir: &Path, args: &[&str]) -> Output {
    common::bin()
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run anomalyncd")
}

/// `discover ARGS` in `dir`; must succeed. Returns stdout and stderr together.
fn ok(dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["discover"];
    all.extend_from_slice(args);
    let o = run_in(dir, &all);
    common::assert_ok(&o, &format!("{all:?}"));
    common::text(&o)
}

/// `discover ARGS` must fail with exit 2, one error line naming every culprit.
fn fails(dir: &Path, args: &[&str], culprits: &[&str]) {
    let mut all = vec!["discover"];
    all.extend_from_slice(args);
    let o = run_in(dir, &all);
    common::assert_fails(&o, 2, culprits, &format!("{all:?}"));
}

fn json(p: &Path) -> serde_json::Value {
    let t = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&t).unwrap()
}

fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn stage_times(run: &Path, stages: &[&str]) -> Vec<SystemTime> {
    stages
        .iter()
        .map(|s| mtime(&run.join(s).join("stage.json")))
        .collect()
}

/// A temporary folder with `synth/` (4 types x 4 images, 2 normal, 96 px), `tiny.yaml`, a
/// flat copy of the defective images (`flat/`) and a typed copy with normals in `good/`
/// (`withgood/`).
fn setup() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let o = run_in(
        p,
        &[
            "synth",
            "--out",
            "synth",
            "--per-type",
            "4",
            "--per-base-class",
            "3",
            "--normal",
            "3",
            "--size",
            "96",
            "-q",
        ],
    );
    assert!(o.status.success(), "synth: {}", common::text(&o));
    std::fs::write(p.join("tiny.yaml"), TINY).unwrap();
    for ty in std::fs::read_dir(p.join("synth/test")).unwrap() {
        let ty = ty.unwrap().path();
        let name = ty.file_name().unwrap().to_string_lossy().into_owned();
        for f in std::fs::read_dir(&ty).unwrap() {
            let f = f.unwrap().path();
            let file = f.file_name().unwrap().to_string_lossy().into_owned();
            copy(&f, &p.join("flat").join(format!("{name}_{file}")));
            copy(&f, &p.join("withgood").join(&name).join(&file));
        }
    }
    for f in std::fs::read_dir(p.join("synth/train/good")).unwrap() {
        let f = f.unwrap().path();
        copy(&f, &p.join("withgood/good").join(f.file_name().unwrap()));
    }
    d
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to).unwrap();
}

/// The built-in detector with random weights at a 64-pixel input, and the tiny config.
const DETECTOR: [&str; 5] = [
    "--detector-random-weights",
    "--detector-image-size",
    "64",
    "--config",
    "tiny.yaml",
];

/// `discover`'s arguments for the tiny run on the synthetic set's own maps into `run/`, then
/// `extra`.
fn given_maps<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "--images",
        "synth/test",
        "--anomaly-maps",
        "synth/anomaly_maps",
        "--out",
        "run",
        "--config",
        "tiny.yaml",
    ];
    v.extend_from_slice(extra);
    v
}

#[test]
fn typed_folders_with_given_maps_resume_after_a_stop_in_each_stage() {
    let d = setup();
    let p = d.path();
    let with = given_maps;
    let run = p.join("run");
    // Stop after the base set: nothing of the later stages exists.
    let t = ok(p, &with(&["--stop-after-stage", "base"]));
    assert!(t.contains("stopped in stage base"), "{t}");
    assert!(run.join("base/stage.json").is_file() && run.join("synth_base").is_dir());
    assert!(!run.join("binarize").exists() && !run.join("maps").exists());
    let base_time = mtime(&run.join("base/stage.json"));
    // Without --resume the earlier run is refused.
    fails(p, &with(&[]), &["--resume", "--overwrite"]);
    // Resume, stop after MEBin: the base set is not redone.
    let t = ok(p, &with(&["--resume", "--stop-after-stage", "binarize"]));
    assert!(t.contains("stage 1/3: base: finished earlier"), "{t}");
    assert_eq!(mtime(&run.join("base/stage.json")), base_time);
    let mebin = json(&run.join("binarize/mebin.json"));
    assert_eq!(mebin["records"].as_array().unwrap().len(), 16);
    // Resume, stop training after one epoch: a resumable checkpoint, the stage unfinished.
    let before = stage_times(&run, &["base", "binarize"]);
    let t = ok(p, &with(&["--resume", "--stop-after-epochs", "1"]));
    assert!(t.contains("stopped in stage train"), "{t}");
    assert_eq!(json(&run.join("train/stage.json"))["finished"], false);
    assert_eq!(json(&run.join("train/checkpoint.json"))["epoch"], 1);
    // Resume: training continues from its checkpoint; no other stage runs.
    let t = ok(p, &with(&["--resume"]));
    assert!(t.contains("continuing the training"), "{t}");
    assert_eq!(stage_times(&run, &["base", "binarize"]), before);
    let ck = json(&run.join("train/checkpoint.json"));
    assert_eq!(ck["history"].as_array().unwrap().len(), 2);
    // The last lines: report, K with its table, cluster sizes, metrics.
    let report = run.join("train/report.html");
    assert!(report.is_file());
    assert!(t.contains(&format!(
        "report: {}",
        Path::new("run/train/report.html").display()
    )));
    assert!(t.contains("<- chosen") && t.contains("(estimated)"), "{t}");
    // No re-split hint under the heads' answer (this config's): its K is the trained one.
    assert!(!t.contains("inference.num_clusters=N"), "{t}");
    let k: usize = line_after(&t, "K = ")
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let sizes: Vec<usize> = line_after(&t, "cluster sizes: ")
        .split(", ")
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(sizes.len(), k);
    assert_eq!(sizes.iter().sum::<usize>(), 16);
    assert!(t.contains("NMI ") && t.contains("F1 "), "{t}");
    let summary = json(&run.join("discover.json"));
    assert_eq!(summary["found"]["num_clusters"], k);
    assert!(
        summary["found"]["estimate"]["scores"]
            .as_array()
            .unwrap()
            .len()
            > 1
    );
    // Resumed again: every stage is done; the same answer.
    let all = stage_times(&run, &["base", "binarize", "train"]);
    let again = ok(p, &with(&["--resume"]));
    assert_eq!(stage_times(&run, &["base", "binarize", "train"]), all);
    assert_eq!(
        line_after(&again, "cluster sizes: "),
        line_after(&t, "cluster sizes: ")
    );
    assert!(
        again.contains("stage 3/3: train: finished earlier"),
        "{again}"
    );
    // A changed setting redoes only what depends on it.
    let t = ok(p, &with(&["--resume", "--num-classes", "3"]));
    assert!(t.contains("K = 3 (given)"), "{t}");
    assert_eq!(stage_times(&run, &["base", "binarize"]), before);
    assert_ne!(mtime(&run.join("train/stage.json")), all[2]);
    // --overwrite starts anew.
    ok(p, &with(&["--overwrite", "--stop-after-stage", "base"]));
    assert_ne!(mtime(&run.join("base/stage.json")), base_time);
}

fn line_after<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line `{prefix}…` in:\n{text}"))
}

#[test]
fn flat_folder_zero_shot_detector_with_a_base_set_resumes_after_the_maps() {
    let d = setup();
    let p = d.path();
    let mut args = vec![
        "--images",
        "flat",
        "--out",
        "flatrun",
        "--base",
        "synth/base",
        "--num-classes",
        "3",
    ];
    args.extend(DETECTOR);
    let plan = ok(p, &[&args[..], &["--dry-run"]].concat());
    assert!(
        plan.contains("zero-shot") && plan.contains("flat folder"),
        "{plan}"
    );
    assert!(!p.join("flatrun").exists(), "--dry-run wrote nothing");
    ok(p, &[&args[..], &["--stop-after-stage", "maps"]].concat());
    let run = p.join("flatrun");
    assert_eq!(json(&run.join("maps/detect.json"))["zero_shot"], true);
    assert!(
        !run.join("synth_base").exists(),
        "--base replaces the synthetic base set"
    );
    let before = stage_times(&run, &["base", "maps"]);
    // The dry run of a resume marks the finished stages.
    let plan = ok(p, &[&args[..], &["--dry-run", "--resume"]].concat());
    assert_eq!(
        plan.matches("[done: skipped with --resume]").count(),
        2,
        "{plan}"
    );
    let t = ok(p, &[&args[..], &["--resume"]].concat());
    assert_eq!(stage_times(&run, &["base", "maps"]), before);
    assert!(t.contains("K = 3 (given)"), "{t}");
    assert!(!t.contains("NMI"), "a flat folder has no labels:\n{t}");
    let sizes: usize = line_after(&t, "cluster sizes: ")
        .split(", ")
        .map(|s| s.parse::<usize>().unwrap())
        .sum();
    assert_eq!(sizes, 16);
    assert!(run.join("train/predictions.csv").is_file());
    // Moved elsewhere, the run folder resumes with every stage finished: its records name
    // its own folders relative to it.
    let plan_here = ok(p, &[&args[..], &["--dry-run", "--resume"]].concat());
    let done = plan_here.matches("[done: skipped with --resume]").count();
    assert_eq!(done, 4, "{plan_here}");
    std::fs::rename(&run, p.join("moved")).unwrap();
    let moved: Vec<&str> = args
        .iter()
        .map(|a| if *a == "flatrun" { "moved" } else { a })
        .collect();
    let plan_moved = ok(p, &[&moved[..], &["--dry-run", "--resume"]].concat());
    assert_eq!(
        plan_moved.matches("[done: skipped with --resume]").count(),
        done,
        "{plan_moved}"
    );
    let stages = ["base", "maps", "binarize", "train"];
    let before = stage_times(&p.join("moved"), &stages);
    let t = ok(p, &[&moved[..], &["--resume"]].concat());
    assert_eq!(stage_times(&p.join("moved"), &stages), before, "{t}");
    assert!(t.contains("K = 3 (given)"), "{t}");
}

#[test]
fn no_base_trains_on_the_novel_crops_alone_and_its_checkpoint_predicts() {
    let d = setup();
    let p = d.path();
    let args = [
        "--images",
        "synth/test",
        "--anomaly-maps",
        "synth/anomaly_maps",
        "--out",
        "nobase",
        "--no-base",
        "--config",
        "tiny.yaml",
    ];
    let plan = ok(p, &[&args[..], &["--dry-run"]].concat());
    assert!(
        plan.contains("--no-base") && !plan.contains("stage 1/3 base"),
        "{plan}"
    );
    let t = ok(p, &args);
    assert!(t.contains("NMI") && t.contains("report"), "{t}");
    let run = p.join("nobase");
    assert!(!run.join("base").exists() && !run.join("synth_base").exists());
    let log = std::fs::read_to_string(run.join("train/log.txt")).unwrap();
    assert!(log.contains("0 base crops in 0 classes"), "{log}");
    assert!(log.contains("without the supervised base terms"), "{log}");
    let meta = json(&run.join("train/checkpoint.json"));
    assert_eq!(
        meta["base_classes"].as_array().map(Vec::len),
        Some(0),
        "{meta}"
    );
    // The checkpoint of a run without base classes groups new images.
    let o = run_in(
        p,
        &[
            "predict",
            "--checkpoint",
            "nobase/train",
            "--images",
            "synth/test",
            "--anomaly-maps",
            "synth/anomaly_maps",
            "--out",
            "nobase_predict",
            "-q",
        ],
    );
    common::assert_ok(&o, "predict with a no-base checkpoint");
    let rows = std::fs::read_to_string(p.join("nobase_predict/predictions.csv")).unwrap();
    assert_eq!(rows.lines().count(), 17, "a header and 16 images: {rows}");
    // --no-base and --base exclude each other.
    let o = run_in(
        p,
        &[
            "discover",
            "--images",
            "synth/test",
            "--out",
            "x",
            "--no-base",
            "--base",
            "synth/base",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", common::text(&o));
}

#[test]
fn normal_images_fit_the_detector_and_held_out_ones_set_the_range() {
    let d = setup();
    let p = d.path();
    // good/ alone: the detector is fitted on it; its maps are not written (in the bank).
    let mut args = vec!["--images", "withgood", "--out", "good"];
    args.extend(DETECTOR);
    let t = ok(p, &args);
    assert!(t.contains("NMI"), "{t}");
    let detect = json(&p.join("good/maps/detect.json"));
    assert_eq!(detect["train_images"], 3);
    // 3 x 12 synthetic base images; 3 normal fitted and 19 scored; 16 maps; 16 clustered.
    timing::check(
        &p.join("good"),
        &t,
        &[("base", 36), ("maps", 22), ("binarize", 16), ("train", 16)],
    );
    assert!(!p.join("good/maps/good").exists());
    assert_eq!(json(&p.join("good/binarize/mebin.json"))["normal_maps"], 0);
    // --normal beside good/: fitted on --normal, good/ scored and in MEBin's range.
    let mut args = vec![
        "--images",
        "withgood",
        "--out",
        "normal",
        "--normal",
        "synth/train/good",
        "--stop-after-stage",
        "binarize",
    ];
    args.extend(DETECTOR);
    let t = ok(p, &args);
    assert!(t.contains("stopped in stage binarize"), "{t}");
    assert_eq!(json(&p.join("normal/maps/detect.json"))["train_images"], 3);
    assert_eq!(
        json(&p.join("normal/binarize/mebin.json"))["normal_maps"],
        3
    );
    let records = json(&p.join("normal/binarize/mebin.json"))["records"].clone();
    assert_eq!(
        records.as_array().unwrap().len(),
        16,
        "good/ is never cropped"
    );
}

#[test]
fn bad_inputs_are_exit_2_before_any_work() {
    let d = setup();
    let p = d.path();
    std::fs::create_dir_all(p.join("empty")).unwrap();
    std::fs::create_dir_all(p.join("nomasks/images/dent")).unwrap();
    copy(
        &p.join("synth/base/images/dent/000.png"),
        &p.join("nomasks/images/dent/000.png"),
    );
    let cfg = ["--config", "tiny.yaml"];
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["--images", "empty", "--out", "o"],
            vec!["empty", "no images"],
        ),
        (
            vec!["--images", "missing", "--out", "o"],
            vec!["missing", "--images"],
        ),
        (
            vec!["--images", "synth/test", "--out", "o", "--normal", "empty"],
            vec!["--normal", "empty"],
        ),
        (
            vec![
                "--images",
                "flat",
                "--out",
                "o",
                "--anomaly-maps",
                "synth/anomaly_maps",
            ],
            vec!["--anomaly-maps", "pair"],
        ),
        (
            vec!["--images", "synth/test", "--out", "synth/test/run"],
            vec!["--out", "inside --images"],
        ),
        (
            vec!["--images", "synth/test", "--out", "o", "--base", "nomasks"],
            vec!["--base", "masks"],
        ),
        (
            vec!["--images", "synth/test", "--out", "o", "--resume"],
            vec!["--resume"],
        ),
        (
            vec![
                "--images",
                "synth/test",
                "--out",
                "synth",
                "--anomaly-maps",
                "synth/anomaly_maps",
            ],
            vec!["--out", "synth"],
        ),
        (
            vec![
                "--images",
                "synth/test",
                "--out",
                "o",
                "--num-classes",
                "zero",
            ],
            vec!["--num-classes"],
        ),
    ];
    for (args, culprits) in cases {
        let all = [&args[..], &cfg[..]].concat();
        fails(p, &all, &culprits);
        assert!(!p.join("o").exists(), "{all:?} wrote its run folder");
    }
    let o = run_in(p, &["discover", "--help"]);
    assert!(o.status.success() && common::text(&o).contains("--resume"));
    // A folder the tool did not make is never written into.
    std::fs::create_dir_all(p.join("mine")).unwrap();
    std::fs::write(p.join("mine/notes.txt"), "user").unwrap();
    let args = [
        "--images",
        "synth/test",
        "--out",
        "mine",
        "--overwrite",
        "--config",
        "tiny.yaml",
    ];
    fails(p, &args, &["mine", "not created by anomalyncd"]);
    let left: Vec<PathBuf> = std::fs::read_dir(p.join("mine"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(left, vec![p.join("mine/notes.txt")]);
}
