//! The run configuration: the reference's `configs/AnomalyNCD.yaml` sections and keys, with the same
//! defaults, plus keys of ours (all defaulted, so the reference file loads unchanged). Unknown keys
//! are errors that name the key and its line.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use arch::ArchSpec;
pub use cache_mode::CacheFrozen;

pub mod arch;
mod binarization;
mod cache_mode;
mod detect;
mod experiment;
mod models;
mod training;
pub(crate) use binarization::{interval_end, is_interval_end};
pub use binarization::{Binarization, NoInterval, Refine, INTERVAL_END};
pub use detect::{
    valid_aggregate_sizes, valid_pool_tau, valid_zero_shot_fraction, CnnMix, ImageSize,
    MapVariants, DEFAULT_BLUR, DEFAULT_POOL_TAU, DEFAULT_ZERO_SHOT_FRACTION, IMAGE_SIDES,
    MAX_AGGREGATE_SIZE, MAX_BLUR, MAX_HOLDOUT, MAX_POOL_TAU,
};
pub use experiment::{ClusterCount, Experiment, ImageAssign, Inference, SpectralGraph};
pub use models::{GuidanceMode, Models, Precision, MAX_HEADS, MAX_IMAGE_SIZE};
pub use training::{
    KCriterion, Loss, NeighbourFeatures, Training, MAX_CACHE_VIEWS, MAX_EPOCHS, MAX_WORKERS,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub binarization: Binarization,
    pub models: Models,
    pub training: Training,
    pub loss: Loss,
    pub experiment: Experiment,
    pub inference: Inference,
    /// Ours: the built-in detector's map variants, as `discover` runs it.
    pub detect: MapVariants,
}

impl Config {
    /// Reads a YAML file, applies `overrides` (`section.key=value`, value in YAML syntax) and
    /// validates the result.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Config> {
        let (origin, text) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    config_error(p.display().to_string(), format!("cannot read: {e}"))
                })?;
                (p.display().to_string(), text)
            }
            None => ("(defaults)".to_string(), String::new()),
        };
        // Parse the text itself first: only then do serde_yaml's errors carry line numbers.
        let from_file: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            serde_yaml::from_str(&text).map_err(|e| config_error(&origin, e.to_string()))?
        };
        if overrides.is_empty() {
            from_file.validate().map_err(|m| config_error(&origin, m))?;
            return Ok(from_file);
        }
        let base = serde_yaml::to_value(&from_file).expect("a Config always serialises");
        let mut value = base.clone();
        for ov in overrides {
            apply_override(&mut value, ov)?;
        }
        let origin = format!("{origin} with --set");
        // serde_yaml names the key of an error only when it parses text: name the --set instead.
        let cfg = Self::from_value(value, &origin).map_err(|e| {
            let culprit = overrides.iter().find(|ov| {
                let mut one = base.clone();
                apply_override(&mut one, ov).is_ok() && Self::from_value(one, &origin).is_err()
            });
            match (culprit, e) {
                (Some(ov), Error::Config { origin, msg }) => {
                    config_error(origin, format!("--set {}: {msg}", one_line(ov)))
                }
                (_, e) => e,
            }
        })?;
        cfg.validate().map_err(|m| config_error(origin, m))?;
        Ok(cfg)
    }

    fn from_value(value: serde_yaml::Value, origin: &str) -> Result<Config> {
        if value.is_null() {
            return Ok(Config::default());
        }
        serde_yaml::from_value(value).map_err(|e| config_error(origin, e.to_string()))
    }

    /// Parses YAML text (used by tests and `config check` on stdin-like input).
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<Config> {
        let cfg: Config =
            serde_yaml::from_str(text).map_err(|e| config_error(origin, e.to_string()))?;
        cfg.validate().map_err(|m| config_error(origin, m))?;
        Ok(cfg)
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("a Config always serialises")
    }

    /// The config as far as it decides a run's results, for fingerprints: the keys that only
    /// set the speed (`training.num_workers`, `training.cache_ram_gb`: the batches are the same with any number of
    /// workers), the logging (`experiment.print_freq`) or where a `train` command's run goes
    /// (`experiment.exp_root`, `table_root`, `exp_name`: a fingerprinted run is given its folder)
    /// are set to their defaults. Every other key, and so every key added later, is recorded.
    pub fn fingerprint(&self) -> Config {
        let (d, mut c) = (Config::default(), self.clone());
        c.training.num_workers = d.training.num_workers;
        c.training.cache_ram_gb = d.training.cache_ram_gb;
        c.experiment.print_freq = d.experiment.print_freq;
        c.experiment.exp_root = d.experiment.exp_root;
        c.experiment.table_root = d.experiment.table_root;
        c.experiment.exp_name = d.experiment.exp_name;
        c
    }

    pub fn arch(&self) -> &'static ArchSpec {
        ArchSpec::by_name(&self.models.pretrained_backbone)
            .expect("validate() checked the backbone name")
    }

    /// Checks ranges that serde's types cannot express, section by section; the message names
    /// each key that is wrong.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let mut c = Checks::default();
        self.binarization.check(&mut c);
        self.models.check(&mut c);
        self.training.check(&mut c);
        self.loss.check(&mut c);
        self.experiment.check(&mut c);
        self.inference.check(&mut c);
        self.detect.check(&mut c);
        let t = &self.training;
        c.need(
            t.neighbor_features.is_none()
                || t.neighbor_views > 0.0
                || self.inference.reads_pooled(),
            || {
                "training.neighbor_features is read only with training.neighbor_views > 0 or \
                 inference.spectral_graph: trained_and_pooled"
                    .into()
            },
        );
        match c.0.is_empty() {
            true => Ok(()),
            false => Err(c.0.join("; ")),
        }
    }
}

/// The messages of a config's failed checks.
#[derive(Debug, Default)]
struct Checks(Vec<String>);

impl Checks {
    /// Records `msg()` unless `ok`.
    fn need(&mut self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.0.push(msg());
        }
    }
}

/// A config error whose message stays on one line (it may quote values from the file).
fn config_error(origin: impl Into<String>, msg: impl AsRef<str>) -> Error {
    Error::config(origin, one_line(msg.as_ref()))
}

/// `text` with its control characters (a newline in a `--set` value) escaped, so that an error
/// quoting it stays on one line.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// An override `section.key=value` (`--set`) split as [`Config::load`] reads it: the trimmed
/// `section.key` and the value's text; None without a `=`.
pub fn split_override(ov: &str) -> Option<(&str, &str)> {
    ov.split_once('=').map(|(key, val)| (key.trim(), val))
}

/// `section.key=value` → sets that key in the YAML tree; the value is parsed as YAML.
fn apply_override(root: &mut serde_yaml::Value, ov: &str) -> Result<()> {
    let bad = |m: &str| {
        Error::usage(format!(
            "--set {}: {} (expected section.key=value, e.g. training.epochs=5)",
            one_line(ov),
            one_line(m)
        ))
    };
    let (key, val) = split_override(ov).ok_or_else(|| bad("no `=`"))?;
    let parts: Vec<&str> = key.split('.').collect();
    if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(bad("the key must have exactly one dot"));
    }
    let parsed: serde_yaml::Value =
        serde_yaml::from_str(val).map_err(|e| bad(&format!("value is not YAML: {e}")))?;
    if !root.is_mapping() {
        *root = serde_yaml::Value::Mapping(Default::default());
    }
    let map = root.as_mapping_mut().expect("made a mapping above");
    let section = map
        .entry(parts[0].into())
        .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()));
    if !section.is_mapping() {
        *section = serde_yaml::Value::Mapping(Default::default());
    }
    section
        .as_mapping_mut()
        .expect("made a mapping above")
        .insert(parts[1].into(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests;
