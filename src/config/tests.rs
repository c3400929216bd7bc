use super::*;

const REFERENCE_YAML: &str = include_str!("../../tests/fixtures/AnomalyNCD.yaml");

#[test]
fn reference_file_loads_unchanged_with_the_same_values() {
    let cfg = Config::from_yaml_str(REFERENCE_YAML, "AnomalyNCD.yaml").unwrap();
    assert_eq!(cfg, Config::default());
}

#[test]
fn misspelt_key_names_key_and_line() {
    let text = REFERENCE_YAML.replace("sample_rate", "sampel_rate");
    let err = Config::from_yaml_str(&text, "x.yaml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("sampel_rate"), "{err}");
    assert!(err.contains("line 3"), "{err}");
}

#[test]
fn bad_values_are_refused_with_their_key() {
    for (from, to, key) in [
        ("sample_rate: 4", "sample_rate: 0", "sample_rate"),
        ("lr: 0.003", "lr: -1", "training.lr"),
        ("n_head: 4", "n_head: 0", "n_head"),
        ("mask_layers: 9", "mask_layers: 13", "mask_layers"),
        ("epochs: 50", "epochs: -5", "epochs"),
        ("epochs: 50", "epochs: many", "epochs"),
        ("n_head: 4", "n_head: 4294967296", "models.n_head"),
        ("epochs: 50", "epochs: 100000000000", "training.epochs"),
        (
            "num_workers: 8",
            "num_workers: 1000000",
            "training.num_workers",
        ),
    ] {
        let text = REFERENCE_YAML.replace(from, to);
        let err = Config::from_yaml_str(&text, "x.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{to}: {err}");
    }
}

#[test]
fn an_ill_typed_override_is_named() {
    for (ov, want) in [
        ("training.epochs=-1", "--set training.epochs=-1"),
        ("training.epochz=3", "--set training.epochz=3"),
        ("models.n_head=four", "--set models.n_head=four"),
    ] {
        let sets = ["training.lr=0.01".to_string(), ov.to_string()];
        let e = Config::load(None, &sets).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains(want), "{ov}: {e}");
    }
}

#[test]
fn overrides_win_and_are_checked() {
    let mut v: serde_yaml::Value = serde_yaml::from_str(REFERENCE_YAML).unwrap();
    apply_override(&mut v, "training.epochs=3").unwrap();
    apply_override(&mut v, "models.pretrained_backbone=dinov2_vits14").unwrap();
    let cfg: Config = serde_yaml::from_value(v).unwrap();
    assert_eq!(cfg.training.epochs, 3);
    assert_eq!(cfg.models.pretrained_backbone, "dinov2_vits14");
    let mut v2 = serde_yaml::Value::Null;
    assert!(apply_override(&mut v2, "epochs=3").is_err());
    assert!(apply_override(&mut v2, "training.epochs").is_err());
}

#[test]
fn partial_file_takes_defaults() {
    let cfg = Config::from_yaml_str("training:\n  epochs: 2\n", "p.yaml").unwrap();
    assert_eq!(cfg.training.epochs, 2);
    assert_eq!(cfg.training.batch_size, 32);
    assert_eq!(cfg.binarization, Binarization::default());
}

/// Every key of the config changes its fingerprint, but for the few that only set the speed,
/// the logging or a `train` command's folders. Each leaf of the YAML tree is set to another
/// value its type takes; a key whose type takes none of the candidates fails the test.
#[test]
fn the_fingerprint_keeps_every_key_but_speed_logging_and_folders() {
    let not_results = [
        "training.num_workers",
        "training.cache_ram_gb",
        "experiment.print_freq",
        "experiment.exp_root",
        "experiment.table_root",
        "experiment.exp_name",
    ];
    let base = Config::default();
    let tree = serde_yaml::to_value(&base).unwrap();
    let candidates: Vec<serde_yaml::Value> = [
        "7",
        "0.25",
        "true",
        "false",
        "x",
        "auto",
        "bf16",
        "soft",
        "spectral",
        "trained_and_pooled",
        "guided",
        "whole_image",
        "eigengap",
        "dinov2_vits14",
        "[3]",
    ]
    .iter()
    .map(|t| serde_yaml::from_str(t).unwrap())
    .collect();
    let mut seen = 0;
    for (section, keys) in tree.as_mapping().unwrap() {
        for key in keys.as_mapping().unwrap().keys() {
            let name = format!("{}.{}", section.as_str().unwrap(), key.as_str().unwrap());
            let changed = candidates.iter().find_map(|v| {
                let mut t = tree.clone();
                t[section][key] = v.clone();
                serde_yaml::from_value::<Config>(t)
                    .ok()
                    .filter(|c| *c != base)
            });
            let changed = changed.unwrap_or_else(|| panic!("{name}: no candidate value fits"));
            let moved = changed.fingerprint() != base.fingerprint();
            assert_eq!(moved, !not_results.contains(&name.as_str()), "{name}");
            seen += 1;
        }
    }
    assert!(seen > 40, "{seen} keys");
}

/// Every range check at once: one message per key, each naming it.
#[test]
fn every_section_checks_its_own_keys() {
    let mut c = Config::default();
    let b = &mut c.binarization;
    (b.sample_rate, b.min_interval_len, b.min_threshold) = (0, 0, Some(-1.0));
    (b.refine_eps, b.refine_radius, b.interval_position) = (0.0, Some(0), 1.5);
    b.crop_scale = 5.0;
    let m = &mut c.models;
    (m.guidance_lambda, m.mask_layers, m.grad_from_block) = (-1.0, 99, 99);
    (m.image_size, m.n_head, m.n_views) = (4097, 0, 3);
    let t = &mut c.training;
    (t.batch_size, t.epochs, t.num_workers, t.lr, t.gamma) = (1, 0, 5000, 0.0, 0.0);
    (t.momentum, t.weight_decay, t.cache_views) = (1.0, -1.0, 0);
    (t.neighbor_views, t.neighbor_count) = (1.5, 0);
    let l = &mut c.loss;
    (l.warmup_teacher_temp_epochs, l.sup_weight, l.memax_weight) = (MAX_EPOCHS + 1, 2.0, -1.0);
    (
        l.anomaly_thred,
        l.teacher_temp,
        l.warmup_teacher_temp,
        l.repeat_times,
    ) = (2.0, 0.0, 0.0, 0);
    (c.experiment.print_freq, c.experiment.exp_name) = (0, " ".into());
    c.inference.merge_temperature = Some(0.0);
    (c.inference.refine_steps, c.inference.spectral_neighbors) = (1, 1);
    c.inference.assign = crate::config::ImageAssign::Spectral;
    let d = &mut c.detect;
    (d.zero_shot_fraction, d.fuse_mutual, d.holdout, d.blur) = (0.0, 1.5, 0.6, f64::NAN);
    (d.fuse_cnn, d.image_size) = (CnnMix::Weight(-0.1), ImageSize::Fixed(16));
    d.aggregate_sizes = vec![1, 4, 1];
    d.pool_tau = 0.0;
    let got = c.validate().unwrap_err();
    let want = [
        "binarization.sample_rate must be in 1..=255 (got 0)",
        "binarization.min_interval_len must be at least 1",
        "binarization.min_threshold must be a finite number >= 0 (got -1)",
        "binarization.refine_eps must be a number > 0 (got 0)",
        "binarization.interval_position must be in 0..=1 (got 1.5); 1 is the reference's end of \
         the stable interval",
        "binarization.crop_scale must be in 0.25..=4 (got 5); 1 is the reference's crop",
        "binarization.refine_radius must be in 1..=256 (got 0)",
        "models.guidance_lambda must be in [0, 1000] (got -1)",
        "models.mask_layers (99) exceeds the depth of dino_vitb8 (12)",
        "models.grad_from_block (99) exceeds the depth of dino_vitb8 (12)",
        "models.image_size (4097) must be a positive multiple of the patch size of dino_vitb8 (8)",
        "models.n_head must be in 1..=64 (got 0)",
        "models.image_size must be at most 2048 (got 4097)",
        "models.n_views must be 2 (two augmented views per sample; got 3)",
        "training.batch_size must be at least 2 (got 1)",
        "training.epochs must be in 1..=100000 (got 0)",
        "loss.warmup_teacher_temp_epochs must be at most 100000 (got 100001)",
        "training.num_workers must be at most 1024 (got 5000)",
        "training.lr must be > 0 (got 0)",
        "training.gamma must be > 0 (got 0)",
        "training.momentum must be in [0, 1) (got 1)",
        "training.weight_decay must be >= 0 (got -1)",
        "training.neighbor_views must be in [0, 1] (got 1.5)",
        "training.neighbor_count must be in 1..=100 (got 0)",
        "training.cache_views must be in 1..=1024 (got 0)",
        "loss.sup_weight must be in [0, 1] (got 2)",
        "loss.memax_weight must be >= 0 (got -1)",
        "loss.anomaly_thred must be in [0, 1] (got 2)",
        "loss.teacher_temp must be > 0 (got 0)",
        "loss.warmup_teacher_temp must be > 0 (got 0)",
        "loss.repeat_times must be at least 1",
        "experiment.print_freq must be at least 1",
        "experiment.exp_name must not be empty",
        "inference.merge_temperature must be > 0 (got 0)",
        "inference.spectral_neighbors must be in 2..=100 (got 1)",
        "inference.refine_steps refines the heads' answer; set it to 0 with inference.assign: \
         spectral",
        "detect.fuse_mutual must be in [0, 1] (got 1.5)",
        "detect.fuse_cnn must be `auto` or in [0, 1] (got -0.1)",
        "detect.holdout must be in [0, 0.5] (got 0.6)",
        "detect.blur must be in [0, 32] (got NaN)",
        "detect.aggregate_sizes must hold distinct odd sides in 1..=15 (got [1, 4, 1]), e.g. \
         [1, 3, 5]",
        "detect.image_size must be `auto` or in 32..=2048 pixels (got 16)",
        "detect.pool_tau must be in (0, 100] (got 0)",
        "detect.zero_shot_fraction must be in (0, 1] (got 0)",
    ];
    // Each message whole (one holds a `; ` itself), and nothing else.
    for w in want {
        assert!(got.contains(w), "{w}: {got}");
    }
    assert_eq!(got.len(), want.join("; ").len(), "{got}");
    // An unknown backbone is named with the known ones.
    let mut c = Config::default();
    c.models.pretrained_backbone = "resnet".into();
    let e = c.validate().unwrap_err();
    assert!(
        e.starts_with("models.pretrained_backbone `resnet` is not known; use one of: "),
        "{e}"
    );
    assert!(Config::default().validate().is_ok());
}

/// The guidance's name in logs is the value the config file takes.
#[test]
fn guidance_names_are_the_config_values() {
    for g in [
        GuidanceMode::Hard,
        GuidanceMode::Soft,
        GuidanceMode::SoftMasked,
    ] {
        assert_eq!(serde_json::to_value(g).unwrap(), g.name(), "{g:?}");
    }
}

#[test]
fn neighbor_features_read_pooled_or_a_folder() {
    use crate::config::NeighbourFeatures;
    let read = |v: &str| {
        Config::load(
            None,
            &[
                format!("training.neighbor_features={v}"),
                "training.neighbor_views=0.5".into(),
            ],
        )
    };
    let c = read("pooled").unwrap();
    assert_eq!(
        c.training.neighbor_features,
        Some(NeighbourFeatures::Pooled)
    );
    let c = read("runs/pooled").unwrap();
    assert_eq!(
        c.training.neighbor_features,
        Some(NeighbourFeatures::Folder("runs/pooled".into()))
    );
    // A folder named `pooled` is written with its path; both keep their form when written back.
    let c = read("./pooled").unwrap();
    let text = serde_yaml::to_string(&c.training).unwrap();
    assert!(text.contains("neighbor_features: ./pooled"), "{text}");
    assert!(read("''").is_err());
}

#[test]
fn the_spectral_graph_reads_pooled_features_only_under_spectral() {
    use crate::config::{ImageAssign, SpectralGraph};
    let load = |set: &[&str]| {
        let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
        Config::load(None, &set)
    };
    let c = load(&[]).unwrap();
    assert_eq!(c.inference.spectral_graph, SpectralGraph::Trained);
    assert!(!c.inference.reads_pooled());
    let both = "inference.spectral_graph=trained_and_pooled";
    let c = load(&[both, "inference.assign=spectral"]).unwrap();
    assert_eq!(c.inference.spectral_graph, SpectralGraph::TrainedAndPooled);
    assert!(c.inference.reads_pooled());
    // The heads' answer reads no graph.
    let c = load(&[both]).unwrap();
    assert_eq!(c.inference.assign, ImageAssign::Heads);
    assert!(!c.inference.reads_pooled());
    let e = load(&["inference.spectral_graph=pooled"]).unwrap_err();
    assert!(e.to_string().contains("inference.spectral_graph"), "{e}");
    // The features as they are unless the key says to centre them (the reference's config).
    assert!(!load(&[]).unwrap().inference.spectral_center);
    assert!(
        load(&["inference.spectral_center=true"])
            .unwrap()
            .inference
            .spectral_center
    );
    let e = load(&["inference.spectral_center=2"]).unwrap_err();
    assert!(e.to_string().contains("inference.spectral_center"), "{e}");
    // The answer's K is the trained K unless the key gives another, under spectral only.
    assert_eq!(load(&[]).unwrap().inference.num_clusters, None);
    let spectral = "inference.assign=spectral";
    let four = load(&[spectral, "inference.num_clusters=4"]).unwrap();
    assert_eq!(four.inference.num_clusters, Some(ClusterCount::Fixed(4)));
    let auto = load(&[spectral, "inference.num_clusters=auto"]).unwrap();
    assert_eq!(auto.inference.num_clusters, Some(ClusterCount::Auto));
    let e = load(&[spectral, "inference.num_clusters=many"]).unwrap_err();
    assert!(
        e.to_string()
            .contains("a whole number of clusters or `auto`"),
        "{e}"
    );
    for bad in ["1", "101"] {
        let e = load(&[spectral, &format!("inference.num_clusters={bad}")]).unwrap_err();
        assert!(
            e.to_string()
                .contains("inference.num_clusters must be in 2..=100"),
            "{e}"
        );
    }
    for n in ["4", "auto"] {
        let e = load(&[&format!("inference.num_clusters={n}")]).unwrap_err();
        assert!(
            e.to_string().contains("needs inference.assign: spectral"),
            "{e}"
        );
    }
    // One graph per features unless the scales say more; each factor in range.
    assert_eq!(load(&[]).unwrap().inference.spectral_scales, [1.0]);
    let three = load(&["inference.spectral_scales=[0.5, 1, 2]"]).unwrap();
    assert_eq!(three.inference.spectral_scales, [0.5, 1.0, 2.0]);
    for bad in ["[]", "[0]", "[-1]", "[11]", "[1, 1, 1, 1, 1, 1, 1, 1, 1]"] {
        let e = load(&[&format!("inference.spectral_scales={bad}")]).unwrap_err();
        assert!(
            e.to_string()
                .contains("inference.spectral_scales must hold 1 to 8 factors"),
            "{bad}: {e}"
        );
    }
    // A features folder without neighbour views serves the answer's graph, and nothing else.
    let folder = "training.neighbor_features=runs/pooled";
    assert!(load(&[folder, both, "inference.assign=spectral"]).is_ok());
    let e = load(&[folder, both]).unwrap_err();
    assert!(
        e.to_string()
            .contains("training.neighbor_features is read only with training.neighbor_views > 0"),
        "{e}"
    );
}
