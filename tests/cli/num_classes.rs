//! Unknown number of defect types: a flat folder of images and maps (no type sub-folders),
//! `--num-classes auto` (estimated before training and stored in the checkpoint) and the k-means
//! baseline, on a small synthetic set with the tiny ViT.

use std::path::Path;
use std::process::Output;

use crate::common::{self, read_json as json, synth_with_base, tiny_config};

/// Without `-q`: some tests read the log (the K estimate's table).
fn run<S: AsRef<std::ffi::OsStr>>(dir: &Path, args: &[S]) -> Output {
    common::bin()
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run anomalyncd")
}

fn ok<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(dir: &Path, args: &[S]) -> String {
    let o = run(dir, args);
    common::assert_ok(&o, &format!("{args:?}"));
    common::text(&o)
}

/// Synthetic set (4 types × 4 images), its base crops, and flat copies of the defective images
/// and their maps named `<type>_<stem>.png`.
fn setup() -> tempfile::TempDir {
    let d = synth_with_base(4, &tiny_config(2, 1));
    let p = d.path();
    for (from, to) in [
        ("synth/test", "flat/images"),
        ("synth/anomaly_maps", "flat/maps"),
    ] {
        std::fs::create_dir_all(p.join(to)).unwrap();
        for t in std::fs::read_dir(p.join(from)).unwrap() {
            let t = t.unwrap().path();
            let ty = t.file_name().unwrap().to_string_lossy().into_owned();
            if ty == "good" {
                continue;
            }
            for f in std::fs::read_dir(&t).unwrap() {
                let f = f.unwrap().path();
                let name = format!("{ty}_{}", f.file_name().unwrap().to_string_lossy());
                std::fs::copy(&f, p.join(to).join(name)).unwrap();
            }
        }
    }
    d
}

/// `auto` up to 5 types, stopped after the first epoch.
const AUTO_ONE_EPOCH: [&str; 6] = [
    "--num-classes",
    "auto",
    "--max-classes",
    "5",
    "--stop-after",
    "1",
];

fn train_flat(runner: &str, extra: &[&str]) -> Vec<std::ffi::OsString> {
    common::train_args_on("flat", "flat/images", "flat/maps", runner, extra)
}

#[test]
fn flat_folders_train_test_and_predict_without_labels() {
    let d = setup();
    let p = d.path();
    // Without type folders the number of clusters must be given (or estimated).
    let o = run(p, &train_flat("r0", &["-q"]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--num-classes"), "{err}");

    let text = ok(p, &train_flat("r1", &["--num-classes", "3", "-q"]));
    assert!(text.contains("predictions in"), "{text}");
    let run_dir = p.join("out/r1/flat");
    let csv = std::fs::read_to_string(run_dir.join("predictions.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 16, "{csv}");
    // No labels: no scores anywhere, but the report is written.
    assert!(!p.join("out/r1/metrics.csv").exists());
    assert!(run_dir.join("report.html").is_file());
    assert!(!run_dir.join("report/confusion.png").exists());
    assert_eq!(
        json(&run_dir.join("checkpoint.json"))["num_novel_clusters"],
        3
    );

    let text = ok(
        p,
        &[
            "predict",
            "--checkpoint",
            "out/r1/flat",
            "--images",
            "flat/images",
            "--anomaly-maps",
            "flat/maps",
            "--out",
            "pred",
            "-q",
        ],
    );
    assert!(text.contains("16 images assigned to 3 clusters"), "{text}");
    let text = ok(
        p,
        &["test", "--checkpoint", "out/r1/flat", "--out", "t", "-q"],
    );
    assert!(text.contains("predictions written"), "{text}");
}

#[test]
fn auto_estimates_k_stores_it_and_resumes_with_it() {
    let d = setup();
    let p = d.path();
    let text = ok(p, &train_flat("auto", &AUTO_ONE_EPOCH));
    assert!(
        text.contains("--num-classes auto:") && text.contains("<- chosen"),
        "{text}"
    );
    let meta = json(&p.join("out/auto/flat/checkpoint.json"));
    let est = &meta["num_classes_estimate"];
    let k = est["chosen"].as_u64().unwrap();
    assert!((2..=5).contains(&k), "{est}");
    assert_eq!(meta["num_novel_clusters"].as_u64(), Some(k));
    let criterion = est["criterion"].as_str().unwrap();
    assert!(criterion.contains("averaged over k = sqrt n / 2"), "{est}");
    let scores = est["scores"].as_array().unwrap();
    assert_eq!(scores.len(), 4);
    assert!(scores.iter().all(|s| s["base_accuracy"].is_number()));
    // The resumed run keeps the estimate instead of redoing it.
    let text = ok(
        p,
        &train_flat(
            "auto",
            &["--num-classes", "auto", "--max-classes", "5", "--resume"],
        ),
    );
    assert!(!text.contains("<- chosen"), "{text}");
    let meta2 = json(&p.join("out/auto/flat/checkpoint.json"));
    assert_eq!(meta2["num_classes_estimate"], *est);
    assert_eq!(meta2["epoch"], 2);

    let o = run(
        p,
        &train_flat("bad", &["--num-classes", "auto", "--max-classes", "1"]),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--max-classes"));
    let bad = [
        "--num-classes",
        "auto",
        "--set",
        "training.k_criterion=median",
    ];
    let o = run(p, &train_flat("bad", &bad));
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("training.k_criterion=median") && err.contains("eigengap_scales"),
        "{err}"
    );
}

/// Under `soft` guidance (the map over the whole crop), `auto` reads K from the tokens guided
/// within the masks, as under `soft_masked`: the same estimate, from one extra pass.
#[test]
fn auto_under_soft_guidance_estimates_k_within_the_masks() {
    let d = setup();
    let p = d.path();
    let estimate = |name: &str, guidance: &str| {
        let set = format!("models.guidance={guidance}");
        let text = ok(
            p,
            &train_flat(name, &[&AUTO_ONE_EPOCH[..], &["--set", &set]].concat()),
        );
        let meta = json(&p.join(format!("out/{name}/flat/checkpoint.json")));
        (text, meta["num_classes_estimate"].clone())
    };
    let (masked_log, masked) = estimate("masked", "soft_masked");
    let (soft_log, soft) = estimate("soft", "soft");
    assert!(!masked_log.contains("within their masks"), "{masked_log}");
    assert!(soft_log.contains("within their masks"), "{soft_log}");
    assert!(masked["chosen"].is_u64(), "{masked}");
    assert_eq!(soft, masked);
}

#[test]
fn kmeans_baseline_scores_labelled_crops_and_clusters_flat_ones() {
    let d = setup();
    let p = d.path();
    let text = ok(
        p,
        &[
            "baseline",
            "--method",
            "kmeans",
            "--config",
            "tiny.yaml",
            "--anomaly-maps",
            "synth/anomaly_maps",
            "--images",
            "synth/test",
            "--out",
            "b1",
        ],
    );
    assert!(
        text.contains("k-means baseline, K = 4") && text.contains("F1"),
        "{text}"
    );
    let m = json(&p.join("b1/metrics.json"));
    let f1 = m["image_level"]["F1"].as_f64().unwrap();
    assert!((0.25..=1.0).contains(&f1), "{m}");
    assert!(p.join("b1/report.html").is_file() && p.join("b1/report/confusion.png").is_file());

    // Reusing the crops, with the number of clusters estimated against the base set.
    let text = ok(
        p,
        &[
            "baseline",
            "--config",
            "tiny.yaml",
            "--data",
            "b1/binarize",
            "--num-classes",
            "auto",
            "--max-classes",
            "4",
            "--base-data-path",
            "base",
            "--out",
            "b2",
        ],
    );
    let est = json(&p.join("b2/k_estimate.json"));
    let k = est["chosen"].as_u64().unwrap();
    assert!(text.contains(&format!("K = {k} estimated")), "{text}");

    // A flat folder needs a number of clusters.
    let flat = [
        "baseline",
        "--config",
        "tiny.yaml",
        "--anomaly-maps",
        "flat/maps",
        "--images",
        "flat/images",
        "--out",
    ];
    let o = run(p, &[&flat[..], &["b3"]].concat());
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--num-classes"));
    let text = ok(p, &[&flat[..], &["b4", "--num-classes", "2"]].concat());
    assert!(text.contains("16 images in 2 clusters"), "{text}");
    assert_eq!(json(&p.join("b4/metrics.json"))["labels_known"], false);
}

/// `baseline --method pooled`: the pretrained DINOv2 patch features pooled under each image's
/// map, clustered per image with no crops and no training. Needs
/// data/weights/dinov2_vits14.safetensors (scripts/prepare_weights.sh); skipped without it.
#[test]
fn pooled_baseline_groups_images_by_their_weighted_patch_features() {
    let w = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/weights/dinov2_vits14.safetensors");
    if !w.is_file() {
        eprintln!(
            "skipped: {} is absent (run scripts/prepare_weights.sh)",
            w.display()
        );
        return;
    }
    let d = setup();
    let p = d.path();
    let base = [
        "baseline",
        "--method",
        "pooled",
        "--anomaly-maps",
        "synth/anomaly_maps",
        "--images",
        "synth/test",
        "--backbone-weights",
        w.to_str().unwrap(),
    ];
    let mut args = base.to_vec();
    args.extend(["--out", "pooled"]);
    let text = ok(p, &args);
    assert!(
        text.contains("pooled features (Soft") && text.contains("K = 4"),
        "{text}"
    );
    let m = json(&p.join("pooled/metrics.json"));
    let f1 = m["image_level"]["F1"].as_f64().unwrap();
    assert!(f1 >= 0.5, "the synthetic types are far apart: {m}");
    let csv = std::fs::read_to_string(p.join("pooled/predictions.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 16, "{csv}");
    assert!(p.join("pooled/pooled_features.safetensors").is_file());
    // The same folder as the neighbours' features in training (`training.neighbor_features`).
    let nv = |runner: &str, dir: &str| {
        let set = format!("training.neighbor_features={dir}");
        let extra = ["--set", "training.neighbor_views=1", "--set", &set];
        run(p, &common::train_args(runner, &extra))
    };
    // (`./pooled`: the bare word `pooled` asks for the features to be computed in the run.)
    common::assert_ok(
        &nv("nf", "./pooled"),
        "neighbour views by the pooled folder",
    );
    let log = std::fs::read_to_string(p.join("out/nf/synth/log.txt")).unwrap();
    assert!(
        log.contains("(by their images' features in ./pooled)"),
        "{log}"
    );
    common::assert_ok(
        &nv("here", "pooled"),
        "neighbour views by features made here",
    );
    let log = std::fs::read_to_string(p.join("out/here/synth/log.txt")).unwrap();
    assert!(
        log.contains("pooled detector features of 16 images")
            && log.contains("(by their images' pooled detector features)"),
        "{log}"
    );
    // A folder without them: an input error naming the file and the command that makes it.
    let o = nv("nf_bad", "synth");
    assert_eq!(o.status.code(), Some(2));
    let text = common::text(&o);
    assert!(
        text.contains("pooled_features.safetensors") && text.contains("baseline --method pooled"),
        "{text}"
    );

    // The built-in detector writes the same features beside its maps, pooled under each map
    // while it scores, and training with `pooled` reads them there instead of another pass.
    let wt = w.to_str().unwrap();
    let det = [
        "detect",
        "--zero-shot",
        "--test",
        "synth/test",
        "--out",
        "det",
        "--weights",
        wt,
    ];
    ok(p, &det);
    let rows = |dir: &str, file: &str, list: &str| {
        let t = tch::Tensor::read_safetensors(p.join(dir).join(file)).unwrap();
        let (n, d) = (t[0].1.size()[0], t[0].1.size()[1]);
        let flat = Vec::<f32>::try_from(t[0].1.flatten(0, -1)).unwrap();
        let feats = ndarray::Array2::from_shape_vec((n as usize, d as usize), flat).unwrap();
        let csv = std::fs::read_to_string(p.join(dir).join(list)).unwrap();
        let keys = csv.lines().skip(1).map(|l| {
            let image = l.split(',').next().unwrap();
            image
                .trim_start_matches('/')
                .trim_end_matches(".png")
                .to_string()
        });
        keys.zip(feats.rows().into_iter().map(|r| r.to_vec()))
            .collect::<std::collections::HashMap<_, _>>()
    };
    let by_detector = rows("det", "pooled_features.safetensors", "pooled_features.csv");
    let report = json(&p.join("det/detect.json"));
    assert_eq!(report["pooled_features"], "pooled_features.safetensors");
    // Pooled at detect.pool_tau's default, which `baseline --method pooled` also takes.
    assert_eq!(report["pool_tau"], 0.5);
    let mut again = base.to_vec();
    again[4] = "det";
    again.extend(["--num-classes", "4", "--out", "pooled_det"]);
    ok(p, &again);
    let by_pass = rows(
        "pooled_det",
        "pooled_features.safetensors",
        "predictions.csv",
    );
    assert_eq!(by_pass.len(), 16);
    for (key, v) in &by_pass {
        let u = by_detector
            .get(key)
            .unwrap_or_else(|| panic!("{key}: {by_detector:?}"));
        // The pass weighs by the 8-bit maps, the detector by its float maps (same scale).
        let cos: f32 = u.iter().zip(v).map(|(a, b)| a * b).sum();
        assert!(cos > 0.995, "{key}: cosine {cos}");
    }
    // Trains on the detector's maps with neighbour views by pooled features; its log.
    let on_det_maps = |runner: &str, tau: &str| {
        let set = format!("detect.pool_tau={tau}");
        let extra = [
            "--set",
            "training.neighbor_views=1",
            "--set",
            "training.neighbor_features=pooled",
            "--set",
            "training.cache_frozen=false",
            "--set",
            &set,
        ];
        ok(
            p,
            &common::train_args_on("synth", "synth/test", "det", runner, &extra),
        );
        std::fs::read_to_string(p.join(format!("out/{runner}/synth/log.txt"))).unwrap()
    };
    let log = on_det_maps("det_nv", "0.5");
    assert!(
        log.contains("pooled features that the detector wrote in det")
            && !log.contains("pooled detector features of"),
        "{log}"
    );
    // K given, no cache, neighbours by pooled features: no backbone pass over the crops for
    // pretrained class tokens, so no training-free row.
    assert!(!log.contains("training-free:"), "{log}");
    // Features pooled at another temperature than the config's are not taken for its own.
    let log = on_det_maps("det_nv1", "1");
    assert!(
        log.contains("(pooled at a temperature of 0.5, detect.pool_tau is 1); computing them")
            && log.contains("pooled detector features of 16 images"),
        "{log}"
    );

    let mut top = base.to_vec();
    top.extend([
        "--pool-top",
        "0.1",
        "--num-classes",
        "auto",
        "--out",
        "pooled_top",
    ]);
    let text = ok(p, &top);
    assert!(text.contains("TopK"), "{text}");
    for (flag, value) in [("--pool-top", "2"), ("--pool-tau", "0")] {
        let mut bad = base.to_vec();
        bad.extend([flag, value, "--out", "bad"]);
        let o = run(p, &bad);
        assert_eq!(o.status.code(), Some(2), "{flag} {value}");
        assert!(common::text(&o).contains(flag));
    }
    let o = run(
        p,
        &[
            "baseline", "--method", "pooled", "--data", "x", "--out", "bad",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(common::text(&o).contains("--anomaly-maps"));
}

/// With the token bank, a given K under `soft` guidance makes no estimate beside it (`auto`
/// would read K from tokens guided within the masks, another backbone pass), while under
/// `soft_masked` it says what `auto` would choose. The training-free row is always on the
/// training's own guidance, also when `auto` estimated K under another one.
#[test]
fn the_pretrained_view_under_soft_guidance_with_the_bank() {
    let d = setup();
    let p = d.path();
    let log = |name: &str, guidance: &str, k: &str| {
        let set = format!("models.guidance={guidance}");
        let args = [
            "--num-classes",
            k,
            "--max-classes",
            "5",
            "--stop-after",
            "1",
            "--set",
            "training.cache_frozen=true",
            "--set",
            &set,
        ];
        ok(p, &common::train_args(name, &args))
    };
    let soft = log("given_soft", "soft", "4");
    assert!(soft.contains("not estimated beside it"), "{soft}");
    assert!(!soft.contains("would choose"), "{soft}");
    assert!(soft.contains("(soft guidance): NMI"), "{soft}");
    let masked = log("given_masked", "soft_masked", "4");
    assert!(
        masked.contains("--num-classes auto would choose"),
        "{masked}"
    );
    assert!(masked.contains("(soft_masked guidance): NMI"), "{masked}");
    let auto = log("auto_soft", "soft", "auto");
    assert!(auto.contains("within their masks"), "{auto}");
    assert!(auto.contains("(soft guidance): NMI"), "{auto}");
    assert!(soft.contains("training-free: k-means (K = 4)"), "{soft}");
    // Under `inference.assign: spectral` the training-free row groups the images as the trained
    // model's are grouped: spectral clustering of their pretrained features.
    let args = [
        "--num-classes",
        "4",
        "--stop-after",
        "1",
        "--set",
        "training.cache_frozen=true",
        "--set",
        "inference.assign=spectral",
    ];
    let spectral = ok(p, &common::train_args("given_spectral", &args));
    assert!(
        spectral.contains("training-free: spectral clustering of the images (K = 4)"),
        "{spectral}"
    );
}
