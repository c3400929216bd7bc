//! `experiments/quality_bench.sh` (the quality benchmark's driver) and
//! `experiments/quality_report.py` (its table and JSON) on the synthetic protocol with the tiny
//! ViT and the random-weight detector (no `../shared`, no weights): two training seeds and the
//! view-seed check, the maps reused, mean / sd from the per-seed values, the K that `auto`
//! chooses from the bench's own `auto` run, a second invocation
//! that skips every finished unit, and bad settings refused with exit 2; then
//! `experiments/inference_sweep.sh` on the finished runs.

use std::path::Path;
use std::process::{Command, Output};
use std::time::SystemTime;

/// The tiny settings of the `discover` tests, as `--set` overrides.
const TINY_SET: &str = "models.pretrained_backbone=vit_tiny models.grad_from_block=2 \
    models.mask_layers=2 models.image_size=32 models.precision=fp32 training.batch_size=8 \
    training.num_workers=2 training.cache_frozen=true training.cache_views=2 \
    loss.warmup_teacher_temp_epochs=1 loss.repeat_times=1";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The bench on the synthetic protocol into `out`, with `extra` environment on top.
fn bench(out: &Path, extra: &[(&str, &str)]) -> Output {
    let mut c = Command::new("bash");
    c.arg(root().join("experiments/quality_bench.sh"))
        .current_dir(root())
        .env("OUT", out)
        .env("BIN", env!("CARGO_BIN_EXE_anomalyncd"))
        .env("PROTOCOLS", "synth")
        .env("SEEDS", "1 2")
        .env("EPOCHS", "2")
        .env("THREADS", "1")
        .env(
            "SYNTH_ARGS",
            "--per-type 4 --per-base-class 3 --normal 3 --size 96",
        )
        .env("EXTRA_SET", TINY_SET)
        // The sweep below evaluates the runs' weights again; the variant checks the default.
        .env("KEEP_CHECKPOINTS", "1")
        .env(
            "EXTRA_ARGS",
            "--detector-random-weights --detector-image-size 64",
        );
    for k in [
        "MODE",
        "VIEW_SEED",
        "VIEW_CHECK",
        "CACHE",
        "LOC",
        "BASELINE",
        "CONFIG",
        "SHARED",
        "BASE_OUT",
    ] {
        c.env_remove(k);
    }
    for (k, v) in extra {
        c.env(k, v);
    }
    c.output().expect("run bash")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn json(p: &Path) -> serde_json::Value {
    let t = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p).and_then(|m| m.modified()).unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn quality_bench_runs_resumes_and_reports_on_the_synthetic_set() {
    for (tool, arg) in [("bash", "--version"), ("python3", "--version")] {
        if Command::new(tool).arg(arg).output().is_err() {
            eprintln!("skipped: no {tool} on this machine (the bench is a bash script with a Python report)");
            return;
        }
    }
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("bench");

    // Bad settings are refused before anything runs.
    let o = bench(&out, &[("SEEDS", "1 x")]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("SEEDS"), "{}", text(&o));
    assert!(!out.exists(), "a refused bench wrote its folder");

    let o = bench(&out, &[]);
    let t = text(&o);
    assert!(o.status.success(), "the bench failed:\n{t}");
    let proto = out.join("synth");
    let units = ["seed1_view1000", "seed2_view1000", "seed1_view1001"];
    for u in units {
        assert!(t.contains(&format!("synth {u}: starting")), "{t}");
        assert!(proto.join(u).join("discover.json").is_file(), "{u}: {t}");
    }
    // The later runs train on the first run's maps.
    let log = std::fs::read_to_string(proto.join("seed2_view1000.log")).unwrap();
    assert!(
        log.contains(&format!(
            "--anomaly-maps {}",
            proto.join("seed1_view1000/maps").display()
        )),
        "{log}"
    );
    assert!(!proto.join("seed2_view1000/maps").exists());

    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("| synth |") && md.contains("## synth"), "{md}");
    assert!(md.contains("View-seed check"), "{md}");
    let r = json(&out.join("results.json"));
    assert!(r["commit"].is_string() && r["dirty"].is_boolean(), "{r}");
    assert_eq!(r["threads"], "1");
    assert_eq!(r["settings"]["extra_set"], TINY_SET);
    assert!(r["cpu"]["flags"]["avx2"].is_boolean() || r["cpu"]["flags"]["avx2"].is_null());
    assert_eq!(r["precision"][0], "fp32", "{r}");
    let p = &r["protocols"]["synth"];
    assert_eq!(p["k"], 4);
    assert_eq!(
        p["crops_identical"], true,
        "every seed must see the first run's crops: {p}"
    );
    // Under `soft` guidance (discover's default) the runs, given K, report no `auto` K: the
    // bench's own `auto` run, stopped after one epoch, does.
    let seed1 = json(&proto.join("seed1_view1000/discover.json"));
    assert!(seed1["found"]["auto_k"].is_null(), "{seed1}");
    let auto = json(&proto.join("auto_k.json"));
    let k = auto["auto_k"].as_u64().unwrap();
    assert!((2..=10).contains(&k), "{auto}");
    assert_eq!(auto["true_k"], 4);
    assert_eq!(p["auto_k"], serde_json::json!([k]), "{p}");
    assert!(
        t.contains(&format!("synth: auto chooses K = {k} (true 4)")),
        "{t}"
    );

    // Mean and sample sd from the per-seed values, each read from its run's discover.json.
    let per_seed: Vec<Vec<f64>> = units[..2]
        .iter()
        .map(|u| scores_of(&proto.join(u).join("discover.json")))
        .collect();
    for (i, key) in ["nmi", "ari", "f1"].iter().enumerate() {
        let a = &p["aggregate"][key];
        let vals: Vec<f64> = a["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(vals, vec![per_seed[0][i], per_seed[1][i]], "{key}: {a}");
        let mean = (vals[0] + vals[1]) / 2.0;
        let sd = (vals[0] - vals[1]).abs() / 2f64.sqrt();
        assert!(close(a["mean"].as_f64().unwrap(), mean), "{key}: {a}");
        assert!(close(a["sd"].as_f64().unwrap(), sd), "{key}: {a}");
    }
    // The view-seed check: the first seed with view seed V + 1, placed against the seeds' range.
    let vc = &p["view_check"];
    assert_eq!(vc["seed"], 1);
    assert_eq!(vc["view_seed"], 1001);
    let f1 = json(&proto.join("seed1_view1001/discover.json"))["found"]["scores"][2]
        .as_f64()
        .unwrap();
    let (lo, hi) = (
        per_seed[0][2].min(per_seed[1][2]),
        per_seed[0][2].max(per_seed[1][2]),
    );
    assert!(close(vc["f1"].as_f64().unwrap(), f1));
    assert_eq!(vc["inside_seed_range"], lo <= f1 && f1 <= hi, "{vc}");
    // Per-type recall for the four synthetic types, and the localisation of the maps.
    assert_eq!(p["types"].as_array().unwrap().len(), 4, "{p}");
    assert!(p["localisation"]["maps_eval"]["overall"]["argmax_in_defect"].is_number());
    assert!(
        p["localisation"]["mebin"].is_object()
            || md.contains("MEBin mask IoU not computed: no Python with numpy and Pillow"),
        "{md}"
    );
    // Every invocation keeps its load before and after.
    let runs = r["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3, "{runs:?}");
    for run in runs {
        assert_eq!(run["rc"], 0);
        for k in ["load_start", "load_end"] {
            assert_eq!(run[k].as_array().map(Vec::len), Some(3), "{run}");
        }
    }

    // Again: every unit is finished, so none runs.
    let before: Vec<SystemTime> = units
        .iter()
        .map(|u| mtime(&proto.join(u).join("discover.json")))
        .collect();
    let o = bench(&out, &[]);
    let t = text(&o);
    assert!(o.status.success(), "second invocation:\n{t}");
    assert_eq!(t.matches("skipped (finished earlier)").count(), 3, "{t}");
    assert!(!t.contains(": starting"), "{t}");
    let after: Vec<SystemTime> = units
        .iter()
        .map(|u| mtime(&proto.join(u).join("discover.json")))
        .collect();
    assert_eq!(before, after);
    assert!(out.join("results.md").is_file());

    // Other settings in the same folder are refused.
    let o = bench(&out, &[("EPOCHS", "3")]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("use another OUT"), "{}", text(&o));

    // A training-only variant in another folder takes the first folder's maps: its first unit
    // runs no detector and trains on the same crops.
    let variant = d.path().join("variant");
    let base = out.to_str().unwrap();
    let o = bench(
        &variant,
        &[
            ("BASE_OUT", base),
            ("SEEDS", "1"),
            ("VIEW_CHECK", "0"),
            ("EPOCHS", "3"),
            ("KEEP_CHECKPOINTS", "0"),
        ],
    );
    let t = text(&o);
    assert!(o.status.success(), "variant:\n{t}");
    let vproto = variant.join("synth");
    let unit = std::fs::read_dir(&vproto)
        .unwrap()
        .flatten()
        .find(|e| e.path().join("discover.json").is_file())
        .expect("the variant's unit finished")
        .path();
    assert!(
        !unit.join("maps").exists(),
        "no detector ran in the variant"
    );
    let first = proto.join(units[0]);
    assert_eq!(
        std::fs::read(unit.join("binarize/scores.json")).unwrap(),
        std::fs::read(first.join("binarize/scores.json")).unwrap()
    );
    // By default a finished unit's weights go (its checkpoint.json stays), and the sweep,
    // which needs them, says how to keep them.
    assert!(unit.join("train/checkpoint.json").is_file());
    assert!(!unit.join("train/checkpoint.safetensors").exists());
    assert!(first.join("train/checkpoint.safetensors").is_file());
    let o = sweep(
        &variant,
        &d.path().join("no_sweep"),
        &["inference.assign=heads"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("KEEP_CHECKPOINTS=1"), "{}", text(&o));
    let o = bench(&variant, &[("BASE_OUT", "/no/such/bench")]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("BASE_OUT"), "{}", text(&o));

    inference_sweep_evaluates_the_runs_again(&out, &d.path().join("sweep"), &units, &per_seed);
}

fn sweep(out: &Path, sweep: &Path, settings: &[&str]) -> Output {
    Command::new("bash")
        .arg(root().join("experiments/inference_sweep.sh"))
        .arg(out)
        .arg(sweep)
        .args(settings)
        .current_dir(root())
        .env_remove("BIN")
        .env_remove("UNITS")
        .output()
        .expect("run bash")
}

/// The scores in a run folder's (or a saved copy's) discover.json.
fn scores_of(p: &Path) -> Vec<f64> {
    json(p)["found"]["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// `experiments/inference_sweep.sh` on the finished bench: the default's merge temperature
/// written out evaluates every run again and gives back its scores; another setting evaluates
/// again too; afterwards every run holds its own records again, byte for byte.
fn inference_sweep_evaluates_the_runs_again(
    out: &Path,
    dir: &Path,
    units: &[&str],
    per_seed: &[Vec<f64>],
) {
    let proto = out.join("synth");
    let records = |u: &str| {
        ["discover.json", "train/stage.json"].map(|f| std::fs::read(proto.join(u).join(f)).unwrap())
    };
    let before: Vec<_> = units.iter().map(|u| records(u)).collect();
    let same = "inference.merge_temperature=50";
    // The heads' answer (the reference's) in place of discover's spectral assignment.
    let heads = "inference.assign=heads";
    let o = sweep(out, dir, &[same, heads]);
    let t = text(&o);
    assert!(o.status.success(), "sweep:\n{t}");
    for (u, scores) in units[..2].iter().zip(per_seed) {
        for s in [same, heads] {
            let log = std::fs::read_to_string(dir.join(s).join("synth").join(format!("{u}.log")))
                .unwrap();
            assert!(
                log.contains("only the evaluation runs again"),
                "{s} {u}: {log}"
            );
        }
        let again = scores_of(&dir.join(same).join("synth").join(format!("{u}.json")));
        assert_eq!(
            &again, scores,
            "{u}: the re-evaluation must reproduce the run"
        );
    }
    let after: Vec<_> = units.iter().map(|u| records(u)).collect();
    assert!(
        before == after,
        "every run must hold its own records again after the sweep"
    );
    assert!(
        t.contains(&format!("| {same} | 3 |")) && t.contains(&format!("| {heads} | 3 |")),
        "{t}"
    );

    // Settings outside `inference` (they would retrain) and a folder inside the bench's are refused.
    let o = sweep(out, dir, &["training.epochs=3"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("inference"), "{}", text(&o));
    let o = sweep(out, &out.join("sweep"), &[heads]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(!out.join("sweep").exists());
}
