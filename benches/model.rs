//! Forward-pass throughput of the MGViT at 224×224 on the CPU: crops per second for ViT-S/14 and
//! ViT-B/8 (batch 16), fp32 vs bf16 (all blocks in bf16, as inference runs), plain vs fused
//! attention, with the peak resident memory of each run and the bf16 class-token difference.
//!
//!     cargo bench --bench model
//!     BENCH_ARCHS=dinov2_vits14 BENCH_BATCH=8 cargo bench --bench model
//!
//! bf16 runs at full batch only where `precision: auto` picks it (bf16 GEMMs timed ≥ 1.3× faster);
//! elsewhere it can be far slower (~40× without native bf16 units), so bf16 is timed at batch 1 for
//! ViT-S/14 only and skipped for the larger model (BENCH_BF16=full forces the full runs).

use std::time::Instant;

use anomalyncd::model::mgvit::IGNORED_TENSORS;
use anomalyncd::model::precision::cpu_bf16_is_faster;
use anomalyncd::model::weights::load_into;
use anomalyncd::model::{ArchSpec, AttnImpl, MgVit};
use tch::{nn::VarStore, Device, Kind, Tensor};

const SIDE: i64 = 224;

#[path = "common/mod.rs"]
mod common;
use common::{peak_rss_mib, reset_peak};

struct Run {
    label: String,
    batch: i64,
    crops_per_s: f64,
    peak_mib: f64,
}

/// Times `forward` on the first `batch` crops of `x`, repeated until 3 s have passed (at least
/// once, at most 5 times). Returns crops/s, peak RSS and the class tokens.
fn time_forward(m: &MgVit, x: &Tensor, batch: i64) -> (f64, f64, Tensor) {
    let x = x.narrow(0, 0, batch);
    let mask = Tensor::ones([batch, 1, SIDE, SIDE], (Kind::Float, Device::Cpu));
    // Warm-up on 2 crops (oneDNN primitive creation, allocator).
    let _ = tch::no_grad(|| {
        m.forward(
            &x.narrow(0, 0, batch.min(2)),
            &mask.narrow(0, 0, batch.min(2)),
        )
    });
    reset_peak();
    let start = Instant::now();
    let mut n = 0;
    let mut out = Tensor::zeros([1], (Kind::Float, Device::Cpu));
    while n == 0 || (start.elapsed().as_secs_f64() < 3.0 && n < 5) {
        out = tch::no_grad(|| m.forward(&x, &mask)).expect("forward");
        n += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    ((batch * n) as f64 / secs, peak_rss_mib(), out)
}

fn main() {
    // The command line's heap policy, so that the steps are timed as `anomalyncd` runs them.
    anomalyncd::malloc::tune();
    let archs = std::env::var("BENCH_ARCHS").unwrap_or_else(|_| "dinov2_vits14,dino_vitb8".into());
    let batch: i64 = std::env::var("BENCH_BATCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    let fast_bf16 = cpu_bf16_is_faster() || std::env::var("BENCH_BF16").as_deref() == Ok("full");
    println!(
        "MGViT forward at {SIDE}x{SIDE}, CPU, {} threads, auto picks bf16: {}",
        tch::get_num_threads(),
        cpu_bf16_is_faster()
    );
    let mut runs: Vec<Run> = Vec::new();
    for name in archs.split(',').map(str::trim) {
        let Some(spec) = ArchSpec::by_name(name) else {
            eprintln!(
                "unknown arch {name}; known: {}",
                ArchSpec::names().join(", ")
            );
            std::process::exit(2);
        };
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let mut m = MgVit::new(&vs.root(), spec, 9.min(spec.depth)).expect("model");
        let weights = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/data/weights"))
            .join(format!("{name}.safetensors"));
        let pretrained = weights.is_file()
            && load_into(&vs, "", &weights, IGNORED_TENSORS, name)
                .map_err(|e| eprintln!("{e}"))
                .is_ok();
        println!(
            "\n{name} ({} weights)",
            if pretrained { "pretrained" } else { "random" }
        );
        let x = Tensor::randn([batch, 3, SIDE, SIDE], (Kind::Float, Device::Cpu));
        let mut fp32_cls: Option<Tensor> = None;
        let first = runs.len();
        for kind in [Kind::Float, Kind::BFloat16] {
            let b = if kind == Kind::Float || fast_bf16 {
                batch
            } else if spec.embed_dim <= 384 {
                1
            } else {
                println!(
                    "  bf16: skipped (bf16 is not faster on this CPU; BENCH_BF16=full forces it)"
                );
                continue;
            };
            m.set_frozen_kind(kind, spec.depth);
            for imp in [AttnImpl::Plain, AttnImpl::Fused] {
                m.set_attention(imp);
                let (cps, peak, cls) = time_forward(&m, &x, b);
                let label = format!(
                    "{name} {} {imp:?}",
                    if kind == Kind::Float { "fp32" } else { "bf16" }
                );
                println!("  {label:<32} batch {b:>2}: {cps:8.2} crops/s, peak RSS {peak:7.0} MiB");
                if kind == Kind::Float && imp == AttnImpl::Plain {
                    fp32_cls = Some(cls);
                } else if let (Some(f), Kind::BFloat16) = (&fp32_cls, kind) {
                    let f = f.narrow(0, 0, cls.size()[0]);
                    let d = (&cls - &f).abs().max().double_value(&[]);
                    let cos = Tensor::cosine_similarity(&cls, &f, 1, 1e-8)
                        .min()
                        .double_value(&[]);
                    println!(
                        "      class token vs fp32: max abs diff {d:.3e}, min cosine {cos:.5}"
                    );
                }
                runs.push(Run {
                    label,
                    batch: b,
                    crops_per_s: cps,
                    peak_mib: peak,
                });
            }
        }
        let base = runs[first].crops_per_s;
        println!(
            "  {:<32} {:>6} {:>10} {:>9} {:>13}",
            "", "batch", "crops/s", "vs fp32", "peak RSS MiB"
        );
        for r in &runs[first..] {
            println!(
                "  {:<32} {:>6} {:>10.2} {:>8.2}x {:>13.0}",
                r.label,
                r.batch,
                r.crops_per_s,
                r.crops_per_s / base,
                r.peak_mib
            );
        }
    }
}
