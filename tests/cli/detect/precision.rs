//! `--precision auto` on the CPU: decided by timing GEMMs, logged with both rates, stored once
//! per machine in the cache folder and reused only there; `fp32` and `bf16` are never
//! overridden by a stored decision.

use std::path::Path;
use std::process::Output;

use serde_json::Value;

use super::{make_set, report};
use crate::common::stderr;

/// A ViT zero-shot detect run at info level (the decision is logged at info) with `cache` as
/// the cache folder.
fn run(root: &Path, cache: &Path, out: &str, precision: &str) -> Output {
    let o = crate::common::bin()
        .env("ANOMALYNCD_CACHE_DIR", cache)
        .args(["--device", "cpu", "detect", "--zero-shot", "--test"])
        .arg(root.join("test"))
        .arg("--out")
        .arg(root.join(out))
        .args(["--image-size", "32", "--random-weights"])
        .args(["--precision", precision])
        .output()
        .expect("run anomalyncd");
    assert!(o.status.success(), "{}", stderr(&o));
    o
}

/// The `precision auto: …` line of a run's log.
fn decision(o: &Output) -> Option<String> {
    let lines: Vec<String> = stderr(o)
        .lines()
        .filter(|l| l.starts_with("precision auto: "))
        .map(str::to_string)
        .collect();
    assert!(lines.len() <= 1, "logged more than once: {lines:?}");
    lines.into_iter().next()
}

fn stored(cache: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(cache.join("precision.json")).unwrap()).unwrap()
}

#[test]
fn auto_is_measured_logged_stored_and_reused_only_on_the_same_cpu() {
    let cpu_known = std::fs::read_to_string("/proc/cpuinfo")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("model name")));
    if !cpu_known {
        eprintln!("skipped: no CPU model name in /proc/cpuinfo, so nothing is stored");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    make_set(d.path());
    let cache = d.path().join("cache");
    let file = cache.join("precision.json");

    let line = decision(&run(d.path(), &cache, "a", "auto")).expect("decision not logged");
    assert!(
        line.contains(" GFLOP/s, fp32 ") && line.contains("measured, saved in"),
        "{line}"
    );
    let s = stored(&cache);
    let choice = s["precision"].as_str().unwrap().to_string();
    assert!(
        line.starts_with(&format!("precision auto: {choice} (bf16 ")),
        "{line}"
    );
    let as_run = if choice == "bf16" {
        "bfloat16"
    } else {
        "float"
    };
    assert_eq!(report(&d.path().join("a"))["precision"], as_run);

    let line = decision(&run(d.path(), &cache, "b", "auto")).expect("decision not logged");
    assert!(
        line.contains(&format!("stored in {}", file.display())),
        "{line}"
    );

    // Another CPU's decision, the opposite of this one's: measured again and overwritten.
    let mut other = s.clone();
    other["cpu"] = "Some Other CPU".into();
    other["precision"] = if choice == "bf16" { "fp32" } else { "bf16" }.into();
    std::fs::write(&file, other.to_string()).unwrap();
    let line = decision(&run(d.path(), &cache, "c", "auto")).expect("decision not logged");
    assert!(line.contains("measured"), "{line}");
    let again = stored(&cache);
    assert_eq!(again["cpu"], s["cpu"]);
    // The new measurement decides (on a loaded machine it may differ from the first one).
    let as_run_again = if again["precision"] == "bf16" {
        "bfloat16"
    } else {
        "float"
    };
    assert_eq!(report(&d.path().join("c"))["precision"], as_run_again);

    // A forced precision neither reads nor logs the decision, whatever is stored.
    for (forced, kind) in [("fp32", "float"), ("bf16", "bfloat16")] {
        let o = run(d.path(), &cache, forced, forced);
        assert_eq!(decision(&o), None, "{}", stderr(&o));
        assert_eq!(report(&d.path().join(forced))["precision"], kind);
    }
}
