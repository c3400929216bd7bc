//! Every loss term of one training batch, as the reference's `MGRL` step computes them:
//!
//! - contrastive: InfoNCE over the two views of all samples (temperature 1) + cross-entropy;
//! - SupCon on the labelled (base) samples (temperature 0.07);
//! - cls: cross-entropy of each head's logits / 0.1 on the labelled samples;
//! - cluster: per head, self-distillation on the unlabelled (novel) samples with the teacher
//!   temperature schedule and pseudo-label correction, plus `memax_weight` × mean-entropy
//!   maximisation;
//! - total = (1 − sup_weight)(cluster + contrastive) + sup_weight(cls + SupCon), with cls and
//!   cluster averaged over the heads.
//!
//! Without base classes (`num_labeled = 0`: no labelled set at all) the supervised terms, cls and
//! SupCon, are zero, and the total keeps its form: (1 − sup_weight)(cluster + contrastive).
//!
//! Batches are two-view: every `[2B, …]` tensor holds view 1 of the B samples in rows `0..B` and
//! view 2 in rows `B..2B` (the reference concatenates the views along the batch).
//!
//! Use: build one [`Criterion`] per run, call [`Criterion::compute`] per batch, backprop
//! `losses.total`, log [`Losses::values`]. Skip batches that [`Criterion::accepts`] refuses (with base
//! classes: those without labelled or without unlabelled samples, as the reference does).

use tch::{Device, Kind, Tensor};

use crate::config::Loss;
use crate::error::{Error, Result};

/// Temperature dividing the student logits in self-distillation, cls and me-max.
pub const STUDENT_TEMP: f64 = 0.1;
/// Temperature of SupCon (also its base temperature, so its scale factor is 1).
pub const SUPCON_TEMP: f64 = 0.07;
/// Temperature of the InfoNCE logits.
pub const INFO_NCE_TEMP: f64 = 1.0;

/// The teacher temperature of each epoch, built as the reference's `DistillLoss` builds it:
/// `linspace(warmup_teacher_temp, teacher_temp, W / R)` (integer division) with each value
/// repeated R times, then `teacher_temp` for the remaining `epochs − W` epochs
/// (W = `warmup_teacher_temp_epochs`, R = `repeat_times`).
///
/// The result always has `epochs` entries: where the warm-up is longer than the run (the
/// reference stops with a numpy error) it is cut at `epochs`; where W is not a multiple of R (the
/// reference indexes past its array in the last epochs) the end is padded with `teacher_temp`.
pub fn teacher_temp_schedule(cfg: &Loss, epochs: usize) -> Vec<f64> {
    let repeat = cfg.repeat_times.max(1);
    let steps = cfg.warmup_teacher_temp_epochs / repeat;
    let (start, stop) = (cfg.warmup_teacher_temp, cfg.teacher_temp);
    let mut out = Vec::with_capacity(epochs.max(cfg.warmup_teacher_temp_epochs));
    for i in 0..steps {
        // numpy's linspace: start + i·step, with the last value set to `stop` exactly.
        let v = if steps > 1 && i == steps - 1 {
            stop
        } else if steps > 1 {
            i as f64 * ((stop - start) / (steps - 1) as f64) + start
        } else {
            start
        };
        out.extend(std::iter::repeat_n(v, repeat));
    }
    out.extend(std::iter::repeat_n(
        stop,
        epochs.saturating_sub(cfg.warmup_teacher_temp_epochs),
    ));
    out.truncate(epochs);
    out.resize(epochs, stop);
    out
}

/// Pseudo-label correction weights: `max(0, anomaly_thred − score)` per crop score (any shape).
/// A crop the detector scores weakly is pulled towards the first novel class.
pub fn pseudo_label_weights(crop_scores: &Tensor, anomaly_thred: f64) -> Tensor {
    (-crop_scores + anomaly_thred).clamp_min(0.0)
}

/// Reduction over the class / feature dimension of `[N, …]` tensors.
const ROWS: &[i64] = &[1];
/// Reduction over the samples of `[N, …]` tensors.
const BATCH: &[i64] = &[0];

/// L2-normalises the rows of `x` `[N, D]` as `F.normalize` does (norm floored at 1e-12).
fn normalize_rows(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2.0, [-1], true).clamp_min(1e-12)
}

/// Cross-entropy with mean reduction, in the logits' own dtype.
fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Tensor {
    logits.log_softmax(-1, None).nll_loss(targets)
}

/// Unsupervised contrastive loss of projections `proj` `[2B, D]` (two views): the InfoNCE logits
/// (cosine similarity / `temperature` to every other row; the other view of the same sample is
/// the positive) under cross-entropy, averaged over the 2B rows. Returns a scalar.
///
/// Equal to the reference's `info_nce_logits` + `CrossEntropyLoss`: the order in which it lays
/// out the negatives does not change a cross-entropy whose target is the positive.
pub fn contrastive_loss(proj: &Tensor, temperature: f64) -> Tensor {
    let n = proj.size()[0];
    let f = normalize_rows(proj);
    let sim = f.matmul(&f.tr()) / temperature;
    let eye = Tensor::eye(n, (Kind::Bool, proj.device()));
    let lse = sim
        .masked_fill(&eye, f64::NEG_INFINITY)
        .logsumexp([1], false);
    let partner = (Tensor::arange(n, (Kind::Int64, proj.device())) + n / 2).remainder(n);
    let pos = sim.gather(1, &partner.unsqueeze(1), false).squeeze_dim(1);
    (lse - pos).mean(None)
}

/// Supervised contrastive loss (Khosla et al., "all" anchors) of `features` `[N, V, D]`
/// (L2-normalised, V views per sample) with class `labels` `[N]`: for every anchor row, the mean
/// log-probability of its positives (same label, other rows) among all other rows, at
/// `temperature`, scaled by `temperature / SUPCON_TEMP`, negated and averaged. Returns a scalar.
pub fn sup_con_loss(features: &Tensor, labels: &Tensor, temperature: f64) -> Tensor {
    let size = features.size();
    let (n, views) = (size[0], size[1]);
    let device = features.device();
    let contrast = Tensor::cat(&features.unbind(1), 0); // [V·N, D], view-major
    let dots = contrast.matmul(&contrast.tr()) / temperature;
    // Subtracting the row maximum changes nothing but the float range.
    let logits = &dots - dots.max_dim(1, true).0.detach();
    let labels = labels.view([-1, 1]);
    let same = labels
        .eq_tensor(&labels.tr())
        .to_kind(logits.kind())
        .repeat([views, views]);
    let not_self = Tensor::ones([views * n, views * n], (logits.kind(), device))
        - Tensor::eye(views * n, (logits.kind(), device));
    let positives = same * &not_self;
    let denom = (logits.exp() * &not_self)
        .sum_dim_intlist(ROWS, true, None)
        .log();
    let log_prob = &logits - denom;
    let mean_log_prob_pos = (&positives * log_prob).sum_dim_intlist(ROWS, false, None)
        / positives.sum_dim_intlist(ROWS, false, None);
    (mean_log_prob_pos * (-temperature / SUPCON_TEMP)).mean(None)
}

/// Cross-entropy of `logits / STUDENT_TEMP` (`[N, C]`) against class indices `labels` `[N]`.
pub fn cls_loss(logits: &Tensor, labels: &Tensor) -> Tensor {
    cross_entropy(&(logits / STUDENT_TEMP), labels)
}

/// Teacher targets of self-distillation `[N, C]` from teacher logits `[N, C]`: softmax at
/// `teacher_temp`, base classes (`0..num_labeled`) zeroed and the novel ones renormalised, then
/// pseudo-label correction `w·onehot(num_labeled) + (1 − w)·teacher` with `weights` `[N]`: the
/// first novel class stands for "normal", where weakly scored crops are pushed. Detached.
pub fn distill_targets(
    teacher_logits: &Tensor,
    teacher_temp: f64,
    num_labeled: i64,
    weights: &Tensor,
) -> Tensor {
    let size = teacher_logits.size();
    let (n, c) = (size[0], size[1]);
    let opts = (teacher_logits.kind(), teacher_logits.device());
    let probs = (teacher_logits.detach() / teacher_temp).softmax(-1, None);
    let novel = probs.narrow(1, num_labeled, c - num_labeled);
    let novel = &novel / novel.sum_dim_intlist(ROWS, true, None);
    let teacher = Tensor::cat(&[Tensor::zeros([n, num_labeled], opts), novel], 1);
    let normal = Tensor::zeros([n, c], opts);
    let _ = normal.narrow(1, num_labeled, 1).fill_(1.0);
    let w = weights.to_kind(teacher.kind()).view([-1, 1]);
    (normal * &w + teacher * (-&w + 1.0)).detach()
}

/// Self-distillation loss of student logits `[2U, C]` (two views) against `targets` `[2U, C]`
/// from [`distill_targets`]: cross-entropy of each view's targets with the other view's
/// `softmax(student / STUDENT_TEMP)`, averaged over rows and over the two view pairs.
pub fn distill_loss(student_logits: &Tensor, targets: &Tensor) -> Tensor {
    let student = (student_logits / STUDENT_TEMP).chunk(2, 0);
    let targets = targets.chunk(2, 0);
    let term = |q: &Tensor, s: &Tensor| {
        (-q * s.log_softmax(-1, None))
            .sum_dim_intlist(ROWS, false, None)
            .mean(None)
    };
    (term(&targets[0], &student[1]) + term(&targets[1], &student[0])) / 2.0
}

/// Mean-entropy maximisation term of student logits `[N, C]`: `Σ p̄ log p̄ + log C` with
/// `p̄` the mean over rows of `softmax(logits / STUDENT_TEMP)`. Zero when the batch spreads
/// evenly over the classes, so minimising it keeps the clusters from collapsing.
pub fn me_max_loss(student_logits: &Tensor) -> Tensor {
    let c = student_logits.size()[1];
    let avg = (student_logits / STUDENT_TEMP)
        .softmax(-1, None)
        .mean_dim(BATCH, false, None);
    // xlogy gives 0·log 0 = 0, as the reference's log(p^(−p)) does.
    avg.xlogy(&avg).sum(None) + (c as f64).ln()
}

/// True when the `labelled` mask `[B]` has both labelled and unlabelled samples; the reference
/// skips any other batch, and [`Criterion::compute`] refuses it.
pub fn has_base_and_novel(labelled: &Tensor) -> bool {
    let lab = labelled.to_kind(Kind::Bool);
    lab.any().int64_value(&[]) != 0 && lab.logical_not().any().int64_value(&[]) != 0
}

/// One two-view batch, as the student network and the data loader give it.
pub struct LossBatch<'a> {
    /// Per head, student logits `[2B, C]` (the projector's heads, before any temperature).
    pub logits: &'a [Tensor],
    /// Projections `[2B, D]` for the contrastive losses.
    pub proj: &'a Tensor,
    /// Class index per sample `[B]` (base classes `0..num_labeled`, novel classes after them).
    pub labels: &'a Tensor,
    /// Whether each sample is labelled (from the base set) `[B]`.
    pub labelled: &'a Tensor,
    /// Anomaly score of each crop in `[0, 1]` `[B]`; only the unlabelled rows are read.
    pub crop_scores: &'a Tensor,
}

/// The terms of one head; scalars that keep the graph.
#[derive(Debug)]
pub struct HeadLoss {
    /// Self-distillation with pseudo-label correction.
    pub distill: Tensor,
    /// Mean-entropy maximisation (before `memax_weight`).
    pub me_max: Tensor,
    /// `distill + memax_weight · me_max`; its epoch mean picks the head used at test time.
    pub cluster: Tensor,
    /// Cross-entropy on the labelled samples.
    pub cls: Tensor,
}

/// All terms of one batch; scalars that keep the graph, so `total.backward()` trains.
#[derive(Debug)]
pub struct Losses {
    pub heads: Vec<HeadLoss>,
    pub contrastive: Tensor,
    pub sup_con: Tensor,
    /// Mean over heads of [`HeadLoss::cls`].
    pub cls: Tensor,
    /// Mean over heads of [`HeadLoss::cluster`].
    pub cluster: Tensor,
    pub total: Tensor,
}

/// [`Losses`] read back as numbers, for logs and head selection.
#[derive(Debug, Clone, PartialEq)]
pub struct LossValues {
    pub distill: Vec<f64>,
    pub me_max: Vec<f64>,
    /// Per head `distill + memax_weight · me_max`.
    pub head_cluster: Vec<f64>,
    pub head_cls: Vec<f64>,
    pub contrastive: f64,
    pub sup_con: f64,
    pub cls: f64,
    pub cluster: f64,
    pub total: f64,
}

impl Losses {
    /// Copies every term to host numbers in one transfer: on a GPU, one sync per step instead
    /// of one per term. The values are the terms' own, widened to f64.
    pub fn values(&self) -> LossValues {
        let n = self.heads.len();
        let terms: Vec<Tensor> = (self.heads.iter().map(|h| &h.distill))
            .chain(self.heads.iter().map(|h| &h.me_max))
            .chain(self.heads.iter().map(|h| &h.cluster))
            .chain(self.heads.iter().map(|h| &h.cls))
            .chain([
                &self.contrastive,
                &self.sup_con,
                &self.cls,
                &self.cluster,
                &self.total,
            ])
            .map(|t| t.detach().to_kind(Kind::Double).reshape([1]))
            .collect();
        let host = Tensor::cat(&terms, 0).to_device(Device::Cpu);
        let mut v = vec![0f64; terms.len()];
        host.copy_data(&mut v, terms.len());
        let head = |i: usize| v[i * n..(i + 1) * n].to_vec();
        let at = |i: usize| v[4 * n + i];
        LossValues {
            distill: head(0),
            me_max: head(1),
            head_cluster: head(2),
            head_cls: head(3),
            contrastive: at(0),
            sup_con: at(1),
            cls: at(2),
            cluster: at(3),
            total: at(4),
        }
    }
}

/// The loss of a run: the `loss` config, the class split and the teacher temperature schedule.
#[derive(Debug, Clone)]
pub struct Criterion {
    cfg: Loss,
    num_labeled: usize,
    num_classes: usize,
    schedule: Vec<f64>,
}

impl Criterion {
    /// `num_labeled` base classes come first among `num_classes` outputs per head; `epochs` sizes
    /// the teacher temperature schedule.
    pub fn new(cfg: &Loss, num_labeled: usize, num_classes: usize, epochs: usize) -> Result<Self> {
        if num_classes <= num_labeled {
            return Err(Error::runtime(format!(
                "the loss needs at least one novel class (got {num_labeled} base of {num_classes} \
                 classes)"
            )));
        }
        if epochs == 0 {
            return Err(Error::runtime("the loss needs at least one training epoch"));
        }
        let schedule = teacher_temp_schedule(cfg, epochs);
        Ok(Self {
            cfg: cfg.clone(),
            num_labeled,
            num_classes,
            schedule,
        })
    }

    /// Whether a batch with these `labelled` flags `[B]` can be trained on: with base classes it
    /// needs labelled and unlabelled samples ([`has_base_and_novel`]); without, unlabelled ones
    /// only.
    pub fn accepts(&self, labelled: &Tensor) -> bool {
        if self.num_labeled > 0 {
            return has_base_and_novel(labelled);
        }
        let lab = labelled.to_kind(Kind::Bool);
        lab.numel() > 0 && lab.any().int64_value(&[]) == 0
    }

    /// The teacher temperature of each epoch (see [`teacher_temp_schedule`]).
    pub fn schedule(&self) -> &[f64] {
        &self.schedule
    }

    /// The teacher temperature at `epoch` (0-based); past the end, the last value.
    pub fn teacher_temp(&self, epoch: usize) -> f64 {
        self.schedule[epoch.min(self.schedule.len() - 1)]
    }

    /// Every loss term of one batch at `epoch` (0-based). Errors when the shapes disagree or
    /// [`Criterion::accepts`] refuses the batch (check it first).
    pub fn compute(&self, batch: &LossBatch, epoch: usize) -> Result<Losses> {
        let (b, device) = self.check(batch)?;
        let labelled = batch.labelled.to_kind(Kind::Bool);
        if !self.accepts(&labelled) {
            return Err(Error::runtime(if self.num_labeled > 0 {
                "a training batch needs labelled and unlabelled samples; skip this batch"
            } else {
                "a run without base classes trains on unlabelled samples only; skip this batch"
            }));
        }
        let supervised = self.num_labeled > 0;
        let kind = batch.logits[0].kind();
        let zero = || Tensor::zeros([], (kind, device));
        let labels = batch.labels.to_kind(Kind::Int64).to_device(device);
        let lab_idx = labelled.nonzero().squeeze_dim(1).to_device(device);
        let unl_idx = labelled
            .logical_not()
            .nonzero()
            .squeeze_dim(1)
            .to_device(device);
        // Rows of both views for the selected samples: view 1 then view 2.
        let both = |idx: &Tensor| Tensor::cat(&[idx.shallow_clone(), idx + b], 0);
        let (lab_rows, unl_rows) = (both(&lab_idx), both(&unl_idx));

        let contrastive = contrastive_loss(batch.proj, INFO_NCE_TEMP);

        let lab_labels = labels.index_select(0, &lab_idx);
        let sup_con = if supervised {
            let proj_lab =
                batch
                    .proj
                    .index_select(0, &lab_rows)
                    .view([2, -1, batch.proj.size()[1]]);
            let features = normalize_rows(&proj_lab.transpose(0, 1));
            sup_con_loss(&features, &lab_labels, SUPCON_TEMP)
        } else {
            zero()
        };

        let weights = pseudo_label_weights(
            &batch
                .crop_scores
                .to_device(device)
                .to_kind(kind)
                .index_select(0, &unl_idx),
            self.cfg.anomaly_thred,
        )
        .repeat([2]);
        let cls_labels = lab_labels.repeat([2]);
        let temp = self.teacher_temp(epoch);
        let heads: Vec<HeadLoss> = batch
            .logits
            .iter()
            .map(|logits| {
                let cls = if supervised {
                    cls_loss(&logits.index_select(0, &lab_rows), &cls_labels)
                } else {
                    zero()
                };
                let student = logits.index_select(0, &unl_rows);
                let targets = distill_targets(&student, temp, self.num_labeled as i64, &weights);
                let distill = distill_loss(&student, &targets);
                let me_max = me_max_loss(&student);
                let cluster = &distill + &me_max * self.cfg.memax_weight;
                HeadLoss {
                    distill,
                    me_max,
                    cluster,
                    cls,
                }
            })
            .collect();
        let n_head = heads.len() as f64;
        let mean = |f: fn(&HeadLoss) -> &Tensor| {
            let mut it = heads.iter().map(f);
            let first = it
                .next()
                .expect("checked: at least one head")
                .shallow_clone();
            it.fold(first, |acc, t| acc + t) / n_head
        };
        let cls = mean(|h| &h.cls);
        let cluster = mean(|h| &h.cluster);
        let sw = self.cfg.sup_weight;
        let total = (&cluster + &contrastive) * (1.0 - sw) + (&cls + &sup_con) * sw;
        Ok(Losses {
            heads,
            contrastive,
            sup_con,
            cls,
            cluster,
            total,
        })
    }

    /// Checks the batch's shapes; returns B and the device of the logits.
    fn check(&self, batch: &LossBatch) -> Result<(i64, Device)> {
        let bad = |m: String| Err(Error::runtime(format!("loss inputs: {m}")));
        let Some(first) = batch.logits.first() else {
            return bad("no head logits".into());
        };
        let s = first.size();
        if s.len() != 2 || s[0] % 2 != 0 || s[0] == 0 {
            return bad(format!("head logits must be [2B, C] with B > 0, got {s:?}"));
        }
        let b = s[0] / 2;
        for (i, l) in batch.logits.iter().enumerate() {
            if l.size() != [2 * b, self.num_classes as i64] {
                return bad(format!(
                    "head {i} logits are {:?}, expected [{}, {}]",
                    l.size(),
                    2 * b,
                    self.num_classes
                ));
            }
        }
        let p = batch.proj.size();
        if p.len() != 2 || p[0] != 2 * b {
            return bad(format!("projections are {p:?}, expected [{}, D]", 2 * b));
        }
        for (name, t) in [
            ("labels", batch.labels),
            ("labelled", batch.labelled),
            ("crop_scores", batch.crop_scores),
        ] {
            if t.size() != [b] {
                return bad(format!("{name} is {:?}, expected [{b}]", t.size()));
            }
        }
        // Only the labelled samples' labels are read; unlabelled ones may hold anything (-1 for
        // a flat folder, a type index beyond K when fewer clusters than types are asked for).
        let labels = batch
            .labels
            .to_kind(Kind::Int64)
            .masked_select(&batch.labelled.to_kind(Kind::Bool));
        if labels.numel() == 0 {
            return Ok((b, first.device()));
        }
        let (lo, hi) = (labels.min().int64_value(&[]), labels.max().int64_value(&[]));
        if lo < 0 || hi >= self.num_classes as i64 {
            return bad(format!(
                "labels must be in 0..{} (got {lo}..={hi})",
                self.num_classes
            ));
        }
        Ok((b, first.device()))
    }
}

#[cfg(test)]
#[path = "losses_tests.rs"]
mod tests;
