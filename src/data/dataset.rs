//! Crop sets: the labelled base crops (`prepare-base` output) and the unlabelled novel crops
//! (`binarize` output), listed in the reference's order: base classes first (sorted names, files
//! sorted), then novel types (sorted). Class indices follow that order, so the projector's first
//! outputs are the base classes.
//!
//! Layouts:
//! - base: `BASE/images/<class>/<name>.<ext>` with `BASE/masks/<class>/<name>.<ext>` (paired by
//!   stem, extensions may differ);
//! - novel: `CROPS/images/<type>/<stem>_crop<k>.png` with `CROPS/masks/<type>/…` (same stem), or a
//!   flat `CROPS/images/*.png` whose types are unknown; scores in `scores.json` as
//!   `{type: {file name: score}}` (a flat `{file name: score}` is read too).

use std::path::{Path, PathBuf};

use image::{GrayImage, RgbImage};

use crate::config::GuidanceMode;
use crate::error::{Error, Result};

use crate::imageio::{self, TypedFile, IMAGE_EXTENSIONS};

/// One crop and its mask.
#[derive(Debug, Clone, PartialEq)]
pub struct CropItem {
    pub image: PathBuf,
    pub mask: PathBuf,
    /// Class index (base classes first, then novel types); `None` for novel crops of a flat
    /// folder. For novel crops it is the true type, for evaluation only: training must not use it.
    pub label: Option<usize>,
    /// True for base crops (their label may be used in training).
    pub labelled: bool,
    /// Anomaly score of the crop in the binarize run (`scores.json`); 1.0 for base crops.
    pub score: f32,
    /// `<class or type>/<file name>` (the file name alone for flat novel crops), for reports.
    pub id: String,
    /// The crop's grey-level anomaly map when it guides the model instead of `mask` (soft
    /// guidance, `crops/maps/`).
    pub map: Option<PathBuf>,
    /// The map counts only inside `mask` (0 outside; `models.guidance: soft_masked`).
    pub map_within_mask: bool,
}

/// Where the novel crops and their scores are.
#[derive(Debug, Clone, PartialEq)]
pub struct NovelSource {
    pub images: PathBuf,
    pub masks: PathBuf,
    pub scores: PathBuf,
    /// The crops' anomaly maps (same file names as the crops), and how the crops guide the
    /// model (`models.guidance`: the masks, or the maps).
    pub maps: PathBuf,
    pub guidance: GuidanceMode,
}

impl NovelSource {
    /// The layout `anomalyncd binarize --out OUT` writes: `OUT/crops/{images,masks,maps}`,
    /// `OUT/scores.json`; the masks guide the model.
    pub fn from_binarize_out(out: &Path) -> Self {
        let crops = out.join("crops");
        Self {
            images: crops.join("images"),
            masks: crops.join("masks"),
            scores: out.join("scores.json"),
            maps: crops.join("maps"),
            guidance: GuidanceMode::Hard,
        }
    }

    /// The same crops guided as `models.guidance` says.
    pub fn with_guidance(self, guidance: GuidanceMode) -> Self {
        Self { guidance, ..self }
    }
}

/// Base and novel crops of one training run.
#[derive(Debug, Clone, PartialEq)]
pub struct CropSet {
    /// Base crops first (class by class), then novel crops (type by type, or the flat folder).
    pub items: Vec<CropItem>,
    pub base_classes: Vec<String>,
    /// Novel type folders (sorted); empty for a flat novel folder.
    pub novel_types: Vec<String>,
    /// Clusters the novel crops are split into (the projector has
    /// `base_classes.len() + num_novel_clusters` outputs).
    pub num_novel_clusters: usize,
}

impl CropSet {
    /// Lists the base and novel crops and reads the novel scores. `num_novel_clusters` defaults
    /// to the number of novel type folders; it must be given for a flat novel folder. Without a
    /// base folder the set holds only the novel crops (training without the supervised terms).
    pub fn load(
        base: Option<&Path>,
        novel: &NovelSource,
        num_novel_clusters: Option<usize>,
    ) -> Result<Self> {
        let (base_classes, mut items) = match base {
            Some(base) => load_base(base)?,
            None => (Vec::new(), Vec::new()),
        };
        let (novel_types, novel_items) = load_novel(novel, base_classes.len())?;
        let num_novel_clusters = match num_novel_clusters {
            Some(0) => return Err(Error::usage("the number of novel clusters must be at least 1")),
            // More clusters than crops cannot be filled, and a huge count would size the model.
            Some(n) if n > novel_items.len() => {
                return Err(Error::usage(format!(
                    "--num-classes {n}: more novel clusters than novel crops ({}); give at most {}",
                    novel_items.len(),
                    novel_items.len()
                )))
            }
            Some(n) => n,
            None if novel_types.is_empty() => {
                return Err(Error::usage(format!(
                    "{}: the novel crops have no type folders, so the number of novel clusters is unknown; give it (--num-classes N)",
                    novel.images.display()
                )))
            }
            None => novel_types.len(),
        };
        items.extend(novel_items);
        Ok(Self {
            items,
            base_classes,
            novel_types,
            num_novel_clusters,
        })
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn num_base_classes(&self) -> usize {
        self.base_classes.len()
    }

    /// Outputs of the classifier: base classes plus novel clusters.
    pub fn num_classes(&self) -> usize {
        self.base_classes.len() + self.num_novel_clusters
    }

    /// Whether the novel crops carry their true type (type folders), for evaluation.
    pub fn novel_labels_known(&self) -> bool {
        !self.novel_types.is_empty()
    }

    pub fn labelled_flags(&self) -> Vec<bool> {
        self.items.iter().map(|i| i.labelled).collect()
    }

    pub fn base_indices(&self) -> Vec<usize> {
        (0..self.items.len())
            .filter(|&i| self.items[i].labelled)
            .collect()
    }

    /// The unlabelled crops: the reference's test set.
    pub fn novel_indices(&self) -> Vec<usize> {
        (0..self.items.len())
            .filter(|&i| !self.items[i].labelled)
            .collect()
    }
}

fn stem_of(name: &str) -> &str {
    Path::new(name)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(name)
}

/// Sorted sub-folders and image files of `dir`, under [`crate::imageio::read_folder`]'s rules.
fn list_dir(dir: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let f = crate::imageio::read_folder(dir, IMAGE_EXTENSIONS)?;
    for p in &f.skipped {
        log::debug!("{}: not an image, skipped", p.display());
    }
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    let mut files: Vec<String> = f.files.iter().filter_map(|t| name(&t.path)).collect();
    // By file name, as the crop order has always been (not by stem: `a-b.png` < `a.png`).
    files.sort();
    Ok((f.dirs.into_iter().map(|(n, _)| n).collect(), files))
}

/// The crops `files` of `img_dir` with their masks in `mask_dir` (same stem, any image
/// extension); a missing folder or mask is an error naming it.
fn pair_masks(
    img_dir: &Path,
    mask_dir: &Path,
    files: &[String],
    what: &str,
) -> Result<Vec<(PathBuf, PathBuf)>> {
    if !mask_dir.is_dir() {
        return Err(Error::input(
            mask_dir,
            format!(
                "missing: the masks of {what} (every crop needs a mask with the same file name)"
            ),
        ));
    }
    let typed = |dir: &Path, names: &[String]| -> Vec<TypedFile> {
        names
            .iter()
            .map(|f| TypedFile {
                type_name: String::new(),
                stem: stem_of(f).to_string(),
                path: dir.join(f),
            })
            .collect()
    };
    let crops = typed(img_dir, files);
    let masks = typed(mask_dir, &list_dir(mask_dir)?.1);
    let paired = imageio::pair_masks(&crops, &masks, |_| false).or_error(|missing| {
        Error::input(
            &missing[0].path,
            format!(
                "no mask for this crop in {} (expected {}.<png|jpg|bmp|tif>); add it or remove the crop",
                mask_dir.display(),
                missing[0].stem
            ),
        )
    })?;
    Ok(crops
        .into_iter()
        .zip(paired)
        .filter_map(|(c, m)| Some((c.path, m?)))
        .collect())
}

/// Base classes (sorted) and their crops, labelled 0.. in that order.
pub fn load_base(base: &Path) -> Result<(Vec<String>, Vec<CropItem>)> {
    let images = base.join("images");
    let masks = base.join("masks");
    let hint = "expected images/<class>/ and masks/<class>/ (run `anomalyncd prepare-base`)";
    if !images.is_dir() {
        return Err(Error::input(
            base,
            format!("no base data: {} is missing; {hint}", images.display()),
        ));
    }
    let (classes, loose) = list_dir(&images)?;
    if !loose.is_empty() {
        return Err(Error::input(
            images.join(&loose[0]),
            format!("base crops must sit in class folders; {hint}"),
        ));
    }
    if classes.is_empty() {
        return Err(Error::input(
            &images,
            format!("no base data: no class folders; {hint}"),
        ));
    }
    let mut items = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let dir = images.join(class);
        let (_, files) = list_dir(&dir)?;
        if files.is_empty() {
            return Err(Error::input(
                &dir,
                "base class folder without images; add crops or remove it",
            ));
        }
        for (image, mask) in pair_masks(
            &dir,
            &masks.join(class),
            &files,
            &format!("base class {class}"),
        )? {
            let file = image
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            items.push(CropItem {
                image,
                mask,
                label: Some(label),
                labelled: true,
                score: 1.0,
                id: format!("{class}/{file}"),
                map: None,
                map_within_mask: false,
            });
        }
    }
    Ok((classes, items))
}

/// The crop scores of `scores.json`: `{type: {file: score}}`, or `{file: score}` for flat crops.
struct Scores {
    path: PathBuf,
    value: serde_json::Value,
}

impl Scores {
    fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::input(
                path,
                format!("cannot read the crop anomaly scores ({e}); they are written by `anomalyncd binarize`"),
            )
        })?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::input(path, format!("not valid JSON: {e}")))?;
        if !value.is_object() {
            return Err(Error::input(
                path,
                "expected an object {type: {file: score}}",
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            value,
        })
    }

    fn get(&self, kind: Option<&str>, file: &str) -> Result<f32> {
        let top = &self.value;
        let found = match kind {
            Some(t) => top.get(t).and_then(|m| m.get(file)),
            // A flat set: the file at the top level, or under whichever type map holds it.
            None => top.get(file).filter(|v| v.is_number()).or_else(|| {
                top.as_object().and_then(|o| {
                    o.values()
                        .find_map(|m| m.get(file).filter(|v| v.is_number()))
                })
            }),
        };
        let id = kind
            .map(|t| format!("{t}/{file}"))
            .unwrap_or_else(|| file.to_string());
        match found.and_then(|v| v.as_f64()) {
            Some(s) if s.is_finite() => Ok(s as f32),
            Some(s) => Err(Error::input(&self.path, format!("score of {id} is {s}; expected a finite number"))),
            None => Err(Error::input(
                &self.path,
                format!("no score for crop {id}; the crops and scores.json come from different binarize runs? run binarize again"),
            )),
        }
    }
}

/// Novel types (sorted; empty for a flat folder) and their crops, labelled `first_label..` by
/// type when the types are known.
pub fn load_novel(src: &NovelSource, first_label: usize) -> Result<(Vec<String>, Vec<CropItem>)> {
    let hint = "run `anomalyncd binarize` first";
    if !src.images.is_dir() {
        return Err(Error::input(
            &src.images,
            format!("no novel crops: the folder is missing; {hint}"),
        ));
    }
    let (types, loose) = list_dir(&src.images)?;
    if !types.is_empty() && !loose.is_empty() {
        return Err(Error::input(
            &src.images,
            "mixes crop files and type folders; keep either type folders or a flat folder of crops",
        ));
    }
    if types.is_empty() && loose.is_empty() {
        return Err(Error::input(
            &src.images,
            format!("no novel crops in this folder; {hint}"),
        ));
    }
    let scores = Scores::read(&src.scores)?;
    if src.guidance.uses_maps() && !src.maps.is_dir() {
        return Err(Error::input(
            &src.maps,
            "no per-crop anomaly maps: models.guidance=soft reads the maps `anomalyncd \
                 binarize` writes beside the crops (crops/maps/); run binarize again with this \
                 version, or set models.guidance=hard",
        ));
    }
    let mut items = Vec::new();
    let mut push = |image: PathBuf,
                    mask: PathBuf,
                    map: Option<PathBuf>,
                    kind: Option<(usize, &str)>|
     -> Result<()> {
        let file = image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let score = scores.get(kind.map(|k| k.1), &file)?;
        items.push(CropItem {
            image,
            mask,
            label: kind.map(|k| first_label + k.0),
            labelled: false,
            score,
            id: kind.map(|k| format!("{}/{file}", k.1)).unwrap_or(file),
            map,
            map_within_mask: src.guidance == GuidanceMode::SoftMasked,
        });
        Ok(())
    };
    if types.is_empty() {
        for (image, mask) in pair_masks(&src.images, &src.masks, &loose, "the novel crops")? {
            let map = crop_map(src, None, &image)?;
            push(image, mask, map, None)?;
        }
    }
    for (j, t) in types.iter().enumerate() {
        let dir = src.images.join(t);
        let (_, files) = list_dir(&dir)?;
        if files.is_empty() {
            return Err(Error::input(
                &dir,
                "novel type folder without crops; remove it",
            ));
        }
        for (image, mask) in
            pair_masks(&dir, &src.masks.join(t), &files, &format!("novel type {t}"))?
        {
            let map = crop_map(src, Some(t), &image)?;
            push(image, mask, map, Some((j, t)))?;
        }
    }
    Ok((types, items))
}

/// The map of crop `image` (type folder `kind`) when the maps guide the model: the PNG of the
/// same name under `src.maps`.
fn crop_map(src: &NovelSource, kind: Option<&str>, image: &Path) -> Result<Option<PathBuf>> {
    if !src.guidance.uses_maps() {
        return Ok(None);
    }
    let dir = kind.map_or(src.maps.clone(), |t| src.maps.join(t));
    let stem = image.file_stem().unwrap_or_default().to_string_lossy();
    let map = dir.join(format!("{stem}.png"));
    if !map.is_file() {
        return Err(Error::input(
            &map,
            "missing: models.guidance=soft needs every crop's anomaly map (binarize writes them \
             under crops/maps/); run binarize again, or set models.guidance=hard",
        ));
    }
    Ok(Some(map))
}

/// Decodes a crop as RGB and its mask as 0/255 at the image's size. A mask is foreground where it
/// is at least 128 (0/255 masks), or above 0 when its largest value is 1 (0/1 masks). When the
/// item has a map, the map is read in the mask's place and keeps its grey levels. A mask of another size is resized to the image with
/// nearest neighbour, as the reference resizes both to the same side independently.
pub fn decode_pair(item: &CropItem) -> Result<(RgbImage, GrayImage)> {
    let open = |p: &Path| {
        image::open(p).map_err(|e| {
            Error::input(
                p,
                format!(
                    "cannot read image ({e}); replace the file or remove the crop and its mask"
                ),
            )
        })
    };
    let image = open(&item.image)?.to_rgb8();
    let binary = |mut mask: GrayImage| {
        let max = mask.pixels().map(|p| p[0]).max().unwrap_or(0);
        let cut = if max <= 1 { 1 } else { 128 };
        for p in mask.pixels_mut() {
            p[0] = 255 * u8::from(p[0] >= cut);
        }
        mask
    };
    let mut mask = match &item.map {
        None => binary(open(&item.mask)?.to_luma8()),
        Some(map) => {
            let mut map = open(map)?.to_luma8();
            if item.map_within_mask {
                let mut m = binary(open(&item.mask)?.to_luma8());
                if m.dimensions() != map.dimensions() {
                    m = image::imageops::resize(
                        &m,
                        map.width(),
                        map.height(),
                        image::imageops::FilterType::Nearest,
                    );
                }
                for (v, k) in map.pixels_mut().zip(m.pixels()) {
                    if k[0] == 0 {
                        v[0] = 0;
                    }
                }
            }
            map
        }
    };
    if mask.dimensions() != image.dimensions() {
        mask = image::imageops::resize(
            &mask,
            image.width(),
            image.height(),
            image::imageops::FilterType::Nearest,
        );
    }
    Ok((image, mask))
}

#[cfg(test)]
#[path = "dataset_tests.rs"]
mod tests;
