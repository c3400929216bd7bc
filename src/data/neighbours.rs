//! Neighbour views (ours, issue 25; `training.neighbor_views`): with a given probability, the
//! second view of an unlabelled crop's training sample is a view of one of its nearest
//! neighbours instead of its own, so the contrastive and self-distillation terms pull a crop
//! and its neighbours together (after Zhong et al., "Neighborhood Contrastive Learning for
//! Novel Class Discovery", CVPR 2021, and Van Gansbeke et al.'s SCAN, ECCV 2020).
//!
//! Why: the pretrained class tokens already carry the defect types locally (an image's nearest
//! neighbour has its type 88 % of the time on MTD, 93 % on SD-900) while they do not form K
//! round groups; training on pairs of neighbours passes that local structure on to the
//! training. The neighbours are found once, before training
//! ([`crate::cluster::spectral::cosine_neighbours`] on the pretrained class tokens or on the
//! images' pooled detector features, `training.neighbor_features`); the draw
//! happens per sample, with the sample's own random stream, in the loader and the token bank.

use rand::Rng;

use crate::error::{Error, Result};

/// For each item of a crop set, the items whose views may stand in for its second view.
#[derive(Debug, Clone, PartialEq)]
pub struct NeighbourViews {
    /// Probability that a sample's second view is a neighbour's.
    share: f64,
    /// Per set item: its neighbours (empty for the items that keep their own views).
    of: Vec<Vec<usize>>,
}

impl NeighbourViews {
    /// `of[i]`: the neighbours of set item `i`; `share` in [0, 1].
    pub fn new(share: f64, of: Vec<Vec<usize>>) -> Result<Self> {
        if !(0.0..=1.0).contains(&share) {
            return Err(Error::runtime(format!(
                "neighbour views: share {share} outside [0, 1]"
            )));
        }
        let n = of.len();
        if let Some(bad) = of.iter().flatten().find(|&&j| j >= n) {
            return Err(Error::runtime(format!(
                "neighbour views: neighbour {bad} outside the set of {n}"
            )));
        }
        Ok(Self { share, of })
    }

    /// The item whose view stands in for `item`'s second view: with probability `share` one of
    /// its neighbours drawn uniformly, else `item` itself. Draws from `rng` only when `item`
    /// has neighbours.
    pub fn partner(&self, item: usize, rng: &mut impl Rng) -> usize {
        let Some(list) = self.of.get(item).filter(|l| !l.is_empty()) else {
            return item;
        };
        let pick = rng.gen_range(0..list.len());
        if rng.gen::<f64>() < self.share {
            list[pick]
        } else {
            item
        }
    }

    /// The neighbours of `item`.
    pub fn of(&self, item: usize) -> &[usize] {
        self.of.get(item).map_or(&[], |l| l.as_slice())
    }

    /// The number of set items the lists cover.
    pub fn len(&self) -> usize {
        self.of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.of.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn the_share_sets_how_often_a_neighbour_stands_in() {
        let of = vec![vec![1, 2], vec![0], vec![3], vec![2], vec![]];
        let none = NeighbourViews::new(0.0, of.clone()).unwrap();
        let half = NeighbourViews::new(0.5, of.clone()).unwrap();
        let all = NeighbourViews::new(1.0, of).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        assert!((0..200).all(|_| none.partner(0, &mut rng) == 0));
        assert!((0..200).all(|_| all.partner(0, &mut rng) != 0));
        let moved = (0..2000).filter(|_| half.partner(0, &mut rng) != 0).count();
        assert!((850..1150).contains(&moved), "{moved}");
        // Only the item itself or its own neighbours; both neighbours are drawn.
        let seen: std::collections::BTreeSet<usize> =
            (0..400).map(|_| all.partner(0, &mut rng)).collect();
        assert_eq!(seen, [1, 2].into());
        // An item without neighbours keeps its own view and draws nothing.
        let before = rng.clone();
        assert_eq!(all.partner(4, &mut rng), 4);
        assert_eq!(all.partner(9, &mut rng), 9);
        assert_eq!(rng, before);
    }

    #[test]
    fn bad_lists_are_errors() {
        assert!(NeighbourViews::new(1.5, vec![vec![]]).is_err());
        assert!(NeighbourViews::new(0.5, vec![vec![3]]).is_err());
    }
}
