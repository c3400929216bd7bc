//! The projector on top of the class token, as the reference's `MultiHead` (after SimGCD / UNO):
//! a 3-layer MLP giving the projection for the contrastive losses, and `n_head` weight-normalised
//! linear heads without bias on the L2-normalised class token giving per-head logits.
//!
//! Names: `mlp.{0,2,4}.{weight,bias}` (GELU between), `last_layer.i.weight_g` `[out, 1]` (fixed
//! at 1, not trained) and `last_layer.i.weight_v` `[out, in]`.

use tch::{nn, Tensor};

use crate::model::mgvit::NO_DECAY_GROUP;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultiHeadConfig {
    pub in_dim: usize,
    /// Number of classes (base + novel).
    pub out_dim: usize,
    pub hidden_dim: usize,
    pub bottleneck_dim: usize,
    pub n_head: usize,
}

impl MultiHeadConfig {
    /// The reference's sizes: hidden 2048, bottleneck 256.
    pub fn reference(in_dim: usize, out_dim: usize, n_head: usize) -> Self {
        MultiHeadConfig {
            in_dim,
            out_dim,
            hidden_dim: 2048,
            bottleneck_dim: 256,
            n_head,
        }
    }
}

struct Linear {
    w: Tensor,
    b: Tensor,
}

impl Linear {
    /// trunc-normal(std 0.02) weight (a plain normal: the ±2 truncation is 100 σ away), zero bias.
    fn new(vs: &nn::Path, in_dim: usize, out_dim: usize) -> Self {
        let w = vs.var(
            "weight",
            &[out_dim as i64, in_dim as i64],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        );
        let b = vs
            .set_group(NO_DECAY_GROUP)
            .zeros("bias", &[out_dim as i64]);
        Linear { w, b }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.w, Some(&self.b))
    }
}

/// A weight-normalised linear map without bias: `w = g · v / ‖v‖` row-wise.
struct WnHead {
    g: Tensor,
    v: Tensor,
}

impl WnHead {
    fn new(vs: &nn::Path, in_dim: usize, out_dim: usize) -> Self {
        // nn.Linear's default init for v (the reference applies its trunc-normal init before
        // creating the heads); g is filled with 1 and frozen.
        let bound = 1.0 / (in_dim as f64).sqrt();
        let v = vs.var(
            "weight_v",
            &[out_dim as i64, in_dim as i64],
            nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        );
        let g = vs.ones_no_train("weight_g", &[out_dim as i64, 1]);
        WnHead { g, v }
    }

    fn weight(&self) -> Tensor {
        let norm = self.v.norm_scalaropt_dim(2, [1], true);
        &self.g * &self.v / norm
    }
}

pub struct MultiHead {
    cfg: MultiHeadConfig,
    mlp: [Linear; 3],
    heads: Vec<WnHead>,
}

impl MultiHead {
    pub fn new(vs: &nn::Path, cfg: MultiHeadConfig) -> MultiHead {
        let mlp = vs / "mlp";
        let heads = (0..cfg.n_head)
            .map(|i| WnHead::new(&(vs / "last_layer" / i), cfg.in_dim, cfg.out_dim))
            .collect();
        MultiHead {
            cfg,
            mlp: [
                Linear::new(&(&mlp / 0), cfg.in_dim, cfg.hidden_dim),
                Linear::new(&(&mlp / 2), cfg.hidden_dim, cfg.hidden_dim),
                Linear::new(&(&mlp / 4), cfg.hidden_dim, cfg.bottleneck_dim),
            ],
            heads,
        }
    }

    pub fn config(&self) -> &MultiHeadConfig {
        &self.cfg
    }

    /// Class token `[B, in]` → (projection `[B, bottleneck]`, per-head logits `n_head × [B, out]`).
    pub fn forward(&self, x: &Tensor) -> (Tensor, Vec<Tensor>) {
        let h = self.mlp[0].forward(x).gelu("none");
        let h = self.mlp[1].forward(&h).gelu("none");
        let proj = self.mlp[2].forward(&h);
        // F.normalize: x / max(‖x‖, 1e-12).
        let xn = x / x.norm_scalaropt_dim(2, [-1], true).clamp_min(1e-12);
        let logits = self
            .heads
            .iter()
            .map(|hd| xn.linear::<Tensor>(&hd.weight(), None))
            .collect();
        (proj, logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_cosine_classifiers_and_g_is_frozen() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let cfg = MultiHeadConfig {
            in_dim: 8,
            out_dim: 3,
            hidden_dim: 16,
            bottleneck_dim: 4,
            n_head: 2,
        };
        let m = MultiHead::new(&vs.root(), cfg);
        let x = Tensor::randn([5, 8], tch::kind::FLOAT_CPU);
        let (proj, logits) = m.forward(&x);
        assert_eq!(proj.size(), [5, 4]);
        assert_eq!(logits.len(), 2);
        // Unit rows times unit inputs: every logit is a cosine, and scaling x changes nothing.
        assert!(logits[0].abs().max().double_value(&[]) <= 1.0 + 1e-6);
        let (_, scaled) = m.forward(&(&x * 7.0));
        assert!(scaled[1].allclose(&logits[1], 1e-5, 1e-6, false));
        let vars = vs.variables();
        assert!(!vars["last_layer.0.weight_g"].requires_grad());
        assert!(vars["last_layer.1.weight_v"].requires_grad());
        assert_eq!(vars["mlp.4.weight"].size(), [4, 16]);
    }
}
