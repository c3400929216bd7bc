//! Converts the original Magnetic-Tile-Defect dataset (Huang et al.; public repository
//! abin24/Magnetic-tile-defect-datasets.) to the MVTec AD layout the pipeline reads, as the
//! reference's `datasets/mtd_preprocess.py` does:
//!
//! - input: `RAW/MT_<Type>/Imgs/<stem>.jpg` with the mask `<stem>.png` (0/255) beside it;
//! - `OUT/train/MT_Free/`: the normal tiles named in a train list (one file name a line, the
//!   reference uses DifferNet's `mtd_train_filenames.txt`), or without a list a seeded random 80 %;
//! - `OUT/test/good/`: the other normal tiles (the reference leaves them in `test/MT_Free`; we use
//!   MVTec's `good`, which `detect` treats as normal and `train` ignores);
//! - `OUT/test/MT_<Type>/` and `OUT/ground_truth/MT_<Type>/<stem>.png` for each defect type.
//!
//! Files are copied byte for byte (JPEGs are not re-encoded), each written atomically; the inputs
//! are never modified. `OUT/prepare_mtd.json` records the split and the files written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{atomic_write, prepare_output_dir, StageOutput, StageSummary};
use crate::imageio::read_folder;

/// The folder of normal tiles in the raw dataset.
pub const FREE: &str = "MT_Free";
/// Where the held-out normal tiles go (MVTec AD's name for normal test images).
pub const TEST_NORMAL: &str = crate::imageio::NORMAL_TYPE;
/// Share of the normal tiles used for training when no list is given (the reference's 80 %).
pub const TRAIN_SHARE: f64 = 0.8;
pub const SUMMARY_FILE: &str = "prepare_mtd.json";

/// What to convert.
#[derive(Debug, Clone)]
pub struct MtdSpec {
    pub raw: PathBuf,
    pub out: PathBuf,
    pub train_list: Option<PathBuf>,
    pub seed: u64,
    pub overwrite: bool,
}

/// The fingerprint of a `prepare-mtd` output folder.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MtdFingerprint {
    pub raw: crate::fingerprint::AbsPath,
    pub train_list: Option<crate::fingerprint::AbsPath>,
    /// Not read with a train list; recorded all the same, as the markers have held it.
    pub seed: u64,
}

impl MtdSpec {
    /// The fingerprint of this run's output folder (see [`MtdFingerprint`]).
    pub fn fingerprint(&self) -> MtdFingerprint {
        // Exhaustive on purpose: each field is either recorded or has a reason not to be.
        let MtdSpec {
            raw,
            train_list,
            seed,
            // Where the outputs go, and whether an earlier run's may be replaced.
            out: _,
            overwrite: _,
        } = self;
        MtdFingerprint {
            raw: crate::fingerprint::AbsPath::new(raw),
            train_list: train_list.as_deref().map(crate::fingerprint::AbsPath::new),
            seed: *seed,
        }
    }
}

/// `prepare_mtd.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MtdSummary {
    /// "list FILE" or "seeded 80/20 split (seed N)".
    pub split: String,
    pub train_normal: usize,
    pub test_normal: usize,
    /// Defective images per type.
    pub defects: BTreeMap<String, usize>,
    /// Files written into OUT (relative).
    pub output_files: Vec<PathBuf>,
}

impl StageSummary for MtdSummary {
    const FILE: &'static str = SUMMARY_FILE;
    fn written_files(&self) -> Vec<PathBuf> {
        self.output_files.clone()
    }
}

/// The images (and masks) of one raw type folder, by stem.
struct TypeFolder {
    name: String,
    images: BTreeMap<String, PathBuf>,
    masks: BTreeMap<String, PathBuf>,
}

fn ext_is(p: &Path, ext: &[&str]) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ext.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn read_type(dir: &Path, name: &str) -> Result<TypeFolder> {
    let imgs = dir.join("Imgs");
    if !imgs.is_dir() {
        return Err(Error::input(
            dir,
            "no Imgs/ folder; the original MTD layout is RAW/MT_<Type>/Imgs/<stem>.jpg with <stem>.png masks",
        ));
    }
    let mut t = TypeFolder {
        name: name.to_string(),
        images: BTreeMap::new(),
        masks: BTreeMap::new(),
    };
    let images = read_folder(&imgs, &["jpg", "jpeg"])?;
    let masks = read_folder(&imgs, &["png"])?;
    let other = images
        .skipped
        .iter()
        .filter(|p| !ext_is(p, &["png"]))
        .count();
    t.images = images.files.into_iter().map(|f| (f.stem, f.path)).collect();
    t.masks = masks.files.into_iter().map(|f| (f.stem, f.path)).collect();
    if other > 0 {
        log::warn!(
            "{}: skipped {other} files that are neither .jpg images nor .png masks",
            imgs.display()
        );
    }
    Ok(t)
}

/// The `MT_*` folders of RAW, sorted by name.
fn read_raw(raw: &Path) -> Result<Vec<TypeFolder>> {
    if !raw.is_dir() {
        return Err(Error::input(
            raw,
            "--raw: folder not found; point it at the unpacked Magnetic-tile-defect-datasets. repository (with MT_Blowhole/, MT_Free/, …)",
        ));
    }
    let mut names: Vec<String> = std::fs::read_dir(raw)
        .at(raw)?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with("MT_"))
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(Error::input(
            raw,
            "--raw: no MT_* folders; expected the original MTD layout RAW/MT_<Type>/Imgs/<stem>.jpg",
        ));
    }
    if !names.iter().any(|n| n == FREE) {
        return Err(Error::input(
            raw,
            format!(
                "--raw: no {FREE}/ folder of normal tiles; the detector needs them for training"
            ),
        ));
    }
    names.iter().map(|n| read_type(&raw.join(n), n)).collect()
}

/// Stems named by the train list: one file name a line (`exp1_num_10181.jpg`; a path or a bare
/// stem also works), blank lines skipped. Missing images are an error listing the first few.
fn read_list(list: &Path, free: &TypeFolder) -> Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(list)
        .map_err(|e| Error::input(list, format!("--train-list: cannot read ({e})")))?;
    let mut stems = BTreeSet::new();
    let mut missing = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let name = Path::new(line)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(line);
        let p = Path::new(name);
        let stem = if ext_is(p, &["jpg", "jpeg"]) {
            p.file_stem().and_then(|s| s.to_str()).unwrap_or(name)
        } else {
            name
        };
        if free.images.contains_key(stem) {
            stems.insert(stem.to_string());
        } else {
            missing.push(line.to_string());
        }
    }
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(5).map(String::as_str).collect();
        return Err(Error::input(
            list,
            format!(
                "--train-list names {} image(s) not in {FREE}/Imgs: {}{}; fix the list or use the matching dataset version",
                missing.len(),
                shown.join(", "),
                if missing.len() > 5 { ", …" } else { "" }
            ),
        ));
    }
    if stems.is_empty() {
        return Err(Error::input(
            list,
            "--train-list: the list is empty; give one image file name a line",
        ));
    }
    Ok(stems)
}

/// A seeded random `TRAIN_SHARE` of the normal stems (sorted first, so the split depends only on
/// the names and the seed).
fn seeded_split(free: &TypeFolder, seed: u64) -> BTreeSet<String> {
    let mut stems: Vec<&String> = free.images.keys().collect();
    stems.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let n = (stems.len() as f64 * TRAIN_SHARE).round() as usize;
    stems.into_iter().take(n).cloned().collect()
}

/// Converts; see the module doc.
pub fn prepare(spec: &MtdSpec) -> Result<MtdSummary> {
    let types = read_raw(&spec.raw)?;
    let free = types
        .iter()
        .find(|t| t.name == FREE)
        .expect("checked in read_raw");
    if free.images.is_empty() {
        return Err(Error::input(
            spec.raw.join(FREE).join("Imgs"),
            "no .jpg normal tiles",
        ));
    }
    let (train, split) = match &spec.train_list {
        Some(list) => (read_list(list, free)?, format!("list {}", list.display())),
        None => (
            seeded_split(free, spec.seed),
            format!("seeded 80/20 split (seed {})", spec.seed),
        ),
    };
    // (source, destination relative to OUT) for every file, checked before anything is written.
    let mut copies: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut defects = BTreeMap::new();
    for (stem, src) in &free.images {
        let folder = if train.contains(stem) {
            format!("train/{FREE}")
        } else {
            format!("test/{TEST_NORMAL}")
        };
        copies.push((src.clone(), Path::new(&folder).join(file_name(src))));
    }
    for t in types.iter().filter(|t| t.name != FREE) {
        let dir = spec.raw.join(&t.name).join("Imgs");
        if t.images.is_empty() {
            return Err(Error::input(
                &dir,
                "no defect images (.jpg) in this category; restore its images or remove the empty folder",
            ));
        }
        let unmasked: Vec<&str> = t
            .images
            .keys()
            .filter(|s| !t.masks.contains_key(*s))
            .map(String::as_str)
            .collect();
        if !unmasked.is_empty() {
            let shown: Vec<String> = unmasked
                .iter()
                .take(5)
                .map(|s| format!("{s}.jpg"))
                .collect();
            return Err(Error::input(
                &dir,
                format!(
                    "{} defect image(s) without a mask <stem>.png: {}{}; restore the masks or remove those images",
                    unmasked.len(),
                    shown.join(", "),
                    if unmasked.len() > 5 { ", …" } else { "" }
                ),
            ));
        }
        for (stem, src) in &t.images {
            copies.push((
                src.clone(),
                Path::new("test").join(&t.name).join(file_name(src)),
            ));
            let mask = &t.masks[stem];
            copies.push((
                mask.clone(),
                Path::new("ground_truth")
                    .join(&t.name)
                    .join(format!("{stem}.png")),
            ));
        }
        defects.insert(t.name.clone(), t.images.len());
    }
    let mut inputs = vec![("--raw", spec.raw.as_path())];
    if let Some(l) = &spec.train_list {
        inputs.push(("--train-list", l.as_path()));
    }
    let fingerprint = crate::fingerprint::to_value(&spec.fingerprint());
    prepare_output_dir(
        &spec.out,
        &inputs,
        "prepare-mtd",
        &fingerprint,
        spec.overwrite,
    )?;
    let output = StageOutput::<MtdSummary>::open(&spec.out);

    let pb = crate::logging::progress(copies.len() as u64, "copying");
    copies.par_iter().try_for_each(|(src, rel)| -> Result<()> {
        let bytes = std::fs::read(src).at(src)?;
        atomic_write(&spec.out.join(rel), &bytes)?;
        pb.inc(1);
        Ok(())
    })?;
    pb.finish_and_clear();
    let mut output_files: Vec<PathBuf> = copies.into_iter().map(|(_, rel)| rel).collect();
    output_files.push(PathBuf::from(SUMMARY_FILE));
    let summary = MtdSummary {
        split,
        train_normal: train.len(),
        test_normal: free.images.len() - train.len(),
        defects,
        output_files,
    };
    output.finish(&summary)?;
    Ok(summary)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free(n: usize) -> TypeFolder {
        TypeFolder {
            name: FREE.into(),
            images: (0..n)
                .map(|i| (format!("t{i:02}"), PathBuf::from(format!("t{i:02}.jpg"))))
                .collect(),
            masks: BTreeMap::new(),
        }
    }

    #[test]
    fn the_fingerprint_follows_every_setting_and_keeps_its_old_form() {
        use crate::fingerprint::check::{fingerprint_follows, Change};
        let spec = || MtdSpec {
            raw: "/m/raw".into(),
            out: "/m/out".into(),
            train_list: None,
            seed: 0,
            overwrite: false,
        };
        let changes: &[Change<MtdSpec>] = &[
            ("raw", |s| s.raw = "/m/other".into()),
            ("train_list", |s| s.train_list = Some("/m/list.txt".into())),
            ("seed", |s| s.seed = 1),
        ];
        let same: &[Change<MtdSpec>] = &[
            ("out", |s| s.out = "/elsewhere".into()),
            ("overwrite", |s| s.overwrite = true),
        ];
        fingerprint_follows(spec, MtdSpec::fingerprint, changes, same, &[]);
        let s = MtdSpec {
            train_list: Some("/m/list.txt".into()),
            ..spec()
        };
        let old = serde_json::json!({
            "raw": crate::fsutil::absolute_value(&s.raw),
            "train_list": s.train_list.as_deref().map(crate::fsutil::absolute_value),
            "seed": s.seed,
        });
        assert_eq!(crate::fingerprint::to_value(&s.fingerprint()), old);
    }

    #[test]
    fn seeded_split_is_80_percent_and_deterministic() {
        let f = free(10);
        let a = seeded_split(&f, 3);
        assert_eq!(a.len(), 8);
        assert_eq!(a, seeded_split(&f, 3));
        assert_ne!(a, seeded_split(&f, 4));
    }

    #[test]
    fn list_entries_are_file_names_paths_or_stems() {
        let d = tempfile::tempdir().unwrap();
        let list = d.path().join("list.txt");
        std::fs::write(&list, "t01.jpg\n\n  data/MT_Free/Imgs/t02.jpg \nt03\n").unwrap();
        let got = read_list(&list, &free(5)).unwrap();
        assert_eq!(got.into_iter().collect::<Vec<_>>(), ["t01", "t02", "t03"]);
        std::fs::write(&list, "t01.jpg\nnope.jpg\nt99.jpg\n").unwrap();
        let e = read_list(&list, &free(5)).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("nope.jpg, t99.jpg"), "{e}");
    }
}
