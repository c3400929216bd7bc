//! The frozen-prefix token bank (`training.cache_frozen`): its rows are the frozen blocks'
//! tokens of the bank views (in f16), the same whether kept in memory or spilled to disk, and
//! the spill file is removed with the bank.

use std::sync::Arc;

use anomalyncd::config::{Config, Precision};
use anomalyncd::data::*;
use anomalyncd::model::Model;
use anomalyncd::train::cache::{BankOptions, TokenBank};
use tch::{Device, Kind};

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
    cfg
}

#[test]
fn bank_rows_are_the_frozen_tokens_in_memory_and_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let set = Arc::new(data_fixture::crop_set(
        dir.path(),
        &[("a", 3), ("b", 3)],
        &[("x", 3), ("y", 2)],
        40,
    ));
    let cfg = tiny_config();
    let spec = TransformSpec::new(32);
    let loader =
        TrainLoader::new(set.clone(), spec, LoaderOptions::from_config(&cfg), None).unwrap();
    tch::manual_seed(0);
    let model = Model::new(&cfg, set.num_classes(), None, Device::Cpu).unwrap();
    let opts = |budget| BankOptions {
        views: 3,
        block: 2,
        spill_dir: dir.path().to_path_buf(),
        ram_budget: budget,
    };
    let ram = TokenBank::build(&model, &loader, &opts(None), Device::Cpu).unwrap();
    let disk = TokenBank::build(&model, &loader, &opts(Some(0)), Device::Cpu).unwrap();
    let spill = dir.path().join(".anomalyncd-frozen-cache.f16");
    assert!(spill.is_file(), "a zero budget spills to disk");
    assert_eq!(ram.bytes(), disk.bytes());

    // Rows item·views + slot hold view `slot` of crop `item`.
    let pairs = [(0usize, 0usize), (4, 2), (10, 1)];
    let rows: Vec<i64> = pairs.iter().map(|&(i, s)| (i * 3 + s) as i64).collect();
    let (views, masks) = loader.bank_views(&pairs).unwrap();
    let want = model.backbone.tokens_before(&views, &masks, 2).unwrap();
    let want_hidden = model.backbone.token_mask(&masks);
    for bank in [&ram, &disk] {
        let (tokens, hidden) = bank.gather(&rows, Device::Cpu).unwrap();
        assert_eq!(tokens.kind(), Kind::Float);
        let scale = want.abs().max().double_value(&[]);
        let diff = (&tokens - &want).abs().max().double_value(&[]);
        assert!(
            diff <= scale * 1e-3,
            "f16 rounding only: {diff} vs scale {scale}"
        );
        assert!(hidden.equal(&want_hidden));
        // The cached tokens give the class token of the whole forward (up to f16 rounding).
        let cls = model
            .backbone
            .forward_from_hidden(&tokens, &hidden, 2)
            .unwrap();
        let whole = model.backbone.forward(&views, &masks).unwrap();
        let d: f64 = (&cls - &whole).abs().max().double_value(&[]);
        assert!(
            d < 1e-2 * whole.abs().max().double_value(&[]).max(1.0),
            "{d}"
        );
    }
    // The same seed builds the same bank (a resumed run rebuilds it).
    let again = TokenBank::build(&model, &loader, &opts(None), Device::Cpu).unwrap();
    let all: Vec<i64> = (0..(set.len() * 3) as i64).collect();
    assert!(again
        .gather(&all, Device::Cpu)
        .unwrap()
        .0
        .equal(&ram.gather(&all, Device::Cpu).unwrap().0));
    drop(disk);
    assert!(!spill.exists(), "the spill file goes with the bank");
}
