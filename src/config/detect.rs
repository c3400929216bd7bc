//! The `detect` section: the built-in detector's map variants (issue 25, item 3) as `discover`
//! takes them from a config. The defaults are the detector's defaults, so a config without the
//! section gives today's maps; `detect::MapVariants::apply` copies the section into a detector
//! run (the struct lives here so that the config does not depend on the detector).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The maps' Gaussian blur sigma at a 256-pixel side (the detector's default).
pub const DEFAULT_BLUR: f64 = 4.0;

/// Zero-shot: the share of a patch's per-reference distances, the lowest, whose mean is its
/// score (the detector's default). 0.15, where it was 0.3 until 2026-12-07: side by side over
/// seeds it lifted MTD zero-shot's F1 and left SD-900's level (docs/results.md, eleventh
/// session). The share is a trade: a smaller one quiets normal texture, scored by its closest
/// matches only, but a defect that recurs in more than that share of the images scores lower.
pub const DEFAULT_ZERO_SHOT_FRACTION: f64 = 0.15;

/// The temperature of the softmax that pools an image's patch features under its map, relative
/// to the image's own score spread (`pool_tau`; the detector's and the train stage's pooled
/// features). 0.5, where it was 1 until 2026-12-07: on the same trained models, the answer's
/// graph on features pooled at 0.5 was level with or above 1 on all five benchmark protocols,
/// and new runs with it gave a level F1 and a higher NMI on three (docs/results.md, thirteenth
/// session); k-means on the features alone had favoured 0.5 on MTD and tire before.
pub const DEFAULT_POOL_TAU: f64 = 0.5;

/// The largest `pool_tau`: far above it the softmax is the plain mean of the patches.
pub const MAX_POOL_TAU: f64 = 100.0;

/// The largest share of the normal images held out of the bank (`holdout`).
pub const MAX_HOLDOUT: f64 = 0.5;

/// The largest blur sigma at a 256-pixel side (`blur`).
pub const MAX_BLUR: f64 = 32.0;

/// The largest neighbourhood side a patch feature is averaged over (`aggregate_sizes`).
pub const MAX_AGGREGATE_SIZE: i64 = 15;

/// The backbone input sides a fixed `image_size` may take.
pub const IMAGE_SIDES: std::ops::RangeInclusive<u32> = 32..=2048;

/// Whether `sizes` are distinct odd neighbourhood sides in `1..=MAX_AGGREGATE_SIZE` (the
/// config's `aggregate_sizes` and the detector's `--aggregate` / `--aggregate-sizes`).
pub fn valid_aggregate_sizes(sizes: &[i64]) -> bool {
    let odd = |k: i64| (1..=MAX_AGGREGATE_SIZE).contains(&k) && k % 2 == 1;
    let distinct = (1..sizes.len()).all(|i| !sizes[..i].contains(&sizes[i]));
    sizes.iter().all(|&k| odd(k)) && distinct
}

/// Whether `t` is a pooling temperature: in (0, [`MAX_POOL_TAU`]].
pub fn valid_pool_tau(t: f64) -> bool {
    t > 0.0 && t <= MAX_POOL_TAU
}

/// Whether `f` is a zero-shot share of the reference distances: in (0, 1].
pub fn valid_zero_shot_fraction(f: f64) -> bool {
    f > 0.0 && f <= 1.0
}

/// What `detect --per-block / --aggregate-sizes / --fuse-mutual / --fuse-cnn / --holdout-normals / --blur
/// / --zero-shot-fraction` set, with the command's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MapVariants {
    /// Score each tapped block against its own bank, then average the maps.
    pub per_block: bool,
    /// Neighbourhood sizes whose maps are averaged (empty: the detector's one 3×3 mean).
    pub aggregate_sizes: Vec<i64>,
    /// Weight of the mutual (zero-shot) score fused into the fitted one (0: none).
    pub fuse_mutual: f64,
    /// Weight of the CNN detector's maps (EfficientNet-Lite0) mixed into the ViT's, with normal
    /// images (0: none), or `auto`: mixed in where held-out normal images show the CNN
    /// separating them from the flagged images better (see [`CnnMix`]).
    pub fuse_cnn: CnnMix,
    /// Share of the normal images held out of the bank to set MEBin's floor (0: none).
    pub holdout: f64,
    /// The maps' blur sigma at 256 pixels.
    pub blur: f64,
    /// The backbone input's longer side: `auto` (from the images' own size, see
    /// `detect::auto_image_size`) or a number of pixels.
    pub image_size: ImageSize,
    /// Zero-shot maps only (no normal images): a patch's score is the mean of this share of
    /// its distances to the reference images, the lowest. Left out of the serialised section
    /// at its default, so that earlier configs keep their form.
    #[serde(skip_serializing_if = "is_default_zero_shot_fraction")]
    pub zero_shot_fraction: f64,
    /// The softmax temperature of the images' pooled features ([`DEFAULT_POOL_TAU`]), which
    /// `training.neighbor_features: pooled` and `inference.spectral_graph: trained_and_pooled`
    /// read: the detector pools with it while it scores, and the train stage when it computes
    /// them. Always serialised: the train stage's fingerprint must tell 0.5 from the 1 that
    /// earlier builds pooled with.
    pub pool_tau: f64,
}

fn is_default_zero_shot_fraction(v: &f64) -> bool {
    *v == DEFAULT_ZERO_SHOT_FRACTION
}

impl MapVariants {
    /// The section's ranges, checked when the config is read so that `discover` stops before
    /// its first stage; the detector checks the same ranges again under its flags' names. Keys
    /// that conflict only with normal images (`holdout` beside `fuse_cnn`) are left to the
    /// detector: a zero-shot run ignores both.
    pub(super) fn check(&self, c: &mut super::Checks) {
        let unit = |v: f64| (0.0..=1.0).contains(&v);
        c.need(unit(self.fuse_mutual), || {
            format!(
                "detect.fuse_mutual must be in [0, 1] (got {})",
                self.fuse_mutual
            )
        });
        if let CnnMix::Weight(w) = self.fuse_cnn {
            c.need(unit(w), || {
                format!("detect.fuse_cnn must be `auto` or in [0, 1] (got {w})")
            });
        }
        c.need((0.0..=MAX_HOLDOUT).contains(&self.holdout), || {
            format!(
                "detect.holdout must be in [0, {MAX_HOLDOUT}] (got {})",
                self.holdout
            )
        });
        c.need((0.0..=MAX_BLUR).contains(&self.blur), || {
            format!("detect.blur must be in [0, {MAX_BLUR}] (got {})", self.blur)
        });
        let sizes = &self.aggregate_sizes;
        c.need(valid_aggregate_sizes(sizes), || {
            format!(
                "detect.aggregate_sizes must hold distinct odd sides in 1..={MAX_AGGREGATE_SIZE} \
                 (got {sizes:?}), e.g. [1, 3, 5]"
            )
        });
        if let ImageSize::Fixed(n) = self.image_size {
            c.need(IMAGE_SIDES.contains(&n), || {
                format!(
                    "detect.image_size must be `auto` or in {}..={} pixels (got {n})",
                    IMAGE_SIDES.start(),
                    IMAGE_SIDES.end()
                )
            });
        }
        c.need(valid_pool_tau(self.pool_tau), || {
            format!(
                "detect.pool_tau must be in (0, {MAX_POOL_TAU}] (got {})",
                self.pool_tau
            )
        });
        c.need(valid_zero_shot_fraction(self.zero_shot_fraction), || {
            format!(
                "detect.zero_shot_fraction must be in (0, 1] (got {})",
                self.zero_shot_fraction
            )
        });
    }
}

/// `detect.image_size`: a fixed input side, or `auto`, which follows the images' size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageSize {
    #[default]
    Auto,
    Fixed(u32),
}

impl std::fmt::Display for ImageSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageSize::Auto => f.write_str("auto"),
            ImageSize::Fixed(n) => write!(f, "{n}"),
        }
    }
}

impl std::str::FromStr for ImageSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(ImageSize::Auto),
            n => n.parse().map(ImageSize::Fixed).map_err(|_| {
                format!("{s:?}: give `auto` or the input's longer side in pixels, e.g. 448")
            }),
        }
    }
}

impl Serialize for ImageSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ImageSize::Auto => s.serialize_str("auto"),
            ImageSize::Fixed(n) => s.serialize_u32(*n),
        }
    }
}

impl<'de> Deserialize<'de> for ImageSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u32),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ImageSize::Fixed(n)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// `detect.fuse_cnn`: a fixed weight for the CNN detector's maps (0: off), or `auto`: the
/// detector scores a few normal images against its banks without their own patches and mixes
/// the CNN in at
/// [`CnnMix::AUTO_WEIGHT`] only where the held-out normals show the CNN separating normal from
/// flagged images clearly better than the ViT (`detect::cnn_fusion`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CnnMix {
    Weight(f64),
    Auto,
}

impl CnnMix {
    pub const OFF: CnnMix = CnnMix::Weight(0.0);
    /// The weight `auto` mixes the CNN in with when it chooses to: the weight measured on tire
    /// (docs/results.md, "a CNN beside the ViT").
    pub const AUTO_WEIGHT: f64 = 0.5;

    /// Whether the CNN detector is fitted at all (a weight above 0, or `auto`).
    pub fn is_on(&self) -> bool {
        !matches!(self, CnnMix::Weight(w) if *w == 0.0)
    }

    /// Whether the CNN's maps are mixed in whatever the data (a weight above 0): the ViT's
    /// own pooled features then never stand beside the maps.
    pub fn always(&self) -> bool {
        matches!(self, CnnMix::Weight(w) if *w > 0.0)
    }

    /// The weight of the CNN's maps when they are mixed in.
    pub fn weight(&self) -> f64 {
        match self {
            CnnMix::Weight(w) => *w,
            CnnMix::Auto => Self::AUTO_WEIGHT,
        }
    }
}

impl Default for CnnMix {
    fn default() -> Self {
        CnnMix::OFF
    }
}

impl std::fmt::Display for CnnMix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CnnMix::Auto => f.write_str("auto"),
            CnnMix::Weight(w) => write!(f, "{w}"),
        }
    }
}

impl std::str::FromStr for CnnMix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(CnnMix::Auto),
            w => w.parse().map(CnnMix::Weight).map_err(|_| {
                format!("{s:?}: give `auto` or the CNN maps' weight in [0, 1], e.g. 0.5 (0: off)")
            }),
        }
    }
}

impl Serialize for CnnMix {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            CnnMix::Auto => s.serialize_str("auto"),
            CnnMix::Weight(w) => s.serialize_f64(*w),
        }
    }
}

impl<'de> Deserialize<'de> for CnnMix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(w) => Ok(CnnMix::Weight(w)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Default for MapVariants {
    fn default() -> Self {
        MapVariants {
            per_block: false,
            aggregate_sizes: Vec::new(),
            fuse_mutual: 0.0,
            fuse_cnn: CnnMix::OFF,
            holdout: 0.0,
            blur: DEFAULT_BLUR,
            image_size: ImageSize::Auto,
            zero_shot_fraction: DEFAULT_ZERO_SHOT_FRACTION,
            pool_tau: DEFAULT_POOL_TAU,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_size_reads_auto_or_pixels_and_nothing_else() {
        let v: MapVariants = serde_yaml::from_str("image_size: 672").unwrap();
        assert_eq!(v.image_size, ImageSize::Fixed(672));
        let v: MapVariants = serde_yaml::from_str("image_size: auto").unwrap();
        assert_eq!(v.image_size, ImageSize::Auto);
        assert_eq!(MapVariants::default().image_size, ImageSize::Auto);
        let e = serde_yaml::from_str::<MapVariants>("image_size: big").unwrap_err();
        assert!(e.to_string().contains("give `auto`"), "{e}");
        assert!(serde_yaml::from_str::<MapVariants>("image_size: -4").is_err());
        for v in [ImageSize::Auto, ImageSize::Fixed(448)] {
            let text = serde_json::to_string(&v).unwrap();
            assert_eq!(serde_json::from_str::<ImageSize>(&text).unwrap(), v);
        }
    }
}
