//! Localisation over folders (`anomalyncd maps-eval`): pair `MAPS/<type>/<stem>` with
//! `MASKS/<type>/<stem>` (and, for MEBin's crops, with `IMAGES/<type>/<stem>` as `binarize`
//! pairs them), measure every map and aggregate by type.
//!
//! MEBin runs with the default binarization config over the maps that have an image, as one set
//! (its search range comes from all of them, normal maps included), exactly as `binarize` would
//! run over the same folders; nothing is written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use image::GrayImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{localize_levels, mebin_touch, LocAggregator, LocReport, MapLoc, DILATION_FRACTION};
use crate::config::Binarization;
use crate::error::{Error, Result, ResultExt};
use crate::fsutil::check_outside_inputs;
use crate::imageio::{
    self, describe_files, is_normal, list_files, mask_at, pair_masks, read_map, read_mask, GrayMap,
    MAP_EXTENSIONS, NORMAL_TYPE,
};
use crate::mebin::folders::{pair_folders, Pairing};
use crate::mebin::{Params, SearchRange};

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct MapsEvalSpec {
    pub anomaly_maps: PathBuf,
    pub masks: PathBuf,
    /// Original images, for MEBin's crops; None: no crop columns.
    pub images: Option<PathBuf>,
    /// Maps without an image (and images without a map) are skipped for MEBin with a warning.
    pub skip_unpaired: bool,
    pub progress: bool,
}

/// What `maps-eval --out` writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapsEvalReport {
    /// Always "maps-eval": tells this tool's own report from any other file at `--out`.
    pub command: String,
    #[serde(with = "crate::fsutil::serde_path")]
    pub anomaly_maps: PathBuf,
    #[serde(with = "crate::fsutil::serde_path")]
    pub masks: PathBuf,
    #[serde(with = "crate::fsutil::serde_opt_path")]
    pub images: Option<PathBuf>,
    pub dilation_fraction: f64,
    /// MEBin's search range over the set (raw map levels), when it ran.
    pub search_range: Option<SearchRange>,
    pub seconds: f64,
    #[serde(flatten)]
    pub report: LocReport,
}

/// The `command` field of [`MapsEvalReport`].
pub const REPORT_COMMAND: &str = "maps-eval";

/// One map with its mask (None: a normal map without one) and image (None: no MEBin).
struct Item {
    type_name: String,
    map: PathBuf,
    mask: Option<PathBuf>,
    image: Option<PathBuf>,
}

/// Every map with its mask; a map outside `good` without a mask is an error listing them.
fn maps_with_masks(spec: &MapsEvalSpec) -> Result<Vec<Item>> {
    let maps = list_files(&spec.anomaly_maps, MAP_EXTENSIONS)?;
    if maps.is_empty() {
        return Err(Error::input(
            &spec.anomaly_maps,
            "--anomaly-maps: no anomaly maps found (expected <folder>/<type>/<stem>.png, 8- or 16-bit, \
             or a flat folder of maps)",
        ));
    }
    let masks = list_files(&spec.masks, MAP_EXTENSIONS)?;
    let masks = pair_masks(&maps, &masks, |m| is_normal(&m.type_name)).or_error(|missing| {
        Error::input(
            &missing[0].path,
            format!(
                "no ground-truth mask for this map (maps without one: {}); put a 0/255 mask at \
                 {}/<type>/<stem>.png for every map outside a `{NORMAL_TYPE}` folder, or remove the map",
                describe_files(missing, &spec.anomaly_maps, 5),
                spec.masks.display()
            ),
        )
    })?;
    let mut items: Vec<Item> = maps
        .into_iter()
        .zip(masks)
        .map(|(m, mask)| Item {
            type_name: m.type_name,
            map: m.path,
            mask,
            image: None,
        })
        .collect();
    items.sort_by(|a, b| (&a.type_name, &a.map).cmp(&(&b.type_name, &b.map)));
    Ok(items)
}

/// MEBin's search range over the maps that have an image, as `binarize` takes it.
fn search_range(items: &[Item], bin: &Binarization) -> Result<SearchRange> {
    let read: Vec<(u16, imageio::BitDepth)> = items
        .par_iter()
        .filter(|it| it.image.is_some())
        .map(|it| read_map(&it.map).map(|m| (m.max(), m.depth)))
        .collect::<Result<_>>()?;
    let with_image: Vec<&Item> = items.iter().filter(|it| it.image.is_some()).collect();
    if let Some(i) = read.iter().position(|r| r.1 != read[0].1) {
        return Err(Error::input(
            &with_image[i].map,
            format!(
                "has another bit depth than {}; write all maps of a set at one bit depth",
                with_image[0].map.display()
            ),
        ));
    }
    let maxima: Vec<u16> = read.iter().map(|r| r.0).collect();
    let range = SearchRange::from_maxima(&maxima, bin.min_threshold)?;
    if range.is_degenerate() {
        log::warn!(
            "every map has the same maximum ({}): MEBin finds no stable interval in any map",
            range.max_th
        );
    }
    Ok(range)
}

/// One map's measurements: its localisation and its pixels for the pixel metrics.
struct Measured {
    loc: Option<MapLoc>,
    scores: Vec<f32>,
    mask_at_map: GrayImage,
}

fn measure_item(it: &Item, mebin: Option<(&SearchRange, &Params)>) -> Result<Measured> {
    let map: GrayMap = read_map(&it.map)?;
    let (w, h) = (map.width as u32, map.height as u32);
    let mask = it.mask.as_deref().map(read_mask).transpose()?;
    if let (Some(mask), Some(image), Some(_)) = (&mask, &it.image, mebin) {
        let size = crate::imageio::dimensions(image)?;
        if size != mask.dimensions() {
            return Err(Error::input(
                it.mask.as_deref().unwrap_or(&it.map),
                format!(
                    "is {}x{} but its image {} is {}x{}; masks must have their image's size",
                    mask.width(),
                    mask.height(),
                    image.display(),
                    size.0,
                    size.1
                ),
            ));
        }
    }
    let mut loc = None;
    if let (Some(mask), false) = (&mask, is_normal(&it.type_name)) {
        loc = localize_levels(&map, mask);
        if let (Some(l), Some(_), Some((range, params))) = (&mut loc, &it.image, mebin) {
            l.crops = Some(mebin_touch(&map, range, params, mask));
        }
    }
    let mask_at_map = mask_at(mask, w, h);
    Ok(Measured {
        loc,
        scores: map.pixels.iter().map(|&v| v as f32).collect(),
        mask_at_map,
    })
}

/// Maps measured in parallel per chunk, so only a chunk's pixels wait beside the aggregator's.
const CHUNK: usize = 64;

/// The maps-eval stage: checks the folders and the report file, evaluates, and writes the
/// report as JSON to `out` when given (only a new file or an earlier report of this command).
pub fn run(spec: &MapsEvalSpec, out: Option<&Path>) -> Result<MapsEvalReport> {
    check_folder("--anomaly-maps", &spec.anomaly_maps, "anomaly maps")?;
    check_folder("--masks", &spec.masks, "ground-truth masks")?;
    let mut inputs = vec![
        ("--anomaly-maps", spec.anomaly_maps.as_path()),
        ("--masks", spec.masks.as_path()),
    ];
    if let Some(images) = &spec.images {
        check_folder("--images", images, "original images")?;
        inputs.push(("--images", images.as_path()));
    }
    if let Some(out) = out {
        check_out(out, &inputs)?;
    }
    let r = evaluate_folders(spec)
        .with_context(|| format!("evaluating the maps in {}", spec.anomaly_maps.display()))?;
    if let Some(out) = out {
        let body = serde_json::to_vec_pretty(&r).expect("report serialises");
        crate::fsutil::atomic_write(out, &body)?;
        log::info!("results in {}", out.display());
    }
    Ok(r)
}

fn check_folder(flag: &str, p: &Path, what: &str) -> Result<()> {
    if p.is_dir() {
        Ok(())
    } else {
        Err(Error::input(
            p,
            format!("{flag}: not a folder; give the folder of {what}"),
        ))
    }
}

/// `--out` must be a file outside the inputs, and an existing file there must be an earlier
/// report of this command: the tool replaces only what it wrote.
fn check_out(out: &Path, inputs: &[(&str, &Path)]) -> Result<()> {
    check_outside_inputs(out, inputs, "report")?;
    if out.is_dir() {
        return Err(Error::usage(format!(
            "--out {}: is a folder; give a file name, e.g. {}",
            out.display(),
            out.join("maps_eval.json").display()
        )));
    }
    if out.exists() {
        let ours = std::fs::read_to_string(out)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v["command"] == REPORT_COMMAND);
        if !ours {
            return Err(Error::usage(format!(
                "--out {}: exists and is not a maps-eval report; choose another file or remove it",
                out.display()
            )));
        }
    }
    Ok(())
}

/// Evaluates a folder of maps; see the module doc.
pub fn evaluate_folders(spec: &MapsEvalSpec) -> Result<MapsEvalReport> {
    let start = Instant::now();
    let mut items = maps_with_masks(spec)?;
    let bin = Binarization::default();
    let params = Params::from(&bin);
    let range = match &spec.images {
        Some(images) => {
            let how = Pairing {
                skip_unpaired: spec.skip_unpaired,
                only_map_types: true,
                normal_types: Vec::new(),
            };
            let with_image: HashMap<PathBuf, PathBuf> =
                pair_folders(&spec.anomaly_maps, images, &how)?
                    .into_iter()
                    .map(|m| (m.map, m.image))
                    .collect();
            for it in &mut items {
                it.image = with_image.get(&it.map).cloned();
            }
            Some(search_range(&items, &bin)?)
        }
        None => None,
    };
    let mebin = range.as_ref().map(|r| (r, &params));
    let pb = crate::logging::progress_bar(items.len(), "maps-eval", spec.progress);
    let mut agg = LocAggregator::default();
    for chunk in items.chunks(CHUNK) {
        let measured: Vec<Measured> = chunk
            .par_iter()
            .map(|it| {
                let m = measure_item(it, mebin);
                pb.inc(1);
                m
            })
            .collect::<Result<_>>()?;
        for (it, m) in chunk.iter().zip(measured) {
            agg.add(&it.type_name, m.loc.as_ref());
            agg.add_pixels(&it.type_name, &m.scores, &m.mask_at_map);
        }
    }
    pb.finish_and_clear();
    let report = agg.finish();
    Ok(MapsEvalReport {
        command: REPORT_COMMAND.to_string(),
        anomaly_maps: spec.anomaly_maps.clone(),
        masks: spec.masks.clone(),
        images: spec.images.clone(),
        dilation_fraction: DILATION_FRACTION,
        search_range: range,
        seconds: start.elapsed().as_secs_f64(),
        report,
    })
}
