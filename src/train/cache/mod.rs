//! The frozen-prefix token cache (`training.cache_frozen`). Blocks before `models.grad_from_block`
//! never change, so for a fixed bank of `training.cache_views` augmented views per crop their
//! output tokens are computed once; each step then picks two distinct views of every sample from
//! the bank and runs only the trainable blocks and the heads. One more, un-augmented view per
//! crop (the test transform) is cached beside them and never drawn for training: the K estimate,
//! the training-free k-means row and the evaluation take their class tokens from it instead of
//! running the whole backbone again.
//!
//! The cache is a file named by its [`BankKey`] in a cache folder (by default inside the run
//! folder, `--cache-dir` to share it between runs): any run with the same crops, views, view
//! seed and prefix settings reuses it, whatever its training seed, K or epochs. Augmented
//! tokens are kept as f16 (the training steps widen them to f32), plain ones as f32, so that
//! evaluation from the cache equals a full forward within f32 rounding. The rows stay in memory
//! when they fit in half of the available memory, else they are read from the file.

mod build;
mod file;
pub mod key;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

pub use build::{build_batch, BuildPhases, BUILD_BATCH};
pub use key::BankKey;

/// Whether `dir` holds a cache file named for `key` (opening it checks that it is valid).
pub fn file_exists(dir: &Path, key: &BankKey) -> bool {
    file::path_in(dir, key).is_file()
}

use crate::data::{mix_seed, NeighbourViews, ViewSource};
use crate::error::{Error, Result};
use crate::model::Model;

/// Stream tag of the per-step choice of bank views.
const PICK_STREAM: u64 = 0x5049_434b;

enum Store {
    /// Augmented rows `[N·R, L, D]` f16 and plain rows `[N, L, D]` f32.
    Ram { aug: Tensor, plain: Tensor },
    /// Rows read from the cache file; `remove`: a file of this run only, removed on drop.
    Disk {
        file: File,
        path: PathBuf,
        layout: file::Layout,
        remove: bool,
    },
}

/// How to open or build a [`TokenBank`].
#[derive(Debug, Clone, PartialEq)]
pub struct BankOptions {
    pub key: BankKey,
    /// Where the cache is kept between runs, under its key's digest; `None`: built for this
    /// run only and kept in memory, or in a file in `spill_dir` removed with the bank.
    pub cache_dir: Option<PathBuf>,
    pub spill_dir: PathBuf,
    /// Bytes the rows may take in memory; `None`: [`DEFAULT_RAM_BUDGET`], or half of the memory
    /// now available when that is less.
    pub ram_budget: Option<u64>,
}

/// Where a bank came from, for the log and the run's summary.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BankOrigin {
    /// The cache file (absent for a bank of this run only kept in memory).
    pub path: Option<PathBuf>,
    pub bytes: u64,
    /// Read from an earlier run's file instead of built.
    pub reused: bool,
    pub seconds: f64,
    /// The kind the frozen prefix ran in (`models.precision` resolved on this machine).
    #[serde(default)]
    pub precision: String,
}

/// Tokens entering block `block` for `views` augmented views and one plain view of every crop
/// of a set. Augmented row `item · views + slot` holds view `slot` of crop `item`; plain row
/// `item` its test view.
pub struct TokenBank {
    views: usize,
    block: usize,
    /// `[L, D]` of one row.
    row: [i64; 2],
    /// `[N·R, L]` and `[N, L]` bool: tokens hidden from the class token (`MgVit::token_mask`).
    guide_aug: Tensor,
    guide_plain: Tensor,
    store: Store,
    origin: BankOrigin,
    /// Where a build's time went (`None`: read from a file).
    phases: Option<BuildPhases>,
}

/// The default memory budget of the cache's rows (1 GB): beyond it the rows are read from the
/// cache file (through the page cache), so a run's memory stays flat as the crops grow. On
/// SD-900 (2.1 GB of rows) this cut `discover`'s peak from 3.8 to 1.5 GB with the same
/// predictions and no slower epochs (docs/performance.md).
pub const DEFAULT_RAM_BUDGET: u64 = 1_000_000_000;

/// The budget without `training.cache_ram_gb`, given the memory `available` now.
fn default_budget(available: Option<u64>) -> u64 {
    available.map_or(DEFAULT_RAM_BUDGET, |a| (a / 2).min(DEFAULT_RAM_BUDGET))
}

/// Memory the kernel says new allocations can take without swapping, in bytes.
fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn interrupted() -> Error {
    Error::Interrupted(
        "interrupted while building the frozen-prefix cache; run the same command again (add --resume if a checkpoint exists)".into(),
    )
}

/// Calls `f` with the bytes of `t` (on the CPU, in row-major order) without copying them out
/// when `t` is already a contiguous CPU tensor.
fn with_bytes<R>(t: &Tensor, f: impl FnOnce(&[u8]) -> R) -> R {
    let t = t.to_device(Device::Cpu).contiguous();
    let len = t.numel() * t.kind().elt_size_in_bytes();
    if len == 0 {
        return f(&[]);
    }
    // SAFETY: `t` is a contiguous CPU tensor of `len` bytes that lives, unchanged, until `f`
    // returns; the slice does not outlive it.
    let bytes = unsafe { std::slice::from_raw_parts(t.data_ptr() as *const u8, len) };
    f(bytes)
}

impl TokenBank {
    /// The bank of `opts.key`: read from its cache file when a valid one is there, else built
    /// by running the frozen prefix of `model` over `src`'s views (and written to the file).
    pub fn open_or_build(
        model: &Model,
        src: Arc<ViewSource>,
        opts: &BankOptions,
        device: Device,
    ) -> Result<Self> {
        let key = &opts.key;
        if key.views == 0 {
            return Err(Error::usage("training.cache_views must be at least 1"));
        }
        if key.num_crops != src.set().len() || key.num_crops == 0 {
            return Err(Error::runtime(format!(
                "the token cache key names {} crops, the set has {}",
                key.num_crops,
                src.set().len()
            )));
        }
        let t0 = Instant::now();
        if let Some(dir) = &opts.cache_dir {
            let path = file::path_in(dir, key);
            match file::open(&path, key) {
                Ok(Some((f, header, layout))) => {
                    let mut bank = Self::read(f, &path, &header, layout, opts)?;
                    bank.origin.seconds = t0.elapsed().as_secs_f64();
                    bank.log();
                    return Ok(bank);
                }
                Ok(None) => {}
                Err(why) => log::warn!("token cache {} {why}: rebuilding it", path.display()),
            }
        }
        let mut bank = Self::build(model, src, opts, device)?;
        bank.origin.seconds = t0.elapsed().as_secs_f64();
        bank.log();
        Ok(bank)
    }

    fn log(&self) {
        let o = &self.origin;
        let place = match (&o.path, &self.store) {
            (Some(p), Store::Ram { .. }) => format!("{} (rows in memory)", p.display()),
            (Some(p), Store::Disk { .. }) => format!("{} (rows read from disk)", p.display()),
            (None, _) => "in memory, for this run only".into(),
        };
        log::info!(
            "token cache: {} {} views + 1 plain view of {} crops before block {} ({} prefix), {:.2} GB, {place}, {:.1} s",
            if o.reused { "reused:" } else { "built:" },
            self.views,
            self.guide_plain.size()[0],
            self.block,
            o.precision,
            o.bytes as f64 / 1e9,
            o.seconds
        );
    }

    fn budget(opts: &BankOptions) -> Option<u64> {
        Some(
            opts.ram_budget
                .unwrap_or_else(|| default_budget(mem_available())),
        )
    }

    /// Reads a validated cache file: into memory when it fits the budget.
    fn read(
        f: File,
        path: &std::path::Path,
        header: &file::Header,
        layout: file::Layout,
        opts: &BankOptions,
    ) -> Result<Self> {
        let (n, r) = (header.key.num_crops as i64, header.key.views as i64);
        let (l, d) = (header.tokens, header.dim);
        let read = |offset: u64, len: u64| -> Result<Vec<u8>> {
            let mut buf = vec![0u8; len as usize];
            f.read_exact_at(&mut buf, offset)
                .map_err(|e| Error::io(path, e))?;
            Ok(buf)
        };
        let guide_aug = Tensor::from_data_size(
            &read(layout.guide_aug, (n * r * l) as u64)?,
            &[n * r, l],
            Kind::Uint8,
        );
        let guide_plain = Tensor::from_data_size(
            &read(layout.guide_plain, (n * l) as u64)?,
            &[n, l],
            Kind::Uint8,
        );
        let rows_bytes = layout.end - layout.aug;
        let fits = Self::budget(opts).is_none_or(|b| rows_bytes <= b);
        let store = if fits {
            let aug = Tensor::empty([n * r, l, d], (Kind::Half, Device::Cpu));
            let plain = Tensor::empty([n, l, d], (Kind::Float, Device::Cpu));
            for (t, offset) in [(&aug, layout.aug), (&plain, layout.plain)] {
                let len = t.numel() * t.kind().elt_size_in_bytes();
                // SAFETY: `t` was just allocated above as its own contiguous CPU storage of
                // `len` bytes; nothing else refers to it while the slice lives.
                let bytes = unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut u8, len) };
                f.read_exact_at(bytes, offset)
                    .map_err(|e| Error::io(path, e))?;
            }
            Store::Ram { aug, plain }
        } else {
            Store::Disk {
                file: f,
                path: path.to_path_buf(),
                layout,
                remove: false,
            }
        };
        Ok(Self {
            views: r as usize,
            block: header.key.block,
            row: [l, d],
            guide_aug,
            guide_plain,
            store,
            origin: BankOrigin {
                path: Some(path.to_path_buf()),
                bytes: layout.total,
                reused: true,
                seconds: 0.0,
                precision: header.key.precision.clone(),
            },
            phases: None,
        })
    }

    /// Bytes of the cache (its file, or what it would take).
    pub fn bytes(&self) -> u64 {
        self.origin.bytes
    }

    pub fn origin(&self) -> &BankOrigin {
        &self.origin
    }

    /// Where the build's time went; `None` for a bank read from its file.
    pub fn build_phases(&self) -> Option<BuildPhases> {
        self.phases
    }

    /// The block the cached tokens enter.
    pub fn block(&self) -> usize {
        self.block
    }

    /// Crops in the bank.
    pub fn len(&self) -> usize {
        self.guide_plain.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Two distinct bank slots for each sample of batch `batch_no` of `epoch` (the same slot
    /// twice only when the bank holds one view): `(first views, second views)` as row indices.
    /// The plain view is never drawn. With `neighbours`, a sample's second view may be one of
    /// its neighbours' ([`NeighbourViews::partner`]); without, the draws are those of the
    /// reference's pairs of a crop's own views.
    pub fn pick(
        &self,
        seed: u64,
        epoch: usize,
        batch_no: usize,
        idx: &[usize],
        neighbours: Option<&NeighbourViews>,
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
                let partner = neighbours.map_or(i, |nv| nv.partner(i, &mut rng));
                ((i * r + a) as i64, (partner * r + b) as i64)
            })
            .unzip()
    }

    /// Augmented rows `rows` → (tokens `[B, L, D]` f32, token mask `[B, L]` bool) on `device`.
    pub fn gather(&self, rows: &[i64], device: Device) -> Result<(Tensor, Tensor)> {
        let m = self.guide_aug.size()[0];
        self.rows(rows, m, &self.guide_aug, false, device)
    }

    /// The plain (test-view) rows of crops `items` → (tokens `[B, L, D]` f32, token mask
    /// `[B, L]` bool) on `device`: what [`crate::model::MgVit::forward_from_guide`] continues
    /// into the class token of the test view.
    pub fn plain(&self, items: &[usize], device: Device) -> Result<(Tensor, Tensor)> {
        let rows: Vec<i64> = items.iter().map(|&i| i as i64).collect();
        self.rows(&rows, self.len() as i64, &self.guide_plain, true, device)
    }

    fn rows(
        &self,
        rows: &[i64],
        m: i64,
        guide: &Tensor,
        plain: bool,
        device: Device,
    ) -> Result<(Tensor, Tensor)> {
        if let Some(&bad) = rows.iter().find(|&&r| r < 0 || r >= m) {
            return Err(Error::runtime(format!(
                "cache row {bad} outside the bank of {m}"
            )));
        }
        let index = Tensor::from_slice(rows);
        let tokens = match &self.store {
            Store::Ram { aug, plain: p } => match plain {
                true => p.index_select(0, &index),
                false => aug.index_select(0, &index),
            },
            Store::Disk {
                file, path, layout, ..
            } => {
                let (base, row_bytes, kind) = match plain {
                    true => (layout.plain, layout.plain_row, Kind::Float),
                    false => (layout.aug, layout.aug_row, Kind::Half),
                };
                let mut buf = vec![0u8; rows.len() * row_bytes as usize];
                for (chunk, &r) in buf.chunks_mut(row_bytes as usize).zip(rows) {
                    file.read_exact_at(chunk, base + r as u64 * row_bytes)
                        .map_err(|e| Error::io(path, e))?;
                }
                Tensor::from_data_size(&buf, &[rows.len() as i64, self.row[0], self.row[1]], kind)
            }
        };
        Ok((
            crate::device::upload(&tokens, device).to_kind(Kind::Float),
            crate::device::upload(&guide.index_select(0, &index), device),
        ))
    }
}

impl crate::model::PrefixTokens for TokenBank {
    fn block(&self) -> usize {
        self.block
    }

    fn plain(&self, items: &[usize], device: Device) -> Result<(Tensor, Tensor)> {
        TokenBank::plain(self, items, device)
    }
}

impl Drop for TokenBank {
    fn drop(&mut self) {
        if let Store::Disk {
            path, remove: true, ..
        } = &self.store
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests;
