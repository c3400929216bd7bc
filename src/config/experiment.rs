//! The `experiment` and `inference` sections: the seed and the `train` command's folders, and
//! how the images are put into clusters at the end (region merging's temperature, the heads or
//! spectral clustering).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Checks;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Experiment {
    pub seed: u64,
    pub print_freq: usize,
    pub table_root: PathBuf,
    pub exp_name: String,
    pub exp_root: PathBuf,
}

impl Default for Experiment {
    fn default() -> Self {
        Self {
            seed: 3407,
            print_freq: 3,
            table_root: "outputs/output_table".into(),
            exp_name: "AnomalyNCD".into(),
            exp_root: "outputs".into(),
        }
    }
}

impl Experiment {
    /// The values serde's types cannot refuse.
    pub(super) fn check(&self, c: &mut Checks) {
        c.need(self.print_freq >= 1, || {
            "experiment.print_freq must be at least 1".into()
        });
        c.need(!self.exp_name.trim().is_empty(), || {
            "experiment.exp_name must not be empty".into()
        });
    }
}

/// Largest `inference.refine_steps`.
pub const MAX_REFINE_STEPS: usize = 100;
/// Range of `inference.spectral_neighbors`.
pub const SPECTRAL_NEIGHBORS: std::ops::RangeInclusive<usize> = 2..=100;
/// Most entries of `inference.spectral_scales`, and the largest one.
pub const MAX_SPECTRAL_SCALES: usize = 8;
pub const MAX_SPECTRAL_SCALE: f64 = 10.0;
/// Range of `inference.num_clusters`.
pub const ANSWER_CLUSTERS: std::ops::RangeInclusive<usize> = 2..=100;

/// `inference.num_clusters` when it is set: a number, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterCount {
    Fixed(usize),
    /// Read from the trained image features after training.
    Auto,
}

impl ClusterCount {
    /// The number of clusters, `None` for `auto`.
    pub fn fixed(&self) -> Option<usize> {
        match self {
            Self::Fixed(k) => Some(*k),
            Self::Auto => None,
        }
    }
}

impl std::fmt::Display for ClusterCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fixed(k) => write!(f, "{k}"),
            Self::Auto => f.write_str("auto"),
        }
    }
}

impl Serialize for ClusterCount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Fixed(k) => s.serialize_u64(*k as u64),
            Self::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for ClusterCount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(usize),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(k) => Ok(Self::Fixed(k)),
            Raw::Text(t) if t.trim() == "auto" => Ok(Self::Auto),
            Raw::Text(t) => Err(serde::de::Error::custom(format!(
                "{t:?}: give a whole number of clusters or `auto`"
            ))),
        }
    }
}

/// How the images are put into clusters at the end (`inference.assign`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ImageAssign {
    /// The chosen head's region-merged answer (the reference).
    #[default]
    Heads,
    /// Spectral clustering of the images' trained features on their nearest-neighbour graph
    /// ([`crate::infer::spectral`]).
    Spectral,
}

/// Which neighbour graphs `inference.assign: spectral` clusters the images on
/// (`inference.spectral_graph`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SpectralGraph {
    /// The graph of the images' trained features alone.
    #[default]
    Trained,
    /// The sum of that graph and the graph of the images' pooled detector features (the
    /// detector backbone's patch features pooled under each image's map; the source
    /// `training.neighbor_features` names, else the detector's or a pass over the images).
    TrainedAndPooled,
}

/// Ours: region merging at image level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Inference {
    /// Temperature T of the softmax over sqrt(mask area) / T; unset = 100 for MVTec-style data,
    /// 50 otherwise (the reference's values).
    pub merge_temperature: Option<f64>,
    /// Steps of refinement of the merged image clusters in the trained feature space
    /// ([`crate::infer::refine`]); 0: the region-merged answer as it is (the reference).
    pub refine_steps: usize,
    /// Who puts the images into clusters: the heads (the reference) or spectral clustering of
    /// the trained image features.
    pub assign: ImageAssign,
    /// `assign: spectral`: the nearest neighbours that join an image in the graph.
    pub spectral_neighbors: usize,
    /// `assign: spectral`: the graphs it clusters on (not read with `assign: heads`).
    pub spectral_graph: SpectralGraph,
    /// `assign: spectral`: each features' graph is the sum of the graphs with
    /// `spectral_neighbors` × each of these neighbours (rounded, at least 2); `[1]`: one graph
    /// (until 2026-12-07).
    pub spectral_scales: Vec<f64>,
    /// `assign: spectral`: the images' mean trained feature is subtracted from each image's
    /// before the graph is built (each then made unit length again); false: the features as
    /// they are (until 2026-12-07).
    pub spectral_center: bool,
    /// `assign: spectral`: the number of clusters the images are split into, where it differs
    /// from the K the model was trained with; `null`: that K; `auto`: read from the trained
    /// image features ([`crate::infer::spectral`]), at most the trained K and, where
    /// `--num-classes auto` estimated K before training, at least that estimate (training then
    /// uses `--max-classes` novel heads). The answer is made again from the trained features,
    /// so `--resume` with another value only evaluates the checkpoint again (except that
    /// `auto` under `--num-classes auto` changes the heads, and so trains again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_clusters: Option<ClusterCount>,
}

impl Default for Inference {
    fn default() -> Self {
        Self {
            merge_temperature: None,
            refine_steps: 0,
            assign: ImageAssign::default(),
            spectral_neighbors: 10,
            spectral_graph: SpectralGraph::default(),
            spectral_scales: vec![1.0],
            spectral_center: false,
            num_clusters: None,
        }
    }
}

impl Inference {
    /// Whether the answer's K is read from the trained features (`num_clusters: auto`).
    pub fn reads_k(&self) -> bool {
        self.num_clusters == Some(ClusterCount::Auto)
    }

    /// Whether the answer reads the images' pooled detector features.
    pub fn reads_pooled(&self) -> bool {
        self.assign == ImageAssign::Spectral
            && self.spectral_graph == SpectralGraph::TrainedAndPooled
    }

    /// The ranges serde's types cannot express.
    pub(super) fn check(&self, c: &mut Checks) {
        if let Some(tm) = self.merge_temperature {
            c.need(tm.is_finite() && tm > 0.0, || {
                format!("inference.merge_temperature must be > 0 (got {tm})")
            });
        }
        let max = MAX_REFINE_STEPS;
        c.need(self.refine_steps <= max, || {
            format!(
                "inference.refine_steps must be at most {max} (got {})",
                self.refine_steps
            )
        });
        let r = SPECTRAL_NEIGHBORS;
        c.need(r.contains(&self.spectral_neighbors), || {
            format!(
                "inference.spectral_neighbors must be in {}..={} (got {})",
                r.start(),
                r.end(),
                self.spectral_neighbors
            )
        });
        let scales = &self.spectral_scales;
        c.need(
            !scales.is_empty()
                && scales.len() <= MAX_SPECTRAL_SCALES
                && scales
                    .iter()
                    .all(|f| f.is_finite() && *f > 0.0 && *f <= MAX_SPECTRAL_SCALE),
            || {
                format!(
                    "inference.spectral_scales must hold 1 to {MAX_SPECTRAL_SCALES} factors in \
                     (0, {MAX_SPECTRAL_SCALE}], e.g. [0.5, 1, 2] (got {scales:?})"
                )
            },
        );
        if let Some(k) = self.num_clusters.and_then(|n| n.fixed()) {
            let r = ANSWER_CLUSTERS;
            c.need(r.contains(&k), || {
                format!(
                    "inference.num_clusters must be in {}..={} (got {k})",
                    r.start(),
                    r.end()
                )
            });
        }
        if self.num_clusters.is_some() {
            c.need(self.assign == ImageAssign::Spectral, || {
                "inference.num_clusters splits the trained features' graph again; it needs \
                 inference.assign: spectral (the heads' answer has the trained K)"
                    .into()
            });
        }
        c.need(
            self.assign == ImageAssign::Heads || self.refine_steps == 0,
            || {
                "inference.refine_steps refines the heads' answer; set it to 0 with \
                 inference.assign: spectral"
                    .into()
            },
        );
    }
}
