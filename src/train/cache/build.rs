//! Building a bank: the views of every crop, batched through the frozen prefix, their rows
//! stored in memory and/or in the cache file. [`BuildPhases`] says where the time went.

use std::sync::Arc;
use std::time::Instant;

use tch::{Device, Kind, Tensor};

use super::{file, interrupted, with_bytes, BankOptions, BankOrigin, Store, TokenBank};
use crate::data::ViewSource;
use crate::error::{Error, Result};
use crate::model::Model;

/// Views pushed through the frozen blocks at once while building the bank at 224 px (257
/// tokens). Which batch is fastest depends on the machine's load (ViT-S/14 at 224, 2-core Xeon,
/// fp32 and bf16): with the cores to itself 16 was fastest and 64 10–20 % slower than 32; beside
/// other jobs 64 was 6–12 % faster than 32 and 16 the slowest. No size wins both, so 32 stays,
/// the batch every earlier cache was built with.
pub const BUILD_BATCH: usize = 32;

/// Tokens (views × tokens per view) pushed through the frozen blocks at once: [`BUILD_BATCH`]
/// views at 224 px. Larger crops take fewer views per batch, so the build's working set stays
/// that of the 224-px batch: at 392 px (785 tokens) 32 views held 2.08 GiB resident on MTD, 8
/// views 1.25 GiB (docs/results.md, tenth session).
const BUILD_TOKENS: i64 = BUILD_BATCH as i64 * 257;

/// Views per batch of the build for views of `tokens` tokens each (class token included).
pub fn build_batch(tokens: i64) -> usize {
    (BUILD_TOKENS / tokens.max(1)).clamp(1, BUILD_BATCH as i64) as usize
}

/// Batches between two hand-backs of the heap's free pages during a build. The heap keeps what
/// each batch frees for the next (`crate::malloc`), but over a build its resident size crept up
/// anyway: on MTD at 392 px from 1.26 to 1.91 GiB at 10 views a batch. Trimming every 8 batches
/// held the whole run (3 epochs) at 1.49 GiB, for 0.4 % more CPU time: the system time of
/// faulting the pages in again (docs/results.md, tenth session).
const TRIM_EVERY: usize = 8;

/// Free space kept beyond the cache file when one is written.
const DISK_MARGIN: u64 = 1 << 30;

/// Seconds a bank's build spent in each phase (the log at debug level, and `cargo bench
/// --bench frozen`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BuildPhases {
    /// Sizing the rows, making the file and the memory for them.
    pub prepare: f64,
    /// Making the batches of views (augmenting, filling the batch tensors) on the loader's
    /// threads, while the previous batch runs.
    pub views: f64,
    /// Of that, what the forward waited for.
    pub waited: f64,
    /// The frozen prefix.
    pub forward: f64,
    /// Converting the tokens, storing them (memory, file) and the token guides.
    pub store: f64,
    /// Writing the guides and the end marker, syncing and renaming the file.
    pub finish: f64,
}

impl TokenBank {
    pub(super) fn build(
        model: &Model,
        src: Arc<ViewSource>,
        opts: &BankOptions,
        device: Device,
    ) -> Result<Self> {
        let t0 = Instant::now();
        let key = &opts.key;
        let (n, views, block) = (key.num_crops, key.views, key.block);
        let side = src.spec().image_size as i64;
        let [l, d] = model.backbone.token_shape(side, side)?;
        let header = file::Header {
            digest: key.digest(),
            key: key.clone(),
            tokens: l,
            dim: d,
        };
        let total = file::file_bytes(&header);
        let layout = file::Layout::new(0, n as u64, views as u64, l as u64, d as u64);
        let rows_bytes = layout.end - layout.aug;
        let fits = Self::budget(opts).is_none_or(|b| rows_bytes <= b);
        let target = match (&opts.cache_dir, fits) {
            (Some(dir), _) => Some((file::path_in(dir, key), true)),
            (None, false) => Some((opts.spill_dir.join(".anomalyncd-token-cache.bin"), false)),
            (None, true) => None,
        };
        let writer = match &target {
            Some((path, _)) => {
                let dir = path.parent().unwrap_or(std::path::Path::new("."));
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                if let Some(free) = file::free_bytes(dir) {
                    if free < total + DISK_MARGIN {
                        return Err(Error::runtime(format!(
                            "the token cache needs {:.1} GB in {} but only {:.1} GB are free: free some space, give --cache-dir on another disk, or pass --no-token-cache",
                            total as f64 / 1e9,
                            dir.display(),
                            free as f64 / 1e9
                        )));
                    }
                }
                if !fits {
                    log::info!(
                        "token cache of {:.1} GB exceeds its memory budget: its rows are read from {}",
                        total as f64 / 1e9,
                        path.display()
                    );
                }
                Some(file::Writer::create(path, &header)?)
            }
            None => None,
        };
        let ram = fits.then(|| {
            (
                Tensor::empty([(n * views) as i64, l, d], (Kind::Half, Device::Cpu)),
                Tensor::empty([n as i64, l, d], (Kind::Float, Device::Cpu)),
            )
        });
        let pb = crate::logging::progress((n * (views + 1)) as u64, "frozen-prefix cache");
        let mut run = Prefix {
            model,
            device,
            block,
            row: [l, d],
            writer: writer.as_ref(),
            pb: &pb,
            phases: BuildPhases {
                prepare: t0.elapsed().as_secs_f64(),
                ..BuildPhases::default()
            },
        };
        // The augmented views, then the plain ones; rows are written where they belong.
        let batch = build_batch(l);
        let pairs: Vec<(usize, usize)> = (0..n)
            .flat_map(|i| (0..views).map(move |s| (i, s)))
            .collect();
        let chunks: Arc<Vec<Vec<(usize, usize)>>> =
            Arc::new(pairs.chunks(batch).map(<[_]>::to_vec).collect());
        let make = {
            let (src, chunks) = (src.clone(), chunks.clone());
            move |c: usize| src.augmented(&chunks[c])
        };
        let guide_aug = run.rows(
            chunks.len(),
            make,
            Kind::Half,
            ram.as_ref().map(|r| &r.0),
            writer.as_ref().map(|w| (w.layout.aug, w.layout.aug_row)),
        )?;
        let items: Arc<Vec<Vec<usize>>> = Arc::new(
            (0..n)
                .collect::<Vec<_>>()
                .chunks(batch)
                .map(<[_]>::to_vec)
                .collect(),
        );
        let make = {
            let (src, items) = (src.clone(), items.clone());
            move |c: usize| src.plain(&items[c])
        };
        let guide_plain = run.rows(
            items.len(),
            make,
            Kind::Float,
            ram.as_ref().map(|r| &r.1),
            writer
                .as_ref()
                .map(|w| (w.layout.plain, w.layout.plain_row)),
        )?;
        pb.finish_and_clear();
        let mut phases = run.phases;
        let t = Instant::now();
        let persist = matches!(target, Some((_, true)));
        let file = match writer {
            Some(w) => {
                let layout = w.layout;
                let (f, path) = with_bytes(&guide_aug, |aug| {
                    with_bytes(&guide_plain, |plain| w.finish(aug, plain, persist))
                })?;
                Some((f, path, layout))
            }
            None => None,
        };
        phases.finish = t.elapsed().as_secs_f64();
        log::debug!(
            "token cache build: prepare {:.1} s, views {:.1} s ({:.1} s waited for), frozen prefix {:.1} s, storing {:.1} s, finish {:.1} s",
            phases.prepare,
            phases.views,
            phases.waited,
            phases.forward,
            phases.store,
            phases.finish
        );
        let path = file.as_ref().filter(|_| persist).map(|(_, p, _)| p.clone());
        let store = match (ram, file) {
            (Some((aug, plain)), _) => Store::Ram { aug, plain },
            (None, Some((file, path, layout))) => Store::Disk {
                file,
                path,
                layout,
                remove: !persist,
            },
            (None, None) => unreachable!("a bank that does not fit in memory has a file"),
        };
        Ok(Self {
            views,
            block,
            row: [l, d],
            guide_aug,
            guide_plain,
            store,
            origin: BankOrigin {
                path,
                bytes: total,
                reused: false,
                seconds: 0.0,
                precision: key.precision.clone(),
            },
            phases: Some(phases),
        })
    }
}

/// The frozen prefix run over batches of views while a bank is built.
struct Prefix<'a> {
    model: &'a Model,
    device: Device,
    block: usize,
    /// `[L, D]` of a row, which the file and memory were sized for.
    row: [i64; 2],
    writer: Option<&'a file::Writer>,
    pb: &'a indicatif::ProgressBar,
    phases: BuildPhases,
}

impl Prefix<'_> {
    /// Runs the prefix over `count` batches of `(views, masks)` from `make` and stores each
    /// batch's tokens, as `kind`, at the next rows of `ram` and of the file section `(offset,
    /// row bytes)`. Returns the token masks of all rows `[rows, L]` bool.
    fn rows(
        &mut self,
        count: usize,
        mut make: impl FnMut(usize) -> Result<(Tensor, Tensor)> + Send + 'static,
        kind: Kind,
        ram: Option<&Tensor>,
        section: Option<(u64, u64)>,
    ) -> Result<Tensor> {
        let mut guide = Vec::with_capacity(count);
        let mut start = 0i64;
        let timed = move |c: usize| {
            let t = Instant::now();
            make(c).map(|vm| (vm, t.elapsed().as_secs_f64()))
        };
        let mut batches = crate::data::loader::Prefetch::spawn(count, 1, timed);
        loop {
            let t = Instant::now();
            let Some(batch) = batches.next() else { break };
            self.phases.waited += t.elapsed().as_secs_f64();
            if crate::train::interrupt::requested() {
                return Err(interrupted());
            }
            let ((v, m), made) = batch?;
            self.phases.views += made;
            let d = self.device;
            let t = Instant::now();
            let tokens =
                self.model
                    .backbone
                    .tokens_before(&v.to_device(d), &m.to_device(d), self.block)?;
            let t = self.lap(t, |p| &mut p.forward);
            let tokens = tokens.to_kind(kind).to_device(Device::Cpu).contiguous();
            let b = tokens.size()[0];
            if tokens.size()[1..] != self.row {
                return Err(Error::runtime(format!(
                    "the frozen prefix gave tokens {:?} where the token cache expected rows {:?}; this is a bug in anomalyncd",
                    tokens.size(),
                    self.row
                )));
            }
            if let Some(all) = ram {
                all.narrow(0, start, b).copy_(&tokens);
            }
            if let (Some(w), Some((offset, row))) = (self.writer, section) {
                with_bytes(&tokens, |b| w.at(offset + start as u64 * row, b))?;
            }
            guide.push(self.model.backbone.token_guide(&m).to_device(Device::Cpu));
            self.lap(t, |p| &mut p.store);
            start += b;
            if guide.len() % TRIM_EVERY == 0 {
                crate::malloc::release_freed_memory();
            }
            self.pb.inc(b as u64);
            crate::threads::tick();
        }
        Ok(Tensor::cat(&guide, 0).to_kind(Kind::Uint8))
    }

    /// Adds the time since `t` to a phase; returns now.
    fn lap(&mut self, t: Instant, phase: impl FnOnce(&mut BuildPhases) -> &mut f64) -> Instant {
        let now = Instant::now();
        *phase(&mut self.phases) += now.duration_since(t).as_secs_f64();
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn larger_crops_take_fewer_views_per_batch() {
        // 224, 308, 392 and 518 px at patch 14, class token included.
        let sides = [224i64, 308, 392, 518];
        let batches: Vec<usize> = sides
            .iter()
            .map(|s| build_batch((s / 14) * (s / 14) + 1))
            .collect();
        assert_eq!(batches, [32, 16, 10, 6]);
        assert_eq!(build_batch(1), BUILD_BATCH, "never above the 224-px batch");
        assert_eq!(build_batch(1 << 20), 1, "at least one view");
        assert_eq!(build_batch(0), BUILD_BATCH);
    }
}
