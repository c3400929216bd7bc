//! `anomalyncd discover --images DIR --out RUN`: base set, anomaly maps, MEBin, K, training and
//! report in one resumable run folder (see [`anomalyncd::pipeline::discover`]).

use std::path::PathBuf;

use clap::Args;

use super::Ctx;
use anomalyncd::cluster::NumClasses;
use anomalyncd::config::ClusterCount;
use anomalyncd::pipeline::discover::{
    self, DetectorSettings, DetectorWeights, DiscoverOutcome, DiscoverSpec, Found,
};

#[derive(Debug, Args)]
pub struct DiscoverArgs {
    #[command(flatten)]
    pub token_cache: super::token_cache::TokenCacheArgs,
    /// Defective images: IMAGES/<type>/<stem>.<ext> (NMI / ARI / F1 against the types) or a
    /// flat folder; normal images in IMAGES/good are used like --normal, never grouped.
    #[arg(long, value_name = "DIR")]
    pub images: PathBuf,
    /// The run folder: base/, maps/, binarize/, train/ (checkpoint, predictions.csv,
    /// report.html), discover.json, log.txt.
    #[arg(long, value_name = "RUN")]
    pub out: PathBuf,
    /// Normal images (flat or in folders): the built-in detector is fitted on them (default:
    /// IMAGES/good, else it runs zero-shot).
    #[arg(long, value_name = "DIR")]
    pub normal: Option<PathBuf>,
    /// Your anomaly maps, MAPS/<type>/<stem>.<png|tif|npy> as `binarize` reads them: no
    /// detector runs.
    #[arg(long, value_name = "DIR")]
    pub anomaly_maps: Option<PathBuf>,
    /// Labelled base set of other defect types: BASE/images/<class>/ and BASE/masks/<class>/
    /// (cropped into RUN/base), or a prepare-base output (used as it is). Default: the built-in
    /// synthetic base set.
    #[arg(long, value_name = "DIR")]
    pub base: Option<PathBuf>,
    /// No base set at all: train with self-distillation and the contrastive loss only (the
    /// supervised base terms are dropped).
    #[arg(long, conflicts_with = "base")]
    pub no_base: bool,
    /// Number of defect types: N, or `auto` to estimate it. Give N when you know it: with a
    /// given N (and no --config), training also pairs each crop with its nearest neighbours by
    /// the detector's pooled features, which pays only when K is right.
    #[arg(long, value_name = "N|auto", default_value = "auto")]
    pub num_classes: String,
    /// Largest K that --num-classes auto considers.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub max_classes: usize,
    /// Config file (default: the defaults with configs/demo.yaml's settings: the offline
    /// DINOv2 ViT-S/14 on the frozen-prefix cache of 4 views per crop, with 392-pixel crops).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override a config key, e.g. --set training.epochs=20 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
    /// Continue an interrupted run: finished stages with the same inputs are kept, training
    /// continues from its checkpoint.
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Print the plan (stages, inputs found, rough times) and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Start anew over an earlier run in RUN.
    #[arg(long)]
    pub overwrite: bool,
    /// Stop after this stage (tests of --resume).
    #[arg(long, hide = true, value_name = "STAGE")]
    pub stop_after_stage: Option<String>,
    /// Stop training after N epochs (tests of --resume).
    #[arg(long, hide = true, value_name = "N")]
    pub stop_after_epochs: Option<usize>,
    /// The detector's backbone input side, overriding the config's `detect.image_size`.
    #[arg(long, hide = true)]
    pub detector_image_size: Option<u32>,
    /// Random detector weights (tests only: the maps are meaningless).
    #[arg(long, hide = true)]
    pub detector_random_weights: bool,
}

pub fn run(a: &DiscoverArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let num_classes = NumClasses::parse(Some(&a.num_classes))?;
    let k_given = num_classes != NumClasses::Auto;
    let spec = DiscoverSpec {
        config: discover::config(a.config.as_deref(), &a.set, k_given)?,
        images: a.images.clone(),
        out: a.out.clone(),
        normal: a.normal.clone(),
        anomaly_maps: a.anomaly_maps.clone(),
        base: a.base.clone(),
        no_base: a.no_base,
        num_classes,
        max_classes: a.max_classes,
        detector: DetectorSettings {
            weights: match a.detector_random_weights {
                true => DetectorWeights::Random,
                false => DetectorWeights::Default,
            },
            image_size: a.detector_image_size,
        },
        resume: a.resume,
        overwrite: a.overwrite,
        stop_after_stage: a.stop_after_stage.clone(),
        stop_after_epochs: a.stop_after_epochs,
        token_cache: a.token_cache.setting(),
        device: ctx.device,
    };
    if a.dry_run {
        print!("{}", discover::prepare(&spec)?.describe(&spec));
        return Ok(());
    }
    match discover::run(&spec)? {
        DiscoverOutcome::Stopped { stage, detail } => println!(
            "stopped in stage {stage} ({detail}); continue with the same command and --resume"
        ),
        DiscoverOutcome::Finished {
            found,
            report,
            predictions,
            ..
        } => {
            if let Some(e) = &found.estimate {
                print!("{}", e.table());
            }
            let resplit = found.inference.as_ref().and_then(|i| i.num_clusters);
            let how = match (&found.estimate, resplit) {
                (_, Some(ClusterCount::Fixed(_))) => "inference.num_clusters",
                (_, Some(ClusterCount::Auto)) => "inference.num_clusters: auto",
                (Some(_), None) => "estimated",
                (None, None) => "given",
            };
            let sizes: Vec<String> = found.cluster_sizes.iter().map(|s| s.to_string()).collect();
            println!("report: {}", report.display());
            println!("predictions: {}", predictions.display());
            match &found.answer_k {
                Some(a) => println!("K = {}", a.describe()),
                None => println!("K = {} ({how})", found.num_clusters),
            }
            if let Some(hint) = resplit_hint(&found) {
                println!("{hint}");
            }
            println!("cluster sizes: {}", sizes.join(", "));
            if let Some(note) = found.empty_clusters_note() {
                println!("{note}");
            }
            if let Some(s) = found.scores {
                println!("{s}  (image level, against the type folders)");
            }
            if let Some(s) = found.training_free {
                println!(
                    "training-free (the pretrained class tokens, clustered as the answer is): {s}"
                );
            }
        }
    }
    Ok(())
}

/// Where K was estimated and the answer is spectral, how to try another K without training.
fn resplit_hint(found: &Found) -> Option<&'static str> {
    let spectral = found.inference.as_ref().is_some_and(|i| {
        i.assign == anomalyncd::config::ImageAssign::Spectral
            && i.num_clusters.is_none_or(|n| n == ClusterCount::Auto)
    });
    (found.estimate.is_some() && spectral).then_some(
        "another K without training again: the same command with --resume --set \
         inference.num_clusters=N",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use anomalyncd::cluster::KEstimate;
    use anomalyncd::config::{ImageAssign, Inference};

    #[test]
    fn the_resplit_hint_only_where_k_was_estimated_and_the_answer_is_spectral() {
        let found = |estimated: bool, assign: ImageAssign, num_clusters| Found {
            num_clusters: 3,
            answer_k: None,
            estimate: estimated.then(|| KEstimate {
                chosen: 3,
                max_classes: 10,
                criterion: "eigengap".into(),
                scores: Vec::new(),
            }),
            cluster_sizes: vec![1, 1, 1],
            scores: None,
            auto_k: None,
            training_free: None,
            cache: None,
            timing: None,
            inference: Some(Inference {
                assign,
                num_clusters,
                ..Inference::default()
            }),
        };
        let hint = resplit_hint(&found(true, ImageAssign::Spectral, None)).unwrap();
        assert!(
            hint.contains("--resume --set inference.num_clusters=N"),
            "{hint}"
        );
        // A given K, the heads' answer (K fixed by training), or a split already chosen: none.
        assert_eq!(
            resplit_hint(&found(false, ImageAssign::Spectral, None)),
            None
        );
        assert_eq!(resplit_hint(&found(true, ImageAssign::Heads, None)), None);
        let fixed = Some(ClusterCount::Fixed(4));
        assert_eq!(
            resplit_hint(&found(true, ImageAssign::Spectral, fixed)),
            None
        );
        // A K read after training can be overridden the same way.
        let auto = Some(ClusterCount::Auto);
        assert!(resplit_hint(&found(true, ImageAssign::Spectral, auto)).is_some());
    }
}
