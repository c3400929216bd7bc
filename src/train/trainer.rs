//! The training loop of mask-guided representation learning (the reference's `MGRL` + `main`):
//! balanced two-view batches, the losses of [`super::losses`], SGD with cosine annealing, the
//! per-head cluster loss tracked each epoch, and an atomic checkpoint after every epoch.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use tch::{Device, Tensor};

use super::checkpoint::{self, Checkpoint, CheckpointMeta, EpochRecord};
use super::losses::{has_base_and_novel, Criterion, LossBatch};
use super::optim::{cosine_lr, Param, Sgd};
use crate::config::Config;
use crate::data::TrainLoader;
use crate::error::{Error, Result};
use crate::model::{param_groups, Model};

/// What the loop needs besides the model and the data.
pub struct TrainPlan<'a> {
    pub cfg: &'a Config,
    pub device: Device,
    /// `checkpoint.safetensors` of the run folder.
    pub checkpoint: PathBuf,
    /// Metadata written with every checkpoint (epoch, head and history are filled in here).
    pub meta: CheckpointMeta,
    /// A checkpoint to continue from (`--resume`).
    pub resume: Option<Checkpoint>,
    /// Stop (with a checkpoint) once this many epochs are complete, before `training.epochs`.
    pub stop_after: Option<usize>,
}

/// The result of training: the history and the head chosen for prediction.
pub struct TrainOutcome {
    pub meta: CheckpointMeta,
    /// Training stopped early (`stop_after`); resume to finish.
    pub stopped: bool,
}

/// The model's variables by name (what a checkpoint stores under `model.`).
pub fn model_state(model: &Model) -> BTreeMap<String, Tensor> {
    model.vs.variables().into_iter().collect()
}

/// Copies checkpoint tensors into the model; every variable must be present with its shape.
pub fn load_model_state(
    model: &mut Model,
    state: &BTreeMap<String, Tensor>,
    origin: &std::path::Path,
) -> Result<()> {
    let vars = model.vs.variables();
    for (name, var) in &vars {
        let src = state.get(name).ok_or_else(|| {
            Error::input(origin, format!("checkpoint lacks tensor {name}: it was written for another model configuration"))
        })?;
        if src.size() != var.size() {
            return Err(Error::input(
                origin,
                format!(
                    "checkpoint tensor {name} has shape {:?}, the model needs {:?}: it was written for another architecture or class count",
                    src.size(),
                    var.size()
                ),
            ));
        }
        tch::no_grad(|| var.shallow_clone().copy_(&src.to_device(var.device())));
    }
    if let Some(extra) = state.keys().find(|k| !vars.contains_key(*k)) {
        return Err(Error::input(
            origin,
            format!(
                "checkpoint has tensor {extra} that this model does not: another configuration"
            ),
        ));
    }
    Ok(())
}

/// Remakes the low-precision copies of the frozen prefix from the (just loaded) f32 weights.
pub fn refresh_frozen_copies(model: &mut Model, cfg: &Config, device: Device) {
    let kind = crate::model::precision::frozen_kind(cfg.models.precision, device);
    model
        .backbone
        .set_frozen_kind(kind, cfg.models.grad_from_block);
}

fn optimiser(model: &Model, cfg: &Config) -> Sgd {
    let groups = param_groups(&model.vs);
    let params = groups
        .decay
        .into_iter()
        .map(|(name, tensor)| Param {
            name,
            tensor,
            decay: true,
        })
        .chain(groups.no_decay.into_iter().map(|(name, tensor)| Param {
            name,
            tensor,
            decay: false,
        }))
        .collect();
    Sgd::new(params, cfg.training.momentum, cfg.training.weight_decay)
}

/// Trains from the plan's start epoch to `training.epochs`, writing a checkpoint after each.
pub fn train(
    model: &mut Model,
    loader: &TrainLoader,
    criterion: &Criterion,
    mut plan: TrainPlan,
) -> Result<TrainOutcome> {
    let cfg = plan.cfg;
    let epochs = cfg.training.epochs;
    let n_head = cfg.models.n_head;
    let mut opt = optimiser(model, cfg);
    let mut start = 0;
    if let Some(ck) = plan.resume.take() {
        load_model_state(model, &ck.model, &plan.checkpoint)?;
        refresh_frozen_copies(model, cfg, plan.device);
        opt.load_state(
            ck.optim
                .into_iter()
                .map(|(k, v)| (k, v.to_device(plan.device)))
                .collect(),
        );
        start = ck.meta.epoch;
        plan.meta.history = ck.meta.history;
        plan.meta.chosen_head = ck.meta.chosen_head;
        log::info!(
            "resuming after epoch {start} of {epochs} from {}",
            plan.checkpoint.display()
        );
    }
    let dev = plan.device;
    for epoch in start..epochs {
        let lr = cosine_lr(cfg.training.lr, epoch, epochs);
        let t0 = Instant::now();
        let pb = crate::logging::progress(
            loader.num_batches() as u64,
            &format!("epoch {}/{epochs}", epoch + 1),
        );
        let mut head_sums = vec![0.0f64; n_head];
        let (mut loss_sum, mut samples, mut steps) = (0.0f64, 0usize, 0usize);
        for (b, batch) in loader.epoch(epoch).enumerate() {
            let batch = batch?;
            pb.inc(1);
            if !has_base_and_novel(&batch.labelled) {
                log::debug!("epoch {epoch} batch {b}: only base or only novel crops, skipped (as the reference)");
                continue;
            }
            let images = Tensor::cat(&batch.views, 0).to_device(dev);
            let masks = Tensor::cat(&batch.masks, 0).to_device(dev);
            let (_, proj, logits) = model.forward(&images, &masks)?;
            let labels = batch.labels.to_device(dev);
            let labelled = batch.labelled.to_device(dev);
            let scores = batch.scores.to_device(dev);
            let losses = criterion.compute(
                &LossBatch {
                    logits: &logits,
                    proj: &proj,
                    labels: &labels,
                    labelled: &labelled,
                    crop_scores: &scores,
                },
                epoch,
            )?;
            let v = losses.values();
            if !v.total.is_finite() {
                return Err(Error::runtime(format!(
                    "the loss became {} at epoch {} batch {b} (lr {lr:.2e}); training stopped, the last good checkpoint is {} — lower training.lr or check the data",
                    v.total,
                    epoch + 1,
                    plan.checkpoint.display()
                )));
            }
            opt.zero_grad();
            losses.total.backward();
            opt.step(lr);
            for (s, h) in head_sums.iter_mut().zip(&v.head_cluster) {
                *s += h;
            }
            loss_sum += v.total * batch.len() as f64;
            samples += batch.len();
            steps += 1;
            pb.set_message(format!("loss {:.4}", v.total));
            if b % cfg.experiment.print_freq == 0 {
                log::debug!(
                    "epoch {}/{epochs} batch {b}/{}: loss {:.5} cls_loss {:.4} cluster_loss {:.4} sup_con_loss {:.4} contrastive_loss {:.4}",
                    epoch + 1,
                    loader.num_batches(),
                    v.total,
                    v.cls,
                    v.cluster,
                    v.sup_con,
                    v.contrastive
                );
            }
        }
        pb.finish_and_clear();
        if steps == 0 {
            return Err(Error::usage(
                "no training batch held both base and novel crops: add base or novel crops, or raise training.batch_size",
            ));
        }
        let head_means: Vec<f64> = head_sums.iter().map(|s| s / steps as f64).collect();
        let rec = EpochRecord {
            epoch: epoch + 1,
            mean_loss: loss_sum / samples as f64,
            head_cluster_losses: head_means.clone(),
            lr,
            seconds: t0.elapsed().as_secs_f64(),
        };
        log::info!(
            "epoch {}/{epochs}: loss {:.4}, head cluster losses [{}], {:.1} samples/s",
            epoch + 1,
            rec.mean_loss,
            head_means
                .iter()
                .map(|v| format!("{v:.4}"))
                .collect::<Vec<_>>()
                .join(", "),
            samples as f64 / rec.seconds
        );
        plan.meta.history.push(rec);
        plan.meta.epoch = epoch + 1;
        plan.meta.chosen_head = crate::infer::best_head(&head_means).unwrap_or(0);
        let optim = opt
            .state()
            .iter()
            .map(|(k, v)| (k.clone(), v.shallow_clone()))
            .collect();
        let ck = Checkpoint {
            meta: plan.meta.clone(),
            model: model_state(model),
            optim,
        };
        checkpoint::save(&plan.checkpoint, &ck)?;
        if plan.stop_after == Some(epoch + 1) && epoch + 1 < epochs {
            return Ok(TrainOutcome {
                meta: plan.meta,
                stopped: true,
            });
        }
    }
    Ok(TrainOutcome {
        meta: plan.meta,
        stopped: false,
    })
}
