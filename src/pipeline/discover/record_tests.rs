//! The stage records: fingerprints, digests and what moves them.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::json;

use super::*;
use crate::cluster::NumClasses;
use crate::config::{KCriterion, Precision};
use crate::detect::features::Resize;
use crate::detect::DetectSpec;
use crate::detect::DEFAULT_VIT_IMAGE_SIZE;
use crate::fsutil::absolute_value;
use crate::pipeline::discover::plan;
use crate::pipeline::discover::plan::tests as plan_tests;

fn job() -> DetectSpec {
    DetectSpec {
        precision: Precision::Fp32,
        ..DetectSpec::with_defaults(
            Some("/data/good".into()),
            "/data/test".into(),
            "/runs/r/maps".into(),
            Some("/weights/dinov2.safetensors".into()),
            tch::Device::Cpu,
        )
    }
}

fn digest_of(job: &DetectSpec, detector: &DetectSettings) -> String {
    let settings = StageSettings::Maps(MapsSettings {
        train: job.train.as_deref().map(AbsPath::new),
        train_listing: "l1".into(),
        images: AbsPath::new(&job.test),
        images_listing: "l2".into(),
        detector: detector.clone(),
    });
    let fp = StageFingerprint {
        stage: "maps",
        version: VERSION,
        settings,
    };
    fp.stamp().1
}

type Change = (&'static str, fn(&mut DetectSpec));

/// One change of each setting (and of each input folder) of the detector job.
const CHANGES: &[Change] = &[
    ("backbone", |j| j.backbone = "efficientnet-lite0".into()),
    ("weights", |j| {
        j.weights = Some("/weights/other.safetensors".into())
    }),
    ("weights", |j| j.weights = None),
    ("image_size", |j| j.image_size = 224),
    ("resize", |j| j.resize = Resize::Square),
    ("stages", |j| j.stages = vec![1, 3]),
    ("blocks", |j| j.blocks = vec![12]),
    ("aggregate", |j| j.aggregate = Some(3)),
    ("precision", |j| j.precision = Precision::Bf16),
    ("coreset", |j| j.coreset = 0.25),
    ("max_patches", |j| j.max_patches = 5000),
    ("zero_shot", |j| j.zero_shot = true),
    ("zero_shot_refs", |j| j.zero_shot_refs = 8),
    ("zero_shot_fraction", |j| j.zero_shot_fraction = 0.5),
    ("pool_tau", |j| j.pool_tau = 2.0),
    ("seed", |j| j.seed = 7),
    ("write_good_maps", |j| j.write_good_maps = true),
    ("train", |j| j.train = Some("/data/normal".into())),
    ("test", |j| j.test = "/data/other".into()),
    ("per_block", |j| j.per_block = true),
    ("aggregate_sizes", |j| j.aggregate_sizes = vec![1, 3, 5]),
    ("fuse_mutual", |j| j.fuse_mutual = 0.5),
    ("holdout", |j| j.holdout = 0.1),
    ("blur", |j| j.blur = 2.0),
];

#[test]
fn every_detector_setting_and_its_code_change_the_maps_digest() {
    let base = job();
    let base_settings = serde_json::to_value(base.settings()).unwrap();
    let base_digest = digest_of(&base, &base.settings());
    assert_eq!(digest_of(&job(), &job().settings()), base_digest, "stable");
    let mut seen = vec![base_digest.clone()];
    let mut covered = BTreeSet::new();
    for (name, change) in CHANGES {
        let mut j = job();
        change(&mut j);
        let d = digest_of(&j, &j.settings());
        assert!(
            !seen.contains(&d),
            "changing {name} left the digest as before"
        );
        seen.push(d);
        let now = serde_json::to_value(j.settings()).unwrap();
        let moved = base_settings.as_object().unwrap().iter();
        covered.extend(
            moved
                .filter(|(k, v)| now[k.as_str()] != **v)
                .map(|(k, _)| k.clone()),
        );
    }
    // Another build of the detector's code.
    let mut other = base.settings();
    other.code = "0123456789abcdef".into();
    assert_ne!(digest_of(&base, &other), base_digest, "code");
    covered.insert("code".into());
    // A field added to the settings needs a change above.
    let all: BTreeSet<String> = base_settings.as_object().unwrap().keys().cloned().collect();
    assert_eq!(covered, all);
    // What only decides how the work is batched, or where it goes, keeps the maps.
    let mut j = job();
    (j.batch_size, j.overwrite, j.out) = (2, false, "/elsewhere".into());
    assert_eq!(digest_of(&j, &j.settings()), base_digest);
}

fn discover_spec() -> DiscoverSpec {
    plan_tests::spec(true, false, false)
}

fn run_fingerprints(spec: &DiscoverSpec, weights: Option<&Path>) -> Vec<(Value, String)> {
    let inputs = Inputs {
        detector_image_size: spec.detector.image_size.unwrap_or(DEFAULT_VIT_IMAGE_SIZE),
        ..plan_tests::inputs(spec, true, 0, false)
    };
    let plan = plan(spec, &inputs);
    assert_eq!(plan.names(), ["base", "maps", "binarize", "train"]);
    fingerprints(spec, &inputs, &plan, "random", weights)
        .iter()
        .map(StageFingerprint::stamp)
        .collect()
}

#[test]
fn the_records_keep_the_form_of_the_runs_before() {
    // What the hand-written JSON recorded, so that finished stages of earlier runs are
    // still found finished; but binarize names the run's own maps as `<run>/maps` since
    // 2026-12-05 (absolute before), so binarize and train are redone once in older runs.
    let spec = discover_spec();
    let w = Path::new("/weights/dinov2.safetensors");
    let fps = run_fingerprints(&spec, Some(w));
    let stamp = |stage: &str, settings: Value| {
        let fp = json!({ "stage": stage, "version": VERSION, "settings": settings });
        let digest = fnv(fp.to_string().as_bytes());
        (fp, digest)
    };
    let base = json!({
        "synth": { "seed": SYNTH_BASE_SEED, "per_base_class": SYNTH_BASE_PER_CLASS,
                   "size": SYNTH_BASE_SIZE },
        "max_crops": BASE_MAX_CROPS,
    });
    assert_eq!(fps[0], stamp("base", base));
    let job = detect_spec(
        &spec,
        Some(w.to_path_buf()),
        Path::new("/runs/r/maps"),
        &Some("/data/normal".into()),
        false,
        DEFAULT_VIT_IMAGE_SIZE,
    );
    let maps = json!({
        "train": job.train.as_deref().map(absolute_value), "train_listing": "",
        "images": absolute_value(&job.test), "images_listing": "",
        "detector": job.settings(),
    });
    assert_eq!(fps[1], stamp("maps", maps));
    let binarize = json!({
        "maps": "<run>/maps",
        "maps_listing": "", "maps_stage": fps[1].1,
        "images": absolute_value(&spec.images), "images_listing": "",
        "binarization": spec.config.binarization,
        "layout": crate::mebin::job::OUTPUT_LAYOUT,
    });
    assert_eq!(fps[2], stamp("binarize", binarize));
    let keys: Vec<&String> = fps[3].0["settings"].as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "base",
            "base_listing",
            "base_stage",
            "binarize_stage",
            "config",
            "k_criterion",
            "max_classes",
            "num_classes",
            "precision",
            "weights"
        ]
    );
}

#[test]
fn a_moved_run_folder_keeps_its_digests_and_given_inputs_keep_their_paths() {
    let w = Some(Path::new("/weights/dinov2.safetensors"));
    let here = run_fingerprints(&discover_spec(), w);
    let mut moved = discover_spec();
    moved.out = "/elsewhere/copy".into();
    assert_eq!(run_fingerprints(&moved, w), here);
    assert_eq!(here[3].0["settings"]["base"], "<run>/base");
    // Maps and a cropped base set the user gives lie outside the run: absolute paths, and
    // other folders are other inputs.
    let given = |out: &str, maps: &str| {
        let mut s = plan_tests::spec(true, true, true);
        (s.out, s.anomaly_maps) = (out.into(), Some(maps.into()));
        let inputs = plan_tests::inputs(&s, true, 0, true);
        let p = plan(&s, &inputs);
        assert_eq!(p.names(), ["binarize", "train"]);
        let fps: Vec<_> = fingerprints(&s, &inputs, &p, "random", None);
        fps.iter().map(StageFingerprint::stamp).collect::<Vec<_>>()
    };
    let a = given("/runs/r", "/data/maps");
    assert_eq!(
        a[0].0["settings"]["maps"],
        absolute_value(Path::new("/data/maps"))
    );
    assert_eq!(
        a[1].0["settings"]["base"],
        absolute_value(Path::new("/data/base"))
    );
    assert_eq!(given("/elsewhere/copy", "/data/maps"), a);
    assert_ne!(given("/runs/r", "/data/other_maps")[0].1, a[0].1);
}

#[test]
fn the_train_stage_follows_its_settings_and_not_the_workers() {
    let spec = discover_spec();
    let w = Some(Path::new("/weights/dinov2.safetensors"));
    let fps = run_fingerprints(&spec, w);
    let redone = |change: fn(&mut DiscoverSpec)| -> Vec<bool> {
        let mut s = discover_spec();
        change(&mut s);
        let other = run_fingerprints(&s, w);
        fps.iter().zip(&other).map(|(a, b)| a.1 != b.1).collect()
    };
    let train_only = [false, false, false, true];
    type Edit = fn(&mut DiscoverSpec);
    let changes: [(&str, Edit); 4] = [
        ("num_classes", |s| s.num_classes = NumClasses::Fixed(3)),
        ("max_classes", |s| s.max_classes = 4),
        ("seed", |s| s.config.experiment.seed = 1),
        ("epochs", |s| s.config.training.epochs = 3),
    ];
    for (name, change) in changes {
        assert_eq!(redone(change), train_only, "{name}");
    }
    // The precision is the detector's too: a forced one that resolves to another kind
    // redoes the maps and everything after them.
    // (Both forced: `auto` resolves by a measurement on this machine.)
    let forced = |p: Precision| {
        let mut s = discover_spec();
        s.config.models.precision = p;
        run_fingerprints(&s, w)
    };
    let (f32_run, bf16_run) = (forced(Precision::Fp32), forced(Precision::Bf16));
    let moved: Vec<bool> = f32_run
        .iter()
        .zip(&bf16_run)
        .map(|(a, b)| a.1 != b.1)
        .collect();
    assert_eq!(moved, [false, true, true, true]);
    assert_eq!(
        redone(|s| s.config.binarization.sample_rate = 2),
        [false, false, true, true]
    );
    // The spec estimates K: the criterion is recorded resolved, and a change retrains.
    assert_eq!(fps[3].0["settings"]["k_criterion"], "eigengap_scales");
    let one_graph =
        |s: &mut DiscoverSpec| s.config.training.k_criterion = Some(KCriterion::Eigengap);
    assert_eq!(redone(one_graph), train_only);
    // With a given K nothing reads it: left out, as in the runs from before the key.
    let mut given = discover_spec();
    given.num_classes = NumClasses::Fixed(3);
    let settings = &run_fingerprints(&given, w)[3].0["settings"];
    assert!(settings.get("k_criterion").is_none(), "{settings}");
    assert!(settings["config"]["training"].get("k_criterion").is_none());
    let nothing = [false; 4];
    assert_eq!(redone(|s| s.config.training.num_workers = 1), nothing);
    // Inference settings change only the evaluation: `discover` evaluates the checkpoint
    // again (the train stage's summary records them), the fingerprints stay.
    assert_eq!(
        redone(|s| s.config.inference.merge_temperature = Some(5.0)),
        nothing
    );
    assert_eq!(redone(|s| s.config.inference.refine_steps = 1), nothing);
    assert_eq!(redone(|s| s.resume = true), nothing);
    assert_eq!(redone(|s| s.stop_after_epochs = Some(1)), nothing);
}

#[test]
fn the_maps_stage_records_the_job_it_runs_and_a_change_redoes_what_follows() {
    let spec = discover_spec();
    let w = Path::new("/weights/dinov2.safetensors");
    let fps = run_fingerprints(&spec, Some(w));
    let maps_dir = PathBuf::from("/runs/r/maps");
    let normal = Some(PathBuf::from("/data/normal"));
    let job = detect_spec(&spec, Some(w.to_path_buf()), &maps_dir, &normal, false, 448);
    assert_eq!(
        fps[1].0["settings"]["detector"],
        serde_json::to_value(job.settings()).unwrap()
    );
    assert_eq!(run_fingerprints(&spec, Some(w)), fps, "stable");
    let redone = |other: &[(Value, String)]| -> Vec<bool> {
        fps.iter().zip(other).map(|(a, b)| a.1 != b.1).collect()
    };
    let mut small = discover_spec();
    small.detector.image_size = Some(224);
    assert_eq!(
        redone(&run_fingerprints(&small, Some(w))),
        [false, true, true, true]
    );
    let random = run_fingerprints(&spec, None);
    assert_eq!(redone(&random), [false, true, true, true]);
    // The config's `detect` section reaches the detector's job and its fingerprint.
    let mut per_block = discover_spec();
    per_block.config.detect.per_block = true;
    let job = detect_spec(
        &per_block,
        Some(w.to_path_buf()),
        &maps_dir,
        &normal,
        false,
        448,
    );
    assert!(job.per_block);
    assert_eq!(
        redone(&run_fingerprints(&per_block, Some(w))),
        [false, true, true, true]
    );
}

#[test]
fn neighbour_views_and_their_features_redo_only_the_train_stage() {
    use crate::config::NeighbourFeatures;
    let w = Some(Path::new("/weights/dinov2.safetensors"));
    let plain = run_fingerprints(&discover_spec(), w);
    let d = tempfile::tempdir().unwrap();
    let with = |views: f64| {
        let mut s = discover_spec();
        s.config.training.neighbor_views = views;
        s.config.training.neighbor_features =
            Some(NeighbourFeatures::Folder(d.path().to_path_buf()));
        run_fingerprints(&s, w)
    };
    let moved = |other: &[(Value, String)]| -> Vec<bool> {
        plain.iter().zip(other).map(|(a, b)| a.1 != b.1).collect()
    };
    let before = with(0.5);
    assert_eq!(moved(&before), [false, false, false, true]);
    assert_eq!(before[3].0["settings"]["neighbor_features"], "missing");
    // The files' contents, not only the folder's name, enter the digest.
    for name in crate::pipeline::NEIGHBOUR_FEATURES_FILES {
        std::fs::write(d.path().join(name), b"one").unwrap();
    }
    let one = with(0.5);
    std::fs::write(
        d.path().join(crate::pipeline::NEIGHBOUR_FEATURES_FILES[1]),
        b"two",
    )
    .unwrap();
    let two = with(0.5);
    assert_ne!(one[3].1, before[3].1);
    assert_ne!(two[3].1, one[3].1);
    assert_eq!(one[..3], two[..3]);
    assert_ne!(with(1.0)[3].1, two[3].1);
    // Without neighbour views the keys are left out: earlier fingerprints keep their form.
    assert!(plain[3].0["settings"].get("neighbor_features").is_none());
    // Computed in the run: from the inputs the other fields hold; the config names it.
    let mut s = discover_spec();
    s.config.training.neighbor_views = 0.5;
    s.config.training.neighbor_features = Some(NeighbourFeatures::Pooled);
    let here = run_fingerprints(&s, w);
    assert!(here[3].0["settings"].get("neighbor_features").is_none());
    assert_eq!(
        here[3].0["settings"]["config"]["training"]["neighbor_features"],
        "pooled"
    );
    assert_ne!(here[3].1, before[3].1);
    assert!(plain[3].0["settings"]["config"]["training"]
        .get("neighbor_views")
        .is_none());
}
