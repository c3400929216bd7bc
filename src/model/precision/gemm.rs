//! Timing libtorch's GEMMs at the ViT's own shapes, fp32 against bf16, on the threads libtorch
//! uses now: the numbers `precision: auto` decides by.

use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};

use super::auto::Rates;
use crate::error::Result;

/// The ViT-S qkv and MLP-in linear maps on 2048 token rows (8 crops of 256 patches): the GEMMs
/// that dominate a frozen block, at a size where libtorch reaches its full rate.
const SHAPES: [(i64, i64); 2] = [(384, 1152), (384, 1536)];
pub(crate) const ROWS: i64 = 2048;
/// The probe's rows: without native bf16 units one full-size bf16 round takes seconds.
const PROBE_ROWS: i64 = 64;
/// A probe this many times slower in bf16 settles it without the full rounds. Far from the
/// 1.3× that decides: small GEMMs pay relatively more for packing the weights, and bf16 more
/// than fp32 (14 against 70 GFLOP/s at 128 rows on a busy AMX machine whose full-size rounds
/// ran bf16 4× faster); CPUs without native bf16 are ~40× slower.
const PROBE_SLOWER: f64 = 4.0;
/// Best of at most this many timed rounds per kind after a warm-up…
const ROUNDS: usize = 5;
/// …stopping once the rounds have taken this long (at least two per kind).
const BUDGET: Duration = Duration::from_millis(250);

/// fp32 and bf16 GFLOP/s of the shapes above: a few hundred ms where bf16 is fast, less where
/// the probe shows it is far slower. The fp32 rate is always the full-size one: `discover`'s
/// time estimates scale by it, and at the probe's rows it reads ~30 % low (43 against 60
/// GFLOP/s on an AVX2-only EPYC).
pub fn measure() -> Result<Rates> {
    let _no_grad = tch::no_grad_guard();
    let probe = rates(PROBE_ROWS, 2)?;
    log::debug!(
        "precision auto: probe at {PROBE_ROWS} rows: bf16 {:.0} GFLOP/s, fp32 {:.0} GFLOP/s",
        probe.bf16,
        probe.fp32
    );
    if probe.bf16 * PROBE_SLOWER < probe.fp32 {
        let fp32 = Gemms::new(Kind::Float, ROWS)?;
        return Ok(Rates {
            fp32: fp32.gflops(fp32.best(ROUNDS, None)?.0),
            bf16: probe.bf16,
        });
    }
    rates(ROWS, ROUNDS)
}

/// One kind's operands: `(x [rows, k], w [n, k])` per shape.
struct Gemms {
    ops: Vec<(Tensor, Tensor)>,
    flops: f64,
}

impl Gemms {
    fn new(kind: Kind, rows: i64) -> Result<Gemms> {
        let opts = (Kind::Float, Device::Cpu);
        let ops = SHAPES
            .iter()
            .map(|&(k, n)| {
                Ok((
                    Tensor::f_randn([rows, k], opts)?.f_to_kind(kind)?,
                    Tensor::f_randn([n, k], opts)?.f_to_kind(kind)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let flops = SHAPES
            .iter()
            .map(|&(k, n)| 2.0 * (rows * k * n) as f64)
            .sum();
        Ok(Gemms { ops, flops })
    }

    fn gflops(&self, t: Duration) -> f64 {
        self.flops / t.as_secs_f64().max(1e-9) / 1e9
    }

    /// The best of up to `rounds` timed rounds after a warm-up, alternating with `other`'s (so
    /// that load from other processes hits both alike), at least two each and within
    /// [`BUDGET`]; `other`'s best comes second.
    fn best(&self, rounds: usize, other: Option<&Gemms>) -> Result<(Duration, Duration)> {
        self.time()?;
        if let Some(o) = other {
            o.time()?;
        }
        let start = Instant::now();
        let (mut mine, mut theirs) = (Duration::MAX, Duration::MAX);
        for i in 0..rounds.max(1) {
            if i >= 2 && start.elapsed() > BUDGET {
                break;
            }
            mine = mine.min(self.time()?);
            if let Some(o) = other {
                theirs = theirs.min(o.time()?);
            }
        }
        Ok((mine, theirs))
    }

    fn time(&self) -> Result<Duration> {
        let t = Instant::now();
        for (x, w) in &self.ops {
            // CPU ops run eagerly: the product is done when f_linear returns.
            let _ = x.f_linear::<Tensor>(w, None)?;
        }
        Ok(t.elapsed())
    }
}

/// GFLOP/s of both kinds on `rows` rows: one warm-up round each (oneDNN primitive creation,
/// weight packing caches, allocator), then the best of up to `rounds`.
fn rates(rows: i64, rounds: usize) -> Result<Rates> {
    let fp32 = Gemms::new(Kind::Float, rows)?;
    let bf16 = Gemms::new(Kind::BFloat16, rows)?;
    let (best32, best16) = fp32.best(rounds, Some(&bf16))?;
    Ok(Rates {
        fp32: fp32.gflops(best32),
        bf16: bf16.gflops(best16),
    })
}
