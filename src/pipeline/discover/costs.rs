//! What `discover`'s stages cost on this machine, for the plan and the ETA: rough rates measured
//! on the reference CPU, scaled by [`Speed`].

use super::plan::Speed;
use crate::config::{arch::ArchSpec, CnnMix, Config};
use crate::detect::held_out_normals;

/// Seconds per unit on the 2-core CPU the README's first tables were measured on (DINOv2
/// ViT-S/14, fp32), scaled to this machine by [`Speed`]: rough, for the plan and the ETA only.
pub struct Costs;

impl Costs {
    /// The detector over `fit` normal and `scored` test images (zero-shot: `fit` 0) of
    /// `patches` patches each on average: a forward to the last tapped block (12) per image,
    /// then the coreset and each test patch's search of the memory bank, or, zero-shot, the
    /// mutual scoring against up to 64 references.
    /// Seconds of `images` forwards of the detector backbone at `patches` patches each.
    pub(super) fn detect_forwards(images: f64, patches: f64, speed: Speed) -> f64 {
        let vit = crate::detect::features::dinov2_arch();
        images * vit.blocks_gflop(patches + 1.0, vit.depth) / speed.forward
    }

    pub(super) fn detect(fit: f64, scored: f64, patches: f64, speed: Speed) -> f64 {
        let vit = crate::detect::features::dinov2_arch();
        let forwards = Self::detect_forwards(fit + scored, patches, speed);
        let extra = if fit > 0.0 {
            let pool = (fit * patches).min(crate::detect::DEFAULT_MAX_PATCHES as f64);
            let bank = crate::detect::DEFAULT_CORESET * pool;
            let search = scored * patches * bank * 2.0 * vit.embed_dim as f64 / 1e9 / speed.fp32;
            pool * bank * Self::CORESET_PAIR + search
        } else {
            let refs = (scored - 1.0).clamp(0.0, 64.0);
            let per_pair = Self::MUTUAL_PAIR * (Speed::REFERENCE.fp32 / speed.fp32).powf(1.6);
            scored * refs * patches * patches * per_pair
        };
        forwards + extra + 5.0
    }

    /// The detector's `plain` estimate with the config's map variants: per-block scoring
    /// measured 1.0–1.3× the default run (a bank and a search per tapped block); fusing the
    /// mutual score adds the zero-shot scoring of the test images; the CNN beside the ViT
    /// measured 0.38× (MTD) and 0.49× (tire) of the ViT's detector; under `auto` only the
    /// held-out normals' scoring is counted (the CNN only where they call for it).
    pub(super) fn detect_variants(
        plain: f64,
        fit: f64,
        scored: f64,
        patches: f64,
        v: &crate::config::MapVariants,
        speed: Speed,
    ) -> f64 {
        let mut s = plain * if v.per_block { 1.3 } else { 1.0 };
        if fit > 0.0 && v.fuse_mutual > 0.0 {
            s += Self::detect(0.0, scored, patches, speed) - 5.0;
        }
        s + match (fit > 0.0, v.fuse_cnn) {
            (false, _) => 0.0,
            (true, CnnMix::Auto) => plain * held_out_normals(fit as usize) as f64 / (fit + scored),
            (true, w) => w.is_on() as u8 as f64 * Self::CNN * plain,
        }
    }

    /// The CNN detector beside the ViT, per second of the ViT's detector.
    pub(super) const CNN: f64 = 0.45;

    /// The greedy k-center coreset, per (pooled patch, bank patch) pair: 21 s for 97 656 ×
    /// 9 766 on the EPYC, about as long on the AMX Xeon (bound by memory, not by GEMMs).
    pub(super) const CORESET_PAIR: f64 = 2.2e-8;
    /// Zero-shot scoring per (patch, reference patch) pair on the reference CPU: 36 s for 40
    /// MTD tiles against 39 references each. It scales faster than the fp32 rate (about its
    /// 1.6th power: 3.9e-9 s on the AMX Xeon at 5.1× the rate), so that power is used.
    pub(super) const MUTUAL_PAIR: f64 = 5.3e-8;
    /// A cached training step per sample, in fp32-GEMM GFLOP: 14 ms at 257 tokens and 19 ms at
    /// 785 on the reference CPU (the trainable tail, heads and losses, mostly not GEMMs), scaled
    /// by what folding the last block's LayerNorm saved on a 2-core Xeon (the 50 epochs took
    /// 0.825× as long at 257 tokens and 0.725× at 785; docs/performance.md, "The class token's
    /// LayerNorm folded").
    pub(super) const STEP: f64 = 0.70;
    pub(super) const STEP_PER_TOKEN: f64 = 2.8e-4;
    /// Crops per defective image (MTD: 416–520 for 392 images) and per base image (SD-900: 377
    /// for 300; the synthetic base set: 1 each).
    pub(super) const NOVEL_CROPS: f64 = 1.2;
    pub(super) const BASE_CROPS: f64 = 1.2;
}

/// What one crop costs in the train stage on this machine, from the config's backbone and
/// input size.
pub(super) struct CropCosts {
    /// A forward of the frozen prefix (blocks before `models.grad_from_block`): a cached view.
    pub prefix_s: f64,
    /// A forward of the whole backbone: an uncached view.
    pub full_s: f64,
    /// A cached training step.
    pub step_s: f64,
}

impl CropCosts {
    pub(super) fn new(cfg: &Config, speed: Speed) -> CropCosts {
        let a = ArchSpec::by_name(&cfg.models.pretrained_backbone)
            .unwrap_or_else(crate::detect::features::dinov2_arch);
        let side = cfg.models.image_size as f64 / a.patch_size as f64;
        let tokens = side * side + 1.0;
        let width = (a.embed_dim as f64 / 384.0).powi(2);
        CropCosts {
            prefix_s: a.blocks_gflop(tokens, cfg.models.grad_from_block.min(a.depth))
                / speed.forward,
            full_s: a.blocks_gflop(tokens, a.depth) / speed.forward,
            step_s: (Costs::STEP + Costs::STEP_PER_TOKEN * tokens) * width / speed.fp32,
        }
    }
}
