//! The pretrained backbone's view of a crop set, before training: the K estimate on its class
//! tokens and the training-free row (k-means with the set's K on the same tokens), which says
//! what training adds. Part of the `train` stage ([`super::train`]).

use std::sync::Arc;

use super::TrainSpec;
use crate::cluster::{
    estimate, estimate_k, fit, set_tokens, KEstimate, KMeansOptions, NumClasses, SetTokens,
};
use crate::config::{Config, GuidanceMode, ImageAssign};
use crate::data::{CropSet, NovelSource};
use crate::error::Result;
use crate::infer::answer_k::KRead;
use crate::infer::predict::{predict_assigned, score};
use crate::metrics::Scores;
use crate::model::Model;

/// The guidance `--num-classes auto` reads K under when it is not the training's own, which
/// costs a separate backbone pass: the crop's map within its binary mask when training guides
/// by the map over the whole crop (`soft`). Over the whole crop the tokens' eigengap chose 3 of
/// MTD's 5 types on the fitted and zero-shot protocols, within the mask 4 (and K within ±1 on
/// all five benchmark protocols; docs/results.md, "soft guidance over the whole crop").
/// What [`pretrained_view`] found: the K estimate (if made) and the pretrained tokens with the
/// guidance they were computed under.
pub(super) struct PretrainedView {
    pub estimate: Option<KEstimate>,
    pub tokens: SetTokens,
    pub guidance: GuidanceMode,
}

pub(super) fn separate_estimate_guidance(training: GuidanceMode) -> Option<GuidanceMode> {
    (training == GuidanceMode::Soft).then_some(GuidanceMode::SoftMasked)
}

/// The K estimate and the pretrained class tokens of the novel crops (and of some base crops)
/// under the training's own guidance, for the training-free row. With `required` false (K is
/// given) an estimate that cannot be made is skipped, and so is one whose tokens would not be
/// `auto`'s ([`separate_estimate_guidance`]): computing those would cost a backbone pass over
/// every crop. When `required` and the guidances differ, K comes from that extra pass (without
/// the bank) and the returned tokens from the bank; without a bank they are the extra pass's,
/// as a second pass would cost as much again (the training-free row's log line says which).
pub(super) fn pretrained_view(
    spec: &TrainSpec,
    cfg: &Config,
    set: &Arc<CropSet>,
    model: &Model,
    bank: Option<&dyn crate::model::PrefixTokens>,
    required: bool,
) -> Result<Option<PretrainedView>> {
    let own = cfg.models.guidance;
    let separate = separate_estimate_guidance(own);
    let view = |estimate, tokens, guidance| {
        Ok(Some(PretrainedView {
            estimate,
            tokens,
            guidance,
        }))
    };
    if required {
        let Some(guidance) = separate else {
            let (est, tokens) = estimate_k(model, set, cfg, spec.max_classes, bank, spec.device)?;
            return view(Some(est), tokens, own);
        };
        log::info!(
            "K is estimated on tokens guided by the crops' maps within their masks (as \
             models.guidance=soft_masked; training guides over the whole crop): one backbone pass \
             over the crops"
        );
        let novel = NovelSource::from_binarize_out(&spec.binarize_out).with_guidance(guidance);
        let masked = Arc::new(CropSet::load(spec.base.as_deref(), &novel, Some(1))?);
        let (est, masked_tokens) =
            estimate_k(model, &masked, cfg, spec.max_classes, None, spec.device)?;
        return match bank {
            Some(bank) => {
                let tokens = set_tokens(model, set, cfg, Some(bank), spec.device, false)?;
                view(Some(est), tokens, own)
            }
            None => view(Some(est), masked_tokens, guidance),
        };
    }
    let tokens = set_tokens(
        model,
        set,
        cfg,
        bank,
        spec.device,
        set.num_base_classes() > 0,
    )?;
    if separate.is_some() {
        log::info!(
            "K is given ({}); not estimated beside it: `auto` reads K from tokens guided within \
             the masks, which would cost another backbone pass",
            set.num_novel_clusters
        );
        return view(None, tokens, own);
    }
    let est = estimate(
        tokens.novel.view(),
        tokens.base.view(),
        &tokens.base_labels,
        spec.max_classes,
        cfg.training.k_criterion(),
        cfg.experiment.seed,
    );
    match est {
        Ok(est) => {
            log::info!(
                "K is given ({}); --num-classes auto would choose {} on these crops",
                set.num_novel_clusters,
                est.chosen
            );
            view(Some(est), tokens, own)
        }
        Err(e) => {
            log::debug!("no K estimate beside the given K: {e}");
            Ok(None)
        }
    }
}

/// k-means with the set's K on the pretrained novel tokens (computed under `guidance`), merged
/// per image and scored like the trained model (the same merge temperature and, under
/// `inference.assign: spectral`, the images then clustered by their pretrained features as the
/// trained model's are by its own, `read` saying how `inference.num_clusters: auto` reads K);
/// `None` without true types.
pub(super) fn training_free_scores(
    cfg: &Config,
    set: &CropSet,
    tokens: &SetTokens,
    guidance: GuidanceMode,
    merge_temperature: f64,
    read: KRead,
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
    let mut preds = predict_assigned(
        set,
        &tokens.novel_items,
        &fitted.assign,
        k,
        merge_temperature,
    )?;
    let how = match cfg.inference.assign {
        ImageAssign::Heads => "k-means",
        ImageAssign::Spectral => {
            preds.class_tokens = tokens
                .novel
                .rows()
                .into_iter()
                .map(|r| r.to_vec())
                .collect();
            let seed = cfg.experiment.seed;
            crate::infer::spectral::assign(&mut preds, &cfg.inference, seed, None, read)?;
            "spectral clustering of the images"
        }
    };
    let scores = score(&preds)?.map(|s| s.image.scores());
    if let Some(Scores { nmi, ari, f1 }) = scores {
        log::info!(
            "training-free: {how} (K = {}) on the pretrained class tokens ({} guidance): NMI \
             {nmi:.4} ARI {ari:.4} F1 {f1:.4}",
            preds.num_clusters,
            guidance.name()
        );
    }
    Ok(scores)
}

/// The novel heads to train after `--num-classes auto` estimated `est`: the estimate, or, where
/// the answer's K is read after training (`inference.num_clusters: auto`), the largest K the
/// estimate compared, so that the trained graph can hold more types than the pretrained tokens
/// showed ([`crate::infer::answer_k`]).
pub(super) fn novel_heads(cfg: &Config, est: &KEstimate) -> usize {
    if !cfg.inference.reads_k() {
        return est.chosen;
    }
    // The chosen K is one of the scored ones, so the largest is at least the chosen.
    let top = est.scores.iter().map(|s| s.k).max().unwrap_or(est.chosen);
    log::info!(
        "training with {top} novel clusters (--max-classes): the answer's K is read from the \
         trained features (inference.num_clusters: auto)"
    );
    top
}

/// How `inference.num_clusters: auto` reads K: not below the estimate `--num-classes auto` made.
pub(super) fn k_read(spec: &TrainSpec, cfg: &Config, estimate: Option<&KEstimate>) -> KRead {
    let auto = spec.num_classes == NumClasses::Auto;
    KRead {
        criterion: cfg.training.k_criterion(),
        floor: estimate.filter(|_| auto).map(|e| e.chosen),
    }
}
