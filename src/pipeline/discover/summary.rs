//! What `discover` reports: each finished stage's summary in its `stage.json`
//! ([`StageSummary`], typed by the kind of stage), the run's answer ([`Found`]), and
//! `discover.json` ([`DiscoverSummary`]) with each stage's wall time and images/s and the run's
//! peak memory ([`RunTiming`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::plan::StageKind;
use crate::cluster::KEstimate;
use crate::metrics::Scores;

/// What a finished run found (also `train/stage.json`'s summary).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Found {
    /// K, the number of defect types found.
    pub num_clusters: usize,
    /// The estimate and its per-K table when K was estimated.
    pub estimate: Option<KEstimate>,
    /// How the answer's K was read after training (`inference.num_clusters: auto`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_k: Option<crate::infer::answer_k::AnswerK>,
    /// Images per cluster.
    pub cluster_sizes: Vec<usize>,
    /// Image-level scores when `--images` has type folders (`[nmi, ari, f1]` in JSON).
    pub scores: Option<Scores>,
    /// The K that `--num-classes auto` chooses on these crops, also when K was given.
    #[serde(default)]
    pub auto_k: Option<usize>,
    /// Image-level scores of k-means with the same K on the pretrained class tokens.
    #[serde(default)]
    pub training_free: Option<Scores>,
    /// The frozen-prefix token cache: its file, size, and whether it was reused.
    #[serde(default)]
    pub cache: Option<crate::train::cache::BankOrigin>,
    /// Seconds in the parts of the train stage.
    #[serde(default)]
    pub timing: Option<crate::pipeline::Timing>,
    /// The `inference` settings the answer was made with: `--resume` with others evaluates the
    /// trained checkpoint again (`None` in records of earlier versions).
    #[serde(default)]
    pub inference: Option<crate::config::Inference>,
}

impl Found {
    /// A note when some clusters received no image: the answer then has fewer groups than K,
    /// which the cluster sizes alone leave the reader to notice (on tire, K = 3 given, every
    /// seed answered with two groups).
    pub fn empty_clusters_note(&self) -> Option<String> {
        let empty = self.cluster_sizes.iter().filter(|&&n| n == 0).count();
        (empty > 0).then(|| {
            let k = self.cluster_sizes.len();
            let groups = k - empty;
            format!(
                "note: {empty} of the {k} clusters received no image, so the answer has {groups} \
                 group{}: the model did not separate {k} types in these images",
                if groups == 1 { "" } else { "s" }
            )
        })
    }
}

/// The base stage's counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseCounts {
    pub images: usize,
    pub crops: usize,
}

/// The maps stage's counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapsCounts {
    /// Maps written.
    pub maps: usize,
    pub zero_shot: bool,
    /// Normal images the memory bank was fitted on.
    pub train_images: usize,
    pub image_auroc: Option<f64>,
    /// Test images scored (0 in the records of earlier versions).
    #[serde(default)]
    pub scored: usize,
    /// What `detect.fuse_cnn: auto` saw and chose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnn_choice: Option<crate::detect::CnnChoice>,
}

/// The binarize stage's counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BinarizeCounts {
    /// Maps binarized and cropped.
    pub maps: usize,
    pub crops: usize,
    /// Normal images' maps: they set the search range only.
    pub normal_maps: usize,
    pub peak_fallback: usize,
}

/// What a finished stage reported, by kind of stage (`stage.json`'s `summary`, written as the
/// inner record).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum StageSummary {
    Base(BaseCounts),
    Maps(MapsCounts),
    Binarize(BinarizeCounts),
    Train(Box<Found>),
}

impl StageSummary {
    /// A `stage.json` summary read as the summary of a stage of `kind`.
    pub fn parse(kind: &StageKind, summary: Value) -> serde_json::Result<StageSummary> {
        Ok(match kind {
            StageKind::SynthBase | StageKind::CropBase { .. } => {
                StageSummary::Base(serde_json::from_value(summary)?)
            }
            StageKind::Detect { .. } => StageSummary::Maps(serde_json::from_value(summary)?),
            StageKind::Binarize { .. } => StageSummary::Binarize(serde_json::from_value(summary)?),
            StageKind::Train => StageSummary::Train(serde_json::from_value(summary)?),
        })
    }

    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("a stage summary serialises")
    }

    /// The images the stage went through: base images cropped, images fitted and scored, maps
    /// binarized, images clustered.
    pub fn images(&self) -> usize {
        match self {
            StageSummary::Base(c) => c.images,
            StageSummary::Maps(c) => c.train_images + c.scored,
            StageSummary::Binarize(c) => c.maps + c.normal_maps,
            StageSummary::Train(f) => f.cluster_sizes.iter().sum(),
        }
    }
}

/// One stage as this run handled it (`discover.json`'s `stages`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRun {
    pub name: String,
    /// Finished earlier with the same inputs.
    pub skipped: bool,
    /// Seconds in this run (0 when skipped).
    pub seconds: f64,
}

/// A stage's wall time and throughput (`discover.json`'s `timing.stages`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageTiming {
    pub name: String,
    /// Finished by an earlier run: `wall_s` is that run's.
    pub skipped: bool,
    pub wall_s: f64,
    /// See [`StageSummary::images`].
    pub images: usize,
    /// None when nothing was counted or no time was measured.
    pub images_per_s: Option<f64>,
}

impl StageTiming {
    pub fn new(name: &str, skipped: bool, wall_s: f64, images: usize) -> Self {
        let images_per_s = (images > 0 && wall_s > 0.0).then(|| images as f64 / wall_s);
        StageTiming {
            name: name.into(),
            skipped,
            wall_s,
            images,
            images_per_s,
        }
    }
}

/// The run's times and memory (`discover.json`'s `timing`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunTiming {
    pub stages: Vec<StageTiming>,
    /// Seconds of this run, start to end.
    pub total_s: f64,
    /// The process's peak resident memory in MiB (Linux's `VmHWM`); None elsewhere.
    pub peak_rss_mb: Option<f64>,
}

/// `discover.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiscoverSummary {
    #[serde(with = "crate::fsutil::serde_path")]
    pub report: PathBuf,
    #[serde(with = "crate::fsutil::serde_path")]
    pub predictions: PathBuf,
    #[serde(with = "crate::fsutil::serde_path")]
    pub checkpoint: PathBuf,
    pub found: Found,
    pub stages: Vec<StageRun>,
    /// Seconds of this run (also `timing.total_s`).
    pub seconds: f64,
    /// Empty in the files of earlier versions.
    #[serde(default)]
    pub timing: RunTiming,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found() -> Found {
        Found {
            num_clusters: 2,
            estimate: None,
            answer_k: None,
            cluster_sizes: vec![3, 5],
            scores: Some((0.5, 0.25, 0.75).into()),
            auto_k: Some(2),
            training_free: None,
            cache: None,
            timing: None,
            inference: Some(crate::config::Inference::default()),
        }
    }

    #[test]
    fn each_kind_reads_its_own_summary_and_refuses_another() {
        let kinds = [
            StageKind::SynthBase,
            StageKind::Detect {
                train: None,
                write_good_maps: false,
                image_size: 448,
            },
            StageKind::Binarize { maps: "/m".into() },
            StageKind::Train,
        ];
        let summaries = [
            StageSummary::Base(BaseCounts {
                images: 4,
                crops: 6,
            }),
            StageSummary::Maps(MapsCounts {
                maps: 4,
                zero_shot: false,
                train_images: 3,
                image_auroc: Some(0.9),
                scored: 6,
                cnn_choice: Some(crate::detect::CnnChoice {
                    held_out: 2,
                    vit_auroc: Some(0.7),
                    cnn_auroc: Some(0.9),
                    weight: 0.5,
                    why: "held-out image AUROC".into(),
                }),
            }),
            StageSummary::Binarize(BinarizeCounts {
                maps: 4,
                crops: 5,
                normal_maps: 2,
                peak_fallback: 0,
            }),
            StageSummary::Train(Box::new(found())),
        ];
        for (kind, s) in kinds.iter().zip(&summaries) {
            assert_eq!(StageSummary::parse(kind, s.to_value()).unwrap(), *s);
        }
        assert_eq!(
            summaries
                .iter()
                .map(StageSummary::images)
                .collect::<Vec<_>>(),
            [4, 9, 6, 8]
        );
        // A summary of another kind, or none, is an error (the stage then runs again).
        assert!(StageSummary::parse(&kinds[3], summaries[0].to_value()).is_err());
        assert!(StageSummary::parse(&kinds[0], Value::Null).is_err());
        // The records of earlier versions: the maps stage without `scored`.
        let old = serde_json::json!({"maps": 4, "zero_shot": true, "train_images": 0, "image_auroc": null});
        let StageSummary::Maps(m) = StageSummary::parse(&kinds[1], old).unwrap() else {
            panic!("maps")
        };
        assert_eq!((m.scored, m.cnn_choice), (0, None));
    }

    #[test]
    fn empty_clusters_are_named_and_full_ones_are_not() {
        assert_eq!(found().empty_clusters_note(), None);
        let f = Found {
            num_clusters: 3,
            cluster_sizes: vec![59, 0, 23],
            ..found()
        };
        assert_eq!(
            f.empty_clusters_note().unwrap(),
            "note: 1 of the 3 clusters received no image, so the answer has 2 groups: the model \
             did not separate 3 types in these images"
        );
        let f = Found {
            cluster_sizes: vec![0, 7, 0],
            ..f
        };
        let note = f.empty_clusters_note().unwrap();
        assert!(
            note.contains("2 of the 3 clusters") && note.contains("has 1 group:"),
            "{note}"
        );
    }

    #[test]
    fn the_scores_stay_triples_in_the_json() {
        let v = serde_json::to_value(found()).unwrap();
        assert_eq!(v["scores"], serde_json::json!([0.5, 0.25, 0.75]));
        assert_eq!(serde_json::from_value::<Found>(v).unwrap(), found());
    }

    #[test]
    fn throughput_needs_images_and_time() {
        assert_eq!(StageTiming::new("a", false, 2.0, 8).images_per_s, Some(4.0));
        assert_eq!(StageTiming::new("a", true, 0.0, 8).images_per_s, None);
        assert_eq!(StageTiming::new("a", false, 2.0, 0).images_per_s, None);
    }
}
