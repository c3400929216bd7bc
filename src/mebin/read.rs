//! The first pass over a set's maps: read every map once, check that the set is of one kind
//! (8-bit, 16-bit or float), put float maps on the set's scale and collect the per-map maxima the
//! search range comes from. Maps stay in memory for the second pass up to a byte budget.

use std::sync::atomic::{AtomicUsize, Ordering};

use std::path::PathBuf;

use rayon::prelude::*;

use super::refine::{refine_map, MapRefine};
use super::{BitDepth, GrayMap};
use crate::error::{Error, Result};
use crate::imageio::{self, FloatScale, RawMap};
use crate::logging::progress_bar;

/// One map to binarize and the original image it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapItem {
    /// Defect type (the folder name); outputs go under it.
    pub class_name: String,
    pub stem: String,
    pub map: PathBuf,
    pub image: PathBuf,
    /// A normal image's map (type folder `good` or `--normal-type`): it enters the search range
    /// and is never cropped. Its image may be missing.
    pub normal: bool,
}

/// Maps are kept in memory between the range pass and the binarize pass up to this many bytes;
/// beyond it they are read again, so memory does not grow with the number of maps (about 2000
/// maps of 256×256 fit; docs/fuzzing.md has the measurements).
const MAP_CACHE_BYTES: usize = 256 << 20;

/// What the first pass found.
pub struct ReadSet {
    /// Each item's map as levels, when it stayed in memory (never for normal maps).
    pub maps: Vec<Option<GrayMap>>,
    /// Each item's largest level (on the set's scale for float maps).
    pub maxima: Vec<u16>,
    /// The levels' depth (8 for float sets).
    pub depth: BitDepth,
    /// The float range the maps were normalised over; None for image maps.
    pub float_scale: Option<FloatScale>,
}

/// The kind of one map, for the one-kind-per-set check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Levels(BitDepth),
    Float,
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Levels(BitDepth::Eight) => "an 8-bit map",
        Kind::Levels(BitDepth::Sixteen) => "a 16-bit map",
        Kind::Float => "a float map",
    }
}

/// Reads every item's map. `stored_scale` (from training) replaces the set's own float range.
/// Each map is refined first as `refine` says ([`super::refine`]).
pub fn read_set(
    items: &[&MapItem],
    stored_scale: Option<FloatScale>,
    refine: &MapRefine,
    progress: bool,
) -> Result<ReadSet> {
    let cached = AtomicUsize::new(0);
    let pb = progress_bar(items.len(), "read maps", progress);
    // (kind, max level or (min, max) float, kept map)
    let read: Vec<(Kind, (f64, f64), Option<RawMap>)> = items
        .par_iter()
        .map(|it| {
            let raw = refine_map(imageio::read_anomaly_map(&it.map)?, &it.image, refine)?;
            let (kind, stats, bytes) = match &raw {
                RawMap::Levels(m) => (
                    Kind::Levels(m.depth),
                    (0.0, m.max() as f64),
                    m.pixels.len() * 2,
                ),
                RawMap::Float(f) => (Kind::Float, f.min_max(), f.values.len() * 8),
            };
            // Normal maps are not binarized: only their maximum is needed.
            let keep =
                !it.normal && cached.fetch_add(bytes, Ordering::Relaxed) + bytes <= MAP_CACHE_BYTES;
            pb.inc(1);
            Ok((kind, stats, keep.then_some(raw)))
        })
        .collect::<Result<_>>()?;
    pb.finish_and_clear();
    let kind = read[0].0;
    if let Some(i) = read.iter().position(|r| r.0 != kind) {
        let fix = if kind == Kind::Float || read[i].0 == Kind::Float {
            "a set must be all float maps (.npy, float TIFF) or all 8/16-bit images; export them one way"
        } else {
            "write all maps of a set at one bit depth"
        };
        return Err(Error::input(
            &items[i].map,
            format!(
                "is {} but {} is {}; {fix}",
                kind_name(read[i].0),
                items[0].map.display(),
                kind_name(kind)
            ),
        ));
    }
    let float_scale = match kind {
        Kind::Levels(_) => None,
        Kind::Float => Some(match stored_scale {
            Some(s) => s,
            None => FloatScale::over(read.iter().map(|r| r.1)).expect("a set has maps"),
        }),
    };
    let depth = match kind {
        Kind::Levels(d) => d,
        Kind::Float => BitDepth::Eight,
    };
    let mut maps = Vec::with_capacity(read.len());
    let mut maxima = Vec::with_capacity(read.len());
    for (_, (_, hi), raw) in read {
        maxima.push(match &float_scale {
            Some(s) => s.level(hi),
            None => hi as u16,
        });
        maps.push(raw.map(|r| to_levels(r, float_scale.as_ref())));
    }
    Ok(ReadSet {
        maps,
        maxima,
        depth,
        float_scale,
    })
}

/// Reads one map again (it did not stay in memory) on the set's scale.
pub fn reread(item: &MapItem, scale: Option<&FloatScale>, refine: &MapRefine) -> Result<GrayMap> {
    let raw = refine_map(imageio::read_anomaly_map(&item.map)?, &item.image, refine)?;
    Ok(to_levels(raw, scale))
}

fn to_levels(raw: RawMap, scale: Option<&FloatScale>) -> GrayMap {
    match (raw, scale) {
        (RawMap::Levels(m), _) => m,
        (RawMap::Float(f), Some(s)) => f.to_levels(s),
        // Not reached (a float set always has a scale); the map's own range is the safe answer.
        (RawMap::Float(f), None) => {
            let (min, max) = f.min_max();
            f.to_levels(&FloatScale { min, max })
        }
    }
}
