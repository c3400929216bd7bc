//! The frozen-prefix token cache (`training.cache_frozen`): its augmented rows are the frozen
//! blocks' tokens of the bank views (in f16) and its plain rows those of the test views (in
//! f32), the same whether kept in memory or read from its file; the file is reused by a run
//! with the same key, rebuilt for another key, and never trusted when truncated or foreign.

use std::path::Path;
use std::sync::Arc;

use anomalyncd::config::{Config, Precision};
use anomalyncd::data::*;
use anomalyncd::model::Model;
use anomalyncd::train::cache::{BankKey, BankOptions, TokenBank};
use tch::{Device, Kind, Tensor};

use crate::data_fixture;

fn tiny_config() -> Config {
    let mut cfg = Config::default();
    cfg.models.pretrained_backbone = "vit_tiny".into();
    cfg.models.grad_from_block = 2;
    cfg.models.mask_layers = 2;
    cfg.models.image_size = 32;
    cfg.models.precision = Precision::Fp32;
    cfg.training.batch_size = 4;
    cfg.training.num_workers = 2;
    cfg.training.cache_views = 3;
    cfg
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    set: Arc<CropSet>,
    cfg: Config,
    model: Model,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let set = Arc::new(data_fixture::crop_set(
        &root,
        &[("a", 3), ("b", 3)],
        &[("x", 3), ("y", 2)],
        40,
    ));
    let cfg = tiny_config();
    tch::manual_seed(0);
    let model = Model::new(&cfg, set.num_classes(), None, Device::Cpu).unwrap();
    Fixture {
        _dir: dir,
        root,
        set,
        cfg,
        model,
    }
}

fn views(f: &Fixture, cfg: &Config) -> Arc<ViewSource> {
    Arc::new(
        ViewSource::new(
            f.set.clone(),
            TransformSpec::new(32),
            cfg.training.view_seed(&cfg.experiment),
            2,
            None,
        )
        .unwrap(),
    )
}

fn open(f: &Fixture, cfg: &Config, cache: Option<&Path>, budget: Option<u64>) -> TokenBank {
    let opts = BankOptions {
        key: BankKey::new(cfg, &f.set, None, Device::Cpu).unwrap(),
        cache_dir: cache.map(Path::to_path_buf),
        spill_dir: f.root.clone(),
        ram_budget: budget,
    };
    TokenBank::open_or_build(&f.model, views(f, cfg), &opts, Device::Cpu).unwrap()
}

fn all_rows(bank: &TokenBank, n: usize, views: usize) -> (Tensor, Tensor) {
    let rows: Vec<i64> = (0..(n * views) as i64).collect();
    let items: Vec<usize> = (0..n).collect();
    (
        bank.gather(&rows, Device::Cpu).unwrap().0,
        bank.plain(&items, Device::Cpu).unwrap().0,
    )
}

#[test]
fn bank_rows_are_the_frozen_tokens_in_memory_and_on_disk() {
    let f = fixture();
    let ram = open(&f, &f.cfg, None, None);
    let disk = open(&f, &f.cfg, None, Some(0));
    let spill = f.root.join(".anomalyncd-token-cache.bin");
    assert!(
        std::fs::read_dir(&f.root).unwrap().flatten().any(|e| e
            .file_name()
            .to_string_lossy()
            .contains("anomalyncd-token-cache")),
        "a zero budget keeps the rows in a file"
    );
    assert_eq!(ram.bytes(), disk.bytes());

    // Rows item·views + slot hold view `slot` of crop `item`.
    let pairs = [(0usize, 0usize), (4, 2), (10, 1)];
    let rows: Vec<i64> = pairs.iter().map(|&(i, s)| (i * 3 + s) as i64).collect();
    let src = views(&f, &f.cfg);
    let (v, m) = src.augmented(&pairs).unwrap();
    let want = f.model.backbone.tokens_before(&v, &m, 2).unwrap();
    let want_guide = f.model.backbone.token_guide(&m);
    for bank in [&ram, &disk] {
        let (tokens, guide) = bank.gather(&rows, Device::Cpu).unwrap();
        assert_eq!(tokens.kind(), Kind::Float);
        let scale = want.abs().max().double_value(&[]);
        let diff = (&tokens - &want).abs().max().double_value(&[]);
        assert!(
            diff <= scale * 1e-3,
            "f16 rounding only: {diff} vs scale {scale}"
        );
        assert!(guide.equal(&want_guide));
    }
    // The same seed builds the same bank (a resumed run rebuilds it).
    let again = open(&f, &f.cfg, None, None);
    let n = f.set.len();
    assert!(all_rows(&again, n, 3).0.equal(&all_rows(&ram, n, 3).0));
    assert!(all_rows(&disk, n, 3).1.equal(&all_rows(&ram, n, 3).1));
    drop(disk);
    assert!(
        !spill.exists(),
        "a file of this run only goes with the bank"
    );
}

/// The plain slot's class tokens against the whole backbone on the test views: the tokens are
/// kept in f32, so they agree within f32 rounding (stated tolerance: 1e-5 of the tokens' scale).
#[test]
fn class_tokens_of_the_plain_slot_equal_a_full_forward() {
    let f = fixture();
    let bank = open(&f, &f.cfg, None, None);
    let items: Vec<usize> = (0..f.set.len()).collect();
    let (v, m) = views(&f, &f.cfg).plain(&items).unwrap();
    let whole = f.model.backbone.forward(&v, &m).unwrap();
    let (tokens, guide) = bank.plain(&items, Device::Cpu).unwrap();
    let cached = f
        .model
        .backbone
        .forward_from_guide(&tokens, &guide, bank.block())
        .unwrap();
    let scale = whole.abs().max().double_value(&[]).max(1.0);
    let diff = (&cached - &whole).abs().max().double_value(&[]);
    assert!(diff <= 1e-5 * scale, "{diff} vs scale {scale}");
}

/// Soft guidance (`models.guidance: soft`): the crops' maps guide the prefix, the bank keeps
/// their levels, and the cached path gives the direct forward's class tokens; the hard mask's
/// bank has another key and other tokens.
#[test]
fn soft_guidance_reads_the_maps_and_has_its_own_key() {
    let f = fixture();
    let mut cfg = f.cfg.clone();
    cfg.models.guidance = anomalyncd::config::GuidanceMode::Soft;
    cfg.models.guidance_lambda = 4.0;
    let novel = NovelSource::from_binarize_out(&f.root.join("out"))
        .with_guidance(anomalyncd::config::GuidanceMode::Soft);
    let set = Arc::new(CropSet::load(Some(&f.root.join("base")), &novel, None).unwrap());
    assert!(set.items.iter().all(|it| it.labelled == it.map.is_none()));
    tch::manual_seed(0);
    let model = Model::new(&cfg, set.num_classes(), None, Device::Cpu).unwrap();
    let soft = Fixture {
        _dir: tempfile::tempdir().unwrap(),
        root: f.root.clone(),
        set,
        cfg: cfg.clone(),
        model,
    };
    let bank = open(&soft, &cfg, None, None);
    let hard = open(&f, &f.cfg, None, None);
    let key = |cfg: &Config, set: &CropSet| BankKey::new(cfg, set, None, Device::Cpu).unwrap();
    let (soft_key, hard_key) = (key(&cfg, &soft.set), key(&f.cfg, &f.set));
    assert_ne!(soft_key.digest(), hard_key.digest());
    assert_ne!(
        soft_key.crops, hard_key.crops,
        "the maps' bytes, not the masks'"
    );
    let items: Vec<usize> = soft.set.novel_indices();
    let (v, m) = views(&soft, &cfg).plain(&items).unwrap();
    // Maps are grey levels: the guide is not a 0/1 mask.
    assert!(Vec::<f32>::try_from(m.view([-1]))
        .unwrap()
        .iter()
        .any(|&x| x > 0.0 && x < 1.0));
    let whole = soft.model.backbone.forward(&v, &m).unwrap();
    let (tokens, guide) = bank.plain(&items, Device::Cpu).unwrap();
    let cached = soft
        .model
        .backbone
        .forward_from_guide(&tokens, &guide, bank.block())
        .unwrap();
    let scale = whole.abs().max().double_value(&[]).max(1.0);
    assert!((&cached - &whole).abs().max().double_value(&[]) <= 1e-5 * scale);
    let (ht, hg) = hard.plain(&items, Device::Cpu).unwrap();
    let hard_cls = f
        .model
        .backbone
        .forward_from_guide(&ht, &hg, hard.block())
        .unwrap();
    assert!((&cached - &hard_cls).abs().max().double_value(&[]) > 1e-4 * scale);
}

#[test]
fn a_second_run_reuses_the_file_and_another_key_rebuilds() {
    let f = fixture();
    let cache = f.root.join("cache");
    let first = open(&f, &f.cfg, Some(&cache), None);
    assert!(!first.origin().reused);
    let file = first
        .origin()
        .path
        .clone()
        .expect("a kept cache has a file");
    assert!(file.starts_with(&cache) && file.is_file());
    assert_eq!(std::fs::metadata(&file).unwrap().len(), first.bytes());
    let n = f.set.len();

    // Another epoch count or loss: the same key, the file is read. (A training seed too, with
    // a weights file: these random weights are drawn with it, see the key's unit tests.)
    let mut other = f.cfg.clone();
    other.training.view_seed = Some(f.cfg.experiment.seed);
    other.training.epochs = 3;
    other.loss.sup_weight = 0.9;
    for (budget, cfg) in [(None, &f.cfg), (Some(0), &other)] {
        let again = open(&f, cfg, Some(&cache), budget);
        assert!(again.origin().reused);
        let (a, p) = all_rows(&again, n, 3);
        let (a0, p0) = all_rows(&first, n, 3);
        assert!(a.equal(&a0) && p.equal(&p0));
    }
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);

    // Another view seed or number of views: another file.
    let mut seeded = f.cfg.clone();
    seeded.training.view_seed = Some(99);
    let b = open(&f, &seeded, Some(&cache), None);
    assert!(!b.origin().reused);
    assert_ne!(b.origin().path, first.origin().path);
    assert!(!all_rows(&b, n, 3).0.equal(&all_rows(&first, n, 3).0));
    let mut more = f.cfg.clone();
    more.training.cache_views = 2;
    assert!(!open(&f, &more, Some(&cache), None).origin().reused);
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 3);
}

#[test]
fn a_truncated_or_foreign_file_is_rebuilt_not_trusted() {
    let f = fixture();
    let cache = f.root.join("cache");
    let first = open(&f, &f.cfg, Some(&cache), None);
    let file = first.origin().path.clone().unwrap();
    let n = f.set.len();
    let (a0, p0) = all_rows(&first, n, 3);
    let good = std::fs::read(&file).unwrap();
    let damaged: Vec<Vec<u8>> = vec![
        good[..good.len() - 100].to_vec(),
        b"not a token cache at all".to_vec(),
        {
            // The right length, but no end marker (a build killed before it finished).
            let mut g = good.clone();
            let len = g.len();
            g[len - 8..].copy_from_slice(b"XXXXXXXX");
            g
        },
        {
            // Another key's header under this key's name.
            let text = String::from_utf8_lossy(&good[..4096.min(good.len())]).into_owned();
            let pos = text.find("\"view_seed\":").unwrap() + "\"view_seed\":".len();
            let mut g = good.clone();
            g[pos] = if g[pos] == b'1' { b'2' } else { b'1' };
            g
        },
    ];
    // A killed build's temporary file (its process is gone) is cleared by the next build.
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let abandoned = cache.join(format!(".{name}.999999999.tmp"));
    std::fs::write(&abandoned, b"half").unwrap();
    for bytes in damaged {
        std::fs::write(&file, &bytes).unwrap();
        let bank = open(&f, &f.cfg, Some(&cache), None);
        assert!(!bank.origin().reused, "a damaged file is rebuilt");
        let (a, p) = all_rows(&bank, n, 3);
        assert!(a.equal(&a0) && p.equal(&p0));
        assert_eq!(
            std::fs::read(&file).unwrap(),
            good,
            "the rebuilt file is whole again"
        );
        assert!(!abandoned.exists());
    }
}
