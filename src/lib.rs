//! anomalyncd: discover the kinds of defects in industrial images without labels (after
//! AnomalyNCD, CVPR 2025).
//!
//! The data flows through one module per stage:
//!
//! | stage | module | takes | gives |
//! |---|---|---|---|
//! | detector (optional) | [`detect`] (`detect::run`) | normal + test images | anomaly maps |
//! | MEBin | [`mebin`] ([`mebin::run`]) | anomaly maps + images | binary masks, anomaly-centred crops |
//! | base set | [`mebin::base`] ([`mebin::base::run`]) | labelled images + masks | base crops |
//! | crops → tensors | [`data`] | crop folders | [`data::CropSet`], loaders, cache |
//! | model | [`model`] | config, weights | mask-guided ViT + projector, class tokens |
//! | training | [`train`] | crop set, model | trained model, [`checkpoint`] |
//! | clustering | [`cluster`] | class tokens | K estimate ([`cluster::estimate_k`]), k-means |
//! | inference | [`infer`] | model, crops | crop and image predictions (region merging) |
//! | metrics | [`metrics`] | predictions, labels | NMI / ARI / Hungarian F1 |
//! | report | [`report`] ([`report::write`]) | predictions | CSV / JSON files, `report.html` |
//!
//! [`pipeline`] chains them as the commands do (`train`, `test`, `predict`, `baseline`, and
//! [`pipeline::discover`], all stages from a folder of images in one resumable run folder);
//! [`config`] mirrors the reference's YAML; [`imageio`] reads every image and map format;
//! [`mtd`] converts Magnetic-Tile-Defect, [`synth`] writes a synthetic dataset. The command
//! line (`src/main.rs`, `src/cli/`) only turns flags into these specs. `docs/architecture.md`
//! says where a new backbone, detector, map format or metric goes.
//!
//! MEBin on a synthetic set, end to end:
//!
//! ```
//! use anomalyncd::config::Config;
//! use anomalyncd::mebin::{self, BinarizeSpec};
//! use anomalyncd::synth::{self, SynthSpec};
//!
//! # fn main() -> anomalyncd::Result<()> {
//! let dir = std::env::temp_dir().join(format!("anomalyncd-doc-{}", std::process::id()));
//! let spec = SynthSpec { seed: 0, per_type: 2, normal: 1, per_base_class: 1, size: 96 };
//! synth::write_dataset(&dir.join("synth"), &spec, false)?;
//! let cfg = Config::default();
//! let job = BinarizeSpec::from_maps(
//!     &dir.join("synth/anomaly_maps"),
//!     &dir.join("synth/test"),
//!     &dir.join("crops"),
//!     &cfg.binarization,
//!     Default::default(),
//!     false,
//! );
//! let summary = mebin::run(&job)?;
//! assert!(summary.records.iter().all(|r| !r.crop_boxes.is_empty()));
//! println!("{}", summary.describe(&dir.join("crops")));
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(())
//! # }
//! ```

pub mod checkpoint;
pub mod cluster;
pub mod config;
pub mod data;
pub mod detect;
pub mod device;
pub mod digest;
pub mod error;
pub mod fingerprint;
pub mod fsutil;
pub mod imageio;
pub mod infer;
pub mod logging;
pub mod malloc;
pub mod mebin;
pub mod metrics;
pub mod model;
pub mod mtd;
pub mod pipeline;
pub mod report;
pub mod runlock;
pub mod synth;
pub mod threads;
pub mod train;

pub use error::{Error, Result};
