//! The stage plan for every combination of flags, from counts alone (no model, no files).

use std::path::PathBuf;

use super::*;
use crate::config::{CnnMix, Config, NeighbourFeatures};
use crate::detect::pooled::DETECT_FEATURES_FILE;
use crate::pipeline::discover::{DetectorSettings, DiscoverSpec};

/// A spec for these flags (also the stage records' tests').
pub(in crate::pipeline::discover) fn spec(normal: bool, maps: bool, base: bool) -> DiscoverSpec {
    DiscoverSpec {
        config: Config::default(),
        images: "/data/images".into(),
        out: "/runs/r".into(),
        normal: normal.then(|| PathBuf::from("/data/normal")),
        anomaly_maps: maps.then(|| PathBuf::from("/data/maps")),
        base: base.then(|| PathBuf::from("/data/base")),
        no_base: false,
        num_classes: NumClasses::Auto,
        max_classes: 10,
        detector: DetectorSettings::default(),
        resume: false,
        overwrite: false,
        stop_after_stage: None,
        stop_after_epochs: None,
        token_cache: crate::pipeline::TokenCache::InRunFolder,
        device: tch::Device::Cpu,
    }
}

/// Counts for `s`: 40 images, 8 normal ones when `--normal` is given (also the records' tests').
pub(in crate::pipeline::discover) fn inputs(
    s: &DiscoverSpec,
    typed: bool,
    good: usize,
    cropped_base: bool,
) -> Inputs {
    let base = match (&s.base, cropped_base) {
        (None, _) if s.no_base => BaseInput::None,
        (None, _) => BaseInput::Synthetic,
        (Some(d), false) => BaseInput::Raw {
            dir: d.clone(),
            images: 30,
            classes: 3,
        },
        (Some(d), true) => BaseInput::Cropped {
            dir: d.clone(),
            crops: 50,
            classes: 3,
        },
    };
    Inputs {
        images: 40,
        types: match typed {
            true => vec!["crack".into(), "hole".into()],
            false => vec![],
        },
        good,
        normal: if s.normal.is_some() { 8 } else { 0 },
        maps: if s.anomaly_maps.is_some() { 40 } else { 0 },
        base,
        digests: Digests::default(),
        detector_image_size: 448,
        detector_patches: 1024.0,
        speed: Speed::REFERENCE,
    }
}

fn detect(p: &Plan) -> Option<(Option<PathBuf>, bool)> {
    match &p.stage("maps")?.kind {
        StageKind::Detect {
            train,
            write_good_maps,
            ..
        } => Some((train.clone(), *write_good_maps)),
        k => panic!("maps stage of kind {k:?}"),
    }
}

#[test]
fn every_flag_combination_gives_the_expected_stages() {
    for typed in [false, true] {
        for good in [0, 5] {
            if good > 0 && !typed {
                continue; // a flat folder has no good/ folder
            }
            for (normal, maps, base, cropped) in [
                (false, false, false, false),
                (true, false, false, false),
                (false, true, false, false),
                (true, true, false, false),
                (false, false, true, false),
                (false, false, true, true),
                (true, false, true, true),
                (false, true, true, true),
            ] {
                let s = spec(normal, maps, base);
                let inp = inputs(&s, typed, good, cropped);
                let p = plan(&s, &inp);
                let case = format!("typed {typed} good {good} normal {normal} maps {maps} base {base} cropped {cropped}");
                let mut want = vec![];
                if !cropped {
                    want.push("base");
                }
                if !maps {
                    want.push("maps");
                }
                want.extend(["binarize", "train"]);
                assert_eq!(p.names(), want, "{case}");
                for st in &p.stages {
                    assert_eq!(st.dir, s.out.join(st.name), "{case}");
                    assert!(st.estimate_s > 0.0, "{case}");
                }
                // The base crops training reads.
                let base_dir = if cropped {
                    "/data/base"
                } else {
                    "/runs/r/base"
                };
                assert_eq!(p.base, Some(PathBuf::from(base_dir)), "{case}");
                match p.stage("base").map(|s| &s.kind) {
                    Some(StageKind::SynthBase) => assert!(!base, "{case}"),
                    Some(StageKind::CropBase { images, masks }) => {
                        assert_eq!(images, &PathBuf::from("/data/base/images"));
                        assert_eq!(masks, &PathBuf::from("/data/base/masks"));
                    }
                    None => assert!(cropped, "{case}"),
                    Some(k) => panic!("{case}: base stage {k:?}"),
                }
                // The maps MEBin reads, and how the detector gets its normal images.
                let binarize_maps = match &p.stage("binarize").unwrap().kind {
                    StageKind::Binarize { maps } => maps.clone(),
                    k => panic!("{case}: {k:?}"),
                };
                assert_eq!(binarize_maps, p.maps, "{case}");
                if maps {
                    assert_eq!(p.maps, PathBuf::from("/data/maps"), "{case}");
                    assert!(detect(&p).is_none(), "{case}");
                    assert_eq!(
                        p.notes.iter().any(|n| n.contains("--normal")),
                        normal,
                        "{case}: --normal unused is noted"
                    );
                } else {
                    assert_eq!(p.maps, PathBuf::from("/runs/r/maps"), "{case}");
                    let (train, good_maps) = detect(&p).unwrap();
                    let want_train = match (normal, good > 0) {
                        (true, _) => Some(PathBuf::from("/data/normal")),
                        (false, true) => Some(PathBuf::from("/data/images/good")),
                        (false, false) => None,
                    };
                    assert_eq!(train, want_train, "{case}");
                    // Held-out normals (good/ beside --normal) set MEBin's range; the bank's own
                    // images would not.
                    assert_eq!(good_maps, normal && good > 0, "{case}");
                }
            }
        }
    }
}

#[test]
fn the_plan_text_names_stages_counts_and_skips() {
    let s = spec(false, false, false);
    let inp = inputs(&s, true, 0, false);
    let p = plan(&s, &inp);
    let text = p.describe(&s.out, &inp, &[Resumed::Skipped]);
    for want in [
        "stage 1/4 base",
        "[done: skipped with --resume]",
        "stage 2/4 maps",
        "zero-shot",
        "stage 4/4 train",
        "40 defective (2 type folders: crack, hole)",
        "estimate K (2..=10)",
        "total ~",
    ] {
        assert!(text.contains(want), "`{want}` missing:\n{text}");
    }
    let flat = inputs(&s, false, 0, false);
    assert!(p.describe(&s.out, &flat, &[]).contains("flat folder"));
}

#[test]
fn estimates_grow_with_the_counts_and_the_settings() {
    let s = spec(false, false, false);
    let small = inputs(&s, true, 0, false);
    let big = Inputs {
        images: 400,
        ..small.clone()
    };
    assert!(plan(&s, &big).estimate_s() > 5.0 * plan(&s, &small).estimate_s() / 2.0);
    let mut fixed = spec(false, false, false);
    fixed.num_classes = NumClasses::Fixed(4);
    let train = |s: &DiscoverSpec| plan(s, &small).stage("train").unwrap().estimate_s;
    // `Config::default()` trains without the cache (the reference's way; discover turns it on).
    assert!(
        train(&fixed) < train(&s),
        "without the cache the K estimate is a forward per crop"
    );
    let cached = |mut s: DiscoverSpec| {
        s.config.training.cache_frozen = crate::config::CacheFrozen::On;
        s
    };
    assert_eq!(
        train(&cached(fixed.clone())),
        train(&cached(s.clone())),
        "the K estimate reads the cached tokens"
    );
    assert!(
        train(&cached(s.clone())) < train(&s),
        "the cache pays for itself"
    );
    // `auto` under `soft` guidance estimates K on tokens guided within the masks: one more
    // forward per crop, which a given K does not pay.
    let soft = |mut s: DiscoverSpec| {
        s.config.models.guidance = crate::config::GuidanceMode::Soft;
        cached(s)
    };
    assert!(train(&soft(s.clone())) > train(&cached(s.clone())));
    assert_eq!(train(&soft(fixed.clone())), train(&cached(fixed.clone())));
    // That forward reads the novel crops and at most BASE_PER_CLASS crops per base class: a
    // base set of 1000 crops in 3 classes costs the estimate 150 of them, not 1000.
    let big_base = Inputs {
        base: BaseInput::Cropped {
            dir: "/data/base".into(),
            crops: 1000,
            classes: 3,
        },
        ..small.clone()
    };
    let on_big = |s: &DiscoverSpec| plan(s, &big_base).stage("train").unwrap().estimate_s;
    let full_s = CropCosts::new(&soft(s.clone()).config, Speed::REFERENCE).full_s;
    let extra = on_big(&soft(s.clone())) - on_big(&cached(s.clone()));
    let want = (Costs::NOVEL_CROPS * 40.0 + 150.0) * full_s;
    assert!((extra - want).abs() < 1e-6 * want, "{extra} vs {want}");
    assert!(plan(&fixed, &small)
        .stage("train")
        .unwrap()
        .what
        .contains("K = 4"));
    // Neighbour views by pooled features: the detector writes them beside its maps, so they
    // cost nothing more unless it fuses; with the user's maps, a detector forward per image.
    let neighbours = |s: &DiscoverSpec, views: f64, features: Option<NeighbourFeatures>| {
        let mut s = cached(s.clone());
        (
            s.config.training.neighbor_views,
            s.config.training.neighbor_features,
        ) = (views, features);
        train(&s)
    };
    let pooled = Some(NeighbourFeatures::Pooled);
    assert_eq!(neighbours(&fixed, 0.5, None), train(&cached(fixed.clone())));
    let folder = Some(NeighbourFeatures::Folder("/p".into()));
    assert_eq!(
        neighbours(&fixed, 0.5, folder),
        neighbours(&fixed, 0.5, None)
    );
    assert_eq!(
        neighbours(&fixed, 0.5, pooled.clone()),
        neighbours(&fixed, 0.5, None)
    );
    let mut given = spec(false, true, false);
    given.num_classes = NumClasses::Fixed(4);
    let forwards = Costs::detect_forwards(40.0, 1024.0, Speed::REFERENCE);
    let extra = neighbours(&given, 0.5, pooled.clone()) - neighbours(&given, 0.5, None);
    assert!(
        forwards > 0.0 && (extra - forwards).abs() < 1e-6 * forwards,
        "{extra}"
    );
    // The user's maps are a detector run's, with its pooled features: no pass when they were
    // pooled at `detect.pool_tau`, a pass when at another temperature.
    let det = tempfile::tempdir().unwrap();
    std::fs::write(det.path().join(DETECT_FEATURES_FILE), b"x").unwrap();
    let report = |tau: f64| {
        let r = format!(r#"{{"pooled_features": "{DETECT_FEATURES_FILE}", "pool_tau": {tau}}}"#);
        std::fs::write(det.path().join(crate::detect::REPORT_FILE), r).unwrap();
    };
    let mut theirs = given.clone();
    theirs.anomaly_maps = Some(det.path().to_path_buf());
    report(theirs.config.detect.pool_tau);
    assert_eq!(
        neighbours(&theirs, 0.5, pooled.clone()),
        neighbours(&theirs, 0.5, None)
    );
    report(1.0);
    let extra = neighbours(&theirs, 0.5, pooled.clone()) - neighbours(&theirs, 0.5, None);
    assert!((extra - forwards).abs() < 1e-6 * forwards, "{extra}");
    let what = |s: &DiscoverSpec| plan(s, &small).stage("train").unwrap().what.clone();
    assert!(!what(&fixed).contains("neighbour views"));
    let mut nv = fixed.clone();
    nv.config.training.neighbor_views = 0.5;
    assert!(
        what(&nv).contains("crops, neighbour views)"),
        "{}",
        what(&nv)
    );
    let mut fused = fixed.clone();
    (fused.normal, fused.config.detect.fuse_mutual) = (Some("/data/normal".into()), 0.5);
    assert!(neighbours(&fused, 0.5, pooled.clone()) > neighbours(&fused, 0.5, None));
    // The CNN's maps mixed in: no pooled features beside them either, and the maps stage says so.
    let mut cnn = fixed.clone();
    (cnn.normal, cnn.config.detect.fuse_cnn) = (Some("/data/normal".into()), CnnMix::Weight(0.5));
    assert!(neighbours(&cnn, 0.5, pooled.clone()) > neighbours(&cnn, 0.5, None));
    let fitted = Inputs {
        normal: 10,
        ..small.clone()
    };
    // Normal images in --images/good fit the detector too; none at all: nothing is mixed.
    let mut good_only = cnn.clone();
    good_only.normal = None;
    let with_good = Inputs {
        good: 3,
        ..small.clone()
    };
    let pass = |s: &DiscoverSpec, i: &Inputs| {
        let mut s = cached(s.clone());
        s.config.training.neighbor_views = 0.5;
        s.config.training.neighbor_features = pooled.clone();
        plan(&s, i).stage("train").unwrap().estimate_s
    };
    assert!(pass(&good_only, &with_good) > pass(&fixed, &with_good));
    assert_eq!(pass(&good_only, &small), pass(&fixed, &small));
    let maps = plan(&cnn, &fitted).stage("maps").map(|m| m.what.clone());
    assert!(
        maps.as_deref()
            .is_some_and(|w| w.contains("detect.fuse_cnn")),
        "{maps:?}"
    );
    // `auto`: the held-out normals named, and no pooled pass counted (the ViT's own features
    // stand unless the CNN is chosen).
    let mut auto = cnn.clone();
    auto.config.detect.fuse_cnn = CnnMix::Auto;
    assert_eq!(pass(&auto, &fitted), pass(&fixed, &fitted));
    let maps = plan(&auto, &fitted).stage("maps").map(|m| m.what.clone());
    assert!(
        maps.as_deref()
            .is_some_and(|w| w.contains("where 1 held-out normal images favour it")),
        "{maps:?}"
    );
    let few = Inputs {
        normal: 9,
        ..small.clone()
    };
    let maps = plan(&auto, &few).stage("maps").map(|m| m.what.clone());
    assert!(
        !maps.unwrap().contains("fuse_cnn"),
        "too few normals to hold out"
    );
    // The crops' input side: the frozen prefix's attention grows with the square of the
    // tokens, so 392 px costs more than its 3.05× the tokens.
    let mut big_crops = cached(spec(false, false, false));
    big_crops.config.models.image_size = 392;
    let ratio = train(&big_crops) / train(&cached(s.clone()));
    assert!(ratio > 3.1 && ratio < 4.0, "{ratio}");
    let mut gpu = spec(false, false, false);
    gpu.device = tch::Device::Cuda(0);
    assert!(plan(&gpu, &small).estimate_s() < plan(&s, &small).estimate_s());
    // bf16 GEMMs 8× fp32's: forwards gain less than 8× (the work around the GEMMs stays).
    let fast = Speed::from_rates(300.0, 2400.0);
    let r = Speed::REFERENCE;
    assert!(
        fast.forward > 4.0 * r.forward && fast.forward < 3000.0 / 1.3,
        "{fast:?}"
    );
    assert!((Speed::from_rates(r.fp32, r.fp32).forward - r.forward).abs() < 1e-9);
    let on = |speed: Speed| Inputs {
        speed,
        ..small.clone()
    };
    let (slow_s, fast_s) = (
        plan(&s, &small).estimate_s(),
        plan(&s, &on(fast)).estimate_s(),
    );
    assert!(
        fast_s < slow_s / 3.0 && fast_s > slow_s / 50.0,
        "{fast_s} vs {slow_s}"
    );
    let zs = spec(false, false, false);
    let maps = |speed: Speed| plan(&zs, &on(speed)).stage("maps").unwrap().estimate_s;
    let gemm_only = Speed {
        forward: r.forward,
        fp32: 8.0 * r.fp32,
    };
    assert!(
        maps(gemm_only) < maps(r),
        "zero-shot scoring follows the GEMM rate"
    );
    // Wide images: fewer patches than the square, a shorter detector estimate.
    let wide = Inputs {
        detector_patches: 32.0 * 21.0,
        ..small.clone()
    };
    assert!(plan(&zs, &wide).stage("maps").unwrap().estimate_s < maps(r));
    for bad in [0.0, f64::NAN, -1.0, f64::INFINITY] {
        assert_eq!(Speed::from_rates(bad, 100.0), Speed::REFERENCE);
        assert_eq!(Speed::from_rates(100.0, bad), Speed::REFERENCE);
    }
    assert_eq!(duration_text(12.0), "12 s");
    assert_eq!(duration_text(600.0), "10 min");
    assert_eq!(duration_text(3900.0), "1 h 5 min");
}

#[test]
fn no_base_has_no_base_stage_and_trains_on_the_novel_crops_alone() {
    for maps in [false, true] {
        let mut s = spec(false, maps, false);
        let with_base = plan(&s, &inputs(&s, true, 0, false));
        s.no_base = true;
        let p = plan(&s, &inputs(&s, true, 0, false));
        let mut want = vec![];
        if !maps {
            want.push("maps");
        }
        want.extend(["binarize", "train"]);
        assert_eq!(p.names(), want);
        assert_eq!(p.base, None);
        assert!(
            p.notes.iter().any(|n| n.contains("--no-base")),
            "{:?}",
            p.notes
        );
        // Fewer crops to train on than with the built-in base set.
        let train = |p: &Plan| p.stage("train").unwrap().estimate_s;
        assert!(train(&p) < train(&with_base));
    }
}

#[test]
fn map_variants_raise_the_maps_estimate() {
    const R: Speed = Speed::REFERENCE;
    let plain = Costs::detect(100.0, 50.0, 1024.0, R);
    let v = crate::config::MapVariants::default();
    assert_eq!(
        Costs::detect_variants(plain, 100.0, 50.0, 1024.0, &v, R),
        plain
    );
    let per_block = crate::config::MapVariants {
        per_block: true,
        ..v.clone()
    };
    assert!(Costs::detect_variants(plain, 100.0, 50.0, 1024.0, &per_block, R) > plain);
    let fused = crate::config::MapVariants {
        fuse_mutual: 0.5,
        ..v.clone()
    };
    assert!(Costs::detect_variants(plain, 100.0, 50.0, 1024.0, &fused, R) > plain);
    // The CNN beside the ViT: 0.45× the ViT's detector more.
    let cnn = crate::config::MapVariants {
        fuse_cnn: CnnMix::Weight(0.5),
        ..v.clone()
    };
    let with_cnn = Costs::detect_variants(plain, 100.0, 50.0, 1024.0, &cnn, R);
    assert!((with_cnn / plain - 1.45).abs() < 1e-9, "{with_cnn} {plain}");
    // `auto`: only the held-out normals' scoring (10 of the 100 normals; 150 images fitted or scored).
    let auto = crate::config::MapVariants {
        fuse_cnn: CnnMix::Auto,
        ..v
    };
    let with_auto = Costs::detect_variants(plain, 100.0, 50.0, 1024.0, &auto, R);
    assert!(
        (with_auto / plain - (1.0 + 10.0 / 150.0)).abs() < 1e-9,
        "{with_auto}"
    );
    // Zero-shot maps have nothing to fuse.
    let zs = Costs::detect(0.0, 50.0, 1024.0, R);
    assert_eq!(Costs::detect_variants(zs, 0.0, 50.0, 1024.0, &fused, R), zs);
    assert_eq!(Costs::detect_variants(zs, 0.0, 50.0, 1024.0, &cnn, R), zs);
}
