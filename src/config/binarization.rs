//! The `binarization` section: MEBin's settings, and ours around it (the search range's floor,
//! the crop of a map without a stable interval, the maps' refinement).

use serde::{Deserialize, Serialize};

use super::Checks;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Binarization {
    /// Step between tried thresholds on the normalised 0..255 scale.
    pub sample_rate: u32,
    /// Shortest run of equal component counts that counts as stable.
    pub min_interval_len: usize,
    /// Erode each binary map with a 6×6 kernel before counting components.
    pub erode: bool,
    /// Ours: lower end of the threshold search range (raw map scale) instead of the smallest
    /// per-map maximum; for sets without normal images (the reference's issue #8).
    pub min_threshold: Option<f64>,
    /// Ours: what a map with no stable interval is cropped to. `peak` (default): the region
    /// around the map's maximum; `whole_image`: the reference's whole image with an empty mask.
    pub no_interval: NoInterval,
    /// Ours: refine each map before MEBin. `none` (default): the reference's maps; `guided`: the
    /// guided filter with the image as guide (`mebin::refine`).
    pub refine: Refine,
    /// Ours: the guided filter's window radius in map pixels; `null`: 1/64 of the map's shorter
    /// side, at least 2.
    pub refine_radius: Option<usize>,
    /// Ours: the guided filter's regularisation, a variance of the image's 0..1 brightness:
    /// image edges of lower contrast are smoothed over.
    pub refine_eps: f64,
    /// Ours: where in the stable interval the threshold is taken, from its start (0: the highest
    /// threshold of the run, the tightest mask) to its end (1: the lowest, the loosest mask, the
    /// reference's choice). Every threshold of the interval gives the same component count, so
    /// only the masks' extent changes.
    #[serde(skip_serializing_if = "is_interval_end")]
    pub interval_position: f64,
    /// Ours: a factor on every crop's side (the reference's padded component box, or its
    /// smallest crop, whichever is larger; still at most the image's larger side): above 1 a
    /// crop shows more of the defect's surroundings. 1 is the reference's crop.
    #[serde(skip_serializing_if = "is_reference_crop_scale")]
    pub crop_scale: f64,
}

/// Left out of the serialised section at the reference's 1, so that earlier fingerprints keep
/// their form.
fn is_reference_crop_scale(v: &f64) -> bool {
    *v == 1.0
}

/// The reference's `interval_position`: the end of the stable interval.
pub const INTERVAL_END: f64 = 1.0;

/// Left out of the serialised section (and of `mebin.json`) at the reference's value, so that
/// the fingerprints of runs with the reference's settings keep their earlier form.
pub(crate) fn is_interval_end(v: &f64) -> bool {
    *v == INTERVAL_END
}

/// Serde's default where the key is absent: the reference's.
pub(crate) fn interval_end() -> f64 {
    INTERVAL_END
}

impl Default for Binarization {
    fn default() -> Self {
        Self {
            sample_rate: 4,
            min_interval_len: 4,
            erode: true,
            min_threshold: None,
            no_interval: NoInterval::Peak,
            refine: Refine::None,
            refine_radius: None,
            refine_eps: 1e-3,
            interval_position: INTERVAL_END,
            crop_scale: 1.0,
        }
    }
}

impl Binarization {
    /// The ranges serde's types cannot express.
    pub(super) fn check(&self, c: &mut Checks) {
        c.need((1..=255).contains(&self.sample_rate), || {
            format!(
                "binarization.sample_rate must be in 1..=255 (got {})",
                self.sample_rate
            )
        });
        c.need(self.min_interval_len >= 1, || {
            "binarization.min_interval_len must be at least 1".into()
        });
        if let Some(v) = self.min_threshold {
            c.need(v.is_finite() && v >= 0.0, || {
                format!("binarization.min_threshold must be a finite number >= 0 (got {v})")
            });
        }
        c.need(self.refine_eps.is_finite() && self.refine_eps > 0.0, || {
            format!(
                "binarization.refine_eps must be a number > 0 (got {})",
                self.refine_eps
            )
        });
        c.need((0.0..=1.0).contains(&self.interval_position), || {
            format!(
                "binarization.interval_position must be in 0..=1 (got {}); 1 is the reference's \
                 end of the stable interval",
                self.interval_position
            )
        });
        c.need((0.25..=4.0).contains(&self.crop_scale), || {
            format!(
                "binarization.crop_scale must be in 0.25..=4 (got {}); 1 is the reference's crop",
                self.crop_scale
            )
        });
        if let Some(r) = self.refine_radius {
            c.need((1..=256).contains(&r), || {
                format!("binarization.refine_radius must be in 1..=256 (got {r})")
            });
        }
    }
}

/// `binarization.refine`: what is done to a map before MEBin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Refine {
    #[default]
    None,
    Guided,
}

/// `binarization.no_interval`: the crop of a map whose component counts have no stable interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NoInterval {
    /// The connected region around the map's maximum (see `mebin::peak`).
    #[default]
    Peak,
    /// The reference's behaviour: threshold at the top level, whole-image crop, empty mask.
    WholeImage,
}
