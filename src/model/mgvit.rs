//! The mask-guided ViT (MGViT): a DINO / DINOv2 ViT whose last `mask_layers` blocks hide the
//! patches outside the anomaly mask from the class token.
//!
//! Parameter names follow DINO (and the reference): `patch_embed.proj.*`, `cls_token`,
//! `pos_embed`, `blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*`, `norm.*`, plus
//! DINOv2's layer scales `blocks.N.ls1.gamma` / `blocks.N.ls2.gamma`.
//!
//! Mask guidance as in the reference (`Guidance::Hard`): the crop mask is average-pooled by the
//! patch size; in a mask-guided block the class-token query row gets the score −1e9 for every
//! patch whose pooled mask is < 0.5 (the class token always sees itself); all other rows attend
//! everywhere. `Guidance::Soft` biases that row by the crop's anomaly map instead
//! ([`crate::model::guide`]).

use std::ops::Range;

use tch::{nn, Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::arch::{ArchSpec, PosInterp};
pub use crate::model::block::{
    AttnImpl, DECAY_GROUP, HIDDEN_SCORE, IGNORED_TENSORS, LN_EPS, MLP_RATIO, NO_DECAY_GROUP,
};
use crate::model::block::{Block, LayerNorm, MaskGuide, TRUNC_NORMAL};
use crate::model::guide::Guidance;

/// Patch embedding, class token and position embedding.
struct Embed {
    proj_w: Tensor,
    proj_b: Tensor,
    cls_token: Tensor,
    /// `[1, 1 + grid², D]`, always f32 (resized before any cast).
    pos_embed: Tensor,
    patch: i64,
    grid: i64,
    interp: PosInterp,
}

impl Embed {
    fn new(vs: &nn::Path, spec: &ArchSpec) -> Self {
        let (p, d, g) = (
            spec.patch_size as i64,
            spec.embed_dim as i64,
            spec.pos_grid as i64,
        );
        let pe = vs / "patch_embed" / "proj";
        // PyTorch's Conv2d default init: U(±1/sqrt(fan_in)) for weight and bias.
        let bound = 1.0 / ((3 * p * p) as f64).sqrt();
        Embed {
            proj_w: pe.var(
                "weight",
                &[d, 3, p, p],
                nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            ),
            proj_b: pe.set_group(NO_DECAY_GROUP).var(
                "bias",
                &[d],
                nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            ),
            cls_token: vs.var("cls_token", &[1, 1, d], TRUNC_NORMAL),
            pos_embed: vs.var("pos_embed", &[1, 1 + g * g, d], TRUNC_NORMAL),
            patch: p,
            grid: g,
            interp: spec.pos_interp,
        }
    }

    /// `[B, 3, H, W] -> [B, 1 + (H/p)(W/p), D]` in the kind of the patch weights.
    fn forward(&self, x: &Tensor) -> Tensor {
        let x = x.to_kind(self.proj_w.kind());
        let t = x.conv2d(
            &self.proj_w,
            Some(&self.proj_b),
            [self.patch, self.patch],
            [0, 0],
            [1, 1],
            1,
        );
        let (b, d, h, w) = t.size4().expect("conv output is 4-D");
        let t = t.flatten(2, -1).transpose(1, 2);
        let cls = self.cls_token.expand([b, 1, d], false);
        Tensor::cat(&[cls, t], 1) + self.pos_for(h, w).to_kind(x.kind())
    }

    /// The position embedding for an `h`×`w` patch grid, `[1, 1 + h·w, D]`.
    fn pos_for(&self, h: i64, w: i64) -> Tensor {
        if h == self.grid && w == self.grid {
            return self.pos_embed.shallow_clone();
        }
        let d = self.pos_embed.size()[2];
        let g = self.grid;
        let cls = self.pos_embed.narrow(1, 0, 1);
        let grid = self
            .pos_embed
            .narrow(1, 1, g * g)
            .reshape([1, g, g, d])
            .permute([0, 3, 1, 2]);
        let resized = match self.interp {
            PosInterp::ScaleOffset => {
                let (sh, sw) = ((h as f64 + 0.1) / g as f64, (w as f64 + 0.1) / g as f64);
                grid.upsample_bicubic2d([h, w], false, sh, sw)
            }
            PosInterp::ExactSize => grid.upsample_bicubic2d([h, w], false, None, None),
        };
        let resized = resized.permute([0, 2, 3, 1]).reshape([1, h * w, d]);
        Tensor::cat(&[cls, resized], 1)
    }

    fn to_kind(&self, k: Kind) -> Self {
        Embed {
            proj_w: self.proj_w.detach().to_kind(k),
            proj_b: self.proj_b.detach().to_kind(k),
            cls_token: self.cls_token.detach().to_kind(k),
            pos_embed: self.pos_embed.detach(),
            patch: self.patch,
            grid: self.grid,
            interp: self.interp,
        }
    }

    fn params(&self) -> Vec<&Tensor> {
        vec![&self.proj_w, &self.proj_b, &self.cls_token, &self.pos_embed]
    }
}

/// Low-precision copies of the frozen prefix (the VarStore keeps the f32 masters).
struct LowPrecision {
    kind: Kind,
    upto: usize,
    embed: Embed,
    blocks: Vec<Block>,
}

/// The mask-guided ViT.
pub struct MgVit {
    spec: ArchSpec,
    mask_layers: usize,
    embed: Embed,
    blocks: Vec<Block>,
    norm: LayerNorm,
    low: Option<LowPrecision>,
    attn: AttnImpl,
    thin_fallback: bool,
    guidance: Guidance,
}

impl MgVit {
    /// Creates the variables under `vs` (randomly initialised as the reference; load weights
    /// with [`crate::model::weights::load_into`]). The last `mask_layers` blocks are mask-guided.
    pub fn new(vs: &nn::Path, spec: &ArchSpec, mask_layers: usize) -> Result<MgVit> {
        if mask_layers > spec.depth {
            return Err(Error::usage(format!(
                "mask_layers ({mask_layers}) exceeds the depth of {} ({})",
                spec.name, spec.depth
            )));
        }
        let blocks = (0..spec.depth)
            .map(|i| Block::new(&(vs / "blocks" / i), spec, i >= spec.depth - mask_layers))
            .collect();
        Ok(MgVit {
            spec: *spec,
            mask_layers,
            embed: Embed::new(vs, spec),
            blocks,
            norm: LayerNorm::new(&(vs / "norm"), spec.embed_dim),
            low: None,
            attn: AttnImpl::Fused,
            thin_fallback: false,
            guidance: Guidance::Hard,
        })
    }

    pub fn spec(&self) -> &ArchSpec {
        &self.spec
    }

    pub fn depth(&self) -> usize {
        self.blocks.len()
    }

    pub fn embed_dim(&self) -> usize {
        self.spec.embed_dim
    }

    pub fn mask_layers(&self) -> usize {
        self.mask_layers
    }

    pub fn attention(&self) -> AttnImpl {
        self.attn
    }

    /// See `models.thin_mask_fallback`: masks with no half-covered patch show the patches they
    /// touch to the class token.
    pub fn set_thin_mask_fallback(&mut self, on: bool) {
        self.thin_fallback = on;
    }

    /// See `models.guidance`: the hard mask (the reference) or a soft bias from the crop's map,
    /// which the masks given to [`Self::forward`] then carry in [0, 1].
    pub fn set_guidance(&mut self, guidance: Guidance) {
        self.guidance = guidance;
    }

    pub fn guidance(&self) -> Guidance {
        self.guidance
    }

    pub fn set_attention(&mut self, imp: AttnImpl) {
        self.attn = imp;
    }

    /// Runs the patch embedding and blocks `0..upto` with `kind` copies of their weights (made
    /// now: call after loading weights; these parts must stay frozen). `Kind::Float` goes back to
    /// the f32 path.
    pub fn set_frozen_kind(&mut self, kind: Kind, upto: usize) {
        let upto = upto.min(self.depth());
        self.low = (kind != Kind::Float).then(|| LowPrecision {
            kind,
            upto,
            embed: self.embed.to_kind(kind),
            blocks: self.blocks[..upto]
                .iter()
                .map(|b| b.to_kind(kind))
                .collect(),
        });
    }

    /// The kind of the frozen prefix (`Float` unless [`Self::set_frozen_kind`] chose another).
    pub fn frozen_kind(&self) -> Kind {
        self.low.as_ref().map_or(Kind::Float, |l| l.kind)
    }

    /// Only blocks `>= grad_from_block` require gradients; the embeddings, earlier blocks and
    /// the final norm are frozen (as the reference, whose final `norm` has no `block` in its name).
    pub fn freeze(&self, grad_from_block: usize) {
        for t in self
            .embed
            .params()
            .into_iter()
            .chain([&self.norm.w, &self.norm.b])
        {
            let _ = t.set_requires_grad(false);
        }
        for (i, b) in self.blocks.iter().enumerate() {
            for t in b.params() {
                let _ = t.set_requires_grad(i >= grad_from_block);
            }
        }
    }

    fn guide(&self, mask: &Tensor) -> MaskGuide {
        MaskGuide::new(mask, self.embed.patch, self.thin_fallback, self.guidance)
    }

    /// `x [B, 3, H, W]`, `mask [B, 1, H, W]` (1 = anomaly; the crop's map in [0, 1] under soft
    /// guidance) → class token `[B, D]` (f32).
    pub fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        self.check(x, mask)?;
        let guide = self.guide(mask);
        let t = self.embed_tokens(x);
        Ok(self.finish(self.run(t, &guide, 0..self.depth(), true)))
    }

    /// `[1 + N, D]` of the tokens an `h`×`w` input makes (what [`Self::tokens_before`] gives
    /// per view), without running the model; an error for a side that is not a multiple of the
    /// patch size.
    pub fn token_shape(&self, h: i64, w: i64) -> Result<[i64; 2]> {
        let p = self.embed.patch;
        if h < p || w < p || h % p != 0 || w % p != 0 {
            return Err(Error::runtime(format!(
                "MGViT input: expected sides that are multiples of {p}; got {h}×{w}"
            )));
        }
        Ok([1 + (h / p) * (w / p), self.embed_dim() as i64])
    }

    /// The tokens entering block `block_idx`, `[B, 1+N, D]`, without gradients, in the frozen
    /// kind: patch embedding, position embedding and blocks `< block_idx`.
    pub fn tokens_before(&self, x: &Tensor, mask: &Tensor, block_idx: usize) -> Result<Tensor> {
        self.check(x, mask)?;
        self.check_block(block_idx)?;
        let guide = self.guide(mask);
        Ok(tch::no_grad(|| {
            self.run(self.embed_tokens(x), &guide, 0..block_idx, false)
        }))
    }

    /// Continues [`Self::tokens_before`]: blocks `>= block_idx` and the final norm → class
    /// token `[B, D]` (f32). `mask [B, 1, H, W]` as in `forward`.
    pub fn forward_from(&self, tokens: &Tensor, mask: &Tensor, block_idx: usize) -> Result<Tensor> {
        self.forward_from_guide(tokens, &self.token_guide(mask), block_idx)
    }

    /// How much the class token may see each token in the mask-guided blocks: `mask
    /// [B, 1, H, W]` → `[B, 1+N]` u8 levels (255: fully, 0: hidden under the hard mask; see
    /// [`crate::model::guide`]). Small enough to keep beside cached tokens instead of the
    /// full-resolution mask.
    pub fn token_guide(&self, mask: &Tensor) -> Tensor {
        self.guide(mask).level
    }

    /// [`Self::forward_from`] with the mask already reduced by [`Self::token_guide`].
    pub fn forward_from_guide(
        &self,
        tokens: &Tensor,
        level: &Tensor,
        block_idx: usize,
    ) -> Result<Tensor> {
        self.check_block(block_idx)?;
        let (ts, gs) = (tokens.size(), level.size());
        if ts.len() != 3
            || gs.len() != 2
            || ts[0] != gs[0]
            || ts[1] != gs[1]
            || ts[2] != self.spec.embed_dim as i64
        {
            return Err(Error::runtime(format!(
                "MGViT tokens {ts:?} do not fit a token mask of {gs:?} ([B, 1+N, {}] expected)",
                self.spec.embed_dim
            )));
        }
        let guide = MaskGuide {
            level: level.to_kind(Kind::Uint8),
            guidance: self.guidance,
        };
        let t = tokens.shallow_clone();
        Ok(self.finish(self.run(t, &guide, block_idx..self.depth(), true)))
    }

    /// The patch tokens after each block count in `taps` (ascending, in `1..=depth`), each
    /// through the final norm, for the detector's patch features: `x [B, 3, H, W]` (H, W
    /// multiples of the patch) → one `[B, (H/p)·(W/p), D]` f32 per tap. No mask guidance (the
    /// mask-guided blocks see every patch), no gradients, and no block past the last tap runs.
    pub fn patch_tokens(&self, x: &Tensor, taps: &[usize]) -> Result<Vec<Tensor>> {
        let (b, h, w) = (x.size()[0], x.size()[2], x.size()[3]);
        self.check(x, &Tensor::zeros([b, 1, h, w], (Kind::Float, x.device())))?;
        if taps.is_empty()
            || taps[0] == 0
            || taps[taps.len() - 1] > self.depth()
            || !taps.windows(2).all(|t| t[0] < t[1])
        {
            return Err(Error::usage(format!(
                "ViT blocks {taps:?}: give distinct block numbers in 1..={} in ascending order (e.g. 6,9,12)",
                self.depth()
            )));
        }
        let n = (h / self.embed.patch) * (w / self.embed.patch);
        let guide = MaskGuide::open(b, 1 + n, x.device());
        Ok(tch::no_grad(|| {
            let mut t = self.embed_tokens(x);
            let mut out = Vec::with_capacity(taps.len());
            let mut done = 0;
            for &k in taps {
                t = self.run(t, &guide, done..k, false);
                done = k;
                out.push(self.norm.forward(&t.narrow(1, 1, n).to_kind(Kind::Float)));
            }
            out
        }))
    }

    /// The position embedding for an `h`×`w` patch grid, `[1, 1 + h·w, D]` (f32).
    pub fn pos_embed_for(&self, h: i64, w: i64) -> Tensor {
        self.embed.pos_for(h, w)
    }

    fn embed_tokens(&self, x: &Tensor) -> Tensor {
        match &self.low {
            Some(l) => l.embed.forward(x),
            None => self.embed.forward(x),
        }
    }

    /// Blocks `range` on tokens `x`. With `cls_only`, the model's last block computes the class
    /// token alone (`[B, 1, D]` out), which is all [`Self::finish`] reads.
    fn run(&self, mut x: Tensor, guide: &MaskGuide, range: Range<usize>, cls_only: bool) -> Tensor {
        let last = self.depth().checked_sub(1);
        for i in range {
            let (blk, kind) = match &self.low {
                Some(l) if i < l.upto => (&l.blocks[i], l.kind),
                _ => (&self.blocks[i], Kind::Float),
            };
            if x.kind() != kind {
                x = x.to_kind(kind);
            }
            x = if cls_only && Some(i) == last {
                blk.forward_cls(&x, guide)
            } else {
                blk.forward(&x, guide, self.attn)
            };
        }
        x
    }

    fn finish(&self, x: Tensor) -> Tensor {
        self.norm.forward(&x.to_kind(Kind::Float)).select(1, 0)
    }

    fn check_block(&self, block_idx: usize) -> Result<()> {
        if block_idx > self.depth() {
            return Err(Error::runtime(format!(
                "block index {block_idx} is past the depth {}",
                self.depth()
            )));
        }
        Ok(())
    }

    fn check(&self, x: &Tensor, mask: &Tensor) -> Result<()> {
        let (xs, ms) = (x.size(), mask.size());
        let p = self.embed.patch;
        let ok = xs.len() == 4
            && xs[1] == 3
            && xs[0] > 0
            && xs[2] >= p
            && xs[3] >= p
            && xs[2] % p == 0
            && xs[3] % p == 0
            && ms == [xs[0], 1, xs[2], xs[3]];
        if !ok {
            return Err(Error::runtime(format!(
                "MGViT input: expected images [B, 3, H, W] with H and W multiples of {p} and masks [B, 1, H, W]; got {xs:?} and {ms:?}"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::guide::Guidance;

    fn tiny() -> (nn::VarStore, MgVit) {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let spec = ArchSpec::by_name("vit_tiny").unwrap();
        let m = MgVit::new(&vs.root(), spec, 2).unwrap();
        (vs, m)
    }

    #[test]
    fn plain_and_fused_attention_agree_and_mask_changes_the_class_token() {
        let (_vs, mut m) = tiny();
        let x = Tensor::randn([2, 3, 32, 32], tch::kind::FLOAT_CPU);
        let ones = Tensor::ones([2, 1, 32, 32], tch::kind::FLOAT_CPU);
        let corner = Tensor::zeros([2, 1, 32, 32], tch::kind::FLOAT_CPU);
        let _ = corner.narrow(2, 0, 8).narrow(3, 0, 8).fill_(1.0);
        let fused = m.forward(&x, &corner).unwrap();
        m.set_attention(AttnImpl::Plain);
        let plain = m.forward(&x, &corner).unwrap();
        assert!(fused.allclose(&plain, 1e-5, 1e-5, false));
        let full = m.forward(&x, &ones).unwrap();
        assert!((&full - &plain).abs().max().double_value(&[]) > 1e-3);
        assert_eq!(full.size(), [2, 48]);
    }

    #[test]
    fn soft_guidance_spans_the_hard_mask_and_no_mask() {
        let (_vs, mut m) = tiny();
        let x = Tensor::randn([2, 3, 32, 32], tch::kind::FLOAT_CPU);
        // A 0/1 map on the patch grid (patch 8): the top-left 2×2 patches.
        let map = Tensor::zeros([2, 1, 32, 32], tch::kind::FLOAT_CPU);
        let _ = map.narrow(2, 0, 16).narrow(3, 0, 16).fill_(1.0);
        let hard = m.forward(&x, &map).unwrap();
        let ones = Tensor::ones([2, 1, 32, 32], tch::kind::FLOAT_CPU);
        let open = m.forward(&x, &ones).unwrap();
        let diff = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
        m.set_guidance(Guidance::Soft { lambda: 50.0 });
        // e^-50 of weight on each background patch: the hard mask's token to 1e-5.
        let soft = m.forward(&x, &map).unwrap();
        assert!(
            diff(&soft, &hard) < 1e-5,
            "λ=50 vs hard: {}",
            diff(&soft, &hard)
        );
        // A uniform map shows every patch: the unguided token.
        let uniform = Tensor::full([2, 1, 32, 32], 0.4, tch::kind::FLOAT_CPU);
        let flat = m.forward(&x, &uniform).unwrap();
        assert!(
            diff(&flat, &open) < 1e-6,
            "uniform vs open: {}",
            diff(&flat, &open)
        );
        // A moderate λ lies between: unlike both.
        m.set_guidance(Guidance::Soft { lambda: 2.0 });
        let mid = m.forward(&x, &map).unwrap();
        assert!(diff(&mid, &hard) > 1e-4 && diff(&mid, &open) > 1e-4);
        // The cached path (levels) gives the direct path's token.
        for k in 0..=3 {
            let t = m.tokens_before(&x, &map, k).unwrap();
            let split = m.forward_from(&t, &map, k).unwrap();
            assert!(mid.allclose(&split, 1e-6, 1e-6, false), "split at {k}");
        }
    }

    #[test]
    fn split_forward_equals_forward_and_bad_inputs_are_errors() {
        let (_vs, m) = tiny();
        let x = Tensor::randn([2, 3, 40, 24], tch::kind::FLOAT_CPU);
        let mask = Tensor::ones([2, 1, 40, 24], tch::kind::FLOAT_CPU);
        let whole = m.forward(&x, &mask).unwrap();
        for k in 0..=3 {
            let t = m.tokens_before(&x, &mask, k).unwrap();
            assert_eq!(t.size(), [2, 1 + 5 * 3, 48]);
            let split = m.forward_from(&t, &mask, k).unwrap();
            assert!(whole.allclose(&split, 1e-6, 1e-6, false), "split at {k}");
        }
        assert!(m.forward(&x, &mask.narrow(2, 0, 32)).is_err());
        assert!(m
            .forward(&x.narrow(2, 0, 36), &mask.narrow(2, 0, 36))
            .is_err());
        assert!(m.tokens_before(&x, &mask, 4).is_err());
    }

    #[test]
    fn patch_token_taps_agree_with_the_split_forward() {
        let (_vs, m) = tiny();
        // A non-square input: 5×3 patches, the 4×4 position grid interpolated.
        let x = Tensor::randn([2, 3, 40, 24], tch::kind::FLOAT_CPU);
        let mask = Tensor::ones([2, 1, 40, 24], tch::kind::FLOAT_CPU);
        let taps = m.patch_tokens(&x, &[1, 3]).unwrap();
        assert_eq!(taps.len(), 2);
        for (t, k) in taps.iter().zip([1usize, 3]) {
            assert_eq!(t.size(), [2, 15, 48]);
            // The mask-guided blocks must not matter: the mask is full here.
            let want = m
                .norm
                .forward(&m.tokens_before(&x, &mask, k).unwrap().narrow(1, 1, 15));
            assert!(t.allclose(&want, 1e-5, 1e-5, false), "tap {k}");
        }
        for bad in [vec![], vec![0], vec![4], vec![2, 2], vec![3, 1]] {
            assert!(m.patch_tokens(&x, &bad).is_err(), "{bad:?}");
        }
        assert!(m.patch_tokens(&x.narrow(2, 0, 36), &[1]).is_err());
    }

    #[test]
    fn freezing_leaves_only_late_blocks_trainable() {
        let (vs, m) = tiny();
        m.freeze(2);
        let vars = vs.variables();
        for (name, t) in &vars {
            let want = name.starts_with("blocks.2.");
            assert_eq!(t.requires_grad(), want, "{name}");
        }
        assert!(
            vars.contains_key("blocks.0.attn.qkv.weight")
                && vars.contains_key("patch_embed.proj.bias")
        );
    }

    #[test]
    fn token_shape_is_that_of_the_tokens() {
        let (_vs, m) = tiny();
        let x = Tensor::randn([2, 3, 32, 48], tch::kind::FLOAT_CPU);
        let mask = Tensor::ones([2, 1, 32, 48], tch::kind::FLOAT_CPU);
        let t = m.tokens_before(&x, &mask, 1).unwrap();
        assert_eq!(m.token_shape(32, 48).unwrap(), [t.size()[1], t.size()[2]]);
        assert!(m.token_shape(30, 48).is_err());
        assert!(m.token_shape(0, 48).is_err());
    }

    #[test]
    fn bf16_prefix_stays_close_to_fp32() {
        let (_vs, mut m) = tiny();
        let x = Tensor::randn([2, 3, 32, 32], tch::kind::FLOAT_CPU);
        let mask = Tensor::ones([2, 1, 32, 32], tch::kind::FLOAT_CPU);
        let f32_out = m.forward(&x, &mask).unwrap();
        m.set_frozen_kind(Kind::BFloat16, 2);
        assert_eq!(
            m.tokens_before(&x, &mask, 2).unwrap().kind(),
            Kind::BFloat16
        );
        let bf = m.forward(&x, &mask).unwrap();
        assert_eq!(bf.kind(), Kind::Float);
        let cos = Tensor::cosine_similarity(&f32_out, &bf, 1, 1e-8)
            .min()
            .double_value(&[]);
        assert!(cos > 0.99, "cosine {cos}");
        assert!(!f32_out.allclose(&bf, 1e-7, 1e-7, false));
        m.set_frozen_kind(Kind::Float, 2);
        assert!(m
            .forward(&x, &mask)
            .unwrap()
            .allclose(&f32_out, 0.0, 0.0, false));
    }
}
