//! Ground-truth masks, under one rule set every stage uses:
//!
//! - an image's mask is the mask file with the image's (type, stem) (extensions may differ);
//!   masks without an image are ignored;
//! - a mask level above half of its depth's top is a defect (> 127 for 8-bit masks, > 32767 for
//!   16-bit ones), anything else normal: read as 0/255;
//! - a mask is brought to another size by nearest neighbour, so it stays 0/255.
//!
//! What a missing mask means is the caller's: an error naming the files and the fix, except for
//! the items it says may go without one (normal images).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use image::{imageops::FilterType, GrayImage};

use super::{read_map, TypedFile};
use crate::error::{Error, Result};

/// The masks of a listing (see [`pair_masks`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MaskPairs {
    /// Each item's mask, in the items' order; None where it has none.
    pub masks: Vec<Option<PathBuf>>,
    /// The items that need a mask and have none, in the items' order.
    pub missing: Vec<TypedFile>,
    /// The masks no item has, in the masks' order.
    pub unused: Vec<TypedFile>,
}

impl MaskPairs {
    /// The masks, or `error(missing)` when an item that needs a mask has none.
    pub fn or_error(
        self,
        error: impl FnOnce(&[TypedFile]) -> Error,
    ) -> Result<Vec<Option<PathBuf>>> {
        match self.missing.is_empty() {
            true => Ok(self.masks),
            false => Err(error(&self.missing)),
        }
    }
}

/// Pairs each of `items` with the file of `masks` that has its (type, stem); `optional` says
/// which items may go without a mask (normal images), every other item without one is listed
/// in [`MaskPairs::missing`]. Two masks with one (type, stem) cannot come from one listing
/// ([`super::read_folder`] refuses them); the first would be taken.
pub fn pair_masks(
    items: &[TypedFile],
    masks: &[TypedFile],
    optional: impl Fn(&TypedFile) -> bool,
) -> MaskPairs {
    let mut by_key: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, f) in masks.iter().enumerate() {
        by_key.entry((&f.type_name, &f.stem)).or_insert(i);
    }
    let mut used = vec![false; masks.len()];
    let mut out = MaskPairs::default();
    for f in items {
        let m = by_key
            .get(&(f.type_name.as_str(), f.stem.as_str()))
            .copied();
        if m.is_none() && !optional(f) {
            out.missing.push(f.clone());
        }
        if let Some(i) = m {
            used[i] = true;
        }
        out.masks.push(m.map(|i| masks[i].path.clone()));
    }
    out.unused = masks
        .iter()
        .zip(used)
        .filter(|(_, u)| !u)
        .map(|(f, _)| f.clone())
        .collect();
    out
}

/// A mask at its own size as 0/255 (the module doc's threshold).
pub fn read_mask(path: &Path) -> Result<GrayImage> {
    let m = read_map(path)?;
    let top = m.depth.max_level() as u32;
    let bin = m
        .pixels
        .iter()
        .map(|&v| if 2 * v as u32 > top { 255 } else { 0 })
        .collect();
    Ok(GrayImage::from_raw(m.width as u32, m.height as u32, bin).expect("one byte per pixel"))
}

/// `mask` at `w`×`h` (nearest neighbour, so it stays 0/255); an all-normal mask for None.
pub fn mask_at(mask: Option<GrayImage>, w: u32, h: u32) -> GrayImage {
    match mask {
        Some(m) if m.dimensions() == (w, h) => m,
        Some(m) => image::imageops::resize(&m, w, h, FilterType::Nearest),
        None => GrayImage::new(w, h),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(type_name: &str, stem: &str, ext: &str) -> TypedFile {
        TypedFile {
            type_name: type_name.into(),
            stem: stem.into(),
            path: PathBuf::from(format!("{type_name}/{stem}.{ext}")),
        }
    }

    #[test]
    fn masks_pair_by_type_and_stem_and_only_optional_items_may_lack_one() {
        let items = [
            file("crack", "000", "jpg"),
            file("good", "000", "jpg"),
            file("hole", "000", "jpg"),
            file("crack", "001", "jpg"),
        ];
        // Another extension pairs; a mask of another type or without an image does not.
        let masks = [
            file("crack", "001", "png"),
            file("crack", "000", "tif"),
            file("scratch", "000", "png"),
        ];
        let p = pair_masks(&items, &masks, |f| crate::imageio::is_normal(&f.type_name));
        assert_eq!(
            p.masks,
            [
                Some(PathBuf::from("crack/000.tif")),
                None,
                None,
                Some(PathBuf::from("crack/001.png")),
            ]
        );
        assert_eq!(p.missing, [items[2].clone()], "good/000 may go without");
        assert_eq!(p.unused, [masks[2].clone()]);
        let e = p
            .clone()
            .or_error(|m| Error::usage(format!("no mask for {}", m[0].path.display())))
            .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("no mask for hole/000.jpg"), "{e}");

        // Every item required: the normal one is missing too.
        let all = pair_masks(&items, &masks, |_| false);
        assert_eq!(all.missing, [items[1].clone(), items[2].clone()]);
        let ok = pair_masks(&items[..1], &masks, |_| false).or_error(|_| unreachable!());
        assert_eq!(ok.unwrap(), [Some(PathBuf::from("crack/000.tif"))]);
    }

    #[test]
    fn masks_read_as_0_255_at_half_the_depth_and_resize_by_nearest() {
        let d = tempfile::tempdir().unwrap();
        let p8 = d.path().join("m8.png");
        GrayImage::from_raw(4, 1, vec![0, 127, 128, 255])
            .unwrap()
            .save(&p8)
            .unwrap();
        assert_eq!(read_mask(&p8).unwrap().into_raw(), [0, 0, 255, 255]);
        let p16 = d.path().join("m16.png");
        let levels: Vec<u16> = vec![0, 32767, 32768, 65535];
        image::ImageBuffer::<image::Luma<u16>, _>::from_raw(4, 1, levels)
            .unwrap()
            .save(&p16)
            .unwrap();
        assert_eq!(read_mask(&p16).unwrap().into_raw(), [0, 0, 255, 255]);
        let bad = d.path().join("bad.png");
        std::fs::write(&bad, b"not a png").unwrap();
        let e = read_mask(&bad).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("bad.png"), "{e}");

        let m = read_mask(&p8).unwrap();
        assert_eq!(mask_at(Some(m.clone()), 4, 1), m, "same size: as it is");
        let wide = mask_at(Some(m), 8, 2);
        assert_eq!(wide.dimensions(), (8, 2));
        assert_eq!(&wide.as_raw()[..8], [0, 0, 0, 0, 255, 255, 255, 255]);
        assert!(wide.as_raw().iter().all(|&v| v == 0 || v == 255));
        assert_eq!(mask_at(None, 3, 2), GrayImage::new(3, 2));
    }
}
