//! The `experiment` and `inference` sections: the seed and the `train` command's folders, and
//! region merging's temperature.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Checks;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Experiment {
    pub seed: u64,
    pub print_freq: usize,
    pub table_root: PathBuf,
    pub exp_name: String,
    pub exp_root: PathBuf,
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

impl Experiment {
    /// The values serde's types cannot refuse.
    pub(super) fn check(&self, c: &mut Checks) {
        c.need(self.print_freq >= 1, || {
            "experiment.print_freq must be at least 1".into()
        });
        c.need(!self.exp_name.trim().is_empty(), || {
            "experiment.exp_name must not be empty".into()
        });
    }
}

/// Largest `inference.refine_steps`.
pub const MAX_REFINE_STEPS: usize = 100;

/// Ours: region merging at image level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Inference {
    /// Temperature T of the softmax over sqrt(mask area) / T; unset = 100 for MVTec-style data,
    /// 50 otherwise (the reference's values).
    pub merge_temperature: Option<f64>,
    /// Steps of refinement of the merged image clusters in the trained feature space
    /// ([`crate::infer::refine`]); 0: the region-merged answer as it is (the reference).
    pub refine_steps: usize,
}

impl Inference {
    /// The ranges serde's types cannot express.
    pub(super) fn check(&self, c: &mut Checks) {
        if let Some(tm) = self.merge_temperature {
            c.need(tm.is_finite() && tm > 0.0, || {
                format!("inference.merge_temperature must be > 0 (got {tm})")
            });
        }
        let max = MAX_REFINE_STEPS;
        c.need(self.refine_steps <= max, || {
            format!(
                "inference.refine_steps must be at most {max} (got {})",
                self.refine_steps
            )
        });
    }
}
