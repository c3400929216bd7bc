//! The reference's augmentations (`datasets/transform.py`), with one random geometry applied to a
//! crop and its mask.
//!
//! Train, in the reference's order and with its probabilities: resize the shorter side to
//! `int(S / 0.875)`; crop S×S at a random offset in `[0, int(S/0.875) − S)` on each axis; flip
//! left-right (p 0.5); flip up-down (p 0.5); colour jitter (brightness and contrast in [0.6, 1.4],
//! saturation in [0.6, 1.8], applied in random order); rotate counter-clockwise by 90°, 180° or
//! 270° (p 0.25 each); sharpness with factor in [0.2, 2.0]; Gaussian blur with a kernel drawn from
//! {9, 13, …, 33} and sigma in [0.1, 2.0]; posterize to 5–8 bits; ImageNet normalisation. The mask
//! gets the resize (nearest, so it stays 0/1), the crop, the flips and the rotation only.
//!
//! Test: the same resize and an S×S crop at offset `(int(S/0.875) − S) / 2` on both axes, which is
//! the centre crop for square crops (the reference takes that offset for non-square crops too).
//!
//! Departures from the reference, on purpose: the image is resized bilinearly (antialiased) — the
//! reference sets `interpolation = 3` (bicubic) but never passes it on, so torchvision's default,
//! bilinear, is what it runs; the mask is resized with nearest instead of bilinear, so it stays
//! binary. The photometric steps (in `enhance`) work on 8-bit pixels with Pillow's formulas, as the
//! reference works on PIL images.

use image::imageops::{self, FilterType};
use image::{GrayImage, RgbImage};
use rand::seq::SliceRandom;
use rand::Rng;

pub use super::enhance::Jitter;
use super::enhance::{gaussian_blur, jitter, posterize, sharpness};

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Gaussian blur kernel sizes the reference draws from.
pub const BLUR_KERNELS: [usize; 7] = [9, 13, 17, 21, 25, 29, 33];
/// Bits kept by posterize, drawn uniformly.
pub const POSTERIZE_BITS: [u8; 4] = [5, 6, 7, 8];

/// Output side and resize rule shared by the train and test transforms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TransformSpec {
    /// Output side S.
    pub image_size: u32,
    /// The shorter side is first resized to `int(S / crop_pct)`.
    pub crop_pct: f64,
    /// Filter of that resize for the image (the mask always uses nearest).
    pub filter: FilterType,
}

impl TransformSpec {
    /// The reference's settings for output side `image_size`: crop_pct 0.875, bilinear.
    pub fn new(image_size: u32) -> Self {
        Self {
            image_size,
            crop_pct: 0.875,
            filter: FilterType::Triangle,
        }
    }

    /// Side the shorter side is resized to before cropping: `int(S / crop_pct)` (256 for 224).
    pub fn resize_size(&self) -> u32 {
        ((self.image_size as f64 / self.crop_pct) as u32).max(self.image_size)
    }

    /// f32 values of one normalised view, `3 × S × S`.
    pub fn image_len(&self) -> usize {
        3 * (self.image_size as usize).pow(2)
    }

    /// f32 values of one mask view, `S × S`.
    pub fn mask_len(&self) -> usize {
        (self.image_size as usize).pow(2)
    }

    pub(crate) fn check(&self) -> crate::Result<()> {
        if self.image_size == 0 || !(self.crop_pct > 0.0 && self.crop_pct <= 1.0) {
            return Err(crate::Error::usage(format!(
                "transform: image size {} must be at least 1 and crop_pct {} in (0, 1]",
                self.image_size, self.crop_pct
            )));
        }
        Ok(())
    }
}

/// A crop and its mask resized for the transforms (shorter side `resize_size`); the mask holds
/// 0..=255 for 0..1 (0/255 for a binary mask, grey levels for a crop's anomaly map).
/// The resize is the same for every view and epoch, so it is done once and can be cached.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub image: RgbImage,
    pub mask: GrayImage,
}

impl Prepared {
    /// Bytes held in memory.
    pub fn bytes(&self) -> usize {
        self.image.as_raw().len() + self.mask.as_raw().len()
    }
}

/// torchvision's `resize(img, size=int)`: shorter side to `r`, longer side `int(r·long/short)`.
fn resized_dims((w, h): (u32, u32), r: u32) -> (u32, u32) {
    let scale = |long: u32, short: u32| (r as u64 * long as u64 / short.max(1) as u64) as u32;
    if w <= h {
        (r, scale(h, w))
    } else {
        (scale(w, h), r)
    }
}

/// Resizes a decoded crop (image RGB, mask 0/1) for the transforms.
pub fn prepare(image: &RgbImage, mask: &GrayImage, spec: &TransformSpec) -> Prepared {
    let (w, h) = resized_dims(image.dimensions(), spec.resize_size());
    let image = if image.dimensions() == (w, h) {
        image.clone()
    } else {
        imageops::resize(image, w, h, spec.filter)
    };
    let mask = if mask.dimensions() == (w, h) {
        mask.clone()
    } else {
        imageops::resize(mask, w, h, FilterType::Nearest)
    };
    Prepared { image, mask }
}

/// Where the S×S window sits and how it is flipped and turned; shared by image and mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Offset of the window in the prepared crop.
    pub top: u32,
    pub left: u32,
    pub hflip: bool,
    pub vflip: bool,
    /// Counter-clockwise quarter turns after the flips (0..=3).
    pub quarter_turns: u8,
}

/// The image-only steps of one view.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Photometric {
    /// The three jitter steps in the order they are applied.
    pub jitter: [Jitter; 3],
    pub sharpness: f32,
    /// Gaussian kernel side (odd; 1 = no blur) and sigma.
    pub blur_kernel: usize,
    pub blur_sigma: f32,
    pub posterize_bits: u8,
}

impl Photometric {
    /// Steps that leave the pixels unchanged (for checks of the geometry alone).
    pub fn identity() -> Self {
        Self {
            jitter: [
                Jitter::Brightness(1.0),
                Jitter::Contrast(1.0),
                Jitter::Saturation(1.0),
            ],
            sharpness: 1.0,
            blur_kernel: 1,
            blur_sigma: 1.0,
            posterize_bits: 8,
        }
    }
}

/// All random choices of one training view.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainParams {
    pub geometry: Geometry,
    pub photometric: Photometric,
}

impl TrainParams {
    /// Draws one view's choices in the reference's order.
    pub fn sample<R: Rng + ?Sized>(rng: &mut R, spec: &TransformSpec) -> Self {
        let k = (spec.resize_size() - spec.image_size) as f32;
        // int(torch.rand(1) * k): an offset in [0, k).
        let top = ((rng.gen::<f32>() * k) as u32).min((k as u32).saturating_sub(1));
        let left = ((rng.gen::<f32>() * k) as u32).min((k as u32).saturating_sub(1));
        let hflip = rng.gen::<f32>() < 0.5;
        let vflip = rng.gen::<f32>() < 0.5;
        let mut jitter = [
            Jitter::Brightness(rng.gen_range(0.6..1.4)),
            Jitter::Contrast(rng.gen_range(0.6..1.4)),
            Jitter::Saturation(rng.gen_range(0.6..1.8)),
        ];
        jitter.shuffle(rng);
        let r = rng.gen::<f32>();
        let quarter_turns = if r < 0.25 {
            1
        } else if r < 0.5 {
            2
        } else if r < 0.75 {
            3
        } else {
            0
        };
        let sharpness = 0.2 + rng.gen::<f32>() * 1.8;
        let blur_kernel = *BLUR_KERNELS.choose(rng).expect("non-empty");
        let blur_sigma = rng.gen_range(0.1..2.0);
        let posterize_bits = *POSTERIZE_BITS.choose(rng).expect("non-empty");
        Self {
            geometry: Geometry {
                top,
                left,
                hflip,
                vflip,
                quarter_turns,
            },
            photometric: Photometric {
                jitter,
                sharpness,
                blur_kernel,
                blur_sigma,
                posterize_bits,
            },
        }
    }
}

/// Source pixel (in the prepared crop) of output pixel `(x, y)`: the inverse of crop, flips and
/// counter-clockwise turns (a turn sends `(x, y)` to `(y, S − 1 − x)`).
fn source_of(g: &Geometry, s: u32, mut x: u32, mut y: u32) -> (u32, u32) {
    for _ in 0..g.quarter_turns % 4 {
        (x, y) = (s - 1 - y, x);
    }
    if g.vflip {
        y = s - 1 - y;
    }
    if g.hflip {
        x = s - 1 - x;
    }
    (x + g.left, y + g.top)
}

/// The S×S window of `img` under `g`, in one pass over the output (the same pixel moves as the
/// image crate's crop, flips and rotations would make, without their intermediate copies).
fn crop_turn<P>(
    img: &image::ImageBuffer<P, Vec<u8>>,
    g: &Geometry,
    s: u32,
) -> image::ImageBuffer<P, Vec<u8>>
where
    P: image::Pixel<Subpixel = u8>,
{
    let c = P::CHANNEL_COUNT as usize;
    let (src, w) = (img.as_raw(), img.width() as usize);
    let mut out = vec![0u8; s as usize * s as usize * c];
    for (i, px) in out.chunks_exact_mut(c).enumerate() {
        let (sx, sy) = source_of(g, s, i as u32 % s, i as u32 / s);
        let at = (sy as usize * w + sx as usize) * c;
        px.copy_from_slice(&src[at..at + c]);
    }
    image::ImageBuffer::from_raw(s, s, out).expect("buffer of S×S pixels")
}

/// One training view of a prepared crop: `image_out` gets `3×S×S` normalised values (CHW),
/// `mask_out` `S×S` values in [0, 1] (the mask's levels / 255).
pub fn apply_train(
    p: &Prepared,
    params: &TrainParams,
    spec: &TransformSpec,
    image_out: &mut [f32],
    mask_out: &mut [f32],
) {
    let s = spec.image_size;
    let g = &params.geometry;
    let ph = &params.photometric;
    // Jitter comes before the rotation in the reference; both commute with it (the contrast mean
    // does not depend on the orientation), so the geometry is applied in one go first.
    let mut img = crop_turn(&p.image, g, s);
    for j in ph.jitter {
        jitter(&mut img, j);
    }
    sharpness(&mut img, ph.sharpness);
    gaussian_blur(&mut img, ph.blur_kernel, ph.blur_sigma);
    posterize(&mut img, ph.posterize_bits);
    write_normalised(&img, image_out);
    write_mask(&crop_turn(&p.mask, g, s), mask_out);
}

/// The test view: the window at `(resize_size − S) / 2` on both axes, normalised.
pub fn apply_test(p: &Prepared, spec: &TransformSpec, image_out: &mut [f32], mask_out: &mut [f32]) {
    let k = (spec.resize_size() - spec.image_size) / 2;
    let g = Geometry {
        top: k,
        left: k,
        hflip: false,
        vflip: false,
        quarter_turns: 0,
    };
    write_normalised(&crop_turn(&p.image, &g, spec.image_size), image_out);
    write_mask(&crop_turn(&p.mask, &g, spec.image_size), mask_out);
}

fn write_normalised(img: &RgbImage, out: &mut [f32]) {
    let plane = (img.width() * img.height()) as usize;
    assert_eq!(out.len(), 3 * plane, "image buffer of the wrong size");
    let lut: [[f32; 256]; 3] = std::array::from_fn(|c| {
        std::array::from_fn(|v| (v as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c])
    });
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = lut[c][px[c] as usize];
        }
    }
}

fn write_mask(mask: &GrayImage, out: &mut [f32]) {
    assert_eq!(
        out.len(),
        mask.as_raw().len(),
        "mask buffer of the wrong size"
    );
    for (o, &v) in out.iter_mut().zip(mask.as_raw()) {
        *o = f32::from(v) / 255.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn spec32() -> TransformSpec {
        TransformSpec::new(32)
    }

    /// A prepared crop whose red and green values are its x and y, and an asymmetric mask.
    fn coded(side: u32) -> Prepared {
        let image = RgbImage::from_fn(side, side, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mask = GrayImage::from_fn(side, side, |x, y| {
            image::Luma([255 * u8::from((x * 7 + y * 3) % 5 == 0 || x < 6)])
        });
        Prepared { image, mask }
    }

    fn raw_value(v: f32, c: usize) -> u8 {
        ((v * IMAGENET_STD[c] + IMAGENET_MEAN[c]) * 255.0).round() as u8
    }
    #[test]
    fn resize_keeps_the_aspect_with_the_shorter_side_at_resize_size() {
        assert_eq!(TransformSpec::new(224).resize_size(), 256);
        assert_eq!(resized_dims((300, 200), 256), (384, 256));
        assert_eq!(resized_dims((100, 400), 256), (256, 1024));
        let p = prepare(
            &RgbImage::new(50, 70),
            &GrayImage::new(50, 70),
            &TransformSpec::new(224),
        );
        assert_eq!(p.image.dimensions(), (256, 358));
        assert_eq!(p.mask.dimensions(), (256, 358));
    }

    #[test]
    fn the_mask_follows_every_geometry_of_the_image() {
        let spec = spec32();
        let p = coded(spec.resize_size());
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let n = spec.mask_len();
        let (mut img, mut mask) = (vec![0f32; 3 * n], vec![0f32; n]);
        let mut corners = std::collections::HashSet::new();
        for _ in 0..64 {
            let mut params = TrainParams::sample(&mut rng, &spec);
            params.photometric = Photometric::identity();
            apply_train(&p, &params, &spec, &mut img, &mut mask);
            for i in 0..n {
                let (sx, sy) = (raw_value(img[i], 0) as u32, raw_value(img[n + i], 1) as u32);
                assert_eq!(
                    mask[i],
                    p.mask.get_pixel(sx, sy)[0] as f32 / 255.0,
                    "pixel {i} from ({sx},{sy})"
                );
            }
            corners.insert((raw_value(img[0], 0), raw_value(img[n], 1)));
        }
        assert!(corners.len() > 8, "the geometry varies: {corners:?}");
    }

    #[test]
    fn photometric_steps_leave_the_mask_alone_and_change_the_image() {
        let spec = spec32();
        let p = coded(spec.resize_size());
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let n = spec.mask_len();
        for _ in 0..16 {
            let params = TrainParams::sample(&mut rng, &spec);
            let plain = TrainParams {
                photometric: Photometric::identity(),
                ..params
            };
            let (mut i1, mut m1, mut i2, mut m2) = (
                vec![0f32; 3 * n],
                vec![0f32; n],
                vec![0f32; 3 * n],
                vec![0f32; n],
            );
            apply_train(&p, &params, &spec, &mut i1, &mut m1);
            apply_train(&p, &plain, &spec, &mut i2, &mut m2);
            assert_eq!(m1, m2);
            assert!(m1.iter().all(|&v| v == 0.0 || v == 1.0));
            assert_ne!(i1, i2);
        }
    }

    #[test]
    fn sampled_choices_stay_in_the_reference_ranges_and_repeat_with_the_seed() {
        let spec = TransformSpec::new(224);
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..200)
                .map(|_| TrainParams::sample(&mut rng, &spec))
                .collect::<Vec<_>>()
        };
        let a = draw(5);
        assert_eq!(a, draw(5));
        assert_ne!(a, draw(6));
        for t in &a {
            assert!(t.geometry.top < 32 && t.geometry.left < 32);
            assert!(t.geometry.quarter_turns < 4);
            let ph = &t.photometric;
            assert!((0.2..=2.0).contains(&ph.sharpness));
            assert!(BLUR_KERNELS.contains(&ph.blur_kernel) && (0.1..2.0).contains(&ph.blur_sigma));
            assert!(POSTERIZE_BITS.contains(&ph.posterize_bits));
            for j in ph.jitter {
                match j {
                    Jitter::Brightness(f) | Jitter::Contrast(f) => assert!((0.6..1.4).contains(&f)),
                    Jitter::Saturation(f) => assert!((0.6..1.8).contains(&f)),
                }
            }
        }
        assert!(a.iter().any(|t| t.geometry.hflip) && a.iter().any(|t| !t.geometry.hflip));
        assert!((0..4).all(|q| a.iter().any(|t| t.geometry.quarter_turns == q)));
    }

    #[test]
    fn turns_are_counter_clockwise_and_match_the_image_crate() {
        let img = RgbImage::from_fn(3, 3, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let g = |q, hflip, vflip| Geometry {
            top: 0,
            left: 0,
            hflip,
            vflip,
            quarter_turns: q,
        };
        // Pillow's rotate(90) brings the top-right corner to the top-left.
        assert_eq!(
            crop_turn(&img, &g(1, false, false), 3).get_pixel(0, 0).0,
            [2, 0, 0]
        );
        assert_eq!(
            crop_turn(&img, &g(1, false, false), 3),
            imageops::rotate270(&img)
        );
        assert_eq!(
            crop_turn(&img, &g(2, false, false), 3),
            imageops::rotate180(&img)
        );
        assert_eq!(
            crop_turn(&img, &g(3, true, false), 3),
            imageops::rotate90(&imageops::flip_horizontal(&img))
        );
        assert_eq!(
            crop_turn(&img, &g(0, false, true), 3),
            imageops::flip_vertical(&img)
        );
        let big = RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let win = Geometry {
            top: 1,
            left: 2,
            ..g(0, false, false)
        };
        assert_eq!(
            crop_turn(&big, &win, 3),
            imageops::crop_imm(&big, 2, 1, 3, 3).to_image()
        );
    }

    #[test]
    fn test_view_is_the_middle_window() {
        let spec = spec32();
        let p = coded(spec.resize_size());
        let n = spec.mask_len();
        let (mut img, mut mask) = (vec![0f32; 3 * n], vec![0f32; n]);
        apply_test(&p, &spec, &mut img, &mut mask);
        let k = (spec.resize_size() - spec.image_size) / 2;
        assert_eq!(
            (raw_value(img[0], 0) as u32, raw_value(img[n], 1) as u32),
            (k, k)
        );
        assert_eq!(mask[0], p.mask.get_pixel(k, k)[0] as f32 / 255.0);
    }
}
