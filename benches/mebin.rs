//! MEBin speed on the 392 oracle maps of MTD (reads ../shared/data): ms per map for
//! (a) the reference algorithm (oracle), single thread,
//! (b) the fast path (min-filter + union-find sweep), single thread,
//! (c) the whole `binarize` command (listing, MEBin, crops, files) on a 2-thread pool,
//! side by side with the Python reference's numbers measured on this machine.
//!
//! Run: `cargo bench --bench mebin` (skips with a message when ../shared is absent).

use std::path::PathBuf;
use std::time::Instant;

use anomalyncd::imageio::{self, GrayMap, IMAGE_EXTENSIONS, MAP_EXTENSIONS};
use anomalyncd::mebin::{self, oracle, Params, SearchRange};

/// The Python reference on this machine (from the issue): whole binarization stage, MEBin alone.
const PY_WHOLE_MS: f64 = 27.9;
const PY_MEBIN_MS: f64 = 12.0;

fn main() {
    let shared = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data"));
    let (maps_dir, images_dir) = (shared.join("mtd_oracle_maps"), shared.join("mtd/test"));
    if !maps_dir.is_dir() || !images_dir.is_dir() {
        eprintln!(
            "skipping the MEBin benchmark: {} or {} is absent",
            maps_dir.display(),
            images_dir.display()
        );
        return;
    }
    let maps = imageio::list_typed_files(&maps_dir, MAP_EXTENSIONS).expect("list maps");
    let images = imageio::list_typed_files(&images_dir, IMAGE_EXTENSIONS).expect("list images");
    let pairs = imageio::pair_by_stem(maps, images).pairs;
    let loaded: Vec<GrayMap> = pairs
        .iter()
        .map(|(m, _)| imageio::read_map(&m.path).expect("read map"))
        .collect();
    let n = loaded.len();
    let maxima: Vec<u16> = loaded.iter().map(GrayMap::max).collect();
    let range = SearchRange::from_maxima(&maxima, None).expect("range");
    let params = Params::default();
    println!(
        "MEBin benchmark: {n} maps ({}), search range [{}, {}]",
        maps_dir.display(),
        range.min_th,
        range.max_th
    );

    // (a) oracle, single thread, once over all maps
    let t = Instant::now();
    let slow: Vec<_> = loaded
        .iter()
        .map(|m| oracle::binarize_map(m, &range, &params))
        .collect();
    let oracle_ms = t.elapsed().as_secs_f64() * 1e3 / n as f64;

    // (b) fast path, single thread, best of 5 passes
    let mut fast_ms = f64::INFINITY;
    let mut fast = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        fast = loaded
            .iter()
            .map(|m| mebin::binarize_map(m, &range, &params))
            .collect();
        fast_ms = fast_ms.min(t.elapsed().as_secs_f64() * 1e3 / n as f64);
    }
    let same = fast.iter().zip(&slow).all(|(a, b)| a == b);
    assert!(same, "fast path and oracle disagree");

    // (c) the whole command on 2 threads, best of 3 runs into fresh folders
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("pool");
    // Outputs go under target/ (CARGO_TARGET_TMPDIR): on some machines /tmp makes file creation
    // ten times slower, which would measure the file system rather than the command.
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let ctx = anomalyncd::commands::Ctx {
        device: tch::Device::Cpu,
    };
    let mut whole_ms = f64::INFINITY;
    for rep in 0..3 {
        let args = anomalyncd::commands::binarize::BinarizeArgs {
            anomaly_maps: maps_dir.clone(),
            images: images_dir.clone(),
            out: tmp.path().join(format!("run{rep}")),
            config: None,
            set: Vec::new(),
            min_threshold: None,
            skip_unpaired: false,
            overwrite: false,
        };
        let t = Instant::now();
        pool.install(|| anomalyncd::commands::binarize::run(&args, &ctx))
            .expect("binarize");
        whole_ms = whole_ms.min(t.elapsed().as_secs_f64() * 1e3 / n as f64);
    }

    // Where the time of one map goes (single thread, library stages of the command).
    let out = tmp.path().join("stages");
    let mut t_stage = [0f64; 6];
    for ((m, im), map) in pairs.iter().zip(&loaded) {
        let item = mebin::MapItem {
            class_name: m.type_name.clone(),
            stem: m.stem.clone(),
            map: m.path.clone(),
            image: im.path.clone(),
        };
        let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let _ = imageio::read_map(&m.path).expect("map");
        t_stage[0] += ms(t);
        let t = Instant::now();
        let res = mebin::binarize_map(map, &range, &params);
        t_stage[1] += ms(t);
        let t = Instant::now();
        let picture = mebin::run::Picture::read(&im.path).expect("image");
        t_stage[2] += ms(t);
        let t = Instant::now();
        let mask = mebin::run::mask_at_image_size(&res.binary, picture.dimensions());
        let crops =
            mebin::run::crop_by_mask(&picture, &mask, res.est_anomaly_num, &Default::default());
        t_stage[3] += ms(t);
        let t = Instant::now();
        let _ = mebin::run::crop_scores(map, &range, picture.dimensions(), &crops.boxes);
        t_stage[4] += ms(t);
        let o = mebin::run::process_map(&item, map, &range, &params, &Default::default())
            .expect("process");
        let t = Instant::now();
        mebin::run::write_map_output(&out, &o).expect("write");
        t_stage[5] += ms(t);
    }
    let names = [
        "decode map",
        "MEBin (fast path)",
        "decode image",
        "mask resize + crop boxes + crops",
        "crop scores",
        "encode + write PNGs",
    ];
    println!("\nstages, 1 thread, ms/map:");
    for (name, t) in names.iter().zip(t_stage) {
        println!("  {name:<36} {:>8.3}", t / n as f64);
    }

    println!();
    println!("{:<52} {:>10} {:>16}", "", "ms/map", "vs Python");
    println!(
        "{:<52} {:>10.3} {:>15.1}x",
        "(a) oracle (reference algorithm), 1 thread",
        oracle_ms,
        PY_MEBIN_MS / oracle_ms
    );
    println!(
        "{:<52} {:>10.3} {:>15.1}x",
        "(b) fast path (MEBin only), 1 thread",
        fast_ms,
        PY_MEBIN_MS / fast_ms
    );
    println!(
        "{:<52} {:>10.3} {:>15.1}x",
        "(c) whole binarize command, 2 threads",
        whole_ms,
        PY_WHOLE_MS / whole_ms
    );
    println!();
    println!(
        "fast path vs oracle: {:.1}x; results identical on all {n} maps",
        oracle_ms / fast_ms
    );
    println!("Python reference: {PY_MEBIN_MS} ms/map MEBin alone, {PY_WHOLE_MS} ms/map whole binarization stage");
    println!(
        "target for (c): <= 0.6 ms/map on 2 cores: {}",
        if whole_ms <= 0.6 { "met" } else { "NOT met" }
    );
}
