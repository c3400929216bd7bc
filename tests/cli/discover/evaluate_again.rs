//! `discover --resume` after a change of `inference.*` alone: the trained checkpoint is
//! evaluated again, not retrained, and the checkpoint then holds the new settings, so `test`
//! follows; going back to the first settings gives the first answer again, byte for byte; the
//! answer split into another K (`inference.num_clusters`) is an evaluation too; a changed
//! training setting, or a missing checkpoint, trains anew.

use super::*;

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn a_changed_inference_setting_evaluates_the_checkpoint_again_without_training() {
    let d = setup();
    let p = d.path();
    let with = |extra: &[&'static str]| given_maps(&[&["--num-classes", "4"][..], extra].concat());
    let run = p.join("run");
    let train = run.join("train");
    ok(p, &with(&[]));
    let first = read(&train.join("predictions.csv"));
    let history = json(&train.join("checkpoint.json"))["history"].clone();
    assert_eq!(history.as_array().unwrap().len(), 2, "two epochs");
    let earlier = stage_times(&run, &["base", "binarize"]);

    // The plan says so before anything runs.
    let temperature = ["--set", "inference.merge_temperature=0.5"];
    let plan = ok(
        p,
        &with(&[&["--resume", "--dry-run"][..], &temperature].concat()),
    );
    assert!(
        plan.contains("[trained earlier: with --resume only the evaluation runs again"),
        "{plan}"
    );
    assert_eq!(
        plan.matches("[done: skipped with --resume]").count(),
        2,
        "{plan}"
    );

    // Resumed with another merge temperature: no epoch more, the new setting recorded.
    let t = ok(p, &with(&[&["--resume"][..], &temperature].concat()));
    assert!(t.contains("only the evaluation runs again"), "{t}");
    assert_eq!(stage_times(&run, &["base", "binarize"]), earlier);
    let meta = json(&train.join("checkpoint.json"));
    assert_eq!(meta["history"], history, "no training");
    assert_eq!(meta["merge_temperature"], 0.5);
    assert_eq!(meta["config"]["inference"]["merge_temperature"], 0.5);
    let summary = json(&run.join("discover.json"));
    let found = &summary["found"];
    assert_eq!(found["timing"]["train_s"], 0.0);
    assert_eq!(found["inference"]["merge_temperature"], 0.5);
    assert!(found["auto_k"].is_u64(), "the estimate beside K is kept");
    assert_eq!(
        found["cluster_sizes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>(),
        16
    );
    let stages = summary["stages"].as_array().unwrap();
    let skipped: Vec<bool> = stages.iter().map(|s| s["skipped"] == true).collect();
    assert_eq!(skipped, [true, true, false]);

    // `test` evaluates the checkpoint with what it now holds: the re-evaluated answer.
    let o = run_in(
        p,
        &["test", "--checkpoint", "run/train", "--out", "tested", "-q"],
    );
    common::assert_ok(&o, "test");
    assert_eq!(
        read(&p.join("tested/predictions.csv")),
        read(&train.join("predictions.csv"))
    );

    // The same settings again: nothing runs.
    let t = ok(p, &with(&[&["--resume"][..], &temperature].concat()));
    assert!(t.contains("stage 3/3: train: finished earlier"), "{t}");

    // Back to the defaults: the first answer, from the same checkpoint.
    let t = ok(p, &with(&["--resume"]));
    assert!(t.contains("only the evaluation runs again"), "{t}");
    assert_eq!(read(&train.join("predictions.csv")), first);
    assert_eq!(json(&train.join("checkpoint.json"))["history"], history);

    // The answer's graph joined by the pooled detector features (`discover`'s default without
    // a config): evaluated again, not retrained, with the images' features computed once from
    // the given maps.
    let graph = [
        "--set",
        "inference.assign=spectral",
        "--set",
        "inference.spectral_graph=trained_and_pooled",
    ];
    let t = ok(p, &with(&[&["--resume"][..], &graph].concat()));
    assert!(t.contains("only the evaluation runs again"), "{t}");
    assert_eq!(json(&train.join("checkpoint.json"))["history"], history);
    assert_eq!(
        t.matches("pooled detector features of 16 images").count(),
        1,
        "{t}"
    );
    assert!(
        t.contains("spectral clustering of the images' trained and pooled detector features"),
        "{t}"
    );
    let found = &json(&run.join("discover.json"))["found"];
    assert_eq!(found["inference"]["spectral_graph"], "trained_and_pooled");

    // The trained features centred and each graph summed over three neighbour counts
    // (`discover`'s default): evaluated again, and `test` reproduces the answer from the
    // checkpoint's stored centred features and their mean.
    let centred = [
        "--set",
        "inference.spectral_center=true",
        "--set",
        "inference.spectral_scales=[0.5, 1, 2]",
    ];
    let t = ok(p, &with(&[&["--resume"][..], &graph, &centred].concat()));
    assert!(t.contains("only the evaluation runs again"), "{t}");
    assert!(
        t.contains(
            "summed over [5, 10, 20] neighbours, the trained features centred on their mean"
        ),
        "{t}"
    );
    let found = &json(&run.join("discover.json"))["found"];
    assert_eq!(found["inference"]["spectral_center"], true);
    assert_eq!(
        found["inference"]["spectral_scales"],
        serde_json::json!([0.5, 1.0, 2.0])
    );
    let o = run_in(
        p,
        &[
            "test",
            "--checkpoint",
            "run/train",
            "--out",
            "centred",
            "-q",
        ],
    );
    common::assert_ok(&o, "test");
    assert_eq!(
        read(&p.join("centred/predictions.csv")),
        read(&train.join("predictions.csv"))
    );

    // The answer split into another number of clusters than the model's 4
    // (`inference.num_clusters`): evaluated again, not retrained; `test` follows.
    let three = ["--set", "inference.num_clusters=3"];
    let t = ok(
        p,
        &with(&[&["--resume"][..], &graph, &centred, &three].concat()),
    );
    assert!(t.contains("only the evaluation runs again"), "{t}");
    assert!(
        t.contains("3 clusters (inference.num_clusters: 3; the model was trained with 4)"),
        "{t}"
    );
    assert!(t.contains("K = 3 (inference.num_clusters)"), "{t}");
    assert_eq!(json(&train.join("checkpoint.json"))["history"], history);
    let found = &json(&run.join("discover.json"))["found"];
    assert_eq!(found["num_clusters"], 3);
    assert_eq!(found["inference"]["num_clusters"], 3);
    assert_eq!(found["cluster_sizes"].as_array().unwrap().len(), 3);
    let split = read(&train.join("predictions.csv"));
    let clusters: Vec<u64> = split
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(clusters.len(), 16);
    assert!(clusters.iter().all(|&c| c < 3), "{split}");
    let o = run_in(
        p,
        &["test", "--checkpoint", "run/train", "--out", "split", "-q"],
    );
    common::assert_ok(&o, "test");
    assert_eq!(read(&p.join("split/predictions.csv")), split);

    // `auto` reads the answer's K from the trained features, at most the model's 4 and with no
    // estimate under it (K was given): an evaluation too.
    let auto = ["--set", "inference.num_clusters=auto"];
    let t = ok(
        p,
        &with(&[&["--resume"][..], &graph, &centred, &auto].concat()),
    );
    assert!(t.contains("only the evaluation runs again"), "{t}");
    assert!(t.contains("read from the trained image features)"), "{t}");
    let found = &json(&run.join("discover.json"))["found"];
    let k = found["answer_k"]["chosen"].as_u64().unwrap();
    assert!((2..=4).contains(&k), "{found}");
    assert!(found["answer_k"]["before"].is_null(), "{found}");
    assert_eq!(found["num_clusters"], k);

    // A changed training setting still retrains.
    let t = ok(p, &with(&["--resume", "--set", "training.epochs=1"]));
    assert!(!t.contains("only the evaluation runs again"), "{t}");
    let meta = json(&train.join("checkpoint.json"));
    assert_eq!(meta["history"].as_array().unwrap().len(), 1);

    // Without its checkpoint a finished stage cannot be evaluated again: it trains anew.
    std::fs::remove_file(train.join("checkpoint.safetensors")).unwrap();
    let again = [
        &["--resume", "--set", "training.epochs=1"][..],
        &temperature,
    ]
    .concat();
    let t = ok(p, &with(&again));
    assert!(!t.contains("only the evaluation runs again"), "{t}");
    assert!(train.join("checkpoint.safetensors").is_file());
}

/// `inference.num_clusters: auto` under `--num-classes auto`: training has `--max-classes`
/// clusters, the answer's K is read from the trained features after it and is not below the
/// estimate made before it; `test` keeps that answer; without the setting the heads' K is the
/// estimate again, which trains anew.
#[test]
fn an_estimated_k_read_again_after_training_trains_max_classes_clusters() {
    let d = setup();
    let p = d.path();
    let auto = ["--num-classes", "auto", "--max-classes", "6"];
    let spectral = ["--set", "inference.assign=spectral"];
    let read_k = ["--set", "inference.num_clusters=auto"];
    let run = p.join("run");
    let train = run.join("train");
    let plan = ok(
        p,
        &given_maps(&[&auto[..], &spectral, &read_k, &["--dry-run"]].concat()),
    );
    assert!(
        plan.contains("estimate K (2..=6), train 6 clusters, read K again after training"),
        "{plan}"
    );
    let t = ok(p, &given_maps(&[&auto[..], &spectral, &read_k].concat()));
    assert!(
        t.contains("training with 6 novel clusters (--max-classes)"),
        "{t}"
    );
    let meta = json(&train.join("checkpoint.json"));
    assert_eq!(meta["num_novel_clusters"], 6);
    let before = meta["num_classes_estimate"]["chosen"].as_u64().unwrap();
    let a = &meta["answer_k"];
    let chosen = a["chosen"].as_u64().unwrap();
    assert_eq!(a["before"], before);
    assert_eq!(chosen, before.max(a["trained"].as_u64().unwrap()));
    assert_eq!(a["gaps"].as_array().unwrap().len(), 5, "K = 2..=6");
    let found = &json(&run.join("discover.json"))["found"];
    assert_eq!(found["num_clusters"], chosen);
    assert_eq!(found["answer_k"], *a);
    assert!(
        t.contains(&format!("K = {chosen} ("))
            && t.contains("read from the trained image features"),
        "{t}"
    );
    let answer = read(&train.join("predictions.csv"));
    let clusters: Vec<u64> = answer
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(clusters.len(), 16);
    assert!(clusters.iter().all(|&c| c < chosen), "{answer}");
    let o = run_in(
        p,
        &["test", "--checkpoint", "run/train", "--out", "again", "-q"],
    );
    common::assert_ok(&o, "test");
    assert_eq!(read(&p.join("again/predictions.csv")), answer);

    // The heads' K is the estimate again without the setting: the heads change, so it trains.
    let t = ok(
        p,
        &given_maps(&[&auto[..], &spectral, &["--resume"]].concat()),
    );
    assert!(!t.contains("only the evaluation runs again"), "{t}");
    let meta = json(&train.join("checkpoint.json"));
    assert_eq!(meta["num_novel_clusters"], before);
    assert!(meta.get("answer_k").is_none(), "{meta}");
}
