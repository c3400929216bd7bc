//! Raw float anomaly maps (`.npy` float32/float64, 32- or 64-bit float TIFF) and their set-wide
//! normalisation to 8-bit levels, exactly as the reference's `generate_anomaly_maps` writes its
//! PNGs: min-max over all maps of the set, ×255, cast to uint8 by truncation. A float set and the
//! same arrays exported that way as 8-bit PNGs therefore give the same thresholds and crops.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{decode_bytes, gray_from_dynamic, npy, read_bytes, BitDepth, GrayMap};
use crate::error::{Error, Result};

/// What the map readers accept, for messages about anything else.
pub const SUPPORTED_MAPS: &str = "8- or 16-bit gray/RGB/RGBA PNG, TIFF or BMP, 32/64-bit float \
     TIFF (gray or RGB), or a float32/float64 .npy of shape (H, W) or (1, H, W)";

/// A float map before the set-wide normalisation: row-major, every value finite.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatMap {
    pub width: usize,
    pub height: usize,
    pub values: Vec<f64>,
}

impl FloatMap {
    /// (min, max) of the values.
    pub fn min_max(&self) -> (f64, f64) {
        self.values
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            })
    }

    /// The 8-bit levels on the set's scale.
    pub fn to_levels(&self, scale: &FloatScale) -> GrayMap {
        GrayMap {
            width: self.width,
            height: self.height,
            depth: BitDepth::Eight,
            pixels: self.values.iter().map(|&v| scale.level(v)).collect(),
        }
    }
}

/// The float range a set's maps are normalised over (its smallest and largest value).
/// Serialises as `[min, max]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "[f64; 2]", into = "[f64; 2]")]
pub struct FloatScale {
    pub min: f64,
    pub max: f64,
}

impl From<[f64; 2]> for FloatScale {
    fn from(a: [f64; 2]) -> Self {
        FloatScale {
            min: a[0],
            max: a[1],
        }
    }
}

impl From<FloatScale> for [f64; 2] {
    fn from(s: FloatScale) -> Self {
        [s.min, s.max]
    }
}

impl FloatScale {
    /// The scale over several maps' (min, max).
    pub fn over(min_max: impl IntoIterator<Item = (f64, f64)>) -> Option<FloatScale> {
        min_max.into_iter().fold(None, |acc, (lo, hi)| {
            Some(match acc {
                None => FloatScale { min: lo, max: hi },
                Some(s) => FloatScale {
                    min: s.min.min(lo),
                    max: s.max.max(hi),
                },
            })
        })
    }

    /// numpy's `((v - min) / (max - min) * 255).astype(np.uint8)` in float64. A constant set
    /// (max == min) gives 0 instead of NaN; values outside the scale (a stored scale applied to
    /// new maps) are clamped to 0..=255 instead of wrapping as numpy's cast would.
    pub fn level(&self, v: f64) -> u16 {
        if self.max <= self.min {
            return 0;
        }
        ((v - self.min) / (self.max - self.min) * 255.0)
            .clamp(0.0, 255.0)
            .trunc() as u16
    }
}

/// An anomaly map as read: levels (8/16-bit images) or raw floats.
#[derive(Debug, Clone, PartialEq)]
pub enum RawMap {
    Levels(GrayMap),
    Float(FloatMap),
}

/// Reads an anomaly map of any supported kind ([`SUPPORTED_MAPS`]); float values must be finite.
pub fn read_anomaly_map(path: &Path) -> Result<RawMap> {
    let bytes = read_bytes(path)?;
    let npy_ext = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"));
    if npy::is_npy(&bytes) || npy_ext {
        let a = npy::parse(&bytes).map_err(|m| Error::input(path, m))?;
        return finite(path, a.width, a.height, a.values).map(RawMap::Float);
    }
    if bytes.starts_with(b"II*\0") || bytes.starts_with(b"MM\0*") {
        if let Some(f) = float_tiff(path, &bytes)? {
            return Ok(RawMap::Float(f));
        }
    }
    let img = decode_bytes(path, &bytes)?;
    match img {
        image::DynamicImage::ImageRgb32F(b) => {
            let (w, h) = (b.width() as usize, b.height() as usize);
            let v: Vec<f64> = b.as_raw().iter().map(|&x| x as f64).collect();
            let v = luma_opencv_f64(&v, 3);
            finite(path, w, h, v).map(RawMap::Float)
        }
        image::DynamicImage::ImageRgba32F(b) => {
            let (w, h) = (b.width() as usize, b.height() as usize);
            let v: Vec<f64> = b.as_raw().iter().map(|&x| x as f64).collect();
            let v = luma_opencv_f64(&v, 4);
            finite(path, w, h, v).map(RawMap::Float)
        }
        other => gray_from_dynamic(other)
            .map(RawMap::Levels)
            .map_err(|m| Error::input(path, m)),
    }
}

/// A float TIFF read with the `tiff` crate (the `image` crate refuses gray float TIFFs), or
/// None when the TIFF holds integers (the `image` crate reads those as before).
fn float_tiff(path: &Path, bytes: &[u8]) -> Result<Option<FloatMap>> {
    use tiff::decoder::{Decoder, DecodingResult};
    use tiff::ColorType;
    let corrupt = |e: tiff::TiffError| {
        Error::input(
            path,
            format!("corrupt or truncated TIFF ({e}); re-export or remove the file"),
        )
    };
    let Ok(mut dec) = Decoder::new(std::io::Cursor::new(bytes)) else {
        return Ok(None);
    };
    let color = dec.colortype().map_err(corrupt)?;
    let channels = match color {
        ColorType::Gray(32 | 64) => 1,
        ColorType::GrayA(32 | 64) => 2,
        ColorType::RGB(32 | 64) => 3,
        ColorType::RGBA(32 | 64) => 4,
        _ => return Ok(None),
    };
    let (w, h) = dec.dimensions().map_err(corrupt)?;
    let values: Vec<f64> = match dec.read_image() {
        Ok(DecodingResult::F32(v)) => v.into_iter().map(f64::from).collect(),
        Ok(DecodingResult::F64(v)) => v,
        // 32-bit integer samples: not a float map, and not one the image crate reads either.
        Ok(_) => {
            return Err(Error::input(
                path,
                format!(
                    "unsupported pixel type: {color:?} integer samples; supported maps: {SUPPORTED_MAPS}"
                ),
            ))
        }
        Err(e) => return Err(corrupt(e)),
    };
    let values = match channels {
        1 => values,
        2 => values.chunks_exact(2).map(|p| p[0]).collect(),
        c => luma_opencv_f64(&values, c),
    };
    finite(path, w as usize, h as usize, values).map(Some)
}

/// OpenCV's BT.601 luma of interleaved float samples, alpha ignored.
fn luma_opencv_f64(v: &[f64], channels: usize) -> Vec<f64> {
    v.chunks_exact(channels)
        .map(|p| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2])
        .collect()
}

/// The map if it has pixels and every value is finite, else an error naming the first bad one.
fn finite(path: &Path, width: usize, height: usize, values: Vec<f64>) -> Result<FloatMap> {
    if width == 0 || height == 0 || values.len() != width * height {
        return Err(Error::input(
            path,
            "float map has no pixels (width or height 0)",
        ));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        let n = values.iter().filter(|v| !v.is_finite()).count();
        return Err(Error::input(
            path,
            format!(
                "{n} values are NaN or infinite (the first {} at row {}, column {}); \
                 replace them (e.g. numpy.nan_to_num) before saving",
                values[i],
                i / width,
                i % width
            ),
        ));
    }
    Ok(FloatMap {
        width,
        height,
        values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_truncate_like_numpy_and_constant_sets_give_zero() {
        let s = FloatScale {
            min: -1.0,
            max: 3.0,
        };
        // (0 - -1) / 4 * 255 = 63.75 -> 63; the max -> 255; the min -> 0
        assert_eq!((s.level(0.0), s.level(3.0), s.level(-1.0)), (63, 255, 0));
        assert_eq!((s.level(9.0), s.level(-9.0)), (255, 0));
        assert_eq!(FloatScale { min: 2.0, max: 2.0 }.level(2.0), 0);
        let over = FloatScale::over([(0.5, 2.0), (-1.0, 1.0)]).unwrap();
        assert_eq!((over.min, over.max), (-1.0, 2.0));
    }

    #[test]
    fn float_tiffs_and_npy_files_read_and_nan_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let vals = [0.0f32, 0.25, 0.5, 1.0, 2.0, 4.0];
        let tif = d.path().join("m.tif");
        {
            let f = std::fs::File::create(&tif).unwrap();
            let mut enc = tiff::encoder::TiffEncoder::new(f).unwrap();
            enc.write_image::<tiff::encoder::colortype::Gray32Float>(3, 2, &vals)
                .unwrap();
        }
        let RawMap::Float(t) = read_anomaly_map(&tif).unwrap() else {
            panic!("float TIFF not read as floats")
        };
        assert_eq!((t.width, t.height), (3, 2));
        assert_eq!(t.values[5], 4.0);
        // an RGB float TIFF with equal channels reads as the same gray values
        let rgb_path = d.path().join("rgb.tif");
        let rgb: Vec<f32> = vals.iter().flat_map(|&v| [v, v, v]).collect();
        image::DynamicImage::ImageRgb32F(image::Rgb32FImage::from_raw(3, 2, rgb).unwrap())
            .save(&rgb_path)
            .unwrap();
        let RawMap::Float(c) = read_anomaly_map(&rgb_path).unwrap() else {
            panic!("RGB float TIFF not read as floats")
        };
        for (a, b) in c.values.iter().zip(&t.values) {
            assert!((a - b).abs() < 1e-6, "{a} {b}");
        }
        let np = d.path().join("m.npy");
        std::fs::write(&np, npy::encode_f32(&[2, 3], &vals, false)).unwrap();
        assert_eq!(read_anomaly_map(&np).unwrap(), RawMap::Float(t));
        let bad = d.path().join("nan.npy");
        let mut v = vals;
        v[4] = f32::NAN;
        std::fs::write(&bad, npy::encode_f32(&[2, 3], &v, false)).unwrap();
        let e = read_anomaly_map(&bad).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = e.to_string();
        assert!(e.contains("nan.npy") && e.contains("NaN"), "{e}");
    }
}
