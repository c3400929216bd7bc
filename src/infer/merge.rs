//! Sub-image predictions and region merging, as the reference's `sub_image_predict` and
//! `region_merge_predict` do them.
//!
//! - Sub-image: the chosen head's `softmax(logits)` with the base classes zeroed and the novel
//!   ones renormalised; the prediction is its argmax (always a novel class index).
//! - Image: the crops of one image (grouped by [`image_key`]) are combined by a weighted sum of
//!   their `softmax(logits / 0.1)` restricted the same way, with weights
//!   `softmax_k(sqrt(mask pixels of crop k) / T)`, so larger anomalies count more; the
//!   prediction is the argmax. An image with one crop takes that crop's probabilities.
//!
//! All test crops are novel in the reference (its test set holds only the unlabelled classes),
//! so the restriction to novel classes always applies.

use std::path::Path;

use crate::error::{Error, Result};

/// Temperature of the logits whose softmax is merged (the student temperature of training).
pub const MERGE_LOGIT_TEMP: f64 = 0.1;
/// Area temperature T for MVTec-style data (the reference's value).
pub const MVTEC_MERGE_TEMP: f64 = 100.0;
/// Area temperature T for other data, MTD included (the reference's value).
pub const OTHER_MERGE_TEMP: f64 = 50.0;

/// The reference's area temperature: 100 for MVTec-style data, 50 otherwise.
pub fn default_merge_temperature(mvtec_style: bool) -> f64 {
    if mvtec_style {
        MVTEC_MERGE_TEMP
    } else {
        OTHER_MERGE_TEMP
    }
}

/// `softmax(logits / temperature)` over all classes, then the first `num_labeled` (base)
/// classes set to 0 and the novel ones renormalised to sum to 1. Errors when there is no novel
/// class or a logit is not finite.
pub fn novel_probs(logits: &[f32], num_labeled: usize, temperature: f64) -> Result<Vec<f64>> {
    if num_labeled >= logits.len() {
        return Err(Error::runtime(format!(
            "{} logits leave no novel class after {num_labeled} base classes",
            logits.len()
        )));
    }
    if let Some(bad) = logits.iter().find(|v| !v.is_finite()) {
        return Err(Error::runtime(format!(
            "a head output is not finite ({bad})"
        )));
    }
    // Softmax then renormalising the novel part equals a softmax over the novel logits alone.
    let scaled: Vec<f64> = logits[num_labeled..]
        .iter()
        .map(|&v| v as f64 / temperature)
        .collect();
    let novel = softmax(&scaled);
    let mut out = vec![0.0; num_labeled];
    out.extend(novel);
    Ok(out)
}

/// Numerically stable softmax of finite values.
fn softmax(x: &[f64]) -> Vec<f64> {
    let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = x.iter().map(|v| (v - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

/// Index of the largest value; the first one among equals (as torch's argmax).
pub fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// Class predicted for one crop from one head's logits `[C]`: argmax of [`novel_probs`] at
/// temperature 1.
pub fn sub_image_prediction(logits: &[f32], num_labeled: usize) -> Result<usize> {
    Ok(argmax(&novel_probs(logits, num_labeled, 1.0)?))
}

/// The image a crop comes from: `<parent folder>/<file name before "_crop">.png`, e.g.
/// `images/MT_Crack/exp3_num_42_crop1.png` → `MT_Crack/exp3_num_42.png`. A file name without
/// `_crop` is its own image (kept whole).
pub fn image_key(crop_path: &Path) -> String {
    let file = crop_path
        .file_name()
        .map(|f| f.to_string_lossy())
        .unwrap_or_default();
    let parent = crop_path
        .parent()
        .and_then(|p| p.file_name())
        .map(|f| f.to_string_lossy())
        .unwrap_or_default();
    let name = match file.find("_crop") {
        Some(i) => format!("{}.png", &file[..i]),
        None => file.into_owned(),
    };
    if parent.is_empty() {
        name
    } else {
        format!("{parent}/{name}")
    }
}

/// Anomalous pixels of a crop's mask as the reference counts them: pixels equal to 255 in the
/// grayscale mask file at its own resolution (not the resized network input).
pub fn mask_pixel_count(mask: &image::GrayImage) -> usize {
    mask.pixels().filter(|p| p.0[0] == 255).count()
}

/// Merges the class-probability vectors of one image's crops: the sum of `probs[k]` weighted by
/// `softmax_k(sqrt(mask_pixels[k]) / temperature)`. One crop: its own vector. Errors when there
/// are no crops, the counts do not match the crops, or the vectors differ in length.
pub fn merge_crops(
    probs: &[Vec<f64>],
    mask_pixels: &[usize],
    temperature: f64,
) -> Result<Vec<f64>> {
    let Some(first) = probs.first() else {
        return Err(Error::runtime("an image to merge has no crops"));
    };
    if mask_pixels.len() != probs.len() {
        return Err(Error::runtime(format!(
            "{} crops but {} mask pixel counts",
            probs.len(),
            mask_pixels.len()
        )));
    }
    if probs.iter().any(|p| p.len() != first.len()) {
        return Err(Error::runtime(
            "crops of one image have class vectors of different lengths",
        ));
    }
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(Error::runtime(format!(
            "merge temperature must be > 0 (got {temperature})"
        )));
    }
    if probs.len() == 1 {
        return Ok(first.clone());
    }
    let areas: Vec<f64> = mask_pixels
        .iter()
        .map(|&c| (c as f64).sqrt() / temperature)
        .collect();
    let weights = softmax(&areas);
    let mut out = vec![0.0; first.len()];
    for (p, w) in probs.iter().zip(&weights) {
        for (o, v) in out.iter_mut().zip(p) {
            *o += w * v;
        }
    }
    Ok(out)
}

/// One crop's input to region merging.
#[derive(Debug, Clone, PartialEq)]
pub struct CropPrediction {
    /// The image it belongs to ([`image_key`] of its path).
    pub image: String,
    /// [`novel_probs`] of the chosen head's logits at [`MERGE_LOGIT_TEMP`].
    pub probs: Vec<f64>,
    /// [`mask_pixel_count`] of its mask.
    pub mask_pixels: usize,
}

/// The merged prediction of one image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImagePrediction {
    pub image: String,
    /// Indices into the input crops, in input order (the first gives the image's label).
    pub crops: Vec<usize>,
    /// The merged class-probability vector.
    pub probs: Vec<f64>,
    /// Its argmax.
    pub class: usize,
}

/// Groups crops by image (images in order of first appearance, as the reference's dict) and
/// merges each group with [`merge_crops`] at area temperature `temperature`.
pub fn merge_by_image(crops: &[CropPrediction], temperature: f64) -> Result<Vec<ImagePrediction>> {
    let mut order: Vec<String> = Vec::new();
    let mut members: std::collections::HashMap<&str, Vec<usize>> = Default::default();
    for (i, c) in crops.iter().enumerate() {
        let entry = members.entry(c.image.as_str()).or_default();
        if entry.is_empty() {
            order.push(c.image.clone());
        }
        entry.push(i);
    }
    order
        .into_iter()
        .map(|image| {
            let idx = members.remove(image.as_str()).unwrap_or_default();
            let probs: Vec<Vec<f64>> = idx.iter().map(|&i| crops[i].probs.clone()).collect();
            let pixels: Vec<usize> = idx.iter().map(|&i| crops[i].mask_pixels).collect();
            let merged = merge_crops(&probs, &pixels, temperature)?;
            Ok(ImagePrediction {
                class: argmax(&merged),
                image,
                crops: idx,
                probs: merged,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12)
    }

    #[test]
    fn novel_probs_zero_the_base_classes_and_renormalise() {
        let p = novel_probs(&[9.0, 9.0, 0.0, 0.0], 2, 1.0).unwrap();
        assert_eq!(p, vec![0.0, 0.0, 0.5, 0.5]);
        let p = novel_probs(&[0.0, 1.0, 0.25], 1, 0.1).unwrap();
        let e = (7.5f64).exp();
        assert!(close(&p, &[0.0, e / (1.0 + e), 1.0 / (1.0 + e)]));
        // A base class with the largest logit never wins.
        assert_eq!(sub_image_prediction(&[5.0, 0.1, 0.3, 0.2], 1).unwrap(), 2);
        assert!(novel_probs(&[1.0, 2.0], 2, 1.0).is_err());
        assert!(novel_probs(&[1.0, f32::NAN, 0.0], 1, 1.0).is_err());
    }

    #[test]
    fn one_crop_keeps_its_prediction() {
        let p = vec![0.0, 0.2, 0.8];
        assert_eq!(
            merge_crops(std::slice::from_ref(&p), &[400], 50.0).unwrap(),
            p
        );
    }

    #[test]
    fn equal_areas_average_the_crops() {
        let a = vec![0.0, 0.9, 0.1];
        let b = vec![0.0, 0.2, 0.8];
        let m = merge_crops(&[a, b], &[100, 100], 50.0).unwrap();
        assert!(close(&m, &[0.0, 0.55, 0.45]));
        assert_eq!(argmax(&m), 1);
    }

    #[test]
    fn larger_masks_weigh_more_and_an_empty_mask_still_counts() {
        let small = vec![0.0, 1.0, 0.0];
        let large = vec![0.0, 0.0, 1.0];
        // sqrt(0)/50 = 0 and sqrt(2500)/50 = 1: weights 1/(1+e) and e/(1+e).
        let m = merge_crops(&[small, large], &[0, 2500], 50.0).unwrap();
        let e = 1f64.exp();
        assert!(close(&m, &[0.0, 1.0 / (1.0 + e), e / (1.0 + e)]));
        // A larger temperature flattens the weights towards the plain mean.
        let m = merge_crops(&[vec![1.0, 0.0], vec![0.0, 1.0]], &[0, 2500], 1e9).unwrap();
        assert!((m[0] - 0.5).abs() < 1e-6);
        assert!(merge_crops(&[], &[], 50.0).is_err());
        assert!(merge_crops(&[vec![1.0]], &[1, 2], 50.0).is_err());
        assert!(merge_crops(&[vec![1.0], vec![1.0, 0.0]], &[1, 2], 50.0).is_err());
    }

    #[test]
    fn crops_group_by_image_name_in_first_seen_order() {
        assert_eq!(
            image_key(Path::new("c/images/MT_Crack/exp3_num_42_crop1.png")),
            "MT_Crack/exp3_num_42.png"
        );
        assert_eq!(
            image_key(Path::new("MT_Crack/a_crop0.png")),
            "MT_Crack/a.png"
        );
        assert_eq!(image_key(Path::new("x/a.png")), "x/a.png");
        let crop = |image: &str, probs: Vec<f64>, mask_pixels| CropPrediction {
            image: image.into(),
            probs,
            mask_pixels,
        };
        let crops = vec![
            crop("B/2.png", vec![0.0, 0.3, 0.7], 9),
            crop("A/1.png", vec![0.0, 0.6, 0.4], 4),
            crop("B/2.png", vec![0.0, 0.9, 0.1], 9),
        ];
        let out = merge_by_image(&crops, 50.0).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[0].image.as_str(), out[0].crops.clone()),
            ("B/2.png", vec![0, 2])
        );
        assert!(close(&out[0].probs, &[0.0, 0.6, 0.4]));
        assert_eq!(out[0].class, 1);
        assert_eq!((out[1].image.as_str(), out[1].class), ("A/1.png", 1));
    }

    #[test]
    fn mask_pixels_count_only_full_white() {
        let mut m = image::GrayImage::new(4, 4);
        m.put_pixel(0, 0, image::Luma([255]));
        m.put_pixel(1, 0, image::Luma([254]));
        m.put_pixel(2, 3, image::Luma([255]));
        assert_eq!(mask_pixel_count(&m), 2);
        assert_eq!(default_merge_temperature(true), 100.0);
        assert_eq!(default_merge_temperature(false), 50.0);
    }
}
