//! The reference's balancing sampler: `WeightedRandomSampler` with weight 1 for every labelled
//! (base) crop and `label_len / unlabelled_len` for every unlabelled (novel) crop, so both kinds
//! are drawn equally often; `len(dataset)` draws per epoch, with replacement; batches of
//! `batch_size` in draw order, the last one shorter (`drop_last = False`).
//!
//! Two fixes make every batch usable, where the reference skips a batch that lacks one kind:
//! - a last batch of a single sample joins the batch before it (one batch is then one larger);
//! - a batch without labelled (or without unlabelled) samples gets its last sample replaced by one
//!   drawn uniformly from the missing kind, with the same seeded generator.
//!
//! A set without base crops (training without the supervised terms) draws its novel crops
//! uniformly, with replacement, and every batch is novel only.

use rand::distributions::{Distribution, WeightedIndex};
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::mix_seed;
use crate::error::{Error, Result};

/// Stream tag of the sampler in [`mix_seed`], apart from the augmentation streams.
const SAMPLER_STREAM: u64 = 0x5A4D_504C;

#[derive(Debug, Clone)]
pub struct BalancedSampler {
    weights: Vec<f64>,
    dist: WeightedIndex<f64>,
    labelled: Vec<usize>,
    unlabelled: Vec<usize>,
    is_labelled: Vec<bool>,
    batch_size: usize,
    seed: u64,
}

impl BalancedSampler {
    /// `labelled[i]` tells whether sample `i` is a base crop. Both kinds must be present and the
    /// batch size at least 2.
    pub fn new(labelled: &[bool], batch_size: usize, seed: u64) -> Result<Self> {
        if batch_size < 2 {
            return Err(Error::usage(format!(
                "training.batch_size must be at least 2 so that a batch holds base and novel crops (got {batch_size})"
            )));
        }
        let lab: Vec<usize> = (0..labelled.len()).filter(|&i| labelled[i]).collect();
        let unl: Vec<usize> = (0..labelled.len()).filter(|&i| !labelled[i]).collect();
        if unl.is_empty() {
            return Err(Error::usage(format!(
                "training needs novel crops (got {} base, none novel)",
                lab.len()
            )));
        }
        // Without base crops every novel crop weighs 1: a uniform draw with replacement.
        let w_unl = if lab.is_empty() {
            1.0
        } else {
            lab.len() as f64 / unl.len() as f64
        };
        let weights: Vec<f64> = labelled
            .iter()
            .map(|&l| if l { 1.0 } else { w_unl })
            .collect();
        let dist = WeightedIndex::new(&weights)
            .map_err(|e| Error::runtime(format!("sampler weights: {e}")))?;
        Ok(Self {
            weights,
            dist,
            labelled: lab,
            unlabelled: unl,
            is_labelled: labelled.to_vec(),
            batch_size,
            seed,
        })
    }

    /// Per-sample weights (1 for labelled, label_len / unlabelled_len for unlabelled).
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// Draws per epoch: the dataset's length.
    pub fn num_samples(&self) -> usize {
        self.weights.len()
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Batches per epoch (a lone last sample joins the batch before it).
    pub fn num_batches(&self) -> usize {
        let n = self.num_samples();
        let chunks = n.div_ceil(self.batch_size);
        if chunks > 1 && n % self.batch_size == 1 {
            chunks - 1
        } else {
            chunks
        }
    }

    /// The batches of one epoch (indices into the dataset); the same for the same seed and epoch.
    pub fn epoch(&self, epoch: usize) -> Vec<Vec<usize>> {
        let mut rng =
            ChaCha8Rng::seed_from_u64(mix_seed(&[self.seed, SAMPLER_STREAM, epoch as u64]));
        let draws: Vec<usize> = (0..self.num_samples())
            .map(|_| self.dist.sample(&mut rng))
            .collect();
        let mut batches: Vec<Vec<usize>> = draws
            .chunks(self.batch_size)
            .map(<[usize]>::to_vec)
            .collect();
        if batches.len() > 1 && batches.last().is_some_and(|b| b.len() == 1) {
            let lone = batches.pop().expect("checked above");
            batches
                .last_mut()
                .expect("more than one batch")
                .extend(lone);
        }
        for batch in &mut batches {
            let has_lab = batch.iter().any(|&i| self.is_labelled[i]);
            let has_unl = batch.iter().any(|&i| !self.is_labelled[i]);
            let from = match (has_lab, has_unl) {
                // A set without base crops trains on novel batches alone.
                (false, _) if self.labelled.is_empty() => continue,
                (false, _) => &self.labelled,
                (_, false) => &self.unlabelled,
                _ => continue,
            };
            let last = batch.len() - 1;
            batch[last] = from[rng.gen_range(0..from.len())];
        }
        batches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(lab: usize, unl: usize) -> Vec<bool> {
        (0..lab + unl).map(|i| i < lab).collect()
    }

    #[test]
    fn weights_are_the_reference_ones() {
        let s = BalancedSampler::new(&flags(3, 6), 4, 0).unwrap();
        assert_eq!(s.weights(), &[1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]);
        assert_eq!(s.num_samples(), 9);
    }

    #[test]
    fn both_kinds_are_drawn_equally_often_and_every_batch_has_both() {
        // 20 base and 180 novel crops: uniform draws would give 10 % base.
        let f = flags(20, 180);
        let s = BalancedSampler::new(&f, 8, 11).unwrap();
        let (mut lab, mut total) = (0usize, 0usize);
        let mut seen = vec![false; f.len()];
        for e in 0..50 {
            let batches = s.epoch(e);
            assert_eq!(batches.len(), s.num_batches());
            assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 200);
            for b in &batches {
                assert!(b.iter().any(|&i| f[i]) && b.iter().any(|&i| !f[i]), "{b:?}");
                lab += b.iter().filter(|&&i| f[i]).count();
                total += b.len();
                b.iter().for_each(|&i| seen[i] = true);
            }
        }
        let frac = lab as f64 / total as f64;
        assert!((frac - 0.5).abs() < 0.03, "labelled fraction {frac}");
        assert!(seen.iter().all(|&s| s), "every crop is drawn at some point");
    }

    #[test]
    fn a_lone_last_sample_joins_the_previous_batch_and_one_sided_batches_are_fixed() {
        let f = flags(1, 8);
        let s = BalancedSampler::new(&f, 4, 3).unwrap();
        assert_eq!(s.num_batches(), 2);
        for e in 0..200 {
            let b = s.epoch(e);
            assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [4, 5]);
            for batch in &b {
                assert!(
                    batch.contains(&0) && batch.iter().any(|&i| i > 0),
                    "{batch:?}"
                );
            }
        }
    }

    #[test]
    fn batch_larger_than_the_dataset_is_one_batch() {
        let s = BalancedSampler::new(&flags(1, 1), 32, 0).unwrap();
        assert_eq!(s.num_batches(), 1);
        for e in 0..20 {
            let b = s.epoch(e);
            assert_eq!(b.len(), 1);
            let mut got = b[0].clone();
            got.sort();
            assert_eq!(got, [0, 1]);
        }
    }

    #[test]
    fn seeded_and_epoch_dependent() {
        let f = flags(5, 20);
        let a = BalancedSampler::new(&f, 4, 1).unwrap();
        let b = BalancedSampler::new(&f, 4, 1).unwrap();
        let c = BalancedSampler::new(&f, 4, 2).unwrap();
        assert_eq!(a.epoch(3), b.epoch(3));
        assert_ne!(a.epoch(3), a.epoch(4));
        assert_ne!(a.epoch(3), c.epoch(3));
    }

    #[test]
    fn without_base_crops_novel_crops_are_drawn_uniformly() {
        let f = flags(0, 40);
        let s = BalancedSampler::new(&f, 8, 5).unwrap();
        assert!(s.weights().iter().all(|&w| w == 1.0));
        let mut seen = vec![0usize; f.len()];
        for e in 0..50 {
            let batches = s.epoch(e);
            assert_eq!(batches.len(), 5);
            assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 40);
            batches.iter().flatten().for_each(|&i| seen[i] += 1);
        }
        // 2000 uniform draws over 40 crops: each about 50 times.
        assert!(seen.iter().all(|&n| (20..=90).contains(&n)), "{seen:?}");
    }

    #[test]
    fn refuses_no_novel_crops_and_tiny_batches() {
        assert!(BalancedSampler::new(&flags(3, 0), 4, 0)
            .unwrap_err()
            .to_string()
            .contains("novel"));
        assert!(BalancedSampler::new(&flags(3, 3), 1, 0)
            .unwrap_err()
            .to_string()
            .contains("batch_size"));
    }
}
