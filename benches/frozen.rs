//! The frozen prefix against a plain libtorch forward of the same shapes and weights, side by
//! side in one run: a DINOv2 ViT-S/14-shaped model with random weights, 224×224 input, blocks
//! before `grad_from_block` (11). The plain forward is what libtorch gives with no mask
//! guidance, no position-embedding resize and nothing else of ours: the rate the cache build
//! could reach.
//!
//! - `forward`: our `MgVit::tokens_before` (what the token cache runs) on one batch; each rate
//!   is the best of BENCH_REPS, runs alternating (ours, plain, ours, …).
//! - `build`: the whole path `train` takes to build the token cache (decode the crops, the key,
//!   augment BENCH_VIEWS views + the plain view of BENCH_CROPS ~200 px crops, batch, frozen
//!   forward, store the rows in memory and in the cache file) against the plain forward of as
//!   many views in the same batches; builds and plain runs alternate (which goes first swaps
//!   every repetition), medians of BENCH_REPS, with where the build's time went and the CPU
//!   time per view (steadier than the wall clock when other processes load the machine); then
//!   our forward alone on the build's own batches, made beforehand (best of BENCH_REPS): the
//!   build's cost beyond the forward is its distance from this line.
//!
//! ```text
//! cargo bench --bench frozen
//! BENCH_CASES=build BENCH_PRECISION=fp32,bf16 BENCH_REPS=5 cargo bench --bench frozen
//! BENCH_CASES=forward BENCH_BATCH=32 BENCH_REPS=3 cargo bench --bench frozen
//! ```
//!
//! BENCH_PRECISION defaults to what `precision: auto` picks on this CPU; BENCH_CROPS to 32,
//! BENCH_VIEWS to 3, BENCH_REPS to 3. The load average is printed at the start and the end.

#[path = "../tests/data_fixture/mod.rs"]
mod data_fixture;

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
    /// The same weights as `vs` holds under names starting with `prefix`, in `kind`.
    fn from_vs(vs: &VarStore, prefix: &str, spec: &ArchSpec, kind: Kind) -> Plain {
        let vars: HashMap<String, Tensor> = vs.variables();
        let get = |name: &str| {
            vars.get(&format!("{prefix}{name}"))
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

/// `BENCH_PRECISION`: the kinds to run, by default what `precision: auto` picks here.
fn kinds() -> Vec<Kind> {
    match std::env::var("BENCH_PRECISION") {
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
    }
}

fn kind_name(kind: Kind) -> &'static str {
    if kind == Kind::BFloat16 {
        "bf16"
    } else {
        "fp32"
    }
}

fn main() {
    // The command line's heap policy, so that the steps are timed as `anomalyncd` runs them.
    anomalyncd::malloc::tune();
    let cases = std::env::var("BENCH_CASES").unwrap_or_else(|_| "forward,build".into());
    let reps: usize = env_or("BENCH_REPS", 3).max(1);
    println!(
        "load average at the start: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    for case in cases.split(',') {
        match case.trim() {
            "forward" => forward_case(reps),
            "build" => build::case(reps),
            other => {
                eprintln!("BENCH_CASES: forward and/or build, not {other}");
                std::process::exit(2);
            }
        }
    }
    println!(
        "load average at the end: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}

/// Case 1: our frozen-prefix forward against the plain one, on one batch.
fn forward_case(reps: usize) {
    let batch: i64 = env_or("BENCH_BATCH", 32);
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
    for kind in kinds() {
        let name = kind_name(kind);
        ours.set_frozen_kind(kind, UPTO);
        let plain = Plain::from_vs(&vs, "", spec, kind);
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

/// Case 2: the whole path `train` takes to build the token cache, against the plain forward.
mod build {
    use std::sync::Arc;
    use std::time::Instant;

    use anomalyncd::config::{Config, Precision};
    use anomalyncd::data::{CropCache, TransformSpec, ViewSource};
    use anomalyncd::model::Model;
    use anomalyncd::train::cache::{build_batch, BankKey, BankOptions, BuildPhases, TokenBank};
    use tch::{Device, Kind, Tensor};

    use super::{data_fixture, env_or, kind_name, kinds, Plain, SIDE};

    /// CPU seconds this process has used (all threads): under load from other processes the
    /// wall clock counts their time slices too, this does not.
    fn cpu_s() -> f64 {
        let mut u = std::mem::MaybeUninit::<libc::rusage>::uninit();
        // SAFETY: getrusage fills the out-parameter on success; it is read only then.
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr()) } != 0 {
            return f64::NAN;
        }
        // SAFETY: getrusage returned 0.
        let u = unsafe { u.assume_init() };
        let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
        s(u.ru_utime) + s(u.ru_stime)
    }

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    }

    /// A repetition: the build, and the plain forward's (wall, CPU) seconds.
    type Run = (Build, (f64, f64));

    /// One timed build: seconds in all, and in decoding, the key and the bank's phases.
    struct Build {
        total: f64,
        cpu: f64,
        decode: f64,
        key: f64,
        phases: BuildPhases,
    }

    /// What the build reads its views from, as `train` makes it: the decoded crops, the bank's
    /// key, and the seconds spent decoding and keying.
    fn source(
        cfg: &Config,
        set: &Arc<anomalyncd::data::CropSet>,
    ) -> (ViewSource, BankKey, f64, f64) {
        let spec = TransformSpec::new(cfg.models.image_size as u32);
        let workers = cfg.training.num_workers;
        let t = Instant::now();
        let crops = Arc::new(CropCache::build(set, &spec, workers).expect("crop cache"));
        let decode = t.elapsed().as_secs_f64();
        let key = BankKey::new(cfg, set, None, Device::Cpu).expect("key");
        let key_s = t.elapsed().as_secs_f64() - decode;
        let src =
            ViewSource::new(set.clone(), spec, key.view_seed, workers, Some(crops)).expect("views");
        (src, key, decode, key_s)
    }

    fn build(
        cfg: &Config,
        set: &Arc<anomalyncd::data::CropSet>,
        model: &Model,
        cache: &std::path::Path,
    ) -> Build {
        let (t, cpu) = (Instant::now(), cpu_s());
        let (src, key, decode, key_s) = source(cfg, set);
        let opts = BankOptions {
            key,
            cache_dir: Some(cache.to_path_buf()),
            spill_dir: cache.to_path_buf(),
            ram_budget: None,
        };
        let bank =
            TokenBank::open_or_build(model, Arc::new(src), &opts, Device::Cpu).expect("bank");
        let (total, cpu) = (t.elapsed().as_secs_f64(), cpu_s() - cpu);
        assert!(!bank.origin().reused, "a fresh cache folder per build");
        let phases = bank.build_phases().expect("built");
        drop(bank);
        let _ = std::fs::remove_dir_all(cache);
        Build {
            total,
            cpu,
            decode,
            key: key_s,
            phases,
        }
    }

    pub fn case(reps: usize) {
        let crops: usize = env_or("BENCH_CROPS", 32).max(2);
        let views: usize = env_or("BENCH_VIEWS", 3).max(1);
        let dir = tempfile::tempdir().expect("temp dir");
        // ~200 px crops, what binarize cuts from MTD tiles.
        let set = Arc::new(data_fixture::crop_set(
            dir.path(),
            &[("a", crops / 2)],
            &[("x", crops - crops / 2)],
            200,
        ));
        let n = set.len();
        let total_views = n * (views + 1);
        let batch = build_batch((SIDE / 14) * (SIDE / 14) + 1);
        // The build's batches: the augmented views, then the plain ones.
        let sizes: Vec<i64> = [n * views, n]
            .iter()
            .flat_map(|&m| {
                (0..m)
                    .step_by(batch)
                    .map(move |s| (m - s).min(batch) as i64)
            })
            .collect();
        for kind in kinds() {
            let name = kind_name(kind);
            let mut cfg = Config::default();
            cfg.models.pretrained_backbone = "dinov2_vits14".into();
            cfg.models.image_size = SIDE as usize;
            cfg.models.precision = match kind {
                Kind::BFloat16 => Precision::Bf16,
                _ => Precision::Fp32,
            };
            cfg.training.cache_views = views;
            tch::manual_seed(0);
            let model = Model::new(&cfg, set.num_classes(), None, Device::Cpu).expect("model");
            let plain = Plain::from_vs(&model.vs, "backbone.", cfg.arch(), kind);
            let x = Tensor::randn([batch as i64, 3, SIDE, SIDE], (Kind::Float, Device::Cpu));
            let run_plain = || {
                let (t, cpu) = (Instant::now(), cpu_s());
                for &b in &sizes {
                    let _ =
                        std::hint::black_box(tch::no_grad(|| plain.forward(&x.narrow(0, 0, b))));
                }
                (t.elapsed().as_secs_f64(), cpu_s() - cpu)
            };
            println!(
                "cache build: {n} crops (~200 px) x ({views} augmented + 1 plain) views = {total_views} views in batches of {batch}, {name}, {} loader workers, {} libtorch threads, cache file written; median of {reps}",
                cfg.training.num_workers,
                tch::get_num_threads()
            );
            // Warm-up (oneDNN primitives, allocator), then builds and plain forwards alternate,
            // the first of each pair swapped every repetition.
            let _ = tch::no_grad(|| plain.forward(&x.narrow(0, 0, 2)));
            let mut runs = Vec::new();
            for rep in 0..reps {
                let cache = dir.path().join(format!("cache-{rep}"));
                let (b, p) = if rep % 2 == 0 {
                    let b = build(&cfg, &set, &model, &cache);
                    (b, run_plain())
                } else {
                    let p = run_plain();
                    (build(&cfg, &set, &model, &cache), p)
                };
                let (rb, rp) = (total_views as f64 / b.total, total_views as f64 / p.0);
                println!(
                    "  rep {rep}: build {rb:6.2} views/s, plain {rp:6.2} views/s, ratio {:.3}; CPU s/view build {:.3}, plain {:.3}",
                    rb / rp,
                    b.cpu / total_views as f64,
                    p.1 / total_views as f64,
                );
                runs.push((b, p));
            }
            // Our forward alone on the build's own batches (made beforehand, no loader running
            // beside it): tells the forward's cost from the overlap with decoding and augmenting.
            let alone = {
                let (src, ..) = source(&cfg, &set);
                let pairs: Vec<(usize, usize)> = (0..n)
                    .flat_map(|i| (0..views).map(move |s| (i, s)))
                    .collect();
                let items: Vec<usize> = (0..n).collect();
                let mut batches: Vec<(Tensor, Tensor)> = pairs
                    .chunks(batch)
                    .map(|c| src.augmented(c).expect("views"))
                    .collect();
                batches.extend(items.chunks(batch).map(|c| src.plain(c).expect("views")));
                let block = cfg.models.grad_from_block;
                let mut best = f64::INFINITY;
                for _ in 0..reps {
                    let t = Instant::now();
                    for (v, m) in &batches {
                        let _ = std::hint::black_box(
                            model.backbone.tokens_before(v, m, block).expect("forward"),
                        );
                    }
                    best = best.min(t.elapsed().as_secs_f64());
                }
                best
            };
            let rate = |s: f64| total_views as f64 / s;
            let med = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(f).collect());
            println!(
                "  {name}  ours alone on the build's batches (best of {reps})  {:8.2} views/s",
                rate(alone)
            );
            let (rb, rp) = (med(&|r| rate(r.0.total)), med(&|r| rate(r.1 .0)));
            println!("  {name}  build (decode + key + augment + forward + store) {rb:8.2} views/s");
            println!("  {name}  plain libtorch, the same batches                 {rp:8.2} views/s");
            println!(
                "  {name}  build / plain (median of the per-rep ratios)     {:8.3}",
                med(&|r| r.1 .0 / r.0.total)
            );
            println!(
                "  {name}  CPU seconds per view: build {:.3}, plain {:.3} (median); plain / build {:.3}",
                med(&|r| r.0.cpu / total_views as f64),
                med(&|r| r.1 .1 / total_views as f64),
                med(&|r| r.1 .1 / r.0.cpu)
            );
            println!(
                "  {name}  phases (s, median): decode {:.2}, key {:.2}, prepare {:.2}, views {:.2} (waited for {:.2}), forward {:.2}, store {:.2}, finish {:.2}, rest {:.2}; plain forward {:.2}",
                med(&|r| r.0.decode),
                med(&|r| r.0.key),
                med(&|r| r.0.phases.prepare),
                med(&|r| r.0.phases.views),
                med(&|r| r.0.phases.waited),
                med(&|r| r.0.phases.forward),
                med(&|r| r.0.phases.store),
                med(&|r| r.0.phases.finish),
                med(&|r| r.0.total
                    - r.0.decode
                    - r.0.key
                    - r.0.phases.prepare
                    - r.0.phases.finish
                    - r.0.phases.waited
                    - r.0.phases.forward
                    - r.0.phases.store),
                med(&|r| r.1 .0),
            );
        }
    }
}
