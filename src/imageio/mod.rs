//! Reading the images and maps the pipeline consumes: anomaly maps as grayscale levels, original
//! images as RGB, and `<dir>/<type>/<stem>.<ext>` listings paired by stem. Every failure is an
//! [`Error::input`] naming the file and what to do about it.
//!
//! Map conversion (what [`read_map`] does with each kind of file):
//! - 8-bit gray: levels 0..=255 as they are; 16-bit gray: levels 0..=65535 as they are (the
//!   reference's `cv2.imread(.., IMREAD_GRAYSCALE)` would drop the low byte; we keep it, so the
//!   threshold search works on the full 16-bit scale);
//! - gray + alpha: the alpha channel is ignored;
//! - RGB / RGBA / palette (8 or 16 bit): OpenCV's luma `Y = 0.299 R + 0.587 G + 0.114 B`
//!   (its fixed-point form, rounded), alpha ignored; a gray map saved as RGB (R = G = B) keeps its
//!   levels exactly;
//! - 1/2/4-bit gray PNGs: expanded to 8 bits by the PNG decoder (1-bit: 0 and 255);
//! - raw float maps (`.npy`, float TIFF): read by [`float::read_anomaly_map`] for anomaly maps
//!   and normalised over the whole set there; [`read_map`] (masks) refuses them.

use std::path::Path;

use image::{DynamicImage, RgbImage};

use crate::error::{Error, IoContext, Result};

pub mod float;
mod listing;
mod masks;
pub mod npy;

pub use float::{read_anomaly_map, FloatMap, FloatScale, RawMap, SUPPORTED_MAPS};
pub use listing::{
    list_files, list_typed_files, pair_by_stem, read_folder, Folder, StemMatch, TypedFile,
};
pub use masks::{mask_at, pair_masks, read_mask, MaskPairs};

/// The type folder of normal images (MVTec AD's name): the one definition every stage uses.
pub const NORMAL_TYPE: &str = "good";

/// Whether a type folder holds normal images (see [`NORMAL_TYPE`]).
pub fn is_normal(type_name: &str) -> bool {
    type_name == NORMAL_TYPE
}

/// File extensions accepted for original images (compared case-insensitively).
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "tif", "tiff"];
/// File extensions accepted for masks (and anomaly maps, which also take [`ANOMALY_MAP_EXTENSIONS`]).
pub const MAP_EXTENSIONS: &[&str] = &["png", "tif", "tiff", "bmp"];
/// File extensions accepted for anomaly maps: images and raw float `.npy` arrays.
pub const ANOMALY_MAP_EXTENSIONS: &[&str] = &["png", "tif", "tiff", "bmp", "npy"];

/// Bit depth of a map's levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BitDepth {
    Eight,
    Sixteen,
}

impl BitDepth {
    /// Largest level of this depth (255 or 65535).
    pub fn max_level(self) -> u16 {
        match self {
            BitDepth::Eight => u8::MAX as u16,
            BitDepth::Sixteen => u16::MAX,
        }
    }
}

/// A single-channel map (anomaly map or mask): row-major levels in 0..=depth.max_level().
#[derive(Debug, Clone, PartialEq)]
pub struct GrayMap {
    pub width: usize,
    pub height: usize,
    pub depth: BitDepth,
    pub pixels: Vec<u16>,
}

impl GrayMap {
    /// A map from 8-bit levels (row-major, `width * height` of them).
    pub fn from_u8(width: usize, height: usize, levels: &[u8]) -> GrayMap {
        assert_eq!(
            levels.len(),
            width * height,
            "GrayMap::from_u8: wrong pixel count"
        );
        GrayMap {
            width,
            height,
            depth: BitDepth::Eight,
            pixels: levels.iter().map(|&v| v as u16).collect(),
        }
    }

    /// Largest level (0 for an empty map).
    pub fn max(&self) -> u16 {
        self.pixels.iter().copied().max().unwrap_or(0)
    }

    pub fn get(&self, x: usize, y: usize) -> u16 {
        self.pixels[y * self.width + x]
    }
}

/// Reads the file fully, refusing missing and zero-byte files with a message naming the file.
pub(crate) fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).at(path)?;
    if bytes.is_empty() {
        return Err(Error::input(
            path,
            "empty file (0 bytes); replace it with a valid image",
        ));
    }
    Ok(bytes)
}

/// The image's size (width, height) from its header, without decoding it; a missing, empty or
/// unreadable file is an input error naming it.
pub fn dimensions(path: &Path) -> Result<(u32, u32)> {
    let len = std::fs::metadata(path).at(path)?.len();
    if len == 0 {
        return Err(Error::input(
            path,
            "empty file (0 bytes); replace it with a valid image",
        ));
    }
    image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| Error::input(path, format!("cannot read: {e}")))?
        .into_dimensions()
        .map_err(|e| {
            Error::input(
                path,
                format!("cannot read the image size ({e}); re-export or remove the file"),
            )
        })
}

/// Decodes any supported image format, with errors that say whether the file is not an image at
/// all or a damaged one.
pub fn decode(path: &Path) -> Result<DynamicImage> {
    let bytes = read_bytes(path)?;
    decode_bytes(path, &bytes)
}

/// [`decode`] of bytes already read from `path`.
pub(crate) fn decode_bytes(path: &Path, bytes: &[u8]) -> Result<DynamicImage> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::input(path, format!("cannot read: {e}")))?;
    if reader.format().is_none() {
        return Err(Error::input(
            path,
            "not an image (unrecognised format; expected PNG, JPEG, BMP or TIFF)",
        ));
    }
    reader.decode().map_err(|e| match e {
        // The decoder's allocation limit (512 MiB): a huge image, or a header that claims one.
        image::ImageError::Limits(_) => Error::input(
            path,
            format!("image too large to decode ({e}); downscale it or split it into tiles"),
        ),
        // A valid file whose pixel type the decoder does not handle: not damage.
        image::ImageError::Unsupported(_) => Error::input(
            path,
            format!(
                "unsupported pixel type ({e}); supported: 8- or 16-bit gray/RGB/RGBA PNG, JPEG, BMP \
                 or TIFF (anomaly maps also 32/64-bit float TIFF and float .npy)"
            ),
        ),
        _ => Error::input(
            path,
            format!("corrupt or truncated image ({e}); re-export or remove the file"),
        ),
    })
}

/// OpenCV's fixed-point BT.601 luma (`cvtColor(RGB2GRAY)`): weights 4899, 9617, 1868 out of 2^14.
fn luma_opencv(r: u32, g: u32, b: u32) -> u32 {
    (r * 4899 + g * 9617 + b * 1868 + (1 << 13)) >> 14
}

/// The luma of interleaved RGB or RGBA samples (`channels` 3 or 4), alpha ignored.
fn luma_levels<T: Copy + Into<u32>>(raw: &[T], channels: usize) -> Vec<u16> {
    raw.chunks_exact(channels)
        .map(|p| luma_opencv(p[0].into(), p[1].into(), p[2].into()) as u16)
        .collect()
}

/// Reads an anomaly map (or mask) as grayscale levels; see the module doc for each conversion.
pub fn read_map(path: &Path) -> Result<GrayMap> {
    let img = decode(path)?;
    gray_from_dynamic(img).map_err(|msg| Error::input(path, msg))
}

/// Converts a decoded image to gray levels (module doc), or says why it cannot.
pub fn gray_from_dynamic(img: DynamicImage) -> std::result::Result<GrayMap, String> {
    let (width, height) = (img.width() as usize, img.height() as usize);
    if width == 0 || height == 0 {
        return Err("image has no pixels (width or height 0)".into());
    }
    let (depth, pixels): (BitDepth, Vec<u16>) = match img {
        DynamicImage::ImageLuma8(b) => (
            BitDepth::Eight,
            b.into_raw().into_iter().map(u16::from).collect(),
        ),
        DynamicImage::ImageLuma16(b) => (BitDepth::Sixteen, b.into_raw()),
        DynamicImage::ImageLumaA8(b) => (
            BitDepth::Eight,
            b.into_raw().chunks_exact(2).map(|p| p[0] as u16).collect(),
        ),
        DynamicImage::ImageLumaA16(b) => (
            BitDepth::Sixteen,
            b.into_raw().chunks_exact(2).map(|p| p[0]).collect(),
        ),
        DynamicImage::ImageRgb8(b) => (BitDepth::Eight, luma_levels(&b.into_raw(), 3)),
        DynamicImage::ImageRgba8(b) => (BitDepth::Eight, luma_levels(&b.into_raw(), 4)),
        DynamicImage::ImageRgb16(b) => (BitDepth::Sixteen, luma_levels(&b.into_raw(), 3)),
        DynamicImage::ImageRgba16(b) => (BitDepth::Sixteen, luma_levels(&b.into_raw(), 4)),
        other => {
            return Err(format!(
                "unsupported pixel type {:?} here; supported: 8- or 16-bit gray/RGB/RGBA PNG, TIFF or BMP",
                other.color()
            ))
        }
    };
    Ok(GrayMap {
        width,
        height,
        depth,
        pixels,
    })
}

/// Reads an original image as 8-bit RGB (gray images are replicated into three channels, alpha is
/// dropped, 16-bit channels are scaled to 8 bits).
pub fn read_rgb(path: &Path) -> Result<RgbImage> {
    let img = decode(path)?;
    if img.width() == 0 || img.height() == 0 {
        return Err(Error::input(
            path,
            "image has no pixels (width or height 0)",
        ));
    }
    Ok(img.into_rgb8())
}

/// "a/b.png, c/d.png, … (12 in all)": the first few offenders of a list, for error messages.
pub fn describe_files(files: &[TypedFile], root: &Path, first: usize) -> String {
    let shown: Vec<String> = files
        .iter()
        .take(first)
        .map(|f| {
            f.path
                .strip_prefix(root)
                .unwrap_or(&f.path)
                .display()
                .to_string()
        })
        .collect();
    if files.len() > first {
        format!("{}, … ({} in all)", shown.join(", "), files.len())
    } else {
        shown.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Luma, Rgb, Rgba};

    fn save(img: DynamicImage, path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        img.save(path).unwrap();
    }

    #[test]
    fn maps_of_every_depth_and_colour_read_as_documented() {
        let d = tempfile::tempdir().unwrap();
        let p8 = d.path().join("a8.png");
        save(
            DynamicImage::ImageLuma8(ImageBuffer::from_raw(2, 1, vec![7u8, 200]).unwrap()),
            &p8,
        );
        let m = read_map(&p8).unwrap();
        assert_eq!((m.depth, m.pixels.clone()), (BitDepth::Eight, vec![7, 200]));

        let p16 = d.path().join("a16.png");
        save(
            DynamicImage::ImageLuma16(ImageBuffer::from_raw(2, 1, vec![300u16, 65535]).unwrap()),
            &p16,
        );
        let m = read_map(&p16).unwrap();
        assert_eq!(
            (m.depth, m.pixels.clone()),
            (BitDepth::Sixteen, vec![300, 65535])
        );

        // gray stored as RGB keeps its levels; a colour pixel uses OpenCV's luma
        let prgb = d.path().join("rgb.png");
        let rgb: ImageBuffer<Rgb<u8>, _> =
            ImageBuffer::from_raw(2, 1, vec![90, 90, 90, 255, 0, 0]).unwrap();
        save(DynamicImage::ImageRgb8(rgb), &prgb);
        assert_eq!(read_map(&prgb).unwrap().pixels, vec![90, 76]);

        let prgba = d.path().join("rgba.png");
        let rgba: ImageBuffer<Rgba<u8>, _> =
            ImageBuffer::from_raw(1, 1, vec![10, 10, 10, 0]).unwrap();
        save(DynamicImage::ImageRgba8(rgba), &prgba);
        assert_eq!(read_map(&prgba).unwrap().pixels, vec![10]);
    }

    fn write_raw_png(
        path: &Path,
        w: u32,
        h: u32,
        color: png::ColorType,
        depth: png::BitDepth,
        palette: Option<&[u8]>,
        data: &[u8],
    ) {
        let f = std::fs::File::create(path).unwrap();
        let mut enc = png::Encoder::new(std::io::BufWriter::new(f), w, h);
        enc.set_color(color);
        enc.set_depth(depth);
        if let Some(p) = palette {
            enc.set_palette(p.to_vec());
        }
        enc.write_header().unwrap().write_image_data(data).unwrap();
    }

    #[test]
    fn one_bit_and_palette_maps_are_expanded() {
        let d = tempfile::tempdir().unwrap();
        // 1-bit gray, 8 pixels in one byte: 1 0 1 1 0 0 0 1 -> 255 0 255 255 0 0 0 255
        let p1 = d.path().join("one.png");
        write_raw_png(
            &p1,
            8,
            1,
            png::ColorType::Grayscale,
            png::BitDepth::One,
            None,
            &[0b1011_0001],
        );
        assert_eq!(
            read_map(&p1).unwrap().pixels,
            vec![255, 0, 255, 255, 0, 0, 0, 255]
        );
        // palette: index 0 = gray 40, index 1 = pure red (luma 76)
        let pp = d.path().join("pal.png");
        let pal = [40, 40, 40, 255, 0, 0];
        write_raw_png(
            &pp,
            3,
            1,
            png::ColorType::Indexed,
            png::BitDepth::Eight,
            Some(&pal),
            &[0, 1, 0],
        );
        let m = read_map(&pp).unwrap();
        assert_eq!((m.depth, m.pixels), (BitDepth::Eight, vec![40, 76, 40]));
    }

    #[test]
    fn bad_files_name_the_file_and_the_problem() {
        let d = tempfile::tempdir().unwrap();
        let empty = d.path().join("empty.png");
        std::fs::write(&empty, b"").unwrap();
        let e = read_map(&empty).unwrap_err().to_string();
        assert!(e.contains("empty.png") && e.contains("0 bytes"), "{e}");

        let text = d.path().join("text.png");
        std::fs::write(&text, b"hello, this is not an image at all").unwrap();
        let e = read_map(&text).unwrap_err().to_string();
        assert!(e.contains("text.png") && e.contains("not an image"), "{e}");

        let good = d.path().join("good.png");
        let img: ImageBuffer<Luma<u8>, _> =
            ImageBuffer::from_fn(64, 64, |x, y| Luma([((x * 7 + y * 13) % 256) as u8]));
        save(DynamicImage::ImageLuma8(img), &good);
        let bytes = std::fs::read(&good).unwrap();
        let cut = d.path().join("cut.png");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let e = read_map(&cut).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(
            e.to_string().contains("cut.png") && e.to_string().contains("corrupt"),
            "{e}"
        );

        let missing = d.path().join("missing.png");
        assert!(read_map(&missing)
            .unwrap_err()
            .to_string()
            .contains("missing.png"));
    }

    #[test]
    fn listing_and_pairing_by_stem() {
        let d = tempfile::tempdir().unwrap();
        let px = || DynamicImage::ImageLuma8(ImageBuffer::from_raw(1, 1, vec![1u8]).unwrap());
        for (t, s) in [("b", "x"), ("a", "z"), ("a", "y")] {
            save(
                px(),
                &d.path().join("maps").join(t).join(format!("{s}.png")),
            );
        }
        for (t, s) in [("a", "y"), ("a", "z"), ("b", "w")] {
            save(
                px(),
                &d.path().join("imgs").join(t).join(format!("{s}.bmp")),
            );
        }
        std::fs::write(d.path().join("maps/a/notes.txt"), b"skip me").unwrap();
        let maps = list_typed_files(&d.path().join("maps"), MAP_EXTENSIONS).unwrap();
        let names: Vec<_> = maps
            .iter()
            .map(|f| format!("{}/{}", f.type_name, f.stem))
            .collect();
        assert_eq!(names, ["a/y", "a/z", "b/x"]);
        let imgs = list_typed_files(&d.path().join("imgs"), IMAGE_EXTENSIONS).unwrap();
        let p = pair_by_stem(maps, imgs);
        assert_eq!(p.pairs.len(), 2);
        assert_eq!(p.left_only[0].stem, "x");
        assert_eq!(p.right_only[0].stem, "w");

        save(px(), &d.path().join("maps/a/y.tif"));
        let e = list_typed_files(&d.path().join("maps"), MAP_EXTENSIONS)
            .unwrap_err()
            .to_string();
        assert!(e.contains("same stem"), "{e}");

        save(px(), &d.path().join("flat/one.png"));
        let e = list_typed_files(&d.path().join("flat"), MAP_EXTENSIONS)
            .unwrap_err()
            .to_string();
        assert!(e.contains("one folder per type"), "{e}");
    }

    #[test]
    fn only_the_normal_type_folder_is_normal() {
        assert!(is_normal(NORMAL_TYPE));
        // Exact: a flat folder's type (""), another case or a defect type is not.
        for t in ["", "Good", "good_1", "crack"] {
            assert!(!is_normal(t), "{t}");
        }
    }
}
