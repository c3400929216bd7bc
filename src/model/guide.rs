//! What the class token may see in the mask-guided blocks.
//!
//! - **Hard** (the reference): the crop mask is average-pooled by the patch size and every patch
//!   whose pooled mask is < 0.5 gets the score −1e9 in the class token's attention row.
//! - **Soft** (ours, after ProtoAnomalyNCD): the crop's *anomaly map* is pooled the same way,
//!   min-max normalised over the crop's patches to `m ∈ [0, 1]`, and the class token's logit for
//!   each patch gets the bias `λ·(m − 1)`: the crop's most anomalous patch is seen as the
//!   pretrained model would see it, and a patch `λ` logits less anomalous-looking is weighted
//!   `e^{-λ}` times less, instead of a loose binary mask showing background at full weight. A
//!   uniform map (no patch more anomalous than another) shows every patch (bias 0); a 0/1 map
//!   aligned with the patch grid and a large `λ` is the hard mask.
//!
//! Either way a guide is one byte per token, `level ∈ 0..=255` (255: fully visible; the class
//! token always is), small enough for the token cache to keep beside the cached tokens. The
//! normalised map is quantised to those 256 levels in both the direct and the cached path, so the
//! two agree exactly; the step, `λ/255` logits, is far below what changes a prediction.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// The score a hidden patch gets in the class-token row (the reference's value).
pub const HIDDEN_SCORE: f64 = -1e9;

/// How the mask-guided blocks use a crop's mask or map (`models.guidance`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "mode")]
pub enum Guidance {
    /// Hide patches less than half covered by the binary mask (the reference).
    Hard,
    /// Bias the class token's logits by `lambda · (m − 1)`, `m` the crop's normalised map.
    Soft { lambda: f64 },
}

impl Guidance {
    /// The guidance `models` asks for.
    pub fn of(m: &crate::config::Models) -> Guidance {
        match m.guidance {
            crate::config::GuidanceMode::Hard => Guidance::Hard,
            crate::config::GuidanceMode::Soft | crate::config::GuidanceMode::SoftMasked => {
                Guidance::Soft {
                    lambda: m.guidance_lambda,
                }
            }
        }
    }
}

/// A short name for logs and keys: `hard`, `soft(λ=8)`.
impl std::fmt::Display for Guidance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Guidance::Hard => f.write_str("hard"),
            Guidance::Soft { lambda } => write!(f, "soft(λ={lambda})"),
        }
    }
}

/// Everything `models.guidance` and `models.guidance_lambda` decide about what guides the
/// class token: how the blocks use a crop's guide, and whether the crop's map is first set to 0
/// outside its binary mask (`soft_masked`; the crop set applies it when decoding).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuideSettings {
    pub guidance: Guidance,
    pub map_within_mask: bool,
}

impl GuideSettings {
    /// The settings `models` asks for.
    pub fn of(m: &crate::config::Models) -> GuideSettings {
        GuideSettings {
            guidance: Guidance::of(m),
            map_within_mask: m.guidance == crate::config::GuidanceMode::SoftMasked,
        }
    }
}

/// `hard`, `soft(λ=8)`, `masked soft(λ=8)`: the token cache's key holds this string, so it must
/// not change for settings that exist (their caches would be rebuilt).
impl std::fmt::Display for GuideSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.map_within_mask {
            f.write_str("masked ")?;
        }
        self.guidance.fmt(f)
    }
}

/// The guide of a batch: per token levels and how to turn them into attention scores.
pub struct MaskGuide {
    /// `[B, 1+N]` u8: how much the class token may see each token (255: fully; 0: hidden under
    /// the hard mask, the crop's least anomalous patch under the soft one).
    pub(crate) level: Tensor,
    pub(crate) guidance: Guidance,
}

impl MaskGuide {
    /// `mask [B, 1, H, W]` in [0, 1] (a 0/1 mask for `Hard`, a map for `Soft`) → the guide of
    /// its `patch`×`patch` cells. With `thin_fallback` (hard only), a crop none of whose patches
    /// reaches one half shows every patch its mask touches instead (the reference would hide
    /// them all).
    pub(crate) fn new(mask: &Tensor, patch: i64, thin_fallback: bool, guidance: Guidance) -> Self {
        let pooled = mask
            .to_kind(Kind::Float)
            .avg_pool2d([patch, patch], [patch, patch], [0, 0], false, true, None)
            .flatten(1, -1);
        let b = pooled.size()[0];
        let patches = match guidance {
            Guidance::Hard => {
                let mut hidden = pooled.lt(0.5);
                if thin_fallback {
                    let none_shown = hidden.all_dim(1, true);
                    hidden = hidden.where_self(&none_shown.logical_not(), &pooled.le(0.0));
                }
                hidden.logical_not().to_kind(Kind::Uint8) * 255
            }
            Guidance::Soft { .. } => {
                let (lo, hi) = (pooled.amin(1, true), pooled.amax(1, true));
                let span = &hi - &lo;
                // A flat map: no patch is more anomalous than another, so all are seen.
                let flat = span.le(1e-6);
                let m = ((&pooled - &lo) / span.clamp_min(1e-6))
                    .where_self(&flat.logical_not(), &Tensor::ones_like(&pooled));
                (m * 255.0).round().clamp(0.0, 255.0)
            }
        };
        let cls = Tensor::full([b, 1], 255, (Kind::Uint8, mask.device()));
        MaskGuide {
            level: Tensor::cat(&[cls, patches.to_kind(Kind::Uint8)], 1),
            guidance,
        }
    }

    /// Every token fully visible (no guidance), for `b` rows of `l` tokens.
    pub(crate) fn open(b: i64, l: i64, device: tch::Device) -> Self {
        MaskGuide {
            level: Tensor::full([b, l], 255, (Kind::Uint8, device)),
            guidance: Guidance::Hard,
        }
    }

    /// `[B, 1+N]` bool: tokens the hard mask hides.
    pub(crate) fn hidden(&self) -> Tensor {
        self.level.eq(0)
    }

    /// `[B, 1, 1, L]`: what the class-token query row adds to its scores (−1e9 where hidden
    /// under the hard mask; `λ·(m − 1)` under the soft one).
    pub(crate) fn additive_row(&self, kind: Kind) -> Tensor {
        let (b, l) = (self.level.size()[0], self.level.size()[1]);
        self.bias().view([b, 1, 1, l]).to_kind(kind)
    }

    /// `[B, L]` f32 bias of the class-token row.
    pub(crate) fn bias(&self) -> Tensor {
        match self.guidance {
            Guidance::Hard => self.hidden().to_kind(Kind::Float) * HIDDEN_SCORE,
            Guidance::Soft { lambda } => (self.level.to_kind(Kind::Float) / 255.0 - 1.0) * lambda,
        }
    }

    /// `[B, 1, L, L]`: true where a score is replaced by −1e9 (row 0 only; hard guidance).
    pub(crate) fn full_mask(&self) -> Tensor {
        let (b, l) = (self.level.size()[0], self.level.size()[1]);
        self.hidden()
            .view([b, 1, 1, l])
            .logical_and(&row0(l, &self.level))
    }

    /// `[B, 1, L, L]` f32: the soft bias on row 0, zero elsewhere.
    pub(crate) fn full_bias(&self) -> Tensor {
        let (b, l) = (self.level.size()[0], self.level.size()[1]);
        self.bias().view([b, 1, 1, l]) * row0(l, &self.level).to_kind(Kind::Float)
    }

    /// Adds the class-token row's guidance to attention `scores [B, h, L, L]`.
    pub(crate) fn apply_full(&self, scores: Tensor) -> Tensor {
        match self.guidance {
            Guidance::Hard => scores.masked_fill(&self.full_mask(), HIDDEN_SCORE),
            Guidance::Soft { .. } => &scores + self.full_bias().to_kind(scores.kind()),
        }
    }

    /// Adds the guidance to the class token's own scores `[B, h, L]`.
    pub(crate) fn apply_cls(&self, scores: Tensor) -> Tensor {
        let (b, l) = (self.level.size()[0], self.level.size()[1]);
        match self.guidance {
            Guidance::Hard => scores.masked_fill(&self.hidden().view([b, 1, l]), HIDDEN_SCORE),
            Guidance::Soft { .. } => &scores + self.bias().view([b, 1, l]).to_kind(scores.kind()),
        }
    }
}

/// `[1, 1, L, 1]` bool: true on row 0.
fn row0(l: i64, like: &Tensor) -> Tensor {
    Tensor::arange(l, (Kind::Int64, like.device()))
        .eq(0)
        .view([1, 1, l, 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn levels(g: &MaskGuide) -> Vec<u8> {
        Vec::try_from(g.level.view([-1])).unwrap()
    }

    #[test]
    fn pooled_mask_hides_patches_below_one_half() {
        // 16×16 mask, patch 8: cells (0,0) full, (0,1) half, (1,0) a quarter, (1,1) empty.
        let mut m = vec![0f32; 256];
        for y in 0..16 {
            for x in 0..16 {
                let on = (y < 8 && x < 12) || ((8..12).contains(&y) && x < 4);
                m[y * 16 + x] = on as i32 as f32;
            }
        }
        let mask = Tensor::from_slice(&m).view([1, 1, 16, 16]);
        let g = MaskGuide::new(&mask, 8, false, Guidance::Hard);
        let hidden: Vec<bool> = Vec::try_from(g.hidden().view([-1])).unwrap();
        assert_eq!(hidden, [false, false, false, true, true]);
        let full = g.full_mask();
        assert_eq!(full.size(), [1, 1, 5, 5]);
        // Only the class-token row is masked.
        assert_eq!(full.sum(Kind::Int64).int64_value(&[]), 2);
        assert!(full.get(0).get(0).get(1).any().int64_value(&[]) == 0);
    }

    #[test]
    fn thin_masks_fall_back_to_the_touched_patches() {
        // 16×16, patch 8: a 2-pixel line in cell (0,1) covers 1/4 of it; nothing reaches 1/2.
        let mut m = vec![0f32; 256];
        for y in 0..8 {
            m[y * 16 + 10] = 1.0;
            m[y * 16 + 11] = 1.0;
        }
        let thin = Tensor::from_slice(&m).view([1, 1, 16, 16]);
        let hidden = |mask: &Tensor, fb| -> Vec<bool> {
            Vec::try_from(
                MaskGuide::new(mask, 8, fb, Guidance::Hard)
                    .hidden()
                    .view([-1]),
            )
            .unwrap()
        };
        assert_eq!(hidden(&thin, false), [false, true, true, true, true]);
        assert_eq!(hidden(&thin, true), [false, true, false, true, true]);
        // A mask with a half-covered patch and an empty mask are as without the fallback.
        let mut thick = m.clone();
        for v in thick.iter_mut().take(8 * 16) {
            *v = 1.0;
        }
        let thick = Tensor::from_slice(&thick).view([1, 1, 16, 16]);
        assert_eq!(hidden(&thick, true), hidden(&thick, false));
        let empty = Tensor::zeros([1, 1, 16, 16], tch::kind::FLOAT_CPU);
        assert_eq!(hidden(&empty, true), [false, true, true, true, true]);
    }

    #[test]
    fn settings_read_as_the_token_cache_keys_of_existing_caches() {
        use crate::config::{GuidanceMode, Models};
        let name = |guidance, guidance_lambda| {
            GuideSettings::of(&Models {
                guidance,
                guidance_lambda,
                ..Models::default()
            })
            .to_string()
        };
        assert_eq!(name(GuidanceMode::Hard, 8.0), "hard");
        assert_eq!(name(GuidanceMode::Soft, 8.0), "soft(λ=8)");
        assert_eq!(name(GuidanceMode::SoftMasked, 8.0), "masked soft(λ=8)");
        assert_eq!(name(GuidanceMode::Soft, 2.5), "soft(λ=2.5)");
        assert_eq!(name(GuidanceMode::SoftMasked, 0.5), "masked soft(λ=0.5)");
    }

    #[test]
    fn soft_levels_are_the_crop_min_max_of_the_pooled_map() {
        // 16×8, patch 8: two cells with map means 0.2 and 0.6, per crop min-max → 0 and 1.
        let mut m = vec![0.2f32; 128];
        for y in 0..8 {
            for x in 8..16 {
                m[y * 16 + x] = 0.6;
            }
        }
        let map = Tensor::from_slice(&m).view([1, 1, 8, 16]);
        let g = MaskGuide::new(&map, 8, false, Guidance::Soft { lambda: 4.0 });
        assert_eq!(levels(&g), [255, 0, 255]);
        let bias: Vec<f32> = Vec::try_from(g.bias().view([-1])).unwrap();
        assert_eq!(bias, [0.0, -4.0, 0.0]);
        // A flat map shows everything.
        let flat = Tensor::full([2, 1, 8, 16], 0.3, tch::kind::FLOAT_CPU);
        let g = MaskGuide::new(&flat, 8, false, Guidance::Soft { lambda: 4.0 });
        assert_eq!(levels(&g), [255; 6]);
        assert_eq!(g.bias().abs().max().double_value(&[]), 0.0);
    }
}
