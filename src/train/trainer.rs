//! The training loop of mask-guided representation learning (the reference's `MGRL` + `main`):
//! balanced two-view batches, the losses of [`super::losses`], SGD with cosine annealing, the
//! per-head cluster loss tracked each epoch, and an atomic checkpoint after every epoch.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use tch::{Device, Tensor};

use super::cache::TokenBank;
use super::losses::{Criterion, LossBatch};
use super::optim::{cosine_lr, Param, Sgd};
use crate::checkpoint::{
    self, load_model_state, refresh_frozen_copies, Checkpoint, CheckpointMeta, EpochRecord,
};
use crate::config::Config;
use crate::data::{NeighbourViews, TrainLoader};
use crate::device::upload;
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
    /// The frozen-prefix cache to train on (`training.cache_frozen`); `None`: fresh views.
    pub bank: Option<&'a TokenBank>,
    /// Neighbour views (`training.neighbor_views`), drawn from the bank.
    pub neighbours: Option<&'a NeighbourViews>,
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

/// SGD over the model's trainable parameters, in the reference's decay / no-decay groups.
pub fn optimiser(model: &Model, cfg: &Config) -> Sgd {
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

/// What one step trains on: fresh augmented views, or rows of the frozen-prefix cache.
enum StepInput {
    /// Both views stacked: `[2B, 3, S, S]` and `[2B, 1, S, S]`.
    Views { images: Tensor, masks: Tensor },
    /// Both views' cached tokens `[2B, L, D]` and token masks `[2B, L]`, entering `block`.
    Tokens {
        tokens: Tensor,
        hidden: Tensor,
        block: usize,
    },
}

/// One training step's data and targets (tensors on the CPU until [`Step::forward`]).
struct Step {
    input: StepInput,
    labels: Tensor,
    labelled: Tensor,
    scores: Tensor,
    len: usize,
}

impl Step {
    /// (projection, per-head logits) of both views.
    fn forward(&self, model: &Model, dev: Device) -> Result<(Tensor, Vec<Tensor>)> {
        let cls = match &self.input {
            StepInput::Views { images, masks } => model
                .backbone
                .forward(&upload(images, dev), &upload(masks, dev))?,
            StepInput::Tokens {
                tokens,
                hidden,
                block,
            } => model.backbone.forward_from_guide(
                &upload(tokens, dev),
                &upload(hidden, dev),
                *block,
            )?,
        };
        Ok(model.projector.forward(&cls))
    }
}

/// The steps of `epoch`: the loader's augmented batches, or, with a bank, the same samples with
/// two of their cached views each, gathered onto `device` (the half-precision rows cross to a
/// GPU before they are widened to f32).
fn steps_of<'a>(
    loader: &'a TrainLoader,
    bank: Option<&'a TokenBank>,
    neighbours: Option<&'a NeighbourViews>,
    epoch: usize,
    seed: u64,
    device: Device,
) -> Box<dyn Iterator<Item = Result<Step>> + 'a> {
    match bank {
        None => Box::new(loader.epoch(epoch).map(|b| {
            b.map(|b| Step {
                len: b.len(),
                input: StepInput::Views {
                    images: Tensor::cat(&b.views, 0),
                    masks: Tensor::cat(&b.masks, 0),
                },
                labels: b.labels,
                labelled: b.labelled,
                scores: b.scores,
            })
        })),
        Some(bank) => Box::new(loader.sampler().epoch(epoch).into_iter().enumerate().map(
            move |(b, idx)| {
                let (first, second) = bank.pick(seed, epoch, b, &idx, neighbours);
                let rows: Vec<i64> = first.into_iter().chain(second).collect();
                let (tokens, hidden) = bank.gather(&rows, device)?;
                let (labels, labelled, scores) = loader.targets(&idx);
                Ok(Step {
                    len: idx.len(),
                    input: StepInput::Tokens {
                        tokens,
                        hidden,
                        block: bank.block(),
                    },
                    labels,
                    labelled,
                    scores,
                })
            },
        )),
    }
}

/// Everything an epoch's steps read besides the model and the optimiser.
pub struct EpochData<'a> {
    pub cfg: &'a Config,
    pub loader: &'a TrainLoader,
    pub criterion: &'a Criterion,
    /// The frozen-prefix cache, when training on it.
    pub bank: Option<&'a TokenBank>,
    /// Neighbour views (`training.neighbor_views`), drawn from the bank.
    pub neighbours: Option<&'a NeighbourViews>,
    pub device: Device,
    /// The checkpoint a NaN loss message points to.
    pub last_good: &'a std::path::Path,
}

/// Sums over the steps of one epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochSums {
    /// Per head, the sum over steps of its cluster loss.
    pub head_cluster: Vec<f64>,
    /// Sum over samples of the step's total loss.
    pub loss: f64,
    pub samples: usize,
    pub steps: usize,
}

/// Runs the steps of `epoch` at learning rate `lr`: at most `limit` batches (benchmarks),
/// advancing `pb` by one per batch.
pub fn run_epoch(
    model: &Model,
    opt: &mut Sgd,
    data: &EpochData,
    epoch: usize,
    lr: f64,
    limit: Option<usize>,
    pb: &indicatif::ProgressBar,
) -> Result<EpochSums> {
    let (cfg, loader, criterion, dev) = (data.cfg, data.loader, data.criterion, data.device);
    let epochs = cfg.training.epochs;
    let n_head = cfg.models.n_head;
    let t0 = Instant::now();
    let steps_iter = steps_of(
        loader,
        data.bank,
        data.neighbours,
        epoch,
        cfg.experiment.seed,
        dev,
    )
    .take(limit.unwrap_or(usize::MAX));
    let mut head_sums = vec![0.0f64; n_head];
    let (mut loss_sum, mut samples, mut steps) = (0.0f64, 0usize, 0usize);
    for (b, batch) in steps_iter.enumerate() {
        let batch = batch?;
        pb.inc(1);
        crate::threads::tick();
        if !criterion.accepts(&batch.labelled) {
            log::debug!(
                "epoch {epoch} batch {b}: lacks base or novel crops, skipped (as the reference)"
            );
            continue;
        }
        let (proj, logits) = batch.forward(model, dev)?;
        // The targets stay on the CPU: the loss checks them and builds its row indices there,
        // and moves only the indices and values it needs, so a GPU step does not wait on them.
        let losses = criterion.compute(
            &LossBatch {
                logits: &logits,
                proj: &proj,
                labels: &batch.labels,
                labelled: &batch.labelled,
                crop_scores: &batch.scores,
            },
            epoch,
        )?;
        let v = losses.values();
        if !v.total.is_finite() {
            return Err(Error::runtime(format!(
                "the loss became {} at epoch {} batch {b} (lr {lr:.2e}); training stopped, the last good checkpoint is {} — lower training.lr or check the data",
                v.total,
                epoch + 1,
                data.last_good.display()
            )));
        }
        opt.zero_grad();
        losses.total.backward();
        opt.step(lr);
        if super::interrupt::requested() {
            let how = if epoch == 0 {
                "no epoch is complete yet: run the same command again".to_string()
            } else {
                format!(
                    "{} holds epoch {epoch}: continue with the same command and --resume",
                    data.last_good.display()
                )
            };
            return Err(Error::Interrupted(format!(
                "interrupted in epoch {} after batch {}; {how}",
                epoch + 1,
                b + 1
            )));
        }
        for (s, h) in head_sums.iter_mut().zip(&v.head_cluster) {
            *s += h;
        }
        loss_sum += v.total * batch.len as f64;
        samples += batch.len;
        steps += 1;
        pb.set_message(format!(
            "loss {:.4}, {:.1} samples/s",
            v.total,
            samples as f64 / t0.elapsed().as_secs_f64()
        ));
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
    Ok(EpochSums {
        head_cluster: head_sums,
        loss: loss_sum,
        samples,
        steps,
    })
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
    let bank = plan.bank;
    for epoch in start..epochs {
        let lr = cosine_lr(cfg.training.lr, epoch, epochs);
        let t0 = Instant::now();
        let pb = crate::logging::progress(
            loader.num_batches() as u64,
            &format!("epoch {}/{epochs}", epoch + 1),
        );
        let data = EpochData {
            cfg,
            loader,
            criterion,
            bank,
            neighbours: plan.neighbours,
            device: dev,
            last_good: &plan.checkpoint,
        };
        let EpochSums {
            head_cluster: head_sums,
            loss: loss_sum,
            samples,
            steps,
        } = run_epoch(model, &mut opt, &data, epoch, lr, None, &pb)?;
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
            answer: Default::default(),
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
