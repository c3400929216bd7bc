//! The detect job's inputs: the listed folders, the masks paired with the
//! test images, and the normal images split into fitted and held-out ones.

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
use crate::imageio::{
    describe_files, is_normal, list_files, pair_masks, TypedFile, IMAGE_EXTENSIONS, MAP_EXTENSIONS,
};

pub(crate) fn list_images(root: &Path, flag: &str) -> Result<Vec<TypedFile>> {
    let files = list_files(root, IMAGE_EXTENSIONS)?;
    if files.is_empty() {
        return Err(Error::input(
            root,
            format!("{flag}: no images found (expected <folder>/<type>/<stem>.<png|jpg|bmp|tif> or a flat folder of images)"),
        ));
    }
    Ok(files)
}

/// The mask of every defective test image (normal ones may have none); an error lists the
/// defective images without one.
pub(crate) fn masks_of(masks: &Path, test: &[TypedFile]) -> Result<Vec<Option<PathBuf>>> {
    let files = list_files(masks, MAP_EXTENSIONS)?;
    pair_masks(test, &files, |f| is_normal(&f.type_name)).or_error(|missing| {
        Error::input(
            masks,
            format!(
                "no mask for test image(s) {}; expected --masks <type>/<stem>.png for every defective image \
                 (0 = normal, 255 = defect), or drop --masks",
                describe_files(missing, Path::new(""), 5)
            ),
        )
    })
}

/// The normal images split into those the bank is fitted on and the held-out ones (a seeded
/// `fraction` of them, at least 1, leaving at least 1); all fitted when `fraction` is 0.
pub(crate) fn split_holdout(
    train: &[TypedFile],
    fraction: f64,
    seed: u64,
) -> Result<(Vec<&Path>, Vec<&Path>)> {
    let all: Vec<&Path> = train.iter().map(|f| f.path.as_path()).collect();
    if fraction <= 0.0 {
        return Ok((all, Vec::new()));
    }
    let n = all.len();
    if n < 2 {
        return Err(Error::usage(format!(
            "--holdout-normals: {n} normal image; holding some out of the bank needs at least 2"
        )));
    }
    let k = ((n as f64 * fraction).round() as usize).clamp(1, n - 1);
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x0068_6f6c_646f_7574));
    let mut held = idx.split_off(n - k);
    idx.sort_unstable();
    held.sort_unstable();
    Ok((
        idx.into_iter().map(|i| all[i]).collect(),
        held.into_iter().map(|i| all[i]).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(n: usize) -> Vec<TypedFile> {
        (0..n)
            .map(|i| TypedFile {
                type_name: String::new(),
                stem: format!("{i:03}"),
                path: PathBuf::from(format!("/good/{i:03}.png")),
            })
            .collect()
    }

    #[test]
    fn held_out_normals_are_a_seeded_share_left_out_of_the_fit() {
        let train = files(20);
        let (fit, held) = split_holdout(&train, 0.1, 0).unwrap();
        assert_eq!((fit.len(), held.len()), (18, 2));
        assert!(held.iter().all(|h| !fit.contains(h)));
        assert_eq!(split_holdout(&train, 0.1, 0).unwrap().1, held, "seeded");
        // Off: all fitted. At least one held out, at least one left.
        assert_eq!(split_holdout(&train, 0.0, 0).unwrap().0.len(), 20);
        assert_eq!(split_holdout(&files(3), 0.01, 1).unwrap().1.len(), 1);
        assert_eq!(split_holdout(&files(2), 0.5, 1).unwrap().0.len(), 1);
        assert_eq!(split_holdout(&files(1), 0.1, 0).unwrap_err().exit_code(), 2);
    }
}
