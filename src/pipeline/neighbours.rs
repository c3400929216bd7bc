//! The novel crops' neighbours for `training.neighbor_views` ([`crate::data::NeighbourViews`]):
//! by the pretrained class tokens of the crops, or, with `training.neighbor_features`, by their
//! images' pooled detector features (the detector backbone's patch features pooled under each
//! image's anomaly map, as `baseline --method pooled` computes them): with `pooled`, the ones the
//! built-in detector wrote beside its maps, or computed here when the maps came from elsewhere;
//! or read from a `baseline --method pooled` output folder. Part of the `train` stage.
//!
//! Why a second source: an image's nearest neighbour by the pooled detector features has its
//! type more often than by the class tokens on every benchmark protocol (MTD fitted 0.94
//! against 0.88, SD-900 1.00 against 0.93, tire 0.52 against 0.37; docs/results.md), though
//! k-means or a graph cut on them alone groups the types worse: as neighbours they give purer
//! pairs, and training turns the pairs into K groups.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ndarray::Array2;

use super::pooled::{default_dinov2_weights, image_features, POOLED_FEATURES, POOLED_IMAGES};
use super::TrainSpec;
use crate::cluster::SetTokens;
use crate::config::{Config, NeighbourFeatures};
use crate::data::{CropSet, NeighbourViews};
use crate::detect::pooled::{Pooling, DETECT_FEATURES_FILE, DETECT_IMAGES_FILE};
use crate::error::{Error, Result};
use crate::infer::predict::Predictions;
use crate::mebin::{folders::pair_folders, MapItem};

/// The files of `training.neighbor_features` that the train stage's fingerprint digests.
pub const NEIGHBOUR_FEATURES_FILES: [&str; 2] = [POOLED_FEATURES, POOLED_IMAGES];

/// The images' pooled detector features, one row per image keyed `<type>/<stem>`, and where
/// they came from (named in the log and in errors).
pub(super) struct PooledImages {
    keys: Vec<String>,
    feats: Array2<f32>,
    source: PathBuf,
    what: String,
}

/// The pooled features of the images of `set`'s novel crops, read once per train stage for
/// the neighbour views and the answer: from `training.neighbor_features: DIR`; else the ones the
/// built-in detector wrote beside the maps when they cover every novel crop; else computed
/// here from the images and maps.
pub(super) fn pooled_images(spec: &TrainSpec, cfg: &Config, set: &CropSet) -> Result<PooledImages> {
    let novel = set.novel_indices();
    if let Some(NeighbourFeatures::Folder(dir)) = &cfg.training.neighbor_features {
        let (keys, feats) = read_pooled(&dir.join(POOLED_FEATURES), &dir.join(POOLED_IMAGES))?;
        let what = format!("their images' features in {}", dir.display());
        let p = PooledImages {
            keys,
            feats,
            source: dir.clone(),
            what,
        };
        crops_rows(&p, set, &novel)?;
        return Ok(p);
    }
    if let Some(p) = detector_features(spec, cfg, set, &novel) {
        return Ok(p);
    }
    let (keys, feats) = pooled_here(spec, cfg)?;
    let what = "their images' pooled detector features".to_string();
    Ok(PooledImages {
        keys,
        feats,
        source: spec.images.clone(),
        what,
    })
}

/// The novel crops' nearest neighbours, when `training.neighbor_views` asks for neighbour views:
/// by `tokens` (the pretrained class tokens of `tokens.novel_items`), or by their images'
/// pooled features (`training.neighbor_features`: `pooled`, [`pooled_images`]), which need no
/// `tokens`.
pub(super) fn neighbour_views(
    cfg: &Config,
    set: &CropSet,
    tokens: Option<&SetTokens>,
    pooled: Option<&PooledImages>,
) -> Result<Option<NeighbourViews>> {
    let t = &cfg.training;
    if t.neighbor_views <= 0.0 {
        return Ok(None);
    }
    let own;
    let items = match tokens {
        Some(tokens) => &tokens.novel_items,
        None => {
            own = set.novel_indices();
            &own
        }
    };
    let (rows, by) = match (&t.neighbor_features, pooled) {
        (Some(_), Some(p)) => (crops_rows(p, set, items)?, p.what.as_str()),
        (Some(_), None) => {
            return Err(Error::runtime(
                "neighbour views by pooled features need the images' pooled features",
            ))
        }
        (None, _) => (
            tokens
                .ok_or_else(|| {
                    Error::runtime("neighbour views by the class tokens need the pretrained tokens")
                })?
                .novel
                .clone(),
            "the pretrained class tokens",
        ),
    };
    let near = crate::cluster::spectral::cosine_neighbours(rows.view(), t.neighbor_count);
    let mut of = vec![Vec::new(); set.items.len()];
    for (row, list) in near.into_iter().enumerate() {
        of[items[row]] = list.into_iter().map(|j| items[j]).collect();
    }
    log::info!(
        "neighbour views: {:.0} % of the novel samples pair a view with one of their {} nearest \
         crops' (by {by})",
        t.neighbor_views * 100.0,
        t.neighbor_count
    );
    Ok(Some(NeighbourViews::new(t.neighbor_views, of)?))
}

/// The rows of `pooled` for the images of `preds`, in its order (`inference.spectral_graph`).
pub(super) fn image_rows(pooled: &PooledImages, preds: &Predictions) -> Result<Array2<f32>> {
    pooled.rows(
        preds
            .images
            .iter()
            .map(|img| (img.image.clone(), img.image.clone())),
    )
}

impl PooledImages {
    /// One row per `(image name, what it is named for in errors)`, in order: the row of the
    /// image's `<type>/<stem>` key; an input error naming the source and the item when the
    /// features have none.
    fn rows(&self, wanted: impl ExactSizeIterator<Item = (String, String)>) -> Result<Array2<f32>> {
        let index: HashMap<&str, usize> = self
            .keys
            .iter()
            .enumerate()
            .map(|(r, k)| (k.as_str(), r))
            .collect();
        let mut rows = Array2::<f32>::zeros((wanted.len(), self.feats.ncols()));
        for (r, (image, of)) in wanted.enumerate() {
            let key = image_stem_key(&image);
            let Some(&src) = index.get(key.as_str()) else {
                return Err(Error::input(
                    &self.source,
                    format!(
                        "no pooled feature for {key} (of {of}) in {}; make the features from \
                         the same images and maps with `anomalyncd baseline --method pooled \
                         --images IMAGES --anomaly-maps MAPS --out DIR`",
                        self.what
                    ),
                ));
            };
            rows.row_mut(r).assign(&self.feats.row(src));
        }
        Ok(rows)
    }
}

/// The maps folder's pooled features, when the built-in detector wrote them there
/// ([`DETECT_FEATURES_FILE`]) for every image of the crops `items`, pooled at
/// `detect.pool_tau`; `None` (logged when the files are there) otherwise.
fn detector_features(
    spec: &TrainSpec,
    cfg: &Config,
    set: &CropSet,
    items: &[usize],
) -> Option<PooledImages> {
    let maps = spec.maps.as_ref().or(spec.source_maps.as_ref())?;
    let (feats, list) = (
        maps.join(DETECT_FEATURES_FILE),
        maps.join(DETECT_IMAGES_FILE),
    );
    if !feats.is_file() {
        return None;
    }
    if !crate::detect::pooled_at(maps, cfg.detect.pool_tau) {
        let tau = crate::detect::pooled_tau(maps);
        log::info!(
            "the detector's pooled features in {} are not used (pooled at a temperature of {}, \
             detect.pool_tau is {}); computing them",
            maps.display(),
            tau.map_or("unknown".into(), |t| t.to_string()),
            cfg.detect.pool_tau
        );
        return None;
    }
    let what = format!(
        "their images' pooled features that the detector wrote in {}",
        maps.display()
    );
    let read = read_pooled(&feats, &list).map(|(keys, feats)| PooledImages {
        keys,
        feats,
        source: maps.clone(),
        what,
    });
    match read.and_then(|p| crops_rows(&p, set, items).map(|_| p)) {
        Ok(p) => Some(p),
        Err(e) => {
            log::info!("the detector's pooled features are not used ({e}); computing them");
            None
        }
    }
}

/// The pooled features of the run's defective images under their maps (when the detector wrote
/// none): one pass of the detector backbone at the detector's input side
/// (`detect.image_size`), keyed `<type>/<stem>`.
fn pooled_here(spec: &TrainSpec, cfg: &Config) -> Result<(Vec<String>, Array2<f32>)> {
    let Some(maps) = spec.maps.as_ref().or(spec.source_maps.as_ref()) else {
        return Err(Error::usage(
            "the images' pooled detector features (training.neighbor_features: pooled, \
             inference.spectral_graph: trained_and_pooled) are made from their anomaly maps: \
             give them (not --skip-binarize), set training.neighbor_features to a `baseline \
             --method pooled` folder, or set inference.spectral_graph: trained",
        ));
    };
    let items: Vec<MapItem> = pair_folders(maps, &spec.images, &spec.pairing)?
        .into_iter()
        .filter(|it| !it.normal)
        .collect();
    let weights = default_dinov2_weights(
        "set training.neighbor_features to the folder of a `baseline --method pooled` run",
    )?;
    let size = crate::detect::resolve_image_size_of(
        cfg.detect.image_size,
        &spec.images,
        "--dataset-path",
        "detect.image_size",
    )?;
    log::info!(
        "pooled detector features of {} images at {size} px",
        items.len()
    );
    let feats = image_features(
        &items,
        &weights,
        cfg.models.precision,
        size,
        Pooling::Soft {
            tau: cfg.detect.pool_tau,
        },
        spec.device,
    )?;
    let keys = items
        .iter()
        .map(|it| image_stem_key(&format!("{}/{}", it.class_name, it.stem)))
        .collect();
    Ok((keys, feats))
}

/// `<type>/<stem>` of an image or crop name, without extension or a leading `/` (a flat
/// folder's images have no type).
fn image_stem_key(name: &str) -> String {
    let p = Path::new(name.trim_start_matches('/'));
    p.with_extension("").to_string_lossy().into_owned()
}

/// The rows of `pooled` for the crops `items` of `set`: each crop gets its image's row (crops
/// name their image as [`crate::infer::merge::image_key`] reads it).
fn crops_rows(pooled: &PooledImages, set: &CropSet, items: &[usize]) -> Result<Array2<f32>> {
    pooled.rows(items.iter().map(|&i| {
        let id = &set.items[i].id;
        (
            crate::infer::merge::image_key(Path::new(id)),
            format!("crop {id}"),
        )
    }))
}

/// The image keys (the `image` column of `csv_path`) and the features (one row each, in
/// `feats_path`) of a `baseline --method pooled` output folder or of the detector's maps folder.
fn read_pooled(feats_path: &Path, csv_path: &Path) -> Result<(Vec<String>, Array2<f32>)> {
    let bad = |path: &Path, what: String| {
        Error::input(
            path,
            format!(
                "training.neighbor_features: {what}; give the output folder of `anomalyncd \
                 baseline --method pooled`"
            ),
        )
    };
    let feats = crate::cluster::features::load_tokens(feats_path)
        .map_err(|e| bad(feats_path, e.to_string()))?;
    let mut reader = csv::Reader::from_path(csv_path).map_err(|e| bad(csv_path, e.to_string()))?;
    let column = reader
        .headers()
        .map_err(|e| bad(csv_path, e.to_string()))?
        .iter()
        .position(|h| h == "image")
        .ok_or_else(|| bad(csv_path, "no `image` column".into()))?;
    let mut keys = Vec::new();
    for rec in reader.records() {
        let rec = rec.map_err(|e| bad(csv_path, e.to_string()))?;
        keys.push(image_stem_key(rec.get(column).unwrap_or_default()));
    }
    if keys.len() != feats.nrows() {
        return Err(bad(
            feats_path,
            format!(
                "{} rows for the {} images of {}",
                feats.nrows(),
                keys.len(),
                csv_path.display()
            ),
        ));
    }
    Ok((keys, feats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_keys_drop_the_extension_and_a_flat_folders_slash() {
        assert_eq!(
            image_stem_key("MT_Crack/exp3_num_42.png"),
            "MT_Crack/exp3_num_42"
        );
        assert_eq!(
            image_stem_key("MT_Crack/exp3_num_42"),
            "MT_Crack/exp3_num_42"
        );
        assert_eq!(image_stem_key("/a.b_1"), "a");
        let crop = crate::infer::merge::image_key(Path::new("MT_Crack/exp3_num_42_crop1.png"));
        assert_eq!(image_stem_key(&crop), "MT_Crack/exp3_num_42");
    }

    #[test]
    fn a_pooled_folder_is_read_and_bad_ones_name_the_file() {
        let d = tempfile::tempdir().unwrap();
        let feats = ndarray::array![[1.0f32, 0.0], [0.0, 1.0], [0.6, 0.8]];
        crate::cluster::features::save_tokens(&d.path().join(POOLED_FEATURES), feats.view())
            .unwrap();
        let csv = "image,type,cluster\nhole/a,hole,0\ncrack/b,crack,1\n/flat,,0\n";
        std::fs::write(d.path().join(POOLED_IMAGES), csv).unwrap();
        let read = || {
            read_pooled(
                &d.path().join(POOLED_FEATURES),
                &d.path().join(POOLED_IMAGES),
            )
        };
        let (keys, got) = read().unwrap();
        assert_eq!(keys, ["hole/a", "crack/b", "flat"]);
        assert_eq!(got, feats);
        // One image fewer than rows.
        std::fs::write(
            d.path().join(POOLED_IMAGES),
            "image,type,cluster\nhole/a,hole,0\n",
        )
        .unwrap();
        let e = read().unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("3 rows for the 1 images"), "{e}");
        std::fs::remove_file(d.path().join(POOLED_FEATURES)).unwrap();
        let e = read().unwrap_err();
        assert!(
            e.to_string().contains(POOLED_FEATURES) && e.exit_code() == 2,
            "{e}"
        );
    }
}
