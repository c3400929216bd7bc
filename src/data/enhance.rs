//! The photometric steps of the training transform, on 8-bit RGB as the reference runs them on
//! PIL images: Pillow's ImageEnhance formulas for brightness, contrast, saturation and sharpness,
//! torchvision's Gaussian blur, posterize. Written out because the image and imageproc crates
//! define these differently (their brightness and contrast use other formulas; imageproc's
//! filters pad by repeating the edge and clamp to u8 between passes); a test checks them
//! against Pillow and torch outputs.

use image::RgbImage;

/// Pillow's `L` conversion (ITU-R 601-2 luma in 16-bit fixed point).
fn luma_pillow(p: &[u8]) -> u8 {
    ((p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16) as u8
}

/// Pillow's `Image.blend(degenerate, image, factor)` for one 8-bit value: 0 at or below 0, 255 at
/// or above 255, truncated in between — which is what Rust's saturating `as u8` does.
fn blend(degenerate: f32, v: u8, factor: f32) -> u8 {
    (degenerate + factor * (v as f32 - degenerate)) as u8
}

/// One colour jitter step with its factor (1.0 leaves the image unchanged).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Jitter {
    Brightness(f32),
    Contrast(f32),
    Saturation(f32),
}

pub(crate) fn jitter(img: &mut RgbImage, j: Jitter) {
    // Brightness and contrast blend with a constant, so a table of the 256 results serves all.
    let lut = |degenerate: f32, f: f32| -> [u8; 256] {
        std::array::from_fn(|v| blend(degenerate, v as u8, f))
    };
    match j {
        Jitter::Brightness(f) => {
            let t = lut(0.0, f);
            img.iter_mut().for_each(|v| *v = t[*v as usize]);
        }
        Jitter::Contrast(f) => {
            let n = (img.width() * img.height()).max(1) as u64;
            let sum: u64 = img
                .as_raw()
                .chunks_exact(3)
                .map(|p| luma_pillow(p) as u64)
                .sum();
            let mean = (sum as f64 / n as f64 + 0.5).floor() as f32;
            let t = lut(mean, f);
            img.iter_mut().for_each(|v| *v = t[*v as usize]);
        }
        Jitter::Saturation(f) => {
            let raw: &mut [u8] = img;
            for px in raw.chunks_exact_mut(3) {
                let l = luma_pillow(px) as f32;
                px.iter_mut().for_each(|v| *v = blend(l, *v, f));
            }
        }
    }
}

/// Pillow's Sharpness: blend with the SMOOTH filter (3×3, centre 5, others 1, /13); the border
/// pixels of the smoothed image are the original ones, as Pillow's 3×3 filter leaves them.
pub(crate) fn sharpness(img: &mut RgbImage, factor: f32) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if factor == 1.0 || w < 3 || h < 3 {
        return;
    }
    let stride = 3 * w;
    let src = img.as_raw().clone();
    let out: &mut [u8] = img;
    for y in 1..h - 1 {
        let up = &src[(y - 1) * stride..y * stride];
        let mid = &src[y * stride..(y + 1) * stride];
        let down = &src[(y + 1) * stride..(y + 2) * stride];
        let row = &mut out[y * stride..(y + 1) * stride];
        for i in 3..stride - 3 {
            let at = |r: &[u8], k: usize| r[k] as u32;
            let sum = at(up, i - 3)
                + at(up, i)
                + at(up, i + 3)
                + at(mid, i - 3)
                + 5 * at(mid, i)
                + at(mid, i + 3)
                + at(down, i - 3)
                + at(down, i)
                + at(down, i + 3);
            // sum / 13 rounded half up, in integers.
            let smooth = ((2 * sum + 13) / 26) as f32;
            row[i] = blend(smooth, mid[i], factor);
        }
    }
}

/// Index into `0..n` with torch's `reflect` padding (edge not repeated), folded as often as needed.
fn reflect(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let m = i.rem_euclid(period);
    (if m < n as isize { m } else { period - m }) as usize
}

/// torchvision's `gaussian_blur`: a `k`-tap Gaussian per axis, reflect padding, computed in f32
/// and rounded once. Hand-written because imageproc pads by repeating the edge and clamps to u8
/// between the two passes. Taps below 1e-5 of the total are dropped: with sigma ≤ 2 that moves
/// no output by more than 0.01 of a grey level and skips most of the work of the large kernels.
pub(crate) fn gaussian_blur(img: &mut RgbImage, k: usize, sigma: f32) {
    if k <= 1 {
        return;
    }
    let half = (k / 2) as isize;
    let mut taps: Vec<f32> = (-half..=half)
        .map(|x| (-0.5 * (x as f32 / sigma).powi(2)).exp())
        .collect();
    let total: f32 = taps.iter().sum();
    taps.iter_mut().for_each(|t| *t /= total);
    let keep = taps
        .iter()
        .position(|&t| t >= 1e-5)
        .unwrap_or(half as usize);
    let taps = &taps[keep..taps.len() - keep];
    let r = (taps.len() / 2) as isize;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let stride = 3 * w;
    let raw: &mut [u8] = img;
    // Both passes run over interleaved RGB rows: tap t of pixel x reads pixel x + t − r, which
    // is element 3·(x + t) + c of the padded row, so the inner loops are plain vector updates.
    let mut tmp = vec![0f32; stride * h];
    let mut padded = vec![0f32; stride + 6 * r as usize];
    for y in 0..h {
        let row = &raw[y * stride..(y + 1) * stride];
        let (ru, n) = (r as usize, padded.len() / 3);
        padded[3 * ru..3 * ru + stride]
            .iter_mut()
            .zip(row)
            .for_each(|(p, &v)| *p = v as f32);
        for j in (0..ru).chain(ru + w..n) {
            let src = 3 * reflect(j as isize - r, w);
            for c in 0..3 {
                padded[3 * j + c] = row[src + c] as f32;
            }
        }
        let out = &mut tmp[y * stride..(y + 1) * stride];
        for (t, &kt) in taps.iter().enumerate() {
            for (o, &v) in out.iter_mut().zip(&padded[3 * t..3 * t + stride]) {
                *o += kt * v;
            }
        }
    }
    let mut acc = vec![0f32; stride];
    for y in 0..h {
        acc.fill(0.0);
        for (t, &kt) in taps.iter().enumerate() {
            let src = reflect(y as isize + t as isize - r, h);
            for (o, &v) in acc.iter_mut().zip(&tmp[src * stride..(src + 1) * stride]) {
                *o += kt * v;
            }
        }
        for (px, &v) in raw[y * stride..(y + 1) * stride].iter_mut().zip(&acc) {
            *px = v.round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// Keeps the `bits` highest bits of every value.
pub(crate) fn posterize(img: &mut RgbImage, bits: u8) {
    if bits >= 8 {
        return;
    }
    let keep = 0xFFu8 << (8 - bits);
    img.iter_mut().for_each(|v| *v &= keep);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::transform::{prepare, TransformSpec};
    use image::GrayImage;

    #[test]
    fn pillow_enhancements() {
        let mut img = RgbImage::from_pixel(4, 4, image::Rgb([200, 100, 0]));
        jitter(&mut img, Jitter::Brightness(0.5));
        assert_eq!(img.get_pixel(0, 0).0, [100, 50, 0]);
        jitter(&mut img, Jitter::Saturation(0.0));
        let l = luma_pillow(&[100, 50, 0]);
        assert_eq!(img.get_pixel(1, 1).0, [l, l, l]);
        let mut img = RgbImage::from_fn(4, 4, |x, _| image::Rgb([if x < 2 { 0 } else { 200 }; 3]));
        jitter(&mut img, Jitter::Contrast(0.0));
        assert!(img.pixels().all(|p| p.0 == [100; 3]));
        let mut img = RgbImage::from_pixel(2, 2, image::Rgb([255, 0b1010_1111, 3]));
        posterize(&mut img, 5);
        assert_eq!(img.get_pixel(0, 0).0, [0b1111_1000, 0b1010_1000, 0]);
    }

    #[test]
    fn blur_keeps_flat_images_and_spreads_an_impulse_symmetrically() {
        let mut flat = RgbImage::from_pixel(20, 20, image::Rgb([90, 90, 90]));
        gaussian_blur(&mut flat, 33, 2.0);
        assert!(flat.pixels().all(|p| p.0 == [90; 3]));
        let mut dot = RgbImage::new(21, 21);
        dot.put_pixel(10, 10, image::Rgb([255, 255, 255]));
        gaussian_blur(&mut dot, 9, 1.0);
        let c = dot.get_pixel(10, 10)[0];
        assert!(c > 20 && c < 255, "{c}");
        assert_eq!(dot.get_pixel(9, 10), dot.get_pixel(11, 10));
        assert_eq!(dot.get_pixel(10, 9), dot.get_pixel(10, 11));
        assert_eq!(dot.get_pixel(0, 0)[0], 0);
        assert_eq!(reflect(-1, 5), 1);
        assert_eq!(reflect(5, 5), 3);
        assert_eq!(reflect(-9, 3), 1);
    }

    #[test]
    fn sharpness_blurs_below_one_and_keeps_borders() {
        let mut img = RgbImage::from_fn(5, 5, |x, y| {
            image::Rgb([if (x, y) == (2, 2) { 130 } else { 0 }; 3])
        });
        sharpness(&mut img, 0.0);
        assert_eq!(img.get_pixel(2, 2)[0], 50); // 130·5/13
        assert_eq!(img.get_pixel(1, 1)[0], 10); // 130/13
        assert_eq!(img.get_pixel(0, 0)[0], 0);
    }

    /// Expected outputs from Pillow and torch (tests/fixtures/pillow_ops/make.py): the
    /// enhancements and posterize match bit for bit; blur and resize round within one level.
    #[test]
    fn operations_match_pillow_and_torchvision() {
        let dir = std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/pillow_ops"
        ));
        let load = |n: &str| image::open(dir.join(n)).unwrap().to_rgb8();
        let input = load("in.png");
        let check = |name: &str, ours: &RgbImage, tolerance: u8| {
            let want = load(name);
            assert_eq!(ours.dimensions(), want.dimensions(), "{name}");
            let worst = ours
                .iter()
                .zip(want.iter())
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap();
            assert!(worst <= tolerance, "{name}: off by {worst}");
        };
        let with = |f: &dyn Fn(&mut RgbImage)| {
            let mut i = input.clone();
            f(&mut i);
            i
        };
        check(
            "brightness_1.3.png",
            &with(&|i| jitter(i, Jitter::Brightness(1.3))),
            0,
        );
        check(
            "contrast_0.7.png",
            &with(&|i| jitter(i, Jitter::Contrast(0.7))),
            0,
        );
        check(
            "saturation_1.5.png",
            &with(&|i| jitter(i, Jitter::Saturation(1.5))),
            0,
        );
        check("sharpness_0.4.png", &with(&|i| sharpness(i, 0.4)), 0);
        check("sharpness_1.8.png", &with(&|i| sharpness(i, 1.8)), 0);
        check("posterize_6.png", &with(&|i| posterize(i, 6)), 0);
        check("blur_13_1.7.png", &with(&|i| gaussian_blur(i, 13, 1.7)), 1);
        check("blur_25_0.6.png", &with(&|i| gaussian_blur(i, 25, 0.6)), 1);
        let spec = TransformSpec {
            image_size: 35,
            ..TransformSpec::new(35)
        };
        assert_eq!(spec.resize_size(), 40);
        check(
            "resize_40.png",
            &prepare(&input, &GrayImage::new(40, 30), &spec).image,
            1,
        );
    }
}
