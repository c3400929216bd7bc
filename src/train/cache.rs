//! The frozen-prefix cache (`training.cache_frozen`). Blocks before `models.grad_from_block`
//! never change, so for a fixed bank of `training.cache_views` augmented views per crop their
//! output tokens are computed once; each step then picks two distinct views of every sample from
//! the bank and runs only the trainable blocks and the heads.
//!
//! What it costs: the augmentations are drawn from R views per crop instead of fresh ones every
//! epoch (the benchmark and the README measure the F1 effect). Tokens are kept as f16, in RAM
//! when they fit in half of the available memory, else in a file in the run folder that is
//! removed when training ends.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use crate::data::{mix_seed, TrainLoader};
use crate::error::{Error, Result};
use crate::model::Model;

/// Stream tag of the per-step choice of bank views.
const PICK_STREAM: u64 = 0x5049_434b;
/// Views pushed through the frozen blocks at once while building the bank.
const BUILD_BATCH: usize = 32;
/// Name of the spill file in the run folder.
const SPILL_NAME: &str = ".anomalyncd-frozen-cache.f16";

enum Store {
    /// `[M, L, D]` f16.
    Ram(Tensor),
    /// Rows of `L·D` f16 values; the file is ours and removed on drop.
    Disk { file: File, path: PathBuf },
}

/// How to build a [`TokenBank`].
#[derive(Debug, Clone, PartialEq)]
pub struct BankOptions {
    /// Augmented views per crop (`training.cache_views`).
    pub views: usize,
    /// The first trainable block (`models.grad_from_block`): the tokens entering it are cached.
    pub block: usize,
    /// Where the token file goes when the bank exceeds `ram_budget`.
    pub spill_dir: PathBuf,
    /// Bytes the bank may take in memory; `None`: half of the memory now available.
    pub ram_budget: Option<u64>,
}

/// Tokens entering block `block` for `views` augmented views of every crop of a loader's set.
/// Row `item · views + slot` holds view `slot` of crop `item`.
pub struct TokenBank {
    views: usize,
    block: usize,
    /// `[L, D]` of one row.
    row: [i64; 2],
    /// `[M, L]` bool: tokens hidden from the class token (see `MgVit::token_mask`).
    hidden: Tensor,
    store: Store,
}

/// Memory the kernel says new allocations can take without swapping, in bytes.
fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl TokenBank {
    /// Runs the frozen prefix of `model` over `opts.views` views of every crop of `loader`.
    pub fn build(
        model: &Model,
        loader: &TrainLoader,
        opts: &BankOptions,
        device: Device,
    ) -> Result<Self> {
        let (views, block) = (opts.views, opts.block);
        if views == 0 {
            return Err(Error::usage("training.cache_views must be at least 1"));
        }
        let n = loader.set().len();
        let pairs: Vec<(usize, usize)> = (0..n)
            .flat_map(|i| (0..views).map(move |s| (i, s)))
            .collect();
        let chunks: Vec<Vec<(usize, usize)>> =
            pairs.chunks(BUILD_BATCH).map(<[_]>::to_vec).collect();
        let pb = crate::logging::progress(pairs.len() as u64, "frozen-prefix cache");
        let make = {
            let (loader, chunks) = (loader.clone(), chunks.clone());
            move |c: usize| loader.bank_views(&chunks[c])
        };
        let mut store: Option<Store> = None;
        let mut row = [0i64; 2];
        let mut hidden = Vec::with_capacity(chunks.len());
        let mut start = 0i64;
        for views_masks in crate::data::loader::Prefetch::spawn(chunks.len(), 1, make) {
            if super::interrupt::requested() {
                return Err(Error::Interrupted(
                    "interrupted while building the frozen-prefix cache; run the same command again (add --resume if a checkpoint exists)".into(),
                ));
            }
            let (v, m) = views_masks?;
            let (v, m) = (v.to_device(device), m.to_device(device));
            let tokens = model.backbone.tokens_before(&v, &m, block)?;
            let tokens = tokens
                .to_kind(Kind::Half)
                .to_device(Device::Cpu)
                .contiguous();
            let b = tokens.size()[0];
            if store.is_none() {
                let s = tokens.size();
                row = [s[1], s[2]];
                store = Some(Self::new_store(pairs.len(), row, opts)?);
            }
            match store.as_mut() {
                Some(Store::Ram(all)) => {
                    all.narrow(0, start, b).copy_(&tokens);
                }
                Some(Store::Disk { file, path }) => {
                    let row_bytes = (row[0] * row[1] * 2) as u64;
                    let mut buf = vec![0u8; (b as u64 * row_bytes) as usize];
                    tokens.copy_data_u8(&mut buf, tokens.numel());
                    file.write_all_at(&buf, start as u64 * row_bytes)
                        .map_err(|e| Error::io(path, e))?;
                }
                None => unreachable!("the store is made with the first chunk"),
            }
            hidden.push(model.backbone.token_mask(&m).to_device(Device::Cpu));
            start += b;
            pb.inc(b as u64);
            crate::threads::tick();
        }
        pb.finish_and_clear();
        let store = store.ok_or_else(|| Error::usage("the frozen-prefix cache has no crops"))?;
        let bank = Self {
            views,
            block,
            row,
            hidden: Tensor::cat(&hidden, 0),
            store,
        };
        log::info!(
            "frozen-prefix cache: {} views of {} crops before block {block}, {:.2} GB {}",
            views,
            n,
            bank.bytes() as f64 / 1e9,
            if matches!(bank.store, Store::Ram(_)) {
                "in memory"
            } else {
                "on disk"
            }
        );
        Ok(bank)
    }

    fn new_store(rows: usize, row: [i64; 2], opts: &BankOptions) -> Result<Store> {
        let bytes = rows as u64 * (row[0] * row[1]) as u64 * 2;
        let budget = opts
            .ram_budget
            .or_else(|| mem_available().map(|avail| avail / 2));
        let fits = budget.is_none_or(|b| bytes <= b);
        if fits {
            return Ok(Store::Ram(Tensor::empty(
                [rows as i64, row[0], row[1]],
                (Kind::Half, Device::Cpu),
            )));
        }
        let path = opts.spill_dir.join(SPILL_NAME);
        log::info!(
            "frozen-prefix cache of {:.1} GB exceeds its memory budget: keeping it in {}",
            bytes as f64 / 1e9,
            path.display()
        );
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(Store::Disk { file, path })
    }

    /// Bytes of the cached tokens.
    pub fn bytes(&self) -> u64 {
        self.hidden.size()[0] as u64 * (self.row[0] * self.row[1]) as u64 * 2
    }

    /// The block the cached tokens enter.
    pub fn block(&self) -> usize {
        self.block
    }

    /// Two distinct bank slots for each sample of batch `batch_no` of `epoch` (the same slot
    /// twice only when the bank holds one view): `(first views, second views)` as row indices.
    pub fn pick(
        &self,
        seed: u64,
        epoch: usize,
        batch_no: usize,
        idx: &[usize],
    ) -> (Vec<i64>, Vec<i64>) {
        let r = self.views;
        idx.iter()
            .enumerate()
            .map(|(j, &i)| {
                let words = [seed, PICK_STREAM, epoch as u64, batch_no as u64, j as u64];
                let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(&words));
                let a = rng.gen_range(0..r);
                let b = if r > 1 {
                    (a + 1 + rng.gen_range(0..r - 1)) % r
                } else {
                    a
                };
                ((i * r + a) as i64, (i * r + b) as i64)
            })
            .unzip()
    }

    /// Rows `rows` → (tokens `[B, L, D]` f32, token mask `[B, L]` bool) on `device`.
    pub fn gather(&self, rows: &[i64], device: Device) -> Result<(Tensor, Tensor)> {
        let m = self.hidden.size()[0];
        if let Some(&bad) = rows.iter().find(|&&r| r < 0 || r >= m) {
            return Err(Error::runtime(format!(
                "cache row {bad} outside the bank of {m}"
            )));
        }
        let index = Tensor::from_slice(rows);
        let tokens = match &self.store {
            Store::Ram(all) => all.index_select(0, &index),
            Store::Disk { file, path } => {
                let row_bytes = (self.row[0] * self.row[1] * 2) as usize;
                let mut buf = vec![0u8; rows.len() * row_bytes];
                for (chunk, &r) in buf.chunks_mut(row_bytes).zip(rows) {
                    file.read_exact_at(chunk, r as u64 * row_bytes as u64)
                        .map_err(|e| Error::io(path, e))?;
                }
                Tensor::from_data_size(
                    &buf,
                    &[rows.len() as i64, self.row[0], self.row[1]],
                    Kind::Half,
                )
            }
        };
        Ok((
            crate::device::upload(&tokens, device).to_kind(Kind::Float),
            crate::device::upload(&self.hidden.index_select(0, &index), device),
        ))
    }
}

impl Drop for TokenBank {
    fn drop(&mut self) {
        if let Store::Disk { path, .. } = &self.store {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bank(views: usize, items: usize) -> TokenBank {
        TokenBank {
            views,
            block: 0,
            row: [1, 1],
            hidden: Tensor::zeros([(views * items) as i64, 1], (Kind::Bool, Device::Cpu)),
            store: Store::Ram(Tensor::zeros(
                [(views * items) as i64, 1, 1],
                (Kind::Half, Device::Cpu),
            )),
        }
    }

    #[test]
    fn picks_two_distinct_views_of_each_sample_deterministically() {
        let b = bank(3, 10);
        let idx = [4, 0, 9, 4];
        let (first, second) = b.pick(7, 2, 1, &idx);
        assert_eq!((first.clone(), second.clone()), b.pick(7, 2, 1, &idx));
        for ((&f, &s), &i) in first.iter().zip(&second).zip(&idx) {
            let i = i as i64;
            assert!((i * 3..i * 3 + 3).contains(&f) && (i * 3..i * 3 + 3).contains(&s));
            assert_ne!(f, s);
        }
        // Other epochs draw other pairs.
        let many: Vec<_> = (0..20).map(|e| b.pick(7, e, 1, &idx).0).collect();
        assert!(many.iter().any(|p| p != &many[0]));
        // One view: the same row twice.
        let one = bank(1, 10);
        let (f, s) = one.pick(7, 0, 0, &[5]);
        assert_eq!((f, s), (vec![5], vec![5]));
        assert!(b.gather(&[30], Device::Cpu).is_err());
    }
}
