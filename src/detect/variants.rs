//! The map variants of issue 25 as one serde block, for a caller that takes the detector's
//! settings from a config (`discover`): `MapVariants::default()` is today's detector, and
//! [`MapVariants::apply`] copies the block into a [`DetectSpec`], whose settings (and so the
//! maps' fingerprint) then record every value that differs from the default.

use std::path::Path;

use super::run::{DetectReport, REPORT_FILE};
use super::spec::DetectSpec;
use crate::config::CnnMix;
pub use crate::config::MapVariants;
use crate::error::{Error, Result};

impl MapVariants {
    /// Copies the variants into `spec` (checked when the detector runs). With no normal
    /// images (`spec.zero_shot`) fusion and held-out normals do not apply and are left off.
    pub fn apply(&self, spec: &mut DetectSpec) {
        spec.per_block = self.per_block;
        spec.aggregate_sizes = self.aggregate_sizes.clone();
        spec.blur = self.blur;
        let fitted = !spec.zero_shot;
        spec.fuse_mutual = if fitted { self.fuse_mutual } else { 0.0 };
        spec.holdout = if fitted { self.holdout } else { 0.0 };
        spec.fuse_cnn = if fitted { self.fuse_cnn } else { CnnMix::OFF };
        spec.zero_shot_fraction = self.zero_shot_fraction;
        spec.pool_tau = self.pool_tau;
    }
}

/// The floor for MEBin's threshold range (`binarization.min_threshold`) that a detector run
/// with held-out normals wrote into `maps/detect.json`; None without held-out normals.
pub fn normal_floor(maps: &Path) -> Result<Option<f64>> {
    let report: DetectReport = report(maps)?;
    Ok(report.normal_floor.map(|f| f.floor))
}

/// The two fields of a detect report that say how its pooled features were pooled.
#[derive(serde::Deserialize)]
struct PooledPart {
    #[serde(default)]
    pooled_features: Option<std::path::PathBuf>,
    #[serde(default = "super::run::earlier_pool_tau")]
    pool_tau: f64,
}

/// The softmax temperature the detector pooled the features it wrote into `maps` with
/// (`detect.pool_tau`; 1 in reports from before the setting); None when `maps` holds no detect
/// report naming pooled features.
pub fn pooled_tau(maps: &Path) -> Option<f64> {
    let r: PooledPart = report(maps).ok()?;
    r.pooled_features.map(|_| r.pool_tau)
}

/// Whether `maps` holds pooled features the detector wrote at the temperature `tau`.
pub fn pooled_at(maps: &Path, tau: f64) -> bool {
    maps.join(super::pooled::DETECT_FEATURES_FILE).is_file() && pooled_tau(maps) == Some(tau)
}

fn report<T: serde::de::DeserializeOwned>(maps: &Path) -> Result<T> {
    let path = maps.join(REPORT_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::input(&path, format!("not a detect report: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn spec(train: bool) -> DetectSpec {
        DetectSpec::with_defaults(
            train.then(|| "/good".into()),
            "/test".into(),
            "/out".into(),
            None,
            Device::Cpu,
        )
    }

    #[test]
    fn the_default_block_is_todays_detector() {
        let mut s = spec(true);
        MapVariants::default().apply(&mut s);
        assert_eq!(s.settings(), spec(true).settings());
        let v: MapVariants =
            serde_json::from_str(r#"{"per_block": true, "holdout": 0.1}"#).unwrap();
        assert_eq!(v.blur, super::super::maps::SIGMA);
        v.apply(&mut s);
        assert!(s.per_block && s.holdout == 0.1);
        assert_ne!(s.settings(), spec(true).settings());
        // Zero-shot: no normal images to hold out or to fuse with.
        let mut z = spec(false);
        v.apply(&mut z);
        assert_eq!(z.holdout, 0.0);
        assert!(serde_json::from_str::<MapVariants>(r#"{"per_blok": true}"#).is_err());
        // `fuse_cnn`: a weight or `auto`, left off without normal images.
        let auto: MapVariants = serde_json::from_str(r#"{"fuse_cnn": "auto"}"#).unwrap();
        let half: MapVariants = serde_json::from_str(r#"{"fuse_cnn": 0.5}"#).unwrap();
        assert_eq!(
            (auto.fuse_cnn, half.fuse_cnn),
            (CnnMix::Auto, CnnMix::Weight(0.5))
        );
        let e = serde_json::from_str::<MapVariants>(r#"{"fuse_cnn": "half"}"#).unwrap_err();
        assert!(e.to_string().contains("`auto`"), "{e}");
        let (mut s, mut z) = (spec(true), spec(false));
        auto.apply(&mut s);
        auto.apply(&mut z);
        assert_eq!((s.fuse_cnn, z.fuse_cnn), (CnnMix::Auto, CnnMix::OFF));
        // `zero_shot_fraction`: the zero-shot score's share of the lowest distances; a fitted
        // run at the default keeps today's settings.
        let f: MapVariants = serde_json::from_str(r#"{"zero_shot_fraction": 0.3}"#).unwrap();
        let mut z = spec(false);
        f.apply(&mut z);
        assert_eq!(z.zero_shot_fraction, 0.3);
        assert_ne!(z.settings(), spec(false).settings());
        assert!(!serde_json::to_string(&MapVariants::default())
            .unwrap()
            .contains("zero_shot_fraction"));
    }

    #[test]
    fn a_missing_report_is_an_error_and_no_floor_is_none() {
        let dir = std::env::temp_dir().join(format!("anomalyncd-floor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(normal_floor(&dir).is_err());
        assert_eq!(pooled_tau(&dir), None);
        std::fs::write(dir.join(REPORT_FILE), "{}").unwrap();
        assert!(normal_floor(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_pooling_temperature_enters_the_maps_and_old_reports_read_as_one() {
        let t: MapVariants = serde_json::from_str(r#"{"pool_tau": 2}"#).unwrap();
        let mut s = spec(true);
        t.apply(&mut s);
        assert_eq!(s.pool_tau, 2.0);
        assert_ne!(s.settings(), spec(true).settings());
        assert_eq!(
            MapVariants::default().pool_tau,
            crate::config::DEFAULT_POOL_TAU
        );
        // A report from before the setting pooled at 1; one without pooled features has none.
        let mut v = serde_json::json!({"pooled_features": "pooled_features.safetensors"});
        let dir = std::env::temp_dir().join(format!("anomalyncd-tau-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(REPORT_FILE), v.to_string()).unwrap();
        assert_eq!(pooled_tau(&dir), Some(1.0));
        v["pool_tau"] = 0.5.into();
        std::fs::write(dir.join(REPORT_FILE), v.to_string()).unwrap();
        assert_eq!(pooled_tau(&dir), Some(0.5));
        v["pooled_features"] = serde_json::Value::Null;
        std::fs::write(dir.join(REPORT_FILE), v.to_string()).unwrap();
        assert_eq!(pooled_tau(&dir), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
