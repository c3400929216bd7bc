//! What `discover` reports of its cost: each stage's wall time and images/s, and the run's peak
//! memory, printed and in `discover.json` beside the fields it has always had.

use super::*;

/// Checks the finished run in `run` whose output was `text`: its stages in order, each with
/// the images it went through (`stages`), all run here.
pub fn check(run: &Path, text: &str, stages: &[(&str, u64)]) {
    let summary = json(&run.join("discover.json"));
    for key in [
        "report",
        "predictions",
        "checkpoint",
        "found",
        "stages",
        "seconds",
    ] {
        assert!(summary.get(key).is_some(), "{key}: {summary}");
    }
    let timing = &summary["timing"];
    let got: Vec<(&str, u64)> = timing["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["images"].as_u64().unwrap()))
        .collect();
    assert_eq!(got, stages, "{timing}");
    let mut wall = 0.0;
    for s in timing["stages"].as_array().unwrap() {
        let w = s["wall_s"].as_f64().unwrap();
        let rate = s["images_per_s"].as_f64().unwrap();
        assert!(w > 0.0 && s["skipped"] == false, "{s}");
        let images = s["images"].as_f64().unwrap();
        assert!((rate * w - images).abs() < 1e-6, "{s}");
        wall += w;
    }
    let total = timing["total_s"].as_f64().unwrap();
    assert!(total >= wall, "{timing}");
    assert_eq!(Some(total), summary["seconds"].as_f64(), "{timing}");
    if cfg!(target_os = "linux") {
        assert!(timing["peak_rss_mb"].as_f64().unwrap() > 1.0, "{timing}");
    }
    let n = stages.len();
    for (i, (name, _)) in stages.iter().enumerate() {
        let line = format!("stage {}/{n}: {name}: finished in", i + 1);
        assert!(text.contains(&line), "{line}: {text}");
    }
    assert!(text.contains(" images/s)"), "{text}");
    assert!(text.contains("in all, peak memory"), "{text}");
}
