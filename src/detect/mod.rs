//! The built-in anomaly detector, so the pipeline runs without an outside one. What it must get
//! right is per-image localisation (is the map's maximum in the defect?), not pixel AUROC: the
//! maps only steer MEBin's crops, and a crop of background teaches the model nothing.
//!
//! 1. features ([`features`]): the offline DINOv2 ViT-S/14 by default (patch tokens of several
//!    blocks averaged, 3×3 local mean, unit length; images resized with their aspect ratio
//!    kept), or EfficientNet-Lite0 (PatchCore's CNN recipe);
//! 2. reference ([`reference`]), either
//!    - fitted on normal images: their patches are pooled (when all of them would exceed
//!      `max_patches`, each image contributes its `max_patches / n_train` most spread-out
//!      patches, a greedy k-center within the image, so the pool takes at most
//!      `max_patches x D x 4` bytes: 154 MB at 100 000 x 384), then reduced to a greedy
//!      k-center coreset ([`coreset`]), the memory bank; a test patch scores its distance to the
//!      nearest bank entry (cosine for the ViT, Euclidean for the CNN);
//!    - or zero-shot: a test patch is compared with the patches of a bounded random subset of the
//!      other test images (MuSc's mutual scoring);
//! 3. maps ([`maps`]): patch scores upsampled to the input size and smoothed; image score = max
//!    patch score;
//! 4. 8-bit maps on one scale over the whole test set (`OUT/<type>/<stem>.png`, the layout
//!    `binarize` and `train` read), and the metrics ([`eval`]) when normals / masks are given.
//!
//! Memory: the pool (above), the bank, the zero-shot references (`refs x patches x D x 4`
//! bytes: 64 x 1024 x 384 x 4 = 100 MB), and one test map at a time: the float maps wait in a
//! spill file in OUT until the global scale is known.

mod cnn_fusion;
pub(crate) mod coreset;
pub(crate) mod eval;
pub mod features;
mod inputs;
pub mod localize;
pub(crate) mod maps;
pub mod pooled;
pub(crate) mod reference;
mod run;
pub(crate) mod scoring;
mod settings;
pub mod slices;
mod spec;
mod spill;
mod variants;

pub use cnn_fusion::{find_cnn_weights, held_out_normals, CnnChoice};
pub use run::{run, DetectReport, REPORT_FILE};
pub use scoring::NormalFloor;
pub use settings::{DetectFingerprint, DetectSettings, DETECT_CODE};
pub use spec::{auto_image_size, resolve_image_size, resolve_image_size_of, side_and_patches};
pub use spec::{
    DetectSpec, DEFAULT_BATCH_SIZE, DEFAULT_BLOCKS, DEFAULT_CNN_IMAGE_SIZE, DEFAULT_CORESET,
    DEFAULT_MAX_PATCHES, DEFAULT_POOL_TAU, DEFAULT_STAGES, DEFAULT_VIT_IMAGE_SIZE,
    DEFAULT_ZERO_SHOT_FRACTION, DEFAULT_ZERO_SHOT_REFS, LARGE_VIT_IMAGE_SIZE,
};
pub use variants::{normal_floor, pooled_at, pooled_tau, MapVariants};

/// Test type folders holding normal images.
pub use crate::imageio::NORMAL_TYPE;
