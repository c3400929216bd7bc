//! The `detect` section: the built-in detector's map variants (issue 25, item 3) as `discover`
//! takes them from a config. The defaults are the detector's defaults, so a config without the
//! section gives today's maps; `detect::MapVariants::apply` copies the section into a detector
//! run (the struct lives here so that the config does not depend on the detector).

use serde::{Deserialize, Serialize};

/// The maps' Gaussian blur sigma at a 256-pixel side (the detector's default).
pub const DEFAULT_BLUR: f64 = 4.0;

/// What `detect --per-block / --aggregate-sizes / --fuse-mutual / --holdout-normals / --blur`
/// set, with the command's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MapVariants {
    /// Score each tapped block against its own bank, then average the maps.
    pub per_block: bool,
    /// Neighbourhood sizes whose maps are averaged (empty: the detector's one 3×3 mean).
    pub aggregate_sizes: Vec<i64>,
    /// Weight of the mutual (zero-shot) score fused into the fitted one (0: none).
    pub fuse_mutual: f64,
    /// Share of the normal images held out of the bank to set MEBin's floor (0: none).
    pub holdout: f64,
    /// The maps' blur sigma at 256 pixels.
    pub blur: f64,
}

impl Default for MapVariants {
    fn default() -> Self {
        MapVariants {
            per_block: false,
            aggregate_sizes: Vec::new(),
            fuse_mutual: 0.0,
            holdout: 0.0,
            blur: DEFAULT_BLUR,
        }
    }
}
