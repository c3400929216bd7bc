//! `train`, `test` and `predict` end to end on a small synthetic set with the tiny ViT: the loss
//! falls, a checkpoint is written and loads, resuming after an early stop equals an uninterrupted
//! run, `test` reproduces the metrics of `train`, `predict` works on one new image, and bad
//! checkpoints are clear errors. Each of them writes a report (report.html and its pictures).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common;

fn run<S: AsRef<OsStr> + std::fmt::Debug>(dir: &Path, args: &[S]) -> Output {
    common::bin()
        .current_dir(dir)
        .args(args)
        .output()
        .expect("binary runs")
}

fn ok<S: AsRef<OsStr> + std::fmt::Debug>(dir: &Path, args: &[S]) -> String {
    let o = run(dir, args);
    common::assert_ok(&o, &format!("{args:?}"));
    common::text(&o)
}

/// A synthetic set (`synth/`), its base crops (`base/`) and the tiny config (`tiny.yaml`).
fn setup() -> tempfile::TempDir {
    common::synth_with_base(4, &common::tiny_config(3, 2))
}

/// [`common::train_args`], quiet.
fn train_args(runner: &str, extra: &[&str]) -> Vec<std::ffi::OsString> {
    let mut v = common::train_args(runner, extra);
    v.push("-q".into());
    v
}

/// The report of a run folder: the page names every cluster and every picture it shows decodes;
/// the confusion picture exists exactly when labels are known.
fn check_report(dir: &Path, clusters: usize, labelled: bool) {
    let html = std::fs::read_to_string(dir.join("report.html"))
        .unwrap_or_else(|e| panic!("{}/report.html: {e}", dir.display()));
    let csv = std::fs::read_to_string(dir.join("predictions.csv")).unwrap();
    let predicted: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap())
        .collect();
    for k in 0..clusters {
        assert!(html.contains(&format!("id=\"cluster-{k}\"")), "cluster {k}");
        let sheet = dir.join(format!("report/cluster_{k}.png"));
        let img = image::open(&sheet).unwrap_or_else(|e| panic!("{}: {e}", sheet.display()));
        // A cluster with images shows 128-pixel thumbnails; an empty one only its header.
        let size = predicted.iter().filter(|c| **c == k.to_string()).count();
        assert_eq!(
            img.height() > 128,
            size > 0,
            "{} ({size} images)",
            sheet.display()
        );
    }
    let conf = dir.join("report/confusion.png");
    assert_eq!(conf.is_file(), labelled, "{}", conf.display());
    if labelled {
        image::open(&conf).unwrap();
        assert!(html.contains("report/confusion.png") && html.contains("NMI"));
    }
}

fn json(p: PathBuf) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap()
}

#[test]
fn train_resume_test_predict() {
    let d = setup();
    let p = d.path();
    ok(p, &train_args("full", &[]));
    let run_dir = p.join("out/full/synth");
    let meta = json(run_dir.join("checkpoint.json"));
    let hist = meta["history"].as_array().unwrap();
    assert_eq!(hist.len(), 3);
    let loss = |i: usize| hist[i]["mean_loss"].as_f64().unwrap();
    assert!(
        loss(2) < loss(0),
        "loss did not fall: {} -> {}",
        loss(0),
        loss(2)
    );
    let metrics = json(run_dir.join("metrics.json"));
    let f1 = metrics["image_level"]["F1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&f1));
    let clusters = metrics["num_clusters"].as_u64().unwrap() as usize;
    check_report(&run_dir, clusters, true);
    let table = std::fs::read_to_string(p.join("out/full/metrics.csv")).unwrap();
    assert!(table.starts_with("category,NMI,ARI,F1\nsynth,"), "{table}");

    // An interrupted run resumed from its checkpoint ends exactly where the uninterrupted one did.
    let stopped = ok(p, &train_args("resumed", &["--stop-after", "1"]));
    assert!(stopped.contains("--resume"), "{stopped}");
    assert_eq!(
        json(p.join("out/resumed/synth/checkpoint.json"))["epoch"],
        1
    );
    ok(p, &train_args("resumed", &["--resume"]));
    let meta2 = json(p.join("out/resumed/synth/checkpoint.json"));
    assert_eq!(
        meta["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| &h["mean_loss"])
            .collect::<Vec<_>>(),
        meta2["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| &h["mean_loss"])
            .collect::<Vec<_>>()
    );
    assert_eq!(
        metrics["image_level"],
        json(p.join("out/resumed/synth/metrics.json"))["image_level"]
    );

    // A second run into the same folder must be asked for.
    let o = run(p, &train_args("full", &[]));
    assert_eq!(o.status.code(), Some(2));

    // `test` on the checkpoint reproduces the metrics written by `train`.
    ok(
        p,
        &[
            "test",
            "--checkpoint",
            "out/full/synth/checkpoint.safetensors",
            "--out",
            "tested",
            "-q",
        ],
    );
    let tested = json(p.join("tested/metrics.json"));
    assert_eq!(tested["image_level"]["F1"], metrics["image_level"]["F1"]);
    assert_eq!(tested["image_level"]["NMI"], metrics["image_level"]["NMI"]);
    assert!(p.join("tested/metrics.csv").is_file() && p.join("tested/predictions.csv").is_file());
    check_report(&p.join("tested"), clusters, true);

    // `predict` on one new image in flat folders.
    std::fs::create_dir_all(p.join("new/img")).unwrap();
    std::fs::create_dir_all(p.join("new/map")).unwrap();
    std::fs::copy(
        p.join("synth/test/hole/001.png"),
        p.join("new/img/part.png"),
    )
    .unwrap();
    std::fs::copy(
        p.join("synth/anomaly_maps/hole/001.png"),
        p.join("new/map/part.png"),
    )
    .unwrap();
    ok(
        p,
        &[
            "predict",
            "--checkpoint",
            "out/full/synth",
            "--images",
            "new/img",
            "--anomaly-maps",
            "new/map",
            "--out",
            "pred",
            "-q",
        ],
    );
    let csv = std::fs::read_to_string(p.join("pred/predictions.csv")).unwrap();
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(
        csv.lines().nth(1).unwrap().starts_with("part.png,"),
        "{csv}"
    );
    check_report(&p.join("pred"), clusters, false);
    // the cluster is named by the class it matched in training (the checkpoint keeps them)
    let names = json(run_dir.join("checkpoint.json"))["cluster_classes"].clone();
    assert_eq!(names.as_array().map(Vec::len), Some(clusters), "{names}");
    let row: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
    let cluster: usize = row[1].parse().unwrap();
    assert_eq!(row[4], names[cluster].as_str().unwrap(), "{csv}");
    let html = std::fs::read_to_string(p.join("pred/report.html")).unwrap();
    assert!(html.contains("matched class in training"), "{html}");

    // Bad checkpoints: truncated, missing, another tool's file.
    let ck = std::fs::read(run_dir.join("checkpoint.safetensors")).unwrap();
    std::fs::write(p.join("trunc.safetensors"), &ck[..ck.len() / 2]).unwrap();
    std::fs::write(p.join("text.safetensors"), b"hello").unwrap();
    for bad in [
        "trunc.safetensors",
        "text.safetensors",
        "missing.safetensors",
    ] {
        let o = run(p, &["test", "--checkpoint", bad, "--out", "bad"]);
        let text = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(2), "{bad}: {text}");
        assert!(
            text.contains(bad) && !text.contains("panicked"),
            "{bad}: {text}"
        );
    }
}

/// The `predicted_cluster` column of a predictions file, by image.
fn clusters_of(csv: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(csv).unwrap_or_else(|e| panic!("{}: {e}", csv.display()));
    let mut rows: Vec<(String, String)> = text
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].to_string(), f[1].to_string())
        })
        .collect();
    rows.sort();
    rows
}

#[test]
fn refined_image_clusters_are_stored_and_reproduced_by_test_and_predict() {
    let d = setup();
    let p = d.path();
    ok(
        p,
        &train_args("refined", &["--set", "inference.refine_steps=2"]),
    );
    let run_dir = p.join("out/refined/synth");
    let meta = json(run_dir.join("checkpoint.json"));
    let clusters = json(run_dir.join("metrics.json"))["num_clusters"]
        .as_u64()
        .unwrap() as usize;
    let centroids = meta["image_centroids"]
        .as_array()
        .expect("centroids stored");
    assert_eq!(centroids.len(), clusters, "{meta}");
    // The trained crop tokens are written beside the predictions, one row per crop.
    let tokens = std::fs::read(run_dir.join("class_tokens.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&tokens).unwrap();
    let crops = std::fs::read_to_string(run_dir.join("crop_predictions.csv"))
        .unwrap()
        .lines()
        .count()
        - 1;
    assert_eq!(st.tensor("class_tokens").unwrap().shape()[0], crops);
    // `test` assigns the images to the stored centroids: the same answer as training.
    ok(
        p,
        &[
            "test",
            "--checkpoint",
            "out/refined/synth",
            "--out",
            "tested",
            "-q",
        ],
    );
    assert_eq!(
        clusters_of(&p.join("tested/predictions.csv")),
        clusters_of(&run_dir.join("predictions.csv"))
    );
    // A config without refinement stores none (the reference's answer).
    ok(p, &train_args("plain", &[]));
    let plain = json(p.join("out/plain/synth/checkpoint.json"));
    assert!(plain.get("image_centroids").is_none(), "{plain}");
    // An out-of-range value is a config error naming the key.
    let o = run(
        p,
        &train_args("bad", &["--set", "inference.refine_steps=1000"]),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(common::text(&o).contains("inference.refine_steps"));
}

#[test]
fn spectral_image_clusters_are_stored_and_reproduced_by_test() {
    let d = setup();
    let p = d.path();
    ok(
        p,
        &train_args("spectral", &["--set", "inference.assign=spectral"]),
    );
    let run_dir = p.join("out/spectral/synth");
    let meta = json(run_dir.join("checkpoint.json"));
    assert_eq!(meta["config"]["inference"]["assign"], "spectral", "{meta}");
    assert!(meta.get("image_centroids").is_none(), "{meta}");
    // The checkpoint stores one feature and one cluster per training image.
    let images = clusters_of(&run_dir.join("predictions.csv"));
    let bytes = std::fs::read(run_dir.join("checkpoint.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let features = st.tensor("answer.image_features").unwrap();
    assert_eq!(features.shape()[0], images.len());
    assert_eq!(
        st.tensor("answer.image_clusters").unwrap().shape(),
        [images.len()]
    );
    // `test` gives each image its nearest stored image's cluster: the same answer as training.
    ok(
        p,
        &[
            "test",
            "--checkpoint",
            "out/spectral/synth",
            "--out",
            "tested",
            "-q",
        ],
    );
    assert_eq!(clusters_of(&p.join("tested/predictions.csv")), images);
    // Refining the heads' answer does not combine with it: a config error naming both keys.
    let o = run(
        p,
        &train_args(
            "both",
            &[
                "--set",
                "inference.assign=spectral",
                "--set",
                "inference.refine_steps=1",
            ],
        ),
    );
    assert_eq!(o.status.code(), Some(2));
    let text = common::text(&o);
    assert!(
        text.contains("inference.refine_steps") && text.contains("inference.assign"),
        "{text}"
    );
}

/// `training.neighbor_views`: a novel crop's second view is sometimes one of its nearest
/// neighbours' (by the pretrained class tokens); without the token cache the loader draws it.
/// `training.neighbor_features` without neighbour views is a config error.
#[test]
fn neighbour_views_train_and_their_features_need_them() {
    let d = setup();
    let p = d.path();
    let extra = [
        "--set",
        "training.neighbor_views=1",
        "--set",
        "training.neighbor_count=2",
    ];
    ok(p, &common::train_args("nv", &extra));
    let log = std::fs::read_to_string(p.join("out/nv/synth/log.txt")).unwrap();
    assert!(
        log.contains("neighbour views: 100 % of the novel samples")
            && log.contains("2 nearest crops' (by the pretrained class tokens)"),
        "{log}"
    );
    let meta = json(p.join("out/nv/synth/checkpoint.json"));
    assert_eq!(meta["config"]["training"]["neighbor_views"], 1.0, "{meta}");
    let o = run(
        p,
        &train_args("nf", &["--set", "training.neighbor_features=somewhere"]),
    );
    assert_eq!(o.status.code(), Some(2));
    let text = common::text(&o);
    assert!(
        text.contains("training.neighbor_features is read only with training.neighbor_views > 0"),
        "{text}"
    );
}

#[test]
fn train_bad_inputs_are_clear_errors() {
    let d = setup();
    let p = d.path();
    let o = run(
        p,
        &[
            "train",
            "--config",
            "tiny.yaml",
            "--dataset",
            "folder",
            "--dataset-path",
            "synth/test",
            "--anomaly-map-path",
            "synth/anomaly_maps",
            "--base-data-path",
            "nowhere",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nowhere"));
    let o = run(p, &train_args("x", &["--resume"]));
    assert_eq!(o.status.code(), Some(2));
    let o = run(p, &train_args("y", &["--num-classes", "zero"]));
    assert_eq!(o.status.code(), Some(2));
}

/// `training.cache_frozen`: training on the frozen-prefix bank lowers the loss, evaluates, and a
/// run resumed after epoch 1 (which rebuilds the same bank) ends as the uninterrupted one.
#[test]
fn cached_training_trains_and_resumes_exactly() {
    let d = setup();
    let p = d.path();
    let cached = [
        "--set",
        "training.cache_frozen=true",
        "--set",
        "training.cache_views=3",
    ];
    let mut with_binary = cached.to_vec();
    with_binary.extend(["--binary-data-path", "binmasks"]);
    ok(p, &train_args("cached", &with_binary));
    // The reference's --binary-data-path gets MEBin's masks as <category>/<type>/<stem>.png.
    assert!(p.join("binmasks/synth/hole/001.png").is_file());
    let meta = json(p.join("out/cached/synth/checkpoint.json"));
    let losses: Vec<f64> = meta["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["mean_loss"].as_f64().unwrap())
        .collect();
    assert_eq!(losses.len(), 3);
    assert!(losses[2] < losses[0], "loss did not fall: {losses:?}");
    let f1 = json(p.join("out/cached/synth/metrics.json"))["image_level"]["F1"]
        .as_f64()
        .unwrap();
    assert!((0.0..=1.0).contains(&f1));
    assert!(
        !p.join("out/cached/synth/.anomalyncd-frozen-cache.f16")
            .exists(),
        "no spill file is left behind"
    );

    let mut first = cached.to_vec();
    first.extend(["--stop-after", "1"]);
    ok(p, &train_args("cached_resumed", &first));
    let mut rest = cached.to_vec();
    rest.push("--resume");
    ok(p, &train_args("cached_resumed", &rest));
    let meta2 = json(p.join("out/cached_resumed/synth/checkpoint.json"));
    let losses2: Vec<f64> = meta2["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["mean_loss"].as_f64().unwrap())
        .collect();
    assert_eq!(losses, losses2);
}

/// The token cache kept in a shared `--cache-dir`: a second run with the same crops and settings
/// reads it instead of building it, and ends exactly as the first run and as a run that built
/// its own cache (`--no-token-cache`).
#[test]
fn a_shared_token_cache_is_reused_with_the_same_results() {
    let d = setup();
    let p = d.path();
    let cached = [
        "--set",
        "training.cache_frozen=true",
        "--set",
        "training.cache_views=3",
    ];
    let with = |dir: &'static str| {
        let mut v = cached.to_vec();
        v.extend(["--cache-dir", dir]);
        v
    };
    ok(p, &common::train_args("first", &with("shared")));
    ok(p, &common::train_args("second", &with("shared")));
    let mut own = cached.to_vec();
    own.push("--no-token-cache");
    ok(p, &common::train_args("own", &own));
    let log =
        |run: &str| std::fs::read_to_string(p.join(format!("out/{run}/synth/log.txt"))).unwrap();
    assert!(
        log("first").contains("token cache: built"),
        "{}",
        log("first")
    );
    assert!(
        log("second").contains("token cache: reused"),
        "{}",
        log("second")
    );
    assert!(log("own").contains("for this run only"), "{}", log("own"));
    let files: Vec<_> = std::fs::read_dir(p.join("shared"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(files.len(), 1, "one key, one file");
    assert!(!p.join("out/own/synth/token_cache").exists());
    let read = |run: &str, f: &str| std::fs::read(p.join(format!("out/{run}/synth/{f}"))).unwrap();
    for f in ["predictions.csv", "crop_predictions.csv", "metrics.json"] {
        assert_eq!(read("first", f), read("second", f), "{f}");
        assert_eq!(read("first", f), read("own", f), "{f}");
    }
}

/// Crash safety: a run stopped by Ctrl-C (SIGINT, after the current batch) or killed (SIGKILL)
/// after a checkpoint continues with `--resume` and ends exactly as an uninterrupted run.
#[test]
fn interrupted_and_killed_runs_resume_to_the_same_result() {
    let d = setup();
    let p = d.path();
    let epochs = ["--set", "training.epochs=8"];
    ok(p, &train_args("whole", &epochs));
    let history = |runner: &str| -> Vec<serde_json::Value> {
        json(p.join(format!("out/{runner}/synth/checkpoint.json")))["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["mean_loss"].clone())
            .collect()
    };
    let want = history("whole");
    for (runner, signal) in [("sigint", "INT"), ("sigkill", "KILL")] {
        let mut child = common::bin()
            .args(train_args(runner, &epochs))
            .current_dir(p)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let ck = p.join(format!("out/{runner}/synth/checkpoint.json"));
        let t0 = std::time::Instant::now();
        while !ck.is_file() && t0.elapsed().as_secs() < 300 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = std::process::Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status();
        let status = child.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        if status.success() {
            // It finished before the signal arrived: nothing to resume, same result anyway.
            assert_eq!(history(runner), want);
            continue;
        }
        assert!(!err.contains("panicked"), "{err}");
        if signal == "INT" {
            assert_eq!(status.code(), Some(130), "{err}");
            assert!(err.contains("--resume"), "{err}");
        }
        let done = history(runner).len();
        assert!(
            (1..8).contains(&done),
            "a complete checkpoint survives: {done}"
        );
        ok(p, &train_args(runner, &[epochs[0], epochs[1], "--resume"]));
        assert_eq!(history(runner), want, "{runner}");
    }
}
