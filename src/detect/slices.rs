//! Several feature *slices* per patch, each scored on its own and the scores averaged (MuSc's
//! recipe, Li et al., ICLR 2024): one slice per tapped ViT block (`per_block`) times one per
//! neighbourhood size (`sizes`, each an odd side of the local mean). The default is one slice,
//! the mean of the tapped blocks at one neighbourhood size: the features of earlier versions.
//!
//! A patch's feature is the concatenation of its slices, each of unit length, so the pool, the
//! coreset and the zero-shot references hold one row per patch as before; only the nearest
//! neighbour is taken slice by slice ([`super::reference::Reference`]).

use tch::Tensor;

use crate::error::{Error, Result};

/// How the tapped blocks' patch tokens become slices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slicing {
    /// One slice per tapped block instead of their mean.
    pub per_block: bool,
    /// The neighbourhood sides (odd, 1: none), one slice each.
    pub sizes: Vec<i64>,
}

/// The largest neighbourhood side accepted (the config checks the same bound).
pub use crate::config::MAX_AGGREGATE_SIZE as MAX_SIZE;

impl Slicing {
    /// One slice: the blocks' mean averaged over `k`×`k` neighbourhoods.
    pub fn single(k: i64) -> Slicing {
        Slicing {
            per_block: false,
            sizes: vec![k],
        }
    }

    /// Checks the sizes (each odd in `1..=MAX_SIZE`, distinct, at least one).
    pub fn check(&self) -> Result<()> {
        let bad = self.sizes.is_empty() || !crate::config::valid_aggregate_sizes(&self.sizes);
        if bad {
            return Err(Error::usage(format!(
                "neighbourhood sizes {:?}: give distinct odd sides in 1..={MAX_SIZE} (1: none, 3: a 3x3 mean), e.g. 1,3,5",
                self.sizes
            )));
        }
        Ok(())
    }

    /// Slices per patch with `blocks` tapped blocks.
    pub fn count(&self, blocks: usize) -> usize {
        (if self.per_block { blocks.max(1) } else { 1 }) * self.sizes.len()
    }
}

/// Averages each patch feature of `f [B, D, H, W]` over its `k`×`k` neighbourhood (1: none);
/// zero padding not counted, so border patches average their real neighbours only.
pub fn local_mean(f: Tensor, k: i64) -> Tensor {
    if k <= 1 {
        return f;
    }
    f.avg_pool2d([k, k], [1, 1], [k / 2, k / 2], false, false, None::<i64>)
}

/// `f [B, D, H, W]` scaled to unit length along D.
pub fn unit(f: &Tensor) -> Tensor {
    f.divide(
        &f.norm_scalaropt_dim(2.0, [1i64].as_slice(), true)
            .clamp_min(1e-12),
    )
}

/// The ViT's tapped patch tokens (`taps`, each `[B, H·W, D]`, f32) -> the slices concatenated
/// along the feature axis, `[B, S·D, H, W]`, each slice of unit length. Slice order: block
/// (or the mean) outer, neighbourhood size inner.
pub fn vit_slices(taps: Vec<Tensor>, grid: (i64, i64), slicing: &Slicing) -> Result<Tensor> {
    let Some(first) = taps.first() else {
        return Err(Error::runtime(
            "no tapped block to take patch features from",
        ));
    };
    let size = first.size();
    let (b, d) = (size[0], size[2]);
    let (gh, gw) = grid;
    if size[1] != gh * gw {
        return Err(Error::runtime(format!(
            "patch tokens {size:?} do not fill a {gh}x{gw} grid"
        )));
    }
    let groups = if slicing.per_block {
        taps
    } else {
        let n = taps.len() as f64;
        vec![taps.into_iter().reduce(|a, t| a + t).expect("one tap") / n]
    };
    let mut parts = Vec::with_capacity(groups.len() * slicing.sizes.len());
    for g in groups {
        let f = g.view([b, gh, gw, d]).permute([0, 3, 1, 2]).contiguous();
        for &k in &slicing.sizes {
            parts.push(unit(&local_mean(f.shallow_clone(), k)));
        }
    }
    Ok(if parts.len() == 1 {
        parts.pop().expect("one part")
    } else {
        Tensor::cat(&parts, 1)
    })
}

/// `x [N, S·d]` cut into its `s` slices `[N, d]`, each contiguous.
pub fn split(x: &Tensor, s: usize) -> Vec<Tensor> {
    if s <= 1 {
        return vec![x.shallow_clone()];
    }
    x.chunk(s as i64, 1)
        .into_iter()
        .map(|t| t.contiguous())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn taps(n: usize, b: i64, p: i64, d: i64) -> Vec<Tensor> {
        (0..n)
            .map(|_| Tensor::randn([b, p, d], (Kind::Float, Device::Cpu)))
            .collect()
    }

    #[test]
    fn one_slice_is_the_unit_mean_of_the_blocks() {
        tch::manual_seed(1);
        // A non-square 3x5 grid.
        let t = taps(2, 2, 15, 6);
        let want = (&t[0] + &t[1]) / 2.0;
        let want = unit(&want.view([2, 3, 5, 6]).permute([0, 3, 1, 2]));
        let got = vit_slices(t, (3, 5), &Slicing::single(1)).unwrap();
        assert_eq!(got.size(), [2, 6, 3, 5]);
        assert!(got.allclose(&want, 1e-6, 1e-6, false));
    }

    #[test]
    fn slices_are_blocks_times_sizes_each_of_unit_length() {
        tch::manual_seed(2);
        let s = Slicing {
            per_block: true,
            sizes: vec![1, 3, 5],
        };
        assert_eq!(s.count(3), 9);
        let t = taps(3, 2, 4 * 7, 5);
        let block1 = t[1].copy();
        let got = vit_slices(t, (4, 7), &s).unwrap();
        assert_eq!(got.size(), [2, 45, 4, 7]);
        for (i, part) in got.chunk(9, 1).iter().enumerate() {
            let n = part.norm_scalaropt_dim(2.0, [1i64].as_slice(), false);
            assert!((n - 1.0).abs().max().double_value(&[]) < 1e-5, "slice {i}");
        }
        // Slice 3 is block 2 (of 3) with no neighbourhood mean.
        let want = unit(&block1.view([2, 4, 7, 5]).permute([0, 3, 1, 2]));
        assert!(got.narrow(1, 15, 5).allclose(&want, 1e-6, 1e-6, false));
        // Split back into its 9 slices of 5 dims.
        let rows = got.permute([0, 2, 3, 1]).reshape([-1, 45]);
        let parts = split(&rows, 9);
        assert_eq!(parts.len(), 9);
        assert_eq!(parts[8].size(), [56, 5]);
    }

    #[test]
    fn bad_sizes_and_grids_are_errors_not_panics() {
        for sizes in [vec![], vec![2], vec![0], vec![17], vec![3, 3]] {
            let s = Slicing {
                per_block: false,
                sizes,
            };
            assert_eq!(s.check().unwrap_err().exit_code(), 2);
        }
        assert!(Slicing::single(3).check().is_ok());
        assert!(vit_slices(vec![], (1, 1), &Slicing::single(1)).is_err());
        assert!(vit_slices(taps(1, 1, 6, 4), (2, 2), &Slicing::single(1)).is_err());
    }
}
