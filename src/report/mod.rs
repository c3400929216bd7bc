//! The run report: `report.html` in the run folder and its pictures in `report/`, written after
//! `train`'s evaluation, `test` and `predict`, so that a user sees at a glance what each
//! discovered class looks like.
//!
//! - `report/cluster_<k>.png`: a contact sheet per cluster: thumbnails of its images (at most
//!   [`MAX_TILES`], an even sample over the images sorted by confidence when there are more),
//!   each with the anomaly mask outlined and the crop boxes drawn on the original image, framed
//!   green / red when its true class is / is not the cluster's matched class;
//! - `report/confusion.png`: true classes × predicted clusters, when labels exist;
//! - `report.html`: per-cluster sections (size, matched class, purity, sheet), the image- and
//!   crop-level NMI / ARI / F1, the confusion picture and per-class precision / recall. It needs
//!   no network: inline CSS, pictures by relative path.
//!
//! Originals are found through the binarize output's `mebin.json` (image paths, crop boxes) and
//! `binary/<type>/<stem>.png`; an image whose original cannot be found is shown by its crop with
//! the crop mask outlined. A file that cannot be read becomes a grey tile and a warning.

pub(crate) mod confusion;
pub(crate) mod font;
pub(crate) mod html;
pub(crate) mod sheets;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::data::CropSet;
use crate::error::{Result, ResultExt};
use crate::fsutil::{atomic_write, save_image_atomic};
use crate::infer::predict::{score, Predictions};
use crate::mebin::job::{binary_path, BinarizeSummary, SUMMARY_FILE};
use crate::metrics::{Evaluation, Scores};
use sheets::{TileSource, TileSpec, Verdict};

/// The report page, in the run folder.
pub const REPORT_FILE: &str = "report.html";
/// The folder of its pictures, beside the page.
pub const REPORT_DIR: &str = "report";
/// Most thumbnails on one cluster's sheet.
pub const MAX_TILES: usize = 64;

/// What a report is made from.
pub struct ReportInput<'a> {
    pub category: &'a str,
    /// Names of the true novel types (`CropSet::novel_types`); empty without labels.
    pub class_names: &'a [String],
    pub preds: &'a Predictions,
    /// The crops the predictions index (`CropRow::item`).
    pub set: &'a CropSet,
    /// The binarize output the crops come from (`mebin.json`, `binary/`).
    pub binarize_out: &'a Path,
    /// The class each cluster matched in training (from the checkpoint, for `predict`); empty
    /// when unknown.
    pub trained_names: &'a [String],
}

/// What a finished `train`, `test`, `predict` or `baseline` writes into its folder.
pub struct RunOutputs<'a> {
    pub out: &'a Path,
    /// The metrics table a labelled run appends its image-level row to.
    pub table: &'a Path,
    pub category: &'a str,
    pub set: &'a CropSet,
    pub preds: &'a Predictions,
    /// The projector head the predictions come from.
    pub head: usize,
    /// The binarize output the crops come from.
    pub binarize_out: &'a Path,
    /// The class each cluster matched in training (`predict`), or empty.
    pub trained_names: &'a [String],
}

/// Writes the prediction files and metrics (see [`crate::infer::outputs::write_all`]), then
/// `report.html` and its pictures. Returns the image-level scores when labels exist.
pub fn write(o: &RunOutputs) -> Result<Option<Scores>> {
    let novel = &o.set.novel_types;
    let res = crate::infer::outputs::write_all(
        o.out,
        o.table,
        o.category,
        novel,
        o.preds,
        o.head,
        o.trained_names,
    )?;
    let input = ReportInput {
        category: o.category,
        class_names: novel,
        preds: o.preds,
        set: o.set,
        binarize_out: o.binarize_out,
        trained_names: o.trained_names,
    };
    write_report(o.out, &input)
        .with_context(|| format!("writing the report into {}", o.out.display()))?;
    Ok(res)
}

/// One discovered cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSummary {
    pub cluster: usize,
    /// Image rows assigned to it, most confident first (ties by image name).
    pub members: Vec<usize>,
    /// Crops of those images.
    pub crops: usize,
    pub mean_confidence: f64,
    /// True class matched to the cluster (image level), when labels exist and the matching gave
    /// it a real class (with more clusters than classes some stay unmatched).
    pub matched: Option<usize>,
    /// Share of its images whose true class is `matched` (0 when unmatched); `None` without
    /// labels or for an empty cluster.
    pub purity: Option<f64>,
    /// Its most common true class and that class's share.
    pub majority: Option<(usize, f64)>,
}

/// Share of `truths` equal to `class` (`None` for no truths).
pub fn purity(truths: &[usize], class: Option<usize>) -> Option<f64> {
    if truths.is_empty() {
        return None;
    }
    let hits = truths.iter().filter(|&&t| Some(t) == class).count();
    Some(hits as f64 / truths.len() as f64)
}

/// Most common value of `truths` (the smallest among equals) and its share.
pub fn majority(truths: &[usize]) -> Option<(usize, f64)> {
    let mut counts: std::collections::BTreeMap<usize, usize> = Default::default();
    for &t in truths {
        *counts.entry(t).or_default() += 1;
    }
    let (class, n) = counts
        .into_iter()
        .fold(None, |best: Option<(usize, usize)>, (c, n)| match best {
            Some((_, bn)) if bn >= n => best,
            _ => Some((c, n)),
        })?;
    Some((class, n as f64 / truths.len() as f64))
}

/// Per-cluster summaries; `image_eval` (with `num_classes` true classes) gives the matching.
pub fn summarize(
    preds: &Predictions,
    image_eval: Option<&Evaluation>,
    num_classes: usize,
) -> Vec<ClusterSummary> {
    let k = preds.num_clusters.max(
        preds
            .images
            .iter()
            .map(|r| r.cluster + 1)
            .max()
            .unwrap_or(0),
    );
    (0..k)
        .map(|cluster| {
            let mut members: Vec<usize> = (0..preds.images.len())
                .filter(|&i| preds.images[i].cluster == cluster)
                .collect();
            members.sort_by(|&a, &b| {
                let (ra, rb) = (&preds.images[a], &preds.images[b]);
                rb.confidence
                    .total_cmp(&ra.confidence)
                    .then_with(|| ra.image.cmp(&rb.image))
            });
            let crops = members.iter().map(|&i| preds.images[i].crops.len()).sum();
            let mean_confidence = if members.is_empty() {
                0.0
            } else {
                members
                    .iter()
                    .map(|&i| preds.images[i].confidence)
                    .sum::<f64>()
                    / members.len() as f64
            };
            let matched = image_eval
                .and_then(|e| e.cluster_to_class.get(cluster).copied())
                .filter(|&c| c < num_classes);
            let truths: Option<Vec<usize>> =
                members.iter().map(|&i| preds.images[i].truth).collect();
            let (purity, majority) = match (image_eval, truths) {
                (Some(_), Some(t)) => (purity(&t, matched), majority(&t)),
                _ => (None, None),
            };
            ClusterSummary {
                cluster,
                members,
                crops,
                mean_confidence,
                matched,
                purity,
                majority,
            }
        })
        .collect()
}

/// An even, deterministic choice of at most `max` of `n` positions (all when `n <= max`).
pub fn sample_evenly(n: usize, max: usize) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    (0..max).map(|i| i * n / max).collect()
}

/// `binary/<type>/<stem>.png` and crop boxes of each crop file, from `mebin.json`.
struct Originals {
    out: PathBuf,
    summary: Option<BinarizeSummary>,
    /// (type, crop file name) -> record index.
    by_crop: HashMap<(String, String), usize>,
}

impl Originals {
    fn load(binarize_out: &Path) -> Originals {
        let path = binarize_out.join(SUMMARY_FILE);
        let summary: Option<BinarizeSummary> = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        if summary.is_none() {
            log::info!(
                "report: no readable {}; showing crops instead of the original images",
                path.display()
            );
        }
        let mut by_crop = HashMap::new();
        for (i, r) in summary.iter().flat_map(|s| s.records.iter().enumerate()) {
            for name in r.crop_names() {
                by_crop.insert((r.class_name.clone(), name), i);
            }
        }
        Originals {
            out: binarize_out.to_path_buf(),
            summary,
            by_crop,
        }
    }

    /// The original of a crop with id `<type>/<file>` or `<file>`, when its file exists.
    fn source(&self, crop_id: &str) -> Option<TileSource> {
        let (kind, file) = crop_id.rsplit_once('/').unwrap_or(("", crop_id));
        let i = *self.by_crop.get(&(kind.to_string(), file.to_string()))?;
        let r = &self.summary.as_ref()?.records[i];
        r.image.is_file().then(|| TileSource::Original {
            image: r.image.clone(),
            mask: self.out.join(binary_path(r)),
            boxes: r.crop_boxes.clone(),
        })
    }
}

/// True classes: the named ones, and any larger index a prediction carries.
fn num_true_classes(preds: &Predictions, names: &[String]) -> usize {
    preds
        .images
        .iter()
        .filter_map(|r| r.truth.map(|t| t + 1))
        .max()
        .unwrap_or(0)
        .max(names.len())
}

fn class_name(names: &[String], idx: usize) -> String {
    names
        .get(idx)
        .cloned()
        .unwrap_or_else(|| format!("class {idx}"))
}

/// The tile of image row `i` of a cluster matched to `matched` (labels known: `labelled`).
fn tile_spec(
    input: &ReportInput,
    originals: &Originals,
    i: usize,
    matched: Option<usize>,
    labelled: bool,
) -> Option<TileSpec> {
    let row = &input.preds.images[i];
    let first = input.preds.crops.get(*row.crops.first()?)?;
    let item = input.set.items.get(first.item)?;
    let source = originals
        .source(&item.id)
        .unwrap_or_else(|| TileSource::Crop {
            image: item.image.clone(),
            mask: item.mask.clone(),
        });
    let file = row.image.rsplit('/').next().unwrap_or(&row.image);
    let name = file.strip_suffix(".png").unwrap_or(file).to_string();
    let verdict = match (labelled, row.truth) {
        (true, Some(t)) if Some(t) == matched => Verdict::Right,
        (true, Some(_)) => Verdict::Wrong,
        _ => Verdict::Unknown,
    };
    let mut detail = format!("conf {:.2}", row.confidence);
    if let (Verdict::Wrong, Some(t)) = (verdict, row.truth) {
        detail = format!("{detail} is {}", class_name(input.class_names, t));
    }
    Some(TileSpec {
        source,
        name,
        detail,
        verdict,
    })
}

fn sheet_header(c: &ClusterSummary, shown: usize, names: &[String], labelled: bool) -> [String; 2] {
    let mut first = format!(
        "cluster {}: {} images, {} crops",
        c.cluster,
        c.members.len(),
        c.crops
    );
    if shown < c.members.len() {
        first.push_str(&format!(" ({shown} shown)"));
    }
    let second = match (labelled, c.matched, c.purity, c.majority) {
        (false, ..) | (true, _, None, _) => format!("mean confidence {:.2}", c.mean_confidence),
        (true, Some(m), Some(p), _) => format!(
            "matched {}, purity {:.2}, mean confidence {:.2}",
            class_name(names, m),
            p,
            c.mean_confidence
        ),
        (true, None, _, Some((m, share))) => format!(
            "no class matched; most common {} ({:.2})",
            class_name(names, m),
            share
        ),
        (true, None, _, None) => "no class matched".to_string(),
    };
    [first, second]
}

/// Confusion counts of the images: rows are the true classes, columns the clusters ordered so
/// that each matched class's cluster sits on the diagonal (unmatched clusters last).
pub fn confusion_table(
    preds: &Predictions,
    clusters: &[ClusterSummary],
    names: &[String],
) -> (Vec<String>, Vec<String>, Vec<Vec<usize>>) {
    let n_rows = num_true_classes(preds, names);
    let mut order: Vec<&ClusterSummary> = clusters.iter().collect();
    order.sort_by_key(|c| (c.matched.unwrap_or(usize::MAX), c.cluster));
    let col_of: HashMap<usize, usize> = order
        .iter()
        .enumerate()
        .map(|(j, c)| (c.cluster, j))
        .collect();
    let mut counts = vec![vec![0usize; order.len()]; n_rows];
    for r in &preds.images {
        if let (Some(t), Some(&j)) = (r.truth, col_of.get(&r.cluster)) {
            counts[t][j] += 1;
        }
    }
    let rows = (0..n_rows).map(|i| class_name(names, i)).collect();
    let cols = order.iter().map(|c| format!("c{}", c.cluster)).collect();
    (rows, cols, counts)
}

/// Writes `report.html` and `report/*.png` into `out_dir` and returns the page's path. Files
/// that cannot be read become grey tiles with a warning; failing to write is an error.
pub fn write_report(out_dir: &Path, input: &ReportInput) -> Result<PathBuf> {
    let scores = score(input.preds)?;
    let labelled = scores.is_some();
    let names = input.class_names;
    let num_classes = num_true_classes(input.preds, names);
    let clusters = summarize(input.preds, scores.as_ref().map(|s| &s.image), num_classes);
    let originals = Originals::load(input.binarize_out);

    let mut specs: Vec<(usize, TileSpec)> = Vec::new();
    let mut shown = Vec::with_capacity(clusters.len());
    for (k, c) in clusters.iter().enumerate() {
        let picks = sample_evenly(c.members.len(), MAX_TILES);
        shown.push(picks.len());
        for p in picks {
            if let Some(s) = tile_spec(input, &originals, c.members[p], c.matched, labelled) {
                specs.push((k, s));
            }
        }
    }
    let originals_used = specs
        .iter()
        .filter(|(_, s)| matches!(s.source, TileSource::Original { .. }))
        .count();
    if originals.summary.is_some() && originals_used < specs.len() {
        log::info!(
            "report: {} of {} images show their crop: the original image was not found (the image paths in {} may be relative to the folder binarize ran in)",
            specs.len() - originals_used,
            specs.len(),
            input.binarize_out.join(SUMMARY_FILE).display()
        );
    }
    let pb = crate::logging::progress(specs.len() as u64, "report");
    let tiles: Vec<_> = specs
        .par_iter()
        .map(|(k, s)| {
            let t = sheets::tile(s);
            pb.inc(1);
            (*k, t)
        })
        .collect();
    pb.finish_and_clear();

    let dir = out_dir.join(REPORT_DIR);
    let mut warnings = 0usize;
    let mut cells: Vec<Vec<image::RgbImage>> = vec![Vec::new(); clusters.len()];
    for (k, (img, warning)) in tiles {
        if let Some(w) = warning {
            warnings += 1;
            if warnings <= 5 {
                log::warn!("report: {w}");
            }
        }
        cells[k].push(img);
    }
    if warnings > 5 {
        log::warn!(
            "report: {warnings} files could not be read in all (grey tiles or missing outlines)"
        );
    }
    let mut sheet_paths = Vec::with_capacity(clusters.len());
    for (k, c) in clusters.iter().enumerate() {
        let [a, b] = sheet_header(c, shown[k], names, labelled);
        let img = sheets::sheet([&a, &b], &cells[k]);
        let rel = format!("{REPORT_DIR}/cluster_{}.png", c.cluster);
        save_image_atomic(
            &image::DynamicImage::ImageRgb8(img),
            &dir.join(format!("cluster_{}.png", c.cluster)),
        )?;
        sheet_paths.push(rel);
    }
    let confusion_rel = if labelled {
        let (rows, cols, counts) = confusion_table(input.preds, &clusters, names);
        let img = confusion::confusion_image(&rows, &cols, &counts);
        save_image_atomic(
            &image::DynamicImage::ImageRgb8(img),
            &dir.join("confusion.png"),
        )?;
        Some(format!("{REPORT_DIR}/confusion.png"))
    } else {
        None
    };
    let source_note = if originals_used == specs.len() {
        "original images with the anomaly mask outlined (red) and the crop boxes (yellow)"
    } else if originals_used == 0 {
        "anomaly crops with their mask outlined (red); the original images were not found"
    } else {
        "original images with the anomaly mask outlined (red) and the crop boxes (yellow); crops where the original was not found"
    };
    let page = html::Page {
        category: input.category,
        class_names: names,
        images: input.preds.images.len(),
        crops: input.preds.crops.len(),
        clusters: &clusters,
        sheets: &sheet_paths,
        shown: &shown,
        scores: scores.as_ref(),
        confusion: confusion_rel.as_deref(),
        source_note,
        warnings,
        trained_names: input.trained_names,
    };
    let path = out_dir.join(REPORT_FILE);
    atomic_write(&path, html::render(&page).as_bytes())?;
    log::info!("report: {}", path.display());
    Ok(path)
}

#[cfg(test)]
mod tests;
