//! The pretrained backbone's view of a crop set, before training: the K estimate on its class
//! tokens and the training-free row (k-means with the set's K on the same tokens), which says
//! what training adds. Part of the `train` stage ([`super::train`]).

use std::sync::Arc;

use super::TrainSpec;
use crate::cluster::{estimate, estimate_k, fit, set_tokens, KEstimate, KMeansOptions, SetTokens};
use crate::config::Config;
use crate::data::CropSet;
use crate::error::Result;
use crate::infer::predict::{predict_assigned, score};
use crate::metrics::Scores;
use crate::model::Model;

/// The pretrained class tokens of the novel crops (and of some base crops) and the K estimate
/// on them. With `required` false (K is given) an estimate that cannot be made is skipped.
pub(super) fn pretrained_view(
    spec: &TrainSpec,
    cfg: &Config,
    set: &Arc<CropSet>,
    model: &Model,
    bank: Option<&dyn crate::model::PrefixTokens>,
    required: bool,
) -> Result<Option<(KEstimate, SetTokens)>> {
    if required {
        return estimate_k(model, set, cfg, spec.max_classes, bank, spec.device).map(Some);
    }
    let tokens = set_tokens(
        model,
        set,
        cfg,
        bank,
        spec.device,
        set.num_base_classes() > 0,
    )?;
    let est = estimate(
        tokens.novel.view(),
        tokens.base.view(),
        &tokens.base_labels,
        spec.max_classes,
        cfg.experiment.seed,
    );
    match est {
        Ok(est) => {
            log::info!(
                "K is given ({}); --num-classes auto would choose {} on these crops",
                set.num_novel_clusters,
                est.chosen
            );
            Ok(Some((est, tokens)))
        }
        Err(e) => {
            log::debug!("no K estimate beside the given K: {e}");
            Ok(None)
        }
    }
}

/// k-means with the set's K on the pretrained novel tokens, merged per image and scored like
/// the trained model (the same merge temperature); `None` without true types.
pub(super) fn training_free_scores(
    cfg: &Config,
    set: &CropSet,
    tokens: &SetTokens,
    merge_temperature: f64,
) -> Result<Option<Scores>> {
    let k = set.num_novel_clusters;
    if tokens.novel.nrows() < k {
        return Ok(None);
    }
    let fitted = fit(
        tokens.novel.view(),
        &vec![None; tokens.novel.nrows()],
        KMeansOptions::new(k, cfg.experiment.seed),
    )?;
    let preds = predict_assigned(
        set,
        &tokens.novel_items,
        &fitted.assign,
        k,
        merge_temperature,
    )?;
    let scores = score(&preds)?.map(|s| s.image.scores());
    if let Some(Scores { nmi, ari, f1 }) = scores {
        log::info!(
            "training-free: k-means (K = {k}) on the pretrained class tokens: NMI {nmi:.4} ARI {ari:.4} F1 {f1:.4}"
        );
    }
    Ok(scores)
}
