//! Parity of the MGViT, the projector and weight loading with the reference.
//!
//! - `shared_golden_*` read `../shared/golden/model` (the reference's outputs) and are skipped
//!   with a printed reason when `../shared` is absent.
//! - `offline_dinov2_*` reads `data/weights/dinov2_vits14{,.check}.safetensors` made by
//!   `scripts/prepare_weights.sh` and is skipped with a printed reason when they are absent.
//! - The rest use the small fixtures in `tests/fixtures/model` (made by its make_fixtures.py).

use std::path::{Path, PathBuf};

use anomalyncd::model::arch::{ArchSpec, PosInterp};
use anomalyncd::model::mgvit::IGNORED_TENSORS;
use anomalyncd::model::weights::load_into;
use anomalyncd::model::{AttnImpl, Guidance, MgVit, MultiHead, MultiHeadConfig};
use serde_json::Value;
use tch::{nn::VarStore, Device, Kind, Tensor};

const TOL: f64 = 1e-4;

fn shared_model_dir() -> Option<PathBuf> {
    let d = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/golden/model"
    ));
    if d.is_dir() {
        Some(d.to_path_buf())
    } else {
        eprintln!("skipped: {} is absent", d.display());
        None
    }
}

fn fixtures() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/model")).to_path_buf()
}

/// A nested JSON array as a tensor of its shape.
fn json_tensor(v: &Value) -> Tensor {
    let mut shape = Vec::new();
    let mut cur = v;
    while let Value::Array(a) = cur {
        shape.push(a.len() as i64);
        cur = &a[0];
    }
    let mut flat = Vec::new();
    fn walk(v: &Value, out: &mut Vec<f32>) {
        match v {
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            x => out.push(x.as_f64().expect("a number") as f32),
        }
    }
    walk(v, &mut flat);
    Tensor::from_slice(&flat).view(shape.as_slice())
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

fn golden(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("mgvit_forward.json")).unwrap()).unwrap()
}

fn tiny_mgvit(weights: &Path, mask_layers: usize) -> (VarStore, MgVit) {
    let vs = VarStore::new(Device::Cpu);
    let spec = ArchSpec::by_name("vit_tiny").unwrap();
    let m = MgVit::new(&vs.root(), spec, mask_layers).unwrap();
    load_into(&vs, "", weights, IGNORED_TENSORS, "vit_tiny backbone").unwrap();
    (vs, m)
}

#[test]
fn shared_golden_class_tokens_match_from_safetensors_and_pth() {
    let Some(dir) = shared_model_dir() else {
        return;
    };
    let g = golden(&dir);
    let cfg = &g["config"];
    assert_eq!(cfg["patch_size"], 8);
    assert_eq!(cfg["embed_dim"], 48);
    let (x, mask, want) = (
        json_tensor(&g["input"]),
        json_tensor(&g["mask"]),
        json_tensor(&g["cls_token"]),
    );
    for file in ["mgvit_tiny.safetensors", "mgvit_tiny.pth"] {
        let (_vs, mut m) = tiny_mgvit(
            &dir.join(file),
            cfg["active_depth"].as_u64().unwrap() as usize,
        );
        for imp in [AttnImpl::Plain, AttnImpl::Fused] {
            m.set_attention(imp);
            let got = m.forward(&x, &mask).unwrap();
            let d = max_abs(&got, &want);
            eprintln!("{file} {imp:?}: class token max abs diff {d:.2e}");
            assert!(d < TOL, "{file} {imp:?}: {d}");
        }
    }
}

#[test]
fn shared_golden_batch_of_one_gives_the_same_rows() {
    let Some(dir) = shared_model_dir() else {
        return;
    };
    let g = golden(&dir);
    let (x, mask) = (json_tensor(&g["input"]), json_tensor(&g["mask"]));
    let (_vs, m) = tiny_mgvit(&dir.join("mgvit_tiny.safetensors"), 2);
    let batch = m.forward(&x, &mask).unwrap();
    // Row 3 has an empty mask: the class token sees only itself in the guided blocks.
    for i in 0..4 {
        let one = m
            .forward(&x.narrow(0, i, 1), &mask.narrow(0, i, 1))
            .unwrap();
        let d = max_abs(&one, &batch.narrow(0, i, 1));
        assert!(d < 1e-5, "row {i}: {d}");
    }
}

/// `precision: bf16` on the golden tiny model: with the frozen prefix (blocks before
/// `grad_from_block` 2, as training runs it) or every block (as `detect` runs it) in bf16, each
/// class token stays within cosine 0.999 of the fp32 one, under hard and soft guidance.
#[test]
fn shared_golden_bf16_class_tokens_keep_their_direction() {
    let Some(dir) = shared_model_dir() else {
        return;
    };
    let g = golden(&dir);
    let (x, mask) = (json_tensor(&g["input"]), json_tensor(&g["mask"]));
    let active = g["config"]["active_depth"].as_u64().unwrap() as usize;
    let (_vs, mut m) = tiny_mgvit(&dir.join("mgvit_tiny.safetensors"), active);
    for guidance in [Guidance::Hard, Guidance::Soft { lambda: 8.0 }] {
        m.set_guidance(guidance);
        m.set_frozen_kind(Kind::Float, m.depth());
        let fp32 = m.forward(&x, &mask).unwrap();
        for upto in [2, m.depth()] {
            m.set_frozen_kind(Kind::BFloat16, upto);
            assert_eq!(m.frozen_kind(), Kind::BFloat16);
            let bf16 = m.forward(&x, &mask).unwrap();
            assert_eq!(bf16.kind(), Kind::Float);
            let cos = Vec::<f64>::try_from(
                Tensor::cosine_similarity(&fp32, &bf16, 1, 1e-12).to_kind(Kind::Double),
            )
            .unwrap();
            eprintln!("{guidance:?}, blocks 0..{upto} in bf16: cosine per class token {cos:?}");
            assert_eq!(cos.len(), 4);
            for (i, c) in cos.iter().enumerate() {
                assert!(
                    *c >= 0.999,
                    "{guidance:?}, blocks 0..{upto}, row {i}: cosine {c}"
                );
            }
            // Not the fp32 path under another name.
            assert!(!fp32.allclose(&bf16, 1e-7, 1e-7, false));
        }
    }
}

#[test]
fn shared_golden_projector_matches() {
    let Some(dir) = shared_model_dir() else {
        return;
    };
    let g = golden(&dir);
    let h = &g["multihead"];
    let n = |k: &str| h[k].as_u64().unwrap() as usize;
    let cfg = MultiHeadConfig {
        in_dim: n("in_dim"),
        out_dim: n("out_dim"),
        hidden_dim: n("hidden_dim"),
        bottleneck_dim: n("bottleneck_dim"),
        n_head: n("n_head"),
    };
    let vs = VarStore::new(Device::Cpu);
    let head = MultiHead::new(&vs.root(), cfg);
    load_into(
        &vs,
        "",
        &dir.join("multihead_tiny.safetensors"),
        &[],
        "projector",
    )
    .unwrap();
    // End to end: our class tokens into our projector.
    let (_bvs, m) = tiny_mgvit(&dir.join("mgvit_tiny.safetensors"), 2);
    let cls = m
        .forward(&json_tensor(&g["input"]), &json_tensor(&g["mask"]))
        .unwrap();
    let (proj, logits) = head.forward(&cls);
    let d = max_abs(&proj, &json_tensor(&g["proj"]));
    assert!(d < TOL, "projection: {d}");
    let want = json_tensor(&g["logits"]);
    assert_eq!(logits.len(), 2);
    for (i, l) in logits.iter().enumerate() {
        let d = max_abs(l, &want.get(i as i64));
        assert!(d < TOL, "head {i}: {d}");
    }
}

#[test]
fn offline_dinov2_matches_onnxruntime() {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/data/weights"));
    let (w, check) = (
        dir.join("dinov2_vits14.safetensors"),
        dir.join("dinov2_vits14.check.safetensors"),
    );
    if !w.is_file() || !check.is_file() {
        eprintln!(
            "skipped: {} or its .check file is absent (run scripts/prepare_weights.sh)",
            w.display()
        );
        return;
    }
    let expected: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&check)
        .unwrap()
        .into_iter()
        .collect();
    let x = &expected["input"];
    let mask = Tensor::ones([2, 1, 224, 224], (Kind::Float, Device::Cpu));
    let vs = VarStore::new(Device::Cpu);
    let mut m = MgVit::new(&vs.root(), ArchSpec::by_name("dinov2_vits14").unwrap(), 9).unwrap();
    load_into(&vs, "", &w, IGNORED_TENSORS, "dinov2_vits14 backbone").unwrap();
    for imp in [AttnImpl::Plain, AttnImpl::Fused] {
        m.set_attention(imp);
        let got = tch::no_grad(|| m.forward(x, &mask)).unwrap();
        let d = max_abs(&got, &expected["cls_token"]);
        eprintln!("dinov2_vits14 {imp:?} vs onnxruntime: max abs diff {d:.2e}");
        assert!(d < 1e-3, "{imp:?}: {d}");
    }
}

/// A MultiHead of the fixtures' size (in 4, hidden 8, bottleneck 2, out 3, 2 heads).
fn fixture_head() -> (VarStore, MultiHead) {
    let vs = VarStore::new(Device::Cpu);
    let cfg = MultiHeadConfig {
        in_dim: 4,
        out_dim: 3,
        hidden_dim: 8,
        bottleneck_dim: 2,
        n_head: 2,
    };
    let h = MultiHead::new(&vs.root(), cfg);
    (vs, h)
}

#[test]
fn pth_state_dicts_and_dino_checkpoints_load() {
    let exp: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
            .unwrap();
    let e = &exp["multihead"];
    let x = json_tensor(&e["x"]).view([3, 4]);
    // An OrderedDict state_dict (with _metadata), and {'teacher': {'backbone.*', 'head.*'}, …}.
    for file in [
        "multihead_state_dict.pth",
        "multihead_teacher_checkpoint.pth",
    ] {
        let (vs, h) = fixture_head();
        let r = load_into(&vs, "", &fixtures().join(file), &[], "projector").unwrap();
        assert_eq!(r.loaded, 10, "{file}");
        let (proj, logits) = h.forward(&x);
        assert!(
            max_abs(&proj, &json_tensor(&e["proj"]).view([3, 2])) < 1e-5,
            "{file}"
        );
        for (i, l) in logits.iter().enumerate() {
            assert!(
                max_abs(l, &json_tensor(&e["logits"][i]).view([3, 3])) < 1e-5,
                "{file} head {i}"
            );
        }
    }
}

#[test]
fn loading_errors_name_the_tensor_and_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (vs, _h) = fixture_head();
    let good = tmp.path().join("good.safetensors");
    vs.save(&good).unwrap();
    let err = |p: &Path| {
        let (vs, _h) = fixture_head();
        let e = load_into(&vs, "", p, &[], "projector").unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let s = e.to_string();
        assert!(s.contains(&p.display().to_string()), "{s}");
        s
    };
    let named: Vec<(String, Tensor)> = Tensor::read_safetensors(&good).unwrap();
    let write = |name: &str, ts: &[(String, Tensor)]| {
        let p = tmp.path().join(name);
        Tensor::write_safetensors(ts, &p).unwrap();
        p
    };
    let missing = write(
        "missing.safetensors",
        &named
            .iter()
            .filter(|(n, _)| n != "mlp.2.bias")
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect::<Vec<_>>(),
    );
    assert!(err(&missing).contains("missing tensor `mlp.2.bias`"));
    let mut extra: Vec<(String, Tensor)> = named
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    extra.push((
        "head.bias".into(),
        Tensor::zeros([3], (Kind::Float, Device::Cpu)),
    ));
    assert!(err(&write("extra.safetensors", &extra)).contains("unexpected tensor `head.bias`"));
    let shaped: Vec<(String, Tensor)> = named
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                if n == "mlp.0.weight" {
                    Tensor::zeros([8, 5], (Kind::Float, Device::Cpu))
                } else {
                    t.shallow_clone()
                },
            )
        })
        .collect();
    let s = err(&write("shape.safetensors", &shaped));
    assert!(
        s.contains("`mlp.0.weight`") && s.contains("[8, 5]") && s.contains("[8, 4]"),
        "{s}"
    );
    let text = tmp.path().join("notes.pth");
    std::fs::write(&text, "these are not weights at all").unwrap();
    assert!(err(&text).contains("not a weights file"));
    assert!(err(&fixtures().join("multihead_legacy.pth")).contains("torch < 1.6"));
    // A DINO v1 architecture given the tiny golden weights: wrong shapes, named.
    if let Some(dir) = shared_model_dir() {
        let vs = VarStore::new(Device::Cpu);
        let _m = MgVit::new(&vs.root(), ArchSpec::by_name("dino_vits16").unwrap(), 9).unwrap();
        let e = load_into(
            &vs,
            "",
            &dir.join("mgvit_tiny.pth"),
            IGNORED_TENSORS,
            "dino_vits16 backbone",
        );
        let s = e.unwrap_err().to_string();
        assert!(
            s.contains("mgvit_tiny.pth") && s.contains("missing tensor `blocks.10."),
            "{s}"
        );
    }
}

/// A tiny MGViT whose 4×4 position grid is the fixture's, resized as `interp` says.
fn pos_model(interp: PosInterp) -> (VarStore, MgVit) {
    let spec = ArchSpec {
        embed_dim: 3,
        num_heads: 1,
        pos_interp: interp,
        ..*ArchSpec::by_name("vit_tiny").unwrap()
    };
    let vs = VarStore::new(Device::Cpu);
    let m = MgVit::new(&vs.root(), &spec, 0).unwrap();
    let exp: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
            .unwrap();
    // Fixture grid [1, 3, 4, 4] → pos_embed [1, 1 + 16, 3] after a zero class position.
    let grid = json_tensor(&exp["pos"]["grid"])
        .view([1, 3, 16])
        .transpose(1, 2);
    let pos = Tensor::cat(
        &[Tensor::zeros([1, 1, 3], (Kind::Float, Device::Cpu)), grid],
        1,
    );
    let mut var = vs.variables()["pos_embed"].shallow_clone();
    tch::no_grad(|| var.copy_(&pos));
    (vs, m)
}

#[test]
fn position_grid_resizes_as_pytorch_does() {
    let exp: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
            .unwrap();
    for (interp, n, key) in [
        (PosInterp::ScaleOffset, 6, "offset6"),
        (PosInterp::ExactSize, 3, "size3"),
        (PosInterp::ExactSize, 6, "size6"),
    ] {
        let (_vs, m) = pos_model(interp);
        let got = m.pos_embed_for(n, n);
        assert_eq!(got.size(), [1, 1 + n * n, 3]);
        let want = json_tensor(&exp["pos"][key])
            .view([1, 3, n * n])
            .transpose(1, 2);
        let d = max_abs(&got.narrow(1, 1, n * n), &want);
        assert!(d < 1e-5, "{key}: {d}");
    }
    // 4×4 is the stored grid: returned unchanged.
    let (vs, m) = pos_model(PosInterp::ScaleOffset);
    assert_eq!(
        max_abs(&m.pos_embed_for(4, 4), &vs.variables()["pos_embed"]),
        0.0
    );
}
