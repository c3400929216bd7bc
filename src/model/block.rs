//! The layers of one ViT block: linear maps, LayerNorm, (mask-guided) attention and the pre-norm
//! residual block with DINOv2's optional layer scales.

use tch::{nn, Kind, Tensor};

pub(crate) use super::guide::MaskGuide;
pub use super::guide::HIDDEN_SCORE;

use crate::model::arch::ArchSpec;

pub const LN_EPS: f64 = 1e-6;
pub const MLP_RATIO: usize = 4;
/// Tensors some weights files carry that the model does not use (DINOv2's `mask_token`).
pub const IGNORED_TENSORS: &[&str] = &["mask_token"];
/// Optimizer groups the variables are created in (tch `Path::set_group`): weights that take
/// weight decay, and biases / 1-D parameters that do not (the reference's `get_params_groups`).
pub const DECAY_GROUP: usize = 0;
pub const NO_DECAY_GROUP: usize = 1;

/// The attention kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttnImpl {
    /// Explicit scores, masked_fill and softmax, as the reference.
    Plain,
    /// libtorch's `scaled_dot_product_attention`: patch rows unmasked, the class-token row with
    /// an additive mask.
    Fused,
}

/// `torch.nn.init.trunc_normal_(std=0.02)` truncates at ±2 (absolute), i.e. ±100 σ: a plain
/// normal draws the same distribution for every practical purpose.
pub(crate) const TRUNC_NORMAL: nn::Init = nn::Init::Randn {
    mean: 0.0,
    stdev: 0.02,
};

pub(crate) struct Linear {
    w: Tensor,
    b: Option<Tensor>,
}

impl Linear {
    pub(crate) fn new(vs: &nn::Path, in_dim: usize, out_dim: usize) -> Self {
        let w = vs.var("weight", &[out_dim as i64, in_dim as i64], TRUNC_NORMAL);
        let b = vs
            .set_group(NO_DECAY_GROUP)
            .zeros("bias", &[out_dim as i64]);
        Linear { w, b: Some(b) }
    }

    /// `[.., in] -> [.., out]`
    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.w, self.b.as_ref())
    }

    /// Output features `start..start + len` only: `[.., in] -> [.., len]`.
    pub(crate) fn forward_rows(&self, x: &Tensor, start: i64, len: i64) -> Tensor {
        let b = self.b.as_ref().map(|b| b.narrow(0, start, len));
        x.linear(&self.w.narrow(0, start, len), b.as_ref())
    }

    pub(crate) fn to_kind(&self, k: Kind) -> Self {
        Linear {
            w: self.w.detach().to_kind(k),
            b: self.b.as_ref().map(|b| b.detach().to_kind(k)),
        }
    }

    pub(crate) fn params(&self) -> Vec<&Tensor> {
        std::iter::once(&self.w).chain(self.b.as_ref()).collect()
    }
}

pub(crate) struct LayerNorm {
    pub(crate) w: Tensor,
    pub(crate) b: Tensor,
}

impl LayerNorm {
    pub(crate) fn new(vs: &nn::Path, dim: usize) -> Self {
        let vs = vs.set_group(NO_DECAY_GROUP);
        LayerNorm {
            w: vs.ones("weight", &[dim as i64]),
            b: vs.zeros("bias", &[dim as i64]),
        }
    }

    /// `[.., D] -> [.., D]`
    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm(
            [self.w.size()[0]],
            Some(&self.w),
            Some(&self.b),
            LN_EPS,
            false,
        )
    }

    /// `[.., D] -> [.., D]` normalised without the affine step: `(x − μ) / σ`.
    pub(crate) fn normalize(&self, x: &Tensor) -> Tensor {
        x.layer_norm(
            [self.w.size()[0]],
            None::<&Tensor>,
            None::<&Tensor>,
            LN_EPS,
            false,
        )
    }

    pub(crate) fn to_kind(&self, k: Kind) -> Self {
        LayerNorm {
            w: self.w.detach().to_kind(k),
            b: self.b.detach().to_kind(k),
        }
    }
}

pub(crate) struct Attention {
    qkv: Linear,
    proj: Linear,
    num_heads: i64,
}

impl Attention {
    /// `x [B, L, D]` → `[B, L, D]`; `guide` only in mask-guided blocks.
    pub(crate) fn forward(&self, x: &Tensor, guide: Option<&MaskGuide>, imp: AttnImpl) -> Tensor {
        let (b, l, d) = x.size3().expect("tokens are [B, L, D]");
        let h = self.num_heads;
        let qkv = self
            .qkv
            .forward(x)
            .reshape([b, l, 3, h, d / h])
            .permute([2, 0, 3, 1, 4]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let out = match (imp, guide) {
            (AttnImpl::Plain, _) => {
                let mut scores = q.matmul(&k.transpose(-2, -1)) * ((d / h) as f64).powf(-0.5);
                if let Some(g) = guide {
                    scores = g.apply_full(scores);
                }
                scores.softmax(-1, scores.kind()).matmul(&v)
            }
            (AttnImpl::Fused, None) => sdpa(&q, &k, &v, None),
            (AttnImpl::Fused, Some(g)) => {
                let row = g.additive_row(q.kind());
                let cls = sdpa(&q.narrow(2, 0, 1), &k, &v, Some(&row));
                let rest = sdpa(&q.narrow(2, 1, l - 1), &k, &v, None);
                Tensor::cat(&[cls, rest], 2)
            }
        };
        self.proj.forward(&out.transpose(1, 2).reshape([b, l, d]))
    }
}

impl Attention {
    /// The class token's output only, from the block's input `x [B, L, D]` and the LayerNorm in
    /// front of the attention: `[B, 1, D]`. Equal to row 0 of [`Attention::forward`] on
    /// `norm(x)` up to float rounding, at a fraction of its cost. With `y = norm(x)`: instead of
    /// the keys and values of all `L` tokens (`2·L·D²` multiply-adds) the query is folded into
    /// the key weights, `q·(y·Wkᵀ + bk)ᵀ = (q·Wk)·yᵀ + const`, and the values into the output,
    /// `a·(y·Wvᵀ + bv) = (a·y)·Wvᵀ + bv` (the attention weights sum to 1), per head: about
    /// `4·L·D + 3·D²`. The LayerNorm's affine step `y = x̂·w + b` (`x̂` normalised, see
    /// [`LayerNorm::normalize`]) is folded the same way, `(q·Wk)·yᵀ = ((q·Wk)⊙w)·x̂ᵀ + const`
    /// and `a·y = (a·x̂)⊙w + b`, so that nothing of size `[B, L, D]` takes part in the backward
    /// pass: with cached tokens the gradients of the LayerNorm's weights and of everything else
    /// are sums over `[B, h, D]`. The constants `q·bk` and `(q·Wk)·b` are dropped: softmax
    /// ignores a shift of its row. This is what makes a training step on cached tokens cheap.
    pub(crate) fn forward_cls(
        &self,
        x: &Tensor,
        norm: &LayerNorm,
        guide: Option<&MaskGuide>,
    ) -> Tensor {
        let (b, _, d) = x.size3().expect("tokens are [B, L, D]");
        // Normalised without the affine step: no gradient when `x` is cached.
        let xhat = norm.normalize(x);
        let h = self.num_heads;
        let dh = d / h;
        let (w, bias) = (&self.qkv.w, self.qkv.b.as_ref());
        let x0 = xhat.select(1, 0) * &norm.w + &norm.b;
        // [B, h, dh]
        let q = self.qkv.forward_rows(&x0, 0, d).reshape([b, h, dh]);
        let wk = w.narrow(0, d, d).reshape([h, dh, d]);
        let wv = w.narrow(0, 2 * d, d).reshape([h, dh, d]);
        // Per head (q_h · Wk_h) ⊙ w: [B, h, dh] → [B, h, D].
        let qk = Tensor::einsum("bhe,hed->bhd", &[&q, &wk], None::<&[i64]>) * &norm.w;
        // [B, h, D] · [B, D, L] → [B, h, L]: plain batched matmuls, no broadcast copies of x.
        let mut scores = qk.bmm(&xhat.transpose(1, 2)) * (dh as f64).powf(-0.5);
        if let Some(g) = guide {
            scores = g.apply_cls(scores);
        }
        let attn = scores.softmax(-1, scores.kind());
        // [B, h, L] · [B, L, D] → [B, h, D], the affine step; then per head · Wv_hᵀ → [B, h, dh]
        let z = attn.bmm(&xhat) * &norm.w + &norm.b;
        let mut out = Tensor::einsum("bhd,hed->bhe", &[&z, &wv], None::<&[i64]>);
        if let Some(bias) = bias {
            out += bias.narrow(0, 2 * d, d).reshape([1, h, dh]);
        }
        self.proj.forward(&out.reshape([b, 1, d]))
    }
}

fn sdpa(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Tensor {
    Tensor::scaled_dot_product_attention(q, k, v, mask, 0.0, false, None, false)
}

pub(crate) struct Block {
    norm1: LayerNorm,
    attn: Attention,
    ls1: Option<Tensor>,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    ls2: Option<Tensor>,
    mask_guided: bool,
}

impl Block {
    pub(crate) fn new(vs: &nn::Path, spec: &ArchSpec, mask_guided: bool) -> Self {
        let d = spec.embed_dim;
        let gamma = |name: &str| {
            spec.layer_scale.then(|| {
                (vs / name)
                    .set_group(NO_DECAY_GROUP)
                    .ones("gamma", &[d as i64])
            })
        };
        let mlp = vs / "mlp";
        Block {
            norm1: LayerNorm::new(&(vs / "norm1"), d),
            attn: Attention {
                qkv: Linear::new(&(vs / "attn" / "qkv"), d, 3 * d),
                proj: Linear::new(&(vs / "attn" / "proj"), d, d),
                num_heads: spec.num_heads as i64,
            },
            ls1: gamma("ls1"),
            norm2: LayerNorm::new(&(vs / "norm2"), d),
            fc1: Linear::new(&(&mlp / "fc1"), d, MLP_RATIO * d),
            fc2: Linear::new(&(&mlp / "fc2"), MLP_RATIO * d, d),
            ls2: gamma("ls2"),
            mask_guided,
        }
    }

    /// `[B, L, D] -> [B, L, D]` (pre-norm residual attention and MLP).
    pub(crate) fn forward(&self, x: &Tensor, guide: &MaskGuide, imp: AttnImpl) -> Tensor {
        let g = self.mask_guided.then_some(guide);
        let y = self.attn.forward(&self.norm1.forward(x), g, imp);
        self.mlp_residual(x + self.scale1(y))
    }

    /// The class token after this block, `[B, L, D] -> [B, 1, D]`: what the last block needs,
    /// since only the class token leaves the backbone (the patch tokens' attention rows and MLP
    /// are most of a block's cost and would be thrown away).
    pub(crate) fn forward_cls(&self, x: &Tensor, guide: &MaskGuide) -> Tensor {
        let g = self.mask_guided.then_some(guide);
        let y = self.attn.forward_cls(x, &self.norm1, g);
        self.mlp_residual(x.narrow(1, 0, 1) + self.scale1(y))
    }

    /// The attention branch times the first layer scale (DINOv2), `[B, L, D]`.
    fn scale1(&self, y: Tensor) -> Tensor {
        match &self.ls1 {
            Some(ls) => y * ls,
            None => y,
        }
    }

    /// `x + ls2 · MLP(norm2(x))`: the second half of a block, `[B, L, D] -> [B, L, D]`.
    fn mlp_residual(&self, x: Tensor) -> Tensor {
        let mut y = self
            .fc2
            .forward(&self.fc1.forward(&self.norm2.forward(&x)).gelu("none"));
        if let Some(ls) = &self.ls2 {
            y *= ls;
        }
        x + y
    }

    pub(crate) fn to_kind(&self, k: Kind) -> Self {
        Block {
            norm1: self.norm1.to_kind(k),
            attn: Attention {
                qkv: self.attn.qkv.to_kind(k),
                proj: self.attn.proj.to_kind(k),
                num_heads: self.attn.num_heads,
            },
            ls1: self.ls1.as_ref().map(|t| t.detach().to_kind(k)),
            norm2: self.norm2.to_kind(k),
            fc1: self.fc1.to_kind(k),
            fc2: self.fc2.to_kind(k),
            ls2: self.ls2.as_ref().map(|t| t.detach().to_kind(k)),
            mask_guided: self.mask_guided,
        }
    }

    pub(crate) fn params(&self) -> Vec<&Tensor> {
        let mut p = vec![&self.norm1.w, &self.norm1.b, &self.norm2.w, &self.norm2.b];
        for l in [&self.attn.qkv, &self.attn.proj, &self.fc1, &self.fc2] {
            p.extend(l.params());
        }
        p.extend(self.ls1.iter().chain(self.ls2.iter()));
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::guide::Guidance;

    /// A block with every weight, bias and layer scale perturbed at random, so that the folded
    /// bias and LayerNorm terms are exercised.
    fn random_block(name: &str, guided: bool) -> (&'static ArchSpec, nn::VarStore, Block) {
        let spec = ArchSpec::by_name(name).unwrap();
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let blk = Block::new(&vs.root(), spec, guided);
        tch::no_grad(|| {
            for (_, t) in vs.variables() {
                t.shallow_clone().copy_(&(t.randn_like() * 0.3 + &t));
            }
        });
        (spec, vs, blk)
    }

    #[test]
    fn class_token_only_block_equals_row_zero_of_the_full_block() {
        tch::manual_seed(3);
        for (name, guided) in [
            ("vit_tiny", true),
            ("vit_tiny", false),
            ("dinov2_vits14", true),
        ] {
            let (spec, _vs, blk) = random_block(name, guided);
            let d = spec.embed_dim as i64;
            let x = Tensor::randn([3, 17, d], tch::kind::FLOAT_CPU);
            let level = (Tensor::rand([3, 17], tch::kind::FLOAT_CPU) * 255.0).to_kind(Kind::Uint8);
            let _ = level.narrow(1, 0, 1).fill_(255);
            let hard = (level.ge(100).to_kind(Kind::Uint8) * 255).to_kind(Kind::Uint8);
            let guides = [
                MaskGuide {
                    level: hard,
                    guidance: Guidance::Hard,
                },
                MaskGuide {
                    level,
                    guidance: Guidance::Soft { lambda: 3.0 },
                },
            ];
            for (g, imp) in guides
                .iter()
                .flat_map(|g| [(g, AttnImpl::Plain), (g, AttnImpl::Fused)])
            {
                let full = blk.forward(&x, g, imp).narrow(1, 0, 1);
                let cls = blk.forward_cls(&x, g);
                let scale = full.abs().max().double_value(&[]).max(1.0);
                let diff = (&full - &cls).abs().max().double_value(&[]) / scale;
                assert!(
                    diff < 5e-5,
                    "{name} guided {guided} {:?} {imp:?}: relative {diff}",
                    g.guidance
                );
            }
        }
    }

    /// The folded LayerNorm must not change what training sees: every parameter's gradient
    /// through the class-token path equals its gradient through row 0 of the full block.
    #[test]
    fn class_token_only_block_has_the_full_blocks_gradients() {
        tch::manual_seed(5);
        let (spec, _vs, blk) = random_block("vit_tiny", true);
        let d = spec.embed_dim as i64;
        let x = Tensor::randn([2, 13, d], tch::kind::FLOAT_CPU) * 2.0 + 0.5;
        let level = (Tensor::rand([2, 13], tch::kind::FLOAT_CPU) * 255.0).to_kind(Kind::Uint8);
        let g = MaskGuide {
            level,
            guidance: Guidance::Soft { lambda: 3.0 },
        };
        // A fixed random read-out, so that every output feature carries gradient.
        let probe = Tensor::randn([1, 1, d], tch::kind::FLOAT_CPU);
        let grads = |out: Tensor| -> Vec<Tensor> {
            let params = blk.params();
            for p in &params {
                p.shallow_clone().zero_grad();
            }
            (out * &probe).sum(Kind::Float).backward();
            params.iter().map(|p| p.grad().copy()).collect()
        };
        let full = grads(blk.forward(&x, &g, AttnImpl::Plain).narrow(1, 0, 1));
        let cls = grads(blk.forward_cls(&x, &g));
        assert_eq!(full.len(), cls.len());
        for (i, (a, b)) in full.iter().zip(&cls).enumerate() {
            let scale = a.abs().max().double_value(&[]).max(1e-3);
            let diff = (a - b).abs().max().double_value(&[]) / scale;
            assert!(
                diff < 1e-4,
                "parameter {i}: relative gradient difference {diff}"
            );
        }
        // The LayerNorm's weights do get a gradient (the fold did not detach them).
        assert!(cls[0].abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }
}
