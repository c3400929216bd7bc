//! The run configuration: the reference's `configs/AnomalyNCD.yaml` sections and keys, with the same
//! defaults, plus keys of ours (all defaulted, so the reference file loads unchanged). Unknown keys
//! are errors that name the key and its line.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use arch::ArchSpec;
pub use cache_mode::CacheFrozen;

pub mod arch;
mod cache_mode;
mod detect;
mod models;
pub use detect::{MapVariants, DEFAULT_BLUR};
pub use models::{GuidanceMode, Models, Precision};

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Binarization {
    /// Step between tried thresholds on the normalised 0..255 scale.
    pub sample_rate: u32,
    /// Shortest run of equal component counts that counts as stable.
    pub min_interval_len: usize,
    /// Erode each binary map with a 6×6 kernel before counting components.
    pub erode: bool,
    /// Ours: lower end of the threshold search range (raw map scale) instead of the smallest
    /// per-map maximum; for sets without normal images (the reference's issue #8).
    pub min_threshold: Option<f64>,
    /// Ours: what a map with no stable interval is cropped to. `peak` (default): the region
    /// around the map's maximum; `whole_image`: the reference's whole image with an empty mask.
    pub no_interval: NoInterval,
    /// Ours: refine each map before MEBin. `none` (default): the reference's maps; `guided`: the
    /// guided filter with the image as guide (`mebin::refine`).
    pub refine: Refine,
    /// Ours: the guided filter's window radius in map pixels; `null`: 1/64 of the map's shorter
    /// side, at least 2.
    pub refine_radius: Option<usize>,
    /// Ours: the guided filter's regularisation, a variance of the image's 0..1 brightness:
    /// image edges of lower contrast are smoothed over.
    pub refine_eps: f64,
}

/// `binarization.refine`: what is done to a map before MEBin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Refine {
    #[default]
    None,
    Guided,
}

/// `binarization.no_interval`: the crop of a map whose component counts have no stable interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NoInterval {
    /// The connected region around the map's maximum (see `mebin::peak`).
    #[default]
    Peak,
    /// The reference's behaviour: threshold at the top level, whole-image crop, empty mask.
    WholeImage,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Training {
    pub batch_size: usize,
    pub num_workers: usize,
    pub lr: f64,
    pub gamma: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub epochs: usize,
    /// Ours: train the unfrozen blocks on cached frozen-prefix tokens of a fixed bank of views
    /// (`true`, `false`, or `auto`: on the CPU only).
    pub cache_frozen: CacheFrozen,
    /// Ours: augmented views per crop in that bank.
    pub cache_views: usize,
    /// Ours: the seed of that bank's views; `null`: `experiment.seed`. Fixing it lets runs that
    /// differ only in `experiment.seed` share one token cache.
    pub view_seed: Option<u64>,
}

impl Training {
    /// The seed of the frozen-prefix cache's augmented views.
    pub fn view_seed(&self, experiment: &Experiment) -> u64 {
        self.view_seed.unwrap_or(experiment.seed)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Loss {
    pub sup_weight: f64,
    pub memax_weight: f64,
    pub anomaly_thred: f64,
    pub teacher_temp: f64,
    pub warmup_teacher_temp: f64,
    pub warmup_teacher_temp_epochs: usize,
    pub repeat_times: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Experiment {
    pub seed: u64,
    pub print_freq: usize,
    pub table_root: PathBuf,
    pub exp_name: String,
    pub exp_root: PathBuf,
}

/// Ours: region merging at image level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Inference {
    /// Temperature T of the softmax over sqrt(mask area) / T; unset = 100 for MVTec-style data,
    /// 50 otherwise (the reference's values).
    pub merge_temperature: Option<f64>,
}

impl Default for Binarization {
    fn default() -> Self {
        Self {
            sample_rate: 4,
            min_interval_len: 4,
            erode: true,
            min_threshold: None,
            no_interval: NoInterval::Peak,
            refine: Refine::None,
            refine_radius: None,
            refine_eps: 1e-3,
        }
    }
}

impl Default for Training {
    fn default() -> Self {
        Self {
            batch_size: 32,
            num_workers: 8,
            lr: 0.003,
            gamma: 0.1,
            momentum: 0.9,
            weight_decay: 5e-5,
            epochs: 50,
            cache_frozen: CacheFrozen::Off,
            cache_views: 8,
            view_seed: None,
        }
    }
}

impl Default for Loss {
    fn default() -> Self {
        Self {
            sup_weight: 0.3,
            memax_weight: 4.0,
            anomaly_thred: 0.5,
            teacher_temp: 0.04,
            warmup_teacher_temp: 0.07,
            warmup_teacher_temp_epochs: 40,
            repeat_times: 4,
        }
    }
}

impl Default for Experiment {
    fn default() -> Self {
        Self {
            seed: 3407,
            print_freq: 3,
            table_root: "outputs/output_table".into(),
            exp_name: "AnomalyNCD".into(),
            exp_root: "outputs".into(),
        }
    }
}

/// Largest `models.n_head` (the reference uses 4).
pub const MAX_HEADS: usize = 64;
/// Largest `models.image_size` (the reference uses 224).
pub const MAX_IMAGE_SIZE: usize = 2048;
/// Largest `training.epochs` and `loss.warmup_teacher_temp_epochs`.
pub const MAX_EPOCHS: usize = 100_000;
/// Largest `training.num_workers`.
pub const MAX_WORKERS: usize = 1024;
/// Largest `training.cache_views`.
pub const MAX_CACHE_VIEWS: usize = 1024;

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
    /// set the speed (`training.num_workers`: the batches are the same with any number of
    /// workers), the logging (`experiment.print_freq`) or where a `train` command's run goes
    /// (`experiment.exp_root`, `table_root`, `exp_name`: a fingerprinted run is given its folder)
    /// are set to their defaults. Every other key, and so every key added later, is recorded.
    pub fn fingerprint(&self) -> Config {
        let (d, mut c) = (Config::default(), self.clone());
        c.training.num_workers = d.training.num_workers;
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

    /// Checks ranges that serde's types cannot express; the message names the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let b = &self.binarization;
        let m = &self.models;
        let t = &self.training;
        let l = &self.loss;
        let e = &self.experiment;
        let mut bad: Vec<String> = Vec::new();
        let mut need = |ok: bool, msg: String| {
            if !ok {
                bad.push(msg)
            }
        };
        need(
            (1..=255).contains(&b.sample_rate),
            format!(
                "binarization.sample_rate must be in 1..=255 (got {})",
                b.sample_rate
            ),
        );
        need(
            b.min_interval_len >= 1,
            "binarization.min_interval_len must be at least 1".into(),
        );
        if let Some(v) = b.min_threshold {
            need(
                v.is_finite() && v >= 0.0,
                format!("binarization.min_threshold must be a finite number >= 0 (got {v})"),
            );
        }
        need(
            b.refine_eps.is_finite() && b.refine_eps > 0.0,
            format!(
                "binarization.refine_eps must be a number > 0 (got {})",
                b.refine_eps
            ),
        );
        if let Some(r) = b.refine_radius {
            need(
                (1..=256).contains(&r),
                format!("binarization.refine_radius must be in 1..=256 (got {r})"),
            );
        }
        need(
            m.guidance_lambda.is_finite() && (0.0..=1000.0).contains(&m.guidance_lambda),
            format!(
                "models.guidance_lambda must be in [0, 1000] (got {})",
                m.guidance_lambda
            ),
        );
        match ArchSpec::by_name(&m.pretrained_backbone) {
            None => need(
                false,
                format!(
                    "models.pretrained_backbone `{}` is not known; use one of: {}",
                    m.pretrained_backbone,
                    ArchSpec::names().join(", ")
                ),
            ),
            Some(a) => {
                need(
                    m.mask_layers <= a.depth,
                    format!(
                        "models.mask_layers ({}) exceeds the depth of {} ({})",
                        m.mask_layers, a.name, a.depth
                    ),
                );
                need(
                    m.grad_from_block <= a.depth,
                    format!(
                        "models.grad_from_block ({}) exceeds the depth of {} ({})",
                        m.grad_from_block, a.name, a.depth
                    ),
                );
                need(
                    m.image_size >= a.patch_size && m.image_size.is_multiple_of(a.patch_size),
                    format!(
                        "models.image_size ({}) must be a positive multiple of the patch size of {} ({})",
                        m.image_size, a.name, a.patch_size
                    ),
                );
            }
        }
        // Upper bounds on values that size allocations: beyond them a typo (an extra digit or
        // four) would abort the process on an allocation instead of saying which key is wrong.
        need(
            (1..=MAX_HEADS).contains(&m.n_head),
            format!(
                "models.n_head must be in 1..={MAX_HEADS} (got {})",
                m.n_head
            ),
        );
        need(
            m.image_size <= MAX_IMAGE_SIZE,
            format!(
                "models.image_size must be at most {MAX_IMAGE_SIZE} (got {})",
                m.image_size
            ),
        );
        need(
            m.n_views == 2,
            format!(
                "models.n_views must be 2 (two augmented views per sample; got {})",
                m.n_views
            ),
        );
        need(
            t.batch_size >= 2,
            format!(
                "training.batch_size must be at least 2 (got {})",
                t.batch_size
            ),
        );
        need(
            (1..=MAX_EPOCHS).contains(&t.epochs),
            format!(
                "training.epochs must be in 1..={MAX_EPOCHS} (got {})",
                t.epochs
            ),
        );
        need(
            l.warmup_teacher_temp_epochs <= MAX_EPOCHS,
            format!(
                "loss.warmup_teacher_temp_epochs must be at most {MAX_EPOCHS} (got {})",
                l.warmup_teacher_temp_epochs
            ),
        );
        need(
            t.num_workers <= MAX_WORKERS,
            format!(
                "training.num_workers must be at most {MAX_WORKERS} (got {})",
                t.num_workers
            ),
        );
        need(
            t.lr.is_finite() && t.lr > 0.0,
            format!("training.lr must be > 0 (got {})", t.lr),
        );
        need(
            t.gamma.is_finite() && t.gamma > 0.0,
            format!("training.gamma must be > 0 (got {})", t.gamma),
        );
        need(
            (0.0..1.0).contains(&t.momentum),
            format!("training.momentum must be in [0, 1) (got {})", t.momentum),
        );
        need(
            t.weight_decay.is_finite() && t.weight_decay >= 0.0,
            format!(
                "training.weight_decay must be >= 0 (got {})",
                t.weight_decay
            ),
        );
        need(
            (1..=MAX_CACHE_VIEWS).contains(&t.cache_views),
            format!(
                "training.cache_views must be in 1..={MAX_CACHE_VIEWS} (got {})",
                t.cache_views
            ),
        );
        need(
            (0.0..=1.0).contains(&l.sup_weight),
            format!("loss.sup_weight must be in [0, 1] (got {})", l.sup_weight),
        );
        need(
            l.memax_weight.is_finite() && l.memax_weight >= 0.0,
            format!("loss.memax_weight must be >= 0 (got {})", l.memax_weight),
        );
        need(
            (0.0..=1.0).contains(&l.anomaly_thred),
            format!(
                "loss.anomaly_thred must be in [0, 1] (got {})",
                l.anomaly_thred
            ),
        );
        for (k, v) in [
            ("teacher_temp", l.teacher_temp),
            ("warmup_teacher_temp", l.warmup_teacher_temp),
        ] {
            need(
                v.is_finite() && v > 0.0,
                format!("loss.{k} must be > 0 (got {v})"),
            );
        }
        need(
            l.repeat_times >= 1,
            "loss.repeat_times must be at least 1".into(),
        );
        need(
            e.print_freq >= 1,
            "experiment.print_freq must be at least 1".into(),
        );
        need(
            !e.exp_name.trim().is_empty(),
            "experiment.exp_name must not be empty".into(),
        );
        if let Some(tm) = self.inference.merge_temperature {
            need(
                tm.is_finite() && tm > 0.0,
                format!("inference.merge_temperature must be > 0 (got {tm})"),
            );
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(bad.join("; "))
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

/// `section.key=value` → sets that key in the YAML tree; the value is parsed as YAML.
fn apply_override(root: &mut serde_yaml::Value, ov: &str) -> Result<()> {
    let bad = |m: &str| {
        Error::usage(format!(
            "--set {}: {} (expected section.key=value, e.g. training.epochs=5)",
            one_line(ov),
            one_line(m)
        ))
    };
    let (key, val) = ov.split_once('=').ok_or_else(|| bad("no `=`"))?;
    let parts: Vec<&str> = key.trim().split('.').collect();
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
