//! A deterministic synthetic industrial dataset, so the demo and the tests run anywhere with no
//! download: a textured product surface, four novel defect types with masks and imitation anomaly
//! maps (MVTec layout), and a labelled base set of three other defect types.
//!
//! Layout written under OUT:
//! `train/good/`, `test/<type>/`, `ground_truth/<type>/`, `anomaly_maps/<type>/` (same stems),
//! `base/images/<class>/`, `base/masks/<class>/`.

mod draw;

use std::path::{Path, PathBuf};

use image::{DynamicImage, GrayImage, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

pub use draw::Defect;
use draw::{gaussian_blur, Canvas, Plane};

use crate::error::Result;
use crate::fsutil::{prepare_output_dir, save_image_atomic};

#[derive(Debug, Clone)]
pub struct SynthSpec {
    pub seed: u64,
    pub per_type: usize,
    pub normal: usize,
    pub per_base_class: usize,
    pub size: u32,
}

/// Side of the imitation anomaly maps (a detector usually works at a fixed resolution).
pub const MAP_SIZE: u32 = 128;

/// One job: which image to make and where.
#[derive(Debug, Clone)]
enum Job {
    Normal { idx: usize },
    Novel { defect: Defect, idx: usize },
    Base { defect: Defect, idx: usize },
}

fn job_seed(seed: u64, job: &Job) -> u64 {
    let (kind, d, idx) = match job {
        Job::Normal { idx } => (1u64, 0u64, *idx),
        Job::Novel { defect, idx } => (2, *defect as u64, *idx),
        Job::Base { defect, idx } => (3, *defect as u64, *idx),
    };
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (kind << 56) ^ (d << 48) ^ idx as u64
}

fn to_rgb(c: &Canvas) -> RgbImage {
    RgbImage::from_fn(c.w as u32, c.h as u32, |x, y| {
        let p = c.px[y as usize * c.w + x as usize];
        image::Rgb([
            p[0].clamp(0.0, 255.0) as u8,
            p[1].clamp(0.0, 255.0) as u8,
            p[2].clamp(0.0, 255.0) as u8,
        ])
    })
}

fn to_mask(cov: &Plane, w: usize, h: usize) -> GrayImage {
    GrayImage::from_fn(w as u32, h as u32, |x, y| {
        image::Luma([if cov[y as usize * w + x as usize] >= 0.5 {
            255
        } else {
            0
        }])
    })
}

/// Places `n` defect centres at least `min_gap` apart, away from the border.
fn centres(n: usize, size: f32, rng: &mut ChaCha8Rng) -> Vec<(f32, f32)> {
    let margin = size * 0.2;
    let mut out: Vec<(f32, f32)> = Vec::new();
    while out.len() < n {
        let p = (
            rng.gen_range(margin..size - margin),
            rng.gen_range(margin..size - margin),
        );
        if out
            .iter()
            .all(|q| ((p.0 - q.0).powi(2) + (p.1 - q.1).powi(2)).sqrt() > size * 0.45)
        {
            out.push(p);
        }
    }
    out
}

/// Square max filter of radius `r` (separable). Written here: it is a dozen lines on our `Plane`.
fn dilate(p: &Plane, w: usize, h: usize, r: usize) -> Plane {
    let mut rows = vec![0f32; w * h];
    for y in 0..h {
        for x in 0..w {
            let (a, b) = (x.saturating_sub(r), (x + r + 1).min(w));
            rows[y * w + x] = p[y * w + a..y * w + b].iter().cloned().fold(0.0, f32::max);
        }
    }
    let mut out = vec![0f32; w * h];
    for y in 0..h {
        let (a, b) = (y.saturating_sub(r), (y + r + 1).min(h));
        for x in 0..w {
            out[y * w + x] = (a..b).map(|yy| rows[yy * w + x]).fold(0.0, f32::max);
        }
    }
    out
}

/// An imitation detector output on one global scale: the blurred mask scaled by a per-image
/// strength, smooth noise and a few weak false positives, resampled to MAP_SIZE.
fn anomaly_map(mask: &Plane, w: usize, h: usize, rng: &mut ChaCha8Rng) -> GrayImage {
    let sigma = w as f32 / 60.0;
    let strength = rng.gen_range(0.6..1.0f32);
    // A detector answers at the resolution of its feature patches (8–16 px), so even a 1-pixel
    // crack lights up a band several pixels wide: widen the mask by about a patch first. Thin
    // defects (cracks, scratches) then blur to low values: rescale so the defect peaks at its
    // strength, as a detector's response does.
    let widened = dilate(mask, w, h, (w / 32).max(1));
    let blurred = gaussian_blur(&widened, w, h, sigma);
    let peak = blurred.iter().cloned().fold(1e-6f32, f32::max);
    let mut m: Plane = blurred
        .iter()
        .map(|v| (v / peak * 1.6).min(1.0) * strength)
        .collect();
    let noise: Plane = (0..w * h).map(|_| rng.gen_range(-1.0..1.0f32)).collect();
    let noise = gaussian_blur(&noise, w, h, 2.0);
    for _ in 0..rng.gen_range(1..4) {
        let (fx, fy) = (rng.gen_range(0.0..w as f32), rng.gen_range(0.0..h as f32));
        let (amp, r) = (rng.gen_range(0.08..0.25f32), rng.gen_range(3.0..8.0f32));
        for y in 0..h {
            for x in 0..w {
                let d2 = (x as f32 - fx).powi(2) + (y as f32 - fy).powi(2);
                m[y * w + x] += amp * (-d2 / (2.0 * r * r)).exp();
            }
        }
    }
    let full = GrayImage::from_fn(w as u32, h as u32, |x, y| {
        let i = y as usize * w + x as usize;
        let v = 0.08 + m[i] * 0.85 + noise[i] * 0.12;
        image::Luma([(v.clamp(0.0, 1.0) * 255.0).round() as u8])
    });
    image::imageops::resize(
        &full,
        MAP_SIZE,
        MAP_SIZE,
        image::imageops::FilterType::Triangle,
    )
}

fn write_job(out: &Path, spec: &SynthSpec, job: &Job) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(job_seed(spec.seed, job));
    let s = spec.size as usize;
    let mut canvas = draw::surface(s, s, &mut rng);
    let stem = |idx: &usize| format!("{idx:03}.png");
    match job {
        Job::Normal { idx } => save_image_atomic(
            &DynamicImage::ImageRgb8(to_rgb(&canvas)),
            &out.join("train/good").join(stem(idx)),
        ),
        Job::Novel { defect, idx } | Job::Base { defect, idx } => {
            // about one novel image in four carries two defects of its type
            let n = if matches!(job, Job::Novel { .. }) && rng.gen_bool(0.25) {
                2
            } else {
                1
            };
            let mut mask = vec![0.0f32; s * s];
            for (cx, cy) in centres(n, s as f32, &mut rng) {
                let cov = defect.paint(&mut canvas, cx, cy, &mut rng);
                for (a, b) in mask.iter_mut().zip(cov) {
                    *a = f32::max(*a, b);
                }
            }
            let img = DynamicImage::ImageRgb8(to_rgb(&canvas));
            let binary: Plane = mask
                .iter()
                .map(|&v| if v >= 0.5 { 1.0 } else { 0.0 })
                .collect();
            let m = DynamicImage::ImageLuma8(to_mask(&mask, s, s));
            let name = defect.name();
            if matches!(job, Job::Novel { .. }) {
                save_image_atomic(&img, &out.join("test").join(name).join(stem(idx)))?;
                save_image_atomic(&m, &out.join("ground_truth").join(name).join(stem(idx)))?;
                let map = anomaly_map(&binary, s, s, &mut rng);
                save_image_atomic(
                    &DynamicImage::ImageLuma8(map),
                    &out.join("anomaly_maps").join(name).join(stem(idx)),
                )
            } else {
                save_image_atomic(&img, &out.join("base/images").join(name).join(stem(idx)))?;
                save_image_atomic(&m, &out.join("base/masks").join(name).join(stem(idx)))
            }
        }
    }
}

/// Writes the dataset; returns a one-paragraph summary naming the folders.
pub fn write_dataset(out: &Path, spec: &SynthSpec, overwrite: bool) -> Result<String> {
    if spec.size < 64 {
        return Err(crate::Error::usage(format!(
            "--size {}: must be at least 64 pixels",
            spec.size
        )));
    }
    if spec.per_type == 0 || spec.per_base_class == 0 {
        return Err(crate::Error::usage(
            "--per-type and --per-base-class must be at least 1",
        ));
    }
    let fingerprint = serde_json::json!({
        "seed": spec.seed, "per_type": spec.per_type, "normal": spec.normal,
        "per_base_class": spec.per_base_class, "size": spec.size,
    });
    prepare_output_dir(out, &[], "synth", &fingerprint, overwrite)?;
    let mut jobs: Vec<Job> = (0..spec.normal).map(|idx| Job::Normal { idx }).collect();
    for defect in Defect::NOVEL {
        jobs.extend((0..spec.per_type).map(|idx| Job::Novel { defect, idx }));
    }
    for defect in Defect::BASE {
        jobs.extend((0..spec.per_base_class).map(|idx| Job::Base { defect, idx }));
    }
    let pb = crate::logging::progress(jobs.len() as u64, "synth");
    jobs.par_iter().try_for_each(|j| {
        let r = write_job(out, spec, j);
        pb.inc(1);
        r
    })?;
    pb.finish_and_clear();
    let p = |s: &str| -> PathBuf { out.join(s) };
    Ok(format!(
        "synthetic dataset in {}: {} normal images ({}), {} novel types x {} defective images ({}, masks in {}, anomaly maps in {}), {} base classes x {} ({})",
        out.display(),
        spec.normal,
        p("train/good").display(),
        Defect::NOVEL.len(),
        spec.per_type,
        p("test").display(),
        p("ground_truth").display(),
        p("anomaly_maps").display(),
        Defect::BASE.len(),
        spec.per_base_class,
        p("base").display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> SynthSpec {
        SynthSpec {
            seed: 7,
            per_type: 2,
            normal: 1,
            per_base_class: 1,
            size: 64,
        }
    }

    #[test]
    fn same_seed_same_bytes_and_masks_are_binary() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        write_dataset(a.path(), &small(), false).unwrap();
        write_dataset(b.path(), &small(), false).unwrap();
        for rel in [
            "test/crack/001.png",
            "anomaly_maps/hole/000.png",
            "base/masks/smear/000.png",
        ] {
            assert_eq!(
                std::fs::read(a.path().join(rel)).unwrap(),
                std::fs::read(b.path().join(rel)).unwrap(),
                "{rel}"
            );
        }
        let m = image::open(a.path().join("ground_truth/scratch/000.png"))
            .unwrap()
            .to_luma8();
        assert!(m.pixels().all(|p| p[0] == 0 || p[0] == 255));
        assert!(
            m.pixels().any(|p| p[0] == 255),
            "a defect mask is not empty"
        );
        let map = image::open(a.path().join("anomaly_maps/scratch/000.png")).unwrap();
        assert_eq!((map.width(), map.height()), (MAP_SIZE, MAP_SIZE));
    }

    #[test]
    fn anomaly_map_is_high_on_the_defect() {
        let d = tempfile::tempdir().unwrap();
        write_dataset(d.path(), &small(), false).unwrap();
        for t in ["scratch", "hole", "stain", "crack"] {
            let m = image::open(d.path().join(format!("ground_truth/{t}/000.png")))
                .unwrap()
                .to_luma8();
            let map = image::open(d.path().join(format!("anomaly_maps/{t}/000.png")))
                .unwrap()
                .to_luma8();
            let map = image::imageops::resize(
                &map,
                m.width(),
                m.height(),
                image::imageops::FilterType::Triangle,
            );
            let (mut inside, mut outside) = (0u32, 0u32);
            for (a, b) in m.pixels().zip(map.pixels()) {
                if a[0] == 255 {
                    inside = inside.max(b[0] as u32)
                } else {
                    outside += b[0] as u32
                }
            }
            let mean_out = outside as f32 / (m.width() * m.height()) as f32;
            assert!(
                inside as f32 > mean_out + 60.0,
                "{t}: max inside {inside}, mean outside {mean_out}"
            );
        }
    }
}
