//! Clustering without training: k-means over the pretrained backbone's mask-guided class
//! tokens, used to estimate the number of novel defect types (`--num-classes auto`) and as the
//! k-means baseline (`anomalyncd baseline --method kmeans`) that shows what training adds.

pub(crate) mod estimate;
pub(crate) mod features;
pub(crate) mod kmeans;
pub mod spectral;

pub use estimate::{estimate, KEstimate, KScore};
pub use kmeans::{fit, KMeansFit, KMeansOptions};

use std::sync::Arc;

use ndarray::{Array2, Axis};
use tch::Device;

use crate::config::{Config, KCriterion};
use crate::data::CropSet;
use crate::error::{Error, Result};
use crate::model::{Model, PrefixTokens};

/// How many novel clusters to form (`--num-classes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumClasses {
    /// One per novel type folder (the reference's rule).
    FromFolders,
    Fixed(usize),
    /// Estimated from the pretrained class tokens ([`estimate_k`]).
    Auto,
}

impl NumClasses {
    /// The form an output folder's fingerprint records: with `auto` under the default
    /// criterion it names the criterion, which then reads K; otherwise the form such folders
    /// have held (the earlier rule's runs included).
    pub fn recorded(&self, criterion: KCriterion) -> String {
        match (self, criterion) {
            (Self::Auto, KCriterion::EigengapScales) => format!("{self:?} ({criterion:?})"),
            _ => format!("{self:?}"),
        }
    }

    /// `--num-classes`: absent, `auto`, or a positive whole number.
    pub fn parse(v: Option<&str>) -> Result<Self> {
        match v {
            None => Ok(Self::FromFolders),
            Some(s) if s.eq_ignore_ascii_case("auto") => Ok(Self::Auto),
            Some(s) => match s.parse::<usize>() {
                Ok(k) if k >= 1 => Ok(Self::Fixed(k)),
                _ => Err(Error::usage(format!(
                    "--num-classes {s}: expected a positive whole number or `auto`"
                ))),
            },
        }
    }
}

/// Estimates the number of novel types of `set` from the pretrained backbone's class tokens
/// (base crops included for the base check), and logs the scores per K. Returns the estimate
/// and the tokens, which the k-means baseline clusters next.
pub fn estimate_k(
    model: &Model,
    set: &Arc<CropSet>,
    cfg: &Config,
    max_classes: usize,
    bank: Option<&dyn PrefixTokens>,
    device: Device,
) -> Result<(KEstimate, SetTokens)> {
    let tokens = set_tokens(model, set, cfg, bank, device, set.num_base_classes() > 0)?;
    let est = estimate(
        tokens.novel.view(),
        tokens.base.view(),
        &tokens.base_labels,
        max_classes,
        cfg.training.k_criterion(),
        cfg.experiment.seed,
    )?;
    log::info!(
        "--num-classes auto: {} novel defect types ({}; K = 2..{}):\n{}",
        est.chosen,
        est.criterion,
        est.scores.last().map(|s| s.k).unwrap_or(2),
        est.table()
    );
    Ok((est, tokens))
}

/// Base crops per class used by the estimate's base check: enough to tell classes apart, few
/// enough that the extra backbone passes stay short on a CPU.
pub const BASE_PER_CLASS: usize = 50;

/// Class tokens `[n, D]` of a set's novel crops (in `set.novel_indices()` order) and, when
/// `with_base`, `[m, D]` of up to [`BASE_PER_CLASS`] base crops per class with their class
/// indices.
pub struct SetTokens {
    pub novel_items: Vec<usize>,
    pub novel: Array2<f32>,
    pub base: Array2<f32>,
    pub base_labels: Vec<usize>,
}

pub fn set_tokens(
    model: &Model,
    set: &Arc<CropSet>,
    cfg: &Config,
    bank: Option<&dyn PrefixTokens>,
    device: Device,
    with_base: bool,
) -> Result<SetTokens> {
    let novel_items = set.novel_indices();
    let mut base_items = Vec::new();
    if with_base {
        let mut per_class = vec![0usize; set.num_base_classes()];
        for i in set.base_indices() {
            if let Some(c) = set.items[i].label {
                if per_class[c] < BASE_PER_CLASS {
                    per_class[c] += 1;
                    base_items.push(i);
                }
            }
        }
    }
    let all: Vec<usize> = novel_items.iter().chain(&base_items).copied().collect();
    let tokens = features::class_tokens(model, set.clone(), all, cfg, bank, device)?;
    let (novel, base) = tokens.view().split_at(Axis(0), novel_items.len());
    let base_labels = base_items
        .iter()
        .map(|&i| set.items[i].label.unwrap_or(0))
        .collect();
    Ok(SetTokens {
        novel: novel.to_owned(),
        base: base.to_owned(),
        novel_items,
        base_labels,
    })
}
