//! MEBin over folders: pair `MAPS/<type>/<stem>` with `IMAGES/<type>/<stem>.*` by stem, prepare
//! the output folder and run the [`BinarizeJob`]. Shared by `binarize` and `train`.

use std::path::{Path, PathBuf};

use super::crop::CropRule;
use super::job::{BinarizeJob, BinarizeSummary, MapItem, RangeSource, SUMMARY_FILE};
use super::Params;
use crate::config::Binarization;
use crate::error::{Error, Result};
use crate::fsutil::prepare_output_dir;
use crate::imageio::{self, describe_files, ANOMALY_MAP_EXTENSIONS, IMAGE_EXTENSIONS};

/// The type folder that always holds normal images' maps.
pub use crate::imageio::NORMAL_TYPE;

/// How to pair maps with images.
#[derive(Debug, Clone, Default)]
pub struct Pairing {
    /// Skip unpaired files with a warning instead of failing.
    pub skip_unpaired: bool,
    /// Ignore image type folders that have no map folder at all (MVTec's `test/good`, as the
    /// reference takes its types from the maps).
    pub only_map_types: bool,
    /// Type folders of normal images besides `good` (`--normal-type`): their maps set the
    /// search range only, and need no image.
    pub normal_types: Vec<String>,
}

impl Pairing {
    /// Whether `type_name` holds normal images: [`imageio::is_normal`], or one of `normal_types`.
    pub fn is_normal(&self, type_name: &str) -> bool {
        imageio::is_normal(type_name) || self.normal_types.iter().any(|t| t == type_name)
    }
}

/// Pairs every map with its image by `<type>/<stem>`; unpaired files are an error listing the
/// first few, unless `skip_unpaired`.
pub fn pair_folders(maps: &Path, images: &Path, how: &Pairing) -> Result<Vec<MapItem>> {
    let map_files = imageio::list_files(maps, ANOMALY_MAP_EXTENSIONS)?;
    if map_files.is_empty() {
        return Err(Error::input(
            maps,
            "no anomaly maps found (expected MAPS/<type>/<stem>.<png|tif|npy>)",
        ));
    }
    let mut image_files = imageio::list_files(images, IMAGE_EXTENSIONS)?;
    if how.only_map_types {
        image_files.retain(|f| map_files.iter().any(|m| m.type_name == f.type_name));
    }
    // Normal images are not cropped: their maps need no image, their images no map.
    image_files.retain(|f| !how.is_normal(&f.type_name));
    let (normal_maps, map_files): (Vec<_>, Vec<_>) = map_files
        .into_iter()
        .partition(|m| how.is_normal(&m.type_name));
    if map_files.is_empty() {
        let mut types: Vec<&str> = normal_maps.iter().map(|m| m.type_name.as_str()).collect();
        types.dedup();
        return Err(Error::input(
            maps,
            format!(
                "only normal-image maps ({} in type folders {}): nothing to crop; add the defective \
                 images' maps (MAPS/<type>/), or do not name a defect type with --normal-type",
                normal_maps.len(),
                types.join(", ")
            ),
        ));
    }
    if image_files.is_empty() {
        return Err(Error::input(
            images,
            "no images found (expected IMAGES/<type>/<stem>.<png|jpg|bmp|tif>)",
        ));
    }
    let p = imageio::pair_by_stem(map_files, image_files);
    if !p.left_only.is_empty() || !p.right_only.is_empty() {
        let mut parts = Vec::new();
        if !p.left_only.is_empty() {
            parts.push(format!(
                "maps without an image: {}",
                describe_files(&p.left_only, maps, 5)
            ));
        }
        if !p.right_only.is_empty() {
            parts.push(format!(
                "images without a map: {}",
                describe_files(&p.right_only, images, 5)
            ));
        }
        let msg = parts.join("; ");
        if !how.skip_unpaired {
            return Err(Error::usage(format!(
                "maps and images do not pair up by <type>/<stem>: {msg}; fix the names or pass --skip-unpaired"
            )));
        }
        log::warn!("skipping unpaired files: {msg}");
    }
    if p.pairs.is_empty() {
        return Err(Error::usage(
            "no map has an image with the same <type>/<stem>; nothing to binarize",
        ));
    }
    let normal = normal_maps.into_iter().map(|m| MapItem {
        class_name: m.type_name,
        stem: m.stem,
        map: m.path,
        image: std::path::PathBuf::new(),
        normal: true,
    });
    let mut items: Vec<MapItem> = p
        .pairs
        .into_iter()
        .map(|(m, i)| MapItem {
            class_name: m.type_name,
            stem: m.stem,
            map: m.path,
            image: i.path,
            normal: false,
        })
        .chain(normal)
        .collect();
    items.sort_by(|a, b| (&a.class_name, &a.stem).cmp(&(&b.class_name, &b.stem)));
    Ok(items)
}

/// A validated request to binarize a folder of maps: what [`super::run`] takes. The commands
/// turn their flags into it; `train`, `test`, `predict` and `baseline` build one too.
#[derive(Debug, Clone)]
pub struct BinarizeSpec {
    /// `MAPS/<type>/<stem>.<png|tif|npy>` or a flat folder.
    pub maps: PathBuf,
    /// `IMAGES/<type>/<stem>.<ext>`, paired with the maps by stem.
    pub images: PathBuf,
    /// The output folder: `binary/`, `crops/`, `scores.json`, `mebin.json`.
    pub out: PathBuf,
    pub binarization: Binarization,
    pub range: RangeSource,
    pub pairing: Pairing,
    /// Replace the files of a different earlier run in `out`.
    pub overwrite: bool,
}

impl BinarizeSpec {
    /// A request with the reference's search range over these maps (`binarization.min_threshold`
    /// replacing the smallest maximum when set).
    pub fn from_maps(
        maps: &Path,
        images: &Path,
        out: &Path,
        binarization: &Binarization,
        pairing: Pairing,
        overwrite: bool,
    ) -> Self {
        Self {
            maps: maps.to_path_buf(),
            images: images.to_path_buf(),
            out: out.to_path_buf(),
            binarization: binarization.clone(),
            range: RangeSource::FromMaps {
                min_threshold: binarization.min_threshold,
            },
            pairing,
            overwrite,
        }
    }
}

/// The fingerprint of a binarize output folder: the input folders and what decides the outputs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BinarizeFingerprint {
    pub anomaly_maps: crate::fingerprint::AbsPath,
    pub images: crate::fingerprint::AbsPath,
    pub binarization: Binarization,
    /// [`RangeSource`]'s `Debug` text, the form the markers have held from the start.
    pub range: String,
    /// Only decides whether unpaired files are an error; kept, as the markers hold it.
    pub skip_unpaired: bool,
    /// Left out when empty, as the markers written before the option had none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub normal_types: Vec<String>,
}

impl BinarizeSpec {
    /// The fingerprint of this run's output folder (see [`BinarizeFingerprint`]).
    pub fn fingerprint(&self) -> BinarizeFingerprint {
        // Exhaustive on purpose: each field is either recorded or has a reason not to be.
        let BinarizeSpec {
            maps,
            images,
            binarization,
            range,
            pairing,
            // Where the outputs go, and whether an earlier run's may be replaced.
            out: _,
            overwrite: _,
        } = self;
        let Pairing {
            skip_unpaired,
            normal_types,
            // Drops image folders no map names: without it those images are unpaired, an
            // error or skipped, so the outputs of a finished run are the same.
            only_map_types: _,
        } = pairing;
        BinarizeFingerprint {
            anomaly_maps: crate::fingerprint::AbsPath::new(maps),
            images: crate::fingerprint::AbsPath::new(images),
            binarization: binarization.clone(),
            range: format!("{range:?}"),
            skip_unpaired: *skip_unpaired,
            normal_types: normal_types.clone(),
        }
    }
}

/// Pairs the maps with their images, prepares the output folder and binarizes every map.
pub(super) fn binarize(spec: &BinarizeSpec) -> Result<BinarizeSummary> {
    let (maps, images, how, range) = (&spec.maps, &spec.images, &spec.pairing, spec.range);
    let items = pair_folders(maps, images, how)?;
    let fingerprint = crate::fingerprint::to_value(&spec.fingerprint());
    prepare_output_dir(
        &spec.out,
        &[("--anomaly-maps", maps), ("--images", images)],
        "binarize",
        &fingerprint,
        spec.overwrite,
    )?;
    let job = BinarizeJob {
        items: &items,
        params: Params::from(&spec.binarization),
        refine: crate::mebin::refine::MapRefine::from(&spec.binarization),
        range,
        rule: CropRule {
            no_interval: spec.binarization.no_interval,
            scale: spec.binarization.crop_scale,
            ..CropRule::default()
        },
        out: &spec.out,
        progress: true,
    };
    job.run()
}

/// Reads the `mebin.json` of an earlier binarization in `out`.
pub fn read_summary(out: &Path) -> Result<BinarizeSummary> {
    let path = out.join(SUMMARY_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::input(
            &path,
            format!("cannot read ({e}); run `anomalyncd binarize` first or drop --skip-binarize"),
        )
    })?;
    serde_json::from_str(&text)
        .map_err(|e| Error::input(&path, format!("not a binarize summary: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{NoInterval, Refine};
    use crate::fingerprint::check::{fingerprint_follows, Change};
    use crate::fsutil::absolute_value;

    fn spec() -> BinarizeSpec {
        let b = Binarization::default();
        BinarizeSpec::from_maps(
            Path::new("/d/maps"),
            Path::new("/d/images"),
            Path::new("/d/out"),
            &b,
            Pairing::default(),
            false,
        )
    }

    #[test]
    fn the_fingerprint_follows_every_setting_and_keeps_its_old_form() {
        let changes: &[Change<BinarizeSpec>] = &[
            ("maps", |s| s.maps = "/d/other".into()),
            ("images", |s| s.images = "/d/other".into()),
            ("sample_rate", |s| s.binarization.sample_rate = 2),
            ("min_interval_len", |s| s.binarization.min_interval_len = 3),
            ("erode", |s| s.binarization.erode = false),
            ("min_threshold", |s| {
                s.binarization.min_threshold = Some(9.0)
            }),
            ("no_interval", |s| {
                s.binarization.no_interval = NoInterval::WholeImage
            }),
            ("refine", |s| s.binarization.refine = Refine::Guided),
            ("refine_radius", |s| s.binarization.refine_radius = Some(4)),
            ("refine_eps", |s| s.binarization.refine_eps = 0.5),
            ("interval_position", |s| {
                s.binarization.interval_position = 0.5
            }),
            ("crop_scale", |s| s.binarization.crop_scale = 2.0),
            ("range", |s| {
                s.range = RangeSource::FromMaps {
                    min_threshold: Some(3.0),
                }
            }),
            ("skip_unpaired", |s| s.pairing.skip_unpaired = true),
            ("normal_types", |s| {
                s.pairing.normal_types = vec!["ok".into()]
            }),
        ];
        let same: &[Change<BinarizeSpec>] = &[
            ("out", |s| s.out = "/elsewhere".into()),
            ("overwrite", |s| s.overwrite = true),
            ("only_map_types", |s| s.pairing.only_map_types = true),
        ];
        fingerprint_follows(spec, BinarizeSpec::fingerprint, changes, same, &[]);
        // The JSON the markers have held.
        let mut s = spec();
        let old = |s: &BinarizeSpec| {
            serde_json::json!({
                "anomaly_maps": absolute_value(&s.maps),
                "images": absolute_value(&s.images),
                "binarization": s.binarization,
                "range": format!("{:?}", s.range),
                "skip_unpaired": s.pairing.skip_unpaired,
            })
        };
        assert_eq!(crate::fingerprint::to_value(&s.fingerprint()), old(&s));
        s.pairing.normal_types = vec!["ok".into()];
        let mut want = old(&s);
        want["normal_types"] = serde_json::json!(["ok"]);
        assert_eq!(crate::fingerprint::to_value(&s.fingerprint()), want);
    }

    #[test]
    fn mebin_json_names_the_interval_position_only_when_it_is_not_the_references() {
        let mut summary = BinarizeSummary {
            min_th: 1.0,
            max_th: 9.0,
            sample_rate: 4,
            min_interval_len: 4,
            erode: true,
            interval_position: 1.0,
            bit_depth: 8,
            normal_maps: 0,
            float_scale: None,
            records: vec![],
        };
        let reference = serde_json::to_value(&summary).unwrap();
        assert!(reference.get("interval_position").is_none());
        // the summaries of earlier versions read back with the reference's end
        let back: BinarizeSummary = serde_json::from_value(reference).unwrap();
        assert_eq!(back, summary);
        summary.interval_position = 0.5;
        let ours = serde_json::to_value(&summary).unwrap();
        assert_eq!(ours["interval_position"], 0.5);
        assert_eq!(
            serde_json::from_value::<BinarizeSummary>(ours).unwrap(),
            summary
        );
    }
}
