//! Throughput of the training data pipeline alone (no model): augmented views per second for
//! batches of 32 crops × 2 views at 224, from the in-memory crop cache and from disk, on one
//! thread and on all cores, printed side by side in one run.
//!
//! `cargo bench --bench data` (ANOMALYNCD_BENCH_BATCHES sets the batches per case, default 8).

#[path = "../tests/data_fixture/mod.rs"]
mod data_fixture;

use std::sync::Arc;
use std::time::Instant;

use anomalyncd::data::*;

const BATCH: usize = 32;

fn main() {
    let batches: usize = std::env::var("ANOMALYNCD_BENCH_BATCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dir = tempfile::tempdir().expect("temp dir");
    // Crops of about the size binarize cuts from 200–600 px industrial images.
    let set = Arc::new(data_fixture::crop_set(
        dir.path(),
        &[("a", 32), ("b", 32)],
        &[("x", 32), ("y", 32), ("z", 32), ("w", 32)],
        200,
    ));
    let spec = TransformSpec::new(224);

    let t = Instant::now();
    let cache = Arc::new(CropCache::build(&set, &spec, cores).expect("cache"));
    let per_crop = t.elapsed().as_secs_f64() / set.len() as f64;
    println!(
        "data pipeline: {} crops (~200 px), batch {BATCH} x 2 views at 224, {batches} batches per case, {cores} cores",
        set.len()
    );
    println!(
        "crop cache: {:.2} ms per crop to decode + resize ({:.1} MB for {} crops)",
        per_crop * 1e3,
        cache.bytes() as f64 / 1e6,
        set.len()
    );

    let run = |workers: usize, cached: bool| -> f64 {
        let opts = LoaderOptions {
            batch_size: BATCH,
            num_workers: workers,
            seed: 1,
            prefetch: 1,
        };
        let loader = TrainLoader::new(set.clone(), spec, opts, cached.then(|| cache.clone()))
            .expect("loader");
        let draws = loader.sampler().epoch(0);
        // One warm-up batch, then the timed ones.
        loader.batch(0, 0, &draws[0]).expect("batch");
        let t = Instant::now();
        for b in 0..batches {
            let idx = &draws[b % draws.len()];
            std::hint::black_box(loader.batch(0, b, idx).expect("batch"));
        }
        (batches * BATCH * 2) as f64 / t.elapsed().as_secs_f64()
    };
    // The transform alone: two views of cached crops written into reused buffers, no tensors.
    let transform_only = {
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
        let (mut img, mut mask) = (vec![0f32; spec.image_len()], vec![0f32; spec.mask_len()]);
        let n = batches * BATCH * 2;
        let t = Instant::now();
        for k in 0..n {
            let params = TrainParams::sample(&mut rng, &spec);
            apply_train(
                cache
                    .get(k % cache.len())
                    .expect("the bench set fits the cache"),
                &params,
                &spec,
                &mut img,
                &mut mask,
            );
            std::hint::black_box(&img);
        }
        n as f64 / t.elapsed().as_secs_f64()
    };
    let base = run(1, true);
    let cases = [
        (
            "transform only (no batch, no tensors), 1 thread",
            transform_only,
        ),
        ("augment from cache, 1 thread", base),
        ("augment from cache, all cores", run(cores, true)),
        ("decode + augment from disk, 1 thread", run(1, false)),
        ("decode + augment from disk, all cores", run(cores, false)),
    ];
    println!(
        "{:<48} {:>12} {:>10} {:>14}",
        "case", "views/s", "vs first", "ms per batch"
    );
    for (name, rate) in cases {
        println!(
            "{name:<48} {rate:>12.1} {:>9.2}x {:>14.1}",
            rate / base,
            (BATCH * 2) as f64 / rate * 1e3
        );
    }

    // The prefetching iterator over a whole epoch, with a consumer that does nothing.
    let opts = LoaderOptions {
        batch_size: BATCH,
        num_workers: cores,
        seed: 1,
        prefetch: 1,
    };
    let loader = TrainLoader::new(set.clone(), spec, opts, Some(cache.clone())).expect("loader");
    let t = Instant::now();
    let n: usize = loader.epoch(1).map(|b| b.expect("batch").len()).sum();
    let rate = (n * 2) as f64 / t.elapsed().as_secs_f64();
    println!(
        "{:<48} {rate:>12.1} {:>9.2}x {:>14.1}",
        "epoch iterator (prefetch), all cores",
        rate / base,
        (BATCH * 2) as f64 / rate * 1e3
    );
}
