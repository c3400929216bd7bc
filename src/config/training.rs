//! The `training` and `loss` sections: the optimiser's schedule, the frozen-prefix cache, and
//! the loss terms' weights and temperatures.

use serde::{Deserialize, Serialize};

use super::{CacheFrozen, Checks, Experiment};

/// Largest `training.epochs` and `loss.warmup_teacher_temp_epochs`.
pub const MAX_EPOCHS: usize = 100_000;
/// Largest `training.num_workers`.
pub const MAX_WORKERS: usize = 1024;
/// Largest `training.cache_views`.
pub const MAX_CACHE_VIEWS: usize = 1024;
/// Largest `training.neighbor_count`.
pub const MAX_NEIGHBOR_COUNT: usize = 100;

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
    /// Ours: the most memory (GB) the cache's rows may take; beyond it they are read from the
    /// cache file. `null`: 1 GB, or half of the memory available when that is less.
    pub cache_ram_gb: Option<f64>,
    /// Ours: the probability that an unlabelled crop's second view in a training sample is a
    /// view of one of its nearest neighbours (by the pretrained class tokens, or by
    /// `neighbor_features`) instead of its own. 0: the reference's pairs of a crop's own views.
    #[serde(skip_serializing_if = "is_no_neighbour_views")]
    pub neighbor_views: f64,
    /// Ours: how many nearest neighbours that view is drawn from.
    #[serde(skip_serializing_if = "is_default_neighbor_count")]
    pub neighbor_count: usize,
    /// Ours: find the neighbours by their images' pooled detector features instead of by the
    /// crops' pretrained class tokens: computed in the run (`pooled`) or read from a
    /// `baseline --method pooled` output folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub neighbor_features: Option<NeighbourFeatures>,
    /// Ours: how `--num-classes auto` reads K from the kNN graph of the crops' pretrained class
    /// tokens (`cluster::estimate`); `null`: [`KCriterion::default`]. Left out of the serialised
    /// section when unset, so that earlier fingerprints keep their form; the train stage records
    /// the criterion it reads K by on its own (`TrainSettings::k_criterion`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k_criterion: Option<KCriterion>,
}

/// `training.k_criterion`: where the largest eigengap is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KCriterion {
    /// `eigengap`: on one graph of round(√n) neighbours (the rule until 2026-12-06).
    Eigengap,
    /// `eigengap_scales`: on the gaps averaged over three graphs, of √n/2, √n and 2√n
    /// neighbours, so that a near tie between two peaks goes to the one every scale shows.
    #[default]
    EigengapScales,
}

/// Where `training.neighbor_features` takes the images' features from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum NeighbourFeatures {
    /// `pooled`: the detector backbone's patch features of the novel images pooled under their
    /// maps: the ones the built-in detector wrote beside its maps, else pooled in the train stage
    /// (one backbone pass over the images).
    Pooled,
    /// Any other value: a `baseline --method pooled` output folder (write `./pooled` for a
    /// folder of that name).
    Folder(std::path::PathBuf),
}

impl TryFrom<String> for NeighbourFeatures {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        match s.as_str() {
            "" => Err("training.neighbor_features: give `pooled` or a folder".into()),
            "pooled" => Ok(Self::Pooled),
            _ => Ok(Self::Folder(s.into())),
        }
    }
}

impl From<NeighbourFeatures> for String {
    fn from(f: NeighbourFeatures) -> String {
        match f {
            NeighbourFeatures::Pooled => "pooled".into(),
            NeighbourFeatures::Folder(p) => p.to_string_lossy().into_owned(),
        }
    }
}

/// The neighbour-view keys are left out of the serialised section at their defaults, so that
/// earlier fingerprints (and `discover --resume` of earlier runs) keep their form.
fn is_no_neighbour_views(v: &f64) -> bool {
    *v == 0.0
}

fn is_default_neighbor_count(v: &usize) -> bool {
    *v == DEFAULT_NEIGHBOR_COUNT
}

/// `training.neighbor_count`'s default.
pub const DEFAULT_NEIGHBOR_COUNT: usize = 5;

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
            cache_ram_gb: None,
            neighbor_views: 0.0,
            neighbor_count: DEFAULT_NEIGHBOR_COUNT,
            neighbor_features: None,
            k_criterion: None,
        }
    }
}

impl Training {
    /// `k_criterion`, or the default where it is unset.
    pub fn k_criterion(&self) -> KCriterion {
        self.k_criterion.unwrap_or_default()
    }

    /// The seed of the frozen-prefix cache's augmented views.
    pub fn view_seed(&self, experiment: &Experiment) -> u64 {
        self.view_seed.unwrap_or(experiment.seed)
    }

    /// The ranges serde's types cannot express. Upper bounds on values that size allocations or
    /// loops: beyond them a typo (an extra digit or four) would abort the process on an
    /// allocation instead of saying which key is wrong.
    pub(super) fn check(&self, c: &mut Checks) {
        c.need(self.batch_size >= 2, || {
            format!(
                "training.batch_size must be at least 2 (got {})",
                self.batch_size
            )
        });
        c.need((1..=MAX_EPOCHS).contains(&self.epochs), || {
            format!(
                "training.epochs must be in 1..={MAX_EPOCHS} (got {})",
                self.epochs
            )
        });
        c.need(self.num_workers <= MAX_WORKERS, || {
            format!(
                "training.num_workers must be at most {MAX_WORKERS} (got {})",
                self.num_workers
            )
        });
        c.need(self.lr.is_finite() && self.lr > 0.0, || {
            format!("training.lr must be > 0 (got {})", self.lr)
        });
        c.need(self.gamma.is_finite() && self.gamma > 0.0, || {
            format!("training.gamma must be > 0 (got {})", self.gamma)
        });
        c.need((0.0..1.0).contains(&self.momentum), || {
            format!(
                "training.momentum must be in [0, 1) (got {})",
                self.momentum
            )
        });
        c.need(
            self.weight_decay.is_finite() && self.weight_decay >= 0.0,
            || {
                format!(
                    "training.weight_decay must be >= 0 (got {})",
                    self.weight_decay
                )
            },
        );
        c.need(self.cache_ram_gb.is_none_or(|g| g >= 0.0), || {
            format!(
                "training.cache_ram_gb must be >= 0 or null (got {:?})",
                self.cache_ram_gb
            )
        });
        c.need((0.0..=1.0).contains(&self.neighbor_views), || {
            format!(
                "training.neighbor_views must be in [0, 1] (got {})",
                self.neighbor_views
            )
        });
        c.need(
            (1..=MAX_NEIGHBOR_COUNT).contains(&self.neighbor_count),
            || {
                format!(
                    "training.neighbor_count must be in 1..={MAX_NEIGHBOR_COUNT} (got {})",
                    self.neighbor_count
                )
            },
        );
        c.need((1..=MAX_CACHE_VIEWS).contains(&self.cache_views), || {
            format!(
                "training.cache_views must be in 1..={MAX_CACHE_VIEWS} (got {})",
                self.cache_views
            )
        });
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

impl Loss {
    /// The ranges serde's types cannot express.
    pub(super) fn check(&self, c: &mut Checks) {
        c.need(self.warmup_teacher_temp_epochs <= MAX_EPOCHS, || {
            format!(
                "loss.warmup_teacher_temp_epochs must be at most {MAX_EPOCHS} (got {})",
                self.warmup_teacher_temp_epochs
            )
        });
        c.need((0.0..=1.0).contains(&self.sup_weight), || {
            format!(
                "loss.sup_weight must be in [0, 1] (got {})",
                self.sup_weight
            )
        });
        c.need(
            self.memax_weight.is_finite() && self.memax_weight >= 0.0,
            || format!("loss.memax_weight must be >= 0 (got {})", self.memax_weight),
        );
        c.need((0.0..=1.0).contains(&self.anomaly_thred), || {
            format!(
                "loss.anomaly_thred must be in [0, 1] (got {})",
                self.anomaly_thred
            )
        });
        for (k, v) in [
            ("teacher_temp", self.teacher_temp),
            ("warmup_teacher_temp", self.warmup_teacher_temp),
        ] {
            c.need(v.is_finite() && v > 0.0, || {
                format!("loss.{k} must be > 0 (got {v})")
            });
        }
        c.need(self.repeat_times >= 1, || {
            "loss.repeat_times must be at least 1".into()
        });
    }
}
