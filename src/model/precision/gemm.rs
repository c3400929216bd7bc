//! Timing libtorch's GEMMs at the ViT's own shapes, fp32 against bf16, on the threads libtorch
//! uses now: the numbers `precision: auto` decides by.

use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};

use super::auto::Rates;
use crate::error::Result;

/// The ViT-S qkv and MLP-in linear maps on 2048 token rows (8 crops of 256 patches): the GEMMs
/// that dominate a frozen block, at a size where libtorch reaches its full rate.
const SHAPES: [(i64, i64); 2] = [(384, 1152), (384, 1536)];
const ROWS: i64 = 2048;
/// The bf16 probe's rows: without native bf16 units one full-size round would take seconds.
const PROBE_ROWS: i64 = 128;
/// Best of at most this many timed rounds after a warm-up…
const ROUNDS: usize = 5;
/// …stopping once a kind's rounds have taken this long (at least two rounds).
const BUDGET: Duration = Duration::from_millis(200);

/// fp32 and bf16 GFLOP/s of the shapes above (a few hundred ms in all where bf16 is fast, less
/// where the probe shows it is far slower).
pub fn measure() -> Result<Rates> {
    let _no_grad = tch::no_grad_guard();
    let fp32 = rate(Kind::Float, ROWS, ROUNDS)?;
    let probe = rate(Kind::BFloat16, PROBE_ROWS, 1)?;
    // Small GEMMs run below the full rate, so only a probe far behind fp32 settles it.
    let bf16 = if probe * 2.0 < fp32 {
        probe
    } else {
        rate(Kind::BFloat16, ROWS, ROUNDS)?
    };
    Ok(Rates { fp32, bf16 })
}

/// GFLOP/s of the shapes in `kind` on `rows` rows: one warm-up round (oneDNN primitive creation,
/// allocator), then the best of up to `rounds`.
fn rate(kind: Kind, rows: i64, rounds: usize) -> Result<f64> {
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
    let flops: f64 = SHAPES
        .iter()
        .map(|&(k, n)| 2.0 * (rows * k * n) as f64)
        .sum();
    let round = || -> Result<Duration> {
        let t = Instant::now();
        for (x, w) in &ops {
            // CPU ops run eagerly: the product is done when f_linear returns.
            let _ = x.f_linear::<Tensor>(w, None)?;
        }
        Ok(t.elapsed())
    };
    round()?;
    let start = Instant::now();
    let mut best = Duration::MAX;
    for i in 0..rounds.max(1) {
        if i >= 2 && start.elapsed() > BUDGET {
            break;
        }
        best = best.min(round()?);
    }
    Ok(flops / best.as_secs_f64().max(1e-9) / 1e9)
}
