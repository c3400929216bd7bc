//! Fuzzing with proptest: every reader of user data must give a result or a typed error (exit
//! code 2, "fix this input"), never a panic, a hang or a run-time error code, whatever the bytes.
//!
//! - config: arbitrary text, mutated valid YAML (also as raw bytes in a file) and `--set` lines;
//! - maps: arbitrary bytes and mutated PNGs as a map, PNGs of odd sizes, colour types and bit
//!   depths as map and image through the whole binarize library path (MEBin, crops, outputs), and
//!   MEBin + cropping on random maps and settings;
//! - checkpoints: arbitrary bytes, and a valid tiny checkpoint with byte flips, insertions and
//!   truncations, read and rebuilt into a model as `test`/`predict` do;
//! - weights: arbitrary bytes and mutated .pth / .safetensors files.
//!
//! The case counts are small so that the suite stays fast; `FUZZ_CASES=100000 cargo test
//! --release --test fuzz` runs every target that long (see docs/fuzzing.md).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anomalyncd::config::Config;
use anomalyncd::mebin::crop::{crop_boxes, CropRule};
use anomalyncd::mebin::run::{run, BinarizeJob, MapItem, RangeSource};
use anomalyncd::mebin::{binarize_map, BitDepth, GrayMap, Params, SearchRange};
use anomalyncd::Error;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Cases per target: `FUZZ_CASES` when set, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(default: u32) -> ProptestConfig {
    ProptestConfig {
        cases: cases(default),
        // a shrunk failing input is what the fix needs; keep shrinking short on long runs
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    }
}

/// A typed error that tells the user to fix an input (exit 2), or a test failure saying what
/// came back instead.
fn input_error(e: &Error, what: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        e.exit_code(),
        2,
        "{}: {} (exit code {})",
        what,
        e,
        e.exit_code()
    );
    let msg = e.to_string();
    prop_assert!(
        !msg.is_empty() && !msg.contains('\n'),
        "{}: not one line: {:?}",
        what,
        msg
    );
    Ok(())
}

/// Byte edits: (position fraction, kind, byte). Kind 0 flips bits, 1 inserts, 2 deletes, 3
/// overwrites, 4 truncates.
fn edits(max: usize) -> impl Strategy<Value = Vec<(f64, u8, u8)>> {
    prop::collection::vec((0.0f64..1.0, 0u8..5, any::<u8>()), 1..max)
}

fn mutate(mut b: Vec<u8>, edits: &[(f64, u8, u8)], focus: Option<usize>) -> Vec<u8> {
    for &(f, kind, byte) in edits {
        // half the edits land in the first `focus` bytes (a header), where parsers branch most
        let span = match focus {
            Some(n) if byte % 2 == 0 => n.min(b.len()),
            _ => b.len(),
        };
        let i = ((f * span as f64) as usize).min(span.saturating_sub(1));
        match kind {
            0 if !b.is_empty() => b[i] ^= byte | 1,
            1 => b.insert(i.min(b.len()), byte),
            2 if !b.is_empty() => {
                b.remove(i);
            }
            3 if !b.is_empty() => b[i] = byte,
            4 => b.truncate(i),
            _ => {}
        }
    }
    b
}

// ------------------------------------------------------------------------------------ config

const REFERENCE_YAML: &str = include_str!("fixtures/AnomalyNCD.yaml");

/// Valid configs to mutate: the reference file, our full default and a few partial files.
fn yaml_seed() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        REFERENCE_YAML.to_string(),
        Config::default().to_yaml(),
        "training:\n  epochs: 2\n  lr: 0.01\n".to_string(),
        "models:\n  pretrained_backbone: vit_tiny\n  mask_layers: 2\n  grad_from_block: 1\n  image_size: 32\n  backbone_weights: w.safetensors\n".to_string(),
        "binarization: {sample_rate: 2, min_threshold: 3.5}\ninference: {merge_temperature: 50}\n".to_string(),
        // aliases and anchors: must not blow up
        "a: &a [1, 2]\nb: &b [*a, *a, *a, *a]\nc: &c [*b, *b, *b, *b]\nd: [*c, *c, *c, *c]\n".to_string(),
    ])
}

/// YAML fragments that stress the parser and the typed fields when spliced in.
const TOKENS: &[&str] = &[
    "-1",
    "0",
    ".nan",
    ".inf",
    "-.inf",
    "1e400",
    "18446744073709551616",
    "~",
    "null",
    "[",
    "]",
    "{",
    "}",
    "[1, 2]",
    "{a: 1}",
    "!!binary aGVsbG8=",
    "&x",
    "*x",
    "*y",
    "? ",
    ": ",
    "- ",
    "\t",
    "\n  ",
    "'",
    "\"",
    "\\u0000",
    "#",
    "---\n",
    "...\n",
    "%YAML 1.2\n",
    "!<tag:x>",
    "true",
    "yes",
    "0x10",
    "0o7",
    "1_000",
    "\u{feff}",
    "é",
    "\u{1F600}",
    "vit_tiny",
    "training:",
    "models:",
];

fn check_config_text(text: &str) -> Result<(), TestCaseError> {
    match Config::from_yaml_str(text, "fuzz.yaml") {
        Ok(cfg) => {
            // an accepted config is valid, names a known backbone and round-trips
            prop_assert!(cfg.validate().is_ok());
            let _ = cfg.arch();
            let again = Config::from_yaml_str(&cfg.to_yaml(), "again").map_err(|e| {
                TestCaseError::fail(format!("round trip of an accepted config failed: {e}"))
            })?;
            prop_assert_eq!(again, cfg);
        }
        Err(e) => input_error(&e, "config text")?,
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    /// Arbitrary text.
    #[test]
    fn config_arbitrary_text(text in ".{0,300}") {
        check_config_text(&text)?;
    }

    /// Valid YAML with tokens spliced in at random places and random byte edits; the edited
    /// bytes (perhaps not UTF-8) are also read from a file as `--config` does.
    #[test]
    fn config_mutated_yaml(
        seed in yaml_seed(),
        splices in prop::collection::vec((0.0f64..1.0, prop::sample::select(TOKENS)), 0..6),
        byte_edits in edits(6),
        raw in any::<bool>(),
    ) {
        let mut text = seed;
        for (f, tok) in splices {
            let mut i = (f * text.len() as f64) as usize;
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            text.insert_str(i, tok);
        }
        check_config_text(&text)?;
        if raw {
            let bytes = mutate(text.into_bytes(), &byte_edits, None);
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join("c.yaml");
            std::fs::write(&p, &bytes).unwrap();
            match Config::load(Some(&p), &[]) {
                Ok(cfg) => prop_assert!(cfg.validate().is_ok()),
                Err(e) => input_error(&e, "config file")?,
            }
        }
    }

    /// `--set` lines built from real and bad sections, keys and values.
    #[test]
    fn config_overrides(
        sets in prop::collection::vec(
            (
                prop::sample::select(vec!["training", "models", "loss", "binarization", "experiment", "inference", "", "x.y", "training.lr"]),
                prop::sample::select(vec!["epochs", "lr", "batch_size", "pretrained_backbone", "sample_rate", "min_threshold", "backbone_weights", "exp_root", "merge_temperature", "", "nope"]),
                prop_oneof![prop::sample::select(TOKENS).prop_map(str::to_string), ".{0,12}"],
                prop::sample::select(vec!["=", "", "==", " = "]),
            ),
            0..4,
        ),
    ) {
        let lines: Vec<String> = sets.iter().map(|(s, k, v, eq)| format!("{s}.{k}{eq}{v}")).collect();
        match Config::load(None, &lines) {
            Ok(cfg) => prop_assert!(cfg.validate().is_ok()),
            Err(e) => input_error(&e, "--set")?,
        }
    }
}

// --------------------------------------------------------------------------------------- maps

/// A small valid gray PNG (the mutation seed for maps).
fn valid_png() -> &'static [u8] {
    static PNG: OnceLock<Vec<u8>> = OnceLock::new();
    PNG.get_or_init(|| {
        let img =
            image::GrayImage::from_fn(23, 17, |x, y| image::Luma([((x * 11) ^ (y * 7)) as u8]));
        let mut buf = std::io::Cursor::new(Vec::new());
        img.write_to(&mut buf, image::ImageFormat::Png).unwrap();
        buf.into_inner()
    })
}

/// A PNG of any colour type and valid bit depth, `w`×`h`, pixel bytes from `data` (repeated).
fn odd_png(path: &Path, (w, h): (u32, u32), kind: u8, depth: u8, data: &[u8]) {
    use png::{BitDepth as D, ColorType as C};
    let (color, depth, channels) = match kind % 5 {
        0 => (
            C::Grayscale,
            [D::One, D::Two, D::Four, D::Eight, D::Sixteen][depth as usize % 5],
            1,
        ),
        1 => (C::Rgb, [D::Eight, D::Sixteen][depth as usize % 2], 3),
        2 => (
            C::Indexed,
            [D::One, D::Two, D::Four, D::Eight][depth as usize % 4],
            1,
        ),
        3 => (
            C::GrayscaleAlpha,
            [D::Eight, D::Sixteen][depth as usize % 2],
            2,
        ),
        _ => (C::Rgba, [D::Eight, D::Sixteen][depth as usize % 2], 4),
    };
    let bits = depth as usize * channels;
    let stride = (w as usize * bits).div_ceil(8);
    let seed = if data.is_empty() { &[7u8][..] } else { data };
    let pixels: Vec<u8> = seed
        .iter()
        .copied()
        .cycle()
        .take(stride * h as usize)
        .collect();
    let f = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(f), w, h);
    enc.set_color(color);
    enc.set_depth(depth);
    if color == C::Indexed {
        // a palette shorter than the index range: out-of-range indices must not crash
        let n = 1usize << (depth as usize).min(8);
        let entries = (n / 2).max(1);
        enc.set_palette(
            (0..entries * 3)
                .map(|i| (i * 37) as u8)
                .collect::<Vec<u8>>(),
        );
    }
    enc.write_header()
        .unwrap()
        .write_image_data(&pixels)
        .unwrap();
}

fn odd_png_strategy() -> impl Strategy<Value = ((u32, u32), u8, u8, Vec<u8>)> {
    (
        (1u32..40, 1u32..40),
        0u8..5,
        0u8..5,
        prop::collection::vec(any::<u8>(), 1..64),
    )
}

proptest! {
    #![proptest_config(config(128))]

    /// Arbitrary bytes, and mutated PNGs, as a map: read_map gives a map or an input error; a map
    /// it gives goes through MEBin and cropping.
    #[test]
    fn map_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        byte_edits in edits(8),
        mutated in any::<bool>(),
        ext in prop::sample::select(vec!["png", "tif", "bmp"]),
    ) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(format!("m.{ext}"));
        let bytes = if mutated { mutate(valid_png().to_vec(), &byte_edits, Some(64)) } else { bytes };
        std::fs::write(&p, &bytes).unwrap();
        match anomalyncd::imageio::read_map(&p) {
            Ok(map) => {
                prop_assert_eq!(map.pixels.len(), map.width * map.height);
                let range = SearchRange::new(0.0, map.max() as f64).unwrap();
                let r = binarize_map(&map, &range, &Params::default());
                prop_assert_eq!(r.binary.dimensions(), (map.width as u32, map.height as u32));
                let boxes = crop_boxes(&r.binary, r.est_anomaly_num, &CropRule::default());
                prop_assert!(boxes.len() <= r.est_anomaly_num + 1);
            }
            Err(e) => input_error(&e, "map bytes")?,
        }
        match anomalyncd::imageio::read_rgb(&p) {
            Ok(img) => prop_assert!(img.width() > 0 && img.height() > 0),
            Err(e) => input_error(&e, "image bytes")?,
        }
    }

    /// Mutated `.npy` files as anomaly maps: a finite float map of the stated size or an input
    /// error, never a panic; a map it gives goes through the peak fallback.
    #[test]
    fn npy_map_bytes(byte_edits in edits(8), fortran in any::<bool>(), h in 1usize..6, w in 1usize..6) {
        let v: Vec<f32> = (0..w * h).map(|i| i as f32 * 0.5 - 1.0).collect();
        let valid = anomalyncd::imageio::npy::encode_f32(&[h, w], &v, fortran);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.npy");
        std::fs::write(&p, mutate(valid, &byte_edits, Some(64))).unwrap();
        match anomalyncd::imageio::read_anomaly_map(&p) {
            Ok(anomalyncd::imageio::RawMap::Float(f)) => {
                prop_assert_eq!(f.values.len(), f.width * f.height);
                prop_assert!(f.values.iter().all(|v| v.is_finite()));
                let (lo, hi) = f.min_max();
                let map = f.to_levels(&anomalyncd::imageio::FloatScale { min: lo, max: hi });
                if let Some(r) = anomalyncd::mebin::peak::peak_region(&map) {
                    prop_assert!(r.mask.as_raw().iter().any(|&b| b != 0));
                }
            }
            Ok(other) => prop_assert!(false, "a .npy read as {:?}", other),
            Err(e) => input_error(&e, "npy bytes")?,
        }
    }

    /// MEBin and cropping on random maps, ranges and settings: masks of the map's size, at most
    /// est + 1 boxes, every box with a positive area.
    #[test]
    fn mebin_and_crops_on_random_maps(
        (w, h) in (1usize..48, 1usize..48),
        levels in prop::collection::vec(any::<u16>(), 1..64),
        sixteen in any::<bool>(),
        lo in 0.0f64..70000.0,
        span in 0.0f64..70000.0,
        sample_rate in 1u32..=255,
        min_interval_len in 1usize..12,
        erode in any::<bool>(),
    ) {
        let depth = if sixteen { BitDepth::Sixteen } else { BitDepth::Eight };
        let pixels: Vec<u16> = levels
            .iter()
            .cycle()
            .take(w * h)
            .map(|&v| if sixteen { v } else { v % 256 })
            .collect();
        let map = GrayMap { width: w, height: h, depth, pixels };
        let range = SearchRange::new(lo, lo + span).unwrap();
        let params = Params { sample_rate, min_interval_len, erode };
        let r = binarize_map(&map, &range, &params);
        prop_assert_eq!(r.binary.dimensions(), (w as u32, h as u32));
        prop_assert_eq!(r.component_counts.len(), params.scores().len());
        let boxes = crop_boxes(&r.binary, r.est_anomaly_num, &CropRule::default());
        prop_assert!(boxes.len() <= r.est_anomaly_num + 1);
        for b in &boxes {
            let (bw, bh) = b.pixel_size();
            prop_assert!(bw > 0 && bh > 0, "empty box {:?} on a {}x{} mask", b, w, h);
        }
    }
}

proptest! {
    #![proptest_config(config(48))]

    /// PNGs of odd sizes, colour types and bit depths (and, sometimes, damaged bytes) as maps and
    /// images through the whole binarize library path: the run succeeds with its outputs on
    /// disk, or fails with an input error.
    #[test]
    fn binarize_odd_pngs(
        items in prop::collection::vec((odd_png_strategy(), odd_png_strategy()), 1..4),
        damage in prop::option::of((0usize..4, edits(4))),
        min_threshold in prop::option::of(0.0f64..300.0),
    ) {
        let d = tempfile::tempdir().unwrap();
        let mut list = Vec::new();
        for (k, ((ms, mk, md, mdata), (is, ik, id, idata))) in items.iter().enumerate() {
            let map = d.path().join(format!("maps/t/{k}.png"));
            let image = d.path().join(format!("images/t/{k}.png"));
            std::fs::create_dir_all(map.parent().unwrap()).unwrap();
            std::fs::create_dir_all(image.parent().unwrap()).unwrap();
            odd_png(&map, *ms, *mk, *md, mdata);
            odd_png(&image, *is, *ik, *id, idata);
            list.push(MapItem { class_name: "t".into(), stem: k.to_string(), map, image, normal: false });
        }
        if let Some((which, e)) = &damage {
            let it = &list[which % list.len()];
            let p = if which % 2 == 0 { &it.map } else { &it.image };
            let b = mutate(std::fs::read(p).unwrap(), e, Some(64));
            std::fs::write(p, b).unwrap();
        }
        let out = d.path().join("out");
        let job = BinarizeJob {
            items: &list,
            params: Params::default(),
            range: RangeSource::FromMaps { min_threshold },
            rule: CropRule::default(),
            out: &out,
            progress: false,
        };
        match run(&job) {
            Ok(summary) => {
                prop_assert_eq!(summary.records.len(), list.len());
                for f in summary.output_files() {
                    prop_assert!(out.join(&f).is_file(), "{} missing", f.display());
                }
            }
            Err(e) => input_error(&e, "binarize")?,
        }
    }
}

// -------------------------------------------------------------------------------- checkpoints

/// A valid checkpoint of the tiny model (vit_tiny, 2 base classes + 2 clusters), as bytes.
fn valid_checkpoint() -> &'static (Vec<u8>, usize) {
    static CK: OnceLock<(Vec<u8>, usize)> = OnceLock::new();
    CK.get_or_init(|| {
        use anomalyncd::train::checkpoint::{save, Checkpoint, CheckpointMeta, FORMAT_VERSION};
        let mut cfg = Config::default();
        cfg.models.pretrained_backbone = "vit_tiny".into();
        cfg.models.mask_layers = 2;
        cfg.models.grad_from_block = 2;
        cfg.models.image_size = 32;
        cfg.models.n_head = 2;
        cfg.models.precision = anomalyncd::config::Precision::Fp32;
        let m = anomalyncd::model::Model::new(&cfg, 4, None, tch::Device::Cpu).unwrap();
        let model = m.vs.variables().into_iter().collect();
        let meta = CheckpointMeta {
            format_version: FORMAT_VERSION,
            anomalyncd_version: "fuzz".into(),
            libtorch_version: "fuzz".into(),
            config: cfg.clone(),
            category: "c".into(),
            base_classes: vec!["b1".into(), "b2".into()],
            novel_classes: vec![],
            num_novel_clusters: 2,
            epoch: 1,
            chosen_head: 1,
            backbone: "vit_tiny".into(),
            mask_layers: 2,
            anomaly_scores: None,
            search_range: Some((3.0, 200.0)),
            float_scale: None,
            merge_temperature: 50.0,
            history: vec![],
            num_classes_estimate: None,
            cluster_classes: vec![],
        };
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.safetensors");
        save(
            &p,
            &Checkpoint {
                meta,
                model,
                optim: Default::default(),
            },
        )
        .unwrap();
        let bytes = std::fs::read(&p).unwrap();
        // header: 8 length bytes, then the JSON header (with the metadata)
        let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        (bytes, header)
    })
}

fn check_checkpoint(bytes: &[u8]) -> Result<(), TestCaseError> {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("checkpoint.safetensors");
    std::fs::write(&p, bytes).unwrap();
    match anomalyncd::train::checkpoint::load(&p) {
        Ok(_) => {
            // readable: rebuilding the model from it (as test/predict do) works or is an input error
            if let Err(e) = anomalyncd::infer::trained::load(&p, tch::Device::Cpu) {
                input_error(&e, "rebuilding the model")?;
            }
        }
        Err(e) => input_error(&e, "checkpoint")?,
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn checkpoint_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        header_like in any::<bool>(),
    ) {
        let mut b = bytes;
        if header_like && b.len() > 8 {
            // a plausible header length, so the parser goes past its first check
            let n = (b.len() - 8) as u64;
            b[..8].copy_from_slice(&n.to_le_bytes());
            b[8] = b'{';
        }
        check_checkpoint(&b)?;
    }

    /// The valid tiny checkpoint with flips, insertions, deletions and truncations (half of them
    /// in the header, where the metadata JSON sits).
    #[test]
    fn checkpoint_mutated(byte_edits in edits(6)) {
        let (bytes, header) = valid_checkpoint();
        check_checkpoint(&mutate(bytes.clone(), &byte_edits, Some(*header)))?;
    }

    /// Edits inside the metadata JSON that keep it JSON: a number or a name replaced.
    #[test]
    fn checkpoint_edited_metadata(
        field in prop::sample::select(vec![
            "\"num_novel_clusters\":2", "\"chosen_head\":1", "\"n_head\":2", "\"image_size\":32",
            "\"mask_layers\":2", "\"grad_from_block\":2", "\"format_version\":1",
            "\"pretrained_backbone\":\"vit_tiny\"", "\"merge_temperature\":50.0",
            "\"search_range\":[3.0,200.0]", "\"base_classes\":[\"b1\",\"b2\"]",
        ]),
        value in prop::sample::select(vec![
            "0", "-1", "1", "3", "7", "4294967296", "1e308", "null", "\"x\"", "[]", "{}",
            "\"dino_vits16\"", "\"unknown\"", "[1.0]", "[\"b1\"]", "NaN", "2.5",
        ]),
    ) {
        let (bytes, header) = valid_checkpoint();
        let text = String::from_utf8(bytes[8..*header].to_vec()).unwrap();
        // the metadata is a JSON string inside the header JSON: its quotes are escaped there
        let escaped = |s: &str| s.replace('"', "\\\"");
        let (key, _) = field.split_once(':').unwrap();
        let from = escaped(field);
        prop_assume!(text.contains(&from));
        let edited = text.replacen(&from, &escaped(&format!("{key}:{value}")), 1);
        let mut b = (edited.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(edited.as_bytes());
        b.extend_from_slice(&bytes[*header..]);
        check_checkpoint(&b)?;
    }
}

// ------------------------------------------------------------------------------------ weights

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/model")).join(name)
}

proptest! {
    #![proptest_config(config(128))]

    /// Weights files (.pth zip with a pickle, .safetensors) mutated or random: the reader
    /// gives tensors or an input error.
    #[test]
    fn weights_mutated_or_random(
        seed in prop::sample::select(vec![
            "multihead_state_dict.pth", "multihead_teacher_checkpoint.pth", "multihead_legacy.pth", "safetensors", "random",
        ]),
        random in prop::collection::vec(any::<u8>(), 0..200),
        byte_edits in edits(6),
    ) {
        let bytes = match seed {
            "random" => random,
            "safetensors" => mutate(valid_checkpoint().0.clone(), &byte_edits, Some(valid_checkpoint().1)),
            f => mutate(std::fs::read(fixture(f)).unwrap(), &byte_edits, None),
        };
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("w.bin");
        std::fs::write(&p, &bytes).unwrap();
        if let Err(e) = anomalyncd::model::weights::read_tensors(&p) {
            input_error(&e, "weights")?;
        }
    }
}
