//! Tests of [`super`]: parity with the reference's golden losses and hand-made cases.

use super::*;
use serde_json::Value;

const GOLDEN: &str = include_str!("../../tests/fixtures/losses.json");

fn t2(v: &Value) -> Tensor {
    let rows: Vec<Vec<f32>> = serde_json::from_value(v.clone()).unwrap();
    let n = rows.len() as i64;
    let flat: Vec<f32> = rows.into_iter().flatten().collect();
    Tensor::from_slice(&flat).view([n, -1])
}

fn close(got: &Tensor, want: &Value, what: &str) {
    let (g, w) = (got.double_value(&[]), want.as_f64().unwrap());
    assert!((g - w).abs() < 1e-4, "{what}: got {g}, reference {w}");
}

/// The reference's loss values on the golden two-view batch (a copy of
/// ../shared/golden/model/losses.json in tests/fixtures).
#[test]
fn every_term_matches_the_reference_golden_batch() {
    let g: Value = serde_json::from_str(GOLDEN).unwrap();
    let heads: Vec<Tensor> = g["student_out"]
        .as_array()
        .unwrap()
        .iter()
        .map(t2)
        .collect();
    let proj = t2(&g["student_proj"]);
    let labels: Vec<i64> = serde_json::from_value(g["class_labels"].clone()).unwrap();
    let lab: Vec<bool> = serde_json::from_value(g["mask_lab"].clone()).unwrap();
    let w: Vec<f64> = serde_json::from_value(g["sample_weights_per_view"].clone()).unwrap();
    let cfg = Loss::default();
    // The golden file gives the weights; any score >= anomaly_thred gives weight 0.
    let scores: Vec<f32> = w[..labels.len()]
        .iter()
        .map(|&w| {
            if w > 0.0 {
                (cfg.anomaly_thred - w) as f32
            } else {
                0.9
            }
        })
        .collect();
    let (labels, lab, scores) = (
        Tensor::from_slice(&labels),
        Tensor::from_slice(&lab),
        Tensor::from_slice(&scores),
    );
    let crit = Criterion::new(&cfg, 3, 7, 50).unwrap();
    let batch = LossBatch {
        logits: &heads,
        proj: &proj,
        labels: &labels,
        labelled: &lab,
        crop_scores: &scores,
    };
    let l = crit.compute(&batch, 5).unwrap();
    let e = &g["expected"];
    close(&l.contrastive, &e["contrastive_loss"], "contrastive");
    close(&l.sup_con, &e["sup_con_loss"], "sup_con");
    close(&l.cls, &e["cls_loss"], "cls");
    close(&l.cluster, &e["cluster_loss"], "cluster");
    close(&l.total, &e["total"], "total");
    let per_head = e["per_head"].as_array().unwrap();
    assert_eq!(per_head.len(), l.heads.len());
    for (i, (h, want)) in l.heads.iter().zip(per_head).enumerate() {
        close(&h.distill, &want["distill"], &format!("head {i} distill"));
        close(&h.me_max, &want["me_max"], &format!("head {i} me_max"));
        close(
            &h.cluster,
            &want["head_cluster_loss"],
            &format!("head {i} cluster"),
        );
    }
    let v = l.values();
    assert!((v.total - e["total"].as_f64().unwrap()).abs() < 1e-4);
    assert_eq!(v.head_cluster.len(), 2);
}

/// The reference's schedule for the default config over 50 epochs (golden values are rounded
/// to 7 decimals).
#[test]
fn teacher_schedule_matches_the_reference() {
    let g: Value = serde_json::from_str(GOLDEN).unwrap();
    let want: Vec<f64> =
        serde_json::from_value(g["expected"]["teacher_temp_schedule"].clone()).unwrap();
    let got = teacher_temp_schedule(&Loss::default(), 50);
    assert_eq!(got.len(), want.len());
    for (e, (a, b)) in got.iter().zip(&want).enumerate() {
        assert_eq!((a * 1e7).round() / 1e7, *b, "epoch {e}: {a} vs {b}");
    }
    assert_eq!(got[0], 0.07);
    assert_eq!(got[36], 0.04);
    let crit = Criterion::new(&Loss::default(), 3, 7, 50).unwrap();
    assert_eq!(crit.teacher_temp(5), got[5]);
    assert_eq!(crit.teacher_temp(1000), 0.04);
}

#[test]
fn schedule_covers_short_runs_and_uneven_warmups() {
    let cfg = Loss::default();
    // Warm-up longer than the run: cut, still warming.
    let s = teacher_temp_schedule(&cfg, 5);
    assert_eq!(s, teacher_temp_schedule(&cfg, 50)[..5]);
    assert!(s[4] < 0.07 && s[4] > 0.04);
    // 10 / 4 = 2 steps of 4 epochs, then padded with teacher_temp.
    let c = Loss {
        warmup_teacher_temp_epochs: 10,
        ..cfg.clone()
    };
    let s = teacher_temp_schedule(&c, 12);
    assert_eq!(
        s,
        vec![0.07, 0.07, 0.07, 0.07, 0.04, 0.04, 0.04, 0.04, 0.04, 0.04, 0.04, 0.04]
    );
    // No warm-up: constant.
    let c = Loss {
        warmup_teacher_temp_epochs: 0,
        ..cfg.clone()
    };
    assert_eq!(teacher_temp_schedule(&c, 3), vec![0.04; 3]);
    // One step: numpy's linspace of one value is its start.
    let c = Loss {
        warmup_teacher_temp_epochs: 4,
        ..cfg
    };
    assert_eq!(
        teacher_temp_schedule(&c, 6),
        vec![0.07, 0.07, 0.07, 0.07, 0.04, 0.04]
    );
}

#[test]
fn contrastive_loss_of_a_hand_made_batch() {
    // Two samples, two identical views each, orthogonal to each other: every row has the
    // positive at cosine 1 and two negatives at cosine 0.
    let p = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 3.0, 2.0, 0.0, 0.0, 1.0]).view([4, 2]);
    let want = (2.0 + 1f64.exp()).ln() - 1.0;
    assert!((contrastive_loss(&p, 1.0).double_value(&[]) - want).abs() < 1e-6);
}

#[test]
fn sup_con_of_a_hand_made_batch() {
    // Two samples of different classes, views equal and orthogonal across samples: each
    // anchor has one positive at 1/T among three others at 1/T, 0, 0.
    let f = Tensor::from_slice(&[1.0f32, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0]).view([2, 2, 2]);
    let labels = Tensor::from_slice(&[0i64, 1]);
    let t = SUPCON_TEMP;
    let want = -(1.0 / t - ((1.0 / t).exp() + 2.0).ln());
    assert!((sup_con_loss(&f, &labels, t).double_value(&[]) - want).abs() < 1e-4);
}

#[test]
fn pseudo_label_correction_mixes_towards_the_first_novel_class() {
    let logits = Tensor::from_slice(&[5.0f32, 0.0, 1.0, 2.0, 5.0, 0.0, 1.0, 2.0]).view([2, 4]);
    let w = pseudo_label_weights(&Tensor::from_slice(&[0.9f32, -0.5]), 0.5);
    assert_eq!(Vec::<f32>::try_from(&w).unwrap(), vec![0.0, 1.0]);
    let t = distill_targets(&logits, 1.0, 2, &w);
    assert!(!t.requires_grad());
    let rows: Vec<Vec<f32>> = (0..2).map(|i| Vec::try_from(t.get(i)).unwrap()).collect();
    // Weight 0: base classes zeroed, novel ones renormalised softmax(1, 2).
    let e = 1f32.exp();
    assert_eq!(&rows[0][..2], &[0.0, 0.0]);
    assert!((rows[0][2] - 1.0 / (1.0 + e)).abs() < 1e-6);
    assert!((rows[0][2] + rows[0][3] - 1.0).abs() < 1e-6);
    // Weight 1: all mass on class num_labeled.
    assert_eq!(rows[1], vec![0.0, 0.0, 1.0, 0.0]);
}

#[test]
fn me_max_is_zero_for_an_even_spread_and_positive_for_a_collapse() {
    assert!(
        me_max_loss(&Tensor::zeros([3, 5], (Kind::Float, Device::Cpu)))
            .double_value(&[])
            .abs()
            < 1e-6
    );
    let collapsed = Tensor::from_slice(&[9.0f32, 0.0, 0.0, 9.0, 0.0, 0.0]).view([2, 3]);
    assert!((me_max_loss(&collapsed).double_value(&[]) - 3f64.ln()).abs() < 1e-3);
}

fn toy_batch(b: i64, c: i64) -> (Vec<Tensor>, Tensor, Tensor, Tensor, Tensor) {
    tch::manual_seed(7);
    let opts = (Kind::Float, Device::Cpu);
    let heads = (0..2)
        .map(|_| Tensor::randn([2 * b, c], opts).set_requires_grad(true))
        .collect();
    let proj = Tensor::randn([2 * b, 8], opts).set_requires_grad(true);
    let labels = Tensor::from_slice(&[0i64, 1, 0, 2, 3, 2]).narrow(0, 0, b);
    let lab = Tensor::from_slice(&[true, true, true, false, false, false]).narrow(0, 0, b);
    let scores = Tensor::from_slice(&[0.0f32, 0.0, 0.0, 0.1, 0.7, 0.3]).narrow(0, 0, b);
    (heads, proj, labels, lab, scores)
}

#[test]
fn total_backpropagates_to_logits_and_projections() {
    let (heads, proj, labels, lab, scores) = toy_batch(6, 4);
    let crit = Criterion::new(&Loss::default(), 2, 4, 3).unwrap();
    let batch = LossBatch {
        logits: &heads,
        proj: &proj,
        labels: &labels,
        labelled: &lab,
        crop_scores: &scores,
    };
    let l = crit.compute(&batch, 0).unwrap();
    l.total.backward();
    for t in heads.iter().chain([&proj]) {
        let g = t.grad();
        assert!(g.isfinite().all().int64_value(&[]) == 1);
        assert!(g.abs().sum(None).double_value(&[]) > 0.0);
    }
    let v = l.values();
    let sw = Loss::default().sup_weight;
    let want = (1.0 - sw) * (v.cluster + v.contrastive) + sw * (v.cls + v.sup_con);
    assert!((v.total - want).abs() < 1e-5);
}

#[test]
fn batches_without_both_kinds_or_with_bad_shapes_are_refused() {
    let (heads, proj, labels, _, scores) = toy_batch(6, 4);
    let crit = Criterion::new(&Loss::default(), 2, 4, 3).unwrap();
    let all = Tensor::ones([6], (Kind::Bool, Device::Cpu));
    assert!(!has_base_and_novel(&all));
    let batch = LossBatch {
        logits: &heads,
        proj: &proj,
        labels: &labels,
        labelled: &all,
        crop_scores: &scores,
    };
    assert!(crit
        .compute(&batch, 0)
        .unwrap_err()
        .to_string()
        .contains("skip"));
    let lab = Tensor::from_slice(&[true, false, true, false, true, false]);
    let short = scores.narrow(0, 0, 5);
    let batch = LossBatch {
        logits: &heads,
        proj: &proj,
        labels: &labels,
        labelled: &lab,
        crop_scores: &short,
    };
    assert!(crit
        .compute(&batch, 0)
        .unwrap_err()
        .to_string()
        .contains("crop_scores"));
    let wide = Criterion::new(&Loss::default(), 2, 5, 3).unwrap();
    let batch = LossBatch {
        logits: &heads,
        proj: &proj,
        labels: &labels,
        labelled: &lab,
        crop_scores: &scores,
    };
    assert!(wide
        .compute(&batch, 0)
        .unwrap_err()
        .to_string()
        .contains("head 0"));
    assert!(Criterion::new(&Loss::default(), 4, 4, 3).is_err());
    assert!(Criterion::new(&Loss::default(), 2, 4, 0).is_err());
}

#[test]
fn without_base_classes_only_the_unsupervised_terms_train() {
    let (heads, proj, _, _, scores) = toy_batch(6, 4);
    let crit = Criterion::new(&Loss::default(), 0, 4, 3).unwrap();
    let none = Tensor::zeros([6], (Kind::Bool, Device::Cpu));
    assert!(crit.accepts(&none));
    // Novel labels may hold anything (-1 for a flat folder): they are never read.
    let labels = Tensor::full([6], -1, (Kind::Int64, Device::Cpu));
    let batch = LossBatch {
        logits: &heads,
        proj: &proj,
        labels: &labels,
        labelled: &none,
        crop_scores: &scores,
    };
    let l = crit.compute(&batch, 1).unwrap();
    let v = l.values();
    assert_eq!((v.cls, v.sup_con), (0.0, 0.0));
    let sw = Loss::default().sup_weight;
    assert!((v.total - (1.0 - sw) * (v.cluster + v.contrastive)).abs() < 1e-5);
    // The terms are the ones a base-guided run computes on its novel rows, with class 0 as the
    // "normal" class of the pseudo-label correction.
    let weights = pseudo_label_weights(&scores, Loss::default().anomaly_thred).repeat([2]);
    let targets = distill_targets(&heads[0], crit.teacher_temp(1), 0, &weights);
    let want = distill_loss(&heads[0], &targets).double_value(&[]);
    assert!(
        (v.distill[0] - want).abs() < 1e-6,
        "{} vs {want}",
        v.distill[0]
    );
    let want = contrastive_loss(&proj, INFO_NCE_TEMP).double_value(&[]);
    assert!((v.contrastive - want).abs() < 1e-6);
    l.total.backward();
    for t in heads.iter().chain([&proj]) {
        assert!(t.grad().abs().sum(None).double_value(&[]) > 0.0);
    }
    // A labelled sample has no class to be trained towards.
    let one = Tensor::from_slice(&[true, false, false, false, false, false]);
    assert!(!crit.accepts(&one));
    let zeros = Tensor::zeros([6], (Kind::Int64, Device::Cpu));
    let batch = LossBatch {
        labelled: &one,
        labels: &zeros,
        ..batch
    };
    assert!(crit
        .compute(&batch, 0)
        .unwrap_err()
        .to_string()
        .contains("skip"));
    assert!(Criterion::new(&Loss::default(), 0, 0, 3).is_err());
}
