//! The CLI surface: --help for every command, --version, config check/show, exit codes, and the
//! synthetic dataset command.

use std::path::Path;
use std::process::Output;

use crate::common::{bin, text};

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("the binary runs")
}

fn assert_no_panic(o: &Output) {
    let t = text(o);
    assert!(
        !t.contains("panicked") && !t.contains("RUST_BACKTRACE"),
        "panic output: {t}"
    );
}

#[test]
fn every_subcommand_answers_help() {
    for sub in [
        "binarize",
        "prepare-base",
        "train",
        "test",
        "predict",
        "synth",
        "config",
        "maps-eval",
    ] {
        let o = run(&[sub, "--help"]);
        assert!(o.status.success(), "{sub} --help: {}", text(&o));
        assert!(text(&o).contains("Usage:"), "{sub}");
    }
    let o = run(&["--help"]);
    assert!(o.status.success());
}

#[test]
fn version_names_libtorch_and_cuda() {
    let o = run(&["--version"]);
    assert!(o.status.success());
    let t = text(&o);
    assert!(
        t.contains(env!("CARGO_PKG_VERSION"))
            && t.contains("libtorch 2.13")
            && t.contains("CUDA available"),
        "{t}"
    );
}

#[test]
fn config_check_accepts_reference_yaml_and_refuses_misspelt_key() {
    let root = env!("CARGO_MANIFEST_DIR");
    let o = run(&[
        "config",
        "check",
        &format!("{root}/tests/fixtures/AnomalyNCD.yaml"),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("pretrained_backbone: dino_vitb8"));
    let o = run(&[
        "config",
        "check",
        &format!("{root}/configs/anomalyncd.yaml"),
    ]);
    assert!(o.status.success(), "{}", text(&o));

    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("bad.yaml");
    let src = std::fs::read_to_string(format!("{root}/tests/fixtures/AnomalyNCD.yaml")).unwrap();
    std::fs::write(&bad, src.replace("memax_weight", "memax_wieght")).unwrap();
    let o = run(&["config", "check", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let t = text(&o);
    assert!(t.contains("memax_wieght") && t.contains("line 22"), "{t}");
    assert_no_panic(&o);
    assert_eq!(t.trim().lines().count(), 1, "one clear line: {t}");
}

#[test]
fn config_errors_exit_2() {
    let o = run(&["config", "check", "/nonexistent/x.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("/nonexistent/x.yaml"));
    let root = env!("CARGO_MANIFEST_DIR");
    let cfg = format!("{root}/configs/anomalyncd.yaml");
    let o = run(&["config", "check", &cfg, "--set", "training.lr=0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("training.lr"), "{}", text(&o));
    let o = run(&["config", "check", &cfg, "--set", "nodot=3"]);
    assert_eq!(o.status.code(), Some(2));
    let o = run(&["config", "show"]);
    assert!(o.status.success());
    assert!(text(&o).contains("warmup_teacher_temp_epochs: 40"));
}

#[test]
fn bad_device_is_a_usage_error() {
    let o = run(&["--device", "tpu", "config", "show"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("--device tpu"));
    if !tch::Cuda::is_available() {
        let o = run(&["--device", "cuda", "config", "show"]);
        assert_eq!(o.status.code(), Some(2));
        assert!(text(&o).contains("CUDA is not available"));
    }
}

#[test]
fn synth_writes_the_layout_and_refuses_foreign_folders() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("s");
    let args = [
        "synth",
        "--out",
        out.to_str().unwrap(),
        "--per-type",
        "2",
        "--normal",
        "1",
        "--per-base-class",
        "1",
        "--size",
        "64",
        "-q",
    ];
    let o = run(&args);
    assert!(o.status.success(), "{}", text(&o));
    for rel in [
        "train/good/000.png",
        "test/stain/001.png",
        "ground_truth/stain/001.png",
        "anomaly_maps/crack/000.png",
        "base/images/dent/000.png",
        "base/masks/speckle/000.png",
    ] {
        assert!(out.join(rel).is_file(), "{rel}");
    }
    // same run again is fine
    assert!(run(&args).status.success());

    let foreign = d.path().join("mine");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("keep.txt"), "user data").unwrap();
    let o = run(&["synth", "--out", foreign.to_str().unwrap(), "--size", "64"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("not created by anomalyncd"),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read_to_string(foreign.join("keep.txt")).unwrap(),
        "user data"
    );
    assert!(!Path::new(&foreign.join("train")).exists());
}
