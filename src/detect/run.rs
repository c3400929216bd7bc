//! The detect job: list and check the folders, fit the memory bank, score the test images, write
//! the maps and `detect.json`, evaluate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use image::{imageops::FilterType, GrayImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::eval::{auroc, PixelSet};
use super::features::{load_batch, FeatureExtractor};
use super::{coreset, maps, nearest_distances, NORMAL_TYPE};
use crate::error::{Error, Result};
use crate::fsutil::{atomic_write, prepare_output_dir, save_image_atomic};
use crate::imageio::{describe_files, TypedFile, IMAGE_EXTENSIONS, MAP_EXTENSIONS};
use crate::mebin::folders::list_files;

/// The run summary written into OUT.
pub const REPORT_FILE: &str = "detect.json";

/// What to run.
#[derive(Debug, Clone)]
pub struct DetectSpec {
    pub train: PathBuf,
    pub test: PathBuf,
    pub out: PathBuf,
    pub masks: Option<PathBuf>,
    pub backbone: String,
    /// None: random weights (tests only).
    pub weights: Option<PathBuf>,
    pub image_size: u32,
    pub stages: Vec<usize>,
    pub coreset: f64,
    pub max_patches: usize,
    pub batch_size: usize,
    pub seed: u64,
    pub write_good_maps: bool,
    pub overwrite: bool,
    pub device: Device,
}

/// Score of one test image and where its map went.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageScore {
    #[serde(rename = "type")]
    pub type_name: String,
    pub stem: String,
    pub score: f32,
    /// Path of the map relative to OUT; None for normal images (see `write_good_maps`).
    pub map: Option<PathBuf>,
}

/// Metrics; each None when the test set lacks what it needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Metrics {
    pub image_auroc: Option<f64>,
    pub pixel_auroc: Option<f64>,
    pub aupro: Option<f64>,
    pub normal_test_images: usize,
    pub defect_test_images: usize,
}

/// `detect.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DetectReport {
    pub backbone: String,
    pub weights: String,
    pub image_size: u32,
    pub stages: Vec<usize>,
    pub feature_dim: i64,
    pub grid: i64,
    pub coreset_fraction: f64,
    pub max_patches: usize,
    pub seed: u64,
    pub train_images: usize,
    pub pool_patches: usize,
    pub memory_bank: usize,
    /// Range of the raw map values mapped to 0..=255 (over all test maps).
    pub scale: (f32, f32),
    pub metrics: Metrics,
    pub seconds: HashMap<String, f64>,
    pub images: Vec<ImageScore>,
    /// Files written into OUT (relative), so a rerun removes what it no longer writes.
    pub output_files: Vec<PathBuf>,
}

fn check_spec(s: &DetectSpec) -> Result<()> {
    if !(32..=2048).contains(&s.image_size) {
        return Err(Error::usage(format!(
            "--image-size {}: use 32..=2048 pixels (e.g. 256)",
            s.image_size
        )));
    }
    if !(s.coreset > 0.0 && s.coreset <= 1.0) {
        return Err(Error::usage(format!(
            "--coreset {}: give a fraction in (0, 1], e.g. 0.1",
            s.coreset
        )));
    }
    if s.max_patches == 0 || s.batch_size == 0 {
        return Err(Error::usage(
            "--max-patches and --batch-size must be at least 1",
        ));
    }
    if !super::features::BACKBONES.contains(&s.backbone.as_str()) {
        return Err(Error::usage(format!(
            "--backbone {}: use one of {}",
            s.backbone,
            super::features::BACKBONES.join(", ")
        )));
    }
    Ok(())
}

fn list_images(root: &Path, flag: &str) -> Result<Vec<TypedFile>> {
    let files = list_files(root, IMAGE_EXTENSIONS)?;
    if files.is_empty() {
        return Err(Error::input(
            root,
            format!("{flag}: no images found (expected <folder>/<type>/<stem>.<png|jpg|bmp|tif> or a flat folder of images)"),
        ));
    }
    Ok(files)
}

fn is_normal(f: &TypedFile) -> bool {
    f.type_name == NORMAL_TYPE
}

/// The mask of every defective test image (normal ones may have none); an error lists the
/// defective images without one.
fn pair_masks(masks: &Path, test: &[TypedFile]) -> Result<Vec<Option<PathBuf>>> {
    let files = list_files(masks, MAP_EXTENSIONS)?;
    let by_key: HashMap<(&str, &str), &Path> = files
        .iter()
        .map(|f| ((f.type_name.as_str(), f.stem.as_str()), f.path.as_path()))
        .collect();
    let mut missing = Vec::new();
    let out = test
        .iter()
        .map(|f| {
            let m = by_key.get(&(f.type_name.as_str(), f.stem.as_str()));
            if m.is_none() && !is_normal(f) {
                missing.push(f.clone());
            }
            m.map(|p| p.to_path_buf())
        })
        .collect();
    if !missing.is_empty() {
        return Err(Error::input(
            masks,
            format!(
                "no mask for test image(s) {}; expected --masks <type>/<stem>.png for every defective image \
                 (0 = normal, 255 = defect), or drop --masks",
                describe_files(&missing, Path::new(""), 5)
            ),
        ));
    }
    Ok(out)
}

/// Patches each training image contributes to the pool: all of its `per_image`, or
/// `max_patches / n_images` (at least 1) when the pool would exceed `max_patches`.
fn per_image_keep(n_images: usize, per_image: usize, max_patches: usize) -> usize {
    (max_patches / n_images.max(1)).clamp(1, per_image)
}

/// One image's share of the pool: its `rows [P, dim]` (row-major) reduced to `keep` rows by
/// greedy k-center from a seeded random patch, so rare normal patterns survive (a random subset
/// would drop them).
fn image_share(rows: &[f32], dim: usize, keep: usize, seed: u64, img: usize) -> Vec<f32> {
    let p = rows.len() / dim;
    if keep >= p {
        return rows.to_vec();
    }
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ (img as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let start = rng.gen_range(0..p);
    coreset::greedy_k_center(rows, dim, keep, start, || {})
        .into_iter()
        .flat_map(|i| rows[i * dim..(i + 1) * dim].iter().copied())
        .collect()
}

/// `[B, D, G, G] -> [B, G*G, D]`
fn patches(f: &Tensor) -> Tensor {
    let s = f.size();
    f.view([s[0], s[1], s[2] * s[3]]).permute([0, 2, 1])
}

fn fit(spec: &DetectSpec, fx: &FeatureExtractor, train: &[TypedFile]) -> Result<Tensor> {
    let pb = crate::logging::progress(train.len() as u64, "features");
    let dim = fx.dim() as usize;
    let per_image = (fx.grid(spec.image_size as i64).pow(2)) as usize;
    let keep = per_image_keep(train.len(), per_image, spec.max_patches);
    let mut pool: Vec<f32> = Vec::with_capacity(keep * train.len() * dim);
    for (b, chunk) in train.chunks(spec.batch_size).enumerate() {
        let paths: Vec<&Path> = chunk.iter().map(|f| f.path.as_path()).collect();
        let x = load_batch(&paths, spec.image_size)?;
        let p = patches(&fx.forward(&x)).contiguous().to_device(Device::Cpu);
        let flat: Vec<f32> = Vec::try_from(p.flatten(0, -1))
            .map_err(|e| Error::runtime(format!("reading patch features: {e}")))?;
        let shares: Vec<Vec<f32>> = flat
            .par_chunks(per_image * dim)
            .enumerate()
            .map(|(i, rows)| image_share(rows, dim, keep, spec.seed, b * spec.batch_size + i))
            .collect();
        shares.iter().for_each(|s| pool.extend_from_slice(s));
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    let n = (pool.len() / dim) as i64;
    Ok(Tensor::from_slice(&pool)
        .view([n, dim as i64])
        .to_device(fx.device))
}

/// The float maps of the test images, spilled to a hidden file in OUT as they are scored: the
/// 8-bit maps need the scale over all of them, and holding them in memory would cost
/// 4 × size² bytes per test image (262 KB at 256) with no bound. Removed when dropped.
struct MapSpill {
    path: PathBuf,
    file: std::sync::Mutex<std::fs::File>,
    /// Floats per map.
    len: usize,
    count: usize,
    lo: f32,
    hi: f32,
}

impl MapSpill {
    const FILE: &'static str = ".anomalyncd-detect-maps.f32";

    fn create(dir: &Path, len: usize) -> Result<MapSpill> {
        let path = dir.join(Self::FILE);
        let file = std::fs::File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(MapSpill {
            path,
            file: std::sync::Mutex::new(file),
            len,
            count: 0,
            lo: f32::INFINITY,
            hi: f32::NEG_INFINITY,
        })
    }

    fn push(&mut self, map: &[f32]) -> Result<()> {
        use std::io::Write;
        debug_assert_eq!(map.len(), self.len);
        for &v in map {
            self.lo = self.lo.min(v);
            self.hi = self.hi.max(v);
        }
        let bytes: Vec<u8> = map.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        f.write_all(&bytes).map_err(|e| Error::io(&self.path, e))?;
        self.count += 1;
        Ok(())
    }

    /// Map `i` in push order.
    fn read(&self, i: usize) -> Result<Vec<f32>> {
        use std::io::{Read, Seek, SeekFrom};
        if i >= self.count {
            return Err(Error::runtime(format!(
                "map {i} of {} requested from {}",
                self.count,
                self.path.display()
            )));
        }
        let mut bytes = vec![0u8; self.len * 4];
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        f.seek(SeekFrom::Start((i * self.len * 4) as u64))
            .and_then(|_| f.read_exact(&mut bytes))
            .map_err(|e| Error::io(&self.path, e))?;
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}

impl Drop for MapSpill {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Patch-score maps `[size*size]` (spilled into `out`) and image scores of the test images.
fn score(
    spec: &DetectSpec,
    fx: &FeatureExtractor,
    bank: &Tensor,
    test: &[TypedFile],
) -> Result<(MapSpill, Vec<f32>)> {
    let bank_sq = (bank * bank).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    let size = spec.image_size as i64;
    let pb = crate::logging::progress(test.len() as u64, "scoring");
    let mut spill = MapSpill::create(&spec.out, (size * size) as usize)?;
    let mut scores = Vec::with_capacity(test.len());
    for chunk in test.chunks(spec.batch_size) {
        let paths: Vec<&Path> = chunk.iter().map(|f| f.path.as_path()).collect();
        let x = load_batch(&paths, spec.image_size)?;
        let f = tch::no_grad(|| fx.forward(&x));
        let g = f.size()[2];
        let p = patches(&f).flatten(0, 1);
        let d =
            tch::no_grad(|| nearest_distances(&p, bank, &bank_sq)).view([chunk.len() as i64, g, g]);
        let img_scores: Vec<f32> =
            Vec::try_from(d.amax([1i64, 2].as_slice(), false).to_device(Device::Cpu))
                .map_err(|e| Error::runtime(format!("reading image scores: {e}")))?;
        let m = tch::no_grad(|| maps::patch_scores_to_maps(&d, size));
        for i in 0..chunk.len() as i64 {
            let v: Vec<f32> = Vec::try_from(m.get(i).flatten(0, -1))
                .map_err(|e| Error::runtime(format!("reading a map: {e}")))?;
            spill.push(&v)?;
        }
        scores.extend(img_scores);
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    Ok((spill, scores))
}

fn map_path(f: &TypedFile) -> PathBuf {
    let name = format!("{}.png", f.stem);
    if f.type_name.is_empty() {
        PathBuf::from(name)
    } else {
        Path::new(&f.type_name).join(name)
    }
}

/// A mask at `size`×`size` (nearest neighbour, so it stays binary), or an empty one.
fn mask_at(path: Option<&Path>, size: u32) -> Result<GrayImage> {
    let Some(p) = path else {
        return Ok(GrayImage::new(size, size));
    };
    let m = crate::imageio::read_map(p)?;
    let max = m.depth.max_level() as u32;
    let img = GrayImage::from_fn(m.width as u32, m.height as u32, |x, y| {
        image::Luma([if 2 * m.get(x as usize, y as usize) as u32 > max {
            255
        } else {
            0
        }])
    });
    Ok(image::imageops::resize(
        &img,
        size,
        size,
        FilterType::Nearest,
    ))
}

fn evaluate(
    spec: &DetectSpec,
    test: &[TypedFile],
    scores: &[f32],
    maps: &MapSpill,
    masks: Option<&[Option<PathBuf>]>,
) -> Result<Metrics> {
    let normal: Vec<bool> = test.iter().map(is_normal).collect();
    let n_normal = normal.iter().filter(|&&n| n).count();
    let mut m = Metrics {
        normal_test_images: n_normal,
        defect_test_images: test.len() - n_normal,
        ..Default::default()
    };
    let defect: Vec<bool> = normal.iter().map(|n| !n).collect();
    m.image_auroc = auroc(scores, &defect);
    if m.image_auroc.is_none() {
        log::info!(
            "image AUROC skipped: it needs both normal test images (a `{NORMAL_TYPE}` folder in --test) and defective ones"
        );
    }
    if let Some(masks) = masks {
        let pb = crate::logging::progress(test.len() as u64, "pixel eval");
        let resized: Vec<GrayImage> = masks
            .par_iter()
            .map(|p| {
                let r = mask_at(p.as_deref(), spec.image_size);
                pb.inc(1);
                r
            })
            .collect::<Result<_>>()?;
        pb.finish_and_clear();
        let mut set = PixelSet::default();
        for (i, mask) in resized.iter().enumerate() {
            set.add(&maps.read(i)?, mask);
        }
        match set.metrics() {
            Some(pm) => {
                m.pixel_auroc = Some(pm.auroc);
                m.aupro = Some(pm.aupro);
            }
            None => {
                log::info!("pixel metrics skipped: the masks hold no defect pixel or no normal one")
            }
        }
    }
    Ok(m)
}

fn weights_name(spec: &DetectSpec) -> String {
    spec.weights
        .as_ref()
        .map_or("random (test only)".into(), |p| {
            crate::fsutil::absolute(p).display().to_string()
        })
}

/// Runs the detector; see the module doc of [`crate::detect`].
pub fn run(spec: &DetectSpec) -> Result<DetectReport> {
    check_spec(spec)?;
    let train = list_images(&spec.train, "--train")?;
    let test = list_images(&spec.test, "--test")?;
    let masks = match &spec.masks {
        Some(dir) => Some(pair_masks(dir, &test)?),
        None => None,
    };
    // Seeded so random weights (tests) are the same in every run; loads the weights before OUT
    // is touched, so a bad weights file or stage list leaves no output folder behind.
    tch::manual_seed(spec.seed as i64);
    let fx = FeatureExtractor::new(&spec.stages, spec.weights.as_deref(), spec.device)?;
    let mut inputs = vec![
        ("--train", spec.train.as_path()),
        ("--test", spec.test.as_path()),
    ];
    if let Some(m) = &spec.masks {
        inputs.push(("--masks", m.as_path()));
    }
    let fingerprint = serde_json::json!({
        "train": crate::fsutil::absolute_value(&spec.train), "test": crate::fsutil::absolute_value(&spec.test),
        "masks": spec.masks.as_deref().map(crate::fsutil::absolute_value), "weights": weights_name(spec),
        "image_size": spec.image_size, "stages": spec.stages, "coreset": spec.coreset,
        "max_patches": spec.max_patches, "seed": spec.seed, "write_good_maps": spec.write_good_maps,
    });
    prepare_output_dir(&spec.out, &inputs, "detect", &fingerprint, spec.overwrite)?;
    let previous: Option<DetectReport> = std::fs::read_to_string(spec.out.join(REPORT_FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());

    let mut seconds = HashMap::new();
    let t = Instant::now();
    log::info!(
        "fitting on {} normal images from {}",
        train.len(),
        spec.train.display()
    );
    let pool = fit(spec, &fx, &train)?;
    seconds.insert("features".to_string(), t.elapsed().as_secs_f64());

    let t = Instant::now();
    let n_pool = pool.size()[0] as usize;
    let k = coreset::coreset_size(n_pool, spec.coreset);
    let pb = crate::logging::progress(k as u64, "coreset");
    let bank = coreset::subsample(&pool, spec.coreset, spec.seed, || pb.inc(1));
    pb.finish_and_clear();
    drop(pool);
    seconds.insert("coreset".to_string(), t.elapsed().as_secs_f64());
    log::info!(
        "memory bank: {} of {n_pool} patches ({} dims)",
        bank.size()[0],
        fx.dim()
    );

    let t = Instant::now();
    let (maps_spill, scores) = score(spec, &fx, &bank, &test)?;
    seconds.insert("scoring".to_string(), t.elapsed().as_secs_f64());

    let t = Instant::now();
    let (lo, hi) = (maps_spill.lo, maps_spill.hi);
    let size = spec.image_size;
    let mut images = Vec::with_capacity(test.len());
    for (f, &s) in test.iter().zip(&scores) {
        let write = spec.write_good_maps || !is_normal(f);
        images.push(ImageScore {
            type_name: f.type_name.clone(),
            stem: f.stem.clone(),
            score: s,
            map: write.then(|| map_path(f)),
        });
    }
    let pb = crate::logging::progress(test.len() as u64, "writing maps");
    images
        .par_iter()
        .enumerate()
        .try_for_each(|(i, im)| -> Result<()> {
            if let Some(rel) = &im.map {
                let levels = maps::to_u8(&maps_spill.read(i)?, lo, hi);
                let img =
                    GrayImage::from_raw(size, size, levels).expect("map has size*size levels");
                save_image_atomic(&image::DynamicImage::ImageLuma8(img), &spec.out.join(rel))?;
            }
            pb.inc(1);
            Ok(())
        })?;
    pb.finish_and_clear();
    seconds.insert("writing".to_string(), t.elapsed().as_secs_f64());

    let t = Instant::now();
    let metrics = evaluate(spec, &test, &scores, &maps_spill, masks.as_deref())?;
    drop(maps_spill);
    seconds.insert("evaluation".to_string(), t.elapsed().as_secs_f64());

    let mut output_files: Vec<PathBuf> = images.iter().filter_map(|i| i.map.clone()).collect();
    output_files.push(PathBuf::from(REPORT_FILE));
    let report = DetectReport {
        backbone: spec.backbone.clone(),
        weights: weights_name(spec),
        image_size: spec.image_size,
        stages: spec.stages.clone(),
        feature_dim: fx.dim(),
        grid: fx.grid(spec.image_size as i64),
        coreset_fraction: spec.coreset,
        max_patches: spec.max_patches,
        seed: spec.seed,
        train_images: train.len(),
        pool_patches: n_pool,
        memory_bank: bank.size()[0] as usize,
        scale: (lo, hi),
        metrics,
        seconds,
        images,
        output_files,
    };
    let body = serde_json::to_vec_pretty(&report).expect("report serialises");
    atomic_write(&spec.out.join(REPORT_FILE), &body)?;
    if let Some(prev) = previous {
        crate::mebin::run::remove_stale(&spec.out, &prev.output_files, &report.output_files);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_image_keeps_its_share_of_the_pool() {
        // 10 images of 100 patches, at most 250 patches: 25 per image.
        assert_eq!(per_image_keep(10, 100, 250), 25);
        assert_eq!(per_image_keep(10, 100, 5000), 100);
        assert_eq!(per_image_keep(10, 100, 3), 1);
        // 6 patches in 2-d, 3 kept: the far corners survive whatever the random start.
        let rows = [0.0, 0.0, 0.1, 0.0, 0.0, 0.1, 9.0, 0.0, 0.0, 9.0, 0.1, 0.1];
        for img in 0..5 {
            let share = image_share(&rows, 2, 3, 1, img);
            assert_eq!(share.len(), 6);
            let has = |x: f32, y: f32| share.chunks(2).any(|r| r == [x, y]);
            assert!(has(9.0, 0.0) && has(0.0, 9.0), "{share:?}");
        }
        assert_eq!(image_share(&rows, 2, 6, 1, 0), rows);
    }
}
