//! Our frozen-prefix forward (`MgVit::tokens_before`, what the token cache runs) against a plain
//! libtorch forward of the same shapes and weights, side by side in one run: a DINOv2
//! ViT-S/14-shaped model with random weights, 224×224 input, blocks before
//! `grad_from_block` (11), at one batch and precision. The plain forward is what libtorch
//! gives with no mask guidance, no position-embedding resize and nothing else of ours: the
//! rate the cache build could reach.
//!
//!     cargo bench --bench frozen
//!     BENCH_PRECISION=fp32,bf16 BENCH_BATCH=32 BENCH_REPS=3 cargo bench --bench frozen
//!
//! BENCH_PRECISION defaults to what `precision: auto` picks on this CPU. Runs alternate
//! (ours, plain, ours, …) so that load from other processes hits both alike; each rate is the
//! best of BENCH_REPS.

use std::collections::HashMap;
use std::time::Instant;

use anomalyncd::config::Precision;
use anomalyncd::model::precision::frozen_kind;
use anomalyncd::model::{ArchSpec, MgVit};
use tch::{nn::VarStore, Device, Kind, Tensor};

const SIDE: i64 = 224;
const UPTO: usize = 11;
const MASK_LAYERS: usize = 9;
const LN_EPS: f64 = 1e-6;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One transformer block's weights in the benchmark's kind.
struct PlainBlock {
    ln1: (Tensor, Tensor),
    qkv: (Tensor, Tensor),
    proj: (Tensor, Tensor),
    ls1: Tensor,
    ln2: (Tensor, Tensor),
    fc1: (Tensor, Tensor),
    fc2: (Tensor, Tensor),
    ls2: Tensor,
}

/// The textbook ViT forward in libtorch ops: conv patch embedding, class token, a fixed
/// position embedding, then pre-norm blocks with fused attention.
struct Plain {
    patch: (Tensor, Tensor),
    cls: Tensor,
    pos: Tensor,
    blocks: Vec<PlainBlock>,
    heads: i64,
    p: i64,
}

impl Plain {
    /// The same weights as `vs` holds under `backbone.`-less names, in `kind`.
    fn from_vs(vs: &VarStore, spec: &ArchSpec, kind: Kind) -> Plain {
        let vars: HashMap<String, Tensor> = vs.variables();
        let get = |name: &str| {
            vars.get(name)
                .unwrap_or_else(|| panic!("no variable {name}"))
                .detach()
                .to_kind(kind)
        };
        let pair = |prefix: &str| {
            (
                get(&format!("{prefix}.weight")),
                get(&format!("{prefix}.bias")),
            )
        };
        let d = spec.embed_dim as i64;
        let grid = SIDE / spec.patch_size as i64;
        let blocks = (0..UPTO)
            .map(|i| {
                let b = |s: &str| format!("blocks.{i}.{s}");
                PlainBlock {
                    ln1: pair(&b("norm1")),
                    qkv: pair(&b("attn.qkv")),
                    proj: pair(&b("attn.proj")),
                    ls1: get(&b("ls1.gamma")),
                    ln2: pair(&b("norm2")),
                    fc1: pair(&b("mlp.fc1")),
                    fc2: pair(&b("mlp.fc2")),
                    ls2: get(&b("ls2.gamma")),
                }
            })
            .collect();
        Plain {
            patch: pair("patch_embed.proj"),
            cls: get("cls_token"),
            // Already at the 224 grid: the plain forward does not resize it per call.
            pos: Tensor::randn([1, 1 + grid * grid, d], (Kind::Float, Device::Cpu)).to_kind(kind)
                * 0.02,
            blocks,
            heads: spec.num_heads as i64,
            p: spec.patch_size as i64,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let x = x.to_kind(self.patch.0.kind());
        let t = x.conv2d(
            &self.patch.0,
            Some(&self.patch.1),
            [self.p, self.p],
            [0, 0],
            [1, 1],
            1,
        );
        let (b, d, _, _) = t.size4().expect("4-D");
        let t = t.flatten(2, -1).transpose(1, 2);
        let mut x = Tensor::cat(&[self.cls.expand([b, 1, d], false), t], 1) + &self.pos;
        let l = x.size()[1];
        let h = self.heads;
        let ln = |x: &Tensor, (w, b): &(Tensor, Tensor)| {
            x.layer_norm([d], Some(w), Some(b), LN_EPS, false)
        };
        let lin = |x: &Tensor, (w, b): &(Tensor, Tensor)| x.linear(w, Some(b));
        for blk in &self.blocks {
            let qkv = lin(&ln(&x, &blk.ln1), &blk.qkv)
                .reshape([b, l, 3, h, d / h])
                .permute([2, 0, 3, 1, 4]);
            let a = Tensor::scaled_dot_product_attention(
                &qkv.get(0),
                &qkv.get(1),
                &qkv.get(2),
                None::<&Tensor>,
                0.0,
                false,
                None,
                false,
            );
            let a = lin(&a.transpose(1, 2).reshape([b, l, d]), &blk.proj);
            x += a * &blk.ls1;
            let m = lin(&lin(&ln(&x, &blk.ln2), &blk.fc1).gelu("none"), &blk.fc2);
            x += m * &blk.ls2;
        }
        x
    }
}

/// Views/s of one call of `f` on a batch of `batch`.
fn rate(batch: i64, f: &dyn Fn() -> Tensor) -> f64 {
    let t = Instant::now();
    let _ = std::hint::black_box(f());
    batch as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let batch: i64 = env_or("BENCH_BATCH", 32);
    let reps: usize = env_or("BENCH_REPS", 3).max(1);
    let kinds: Vec<Kind> = match std::env::var("BENCH_PRECISION") {
        Ok(s) => s
            .split(',')
            .map(|p| match p.trim() {
                "fp32" => Kind::Float,
                "bf16" => Kind::BFloat16,
                other => {
                    eprintln!("BENCH_PRECISION: fp32 or bf16, not {other}");
                    std::process::exit(2);
                }
            })
            .collect(),
        Err(_) => vec![frozen_kind(Precision::Auto, Device::Cpu)],
    };
    let spec = ArchSpec::by_name("dinov2_vits14").expect("known arch");
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let mut ours = MgVit::new(&vs.root(), spec, MASK_LAYERS).expect("model");
    let x = Tensor::randn([batch, 3, SIDE, SIDE], (Kind::Float, Device::Cpu));
    // A defect square in the middle: the mask-guided blocks (3..) hide the patches outside it.
    let mask = Tensor::zeros([batch, 1, SIDE, SIDE], (Kind::Float, Device::Cpu));
    let _ = mask.narrow(2, 70, 84).narrow(3, 70, 84).fill_(1.0);
    println!(
        "frozen prefix: {} shape, random weights, blocks 0..{UPTO} ({} mask-guided), {SIDE}x{SIDE}, batch {batch}, best of {reps}, CPU, {} threads",
        spec.name,
        UPTO.saturating_sub(spec.depth - MASK_LAYERS),
        tch::get_num_threads()
    );
    for kind in kinds {
        let name = if kind == Kind::BFloat16 {
            "bf16"
        } else {
            "fp32"
        };
        ours.set_frozen_kind(kind, UPTO);
        let plain = Plain::from_vs(&vs, spec, kind);
        let run_ours = || tch::no_grad(|| ours.tokens_before(&x, &mask, UPTO).expect("forward"));
        let run_plain = || tch::no_grad(|| plain.forward(&x));
        // Warm-up on 2 views (oneDNN primitives, allocator).
        let (x2, m2) = (x.narrow(0, 0, 2), mask.narrow(0, 0, 2));
        let _ = tch::no_grad(|| ours.tokens_before(&x2, &m2, UPTO));
        let _ = tch::no_grad(|| plain.forward(&x2));
        let (mut best_ours, mut best_plain) = (0f64, 0f64);
        for _ in 0..reps {
            best_ours = best_ours.max(rate(batch, &run_ours));
            best_plain = best_plain.max(rate(batch, &run_plain));
        }
        println!("  {name}  ours (MgVit::tokens_before) {best_ours:8.2} views/s");
        println!("  {name}  plain libtorch              {best_plain:8.2} views/s");
        println!(
            "  {name}  ours / plain                {:8.2}",
            best_ours / best_plain
        );
    }
}
