//! Batch loading: crops are decoded (or taken from a [`CropCache`]) and augmented in parallel on a
//! rayon pool of `num_workers` threads, while a background thread builds the next batch as the
//! current one trains ([`Prefetch`]).
//!
//! The random stream of a view depends only on (seed, epoch, batch, position in the batch), never
//! on the thread that computes it, so the same seed gives the same batches with any number of
//! workers.

use std::sync::Arc;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use super::dataset::{decode_pair, CropItem, CropSet};
use super::mix_seed;
use super::neighbours::NeighbourViews;
pub use super::prefetch::Prefetch;
use super::sampler::BalancedSampler;
use super::transform::{apply_test, apply_train, prepare, Prepared, TrainParams, TransformSpec};
use crate::config::Config;
use crate::error::{Error, Result};

/// Stream tag of the augmentations in [`mix_seed`].
const AUG_STREAM: u64 = 0x4155_4755;
/// Stream tag of the fixed bank of views of the frozen-prefix cache.
const BANK_STREAM: u64 = 0x4241_4e4b;

fn make_pool(num_workers: usize) -> Result<Arc<rayon::ThreadPool>> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(num_workers)
        .thread_name(|i| format!("anomalyncd-data-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| Error::runtime(format!("cannot start the data loading threads: {e}")))
}

/// New f32 CPU tensors of the given shapes, filled in place by `fill` through mutable slices of
/// their storage. `Tensor::from_slice` would copy each finished buffer: at 224 that copy of
/// 19 MB per view cost more than a quarter of the batch time in the benchmark.
fn filled_tensors<const N: usize>(
    shapes: [[i64; 4]; N],
    fill: impl FnOnce([&mut [f32]; N]) -> Result<()>,
) -> Result<[Tensor; N]> {
    let tensors = shapes.map(|s| Tensor::empty(s, (Kind::Float, Device::Cpu)));
    let slices = std::array::from_fn(|k| {
        let t = &tensors[k];
        let n = t.numel();
        if n == 0 {
            return &mut [][..];
        }
        // SAFETY: each tensor was just allocated above as its own contiguous f32 CPU storage of
        // `n` elements; no other tensor or slice refers to it, and the slices end with `fill`,
        // before the tensors are handed out.
        unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, n) }
    });
    fill(slices)?;
    Ok(tensors)
}

fn load_prepared(item: &CropItem, spec: &TransformSpec) -> Result<Prepared> {
    let (image, mask) = decode_pair(item)?;
    Ok(prepare(&image, &mask, spec))
}

/// Bytes of prepared crops a [`CropCache`] keeps (about 8000 crops at 224); crops beyond it are
/// decoded again each time they are used, so memory does not grow with the size of the set.
pub const CROP_CACHE_BYTES: usize = 2 << 30;

/// Every crop of a set decoded and resized once (the resize is the same for all views and
/// epochs); about 260 KB per crop at 224, kept up to [`CROP_CACHE_BYTES`].
#[derive(Debug)]
pub struct CropCache {
    /// None for the crops past the byte budget.
    prepared: Vec<Option<Prepared>>,
    spec: TransformSpec,
}

impl CropCache {
    /// Decodes all crops of `set` on `num_workers` threads (0: one per core); the first crop that
    /// cannot be read is the error.
    pub fn build(set: &CropSet, spec: &TransformSpec, num_workers: usize) -> Result<Self> {
        spec.check()?;
        let pool = make_pool(num_workers)?;
        let pb = crate::logging::progress(set.len() as u64, "decode");
        // Every crop is decoded (the first unreadable one is the error, before training), but
        // only the first CROP_CACHE_BYTES are kept. Which ones does not change any result: a
        // crop decodes to the same pixels each time.
        let used = std::sync::atomic::AtomicUsize::new(0);
        let prepared = pool.install(|| {
            set.items
                .par_iter()
                .map(|item| {
                    let p = load_prepared(item, spec)?;
                    let b = p.bytes();
                    let total = used.fetch_add(b, std::sync::atomic::Ordering::Relaxed) + b;
                    pb.inc(1);
                    Ok((total <= CROP_CACHE_BYTES).then_some(p))
                })
                .collect::<Result<Vec<_>>>()
        })?;
        pb.finish_and_clear();
        let cache = Self {
            prepared,
            spec: *spec,
        };
        log::debug!(
            "cached {} of {} crops ({:.1} MB)",
            cache.prepared.iter().flatten().count(),
            cache.len(),
            cache.bytes() as f64 / 1e6
        );
        Ok(cache)
    }

    pub fn len(&self) -> usize {
        self.prepared.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prepared.is_empty()
    }

    /// The prepared crop of `set.items[i]`, when it is kept.
    pub fn get(&self, i: usize) -> Option<&Prepared> {
        self.prepared[i].as_ref()
    }

    pub fn spec(&self) -> &TransformSpec {
        &self.spec
    }

    /// Bytes of the kept crops.
    pub fn bytes(&self) -> usize {
        self.prepared.iter().flatten().map(Prepared::bytes).sum()
    }
}

/// Batch size, threads, seed and look-ahead of a loader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoaderOptions {
    pub batch_size: usize,
    /// Decoding and augmentation threads (0: one per core).
    pub num_workers: usize,
    pub seed: u64,
    /// Batches built ahead of the one being consumed (at least 1).
    pub prefetch: usize,
}

impl LoaderOptions {
    /// `training.batch_size`, `training.num_workers`, `experiment.seed`, one batch ahead.
    pub fn from_config(cfg: &Config) -> Self {
        Self {
            batch_size: cfg.training.batch_size,
            num_workers: cfg.training.num_workers,
            seed: cfg.experiment.seed,
            prefetch: 1,
        }
    }
}

/// Where a loader takes prepared crops from.
struct Source {
    set: Arc<CropSet>,
    cache: Option<Arc<CropCache>>,
    spec: TransformSpec,
    pool: Arc<rayon::ThreadPool>,
}

impl Source {
    fn new(
        set: Arc<CropSet>,
        cache: Option<Arc<CropCache>>,
        spec: TransformSpec,
        workers: usize,
    ) -> Result<Self> {
        spec.check()?;
        if let Some(c) = &cache {
            if c.len() != set.len() || c.spec != spec {
                return Err(Error::runtime(format!(
                    "crop cache of {} crops at {:?} does not fit this set of {} crops at {spec:?}",
                    c.len(),
                    c.spec,
                    set.len()
                )));
            }
        }
        Ok(Self {
            set,
            cache,
            spec,
            pool: make_pool(workers)?,
        })
    }

    fn with<T>(&self, i: usize, f: impl FnOnce(&Prepared) -> T) -> Result<T> {
        match self.cache.as_ref().and_then(|c| c.get(i)) {
            Some(p) => Ok(f(p)),
            None => Ok(f(&load_prepared(&self.set.items[i], &self.spec)?)),
        }
    }

    /// The test-transform views of `ids`: `[B, 3, S, S]`, `[B, 1, S, S]`.
    fn test_views(&self, ids: &[usize]) -> Result<(Tensor, Tensor)> {
        let spec = self.spec;
        let (il, ml) = (spec.image_len(), spec.mask_len());
        let shapes = [self.shape(ids.len(), 3), self.shape(ids.len(), 1)];
        let [images, masks] = filled_tensors(shapes, |[v, m]| {
            self.pool.install(|| {
                (v.par_chunks_mut(il), m.par_chunks_mut(ml), ids.par_iter())
                    .into_par_iter()
                    .try_for_each(|(a, ma, &i)| self.with(i, |p| apply_test(p, &spec, a, ma)))
            })
        })?;
        Ok((images, masks))
    }

    fn shape(&self, b: usize, channels: i64) -> [i64; 4] {
        let s = self.spec.image_size as i64;
        [b as i64, channels, s, s]
    }
}

/// One training batch; all tensors on the CPU.
#[derive(Debug)]
pub struct TrainBatch {
    /// Two augmented views, each `[B, 3, S, S]` f32, ImageNet-normalised.
    pub views: [Tensor; 2],
    /// The masks of those views, each `[B, 1, S, S]` f32 in {0, 1}.
    pub masks: [Tensor; 2],
    /// `[B]` i64: the base class; for novel crops the true type index when known, else -1
    /// (for evaluation only: training must not use novel labels).
    pub labels: Tensor,
    /// `[B]` bool: base crop.
    pub labelled: Tensor,
    /// `[B]` f32: the crop's anomaly score (1.0 for base crops).
    pub scores: Tensor,
    /// Indices into `CropSet::items`.
    pub index: Vec<usize>,
}

impl TrainBatch {
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

/// Balanced, augmented training batches, epoch by epoch.
#[derive(Clone)]
pub struct TrainLoader {
    inner: Arc<TrainInner>,
}

struct TrainInner {
    src: Source,
    /// Neighbour views (`training.neighbor_views`): a sample's second view may be a
    /// neighbour's.
    neighbours: Option<NeighbourViews>,
    sampler: BalancedSampler,
    seed: u64,
    prefetch: usize,
}

impl TrainLoader {
    /// A loader over all of `set`; `cache` (built with the same `spec`) spares the decoding.
    pub fn new(
        set: Arc<CropSet>,
        spec: TransformSpec,
        opts: LoaderOptions,
        cache: Option<Arc<CropCache>>,
    ) -> Result<Self> {
        Self::with_neighbours(set, spec, opts, cache, None)
    }

    /// [`TrainLoader::new`] whose samples may pair a crop's view with a neighbour's.
    pub fn with_neighbours(
        set: Arc<CropSet>,
        spec: TransformSpec,
        opts: LoaderOptions,
        cache: Option<Arc<CropCache>>,
        neighbours: Option<NeighbourViews>,
    ) -> Result<Self> {
        if let Some(nv) = &neighbours {
            if nv.len() != set.len() {
                return Err(Error::runtime(format!(
                    "neighbour views for {} crops in a set of {}",
                    nv.len(),
                    set.len()
                )));
            }
        }
        let sampler = BalancedSampler::new(&set.labelled_flags(), opts.batch_size, opts.seed)?;
        let src = Source::new(set, cache, spec, opts.num_workers)?;
        Ok(Self {
            inner: Arc::new(TrainInner {
                src,
                neighbours,
                sampler,
                seed: opts.seed,
                prefetch: opts.prefetch.max(1),
            }),
        })
    }

    pub fn num_batches(&self) -> usize {
        self.inner.sampler.num_batches()
    }

    pub fn sampler(&self) -> &BalancedSampler {
        &self.inner.sampler
    }

    pub fn set(&self) -> &CropSet {
        &self.inner.src.set
    }

    /// The batches of `epoch`, built on a background thread one step ahead.
    pub fn epoch(&self, epoch: usize) -> Prefetch<TrainBatch> {
        let batches = self.inner.sampler.epoch(epoch);
        let inner = Arc::clone(&self.inner);
        Prefetch::spawn(batches.len(), inner.prefetch, move |b| {
            inner.batch(epoch, b, &batches[b])
        })
    }

    /// Builds one batch now, on the calling thread and the loader's pool: batch `batch_no` of
    /// `epoch` made of `indices` (what [`TrainLoader::epoch`] yields for the sampler's draws).
    pub fn batch(&self, epoch: usize, batch_no: usize, indices: &[usize]) -> Result<TrainBatch> {
        self.inner.batch(epoch, batch_no, indices)
    }
}

impl TrainLoader {
    /// `labels`, `labelled` and `scores` of the crops `idx`, as in [`TrainBatch`].
    pub fn targets(&self, idx: &[usize]) -> (Tensor, Tensor, Tensor) {
        self.inner.targets(idx)
    }
}

impl TrainInner {
    fn targets(&self, idx: &[usize]) -> (Tensor, Tensor, Tensor) {
        let items = &self.src.set.items;
        let labels: Vec<i64> = idx
            .iter()
            .map(|&i| items[i].label.map_or(-1, |l| l as i64))
            .collect();
        let labelled: Vec<bool> = idx.iter().map(|&i| items[i].labelled).collect();
        let scores: Vec<f32> = idx.iter().map(|&i| items[i].score).collect();
        (
            Tensor::from_slice(&labels),
            Tensor::from_slice(&labelled),
            Tensor::from_slice(&scores),
        )
    }

    fn batch(&self, epoch: usize, batch_no: usize, idx: &[usize]) -> Result<TrainBatch> {
        let spec = self.src.spec;
        let (il, ml) = (spec.image_len(), spec.mask_len());
        let b = idx.len();
        if let Some(&bad) = idx.iter().find(|&&i| i >= self.src.set.len()) {
            return Err(Error::runtime(format!(
                "sample index {bad} outside the set of {}",
                self.src.set.len()
            )));
        }
        let (img, msk) = (self.src.shape(b, 3), self.src.shape(b, 1));
        let [v0, v1, m0, m1] = filled_tensors([img, img, msk, msk], |[v0, v1, m0, m1]| {
            self.src.pool.install(|| {
                (
                    v0.par_chunks_mut(il),
                    v1.par_chunks_mut(il),
                    m0.par_chunks_mut(ml),
                    m1.par_chunks_mut(ml),
                    idx.par_iter(),
                )
                    .into_par_iter()
                    .enumerate()
                    .try_for_each(|(j, (a, b, ma, mb, &i))| {
                        let words = [
                            self.seed,
                            AUG_STREAM,
                            epoch as u64,
                            batch_no as u64,
                            j as u64,
                        ];
                        let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(&words));
                        let first = TrainParams::sample(&mut rng, &spec);
                        let second = TrainParams::sample(&mut rng, &spec);
                        // Drawn after both views' parameters: without neighbours the stream is
                        // the reference pairs'.
                        let partner = self
                            .neighbours
                            .as_ref()
                            .map_or(i, |nv| nv.partner(i, &mut rng));
                        self.src.with(i, |p| {
                            apply_train(p, &first, &spec, a, ma);
                            if partner == i {
                                apply_train(p, &second, &spec, b, mb);
                            }
                        })?;
                        if partner == i {
                            return Ok(());
                        }
                        self.src
                            .with(partner, |p| apply_train(p, &second, &spec, b, mb))
                    })
            })
        })?;
        let (labels, labelled, scores) = self.targets(idx);
        Ok(TrainBatch {
            views: [v0, v1],
            masks: [m0, m1],
            labels,
            labelled,
            scores,
            index: idx.to_vec(),
        })
    }
}

/// The views the frozen-prefix token cache is built from: for every crop of a set, fixed
/// augmented views (slot `0..R`) and the un-augmented test view. A slot's random transform
/// depends only on (view seed, item, slot), so the same seed builds the same views with any
/// number of workers, in any run.
pub struct ViewSource {
    src: Source,
    seed: u64,
}

impl ViewSource {
    /// Views of `set`'s crops with `spec`; `cache` (built with the same `spec`) spares the
    /// decoding.
    pub fn new(
        set: Arc<CropSet>,
        spec: TransformSpec,
        view_seed: u64,
        num_workers: usize,
        cache: Option<Arc<CropCache>>,
    ) -> Result<Self> {
        Ok(Self {
            src: Source::new(set, cache, spec, num_workers)?,
            seed: view_seed,
        })
    }

    pub fn set(&self) -> &CropSet {
        &self.src.set
    }

    pub fn spec(&self) -> &TransformSpec {
        &self.src.spec
    }

    fn check(&self, items: impl Iterator<Item = usize>) -> Result<()> {
        let n = self.src.set.len();
        match items.into_iter().find(|&i| i >= n) {
            Some(bad) => Err(Error::runtime(format!(
                "sample index {bad} outside the set of {n}"
            ))),
            None => Ok(()),
        }
    }

    /// Augmented views `(item, slot)`: `views [B, 3, S, S]`, `masks [B, 1, S, S]`.
    pub fn augmented(&self, pairs: &[(usize, usize)]) -> Result<(Tensor, Tensor)> {
        self.check(pairs.iter().map(|p| p.0))?;
        let src = &self.src;
        let spec = src.spec;
        let (il, ml) = (spec.image_len(), spec.mask_len());
        let b = pairs.len();
        let [v, m] = filled_tensors([src.shape(b, 3), src.shape(b, 1)], |[v, m]| {
            src.pool.install(|| {
                (v.par_chunks_mut(il), m.par_chunks_mut(ml), pairs.par_iter())
                    .into_par_iter()
                    .try_for_each(|(v, m, &(i, slot))| {
                        let words = [self.seed, BANK_STREAM, i as u64, slot as u64];
                        let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(&words));
                        src.with(i, |p| {
                            apply_train(p, &TrainParams::sample(&mut rng, &spec), &spec, v, m)
                        })
                    })
            })
        })?;
        Ok((v, m))
    }

    /// The test-transform views of `items` (what [`EvalLoader`] gives them).
    pub fn plain(&self, items: &[usize]) -> Result<(Tensor, Tensor)> {
        self.check(items.iter().copied())?;
        self.src.test_views(items)
    }
}

/// One evaluation batch (test transform); tensors on the CPU.
#[derive(Debug)]
pub struct EvalBatch {
    /// `[B, 3, S, S]` f32, ImageNet-normalised.
    pub images: Tensor,
    /// `[B, 1, S, S]` f32 in {0, 1}.
    pub masks: Tensor,
    /// Indices into `CropSet::items`, in the order given to [`EvalLoader::new`].
    pub ids: Vec<usize>,
}

/// Chosen crops of a set with the test transform, in order, in batches.
pub struct EvalLoader {
    inner: Arc<EvalInner>,
}

struct EvalInner {
    src: Source,
    indices: Vec<usize>,
    batch_size: usize,
}

impl EvalLoader {
    /// Batches of `indices` (e.g. `set.novel_indices()`, the reference's test set).
    pub fn new(
        set: Arc<CropSet>,
        indices: Vec<usize>,
        spec: TransformSpec,
        batch_size: usize,
        num_workers: usize,
        cache: Option<Arc<CropCache>>,
    ) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::usage("the evaluation batch size must be at least 1"));
        }
        if let Some(&bad) = indices.iter().find(|&&i| i >= set.len()) {
            return Err(Error::runtime(format!(
                "sample index {bad} outside the set of {}",
                set.len()
            )));
        }
        let src = Source::new(set, cache, spec, num_workers)?;
        Ok(Self {
            inner: Arc::new(EvalInner {
                src,
                indices,
                batch_size,
            }),
        })
    }

    /// Samples evaluated.
    pub fn len(&self) -> usize {
        self.inner.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.indices.is_empty()
    }

    pub fn num_batches(&self) -> usize {
        self.inner.indices.len().div_ceil(self.inner.batch_size)
    }

    /// All batches in order, built on a background thread one step ahead.
    pub fn iter(&self) -> Prefetch<EvalBatch> {
        let inner = Arc::clone(&self.inner);
        Prefetch::spawn(self.num_batches(), 1, move |k| inner.batch(k))
    }
}

impl EvalInner {
    fn batch(&self, k: usize) -> Result<EvalBatch> {
        let end = ((k + 1) * self.batch_size).min(self.indices.len());
        let ids = &self.indices[k * self.batch_size..end];
        let (images, masks) = self.src.test_views(ids)?;
        Ok(EvalBatch {
            images,
            masks,
            ids: ids.to_vec(),
        })
    }
}
