//! Detection metrics: image AUROC (normal vs defective images), pixel AUROC and AUPRO (MVTec AD's
//! per-region overlap integrated up to a false-positive rate of 0.3), all exact (ties grouped),
//! from one sort of the scores. Hand-written: no maintained crate computes AUPRO, and AUROC shares
//! the sweep.

use image::GrayImage;
use imageproc::region_labelling::{connected_components, Connectivity};
use rayon::prelude::*;

/// The false-positive-rate limit of AUPRO (MVTec AD's convention).
pub const AUPRO_FPR_LIMIT: f64 = 0.3;

/// Area under the ROC curve of `scores` against `positive`; None without both classes.
/// Tied scores form one step of the curve (trapezoid), as scikit-learn's `roc_auc_score`.
pub fn auroc(scores: &[f32], positive: &[bool]) -> Option<f64> {
    let mut order: Vec<u32> = (0..scores.len() as u32).collect();
    order.par_sort_unstable_by(|&a, &b| scores[b as usize].total_cmp(&scores[a as usize]));
    sweep(
        scores,
        &order,
        |i| if positive[i] { Some(0.0) } else { None },
    )
    .map(|c| c.auroc)
}

/// Scores of all pixels of a test set with their ground truth, for pixel AUROC and AUPRO.
#[derive(Debug, Default)]
pub struct PixelSet {
    scores: Vec<f32>,
    /// 0 for a normal pixel, else 1 / (pixels of its connected defect region).
    inv_region: Vec<f32>,
    regions: usize,
}

/// Pixel-level results.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelMetrics {
    pub auroc: f64,
    /// Mean per-region overlap integrated over FPR 0..0.3, divided by 0.3.
    pub aupro: f64,
}

impl PixelSet {
    /// Adds one map (`scores`, row-major, same size as `mask`) with its mask (> 127: defect).
    /// Defect regions are the mask's 8-connected components.
    pub fn add(&mut self, scores: &[f32], mask: &GrayImage) {
        debug_assert_eq!(scores.len(), (mask.width() * mask.height()) as usize);
        let bin = GrayImage::from_fn(mask.width(), mask.height(), |x, y| {
            image::Luma([u8::from(mask.get_pixel(x, y)[0] > 127)])
        });
        let labels = connected_components(&bin, Connectivity::Eight, image::Luma([0u8]));
        let n = labels.pixels().map(|p| p[0]).max().unwrap_or(0) as usize;
        let mut sizes = vec![0u32; n + 1];
        for p in labels.pixels() {
            sizes[p[0] as usize] += 1;
        }
        self.regions += n;
        self.scores.extend_from_slice(scores);
        self.inv_region.extend(labels.pixels().map(|p| match p[0] {
            0 => 0.0,
            l => 1.0 / sizes[l as usize] as f32,
        }));
    }

    /// Moves `other`'s pixels into this set: per-type sets become the overall one without
    /// holding the pixels twice.
    pub fn append(&mut self, mut other: PixelSet) {
        self.scores.append(&mut other.scores);
        self.inv_region.append(&mut other.inv_region);
        self.regions += other.regions;
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    /// Pixel AUROC and AUPRO; None without both normal and defect pixels.
    pub fn metrics(&self) -> Option<PixelMetrics> {
        let mut order: Vec<u32> = (0..self.scores.len() as u32).collect();
        let s = &self.scores;
        order.par_sort_unstable_by(|&a, &b| s[b as usize].total_cmp(&s[a as usize]));
        let regions = self.regions.max(1) as f64;
        let c = sweep(s, &order, |i| {
            let w = self.inv_region[i];
            (w > 0.0).then(|| w as f64 / regions)
        })?;
        Some(PixelMetrics {
            auroc: c.auroc,
            aupro: c.aupro,
        })
    }
}

struct Curves {
    auroc: f64,
    aupro: f64,
}

/// One pass over the items in descending score order. `anomalous(i)` is None for a normal item,
/// else its share of the per-region overlap (AUPRO). Thresholds lie between distinct scores.
fn sweep(
    scores: &[f32],
    order: &[u32],
    anomalous: impl Fn(usize) -> Option<f64>,
) -> Option<Curves> {
    let pos = order
        .iter()
        .filter(|&&i| anomalous(i as usize).is_some())
        .count() as f64;
    let neg = order.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return None;
    }
    let (mut tp, mut fp, mut pro) = (0.0f64, 0.0f64, 0.0f64);
    let (mut prev_tpr, mut prev_fpr, mut prev_pro) = (0.0, 0.0, 0.0);
    let (mut auroc, mut aupro) = (0.0, 0.0);
    let mut k = 0;
    while k < order.len() {
        let s = scores[order[k] as usize];
        while k < order.len() && scores[order[k] as usize] == s {
            match anomalous(order[k] as usize) {
                Some(w) => {
                    tp += 1.0;
                    pro += w;
                }
                None => fp += 1.0,
            }
            k += 1;
        }
        let (tpr, fpr) = (tp / pos, fp / neg);
        auroc += (fpr - prev_fpr) * (tpr + prev_tpr) / 2.0;
        if prev_fpr < AUPRO_FPR_LIMIT {
            // Integrate the PRO curve up to the limit, interpolating the last segment.
            let (end, end_pro) = if fpr > AUPRO_FPR_LIMIT {
                let t = (AUPRO_FPR_LIMIT - prev_fpr) / (fpr - prev_fpr);
                (AUPRO_FPR_LIMIT, prev_pro + t * (pro - prev_pro))
            } else {
                (fpr, pro)
            };
            aupro += (end - prev_fpr) * (end_pro + prev_pro) / 2.0;
        }
        (prev_tpr, prev_fpr, prev_pro) = (tpr, fpr, pro);
    }
    Some(Curves {
        auroc,
        aupro: aupro / AUPRO_FPR_LIMIT,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn auroc_on_hand_made_scores() {
        // Perfect, reversed, and a worked example with one misordered pair out of 4.
        assert!(close(
            auroc(&[0.9, 0.8, 0.1, 0.2], &[true, true, false, false]).unwrap(),
            1.0
        ));
        assert!(close(
            auroc(&[0.1, 0.2, 0.9, 0.8], &[true, true, false, false]).unwrap(),
            0.0
        ));
        assert!(close(
            auroc(&[0.9, 0.3, 0.5, 0.1], &[true, true, false, false]).unwrap(),
            0.75
        ));
        // A tie between a positive and a negative counts one half (sklearn gives 0.875 here).
        let s = [0.9, 0.5, 0.5, 0.1];
        assert!(close(
            auroc(&s, &[true, true, false, false]).unwrap(),
            0.875
        ));
        // All tied: 0.5; a single class: undefined.
        assert!(close(
            auroc(&[1.0; 4], &[true, false, true, false]).unwrap(),
            0.5
        ));
        assert_eq!(auroc(&[0.3, 0.2], &[true, true]), None);
    }

    #[test]
    fn pixel_metrics_follow_regions() {
        // 4×4 map with two defect regions: a 2-pixel one found at the top score and a 1-pixel
        // one scored below every normal pixel.
        let mut mask = GrayImage::new(4, 4);
        mask.put_pixel(0, 0, image::Luma([255]));
        mask.put_pixel(1, 0, image::Luma([255]));
        mask.put_pixel(3, 3, image::Luma([255]));
        let mut scores = vec![0.5f32; 16];
        scores[0] = 1.0;
        scores[1] = 0.9;
        scores[15] = 0.0;
        let mut set = PixelSet::default();
        set.add(&scores, &mask);
        assert_eq!(set.len(), 16);
        let m = set.metrics().unwrap();
        // AUROC: 2 of 3 defect pixels above all 13 normals, the third below all: 2/3.
        assert!(close(m.auroc, 2.0 / 3.0), "{m:?}");
        // PRO is 0.5 (one of two regions fully found) from FPR 0 until all normals are passed
        // (FPR jumps 0 -> 1 at the tie of 0.5): over [0, 0.3] the mean is 0.5.
        assert!(close(m.aupro, 0.5), "{m:?}");

        // Without a defect pixel the metrics are undefined.
        let mut empty = PixelSet::default();
        empty.add(&[0.2; 4], &GrayImage::new(2, 2));
        assert_eq!(empty.metrics(), None);
    }

    #[test]
    fn aupro_interpolates_at_the_fpr_limit() {
        // 10 normal pixels with descending scores, one defect pixel scored in the middle.
        let mut mask = GrayImage::new(11, 1);
        mask.put_pixel(5, 0, image::Luma([255]));
        let scores: Vec<f32> = (0..11).map(|i| 1.0 - i as f32 * 0.05).collect();
        let mut set = PixelSet::default();
        set.add(&scores, &mask);
        let m = set.metrics().unwrap();
        // The defect pixel (score 0.75) comes after 5 normals: PRO is 0 until FPR 0.5 > 0.3.
        assert!(close(m.aupro, 0.0), "{m:?}");
        assert!(close(m.auroc, 0.5), "{m:?}");
        // Move it to the top: PRO 1 from FPR 0, AUPRO 1.
        let mut top = scores.clone();
        top[5] = 2.0;
        let mut set = PixelSet::default();
        set.add(&top, &mask);
        assert!(close(set.metrics().unwrap().aupro, 1.0));
    }
}
