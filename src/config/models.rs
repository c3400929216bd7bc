//! The `models` section: the backbone, its mask guidance and precision.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::arch::ArchSpec;
use super::Checks;

/// Largest `models.n_head` (the reference uses 4).
pub const MAX_HEADS: usize = 64;
/// Largest `models.image_size` (the reference uses 224).
pub const MAX_IMAGE_SIZE: usize = 2048;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Models {
    /// First backbone block that is fine-tuned; earlier blocks stay frozen.
    pub grad_from_block: usize,
    /// Backbone architecture (see `anomalyncd config show`).
    pub pretrained_backbone: String,
    /// How many of the last blocks hide non-anomalous patches from the class token.
    pub mask_layers: usize,
    pub n_views: usize,
    pub n_head: usize,
    /// Ours: backbone weights (.pth state dict or .safetensors). Default: the offline file for
    /// dinov2_vits14, none (an error) for the DINO v1 models, random init for vit_tiny.
    #[serde(with = "crate::fsutil::serde_opt_path")]
    pub backbone_weights: Option<PathBuf>,
    /// Ours: input side in pixels.
    pub image_size: usize,
    /// Ours: `auto` (bf16 for the frozen blocks where it is measurably faster: on CUDA, and on a
    /// CPU whose bf16 GEMMs time at least 1.3× faster than fp32's), `fp32`, `bf16`.
    pub precision: Precision,
    /// Ours: when no patch of a crop is at least half covered by its mask (defects thinner than
    /// half a patch: cracks, scratches), let the class token see every patch the mask touches
    /// instead of none. Off (the reference's behaviour) unless set.
    pub thin_mask_fallback: bool,
    /// Ours: `hard` (the reference: patches outside the binary crop mask are hidden from the
    /// class token), `soft` (the class token's logits are biased by the crop's anomaly map,
    /// `guidance_lambda · (m − 1)`, `m` the map min-max normalised over the crop's patches;
    /// `binarize` writes the maps under `crops/maps/`) or `soft_masked` (the same with the map
    /// set to 0 outside the crop's binary mask).
    pub guidance: GuidanceMode,
    /// Ours: λ of soft guidance: how many logits the crop's least anomalous patch is put below
    /// its most anomalous one.
    pub guidance_lambda: f64,
}

impl Default for Models {
    fn default() -> Self {
        Self {
            grad_from_block: 11,
            pretrained_backbone: "dino_vitb8".into(),
            mask_layers: 9,
            n_views: 2,
            n_head: 4,
            backbone_weights: None,
            image_size: 224,
            precision: Precision::Auto,
            thin_mask_fallback: false,
            guidance: GuidanceMode::Hard,
            guidance_lambda: 8.0,
        }
    }
}

impl Models {
    /// The ranges serde's types cannot express, and the backbone's name and depth.
    pub(super) fn check(&self, c: &mut Checks) {
        c.need(
            self.guidance_lambda.is_finite() && (0.0..=1000.0).contains(&self.guidance_lambda),
            || {
                format!(
                    "models.guidance_lambda must be in [0, 1000] (got {})",
                    self.guidance_lambda
                )
            },
        );
        match ArchSpec::by_name(&self.pretrained_backbone) {
            None => c.need(false, || {
                format!(
                    "models.pretrained_backbone `{}` is not known; use one of: {}",
                    self.pretrained_backbone,
                    ArchSpec::names().join(", ")
                )
            }),
            Some(a) => {
                c.need(self.mask_layers <= a.depth, || {
                    format!(
                        "models.mask_layers ({}) exceeds the depth of {} ({})",
                        self.mask_layers, a.name, a.depth
                    )
                });
                c.need(self.grad_from_block <= a.depth, || {
                    format!(
                        "models.grad_from_block ({}) exceeds the depth of {} ({})",
                        self.grad_from_block, a.name, a.depth
                    )
                });
                c.need(
                    self.image_size >= a.patch_size && self.image_size.is_multiple_of(a.patch_size),
                    || {
                        format!(
                            "models.image_size ({}) must be a positive multiple of the patch size of {} ({})",
                            self.image_size, a.name, a.patch_size
                        )
                    },
                );
            }
        }
        // Upper bounds on values that size allocations: beyond them a typo (an extra digit or
        // four) would abort the process on an allocation instead of saying which key is wrong.
        c.need((1..=MAX_HEADS).contains(&self.n_head), || {
            format!(
                "models.n_head must be in 1..={MAX_HEADS} (got {})",
                self.n_head
            )
        });
        c.need(self.image_size <= MAX_IMAGE_SIZE, || {
            format!(
                "models.image_size must be at most {MAX_IMAGE_SIZE} (got {})",
                self.image_size
            )
        });
        c.need(self.n_views == 2, || {
            format!(
                "models.n_views must be 2 (two augmented views per sample; got {})",
                self.n_views
            )
        });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuidanceMode {
    Hard,
    Soft,
    #[serde(rename = "soft_masked")]
    SoftMasked,
}

impl GuidanceMode {
    /// Whether the crops' maps guide the model (they must then exist beside the crops).
    pub fn uses_maps(self) -> bool {
        self != GuidanceMode::Hard
    }

    /// The config value (`models.guidance`), for logs.
    pub fn name(self) -> &'static str {
        match self {
            GuidanceMode::Hard => "hard",
            GuidanceMode::Soft => "soft",
            GuidanceMode::SoftMasked => "soft_masked",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Auto,
    Fp32,
    Bf16,
}
