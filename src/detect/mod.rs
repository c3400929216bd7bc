//! A PatchCore-style anomaly detector (Roth et al., "Towards total recall in industrial anomaly
//! detection", CVPR 2022), so the pipeline runs without an outside detector:
//!
//! 1. fit: patch features ([`features`]) of the normal training images, streamed in batches.
//!    When all patches would exceed `max_patches`, each image contributes its
//!    `max_patches / n_train` most spread-out patches (a greedy k-center within the image), so
//!    the pool takes at most `max_patches x D x 4` bytes (61 MB at the default 100 000 x 152);
//! 2. memory bank: a greedy k-center coreset of the pool ([`coreset`]);
//! 3. score: each test patch's distance to its nearest bank entry; image score = max patch score;
//!    map = patch scores upsampled to the input size and smoothed ([`maps`]);
//! 4. write 8-bit maps on one scale over the whole test set (`OUT/<type>/<stem>.png`, the layout
//!    `binarize` and `train` read) and evaluate ([`eval`]) when normals / masks are given.
//!
//! Memory: the pool (above), the bank, and every test map as floats until the global scale is
//! known: `n_test x size^2 x 4` bytes (and `x 8` more while pixel metrics are computed).

pub mod coreset;
pub mod eval;
pub mod features;
pub mod maps;
pub mod reference;
mod run;
mod spill;

pub use run::{run, DetectReport, DetectSpec, REPORT_FILE};

/// Test type folders holding normal images (MVTec AD's convention).
pub const NORMAL_TYPE: &str = "good";
