//! The training data pipeline: crop sets on disk ([`dataset`]), the reference's augmentations with
//! one random geometry shared by image and mask ([`transform`]), the sampler that balances base and
//! novel crops ([`sampler`]) and parallel batch loading with prefetch ([`loader`]). The photometric
//! steps follow Pillow's formulas (`enhance`).
//!
//! Everything random is seeded per (run seed, epoch, batch, position), so a batch's content does
//! not depend on how many threads decode it or in which order they finish.
//!
//! ```no_run
//! # fn main() -> anomalyncd::Result<()> {
//! use std::sync::Arc;
//! use anomalyncd::data::*;
//! let set = Arc::new(CropSet::load(
//!     Some("base".as_ref()),
//!     &NovelSource::from_binarize_out("binarize_out".as_ref()),
//!     None,
//! )?);
//! let spec = TransformSpec::new(224);
//! let cache = Arc::new(CropCache::build(&set, &spec, 0)?);
//! let opts = LoaderOptions { batch_size: 32, num_workers: 8, seed: 3407, prefetch: 1 };
//! let loader = TrainLoader::new(set.clone(), spec, opts, Some(cache.clone()))?;
//! for batch in loader.epoch(0) {
//!     let batch = batch?; // views [B,3,224,224], masks [B,1,224,224], labels, labelled, scores
//! #   let _ = batch;
//! }
//! let eval = EvalLoader::new(set.clone(), set.novel_indices(), spec, 32, 8, Some(cache))?;
//! for batch in eval.iter() {
//!     let batch = batch?; // images, masks, ids (indices into set.items)
//! #   let _ = batch;
//! }
//! # Ok(()) }
//! ```

pub mod dataset;
mod enhance;
pub mod loader;
pub mod neighbours;
pub mod prefetch;
pub mod sampler;
pub mod transform;

pub use dataset::{decode_pair, CropItem, CropSet, NovelSource};
pub use loader::{
    CropCache, EvalBatch, EvalLoader, LoaderOptions, Prefetch, TrainBatch, TrainLoader, ViewSource,
};
pub use neighbours::NeighbourViews;
pub use sampler::BalancedSampler;
pub use transform::{
    apply_test, apply_train, prepare, Geometry, Jitter, Photometric, Prepared, TrainParams,
    TransformSpec, IMAGENET_MEAN, IMAGENET_STD,
};

/// Mixes seed words into one well-spread 64-bit seed (SplitMix64 finaliser over each word), so
/// neighbouring epochs or positions get unrelated random streams.
pub fn mix_seed(words: &[u64]) -> u64 {
    let mut h: u64 = 0x243F_6A88_85A3_08D3;
    for &w in words {
        h = h.wrapping_add(w).wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h = z ^ (z >> 31);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_seeds_differ_by_word_and_order() {
        let a = mix_seed(&[1, 0, 0]);
        assert_ne!(a, mix_seed(&[1, 0, 1]));
        assert_ne!(a, mix_seed(&[0, 1, 0]));
        assert_ne!(mix_seed(&[1, 2]), mix_seed(&[2, 1]));
        assert_eq!(a, mix_seed(&[1, 0, 0]));
    }
}
