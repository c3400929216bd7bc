//! What a run writes after prediction: `predictions.csv` (one row per image),
//! `crop_predictions.csv`, `class_tokens.safetensors` (the trained models' crop tokens),
//! `metrics.json` (both levels, per-class precision/recall, confusion matrix) and one row `category,NMI,ARI,F1` appended to the runner's `metrics.csv` (the
//! reference's table; header once).

use std::path::Path;

use serde_json::json;

use super::predict::{score, Predictions};
use crate::error::{Error, Result, ResultExt};
use crate::fsutil::atomic_write;
use crate::metrics::{Evaluation, Scores};

fn csv_bytes(header: &[&str], rows: Vec<Vec<String>>) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let err = |e: csv::Error| Error::runtime(format!("writing CSV: {e}"));
    w.write_record(header).map_err(err)?;
    for r in rows {
        w.write_record(&r).map_err(err)?;
    }
    w.into_inner()
        .map_err(|e| Error::runtime(format!("writing CSV: {e}")))
}

fn name_of(names: &[String], idx: Option<usize>) -> String {
    idx.map(|i| names.get(i).cloned().unwrap_or_else(|| i.to_string()))
        .unwrap_or_default()
}

fn eval_json(e: &Evaluation, names: &[String]) -> serde_json::Value {
    json!({
        "NMI": e.nmi, "ARI": e.ari, "F1": e.f1,
        "cluster_to_class": e.cluster_to_class.iter().map(|&c| name_of(names, Some(c))).collect::<Vec<_>>(),
        "per_class": e.per_class.iter().map(|c| json!({
            "class": name_of(names, Some(c.class)), "support": c.support, "predicted": c.predicted,
            "correct": c.correct, "precision": c.precision, "recall": c.recall,
        })).collect::<Vec<_>>(),
        "confusion": {
            "classes": e.confusion.classes.iter().map(|&c| name_of(names, Some(c))).collect::<Vec<_>>(),
            "counts": e.confusion.counts,
        },
    })
}

/// `class_tokens.safetensors`: the trained class token of each crop, in the order of
/// `crop_predictions.csv`, for the user's own analysis (as `baseline` writes the pretrained
/// ones). Nothing when the predictions carry no tokens.
fn write_class_tokens(run_dir: &Path, preds: &Predictions) -> Result<()> {
    let tokens = &preds.class_tokens;
    let Some(d) = tokens.first().map(Vec::len) else {
        return Ok(());
    };
    if tokens.len() != preds.crops.len() || tokens.iter().any(|t| t.len() != d) {
        return Err(Error::runtime(
            "class tokens do not match the crop predictions",
        ));
    }
    let flat: Vec<f32> = tokens.iter().flatten().copied().collect();
    let a = ndarray::Array2::from_shape_vec((tokens.len(), d), flat)
        .map_err(|e| Error::runtime(format!("class tokens: {e}")))?;
    crate::cluster::features::save_tokens(&run_dir.join("class_tokens.safetensors"), a.view())
}

/// Stores in the checkpoint what `test` and `predict` need of this evaluation: the class each
/// cluster matched (when labels exist), so `predict` can name its clusters, the refined image
/// clusters' centroids (when refined) or the training images' features and clusters (spectral
/// clustering), and the `inference` settings and merge temperature the
/// answer was made with (an evaluation redone with other settings replaces them). The file is
/// rewritten only when one of them changes.
pub fn store_in_checkpoint(
    ckpt_path: &Path,
    novel: &[String],
    preds: &Predictions,
    answer: super::StoredAnswer,
    (inference, merge_temperature): (&crate::config::Inference, f64),
) -> Result<()> {
    let scores = score(preds)?;
    let mut ck = crate::checkpoint::load(ckpt_path)?;
    let before = ck.meta.clone();
    let neighbours_before = super::spectral::Neighbours::from_tensors(&ck.answer, ckpt_path)?;
    if let Some(scores) = scores {
        ck.meta.cluster_classes = (0..preds.num_clusters)
            .map(|k| {
                scores
                    .image
                    .cluster_to_class
                    .get(k)
                    .and_then(|&c| novel.get(c).cloned())
                    .unwrap_or_default()
            })
            .collect();
    }
    ck.meta.image_centroids = answer.centroids;
    ck.meta.answer_k = answer.k_read;
    ck.meta.config.inference = inference.clone();
    ck.meta.merge_temperature = merge_temperature;
    if ck.meta == before && answer.neighbours == neighbours_before {
        return Ok(());
    }
    ck.answer = answer
        .neighbours
        .as_ref()
        .map(super::spectral::Neighbours::to_tensors)
        .unwrap_or_default();
    crate::checkpoint::save(ckpt_path, &ck)
        .with_context(|| format!("storing the answer in {}", ckpt_path.display()))?;
    Ok(())
}

/// Writes the prediction files into `run_dir` and, when labels exist, appends the image-level
/// scores to `table`. Returns the image-level scores when labels exist.
pub fn write_all(
    run_dir: &Path,
    table: &Path,
    category: &str,
    novel_names: &[String],
    preds: &Predictions,
    head: usize,
    trained_names: &[String],
) -> Result<Option<Scores>> {
    let scores = score(preds)?;
    // The class a cluster matched in training names it when known (`predict`); else this
    // run's own matching when it has labels.
    let matched = |e: Option<&Evaluation>, cluster: usize| -> String {
        if let Some(n) = trained_names.get(cluster) {
            return n.clone();
        }
        e.and_then(|e| {
            e.cluster_to_class
                .get(cluster)
                .map(|&c| name_of(novel_names, Some(c)))
        })
        .unwrap_or_default()
    };
    let img_eval = scores.as_ref().map(|s| &s.image);
    let rows = preds
        .images
        .iter()
        .map(|r| {
            vec![
                r.image.clone(),
                r.cluster.to_string(),
                format!("{:.6}", r.confidence),
                name_of(novel_names, r.truth),
                matched(img_eval, r.cluster),
                r.crops.len().to_string(),
            ]
        })
        .collect();
    let header = [
        "image",
        "predicted_cluster",
        "confidence",
        "true_class",
        "matched_class",
        "crops",
    ];
    atomic_write(&run_dir.join("predictions.csv"), &csv_bytes(&header, rows)?)?;

    let sub_eval = scores.as_ref().map(|s| &s.sub_image);
    let rows = preds
        .crops
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.image.clone(),
                r.cluster.to_string(),
                format!("{:.6}", r.confidence),
                name_of(novel_names, r.truth),
                matched(sub_eval, r.cluster),
            ]
        })
        .collect();
    let header = [
        "crop",
        "image",
        "predicted_cluster",
        "confidence",
        "true_class",
        "matched_class",
    ];
    atomic_write(
        &run_dir.join("crop_predictions.csv"),
        &csv_bytes(&header, rows)?,
    )?;
    write_class_tokens(run_dir, preds)?;

    let mut doc = json!({
        "category": category,
        "head": head,
        "num_clusters": preds.num_clusters,
        "images": preds.images.len(),
        "crops": preds.crops.len(),
        "labels_known": scores.is_some(),
    });
    if let Some(s) = &scores {
        doc["image_level"] = eval_json(&s.image, novel_names);
        doc["sub_image_level"] = eval_json(&s.sub_image, novel_names);
        log::info!(
            "sub-image: NMI {:.4} | ARI {:.4} | F1 {:.4}",
            s.sub_image.nmi,
            s.sub_image.ari,
            s.sub_image.f1
        );
        log::info!(
            "image (region merged): NMI {:.4} | ARI {:.4} | F1 {:.4}",
            s.image.nmi,
            s.image.ari,
            s.image.f1
        );
    }
    atomic_write(
        &run_dir.join("metrics.json"),
        &serde_json::to_vec_pretty(&doc).expect("json"),
    )?;

    let Some(s) = scores else {
        log::info!(
            "no true types (flat folder): metrics skipped; predictions in {}",
            run_dir.display()
        );
        return Ok(None);
    };
    append_table(table, category, s.image.scores())?;
    Ok(Some(s.image.scores()))
}

/// Appends `category,NMI,ARI,F1` to the table, writing the header when the file is new.
///
/// Runs of several categories at once (one per GPU) share a table: an exclusive lock on
/// `<table>.lock` makes each read-append-replace whole, so no row is lost to a concurrent one.
pub fn append_table(table: &Path, category: &str, scores: Scores) -> Result<()> {
    let lock_path = table.with_extension("csv.lock");
    if let Some(dir) = table.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::io(&lock_path, e))?;
    lock.lock().map_err(|e| Error::io(&lock_path, e))?;
    let r = append_row(table, category, scores);
    let _ = lock.unlock();
    r
}

fn append_row(table: &Path, category: &str, s: Scores) -> Result<()> {
    let mut text = match std::fs::read(table) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => b"category,NMI,ARI,F1\n".to_vec(),
        Err(e) => return Err(Error::io(table, e)),
    };
    if !text.ends_with(b"\n") && !text.is_empty() {
        text.push(b'\n');
    }
    let row = csv_bytes(
        &["category", "NMI", "ARI", "F1"],
        vec![vec![
            category.to_string(),
            s.nmi.to_string(),
            s.ari.to_string(),
            s.f1.to_string(),
        ]],
    )?;
    let row_only = row.splitn(2, |&b| b == b'\n').nth(1).unwrap_or_default();
    text.extend_from_slice(row_only);
    atomic_write(table, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_tokens_are_written_in_crop_order_or_not_at_all() {
        let d = tempfile::tempdir().unwrap();
        let mut p = Predictions::one_crop_per_image(&[None, None], &[0, 0], 1);
        let file = d.path().join("class_tokens.safetensors");
        write_class_tokens(d.path(), &p).unwrap();
        assert!(!file.exists());
        p.class_tokens = vec![vec![1.0, 2.0, 3.0], vec![4.0, 5.0, 6.0]];
        write_class_tokens(d.path(), &p).unwrap();
        let bytes = std::fs::read(&file).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor("class_tokens").unwrap();
        assert_eq!(t.shape(), [2, 3]);
        let v: Vec<f32> = t
            .data()
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(v, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        p.class_tokens.pop();
        assert!(write_class_tokens(d.path(), &p).is_err());
    }

    #[test]
    fn concurrent_appends_keep_every_row() {
        let d = tempfile::tempdir().unwrap();
        let table = d.path().join("runs/metrics.csv");
        std::thread::scope(|s| {
            for t in 0..6 {
                let table = &table;
                s.spawn(move || {
                    for i in 0..15 {
                        append_table(table, &format!("c{t}_{i}"), (0.1, 0.2, 0.3).into()).unwrap();
                    }
                });
            }
        });
        let text = std::fs::read_to_string(&table).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "category,NMI,ARI,F1");
        assert_eq!(lines.len(), 1 + 6 * 15, "{text}");
        for t in 0..6 {
            for i in 0..15 {
                let row = format!("c{t}_{i},0.1,0.2,0.3");
                assert!(lines.contains(&row.as_str()), "{row} missing");
            }
        }
    }
}
