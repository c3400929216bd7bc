//! The backbone architectures `models.pretrained_backbone` can name.

/// How the stored position-embedding grid is resized (bicubic, no corner alignment) to the
/// patch grid of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PosInterp {
    /// DINO v1 (and the reference): `scale_factor = (n + 0.1) / grid`, the kernel sampling with
    /// that scale (the 0.1 avoids a floating-point off-by-one in the output size).
    ScaleOffset,
    /// Hugging Face's Dinov2 (the source of the offline default): `size = n`, sampling with
    /// `grid / n`.
    ExactSize,
}

/// Shape of one ViT backbone. Every architecture here is pre-norm, qkv-biased, MLP ratio 4,
/// LayerNorm eps 1e-6, as in DINO and DINOv2.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArchSpec {
    pub name: &'static str,
    pub patch_size: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    /// DINOv2 scales the attention and MLP branches by learnt per-channel factors.
    pub layer_scale: bool,
    /// Side of the position-embedding grid stored in the weights (interpolated to other inputs).
    pub pos_grid: usize,
    /// How that grid is resized to another input size.
    pub pos_interp: PosInterp,
    /// Where users get pretrained weights for it.
    pub weights_hint: &'static str,
}

/// The offline default architecture, DINOv2 ViT-S/14: its config name, also the stem of its
/// weights file in `data/weights/`.
pub const DINOV2_VITS14: &str = "dinov2_vits14";

pub const ARCHS: &[ArchSpec] = &[
    ArchSpec {
        name: "dino_vits16",
        patch_size: 16,
        embed_dim: 384,
        depth: 12,
        num_heads: 6,
        layer_scale: false,
        pos_grid: 14,
        pos_interp: PosInterp::ScaleOffset,
        weights_hint: "dino_deitsmall16_pretrain.pth from the official DINO release",
    },
    ArchSpec {
        name: "dino_vits8",
        patch_size: 8,
        embed_dim: 384,
        depth: 12,
        num_heads: 6,
        layer_scale: false,
        pos_grid: 28,
        pos_interp: PosInterp::ScaleOffset,
        weights_hint: "dino_deitsmall8_pretrain.pth from the official DINO release",
    },
    ArchSpec {
        name: "dino_vitb16",
        patch_size: 16,
        embed_dim: 768,
        depth: 12,
        num_heads: 12,
        layer_scale: false,
        pos_grid: 14,
        pos_interp: PosInterp::ScaleOffset,
        weights_hint: "dino_vitbase16_pretrain.pth from the official DINO release",
    },
    ArchSpec {
        name: "dino_vitb8",
        patch_size: 8,
        embed_dim: 768,
        depth: 12,
        num_heads: 12,
        layer_scale: false,
        pos_grid: 28,
        pos_interp: PosInterp::ScaleOffset,
        weights_hint: "dino_vitbase8_pretrain.pth from the official DINO release",
    },
    ArchSpec {
        name: DINOV2_VITS14,
        patch_size: 14,
        embed_dim: 384,
        depth: 12,
        num_heads: 6,
        layer_scale: true,
        pos_grid: 37,
        pos_interp: PosInterp::ExactSize,
        weights_hint: "data/weights/dinov2_vits14.safetensors, made by scripts/setup.sh (or dinov2_vits14_pretrain.pth from the official DINOv2 release)",
    },
    ArchSpec {
        name: "dinov2_vitb14",
        patch_size: 14,
        embed_dim: 768,
        depth: 12,
        num_heads: 12,
        layer_scale: true,
        pos_grid: 37,
        pos_interp: PosInterp::ExactSize,
        weights_hint: "dinov2_vitb14_pretrain.pth from the official DINOv2 release (its mask_token is ignored)",
    },
    // A tiny ViT for tests and quick experiments (the golden `mgvit_tiny` shape); random init
    // when no weights are given.
    ArchSpec {
        name: "vit_tiny",
        patch_size: 8,
        embed_dim: 48,
        depth: 3,
        num_heads: 3,
        layer_scale: false,
        pos_grid: 4,
        pos_interp: PosInterp::ScaleOffset,
        weights_hint: "none needed (random init) or a safetensors file of the same shape",
    },
];

impl ArchSpec {
    pub fn by_name(name: &str) -> Option<&'static ArchSpec> {
        ARCHS.iter().find(|a| a.name == name)
    }

    pub fn names() -> Vec<&'static str> {
        ARCHS.iter().map(|a| a.name).collect()
    }

    /// GFLOP of `blocks` transformer blocks over `tokens` tokens (class token included): the
    /// qkv, projection and MLP (4× width) GEMMs, 24·D² per token, and the attention's two
    /// products, 4·D per token pair, which make a 392-px input 3.7× a 224-px one, not 3.05×.
    pub fn blocks_gflop(&self, tokens: f64, blocks: usize) -> f64 {
        let d = self.embed_dim as f64;
        blocks as f64 * (24.0 * d * d * tokens + 4.0 * d * tokens * tokens) / 1e9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_flops_count_the_gemms_and_the_attention() {
        let s = ArchSpec::by_name(DINOV2_VITS14).unwrap();
        // ViT-S/14 at 224 px: 257 tokens, 11 blocks of the frozen prefix ≈ 11.1 GFLOP.
        let at224 = s.blocks_gflop(257.0, 11);
        assert!((at224 - 11.1).abs() < 0.1, "{at224}");
        let at392 = s.blocks_gflop(785.0, 11);
        assert!((at392 / at224 - 3.69).abs() < 0.02, "{}", at392 / at224);
        assert_eq!(s.blocks_gflop(257.0, 0), 0.0);
    }

    #[test]
    fn paper_default_is_vit_b8() {
        let a = ArchSpec::by_name("dino_vitb8").unwrap();
        assert_eq!(
            (a.patch_size, a.embed_dim, a.depth, a.num_heads),
            (8, 768, 12, 12)
        );
        assert!(ArchSpec::by_name("resnet50").is_none());
        assert_eq!(a.embed_dim % a.num_heads, 0);
    }
}
