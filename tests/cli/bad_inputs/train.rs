//! `train`, `test` and `predict`: weights, devices, tiny sets, odd paths and checkpoints from
//! elsewhere, on the tiny `vit_tiny` backbone.

use std::path::{Path, PathBuf};

use crate::common::*;

/// A synthetic set (`synth/`), its base crops (`base/`) and the tiny config (`tiny.yaml`).
fn train_fixture() -> tempfile::TempDir {
    synth_with_base(3, &tiny_config(1, 1))
}

/// The tiny model's backbone as a .safetensors file (random init), with one NaN when `nan`.
fn tiny_backbone(path: &Path, nan: bool) {
    let mut cfg = anomalyncd::config::Config::default();
    cfg.models.pretrained_backbone = "vit_tiny".into();
    cfg.models.mask_layers = 2;
    cfg.models.grad_from_block = 2;
    cfg.models.image_size = 32;
    cfg.models.precision = anomalyncd::config::Precision::Fp32;
    let m = anomalyncd::model::Model::new(&cfg, 4, None, tch::Device::Cpu).unwrap();
    if nan {
        let w = &m.vs.variables()["backbone.blocks.1.mlp.fc1.weight"];
        tch::no_grad(|| {
            let _ = w.get(3).get(5).fill_(f64::NAN);
        });
    }
    m.vs.save(path).unwrap();
}

#[test]
fn train_bad_weights_device_and_config() {
    let d = train_fixture();
    let p = d.path();
    let inputs = [p.join("synth"), p.join("base"), p.join("weights")];
    std::fs::create_dir_all(p.join("weights")).unwrap();
    tiny_backbone(&p.join("weights/nan.safetensors"), true);
    std::fs::write(
        p.join("weights/text.safetensors"),
        b"{\"not\": \"weights\"}",
    )
    .unwrap();
    let g = Untouched::new(&inputs);

    let o = cli_in(
        p,
        &train_args("nan", &["--backbone-weights", "weights/nan.safetensors"]),
    );
    assert_fails(&o, 2, &["weights/nan.safetensors", "NaN"], "NaN backbone");
    assert!(!p.join("out/nan/synth/checkpoint.safetensors").exists());

    let o = cli_in(
        p,
        &train_args(
            "missing",
            &["--backbone-weights", "weights/none.safetensors"],
        ),
    );
    assert_fails(&o, 2, &["weights/none.safetensors"], "missing backbone");

    let o = cli_in(
        p,
        &train_args("text", &["--backbone-weights", "weights/text.safetensors"]),
    );
    assert_fails(&o, 2, &["weights/text.safetensors"], "text as weights");

    let o = cli_in(p, &train_args("cuda", &["--device", "cuda"]));
    if !tch::Cuda::is_available() {
        assert_fails(&o, 2, &["--device cuda"], "train on cuda");
    }
    let o = cli_in(
        p,
        &train_args("badset", &["--set", "training.batch_size=-8"]),
    );
    assert_fails(&o, 2, &["training.batch_size"], "negative batch size");
    let o = cli_in(p, &train_args("many", &["--num-classes", "100000000000"]));
    assert_fails(
        &o,
        2,
        &["--num-classes 100000000000"],
        "more clusters than crops",
    );
    let o = cli_in(
        p,
        &train_args("heads", &["--set", "models.n_head=4294967296"]),
    );
    assert_fails(&o, 2, &["models.n_head"], "absurd head count");
    let o = cli_in(
        p,
        &train_args("badkey", &["--set", "models.backbone=vit_tiny"]),
    );
    assert_fails(&o, 2, &["--set models.backbone"], "unknown key");
    g.check("train bad weights");
}

/// A batch larger than the whole set, a base class of a single crop, and data under non-UTF-8,
/// space-holding folders all train.
#[test]
fn train_tiny_sets_and_odd_paths_work() {
    use std::os::unix::ffi::OsStrExt;
    let d = train_fixture();
    let p = d.path();
    // one class of the base set keeps a single crop
    let classes: Vec<PathBuf> = std::fs::read_dir(p.join("base/images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let lonely = classes.iter().min().unwrap();
    let mut crops: Vec<PathBuf> = std::fs::read_dir(lonely)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    crops.sort();
    for c in &crops[1..] {
        std::fs::remove_file(c).unwrap();
    }
    // novel data under a folder that is not UTF-8 and holds a space
    let odd = p.join(std::ffi::OsStr::from_bytes(b"novel \xff data"));
    std::fs::create_dir_all(&odd).unwrap();
    for sub in ["test", "anomaly_maps"] {
        let o = std::process::Command::new("cp")
            .arg("-r")
            .arg(p.join("synth").join(sub))
            .arg(odd.join(sub))
            .status()
            .unwrap();
        assert!(o.success());
    }
    let g = Untouched::new(&[p.join("synth"), p.join("base"), odd.clone()]);
    let mut args = train_args("tiny", &["--set", "training.batch_size=512"]);
    let pos = |flag: &str| args.iter().position(|a| a == flag).unwrap() + 1;
    let (i, j) = (pos("--dataset-path"), pos("--anomaly-map-path"));
    args[i] = odd.join("test").into();
    args[j] = odd.join("anomaly_maps").into();
    let o = cli_in(p, &args);
    assert_ok(&o, "tiny set, huge batch, odd paths");
    g.check("tiny set");
    let meta = read_json(&p.join("out/tiny/synth/checkpoint.json"));
    assert_eq!(meta["history"].as_array().unwrap().len(), 1);
    assert!(meta["history"][0]["mean_loss"]
        .as_f64()
        .unwrap()
        .is_finite());
}

/// One trained checkpoint, then: a truncated copy, one relabelled as another architecture, one
/// relabelled with another class count, `--resume` with another class count, and predict/test
/// with bad folders.
#[test]
fn checkpoints_from_elsewhere_and_bad_predict_inputs() {
    let d = train_fixture();
    let p = d.path();
    assert_ok(&cli_in(p, &train_args("ok", &[])), "train");
    let ck = p.join("out/ok/synth/checkpoint.safetensors");
    let bad = p.join("bad");
    std::fs::create_dir_all(&bad).unwrap();

    let bytes = std::fs::read(&ck).unwrap();
    std::fs::write(bad.join("trunc.safetensors"), &bytes[..bytes.len() * 2 / 3]).unwrap();
    let edited = |name: &str, edit: &dyn Fn(&mut anomalyncd::checkpoint::CheckpointMeta)| {
        let mut c = anomalyncd::checkpoint::load(&ck).unwrap();
        edit(&mut c.meta);
        anomalyncd::checkpoint::save(&bad.join(name), &c).unwrap();
    };
    edited("arch.safetensors", &|m| {
        m.config.models.pretrained_backbone = "dino_vits16".into();
        m.backbone = "dino_vits16".into();
    });
    edited("classes.safetensors", &|m| m.num_novel_clusters += 2);
    edited("head.safetensors", &|m| m.chosen_head = 99);
    let g = Untouched::new(&[p.join("synth"), p.join("base"), bad.clone()]);
    let trained = std::fs::read(&ck).unwrap();
    for (file, says) in [
        ("trunc.safetensors", "truncated"),
        ("arch.safetensors", "another"),
        ("classes.safetensors", "class count"),
        ("head.safetensors", "inconsistent"),
    ] {
        let f = format!("bad/{file}");
        let o = cli_in(p, &["test", "--checkpoint", &f, "--out", "tested"]);
        assert_fails(&o, 2, &[&f, says], file);
        let o = cli_in(
            p,
            &[
                "predict",
                "--checkpoint",
                &f,
                "--images",
                "synth/test",
                "--anomaly-maps",
                "synth/anomaly_maps",
                "--out",
                "pred",
            ],
        );
        assert_fails(&o, 2, &[&f], file);
    }
    let o = cli_in(p, &["test", "--checkpoint", "bad", "--out", "tested"]);
    assert_fails(
        &o,
        2,
        &["bad/checkpoint.safetensors", "not found"],
        "folder without checkpoint",
    );
    g.check("bad checkpoints");

    // --resume with another class count
    let o = cli_in(p, &train_args("ok", &["--resume", "--num-classes", "7"]));
    assert_fails(
        &o,
        2,
        &["checkpoint.safetensors", "--resume"],
        "resume other classes",
    );
    // a finished run is not overwritten without --overwrite
    let o = cli_in(p, &train_args("ok", &[]));
    assert_fails(&o, 2, &["--overwrite"], "train over a run");
    g.check("resume");
    assert_eq!(
        std::fs::read(&ck).unwrap(),
        trained,
        "the checkpoint is untouched"
    );

    // predict: missing maps, output inside the images
    let ckf = "out/ok/synth/checkpoint.safetensors";
    let o = cli_in(
        p,
        &[
            "predict",
            "--checkpoint",
            ckf,
            "--images",
            "synth/test",
            "--anomaly-maps",
            "nowhere/maps",
            "--out",
            "pred1",
        ],
    );
    assert_fails(&o, 2, &["nowhere/maps"], "predict without maps");
    let o = cli_in(
        p,
        &[
            "predict",
            "--checkpoint",
            ckf,
            "--images",
            "synth/test",
            "--anomaly-maps",
            "synth/anomaly_maps",
            "--out",
            "synth/test/pred",
        ],
    );
    assert_fails(&o, 2, &["--out", "--images"], "predict out inside images");
    assert!(!p.join("synth/test/pred").exists());
    // test: a --data folder that is not a binarize output
    let o = cli_in(
        p,
        &[
            "test",
            "--checkpoint",
            ckf,
            "--data",
            "base",
            "--out",
            "tested2",
        ],
    );
    assert_fails(
        &o,
        2,
        &["base/crops/images"],
        "test --data of the wrong kind",
    );
    g.check("predict");
}
