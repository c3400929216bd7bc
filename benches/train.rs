//! Training-step throughput on the CPU with the ViT-S/14 shape at 224 (batch 32 × 2 views,
//! data loading included): samples per second uncached (fp32, and bf16 frozen prefix) and on
//! the frozen-prefix cache, with the cost of building that cache and the peak memory of each,
//! printed side by side in one run. The reference Python implementation trains at 3.17
//! samples/s on this machine (MTD + SD-900 crops, fp32, 2 threads, 2 loader workers).
//!
//!     cargo bench --bench train
//!     BENCH_STEPS=5 BENCH_CACHED_STEPS=40 BENCH_VIEWS=4 BENCH_BF16=skip cargo bench --bench train
//!     BENCH_BUSY=skip cargo bench --bench train   # without the "beside 1 busy process" cases
//!     BENCH_THREADS=2 cargo bench --bench train   # a fixed thread count (default: auto, as the CLI)
//!
//! The busy cases first train for [`SETTLE`] beside the busy process, so that the thread policy
//! (`--threads auto`) has seen it, then time the same steps as the idle cases.
//!
//! The crops are synthetic (~200 px, what binarize cuts from MTD tiles): a step's cost does not
//! depend on their content. Weights are random unless `data/weights/dinov2_vits14.safetensors`
//! exists (the speed is the same either way).

#[path = "../tests/data_fixture/mod.rs"]
mod data_fixture;

use std::sync::Arc;
use std::time::Instant;

use anomalyncd::config::{Config, Precision};
use anomalyncd::data::*;
use anomalyncd::model::precision::cpu_bf16_is_faster;
use anomalyncd::model::Model;
use anomalyncd::train::cache::{BankKey, BankOptions, TokenBank};
use anomalyncd::train::losses::Criterion;
use anomalyncd::train::trainer::{optimiser, run_epoch, EpochData};
use tch::Device;

/// The Python reference's measured training speed here (samples/s).
const REFERENCE: f64 = 3.17;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[path = "common/mod.rs"]
mod common;
use common::{peak_rss_mib, reset_peak};

struct Case {
    name: String,
    samples_per_s: f64,
    peak_mib: f64,
    /// libtorch's intra-op threads when the case ended (`--threads auto` may have changed them).
    threads: i32,
}

impl Case {
    /// A timed case, with the thread count it ended at.
    fn new(name: impl Into<String>, samples_per_s: f64, peak_mib: f64) -> Self {
        Self {
            name: name.into(),
            samples_per_s,
            peak_mib,
            threads: tch::get_num_threads(),
        }
    }
}

fn config(precision: Precision) -> Config {
    let mut cfg = Config::default();
    cfg.models.pretrained_backbone = "dinov2_vits14".into();
    cfg.models.precision = precision;
    cfg.training.batch_size = 32;
    cfg.training.num_workers = 2;
    cfg
}

/// How long the busy cases train before they are timed: two of the thread policy's windows.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(5);

/// Times `steps` training steps after one warm-up step (and after `settle` of steps, when
/// given); returns samples/s.
fn time_steps(
    cfg: &Config,
    loader: &TrainLoader,
    set: &CropSet,
    bank: Option<&TokenBank>,
    steps: usize,
    weights: Option<&std::path::Path>,
    settle: Option<std::time::Duration>,
) -> (f64, f64) {
    tch::manual_seed(0);
    let model = Model::new(cfg, set.num_classes(), weights, Device::Cpu).expect("model");
    let criterion = Criterion::new(
        &cfg.loss,
        set.num_base_classes(),
        set.num_classes(),
        cfg.training.epochs,
    )
    .expect("criterion");
    let mut opt = optimiser(&model, cfg);
    let last_good = std::path::Path::new("none");
    let data = EpochData {
        cfg,
        loader,
        criterion: &criterion,
        bank,
        neighbours: None,
        device: Device::Cpu,
        last_good,
    };
    let pb = indicatif::ProgressBar::hidden();
    run_epoch(&model, &mut opt, &data, 0, 0.01, Some(1), &pb).expect("warm-up step");
    if let Some(settle) = settle {
        let t = Instant::now();
        while t.elapsed() < settle {
            run_epoch(&model, &mut opt, &data, 0, 0.01, Some(1), &pb).expect("settling step");
        }
    }
    reset_peak();
    let t = Instant::now();
    let mut samples = 0;
    let mut epoch = 1;
    while samples < steps * cfg.training.batch_size {
        let left = steps - samples / cfg.training.batch_size;
        let s = run_epoch(&model, &mut opt, &data, epoch, 0.01, Some(left), &pb).expect("steps");
        samples += s.samples;
        epoch += 1;
    }
    (samples as f64 / t.elapsed().as_secs_f64(), peak_rss_mib())
}

fn main() {
    // The command line's heap policy, so that the steps are timed as `anomalyncd` runs them.
    anomalyncd::malloc::tune();
    let threads = std::env::var("BENCH_THREADS").unwrap_or_else(|_| "auto".into());
    let threads: anomalyncd::threads::ThreadSetting = threads.parse().expect("BENCH_THREADS");
    anomalyncd::threads::configure(threads).expect("threads");
    let steps = env_usize("BENCH_STEPS", 3);
    let cached_steps = env_usize("BENCH_CACHED_STEPS", 30);
    let views = env_usize("BENCH_VIEWS", 4);
    let bf16 = std::env::var("BENCH_BF16").unwrap_or_default();
    let dir = tempfile::tempdir().expect("temp dir");
    let set = Arc::new(data_fixture::crop_set(
        dir.path(),
        &[("a", 16), ("b", 16)],
        &[("x", 16), ("y", 16)],
        200,
    ));
    let weights = std::path::Path::new("data/weights/dinov2_vits14.safetensors");
    let weights = weights.is_file().then_some(weights);
    let cfg = config(Precision::Fp32);
    let spec = TransformSpec::new(224);
    let cache = Arc::new(CropCache::build(&set, &spec, 2).expect("crop cache"));
    let loader = TrainLoader::new(
        set.clone(),
        spec,
        LoaderOptions::from_config(&cfg),
        Some(cache),
    )
    .expect("loader");
    println!(
        "training step, ViT-S/14 at 224, batch 32 x 2 views, grad_from_block {}, {} crops, {} threads ({threads:?}), auto picks bf16: {}, weights: {}",
        cfg.models.grad_from_block,
        set.len(),
        tch::get_num_threads(),
        cpu_bf16_is_faster(),
        if weights.is_some() { "dinov2_vits14" } else { "random" }
    );
    let mut cases = Vec::new();
    let (rate, peak) = time_steps(&cfg, &loader, &set, None, steps, weights, None);
    cases.push(Case::new("uncached, fp32", rate, peak));
    let uncached = rate;
    if bf16 != "skip" {
        // Where bf16 is not faster it can be several times slower (no native units): one step.
        let n = if cpu_bf16_is_faster() || bf16 == "full" {
            steps
        } else {
            1
        };
        let (rate, peak) = time_steps(
            &config(Precision::Bf16),
            &loader,
            &set,
            None,
            n,
            weights,
            None,
        );
        cases.push(Case::new(
            format!("uncached, bf16 frozen prefix ({n} step)"),
            rate,
            peak,
        ));
    }

    // The cache: built once (timed apart), then steps on it.
    tch::manual_seed(0);
    let model = Model::new(&cfg, set.num_classes(), weights, Device::Cpu).expect("model");
    reset_peak();
    let t = Instant::now();
    let mut bank_cfg = cfg.clone();
    bank_cfg.training.cache_views = views;
    let opts = BankOptions {
        key: BankKey::new(&bank_cfg, &set, weights, Device::Cpu).expect("key"),
        cache_dir: None,
        spill_dir: dir.path().to_path_buf(),
        ram_budget: None,
    };
    let src = ViewSource::new(
        set.clone(),
        TransformSpec::new(cfg.models.image_size as u32),
        0,
        cfg.training.num_workers,
        None,
    )
    .expect("views");
    let bank = TokenBank::open_or_build(&model, std::sync::Arc::new(src), &opts, Device::Cpu)
        .expect("bank");
    let build_s = t.elapsed().as_secs_f64();
    let build_peak = peak_rss_mib();
    drop(model);
    let (rate, peak) = time_steps(
        &cfg,
        &loader,
        &set,
        Some(&bank),
        cached_steps,
        weights,
        None,
    );
    cases.push(Case::new(
        format!("frozen-prefix cache, fp32 ({views} views/crop)"),
        rate,
        peak.max(build_peak),
    ));

    // The same steps beside one busy single-threaded process (a shell loop), as on a shared
    // machine: the ratio to the idle rates above, in the same run.
    let mut busy_ratios = Vec::new();
    if std::env::var("BENCH_BUSY").as_deref() != Ok("skip") {
        let mut busy = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .expect("a busy shell loop");
        let (rate, peak) = time_steps(&cfg, &loader, &set, None, steps, weights, Some(SETTLE));
        busy_ratios.push(("uncached, fp32", rate / uncached));
        cases.push(Case::new(
            "uncached, fp32, beside 1 busy process",
            rate,
            peak,
        ));
        let cached = cases
            .iter()
            .find(|c| c.name.starts_with("frozen-prefix cache"))
            .map_or(f64::NAN, |c| c.samples_per_s);
        let (rate, peak) = time_steps(
            &cfg,
            &loader,
            &set,
            Some(&bank),
            cached_steps,
            weights,
            Some(SETTLE),
        );
        busy_ratios.push(("frozen-prefix cache, fp32", rate / cached));
        cases.push(Case::new(
            "frozen-prefix cache, beside 1 busy process",
            rate,
            peak,
        ));
        let _ = busy.kill();
        let _ = busy.wait();
    }

    println!(
        "{:<44} {:>10} {:>12} {:>14} {:>10} {:>8}",
        "case", "samples/s", "vs uncached", "vs reference", "peak MiB", "threads"
    );
    for c in &cases {
        println!(
            "{:<44} {:>10.2} {:>11.2}x {:>13.2}x {:>10.0} {:>8}",
            c.name,
            c.samples_per_s,
            c.samples_per_s / uncached,
            c.samples_per_s / REFERENCE,
            c.peak_mib,
            c.threads
        );
    }
    let bank_views = set.len() * views;
    println!(
        "cache build: {bank_views} views in {build_s:.1} s ({:.2} views/s, {:.1} MB of tokens); \
         it costs as much as {:.1} uncached samples, i.e. {:.2} uncached epochs of this set",
        bank_views as f64 / build_s,
        bank.bytes() as f64 / 1e6,
        build_s * uncached,
        build_s * uncached / set.len() as f64
    );
    println!("reference (Python, measured on this machine): {REFERENCE} samples/s");
    for (name, r) in busy_ratios {
        println!(
            "beside 1 busy process: {name} at {:.0} % of its idle rate (threads: see the table)",
            100.0 * r
        );
    }
}
