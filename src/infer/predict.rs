//! Running a trained model over crops and turning its outputs into crop- and image-level
//! predictions (sub-image prediction and region merging, see [`super::merge`]), scored with
//! [`crate::metrics::evaluate`] when the true types are known.

use tch::{Device, Kind, Tensor};

use super::merge::{
    image_key, mask_pixel_count, merge_by_image, novel_probs, CropPrediction, MERGE_LOGIT_TEMP,
};
use crate::data::{CropSet, EvalLoader};
use crate::error::{Error, Result};
use crate::metrics::{evaluate, Evaluation};
use crate::model::{Model, PrefixTokens};

/// Every head's logits for one crop.
#[derive(Debug, Clone)]
pub struct CropOutput {
    /// Index into `CropSet::items`.
    pub item: usize,
    /// `[n_head][C]`.
    pub logits: Vec<Vec<f32>>,
    /// The backbone's class token `[D]` the heads read (before the projector).
    pub class_token: Vec<f32>,
}

/// Runs the model (no gradients) over the loader's crops.
pub fn crop_logits(model: &Model, loader: &EvalLoader, device: Device) -> Result<Vec<CropOutput>> {
    let mut out = Vec::with_capacity(loader.len());
    let pb = crate::logging::progress(loader.len() as u64, "predict");
    for batch in loader.iter() {
        let batch = batch?;
        let (cls, logits) = tch::no_grad(|| -> Result<(Tensor, Vec<Tensor>)> {
            let (cls, _, logits) = model.forward(
                &batch.images.to_device(device),
                &batch.masks.to_device(device),
            )?;
            Ok((cls, logits))
        })?;
        push_outputs(&cls, &logits, &batch.ids, &mut out)?;
        pb.inc(batch.ids.len() as u64);
        crate::threads::tick();
    }
    pb.finish_and_clear();
    Ok(out)
}

/// [`crop_logits`] for crops `items` of a token cache's set, from their cached plain views:
/// only the blocks after the cached prefix and the heads run.
pub fn crop_logits_cached(
    model: &Model,
    bank: &dyn PrefixTokens,
    items: &[usize],
    batch_size: usize,
    device: Device,
) -> Result<Vec<CropOutput>> {
    let mut out = Vec::with_capacity(items.len());
    let pb = crate::logging::progress(items.len() as u64, "predict");
    for chunk in items.chunks(batch_size.max(1)) {
        let (tokens, hidden) = bank.plain(chunk, device)?;
        let (cls, logits) = tch::no_grad(|| -> Result<(Tensor, Vec<Tensor>)> {
            let cls = model
                .backbone
                .forward_from_guide(&tokens, &hidden, bank.block())?;
            let logits = model.projector.forward(&cls).1;
            Ok((cls, logits))
        })?;
        push_outputs(&cls, &logits, chunk, &mut out)?;
        pb.inc(chunk.len() as u64);
        crate::threads::tick();
    }
    pb.finish_and_clear();
    Ok(out)
}

/// Appends one [`CropOutput`] per crop of `ids` from the class tokens `[B, D]` and the heads'
/// `[B, C]` logits.
fn push_outputs(
    cls: &Tensor,
    logits: &[Tensor],
    ids: &[usize],
    out: &mut Vec<CropOutput>,
) -> Result<()> {
    let cls = cls.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    let d = cls.size().last().copied().unwrap_or(0) as usize;
    let tokens: Vec<f32> = Vec::<f32>::try_from(cls.view(-1))?;
    let logits = Tensor::stack(logits, 1)
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous();
    let (b, h, c) = match logits.size()[..] {
        [b, h, c] => (b as usize, h as usize, c as usize),
        _ => return Err(Error::runtime("unexpected head output shape")),
    };
    let flat: Vec<f32> = Vec::<f32>::try_from(logits.view(-1))?;
    for (k, &item) in ids.iter().enumerate().take(b) {
        let rows = (0..h)
            .map(|j| flat[(k * h + j) * c..(k * h + j + 1) * c].to_vec())
            .collect();
        let class_token = tokens.get(k * d..(k + 1) * d).unwrap_or_default().to_vec();
        out.push(CropOutput {
            item,
            logits: rows,
            class_token,
        });
    }
    Ok(())
}

/// One crop's prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct CropRow {
    pub item: usize,
    /// `<type>/<file>` of the crop.
    pub id: String,
    pub image: String,
    /// Predicted novel cluster, `0..K`.
    pub cluster: usize,
    pub confidence: f64,
    /// True novel type index `0..` when known.
    pub truth: Option<usize>,
}

/// One image's merged prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRow {
    pub image: String,
    pub cluster: usize,
    pub confidence: f64,
    pub truth: Option<usize>,
    /// Indices into the crop rows.
    pub crops: Vec<usize>,
    /// The region-merged probability of each novel cluster.
    pub merged: Vec<f64>,
}

#[derive(Debug, Clone)]
pub struct Predictions {
    pub crops: Vec<CropRow>,
    pub images: Vec<ImageRow>,
    pub num_base: usize,
    pub num_clusters: usize,
    /// The trained model's class token of each crop, in the order of `crops` (written as
    /// `class_tokens.safetensors`); empty when the predictions come from elsewhere (k-means).
    pub class_tokens: Vec<Vec<f32>>,
}

impl Predictions {
    /// Test data: one crop per image; image `i` has class token `tokens[i]` and the heads'
    /// cluster `heads[i]`, merged with probability 0.9 (0.05 for every other cluster).
    #[cfg(test)]
    pub(crate) fn with_tokens(tokens: &[[f32; 2]], heads: &[usize], k: usize) -> Predictions {
        let mut p = Predictions::one_crop_per_image(&vec![None; tokens.len()], heads, k);
        for img in &mut p.images {
            img.confidence = 0.9;
            img.merged = (0..k)
                .map(|j| if j == img.cluster { 0.9 } else { 0.05 })
                .collect();
        }
        p.class_tokens = tokens.iter().map(|t| t.to_vec()).collect();
        p
    }

    /// Test data: `n` images, image `i` with true class `truth[i]` predicted as `pred[i]`, one
    /// crop each.
    #[cfg(test)]
    pub(crate) fn one_crop_per_image(
        truth: &[Option<usize>],
        pred: &[usize],
        k: usize,
    ) -> Predictions {
        let crops = truth
            .iter()
            .zip(pred)
            .enumerate()
            .map(|(i, (&t, &c))| CropRow {
                item: i,
                id: format!("t{}/img{i}_crop0.png", t.unwrap_or(0)),
                image: format!("t{}/img{i}.png", t.unwrap_or(0)),
                cluster: c,
                confidence: 0.5,
                truth: t,
            })
            .collect::<Vec<_>>();
        let images = crops
            .iter()
            .enumerate()
            .map(|(i, c)| ImageRow {
                image: c.image.clone(),
                cluster: c.cluster,
                confidence: 0.5 + i as f64 / 100.0,
                truth: c.truth,
                crops: vec![i],
                merged: vec![0.5; k],
            })
            .collect();
        Predictions {
            crops,
            images,
            num_base: 0,
            num_clusters: k,
            class_tokens: Vec::new(),
        }
    }

    /// Images per novel cluster.
    pub fn cluster_sizes(&self) -> Vec<usize> {
        let mut sizes = vec![0usize; self.num_clusters];
        for r in &self.images {
            if let Some(s) = sizes.get_mut(r.cluster) {
                *s += 1;
            }
        }
        sizes
    }
}

/// Sub-image predictions of head `head` and region merging at area temperature `temperature`.
/// Mask pixel counts are read from the crops' mask files, as the reference does.
pub fn predict(
    set: &CropSet,
    outputs: &[CropOutput],
    head: usize,
    temperature: f64,
) -> Result<Predictions> {
    let nb = set.num_base_classes();
    let mut rows = Vec::with_capacity(outputs.len());
    let mut merge_in = Vec::with_capacity(outputs.len());
    for o in outputs {
        let item = &set.items[o.item];
        let logits = o
            .logits
            .get(head)
            .ok_or_else(|| Error::runtime(format!("head {head} missing")))?;
        let p1 = novel_probs(logits, nb, 1.0)?;
        let (cls, conf) = max_entry(&p1);
        // The id is `<type>/<file>` (or `<file>` for a flat folder): key images the same way.
        let image = image_key(std::path::Path::new(&item.id));
        rows.push(CropRow {
            item: o.item,
            id: item.id.clone(),
            image: image.clone(),
            cluster: cls - nb,
            confidence: conf,
            truth: item.label.map(|l| l - nb),
        });
        let mask = image::open(&item.mask)
            .map_err(|e| Error::input(&item.mask, format!("cannot read crop mask: {e}")))?
            .to_luma8();
        merge_in.push(CropPrediction {
            image,
            probs: novel_probs(logits, nb, MERGE_LOGIT_TEMP)?,
            mask_pixels: mask_pixel_count(&mask),
        });
    }
    let mut preds = merged_predictions(rows, &merge_in, nb, set.num_novel_clusters, temperature)?;
    preds.class_tokens = outputs.iter().map(|o| o.class_token.clone()).collect();
    Ok(preds)
}

/// Predictions from hard cluster assignments (e.g. k-means, no trained head): each crop's
/// cluster as a one-hot probability, merged per image with the same area weights as
/// [`predict`], so an image takes the cluster of its crops' area-weighted vote.
pub fn predict_assigned(
    set: &CropSet,
    items: &[usize],
    clusters: &[usize],
    num_clusters: usize,
    temperature: f64,
) -> Result<Predictions> {
    if items.len() != clusters.len() || clusters.iter().any(|&c| c >= num_clusters) {
        return Err(Error::runtime(
            "one cluster below num_clusters per crop expected",
        ));
    }
    let nb = set.num_base_classes();
    let mut rows = Vec::with_capacity(items.len());
    let mut merge_in = Vec::with_capacity(items.len());
    for (&i, &c) in items.iter().zip(clusters) {
        let item = set
            .items
            .get(i)
            .ok_or_else(|| Error::runtime(format!("crop index {i} outside the set")))?;
        let image = image_key(std::path::Path::new(&item.id));
        rows.push(CropRow {
            item: i,
            id: item.id.clone(),
            image: image.clone(),
            cluster: c,
            confidence: 1.0,
            truth: item.label.map(|l| l - nb),
        });
        let mask = image::open(&item.mask)
            .map_err(|e| Error::input(&item.mask, format!("cannot read crop mask: {e}")))?
            .to_luma8();
        let mut probs = vec![0.0; nb + num_clusters];
        probs[nb + c] = 1.0;
        merge_in.push(CropPrediction {
            image,
            probs,
            mask_pixels: mask_pixel_count(&mask),
        });
    }
    merged_predictions(rows, &merge_in, nb, num_clusters, temperature)
}

/// Region merging of the crops' probabilities into one row per image (the image takes its first
/// crop's true type), with the crop rows.
fn merged_predictions(
    rows: Vec<CropRow>,
    merge_in: &[CropPrediction],
    nb: usize,
    num_clusters: usize,
    temperature: f64,
) -> Result<Predictions> {
    let images = merge_by_image(merge_in, temperature)?
        .into_iter()
        .map(|m| {
            let (_, conf) = max_entry(&m.probs);
            ImageRow {
                truth: rows[m.crops[0]].truth,
                image: m.image,
                cluster: m.class - nb,
                confidence: conf,
                merged: m.probs.get(nb..).unwrap_or_default().to_vec(),
                crops: m.crops,
            }
        })
        .collect();
    Ok(Predictions {
        crops: rows,
        images,
        num_base: nb,
        num_clusters,
        class_tokens: Vec::new(),
    })
}

fn max_entry(p: &[f64]) -> (usize, f64) {
    let mut best = 0;
    for (i, v) in p.iter().enumerate() {
        if *v > p[best] {
            best = i;
        }
    }
    (best, p[best])
}

/// Crop- and image-level scores, when every prediction has a true type.
#[derive(Debug, Clone)]
pub struct Scores {
    pub sub_image: Evaluation,
    pub image: Evaluation,
}

pub fn score(p: &Predictions) -> Result<Option<Scores>> {
    let truth = |t: Option<usize>| t;
    if p.crops.is_empty() || p.crops.iter().any(|c| truth(c.truth).is_none()) {
        return Ok(None);
    }
    let eval = |t: Vec<usize>, y: Vec<usize>| {
        let base = vec![false; t.len()];
        evaluate(&t, &y, &base)
    };
    let sub = eval(
        p.crops.iter().map(|c| c.truth.unwrap_or(0)).collect(),
        p.crops.iter().map(|c| c.cluster).collect(),
    )?;
    let img = eval(
        p.images.iter().map(|c| c.truth.unwrap_or(0)).collect(),
        p.images.iter().map(|c| c.cluster).collect(),
    )?;
    Ok(Some(Scores {
        sub_image: sub,
        image: img,
    }))
}
