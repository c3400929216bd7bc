//! The Rust EfficientNet-Lite0 against the reference PyTorch implementation
//! (efficientnet-lite-pytorch 0.1.0): reads data/weights/efficientnet_lite0.pth and
//! efficientnet_lite0.check.safetensors (both made by scripts/prepare_weights.sh); skipped with a
//! message when they are absent.

use std::path::PathBuf;

use anomalyncd::model::efficientnet::{ignored_tensor_names, EfficientNetConfig, EfficientNetLite};
use tch::{nn, Device, Tensor};

#[test]
fn offline_efficientnet_lite0_matches_the_reference_features_and_logits() {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/data/weights"));
    let (w, check) = (
        dir.join("efficientnet_lite0.pth"),
        dir.join("efficientnet_lite0.check.safetensors"),
    );
    if !w.is_file() || !check.is_file() {
        eprintln!(
            "skipped: {} or its .check file is absent (run scripts/prepare_weights.sh)",
            w.display()
        );
        return;
    }
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = EfficientNetLite::new(&vs.root(), &EfficientNetConfig::lite0());
    let ignored = ignored_tensor_names(&vs);
    let ignored: Vec<&str> = ignored.iter().map(String::as_str).collect();
    let r =
        anomalyncd::model::weights::load_into(&vs, "", &w, &ignored, "EfficientNet-Lite0").unwrap();
    // 49 BatchNorms (4 tensors each), 49 convolutions, the classifier's 2; the file's 49
    // `num_batches_tracked` counters are skipped.
    assert_eq!((r.loaded, r.skipped.len()), (49 * 5 + 2, 49));
    vs.freeze();
    let expected: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&check)
        .unwrap()
        .into_iter()
        .collect();
    let x = &expected["input"];
    let feats = tch::no_grad(|| net.block_features(x, &[4, 7, 10]));
    let logits = tch::no_grad(|| net.forward(x));
    for (name, got) in ["block4", "block7", "block10"]
        .iter()
        .zip(&feats)
        .chain([(&"logits", &logits)])
    {
        let want = &expected[*name];
        assert_eq!(got.size(), want.size(), "{name}");
        let diff = (got - want).abs().max().double_value(&[]);
        let scale = want.abs().max().double_value(&[]);
        assert!(
            diff < 1e-3 * scale.max(1.0),
            "{name}: max abs diff {diff} (values up to {scale})"
        );
    }
}
