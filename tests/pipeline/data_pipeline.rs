//! The training data pipeline (crop sets, augmentations, sampler, loaders) on small crop folders
//! the tests write themselves (see `data_fixture`); no `../shared` needed.

use std::path::PathBuf;
use std::sync::Arc;

use anomalyncd::data::*;
use tch::{Kind, Tensor};

use crate::data_fixture;

struct Crops {
    _dir: tempfile::TempDir,
    base: PathBuf,
    novel: NovelSource,
}

fn crops(base: &[(&str, usize)], novel: &[(&str, usize)], flat: bool) -> Crops {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("base");
    let out = dir.path().join("binarize_out");
    data_fixture::write_base(&b, base, 40);
    data_fixture::write_novel(&out, novel, 40, flat);
    Crops {
        base: b,
        novel: NovelSource::from_binarize_out(&out),
        _dir: dir,
    }
}

fn standard() -> Crops {
    crops(
        &[("smear", 2), ("dent", 3)],
        &[("hole", 4), ("crack", 5)],
        false,
    )
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).view([-1])).unwrap()
}

fn opts(batch_size: usize, num_workers: usize, seed: u64) -> LoaderOptions {
    LoaderOptions {
        batch_size,
        num_workers,
        seed,
        prefetch: 1,
    }
}

fn err_of(r: anomalyncd::Result<CropSet>) -> (String, i32) {
    let e = r.unwrap_err();
    (e.to_string(), e.exit_code())
}

#[test]
fn class_indices_put_sorted_base_classes_first_then_sorted_novel_types() {
    let c = standard();
    let set = CropSet::load(Some(&c.base), &c.novel, None).unwrap();
    assert_eq!(set.base_classes, ["dent", "smear"]);
    assert_eq!(set.novel_types, ["crack", "hole"]);
    assert_eq!(
        (set.len(), set.num_novel_clusters, set.num_classes()),
        (14, 2, 4)
    );
    let summary: Vec<(Option<usize>, bool)> =
        set.items.iter().map(|i| (i.label, i.labelled)).collect();
    let mut want = vec![(Some(0), true); 3];
    want.extend([(Some(1), true); 2]);
    want.extend([(Some(2), false); 5]);
    want.extend([(Some(3), false); 4]);
    assert_eq!(summary, want);
    assert_eq!(set.items[0].id, "dent/000.png");
    assert!(set.items[..5].iter().all(|i| i.score == 1.0));
    let hole1 = set
        .items
        .iter()
        .find(|i| i.id == "hole/hole001_crop1.png")
        .unwrap();
    assert!((hole1.score - 0.35).abs() < 1e-6);
    assert!(hole1.mask.ends_with("crops/masks/hole/hole001_crop1.png"));
    assert_eq!(set.base_indices(), (0..5).collect::<Vec<_>>());
    assert_eq!(set.novel_indices(), (5..14).collect::<Vec<_>>());
    let more = CropSet::load(Some(&c.base), &c.novel, Some(6)).unwrap();
    assert_eq!(more.num_classes(), 8);
}

#[test]
fn a_flat_novel_folder_loads_without_labels_once_the_cluster_count_is_given() {
    let c = crops(&[("a", 2)], &[("x", 3), ("y", 2)], true);
    let (msg, code) = err_of(CropSet::load(Some(&c.base), &c.novel, None));
    assert!(msg.contains("--num-classes") && code == 2, "{msg}");
    let set = Arc::new(CropSet::load(Some(&c.base), &c.novel, Some(2)).unwrap());
    assert!(set.novel_types.is_empty() && !set.novel_labels_known());
    assert_eq!(set.len(), 7);
    assert!(set.items[2..]
        .iter()
        .all(|i| i.label.is_none() && !i.labelled && i.score >= 0.3));
    let loader =
        TrainLoader::new(set.clone(), TransformSpec::new(16), opts(7, 2, 1), None).unwrap();
    for batch in loader.epoch(0) {
        let b = batch.unwrap();
        let labels = Vec::<i64>::try_from(&b.labels).unwrap();
        let lab = Vec::<bool>::try_from(&b.labelled).unwrap();
        for (l, is_base) in labels.iter().zip(lab) {
            assert_eq!(*l == -1, !is_base, "{labels:?}");
        }
    }
}

#[test]
fn bad_inputs_are_one_line_errors_naming_the_file() {
    let c = standard();
    let nowhere = c.base.with_file_name("nowhere");
    let (msg, code) = err_of(CropSet::load(Some(&nowhere), &c.novel, None));
    assert!(
        msg.contains("no base data") && msg.contains("nowhere") && code == 2,
        "{msg}"
    );

    let empty = c.base.with_file_name("empty_base");
    std::fs::create_dir_all(empty.join("images")).unwrap();
    let (msg, _) = err_of(CropSet::load(Some(&empty), &c.novel, None));
    assert!(msg.contains("no base data"), "{msg}");

    let no_novel = NovelSource::from_binarize_out(&nowhere);
    let (msg, code) = err_of(CropSet::load(Some(&c.base), &no_novel, None));
    assert!(msg.contains("no novel crops") && code == 2, "{msg}");
    let empty_out = c.base.with_file_name("empty_out");
    std::fs::create_dir_all(empty_out.join("crops/images")).unwrap();
    let (msg, _) = err_of(CropSet::load(
        Some(&c.base),
        &NovelSource::from_binarize_out(&empty_out),
        None,
    ));
    assert!(msg.contains("no novel crops"), "{msg}");

    let mask = c.novel.masks.join("hole/hole002_crop0.png");
    std::fs::rename(&mask, mask.with_extension("orig")).unwrap();
    let (msg, code) = err_of(CropSet::load(Some(&c.base), &c.novel, None));
    assert!(
        msg.contains("hole002_crop0.png") && msg.contains("no mask") && code == 2,
        "{msg}"
    );
    std::fs::rename(mask.with_extension("orig"), &mask).unwrap();

    let scores = std::fs::read(&c.novel.scores).unwrap();
    std::fs::write(&c.novel.scores, b"{\"hole\": {}}").unwrap();
    let (msg, _) = err_of(CropSet::load(Some(&c.base), &c.novel, None));
    assert!(
        msg.contains("scores.json") && msg.contains("no score for crop crack/"),
        "{msg}"
    );
    std::fs::remove_file(&c.novel.scores).unwrap();
    let (msg, _) = err_of(CropSet::load(Some(&c.base), &c.novel, None));
    assert!(
        msg.contains("scores.json") && msg.contains("binarize"),
        "{msg}"
    );
    std::fs::write(&c.novel.scores, scores).unwrap();
}

#[test]
fn an_unreadable_crop_is_named_by_the_cache_and_by_the_loader() {
    let c = crops(&[("a", 2)], &[("t", 3)], false);
    let broken = c.novel.images.join("t/t001_crop1.png");
    std::fs::write(&broken, b"not a png").unwrap();
    let set = Arc::new(CropSet::load(Some(&c.base), &c.novel, None).unwrap());
    let spec = TransformSpec::new(16);
    let e = CropCache::build(&set, &spec, 2).unwrap_err();
    assert!(
        e.to_string().contains("t001_crop1.png") && e.exit_code() == 2,
        "{e}"
    );
    let loader = TrainLoader::new(set.clone(), spec, opts(5, 2, 0), None).unwrap();
    let mut failed = None;
    for epoch in 0..20 {
        if let Some(Err(e)) = loader.epoch(epoch).find(|b| b.is_err()) {
            failed = Some(e);
            break;
        }
    }
    let e = failed.expect("some epoch draws the broken crop");
    assert!(e.to_string().contains("t001_crop1.png"), "{e}");
    let eval = EvalLoader::new(set.clone(), set.novel_indices(), spec, 2, 1, None).unwrap();
    let results: Vec<_> = eval.iter().collect();
    assert!(results.iter().any(|r| r
        .as_ref()
        .is_err_and(|e| e.to_string().contains("t001_crop1.png"))));
}

#[test]
fn train_batches_have_the_documented_shapes_kinds_and_binary_masks() {
    let c = standard();
    let set = Arc::new(CropSet::load(Some(&c.base), &c.novel, None).unwrap());
    let spec = TransformSpec::new(32);
    let loader = TrainLoader::new(set.clone(), spec, opts(4, 2, 7), None).unwrap();
    assert_eq!(loader.num_batches(), 4); // 14 draws: 4 + 4 + 4 + 2
    let mut seen = 0;
    for batch in loader.epoch(3) {
        let b = batch.unwrap();
        let n = b.len() as i64;
        seen += b.len();
        for v in 0..2 {
            assert_eq!(b.views[v].size(), [n, 3, 32, 32]);
            assert_eq!(b.views[v].kind(), Kind::Float);
            assert_eq!(b.masks[v].size(), [n, 1, 32, 32]);
            let m = values(&b.masks[v]);
            assert!(m.iter().all(|&x| x == 0.0 || x == 1.0));
            assert!(m.contains(&1.0) && m.contains(&0.0));
            let img = values(&b.views[v]);
            assert!(img.iter().all(|x| x.is_finite() && x.abs() < 3.0));
        }
        assert_eq!(
            (b.labels.kind(), b.labelled.kind(), b.scores.kind()),
            (Kind::Int64, Kind::Bool, Kind::Float)
        );
        let labels = Vec::<i64>::try_from(&b.labels).unwrap();
        let lab = Vec::<bool>::try_from(&b.labelled).unwrap();
        let scores = Vec::<f32>::try_from(&b.scores).unwrap();
        assert!(
            lab.iter().any(|&x| x) && lab.iter().any(|&x| !x),
            "both kinds: {lab:?}"
        );
        for (k, &i) in b.index.iter().enumerate() {
            let item = &set.items[i];
            assert_eq!(lab[k], item.labelled);
            assert_eq!(labels[k], item.label.unwrap() as i64);
            assert_eq!(scores[k], item.score);
        }
    }
    assert_eq!(seen, 14);
}

/// Share of pixels where the view's brightness (thresholded halfway between its mean inside and
/// outside the mask) says what the mask says. The fixture's crops are bright exactly on the mask.
fn agreement(image: &[f32], mask: &[f32]) -> f64 {
    let n = mask.len();
    let lum: Vec<f32> = (0..n)
        .map(|i| image[i] + image[n + i] + image[2 * n + i])
        .collect();
    let mean = |fg: bool| {
        let v: Vec<f32> = (0..n)
            .filter(|&i| (mask[i] == 1.0) == fg)
            .map(|i| lum[i])
            .collect();
        v.iter().sum::<f32>() / v.len().max(1) as f32
    };
    let cut = (mean(true) + mean(false)) / 2.0;
    (0..n)
        .filter(|&i| (lum[i] > cut) == (mask[i] == 1.0))
        .count() as f64
        / n as f64
}

#[test]
fn both_views_move_the_mask_with_the_image_and_differ_from_each_other() {
    let c = standard();
    let set = Arc::new(CropSet::load(Some(&c.base), &c.novel, None).unwrap());
    let spec = TransformSpec::new(64);
    let loader = TrainLoader::new(set, spec, opts(14, 2, 5), None).unwrap();
    let (il, ml) = (spec.image_len(), spec.mask_len());
    let mut views_differ = 0;
    for epoch in 0..2 {
        for batch in loader.epoch(epoch) {
            let b = batch.unwrap();
            let imgs = [values(&b.views[0]), values(&b.views[1])];
            let masks = [values(&b.masks[0]), values(&b.masks[1])];
            for k in 0..b.len() {
                for v in 0..2 {
                    let a = agreement(
                        &imgs[v][k * il..(k + 1) * il],
                        &masks[v][k * ml..(k + 1) * ml],
                    );
                    assert!(
                        a > 0.93,
                        "sample {k} view {v}: image and mask agree on {a:.3} only"
                    );
                }
                views_differ +=
                    usize::from(masks[0][k * ml..(k + 1) * ml] != masks[1][k * ml..(k + 1) * ml]);
            }
        }
    }
    assert!(
        views_differ > 14,
        "the two views get different geometries ({views_differ} of 28)"
    );
}

#[test]
fn the_same_seed_gives_the_same_batches_with_any_worker_count_or_cache() {
    let c = standard();
    let set = Arc::new(CropSet::load(Some(&c.base), &c.novel, None).unwrap());
    let spec = TransformSpec::new(32);
    let cache = Arc::new(CropCache::build(&set, &spec, 2).unwrap());
    assert_eq!(cache.len(), set.len());
    let epoch_of = |workers, seed, cached: bool, epoch| {
        let l = TrainLoader::new(
            set.clone(),
            spec,
            opts(4, workers, seed),
            cached.then(|| cache.clone()),
        )
        .unwrap();
        l.epoch(epoch).map(|b| b.unwrap()).collect::<Vec<_>>()
    };
    let same = |a: &[TrainBatch], b: &[TrainBatch]| {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| {
                x.index == y.index
                    && (0..2)
                        .all(|v| x.views[v].equal(&y.views[v]) && x.masks[v].equal(&y.masks[v]))
            })
    };
    let a = epoch_of(1, 9, false, 0);
    assert!(same(&a, &epoch_of(3, 9, false, 0)));
    assert!(same(&a, &epoch_of(2, 9, true, 0)));
    assert!(!same(&a, &epoch_of(2, 9, true, 1)));
    assert!(!same(&a, &epoch_of(2, 10, true, 0)));
}

#[test]
fn a_class_of_one_image_and_a_batch_larger_than_the_set_work() {
    let c = crops(&[("only", 1)], &[("t", 1)], false);
    let set = Arc::new(CropSet::load(Some(&c.base), &c.novel, None).unwrap());
    let loader = TrainLoader::new(set, TransformSpec::new(16), opts(32, 2, 0), None).unwrap();
    assert_eq!(loader.num_batches(), 1);
    for epoch in 0..5 {
        let batches: Vec<_> = loader.epoch(epoch).map(|b| b.unwrap()).collect();
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].views[0].size(), [2, 3, 16, 16]);
        let mut idx = batches[0].index.clone();
        idx.sort();
        assert_eq!(idx, [0, 1]);
    }
}

#[test]
fn eval_batches_are_the_test_views_of_the_chosen_crops_in_order() {
    let c = standard();
    let set = Arc::new(CropSet::load(Some(&c.base), &c.novel, None).unwrap());
    let spec = TransformSpec::new(32);
    let eval = EvalLoader::new(set.clone(), set.novel_indices(), spec, 4, 2, None).unwrap();
    assert_eq!((eval.len(), eval.num_batches()), (9, 3));
    let batches: Vec<EvalBatch> = eval.iter().map(|b| b.unwrap()).collect();
    let ids: Vec<usize> = batches.iter().flat_map(|b| b.ids.clone()).collect();
    assert_eq!(ids, set.novel_indices());
    assert_eq!(batches[2].images.size(), [1, 3, 32, 32]);
    assert_eq!(batches[2].masks.size(), [1, 1, 32, 32]);
    let again: Vec<EvalBatch> = eval.iter().map(|b| b.unwrap()).collect();
    // The transform is deterministic and equals apply_test on the prepared crop.
    let (image, mask) = decode_pair(&set.items[ids[0]]).unwrap();
    let p = prepare(&image, &mask, &spec);
    let (mut img, mut msk) = (vec![0f32; spec.image_len()], vec![0f32; spec.mask_len()]);
    apply_test(&p, &spec, &mut img, &mut msk);
    assert_eq!(values(&batches[0].images.get(0)), img);
    assert_eq!(values(&batches[0].masks.get(0)), msk);
    for (a, b) in batches.iter().zip(&again) {
        assert!(a.images.equal(&b.images) && a.masks.equal(&b.masks));
    }
    assert!(EvalLoader::new(set.clone(), vec![99], spec, 4, 1, None).is_err());
}

#[test]
fn a_cache_for_another_size_is_refused() {
    let c = crops(&[("a", 1)], &[("t", 2)], false);
    let set = Arc::new(CropSet::load(Some(&c.base), &c.novel, None).unwrap());
    let cache = Arc::new(CropCache::build(&set, &TransformSpec::new(16), 1).unwrap());
    assert!(cache.bytes() > 0);
    let e = TrainLoader::new(set, TransformSpec::new(32), opts(2, 1, 0), Some(cache))
        .err()
        .unwrap();
    assert!(e.to_string().contains("cache"), "{e}");
}

/// Reads `../shared/data/sd900` (skipped when absent): a real base set laid out as
/// `images/<class>/*.bmp` with `masks/<class>/*.png`, paired by stem, through the loader.
#[test]
fn shared_sd900_loads_as_a_base_set_and_feeds_the_loader() {
    let sd900 = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/sd900"));
    if !sd900.is_dir() {
        eprintln!("skipped: {} is absent", sd900.display());
        return;
    }
    let c = crops(&[], &[("hole", 3), ("crack", 3)], false);
    let set = CropSet::load(Some(&sd900), &c.novel, None).unwrap();
    assert_eq!(set.base_classes, ["inclusion", "patches", "scratches"]);
    assert_eq!(set.base_indices().len(), 900);
    assert!(set.items[0].image.extension().unwrap() == "bmp");
    assert!(set.items[0].mask.extension().unwrap() == "png");
    // Two crops of each base class and all novel crops, so the test stays small.
    let mut keep: Vec<usize> = (0..3).flat_map(|k| [k * 300, k * 300 + 1]).collect();
    keep.extend(set.novel_indices());
    let small = CropSet {
        items: keep.iter().map(|&i| set.items[i].clone()).collect(),
        ..set
    };
    let small = Arc::new(small);
    let loader =
        TrainLoader::new(small.clone(), TransformSpec::new(56), opts(6, 2, 1), None).unwrap();
    for batch in loader.epoch(0) {
        let b = batch.unwrap();
        for v in 0..2 {
            let m = values(&b.masks[v]);
            assert!(m.iter().all(|&x| x == 0.0 || x == 1.0));
        }
    }
}

#[test]
fn neighbour_views_change_only_the_novel_samples_second_views() {
    let c = standard();
    let set = Arc::new(CropSet::load(Some(&c.base), &c.novel, None).unwrap());
    let spec = TransformSpec::new(24);
    let novel = set.novel_indices();
    // Each novel crop's neighbour: the next novel crop (cyclically); base crops have none.
    let mut of = vec![Vec::new(); set.len()];
    for (k, &i) in novel.iter().enumerate() {
        of[i] = vec![novel[(k + 1) % novel.len()]];
    }
    let with = |share: f64| {
        let nv = NeighbourViews::new(share, of.clone()).unwrap();
        TrainLoader::with_neighbours(set.clone(), spec, opts(14, 2, 3), None, Some(nv)).unwrap()
    };
    let plain = TrainLoader::new(set.clone(), spec, opts(14, 2, 3), None).unwrap();
    let batch = |l: &TrainLoader| l.epoch(1).next().unwrap().unwrap();
    let (p, never, always) = (batch(&plain), batch(&with(0.0)), batch(&with(1.0)));
    assert_eq!(p.index, always.index);
    for v in 0..2 {
        assert!(p.views[v].equal(&never.views[v]) && p.masks[v].equal(&never.masks[v]));
    }
    assert!(
        p.views[0].equal(&always.views[0]),
        "first views stay the crops' own"
    );
    for (k, &i) in p.index.iter().enumerate() {
        let same = p.views[1]
            .get(k as i64)
            .equal(&always.views[1].get(k as i64));
        assert_eq!(
            same, set.items[i].labelled,
            "sample {k}: only novel crops pair"
        );
    }
    // The set's size must match the lists'.
    let short = NeighbourViews::new(0.5, vec![Vec::new(); 3]).unwrap();
    assert!(TrainLoader::with_neighbours(set, spec, opts(4, 2, 0), None, Some(short)).is_err());
}
